/* io/image.c: the host image object (create, free, dtype helpers, size limits), format
 * detection by magic bytes and the dispatch of gpuseg_image_info_read / gpuseg_image_read to the
 * stb, TIFF and .npy readers with the pixel limit in effect (gpuseg/limits.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io_internal.h"

/* .npy, .bin and the 16-bit PNG byte swap are written for little-endian hosts (x86-64, ARM64,
 * RISC-V as deployed); refuse to build elsewhere rather than corrupt data silently. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "gpuseg's image I/O assumes a little-endian host"
#endif

size_t gpuseg_dtype_size(gpuseg_dtype t) {
    switch (t) {
    case GPUSEG_DTYPE_U8:
        return 1;
    case GPUSEG_DTYPE_U16:
        return 2;
    case GPUSEG_DTYPE_U32:
    case GPUSEG_DTYPE_I32:
    case GPUSEG_DTYPE_F32:
        return 4;
    }
    return 0;
}

const char *gpuseg_dtype_name(gpuseg_dtype t) {
    switch (t) {
    case GPUSEG_DTYPE_U8:
        return "uint8";
    case GPUSEG_DTYPE_U16:
        return "uint16";
    case GPUSEG_DTYPE_U32:
        return "uint32";
    case GPUSEG_DTYPE_I32:
        return "int32";
    case GPUSEG_DTYPE_F32:
        return "float32";
    }
    return "unknown";
}

/* The pixel limit of the read in progress on this thread (0: none, i.e. the absolute maximum,
 * for images that are created or written rather than read). Set by read_any around the format
 * readers, so that every reader's size check applies the caller's limit without each of them
 * carrying it. */
static _Thread_local uint64_t read_max_pixels;

uint64_t gpuseg__image_read_limit(uint64_t max_pixels) {
    uint64_t old = read_max_pixels;
    read_max_pixels = max_pixels;
    return old;
}

gpuseg_status gpuseg__image_check_size(const char *path, const char *what, uint64_t width,
                                       uint64_t height, uint64_t channels, uint64_t pages) {
    if (width == 0 || height == 0)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: %s has an empty size %llu x %llu", path, what,
                            (unsigned long long)width, (unsigned long long)height);
    if (width > GPUSEG_MAX_IMAGE_SIDE || height > GPUSEG_MAX_IMAGE_SIDE)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE,
                            "%s: %s is %llu x %llu pixels (longest side "
                            "allowed %u)",
                            path, what, (unsigned long long)width, (unsigned long long)height,
                            GPUSEG_MAX_IMAGE_SIDE);
    /* Both sides are <= 2^20 here, so the product cannot overflow 64 bits. */
    const uint64_t limit = read_max_pixels ? read_max_pixels : GPUSEG_MAX_IMAGE_PIXELS;
    if (width * height > limit) {
        char a[32], b[32], hint[96];
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE,
                            "%s: image is %llux%llu = %spixels, over the limit of %spixels (%s)",
                            path, (unsigned long long)width, (unsigned long long)height,
                            gpuseg__fmt_count(width * height, a, sizeof a),
                            gpuseg__fmt_count(limit, b, sizeof b),
                            gpuseg__limit_hint(GPUSEG__LIMIT_PIXELS, limit, hint, sizeof hint));
    }
    if (channels < 1 || channels > 4)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED, "%s: %s has %llu channels (1 to 4 supported)",
                            path, what, (unsigned long long)channels);
    if (pages < 1 || pages > UINT32_MAX)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED, "%s: %s has %llu pages", path, what,
                            (unsigned long long)pages);
    return GPUSEG_OK;
}

bool gpuseg__image_bytes(const gpuseg_image *img, size_t *out) {
    size_t px;
    return gpuseg__mul4_size(img->width, img->height, img->channels, img->pages, &px) &&
           gpuseg__mul_size(px, gpuseg_dtype_size(img->dtype), out);
}

