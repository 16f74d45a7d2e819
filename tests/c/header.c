/* The generated header: version macros and pymalloc_version() agree.
   Built only in the linked configuration (-I include -lpymalloc). */
#include "check.h"

#include "pymalloc.h"

#if !defined(PYMALLOC_VERSION_MAJOR) || !defined(PYMALLOC_VERSION_MINOR) || !defined(PYMALLOC_VERSION_PATCH)
#error "pymalloc.h must define PYMALLOC_VERSION_MAJOR, PYMALLOC_VERSION_MINOR and PYMALLOC_VERSION_PATCH"
#endif

/* The macros are usable in preprocessor arithmetic. */
#if PYMALLOC_VERSION_MAJOR < 0 || PYMALLOC_VERSION_MINOR < 0 || PYMALLOC_VERSION_PATCH < 0
#error "negative version number"
#endif

int main(void) {
    char want[64];
    snprintf(want, sizeof want, "%lu.%lu.%lu", (unsigned long)PYMALLOC_VERSION_MAJOR,
             (unsigned long)PYMALLOC_VERSION_MINOR, (unsigned long)PYMALLOC_VERSION_PATCH);
    const char *v = pymalloc_version();
    CHECK(v != NULL, "pymalloc_version() returned NULL");
    CHECK(strcmp(v, want) == 0, "pymalloc_version() = \"%s\" but the header macros say \"%s\"", v, want);
    CHECK(pymalloc_version() == v || strcmp(pymalloc_version(), v) == 0, "pymalloc_version() is not stable");
    /* the header coexists with the standard declarations */
    void *p = malloc(opaque(10));
    CHECK(p != NULL, "malloc failed");
    free(p);
    return 0;
}
