/* tests/test_blocks.c: blockwise segmentation (gpuseg_segment_blocks, docs/blockwise.md) against
 * the whole-image gpuseg_segment run with the bundled model: labels equal up to renumbering (a
 * bijection of label values with identical pixel sets) for every mask smaller than the halo,
 * on the example image and on a 700 x 900 mirror-tiling of it with small and odd block sizes;
 * the percentiles equal the whole image's to the bit; the largest device buffer stays under a
 * bound computed from the block size and halo alone, and under the whole-image run's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/gpuseg.h"
#include "prep/prep_internal.h"
#include "testutil.h"

static uint32_t label_at(const gpuseg_image *im, size_t i) {
    return im->dtype == GPUSEG_DTYPE_U16 ? ((const uint16_t *)im->data)[i]
                                         : ((const uint32_t *)im->data)[i];
}

/* Masks of `a` (whole image) without an identical mask in `b` (blockwise), and of b without one
 * in a: exact pixel-set equality through a value bijection. */
static void compare_labels(const gpuseg_image *a, const gpuseg_image *b, uint32_t *diff_a,
                           uint32_t *diff_b, uint32_t *na, uint32_t *nb) {
    const size_t n = (size_t)a->width * a->height;
    uint32_t ma = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        ma = label_at(a, i) > ma ? label_at(a, i) : ma;
        mb = label_at(b, i) > mb ? label_at(b, i) : mb;
    }
    uint32_t *fa = calloc((size_t)ma + 1, 4), *fb = calloc((size_t)mb + 1, 4);
    uint8_t *bad_a = calloc((size_t)ma + 1, 1), *bad_b = calloc((size_t)mb + 1, 1);
    uint32_t *ca = calloc((size_t)ma + 1, 4), *cb = calloc((size_t)mb + 1, 4);
    ck_assert(fa && fb && bad_a && bad_b && ca && cb);
    /* f(a) = the b label at a's pixels, which must be one and the same, and vice versa */
    for (size_t i = 0; i < n; i++) {
        uint32_t x = label_at(a, i), y = label_at(b, i);
        ca[x]++;
        cb[y]++;
        if (x) {
            if (!fa[x])
                fa[x] = y ? y : UINT32_MAX;
            else if (fa[x] != (y ? y : UINT32_MAX))
                bad_a[x] = 1;
        }
        if (y) {
            if (!fb[y])
                fb[y] = x ? x : UINT32_MAX;
            else if (fb[y] != (x ? x : UINT32_MAX))
                bad_b[y] = 1;
        }
    }
    *diff_a = *diff_b = *na = *nb = 0;
    for (uint32_t x = 1; x <= ma; x++) {
        if (!ca[x])
            continue;
        (*na)++;
        uint32_t y = fa[x];
        if (bad_a[x] || y == UINT32_MAX || bad_b[y] || fb[y] != x || cb[y] != ca[x])
            (*diff_a)++;
    }
    for (uint32_t y = 1; y <= mb; y++) {
        if (!cb[y])
            continue;
        (*nb)++;
        uint32_t x = fb[y];
        if (bad_b[y] || x == UINT32_MAX || bad_a[x] || fa[x] != y || ca[x] != cb[y])
            (*diff_b)++;
    }
    free(fa);
    free(fb);
    free(bad_a);
    free(bad_b);
    free(ca);
    free(cb);
}

/* The example image mirror-tiled to h x w (grey, same dtype). */
static gpuseg_image *mirrored(const gpuseg_image *s, uint32_t w, uint32_t h) {
    gpuseg_image *o;
    ck_assert_int_eq(gpuseg_image_create(w, h, s->channels, 1, s->dtype, &o), GPUSEG_OK);
    const size_t px = (size_t)s->channels * gpuseg_dtype_size(s->dtype);
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w; x++) {
            uint32_t sy = y % (2 * s->height), sx = x % (2 * s->width);
            sy = sy < s->height ? sy : 2 * s->height - 1 - sy;
            sx = sx < s->width ? sx : 2 * s->width - 1 - sx;
            memcpy((unsigned char *)o->data + ((size_t)y * w + x) * px,
                   (const unsigned char *)s->data + ((size_t)sy * s->width + sx) * px, px);
        }
    return o;
}

