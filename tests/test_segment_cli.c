/* tests/test_segment_cli.c: what `gpuseg segment` gives a user with no flags (issue #6): the
 * bundled model found from the build tree, by bare name, and a one-line error naming the places
 * tried; folder inputs (own outputs skipped); --quiet; the summary lines and the progress line
 * on a terminal; --save-outlines; the library's diameter estimation (two passes, the 10% keep
 * rule, no masks) and its accuracy on the 8 dsb2018/dev images; outline pixels exactly as
 * Cellpose's masks_to_outlines on a hand-made label image; the 8-bit PNG writer. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "gpuseg/gpuseg.h"
#include "testutil.h"

#define EXAMPLE GPUSEG_SOURCE_DIR "/examples/data/nuclei.png"

static int g_dev; /* 0: a device is usable */

/* The number after "key": in a JSON text (NAN when absent). */
static double json_number(const char *js, const char *key) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    const char *p = strstr(js, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

/* The string value of "key" in a JSON text, copied into buf ("" when absent). */
static const char *js_string(const char *js, const char *key, char *buf, size_t len) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":\"", key);
    const char *p = strstr(js, pat);
    buf[0] = 0;
    if (p) {
        p += strlen(pat);
        const char *e = strchr(p, '"');
        snprintf(buf, len, "%.*s", e ? (int)(e - p) : 0, p);
    }
    return buf;
}

static char *read_text(const char *path) {
    size_t n;
    return tu_read_file(path, &n);
}

static void copy_file(const char *from, const char *to) {
    size_t n;
    char *b = tu_read_file(from, &n);
    tu_write_file(to, b, n);
    free(b);
}

/* The hand-made label image and its outline as Cellpose 3.1.1.3 computes it
 * (utils.masks_to_outlines, run on this very array): mask 2 has a one-pixel hole at (2, 4),
 * whose rim is not an outline ((3, 4) stays 0), and the image edge counts as outside. */
static const uint16_t k_labels[6][7] = {{1, 1, 1, 0, 0, 0, 0}, {1, 1, 1, 2, 2, 2, 0},
                                        {1, 1, 1, 2, 0, 2, 0}, {1, 1, 1, 2, 2, 2, 0},
                                        {0, 0, 0, 2, 2, 2, 0}, {0, 0, 0, 0, 0, 0, 0}};
static const uint8_t k_outline[6][7] = {{1, 1, 1, 0, 0, 0, 0}, {1, 0, 1, 1, 1, 1, 0},
                                        {1, 0, 1, 1, 0, 1, 0}, {1, 1, 1, 1, 0, 1, 0},
                                        {0, 0, 0, 1, 1, 1, 0}, {0, 0, 0, 0, 0, 0, 0}};

START_TEST(outlines_hand_made) {
    /* Exact: outlines are a discrete definition, no tolerance. Both label dtypes, and label
     * values far apart (the sparse path for huge values) give the same pixels. */
    for (int variant = 0; variant < 3; variant++) {
        gpuseg_image *lab = NULL;
        gpuseg_dtype dt = variant == 0 ? GPUSEG_DTYPE_U16 : GPUSEG_DTYPE_U32;
        ck_assert_int_eq(gpuseg_image_create(7, 6, 1, 1, dt, &lab), GPUSEG_OK);
        for (int i = 0; i < 42; i++) {
            uint32_t v = k_labels[i / 7][i % 7];
            if (variant == 2 && v)
                v = v == 1 ? 4000000000u : 7u;
            if (dt == GPUSEG_DTYPE_U16)
                ((uint16_t *)lab->data)[i] = (uint16_t)v;
            else
                ((uint32_t *)lab->data)[i] = v;
        }
        uint8_t ol[42];
        ck_assert_int_eq(gpuseg_labels_outlines(lab, ol), GPUSEG_OK);
        for (int i = 0; i < 42; i++)
            ck_assert_msg(ol[i] == k_outline[i / 7][i % 7], "variant %d pixel (%d, %d): %d",
                          variant, i / 7, i % 7, ol[i]);
        gpuseg_image_free(lab);
    }
}
END_TEST

START_TEST(outlines_draw_and_png) {
    /* A 16-bit grey ramp under the hand-made labels: outline pixels pure red, the others grey
     * (R = G = B) stretched by the 1st..99th percentile, so the ramp's ends saturate. */
    gpuseg_image *img = NULL, *lab = NULL, *rgb = NULL, *back = NULL;
    ck_assert_int_eq(gpuseg_image_create(7, 6, 1, 1, GPUSEG_DTYPE_U16, &img), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_image_create(7, 6, 1, 1, GPUSEG_DTYPE_U16, &lab), GPUSEG_OK);
    for (int i = 0; i < 42; i++) {
        ((uint16_t *)img->data)[i] = (uint16_t)(1000 + 100 * i);
        ((uint16_t *)lab->data)[i] = k_labels[i / 7][i % 7];
    }
    ck_assert_int_eq(gpuseg_outlines_draw(img, lab, NULL, &rgb), GPUSEG_OK);
    ck_assert_uint_eq(rgb->channels, 3);
    ck_assert_int_eq(rgb->dtype, GPUSEG_DTYPE_U8);
    const uint8_t *d = rgb->data;
    for (int i = 0; i < 42; i++) {
        if (k_outline[i / 7][i % 7]) {
            ck_assert(d[3 * i] == 255 && d[3 * i + 1] == 0 && d[3 * i + 2] == 0);
        } else {
            ck_assert(d[3 * i] == d[3 * i + 1] && d[3 * i + 1] == d[3 * i + 2]);
        }
    }
    /* (5, 6) is the brightest sample, above the 99th percentile: 255; (4, 0) is mid-ramp. */
    ck_assert_uint_eq(d[3 * 41], 255);
    ck_assert(d[3 * 28] > 100 && d[3 * 28] < 200);
    /* PNG round trip: exactly the same bytes come back. */
    char dir[64], path[128];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    snprintf(path, sizeof path, "%s/o.png", dir);
    ck_assert_int_eq(gpuseg_image_write_png(path, rgb), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_image_read(path, &back), GPUSEG_OK);
    ck_assert(back->width == 7 && back->height == 6 && back->channels == 3);
    ck_assert_mem_eq(back->data, rgb->data, 42 * 3);
    /* Errors: a missing folder (names the file), labels of another size, a 16-bit image. */
    snprintf(path, sizeof path, "%s/none/o.png", dir);
    ck_assert_int_ne(gpuseg_image_write_png(path, rgb), GPUSEG_OK);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), path));
    ck_assert(!tu_exists(path));
    ck_assert_int_eq(gpuseg_image_write_png(path, img), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), path));
    gpuseg_image *small = NULL, *none = NULL;
    ck_assert_int_eq(gpuseg_image_create(3, 3, 1, 1, GPUSEG_DTYPE_U16, &small), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_outlines_draw(img, small, NULL, &none), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_null(none);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "7 x 6"));
    gpuseg_image_free(small);
    gpuseg_image_free(img);
    gpuseg_image_free(lab);
    gpuseg_image_free(rgb);
    gpuseg_image_free(back);
    tu_rmtree(dir);
}
END_TEST

