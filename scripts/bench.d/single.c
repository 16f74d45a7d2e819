/* Single-threaded allocation workloads.
 *   single random|lifo|realloc|medium|large|spread|huge|grow [scale]
 * random:  16..512 B blocks with random lifetimes (a sliding window of slots)
 * lifo:    bursts of mixed sizes freed in reverse order (stack-like phases)
 * realloc: buffers grown by small appends, and vectors grown by doubling
 * medium:  512 B .. 4 MiB blocks replaced at random, every page touched
 * large:   32 buffers of 1 .. 32 MiB replaced at random, every page touched
 * spread:  the same with 24 buffers whose sizes spread evenly over 1 .. 32 MiB
 * huge:    20 buffers of 5 .. 25 MiB (evenly), each replaced by a new one
 *          written whole before the old one is freed (mimalloc-bench's
 *          malloc-large)
 * grow:    a heap that grows to 1 GiB of mixed blocks, then shrinks to empty
 * `scale` (default 1) multiplies the amount of work.  Prints a checksum so
 * the work cannot be optimised away. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "random_window.h"

/* Log-uniform size in [lo, hi]: many small, few big, as real programs. */
static size_t log_size(size_t lo, size_t hi) {
    unsigned span = 63 - __builtin_clzll(hi / lo);
    size_t base = lo << (next() % (span + 1));
    size_t n = base + next() % base;
    return n > hi ? hi : n;
}

static uint64_t sum;

static void touch(char *p, size_t n) {
    p[0] = (char)n;
    p[n - 1] = 1;
}

static size_t small_size(void) {
    return 16 + next() % 497;
}

static void random_lifetimes(double scale) {
    enum { SLOTS = 1 << 15 };
    static char *slot[SLOTS];
    sum += random_window(slot, SLOTS, (long)(30e6 * scale), small_size);
}

static void lifo_bursts(double scale) {
    enum { MAX_BURST = 4096 };
    static char *stack[MAX_BURST];
    long bursts = (long)(6000 * scale);
    for (long b = 0; b < bursts; b++) {
        size_t depth = 1 + next() % MAX_BURST;
        for (size_t i = 0; i < depth; i++) {
            size_t n = next() % 16 ? 8 + next() % 248 : log_size(256, 16384);
            stack[i] = malloc(n);
            touch(stack[i], n);
        }
        for (size_t i = depth; i-- > 0;) {
            sum += (unsigned char)stack[i][0];
            free(stack[i]);
        }
    }
}

static void realloc_growth(double scale) {
    enum { LIVE = 64 };
    static char *buf[LIVE];
    static size_t len[LIVE], target[LIVE];
    long appends = (long)(2e6 * scale);
    for (long i = 0; i < appends; i++) {
        size_t k = next() % LIVE;
        if (len[k] >= target[k]) {
            if (buf[k]) sum += (unsigned char)buf[k][len[k] - 1];
            free(buf[k]);
            buf[k] = NULL;
            len[k] = 0;
            target[k] = log_size(64, 256 << 10);
        }
        if (k % 2) {
            /* a string builder: realloc on every append */
            size_t add = 1 + next() % 128;
            buf[k] = realloc(buf[k], len[k] + add);
            memset(buf[k] + len[k], 'a' + (int)(k % 26), add);
            len[k] += add;
        } else {
            /* a vector: capacity doubles */
            size_t cap = len[k] ? len[k] * 2 : 16;
            buf[k] = realloc(buf[k], cap);
            memset(buf[k] + len[k], 'v', cap - len[k]);
            len[k] = cap;
        }
    }
    for (size_t k = 0; k < LIVE; k++) free(buf[k]);
}

static void medium_large(double scale) {
    enum { SLOTS = 256 };
    static char *slot[SLOTS];
    static size_t size[SLOTS];
    long ops = (long)(150000 * scale);
    for (long i = 0; i < ops; i++) {
        size_t k = next() % SLOTS;
        if (slot[k]) {
            sum += (unsigned char)slot[k][size[k] / 2];
            free(slot[k]);
        }
        size_t n = next() % 8 ? log_size(512, 128 << 10) : log_size(128 << 10, 4 << 20);
        slot[k] = malloc(n);
        size[k] = n;
        for (size_t off = 0; off < n; off += 4096) slot[k][off] = (char)off;
        slot[k][n / 2] = (char)n;
    }
    for (size_t k = 0; k < SLOTS; k++) free(slot[k]);
}

