/* dlopen_tls DIR [ROUNDS]: DIR holds copies tls0.so .. tls3.so of
   tls_module.c. Each round dlopens all four, has two new threads and one
   long-lived thread use their thread-local arrays (allocated by
   __tls_get_addr through malloc, growing each thread's DTV), and dlcloses
   them, while two threads allocate. */
#include "stress.h"

#include <dlfcn.h>

enum { MODS = 4 };
typedef int (*touch_fn)(uint64_t);
static touch_fn touch[MODS];
static pthread_rwlock_t mods_lock = PTHREAD_RWLOCK_INITIALIZER;
static atomic_long round_no;

static void use_all(uint64_t tag) {
    for (int m = 0; m < MODS; m++)
        for (int k = 0; k < 3; k++)
            CHECK(touch[m](tag + m), "module %d: this thread's TLS array was corrupted", m);
}

static void *short_user(void *arg) {
    use_all((uintptr_t)arg);
    return NULL;
}

/* Lives through every round: each round's modules are new to it. */
static void *long_user(void *arg) {
    (void)arg;
    while (!atomic_load(&load_stop)) {
        pthread_rwlock_rdlock(&mods_lock);
        for (int m = 0; m < MODS && touch[m]; m++) /* the first use in a round fills */
            CHECK(touch[m](1000 + m) && touch[m](1000 + m), "module %d: long-lived thread's TLS corrupted", m);
        pthread_rwlock_unlock(&mods_lock);
        sched_yield();
    }
    return NULL;
}

int main(int argc, char **argv) {
    CHECK(argc >= 2, "usage: dlopen_tls DIR [ROUNDS]");
    long rounds = arg_or(argc, argv, 2, 200);
    pthread_t th[3];
    load_start(th, 2);
    CHECK(pthread_create(&th[2], NULL, long_user, NULL) == 0, "pthread_create failed");
    for (long r = 0; r < rounds; r++) {
        void *h[MODS];
        pthread_rwlock_wrlock(&mods_lock);
        for (int m = 0; m < MODS; m++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/tls%d.so", argv[1], m);
            h[m] = dlopen(path, RTLD_NOW | RTLD_LOCAL);
            CHECK(h[m] != NULL, "dlopen %s: %s", path, dlerror());
            touch[m] = (touch_fn)dlsym(h[m], "tls_touch");
            CHECK(touch[m] != NULL, "dlsym tls_touch: %s", dlerror());
        }
        pthread_rwlock_unlock(&mods_lock);
        pthread_t users[2];
        for (int i = 0; i < 2; i++)
            CHECK(pthread_create(&users[i], NULL, short_user, (void *)(intptr_t)(r * 8 + i)) == 0, "pthread_create failed");
        use_all(r * 8 + 7);
        for (int i = 0; i < 2; i++) CHECK(pthread_join(users[i], NULL) == 0, "pthread_join failed");
        pthread_rwlock_wrlock(&mods_lock);
        for (int m = 0; m < MODS; m++) {
            touch[m] = NULL;
            CHECK(dlclose(h[m]) == 0, "dlclose: %s", dlerror());
        }
        pthread_rwlock_unlock(&mods_lock);
        atomic_fetch_add(&round_no, 1);
    }
    load_end(th, 3);
    heap_check("end");
    printf("%ld rounds of dlopen/dlclose of %d TLS modules\n", rounds, MODS);
    return 0;
}
