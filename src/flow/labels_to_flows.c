/* flow/labels_to_flows.c: ideal flows from a label image on the device, as Cellpose 3.1's
 * masks_to_flows_cpu computes them (docs/flows.md): per-mask centre (the mask pixel nearest the
 * mean pixel position), 2*(h+2 + w+2) Jacobi heat-diffusion steps per mask, central differences,
 * unit-length normalisation. The host finds boxes, centres and (for sparse masks) the centre's
 * piece; the device diffuses every mask at once, with one work-item per mask on CPU devices
 * (l2f_box), one work-group per mask on GPUs (l2f_local), or one launch per step for masks
 * neither can take. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernel_defs.h"
#include "flow/flow_internal.h"

/* One mask as the host sees it. Coordinates are image rows/columns; the box is inclusive. */
typedef struct l2f_mask {
    uint32_t y0, y1, x0, x1;
    uint64_t n, sum_y, sum_x;
    double ym, xm;   /* mean position in Cellpose's padded-box coordinates */
    double best;     /* smallest squared distance to (ym, xm) seen so far */
    uint32_t center; /* pixel index of the centre */
    uint32_t niter;
    /* where it diffuses: the whole box and all pixels, or for a sparse mask only the piece
     * holding the centre (plan_build, pass 3) */
    uint32_t dy0, dy1, dx0, dx1;
    uint64_t dn;
    int piece; /* diffusion restricted to the centre's piece (pixels marked in l2f_plan.piece) */
    int local; /* diffused by the per-mask kernel (l2f_box or l2f_local), not the per-step path */
} l2f_mask;

/* Host-side plan: per-pixel mask index (UINT32_MAX = background), masks, and the pixel list of
 * the masks that take the global path, grouped by mask in decreasing order of iteration count.
 * order[] lists those masks first (n_global of them), then the local-path masks. */
typedef struct l2f_plan {
    uint32_t *mask_of; /* [npix] */
    uint8_t *piece;    /* [npix] or NULL: 1 on the centre's piece of the masks with `piece` set */
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
    free(p->piece);
    free(p->masks);
    free(p->order);
    free(p->list);
    memset(p, 0, sizeof *p);
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
    qsort(u, npix, sizeof *u, gpuseg__cmp_u32);
    size_t n = 0;
    for (size_t i = 0; i < npix; i++)
        if (u[i] != 0 && (n == 0 || u[n - 1] != u[i]))
            u[n++] = u[i];
    for (size_t i = 0; i < npix; i++) {
        if (labels[i] == 0) {
            pl->mask_of[i] = UINT32_MAX;
            continue;
        }
        const uint32_t *hit = bsearch(&labels[i], u, n, sizeof *u, gpuseg__cmp_u32);
        pl->mask_of[i] = (uint32_t)(hit - u);
    }
    pl->n_masks = (uint32_t)n;
    free(u);
    return GPUSEG_OK;
}

/* Scratch of l2f_box per launch (bytes); more masks take more launches, a mask needing more
 * takes the per-step path. */
#define L2F_BOX_SCRATCH ((size_t)64 << 20)

/* l2f_box's scratch for a padded box of h x w (floats, a multiple of 8): a guard of BOX_GUARD
 * floats, 5 planes of h rows of stride S = w rounded up to 8, and two column-sum rows of S + 8
 * (kernels/labels_to_flows.cl). The kernel is given the offset past the guard. */
#define BOX_GUARD 8
static uint64_t box_floats(uint64_t h, uint64_t w) {
    const uint64_t S = (w + 7) & ~(uint64_t)7;
    return BOX_GUARD + 5 * h * S + 2 * (S + 8);
}

/* A padded box larger than this for a mask of n pixels is sparse: l2f_box would sweep mostly
 * empty cells every step. */
static uint64_t sparse_box(uint64_t n) {
    return 8 * n + 4096;
}

/* Pass 3 of plan_build: a mask whose padded box is sparse (a stray fragment far from the cell
 * makes a huge box) diffuses only in the 8-connected piece holding its centre. This is exact:
 * a pixel averages only its 3x3 neighbours of the same label, which lie in its own piece, so
 * the field of every other piece stays 0 and so do its flows (zero-filled by the caller), as in
 * Cellpose. The iteration count stays that of the whole mask's box. The piece's box is usually
 * small enough for the per-mask kernels, which saves one launch per step. */
