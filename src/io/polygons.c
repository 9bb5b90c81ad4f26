/* io/polygons.c: one outline polygon per mask, traced as Cellpose 3.1's utils.outlines_list
 * (OpenCV findContours RETR_EXTERNAL + CHAIN_APPROX_NONE per mask, the longest contour kept),
 * and the text file made from them (Cellpose's _cp_outlines.txt). The ROI zip and the GeoJSON
 * writers (io/rois.c, io/geojson.c) use the same polygons.
 *
 * The tracer follows the border-following rule of Suzuki & Abe (1985) as OpenCV runs it for
 * an outer border: start at the component's first pixel in raster order (its left neighbour is
 * background); look for the first mask pixel among the 8 neighbours going clockwise from the
 * left one; then, repeatedly, from the current pixel look counter-clockwise, starting just
 * after the direction back to the previous pixel, for the next mask pixel, and stop when the
 * tracer is back at the start pixel about to step to the first neighbour again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/outlines.h"
#include "io/io_internal.h"

void gpuseg_polygons_free(gpuseg_polygons *p) {
    if (!p)
        return;
    free(p->label);
    free(p->start);
    free(p->xy);
    free(p);
}

static uint32_t label_value(const gpuseg_image *lab, size_t i) {
    switch (lab->dtype) {
    case GPUSEG_DTYPE_U8:
        return ((const uint8_t *)lab->data)[i];
    case GPUSEG_DTYPE_U16:
        return ((const uint16_t *)lab->data)[i];
    default:
        return ((const uint32_t *)lab->data)[i];
    }
}

/* Chain-code directions as OpenCV numbers them: 0 = right, then counter-clockwise on screen
 * (y grows downwards): 1 = up-right, 2 = up, ..., 7 = down-right. */
static const int DX[8] = {1, 1, 0, -1, -1, -1, 0, 1};
static const int DY[8] = {0, -1, -1, -1, 0, 1, 1, 1};

typedef struct pts {
    int32_t *v; /* x, y pairs in crop coordinates */
    size_t n, cap;
} pts;

static int pts_push(pts *p, int32_t x, int32_t y) {
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 256;
        int32_t *nv = realloc(p->v, 2 * cap * sizeof *nv);
        if (!nv)
            return -1;
        p->v = nv;
        p->cap = cap;
    }
    p->v[2 * p->n] = x;
    p->v[2 * p->n + 1] = y;
    p->n++;
    return 0;
}

/* Traces the outer border of the component whose first raster pixel is cell i0 of the crop c
 * (width bw, a background frame all round; c[k] & 1 marks mask cells). Appends the vertices
 * to *out (reset first). -1: out of memory. */
static int trace(const uint8_t *c, size_t bw, size_t i0, pts *out) {
    ptrdiff_t off[8];
    for (int k = 0; k < 8; k++)
        off[k] = (ptrdiff_t)DY[k] * (ptrdiff_t)bw + DX[k];
    out->n = 0;
    const int32_t x0 = (int32_t)(i0 % bw), y0 = (int32_t)(i0 / bw);
    int s = 4; /* the left neighbour, background by construction */
    size_t i1 = i0;
    do {
        s = (s - 1) & 7;
        i1 = (size_t)((ptrdiff_t)i0 + off[s]);
    } while (!(c[i1] & 1) && s != 4);
    if (s == 4) /* a lone pixel: one vertex */
        return pts_push(out, x0, y0);
    size_t i3 = i0;
    int32_t x = x0, y = y0;
    for (;;) {
        size_t i4 = i3;
        int k;
        for (k = 1; k <= 8; k++) {
            i4 = (size_t)((ptrdiff_t)i3 + off[(s + k) & 7]);
            if (c[i4] & 1)
                break;
        }
        s = (s + k) & 7;
        if (pts_push(out, x, y) != 0)
            return -1;
        x += DX[s];
        y += DY[s];
        if (i4 == i0 && i3 == i1)
            return 0;
        i3 = i4;
        s = (s + 4) & 7;
    }
}