gpuseg_status gpuseg__image_alloc(const char *path, uint32_t width, uint32_t height,
                                  uint32_t channels, uint32_t pages, gpuseg_dtype dtype,
                                  gpuseg_image **out) {
    *out = NULL;
    gpuseg_image *img = calloc(1, sizeof *img);
    if (!img)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    img->width = width;
    img->height = height;
    img->channels = channels;
    img->pages = pages;
    img->dtype = dtype;
    size_t bytes;
    if (gpuseg_dtype_size(dtype) == 0 || !gpuseg__image_bytes(img, &bytes)) {
        free(img);
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "%s: image size overflows", path);
    }
    img->data = malloc(bytes);
    if (!img->data) {
        free(img);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes of pixels",
                            path, bytes);
    }
    *out = img;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_image_create(uint32_t width, uint32_t height, uint32_t channels,
                                  uint32_t pages, gpuseg_dtype dtype, gpuseg_image **out) {
    gpuseg__clear_error(NULL);
    if (!out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_image_create: out is NULL");
    *out = NULL;
    if (width == 0 || height == 0 || channels == 0 || pages == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_image_create: zero size %u x %u x %u channels x %u pages",
                            width, height, channels, pages);
    if (gpuseg_dtype_size(dtype) == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_image_create: unknown dtype %d",
                            (int)dtype);
    gpuseg_status st =
        gpuseg__image_check_size("gpuseg_image_create", "image", width, height, channels, pages);
    if (st != GPUSEG_OK)
        return st;
    st = gpuseg__image_alloc("gpuseg_image_create", width, height, channels, pages, dtype, out);
    if (st != GPUSEG_OK)
        return st;
    size_t bytes = 0; /* the allocation above already checked this product */
    gpuseg__image_bytes(*out, &bytes);
    memset((*out)->data, 0, bytes);
    return GPUSEG_OK;
}

void gpuseg_image_free(gpuseg_image *img) {
    if (!img)
        return;
    free(img->data);
    free(img);
}

/* ---- format detection ---- */

typedef enum { FMT_UNKNOWN, FMT_STB, FMT_TIFF, FMT_NPY } fmt_kind;

/* Opens path, refuses what is not a readable non-empty regular file, and recognises the format
 * from the first bytes. */
static gpuseg_status detect(const char *path, fmt_kind *kind, const char **name) {
    *kind = FMT_UNKNOWN;
    *name = "";
    if (!path)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "image path is NULL");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        return gpuseg__fail(NULL,
                            e == ENOENT || e == ENOTDIR ? GPUSEG_NOT_FOUND
                            : e == EACCES               ? GPUSEG_PERMISSION
                                                        : GPUSEG_IO,
                            "%s: %s", path, strerror(e));
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return gpuseg__fail(NULL, GPUSEG_IO, "%s: %s", path, strerror(e));
    }
    if (S_ISDIR(sb.st_mode)) {
        close(fd);
        return gpuseg__fail(NULL, GPUSEG_IO, "%s: is a directory, not an image file", path);
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return gpuseg__fail(NULL, GPUSEG_IO, "%s: not a regular file", path);
    }
    unsigned char m[8] = {0};
    ssize_t n;
    do {
        n = read(fd, m, sizeof m);
    } while (n < 0 && errno == EINTR);
    int e = errno;
    close(fd);
    if (n < 0)
        return gpuseg__fail(NULL, GPUSEG_IO, "%s: read failed: %s", path, strerror(e));
    if (n == 0)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: empty file", path);
    if (n >= 8 && memcmp(m, "\x89PNG\r\n\x1a\n", 8) == 0) {
        *kind = FMT_STB;
        *name = "png";
    } else if (n >= 3 && m[0] == 0xFF && m[1] == 0xD8 && m[2] == 0xFF) {
        *kind = FMT_STB;
        *name = "jpeg";
    } else if (n >= 2 && m[0] == 'B' && m[1] == 'M') {
        *kind = FMT_STB;
        *name = "bmp";
    } else if (n >= 6 && (memcmp(m, "GIF87a", 6) == 0 || memcmp(m, "GIF89a", 6) == 0)) {
        *kind = FMT_STB;
        *name = "gif";
    } else if (n >= 2 && m[0] == 'P' && (m[1] == '5' || m[1] == '6')) {
        *kind = FMT_STB;
        *name = "pnm";
    } else if (n >= 2 && m[0] == 'P' && m[1] >= '1' && m[1] <= '7') {
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: PNM type P%c is not supported (binary P5 grey and P6 colour are)",
                            path, m[1]);
    } else if (n >= 4 &&
               ((m[0] == 'I' && m[1] == 'I' && (m[2] == 42 || m[2] == 43) && m[3] == 0) ||
                (m[0] == 'M' && m[1] == 'M' && m[2] == 0 && (m[3] == 42 || m[3] == 43)))) {
        *kind = FMT_TIFF;
        *name = "tiff";
    } else if (n >= 6 && memcmp(m, "\x93NUMPY", 6) == 0) {
        *kind = FMT_NPY;
        *name = "npy";
    } else {
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: unrecognised file format (not PNG, JPEG, BMP, PNM, GIF, TIFF or "
                            "NumPy .npy)",
                            path);
    }
    return GPUSEG_OK;
}

static gpuseg_status read_any(const char *path, const gpuseg_limits *limits,
                              gpuseg_image_info *info, gpuseg_image **out) {
    gpuseg_limits lim;
    gpuseg_status st = gpuseg_limits_resolve(limits, &lim);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(NULL, st, "%s", path ? path : "image");
    fmt_kind kind;
    const char *name;
    st = detect(path, &kind, &name);
    if (st != GPUSEG_OK)
        return st;
    if (info) {
        memset(info, 0, sizeof *info);
        snprintf(info->format, sizeof info->format, "%s", name);
    }
    read_max_pixels = lim.max_pixels;
    switch (kind) {
    case FMT_STB:
        st = gpuseg__stb_read(path, name, info, out);
        break;
    case FMT_TIFF:
        st = gpuseg__tiff_read(path, info, out);
        break;
    case FMT_NPY:
        st = gpuseg__npy_read_image(path, info, out);
        break;
    case FMT_UNKNOWN:
        st = gpuseg__fail(NULL, GPUSEG_INTERNAL, "%s: format dispatch failed", path);
        break;
    }
    read_max_pixels = 0;
    return st;
}

gpuseg_status gpuseg__image_format(const char *path, const char **name) {
    fmt_kind kind;
    return detect(path, &kind, name);
}

gpuseg_status gpuseg_image_info_read(const char *path, gpuseg_image_info *out) {
    return gpuseg_image_info_read_ex(path, NULL, out);
}

gpuseg_status gpuseg_image_info_read_ex(const char *path, const gpuseg_limits *limits,
                                        gpuseg_image_info *out) {
    gpuseg__clear_error(NULL);
    if (!out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_image_info_read: out is NULL");
    memset(out, 0, sizeof *out);
    return read_any(path, limits, out, NULL);
}

gpuseg_status gpuseg_image_read(const char *path, gpuseg_image **out) {
    gpuseg__clear_error(NULL);
    if (!out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_image_read: out is NULL");
    *out = NULL;
    return read_any(path, NULL, NULL, out);
}

gpuseg_status gpuseg_image_read_ex(const char *path, const gpuseg_limits *limits,
                                   gpuseg_image **out) {
    gpuseg__clear_error(NULL);
    if (!out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_image_read_ex: out is NULL");
    *out = NULL;
    return read_any(path, limits, NULL, out);
}
