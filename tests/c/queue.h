/* A bounded FIFO of blocks behind a mutex, shared by the programs that
   hand blocks between threads: a block is freed by whichever thread pops
   it, usually not the one that allocated it. Define QUEUE_CAP (its
   capacity) before including. */
#ifndef PYMALLOC_TEST_QUEUE_H
#define PYMALLOC_TEST_QUEUE_H
#ifndef QUEUE_CAP
#error "define QUEUE_CAP before including queue.h"
#endif
#include <pthread.h>
#include <stddef.h>

static pthread_mutex_t qlock = PTHREAD_MUTEX_INITIALIZER;
static void *queue[QUEUE_CAP];
static size_t qhead, qlen;

/* Appends p; 0 when the queue is full (p stays the caller's). */
static inline int queue_push(void *p) {
    pthread_mutex_lock(&qlock);
    int pushed = qlen < QUEUE_CAP;
    if (pushed) queue[(qhead + qlen++) % QUEUE_CAP] = p;
    pthread_mutex_unlock(&qlock);
    return pushed;
}

/* The oldest block, or NULL when the queue is empty. */
static inline void *queue_pop(void) {
    void *p = NULL;
    pthread_mutex_lock(&qlock);
    if (qlen) {
        p = queue[qhead];
        qhead = (qhead + 1) % QUEUE_CAP;
        qlen--;
    }
    pthread_mutex_unlock(&qlock);
    return p;
}
#endif
