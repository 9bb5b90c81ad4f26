/* prep/resize.c: bilinear resize of float32 planes on the device with OpenCV's INTER_LINEAR
 * rule. The host computes, per axis, the two source indices and weights of every destination
 * index (tiny tables, O(width + height)); kernels/resize.cl applies them separably. */
#include <math.h>
#include <stdlib.h>

#include "prep/prep_internal.h"

typedef struct axis_tab {
    cl_int *i0, *i1;
    float *a0, *a1;
} axis_tab;

static void tab_free(axis_tab *t) {
    free(t->i0);
    free(t->i1);
    free(t->a0);
    free(t->a1);
}

/* OpenCV (resizeGeneric): f = (float)((d + 0.5) * scale - 0.5) in float32 for its own path, in
 * double here for EXACT; i = floor(f), a = f - i. The horizontal axis clamps (i < 0: i = 0, a = 0;
 * i >= n - 1: i = n - 1, a = 0); OpenCV's vertical axis keeps the weight and only clips the two
 * source rows to the image, which rounds differently at the first and last rows. */
static int tab_make(axis_tab *t, uint32_t src, uint32_t dst, int clamp_weight,
                    gpuseg__resize_rule rule) {
    t->i0 = malloc(dst * sizeof *t->i0);
    t->i1 = malloc(dst * sizeof *t->i1);
    t->a0 = malloc(dst * sizeof *t->a0);
    t->a1 = malloc(dst * sizeof *t->a1);
    if (!t->i0 || !t->i1 || !t->a0 || !t->a1)
        return 0;
    const double scale = (double)src / (double)dst;
    for (uint32_t d = 0; d < dst; d++) {
        long i;
        volatile float a; /* volatile: the float32 steps round as OpenCV's do */
        if (rule == GPUSEG__RESIZE_CV) {
            volatile float f = (float)((d + 0.5) * scale - 0.5);
            i = (long)floorf(f);
            a = f - (float)i;
        } else {
            double f = (d + 0.5) * scale - 0.5;
            i = (long)floor(f);
            a = (float)(f - (double)i);
        }
        if (clamp_weight || rule == GPUSEG__RESIZE_EXACT) {
            if (i < 0) {
                i = 0;
                a = 0.0f;
            }
            if (i >= (long)src - 1) {
                i = (long)src - 1;
                a = 0.0f;
            }
        }
        long j = i + 1;
        i = i < 0 ? 0 : (i > (long)src - 1 ? (long)src - 1 : i);
        j = j < 0 ? 0 : (j > (long)src - 1 ? (long)src - 1 : j);
        t->i0[d] = (cl_int)i;
        t->i1[d] = (cl_int)j;
        t->a0[d] = 1.0f - a;
        t->a1[d] = a;
    }
    return 1;
}

/* OpenCV's exact halving (INTER_LINEAR turned INTER_AREA: 2x2 means) of nch planes into
 * dw x dh. */
static gpuseg_status run_area2(gpuseg_ctx *ctx, cl_mem src, cl_mem dst, uint32_t dw, uint32_t dh,
                               uint32_t nch) {
    cl_kernel k;
    cl_uint nch32 = nch, dh32 = dh, dw32 = dw;
    gpuseg_status st;
    if ((st = gpuseg__kernel(ctx, "resize", "resize_area2", &k)) ||
        (st = gpuseg__set_args(ctx, k, 5, sizeof(cl_mem), &src, sizeof dw32, &dw32, sizeof dh32,
                               &dh32, sizeof nch32, &nch32, sizeof(cl_mem), &dst)))
        return st;
    return gpuseg__run(ctx, k, 2, (size_t[]){dw, (size_t)nch * dh}, (size_t[]){16, 4});
}

/* The separable bilinear resize of nch planes of sw x sh (src) into dw x dh (dst) with the
 * coefficient tables tx (columns) and ty (rows): resize_h into a temporary of nch x sh x dw,
 * then resize_v. `what` names the caller in messages. */
