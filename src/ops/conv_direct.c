/* ops/conv_direct.c: host side of the direct convolution kernels (kernels/conv_direct.cl
 * conv3x3_direct / conv1x1_direct), register-blocked: each work-item keeps rows x output
 * channels x 8-pixel vectors in registers (the ops object's tile, passed to the compiler as -D
 * constants) and, in the BAND layout (CPUs), walks its row band across the whole width; in the
 * BLOCK layout (GPUs) it computes one block and neighbouring work-items take the next ones. In
 * the band layout, narrow 3x3 planes run conv3x3_flat and 1x1 layers conv1x1_fused (which reads
 * the layer's input itself: conv.c skips the prologue pass for it). */
#include <stdio.h>

#include "ops/ops_internal.h"

static size_t round_up(size_t v, size_t m) {
    return (v + m - 1) / m * m;
}

/* Whether a 3x3 layer runs conv3x3_flat (band layout, narrow planes: W + 2 below W rounded up to
 * the vectors), and then its plane rows: enough that the reads of the last vectors (up to H * wp
 * rounded up to the work-item's step, plus the 2 * wp + 2 of the taps) stay in the plane. Not
 * when that would add more than the 10 rows conv.c's size check allows for. */
static bool flat(const gpuseg__conv_tile *t, const gpuseg__conv_desc *d, unsigned *hp) {
    if (t->layout != GPUSEG__CONV_BAND || d->ksize != 3)
        return false;
    const size_t wp = (size_t)d->width + 2, step = 8 * (size_t)t->xvecs * t->rows;
    if (wp >= round_up(d->width, 8 * t->xvecs) + 2)
        return false;
    const size_t rows = (round_up(d->height * wp, step) + 2 * wp + 2 + wp - 1) / wp;
    if (rows > (size_t)d->height + 10)
        return false;
    *hp = (unsigned)rows;
    return true;
}

/* Geometry with the ops object's tile (the description alone does not know it). */
static void geom(const gpuseg__conv_tile *t, const gpuseg__conv_desc *d, gpuseg__conv_geom *g) {
    if (flat(t, d, &g->hp)) {
        g->wp = d->width + 2;
        return;
    }
    /* Rows and columns rounded up to the blocking (the extra is zero), plus the k-1 border, so
     * that the kernel reads whole blocks without bounds checks. */
    g->hp = (unsigned)round_up(d->height, t->rows) + d->ksize - 1;
    g->wp = (unsigned)round_up(d->width, 8 * t->xvecs) + d->ksize - 1;
}

void gpuseg__conv_direct_geom(const gpuseg__ops *ops, const gpuseg__conv_desc *d,
                              gpuseg__conv_geom *g) {
    geom(&ops->tile, d, g);
}

