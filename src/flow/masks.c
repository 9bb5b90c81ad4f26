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
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
    if (*t > 0)
        gpuseg__log(ctx, GPUSEG_LOG_DEBUG, "flows to masks: %s %.1f ms", what, (now - *t) * 1e3);
    *t = now;
}

/* Device buffers of one run; all released at the end. */
typedef struct masks_bufs {
    cl_mem F, end, hist, bad, seeds, nseeds, region, seedid, best, win, labels;
    cl_mem count, first, box, map, mu, sums, jobs, scratch, fillprio, priolab, out;
} masks_bufs;

static void bufs_release(masks_bufs *b) {
    cl_mem *m = (cl_mem *)b;
    for (size_t i = 0; i < sizeof *b / sizeof(cl_mem); i++)
        gpuseg__release(&m[i]);
}

static gpuseg_status fill_u32(gpuseg_ctx *ctx, cl_mem buf, size_t n, uint32_t value,
                              const char *what) {
    cl_int err = clEnqueueFillBuffer(ctx->queue, buf, &value, sizeof value, 0, n * sizeof value, 0,
                                     NULL, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "flows to masks: clEnqueueFillBuffer(%s)", what);
    return GPUSEG_OK;
}

static gpuseg_status read_buf(gpuseg_ctx *ctx, cl_mem buf, size_t bytes, void *dst,
                              const char *what) {
    cl_int err = clEnqueueReadBuffer(ctx->queue, buf, CL_TRUE, 0, bytes, dst, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "flows to masks: reading %s", what);
    return GPUSEG_OK;
}

static gpuseg_status write_buf(gpuseg_ctx *ctx, cl_mem buf, size_t bytes, const void *src,
                               const char *what) {
    cl_int err = clEnqueueWriteBuffer(ctx->queue, buf, CL_TRUE, 0, bytes, src, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "flows to masks: writing %s", what);
    return GPUSEG_OK;
}

static gpuseg_status buffer(gpuseg_ctx *ctx, size_t n, size_t elem, const char *what, cl_mem *out) {
    size_t bytes = 0;
    if (!gpuseg__mul_size(n ? n : 1, elem, &bytes))
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "flows to masks: %s: size overflow", what);
    return gpuseg__buffer(ctx, CL_MEM_READ_WRITE, bytes, what, out);
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

static gpuseg_status kernel(gpuseg_ctx *ctx, const char *prog, const char *name, cl_kernel *k) {
    return gpuseg__kernel(ctx, prog, name, k);
}

/* Uploads map[0..n_map-1] and rewrites labels through it. */
static gpuseg_status relabel(gpuseg_ctx *ctx, masks_bufs *b, size_t npix, const uint32_t *map,
                             uint32_t n_map) {
    gpuseg_status st;
    cl_kernel k;
    gpuseg__release(&b->map);
    if ((st = buffer(ctx, n_map, sizeof(uint32_t), "label map", &b->map)) != GPUSEG_OK ||
        (st = write_buf(ctx, b->map, (size_t)n_map * sizeof(uint32_t), map, "label map")) !=
            GPUSEG_OK ||
        (st = kernel(ctx, "dynamics", "masks_relabel", &k)) != GPUSEG_OK)
        return st;
    cl_uint n = (cl_uint)npix, nm = n_map;
    if ((st = gpuseg__set_args(ctx, k, 4, sizeof(cl_mem), &b->labels, sizeof(cl_uint), &n,
                               sizeof(cl_mem), &b->map, sizeof(cl_uint), &nm)) != GPUSEG_OK)
        return st;
    return run1(ctx, k, npix);
}

/* Per-label count, first pixel and (when box != NULL) bounding box for labels 1..n_labels.
 * Host arrays are indexed by value (entry 0 unused for first/box; count[0] = background count,
 * computed as the remainder). */
