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
    gpuseg_status st = gpuseg__labels_check("polygons", lab);
    if (st != GPUSEG_OK)
        return st;
    const size_t W = lab->width, npix = W * lab->height;
    gpuseg__mask_boxes mb;
    if ((st = gpuseg__mask_boxes_make("polygons", lab, &mb)) != GPUSEG_OK)
        return st;
    const uint32_t n = mb.n;
    gpuseg_polygons *P = calloc(1, sizeof *P);
    pts cur = {0}, best = {0}, all = {0};
    st = GPUSEG_OUT_OF_MEMORY;
    if (!P)
        goto done;
    P->n = n;
    P->label = calloc(n ? n : 1, sizeof *P->label);
    P->start = malloc(((size_t)n + 1) * sizeof *P->start);
    if (!P->label || !P->start)
        goto done;
    for (size_t i = 0; i < npix; i++) /* mask labels are not 0: 0 is one not yet seen */
        if (mb.id[i] != UINT32_MAX && !P->label[mb.id[i]])
            P->label[mb.id[i]] = gpuseg__label_at(lab, i);
    uint8_t *crop = mb.crop;
    uint32_t *stack = mb.stack;
    /* crop cells (gpuseg__mask_crop): 0 background, 1 mask, 2 background connected to the frame
     * (outside), 3 mask cell already given to a component. */
    for (uint32_t m = 0; m < n; m++) {
        const size_t y0 = mb.box[4 * m], x0 = mb.box[4 * m + 1];
        size_t bh, bw, top = 0;
        gpuseg__mask_crop(&mb, W, m, &bh, &bw);
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
    gpuseg__mask_boxes_free(&mb);
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

void gpuseg__polygons_txt_lines(const gpuseg_polygons *p, gpuseg__membuf *m) {
    char tmp[32];
    for (uint32_t i = 0; i < p->n && !m->failed; i++) {
        for (size_t k = p->start[i]; k < p->start[i + 1]; k++) {
            int len = snprintf(tmp, sizeof tmp, "%s%d,%d", k > p->start[i] ? "," : "",
                               (int)p->xy[2 * k], (int)p->xy[2 * k + 1]);
            gpuseg__membuf_put(m, tmp, len);
        }
        gpuseg__membuf_put(m, (void *)"\n", 1);
    }
}

gpuseg_status gpuseg_polygons_write_txt(const char *path, const gpuseg_polygons *p) {
    gpuseg__clear_error(NULL);
    gpuseg_status st = gpuseg__polygons_check(path, p);
    if (st != GPUSEG_OK)
        return st;
    gpuseg__membuf m = {0};
    gpuseg__polygons_txt_lines(p, &m);
    if (m.failed) {
        free(m.buf);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    st = gpuseg__write_file_atomic(NULL, path, m.buf ? (const void *)m.buf : "", m.len);
    free(m.buf);
    return st;
}