static gpuseg_ctx *g_ctx;
static gpuseg_net *g_net;

static void setup(void) {
    /* one convolution implementation: AUTO measures per batch size, and a block's last batch
     * has another size than the whole run's (docs/blockwise.md) */
    setenv("GPUSEG_CONV", "direct", 1);
    g_ctx = tu_ctx();
    ck_assert_int_eq(gpuseg_net_load(g_ctx, GPUSEG_BUNDLED_MODEL, &g_net), GPUSEG_OK);
}

static void teardown(void) {
    gpuseg_net_free(g_net);
    gpuseg_ctx_free(g_ctx);
}

static uint32_t g_last_tiles, g_last_blocks; /* check_equal's last blockwise run's */

/* Whole vs blockwise at each block size (and halo, 0: the default; halos NULL: all 0); each
 * tile of the whole grid runs once (the tile cache); with `uncached`, the first size also runs
 * without the cache: more tiles, the same labels to the bit. Returns the blockwise largest
 * device buffer of the last. */
static size_t check_equal(const gpuseg_image *img, double diameter, const uint32_t *sizes,
                          const uint32_t *halos, int nsizes, unsigned batch, int uncached,
                          size_t *whole_largest) {
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.batch_size = batch;
    p.diameter = diameter;
    gpuseg_segment_result whole;
    gpuseg__largest_buffer(g_ctx, 1);
    ck_assert_msg(gpuseg_segment(g_ctx, g_net, img, &p, &whole) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    *whole_largest = gpuseg__largest_buffer(g_ctx, 1);
    /* the whole image's percentiles, as the prep computes them */
    gpuseg__prep_params pp;
    gpuseg__prep_params_default(&pp);
    pp.no_tiles = 1;
    gpuseg__prep_out in;
    ck_assert_int_eq(gpuseg__prep_image(g_ctx, img, &pp, &in), GPUSEG_OK);
    size_t largest = 0;
    for (int k = 0; k < nsizes; k++) {
        gpuseg_blocks_params bp;
        gpuseg_blocks_params_default(&bp);
        bp.block_size = sizes[k];
        bp.halo = halos ? halos[k] : 0;
        gpuseg_blocks_result br;
        gpuseg_image *lab = NULL;
        gpuseg__largest_buffer(g_ctx, 1);
        ck_assert_msg(gpuseg_segment_blocks_image(g_ctx, g_net, img, &p, &bp, &lab, &br) ==
                          GPUSEG_OK,
                      "%s", gpuseg_last_error());
        largest = gpuseg__largest_buffer(g_ctx, 1);
        /* a bound from the block size alone: the blend sums of the tiles' span (16 bytes per
         * resized pixel; the span is the window's plus at most a tile on each side) or the
         * window's flows (12 bytes per pixel) */
        const double win = sizes[k] + 2.0 * br.halo + 1;
        const double span = ceil(br.rescale * win) + 2.0 * 224 + 4;
        const double bound = 16 * span * span > 12 * win * win ? 16 * span * span : 12 * win * win;
        ck_assert_msg((double)largest <= bound, "largest buffer %zu above the bound %.0f", largest,
                      bound);
        for (int c = 0; c < 2; c++) {
            ck_assert_msg(memcmp(&br.norm_lo[c], &in.stats.lo[c], 4) == 0 &&
                              memcmp(&br.norm_hi[c], &in.stats.hi[c], 4) == 0,
                          "percentiles of channel %d: blocks %.9g %.9g, whole %.9g %.9g", c,
                          (double)br.norm_lo[c], (double)br.norm_hi[c], (double)in.stats.lo[c],
                          (double)in.stats.hi[c]);
        }
        uint32_t da, db, na, nb;
        compare_labels(whole.labels, lab, &da, &db, &na, &nb);
        printf("%ux%u block %u halo %u: %u blocks, %llu tiles (whole %u), whole %u masks, blocks "
               "%u (%u written), differing %u / %u, bigger than the halo %u, largest buffer %zu "
               "(whole %zu)\n",
               img->width, img->height, sizes[k], br.halo, br.n_blocks,
               (unsigned long long)br.n_tiles_run, br.n_tiles, na, nb, br.n_masks, da, db,
               br.n_too_big, largest, *whole_largest);
        printf("  tile cache peak %llu bytes\n", (unsigned long long)br.tile_cache_peak);
        fflush(stdout);
        /* every tile of the whole grid went through the network once; the cache held some of
         * them (tiles are at most 224 x 224) */
        ck_assert_uint_eq(br.n_tiles_run, br.n_tiles);
        g_last_tiles = br.n_tiles;
        g_last_blocks = br.n_blocks;
        if (br.n_tiles > 1)
            ck_assert_uint_gt(br.tile_cache_peak, 0);
        ck_assert_uint_le(br.tile_cache_peak, (uint64_t)br.n_tiles * 3 * 224 * 224 * 4);
        ck_assert_uint_eq(na, whole.n_masks);
        /* every difference must come from a mask the blocks flagged as bigger than the halo */
        if (br.n_too_big == 0) {
            ck_assert_uint_eq(da, 0);
            ck_assert_uint_eq(db, 0);
        } else {
            ck_assert_uint_le(da, br.n_too_big);
        }
        if (uncached && k == 0) {
            gpuseg_blocks_params nc = bp;
            nc.no_tile_cache = 1;
            gpuseg_blocks_result rn;
            gpuseg_image *ln = NULL;
            ck_assert_msg(gpuseg_segment_blocks_image(g_ctx, g_net, img, &p, &nc, &ln, &rn) ==
                              GPUSEG_OK,
                          "%s", gpuseg_last_error());
            printf("  without the tile cache: %llu tiles\n", (unsigned long long)rn.n_tiles_run);
            ck_assert_uint_gt(rn.n_tiles_run, br.n_tiles);
            ck_assert_uint_eq(rn.tile_cache_peak, 0);
            ck_assert_uint_eq(rn.n_masks, br.n_masks);
            ck_assert_msg(memcmp(ln->data, lab->data, (size_t)img->width * img->height * 4) == 0,
                          "labels with and without the tile cache differ");
            gpuseg_image_free(ln);
        }
        gpuseg_image_free(lab);
    }
    gpuseg__prep_out_free(&in);
    gpuseg_segment_result_free(&whole);
    return largest;
}

START_TEST(blocks_equal_whole_example) {
    gpuseg_image *img;
    ck_assert_int_eq(gpuseg_image_read(GPUSEG_SOURCE_DIR "/examples/data/nuclei.png", &img),
                     GPUSEG_OK);
    const uint32_t sizes[] = {96, 128, 77};
    size_t wl;
    check_equal(img, 0, sizes, NULL, 3, 8, 1, &wl);
    gpuseg_image_free(img);
}
END_TEST

START_TEST(blocks_equal_whole_large) {
    gpuseg_image *src, *img;
    ck_assert_int_eq(gpuseg_image_read(GPUSEG_SOURCE_DIR "/examples/data/nuclei.png", &src),
                     GPUSEG_OK);
    img = mirrored(src, 700, 900);
    const uint32_t sizes[] = {128, 201};
    size_t wl;
    size_t largest = check_equal(img, 0, sizes, NULL, 2, 8, 0, &wl);
    ck_assert_uint_lt(largest, wl); /* below the whole-image run's largest buffer */
    gpuseg_image_free(src);
    gpuseg_image_free(img);
}
END_TEST

/* The tile cache where a tile is needed by many blocks: at diameter 8 the image is resized
 * about 2x (the grid 4 x 4 tiles, each 112 image pixels), so with blocks of 48 and a halo of 100
 * (more than a tile) each tile row and column is needed by 5 or 6 block rows and columns; each
 * tile still runs once, and the labels equal the whole image's and the uncached run's. */
START_TEST(blocks_equal_whole_tiles) {
    gpuseg_image *src, *img;
    ck_assert_int_eq(gpuseg_image_read(GPUSEG_SOURCE_DIR "/examples/data/nuclei.png", &src),
                     GPUSEG_OK);
    img = mirrored(src, 300, 260);
    const uint32_t sizes[] = {48}, halos[] = {100};
    size_t wl;
    check_equal(img, 8, sizes, halos, 1, 8, 1, &wl);
    ck_assert_uint_ge(g_last_tiles, 12);
    ck_assert_uint_eq(g_last_blocks, 7 * 6);
    gpuseg_image_free(src);
    gpuseg_image_free(img);
}
END_TEST

START_TEST(blocks_errors) {
    gpuseg_image *img;
    ck_assert_int_eq(gpuseg_image_read(GPUSEG_SOURCE_DIR "/examples/data/nuclei.png", &img),
                     GPUSEG_OK);
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    gpuseg_blocks_params bp;
    gpuseg_blocks_params_default(&bp);
    gpuseg_blocks_result br;
    gpuseg_image *lab = NULL;
    bp.block_size = 4;
    ck_assert_int_eq(gpuseg_segment_blocks_image(g_ctx, g_net, img, &p, &bp, &lab, &br),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_null(lab);
    ck_assert(strstr(gpuseg_last_error(), "block size 4"));
    bp.block_size = 128;
    p.augment = 1;
    ck_assert_int_eq(gpuseg_segment_blocks_image(g_ctx, g_net, img, &p, &bp, &lab, &br),
                     GPUSEG_UNSUPPORTED);
    /* cancel: requested before the run, stops it with nothing written */
    p.augment = 0;
    gpuseg_ctx_cancel(g_ctx, 1);
    ck_assert_int_eq(gpuseg_segment_blocks_image(g_ctx, g_net, img, &p, &bp, &lab, &br),
                     GPUSEG_CANCELLED);
    ck_assert_ptr_null(lab);
    gpuseg_ctx_cancel(g_ctx, 0);
    gpuseg_image_free(img);
}
END_TEST

/* ---- resuming (gpuseg_blocks_params' resume fields and events) ---------------------------- */

typedef struct recorder {
    const gpuseg_image *img;
    uint32_t stop_after; /* cancel the context once this many blocks are done (0: never) */
    uint32_t blocks;     /* block events seen */
    float norm[8];
    int have_norm;
    uint64_t first[4096]; /* first pixels of the masks, label order */
    uint32_t n_first;
    uint32_t count[4096]; /* pixels of each new mask in its block's event */
    gpuseg_image *labels; /* U32, written by the sink */
} recorder;

static gpuseg_status rec_read(void *user, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h,
                              gpuseg_image **out) {
    const recorder *r = user;
    const gpuseg_image *im = r->img;
    ck_assert_int_eq(gpuseg_image_create(w, h, im->channels, 1, im->dtype, out), GPUSEG_OK);
    const size_t px = (size_t)im->channels * gpuseg_dtype_size(im->dtype);
    for (uint32_t y = 0; y < h; y++)
        memcpy((unsigned char *)(*out)->data + (size_t)y * w * px,
               (const unsigned char *)im->data + ((size_t)(y0 + y) * im->width + x0) * px, w * px);
    return GPUSEG_OK;
}

static gpuseg_status rec_sink(void *user, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h,
                              const uint32_t *lab) {
    recorder *r = user;
    uint32_t *d = r->labels->data;
    for (uint32_t y = 0; y < h; y++)
        memcpy(d + (size_t)(y0 + y) * r->labels->width + x0, lab + (size_t)y * w, w * 4);
    return GPUSEG_OK;
}

static gpuseg_status rec_event(void *user, const gpuseg_blocks_event *ev) {
    recorder *r = user;
    if (ev->block == GPUSEG_BLOCKS_NORM) {
        memcpy(r->norm, ev->norm, sizeof r->norm);
        r->have_norm = 1;
        return GPUSEG_OK;
    }
    ck_assert_uint_eq(ev->block, r->blocks);
    ck_assert_uint_eq(ev->first_label, r->n_first + 1);
    ck_assert_uint_le(r->n_first + ev->n_new, 4096);
    for (uint32_t i = 0; i < ev->n_new; i++) {
        const uint64_t f = ev->first_pixel[i];
        const uint32_t fy = (uint32_t)(f / r->img->width), fx = (uint32_t)(f % r->img->width);
        /* the first pixel is in the window and labelled with the mask */
        ck_assert(fy >= ev->y0 && fy < ev->y0 + ev->height && fx >= ev->x0 &&
                  fx < ev->x0 + ev->width);
        ck_assert_uint_eq(ev->labels[(size_t)(fy - ev->y0) * ev->width + fx - ev->x0],
                          ev->first_label + i);
        r->first[r->n_first + i] = f;
    }
    for (size_t i = 0; i < (size_t)ev->width * ev->height; i++) {
        const uint32_t l = ev->labels[i];
        if (!l)
            continue;
        ck_assert(l >= ev->first_label && l < ev->first_label + ev->n_new);
        r->count[l - 1]++;
    }
    r->n_first += ev->n_new;
    r->blocks++;
    if (r->stop_after && r->blocks == r->stop_after)
        gpuseg_ctx_cancel(g_ctx, 1);
    return GPUSEG_OK;
}

/* A run interrupted (cancelled from the event of block 4) and resumed from what its events gave
 * writes labels identical to an uninterrupted run's, to the bit; each new mask's event holds
 * all its pixels. */
START_TEST(blocks_resume_equal) {
    gpuseg_image *src = NULL;
    ck_assert_int_eq(gpuseg_image_read(GPUSEG_SOURCE_DIR "/examples/data/nuclei.png", &src),
                     GPUSEG_OK);
    gpuseg_image *img = mirrored(src, 300, 260);
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.diameter = 20;
    gpuseg_blocks_params bp;
    gpuseg_blocks_params_default(&bp);
    bp.block_size = 96; /* 4 x 3 blocks */
    bp.on_event = rec_event;
    const gpuseg_block_source bs = {img->width, img->height, rec_read, NULL};
    static recorder full, part;
    full.img = part.img = img;
    ck_assert_int_eq(
        gpuseg_image_create(img->width, img->height, 1, 1, GPUSEG_DTYPE_U32, &full.labels),
        GPUSEG_OK);
    ck_assert_int_eq(
        gpuseg_image_create(img->width, img->height, 1, 1, GPUSEG_DTYPE_U32, &part.labels),
        GPUSEG_OK);
    memset(full.labels->data, 0, (size_t)img->width * img->height * 4);
    memset(part.labels->data, 0, (size_t)img->width * img->height * 4);
    gpuseg_block_source s1 = bs;
    s1.user = &full;
    bp.event_user = &full;
    gpuseg_blocks_result rf, rp;
    ck_assert_msg(gpuseg_segment_blocks(g_ctx, g_net, &s1, &p, &bp, rec_sink, &full, &rf) ==
                      GPUSEG_OK,
                  "%s", gpuseg_last_error());
    ck_assert_uint_eq(rf.n_blocks, 12);
    ck_assert_uint_eq(rf.n_tiles_run, rf.n_tiles); /* the tile cache: each tile once */
    ck_assert_uint_eq(full.blocks, 12);
    ck_assert(full.have_norm);
    ck_assert_uint_eq(full.n_first, rf.n_masks);
    ck_assert_uint_gt(rf.n_masks, 20);
    /* each mask's event held all its pixels (the final labels' count) */
    uint32_t *cnt = calloc((size_t)rf.n_masks + 1, sizeof *cnt);
    ck_assert_ptr_nonnull(cnt);
    for (size_t i = 0; i < (size_t)img->width * img->height; i++)
        cnt[((const uint32_t *)full.labels->data)[i]]++;
    for (uint32_t l = 1; l <= rf.n_masks; l++)
        ck_assert_msg(cnt[l] == full.count[l - 1], "mask %u: %u pixels, its event %u", l, cnt[l],
                      full.count[l - 1]);
    free(cnt);
    /* interrupted after 4 blocks */
    gpuseg_block_source s2 = bs;
    s2.user = &part;
    bp.event_user = &part;
    part.stop_after = 4;
    ck_assert_int_eq(gpuseg_segment_blocks(g_ctx, g_net, &s2, &p, &bp, rec_sink, &part, &rp),
                     GPUSEG_CANCELLED);
    gpuseg_ctx_cancel(g_ctx, 0);
    ck_assert_uint_eq(part.blocks, 4);
    ck_assert_int_ne(
        memcmp(part.labels->data, full.labels->data, (size_t)img->width * img->height * 4), 0);
    /* resumed: the percentiles, the blocks done and their masks handed back */
    part.stop_after = 0;
    gpuseg_blocks_params rb = bp;
    rb.norm = part.norm;
    rb.first_block = part.blocks;
    rb.n_known = part.n_first;
    rb.known_masks = part.first;
    ck_assert_msg(gpuseg_segment_blocks(g_ctx, g_net, &s2, &p, &rb, rec_sink, &part, &rp) ==
                      GPUSEG_OK,
                  "%s", gpuseg_last_error());
    ck_assert_uint_eq(rp.n_blocks, 8);
    /* the resumed run starts with an empty tile cache: the tiles its blocks need, each once */
    ck_assert_uint_gt(rp.n_tiles_run, 0);
    ck_assert_uint_le(rp.n_tiles_run, rf.n_tiles);
    ck_assert_uint_eq(rp.n_masks, rf.n_masks);
    ck_assert_uint_eq(part.blocks, 12);
    ck_assert(memcmp(&rp.norm_lo, &rf.norm_lo, sizeof rf.norm_lo) == 0);
    ck_assert(memcmp(part.first, full.first, rf.n_masks * sizeof *full.first) == 0);
    ck_assert_msg(
        memcmp(part.labels->data, full.labels->data, (size_t)img->width * img->height * 4) == 0,
        "resumed labels differ from the uninterrupted run's");
    /* resume fields that cannot be right */
    rb.first_block = 13;
    ck_assert_int_eq(gpuseg_segment_blocks(g_ctx, g_net, &s2, &p, &rb, rec_sink, &part, &rp),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "first block 13, but the image has 12 blocks"));
    rb.first_block = 4;
    uint64_t twice[2] = {part.first[0], part.first[0]};
    rb.known_masks = twice;
    rb.n_known = 2;
    ck_assert_int_eq(gpuseg_segment_blocks(g_ctx, g_net, &s2, &p, &rb, rec_sink, &part, &rp),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "start at the same pixel"));
    gpuseg_image_free(full.labels);
    gpuseg_image_free(part.labels);
    gpuseg_image_free(img);
    gpuseg_image_free(src);
}
END_TEST

int main(void) {
    int dev = tu_require_device();
    if (dev != 0)
        return dev;
    Suite *s = suite_create("blocks");
    TCase *d = tcase_create("device");
    tcase_set_timeout(d, 900);
    tcase_add_checked_fixture(d, setup, teardown);
    tcase_add_test(d, blocks_equal_whole_example);
    tcase_add_test(d, blocks_errors);
    tcase_add_test(d, blocks_resume_equal);
    tcase_add_test(d, blocks_equal_whole_tiles);
    tcase_add_test(d, blocks_equal_whole_large);
    suite_add_tcase(s, d);
    return tu_run(s);
}
