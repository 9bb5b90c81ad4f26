/* gpuseg/volume.h: Z stacks (volumes) as Cellpose 3.1 segments them without do_3D: each plane
 * in 2-D, then the planes' masks linked across Z (utils.stitch3D) and the volume cleaned
 * (utils.fill_holes_and_remove_small_masks in 3-D). See docs/segment.md, "Z stacks". */
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

#ifdef __cplusplus
}
#endif
#endif
