/* tests/test_vol.c: 3-D (volume) labels -> flows and flows -> masks against Cellpose 3.1.1.3:
 * the committed fixtures of tests/fixtures/vol (tools/fixtures/make_vol_fixtures.py: a
 * 24 x 48 x 48 crop of stardist's mask3d.tif, Cellpose's masks_to_flows on it, Cellpose's
 * resize_and_compute_masks(do_3D=True) on noisy and on clean flows), the round trip, error paths,
 * and (shared data) the whole mask3d.tif. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/metrics.h"
#include "testutil.h"

static const char *fixture(const char *name) {
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s/tests/fixtures/vol/%s", GPUSEG_SOURCE_DIR, name);
    return buf;
}

static gpuseg_npy *npy_load(const char *path) {
    gpuseg_npy *a = NULL;
    ck_assert_msg(gpuseg_npy_read(path, &a) == GPUSEG_OK, "%s", gpuseg_last_error());
    return a;
}

/* uint16 [Z, H, W] fixture as uint32 */
static uint32_t *load_u16_vol(const char *name, uint32_t dims[3]) {
    gpuseg_npy *a = npy_load(fixture(name));
    ck_assert_int_eq(a->dtype, GPUSEG_DTYPE_U16);
    ck_assert_uint_eq(a->ndim, 3);
    for (int i = 0; i < 3; i++)
        dims[i] = (uint32_t)a->shape[i];
    const size_t n = (size_t)dims[0] * dims[1] * dims[2];
    uint32_t *l = malloc(n * sizeof *l);
    for (size_t i = 0; i < n; i++)
        l[i] = ((const uint16_t *)a->data)[i];
    gpuseg_npy_free(a);
    return l;
}

/* Network-scale flows from unit flows: 5 * flows, cellprob +5 inside, -5 outside (the fixture
 * script's net_from without noise). */
static float *net_from(const float *flows, const uint32_t *lab, size_t nv) {
    float *net = malloc(4 * nv * sizeof *net);
    for (size_t i = 0; i < 3 * nv; i++)
        net[i] = 5.0f * flows[i];
    for (size_t i = 0; i < nv; i++)
        net[3 * nv + i] = lab[i] ? 5.0f : -5.0f;
    return net;
}

static size_t n_diff(const uint32_t *a, const uint32_t *b, size_t n) {
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        d += a[i] != b[i];
    return d;
}

