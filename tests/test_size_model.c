/* tests/test_size_model.c: Cellpose's SizeModel: the regression (gpuseg_size_model_style_diameter)
 * on hand-computed cases (the formula exp(A . (s - smean) + log(diam_mean) + ymean), the floor
 * at 5, the NaN fallback to diam_mean, bad arguments); the size-model file
 * (gpuseg_size_model_load) on files Cellpose's own train_size wrote (tests/fixtures/size, made by
 * tools/fixtures/make_size_fixtures.py) and on foreign, truncated and corrupted ones; and, with
 * a device, gpuseg_segment with the size model against Cellpose's SizeModel.eval on the bundled
 * model. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/gpuseg.h"
#include "model/size_internal.h"
#include "testutil.h"

#define FIXTURES GPUSEG_SOURCE_DIR "/tests/fixtures/size"

static int g_dev;

/* The number after "key": in js at or after from (json.dumps output). */
static double manifest_num(const char *from, const char *key) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(from, pat);
    ck_assert_msg(p != NULL, "manifest has no %s", key);
    char *end;
    double v = strtod(p + strlen(pat), &end);
    ck_assert_msg(end != p + strlen(pat), "manifest %s is not a number", key);
    return v;
}

/* The manifest text from the case named name on. */
static const char *manifest_case(const char *js, const char *name) {
    char pat[128];
    snprintf(pat, sizeof pat, "\"name\": \"%s\"", name);
    const char *p = strstr(js, pat);
    ck_assert_msg(p != NULL, "manifest has no case %s", name);
    return p;
}

/* A failed load: the status, one line naming the file, no model. */
static void assert_load_fails(const char *path, gpuseg_status want, const char *needle) {
    gpuseg_size_model *sm = (gpuseg_size_model *)1;
    gpuseg_status st = gpuseg_size_model_load(path, &sm);
    const char *e = gpuseg_last_error();
    ck_assert_msg(st == want, "%s: status %d, want %d (%s)", path, st, want, e);
    ck_assert_ptr_null(sm);
    ck_assert_msg(strncmp(e, path, strlen(path)) == 0, "message does not start with the path: %s",
                  e);
    ck_assert_msg(!strchr(e, '\n'), "message is not one line: %s", e);
    if (needle)
        ck_assert_msg(strstr(e, needle), "message lacks '%s': %s", needle, e);
}

START_TEST(style_diameter) {
    const double A[3] = {0.5, -0.25, 0.125}, smean[3] = {0.1, 0.2, -0.3};
    gpuseg_size_model sm = {.n = 3, .A = A, .smean = smean, .ymean = -0.1, .diam_mean = 30.0};
    const float style[3] = {0.6f, 0.2f, 0.5f};
    double d = 0;
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, style, 3, &d), GPUSEG_OK);
    double dot =
        0.5 * ((double)0.6f - 0.1) - 0.25 * ((double)0.2f - 0.2) + 0.125 * ((double)0.5f + 0.3);
    double want = exp(dot + log(30.0) - 0.1);
    ck_assert_double_eq_tol(d, want, 1e-12 * want);
    ck_assert_double_eq_tol(d, 30.0 * exp(0.25 + 0.1 - 0.1), 1e-5); /* 38.52 */
    /* styles far from the training mean: floored at 5 */
    const float low[3] = {-20.f, 0.2f, -0.3f};
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, low, 3, &d), GPUSEG_OK);
    ck_assert_double_eq(d, 5.0);
    /* NaN style: Cellpose falls back to diam_mean */
    const float bad[3] = {NAN, 0.f, 0.f};
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, bad, 3, &d), GPUSEG_OK);
    ck_assert_double_eq(d, 30.0);
    /* at the mean style with ymean 0: diam_mean itself */
    sm.ymean = 0.0;
    const float mean[3] = {0.1f, 0.2f, -0.3f};
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, mean, 3, &d), GPUSEG_OK);
    ck_assert_double_eq_tol(d, 30.0, 1e-5);
    /* arguments */
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, style, 2, &d), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "2 values"));
    sm.diam_mean = 0.0;
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, style, 3, &d), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_size_model_style_diameter(NULL, style, 3, &d), GPUSEG_INVALID_ARGUMENT);
}
END_TEST

/* The files Cellpose's train_size wrote: values, dtypes (float64 A, float32 smean and ymean, a
 * Python float diam_mean) and the 256-value original whose padding is 0. */
