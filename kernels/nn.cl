/* kernels/nn.cl: CPnet's small tensor operations on NCHW float32: standalone batch norm (+ReLU),
 * 2x2 max-pool (stride 2, floor), nearest-neighbour x2 upsampling (+ optional skip add),
 * element-wise add, the style vector (global average, then L2 normalisation without epsilon) and
 * the dense layer that maps it to a per-channel constant. Every kernel checks its bounds.
 * Work-items own whole rows or planes and loop over x: PoCL pays a fixed cost per work-group,
 * which would dominate if each work-item produced one pixel. */

/* out = act(in * scale[c] + shift[c]) (one fma); global size (planes). */
__kernel void nn_bn_act(__global const float *in, __global const float *scale,
                        __global const float *shift, const int relu, __global float *out,
                        const int C, const int HW, const int planes) {
    const int pl = get_global_id(0);
    if (pl >= planes)
        return;
    const int c = pl % C;
    const float s = scale[c], t = shift[c], lo = relu ? 0.0f : -INFINITY;
    __global const float *a = in + (size_t)pl * HW;
    __global float *o = out + (size_t)pl * HW;
    for (int i = 0; i < HW; i++)
        o[i] = fmax(fma(a[i], s, t), lo);
}

/* out[pl][y][x] = max of in[pl][2y..2y+1][2x..2x+1]; Ho = H/2, Wo = W/2 (floor, as PyTorch's
 * MaxPool2d(2) without ceil_mode). NaN handling follows fmax (a NaN loses), which differs from
 * PyTorch (a NaN wins); CPnet's features never hold NaN. Global size (Ho, planes). */
__kernel void nn_maxpool2(__global const float *in, __global float *out, const int H, const int W,
                          const int planes) {
    const int Ho = H / 2, Wo = W / 2;
    const int y = get_global_id(0), pl = get_global_id(1);
    if (y >= Ho || pl >= planes)
        return;
    __global const float *p = in + ((size_t)pl * H + 2 * y) * W;
    __global float *o = out + ((size_t)pl * Ho + y) * Wo;
    for (int x = 0; x < Wo; x++)
        o[x] = fmax(fmax(p[2 * x], p[2 * x + 1]), fmax(p[W + 2 * x], p[W + 2 * x + 1]));
}

/* out[pl][y][x] = in[pl][y/2][x/2] (+ skip[pl][y][x]); out is 2H x 2W. Global (2H, planes). */
__kernel void nn_upsample2(__global const float *in, __global const float *skip,
                           __global float *out, const int H, const int W, const int planes) {
    const int Wo = 2 * W, Ho = 2 * H;
    const int y = get_global_id(0), pl = get_global_id(1);
    if (y >= Ho || pl >= planes)
        return;
    __global const float *a = in + ((size_t)pl * H + y / 2) * W;
    __global float *o = out + ((size_t)pl * Ho + y) * Wo;
    if (skip) {
        __global const float *s = skip + ((size_t)pl * Ho + y) * Wo;
        for (int x = 0; x < Wo; x++)
            o[x] = a[x / 2] + s[x];
    } else {
        for (int x = 0; x < Wo; x++)
            o[x] = a[x / 2];
    }
}

/* out = a + b over n elements (out may be a or b); each work-item adds a chunk of NN_CHUNK.
 * Global size ceil(n / NN_CHUNK). */
#define NN_CHUNK 4096
__kernel void nn_add(__global const float *a, __global const float *b, __global float *out,
                     const uint n) {
    const uint i0 = get_global_id(0) * NN_CHUNK;
    if (i0 >= n)
        return;
    const uint i1 = min(n, i0 + NN_CHUNK);
    for (uint i = i0; i < i1; i++)
        out[i] = a[i] + b[i];
}

/* mean[pl] = average of plane pl (HW values). A compensated (Kahan) sum keeps the float32 result
 * within an ulp or two of an exact mean whatever HW is; global size (planes). */
__kernel void nn_plane_mean(__global const float *in, __global float *mean, const int HW,
                            const int planes) {
    const int pl = get_global_id(0);
    if (pl >= planes)
        return;
    __global const float *p = in + (size_t)pl * HW;
    float s = 0.0f, comp = 0.0f;
    for (int i = 0; i < HW; i++) {
        const float yv = p[i] - comp;
        const float t = s + yv;
        comp = (t - s) - yv;
        s = t;
    }
    mean[pl] = s / (float)HW;
}

/* v[n][:] /= sqrt(sum_c v[n][c]^2), in place, no epsilon (as Cellpose's make_style: an all-zero
 * vector gives NaN there and here). Global size (N). */
__kernel void nn_l2_normalize(__global float *v, const int C, const int N) {
    const int n = get_global_id(0);
    if (n >= N)
        return;
    __global float *p = v + (size_t)n * C;
    float s = 0.0f;
    for (int c = 0; c < C; c++)
        s = fma(p[c], p[c], s);
    const float inv = 1.0f / sqrt(s);
    for (int c = 0; c < C; c++)
        p[c] *= inv;
}

/* out[n][o] = sum_i w[o][i] * in[n][i] + b[o] (PyTorch Linear, weight [M][K]). Global (M, N). */
__kernel void nn_linear(__global const float *in, __global const float *w, __global const float *b,
                        __global float *out, const int K, const int M, const int N) {
    const int o = get_global_id(0), n = get_global_id(1);
    if (o >= M || n >= N)
        return;
    __global const float *x = in + (size_t)n * K;
    __global const float *wr = w + (size_t)o * K;
    float s = 0.0f;
    for (int i = 0; i < K; i++)
        s = fma(wr[i], x[i], s);
    out[(size_t)n * M + o] = s + (b ? b[o] : 0.0f);
}
