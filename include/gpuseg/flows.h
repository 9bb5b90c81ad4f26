/* gpuseg/flows.h: flows and labels. Ideal flows from a label image (Cellpose's masks_to_flows,
 * CPU path: per-mask heat diffusion from the mask's centre), the label image's diameter
 * (Cellpose utils.diameters), and (section of the flows -> masks module) labels from flows.
 * Versions that take device buffers are in gpuseg/flows_cl.h. */
#ifndef GPUSEG_FLOWS_H
#define GPUSEG_FLOWS_H

#include "gpuseg/common.h"
#include "gpuseg/context.h"
#include "gpuseg/image.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- labels -> flows, diameter (module flow/labels_to_flows.c, flow/diameter.c) ----------- */

/* Ideal flows of a label image, computed on the context's device: for every mask the unit vector
 * (dY, dX) of the gradient of a heat field diffused from the mask's centre, exactly as Cellpose
 * 3.1 masks_to_flows (CPU path, see docs/flows.md), in float32 instead of float64.
 * labels: H*W row-major, 0 = background, any other value = one mask (values need not be
 * consecutive; a label split into several pieces stays one mask with one centre, as in Cellpose).
 * flows_out: caller-allocated float[2*H*W]: the dY plane, then the dX plane; 0 on background.
 * An image without masks gives all-zero flows. */
GPUSEG_API gpuseg_status gpuseg_labels_to_flows(gpuseg_ctx *ctx, const uint32_t *labels, uint32_t H,
                                                uint32_t W, float *flows_out);

/* Cellpose utils.diameters: median over masks of sqrt(pixel count), divided by sqrt(pi)/2 (the
 * median equivalent-circle diameter). Labels are counted by value (gaps allowed); *diam = 0 when
 * there is no mask. Host-only. */
GPUSEG_API gpuseg_status gpuseg_labels_diameter(const uint32_t *labels, uint32_t H, uint32_t W,
                                                double *diam);

/* ---- end of labels -> flows section --------------------------------------------------------- */


#ifdef __cplusplus
}
#endif
#endif
