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

#include "axes.h"
#include "cli.h"
#include "commands.h"
#include "labels_load.h"
#include "segment_blocks.h"
#include "segment_output.h"

#define PATH_MAX_LEN 4096

static bool is_dir(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISDIR(s.st_mode);
}

static bool is_file(const char *path) {
    struct stat s;
    return stat(path, &s) == 0 && S_ISREG(s.st_mode);
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* A growable list of paths. */
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

/* What the command line asks for. */
typedef struct seg_job {
    gpuseg_segment_params p;
    const char *model_arg, *device, *out, *save_dir, *format;
    bool format_given, page_given, save_flows, save_outlines, quiet, verbose;
    /* Cellpose's outputs: --save_png / --save_tif (masks as STEM<output_name>.png / .tif),
     * --save_txt (STEM_cp_outlines.txt), --save_rois (STEM_rois.zip), and --save-geojson. */
    bool save_png, save_tif, save_txt, save_rois, save_geojson;
    bool exclude_edges, skip_existing;
    bool resume;   /* --resume: a streamed blockwise run continues from its saved state */
    double stitch; /* --stitch-threshold T: pages are a Z stack, stitched (0: 2-D images) */
    /* --do-3d: pages are a Z stack segmented in 3-D (Cellpose's do_3D), with --anisotropy A (1)
     * and --flow3d-smooth S (0); given: whether those two were given (they need --do-3d) */
    bool do3d, aniso_given, smooth_given;
    double anisotropy, flow3d_smooth;
    /* --z-axis N / --channel-axis N (Cellpose's): CLI_AXIS_NONE when not given */
    int z_axis, channel_axis;
    const char *output_name;              /* "_cp_masks" */
    const char *img_filter, *mask_filter; /* NULL, "_masks" */
    int depth; /* subfolder levels searched: 0, 1 (--look-one-level-down), -1 (--recursive) */
    segment_output_opts so;
    /* Large images (docs/segment.md): --block-size N forces blockwise runs (0: only images over
     * the memory budget go blockwise, with blocks of SEG_BLOCKS_AUTO_BLOCK); --halo N (0: the
     * library's); --max-memory SIZE, the budget of a whole-image run (0: half the physical
     * memory or the device's global memory if smaller). */
    uint32_t block_size, halo;
    uint64_t max_memory;
    char model[PATH_MAX_LEN]; /* resolved */
    path_list args;           /* the inputs as given: --dir, --image_path, positional */
    path_list inputs;         /* the images */
    unsigned char *skip;      /* per image: its outputs are complete (--skip-existing) */
} seg_job;

/* Where one image's results go (paths empty when not written). */
typedef struct seg_outputs {
    char labels[PATH_MAX_LEN];
    char masks_png[PATH_MAX_LEN], masks_tif[PATH_MAX_LEN];
    char flows[PATH_MAX_LEN];
    char style[PATH_MAX_LEN];
    char outlines[PATH_MAX_LEN];
    char txt[PATH_MAX_LEN], rois[PATH_MAX_LEN], geojson[PATH_MAX_LEN];
} seg_outputs;

/* buf = DIR/STEM + suffix when `on`, else ""; false when it does not fit. */
static bool out_path(char *buf, bool on, const char *dir, const char *stem, const char *suffix) {
    buf[0] = 0;
    if (!on)
        return true;
    int n = snprintf(buf, PATH_MAX_LEN, "%s/%s%s", dir, stem, suffix);
    return n >= 0 && n < PATH_MAX_LEN;
}

/* The folder and stem that the outputs of one image are named from: -o OUT's, else the image's
 * stem in --save-dir or in the image's folder. */
static void output_base(const seg_job *j, const char *image, char *dir, char *stem) {
    const char *base = j->out ? j->out : image;
    const char *slash = strrchr(base, '/');
    if (j->save_dir && !j->out)
        snprintf(dir, PATH_MAX_LEN, "%s", j->save_dir);
    else if (slash)
        snprintf(dir, PATH_MAX_LEN, "%.*s", (int)(slash - base), base);
    else
        snprintf(dir, PATH_MAX_LEN, ".");
    snprintf(stem, PATH_MAX_LEN, "%s", slash ? slash + 1 : base);
    char *dot = strrchr(stem, '.');
    if (dot && dot != stem)
        *dot = 0;
}

/* The output paths of one image: -o OUT (labels; the others beside it), else
 * DIR/STEM_segmentation.FMT and the others with DIR = --save-dir or the image's folder. */
static bool output_paths(const seg_job *j, const char *image, seg_outputs *o) {
    char dir[PATH_MAX_LEN], stem[PATH_MAX_LEN], sfx[PATH_MAX_LEN];
    output_base(j, image, dir, stem);
    if (j->out) {
        if ((size_t)snprintf(o->labels, sizeof o->labels, "%s", j->out) >= sizeof o->labels)
            return false;
    } else {
        snprintf(sfx, sizeof sfx, "_segmentation.%s", j->format);
        if (!out_path(o->labels, true, dir, stem, sfx))
            return false;
    }
    char png[PATH_MAX_LEN], tif[PATH_MAX_LEN];
    snprintf(png, sizeof png, "%s.png", j->output_name);
    snprintf(tif, sizeof tif, "%s.tif", j->output_name);
    return out_path(o->masks_png, j->save_png, dir, stem, png) &&
           out_path(o->masks_tif, j->save_tif, dir, stem, tif) &&
           out_path(o->outlines, j->save_outlines, dir, stem, "_outlines.png") &&
           out_path(o->flows, j->save_flows, dir, stem, "_flows.npy") &&
           out_path(o->style, j->save_flows && !j->do3d, dir, stem, "_style.npy") &&
           out_path(o->txt, j->save_txt, dir, stem, "_cp_outlines.txt") &&
           out_path(o->rois, j->save_rois, dir, stem, "_rois.zip") &&
           out_path(o->geojson, j->save_geojson, dir, stem, ".geojson");
}

/* Whether every output of o exists and is complete. Each file is written atomically (whole or
 * absent); a .bin is complete when its .json sidecar is there and gives its size. */
static bool outputs_complete(const seg_outputs *o) {
    const char *const all[] = {o->labels,   o->masks_png, o->masks_tif, o->flows,  o->style,
                               o->outlines, o->txt,       o->rois,      o->geojson};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        size_t n = strlen(all[i]);
        if (!n)
            continue;
        if (!is_file(all[i]))
            return false;
        if (n > 4 && strcmp(all[i] + n - 4, ".bin") == 0 && !cli_labels_bin_complete(all[i]))
            return false;
    }
    return true;
}

/* The k-th extra labels file (0: --save_png's, 1: --save_tif's); NULL when not asked. */
static const char *extra_labels(const seg_outputs *o, int k) {
    const char *v[2] = {o->masks_png, o->masks_tif};
    return k < 2 && v[k][0] ? v[k] : NULL;
}

/* Hands one image's results over: the labels to the output pipeline (a segment and a saver
 * process, or a segment left for the caller), the other files, when asked, written here. */
static gpuseg_status write_outputs(segment_output *pipe, gpuseg_ctx *ctx, const char *image,
                                   const gpuseg_image *img, uint32_t page, const seg_outputs *o,
                                   const gpuseg_segment_result *r, const char *json_extra) {
    const gpuseg_image *lab = r->labels;
    gpuseg_status st =
        segment_output_submit(pipe, ctx, image, o->labels, NULL, lab, lab->height, lab->width,
                              lab->dtype, r->n_masks, r->diameter, json_extra);
    for (int k = 0; st == GPUSEG_OK && k < 2; k++)
        if (extra_labels(o, k))
            st = segment_output_submit(pipe, ctx, image, extra_labels(o, k), NULL, lab, lab->height,
                                       lab->width, lab->dtype, r->n_masks, r->diameter, NULL);
    if (st != GPUSEG_OK)
        return st;
    const uint32_t Z = lab->pages; /* a stack: flows [Z,3,H,W], styles [Z,len] */
    if (o->flows[0] && r->flows && !r->style && Z > 1) { /* --do-3d: [4,Z,H,W], no style */
        uint64_t shape[4] = {4, Z, r->labels->height, r->labels->width};
        if ((st = gpuseg_npy_write_ex(o->flows, GPUSEG_DTYPE_F32, 4, shape, r->flows,
                                      cli_write_flags)) != GPUSEG_OK)
            return st;
    } else if (o->flows[0] && r->flows) {
        uint64_t shape[4] = {Z, 3, r->labels->height, r->labels->width};
        if ((st = gpuseg_npy_write_ex(o->flows, GPUSEG_DTYPE_F32, Z > 1 ? 4 : 3,
                                      Z > 1 ? shape : shape + 1, r->flows, cli_write_flags)) !=
            GPUSEG_OK)
            return st;
    }
    if (o->style[0] && r->style) {
        uint64_t shape[2] = {Z, r->style_len};
        if ((st = gpuseg_npy_write_ex(o->style, GPUSEG_DTYPE_F32, Z > 1 ? 2 : 1,
                                      Z > 1 ? shape : shape + 1, r->style, cli_write_flags)) !=
            GPUSEG_OK)
            return st;
    }
    if (o->outlines[0]) {
        gpuseg_outlines_params op;
        gpuseg_outlines_params_default(&op);
        op.page = page;
        gpuseg_image *rgb = NULL, *whole = NULL; /* a blockwise run reads the picture's image */
        if (!img && (st = gpuseg_image_read_ex(image, &cli_limits, &whole)) != GPUSEG_OK)
            return st;
        if ((st = gpuseg_outlines_draw(img ? img : whole, lab, &op, &rgb)) == GPUSEG_OK)
            st = gpuseg_image_write_png_ex(o->outlines, rgb, cli_write_flags);
        gpuseg_image_free(rgb);
        gpuseg_image_free(whole);
        if (st != GPUSEG_OK)
            return st;
    }
    if (o->txt[0] || o->rois[0] || o->geojson[0]) {
        gpuseg_polygons *poly = NULL;
        st = gpuseg_labels_polygons(lab, &poly);
        if (st == GPUSEG_OK && o->txt[0])
            st = gpuseg_polygons_write_txt(o->txt, poly);
        if (st == GPUSEG_OK && o->rois[0])
            st = gpuseg_polygons_write_rois(o->rois, poly);
        if (st == GPUSEG_OK && o->geojson[0])
            st = gpuseg_polygons_write_geojson(o->geojson, poly, NULL);
        gpuseg_polygons_free(poly);
    }
    return st;
}

/* Cellpose's --exclude_on_edges: the masks touching the image border removed, the others
 * renumbered (gpuseg_labels_remove_edge_masks), in r->labels and r->n_masks. */
