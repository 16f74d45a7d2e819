/* thread_churn [THREADS]: THREADS short-lived threads (default 2000),
   created four at a time, half of them detached, while two load threads
   allocate. Each allocates, hands a block to the next generation, leaves a
   malloc'ed value in a pthread key whose destructor frees it at thread
   exit, and exits (glibc then frees the thread's own state through our
   free). */
#include "stress.h"

static pthread_key_t key;
static _Atomic(unsigned char *) handoff;
static atomic_long destructed, started;

static void destructor(void *v) {
    blk_free(v, "key destructor");
    atomic_fetch_add(&destructed, 1);
}

static void *short_life(void *arg) {
    uint64_t seed = 77 + (uintptr_t)arg, tag = seed << 20;
    atomic_fetch_add(&started, 1);
    unsigned char *mine[16];
    for (int i = 0; i < 16; i++) mine[i] = blk_new(1 + rng(&seed) % (i == 0 ? 300000 : 2000), ++tag);
    CHECK(pthread_setspecific(key, blk_new(64, ++tag)) == 0, "pthread_setspecific failed");
    for (int i = 1; i < 16; i++) blk_free(mine[i], "short-lived thread");
    /* The previous thread's block, freed here; ours for the next one. */
    unsigned char *old = atomic_exchange(&handoff, mine[0]);
    if (old) blk_free(old, "handed between threads");
    return NULL;
}

int main(int argc, char **argv) {
    long total = arg_or(argc, argv, 1, 2000);
    CHECK(pthread_key_create(&key, destructor) == 0, "pthread_key_create failed");
    pthread_t load[2];
    load_start(load, 2);
    pthread_attr_t detached;
    pthread_attr_init(&detached);
    pthread_attr_setdetachstate(&detached, PTHREAD_CREATE_DETACHED);
    for (long i = 0; i < total; i += 4) {
        pthread_t th[4];
        for (int j = 0; j < 4; j++) {
            int r;
            while ((r = pthread_create(&th[j], j & 1 ? &detached : NULL, short_life, (void *)(intptr_t)(i + j))) == EAGAIN)
                sched_yield(); /* too many detached threads still exiting */
            CHECK(r == 0, "pthread_create: %s", strerror(r));
        }
        for (int j = 0; j < 4; j += 2) CHECK(pthread_join(th[j], NULL) == 0, "pthread_join failed");
    }
    /* Detached threads may still be exiting: wait for their destructors. */
    struct timespec ms = {0, 1000000};
    for (int i = 0; i < 20000 && atomic_load(&destructed) < total; i++) nanosleep(&ms, NULL);
    CHECK(atomic_load(&destructed) == total, "%ld of %ld key destructors ran", (long)destructed, total);
    load_end(load, 2);
    unsigned char *last = atomic_exchange(&handoff, NULL);
    if (last) blk_free(last, "last handed block");
    heap_check("end");
    printf("%ld threads started and exited\n", (long)started);
    return 0;
}
