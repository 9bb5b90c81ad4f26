/* metrics/ap.c: average precision of a label image against the truth, as Cellpose 3.1
 * metrics.average_precision computes it (docs/metrics.md): pixel overlap of every (true,
 * predicted) pair, IoU, one-to-one matching at each threshold, TP/FP/FN and AP. The overlap is
 * built sparsely (sorted pixel pairs) so that thousands of masks cost O(pixels), not
 * O(n_true * n_pred). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "gpuseg/metrics.h"

/* LSD radix sort of 64-bit keys, one byte per pass; passes in which every key has the same
 * byte are skipped (the high bytes of small labels). tmp has n entries. */
static void radix_sort_u64(uint64_t *a, uint64_t *tmp, size_t n) {
    for (unsigned shift = 0; shift < 64; shift += 8) {
        size_t count[256] = {0};
        for (size_t i = 0; i < n; i++)
            count[(a[i] >> shift) & 0xff]++;
        if (n == 0 || count[(a[0] >> shift) & 0xff] == n)
            continue;
        size_t pos = 0;
        for (unsigned b = 0; b < 256; b++) {
            size_t c = count[b];
            count[b] = pos;
            pos += c;
        }
        for (size_t i = 0; i < n; i++)
            tmp[count[(a[i] >> shift) & 0xff]++] = a[i];
        memcpy(a, tmp, n * sizeof *a);
    }
}

gpuseg_status gpuseg_metrics_ap(const uint32_t *truth, const uint32_t *pred, uint32_t H, uint32_t W,
                                const double *thresholds, size_t n_thresholds,
                                gpuseg_ap_result *out) {
    gpuseg__clear_error(NULL);
    static const double defaults[GPUSEG_AP_N_DEFAULT] = GPUSEG_AP_THRESHOLDS_DEFAULT;
    if (!truth || !pred || !out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "average precision: NULL argument");
    if (!thresholds) {
        if (n_thresholds != GPUSEG_AP_N_DEFAULT)
            return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                                "average precision: default thresholds are %d, not %zu",
                                GPUSEG_AP_N_DEFAULT, n_thresholds);
        thresholds = defaults;
    }
    if (n_thresholds == 0 || n_thresholds > 1000)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "average precision: %zu thresholds (1 to 1000)", n_thresholds);
    for (size_t k = 0; k < n_thresholds; k++) {
        /* Below 0.5 a true mask can overlap several predictions above the threshold, and the
         * greedy matching below is no longer optimal. */
        if (!(thresholds[k] >= 0.5 && thresholds[k] <= 1.0))
            return gpuseg__fail(
                NULL,
                isnan(thresholds[k]) || thresholds[k] > 1.0 ? GPUSEG_INVALID_ARGUMENT
                                                            : GPUSEG_UNSUPPORTED,
                "average precision: IoU threshold %g outside [0.5, 1]", thresholds[k]);
    }
    if (H == 0 || W == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "average precision: empty image (%u x %u)", H, W);
    if ((uint64_t)H * W > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE,
                            "average precision: %u x %u pixels exceed the limit", H, W);
    const size_t npix = (size_t)H * W;
    uint32_t n_true = 0, n_pred = 0;
    for (size_t i = 0; i < npix; i++) {
        if (truth[i] > n_true)
            n_true = truth[i];
        if (pred[i] > n_pred)
            n_pred = pred[i];
    }
    uint32_t *tp = calloc(n_thresholds, sizeof *tp);
    uint64_t *keys = NULL, *tmp = NULL;
    uint32_t *pvals = NULL;
    uint64_t *pareas = NULL;
    unsigned char *used = NULL, *matched = NULL;
    gpuseg_status st = GPUSEG_OK;
    if (!tp)
        goto oom;
    if (n_pred > 0 && n_true > 0) {
        keys = malloc(npix * sizeof *keys);
        tmp = malloc(npix * sizeof *tmp);
        if (!keys || !tmp)
            goto oom;
        /* Distinct predicted labels and their areas. */
        for (size_t i = 0; i < npix; i++)
            keys[i] = pred[i];
        radix_sort_u64(keys, tmp, npix);
        size_t np = 0;
        for (size_t i = 0; i < npix; i++)
            if (i == 0 || keys[i] != keys[i - 1])
                np++;
        pvals = malloc(np * sizeof *pvals);
        pareas = calloc(np, sizeof *pareas);
        used = calloc(np * n_thresholds, 1);
        matched = malloc(n_thresholds);
        if (!pvals || !pareas || !used || !matched)
            goto oom;
        np = 0;
        for (size_t i = 0; i < npix; i++) {
            if (i == 0 || keys[i] != keys[i - 1])
                pvals[np++] = (uint32_t)keys[i];
            pareas[np - 1]++;
        }
        /* (true, predicted) pairs of every pixel, sorted: runs are the overlap counts. */
        for (size_t i = 0; i < npix; i++)
            keys[i] = ((uint64_t)truth[i] << 32) | pred[i];
        radix_sort_u64(keys, tmp, npix);
        size_t g = 0;
        while (g < npix) {
            const uint32_t a = (uint32_t)(keys[g] >> 32);
            size_t e = g;
            while (e < npix && (uint32_t)(keys[e] >> 32) == a)
                e++;
            if (a != 0) {
                const uint64_t area_a = e - g;
                memset(matched, 0, n_thresholds);
                size_t r = g;
                while (r < e) {
                    size_t s = r;
                    while (s < e && keys[s] == keys[r])
                        s++;
                    const uint32_t b = (uint32_t)keys[r];
                    if (b != 0) {
                        const uint64_t ov = s - r;
                        const size_t bi = gpuseg__find_u32(pvals, np, b);
                        /* The same float64 division as numpy's overlap / union. */
                        const double iou = (double)ov / (double)(area_a + pareas[bi] - ov);
                        /* For thresholds >= 0.5 the pairs above the threshold form stars (a
                         * mask can have two partners only at IoU exactly 0.5, and those
                         * partners have no other), so any maximal matching is a maximum one:
                         * Hungarian's TP count (docs/metrics.md). */
                        for (size_t k = 0; k < n_thresholds; k++)
                            if (iou >= thresholds[k] && !matched[k] &&
                                !used[bi * n_thresholds + k]) {
                                matched[k] = 1;
                                used[bi * n_thresholds + k] = 1;
                                tp[k]++;
                            }
                    }
                    r = s;
                }
            }
            g = e;
        }
    }
    for (size_t k = 0; k < n_thresholds; k++) {
        gpuseg_ap_result *o = &out[k];
        o->threshold = thresholds[k];
        o->n_true = n_true;
        o->n_pred = n_pred;
        o->tp = tp[k];
        o->fp = n_pred - tp[k];
        o->fn = n_true - tp[k];
        /* Cellpose keeps tp, fp, fn and ap in float32 arrays; 0/0 gives NaN. */
        const float ftp = (float)o->tp, ffp = (float)o->fp, ffn = (float)o->fn;
        const float den = ftp + ffp + ffn;
        o->ap = den > 0.0f ? (double)(ftp / den) : NAN;
    }
    goto done;
oom:
    st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "average precision: %zu pixels", npix);
done:
    free(tp);
    free(keys);
    free(tmp);
    free(pvals);
    free(pareas);
    free(used);
    free(matched);
    return st;
}
