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

/* gpuseg_blocks_event.block after the percentile passes (no block yet). */
#define GPUSEG_BLOCKS_NORM UINT32_MAX

/* What a run reports, through gpuseg_blocks_params.on_event, after the percentile passes and
 * after each block (once its labels went to the sink): what a caller needs to stream per-mask
 * outputs (outline polygons) and to keep a journal from which a killed run can be resumed
 * (docs/blockwise.md, "Resuming"). Everything it points to is the library's, valid only during
 * the call. */
typedef struct gpuseg_blocks_event {
    /* the block just written (row-major index: block row * blocks across + block column), or
     * GPUSEG_BLOCKS_NORM: the percentile passes just ended (only norm and n_blocks are set) */
    uint32_t block;
    uint32_t n_blocks; /* blocks in all */
    /* the normalisation parameters of the whole image: handed back as gpuseg_blocks_params.norm,
     * they stand for the percentile passes */
    float norm[8];
    /* the block's window (its core grown by the halo, clipped to the image) */
    uint32_t x0, y0, width, height;
    /* [height][width], row-major: the global label of every mask that this block labelled first
     * (new masks), 0 elsewhere. A new mask lies whole inside the window: these are all its
     * pixels, as this block segmented them. */
    const uint32_t *labels;
    uint32_t first_label, n_new; /* the new masks: first_label .. first_label + n_new - 1 */
    /* [n_new]: each new mask's first pixel in raster order (y * image width + x), which
     * identifies it in later blocks (gpuseg_blocks_params.known_masks) */
    const uint64_t *first_pixel;
    uint32_t n_too_big;   /* this block's count (gpuseg_blocks_result.n_too_big) */
    uint32_t n_tiles_run; /* tiles this block ran through the network (not from the cache) */
} gpuseg_blocks_event;

/* A status other than GPUSEG_OK stops the run with it. */
typedef gpuseg_status (*gpuseg_blocks_event_fn)(void *user, const gpuseg_blocks_event *ev);

typedef struct gpuseg_blocks_params {
    uint32_t block_size; /* side of a block in image pixels (the last ones are smaller); 1024 */
    /* Context around each block, in image pixels: a mask is labelled only when it lies inside
     * its block plus halo with a pixel to spare; larger masks are left 0 and counted. 0: 4 x the
     * diameter used (at least 64). */
    uint32_t halo;
    /* Called after the percentile passes and after each block; NULL: not called. */
    gpuseg_blocks_event_fn on_event;
    void *event_user;
    /* Resuming a run that stopped (docs/blockwise.md): with the same image, parameters, block
     * size and halo, and the values its events gave, the blocks first_block.. write exactly what
     * they would have written in the whole run. norm: not NULL, the 8 parameters of its
     * GPUSEG_BLOCKS_NORM event (the percentile passes are skipped). first_block: the blocks
     * before it are not run (their labels are not written again). known_masks [n_known]: the
     * first_pixel of every mask the blocks before first_block labelled, in label order (the
     * concatenation of their events' first_pixel); new labels continue at n_known + 1. All 0 /
     * NULL: a whole run. */
    const float *norm;
    uint32_t first_block;
    uint32_t n_known;
    const uint64_t *known_masks;
    /* Each tile of the whole image's 224-pixel grid goes through the network once per run: a
     * block keeps on the host the outputs of its tiles that a later block needs (3 x 224 x 224
     * float32, 602,112 bytes per tile) and the later block reuses them (docs/blockwise.md,
     * "Tile cache"). The cache holds about the tile rows that consecutive block rows share
     * ((2 x halo x rescale + 224) / 187 at tile_overlap 0.1: 2 for a halo of 68 at rescale 1)
     * times the tiles across the image (1.2 x width x rescale / 224): it grows with the image's
     * width, not its height (~280 MB for a 40,000-pixel-wide slide with blocks of 1024, halo
     * 68, rescale 1). A resumed run starts with it empty (its first blocks recompute the tiles
     * that blocks before first_block ran).
     * no_tile_cache = 1: no cache, tiles near block seams run in every block that needs them
     * (about twice the network time, no host memory for tiles). Labels are the same either
     * way. 0 (default): the cache. */
    uint32_t no_tile_cache;
} gpuseg_blocks_params;

GPUSEG_API void gpuseg_blocks_params_default(gpuseg_blocks_params *p);

/* The counters (blocks, tiles, n_too_big, seconds) count the blocks this call ran (from
 * first_block); n_masks counts all labels, the known ones included. */
