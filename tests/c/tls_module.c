/* A shared object for dlopen_tls.c: thread-local arrays too large for the
   static TLS surplus, so every thread's copy is allocated on first use by
   __tls_get_addr (through malloc) and freed at dlclose or thread exit. */
#include <stddef.h>
#include <stdint.h>

static __thread unsigned char big[64 << 10];
static __thread uint64_t uses;

/* Fills this thread's copy with `tag` if it is new, checks it otherwise;
   returns 0 when the contents are wrong. */
int tls_touch(uint64_t tag) {
    if (uses++ == 0) {
        for (size_t j = 0; j < sizeof big; j += 512) big[j] = (unsigned char)(tag + j / 512);
        big[sizeof big - 1] = (unsigned char)tag;
        return 1;
    }
    return big[sizeof big - 1] == (unsigned char)tag;
}