static gpuseg_status run_separable(gpuseg_ctx *ctx, cl_mem src, uint32_t sw, uint32_t sh,
                                   cl_mem dst, uint32_t dw, uint32_t dh, uint32_t nch,
                                   const axis_tab *tx, const axis_tab *ty, const char *what) {
    cl_mem b[8] = {0}, tmp = NULL;
    cl_kernel k;
    cl_uint nch32 = nch, sh32 = sh, sw32 = sw, dh32 = dh, dw32 = dw, rows = nch * sh;
    size_t tbytes;
    gpuseg_status st;
    if (!gpuseg__mul4_size(nch, sh, dw, sizeof(float), &tbytes))
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "%s: size overflows", what);
    if ((st = gpuseg__upload(ctx, tx->i0, dw * sizeof(cl_int), "resize: table", &b[0])) ||
        (st = gpuseg__upload(ctx, tx->i1, dw * sizeof(cl_int), "resize: table", &b[1])) ||
        (st = gpuseg__upload(ctx, tx->a0, dw * sizeof(float), "resize: table", &b[2])) ||
        (st = gpuseg__upload(ctx, tx->a1, dw * sizeof(float), "resize: table", &b[3])) ||
        (st = gpuseg__upload(ctx, ty->i0, dh * sizeof(cl_int), "resize: table", &b[4])) ||
        (st = gpuseg__upload(ctx, ty->i1, dh * sizeof(cl_int), "resize: table", &b[5])) ||
        (st = gpuseg__upload(ctx, ty->a0, dh * sizeof(float), "resize: table", &b[6])) ||
        (st = gpuseg__upload(ctx, ty->a1, dh * sizeof(float), "resize: table", &b[7])) ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, tbytes, "resize: temporary", &tmp)) ||
        (st = gpuseg__kernel(ctx, "resize", "resize_h", &k)) ||
        (st = gpuseg__set_args(ctx, k, 9, sizeof(cl_mem), &src, sizeof sw32, &sw32, sizeof rows,
                               &rows, sizeof(cl_mem), &tmp, sizeof dw32, &dw32, sizeof(cl_mem),
                               &b[0], sizeof(cl_mem), &b[1], sizeof(cl_mem), &b[2], sizeof(cl_mem),
                               &b[3])) ||
        (st = gpuseg__run(ctx, k, 2, (size_t[]){dw, rows}, (size_t[]){16, 4})) ||
        (st = gpuseg__kernel(ctx, "resize", "resize_v", &k)) ||
        (st = gpuseg__set_args(ctx, k, 10, sizeof(cl_mem), &tmp, sizeof sh32, &sh32, sizeof dw32,
                               &dw32, sizeof nch32, &nch32, sizeof(cl_mem), &dst, sizeof dh32,
                               &dh32, sizeof(cl_mem), &b[4], sizeof(cl_mem), &b[5], sizeof(cl_mem),
                               &b[6], sizeof(cl_mem), &b[7])))
        goto done;
    st = gpuseg__run(ctx, k, 3, (size_t[]){dw, dh, nch}, (size_t[]){16, 4, 1});
done:
    for (int i = 0; i < 8; i++)
        gpuseg__release(&b[i]);
    gpuseg__release(&tmp);
    return st;
}

gpuseg_status gpuseg__resize(gpuseg_ctx *ctx, cl_mem src, uint32_t nch, uint32_t h, uint32_t w,
                             cl_mem dst, uint32_t dh, uint32_t dw, gpuseg__resize_rule rule) {
    if (nch == 0 || h == 0 || w == 0 || dh == 0 || dw == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "resize: %u channels of %u x %u -> %u x %u pixels", nch, w, h, dw, dh);
    if (dh > GPUSEG_MAX_IMAGE_SIDE || dw > GPUSEG_MAX_IMAGE_SIDE ||
        (uint64_t)dh * dw > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "resize: %u x %u pixels exceed the limit", dw,
                            dh);
    gpuseg_status st = GPUSEG_OK;
    cl_int err;
    if (h == dh && w == dw) { /* cv2.resize copies */
        size_t bytes;
        if (!gpuseg__mul4_size(nch, h, w, sizeof(float), &bytes))
            return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "resize: size overflows");
        err = clEnqueueCopyBuffer(ctx->queue, src, dst, 0, 0, bytes, 0, NULL, NULL);
        return err == CL_SUCCESS ? GPUSEG_OK : gpuseg__fail_cl(ctx, err, "resize: copy");
    }
    if (rule == GPUSEG__RESIZE_CV && h == 2 * dh && w == 2 * dw) {
        /* OpenCV turns an exact halving with INTER_LINEAR into its fast INTER_AREA mode. */
        return run_area2(ctx, src, dst, dw, dh, nch);
    }
    axis_tab tx = {0}, ty = {0};
    if (!tab_make(&tx, w, dw, 1, rule) || !tab_make(&ty, h, dh, 0, rule)) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "resize: coefficient tables");
        goto done;
    }
    st = run_separable(ctx, src, w, h, dst, dw, dh, nch, &tx, &ty, "resize");
done:
    tab_free(&tx);
    tab_free(&ty);
    return st;
}

gpuseg_status gpuseg__resize_maps(gpuseg_ctx *ctx, cl_mem maps, uint32_t nout,
                                  const gpuseg__tile_geom *g, cl_mem dst) {
    /* Cellpose resizes the [Lyr, Lxr, 3] maps with cv2, which takes its IPP path for 3 float32
     * channels: that agrees with the double-coordinate rule to about one ulp. */
    return gpuseg__resize(ctx, maps, nout, g->lyr, g->lxr, dst, g->ly0, g->lx0,
                          nout == 2 ? GPUSEG__RESIZE_CV : GPUSEG__RESIZE_EXACT);
}

