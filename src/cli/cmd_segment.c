/* cli/cmd_segment.c: `gpuseg segment IMAGE|FOLDER... [--model FILE|NAME]`: Cellpose 3.1
 * segmentation (CellposeModel.eval, 2-D) of each image on the device with the bundled model
 * or a given one, the diameter estimated from a first pass by default (docs/segment.md).
 * Labels go to STEM_segmentation.<format> (+ .json for .bin) beside the image, in --save-dir,
 * or to -o, written by saver processes from a shared-memory segment (cli/segment_output.c)
 * while the device goes on with the next image; --shm-only leaves the segment for the caller.
 * --save-flows adds STEM_flows.npy and STEM_style.npy, --save-outlines STEM_outlines.png. */
#define _DEFAULT_SOURCE /* realpath (XSI) */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "cli/segment_output.h"

#define PATH_MAX_LEN 4096

/* Where one image's results go (paths empty when not written). */
typedef struct seg_outputs {
    char labels[PATH_MAX_LEN];
    char flows[PATH_MAX_LEN];
    char style[PATH_MAX_LEN];
    char outlines[PATH_MAX_LEN];
} seg_outputs;

/* Appends s to buf as a JSON string (escaped); false if it does not fit. */
static bool json_append_string(char *buf, size_t len, const char *s) {
    size_t k = strlen(buf);
    const size_t k0 = k;
    if (k + 2 >= len)
        return false;
    buf[k++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        char tmp[8];
        int n = (*p == '"' || *p == '\\') ? snprintf(tmp, sizeof tmp, "\\%c", *p)
                : *p < 0x20               ? snprintf(tmp, sizeof tmp, "\\u%04x", *p)
                                          : snprintf(tmp, sizeof tmp, "%c", *p);
        if (k + (size_t)n + 2 >= len) {
            buf[k0] = 0; /* leave buf as it was: still a terminated string */
            return false;
        }
        memcpy(buf + k, tmp, (size_t)n);
        k += (size_t)n;
    }
    buf[k++] = '"';
    buf[k] = 0;
    return true;
}

/* Appends s to buf if it fits (buf stays terminated either way). */
static bool append_text(char *buf, size_t len, const char *s) {
    size_t k = strlen(buf), n = strlen(s);
    if (k + n >= len)
        return false;
    memcpy(buf + k, s, n + 1);
    return true;
}

/* The output paths of one image: -o OUT (labels; flows/style beside it), else
 * DIR/STEM_segmentation.FMT with DIR = --save-dir or the image's folder. */
static bool output_paths(const char *image, const char *out, const char *save_dir,
                         const char *format, bool save_flows, bool save_outlines, seg_outputs *o) {
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
    o->flows[0] = o->style[0] = o->outlines[0] = 0;
    if (save_outlines) {
        n = snprintf(o->outlines, sizeof o->outlines, "%s/%s_outlines.png", dir, stem);
        if (n < 0 || (size_t)n >= sizeof o->outlines)
            return false;
    }
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
 * process, or a segment left for the caller), the flows, style and outline picture, when asked,
 * to files. */
