// Shared by the C++ test programs (driven by tests/cxx.rs).
#ifndef PYMALLOC_TEST_CHECK_HH
#define PYMALLOC_TEST_CHECK_HH
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>

// On failure: "file:line: message" on stderr, exit status 1.
#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            std::fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);           \
            std::fprintf(stderr, __VA_ARGS__);                             \
            std::fputc('\n', stderr);                                      \
            std::exit(1);                                                  \
        }                                                                  \
    } while (0)

// Hides a value from the optimiser: no folding, and a new/delete pair
// whose pointer went through it is not elided.
template <class T> static inline T opaque(T x) {
    __asm__ volatile("" : "+r"(x) : : "memory");
    return x;
}

#endif
