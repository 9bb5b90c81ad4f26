/* cli/cmd_masks.c: `gpuseg masks FLOWS.npy -o OUT`: network outputs (float32 [3, H, W]: dY, dX,
 * cellprob) -> label image, as Cellpose 3.1's compute_masks + fill_holes_and_remove_small_masks
 * (docs/masks.md); a volume's (float32 [4, Z, H, W]: dZ, dY, dX, cellprob) -> 3-D labels
 * (gpuseg_flows_to_masks3d, Cellpose's do_3D masks). The output format follows OUT's extension
 * (.tif .png .npy .bin); one JSON line with the result goes to stdout, with the library call's
 * wall and CPU seconds (what a caller that holds the flows pays; bench/vol_vs_cellpose.py sets
 * them beside Cellpose's call timed the same way). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <strings.h>
#include <time.h>

#include "cli.h"
#include "commands.h"

/* True when path ends in an extension gpuseg_labels_write knows; checked before the work so that
 * a typo does not cost a whole run (the writer checks again and has the final word). */
static bool known_extension(const char *path) {
    static const char *ext[] = {".tif", ".tiff", ".png", ".npy", ".bin"};
    size_t n = strlen(path);
    for (size_t i = 0; i < sizeof ext / sizeof ext[0]; i++) {
        size_t k = strlen(ext[i]);
        if (n > k && strcasecmp(path + n - k, ext[i]) == 0)
            return true;
    }
    return false;
}

#define USAGE                                                                                      \
    "masks FLOWS.npy -o OUT [--cellprob-threshold 0.0] [--flow-threshold 0.4] [--niter 200] "      \
    "[--min-size 15] [--max-size-fraction 0.4] [--device SPEC]"

/* Seconds of a clock (CLOCK_MONOTONIC: wall; CLOCK_PROCESS_CPUTIME_ID: CPU of every thread). */
static double clock_s(clockid_t id) {
    struct timespec t;
    return clock_gettime(id, &t) == 0 ? (double)t.tv_sec + 1e-9 * (double)t.tv_nsec : 0.0;
}

static void help(void) {
    printf("usage: gpuseg %s\n"
           "FLOWS.npy: float32 array [3, H, W] holding dY, dX (network scale) and the "
           "cellprob logit, or [4, Z, H, W] holding dZ, dY, dX and the cellprob logit of a "
           "volume (Cellpose's do_3D masks: no flow-error check; labels [Z, H, W], .png "
           "refused).\nWrites labels (uint16, or uint32 above 65535 masks) to OUT: "
           ".tif .png .npy or .bin (+ .json); prints one JSON line (with \"seconds\" and "
           "\"cpu_seconds\": the library call alone).\n"
           "--flow-threshold 0 turns the flow-error check off; --min-size -1 (or 0) the "
           "size filter; --niter 0 means 200.\n" CLI_LIMITS_HELP,
           USAGE);
}

