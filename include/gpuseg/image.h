/* gpuseg/image.h: reading images (PNG, JPEG, BMP, PNM, GIF through stb_image; TIFF through
 * libtiff; NumPy .npy) into host memory, and writing label images (TIFF, 16-bit PNG, .npy, raw
 * .bin with a .json sidecar). Host-only: no device or context is needed. */
#ifndef GPUSEG_IMAGE_H
#define GPUSEG_IMAGE_H

#include "gpuseg/common.h"
#include "gpuseg/limits.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gpuseg_dtype {
    GPUSEG_DTYPE_U8 = 1,
    GPUSEG_DTYPE_U16 = 2,
    GPUSEG_DTYPE_U32 = 3,
    GPUSEG_DTYPE_I32 = 4,
    GPUSEG_DTYPE_F32 = 5
} gpuseg_dtype;

/* Bytes per sample (0 for an unknown dtype). */
GPUSEG_API size_t gpuseg_dtype_size(gpuseg_dtype t);
/* NumPy-style name: "uint8", "uint16", "uint32", "int32", "float32" ("unknown" otherwise). */
GPUSEG_API const char *gpuseg_dtype_name(gpuseg_dtype t);

/* Images larger than this many pixels per page are refused before any allocation
 * (GPUSEG_TOO_LARGE). 2^30 = a 32768 x 32768 whole-slide plane. It is the absolute maximum;
 * readers apply the max_pixels limit of gpuseg/limits.h (GPUSEG_MAX_PIXELS), which may be
 * lower. */
#define GPUSEG_MAX_IMAGE_PIXELS (1ull << 30)
/* Longest side accepted. */
#define GPUSEG_MAX_IMAGE_SIDE (1u << 20)

/* An image in host memory: pages x height x width x channels samples of one dtype,
 * page-major, rows top to bottom, channels interleaved within a pixel. */
typedef struct gpuseg_image {
    uint32_t width;
    uint32_t height;
    uint32_t channels; /* 1..4 */
    uint32_t pages;    /* >= 1 (TIFF pages / .npy leading axis) */
    gpuseg_dtype dtype;
    void *data;
} gpuseg_image;

/* What a file holds, read from its header without decoding pixels. */
typedef struct gpuseg_image_info {
    uint32_t width;
    uint32_t height;
    uint32_t channels;
    uint32_t pages;
    gpuseg_dtype dtype;
    char format[8]; /* "png", "jpeg", "bmp", "pnm", "gif", "tiff", "npy" */
} gpuseg_image_info;

/* Format detection and the .npy mapping.
 * The format is found from the first bytes of the file (magic numbers), never from the
 * extension: PNG, JPEG, BMP, PNM (P5/P6), GIF (first frame only), TIFF (classic and BigTIFF),
 * NumPy .npy. Samples keep their stored type and channel count (grey, grey+alpha, RGB, RGBA);
 * nothing is converted to float or to RGB.
 *
 * A .npy array read as an image is mapped by its shape (C order):
 *   (H, W)          -> 1 page, 1 channel
 *   (A, B, C)       -> (H=A, W=B, channels=C) when C <= 4 and A > 4, else (pages=A, H=B, W=C);
 *                      so a float32 [3, H, W] flow array is 3 planar pages, an RGB (H, W, 3)
 *                      image is one page of 3 channels
 *   (P, H, W, C)    -> P pages of C <= 4 channels
 * Other ranks are refused; use gpuseg_npy_read for arrays that are not images. */

/* Reads the header of an image file. */
GPUSEG_API gpuseg_status gpuseg_image_info_read(const char *path, gpuseg_image_info *out);
/* gpuseg_image_info_read with explicit limits (as gpuseg_image_read_ex: only max_pixels is used;
 * a page over it is GPUSEG_TOO_LARGE). */
GPUSEG_API gpuseg_status gpuseg_image_info_read_ex(const char *path, const gpuseg_limits *limits,
                                                   gpuseg_image_info *out);

/* Reads a whole image file (every page). On success *out is a new image that the caller frees
 * with gpuseg_image_free. Errors name the file and the problem (gpuseg_last_error). A page of
 * more pixels than the max_pixels limit (GPUSEG_MAX_PIXELS, else the default) is refused with
 * GPUSEG_TOO_LARGE from the header, before the pixels are decoded. */
GPUSEG_API gpuseg_status gpuseg_image_read(const char *path, gpuseg_image **out);

/* gpuseg_image_read with explicit limits (NULL or 0 members: environment, else defaults;
 * only max_pixels is used), e.g. those of gpuseg_ctx_limits. */
GPUSEG_API gpuseg_status gpuseg_image_read_ex(const char *path, const gpuseg_limits *limits,
                                              gpuseg_image **out);

/* Allocates a zero-filled image; the caller frees it with gpuseg_image_free. Refuses sizes over
 * the limits above (GPUSEG_TOO_LARGE) and zero sizes (GPUSEG_INVALID_ARGUMENT). */
