/* gpuseg/region.h: images larger than memory should hold (whole-slide images), read and written
 * block by block: a region reader that decodes only the TIFF tiles or strips a region touches,
 * and a tiled BigTIFF label writer that writes blocks as they are produced and publishes the
 * file atomically. Host-only: no device or context is needed. docs/io.md has the details. */
#ifndef GPUSEG_REGION_H
#define GPUSEG_REGION_H

#include <stdbool.h>

#include "gpuseg/common.h"
#include "gpuseg/image.h"
#include "gpuseg/limits.h"

#ifdef __cplusplus
extern "C" {
#endif

/* --- region reader ------------------------------------------------------------------------- */

/* An open image read region by region. One reader is used by one thread at a time. */
typedef struct gpuseg_image_region_reader gpuseg_image_region_reader;

/* What the reader found in the header (nothing of the pixels is decoded by open for TIFF). */
typedef struct gpuseg_image_region_info {
    uint32_t width;
    uint32_t height;
    uint32_t channels; /* 1..4 */
    uint32_t pages;    /* TIFF: the leading IFDs of page 1's size and type (level 0) */
    gpuseg_dtype dtype;
    char format[8]; /* "tiff", "png", "npy", ... as gpuseg_image_info */
    /* true: TIFF, tiles or strips are decoded on demand (memory: see docs/io.md); false: not a
     * TIFF, the whole image was read by open (memory: the image) */
    bool streamed;
    bool tiled;    /* TIFF tiles (false: strips) */
    bool bigtiff;  /* BigTIFF (64-bit offsets) */
    bool separate; /* TIFF planar configuration 2: one plane per channel */
    /* The decoding unit: a tile, or the image width x rows per strip; the image itself when not
     * streamed. */
    uint32_t block_width;
    uint32_t block_height;
    uint32_t compression; /* TIFF Compression tag (1 none, 5 LZW, 7 JPEG, 8 deflate, ...); 0 else */
    uint32_t ifds;        /* TIFF directories in the main chain (>= pages); 0 else */
    /* true when the TIFF holds more than level 0: directories after the pages that are of another
     * size or type or marked reduced-resolution (pyramid levels of SVS-like files, thumbnails,
     * label and macro images) or SubIFDs (OME-TIFF pyramids). Only level 0, the full
     * resolution, is read. */
    bool level0_only;
} gpuseg_image_region_info;

/* Opens an image for region reads. TIFF (classic or BigTIFF, tiled or striped, any codec libtiff
 * has): only the header and the directories are read, never pixels; the size is checked against
 * the max_pixels limit of `limits` (NULL or 0 members: environment, else defaults) before
 * anything else is allocated, so an image over the limit is refused at once. Other formats
 * (PNG, JPEG, BMP, PNM, GIF, .npy) are read whole here (gpuseg_image_read_ex: memory is the
 * image, fine for the small images these formats hold) and regions are copied from memory.
 * Errors are one line naming the file. On success *out is new; close it with
 * gpuseg_image_region_close. */
GPUSEG_API gpuseg_status gpuseg_image_region_open(const char *path, const gpuseg_limits *limits,
                                                  gpuseg_image_region_reader **out);

/* The reader's description (valid until close). */
GPUSEG_API const gpuseg_image_region_info *
gpuseg_image_region_info_of(const gpuseg_image_region_reader *r);

/* Reads the w x h pixels at (x, y) of page (0-based) into out, which the caller allocates (e.g.
 * gpuseg_image_create(w, h, info->channels, 1, info->dtype, &out)) and may reuse: out must have
 * exactly that width, height, the reader's channels and dtype, and 1 page. The region must lie
 * inside the image (callers clip halos themselves). Only the tiles or strips that intersect the
 * region are decoded; decoded blocks of the tile rows the region spans are kept until a region
 * no longer spans them, so reading the image block by block in raster order (with or without
 * overlap) decodes each tile about once. A corrupt or truncated tile fails this read
 * (GPUSEG_FORMAT, naming the file, page and tile); the reader stays usable. */
GPUSEG_API gpuseg_status gpuseg_image_region_read(gpuseg_image_region_reader *r, uint32_t page,
                                                  uint32_t x, uint32_t y, uint32_t w, uint32_t h,
                                                  gpuseg_image *out);

/* Counters for tests and measurements: blocks (tiles or strips, per plane) decoded so far and
 * bytes the block cache holds now. Either pointer may be NULL. */
GPUSEG_API void gpuseg_image_region_stats(const gpuseg_image_region_reader *r, uint64_t *decoded,
                                          size_t *cache_bytes);

/* Closes the file and frees the reader. Accepts NULL. */
GPUSEG_API void gpuseg_image_region_close(gpuseg_image_region_reader *r);

/* --- tiled BigTIFF label writer ----------------------------------------------------------- */

/* A label image being written block by block. */
typedef struct gpuseg_labels_tiff gpuseg_labels_tiff;

/* Default tile side of gpuseg_labels_tiff_open (tile = 0). */
#define GPUSEG_LABELS_TIFF_TILE 512u

/* Starts a width x height label file (one page, one channel) at path: a tiled BigTIFF of dtype
 * U16 or U32 (the caller chooses up front; a blockwise run that cannot know its mask count
 * writes U32), tiles of tile x tile pixels (a multiple of 16, 16..4096; 0 = 512), deflate with
 * the horizontal predictor (no compression where libtiff lacks deflate). The file is written
 * to a temporary file beside path (core/afile.c's rules: symlinks and special files refused
 * unless flags has GPUSEG_WRITE_ALLOW_SPECIAL, stale temporaries of killed writers removed) and
 * appears only on a successful commit; a process killed before that leaves no partial target.
 * Width and height must be within GPUSEG_MAX_IMAGE_SIDE and GPUSEG_MAX_IMAGE_PIXELS. */
GPUSEG_API gpuseg_status gpuseg_labels_tiff_open(const char *path, uint32_t width, uint32_t height,
                                                 gpuseg_dtype dtype, uint32_t tile, unsigned flags,
                                                 gpuseg_labels_tiff **out);

/* Writes the w x h labels at (x, y): row-major, w samples per row, of the writer's dtype (the
 * caller keeps ownership). x and y are multiples of the tile size; w and h are multiples of it
 * or reach the right / bottom edge. Blocks may come in any order; each tile is written exactly
 * once (a second write is GPUSEG_INVALID_ARGUMENT and changes nothing). Memory: one tile.
 * After a failed write (disk full: GPUSEG_IO "disk full") only gpuseg_labels_tiff_abort is
 * useful; commit refuses. */
GPUSEG_API gpuseg_status gpuseg_labels_tiff_write_block(gpuseg_labels_tiff *w, uint32_t x,
                                                        uint32_t y, uint32_t width, uint32_t height,
                                                        const void *labels);

/* Finishes the file (directory, fsync) and renames it over path. Every tile must have been
 * written: otherwise, or after an earlier failure, nothing is published (GPUSEG_INVALID_ARGUMENT
 * naming the first missing tile, or the earlier error) and the temporary file is removed. Frees
 * the writer in every case. */
GPUSEG_API gpuseg_status gpuseg_labels_tiff_commit(gpuseg_labels_tiff *w);

/* Drops the file: the temporary file is removed, an existing target is untouched. Frees the
 * writer. Accepts NULL. */
GPUSEG_API void gpuseg_labels_tiff_abort(gpuseg_labels_tiff *w);

#ifdef __cplusplus
}
#endif
#endif
