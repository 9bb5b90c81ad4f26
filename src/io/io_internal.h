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

#endif
