/* flow/masks3d.c: flows -> masks for a volume, as Cellpose 3.1.1.3 resize_and_compute_masks with
 * do_3D=True on the CPU (docs/masks.md, "Volumes"): threshold and scaling, Euler integration by
 * grid_sample (device, kernels/masks3d.cl), end-point histogram and 5x5x5 seeds (device), seed
 * growth in 11x11x11 windows, painting, assignment, big-mask removal and renumbering, then
 * fill_holes_and_remove_small_masks with 3-D hole filling (host). No flow-error QC: Cellpose
 * skips it when do_3D is set. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flow/masks_internal.h"

#define M3_WIN  11 /* seed growth window side (Cellpose: slices seed-5 .. seed+5) */
#define M3_WIN3 (M3_WIN * M3_WIN * M3_WIN)

/* The run's device data (on PoCL, host memory too), released in one place (m3_free). The
 * followed voxels are those with cellprob > threshold, in row-major order (d_list, kept for the
 * assignment in m3_seeding: the caller's flows are not read after m3_follow). */
typedef struct m3_run {
    uint32_t Z, H, W;
    size_t nvox;
    uint32_t n; /* followed voxels */
    uint32_t *lab;
    cl_mem d_im, d_list, d_tz, d_ty, d_tx, d_end, d_hist, d_seeds, d_ns;
} m3_run;

static void m3_free(m3_run *r) {
    cl_mem *bufs[] = {&r->d_im,  &r->d_list, &r->d_tz,    &r->d_ty, &r->d_tx,
                      &r->d_end, &r->d_hist, &r->d_seeds, &r->d_ns};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        gpuseg__release(bufs[i]);
}

/* Followed voxels per work-item of m3_euler on a CPU device (its two lanes take them in turn;
 * PoCL runs a work-group's items one after the other). Other devices: one voxel per work-item,
 * for occupancy. */
#define M3_PER_ITEM_CPU 64

/* Voxels per mapped chunk when the scaled flows and the voxel list are written into their device
 * buffers (no whole host copy: 1 Mi voxels, 12 MiB at most mapped at once). */
#define M3_CHUNK ((size_t)1 << 20)

/* Flags of the whole-volume buffers: on a CPU device, CL_MEM_ALLOC_HOST_PTR, so that the memory is
 * allocated when the buffer is created (a refusal is then an error to report) rather than at its
 * first use (PoCL aborts when that fails). */
static cl_mem_flags m3_flags(const gpuseg_ctx *ctx, cl_mem_flags f) {
    return ctx->dev.type == GPUSEG_DEVICE_CPU ? f | CL_MEM_ALLOC_HOST_PTR : f;
}

/* Maps bytes [off, off + bytes) of buf (blocking); NULL and the message on failure. */
static void *m3_map(gpuseg_ctx *ctx, cl_mem buf, cl_map_flags flags, size_t off, size_t bytes,
                    const char *what, gpuseg_status *st) {
    cl_int err = CL_SUCCESS;
    void *ptr =
        clEnqueueMapBuffer(ctx->queue, buf, CL_TRUE, flags, off, bytes, 0, NULL, NULL, &err);
    if (!ptr || err != CL_SUCCESS)
        *st = gpuseg__fail_cl(ctx, err, "flows to masks (3-D): mapping the %s (%zu bytes)", what,
                              bytes);
    return ptr;
}

/* Unmaps ptr from buf; keeps an earlier failure in *st. */
static void m3_unmap(gpuseg_ctx *ctx, cl_mem buf, void *ptr, const char *what, gpuseg_status *st) {
    if (!ptr)
        return;
    cl_int err = clEnqueueUnmapMemObject(ctx->queue, buf, ptr, 0, NULL, NULL);
    if (err != CL_SUCCESS && *st == GPUSEG_OK)
        *st = gpuseg__fail_cl(ctx, err, "flows to masks (3-D): unmapping the %s", what);
}

/* Normalised start coordinates of every index along an axis of length L, in PyTorch's float32
 * order: p / (L-1), * 2, - 1. */
static void m3_axis(float *t, uint32_t L) {
    const float s = (float)(L - 1);
    for (uint32_t i = 0; i < L; i++) {
        float v = (float)i / s;
        v = v * 2.0f;
        t[i] = v - 1.0f;
    }
}

