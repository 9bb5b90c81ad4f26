/* prep/prep_internal.h: Cellpose 3.1's pre-processing and tiling on the device, and the way
 * back (tile blending, resize of the output maps). The network stage calls these; nothing here
 * is public. Every device tensor is float32, planar (C x H x W), row-major, and stays on the
 * device; the host only computes geometry and small coefficient tables. See docs/prep.md. */
#ifndef GPUSEG_PREP_INTERNAL_H
#define GPUSEG_PREP_INTERNAL_H

#include "core/internal.h"

/* Cellpose's tile size (bsize) and the padding rule's divisor and margin. */
#define GPUSEG__TILE      224
#define GPUSEG__PAD_DIV   16
#define GPUSEG__CHAN_NONE (-1) /* chan value meaning Cellpose's channels=None */

typedef struct gpuseg__prep_params {
    /* Cellpose's numbering: 0 = grey (mean of all channels), 1 = red, 2 = green, 3 = blue,
     * 4 = fourth channel. GPUSEG__CHAN_NONE: channels=None (first two channels, zero-filled). */
    int chan;
    int chan2;            /* 0 = none (zero plane), 1..4 */
    int normalize;        /* 1: per-channel percentile normalisation (Cellpose default) */
    float pct_lo, pct_hi; /* its percentiles: 1 and 99 (Cellpose's normalize['percentile']) */
    int invert;           /* 1: x -> 1 - x on normalised channels (needs normalize) */
    double rescale;       /* r = diam_mean / diameter; 1.0 = no resize; sizes are trunc(L * r) */
    int augment;          /* flip test-time augmentation (224 tiles, ~50% overlap) */
    double tile_overlap;  /* 0.1; clipped to [0.05, 0.5] as make_tiles does */
    uint32_t page;        /* which page of a multi-page image */
    int no_tiles;         /* 1: gpuseg__prep_image stops before cutting tiles (out->tiles NULL) */
} gpuseg__prep_params;

/* Cellpose's defaults: chan 0, chan2 0, normalize 1, invert 0, rescale 1, augment 0,
 * tile_overlap 0.1, page 0. */
void gpuseg__prep_params_default(gpuseg__prep_params *p);

/* Tile geometry of one image (all host integers). The padded image is
 * (ly, lx) = (lyr + ypad1 + ypad2, lxr + xpad1 + xpad2); tiles are cut from the tiled extent
 * (lyt, lxt), which equals (ly, lx) except with augment, where it is at least 224 (zeros added
 * at the bottom/right). Tile t = j * nx + i (row-major, y outer) covers rows
 * ystart[j] .. ystart[j] + th - 1 and columns xstart[i] .. xstart[i] + tw - 1 of it. */
typedef struct gpuseg__tile_geom {
    uint32_t ly0, lx0; /* original image */
    uint32_t lyr, lxr; /* after the rescale */
    uint32_t ypad1, ypad2, xpad1, xpad2;
    uint32_t ly, lx;   /* padded */
    uint32_t lyt, lxt; /* tiled extent */
    uint32_t th, tw;   /* tile size (224, or the padded size when that is smaller) */
    uint32_t ny, nx;
    uint32_t *ystart; /* ny entries, malloc'd; gpuseg__tile_geom_free releases */
    uint32_t *xstart; /* nx entries */
    int augment;
} gpuseg__tile_geom;

/* Pads of one axis as Cellpose's get_pad_yx (div 16, extra 1): *pad1 = 8 + d / 2,
 * *pad2 = 8 + d - d / 2 with d = 16 * ceil(L / 16) - L. */
void gpuseg__pad_amounts(uint32_t len, uint32_t *pad1, uint32_t *pad2);

/* Tile starts of one padded axis of length len (make_tiles): *th receives the tile length,
 * *lt the tiled length, *n the count, and *starts (malloc'd, caller frees) the n starts.
 * overlap is clipped to [0.05, 0.5]; ignored with augment. */
gpuseg_status gpuseg__tile_starts(gpuseg_ctx *ctx, uint32_t len, double overlap, int augment,
                                  uint32_t *th, uint32_t *lt, uint32_t *n, uint32_t **starts);

/* Fills *g for an image of ly0 x lx0 pixels (rescale, pad, tiles). Refuses a rescale that makes
 * a side 0 or absurd (GPUSEG_INVALID_ARGUMENT / GPUSEG_TOO_LARGE). Release with
 * gpuseg__tile_geom_free. */
gpuseg_status gpuseg__tile_geometry(gpuseg_ctx *ctx, uint32_t ly0, uint32_t lx0, double rescale,
                                    int augment, double tile_overlap, gpuseg__tile_geom *g);
void gpuseg__tile_geom_free(gpuseg__tile_geom *g);

