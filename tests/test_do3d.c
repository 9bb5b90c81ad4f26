/* tests/test_do3d.c: 3-D segmentation (Cellpose 3.1.1.3's eval(do_3D=True), issue #18) against
 * Cellpose on the same model file: tests/fixtures/do3d (tools/fixtures/make_do3d_fixtures.py,
 * on the 12 x 61 x 57 crop of stardist's img3d.tif that tests/fixtures/stack holds, diameter 11,
 * the bundled model): (a) anisotropy 1, (b) anisotropy 2 on every other plane, (c) flow3D_smooth
 * 1. The combined flows (dZ, dY, dX, cellprob) at 600-1000 fixed voxels and their sums over the
 * volume, and the masks (AP@0.5 >= 0.99 against Cellpose's; voxels identical counted), through
 * gpuseg_segment_volume and `gpuseg segment --do-3d` (.tif, .npy, .bin + .json); refusals. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gpuseg/gpuseg.h"
#include "testutil.h"

#define FIXTURES GPUSEG_SOURCE_DIR "/tests/fixtures/do3d"
#define CROP     GPUSEG_SOURCE_DIR "/tests/fixtures/stack/img3d_crop.tif"

static int g_dev;

/* The cases of the fixture script: planes 0::zstep of the crop, anisotropy, flow3D_smooth; two:
 * a second channel (the crop mirrored in X), segmented with channels [1, 2]. */
static const struct {
    const char *name;
    uint32_t zstep;
    double aniso, smooth;
    int two;
} CASES[] = {
    {"a", 1, 1.0, 0.0, 0}, {"b", 2, 2.0, 0.0, 0}, {"c", 1, 1.0, 1.0, 0}, {"d", 1, 1.0, 0.0, 1}};

/* Flows tolerance, as a fraction of each channel's largest |value| over the volume (dZ, dY, dX
 * up to ~9-10, cellprob up to ~29: sums of two or three views). Measured on PoCL: at most
 * ~9e-6 absolute, 6e-7 of a channel's range. Each voxel is a sum of two or three
 * networks' outputs (each within ~3e-6 of range of PyTorch's, docs/net.md: the convolutions sum
 * in another order), blended and resized twice (bilinear, float32); 2e-5 of range leaves 30x
 * room for other devices (GPUs' fused multiply-adds) and stays far below what moves a mask. */
#define FLOW_TOL 2e-5

/* Planes 0, step, 2 step, ... of img (uint16, one channel). */
static gpuseg_image *planes(const gpuseg_image *img, uint32_t step) {
    uint32_t Z = (img->pages + step - 1) / step;
    gpuseg_image *o = NULL;
    ck_assert_int_eq(gpuseg_image_create(img->width, img->height, img->channels, Z, img->dtype, &o),
                     GPUSEG_OK);
    size_t plane = (size_t)img->width * img->height * img->channels * gpuseg_dtype_size(img->dtype);
    for (uint32_t z = 0; z < Z; z++)
        memcpy((char *)o->data + z * plane, (const char *)img->data + (size_t)z * step * plane,
               plane);
    return o;
}

static uint32_t *image_u32(const gpuseg_image *im) {
    size_t n = (size_t)im->width * im->height * im->pages;
    uint32_t *v = malloc(n * sizeof *v);
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(im->channels, 1);
    for (size_t i = 0; i < n; i++)
        v[i] = im->dtype == GPUSEG_DTYPE_U8    ? ((const uint8_t *)im->data)[i]
               : im->dtype == GPUSEG_DTYPE_U16 ? ((const uint16_t *)im->data)[i]
                                               : ((const uint32_t *)im->data)[i];
    return v;
}

/* Reads a .tif / .npy label volume as uint32 (pages must be Z). */
static uint32_t *read_labels(const char *path, uint32_t *Z, uint32_t *H, uint32_t *W) {
    gpuseg_image *im = NULL;
    ck_assert_msg(gpuseg_image_read(path, &im) == GPUSEG_OK, "%s", gpuseg_last_error());
    *Z = im->pages;
    *H = im->height;
    *W = im->width;
    uint32_t *v = image_u32(im);
    gpuseg_image_free(im);
    return v;
}

