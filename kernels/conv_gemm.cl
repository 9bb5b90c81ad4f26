/* kernels/conv_gemm.cl: 2-D convolution (3x3 or 1x1, stride 1, zero padding k/2) as an implicit
 * GEMM with local-memory tiles, made for GPUs: out[n] (Cout x H*W) = W (Cout x Cin*k*k) times
 * the implicit im2col of the layer's input, with CPnet's prologue (skip add, per-sample channel
 * constant, batch norm as scale/shift, ReLU, zero border) applied while the input tile is loaded
 * and bias + residual in the store; no prologue pass, no im2col buffer.
 *
 * A work-group computes GEMM_TM output channels x one pixel tile (GEMM_TH x GEMM_TW pixels for
 * 3x3 layers, a run of GEMM_TH * GEMM_TW consecutive pixels of the flattened plane for 1x1
 * layers) of one sample; each of its (TM / WM) * (TN / WN) work-items keeps a GEMM_WM x GEMM_WN
 * register block of accumulators. The K loop walks the input channels GEMM_TK at a time: the
 * input tile of those channels (with the 3x3 halo: (TH + 2) x (TW + 2) pixels each, loaded once
 * and read by all 9 taps) and their weights (TK * k * k x TM, stored transposed, each row padded
 * by GEMM_PAD floats so that the transposing stores do not collide in one bank) go to local
 * memory; then each work-item runs TK * k * k rank-1 updates of its block from local memory.
 *
 * Work-item mapping: lid = tm * NT + tn. Work-item (tm, tn) owns output channels tm + i * MT
 * (i < WM) and tile pixels tn + j * NT (j < WN): neighbouring work-items read neighbouring local
 * words (no bank conflicts; a warp's work-items share tm, so weight reads are broadcasts) and
 * store neighbouring pixels (coalesced).
 *
 * Every size is a compile-time option (the host's tuner sweeps them, src/ops/conv_gemm.c):
 * GEMM_TM, GEMM_TH, GEMM_TW, GEMM_TK, GEMM_WM, GEMM_WN, GEMM_PAD. The host checks that the
 * work-group size and the local memory fit the device before it builds a set. Launch: global
 * (WG * pixel tiles, ceil(Cout / TM), N), local (WG, 1, 1).
 *
 * Built with -DGEMM_HALF_PROBE instead, the program is only the fp16 probe (end of the file). */

#ifndef GEMM_HALF_PROBE
/* Without options (gpuseg_ctx_build_all builds every program as is) a modest set that fits 22 KiB
 * of local memory; the host always passes all seven. */
#if !defined(GEMM_TM) && !defined(GEMM_TH) && !defined(GEMM_TW) && !defined(GEMM_TK) &&            \
    !defined(GEMM_WM) && !defined(GEMM_WN) && !defined(GEMM_PAD)
#define GEMM_TM  64
#define GEMM_TH  8
#define GEMM_TW  8
#define GEMM_TK  8
#define GEMM_WM  4
#define GEMM_WN  4
#define GEMM_PAD 1
#endif
#if !defined(GEMM_TM) || !defined(GEMM_TH) || !defined(GEMM_TW) || !defined(GEMM_TK) ||            \
    !defined(GEMM_WM) || !defined(GEMM_WN) || !defined(GEMM_PAD)
#error "conv_gemm.cl needs all of -DGEMM_TM/TH/TW/TK/WM/WN/PAD (src/ops/conv_gemm.c)"
#endif

#define GEMM_TN (GEMM_TH * GEMM_TW)
#define GEMM_MT (GEMM_TM / GEMM_WM)
#define GEMM_NT (GEMM_TN / GEMM_WN)
#define GEMM_WG (GEMM_MT * GEMM_NT)
#if GEMM_MT * GEMM_WM != GEMM_TM || GEMM_NT * GEMM_WN != GEMM_TN
#error "GEMM_WM must divide GEMM_TM and GEMM_WN must divide GEMM_TH * GEMM_TW"
#endif
#define GEMM_LDW (GEMM_TM + GEMM_PAD) /* row length of the transposed weight tile */

/* The body for kernel size KS (1 or 3), inlined into the two kernels so that the tap loops
 * unroll. For KS 3 the pixel tile is a TH x TW rectangle and the input tile (TH + 2) x (TW + 2);
 * for KS 1 it is TN consecutive pixels of the flattened plane (no halo, no wasted columns on
 * narrow planes). */
