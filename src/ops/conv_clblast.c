/* ops/conv_clblast.c: convolution as im2col + GEMM with CLBlast (the BLAS the design names).
 * Per sample: the prologue buffer (zero-bordered, tight planes) is unfolded into a
 * [cin*k*k][h*w] column matrix (a 1x1 layer uses the prologue planes directly), and
 * out[n] = W [cout][cin*k*k] x col + out[n], after out was set to bias (+ residual). */
#include <clblast_c.h>

#include "ops/ops_internal.h"

void gpuseg__conv_clblast_geom(const gpuseg__conv_desc *d, gpuseg__conv_geom *g) {
    const unsigned pad = d->ksize / 2;
    g->hp = d->height + 2 * pad;
    g->wp = d->width + 2 * pad;
}

gpuseg_status gpuseg__conv_clblast(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                                   const gpuseg__conv_geom *g, cl_mem src, cl_mem out) {
    gpuseg_ctx *ctx = ops->ctx;
    gpuseg_status st;
    const size_t hw = (size_t)d->height * d->width;
    const size_t kdim = (size_t)d->cin * d->ksize * d->ksize;
    const cl_int C = (cl_int)d->cin, H = (cl_int)d->height, W = (cl_int)d->width,
                 K = (cl_int)d->ksize, hp = (cl_int)g->hp, wp = (cl_int)g->wp, Co = (cl_int)d->cout,
                 HW = (cl_int)hw, planes = (cl_int)(d->batch * d->cout);

    /* out = bias (+ residual); the GEMMs then accumulate with beta = 1. */
    cl_kernel kb;
    if ((st = gpuseg__kernel(ctx, "conv", "conv_bias_init", &kb)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ctx, kb, 6, sizeof(cl_mem), &d->bias, sizeof(cl_mem), &d->residual,
                               sizeof(cl_mem), &out, sizeof(cl_int), &Co, sizeof(cl_int), &HW,
                               sizeof(cl_int), &planes)) != GPUSEG_OK)
        return st;
    const size_t gb[1] = {(size_t)planes}, lb[1] = {planes >= 16 ? 16 : 1};
    if ((st = gpuseg__run(ctx, kb, 1, gb, lb)) != GPUSEG_OK)
        return st;

    cl_mem col = src;
    cl_kernel ki = NULL;
    if (d->ksize != 1) {
        size_t bytes;
        if (!gpuseg__mul_size(kdim * hw, sizeof(float), &bytes))
            return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "im2col size overflows");
        if ((st = gpuseg__ops_scratch(ops, 1, bytes, &col)) != GPUSEG_OK ||
            (st = gpuseg__kernel(ctx, "conv", "conv_im2col", &ki)) != GPUSEG_OK)
            return st;
    }
    for (unsigned n = 0; n < d->batch; n++) {
        size_t b_off = 0;
        if (ki) {
            const cl_int nn = (cl_int)n;
            if ((st = gpuseg__set_args(ctx, ki, 9, sizeof(cl_mem), &src, sizeof(cl_mem), &col,
                                       sizeof(cl_int), &nn, sizeof(cl_int), &C, sizeof(cl_int), &H,
                                       sizeof(cl_int), &W, sizeof(cl_int), &K, sizeof(cl_int), &hp,
                                       sizeof(cl_int), &wp)) != GPUSEG_OK)
                return st;
            const size_t gi[2] = {(size_t)H, kdim}, li[2] = {H >= 16 ? 16 : 1, 1};
            if ((st = gpuseg__run(ctx, ki, 2, gi, li)) != GPUSEG_OK)
                return st;
        } else {
            b_off = (size_t)n * d->cin * hw; /* 1x1: the prologue planes are the columns */
        }
        cl_event ev = NULL;
        CLBlastStatusCode cs =
            CLBlastSgemm(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeNo, d->cout, hw,
                         kdim, 1.0f, d->weight, 0, kdim, col, b_off, hw, 1.0f, out,
                         (size_t)n * d->cout * hw, hw, &ctx->queue, ctx->prof ? &ev : NULL);
        if (ev) /* GPUSEG_PROFILE: CLBlast's event is its last kernel's (the GEMM itself) */
            gpuseg__profile_event(ctx, "CLBlastSgemm", ev);
        if (cs != CLBlastSuccess)
            return gpuseg__fail(
                ctx, cs == CLBlastTempBufferAllocFailure ? GPUSEG_DEVICE_MEMORY : GPUSEG_OPENCL,
                "CLBlastSgemm(%u x %zu x %zu): CLBlast status %d", d->cout, hw, kdim, (int)cs);
    }
    return GPUSEG_OK;
}