gpuseg_status gpuseg_labels_polygons(const gpuseg_image *lab, gpuseg_polygons **out) {
    gpuseg__clear_error(NULL);
    if (!lab || !out || !lab->data)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "polygons: NULL argument");
    *out = NULL;
    if (lab->channels != 1 || lab->pages != 1 ||
        (lab->dtype != GPUSEG_DTYPE_U8 && lab->dtype != GPUSEG_DTYPE_U16 &&
         lab->dtype != GPUSEG_DTYPE_U32))
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "polygons: labels must be one channel, one page of uint8/16/32");
    const size_t W = lab->width, H = lab->height, npix = W * H;
    if (npix == 0 || npix > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "polygons: %zu x %zu labels", W, H);
    uint32_t *id = NULL, n = 0;
    gpuseg_status st = gpuseg__labels_dense_ids(lab, npix, &id, &n);
    if (st != GPUSEG_OK)
        return st;
    gpuseg_polygons *P = calloc(1, sizeof *P);
    uint32_t *box = NULL, *stack = NULL;
    uint8_t *crop = NULL;
    pts cur = {0}, best = {0}, all = {0};
    st = GPUSEG_OUT_OF_MEMORY;
    if (!P)
        goto done;
    P->n = n;
    P->label = malloc((n ? n : 1) * sizeof *P->label);
    P->start = malloc(((size_t)n + 1) * sizeof *P->start);
    box = malloc((n ? n : 1) * 4 * sizeof *box); /* y0, x0, y1, x1 per mask */
    if (!P->label || !P->start || !box)
        goto done;
    for (uint32_t m = 0; m < n; m++) {
        box[4 * m] = box[4 * m + 1] = UINT32_MAX;
        box[4 * m + 2] = box[4 * m + 3] = 0;
    }
    for (size_t y = 0; y < H; y++)
        for (size_t x = 0; x < W; x++) {
            uint32_t m = id[y * W + x];
            if (m == UINT32_MAX)
                continue;
            uint32_t *b = box + 4 * (size_t)m;
            if (b[0] == UINT32_MAX)
                P->label[m] = label_value(lab, y * W + x);
            b[0] = b[0] < y ? b[0] : (uint32_t)y;
            b[1] = b[1] < x ? b[1] : (uint32_t)x;
            b[2] = b[2] > y ? b[2] : (uint32_t)y;
            b[3] = b[3] > x ? b[3] : (uint32_t)x;
        }
    size_t most = 1;
    for (uint32_t m = 0; m < n; m++) {
        size_t a =
            (size_t)(box[4 * m + 2] - box[4 * m] + 3) * (box[4 * m + 3] - box[4 * m + 1] + 3);
        most = a > most ? a : most;
    }
    crop = malloc(most);
    stack = malloc(most * sizeof *stack);
    if (!crop || !stack)
        goto done;
    /* crop cells: 0 background, 1 mask, 2 background connected to the frame (outside),
     * 3 mask cell already given to a component. */
    for (uint32_t m = 0; m < n; m++) {
        const size_t y0 = box[4 * m], x0 = box[4 * m + 1];
        const size_t bh = box[4 * m + 2] - y0 + 3, bw = box[4 * m + 3] - x0 + 3;
        memset(crop, 0, bh * bw);
        for (size_t i = 1; i + 1 < bh; i++)
            for (size_t j = 1; j + 1 < bw; j++)
                crop[i * bw + j] = id[(y0 + i - 1) * W + (x0 + j - 1)] == m;
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
        /* 8-connected components in raster order of their first pixel; those touching the
         * outside are RETR_EXTERNAL's contours. OpenCV lists contours in the reverse order of
         * discovery and Cellpose keeps the first longest of that list: on a tie in length the
         * component found last wins. */
        best.n = 0;
        for (size_t i = 1; i + 1 < bh; i++)
            for (size_t j = 1; j + 1 < bw; j++) {
                size_t s0 = i * bw + j;
                if (crop[s0] != 1)
                    continue;
                int external = 0;
                crop[s0] = 3;
                stack[top++] = (uint32_t)s0;
                while (top) {
                    size_t c = stack[--top];
                    external |= crop[c - bw] == 2 || crop[c + bw] == 2 || crop[c - 1] == 2 ||
                                crop[c + 1] == 2;
                    for (int k = 0; k < 8; k++) {
                        size_t q =
                            (size_t)((ptrdiff_t)c + (ptrdiff_t)DY[k] * (ptrdiff_t)bw + DX[k]);
                        if (crop[q] == 1) {
                            crop[q] = 3;
                            stack[top++] = (uint32_t)q;
                        }
                    }
                }
                if (!external)
                    continue;
                if (trace(crop, bw, s0, &cur) != 0)
                    goto done;
                if (cur.n >= best.n) {
                    pts t = best;
                    best = cur;
                    cur = t;
                }
            }
        P->start[m] = all.n;
        if (best.n > 4) /* Cellpose: outlines of 4 points or fewer are dropped */
            for (size_t k = 0; k < best.n; k++)
                if (pts_push(&all, best.v[2 * k] + (int32_t)x0 - 1,
                             best.v[2 * k + 1] + (int32_t)y0 - 1) != 0)
                    goto done;
    }
    P->start[n] = all.n;
    P->xy = all.v ? all.v : malloc(2 * sizeof *P->xy);
    all.v = NULL;
    if (!P->xy)
        goto done;
    st = GPUSEG_OK;
