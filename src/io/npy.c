/* io/npy.c: NumPy .npy files: a strict parser of the header dictionary (versions 1.0, 2.0 and
 * 3.0), reading into gpuseg_npy, mapping an array onto a gpuseg_image (the shape rule documented
 * in gpuseg/image.h), and atomic writing. Only C-order little-endian arrays of the five gpuseg
 * dtypes are accepted; everything else is refused with a message naming the file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/io_internal.h"

/* Longest header accepted: numpy itself refuses headers over 10,000 bytes by default. */
#define NPY_MAX_HEADER 65536u

typedef struct {
    gpuseg_dtype dtype;
    uint32_t ndim;
    uint64_t shape[4];
    uint64_t data_offset;
} npy_header;

static void skip_ws(const char **p, const char *end) {
    while (*p < end && (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r'))
        (*p)++;
}

/* Parses a Python string literal '...' or "..." (no escapes: numpy never writes them here). */
static bool parse_str(const char **p, const char *end, char *out, size_t cap) {
    if (*p >= end || (**p != '\'' && **p != '"'))
        return false;
    char q = **p;
    (*p)++;
    size_t n = 0;
    while (*p < end && **p != q) {
        if (**p == '\\' || n + 1 >= cap)
            return false;
        out[n++] = **p;
        (*p)++;
    }
    if (*p >= end)
        return false;
    (*p)++;
    out[n] = '\0';
    return true;
}

static bool parse_shape(const char **p, const char *end, npy_header *h, const char *path,
                        gpuseg_status *st) {
    if (*p >= end || **p != '(')
        return false;
    (*p)++;
    h->ndim = 0;
    for (;;) {
        skip_ws(p, end);
        if (*p < end && **p == ')') {
            (*p)++;
            return true;
        }
        if (*p >= end || **p < '0' || **p > '9')
            return false;
        uint64_t v = 0;
        while (*p < end && **p >= '0' && **p <= '9') {
            if (v > (UINT64_MAX - 9) / 10) {
                *st =
                    gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "%s: .npy shape has an absurd size", path);
                return false;
            }
            v = v * 10 + (uint64_t)(**p - '0');
            (*p)++;
        }
        if (*p < end && **p == 'L') /* Python 2 longs */
            (*p)++;
        if (h->ndim >= 4) {
            *st = gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                               "%s: .npy array has more than 4 dimensions", path);
            return false;
        }
        h->shape[h->ndim++] = v;
        skip_ws(p, end);
        if (*p < end && **p == ',')
            (*p)++;
        else if (*p < end && **p != ')')
            return false;
    }
}

static gpuseg_status parse_descr(const char *path, const char *d, gpuseg_dtype *t) {
    if (strcmp(d, "|u1") == 0 || strcmp(d, "<u1") == 0 || strcmp(d, "=u1") == 0)
        *t = GPUSEG_DTYPE_U8;
    else if (strcmp(d, "<u2") == 0)
        *t = GPUSEG_DTYPE_U16;
    else if (strcmp(d, "<u4") == 0)
        *t = GPUSEG_DTYPE_U32;
    else if (strcmp(d, "<i4") == 0)
        *t = GPUSEG_DTYPE_I32;
    else if (strcmp(d, "<f4") == 0)
        *t = GPUSEG_DTYPE_F32;
    else if (d[0] == '>')
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: .npy data is big-endian ('%s'); save it little-endian", path, d);
    else if (strchr(d, 'O'))
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: .npy holds Python objects ('%s'), not numbers", path, d);
    else
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: .npy dtype '%s' is not supported (uint8, uint16, uint32, int32, "
                            "float32 are)",
                            path, d);
    return GPUSEG_OK;
}