__attribute__((always_inline)) static inline void
conv_gemm_body(const int KS, __global const float *in, __global const float *add_in,
               __global const float *pre_add, __global const float *scale,
               __global const float *shift, const int relu, __global const float *wt,
               __global const float *bias, __global const float *res, __global float *out,
               const int Cin, const int Cout, const int H, const int W, __local float *As,
               __local float *Ws) {
    const int KK = KS * KS;
    const int IR = KS == 3 ? GEMM_TH + 2 : 1;       /* input tile rows */
    const int IC = KS == 3 ? GEMM_TW + 2 : GEMM_TN; /* input tile columns */
    const int IP = IR * IC;                         /* input tile pixels per channel */
    const int lid = get_local_id(0);
    const int tile = get_group_id(0), co0 = get_group_id(1) * GEMM_TM, n = get_group_id(2);
    const int HW = H * W;
    const int tilesx = (W + GEMM_TW - 1) / GEMM_TW;
    /* Tile origin: (ty0, tx0) for 3x3; the first pixel p0 for 1x1. */
    const int ty0 = KS == 3 ? tile / tilesx * GEMM_TH : 0;
    const int tx0 = KS == 3 ? tile % tilesx * GEMM_TW : 0;
    const int p0 = KS == 3 ? 0 : tile * GEMM_TN;
    const int tm = lid / GEMM_NT, tn = lid % GEMM_NT;
    const float lo = relu ? 0.0f : -INFINITY;

    /* This work-item's pixels: their offsets in the input tile (tap (0, 0)). */
    int off[GEMM_WN];
#pragma unroll
    for (int j = 0; j < GEMM_WN; j++) {
        const int p = tn + j * GEMM_NT;
        off[j] = KS == 3 ? p / GEMM_TW * IC + p % GEMM_TW : p;
    }
    float acc[GEMM_WM][GEMM_WN];
#pragma unroll
    for (int i = 0; i < GEMM_WM; i++)
#pragma unroll
        for (int j = 0; j < GEMM_WN; j++)
            acc[i][j] = 0.0f;

    __global const float *inn = in + (size_t)n * Cin * HW;
    __global const float *addn = add_in ? add_in + (size_t)n * Cin * HW : 0;
    const int wrow = Cin * KK; /* floats per output channel of the weights */
    for (int ci0 = 0; ci0 < Cin; ci0 += GEMM_TK) {
        /* Input tile: the prologue on real pixels (the same float operations as conv.cl's
         * conv_prologue), zero on the border and past the channels, the plane or the image. */
        for (int e = lid; e < GEMM_TK * IP; e += GEMM_WG) {
            const int c = e / IP, r = e - c * IP, ci = ci0 + c;
            int gy, gx, ok;
            if (KS == 3) {
                const int yy = r / IC;
                gy = ty0 + yy - 1;
                gx = tx0 + (r - yy * IC) - 1;
                ok = gy >= 0 && gy < H && gx >= 0 && gx < W;
            } else {
                const int p = p0 + r;
                gy = p / W;
                gx = p - gy * W;
                ok = p < HW;
            }
            float v = 0.0f;
            if (ok && ci < Cin) {
                const size_t idx = (size_t)ci * HW + (size_t)gy * W + gx;
                float a = inn[idx];
                if (addn)
                    a = a + addn[idx];
                const float s = scale ? scale[ci] : 1.0f;
                const float p = pre_add ? pre_add[n * Cin + ci] : 0.0f;
                const float t = scale ? fma(p, s, shift[ci]) : p;
                v = fmax(fma(a, s, t), lo);
            }
            As[e] = v;
        }
        /* Weight tile, transposed: Ws[kl][m] = wt[co0 + m][ci0 * KK + kl]; consecutive
         * work-items read consecutive weights of one output channel. */
        for (int e = lid; e < GEMM_TM * GEMM_TK * KK; e += GEMM_WG) {
            const int m = e / (GEMM_TK * KK), kl = e - m * (GEMM_TK * KK);
            const int co = co0 + m, ci = ci0 + kl / KK;
            Ws[kl * GEMM_LDW + m] =
                co < Cout && ci < Cin ? wt[(size_t)co * wrow + (size_t)ci0 * KK + kl] : 0.0f;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (int c = 0; c < GEMM_TK; c++) {
            __local const float *ac = As + c * IP;
            __local const float *wc = Ws + c * KK * GEMM_LDW + tm;
#pragma unroll
            for (int ky = 0; ky < KS; ky++)
#pragma unroll
                for (int kx = 0; kx < KS; kx++) {
                    float w[GEMM_WM], a[GEMM_WN];
#pragma unroll
                    for (int i = 0; i < GEMM_WM; i++)
                        w[i] = wc[(ky * KS + kx) * GEMM_LDW + i * GEMM_MT];
#pragma unroll
                    for (int j = 0; j < GEMM_WN; j++)
                        a[j] = ac[off[j] + ky * IC + kx];
#pragma unroll
                    for (int i = 0; i < GEMM_WM; i++)
#pragma unroll
                        for (int j = 0; j < GEMM_WN; j++)
                            acc[i][j] = fma(w[i], a[j], acc[i][j]);
                }
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }

    /* Store: + bias (+ residual, which may be out itself: each output is read and written by
     * this work-item only), the same order as the direct kernel. */
#pragma unroll
    for (int i = 0; i < GEMM_WM; i++) {
        const int co = co0 + tm + i * GEMM_MT;
        if (co >= Cout)
            continue;
        const float bv = bias ? bias[co] : 0.0f;
        __global float *o = out + ((size_t)n * Cout + co) * HW;
        __global const float *rr = res ? res + ((size_t)n * Cout + co) * HW : 0;
#pragma unroll
        for (int j = 0; j < GEMM_WN; j++) {
            const int p = tn + j * GEMM_NT;
            int q;
            if (KS == 3) {
                const int y = ty0 + p / GEMM_TW, x = tx0 + p % GEMM_TW;
                if (y >= H || x >= W)
                    continue;
                q = y * W + x;
            } else {
                q = p0 + p;
                if (q >= HW)
                    continue;
            }
            const float v = acc[i][j] + bv;
            o[q] = rr ? v + rr[q] : v;
        }
    }
}

/* Global (WG * ceil(H / TH) * ceil(W / TW), ceil(Cout / TM), N), local (WG, 1, 1). As holds
 * TK * (TH + 2) * (TW + 2) floats, Ws TK * 9 * (TM + PAD). */
__kernel __attribute__((reqd_work_group_size(GEMM_WG, 1, 1))) void
conv3x3_gemm(__global const float *in, __global const float *add_in, __global const float *pre_add,
             __global const float *scale, __global const float *shift, const int relu,
             __global const float *wt, __global const float *bias, __global const float *res,
             __global float *out, const int Cin, const int Cout, const int H, const int W) {
    __local float As[GEMM_TK * (GEMM_TH + 2) * (GEMM_TW + 2)];
    __local float Ws[GEMM_TK * 9 * GEMM_LDW];
    conv_gemm_body(3, in, add_in, pre_add, scale, shift, relu, wt, bias, res, out, Cin, Cout, H, W,
                   As, Ws);
}

/* Global (WG * ceil(H * W / TN), ceil(Cout / TM), N), local (WG, 1, 1). As holds TK * TN
 * floats, Ws TK * (TM + PAD). */
__kernel __attribute__((reqd_work_group_size(GEMM_WG, 1, 1))) void
conv1x1_gemm(__global const float *in, __global const float *add_in, __global const float *pre_add,
             __global const float *scale, __global const float *shift, const int relu,
             __global const float *wt, __global const float *bias, __global const float *res,
             __global float *out, const int Cin, const int Cout, const int H, const int W) {
    __local float As[GEMM_TK * GEMM_TN];
    __local float Ws[GEMM_TK * GEMM_LDW];
    conv_gemm_body(1, in, add_in, pre_add, scale, shift, relu, wt, bias, res, out, Cin, Cout, H, W,
                   As, Ws);
}

#else
/* fp16 probe (src/ops/conv_gemm.c gpuseg__ops_half_probe): built and run once per device to see
 * whether it computes `half` (NVIDIA does without reporting cl_khr_fp16). */
#pragma OPENCL EXTENSION cl_khr_fp16 : enable
__kernel void half_probe(__global const float *x, __global float *y) {
    const int i = get_global_id(0);
    const half a = (half)x[i], b = (half)x[i + 1];
    y[i] = (float)(a * b + a);
}
#endif
