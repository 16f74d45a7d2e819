/* Threads whose first allocation comes in the last round of glibc's key
 * destructors (from the destructor of another key, created after ours):
 * glibc runs no more rounds, so the library's own destructor never runs
 * for the caches they make. 500 such threads, one after another: their
 * caches must still be given back (the library finds their threads gone),
 * not left registered holding what they freed. */
#include "check.h"

#include <pthread.h>

#include "../../include/pymalloc.h"

extern int pymalloc_get_stats(pymalloc_stats *) __attribute__((weak));

static pthread_key_t key;

/* glibc makes PTHREAD_DESTRUCTOR_ITERATIONS (4) rounds: set the value
   again in the first three, allocate in the last. */
static void late(void *value) {
    long round = (long)value;
    if (round < 4) {
        pthread_setspecific(key, (void *)(round + 1));
        return;
    }
    void *volatile p[64];
    for (int i = 0; i < 64; i++) p[i] = malloc(opaque(64 + 256 * i));
    for (int i = 0; i < 64; i++) free(p[i]);
}

static void *thread(void *arg) {
    (void)arg;
    pthread_setspecific(key, (void *)1); /* no allocation: key < 32 */
    return NULL;
}

static void *warm(void *arg) {
    (void)arg;
    free(malloc(opaque(10))); /* the library's key comes first */
    return NULL;
}

int main(void) {
    CHECK(pymalloc_get_stats != NULL, "libpymalloc is not loaded");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, warm, NULL) == 0 && pthread_join(t, NULL) == 0, "pthread");
    CHECK(pthread_key_create(&key, late) == 0, "pthread_key_create");
    for (int i = 0; i < 500; i++)
        CHECK(pthread_create(&t, NULL, thread, NULL) == 0 && pthread_join(t, NULL) == 0, "pthread %d", i);
    pymalloc_stats st = {.size = sizeof st};
    CHECK(pymalloc_get_stats(&st) == 0, "pymalloc_get_stats");
    /* The main thread's, and the last thread's (found gone only when the
       next cache is made, or on a tick). */
    CHECK(st.thread_caches <= 2, "%zu thread caches registered, holding %zu bytes", st.thread_caches,
          st.thread_cache_bytes);
    printf("%zu caches, %zu bytes mapped\n", st.thread_caches, st.bytes_mapped);
    return 0;
}
