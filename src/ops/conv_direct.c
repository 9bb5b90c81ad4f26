/* ops/conv_direct.c: host side of the direct convolution kernels (kernels/conv_direct.cl
 * conv3x3_direct / conv1x1_direct), register-blocked: each work-item keeps rows x output
 * channels x 8-pixel vectors in registers (the ops object's tile, passed to the compiler as -D
 * constants) and, in the BAND layout (CPUs), walks its row band across the whole width; in the
 * BLOCK layout (GPUs) it computes one block and neighbouring work-items take the next ones. */
#include <stdio.h>

#include "ops/ops_internal.h"

static size_t round_up(size_t v, size_t m) {
    return (v + m - 1) / m * m;
}

/* Geometry with the ops object's tile (the description alone does not know it). */
static void geom(const gpuseg__conv_tile *t, const gpuseg__conv_desc *d, gpuseg__conv_geom *g) {
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
    if (ops->direct3 && ops->direct1)
        return GPUSEG_OK;
    char opts[128];
    snprintf(opts, sizeof opts, "-DCONV_R=%u -DCONV_COB=%u -DCONV_XB=%u -DCONV_BLOCK=%d",
             ops->tile.rows, ops->tile.couts, ops->tile.xvecs,
             ops->tile.layout == GPUSEG__CONV_BLOCK);
    cl_program prog;
    gpuseg_status st = gpuseg__program(ops->ctx, "conv_direct", opts, &prog);
    if (st != GPUSEG_OK)
        return st;
    cl_int err;
    if (!ops->direct3 && !(ops->direct3 = clCreateKernel(prog, "conv3x3_direct", &err)))
        return gpuseg__fail_cl(ops->ctx, err, "clCreateKernel(conv_direct.cl: conv3x3_direct)");
    if (!ops->direct1 && !(ops->direct1 = clCreateKernel(prog, "conv1x1_direct", &err)))
        return gpuseg__fail_cl(ops->ctx, err, "clCreateKernel(conv_direct.cl: conv1x1_direct)");
    return GPUSEG_OK;
}

gpuseg_status gpuseg__conv_direct(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                                  const gpuseg__conv_geom *g, cl_mem src, cl_mem out) {
    gpuseg_ctx *ctx = ops->ctx;
    gpuseg_status st;
    if ((st = kernels(ops)) != GPUSEG_OK)
        return st;
    cl_kernel k = d->ksize == 3 ? ops->direct3 : ops->direct1;
    const cl_int Ci = (cl_int)d->cin, Co = (cl_int)d->cout, H = (cl_int)d->height,
                 W = (cl_int)d->width, hp = (cl_int)g->hp, wp = (cl_int)g->wp;
    if ((st = gpuseg__set_args(ctx, k, 11, sizeof(cl_mem), &src, sizeof(cl_mem), &d->weight,
                               sizeof(cl_mem), &d->bias, sizeof(cl_mem), &d->residual,
                               sizeof(cl_mem), &out, sizeof(cl_int), &Ci, sizeof(cl_int), &Co,
                               sizeof(cl_int), &H, sizeof(cl_int), &W, sizeof(cl_int), &hp,
                               sizeof(cl_int), &wp)) != GPUSEG_OK)
        return st;
    const size_t cob = round_up(d->cout, ops->tile.couts) / ops->tile.couts,
                 yb = round_up(d->height, ops->tile.rows) / ops->tile.rows;
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