START_TEST(model_lookup_errors) {
    /* Model lookup happens before any device work: no device needed. */
    tu_cli_result *r = tu_cli("segment '%s' --model no_such_model_xyz", EXAMPLE);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_ptr_nonnull(strstr(r->err, "no_such_model_xyz"));
    ck_assert_ptr_nonnull(strstr(r->err, GPUSEG_SOURCE_DIR "/models"));
    ck_assert_ptr_nonnull(strstr(r->err, "share/gpuseg/models"));
    free(r);
    r = tu_cli("segment '%s' --model /nonexistent/dir/model.pth", EXAMPLE);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_ptr_nonnull(strstr(r->err, "/nonexistent/dir/model.pth"));
    free(r);
    /* --help names the bundled model and where it was found (the source tree here). */
    r = tu_cli("segment --help");
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(strstr(r->out, "bundled model"));
    ck_assert_ptr_nonnull(strstr(r->out, GPUSEG_SOURCE_DIR "/models/"));
    free(r);
    /* An empty folder and a folder without images. */
    char dir[64];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    r = tu_cli("segment '%s'", dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_ptr_nonnull(strstr(r->err, dir));
    ck_assert_ptr_nonnull(strstr(r->err, "no image files"));
    free(r);
    tu_rmtree(dir);
}
END_TEST

START_TEST(env_model_missing) {
    /* GPUSEG_MODEL naming nothing: an error naming it, not a silent fall-back to the bundled
     * model. tu_cli runs `{ gpuseg ARGS ; }`: the fragment closes that group after a harmless
     * first command and opens one of its own with the variable set. */
    tu_cli_result *r = tu_cli("segment --help >/dev/null ; } ; { GPUSEG_MODEL=no_such_env_model "
                              "'%s' segment '%s'",
                              GPUSEG_CLI, EXAMPLE);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_ptr_nonnull(strstr(r->err, "GPUSEG_MODEL=no_such_env_model"));
    ck_assert_ptr_nonnull(strstr(r->err, GPUSEG_SOURCE_DIR "/models"));
    free(r);
}
END_TEST

/* Labels of a .bin written by segment (uint16, H x W from its sidecar) as an image. */
static gpuseg_image *read_bin_labels(const char *bin, const char *json) {
    double h = 0, w = 0;
    const char *s = strstr(json, "\"shape\":[");
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(sscanf(s, "\"shape\":[%lf,%lf]", &h, &w), 2);
    ck_assert_ptr_nonnull(strstr(json, "\"dtype\":\"uint16\""));
    gpuseg_image *lab = NULL;
    ck_assert_int_eq(gpuseg_image_create((uint32_t)w, (uint32_t)h, 1, 1, GPUSEG_DTYPE_U16, &lab),
                     GPUSEG_OK);
    size_t n;
    char *b = tu_read_file(bin, &n);
    ck_assert_uint_eq(n, (size_t)(w * h * 2));
    memcpy(lab->data, b, n);
    free(b);
    return lab;
}

START_TEST(default_model_outlines_quiet) {
    if (g_dev)
        return;
    char dir[64], p[256], q[256], model[1024], mode[64];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    /* No flags but the output folder: the bundled model, estimation on; --quiet: no output. */
    tu_cli_result *r = tu_cli("segment '%s' --save-dir '%s' --save-outlines --quiet", EXAMPLE, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_str_eq(r->err, "");
    ck_assert_str_eq(r->out, "");
    free(r);
    snprintf(p, sizeof p, "%s/nuclei_segmentation.json", dir);
    snprintf(q, sizeof q, "%s/nuclei_segmentation.bin", dir);
    char *js = read_text(p);
    js_string(js, "model", model, sizeof model);
    ck_assert_msg(strncmp(model, GPUSEG_SOURCE_DIR "/models/", strlen(GPUSEG_SOURCE_DIR) + 8) == 0,
                  "model %s", model);
    ck_assert(tu_exists(model));
    ck_assert_str_eq(js_string(js, "diameter_mode", mode, sizeof mode), "estimated");
    ck_assert_ptr_nonnull(strstr(js, "\"diameter_estimated\":true"));
    ck_assert(json_number(js, "diameter_first_pass") > 0);
    ck_assert(json_number(js, "n_masks") > 10);
    /* The outline picture: pure red exactly at the outline pixels of the saved labels (the
     * example is grey, so no other pixel can be pure red). */
    gpuseg_image *lab = read_bin_labels(q, js), *pic = NULL;
    free(js);
    snprintf(p, sizeof p, "%s/nuclei_outlines.png", dir);
    ck_assert_int_eq(gpuseg_image_read(p, &pic), GPUSEG_OK);
    ck_assert(pic->width == lab->width && pic->height == lab->height && pic->channels == 3);
    size_t npix = (size_t)lab->width * lab->height, red = 0, want = 0;
    uint8_t *ol = malloc(npix);
    ck_assert_int_eq(gpuseg_labels_outlines(lab, ol), GPUSEG_OK);
    const uint8_t *d = pic->data;
    for (size_t i = 0; i < npix; i++) {
        int is_red = d[3 * i] == 255 && d[3 * i + 1] == 0 && d[3 * i + 2] == 0;
        ck_assert_int_eq(is_red, ol[i]);
        red += (size_t)is_red;
        want += ol[i];
    }
    ck_assert_uint_eq(red, want);
    ck_assert(red > 100);
    free(ol);
    gpuseg_image_free(pic);
    gpuseg_image_free(lab);

    /* The bundled model by bare name, in Cellpose's diameter=None mode: one pass at the model's
     * diam_labels, reported as "model". */
    const char *name = strrchr(model, '/') + 1;
    r = tu_cli("segment '%s' --model %s --diameter model -o '%s/m.tif'", EXAMPLE, name, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_ptr_nonnull(strstr(r->err, "masks, diameter "));
    ck_assert_ptr_nonnull(strstr(r->err, " (model), "));
    free(r);
    snprintf(p, sizeof p, "%s/m.tif", dir);
    ck_assert(tu_exists(p));
    tu_rmtree(dir);
}
END_TEST

/* --diameter 0 with Cellpose's size model beside the model file (MODEL_size.npy, the fixture
 * made by Cellpose's own train_size, tools/fixtures/make_size_fixtures.py): the diameters are
 * SizeModel.eval's (style regression, then the median diameter of the masks at it), as
 * test_size_model checks through the API; here the command finds, loads and reports it. */
START_TEST(size_model_beside_model) {
    if (g_dev)
        return;
    char dir[64], model[256], p[320], mode[64];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    snprintf(model, sizeof model, "%s/nuclei_copy", dir);
    copy_file(GPUSEG_BUNDLED_MODEL, model);
    snprintf(p, sizeof p, "%s_size.npy", model);
    copy_file(GPUSEG_SOURCE_DIR "/tests/fixtures/size/size_nuclei.npy", p);
    tu_cli_result *r = tu_cli("segment '%s' --model '%s' --save-dir '%s'", EXAMPLE, model, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strstr(r->err, "(size model: 12.69 from the style"), "%s", r->err);
    free(r);
    snprintf(p, sizeof p, "%s/nuclei_segmentation.json", dir);
    char *js = read_text(p);
    ck_assert_str_eq(js_string(js, "diameter_mode", mode, sizeof mode), "size model");
    /* Cellpose: style diameter 12.687756 (manifest.json); 1e-4 relative as test_size_model */
    ck_assert_double_eq_tol(json_number(js, "diameter_style"), 12.687756, 12.687756 * 1e-4);
    ck_assert_double_eq_tol(json_number(js, "diameter"), 9.406859, 9.406859 * 5e-3);
    free(js);
    /* An unreadable size model is an error, not a silent fall-back. */
    snprintf(p, sizeof p, "%s_size.npy", model);
    tu_write_file(p, "\x93NUMPY", 6);
    r = tu_cli("segment '%s' --model '%s' --save-dir '%s/o2'", EXAMPLE, model, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, "_size.npy"), "%s", r->err);
    free(r);
    tu_rmtree(dir);
}
END_TEST

/* The number of lines of a text file. */
static int file_lines(const char *path) {
    char *t = read_text(path);
    int n = tu_count_lines(t);
    free(t);
    return n;
}

START_TEST(cellpose_command_translated) {
    /* Issue #21: a Cellpose command line as a Cellpose user types it, on a folder holding an
     * image, a label file (skipped), and subfolders (searched with --look_one_level_down and
     * --recursive); its outputs under Cellpose's names; --skip-existing and the run summary;
     * info and shm put of the .bin written; --page of a stack; --model NAME found in
     * CELLPOSE_LOCAL_MODELS_PATH; the program compilation reported apart. */
    if (g_dev)
        return;
    char dir[64], in[128], sub[160], sub2[192], out[192], p[512], q[512];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    snprintf(in, sizeof in, "%s/in", dir);
    snprintf(sub, sizeof sub, "%s/sub", in);
    snprintf(sub2, sizeof sub2, "%s/deeper", sub);
    snprintf(out, sizeof out, "%s/new/out", dir); /* does not exist: created, as Cellpose */
    ck_assert_int_eq(mkdir(in, 0755), 0);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    ck_assert_int_eq(mkdir(sub2, 0755), 0);
    snprintf(p, sizeof p, "%s/a.png", in);
    copy_file(EXAMPLE, p);
    snprintf(p, sizeof p, "%s/a_masks.png", in); /* a label file: not an image to segment */
    copy_file(EXAMPLE, p);
    snprintf(p, sizeof p, "%s/c.png", sub);
    copy_file(EXAMPLE, p);
    snprintf(p, sizeof p, "%s/d.png", sub2);
    copy_file(EXAMPLE, p);
    tu_cli_result *r = tu_cli(
        "segment --dir '%s' --savedir '%s' --pretrained_model nuclei_gpuseg_v2 --diameter 10 "
        "--chan 0 --chan2 0 --flow_threshold 0.4 --cellprob_threshold 0 --norm_percentile 2 98 "
        "--exclude_on_edges --save_png --save_tif --save_txt --save_rois --save_geojson --no_npy",
        in, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_int_eq(tu_count_lines(r->err), 1); /* one image: its line, no summary */
    ck_assert_ptr_nonnull(strstr(r->err, "/in/a.png: "));
    free(r);
    const char *names[] = {"a_segmentation.bin", "a_cp_masks.png", "a_cp_masks.tif",
                           "a_cp_outlines.txt",  "a_rois.zip",     "a.geojson"};
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s/%s", out, names[i]);
        ck_assert_msg(tu_exists(p), "%s missing", p);
    }
    snprintf(p, sizeof p, "%s/a_masks_segmentation.bin", out);
    ck_assert(!tu_exists(p));
    snprintf(p, sizeof p, "%s/a_segmentation.json", out);
    char *js = read_text(p);
    ck_assert_ptr_nonnull(strstr(js, "\"exclude_on_edges\":true"));
    ck_assert_ptr_nonnull(strstr(js, "\"norm_lo\":2,\"norm_hi\":98"));
    int n_masks = (int)json_number(js, "n_masks");
    ck_assert_int_gt(n_masks, 10);
    /* the PNG and TIFF masks are the .bin's labels; none touches the image's edge */
    snprintf(q, sizeof q, "%s/a_segmentation.bin", out);
    gpuseg_image *lab = read_bin_labels(q, js), *png = NULL, *tif = NULL;
    free(js);
    snprintf(p, sizeof p, "%s/a_cp_masks.png", out);
    ck_assert_int_eq(gpuseg_image_read(p, &png), GPUSEG_OK);
    snprintf(p, sizeof p, "%s/a_cp_masks.tif", out);
    ck_assert_int_eq(gpuseg_image_read(p, &tif), GPUSEG_OK);
    size_t npix = (size_t)lab->width * lab->height;
    ck_assert_int_eq(memcmp(png->data, lab->data, npix * 2), 0);
    ck_assert_int_eq(memcmp(tif->data, lab->data, npix * 2), 0);
    const uint16_t *v = lab->data;
    for (uint32_t y = 0; y < lab->height; y++)
        for (uint32_t x = 0; x < lab->width; x++)
            if (y == 0 || x == 0 || y + 1 == lab->height || x + 1 == lab->width)
                ck_assert_uint_eq(v[(size_t)y * lab->width + x], 0);
    gpuseg_image_free(png);
    gpuseg_image_free(tif);
    gpuseg_image_free(lab);
    /* one outline line per mask (Cellpose's _cp_outlines.txt) */
    snprintf(p, sizeof p, "%s/a_cp_outlines.txt", out);
    ck_assert_int_eq(file_lines(p), n_masks);

    /* info and shm put read the .bin + .json */
    r = tu_cli("info '%s'", q);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "\"format\":\"bin\""));
    ck_assert_ptr_nonnull(strstr(r->out, "\"dtype\":\"uint16\""));
    free(r);
    char shm[64];
    snprintf(shm, sizeof shm, "/gpuseg-t21-%d", (int)getpid());
    r = tu_cli("shm put '%s' --json --name %s", q, shm);
    ck_assert_msg(r->status == 0, "%s", r->err);
    char want[64];
    snprintf(want, sizeof want, "\"n_masks\":%d", n_masks);
    ck_assert_ptr_nonnull(strstr(r->out, want));
    free(r);
    r = tu_cli("shm rm %s", shm);
    ck_assert_int_eq(r->status, 0);
    free(r);

    /* A rerun one level down with --skip-existing: a.png's outputs are complete (skipped),
     * sub/c.png is done; the summary counts both. Then --recursive adds sub/deeper/d.png. */
    r = tu_cli("segment '%s' --save-dir '%s' --diameter 10 --skip-existing --look-one-level-down",
               in, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->err, "/in/sub/c.png: "));
    ck_assert_ptr_null(strstr(r->err, "/in/a.png: "));
    ck_assert_ptr_nonnull(strstr(r->err, "segment: 2 images: 1 done, 1 skipped"));
    free(r);
    r = tu_cli("segment '%s' --save-dir '%s' --diameter 10 --skip-existing --recursive", in, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->err, "/deeper/d.png: "));
    ck_assert_ptr_nonnull(strstr(r->err, "segment: 3 images: 1 done, 2 skipped"));
    free(r);
    /* a truncated .bin is not complete: segmented again (--img-filter d: stems ending in d) */
    snprintf(p, sizeof p, "%s/d_segmentation.bin", out);
    ck_assert_int_eq(truncate(p, 10), 0);
    r = tu_cli(
        "segment '%s' --save-dir '%s' --diameter 10 --skip-existing --recursive --img-filter "
        "d",
        in, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->err, "/deeper/d.png: "));
    ck_assert_int_eq(tu_count_lines(r->err), 1); /* one image, done: no summary line */
    free(r);

    /* A two-page stack: refused without --page (catalogue), page 1 segmented with it. */
    gpuseg_image *img = NULL, *stack = NULL;
    ck_assert_int_eq(gpuseg_image_read(EXAMPLE, &img), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_image_create(img->width, img->height, 1, 2, GPUSEG_DTYPE_U16, &stack),
                     GPUSEG_OK);
    size_t n = (size_t)img->width * img->height;
    const uint8_t *src = img->data;
    for (size_t i = 0; i < n; i++) /* page 0 empty, page 1 the example's first channel */
        ((uint16_t *)stack->data)[n + i] = src[i * img->channels];
    snprintf(p, sizeof p, "%s/stack.tif", dir);
    ck_assert_int_eq(gpuseg_labels_write(p, stack, NULL), GPUSEG_OK);
    gpuseg_image_free(stack);
    gpuseg_image_free(img);
    r = tu_cli("segment '%s' --page 1 --diameter 10 -o '%s/stack_p1.bin' --quiet", p, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    snprintf(q, sizeof q, "%s/stack_p1.json", dir);
    js = read_text(q);
    ck_assert_ptr_nonnull(strstr(js, "\"page\":1"));
    ck_assert(json_number(js, "n_masks") > 10);
    free(js);

    /* --model nuclei finds Cellpose's file name (nucleitorch_0) in CELLPOSE_LOCAL_MODELS_PATH;
     * with an empty program cache the compilation is said on its own line. */
    char models[256], cache[256];
    snprintf(models, sizeof models, "%s/cpmodels", dir);
    snprintf(cache, sizeof cache, "%s/cache", dir);
    ck_assert_int_eq(mkdir(models, 0755), 0);
    snprintf(p, sizeof p, "%s/nucleitorch_0", models);
    copy_file(GPUSEG_SOURCE_DIR "/models/nuclei_gpuseg_v2", p);
    r = tu_cli("segment --help >/dev/null ; } ; { CELLPOSE_LOCAL_MODELS_PATH='%s' "
               "GPUSEG_CACHE_DIR='%s' '%s' segment '%s' --model nuclei --diameter 10 -o '%s/m.bin'",
               models, cache, GPUSEG_CLI, EXAMPLE, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->err, "segment: compiled "));
    ck_assert_ptr_nonnull(strstr(r->err, "OpenCL programs for this device"));
    free(r);
    snprintf(q, sizeof q, "%s/m.json", dir);
    js = read_text(q);
    ck_assert_ptr_nonnull(strstr(js, "\"normalize\":true"));
    free(js);
    /* the next run loads them from the cache: no compilation said; --no_norm */
    r = tu_cli("segment --help >/dev/null ; } ; { CELLPOSE_LOCAL_MODELS_PATH='%s' "
               "GPUSEG_CACHE_DIR='%s' '%s' segment '%s' --model nuclei --diameter 10 --no_norm "
               "-o '%s/m.bin'",
               models, cache, GPUSEG_CLI, EXAMPLE, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_ptr_null(strstr(r->err, "compil"));
    free(r);
    js = read_text(q);
    ck_assert_ptr_nonnull(strstr(js, "\"normalize\":false"));
    free(js);
    snprintf(q, sizeof q, "%s/m.json", dir);
    js = read_text(q);
    char model[1024];
    js_string(js, "model", model, sizeof model);
    ck_assert_str_eq(model, p);
    free(js);
    tu_rmtree(dir);
}
END_TEST

