/* ops/ops_simple.c: host side of kernels/nn.cl: standalone BN(+ReLU), 2x2 max-pool, nearest x2
 * upsampling (+ skip), element-wise add, the style vector (mean + L2 normalisation) and the
 * dense layer. Each validates its sizes and buffers before enqueueing. */
#include "ops/ops_internal.h"

/* Kernels index with int: refuse counts of 2^31 elements or more. */
static gpuseg_status check_count(gpuseg__ops *ops, const char *op, size_t n) {
    if (n == 0)
        return gpuseg__fail(ops->ctx, GPUSEG_INVALID_ARGUMENT, "%s: empty shape", op);
    if (n >= ((size_t)1 << 31))
        return gpuseg__fail(ops->ctx, GPUSEG_TOO_LARGE, "%s: %zu elements (limit 2^31)", op, n);
    return GPUSEG_OK;
}

static gpuseg_status count3(gpuseg__ops *ops, const char *op, size_t a, size_t b, size_t c,
                            size_t *n) {
    if (!gpuseg__mul4_size(a, b, c, 1, n))
        return gpuseg__fail(ops->ctx, GPUSEG_TOO_LARGE, "%s: size overflows", op);
    return check_count(ops, op, *n);
}

gpuseg_status gpuseg__bn_act(gpuseg__ops *ops, cl_mem in, cl_mem scale, cl_mem shift, int relu,
                             cl_mem out, unsigned batch, unsigned c, size_t hw) {
    const char *op = "bn_act";
    size_t n = 0; /* set by count3 (zeroed for -O3 maybe-uninitialized) */
    gpuseg_status st;
    if ((st = count3(ops, op, batch, c, hw, &n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "input", in, n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "output", out, n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "scale", scale, c)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "shift", shift, c)) != GPUSEG_OK)
        return st;
    cl_kernel k;
    const cl_int r = relu ? 1 : 0, C = (cl_int)c, HW = (cl_int)hw, planes = (cl_int)(batch * c);
    if ((st = gpuseg__kernel(ops->ctx, "nn", "nn_bn_act", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ops->ctx, k, 8, sizeof(cl_mem), &in, sizeof(cl_mem), &scale,
                               sizeof(cl_mem), &shift, sizeof(cl_int), &r, sizeof(cl_mem), &out,
                               sizeof(cl_int), &C, sizeof(cl_int), &HW, sizeof(cl_int), &planes)) !=
            GPUSEG_OK)
        return st;
    const size_t g[1] = {(size_t)planes};
    return gpuseg__run(ops->ctx, k, 1, g, NULL);
}

gpuseg_status gpuseg__maxpool2(gpuseg__ops *ops, cl_mem in, cl_mem out, size_t planes, unsigned h,
                               unsigned w) {
    const char *op = "maxpool2";
    size_t n = 0, no = 0; /* set by the count helpers (zeroed for -O3) */
    gpuseg_status st;
    if (h < 2 || w < 2)
        return gpuseg__fail(ops->ctx, GPUSEG_INVALID_ARGUMENT,
                            "%s: %ux%u input is smaller than the 2x2 window", op, h, w);
    if ((st = count3(ops, op, planes, h, w, &n)) != GPUSEG_OK ||
        (st = count3(ops, op, planes, h / 2, w / 2, &no)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "input", in, n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "output", out, no)) != GPUSEG_OK)
        return st;
    if (in == out)
        return gpuseg__fail(ops->ctx, GPUSEG_INVALID_ARGUMENT, "%s: in-place is not supported", op);
    cl_kernel k;
    const cl_int H = (cl_int)h, W = (cl_int)w, P = (cl_int)planes;
    if ((st = gpuseg__kernel(ops->ctx, "nn", "nn_maxpool2", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ops->ctx, k, 5, sizeof(cl_mem), &in, sizeof(cl_mem), &out,
                               sizeof(cl_int), &H, sizeof(cl_int), &W, sizeof(cl_int), &P)) !=
            GPUSEG_OK)
        return st;
    const size_t g[2] = {h / 2, planes}, l[2] = {h / 2 >= 16 ? 16 : 1, 1};
    return gpuseg__run(ops->ctx, k, 2, g, l);
}

