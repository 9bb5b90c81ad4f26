/* gpuseg/blocks.h: segmentation of images too large for memory, block by block, with labels that
 * equal a whole-image gpuseg_segment run up to renumbering for every mask smaller than the halo
 * (docs/blockwise.md). The image comes from a region-reading callback and the labels go to a
 * region-writing callback, so that files can be streamed; peak host and device memory depend on
 * the block size and halo, not on the image size. */
#ifndef GPUSEG_BLOCKS_H
#define GPUSEG_BLOCKS_H

#include "gpuseg/segment.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reads the region of w x h pixels at (x0, y0) of the image into *out: a new one-page image of
 * the image's channels and sample type (gpuseg_image_create), which the library frees. A
 * status other than GPUSEG_OK stops the run with it (the message says which region). */
typedef gpuseg_status (*gpuseg_region_read_fn)(void *user, uint32_t x0, uint32_t y0, uint32_t w,
                                               uint32_t h, gpuseg_image **out);

/* The image to segment: its size and the callback that reads regions of it. */
typedef struct gpuseg_block_source {
    uint32_t width, height;
    gpuseg_region_read_fn read;
    void *user;
} gpuseg_block_source;

/* Receives the final labels of the region of w x h pixels at (x0, y0), row-major uint32 (0:
 * background), once per block, blocks in row-major order; the array is the library's and valid
 * only during the call. A status other than GPUSEG_OK stops the run with it. */
typedef gpuseg_status (*gpuseg_labels_write_fn)(void *user, uint32_t x0, uint32_t y0, uint32_t w,
                                                uint32_t h, const uint32_t *labels);

typedef struct gpuseg_blocks_params {
    uint32_t block_size; /* side of a block in image pixels (the last ones are smaller); 1024 */
    /* Context around each block, in image pixels: a mask is labelled only when it lies inside
     * its block plus halo with a pixel to spare; larger masks are left 0 and counted. 0: 4 x the
     * diameter used (at least 64). */
    uint32_t halo;
} gpuseg_blocks_params;

GPUSEG_API void gpuseg_blocks_params_default(gpuseg_blocks_params *p);

typedef struct gpuseg_blocks_result {
    uint32_t n_masks;     /* distinct labels written: 1 .. n_masks */
    uint32_t n_blocks;    /* blocks run */
    uint32_t halo;        /* the halo used */
    uint64_t n_tiles_run; /* network tiles run over all blocks (tiles near seams run twice) */
    uint32_t n_tiles;     /* the whole image's tile grid (what gpuseg_segment runs) */
    /* masks that reached a block's halo edge, so are bigger than the halo: left 0 in that
     * block (a mask crossing several blocks is counted once per block) */
    uint32_t n_too_big;
    float norm_lo[2], norm_hi[2]; /* the percentiles of the two network channels */
    double diameter, rescale;     /* as gpuseg_segment_result */
    uint32_t niter;
    double seconds_percentiles, seconds_blocks;
} gpuseg_blocks_result;

/* Segments the image of `src` as gpuseg_segment(params) would, block by block: the percentile
 * normalisation, the rescale, the 224-pixel tile grid and its blend and max_size_fraction stay
 * those of the whole image (docs/blockwise.md says what is equal and what is not). Labels are
 * numbered in the order blocks first write them. Not supported (GPUSEG_UNSUPPORTED): augment,
 * estimate_diameter and diameter 0 with a size model; want_flows and want_style are ignored.
 * Progress: stage "percentiles" then "blocks" (done/total blocks); cancel is checked between
 * blocks. */
GPUSEG_API gpuseg_status gpuseg_segment_blocks(gpuseg_ctx *ctx, gpuseg_net *net,
                                               const gpuseg_block_source *src,
                                               const gpuseg_segment_params *params,
                                               const gpuseg_blocks_params *bp,
                                               gpuseg_labels_write_fn sink, void *sink_user,
                                               gpuseg_blocks_result *result);

/* The same for an image in memory (page params->page), the labels into *labels (a new uint32
 * image the caller frees with gpuseg_image_free). */
GPUSEG_API gpuseg_status gpuseg_segment_blocks_image(
    gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *img, const gpuseg_segment_params *params,
    const gpuseg_blocks_params *bp, gpuseg_image **labels, gpuseg_blocks_result *result);

#ifdef __cplusplus
}
#endif
#endif
