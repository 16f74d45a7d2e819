/* Built against an installed copy with
   cc installed_app.c $(pkg-config --cflags --libs pymalloc)
   (tests/install.rs): calls the API and allocates through the library. */
#include <stdio.h>
#include <stdlib.h>

#include <pymalloc.h>

int main(void) {
    void *volatile p = malloc(100);
    printf("%s\n", pymalloc_version());
    fflush(stdout);
    pymalloc_print_stats();
    free(p);
    return 0;
}
