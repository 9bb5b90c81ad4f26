/* bench/bench_profile.h: the per-kernel profile (GPUSEG_PROFILE=1, core/profile.c) as JSON, for
 * the bench programs: ',"kernel_total_s_per_run":T,"kernels":[{...}, ...]' sorted by time, each
 * kernel's seconds and launches divided by the number of runs profiled. Prints nothing when
 * profiling is off. Returns 0, or 1 when the profile cannot be read or sorted. */
#ifndef GPUSEG_BENCH_PROFILE_H
#define GPUSEG_BENCH_PROFILE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

static int bench_cmp_kt(const void *a, const void *b) {
    const gpuseg__kernel_time *x = a, *y = b;
    return (x->seconds < y->seconds) - (x->seconds > y->seconds);
}

static int bench_print_profile(gpuseg_ctx *ctx, int runs) {
    const gpuseg__kernel_time *kt = NULL;
    unsigned nk = 0;
    if (gpuseg__profile_read(ctx, &kt, &nk) != GPUSEG_OK)
        return 1;
    if (!nk)
        return 0;
    gpuseg__kernel_time *sorted = malloc(nk * sizeof *sorted);
    if (!sorted)
        return 1;
    memcpy(sorted, kt, nk * sizeof *sorted);
    qsort(sorted, nk, sizeof *sorted, bench_cmp_kt);
    double total = 0;
    for (unsigned k = 0; k < nk; k++)
        total += sorted[k].seconds;
    printf(",\"kernel_total_s_per_run\":%.4f,\"kernels\":[", total / runs);
    for (unsigned k = 0; k < nk; k++)
        printf("%s{\"kernel\":\"%s\",\"s_per_run\":%.5f,\"launches_per_run\":%.1f,"
               "\"share\":%.4f}",
               k ? "," : "", sorted[k].name, sorted[k].seconds / runs,
               (double)sorted[k].count / runs, total > 0 ? sorted[k].seconds / total : 0);
    printf("]");
    free(sorted);
    return 0;
}

#endif
