/* flow/masks.c: flows -> masks on the device, as Cellpose 3.1.1.3 resize_and_compute_masks does
 * on the CPU (docs/masks.md): threshold, Euler integration, end-point histogram, seeds, growth,
 * labels, big-mask removal, flow-error QC, hole filling, size filter, renumbering. Pixel data
 * stays on the device from the flows to the label array; the host only handles per-seed and
 * per-mask tables (counts, first pixels, boxes, flow errors) between stages. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/kernel_defs.h"
#include "flow/masks_internal.h"

/* Scratch bytes for one launch of hole filling (one byte per box cell); larger jobs are split. */
#define FILL_SCRATCH_CAP ((size_t)64 << 20)

void gpuseg_masks_params_default(gpuseg_masks_params *p) {
    if (!p)
        return;
    p->cellprob_threshold = 0.0f;
    p->flow_threshold = 0.4f;
    p->niter = 200;
    p->min_size = 15;
    p->max_size_fraction = 0.4;
}

/* Stage timing for GPUSEG_LOG=debug: waits for the queue (only when debug logging is on, so
 * that normal runs keep the queue asynchronous) and logs the time since the previous mark. */
static void stage(gpuseg_ctx *ctx, double *t, const char *what) {
    if (!ctx->log || ctx->log_level < GPUSEG_LOG_DEBUG)
        return;
    clFinish(ctx->queue);
    double now = gpuseg__now_s();
    if (*t > 0)
        gpuseg__log(ctx, GPUSEG_LOG_DEBUG, "flows to masks: %s %.1f ms", what, (now - *t) * 1e3);
    *t = now;
}

/* Releases the n buffers of m (NULL entries are skipped). A stage keeps the device buffers it
 * makes in one such array and releases them on its one way out; the runtime keeps a buffer alive
 * until the kernels enqueued on it are done. */
static void release_all(cl_mem *m, size_t n) {
    for (size_t i = 0; i < n; i++)
        gpuseg__release(&m[i]);
}

static gpuseg_status fill_buf(gpuseg_ctx *ctx, cl_mem buf, const void *pattern, size_t size,
                              size_t n, const char *what) {
    cl_int err = clEnqueueFillBuffer(ctx->queue, buf, pattern, size, 0, n * size, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "flows to masks: clEnqueueFillBuffer(%s)", what);
    return GPUSEG_OK;
}

static gpuseg_status fill_u32(gpuseg_ctx *ctx, cl_mem buf, size_t n, uint32_t value,
                              const char *what) {
    return fill_buf(ctx, buf, &value, sizeof value, n, what);
}

static gpuseg_status buffer(gpuseg_ctx *ctx, size_t n, size_t elem, const char *what, cl_mem *out) {
    size_t bytes = 0;
    if (!gpuseg__mul_size(n ? n : 1, elem, &bytes))
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "flows to masks: %s: size overflow", what);
    return gpuseg__buffer(ctx, CL_MEM_READ_WRITE, bytes, what, out);
}

/* A buffer of n elements holding `elems` copied from the host. */
static gpuseg_status upload(gpuseg_ctx *ctx, size_t n, size_t elem, const void *elems,
                            const char *what, cl_mem *out) {
    gpuseg_status st = buffer(ctx, n, elem, what, out);
    if (st == GPUSEG_OK && n > 0 &&
        (st = gpuseg__write_buf(ctx, *out, n * elem, elems, what)) != GPUSEG_OK)
        gpuseg__release(out);
    return st;
}

/* 1-D launch over n items, arguments already set. */
static gpuseg_status run1(gpuseg_ctx *ctx, cl_kernel k, size_t n) {
    if (n == 0)
        return GPUSEG_OK;
    size_t g = n;
    return gpuseg__run(ctx, k, 1, &g, NULL);
}

static gpuseg_status run2(gpuseg_ctx *ctx, cl_kernel k, uint32_t H, uint32_t W) {
    size_t g[2] = {W, H};
    return gpuseg__run(ctx, k, 2, g, NULL);
}

/* Launch of n work-groups of the per-mask kernels (kernels/masks_fill.cl). */
static gpuseg_status run_groups(gpuseg_ctx *ctx, cl_kernel k, size_t n) {
    size_t g = n * GPUSEG__MASKS_WG, l = GPUSEG__MASKS_WG;
    return gpuseg__run(ctx, k, 1, &g, &l);
}

static gpuseg_status kernel(gpuseg_ctx *ctx, const char *prog, const char *name, cl_kernel *k) {
    return gpuseg__kernel(ctx, prog, name, k);
}

/* Uploads map[0..n_map-1] and rewrites labels through it. */
static gpuseg_status relabel(gpuseg_ctx *ctx, cl_mem labels, size_t npix, const uint32_t *map,
                             uint32_t n_map) {
    cl_mem dmap = NULL;
    cl_kernel k;
    cl_uint n = (cl_uint)npix, nm = n_map;
    gpuseg_status st;
    if ((st = upload(ctx, n_map, sizeof(uint32_t), map, "label map", &dmap)) == GPUSEG_OK &&
        (st = kernel(ctx, "dynamics", "masks_relabel", &k)) == GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, k, 4, sizeof(cl_mem), &labels, sizeof(cl_uint), &n,
                               sizeof(cl_mem), &dmap, sizeof(cl_uint), &nm)) == GPUSEG_OK)
        st = run1(ctx, k, npix);
    gpuseg__release(&dmap);
    return st;
}

/* Per-label count, first pixel and (when box != NULL) bounding box for labels 1..n_labels.
 * Host arrays are indexed by value (entry 0 unused for first/box; count[0] = background count,
 * computed as the remainder). */
