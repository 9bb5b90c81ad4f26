/* cli/cmd_save.c: `gpuseg save --shm NAME -o OUT`: the saver process. Maps a label segment
 * read-only, waits for it to be published, validates header and checksum, and writes OUT by
 * its extension (.bin + .json sidecar, .tif, .png, .npy) atomically: a file is whole or absent.
 * Nothing is written when the segment is refused. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"

static const char *USE = "save --shm NAME -o OUT [--unlink] [--timeout SEC] [--meta JSON]";

static void help(void) {
    printf("usage: gpuseg %s\n"
           "Writes the labels of shared-memory segment NAME (/gpuseg-...) to OUT, chosen by its\n"
           "extension: .bin (+ .json sidecar with shape, dtype, n_masks, diameter), .tif, .png,\n"
           ".npy. The file appears whole or not at all.\n"
           "  --shm NAME     the segment (with or without the leading '/')\n"
           "  -o, --output   the file to write\n"
           "  --unlink       remove the segment after a successful save\n"
           "  --timeout SEC  wait up to SEC seconds for the producer to publish (default 10)\n"
           "  --meta JSON    a JSON object whose members are added to the .bin sidecar (model,\n"
           "                 parameters, version, ...); ignored for the other "
           "formats\n" CLI_LIMITS_HELP,
           USE);
}

/* Shortest decimal form that reads back to the same double. */
static void fmt_double(double v, char *buf, size_t len) {
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

int gpuseg_cmd_save(int argc, char **argv) {
    static const struct option opts[] = {
        {"shm", required_argument, NULL, 's'},  {"output", required_argument, NULL, 'o'},
        {"unlink", no_argument, NULL, 'u'},     {"timeout", required_argument, NULL, 't'},
        {"meta", required_argument, NULL, 'm'}, CLI_LIMITS_LONG_OPTIONS,
        {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0}};
    const char *name = NULL, *out = NULL, *meta = NULL;
    size_t meta_len = 0;
    bool unlink_after = false;
    double timeout = 10.0;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            name = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 'u':
            unlink_after = true;
            break;
        case 't':
            if (!cli_parse_double("--timeout", optarg, 0, 86400, &timeout))
                return CLI_USAGE;
            break;
        case 'm':
            if (!cli_json_members(optarg, &meta, &meta_len)) {
                cli_error("--meta: '%s' is not one JSON object {...}", optarg);
                return CLI_USAGE;
            }
            break;
        case 'h':
            help();
            return CLI_OK;
        default: {
            const int rc = cli_other_option(0, c, optarg, USE);
            if (rc != CLI_OK)
                return rc;
            break;
        }
        }
    }
    if (optind != argc || !name || !out)
        return cli_usage(USE);

    gpuseg_shm *seg = NULL;
    gpuseg_status st = gpuseg_shm_open(name, timeout, &seg);
    if (st != GPUSEG_OK)
        return cli_fail(st);
    const gpuseg_shm_info *info = gpuseg_shm_get_info(seg);
    gpuseg_image view;
    st = gpuseg_shm_labels_view(seg, &view);
    if (st == GPUSEG_OK) {
        char diam[40];
        fmt_double(info->diameter, diam, sizeof diam);
        size_t cap = 320 + meta_len;
        char *extra = malloc(cap);
        if (!extra) {
            gpuseg_shm_free(seg);
            cli_error("%s: out of memory", out);
            return CLI_FAIL;
        }
        snprintf(extra, cap, "{\"n_masks\":%llu,\"diameter\":%s,\"source\":\"shm:%s\"%s%.*s}",
                 (unsigned long long)info->n_masks, diam, info->name, meta_len ? "," : "",
                 (int)meta_len, meta ? meta : "");
        st = gpuseg_labels_write(out, &view, extra);
        free(extra);
    }
    if (st != GPUSEG_OK) {
        int rc = cli_fail(st);
        gpuseg_shm_free(seg);
        return rc;
    }
    char seg_name[GPUSEG_SHM_NAME_MAX];
    snprintf(seg_name, sizeof seg_name, "%s", info->name);
    gpuseg_shm_free(seg);
    if (unlink_after) {
        st = gpuseg_shm_unlink(seg_name);
        if (st != GPUSEG_OK)
            return cli_fail(st);
    }
    return CLI_OK;
}