START_TEST(load_cellpose_files) {
    size_t n;
    char *man = tu_read_file(FIXTURES "/manifest.json", &n);
    gpuseg_size_model *sm = NULL, *sm256 = NULL;
    ck_assert_msg(gpuseg_size_model_load(FIXTURES "/size_nuclei.npy", &sm) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    ck_assert_uint_eq(sm->n, (uint32_t)manifest_num(man, "n"));
    ck_assert_uint_eq(sm->n, 128);
    ck_assert_double_eq(sm->diam_mean, manifest_num(man, "diam_mean"));
    /* ymean is a float32 in the file, printed by Python as its exact double value */
    ck_assert_double_eq(sm->ymean, manifest_num(man, "ymean"));
    ck_assert_double_eq(sm->A[0], manifest_num(man, "A0"));
    ck_assert_double_eq(sm->smean[0], manifest_num(man, "smean0"));
    double sa = 0, ss = 0;
    for (uint32_t i = 0; i < sm->n; i++) {
        sa += sm->A[i];
        ss += sm->smean[i];
        ck_assert_double_eq((double)(float)sm->smean[i], sm->smean[i]); /* float32 values */
    }
    /* numpy sums pairwise: the order differs, so a few ulps */
    ck_assert_double_eq_tol(sa, manifest_num(man, "A_sum"), 1e-12);
    ck_assert_double_eq_tol(ss, manifest_num(man, "smean_sum"), 1e-12);
    ck_assert_msg(gpuseg_size_model_load(FIXTURES "/size_train256.npy", &sm256) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    ck_assert_uint_eq(sm256->n, 256);
    ck_assert_double_eq(sm256->diam_mean, sm->diam_mean);
    ck_assert_double_eq(sm256->ymean, sm->ymean);
    for (uint32_t i = 0; i < 256; i++) {
        ck_assert_double_eq(sm256->A[i], i < 128 ? sm->A[i] : 0.0);
        ck_assert_double_eq(sm256->smean[i], i < 128 ? sm->smean[i] : 0.0);
    }
    /* Cellpose's style of each case's first pass gives Cellpose's diam_style (float64 both;
     * numpy's dot sums in another order: ~1e-15 relative) */
    static const char *const cases[2] = {"example", "crowded"};
    for (int c = 0; c < 2; c++) {
        char path[512];
        snprintf(path, sizeof path, FIXTURES "/%s_style.npy", cases[c]);
        gpuseg_npy *st = NULL;
        ck_assert_int_eq(gpuseg_npy_read(path, &st), GPUSEG_OK);
        ck_assert_uint_eq(st->shape[0], 128);
        double d = 0, want = manifest_num(manifest_case(man, cases[c]), "diam_style");
        ck_assert_int_eq(gpuseg_size_model_style_diameter(sm, st->data, 128, &d), GPUSEG_OK);
        ck_assert_msg(fabs(d - want) <= 1e-12 * want, "%s: diam_style %.15g, Cellpose %.15g",
                      cases[c], d, want);
        gpuseg_npy_free(st);
    }
    gpuseg_size_model_free(sm);
    gpuseg_size_model_free(sm256);
    gpuseg_size_model_free(NULL);
    free(man);
}
END_TEST

/* A hand-made size-model .npy: header + pickle (the protocol-2 stream numpy 1.x writes: GLOBAL,
 * BINPUT, BINBYTES) holding {'A': f8[2], 'smean': f4[2], 'diam_mean': 17.0, 'ymean': 0.5}. */
static size_t make_p2(unsigned char *buf, const char *glob) {
    static const char head[] = "{'descr': '|O', 'fortran_order': False, 'shape': (), }";
    size_t n = 0;
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    n = 10;
    memcpy(buf + n, head, strlen(head));
    n += strlen(head);
    while ((n + 1) % 64)
        buf[n++] = ' ';
    buf[n++] = '\n';
    buf[8] = (unsigned char)(n - 10);
    buf[9] = 0;
#define PUT(s) (memcpy(buf + n, s, sizeof(s) - 1), n += sizeof(s) - 1)
    PUT("\x80\x02");
    n += (size_t)sprintf((char *)buf + n, "c%s\n", glob); /* q0 = _reconstruct */
    PUT("q\x00"
        "cnumpy\nndarray\nq\x01"
        "K\x00\x85"
        "C\x01"
        "b\x87R"
        "(K\x01)cnumpy\ndtype\nq\x02"
        "X\x02\x00\x00\x00O8\x89\x88\x87R"
        "(K\x03X\x01\x00\x00\x00|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK?tb\x89]}(");
    /* 'A': float64 [0.5, -0.25] big-endian, to check the byte order too */
    PUT("X\x01\x00\x00\x00"
        "Ah\x00h\x01K\x00\x85"
        "C\x01"
        "b\x87R(K\x01K\x02\x85h\x02"
        "X\x02\x00\x00\x00"
        "f8\x89\x88\x87R(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xff"
        "J\xff\xff\xff\xffK\x00tb\x89"
        "B\x10\x00\x00\x00"
        "\x3f\xe0\x00\x00\x00\x00\x00\x00\xbf\xd0\x00\x00\x00\x00\x00\x00tb");
    /* 'smean': float32 [1, 2] little-endian */
    PUT("X\x05\x00\x00\x00smeanh\x00h\x01K\x00\x85"
        "C\x01"
        "b\x87R(K\x01K\x02\x85h\x02"
        "X\x02\x00\x00\x00"
        "f4\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xff"
        "J\xff\xff\xff\xffK\x00tb\x89"
        "C\x08\x00\x00\x80\x3f\x00\x00\x00\x40tb");
    PUT("X\x09\x00\x00\x00"
        "diam_meanG\x40\x31\x00\x00\x00\x00\x00\x00"
        "X\x05\x00\x00\x00ymeanG\x3f\xe0\x00\x00\x00\x00\x00\x00"
        "ua"
        "tb.");
#undef PUT
    return n;
}

START_TEST(load_protocol2_and_globals) {
    unsigned char buf[2048];
    size_t n = make_p2(buf, "numpy.core.multiarray\n_reconstruct");
    gpuseg_size_model *sm = NULL;
    ck_assert_msg(gpuseg__size_model_load_mem(buf, n, "p2.npy", &sm) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    ck_assert_uint_eq(sm->n, 2);
    ck_assert_double_eq(sm->A[0], 0.5);
    ck_assert_double_eq(sm->A[1], -0.25);
    ck_assert_double_eq(sm->smean[0], 1.0);
    ck_assert_double_eq(sm->smean[1], 2.0);
    ck_assert_double_eq(sm->diam_mean, 17.0);
    ck_assert_double_eq(sm->ymean, 0.5);
    gpuseg_size_model_free(sm);
    /* any other callable is refused by name, before anything is built */
    n = make_p2(buf, "os\nsystem");
    sm = (gpuseg_size_model *)1;
    ck_assert_int_eq(gpuseg__size_model_load_mem(buf, n, "evil.npy", &sm), GPUSEG_UNSUPPORTED);
    ck_assert_ptr_null(sm);
    ck_assert_msg(strstr(gpuseg_last_error(), "evil.npy: ") == gpuseg_last_error() &&
                      strstr(gpuseg_last_error(), "'os.system'"),
                  "%s", gpuseg_last_error());
    /* the torch globals are not numpy's */
    n = make_p2(buf, "torch._utils\n_rebuild_tensor_v2");
    ck_assert_int_eq(gpuseg__size_model_load_mem(buf, n, "t.npy", &sm), GPUSEG_UNSUPPORTED);
    ck_assert(strstr(gpuseg_last_error(), "'torch._utils._rebuild_tensor_v2'"));
}
END_TEST

/* Foreign files, every truncation and byte flips of Cellpose's file: a clean failure (one line
 * naming the file) or a sane model, never a crash. */
START_TEST(load_bad_files) {
    char path[1024];
    assert_load_fails(FIXTURES "/missing.npy", GPUSEG_NOT_FOUND, NULL);
    assert_load_fails(GPUSEG_SOURCE_DIR "/tests/fixtures/model/tiny_cpnet.pth", GPUSEG_FORMAT,
                      "ZIP");
    assert_load_fails(GPUSEG_SOURCE_DIR "/tests/fixtures/net/grey_style.npy", GPUSEG_FORMAT,
                      "numeric .npy");
    assert_load_fails(GPUSEG_SOURCE_DIR "/examples/data/nuclei.png", GPUSEG_FORMAT, "not a .npy");
    size_t n;
    unsigned char *b = (unsigned char *)tu_read_file(FIXTURES "/size_nuclei.npy", &n);
    snprintf(path, sizeof path, "%s/trunc.npy", tu_tmpdir());
    for (size_t k = 0; k < n; k += (k < 200 ? 1 : 7)) {
        gpuseg_size_model *sm = (gpuseg_size_model *)1;
        gpuseg_status st = gpuseg__size_model_load_mem(b, k, path, &sm);
        ck_assert_msg(st != GPUSEG_OK, "truncated at %zu of %zu: loaded", k, n);
        ck_assert_ptr_null(sm);
        const char *e = gpuseg_last_error();
        ck_assert_msg(strncmp(e, path, strlen(path)) == 0 && !strchr(e, '\n'), "%zu: %s", k, e);
    }
    tu_write_file(path, b, n / 2);
    assert_load_fails(path, GPUSEG_FORMAT, "truncated");
    unsigned seed = 12345;
    for (int it = 0; it < 3000; it++) {
        unsigned char *m = malloc(n);
        ck_assert_ptr_nonnull(m);
        memcpy(m, b, n);
        for (int f = 0; f < 1 + it % 3; f++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % n;
            seed = seed * 1103515245u + 12345u;
            m[at] ^= (unsigned char)(1u << ((seed >> 16) % 8));
        }
        gpuseg_size_model *sm = NULL;
        gpuseg_status st = gpuseg__size_model_load_mem(m, n, "flip.npy", &sm);
        if (st == GPUSEG_OK) {
            ck_assert(sm->n >= 1 && sm->diam_mean > 0 && isfinite(sm->ymean));
            for (uint32_t i = 0; i < sm->n; i++)
                ck_assert(isfinite(sm->A[i]) && isfinite(sm->smean[i]));
            gpuseg_size_model_free(sm);
        } else {
            const char *e = gpuseg_last_error();
            ck_assert_msg(strncmp(e, "flip.npy: ", 10) == 0 && !strchr(e, '\n'), "%s", e);
        }
        free(m);
    }
    free(b);
}
END_TEST

/* gpuseg_segment with the size model (diameter 0) on the bundled example against Cellpose's
 * SizeModel.eval + models.Cellpose.eval on the same model and size model. */
START_TEST(segment_with_size_model) {
    if (g_dev)
        return;
    size_t n;
    char *man = tu_read_file(FIXTURES "/manifest.json", &n);
    const char *c = manifest_case(man, "example");
    gpuseg_size_model *sm = NULL;
    ck_assert_int_eq(gpuseg_size_model_load(FIXTURES "/size_nuclei.npy", &sm), GPUSEG_OK);
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert_msg(gpuseg_net_load(ctx, GPUSEG_BUNDLED_MODEL, &net) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_read(GPUSEG_SOURCE_DIR "/examples/data/nuclei.png", &img),
                     GPUSEG_OK);
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.size_model = sm;
    gpuseg_segment_result r;
    ck_assert_msg(gpuseg_segment(ctx, net, img, &p, &r) == GPUSEG_OK, "%s", gpuseg_last_error());
    double ds = manifest_num(c, "diam_style"), d = manifest_num(c, "diam"),
           dres = manifest_num(c, "diam_resample");
    double nfin = manifest_num(c, "final_n_masks");
    fprintf(stderr,
            "size model: diam_style %.6f (Cellpose %.6f), estimate %.6f (Cellpose SizeModel "
            "%.6f, Cellpose resample=True %.6f), masks %u (Cellpose %.0f)\n",
            r.diameter_style, ds, r.diameter_estimate, d, dres, r.n_masks, nfin);
    ck_assert_uint_eq(r.passes, 3);
    /* the style is float32 summed over tiles in another order than torch's: the style diameter
     * agrees to ~1e-5 relative (exp of a dot product of 128 terms); 1e-4 allows for it */
    ck_assert_msg(fabs(r.diameter_style - ds) <= 1e-4 * ds, "diam_style %.9g vs %.9g",
                  r.diameter_style, ds);
    ck_assert_double_eq_tol(r.diameter_first_pass, manifest_num(man, "diam_labels"), 1e-4);
    /* pass 2 runs resample=True like Cellpose's CellposeModel.eval(diameter=diam_style): the
     * same masks up to a pixel or two at mask edges, so the median diameter agrees to 0.5%;
     * SizeModel runs it resample=False, interp=False: 1.1% apart here, 2% allowed */
    ck_assert_msg(fabs(r.diameter_estimate - dres) <= 0.005 * dres, "estimate %.6f vs %.6f",
                  r.diameter_estimate, dres);
    ck_assert_msg(fabs(r.diameter_estimate - d) <= 0.02 * d, "estimate %.6f vs SizeModel %.6f",
                  r.diameter_estimate, d);
    ck_assert_int_eq(r.diameter_estimated, 1);
    ck_assert_double_eq(r.diameter, r.diameter_estimate);
    ck_assert_msg(fabs((double)r.n_masks - nfin) <= 0.05 * nfin, "%u masks vs %.0f", r.n_masks,
                  nfin);
    gpuseg_segment_result_free(&r);
    /* a size model for another net is refused */
    double A[3] = {0}, sme[3] = {0};
    gpuseg_size_model other = {.n = 3, .A = A, .smean = sme, .ymean = 0, .diam_mean = 17};
    p.size_model = &other;
    ck_assert_int_eq(gpuseg_segment(ctx, net, img, &p, &r), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "3 style values"));
    gpuseg_image_free(img);
    gpuseg_net_free(net);
    gpuseg_size_model_free(sm);
    free(man);
}
END_TEST

int main(void) {
    Suite *s = suite_create("size_model");
    TCase *tc = tcase_create("host");
    tcase_add_test(tc, style_diameter);
    tcase_add_test(tc, load_cellpose_files);
    tcase_add_test(tc, load_protocol2_and_globals);
    tcase_add_test(tc, load_bad_files);
    suite_add_tcase(s, tc);
    g_dev = tu_require_device();
    TCase *td = tcase_create("device");
    tcase_set_timeout(td, 600);
    tcase_add_test(td, segment_with_size_model);
    suite_add_tcase(s, td);
    return tu_run(s);
}
