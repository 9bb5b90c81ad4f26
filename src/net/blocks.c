/* net/blocks.c: gpuseg_segment block by block (docs/blockwise.md). What is global in Cellpose
 * stays global: the percentiles come from an exact two-pass selection over all blocks, and each
 * block computes its window of the whole image's resize, tile grid, blend and resize back, so its
 * flows are the whole-image run's to the bit. Flows -> masks runs on the block plus halo with the
 * image's coordinates; a mask is kept where it lies inside that window with a pixel to spare, and
 * is identified across blocks by its first pixel in raster order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flow/masks_internal.h"
#include "gpuseg/blocks.h"
#include "net/net_internal.h"
#include "prep/prep_internal.h"

void gpuseg_blocks_params_default(gpuseg_blocks_params *p) {
    memset(p, 0, sizeof *p);
    p->block_size = 1024;
    p->halo = 0;
}

/* ---- exact percentiles over blocks ------------------------------------------------------- */

/* kernels/prep.cl's order-preserving keys of float32 samples (-0 counts as +0) */
static uint32_t fkey(float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    if (v == 0.0f)
        u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

static float keyf(uint32_t k) {
    uint32_t u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    float v;
    memcpy(&v, &u, 4);
    return v;
}

/* numpy's _lerp in float32 (kernels/prep.cl np_lerp) */
static float np_lerp(float a, float b, float t) {
    volatile float diff = b - a;
    volatile float prod = diff * (t >= 0.5f ? 1.0f - t : t);
    volatile float r = t >= 0.5f ? b - prod : a + prod;
    return r;
}

#define NRANK 4 /* order statistics per channel: lo, lo + 1, hi, hi + 1 */

typedef struct pct_pass {
    uint32_t sy, sx;
    uint64_t *hi;              /* [2][65536] counts of the keys' high 16 bits (pass 1) */
    uint32_t *lo;              /* [2][NRANK][65536] low 16 bits within the chosen bins (pass 2) */
    uint64_t rank[NRANK];      /* the wanted order statistics */
    uint32_t bin[2][NRANK];    /* pass 1's result: high 16 bits of each */
    uint64_t rest[2][NRANK];   /* its rank within that bin */
    uint32_t key[2][NRANK];    /* pass 2's result */
    uint32_t kmin[2], kmax[2]; /* over all samples (a constant channel is left as it is) */
    uint64_t bad[2];           /* NaN / Inf samples */
    int pass;
} pct_pass;

/* Reads region (x0, y0, w, h) of the source as the prep's two float32 planes on the host. */
static gpuseg_status read_planes(gpuseg_ctx *ctx, const gpuseg_block_source *src,
                                 const gpuseg__prep_params *pp, uint32_t x0, uint32_t y0,
                                 uint32_t w, uint32_t h, cl_mem *planes) {
    gpuseg_image *reg = NULL;
    gpuseg_status st = src->read(src->user, x0, y0, w, h, &reg);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(ctx, st, "reading region %ux%u at (%u, %u)", w, h, x0, y0);
    if (!reg || reg->width != w || reg->height != h || reg->pages < 1) {
        gpuseg_image_free(reg);
        return gpuseg__fail(ctx, GPUSEG_FORMAT,
                            "reading region %ux%u at (%u, %u): the source gave another size", w, h,
                            x0, y0);
    }
    gpuseg__prep_params p = *pp;
    p.page = 0;
    st = gpuseg__prep_channels(ctx, reg, &p, planes);
    gpuseg_image_free(reg);
    return st;
}

/* One pass of the selection over one block's planes [2, h, w] (host copy) at (x0, y0). */
static void pct_block(pct_pass *s, const float *pl, uint32_t x0, uint32_t y0, uint32_t w,
                      uint32_t h) {
    const size_t n = (size_t)w * h;
    for (int c = 0; c < 2; c++) {
        const float *x = pl + c * n;
        for (uint32_t r = 0; r < h; r++) {
            const int row_in = (y0 + r) % s->sy == 0;
            for (uint32_t q = 0; q < w; q++) {
                const float v = x[(size_t)r * w + q];
                if (s->pass == 1) {
                    if (!isfinite(v)) {
                        s->bad[c]++;
                        continue;
                    }
                }
                const uint32_t k = fkey(v);
                if (s->pass == 1) {
                    s->kmin[c] = k < s->kmin[c] ? k : s->kmin[c];
                    s->kmax[c] = k > s->kmax[c] ? k : s->kmax[c];
                }
                if (!row_in || (x0 + q) % s->sx != 0)
                    continue;
                if (s->pass == 1) {
                    s->hi[(size_t)c * 65536 + (k >> 16)]++;
                } else {
                    for (int i = 0; i < NRANK; i++)
                        if ((k >> 16) == s->bin[c][i])
                            s->lo[((size_t)c * NRANK + i) * 65536 + (k & 0xffffu)]++;
                }
            }
        }
    }
}

/* The bin holding order statistic `rank` of a 65536-bin histogram, and its rank within it. */
static void pick_bin(const uint64_t *hist, uint64_t rank, uint32_t *bin, uint64_t *rest) {
    uint64_t below = 0;
    for (uint32_t b = 0; b < 65536; b++) {
        if (rank < below + hist[b]) {
            *bin = b;
            *rest = rank - below;
            return;
        }
        below += hist[b];
    }
    *bin = 65535;
    *rest = 0;
}

/* The exact 1st/99th (norm_lo/norm_hi) percentiles of the two network channels over the whole
 * image, as the whole-image prep computes them (numpy's linear rule in float32, subsampled as
 * normalize99), by two streaming passes over the blocks; par as gpuseg__prep_normalize_par. */
static gpuseg_status percentiles(gpuseg_ctx *ctx, const gpuseg_block_source *src,
                                 const gpuseg__prep_params *pp, uint32_t bs, float par[8],
                                 gpuseg_blocks_result *res) {
    const uint32_t H = src->height, W = src->width;
    pct_pass s;
    memset(&s, 0, sizeof s);
    gpuseg__pct_subsample(H, W, &s.sy, &s.sx);
    const uint64_t ns = (uint64_t)((H + s.sy - 1) / s.sy) * ((W + s.sx - 1) / s.sx);
    uint32_t i0, i1, j0, j1;
    float glo, ghi;
    gpuseg__pct_index(ns, pp->pct_lo, &i0, &i1, &glo);
    gpuseg__pct_index(ns, pp->pct_hi, &j0, &j1, &ghi);
    s.rank[0] = i0;
    s.rank[1] = i1;
    s.rank[2] = j0;
    s.rank[3] = j1;
    s.kmin[0] = s.kmin[1] = UINT32_MAX;
    s.hi = calloc(2 * 65536, sizeof *s.hi);
    s.lo = calloc(2 * NRANK * 65536, sizeof *s.lo);
    float *host = malloc((size_t)2 * bs * bs * sizeof *host);
    gpuseg_status st = GPUSEG_OK;
    cl_mem planes = NULL;
    if (!s.hi || !s.lo || !host) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "percentiles: out of host memory");
        goto done;
    }
    for (s.pass = 1; s.pass <= 2; s.pass++) {
        for (uint32_t y0 = 0; y0 < H; y0 += bs)
            for (uint32_t x0 = 0; x0 < W; x0 += bs) {
                const uint32_t h = H - y0 < bs ? H - y0 : bs, w = W - x0 < bs ? W - x0 : bs;
                if ((st = gpuseg__check_cancel(ctx, "percentiles")) != GPUSEG_OK ||
                    (st = read_planes(ctx, src, pp, x0, y0, w, h, &planes)) != GPUSEG_OK ||
                    (st = gpuseg__read_buf(ctx, planes, (size_t)2 * w * h * sizeof(float), host,
                                           "percentiles: planes")) != GPUSEG_OK)
                    goto done;
                gpuseg__release(&planes);
                pct_block(&s, host, x0, y0, w, h);
            }
        if (s.pass == 1) {
            for (uint32_t c = 0; c < 2; c++)
                if (s.bad[c]) {
                    st = gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                      "normalize: channel %u holds %llu NaN or infinite samples", c,
                                      (unsigned long long)s.bad[c]);
                    goto done;
                }
            for (int c = 0; c < 2; c++)
                for (int i = 0; i < NRANK; i++)
                    pick_bin(s.hi + (size_t)c * 65536, s.rank[i], &s.bin[c][i], &s.rest[c][i]);
        }
        gpuseg__progress(ctx, "percentiles", (uint64_t)s.pass, 2, 0.05 * s.pass);
    }
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < NRANK; i++) {
            /* pass 2 counted the low 16 bits of each rank's bin separately */
            const uint32_t *lo = s.lo + ((size_t)c * NRANK + i) * 65536;
            uint64_t below = 0;
            uint32_t b = 0;
            for (; b < 65536; b++) {
                if (s.rest[c][i] < below + lo[b])
                    break;
                below += lo[b];
            }
            s.key[c][i] = (s.bin[c][i] << 16) | (b < 65536 ? b : 65535);
        }
        const float plo = np_lerp(keyf(s.key[c][0]), keyf(s.key[c][1]), glo);
        const float phi = np_lerp(keyf(s.key[c][2]), keyf(s.key[c][3]), ghi);
        volatile float d = phi - plo;
        par[4 * c + 0] = plo;
        par[4 * c + 1] = phi;
        par[4 * c + 2] = s.kmin[c] >= s.kmax[c] ? 0.0f : (d > 1e-3f ? 1.0f : 2.0f);
        par[4 * c + 3] = d;
        res->norm_lo[c] = plo;
        res->norm_hi[c] = phi;
    }