/* Stage 1: threshold, dP * fg / 5 * (2 / (L-1)) per axis as numpy then PyTorch round it, and
 * the list of followed voxels, written chunk by chunk straight into the device buffers (host);
 * Euler integration and histogram (device). own: NULL, or flows itself when the caller hands
 * them over (gpuseg_flows_to_masks3d_consume): each chunk's pages of the four planes are then
 * given back to the system once read, so that the flows (16 bytes a voxel) and their scaled
 * copy (12) are not both resident. */
static gpuseg_status m3_follow(gpuseg_ctx *ctx, m3_run *r, const float *flows, float *own,
                               const gpuseg_masks_params *p) {
    const size_t nv = r->nvox;
    const float *dz = flows, *dy = flows + nv, *dx = flows + 2 * nv, *cp = flows + 3 * nv;
    const float sx = (float)(2.0 / (double)(r->W - 1)), sy = (float)(2.0 / (double)(r->H - 1)),
                sz = (float)(2.0 / (double)(r->Z - 1));
    const size_t nchunk = (nv + M3_CHUNK - 1) / M3_CHUNK;
    uint32_t *cnt = malloc(nchunk * sizeof *cnt); /* followed voxels per chunk */
    float *tz = malloc((size_t)(r->Z + r->H + r->W) * sizeof *tz);
    gpuseg_status st = GPUSEG_OK;
    if (!cnt || !tz) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY,
                          "flows to masks (3-D): no host memory for %zu voxels", nv);
        goto done;
    }
    uint32_t n = 0;
    for (size_t c = 0; c < nchunk; c++) {
        const size_t v1 = c + 1 < nchunk ? (c + 1) * M3_CHUNK : nv;
        uint32_t k = 0;
        for (size_t i = c * M3_CHUNK; i < v1; i++)
            k += cp[i] > p->cellprob_threshold;
        cnt[c] = k;
        n += k;
    }
    r->n = n;
    if (n == 0)
        goto done;
    if ((st = gpuseg__buffer(ctx, m3_flags(ctx, CL_MEM_READ_ONLY), (3 * nv + 1) * sizeof(float),
                             "3-D scaled flows", &r->d_im)) != GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, m3_flags(ctx, CL_MEM_READ_ONLY), n * sizeof(uint32_t),
                             "3-D voxel list", &r->d_list)) != GPUSEG_OK)
        goto done;
    size_t off = 0; /* list entries written */
    for (size_t c = 0; c < nchunk && st == GPUSEG_OK; c++) {
        const size_t v0 = c * M3_CHUNK, v1 = c + 1 < nchunk ? v0 + M3_CHUNK : nv;
        const size_t pad = v1 == nv; /* the float after the last voxel (read, not used) */
        float *im = m3_map(ctx, r->d_im, CL_MAP_WRITE_INVALIDATE_REGION, 3 * v0 * sizeof *im,
                           (3 * (v1 - v0) + pad) * sizeof *im, "scaled flows", &st);
        if (im && pad)
            im[3 * (v1 - v0)] = 0.0f;
        uint32_t *list = NULL;
        if (im && cnt[c])
            list = m3_map(ctx, r->d_list, CL_MAP_WRITE_INVALIDATE_REGION, off * sizeof *list,
                          cnt[c] * sizeof *list, "voxel list", &st);
        if (im && (list || !cnt[c])) {
            uint32_t k = 0;
            for (size_t i = v0; i < v1; i++) {
                const int fg = cp[i] > p->cellprob_threshold;
                float a = fg ? dx[i] / 5.0f : 0.0f, b = fg ? dy[i] / 5.0f : 0.0f,
                      cc = fg ? dz[i] / 5.0f : 0.0f;
                float *o = im + 3 * (i - v0);
                o[0] = a * sx;
                o[1] = b * sy;
                o[2] = cc * sz;
                if (fg)
                    list[k++] = (uint32_t)i;
            }
            off += k;
        }
        m3_unmap(ctx, r->d_list, list, "voxel list", &st);
        m3_unmap(ctx, r->d_im, im, "scaled flows", &st);
        for (int k = 0; own && k < 4; k++)
            gpuseg__drop_pages(own + (size_t)k * nv + v0, (v1 - v0) * sizeof *own);
    }
    if (st != GPUSEG_OK)
        goto done;
    float *ty = tz + r->Z, *tx = ty + r->H;
    m3_axis(tz, r->Z);
    m3_axis(ty, r->H);
    m3_axis(tx, r->W);
    if ((st = gpuseg__upload(ctx, tz, r->Z * sizeof *tz, "z coordinates", &r->d_tz)) != GPUSEG_OK ||
        (st = gpuseg__upload(ctx, ty, r->H * sizeof *ty, "y coordinates", &r->d_ty)) != GPUSEG_OK ||
        (st = gpuseg__upload(ctx, tx, r->W * sizeof *tx, "x coordinates", &r->d_tx)) != GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, m3_flags(ctx, CL_MEM_READ_WRITE), n * sizeof(uint32_t),
                             "3-D end points", &r->d_end)) != GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, m3_flags(ctx, CL_MEM_READ_WRITE), nv * sizeof(uint32_t),
                             "3-D histogram", &r->d_hist)) != GPUSEG_OK)
        goto done;
    const cl_uint zero = 0;
    cl_int err = clEnqueueFillBuffer(ctx->queue, r->d_hist, &zero, sizeof zero, 0,
                                     nv * sizeof(uint32_t), 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "flows to masks (3-D): clearing the histogram");
        goto done;
    }
    cl_kernel k;
    const cl_int D = (cl_int)r->Z, H = (cl_int)r->H, W = (cl_int)r->W;
    const cl_uint niter = p->niter ? p->niter : 200, cn = n,
                  per = ctx->dev.type == GPUSEG_DEVICE_CPU ? M3_PER_ITEM_CPU : 1;
    const size_t g = (n + per - 1) / per;
    if ((st = gpuseg__kernel(ctx, "masks3d", "m3_euler", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ctx, k, 13, sizeof(cl_mem), &r->d_im, sizeof(cl_mem), &r->d_list,
                               sizeof(cl_uint), &cn, sizeof(cl_mem), &r->d_tz, sizeof(cl_mem),
                               &r->d_ty, sizeof(cl_mem), &r->d_tx, sizeof D, &D, sizeof H, &H,
                               sizeof W, &W, sizeof niter, &niter, sizeof per, &per, sizeof(cl_mem),
                               &r->d_end, sizeof(cl_mem), &r->d_hist)) != GPUSEG_OK ||
        (st = gpuseg__run(ctx, k, 1, &g, NULL)) != GPUSEG_OK)
        goto done;
