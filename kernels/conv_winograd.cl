/* kernels/conv_winograd.cl: 3x3 convolution (stride 1, zero padding 1) by Winograd F(2x2,3x3):
 * each 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A over its 4x4 input patch d, 16
 * multiplies per tile and channel pair instead of 36. Reads the prologue buffer that conv.cl's
 * conv_prologue wrote (zero border, planes sized by src/ops/conv_winograd.c so that every patch
 * of every tile is inside them) and adds bias and residual in the epilogue. The host builds it
 * with -DWINO_COB (output channels per register block), -DWINO_XB (8-tile vectors per register
 * block) and -DWINO_CG (output channels per pass over the transformed input). */

#ifndef WINO_COB
#define WINO_COB 4
#endif
#ifndef WINO_XB
#define WINO_XB 2
#endif
/* Output channels per group sharing one pass over V (a multiple of WINO_COB). */
#ifndef WINO_CG
#define WINO_CG 32
#endif

/* Weight transform: U = G g G^T for each (co, ci), stored U[xi][co / COB][ci][co % COB] (xi =
 * 4 * row + column of the 4x4 transform domain), so that for one xi the main kernel streams the
 * blocks of COB output channels one after the other and loads the COB weights of one ci
 * together. Channels past Cout (up to the next multiple of COB) get zeros.
 * G = [1 0 0; .5 .5 .5; .5 -.5 .5; 0 0 1]: only halves (exact) and sums of three, so each
 * transformed weight carries a few roundings of sums of the original weights' magnitude.
 * Global size (ceil(Cout / COB) * COB): one work-item per output channel, looping over the input
 * channels: few, fat work-groups, as PoCL prefers (prologue + weight transform together take
 * 0.7-3.4 ms of a CPnet layer, measured). */
__kernel void wino_weights(__global const float *wt, __global float *U, const int Cin,
                           const int Cout) {
    const int co = get_global_id(0);
    const int cop = (Cout + WINO_COB - 1) / WINO_COB * WINO_COB;
    if (co >= cop)
        return;
    const size_t xstride = (size_t)Cin * cop; /* U[xi] */
    __global float *u = U + (size_t)(co / WINO_COB) * Cin * WINO_COB + co % WINO_COB;
    for (int ci = 0; ci < Cin; ci++) {
        float g[3][3], t[4][3];
        for (int i = 0; i < 9; i++)
            g[i / 3][i % 3] = co < Cout ? wt[((size_t)co * Cin + ci) * 9 + i] : 0.0f;
        for (int c = 0; c < 3; c++) {
            t[0][c] = g[0][c];
            t[1][c] = 0.5f * (g[0][c] + g[1][c] + g[2][c]);
            t[2][c] = 0.5f * (g[0][c] - g[1][c] + g[2][c]);
            t[3][c] = g[2][c];
        }
        for (int r = 0; r < 4; r++) {
            const float v[4] = {t[r][0], 0.5f * (t[r][0] + t[r][1] + t[r][2]),
                                0.5f * (t[r][0] - t[r][1] + t[r][2]), t[r][2]};
            for (int c = 0; c < 4; c++)
                u[(4 * r + c) * xstride + (size_t)ci * WINO_COB] = v[c];
        }
    }
}

/* The main kernel (band launch: work-groups of one work-item, which PoCL runs fastest; on a GPU
 * it is correct but not fast). Tiles are numbered t = ty * twp + tx over th tile rows of twp
 * tiles (twp = ceil(W / 2) rounded up to 8, so that each 8-tile vector lies in one tile row);
 * a work-item takes `span` consecutive tiles of sample n, in chunks of nv vectors:
 *  1. input transform: V[xi][ci][v] = B^T d B for the chunk's patches, every input channel, in
 *     local memory (8 tiles per float8; the patch columns of 8 neighbouring tiles are the even
 *     and odd lanes of two 16-float rows);
 *  2. for each group of CG output channels, each xi and each block of COB channels of the
 *     group, the GEMM M[xi][j][v] = sum_ci U[xi][ci][co0 + j] * V[xi][ci][v], COB x XB float8
 *     accumulators in registers (the conv1x1_fused micro-kernel), into local memory;
 *  3. for the group, output transform Y = A^T M A, + bias (+ residual, which may be out
 *     itself: each output is read and written by the same work-item), stored for real pixels
 *     only.
 * V holds 16 * (Cin * nv + 3) float8, M 16 * (CG * nv + 3) float8 (the host sizes both; nv is a
 * multiple of XB; the +3 keeps the 16 transform positions out of one L1 set). The prologue planes
 * are hp = 2 * th + 2 rows of wp = 2 * twp + 2 floats, so the 4x4 patch of every tile (rows
 * 2ty..2ty+3, columns 2tx..2tx+3 of the plane, which has a one-pixel zero border at top and left)
 * is inside them. Global (ceil(th * twp / span), N). */
