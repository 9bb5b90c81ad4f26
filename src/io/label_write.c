/* io/label_write.c: gpuseg_labels_write: chooses the format from the extension, widens uint8
 * labels to uint16, and writes 16-bit PNG (stb_image_write's encoder with the header patched
 * to 16-bit grey), .npy, and raw .bin with its .json sidecar. TIFF is in tiff.c. Every file is
 * written to a temporary file in the target folder, fsync'ed and renamed. */
#include <limits.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <stb_image_write.h>

#include "io/io_internal.h"

/* ---- 16-bit greyscale PNG ---- */

void gpuseg__membuf_put(void *ctx, void *data, int size) {
    gpuseg__membuf *m = ctx;
    if (m->failed || size <= 0)
        return;
    if (m->len + (size_t)size > m->cap) {
        size_t cap = m->cap ? m->cap : 65536;
        while (cap < m->len + (size_t)size)
            cap *= 2;
        unsigned char *nb = realloc(m->buf, cap);
        if (!nb) {
            m->failed = true;
            return;
        }
        m->buf = nb;
        m->cap = cap;
    }
    memcpy(m->buf + m->len, data, (size_t)size);
    m->len += (size_t)size;
}

/* stb_image_write only writes 8-bit PNGs. PNG filters work on bytes with a filter unit of
 * ceil(bits per pixel / 8) bytes, which is 2 both for 8-bit grey+alpha and for 16-bit grey. So
 * big-endian 16-bit samples given to stb as 2-channel 8-bit pixels produce exactly the filtered,
 * compressed data of a 16-bit grey PNG; only the IHDR's bit depth (8 -> 16) and colour type
 * (4 -> 0) and its CRC differ, and we patch those. */
gpuseg_status gpuseg__png16_write(const char *path, const gpuseg_image *lab, unsigned flags) {
    if (lab->pages != 1)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: PNG holds one page, the labels have %u (write .tif or .npy)", path,
                            lab->pages);
    size_t npx = (size_t)lab->width * lab->height;
    /* stb's encoder uses int sizes for the filtered rows and the zlib stream. */
    if (npx > (size_t)INT_MAX / 4)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE,
                            "%s: %u x %u labels are too large for the PNG encoder (write .tif)",
                            path, lab->width, lab->height);
    unsigned char *be = malloc(npx * 2);
    if (!be)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    if (lab->dtype == GPUSEG_DTYPE_U32) {
        const uint32_t *s = lab->data;
        for (size_t i = 0; i < npx; i++) {
            if (s[i] > 65535) {
                free(be);
                return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                    "%s: label %u at pixel (%zu, %zu) does not fit a 16-bit PNG "
                                    "(max 65535); write .tif, .npy or .bin",
                                    path, s[i], i % lab->width, i / lab->width);
            }
            be[2 * i] = (unsigned char)(s[i] >> 8);
            be[2 * i + 1] = (unsigned char)s[i];
        }
    } else {
        const uint16_t *s = lab->data;
        for (size_t i = 0; i < npx; i++) {
            be[2 * i] = (unsigned char)(s[i] >> 8);
            be[2 * i + 1] = (unsigned char)s[i];
        }
    }
    gpuseg__membuf m = {0};
    int ok = stbi_write_png_to_func(gpuseg__membuf_put, &m, (int)lab->width, (int)lab->height, 2,
                                    be, (int)lab->width * 2);
    free(be);
    /* Signature (8), IHDR length (4) and type (4), then width, height, depth at 24, colour at
     * 25; the CRC covers type + 13 data bytes (offsets 12..28) and sits at 29. */
    if (!ok || m.failed || m.len < 33 || memcmp(m.buf + 12, "IHDR", 4) != 0 || m.buf[24] != 8 ||
        m.buf[25] != 4) {
        free(m.buf);
        return gpuseg__fail(NULL, GPUSEG_INTERNAL, "%s: PNG encoding failed", path);
    }
    m.buf[24] = 16;
    m.buf[25] = 0;
    uint32_t crc = gpuseg__crc32(0, m.buf + 12, 17);
    m.buf[29] = (unsigned char)(crc >> 24);
    m.buf[30] = (unsigned char)(crc >> 16);
    m.buf[31] = (unsigned char)(crc >> 8);
    m.buf[32] = (unsigned char)crc;
    gpuseg_status st = gpuseg__write_file_atomic_ex(NULL, path, flags, m.buf, m.len);
    free(m.buf);
    return st;
}

