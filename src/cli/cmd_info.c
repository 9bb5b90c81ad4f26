/* cli/cmd_info.c: `gpuseg info IMAGE...` prints one JSON object per readable image (path,
 * format, width, height, channels, dtype, pages) on stdout; an unreadable file gets one error
 * line on stderr, the other files are still reported, and the exit code is then 1. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"

/* Writes s as a JSON string (quotes, backslashes and control characters escaped). */
static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(f, "\\u%04x", *p);
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

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
                   "first bytes). Exit 1 if any file cannot be read.\n" CLI_LIMITS_HELP,
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
        gpuseg_status st = gpuseg_image_info_read(argv[i], &info);
        if (st != GPUSEG_OK) {
            /* The library's message already names the file. */
            cli_fail(st);
            rc = CLI_FAIL;
            continue;
        }
        fputs("{\"path\":", stdout);
        json_string(stdout, argv[i]);
        printf(",\"format\":\"%s\",\"width\":%u,\"height\":%u,\"channels\":%u,\"dtype\":\"%s\","
               "\"pages\":%u}\n",
               info.format, info.width, info.height, info.channels, gpuseg_dtype_name(info.dtype),
               info.pages);
        fflush(stdout);
    }
    return rc;
}
