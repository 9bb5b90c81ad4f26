/* io/io_internal.h: what the image I/O files share: the streaming atomic file writer (temporary
 * file in the target folder, fsync, rename), image allocation without zero-filling, size checks,
 * and the per-format readers and writers that image.c dispatches to. Never installed. */
#ifndef GPUSEG_IO_INTERNAL_H
#define GPUSEG_IO_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/internal.h"

/* A file being written atomically. Open it with gpuseg__afile_open, write, then either
 * gpuseg__afile_commit (fsync + rename over the target) or gpuseg__afile_abort (close + remove
 * the temporary file). After either call the struct owns nothing. */
typedef struct gpuseg__afile {
    const char *path; /* target (not owned) */
    char *tmp;        /* temporary file name (owned) */
    int fd;
} gpuseg__afile;

gpuseg_status gpuseg__afile_open(const char *path, gpuseg__afile *af);
gpuseg_status gpuseg__afile_write(gpuseg__afile *af, const void *data, size_t n);
/* fsync, close and rename; on failure the temporary file is removed. */
gpuseg_status gpuseg__afile_commit(gpuseg__afile *af);
/* Like commit but without the rename: the data is durable in af->tmp, which the caller renames
 * later with gpuseg__afile_rename (used to publish two files together). */
gpuseg_status gpuseg__afile_finish(gpuseg__afile *af);
gpuseg_status gpuseg__afile_rename(gpuseg__afile *af);
void gpuseg__afile_abort(gpuseg__afile *af);

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

/* Label writers behind gpuseg_labels_write: labels are U16 or U32, one channel. */
gpuseg_status gpuseg__tiff_write_labels(const char *path, const gpuseg_image *labels);
gpuseg_status gpuseg__png16_write(const char *path, const gpuseg_image *labels);

#endif
