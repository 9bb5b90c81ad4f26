/* ops/conv_winograd.c: host side of the Winograd F(2x2,3x3) convolution
 * (kernels/conv_winograd.cl): the prologue geometry it needs (planes covering every 4x4 patch of
 * every 2x2 tile), the weight transform into scratch slot 3 per call, and the launch of the fused
 * input-transform / GEMM / output-transform kernel, whose local buffers are sized here. */
#include <stdio.h>

#include "ops/ops_internal.h"

/* Register blocking of the GEMM stage (output channels x 8-tile vectors): the conv1x1_fused
 * micro-kernel's 4 x 2, 8 float8 accumulators (measured there: 4 x 2 beats 6 x 2, 4 x 3, 8 x 1;
 * here 8 x 1 was slower on every CPnet shape, 3 alternated runs). */
#define WINO_COB 4
#define WINO_XB  2
/* Output channels per pass over V (kernel comment): 32 makes the 32-channel layers one group and
 * keeps M at 128 KiB or less. 16 and 64 were compared only in an early, noisy session (with a
 * too-small local V then; no difference beyond the noise) and not measured again. */
#define WINO_CG 32

static size_t round_up(size_t v, size_t m) {
    return (v + m - 1) / m * m;
}

/* Tile rows, and tiles per row rounded up to whole 8-tile vectors. */
static void tiles(const gpuseg__conv_desc *d, unsigned *th, unsigned *twp) {
    *th = (d->height + 1) / 2;
    *twp = (unsigned)round_up((d->width + 1) / 2, 8);
}

void gpuseg__conv_winograd_geom(const gpuseg__conv_desc *d, gpuseg__conv_geom *g) {
    unsigned th, twp;
    tiles(d, &th, &twp);
    /* Tile (ty, tx) reads plane rows 2ty..2ty+3 and columns 2tx..2tx+3 (the plane has the
     * one-pixel zero border at top and left), and the kernel's loads of a vector reach column
     * 2 * tx0 + 17: so 2 * th + 2 rows of 2 * twp + 2. At most H + 3 and W + 17, inside the
     * padding conv.c's size check allows for. */
    g->hp = 2 * th + 2;
    g->wp = 2 * twp + 2;
}

/* Vectors of 8 tiles per chunk: V (16 * cin * nv float8) within 256 KiB (half the 512 KiB L2 of
 * the machine measured), V + M (16 * CG * nv float8) within the device's local memory, at most 8
 * (64 tiles), a multiple of WINO_XB; 0 when not even one block fits (the layer then runs the
 * direct kernel). A 128 KiB cap would leave cin 128 and 256 no whole register block (nv 1).
 * Larger chunks amortise the weights: each chunk streams all 16 * cin * cout of U (4 MiB at
 * 256 x 256, from L3) for 2 * 8 * nv FLOPs per weight. */
static unsigned wino_vectors(const gpuseg__ops *ops, const gpuseg__conv_desc *d) {
    const uint64_t budget = 256 << 10;
    const uint64_t local = ops->ctx->dev.local_mem_bytes;
    const uint64_t vbytes = 16 * 32 * (uint64_t)d->cin, mbytes = 16 * WINO_CG * 32;
    uint64_t nv = budget / vbytes;
    if (nv > 8)
        nv = 8;
    nv = nv / WINO_XB * WINO_XB;
    while (nv && nv * (vbytes + mbytes) + 2 * 16 * 3 * 32 > local) /* (+3: the kernel's padding) */
        nv -= WINO_XB;
    return (unsigned)nv;
}

bool gpuseg__conv_winograd_takes(const gpuseg__ops *ops, const gpuseg__conv_desc *d) {
    return d->ksize == 3 && wino_vectors(ops, d) > 0;
}

