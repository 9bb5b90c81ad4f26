/* tests/test_polygons.c: outline polygons (gpuseg_labels_polygons: Cellpose's outlines_list
 * vertex convention on hand-made masks) and the files made from them: the ImageJ ROI zip
 * (archive structure read back with the model module's ZIP reader, each .roi header and
 * coordinates), the GeoJSON for QuPath (parsed back with jansson: closed rings, +0.5 pixel
 * centres, properties) and Cellpose's _cp_outlines.txt (exact text). Host only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "gpuseg/outlines.h"
#include "model/zip.h"
#include "testutil.h"

/* A U16 label image from a picture: '.' = 0, '1'..'9' = that label, 'a'.. = 10.. */
static gpuseg_image *labels_from(const char *const *rows, uint32_t h) {
    uint32_t w = (uint32_t)strlen(rows[0]);
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(w, h, 1, 1, GPUSEG_DTYPE_U16, &img), GPUSEG_OK);
    uint16_t *d = img->data;
    for (uint32_t y = 0; y < h; y++)
        for (uint32_t x = 0; x < w; x++) {
            char c = rows[y][x];
            d[y * w + x] = (uint16_t)(c == '.' ? 0 : c <= '9' ? c - '0' : c - 'a' + 10);
        }
    return img;
}

static void expect_poly(const gpuseg_polygons *p, uint32_t i, const int32_t *xy, size_t n) {
    ck_assert_uint_lt(i, p->n);
    size_t got = p->start[i + 1] - p->start[i];
    ck_assert_msg(got == n, "mask %u (label %u): %zu vertices, want %zu", i, p->label[i], got, n);
    for (size_t k = 0; k < 2 * n; k++)
        ck_assert_msg(p->xy[2 * p->start[i] + k] == xy[k], "mask %u vertex %zu: %d, want %d", i,
                      k / 2, p->xy[2 * p->start[i] + k], xy[k]);
}

/* The expected vertices were checked against Cellpose 3.1's utils.outlines_list (OpenCV
 * 4.x findContours) on the same pictures. */
START_TEST(trace_hand_made) {
    static const char *const rows[] = {
        /*        0123456789 */
        /* 0 */ "..........",
        /* 1 */ "..555.....",
        /* 2 */ "..555..77.",
        /* 3 */ "..555..77.",
        /* 4 */ "..........",
        /* 5 */ ".3......9.",
        /* 6 */ "44.44.....",
        /* 7 */ "44.44.....",
    };
    gpuseg_image *lab = labels_from(rows, 8);
    gpuseg_polygons *p = NULL;
    ck_assert_int_eq(gpuseg_labels_polygons(lab, &p), GPUSEG_OK);
    ck_assert_uint_eq(p->n, 5);
    const uint32_t want_labels[5] = {3, 4, 5, 7, 9};
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(p->label[i], want_labels[i]);
    /* label 3: a lone pixel (1 vertex) -> empty, as Cellpose (4 or fewer) */
    expect_poly(p, 0, NULL, 0);
    /* label 4: two 2x2 squares (4 vertices each) -> empty */
    expect_poly(p, 1, NULL, 0);
    /* label 5: a 3x3 square, from its top-left pixel down the left side */
    static const int32_t sq[] = {2, 1, 2, 2, 2, 3, 3, 3, 4, 3, 4, 2, 4, 1, 3, 1};
    expect_poly(p, 2, sq, 8);
    expect_poly(p, 3, NULL, 0); /* label 7: 2x2 */
    expect_poly(p, 4, NULL, 0); /* label 9: one pixel */
    gpuseg_polygons_free(p);
    gpuseg_image_free(lab);
}
END_TEST