static gpuseg_status find_pieces(gpuseg_ctx *ctx, uint32_t H, uint32_t W, l2f_plan *pl) {
    const size_t npix = (size_t)H * W;
    uint32_t *stack = NULL;
    for (uint32_t m = 0; m < pl->n_masks; m++) {
        l2f_mask *k = &pl->masks[m];
        const uint64_t bx = ((uint64_t)(k->y1 - k->y0) + 3) * ((uint64_t)(k->x1 - k->x0) + 3);
        if (bx <= sparse_box(k->n))
            continue;
        if (!pl->piece) {
            pl->piece = calloc(npix, 1);
            stack = malloc(npix * sizeof *stack);
            if (!pl->piece || !stack) {
                free(stack);
                return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: %zu pixels", npix);
            }
        }
        size_t top = 0;
        stack[top++] = k->center;
        pl->piece[k->center] = 1;
        k->piece = 1;
        k->dn = 0;
        k->dy0 = k->dy1 = k->center / W;
        k->dx0 = k->dx1 = k->center % W;
        while (top > 0) {
            const uint32_t p = stack[--top], y = p / W, x = p % W;
            k->dn++;
            k->dy0 = y < k->dy0 ? y : k->dy0;
            k->dy1 = y > k->dy1 ? y : k->dy1;
            k->dx0 = x < k->dx0 ? x : k->dx0;
            k->dx1 = x > k->dx1 ? x : k->dx1;
            for (int dy = -1; dy <= 1; dy++)
                for (int dx = -1; dx <= 1; dx++) {
                    const int64_t yy = (int64_t)y + dy, xx = (int64_t)x + dx;
                    if (yy < 0 || yy >= H || xx < 0 || xx >= W)
                        continue;
                    const size_t q = (size_t)yy * W + (size_t)xx;
                    if (pl->mask_of[q] == m && !pl->piece[q]) {
                        pl->piece[q] = 1; /* pieces of different masks never meet: no reset */
                        stack[top++] = (uint32_t)q;
                    }
                }
        }
    }
    free(stack);
    return GPUSEG_OK;
}

/* Builds the plan: boxes, centres, iteration counts, diffusion regions and the grouped pixel
 * list. Masks whose padded diffusion box is at most local_limit pixels take the per-mask kernel;
 * with `box` (l2f_box) they must also fit its scratch and not be sparse: l2f_box sweeps the whole
 * box every step, so a box much larger than the mask would cost more than the per-step path,
 * which only visits the mask's pixels. */
