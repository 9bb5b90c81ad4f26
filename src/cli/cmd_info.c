/* cli/cmd_info.c: `gpuseg info IMAGE...` prints one JSON object per readable image (path,
 * format, width, height, channels, dtype, pages) on stdout; an unreadable file gets one error
 * line on stderr, the other files are still reported, and the exit code is then 1. A raw label
 * file (.bin, as `gpuseg segment` writes) is described from its .json sidecar: format "bin". */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "labels_load.h"

int gpuseg_cmd_info(int argc, char **argv) {
    const char *use = "info IMAGE...";
    static const struct option opts[] = {
        CLI_LIMITS_LONG_OPTIONS, {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            printf("usage: gpuseg %s\n"
                   "Prints one JSON object per image: {\"path\", \"format\", \"width\", "
                   "\"height\", \"channels\", \"dtype\", \"pages\"}.\n"
                   "Formats: PNG, JPEG, BMP, PNM, GIF, TIFF, NumPy .npy (found from the file's "
                   "first bytes), and the raw .bin labels of `gpuseg segment` (shape and dtype "
                   "from the .json sidecar beside it). Exit 1 if any file cannot be "
                   "read.\n" CLI_LIMITS_HELP,
                   use);
            return CLI_OK;
        }
        const int rc = cli_other_option(0, c, optarg, use);
        if (rc != CLI_OK)
            return rc;
    }
    if (optind >= argc)
        return cli_usage(use);
    int rc = CLI_OK;
    for (int i = optind; i < argc; i++) {
        gpuseg_image_info info;
        gpuseg_status st;
        if (cli_labels_is_bin(argv[i])) {
            st = cli_labels_bin_info(argv[i], &info); /* prints its own error */
        } else if ((st = gpuseg_image_info_read_ex(argv[i], &cli_limits, &info)) != GPUSEG_OK) {
            cli_fail(st); /* the library's message already names the file */
        }
        if (st != GPUSEG_OK) {
            rc = CLI_FAIL;
            continue;
        }
        json_t *line = json_pack("{s:o,s:s,s:i,s:i,s:i,s:s,s:i}", "path", cli_json_str(argv[i]),
                                 "format", info.format, "width", (int)info.width, "height",
                                 (int)info.height, "channels", (int)info.channels, "dtype",
                                 gpuseg_dtype_name(info.dtype), "pages", (int)info.pages);
        if (cli_json_print(line, JSON_COMPACT) != 0)
            rc = CLI_FAIL;
    }
    return rc;
}