GPUSEG_API gpuseg_status gpuseg_image_create(uint32_t width, uint32_t height, uint32_t channels,
                                             uint32_t pages, gpuseg_dtype dtype,
                                             gpuseg_image **out);

/* Releases an image and its pixels. Accepts NULL. */
GPUSEG_API void gpuseg_image_free(gpuseg_image *img);

/* --- NumPy .npy arrays, without any image interpretation ----------------------------------- */

/* A C-order little-endian array of at most 4 dimensions (every dimension >= 1). */
typedef struct gpuseg_npy {
    gpuseg_dtype dtype;
    uint32_t ndim;     /* 1..4 */
    uint64_t shape[4]; /* shape[i] for i >= ndim is 1 */
    void *data;        /* shape[0] * ... * shape[ndim-1] samples */
} gpuseg_npy;

/* Most elements accepted in one .npy array (16 GiB of float32); larger arrays are refused with
 * GPUSEG_TOO_LARGE before any allocation. */
#define GPUSEG_NPY_MAX_ELEMENTS (1ull << 32)

/* Reads a .npy file (format versions 1.0, 2.0, 3.0). Accepted dtypes: '|u1' (also '<u1'),
 * '<u2', '<i4', '<u4', '<f4'. Fortran order, big-endian data, object and other dtypes are
 * refused (GPUSEG_UNSUPPORTED), and so is a file whose data is shorter or longer than its
 * header says (GPUSEG_FORMAT). On success *out is new; free it with gpuseg_npy_free. */
GPUSEG_API gpuseg_status gpuseg_npy_read(const char *path, gpuseg_npy **out);

/* Writes a .npy file (version 1.0, or 2.0 when the header needs it) holding ndim (1..4)
 * dimensions of C-order samples of dtype, little-endian. Atomic: the data goes to a temporary
 * file in the target folder, is fsync'ed and renamed over path; on failure nothing is left.
 * Output paths are checked as for gpuseg_labels_write.
 * The caller keeps ownership of data. */
GPUSEG_API gpuseg_status gpuseg_npy_write(const char *path, gpuseg_dtype dtype, uint32_t ndim,
                                          const uint64_t *shape, const void *data);
/* gpuseg_npy_write with writer flags (GPUSEG_WRITE_ALLOW_SPECIAL, gpuseg/limits.h). */
GPUSEG_API gpuseg_status gpuseg_npy_write_ex(const char *path, gpuseg_dtype dtype, uint32_t ndim,
                                             const uint64_t *shape, const void *data,
                                             unsigned flags);

/* Releases an array from gpuseg_npy_read. Accepts NULL. */
GPUSEG_API void gpuseg_npy_free(gpuseg_npy *arr);

/* --- label images ---------------------------------------------------------------------------- */

/* Writes a label image (0 = background, 1..N objects; one channel; pages >= 1) in the format
 * chosen by the extension of path (case-insensitive):
 *   .tif/.tiff  uint16 or uint32 TIFF, deflate-compressed with horizontal predictor (or
 *               uncompressed where libtiff lacks deflate), one TIFF page per image page
 *   .png        16-bit greyscale PNG; one page only; uint32 labels above 65535 are refused
 *   .npy        shape (H, W) or (P, H, W)
 *   .bin        raw little-endian C-order samples, plus a sidecar "<path without .bin>.json":
 *               {"shape":[H,W] or [P,H,W],"dtype":"uint16","byte_order":"little","order":"C",
 *               ...} followed by the members of json_extra (a JSON object text, or NULL)
 * dtype must be U16 or U32; U8 labels are widened to uint16 (so that a label file is always
 * uint16 or uint32, whatever produced it); I32 and F32 are refused. Every file is written
 * atomically (temporary file in the target folder, fsync, rename): on failure nothing partial
 * is left and an existing file is unchanged. A path that is a symlink, a FIFO, a device or a
 * directory is refused (GPUSEG_PERMISSION; a directory GPUSEG_IO) unless
 * GPUSEG_ALLOW_SPECIAL_OUTPUT=1 is set (see gpuseg_labels_write_ex); a full disk or file size
 * limit is GPUSEG_IO with "disk full" in the message. The caller keeps ownership of labels. */
GPUSEG_API gpuseg_status gpuseg_labels_write(const char *path, const gpuseg_image *labels,
                                             const char *json_extra);
/* gpuseg_labels_write with writer flags: GPUSEG_WRITE_ALLOW_SPECIAL (gpuseg/limits.h) accepts
 * symlinks (the destination is replaced) and special files (written directly). */
GPUSEG_API gpuseg_status gpuseg_labels_write_ex(const char *path, const gpuseg_image *labels,
                                                const char *json_extra, unsigned flags);

#ifdef __cplusplus
}
#endif
#endif