static gpuseg_status write_outputs(segment_output *pipe, gpuseg_ctx *ctx, const char *image,
                                   const gpuseg_image *img, uint32_t page, const seg_outputs *o,
                                   const gpuseg_segment_result *r, const char *json_extra) {
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
    if (o->outlines[0]) {
        gpuseg_outlines_params op;
        gpuseg_outlines_params_default(&op);
        op.page = page;
        gpuseg_image *rgb = NULL;
        if ((st = gpuseg_outlines_draw(img, lab, &op, &rgb)) == GPUSEG_OK)
            st = gpuseg_image_write_png(o->outlines, rgb);
        gpuseg_image_free(rgb);
        if (st != GPUSEG_OK)
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

static bool is_file(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

/* The folders where a model named without a folder is looked for, in order: the installed
 * DATADIR/gpuseg/models found relative to this program (so an installed tree can be moved),
 * then the source tree's models/ (for the build tree). Canonical where they exist. */
static int model_dirs(char dirs[2][PATH_MAX_LEN]) {
    int n = 0;
    char exe[PATH_MAX_LEN], tmp[PATH_MAX_LEN];
    ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (k > 0) {
        exe[k] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            snprintf(tmp, sizeof tmp, "%s/%s", exe, GPUSEG_MODELS_REL);
            if (!realpath(tmp, dirs[n]))
                snprintf(dirs[n], PATH_MAX_LEN, "%s", tmp);
            n++;
        }
    }
    snprintf(dirs[n++], PATH_MAX_LEN, "%s", GPUSEG_SOURCE_MODELS);
    return n;
}

/* Finds the model file: `arg` (--model) or, when NULL, $GPUSEG_MODEL, else the bundled
 * GPUSEG_DEFAULT_MODEL. A value naming an existing file, or holding a '/', is used as is (the
 * loader then judges the file); a bare name is looked up in model_dirs(). False, with one
 * line naming the value and every place tried, when nothing is found. */
static bool resolve_model(const char *arg, char *path, size_t len) {
    const char *env = arg ? NULL : getenv("GPUSEG_MODEL");
    const char *want = arg ? arg : (env && *env) ? env : NULL;
    if (want && (strchr(want, '/') || is_file(want))) {
        snprintf(path, len, "%s", want);
        if (is_file(path) || is_dir(path)) /* the loader judges what the file holds */
            return true;
        /* said before any device work, so a typo costs no start-up */
        cli_error("%s%s: no such file", arg ? "--model " : "GPUSEG_MODEL=", want);
        return false;
    }
    const char *name = want ? want : GPUSEG_DEFAULT_MODEL;
    char dirs[2][PATH_MAX_LEN], tried[2 * PATH_MAX_LEN + 64] = "";
    int nd = model_dirs(dirs);
    for (int i = 0; i < nd; i++) {
        int n = snprintf(path, len, "%s/%s", dirs[i], name);
        if (n > 0 && (size_t)n < len && is_file(path))
            return true;
        size_t k = strlen(tried);
        snprintf(tried + k, sizeof tried - k, "%s%s", i ? ", " : "", dirs[i]);
    }
    if (arg)
        cli_error("--model %s: no such file here, nor in %s", name, tried);
    else if (want)
        cli_error("GPUSEG_MODEL=%s: no such file here, nor in %s", name, tried);
    else
        cli_error("the bundled model %s is in none of: $GPUSEG_MODEL (unset), %s; give --model "
                  "FILE (a Cellpose 3 model file)",
                  name, tried);
    return false;
}

/* A growable list of input paths. */
typedef struct path_list {
    char **v;
    size_t n, cap;
} path_list;

static bool list_push(path_list *l, const char *s) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        char **nv = realloc(l->v, cap * sizeof *nv);
        if (!nv)
            return false;
        l->v = nv;
        l->cap = cap;
    }
    char *d = strdup(s);
    if (!d)
        return false;
    l->v[l->n++] = d;
    return true;
}

static void list_free(path_list *l) {
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof *l);
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Whether a file in an input folder is an image to segment: a known extension, not hidden,
 * and not one of segment's own outputs (so a second run over the folder does not segment its
 * labels, outlines or flows). */
static bool is_input_image(const char *name) {
    static const char *const exts[] = {"png", "jpg", "jpeg", "tif", "tiff",
                                       "bmp", "pgm", "ppm",  "npy"};
    static const char *const ours[] = {"_segmentation", "_outlines", "_flows", "_style"};
    const char *dot = strrchr(name, '.');
    if (name[0] == '.' || !dot)
        return false;
    bool known = false;
    for (size_t i = 0; i < sizeof exts / sizeof *exts; i++)
        known |= strcasecmp(dot + 1, exts[i]) == 0;
    if (!known)
        return false;
    for (size_t i = 0; i < sizeof ours / sizeof *ours; i++) {
        size_t k = strlen(ours[i]), stem = (size_t)(dot - name);
        if (stem >= k && strncmp(dot - k, ours[i], k) == 0)
            return false;
    }
    return true;
}

/* Adds one command-line input: a file as given, or a folder's image files sorted by name.
 * False (message printed) when a folder cannot be read or holds no image. */