static gpuseg_status exclude_edge_masks(gpuseg_segment_result *r) {
    gpuseg_image *lab = r->labels;
    size_t n = (size_t)lab->width * lab->height;
    uint32_t *v = lab->dtype == GPUSEG_DTYPE_U32 ? lab->data : malloc(n * sizeof *v);
    if (!v)
        return cli_set_error(GPUSEG_OUT_OF_MEMORY, "--exclude-on-edges: out of memory");
    if (lab->dtype == GPUSEG_DTYPE_U16)
        for (size_t i = 0; i < n; i++)
            v[i] = ((const uint16_t *)lab->data)[i];
    uint32_t nm = 0;
    gpuseg_status st = gpuseg_labels_remove_edge_masks(v, lab->height, lab->width, &nm);
    if (st == GPUSEG_OK && lab->dtype == GPUSEG_DTYPE_U16)
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)lab->data)[i] = (uint16_t)v[i]; /* renumbered: never above before */
    if (v != lab->data)
        free(v);
    if (st == GPUSEG_OK)
        r->n_masks = nm;
    return st;
}

/* The folders where a model named without a folder is looked for, in order: the installed
 * DATADIR/gpuseg/models found relative to this program (so an installed tree can be moved),
 * then the source tree's models/ (for the build tree); gpuseg_model_find then tries Cellpose's
 * model folder. Canonical where they exist. */
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

/* Finds the model file: `arg` (--model, --pretrained_model) or, when NULL, $GPUSEG_MODEL, else
 * the bundled GPUSEG_DEFAULT_MODEL, with gpuseg_model_find: a path as is, a bare name in
 * model_dirs() and then in Cellpose's model folder under Cellpose's file name (cyto3,
 * nucleitorch_0, ...). False, with one line naming the value and every place tried, when
 * nothing is found (before any device work, so a typo costs no start-up). */
static bool resolve_model(const char *arg, char *path, size_t len) {
    const char *env = arg ? NULL : getenv("GPUSEG_MODEL");
    const char *want = arg ? arg : (env && *env) ? env : GPUSEG_DEFAULT_MODEL;
    char dirs[2][PATH_MAX_LEN];
    int nd = model_dirs(dirs);
    const char *const dp[2] = {dirs[0], dirs[1]};
    if (gpuseg_model_find(want, dp, (size_t)nd, path, len) == GPUSEG_OK)
        return true;
    if (arg)
        cli_error("--model %s: %s", arg, gpuseg_last_error());
    else if (env && *env)
        cli_error("GPUSEG_MODEL=%s: %s", env, gpuseg_last_error());
    else
        cli_error("the bundled model is missing ($GPUSEG_MODEL unset): %s; give --model FILE (a "
                  "Cellpose 3 model file)",
                  gpuseg_last_error());
    return false;
}

/* The channels a model was trained with, from its sidecar (MODEL.json beside the model file,
 * as the bundled models have: "input": {"channels": [c, c2]}): c2, or -1 when unknown. */
static int model_sidecar_chan2(const char *model) {
    char path[PATH_MAX_LEN + 8];
    snprintf(path, sizeof path, "%s.json", model);
    if (!is_file(path))
        return -1;
    json_t *j = json_load_file(path, 0, NULL);
    json_int_t c0 = 0, c2 = -1;
    if (!j || json_unpack(j, "{s:{s:[II]}}", "input", "channels", &c0, &c2) != 0)
        c2 = -1;
    json_decref(j);
    return (int)c2;
}

/* Whether stem (name without its extension, n bytes) ends with suffix, with something before
 * it (Cellpose's rule: "_masks" itself is an image). */
static bool stem_ends(const char *name, size_t n, const char *suffix) {
    size_t k = suffix ? strlen(suffix) : 0;
    return k && n > k && strncmp(name + n - k, suffix, k) == 0;
}

/* Whether a file in an input folder is an image to segment: a known extension, not hidden, not
 * a label or output file -- Cellpose's get_image_files skips stems ending in _masks,
 * _cp_output, _flows(_0|_1|_2), _cellprob and --mask_filter; gpuseg also skips its own and
 * Cellpose's other outputs (_cp_masks, _outlines, _cp_outlines, _seg, _segmentation, _style,
 * the --output_name suffix) so that a second run over a folder does not segment its results --
 * and, with --img_filter S, only stems ending in S. */
static bool is_input_image(const seg_job *j, const char *name) {
    static const char *const exts[] = {"png", "jpg", "jpeg", "tif", "tiff",
                                       "bmp", "pgm", "ppm",  "npy"};
    static const char *const labels[] = {
        "_masks",    "_cp_masks", "_cp_output",   "_flows", "_flows_0",      "_flows_1", "_flows_2",
        "_cellprob", "_outlines", "_cp_outlines", "_seg",   "_segmentation", "_style"};
    const char *dot = strrchr(name, '.');
    if (name[0] == '.' || !dot)
        return false;
    bool known = false;
    for (size_t i = 0; i < sizeof exts / sizeof *exts; i++)
        known |= strcasecmp(dot + 1, exts[i]) == 0;
    if (!known)
        return false;
    size_t n = (size_t)(dot - name);
    for (size_t i = 0; i < sizeof labels / sizeof *labels; i++)
        if (stem_ends(name, n, labels[i]))
            return false;
    if (stem_ends(name, n, j->mask_filter) || stem_ends(name, n, j->output_name))
        return false;
    if (j->img_filter && *j->img_filter) {
        size_t k = strlen(j->img_filter);
        return n >= k && strncmp(name + n - k, j->img_filter, k) == 0;
    }
    return true;
}

/* Adds the images of folder `dir` (sorted by name), then those of its subfolders (sorted, not
 * hidden) down to `depth` more levels (-1: all). False (message printed) on an error. */
static bool collect_folder(const seg_job *j, path_list *l, const char *dir, int depth) {
    DIR *d = opendir(dir);
    if (!d) {
        cli_error("%s: cannot read the folder: %s", dir, strerror(errno));
        return false;
    }
    path_list files = {0}, subs = {0};
    size_t dlen = strlen(dir);
    const char *sep = dlen && dir[dlen - 1] == '/' ? "" : "/";
    bool ok = true;
    struct dirent *e;
    while (ok && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char path[PATH_MAX_LEN];
        int n = snprintf(path, sizeof path, "%s%s%s", dir, sep, e->d_name);
        if (n < 0 || (size_t)n >= sizeof path) {
            cli_error("%s%s%s: path too long", dir, sep, e->d_name);
            ok = false;
        } else if (is_dir(path)) {
            if (depth != 0)
                ok = list_push(&subs, path) || (cli_error("out of memory"), false);
        } else if (is_input_image(j, e->d_name) && is_file(path)) {
            ok = list_push(&files, path) || (cli_error("out of memory"), false);
        }
    }
    closedir(d);
    if (files.n) /* qsort's base must not be NULL, even for 0 elements */
        qsort(files.v, files.n, sizeof *files.v, cmp_str);
    if (subs.n)
        qsort(subs.v, subs.n, sizeof *subs.v, cmp_str);
    for (size_t i = 0; ok && i < files.n; i++)
        ok = list_push(l, files.v[i]) || (cli_error("out of memory"), false);
    for (size_t i = 0; ok && i < subs.n; i++)
        ok = collect_folder(j, l, subs.v[i], depth < 0 ? -1 : depth - 1);
    list_free(&files);
    list_free(&subs);
    return ok;
}

/* Adds one input as given: a file as is, or a folder's images. False (message printed) when a
 * folder cannot be read or holds no image. */
static bool collect_inputs(seg_job *j, const char *arg) {
    if (!is_dir(arg))
        return list_push(&j->inputs, arg) || (cli_error("out of memory"), false);
    size_t before = j->inputs.n;
    if (!collect_folder(j, &j->inputs, arg, j->depth))
        return false;
    if (j->inputs.n == before) {
        cli_error("%s: no image files in this folder%s (png, jpg, tif, bmp, pgm, ppm, npy; label "
                  "files such as *_masks.* are skipped%s%s)",
                  arg, j->depth ? " or its subfolders" : "", j->img_filter ? "; --img-filter " : "",
                  j->img_filter ? j->img_filter : "");
        return false;
    }
    return true;
}

/* ---- the job: options, inputs, the run ----------------------------------------------------- */

static const char *const USE =
    "segment IMAGE|FOLDER... [--model FILE|NAME] [--diameter 0|D|model] "
    "[--chan C --chan2 C2] [--invert] [--flow-threshold 0.4] [--cellprob-threshold 0.0] "
    "[--niter N] [--min-size 15] [--augment] [--tile-overlap 0.1] [--batch-size 8] "
    "[--no-norm | --norm-percentile 1 99] [--exclude-on-edges] "
    "[--page N | --stitch-threshold T | --do-3d [--anisotropy A] [--flow3d-smooth S]] "
    "[--z-axis N] [--channel-axis N] "
    "[--block-size N] [--halo N] [--max-memory SIZE] [--resume] "
    "[--device SPEC] [-o OUT | --save-dir DIR] [--format bin|tif|png|npy] [--save-flows] "
    "[--save-outlines] [--save-png] [--save-tif] [--output-name _cp_masks] [--save-txt] "
    "[--save-rois] [--save-geojson] [--img-filter S] [--mask-filter _masks] "
    "[--look-one-level-down | --recursive] [--skip-existing] "
    "[--shm-only [--json]] [--max-in-flight 2] [--quiet | --verbose]";

/* The progress line (stderr is a terminal and not --quiet): one line redrawn in place from the
 * library's progress callback, "[i/n] NAME ... stage done/total  NN%". */