done:
    free(cnt);
    free(tz);
    /* the enqueued kernel keeps what it reads until it ends (OpenCL's reference counting) */
    gpuseg__release(&r->d_im);
    gpuseg__release(&r->d_tz);
    gpuseg__release(&r->d_ty);
    gpuseg__release(&r->d_tx);
    return st;
}

/* Stage 2 (device): seeds; (host) sort, growth, painting into r->lab, assignment: the k-th
 * followed voxel (m3_follow's list) takes the painted cell of its end point. Histogram, list and
 * end points are read through mappings (no copy on a device that shares host memory); the
 * histogram's mapping then holds the painted cells. */
static gpuseg_status m3_seeding(gpuseg_ctx *ctx, m3_run *r, uint32_t *n_seeds_out) {
    const size_t nv = r->nvox;
    const cl_uint cap = r->n / 11 + 1;
    gpuseg_status st;
    cl_kernel k;
    const cl_int D = (cl_int)r->Z, H = (cl_int)r->H, W = (cl_int)r->W;
    const cl_uint zero = 0;
    const size_t g = nv;
    uint32_t ns = 0;
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, cap * sizeof(uint32_t), "3-D seeds",
                             &r->d_seeds)) != GPUSEG_OK ||
        (st = gpuseg__upload(ctx, &zero, sizeof zero, "seed count", &r->d_ns)) != GPUSEG_OK ||
        (st = gpuseg__kernel(ctx, "masks3d", "m3_seeds", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ctx, k, 7, sizeof(cl_mem), &r->d_hist, sizeof D, &D, sizeof H, &H,
                               sizeof W, &W, sizeof(cl_mem), &r->d_seeds, sizeof(cl_mem), &r->d_ns,
                               sizeof cap, &cap)) != GPUSEG_OK ||
        (st = gpuseg__run(ctx, k, 1, &g, NULL)) != GPUSEG_OK ||
        (st = gpuseg__read_buf(ctx, r->d_ns, sizeof ns, &ns, "seed count")) != GPUSEG_OK)
        return st;
    if (ns > cap)
        return gpuseg__fail(ctx, GPUSEG_INTERNAL,
                            "flows to masks (3-D): %u seeds exceed the bound %u", ns, cap);
    const uint64_t maxobj =
        ctx->limits.max_objects ? ctx->limits.max_objects : GPUSEG_DEFAULT_MAX_OBJECTS;
    char hint[96];
    if (ns > maxobj)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE,
                            "flows to masks (3-D): %u objects after seeding, over the limit of "
                            "%llu (%s)",
                            ns, (unsigned long long)maxobj,
                            gpuseg__limit_hint(GPUSEG__LIMIT_OBJECTS, maxobj, hint, sizeof hint));
    uint32_t *sidx = malloc((ns ? ns : 1) * sizeof *sidx);
    uint32_t *cnt = malloc((ns ? ns : 1) * sizeof *cnt);
    uint32_t *order = malloc((ns ? ns : 1) * sizeof *order);
    uint32_t *hist = NULL, *end = NULL, *list = NULL;
    if (!sidx || !cnt || !order) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY,
                          "flows to masks (3-D): no host memory for %u seeds", ns);
        goto done;
    }
    if (ns &&
        (st = gpuseg__read_buf(ctx, r->d_seeds, ns * sizeof *sidx, sidx, "seeds")) != GPUSEG_OK)
        goto done;
    gpuseg__release(&r->d_seeds);
    gpuseg__release(&r->d_ns);
    if (!(hist = m3_map(ctx, r->d_hist, CL_MAP_READ | CL_MAP_WRITE, 0, nv * sizeof *hist,
                        "histogram", &st)) ||
        !(end = m3_map(ctx, r->d_end, CL_MAP_READ, 0, (size_t)r->n * sizeof *end, "end points",
                       &st)) ||
        !(list = m3_map(ctx, r->d_list, CL_MAP_READ, 0, (size_t)r->n * sizeof *list, "voxel list",
                        &st)))
        goto done;
    /* Cellpose lists the seeds in row-major order (torch.nonzero) and paints them in the order
     * of torch.argsort of their counts (later seeds win). That sort is not stable, but on the
     * CPU it is libstdc++'s std::sort, a fixed order for equal counts, which
     * gpuseg__torch_argsort_u32 replays (docs/masks.md, "Volumes"). */
    qsort(sidx, ns, sizeof *sidx, gpuseg__cmp_u32);
    for (uint32_t i = 0; i < ns; i++)
        cnt[i] = hist[sidx[i]];
    gpuseg__torch_argsort_u32(cnt, order, ns);
    /* paint into r->lab (seed rank + 1 per histogram cell) */
    memset(r->lab, 0, nv * sizeof *r->lab);
    uint8_t cur[M3_WIN3], nxt[M3_WIN3], ok[M3_WIN3];
    const size_t HW = (size_t)r->H * r->W;
    for (uint32_t s = 0; s < ns; s++) {
        const uint32_t v = sidx[order[s]];
        const int z = (int)(v / HW), y = (int)((v % HW) / r->W), x = (int)(v % r->W);
        for (int a = 0; a < M3_WIN; a++)
            for (int b = 0; b < M3_WIN; b++)
                for (int c = 0; c < M3_WIN; c++) {
                    const int zz = z + a - 5, yy = y + b - 5, xx = x + c - 5;
                    const int in = zz >= 0 && zz < (int)r->Z && yy >= 0 && yy < (int)r->H &&
                                   xx >= 0 && xx < (int)r->W;
                    ok[(a * M3_WIN + b) * M3_WIN + c] =
                        in && hist[(size_t)zz * HW + (size_t)yy * r->W + (size_t)xx] > 2;
                }
        memset(cur, 0, sizeof cur);
        cur[(5 * M3_WIN + 5) * M3_WIN + 5] = 1;
        for (int it = 0; it < 5; it++) {
            for (int a = 0; a < M3_WIN; a++)
                for (int b = 0; b < M3_WIN; b++)
                    for (int c = 0; c < M3_WIN; c++) {
                        uint8_t m = 0;
                        for (int da = a > 0 ? -1 : 0; da <= (a < M3_WIN - 1 ? 1 : 0) && !m; da++)
                            for (int db = b > 0 ? -1 : 0; db <= (b < M3_WIN - 1 ? 1 : 0) && !m;
                                 db++)
                                for (int dc = c > 0 ? -1 : 0; dc <= (c < M3_WIN - 1 ? 1 : 0); dc++)
                                    if (cur[((a + da) * M3_WIN + b + db) * M3_WIN + c + dc]) {
                                        m = 1;
                                        break;
                                    }
                        const int q = (a * M3_WIN + b) * M3_WIN + c;
                        nxt[q] = m && ok[q];
                    }
            memcpy(cur, nxt, sizeof cur);
        }
        for (int a = 0; a < M3_WIN; a++)
            for (int b = 0; b < M3_WIN; b++)
                for (int c = 0; c < M3_WIN; c++)
                    if (cur[(a * M3_WIN + b) * M3_WIN + c])
                        r->lab[(size_t)(z + a - 5) * HW + (size_t)(y + b - 5) * r->W +
                               (size_t)(x + c - 5)] = s + 1;
    }
    /* assignment: the histogram is done with; its mapping takes the painted cells */
    uint32_t *win = hist;
    memcpy(win, r->lab, nv * sizeof *win);
    memset(r->lab, 0, nv * sizeof *r->lab);
    for (size_t q = 0; q < r->n; q++)
        r->lab[list[q]] = win[end[q]];
    *n_seeds_out = ns;