/* AP@0.5 of pred against Cellpose's masks (a volume scored as one image of Z*H rows: IoU counts
 * voxels by label) and the count of identical voxels. */
static double masks_ap(const uint32_t *want, const uint32_t *have, uint32_t Z, uint32_t H,
                       uint32_t W, size_t *same, gpuseg_ap_result *res) {
    const double thr[1] = {0.5};
    ck_assert_int_eq(gpuseg_metrics_ap(want, have, Z * H, W, thr, 1, res), GPUSEG_OK);
    size_t s = 0, n = (size_t)Z * H * W;
    for (size_t i = 0; i < n; i++)
        s += want[i] == have[i];
    *same = s;
    return res->ap;
}

static json_t *g_manifest;

static json_t *manifest_case(const char *name) {
    if (!g_manifest) {
        json_error_t e;
        g_manifest = json_load_file(FIXTURES "/manifest.json", 0, &e);
        ck_assert_msg(g_manifest != NULL, "manifest.json: %s", e.text);
    }
    json_t *cases = json_object_get(g_manifest, "cases");
    for (size_t i = 0; i < json_array_size(cases); i++) {
        json_t *c = json_array_get(cases, i);
        if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0)
            return c;
    }
    ck_abort_msg("manifest.json: no case %s", name);
    return NULL;
}

/* gpuseg_segment_volume with case k's anisotropy and flow3D_smooth; asserts success. */
static void run_case(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *img,
                     const gpuseg_segment_params *p, size_t k, gpuseg_segment_result *r) {
    ck_assert_msg(gpuseg_segment_volume(ctx, net, img, p, CASES[k].aniso, CASES[k].smooth, r) ==
                      GPUSEG_OK,
                  "case %s: %s", CASES[k].name, gpuseg_last_error());
}

