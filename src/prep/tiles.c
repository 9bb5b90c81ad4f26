/* prep/tiles.c: Cellpose's padding (get_pad_yx), tile positions (make_tiles, with and without
 * augment), the taper mask (_taper_mask) and the device side of cutting tiles and blending the
 * network's tile outputs back (average_tiles + unaugment_tiles + crop). Geometry is host
 * integer arithmetic done exactly as Cellpose does it in float64. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prep/prep_internal.h"

void gpuseg__pad_amounts(uint32_t len, uint32_t *pad1, uint32_t *pad2) {
    const uint32_t d = (GPUSEG__PAD_DIV - len % GPUSEG__PAD_DIV) % GPUSEG__PAD_DIV;
    *pad1 = GPUSEG__PAD_DIV / 2 + d / 2;
    *pad2 = GPUSEG__PAD_DIV / 2 + d - d / 2;
}

gpuseg_status gpuseg__tile_starts(gpuseg_ctx *ctx, uint32_t len, double overlap, int augment,
                                  uint32_t *th, uint32_t *lt, uint32_t *n, uint32_t **starts) {
    *starts = NULL;
    uint64_t count;
    if (augment) {
        /* tiles of 224 with about half a tile of overlap; short images get zeros appended */
        *lt = len < GPUSEG__TILE ? GPUSEG__TILE : len;
        *th = GPUSEG__TILE;
        count = (uint64_t)ceil(2.0 * *lt / GPUSEG__TILE);
        if (count < 2)
            count = 2;
    } else {
        if (!(overlap == overlap))
            overlap = 0.1;
        overlap = overlap < 0.05 ? 0.05 : (overlap > 0.5 ? 0.5 : overlap);
        *lt = len;
        *th = len < GPUSEG__TILE ? len : GPUSEG__TILE;
        count = len <= GPUSEG__TILE ? 1 : (uint64_t)ceil((1.0 + 2 * overlap) * len / GPUSEG__TILE);
    }
    uint32_t *s = malloc(count * sizeof *s);
    if (!s)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "tiles: %llu tile starts",
                            (unsigned long long)count);
    /* np.linspace(0, lt - th, count).astype(int): k * (delta / (count - 1)) in double,
     * truncated, and the last one exactly delta. */
    const double delta = (double)(*lt - *th);
    for (uint64_t k = 0; k < count; k++)
        s[k] = count == 1 ? 0 : (uint32_t)(k * (delta / (double)(count - 1)));
    if (count > 1)
        s[count - 1] = *lt - *th;
    *n = (uint32_t)count;
    *starts = s;
    return GPUSEG_OK;
}

void gpuseg__tile_geom_free(gpuseg__tile_geom *g) {
    if (!g)
        return;
    free(g->ystart);
    free(g->xstart);
    g->ystart = g->xstart = NULL;
}

gpuseg_status gpuseg__tile_geometry(gpuseg_ctx *ctx, uint32_t ly0, uint32_t lx0, double rescale,
                                    int augment, double tile_overlap, gpuseg__tile_geom *g) {
    memset(g, 0, sizeof *g);
    if (ly0 == 0 || lx0 == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "tiles: empty image (%u x %u)", lx0, ly0);
    if (!(rescale > 0) || !isfinite(rescale))
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "tiles: rescale factor %g is not a positive number", rescale);
    const double fy = ly0 * rescale, fx = lx0 * rescale; /* int(L * r): truncation */
    if (fy > GPUSEG_MAX_IMAGE_SIDE || fx > GPUSEG_MAX_IMAGE_SIDE ||
        fy * fx > 2.0 * GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE,
                            "tiles: rescale %g makes the %u x %u image %.0f x %.0f pixels", rescale,
                            lx0, ly0, fx, fy);
    g->ly0 = ly0;
    g->lx0 = lx0;
    g->lyr = rescale == 1.0 ? ly0 : (uint32_t)fy;
    g->lxr = rescale == 1.0 ? lx0 : (uint32_t)fx;
    /* A side that int(L * r) rounds to 0 (a 1-pixel image and r < 1) keeps 1 pixel: Cellpose
     * fails there (cv2.resize to an empty size); a tiny image is valid input and gets its
     * (empty) labels instead of an error. */
    if (g->lyr == 0)
        g->lyr = 1;
    if (g->lxr == 0)
        g->lxr = 1;
    if ((uint64_t)g->lyr * g->lxr > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "tiles: %u x %u pixels after rescale %g", g->lxr,
                            g->lyr, rescale);
    gpuseg__pad_amounts(g->lyr, &g->ypad1, &g->ypad2);
    gpuseg__pad_amounts(g->lxr, &g->xpad1, &g->xpad2);
    g->ly = g->lyr + g->ypad1 + g->ypad2;
    g->lx = g->lxr + g->xpad1 + g->xpad2;
    g->augment = augment ? 1 : 0;
    gpuseg_status st;
    if ((st = gpuseg__tile_starts(ctx, g->ly, tile_overlap, augment, &g->th, &g->lyt, &g->ny,
                                  &g->ystart)) ||
        (st = gpuseg__tile_starts(ctx, g->lx, tile_overlap, augment, &g->tw, &g->lxt, &g->nx,
                                  &g->xstart))) {
        gpuseg__tile_geom_free(g);
        return st;
    }
    return GPUSEG_OK;
}