done:
    m3_unmap(ctx, r->d_list, list, "voxel list", &st);
    m3_unmap(ctx, r->d_end, end, "end points", &st);
    m3_unmap(ctx, r->d_hist, hist, "histogram", &st);
    gpuseg__release(&r->d_list);
    gpuseg__release(&r->d_end);
    gpuseg__release(&r->d_hist);
    free(sidx);
    free(cnt);
    free(order);
    return st;
}

/* Per-value counts and first voxels of lab (values 0..nval). */
static void m3_stats(const uint32_t *lab, size_t nv, uint32_t nval, uint32_t *count,
                     uint32_t *first) {
    memset(count, 0, ((size_t)nval + 1) * sizeof *count);
    for (size_t i = 0; i <= nval; i++)
        first[i] = UINT32_MAX;
    for (size_t i = 0; i < nv; i++) {
        const uint32_t l = lab[i];
        if (count[l]++ == 0)
            first[l] = (uint32_t)i;
    }
}

/* Applies map (value -> new value) to lab; returns nothing. */
static void m3_apply(uint32_t *lab, size_t nv, const uint32_t *map) {
    for (size_t i = 0; i < nv; i++)
        lab[i] = map[lab[i]];
}

/* fastremap.renumber after removing the values flagged in remove (may be NULL): first
 * appearance order. Returns the new largest label, UINT32_MAX when out of memory. */
