/* ops/conv_params.c: the committed parameter table of the implicit-GEMM convolution
 * (kernels/conv_gemm.cl), as CLBlast keeps its tuned parameters per device: the set the tuner
 * found fastest for each CPnet layer shape on devices someone measured, so that users of those
 * devices get it without tuning. A set tuned on the user's own machine (`GPUSEG_CONV_TUNE=1`, or
 * bench/bench_tune) takes precedence (the tuned cache, src/ops/conv_gemm.c); a device with no
 * entry gets the default set.
 *
 * Format (docs/ops.md, "The GEMM's parameters"): one line per (device, layer shape):
 *     {"DEVICE", K, CIN, COUT, H, W, {TM, TH, TW, TK, WM, WN, PAD}, US, BATCH},
 * DEVICE a case-insensitive substring of the OpenCL device name (`gpuseg devices`), K the kernel
 * size, CIN/COUT/H/W the layer shape, the seven kernel parameters, US the tuner's time in
 * microseconds for BATCH tiles (informative only). `bench/bench_tune --emit-c` prints exactly these
 * lines; paste them here, keep the table sorted by device, then shape. Lookup: the exact shape
 * for the device, else the nearest shape of the same kernel size (log distance over cin and plane
 * pixels), else nothing (the default). Every set is checked against the device's limits before
 * use (a set the device refuses falls back to the default). */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "ops/ops_internal.h"

/* clang-format off */
const gpuseg__gemm_db_entry gpuseg__gemm_db[] = {
    {NULL, 0, 0, 0, 0, 0, {0, 0, 0, 0, 0, 0, 0}, 0, 0},
};
/* clang-format on */
const size_t gpuseg__gemm_db_len = sizeof gpuseg__gemm_db / sizeof gpuseg__gemm_db[0] - 1;

/* Case-insensitive substring test. */
static bool contains(const char *hay, const char *needle) {
    const size_t n = strlen(needle);
    if (!n)
        return false;
    for (const char *p = hay; *p; p++)
        if (strncasecmp(p, needle, n) == 0)
            return true;
    return false;
}

const gpuseg__gemm_db_entry *gpuseg__gemm_db_find(const gpuseg__ops *ops,
                                                  const gpuseg__conv_desc *d) {
    const gpuseg__gemm_db_entry *best = NULL;
    double bd = INFINITY;
    for (size_t i = 0; i < gpuseg__gemm_db_len; i++) {
        const gpuseg__gemm_db_entry *e = &gpuseg__gemm_db[i];
        if (e->ksize != d->ksize || !contains(ops->ctx->dev.name, e->device))
            continue;
        const double dc = log((double)e->cin / d->cin), dco = log((double)e->cout / d->cout),
                     dp = log((double)e->height * e->width / ((double)d->height * d->width));
        const double dist = dc * dc + dco * dco + dp * dp;
        if (dist < bd) {
            bd = dist;
            best = e;
        }
    }
    return best;
}