gpuseg_status gpuseg__tiles_extract(gpuseg_ctx *ctx, cl_mem x, uint32_t nch,
                                    const gpuseg__tile_geom *g, uint32_t first, uint32_t count,
                                    cl_mem tiles) {
    cl_mem ys = NULL, xs = NULL;
    cl_kernel k;
    gpuseg_status st;
    const uint64_t ntiles = (uint64_t)g->ny * g->nx;
    if (count == 0 || first >= ntiles || count > ntiles - first)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "tiles: tiles %u + %u of %llu", first,
                            count, (unsigned long long)ntiles);
    const uint64_t rows = (uint64_t)count * nch * g->th;
    if (rows > UINT32_MAX)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "tiles: %llu tile rows",
                            (unsigned long long)rows);
    cl_uint nch32 = nch, lyr = g->lyr, lxr = g->lxr, yp = g->ypad1, xp = g->xpad1, th = g->th,
            tw = g->tw, f32 = first, nt = count, nx = g->nx;
    cl_int aug = g->augment;
    if ((st = gpuseg__upload(ctx, g->ystart, g->ny * sizeof(uint32_t), "tiles: starts", &ys)) ||
        (st = gpuseg__upload(ctx, g->xstart, g->nx * sizeof(uint32_t), "tiles: starts", &xs)) ||
        (st = gpuseg__kernel(ctx, "tiles", "tiles_extract", &k)) ||
        (st = gpuseg__set_args(ctx, k, 15, sizeof(cl_mem), &x, sizeof nch32, &nch32, sizeof lyr,
                               &lyr, sizeof lxr, &lxr, sizeof yp, &yp, sizeof xp, &xp, sizeof th,
                               &th, sizeof tw, &tw, sizeof f32, &f32, sizeof nt, &nt, sizeof nx,
                               &nx, sizeof(cl_mem), &ys, sizeof(cl_mem), &xs, sizeof aug, &aug,
                               sizeof(cl_mem), &tiles)))
        goto done;
    st =
        gpuseg__run(ctx, k, 3, (size_t[]){g->tw, g->th, (size_t)count * nch}, (size_t[]){32, 4, 1});
done:
    gpuseg__release(&ys);
    gpuseg__release(&xs);
    return st;
}

/* _taper_mask(th, tw) as float32: a sigmoid per axis over B = max(224, th, tw) positions,
 * 1 / (1 + exp((|k - (B-1)/2| - (B/2 - 20)) / 7.5)), outer product (in double, as numpy),
 * centre crop of th x tw. */
static float *taper_mask(uint32_t th, uint32_t tw) {
    uint32_t b = GPUSEG__TILE;
    if (th > b)
        b = th;
    if (tw > b)
        b = tw;
    double *m = malloc(b * sizeof *m);
    float *out = malloc((size_t)th * tw * sizeof *out);
    if (!m || !out) {
        free(m);
        free(out);
        return NULL;
    }
    for (uint32_t k = 0; k < b; k++) {
        const double xm = fabs((double)k - (b - 1) / 2.0);
        m[k] = 1.0 / (1.0 + exp((xm - (b / 2.0 - 20.0)) / 7.5));
    }
    const uint32_t r0 = b / 2 - th / 2, c0 = b / 2 - tw / 2;
    for (uint32_t r = 0; r < th; r++)
        for (uint32_t c = 0; c < tw; c++)
            out[(size_t)r * tw + c] = (float)(m[r0 + r] * m[c0 + c]);
    free(m);
    return out;
}

void gpuseg__blend_free(gpuseg__blend *b) {
    gpuseg__release(&b->acc);
    gpuseg__release(&b->mask);
    gpuseg__release(&b->ys);
    gpuseg__release(&b->xs);
}