static gpuseg_status label_stats(gpuseg_ctx *ctx, cl_mem labels, uint32_t H, uint32_t W,
                                 uint32_t n_labels, uint32_t *count, uint32_t *first,
                                 uint32_t *box) {
    cl_mem d[3] = {NULL, NULL, NULL}; /* counts, first pixels, boxes */
    /* (min y, max y, min x, max x) start at (~0, 0, ~0, 0) */
    const cl_uint box_init[4] = {UINT32_MAX, 0, UINT32_MAX, 0};
    const int rows = gpuseg__flow_cpu_kernels(ctx); /* masks_stats_rows: a work-item per row */
    const size_t gh = H;
    cl_uint h = H, w = W, nl = n_labels;
    cl_kernel k;
    gpuseg_status st;
    if ((st = buffer(ctx, n_labels, sizeof(uint32_t), "label counts", &d[0])) == GPUSEG_OK &&
        (st = buffer(ctx, n_labels, sizeof(uint32_t), "label first pixels", &d[1])) == GPUSEG_OK &&
        (st = fill_u32(ctx, d[0], n_labels, 0, "label counts")) == GPUSEG_OK &&
        (st = fill_u32(ctx, d[1], n_labels, UINT32_MAX, "label first pixels")) == GPUSEG_OK &&
        (!box || ((st = buffer(ctx, (size_t)n_labels * 4, sizeof(uint32_t), "label boxes",
                               &d[2])) == GPUSEG_OK &&
                  (st = fill_buf(ctx, d[2], box_init, sizeof box_init, n_labels, "label boxes")) ==
                      GPUSEG_OK)) &&
        (st = kernel(ctx, "dynamics", rows ? "masks_stats_rows" : "masks_stats", &k)) ==
            GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, k, 7, sizeof(cl_mem), &labels, sizeof(cl_uint), &h,
                               sizeof(cl_uint), &w, sizeof(cl_uint), &nl, sizeof(cl_mem), &d[0],
                               sizeof(cl_mem), &d[1], sizeof(cl_mem), box ? &d[2] : NULL)) ==
            GPUSEG_OK &&
        (st = rows ? gpuseg__run(ctx, k, 1, &gh, NULL) : run2(ctx, k, H, W)) == GPUSEG_OK &&
        (st = gpuseg__read_buf(ctx, d[0], (size_t)n_labels * 4, count + 1, "label counts")) ==
            GPUSEG_OK &&
        (st = gpuseg__read_buf(ctx, d[1], (size_t)n_labels * 4, first + 1, "label first pixels")) ==
            GPUSEG_OK &&
        (!box || (st = gpuseg__read_buf(ctx, d[2], (size_t)n_labels * 16, box + 4,
                                        "label boxes")) == GPUSEG_OK)) {
        uint64_t fg = 0;
        for (uint32_t l = 1; l <= n_labels; l++)
            fg += count[l];
        count[0] = (uint32_t)((uint64_t)H * W - fg);
        first[0] = 0;
    }
    release_all(d, 3);
    return st;
}

/* Layout of the scaled flows r->scaled of stage 1: packed (dY, dX) pairs with row stride W + 1 and
 * an extra row and column on CPU devices (masks_prep_packed, for masks_euler8), two planes
 * elsewhere. dY/5 of pixel (y, x) is at oy + y * rs + x * es, dX/5 at ox + y * rs + x * es. */
typedef struct scaled_layout {
    int packed;
    size_t floats;
    cl_uint oy, ox, rs, es;
} scaled_layout;

static scaled_layout scaled_flows(gpuseg_ctx *ctx, uint32_t H, uint32_t W) {
    scaled_layout l;
    l.packed = gpuseg__flow_cpu_kernels(ctx);
    l.floats = l.packed ? 2 * ((size_t)H + 1) * ((size_t)W + 1) : 2 * (size_t)H * W;
    l.oy = 0;
    l.ox = l.packed ? 1 : H * W;
    l.rs = l.packed ? 2 * (W + 1) : W;
    l.es = l.packed ? 2 : 1;
    return l;
}

/* Host tables indexed by label value 0..n. */
typedef struct tables {
    uint32_t *count, *first, *box, *map;
    uint8_t *remove;
    double *err;
} tables;

static void tables_free(tables *t) {
    free(t->count);
    free(t->first);
    free(t->box);
    free(t->map);
    free(t->remove);
    free(t->err);
    memset(t, 0, sizeof *t);
}

static gpuseg_status tables_alloc(gpuseg_ctx *ctx, tables *t, uint32_t n) {
    tables_free(t);
    size_t m = (size_t)n + 1;
    t->count = calloc(m, sizeof *t->count);
    t->first = calloc(m, sizeof *t->first);
    t->box = calloc(4 * m, sizeof *t->box);
    t->map = calloc(m, sizeof *t->map);
    t->remove = calloc(m, 1);
    t->err = calloc(m, sizeof *t->err);
    if (!t->count || !t->first || !t->box || !t->map || !t->remove || !t->err)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: per-mask tables (%u)", n);
    return GPUSEG_OK;
}

/* One run of the pipeline: what the stages share. The stages run in order (STAGES below);
 * each makes and releases its own device buffers, and hands on only the scaled flows (stage 1
 * to the flow-error QC) and the label image, which this struct owns (run_free). */
typedef struct masks_run {
    gpuseg_ctx *ctx;
    uint32_t H, W;
    size_t n;
    gpuseg_masks_params p;
    gpuseg__masks_debug *dbg;
    const gpuseg__masks_window *win; /* NULL: the whole image */
    cl_mem flows;                    /* the input; released by the first stage when take_flows */
    int take_flows;
    cl_mem scaled;      /* dP * fg / 5 in scaled_flows' layout, until the flow-error QC */
    cl_mem labels;      /* uint32 [n]: labels 1..n_labels (0: none), from the seed stage on */
    cl_mem end, hist;   /* end points and their histogram, from the Euler stage to seeding */
    cl_mem out;         /* the result, by the last stage */
    uint32_t n_labels;  /* the largest label value in labels */
    uint32_t maxlab_qc; /* the largest label value left by the flow-error QC */
    gpuseg_dtype dt;    /* of the result: uint16 unless a label >= 65536 is left after QC */
    tables t;           /* per-label host tables of the current stage */
    uint8_t *present;   /* values present before hole filling (Cellpose's find_objects) */
    double tm;          /* stage timing (stage()) */
} masks_run;

static void run_free(masks_run *r) {
    if (r->take_flows)
        gpuseg__release(&r->flows); /* NULL once stage 1 has released it */
    cl_mem d[5] = {r->scaled, r->end, r->hist, r->labels, r->out};
    release_all(d, 5);
    r->scaled = r->end = r->hist = r->labels = r->out = NULL;
    tables_free(&r->t);
    free(r->present);
    r->present = NULL;
}

/* Euler integration and end-point histogram. CPU devices: F holds the packed flows
 * (masks_prep_packed), masks_rows lists each row's followed pixels, and masks_euler8 follows them
 * 8 per work-item as float8 lanes; other devices: F holds planes, masks_euler follows one pixel
 * per work-item. Same end points (docs/masks.md). pos: debug positions or NULL. */
