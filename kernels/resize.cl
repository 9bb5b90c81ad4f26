/* kernels/resize.cl: bilinear resize (OpenCV INTER_LINEAR) of float32 planes, separable:
 * a horizontal pass into a temporary, then a vertical pass, with per-axis source indices and
 * weights computed on the host (src/prep/resize.c); plus OpenCV's exact 2x downscale (2x2
 * mean). Contraction is off: OpenCV's float path multiplies and adds without fusing. */
#pragma OPENCL FP_CONTRACT OFF

/* src [rows, w] -> tmp [rows, dw]; rows = channels * h. */
__kernel void resize_h(__global const float *src, const uint w, const uint rows,
                       __global float *tmp, const uint dw, __global const int *i0,
                       __global const int *i1, __global const float *a0, __global const float *a1) {
    const uint dx = get_global_id(0), r = get_global_id(1);
    if (dx >= dw || r >= rows)
        return;
    __global const float *s = src + (size_t)r * w;
    tmp[(size_t)r * dw + dx] = s[i0[dx]] * a0[dx] + s[i1[dx]] * a1[dx];
}

/* tmp [nch, h, dw] -> dst [nch, dh, dw]; global (dw, dh, nch). */
__kernel void resize_v(__global const float *tmp, const uint h, const uint dw, const uint nch,
                       __global float *dst, const uint dh, __global const int *i0,
                       __global const int *i1, __global const float *b0, __global const float *b1) {
    const uint dx = get_global_id(0), dy = get_global_id(1), c = get_global_id(2);
    if (dx >= dw || dy >= dh || c >= nch)
        return;
    __global const float *t = tmp + (size_t)c * h * dw;
    dst[((size_t)c * dh + dy) * dw + dx] =
        t[(size_t)i0[dy] * dw + dx] * b0[dy] + t[(size_t)i1[dy] * dw + dx] * b1[dy];
}

/* Exact halving: OpenCV switches INTER_LINEAR to its fast area mode there; it sums the 2x2
 * block row by row, then scales by 0.25. src [nch, 2 dh, 2 dw] -> dst [nch, dh, dw]; global
 * (dw, dh * nch). */
__kernel void resize_area2(__global const float *src, const uint dw, const uint dh, const uint nch,
                           __global float *dst) {
    const uint dx = get_global_id(0), r = get_global_id(1);
    if (dx >= dw || r >= nch * dh)
        return;
    const size_t w = 2 * (size_t)dw;
    __global const float *s = src + 2 * (size_t)r * w + 2 * (size_t)dx;
    dst[(size_t)r * dw + dx] = (((s[0] + s[1]) + s[w]) + s[w + 1]) * 0.25f;
}