static double ap_at(const uint32_t *truth, const uint32_t *pred, uint32_t rows, uint32_t W,
                    double thr) {
    gpuseg_ap_result r;
    ck_assert_msg(gpuseg_metrics_ap(truth, pred, rows, W, &thr, 1, &r) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    return r.ap;
}

/* (a) labels -> flows: Cellpose's masks_to_flows on the crop (float64 per slice, summed into
 * float32). Max |error| 0 with native doubles; the float-pair path stays within 2.4e-7. */
START_TEST(labels_to_flows3d_matches_cellpose) {
    uint32_t d[3];
    uint32_t *lab = load_u16_vol("labels.npy", d);
    const size_t nv = (size_t)d[0] * d[1] * d[2];
    gpuseg_npy *ref = npy_load(fixture("flows.npy"));
    ck_assert_uint_eq(ref->shape[0], 3);
    float *f = malloc(3 * nv * sizeof *f);
    ck_assert_msg(gpuseg_labels_to_flows3d(tu_ctx(), lab, d[0], d[1], d[2], f) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    double maxe = 0, maxe_in = 0;
    size_t nbad = 0, nout = 0;
    for (size_t i = 0; i < 3 * nv; i++) {
        const double e = fabs((double)f[i] - ((const float *)ref->data)[i]);
        if (e > maxe)
            maxe = e;
        nbad += e > 0;
        if (e > 1e-6)
            nout++;
        else if (e > maxe_in)
            maxe_in = e;
    }
    printf("labels_to_flows3d: max |error| %.3g (%.3g without the %zu values off by > 1e-6), %zu "
           "of %zu values differ\n",
           maxe, maxe_in, nout, nbad, 3 * nv);
    /* native doubles: only the last-bit rounding of the float64 sums (docs/flows.md); float pairs
     * (GPUSEG_FP64=0) also have the 2-D path's known outliers, frequent in the thin top and
     * bottom slices of nuclei (measured: see docs/flows.md) */
    const char *fp = getenv("GPUSEG_FP64");
    const int pairs = fp && strcmp(fp, "0") == 0;
    ck_assert_msg(maxe_in <= 2.4e-7, "max error %g", maxe_in);
    ck_assert_msg(pairs ? nout <= 3 * nv / 1000 : nout == 0, "%zu outliers", nout);
    /* labels with gaps give the same flows */
    for (size_t i = 0; i < nv; i++)
        lab[i] *= 1000;
    float *g = malloc(3 * nv * sizeof *g);
    ck_assert(gpuseg_labels_to_flows3d(tu_ctx(), lab, d[0], d[1], d[2], g) == GPUSEG_OK);
    ck_assert(memcmp(f, g, 3 * nv * sizeof *f) == 0);
    free(g);
    free(f);
    free(lab);
    gpuseg_npy_free(ref);
}
END_TEST

/* (b) flows -> masks on Cellpose's own inputs: identical label volumes. Case 0: noisy network
 * flows (net.npy); case 1: the clean flows of the labels (the round trip of Cellpose). */
START_TEST(masks3d_match_cellpose) {
    uint32_t d[3], dm[3];
    uint32_t *lab = load_u16_vol("labels.npy", d);
    const size_t nv = (size_t)d[0] * d[1] * d[2];
    float *net;
    gpuseg_npy *ref_net = NULL;
    if (_i == 0) {
        ref_net = npy_load(fixture("net.npy"));
        ck_assert_uint_eq(ref_net->shape[0], 4);
        net = ref_net->data;
    } else {
        gpuseg_npy *fl = npy_load(fixture("flows.npy"));
        net = net_from(fl->data, lab, nv);
        gpuseg_npy_free(fl);
    }
    uint32_t *want = load_u16_vol(_i == 0 ? "masks_net.npy" : "masks_clean.npy", dm);
    uint32_t *got = malloc(nv * sizeof *got);
    uint32_t n = 0;
    ck_assert_msg(gpuseg_flows_to_masks3d(tu_ctx(), net, d[0], d[1], d[2], NULL, got, &n) ==
                      GPUSEG_OK,
                  "%s", gpuseg_last_error());
    uint32_t wmax = 0;
    for (size_t i = 0; i < nv; i++)
        wmax = want[i] > wmax ? want[i] : wmax;
    const size_t nd = n_diff(got, want, nv);
    const double ap9 = ap_at(want, got, d[0] * d[1], d[2], 0.9);
    printf("masks3d case %d: %u masks (Cellpose %u), %zu voxels differ, AP@0.9 vs Cellpose %.4f\n",
           _i, n, wmax, nd, ap9);
    ck_assert_uint_eq(n, wmax);
    ck_assert_uint_eq(nd, 0);
    free(got);
    free(want);
    free(lab);
    if (ref_net)
        gpuseg_npy_free(ref_net);
    else
        free(net);
}
END_TEST

/* (c) round trip labels -> flows -> masks with our own flows: the same masks as Cellpose's on its
 * flows, and the same AP against the labels as Cellpose's (expected.json: AP@0.9 0.375, low
 * because of Cellpose's 3-D sampling offset and the crop's cut masks, docs/masks.md). */
START_TEST(round_trip3d) {
    uint32_t d[3], dm[3];
    uint32_t *lab = load_u16_vol("labels.npy", d);
    const size_t nv = (size_t)d[0] * d[1] * d[2];
    float *f = malloc(3 * nv * sizeof *f);
    ck_assert(gpuseg_labels_to_flows3d(tu_ctx(), lab, d[0], d[1], d[2], f) == GPUSEG_OK);
    float *net = net_from(f, lab, nv);
    uint32_t *got = malloc(nv * sizeof *got), n = 0;
    ck_assert(gpuseg_flows_to_masks3d(tu_ctx(), net, d[0], d[1], d[2], NULL, got, &n) == GPUSEG_OK);
    uint32_t *want = load_u16_vol("masks_clean.npy", dm);
    const double ours = ap_at(lab, got, d[0] * d[1], d[2], 0.9);
    const double theirs = ap_at(lab, want, d[0] * d[1], d[2], 0.9);
    printf("round trip 3-D: AP@0.9 vs labels: gpuseg %.4f, Cellpose %.4f; AP@0.5 %.4f / %.4f\n",
           ours, theirs, ap_at(lab, got, d[0] * d[1], d[2], 0.5),
           ap_at(lab, want, d[0] * d[1], d[2], 0.5));
    /* our flows differ from Cellpose's in the last bit of 6.6 % of the values (docs/flows.md),
     * which moves a few end points: measured 54 of 55,296 voxels (AP@0.9 against Cellpose's
     * masks 0.89, AP@0.5 1: small masks near the 0.9 IoU boundary), and the same AP against the
     * labels as Cellpose's round trip */
    const size_t nd = n_diff(got, want, nv);
    const double vs = ap_at(want, got, d[0] * d[1], d[2], 0.5);
    printf("round trip 3-D: %zu voxels differ from Cellpose's round trip, AP@0.5 %.4f\n", nd, vs);
    ck_assert_uint_le(nd, nv / 500);
    ck_assert(vs >= 0.99);
    ck_assert(fabs(ours - theirs) <= 0.05);
    free(f);
    free(net);
    free(got);
    free(want);
    free(lab);
}
END_TEST

START_TEST(errors_and_empty) {
    gpuseg_ctx *ctx = tu_ctx();
    float net[4 * 2 * 3 * 4];
    uint32_t lab[2 * 3 * 4], n = 7;
    for (size_t i = 0; i < 4 * 24; i++)
        net[i] = i < 3 * 24 ? 0.0f : -5.0f;
    ck_assert(gpuseg_flows_to_masks3d(ctx, net, 2, 3, 4, NULL, lab, &n) == GPUSEG_OK);
    ck_assert_uint_eq(n, 0);
    for (int i = 0; i < 24; i++)
        ck_assert_uint_eq(lab[i], 0);
    ck_assert(gpuseg_flows_to_masks3d(ctx, net, 1, 3, 4, NULL, lab, &n) == GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "side below 2"));
    ck_assert(gpuseg_flows_to_masks3d(ctx, NULL, 2, 3, 4, NULL, lab, &n) ==
              GPUSEG_INVALID_ARGUMENT);
    net[24 + 13] = NAN;
    ck_assert(gpuseg_flows_to_masks3d(ctx, net, 2, 3, 4, NULL, lab, &n) == GPUSEG_FORMAT);
    ck_assert_msg(strstr(gpuseg_last_error(), "dY at z 1, y 0, x 1"), "%s", gpuseg_last_error());
    float fl[3 * 24];
    memset(lab, 0, sizeof lab);
    ck_assert(gpuseg_labels_to_flows3d(ctx, lab, 2, 3, 4, fl) == GPUSEG_OK);
    for (int i = 0; i < 72; i++)
        ck_assert(fl[i] == 0.0f);
    ck_assert(gpuseg_labels_to_flows3d(ctx, lab, 0, 3, 4, fl) == GPUSEG_INVALID_ARGUMENT);
    /* a single voxel mask and a 1-voxel-thick volume side are fine for labels -> flows */
    lab[5] = 9;
    ck_assert(gpuseg_labels_to_flows3d(ctx, lab, 1, 6, 4, fl) == GPUSEG_OK);
    for (int i = 0; i < 72; i++)
        ck_assert(fl[i] == 0.0f);
}
END_TEST

/* progress reaches 1 and a cancel request from the first report stops the run */
static int n_reports;
static double last_fraction;
static void on_progress(void *user, const gpuseg_progress *p) {
    ck_assert_str_eq(p->stage, "masks");
    n_reports++;
    last_fraction = p->fraction;
    if (user)
        gpuseg_ctx_cancel((gpuseg_ctx *)user, 1);
}

START_TEST(progress_and_cancel) {
    uint32_t d[3];
    uint32_t *lab = load_u16_vol("labels.npy", d);
    const size_t nv = (size_t)d[0] * d[1] * d[2];
    gpuseg_npy *ref = npy_load(fixture("net.npy"));
    uint32_t *got = malloc(nv * sizeof *got), n = 0;
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_ctx_set_progress(ctx, on_progress, NULL);
    n_reports = 0;
    ck_assert(gpuseg_flows_to_masks3d(ctx, ref->data, d[0], d[1], d[2], NULL, got, &n) ==
              GPUSEG_OK);
    ck_assert_int_ge(n_reports, 4);
    ck_assert(last_fraction == 1.0);
    gpuseg_ctx_set_progress(ctx, on_progress, ctx);
    ck_assert(gpuseg_flows_to_masks3d(ctx, ref->data, d[0], d[1], d[2], NULL, got, &n) ==
              GPUSEG_CANCELLED);
    for (size_t i = 0; i < nv; i++)
        ck_assert_uint_eq(got[i], 0);
    gpuseg_ctx_set_progress(ctx, NULL, NULL);
    gpuseg_ctx_cancel(ctx, 0);
    free(got);
    free(lab);
    gpuseg_npy_free(ref);
}
END_TEST

/* The whole mask3d.tif (31 x 61 x 57, 51 nuclei): round trip, AP printed, and the volume sums of
 * the flows checked against the 2-D API slice by slice (dY of a Z slice is its 2-D dY). */
START_TEST(whole_mask3d_shared_data) {
    gpuseg_image *im = NULL;
    ck_assert_msg(gpuseg_image_read(tu_data("stardist-sample/package_data/mask3d.tif"), &im) ==
                      GPUSEG_OK,
                  "%s", gpuseg_last_error());
    ck_assert_uint_eq(im->pages, 31);
    const uint32_t Z = im->pages, H = im->height, W = im->width;
    const size_t nv = (size_t)Z * H * W;
    uint32_t *lab = malloc(nv * sizeof *lab);
    for (size_t i = 0; i < nv; i++)
        lab[i] = ((const uint16_t *)im->data)[i];
    gpuseg_image_free(im);
    float *f = malloc(3 * nv * sizeof *f);
    ck_assert(gpuseg_labels_to_flows3d(tu_ctx(), lab, Z, H, W, f) == GPUSEG_OK);
    float *net = net_from(f, lab, nv);
    uint32_t *got = malloc(nv * sizeof *got), n = 0;
    ck_assert(gpuseg_flows_to_masks3d(tu_ctx(), net, Z, H, W, NULL, got, &n) == GPUSEG_OK);
    const double ap5 = ap_at(lab, got, Z * H, W, 0.5), ap9 = ap_at(lab, got, Z * H, W, 0.9);
    printf("mask3d.tif round trip: %u masks, AP@0.5 %.4f, AP@0.9 %.4f\n", n, ap5, ap9);
    ck_assert_uint_gt(n, 30);
    /* Cellpose 3.1.1.3 on its own flows of this volume: 51 masks, AP@0.5 0.3067, AP@0.9 0.1452
     * (its 3-D sampling offset, docs/masks.md); gpuseg measured the same */
    ck_assert(fabs(ap5 - 0.3067) < 0.03 && fabs(ap9 - 0.1452) < 0.03);
    free(f);
    free(net);
    free(got);
    free(lab);
}
END_TEST

int main(void) {
    Suite *s = suite_create("vol");
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    if (dev == 0) {
        TCase *d = tcase_create("device");
        tcase_set_timeout(d, 600);
        tcase_add_test(d, labels_to_flows3d_matches_cellpose);
        tcase_add_loop_test(d, masks3d_match_cellpose, 0, 2);
        tcase_add_test(d, round_trip3d);
        tcase_add_test(d, errors_and_empty);
        tcase_add_test(d, progress_and_cancel);
        suite_add_tcase(s, d);
        TCase *sd = tu_tcase_needing("shared_data", TU_NEEDS_SHARED_DATA);
        tcase_set_timeout(sd, 600);
        tcase_add_test(sd, whole_mask3d_shared_data);
        suite_add_tcase(s, sd);
    }
    return tu_run(s);
}
