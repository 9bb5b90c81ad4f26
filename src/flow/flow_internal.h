/* flow/flow_internal.h: what the flow module's files share and the public API does not show.
 * The labels -> flows section belongs to flow/labels_to_flows.c. */
#ifndef GPUSEG_FLOW_INTERNAL_H
#define GPUSEG_FLOW_INTERNAL_H

#include "core/internal.h"
#include "gpuseg/flows_cl.h"

/* ---- labels -> flows (flow/labels_to_flows.c) ----------------------------------------------- */

/* Ideal flows of a device label image (Cellpose masks_to_flows, CPU path), for the flow-error
 * quality check and for `gpuseg flows`. labels: uint32[H*W], 0 = background; n_labels: an upper
 * bound of the label values (labels above it are refused with GPUSEG_INVALID_ARGUMENT), or 0 when
 * unknown. flows: float32[2*H*W], dY plane then dX plane, unit vectors, 0 on background; fully
 * overwritten. Enqueued on ctx's queue; returns after the queue has finished (clFinish).
 * Does not clear the error state (internal). */
gpuseg_status gpuseg__labels_to_flows_cl(gpuseg_ctx *ctx, cl_mem labels, uint32_t H, uint32_t W,
                                         uint32_t n_labels, cl_mem flows);

/* Largest padded mask box (pixels) diffused by the per-mask kernel; larger masks take the per-step
 * global path. -1 (default): as the device allows; 0: never (tests compare the paths with it);
 * N > 0: at most N. Not thread-safe: tests only. */
extern int gpuseg__l2f_local_limit;

/* Kernel variants by device type (flows -> masks and labels -> flows): CPU devices get kernels
 * with one work-item per mask (l2f_box) or per 8 pixels as float8 lanes (masks_euler8), without
 * barriers and vectorised by hand; other devices get the work-group and one-pixel-per-work-item
 * kernels (l2f_local, masks_euler). Both variants give identical bits (tested).
 * gpuseg__flow_variant: -1 (default) by device type; 0: GPU variants; 1: CPU variants (tests
 * force each; not thread-safe). */
extern int gpuseg__flow_variant;
int gpuseg__flow_cpu_kernels(const gpuseg_ctx *ctx);

/* ---- end of labels -> flows section --------------------------------------------------------- */

#endif
