/* gpuseg/metrics.h: instance-segmentation accuracy as Cellpose 3.1 metrics.average_precision
 * defines it: IoU of every pair of masks, an optimal one-to-one matching at each IoU threshold,
 * TP / FP / FN and AP = TP / (TP + FP + FN). Host-only: no device or context is needed. */
#ifndef GPUSEG_METRICS_H
#define GPUSEG_METRICS_H

#include "gpuseg/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Cellpose's default thresholds. */
#define GPUSEG_AP_N_DEFAULT 3
#define GPUSEG_AP_THRESHOLDS_DEFAULT                                                               \
    { 0.5, 0.75, 0.9 }

/* The scores of one image at one IoU threshold. */
typedef struct gpuseg_ap_result {
    double threshold;
    uint32_t n_true; /* objects in the truth: its largest label (Cellpose's convention, so gaps */
    uint32_t n_pred; /* in the numbering count as missed / false objects); same for prediction */
    uint32_t tp;     /* matched pairs with IoU >= threshold */
    uint32_t fp;     /* n_pred - tp */
    uint32_t fn;     /* n_true - tp */
    double ap;       /* tp / (tp + fp + fn), computed in float32 as Cellpose does; NaN when both
                        images are empty */
} gpuseg_ap_result;

/* Scores a predicted label image against a true one (both H*W, row-major, 0 = background) at
 * each of n_thresholds IoU thresholds (NULL: GPUSEG_AP_THRESHOLDS_DEFAULT, and then
 * n_thresholds must be GPUSEG_AP_N_DEFAULT). out: caller-allocated, n_thresholds entries.
 * Thresholds must lie in [0.5, 1] (GPUSEG_UNSUPPORTED below 0.5: there the optimal matching needs
 * the general assignment problem, which is not implemented; see docs/metrics.md). The counts
 * equal Cellpose's exactly. */
GPUSEG_API gpuseg_status gpuseg_metrics_ap(const uint32_t *truth, const uint32_t *pred, uint32_t H,
                                           uint32_t W, const double *thresholds,
                                           size_t n_thresholds, gpuseg_ap_result *out);

#ifdef __cplusplus
}
#endif
#endif