static gpuseg_status plan_build(gpuseg_ctx *ctx, const uint32_t *labels, uint32_t H, uint32_t W,
                                size_t local_limit, int box, l2f_plan *pl) {
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
        k->dy0 = k->y0;
        k->dy1 = k->y1;
        k->dx0 = k->x0;
        k->dx1 = k->x1;
        k->dn = k->n;
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
    if ((st = find_pieces(ctx, H, W, pl)) != GPUSEG_OK) {
        free(keys);
        free(offset);
        return st;
    }
    for (uint32_t m = 0; m < pl->n_masks; m++) {
        l2f_mask *k = &pl->masks[m];
        const uint64_t h = (uint64_t)(k->dy1 - k->dy0) + 3, w = (uint64_t)(k->dx1 - k->dx0) + 3;
        k->local = h * w <= local_limit;
        if (box && k->local)
            k->local = h * w <= sparse_box(k->dn) && 4 * box_floats(h, w) <= L2F_BOX_SCRATCH;
        keys[m].local = (uint32_t)k->local;
        keys[m].niter = k->niter;
        keys[m].mask = m;
        if (k->local) {
            if (h * w > pl->max_local_box)
                pl->max_local_box = (size_t)(h * w);
        } else {
            pl->n_fg += k->dn;
            pl->n_global++;
        }
    }
    qsort(keys, pl->n_masks, sizeof *keys, cmp_key);
    size_t off = 0;
    for (uint32_t r = 0; r < pl->n_masks; r++) {
        const uint32_t m = keys[r].mask;
        pl->order[r] = m;
        offset[m] = off;
        if (!pl->masks[m].local)
            off += pl->masks[m].dn;
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
        if (m == UINT32_MAX || pl->masks[m].local || (pl->masks[m].piece && !pl->piece[i]))
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
int gpuseg__flow_variant = -1;

/* CPU devices: barriers are costly (PoCL runs the work-items in a loop between them) and the
 * compiler vectorises only uniform loops, while thousands of masks or pixels already fill the
 * cores; GPUs need many work-items per mask instead. */
int gpuseg__flow_cpu_kernels(const gpuseg_ctx *ctx) {
    if (gpuseg__flow_variant >= 0)
        return gpuseg__flow_variant == 1;
    return ctx->dev.type == GPUSEG_DEVICE_CPU;
}

/* The largest padded box the per-mask kernel takes (0: none, all masks take the per-step path).
 * l2f_box: no limit of its own (plan_build checks each mask's scratch). l2f_local: *lsz is its
 * work-group size, and the box must fit L2F_SLOTS (core/kernel_defs.h) pixels per work-item and 9
 * bytes of local memory per pixel (0 also when the kernel cannot be queried: the global path needs
 * nothing special). */
static size_t local_path_limit(gpuseg_ctx *ctx, int box, size_t *lsz) {
    *lsz = 256;
    if (box)
        return gpuseg__l2f_local_limit >= 0 ? (size_t)gpuseg__l2f_local_limit : SIZE_MAX;
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
    size_t by_slots = GPUSEG__L2F_SLOTS * *lsz;
    size_t lim = by_mem < by_slots ? by_mem : by_slots;
    if (gpuseg__l2f_local_limit > 0 && (size_t)gpuseg__l2f_local_limit < lim)
        lim = (size_t)gpuseg__l2f_local_limit;
    return lim;
}

/* Waits for the queue, so that the caller may release the buffers its kernels use: st, or the
 * queue's error when st is GPUSEG_OK. */
static gpuseg_status finish_queue(gpuseg_ctx *ctx, gpuseg_status st) {
    cl_int err = clFinish(ctx->queue);
    if (st == GPUSEG_OK && err != CL_SUCCESS)
        st = gpuseg__fail_cl(ctx, err, "labels to flows: clFinish");
    return st;
}

/* Per-mask path on CPU devices: l2f_box, one work-item per mask, the masks packed into scratch
 * launches of at most L2F_BOX_SCRATCH bytes (in the plan's order: most iterations first, so the
 * longest jobs start first). */
static gpuseg_status run_box(gpuseg_ctx *ctx, const l2f_plan *pl, uint32_t H, uint32_t W,
                             cl_mem labels, cl_mem flows, cl_float2 ninth) {
    const uint32_t n = pl->n_masks - pl->n_global;
    if (n == 0)
        return GPUSEG_OK;
    cl_int4 *boxes = malloc(n * sizeof *boxes);
    cl_uint4 *info = malloc(n * sizeof *info);
    cl_mem dboxes = NULL, dinfo = NULL, scratch = NULL;
    gpuseg_status st = GPUSEG_OK;
    if (!boxes || !info) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "labels to flows: %u masks", n);
        goto done;
    }
    const uint64_t cap = L2F_BOX_SCRATCH / sizeof(float);
    uint64_t used = 0, most = 0;
    for (uint32_t i = 0; i < n; i++) {
        const l2f_mask *k = &pl->masks[pl->order[pl->n_global + i]];
        const uint32_t bh = k->dy1 - k->dy0 + 3, bw = k->dx1 - k->dx0 + 3;
        const uint64_t need = box_floats(bh, bw); /* <= cap: checked by plan_build */
        if (used + need > cap)
            used = 0; /* a new launch starts here (offset BOX_GUARD marks it, see below) */
        boxes[i].s[0] = (cl_int)k->dy0 - 1;
        boxes[i].s[1] = (cl_int)k->dx0 - 1;
        boxes[i].s[2] = (cl_int)bh;
        boxes[i].s[3] = (cl_int)bw;
        info[i].s[0] = k->center;
        info[i].s[1] = k->niter;
        info[i].s[2] = (cl_uint)(used + BOX_GUARD);
        info[i].s[3] = (bw + 7) & ~7u;
        used += need;
        if (used > most)
            most = used;
    }
    cl_kernel k;
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_ONLY, n * sizeof *boxes, "mask boxes", &dboxes)) !=
            GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_ONLY, n * sizeof *info, "mask jobs", &dinfo)) !=
            GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, (size_t)most * sizeof(float),
                             "diffusion scratch", &scratch)) != GPUSEG_OK ||
        (st = gpuseg__kernel(ctx, "labels_to_flows", "l2f_box", &k)) != GPUSEG_OK)
        goto done;
    cl_int err = clEnqueueWriteBuffer(ctx->queue, dboxes, CL_FALSE, 0, n * sizeof *boxes, boxes, 0,
                                      NULL, NULL);
    if (err == CL_SUCCESS)
        err = clEnqueueWriteBuffer(ctx->queue, dinfo, CL_FALSE, 0, n * sizeof *info, info, 0, NULL,
                                   NULL);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "labels to flows: clEnqueueWriteBuffer(mask jobs)");
        goto done;
    }
    /* one launch per run of jobs with increasing scratch offsets (a new run starts at BOX_GUARD);
     * the in-order queue keeps launches that share the scratch apart */
    const cl_uint h = H, w = W;
    for (uint32_t s = 0; s < n;) {
        uint32_t e = s + 1;
        while (e < n && info[e].s[2] != BOX_GUARD)
            e++;
        const cl_uint base = s, end = e;
        const size_t g = e - s, one = 1;
        if ((st = gpuseg__set_args(ctx, k, 10, sizeof(cl_mem), &labels, sizeof(cl_mem), &dboxes,
                                   sizeof(cl_mem), &dinfo, sizeof(cl_uint), &base, sizeof(cl_uint),
                                   &end, sizeof(cl_mem), &flows, sizeof(cl_uint), &h,
                                   sizeof(cl_uint), &w, sizeof(cl_float2), &ninth, sizeof(cl_mem),
                                   &scratch)) != GPUSEG_OK ||
            (st = gpuseg__run(ctx, k, 1, &g, &one)) != GPUSEG_OK) {
            gpuseg__wrap(ctx, st, "labels to flows: masks %u to %u", s, e - 1);
            goto done;
        }
        s = e;
    }
