/* fork_stress [FORKS]: a multithreaded parent forks FORKS times (default
   1000) while two threads allocate, one opens, writes and closes streams
   (a stream's first write allocates its buffer under the stream's lock)
   and one calls fflush(NULL) and writes to an open_memstream (stdio's list
   lock, then each stream's lock). Every child allocates, uses stdio, some
   start a thread, and exits; a child not done within 10 s is deadlocked. */
#include "stress.h"

static void *stdio_files(void *arg) {
    (void)arg;
    for (unsigned long i = 0; !atomic_load_explicit(&load_stop, memory_order_relaxed); i++) {
        FILE *f = fopen("/dev/null", "w");
        CHECK(f != NULL, "fopen /dev/null: %s", strerror(errno));
        fprintf(f, "line %lu %s\n", i, "some text to buffer");
        CHECK(fclose(f) == 0, "fclose failed");
    }
    return NULL;
}

static void *stdio_flush_all(void *arg) {
    (void)arg;
    while (!atomic_load_explicit(&load_stop, memory_order_relaxed)) {
        char *buf = NULL;
        size_t len = 0;
        FILE *m = open_memstream(&buf, &len);
        CHECK(m != NULL, "open_memstream failed");
        for (int i = 0; i < 50; i++) fprintf(m, "%d,", i);
        fflush(NULL);
        CHECK(fclose(m) == 0, "fclose(memstream) failed");
        CHECK(len > 100 && buf[0] == '0', "open_memstream wrote %zu bytes", len);
        free(buf);
    }
    return NULL;
}

static void *child_thread(void *arg) {
    for (int i = 0; i < 100; i++) blk_free(blk_new(1 + i * 37, (uintptr_t)arg + i), "child's thread");
    return NULL;
}

static void child(long k) {
    uint64_t seed = 99 + (uint64_t)k;
    unsigned char *b[32];
    for (int i = 0; i < 32; i++) b[i] = blk_new(1 + rng(&seed) % (i ? 5000 : 1 << 20), seed);
    for (int i = 0; i < 32; i++) blk_free(b[i], "child");
    FILE *f = fopen("/dev/null", "w");
    CHECK(f != NULL, "child: fopen failed");
    fprintf(f, "child %ld\n", k);
    fclose(f);
    if (k % 10 == 0) {
        pthread_t t;
        CHECK(pthread_create(&t, NULL, child_thread, (void *)(intptr_t)k) == 0, "child: pthread_create failed");
        CHECK(pthread_join(t, NULL) == 0, "child: pthread_join failed");
    }
    heap_check("child");
    if (k & 1) exit(0); /* atexit handlers and stdio's exit path */
    _exit(0);
}

int main(int argc, char **argv) {
    long forks = arg_or(argc, argv, 1, 1000);
    pthread_t th[4];
    load_start(th, 2);
    CHECK(pthread_create(&th[2], NULL, stdio_files, NULL) == 0, "pthread_create failed");
    CHECK(pthread_create(&th[3], NULL, stdio_flush_all, NULL) == 0, "pthread_create failed");
    for (long k = 0; k < forks; k++) {
        pid_t pid = fork();
        CHECK(pid >= 0, "fork: %s", strerror(errno));
        if (pid == 0) child(k);
        wait_child(pid, 10);
    }
    load_end(th, 4);
    heap_check("parent (end)");
    printf("%ld children forked from a busy parent\n", forks);
    return 0;
}
