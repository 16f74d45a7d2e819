/* Memory return: does freed memory go back to the OS?
 *   memret [scale]
 * Allocates 1 GiB (times scale, at most 1) in small (16..512 B) and medium
 * (512 B..128 KiB) blocks, frees it all in random order, then goes on
 * working lightly (small blocks, 64 KiB live) for a second, as a program
 * does after a burst. Prints resident memory at each step:
 *   rss_kb before=N peak=N freed=N after=N
 * before: at start; peak: all allocated; freed: just after the frees;
 * after: after the second of light work. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng = 88172645463325252ull;
static inline uint64_t next(void) {
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    return rng;
}

static long rss_kb(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f || fscanf(f, "%ld %ld", &pages, &resident) != 2) return -1;
    fclose(f);
    return resident * (sysconf(_SC_PAGESIZE) / 1024);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    double scale = argc > 1 ? atof(argv[1]) : 1.0;
    size_t goal = (size_t)((1ull << 30) * (scale < 1 ? scale : 1));
    long before = rss_kb();
    /* The block table is mapped directly, so it is not part of the heap. */
    size_t cap = goal / 16;
    char **live = mmap(NULL, cap * sizeof *live, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (live == MAP_FAILED) return 1;
    size_t count = 0, bytes = 0;
    uint64_t sum = 0;
    while (bytes < goal && count < cap) {
        size_t n = next() % 2 ? 16 + next() % 497 : 512 + next() % (128 << 10);
        if (n > 512 && next() % 16) n = 16 + next() % 497; /* half the bytes in each */
        char *p = malloc(n);
        for (size_t off = 0; off < n; off += 4096) p[off] = 1;
        p[n - 1] = (char)n;
        live[count++] = p;
        bytes += n;
    }
    long peak = rss_kb();
    for (size_t i = count; i > 1; i--) { /* shuffle: free in random order */
        size_t k = next() % i;
        char *t = live[k]; live[k] = live[i - 1]; live[i - 1] = t;
    }
    for (size_t i = 0; i < count; i++) {
        sum += (unsigned char)live[i][0];
        free(live[i]);
    }
    munmap(live, cap * sizeof *live);
    long freed = rss_kb();
    enum { SLOTS = 256 };
    char *slot[SLOTS] = {0};
    double end = now() + 1.0;
    while (now() < end) {
        for (int i = 0; i < 1000; i++) {
            size_t k = next() % SLOTS;
            free(slot[k]);
            slot[k] = malloc(16 + next() % 497);
            slot[k][0] = 1;
        }
        struct timespec pause = {0, 1000000};
        nanosleep(&pause, NULL);
    }
    for (int k = 0; k < SLOTS; k++) free(slot[k]);
    long after = rss_kb();
    printf("rss_kb before=%ld peak=%ld freed=%ld after=%ld\n", before, peak, freed, after);
    return (int)(sum & 0); /* keep sum alive */
}