done:
    gpuseg__release(&planes);
    free(s.hi);
    free(s.lo);
    free(host);
    return st;
}

/* ---- mask identities across blocks ------------------------------------------------------- */

/* Global first pixel (raster index) of a mask -> its label. Open addressing, grown at half load;
 * 12 bytes per mask. */
typedef struct id_map {
    uint64_t *key; /* key + 1; 0: empty */
    uint32_t *val;
    size_t cap, n;
} id_map;

static size_t id_slot(const id_map *m, uint64_t key) {
    uint64_t h = (key + 1) * 0x9e3779b97f4a7c15ull;
    size_t i = (size_t)(h >> 20) & (m->cap - 1);
    while (m->key[i] && m->key[i] != key + 1)
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int id_grow(id_map *m) {
    id_map g = {calloc(m->cap ? 2 * m->cap : 1024, sizeof *g.key), NULL, 0, 0};
    g.cap = m->cap ? 2 * m->cap : 1024;
    g.val = malloc(g.cap * sizeof *g.val);
    if (!g.key || !g.val) {
        free(g.key);
        free(g.val);
        return 0;
    }
    for (size_t i = 0; i < m->cap; i++)
        if (m->key[i]) {
            size_t j = id_slot(&g, m->key[i] - 1);
            g.key[j] = m->key[i];
            g.val[j] = m->val[i];
            g.n++;
        }
    free(m->key);
    free(m->val);
    *m = g;
    return 1;
}

/* The label of the mask whose first pixel is key, a new one (n + 1) if none yet; 0 when out of
 * host memory. */
static uint32_t id_get(id_map *m, uint64_t key) {
    if (2 * (m->n + 1) > m->cap && !id_grow(m))
        return 0;
    size_t i = id_slot(m, key);
    if (!m->key[i]) {
        m->key[i] = key + 1;
        m->val[i] = (uint32_t)++m->n;
    }
    return m->val[i];
}

/* ---- one block --------------------------------------------------------------------------- */

typedef struct blocks_run {
    gpuseg_ctx *ctx;
    gpuseg_net *net;
    const gpuseg_block_source *src;
    gpuseg__prep_params pp;
    gpuseg__tile_geom g; /* the whole image's */
    float par[8];        /* normalisation parameters of the whole image */
    gpuseg_masks_params mp;
    unsigned bsz; /* network batch (the whole-image run's plan) */
    uint32_t halo;
    id_map ids;
    uint32_t *win_labels, *core; /* host: the window's labels, the block's output */
    uint32_t *stat;              /* per window label: min y, max y, min x, max x, first, in core */
    size_t stat_cap;
    gpuseg_blocks_result *res;
    /* the last block run, for its event (block_event): window, labels before it, new masks */
    uint32_t wy0, wx0, wh, ww, n0;
    uint64_t *new_first; /* first pixel of each new mask, in label order */
    size_t new_cap;
    /* the tile cache (tile_cache_setup; tc NULL: none): network outputs [3][th][tw] of the whole
     * grid's tiles that a later block needs, by tile index j * g.nx + i; the last block that
     * needs tile (j, i) is last_row[j] * nbx + last_col[i] (UINT32_MAX: none) */
    float **tc;
    uint32_t *last_row, *last_col, nbx;
    uint32_t k;             /* the block being run */
    size_t tc_n, tc_peak;   /* tiles held now, at most */
    cl_mem tc_chunk, tc_in; /* device: a chunk of the block's tile outputs; extraction scratch */
    /* gpuseg_segment_block: the core's mask keys go here (no id map, no sink) */
    uint64_t *keys;
    uint32_t keys_masks; /* masks given a key in the core */
} blocks_run;

/* Tile rows j0..j1 whose padded extent meets resized rows [r0, r1) (starts increasing). */
static void tile_range(const uint32_t *start, uint32_t n, uint32_t t, uint32_t pad, uint32_t r0,
                       uint32_t r1, uint32_t *j0, uint32_t *j1) {
    uint32_t a = 0, b = 0;
    int any = 0;
    for (uint32_t j = 0; j < n; j++)
        if (start[j] < r1 + pad && start[j] + t > r0 + pad) {
            if (!any)
                a = j;
            b = j;
            any = 1;
        }
    *j0 = a;
    *j1 = b;
}

/* The tile rows (rows = 1) or columns t0..t1 of the whole grid whose padded extent meets the
 * resized rows/columns that the resize back of window rows/columns [w0, w1) reads. */
static gpuseg_status window_tiles(gpuseg_ctx *ctx, const gpuseg__tile_geom *g, int rows,
                                  uint32_t w0, uint32_t w1, uint32_t *t0, uint32_t *t1) {
    uint32_t r0, r1;
    gpuseg_status st =
        rows
            ? gpuseg__resize_source(ctx, g->lyr, g->ly0, w0, w1, 1, GPUSEG__RESIZE_EXACT, &r0, &r1)
            : gpuseg__resize_source(ctx, g->lxr, g->lx0, w0, w1, 0, GPUSEG__RESIZE_EXACT, &r0, &r1);
    if (st != GPUSEG_OK)
        return st;
    if (rows)
        tile_range(g->ystart, g->ny, g->th, g->ypad1, r0, r1, t0, t1);
    else
        tile_range(g->xstart, g->nx, g->tw, g->xpad1, r0, r1, t0, t1);
    return GPUSEG_OK;
}

/* ---- the tile cache ---------------------------------------------------------------------- */

/* Sets up the tile cache of a run over blocks of bs with b's halo, nby x nbx blocks: for each
 * tile row and column of the grid, the last block row/column whose window needs it (blocks run
 * in row-major order, and the block rows/columns that need a tile row/column are contiguous, so
 * the last block that needs tile (j, i) is last_row[j] * nbx + last_col[i]). */
static gpuseg_status tile_cache_setup(blocks_run *b, uint32_t bs, uint32_t nby, uint32_t nbx) {
    const gpuseg__tile_geom *g = &b->g;
    const uint32_t H = b->src->height, W = b->src->width, hl = b->halo;
    b->tc = calloc((size_t)g->ny * g->nx, sizeof *b->tc);
    b->last_row = malloc(g->ny * sizeof *b->last_row);
    b->last_col = malloc(g->nx * sizeof *b->last_col);
    if (!b->tc || !b->last_row || !b->last_col)
        return gpuseg__fail(b->ctx, GPUSEG_OUT_OF_MEMORY, "blocks: tile cache tables");
    b->nbx = nbx;
    for (int rows = 0; rows < 2; rows++) {
        const uint32_t n = rows ? nby : nbx, L = rows ? H : W;
        uint32_t *last = rows ? b->last_row : b->last_col;
        memset(last, 0xff, (rows ? g->ny : g->nx) * sizeof *last);
        for (uint32_t q = 0; q < n; q++) {
            /* the window of run_block */
            const uint32_t c0 = q * bs, c = L - c0 < bs ? L - c0 : bs;
            const uint32_t w0 = c0 > hl ? c0 - hl : 0, w1 = L - (c0 + c) > hl ? c0 + c + hl : L;
            uint32_t t0, t1;
            gpuseg_status st = window_tiles(b->ctx, g, rows, w0, w1, &t0, &t1);
            if (st != GPUSEG_OK)
                return st;
            for (uint32_t t = t0; t <= t1; t++)
                last[t] = q;
        }
    }
    return GPUSEG_OK;
}

/* The last block that needs tile (j, i) of the grid (UINT32_MAX: none). */
static uint32_t tile_last(const blocks_run *b, uint32_t j, uint32_t i) {
    if (b->last_row[j] == UINT32_MAX || b->last_col[i] == UINT32_MAX)
        return UINT32_MAX;
    return b->last_row[j] * b->nbx + b->last_col[i];
}

static void tile_cache_free(blocks_run *b) {
    if (b->tc)
        for (size_t t = 0; t < (size_t)b->g.ny * b->g.nx; t++)
            free(b->tc[t]);
    free(b->tc);
    free(b->last_row);
    free(b->last_col);
    b->tc = NULL;
    b->last_row = b->last_col = NULL;
    gpuseg__release(&b->tc_chunk);
    gpuseg__release(&b->tc_in);
}

/* The network step of a block: the tiles j0.. x i0.. of the grid that sub-geometry sg covers
 * (cut from the resized window timg), blended into bl in tile order. Tiles in the cache are
 * uploaded; the others go through the network in batches of b->bsz (the last smaller), as
 * many as the whole-image run's batches, and those a later block needs are downloaded into
 * the cache. The blend adds the block's tiles in tile order whatever their origin, so the sums
 * are the same as when every tile runs here; after the step, the cached tiles no later block
 * needs are freed. Without a cache (b->tc NULL) every tile runs. */
static gpuseg_status net_tiles(blocks_run *b, cl_mem timg, const gpuseg__tile_geom *sg, uint32_t j0,
                               uint32_t i0, gpuseg__blend *bl) {
    gpuseg_ctx *ctx = b->ctx;
    const uint32_t nt = sg->ny * sg->nx, bsz = b->bsz, gnx = b->g.nx;
    const size_t in_bytes = (size_t)2 * sg->th * sg->tw * sizeof(float);
    const size_t out_bytes = (size_t)3 * sg->th * sg->tw * sizeof(float);
    gpuseg_status st = GPUSEG_OK;
    cl_int err = CL_SUCCESS;
    /* which of the block's tiles the cache has (before this block adds any) */
    unsigned char *cached = calloc(nt, 1);
    uint32_t *batch = malloc(bsz * sizeof *batch);
    if (!cached || !batch) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "blocks: tile list");
        goto done;
    }
