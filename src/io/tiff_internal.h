/* io/tiff_internal.h: what the libtiff-based files share (io/tiff.c: whole-image reading and
 * strip label writing; io/tiff_region.c: the region reader; io/tiff_tiled.c: the tiled label
 * writer): opening with per-file message handlers and describing a page. Never installed. */
#ifndef GPUSEG_TIFF_INTERNAL_H
#define GPUSEG_TIFF_INTERNAL_H

#include <tiffio.h>

#include "io/io_internal.h"

/* libtiff's first error for one open file (one line). The handlers return "handled", so
 * nothing reaches stderr and the process-wide libtiff handlers are never changed. The struct
 * must outlive the TIFF handle (libtiff keeps a pointer to it). */
typedef struct {
    char err[256];
} tiff_msgs;

/* Opens path (fd < 0) or the descriptor fd (which TIFFClose then closes) with mode ("r", "w",
 * "w8", ...) and msgs as the error sink; NULL on failure (the reason in msgs). */
TIFF *gpuseg__tiff_open(const char *path, const char *mode, int fd, tiff_msgs *msgs);
/* The recorded libtiff error, or a placeholder when there is none. */
const char *gpuseg__tiff_why(const tiff_msgs *m);

/* What gpuseg reads of one page (IFD). */
typedef struct {
    uint32_t w, h, spp;
    uint16_t bps, fmt, planar;
    gpuseg_dtype dtype;
} page_desc;

/* Describes the current directory (page is 0-based, for messages) and checks it is readable:
 * size (gpuseg__image_check_size with the pixel limit of the read in progress), 1-4 samples,
 * supported sample type, planar configuration; asks libtiff's JPEG codec for RGB where the page
 * is YCbCr JPEG. */
gpuseg_status gpuseg__tiff_describe(const char *path, TIFF *tif, uint32_t page, page_desc *d);

#endif