/* ---- .bin + .json sidecar ---- */

/* Checks json_extra with jansson's parser (one JSON object, no duplicate keys) and returns the
 * text of its members -- between the outer braces, trimmed -- in [*b, *e): the sidecar keeps
 * them exactly as the caller wrote them. */
static gpuseg_status extra_members(const char *path, const char *s, const char **b,
                                   const char **e) {
    json_error_t err;
    json_t *v = json_loads(s, JSON_REJECT_DUPLICATES, &err);
    bool object = json_is_object(v);
    json_decref(v);
    if (!v)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "%s: json_extra: line %d, column %d: %s",
                            path, err.line, err.column, err.text);
    if (!object)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: json_extra is not a JSON object ({...})", path);
    const char *p = strchr(s, '{') + 1, *end = strrchr(s, '}');
    while (p < end && strchr(" \t\n\r", *p))
        p++;
    while (end > p && strchr(" \t\n\r", end[-1]))
        end--;
    *b = p;
    *e = end;
    return GPUSEG_OK;
}

/* The sidecar's own members, {"shape":[...],"dtype":...,"byte_order":"little","order":"C"}, as
 * compact JSON text (malloc'd; NULL when out of memory). */
static char *sidecar_head(const gpuseg_image *lab) {
    json_t *shape = lab->pages > 1
                        ? json_pack("[III]", (json_int_t)lab->pages, (json_int_t)lab->height,
                                    (json_int_t)lab->width)
                        : json_pack("[II]", (json_int_t)lab->height, (json_int_t)lab->width);
    json_t *o = json_pack("{s:o,s:s,s:s,s:s}", "shape", shape, "dtype",
                          gpuseg_dtype_name(lab->dtype), "byte_order", "little", "order", "C");
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    return text;
}

static gpuseg_status write_bin(const char *path, const gpuseg_image *lab, const char *json_extra,
                               unsigned flags) {
    size_t plen = strlen(path);
    const char *mb = NULL, *me = NULL;
    gpuseg_status st;
    if (json_extra && (st = extra_members(path, json_extra, &mb, &me)) != GPUSEG_OK)
        return st;
    size_t extra = json_extra ? (size_t)(me - mb) : 0;
    char *jpath = malloc(plen + 2);
    char *head = sidecar_head(lab);
    char *json = head ? malloc(strlen(head) + extra + 4) : NULL;
    gpuseg__afile ab = {.fd = -1}, aj = {.fd = -1};
    if (!jpath || !json) {
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
        goto fail;
    }
    memcpy(jpath, path, plen - 4);
    memcpy(jpath + plen - 4, ".json", 6);
    size_t jl = strlen(head) - 1; /* without its closing brace */
    memcpy(json, head, jl);
    if (extra) {
        json[jl++] = ',';
        memcpy(json + jl, mb, extra);
        jl += extra;
    }
    json[jl++] = '}';
    json[jl++] = '\n';
    size_t bytes;
    gpuseg__image_bytes(lab, &bytes);
    /* Both files are complete and durable before either is renamed into place; the .bin goes
     * last, so a reader that sees the new .bin also finds its sidecar. */
    if ((st = gpuseg__afile_open_ex(NULL, path, flags, &ab)) != GPUSEG_OK)
        goto fail;
    if ((st = gpuseg__afile_write(&ab, lab->data, bytes)) != GPUSEG_OK ||
        (st = gpuseg__afile_finish(&ab)) != GPUSEG_OK)
        goto fail;
    if ((st = gpuseg__afile_open_ex(NULL, jpath, flags, &aj)) != GPUSEG_OK)
        goto fail;
    if ((st = gpuseg__afile_write(&aj, json, jl)) != GPUSEG_OK ||
        (st = gpuseg__afile_commit(&aj)) != GPUSEG_OK)
        goto fail;
    if ((st = gpuseg__afile_rename(&ab)) != GPUSEG_OK) {
        remove(jpath);
        goto fail;
    }
    free(jpath);
    free(head);
    free(json);
    return GPUSEG_OK;
fail:
    /* afile_abort accepts files already finished, committed or never opened. */
    gpuseg__afile_abort(&ab);
    gpuseg__afile_abort(&aj);
    free(jpath);
    free(head);
    free(json);
    return st;
}