static void check_case(size_t k) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert_msg(gpuseg_net_load(ctx, GPUSEG_BUNDLED_MODEL, &net) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    gpuseg_image *crop = NULL;
    ck_assert_int_eq(gpuseg_image_read(CROP, &crop), GPUSEG_OK);
    gpuseg_image *img = planes(crop, CASES[k].zstep);
    const uint32_t Z = img->pages, H = img->height, W = img->width;
    const size_t n = (size_t)Z * H * W;
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.diameter = 11;
    p.want_flows = 1;
    if (CASES[k].two) { /* (Z, Y, X, 2): the crop, then the crop mirrored in X */
        gpuseg_image *two = NULL;
        ck_assert_int_eq(gpuseg_image_create(W, H, 2, Z, GPUSEG_DTYPE_U16, &two), GPUSEG_OK);
        const uint16_t *a = img->data;
        uint16_t *b = two->data;
        for (size_t i = 0; i < n; i++) {
            b[2 * i] = a[i];
            b[2 * i + 1] = a[i - i % W + (W - 1 - i % W)];
        }
        gpuseg_image_free(img);
        img = two;
        p.chan = 1;
        p.chan2 = 2;
    }
    gpuseg_segment_result r;
    run_case(ctx, net, img, &p, k, &r);
    ck_assert_ptr_nonnull(r.flows);
    ck_assert(r.labels->pages == Z && r.labels->height == H && r.labels->width == W);
    json_t *mc = manifest_case(CASES[k].name);
    /* flows at the fixture's voxels */
    char path[1024];
    snprintf(path, sizeof path, FIXTURES "/%s_flows.npy", CASES[k].name);
    gpuseg_npy *s = NULL;
    ck_assert_msg(gpuseg_npy_read(path, &s) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert(s->dtype == GPUSEG_DTYPE_F32 && s->ndim == 2 && s->shape[1] == 5);
    const float *sv = s->data;
    double maxe[4] = {0}, range[4];
    for (int c = 0; c < 4; c++)
        range[c] = json_real_value(json_array_get(json_object_get(mc, "max_abs"), (size_t)c));
    for (size_t i = 0; i < s->shape[0]; i++) {
        size_t v = (size_t)sv[5 * i];
        ck_assert_uint_lt(v, n);
        for (int c = 0; c < 4; c++) {
            double e = fabs((double)r.flows[(size_t)c * n + v] - (double)sv[5 * i + 1 + c]);
            maxe[c] = e > maxe[c] ? e : maxe[c];
        }
    }
    /* sums over every voxel: a loose check of the voxels the sample leaves out */
    double sum_e[4];
    for (int c = 0; c < 4; c++) {
        double sum = 0, sa = 0, gmax = 0;
        for (size_t i = 0; i < n; i++) {
            double f = r.flows[(size_t)c * n + i];
            sum += f;
            sa += fabs(f);
            gmax = fabs(f) > gmax ? fabs(f) : gmax;
        }
        double want = json_real_value(json_array_get(json_object_get(mc, "sum"), (size_t)c));
        double want_a = json_real_value(json_array_get(json_object_get(mc, "sum_abs"), (size_t)c));
        sum_e[c] = fabs(sum - want) / (double)n;
        ck_assert_msg(fabs(sa - want_a) / (double)n <= FLOW_TOL * range[c],
                      "case %s channel %d: mean |v| %.6g vs Cellpose's %.6g", CASES[k].name, c,
                      sa / (double)n, want_a / (double)n);
        ck_assert_msg(fabs(gmax - range[c]) <= FLOW_TOL * range[c],
                      "case %s channel %d: max |v| %.6g vs Cellpose's %.6g", CASES[k].name, c, gmax,
                      range[c]);
    }
    for (int c = 0; c < 4; c++) {
        ck_assert_msg(maxe[c] <= FLOW_TOL * range[c],
                      "case %s channel %d: max |error| %.3g at the sampled voxels, over %.3g "
                      "(%g of its range %.3g)",
                      CASES[k].name, c, maxe[c], FLOW_TOL * range[c], FLOW_TOL, range[c]);
        ck_assert_msg(sum_e[c] <= FLOW_TOL * range[c], "case %s channel %d: mean differs by %.3g",
                      CASES[k].name, c, sum_e[c]);
    }
    /* masks */
    uint32_t d[3];
    snprintf(path, sizeof path, FIXTURES "/%s_masks.tif", CASES[k].name);
    uint32_t *want = read_labels(path, &d[0], &d[1], &d[2]);
    ck_assert(d[0] == Z && d[1] == H && d[2] == W);
    uint32_t *have = image_u32(r.labels);
    size_t same;
    gpuseg_ap_result res;
    double ap = masks_ap(want, have, Z, H, W, &same, &res);
    fprintf(stderr,
            "do_3D case %s (%ux%ux%u, anisotropy %g, flow3D_smooth %g): flows max |error| dZ %.2g "
            "dY %.2g dX %.2g cellprob %.2g (ranges %.3g %.3g %.3g %.3g); masks %u vs Cellpose's "
            "%u, AP@0.5 %.4f, %zu of %zu voxels identical\n",
            CASES[k].name, Z, H, W, CASES[k].aniso, CASES[k].smooth, maxe[0], maxe[1], maxe[2],
            maxe[3], range[0], range[1], range[2], range[3], r.n_masks, res.n_true, ap, same, n);
    ck_assert_msg(ap >= 0.99, "case %s: AP@0.5 %.4f against Cellpose's masks (%u vs %u)",
                  CASES[k].name, ap, res.n_pred, res.n_true);
    ck_assert_uint_eq(r.n_masks, (uint32_t)json_integer_value(json_object_get(mc, "n_masks")));
    /* without want_flows the masks step takes the flows over and gives their pages back as it
     * reads them (and the resizes theirs): the same labels, voxel for voxel */
    p.want_flows = 0;
    gpuseg_segment_result r2;
    run_case(ctx, net, img, &p, k, &r2);
    ck_assert_ptr_null(r2.flows);
    ck_assert_uint_eq(r2.n_masks, r.n_masks);
    uint32_t *have2 = image_u32(r2.labels);
    ck_assert_msg(memcmp(have, have2, n * sizeof *have) == 0,
                  "case %s: labels differ when the flows are handed over", CASES[k].name);
    free(have2);
    gpuseg_segment_result_free(&r2);
    free(want);
    free(have);
    gpuseg_npy_free(s);
    gpuseg_segment_result_free(&r);
    gpuseg_image_free(img);
    gpuseg_image_free(crop);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}

START_TEST(volume_matches_cellpose) {
    if (g_dev)
        return;
    check_case((size_t)_i);
}
END_TEST

START_TEST(volume_errors) {
    if (g_dev)
        return;
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert_int_eq(gpuseg_net_load(ctx, GPUSEG_BUNDLED_MODEL, &net), GPUSEG_OK);
    gpuseg_image *crop = NULL;
    ck_assert_int_eq(gpuseg_image_read(CROP, &crop), GPUSEG_OK);
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.diameter = 11;
    gpuseg_segment_result r;
    ck_assert_int_eq(gpuseg_segment_volume(ctx, net, crop, &p, 0.0, 0.0, &r),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "anisotropy"));
    ck_assert_int_eq(gpuseg_segment_volume(ctx, net, crop, &p, 1.0, -1.0, &r),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "flow3D_smooth"));
    ck_assert_int_eq(gpuseg_segment_volume(ctx, net, crop, &p, 1.0, NAN, &r),
                     GPUSEG_INVALID_ARGUMENT);
    gpuseg_image *one = planes(crop, 12); /* one plane */
    ck_assert_uint_eq(one->pages, 1);
    ck_assert_int_eq(gpuseg_segment_volume(ctx, net, one, &p, 1.0, 0.0, &r),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "Z stack"));
    ck_assert_int_eq(tu_count_lines(gpuseg_last_error()), 0);
    ck_assert_ptr_null(r.labels);
    /* an anisotropy that leaves no plane */
    ck_assert_int_eq(gpuseg_segment_volume(ctx, net, crop, &p, 1e-3, 0.0, &r),
                     GPUSEG_INVALID_ARGUMENT);
    /* a cancel request stands: nothing is returned */
    gpuseg_ctx_cancel(ctx, 1);
    ck_assert_int_eq(gpuseg_segment_volume(ctx, net, crop, &p, 1.0, 0.0, &r), GPUSEG_CANCELLED);
    ck_assert_ptr_null(r.labels);
    gpuseg_image_free(one);
    gpuseg_image_free(crop);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* `gpuseg segment --do-3d`: the labels as .bin + .json and (--save-tif) as a multi-page TIFF,
 * against Cellpose's masks of case a; then the crop stored as (Y, C, X, Z) with a second, zero
 * channel, read with --z-axis 3 --channel-axis 1 --chan 1 into .npy: the same labels; and
 * --stitch-threshold with --z-axis on the crop stored as (Y, X, Z): the labels of
 * tests/fixtures/stack (Cellpose's stitch_threshold 0.5). */
START_TEST(cli_do3d_matches_cellpose) {
    if (g_dev)
        return;
    const char *dir = tu_tmpdir();
    uint32_t d[3];
    uint32_t *want = read_labels(FIXTURES "/a_masks.tif", &d[0], &d[1], &d[2]);
    const uint32_t Z = d[0], H = d[1], W = d[2];
    const size_t n = (size_t)Z * H * W;
    tu_cli_result *r = tu_cli("segment " CROP " --model '%s' --diameter 11 --do_3D --save_tif "
                              "--quiet --save-dir '%s' --save-flows",
                              GPUSEG_BUNDLED_MODEL, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    char path[1024];
    snprintf(path, sizeof path, "%s/img3d_crop_segmentation.json", dir);
    size_t sn;
    char *side = tu_read_file(path, &sn);
    ck_assert_msg(strstr(side, "\"shape\":[12,61,57]") != NULL, "%s", side);
    ck_assert_ptr_nonnull(strstr(side, "\"do_3D\":true"));
    free(side);
    snprintf(path, sizeof path, "%s/img3d_crop_segmentation.bin", dir);
    size_t nb;
    char *raw = tu_read_file(path, &nb);
    ck_assert_uint_eq(nb, n * 2);
    uint32_t *bin = malloc(n * sizeof *bin);
    for (size_t i = 0; i < n; i++)
        bin[i] = ((const uint16_t *)(const void *)raw)[i];
    free(raw);
    size_t same;
    gpuseg_ap_result res;
    ck_assert_double_ge(masks_ap(want, bin, Z, H, W, &same, &res), 0.99);
    snprintf(path, sizeof path, "%s/img3d_crop_cp_masks.tif", dir);
    uint32_t z, h, w;
    uint32_t *tif = read_labels(path, &z, &h, &w);
    ck_assert(z == Z && h == H && w == W);
    ck_assert_mem_eq(tif, bin, n * sizeof *bin);
    /* --save-flows: [4, Z, H, W] */
    snprintf(path, sizeof path, "%s/img3d_crop_flows.npy", dir);
    gpuseg_npy *f = NULL;
    ck_assert_int_eq(gpuseg_npy_read(path, &f), GPUSEG_OK);
    ck_assert(f->ndim == 4 && f->shape[0] == 4 && f->shape[1] == Z && f->shape[3] == W);
    gpuseg_npy_free(f);
    snprintf(path, sizeof path, "%s/img3d_crop_style.npy", dir);
    ck_assert(!tu_exists(path));
    /* `gpuseg masks` on those flows, with segment's niter (trunc(200 / (17 / 11)) = 129): the
     * same labels; a PNG is refused */
    r = tu_cli("masks '%s/img3d_crop_flows.npy' -o '%s/m.npy' --niter 129", dir, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "\"depth\":12"));
    /* the library call's own times (no start-up, read or write), as the bench uses them */
    const char *sec = strstr(r->out, "\"seconds\":"), *cpu = strstr(r->out, "\"cpu_seconds\":");
    ck_assert_msg(sec && cpu, "%s", r->out);
    ck_assert(strtod(sec + 10, NULL) > 0.0 && strtod(cpu + 14, NULL) > 0.0);
    free(r);
    snprintf(path, sizeof path, "%s/m.npy", dir);
    uint32_t *m = read_labels(path, &z, &h, &w);
    ck_assert(z == Z && h == H && w == W);
    ck_assert_mem_eq(m, bin, n * sizeof *bin);
    free(m);
    r = tu_cli("masks '%s/img3d_crop_flows.npy' -o '%s/m.png'", dir, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "PNG"));
    free(r);

    /* the crop as (Y, C=2, X, Z), channel 1 the image, channel 2 zeros */
    gpuseg_image *crop = NULL;
    ck_assert_int_eq(gpuseg_image_read(CROP, &crop), GPUSEG_OK);
    const uint16_t *cv = crop->data;
    uint16_t *t = calloc(2 * n, sizeof *t);
    for (uint32_t zz = 0; zz < Z; zz++)
        for (uint32_t y = 0; y < H; y++)
            for (uint32_t x = 0; x < W; x++)
                t[(((size_t)y * 2 + 0) * W + x) * Z + zz] = cv[((size_t)zz * H + y) * W + x];
    uint64_t shp[4] = {H, 2, W, Z};
    char in[1024], out[1024];
    snprintf(in, sizeof in, "%s/yxcz.npy", dir);
    ck_assert_int_eq(gpuseg_npy_write(in, GPUSEG_DTYPE_U16, 4, shp, t), GPUSEG_OK);
    snprintf(out, sizeof out, "%s/axes.npy", dir);
    r = tu_cli("segment '%s' --model '%s' --diameter 11 --do-3d --z-axis 3 --channel_axis 1 "
               "--chan 1 --quiet -o '%s'",
               in, GPUSEG_BUNDLED_MODEL, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    uint32_t *ax = read_labels(out, &z, &h, &w);
    ck_assert(z == Z && h == H && w == W);
    ck_assert_mem_eq(ax, bin, n * sizeof *bin);
    free(ax);
    /* --stitch-threshold with --z-axis: the crop as (Y, X, Z) */
    for (uint32_t zz = 0; zz < Z; zz++)
        for (uint32_t y = 0; y < H; y++)
            for (uint32_t x = 0; x < W; x++)
                t[((size_t)y * W + x) * Z + zz] = cv[((size_t)zz * H + y) * W + x];
    uint64_t shp3[3] = {H, W, Z};
    snprintf(in, sizeof in, "%s/yxz.npy", dir);
    ck_assert_int_eq(gpuseg_npy_write(in, GPUSEG_DTYPE_U16, 3, shp3, t), GPUSEG_OK);
    snprintf(out, sizeof out, "%s/stitch.tif", dir);
    r = tu_cli("segment '%s' --model '%s' --diameter 11 --stitch-threshold 0.5 --z-axis -1 "
               "--quiet -o '%s'",
               in, GPUSEG_BUNDLED_MODEL, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    uint32_t *st = read_labels(out, &z, &h, &w);
    uint32_t *sw =
        read_labels(GPUSEG_SOURCE_DIR "/tests/fixtures/stack/cellpose_stitch.tif", &z, &h, &w);
    ck_assert(z == Z && h == H && w == W);
    ck_assert_double_ge(masks_ap(sw, st, Z, H, W, &same, &res), 0.99);
    free(st);
    free(sw);
    free(t);
    gpuseg_image_free(crop);
    free(tif);
    free(bin);
    free(want);
    tu_rmtree(dir);
}
END_TEST

/* One-line refusals, before any device work. */
START_TEST(cli_do3d_refusals) {
    if (g_dev)
        return;
    static const struct {
        const char *args;
        int status;
        const char *says;
    } cases[] = {
        {CROP " --do-3d --stitch-threshold 0.5", 2, "exclude each other"},
        {CROP " --anisotropy 2", 2, "--anisotropy goes with --do-3d"},
        {CROP " --flow3D_smooth 1", 2, "--flow3d-smooth goes with --do-3d"},
        {CROP " --do-3d --save-png", 2, "--save-png"},
        {CROP " --do-3d --anisotropy 0", 2, "--anisotropy"},
        {CROP " --do-3d --z-axis 7", 2, "--z-axis"},
        {CROP " --do-3d --z-axis 3 -o /tmp/gpuseg-do3d-never.npy", 1, "3 axes"},
        {CROP " --do-3d --z-axis 1 --channel-axis 1 -o /tmp/gpuseg-do3d-never.npy", 1, "same axis"},
        {GPUSEG_SOURCE_DIR "/examples/data/nuclei.png --do-3d", 1, "2-D image"},
        {CROP " --do-3d --pretrained_model_ortho x", 2, "all three views"},
        {CROP " -o /tmp/gpuseg-do3d-never.tif", 1, "--do-3d"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        tu_cli_result *r =
            tu_cli("segment %s --model '%s' --quiet", cases[i].args, GPUSEG_BUNDLED_MODEL);
        ck_assert_msg(r->status == cases[i].status, "%s: status %d: %s", cases[i].args, r->status,
                      r->err);
        ck_assert_msg(strstr(r->err, cases[i].says) != NULL, "%s: %s", cases[i].args, r->err);
        ck_assert_msg(tu_count_lines(r->err) == 1, "%s: %s", cases[i].args, r->err);
        free(r);
    }
    ck_assert(!tu_exists("/tmp/gpuseg-do3d-never.npy") && !tu_exists("/tmp/gpuseg-do3d-never.tif"));
}
END_TEST

int main(void) {
    g_dev = tu_require_device();
    if (g_dev == 1)
        return 1;
    Suite *s = suite_create("do3d");
    TCase *d = tcase_create("device"); /* each case returns at once without a device */
    tcase_set_timeout(d, 600);
    tcase_add_loop_test(d, volume_matches_cellpose, 0, (int)(sizeof CASES / sizeof *CASES));
    tcase_add_test(d, volume_errors);
    tcase_add_test(d, cli_do3d_matches_cellpose);
    tcase_add_test(d, cli_do3d_refusals);
    suite_add_tcase(s, d);
    int rc = tu_run(s);
    json_decref(g_manifest);
    return rc;
}
