/* Exits while threads still allocate, after forking a child that exits
   too: with PYMALLOC_SHOW_STATS each process prints its report at exit
   (tests/stats.rs checks them), without it nothing. */
#include "check.h"

#include <pthread.h>
#include <sys/wait.h>

static void *churn(void *arg) {
    (void)arg;
    for (;;) {
        void *p = malloc(opaque(100));
        free(p);
    }
    return NULL;
}

int main(void) {
    static void *keep[100];
    for (int i = 0; i < 100; i++) keep[i] = malloc(opaque(48));
    pthread_t t[2];
    for (int i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, churn, NULL) == 0, "pthread_create");
    pid_t child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        void *p = malloc(opaque(3000));
        CHECK(p != NULL, "malloc in the child");
        exit(0); /* the child's report, from a copy of a busy heap */
    }
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed");
    return 0; /* threads still running */
}