START_TEST(folder_input_and_progress) {
    if (g_dev)
        return;
    char dir[64], sub[128], out[128], p[256];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    snprintf(sub, sizeof sub, "%s/in", dir);
    snprintf(out, sizeof out, "%s/out", dir);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    ck_assert_int_eq(mkdir(out, 0755), 0);
    /* b.png and a.PNG are images; x_segmentation.png and x_outlines.png are outputs of an
     * earlier run and notes.txt is not an image: all three are skipped. */
    const char *files[] = {"b.png", "a.PNG", "x_segmentation.png", "x_outlines.png"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", sub, files[i]);
        copy_file(EXAMPLE, p);
    }
    snprintf(p, sizeof p, "%s/notes.txt", sub);
    tu_write_file(p, "hello\n", 6);
    tu_cli_result *r = tu_cli("segment '%s' --save-dir '%s' --diameter 10", sub, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    /* One summary line per image, in name order (a.PNG before b.png), no progress line (not a
     * terminal): "IMAGE: N masks, diameter D (given), T s ...", then the run's summary. */
    ck_assert_int_eq(tu_count_lines(r->err), 3);
    ck_assert_ptr_null(strchr(r->err, '\r'));
    char *a = strstr(r->err, "/in/a.PNG: "), *b = strstr(r->err, "/in/b.png: ");
    char *sum =
        strstr(r->err, "segment: 2 images: 2 done, 0 skipped (outputs complete), 0 failed; ");
    ck_assert(a && b && sum && a < b && b < sum);
    ck_assert_ptr_nonnull(strstr(a, "masks, diameter 10.00 (given), "));
    free(r);
    const char *want[] = {"a_segmentation.bin", "a_segmentation.json", "b_segmentation.bin"};
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", out, want[i]);
        ck_assert_msg(tu_exists(p), "%s missing", p);
    }
    snprintf(p, sizeof p, "%s/x_segmentation_segmentation.bin", out);
    ck_assert(!tu_exists(p));
    snprintf(p, sizeof p, "%s/x_outlines_segmentation.bin", out);
    ck_assert(!tu_exists(p));

    /* On a terminal (script(1) gives one): the progress line "[i/n] NAME ..." drawn with \r and
     * cleared before each summary; --quiet: nothing at all. */
    if (system("command -v script >/dev/null 2>&1") != 0) {
        printf("NOTE: script(1) missing: the progress line is not checked\n");
        tu_rmtree(dir);
        return;
    }
    for (int quiet = 0; quiet < 2; quiet++) {
        char cmd[2048], log[256];
        snprintf(log, sizeof log, "%s/tty%d.txt", dir, quiet);
        snprintf(cmd, sizeof cmd,
                 "script -qec \"'%s' segment '%s' --save-dir '%s' --diameter 10 %s\" /dev/null "
                 "</dev/null >'%s' 2>&1",
                 GPUSEG_CLI, sub, out, quiet ? "--quiet" : "", log);
        ck_assert_int_eq(system(cmd), 0);
        char *t = read_text(log);
        if (quiet) {
            ck_assert_msg(t[0] == 0, "--quiet printed: %s", t);
        } else {
            ck_assert_ptr_nonnull(strstr(t, "\r\033[K[1/2] a.PNG ..."));
            ck_assert_ptr_nonnull(strstr(t, "\r\033[K[2/2] b.png ..."));
            char line[300]; /* the summary starts on a cleared line */
            snprintf(line, sizeof line, "\r\033[K%s/a.PNG: ", sub);
            ck_assert_ptr_nonnull(strstr(t, line));
        }
        free(t);
    }
    tu_rmtree(dir);
}
END_TEST

