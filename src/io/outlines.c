/* io/outlines.c: the outline pixels of a label image (Cellpose masks_to_outlines: each mask's
 * outer border, holes excluded, found by a flood fill of the space around each mask in its
 * bounding box), the quick-look picture (image as 8-bit RGB, percentile-stretched, outlines in
 * one colour) and the 8-bit PNG writer (stb_image_write into memory, then an atomic write). */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image_write.h>

#include "gpuseg/outlines.h"
#include "io/io_internal.h"

void gpuseg_outlines_params_default(gpuseg_outlines_params *p) {
    memset(p, 0, sizeof *p);
    p->color[0] = 255;
    p->stretch = 1;
}

uint32_t gpuseg__label_at(const gpuseg_image *lab, size_t i) {
    switch (lab->dtype) {
    case GPUSEG_DTYPE_U8:
        return ((const uint8_t *)lab->data)[i];
    case GPUSEG_DTYPE_U16:
        return ((const uint16_t *)lab->data)[i];
    default:
        return ((const uint32_t *)lab->data)[i];
    }
}

/* Dense ids 0..n-1 for the distinct non-zero labels, in increasing label order (id[i] =
 * UINT32_MAX for background), so that per-mask tables stay small whatever the label values.
 * *ids: malloc'd, caller frees. (Shared with io/polygons.c through io_internal.h.) */
gpuseg_status gpuseg__labels_dense_ids(const gpuseg_image *lab, size_t npix, uint32_t **ids,
                                       uint32_t *n) {
    uint32_t *id = malloc(npix * sizeof *id);
    if (!id)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "outlines: out of memory");
    uint32_t maxl = 0;
    for (size_t i = 0; i < npix; i++) {
        uint32_t v = gpuseg__label_at(lab, i);
        id[i] = v;
        if (v > maxl)
            maxl = v;
    }
    uint32_t k = 0;
    if ((uint64_t)maxl <= 4 * (uint64_t)npix + 65536) { /* a value -> id table */
        uint32_t *map = calloc((size_t)maxl + 1, sizeof *map);
        if (!map) {
            free(id);
            return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "outlines: out of memory");
        }
        for (size_t i = 0; i < npix; i++)
            map[id[i]] = 1;
        for (uint32_t v = 1; v <= maxl; v++)
            map[v] = map[v] ? ++k : 0;
        for (size_t i = 0; i < npix; i++)
            id[i] = id[i] ? map[id[i]] - 1 : UINT32_MAX;
        free(map);
    } else { /* sparse huge values: sorted distinct values, binary search */
        uint32_t *u = malloc(npix * sizeof *u);
        if (!u) {
            free(id);
            return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "outlines: out of memory");
        }
        memcpy(u, id, npix * sizeof *u);
        qsort(u, npix, sizeof *u, gpuseg__cmp_u32);
        for (size_t i = 0; i < npix; i++)
            if (u[i] && (k == 0 || u[k - 1] != u[i]))
                u[k++] = u[i];
        for (size_t i = 0; i < npix; i++) {
            if (!id[i]) {
                id[i] = UINT32_MAX;
                continue;
            }
            const uint32_t *f = bsearch(&id[i], u, k, sizeof *u, gpuseg__cmp_u32);
            id[i] = (uint32_t)(f - u);
        }
        free(u);
    }
    *ids = id;
    *n = k;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__labels_check(const char *what, const gpuseg_image *lab) {
    if (lab->channels != 1 || lab->pages != 1 ||
        (lab->dtype != GPUSEG_DTYPE_U8 && lab->dtype != GPUSEG_DTYPE_U16 &&
         lab->dtype != GPUSEG_DTYPE_U32))
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: labels must be one channel, one page of uint8/16/32", what);
    const size_t W = lab->width, H = lab->height, npix = W * H;
    if (npix == 0 || npix > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "%s: %zu x %zu labels", what, W, H);
    return GPUSEG_OK;
}

void gpuseg__mask_boxes_free(gpuseg__mask_boxes *mb) {
    free(mb->id);
    free(mb->box);
    free(mb->crop);
    free(mb->stack);
    memset(mb, 0, sizeof *mb);
}

