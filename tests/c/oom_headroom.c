/* Under an address-space limit (RLIMIT_AS, as batch schedulers and
 * containers set), the library serves what glibc serves:
 *   oom_headroom cache    with 120 MiB of headroom, two 30 MiB buffers
 *                         are allocated and freed (and kept for reuse):
 *                         a 100 MiB request then succeeds (what is kept
 *                         is given back first, since with what is left
 *                         of the headroom it makes room)
 *   oom_headroom region   with 300 MiB of headroom and one live 200 KiB
 *                         block (a span of a region), 120 MiB of 1 KiB
 *                         blocks can be had: a region's address space is
 *                         in proportion to what it serves
 * Each mode in a process of its own (the driver runs both). */
#include "check.h"

#include "rlimit.h"

#define MiB ((size_t)1 << 20)

int main(int argc, char **argv) {
    CHECK(argc == 2 && (!strcmp(argv[1], "cache") || !strcmp(argv[1], "region")), "usage: oom_headroom cache|region");
    grow_stack();
    if (!strcmp(argv[1], "cache")) {
        set_limit((rlim_t)(vm_size() + 120 * MiB));
        char *a = malloc(opaque(30 * MiB)), *b = malloc(opaque(30 * MiB));
        CHECK(a && b, "malloc(30 MiB) failed");
        memset(a, 1, 30 * MiB);
        memset(b, 2, 30 * MiB);
        free(a);
        free(b);
        char *big = malloc(opaque(100 * MiB));
        CHECK(big != NULL, "malloc(100 MiB) failed with 120 MiB of headroom and two 30 MiB buffers freed");
        memset(big, 3, 100 * MiB);
        free(big);
    } else {
        set_limit((rlim_t)(vm_size() + 300 * MiB));
        char *span = malloc(opaque(200 << 10));
        CHECK(span != NULL, "malloc(200 KiB) failed");
        size_t got = 0;
        while (got < 120 * MiB) {
            char *p = malloc(opaque(1024));
            CHECK(p != NULL, "malloc(1 KiB) failed after %zu MiB, with 300 MiB of headroom", got / MiB);
            p[0] = 1;
            got += 1024;
        }
    }
    return 0;
}