START_TEST(estimate_api) {
    if (g_dev)
        return;
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    gpuseg_image *img = NULL, *blank = NULL;
    ck_assert_int_eq(gpuseg_net_load(ctx, GPUSEG_BUNDLED_MODEL, &net), GPUSEG_OK);
    gpuseg_model_info mi;
    gpuseg_net_get_info(net, &mi);
    ck_assert_int_eq(gpuseg_image_read(EXAMPLE, &img), GPUSEG_OK);
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    ck_assert_int_eq(p.estimate_diameter, 0); /* the library default is Cellpose parity */
    gpuseg_segment_result r;
    /* Off: one pass at diam_labels, the estimation fields stay 0. */
    ck_assert_int_eq(gpuseg_segment(ctx, net, img, &p, &r), GPUSEG_OK);
    ck_assert_uint_eq(r.passes, 1);
    ck_assert_int_eq(r.diameter_estimated, 0);
    ck_assert(r.diameter_first_pass == 0 && r.diameter_estimate == 0);
    ck_assert(fabs(r.diameter - mi.diam_labels) < 1e-5);
    gpuseg_segment_result_free(&r);
    /* On: the example's nuclei (true median diameter 9.0 px) are far from diam_labels (23.1),
     * so further passes run at the estimates until one measures within 10% of its own
     * diameter (v2: three passes from 23.11, the last at 9.41, whose masks measure 9.10;
     * v1 went 23.11 -> 11.45 -> 9.34). */
    p.estimate_diameter = 1;
    ck_assert_int_eq(gpuseg_segment(ctx, net, img, &p, &r), GPUSEG_OK);
    ck_assert(r.passes >= 2 && r.passes <= 3);
    ck_assert_int_eq(r.diameter_estimated, 1);
    ck_assert(fabs(r.diameter_first_pass - mi.diam_labels) < 1e-5);
    ck_assert(r.passes == 3 || fabs(r.diameter_estimate - r.diameter) <= 0.1 * r.diameter);
    /* true 9.03; v2 settles at 9.41, v1 at 9.34 (10.4% from 9.03 would already fail the
     * issue's 15%) */
    ck_assert_msg(r.diameter > 7.7 && r.diameter < 10.4, "diameter used %g", r.diameter);
    double est = r.diameter_estimate;
    gpuseg_segment_result_free(&r);
    /* Starting from the estimate and following it: every call obeys the 10% rule (kept when
     * the first pass's masks measure within 10% of its diameter, a second pass otherwise), and
     * the keep path is reached within a few steps (v1 kept at once from its own estimate). */
    int kept = 0;
    for (int step = 0; step < 5 && !kept; step++) {
        p.diameter = est;
        ck_assert_int_eq(gpuseg_segment(ctx, net, img, &p, &r), GPUSEG_OK);
        ck_assert_int_eq(r.diameter_estimated, 1);
        ck_assert(r.diameter_first_pass == est);
        const bool near = fabs(r.diameter_estimate - est) <= 0.1 * est;
        ck_assert(near ? r.passes == 1 : r.passes >= 2);
        ck_assert(near ? r.diameter == est : r.diameter != est);
        kept = near;
        est = r.diameter_estimate;
        gpuseg_segment_result_free(&r);
    }
    ck_assert_msg(kept, "the estimate did not settle within 5 steps (last %g)", est);
    /* A blank image: no masks, nothing to estimate from; the first pass stands. */
    ck_assert_int_eq(gpuseg_image_create(64, 64, 1, 1, GPUSEG_DTYPE_U8, &blank), GPUSEG_OK);
    p.diameter = 0;
    ck_assert_int_eq(gpuseg_segment(ctx, net, blank, &p, &r), GPUSEG_OK);
    ck_assert_uint_eq(r.n_masks, 0);
    ck_assert_uint_eq(r.passes, 1);
    ck_assert_int_eq(r.diameter_estimated, 0);
    ck_assert(r.diameter_estimate == 0 && r.diameter_first_pass > 0);
    gpuseg_segment_result_free(&r);
    gpuseg_image_free(blank);
    gpuseg_image_free(img);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}