static gpuseg_status euler(gpuseg_ctx *ctx, cl_mem F, cl_mem end, cl_mem hist, uint32_t H,
                           uint32_t W, cl_uint niter, cl_mem pos, const gpuseg__masks_window *win) {
    cl_uint ch = H, cw = W;
    cl_uint oy = win ? win->oy : 0, ox = win ? win->ox : 0, img_h = win ? win->gh : H,
            img_w = win ? win->gw : W;
    gpuseg_status st;
    cl_kernel k;
    if (!gpuseg__flow_cpu_kernels(ctx)) {
        if ((st = kernel(ctx, "dynamics", "masks_euler", &k)) != GPUSEG_OK ||
            (st = gpuseg__set_args(ctx, k, 11, sizeof(cl_mem), &F, sizeof(cl_uint), &ch,
                                   sizeof(cl_uint), &cw, sizeof(cl_uint), &niter, sizeof(cl_mem),
                                   &end, sizeof(cl_mem), &hist, sizeof(cl_mem), pos ? &pos : NULL,
                                   sizeof oy, &oy, sizeof ox, &ox, sizeof img_h, &img_h,
                                   sizeof img_w, &img_w)) != GPUSEG_OK)
            return st;
        return run2(ctx, k, H, W);
    }
    cl_mem rows[2] = {NULL, NULL}; /* row pixel lists, row pixel counts */
    const size_t gh = H;
    if ((st = buffer(ctx, (size_t)H * W, sizeof(cl_uint), "row pixel lists", &rows[0])) ==
            GPUSEG_OK &&
        (st = buffer(ctx, H, sizeof(cl_uint), "row pixel counts", &rows[1])) == GPUSEG_OK &&
        (st = kernel(ctx, "dynamics", "masks_rows", &k)) == GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, k, 5, sizeof(cl_mem), &end, sizeof(cl_uint), &ch,
                               sizeof(cl_uint), &cw, sizeof(cl_mem), &rows[0], sizeof(cl_mem),
                               &rows[1])) == GPUSEG_OK &&
        (st = gpuseg__run(ctx, k, 1, &gh, NULL)) == GPUSEG_OK &&
        (st = kernel(ctx, "dynamics", "masks_euler8", &k)) == GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, k, 13, sizeof(cl_mem), &F, sizeof(cl_uint), &ch,
                               sizeof(cl_uint), &cw, sizeof(cl_uint), &niter, sizeof(cl_mem),
                               &rows[0], sizeof(cl_mem), &rows[1], sizeof(cl_mem), &end,
                               sizeof(cl_mem), &hist, sizeof(cl_mem), pos ? &pos : NULL, sizeof oy,
                               &oy, sizeof ox, &ox, sizeof img_h, &img_h, sizeof img_w, &img_w)) ==
            GPUSEG_OK)
        st = run2(ctx, k, H, (W + 7) / 8);
    release_all(rows, 2);
    return st;
}

/* Stage 1 (threshold and scale): r->scaled = dP * (cellprob > threshold) / 5; *end = 0 for a
 * followed pixel, -1 otherwise. Refuses non-finite input. With take_flows, the input is
 * released as soon as this stage has read it. */
static gpuseg_status scale_flows(masks_run *r, cl_mem *end) {
    gpuseg_ctx *ctx = r->ctx;
    const uint32_t H = r->H, W = r->W;
    const scaled_layout sl = scaled_flows(ctx, H, W);
    cl_mem flags = NULL;
    const cl_uint flags_init[2] = {0, UINT32_MAX};
    cl_uint bad[2], cn = (cl_uint)r->n, ch = H, cw = W;
    float thr = r->p.cellprob_threshold;
    cl_kernel k;
    gpuseg_status st;
    if ((st = buffer(ctx, sl.floats, sizeof(float), "scaled flows", &r->scaled)) == GPUSEG_OK &&
        (st = buffer(ctx, r->n, sizeof(cl_int), "end points", end)) == GPUSEG_OK &&
        (st = upload(ctx, 2, sizeof(cl_uint), flags_init, "flags", &flags)) == GPUSEG_OK &&
        (st = kernel(ctx, "dynamics", sl.packed ? "masks_prep_packed" : "masks_prep", &k)) ==
            GPUSEG_OK &&
        (st = sl.packed
                  ? gpuseg__set_args(ctx, k, 7, sizeof(cl_mem), &r->flows, sizeof(cl_uint), &ch,
                                     sizeof(cl_uint), &cw, sizeof(float), &thr, sizeof(cl_mem),
                                     &r->scaled, sizeof(cl_mem), end, sizeof(cl_mem), &flags)
                  : gpuseg__set_args(ctx, k, 6, sizeof(cl_mem), &r->flows, sizeof(cl_uint), &cn,
                                     sizeof(float), &thr, sizeof(cl_mem), &r->scaled,
                                     sizeof(cl_mem), end, sizeof(cl_mem), &flags)) == GPUSEG_OK &&
        (st = sl.packed ? run2(ctx, k, H + 1, W + 1) : run1(ctx, k, r->n)) == GPUSEG_OK &&
        (st = gpuseg__read_buf(ctx, flags, sizeof bad, bad, "flags")) == GPUSEG_OK) {
        if (r->take_flows) /* the blocking read above means this stage is done with it */
            gpuseg__release(&r->flows);
        if (bad[0] > 0) {
            static const char *chan[3] = {"dY", "dX", "cellprob"};
            uint32_t c = (uint32_t)(bad[1] / r->n), i = (uint32_t)(bad[1] % r->n);
            st = gpuseg__fail(ctx, GPUSEG_FORMAT,
                              "flows contain %u NaN or infinite value%s (first: %s at y %u, x %u)",
                              bad[0], bad[0] == 1 ? "" : "s", c < 3 ? chan[c] : "?", i / W, i % W);
        }
    }
    gpuseg__release(&flags);
    if (st != GPUSEG_OK)
        gpuseg__release(end);
    return st;
}

/* Stage 2 (Euler integration): follows every followed pixel for niter steps; *end becomes the
 * flat index of its end point and *hist the histogram of the end points. */
static gpuseg_status follow(masks_run *r, cl_mem end, cl_mem *hist) {
    gpuseg_ctx *ctx = r->ctx;
    const size_t n = r->n;
    cl_mem pos = NULL;
    cl_uint niter = r->p.niter ? r->p.niter : 200;
    const int want_pos = r->dbg && r->dbg->pos;
    gpuseg_status st;
    if ((st = buffer(ctx, n, sizeof(cl_uint), "histogram", hist)) == GPUSEG_OK &&
        (st = fill_u32(ctx, *hist, n, 0, "histogram")) == GPUSEG_OK &&
        (!want_pos ||
         (st = buffer(ctx, 2 * n, sizeof(float), "debug positions", &pos)) == GPUSEG_OK) &&
        (st = euler(ctx, r->scaled, end, *hist, r->H, r->W, niter, pos, r->win)) == GPUSEG_OK &&
        want_pos)
        st = gpuseg__read_buf(ctx, pos, 2 * n * sizeof(float), r->dbg->pos, "debug positions");
    gpuseg__release(&pos);
    if (st != GPUSEG_OK)
        gpuseg__release(hist);
    return st;
}

/* Stages 1 and 2: threshold, scaling, Euler integration and the end-point histogram, into
 * r->end and r->hist. */
static gpuseg_status stage_follow(masks_run *r) {
    gpuseg_status st = scale_flows(r, &r->end);
    if (st == GPUSEG_OK)
        st = follow(r, r->end, &r->hist);
    return st;
}