static gpuseg_status label_stats(gpuseg_ctx *ctx, masks_bufs *b, uint32_t H, uint32_t W,
                                 uint32_t n_labels, uint32_t *count, uint32_t *first,
                                 uint32_t *box) {
    gpuseg_status st;
    cl_kernel k;
    gpuseg__release(&b->count);
    gpuseg__release(&b->first);
    gpuseg__release(&b->box);
    if ((st = buffer(ctx, n_labels, sizeof(uint32_t), "label counts", &b->count)) != GPUSEG_OK ||
        (st = buffer(ctx, n_labels, sizeof(uint32_t), "label first pixels", &b->first)) !=
            GPUSEG_OK ||
        (st = fill_u32(ctx, b->count, n_labels, 0, "label counts")) != GPUSEG_OK ||
        (st = fill_u32(ctx, b->first, n_labels, UINT32_MAX, "label first pixels")) != GPUSEG_OK)
        return st;
    if (box) {
        if ((st = buffer(ctx, (size_t)n_labels * 4, sizeof(uint32_t), "label boxes", &b->box)) !=
            GPUSEG_OK)
            return st;
        /* (min y, max y, min x, max x) start at (~0, 0, ~0, 0) */
        cl_uint init[4] = {UINT32_MAX, 0, UINT32_MAX, 0};
        cl_int err = clEnqueueFillBuffer(ctx->queue, b->box, init, sizeof init, 0,
                                         (size_t)n_labels * sizeof init, 0, NULL, NULL);
        if (err != CL_SUCCESS)
            return gpuseg__fail_cl(ctx, err, "flows to masks: clEnqueueFillBuffer(label boxes)");
    }
    const int rows = gpuseg__flow_cpu_kernels(ctx); /* masks_stats_rows: a work-item per row */
    if ((st = kernel(ctx, "dynamics", rows ? "masks_stats_rows" : "masks_stats", &k)) != GPUSEG_OK)
        return st;
    cl_uint h = H, w = W, nl = n_labels;
    if ((st = gpuseg__set_args(ctx, k, 7, sizeof(cl_mem), &b->labels, sizeof(cl_uint), &h,
                               sizeof(cl_uint), &w, sizeof(cl_uint), &nl, sizeof(cl_mem), &b->count,
                               sizeof(cl_mem), &b->first, sizeof(cl_mem), box ? &b->box : NULL)) !=
            GPUSEG_OK ||
        (st = rows ? gpuseg__run(ctx, k, 1, (size_t[]){H}, NULL) : run2(ctx, k, H, W)) != GPUSEG_OK)
        return st;
    if ((st = read_buf(ctx, b->count, (size_t)n_labels * 4, count + 1, "label counts")) !=
            GPUSEG_OK ||
        (st = read_buf(ctx, b->first, (size_t)n_labels * 4, first + 1, "label first pixels")) !=
            GPUSEG_OK)
        return st;
    if (box &&
        (st = read_buf(ctx, b->box, (size_t)n_labels * 16, box + 4, "label boxes")) != GPUSEG_OK)
        return st;
    uint64_t fg = 0;
    for (uint32_t l = 1; l <= n_labels; l++)
        fg += count[l];
    count[0] = (uint32_t)((uint64_t)H * W - fg);
    first[0] = 0;
    return GPUSEG_OK;
}

/* Euler integration and end-point histogram (stage 2). CPU devices: b->F holds the packed flows
 * (masks_prep_packed), masks_rows lists each row's followed pixels, and masks_euler8 follows them
 * 8 per work-item as float8 lanes; other devices: b->F holds planes, masks_euler follows one
 * pixel per work-item. Same end points (docs/masks.md). pos: debug positions or NULL. */
static gpuseg_status euler(gpuseg_ctx *ctx, masks_bufs *b, uint32_t H, uint32_t W, cl_uint niter,
                           cl_mem pos) {
    const size_t n = (size_t)H * W;
    cl_uint ch = H, cw = W;
    gpuseg_status st;
    cl_kernel k;
    if (!gpuseg__flow_cpu_kernels(ctx)) {
        if ((st = kernel(ctx, "dynamics", "masks_euler", &k)) != GPUSEG_OK ||
            (st = gpuseg__set_args(ctx, k, 7, sizeof(cl_mem), &b->F, sizeof(cl_uint), &ch,
                                   sizeof(cl_uint), &cw, sizeof(cl_uint), &niter, sizeof(cl_mem),
                                   &b->end, sizeof(cl_mem), &b->hist, sizeof(cl_mem),
                                   pos ? &pos : NULL)) != GPUSEG_OK)
            return st;
        return run2(ctx, k, H, W);
    }
    cl_mem xs = NULL, cnt = NULL;
    size_t gh = H;
    if ((st = buffer(ctx, n, sizeof(cl_uint), "row pixel lists", &xs)) != GPUSEG_OK ||
        (st = buffer(ctx, H, sizeof(cl_uint), "row pixel counts", &cnt)) != GPUSEG_OK ||
        (st = kernel(ctx, "dynamics", "masks_rows", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ctx, k, 5, sizeof(cl_mem), &b->end, sizeof(cl_uint), &ch,
                               sizeof(cl_uint), &cw, sizeof(cl_mem), &xs, sizeof(cl_mem), &cnt)) !=
            GPUSEG_OK ||
        (st = gpuseg__run(ctx, k, 1, &gh, NULL)) != GPUSEG_OK ||
        (st = kernel(ctx, "dynamics", "masks_euler8", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ctx, k, 9, sizeof(cl_mem), &b->F, sizeof(cl_uint), &ch,
                               sizeof(cl_uint), &cw, sizeof(cl_uint), &niter, sizeof(cl_mem), &xs,
                               sizeof(cl_mem), &cnt, sizeof(cl_mem), &b->end, sizeof(cl_mem),
                               &b->hist, sizeof(cl_mem), pos ? &pos : NULL)) != GPUSEG_OK)
        goto done;
    st = run2(ctx, k, H, (W + 7) / 8);
done:
    /* the runtime keeps buffers alive until the enqueued kernels using them are done */
    gpuseg__release(&xs);
    gpuseg__release(&cnt);
    return st;
}