END_TEST

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

START_TEST(dev_diameter_estimation) {
    if (g_dev)
        return;
    static const char *const ids[8] = {
        "02903040e19ddf92f452907644ad3822918f54af41dd85e5a3fe3e1b6d6f9339",
        "07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5",
        "1a11552569160f0b1ea10bedbd628ce6c14f29edec5092034c2309c556df833e",
        "40b00d701695d8ea5d59f95ac39e18004040c96d17fbc1a539317c674eca084b",
        "420f43d21dbaba42bf8c0995b3a2c85537876d594433770c6c6f3d6b779ec15f",
        "58cc121d37fb7f1b4a5252024d88415936781e540252b8f734faeedd29b682d5",
        "b82548ab19466b461614e6055aaf49fbc24c03a2d20e65575b680c7c28268807",
        "ee927e8255096971ddae1bd975cf80c4ad7c847c82d0b5f5dd2ddfe5407007ee"};
    char dir[64], p[2560], images[2048], labels[2048];
    snprintf(images, sizeof images, "%s", tu_data("dsb2018/dev/images"));
    snprintf(labels, sizeof labels, "%s", tu_data("dsb2018/dev/labels"));
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    /* The whole folder with the defaults (bundled model, estimation on). */
    tu_cli_result *r = tu_cli("segment '%s' --save-dir '%s' --quiet", images, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    double err[8];
    int within15 = 0;
    for (int i = 0; i < 8; i++) {
        /* ground truth: utils.diameters of the label image, by gpuseg's own implementation */
        gpuseg_image *gt = NULL;
        snprintf(p, sizeof p, "%s/%s.png", labels, ids[i]);
        ck_assert_int_eq(gpuseg_image_read(p, &gt), GPUSEG_OK);
        size_t npix = (size_t)gt->width * gt->height;
        uint32_t *wide = malloc(npix * sizeof *wide);
        for (size_t k = 0; k < npix; k++)
            wide[k] = gt->dtype == GPUSEG_DTYPE_U16 ? ((uint16_t *)gt->data)[k]
                                                    : ((uint8_t *)gt->data)[k];
        double dt = 0;
        ck_assert_int_eq(gpuseg_labels_diameter(wide, gt->height, gt->width, &dt), GPUSEG_OK);
        free(wide);
        gpuseg_image_free(gt);
        snprintf(p, sizeof p, "%s/%s_segmentation.json", dir, ids[i]);
        char *js = read_text(p);
        double used = json_number(js, "diameter");
        free(js);
        err[i] = fabs(used - dt) / dt;
        within15 += err[i] <= 0.15;
        printf("%.8s: true %.2f, used %.2f, error %.1f%%\n", ids[i], dt, used, 100 * err[i]);
    }
    qsort(err, 8, sizeof *err, cmp_double);
    double median = (err[3] + err[4]) / 2;
    /* Bounds for the bundled model (measured, v2: median 8.3%, 7 of 8 within 15%, worst
     * 24.3%: the bright-field image 1a115525, the model's weakest class; next 420f43d2, the
     * H&E image, +13.1%, kept at diam_labels. v1: median 5.8%, 7 of 8, worst 26.8%, the same
     * image). The target is every image within 15%; these bounds hold what the
     * bundled model reaches with room for device rounding: median error <= 10%, at least 7 of
     * 8 within 15%, none beyond 40%. */
    ck_assert_msg(median <= 0.10, "median relative error %.3f", median);
    ck_assert_msg(within15 >= 7, "%d of 8 within 15%%", within15);
    ck_assert_msg(err[7] <= 0.40, "worst relative error %.3f", err[7]);
    /* And the masks are as good as measured: pooled AP@0.5 over the 8 images (v2: 0.8198 with
     * the estimate, TP 514 of 605; Cellpose's eval of the same file at the model diameter gives
     * 0.7997, at the true diameters 0.8280; tools/eval_dev.py, models/nuclei_gpuseg_v2.json).
     * The floor is 0.80 (v1's was 0.75 for its 0.767): each match lost costs ~0.004 (a TP
     * becomes an FP and an FN: 513/629 = 0.8156), so 0.80 allows four of the 514 matches to
     * flip from device rounding (a seed tie, a pixel at a threshold), while v1 (0.767) or v2
     * without the estimation's gain (0.7997 at its model diameter) fails. */
    r = tu_cli("eval '%s' '%s'", labels, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    const char *pool = strstr(r->out, "pooled over 8 images: AP@0.5 ");
    ck_assert_ptr_nonnull(pool);
    double ap = strtod(pool + strlen("pooled over 8 images: AP@0.5 "), NULL);
    ck_assert_msg(ap >= 0.80, "pooled AP@0.5 %.4f", ap);
    free(r);
    tu_rmtree(dir);
}
END_TEST

/* SIGINT during a folder run: the run stops before the next image, the images done stay whole,
 * nothing else is written (no temporary files), no segment is left, one line, exit 130. */
START_TEST(sigint_cancels_run) {
    if (g_dev)
        return;
    char dir[64], p[256], cmd[2048];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/img%d.png", dir, i);
        copy_file(EXAMPLE, p);
    }
    char prefix[64];
    snprintf(prefix, sizeof prefix, "/gpuseg-cancel%d-", (int)getpid());
    snprintf(cmd, sizeof cmd,
             "cd '%s' && GPUSEG_SHM_PREFIX='%s' '%s' segment . --diameter 10 >out.txt 2>err.txt "
             "& pid=$!; for k in $(seq 1 600); do grep -q masks '%s/err.txt' && break; "
             "sleep 0.2; done; kill -INT $pid; wait $pid; echo $? >'%s/rc.txt'",
             dir, prefix, GPUSEG_CLI, dir, dir);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(p, sizeof p, "%s/rc.txt", dir);
    char *rc = read_text(p);
    snprintf(p, sizeof p, "%s/err.txt", dir);
    char *err = read_text(p);
    ck_assert_msg(atoi(rc) == 130, "exit %s: %s", rc, err);
    const char *last = strstr(err, "gpuseg: segment: cancelled by SIGINT after ");
    ck_assert_msg(last && strchr(last, '\n') && strchr(last, '\n')[1] == 0, "%s", err);
    int done = atoi(last + strlen("gpuseg: segment: cancelled by SIGINT after "));
    ck_assert_msg(done >= 1 && done < 4, "%s", err);
    /* the folder: the inputs, out/err/rc.txt, and a whole .bin + .json per image done */
    for (int i = 0; i < 4; i++) {
        struct stat st;
        snprintf(p, sizeof p, "%s/img%d_segmentation.bin", dir, i);
        ck_assert_int_eq(stat(p, &st) == 0, i < done);
        snprintf(p, sizeof p, "%s/img%d_segmentation.json", dir, i);
        ck_assert_int_eq(stat(p, &st) == 0, i < done);
    }
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq %d", dir, 4 + 3 + 2 * done);
    ck_assert_msg(system(cmd) == 0, "stray files in %s", dir);
    snprintf(cmd, sizeof cmd, "ls /dev/shm | grep -q '^%s'", prefix + 1);
    ck_assert_msg(system(cmd) != 0, "a segment %s* is left", prefix);
    free(rc);
    free(err);
    tu_rmtree(dir);
}
END_TEST

/* ---- large images (issue #16): blockwise runs ------------------------------------------------ */

#define SLIDE_W 700u
#define SLIDE_H 900u

/* dir/slide.tif: the example's first channel mirror-tiled to SLIDE_W x SLIDE_H, stored as a
 * tiled uint16 BigTIFF (64-pixel tiles), so that blockwise runs read it region by region. */
static void make_slide(const char *dir, char *path, size_t len) {
    gpuseg_image *ex = NULL;
    ck_assert_int_eq(gpuseg_image_read(EXAMPLE, &ex), GPUSEG_OK);
    ck_assert(ex->dtype == GPUSEG_DTYPE_U8);
    uint16_t *v = malloc((size_t)SLIDE_W * SLIDE_H * sizeof *v);
    ck_assert_ptr_nonnull(v);
    const uint8_t *d = ex->data;
    for (uint32_t y = 0; y < SLIDE_H; y++)
        for (uint32_t x = 0; x < SLIDE_W; x++) {
            uint32_t my = y % (2 * ex->height), mx = x % (2 * ex->width);
            my = my < ex->height ? my : 2 * ex->height - 1 - my;
            mx = mx < ex->width ? mx : 2 * ex->width - 1 - mx;
            v[(size_t)y * SLIDE_W + x] = d[((size_t)my * ex->width + mx) * ex->channels];
        }
    snprintf(path, len, "%s/slide.tif", dir);
    gpuseg_labels_tiff *w = NULL;
    ck_assert_int_eq(gpuseg_labels_tiff_open(path, SLIDE_W, SLIDE_H, GPUSEG_DTYPE_U16, 64, 0, &w),
                     GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_tiff_write_block(w, 0, 0, SLIDE_W, SLIDE_H, v), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_tiff_commit(w), GPUSEG_OK);
    free(v);
    gpuseg_image_free(ex);
}

/* The label value at pixel i of a one-channel uint16 or uint32 image. */
static uint32_t label_at(const gpuseg_image *l, size_t i) {
    return l->dtype == GPUSEG_DTYPE_U16 ? ((const uint16_t *)l->data)[i]
                                        : ((const uint32_t *)l->data)[i];
}

/* Asserts that b's labels are a's up to renumbering: same background, and a bijection between
 * their labels. Returns the number of masks. */
static uint32_t assert_same_partition(const gpuseg_image *a, const gpuseg_image *b,
                                      const char *what) {
    ck_assert_uint_eq(a->width, b->width);
    ck_assert_uint_eq(a->height, b->height);
    size_t n = (size_t)a->width * a->height;
    uint32_t max = 0;
    for (size_t i = 0; i < n; i++) {
        max = label_at(a, i) > max ? label_at(a, i) : max;
        max = label_at(b, i) > max ? label_at(b, i) : max;
    }
    uint32_t *ab = calloc((size_t)max + 1, sizeof *ab), *ba = calloc((size_t)max + 1, sizeof *ba);
    ck_assert(ab && ba);
    uint32_t masks = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t x = label_at(a, i), y = label_at(b, i);
        ck_assert_msg((x == 0) == (y == 0), "%s: pixel (%zu, %zu): %u vs %u", what, i / a->width,
                      i % a->width, x, y);
        if (!x)
            continue;
        if (!ab[x]) {
            ck_assert_msg(!ba[y], "%s: label %u of the second is two masks of the first", what, y);
            ab[x] = y;
            ba[y] = x;
            masks++;
        }
        ck_assert_msg(ab[x] == y && ba[y] == x, "%s: pixel (%zu, %zu): mask %u split or merged",
                      what, i / a->width, i % a->width, x);
    }
    free(ab);
    free(ba);
    return masks;
}