static uint32_t m3_renumber(uint32_t *lab, size_t nv, uint32_t nval, const uint8_t *remove,
                            uint32_t *count, uint32_t *first, uint32_t *map) {
    m3_stats(lab, nv, nval, count, first);
    const uint32_t n = gpuseg__masks_renumber(count, first, remove, nval, map);
    if (n != UINT32_MAX)
        m3_apply(lab, nv, map);
    return n;
}

/* Cellpose's fill loop (utils.fill_holes_and_remove_small_masks) in 3-D: for each value i in
 * 1..nval present when the loop starts (find_objects boxes), in value order and on the current
 * state, the voxels of its box that are not i and not 6-connected to the box's border through
 * such voxels (fill_voids.fill on the box) become j+1, together with the voxels of i (j counts
 * the values present at the start). Returns the number j. */
static gpuseg_status m3_fill(gpuseg_ctx *ctx, m3_run *r, uint32_t nval, uint32_t *nj) {
    const size_t HW = (size_t)r->H * r->W;
    uint32_t *box = malloc(((size_t)nval + 1) * 6 * sizeof *box);
    uint8_t *outside = NULL;
    uint32_t *stack = NULL;
    if (!box) {
        free(box);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY,
                            "flows to masks (3-D): no host memory for "
                            "mask boxes");
    }
    for (size_t l = 0; l <= nval; l++) {
        box[6 * l] = box[6 * l + 2] = box[6 * l + 4] = UINT32_MAX;
        box[6 * l + 1] = box[6 * l + 3] = box[6 * l + 5] = 0;
    }
    for (uint32_t z = 0; z < r->Z; z++)
        for (uint32_t y = 0; y < r->H; y++)
            for (uint32_t x = 0; x < r->W; x++) {
                const uint32_t l = r->lab[z * HW + (size_t)y * r->W + x];
                if (!l)
                    continue;
                uint32_t *b = box + 6 * (size_t)l;
                if (z < b[0])
                    b[0] = z;
                if (z > b[1])
                    b[1] = z;
                if (y < b[2])
                    b[2] = y;
                if (y > b[3])
                    b[3] = y;
                if (x < b[4])
                    b[4] = x;
                if (x > b[5])
                    b[5] = x;
            }
    size_t maxbox = 0;
    for (size_t l = 1; l <= nval; l++)
        if (box[6 * l] != UINT32_MAX) {
            const size_t n = (size_t)(box[6 * l + 1] - box[6 * l] + 1) *
                             (box[6 * l + 3] - box[6 * l + 2] + 1) *
                             (box[6 * l + 5] - box[6 * l + 4] + 1);
            if (n > maxbox)
                maxbox = n;
        }
    outside = malloc(maxbox ? maxbox : 1);
    stack = malloc((maxbox ? maxbox : 1) * sizeof *stack);
    if (!outside || !stack) {
        free(box);
        free(outside);
        free(stack);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY,
                            "flows to masks (3-D): no host memory for "
                            "hole filling (%zu voxels)",
                            maxbox);
    }
    uint32_t j = 0;
    for (uint32_t l = 1; l <= nval; l++) {
        const uint32_t *b = box + 6 * (size_t)l;
        if (b[0] == UINT32_MAX)
            continue;
        const uint32_t bz = b[1] - b[0] + 1, by = b[3] - b[2] + 1, bx = b[5] - b[4] + 1;
        const size_t bn = (size_t)bz * by * bx;
#define M3_AT(a, c, d) r->lab[(size_t)(b[0] + (a)) * HW + (size_t)(b[2] + (c)) * r->W + b[4] + (d)]
        memset(outside, 0, bn);
        size_t sp = 0;
        /* seeds, as fill_voids 2.1's initialize_stack (on the Fortran-ordered box: its x, y, z
         * are our z, y, x): each pair of opposite faces is scanned as one sequence per face
         * (faces x = 0 / x = last: y outer, z inner; y = 0 / last: x outer, z inner; z = 0 /
         * last: x outer, y inner) and only the first non-l voxel of each run of the sequence
         * is a seed. A run goes on across the sequence's line breaks, so a border voxel that
         * starts a line right after a line ending in non-l voxels is not a seed, and a hole
         * reached only through such voxels is filled (Cellpose's 3-D masks carry this). */
        for (int f = 0; f < 6; f++) {
            const int face = f >> 1, last = f & 1;
            const uint32_t n_out = face == 0 ? by : bx, n_in = face == 2 ? by : bz;
            int placed = 0;
            for (uint32_t o = 0; o < n_out; o++)
                for (uint32_t i = 0; i < n_in; i++) {
                    uint32_t a, c, d;
                    if (face == 0) { /* x faces: (z = i, y = o) */
                        a = i;
                        c = o;
                        d = last ? bx - 1 : 0;
                    } else if (face == 1) { /* y faces: (z = i, x = o) */
                        a = i;
                        c = last ? by - 1 : 0;
                        d = o;
                    } else { /* z faces: (y = i, x = o) */
                        a = last ? bz - 1 : 0;
                        c = i;
                        d = o;
                    }
                    if (M3_AT(a, c, d) == l) {
                        placed = 0;
                        continue;
                    }
                    const size_t q = ((size_t)a * by + c) * bx + d;
                    if (!placed && !outside[q]) {
                        outside[q] = 1;
                        stack[sp++] = (uint32_t)q;
                    }
                    placed = 1;
                }
        }
        while (sp) {
            const size_t q = stack[--sp];
            const uint32_t a = (uint32_t)(q / ((size_t)by * bx)), c = (uint32_t)((q / bx) % by),
                           d = (uint32_t)(q % bx);
            const int nb[6][3] = {{-1, 0, 0}, {1, 0, 0},  {0, -1, 0},
                                  {0, 1, 0},  {0, 0, -1}, {0, 0, 1}};
            for (int e = 0; e < 6; e++) {
                const int na = (int)a + nb[e][0], nc = (int)c + nb[e][1], nd = (int)d + nb[e][2];
                if (na < 0 || na >= (int)bz || nc < 0 || nc >= (int)by || nd < 0 || nd >= (int)bx)
                    continue;
                const size_t nq = ((size_t)na * by + (size_t)nc) * bx + (size_t)nd;
                if (outside[nq] || M3_AT(na, nc, nd) == l)
                    continue;
                outside[nq] = 1;
                stack[sp++] = (uint32_t)nq;
            }
        }
        /* fill_voids.fill(masks[slc] == l): everything not reached from the border; an empty
         * mask (overwritten by an earlier fill) has no voxel to fill and keeps its number */
        int any = 0;
        for (size_t q = 0; q < bn && !any; q++)
            any = !outside[q];
        if (any)
            for (uint32_t a = 0; a < bz; a++)
                for (uint32_t c = 0; c < by; c++)
                    for (uint32_t d = 0; d < bx; d++)
                        if (!outside[((size_t)a * by + c) * bx + d])
                            M3_AT(a, c, d) = j + 1;
#undef M3_AT
        j++;
    }
    free(box);
    free(outside);
    free(stack);
    *nj = j;
    return GPUSEG_OK;
}

