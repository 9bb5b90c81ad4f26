/* cli/cmd_cache.c: `gpuseg cache dir` prints the program-cache folder; `gpuseg cache clear`
 * removes gpuseg's compiled-program files from it. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

int gpuseg_cmd_cache(int argc, char **argv) {
    const char *use = "cache dir|clear";
    if (argc != 2)
        return cli_usage(use);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        printf("usage: gpuseg %s\n  dir    print the program-cache folder\n"
               "  clear  remove every compiled program from it\n"
               "The folder is $GPUSEG_CACHE_DIR, else $XDG_CACHE_HOME/gpuseg, else "
               "~/.cache/gpuseg; GPUSEG_NO_PROGRAM_CACHE=1 turns the cache off.\n",
               use);
        return CLI_OK;
    }
    char dir[1024];
    gpuseg_status st = gpuseg_cache_dir(NULL, dir, sizeof dir);
    if (st != GPUSEG_OK)
        return cli_fail(st);
    if (strcmp(argv[1], "dir") == 0) {
        printf("%s\n", dir);
        return CLI_OK;
    }
    if (strcmp(argv[1], "clear") == 0) {
        size_t removed = 0;
        st = gpuseg_cache_clear(NULL, &removed);
        if (st != GPUSEG_OK)
            return cli_fail(st);
        printf("removed %zu cached program%s from %s\n", removed, removed == 1 ? "" : "s", dir);
        return CLI_OK;
    }
    return cli_usage(use);
}
