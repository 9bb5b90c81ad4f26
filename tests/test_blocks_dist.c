/* tests/test_blocks_dist.c: the distributed entries of the blockwise run
 * (gpuseg_blocks_plan_compute, gpuseg_segment_block; include/gpuseg/blocks.h): every block run on
 * its own through a plan copied byte for byte, its mask keys relabelled by increasing key, gives
 * the labels of gpuseg_segment_blocks_image up to renumbering (and the whole-image gpuseg_segment's
 * exactly, numbering included, when no mask is bigger than the halo); blocks run in any order give
 * the same keys; the plan's percentiles are the blockwise run's; bad plans and blocks are refused.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/gpuseg.h"
#include "testutil.h"

static gpuseg_ctx *g_ctx;
static gpuseg_net *g_net;

static void setup(void) {
    /* one convolution implementation (docs/blockwise.md), as test_blocks */
    setenv("GPUSEG_CONV", "direct", 1);
    g_ctx = tu_ctx();
    ck_assert_int_eq(gpuseg_net_load(g_ctx, GPUSEG_BUNDLED_MODEL, &g_net), GPUSEG_OK);
}

static void teardown(void) {
    gpuseg_net_free(g_net);
    gpuseg_ctx_free(g_ctx);
}

static gpuseg_status img_read(void *user, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h,
                              gpuseg_image **out) {
    const gpuseg_image *im = user;
    gpuseg_status st = gpuseg_image_create(w, h, im->channels, 1, im->dtype, out);
    if (st != GPUSEG_OK)
        return st;
    const size_t px = (size_t)im->channels * gpuseg_dtype_size(im->dtype);
    for (uint32_t y = 0; y < h; y++)
        memcpy((unsigned char *)(*out)->data + (size_t)y * w * px,
               (const unsigned char *)im->data + ((size_t)(y0 + y) * im->width + x0) * px, w * px);
    return GPUSEG_OK;
}

static uint32_t label_at(const gpuseg_image *im, size_t i) {
    return im->dtype == GPUSEG_DTYPE_U16 ? ((const uint16_t *)im->data)[i]
                                         : ((const uint32_t *)im->data)[i];
}

