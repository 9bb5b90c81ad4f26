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
#include <signal.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "segment_output.h"

#define PATH_MAX_LEN 4096

/* Where one image's results go (paths empty when not written). */
typedef struct seg_outputs {
    char labels[PATH_MAX_LEN];
    char flows[PATH_MAX_LEN];
    char style[PATH_MAX_LEN];
    char outlines[PATH_MAX_LEN];
} seg_outputs;

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
        if ((st = gpuseg_npy_write_ex(o->flows, GPUSEG_DTYPE_F32, 3, shape, r->flows,
                                      cli_write_flags)) != GPUSEG_OK)
            return st;
    }
    if (o->style[0] && r->style) {
        uint64_t shape[1] = {r->style_len};
        if ((st = gpuseg_npy_write_ex(o->style, GPUSEG_DTYPE_F32, 1, shape, r->style,
                                      cli_write_flags)) != GPUSEG_OK)
            return st;
    }
    if (o->outlines[0]) {
        gpuseg_outlines_params op;
        gpuseg_outlines_params_default(&op);
        op.page = page;
        gpuseg_image *rgb = NULL;
        if ((st = gpuseg_outlines_draw(img, lab, &op, &rgb)) == GPUSEG_OK)
            st = gpuseg_image_write_png_ex(o->outlines, rgb, cli_write_flags);
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

/* ---- the job: options, inputs, the run ----------------------------------------------------- */

static const char *const USE =
    "segment IMAGE|FOLDER... [--model FILE|NAME] [--diameter 0|D|model] "
    "[--chan C --chan2 C2] [--invert] [--flow-threshold 0.4] [--cellprob-threshold 0.0] "
    "[--niter N] [--min-size 15] [--augment] [--tile-overlap 0.1] [--batch-size 8] "
    "[--device SPEC] [-o OUT | --save-dir DIR] [--format bin|tif|png|npy] [--save-flows] "
    "[--save-outlines] [--shm-only [--json]] [--max-in-flight 2] [--quiet]";

/* What the command line asks for. */
typedef struct seg_job {
    gpuseg_segment_params p;
    const char *model_arg, *device, *out, *save_dir, *format;
    bool save_flows, save_outlines, quiet;
    segment_output_opts so;
    char model[PATH_MAX_LEN]; /* resolved */
    path_list inputs;
} seg_job;

/* The progress line (stderr is a terminal and not --quiet): one line redrawn in place from the
 * library's progress callback, "[i/n] NAME ... stage done/total  NN%". */
typedef struct progress_line {
    bool on;
    size_t i, n;
    const char *name;
    const char *stage; /* the last one drawn */
    double drawn_s;    /* when */
} progress_line;

static void progress_draw(void *user, const gpuseg_progress *pr) {
    progress_line *pl = user;
    if (!pl->on)
        return;
    double t = now_s();
    if (pr->stage == pl->stage && t - pl->drawn_s < 0.1 && pr->fraction < 1.0)
        return; /* at most ten redraws a second within a stage */
    pl->stage = pr->stage;
    pl->drawn_s = t;
    fprintf(stderr, "\r\033[K[%zu/%zu] %s ... %s", pl->i + 1, pl->n, pl->name, pr->stage);
    if (pr->total)
        fprintf(stderr, " %llu/%llu", (unsigned long long)pr->done, (unsigned long long)pr->total);
    fprintf(stderr, "  %3.0f%%", 100.0 * (pr->fraction < 0 ? 0 : pr->fraction));
    fflush(stderr);
}

static void progress_clear(const progress_line *pl) {
    if (pl->on) {
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

static void print_help(void) {
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
           "terminal, a progress line (image, stage, steps, share of the image done) and "
           "notices (the device used; on a first run, that the OpenCL programs are being "
           "compiled); --quiet prints only errors.\n"
           "Labels are handed to saver processes through shared memory (at most "
           "--max-in-flight at once; 0 = one after the other) while the next image is "
           "segmented. --shm-only leaves each image's labels in a shared-memory segment "
           "for the caller and prints its name, or with --json one line "
           "{\"shm\",\"shape\",\"dtype\",\"offset\",\"n_masks\",\"diameter\",...} "
           "(docs/shm.md); the caller removes it (gpuseg shm rm NAME). "
           "GPUSEG_SHM_PREFIX sets the segment name prefix (default /gpuseg-).\n"
           "Ctrl-C (SIGINT) or SIGTERM stops at the next step: the images done stay, "
           "nothing of the unfinished one is left, exit 130 (SIGINT) or 143 (SIGTERM); a "
           "second signal ends it at once.\n"
           "Options are also accepted with '_' for '-' (--flow_threshold, as "
           "Cellpose).\n" CLI_LIMITS_HELP,
           USE, dirs[0], nd > 1 ? dirs[1] : "-", GPUSEG_DEFAULT_MODEL,
           env && *env ? "overridden by $GPUSEG_MODEL"
           : found[0]  ? found
                       : "not found");
}

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

/* One option of the table below with its argument. CLI_OK to go on, else the exit code. */
static int job_option(seg_job *j, int c, const char *arg) {
    double d;
    long l;
    switch (c) {
    case O_MODEL:
        j->model_arg = arg;
        return CLI_OK;
    case O_DIAM: /* upper bound: beyond this the rescale rounds images to nothing */
        if (strcmp(arg, "model") == 0) {
            j->p.diameter = 0; /* Cellpose's diameter=None: the model's diam_labels */
            j->p.estimate_diameter = 0;
            return CLI_OK;
        }
        if (!cli_parse_double("--diameter", arg, 0, 1e6, &d))
            return CLI_USAGE;
        j->p.diameter = d;
        j->p.estimate_diameter = d == 0;
        return CLI_OK;
    case O_CHAN:
    case O_CHAN2:
        if (!cli_parse_int(c == O_CHAN ? "--chan" : "--chan2", arg, 0, 4, &l))
            return CLI_USAGE;
        *(c == O_CHAN ? &j->p.chan : &j->p.chan2) = (int)l;
        return CLI_OK;
    case O_OVL:
        if (!cli_parse_double("--tile-overlap", arg, 0, 1, &d))
            return CLI_USAGE;
        j->p.tile_overlap = d;
        return CLI_OK;
    case O_BATCH:
        if (!cli_parse_int("--batch-size", arg, 1, 1024, &l))
            return CLI_USAGE;
        j->p.batch_size = (unsigned)l;
        return CLI_OK;
    case O_FMT:
        j->format = arg;
        if (strcmp(arg, "bin") && strcmp(arg, "tif") && strcmp(arg, "png") && strcmp(arg, "npy")) {
            cli_error("--format %s: use bin, tif, png or npy", arg);
            return CLI_USAGE;
        }
        return CLI_OK;
    case O_IN_FLIGHT:
        if (!cli_parse_int("--max-in-flight", arg, 0, SEGMENT_OUTPUT_MAX_IN_FLIGHT, &l))
            return CLI_USAGE;
        j->so.max_in_flight = (unsigned)l;
        return CLI_OK;
    case O_DEV:
        j->device = arg;
        return CLI_OK;
    case 'o':
        j->out = arg;
        return CLI_OK;
    case O_SAVEDIR:
        j->save_dir = arg;
        return CLI_OK;
    case O_INVERT:
        j->p.invert = 1;
        return CLI_OK;
    case O_AUG:
        j->p.augment = 1;
        return CLI_OK;
    case O_FLOWS:
        j->save_flows = true;
        return CLI_OK;
    case O_OUTLINES:
        j->save_outlines = true;
        return CLI_OK;
    case O_QUIET:
        j->quiet = true;
        return CLI_OK;
    case O_SHM_ONLY:
        j->so.shm_only = 1;
        return CLI_OK;
    case O_JSON:
        j->so.json = 1;
        return CLI_OK;
    default: {
        int r = cli_masks_option(c, arg, &j->p.cellprob_threshold, &j->p.flow_threshold,
                                 &j->p.niter, &j->p.min_size);
        return cli_other_option(r, c, arg, USE); /* + --max-pixels ... */
    }
    }
}

/* Parses the command line into *j. -1 to go on; otherwise the exit code (--help: CLI_OK). A
 * long option is also accepted with '_' for '-' (cli_getopt_long), so Cellpose's spellings of
 * an option need no entry of their own; an alias of another name is one more table entry. */
static int parse_options(int argc, char **argv, seg_job *j) {
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
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "o:h", opts, NULL)) != -1) {
        if (c == 'h') {
            print_help();
            return CLI_OK;
        }
        int rc = job_option(j, c, optarg);
        if (rc != CLI_OK)
            return rc;
    }
    if (optind >= argc)
        return cli_usage(USE);
    if (j->out && j->save_dir) {
        cli_error("-o and --save-dir exclude each other");
        return CLI_USAGE;
    }
    if (j->so.json && !j->so.shm_only) {
        cli_error("--json goes with --shm-only");
        return CLI_USAGE;
    }
    return -1;
}

