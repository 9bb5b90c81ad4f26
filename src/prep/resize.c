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
    cl_kernel k;
    cl_uint nch32 = nch, h32 = h, w32 = w, dh32 = dh, dw32 = dw;
    if (rule == GPUSEG__RESIZE_CV && h == 2 * dh && w == 2 * dw) {
        /* OpenCV turns an exact halving with INTER_LINEAR into its fast INTER_AREA mode. */
        if ((st = gpuseg__kernel(ctx, "resize", "resize_area2", &k)) ||
            (st = gpuseg__set_args(ctx, k, 5, sizeof(cl_mem), &src, sizeof dw32, &dw32, sizeof dh32,
                                   &dh32, sizeof nch32, &nch32, sizeof(cl_mem), &dst)))
            return st;
        return gpuseg__run(ctx, k, 2, (size_t[]){dw, (size_t)nch * dh}, (size_t[]){16, 4});
    }
    axis_tab tx = {0}, ty = {0};
    cl_mem b[8] = {0}, tmp = NULL;
    size_t tbytes;
    if (!tab_make(&tx, w, dw, 1, rule) || !tab_make(&ty, h, dh, 0, rule)) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "resize: coefficient tables");
        goto done;
    }
    if (!gpuseg__mul4_size(nch, h, dw, sizeof(float), &tbytes)) {
        st = gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "resize: size overflows");
        goto done;
    }
    if ((st = gpuseg__upload(ctx, tx.i0, dw * sizeof(cl_int), "resize: table", &b[0])) ||
        (st = gpuseg__upload(ctx, tx.i1, dw * sizeof(cl_int), "resize: table", &b[1])) ||
        (st = gpuseg__upload(ctx, tx.a0, dw * sizeof(float), "resize: table", &b[2])) ||
        (st = gpuseg__upload(ctx, tx.a1, dw * sizeof(float), "resize: table", &b[3])) ||
        (st = gpuseg__upload(ctx, ty.i0, dh * sizeof(cl_int), "resize: table", &b[4])) ||
        (st = gpuseg__upload(ctx, ty.i1, dh * sizeof(cl_int), "resize: table", &b[5])) ||
        (st = gpuseg__upload(ctx, ty.a0, dh * sizeof(float), "resize: table", &b[6])) ||
        (st = gpuseg__upload(ctx, ty.a1, dh * sizeof(float), "resize: table", &b[7])) ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, tbytes, "resize: temporary", &tmp)))
        goto done;
    cl_uint rows = nch * h;
    if ((st = gpuseg__kernel(ctx, "resize", "resize_h", &k)) ||
        (st = gpuseg__set_args(ctx, k, 9, sizeof(cl_mem), &src, sizeof w32, &w32, sizeof rows,
                               &rows, sizeof(cl_mem), &tmp, sizeof dw32, &dw32, sizeof(cl_mem),
                               &b[0], sizeof(cl_mem), &b[1], sizeof(cl_mem), &b[2], sizeof(cl_mem),
                               &b[3])) ||
        (st = gpuseg__run(ctx, k, 2, (size_t[]){dw, rows}, (size_t[]){16, 4})) ||
        (st = gpuseg__kernel(ctx, "resize", "resize_v", &k)) ||
        (st = gpuseg__set_args(ctx, k, 10, sizeof(cl_mem), &tmp, sizeof h32, &h32, sizeof dw32,
                               &dw32, sizeof nch32, &nch32, sizeof(cl_mem), &dst, sizeof dh32,
                               &dh32, sizeof(cl_mem), &b[4], sizeof(cl_mem), &b[5], sizeof(cl_mem),
                               &b[6], sizeof(cl_mem), &b[7])) ||
        (st = gpuseg__run(ctx, k, 3, (size_t[]){dw, dh, nch}, (size_t[]){16, 4, 1})))
        goto done;
done:
    for (int i = 0; i < 8; i++)
        gpuseg__release(&b[i]);
    gpuseg__release(&tmp);
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
