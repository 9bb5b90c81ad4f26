/* flow/labels_to_flows.c: ideal flows from a label image on the device, as Cellpose 3.1's
 * masks_to_flows_cpu computes them (docs/flows.md): per-mask centre (the mask pixel nearest the
 * mean pixel position), 2*(h+2 + w+2) Jacobi heat-diffusion steps per mask, central differences,
 * unit-length normalisation. The host finds boxes and centres in one pass over the labels; the
 * device runs every mask's diffusion at once, each mask stopping after its own step count. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow_internal.h"

/* One mask as the host sees it. Coordinates are image rows/columns; the box is inclusive. */
typedef struct l2f_mask {
    uint32_t y0, y1, x0, x1;
    uint64_t n, sum_y, sum_x;
    double ym, xm;   /* mean position in Cellpose's padded-box coordinates */
    double best;     /* smallest squared distance to (ym, xm) seen so far */
    uint32_t center; /* pixel index of the centre */
    uint32_t niter;
    int local; /* diffused by l2f_local (padded box fits in local memory) */
} l2f_mask;

/* Host-side plan: per-pixel mask index (UINT32_MAX = background), masks, and the pixel list of
 * the masks that take the global path, grouped by mask in decreasing order of iteration count.
 * order[] lists those masks first (n_global of them), then the local-path masks. */
typedef struct l2f_plan {
    uint32_t *mask_of; /* [npix] */
    l2f_mask *masks;   /* [n_masks] */
    uint32_t n_masks;
    uint32_t *order; /* [n_masks] global-path masks by niter descending, then local ones */
    cl_uint2 *list;  /* [n_fg] (pixel, mask) of the global-path masks */
    size_t n_fg;
    uint32_t n_global;
    size_t max_local_box; /* largest padded box of the local-path masks */
} l2f_plan;

static void plan_free(l2f_plan *p) {
    free(p->mask_of);
    free(p->masks);
    free(p->order);
    free(p->list);
    memset(p, 0, sizeof *p);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* Sort key packing: niter descending, then mask index ascending. */
typedef struct l2f_key {
    uint32_t local, niter, mask;
} l2f_key;

static int cmp_key(const void *a, const void *b) {
    const l2f_key *x = a, *y = b;
    if (x->local != y->local)
        return x->local > y->local ? 1 : -1;
    if (x->niter != y->niter)
        return x->niter > y->niter ? -1 : 1;
    return (x->mask > y->mask) - (x->mask < y->mask);
}

/* Assigns mask indices in increasing label order. A direct table is used when the largest label
 * is not absurdly larger than the image; otherwise the distinct labels are sorted. */
static gpuseg_status map_labels(gpuseg_ctx *ctx, const uint32_t *labels, size_t npix,
                                l2f_plan *pl) {
    uint32_t maxl = 0;
    for (size_t i = 0; i < npix; i++)
        if (labels[i] > maxl)
            maxl = labels[i];
    pl->mask_of = malloc(npix * sizeof *pl->mask_of);
    if (!pl->mask_of)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: %zu pixels", npix);
    if (maxl == 0) {
        for (size_t i = 0; i < npix; i++)
            pl->mask_of[i] = UINT32_MAX;
        return GPUSEG_OK;
    }
    if ((uint64_t)maxl <= 4 * (uint64_t)npix + 65536) {
        uint32_t *table = calloc((size_t)maxl + 1, sizeof *table);
        if (!table)
            return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: table of %u labels",
                                maxl);
        for (size_t i = 0; i < npix; i++)
            table[labels[i]] = 1;
        uint32_t n = 0;
        for (uint32_t l = 1; l <= maxl; l++)
            table[l] = table[l] ? n++ : UINT32_MAX;
        table[0] = UINT32_MAX;
        for (size_t i = 0; i < npix; i++)
            pl->mask_of[i] = table[labels[i]];
        pl->n_masks = n;
        free(table);
        return GPUSEG_OK;
    }
    uint32_t *u = malloc(npix * sizeof *u);
    if (!u)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: %zu pixels", npix);
    memcpy(u, labels, npix * sizeof *u);
    qsort(u, npix, sizeof *u, cmp_u32);
    size_t n = 0;
    for (size_t i = 0; i < npix; i++)
        if (u[i] != 0 && (n == 0 || u[n - 1] != u[i]))
            u[n++] = u[i];
    for (size_t i = 0; i < npix; i++) {
        if (labels[i] == 0) {
            pl->mask_of[i] = UINT32_MAX;
            continue;
        }
        const uint32_t *hit = bsearch(&labels[i], u, n, sizeof *u, cmp_u32);
        pl->mask_of[i] = (uint32_t)(hit - u);
    }
    pl->n_masks = (uint32_t)n;
    free(u);
    return GPUSEG_OK;
}