/* Cellpose's remove_small_masks on the n values of lab (its positional quirk included,
 * gpuseg__masks_size_filter), then renumbering; the tables hold n + 1 entries. Returns the new
 * count, UINT32_MAX when out of memory. */
static uint32_t m3_size_filter(uint32_t *lab, size_t nv, uint32_t n, int32_t min_size,
                               uint8_t *remove, uint32_t *count, uint32_t *first, uint32_t *map) {
    m3_stats(lab, nv, n, count, first);
    memset(remove, 0, (size_t)n + 1);
    gpuseg__masks_size_filter(count, n, min_size, remove);
    return m3_renumber(lab, nv, n, remove, count, first, map);
}

/* Big-mask removal and renumbering (get_masks_torch's tail), then
 * fill_holes_and_remove_small_masks. ns: the number of seed labels in r->lab. */
static gpuseg_status m3_finish(gpuseg_ctx *ctx, m3_run *r, uint32_t ns,
                               const gpuseg_masks_params *p, uint32_t *n_out) {
    const size_t nv = r->nvox;
    const size_t tab = (size_t)ns + 1;
    uint32_t *count = malloc(tab * sizeof *count), *first = malloc(tab * sizeof *first),
             *map = malloc(tab * sizeof *map);
    uint8_t *remove = calloc(tab, 1);
    gpuseg_status st = GPUSEG_OK;
    uint32_t n = 0;
    if (!count || !first || !map || !remove) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY,
                          "flows to masks (3-D): no host memory for %u "
                          "masks",
                          ns);
        goto done;
    }
    m3_stats(r->lab, nv, ns, count, first);
    const double big = (double)nv * p->max_size_fraction;
    for (uint32_t l = 1; l <= ns; l++)
        remove[l] = count[l] > 0 && (double)count[l] > big;
    if ((n = m3_renumber(r->lab, nv, ns, remove, count, first, map)) == UINT32_MAX)
        goto oom;
    if ((st = gpuseg__check_cancel(ctx, "flows to masks (3-D)")) != GPUSEG_OK)
        goto done;
    /* fill_holes_and_remove_small_masks: size filter (Cellpose's positional quirk), fill, size
     * filter again */
    if (p->min_size > 0) {
        if ((n = m3_size_filter(r->lab, nv, n, p->min_size, remove, count, first, map)) ==
            UINT32_MAX)
            goto oom;
    }
    uint32_t j = 0;
    if ((st = m3_fill(ctx, r, n, &j)) != GPUSEG_OK)
        goto done;
    n = j;
    gpuseg__progress(ctx, "masks", 3, 4, 0.9);
    if (p->min_size > 0) {
        if ((n = m3_size_filter(r->lab, nv, n, p->min_size, remove, count, first, map)) ==
            UINT32_MAX)
            goto oom;
    } else {
        n = 0;
        for (size_t i = 0; i < nv; i++)
            if (r->lab[i] > n)
                n = r->lab[i];
    }
    *n_out = n;
    goto done;