START_TEST(blockwise_equals_whole) {
    /* The same convolution implementation in both runs (docs/blockwise.md): bit-equal flows. */
    if (g_dev)
        return;
    setenv("GPUSEG_CONV", "direct", 1); /* this test's process and the commands it runs */
    char dir[64], slide[128], p[256], q[256];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    make_slide(dir, slide, sizeof slide);
    tu_cli_result *r = tu_cli("segment '%s' --diameter 20 -o '%s/whole.bin'", slide, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(!strstr(r->err, "blockwise"), "%s", r->err);
    free(r);
    snprintf(p, sizeof p, "%s/whole.bin", dir);
    snprintf(q, sizeof q, "%s/whole.json", dir);
    char *js = read_text(q);
    gpuseg_image *whole = read_bin_labels(p, js);
    free(js);

    /* Blockwise into a .bin: 6 x 8 blocks of 128, labels assembled in memory. */
    r = tu_cli("segment '%s' --diameter 20 --block-size 128 -o '%s/blocks.bin'", slide, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, "(blockwise: 6 x 8 blocks of 128, halo 80, "), "%s", r->err);
    ck_assert_msg(strstr(r->err, "--block-size)"), "%s", r->err);
    free(r);
    snprintf(p, sizeof p, "%s/blocks.bin", dir);
    snprintf(q, sizeof q, "%s/blocks.json", dir);
    js = read_text(q);
    ck_assert_msg(strstr(js, "\"blockwise\":{"), "%s", js);
    ck_assert_double_eq(json_number(js, "block_size"), 128);
    ck_assert_double_eq(json_number(js, "n_blocks"), 48);
    ck_assert_double_eq(json_number(js, "n_too_big"), 0);
    /* the tile cache: each tile of the whole grid through the network once */
    ck_assert_double_eq(json_number(js, "n_tiles_run"), json_number(js, "n_tiles_whole"));
    gpuseg_image *blocks = read_bin_labels(p, js);
    ck_assert_double_eq(json_number(js, "n_masks"),
                        assert_same_partition(whole, blocks, "blocks.bin"));
    free(js);
    gpuseg_image_free(blocks);
    ck_assert(assert_same_partition(whole, whole, "self") > 50);

    /* Streamed into a tiled BigTIFF (uint32, 256-pixel tiles: 3 x 4 blocks, fewer blocks than
     * at 128, for the test's time). */
    r = tu_cli("segment '%s' --diameter 20 --block-size 256 -o '%s/blocks.tif'", slide, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    snprintf(p, sizeof p, "%s/blocks.tif", dir);
    gpuseg_image *tif = NULL;
    ck_assert_int_eq(gpuseg_image_read(p, &tif), GPUSEG_OK);
    ck_assert_int_eq(tif->dtype, GPUSEG_DTYPE_U32);
    assert_same_partition(whole, tif, "blocks.tif");
    gpuseg_image_free(tif);

    /* --max-memory 1M: the image goes blockwise by itself (one block of 1024), the diameter
     * estimated on a sample (the whole image: it is smaller than the sample's 1024^2). */
    r = tu_cli("segment '%s' --max-memory 1M -o '%s/auto.bin'", slide, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strstr(r->err, "(blockwise: 1 x 1 blocks of 1024, "), "%s", r->err);
    ck_assert_msg(strstr(r->err, "budget (--max-memory))"), "%s", r->err);
    ck_assert_msg(strstr(r->err, " on a 700x900 sample)"), "%s", r->err);
    free(r);
    snprintf(q, sizeof q, "%s/auto.json", dir);
    js = read_text(q);
    ck_assert_msg(strstr(js, "\"diameter_sample\":[700,900]"), "%s", js);
    ck_assert(json_number(js, "n_masks") > 50);
    free(js);
    gpuseg_image_free(whole);
    tu_rmtree(dir);
}
END_TEST

START_TEST(blockwise_refusals) {
    /* Refused before any device work, one line each. */
    char dir[64], slide[128];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    make_slide(dir, slide, sizeof slide);
    tu_cli_result *r = tu_cli("segment '%s' --block-size 100 -o '%s/o.bin'", slide, dir);
    ck_assert_int_eq(r->status, 2);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, "--block-size 100: a multiple of 16, at least 64"), "%s", r->err);
    free(r);
    r = tu_cli("segment '%s' --block-size 128 -o '%s/o.tif' --save-outlines", slide, dir);
    ck_assert_int_eq(r->status, 2);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, "--save-outlines with TIFF labels"), "%s", r->err);
    free(r);
    /* Automatic: the image's header says it goes blockwise. */
    r = tu_cli("segment '%s' --max-memory 1M --format tif --save-dir '%s/out' --save-outlines",
               slide, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, "slide.tif: goes blockwise (a whole-image run needs"), "%s",
                  r->err);
    free(r);
    r = tu_cli("segment '%s' --block-size 128 --save-flows -o '%s/o.bin'", slide, dir);
    ck_assert_int_eq(r->status, 2);
    ck_assert_msg(strstr(r->err, "--save-flows"), "%s", r->err);
    free(r);
    /* nothing was written */
    char cmd[256];
    snprintf(cmd, sizeof cmd, "test $(ls -A '%s' | wc -l) -eq 1", dir);
    ck_assert_msg(system(cmd) == 0, "stray files in %s", dir);
    tu_rmtree(dir);
}
END_TEST