/* --- stages (each enqueues on the context's queue; nothing waits unless said) ------------- */

/* Channel selection and conversion of one page of a host image to a new device tensor
 * *out = float32 [2, H, W] (Cellpose convert_image + reshape with channels=[chan, chan2]).
 * A 1-channel image always gives [grey, 0], whatever chan/chan2 say (as Cellpose). chan or chan2
 * above the image's channel count otherwise: GPUSEG_INVALID_ARGUMENT. The caller releases *out
 * with gpuseg__release. Blocks until the upload has been read (the host image may be freed). */
gpuseg_status gpuseg__prep_channels(gpuseg_ctx *ctx, const gpuseg_image *img,
                                    const gpuseg__prep_params *p, cl_mem *out);

/* Per-channel statistics that normalisation found (read back once per image). */
typedef struct gpuseg__norm_stats {
    float lo[2], hi[2]; /* the 1st and 99th percentiles (numpy's linear rule, float32) */
    int mode[2];        /* 0: constant channel, left as is; 1: normalised; 2: p99-p1 <= 1e-3,
                           set to 0 */
    uint32_t nsample;   /* samples per channel the percentiles used (subsampled above 224^3) */
} gpuseg__norm_stats;

/* Normalises x = float32 [2, h, w] in place as Cellpose normalize_img (normalize99 per channel
 * with percentiles pct_lo and pct_hi, 0 <= pct_lo < pct_hi <= 100; optional invert). Refuses
 * NaN/Inf samples with GPUSEG_INVALID_ARGUMENT (Cellpose would carry them into the network). stats
 * may be NULL. Waits for one small read. */
gpuseg_status gpuseg__prep_normalize(gpuseg_ctx *ctx, cl_mem x, uint32_t nch, uint32_t h,
                                     uint32_t w, int invert, float pct_lo, float pct_hi,
                                     gpuseg__norm_stats *stats);

/* numpy.percentile's virtual index of pct among n float32 samples: order statistics *i0 and *i1
 * (0-based) and the float32 weight *gamma of the linear rule. */
void gpuseg__pct_index(uint64_t n, float pct, uint32_t *i0, uint32_t *i1, float *gamma);

/* normalize99's subsampling of an h x w plane: every *sy-th row and *sx-th column from 0 (both 1
 * up to 224^3 samples). */
void gpuseg__pct_subsample(uint32_t h, uint32_t w, uint32_t *sy, uint32_t *sx);

/* The normalisation step alone with known parameters: par[4c .. 4c+3] = {p_lo, p_hi, mode,
 * p_hi - p_lo} of channel c, as kernels/prep.cl's prep_finalize makes them (mode 0: left as it
 * is, 1: normalised, 2: set to 0). x = float32 [nch, h, w], in place. */
gpuseg_status gpuseg__prep_normalize_par(gpuseg_ctx *ctx, cl_mem x, uint32_t nch, uint32_t h,
                                         uint32_t w, int invert, const float par[8]);

/* Resize rules. CV: OpenCV's own float path (float32 source coordinates, exact x2 downscales
 * as 2x2 means): bit-exact with cv2.resize on 2-channel float32 images, which is what Cellpose
 * resizes going in. EXACT: coordinates in double; OpenCV takes its IPP path for 1-, 3- and
 * 4-channel float32 images (the 3 output maps going back), which agrees with this to ~1 ulp. */
typedef enum gpuseg__resize_rule {
    GPUSEG__RESIZE_CV = 0,
    GPUSEG__RESIZE_EXACT = 1
} gpuseg__resize_rule;

/* Bilinear resize (INTER_LINEAR) of src = float32 [nch, h, w] into dst = float32
 * [nch, dh, dw] (both allocated by the caller). Equal sizes copy. */
gpuseg_status gpuseg__resize(gpuseg_ctx *ctx, cl_mem src, uint32_t nch, uint32_t h, uint32_t w,
                             cl_mem dst, uint32_t dh, uint32_t dw, gpuseg__resize_rule rule);

/* Cuts tiles first .. first + count - 1 (row-major t = j * nx + i) of x = float32
 * [nch, g->lyr, g->lxr] (the resized, normalised image; padding is applied on the fly) into
 * tiles = float32 [count, nch, th, tw] (caller-allocated), flipped as augment does. Cutting a
 * batch at a time keeps only the batch on the device. */
gpuseg_status gpuseg__tiles_extract(gpuseg_ctx *ctx, cl_mem x, uint32_t nch,
                                    const gpuseg__tile_geom *g, uint32_t first, uint32_t count,
                                    cl_mem tiles);