__kernel void conv3x3_winograd(__global const float *src, __global const float *U,
                               __global const float *bias, __global const float *res,
                               __global float *out, const int Cin, const int Cout, const int H,
                               const int W, const int hp, const int wp, const int th, const int twp,
                               const int span, const int nv, __local float8 *V, __local float8 *M) {
    const int n = get_global_id(1);
    const int total = th * twp;
    const int tbeg = get_global_id(0) * span;
    if (tbeg >= total)
        return;
    const int tend = min(tbeg + span, total);
    __global const float *srcn = src + (size_t)n * Cin * hp * wp;
    /* V's stride between transform positions: Cin * nv float8 plus 3, so that the input
     * transform's 16 stores per vector do not all fall into one L1 set (Cin * nv * 32 bytes is a
     * multiple of 4 KiB at cin 32, nv 8). */
    const size_t xs = (size_t)Cin * nv + 3;
    const int cop = (Cout + WINO_COB - 1) / WINO_COB * WINO_COB;
    /* The same for M (CG * nv float8 is 8 KiB at nv 8): the output transform's 16 loads. */
    const int ms = WINO_CG * nv + 3;
    for (int c0 = tbeg; c0 < tend; c0 += 8 * nv) {
        /* Vectors of real tiles in this chunk, and that count rounded up to the register
         * blocking (the extra vectors are zero and never stored). */
        const int nreal = min(nv, (tend - c0) / 8);
        const int nvec = (nreal + WINO_XB - 1) / WINO_XB * WINO_XB;
        /* Channel-outer, so that consecutive vectors read on along the same 4 rows of one plane
         * (vector-outer order hops between Cin planes for every vector; the change was made
         * together with others, so its own gain is not known). */
        for (int ci = 0; ci < Cin; ci++) {
            __global const float *pc = srcn + (size_t)ci * hp * wp;
            for (int v = 0; v < nvec; v++) {
                float8 d[4][4];
                if (v < nreal) {
                    const int t0 = c0 + 8 * v;
                    const int ty = t0 / twp, tx0 = t0 - ty * twp;
                    __global const float *p = pc + (size_t)(2 * ty) * wp + 2 * tx0;
#pragma unroll
                    for (int r = 0; r < 4; r++) {
                        /* two 8-float loads each: a float16 value through a builtin call
                         * changes the ABI without AVX-512 (PoCL warns) */
                        __global const float *pr = p + r * wp;
                        const float16 a = (float16)(vload8(0, pr), vload8(1, pr)),
                                      b = (float16)(vload8(0, pr + 2), vload8(1, pr + 2));
                        d[r][0] = a.even;
                        d[r][1] = a.odd;
                        d[r][2] = b.even;
                        d[r][3] = b.odd;
                    }
                } else {
#pragma unroll
                    for (int r = 0; r < 4; r++)
#pragma unroll
                        for (int c = 0; c < 4; c++)
                            d[r][c] = (float8)(0.0f);
                }
                /* B^T d B with B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]: rows, then
                 * columns. */
                float8 h[4][4];
#pragma unroll
                for (int c = 0; c < 4; c++) {
                    h[0][c] = d[0][c] - d[2][c];
                    h[1][c] = d[1][c] + d[2][c];
                    h[2][c] = d[2][c] - d[1][c];
                    h[3][c] = d[1][c] - d[3][c];
                }
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    __local float8 *q = V + (size_t)(4 * r) * xs + (size_t)ci * nv + v;
                    const size_t s = xs;
                    q[0] = h[r][0] - h[r][2];
                    q[s] = h[r][1] + h[r][2];
                    q[2 * s] = h[r][2] - h[r][1];
                    q[3 * s] = h[r][1] - h[r][3];
                }
            }
        }
        /* Groups of CG output channels: for each xi, every COB-block of the group runs against
         * the same V[xi] slice (Cin * nv float8, at most 16 KiB: in L1), and the group's M
         * (16 * CG * nv float8) is then output-transformed. */
        for (int cg0 = 0; cg0 < Cout; cg0 += WINO_CG) {
            const int cgn = min(WINO_CG, Cout - cg0);
            for (int xi = 0; xi < 16; xi++) {
                __local const float8 *vx = V + (size_t)xi * xs;
                for (int jb = 0; jb < cgn; jb += WINO_COB) {
                    __global const float *ux =
                        U + (size_t)xi * Cin * cop + (size_t)(cg0 + jb) * Cin;
                    for (int v0 = 0; v0 < nvec; v0 += WINO_XB) {
                        float8 acc[WINO_COB][WINO_XB];
#pragma unroll
                        for (int j = 0; j < WINO_COB; j++)
#pragma unroll
                            for (int b = 0; b < WINO_XB; b++)
                                acc[j][b] = (float8)(0.0f);
                        __local const float8 *q = vx + v0;
                        __global const float *w = ux;
                        for (int ci = 0; ci < Cin; ci++, q += nv, w += WINO_COB) {
                            float8 a[WINO_XB];
#pragma unroll
                            for (int b = 0; b < WINO_XB; b++)
                                a[b] = q[b];
#pragma unroll
                            for (int j = 0; j < WINO_COB; j++) {
                                const float8 wj = (float8)(w[j]);
#pragma unroll
                                for (int b = 0; b < WINO_XB; b++)
                                    acc[j][b] = fma(wj, a[b], acc[j][b]);
                            }
                        }
#pragma unroll
                        for (int j = 0; j < WINO_COB; j++)
#pragma unroll
                            for (int b = 0; b < WINO_XB; b++)
                                M[xi * ms + (jb + j) * nv + v0 + b] = acc[j][b];
                    }
                }
            }
            /* Y = A^T M A with A^T = [1 1 1 0; 0 1 -1 -1]; lanes are 8 neighbouring tiles, so
             * an output row of the vector is the interleave of its two columns. */
            for (int j = 0; j < cgn; j++) {
                const int co = cg0 + j;
                const float8 bv = (float8)(bias ? bias[co] : 0.0f);
                const size_t o = ((size_t)n * Cout + co) * H * W;
                for (int v = 0; v < nreal; v++) {
                    const int t0 = c0 + 8 * v;
                    const int ty = t0 / twp, tx0 = t0 - ty * twp;
                    float8 s[2][4];
#pragma unroll
                    for (int c = 0; c < 4; c++) {
                        const float8 m0 = M[(0 + c) * ms + j * nv + v];
                        const float8 m1 = M[(4 + c) * ms + j * nv + v];
                        const float8 m2 = M[(8 + c) * ms + j * nv + v];
                        const float8 m3 = M[(12 + c) * ms + j * nv + v];
                        s[0][c] = m0 + m1 + m2;
                        s[1][c] = m1 - m2 - m3;
                    }
                    const int x = 2 * tx0;
                    if (x >= W)
                        continue;
#pragma unroll
                    for (int r = 0; r < 2; r++) {
                        const int y = 2 * ty + r;
                        if (y >= H)
                            continue;
                        const float8 y0 = s[r][0] + s[r][1] + s[r][2] + bv;
                        const float8 y1 = s[r][1] - s[r][2] - s[r][3] + bv;
                        /* interleave (a swizzle, which the compiler turns into two
                         * shuffles; PoCL's shuffle2 builtin was far slower) */
                        float16 yv = ((float16)(y0, y1)).s08192a3b4c5d6e7f;
                        const size_t i = o + (size_t)y * W + x;
                        if (x + 16 <= W) {
                            if (res)
                                yv += (float16)(vload8(0, res + i), vload8(1, res + i));
                            vstore8(yv.lo, 0, out + i);
                            vstore8(yv.hi, 1, out + i);
                        } else {
                            float t[16];
                            vstore8(yv.lo, 0, t);
                            vstore8(yv.hi, 1, t);
                            for (int e = 0; e < 16 && x + e < W; e++)
                                out[i + e] = t[e] + (res ? res[i + e] : 0.0f);
                        }
                    }
                }
            }
        }
    }
}