gpuseg_status gpuseg__mask_boxes_make(const char *what, const gpuseg_image *lab,
                                      gpuseg__mask_boxes *mb) {
    memset(mb, 0, sizeof *mb);
    const size_t W = lab->width, H = lab->height;
    gpuseg_status st = gpuseg__labels_dense_ids(lab, W * H, &mb->id, &mb->n);
    if (st != GPUSEG_OK)
        return st;
    const uint32_t n = mb->n;
    uint32_t *box = mb->box = malloc((n ? n : 1) * 4 * sizeof *box); /* y0, x0, y1, x1 */
    if (!box)
        goto oom;
    for (uint32_t m = 0; m < n; m++) {
        box[4 * m] = box[4 * m + 1] = UINT32_MAX;
        box[4 * m + 2] = box[4 * m + 3] = 0;
    }
    for (size_t y = 0; y < H; y++)
        for (size_t x = 0; x < W; x++) {
            uint32_t m = mb->id[y * W + x];
            if (m == UINT32_MAX)
                continue;
            uint32_t *b = box + 4 * (size_t)m;
            b[0] = b[0] < y ? b[0] : (uint32_t)y;
            b[1] = b[1] < x ? b[1] : (uint32_t)x;
            b[2] = b[2] > y ? b[2] : (uint32_t)y;
            b[3] = b[3] > x ? b[3] : (uint32_t)x;
        }
    /* The largest padded box sizes the work buffers, allocated once. */
    size_t most = 1;
    for (uint32_t m = 0; m < n; m++) {
        size_t a =
            (size_t)(box[4 * m + 2] - box[4 * m] + 3) * (box[4 * m + 3] - box[4 * m + 1] + 3);
        most = a > most ? a : most;
    }
    mb->crop = malloc(most);
    mb->stack = malloc(most * sizeof *mb->stack);
    if (mb->crop && mb->stack)
        return GPUSEG_OK;
oom:
    gpuseg__mask_boxes_free(mb);
    return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory for %u masks", what, n);
}

void gpuseg__mask_crop(gpuseg__mask_boxes *mb, size_t W, uint32_t m, size_t *bh_out,
                       size_t *bw_out) {
    /* The mask's bounding box with a one-pixel frame (what findContours sees: the crop, with
     * everything outside it, and outside the image, as background). */
    const uint32_t *box = mb->box + 4 * (size_t)m;
    const size_t y0 = box[0], x0 = box[1], bh = box[2] - y0 + 3, bw = box[3] - x0 + 3;
    uint8_t *crop = mb->crop;
    uint32_t *stack = mb->stack;
    memset(crop, 0, bh * bw);
    for (size_t i = 1; i + 1 < bh; i++)
        for (size_t j = 1; j + 1 < bw; j++)
            crop[i * bw + j] = mb->id[(y0 + i - 1) * W + (x0 + j - 1)] == m;
    /* The outside: 4-connected background from the frame. */
    size_t top = 0;
    for (size_t j = 0; j < bw; j++) {
        crop[j] = crop[(bh - 1) * bw + j] = 2;
        stack[top++] = (uint32_t)j;
        stack[top++] = (uint32_t)((bh - 1) * bw + j);
    }
    for (size_t i = 1; i + 1 < bh; i++) {
        crop[i * bw] = crop[i * bw + bw - 1] = 2;
        stack[top++] = (uint32_t)(i * bw);
        stack[top++] = (uint32_t)(i * bw + bw - 1);
    }
    while (top) {
        size_t c = stack[--top], cy = c / bw, cx = c % bw;
        const size_t nb[4] = {c - bw, c + bw, c - 1, c + 1};
        const int ok[4] = {cy > 0, cy + 1 < bh, cx > 0, cx + 1 < bw};
        for (int k = 0; k < 4; k++)
            if (ok[k] && crop[nb[k]] == 0) {
                crop[nb[k]] = 2;
                stack[top++] = (uint32_t)nb[k];
            }
    }
    *bh_out = bh;
    *bw_out = bw;
}