typedef struct progress_line {
    bool on;
    size_t i, n;
    const char *name;
    const char *stage; /* the last one drawn */
    double drawn_s;    /* when */
    /* A blockwise run: the image's pixels (0: not blockwise), blocks done and in all, and when
     * the first block began; the line then shows blocks, megapixels per second, time left. */
    uint64_t pixels;
    uint64_t blocks_done, blocks_total;
    double blocks_t0;
    /* blocks already done when the run started (a resumed run), and whether the run keeps a
     * resumable state (the line then says that --resume continues it) */
    uint64_t blocks_done0;
    bool resumable;
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
    if (pl->pixels && strcmp(pr->stage, "blocks") == 0) {
        if (pl->blocks_total == 0) { /* the first "blocks" report: 0 done, or a resume's */
            pl->blocks_t0 = t;
            pl->blocks_done0 = pr->done;
        }
        pl->blocks_done = pr->done;
        pl->blocks_total = pr->total;
    }
    if (pl->pixels && pl->blocks_total) { /* blocks, not the nested stages of each block */
        double el = t - pl->blocks_t0, f = (double)pl->blocks_done / (double)pl->blocks_total;
        /* the rate of the blocks run here, not of those a resumed run found done */
        double g = (double)(pl->blocks_done - pl->blocks_done0) / (double)pl->blocks_total;
        fprintf(stderr, "\r\033[K[%zu/%zu] %s ... blocks %llu/%llu", pl->i + 1, pl->n, pl->name,
                (unsigned long long)pl->blocks_done, (unsigned long long)pl->blocks_total);
        if (g > 0 && el > 0)
            fprintf(stderr, ", %.2f MP/s, %.0f s left", 1e-6 * g * (double)pl->pixels / el,
                    el * (1 - f) / g);
        fprintf(stderr, "  %3.0f%%", 100.0 * f); /* of the blocks: nested stages end at 100% */
        if (pl->resumable)
            fputs(" (if stopped, --resume continues)", stderr);
        fflush(stderr);
        return;
    }
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
    if (r->diameter_style > 0)
        return "size model";
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
           "then %s, then Cellpose's model folder ($CELLPOSE_LOCAL_MODELS_PATH or "
           "~/.cellpose/models) under Cellpose's file name: --model cyto3, --model nuclei); "
           "without it, $GPUSEG_MODEL, else the bundled model %s (%s).\n"
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
           "Cellpose users: options are also accepted with '_' for '-' (--flow_threshold), "
           "and Cellpose's names: --pretrained_model (= --model), --dir DIR and --image_path "
           "FILE (inputs), --savedir (= --save-dir, created when missing), --use_gpu (= "
           "--device gpu), --no_npy (gpuseg writes no _seg.npy); --save_png / --save_tif write "
           "STEM_cp_masks.png / .tif (--output_name: another suffix), --save_txt "
           "STEM_cp_outlines.txt, --save_rois STEM_rois.zip (ImageJ), --save-geojson "
           "STEM.geojson (QuPath). A Cellpose flag gpuseg lacks (--Zstack, ...) is refused with "
           "one line saying why (docs/segment.md has the table).\n"
           "Z stacks (a multi-page TIFF, a [Z,Y,X] or [Z,Y,X,C] .npy): --stitch-threshold T "
           "segments each plane (the stack normalised as a whole) and links the masks across Z "
           "as Cellpose's --stitch_threshold; --do-3d (Cellpose's --do_3D) segments it in 3-D: "
           "the network on every YX, ZX and ZY slice (after the Z axis is resized by "
           "--anisotropy A, the Z step over the pixel size, default 1), the three views' flows "
           "combined (optionally smoothed: --flow3d-smooth S, a Gaussian sigma in voxels) and "
           "3-D masks (--save-flows: STEM_flows.npy float32 [4,Z,Y,X]: dZ, dY, dX, cellprob). "
           "The labels are written as a 3-D .tif, .npy or .bin [Z,Y,X]. --z-axis N and "
           "--channel-axis N (Cellpose's --z_axis, --channel_axis) name the file's axes when Z "
           "is not a TIFF's pages or a .npy's first axis (negative: from the end).\n"
           "Large images: --block-size N (a multiple of 16, >= 64) segments blockwise, reading "
           "the image region by region, with --halo N pixels of context (default 4 x the "
           "diameter, >= 64); an image whose whole-image run is estimated (28 bytes per pixel "
           "plus the image) over --max-memory SIZE (default: half the RAM, or the device's "
           "memory if smaller) goes blockwise by itself with blocks of 1024. --diameter 0 is "
           "then estimated on a central 1024x1024 sample. TIFF labels are streamed to a tiled "
           "BigTIFF, with --save-txt, --save-rois and --save-geojson streamed block by block "
           "(labels numbered in block order); other formats are assembled in memory (4 bytes "
           "per pixel). A streamed run keeps a resumable state in .NAME.gpuseg-resume/ beside "
           "the labels while it runs: after a kill, Ctrl-C or an error, the same command with "
           "--resume continues from the finished blocks (same outputs as an uninterrupted "
           "run); a state of other settings is refused, and without --resume it is "
           "replaced.\n"
           "Refused before any device work, with one line: images of several pages without "
           "--stitch-threshold or --do-3d (a Z stack, or channels stored as pages; --page N "
           "segments one), --do-3d on a 2-D image or with --stitch-threshold, "
           "--chan/--chan2 beyond the "
           "image's channels, --chan2 with a model trained without a second channel, -o whose "
           "extension disagrees with --format, a missing or unwritable output folder, two "
           "images that would write one output file.\n"
           "Folders: images sorted by name; label and output files (*_masks, *_cp_masks, "
           "*_seg, *_flows, *_outlines, *_segmentation, ... and --mask-filter's suffix) are "
           "skipped; --img-filter S keeps stems ending in S; --look-one-level-down adds each "
           "subfolder's images, --recursive every level's. --skip-existing skips an image whose "
           "every output is complete. A run of several images ends with a summary "
           "line.\n" CLI_LIMITS_HELP,
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
    O_IN_FLIGHT,
    O_PAGE,
    O_INPUT, /* --dir DIR, --image_path FILE: an input, as the positional ones */
    O_USE_GPU,
    O_VERBOSE,
    O_VERSION,
    O_SAVE_PNG,
    O_SAVE_TIF,
    O_SAVE_TXT,
    O_SAVE_ROIS,
    O_SAVE_GEOJSON,
    O_OUTPUT_NAME,
    O_NO_NPY,
    O_NO_NORM,
    O_NORM_PCT,
    O_EXCLUDE_EDGES,
    O_IMG_FILTER,
    O_MASK_FILTER,
    O_ONE_LEVEL,
    O_RECURSIVE,
    O_SKIP_EXISTING,
    O_STITCH,
    O_BLOCK_SIZE,
    O_HALO,
    O_MAX_MEMORY,
    O_RESUME,
    O_DO3D,
    O_ANISO,
    O_SMOOTH3D,
    O_Z_AXIS,
    O_CHANNEL_AXIS,
    O_UNSUPPORTED /* a Cellpose flag gpuseg lacks: the table index says which */
};

/* Cellpose 3.1.1.3's flags that gpuseg does not have, with what to do instead (docs/segment.md
 * has the whole table). Parsed (optional value) only to refuse them with this line. */
static const struct {
    const char *name; /* gpuseg spelling: '_' read as '-' */
    const char *cellpose;
    const char *why;
} UNSUPPORTED[] = {
    {"Zstack", "--Zstack",
     "a stack's pages are its Z planes: --stitch-threshold T segments them plane by plane and "
     "stitches the masks; --page N segments one page"},
    {"pretrained-model-ortho", "--pretrained_model_ortho",
     "--do-3d runs the one model on all three views (Cellpose's default)"},
    {"all-channels", "--all_channels", "use --chan and --chan2 (at most two channels)"},
    {"gpu-device", "--gpu_device", "use --device (an index or name from `gpuseg devices`)"},
    {"check-mkl", "--check_mkl", "gpuseg does not use MKL; drop the flag"},
    {"restore-type", "--restore_type", "Cellpose 3's image restoration models are not supported"},
    {"chan2-restore", "--chan2_restore", "Cellpose 3's image restoration models are not supported"},
    {"add-model", "--add_model", "no model folder to add to: give --model FILE"},
    {"transformer", "--transformer", "only CPnet models are supported"},
    {"no-resample", "--no_resample",
     "gpuseg always computes the masks at the image's size (Cellpose's default)"},
    {"no-interp", "--no_interp", "gpuseg always interpolates the flows (Cellpose's default)"},
    {"dir-above", "--dir_above", "use --save-dir"},
    {"in-folders", "--in_folders", "use --save-dir"},
    {"save-mpl", "--save_mpl", "use --save-outlines for a picture of the outlines"},
    {"train", "--train", "gpuseg does not train: train with Cellpose, then --model FILE"},
    {"train-size", "--train_size", "gpuseg has no size model training"},
    {"test-dir", "--test_dir", "gpuseg does not train (gpuseg eval scores predictions)"},
    {"file-list", "--file_list", "gpuseg does not train"},
    {"diam-mean", "--diam_mean", "gpuseg does not train (the model file gives diam_mean)"},
    {"learning-rate", "--learning_rate", "gpuseg does not train"},
    {"weight-decay", "--weight_decay", "gpuseg does not train"},
    {"n-epochs", "--n_epochs", "gpuseg does not train"},
    {"nimg-per-epoch", "--nimg_per_epoch", "gpuseg does not train"},
    {"nimg-test-per-epoch", "--nimg_test_per_epoch", "gpuseg does not train"},
    {"min-train-masks", "--min_train_masks", "gpuseg does not train"},
    {"SGD", "--SGD", "gpuseg does not train"},
    {"save-every", "--save_every", "gpuseg does not train"},
    {"model-name-out", "--model_name_out", "gpuseg does not train"},
};
#define N_UNSUPPORTED (sizeof UNSUPPORTED / sizeof *UNSUPPORTED)

/* One option of the table below with its argument. CLI_OK to go on, else the exit code. */
/* The options without a value (switches). Returns 1 when c is one of them. */
static int switch_option(seg_job *j, int c) {
    switch (c) {
    case O_USE_GPU:
        j->device = "gpu";
        return 1;
    case O_INVERT:
        j->p.invert = 1;
        return 1;
    case O_AUG:
        j->p.augment = 1;
        return 1;
    case O_FLOWS:
        j->save_flows = true;
        return 1;
    case O_OUTLINES:
        j->save_outlines = true;
        return 1;
    case O_SAVE_PNG:
        j->save_png = true;
        return 1;
    case O_SAVE_TIF:
        j->save_tif = true;
        return 1;
    case O_SAVE_TXT:
        j->save_txt = true;
        return 1;
    case O_SAVE_ROIS:
        j->save_rois = true;
        return 1;
    case O_SAVE_GEOJSON:
        j->save_geojson = true;
        return 1;
    case O_NO_NPY: /* gpuseg never writes Cellpose's _seg.npy */
        return 1;
    case O_NO_NORM:
        j->p.normalize = 0;
        return 1;
    case O_EXCLUDE_EDGES:
        j->exclude_edges = true;
        return 1;
    case O_ONE_LEVEL:
        if (j->depth == 0)
            j->depth = 1;
        return 1;
    case O_RECURSIVE:
        j->depth = -1;
        return 1;
    case O_SKIP_EXISTING:
        j->skip_existing = true;
        return 1;
    case O_DO3D:
        j->do3d = true;
        return 1;
    case O_QUIET:
        j->quiet = true;
        return 1;
    case O_VERBOSE:
        j->verbose = true;
        return 1;
    case O_SHM_ONLY:
        j->so.shm_only = 1;
        return 1;
    case O_JSON:
        j->so.json = 1;
        return 1;
    default:
        return 0;
    }
}

