/* early_ctor: linked with libearly.so (early_ctor_lib.c), whose
   constructor allocates before ours may have run; checks and frees those
   blocks, then allocates from threads and forks. */
#include "stress.h"

int early_release(void);

int main(void) {
    CHECK(early_release() == 100, "early_release");
    pthread_t th[2];
    load_start(th, 2);
    for (int k = 0; k < 20; k++) {
        pid_t pid = fork();
        CHECK(pid >= 0, "fork failed");
        if (pid == 0) {
            blk_free(blk_new(1000, 1), "child");
            heap_check("child");
            _exit(0);
        }
        wait_child(pid, 10);
    }
    load_end(th, 2);
    heap_check("end");
    printf("constructor blocks checked and freed\n");
    return 0;
}