static gpuseg_status kernels(gpuseg__ops *ops) {
    if (ops->wino_w && ops->wino3)
        return GPUSEG_OK;
    char opts[96];
    snprintf(opts, sizeof opts, "-DWINO_COB=%d -DWINO_XB=%d -DWINO_CG=%d", WINO_COB, WINO_XB,
             WINO_CG);
    cl_program prog;
    gpuseg_status st = gpuseg__program(ops->ctx, "conv_winograd", opts, &prog);
    if (st != GPUSEG_OK)
        return st;
    if ((st = gpuseg__ops_kernel(ops, prog, "conv_winograd", "wino_weights", &ops->wino_w)))
        return st;
    return gpuseg__ops_kernel(ops, prog, "conv_winograd", "conv3x3_winograd", &ops->wino3);
}

gpuseg_status gpuseg__conv_winograd(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                                    const gpuseg__conv_geom *g, cl_mem src, cl_mem out) {
    gpuseg_ctx *ctx = ops->ctx;
    gpuseg_status st;
    const unsigned nv = wino_vectors(ops, d);
    if (d->ksize != 3 || !nv)
        return gpuseg__fail(ctx, GPUSEG_INTERNAL, "winograd: layer not supported");
    if ((st = kernels(ops)) != GPUSEG_OK)
        return st;
    /* The transformed weights, per call (16 * cin * cout floats: 1/(H * W / 4) of the
     * convolution's work, and no cache to invalidate when the caller rewrites a weight
     * buffer). */
    const size_t cop = round_up(d->cout, WINO_COB);
    size_t ubytes;
    if (!gpuseg__mul4_size(16, d->cin, cop, sizeof(float), &ubytes))
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "winograd: weight size overflows");
    cl_mem U;
    if ((st = gpuseg__ops_scratch(ops, 3, ubytes, &U)) != GPUSEG_OK)
        return st;
    const cl_int Ci = (cl_int)d->cin, Co = (cl_int)d->cout;
    if ((st = gpuseg__set_args(ctx, ops->wino_w, 4, sizeof(cl_mem), &d->weight, sizeof(cl_mem), &U,
                               sizeof(cl_int), &Ci, sizeof(cl_int), &Co)) != GPUSEG_OK)
        return st;
    const size_t wglobal[1] = {cop}, wlocal[1] = {1};
    if ((st = gpuseg__run(ctx, ops->wino_w, 1, wglobal, wlocal)) != GPUSEG_OK)
        return st;

    unsigned th, twp;
    tiles(d, &th, &twp);
    const size_t total = (size_t)th * twp, chunk = 8 * (size_t)nv;
    const size_t per = gpuseg__ops_chunks_per_item(ops, (total + chunk - 1) / chunk, d->batch);
    const cl_int H = (cl_int)d->height, W = (cl_int)d->width, hp = (cl_int)g->hp,
                 wp = (cl_int)g->wp, thi = (cl_int)th, twpi = (cl_int)twp,
                 span = (cl_int)(per * chunk), nvi = (cl_int)nv;
    /* V: 16 * (cin * nv + 3) float8, M: 16 * (CG * nv + 3) (the kernel pads both xi strides). */
    const size_t vlocal = (size_t)16 * ((size_t)d->cin * nv + 3) * 8 * sizeof(float),
                 mlocal = (size_t)16 * ((size_t)WINO_CG * nv + 3) * 8 * sizeof(float);
    cl_kernel k = ops->wino3;
    if ((st = gpuseg__set_args(ctx, k, 17, sizeof(cl_mem), &src, sizeof(cl_mem), &U, sizeof(cl_mem),
                               &d->bias, sizeof(cl_mem), &d->residual, sizeof(cl_mem), &out,
                               sizeof(cl_int), &Ci, sizeof(cl_int), &Co, sizeof(cl_int), &H,
                               sizeof(cl_int), &W, sizeof(cl_int), &hp, sizeof(cl_int), &wp,
                               sizeof(cl_int), &thi, sizeof(cl_int), &twpi, sizeof(cl_int), &span,
                               sizeof(cl_int), &nvi, vlocal, NULL, mlocal, NULL)) != GPUSEG_OK)
        return st;
    const size_t global[2] = {(total + per * chunk - 1) / (per * chunk), d->batch};
    const size_t local[2] = {1, 1};
    return gpuseg__run(ctx, k, 2, global, local);
}
