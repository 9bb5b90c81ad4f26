/* cli/main.c: the `gpuseg` command: dispatches to the subcommands listed in cli/commands.h. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int, char **);
} command;

static const command COMMANDS[] = {
#define GPUSEG_CMD_ENTRY_(name, summary) {#name, summary, gpuseg_cmd_##name},
    GPUSEG_COMMANDS(GPUSEG_CMD_ENTRY_)
#undef GPUSEG_CMD_ENTRY_
};

static void usage(FILE *f) {
    fprintf(f, "gpuseg %s: Cellpose-style cell and nucleus segmentation on OpenCL\n\n",
            gpuseg_version());
    fprintf(f, "usage: gpuseg COMMAND [options]   (gpuseg COMMAND --help for its options)\n\n");
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        fprintf(f, "  %-10s %s\n", COMMANDS[i].name, COMMANDS[i].summary);
    fprintf(f, "\nenvironment: GPUSEG_DEVICE (device choice), GPUSEG_CACHE_DIR, "
               "GPUSEG_NO_PROGRAM_CACHE=1, GPUSEG_KERNEL_DIR, GPUSEG_LOG=info|debug\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return CLI_USAGE;
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return CLI_OK;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("gpuseg %s\n", gpuseg_version());
        return CLI_OK;
    }
    for (size_t i = 0; i < sizeof COMMANDS / sizeof COMMANDS[0]; i++)
        if (strcmp(argv[1], COMMANDS[i].name) == 0)
            return COMMANDS[i].run(argc - 1, argv + 1);
    cli_error("unknown command '%s' (gpuseg --help lists them)", argv[1]);
    return CLI_USAGE;
}