#define GTILE(s) ((size_t)(j0 + (s) / sg->nx) * gnx + i0 + (s) % sg->nx)
    if (b->tc)
        for (uint32_t s = 0; s < nt; s++)
            cached[s] = b->tc[GTILE(s)] != NULL;
    if (!b->tc_chunk && (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, bsz * out_bytes,
                                             "blocks: tile outputs", &b->tc_chunk)))
        goto done;
    uint32_t bn = 0, bpos = 0, nchunk = 0, cfirst = 0;
    for (uint32_t s = 0; s < nt; s++) {
        const size_t gt = GTILE(s);
        if (cached[s]) {
            err = clEnqueueWriteBuffer(ctx->queue, b->tc_chunk, CL_TRUE, nchunk * out_bytes,
                                       out_bytes, b->tc[gt], 0, NULL, NULL);
            if (err != CL_SUCCESS) {
                st = gpuseg__fail_cl(ctx, err, "blocks: uploading a cached tile");
                goto done;
            }
        } else {
            if (bpos == bn) {
                /* the next batch: up to bsz of the tiles to run, from this one on */
                bn = bpos = 0;
                for (uint32_t u = s; u < nt && bn < bsz; u++)
                    if (!cached[u])
                        batch[bn++] = u;
                if (batch[bn - 1] - batch[0] == bn - 1) { /* consecutive: straight in */
                    if ((st = gpuseg__tiles_extract(ctx, timg, 2, sg, batch[0], bn, b->net->in)))
                        goto done;
                } else {
                    if (!b->tc_in && (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, bsz * in_bytes,
                                                          "blocks: tile inputs", &b->tc_in)))
                        goto done;
                    for (uint32_t q = 0; q < bn;) {
                        uint32_t r = 1;
                        while (q + r < bn && batch[q + r] == batch[q] + r)
                            r++;
                        if ((st = gpuseg__tiles_extract(ctx, timg, 2, sg, batch[q], r, b->tc_in)))
                            goto done;
                        err = clEnqueueCopyBuffer(ctx->queue, b->tc_in, b->net->in, 0, q * in_bytes,
                                                  r * in_bytes, 0, NULL, NULL);
                        if (err != CL_SUCCESS) {
                            st = gpuseg__fail_cl(ctx, err, "blocks: gathering tiles");
                            goto done;
                        }
                        q += r;
                    }
                }
                if ((st = gpuseg__net_forward(b->net, bn)))
                    goto done;
                b->res->n_tiles_run += bn;
                for (uint32_t q = 0; b->tc && q < bn; q++) {
                    const uint32_t u = batch[q], j = j0 + u / sg->nx, i = i0 + u % sg->nx;
                    const uint32_t last = tile_last(b, j, i);
                    if (last == UINT32_MAX || last <= b->k)
                        continue;
                    float *t = malloc(out_bytes);
                    if (!t) {
                        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "blocks: tile cache");
                        goto done;
                    }
                    err = clEnqueueReadBuffer(ctx->queue, b->net->out, CL_TRUE, q * out_bytes,
                                              out_bytes, t, 0, NULL, NULL);
                    if (err != CL_SUCCESS) {
                        free(t);
                        st = gpuseg__fail_cl(ctx, err, "blocks: reading back a tile");
                        goto done;
                    }
                    b->tc[(size_t)j * gnx + i] = t;
                    if (++b->tc_n > b->tc_peak)
                        b->tc_peak = b->tc_n;
                }
            }
            err = clEnqueueCopyBuffer(ctx->queue, b->net->out, b->tc_chunk, bpos * out_bytes,
                                      nchunk * out_bytes, out_bytes, 0, NULL, NULL);
            if (err != CL_SUCCESS) {
                st = gpuseg__fail_cl(ctx, err, "blocks: tile outputs");
                goto done;
            }
            bpos++;
        }
        if (++nchunk == bsz || s == nt - 1) {
            if ((st = gpuseg__blend_add(ctx, bl, sg, b->tc_chunk, cfirst, nchunk)))
                goto done;
            cfirst = s + 1;
            nchunk = 0;
        }
    }
    /* the cached tiles no later block needs */
    for (uint32_t s = 0; b->tc && s < nt; s++) {
        const uint32_t j = j0 + s / sg->nx, i = i0 + s % sg->nx;
        const uint32_t last = tile_last(b, j, i);
        if (b->tc[GTILE(s)] && (last == UINT32_MAX || last <= b->k)) {
            free(b->tc[GTILE(s)]);
            b->tc[GTILE(s)] = NULL;
            b->tc_n--;
        }
    }
