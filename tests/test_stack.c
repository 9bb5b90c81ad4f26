/* tests/test_stack.c: Z stacks (issue #18). Host: gpuseg_labels_stitch3d and
 * gpuseg_labels_fill_holes_3d give exactly Cellpose 3.1.1.3's utils.stitch3D and
 * fill_holes_and_remove_small_masks on synthetic planes (tests/fixtures/stack, made by
 * tools/fixtures/make_stack_fixtures.py), and refuse bad arguments. Device: `gpuseg segment
 * --stitch-threshold 0.5` on a 12-plane crop of stardist's img3d.tif agrees with Cellpose's
 * eval(do_3D=False, stitch_threshold=0.5) of the same model file (AP@0.5 >= 0.99), and the
 * 3-D outputs (.tif pages, .npy [Z,Y,X], .bin + .json [Z,Y,X]) read back. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/gpuseg.h"
#include "testutil.h"

#define FIXTURES GPUSEG_SOURCE_DIR "/tests/fixtures/stack"

static int g_dev;

/* A uint16 or uint32 [Z, H, W] fixture widened to uint32. */
static uint32_t *read_volume(const char *name, uint32_t *Z, uint32_t *H, uint32_t *W) {
    char path[1024];
    snprintf(path, sizeof path, FIXTURES "/%s", name);
    gpuseg_npy *a = NULL;
    ck_assert_msg(gpuseg_npy_read(path, &a) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_uint_eq(a->ndim, 3);
    *Z = (uint32_t)a->shape[0];
    *H = (uint32_t)a->shape[1];
    *W = (uint32_t)a->shape[2];
    size_t n = (size_t)*Z * *H * *W;
    uint32_t *v = malloc(n * sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < n; i++)
        v[i] = a->dtype == GPUSEG_DTYPE_U16 ? ((const uint16_t *)a->data)[i]
                                            : ((const uint32_t *)a->data)[i];
    gpuseg_npy_free(a);
    return v;
}

static uint32_t vmax(const uint32_t *v, size_t n) {
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

START_TEST(stitch_matches_cellpose) {
    static const struct {
        const char *name;
        double thr;
    } cases[] = {{"a", 0.25}, {"b", 0.5}, {"c", 0.1}, {"d", 0.9}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char f[64];
        uint32_t Z, H, W, z2, h2, w2, nm = 0, nf = 0;
        snprintf(f, sizeof f, "stitch_%s_in.npy", cases[c].name);
        uint32_t *v = read_volume(f, &Z, &H, &W);
        snprintf(f, sizeof f, "stitch_%s_out.npy", cases[c].name);
        uint32_t *want = read_volume(f, &z2, &h2, &w2);
        snprintf(f, sizeof f, "stitch_%s_filled.npy", cases[c].name);
        uint32_t *filled = read_volume(f, &z2, &h2, &w2);
        ck_assert(z2 == Z && h2 == H && w2 == W);
        size_t n = (size_t)Z * H * W, diff = 0;
        ck_assert_int_eq(gpuseg_labels_stitch3d(v, Z, H, W, cases[c].thr, &nm), GPUSEG_OK);
        for (size_t i = 0; i < n; i++)
            diff += v[i] != want[i];
        ck_assert_msg(diff == 0, "case %s: %zu voxels differ from Cellpose's stitch3D",
                      cases[c].name, diff);
        ck_assert_uint_eq(nm, vmax(want, n));
        ck_assert_int_eq(gpuseg_labels_fill_holes_3d(v, Z, H, W, 15, &nf), GPUSEG_OK);
        for (size_t i = 0; i < n; i++)
            diff += v[i] != filled[i];
        ck_assert_msg(
            diff == 0,
            "case %s: %zu voxels differ from Cellpose's fill_holes_and_remove_small_masks",
            cases[c].name, diff);
        ck_assert_uint_eq(nf, vmax(filled, n));
        free(v);
        free(want);
        free(filled);
    }
}
END_TEST

START_TEST(stitch_hand_made) {
    /* plane 0: labels 1 and 2; plane 1: label 1 covers 2's place (IoU 1), label 2 is new */
    uint32_t v[2 * 2 * 4] = {1, 1, 0, 2, 1, 1, 0, 2,  /* z = 0 */
                             0, 0, 1, 1, 2, 0, 0, 1}; /* z = 1 */
    uint32_t nm = 0;
    ck_assert_int_eq(gpuseg_labels_stitch3d(v, 2, 2, 4, 0.5, &nm), GPUSEG_OK);
    /* a = 1 (3 px) vs b = 2 (2 px): overlap 2, IoU 2/3; vs b = 1: 0. a = 2 (1 px) vs b = 1
     * (4 px): IoU 1/4 < 0.5: new label 3 */
    const uint32_t want[8] = {0, 0, 2, 2, 3, 0, 0, 2};
    ck_assert_mem_eq(v + 8, want, sizeof want);
    ck_assert_uint_eq(nm, 3);
    /* a hole through a mask in 3-D: filled only where enclosed on all six sides */
    uint32_t c[3 * 3 * 3];
    for (int i = 0; i < 27; i++)
        c[i] = 5;
    c[13] = 0; /* the centre */
    ck_assert_int_eq(gpuseg_labels_fill_holes_3d(c, 3, 3, 3, 0, &nm), GPUSEG_OK);
    ck_assert_uint_eq(c[13], 1);
    ck_assert_uint_eq(c[0], 1);
    ck_assert_uint_eq(nm, 1);
    /* small masks removed in 3-D: 2 voxels < min_size 3, the 4-voxel mask kept and renumbered */
    uint32_t s[2 * 2 * 3] = {0, 1, 0, 2, 2, 0, 0, 1, 0, 2, 2, 0};
    ck_assert_int_eq(gpuseg_labels_fill_holes_3d(s, 2, 2, 3, 3, &nm), GPUSEG_OK);
    const uint32_t ws[12] = {0, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0};
    ck_assert_mem_eq(s, ws, sizeof ws);
    ck_assert_uint_eq(nm, 1);
}
END_TEST

START_TEST(stitch_bad_arguments) {
    uint32_t v[4] = {0, 1, 0, 1};
    ck_assert_int_eq(gpuseg_labels_stitch3d(NULL, 1, 2, 2, 0.5, NULL), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_labels_stitch3d(v, 0, 2, 2, 0.5, NULL), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_labels_stitch3d(v, 2, 1, 2, -0.1, NULL), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "threshold"));
    ck_assert_int_eq(gpuseg_labels_stitch3d(v, 2, 1, 2, 0.0 / 0.0, NULL), GPUSEG_INVALID_ARGUMENT);
    v[3] = 9; /* above the 4 voxels */
    ck_assert_int_eq(gpuseg_labels_stitch3d(v, 2, 1, 2, 0.5, NULL), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "label 9"));
    ck_assert_int_eq(gpuseg_labels_fill_holes_3d(v, 2, 1, 2, 15, NULL), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(tu_count_lines(gpuseg_last_error()), 0);
}
END_TEST

/* Labels as uint32 (any page count). */
static uint32_t *image_u32(const gpuseg_image *im) {
    size_t n = (size_t)im->width * im->height * im->pages;
    uint32_t *v = malloc(n * sizeof *v);
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(im->channels, 1);
    for (size_t i = 0; i < n; i++)
        v[i] = im->dtype == GPUSEG_DTYPE_U16 ? ((const uint16_t *)im->data)[i]
                                             : ((const uint32_t *)im->data)[i];
    return v;
}

START_TEST(cli_stitch_matches_cellpose) {
    if (g_dev)
        return;
    const char *dir = tu_tmpdir();
    static const char *const exts[] = {"tif", "npy", "bin"};
    gpuseg_image *ref = NULL;
    ck_assert_int_eq(gpuseg_image_read(FIXTURES "/cellpose_stitch.tif", &ref), GPUSEG_OK);
    ck_assert_uint_eq(ref->pages, 12);
    uint32_t *want = image_u32(ref);
    const size_t n = (size_t)ref->pages * ref->height * ref->width;
    for (size_t e = 0; e < 3; e++) {
        char out[1024];
        snprintf(out, sizeof out, "%s/s.%s", dir, exts[e]);
        /* the fixture: Cellpose eval(channels=[0,0], diameter=11, stitch_threshold=0.5) */
        tu_cli_result *r = tu_cli("segment " FIXTURES "/img3d_crop.tif --model '%s' --diameter 11 "
                                  "--stitch_threshold 0.5 --quiet -o '%s'",
                                  GPUSEG_BUNDLED_MODEL, out);
        ck_assert_msg(r->status == 0, "%s", r->err);
        free(r);
        gpuseg_image *got = NULL;
        if (e < 2) {
            ck_assert_msg(gpuseg_image_read(out, &got) == GPUSEG_OK, "%s", gpuseg_last_error());
        } else {
            char js[1024];
            snprintf(js, sizeof js, "%s/s.json", dir);
            size_t sn;
            char *side = tu_read_file(js, &sn);
            ck_assert_msg(strstr(side, "\"shape\":[12,61,57]") != NULL, "%s", side);
            ck_assert_ptr_nonnull(strstr(side, "\"stitch_threshold\":0.5"));
            free(side);
            ck_assert_int_eq(gpuseg_image_create(57, 61, 1, 12, GPUSEG_DTYPE_U16, &got), GPUSEG_OK);
            size_t nb;
            char *raw = tu_read_file(out, &nb);
            ck_assert_uint_eq(nb, n * 2);
            memcpy(got->data, raw, nb);
            free(raw);
        }
        ck_assert(got->pages == 12 && got->height == 61 && got->width == 57);
        uint32_t *have = image_u32(got);
        gpuseg_ap_result res[1];
        const double thr[1] = {0.5};
        /* a volume scored as one 2-D image of Z*H rows: IoU counts voxels by label */
        ck_assert_int_eq(gpuseg_metrics_ap(want, have, 12 * 61, 57, thr, 1, res), GPUSEG_OK);
        size_t same = 0;
        for (size_t i = 0; i < n; i++)
            same += want[i] == have[i];
        ck_assert_msg(res[0].ap >= 0.99, "%s: AP@0.5 %.4f vs Cellpose (%u/%u masks)", exts[e],
                      res[0].ap, res[0].n_pred, res[0].n_true);
        if (e == 0)
            fprintf(stderr,
                    "--stitch-threshold 0.5 vs Cellpose: AP@0.5 %.4f, %u/%u masks, "
                    "%zu of %zu voxels identical\n",
                    res[0].ap, res[0].n_pred, res[0].n_true, same, n);
        free(have);
        gpuseg_image_free(got);
    }
    /* --shm-only --json carries the stack's shape */
    tu_cli_result *r = tu_cli("segment " FIXTURES "/img3d_crop.tif --model '%s' --diameter 11 "
                              "--stitch-threshold 0.5 --quiet --shm-only --json",
                              GPUSEG_BUNDLED_MODEL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strstr(r->out, "\"shape\":[12,61,57]") != NULL, "%s", r->out);
    const char *nm = strstr(r->out, "\"shm\":\"");
    ck_assert_ptr_nonnull(nm);
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)(strchr(nm + 7, '"') - (nm + 7)), nm + 7);
    free(r);
    r = tu_cli("shm rm '%s'", name);
    ck_assert_int_eq(r->status, 0);
    free(r);
    free(want);
    gpuseg_image_free(ref);
    tu_rmtree(dir);
}
END_TEST