/* Seeds: histogram cells holding > 10 end points that are the maximum of their 5x5
 * neighbourhood, at most n / 11 of them. *seeds is the caller's to release. */
static gpuseg_status find_seeds(masks_run *r, cl_mem hist, cl_mem *seeds, cl_uint *ns) {
    gpuseg_ctx *ctx = r->ctx;
    cl_mem count = NULL;
    cl_uint cap = (cl_uint)(r->n / 11 + 1), zero = 0, ch = r->H, cw = r->W;
    cl_kernel k;
    gpuseg_status st;
    if ((st = buffer(ctx, cap, sizeof(cl_uint), "seeds", seeds)) == GPUSEG_OK &&
        (st = upload(ctx, 1, sizeof zero, &zero, "seed count", &count)) == GPUSEG_OK &&
        (st = kernel(ctx, "dynamics", "masks_seeds", &k)) == GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, k, 6, sizeof(cl_mem), &hist, sizeof(cl_uint), &ch,
                               sizeof(cl_uint), &cw, sizeof(cl_mem), seeds, sizeof(cl_mem), &count,
                               sizeof(cl_uint), &cap)) == GPUSEG_OK &&
        (st = run2(ctx, k, r->H, r->W)) == GPUSEG_OK &&
        (st = gpuseg__read_buf(ctx, count, sizeof *ns, ns, "seed count")) == GPUSEG_OK && *ns > cap)
        st = gpuseg__fail(ctx, GPUSEG_INTERNAL, "flows to masks: %u seeds exceed the bound %u", *ns,
                          cap);
    gpuseg__release(&count);
    if (st == GPUSEG_OK) {
        /* Every later table is sized by the number of seeds (~40 bytes each on the host), so the
         * object limit is checked here, before any of them is allocated. */
        const uint64_t maxobj =
            ctx->limits.max_objects ? ctx->limits.max_objects : GPUSEG_DEFAULT_MAX_OBJECTS;
        char hint[96];
        if (*ns > maxobj)
            st = gpuseg__fail(ctx, GPUSEG_TOO_LARGE,
                              "flows to masks: %u objects after seeding, over the limit of %llu "
                              "(%s)",
                              *ns, (unsigned long long)maxobj,
                              gpuseg__limit_hint(GPUSEG__LIMIT_OBJECTS, maxobj, hint, sizeof hint));
    }
    if (st != GPUSEG_OK)
        gpuseg__release(seeds);
    return st;
}

/* Growth, painting (highest count wins, ties to the later seed in row-major order) and
 * assignment: r->labels = seed list index + 1 of the cell each pixel's end point fell into. */
static gpuseg_status paint_labels(masks_run *r, cl_mem hist, cl_mem end, cl_mem seeds, cl_uint ns) {
    gpuseg_ctx *ctx = r->ctx;
    const size_t n = r->n;
    enum { REGION, SEEDID, BEST, WIN, NBUF };
    cl_mem d[NBUF] = {NULL, NULL, NULL, NULL};
    cl_uint ch = r->H, cw = r->W, cn = (cl_uint)n;
    cl_kernel grow, paint, assign;
    gpuseg_status st;
    if ((st = buffer(ctx, (size_t)ns * 11, sizeof(cl_ushort), "seed regions", &d[REGION])) ==
            GPUSEG_OK &&
        (st = buffer(ctx, n, sizeof(cl_uint), "seed ids", &d[SEEDID])) == GPUSEG_OK &&
        (st = buffer(ctx, n, sizeof(cl_uint), "paint counts", &d[BEST])) == GPUSEG_OK &&
        (st = buffer(ctx, n, sizeof(cl_uint), "paint winners", &d[WIN])) == GPUSEG_OK &&
        (st = fill_u32(ctx, d[BEST], n, 0, "paint counts")) == GPUSEG_OK &&
        (st = fill_u32(ctx, d[WIN], n, 0, "paint winners")) == GPUSEG_OK &&
        (st = kernel(ctx, "dynamics", "masks_grow", &grow)) == GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, grow, 8, sizeof(cl_mem), &hist, sizeof(cl_uint), &ch,
                               sizeof(cl_uint), &cw, sizeof(cl_mem), &seeds, sizeof(cl_uint), &ns,
                               sizeof(cl_mem), &d[REGION], sizeof(cl_mem), &d[SEEDID],
                               sizeof(cl_mem), &d[BEST])) == GPUSEG_OK &&
        (st = run1(ctx, grow, ns)) == GPUSEG_OK &&
        (st = kernel(ctx, "dynamics", "masks_paint", &paint)) == GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, paint, 7, sizeof(cl_mem), &hist, sizeof(cl_uint), &cw,
                               sizeof(cl_mem), &seeds, sizeof(cl_uint), &ns, sizeof(cl_mem),
                               &d[REGION], sizeof(cl_mem), &d[BEST], sizeof(cl_mem), &d[WIN])) ==
            GPUSEG_OK &&
        (st = run1(ctx, paint, ns)) == GPUSEG_OK &&
        (st = buffer(ctx, n, sizeof(cl_uint), "labels", &r->labels)) == GPUSEG_OK &&
        (st = kernel(ctx, "dynamics", "masks_assign", &assign)) == GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, assign, 5, sizeof(cl_mem), &end, sizeof(cl_uint), &cn,
                               sizeof(cl_mem), &d[WIN], sizeof(cl_mem), &d[SEEDID], sizeof(cl_mem),
                               &r->labels)) == GPUSEG_OK)
        st = run1(ctx, assign, n);
    release_all(d, NBUF);
    return st;
}

/* Seeds, growth and labels: r->labels holds provisional labels 1..r->n_labels (0 = none). The
 * buffers between the stages are released as soon as no later step needs them, so that the
 * peak is the largest step rather than their sum (docs/masks.md). */
static gpuseg_status stage_seed(masks_run *r) {
    cl_mem seeds = NULL;
    cl_uint ns = 0;
    gpuseg_status st = find_seeds(r, r->hist, &seeds, &ns);
    if (st == GPUSEG_OK) {
        if (ns > 0)
            st = paint_labels(r, r->hist, r->end, seeds, ns);
        else if ((st = buffer(r->ctx, r->n, sizeof(cl_uint), "labels", &r->labels)) == GPUSEG_OK)
            st = fill_u32(r->ctx, r->labels, r->n, 0, "labels");
    }
    gpuseg__release(&seeds);
    gpuseg__release(&r->end);
    gpuseg__release(&r->hist);
    r->n_labels = ns;
    if (!(r->p.flow_threshold > 0)) /* no flow-error QC: the scaled flows are done with */
        gpuseg__release(&r->scaled);
    return st;
}

