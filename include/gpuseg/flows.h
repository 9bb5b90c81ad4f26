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

/* Ideal flows of a label volume, as Cellpose 3.1 masks_to_flows on a 3-D array (CPU path): not
 * a 3-D diffusion, but the 2-D flows (gpuseg_labels_to_flows) of every Z slice (H x W: dY, dX),
 * every Y slice (Z x W: dZ, dX) and every X slice (Z x H: dZ, dY), summed per component in that
 * order (float32 + float64 as numpy does) and NOT renormalised, so a component lies in [-2, 2].
 * labels: Z*H*W, 0 = background, any other value = one mask (per slice: its pieces in one slice
 * are one 2-D mask with one centre, as Cellpose's find_objects on the slice gives).
 * flows_out: caller-allocated float[3*Z*H*W]: dZ, dY, dX planes. A volume without masks gives
 * zeros (Cellpose returns a [2, Z, H, W] zero array there). docs/flows.md, "Volumes". */
GPUSEG_API gpuseg_status gpuseg_labels_to_flows3d(gpuseg_ctx *ctx, const uint32_t *labels,
                                                  uint32_t Z, uint32_t H, uint32_t W,
                                                  float *flows_out);

/* Cellpose utils.remove_edge_masks (`cellpose --exclude_on_edges`), in place: masks touching the
 * image border are set to 0 and the others renumbered 1..n keeping their order; *n_masks (may be
 * NULL) receives n. Host-only. */
GPUSEG_API gpuseg_status gpuseg_labels_remove_edge_masks(uint32_t *labels, uint32_t H, uint32_t W,
                                                         uint32_t *n_masks);

/* Cellpose utils.diameters: median over masks of sqrt(pixel count), divided by sqrt(pi)/2 (the
 * median equivalent-circle diameter). Labels are counted by value (gaps allowed); *diam = 0 when
 * there is no mask. Host-only. */
GPUSEG_API gpuseg_status gpuseg_labels_diameter(const uint32_t *labels, uint32_t H, uint32_t W,
                                                double *diam);

/* ---- end of labels -> flows section --------------------------------------------------------- */

/* ---- flows -> masks (module flow/masks.c, docs/masks.md) ---------------------------------- */

/* Parameters of flows -> masks; gpuseg_masks_params_default gives Cellpose 3.1's defaults. */
typedef struct gpuseg_masks_params {
    float cellprob_threshold; /* 0.0: pixels with cellprob > this are followed */
    float flow_threshold;     /* 0.4: masks with flow error > this are removed; <= 0: QC off */
    uint32_t niter;           /* 200: Euler steps; 0 means the default (200) */
    int32_t min_size;         /* 15: masks below this many pixels are removed; <= 0: off */
    double max_size_fraction; /* 0.4: masks above this fraction of the image are removed */
} gpuseg_masks_params;

/* Fills *p with the defaults above. */
GPUSEG_API void gpuseg_masks_params_default(gpuseg_masks_params *p);

/* Labels from network outputs, on the context's device, as Cellpose 3.1.1.3 compute_masks (CPU
 * path) followed by fill_holes_and_remove_small_masks: threshold, Euler integration, end-point
 * histogram seeds, growth, label assignment, big-mask removal, flow-error QC, hole filling,
 * small-mask removal, renumbering 1..N by first appearance (row-major).
 * flows: host float32 [3, H, W]: dY, dX (network scale, about 5x unit length), cellprob logit.
 * params may be NULL (defaults). On success *labels_out is a new one-channel image of dtype
 * GPUSEG_DTYPE_U16, or GPUSEG_DTYPE_U32 where Cellpose returns uint32 (a label >= 65536 after
 * QC); free it with gpuseg_image_free. *n_masks (may be NULL) receives the largest label.
 * Non-finite values in flows are refused with GPUSEG_FORMAT (message gives channel, y, x). */
GPUSEG_API gpuseg_status gpuseg_flows_to_masks(gpuseg_ctx *ctx, const float *flows, uint32_t H,
                                               uint32_t W, const gpuseg_masks_params *params,
                                               gpuseg_image **labels_out, uint32_t *n_masks);

/* Labels of a volume from 3-D network outputs, as Cellpose 3.1.1.3 resize_and_compute_masks with
 * do_3D=True on the CPU (docs/masks.md, "Volumes"): threshold, Euler integration with Cellpose's
 * 3-D sampling (PyTorch grid_sample, trilinear, zeros padding, align_corners=False, on positions
 * normalised by L-1: Cellpose's own offset of up to half a voxel is reproduced), end-point
 * histogram, 5x5x5 seeds, 11x11x11 growth, big-mask removal (max_size_fraction of the volume),
 * then fill_holes_and_remove_small_masks with 3-D hole filling (6-connected background) and the
 * min_size filter, renumbered 1..N by first appearance (z, y, x order). No flow-error QC
 * (Cellpose skips it in 3-D): params->flow_threshold is ignored.
 * flows: host float32 [4, Z, H, W]: dZ, dY, dX (network scale), cellprob logit. Every side must
 * be >= 2. params may be NULL (defaults). labels_out: caller-allocated uint32 [Z*H*W] (Cellpose
 * returns uint16 below 65536 masks; the values are the same). *n_masks (may be NULL): the
 * largest label. Non-finite input: GPUSEG_FORMAT naming the channel, z, y and x. Progress stage
 * "masks"; cancellable between stages (GPUSEG_CANCELLED, labels_out zeroed). Device work: the
 * Euler integration, histogram and seed search; the rest runs on the host. */
GPUSEG_API gpuseg_status gpuseg_flows_to_masks3d(gpuseg_ctx *ctx, const float *flows, uint32_t Z,
                                                 uint32_t H, uint32_t W,
                                                 const gpuseg_masks_params *params,
                                                 uint32_t *labels_out, uint32_t *n_masks);
/* gpuseg_flows_to_masks3d on flows the caller hands over: the same labels, in less memory. As
 * each chunk of the four planes is copied into the step's scaled flows, its pages are given back
 * to the system (Linux: madvise MADV_DONTNEED; elsewhere they stay until the caller frees
 * them), so the flows (16 bytes a voxel) and the scaled copy (12) are not resident together:
 * peak about 16 + 8 bytes per followed voxel, against 32 + 8 beside const flows. Afterwards the
 * content of flows is unspecified (on failure too); the caller still frees the buffer, which
 * must be writable memory it owns (not a read-only mapping). gpuseg_segment_volume uses it
 * unless want_flows is set. */
GPUSEG_API gpuseg_status gpuseg_flows_to_masks3d_consume(gpuseg_ctx *ctx, float *flows, uint32_t Z,
                                                         uint32_t H, uint32_t W,
                                                         const gpuseg_masks_params *params,
                                                         uint32_t *labels_out, uint32_t *n_masks);

/* ---- end of flows -> masks section ---------------------------------------------------------- */

#ifdef __cplusplus
}
#endif
#endif
