/* fork_signal single|multi|forking [FORKS]: the main thread allocates and
   frees in a tight loop while signals interrupt it (setitimer when
   single-threaded; a signalling thread, with two more threads allocating,
   when multi; and with one more thread that forks in a loop of its own,
   when forking: two forks at once, one from a handler that may have
   interrupted the heap's lock holder); the handler calls fork(). In the
   child the handler returns, so the interrupted malloc or free resumes and
   finishes; the child then allocates, checks, (multi) starts a thread, and
   exits. Children that do not finish within 10 s are deadlocked. */
#include "stress.h"

#include <sys/time.h>

enum { MAXFORKS = 100000 };
static volatile sig_atomic_t in_child, in_alloc;
static pid_t pids[MAXFORKS];
static volatile sig_atomic_t npids;
static long target, forks_in_alloc;

static void on_signal(int sig) {
    (void)sig;
    int saved = errno;
    if (!in_child && npids < target) {
        int was_in_alloc = in_alloc;
        pid_t pid = fork();
        if (pid == 0) {
            in_child = 1; /* return: the interrupted call resumes */
        } else {
            CHECK(pid > 0, "fork in a signal handler: %s", strerror(errno));
            forks_in_alloc += was_in_alloc;
            pids[npids] = pid;
            npids = npids + 1;
        }
    }
    errno = saved;
}

static void *child_thread(void *arg) {
    for (int i = 0; i < 100; i++) blk_free(blk_new(1 + i * 37, (uintptr_t)arg + i), "child's thread");
    return NULL;
}

static void child_work(int multi, unsigned char **slot, int nslots) {
    for (int i = 0; i < nslots; i++)
        if (slot[i]) blk_verify(slot[i], "child, parent's block");
    for (int i = 0; i < 100; i++) blk_free(blk_new(1 + i * 97, i), "child");
    if (multi) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, child_thread, NULL) == 0, "child: pthread_create failed");
        CHECK(pthread_join(t, NULL) == 0, "child: pthread_join failed");
    }
    heap_check("child");
    _exit(0);
}

static void *signaller(void *arg) {
    pthread_t main_thread = *(pthread_t *)arg;
    struct timespec t = {0, 150000};
    while (!atomic_load(&load_stop)) {
        pthread_kill(main_thread, SIGALRM);
        nanosleep(&t, NULL);
    }
    return NULL;
}

/* Forks in a loop while the main thread's handler forks too; each child
   allocates, checks its heap and exits. */
static void *forker(void *arg) {
    (void)arg;
    while (!atomic_load(&load_stop)) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int i = 0; i < 100; i++) blk_free(blk_new(1 + i * 53, i), "forker's child");
            heap_check("forker's child");
            _exit(0);
        }
        CHECK(pid > 0, "fork: %s", strerror(errno));
        wait_child(pid, 10);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int forking = argc >= 2 && !strcmp(argv[1], "forking");
    CHECK(argc >= 2 && (!strcmp(argv[1], "single") || !strcmp(argv[1], "multi") || forking),
          "usage: fork_signal single|multi|forking [FORKS]");
    int multi = forking || !strcmp(argv[1], "multi");
    target = arg_or(argc, argv, 2, 1000);
    CHECK(target <= MAXFORKS, "too many forks");

    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    CHECK(sigaction(SIGALRM, &sa, NULL) == 0, "sigaction failed");

    pthread_t th[4], self = pthread_self();
    sigset_t alrm, old;
    sigemptyset(&alrm);
    sigaddset(&alrm, SIGALRM);
    if (multi) { /* only the main thread takes the signal */
        pthread_sigmask(SIG_BLOCK, &alrm, &old);
        load_start(th, 2);
        CHECK(pthread_create(&th[2], NULL, signaller, &self) == 0, "pthread_create failed");
        if (forking) CHECK(pthread_create(&th[3], NULL, forker, NULL) == 0, "pthread_create failed");
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    } else {
        struct itimerval it = {{0, 150}, {0, 150}};
        CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0, "setitimer failed");
    }

    enum { N = 64 };
    unsigned char *slot[N] = {0};
    uint64_t seed = 42, tag = 0;
    long reaped = 0;
    while (reaped < target) {
        size_t i = rng(&seed) % N;
        size_t n = 1 + rng(&seed) % (rng(&seed) % 8 ? 600 : 200000);
        unsigned char *old = slot[i];
        if (old) blk_verify(old, "parent");
        slot[i] = NULL; /* a child checks the blocks in `slot` */
        in_alloc = 1;
        free(old);
        void *burst[8]; /* more time inside the allocator, less filling blocks */
        for (int k = 0; k < 8; k++) burst[k] = malloc(opaque(16 + 16 * k));
        for (int k = 0; k < 8; k++) free(burst[k]);
        unsigned char *p = malloc(opaque(n < sizeof(struct blk) ? sizeof(struct blk) : n));
        in_alloc = 0;
        if (in_child) child_work(multi, slot, N);
        CHECK(p != NULL, "malloc failed");
        struct blk h = {n < sizeof h ? sizeof h : n, ++tag};
        memcpy(p, &h, sizeof h);
        blk_fill(p, sizeof h, h.size, h.tag);
        slot[i] = p;
        /* Reaped in batches (the signal pending meanwhile arrives at the
           unblock, outside the allocator), with signals blocked: a child
           must resume in the loop above. */
        if (npids - reaped >= 32 || npids == target) {
            pthread_sigmask(SIG_BLOCK, &alrm, NULL);
            if (in_child) child_work(multi, slot, N); /* forked just before the block */
            while (reaped < npids) wait_child(pids[reaped++], 10);
            pthread_sigmask(SIG_UNBLOCK, &alrm, NULL);
        }
    }
    if (multi) load_end(th, forking ? 4 : 3);
    else {
        struct itimerval off = {{0, 0}, {0, 0}};
        setitimer(ITIMER_REAL, &off, NULL);
    }
    for (int i = 0; i < N; i++)
        if (slot[i]) blk_free(slot[i], "parent (end)");
    heap_check("parent (end)");
    printf("%ld forks from a signal handler (%s), %ld while in malloc or free\n", target, argv[1], forks_in_alloc);
    CHECK(forks_in_alloc > 0, "no signal arrived inside malloc or free: the test proves nothing");
    return 0;
}