/* Layout of the scaled flows b->F of stage 1: packed (dY, dX) pairs with row stride W + 1 and an
 * extra row and column on CPU devices (masks_prep_packed, for masks_euler8), two planes
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

/* Stages 1-3: threshold, Euler integration, histogram, seeds, growth, painting, assignment.
 * On return b->labels holds provisional labels 1..*n_seeds (0 = none) and b->F the scaled flows
 * (for the flow-error QC). With take set, *flows is released (and set to NULL) as soon as stage 1
 * has read it. Buffers are allocated when their stage starts and released when it ends, so that
 * the peak is the largest stage rather than their sum (docs/masks.md). */
static gpuseg_status follow_and_seed(gpuseg_ctx *ctx, masks_bufs *b, cl_mem *flows, int take,
                                     uint32_t H, uint32_t W, const gpuseg_masks_params *p,
                                     gpuseg__masks_debug *dbg, double *tm, uint32_t *n_seeds_out) {
    const size_t n = (size_t)H * W;
    const scaled_layout sl = scaled_flows(ctx, H, W);
    gpuseg_status st;
    cl_kernel k;
    cl_uint cn = (cl_uint)n, ch = H, cw = W;
    if ((st = buffer(ctx, sl.floats, sizeof(float), "scaled flows", &b->F)) != GPUSEG_OK ||
        (st = buffer(ctx, n, sizeof(cl_int), "end points", &b->end)) != GPUSEG_OK ||
        (st = buffer(ctx, 2, sizeof(cl_uint), "flags", &b->bad)) != GPUSEG_OK)
        return st;
    cl_uint bad_init[2] = {0, UINT32_MAX};
    if ((st = write_buf(ctx, b->bad, sizeof bad_init, bad_init, "flags")) != GPUSEG_OK)
        return st;

    /* 1. foreground and F = dP * fg / 5; refuse non-finite input */
    float thr = p->cellprob_threshold;
    if (sl.packed) {
        if ((st = kernel(ctx, "dynamics", "masks_prep_packed", &k)) != GPUSEG_OK ||
            (st = gpuseg__set_args(ctx, k, 7, sizeof(cl_mem), flows, sizeof(cl_uint), &ch,
                                   sizeof(cl_uint), &cw, sizeof(float), &thr, sizeof(cl_mem), &b->F,
                                   sizeof(cl_mem), &b->end, sizeof(cl_mem), &b->bad)) !=
                GPUSEG_OK ||
            (st = run2(ctx, k, H + 1, W + 1)) != GPUSEG_OK)
            return st;
    } else if ((st = kernel(ctx, "dynamics", "masks_prep", &k)) != GPUSEG_OK ||
               (st = gpuseg__set_args(ctx, k, 6, sizeof(cl_mem), flows, sizeof(cl_uint), &cn,
                                      sizeof(float), &thr, sizeof(cl_mem), &b->F, sizeof(cl_mem),
                                      &b->end, sizeof(cl_mem), &b->bad)) != GPUSEG_OK ||
               (st = run1(ctx, k, n)) != GPUSEG_OK) {
        return st;
    }
    cl_uint bad[2];
    if ((st = read_buf(ctx, b->bad, sizeof bad, bad, "flags")) != GPUSEG_OK)
        return st;
    if (take) /* the blocking read above means stage 1 is done with it */
        gpuseg__release(flows);
    if (bad[0] > 0) {
        static const char *chan[3] = {"dY", "dX", "cellprob"};
        uint32_t c = (uint32_t)(bad[1] / n), i = (uint32_t)(bad[1] % n);
        return gpuseg__fail(ctx, GPUSEG_FORMAT,
                            "flows contain %u NaN or infinite value%s (first: %s at y %u, x %u)",
                            bad[0], bad[0] == 1 ? "" : "s", c < 3 ? chan[c] : "?", i / W, i % W);
    }

    /* 2. Euler integration and the end-point histogram */
    if ((st = buffer(ctx, n, sizeof(cl_uint), "histogram", &b->hist)) != GPUSEG_OK ||
        (st = fill_u32(ctx, b->hist, n, 0, "histogram")) != GPUSEG_OK)
        return st;
    cl_mem pos = NULL;
    cl_uint niter = p->niter ? p->niter : 200;
    if (dbg && dbg->pos &&
        (st = buffer(ctx, 2 * n, sizeof(float), "debug positions", &pos)) != GPUSEG_OK)
        return st;
    if ((st = euler(ctx, b, H, W, niter, pos)) != GPUSEG_OK) {
        gpuseg__release(&pos);
        return st;
    }
    if (pos) {
        st = read_buf(ctx, pos, 2 * n * sizeof(float), dbg->pos, "debug positions");
        gpuseg__release(&pos);
        if (st != GPUSEG_OK)
            return st;
    }
    stage(ctx, tm, "threshold, Euler integration, histogram");

    /* 3. seeds: every seed holds > 10 end points, so there are at most n / 11 */
    cl_uint cap = (cl_uint)(n / 11 + 1), zero = 0;
    if ((st = buffer(ctx, cap, sizeof(cl_uint), "seeds", &b->seeds)) != GPUSEG_OK ||
        (st = buffer(ctx, 1, sizeof(cl_uint), "seed count", &b->nseeds)) != GPUSEG_OK ||
        (st = write_buf(ctx, b->nseeds, sizeof zero, &zero, "seed count")) != GPUSEG_OK ||
        (st = kernel(ctx, "dynamics", "masks_seeds", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ctx, k, 6, sizeof(cl_mem), &b->hist, sizeof(cl_uint), &ch,
                               sizeof(cl_uint), &cw, sizeof(cl_mem), &b->seeds, sizeof(cl_mem),
                               &b->nseeds, sizeof(cl_uint), &cap)) != GPUSEG_OK ||
        (st = run2(ctx, k, H, W)) != GPUSEG_OK)
        return st;
    cl_uint ns;
    if ((st = read_buf(ctx, b->nseeds, sizeof ns, &ns, "seed count")) != GPUSEG_OK)
        return st;
    if (ns > cap)
        return gpuseg__fail(ctx, GPUSEG_INTERNAL, "flows to masks: %u seeds exceed the bound %u",
                            ns, cap);
    *n_seeds_out = ns;
    if (ns == 0) {
        gpuseg__release(&b->end);
        gpuseg__release(&b->hist);
        gpuseg__release(&b->seeds);
        if ((st = buffer(ctx, n, sizeof(cl_uint), "labels", &b->labels)) != GPUSEG_OK)
            return st;
        return fill_u32(ctx, b->labels, n, 0, "labels");
    }

    /* 4. growth and painting (highest count wins, ties to the later seed in row-major order) */
    if ((st = buffer(ctx, (size_t)ns * 11, sizeof(cl_ushort), "seed regions", &b->region)) !=
            GPUSEG_OK ||
        (st = buffer(ctx, n, sizeof(cl_uint), "seed ids", &b->seedid)) != GPUSEG_OK ||
        (st = buffer(ctx, n, sizeof(cl_uint), "paint counts", &b->best)) != GPUSEG_OK ||
        (st = buffer(ctx, n, sizeof(cl_uint), "paint winners", &b->win)) != GPUSEG_OK ||
        (st = fill_u32(ctx, b->best, n, 0, "paint counts")) != GPUSEG_OK ||
        (st = fill_u32(ctx, b->win, n, 0, "paint winners")) != GPUSEG_OK)
        return st;
    if ((st = kernel(ctx, "dynamics", "masks_grow", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ctx, k, 8, sizeof(cl_mem), &b->hist, sizeof(cl_uint), &ch,
                               sizeof(cl_uint), &cw, sizeof(cl_mem), &b->seeds, sizeof(cl_uint),
                               &ns, sizeof(cl_mem), &b->region, sizeof(cl_mem), &b->seedid,
                               sizeof(cl_mem), &b->best)) != GPUSEG_OK ||
        (st = run1(ctx, k, ns)) != GPUSEG_OK)
        return st;
    if ((st = kernel(ctx, "dynamics", "masks_paint", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ctx, k, 7, sizeof(cl_mem), &b->hist, sizeof(cl_uint), &cw,
                               sizeof(cl_mem), &b->seeds, sizeof(cl_uint), &ns, sizeof(cl_mem),
                               &b->region, sizeof(cl_mem), &b->best, sizeof(cl_mem), &b->win)) !=
            GPUSEG_OK ||
        (st = run1(ctx, k, ns)) != GPUSEG_OK)
        return st;

    /* 5. every pixel takes the label of its end point's cell (0 when not followed) */
    gpuseg__release(&b->hist); /* the runtime keeps both until the kernels above are done */
    gpuseg__release(&b->best);
    if ((st = buffer(ctx, n, sizeof(cl_uint), "labels", &b->labels)) != GPUSEG_OK ||
        (st = kernel(ctx, "dynamics", "masks_assign", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ctx, k, 5, sizeof(cl_mem), &b->end, sizeof(cl_uint), &cn,
                               sizeof(cl_mem), &b->win, sizeof(cl_mem), &b->seedid, sizeof(cl_mem),
                               &b->labels)) != GPUSEG_OK ||
        (st = run1(ctx, k, n)) != GPUSEG_OK)
        return st;
    gpuseg__release(&b->end);
    gpuseg__release(&b->seeds);
    gpuseg__release(&b->region);
    gpuseg__release(&b->seedid);
    gpuseg__release(&b->win);
    return GPUSEG_OK;
}

