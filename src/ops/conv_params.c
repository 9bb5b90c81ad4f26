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
 * lines (in the network's layer order); paste them here, one block per device. Lookup: the exact
 * shape for the device, else the nearest shape of the same kernel size (log distance over cin, cout
 * and plane pixels), else nothing (the default). Every set is checked against the device's limits
 * before use (a set the device refuses falls back to the default). */
#include <math.h>
#include <string.h>
#include <strings.h>

#include "ops/ops_internal.h"

/* clang-format off */
const gpuseg__gemm_db_entry gpuseg__gemm_db[] = {
    /* PoCL 3.1 on the 2-core AMD EPYC development machine (device "pthread-haswell-AMD EPYC"),
     * 2026-12-07: bench_tune --nbase 2,32,64,128,256 --tile 112 --batch 1 --repeats 3, at load
     * average 12-18 (other jobs): the GEMM runs at 0.1-1.1 GFLOP/s there (direct 2-75), so AUTO
     * never picks it on this CPU; the sets are what the format looks like filled in. */
    {"pthread-haswell-AMD EPYC", 1, 2, 32, 112, 112, {32, 8, 16, 2, 2, 8, 1}, 1519.9, 1},
    {"pthread-haswell-AMD EPYC", 3, 2, 32, 112, 112, {32, 8, 8, 2, 2, 4, 1}, 52201.7, 1},
    {"pthread-haswell-AMD EPYC", 3, 32, 32, 112, 112, {32, 4, 16, 16, 2, 4, 1}, 404247.4, 1},
    {"pthread-haswell-AMD EPYC", 1, 32, 64, 56, 56, {64, 4, 16, 16, 4, 4, 1}, 24519.6, 1},
    {"pthread-haswell-AMD EPYC", 3, 32, 64, 56, 56, {64, 4, 16, 16, 4, 4, 1}, 248083.4, 1},
    {"pthread-haswell-AMD EPYC", 3, 64, 64, 56, 56, {64, 8, 8, 8, 4, 4, 1}, 424019.9, 1},
    {"pthread-haswell-AMD EPYC", 1, 64, 128, 28, 28, {64, 8, 8, 8, 4, 4, 1}, 31272.9, 1},
    {"pthread-haswell-AMD EPYC", 3, 64, 128, 28, 28, {128, 8, 16, 8, 8, 8, 1}, 232715.5, 1},
    {"pthread-haswell-AMD EPYC", 3, 128, 128, 28, 28, {128, 4, 32, 8, 8, 8, 1}, 513011.3, 1},
    {"pthread-haswell-AMD EPYC", 1, 128, 256, 14, 14, {64, 8, 8, 8, 4, 4, 1}, 31961.3, 1},
    {"pthread-haswell-AMD EPYC", 3, 128, 256, 14, 14, {64, 8, 8, 8, 4, 4, 1}, 163137.0, 1},
    {"pthread-haswell-AMD EPYC", 3, 256, 256, 14, 14, {128, 8, 16, 8, 8, 8, 1}, 575929.6, 1},
    {"pthread-haswell-AMD EPYC", 1, 256, 256, 14, 14, {64, 8, 8, 8, 4, 4, 1}, 155345.6, 1},
    {"pthread-haswell-AMD EPYC", 1, 256, 128, 28, 28, {64, 8, 8, 8, 4, 4, 1}, 276574.2, 1},
    {"pthread-haswell-AMD EPYC", 3, 256, 128, 28, 28, {64, 8, 8, 8, 4, 4, 1}, 1673330.9, 1},
    {"pthread-haswell-AMD EPYC", 1, 128, 64, 56, 56, {64, 4, 16, 16, 4, 4, 1}, 239997.3, 1},
    {"pthread-haswell-AMD EPYC", 3, 128, 64, 56, 56, {64, 8, 32, 8, 8, 8, 1}, 537056.7, 1},
    {"pthread-haswell-AMD EPYC", 1, 64, 32, 112, 112, {32, 4, 16, 16, 2, 4, 1}, 42438.3, 1},
    {"pthread-haswell-AMD EPYC", 3, 64, 32, 112, 112, {32, 4, 16, 16, 2, 4, 1}, 402860.0, 1},
    {"pthread-haswell-AMD EPYC", 1, 32, 3, 112, 112, {8, 8, 32, 8, 1, 8, 1}, 6362.4, 1},
    /* NVIDIA H100 / H200: from the first GPU run's OUT/conv_params.c (docs/gpu.md). */
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

const gpuseg__gemm_db_entry *gpuseg__gemm_db_find(const char *device, const gpuseg__conv_desc *d) {
    const gpuseg__gemm_db_entry *best = NULL;
    double bd = INFINITY;
    for (size_t i = 0; i < gpuseg__gemm_db_len; i++) {
        const gpuseg__gemm_db_entry *e = &gpuseg__gemm_db[i];
        if (e->ksize != d->ksize || !contains(device, e->device))
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