/* ---- dispatch ---- */

static bool has_ext(const char *path, const char *ext) {
    size_t n = strlen(path), e = strlen(ext);
    return n > e && strcasecmp(path + n - e, ext) == 0;
}

gpuseg_status gpuseg_labels_write(const char *path, const gpuseg_image *labels,
                                  const char *json_extra) {
    return gpuseg_labels_write_ex(path, labels, json_extra, 0);
}

gpuseg_status gpuseg_labels_write_ex(const char *path, const gpuseg_image *labels,
                                     const char *json_extra, unsigned flags) {
    gpuseg__clear_error(NULL);
    if (!path || !labels || !labels->data)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_labels_write: NULL argument");
    gpuseg_status st = gpuseg__image_check_size(path, "label image", labels->width, labels->height,
                                                labels->channels, labels->pages);
    if (st != GPUSEG_OK)
        return st;
    if (labels->channels != 1)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: label images have one channel, not %u", path, labels->channels);
    if (labels->dtype != GPUSEG_DTYPE_U8 && labels->dtype != GPUSEG_DTYPE_U16 &&
        labels->dtype != GPUSEG_DTYPE_U32)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: labels must be uint16 or uint32 (or uint8), not %s", path,
                            gpuseg_dtype_name(labels->dtype));
    enum { TIF, PNG, NPY, BIN } fmt;
    if (has_ext(path, ".tif") || has_ext(path, ".tiff"))
        fmt = TIF;
    else if (has_ext(path, ".png"))
        fmt = PNG;
    else if (has_ext(path, ".npy"))
        fmt = NPY;
    else if (has_ext(path, ".bin"))
        fmt = BIN;
    else
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: unknown label file extension (use .tif, .tiff, .png, .npy or "
                            ".bin)",
                            path);

    /* uint8 labels are widened so that every label file is uint16 or uint32. */
    gpuseg_image wide = *labels;
    uint16_t *w16 = NULL;
    if (labels->dtype == GPUSEG_DTYPE_U8) {
        size_t n = (size_t)labels->width * labels->height * labels->pages;
        w16 = malloc(n * 2);
        if (!w16)
            return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
        const uint8_t *s = labels->data;
        for (size_t i = 0; i < n; i++)
            w16[i] = s[i];
        wide.dtype = GPUSEG_DTYPE_U16;
        wide.data = w16;
    }
    switch (fmt) {
    case TIF:
        st = gpuseg__tiff_write_labels(path, &wide, flags);
        break;
    case PNG:
        st = gpuseg__png16_write(path, &wide, flags);
        break;
    case NPY: {
        uint64_t shape[3] = {wide.pages, wide.height, wide.width};
        st = wide.pages > 1 ? gpuseg_npy_write_ex(path, wide.dtype, 3, shape, wide.data, flags)
                            : gpuseg_npy_write_ex(path, wide.dtype, 2, shape + 1, wide.data, flags);
        break;
    }
    case BIN:
        st = write_bin(path, &wide, json_extra, flags);
        break;
    }
    free(w16);
    return st;
}