/* Flow-error QC: err[l] (l = 1..n) = mean over mask l of (muY - dY/5)^2 + (muX - dX/5)^2, dP/5
 * read from the scaled flows b->F (equal to it on every mask pixel, all of which were followed). */
static gpuseg_status flow_errors(gpuseg_ctx *ctx, masks_bufs *b, uint32_t H, uint32_t W,
                                 uint32_t n_labels, const uint32_t *count, double *err) {
    const size_t n = (size_t)H * W;
    gpuseg_status st;
    cl_kernel k;
    if ((st = buffer(ctx, 2 * n, sizeof(float), "ideal flows", &b->mu)) != GPUSEG_OK)
        return st;
    if ((st = gpuseg__labels_to_flows_cl(ctx, b->labels, H, W, n_labels, b->mu)) != GPUSEG_OK)
        return gpuseg__wrap(ctx, st, "flow-error check");
    float *sums = NULL;
    if ((st = buffer(ctx, (size_t)n_labels * 4, sizeof(float), "flow-error sums", &b->sums)) !=
            GPUSEG_OK ||
        (st = kernel(ctx, "masks_fill", "masks_qc_sums", &k)) != GPUSEG_OK)
        return st;
    cl_uint cw = W, cn = (cl_uint)n, nl = n_labels;
    const scaled_layout sl = scaled_flows(ctx, H, W);
    if ((st = gpuseg__set_args(ctx, k, 12, sizeof(cl_mem), &b->labels, sizeof(cl_uint), &cw,
                               sizeof(cl_uint), &cn, sizeof(cl_mem), &b->F, sizeof(cl_uint), &sl.oy,
                               sizeof(cl_uint), &sl.ox, sizeof(cl_uint), &sl.rs, sizeof(cl_uint),
                               &sl.es, sizeof(cl_mem), &b->mu, sizeof(cl_mem), &b->box,
                               sizeof(cl_uint), &nl, sizeof(cl_mem), &b->sums)) != GPUSEG_OK)
        return st;
    size_t g = (size_t)n_labels * GPUSEG__MASKS_WG, l = GPUSEG__MASKS_WG;
    if ((st = gpuseg__run(ctx, k, 1, &g, &l)) != GPUSEG_OK)
        return st;
    sums = malloc((size_t)n_labels * 4 * sizeof *sums);
    if (!sums)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: flow-error table");
    if ((st = read_buf(ctx, b->sums, (size_t)n_labels * 16, sums, "flow-error sums")) ==
        GPUSEG_OK) {
        for (uint32_t i = 0; i < n_labels; i++) {
            double c = count[i + 1];
            double sy = (double)sums[4 * i] + sums[4 * i + 1];
            double sx = (double)sums[4 * i + 2] + sums[4 * i + 3];
            err[i + 1] = c > 0 ? sy / c + sx / c : NAN; /* scipy's mean of an empty label */
        }
    }
    free(sums);
    gpuseg__release(&b->mu);
    gpuseg__release(&b->sums);
    return st;
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

gpuseg_status gpuseg__masks_fill_holes(gpuseg_ctx *ctx, cl_mem labels, uint32_t H, uint32_t W,
                                       uint32_t n_labels, const uint32_t *count,
                                       const uint32_t *box, size_t scratch_cap) {
    const size_t n = (size_t)H * W;
    if (scratch_cap == 0)
        scratch_cap = FILL_SCRATCH_CAP;
    gpuseg_status st = GPUSEG_OK;
    masks_bufs bb, *b = &bb;
    memset(&bb, 0, sizeof bb);
    b->labels = labels;
    fill_job *jobs = malloc(((size_t)n_labels + 1) * sizeof *jobs);
    uint32_t *rows = NULL, *priolab = NULL;
    if (!jobs)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: hole-filling table");
    uint32_t nj = 0;
    uint64_t biggest = 0;
    for (uint32_t l = 1; l <= n_labels; l++) {
        const uint32_t *bx = box + 4 * (size_t)l;
        if (count[l] == 0 || bx[1] < bx[0] + 2 || bx[3] < bx[2] + 2)
            continue;
        fill_job *j = &jobs[nj++];
        j->label = l;
        j->y0 = bx[0];
        j->y1 = bx[1];
        j->x0 = bx[2];
        j->x1 = bx[3];
        j->area = (uint64_t)(bx[1] - bx[0] + 1) * (bx[3] - bx[2] + 1);
        if (j->area > biggest)
            biggest = j->area;
    }
    if (nj == 0)
        goto done;
    /* priority = rank by (box area, label): the outermost of nested masks has the larger box */
    qsort(jobs, nj, sizeof *jobs, cmp_job);
    rows = malloc((size_t)nj * 8 * sizeof *rows);
    priolab = malloc((size_t)nj * sizeof *priolab);
    if (!rows || !priolab) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: hole-filling table");
        goto done;
    }
    const uint64_t cap = biggest > scratch_cap ? biggest : scratch_cap;
    uint64_t used = 0, scratch_max = 0;
    for (uint32_t i = 0; i < nj; i++) {
        if (used + jobs[i].area > cap)
            used = 0; /* a new launch starts here (see the loop below) */
        uint32_t *r = rows + 8 * (size_t)i;
        r[0] = jobs[i].label;
        r[1] = jobs[i].y0;
        r[2] = jobs[i].y1;
        r[3] = jobs[i].x0;
        r[4] = jobs[i].x1;
        r[5] = (uint32_t)used;
        r[6] = i + 1;
        r[7] = 0;
        priolab[i] = jobs[i].label;
        used += jobs[i].area;
        if (used > scratch_max)
            scratch_max = used;
    }
    cl_kernel k;
    if ((st = buffer(ctx, (size_t)nj * 8, sizeof(uint32_t), "hole-filling jobs", &b->jobs)) !=
            GPUSEG_OK ||
        (st = write_buf(ctx, b->jobs, (size_t)nj * 32, rows, "hole-filling jobs")) != GPUSEG_OK ||
        (st = buffer(ctx, nj, sizeof(uint32_t), "hole-filling labels", &b->priolab)) != GPUSEG_OK ||
        (st = write_buf(ctx, b->priolab, (size_t)nj * 4, priolab, "hole-filling labels")) !=
            GPUSEG_OK ||
        (st = buffer(ctx, (size_t)scratch_max, 1, "hole-filling scratch", &b->scratch)) !=
            GPUSEG_OK ||
        (st = buffer(ctx, n, sizeof(uint32_t), "hole owners", &b->fillprio)) != GPUSEG_OK ||
        (st = fill_u32(ctx, b->fillprio, n, 0, "hole owners")) != GPUSEG_OK ||
        (st = kernel(ctx, "masks_fill", "masks_fill_holes", &k)) != GPUSEG_OK)
        goto done;
    /* launches: consecutive jobs whose scratch offsets increase share one launch */
    for (uint32_t s = 0; s < nj;) {
        uint32_t e = s + 1;
        while (e < nj && rows[8 * (size_t)e + 5] != 0)
            e++;
        cl_uint cw = W, base = s, cnt = e - s;
        if ((st = gpuseg__set_args(ctx, k, 7, sizeof(cl_mem), &b->labels, sizeof(cl_uint), &cw,
                                   sizeof(cl_mem), &b->jobs, sizeof(cl_uint), &base,
                                   sizeof(cl_uint), &cnt, sizeof(cl_mem), &b->scratch,
                                   sizeof(cl_mem), &b->fillprio)) != GPUSEG_OK)
            goto done;
        size_t g = (size_t)cnt * GPUSEG__MASKS_WG, l = GPUSEG__MASKS_WG;
        if ((st = gpuseg__run(ctx, k, 1, &g, &l)) != GPUSEG_OK)
            goto done;
        s = e;
    }
    if ((st = kernel(ctx, "masks_fill", "masks_fill_apply", &k)) != GPUSEG_OK)
        goto done;
    cl_uint cn = (cl_uint)n;
    if ((st = gpuseg__set_args(ctx, k, 4, sizeof(cl_mem), &b->labels, sizeof(cl_uint), &cn,
                               sizeof(cl_mem), &b->fillprio, sizeof(cl_mem), &b->priolab)) !=
            GPUSEG_OK ||
        (st = run1(ctx, k, n)) != GPUSEG_OK)
        goto done;
done:
    free(jobs);
    free(rows);
    free(priolab);
    b->labels = NULL; /* the caller's */
    bufs_release(b);
    return st;
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

gpuseg_status gpuseg__masks_run(gpuseg_ctx *ctx, cl_mem flows, int take_flows, uint32_t H,
                                uint32_t W, const gpuseg_masks_params *params,
                                gpuseg__masks_debug *dbg, cl_mem *labels_out, gpuseg_dtype *dtype,
                                uint32_t *n_masks) {
    gpuseg_masks_params p;
    if (params)
        p = *params;
    else
        gpuseg_masks_params_default(&p);
    gpuseg_status st = check_params(ctx, H, W, &p);
    if (st != GPUSEG_OK) {
        if (take_flows)
            gpuseg__release(&flows);
        return st;
    }
    const size_t n = (size_t)H * W;
    masks_bufs b;
    memset(&b, 0, sizeof b);
    tables t;
    memset(&t, 0, sizeof t);
    uint32_t n_out = 0, maxlab_qc = 0;
    gpuseg_dtype dt = GPUSEG_DTYPE_U16;
    cl_kernel k;

    uint32_t ns = 0;
    double tm = 0;
    stage(ctx, &tm, "start");
    if ((st = follow_and_seed(ctx, &b, &flows, take_flows, H, W, &p, dbg, &tm, &ns)) != GPUSEG_OK)
        goto fail;
    if (!(p.flow_threshold > 0)) /* no flow-error QC: the scaled flows are done with */
        gpuseg__release(&b.F);
    stage(ctx, &tm, "seeds, growth, labels");
    /* Every later table is sized by the number of seeds (~40 bytes each on the host), so the
     * object limit is checked here, before any of them is allocated. */
    const uint64_t maxobj =
        ctx->limits.max_objects ? ctx->limits.max_objects : GPUSEG_DEFAULT_MAX_OBJECTS;
    if (ns > maxobj) {
        char hint[96];
        st = gpuseg__fail(ctx, GPUSEG_TOO_LARGE,
                          "flows to masks: %u objects after seeding, over the limit of %llu (%s)",
                          ns, (unsigned long long)maxobj,
                          gpuseg__limit_hint(GPUSEG__LIMIT_OBJECTS, maxobj, hint, sizeof hint));
        goto fail;
    }
    if (dbg) {
        dbg->n_pre = 0;
        dbg->n_qc_removed = 0;
    }
    if (ns == 0)
        goto output;

    /* get_masks: drop masks above max_size_fraction, renumber by first appearance */
    if ((st = tables_alloc(ctx, &t, ns)) != GPUSEG_OK ||
        (st = label_stats(ctx, &b, H, W, ns, t.count, t.first, NULL)) != GPUSEG_OK)
        goto fail;
    const double big = (double)n * p.max_size_fraction; /* np.prod(shape) * fraction */
    for (uint32_t l = 1; l <= ns; l++)
        t.remove[l] = (double)t.count[l] > big;
    uint32_t n1 = gpuseg__masks_renumber(t.count, t.first, t.remove, ns, t.map);
    if (n1 == UINT32_MAX) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: renumbering table");
        goto fail;
    }
    if ((st = relabel(ctx, &b, n, t.map, ns + 1)) != GPUSEG_OK)
        goto fail;
    stage(ctx, &tm, "big masks, renumbering");
    if (dbg) {
        dbg->n_pre = n1;
        if (dbg->pre_labels &&
            (st = read_buf(ctx, b.labels, n * 4, dbg->pre_labels, "labels")) != GPUSEG_OK)
            goto fail;
    }
    if (n1 == 0)
        goto output;

    /* flow-error QC (no renumbering here, as in Cellpose) */
    if ((st = tables_alloc(ctx, &t, n1)) != GPUSEG_OK ||
        (st = label_stats(ctx, &b, H, W, n1, t.count, t.first, t.box)) != GPUSEG_OK)
        goto fail;
    maxlab_qc = n1;
    if (p.flow_threshold > 0) {
        if ((st = flow_errors(ctx, &b, H, W, n1, t.count, t.err)) != GPUSEG_OK)
            goto fail;
        maxlab_qc = 0;
        for (uint32_t l = 1; l <= n1; l++) {
            if (t.err[l] > (double)p.flow_threshold) {
                t.remove[l] = 1;
                if (dbg)
                    dbg->n_qc_removed++;
            } else {
                maxlab_qc = l;
            }
            if (dbg && dbg->flow_err && l <= dbg->flow_err_cap)
                dbg->flow_err[l - 1] = t.err[l];
        }
    }
    gpuseg__release(&b.F);
    stage(ctx, &tm, "flow-error QC");
    /* Cellpose: uint16 unless a label >= 65536 is left after QC */
    dt = maxlab_qc >= 65536 ? GPUSEG_DTYPE_U32 : GPUSEG_DTYPE_U16;
    /* counts by value after QC (removed labels become background) */
    for (uint32_t l = 1; l <= n1; l++)
        if (t.remove[l]) {
            t.count[0] += t.count[l];
            t.count[l] = 0;
            t.remove[l] = 0;
        }

    /* fill_holes_and_remove_small_masks: size filter, renumber, fill, size filter, renumber */
    uint32_t n2;
    uint32_t *box2 = NULL;
    if (p.min_size > 0) {
        gpuseg__masks_size_filter(t.count, n1, p.min_size, t.remove);
        /* first appearance order equals value order here (labels were numbered so) */
        n2 = gpuseg__masks_renumber(t.count, t.first, t.remove, n1, t.map);
    } else {
        /* no filter and no renumbering: values (with gaps) are kept for the fill */
        n2 = maxlab_qc;
        for (uint32_t l = 0; l <= n1; l++)
            t.map[l] = (l <= n2 && t.count[l] > 0) ? l : 0;
    }
    if (n2 == UINT32_MAX) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: renumbering table");
        goto fail;
    }
    if ((st = relabel(ctx, &b, n, t.map, n1 + 1)) != GPUSEG_OK)
        goto fail;
    if (n2 == 0)
        goto output;
    /* boxes and counts of the surviving labels under their new values */
    box2 = calloc(4 * ((size_t)n2 + 1), sizeof *box2);
    uint32_t *count2 = calloc((size_t)n2 + 1, sizeof *count2);
    if (!box2 || !count2) {
        free(box2);
        free(count2);
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: hole-filling table");
        goto fail;
    }
    for (uint32_t l = 1; l <= n1; l++) {
        uint32_t v = t.map[l];
        if (v && t.count[l] > 0) {
            memcpy(box2 + 4 * (size_t)v, t.box + 4 * (size_t)l, 4 * sizeof *box2);
            count2[v] = t.count[l];
        }
    }
    st = gpuseg__masks_fill_holes(ctx, b.labels, H, W, n2, count2, box2, 0);
    stage(ctx, &tm, "size filter, hole filling");
    /* which values existed before filling (Cellpose's find_objects slices) */
    uint8_t *present = (uint8_t *)box2; /* reuse: n2 + 1 bytes fit in the box table */
    for (uint32_t v = 0; v <= n2; v++)
        present[v] = count2[v] > 0;
    free(count2);
    if (st != GPUSEG_OK) {
        free(box2);
        goto fail;
    }
    if ((st = tables_alloc(ctx, &t, n2)) != GPUSEG_OK ||
        (st = label_stats(ctx, &b, H, W, n2, t.count, t.first, NULL)) != GPUSEG_OK) {
        free(box2);
        goto fail;
    }
    if (p.min_size > 0) {
        free(box2);
        gpuseg__masks_size_filter(t.count, n2, p.min_size, t.remove);
        n_out = gpuseg__masks_renumber(t.count, t.first, t.remove, n2, t.map);
        if (n_out == UINT32_MAX) {
            st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows to masks: renumbering table");
            goto fail;
        }
    } else {
        /* masks[slc][filled] = j + 1 with j counting the slices in value order */
        uint32_t j = 0;
        t.map[0] = 0;
        for (uint32_t v = 1; v <= n2; v++) {
            if (present[v])
                j++;
            t.map[v] = present[v] && t.count[v] > 0 ? j : 0;
            if (t.map[v] > n_out)
                n_out = t.map[v];
        }
        free(box2);
    }
    if ((st = relabel(ctx, &b, n, t.map, n2 + 1)) != GPUSEG_OK)
        goto fail;

    stage(ctx, &tm, "size filter, renumbering");