START_TEST(trace_shapes) {
    static const char *const rows[] = {
        /*        01234567 */
        /* 0 */ "........",
        /* 1 */ ".1111...",
        /* 2 */ ".1..1...",
        /* 3 */ ".1111.2.",
        /* 4 */ "......2.",
        /* 5 */ "22...22.",
        /* 6 */ "22......",
    };
    gpuseg_image *lab = labels_from(rows, 7);
    gpuseg_polygons *p = NULL;
    ck_assert_int_eq(gpuseg_labels_polygons(lab, &p), GPUSEG_OK);
    ck_assert_uint_eq(p->n, 2);
    /* label 1: a ring (the hole's rim is not traced: RETR_EXTERNAL) */
    static const int32_t ring[] = {1, 1, 1, 2, 1, 3, 2, 3, 3, 3, 4, 3, 4, 2, 4, 1, 3, 1, 2, 1};
    expect_poly(p, 0, ring, 10);
    /* label 2: two pieces: the L (6,3),(6,4),(5,5),(6,5) is traced to 5 vertices ((6,4) is
     * met twice and listed twice), the 2x2 square to 4: the L is kept */
    static const int32_t ell[] = {6, 3, 6, 4, 5, 5, 6, 5, 6, 4};
    expect_poly(p, 1, ell, 5);
    gpuseg_polygons_free(p);
    gpuseg_image_free(lab);

    /* U32 labels with sparse huge values keep their values and order */
    gpuseg_image *big = NULL;
    ck_assert_int_eq(gpuseg_image_create(6, 6, 1, 1, GPUSEG_DTYPE_U32, &big), GPUSEG_OK);
    uint32_t *d = big->data;
    memset(d, 0, 36 * sizeof *d);
    for (int y = 0; y < 3; y++)
        for (int x = 0; x < 3; x++) {
            d[y * 6 + x] = 4000000000u;
            d[(y + 3) * 6 + x + 3] = 7u;
        }
    ck_assert_int_eq(gpuseg_labels_polygons(big, &p), GPUSEG_OK);
    ck_assert_uint_eq(p->n, 2);
    ck_assert_uint_eq(p->label[0], 7);
    ck_assert_uint_eq(p->label[1], 4000000000u);
    static const int32_t sq0[] = {0, 0, 0, 1, 0, 2, 1, 2, 2, 2, 2, 1, 2, 0, 1, 0};
    expect_poly(p, 1, sq0, 8);
    gpuseg_polygons_free(p);
    gpuseg_image_free(big);

    /* bad arguments */
    ck_assert_int_eq(gpuseg_labels_polygons(NULL, &p), GPUSEG_INVALID_ARGUMENT);
    gpuseg_image *f = NULL;
    ck_assert_int_eq(gpuseg_image_create(4, 4, 1, 1, GPUSEG_DTYPE_F32, &f), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_polygons(f, &p), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(tu_count_lines(gpuseg_last_error()), 0);
    gpuseg_image_free(f);
}
END_TEST

static uint32_t rd_be16(const unsigned char *p) {
    return (uint32_t)p[0] << 8 | p[1];
}
static uint32_t rd_be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static const char *const FILE_ROWS[] = {
    /*        0123456789 */
    /* 0 */ "..........",
    /* 1 */ "..555.....",
    /* 2 */ "..555..77.",
    /* 3 */ "..555..77.",
    /* 4 */ "......888.",
    /* 5 */ ".3....888.",
    /* 6 */ "......888.",
};

START_TEST(write_files) {
    gpuseg_image *lab = labels_from(FILE_ROWS, 7);
    gpuseg_polygons *p = NULL;
    ck_assert_int_eq(gpuseg_labels_polygons(lab, &p), GPUSEG_OK);
    ck_assert_uint_eq(p->n, 4); /* 3, 5, 7, 8 */
    const char *dir = tu_tmpdir();
    char path[512];

    /* _cp_outlines.txt: one line per mask, empty lines for empty polygons */
    snprintf(path, sizeof path, "%s/img_cp_outlines.txt", dir);
    ck_assert_int_eq(gpuseg_polygons_write_txt(path, p), GPUSEG_OK);
    static const char txt[] = "\n2,1,2,2,2,3,3,3,4,3,4,2,4,1,3,1\n\n6,4,6,5,6,6,7,6,8,6,8,5,8,4,"
                              "7,4\n";
    tu_assert_file_equals(path, txt, strlen(txt));

    /* ROI zip: 2 entries (5 and 8), names, headers, coordinates */
    snprintf(path, sizeof path, "%s/img_rois.zip", dir);
    ck_assert_int_eq(gpuseg_polygons_write_rois(path, p), GPUSEG_OK);
    size_t n = 0;
    unsigned char *buf = (unsigned char *)tu_read_file(path, &n);
    gpuseg__zip z;
    ck_assert_int_eq(gpuseg__zip_open(&z, buf, n, path), GPUSEG_OK);
    ck_assert_uint_eq(z.n_entries, 2);
    ck_assert_int_eq(z.first_len, 8);
    ck_assert(memcmp(z.first_name, "0005.roi", 8) == 0);
    long e8 = gpuseg__zip_find(&z, "0008.roi", 8);
    ck_assert_int_ge(e8, 0);
    const unsigned char *r;
    size_t rn;
    ck_assert_int_eq(gpuseg__zip_data(&z, (size_t)e8, 1, &r, &rn), GPUSEG_OK);
    ck_assert_uint_eq(z.entries[e8].method, 0);
    ck_assert_uint_eq(rn, 64 + 4 * 8 + 64 + 2 * 4);
    ck_assert(memcmp(r, "Iout", 4) == 0);
    ck_assert_uint_eq(rd_be16(r + 4), 226);
    ck_assert_uint_eq(r[6], 7);           /* freehand, as roifile's frompoints */
    ck_assert_uint_eq(rd_be16(r + 8), 4); /* top */
    ck_assert_uint_eq(rd_be16(r + 10), 6);
    ck_assert_uint_eq(rd_be16(r + 12), 7); /* bottom = max y + 1 */
    ck_assert_uint_eq(rd_be16(r + 14), 9); /* right = max x + 1 */
    ck_assert_uint_eq(rd_be16(r + 16), 8);
    ck_assert_uint_eq(rd_be16(r + 50), 40);
    ck_assert_uint_eq(rd_be32(r + 60), 64 + 32);
    static const int32_t xy8[] = {6, 4, 6, 5, 6, 6, 7, 6, 8, 6, 8, 5, 8, 4, 7, 4};
    for (int k = 0; k < 8; k++) {
        ck_assert_uint_eq(rd_be16(r + 64 + 2 * k), (uint32_t)(xy8[2 * k] - 6));
        ck_assert_uint_eq(rd_be16(r + 64 + 16 + 2 * k), (uint32_t)(xy8[2 * k + 1] - 4));
    }
    const unsigned char *h2 = r + 96;
    ck_assert_uint_eq(rd_be32(h2 + 16), 160); /* name offset */
    ck_assert_uint_eq(rd_be32(h2 + 20), 4);   /* name length */
    for (int k = 0; k < 4; k++)
        ck_assert_uint_eq(rd_be16(r + 160 + 2 * k), (uint32_t) "0008"[k]);
    gpuseg__zip_close(&z);
    free(buf);

    /* GeoJSON: closed rings at pixel centres */
    snprintf(path, sizeof path, "%s/img.geojson", dir);
    ck_assert_int_eq(gpuseg_polygons_write_geojson(path, p, "Nucleus"), GPUSEG_OK);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    ck_assert_msg(root, "%s: %s", path, jerr.text);
    ck_assert_str_eq(json_string_value(json_object_get(root, "type")), "FeatureCollection");
    json_t *fs = json_object_get(root, "features");
    ck_assert_uint_eq(json_array_size(fs), 2);
    const uint32_t want_label[2] = {5, 8};
    const int32_t *want_xy[2] = {xy8, xy8}; /* same shape, label 5 shifted by (-4, -3) */
    for (size_t i = 0; i < 2; i++) {
        json_t *f = json_array_get(fs, i);
        json_t *props = json_object_get(f, "properties");
        ck_assert_str_eq(json_string_value(json_object_get(props, "objectType")), "detection");
        char nm[8];
        snprintf(nm, sizeof nm, "%u", want_label[i]);
        ck_assert_str_eq(json_string_value(json_object_get(props, "name")), nm);
        ck_assert_int_eq(
            json_integer_value(json_object_get(json_object_get(props, "measurements"), "label")),
            want_label[i]);
        ck_assert_str_eq(
            json_string_value(json_object_get(json_object_get(props, "classification"), "name")),
            "Nucleus");
        json_t *g = json_object_get(f, "geometry");
        ck_assert_str_eq(json_string_value(json_object_get(g, "type")), "Polygon");
        json_t *rings = json_object_get(g, "coordinates");
        ck_assert_uint_eq(json_array_size(rings), 1);
        json_t *ring = json_array_get(rings, 0);
        ck_assert_uint_eq(json_array_size(ring), 9); /* 8 vertices + the first again */
        const double dx = i == 0 ? -4 : 0, dy = i == 0 ? -3 : 0;
        for (size_t k = 0; k < 9; k++) {
            json_t *pt = json_array_get(ring, k);
            size_t v = k % 8;
            ck_assert_double_eq(json_real_value(json_array_get(pt, 0)),
                                want_xy[i][2 * v] + dx + 0.5);
            ck_assert_double_eq(json_real_value(json_array_get(pt, 1)),
                                want_xy[i][2 * v + 1] + dy + 0.5);
        }
    }
    json_decref(root);
    /* without a classification there is no such member */
    ck_assert_int_eq(gpuseg_polygons_write_geojson(path, p, NULL), GPUSEG_OK);
    root = json_load_file(path, 0, &jerr);
    ck_assert_ptr_nonnull(root);
    ck_assert_ptr_null(json_object_get(
        json_object_get(json_array_get(json_object_get(root, "features"), 0), "properties"),
        "classification"));
    json_decref(root);

    /* failures: one line naming the file, nothing left behind */
    char bad[600];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x_rois.zip", dir);
    ck_assert_int_ne(gpuseg_polygons_write_rois(bad, p), GPUSEG_OK);
    ck_assert(strstr(gpuseg_last_error(), bad));
    ck_assert_int_eq(tu_count_lines(gpuseg_last_error()), 0);
    snprintf(bad, sizeof bad, "%s", dir); /* a directory */
    ck_assert_int_ne(gpuseg_polygons_write_txt(bad, p), GPUSEG_OK);
    ck_assert_int_ne(gpuseg_polygons_write_geojson(bad, p, NULL), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_polygons_write_geojson(path, p, "\xff\xfe"), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "UTF-8"));
    ck_assert_int_eq(gpuseg_polygons_write_txt(path, NULL), GPUSEG_INVALID_ARGUMENT);
    tu_cli_result *res = tu_cli("--version >/dev/null; ls -A '%s'", dir);
    ck_assert_msg(!strstr(res->out, ".tmp-"), "temporaries left: %s", res->out);
    free(res);

    /* a coordinate past ImageJ's integer range is refused */
    p->xy[2 * p->start[1]] = 70000;
    ck_assert_int_eq(gpuseg_polygons_write_rois(path, p), GPUSEG_UNSUPPORTED);
    ck_assert(strstr(gpuseg_last_error(), "70000"));
    gpuseg_polygons_free(p);
    gpuseg_image_free(lab);
    tu_rmtree(dir);
}
END_TEST