int gpuseg_cmd_masks(int argc, char **argv) {
    const char *use = USAGE;
    gpuseg_masks_params p;
    gpuseg_masks_params_default(&p);
    const char *out = NULL, *device = NULL;
    const cli_opt opts[] = {
        CLI_OPT_STR("output", 'o', &out),
        CLI_MASKS_OPTS(&p.cellprob_threshold, &p.flow_threshold, &p.niter, &p.min_size),
        CLI_OPT_NUM("max-size-fraction", CLI_ARG_DOUBLE, &p.max_size_fraction, 0, 1e30),
        CLI_OPT_STR("device", 0, &device), CLI_OPT_END};
    int prc = cli_parse_options(argc, argv, opts, CLI_PARSE_LIMITS | CLI_PARSE_HELP, help, use);
    if (prc >= 0)
        return prc;
    if (optind != argc - 1 || !out)
        return cli_usage(use);
    const char *in = argv[optind];
    if (!known_extension(out)) {
        cli_error("%s: unknown label file extension (use .tif, .tiff, .png, .npy or .bin)", out);
        return CLI_FAIL;
    }
    /* Checked before the device work, so a typo in the folder costs nothing; the writer still
     * reports any later failure by name. */
    const char *slash = strrchr(out, '/');
    if (slash) {
        char dir[4096];
        struct stat sb;
        snprintf(dir, sizeof dir, "%.*s", slash == out ? 1 : (int)(slash - out), out);
        if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
            cli_error("%s: cannot write: no such file or directory '%s'", out, dir);
            return CLI_FAIL;
        }
    }

    gpuseg_npy *arr = NULL;
    gpuseg_ctx *ctx = NULL;
    gpuseg_image *labels = NULL;
    int rc = CLI_FAIL;
    gpuseg_status st = gpuseg_npy_read(in, &arr);
    if (st != GPUSEG_OK) {
        cli_fail(st); /* the reader's message names the file */
        goto done;
    }
    const bool vol = arr->dtype == GPUSEG_DTYPE_F32 && arr->ndim == 4 && arr->shape[0] == 4 &&
                     arr->shape[1] <= UINT32_MAX && arr->shape[2] <= UINT32_MAX &&
                     arr->shape[3] <= UINT32_MAX;
    if (vol && strlen(out) > 4 && strcasecmp(out + strlen(out) - 4, ".png") == 0) {
        cli_error("%s: a volume's labels do not fit a PNG (one page): use .tif, .npy or .bin", out);
        goto done;
    }
    if (!vol && (arr->dtype != GPUSEG_DTYPE_F32 || arr->ndim != 3 || arr->shape[0] != 3 ||
                 arr->shape[1] > UINT32_MAX || arr->shape[2] > UINT32_MAX)) {
        char shape[96] = "";
        size_t k = 0;
        for (uint32_t i = 0; i < arr->ndim && k < sizeof shape - 24; i++)
            k += (size_t)snprintf(shape + k, sizeof shape - k, "%s%" PRIu64, i ? ", " : "",
                                  arr->shape[i]);
        cli_error("%s: expected a float32 array of shape [3, H, W] (dY, dX, cellprob) or "
                  "[4, Z, H, W] (dZ, dY, dX, cellprob), got %s [%s]",
                  in, gpuseg_dtype_name(arr->dtype), shape);
        goto done;
    }
    const uint32_t Z = vol ? (uint32_t)arr->shape[1] : 1;
    const uint32_t H = (uint32_t)arr->shape[1 + vol], W = (uint32_t)arr->shape[2 + vol];
    if ((st = cli_ctx_create(device, &ctx)) != GPUSEG_OK) {
        cli_fail(st);
        goto done;
    }
    uint32_t n = 0, *v = NULL; /* a volume: uint32 labels, kept as uint16 below 65536 masks */
    if (vol && !(v = malloc((size_t)Z * H * W * sizeof *v))) {
        cli_error("%s: out of memory for %u x %u x %u labels", in, Z, H, W);
        goto done;
    }
    const double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    /* a volume's flows are ours and read once: handed over (their pages given back as read) */
    st = vol ? gpuseg_flows_to_masks3d_consume(ctx, arr->data, Z, H, W, &p, v, &n)
             : gpuseg_flows_to_masks(ctx, arr->data, H, W, &p, &labels, &n);
    const double w1 = clock_s(CLOCK_MONOTONIC), c1 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
    if (vol && st == GPUSEG_OK) /* as Cellpose returns them: uint16 below 65536 masks */
        st = gpuseg_image_create(W, H, 1, Z, n > 65535 ? GPUSEG_DTYPE_U32 : GPUSEG_DTYPE_U16,
                                 &labels);
    if (vol && st == GPUSEG_OK) {
        const size_t nv = (size_t)Z * H * W;
        if (n > 65535)
            memcpy(labels->data, v, nv * sizeof *v);
        else
            for (size_t i = 0; i < nv; i++)
                ((uint16_t *)labels->data)[i] = (uint16_t)v[i];
    }
    free(v);
    if (st != GPUSEG_OK) {
        cli_error("%s: %s", in, gpuseg_last_error());
        goto done;
    }
    json_t *meta =
        json_pack("{s:i,s:s,s:o,s:o,s:i,s:i}", "n_masks", (int)n, "source", "gpuseg masks",
                  "cellprob_threshold", cli_json_num(p.cellprob_threshold), "flow_threshold",
                  cli_json_num(p.flow_threshold), "niter", (int)(p.niter ? p.niter : 200),
                  "min_size", (int)p.min_size);
    /* float parameters with 7 digits: what was typed (0.4, not 0.4000000059604645) */
    char *extra = cli_json_dumps(meta, JSON_COMPACT | JSON_REAL_PRECISION(7));
    json_decref(meta);
    st = extra ? gpuseg_labels_write_ex(out, labels, extra, cli_write_flags) : GPUSEG_OUT_OF_MEMORY;
    free(extra);
    if (st != GPUSEG_OK) {
        cli_fail(st); /* the writer's message names the file */
        goto done;
    }
    json_t *res = json_pack("{s:o,s:o,s:i,s:i,s:i,s:s}", "input", cli_json_str(in), "output",
                            cli_json_str(out), "height", (int)H, "width", (int)W, "n_masks", (int)n,
                            "dtype", gpuseg_dtype_name(labels->dtype));
    if (res && vol)
        json_object_set_new(res, "depth", json_integer(Z));
    if (res) { /* the library call alone: no start-up, npy read or labels write */
        json_object_set_new(res, "seconds", json_real(w1 - w0));
        json_object_set_new(res, "cpu_seconds", json_real(c1 - c0));
    }
    if (cli_json_print(res, JSON_COMPACT) != 0)
        goto done;
    rc = CLI_OK;
done:
    gpuseg_image_free(labels);
    gpuseg_ctx_free(ctx);
    gpuseg_npy_free(arr);
    return rc;
}
