/* Allocates from .preinit_array, which runs before libc has initialised
   itself (libc's environ is still NULL there): the options must already be
   resolved from the initial stack. Used by tests/options.rs. */
#include "check.h"

static void *early_block;

static void early(int argc, char **argv, char **envp) {
    (void)argc; (void)argv; (void)envp;
    early_block = malloc(opaque(40));
}

__attribute__((section(".preinit_array"), used)) static void (*preinit)(int, char **, char **) = early;

int main(void) {
    CHECK(early_block != NULL, "malloc from .preinit_array failed");
    free(early_block);
    return 0;
}