/* Parses the header dictionary {'descr': ..., 'fortran_order': ..., 'shape': (...), }. */
static gpuseg_status parse_dict(const char *path, const char *s, size_t len, npy_header *h) {
    const char *p = s, *end = s + len;
    gpuseg_status st = GPUSEG_FORMAT;
    bool have_descr = false, have_order = false, have_shape = false;
    char descr[32] = "";
    skip_ws(&p, end);
    if (p >= end || *p != '{')
        goto bad;
    p++;
    for (;;) {
        skip_ws(&p, end);
        if (p < end && *p == '}') {
            p++;
            break;
        }
        char key[32];
        if (!parse_str(&p, end, key, sizeof key))
            goto bad;
        skip_ws(&p, end);
        if (p >= end || *p != ':')
            goto bad;
        p++;
        skip_ws(&p, end);
        if (strcmp(key, "descr") == 0) {
            if (p < end && *p == '[')
                return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                    "%s: .npy holds a structured (record) array", path);
            if (!parse_str(&p, end, descr, sizeof descr))
                goto bad;
            have_descr = true;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (end - p >= 5 && memcmp(p, "False", 5) == 0) {
                p += 5;
            } else if (end - p >= 4 && memcmp(p, "True", 4) == 0) {
                return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                    "%s: .npy array is in Fortran order; save it in C order "
                                    "(numpy.ascontiguousarray)",
                                    path);
            } else {
                goto bad;
            }
            have_order = true;
        } else if (strcmp(key, "shape") == 0) {
            st = GPUSEG_FORMAT;
            if (!parse_shape(&p, end, h, path, &st)) {
                if (st != GPUSEG_FORMAT)
                    return st;
                goto bad;
            }
            have_shape = true;
        } else {
            goto bad;
        }
        skip_ws(&p, end);
        if (p < end && *p == ',')
            p++;
        else if (p < end && *p != '}')
            goto bad;
    }
    skip_ws(&p, end);
    if (p != end || !have_descr || !have_order || !have_shape)
        goto bad;
    return parse_descr(path, descr, &h->dtype);
bad:
    return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: malformed .npy header", path);
}

static gpuseg_status read_exact(int fd, const char *path, void *buf, size_t n, const char *what) {
    unsigned char *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t r = read(fd, p, chunk);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return gpuseg__fail(NULL, GPUSEG_IO, "%s: read failed: %s", path, strerror(errno));
        if (r == 0)
            return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: truncated %s", path, what);
        p += r;
        n -= (size_t)r;
    }
    return GPUSEG_OK;
}

/* Opens and validates the file; on success *fd is open at the start of the data and
 * *bytes is the data size (checked against the file size). */
static gpuseg_status open_npy(const char *path, npy_header *h, int *fd_out, size_t *bytes) {
    *fd_out = -1;
    memset(h, 0, sizeof *h);
    char *hdr = NULL;
    gpuseg_status st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return gpuseg__fail(NULL, errno == ENOENT ? GPUSEG_NOT_FOUND : GPUSEG_IO, "%s: %s", path,
                            strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = gpuseg__fail(NULL, GPUSEG_IO, "%s: not a regular file", path);
        goto fail;
    }
    unsigned char pre[12];
    if (sb.st_size < 10) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: too short for a .npy file (%lld bytes)", path,
                          (long long)sb.st_size);
        goto fail;
    }
    if ((st = read_exact(fd, path, pre, 10, ".npy header")) != GPUSEG_OK)
        goto fail;
    if (memcmp(pre, "\x93NUMPY", 6) != 0) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: not a .npy file (bad magic)", path);
        goto fail;
    }
    uint32_t major = pre[6], hlen, prefix;
    if (major == 1) {
        hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8;
        prefix = 10;
    } else if (major == 2 || major == 3) {
        if ((st = read_exact(fd, path, pre + 10, 2, ".npy header")) != GPUSEG_OK)
            goto fail;
        hlen = (uint32_t)pre[8] | (uint32_t)pre[9] << 8 | (uint32_t)pre[10] << 16 |
               (uint32_t)pre[11] << 24;
        prefix = 12;
    } else {
        st = gpuseg__fail(NULL, GPUSEG_UNSUPPORTED, "%s: .npy format version %u.%u not supported",
                          path, major, pre[7]);
        goto fail;
    }
    if (hlen == 0 || hlen > NPY_MAX_HEADER) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: .npy header length %u is not plausible", path,
                          hlen);
        goto fail;
    }
    hdr = malloc(hlen);
    if (!hdr) {
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
        goto fail;
    }
    if ((st = read_exact(fd, path, hdr, hlen, ".npy header")) != GPUSEG_OK)
        goto fail;
    if ((st = parse_dict(path, hdr, hlen, h)) != GPUSEG_OK)
        goto fail;
    if (h->ndim == 0) {
        st = gpuseg__fail(NULL, GPUSEG_UNSUPPORTED, "%s: .npy holds a scalar, not an array", path);
        goto fail;
    }
    uint64_t n = 1;
    for (uint32_t i = 0; i < h->ndim; i++) {
        if (h->shape[i] == 0) {
            st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: .npy array is empty (a dimension is 0)",
                              path);
            goto fail;
        }
        if (h->shape[i] > GPUSEG_NPY_MAX_ELEMENTS || h->shape[i] > GPUSEG_NPY_MAX_ELEMENTS / n) {
            st = gpuseg__fail(NULL, GPUSEG_TOO_LARGE,
                              "%s: .npy shape claims more than %llu elements", path,
                              (unsigned long long)GPUSEG_NPY_MAX_ELEMENTS);
            goto fail;
        }
        n *= h->shape[i];
    }
    for (uint32_t i = h->ndim; i < 4; i++)
        h->shape[i] = 1;
    uint64_t want = n * gpuseg_dtype_size(h->dtype); /* <= 2^34: no overflow */
    h->data_offset = (uint64_t)prefix + hlen;
    uint64_t have = (uint64_t)sb.st_size - h->data_offset;
    if ((uint64_t)sb.st_size < h->data_offset || have < want) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                          "%s: truncated .npy data: the header promises %llu bytes, the file "
                          "holds %llu",
                          path, (unsigned long long)want,
                          (unsigned long long)((uint64_t)sb.st_size < h->data_offset ? 0 : have));
        goto fail;
    }
    if (have > want) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                          "%s: .npy file has %llu bytes after the %llu bytes of data its header "
                          "describes",
                          path, (unsigned long long)(have - want), (unsigned long long)want);
        goto fail;
    }
    if (want > SIZE_MAX) {
        st = gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "%s: .npy data too large", path);
        goto fail;
    }
    free(hdr);
    *bytes = (size_t)want;
    *fd_out = fd;
    return GPUSEG_OK;
