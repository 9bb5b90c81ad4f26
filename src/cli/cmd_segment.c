/* cli/cmd_segment.c: `gpuseg segment IMAGE... --model FILE`: Cellpose 3.1 segmentation
 * (CellposeModel.eval, 2-D) of each image on the device (docs/net.md). Labels go to
 * STEM_segmentation.<format> (+ .json for .bin) beside the image, in --save-dir, or to -o,
 * written by saver processes from a shared-memory segment (cli/segment_output.c) while the
 * device goes on with the next image; --shm-only leaves the segment for the caller instead.
 * --save-flows adds STEM_flows.npy and STEM_style.npy, written here. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "cli/segment_output.h"

#define PATH_MAX_LEN 4096

/* Where one image's results go (paths empty when not written). */
typedef struct seg_outputs {
    char labels[PATH_MAX_LEN];
    char flows[PATH_MAX_LEN];
    char style[PATH_MAX_LEN];
} seg_outputs;

/* Appends s to buf as a JSON string (escaped); false if it does not fit. */
static bool json_append_string(char *buf, size_t len, const char *s) {
    size_t k = strlen(buf);
    if (k + 2 >= len)
        return false;
    buf[k++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[8];
        int n = (*p == '"' || *p == '\\') ? snprintf(tmp, sizeof tmp, "\\%c", *p)
                : *p < 0x20               ? snprintf(tmp, sizeof tmp, "\\u%04x", *p)
                                          : snprintf(tmp, sizeof tmp, "%c", *p);
        if (k + (size_t)n + 2 >= len)
            return false;
        memcpy(buf + k, tmp, (size_t)n);
        k += (size_t)n;
    }
    buf[k++] = '"';
    buf[k] = 0;
    return true;
}

/* The output paths of one image: -o OUT (labels; flows/style beside it), else
 * DIR/STEM_segmentation.FMT with DIR = --save-dir or the image's folder. */
static bool output_paths(const char *image, const char *out, const char *save_dir,
                         const char *format, bool save_flows, seg_outputs *o) {
    char dir[PATH_MAX_LEN], stem[PATH_MAX_LEN];
    const char *base = out ? out : image;
    const char *slash = strrchr(base, '/');
    if (save_dir && !out)
        snprintf(dir, sizeof dir, "%s", save_dir);
    else if (slash)
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - base), base);
    else
        snprintf(dir, sizeof dir, ".");
    const char *name = strrchr(image, '/') ? strrchr(image, '/') + 1 : image;
    if (out)
        name = slash ? slash + 1 : out;
    snprintf(stem, sizeof stem, "%s", name);
    char *dot = strrchr(stem, '.');
    if (dot && dot != stem)
        *dot = 0;
    int n = out ? snprintf(o->labels, sizeof o->labels, "%s", out)
                : snprintf(o->labels, sizeof o->labels, "%s/%s_segmentation.%s", dir, stem, format);
    if (n < 0 || (size_t)n >= sizeof o->labels)
        return false;
    o->flows[0] = o->style[0] = 0;
    if (save_flows) {
        n = snprintf(o->flows, sizeof o->flows, "%s/%s_flows.npy", dir, stem);
        if (n < 0 || (size_t)n >= sizeof o->flows)
            return false;
        n = snprintf(o->style, sizeof o->style, "%s/%s_style.npy", dir, stem);
        if (n < 0 || (size_t)n >= sizeof o->style)
            return false;
    }
    return true;
}

/* Hands one image's results over: the labels to the output pipeline (a segment and a saver
 * process, or a segment left for the caller), the flows and style, when asked, to files. */
static gpuseg_status write_outputs(segment_output *pipe, gpuseg_ctx *ctx, const char *image,
                                   const seg_outputs *o, const gpuseg_segment_result *r,
                                   const char *json_extra) {
    const gpuseg_image *lab = r->labels;
    gpuseg_status st =
        segment_output_submit(pipe, ctx, image, o->labels, NULL, lab, lab->height, lab->width,
                              lab->dtype, r->n_masks, r->diameter, json_extra);
    if (st != GPUSEG_OK)
        return st;
    if (o->flows[0] && r->flows) {
        uint64_t shape[3] = {3, r->labels->height, r->labels->width};
        if ((st = gpuseg_npy_write(o->flows, GPUSEG_DTYPE_F32, 3, shape, r->flows)) != GPUSEG_OK)
            return st;
    }
    if (o->style[0] && r->style) {
        uint64_t shape[1] = {r->style_len};
        if ((st = gpuseg_npy_write(o->style, GPUSEG_DTYPE_F32, 1, shape, r->style)) != GPUSEG_OK)
            return st;
    }
    return GPUSEG_OK;
}

