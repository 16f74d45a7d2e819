/* A differential fuzzer of the allocation API, in the spirit of the
 * programs that attack an allocator's promises:
 *
 *   fuzz_diff OPS SEED THREADS [FORKS]
 *
 * THREADS threads (1-8) each make OPS random calls of every allocation
 * function over every size range (0 and 16 B to 64 MiB; aligned requests
 * up to 4 MiB alignment; realloc across every class, span and mapping
 * boundary; impossible sizes), keeping a ledger of their live blocks.
 * Each block is written only in part, as real programs write: its first
 * and last bytes and sometimes a random stretch, so the rest keeps
 * whatever the heap's earlier tenants left there (free-list links, keys,
 * copies of them moved by realloc). Every written byte is checked when
 * the block is freed, reallocated or handed over. A block is sometimes
 * handed to the next thread, which frees it or adopts it. The first
 * thread forks FORKS times (default 0) at random points; each child
 * checks the parent's blocks of that thread, keeps allocating, checks
 * its heap (pymalloc_check_heap, when the library is there) and exits.
 *
 * Every outcome that glibc defines (which calls succeed, the errno of
 * each failure, the zeroes of calloc, the bytes realloc keeps) goes into
 * each thread's digest, printed at the end: the driver (tests/fuzz.rs)
 * runs the same arguments under glibc and under the library, and the
 * outputs must be identical. With the library loaded, its statistics are
 * checked against the ledger too: every 1000 calls when single-threaded,
 * and at the end (everything freed: back to where they started, but for
 * the blocks glibc keeps for each thread and may free as threads exit).
 */
#include "check.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

#include "../../include/pymalloc.h"

#pragma GCC diagnostic ignored "-Wdeprecated-declarations" /* valloc, pvalloc */

/* Weak: glibc 2.36 has no free_sized; glibc has no pymalloc_*. */
extern void free_sized(void *, size_t) __attribute__((weak));
extern int pymalloc_check_heap(void) __attribute__((weak));
extern int pymalloc_get_stats(pymalloc_stats *) __attribute__((weak));

enum { MAX_THREADS = 8, SLOTS = 512, STRETCH = 48 };
static const size_t MiB = 1 << 20;

struct rng { uint64_t s; };
static uint64_t next(struct rng *r) {
    r->s ^= r->s << 13, r->s ^= r->s >> 7, r->s ^= r->s << 17;
    return r->s;
}
static size_t below(struct rng *r, size_t n) { return n ? next(r) % n : 0; }

/* A live block as its ledger entry knows it: where it was written. */
struct block {
    unsigned char *p;
    size_t size;    /* requested */
    uint64_t tag;   /* what its written bytes derive from */
    size_t from, to; /* the written stretch (empty if from == to) */
    int zeroed;     /* from calloc, never written since: all zero */
    int plain;      /* from malloc, calloc or realloc: free_sized may free it */
};

static unsigned char pat(uint64_t tag, size_t i) { return (unsigned char)(tag * 0x9E37u + i * 131u + (i >> 8)); }

/* Writes a block's first and last byte and, sometimes, a stretch. */
static void write_block(struct rng *r, struct block *b) {
    b->from = b->to = 0;
    b->zeroed = 0;
    if (b->size == 0) return;
    b->p[0] = pat(b->tag, 0);
    b->p[b->size - 1] = pat(b->tag, b->size - 1);
    if (below(r, 3) == 0) {
        b->from = below(r, b->size);
        b->to = b->from + below(r, STRETCH + 1);
        if (b->to > b->size) b->to = b->size;
        for (size_t i = b->from; i < b->to; i++) b->p[i] = pat(b->tag, i);
    }
}

/* Checks the written bytes below `limit` (all of them: SIZE_MAX). */
static void check_block(const struct block *b, size_t limit, const char *what) {
    size_t n = b->size < limit ? b->size : limit;
    if (n == 0) return;
    if (b->zeroed) {
        size_t at[4] = {0, n - 1, n / 2, n / 3};
        for (int k = 0; k < 4; k++)
            CHECK(b->p[at[k]] == 0, "%s: calloc'ed block %p (%zu bytes) byte %zu is %d", what, (void *)b->p, b->size,
                  at[k], b->p[at[k]]);
        return;
    }
    CHECK(b->p[0] == pat(b->tag, 0), "%s: block %p (%zu bytes) lost its first byte", what, (void *)b->p, b->size);
    if (b->size - 1 < n)
        CHECK(b->p[b->size - 1] == pat(b->tag, b->size - 1), "%s: block %p (%zu bytes) lost its last byte", what,
              (void *)b->p, b->size);
    for (size_t i = b->from; i < b->to && i < n; i++)
        CHECK(b->p[i] == pat(b->tag, i), "%s: block %p (%zu bytes) lost byte %zu", what, (void *)b->p, b->size, i);
}

