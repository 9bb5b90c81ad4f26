/* tests/test_prep.c: Cellpose 3.1 pre-processing and tiling on the device (src/prep) against
 * hand-computed cases and fixtures made by the real Cellpose / numpy / cv2
 * (tools/fixtures/make_prep_fixtures.py -> tests/fixtures/prep): channel choice, percentiles,
 * normalisation, OpenCV bilinear resize (in and back), padding, tile positions, tile cutting
 * with augment flips, and the taper blend; plus the error paths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "prep/prep_internal.h"
#include "testutil.h"

#define FIX GPUSEG_SOURCE_DIR "/tests/fixtures/prep/"

static gpuseg_npy *load(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, FIX "%s.npy", name);
    gpuseg_npy *a = NULL;
    gpuseg_status st = gpuseg_npy_read(path, &a);
    ck_assert_msg(st == GPUSEG_OK, "%s: %s", path, gpuseg_last_error());
    return a;
}

static size_t npy_count(const gpuseg_npy *a) {
    size_t n = 1;
    for (uint32_t i = 0; i < a->ndim; i++)
        n *= (size_t)a->shape[i];
    return n;
}

/* A gpuseg_image viewing an input fixture: [H, W] or [H, W, C] samples (not owned). */
static gpuseg_image view(const gpuseg_npy *a) {
    gpuseg_image im = {0};
    im.height = (uint32_t)a->shape[0];
    im.width = (uint32_t)a->shape[1];
    im.channels = a->ndim == 3 ? (uint32_t)a->shape[2] : 1;
    im.pages = 1;
    im.dtype = a->dtype;
    im.data = a->data;
    return im;
}

static float *download(gpuseg_ctx *ctx, cl_mem m, size_t n) {
    float *h = malloc(n * sizeof *h);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(
        clEnqueueReadBuffer(ctx->queue, m, CL_TRUE, 0, n * sizeof *h, h, 0, NULL, NULL),
        CL_SUCCESS);
    return h;
}

static cl_mem upload(gpuseg_ctx *ctx, const float *h, size_t n) {
    cl_mem m = NULL;
    ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_WRITE, n * sizeof *h, "test", &m), GPUSEG_OK);
    ck_assert_int_eq(
        clEnqueueWriteBuffer(ctx->queue, m, CL_TRUE, 0, n * sizeof *h, h, 0, NULL, NULL),
        CL_SUCCESS);
    return m;
}

/* Worst error of got against ref as a multiple of (abs_tol + rel_tol * |ref|); asserts <= 1 and
 * prints the worst element when not. */
static void compare(const char *what, const float *got, const float *ref, size_t n, double abs_tol,
                    double rel_tol) {
    double worst = 0, wabs = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        const double e = fabs((double)got[i] - (double)ref[i]);
        const double r = e / (abs_tol + rel_tol * fabs((double)ref[i]));
        if (!(r <= worst)) {
            worst = r;
            at = i;
        }
        if (e > wabs)
            wabs = e;
    }
    fprintf(stderr, "%s: max abs error %.3g (%.3g of the tolerance)\n", what, wabs, worst);
    ck_assert_msg(worst <= 1.0, "%s: element %zu is %.9g, reference %.9g (max abs error %.3g)",
                  what, at, got[at], ref[at], wabs);
}

/* The integer hash of make_prep_fixtures.py (hash_u32 / hash_f32). */
static uint32_t hash_u32(uint64_t n) {
    uint32_t h = (uint32_t)(n * 2654435761u + 12345u);
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    return h;
}
static float hash_f32(uint64_t n) {
    return (float)(hash_u32(n) >> 8) / 8388608.0f - 1.0f;
}

/* --- host: geometry ------------------------------------------------------------------------ */

