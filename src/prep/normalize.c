/* prep/normalize.c: Cellpose's per-channel 1st-99th percentile normalisation (normalize_img ->
 * normalize99) on the device. The percentiles are numpy's default ("linear") rule computed in
 * float32 as numpy 2 does for float32 data; the order statistics it needs are found exactly by a
 * radix select over the float bits (kernels/prep.cl), so nothing is sorted and nothing but the
 * 8 result words comes back to the host. */
#include <math.h>

#include "core/kernel_defs.h"
#include "prep/prep_internal.h"

#define ST_WORDS        16 /* per-channel state words; layout in kernels/prep.cl */
#define ST_RANK         GPUSEG__PREP_ST_RANK       /* the 4 remaining ranks (kernels/prep.cl) */
#define SUBSAMPLE_ABOVE (224ull * 224ull * 224ull) /* normalize99(downsample=True) */

/* numpy.percentile(x, pct) of n float32 samples: q = float32(pct) / float32(100) and the
 * virtual index (n - 1) * q are float32 operations (numpy 2 keeps the array's dtype); the result
 * interpolates between order statistics *i0 and *i1 with weight *gamma. */
void gpuseg__pct_index(uint64_t n, float pct, uint32_t *i0, uint32_t *i1, float *gamma) {
    volatile float q = pct / 100.0f; /* volatile: no excess precision or contraction */
    volatile float vi = (float)(n - 1) * q;
    double fl = floor((double)vi);
    if ((double)vi >= (double)(n - 1)) { /* numpy: at or past the end, take the maximum */
        *i0 = *i1 = (uint32_t)(n - 1);
        *gamma = (float)((double)vi - (double)(n - 1) + 1.0); /* unused: both ends equal */
        return;
    }
    *i0 = (uint32_t)fl;
    *i1 = *i0 + 1;
    *gamma = (float)((double)vi - fl); /* exact: vi has 24 significant bits */
}

void gpuseg__pct_subsample(uint32_t h, uint32_t w, uint32_t *sy, uint32_t *sx) {
    *sy = *sx = 1;
    if ((uint64_t)h * w > SUBSAMPLE_ABOVE) {
        *sy = h / 224 > 1 ? h / 224 : 1;
        *sx = w / 224 > 1 ? w / 224 : 1;
    }
}

gpuseg_status gpuseg__prep_normalize_par(gpuseg_ctx *ctx, cl_mem x, uint32_t nch, uint32_t h,
                                         uint32_t w, int invert, const float par[8]) {
    if (nch == 0 || nch > 2 || h == 0 || w == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "normalize: %u channels of %u x %u pixels", nch, w, h);
    cl_mem dpar = NULL;
    cl_kernel knorm;
    cl_int inv = invert ? 1 : 0;
    cl_uint n32 = h * w, nch32 = nch;
    gpuseg_status st;
    if ((st = gpuseg__upload(ctx, par, 8 * sizeof(float), "normalize: params", &dpar)) ||
        (st = gpuseg__kernel(ctx, "prep", "prep_normalize", &knorm)) ||
        (st = gpuseg__set_args(ctx, knorm, 5, sizeof(cl_mem), &x, sizeof n32, &n32, sizeof nch32,
                               &nch32, sizeof inv, &inv, sizeof(cl_mem), &dpar)))
        goto done;
    st = gpuseg__run(ctx, knorm, 2, (size_t[]){(size_t)h * w, nch}, (size_t[]){64, 1});
done:
    gpuseg__release(&dpar);
    return st;
}