/* No masks at all: every writer still writes a valid, empty file. */
START_TEST(write_empty) {
    static const char *const rows[] = {"....", "...."};
    gpuseg_image *lab = labels_from(rows, 2);
    gpuseg_polygons *p = NULL;
    ck_assert_int_eq(gpuseg_labels_polygons(lab, &p), GPUSEG_OK);
    ck_assert_uint_eq(p->n, 0);
    const char *dir = tu_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/e_rois.zip", dir);
    ck_assert_int_eq(gpuseg_polygons_write_rois(path, p), GPUSEG_OK);
    size_t n = 0;
    unsigned char *buf = (unsigned char *)tu_read_file(path, &n);
    ck_assert_uint_eq(n, 22);
    free(buf);
    snprintf(path, sizeof path, "%s/e.geojson", dir);
    ck_assert_int_eq(gpuseg_polygons_write_geojson(path, p, NULL), GPUSEG_OK);
    json_t *root = json_load_file(path, 0, NULL);
    ck_assert_ptr_nonnull(root);
    ck_assert_uint_eq(json_array_size(json_object_get(root, "features")), 0);
    json_decref(root);
    snprintf(path, sizeof path, "%s/e_cp_outlines.txt", dir);
    ck_assert_int_eq(gpuseg_polygons_write_txt(path, p), GPUSEG_OK);
    tu_assert_file_equals(path, "", 0);
    gpuseg_polygons_free(p);
    gpuseg_image_free(lab);
    tu_rmtree(dir);
}
END_TEST

