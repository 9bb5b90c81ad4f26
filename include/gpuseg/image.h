/* gpuseg/image.h: reading images (PNG, JPEG, BMP, PNM, GIF through stb_image; TIFF through
 * libtiff; NumPy .npy) into host memory, and writing label images (TIFF, 16-bit PNG, .npy, raw
 * .bin with a .json sidecar). Host-only: no device or context is needed. */
#ifndef GPUSEG_IMAGE_H
#define GPUSEG_IMAGE_H

#include "gpuseg/common.h"

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
 * (GPUSEG_TOO_LARGE). 2^30 = a 32768 x 32768 whole-slide plane. */
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

/* Reads the header of an image file. */
GPUSEG_API gpuseg_status gpuseg_image_info_read(const char *path, gpuseg_image_info *out);

/* Reads a whole image file (every page). On success *out is a new image that the caller frees
 * with gpuseg_image_free. Errors name the file and the problem (gpuseg_last_error). */
GPUSEG_API gpuseg_status gpuseg_image_read(const char *path, gpuseg_image **out);

/* Allocates a zero-filled image; the caller frees it with gpuseg_image_free. Refuses sizes over
 * the limits above (GPUSEG_TOO_LARGE) and zero sizes (GPUSEG_INVALID_ARGUMENT). */
GPUSEG_API gpuseg_status gpuseg_image_create(uint32_t width, uint32_t height, uint32_t channels,
                                             uint32_t pages, gpuseg_dtype dtype,
                                             gpuseg_image **out);

/* Releases an image and its pixels. Accepts NULL. */
GPUSEG_API void gpuseg_image_free(gpuseg_image *img);

#ifdef __cplusplus
}
#endif
#endif
