/* cli/cmd_save.c: `gpuseg save --shm NAME -o OUT`: the saver process. Maps a label segment
 * read-only, waits for it to be published, validates header and checksum, and writes OUT by
 * its extension (.bin + .json sidecar, .tif, .png, .npy) atomically: a file is whole or absent.
 * Nothing is written when the segment is refused. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"

static int save(const char *name, const char *out, double timeout, const json_t *meta,
                bool unlink_after);

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

/* The .bin sidecar's members from the segment (n_masks, diameter, source) followed by those of
 * --meta (which win where they name the same member); NULL when out of memory. */
static char *sidecar_extra(const gpuseg_shm_info *info, const json_t *meta) {
    char source[GPUSEG_SHM_NAME_MAX + 8];
    snprintf(source, sizeof source, "shm:%s", info->name);
    json_t *o = json_pack("{s:I,s:o,s:s}", "n_masks", (json_int_t)info->n_masks, "diameter",
                          cli_json_num(info->diameter), "source", source);
    char *text = NULL;
    if (o && (!meta || json_object_update(o, (json_t *)meta) == 0))
        text = cli_json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return text;
}

/* --meta JSON: the object replaces an earlier one; 0, or CLI_USAGE (message printed). */
static int parse_meta(const char *arg, void *dest) {
    json_t **meta = dest;
    json_decref(*meta);
    if (!(*meta = cli_json_object("--meta", arg))) {
        cli_fail(GPUSEG_INVALID_ARGUMENT);
        return CLI_USAGE;
    }
    return CLI_OK;
}

int gpuseg_cmd_save(int argc, char **argv) {
    const char *name = NULL, *out = NULL;
    json_t *meta = NULL;
    bool unlink_after = false;
    double timeout = 10.0;
    const cli_opt opts[] = {CLI_OPT_STR("shm", 0, &name),
                            CLI_OPT_STR("output", 'o', &out),
                            CLI_OPT_FLAG("unlink", 0, &unlink_after),
                            CLI_OPT_NUM("timeout", CLI_ARG_DOUBLE, &timeout, 0, 86400),
                            CLI_OPT_CALL("meta", 0, parse_meta, &meta),
                            CLI_OPT_END};
    int prc = cli_parse_options(argc, argv, opts, CLI_PARSE_LIMITS | CLI_PARSE_HELP, help, USE);
    if (prc < 0 && (optind != argc || !name || !out))
        prc = cli_usage(USE);
    if (prc >= 0) {
        json_decref(meta);
        return prc;
    }
    int rc = save(name, out, timeout, meta, unlink_after);
    json_decref(meta);
    return rc;
}

/* The save itself (options parsed). */
static int save(const char *name, const char *out, double timeout, const json_t *meta,
                bool unlink_after) {
    gpuseg_shm *seg = NULL;
    gpuseg_status st = gpuseg_shm_open(name, timeout, &seg);
    if (st != GPUSEG_OK)
        return cli_fail(st);
    const gpuseg_shm_info *info = gpuseg_shm_get_info(seg);
    gpuseg_image view;
    st = gpuseg_shm_labels_view(seg, &view);
    if (st == GPUSEG_OK) {
        char *extra = sidecar_extra(info, meta);
        if (!extra) {
            gpuseg_shm_free(seg);
            cli_error("%s: out of memory", out);
            return CLI_FAIL;
        }
        st = gpuseg_labels_write_ex(out, &view, extra, cli_write_flags);
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