gpuseg_status gpuseg__blend_begin(gpuseg_ctx *ctx, const gpuseg__tile_geom *g, uint32_t nout,
                                  gpuseg__blend *b) {
    memset(b, 0, sizeof *b);
    if (nout == 0 || nout > 4)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "blend: %u output channels (1..4)", nout);
    size_t bytes;
    if (!gpuseg__mul4_size((size_t)nout + 1, g->lyr, g->lxr, sizeof(float), &bytes))
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "blend: sums overflow");
    b->nout = nout;
    float *mask = taper_mask(g->th, g->tw);
    if (!mask)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "blend: taper mask");
    gpuseg_status st;
    float zero = 0.0f;
    cl_int err;
    if ((st = gpuseg__upload(ctx, g->ystart, g->ny * sizeof(uint32_t), "blend: starts", &b->ys)) ||
        (st = gpuseg__upload(ctx, g->xstart, g->nx * sizeof(uint32_t), "blend: starts", &b->xs)) ||
        (st = gpuseg__upload(ctx, mask, (size_t)g->th * g->tw * sizeof(float), "blend: taper",
                             &b->mask)) ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, bytes, "blend: sums", &b->acc)))
        goto fail;
    err = clEnqueueFillBuffer(ctx->queue, b->acc, &zero, sizeof zero, 0, bytes, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "blend: clEnqueueFillBuffer");
        goto fail;
    }
    free(mask);
    return GPUSEG_OK;
fail:
    free(mask);
    gpuseg__blend_free(b);
    return st;
}

gpuseg_status gpuseg__blend_add(gpuseg_ctx *ctx, gpuseg__blend *b, const gpuseg__tile_geom *g,
                                cl_mem y, uint32_t first, uint32_t count) {
    const uint64_t ntiles = (uint64_t)g->ny * g->nx;
    if (count == 0 || first >= ntiles || count > ntiles - first)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "blend: tiles %u + %u of %llu", first,
                            count, (unsigned long long)ntiles);
    cl_kernel k;
    gpuseg_status st;
    cl_uint nout = b->nout, lyr = g->lyr, lxr = g->lxr, yp = g->ypad1, xp = g->xpad1, th = g->th,
            tw = g->tw, ny = g->ny, nx = g->nx, f32 = first, c32 = count;
    cl_int aug = g->augment;
    /* Only the rows the batch's tile rows cover (tile row j spans padded rows ystart[j] ..
     * ystart[j] + th - 1, ystart increasing): a batch is a few tile rows, and a launch over the
     * whole image would read and write every pixel's sums each time. */
    const int64_t r0 = (int64_t)g->ystart[first / g->nx] - g->ypad1;
    const int64_t r1 = (int64_t)g->ystart[(first + count - 1) / g->nx] + g->th - g->ypad1;
    const cl_uint row0 = (cl_uint)(r0 < 0 ? 0 : r0);
    const size_t rows = r1 > (int64_t)row0 ? (size_t)((r1 < g->lyr ? r1 : g->lyr) - row0) : 0;
    if (rows == 0)
        return GPUSEG_OK;
    if ((st = gpuseg__kernel(ctx, "tiles", "tiles_blend_add", &k)) ||
        (st = gpuseg__set_args(ctx, k, 18, sizeof(cl_mem), &y, sizeof nout, &nout, sizeof lyr, &lyr,
                               sizeof lxr, &lxr, sizeof yp, &yp, sizeof xp, &xp, sizeof th, &th,
                               sizeof tw, &tw, sizeof ny, &ny, sizeof nx, &nx, sizeof f32, &f32,
                               sizeof c32, &c32, sizeof(cl_mem), &b->ys, sizeof(cl_mem), &b->xs,
                               sizeof aug, &aug, sizeof(cl_mem), &b->mask, sizeof(cl_mem), &b->acc,
                               sizeof row0, &row0)))
        return st;
    return gpuseg__run(ctx, k, 2, (size_t[]){g->lxr, rows}, (size_t[]){16, 8});
}

gpuseg_status gpuseg__blend_end(gpuseg_ctx *ctx, gpuseg__blend *b, const gpuseg__tile_geom *g,
                                cl_mem out) {
    cl_kernel k;
    gpuseg_status st;
    cl_uint nout = b->nout, n = g->lyr * g->lxr;
    if (!(st = gpuseg__kernel(ctx, "tiles", "tiles_blend_finish", &k)) &&
        !(st = gpuseg__set_args(ctx, k, 4, sizeof(cl_mem), &b->acc, sizeof nout, &nout, sizeof n,
                                &n, sizeof(cl_mem), &out)))
        st = gpuseg__run(ctx, k, 2, (size_t[]){n, nout}, (size_t[]){64, 1});
    gpuseg__blend_free(b);
    return st;
}

gpuseg_status gpuseg__blend_tiles(gpuseg_ctx *ctx, cl_mem y, uint32_t nout,
                                  const gpuseg__tile_geom *g, cl_mem out) {
    gpuseg__blend b;
    gpuseg_status st = gpuseg__blend_begin(ctx, g, nout, &b);
    if (st)
        return st;
    if ((st = gpuseg__blend_add(ctx, &b, g, y, 0, g->ny * g->nx))) {
        gpuseg__blend_free(&b);
        return st;
    }
    return gpuseg__blend_end(ctx, &b, g, out);
}
