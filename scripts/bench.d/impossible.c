/* Requests that cannot be served, under an address-space limit:
 *   impossible loop|between [scale]
 * Sets RLIMIT_AS to the process's size plus 256 MiB, then
 *   loop     2 M requests of 1 TiB and more, through every allocation
 *            function, at every alignment from 1 to 2^63, each after a
 *            block of 16 or 4000 bytes allocated and freed;
 *   between  20,000 such failures, each after small, medium and large
 *            blocks allocated, written and freed (the pattern that made
 *            each failure give back memory that the next call mapped
 *            again).
 * Every request must fail (exit status 1 otherwise); `scale` (default 1)
 * multiplies the count. Prints a checksum, and how many failures left
 * errno other than ENOMEM (jemalloc 5.3 leaves it at 0 for an alignment
 * of 2^63). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* valloc, pvalloc */

#define TiB ((size_t)1 << 40)

/* Keeps the compiler from treating calls with constant arguments as known. */
static size_t opaque(size_t n) {
    __asm__ volatile("" : "+r"(n));
    return n;
}

static size_t vm_size(void) { /* VmSize from /proc/self/status */
    char buf[8192];
    int fd = open("/proc/self/status", O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf - 1);
    if (fd >= 0) close(fd);
    if (n <= 0) return 0;
    buf[n] = 0;
    char *v = strstr(buf, "VmSize:");
    return v ? (size_t)strtoull(v + 7, NULL, 10) * 1024 : 0;
}

static void fail(const char *what, size_t align, size_t n) {
    fprintf(stderr, "impossible: %s(align %zu, %zu) did not fail\n", what, align, n);
    exit(1);
}

static long not_enomem; /* failures with another errno */

/* Request number i: one of 8 functions, an alignment 2^(i/8 % 64), 1 or 64 TiB. */
static void impossible(long i, void *old) {
    size_t align = (size_t)1 << (i / 8 % 64), n = opaque(i / 512 % 2 ? 64 * TiB : TiB);
    void *p = NULL;
    int r = 0;
    errno = 0;
    switch (i % 8) {
    case 0: p = malloc(n); break;
    case 1: p = calloc(opaque(1024), n / 1024); break;
    case 2: p = realloc(old, n); break;
    case 3: p = memalign(align, n); break;
    case 4: r = posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, n); errno = r; break;
    case 5: p = aligned_alloc(align, n); break;
    case 6: p = valloc(n); break;
    case 7: p = pvalloc(n); break;
    }
    if (p != NULL) fail((const char *[]){"malloc", "calloc", "realloc", "memalign",
        "posix_memalign", "aligned_alloc", "valloc", "pvalloc"}[i % 8], align, n);
    not_enomem += errno != ENOMEM;
}

int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    double scale = argc > 2 ? atof(argv[2]) : 1.0;
    char *old = malloc(opaque(100)); /* realloc's block; it stays intact */
    memset(old, 7, 100);
    struct rlimit rl;
    getrlimit(RLIMIT_AS, &rl);
    rl.rlim_cur = vm_size() + (256 << 20);
    if (setrlimit(RLIMIT_AS, &rl) != 0) return 2;
    uint64_t sum = 0;
    if (strcmp(mode, "loop") == 0) {
        long count = (long)(2e6 * scale);
        for (long i = 0; i < count; i++) {
            /* what a program does between two failures */
            void *volatile block = malloc(opaque(i % 2 ? 16 : 4000)); /* volatile: not elided */
            free(block);
            impossible(i, old);
        }
        sum = (uint64_t)count;
    } else if (strcmp(mode, "between") == 0) {
        long count = (long)(20000 * scale);
        for (long i = 0; i < count; i++) {
            char *a = malloc(opaque(64)), *b = malloc(opaque(2000)), *c = malloc(opaque(40000));
            char *d = malloc(opaque(300000));
            if (!a || !b || !c || !d) return 1;
            for (size_t k = 0; k < 300000; k += 4096) d[k] = (char)k;
            a[0] = b[1999] = c[39999] = (char)i;
            sum += (unsigned char)(a[0] + b[1999] + c[39999] + d[4096]);
            free(d), free(c), free(b), free(a);
            impossible(i, old);
        }
    } else {
        fprintf(stderr, "usage: impossible loop|between [scale]\n");
        return 2;
    }
    for (int k = 0; k < 100; k++)
        if (old[k] != 7) return 1;
    free(old);
    printf("%llu\nfailures without ENOMEM: %ld\n", (unsigned long long)sum, not_enomem);
    return 0;
}
