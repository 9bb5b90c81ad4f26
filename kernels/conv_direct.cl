/* kernels/conv_direct.cl: direct 2-D convolution (kernel 3x3 or 1x1, stride 1) reading the
 * prologue buffer that conv.cl's conv_prologue wrote (zero borders, planes rounded up to the
 * blocking), register-blocked, with bias and residual in the epilogue. The host builds it with
 * -DCONV_R/-DCONV_COB/-DCONV_XB/-DCONV_BLOCK from its tuning table (src/ops/ops.c). */

/* Direct-kernel blocking (compile-time constants, so the accumulators live in registers): each
 * work-item computes CONV_R output rows x CONV_COB output channels x CONV_XB vectors of 8
 * consecutive pixels. R*COB*XB float8 accumulators must fit the register file (16 ymm on AVX2). */
#ifndef CONV_R
#define CONV_R 2
#endif
#ifndef CONV_COB
#define CONV_COB 4
#endif
#ifndef CONV_XB
#define CONV_XB 1
#endif
/* 1: one block per work-item (GPUs; global (x blocks, row bands, channel blocks * batch)).
 * 0: a work-item walks its row band across the width (CPUs; global (channel blocks, row bands,
 * batch)). */
#ifndef CONV_BLOCK
#define CONV_BLOCK 0
#endif

/* The direct convolution body for kernel size KS (1 or 3), inlined into the two kernels below so
 * that every loop over KS, CONV_R, CONV_COB and CONV_XB unrolls and the accumulators become
 * registers. The input comes from the prologue buffer (hp x wp planes, zero borders, rows and
 * columns rounded up to the blocking), so the inner loop has no bounds checks. In the band
 * layout one work-item walks a whole row band, looping over the x blocks itself, because PoCL's
 * per-work-group cost would dominate with one block per work-group; in the block layout (GPUs)
 * it computes one x block. */
inline void conv_direct_body(const int KS, __global const float *src, __global const float *wt,
                             __global const float *bias, __global const float *res,
                             __global float *out, const int Cin, const int Cout, const int H,
                             const int W, const int hp, const int wp) {
    const int xstep = 8 * CONV_XB;
#if CONV_BLOCK
    const int cob = (Cout + CONV_COB - 1) / CONV_COB;
    const int co0 = (int)(get_global_id(2) % cob) * CONV_COB;
    const int n = (int)(get_global_id(2) / cob);
    const int y0 = get_global_id(1) * CONV_R;
    const int xbeg = get_global_id(0) * xstep;
    if (y0 >= H || xbeg >= W)
        return;
    const int xend = xbeg + xstep;
#else
    const int co0 = get_global_id(0) * CONV_COB;
    const int y0 = get_global_id(1) * CONV_R;
    const int n = get_global_id(2);
    if (y0 >= H || co0 >= Cout)
        return;
    const int xbeg = 0, xend = W;
#endif
    const int KK = KS * KS;
    __global const float *srcn = src + (size_t)n * Cin * hp * wp;
    /* Channels past Cout read the last real channel's weights (valid memory); their results are
     * never stored. */
    __global const float *wrow[CONV_COB];
#pragma unroll
    for (int j = 0; j < CONV_COB; j++)
        wrow[j] = wt + (size_t)min(co0 + j, Cout - 1) * Cin * KK;
    for (int x0 = xbeg; x0 < xend; x0 += xstep) {
        float8 acc[CONV_R][CONV_COB][CONV_XB];
#pragma unroll
        for (int r = 0; r < CONV_R; r++)
#pragma unroll
            for (int j = 0; j < CONV_COB; j++)
#pragma unroll
                for (int b = 0; b < CONV_XB; b++)
                    acc[r][j][b] = (float8)(0.0f);
        __global const float *p = srcn + (size_t)y0 * wp + x0;
        for (int ci = 0; ci < Cin; ci++, p += (size_t)hp * wp) {
            /* Tap-outer order: each weight is broadcast once and used at once by the R*XB
             * input vectors of that tap (reloaded from L1 per tap). Row-outer order would keep
             * broadcast weights alive across rows and spill them. */
#pragma unroll
            for (int ky = 0; ky < KS; ky++) {
#pragma unroll
                for (int kx = 0; kx < KS; kx++) {
                    float8 a[CONV_R][CONV_XB];
#pragma unroll
                    for (int r = 0; r < CONV_R; r++)
#pragma unroll
                        for (int b = 0; b < CONV_XB; b++)
                            a[r][b] = vload8(0, p + (r + ky) * wp + 8 * b + kx);
#pragma unroll
                    for (int j = 0; j < CONV_COB; j++) {
                        const float8 w = (float8)(wrow[j][ci * KK + ky * KS + kx]);
#pragma unroll
                        for (int r = 0; r < CONV_R; r++)
#pragma unroll
                            for (int b = 0; b < CONV_XB; b++)
                                acc[r][j][b] = fma(w, a[r][b], acc[r][j][b]);
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < CONV_R; r++) {
            const int y = y0 + r;
            if (y >= H)
                continue;
#pragma unroll
            for (int j = 0; j < CONV_COB; j++) {
                const int co = co0 + j;
                if (co >= Cout)
                    continue;
                const float bv = bias ? bias[co] : 0.0f;
                const size_t o = (((size_t)n * Cout + co) * H + y) * W;
#pragma unroll
                for (int b = 0; b < CONV_XB; b++) {
                    const int x = x0 + 8 * b;
                    float8 v = acc[r][j][b] + (float8)(bv);
                    if (x + 8 <= W) {
                        if (res)
                            v += vload8(0, res + o + x);
                        vstore8(v, 0, out + o + x);
                    } else {
                        float t[8];
                        vstore8(v, 0, t);
                        for (int e = 0; e < 8 && x + e < W; e++)
                            out[o + x + e] = t[e] + (res ? res[o + x + e] : 0.0f);
                    }
                }
            }
        }
    }
}

/* Band layout: global size (ceil(Cout / CONV_COB), ceil(H / CONV_R), N), local (1, 1, 1):
 * output-channel blocks vary fastest, so that work-groups run back to back on one row band of
 * the input, which then stays in the core's L2 cache. Block layout: global (x blocks, row bands,
 * channel blocks * N), local up to 64 with x fastest (src/ops/conv_direct.c). */
__kernel void conv3x3_direct(__global const float *src, __global const float *wt,
                             __global const float *bias, __global const float *res,
                             __global float *out, const int Cin, const int Cout, const int H,
                             const int W, const int hp, const int wp) {
    conv_direct_body(3, src, wt, bias, res, out, Cin, Cout, H, W, hp, wp);
}

__kernel void conv1x1_direct(__global const float *src, __global const float *wt,
                             __global const float *bias, __global const float *res,
                             __global float *out, const int Cin, const int Cout, const int H,
                             const int W, const int hp, const int wp) {
    conv_direct_body(1, src, wt, bias, res, out, Cin, Cout, H, W, hp, wp);
}
