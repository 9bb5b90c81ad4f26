/* cli/segment_blocks.h: `gpuseg segment` on images too large for a whole-image run (issue #16):
 * gpuseg_segment_blocks fed by the region reader (the image is never read whole), the labels
 * streamed into a tiled BigTIFF or assembled in host memory; the diameter estimated on a central
 * sample region; the estimate of a whole-image run's memory that decides (docs/segment.md,
 * "Large images"). Built on the public API only. */
#ifndef GPUSEG_CLI_SEGMENT_BLOCKS_H
#define GPUSEG_CLI_SEGMENT_BLOCKS_H

#include <stdint.h>

#include "gpuseg/gpuseg.h"
#include "segment_resume.h"

/* Host bytes per pixel that a whole-image run needs besides the image itself (the issue's
 * measurement; the masks stage's seeding buffers are 28 bytes per pixel on the device too). */
#define SEG_BLOCKS_BYTES_PER_PIXEL 28u
/* Block side of an automatic blockwise run (no --block-size). */
#define SEG_BLOCKS_AUTO_BLOCK 1024u
/* Side of the central sample region the diameter is estimated on. */
#define SEG_BLOCKS_SAMPLE 1024u

/* Estimated bytes of a whole-image run on a W x H image of `channels` samples of `dtype`. */
uint64_t seg_blocks_estimate(uint32_t width, uint32_t height, uint32_t channels,
                             gpuseg_dtype dtype);

/* The default memory budget: half the machine's physical memory, or dev_bytes when smaller and
 * not 0. */
uint64_t seg_blocks_default_budget(uint64_t dev_bytes);

/* The tile side of streamed label TIFFs for a block size (a multiple of 16): the largest power
 * of two <= 512 dividing it, so that blocks fall on tiles. */
uint32_t seg_blocks_tile(uint32_t block_size);

/* Estimates the diameter on the central sample region (at most SEG_BLOCKS_SAMPLE squared) of
 * page p->page of the image that r reads, with gpuseg_segment(p) (p->estimate_diameter or
 * p->size_model set): *sample gets that run's numbers (diameter: the one it settled on; no
 * labels, flows or style), *sw x *sh the sample's size. */
gpuseg_status seg_blocks_sample_diameter(gpuseg_ctx *ctx, gpuseg_net *net,
                                         gpuseg_image_region_reader *r,
                                         const gpuseg_segment_params *p,
                                         gpuseg_segment_result *sample, uint32_t *sw, uint32_t *sh);

/* Segments the image that r reads (page p->page) blockwise. tiff_out not NULL: the labels are
 * streamed into that tiled BigTIFF (uint32, tile: seg_blocks_tile), published only when the run
 * succeeds and removed otherwise (cancel included); *labels is left NULL. tiff_out NULL: the
 * labels are assembled into *labels (uint16 when the masks fit, else uint32; H x W), which the
 * caller frees. Errors: the library's message (gpuseg_last_error) or, for the CLI's own
 * failures, cli_set_error's; GPUSEG_CANCELLED when the context was cancelled. */
gpuseg_status seg_blocks_run(gpuseg_ctx *ctx, gpuseg_net *net, gpuseg_image_region_reader *r,
                             const gpuseg_segment_params *p, const gpuseg_blocks_params *bp,
                             const char *tiff_out, unsigned write_flags, gpuseg_image **labels,
                             gpuseg_blocks_result *res);

/* Segments the image that r reads (page p->page) blockwise, streaming: the labels into the tiled
 * BigTIFF tiff_out (uint32), the outline polygons of each block's new masks into the part files
 * of state for each part_out[k] not NULL or empty (SEG_PART_TXT, _ROIS, _GEOJSON), and a journal
 * record per block into state. The blocks the state holds are written again from it and not run
 * (resuming). On success the polygon files and then the labels are published (each atomic);
 * otherwise the labels' temporary file is removed and the state kept. res: as an uninterrupted
 * run gives it (the state's blocks counted in). Errors as seg_blocks_run. */
gpuseg_status seg_blocks_stream(gpuseg_ctx *ctx, gpuseg_net *net, gpuseg_image_region_reader *r,
                                const gpuseg_segment_params *p, const gpuseg_blocks_params *bp,
                                const char *tiff_out, const char *const part_out[SEG_PARTS],
                                unsigned write_flags, seg_state *state, gpuseg_blocks_result *res);

#endif