START_TEST(cli_stack_refusals) {
    if (g_dev)
        return;
    tu_cli_result *r = tu_cli("segment " FIXTURES "/img3d_crop.tif --quiet -o /tmp/x.tif");
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "12 pages"));
    ck_assert_ptr_nonnull(strstr(r->err, "--stitch-threshold"));
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    free(r);
    r = tu_cli("segment " FIXTURES "/img3d_crop.tif --stitch-threshold 0.5 --save-png");
    ck_assert_int_eq(r->status, 2);
    ck_assert_ptr_nonnull(strstr(r->err, "--save-png"));
    free(r);
    r = tu_cli("segment " FIXTURES "/img3d_crop.tif --stitch-threshold 0.5 -o /tmp/x.png");
    ck_assert_int_eq(r->status, 2);
    free(r);
    r = tu_cli("segment " FIXTURES "/img3d_crop.tif --do_3D --stitch_threshold 0.5");
    ck_assert_int_eq(r->status, 2);
    ck_assert_ptr_nonnull(strstr(r->err, "exclude each other"));
    free(r);
}
END_TEST

START_TEST(library_stack_progress_and_errors) {
    if (g_dev)
        return;
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert_int_eq(gpuseg_net_load(ctx, GPUSEG_BUNDLED_MODEL, &net), GPUSEG_OK);
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_read(FIXTURES "/img3d_crop.tif", &img), GPUSEG_OK);
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.diameter = 11;
    gpuseg_segment_result r;
    ck_assert_int_eq(gpuseg_segment_stack(ctx, net, img, &p, 0.0, &r), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_null(r.labels);
    /* a cancel request stands: nothing is returned */
    gpuseg_ctx_cancel(ctx, 1);
    ck_assert_int_eq(gpuseg_segment_stack(ctx, net, img, &p, 0.5, &r), GPUSEG_CANCELLED);
    ck_assert_ptr_null(r.labels);
    gpuseg_net_free(net);
    gpuseg_image_free(img);
    gpuseg_ctx_free(ctx);
}
END_TEST

int main(void) {
    g_dev = tu_require_device();
    if (g_dev == 1)
        return 1;
    Suite *s = suite_create("stack");
    TCase *t = tcase_create("host");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, stitch_matches_cellpose);
    tcase_add_test(t, stitch_hand_made);
    tcase_add_test(t, stitch_bad_arguments);
    suite_add_tcase(s, t);
    TCase *d = tcase_create("device"); /* each case returns at once without a device */
    tcase_set_timeout(d, 600);
    tcase_add_test(d, cli_stitch_matches_cellpose);
    tcase_add_test(d, cli_stack_refusals);
    tcase_add_test(d, library_stack_progress_and_errors);
    suite_add_tcase(s, d);
    return tu_run(s);
}