/* The way back from the network: tile outputs (channels dY, dX, cellprob; nout <= 4) ->
 * [nout, lyr, lxr]: undo the augment flips (negating dY of y-flipped and dX of x-flipped
 * tiles), blend with the sigmoid taper (Cellpose average_tiles) and crop the padding.
 * Batch by batch: begin (allocates the sums, owned by *b), add each batch in tile order
 * (y = float32 [count, nout, th, tw] for tiles first .. first + count - 1; the sums come out the
 * same for any batching), end (writes out = float32 [nout, lyr, lxr], caller-allocated, and
 * releases *b). gpuseg__blend_free releases *b on a failure path; it accepts a zeroed or
 * released *b. */
typedef struct gpuseg__blend {
    cl_mem acc;  /* float32 [nout + 1, lyr, lxr]: weighted sums, then the weight sum */
    cl_mem mask; /* float32 [th, tw] taper */
    cl_mem ys, xs;
    uint32_t nout;
} gpuseg__blend;
gpuseg_status gpuseg__blend_begin(gpuseg_ctx *ctx, const gpuseg__tile_geom *g, uint32_t nout,
                                  gpuseg__blend *b);
gpuseg_status gpuseg__blend_add(gpuseg_ctx *ctx, gpuseg__blend *b, const gpuseg__tile_geom *g,
                                cl_mem y, uint32_t first, uint32_t count);
gpuseg_status gpuseg__blend_end(gpuseg_ctx *ctx, gpuseg__blend *b, const gpuseg__tile_geom *g,
                                cl_mem out);
void gpuseg__blend_free(gpuseg__blend *b);

/* All tiles at once: y = float32 [ny * nx, nout, th, tw] -> out = float32 [nout, lyr, lxr]. */
gpuseg_status gpuseg__blend_tiles(gpuseg_ctx *ctx, cl_mem y, uint32_t nout,
                                  const gpuseg__tile_geom *g, cl_mem out);

/* A window of a resize: dst = float32 [nch, dh, dw] receives rows dy0 .. dy0 + dh - 1 and
 * columns dx0 .. dx0 + dw - 1 of the resize of a full_h x full_w image to full_dh x full_dw
 * (gpuseg__resize's rule, same values to the bit), computed from src = float32 [nch, sh, sw]:
 * rows sy0 .. sy0 + sh - 1 and columns sx0 .. sx0 + sw - 1 of the full source, which must hold
 * every source pixel the window reads (gpuseg__resize_source gives the range). */
gpuseg_status gpuseg__resize_window(gpuseg_ctx *ctx, cl_mem src, uint32_t nch, uint32_t sy0,
                                    uint32_t sx0, uint32_t sh, uint32_t sw, uint32_t full_h,
                                    uint32_t full_w, cl_mem dst, uint32_t dy0, uint32_t dx0,
                                    uint32_t dh, uint32_t dw, uint32_t full_dh, uint32_t full_dw,
                                    gpuseg__resize_rule rule);

/* The source rows [*s0, *s1) that destination rows [d0, d1) of a resize of src -> dst pixels
 * read along one axis (vertical: vert = 1), rule as gpuseg__resize. */
gpuseg_status gpuseg__resize_source(gpuseg_ctx *ctx, uint32_t src, uint32_t dst, uint32_t d0,
                                    uint32_t d1, int vert, gpuseg__resize_rule rule, uint32_t *s0,
                                    uint32_t *s1);

/* Resizes the blended maps [nout, lyr, lxr] back to the image size [nout, ly0, lx0]
 * (caller-allocated dst) with the rule Cellpose's resize back gets. Copies when equal. */
gpuseg_status gpuseg__resize_maps(gpuseg_ctx *ctx, cl_mem maps, uint32_t nout,
                                  const gpuseg__tile_geom *g, cl_mem dst);

/* --- the whole way in --------------------------------------------------------------------- */

typedef struct gpuseg__prep_out {
    gpuseg__tile_geom geom;
    cl_mem image; /* float32 [2, lyr, lxr]: normalised and resized (before padding) */
    cl_mem tiles; /* float32 [ny * nx, 2, th, tw]: the network's input (NULL with
                     p->no_tiles: cut batches with gpuseg__tiles_extract) */
    gpuseg__norm_stats stats;
} gpuseg__prep_out;

/* Channels -> normalise (+ invert) -> resize -> pad -> tiles (all of them, unless
 * p->no_tiles). On success *out holds new device buffers and geometry that the caller releases
 * with gpuseg__prep_out_free; on failure *out is left empty. */
gpuseg_status gpuseg__prep_image(gpuseg_ctx *ctx, const gpuseg_image *img,
                                 const gpuseg__prep_params *p, gpuseg__prep_out *out);
void gpuseg__prep_out_free(gpuseg__prep_out *out);

#endif