oom:
    st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY,
                      "flows to masks (3-D): no host memory to renumber "
                      "%u masks",
                      ns);
done:
    free(count);
    free(first);
    free(map);
    free(remove);
    return st;
}

/* gpuseg_flows_to_masks3d; own: NULL, or flows when handed over (m3_follow). */
static gpuseg_status m3_masks(gpuseg_ctx *ctx, const float *flows, float *own, uint32_t Z,
                              uint32_t H, uint32_t W, const gpuseg_masks_params *params,
                              uint32_t *labels_out, uint32_t *n_masks) {
    gpuseg__clear_error(ctx);
    if (!ctx || !flows || !labels_out)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "flows to masks (3-D): NULL argument");
    if (Z < 2 || H < 2 || W < 2)
        return gpuseg__fail(
            ctx, GPUSEG_INVALID_ARGUMENT,
            "flows to masks (3-D): volume %u x %u x %u has a side below 2 (Cellpose "
            "divides by side - 1)",
            Z, H, W);
    if ((uint64_t)Z * H * W > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE,
                            "flows to masks (3-D): %u x %u x %u voxels exceed the limit (%llu)", Z,
                            H, W, (unsigned long long)GPUSEG_MAX_IMAGE_PIXELS);
    gpuseg_masks_params p;
    if (params)
        p = *params;
    else
        gpuseg_masks_params_default(&p);
    if (!(p.max_size_fraction >= 0) || isnan(p.cellprob_threshold))
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "flows to masks (3-D): max_size_fraction must be >= 0 and "
                            "cellprob_threshold a number");
    const size_t nv = (size_t)Z * H * W;
    static const char *const names[4] = {"dZ", "dY", "dX", "cellprob"};
    size_t bad = 0, first_bad = 0;
    for (size_t i = 0; i < 4 * nv; i++)
        if (!isfinite(flows[i]) && bad++ == 0)
            first_bad = i;
    if (bad) {
        const size_t v = first_bad % nv;
        return gpuseg__fail(ctx, GPUSEG_FORMAT,
                            "flows contain %zu NaN or infinite value%s (first: %s at z %zu, y %zu, "
                            "x %zu)",
                            bad, bad == 1 ? "" : "s", names[first_bad / nv], v / ((size_t)H * W),
                            (v / W) % H, v % W);
    }
    m3_run r;
    memset(&r, 0, sizeof r);
    r.Z = Z;
    r.H = H;
    r.W = W;
    r.nvox = nv;
    r.lab = labels_out;
    uint32_t ns = 0, n = 0;
    gpuseg_status st;
    gpuseg__progress(ctx, "masks", 0, 4, 0.0);
    if ((st = gpuseg__check_cancel(ctx, "flows to masks (3-D)")) != GPUSEG_OK ||
        (st = m3_follow(ctx, &r, flows, own, &p)) != GPUSEG_OK)
        goto done;
    if (r.n == 0) {
        memset(labels_out, 0, nv * sizeof *labels_out);
        gpuseg__progress(ctx, "masks", 4, 4, 1.0);
        goto done;
    }
    if ((st = gpuseg__check_cancel(ctx, "flows to masks (3-D)")) != GPUSEG_OK)
        goto done;
    cl_int err = clFinish(ctx->queue);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "flows to masks (3-D): Euler integration");
        goto done;
    }
    gpuseg__progress(ctx, "masks", 1, 4, 0.7);
    if ((st = gpuseg__check_cancel(ctx, "flows to masks (3-D)")) != GPUSEG_OK ||
        (st = m3_seeding(ctx, &r, &ns)) != GPUSEG_OK)
        goto done;
    gpuseg__progress(ctx, "masks", 2, 4, 0.8);
    if ((st = gpuseg__check_cancel(ctx, "flows to masks (3-D)")) != GPUSEG_OK ||
        (st = m3_finish(ctx, &r, ns, &p, &n)) != GPUSEG_OK)
        goto done;
    gpuseg__progress(ctx, "masks", 4, 4, 1.0);
done:
    m3_free(&r);
    if (st != GPUSEG_OK)
        memset(labels_out, 0, nv * sizeof *labels_out);
    else if (n_masks)
        *n_masks = n;
    return st;
}

gpuseg_status gpuseg_flows_to_masks3d(gpuseg_ctx *ctx, const float *flows, uint32_t Z, uint32_t H,
                                      uint32_t W, const gpuseg_masks_params *params,
                                      uint32_t *labels_out, uint32_t *n_masks) {
    return m3_masks(ctx, flows, NULL, Z, H, W, params, labels_out, n_masks);
}

gpuseg_status gpuseg_flows_to_masks3d_consume(gpuseg_ctx *ctx, float *flows, uint32_t Z, uint32_t H,
                                              uint32_t W, const gpuseg_masks_params *params,
                                              uint32_t *labels_out, uint32_t *n_masks) {
    return m3_masks(ctx, flows, flows, Z, H, W, params, labels_out, n_masks);
}