/* Sizes: every range, with the boundaries between them. */
static const size_t edges[] = {0, 1, 8, 15, 16, 17, 31, 32, 33, 48, 496, 511, 512, 513, 528, 1024, 1025,
                               4095, 4096, 4097, 16383, 16384, 16385, 65536, 131071, 131072, 131073, 262144,
                               1048576, 4194303, 4194304, 4194305, 4198400, 8388608};
static size_t pick_size(struct rng *r) {
    switch (below(r, 1000)) {
    case 0 ... 39: return edges[below(r, sizeof edges / sizeof *edges)];
    case 40 ... 639: return 1 + below(r, 512);
    case 640 ... 899: return 513 + below(r, 16 << 10);
    case 900 ... 969: return (16 << 10) + below(r, 112 << 10);
    case 970 ... 994: return (128 << 10) + below(r, 4 * MiB);
    default: return 4 * MiB + below(r, 60 * MiB);
    }
}
static size_t pick_align(struct rng *r) {
    return (size_t)1 << (below(r, 4) ? below(r, 13) : below(r, 23));
}
/* Sizes no allocator can serve. */
static size_t impossible(struct rng *r) {
    static const size_t huge[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX - 4096, SIZE_MAX / 2 + 1, (size_t)1 << 62};
    return huge[below(r, sizeof huge / sizeof *huge)];
}

struct thread {
    int id;
    long ops, forks;
    struct rng r;
    struct rng side; /* for what depends on timing (see hand_over) */
    struct block slot[SLOTS];
    size_t live_bytes; /* requested, for the budget */
    uint64_t digest;
    long forked;
    /* Blocks handed to this thread by the one before it. */
    pthread_mutex_t inbox_lock;
    struct block inbox[64];
    int inbox_len;
};
static struct thread threads[MAX_THREADS];
static int nthreads;
static atomic_int running;
/* The budget of requested bytes each thread may hold. */
static const size_t BUDGET = 96 << 20;

/* Mixes an outcome into the thread's digest (FNV-1a over 64-bit words). */
static void note(struct thread *t, uint64_t what) {
    t->digest = (t->digest ^ what) * 0x100000001b3ull;
}
/* The outcome of an allocation: success (its pointer must be aligned
   and non-null) or failure with its errno. */
static void note_alloc(struct thread *t, int op, size_t n, void *p, int err) {
    note(t, (uint64_t)op << 56 ^ n);
    note(t, p ? 1 : 2 + (uint64_t)err);
}

static void take(struct thread *t, struct block *b, void *p, size_t n, size_t align, int zeroed) {
    CHECK(((uintptr_t)p & ((align > 16 ? align : 16) - 1)) == 0, "thread %d: %p not aligned to %zu", t->id, p, align);
    b->p = p;
    b->plain = 1; /* the caller says otherwise for aligned allocations */
    b->size = n;
    b->tag = next(&t->r);
    t->live_bytes += n;
    if (zeroed) {
        b->zeroed = 1;
        check_block(b, SIZE_MAX, "calloc");
        if (below(&t->r, 2)) write_block(&t->r, b); /* else left as calloc gave it */
    } else {
        write_block(&t->r, b);
    }
    if (n && below(&t->r, 16) == 0) {
        size_t usable = malloc_usable_size(p);
        CHECK(usable >= n, "thread %d: usable size %zu of a %zu-byte block", t->id, usable, n);
    }
}

static void release(struct thread *t, struct block *b, const char *what) {
    check_block(b, SIZE_MAX, what);
    t->live_bytes -= b->size;
    int sized = below(&t->r, 4) == 0; /* drawn whatever the allocator */
    if (free_sized && sized && b->plain && b->size)
        free_sized(b->p, b->size);
    else
        free(b->p);
    b->p = NULL;
}

static int over_budget(struct thread *t, size_t n) { return t->live_bytes + n > BUDGET; }

