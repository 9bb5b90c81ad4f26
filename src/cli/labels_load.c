/* cli/labels_load.c: one 2-D label image into a uint32 array, from any image format of
 * gpuseg_image_read or from a raw .bin label file with its .json sidecar (the default output of
 * `gpuseg segment`; the sidecar gives shape and dtype). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "labels_load.h"

/* Prints "gpuseg: <path>: <what>" (the CLI's one-line error) and returns st. */
static gpuseg_status fail(gpuseg_status st, const char *path, const char *what) {
    cli_error("%s: %s", path, what);
    return st;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Reads the sidecar jpath of a raw label file: a JSON object with "shape": [H, W], "dtype":
 * "uint16" | "uint32" and, when present, "byte_order": "little". Errors name the sidecar and,
 * for a file that is not JSON, the line and column (jansson's parser). */
static gpuseg_status read_sidecar(const char *jpath, json_int_t *h, json_int_t *w, size_t *es) {
    json_error_t e;
    json_t *j = json_load_file(jpath, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        if (e.line < 0) { /* could not be opened or read */
            cli_error("%s: no .json sidecar beside the raw label file (%s)", jpath, e.text);
            return GPUSEG_IO;
        }
        cli_error("%s: line %d, column %d: %s", jpath, e.line, e.column, e.text);
        return GPUSEG_FORMAT;
    }
    gpuseg_status st = GPUSEG_OK;
    const char *dtype = NULL, *order = NULL;
    json_t *shape = NULL;
    if (json_unpack(j, "{s:o,s?s,s?s}", "shape", &shape, "dtype", &dtype, "byte_order", &order) !=
            0 ||
        !json_is_array(shape) || json_array_size(shape) < 2) {
        st = fail(GPUSEG_FORMAT, jpath, "sidecar has no 2-D \"shape\": [H, W]");
    } else if (json_array_size(shape) > 2) {
        st = fail(GPUSEG_UNSUPPORTED, jpath, "only 2-D label images are supported");
    } else if (json_unpack(shape, "[II]", h, w) != 0) {
        st = fail(GPUSEG_FORMAT, jpath, "sidecar has no 2-D \"shape\": [H, W]");
    } else if (!dtype || (strcmp(dtype, "uint16") != 0 && strcmp(dtype, "uint32") != 0)) {
        st = fail(GPUSEG_UNSUPPORTED, jpath, "dtype must be \"uint16\" or \"uint32\"");
    } else if (order && strcmp(order, "little") != 0) {
        st = fail(GPUSEG_UNSUPPORTED, jpath, "only little-endian data is supported");
    } else {
        *es = strcmp(dtype, "uint16") == 0 ? 2 : 4;
    }
    json_decref(j);
    return st;
}

/* The shape (h x w) and sample size (es: 2 or 4) of a raw label file from its sidecar, its size
 * checked against them. Errors printed. */
static gpuseg_status bin_header(const char *path, unsigned long *hp, unsigned long *wp,
                                size_t *esp) {
    char jpath[4096];
    size_t plen = strlen(path);
    if (plen + 2 > sizeof jpath)
        return fail(GPUSEG_INVALID_ARGUMENT, path, "path too long");
    memcpy(jpath, path, plen - 4);
    memcpy(jpath + plen - 4, ".json", 6);
    struct stat stt;
    if (stat(jpath, &stt) != 0)
        return fail(GPUSEG_IO, path, "no .json sidecar beside the raw label file");
    json_int_t jh = 0, jw = 0;
    size_t es = 0;
    gpuseg_status st = read_sidecar(jpath, &jh, &jw, &es);
    if (st != GPUSEG_OK)
        return st;
    if (jh <= 0 || jw <= 0 || jh > GPUSEG_MAX_IMAGE_SIDE || jw > GPUSEG_MAX_IMAGE_SIDE ||
        (unsigned long long)jh * (unsigned long long)jw > GPUSEG_MAX_IMAGE_PIXELS)
        return fail(GPUSEG_TOO_LARGE, jpath, "shape is empty or over the size limit");
    unsigned long h = (unsigned long)jh, w = (unsigned long)jw;
    /* The pixel limit in effect (--max-pixels, else GPUSEG_MAX_PIXELS), as the image readers
     * apply it. */
    gpuseg_limits lim;
    gpuseg_status lst = gpuseg_limits_resolve(&cli_limits, &lim);
    if (lst != GPUSEG_OK) {
        cli_fail(lst);
        return lst;
    }
    if ((unsigned long long)h * w > lim.max_pixels) {
        cli_error("%s: image is %lux%lu = %llu pixels, over the limit of %llu pixels "
                  "(--max-pixels / GPUSEG_MAX_PIXELS)",
                  path, h, w, (unsigned long long)h * w, (unsigned long long)lim.max_pixels);
        return GPUSEG_TOO_LARGE;
    }
    if (stat(path, &stt) != 0)
        return fail(GPUSEG_IO, path, "cannot open");
    if ((unsigned long long)stt.st_size != (unsigned long long)h * w * es)
        return fail(GPUSEG_FORMAT, path, "file size does not match its sidecar's shape");
    *hp = h;
    *wp = w;
    *esp = es;
    return GPUSEG_OK;
}

static gpuseg_status load_bin(const char *path, uint32_t **labels, uint32_t *H, uint32_t *W) {
    unsigned long h = 0, w = 0;
    size_t es = 0;
    gpuseg_status st = bin_header(path, &h, &w, &es);
    if (st != GPUSEG_OK)
        return st;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(GPUSEG_IO, path, "cannot open");
    size_t npix = (size_t)h * w;
    uint32_t *out = malloc(npix * sizeof *out);
    void *raw = malloc(npix * es);
    if (!out || !raw || fread(raw, es, npix, f) != npix) {
        fclose(f);
        free(out);
        free(raw);
        return fail(GPUSEG_IO, path, "cannot read the label data");
    }
    fclose(f);
    const unsigned char *b = raw;
    for (size_t i = 0; i < npix; i++)
        out[i] = es == 2 ? (uint32_t)b[2 * i] | (uint32_t)b[2 * i + 1] << 8
                         : (uint32_t)b[4 * i] | (uint32_t)b[4 * i + 1] << 8 |
                               (uint32_t)b[4 * i + 2] << 16 | (uint32_t)b[4 * i + 3] << 24;
    free(raw);
    *labels = out;
    *H = (uint32_t)h;
    *W = (uint32_t)w;
    return GPUSEG_OK;
}

bool cli_labels_is_bin(const char *path) {
    return ends_with(path, ".bin") || ends_with(path, ".BIN");
}

bool cli_labels_bin_complete(const char *path) {
    char jpath[4096];
    size_t plen = strlen(path);
    if (plen < 4 || plen + 2 > sizeof jpath)
        return false;
    memcpy(jpath, path, plen - 4);
    memcpy(jpath + plen - 4, ".json", 6);
    json_t *j = json_load_file(jpath, JSON_REJECT_DUPLICATES, NULL);
    json_int_t h = 0, w = 0;
    const char *dtype = NULL;
    bool ok = j && json_unpack(j, "{s:[II],s:s}", "shape", &h, &w, "dtype", &dtype) == 0 && h > 0 &&
              w > 0 && (strcmp(dtype, "uint16") == 0 || strcmp(dtype, "uint32") == 0);
    struct stat st;
    ok = ok && stat(path, &st) == 0 && S_ISREG(st.st_mode) &&
         (unsigned long long)st.st_size ==
             (unsigned long long)h * (unsigned long long)w * (strcmp(dtype, "uint16") ? 4 : 2);
    json_decref(j);
    return ok;
}

gpuseg_status cli_labels_bin_info(const char *path, gpuseg_image_info *info) {
    unsigned long h = 0, w = 0;
    size_t es = 0;
    gpuseg_status st = bin_header(path, &h, &w, &es);
    if (st != GPUSEG_OK)
        return st;
    memset(info, 0, sizeof *info);
    info->width = (uint32_t)w;
    info->height = (uint32_t)h;
    info->channels = 1;
    info->pages = 1;
    info->dtype = es == 2 ? GPUSEG_DTYPE_U16 : GPUSEG_DTYPE_U32;
    snprintf(info->format, sizeof info->format, "bin");
    return GPUSEG_OK;
}

gpuseg_status cli_labels_read_image(const char *path, gpuseg_image **out) {
    *out = NULL;
    if (!cli_labels_is_bin(path)) {
        gpuseg_status st = gpuseg_image_read_ex(path, &cli_limits, out);
        if (st != GPUSEG_OK)
            cli_fail(st);
        return st;
    }
    uint32_t *v = NULL, H = 0, W = 0;
    gpuseg_image_info info;
    gpuseg_status st = cli_labels_bin_info(path, &info);
    if (st == GPUSEG_OK)
        st = cli_labels_load(path, &v, &H, &W);
    if (st != GPUSEG_OK)
        return st;
    gpuseg_image *img = NULL;
    if ((st = gpuseg_image_create(W, H, 1, 1, info.dtype, &img)) != GPUSEG_OK) {
        free(v);
        cli_fail(st);
        return st;
    }
    size_t n = (size_t)W * H;
    for (size_t i = 0; i < n; i++) {
        if (info.dtype == GPUSEG_DTYPE_U16)
            ((uint16_t *)img->data)[i] = (uint16_t)v[i];
        else
            ((uint32_t *)img->data)[i] = v[i];
    }
    free(v);
    *out = img;
    return GPUSEG_OK;
}

gpuseg_status cli_labels_load(const char *path, uint32_t **labels, uint32_t *H, uint32_t *W) {
    *labels = NULL;
    if (cli_labels_is_bin(path))
        return load_bin(path, labels, H, W);
    gpuseg_image *img = NULL;
    gpuseg_status st = gpuseg_image_read_ex(path, &cli_limits, &img);
    if (st != GPUSEG_OK) {
        cli_fail(st);
        return st;
    }
    if (img->pages != 1 || img->channels != 1) {
        char what[128];
        snprintf(what, sizeof what,
                 "a label image must have one page and one channel (has %u x %u)", img->pages,
                 img->channels);
        gpuseg_image_free(img);
        return fail(GPUSEG_UNSUPPORTED, path, what);
    }
    const size_t npix = (size_t)img->width * img->height;
    uint32_t *out = malloc(npix * sizeof *out);
    if (!out) {
        gpuseg_image_free(img);
        return fail(GPUSEG_OUT_OF_MEMORY, path, "out of memory");
    }
    for (size_t i = 0; i < npix; i++) {
        switch (img->dtype) {
        case GPUSEG_DTYPE_U8:
            out[i] = ((const uint8_t *)img->data)[i];
            break;
        case GPUSEG_DTYPE_U16:
            out[i] = ((const uint16_t *)img->data)[i];
            break;
        case GPUSEG_DTYPE_U32:
            out[i] = ((const uint32_t *)img->data)[i];
            break;
        case GPUSEG_DTYPE_I32: {
            int32_t v = ((const int32_t *)img->data)[i];
            if (v < 0) {
                free(out);
                gpuseg_image_free(img);
                return fail(GPUSEG_FORMAT, path, "negative label value");
            }
            out[i] = (uint32_t)v;
            break;
        }
        default:
            free(out);
            gpuseg_image_free(img);
            return fail(GPUSEG_UNSUPPORTED, path,
                        "labels must be integers (uint8, uint16, uint32 or int32), not float32");
        }
    }
    *H = img->height;
    *W = img->width;
    *labels = out;
    gpuseg_image_free(img);
    return GPUSEG_OK;
}