gpuseg_status gpuseg__prep_normalize(gpuseg_ctx *ctx, cl_mem x, uint32_t nch, uint32_t h,
                                     uint32_t w, int invert, float pct_lo, float pct_hi,
                                     gpuseg__norm_stats *stats) {
    if (nch == 0 || nch > 2 || h == 0 || w == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "normalize: %u channels of %u x %u pixels", nch, w, h);
    if (!(pct_lo >= 0.0f && pct_lo < pct_hi && pct_hi <= 100.0f))
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "normalize: percentiles %g and %g (need 0 <= low < high <= 100)",
                            (double)pct_lo, (double)pct_hi);
    const uint64_t npix = (uint64_t)h * w;
    if (npix > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "normalize: %u x %u pixels", w, h);
    /* Cellpose normalises [1, H, W] per channel; above 224^3 samples the percentiles use every
     * (H // 224)-th row and (W // 224)-th column, starting at 0. */
    uint32_t sy, sx;
    gpuseg__pct_subsample(h, w, &sy, &sx);
    const uint32_t nys = (h + sy - 1) / sy, nxs = (w + sx - 1) / sx;
    const uint64_t ns = (uint64_t)nys * nxs;
    uint32_t lo0, lo1, hi0, hi1;
    float glo, ghi;
    gpuseg__pct_index(ns, pct_lo, &lo0, &lo1, &glo);
    gpuseg__pct_index(ns, pct_hi, &hi0, &hi1, &ghi);

    gpuseg_status st;
    cl_mem state[2] = {NULL, NULL}, hist = NULL, par = NULL;
    cl_uint init[2][ST_WORDS] = {{0}};
    for (uint32_t c = 0; c < nch; c++) {
        cl_uint *s = init[c];
        s[0] = 0xffffffffu; /* min key */
        s[ST_RANK + 0] = lo0;
        s[ST_RANK + 1] = lo1;
        s[ST_RANK + 2] = hi0;
        s[ST_RANK + 3] = hi1;
    }
    cl_int err;
    for (uint32_t c = 0; c < nch; c++) {
        if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, sizeof init[c], "normalize: state",
                                 &state[c])))
            goto done;
        err = clEnqueueWriteBuffer(ctx->queue, state[c], CL_TRUE, 0, sizeof init[c], init[c], 0,
                                   NULL, NULL);
        if (err != CL_SUCCESS) {
            st = gpuseg__fail_cl(ctx, err, "normalize: state upload");
            goto done;
        }
    }
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, 4 * 256 * sizeof(cl_uint),
                             "normalize: histogram", &hist)) ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, 2 * 4 * sizeof(float), "normalize: params",
                             &par)))
        goto done;
    cl_kernel kmm, khist, ksel, kfin, knorm;
    if ((st = gpuseg__kernel(ctx, "prep", "prep_minmax", &kmm)) ||
        (st = gpuseg__kernel(ctx, "prep", "prep_radix_hist", &khist)) ||
        (st = gpuseg__kernel(ctx, "prep", "prep_radix_select", &ksel)) ||
        (st = gpuseg__kernel(ctx, "prep", "prep_finalize", &kfin)) ||
        (st = gpuseg__kernel(ctx, "prep", "prep_normalize", &knorm)))
        goto done;
    /* GPUs: enough work-groups to fill the device, few enough that the per-group merge stays
     * cheap; the kernels take any work-group size, so a device with smaller groups gets what it
     * allows. CPU devices: work-groups of one work-item, each streaming one contiguous run of
     * the plane with a private histogram (kernels/prep.cl). */
    size_t local = ctx->dev.type == GPUSEG_DEVICE_CPU ? 1 : 256;
    for (int i = 0; i < 2; i++) {
        size_t wg = 0;
        if (clGetKernelWorkGroupInfo(i ? khist : kmm, ctx->device, CL_KERNEL_WORK_GROUP_SIZE,
                                     sizeof wg, &wg, NULL) == CL_SUCCESS &&
            wg > 0 && wg < local)
            local = wg;
    }
    size_t groups = (size_t)((npix + local * 16 - 1) / (local * 16));
    if (groups > 256)
        groups = 256;
    if (groups < 1)
        groups = 1;
    const size_t global = groups * local;
    cl_uint n32 = (cl_uint)npix, w32 = w, nxs32 = nxs, ns32 = (cl_uint)ns, sy32 = sy, sx32 = sx;
    for (uint32_t c = 0; c < nch; c++) {
        cl_uint off = (cl_uint)(c * npix), c32 = c;
        cl_mem sub = state[c];
        if ((st = gpuseg__set_args(ctx, kmm, 4, sizeof(cl_mem), &x, sizeof off, &off, sizeof n32,
                                   &n32, sizeof(cl_mem), &sub)) ||
            (st = gpuseg__run(ctx, kmm, 1, &global, &local)))
            goto done;
        for (int pass = 0; pass < 4; pass++) {
            cl_uint shift = (cl_uint)(24 - 8 * pass), zero = 0;
            err = clEnqueueFillBuffer(ctx->queue, hist, &zero, sizeof zero, 0,
                                      4 * 256 * sizeof(cl_uint), 0, NULL, NULL);
            if (err != CL_SUCCESS) {
                st = gpuseg__fail_cl(ctx, err, "normalize: clEnqueueFillBuffer");
                goto done;
            }
            if ((st = gpuseg__set_args(ctx, khist, 10, sizeof(cl_mem), &x, sizeof off, &off,
                                       sizeof w32, &w32, sizeof nxs32, &nxs32, sizeof ns32, &ns32,
                                       sizeof sy32, &sy32, sizeof sx32, &sx32, sizeof shift, &shift,
                                       sizeof(cl_mem), &sub, sizeof(cl_mem), &hist)) ||
                (st = gpuseg__run(ctx, khist, 1, &global, &local)) ||
                (st = gpuseg__set_args(ctx, ksel, 3, sizeof(cl_mem), &sub, sizeof(cl_mem), &hist,
                                       sizeof shift, &shift)) ||
                (st = gpuseg__run(ctx, ksel, 1, (size_t[]){1}, NULL)))
                goto done;
        }
        if ((st = gpuseg__set_args(ctx, kfin, 5, sizeof(cl_mem), &sub, sizeof glo, &glo, sizeof ghi,
                                   &ghi, sizeof(cl_mem), &par, sizeof c32, &c32)) ||
            (st = gpuseg__run(ctx, kfin, 1, (size_t[]){1}, NULL)))
            goto done;
    }
    cl_int inv = invert ? 1 : 0;
    cl_uint nch32 = nch;
    if ((st = gpuseg__set_args(ctx, knorm, 5, sizeof(cl_mem), &x, sizeof n32, &n32, sizeof nch32,
                               &nch32, sizeof inv, &inv, sizeof(cl_mem), &par)) ||
        (st = gpuseg__run(ctx, knorm, 2, (size_t[]){npix, nch}, (size_t[]){64, 1})))
        goto done;
    cl_uint words[2][ST_WORDS];
    float pars[8];
    for (uint32_t c = 0; c < nch; c++)
        if ((err = clEnqueueReadBuffer(ctx->queue, state[c], CL_FALSE, 0, sizeof words[c], words[c],
                                       0, NULL, NULL)) != CL_SUCCESS)
            break;
    if (err == CL_SUCCESS)
        err = clEnqueueReadBuffer(ctx->queue, par, CL_TRUE, 0, sizeof pars, pars, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "normalize: reading the percentiles");
        goto done;
    }
    for (uint32_t c = 0; c < nch; c++)
        if (words[c][2]) {
            st = gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                              "normalize: channel %u holds %u NaN or infinite samples", c,
                              words[c][2]);
            goto done;
        }
    if (stats) {
        for (uint32_t c = 0; c < 2; c++) {
            stats->lo[c] = c < nch ? pars[c * 4] : 0.0f;
            stats->hi[c] = c < nch ? pars[c * 4 + 1] : 0.0f;
            stats->mode[c] = c < nch ? (int)pars[c * 4 + 2] : 0;
        }
        stats->nsample = (uint32_t)ns;
    }
done:
    gpuseg__release(&state[0]);
    gpuseg__release(&state[1]);
    gpuseg__release(&hist);
    gpuseg__release(&par);
    return st;
}