/* Allocates into the empty slot `b` with a random function. */
static void allocate(struct thread *t, struct block *b) {
    struct rng *r = &t->r;
    size_t n = pick_size(r);
    if (over_budget(t, n)) n = below(r, 512);
    int op = below(r, 100);
    void *p = NULL;
    size_t align = 16;
    int zeroed = 0;
    errno = 0;
    if (op < 55) {
        p = malloc(n);
    } else if (op < 70) {
        size_t count = 1 + below(r, 8), each = n / count;
        p = calloc(count, each);
        n = count * each;
        zeroed = 1;
    } else if (op < 78) {
        p = realloc(NULL, n);
    } else if (op < 84) {
        align = pick_align(r);
        p = memalign(align, n);
    } else if (op < 89) {
        align = pick_align(r);
        n = (n + align - 1) & ~(align - 1); /* C11: a multiple of the alignment */
        p = aligned_alloc(align, n);
    } else if (op < 95) {
        align = pick_align(r);
        if (align < sizeof(void *)) align = sizeof(void *);
        int e = posix_memalign(&p, align, n);
        note(t, (uint64_t)e);
        if (e) p = NULL;
    } else if (op < 98) {
        align = 4096;
        p = valloc(n);
    } else {
        align = 4096;
        p = pvalloc(n);
        n = (n + 4095) & ~(size_t)4095;
    }
    int err = p ? 0 : errno_now();
    note_alloc(t, op, n, p, err);
    CHECK(p != NULL, "thread %d: allocation (op %d) of %zu bytes aligned %zu failed: %s", t->id, op, n, align,
          strerror(err));
    take(t, b, p, n, align, zeroed);
    b->plain = op < 78; /* the aligned families: only free (C23) */
}

/* realloc or reallocarray of a live block, across every boundary. */
static void resize(struct thread *t, struct block *b) {
    struct rng *r = &t->r;
    size_t n;
    switch (below(r, 4)) {
    case 0: n = pick_size(r); break;
    case 1: n = b->size + 1 + below(r, b->size / 2 + 64); break; /* grow a little */
    case 2: n = b->size / (2 + below(r, 4)); break;              /* shrink */
    default: n = b->size * (2 + below(r, 3)); break;             /* grow a lot */
    }
    if (n > 64 * MiB || over_budget(t, n)) n = b->size / 2;
    if (n == 0 && below(r, 2)) n = 1; /* realloc(p, 0) now and then only */
    check_block(b, SIZE_MAX, "before realloc");
    errno = 0;
    void *q = below(r, 8) ? realloc(b->p, n) : reallocarray(b->p, 1, n);
    int err = q ? 0 : errno_now();
    note_alloc(t, 200, n, q, n ? err : 0);
    if (n == 0) { /* freed (glibc): NULL */
        CHECK(q == NULL, "thread %d: realloc(p, 0) returned %p", t->id, q);
        t->live_bytes -= b->size;
        b->p = NULL;
        return;
    }
    CHECK(q != NULL, "thread %d: realloc to %zu failed: %s", t->id, n, strerror(err));
    struct block moved = *b;
    moved.p = q;
    check_block(&moved, n, "realloc");
    t->live_bytes -= b->size;
    take(t, b, q, n, 16, 0);
}

/* Calls that must fail, the same way under every allocator. */
static void fail(struct thread *t, struct block *b) {
    struct rng *r = &t->r;
    size_t n = impossible(r);
    void *p = NULL;
    int op = below(r, 6);
    errno = 0;
    switch (op) {
    case 0: p = malloc(n); break;
    case 1: p = calloc(2 + below(r, 100), n / 2 + 1); break;
    case 2: p = memalign(16 << below(r, 10), n); break;
    case 3: {
        int e = posix_memalign(&p, 3 + 8 * below(r, 4), 64); /* a bad alignment */
        note(t, (uint64_t)e);
        p = NULL;
        break;
    }
    case 4: p = b->p ? realloc(b->p, n) : NULL; break; /* leaves the block as it was */
    default: p = b->p ? reallocarray(b->p, n, 2) : NULL; break;
    }
    note_alloc(t, 100 + op, n, p, errno_now());
    CHECK(p == NULL, "thread %d: an impossible request (op %d, %zu bytes) returned %p", t->id, op, n, p);
    if (b->p) check_block(b, SIZE_MAX, "after a failed realloc");
}