typedef struct gpuseg_blocks_result {
    uint32_t n_masks;  /* distinct labels written: 1 .. n_masks */
    uint32_t n_blocks; /* blocks run */
    uint32_t halo;     /* the halo used */
    /* network tiles run over all blocks: n_tiles for a whole run with the tile cache (each
     * tile once), more without it (tiles near seams run in each block that needs them) or when
     * resumed (the first blocks recompute tiles the blocks before them ran) */
    uint64_t n_tiles_run;
    uint32_t n_tiles; /* the whole image's tile grid (what gpuseg_segment runs) */
    /* masks that reached a block's halo edge, so are bigger than the halo: left 0 in that
     * block (a mask crossing several blocks is counted once per block) */
    uint32_t n_too_big;
    float norm_lo[2], norm_hi[2]; /* the percentiles of the two network channels */
    double diameter, rescale;     /* as gpuseg_segment_result */
    uint32_t niter;
    double seconds_percentiles, seconds_blocks;
    /* the most host memory the tile cache held at once (bytes; 0 with no_tile_cache) */
    uint64_t tile_cache_peak;
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

/* ---- distributed runs: the global plan once, then any block anywhere ------------------------
 * For the blocks of one image run by several processes or machines (python/ gpuseg.distributed):
 * gpuseg_blocks_plan_compute computes once what is global (the percentiles by the two streaming
 * passes, the rescale, the resolved halo) into a plain structure that can be copied byte for byte
 * to another process; gpuseg_segment_block then segments block k of the plan on any context,
 * independently of the other blocks: it labels each pixel of the block's core with the key of its
 * mask, the mask's global first pixel in raster order (y * width + x) plus 1 (0: background, or a
 * mask bigger than the halo), so that every block that writes a mask gives it the same key. Keys
 * of all blocks mapped to 1..n in increasing order number the masks by their first pixel as
 * gpuseg_segment does, and equal gpuseg_segment_blocks' labels up to renumbering. Same context and
 * same network plan per block as gpuseg_segment_blocks: with the same GPUSEG_CONV, bit-equal. */

#define GPUSEG_BLOCKS_PLAN_VERSION 1u

typedef struct gpuseg_blocks_plan {
    uint32_t version;                /* GPUSEG_BLOCKS_PLAN_VERSION */
    gpuseg_segment_params params;    /* the run's (size_model NULL, want_flows/style 0) */
    uint32_t width, height;          /* the image */
    uint32_t block_size, halo;       /* the halo resolved (never 0) */
    uint32_t n_blocks_x, n_blocks_y; /* block k: row k / n_blocks_x, column k % n_blocks_x */
    /* per network channel c, norm[4c ..]: the low and high percentiles, the mode (0: constant
     * channel, left as is; 1: scaled; 2: high - low <= 1e-3) and high - low; 0 without
     * normalisation */
    float norm[8];
    double diameter, rescale; /* as gpuseg_blocks_result */
    uint32_t niter;
    uint32_t n_tiles; /* the whole image's tile grid */
    double seconds_percentiles;
} gpuseg_blocks_plan;

/* Computes the plan of a blockwise run of src (the checks and refusals of gpuseg_segment_blocks,
 * and its two percentile passes, reading the image block by block). From bp only block_size and
 * halo are used (no events; the resume fields do not apply). Progress: "percentiles". */
GPUSEG_API gpuseg_status gpuseg_blocks_plan_compute(gpuseg_ctx *ctx, gpuseg_net *net,
                                                    const gpuseg_block_source *src,
                                                    const gpuseg_segment_params *params,
                                                    const gpuseg_blocks_params *bp,
                                                    gpuseg_blocks_plan *plan);

/* The core of block k (0 .. n_blocks_x * n_blocks_y - 1): w x h pixels at (x0, y0). */
GPUSEG_API gpuseg_status gpuseg_blocks_plan_core(const gpuseg_blocks_plan *plan, uint32_t k,
                                                 uint32_t *x0, uint32_t *y0, uint32_t *w,
                                                 uint32_t *h);

typedef struct gpuseg_block_result {
    uint32_t x0, y0, width, height; /* the core */
    uint32_t n_masks;               /* distinct keys written */
    uint32_t n_too_big;             /* masks of the core bigger than the halo (left 0) */
    uint64_t n_tiles_run;
    double seconds;
} gpuseg_block_result;

/* Segments block k of the plan: keys (w x h of gpuseg_blocks_plan_core, row-major; block_size^2
 * always suffices) receives the mask key of each core pixel. src is the same image as the plan's
 * (its width and height are checked), net the same model (its rescale is checked). Reads only the
 * block's window (core + halo, and the tiles' context around it). */
GPUSEG_API gpuseg_status gpuseg_segment_block(gpuseg_ctx *ctx, gpuseg_net *net,
                                              const gpuseg_block_source *src,
                                              const gpuseg_blocks_plan *plan, uint32_t k,
                                              uint64_t *keys, gpuseg_block_result *result);

#ifdef __cplusplus
}
#endif
#endif