/* SIGINT during a blockwise run streaming a TIFF: the writer is aborted, no .tif and no
 * temporary is left (only the hidden resumable state), exit 130. */
START_TEST(blockwise_sigint) {
    if (g_dev)
        return;
    char dir[64], slide[128], p[256], cmd[2048];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    make_slide(dir, slide, sizeof slide);
    /* the temporary (out.tif.tmp-XXXXXX) appears when the blockwise run starts */
    snprintf(cmd, sizeof cmd,
             "cd '%s' || exit 1; '%s' segment slide.tif --diameter 20 --block-size 64 -o out.tif "
             ">out.txt 2>err.txt & pid=$!; for k in $(seq 1 1200); do ls | grep -q '^out.tif.tmp-' "
             "&& break; sleep 0.1; done; sleep 1; kill -INT $pid; wait $pid; echo $? >rc.txt",
             dir, GPUSEG_CLI);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(p, sizeof p, "%s/rc.txt", dir);
    char *rc = read_text(p);
    snprintf(p, sizeof p, "%s/err.txt", dir);
    char *err = read_text(p);
    ck_assert_msg(atoi(rc) == 130, "exit %s: %s", rc, err);
    ck_assert_msg(strstr(err, "gpuseg: segment: cancelled by SIGINT after 0 of 1 images"), "%s",
                  err);
    /* the resumable state stays when it holds work (the percentiles, blocks), and says so */
    snprintf(p, sizeof p, "%s/.out.tif.gpuseg-resume/journal", dir);
    if (access(p, F_OK) == 0) {
        ck_assert_msg(strstr(err, "; the same command with --resume continues from there"), "%s",
                      err);
        snprintf(cmd, sizeof cmd, "rm -r '%s/.out.tif.gpuseg-resume'", dir);
        ck_assert_int_eq(system(cmd), 0);
    }
    snprintf(cmd, sizeof cmd,
             "cd '%s' && test \"$(ls -A | tr '\\n' ' ')\" = 'err.txt out.txt rc.txt slide.tif '",
             dir);
    ck_assert_msg(system(cmd) == 0, "stray files in %s", dir);
    free(rc);
    free(err);
    tu_rmtree(dir);
}
END_TEST

/* a's labels renumbered to b's (the bijection of assert_same_partition), as uint32. */
static gpuseg_image *renumbered(const gpuseg_image *a, const gpuseg_image *b) {
    gpuseg_image *o = NULL;
    ck_assert_int_eq(gpuseg_image_create(a->width, a->height, 1, 1, GPUSEG_DTYPE_U32, &o),
                     GPUSEG_OK);
    for (size_t i = 0; i < (size_t)a->width * a->height; i++)
        ((uint32_t *)o->data)[i] = label_at(a, i) ? label_at(b, i) : 0;
    return o;
}

