/* Memory return: does freed memory go back to the OS?
 *   memret [scale [keep]]
 * Allocates 1 GiB (times scale, at most 1) in small (16..512 B) and medium
 * (512 B..128 KiB) blocks, frees it all in random order (but, with keep
 * K, one medium block in K, which lives on: survivors scattered among
 * freed blocks), then goes on working lightly (small blocks, 64 KiB
 * live) for a second, as a program does after a burst. Prints resident
 * memory at each step:
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
    size_t keep = argc > 2 ? strtoul(argv[2], NULL, 10) : 0;
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
        p[0] = n > 512 ? 2 : 1; /* medium or small */
        live[count++] = p;
        bytes += n;
    }
    long peak = rss_kb();
    for (size_t i = count; i > 1; i--) { /* shuffle: free in random order */
        size_t k = next() % i;
        char *t = live[k]; live[k] = live[i - 1]; live[i - 1] = t;
    }
    size_t kept = 0, medium = 0;
    for (size_t i = 0; i < count; i++) {
        sum += (unsigned char)live[i][0];
        if (keep && live[i][0] == 2 && medium++ % keep == 0)
            live[kept++] = live[i]; /* a survivor */
        else
            free(live[i]);
    }
    /* The table's pages past the survivors go back, as before. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t held = (kept * sizeof *live + page - 1) / page * page;
    munmap((char *)live + held, cap * sizeof *live - held);
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
    for (size_t i = 0; i < kept; i++) free(live[i]);
    if (held) munmap(live, held);
    printf("rss_kb before=%ld peak=%ld freed=%ld after=%ld\n", before, peak, freed, after);
    return (int)(sum & 0); /* keep sum alive */
}
