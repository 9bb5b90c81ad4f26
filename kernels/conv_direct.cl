/* kernels/conv_direct.cl: direct 2-D convolution (kernel 3x3 or 1x1, stride 1) reading the
 * prologue buffer that conv.cl's conv_prologue wrote (zero borders, planes rounded up to the
 * blocking), register-blocked, with bias and residual in the epilogue; on CPUs also a variant for
 * narrow planes (conv3x3_flat) and a 1x1 kernel with the prologue fused in (conv1x1_fused). The
 * host builds it with -DCONV_R/-DCONV_COB/-DCONV_XB/-DCONV_BLOCK/-DCONV1_COB/-DCONV1_XB from its
 * tuning table (src/ops/ops.c). */

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

/* The direct convolution body for kernel size KS (1 or 3), inlined into the kernels below so
 * that every loop over KS, CONV_R, CONV_COB and CONV_XB unrolls and the accumulators become
 * registers. The input comes from the prologue buffer (hp x wp planes, zero borders, rows and
 * columns rounded up to the blocking), so the inner loop has no bounds checks. In the band
 * layout one work-item walks a whole row band, looping over the x blocks itself, because PoCL's
 * per-work-group cost would dominate with one block per work-group; in the block layout (GPUs)
 * it computes one x block. */
__attribute__((always_inline)) static inline void
conv_direct_body(const int KS, const int FLAT, __global const float *src, __global const float *wt,
                 __global const float *bias, __global const float *res, __global float *out,
                 const int Cin, const int Cout, const int H, const int W, const int hp,
                 const int wp, const int seg) {
    /* FLAT (band layout only): the padded plane is read as one long row of H * wp pixels, and
     * the R "rows" of the blocking are the next R * XB vectors along it (see conv3x3_flat). */
    const int xstep = FLAT ? 8 * CONV_XB * CONV_R : 8 * CONV_XB;
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
    const int y0 = FLAT ? 0 : get_global_id(1) * CONV_R;
    const int n = get_global_id(2);
    const int xbeg = FLAT ? get_global_id(1) * seg : 0;
    const int xend = FLAT ? min(xbeg + seg, H * wp) : W;
    if (y0 >= H || xbeg >= xend || co0 >= Cout)
        return;
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
                            a[r][b] = vload8(0, p + (FLAT ? 8 * CONV_XB * r : r * wp) + ky * wp +
                                                    8 * b + kx);
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
        if (FLAT) {
            /* Vector lanes may cross rows: map each back to (y, x) and skip the pad columns
             * and the pixels past the last row. One division per output pixel, against the
             * Cin * 9 multiply-adds it took. */
#pragma unroll
            for (int r = 0; r < CONV_R; r++)
#pragma unroll
                for (int j = 0; j < CONV_COB; j++) {
                    const int co = co0 + j;
                    if (co >= Cout)
                        continue;
                    const float bv = bias ? bias[co] : 0.0f;
                    const size_t o = ((size_t)n * Cout + co) * H * W;
#pragma unroll
                    for (int b = 0; b < CONV_XB; b++) {
                        float t[8];
                        vstore8(acc[r][j][b], 0, t);
                        const int q = x0 + 8 * (CONV_XB * r + b);
                        for (int e = 0; e < 8; e++) {
                            const int y = (q + e) / wp, x = q + e - y * wp;
                            if (y < H && x < W) {
                                const size_t i = o + (size_t)y * W + x;
                                out[i] = t[e] + bv + (res ? res[i] : 0.0f);
                            }
                        }
                    }
                }
            continue;
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
    conv_direct_body(3, 0, src, wt, bias, res, out, Cin, Cout, H, W, hp, wp, 0);
}

__kernel void conv1x1_direct(__global const float *src, __global const float *wt,
                             __global const float *bias, __global const float *res,
                             __global float *out, const int Cin, const int Cout, const int H,
                             const int W, const int hp, const int wp) {
    conv_direct_body(1, 0, src, wt, bias, res, out, Cin, Cout, H, W, hp, wp, 0);
}

#if !CONV_BLOCK
/* 3x3 on narrow planes (band layout): a plane W pixels wide costs round_up(W, 8 * XB) pixels
 * of work per row in conv3x3_direct (28 -> 32: 14% more), but only W + 2 when the padded plane
 * (row stride wp = W + 2, zero borders) is read as one long row: output q = y * wp + x needs
 * input q + ky * wp + kx for every tap, so vectors run on across rows and the two pad columns
 * per row are the only waste (28 -> 30: 7%). Global (ceil(Cout / COB), ceil(H * wp / seg), N):
 * a work-item takes seg pixels (a multiple of 8 * XB * R) of the long row. The host sizes the
 * prologue planes so that the last vectors' reads stay inside them (src/ops/conv_direct.c). */
__kernel void conv3x3_flat(__global const float *src, __global const float *wt,
                           __global const float *bias, __global const float *res,
                           __global float *out, const int Cin, const int Cout, const int H,
                           const int W, const int hp, const int wp, const int seg) {
    conv_direct_body(3, 1, src, wt, bias, res, out, Cin, Cout, H, W, hp, wp, seg);
}
#endif

#if !CONV_BLOCK
/* --- 1x1 convolution with the prologue fused in (band layout, CPUs) ---------------------------
 * A 1x1 convolution is a GEMM with a short K (cin), so the direct kernel above is bound by
 * memory: the prologue pass writes a copy of the input, and the kernel reads it once per block
 * of output channels from cin planes far apart. Here a work-item takes a run of pixels of one
 * sample, in chunks: it applies the prologue (skip add, channel constant, BN, ReLU) to the
 * chunk's cin x pixels once, into a local buffer that stays in L2, then computes every output
 * channel of the chunk from it, CONV1_COB channels x CONV1_XB vectors of 8 pixels at a time in
 * registers. The input is read from memory once and no prologue buffer is written. */
#ifndef CONV1_COB
#define CONV1_COB 4
#endif
#ifndef CONV1_XB
#define CONV1_XB 2
#endif
/* Global size (ceil(HW / span), N), local (1, 1). span (pixels, a multiple of 8 * nv) is the
 * work-item's run; the planes are contiguous (H * W = HW pixels, no padding). buf holds
 * Cin * nv float8 (the host sizes it). The prologue is the same arithmetic as conv.cl's
 * conv_prologue, so results match the two-pass path. */
__kernel void conv1x1_fused(__global const float *in, __global const float *add_in,
                            __global const float *pre_add, __global const float *scale,
                            __global const float *shift, const int relu, __global const float *wt,
                            __global const float *bias, __global const float *res,
                            __global float *out, const int Cin, const int Cout, const int HW,
                            const int span, const int nv, __local float8 *buf) {
    const int n = get_global_id(1);
    const int pbeg = get_global_id(0) * span;
    if (pbeg >= HW)
        return;
    const int pend = min(pbeg + span, HW);
    const float lo = relu ? 0.0f : -INFINITY;
    __global const float *inn = in + (size_t)n * Cin * HW;
    __global const float *addn = add_in ? add_in + (size_t)n * Cin * HW : add_in;
    for (int c0 = pbeg; c0 < pend; c0 += 8 * nv) {
        /* Vectors of this chunk, rounded up to the register blocking (the extra ones are computed
         * but not stored). */
        const int nvec = min(nv, (pend - c0 + 8 * CONV1_XB - 1) / (8 * CONV1_XB) * CONV1_XB);
        for (int ci = 0; ci < Cin; ci++) {
            const float s = scale ? scale[ci] : 1.0f;
            const float p = pre_add ? pre_add[n * Cin + ci] : 0.0f;
            const float t = scale ? fma(p, s, shift[ci]) : p;
            __global const float *a = inn + (size_t)ci * HW;
            __global const float *b = addn ? addn + (size_t)ci * HW : addn;
            for (int v = 0; v < nvec; v++) {
                const int x = c0 + 8 * v;
                float8 u;
                if (x + 8 <= HW) {
                    u = vload8(0, a + x);
                    if (b)
                        u += vload8(0, b + x);
                } else {
                    float e[8];
                    for (int i = 0; i < 8; i++)
                        e[i] = x + i < HW ? a[x + i] + (b ? b[x + i] : 0.0f) : 0.0f;
                    u = vload8(0, e);
                }
                buf[ci * nvec + v] = fmax(fma(u, (float8)(s), (float8)(t)), (float8)(lo));
            }
        }
        for (int co0 = 0; co0 < Cout; co0 += CONV1_COB) {
            __global const float *wrow[CONV1_COB];
#pragma unroll
            for (int j = 0; j < CONV1_COB; j++)
                wrow[j] = wt + (size_t)min(co0 + j, Cout - 1) * Cin;
            for (int v0 = 0; v0 < nvec; v0 += CONV1_XB) {
                float8 acc[CONV1_COB][CONV1_XB];
#pragma unroll
                for (int j = 0; j < CONV1_COB; j++)
#pragma unroll
                    for (int b = 0; b < CONV1_XB; b++)
                        acc[j][b] = (float8)(0.0f);
                __local const float8 *q = buf + v0;
                for (int ci = 0; ci < Cin; ci++, q += nvec) {
                    float8 a[CONV1_XB];
#pragma unroll
                    for (int b = 0; b < CONV1_XB; b++)
                        a[b] = q[b];
#pragma unroll
                    for (int j = 0; j < CONV1_COB; j++) {
                        const float8 w = (float8)(wrow[j][ci]);
#pragma unroll
                        for (int b = 0; b < CONV1_XB; b++)
                            acc[j][b] = fma(w, a[b], acc[j][b]);
                    }
                }
#pragma unroll
                for (int j = 0; j < CONV1_COB; j++) {
                    const int co = co0 + j;
                    if (co >= Cout)
                        continue;
                    const float bv = bias ? bias[co] : 0.0f;
                    const size_t o = ((size_t)n * Cout + co) * HW;
#pragma unroll
                    for (int b = 0; b < CONV1_XB; b++) {
                        const int x = c0 + 8 * (v0 + b);
                        float8 v = acc[j][b] + (float8)(bv);
                        if (x + 8 <= pend) {
                            if (res)
                                v += vload8(0, res + o + x);
                            vstore8(v, 0, out + o + x);
                        } else if (x < pend) {
                            float t[8];
                            vstore8(v, 0, t);
                            for (int e = 0; e < 8 && x + e < pend; e++)
                                out[o + x + e] = t[e] + (res ? res[o + x + e] : 0.0f);
                        }
                    }
                }
            }
        }
    }
}
#endif