done:
    if (st != GPUSEG_OK) {
        gpuseg__fail(NULL, st, "polygons: out of memory for %u masks", n);
        gpuseg_polygons_free(P);
    } else {
        *out = P;
    }
    free(id);
    free(box);
    free(crop);
    free(stack);
    free(cur.v);
    free(best.v);
    free(all.v);
    return st;
}

gpuseg_status gpuseg__polygons_check(const char *path, const gpuseg_polygons *p) {
    if (!path || !p || !p->start || (p->n && !p->label) || !p->xy)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "%s: NULL polygons",
                            path ? path : "(null)");
    if (p->start[0] != 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "%s: polygons start at %zu, not 0", path,
                            p->start[0]);
    for (uint32_t i = 0; i < p->n; i++)
        if (p->start[i + 1] < p->start[i])
            return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                                "%s: polygon %u ends before it starts", path, i);
    return GPUSEG_OK;
}

gpuseg_status gpuseg__write_whole(const char *path, const void *data, size_t len) {
    gpuseg__afile af = {.fd = -1};
    gpuseg_status st = gpuseg__afile_open(path, &af);
    if (st != GPUSEG_OK)
        return st;
    if ((st = gpuseg__afile_write(&af, data, len)) != GPUSEG_OK) {
        gpuseg__afile_abort(&af);
        return st;
    }
    return gpuseg__afile_commit(&af);
}

gpuseg_status gpuseg_polygons_write_txt(const char *path, const gpuseg_polygons *p) {
    gpuseg__clear_error(NULL);
    gpuseg_status st = gpuseg__polygons_check(path, p);
    if (st != GPUSEG_OK)
        return st;
    gpuseg__membuf m = {0};
    char tmp[32];
    for (uint32_t i = 0; i < p->n && !m.failed; i++) {
        for (size_t k = p->start[i]; k < p->start[i + 1]; k++) {
            int len = snprintf(tmp, sizeof tmp, "%s%d,%d", k > p->start[i] ? "," : "",
                               (int)p->xy[2 * k], (int)p->xy[2 * k + 1]);
            gpuseg__membuf_put(&m, tmp, len);
        }
        gpuseg__membuf_put(&m, (void *)"\n", 1);
    }
    if (m.failed) {
        free(m.buf);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    st = gpuseg__write_whole(path, m.buf ? (const void *)m.buf : "", m.len);
    free(m.buf);
    return st;
}