/* Hands a block to the next thread, which resizes and frees it (or
   frees it here when that thread's inbox is full). What happens to
   handed blocks depends on timing, so it draws nothing from `t->r` and
   goes into no digest. */
static void hand_over(struct thread *t, struct block *b) {
    check_block(b, SIZE_MAX, "before handing over");
    struct thread *to = &threads[(t->id + 1) % nthreads];
    pthread_mutex_lock(&to->inbox_lock);
    int ok = to->inbox_len < 64;
    if (ok) to->inbox[to->inbox_len++] = *b;
    pthread_mutex_unlock(&to->inbox_lock);
    if (!ok) free(b->p);
    t->live_bytes -= b->size;
    b->p = NULL;
}

/* Checks, resizes (through every range, half the time) and frees what
   the thread before handed over. */
static void drain(struct thread *t) {
    struct block got[64];
    pthread_mutex_lock(&t->inbox_lock);
    int n = t->inbox_len;
    memcpy(got, t->inbox, sizeof got[0] * n);
    t->inbox_len = 0;
    pthread_mutex_unlock(&t->inbox_lock);
    for (int i = 0; i < n; i++) {
        struct block *b = &got[i];
        check_block(b, SIZE_MAX, "handed over");
        size_t size = pick_size(&t->side);
        void *q = b->size & 1 || size == 0 || size > 8 * MiB ? NULL : realloc(b->p, size);
        if (q) {
            struct block moved = *b;
            moved.p = q;
            check_block(&moved, size, "handed over, reallocated");
            b->p = q;
        }
        free(b->p);
    }
}

static void heap_check(const char *where) {
    if (pymalloc_check_heap) CHECK(pymalloc_check_heap() == 0, "%s: pymalloc_check_heap failed", where);
}

/* With the library loaded, one thread: its statistics agree with the
   ledger of live blocks (usable sizes), above what was live at start.
   (In the debug mode the statistics count the heap's blocks, guards
   included, and malloc_usable_size is the requested size: blocks only.) */
static pymalloc_stats base;
static void check_ledger(struct thread *t, const char *where) {
    if (!pymalloc_get_stats || nthreads != 1) return;
    static int debug = -1;
    if (debug < 0) debug = getenv("PYMALLOC_DEBUG") && strcmp(getenv("PYMALLOC_DEBUG"), "1") == 0;
    size_t blocks = 0, bytes = 0;
    for (int i = 0; i < SLOTS; i++)
        if (t->slot[i].p) blocks++, bytes += malloc_usable_size(t->slot[i].p);
    pymalloc_stats now = {.size = sizeof now};
    CHECK(pymalloc_get_stats(&now) == 0, "pymalloc_get_stats");
    CHECK(now.blocks_in_use == base.blocks_in_use + blocks && (debug || now.bytes_in_use == base.bytes_in_use + bytes),
          "%s: statistics say %zu blocks, %zu bytes in use; the ledger %zu, %zu", where,
          now.blocks_in_use - base.blocks_in_use, now.bytes_in_use - base.bytes_in_use, blocks, bytes);
    struct mallinfo2 mi = mallinfo2();
    CHECK(mi.uordblks + mi.hblkhd == now.bytes_in_use, "%s: mallinfo2 disagrees", where);
}

static void fork_child(struct thread *t) {
    pid_t pid = fork();
    CHECK(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        for (int i = 0; i < SLOTS; i++)
            if (t->slot[i].p) check_block(&t->slot[i], SIZE_MAX, "child, parent's block");
        for (long k = 0; k < 2000; k++) {
            struct block *b = &t->slot[below(&t->r, SLOTS)];
            if (b->p) release(t, b, "child"); else allocate(t, b);
        }
        heap_check("child");
        for (int i = 0; i < SLOTS; i++)
            if (t->slot[i].p) release(t, &t->slot[i], "child (end)");
        heap_check("child (end)");
        _exit(0);
    }
    for (int waited = 0;; waited++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child ended badly (status 0x%x)", st);
            return;
        }
        CHECK(waited < 30000, "child %d did not finish within 30 s: deadlocked", (int)pid);
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
}

/* Every thread waits here before its first call: the statistics' base
   line is taken once they all exist (pthread_create allocates, and the
   blocks it keeps for a thread's stack stay after the thread exits). */