/* Cellpose get_masks: drop masks above max_size_fraction, renumber by first appearance. */
static gpuseg_status stage_get_masks(masks_run *r) {
    const uint32_t ns = r->n_labels;
    tables *t = &r->t;
    gpuseg_status st;
    if (ns == 0)
        return GPUSEG_OK;
    if ((st = tables_alloc(r->ctx, t, ns)) != GPUSEG_OK ||
        (st = label_stats(r->ctx, r->labels, r->H, r->W, ns, t->count, t->first, NULL)) !=
            GPUSEG_OK)
        return st;
    const double npix = r->win ? (double)r->win->image_pixels : (double)r->n;
    const double big = npix * r->p.max_size_fraction; /* np.prod(shape) * fraction */
    for (uint32_t l = 1; l <= ns; l++)
        t->remove[l] = (double)t->count[l] > big;
    const uint32_t n1 = gpuseg__masks_renumber(t->count, t->first, t->remove, ns, t->map);
    if (n1 == UINT32_MAX)
        return gpuseg__fail(r->ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: renumbering table");
    if ((st = relabel(r->ctx, r->labels, r->n, t->map, ns + 1)) != GPUSEG_OK)
        return st;
    r->n_labels = n1;
    if (r->dbg) {
        r->dbg->n_pre = n1;
        if (r->dbg->pre_labels)
            st = gpuseg__read_buf(r->ctx, r->labels, r->n * 4, r->dbg->pre_labels, "labels");
    }
    return st;
}

/* Flow-error QC: err[l] (l = 1..n_labels) = mean over mask l of (muY - dY/5)^2 + (muX - dX/5)^2,
 * dP/5 read from the scaled flows (equal to it on every mask pixel, all of which were followed).
 * count and box: host tables indexed by label value. */
static gpuseg_status flow_errors(masks_run *r, uint32_t n_labels, const uint32_t *count,
                                 const uint32_t *box, double *err) {
    gpuseg_ctx *ctx = r->ctx;
    const size_t n = r->n;
    enum { MU, BOX, SUMS, NBUF };
    cl_mem d[NBUF] = {NULL, NULL, NULL};
    const scaled_layout sl = scaled_flows(ctx, r->H, r->W);
    cl_uint cw = r->W, cn = (cl_uint)n, nl = n_labels;
    float *sums = malloc((size_t)n_labels * 4 * sizeof *sums);
    cl_kernel k;
    gpuseg_status st = GPUSEG_OK;
    if (!sums)
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: flow-error table");
    if (st == GPUSEG_OK &&
        (st = buffer(ctx, 2 * n, sizeof(float), "ideal flows", &d[MU])) == GPUSEG_OK &&
        (st = gpuseg__labels_to_flows_cl(ctx, r->labels, r->H, r->W, n_labels, d[MU])) != GPUSEG_OK)
        gpuseg__wrap(ctx, st, "flow-error check");
    if (st == GPUSEG_OK &&
        (st = upload(ctx, (size_t)n_labels * 4, sizeof(uint32_t), box + 4, "label boxes",
                     &d[BOX])) == GPUSEG_OK &&
        (st = buffer(ctx, (size_t)n_labels * 4, sizeof(float), "flow-error sums", &d[SUMS])) ==
            GPUSEG_OK &&
        (st = kernel(ctx, "masks_fill", "masks_qc_sums", &k)) == GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, k, 12, sizeof(cl_mem), &r->labels, sizeof(cl_uint), &cw,
                               sizeof(cl_uint), &cn, sizeof(cl_mem), &r->scaled, sizeof(cl_uint),
                               &sl.oy, sizeof(cl_uint), &sl.ox, sizeof(cl_uint), &sl.rs,
                               sizeof(cl_uint), &sl.es, sizeof(cl_mem), &d[MU], sizeof(cl_mem),
                               &d[BOX], sizeof(cl_uint), &nl, sizeof(cl_mem), &d[SUMS])) ==
            GPUSEG_OK &&
        (st = run_groups(ctx, k, n_labels)) == GPUSEG_OK &&
        (st = gpuseg__read_buf(ctx, d[SUMS], (size_t)n_labels * 16, sums, "flow-error sums")) ==
            GPUSEG_OK) {
        for (uint32_t i = 0; i < n_labels; i++) {
            double c = count[i + 1];
            double sy = (double)sums[4 * i] + sums[4 * i + 1];
            double sx = (double)sums[4 * i + 2] + sums[4 * i + 3];
            err[i + 1] = c > 0 ? sy / c + sx / c : NAN; /* scipy's mean of an empty label */
        }
    }
    free(sums);
    release_all(d, NBUF);
    return st;
}

/* Cellpose's flow-error QC (no renumbering here): masks whose flow error exceeds
 * flow_threshold are removed; the tables then hold counts after QC and boxes by value. */
static gpuseg_status stage_flow_qc(masks_run *r) {
    const uint32_t n1 = r->n_labels;
    tables *t = &r->t;
    gpuseg_status st;
    if (r->dbg)
        r->dbg->n_qc_removed = 0;
    if (n1 == 0)
        return GPUSEG_OK;
    if ((st = tables_alloc(r->ctx, t, n1)) != GPUSEG_OK ||
        (st = label_stats(r->ctx, r->labels, r->H, r->W, n1, t->count, t->first, t->box)) !=
            GPUSEG_OK)
        return st;
    uint32_t maxlab_qc = n1;
    if (r->p.flow_threshold > 0) {
        if ((st = flow_errors(r, n1, t->count, t->box, t->err)) != GPUSEG_OK)
            return st;
        maxlab_qc = 0;
        for (uint32_t l = 1; l <= n1; l++) {
            if (t->err[l] > (double)r->p.flow_threshold) {
                t->remove[l] = 1;
                if (r->dbg)
                    r->dbg->n_qc_removed++;
            } else {
                maxlab_qc = l;
            }
            if (r->dbg && r->dbg->flow_err && l <= r->dbg->flow_err_cap)
                r->dbg->flow_err[l - 1] = t->err[l];
        }
    }
    gpuseg__release(&r->scaled);
    r->maxlab_qc = maxlab_qc;
    r->dt = maxlab_qc >= 65536 ? GPUSEG_DTYPE_U32 : GPUSEG_DTYPE_U16;
    /* counts by value after QC (removed labels become background) */
    for (uint32_t l = 1; l <= n1; l++)
        if (t->remove[l]) {
            t->count[0] += t->count[l];
            t->count[l] = 0;
            t->remove[l] = 0;
        }
    return GPUSEG_OK;
}

typedef struct fill_job {
    uint64_t area;
    uint32_t label, y0, y1, x0, x1;
} fill_job;

static int cmp_job(const void *a, const void *b) {
    const fill_job *x = a, *y = b;
    if (x->area != y->area)
        return x->area < y->area ? -1 : 1;
    return (x->label > y->label) - (x->label < y->label);
}