static int job_option(seg_job *j, int c, const char *arg) {
    double d;
    long l;
    if (switch_option(j, c))
        return CLI_OK;
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
        /* --diameter 0 estimates: with Cellpose's size model beside the model file
         * (size_cyto3.npy, ...: run_open loads it) as SizeModel.eval does, else from a first pass
         * at the model's diameter (gpuseg_segment_params.estimate_diameter). */
        j->p.estimate_diameter = d == 0;
        return CLI_OK;
    case O_CHAN:
    case O_CHAN2:
        if (!cli_parse_int(c == O_CHAN ? "--chan" : "--chan2", arg, 0, 4, &l))
            return CLI_USAGE;
        *(c == O_CHAN ? &j->p.chan : &j->p.chan2) = (int)l;
        return CLI_OK;
    case O_PAGE:
        if (!cli_parse_int("--page", arg, 0, 0x7fffffffL, &l))
            return CLI_USAGE;
        j->p.page = (uint32_t)l;
        j->page_given = true;
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
        j->format_given = true;
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
    case O_INPUT:
        return list_push(&j->args, arg) ? CLI_OK : (cli_error("out of memory"), CLI_FAIL);
    case O_OUTPUT_NAME:
        if (!*arg || strchr(arg, '/')) {
            cli_error("--output-name '%s': a file name suffix, not empty, without '/'", arg);
            return CLI_USAGE;
        }
        j->output_name = arg;
        return CLI_OK;
    case O_NORM_PCT: /* two values: LO here, HI the next argument (Cellpose's nargs=2) */
        if (!cli_parse_double("--norm-percentile", arg, 0, 100, &d))
            return CLI_USAGE;
        j->p.norm_lo = (float)d;
        return CLI_OK; /* HI: parse_options */
    case O_STITCH:     /* Cellpose's --stitch_threshold: 0 = 2-D (its default) */
        if (!cli_parse_double("--stitch-threshold", arg, 0, 1e6, &d))
            return CLI_USAGE;
        j->stitch = d;
        return CLI_OK;
    case O_ANISO: /* Cellpose's --anisotropy: Z step over XY pixel size */
        if (!cli_parse_double("--anisotropy", arg, 1e-3, 1e3, &d))
            return CLI_USAGE;
        j->anisotropy = d;
        j->aniso_given = true;
        return CLI_OK;
    case O_SMOOTH3D: /* Cellpose's --flow3D_smooth: Gaussian sigma on the 3-D flows */
        if (!cli_parse_double("--flow3d-smooth", arg, 0, 100, &d))
            return CLI_USAGE;
        j->flow3d_smooth = d;
        j->smooth_given = true;
        return CLI_OK;
    case O_Z_AXIS:
    case O_CHANNEL_AXIS:
        if (!cli_parse_int(c == O_Z_AXIS ? "--z-axis" : "--channel-axis", arg, -4, 3, &l))
            return CLI_USAGE;
        *(c == O_Z_AXIS ? &j->z_axis : &j->channel_axis) = (int)l;
        return CLI_OK;
    case O_BLOCK_SIZE: /* blocks fall on the streamed TIFF's tiles (multiples of 16) */
        if (!cli_parse_int("--block-size", arg, 1, 1L << 20, &l))
            return CLI_USAGE;
        if (l < 64 || l % 16) {
            cli_error("--block-size %ld: a multiple of 16, at least 64 (e.g. 1024)", l);
            return CLI_USAGE;
        }
        j->block_size = (uint32_t)l;
        return CLI_OK;
    case O_RESUME:
        j->resume = true;
        return CLI_OK;
    case O_HALO:
        if (!cli_parse_int("--halo", arg, 0, 1L << 20, &l))
            return CLI_USAGE;
        j->halo = (uint32_t)l;
        return CLI_OK;
    case O_MAX_MEMORY: {
        uint64_t v;
        if (gpuseg_limit_parse(arg, &v) != GPUSEG_OK || v == 0) {
            cli_error("--max-memory '%s': a size in bytes with an optional K/M/G/T suffix "
                      "(powers of 1024), above 0",
                      arg);
            return CLI_USAGE;
        }
        j->max_memory = v;
        return CLI_OK;
    }
    case O_IMG_FILTER:
        j->img_filter = arg;
        return CLI_OK;
    case O_MASK_FILTER:
        j->mask_filter = arg;
        return CLI_OK;
    default: {
        int r = cli_masks_option(c, arg, &j->p.cellprob_threshold, &j->p.flow_threshold,
                                 &j->p.niter, &j->p.min_size);
        return cli_other_option(r, c, arg, USE); /* + --max-pixels ... */
    }
    }
}

/* The option table: gpuseg's names, Cellpose 3.1's other names for the same options, and
 * Cellpose's flags that gpuseg lacks (refused by name, from UNSUPPORTED). A long option is also
 * accepted with '_' for '-' (cli_getopt_long), so Cellpose's spellings of an option need no
 * entry of their own. */
#define N_OPTS (84 + N_UNSUPPORTED)
static struct option g_opts[N_OPTS];

static void build_options(void) {
    static const struct option own[] = {{"model", required_argument, NULL, O_MODEL},
                                        {"pretrained-model", required_argument, NULL, O_MODEL},
                                        {"diameter", required_argument, NULL, O_DIAM},
                                        {"chan", required_argument, NULL, O_CHAN},
                                        {"chan2", required_argument, NULL, O_CHAN2},
                                        {"page", required_argument, NULL, O_PAGE},
                                        {"stitch-threshold", required_argument, NULL, O_STITCH},
                                        {"do-3d", no_argument, NULL, O_DO3D},
                                        {"do-3D", no_argument, NULL, O_DO3D},
                                        {"anisotropy", required_argument, NULL, O_ANISO},
                                        {"flow3d-smooth", required_argument, NULL, O_SMOOTH3D},
                                        {"flow3D-smooth", required_argument, NULL, O_SMOOTH3D},
                                        {"z-axis", required_argument, NULL, O_Z_AXIS},
                                        {"channel-axis", required_argument, NULL, O_CHANNEL_AXIS},
                                        {"block-size", required_argument, NULL, O_BLOCK_SIZE},
                                        {"halo", required_argument, NULL, O_HALO},
                                        {"resume", no_argument, NULL, O_RESUME},
                                        {"max-memory", required_argument, NULL, O_MAX_MEMORY},
                                        {"invert", no_argument, NULL, O_INVERT},
                                        CLI_MASKS_LONG_OPTIONS,
                                        {"augment", no_argument, NULL, O_AUG},
                                        {"tile-overlap", required_argument, NULL, O_OVL},
                                        {"batch-size", required_argument, NULL, O_BATCH},
                                        {"device", required_argument, NULL, O_DEV},
                                        {"use-gpu", no_argument, NULL, O_USE_GPU},
                                        {"output", required_argument, NULL, 'o'},
                                        {"save-dir", required_argument, NULL, O_SAVEDIR},
                                        {"savedir", required_argument, NULL, O_SAVEDIR},
                                        {"dir", required_argument, NULL, O_INPUT},
                                        {"image-path", required_argument, NULL, O_INPUT},
                                        {"format", required_argument, NULL, O_FMT},
                                        {"save-flows", no_argument, NULL, O_FLOWS},
                                        {"save-outlines", no_argument, NULL, O_OUTLINES},
                                        {"save-png", no_argument, NULL, O_SAVE_PNG},
                                        {"save-tif", no_argument, NULL, O_SAVE_TIF},
                                        {"save-txt", no_argument, NULL, O_SAVE_TXT},
                                        {"save-rois", no_argument, NULL, O_SAVE_ROIS},
                                        {"save-geojson", no_argument, NULL, O_SAVE_GEOJSON},
                                        {"output-name", required_argument, NULL, O_OUTPUT_NAME},
                                        {"no-npy", no_argument, NULL, O_NO_NPY},
                                        {"no-norm", no_argument, NULL, O_NO_NORM},
                                        {"norm-percentile", required_argument, NULL, O_NORM_PCT},
                                        {"exclude-on-edges", no_argument, NULL, O_EXCLUDE_EDGES},
                                        {"img-filter", required_argument, NULL, O_IMG_FILTER},
                                        {"mask-filter", required_argument, NULL, O_MASK_FILTER},
                                        {"look-one-level-down", no_argument, NULL, O_ONE_LEVEL},
                                        {"recursive", no_argument, NULL, O_RECURSIVE},
                                        {"skip-existing", no_argument, NULL, O_SKIP_EXISTING},
                                        {"quiet", no_argument, NULL, O_QUIET},
                                        {"verbose", no_argument, NULL, O_VERBOSE},
                                        {"version", no_argument, NULL, O_VERSION},
                                        {"shm-only", no_argument, NULL, O_SHM_ONLY},
                                        {"json", no_argument, NULL, O_JSON},
                                        {"max-in-flight", required_argument, NULL, O_IN_FLIGHT},
                                        CLI_LIMITS_LONG_OPTIONS,
                                        {"help", no_argument, NULL, 'h'}};
    _Static_assert(sizeof own / sizeof *own + N_UNSUPPORTED < N_OPTS,
                   "g_opts: raise N_OPTS for the new options");
    size_t n = 0;
    for (size_t i = 0; i < sizeof own / sizeof *own && n + 1 < N_OPTS; i++)
        g_opts[n++] = own[i];
    for (size_t i = 0; i < N_UNSUPPORTED && n + 1 < N_OPTS; i++)
        g_opts[n++] = (struct option){UNSUPPORTED[i].name, optional_argument, NULL, O_UNSUPPORTED};
    g_opts[n] = (struct option){NULL, 0, NULL, 0};
}

/* --stitch-threshold's conflicts: the outputs that hold one 2-D page (PNG labels, outlines,
 * polygons), --exclude-on-edges (2-D), --page. CLI_OK or CLI_USAGE (message printed). */
static int stack_conflicts(const seg_job *j) {
    const char *what = j->page_given      ? "--page (a stack is segmented whole)"
                       : j->exclude_edges ? "--exclude-on-edges (2-D only)"
                       : j->save_png      ? "--save-png (one page; use --save-tif)"
                       : j->save_outlines ? "--save-outlines (2-D pictures)"
                       : j->save_txt      ? "--save-txt (2-D outlines)"
                       : j->save_rois     ? "--save-rois (2-D ROIs)"
                       : j->save_geojson  ? "--save-geojson (2-D polygons)"
                       : strcmp(j->format, "png") == 0
                           ? "--format png (one page; use tif, npy or bin)"
                           : NULL;
    char o[PATH_MAX_LEN + 64];
    if (j->out && !what) {
        const char *dot = strrchr(j->out, '.');
        snprintf(o, sizeof o, "-o %s (one page; use .tif, .npy or .bin)", j->out);
        if (dot && strcasecmp(dot, ".png") == 0)
            what = o;
    }
    if (!what)
        return CLI_OK;
    if (j->do3d)
        cli_error("--do-3d segments Z stacks: it excludes %s", what);
    else
        cli_error("--stitch-threshold %g segments Z stacks: it excludes %s", j->stitch, what);
    return CLI_USAGE;
}

/* Whether the labels go to a TIFF (--format tif or -o X.tif): a blockwise run streams them into
 * a tiled BigTIFF block by block, without the whole label image in memory. */
static bool labels_tiff(const seg_job *j) {
    if (j->so.shm_only)
        return false;
    if (j->out) {
        const char *dot = strrchr(j->out, '.');
        return dot && (strcasecmp(dot, ".tif") == 0 || strcasecmp(dot, ".tiff") == 0);
    }
    return strcmp(j->format, "tif") == 0;
}