/* Builds the plan: boxes, centres, iteration counts and the grouped pixel list. */
static gpuseg_status plan_build(gpuseg_ctx *ctx, const uint32_t *labels, uint32_t H, uint32_t W,
                                size_t local_limit, l2f_plan *pl) {
    const size_t npix = (size_t)H * W;
    gpuseg_status st = map_labels(ctx, labels, npix, pl);
    if (st != GPUSEG_OK)
        return st;
    if (pl->n_masks == 0)
        return GPUSEG_OK;
    pl->masks = calloc(pl->n_masks, sizeof *pl->masks);
    pl->order = malloc(pl->n_masks * sizeof *pl->order);
    l2f_key *keys = malloc(pl->n_masks * sizeof *keys);
    size_t *offset = malloc(pl->n_masks * sizeof *offset);
    if (!pl->masks || !pl->order || !keys || !offset) {
        free(keys);
        free(offset);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: %u masks", pl->n_masks);
    }
    for (uint32_t m = 0; m < pl->n_masks; m++) {
        pl->masks[m].y0 = UINT32_MAX;
        pl->masks[m].x0 = UINT32_MAX;
        pl->masks[m].best = INFINITY;
    }
    /* Pass 1: boxes, counts and coordinate sums (integers: exact). */
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++) {
            const uint32_t m = pl->mask_of[(size_t)y * W + x];
            if (m == UINT32_MAX)
                continue;
            l2f_mask *k = &pl->masks[m];
            if (y < k->y0)
                k->y0 = y;
            if (y > k->y1)
                k->y1 = y;
            if (x < k->x0)
                k->x0 = x;
            if (x > k->x1)
                k->x1 = x;
            k->n++;
            k->sum_y += y;
            k->sum_x += x;
        }
    pl->n_fg = 0;
    for (uint32_t m = 0; m < pl->n_masks; m++) {
        l2f_mask *k = &pl->masks[m];
        /* Cellpose works in the box padded by one pixel: local = global - start + 1. Its mean is
         * a float64 sum of integers (exact) divided by the count, which this reproduces. */
        const uint64_t ly = k->sum_y + k->n - k->n * (uint64_t)k->y0;
        const uint64_t lx = k->sum_x + k->n - k->n * (uint64_t)k->x0;
        k->ym = (double)ly / (double)k->n;
        k->xm = (double)lx / (double)k->n;
        const uint64_t h = (uint64_t)(k->y1 - k->y0) + 1, w = (uint64_t)(k->x1 - k->x0) + 1;
        k->niter = (uint32_t)(2 * ((h + 2) + (w + 2)));
        const uint64_t box = (h + 2) * (w + 2);
        k->local = box <= local_limit;
        keys[m].local = (uint32_t)k->local;
        keys[m].niter = k->niter;
        keys[m].mask = m;
        if (k->local) {
            if (box > pl->max_local_box)
                pl->max_local_box = (size_t)box;
        } else {
            pl->n_fg += k->n;
            pl->n_global++;
        }
    }
    /* Pass 2: centre = first pixel in row-major order with the smallest squared distance to
     * the mean (numpy argmin over np.nonzero of the box). Separate statements keep the compiler
     * from contracting into an FMA, which would round differently from numpy. */
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++) {
            const uint32_t m = pl->mask_of[(size_t)y * W + x];
            if (m == UINT32_MAX)
                continue;
            l2f_mask *k = &pl->masks[m];
            const double dxv = (double)(x - k->x0 + 1) - k->xm;
            const double dyv = (double)(y - k->y0 + 1) - k->ym;
            const double dx2 = dxv * dxv;
            const double dy2 = dyv * dyv;
            const double d = dx2 + dy2;
            if (d < k->best) {
                k->best = d;
                k->center = y * W + x;
            }
        }
    qsort(keys, pl->n_masks, sizeof *keys, cmp_key);
    size_t off = 0;
    for (uint32_t r = 0; r < pl->n_masks; r++) {
        const uint32_t m = keys[r].mask;
        pl->order[r] = m;
        offset[m] = off;
        if (!pl->masks[m].local)
            off += pl->masks[m].n;
    }
    free(keys);
    pl->list = malloc((pl->n_fg ? pl->n_fg : 1) * sizeof *pl->list);
    if (!pl->list) {
        free(offset);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: %zu mask pixels",
                            pl->n_fg);
    }
    for (size_t i = 0; i < npix; i++) {
        const uint32_t m = pl->mask_of[i];
        if (m == UINT32_MAX || pl->masks[m].local)
            continue;
        cl_uint2 e;
        e.s[0] = (cl_uint)i;
        e.s[1] = m;
        pl->list[offset[m]++] = e;
    }
    free(offset);
    return GPUSEG_OK;
}

