/* tests/test_polygons_py.c: gpuseg's outline files of real label images (the bundled example's
 * ground truth and a DSB2018 dev image) checked from Python by tools/check_polygons.py: roifile
 * (an independent ImageJ ROI reader) reads the ROI zip, shapely measures the GeoJSON polygons,
 * and Cellpose's own outlines_list / save_rois give the reference outlines when installed.
 * Python: $GPUSEG_PYTHON, else the repository's .venv, else python3. Exit 77 (skip, said so)
 * when numpy or roifile cannot be imported there. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "gpuseg/outlines.h"
#include "testutil.h"

/* A DSB2018 dev ground truth with many small touching nuclei. */
#define DEV_LABELS "02903040e19ddf92f452907644ad3822918f54af41dd85e5a3fe3e1b6d6f9339.png"

static const char *python(void) {
    const char *py = getenv("GPUSEG_PYTHON");
    if (py && *py)
        return py;
    if (tu_exists(GPUSEG_SOURCE_DIR "/.venv/bin/python"))
        return GPUSEG_SOURCE_DIR "/.venv/bin/python";
    return "python3";
}

/* Writes labels.npy and the three outline files of one label image into dir, runs the check.
 * Returns the script's exit status. */
static int check_one(const char *dir, const char *labels_path, gpuseg_image *lab) {
    if (!lab)
        ck_assert_msg(gpuseg_image_read(labels_path, &lab) == GPUSEG_OK, "%s", gpuseg_last_error());
    gpuseg_polygons *p = NULL;
    ck_assert_int_eq(gpuseg_labels_polygons(lab, &p), GPUSEG_OK);
    char a[512], b[512], c[512], d[512], cmd[4096];
    snprintf(a, sizeof a, "%s/labels.npy", dir);
    snprintf(b, sizeof b, "%s/img_rois.zip", dir);
    snprintf(c, sizeof c, "%s/img.geojson", dir);
    snprintf(d, sizeof d, "%s/img_cp_outlines.txt", dir);
    ck_assert_int_eq(gpuseg_labels_write(a, lab, NULL), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_polygons_write_rois(b, p), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_polygons_write_geojson(c, p, NULL), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_polygons_write_txt(d, p), GPUSEG_OK);
    gpuseg_polygons_free(p);
    gpuseg_image_free(lab);
    snprintf(cmd, sizeof cmd, "'%s' '%s/tools/check_polygons.py' '%s' '%s' '%s' '%s'", python(),
             GPUSEG_SOURCE_DIR, a, b, c, d);
    printf("%s: ", labels_path);
    fflush(stdout);
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

START_TEST(python_check) {
    const char *dir = tu_tmpdir();
    ck_assert_int_eq(check_one(dir, GPUSEG_SOURCE_DIR "/examples/data/nuclei_labels.png", NULL), 0);
    ck_assert_int_eq(check_one(dir, tu_data("dsb2018/dev/labels/%s", DEV_LABELS), NULL), 0);
    /* Random labels, half background: masks of many pieces, holes, one-pixel-wide parts,
     * diagonal contacts and ties in outline length (Cellpose's argmax rule) */
    for (uint32_t seed = 1; seed <= 3; seed++) {
        gpuseg_image *r = NULL;
        ck_assert_int_eq(gpuseg_image_create(41, 29, 1, 1, GPUSEG_DTYPE_U16, &r), GPUSEG_OK);
        uint16_t *v = r->data;
        uint64_t x = seed * 0x9e3779b97f4a7c15ull;
        for (size_t i = 0; i < 41 * 29; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            uint32_t u = (uint32_t)(x >> 33) % 12;
            v[i] = (uint16_t)(u < 6 ? 0 : u - 5 + 10 * (seed - 1));
        }
        char name[32];
        snprintf(name, sizeof name, "random labels %u", seed);
        ck_assert_int_eq(check_one(dir, name, r), 0);
    }
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' -c 'import numpy, roifile' >/dev/null 2>&1", python());
    if (system(cmd) != 0) {
        printf("SKIP: numpy or roifile cannot be imported by %s (set GPUSEG_PYTHON)\n", python());
        return 77;
    }
    Suite *s = suite_create("polygons_py");
    TCase *tc = tcase_create("python");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, python_check);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
