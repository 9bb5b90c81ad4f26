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

#ifdef __cplusplus
}
#endif
#endif