#undef GTILE
done:
    free(cached);
    free(batch);
    return st;
}

/* The flows [3, wh, ww] of window (wy0, wx0, wh, ww) of the image, equal to the whole-image
 * run's: the tiles that the window's resize back reads, computed from the source region their
 * resize in reads. */
static gpuseg_status block_flows(blocks_run *b, uint32_t wy0, uint32_t wx0, uint32_t wh,
                                 uint32_t ww, cl_mem flows) {
    gpuseg_ctx *ctx = b->ctx;
    const gpuseg__tile_geom *g = &b->g;
    uint32_t sy0, sy1, sx0, sx1, j0, j1, i0, i1;
    gpuseg_status st;
    /* the tiles whose padded extent meets the resized rows/columns the resize back reads */
    if ((st = window_tiles(ctx, g, 1, wy0, wy0 + wh, &j0, &j1)) ||
        (st = window_tiles(ctx, g, 0, wx0, wx0 + ww, &i0, &i1)))
        return st;
    /* the resized rows/columns those tiles cover */
    int64_t a = (int64_t)g->ystart[j0] - g->ypad1, z = (int64_t)g->ystart[j1] + g->th - g->ypad1;
    const uint32_t ty0 = a < 0 ? 0 : (uint32_t)a, ty1 = z > g->lyr ? g->lyr : (uint32_t)z;
    a = (int64_t)g->xstart[i0] - g->xpad1;
    z = (int64_t)g->xstart[i1] + g->tw - g->xpad1;
    const uint32_t tx0 = a < 0 ? 0 : (uint32_t)a, tx1 = z > g->lxr ? g->lxr : (uint32_t)z;
    const uint32_t th = ty1 - ty0, tw = tx1 - tx0;
    /* the source region the resize in reads for them */
    if ((st = gpuseg__resize_source(ctx, g->ly0, g->lyr, ty0, ty1, 1, GPUSEG__RESIZE_CV, &sy0,
                                    &sy1)) ||
        (st = gpuseg__resize_source(ctx, g->lx0, g->lxr, tx0, tx1, 0, GPUSEG__RESIZE_CV, &sx0,
                                    &sx1)))
        return st;
    const int resized = g->lyr != g->ly0 || g->lxr != g->lx0;
    cl_mem planes = NULL, timg = NULL, maps = NULL;
    gpuseg__blend bl = {0};
    if ((st = read_planes(ctx, b->src, &b->pp, sx0, sy0, sx1 - sx0, sy1 - sy0, &planes)) ||
        (b->pp.normalize && (st = gpuseg__prep_normalize_par(ctx, planes, 2, sy1 - sy0, sx1 - sx0,
                                                             b->pp.invert, b->par))))
        goto done;
    if (!resized) {
        timg = planes; /* S = T */
        planes = NULL;
    } else if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, (size_t)2 * th * tw * sizeof(float),
                                    "blocks: resized image", &timg)) ||
               (st = gpuseg__resize_window(ctx, planes, 2, sy0, sx0, sy1 - sy0, sx1 - sx0, g->ly0,
                                           g->lx0, timg, ty0, tx0, th, tw, g->lyr, g->lxr,
                                           GPUSEG__RESIZE_CV)))
        goto done;
    gpuseg__release(&planes);
    /* the tiles j0..j1 x i0..i1 of the whole grid, on the window [ty0, ty1) x [tx0, tx1) */
    gpuseg__tile_geom sg = *g;
    sg.lyr = th;
    sg.lxr = tw;
    sg.ypad1 = g->ypad1 + ty0;
    sg.xpad1 = g->xpad1 + tx0;
    sg.ny = j1 - j0 + 1;
    sg.nx = i1 - i0 + 1;
    sg.ystart = g->ystart + j0;
    sg.xstart = g->xstart + i0;
    if ((st = gpuseg__blend_begin(ctx, &sg, 3, &bl)))
        goto done;
    if ((st = net_tiles(b, timg, &sg, j0, i0, &bl)))
        goto done;
    gpuseg__release(&timg);
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, (size_t)3 * th * tw * sizeof(float),
                             "blocks: blended maps", &maps)) ||
        (st = gpuseg__blend_end(ctx, &bl, &sg, maps)))
        goto done;
    st = gpuseg__resize_window(ctx, maps, 3, ty0, tx0, th, tw, g->lyr, g->lxr, flows, wy0, wx0, wh,
                               ww, g->ly0, g->lx0, GPUSEG__RESIZE_EXACT);
done:
    gpuseg__blend_free(&bl);
    gpuseg__release(&planes);
    gpuseg__release(&timg);
    gpuseg__release(&maps);
    return st;
}

/* Records the first pixel of label out when it is new in this block (out > b->n0: labels are
 * given in increasing order). -1: out of host memory. */
static int note_new(blocks_run *b, uint32_t out, uint64_t first) {
    if (out <= b->n0)
        return 0;
    const size_t i = out - b->n0 - 1;
    if (i >= b->new_cap) {
        size_t cap = b->new_cap ? 2 * b->new_cap : 256;
        uint64_t *nf = realloc(b->new_first, cap * sizeof *nf);
        if (!nf)
            return -1;
        b->new_first = nf;
        b->new_cap = cap;
    }
    b->new_first[i] = first;
    return 0;
}

