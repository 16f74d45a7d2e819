/* A freed large block cannot be read or written: the touch faults at once
   (SIGSEGV), for a mapping of its own whether it was cached or unmapped,
   and in the debug mode for a span of a region too.
     large_use_after_free SIZE read|write|moved|grown   must die of SIGSEGV
     large_use_after_free SIZE live                     must exit 0
   "moved": the old address of a block that realloc moved elsewhere.
   "grown": a block that realloc grew to 16 times its size (beyond 32 MiB
   from a span of a region whose right neighbour is free), then freed.
   The driver is tests/c_programs.rs. */
#include "check.h"

int main(int argc, char **argv) {
    CHECK(argc == 3, "usage: large_use_after_free SIZE read|write|moved|grown|live");
    size_t size = strtoul(argv[1], NULL, 0);
    const char *how = argv[2];
    /* A neighbour on each side, so that the freed block stays a block of
       its own (not merged away or unmapped with its region). */
    char *before = malloc(opaque(size));
    volatile char *p = malloc(opaque(size));
    char *after = malloc(opaque(size));
    CHECK(before && p && after, "malloc(%zu) failed", size);
    memset((char *)p, 'x', size);
    if (!strcmp(how, "live")) {
        CHECK(p[size / 2] == 'x', "a live block lost its contents");
        free((char *)p);
        char *again = malloc(opaque(size));
        CHECK(again != NULL, "malloc(%zu) after free failed", size);
        memset(again, 'y', size); /* a reused block is writable again */
        free(again);
    } else if (!strcmp(how, "grown")) {
        free(after);
        after = NULL;
        volatile char *q = realloc((char *)p, opaque(16 * size));
        CHECK(q != NULL, "realloc failed");
        memset((char *)q, 'z', 16 * size);
        free((char *)q);
        printf("%d\n", q[size / 2]); /* faults */
    } else if (!strcmp(how, "moved")) {
        char *q = realloc((char *)p, opaque(4 * size));
        CHECK(q != NULL, "realloc failed");
        CHECK(q != (char *)p, "realloc did not move (the driver chose sizes that must)");
        printf("%d\n", p[size / 2]); /* faults */
    } else {
        free((char *)p);
        if (!strcmp(how, "read")) printf("%d\n", p[size / 2]); /* faults */
        else p[size / 2] = 1;                                   /* faults */
    }
    free(before);
    free(after);
    return 0;
}