/* What a blockwise run cannot do: the option that needs a whole-image run (flows, test-time
 * augmentation, stacks), or, when the labels are streamed to a TIFF, the whole label image
 * (pictures, other label files, --exclude-on-edges; the polygon files are streamed); NULL when
 * none. */
static const char *blockwise_conflict(const seg_job *j) {
    if (j->save_flows)
        return "--save-flows (blockwise runs return no flows)";
    if (j->p.augment)
        return "--augment (not supported blockwise)";
    if (j->stitch > 0)
        return "--stitch-threshold (Z stacks are segmented whole)";
    if (j->do3d)
        return "--do-3d (Z stacks are segmented whole)";
    if (!labels_tiff(j))
        return NULL;
    const char *what = j->save_outlines   ? "--save-outlines"
                       : j->save_png      ? "--save-png"
                       : j->save_tif      ? "--save-tif"
                       : j->exclude_edges ? "--exclude-on-edges"
                                          : NULL;
    if (!what)
        return NULL;
    static char buf[160];
    snprintf(buf, sizeof buf,
             "%s with TIFF labels (streamed block by block: the whole label image is never in "
             "memory; use --format bin, npy or png for it)",
             what);
    return buf;
}

/* A byte count as text: "12 KiB", "340 MiB", "7.5 GiB". */
static const char *bytes_text(uint64_t v, char buf[32]) {
    double d = (double)v;
    if (d >= 1073741824.0)
        snprintf(buf, 32, "%.1f GiB", d / 1073741824.0);
    else if (d >= 1048576.0)
        snprintf(buf, 32, "%.0f MiB", d / 1048576.0);
    else
        snprintf(buf, 32, "%.0f KiB", d / 1024.0);
    return buf;
}

/* Whether an image of W x H (channels, dtype) is segmented blockwise, and why (into why):
 * --block-size, or a whole-image run estimated over the memory budget (--max-memory, else half
 * the physical memory or dev_bytes when smaller; dev_bytes 0: not known yet). */
static bool goes_blockwise(const seg_job *j, uint32_t w, uint32_t h, uint32_t channels,
                           gpuseg_dtype dtype, uint64_t dev_bytes, char *why, size_t len) {
    if (j->block_size) {
        snprintf(why, len, "--block-size");
        return true;
    }
    if (j->stitch > 0 || j->do3d)
        return false;
    uint64_t need = seg_blocks_estimate(w, h, channels, dtype);
    uint64_t budget = j->max_memory ? j->max_memory : seg_blocks_default_budget(dev_bytes);
    if (need <= budget)
        return false;
    char n[32], b[32];
    snprintf(why, len, "a whole-image run needs ~%s, over the %s budget%s", bytes_text(need, n),
             bytes_text(budget, b), j->max_memory ? " (--max-memory)" : "");
    return true;
}

/* Parses the command line into *j. -1 to go on; otherwise the exit code (--help: CLI_OK). */
static int parse_options(int argc, char **argv, seg_job *j) {
    build_options();
    optind = 1;
    int c, li = -1;
    while ((c = getopt_long(argc, argv, "o:h", g_opts, &li)) != -1) {
        if (c == 'h') {
            print_help();
            return CLI_OK;
        }
        if (c == O_VERSION) {
            printf("gpuseg %s\n", gpuseg_version());
            return CLI_OK;
        }
        if (c == O_UNSUPPORTED) {
            for (size_t i = 0; i < N_UNSUPPORTED; i++)
                if (li >= 0 && strcmp(g_opts[li].name, UNSUPPORTED[i].name) == 0)
                    cli_error("segment: %s is not supported: %s", UNSUPPORTED[i].cellpose,
                              UNSUPPORTED[i].why);
            return CLI_USAGE;
        }
        int rc = job_option(j, c, optarg);
        if (rc != CLI_OK)
            return rc;
        if (c == O_NORM_PCT) { /* the second value */
            double hi;
            if (optind >= argc) {
                cli_error("--norm-percentile needs two values: LO HI (Cellpose's 1 99)");
                return CLI_USAGE;
            }
            if (!cli_parse_double("--norm-percentile", argv[optind], 0, 100, &hi))
                return CLI_USAGE;
            optind++;
            if (!(j->p.norm_lo < hi)) {
                cli_error("--norm-percentile %g %g: LO must be below HI", (double)j->p.norm_lo, hi);
                return CLI_USAGE;
            }
            j->p.norm_hi = (float)hi;
        }
        li = -1;
    }
    for (int i = optind; i < argc; i++)
        if (!list_push(&j->args, argv[i])) {
            cli_error("out of memory");
            return CLI_FAIL;
        }
    if (j->args.n == 0)
        return cli_usage(USE);
    if (j->out && j->save_dir) {
        cli_error("-o and --save-dir exclude each other");
        return CLI_USAGE;
    }
    if (j->so.json && !j->so.shm_only) {
        cli_error("--json goes with --shm-only");
        return CLI_USAGE;
    }
    if (j->so.shm_only && (j->save_png || j->save_tif || j->save_txt || j->save_rois ||
                           j->save_geojson || j->skip_existing)) {
        cli_error("--shm-only writes no file: it excludes --save-png, --save-tif, --save-txt, "
                  "--save-rois, --save-geojson and --skip-existing");
        return CLI_USAGE;
    }
    if (j->do3d && j->stitch > 0) {
        cli_error("--do-3d and --stitch-threshold %g exclude each other: 3-D flows, or 2-D "
                  "planes stitched (Cellpose ignores the threshold with --do_3D)",
                  j->stitch);
        return CLI_USAGE;
    }
    if (!j->do3d && (j->aniso_given || j->smooth_given)) {
        cli_error("%s goes with --do-3d (3-D segmentation)",
                  j->aniso_given ? "--anisotropy" : "--flow3d-smooth");
        return CLI_USAGE;
    }
    if ((j->stitch > 0 || j->do3d) && stack_conflicts(j) != CLI_OK)
        return CLI_USAGE;
    if (j->resume && (j->stitch > 0 || !labels_tiff(j))) {
        cli_error("--resume continues a blockwise run that streams its labels into a tiled "
                  "TIFF: it needs --format tif or -o X.tif%s",
                  j->stitch > 0 ? ", without --stitch-threshold" : "");
        return CLI_USAGE;
    }
    if (j->block_size && blockwise_conflict(j)) {
        cli_error("--block-size %u segments blockwise: it excludes %s", j->block_size,
                  blockwise_conflict(j));
        return CLI_USAGE;
    }
    if (j->out) { /* -o's extension says the format; --format, when given, must agree */
        const char *dot = strrchr(j->out, '.'), *slash = strrchr(j->out, '/');
        const char *ext = dot && (!slash || dot > slash) ? dot + 1 : "";
        const char *fmt = strcasecmp(ext, "tiff") == 0 ? "tif" : ext;
        if (strcasecmp(fmt, "bin") && strcasecmp(fmt, "tif") && strcasecmp(fmt, "png") &&
            strcasecmp(fmt, "npy")) {
            cli_error("-o %s: the extension says the format: use .bin, .tif, .png or .npy", j->out);
            return CLI_USAGE;
        }
        if (j->format_given && strcasecmp(fmt, j->format) != 0) {
            cli_error("-o %s and --format %s disagree: the file would not be %s; drop --format "
                      "or name the file .%s",
                      j->out, j->format, j->format, j->format);
            return CLI_USAGE;
        }
    }
    if (j->verbose && !getenv("GPUSEG_LOG"))
        setenv("GPUSEG_LOG", "info", 1); /* cli_ctx_create's level */
    return -1;
}

/* Whether the folder of path (its parent; "." without '/') is writable. */
static bool parent_writable(const char *path, char *dir, size_t len) {
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, len, ".");
    else if (slash == path)
        snprintf(dir, len, "/");
    else
        snprintf(dir, len, "%.*s", (int)(slash - path), path);
    return is_dir(dir) && access(dir, W_OK | X_OK) == 0;
}

/* Creates the folder path and its missing parents (mkdir -p), as Cellpose's --savedir. */
static bool make_dirs(const char *path) {
    char tmp[PATH_MAX_LEN];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s", path) >= sizeof tmp)
        return false;
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
                return false;
            *p = '/';
        }
    return mkdir(tmp, 0777) == 0 || (errno == EEXIST && is_dir(tmp));
}

/* One image's checks before any device work: a single page (or --page within its pages), the
 * channels asked of it, its output folder. CLI_OK, or the exit code (message printed). When the
 * header cannot be read, the run reports it (as every other read error). */
static int check_image(const seg_job *j, const char *image, const seg_outputs *o) {
    gpuseg_image_info info;
    const bool axes = j->z_axis != CLI_AXIS_NONE || j->channel_axis != CLI_AXIS_NONE;
    /* with --z-axis / --channel-axis the stored layout is not the image's: run_image checks it */
    if (!axes && gpuseg_image_info_read_ex(image, &cli_limits, &info) == GPUSEG_OK) {
        if (j->do3d && info.pages < 2) {
            cli_error("%s: --do-3d needs a Z stack, and this is a 2-D image (1 page); give "
                      "--z-axis N when Z is another axis of the file",
                      image);
            return CLI_FAIL;
        }
        if (info.pages > 1 && !j->page_given && !(j->stitch > 0) && !j->do3d) {
            cli_error("%s: %u pages (a Z stack, or channels stored as pages); gpuseg segments 2-D "
                      "images unless asked for 3-D: --do-3d segments the stack in 3-D, "
                      "--stitch-threshold T (e.g. 0.5) each plane with the masks stitched; "
                      "--page N segments one page",
                      image, info.pages);
            return CLI_FAIL;
        }
        if (!(j->stitch > 0) && !j->do3d && j->p.page >= info.pages) {
            cli_error("%s: --page %u, but the image has %u page%s (0..%u)", image, j->p.page,
                      info.pages, info.pages == 1 ? "" : "s", info.pages - 1);
            return CLI_FAIL;
        }
        /* chan 1..4 picks a channel (1 = the first), chan2 the second one; a one-channel image
         * has only channel 1 (the library would ignore the choice, as Cellpose does). */
        unsigned nc = info.channels;
        if ((unsigned)j->p.chan > nc || (unsigned)j->p.chan2 > nc || (nc == 1 && j->p.chan2)) {
            cli_error("%s: --chan %d --chan2 %d asked of an image with %u channel%s", image,
                      j->p.chan, j->p.chan2, nc, nc == 1 ? " (grey: --chan 0 --chan2 0)" : "s");
            return CLI_FAIL;
        }
        char why[160];
        if (goes_blockwise(j, info.width, info.height, nc, info.dtype, 0, why, sizeof why) &&
            blockwise_conflict(j)) {
            cli_error("%s: goes blockwise (%s), which excludes %s", image, why,
                      blockwise_conflict(j));
            return CLI_FAIL;
        }
    }
    char dir[PATH_MAX_LEN];
    const char *const all[] = {o->labels,   o->masks_png, o->masks_tif, o->flows,
                               o->outlines, o->txt,       o->rois,      o->geojson};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i][0] && !parent_writable(all[i], dir, sizeof dir)) {
            cli_error("%s: %s", all[i],
                      is_dir(dir) ? "the output folder is not writable"
                                  : "no such folder for the output (create it first)");
            return CLI_FAIL;
        }
    return CLI_OK;
}