static gpuseg_status fill_zero(gpuseg_ctx *ctx, cl_mem buf, size_t bytes, const char *what) {
    const cl_float zero = 0.0f;
    cl_int err = clEnqueueFillBuffer(ctx->queue, buf, &zero, sizeof zero, 0, bytes, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "labels to flows: clEnqueueFillBuffer(%s)", what);
    return GPUSEG_OK;
}

static gpuseg_status check_size(gpuseg_ctx *ctx, uint32_t H, uint32_t W) {
    if (H == 0 || W == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "labels to flows: empty image (%u x %u)",
                            H, W);
    if (H > GPUSEG_MAX_IMAGE_SIDE || W > GPUSEG_MAX_IMAGE_SIDE ||
        (uint64_t)H * W > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE,
                            "labels to flows: %u x %u pixels exceed the limit (%llu pixels, side "
                            "%u)",
                            H, W, (unsigned long long)GPUSEG_MAX_IMAGE_PIXELS,
                            (unsigned)GPUSEG_MAX_IMAGE_SIDE);
    return GPUSEG_OK;
}

int gpuseg__l2f_local_limit = -1;

/* Work-group size for l2f_local and the largest padded box it can take on this device:
 * L2F_SLOTS (16) pixels per work-item, 9 bytes of local memory per pixel. 0: no local path
 * (also when the kernel cannot be queried: the global path needs nothing special). */
static size_t local_path_limit(gpuseg_ctx *ctx, size_t *lsz) {
    *lsz = 256;
    cl_kernel k;
    size_t kmax = 0;
    if (gpuseg__l2f_local_limit == 0 || ctx->dev.local_mem_bytes < 4096 ||
        gpuseg__kernel(ctx, "labels_to_flows", "l2f_local", &k) != GPUSEG_OK ||
        clGetKernelWorkGroupInfo(k, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof kmax, &kmax,
                                 NULL) != CL_SUCCESS) {
        gpuseg__clear_error(ctx);
        return 0;
    }
    while (*lsz > 32 && (*lsz > kmax || *lsz > ctx->dev.max_work_group_size))
        *lsz /= 2;
    if (*lsz > kmax)
        return 0;
    size_t by_mem = (size_t)(ctx->dev.local_mem_bytes - 1024) / 9;
    size_t by_slots = 16 * *lsz;
    size_t lim = by_mem < by_slots ? by_mem : by_slots;
    if (gpuseg__l2f_local_limit > 0 && (size_t)gpuseg__l2f_local_limit < lim)
        lim = (size_t)gpuseg__l2f_local_limit;
    return lim;
}