done:
    st = finish_queue(ctx, st); /* buffers are released only after the queue has finished */
    gpuseg__release(&dboxes);
    gpuseg__release(&dinfo);
    gpuseg__release(&scratch);
    free(boxes);
    free(info);
    return st;
}

/* Small masks on GPUs: one launch of l2f_local, one work-group per mask. */
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
        boxes[i].s[0] = (cl_int)k->dy0 - 1;
        boxes[i].s[1] = (cl_int)k->dx0 - 1;
        boxes[i].s[2] = (cl_int)(k->dy1 - k->dy0 + 3);
        boxes[i].s[3] = (cl_int)(k->dx1 - k->dx0 + 3);
        cn[i].s[0] = k->center;
        cn[i].s[1] = k->niter;
    }
    /* Work-group size: the smallest power of two (>= 32) whose slots cover the largest box. */
    size_t ls = 32;
    while (ls < lsz && GPUSEG__L2F_SLOTS * ls < pl->max_local_box)
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
done:
    st = finish_queue(ctx, st); /* buffers are released only after the queue has finished */
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
            active -= pl->masks[pl->order[r_end]].dn;
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

/* The device part, given host labels (for the plan) and the same labels on the device. owned
 * (may be NULL): a host array of the caller's that is freed, and set to NULL, once the plan is
 * made (the host labels themselves, when the caller made that copy). */