gpuseg_status gpuseg__upsample2(gpuseg__ops *ops, cl_mem in, cl_mem skip, cl_mem out, size_t planes,
                                unsigned h, unsigned w) {
    const char *op = "upsample2";
    size_t n = 0, no = 0; /* set by the count helpers (zeroed for -O3) */
    gpuseg_status st;
    if ((st = count3(ops, op, planes, h, w, &n)) != GPUSEG_OK ||
        (st = count3(ops, op, planes, 2 * (size_t)h, 2 * (size_t)w, &no)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "input", in, n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "output", out, no)) != GPUSEG_OK)
        return st;
    if (skip && (st = gpuseg__ops_check_buf(ops, op, "skip", skip, no)) != GPUSEG_OK)
        return st;
    if (in == out)
        return gpuseg__fail(ops->ctx, GPUSEG_INVALID_ARGUMENT, "%s: in-place is not supported", op);
    cl_kernel k;
    const cl_int H = (cl_int)h, W = (cl_int)w, P = (cl_int)planes;
    if ((st = gpuseg__kernel(ops->ctx, "nn", "nn_upsample2", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ops->ctx, k, 6, sizeof(cl_mem), &in, sizeof(cl_mem), &skip,
                               sizeof(cl_mem), &out, sizeof(cl_int), &H, sizeof(cl_int), &W,
                               sizeof(cl_int), &P)) != GPUSEG_OK)
        return st;
    const size_t g[2] = {2 * (size_t)h, planes}, l[2] = {2 * h >= 16 ? 16 : 1, 1};
    return gpuseg__run(ops->ctx, k, 2, g, l);
}

gpuseg_status gpuseg__add(gpuseg__ops *ops, cl_mem a, cl_mem b, cl_mem out, size_t n) {
    const char *op = "add";
    gpuseg_status st;
    if ((st = check_count(ops, op, n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "first input", a, n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "second input", b, n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "output", out, n)) != GPUSEG_OK)
        return st;
    cl_kernel k;
    const cl_uint N = (cl_uint)n;
    if ((st = gpuseg__kernel(ops->ctx, "nn", "nn_add", &k)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ops->ctx, k, 4, sizeof(cl_mem), &a, sizeof(cl_mem), &b,
                               sizeof(cl_mem), &out, sizeof(cl_uint), &N)) != GPUSEG_OK)
        return st;
    const size_t g[1] = {(n + 4095) / 4096}; /* NN_CHUNK in kernels/nn.cl */
    return gpuseg__run(ops->ctx, k, 1, g, NULL);
}

gpuseg_status gpuseg__style(gpuseg__ops *ops, cl_mem in, cl_mem style, unsigned batch, unsigned c,
                            size_t hw) {
    const char *op = "style";
    size_t n = 0; /* set by count3 (zeroed for -O3 maybe-uninitialized) */
    gpuseg_status st;
    if ((st = count3(ops, op, batch, c, hw, &n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "input", in, n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "style", style, (size_t)batch * c)) != GPUSEG_OK)
        return st;
    cl_kernel km, kn;
    const cl_int HW = (cl_int)hw, P = (cl_int)(batch * c), C = (cl_int)c, N = (cl_int)batch;
    if ((st = gpuseg__kernel(ops->ctx, "nn", "nn_plane_mean", &km)) != GPUSEG_OK ||
        (st = gpuseg__kernel(ops->ctx, "nn", "nn_l2_normalize", &kn)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ops->ctx, km, 4, sizeof(cl_mem), &in, sizeof(cl_mem), &style,
                               sizeof(cl_int), &HW, sizeof(cl_int), &P)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ops->ctx, kn, 3, sizeof(cl_mem), &style, sizeof(cl_int), &C,
                               sizeof(cl_int), &N)) != GPUSEG_OK)
        return st;
    const size_t gm[1] = {(size_t)P}, gn[1] = {batch};
    if ((st = gpuseg__run(ops->ctx, km, 1, gm, NULL)) != GPUSEG_OK)
        return st;
    return gpuseg__run(ops->ctx, kn, 1, gn, NULL);
}

gpuseg_status gpuseg__linear(gpuseg__ops *ops, cl_mem in, cl_mem w, cl_mem b, cl_mem out,
                             unsigned batch, unsigned k, unsigned m) {
    const char *op = "linear";
    size_t nw, n;
    gpuseg_status st;
    if ((st = count3(ops, op, m, k, 1, &nw)) != GPUSEG_OK ||
        (st = count3(ops, op, batch, k, 1, &n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "input", in, n)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "weight", w, nw)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, op, "output", out, (size_t)batch * m)) != GPUSEG_OK)
        return st;
    if (b && (st = gpuseg__ops_check_buf(ops, op, "bias", b, m)) != GPUSEG_OK)
        return st;
    if (in == out)
        return gpuseg__fail(ops->ctx, GPUSEG_INVALID_ARGUMENT, "%s: in-place is not supported", op);
    cl_kernel kk;
    const cl_int K = (cl_int)k, M = (cl_int)m, N = (cl_int)batch;
    if ((st = gpuseg__kernel(ops->ctx, "nn", "nn_linear", &kk)) != GPUSEG_OK ||
        (st = gpuseg__set_args(ops->ctx, kk, 7, sizeof(cl_mem), &in, sizeof(cl_mem), &w,
                               sizeof(cl_mem), &b, sizeof(cl_mem), &out, sizeof(cl_int), &K,
                               sizeof(cl_int), &M, sizeof(cl_int), &N)) != GPUSEG_OK)
        return st;
    const size_t g[2] = {m, batch};
    return gpuseg__run(ops->ctx, kk, 2, g, NULL);
}