gpuseg_status gpuseg_labels_outlines(const gpuseg_image *lab, uint8_t *outline) {
    gpuseg__clear_error(NULL);
    if (!lab || !outline || !lab->data)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "outlines: NULL argument");
    gpuseg_status st = gpuseg__labels_check("outlines", lab);
    if (st != GPUSEG_OK)
        return st;
    const size_t W = lab->width;
    memset(outline, 0, W * lab->height);
    gpuseg__mask_boxes mb;
    if ((st = gpuseg__mask_boxes_make("outlines", lab, &mb)) != GPUSEG_OK)
        return st;
    /* A mask pixel is on the outline when one of its 4 neighbours is outside the mask and
     * 4-connected to the frame (the space around it, not a hole). */
    for (uint32_t m = 0; m < mb.n; m++) {
        size_t bh, bw;
        gpuseg__mask_crop(&mb, W, m, &bh, &bw);
        const uint8_t *crop = mb.crop;
        const size_t y0 = mb.box[4 * m], x0 = mb.box[4 * m + 1];
        for (size_t i = 1; i + 1 < bh; i++)
            for (size_t j = 1; j + 1 < bw; j++) {
                size_t c = i * bw + j;
                if (crop[c] == 1 && (crop[c - bw] == 2 || crop[c + bw] == 2 || crop[c - 1] == 2 ||
                                     crop[c + 1] == 2))
                    outline[(y0 + i - 1) * W + (x0 + j - 1)] = 1;
            }
    }
    gpuseg__mask_boxes_free(&mb);
    return GPUSEG_OK;
}

static double sample_at(const gpuseg_image *img, size_t i) {
    switch (img->dtype) {
    case GPUSEG_DTYPE_U8:
        return ((const uint8_t *)img->data)[i];
    case GPUSEG_DTYPE_U16:
        return ((const uint16_t *)img->data)[i];
    case GPUSEG_DTYPE_U32:
        return ((const uint32_t *)img->data)[i];
    case GPUSEG_DTYPE_I32:
        return ((const int32_t *)img->data)[i];
    default:
        return ((const float *)img->data)[i];
    }
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* 1st and 99th percentiles (numpy's linear interpolation) of the shown channels of one page,
 * over at most ~4 M samples (a regular subsample of larger images: the picture is a quick look).
 * Non-finite samples are left out. */
static gpuseg_status percentiles(const gpuseg_image *img, size_t base, size_t npix, uint32_t nch,
                                 double *lo, double *hi) {
    size_t stride = 1, want = (size_t)4 << 20;
    if (npix * nch > want)
        stride = npix * nch / want + 1;
    size_t cap = npix * nch / stride + 1, k = 0;
    float *v = malloc(cap * sizeof *v);
    if (!v)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "outlines: out of memory");
    for (size_t s = 0; s < npix * nch && k < cap; s += stride) {
        double x = sample_at(img, base + (s / nch) * img->channels + s % nch);
        if (isfinite(x))
            v[k++] = (float)x;
    }
    *lo = *hi = 0.0;
    if (k) {
        qsort(v, k, sizeof *v, cmp_float);
        double q[2] = {0.01 * (double)(k - 1), 0.99 * (double)(k - 1)};
        double r[2];
        for (int j = 0; j < 2; j++) {
            size_t f = (size_t)q[j];
            double t = q[j] - (double)f;
            r[j] = f + 1 < k ? v[f] + t * ((double)v[f + 1] - v[f]) : v[f];
        }
        *lo = r[0];
        *hi = r[1];
        if (!(*hi > *lo)) { /* a flat image: use the whole range so it is not all black */
            *lo = v[0];
            *hi = v[k - 1];
        }
    }
    free(v);
    return GPUSEG_OK;
}

gpuseg_status gpuseg_outlines_draw(const gpuseg_image *img, const gpuseg_image *lab,
                                   const gpuseg_outlines_params *params, gpuseg_image **out) {
    gpuseg__clear_error(NULL);
    if (!img || !lab || !out || !img->data)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "outlines: NULL argument");
    *out = NULL;
    gpuseg_outlines_params p;
    if (params)
        p = *params;
    else
        gpuseg_outlines_params_default(&p);
    if (img->width != lab->width || img->height != lab->height)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "outlines: the image is %u x %u, the labels %u x %u", img->width,
                            img->height, lab->width, lab->height);
    if (p.page >= img->pages)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "outlines: page %u: the image has %u",
                            p.page, img->pages);
    if (img->channels < 1 || img->channels > 4 || gpuseg_dtype_size(img->dtype) == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "outlines: image with %u channels of an unknown dtype", img->channels);
    const size_t npix = (size_t)img->width * img->height;
    const uint32_t nch = img->channels >= 3 ? 3 : 1; /* shown channels */
    const size_t base = (size_t)p.page * npix * img->channels;
    gpuseg_image *rgb = NULL;
    uint8_t *ol = malloc(npix ? npix : 1);
    if (!ol)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "outlines: out of memory");
    gpuseg_status st = gpuseg_labels_outlines(lab, ol);
    if (st != GPUSEG_OK)
        goto fail;
    if ((st = gpuseg_image_create(img->width, img->height, 3, 1, GPUSEG_DTYPE_U8, &rgb)) !=
        GPUSEG_OK)
        goto fail;
    double lo = 0.0, hi = 255.0;
    if ((p.stretch || img->dtype != GPUSEG_DTYPE_U8) &&
        (st = percentiles(img, base, npix, nch, &lo, &hi)) != GPUSEG_OK)
        goto fail;
    const double scale = hi > lo ? 255.0 / (hi - lo) : 0.0;
    uint8_t *d = rgb->data;
    for (size_t i = 0; i < npix; i++) {
        if (ol[i]) {
            memcpy(d + 3 * i, p.color, 3);
            continue;
        }
        for (uint32_t c = 0; c < 3; c++) {
            double x = sample_at(img, base + i * img->channels + (nch == 3 ? c : 0));
            double y = isfinite(x) ? (x - lo) * scale : 0.0;
            d[3 * i + c] = (uint8_t)(y <= 0.0 ? 0 : y >= 255.0 ? 255 : (int)(y + 0.5));
        }
    }
    *out = rgb;
    rgb = NULL;
