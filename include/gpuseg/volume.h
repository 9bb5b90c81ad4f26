/* gpuseg/volume.h: Z stacks (volumes) as Cellpose 3.1 segments them: with do_3D (the 2-D network
 * on the YX, ZX and ZY slices, the three views' flows combined, 3-D masks:
 * gpuseg_segment_volume), or without it: each plane in 2-D, then the planes' masks linked across
 * Z (utils.stitch3D) and the volume cleaned (utils.fill_holes_and_remove_small_masks in 3-D:
 * gpuseg_segment_stack). See docs/segment.md, "Z stacks". */
#ifndef GPUSEG_VOLUME_H
#define GPUSEG_VOLUME_H

#include "gpuseg/common.h"
#include "gpuseg/context.h"
#include "gpuseg/image.h"
#include "gpuseg/segment.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Cellpose 3.1 utils.stitch3D, in place on labels = Z x H x W (plane-major, rows, columns; 0 =
 * background), host-only. Plane 0 keeps its labels; then, for z = 0 .. Z-2, each label a of
 * plane z+1 is compared with the (already stitched) labels b of plane z by IoU = overlap /
 * (area a + area b - overlap) (float64, as metrics._intersection_over_union); IoUs below
 * `threshold` count as 0, and so does every IoU below the largest of its column (b); a then
 * takes the b of its largest remaining IoU (the smallest b on a tie) or, when none is left, a
 * new label: the largest so far + 1, + 2, ... in the order of a (values of a that are absent
 * from the plane take new labels too, as in Cellpose). When plane z or z+1 holds no label and
 * no plane was stitched yet, plane z+1 keeps its labels and the running largest label becomes
 * its largest (Cellpose's rule, which can reuse plane 0's labels after an empty plane); after a
 * stitch, such a plane's labels are shifted past the largest. Labels may be at most Z*H*W.
 * threshold: finite, >= 0 (Cellpose's stitch_threshold). *n_masks (may be NULL) receives the
 * largest label of the result. Differences from Cellpose: labels are uint32 throughout (a
 * uint16 Cellpose run wraps above 65535). */
GPUSEG_API gpuseg_status gpuseg_labels_stitch3d(uint32_t *labels, uint32_t Z, uint32_t H,
                                                uint32_t W, double threshold, uint32_t *n_masks);

/* Cellpose 3.1 utils.fill_holes_and_remove_small_masks on a volume Z x H x W (Z = 1: a 2-D
 * image), in place, host-only: with min_size > 0, labels of fewer than min_size voxels are
 * removed and the rest renumbered 1..N by first appearance (plane-major scan); then every label,
 * in value order, has the holes of its bounding box filled (background or other labels not
 * 6-connected to the box's faces, as fill_voids.fill; a box one plane thick has no holes) and
 * is renumbered 1, 2, ... in that order; with min_size > 0 the size filter and renumbering run
 * again. As Cellpose, the size test indexes the counts of the labels present with 0 first, so
 * it assumes labels 1..N without gaps and a volume with background. Labels may be at most
 * Z*H*W. *n_masks (may be NULL) receives the largest label of the result. */
GPUSEG_API gpuseg_status gpuseg_labels_fill_holes_3d(uint32_t *labels, uint32_t Z, uint32_t H,
                                                     uint32_t W, int32_t min_size,
                                                     uint32_t *n_masks);

/* Segments a Z stack: img's pages are the planes (Z = img->pages; 2-D: 1 page is segmented as
 * gpuseg_segment does), as Cellpose 3.1 CellposeModel.eval(x, do_3D=False,
 * stitch_threshold=T) with T > 0:
 *   - normalisation (params->normalize) over the whole stack per channel (Cellpose's default
 *     norm3D=True: one pair of percentiles for all planes, subsampled above 224^3 samples), with
 *     invert, on the host; then each plane through gpuseg_segment with min_size off;
 *   - the planes' labels linked by gpuseg_labels_stitch3d(T), then
 *     gpuseg_labels_fill_holes_3d(params->min_size).
 * The diameter: params->diameter > 0 is used for every plane; with params->size_model or
 * params->estimate_diameter (and diameter 0) it is estimated once on the middle plane (Z / 2)
 * as gpuseg_segment would, and that diameter is used for all planes (Cellpose's 3-D eval uses
 * one diameter for the stack); otherwise diam_labels. params->page is ignored.
 * On success result->labels is a one-channel image of Z pages (uint16, or uint32 above 65535
 * masks), result->n_masks the largest label; flows (want_flows) are float32 [Z][3][H][W], the
 * style (want_style) float32 [Z][style_len] (one vector per plane); seconds_net/_masks, n_tiles
 * and passes are summed over the planes, the other members are those of the planes' runs.
 * threshold must be > 0 and finite. Progress: "plane" done/total before each plane, each
 * plane's stages in its share, "stitching", then "done"; a cancel request is checked between
 * planes (and inside each plane's run): the call then returns GPUSEG_CANCELLED with an empty
 * result. Errors name the plane ("plane 3 of 16: ..."). */
GPUSEG_API gpuseg_status gpuseg_segment_stack(gpuseg_ctx *ctx, gpuseg_net *net,
                                              const gpuseg_image *img,
                                              const gpuseg_segment_params *params,
                                              double stitch_threshold,
                                              gpuseg_segment_result *result);

/* Segments a Z stack in 3-D as Cellpose 3.1 CellposeModel.eval(x, do_3D=True,
 * anisotropy=anisotropy, flow3D_smooth=flow3d_smooth) (resample=True): img's pages are the
 * planes (Z = img->pages >= 2, height and width >= 2; channels as gpuseg_segment_stack):
 *   1. channels and normalisation over the whole stack (norm3D, as gpuseg_segment_stack);
 *   2. the rescale r = diam_mean / diameter (diam_mean / diam_labels for diameter 0; with
 *      params->estimate_diameter or a size model and diameter 0, the diameter is first estimated
 *      on the middle plane in 2-D, as gpuseg_segment_stack does: Cellpose has no 3-D estimate);
 *      when r != 1 or anisotropy != 1, each plane is resized to trunc(H r) x trunc(W r) and the
 *      Z axis to trunc(Z anisotropy r) planes (bilinear, OpenCV's rule, on the device);
 *   3. the 2-D network (tiles, taper blend; no further rescale) on every YX plane, every plane
 *      at fixed Y (a Z x X image) and every plane at fixed X (a Z x Y image) (core.run_3D), the
 *      views' outputs summed: dZ = ZX's + ZY's row flows, dY = YX's + ZY's, dX = YX's + ZX's,
 *      cellprob = YX's + ZX's + ZY's logits (float32, in Cellpose's order);
 *   4. resized back to Z x H x W (YX per plane, then Z) when step 2 resized;
 *   5. flow3d_smooth > 0: dZ, dY, dX smoothed by a Gaussian of that sigma in voxels (scipy
 *      gaussian_filter, truncate 4, mode reflect, Z then Y then X);
 *   6. gpuseg_flows_to_masks3d with niter = trunc(200 / r) (or params->niter),
 *      cellprob_threshold, min_size and max_size_fraction from params (no flow-error QC: Cellpose
 *      skips it in 3-D; params->flow_threshold is ignored).
 * params may be NULL (Cellpose's defaults). anisotropy: the Z step over the XY pixel size (> 0;
 * 1: Cellpose's None). flow3d_smooth: >= 0 (0: off, Cellpose's default). params->page is ignored.
 * On success result->labels is a one-channel image of Z pages (uint16, or uint32 above 65535
 * masks), result->n_masks the largest label; with want_flows, result->flows is float32
 * [4][Z][H][W]: dZ, dY, dX (network scale, summed over two views), cellprob (summed over three);
 * no style (style NULL, style_len 0); n_tiles counts the network tiles of all slices.
 * Memory (host; on PoCL the device buffers are host memory too): the network phase holds the
 * normalised channels at the network's scale (4 bytes a voxel of V' = Z Y X r^3 anisotropy
 * voxels, 8 when the second channel is not zeros) and the combined flows (16 bytes a voxel of
 * V'), while the device holds one group of slices' tiles and maps: each slice's outputs are
 * added into the flows and dropped. That is the peak at r = anisotropy = 1: the masks step
 * takes the flows over unless want_flows is set, giving their pages back as it copies them
 * into its scaled flows (16 + 8 per followed voxel at most, bytes a voxel of the input), and
 * resizes give each channel back once resized. Measured ~20 bytes a voxel of peak RSS between
 * 32x256x256 and 64x512x512 (docs/segment.md, "Z stacks").
 * Progress: "normalising", "resizing", "network YX" / "network ZX" / "network ZY" (slices done
 * of each view), "resizing back", "smoothing", "masks", "done"; cancellable between slices
 * (GPUSEG_CANCELLED with an empty result). */
GPUSEG_API gpuseg_status gpuseg_segment_volume(gpuseg_ctx *ctx, gpuseg_net *net,
                                               const gpuseg_image *img,
                                               const gpuseg_segment_params *params,
                                               double anisotropy, double flow3d_smooth,
                                               gpuseg_segment_result *result);

#ifdef __cplusplus
}
#endif
#endif
