/* kernels/conv.cl: the parts of a 2-D convolution (NCHW float32, kernel 1x1 or 3x3, stride 1,
 * zero padding k/2) that both implementations share or the GEMM path needs: CPnet's
 * pre-activation prologue (skip add, per-sample channel constant, batch norm folded into
 * scale/shift, ReLU, zero border), im2col, and the bias + residual initialisation before a
 * GEMM with beta = 1. The direct kernels are in conv_direct.cl. Every kernel checks its bounds;
 * sizes are arguments. */

/* Prologue: writes act(bn(in + add_in + pre_add)) for real pixels into a zero-bordered plane of
 * hp x wp (the border is `pad` wide at top/left; the rest of the plane beyond the image is zero
 * too, so that blocked readers never need bounds checks). Padding happens after BN/ReLU, as in
 * PyTorch, so border pixels stay exactly zero. pre_add is indexed by plane (sample * C + c) and
 * folded into the shift: (v + p) * s + t = v * s + (p * s + t), one rounding apart.
 * One work-item per destination row, looping over x (a plain loop the compiler vectorises; PoCL
 * pays per work-group, so one pixel per work-item would cost more than the arithmetic).
 * Global size (hp, planes). */
__kernel void conv_prologue(__global const float *in, __global const float *add_in,
                            __global const float *pre_add, __global const float *scale,
                            __global const float *shift, const int relu, __global float *dst,
                            const int C, const int H, const int W, const int pad, const int hp,
                            const int wp, const int planes) {
    const int py = get_global_id(0), pl = get_global_id(1);
    if (py >= hp || pl >= planes)
        return;
    __global float *row = dst + ((size_t)pl * hp + py) * wp;
    const int y = py - pad;
    if (y < 0 || y >= H) {
        for (int px = 0; px < wp; px++)
            row[px] = 0.0f;
        return;
    }
    const int c = pl % C;
    const float s = scale ? scale[c] : 1.0f;
    const float p = pre_add ? pre_add[pl] : 0.0f;
    const float t = scale ? fma(p, s, shift[c]) : p;
    const float lo = relu ? 0.0f : -INFINITY;
    for (int px = 0; px < pad; px++)
        row[px] = 0.0f;
    __global const float *a = in + ((size_t)pl * H + y) * W;
    __global float *o = row + pad;
    if (add_in) {
        __global const float *b = add_in + ((size_t)pl * H + y) * W;
        for (int x = 0; x < W; x++)
            o[x] = fmax(fma(a[x] + b[x], s, t), lo);
    } else {
        for (int x = 0; x < W; x++)
            o[x] = fmax(fma(a[x], s, t), lo);
    }
    for (int px = W + pad; px < wp; px++)
        row[px] = 0.0f;
}

/* im2col of sample n from the prologue buffer: col[(ci*K*K + ky*K + kx) * H*W + y*W + x] =
 * src[n][ci][y + ky][x + kx]. One work-item per column row (loops over x). Global (H, C*K*K). */
__kernel void conv_im2col(__global const float *src, __global float *col, const int n, const int C,
                          const int H, const int W, const int K, const int hp, const int wp) {
    const int y = get_global_id(0), r = get_global_id(1);
    if (y >= H || r >= C * K * K)
        return;
    const int ci = r / (K * K), t = r % (K * K), ky = t / K, kx = t % K;
    __global const float *a = src + (((size_t)n * C + ci) * hp + y + ky) * wp + kx;
    __global float *o = col + (size_t)r * H * W + (size_t)y * W;
    for (int x = 0; x < W; x++)
        o[x] = a[x];
}

/* out = bias[c] (+ res); res may be the same buffer as out (read before write by the same
 * work-item). Runs before a GEMM with beta = 1. One work-item per plane. Global size (planes). */
__kernel void conv_bias_init(__global const float *bias, __global const float *res,
                             __global float *out, const int C, const int HW, const int planes) {
    const int pl = get_global_id(0);
    if (pl >= planes)
        return;
    const float v = bias ? bias[pl % C] : 0.0f;
    __global float *o = out + (size_t)pl * HW;
    if (res) {
        __global const float *r = res + (size_t)pl * HW;
        for (int i = 0; i < HW; i++)
            o[i] = r[i] + v;
    } else {
        for (int i = 0; i < HW; i++)
            o[i] = v;
    }
}