/* The event of block k (of nb) that run_block just wrote: its window's labels of the masks new
 * in it (into b->core, free once the sink had it), their first pixels, its counters. */
static gpuseg_status block_event(blocks_run *b, const gpuseg_blocks_params *bp, uint32_t k,
                                 uint32_t nb, uint32_t too_big, uint32_t tiles) {
    gpuseg_blocks_event ev;
    memset(&ev, 0, sizeof ev);
    ev.block = k;
    ev.n_blocks = nb;
    memcpy(ev.norm, b->par, sizeof ev.norm);
    ev.x0 = b->wx0;
    ev.y0 = b->wy0;
    ev.width = b->ww;
    ev.height = b->wh;
    ev.first_label = b->n0 + 1;
    ev.n_new = (uint32_t)b->ids.n - b->n0;
    ev.first_pixel = b->new_first;
    ev.n_too_big = too_big;
    ev.n_tiles_run = tiles;
    const size_t n = (size_t)b->wh * b->ww;
    const uint32_t *sl = b->stat; /* window label -> output value (run_block) */
    for (size_t i = 0; i < n; i++) {
        const uint32_t l = b->win_labels[i];
        const uint32_t out = l && l < b->stat_cap ? sl[6 * (size_t)l + 5] : 0;
        b->core[i] = out > b->n0 ? out : 0;
    }
    ev.labels = b->core;
    gpuseg_status st = bp->on_event(bp->event_user, &ev);
    if (st != GPUSEG_OK)
        gpuseg__wrap(b->ctx, st, "after block %u of %u", k + 1, nb);
    return st;
}

/* One block: core [cy0, cy0 + ch) x [cx0, cx0 + cw), window = core + halo within the image. */
static gpuseg_status run_block(blocks_run *b, uint32_t cy0, uint32_t cx0, uint32_t ch, uint32_t cw,
                               gpuseg_labels_write_fn sink, void *sink_user) {
    gpuseg_ctx *ctx = b->ctx;
    const uint32_t H = b->src->height, W = b->src->width, hl = b->halo;
    const uint32_t wy0 = cy0 > hl ? cy0 - hl : 0, wx0 = cx0 > hl ? cx0 - hl : 0;
    const uint32_t wy1 = H - (cy0 + ch) > hl ? cy0 + ch + hl : H;
    const uint32_t wx1 = W - (cx0 + cw) > hl ? cx0 + cw + hl : W;
    const uint32_t wh = wy1 - wy0, ww = wx1 - wx0;
    const size_t n = (size_t)wh * ww;
    b->wy0 = wy0; /* for block_event */
    b->wx0 = wx0;
    b->wh = wh;
    b->ww = ww;
    b->n0 = (uint32_t)b->ids.n;
    cl_mem flows = NULL, lab = NULL;
    gpuseg_dtype dt;
    uint32_t nm = 0;
    gpuseg_status st;
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, 3 * n * sizeof(float), "blocks: flows",
                             &flows)) ||
        (st = block_flows(b, wy0, wx0, wh, ww, flows)))
        goto done;
    const gpuseg__masks_window win = {wy0, wx0, H, W, (uint64_t)H * W, 1};
    st = gpuseg__masks_run_window(ctx, flows, 1, wh, ww, &win, &b->mp, NULL, &lab, &dt, &nm);
    flows = NULL; /* handed over */
    if (st != GPUSEG_OK)
        goto done;
    if (dt == GPUSEG_DTYPE_U32) {
        st = gpuseg__read_buf(ctx, lab, n * 4, b->win_labels, "blocks: labels");
    } else {
        st = gpuseg__read_buf(ctx, lab, n * 2, b->core, "blocks: labels"); /* as scratch */
        const uint16_t *s16 = (const uint16_t *)b->core;
        for (size_t i = n; i-- > 0;)
            b->win_labels[i] = s16[i];
    }
    if (st != GPUSEG_OK)
        goto done;
    /* per label: box, first pixel, whether it has a pixel in the core */
    if ((size_t)nm + 1 > b->stat_cap) {
        uint32_t *ns = realloc(b->stat, ((size_t)nm + 1) * 6 * sizeof *ns);
        if (!ns) {
            st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "blocks: label table");
            goto done;
        }
        b->stat = ns;
        b->stat_cap = (size_t)nm + 1;
    }
    uint32_t *sl = b->stat;
    for (uint32_t l = 0; l <= nm; l++) {
        uint32_t *e = sl + 6 * (size_t)l;
        e[0] = e[2] = UINT32_MAX;
        e[1] = e[3] = 0;
        e[4] = UINT32_MAX;
        e[5] = 0;
    }
    for (uint32_t y = 0; y < wh; y++)
        for (uint32_t x = 0; x < ww; x++) {
            const uint32_t l = b->win_labels[(size_t)y * ww + x];
            if (!l || l > nm)
                continue;
            uint32_t *e = sl + 6 * (size_t)l;
            if (e[4] == UINT32_MAX) {
                e[4] = y * ww + x;
                e[0] = y; /* raster order: the first pixel is on the top row */
            }
            e[1] = y;
            e[2] = x < e[2] ? x : e[2];
            e[3] = x > e[3] ? x : e[3];
            if (y + wy0 >= cy0 && y + wy0 < cy0 + ch && x + wx0 >= cx0 && x + wx0 < cx0 + cw)
                e[5] = 1;
        }
    /* label -> output value: masks with a pixel in the core, inside the window with a pixel to
     * spare on every side that is not the image's edge; others 0 */
    for (uint32_t l = 1; l <= nm; l++) {
        uint32_t *e = sl + 6 * (size_t)l;
        uint32_t out = 0;
        if (e[5]) {
            const int big = (e[0] == 0 && wy0 > 0) || (e[1] == wh - 1 && wy1 < H) ||
                            (e[2] == 0 && wx0 > 0) || (e[3] == ww - 1 && wx1 < W);
            if (big) {
                b->res->n_too_big++;
            } else if (b->keys) {
                out = 1;
                b->keys_masks++;
            } else {
                const uint64_t first = (uint64_t)(wy0 + e[4] / ww) * W + wx0 + e[4] % ww;
                if ((out = id_get(&b->ids, first)) == 0 || note_new(b, out, first) != 0) {
                    st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "blocks: mask table");
                    goto done;
                }
            }
        }
        e[5] = out;
    }
    sl[5] = 0;
    if (b->keys) { /* key: the mask's global first pixel (raster index) + 1 */
        for (uint32_t y = 0; y < ch; y++)
            for (uint32_t x = 0; x < cw; x++) {
                const uint32_t *e =
                    sl + 6 * (size_t)b->win_labels[(size_t)(cy0 - wy0 + y) * ww + (cx0 - wx0 + x)];
                b->keys[(size_t)y * cw + x] =
                    e[5] ? (uint64_t)(wy0 + e[4] / ww) * W + wx0 + e[4] % ww + 1 : 0;
            }
        goto done;
    }
    for (uint32_t y = 0; y < ch; y++)
        for (uint32_t x = 0; x < cw; x++)
            b->core[(size_t)y * cw + x] =
                sl[6 * (size_t)b->win_labels[(size_t)(cy0 - wy0 + y) * ww + (cx0 - wx0 + x)] + 5];
    if ((st = sink(sink_user, cx0, cy0, cw, ch, b->core)) != GPUSEG_OK)
        gpuseg__wrap(ctx, st, "writing the labels of block %ux%u at (%u, %u)", cw, ch, cx0, cy0);