/* Orders indices of the labels paths, for finding two images that would write one file. */
static const path_list *g_sort_paths;
static int cmp_index(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = strcmp(g_sort_paths->v[x], g_sort_paths->v[y]);
    return c ? c : (x > y) - (x < y);
}

/* The checks that look at files, all before any device work: the model, the inputs, every
 * image's pages and channels, every output folder, two images writing one file, --save-dir
 * (created when missing, as Cellpose does), --skip-existing. -1 to go on, else the exit code
 * (the message printed). */
static int find_inputs(seg_job *j) {
    if (j->save_dir && is_file(j->save_dir)) {
        cli_error("%s: --save-dir is a file, not a folder", j->save_dir);
        return CLI_FAIL;
    }
    if (!resolve_model(j->model_arg, j->model, sizeof j->model))
        return CLI_FAIL;
    int c2 = model_sidecar_chan2(j->model);
    if (j->p.chan2 != 0 && c2 == 0) {
        cli_error("%s: --chan2 %d, but this model was trained without a second channel (its "
                  "sidecar %s.json says channels [c, 0]): its masks would be wrong; drop --chan2",
                  j->model, j->p.chan2, j->model);
        return CLI_USAGE;
    }
    for (size_t i = 0; i < j->args.n; i++)
        if (!collect_inputs(j, j->args.v[i]))
            return CLI_FAIL;
    if (j->out && j->inputs.n > 1) {
        cli_error("-o names one output: use --save-dir with %zu images", j->inputs.n);
        return CLI_USAGE;
    }
    bool save_dir_missing = j->save_dir && !is_dir(j->save_dir);
    if (j->save_dir && !save_dir_missing && access(j->save_dir, W_OK | X_OK) != 0) {
        cli_error("%s: --save-dir is not writable", j->save_dir);
        return CLI_FAIL;
    }
    j->skip = calloc(j->inputs.n ? j->inputs.n : 1, 1);
    path_list outs = {0};
    size_t *idx = malloc((j->inputs.n ? j->inputs.n : 1) * sizeof *idx);
    seg_outputs *o = malloc(sizeof *o);
    int rc = -1;
    if (!j->skip || !idx || !o) {
        cli_error("out of memory");
        rc = CLI_FAIL;
    }
    for (size_t i = 0; rc < 0 && i < j->inputs.n; i++) {
        const char *image = j->inputs.v[i];
        if (!output_paths(j, image, o)) {
            cli_error("%s: output path too long", image);
            rc = CLI_FAIL;
        } else if (!list_push(&outs, o->labels)) {
            cli_error("out of memory");
            rc = CLI_FAIL;
        } else if (!save_dir_missing && !j->so.shm_only && check_image(j, image, o) != CLI_OK) {
            rc = CLI_FAIL;
        } else if (save_dir_missing || j->so.shm_only) {
            seg_outputs none; /* no folder to check: only the image */
            memset(&none, 0, sizeof none);
            if (check_image(j, image, &none) != CLI_OK)
                rc = CLI_FAIL;
        }
        if (rc < 0 && j->skip_existing && !save_dir_missing)
            j->skip[i] = outputs_complete(o);
        idx[i] = i;
    }
    if (rc < 0 && !j->so.shm_only && outs.n > 1) { /* two images, one output file */
        g_sort_paths = &outs;
        qsort(idx, outs.n, sizeof *idx, cmp_index);
        for (size_t k = 1; rc < 0 && k < outs.n; k++)
            if (strcmp(outs.v[idx[k - 1]], outs.v[idx[k]]) == 0) {
                cli_error("%s and %s would both be written to %s (and their other outputs): "
                          "rename one, or segment them into different --save-dir folders",
                          j->inputs.v[idx[k - 1]], j->inputs.v[idx[k]], outs.v[idx[k]]);
                rc = CLI_USAGE;
            }
    }
    if (rc < 0 && save_dir_missing && !make_dirs(j->save_dir)) {
        cli_error("%s: cannot create the --save-dir folder: %s", j->save_dir, strerror(errno));
        rc = CLI_FAIL;
    }
    list_free(&outs);
    free(idx);
    free(o);
    return rc;
}

/* The members that `segment` adds to each .bin sidecar (n_masks, diameter and source come from
 * the segment header: gpuseg save adds them), as compact JSON text; NULL when out of memory. */
static char *sidecar_extra(const seg_job *j, const char *image, const gpuseg_segment_result *r,
                           json_t *blockwise) {
    const gpuseg_segment_params *p = &j->p;
    json_t *params = json_pack(
        "{s:o,s:b,s:i,s:i,s:b,s:o,s:o,s:i,s:i,s:b,s:o,s:i,s:b,s:o,s:o,s:i,s:b}", "diameter",
        cli_json_num(p->diameter), "estimate_diameter", p->estimate_diameter, "chan", p->chan,
        "chan2", p->chan2, "invert", p->invert, "flow_threshold", cli_json_num(p->flow_threshold),
        "cellprob_threshold", cli_json_num(p->cellprob_threshold), "niter", (int)p->niter,
        "min_size", (int)p->min_size, "augment", p->augment, "tile_overlap",
        cli_json_num(p->tile_overlap), "batch_size", (int)p->batch_size, "normalize", p->normalize,
        "norm_lo", cli_json_num(p->norm_lo), "norm_hi", cli_json_num(p->norm_hi), "page",
        (int)p->page, "exclude_on_edges", j->exclude_edges);
    if (params && j->stitch > 0)
        json_object_set_new(params, "stitch_threshold", cli_json_num(j->stitch));
    if (params && j->do3d) {
        json_object_set_new(params, "do_3D", json_true());
        json_object_set_new(params, "anisotropy", cli_json_num(j->anisotropy));
        json_object_set_new(params, "flow3D_smooth", cli_json_num(j->flow3d_smooth));
    }
    if (params && j->z_axis != CLI_AXIS_NONE)
        json_object_set_new(params, "z_axis", json_integer(j->z_axis));
    if (params && j->channel_axis != CLI_AXIS_NONE)
        json_object_set_new(params, "channel_axis", json_integer(j->channel_axis));
    json_t *o = json_pack(
        "{s:s,s:o,s:o,s:o,s:s,s:b,s:o,s:o,s:o,s:i,s:o,s:i,s:i,s:o}", "producer", "gpuseg segment",
        "gpuseg_version", cli_json_str(gpuseg_version()), "image", cli_json_str(image), "model",
        cli_json_str(j->model), "diameter_mode", diameter_mode(p, r), "diameter_estimated",
        r->diameter_estimated, "diameter_first_pass", cli_json_num(r->diameter_first_pass),
        "diameter_estimate", cli_json_num(r->diameter_estimate), "diameter_style",
        cli_json_num(r->diameter_style), "passes", (int)r->passes, "rescale",
        cli_json_num(r->rescale), "niter", (int)r->niter, "n_tiles", (int)r->n_tiles, "parameters",
        params);
    if (o && blockwise)
        json_object_set(o, "blockwise", blockwise);
    /* 9 significant digits, as the sidecar always had: every float parameter reads back */
    char *text = cli_json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    return text;
}

/* The summary line of one image on stderr; compile_s: the OpenCL program compilation that this
 * image waited for (a first run on a device; cached afterwards), shown apart. */
static void report_image(const seg_job *j, const char *image, const gpuseg_segment_result *r,
                         double seconds, double compile_s) {
    char how[128], comp[128] = "";
    if (r->diameter_style > 0)
        snprintf(how, sizeof how, "size model: %.2f from the style, then measured on its masks",
                 r->diameter_style);
    else if (r->diameter_estimated && r->passes >= 2)
        snprintf(how, sizeof how, "estimated in %u passes; first at %.2f", r->passes,
                 r->diameter_first_pass);
    else if (r->diameter_estimated)
        snprintf(how, sizeof how, "estimated %.2f: within 10%%, first pass kept",
                 r->diameter_estimate);
    else if (j->p.estimate_diameter)
        snprintf(how, sizeof how, "model; no masks to estimate from");
    else
        snprintf(how, sizeof how, "%s", diameter_mode(&j->p, r));
    if (compile_s >= 0.05)
        snprintf(comp, sizeof comp, "; first run: %.2f s of it compiling the OpenCL programs",
                 compile_s);
    fprintf(stderr, "%s: %u masks, diameter %.2f (%s), %.2f s (network %.2f s, masks %.2f s%s)\n",
            image, r->n_masks, r->diameter, how, seconds, r->seconds_net, r->seconds_masks, comp);
}

/* What the run of a job holds. */
typedef struct seg_run {
    gpuseg_ctx *ctx;
    gpuseg_net *net;
    gpuseg_size_model *size_model; /* --diameter 0 with Cellpose's size model beside the model */
    segment_output *pipe;
    progress_line progress;
    size_t done, skipped, failed; /* images */
    uint64_t masks;               /* over the images done */
} seg_run;

/* Seconds spent compiling OpenCL programs so far (not loading them from the cache), and how
 * many were compiled. */
static double compile_seconds(gpuseg_ctx *ctx, unsigned *compiled) {
    gpuseg_program_stats ps;
    gpuseg_ctx_program_stats(ctx, &ps);
    *compiled = ps.compiled;
    return ps.build_seconds;
}

/* The key of a streamed blockwise run's resumable state (cli/segment_resume.h): everything
 * that decides its labels and polygon files, as compact JSON text (free()); NULL with the
 * error recorded (cli_set_error) when the image or model cannot be read. */