/* Part files (gpuseg_polygons_part_*): the polygons appended in two pieces give the whole-file
 * writers' bytes; reopened at the length synced after the first piece (a killed run: the rest
 * is cut off), the second piece appended again gives them too; an empty part gives the empty
 * files; a part shorter than its journal says is refused. */
START_TEST(part_files) {
    static const char *const top[] = {"..........", "..555.....", "..555.....", "..555.....",
                                      "..........", ".3........", ".........."};
    static const char *const bottom[] = {"..........", "..........", ".......77.", ".......77.",
                                         "......888.", "......888.", "......888."};
    gpuseg_image *lab = labels_from(FILE_ROWS, 7), *la = labels_from(top, 7),
                 *lb = labels_from(bottom, 7);
    gpuseg_polygons *p = NULL, *pa = NULL, *pb = NULL, *none = NULL;
    ck_assert_int_eq(gpuseg_labels_polygons(lab, &p), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_polygons(la, &pa), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_polygons(lb, &pb), GPUSEG_OK);
    none = calloc(1, sizeof *none);
    size_t zero = 0;
    int32_t nxy[2] = {0, 0};
    none->start = &zero;
    none->xy = nxy;
    const char *dir = tu_tmpdir();
    char whole[512], part[512], out[512];
    static const gpuseg_polygons_format fmt[3] = {GPUSEG_POLYGONS_TXT, GPUSEG_POLYGONS_ROIS,
                                                  GPUSEG_POLYGONS_GEOJSON};
    for (int k = 0; k < 3; k++) {
        snprintf(whole, sizeof whole, "%s/whole%d", dir, k);
        snprintf(part, sizeof part, "%s/part%d", dir, k);
        snprintf(out, sizeof out, "%s/out%d", dir, k);
        ck_assert_int_eq(k == 0   ? gpuseg_polygons_write_txt(whole, p)
                         : k == 1 ? gpuseg_polygons_write_rois(whole, p)
                                  : gpuseg_polygons_write_geojson(whole, p, NULL),
                         GPUSEG_OK);
        size_t nw = 0;
        char *want = tu_read_file(whole, &nw);
        gpuseg_polygons_part *f = NULL;
        uint64_t len1 = 0, len2 = 0;
        ck_assert_int_eq(gpuseg_polygons_part_open(part, fmt[k], 0, &f), GPUSEG_OK);
        ck_assert_int_eq(gpuseg_polygons_part_append(f, pa), GPUSEG_OK);
        ck_assert_int_eq(gpuseg_polygons_part_sync(f, &len1), GPUSEG_OK);
        ck_assert_int_eq(gpuseg_polygons_part_append(f, none), GPUSEG_OK);
        ck_assert_int_eq(gpuseg_polygons_part_append(f, pb), GPUSEG_OK);
        ck_assert_int_eq(gpuseg_polygons_part_sync(f, &len2), GPUSEG_OK);
        ck_assert_uint_gt(len2, len1);
        ck_assert_int_eq(gpuseg_polygons_part_publish(f, out, 0), GPUSEG_OK);
        gpuseg_polygons_part_close(f);
        tu_assert_file_equals(out, want, nw);
        /* resumed after the first piece */
        ck_assert_int_eq(gpuseg_polygons_part_open(part, fmt[k], len1, &f), GPUSEG_OK);
        ck_assert_int_eq(gpuseg_polygons_part_append(f, pb), GPUSEG_OK);
        ck_assert_int_eq(gpuseg_polygons_part_publish(f, out, 0), GPUSEG_OK);
        gpuseg_polygons_part_close(f);
        tu_assert_file_equals(out, want, nw);
        free(want);
        /* the part is shorter than the journal says */
        ck_assert_int_eq(gpuseg_polygons_part_open(part, fmt[k], len2 + 100, &f), GPUSEG_FORMAT);
        ck_assert_ptr_null(f);
        ck_assert(strstr(gpuseg_last_error(), "shorter than"));
        /* nothing at all: the empty files */
        ck_assert_int_eq(gpuseg_polygons_part_open(part, fmt[k], 0, &f), GPUSEG_OK);
        ck_assert_int_eq(gpuseg_polygons_part_publish(f, out, 0), GPUSEG_OK);
        gpuseg_polygons_part_close(f);
        ck_assert_int_eq(k == 0   ? gpuseg_polygons_write_txt(whole, none)
                         : k == 1 ? gpuseg_polygons_write_rois(whole, none)
                                  : gpuseg_polygons_write_geojson(whole, none, NULL),
                         GPUSEG_OK);
        want = tu_read_file(whole, &nw);
        tu_assert_file_equals(out, want, nw);
        free(want);
    }
    free(none);
    gpuseg_polygons_free(p);
    gpuseg_polygons_free(pa);
    gpuseg_polygons_free(pb);
    gpuseg_image_free(lab);
    gpuseg_image_free(la);
    gpuseg_image_free(lb);
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("polygons");
    TCase *tc = tcase_create("host");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, trace_hand_made);
    tcase_add_test(tc, trace_shapes);
    tcase_add_test(tc, write_files);
    tcase_add_test(tc, write_empty);
    tcase_add_test(tc, part_files);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