/* The checks that look at files: --save-dir, the model, the inputs. -1 to go on, else the exit
 * code (the message printed). */
static int find_inputs(int argc, char **argv, seg_job *j) {
    if (j->save_dir && !is_dir(j->save_dir)) {
        cli_error("%s: --save-dir is not an existing folder", j->save_dir);
        return CLI_FAIL;
    }
    if (!resolve_model(j->model_arg, j->model, sizeof j->model))
        return CLI_FAIL;
    for (int i = optind; i < argc; i++)
        if (!collect_inputs(&j->inputs, argv[i]))
            return CLI_FAIL;
    if (j->out && j->inputs.n > 1) {
        cli_error("-o names one output: use --save-dir with %zu images", j->inputs.n);
        return CLI_USAGE;
    }
    return -1;
}

/* The members that `segment` adds to each .bin sidecar (n_masks, diameter and source come from
 * the segment header: gpuseg save adds them), as compact JSON text; NULL when out of memory. */
static char *sidecar_extra(const seg_job *j, const char *image, const gpuseg_segment_result *r) {
    const gpuseg_segment_params *p = &j->p;
    json_t *params = json_pack(
        "{s:o,s:b,s:i,s:i,s:b,s:o,s:o,s:i,s:i,s:b,s:o,s:i}", "diameter", cli_json_num(p->diameter),
        "estimate_diameter", p->estimate_diameter, "chan", p->chan, "chan2", p->chan2, "invert",
        p->invert, "flow_threshold", cli_json_num(p->flow_threshold), "cellprob_threshold",
        cli_json_num(p->cellprob_threshold), "niter", (int)p->niter, "min_size", (int)p->min_size,
        "augment", p->augment, "tile_overlap", cli_json_num(p->tile_overlap), "batch_size",
        (int)p->batch_size);
    json_t *o = json_pack(
        "{s:s,s:o,s:o,s:o,s:s,s:b,s:o,s:o,s:i,s:o,s:i,s:i,s:o}", "producer", "gpuseg segment",
        "gpuseg_version", cli_json_str(gpuseg_version()), "image", cli_json_str(image), "model",
        cli_json_str(j->model), "diameter_mode", diameter_mode(p, r), "diameter_estimated",
        r->diameter_estimated, "diameter_first_pass", cli_json_num(r->diameter_first_pass),
        "diameter_estimate", cli_json_num(r->diameter_estimate), "passes", (int)r->passes,
        "rescale", cli_json_num(r->rescale), "niter", (int)r->niter, "n_tiles", (int)r->n_tiles,
        "parameters", params);
    /* 9 significant digits, as the sidecar always had: every float parameter reads back */
    char *text = cli_json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    return text;
}