done:
    gpuseg__release(&flows);
    gpuseg__release(&lab);
    return st;
}

/* ---- the run ----------------------------------------------------------------------------- */

/* The resume fields of bp against the image's blocks (docs/blockwise.md, "Resuming"). */
static gpuseg_status check_resume(gpuseg_ctx *ctx, const gpuseg_blocks_params *bp, uint32_t H,
                                  uint32_t W) {
    const uint64_t nb = (uint64_t)((H + bp->block_size - 1) / bp->block_size) *
                        ((W + bp->block_size - 1) / bp->block_size);
    if (bp->first_block > nb)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "resume: first block %u, but the image has %llu blocks",
                            bp->first_block, (unsigned long long)nb);
    if (bp->n_known && !bp->known_masks)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "resume: %u known masks but no list",
                            bp->n_known);
    if (bp->n_known && bp->first_block == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "resume: %u known masks but no block done", bp->n_known);
    for (uint32_t i = 0; i < bp->n_known; i++)
        if (bp->known_masks[i] >= (uint64_t)H * W)
            return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                "resume: known mask %u starts at pixel %llu, outside the %ux%u "
                                "image",
                                i + 1, (unsigned long long)bp->known_masks[i], W, H);
    if (bp->norm)
        for (int i = 0; i < 8; i++)
            if (!isfinite(bp->norm[i]))
                return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                    "resume: normalisation parameter %d is not finite", i);
    return GPUSEG_OK;
}

static gpuseg_status check(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_segment_params *p,
                           const gpuseg_blocks_params *bp, uint32_t H, uint32_t W) {
    if (net->info.nout != 3)
        return gpuseg__fail(ctx, GPUSEG_UNSUPPORTED,
                            "%s: the model has %d outputs; segmentation "
                            "needs 3 (dY, dX, cellprob)",
                            net->model_path, net->info.nout);
    if (p->augment || p->estimate_diameter || (p->size_model && p->diameter == 0.0))
        return gpuseg__fail(ctx, GPUSEG_UNSUPPORTED,
                            "blockwise segmentation: augment, diameter estimation and size models "
                            "are not supported");
    gpuseg_status cst = gpuseg__check_segment_numbers(ctx, p);
    if (cst != GPUSEG_OK)
        return cst;
    if (bp->block_size < 16 || bp->block_size > 65536)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "block size %u: must be 16..65536",
                            bp->block_size);
    if (bp->halo > 65536)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "halo %u: at most 65536", bp->halo);
    if (H == 0 || W == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "blockwise segmentation: empty image");
    return check_resume(ctx, bp, H, W);
}

/* A resumed run's state (gpuseg_blocks_params' resume fields): the normalisation parameters
 * instead of the percentile passes, the known masks in the identity map as labels 1..n_known. */
static gpuseg_status resume_start(blocks_run *b, const gpuseg_blocks_params *bp) {
    if (bp->norm) {
        memcpy(b->par, bp->norm, sizeof b->par);
        for (int c = 0; c < 2; c++) {
            b->res->norm_lo[c] = b->par[4 * c];
            b->res->norm_hi[c] = b->par[4 * c + 1];
        }
    }
    for (uint32_t i = 0; i < bp->n_known; i++) {
        const uint32_t l = id_get(&b->ids, bp->known_masks[i]);
        if (l == 0)
            return gpuseg__fail(b->ctx, GPUSEG_OUT_OF_MEMORY, "blocks: mask table");
        if (l != i + 1)
            return gpuseg__fail(b->ctx, GPUSEG_INVALID_ARGUMENT,
                                "resume: known masks %u and %u start at the same pixel %llu", l,
                                i + 1, (unsigned long long)bp->known_masks[i]);
    }
    return GPUSEG_OK;
}

/* What gpuseg_segment_blocks and the distributed entries share before the percentiles: checks
 * p and bp, fills b (prep and masks parameters, the whole image's tile geometry) and result's
 * diameter, rescale, niter, halo and n_tiles, and resolves bp->halo. blocks_free releases b. */
static gpuseg_status blocks_init(blocks_run *b, gpuseg_ctx *ctx, gpuseg_net *net,
                                 const gpuseg_block_source *src, const gpuseg_segment_params *pp,
                                 gpuseg_blocks_params *bp, gpuseg_blocks_result *result) {
    const gpuseg_segment_params p = *pp;
    memset(b, 0, sizeof *b);
    const uint32_t H = src->height, W = src->width;
    gpuseg_status st = check(ctx, net, &p, bp, H, W);
    if (st != GPUSEG_OK)
        return st;
    const gpuseg_model_info *mi = &net->info;
    /* rescale and niter exactly as gpuseg_segment */
    float r;
    uint32_t niter;
    if ((st = gpuseg__rescale_niter(ctx, net, &p, &r, &niter)) != GPUSEG_OK)
        return st;
    b->ctx = ctx;
    b->net = net;
    b->src = src;
    b->res = result;
    gpuseg__prep_params_default(&b->pp);
    b->pp.chan = p.chan;
    b->pp.chan2 = p.chan2;
    b->pp.normalize = p.normalize;
    b->pp.pct_lo = p.norm_lo;
    b->pp.pct_hi = p.norm_hi;
    b->pp.invert = p.invert;
    b->pp.rescale = gpuseg__prep_rescale(r, H, W);
    b->pp.tile_overlap = p.tile_overlap;
    if (b->pp.invert && !b->pp.normalize)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "prep: invert needs normalisation (as in Cellpose)");
    if (b->pp.normalize &&
        !(b->pp.pct_lo >= 0.0f && b->pp.pct_lo < b->pp.pct_hi && b->pp.pct_hi <= 100.0f))
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "normalize: percentiles %g and %g (need 0 <= low < high <= 100)",
                            (double)b->pp.pct_lo, (double)b->pp.pct_hi);
    gpuseg_masks_params_default(&b->mp);
    b->mp.cellprob_threshold = p.cellprob_threshold;
    b->mp.flow_threshold = p.flow_threshold;
    b->mp.niter = niter;
    b->mp.min_size = p.min_size;
    b->mp.max_size_fraction = p.max_size_fraction;
    result->diameter = p.diameter > 0 ? p.diameter : (double)mi->diam_labels;
    result->rescale = (double)r;
    result->niter = niter;
    if (bp->halo == 0) {
        double h = 4.0 * result->diameter;
        bp->halo = h < 64.0 ? 64 : (h > 65536.0 ? 65536 : (uint32_t)ceil(h));
    }
    b->halo = bp->halo;
    result->halo = bp->halo;
    if ((st = gpuseg__tile_geometry(ctx, H, W, b->pp.rescale, 0, p.tile_overlap, &b->g)))
        return st;
    result->n_tiles = b->g.ny * b->g.nx;
    return GPUSEG_OK;
}