static bool collect_inputs(path_list *l, const char *arg) {
    if (!is_dir(arg))
        return list_push(l, arg) || (cli_error("out of memory"), false);
    DIR *d = opendir(arg);
    if (!d) {
        cli_error("%s: cannot read the folder: %s", arg, strerror(errno));
        return false;
    }
    path_list names = {0};
    bool ok = true;
    struct dirent *e;
    while (ok && (e = readdir(d)) != NULL)
        if (is_input_image(e->d_name))
            ok = list_push(&names, e->d_name);
    closedir(d);
    if (!ok) {
        list_free(&names);
        cli_error("out of memory");
        return false;
    }
    if (names.n) /* qsort's base must not be NULL, even for 0 elements */
        qsort(names.v, names.n, sizeof *names.v, cmp_str);
    size_t before = l->n, alen = strlen(arg);
    const char *sep = alen && arg[alen - 1] == '/' ? "" : "/";
    for (size_t i = 0; ok && i < names.n; i++) {
        char path[PATH_MAX_LEN];
        int n = snprintf(path, sizeof path, "%s%s%s", arg, sep, names.v[i]);
        if (n < 0 || (size_t)n >= sizeof path) {
            cli_error("%s%s%s: path too long", arg, sep, names.v[i]);
            ok = false;
        } else if (is_file(path)) {
            ok = list_push(l, path) || (cli_error("out of memory"), false);
        }
    }
    list_free(&names);
    if (ok && l->n == before) {
        cli_error("%s: no image files in this folder (png, jpg, tif, bmp, pgm, ppm, npy)", arg);
        ok = false;
    }
    return ok;
}

/* The progress line (stderr is a terminal and not --quiet): one line redrawn in place. */
static void progress_show(bool on, size_t i, size_t n, const char *image) {
    if (!on)
        return;
    const char *name = strrchr(image, '/') ? strrchr(image, '/') + 1 : image;
    fprintf(stderr, "\r\033[K[%zu/%zu] %s ...", i + 1, n, name);
    fflush(stderr);
}

static void progress_clear(bool on) {
    if (on) {
        fputs("\r\033[K", stderr);
        fflush(stderr);
    }
}

/* How the diameter of a result came about, for the summary line and the sidecar. */
static const char *diameter_mode(const gpuseg_segment_params *p, const gpuseg_segment_result *r) {
    if (r->diameter_estimated)
        return "estimated";
    return p->diameter > 0 ? "given" : "model";
}

