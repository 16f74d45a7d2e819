/* The library loaded with dlopen (not preloaded, not linked): glibc finds
 * its 8 bytes of initial-exec TLS in the static TLS reserve, and its own
 * functions, called through dlsym from the main thread and from other
 * threads (so that thread caches are made, used and flushed at thread
 * exit), work; the heap checks out at the end. The process's own malloc
 * stays glibc's. Then a thread that has a cache outlives dlclose: the
 * library stays mapped (it is linked -z nodelete), so the key destructor
 * that flushes the cache at the thread's exit still has its code.
 *   dlopen_library /path/to/libpymalloc.so */
#include <dlfcn.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../include/pymalloc.h"

static void *(*lib_malloc)(size_t);
static void (*lib_free)(void *);
static int (*lib_check_heap)(void);

static void *worker(void *arg) {
    enum { N = 4096 };
    static __thread unsigned char *blocks[N];
    uint64_t s = 88172645463325252ull + (uintptr_t)arg;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < N; i++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            size_t n = 1 + s % 2048;
            blocks[i] = lib_malloc(n);
            if (!blocks[i]) { fprintf(stderr, "malloc(%zu) failed\n", n); exit(1); }
            memset(blocks[i], (int)i, n < 64 ? n : 64);
        }
        for (int i = 0; i < N; i++) {
            if (blocks[i][0] != (unsigned char)i) { fprintf(stderr, "block %d corrupted\n", i); exit(1); }
            lib_free(blocks[i]);
        }
    }
    return NULL;
}

static sem_t used, closed;

/* Allocates through the library (so it gets a cache and the library's
   key destructor), then waits until main has closed the library, then
   exits: the destructor runs after dlclose. */
static void *lingering(void *arg) {
    (void)arg;
    void *p[64];
    for (int i = 0; i < 64; i++) p[i] = lib_malloc(16 + i * 8);
    for (int i = 0; i < 64; i++) lib_free(p[i]);
    sem_post(&used);
    sem_wait(&closed);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: dlopen_library LIB\n"); return 2; }
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    lib_malloc = (void *(*)(size_t))dlsym(h, "malloc");
    lib_free = (void (*)(void *))dlsym(h, "free");
    lib_check_heap = (int (*)(void))dlsym(h, "pymalloc_check_heap");
    if (!lib_malloc || !lib_free || !lib_check_heap) { fprintf(stderr, "dlsym: %s\n", dlerror()); return 1; }
    if (lib_malloc == (void *(*)(size_t))malloc) { fprintf(stderr, "the library's malloc is the process's\n"); return 1; }
    pthread_t t[4];
    for (int round = 0; round < 5; round++) {
        for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(round * 4 + i));
        worker(NULL);
        for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    }
    if (lib_check_heap() != 0) { fprintf(stderr, "heap check failed\n"); return 1; }
    /* The workers' caches went back when they exited; the main thread's
       is still there, holding what it freed last. */
    int (*get_stats)(pymalloc_stats *) = (int (*)(pymalloc_stats *))dlsym(h, "pymalloc_get_stats");
    pymalloc_stats st = {.size = sizeof st};
    if (!get_stats || get_stats(&st) != 0) { fprintf(stderr, "pymalloc_get_stats\n"); return 1; }
    if (st.thread_caches != 1 || st.thread_cache_blocks == 0 || st.blocks_in_use != 0) {
        fprintf(stderr, "%zu caches holding %zu blocks, %zu blocks in use\n", st.thread_caches,
                st.thread_cache_blocks, st.blocks_in_use);
        return 1;
    }
    sem_init(&used, 0, 0);
    sem_init(&closed, 0, 0);
    pthread_t late;
    pthread_create(&late, NULL, lingering, NULL);
    sem_wait(&used);
    if (dlclose(h) != 0) { fprintf(stderr, "dlclose: %s\n", dlerror()); return 1; }
    sem_post(&closed);
    pthread_join(late, NULL);
    puts("ok");
    return 0;
}