/* The summary line of one image on stderr. */
static void report_image(const seg_job *j, const char *image, const gpuseg_segment_result *r,
                         double seconds) {
    char how[128];
    if (r->diameter_estimated && r->passes >= 2)
        snprintf(how, sizeof how, "estimated in %u passes; first at %.2f", r->passes,
                 r->diameter_first_pass);
    else if (r->diameter_estimated)
        snprintf(how, sizeof how, "estimated %.2f: within 10%%, first pass kept",
                 r->diameter_estimate);
    else if (j->p.estimate_diameter)
        snprintf(how, sizeof how, "model; no masks to estimate from");
    else
        snprintf(how, sizeof how, "%s", diameter_mode(&j->p, r));
    fprintf(stderr, "%s: %u masks, diameter %.2f (%s), %.2f s (network %.2f s, masks %.2f s)\n",
            image, r->n_masks, r->diameter, how, seconds, r->seconds_net, r->seconds_masks);
}

/* What the run of a job holds. */
typedef struct seg_run {
    gpuseg_ctx *ctx;
    gpuseg_net *net;
    segment_output *pipe;
    progress_line progress;
} seg_run;

/* Segments image i and hands its outputs over. CLI_OK, CLI_FAIL (reported; the batch goes on),
 * or -1 when a signal cancelled it (nothing of this image is written). */