fail:
    free(ol);
    gpuseg_image_free(rgb);
    return st;
}

gpuseg_status gpuseg_image_write_png(const char *path, const gpuseg_image *img) {
    return gpuseg_image_write_png_ex(path, img, 0);
}

gpuseg_status gpuseg_image_write_png_ex(const char *path, const gpuseg_image *img, unsigned flags) {
    gpuseg__clear_error(NULL);
    if (!path || !img || !img->data)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "PNG: NULL argument");
    if (img->dtype != GPUSEG_DTYPE_U8 || img->pages != 1 || img->channels < 1 || img->channels > 4)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: an 8-bit PNG takes one page of 1..4 uint8 channels (got %u "
                            "pages of %u %s)",
                            path, img->pages, img->channels, gpuseg_dtype_name(img->dtype));
    /* stb's encoder uses int sizes for the filtered rows and the zlib stream. */
    if ((size_t)img->width * img->height * img->channels > (size_t)INT_MAX / 2)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "%s: %u x %u is too large for a PNG here", path,
                            img->width, img->height);
    gpuseg__membuf m = {0};
    int ok =
        stbi_write_png_to_func(gpuseg__membuf_put, &m, (int)img->width, (int)img->height,
                               (int)img->channels, img->data, (int)(img->width * img->channels));
    if (!ok || m.failed) {
        free(m.buf);
        return gpuseg__fail(NULL, m.failed ? GPUSEG_OUT_OF_MEMORY : GPUSEG_INTERNAL,
                            "%s: PNG encoding failed", path);
    }
    gpuseg_status st = gpuseg__write_file_atomic_ex(NULL, path, flags, m.buf, m.len);
    free(m.buf);
    return st;
}