/* Small masks: one launch of l2f_local, one work-group per mask. */
static gpuseg_status run_local(gpuseg_ctx *ctx, const l2f_plan *pl, uint32_t H, uint32_t W,
                               cl_mem labels, cl_mem flows, size_t lsz, cl_float2 ninth) {
    const uint32_t n = pl->n_masks - pl->n_global;
    if (n == 0)
        return GPUSEG_OK;
    cl_int4 *boxes = malloc(n * sizeof *boxes);
    cl_uint2 *cn = malloc(n * sizeof *cn);
    cl_mem dboxes = NULL, dcn = NULL;
    gpuseg_status st = GPUSEG_OK;
    if (!boxes || !cn) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: %u masks", n);
        goto done;
    }
    for (uint32_t i = 0; i < n; i++) {
        const l2f_mask *k = &pl->masks[pl->order[pl->n_global + i]];
        boxes[i].s[0] = (cl_int)k->y0 - 1;
        boxes[i].s[1] = (cl_int)k->x0 - 1;
        boxes[i].s[2] = (cl_int)(k->y1 - k->y0 + 3);
        boxes[i].s[3] = (cl_int)(k->x1 - k->x0 + 3);
        cn[i].s[0] = k->center;
        cn[i].s[1] = k->niter;
    }
    /* Work-group size: the smallest power of two (>= 32) whose slots cover the largest box. */
    size_t ls = 32;
    while (ls < lsz && 16 * ls < pl->max_local_box)
        ls *= 2;
    cl_kernel k;
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_ONLY, n * sizeof *boxes, "mask boxes", &dboxes)) !=
            GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_ONLY, n * sizeof *cn, "mask centres", &dcn)) !=
            GPUSEG_OK ||
        (st = gpuseg__kernel(ctx, "labels_to_flows", "l2f_local", &k)) != GPUSEG_OK)
        goto done;
    cl_int err = clEnqueueWriteBuffer(ctx->queue, dboxes, CL_FALSE, 0, n * sizeof *boxes, boxes, 0,
                                      NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueWriteBuffer(ctx->queue, dcn, CL_FALSE, 0, n * sizeof *cn, cn, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "labels to flows: clEnqueueWriteBuffer(boxes)");
        goto done;
    }
    const cl_uint h = H, w = W, nm = n;
    const size_t g = (size_t)n * ls;
    if ((st = gpuseg__set_args(ctx, k, 10, sizeof(cl_mem), &labels, sizeof(cl_mem), &dboxes,
                               sizeof(cl_mem), &dcn, sizeof(cl_mem), &flows, sizeof(cl_uint), &h,
                               sizeof(cl_uint), &w, sizeof(cl_uint), &nm, sizeof(cl_float2), &ninth,
                               pl->max_local_box * sizeof(cl_float2), NULL, pl->max_local_box,
                               NULL)) != GPUSEG_OK ||
        (st = gpuseg__run(ctx, k, 1, &g, &ls)) != GPUSEG_OK)
        gpuseg__wrap(ctx, st, "labels to flows: %u small masks", n);
    /* Buffers are released only after the queue has finished (the caller's clFinish). */
    if (st == GPUSEG_OK && (err = clFinish(ctx->queue)) != CL_SUCCESS)
        st = gpuseg__fail_cl(ctx, err, "labels to flows: clFinish");
done:
    if (st != GPUSEG_OK)
        clFinish(ctx->queue);
    gpuseg__release(&dboxes);
    gpuseg__release(&dcn);
    free(boxes);
    free(cn);
    return st;
}

/* Large masks: one launch per diffusion step over the masks still diffusing, then one for the
 * gradient. */
