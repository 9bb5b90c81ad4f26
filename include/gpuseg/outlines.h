/* gpuseg/outlines.h: a quick-look picture of a segmentation, as Cellpose's STEM_outlines.png:
 * the image as 8-bit RGB with the outline pixels of its masks drawn in one colour, the outline
 * pixels themselves (Cellpose utils.masks_to_outlines), and an 8-bit PNG writer.
 * Host-only: no device or context is needed. See docs/segment.md. */
#ifndef GPUSEG_OUTLINES_H
#define GPUSEG_OUTLINES_H

#include "gpuseg/common.h"
#include "gpuseg/image.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the outline pixels of a label image (one channel, one page, U8, U16 or U32; 0 =
 * background): outline[y * W + x] = 1 where the pixel belongs to a mask and lies on that
 * mask's outer border, else 0. As Cellpose's masks_to_outlines (OpenCV findContours,
 * RETR_EXTERNAL, per mask): a mask pixel is on the outline when one of its 4 neighbours, or
 * the image edge, is outside the mask and connected (4-connected, through pixels not of the
 * mask) to the space around the mask; the rims of holes are not outlines. The caller allocates
 * outline (width * height bytes) and frees it. */
GPUSEG_API gpuseg_status gpuseg_labels_outlines(const gpuseg_image *labels, uint8_t *outline);

typedef struct gpuseg_outlines_params {
    uint8_t color[3]; /* outline colour; default 255, 0, 0 (pure red, as Cellpose's pictures) */
    int stretch;      /* 1 (default): every image is scaled so that its 1st..99th percentile
                       * (over the shown channels) spans 0..255, as Cellpose's normalize99 does
                       * for its picture (dim 8-bit fluorescence becomes visible); 0: 8-bit
                       * images are shown as stored (16-bit and float are always scaled) */
    uint32_t page;    /* which page of a multi-page image (0) */
} gpuseg_outlines_params;

GPUSEG_API void gpuseg_outlines_params_default(gpuseg_outlines_params *p);

/* Draws the outlines of labels (as gpuseg_labels_outlines) over image page params->page, as a
 * new 8-bit RGB image (3 channels, one page). The image gives the picture: 1 channel (grey) and
 * 2 channels (grey + alpha, or two stains: the first is shown) are replicated to grey, 3 and 4
 * (RGB, RGBA) keep their colours (alpha dropped). labels must have the image's width and
 * height. params may be NULL (defaults). The library allocates *out; the caller frees it with
 * gpuseg_image_free. Errors: GPUSEG_INVALID_ARGUMENT (sizes differ, bad page or dtype),
 * GPUSEG_OUT_OF_MEMORY. */
GPUSEG_API gpuseg_status gpuseg_outlines_draw(const gpuseg_image *image, const gpuseg_image *labels,
                                              const gpuseg_outlines_params *params,
                                              gpuseg_image **out);

/* Writes an 8-bit image (U8, one page, 1..4 channels: grey, grey + alpha, RGB, RGBA) as a PNG,
 * atomically (temporary file in the target folder, fsync, rename; nothing partial is left on
 * failure). The caller keeps ownership of img. */
GPUSEG_API gpuseg_status gpuseg_image_write_png(const char *path, const gpuseg_image *img);
/* gpuseg_image_write_png with writer flags (GPUSEG_WRITE_ALLOW_SPECIAL, gpuseg/limits.h). */
GPUSEG_API gpuseg_status gpuseg_image_write_png_ex(const char *path, const gpuseg_image *img,
                                                   unsigned flags);

/* ---- outline polygons and the files made from them (docs/io.md, "Outline polygons") ---- */

/* One outline polygon per mask, traced as Cellpose 3.1's utils.outlines_list does (OpenCV
 * findContours, RETR_EXTERNAL, CHAIN_APPROX_NONE, on each mask): the vertices are the centres of
 * the mask's outer border pixels, 8-connected, in OpenCV's order (from the mask's first pixel in
 * raster order, down the left side first: counter-clockwise on screen), every border pixel
 * (a pixel met twice on a one-pixel-wide part is listed twice), the polygon not closed (the
 * first vertex is not repeated). A mask of several 8-connected pieces gets the outline with the
 * most vertices (Cellpose's argmax); pieces inside a hole of another piece are not candidates.
 * A mask whose outline has 4 vertices or fewer gets an empty polygon, as in Cellpose. */
typedef struct gpuseg_polygons {
    uint32_t n;      /* masks (distinct non-zero labels), in increasing label order */
    uint32_t *label; /* label value of each mask [n] */
    size_t *start;   /* mask i's vertices are xy[2 * start[i]] .. xy[2 * start[i + 1] - 1]
                      * [n + 1]; start[i] == start[i + 1] for an empty polygon */
    int32_t *xy;     /* x0, y0, x1, y1, ...: pixel indices (column, row) */
} gpuseg_polygons;

/* Traces the outline polygon of every mask of a label image (one channel, one page, U8, U16 or
 * U32; 0 = background). The library allocates *out; free it with gpuseg_polygons_free.
 * Errors: GPUSEG_INVALID_ARGUMENT, GPUSEG_OUT_OF_MEMORY. */