/* The network plan (the whole-image run's batch size, and so the same convolution choices for
 * every batch but a block's last) and the host label buffers for blocks of side bs. */
static gpuseg_status blocks_buffers(blocks_run *b, const gpuseg_segment_params *p, uint32_t bs) {
    const uint32_t nt = b->res->n_tiles;
    gpuseg_status st = gpuseg__plan_batch(b->ctx, b->net, p->batch_size < nt ? p->batch_size : nt,
                                          b->g.th, b->g.tw, &b->bsz);
    if (st != GPUSEG_OK)
        return st;
    const size_t wmax = (size_t)(bs + 2 * (size_t)b->halo) * (bs + 2 * (size_t)b->halo);
    b->win_labels = malloc(wmax * sizeof *b->win_labels);
    b->core = malloc(wmax * sizeof *b->core);
    if (!b->win_labels || !b->core)
        return gpuseg__fail(b->ctx, GPUSEG_OUT_OF_MEMORY, "blocks: label buffers");
    return GPUSEG_OK;
}

static void blocks_free(blocks_run *b) {
    tile_cache_free(b);
    gpuseg__tile_geom_free(&b->g);
    free(b->ids.key);
    free(b->ids.val);
    free(b->win_labels);
    free(b->core);
    free(b->stat);
    free(b->new_first);
}

gpuseg_status
gpuseg_segment_blocks(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_block_source *src,
                      const gpuseg_segment_params *params, const gpuseg_blocks_params *bparams,
                      gpuseg_labels_write_fn sink, void *sink_user, gpuseg_blocks_result *result) {
    gpuseg__clear_error(ctx);
    if (!ctx || !net || !src || !src->read || !sink || !result)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "gpuseg_segment_blocks: NULL argument");
    memset(result, 0, sizeof *result);
    gpuseg_segment_params p;
    gpuseg_blocks_params bp;
    if (params)
        p = *params;
    else
        gpuseg_segment_params_default(&p);
    if (bparams)
        bp = *bparams;
    else
        gpuseg_blocks_params_default(&bp);
    const uint32_t H = src->height, W = src->width;
    blocks_run b;
    gpuseg_status st = blocks_init(&b, ctx, net, src, &p, &bp, result);
    if (st != GPUSEG_OK)
        goto done;
    const uint32_t bs = bp.block_size;
    double t0 = gpuseg__now_s();
    gpuseg__progress(ctx, "percentiles", 0, 2, 0.0);
    if ((st = resume_start(&b, &bp)) != GPUSEG_OK)
        goto done;
    if (b.pp.normalize && !bp.norm) {
        if ((st = percentiles(ctx, src, &b.pp, bs, b.par, result)))
            goto done;
        if (bp.on_event) {
            gpuseg_blocks_event ev;
            memset(&ev, 0, sizeof ev);
            ev.block = GPUSEG_BLOCKS_NORM;
            ev.n_blocks = ((H + bs - 1) / bs) * ((W + bs - 1) / bs);
            memcpy(ev.norm, b.par, sizeof ev.norm);
            if ((st = bp.on_event(bp.event_user, &ev)) != GPUSEG_OK) {
                gpuseg__wrap(ctx, st, "after the percentiles");
                goto done;
            }
        }
    }
    double t1 = gpuseg__now_s();
    result->seconds_percentiles = t1 - t0;
    if ((st = blocks_buffers(&b, &p, bs)))
        goto done;
    const uint32_t nby = (H + bs - 1) / bs, nbx = (W + bs - 1) / bs, nb = nby * nbx;
    if (!bp.no_tile_cache && (st = tile_cache_setup(&b, bs, nby, nbx)) != GPUSEG_OK)
        goto done;
    gpuseg__progress(ctx, "blocks", bp.first_block, nb, 0.1 + 0.9 * bp.first_block / nb);
    for (uint32_t k = bp.first_block; k < nb; k++) {
        const uint32_t cy0 = (k / nbx) * bs, cx0 = (k % nbx) * bs;
        const uint32_t ch = H - cy0 < bs ? H - cy0 : bs, cw = W - cx0 < bs ? W - cx0 : bs;
        if ((st = gpuseg__check_cancel(ctx, "blocks")) != GPUSEG_OK)
            goto done;
        gpuseg__progress_span outer =
            gpuseg__progress_push(ctx, 0.1 + 0.9 * k / nb, 0.1 + 0.9 * (k + 1) / nb);
        const uint32_t big0 = result->n_too_big;
        const uint64_t tiles0 = result->n_tiles_run;
        b.k = k;
        st = run_block(&b, cy0, cx0, ch, cw, sink, sink_user);
        if (st == GPUSEG_OK && bp.on_event)
            st = block_event(&b, &bp, k, nb, result->n_too_big - big0,
                             (uint32_t)(result->n_tiles_run - tiles0));
        gpuseg__progress_pop(ctx, outer);
        if (st != GPUSEG_OK) {
            gpuseg__wrap(ctx, st, "block %u of %u (%ux%u at (%u, %u))", k + 1, nb, cw, ch, cx0,
                         cy0);
            goto done;
        }
        result->n_blocks = k + 1 - bp.first_block;
        gpuseg__progress(ctx, "blocks", k + 1, nb, 0.1 + 0.9 * (k + 1) / nb);
    }
    result->n_masks = (uint32_t)b.ids.n;
    result->tile_cache_peak = (uint64_t)b.tc_peak * 3 * b.g.th * b.g.tw * sizeof(float);
    result->seconds_blocks = gpuseg__now_s() - t1;
    gpuseg__progress(ctx, "done", 1, 1, 1.0);
done:
    if (st != GPUSEG_OK) {
        clFinish(ctx->queue);
        gpuseg_status keep = st;
        memset(result, 0, sizeof *result);
        st = keep;
    }
    blocks_free(&b);
    return st;
}

/* ---- an image in memory ------------------------------------------------------------------ */

typedef struct mem_io {
    const gpuseg_image *img;
    uint32_t page;
    gpuseg_image *labels;
} mem_io;

static gpuseg_status mem_read(void *user, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h,
                              gpuseg_image **out) {
    const mem_io *m = user;
    const gpuseg_image *im = m->img;
    gpuseg_status st = gpuseg_image_create(w, h, im->channels, 1, im->dtype, out);
    if (st != GPUSEG_OK)
        return st;
    const size_t px = (size_t)im->channels * gpuseg_dtype_size(im->dtype);
    const unsigned char *s =
        (const unsigned char *)im->data + (size_t)m->page * im->height * im->width * px;
    unsigned char *d = (*out)->data;
    for (uint32_t y = 0; y < h; y++)
        memcpy(d + (size_t)y * w * px, s + ((size_t)(y0 + y) * im->width + x0) * px, w * px);
    return GPUSEG_OK;
}

static gpuseg_status mem_write(void *user, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h,
                               const uint32_t *labels) {
    mem_io *m = user;
    uint32_t *d = m->labels->data;
    for (uint32_t y = 0; y < h; y++)
        memcpy(d + (size_t)(y0 + y) * m->labels->width + x0, labels + (size_t)y * w, w * sizeof *d);
    return GPUSEG_OK;
}