output:
    if (dt == GPUSEG_DTYPE_U16) {
        if ((st = buffer(ctx, n, sizeof(cl_ushort), "labels (uint16)", &b.out)) != GPUSEG_OK ||
            (st = kernel(ctx, "dynamics", "masks_to_u16", &k)) != GPUSEG_OK)
            goto fail;
        cl_uint cn = (cl_uint)n;
        if ((st = gpuseg__set_args(ctx, k, 3, sizeof(cl_mem), &b.labels, sizeof(cl_uint), &cn,
                                   sizeof(cl_mem), &b.out)) != GPUSEG_OK ||
            (st = run1(ctx, k, n)) != GPUSEG_OK)
            goto fail;
    } else {
        b.out = b.labels;
        b.labels = NULL;
    }
    cl_int err = clFinish(ctx->queue);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "flows to masks: clFinish");
        goto fail;
    }
    *labels_out = b.out;
    b.out = NULL;
    *dtype = dt;
    if (n_masks)
        *n_masks = n_out;
    st = GPUSEG_OK;
fail:
    if (take_flows)
        gpuseg__release(&flows); /* NULL once stage 1 has released it */
    bufs_release(&b);
    tables_free(&t);
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
    if (params)
        p = *params;
    else
        gpuseg_masks_params_default(&p);
    gpuseg_status st = check_params(ctx, H, W, &p);
    if (st != GPUSEG_OK)
        return st;
    const size_t n = (size_t)H * W;
    cl_mem dflows = NULL, dlab = NULL;
    gpuseg_image *img = NULL;
    gpuseg_dtype dt;
    if ((st = buffer(ctx, 3 * n, sizeof(float), "flows", &dflows)) != GPUSEG_OK ||
        (st = write_buf(ctx, dflows, 3 * n * sizeof(float), flows, "flows")) != GPUSEG_OK)
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
    if ((st = read_buf(ctx, dlab, n * gpuseg_dtype_size(dt), img->data, "labels")) != GPUSEG_OK)
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