/* Hole-filling jobs: one row of 8 words per mask whose box has an inside (label, y0, y1, x0, x1,
 * scratch offset, priority, 0), in increasing (box area, label) order, so that the priority (the
 * rank) makes the outermost of nested masks win; rows[5] restarts at 0 where a new launch starts
 * (the scratch of one launch holds at most max(scratch_cap, largest box) bytes). prio_label[i]:
 * the label of priority i + 1. Returns the number of jobs in *n_jobs, the scratch bytes in
 * *scratch; *rows and *prio_label are the caller's to free (NULL when there are no jobs). */
static gpuseg_status fill_plan(gpuseg_ctx *ctx, uint32_t n_labels, const uint32_t *count,
                               const uint32_t *box, size_t scratch_cap, uint32_t **rows,
                               uint32_t **prio_label, uint32_t *n_jobs, uint64_t *scratch) {
    *rows = *prio_label = NULL;
    *n_jobs = 0;
    *scratch = 0;
    fill_job *jobs = malloc(((size_t)n_labels + 1) * sizeof *jobs);
    if (!jobs)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: hole-filling table");
    uint32_t nj = 0;
    uint64_t biggest = 0;
    for (uint32_t l = 1; l <= n_labels; l++) {
        const uint32_t *bx = box + 4 * (size_t)l;
        if (count[l] == 0 || bx[1] < bx[0] + 2 || bx[3] < bx[2] + 2)
            continue;
        fill_job *j = &jobs[nj++];
        *j = (fill_job){
            (uint64_t)(bx[1] - bx[0] + 1) * (bx[3] - bx[2] + 1), l, bx[0], bx[1], bx[2], bx[3]};
        if (j->area > biggest)
            biggest = j->area;
    }
    qsort(jobs, nj, sizeof *jobs, cmp_job);
    uint32_t *rw = nj ? malloc((size_t)nj * 8 * sizeof *rw) : NULL;
    uint32_t *pl = nj ? malloc((size_t)nj * sizeof *pl) : NULL;
    if (nj && (!rw || !pl)) {
        free(jobs);
        free(rw);
        free(pl);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: hole-filling table");
    }
    const uint64_t cap = biggest > scratch_cap ? biggest : scratch_cap;
    uint64_t used = 0;
    for (uint32_t i = 0; i < nj; i++) {
        if (used + jobs[i].area > cap)
            used = 0; /* a new launch starts here (see fill_launch) */
        uint32_t *r = rw + 8 * (size_t)i;
        r[0] = jobs[i].label;
        r[1] = jobs[i].y0;
        r[2] = jobs[i].y1;
        r[3] = jobs[i].x0;
        r[4] = jobs[i].x1;
        r[5] = (uint32_t)used;
        r[6] = i + 1;
        r[7] = 0;
        pl[i] = jobs[i].label;
        used += jobs[i].area;
        if (used > *scratch)
            *scratch = used;
    }
    free(jobs);
    *rows = rw;
    *prio_label = pl;
    *n_jobs = nj;
    return GPUSEG_OK;
}

/* The device side of hole filling for the nj jobs of fill_plan. */
static gpuseg_status fill_launch(gpuseg_ctx *ctx, cl_mem labels, uint32_t H, uint32_t W,
                                 const uint32_t *rows, const uint32_t *prio_label, uint32_t nj,
                                 uint64_t scratch) {
    const size_t n = (size_t)H * W;
    enum { JOBS, PRIOLAB, SCRATCH, FILLPRIO, NBUF };
    cl_mem d[NBUF] = {NULL, NULL, NULL, NULL};
    cl_uint cw = W, cn = (cl_uint)n;
    cl_kernel holes, apply;
    gpuseg_status st;
    if ((st = upload(ctx, (size_t)nj * 8, sizeof(uint32_t), rows, "hole-filling jobs", &d[JOBS])) !=
            GPUSEG_OK ||
        (st = upload(ctx, nj, sizeof(uint32_t), prio_label, "hole-filling labels", &d[PRIOLAB])) !=
            GPUSEG_OK ||
        (st = buffer(ctx, (size_t)scratch, 1, "hole-filling scratch", &d[SCRATCH])) != GPUSEG_OK ||
        (st = buffer(ctx, n, sizeof(uint32_t), "hole owners", &d[FILLPRIO])) != GPUSEG_OK ||
        (st = fill_u32(ctx, d[FILLPRIO], n, 0, "hole owners")) != GPUSEG_OK ||
        (st = kernel(ctx, "masks_fill", "masks_fill_holes", &holes)) != GPUSEG_OK ||
        (st = kernel(ctx, "masks_fill", "masks_fill_apply", &apply)) != GPUSEG_OK) {
        release_all(d, NBUF);
        return st;
    }
    /* launches: consecutive jobs whose scratch offsets increase share one launch */
    for (uint32_t s = 0; s < nj && st == GPUSEG_OK;) {
        uint32_t e = s + 1;
        while (e < nj && rows[8 * (size_t)e + 5] != 0)
            e++;
        cl_uint base = s, cnt = e - s;
        if ((st = gpuseg__set_args(ctx, holes, 7, sizeof(cl_mem), &labels, sizeof(cl_uint), &cw,
                                   sizeof(cl_mem), &d[JOBS], sizeof(cl_uint), &base,
                                   sizeof(cl_uint), &cnt, sizeof(cl_mem), &d[SCRATCH],
                                   sizeof(cl_mem), &d[FILLPRIO])) == GPUSEG_OK)
            st = run_groups(ctx, holes, cnt);
        s = e;
    }
    if (st == GPUSEG_OK &&
        (st = gpuseg__set_args(ctx, apply, 4, sizeof(cl_mem), &labels, sizeof(cl_uint), &cn,
                               sizeof(cl_mem), &d[FILLPRIO], sizeof(cl_mem), &d[PRIOLAB])) ==
            GPUSEG_OK)
        st = run1(ctx, apply, n);
    release_all(d, NBUF);
    return st;
}

gpuseg_status gpuseg__masks_fill_holes(gpuseg_ctx *ctx, cl_mem labels, uint32_t H, uint32_t W,
                                       uint32_t n_labels, const uint32_t *count,
                                       const uint32_t *box, size_t scratch_cap) {
    uint32_t *rows, *prio_label, nj;
    uint64_t scratch;
    gpuseg_status st =
        fill_plan(ctx, n_labels, count, box, scratch_cap ? scratch_cap : FILL_SCRATCH_CAP, &rows,
                  &prio_label, &nj, &scratch);
    if (st == GPUSEG_OK && nj > 0)
        st = fill_launch(ctx, labels, H, W, rows, prio_label, nj, scratch);
    free(rows);
    free(prio_label);
    return st;
}