static gpuseg_status run(gpuseg_ctx *ctx, const uint32_t *host_labels, uint32_t **owned,
                         cl_mem labels, uint32_t H, uint32_t W, cl_mem flows) {
    const size_t npix = (size_t)H * W;
    l2f_plan pl;
    memset(&pl, 0, sizeof pl);
    size_t lsz;
    const int box = gpuseg__flow_cpu_kernels(ctx);
    const size_t limit = local_path_limit(ctx, box, &lsz);
    gpuseg_status st = plan_build(ctx, host_labels, H, W, limit, box, &pl);
    /* the per-pixel host tables (8-9 bytes per pixel) are only needed to make the plan */
    if (owned) {
        free(*owned);
        *owned = NULL;
    }
    free(pl.mask_of);
    pl.mask_of = NULL;
    free(pl.piece);
    pl.piece = NULL;
    if (st != GPUSEG_OK)
        goto done;
    if ((st = fill_zero(ctx, flows, 2 * npix * sizeof(float), "flows")) != GPUSEG_OK)
        goto done;
    /* 1/9 as a double-float (hi + lo) for the kernels' extended-precision field. */
    cl_float2 ninth;
    ninth.s[0] = (float)(1.0 / 9.0);
    ninth.s[1] = (float)(1.0 / 9.0 - (double)ninth.s[0]);
    if ((st = box ? run_box(ctx, &pl, H, W, labels, flows, ninth)
                  : run_local(ctx, &pl, H, W, labels, flows, lsz, ninth)) != GPUSEG_OK ||
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
    st = run(ctx, host, &host, labels, H, W, flows);
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
    if ((st = run(ctx, labels, NULL, dl, H, W, df)) != GPUSEG_OK)
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

/* ---- 3-D: Cellpose 3.1 masks_to_flows on a volume (docs/flows.md, "Volumes") ------------- */

/* One orientation of the volume: nsl slices of sh x sw voxels, voxel (s, r, c) at
 * dense[s*ss + r*rs + c*cs]. The slices are stacked into one 2-D label image with an empty row
 * between consecutive slices (so no mask touches another slice's), batch by batch, each (slice,
 * label) pair becoming its own label, exactly as Cellpose's per-slice masks_to_flows_cpu sees
 * it. The two flow components of each slice (along its rows, along its columns) are added into
 * planes pa and pb of out as Cellpose does: the first pass to write a plane stores the float32
 * value, later ones add in float64 and round once (numpy: float32 += float64). */
typedef struct l2f3_pass {
    uint32_t nsl, sh, sw;
    size_t ss, rs, cs;
    int pa, pb;           /* planes of out (0 dZ, 1 dY, 2 dX) */
    int first_a, first_b; /* this pass is the first to write the plane */
} l2f3_pass;

static gpuseg_status l2f3_run_pass(gpuseg_ctx *ctx, const uint32_t *dense, uint32_t n_dense,
                                   const l2f3_pass *ps, size_t nvox, float *out) {
    const size_t rows_per = (size_t)ps->sh + 1;
    size_t nb = (GPUSEG_MAX_IMAGE_SIDE + 1) / rows_per;
    const size_t pix_cap = ((size_t)1 << 26) / ps->sw; /* rows of one batch: 256 MiB of flows */
    if (nb * rows_per > pix_cap)
        nb = pix_cap / rows_per;
    if (nb < 1)
        nb = 1;
    if (nb > ps->nsl)
        nb = ps->nsl;
    const size_t Hs_max = nb * rows_per - 1;
    uint32_t *stack = malloc(Hs_max * ps->sw * sizeof *stack);
    float *fl = malloc(2 * Hs_max * ps->sw * sizeof *fl);
    uint32_t *stamp = calloc((size_t)n_dense + 1, sizeof *stamp);
    uint32_t *newid = calloc((size_t)n_dense + 1, sizeof *newid);
    cl_mem dl = NULL, df = NULL;
    gpuseg_status st = GPUSEG_OK;
    if (!stack || !fl || !stamp || !newid) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY,
                          "labels to flows (3-D): no host memory for %zu stacked slices of %u x %u",
                          nb, ps->sh, ps->sw);
        goto done;
    }
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, Hs_max * ps->sw * sizeof(uint32_t),
                             "3-D labels slices", &dl)) != GPUSEG_OK ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, 2 * Hs_max * ps->sw * sizeof(float),
                             "3-D slice flows", &df)) != GPUSEG_OK)
        goto done;
    for (uint32_t s0 = 0; s0 < ps->nsl; s0 += (uint32_t)nb) {
        const uint32_t n = (uint32_t)((ps->nsl - s0 < nb) ? ps->nsl - s0 : nb);
        const size_t Hs = (size_t)n * rows_per - 1;
        uint32_t next = 0;
        for (uint32_t i = 0; i < n; i++) {
            const uint32_t s = s0 + i;
            for (uint32_t r = 0; r < ps->sh; r++) {
                uint32_t *row = stack + ((size_t)i * rows_per + r) * ps->sw;
                const uint32_t *src = dense + s * ps->ss + r * ps->rs;
                for (uint32_t c = 0; c < ps->sw; c++) {
                    const uint32_t d = src[c * ps->cs];
                    if (d == 0) {
                        row[c] = 0;
                        continue;
                    }
                    if (stamp[d] != s + 1) {
                        stamp[d] = s + 1;
                        newid[d] = ++next;
                    }
                    row[c] = newid[d];
                }
            }
            if (i + 1 < n)
                memset(stack + ((size_t)i * rows_per + ps->sh) * ps->sw, 0, ps->sw * sizeof *stack);
        }
        cl_int err = clEnqueueWriteBuffer(ctx->queue, dl, CL_TRUE, 0, Hs * ps->sw * sizeof *stack,
                                          stack, 0, NULL, NULL);
        if (err != CL_SUCCESS) {
            st = gpuseg__fail_cl(ctx, err, "labels to flows (3-D): uploading slices");
            goto done;
        }
        if ((st = run(ctx, stack, NULL, dl, (uint32_t)Hs, ps->sw, df)) != GPUSEG_OK)
            goto done;
        err = clEnqueueReadBuffer(ctx->queue, df, CL_TRUE, 0, 2 * Hs * ps->sw * sizeof *fl, fl, 0,
                                  NULL, NULL);
        if (err != CL_SUCCESS) {
            st = gpuseg__fail_cl(ctx, err, "labels to flows (3-D): reading slice flows");
            goto done;
        }
        const size_t plane = Hs * ps->sw;
        for (uint32_t i = 0; i < n; i++) {
            const uint32_t s = s0 + i;
            for (uint32_t r = 0; r < ps->sh; r++) {
                const size_t k0 = ((size_t)i * rows_per + r) * ps->sw;
                for (uint32_t c = 0; c < ps->sw; c++) {
                    const size_t v = s * ps->ss + r * ps->rs + c * ps->cs;
                    float *a = out + (size_t)ps->pa * nvox + v,
                          *b = out + (size_t)ps->pb * nvox + v;
                    const float fa = fl[k0 + c], fb = fl[plane + k0 + c];
                    *a = ps->first_a ? fa : (float)((double)*a + (double)fa);
                    *b = ps->first_b ? fb : (float)((double)*b + (double)fb);
                }
            }
        }
    }