static int cmp_u64(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* keys -> 1..n by increasing key (0 stays 0) */
static uint32_t *relabel(const uint64_t *keys, size_t n, uint32_t *n_masks) {
    uint64_t *u = malloc(n * sizeof *u);
    uint32_t *out = malloc(n * sizeof *out);
    ck_assert(u && out);
    memcpy(u, keys, n * sizeof *u);
    qsort(u, n, sizeof *u, cmp_u64);
    size_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (u[i] && (m == 0 || u[m - 1] != u[i]))
            u[m++] = u[i];
    for (size_t i = 0; i < n; i++) {
        out[i] = 0;
        if (!keys[i])
            continue;
        const uint64_t *f = bsearch(&keys[i], u, m, sizeof *u, cmp_u64);
        ck_assert(f);
        out[i] = (uint32_t)(f - u) + 1;
    }
    free(u);
    *n_masks = (uint32_t)m;
    return out;
}

/* a and b are equal up to renumbering: one value bijection between them (0 <-> 0) */
static int same_up_to_renumbering(const uint32_t *a, const gpuseg_image *b, size_t n) {
    uint32_t ma = 0, mb = 0;
    for (size_t i = 0; i < n; i++) {
        ma = a[i] > ma ? a[i] : ma;
        mb = label_at(b, i) > mb ? label_at(b, i) : mb;
    }
    uint32_t *fa = calloc((size_t)ma + 1, 4), *fb = calloc((size_t)mb + 1, 4);
    ck_assert(fa && fb);
    int ok = 1;
    for (size_t i = 0; i < n && ok; i++) {
        const uint32_t x = a[i], y = label_at(b, i);
        if ((x == 0) != (y == 0))
            ok = 0;
        else if (x) {
            if (!fa[x] && !fb[y]) {
                fa[x] = y;
                fb[y] = x;
            } else if (fa[x] != y || fb[y] != x) {
                ok = 0;
            }
        }
    }
    free(fa);
    free(fb);
    return ok;
}

/* Runs img block by block through the distributed entries (blocks in the order `order`, each
 * with its own copy of the plan) and checks the labels against the blockwise and whole runs. */
static void check_dist(const gpuseg_image *img, uint32_t block_size, int reverse) {
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.diameter = 17;
    gpuseg_blocks_params bp;
    gpuseg_blocks_params_default(&bp);
    bp.block_size = block_size;
    const gpuseg_block_source src = {img->width, img->height, img_read, (void *)img};
    const size_t n = (size_t)img->width * img->height;

    gpuseg_blocks_plan plan;
    ck_assert_msg(gpuseg_blocks_plan_compute(g_ctx, g_net, &src, &p, &bp, &plan) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    ck_assert_uint_eq(plan.version, GPUSEG_BLOCKS_PLAN_VERSION);
    const uint32_t nb = plan.n_blocks_x * plan.n_blocks_y;
    ck_assert_uint_eq(plan.n_blocks_x, (img->width + block_size - 1) / block_size);
    ck_assert_uint_gt(nb, 4);

    uint64_t *keys = calloc(n, sizeof *keys), *core = malloc((size_t)block_size * block_size * 8);
    ck_assert(keys && core);
    uint32_t too_big = 0;
    for (uint32_t i = 0; i < nb; i++) {
        const uint32_t k = reverse ? nb - 1 - i : i;
        unsigned char bytes[sizeof plan]; /* what another process would receive */
        memcpy(bytes, &plan, sizeof plan);
        gpuseg_blocks_plan copy;
        memcpy(&copy, bytes, sizeof copy);
        gpuseg_block_result r;
        ck_assert_msg(gpuseg_segment_block(g_ctx, g_net, &src, &copy, k, core, &r) == GPUSEG_OK,
                      "%s", gpuseg_last_error());
        uint32_t x0, y0, w, h;
        ck_assert_int_eq(gpuseg_blocks_plan_core(&plan, k, &x0, &y0, &w, &h), GPUSEG_OK);
        ck_assert_uint_eq(r.x0, x0);
        ck_assert_uint_eq(r.y0, y0);
        ck_assert_uint_eq(r.width, w);
        ck_assert_uint_eq(r.height, h);
        ck_assert_uint_gt(r.n_tiles_run, 0);
        too_big += r.n_too_big;
        for (uint32_t y = 0; y < h; y++)
            memcpy(keys + (size_t)(y0 + y) * img->width + x0, core + (size_t)y * w, w * 8);
    }
    uint32_t nk;
    uint32_t *lab = relabel(keys, n, &nk);

    gpuseg_blocks_result br;
    gpuseg_image *blab = NULL;
    ck_assert_msg(gpuseg_segment_blocks_image(g_ctx, g_net, img, &p, &bp, &blab, &br) == GPUSEG_OK,
                  "%s", gpuseg_last_error());
    printf("%ux%u block %u halo %u: %u blocks, %u masks by keys, %u blockwise, too big %u/%u\n",
           img->width, img->height, block_size, plan.halo, nb, nk, br.n_masks, too_big,
           br.n_too_big);
    fflush(stdout);
    ck_assert_uint_eq(plan.halo, br.halo);
    ck_assert_uint_eq(plan.niter, br.niter);
    ck_assert(memcmp(&plan.norm[0], &br.norm_lo[0], 4) == 0);
    ck_assert(memcmp(&plan.norm[1], &br.norm_hi[0], 4) == 0);
    ck_assert(memcmp(&plan.norm[4], &br.norm_lo[1], 4) == 0);
    ck_assert_uint_eq(nk, br.n_masks);
    ck_assert_uint_eq(too_big, br.n_too_big);
    ck_assert_msg(same_up_to_renumbering(lab, blab, n),
                  "distributed labels differ from gpuseg_segment_blocks_image's");
    /* the whole-image run: equal numbering included (keys order = first appearance) */
    if (too_big == 0) {
        gpuseg_segment_result whole;
        ck_assert_msg(gpuseg_segment(g_ctx, g_net, img, &p, &whole) == GPUSEG_OK, "%s",
                      gpuseg_last_error());
        ck_assert_uint_eq(whole.n_masks, nk);
        for (size_t i = 0; i < n; i++)
            if (label_at(whole.labels, i) != lab[i])
                ck_abort_msg("pixel %zu: whole %u, distributed %u", i, label_at(whole.labels, i),
                             lab[i]);
        gpuseg_segment_result_free(&whole);
    }
    gpuseg_image_free(blab);
    free(lab);
    free(keys);
    free(core);
}

START_TEST(dist_equals_blockwise) {
    gpuseg_image *img;
    ck_assert_int_eq(gpuseg_image_read(GPUSEG_SOURCE_DIR "/examples/data/nuclei.png", &img),
                     GPUSEG_OK);
    check_dist(img, 96, 0);
    check_dist(img, 77, 1); /* odd size, blocks run last to first */
    gpuseg_image_free(img);
}
END_TEST

START_TEST(dist_errors) {
    gpuseg_image *img;
    ck_assert_int_eq(gpuseg_image_read(GPUSEG_SOURCE_DIR "/examples/data/nuclei.png", &img),
                     GPUSEG_OK);
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.diameter = 17;
    gpuseg_blocks_params bp;
    gpuseg_blocks_params_default(&bp);
    bp.block_size = 128;
    const gpuseg_block_source src = {img->width, img->height, img_read, img};
    gpuseg_blocks_plan plan;
    uint64_t *keys = malloc((size_t)128 * 128 * 8);
    ck_assert(keys);
    gpuseg_block_result r;
    /* the blockwise run's refusals */
    p.augment = 1;
    ck_assert_int_eq(gpuseg_blocks_plan_compute(g_ctx, g_net, &src, &p, &bp, &plan),
                     GPUSEG_UNSUPPORTED);
    ck_assert_uint_eq(plan.version, 0);
    p.augment = 0;
    ck_assert_int_eq(gpuseg_blocks_plan_compute(g_ctx, g_net, &src, &p, &bp, &plan), GPUSEG_OK);
    ck_assert_uint_eq(plan.n_blocks_x * plan.n_blocks_y, 4);
    /* block beyond the plan */
    ck_assert_int_eq(gpuseg_segment_block(g_ctx, g_net, &src, &plan, 4, keys, &r),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_msg(strstr(gpuseg_last_error(), "block 4: the plan has 4 blocks"), "%s",
                  gpuseg_last_error());
    /* another image size */
    const gpuseg_block_source other = {img->width - 1, img->height, img_read, img};
    ck_assert_int_eq(gpuseg_segment_block(g_ctx, g_net, &other, &plan, 0, keys, &r),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "the image is 255x256, the plan's 256x256"));
    /* not a plan */
    gpuseg_blocks_plan bad = plan;
    bad.version = 0;
    ck_assert_int_eq(gpuseg_segment_block(g_ctx, g_net, &src, &bad, 0, keys, &r),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "version 0"));
    /* a plan for another model (its rescale) */
    bad = plan;
    bad.rescale *= 2;
    ck_assert_int_eq(gpuseg_segment_block(g_ctx, g_net, &src, &bad, 0, keys, &r),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "another model"));
    /* cancel before the block: nothing run */
    gpuseg_ctx_cancel(g_ctx, 1);
    ck_assert_int_eq(gpuseg_segment_block(g_ctx, g_net, &src, &plan, 0, keys, &r),
                     GPUSEG_CANCELLED);
    gpuseg_ctx_cancel(g_ctx, 0);
    ck_assert_int_eq(gpuseg_segment_block(g_ctx, g_net, &src, &plan, 3, keys, &r), GPUSEG_OK);
    ck_assert_uint_eq(r.x0, 128);
    ck_assert_uint_eq(r.y0, 128);
    free(keys);
    gpuseg_image_free(img);
}
END_TEST

int main(void) {
    int dev = tu_require_device();
    if (dev != 0)
        return dev;
    Suite *s = suite_create("blocks_dist");
    TCase *d = tcase_create("device");
    tcase_set_timeout(d, 900);
    tcase_add_checked_fixture(d, setup, teardown);
    tcase_add_test(d, dist_equals_blockwise);
    tcase_add_test(d, dist_errors);
    suite_add_tcase(s, d);
    return tu_run(s);
}
