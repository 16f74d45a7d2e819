/* Allocation churn workloads for comparing allocators and geometries.
 *   churn small|mixed|medium [ops]
 * small:  16..512 B blocks with random lifetimes (a sliding window)
 * mixed:  mostly small, some up to 128 KiB
 * medium: 512 B .. 128 KiB
 * Prints a checksum so the work cannot be optimised away. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "random_window.h"

static const char *mode;

static size_t pick(void) {
    uint64_t r = next();
    if (mode[0] == 's') return 16 + r % 497;
    if (mode[0] == 'm' && mode[1] == 'e') return 513 + r % (128 * 1024 - 512);
    return (r % 100 < 90) ? 16 + r % 497 : 513 + (r >> 8) % (128 * 1024 - 512);
}

int main(int argc, char **argv) {
    mode = argc > 1 ? argv[1] : "small";
    long ops = argc > 2 ? atol(argv[2]) : 20000000;
    enum { SLOTS = 1 << 16 };
    static char *slot[SLOTS];
    uint64_t sum = random_window(slot, SLOTS, ops, pick);
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