gpuseg_status gpuseg_segment_blocks_image(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *img,
                                          const gpuseg_segment_params *params,
                                          const gpuseg_blocks_params *bp, gpuseg_image **labels,
                                          gpuseg_blocks_result *result) {
    gpuseg__clear_error(ctx);
    if (!ctx || !img || !labels)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_segment_blocks_image: NULL argument");
    *labels = NULL;
    mem_io m = {img, params ? params->page : 0, NULL};
    if (m.page >= img->pages)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "page %u: the image has %u", m.page,
                            img->pages);
    gpuseg_status st =
        gpuseg_image_create(img->width, img->height, 1, 1, GPUSEG_DTYPE_U32, &m.labels);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(ctx, st, "blockwise labels");
    const gpuseg_block_source src = {img->width, img->height, mem_read, &m};
    st = gpuseg_segment_blocks(ctx, net, &src, params, bp, mem_write, &m, result);
    if (st != GPUSEG_OK) {
        gpuseg_image_free(m.labels);
        return st;
    }
    *labels = m.labels;
    return GPUSEG_OK;
}

/* ---- distributed runs: the plan once, then any block anywhere ----------------------------- */

gpuseg_status gpuseg_blocks_plan_compute(gpuseg_ctx *ctx, gpuseg_net *net,
                                         const gpuseg_block_source *src,
                                         const gpuseg_segment_params *params,
                                         const gpuseg_blocks_params *bparams,
                                         gpuseg_blocks_plan *plan) {
    gpuseg__clear_error(ctx);
    if (!ctx || !net || !src || !src->read || !plan)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_blocks_plan_compute: NULL argument");
    memset(plan, 0, sizeof *plan);
    gpuseg_segment_params p;
    gpuseg_blocks_params bp;
    if (params)
        p = *params;
    else
        gpuseg_segment_params_default(&p);
    if (bparams)
        bp = *bparams;
    else
        gpuseg_blocks_params_default(&bp);
    gpuseg_blocks_result res;
    memset(&res, 0, sizeof res);
    blocks_run b;
    gpuseg_status st = blocks_init(&b, ctx, net, src, &p, &bp, &res);
    if (st != GPUSEG_OK)
        goto done;
    const double t0 = gpuseg__now_s();
    gpuseg__progress(ctx, "percentiles", 0, 2, 0.0);
    if (b.pp.normalize && (st = percentiles(ctx, src, &b.pp, bp.block_size, b.par, &res)))
        goto done;
    p.size_model = NULL; /* not used with a diameter (blocks_init refuses it without one) */
    p.want_flows = p.want_style = 0;
    plan->version = GPUSEG_BLOCKS_PLAN_VERSION;
    plan->params = p;
    plan->width = src->width;
    plan->height = src->height;
    plan->block_size = bp.block_size;
    plan->halo = bp.halo;
    plan->n_blocks_x = (src->width + bp.block_size - 1) / bp.block_size;
    plan->n_blocks_y = (src->height + bp.block_size - 1) / bp.block_size;
    memcpy(plan->norm, b.par, sizeof plan->norm);
    plan->diameter = res.diameter;
    plan->rescale = res.rescale;
    plan->niter = res.niter;
    plan->n_tiles = res.n_tiles;
    plan->seconds_percentiles = gpuseg__now_s() - t0;
    gpuseg__progress(ctx, "done", 1, 1, 1.0);
done:
    if (st != GPUSEG_OK) {
        clFinish(ctx->queue);
        memset(plan, 0, sizeof *plan);
    }
    blocks_free(&b);
    return st;
}

gpuseg_status gpuseg_blocks_plan_core(const gpuseg_blocks_plan *plan, uint32_t k, uint32_t *x0,
                                      uint32_t *y0, uint32_t *w, uint32_t *h) {
    if (!plan || !x0 || !y0 || !w || !h)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_blocks_plan_core: NULL argument");
    if (plan->version != GPUSEG_BLOCKS_PLAN_VERSION)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "blocks plan: version %u, this library's is %u (not a plan made by "
                            "gpuseg_blocks_plan_compute?)",
                            plan->version, GPUSEG_BLOCKS_PLAN_VERSION);
    const uint64_t nb = (uint64_t)plan->n_blocks_x * plan->n_blocks_y;
    if (k >= nb)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "block %u: the plan has %llu blocks", k,
                            (unsigned long long)nb);
    const uint32_t bs = plan->block_size;
    *y0 = (k / plan->n_blocks_x) * bs;
    *x0 = (k % plan->n_blocks_x) * bs;
    *h = plan->height - *y0 < bs ? plan->height - *y0 : bs;
    *w = plan->width - *x0 < bs ? plan->width - *x0 : bs;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_segment_block(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_block_source *src,
                                   const gpuseg_blocks_plan *plan, uint32_t k, uint64_t *keys,
                                   gpuseg_block_result *result) {
    gpuseg__clear_error(ctx);
    if (!ctx || !net || !src || !src->read || !plan || !keys || !result)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "gpuseg_segment_block: NULL argument");
    memset(result, 0, sizeof *result);
    uint32_t cx0, cy0, cw, ch;
    gpuseg_status st = gpuseg_blocks_plan_core(plan, k, &cx0, &cy0, &cw, &ch);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(ctx, st, "gpuseg_segment_block");
    if (src->width != plan->width || src->height != plan->height)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_segment_block: the image is %ux%u, the plan's %ux%u",
                            src->width, src->height, plan->width, plan->height);
    if (plan->params.size_model)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_segment_block: the plan holds a size model pointer");
    gpuseg_blocks_params bp;
    gpuseg_blocks_params_default(&bp); /* no events, no resume */
    bp.block_size = plan->block_size;
    bp.halo = plan->halo;
    gpuseg_blocks_result res;
    memset(&res, 0, sizeof res);
    blocks_run b;
    const double t0 = gpuseg__now_s();
    if ((st = blocks_init(&b, ctx, net, src, &plan->params, &bp, &res)))
        goto done;
    if (res.rescale != plan->rescale || res.niter != plan->niter) {
        st = gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                          "gpuseg_segment_block: the plan was made with another model (rescale "
                          "%g, niter %u; this net gives %g, %u)",
                          plan->rescale, plan->niter, res.rescale, res.niter);
        goto done;
    }
    memcpy(b.par, plan->norm, sizeof b.par);
    b.keys = keys;
    if ((st = blocks_buffers(&b, &plan->params, plan->block_size)) ||
        (st = gpuseg__check_cancel(ctx, "blocks")) ||
        (st = run_block(&b, cy0, cx0, ch, cw, NULL, NULL))) {
        gpuseg__wrap(ctx, st, "block %u (%ux%u at (%u, %u))", k, cw, ch, cx0, cy0);
        goto done;
    }
    result->x0 = cx0;
    result->y0 = cy0;
    result->width = cw;
    result->height = ch;
    result->n_masks = b.keys_masks;
    result->n_too_big = res.n_too_big;
    result->n_tiles_run = res.n_tiles_run;
    result->seconds = gpuseg__now_s() - t0;
    gpuseg__progress(ctx, "done", 1, 1, 1.0);
done:
    if (st != GPUSEG_OK) {
        clFinish(ctx->queue);
        memset(result, 0, sizeof *result);
    }
    blocks_free(&b);
    return st;
}