static gpuseg_status kernels(gpuseg__ops *ops) {
    const bool band = ops->tile.layout == GPUSEG__CONV_BAND;
    if (ops->direct3 && ops->direct1 && ((ops->fused1 && ops->flat3) || !band))
        return GPUSEG_OK;
    char opts[160];
    snprintf(opts, sizeof opts,
             "-DCONV_R=%u -DCONV_COB=%u -DCONV_XB=%u -DCONV_BLOCK=%d -DCONV1_COB=%u -DCONV1_XB=%u",
             ops->tile.rows, ops->tile.couts, ops->tile.xvecs,
             ops->tile.layout == GPUSEG__CONV_BLOCK, ops->tile.couts1, ops->tile.xvecs1);
    cl_program prog;
    gpuseg_status st = gpuseg__program(ops->ctx, "conv_direct", opts, &prog);
    if (st != GPUSEG_OK)
        return st;
    if ((st = gpuseg__ops_kernel(ops, prog, "conv_direct", "conv3x3_direct", &ops->direct3)) ||
        (st = gpuseg__ops_kernel(ops, prog, "conv_direct", "conv1x1_direct", &ops->direct1)))
        return st;
    if (band && /* these two exist in the band layout's program only */
        ((st = gpuseg__ops_kernel(ops, prog, "conv_direct", "conv1x1_fused", &ops->fused1)) ||
         (st = gpuseg__ops_kernel(ops, prog, "conv_direct", "conv3x3_flat", &ops->flat3))))
        return st;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__conv_direct(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                                  const gpuseg__conv_geom *g, cl_mem src, cl_mem out) {
    gpuseg_ctx *ctx = ops->ctx;
    gpuseg_status st;
    if ((st = kernels(ops)) != GPUSEG_OK)
        return st;
    unsigned fhp;
    const bool fl = flat(&ops->tile, d, &fhp);
    cl_kernel k = fl ? ops->flat3 : d->ksize == 3 ? ops->direct3 : ops->direct1;
    const cl_int Ci = (cl_int)d->cin, Co = (cl_int)d->cout, H = (cl_int)d->height,
                 W = (cl_int)d->width, hp = (cl_int)g->hp, wp = (cl_int)g->wp;
    const size_t cob = round_up(d->cout, ops->tile.couts) / ops->tile.couts,
                 yb = round_up(d->height, ops->tile.rows) / ops->tile.rows;
    if (fl) {
        /* The long row H * wp in as many pieces as there are row bands otherwise, each a
         * multiple of the work-item's step. */
        const size_t len = (size_t)d->height * g->wp,
                     step = 8 * (size_t)ops->tile.xvecs * ops->tile.rows,
                     seg = round_up((len + yb - 1) / yb, step);
        const cl_int segi = (cl_int)seg;
        if ((st = gpuseg__set_args(ctx, k, 12, sizeof(cl_mem), &src, sizeof(cl_mem), &d->weight,
                                   sizeof(cl_mem), &d->bias, sizeof(cl_mem), &d->residual,
                                   sizeof(cl_mem), &out, sizeof(cl_int), &Ci, sizeof(cl_int), &Co,
                                   sizeof(cl_int), &H, sizeof(cl_int), &W, sizeof(cl_int), &hp,
                                   sizeof(cl_int), &wp, sizeof(cl_int), &segi)) != GPUSEG_OK)
            return st;
        const size_t global[3] = {cob, (len + seg - 1) / seg, d->batch};
        const size_t local[3] = {1, 1, 1};
        return gpuseg__run(ctx, k, 3, global, local);
    }
    if ((st = gpuseg__set_args(ctx, k, 11, sizeof(cl_mem), &src, sizeof(cl_mem), &d->weight,
                               sizeof(cl_mem), &d->bias, sizeof(cl_mem), &d->residual,
                               sizeof(cl_mem), &out, sizeof(cl_int), &Ci, sizeof(cl_int), &Co,
                               sizeof(cl_int), &H, sizeof(cl_int), &W, sizeof(cl_int), &hp,
                               sizeof(cl_int), &wp)) != GPUSEG_OK)
        return st;
    if (ops->tile.layout == GPUSEG__CONV_BLOCK) {
        /* (x blocks, row bands, channel blocks * batch); work-groups of up to 64 work-items,
         * x fastest so that a group's loads are neighbouring; the kernel skips the round-up. */
        const size_t xb = round_up(d->width, 8 * ops->tile.xvecs) / (8 * ops->tile.xvecs);
        size_t cap = 64, kmax = 0; /* and no more than the device allows this kernel */
        if (clGetKernelWorkGroupInfo(k, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof kmax, &kmax,
                                     NULL) == CL_SUCCESS &&
            kmax && kmax < cap)
            cap = kmax;
        size_t lx = 1, ly = 1;
        while (lx < xb && 2 * lx <= cap)
            lx *= 2;
        while (ly < yb && 2 * lx * ly <= cap)
            ly *= 2;
        const size_t global[3] = {xb, yb, cob * d->batch};
        const size_t local[3] = {lx, ly, 1};
        return gpuseg__run(ctx, k, 3, global, local);
    }
    const size_t global[3] = {cob, yb, d->batch};
    const size_t local[3] = {1, 1, 1};
    return gpuseg__run(ctx, k, 3, global, local);
}

/* Chunk vectors per channel of the fused 1x1 kernel: 64 (512 pixels), fewer where cin * 64
 * float8 would pass 128 KiB (a quarter of a 512 KiB L2) or half the device's local memory, a
 * multiple of the register blocking; 0 when not even one block fits (then the two-pass path).
 * The prologue loads take one piece of each of cin planes per chunk, and short pieces are what
 * the hardware prefetcher follows worst. Measured (best of 6, interleaved, GFLOP/s for 32->64 at
 * 112^2, 64->32 at 224^2, 32->3 at 224^2; two sessions): 256-pixel chunks 43.5 / 30.9 / 6.5 and
 * 37.2 / 27.0 / 6.2; 512 pixels 43.9 / 38.5 / 10.4 and 40.6 / 28.2 / 9.5. */
static unsigned fused_vectors(const gpuseg__ops *ops, const gpuseg__conv_desc *d) {
    uint64_t budget = 128 << 10;
    const uint64_t local = ops->ctx->dev.local_mem_bytes;
    if (local / 2 < budget)
        budget = local / 2;
    uint64_t nv = budget / (8 * sizeof(float)) / d->cin;
    if (nv > 64)
        nv = 64;
    return (unsigned)(nv / ops->tile.xvecs1 * ops->tile.xvecs1);
}

bool gpuseg__conv_direct_fused(const gpuseg__ops *ops, const gpuseg__conv_desc *d) {
    return ops->tile.layout == GPUSEG__CONV_BAND && d->ksize == 1 && fused_vectors(ops, d) > 0;
}

gpuseg_status gpuseg__conv1x1_fused(gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in,
                                    cl_mem out) {
    gpuseg_ctx *ctx = ops->ctx;
    gpuseg_status st;
    if ((st = kernels(ops)) != GPUSEG_OK)
        return st;
    const unsigned nv = fused_vectors(ops, d);
    const size_t hw = (size_t)d->height * d->width, chunk = 8 * (size_t)nv;
    const size_t per = gpuseg__ops_chunks_per_item(ops, (hw + chunk - 1) / chunk, d->batch);
    const cl_int Ci = (cl_int)d->cin, Co = (cl_int)d->cout, HW = (cl_int)hw,
                 span = (cl_int)(per * chunk), nvi = (cl_int)nv, relu = d->relu ? 1 : 0;
    cl_kernel k = ops->fused1;
    if ((st = gpuseg__set_args(ctx, k, 16, sizeof(cl_mem), &in, sizeof(cl_mem), &d->add_in,
                               sizeof(cl_mem), &d->pre_add, sizeof(cl_mem), &d->bn_scale,
                               sizeof(cl_mem), &d->bn_shift, sizeof(cl_int), &relu, sizeof(cl_mem),
                               &d->weight, sizeof(cl_mem), &d->bias, sizeof(cl_mem), &d->residual,
                               sizeof(cl_mem), &out, sizeof(cl_int), &Ci, sizeof(cl_int), &Co,
                               sizeof(cl_int), &HW, sizeof(cl_int), &span, sizeof(cl_int), &nvi,
                               (size_t)nv * d->cin * 8 * sizeof(float), NULL)) != GPUSEG_OK)
        return st;
    const size_t global[2] = {(hw + per * chunk - 1) / (per * chunk), d->batch};
    const size_t local[2] = {1, 1};
    return gpuseg__run(ctx, k, 2, global, local);
}