static gpuseg_status run_global(gpuseg_ctx *ctx, const l2f_plan *pl, uint32_t H, uint32_t W,
                                cl_mem labels, cl_mem flows, cl_float2 ninth) {
    if (pl->n_global == 0)
        return GPUSEG_OK;
    const size_t npix = (size_t)H * W;
    cl_mem list = NULL, centers = NULL, niter = NULL, t[2] = {NULL, NULL};
    uint32_t *cbuf = malloc(pl->n_masks * sizeof *cbuf), *nbuf = malloc(pl->n_masks * sizeof *nbuf);
    gpuseg_status st = GPUSEG_OK;
    if (!cbuf || !nbuf) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: %u masks", pl->n_masks);
        goto fail;
    }
    for (uint32_t m = 0; m < pl->n_masks; m++) {
        cbuf[m] = pl->masks[m].center;
        nbuf[m] = pl->masks[m].niter;
    }
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, pl->n_fg * sizeof(cl_uint2), "mask pixel list",
                             &list)) != GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, pl->n_masks * sizeof(cl_uint), "mask centres",
                             &centers)) != GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, pl->n_masks * sizeof(cl_uint),
                             "mask iteration counts", &niter)) != GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, npix * sizeof(cl_float2), "heat field",
                             &t[0])) != GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, npix * sizeof(cl_float2), "heat field",
                             &t[1])) != GPUSEG_OK)
        goto fail;
    cl_int err = clEnqueueWriteBuffer(ctx->queue, list, CL_FALSE, 0, pl->n_fg * sizeof(cl_uint2),
                                      pl->list, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueWriteBuffer(ctx->queue, centers, CL_FALSE, 0, pl->n_masks * sizeof(cl_uint),
                                   cbuf, 0, NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueWriteBuffer(ctx->queue, niter, CL_FALSE, 0, pl->n_masks * sizeof(cl_uint),
                                   nbuf, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "labels to flows: clEnqueueWriteBuffer");
        goto fail;
    }
    if ((st = fill_zero(ctx, t[0], npix * sizeof(cl_float2), "heat field")) != GPUSEG_OK ||
        (st = fill_zero(ctx, t[1], npix * sizeof(cl_float2), "heat field")) != GPUSEG_OK)
        goto fail;
    cl_kernel kd, kg;
    if ((st = gpuseg__kernel(ctx, "labels_to_flows", "l2f_diffuse", &kd)) != GPUSEG_OK ||
        (st = gpuseg__kernel(ctx, "labels_to_flows", "l2f_gradient", &kg)) != GPUSEG_OK)
        goto fail;
    /* Global-path masks are listed by decreasing iteration count, so at step `it` the active
     * pixels are a prefix of the list: the masks whose count exceeds `it`. */
    const uint32_t max_iter = pl->masks[pl->order[0]].niter;
    uint32_t r_end = pl->n_global; /* masks order[0 .. r_end) are active */
    size_t active = pl->n_fg;
    const cl_uint h = H, w = W;
    const size_t local = 64;
    for (uint32_t it = 0; it < max_iter; it++) {
        while (r_end > 0 && pl->masks[pl->order[r_end - 1]].niter <= it) {
            r_end--;
            active -= pl->masks[pl->order[r_end]].n;
        }
        const cl_uint count = (cl_uint)active;
        const size_t g = active;
        if ((st = gpuseg__set_args(ctx, kd, 9, sizeof(cl_mem), &labels, sizeof(cl_mem), &list,
                                   sizeof(cl_mem), &centers, sizeof(cl_mem), &t[it & 1],
                                   sizeof(cl_mem), &t[(it + 1) & 1], sizeof(cl_uint), &h,
                                   sizeof(cl_uint), &w, sizeof(cl_uint), &count, sizeof(cl_float2),
                                   &ninth)) != GPUSEG_OK ||
            (st = gpuseg__run(ctx, kd, 1, &g, &local)) != GPUSEG_OK) {
            gpuseg__wrap(ctx, st, "labels to flows: diffusion step %u", it);
            goto fail;
        }
    }
    {
        const cl_uint count = (cl_uint)pl->n_fg;
        const size_t g = pl->n_fg;
        if ((st = gpuseg__set_args(ctx, kg, 9, sizeof(cl_mem), &labels, sizeof(cl_mem), &list,
                                   sizeof(cl_mem), &niter, sizeof(cl_mem), &t[0], sizeof(cl_mem),
                                   &t[1], sizeof(cl_mem), &flows, sizeof(cl_uint), &h,
                                   sizeof(cl_uint), &w, sizeof(cl_uint), &count)) != GPUSEG_OK ||
            (st = gpuseg__run(ctx, kg, 1, &g, &local)) != GPUSEG_OK) {
            gpuseg__wrap(ctx, st, "labels to flows: gradient");
            goto fail;
        }
    }
    err = clFinish(ctx->queue);
    if (err != CL_SUCCESS)
        st = gpuseg__fail_cl(ctx, err, "labels to flows: clFinish");
fail:
    if (st != GPUSEG_OK)
        clFinish(ctx->queue); /* buffers may still be in use by enqueued commands */
    gpuseg__release(&list);
    gpuseg__release(&centers);
    gpuseg__release(&niter);
    gpuseg__release(&t[0]);
    gpuseg__release(&t[1]);
    free(cbuf);
    free(nbuf);
    return st;
}

