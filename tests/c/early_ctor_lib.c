/* libearly.so for early_ctor.c: its constructor allocates (and starts a
   thread that allocates) before libpymalloc's constructor has run, when
   it is initialised first (see tests/stress.rs). */
#include "stress.h"

enum { KEPT = 100 };
static unsigned char *kept[KEPT];

static void *early_thread(void *arg) {
    for (int i = 0; i < 200; i++) blk_free(blk_new(1 + i * 53, (uintptr_t)arg + i), "early thread");
    return NULL;
}

__attribute__((constructor)) static void early_init(void) {
    for (int i = 0; i < KEPT; i++) kept[i] = blk_new(1 + (size_t)i * 999, 5000 + i);
    void *a = calloc(10, 1000), *b = NULL;
    CHECK(a != NULL && posix_memalign(&b, 4096, 100) == 0, "allocation in a constructor failed");
    a = realloc(a, 300000);
    CHECK(a != NULL, "realloc in a constructor failed");
    free(a);
    free(b);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, early_thread, NULL) == 0, "pthread_create in a constructor failed");
    CHECK(pthread_join(t, NULL) == 0, "pthread_join failed");
}

/* Checks and frees what the constructor kept; returns how many. */
int early_release(void) {
    for (int i = 0; i < KEPT; i++) {
        CHECK(malloc_usable_size(kept[i]) >= 1 + (size_t)i * 999, "a constructor's block lost its size");
        blk_free(kept[i], "block from a constructor");
    }
    return KEPT;
}