/* Whether two files hold the same bytes. */
static int same_bytes(const char *a, const char *b) {
    size_t na, nb;
    char *x = tu_read_file(a, &na), *y = tu_read_file(b, &nb);
    int same = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

/* GeoJSON label -> its ring (jansson), for a file of n features. */
static json_t *geojson_rings(const char *path) {
    json_error_t e;
    json_t *g = json_load_file(path, 0, &e);
    ck_assert_msg(g, "%s: %s", path, e.text);
    json_t *out = json_object(), *f;
    size_t i;
    json_array_foreach(json_object_get(g, "features"), i, f) {
        json_t *lab = json_object_get(
            json_object_get(json_object_get(f, "properties"), "measurements"), "label");
        char k[24];
        snprintf(k, sizeof k, "%lld", (long long)json_integer_value(lab));
        json_object_set(out, k, json_object_get(json_object_get(f, "geometry"), "coordinates"));
    }
    json_decref(g);
    return out;
}

/* Blockwise with the labels streamed to TIFF and the polygon files streamed block by block:
 * each file equals the whole-image run's up to renumbering, byte for byte once the whole run's
 * labels are renumbered as the blocks numbered them; GeoJSON read back with jansson. */
START_TEST(blockwise_streams_polygons) {
    if (g_dev)
        return;
    setenv("GPUSEG_CONV", "direct", 1);
    char dir[64], slide[128], p[256], q[256];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    make_slide(dir, slide, sizeof slide);
    tu_cli_result *r = tu_cli("segment '%s' --diameter 20 -o '%s/whole.tif' --save-geojson "
                              "--save-rois --save-txt",
                              slide, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    /* blocks of 128: 6 x 8 blocks, masks crossing many seams */
    r = tu_cli("segment '%s' --diameter 20 --block-size 128 -o '%s/blocks.tif' --save-geojson "
               "--save-rois --save-txt",
               slide, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strstr(r->err, "(blockwise: 6 x 8 blocks of 128, halo 80, 0 masks over"), "%s",
                  r->err);
    free(r);
    gpuseg_image *whole = NULL, *blocks = NULL;
    snprintf(p, sizeof p, "%s/whole.tif", dir);
    ck_assert_int_eq(gpuseg_image_read(p, &whole), GPUSEG_OK);
    snprintf(p, sizeof p, "%s/blocks.tif", dir);
    ck_assert_int_eq(gpuseg_image_read(p, &blocks), GPUSEG_OK);
    const uint32_t n = assert_same_partition(whole, blocks, "blocks.tif");
    ck_assert_uint_gt(n, 50);
    /* the whole run's masks under the blocks' numbers: the library's whole-file writers give
     * the streamed files' bytes */
    gpuseg_image *ren = renumbered(whole, blocks);
    gpuseg_polygons *poly = NULL;
    ck_assert_int_eq(gpuseg_labels_polygons(ren, &poly), GPUSEG_OK);
    ck_assert_uint_eq(poly->n, n);
    const char *sfx[3] = {".geojson", "_rois.zip", "_cp_outlines.txt"};
    for (int k = 0; k < 3; k++) {
        snprintf(p, sizeof p, "%s/ren%s", dir, sfx[k]);
        ck_assert_int_eq(k == 0   ? gpuseg_polygons_write_geojson(p, poly, NULL)
                         : k == 1 ? gpuseg_polygons_write_rois(p, poly)
                                  : gpuseg_polygons_write_txt(p, poly),
                         GPUSEG_OK);
        snprintf(q, sizeof q, "%s/blocks%s", dir, sfx[k]);
        ck_assert_msg(same_bytes(p, q), "%s differs from the whole run's, renumbered", q);
    }
    /* GeoJSON with jansson: every whole-image ring is the streamed ring of its mask */
    snprintf(p, sizeof p, "%s/whole.geojson", dir);
    snprintf(q, sizeof q, "%s/blocks.geojson", dir);
    json_t *gw = geojson_rings(p), *gb = geojson_rings(q);
    ck_assert_uint_eq(json_object_size(gw), n);
    ck_assert_uint_eq(json_object_size(gb), n);
    for (size_t i = 0; i < (size_t)whole->width * whole->height; i++) {
        char ka[24], kb[24];
        snprintf(ka, sizeof ka, "%u", label_at(whole, i));
        snprintf(kb, sizeof kb, "%u", label_at(blocks, i));
        if (label_at(whole, i))
            ck_assert_msg(json_equal(json_object_get(gw, ka), json_object_get(gb, kb)),
                          "mask %s (blocks: %s): another ring", ka, kb);
    }
    json_decref(gw);
    json_decref(gb);
    /* nothing left beside the outputs: no state folder, no temporary */
    snprintf(p, sizeof p,
             "cd '%s' && test \"$(ls -A | tr '\\n' ' ')\" = 'blocks.geojson blocks.tif "
             "blocks_cp_outlines.txt blocks_rois.zip ren.geojson ren_cp_outlines.txt "
             "ren_rois.zip slide.tif whole.geojson whole.tif whole_cp_outlines.txt "
             "whole_rois.zip '",
             dir);
    ck_assert_msg(system(p) == 0, "stray files in %s", dir);
    gpuseg_polygons_free(poly);
    gpuseg_image_free(ren);
    gpuseg_image_free(whole);
    gpuseg_image_free(blocks);
    tu_rmtree(dir);
}
END_TEST

/* --resume: a run killed (SIGKILL, through the test hook) after 5 of 12 blocks leaves no
 * labels and no polygon files, only its state; with its last record torn, the same command
 * with --resume finishes it from block 5 and its files equal an uninterrupted run's byte for
 * byte (TIFF pixel data, polygon files). A state of another run is refused with what differs;
 * without --resume it is replaced. */
START_TEST(blockwise_resume) {
    if (g_dev)
        return;
    setenv("GPUSEG_CONV", "direct", 1);
    char dir[64], slide[128], p[256], q[256], cmd[1024];
    snprintf(dir, sizeof dir, "%s", tu_tmpdir());
    make_slide(dir, slide, sizeof slide);
    const char *opts = "--diameter 20 --block-size 256 --save-geojson --save-rois --save-txt";
    tu_cli_result *r = tu_cli("segment '%s' %s -o '%s/full.tif'", slide, opts, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    snprintf(cmd, sizeof cmd,
             "cd '%s' && GPUSEG_TEST_KILL_AFTER_BLOCKS=5 '%s' segment slide.tif %s -o out.tif "
             "2>err.txt; echo $? >rc.txt",
             dir, GPUSEG_CLI, opts);
    ck_assert_int_eq(system(cmd), 0);
    snprintf(p, sizeof p, "%s/rc.txt", dir);
    char *rc = read_text(p);
    ck_assert_msg(atoi(rc) == 128 + 9, "exit %s", rc); /* killed by SIGKILL */
    free(rc);
    snprintf(p, sizeof p, "%s/out.tif", dir);
    ck_assert(access(p, F_OK) != 0);
    snprintf(p, sizeof p, "%s/out.geojson", dir);
    ck_assert(access(p, F_OK) != 0);
    snprintf(p, sizeof p, "%s/.out.tif.gpuseg-resume/journal", dir);
    ck_assert_msg(access(p, F_OK) == 0, "no state after the kill");
    /* a record torn by the kill and bytes after the last record in a part file: the torn
     * block 5 is dropped, the part cut back */
    snprintf(cmd, sizeof cmd,
             "cd '%s/.out.tif.gpuseg-resume' && truncate -s -9 journal && echo torn >>geojson.part",
             dir);
    ck_assert_int_eq(system(cmd), 0);
    /* another diameter: refused, one line naming it, the state kept */
    r = tu_cli("segment '%s' --diameter 21 --block-size 256 --save-geojson --save-rois "
               "--save-txt -o '%s/out.tif' --resume",
               slide, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, "--resume: the saved state (") &&
                      strstr(r->err, "parameters.diameter (then 20, now 21)"),
                  "%s", r->err);
    free(r);
    ck_assert_msg(access(p, F_OK) == 0, "the state went with a refused --resume");
    /* the same command with --resume: continues after block 5 */
    r = tu_cli("segment '%s' %s -o '%s/out.tif' --resume", slide, opts, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strstr(r->err, "resuming after block 4 of 12"), "%s", r->err);
    free(r);
    ck_assert_msg(access(p, F_OK) != 0, "the state is left after success");
    gpuseg_image *a = NULL, *b = NULL;
    snprintf(p, sizeof p, "%s/full.tif", dir);
    ck_assert_int_eq(gpuseg_image_read(p, &a), GPUSEG_OK);
    snprintf(p, sizeof p, "%s/out.tif", dir);
    ck_assert_int_eq(gpuseg_image_read(p, &b), GPUSEG_OK);
    ck_assert_int_eq(a->dtype, b->dtype);
    ck_assert_msg(memcmp(a->data, b->data, (size_t)a->width * a->height * 4) == 0,
                  "resumed labels differ from the uninterrupted run's");
    gpuseg_image_free(a);
    gpuseg_image_free(b);
    const char *sfx[3] = {".geojson", "_rois.zip", "_cp_outlines.txt"};
    for (int k = 0; k < 3; k++) {
        snprintf(p, sizeof p, "%s/full%s", dir, sfx[k]);
        snprintf(q, sizeof q, "%s/out%s", dir, sfx[k]);
        ck_assert_msg(same_bytes(p, q), "%s differs from the uninterrupted run's", q);
    }
    /* killed again, then run without --resume: the state is replaced (said), run whole */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && rm out* && GPUSEG_TEST_KILL_AFTER_BLOCKS=1 '%s' segment slide.tif %s "
             "-o out.tif 2>/dev/null; test -d .out.tif.gpuseg-resume",
             dir, GPUSEG_CLI, opts);
    ck_assert_int_eq(system(cmd), 0);
    r = tu_cli("segment '%s' %s -o '%s/out.tif'", slide, opts, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strstr(r->err, "replaced the resumable state of an earlier, unfinished run (1 "
                                 "of 12 blocks done"),
                  "%s", r->err);
    free(r);
    snprintf(p, sizeof p, "%s/full.geojson", dir);
    snprintf(q, sizeof q, "%s/out.geojson", dir);
    ck_assert(same_bytes(p, q));
    snprintf(cmd, sizeof cmd, "cd '%s' && test ! -e .out.tif.gpuseg-resume", dir);
    ck_assert_int_eq(system(cmd), 0);
    /* --resume needs streamed TIFF labels */
    r = tu_cli("segment '%s' --block-size 256 -o '%s/o.bin' --resume", slide, dir);
    ck_assert_int_eq(r->status, 2);
    ck_assert_msg(strstr(r->err, "--resume continues a blockwise run that streams"), "%s", r->err);
    free(r);
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    g_dev = tu_require_device();
    if (g_dev == 1)
        return 1;
    if (g_dev != 0)
        printf("NOTE: no usable OpenCL device: only the host-side cases run\n");
    Suite *s = suite_create("segment_cli");
    TCase *tc = tcase_create("segment_cli");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, outlines_hand_made);
    tcase_add_test(tc, outlines_draw_and_png);
    tcase_add_test(tc, model_lookup_errors);
    tcase_add_test(tc, env_model_missing);
    tcase_add_test(tc, default_model_outlines_quiet);
    tcase_add_test(tc, folder_input_and_progress);
    tcase_add_test(tc, cellpose_command_translated);
    tcase_add_test(tc, sigint_cancels_run);
    tcase_add_test(tc, size_model_beside_model);
    tcase_add_test(tc, estimate_api);
    tcase_add_test(tc, blockwise_equals_whole);
    tcase_add_test(tc, blockwise_refusals);
    tcase_add_test(tc, blockwise_sigint);
    tcase_add_test(tc, blockwise_streams_polygons);
    tcase_add_test(tc, blockwise_resume);
    suite_add_tcase(s, tc);
    TCase *sd = tu_tcase_needing("shared_data", TU_NEEDS_SHARED_DATA);
    tcase_set_timeout(sd, 300);
    tcase_add_test(sd, dev_diameter_estimation);
    suite_add_tcase(s, sd);
    return tu_run(s);
}
