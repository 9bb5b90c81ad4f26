/* cli/labels_load.c: one 2-D label image into a uint32 array, from any image format of
 * gpuseg_image_read or from a raw .bin label file with its .json sidecar (the default output of
 * `gpuseg segment`; the sidecar gives shape and dtype). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/cli.h"
#include "cli/labels_load.h"

/* Prints "gpuseg: <path>: <what>" (the CLI's one-line error) and returns st. */
static gpuseg_status fail(gpuseg_status st, const char *path, const char *what) {
    cli_error("%s: %s", path, what);
    return st;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Finds `"key":` in a small JSON text and returns the text after the colon (spaces skipped). */
static const char *json_after(const char *json, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(json, pat);
    if (!p)
        return NULL;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    if (*p != ':')
        return NULL;
    p++;
    while (*p == ' ')
        p++;
    return p;
}

static gpuseg_status load_bin(const char *path, uint32_t **labels, uint32_t *H, uint32_t *W) {
    char jpath[4096];
    size_t plen = strlen(path);
    if (plen + 2 > sizeof jpath)
        return fail(GPUSEG_INVALID_ARGUMENT, path, "path too long");
    memcpy(jpath, path, plen - 4);
    memcpy(jpath + plen - 4, ".json", 6);
    FILE *f = fopen(jpath, "rb");
    if (!f)
        return fail(GPUSEG_IO, path, "no .json sidecar beside the raw label file");
    char json[4096];
    size_t n = fread(json, 1, sizeof json - 1, f);
    fclose(f);
    json[n] = 0;
    unsigned long h = 0, w = 0;
    const char *s = json_after(json, "shape");
    if (!s || sscanf(s, "[%lu ,%lu ]", &h, &w) != 2 || strchr(s, ']') == NULL)
        return fail(GPUSEG_FORMAT, jpath, "sidecar has no 2-D \"shape\": [H, W]");
    const char *se = strchr(s, ']'), *c2 = strchr(s, ',');
    if (c2 && strchr(c2 + 1, ',') && strchr(c2 + 1, ',') < se)
        return fail(GPUSEG_UNSUPPORTED, jpath, "only 2-D label images are supported");
    const char *d = json_after(json, "dtype");
    size_t es;
    if (d && strncmp(d, "\"uint16\"", 8) == 0)
        es = 2;
    else if (d && strncmp(d, "\"uint32\"", 8) == 0)
        es = 4;
    else
        return fail(GPUSEG_UNSUPPORTED, jpath, "dtype must be \"uint16\" or \"uint32\"");
    const char *bo = json_after(json, "byte_order");
    if (bo && strncmp(bo, "\"little\"", 8) != 0)
        return fail(GPUSEG_UNSUPPORTED, jpath, "only little-endian data is supported");
    if (h == 0 || w == 0 || h > GPUSEG_MAX_IMAGE_SIDE || w > GPUSEG_MAX_IMAGE_SIDE ||
        (unsigned long long)h * w > GPUSEG_MAX_IMAGE_PIXELS)
        return fail(GPUSEG_TOO_LARGE, jpath, "shape is empty or over the size limit");
    /* The pixel limit in effect (--max-pixels / GPUSEG_MAX_PIXELS), as the image readers apply. */
    gpuseg_limits lim;
    gpuseg_status lst = gpuseg_limits_resolve(NULL, &lim);
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
    struct stat stt;
    if (stat(path, &stt) != 0)
        return fail(GPUSEG_IO, path, "cannot open");
    if ((unsigned long long)stt.st_size != (unsigned long long)h * w * es)
        return fail(GPUSEG_FORMAT, path, "file size does not match its sidecar's shape");
    f = fopen(path, "rb");
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

gpuseg_status cli_labels_load(const char *path, uint32_t **labels, uint32_t *H, uint32_t *W) {
    *labels = NULL;
    if (ends_with(path, ".bin") || ends_with(path, ".BIN"))
        return load_bin(path, labels, H, W);
    gpuseg_image *img = NULL;
    gpuseg_status st = gpuseg_image_read(path, &img);
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
