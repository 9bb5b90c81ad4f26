/* io/io_internal.h: what the image I/O files share: the streaming atomic file writer (temporary
 * file in the target folder, fsync, rename; in core/afile.c), image allocation without
 * zero-filling, size checks, and the per-format readers and writers that image.c dispatches to.
 * Never installed. */
#ifndef GPUSEG_IO_INTERNAL_H
#define GPUSEG_IO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/internal.h"

/* The atomic file writer (gpuseg__afile) is declared in core/internal.h (core/afile.c). */

/* Checks width/height against GPUSEG_MAX_IMAGE_SIDE and GPUSEG_MAX_IMAGE_PIXELS, channels in
 * 1..4 and pages >= 1; on failure records "<path>: <what> ..." and returns the status. */
gpuseg_status gpuseg__image_check_size(const char *path, const char *what, uint64_t width,
                                       uint64_t height, uint64_t channels, uint64_t pages);

/* Sets the pixel limit that gpuseg__image_check_size applies on this thread (0: the absolute
 * maximum) and returns the previous one; readers outside image.c's dispatch (the region reader)
 * set it around their header checks and restore it. */
uint64_t gpuseg__image_read_limit(uint64_t max_pixels);

/* Finds the format of path from its first bytes: *name is "png", "jpeg", "bmp", "gif", "pnm",
 * "tiff" or "npy". Missing, unreadable, empty and unknown files fail with the readers' one-line
 * messages. */
gpuseg_status gpuseg__image_format(const char *path, const char **name);

/* Allocates an image whose pixels are not initialised (readers fill every byte). Sizes must
 * have passed gpuseg__image_check_size. Free with gpuseg_image_free. */
gpuseg_status gpuseg__image_alloc(const char *path, uint32_t width, uint32_t height,
                                  uint32_t channels, uint32_t pages, gpuseg_dtype dtype,
                                  gpuseg_image **out);

/* Total bytes of an image's pixels (false on overflow). */
bool gpuseg__image_bytes(const gpuseg_image *img, size_t *out);

/* Per-format readers. `info` only: fill *info from the header; otherwise decode into *out. */
gpuseg_status gpuseg__stb_read(const char *path, const char *format, gpuseg_image_info *info,
                               gpuseg_image **out);
gpuseg_status gpuseg__tiff_read(const char *path, gpuseg_image_info *info, gpuseg_image **out);
gpuseg_status gpuseg__npy_read_image(const char *path, gpuseg_image_info *info, gpuseg_image **out);

/* Growable memory sink for stb_image_write's *_to_func writers (the PNG writers encode into
 * memory, then write the file atomically). Start zeroed; free(buf) after; failed = out of
 * memory. */
typedef struct gpuseg__membuf {
    unsigned char *buf;
    size_t len, cap;
    bool failed;
} gpuseg__membuf;
void gpuseg__membuf_put(void *ctx, void *data, int size);

/* Label writers behind gpuseg_labels_write: labels are U16 or U32, one channel. */
gpuseg_status gpuseg__tiff_write_labels(const char *path, const gpuseg_image *labels,
                                        unsigned flags);
gpuseg_status gpuseg__png16_write(const char *path, const gpuseg_image *labels, unsigned flags);

/* Dense ids 0..n-1 for the distinct non-zero labels of a U8/U16/U32 label image of npix pixels,
 * in increasing label order; background gets UINT32_MAX. *ids (npix entries) is malloc'd, the
 * caller frees it. (io/outlines.c) */
gpuseg_status gpuseg__labels_dense_ids(const gpuseg_image *lab, size_t npix, uint32_t **ids,
                                       uint32_t *n);

/* The label at pixel i of a U8/U16/U32 label image. (io/outlines.c) */
uint32_t gpuseg__label_at(const gpuseg_image *lab, size_t i);

/* Checks that lab is one channel, one page of uint8/16/32 and of a usable size; messages start
 * with what ("outlines", "polygons"). (io/outlines.c) */
gpuseg_status gpuseg__labels_check(const char *what, const gpuseg_image *lab);

/* The masks of a checked label image for per-mask work (outlines, polygons): dense ids, each
 * mask's bounding box, and work buffers for the largest box with a one-pixel frame. */
typedef struct gpuseg__mask_boxes {
    uint32_t *id;    /* width x height dense ids (gpuseg__labels_dense_ids) */
    uint32_t n;      /* masks */
    uint32_t *box;   /* y0, x0, y1, x1 per mask */
    uint8_t *crop;   /* gpuseg__mask_crop's cells */
    uint32_t *stack; /* as many entries as crop */
} gpuseg__mask_boxes;
/* Fills *mb (zeroed on failure; out of memory: "<what>: out of memory for N masks"). */
gpuseg_status gpuseg__mask_boxes_make(const char *what, const gpuseg_image *lab,
                                      gpuseg__mask_boxes *mb);
void gpuseg__mask_boxes_free(gpuseg__mask_boxes *mb);
/* Fills mb->crop with mask m's box and its frame, *bh x *bw cells: 1 mask, 2 background
 * 4-connected to the frame (the outside; the frame is 2), 0 other background (holes). */
void gpuseg__mask_crop(gpuseg__mask_boxes *mb, size_t W, uint32_t m, size_t *bh, size_t *bw);

/* Checks that p is a usable gpuseg_polygons (non-NULL arrays, start[] from 0 and increasing);
 * messages name path. (io/polygons.c) */
struct gpuseg_polygons;
gpuseg_status gpuseg__polygons_check(const char *path, const struct gpuseg_polygons *p);
/* Pieces of the polygon files, shared by the whole-file writers and the part files
 * (io/polygons_part.c): the text lines of p; the GeoJSON features of p ("\n" before the first
 * of the file, *first set, ",\n" before the others); the ROI ZIP entries of p at archive offset
 * base with their central directory entries (count grows), a central entry made from a local
 * header (h: its 30 bytes in, the 46 of the central entry out), and the end records. */
void gpuseg__polygons_txt_lines(const struct gpuseg_polygons *p, gpuseg__membuf *m);
void gpuseg__geojson_features(const struct gpuseg_polygons *p, const char *classification,
                              int *first, gpuseg__membuf *m);
extern const char gpuseg__geojson_head[], gpuseg__geojson_tail[];
gpuseg_status gpuseg__rois_append(const char *path, const struct gpuseg_polygons *p, uint64_t base,
                                  gpuseg__membuf *z, gpuseg__membuf *cd, uint64_t *count);
void gpuseg__rois_central(unsigned char h[46], uint32_t local);
gpuseg_status gpuseg__rois_end(const char *path, uint64_t count, uint64_t cd_off, uint64_t cd_len,
                               gpuseg__membuf *z);

#endif