static char *resume_key(const seg_job *j, const seg_run *run, const char *image,
                        const gpuseg_blocks_params *bp, uint32_t W, uint32_t H) {
    struct stat sb;
    char real[PATH_MAX_LEN], sha[65], mtime[48];
    if (!realpath(image, real) || stat(real, &sb) != 0) {
        cli_set_error(GPUSEG_IO, "%s: %s", image, strerror(errno));
        return NULL;
    }
    if (seg_state_file_sha256(j->model, sha) != GPUSEG_OK)
        return NULL;
    snprintf(mtime, sizeof mtime, "%lld.%09ld", (long long)sb.st_mtim.tv_sec,
             (long)sb.st_mtim.tv_nsec);
    const gpuseg_segment_params *p = &j->p;
    const char *conv = getenv("GPUSEG_CONV");
    json_t *params = json_pack(
        "{s:o,s:b,s:b,s:i,s:i,s:b,s:o,s:o,s:i,s:i,s:o,s:o,s:i,s:b,s:o,s:o}", "diameter",
        cli_json_num(p->diameter), "estimate_diameter", p->estimate_diameter, "size_model",
        run->size_model != NULL, "chan", p->chan, "chan2", p->chan2, "invert", p->invert,
        "flow_threshold", cli_json_num(p->flow_threshold), "cellprob_threshold",
        cli_json_num(p->cellprob_threshold), "niter", (int)p->niter, "min_size", (int)p->min_size,
        "max_size_fraction", cli_json_num(p->max_size_fraction), "tile_overlap",
        cli_json_num(p->tile_overlap), "batch_size", (int)p->batch_size, "normalize", p->normalize,
        "norm_lo", cli_json_num(p->norm_lo), "norm_hi", cli_json_num(p->norm_hi));
    json_t *o = json_pack(
        "{s:i,s:o,s:I,s:s,s:i,s:i,s:i,s:s,s:o,s:o,s:o,s:i,s:i,s:b,s:b,s:b}", "state_format", 1,
        "image", cli_json_str(real), "image_bytes", (json_int_t)sb.st_size, "image_mtime", mtime,
        "page", (int)p->page, "width", (int)W, "height", (int)H, "model_sha256", sha, "device",
        cli_json_str(gpuseg_ctx_device(run->ctx)->name), "conv", cli_json_str(conv ? conv : ""),
        "parameters", params, "block_size", (int)bp->block_size, "halo", (int)bp->halo, "save_txt",
        j->save_txt, "save_rois", j->save_rois, "save_geojson", j->save_geojson);
    char *text =
        o ? cli_json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    if (!text)
        cli_set_error(GPUSEG_OUT_OF_MEMORY, "%s: out of memory", image);
    return text;
}

/* The blockwise run of one image (docs/segment.md, "Large images"): the image read region by
 * region, the diameter estimated on a central sample when asked, the labels streamed into a
 * tiled TIFF or assembled and handed to the output pipeline. Returns as run_image. */
static int run_image_blocks(const seg_job *j, seg_run *run, const char *image, const seg_outputs *o,
                            const char *why, double t0) {
    gpuseg_image_region_reader *rd = NULL;
    cli_clear_error();
    gpuseg_status st = gpuseg_image_region_open(image, &cli_limits, &rd);
    if (st != GPUSEG_OK)
        return cli_fail(st); /* names the file */
    const gpuseg_image_region_info *in = gpuseg_image_region_info_of(rd);
    const char *tiff = labels_tiff(j) ? o->labels : NULL;
    gpuseg_segment_params p = j->p;
    gpuseg_blocks_params bp;
    gpuseg_blocks_params_default(&bp);
    if (j->block_size)
        bp.block_size = j->block_size;
    else
        bp.block_size = SEG_BLOCKS_AUTO_BLOCK;
    bp.halo = j->halo;
    /* TIFF labels: the run keeps a resumable state beside them (--resume continues it) */
    seg_state *state = NULL;
    const seg_state_diam *saved = NULL;
    if (tiff) {
        uint32_t replaced = 0;
        char *key = resume_key(j, run, image, &bp, in->width, in->height);
        st = key ? seg_state_open(tiff, key, j->resume, &state, &replaced) : GPUSEG_IO;
        free(key);
        if (st != GPUSEG_OK) {
            gpuseg_image_region_close(rd);
            return cli_fail(st);
        }
        saved = seg_state_diameter(state);
        const uint32_t nb = ((in->width + bp.block_size - 1) / bp.block_size) *
                            ((in->height + bp.block_size - 1) / bp.block_size);
        if (replaced && !j->quiet)
            fprintf(stderr,
                    "gpuseg: %s: replaced the resumable state of an earlier, unfinished run "
                    "(%u of %u blocks done; --resume would have continued it)\n",
                    tiff, replaced - 1, nb);
        if (j->resume && !j->quiet && seg_state_blocks(state))
            fprintf(stderr, "gpuseg: %s: resuming after block %u of %u (%s)\n", tiff,
                    seg_state_blocks(state), nb, seg_state_dir(state));
    }
    gpuseg_segment_result sample; /* the diameter's sample run, when estimated */
    memset(&sample, 0, sizeof sample);
    uint32_t sw = 0, sh = 0;
    if (p.estimate_diameter && p.diameter == 0 && saved) { /* the saved run's */
        sample.diameter = saved->diameter;
        sample.diameter_style = saved->diameter_style;
        sample.diameter_estimated = saved->estimated;
        sw = saved->sample_w;
        sh = saved->sample_h;
        p.diameter = saved->diameter;
        p.estimate_diameter = 0;
    } else if (p.estimate_diameter && p.diameter == 0) {
        p.size_model = run->size_model;
        st = seg_blocks_sample_diameter(run->ctx, run->net, rd, &p, &sample, &sw, &sh);
        p.diameter = sample.diameter;
        p.estimate_diameter = 0;
        if (st == GPUSEG_OK && state) {
            const seg_state_diam d = {sample.diameter, sample.diameter_style, sw, sh,
                                      (uint32_t)sample.diameter_estimated};
            st = seg_state_put_diameter(state, &d);
        }
    }
    p.size_model = NULL;
    gpuseg_image *lab = NULL;
    gpuseg_blocks_result br;
    memset(&br, 0, sizeof br);
    run->progress.pixels = (uint64_t)in->width * in->height;
    run->progress.blocks_done = run->progress.blocks_total = 0;
    run->progress.resumable = state != NULL;
    const char *parts[SEG_PARTS] = {o->txt, o->rois, o->geojson};
    if (st == GPUSEG_OK && !segment_output_signal(run->pipe))
        st = tiff ? seg_blocks_stream(run->ctx, run->net, rd, &p, &bp, tiff, parts, cli_write_flags,
                                      state, &br)
                  : seg_blocks_run(run->ctx, run->net, rd, &p, &bp, NULL, cli_write_flags, &lab,
                                   &br);
    run->progress.pixels = 0;
    run->progress.resumable = false;
    progress_clear(&run->progress);
    uint32_t nx = (in->width + bp.block_size - 1) / bp.block_size;
    uint32_t ny = (in->height + bp.block_size - 1) / bp.block_size;
    uint32_t W = in->width, H = in->height;
    gpuseg_image_region_close(rd);
    const bool cancelled = st == GPUSEG_CANCELLED || segment_output_signal(run->pipe);
    if (!cancelled && st != GPUSEG_OK)
        cli_error("%s: %s", image, cli_last_error());
    cli_clear_error();
    if (state) { /* done: removed; stopped: kept when it holds work (blocks or percentiles) */
        const bool keep = st != GPUSEG_OK && (seg_state_blocks(state) || seg_state_norm(state));
        if (keep)
            fprintf(stderr,
                    "gpuseg: %s: stopped after %u of %u blocks; the same command with --resume "
                    "continues from there (state in %s)\n",
                    image, seg_state_blocks(state), nx * ny, seg_state_dir(state));
        seg_state_close(state, !keep);
    }
    if (cancelled) {
        gpuseg_image_free(lab); /* a streamed TIFF was aborted: nothing of it is left */
        return -1;
    }
    if (st != GPUSEG_OK)
        return CLI_FAIL;
    /* The result as a whole-image run would describe it, for the sidecar and the line. */
    gpuseg_segment_result r;
    memset(&r, 0, sizeof r);
    r.labels = lab;
    r.n_masks = br.n_masks;
    r.diameter = br.diameter;
    r.rescale = br.rescale;
    r.niter = br.niter;
    r.n_tiles = br.n_tiles;
    r.passes = sample.passes;
    r.diameter_estimated = sample.diameter_estimated;
    r.diameter_first_pass = sample.diameter_first_pass;
    r.diameter_estimate = sample.diameter_estimate;
    r.diameter_style = sample.diameter_style;
    int rc = CLI_OK;
    char *extra = NULL;
    json_t *bj = json_pack(
        "{s:i,s:i,s:i,s:i,s:i,s:i,s:I,s:i,s:o,s:f,s:f}", "block_size", (int)bp.block_size, "halo",
        (int)br.halo, "blocks_x", (int)nx, "blocks_y", (int)ny, "n_blocks", (int)br.n_blocks,
        "n_too_big", (int)br.n_too_big, "n_tiles_run", (json_int_t)br.n_tiles_run, "n_tiles_whole",
        (int)br.n_tiles, "why", cli_json_str(why), "seconds_percentiles", br.seconds_percentiles,
        "seconds_blocks", br.seconds_blocks);
    if (bj && sw)
        json_object_set_new(bj, "diameter_sample", json_pack("[i,i]", (int)sw, (int)sh));
    if (lab && j->exclude_edges && (st = exclude_edge_masks(&r)) != GPUSEG_OK) {
        rc = cli_fail(st);
    } else if (!bj || !(extra = sidecar_extra(j, image, &r, bj))) {
        cli_error("%s: out of memory", image);
        rc = CLI_FAIL;
    } else if (lab && (st = write_outputs(run->pipe, run->ctx, image, NULL, j->p.page, o, &r,
                                          extra)) != GPUSEG_OK) {
        rc = cli_fail(st);
    } else {
        run->masks += r.n_masks;
        if (!j->quiet) {
            char how[160];
            if (sw && r.diameter_style > 0)
                snprintf(how, sizeof how, "size model on a %ux%u sample", sw, sh);
            else if (sw && r.diameter_estimated)
                snprintf(how, sizeof how, "estimated on a %ux%u sample", sw, sh);
            else if (sw)
                snprintf(how, sizeof how, "model; no masks in the %ux%u sample", sw, sh);
            else
                snprintf(how, sizeof how, "%s", diameter_mode(&j->p, &r));
            double sec = now_s() - t0;
            fprintf(stderr,
                    "%s: %u masks, diameter %.2f (%s), %.2f s (blockwise: %u x %u blocks of %u, "
                    "halo %u, %u masks over the halo, tiles %llu run / %u whole, %.2f MP/s; %s)\n",
                    image, r.n_masks, r.diameter, how, sec, nx, ny, bp.block_size, br.halo,
                    br.n_too_big, (unsigned long long)br.n_tiles_run, br.n_tiles,
                    1e-6 * (double)W * H / (sec > 0 ? sec : 1), why);
        }
    }
    json_decref(bj);
    free(extra);
    gpuseg_image_free(lab);
    return rc;
}

/* check_image's checks of the pages and channels for an image read with --z-axis /
 * --channel-axis (its layout known only once read). CLI_OK or CLI_FAIL (message printed). */