static int run_image(const seg_job *j, seg_run *run, size_t i) {
    const char *image = j->inputs.v[i];
    double t0 = now_s();
    seg_outputs o;
    if (!output_paths(image, j->out, j->save_dir, j->format, j->save_flows, j->save_outlines, &o)) {
        cli_error("%s: output path too long", image);
        return CLI_FAIL;
    }
    run->progress.i = i;
    run->progress.name = strrchr(image, '/') ? strrchr(image, '/') + 1 : image;
    run->progress.stage = NULL;
    progress_draw(&run->progress, &(gpuseg_progress){"reading", 0, 0, 0.0});
    gpuseg_image *img = NULL;
    gpuseg_status st = gpuseg_image_read_ex(image, &cli_limits, &img);
    if (st != GPUSEG_OK) {
        progress_clear(&run->progress);
        return cli_fail(st);
    }
    gpuseg_segment_result r;
    memset(&r, 0, sizeof r);
    st = gpuseg_segment(run->ctx, run->net, img, &j->p, &r);
    progress_clear(&run->progress);
    int rc = CLI_OK;
    char *extra = NULL;
    if (st == GPUSEG_CANCELLED || segment_output_signal(run->pipe)) {
        rc = -1; /* results of a cancelled image are dropped, not written */
    } else if (st != GPUSEG_OK) {
        cli_error("%s: %s", image, gpuseg_last_error());
        rc = CLI_FAIL;
    } else if (!(extra = sidecar_extra(j, image, &r))) {
        cli_error("%s: out of memory", image);
        rc = CLI_FAIL;
    } else if ((st = write_outputs(run->pipe, run->ctx, image, img, j->p.page, &o, &r, extra)) !=
               GPUSEG_OK) {
        rc = cli_fail(st); /* the message names the image or the file */
    } else if (!j->quiet) {
        report_image(j, image, &r, now_s() - t0);
    }
    free(extra);
    gpuseg_segment_result_free(&r);
    gpuseg_image_free(img);
    return rc;
}

/* Opens the device, the pipeline (which turns SIGINT / SIGTERM into a cancel of ctx) and the
 * model. */
static gpuseg_status run_open(seg_job *j, seg_run *run) {
    gpuseg_status st = cli_ctx_create(j->device, &run->ctx);
    if (st != GPUSEG_OK)
        return st;
    gpuseg_ctx_set_progress(run->ctx, progress_draw, &run->progress);
    j->so.cancel_on_signal = 1;
    j->so.cancel_ctx = run->ctx;
    if ((st = segment_output_create(&j->so, &run->pipe)) != GPUSEG_OK)
        return st;
    return gpuseg_net_load(run->ctx, j->model, &run->net); /* ctx limits: --max-model-bytes */
}

int gpuseg_cmd_segment(int argc, char **argv) {
    seg_job j;
    memset(&j, 0, sizeof j);
    gpuseg_segment_params_default(&j.p);
    j.p.estimate_diameter = 1; /* the command's default: --diameter 0 = estimate */
    j.format = "bin";
    j.so = (segment_output_opts)SEGMENT_OUTPUT_OPTS_INIT;
    /* Keeps the segments of one job apart from others' (gpuseg shm list/clean --prefix). */
    j.so.name_prefix = getenv("GPUSEG_SHM_PREFIX");
    j.so.test_stall_ms = cli_test_stall_ms();
    int rc = parse_options(argc, argv, &j);
    if (rc < 0)
        rc = find_inputs(argc, argv, &j);
    if (rc >= 0) {
        list_free(&j.inputs);
        return rc;
    }
    j.p.want_flows = j.save_flows;
    j.p.want_style = j.save_flows;
    seg_run run;
    memset(&run, 0, sizeof run);
    run.progress.on = !j.quiet && isatty(STDERR_FILENO);
    run.progress.n = j.inputs.n;
    cli_notices = run.progress.on; /* the device used, and why a first run is slow */
    gpuseg_status st = run_open(&j, &run);
    rc = st == GPUSEG_OK ? CLI_OK : cli_fail(st); /* the loader's message names the model */
    size_t done = 0;
    for (; st == GPUSEG_OK && done < j.inputs.n && !segment_output_signal(run.pipe); done++) {
        int r = run_image(&j, &run, done);
        if (r < 0)
            break;
        if (r != CLI_OK)
            rc = r;
    }
    if (run.pipe && segment_output_finish(run.pipe) > 0)
        rc = CLI_FAIL; /* each failed save was reported by name */
    int sig = segment_output_signal(run.pipe);
    if (sig) {
        cli_error("segment: cancelled by %s after %zu of %zu images; nothing of the unfinished "
                  "one was written",
                  sig == SIGINT ? "SIGINT" : "SIGTERM", done, j.inputs.n);
        rc = 128 + sig;
    }
    segment_output_free(run.pipe);
    gpuseg_net_free(run.net);
    gpuseg_ctx_free(run.ctx);
    list_free(&j.inputs);
    return rc;
}
