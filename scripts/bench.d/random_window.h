/* Shared by churn.c and single.c: the benchmarks' random generator, and
 * the sliding window of random lifetimes both run, so that their numbers
 * measure the same sequence of calls. */
#ifndef PYMALLOC_BENCH_RANDOM_WINDOW_H
#define PYMALLOC_BENCH_RANDOM_WINDOW_H
#include <stdint.h>
#include <stdlib.h>

static uint64_t rng = 88172645463325252ull;
static inline uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

/* `ops` times: a random slot's block is freed, or an empty slot gets a
 * block of size() bytes whose first and last bytes are written. Frees
 * what is left; returns the sum of the freed blocks' first bytes. */
static inline uint64_t random_window(char **slot, size_t slots, long ops, size_t (*size)(void)) {
    uint64_t sum = 0;
    for (long i = 0; i < ops; i++) {
        size_t k = next() % slots;
        if (slot[k]) {
            sum += (unsigned char)slot[k][0];
            free(slot[k]);
            slot[k] = NULL;
        } else {
            size_t n = size();
            slot[k] = malloc(n);
            slot[k][0] = (char)n;
            slot[k][n - 1] = 1;
        }
    }
    for (size_t k = 0; k < slots; k++) free(slot[k]);
    return sum;
}
#endif