gpuseg_status gpuseg__resize_source(gpuseg_ctx *ctx, uint32_t src, uint32_t dst, uint32_t d0,
                                    uint32_t d1, int vert, gpuseg__resize_rule rule, uint32_t *s0,
                                    uint32_t *s1) {
    if (src == 0 || dst == 0 || d0 >= d1 || d1 > dst)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "resize: rows %u..%u of %u -> %u", d0, d1,
                            src, dst);
    if (src == dst) { /* a copy */
        *s0 = d0;
        *s1 = d1;
        return GPUSEG_OK;
    }
    axis_tab t = {0};
    if (!tab_make(&t, src, dst, !vert, rule)) {
        tab_free(&t);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "resize: coefficient tables");
    }
    cl_int lo = t.i0[d0], hi = t.i1[d0];
    for (uint32_t d = d0; d < d1; d++) {
        lo = t.i0[d] < lo ? t.i0[d] : lo;
        lo = t.i1[d] < lo ? t.i1[d] : lo;
        hi = t.i0[d] > hi ? t.i0[d] : hi;
        hi = t.i1[d] > hi ? t.i1[d] : hi;
    }
    tab_free(&t);
    *s0 = (uint32_t)lo;
    *s1 = (uint32_t)hi + 1;
    return GPUSEG_OK;
}

/* Slices [d0, d0 + n) of a table and moves its indices to a source window starting at s0 of
 * length sn; 0 when an index falls outside the window. */
static int tab_slice(axis_tab *t, uint32_t d0, uint32_t n, uint32_t s0, uint32_t sn) {
    for (uint32_t k = 0; k < n; k++) {
        long i0 = (long)t->i0[d0 + k] - s0, i1 = (long)t->i1[d0 + k] - s0;
        if (i0 < 0 || i1 < 0 || i0 >= (long)sn || i1 >= (long)sn)
            return 0;
        t->i0[k] = (cl_int)i0;
        t->i1[k] = (cl_int)i1;
        t->a0[k] = t->a0[d0 + k];
        t->a1[k] = t->a1[d0 + k];
    }
    return 1;
}

gpuseg_status gpuseg__resize_window(gpuseg_ctx *ctx, cl_mem src, uint32_t nch, uint32_t sy0,
                                    uint32_t sx0, uint32_t sh, uint32_t sw, uint32_t full_h,
                                    uint32_t full_w, cl_mem dst, uint32_t dy0, uint32_t dx0,
                                    uint32_t dh, uint32_t dw, uint32_t full_dh, uint32_t full_dw,
                                    gpuseg__resize_rule rule) {
    if (nch == 0 || sh == 0 || sw == 0 || dh == 0 || dw == 0 || (uint64_t)sy0 + sh > full_h ||
        (uint64_t)sx0 + sw > full_w || (uint64_t)dy0 + dh > full_dh || (uint64_t)dx0 + dw > full_dw)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "resize window: %ux%u at (%u, %u) of %ux%u -> %ux%u at (%u, %u) of "
                            "%ux%u",
                            sw, sh, sx0, sy0, full_w, full_h, dw, dh, dx0, dy0, full_dw, full_dh);
    cl_int err;
    if (full_h == full_dh && full_w == full_dw) { /* cv2.resize copies */
        if (dy0 < sy0 || dx0 < sx0 || dy0 + dh > sy0 + sh || dx0 + dw > sx0 + sw)
            return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                "resize window: the source does not hold the copied window");
        const size_t so[3] = {(size_t)(dx0 - sx0) * 4, dy0 - sy0, 0}, d0[3] = {0, 0, 0};
        const size_t region[3] = {(size_t)dw * 4, dh, nch};
        err = clEnqueueCopyBufferRect(ctx->queue, src, dst, so, d0, region, (size_t)sw * 4,
                                      (size_t)sw * sh * 4, (size_t)dw * 4, (size_t)dw * dh * 4, 0,
                                      NULL, NULL);
        return err == CL_SUCCESS ? GPUSEG_OK : gpuseg__fail_cl(ctx, err, "resize window: copy");
    }
    gpuseg_status st = GPUSEG_OK;
    if (rule == GPUSEG__RESIZE_CV && full_h == 2 * full_dh && full_w == 2 * full_dw) {
        /* OpenCV's exact halving (INTER_AREA): the source window must be exactly 2x the window */
        if (sy0 != 2 * dy0 || sx0 != 2 * dx0 || sh != 2 * dh || sw != 2 * dw)
            return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                "resize window: a halving needs the source window 2x the window");
        return run_area2(ctx, src, dst, dw, dh, nch);
    }
    axis_tab tx = {0}, ty = {0};
    if (!tab_make(&tx, full_w, full_dw, 1, rule) || !tab_make(&ty, full_h, full_dh, 0, rule)) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "resize window: coefficient tables");
        goto done;
    }
    if (!tab_slice(&tx, dx0, dw, sx0, sw) || !tab_slice(&ty, dy0, dh, sy0, sh)) {
        st = gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                          "resize window: the source window misses pixels the window reads");
        goto done;
    }
    st = run_separable(ctx, src, sw, sh, dst, dw, dh, nch, &tx, &ty, "resize window");
done:
    tab_free(&tx);
    tab_free(&ty);
    return st;
}