GPUSEG_API gpuseg_status gpuseg_labels_polygons(const gpuseg_image *labels, gpuseg_polygons **out);

/* Releases polygons; accepts NULL. */
GPUSEG_API void gpuseg_polygons_free(gpuseg_polygons *p);

/* Writes Cellpose's STEM_cp_outlines.txt (io.outlines_to_text): one line per mask in label
 * order, "x0,y0,x1,y1,..." (an empty line for an empty polygon). Atomic. */
GPUSEG_API gpuseg_status gpuseg_polygons_write_txt(const char *path, const gpuseg_polygons *p);

/* Writes an ImageJ/Fiji ROI set (Cellpose's --save_rois, io.save_rois: STEM_rois.zip): a ZIP of
 * stored entries, one ImageJ .roi per non-empty polygon, in label order, as Cellpose writes them
 * through roifile's ImagejRoi.frompoints: freehand type (7), version 226, options
 * OVERLAY_LABELS | OVERLAY_BACKGROUNDS, bounds left/top = the smallest vertex, right/bottom =
 * the largest + 1, integer vertices relative to left/top. Entry names are the zero-padded label
 * ("0007.roi"; Cellpose's are random UUIDs), the ROI's name the same without ".roi". Empty
 * polygons are left out (as Cellpose does). Vertices above 60000 (ImageJ's integer range) or
 * outlines of more than 65535 vertices are GPUSEG_UNSUPPORTED. Atomic. */
GPUSEG_API gpuseg_status gpuseg_polygons_write_rois(const char *path, const gpuseg_polygons *p);

/* Writes a GeoJSON FeatureCollection for QuPath (File > Import objects): one Feature per
 * non-empty polygon, in label order, {"type": "Feature", "id": "<label>", "geometry":
 * {"type": "Polygon", "coordinates": [[[x, y], ..., [x0, y0]]]}, "properties": {"objectType":
 * "detection", "name": "<label>", "measurements": {"label": <label>}}}. The ring is closed (the
 * first vertex repeated), in the traced order (counter-clockwise on screen; QuPath and
 * shapely accept either orientation); coordinates are in QuPath's pixel space, where pixel (x, y)
 * covers [x, x + 1) x [y, y + 1): a vertex at the centre of border pixel (x, y) is (x + 0.5, y +
 * 0.5). classification (may be NULL) adds "classification": {"name": classification} to every
 * feature. Atomic. */
GPUSEG_API gpuseg_status gpuseg_polygons_write_geojson(const char *path, const gpuseg_polygons *p,
                                                       const char *classification);

/* ---- polygon files written piece by piece (a blockwise run streams them: docs/blockwise.md) */

typedef enum gpuseg_polygons_format {
    GPUSEG_POLYGONS_TXT = 1,    /* gpuseg_polygons_write_txt's file */
    GPUSEG_POLYGONS_ROIS = 2,   /* gpuseg_polygons_write_rois' */
    GPUSEG_POLYGONS_GEOJSON = 3 /* gpuseg_polygons_write_geojson's (no classification) */
} gpuseg_polygons_format;

/* A polygon file being built in a part file that survives the process: polygons are appended
 * in pieces, and the finished file is published from it. Appending pieces p1, p2, ... and
 * publishing gives the bytes the whole-file writer gives for all their polygons in that order
 * (labels increasing from piece to piece, as in a blockwise run). Memory: one piece. */
typedef struct gpuseg_polygons_part gpuseg_polygons_part;

/* Opens the part file at part_path (created with mode 0666 less the umask; a symlink is
 * refused). keep = 0: a new part (what was there is dropped); keep > 0: continues a part whose
 * first keep bytes are a length gpuseg_polygons_part_sync gave (a killed run's; bytes after them
 * are cut off). GPUSEG_FORMAT when the file is shorter than keep. */
GPUSEG_API gpuseg_status gpuseg_polygons_part_open(const char *part_path,
                                                   gpuseg_polygons_format format, uint64_t keep,
                                                   gpuseg_polygons_part **out);

/* Appends the polygons of p (the whole-file writer's checks and bytes). */
GPUSEG_API gpuseg_status gpuseg_polygons_part_append(gpuseg_polygons_part *f,
                                                     const gpuseg_polygons *p);

/* Makes what was appended durable (fsync); *length: the part's valid bytes, the keep of a later
 * gpuseg_polygons_part_open. */
GPUSEG_API gpuseg_status gpuseg_polygons_part_sync(gpuseg_polygons_part *f, uint64_t *length);

/* Writes the finished file at path atomically (temporary file, fsync, rename; flags as
 * gpuseg_labels_tiff_open's): the part's bytes and the format's end (the ZIP central directory,
 * rebuilt from the part's entries; GeoJSON's closing brackets). The part is left as it is. */
GPUSEG_API gpuseg_status gpuseg_polygons_part_publish(gpuseg_polygons_part *f, const char *path,
                                                      unsigned flags);

/* Closes the part file (it stays on disk) and frees f. Accepts NULL. */
GPUSEG_API void gpuseg_polygons_part_close(gpuseg_polygons_part *f);

#ifdef __cplusplus
}
#endif
#endif