START_TEST(pads_and_tile_starts_hand) {
    uint32_t p1, p2;
    gpuseg__pad_amounts(100, &p1, &p2); /* the spec's examples: 14 + 100 + 14 = 128 */
    ck_assert_uint_eq(p1, 14);
    ck_assert_uint_eq(p2, 14);
    gpuseg__pad_amounts(512, &p1, &p2);
    ck_assert_uint_eq(p1, 8);
    ck_assert_uint_eq(p2, 8);
    gpuseg__pad_amounts(1000, &p1, &p2);
    ck_assert_uint_eq(p1, 12);
    ck_assert_uint_eq(p2, 12);
    uint32_t th, lt, n, *s;
    ck_assert_int_eq(gpuseg__tile_starts(NULL, 528, 0.1, 0, &th, &lt, &n, &s), GPUSEG_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(s[0], 0);
    ck_assert_uint_eq(s[1], 152);
    ck_assert_uint_eq(s[2], 304);
    free(s);
    ck_assert_int_eq(gpuseg__tile_starts(NULL, 1024, 0.1, 0, &th, &lt, &n, &s), GPUSEG_OK);
    ck_assert_uint_eq(n, 6);
    ck_assert_uint_eq(s[1], 160);
    ck_assert_uint_eq(s[5], 800);
    free(s);
}
END_TEST

START_TEST(geometry_vs_cellpose) {
    static const double overlaps[] = {0.1, 0.05, 0.5, 0.01, 0.9, 0.25}; /* GEOM_OVERLAPS */
    gpuseg_npy *g = load("geometry");
    ck_assert_int_eq(g->dtype, GPUSEG_DTYPE_I32);
    const int32_t *t = g->data;
    const size_t rows = (size_t)g->shape[0], cols = (size_t)g->shape[1];
    for (size_t r = 0; r < rows; r++) {
        const int32_t *row = t + r * cols;
        uint32_t p1, p2, th, lt, n, *s;
        gpuseg__pad_amounts((uint32_t)row[0], &p1, &p2);
        ck_assert_msg(p1 == (uint32_t)row[3] && p2 == (uint32_t)row[4], "L=%d pads %u %u", row[0],
                      p1, p2);
        ck_assert_int_eq(
            gpuseg__tile_starts(NULL, row[0] + p1 + p2, overlaps[row[1]], row[2], &th, &lt, &n, &s),
            GPUSEG_OK);
        ck_assert_msg(lt == (uint32_t)row[5] && th == (uint32_t)row[6] && n == (uint32_t)row[7],
                      "L=%d ov=%g aug=%d: tiled %u tile %u n %u, Cellpose %d %d %d", row[0],
                      overlaps[row[1]], row[2], lt, th, n, row[5], row[6], row[7]);
        for (uint32_t k = 0; k < n; k++)
            ck_assert_msg(s[k] == (uint32_t)row[8 + k], "L=%d start %u: %u vs %d", row[0], k, s[k],
                          row[8 + k]);
        free(s);
    }
    gpuseg_npy_free(g);
}
END_TEST

/* --- device: hand-computed ----------------------------------------------------------------- */

START_TEST(percentile_of_0_to_99) {
    gpuseg_ctx *ctx = tu_ctx();
    float v[100];
    for (int i = 0; i < 100; i++)
        v[i] = (float)((i * 37) % 100); /* 0..99 shuffled: order must not matter */
    gpuseg_image im = {10, 10, 1, 1, GPUSEG_DTYPE_F32, v};
    gpuseg__prep_params p;
    gpuseg__prep_params_default(&p);
    cl_mem x = NULL;
    ck_assert_int_eq(gpuseg__prep_channels(ctx, &im, &p, &x), GPUSEG_OK);
    gpuseg__norm_stats s;
    ck_assert_int_eq(gpuseg__prep_normalize(ctx, x, 2, 10, 10, 0, 1.0f, 99.0f, &s), GPUSEG_OK);
    /* numpy 2: q = float32(1)/float32(100); (n-1)*q = 0.98999995f; 0 + (1-0)*0.98999995f.
     * 99th: 98.01f. Exactly these float32 values. */
    ck_assert_float_eq(s.lo[0], 0.98999995f);
    ck_assert_float_eq(s.hi[0], 98.01f);
    ck_assert_int_eq(s.mode[0], 1);
    ck_assert_int_eq(s.mode[1], 0); /* the zero second channel is constant: left as is */
    float *h = download(ctx, x, 200);
    for (int i = 0; i < 100; i++) {
        volatile float num = v[i] - 0.98999995f, d = 98.01f - 0.98999995f;
        ck_assert_float_eq(h[i], num / d); /* correctly rounded, as numpy */
        ck_assert_float_eq(h[100 + i], 0.0f);
    }
    free(h);
    gpuseg__release(&x);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* numpy's float32 percentile of n sorted values (the formula percentile_of_0_to_99 pins down):
 * position (n-1)*q in float32, then np_lerp between the two neighbours (kernels/prep.cl). */
static float np_percentile(const float *sorted, int n, float q) {
    volatile float pos = (float)(n - 1) * q;
    const int i = (int)pos;
    volatile float t = pos - (float)i;
    const float a = sorted[i], b = sorted[i + 1 < n ? i + 1 : i];
    volatile float diff = b - a;
    volatile float prod = diff * (t >= 0.5f ? 1.0f - t : t);
    return t >= 0.5f ? b - prod : a + prod;
}

/* Planes whose values share their leading bits (1000 + k/64 and -1000 - k/64 share the top 16 of
 * their order-preserving keys): the radix passes over those bits are skipped (their digit is the
 * minimum's, kernels/prep.cl digit_known) and the percentiles must come out as numpy's. */
START_TEST(percentile_narrow_range) {
    gpuseg_ctx *ctx = tu_ctx();
    float v[2 * 100], pos[100], neg[100];
    for (int i = 0; i < 100; i++) {
        const int k = (i * 37) % 100;
        v[2 * i] = 1000.0f + (float)k / 64.0f;
        v[2 * i + 1] = -1000.0f - (float)k / 64.0f;
        pos[i] = 1000.0f + (float)i / 64.0f; /* sorted ascending */
        neg[i] = -1000.0f - (float)(99 - i) / 64.0f;
    }
    gpuseg_image im = {10, 10, 2, 1, GPUSEG_DTYPE_F32, v};
    gpuseg__prep_params p;
    gpuseg__prep_params_default(&p);
    p.chan = 1;
    p.chan2 = 2;
    cl_mem x = NULL;
    gpuseg__norm_stats s;
    /* Cellpose's default (1, 99), then other percentiles (--norm_percentile LO HI). */
    const float pcts[][2] = {{1.0f, 99.0f}, {3.0f, 99.8f}, {0.0f, 100.0f}, {0.5f, 60.0f}};
    const float *sorted[2] = {pos, neg};
    for (size_t k = 0; k < sizeof pcts / sizeof pcts[0]; k++) {
        const float plo = pcts[k][0], phi = pcts[k][1];
        ck_assert_int_eq(gpuseg__prep_channels(ctx, &im, &p, &x), GPUSEG_OK);
        ck_assert_int_eq(gpuseg__prep_normalize(ctx, x, 2, 10, 10, 0, plo, phi, &s), GPUSEG_OK);
        gpuseg__release(&x);
        for (int c = 0; c < 2; c++) {
            const float lo = np_percentile(sorted[c], 100, plo / 100.0f);
            const float hi = np_percentile(sorted[c], 100, phi / 100.0f);
            ck_assert_msg(s.lo[c] == lo && s.hi[c] == hi,
                          "percentiles %g %g, channel %d: %.9g %.9g, numpy %.9g %.9g", (double)plo,
                          (double)phi, c, (double)s.lo[c], (double)s.hi[c], (double)lo, (double)hi);
            ck_assert_int_eq(s.mode[c], 1);
        }
    }
    ck_assert_int_eq(gpuseg__prep_channels(ctx, &im, &p, &x), GPUSEG_OK);
    ck_assert_int_eq(gpuseg__prep_normalize(ctx, x, 2, 10, 10, 0, 99.0f, 1.0f, &s),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg__prep_normalize(ctx, x, 2, 10, 10, 0, -1.0f, 99.0f, &s),
                     GPUSEG_INVALID_ARGUMENT);
    gpuseg__release(&x);
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(resize_2x2_to_4x4) {
    gpuseg_ctx *ctx = tu_ctx();
    /* OpenCV's rule by hand: x: f = (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped at
     * both ends; y: the same f, rows clipped -> [[0, .25, .75, 1], [.5, .75, 1.25, 1.5],
     * [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]] (cv2.resize gives exactly this). */
    const float src[4] = {0, 1, 2, 3};
    const float want[16] = {0,    .25f,  .75f,  1,    .5f, .75f,  1.25f, 1.5f,
                            1.5f, 1.75f, 2.25f, 2.5f, 2,   2.25f, 2.75f, 3};
    for (int rule = 0; rule < 2; rule++) {
        cl_mem a = upload(ctx, src, 4), b = NULL;
        ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_WRITE, 64, "t", &b), GPUSEG_OK);
        ck_assert_int_eq(gpuseg__resize(ctx, a, 1, 2, 2, b, 4, 4, (gpuseg__resize_rule)rule),
                         GPUSEG_OK);
        float *h = download(ctx, b, 16);
        for (int i = 0; i < 16; i++)
            ck_assert_float_eq(h[i], want[i]);
        free(h);
        gpuseg__release(&a);
        gpuseg__release(&b);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(constant_and_tiny_range_channels) {
    gpuseg_ctx *ctx = tu_ctx();
    /* ch 1 (red) constant 255 -> left as is, also with invert (Cellpose's cgood is false);
     * ch 2 (green) 0 / 0.0005 -> p99 - p1 <= 1e-3 -> all 0, and with invert all 1. */
    float v[2 * 50];
    for (int i = 0; i < 50; i++) {
        v[2 * i] = 255.0f;
        v[2 * i + 1] = (i % 2) ? 0.0005f : 0.0f;
    }
    gpuseg_image im = {10, 5, 2, 1, GPUSEG_DTYPE_F32, v};
    gpuseg__prep_params p;
    gpuseg__prep_params_default(&p);
    p.chan = 1;
    p.chan2 = 2;
    for (int inv = 0; inv < 2; inv++) {
        cl_mem x = NULL;
        ck_assert_int_eq(gpuseg__prep_channels(ctx, &im, &p, &x), GPUSEG_OK);
        gpuseg__norm_stats s;
        ck_assert_int_eq(gpuseg__prep_normalize(ctx, x, 2, 5, 10, inv, 1.0f, 99.0f, &s), GPUSEG_OK);
        ck_assert_int_eq(s.mode[0], 0);
        ck_assert_int_eq(s.mode[1], 2);
        float *h = download(ctx, x, 100);
        for (int i = 0; i < 50; i++) {
            ck_assert_float_eq(h[i], 255.0f);
            ck_assert_float_eq(h[50 + i], inv ? 1.0f : 0.0f);
        }
        free(h);
        gpuseg__release(&x);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

/* --- device: against Cellpose fixtures ----------------------------------------------------- */

/* NORM_CASES of the fixture script, in its order. */
typedef struct {
    const char *name;
    int chan, chan2, invert;
} norm_case;
static const norm_case NORM[] = {
    {"grey", 0, 0, 0}, {"grey", 2, 0, 0}, {"grey", 1, 2, 0}, {"grey", 0, 0, 1},
    {"rgb", 0, 0, 0},  {"rgb", 2, 3, 0},  {"rgb", 1, 0, 0},  {"rgb", 3, 1, 1},
    {"u16", 0, 0, 0},  {"u16", 0, 0, 1},  {"f32", 0, 0, 0},  {"f32", GPUSEG__CHAN_NONE, 0, 0},
    {"f32", 2, 1, 1},
};

START_TEST(normalize_vs_cellpose) {
    gpuseg_ctx *ctx = tu_ctx();
    const char *prev = "";
    int k = 0;
    for (size_t c = 0; c < sizeof NORM / sizeof NORM[0]; c++) {
        k = strcmp(prev, NORM[c].name) ? 0 : k + 1;
        prev = NORM[c].name;
        char name[64];
        snprintf(name, sizeof name, "in_%s", NORM[c].name);
        gpuseg_npy *in = load(name);
        snprintf(name, sizeof name, "norm_%s_%d", NORM[c].name, k);
        gpuseg_npy *ref = load(name);
        char pname[64];
        snprintf(pname, sizeof pname, "pct_%s_%d", NORM[c].name, k);
        gpuseg_npy *pct = load(pname);
        gpuseg_image im = view(in);
        gpuseg__prep_params p;
        gpuseg__prep_params_default(&p);
        p.chan = NORM[c].chan;
        p.chan2 = NORM[c].chan2;
        cl_mem x = NULL;
        ck_assert_int_eq(gpuseg__prep_channels(ctx, &im, &p, &x), GPUSEG_OK);
        gpuseg__norm_stats s;
        ck_assert_int_eq(
            gpuseg__prep_normalize(ctx, x, 2, im.height, im.width, NORM[c].invert, 1.0f, 99.0f, &s),
            GPUSEG_OK);
        /* Percentiles: exact order statistics and numpy's float32 interpolation, so equal to
         * the last bit (constant channels excepted: their percentiles are not used). */
        const float *pr = pct->data;
        for (int ch = 0; ch < 2; ch++)
            if (s.mode[ch] != 0) {
                ck_assert_msg(s.lo[ch] == pr[2 * ch] && s.hi[ch] == pr[2 * ch + 1],
                              "%s ch %d: p1 %.9g p99 %.9g, numpy %.9g %.9g", name, ch, s.lo[ch],
                              s.hi[ch], pr[2 * ch], pr[2 * ch + 1]);
            }
        float *h = download(ctx, x, npy_count(ref));
        /* Same float32 operations in the same order with a correctly rounded division: equal
         * to the last bit; the tolerance admits 1 ulp should a device round its subtraction
         * input differently (it does not on PoCL). */
        compare(name, h, ref->data, npy_count(ref), 1e-30, 1.2e-7);
        free(h);
        gpuseg__release(&x);
        gpuseg_npy_free(in);
        gpuseg_npy_free(ref);
        gpuseg_npy_free(pct);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(resize_vs_cv2) {
    static const double factors[] = {0.5, 0.37, 0.9, 1.3, 2.0, 30.0 / 17.0}; /* RESIZE_FACTORS */
    gpuseg_ctx *ctx = tu_ctx();
    const char *names[] = {"grey", "rgb"};
    for (int n = 0; n < 2; n++) {
        char name[64];
        snprintf(name, sizeof name, "norm_%s_0", names[n]);
        gpuseg_npy *in = load(name);
        const uint32_t h = (uint32_t)in->shape[1], w = (uint32_t)in->shape[2];
        cl_mem x = upload(ctx, in->data, npy_count(in));
        for (int k = 0; k < 6 && !(n == 1 && k >= 3); k++) {
            snprintf(name, sizeof name, "resize_%s_%d", names[n], k);
            gpuseg_npy *ref = load(name);
            gpuseg__tile_geom g;
            ck_assert_int_eq(gpuseg__tile_geometry(ctx, h, w, factors[k], 0, 0.1, &g), GPUSEG_OK);
            ck_assert_uint_eq(g.lyr, ref->shape[1]); /* int(L * r) as resize_image */
            ck_assert_uint_eq(g.lxr, ref->shape[2]);
            cl_mem y = NULL;
            ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_WRITE, npy_count(ref) * 4, "t", &y),
                             GPUSEG_OK);
            ck_assert_int_eq(gpuseg__resize(ctx, x, 2, h, w, y, g.lyr, g.lxr, GPUSEG__RESIZE_CV),
                             GPUSEG_OK);
            float *o = download(ctx, y, npy_count(ref));
            /* OpenCV's float path for 2 channels is reproduced operation for operation (float32
             * coordinates, unfused multiply-adds, the 2x2 mean at exactly 0.5): bit-exact on
             * PoCL; 1 ulp of slack for devices whose compiler reorders nothing but rounds
             * products differently is not needed, so the tolerance is 1 ulp of |ref| + 1e-30. */
            compare(name, o, ref->data, npy_count(ref), 1e-30, 1.2e-7);
            free(o);
            gpuseg__release(&y);
            gpuseg__tile_geom_free(&g);
            gpuseg_npy_free(ref);
        }
        gpuseg__release(&x);
        gpuseg_npy_free(in);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(resize_maps_vs_cv2) {
    static const uint32_t sizes[3][4] = {{37, 53, 80, 111}, {37, 53, 23, 29}, {40, 60, 20, 30}};
    gpuseg_ctx *ctx = tu_ctx();
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "maps_in_%d", k);
        gpuseg_npy *in = load(name);
        snprintf(name, sizeof name, "maps_out_%d", k);
        gpuseg_npy *ref = load(name);
        gpuseg__tile_geom g = {0};
        g.lyr = sizes[k][0];
        g.lxr = sizes[k][1];
        g.ly0 = sizes[k][2];
        g.lx0 = sizes[k][3];
        cl_mem x = upload(ctx, in->data, npy_count(in)), y = NULL;
        ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_WRITE, npy_count(ref) * 4, "t", &y),
                         GPUSEG_OK);
        ck_assert_int_eq(gpuseg__resize_maps(ctx, x, 3, &g, y), GPUSEG_OK);
        float *o = download(ctx, y, npy_count(ref));
        /* cv2 takes Intel IPP's path for 3-channel float32 (not reproducible operation for
         * operation); it agrees with double-precision coordinates to ~1-2 ulp of the values
         * mixed (|maps| <= ~25 here): 1e-5 absolute is ~4 ulp at 25. */
        compare(name, o, ref->data, npy_count(ref), 1e-5, 0);
        free(o);
        gpuseg__release(&x);
        gpuseg__release(&y);
        gpuseg_npy_free(in);
        gpuseg_npy_free(ref);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(blend_vs_average_tiles) {
    /* BLEND_CASES of the fixture script: (lyr, lxr, overlap, augment) */
    static const struct {
        uint32_t ly, lx;
        double ov;
        int aug;
    } cases[] = {{64, 230, 0.1, 0},
                 {64, 230, 0.1, 1},
                 {260, 100, 0.1, 0},
                 {60, 50, 0.1, 1},
                 {64, 230, 0.5, 0}};
    gpuseg_ctx *ctx = tu_ctx();
    for (int k = 0; k < 5; k++) {
        gpuseg__tile_geom g;
        ck_assert_int_eq(gpuseg__tile_geometry(ctx, cases[k].ly, cases[k].lx, 1.0, cases[k].aug,
                                               cases[k].ov, &g),
                         GPUSEG_OK);
        const size_t nt = (size_t)g.ny * g.nx, n = nt * 3 * g.th * g.tw;
        float *y = malloc(n * sizeof *y);
        ck_assert_ptr_nonnull(y);
        for (size_t i = 0; i < n; i++)
            y[i] = hash_f32(i);
        char name[64];
        snprintf(name, sizeof name, "blend_%d", k);
        gpuseg_npy *ref = load(name);
        ck_assert_uint_eq(npy_count(ref), 3 * (size_t)g.lyr * g.lxr);
        cl_mem yd = upload(ctx, y, n), out = NULL;
        ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_WRITE, npy_count(ref) * 4, "t", &out),
                         GPUSEG_OK);
        ck_assert_int_eq(gpuseg__blend_tiles(ctx, yd, 3, &g, out), GPUSEG_OK);
        float *o = download(ctx, out, npy_count(ref));
        /* Cellpose multiplies by a float64 taper and adds into float32 (weights summed in
         * float64); we stay in float32 throughout. Inputs are in [-1, 1], at most 4-6 tiles
         * overlap: a few ulp of 1, so 2e-6 absolute. */
        compare(name, o, ref->data, npy_count(ref), 2e-6, 0);
        /* Batch by batch (3 tiles at a time, as the network would hand them over): the sums
         * are added in the same order, so the result is identical to the last bit. */
        gpuseg__blend b;
        ck_assert_int_eq(gpuseg__blend_begin(ctx, &g, 3, &b), GPUSEG_OK);
        const size_t per = (size_t)3 * g.th * g.tw;
        for (uint32_t first = 0; first < nt; first += 3) {
            const uint32_t cnt = nt - first < 3 ? (uint32_t)(nt - first) : 3;
            cl_mem yb = upload(ctx, y + first * per, cnt * per);
            ck_assert_int_eq(gpuseg__blend_add(ctx, &b, &g, yb, first, cnt), GPUSEG_OK);
            gpuseg__release(&yb);
        }
        ck_assert_int_eq(gpuseg__blend_end(ctx, &b, &g, out), GPUSEG_OK);
        float *o2 = download(ctx, out, npy_count(ref));
        ck_assert_int_eq(memcmp(o, o2, npy_count(ref) * sizeof *o), 0);
        free(o2);
        free(o);
        free(y);
        gpuseg__release(&yd);
        gpuseg__release(&out);
        gpuseg_npy_free(ref);
        gpuseg__tile_geom_free(&g);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Whole way in on the grey crop, rescale 1.3, with and without augment: the resized image
 * equals cv2's, and every tile equals the padded image region it claims (flipped as augment
 * says). */
START_TEST(prep_image_tiles) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_npy *in = load("in_grey");
    gpuseg_npy *ref = load("resize_grey_3"); /* norm_grey_0 resized by 1.3 */
    gpuseg_image im = view(in);
    for (int aug = 0; aug < 2; aug++) {
        gpuseg__prep_params p;
        gpuseg__prep_params_default(&p);
        p.rescale = 1.3;
        p.augment = aug;
        gpuseg__prep_out o;
        ck_assert_msg(gpuseg__prep_image(ctx, &im, &p, &o) == GPUSEG_OK, "%s", gpuseg_last_error());
        const gpuseg__tile_geom *g = &o.geom;
        ck_assert_uint_eq(g->lyr, 62); /* int(48 * 1.3), int(72 * 1.3) */
        ck_assert_uint_eq(g->lxr, 93);
        float *img = download(ctx, o.image, npy_count(ref));
        compare("prep_image resized", img, ref->data, npy_count(ref), 1e-30, 1.2e-7);
        const size_t tn = (size_t)g->ny * g->nx * 2 * g->th * g->tw;
        float *t = download(ctx, o.tiles, tn);
        for (uint32_t j = 0; j < g->ny; j++)
            for (uint32_t i = 0; i < g->nx; i++)
                for (uint32_t c = 0; c < 2; c++)
                    for (uint32_t r = 0; r < g->th; r++)
                        for (uint32_t q = 0; q < g->tw; q++) {
                            const int fy = aug && (i & 1), fx = aug && (j & 1);
                            const long yy =
                                (long)g->ystart[j] + (fy ? g->th - 1 - r : r) - g->ypad1;
                            const long xx =
                                (long)g->xstart[i] + (fx ? g->tw - 1 - q : q) - g->xpad1;
                            float want = 0;
                            if (yy >= 0 && yy < g->lyr && xx >= 0 && xx < g->lxr)
                                want = img[((size_t)c * g->lyr + yy) * g->lxr + xx];
                            const size_t at =
                                ((((size_t)j * g->nx + i) * 2 + c) * g->th + r) * g->tw + q;
                            ck_assert_msg(t[at] == want, "aug %d tile (%u,%u) c%u (%u,%u)", aug, j,
                                          i, c, r, q);
                        }
        /* a batch cut on its own equals the same tiles of the whole cut */
        const uint32_t nt = g->ny * g->nx, first = nt > 1 ? 1 : 0, cnt = nt - first;
        const size_t per = (size_t)2 * g->th * g->tw;
        cl_mem part = NULL;
        ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_WRITE, cnt * per * 4, "t", &part),
                         GPUSEG_OK);
        ck_assert_int_eq(gpuseg__tiles_extract(ctx, o.image, 2, g, first, cnt, part), GPUSEG_OK);
        float *tp = download(ctx, part, cnt * per);
        ck_assert_int_eq(memcmp(tp, t + first * per, cnt * per * sizeof *tp), 0);
        free(tp);
        gpuseg__release(&part);
        ck_assert_int_eq(gpuseg__tiles_extract(ctx, o.image, 2, g, nt, 1, part),
                         GPUSEG_INVALID_ARGUMENT);
        if (aug) {
            ck_assert_uint_eq(g->th, 224);
            ck_assert_uint_eq(g->ny, 2); /* padded 80 x 112 -> 224 x 224, 2 x 2 tiles */
        } else {
            ck_assert_uint_eq(g->ny * g->nx, 1);
            ck_assert_uint_eq(g->th, 80);
            ck_assert_uint_eq(g->tw, 112);
        }
        free(img);
        free(t);
        gpuseg__prep_out_free(&o);
    }
    gpuseg_npy_free(in);
    gpuseg_npy_free(ref);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* The way in and out around a per-pixel stand-in network (y = x0, x1, 0.5 x0 + x1; the
 * fixture script's PixelNet run through Cellpose's core.run_net and resize back): grey crop,
 * rescale 1.3, with and without augment. */
START_TEST(way_in_and_out_vs_run_net) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_npy *in = load("in_grey");
    gpuseg_image im = view(in);
    for (int aug = 0; aug < 2; aug++) {
        char name[64];
        snprintf(name, sizeof name, "e2e_%d", aug);
        gpuseg_npy *ref = load(name);
        gpuseg__prep_params p;
        gpuseg__prep_params_default(&p);
        p.rescale = 1.3;
        p.augment = aug;
        gpuseg__prep_out o;
        ck_assert_int_eq(gpuseg__prep_image(ctx, &im, &p, &o), GPUSEG_OK);
        const gpuseg__tile_geom *g = &o.geom;
        const size_t nt = (size_t)g->ny * g->nx, plane = (size_t)g->th * g->tw;
        float *t = download(ctx, o.tiles, nt * 2 * plane);
        float *y = malloc(nt * 3 * plane * sizeof *y);
        ck_assert_ptr_nonnull(y);
        for (size_t k = 0; k < nt; k++)
            for (size_t i = 0; i < plane; i++) {
                const float x0 = t[(k * 2) * plane + i], x1 = t[(k * 2 + 1) * plane + i];
                volatile float half = x0 * 0.5f;
                y[(k * 3) * plane + i] = x0;
                y[(k * 3 + 1) * plane + i] = x1;
                y[(k * 3 + 2) * plane + i] = half + x1;
            }
        cl_mem yd = upload(ctx, y, nt * 3 * plane), maps = NULL, full = NULL;
        ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_WRITE,
                                        (size_t)3 * g->lyr * g->lxr * sizeof(float), "t", &maps),
                         GPUSEG_OK);
        ck_assert_int_eq(
            gpuseg__buffer(ctx, CL_MEM_READ_WRITE, npy_count(ref) * sizeof(float), "t", &full),
            GPUSEG_OK);
        ck_assert_int_eq(gpuseg__blend_tiles(ctx, yd, 3, g, maps), GPUSEG_OK);
        ck_assert_int_eq(gpuseg__resize_maps(ctx, maps, 3, g, full), GPUSEG_OK);
        float *f = download(ctx, full, npy_count(ref));
        /* blend (~1 ulp, float32 sums) then the resize back (IPP in cv2, ~1-2 ulp): values are
         * <= ~1.5, so 1e-6 absolute is several ulp. */
        compare(name, f, ref->data, npy_count(ref), 1e-6, 0);
        free(f);
        free(t);
        free(y);
        gpuseg__release(&yd);
        gpuseg__release(&maps);
        gpuseg__release(&full);
        gpuseg__prep_out_free(&o);
        gpuseg_npy_free(ref);
    }
    gpuseg_npy_free(in);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* > 224^3 pixels: Cellpose takes the percentiles on every (L // 224)-th row and column. */
START_TEST(percentile_subsample_big) {
    gpuseg_ctx *ctx = tu_ctx();
    const uint32_t h = 3400, w = 3401;
    uint16_t *v = malloc((size_t)h * w * sizeof *v);
    ck_assert_ptr_nonnull(v);
    for (size_t i = 0; i < (size_t)h * w; i++)
        v[i] = (uint16_t)(hash_u32(i) >> 16);
    gpuseg_image im = {w, h, 1, 1, GPUSEG_DTYPE_U16, v};
    gpuseg__prep_params p;
    gpuseg__prep_params_default(&p);
    cl_mem x = NULL;
    ck_assert_int_eq(gpuseg__prep_channels(ctx, &im, &p, &x), GPUSEG_OK);
    gpuseg__norm_stats s;
    ck_assert_int_eq(gpuseg__prep_normalize(ctx, x, 2, h, w, 0, 1.0f, 99.0f, &s), GPUSEG_OK);
    gpuseg_npy *ref = load("pct_big");
    const float *pr = ref->data;
    ck_assert_uint_eq(s.nsample, 227u * 227u); /* ceil(3400 / 15) * ceil(3401 / 15) */
    ck_assert_float_eq(s.lo[0], pr[0]);
    ck_assert_float_eq(s.hi[0], pr[1]);
    gpuseg_npy_free(ref);
    gpuseg__release(&x);
    free(v);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* uint32 / int32 samples become float32 with round-to-nearest-even, as numpy's astype;
 * chan 0 on a 2-channel image is the mean (a + b) / 2. */
START_TEST(sample_types) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg__prep_params p;
    gpuseg__prep_params_default(&p);
    const uint32_t u[4] = {16777217u, 16777219u, 4294967295u, 7u};
    const int32_t i[4] = {-5, 16777217, -2147483647 - 1, 3};
    const float uf[4] = {16777216.0f, 16777220.0f, 4294967296.0f, 7.0f};
    const float iff[4] = {-5.0f, 16777216.0f, -2147483648.0f, 3.0f};
    gpuseg_image ui = {4, 1, 1, 1, GPUSEG_DTYPE_U32, (void *)u};
    gpuseg_image ii = {4, 1, 1, 1, GPUSEG_DTYPE_I32, (void *)i};
    for (int k = 0; k < 2; k++) {
        cl_mem x = NULL;
        ck_assert_int_eq(gpuseg__prep_channels(ctx, k ? &ii : &ui, &p, &x), GPUSEG_OK);
        float *h = download(ctx, x, 8);
        for (int j = 0; j < 4; j++)
            ck_assert_float_eq(h[j], k ? iff[j] : uf[j]);
        free(h);
        gpuseg__release(&x);
    }
    const uint16_t two[4] = {1, 4, 65535, 2}; /* pixels (1, 4), (65535, 2) */
    gpuseg_image ti = {2, 1, 2, 1, GPUSEG_DTYPE_U16, (void *)two};
    cl_mem x = NULL;
    ck_assert_int_eq(gpuseg__prep_channels(ctx, &ti, &p, &x), GPUSEG_OK);
    float *h = download(ctx, x, 4);
    ck_assert_float_eq(h[0], 2.5f);
    ck_assert_float_eq(h[1], 32768.5f);
    ck_assert_float_eq(h[2], 0.0f);
    free(h);
    gpuseg__release(&x);
    /* a multi-page image: page 1 is the second H x W x C block */
    const uint8_t pages[2 * 3] = {1, 2, 3, 40, 50, 60};
    gpuseg_image pi = {3, 1, 1, 2, GPUSEG_DTYPE_U8, (void *)pages};
    p.page = 1;
    ck_assert_int_eq(gpuseg__prep_channels(ctx, &pi, &p, &x), GPUSEG_OK);
    h = download(ctx, x, 6);
    ck_assert_float_eq(h[0], 40.0f);
    ck_assert_float_eq(h[2], 60.0f);
    free(h);
    gpuseg__release(&x);
    p.page = 2;
    ck_assert_int_eq(gpuseg__prep_channels(ctx, &pi, &p, &x), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "page 2"));
    gpuseg_ctx_free(ctx);
}
END_TEST