/* Cellpose fill_holes_and_remove_small_masks, first half: size filter and renumbering (none
 * when min_size <= 0: values with gaps are kept), then hole filling of the surviving masks.
 * Records in r->present which values existed before filling. */
static gpuseg_status stage_fill(masks_run *r) {
    const uint32_t n1 = r->n_labels;
    tables *t = &r->t;
    uint32_t n2;
    if (n1 == 0)
        return GPUSEG_OK;
    if (r->p.min_size > 0) {
        if (r->win && r->win->plain_size_filter) {
            for (uint32_t l = 1; l <= n1; l++)
                if (t->count[l] > 0 && t->count[l] < (uint32_t)r->p.min_size)
                    t->remove[l] = 1;
        } else {
            gpuseg__masks_size_filter(t->count, n1, r->p.min_size, t->remove);
        }
        /* first appearance order equals value order here (labels were numbered so) */
        n2 = gpuseg__masks_renumber(t->count, t->first, t->remove, n1, t->map);
    } else {
        n2 = r->maxlab_qc;
        for (uint32_t l = 0; l <= n1; l++)
            t->map[l] = (l <= n2 && t->count[l] > 0) ? l : 0;
    }
    if (n2 == UINT32_MAX)
        return gpuseg__fail(r->ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: renumbering table");
    gpuseg_status st = relabel(r->ctx, r->labels, r->n, t->map, n1 + 1);
    r->n_labels = n2;
    if (st != GPUSEG_OK || n2 == 0)
        return st;
    /* boxes and counts of the surviving labels under their new values */
    uint32_t *box2 = calloc(4 * ((size_t)n2 + 1), sizeof *box2);
    uint32_t *count2 = calloc((size_t)n2 + 1, sizeof *count2);
    r->present = calloc((size_t)n2 + 1, 1);
    if (!box2 || !count2 || !r->present) {
        st = gpuseg__fail(r->ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: hole-filling table");
    } else {
        for (uint32_t l = 1; l <= n1; l++) {
            uint32_t v = t->map[l];
            if (v && t->count[l] > 0) {
                memcpy(box2 + 4 * (size_t)v, t->box + 4 * (size_t)l, 4 * sizeof *box2);
                count2[v] = t->count[l];
            }
        }
        for (uint32_t v = 0; v <= n2; v++)
            r->present[v] = count2[v] > 0;
        st = gpuseg__masks_fill_holes(r->ctx, r->labels, r->H, r->W, n2, count2, box2, 0);
    }
    free(box2);
    free(count2);
    return st;
}

/* Cellpose fill_holes_and_remove_small_masks, second half: the size filter again and the final
 * renumbering (without a filter: masks[slc][filled] = j + 1, j counting the values present
 * before filling). */
static gpuseg_status stage_renumber(masks_run *r) {
    const uint32_t n2 = r->n_labels;
    tables *t = &r->t;
    uint32_t n_out = 0;
    gpuseg_status st;
    if (n2 == 0)
        return GPUSEG_OK;
    if ((st = tables_alloc(r->ctx, t, n2)) != GPUSEG_OK ||
        (st = label_stats(r->ctx, r->labels, r->H, r->W, n2, t->count, t->first, NULL)) !=
            GPUSEG_OK)
        return st;
    if (r->p.min_size > 0) {
        if (r->win && r->win->plain_size_filter) {
            for (uint32_t l = 1; l <= n2; l++)
                if (t->count[l] > 0 && t->count[l] < (uint32_t)r->p.min_size)
                    t->remove[l] = 1;
        } else {
            gpuseg__masks_size_filter(t->count, n2, r->p.min_size, t->remove);
        }
        n_out = gpuseg__masks_renumber(t->count, t->first, t->remove, n2, t->map);
        if (n_out == UINT32_MAX)
            return gpuseg__fail(r->ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: renumbering table");
    } else {
        uint32_t j = 0;
        t->map[0] = 0;
        for (uint32_t v = 1; v <= n2; v++) {
            if (r->present[v])
                j++;
            t->map[v] = r->present[v] && t->count[v] > 0 ? j : 0;
            if (t->map[v] > n_out)
                n_out = t->map[v];
        }
    }
    r->n_labels = n_out;
    return relabel(r->ctx, r->labels, r->n, t->map, n2 + 1);
}

/* The result: r->labels as uint16 (r->dt) or as it is, once the queue has finished. */
static gpuseg_status stage_output(masks_run *r) {
    gpuseg_ctx *ctx = r->ctx;
    gpuseg_status st = GPUSEG_OK;
    if (r->dt == GPUSEG_DTYPE_U16) {
        cl_uint cn = (cl_uint)r->n;
        cl_kernel k;
        if ((st = buffer(ctx, r->n, sizeof(cl_ushort), "labels (uint16)", &r->out)) == GPUSEG_OK &&
            (st = kernel(ctx, "dynamics", "masks_to_u16", &k)) == GPUSEG_OK &&
            (st = gpuseg__set_args(ctx, k, 3, sizeof(cl_mem), &r->labels, sizeof(cl_uint), &cn,
                                   sizeof(cl_mem), &r->out)) == GPUSEG_OK)
            st = run1(ctx, k, r->n);
        gpuseg__release(&r->labels);
    } else {
        r->out = r->labels;
        r->labels = NULL;
    }
    cl_int err = clFinish(ctx->queue);
    if (st == GPUSEG_OK && err != CL_SUCCESS)
        st = gpuseg__fail_cl(ctx, err, "flows to masks: clFinish");
    return st;
}

/* The stages in order, with the debug-log name of each and the fraction of a typical run done
 * when it ends (progress reports; the Euler integration and the flow-error QC dominate). */
static const struct {
    gpuseg_status (*run)(masks_run *r);
    const char *what;
    double done;
} STAGES[] = {
    {stage_follow, "threshold, Euler integration, histogram", 0.55},
    {stage_seed, "seeds, growth, labels", 0.60},
    {stage_get_masks, "big masks, renumbering", 0.65},
    {stage_flow_qc, "flow-error QC", 0.85},
    {stage_fill, "size filter, hole filling", 0.95},
    {stage_renumber, "size filter, renumbering", 0.98},
    {stage_output, "output", 1.0},
};

static gpuseg_status check_params(gpuseg_ctx *ctx, uint32_t H, uint32_t W,
                                  const gpuseg_masks_params *p) {
    if (H == 0 || W == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "flows to masks: empty image (%u x %u)",
                            H, W);
    const uint64_t maxpx =
        ctx->limits.max_pixels ? ctx->limits.max_pixels : GPUSEG_MAX_IMAGE_PIXELS;
    if ((uint64_t)H * W > maxpx) {
        char a[32], b[32], hint[96];
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE,
                            "flows to masks: %ux%u = %spixels exceed the limit of %spixels (%s)", H,
                            W, gpuseg__fmt_count((uint64_t)H * W, a, sizeof a),
                            gpuseg__fmt_count(maxpx, b, sizeof b),
                            gpuseg__limit_hint(GPUSEG__LIMIT_PIXELS, maxpx, hint, sizeof hint));
    }
    if (isnan(p->cellprob_threshold) || isnan(p->flow_threshold) ||
        !isfinite(p->max_size_fraction) || p->max_size_fraction < 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "flows to masks: invalid parameters (cellprob_threshold %g, "
                            "flow_threshold %g, max_size_fraction %g)",
                            (double)p->cellprob_threshold, (double)p->flow_threshold,
                            p->max_size_fraction);
    return GPUSEG_OK;
}

/* params (NULL: defaults) into *p, checked. */
static gpuseg_status resolve_params(gpuseg_ctx *ctx, uint32_t H, uint32_t W,
                                    const gpuseg_masks_params *params, gpuseg_masks_params *p) {
    if (params)
        *p = *params;
    else
        gpuseg_masks_params_default(p);
    return check_params(ctx, H, W, p);
}

gpuseg_status gpuseg__masks_run(gpuseg_ctx *ctx, cl_mem flows, int take_flows, uint32_t H,
                                uint32_t W, const gpuseg_masks_params *params,
                                gpuseg__masks_debug *dbg, cl_mem *labels_out, gpuseg_dtype *dtype,
                                uint32_t *n_masks) {
    return gpuseg__masks_run_window(ctx, flows, take_flows, H, W, NULL, params, dbg, labels_out,
                                    dtype, n_masks);
}

gpuseg_status gpuseg__masks_run_window(gpuseg_ctx *ctx, cl_mem flows, int take_flows, uint32_t H,
                                       uint32_t W, const gpuseg__masks_window *win,
                                       const gpuseg_masks_params *params, gpuseg__masks_debug *dbg,
                                       cl_mem *labels_out, gpuseg_dtype *dtype, uint32_t *n_masks) {
    masks_run r;
    memset(&r, 0, sizeof r);
    if (win && ((uint64_t)win->oy + H > win->gh || (uint64_t)win->ox + W > win->gw))
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "flows to masks: window %ux%u at (%u, %u) outside the %ux%u image", W,
                            H, win->ox, win->oy, win->gw, win->gh);
    r.win = win;
    r.ctx = ctx;
    r.H = H;
    r.W = W;
    r.n = (size_t)H * W;
    r.dbg = dbg;
    r.flows = flows;
    r.take_flows = take_flows;
    r.dt = GPUSEG_DTYPE_U16;
    if (dbg) {
        dbg->n_pre = 0;
        dbg->n_qc_removed = 0;
    }
    const size_t n_stages = sizeof STAGES / sizeof STAGES[0];
    gpuseg_status st = resolve_params(ctx, H, W, params, &r.p);
    if (st == GPUSEG_OK) {
        stage(ctx, &r.tm, "start");
        gpuseg__progress(ctx, "masks", 0, n_stages, 0.0);
    }
    for (size_t i = 0; st == GPUSEG_OK && i < n_stages; i++) {
        if ((st = gpuseg__check_cancel(ctx, "flows to masks")) != GPUSEG_OK ||
            (st = STAGES[i].run(&r)) != GPUSEG_OK)
            break;
        stage(ctx, &r.tm, STAGES[i].what);
        gpuseg__progress(ctx, "masks", i + 1, n_stages, STAGES[i].done);
    }
    if (st == GPUSEG_OK) {
        *labels_out = r.out;
        r.out = NULL;
        *dtype = r.dt;
        if (n_masks)
            *n_masks = r.n_labels;
    } else {
        clFinish(ctx->queue); /* nothing enqueued is left running on what is released */
    }
    run_free(&r);
    return st;
}

gpuseg_status gpuseg_flows_to_masks_cl(gpuseg_ctx *ctx, cl_mem flows, uint32_t H, uint32_t W,
                                       const gpuseg_masks_params *params, cl_mem *labels_out,
                                       gpuseg_dtype *dtype, uint32_t *n_masks) {
    gpuseg__clear_error(ctx);
    if (!ctx || !flows || !labels_out || !dtype)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "flows to masks: NULL argument");
    *labels_out = NULL;
    size_t have = 0, need;
    cl_int err = clGetMemObjectInfo(flows, CL_MEM_SIZE, sizeof have, &have, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "flows to masks: flows buffer");
    if (!gpuseg__mul4_size(3, H, W, sizeof(float), &need) || have < need)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "flows to masks: flows buffer holds %zu bytes, [3, %u, %u] float32 "
                            "needs more",
                            have, H, W);
    return gpuseg__masks_run(ctx, flows, 0, H, W, params, NULL, labels_out, dtype, n_masks);
}