static pthread_barrier_t started;

static void *run(void *arg) {
    struct thread *t = arg;
    pthread_barrier_wait(&started);
    long fork_every = t->forks ? t->ops / (t->forks + 1) : 0;
    for (long k = 0; k < t->ops; k++) {
        struct block *b = &t->slot[below(&t->r, SLOTS)];
        int op = below(&t->r, 100);
        if (!b->p) {
            if (op < 2) fail(t, b); else allocate(t, b);
        } else if (op < 40) {
            release(t, b, "free");
        } else if (op < 70) {
            resize(t, b);
        } else if (op < 72) {
            fail(t, b);
        } else if (op < 75 && nthreads > 1) {
            hand_over(t, b);
        } else if (op < 77) {
            check_block(b, SIZE_MAX, "check");
        }
        if ((k & 63) == 0) drain(t);
        if ((k % 1000) == 999) check_ledger(t, "ledger");
        if (fork_every && k % fork_every == fork_every - 1 && t->forked < t->forks) {
            fork_child(t);
            t->forked++;
        }
        if (k % 100000 == 99999 && below(&t->r, 4) == 0) malloc_trim(0);
    }
    atomic_fetch_sub(&running, 1);
    /* Wait for the others before the last drain: nothing is handed to a
       thread that has gone. */
    while (atomic_load(&running) > 0) drain(t);
    drain(t);
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc >= 4, "usage: fuzz_diff OPS SEED THREADS [FORKS]");
    long ops = strtol(argv[1], NULL, 10);
    uint64_t seed = strtoull(argv[2], NULL, 10);
    nthreads = atoi(argv[3]);
    long forks = argc > 4 ? strtol(argv[4], NULL, 10) : 0;
    CHECK(ops > 0 && nthreads >= 1 && nthreads <= MAX_THREADS && forks >= 0, "bad arguments");
    atomic_store(&running, nthreads);
    pthread_barrier_init(&started, NULL, nthreads);
    pthread_t th[MAX_THREADS];
    for (int i = 0; i < nthreads; i++) {
        struct thread *t = &threads[i];
        t->id = i;
        t->ops = ops;
        t->forks = i == 0 ? forks : 0;
        t->r.s = seed * 0x9E3779B97F4A7C15ull + (uint64_t)i * 0xBF58476D1CE4E5B9ull + 1;
        t->side.s = t->r.s ^ 0x94D049BB133111EBull;
        t->digest = 0xcbf29ce484222325ull;
        pthread_mutex_init(&t->inbox_lock, NULL);
    }
    for (int i = 1; i < nthreads; i++) CHECK(pthread_create(&th[i], NULL, run, &threads[i]) == 0, "pthread_create");
    if (pymalloc_get_stats) {
        base.size = sizeof base;
        CHECK(pymalloc_get_stats(&base) == 0, "pymalloc_get_stats");
    }
    run(&threads[0]);
    for (int i = 1; i < nthreads; i++) CHECK(pthread_join(th[i], NULL) == 0, "pthread_join");
    for (int i = 0; i < nthreads; i++)
        for (int j = 0; j < SLOTS; j++)
            if (threads[i].slot[j].p) release(&threads[i], &threads[i].slot[j], "end");
    heap_check("end");
    if (pymalloc_get_stats) {
        pymalloc_stats end = {.size = sizeof end};
        CHECK(pymalloc_get_stats(&end) == 0, "pymalloc_get_stats");
        /* Exact with one thread; with more, glibc may have freed (never
           added) the blocks it keeps for each thread (its TLS vectors). */
        int exact = end.blocks_in_use == base.blocks_in_use && end.bytes_in_use == base.bytes_in_use;
        int libc_freed = end.blocks_in_use < base.blocks_in_use && end.bytes_in_use < base.bytes_in_use &&
                         base.blocks_in_use - end.blocks_in_use <= (size_t)nthreads;
        CHECK(exact || (nthreads > 1 && libc_freed),
              "everything freed, yet %zu blocks and %zu bytes are in use (%zu and %zu at start)", end.blocks_in_use,
              end.bytes_in_use, base.blocks_in_use, base.bytes_in_use);
    }
    for (int i = 0; i < nthreads; i++) printf("thread %d: %ld calls, digest %016llx\n", i, ops,
                                              (unsigned long long)threads[i].digest);
    return 0;
}