/* The device part, given host labels (for the plan) and the same labels on the device. */
static gpuseg_status run(gpuseg_ctx *ctx, const uint32_t *host_labels, cl_mem labels, uint32_t H,
                         uint32_t W, cl_mem flows) {
    const size_t npix = (size_t)H * W;
    l2f_plan pl;
    memset(&pl, 0, sizeof pl);
    size_t lsz;
    const size_t limit = local_path_limit(ctx, &lsz);
    gpuseg_status st = plan_build(ctx, host_labels, H, W, limit, &pl);
    if (st != GPUSEG_OK)
        goto done;
    if ((st = fill_zero(ctx, flows, 2 * npix * sizeof(float), "flows")) != GPUSEG_OK)
        goto done;
    /* 1/9 as a double-float (hi + lo) for the kernels' extended-precision field. */
    cl_float2 ninth;
    ninth.s[0] = (float)(1.0 / 9.0);
    ninth.s[1] = (float)(1.0 / 9.0 - (double)ninth.s[0]);
    if ((st = run_local(ctx, &pl, H, W, labels, flows, lsz, ninth)) != GPUSEG_OK ||
        (st = run_global(ctx, &pl, H, W, labels, flows, ninth)) != GPUSEG_OK)
        goto done;
    cl_int err = clFinish(ctx->queue);
    if (err != CL_SUCCESS)
        st = gpuseg__fail_cl(ctx, err, "labels to flows: clFinish");
done:
    if (st != GPUSEG_OK)
        clFinish(ctx->queue);
    plan_free(&pl);
    return st;
}

gpuseg_status gpuseg__labels_to_flows_cl(gpuseg_ctx *ctx, cl_mem labels, uint32_t H, uint32_t W,
                                         uint32_t n_labels, cl_mem flows) {
    if (!ctx || !labels || !flows)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "labels to flows: NULL argument");
    gpuseg_status st = check_size(ctx, H, W);
    if (st != GPUSEG_OK)
        return st;
    const size_t npix = (size_t)H * W;
    uint32_t *host = malloc(npix * sizeof *host);
    if (!host)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: %zu pixels", npix);
    cl_int err = clEnqueueReadBuffer(ctx->queue, labels, CL_TRUE, 0, npix * sizeof *host, host, 0,
                                     NULL, NULL);
    if (err != CL_SUCCESS) {
        free(host);
        return gpuseg__fail_cl(ctx, err, "labels to flows: reading %u x %u labels", H, W);
    }
    if (n_labels != 0)
        for (size_t i = 0; i < npix; i++)
            if (host[i] > n_labels) {
                const uint32_t v = host[i];
                free(host);
                return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                    "labels to flows: label %u at pixel %zu exceeds the stated "
                                    "maximum %u",
                                    v, i, n_labels);
            }
    st = run(ctx, host, labels, H, W, flows);
    free(host);
    return st;
}

gpuseg_status gpuseg_labels_to_flows_cl(gpuseg_ctx *ctx, cl_mem labels, uint32_t H, uint32_t W,
                                        cl_mem flows) {
    gpuseg__clear_error(ctx);
    return gpuseg__labels_to_flows_cl(ctx, labels, H, W, 0, flows);
}

gpuseg_status gpuseg_labels_to_flows(gpuseg_ctx *ctx, const uint32_t *labels, uint32_t H,
                                     uint32_t W, float *flows_out) {
    gpuseg__clear_error(ctx);
    if (!ctx || !labels || !flows_out)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "labels to flows: NULL argument");
    gpuseg_status st = check_size(ctx, H, W);
    if (st != GPUSEG_OK)
        return st;
    const size_t npix = (size_t)H * W;
    cl_mem dl = NULL, df = NULL;
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, npix * sizeof(uint32_t), "labels", &dl)) !=
            GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, 2 * npix * sizeof(float), "flows", &df)) !=
            GPUSEG_OK)
        goto fail;
    cl_int err = clEnqueueWriteBuffer(ctx->queue, dl, CL_TRUE, 0, npix * sizeof(uint32_t), labels,
                                      0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "labels to flows: uploading labels");
        goto fail;
    }
    if ((st = run(ctx, labels, dl, H, W, df)) != GPUSEG_OK)
        goto fail;
    err = clEnqueueReadBuffer(ctx->queue, df, CL_TRUE, 0, 2 * npix * sizeof(float), flows_out, 0,
                              NULL, NULL);
    if (err != CL_SUCCESS)
        st = gpuseg__fail_cl(ctx, err, "labels to flows: reading flows");
fail:
    gpuseg__release(&dl);
    gpuseg__release(&df);
    return st;
}