int gpuseg_cmd_segment(int argc, char **argv) {
    const char *use =
        "segment IMAGE|FOLDER... [--model FILE|NAME] [--diameter 0|D|model] "
        "[--chan C --chan2 C2] [--invert] [--flow-threshold 0.4] [--cellprob-threshold 0.0] "
        "[--niter N] [--min-size 15] [--augment] [--tile-overlap 0.1] [--batch-size 8] "
        "[--device SPEC] [-o OUT | --save-dir DIR] [--format bin|tif|png|npy] [--save-flows] "
        "[--save-outlines] [--shm-only [--json]] [--max-in-flight 2] [--quiet]";
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
        O_OUTLINES,
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
                                         {"save-outlines", no_argument, NULL, O_OUTLINES},
                                         {"quiet", no_argument, NULL, O_QUIET},
                                         {"shm-only", no_argument, NULL, O_SHM_ONLY},
                                         {"json", no_argument, NULL, O_JSON},
                                         {"max-in-flight", required_argument, NULL, O_IN_FLIGHT},
                                         CLI_LIMITS_LONG_OPTIONS,
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.estimate_diameter = 1; /* the command's default: --diameter 0 = estimate */
    const char *model_arg = NULL, *device = NULL, *out = NULL, *save_dir = NULL, *format = "bin";
    bool save_flows = false, save_outlines = false, quiet = false;
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
            model_arg = optarg;
            break;
        case O_DIAM: /* upper bound: beyond this the rescale rounds images to nothing */
            if (strcmp(optarg, "model") == 0) {
                p.diameter = 0; /* Cellpose's diameter=None: the model's diam_labels */
                p.estimate_diameter = 0;
                break;
            }
            if (!cli_parse_double("--diameter", optarg, 0, 1e6, &d))
                return CLI_USAGE;
            p.diameter = d;
            p.estimate_diameter = d == 0;
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
        case O_OUTLINES:
            save_outlines = true;
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
        case 'h': {
            char dirs[2][PATH_MAX_LEN], found[PATH_MAX_LEN];
            int nd = model_dirs(dirs);
            const char *env = getenv("GPUSEG_MODEL");
            found[0] = 0;
            for (int i = 0; i < nd && !found[0]; i++) {
                snprintf(found, sizeof found, "%s/%s", dirs[i], GPUSEG_DEFAULT_MODEL);
                if (!is_file(found))
                    found[0] = 0;
            }
            printf("usage: gpuseg %s\n"
                   "Segments each image (each image file of a FOLDER, sorted by name) as "
                   "Cellpose 3.1 CellposeModel.eval (2-D, resample).\n"
                   "Model: --model FILE (any Cellpose 3 model file) or NAME (looked up in %s, "
                   "then %s); without it, $GPUSEG_MODEL, else the bundled model %s (%s).\n"
                   "Diameter: 0 (default) estimates it: a first pass at the model's diameter, "
                   "then, while the median equivalent diameter of a pass's masks differs from "
                   "its own by more than 10%%, another pass at that diameter (3 at most). D: "
                   "objects are D pixels across. "
                   "model: the model's own diam_labels, one pass (Cellpose's diameter=None).\n"
                   "Writes STEM_segmentation.FORMAT (+ .json for bin: masks, diameter used, "
                   "whether estimated, first-pass diameter, parameters) beside the image, in "
                   "--save-dir, or to -o (one image only); --save-outlines adds "
                   "STEM_outlines.png (the image with mask outlines in red), --save-flows "
                   "STEM_flows.npy (float32 [3,H,W]: dY, dX, cellprob) and STEM_style.npy.\n"
                   "Prints one line per image on stderr (masks, diameter, seconds) and, on a "
                   "terminal, a progress line and notices (the device used; on a first run, "
                   "that the OpenCL programs are being compiled); --quiet prints only errors.\n"
                   "Labels are handed to saver processes through shared memory (at most "
                   "--max-in-flight at once; 0 = one after the other) while the next image is "
                   "segmented. --shm-only leaves each image's labels in a shared-memory segment "
                   "for the caller and prints its name, or with --json one line "
                   "{\"shm\",\"shape\",\"dtype\",\"offset\",\"n_masks\",\"diameter\",...} "
                   "(docs/shm.md); the caller removes it (gpuseg shm rm NAME). "
                   "GPUSEG_SHM_PREFIX sets the segment name prefix (default "
                   "/gpuseg-).\n" CLI_LIMITS_HELP,
                   use, dirs[0], nd > 1 ? dirs[1] : "-", GPUSEG_DEFAULT_MODEL,
                   env && *env ? "overridden by $GPUSEG_MODEL"
                   : found[0]  ? found
                               : "not found");
            return CLI_OK;
        }
        default: {
            int r = cli_masks_option(c, optarg, &p.cellprob_threshold, &p.flow_threshold, &p.niter,
                                     &p.min_size);
            const int rc = cli_other_option(r, c, optarg, use); /* + --max-pixels ... */
            if (rc != CLI_OK)
                return rc;
            break;
        }
        }
    }
    if (optind >= argc)
        return cli_usage(use);
    if (out && save_dir) {
        cli_error("-o and --save-dir exclude each other");
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
    char model[PATH_MAX_LEN];
    if (!resolve_model(model_arg, model, sizeof model))
        return CLI_FAIL;
    path_list inputs = {0};
    for (int i = optind; i < argc; i++)
        if (!collect_inputs(&inputs, argv[i])) {
            list_free(&inputs);
            return CLI_FAIL;
        }
    if (out && inputs.n > 1) {
        cli_error("-o names one output: use --save-dir with %zu images", inputs.n);
        list_free(&inputs);
        return CLI_USAGE;
    }
    p.want_flows = save_flows;
    p.want_style = save_flows;
    const bool progress = !quiet && isatty(STDERR_FILENO);
    cli_notices = progress; /* the device used, and why a first run is slow */

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
    for (size_t i = 0; i < inputs.n; i++) {
        const char *image = inputs.v[i];
        double t0 = now_s();
        gpuseg_image *img = NULL;
        gpuseg_segment_result r;
        memset(&r, 0, sizeof r);
        seg_outputs o;
        if (!output_paths(image, out, save_dir, format, save_flows, save_outlines, &o)) {
            cli_error("%s: output path too long", image);
            rc = CLI_FAIL;
            continue;
        }
        progress_show(progress, i, inputs.n, image);
        if ((st = gpuseg_image_read(image, &img)) != GPUSEG_OK) {
            progress_clear(progress);
            rc = cli_fail(st);
            continue;
        }
        st = gpuseg_segment(ctx, net, img, &p, &r);
        progress_clear(progress);
        if (st != GPUSEG_OK) {
            cli_error("%s: %s", image, gpuseg_last_error());
            rc = CLI_FAIL;
            gpuseg_image_free(img);
            continue;
        }
        const char *mode = diameter_mode(&p, &r);
        /* image and model paths, each up to 6 bytes per byte when escaped, + the fields */
        static char extra[12 * PATH_MAX_LEN + 2048];
        /* n_masks, diameter and source come from the segment header (gpuseg save adds them) */
        snprintf(extra, sizeof extra, "{\"producer\":\"gpuseg segment\",\"gpuseg_version\":");
        bool fits = json_append_string(extra, sizeof extra, gpuseg_version());
        fits = fits && append_text(extra, sizeof extra, ",\"image\":");
        fits = fits && json_append_string(extra, sizeof extra, image);
        fits = fits && append_text(extra, sizeof extra, ",\"model\":");
        fits = fits && json_append_string(extra, sizeof extra, model);
        if (!fits) {
            cli_error("%s: path too long for the .json sidecar", image);
            rc = CLI_FAIL;
            gpuseg_segment_result_free(&r);
            gpuseg_image_free(img);
            continue;
        }
        size_t k = strlen(extra);
        snprintf(extra + k, sizeof extra - k,
                 ",\"diameter_mode\":\"%s\",\"diameter_estimated\":%s,"
                 "\"diameter_first_pass\":%.9g,\"diameter_estimate\":%.9g,\"passes\":%u,"
                 "\"rescale\":%.9g,\"niter\":%u,"
                 "\"n_tiles\":%u,\"parameters\":{\"diameter\":%.9g,\"estimate_diameter\":%s,"
                 "\"chan\":%d,\"chan2\":%d,"
                 "\"invert\":%s,\"flow_threshold\":%.9g,\"cellprob_threshold\":%.9g,"
                 "\"niter\":%u,\"min_size\":%d,\"augment\":%s,\"tile_overlap\":%.9g,"
                 "\"batch_size\":%u}}",
                 mode, r.diameter_estimated ? "true" : "false", r.diameter_first_pass,
                 r.diameter_estimate, r.passes, r.rescale, r.niter, r.n_tiles, p.diameter,
                 p.estimate_diameter ? "true" : "false", p.chan, p.chan2,
                 p.invert ? "true" : "false", (double)p.flow_threshold,
                 (double)p.cellprob_threshold, p.niter, p.min_size, p.augment ? "true" : "false",
                 p.tile_overlap, p.batch_size);
        if ((st = write_outputs(pipe, ctx, image, img, p.page, &o, &r, extra)) != GPUSEG_OK) {
            rc = cli_fail(st); /* the message names the image or the file */
        } else if (!quiet) {
            char how[128];
            if (r.diameter_estimated && r.passes >= 2)
                snprintf(how, sizeof how, "estimated in %u passes; first at %.2f", r.passes,
                         r.diameter_first_pass);
            else if (r.diameter_estimated)
                snprintf(how, sizeof how, "estimated %.2f: within 10%%, first pass kept",
                         r.diameter_estimate);
            else if (p.estimate_diameter)
                snprintf(how, sizeof how, "model; no masks to estimate from");
            else
                snprintf(how, sizeof how, "%s", mode);
            fprintf(
                stderr, "%s: %u masks, diameter %.2f (%s), %.2f s (network %.2f s, masks %.2f s)\n",
                image, r.n_masks, r.diameter, how, now_s() - t0, r.seconds_net, r.seconds_masks);
        }
        gpuseg_segment_result_free(&r);
        gpuseg_image_free(img);
    }
done:
    if (pipe && segment_output_finish(pipe) > 0)
        rc = CLI_FAIL; /* each failed save was reported by name */
    segment_output_free(pipe);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
    list_free(&inputs);
    return rc;
}