static int axes_checks(const seg_job *j, const char *image, const gpuseg_image *img) {
    if (j->do3d && img->pages < 2) {
        cli_error("%s: --do-3d needs a Z stack, and with these axes this is a 2-D image (%u x %u, "
                  "%u channel%s)",
                  image, img->height, img->width, img->channels, img->channels == 1 ? "" : "s");
        return CLI_FAIL;
    }
    if (img->pages > 1 && !j->page_given && !(j->stitch > 0) && !j->do3d) {
        cli_error("%s: %u planes along --z-axis; segment them with --do-3d or --stitch-threshold "
                  "T, or one with --page N",
                  image, img->pages);
        return CLI_FAIL;
    }
    if (!(j->stitch > 0) && !j->do3d && j->p.page >= img->pages) {
        cli_error("%s: --page %u, but the image has %u page%s", image, j->p.page, img->pages,
                  img->pages == 1 ? "" : "s");
        return CLI_FAIL;
    }
    unsigned nc = img->channels;
    if ((unsigned)j->p.chan > nc || (unsigned)j->p.chan2 > nc || (nc == 1 && j->p.chan2)) {
        cli_error("%s: --chan %d --chan2 %d asked of an image with %u channel%s", image, j->p.chan,
                  j->p.chan2, nc, nc == 1 ? " (grey: --chan 0 --chan2 0)" : "s");
        return CLI_FAIL;
    }
    return CLI_OK;
}

/* Segments image i and hands its outputs over. CLI_OK, CLI_FAIL (reported; the batch goes on),
 * or -1 when a signal cancelled it (nothing of this image is written). */
static int run_image(const seg_job *j, seg_run *run, size_t i) {
    const char *image = j->inputs.v[i];
    unsigned n0, n1;
    double t0 = now_s(), b0 = compile_seconds(run->ctx, &n0);
    seg_outputs *o = malloc(sizeof *o);
    if (!o) {
        cli_error("%s: out of memory", image);
        return CLI_FAIL;
    }
    if (!output_paths(j, image, o)) {
        free(o);
        cli_error("%s: output path too long", image);
        return CLI_FAIL;
    }
    run->progress.i = i;
    run->progress.name = strrchr(image, '/') ? strrchr(image, '/') + 1 : image;
    run->progress.stage = NULL;
    progress_draw(&run->progress, &(gpuseg_progress){"reading", 0, 0, 0.0});
    gpuseg_image_info info;
    char why[160];
    const bool axes = j->z_axis != CLI_AXIS_NONE || j->channel_axis != CLI_AXIS_NONE;
    if (!axes && gpuseg_image_info_read_ex(image, &cli_limits, &info) == GPUSEG_OK &&
        goes_blockwise(j, info.width, info.height, info.channels, info.dtype,
                       gpuseg_ctx_device(run->ctx)->global_mem_bytes, why, sizeof why)) {
        int rc = blockwise_conflict(j) ? CLI_FAIL : run_image_blocks(j, run, image, o, why, t0);
        if (rc == CLI_FAIL && blockwise_conflict(j)) /* over the device's memory only */
            cli_error("%s: goes blockwise (%s), which excludes %s", image, why,
                      blockwise_conflict(j));
        free(o);
        return rc;
    }
    gpuseg_image *img = NULL;
    gpuseg_status st;
    if (axes) { /* the file's axes named: its checks (check_image's) here */
        st = cli_read_with_axes(image, j->z_axis, j->channel_axis, &img);
        int bad = st != GPUSEG_OK ? CLI_FAIL : axes_checks(j, image, img);
        if (bad != CLI_OK) {
            gpuseg_image_free(img);
            free(o);
            progress_clear(&run->progress);
            return bad;
        }
    } else if ((st = gpuseg_image_read_ex(image, &cli_limits, &img)) != GPUSEG_OK) {
        free(o);
        progress_clear(&run->progress);
        return cli_fail(st);
    }
    gpuseg_segment_result r;
    memset(&r, 0, sizeof r);
    gpuseg_segment_params p = j->p;
    p.size_model = run->size_model;
    if (j->do3d)
        st =
            gpuseg_segment_volume(run->ctx, run->net, img, &p, j->anisotropy, j->flow3d_smooth, &r);
    else if (j->stitch > 0)
        st = gpuseg_segment_stack(run->ctx, run->net, img, &p, j->stitch, &r);
    else
        st = gpuseg_segment(run->ctx, run->net, img, &p, &r);
    progress_clear(&run->progress);
    int rc = CLI_OK;
    char *extra = NULL;
    if (st == GPUSEG_CANCELLED || segment_output_signal(run->pipe)) {
        rc = -1; /* results of a cancelled image are dropped, not written */
    } else if (st != GPUSEG_OK) {
        cli_error("%s: %s", image, gpuseg_last_error());
        rc = CLI_FAIL;
    } else if (j->exclude_edges && (st = exclude_edge_masks(&r)) != GPUSEG_OK) {
        rc = cli_fail(st);
    } else if (!(extra = sidecar_extra(j, image, &r, NULL))) {
        cli_error("%s: out of memory", image);
        rc = CLI_FAIL;
    } else if ((st = write_outputs(run->pipe, run->ctx, image, img, j->p.page, o, &r, extra)) !=
               GPUSEG_OK) {
        rc = cli_fail(st); /* the message names the image or the file */
    } else {
        run->masks += r.n_masks;
        double b1 = compile_seconds(run->ctx, &n1);
        if (!j->quiet)
            report_image(j, image, &r, now_s() - t0, n1 > n0 ? b1 - b0 : 0);
    }
    free(extra);
    free(o);
    gpuseg_segment_result_free(&r);
    gpuseg_image_free(img);
    return rc;
}

/* --diameter 0 and a size model beside the model file (Cellpose's size_<model>.npy): loaded,
 * and used for every image; a size model that is there but unreadable is an error, not a silent
 * fall-back to gpuseg's own estimate. */
static gpuseg_status open_size_model(const seg_job *j, seg_run *run) {
    if (!j->p.estimate_diameter || j->p.diameter != 0)
        return GPUSEG_OK;
    char path[PATH_MAX_LEN];
    gpuseg_status st = gpuseg_size_model_find(j->model, path, sizeof path);
    if (st == GPUSEG_NOT_FOUND)
        return GPUSEG_OK;
    if (st == GPUSEG_OK)
        st = gpuseg_size_model_load(path, &run->size_model);
    if (st == GPUSEG_OK && !j->quiet && cli_notices)
        fprintf(stderr, "segment: diameters from the size model %s\n", path);
    return st;
}

/* Opens the device, the pipeline (which turns SIGINT / SIGTERM into a cancel of ctx), the
 * OpenCL programs (compiled on a first run on this device, else loaded from the program cache;
 * said apart, so that the first image's time is its own) and the model. */
static gpuseg_status run_open(const seg_job *j, seg_run *run, segment_output_opts *so) {
    gpuseg_status st = cli_ctx_create(j->device, &run->ctx);
    if (st != GPUSEG_OK)
        return st;
    gpuseg_ctx_set_progress(run->ctx, progress_draw, &run->progress);
    so->cancel_on_signal = 1;
    so->cancel_ctx = run->ctx;
    if ((st = segment_output_create(so, &run->pipe)) != GPUSEG_OK)
        return st;
    run->progress.name = "OpenCL programs";
    progress_draw(&run->progress, &(gpuseg_progress){"compiling (first run) or loading", 0, 0, 0});
    double t0 = now_s();
    st = gpuseg_ctx_build_all(run->ctx, NULL);
    progress_clear(&run->progress);
    if (st != GPUSEG_OK)
        return st;
    gpuseg_program_stats ps;
    gpuseg_ctx_program_stats(run->ctx, &ps);
    if (ps.compiled && !j->quiet)
        fprintf(stderr,
                "segment: compiled %u OpenCL programs for this device in %.1f s (a first run; "
                "cached for the next runs)\n",
                ps.compiled, now_s() - t0);
    if ((st = gpuseg_net_load(run->ctx, j->model, &run->net)) != GPUSEG_OK)
        return st; /* ctx limits: --max-model-bytes */
    return open_size_model(j, run);
}

int gpuseg_cmd_segment(int argc, char **argv) {
    seg_job j;
    memset(&j, 0, sizeof j);
    gpuseg_segment_params_default(&j.p);
    j.p.estimate_diameter = 1; /* the command's default: --diameter 0 = estimate */
    j.format = "bin";
    j.anisotropy = 1.0;
    j.z_axis = j.channel_axis = CLI_AXIS_NONE;
    j.output_name = "_cp_masks";
    j.mask_filter = "_masks";
    j.so = (segment_output_opts)SEGMENT_OUTPUT_OPTS_INIT;
    /* Keeps the segments of one job apart from others' (gpuseg shm list/clean --prefix). */
    j.so.name_prefix = getenv("GPUSEG_SHM_PREFIX");
    j.so.test_stall_ms = cli_test_stall_ms();
    double t0 = now_s();
    int rc = parse_options(argc, argv, &j);
    if (rc < 0)
        rc = find_inputs(&j);
    if (rc >= 0) {
        list_free(&j.args);
        list_free(&j.inputs);
        free(j.skip);
        return rc;
    }
    j.p.want_flows = j.save_flows;
    j.p.want_style = j.save_flows;
    seg_run run;
    memset(&run, 0, sizeof run);
    run.progress.on = !j.quiet && isatty(STDERR_FILENO);
    run.progress.n = j.inputs.n;
    cli_notices = run.progress.on; /* the device used, and why a first run is slow */
    size_t todo = 0;
    for (size_t i = 0; i < j.inputs.n; i++)
        todo += !j.skip[i];
    gpuseg_status st = GPUSEG_OK;
    if (todo) /* nothing to do: no device work at all */
        st = run_open(&j, &run, &j.so);
    rc = st == GPUSEG_OK ? CLI_OK : cli_fail(st); /* the loader's message names the model */
    size_t i = 0;
    for (; st == GPUSEG_OK && i < j.inputs.n && !segment_output_signal(run.pipe); i++) {
        if (j.skip[i]) {
            run.skipped++;
            continue;
        }
        int r = run_image(&j, &run, i);
        if (r < 0)
            break;
        if (r != CLI_OK) {
            rc = r;
            run.failed++;
        } else {
            run.done++;
        }
    }
    unsigned failed_saves = run.pipe ? segment_output_finish(run.pipe) : 0;
    if (failed_saves)
        rc = CLI_FAIL; /* each failed save was reported by name */
    int sig = segment_output_signal(run.pipe);
    if (sig) {
        cli_error("segment: cancelled by %s after %zu of %zu images; nothing of the unfinished "
                  "one was written",
                  sig == SIGINT ? "SIGINT" : "SIGTERM", i, j.inputs.n);
        rc = 128 + sig;
    } else if (!j.quiet && st == GPUSEG_OK && (j.inputs.n > 1 || run.skipped)) {
        fprintf(stderr,
                "segment: %zu images: %zu done, %zu skipped (outputs complete), %zu failed%s; "
                "%llu masks; %.1f s\n",
                j.inputs.n, run.done, run.skipped, run.failed,
                failed_saves ? " (and saves failed)" : "", (unsigned long long)run.masks,
                now_s() - t0);
    }
    segment_output_free(run.pipe);
    gpuseg_size_model_free(run.size_model);
    gpuseg_net_free(run.net);
    gpuseg_ctx_free(run.ctx);
    list_free(&j.args);
    list_free(&j.inputs);
    free(j.skip);
    return rc;
}