/* `slots` buffers of `draw()` bytes, replaced at random `ops` times, every
   page touched. */
static void replace_buffers(size_t slots, long ops, size_t (*draw)(void)) {
    enum { SLOTS_MAX = 32 };
    static char *slot[SLOTS_MAX];
    static size_t size[SLOTS_MAX];
    for (long i = 0; i < ops + (long)slots; i++) {
        size_t k = i < (long)slots ? (size_t)i : next() % slots;
        if (slot[k]) {
            sum += (unsigned char)slot[k][size[k] / 2];
            free(slot[k]);
        }
        size_t n = draw();
        slot[k] = malloc(n);
        size[k] = n;
        for (size_t off = 0; off < n; off += 4096) slot[k][off] = (char)off;
        slot[k][n / 2] = (char)n;
    }
    for (size_t k = 0; k < slots; k++) free(slot[k]);
}

static size_t log_large(void) { return log_size(1 << 20, 32 << 20); }
static size_t even_large(void) { return (1 << 20) + next() % (31 << 20); }

static void large_buffers(double scale) { replace_buffers(32, (long)(600 * scale), log_large); }
static void spread_buffers(double scale) { replace_buffers(24, (long)(600 * scale), even_large); }

static void huge_buffers(double scale) {
    enum { SLOTS = 20 };
    static char *slot[SLOTS];
    static volatile char zero;
    long ops = (long)(400 * scale);
    for (long i = 0; i < ops; i++) {
        size_t k = next() % SLOTS;
        size_t n = (5 << 20) + next() % (20 << 20);
        char *p = malloc(n);
        memset(p, zero, n); /* a value, not a constant: no calloc */
        free(slot[k]);
        slot[k] = p;
        sum += (unsigned char)p[n / 2];
    }
    for (size_t k = 0; k < SLOTS; k++) free(slot[k]);
}

static void grow_shrink(double scale) {
    size_t goal = (size_t)((1ull << 30) * (scale < 1 ? scale : 1));
    size_t cap = goal / 64;
    char **live = malloc(cap * sizeof *live);
    size_t *sz = malloc(cap * sizeof *sz);
    size_t count = 0, bytes = 0;
    /* Grow: three allocations for every free, until `goal` bytes live. */
    while (bytes < goal && count < cap) {
        if (count && next() % 4 == 0) {
            size_t k = next() % count;
            sum += (unsigned char)live[k][0];
            bytes -= sz[k];
            free(live[k]);
            live[k] = live[--count];
            sz[k] = sz[count];
        } else {
            size_t n = next() % 32 ? 16 + next() % 497 : log_size(512, 64 << 10);
            live[count] = malloc(n);
            for (size_t off = 0; off < n; off += 4096) live[count][off] = (char)off;
            touch(live[count], n);
            sz[count++] = n;
            bytes += n;
        }
    }
    /* Shrink: three frees for every allocation, until empty. */
    while (count) {
        if (next() % 4 == 0 && count < cap) {
            size_t n = 16 + next() % 497;
            live[count] = malloc(n);
            touch(live[count], n);
            sz[count++] = n;
        } else {
            size_t k = next() % count;
            sum += (unsigned char)live[k][0];
            free(live[k]);
            live[k] = live[--count];
            sz[k] = sz[count];
        }
    }
    free(live);
    free(sz);
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "random";
    double scale = argc > 2 ? atof(argv[2]) : 1.0;
    if (!strcmp(mode, "random")) random_lifetimes(scale);
    else if (!strcmp(mode, "lifo")) lifo_bursts(scale);
    else if (!strcmp(mode, "realloc")) realloc_growth(scale);
    else if (!strcmp(mode, "medium")) medium_large(scale);
    else if (!strcmp(mode, "large")) large_buffers(scale);
    else if (!strcmp(mode, "spread")) spread_buffers(scale);
    else if (!strcmp(mode, "huge")) huge_buffers(scale);
    else if (!strcmp(mode, "grow")) grow_shrink(scale);
    else {
        fprintf(stderr, "single: unknown workload %s\n", mode);
        return 2;
    }
    printf("%llu\n", (unsigned long long)sum);
    return 0;
}
