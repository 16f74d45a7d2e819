// C++ delete misuse, one case per run (argv[1]): prints the line the
// allocator must write ("expect ..."), then commits the misuse, which
// must abort (driven by tests/cxx.rs). Without the library the program
// survives it and exits 0.
#include "check.hh"

#include <cstring>
#include <thread>

static bool debug;  // PYMALLOC_DEBUG=1: blocks carry 48 bytes of guards

struct B { int a; };
struct D : B { char big[200]; };                            // 204 bytes
struct AB { ~AB() {} int x; };
struct AD : AB { ~AD() {} char more[100]; };                // 104 bytes
struct alignas(64) AB64 { char c; };                        // 64 bytes
struct AD64 : AB64 { char big[200]; };                      // 320 bytes

static void misuse(const char *c) {
    char line[200];
    if (!std::strcmp(c, "base-pointer")) {
        // Deleted through a base without a virtual destructor: the base's size.
        B *b = opaque<B *>(new D);
        std::snprintf(line, sizeof line, debug ? "wrong size 4 for block %p of 204 bytes"
                                               : "wrong size 4 for block %p, size class 208", (void *)b);
        std::printf("expect pymalloc: operator delete(void*, size_t): %s\n", line);
        delete b;
    } else if (!std::strcmp(c, "base-pointer-array")) {
        // new AD[3] asked for 8 + 3 * 104 bytes (the cookie holds the count);
        // delete[] through AB passes 8 + 3 * 4.
        AB *b = opaque<AB *>(new AD[3]);
        void *block = reinterpret_cast<char *>(b) - sizeof(std::size_t);
        std::snprintf(line, sizeof line, debug ? "wrong size 20 for block %p of 320 bytes"
                                               : "wrong size 20 for block %p, size class 320", block);
        std::printf("expect pymalloc: operator delete[](void*, size_t): %s\n", line);
        delete[] b;
    } else if (!std::strcmp(c, "aligned-base-pointer")) {
        AB64 *b = opaque<AB64 *>(new AD64);
        std::snprintf(line, sizeof line, debug ? "wrong size 64 for block %p of 320 bytes"
                                               : "wrong size 64 for block %p, size class 320", (void *)b);
        std::printf("expect pymalloc: operator delete(void*, size_t, std::align_val_t): %s\n", line);
        delete b;
    } else if (!std::strcmp(c, "aligned-wrong-alignment") || !std::strcmp(c, "sized-aligned-wrong-alignment")) {
        // A size whose blocks are not all 32-aligned (16 bytes apart).
        std::size_t n = debug ? 64 : 48, tries = 0;
        void *p;
        do p = ::operator new(opaque(n));
        while (reinterpret_cast<std::uintptr_t>(p) % 32 == 0 && ++tries < 1000);
        if (c[0] == 'a') {
            std::printf("expect pymalloc: operator delete(void*, std::align_val_t): wrong alignment 32 for block %p\n", p);
            ::operator delete(p, std::align_val_t(32));
        } else {
            std::printf("expect pymalloc: operator delete(void*, size_t, std::align_val_t): wrong alignment 32 "
                        "for block %p\n", p);
            ::operator delete(p, n, std::align_val_t(32));
        }
    } else if (!std::strcmp(c, "aligned-not-power-of-two")) {
        void *p = opaque(::operator new(opaque<std::size_t>(128), std::align_val_t(64)));
        std::printf("expect pymalloc: operator delete[](void*, std::align_val_t, const std::nothrow_t&): "
                    "wrong alignment 48 for block %p\n", p);
        ::operator delete[](p, std::align_val_t(48), std::nothrow);
    } else if (!std::strcmp(c, "double-delete")) {
        B *keep = opaque(new B);  // the pool stays in use
        B *b = opaque(new B);
        delete b;
        std::printf("expect pymalloc: operator delete(void*, size_t): double free of %p, size class %d\n",
                    (void *)b, debug ? 64 : 16);
        delete opaque(b);
        delete keep;
    } else if (!std::strcmp(c, "delete-stack")) {
        int local;
        void *p = opaque<void *>(&local);
        std::printf("expect pymalloc: operator delete(void*): invalid pointer %p\n", p);
        ::operator delete(p);
    } else {
        CHECK(false, "unknown case %s", c);
    }
}

int main(int argc, char **argv) {
    CHECK(argc == 2, "usage: delete_misuse CASE[-in-thread]");
    std::setvbuf(stdout, nullptr, _IONBF, 0);
    const char *d = std::getenv("PYMALLOC_DEBUG");
    debug = d && !std::strcmp(d, "1");
    // CASE-in-thread: in a second thread, whose deletes take its cache's path.
    static char c[100];
    std::snprintf(c, sizeof c, "%s", argv[1]);
    char *suffix = std::strstr(c, "-in-thread");
    if (suffix) {
        *suffix = 0;
        std::thread(misuse, c).join();
    } else {
        misuse(c);
    }
    return 0;
}