static bool is_dir(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISDIR(s.st_mode);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int gpuseg_cmd_segment(int argc, char **argv) {
    const char *use =
        "segment IMAGE... --model FILE [--diameter D] [--chan C --chan2 C2] [--invert] "
        "[--flow-threshold 0.4] [--cellprob-threshold 0.0] [--niter N] [--min-size 15] "
        "[--augment] [--tile-overlap 0.1] [--batch-size 8] [--device SPEC] "
        "[-o OUT | --save-dir DIR] [--format bin|tif|png|npy] [--save-flows] "
        "[--shm-only [--json]] [--max-in-flight 2] [--quiet]";
    enum {
        O_MODEL = 256,
        O_DIAM,
        O_CHAN,
        O_CHAN2,
        O_INVERT,
        O_AUG,
        O_OVL,
        O_BATCH,
        O_DEV,
        O_SAVEDIR,
        O_FMT,
        O_FLOWS,
        O_QUIET,
        O_SHM_ONLY,
        O_JSON,
        O_IN_FLIGHT
    };
    static const struct option opts[] = {{"model", required_argument, NULL, O_MODEL},
                                         {"diameter", required_argument, NULL, O_DIAM},
                                         {"chan", required_argument, NULL, O_CHAN},
                                         {"chan2", required_argument, NULL, O_CHAN2},
                                         {"invert", no_argument, NULL, O_INVERT},
                                         CLI_MASKS_LONG_OPTIONS,
                                         {"augment", no_argument, NULL, O_AUG},
                                         {"tile-overlap", required_argument, NULL, O_OVL},
                                         {"batch-size", required_argument, NULL, O_BATCH},
                                         {"device", required_argument, NULL, O_DEV},
                                         {"output", required_argument, NULL, 'o'},
                                         {"save-dir", required_argument, NULL, O_SAVEDIR},
                                         {"format", required_argument, NULL, O_FMT},
                                         {"save-flows", no_argument, NULL, O_FLOWS},
                                         {"quiet", no_argument, NULL, O_QUIET},
                                         {"shm-only", no_argument, NULL, O_SHM_ONLY},
                                         {"json", no_argument, NULL, O_JSON},
                                         {"max-in-flight", required_argument, NULL, O_IN_FLIGHT},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    const char *model = NULL, *device = NULL, *out = NULL, *save_dir = NULL, *format = "bin";
    bool save_flows = false, quiet = false;
    segment_output_opts so = SEGMENT_OUTPUT_OPTS_INIT;
    /* Keeps the segments of one job apart from others' (gpuseg shm list/clean --prefix). */
    so.name_prefix = getenv("GPUSEG_SHM_PREFIX");
    double d;
    long l;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        switch (c) {
        case O_MODEL:
            model = optarg;
            break;
        case O_DIAM: /* upper bound: beyond this the rescale rounds images to nothing */
            if (!cli_parse_double("--diameter", optarg, 0, 1e6, &d))
                return CLI_USAGE;
            p.diameter = d;
            break;
        case O_CHAN:
        case O_CHAN2:
            if (!cli_parse_int(c == O_CHAN ? "--chan" : "--chan2", optarg, 0, 4, &l))
                return CLI_USAGE;
            *(c == O_CHAN ? &p.chan : &p.chan2) = (int)l;
            break;
        case O_INVERT:
            p.invert = 1;
            break;
        case O_AUG:
            p.augment = 1;
            break;
        case O_OVL:
            if (!cli_parse_double("--tile-overlap", optarg, 0, 1, &d))
                return CLI_USAGE;
            p.tile_overlap = d;
            break;
        case O_BATCH:
            if (!cli_parse_int("--batch-size", optarg, 1, 1024, &l))
                return CLI_USAGE;
            p.batch_size = (unsigned)l;
            break;
        case O_DEV:
            device = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case O_SAVEDIR:
            save_dir = optarg;
            break;
        case O_FMT:
            format = optarg;
            if (strcmp(format, "bin") && strcmp(format, "tif") && strcmp(format, "png") &&
                strcmp(format, "npy")) {
                cli_error("--format %s: use bin, tif, png or npy", format);
                return CLI_USAGE;
            }
            break;
        case O_FLOWS:
            save_flows = true;
            break;
        case O_QUIET:
            quiet = true;
            break;
        case O_SHM_ONLY:
            so.shm_only = 1;
            break;
        case O_JSON:
            so.json = 1;
            break;
        case O_IN_FLIGHT:
            if (!cli_parse_int("--max-in-flight", optarg, 0, SEGMENT_OUTPUT_MAX_IN_FLIGHT, &l))
                return CLI_USAGE;
            so.max_in_flight = (unsigned)l;
            break;
        case 'h':
            printf("usage: gpuseg %s\n"
                   "Segments each image as Cellpose 3.1 CellposeModel.eval (2-D, resample). "
                   "--diameter 0 (default) uses the model's diam_mean / diam_labels scaling.\n"
                   "Writes STEM_segmentation.FORMAT (+ .json for bin) beside the image, in "
                   "--save-dir, or to -o (one image only); --save-flows adds STEM_flows.npy "
                   "(float32 [3,H,W]: dY, dX, cellprob) and STEM_style.npy.\n"
                   "Labels are handed to saver processes through shared memory (at most "
                   "--max-in-flight at once; 0 = one after the other) while the next image is "
                   "segmented. --shm-only leaves each image's labels in a shared-memory segment "
                   "for the caller and prints its name, or with --json one line "
                   "{\"shm\",\"shape\",\"dtype\",\"offset\",\"n_masks\",\"diameter\",...} "
                   "(docs/shm.md); the caller removes it (gpuseg shm rm NAME). "
                   "GPUSEG_SHM_PREFIX sets the segment name prefix (default /gpuseg-).\n",
                   use);
            return CLI_OK;
        default: {
            int r = cli_masks_option(c, optarg, &p.cellprob_threshold, &p.flow_threshold, &p.niter,
                                     &p.min_size);
            if (r < 0)
                return CLI_USAGE;
            if (r == 0)
                return cli_usage(use);
        }
        }
    }
    if (optind >= argc)
        return cli_usage(use);
    if (!model) {
        cli_error("--model FILE is required (no model is bundled with gpuseg yet): give a "
                  "Cellpose 3 model file");
        return CLI_USAGE;
    }
    if (out && save_dir) {
        cli_error("-o and --save-dir exclude each other");
        return CLI_USAGE;
    }
    if (out && argc - optind > 1) {
        cli_error("-o names one output: use --save-dir with %d images", argc - optind);
        return CLI_USAGE;
    }
    if (so.json && !so.shm_only) {
        cli_error("--json goes with --shm-only");
        return CLI_USAGE;
    }
    if (save_dir && !is_dir(save_dir)) {
        cli_error("%s: --save-dir is not an existing folder", save_dir);
        return CLI_FAIL;
    }
    p.want_flows = save_flows;
    p.want_style = save_flows;

    gpuseg_ctx *ctx = NULL;
    gpuseg_net *net = NULL;
    segment_output *pipe = NULL;
    int rc = CLI_OK;
    gpuseg_status st;
    if ((st = cli_ctx_create(device, &ctx)) != GPUSEG_OK ||
        (st = gpuseg_net_load(ctx, model, &net)) != GPUSEG_OK ||
        (st = segment_output_create(&so, &pipe)) != GPUSEG_OK) {
        rc = cli_fail(st); /* the loader's message names the model file */
        goto done;
    }
    for (int i = optind; i < argc; i++) {
        const char *image = argv[i];
        double t0 = now_s();
        gpuseg_image *img = NULL;
        gpuseg_segment_result r;
        memset(&r, 0, sizeof r);
        seg_outputs o;
        if (!output_paths(image, out, save_dir, format, save_flows, &o)) {
            cli_error("%s: output path too long", image);
            rc = CLI_FAIL;
            continue;
        }
        if ((st = gpuseg_image_read(image, &img)) != GPUSEG_OK) {
            rc = cli_fail(st);
            continue;
        }
        if ((st = gpuseg_segment(ctx, net, img, &p, &r)) != GPUSEG_OK) {
            cli_error("%s: %s", image, gpuseg_last_error());
            rc = CLI_FAIL;
            gpuseg_image_free(img);
            continue;
        }
        char extra[PATH_MAX_LEN + 1024];
        /* n_masks, diameter and source come from the segment header (gpuseg save adds them) */
        snprintf(extra, sizeof extra, "{\"producer\":\"gpuseg segment\",\"gpuseg_version\":");
        json_append_string(extra, sizeof extra, gpuseg_version());
        strcat(extra, ",\"image\":");
        json_append_string(extra, sizeof extra, image);
        strcat(extra, ",\"model\":");
        json_append_string(extra, sizeof extra, model);
        size_t k = strlen(extra);
        snprintf(extra + k, sizeof extra - k,
                 ",\"rescale\":%.9g,\"niter\":%u,"
                 "\"n_tiles\":%u,\"parameters\":{\"diameter\":%.9g,\"chan\":%d,\"chan2\":%d,"
                 "\"invert\":%s,\"flow_threshold\":%.9g,\"cellprob_threshold\":%.9g,"
                 "\"niter\":%u,\"min_size\":%d,\"augment\":%s,\"tile_overlap\":%.9g,"
                 "\"batch_size\":%u}}",
                 r.rescale, r.niter, r.n_tiles, p.diameter, p.chan, p.chan2,
                 p.invert ? "true" : "false", (double)p.flow_threshold,
                 (double)p.cellprob_threshold, p.niter, p.min_size, p.augment ? "true" : "false",
                 p.tile_overlap, p.batch_size);
        if ((st = write_outputs(pipe, ctx, image, &o, &r, extra)) != GPUSEG_OK)
            rc = cli_fail(st); /* the message names the image or the file */
        else if (!quiet)
            fprintf(stderr, "%s: %u masks, diameter %.2f, %.2f s (network %.2f s, masks %.2f s)\n",
                    image, r.n_masks, r.diameter, now_s() - t0, r.seconds_net, r.seconds_masks);
        gpuseg_segment_result_free(&r);
        gpuseg_image_free(img);
    }
done:
    if (pipe && segment_output_finish(pipe) > 0)
        rc = CLI_FAIL; /* each failed save was reported by name */
    segment_output_free(pipe);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
    return rc;
}