fail:
    free(hdr);
    close(fd);
    return st;
}

/* Reads the header and (when data != NULL) the samples into a new malloc'd buffer. */
static gpuseg_status load(const char *path, npy_header *h, void **data) {
    int fd;
    size_t bytes;
    gpuseg_status st = open_npy(path, h, &fd, &bytes);
    if (st != GPUSEG_OK)
        return st;
    if (data) {
        *data = malloc(bytes);
        if (!*data) {
            close(fd);
            return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes", path,
                                bytes);
        }
        st = read_exact(fd, path, *data, bytes, ".npy data");
        if (st != GPUSEG_OK) {
            free(*data);
            *data = NULL;
        }
    }
    close(fd);
    return st;
}

gpuseg_status gpuseg_npy_read(const char *path, gpuseg_npy **out) {
    gpuseg__clear_error(NULL);
    if (!path || !out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_npy_read: NULL argument");
    *out = NULL;
    gpuseg_npy *a = calloc(1, sizeof *a);
    if (!a)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    npy_header h;
    gpuseg_status st = load(path, &h, &a->data);
    if (st != GPUSEG_OK) {
        free(a);
        return st;
    }
    a->dtype = h.dtype;
    a->ndim = h.ndim;
    memcpy(a->shape, h.shape, sizeof a->shape);
    *out = a;
    return GPUSEG_OK;
}

void gpuseg_npy_free(gpuseg_npy *arr) {
    if (!arr)
        return;
    free(arr->data);
    free(arr);
}

/* The shape rule of gpuseg/image.h: (H,W); (H,W,C) when C <= 4 and H > 4, else (P,H,W);
 * (P,H,W,C) with C <= 4. */
static gpuseg_status map_shape(const char *path, const npy_header *h, uint64_t dims[4]) {
    uint64_t P = 1, H, W, C = 1;
    switch (h->ndim) {
    case 2:
        H = h->shape[0];
        W = h->shape[1];
        break;
    case 3:
        if (h->shape[2] <= 4 && h->shape[0] > 4) {
            H = h->shape[0];
            W = h->shape[1];
            C = h->shape[2];
        } else {
            P = h->shape[0];
            H = h->shape[1];
            W = h->shape[2];
        }
        break;
    case 4:
        P = h->shape[0];
        H = h->shape[1];
        W = h->shape[2];
        C = h->shape[3];
        break;
    default:
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: a %u-dimensional .npy array is not an image (2 to 4 dimensions "
                            "are)",
                            path, h->ndim);
    }
    if (C > 4)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: .npy image has %llu channels on its last axis (1 to 4 supported)",
                            path, (unsigned long long)C);
    gpuseg_status st = gpuseg__image_check_size(path, ".npy image", W, H, C, P);
    if (st != GPUSEG_OK)
        return st;
    dims[0] = P;
    dims[1] = H;
    dims[2] = W;
    dims[3] = C;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__npy_read_image(const char *path, gpuseg_image_info *info,
                                     gpuseg_image **out) {
    npy_header h;
    uint64_t d[4] = {0, 0, 0, 0}; /* set by map_shape; zeroed for -O3 maybe-uninitialized */
    gpuseg_status st;
    if (info) {
        if ((st = load(path, &h, NULL)) != GPUSEG_OK || (st = map_shape(path, &h, d)) != GPUSEG_OK)
            return st;
        info->pages = (uint32_t)d[0];
        info->height = (uint32_t)d[1];
        info->width = (uint32_t)d[2];
        info->channels = (uint32_t)d[3];
        info->dtype = h.dtype;
        return GPUSEG_OK;
    }
    /* Check the shape before reading the data so that a non-image array costs no allocation. */
    if ((st = load(path, &h, NULL)) != GPUSEG_OK || (st = map_shape(path, &h, d)) != GPUSEG_OK)
        return st;
    gpuseg_image *img = calloc(1, sizeof *img);
    if (!img)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    if ((st = load(path, &h, &img->data)) != GPUSEG_OK ||
        (st = map_shape(path, &h, d)) != GPUSEG_OK) {
        /* The file changed between the two opens. */
        gpuseg_image_free(img);
        return st;
    }
    img->pages = (uint32_t)d[0];
    img->height = (uint32_t)d[1];
    img->width = (uint32_t)d[2];
    img->channels = (uint32_t)d[3];
    img->dtype = h.dtype;
    *out = img;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_npy_write(const char *path, gpuseg_dtype dtype, uint32_t ndim,
                               const uint64_t *shape, const void *data) {
    return gpuseg_npy_write_ex(path, dtype, ndim, shape, data, 0);
}

gpuseg_status gpuseg_npy_write_ex(const char *path, gpuseg_dtype dtype, uint32_t ndim,
                                  const uint64_t *shape, const void *data, unsigned flags) {
    gpuseg__clear_error(NULL);
    if (!path || !shape || !data)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_npy_write: NULL argument");
    static const char *const descr[] = {"", "|u1", "<u2", "<u4", "<i4", "<f4"};
    if (gpuseg_dtype_size(dtype) == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "%s: unknown dtype %d", path,
                            (int)dtype);
    if (ndim < 1 || ndim > 4)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: .npy arrays of %u dimensions not supported (1 to 4 are)", path,
                            ndim);
    uint64_t n = 1;
    char shp[128];
    size_t sl = 0;
    sl += (size_t)snprintf(shp + sl, sizeof shp - sl, "(");
    for (uint32_t i = 0; i < ndim; i++) {
        if (shape[i] == 0 || shape[i] > GPUSEG_NPY_MAX_ELEMENTS ||
            shape[i] > GPUSEG_NPY_MAX_ELEMENTS / n)
            return gpuseg__fail(NULL, shape[i] == 0 ? GPUSEG_INVALID_ARGUMENT : GPUSEG_TOO_LARGE,
                                "%s: .npy shape dimension %u = %llu is 0 or too large", path, i,
                                (unsigned long long)shape[i]);
        n *= shape[i];
        sl += (size_t)snprintf(shp + sl, sizeof shp - sl, "%s%llu", i ? ", " : "",
                               (unsigned long long)shape[i]);
    }
    snprintf(shp + sl, sizeof shp - sl, "%s)", ndim == 1 ? "," : "");
    uint64_t bytes64 = n * gpuseg_dtype_size(dtype);
    if (bytes64 > SIZE_MAX)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "%s: array too large", path);

    /* Version 1.0 header, padded with spaces and ended by '\n' so that the data starts at a
     * multiple of 64 bytes, as numpy writes it. */
    char dict[256];
    int dl = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': %s, }",
                      descr[dtype], shp);
    size_t total = 10 + (size_t)dl + 1;
    size_t padded = (total + 63) / 64 * 64;
    unsigned char hdr[320];
    memcpy(hdr, "\x93NUMPY\x01\x00", 8);
    size_t hlen = padded - 10;
    hdr[8] = (unsigned char)(hlen & 0xFF);
    hdr[9] = (unsigned char)(hlen >> 8);
    memcpy(hdr + 10, dict, (size_t)dl);
    memset(hdr + 10 + dl, ' ', padded - 10 - (size_t)dl - 1);
    hdr[padded - 1] = '\n';

    gpuseg__afile af;
    gpuseg_status st = gpuseg__afile_open_ex(NULL, path, flags, &af);
    if (st != GPUSEG_OK)
        return st;
    if ((st = gpuseg__afile_write(&af, hdr, padded)) != GPUSEG_OK ||
        (st = gpuseg__afile_write(&af, data, (size_t)bytes64)) != GPUSEG_OK) {
        gpuseg__afile_abort(&af);
        return st;
    }
    return gpuseg__afile_commit(&af);
}