gpuseg_status gpuseg_flows_to_masks(gpuseg_ctx *ctx, const float *flows, uint32_t H, uint32_t W,
                                    const gpuseg_masks_params *params, gpuseg_image **labels_out,
                                    uint32_t *n_masks) {
    gpuseg__clear_error(ctx);
    if (!ctx || !flows || !labels_out)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "flows to masks: NULL argument");
    *labels_out = NULL;
    gpuseg_masks_params p;
    gpuseg_status st = resolve_params(ctx, H, W, params, &p);
    if (st != GPUSEG_OK)
        return st;
    const size_t n = (size_t)H * W;
    cl_mem dflows = NULL, dlab = NULL;
    gpuseg_image *img = NULL;
    gpuseg_dtype dt;
    if ((st = buffer(ctx, 3 * n, sizeof(float), "flows", &dflows)) != GPUSEG_OK ||
        (st = gpuseg__write_buf(ctx, dflows, 3 * n * sizeof(float), flows, "flows")) != GPUSEG_OK)
        goto fail;
    /* handed over: released as soon as the first stage has read it */
    st = gpuseg__masks_run(ctx, dflows, 1, H, W, &p, NULL, &dlab, &dt, n_masks);
    dflows = NULL;
    if (st != GPUSEG_OK)
        goto fail;
    if ((st = gpuseg_image_create(W, H, 1, 1, dt, &img)) != GPUSEG_OK) {
        st = gpuseg__wrap(ctx, st, "flows to masks");
        goto fail;
    }
    if ((st = gpuseg__read_buf(ctx, dlab, n * gpuseg_dtype_size(dt), img->data, "labels")) !=
        GPUSEG_OK)
        goto fail;
    gpuseg__release(&dlab);
    *labels_out = img;
    return GPUSEG_OK;
fail:
    gpuseg_image_free(img);
    gpuseg__release(&dflows);
    gpuseg__release(&dlab);
    return st;
}
