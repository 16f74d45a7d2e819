// Every form of operator delete, used as a C++ program uses it: each must
// free without complaint, preloaded, linked and in the debug mode. The
// forms run in the main thread (no thread cache), in a second thread
// (its cache), and across threads.
#include "check.hh"

#include <thread>
#include <vector>

static int destroyed;

struct Small { int a; };                                   // 4 bytes
struct Big { char c[1000]; };
struct WithDtor { ~WithDtor() { ++destroyed; } char c[24]; };  // sized delete[]
struct alignas(64) A64 { char c[100]; };                   // 128 bytes
struct alignas(64) A64Dtor { ~A64Dtor() { ++destroyed; } char c[10]; };
struct alignas(4096) A4096 { char c[5000]; };              // 8192 bytes
struct Base { virtual ~Base() {} int x; };
struct Derived : Base { char more[300]; };                 // deleted through Base: its own size

static void aligned(const void *p, std::size_t a) {
    CHECK(reinterpret_cast<std::uintptr_t>(p) % a == 0, "%p is not aligned to %zu", p, a);
}

static void all_forms() {
    using std::align_val_t;
    // new / delete: the sized delete (C++14), the unsized one, size 0.
    delete opaque(new Small);
    delete opaque(new Big);
    ::operator delete(opaque(::operator new(opaque<std::size_t>(40))));
    ::operator delete(opaque(::operator new(opaque<std::size_t>(0))), std::size_t{0});
    ::operator delete(opaque(::operator new(opaque<std::size_t>(700))), opaque<std::size_t>(700));
    // Arrays: unsized for a trivial type, sized (with the cookie) for one
    // with a destructor.
    delete[] opaque(new int[opaque(33)]);
    int before = destroyed;
    delete[] opaque(new WithDtor[opaque(5)]);
    CHECK(destroyed == before + 5, "destructors ran %d times", destroyed - before);
    ::operator delete[](opaque(::operator new[](opaque<std::size_t>(100))), opaque<std::size_t>(100));
    // Over-aligned types: aligned new and the sized aligned delete.
    A64 *a = opaque(new A64);
    aligned(a, 64);
    delete a;
    A4096 *page = opaque(new A4096);
    aligned(page, 4096);
    delete page;
    A64 *as = opaque(new A64[opaque(3)]);
    aligned(as, 64);
    delete[] as;
    A64Dtor *ad = opaque(new A64Dtor[opaque(3)]);
    aligned(ad, 64);
    delete[] ad;
    A4096 *pages = opaque(new A4096[opaque(2)]);
    aligned(pages, 4096);
    delete[] pages;
    // Explicit aligned calls with sizes that are not multiples of the
    // alignment (libstdc++ rounds them up before aligned_alloc).
    ::operator delete(opaque(::operator new(opaque<std::size_t>(100), align_val_t(64))), opaque<std::size_t>(100),
                      align_val_t(64));
    ::operator delete(opaque(::operator new(opaque<std::size_t>(0), align_val_t(64))), 0, align_val_t(64));
    ::operator delete(opaque(::operator new(opaque<std::size_t>(5000), align_val_t(4096))),
                      opaque<std::size_t>(5000), align_val_t(4096));
    ::operator delete(opaque(::operator new(opaque<std::size_t>(100), align_val_t(64))), align_val_t(64));
    ::operator delete[](opaque(::operator new[](opaque<std::size_t>(100), align_val_t(128))),
                        opaque<std::size_t>(100), align_val_t(128));
    ::operator delete[](opaque(::operator new[](opaque<std::size_t>(100), align_val_t(128))), align_val_t(128));
    // nothrow.
    ::operator delete(opaque(::operator new(opaque<std::size_t>(50), std::nothrow)), std::nothrow);
    ::operator delete[](opaque(::operator new[](opaque<std::size_t>(50), std::nothrow)), std::nothrow);
    ::operator delete(opaque(::operator new(opaque<std::size_t>(50), align_val_t(256), std::nothrow)),
                      align_val_t(256), std::nothrow);
    ::operator delete[](opaque(::operator new[](opaque<std::size_t>(50), align_val_t(256), std::nothrow)),
                        align_val_t(256), std::nothrow);
    // Through a base class with a virtual destructor: the derived size.
    Base *b = opaque(new Derived);
    delete b;
    // A span of a region, a private mapping.
    ::operator delete(opaque(::operator new(opaque<std::size_t>(1 << 20))), opaque<std::size_t>(1 << 20));
    ::operator delete(opaque(::operator new(opaque<std::size_t>(8 << 20))), opaque<std::size_t>(8 << 20));
    // Many at once (pools fill, empty and are reused), freed in reverse.
    std::vector<Small *> smalls;
    std::vector<A64 *> a64s;
    for (int i = 0; i < 5000; i++) {
        smalls.push_back(new Small);
        a64s.push_back(new A64);
    }
    for (int i = 4999; i >= 0; i--) {
        delete smalls[i];
        delete a64s[i];
    }
    // Null: every form does nothing.
    ::operator delete(opaque<void *>(nullptr));
    ::operator delete(opaque<void *>(nullptr), std::size_t{8});
    ::operator delete(opaque<void *>(nullptr), align_val_t(64));
    ::operator delete(opaque<void *>(nullptr), 64, align_val_t(64));
    ::operator delete(opaque<void *>(nullptr), std::nothrow);
    ::operator delete(opaque<void *>(nullptr), align_val_t(64), std::nothrow);
    ::operator delete[](opaque<void *>(nullptr));
    ::operator delete[](opaque<void *>(nullptr), std::size_t{8});
    ::operator delete[](opaque<void *>(nullptr), align_val_t(64));
    ::operator delete[](opaque<void *>(nullptr), 64, align_val_t(64));
    ::operator delete[](opaque<void *>(nullptr), std::nothrow);
    ::operator delete[](opaque<void *>(nullptr), align_val_t(64), std::nothrow);
}

int main() {
    all_forms();
    std::thread([] { all_forms(); }).join();
    // Made in one thread, deleted in another.
    std::vector<A64Dtor *> made;
    std::thread([&] {
        for (int i = 0; i < 1000; i++) made.push_back(new A64Dtor[3]);
    }).join();
    std::thread([&] {
        for (A64Dtor *p : made) delete[] p;
    }).join();
    std::puts("ok");
    return 0;
}