/* --- error paths and edge sizes ------------------------------------------------------------ */

START_TEST(errors_and_edges) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg__prep_params p;
    gpuseg__prep_params_default(&p);
    gpuseg__prep_out o;
    /* chan = 2 on a grey image: Cellpose uses the grey channel regardless -> [grey, 0] */
    uint8_t grey[6] = {1, 2, 3, 4, 5, 6};
    gpuseg_image gi = {3, 2, 1, 1, GPUSEG_DTYPE_U8, grey};
    p.chan = 2;
    p.chan2 = 3;
    cl_mem x = NULL;
    ck_assert_int_eq(gpuseg__prep_channels(ctx, &gi, &p, &x), GPUSEG_OK);
    float *h = download(ctx, x, 12);
    for (int i = 0; i < 6; i++) {
        ck_assert_float_eq(h[i], (float)grey[i]);
        ck_assert_float_eq(h[6 + i], 0.0f);
    }
    free(h);
    gpuseg__release(&x);
    /* chan = 3 on a 2-channel image: Cellpose fails with an IndexError; we refuse clearly */
    uint8_t two[8] = {0};
    gpuseg_image ti = {2, 2, 2, 1, GPUSEG_DTYPE_U8, two};
    p.chan = 3;
    p.chan2 = 0;
    ck_assert_int_eq(gpuseg__prep_image(ctx, &ti, &p, &o), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "2 channels"));
    p.chan = 1;
    p.chan2 = 5;
    ck_assert_int_eq(gpuseg__prep_image(ctx, &ti, &p, &o), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "chan2"));
    gpuseg__prep_params_default(&p);
    /* 0 x 0 */
    gpuseg_image zero = {0, 0, 1, 1, GPUSEG_DTYPE_U8, grey};
    ck_assert_int_eq(gpuseg__prep_image(ctx, &zero, &p, &o), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "prep:"));
    /* NaN in a float image */
    float nanimg[4] = {1, NAN, 3, 4};
    gpuseg_image ni = {2, 2, 1, 1, GPUSEG_DTYPE_F32, nanimg};
    ck_assert_int_eq(gpuseg__prep_image(ctx, &ni, &p, &o), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "NaN"));
    /* invert without normalisation, bad rescale factors */
    p.invert = 1;
    p.normalize = 0;
    ck_assert_int_eq(gpuseg__prep_image(ctx, &gi, &p, &o), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "invert"));
    gpuseg__prep_params_default(&p);
    p.rescale = 0.1; /* int(2 * 0.1) = 0 rows: kept at 1 x 1 (Cellpose fails; tiles.c) */
    ck_assert_int_eq(gpuseg__prep_image(ctx, &gi, &p, &o), GPUSEG_OK);
    ck_assert_uint_eq(o.geom.lyr, 1);
    ck_assert_uint_eq(o.geom.lxr, 1);
    gpuseg__prep_out_free(&o);
    p.rescale = -1;
    ck_assert_int_eq(gpuseg__prep_image(ctx, &gi, &p, &o), GPUSEG_INVALID_ARGUMENT);
    p.rescale = 1e9;
    ck_assert_int_eq(gpuseg__prep_image(ctx, &gi, &p, &o), GPUSEG_TOO_LARGE);
    /* 1 x 1: a constant channel (left as is), padded 15 + 1 + 16 = 32, one 32 x 32 tile */
    gpuseg__prep_params_default(&p);
    uint16_t one = 700;
    gpuseg_image oi = {1, 1, 1, 1, GPUSEG_DTYPE_U16, &one};
    ck_assert_int_eq(gpuseg__prep_image(ctx, &oi, &p, &o), GPUSEG_OK);
    ck_assert_uint_eq(o.geom.ly, 32);
    ck_assert_uint_eq(o.geom.th, 32);
    ck_assert_uint_eq(o.geom.ny * o.geom.nx, 1);
    float *t = download(ctx, o.tiles, 2 * 32 * 32);
    for (int i = 0; i < 2 * 32 * 32; i++)
        ck_assert_float_eq(t[i], i == 15 * 32 + 15 ? 700.0f : 0.0f);
    free(t);
    gpuseg__prep_out_free(&o);
    p.no_tiles = 1; /* stop before the tiles: the image and geometry only */
    ck_assert_int_eq(gpuseg__prep_image(ctx, &oi, &p, &o), GPUSEG_OK);
    ck_assert_ptr_null(o.tiles);
    ck_assert_ptr_nonnull(o.image);
    ck_assert_uint_eq(o.geom.ly, 32);
    gpuseg__prep_out_free(&o);
    gpuseg_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("prep");
    TCase *host = tcase_create("host");
    tcase_add_test(host, pads_and_tile_starts_hand);
    tcase_add_test(host, geometry_vs_cellpose);
    suite_add_tcase(s, host);
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    if (dev == 0) {
        TCase *d = tcase_create("device");
        tcase_set_timeout(d, 120);
        tcase_add_test(d, percentile_of_0_to_99);
        tcase_add_test(d, percentile_narrow_range);
        tcase_add_test(d, resize_2x2_to_4x4);
        tcase_add_test(d, constant_and_tiny_range_channels);
        tcase_add_test(d, normalize_vs_cellpose);
        tcase_add_test(d, resize_vs_cv2);
        tcase_add_test(d, resize_maps_vs_cv2);
        tcase_add_test(d, blend_vs_average_tiles);
        tcase_add_test(d, prep_image_tiles);
        tcase_add_test(d, way_in_and_out_vs_run_net);
        tcase_add_test(d, percentile_subsample_big);
        tcase_add_test(d, sample_types);
        tcase_add_test(d, errors_and_edges);
        suite_add_tcase(s, d);
    }
    return tu_run(s);
}