done:
    gpuseg__release(&dl);
    gpuseg__release(&df);
    free(stack);
    free(fl);
    free(stamp);
    free(newid);
    return st;
}

gpuseg_status gpuseg_labels_to_flows3d(gpuseg_ctx *ctx, const uint32_t *labels, uint32_t Z,
                                       uint32_t H, uint32_t W, float *flows_out) {
    gpuseg__clear_error(ctx);
    if (!ctx || !labels || !flows_out)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "labels to flows (3-D): NULL argument");
    if (Z == 0 || H == 0 || W == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "labels to flows (3-D): empty volume (%u x %u x %u)", Z, H, W);
    if (Z > GPUSEG_MAX_IMAGE_SIDE || H > GPUSEG_MAX_IMAGE_SIDE || W > GPUSEG_MAX_IMAGE_SIDE ||
        (uint64_t)Z * H * W > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE,
                            "labels to flows (3-D): %u x %u x %u voxels exceed the limit (%llu)", Z,
                            H, W, (unsigned long long)GPUSEG_MAX_IMAGE_PIXELS);
    const size_t nvox = (size_t)Z * H * W;
    /* dense numbering of the label values (1..n_dense), so the per-slice tables stay small */
    uint32_t *dense = malloc(nvox * sizeof *dense);
    uint32_t *vals = malloc(nvox * sizeof *vals);
    gpuseg_status st = GPUSEG_OK;
    if (!dense || !vals) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY,
                          "labels to flows (3-D): no host memory for %zu voxels", nvox);
        goto done;
    }
    size_t nv = 0;
    for (size_t i = 0; i < nvox; i++)
        if (labels[i])
            vals[nv++] = labels[i];
    qsort(vals, nv, sizeof *vals, gpuseg__cmp_u32);
    size_t nd = 0;
    for (size_t i = 0; i < nv; i++)
        if (nd == 0 || vals[nd - 1] != vals[i])
            vals[nd++] = vals[i];
    for (size_t i = 0; i < nvox; i++)
        dense[i] = labels[i] ? (uint32_t)gpuseg__find_u32(vals, nd, labels[i]) + 1 : 0;
    free(vals);
    vals = NULL;
    memset(flows_out, 0, 3 * nvox * sizeof *flows_out);
    if (nd == 0)
        goto done;
    const size_t HW = (size_t)H * W;
    /* Cellpose's order: every Z slice (dY, dX), then every Y slice (dZ, dX), then every X slice
     * (dZ, dY). */
    const l2f3_pass passes[3] = {
        {Z, H, W, HW, W, 1, 1, 2, 1, 1},
        {H, Z, W, W, HW, 1, 0, 2, 1, 0},
        {W, Z, H, 1, HW, W, 0, 1, 0, 0},
    };
    for (int p = 0; p < 3 && st == GPUSEG_OK; p++)
        st = l2f3_run_pass(ctx, dense, (uint32_t)nd, &passes[p], nvox, flows_out);
done:
    free(dense);
    free(vals);
    return st;
}
