/* tests/test_labels_to_flows.c: labels -> flows on the device (Cellpose masks_to_flows, CPU path)
 * and the label-image diameter: hand-computed tiny cases (3x3 square, single pixel, two touching
 * masks, split label), the committed Cellpose fixtures (tests/fixtures/flows, made by
 * tools/fixtures/make_flow_fixtures.py), labels with gaps, the cl_mem entry points, error paths,
 * and the `gpuseg flows` command. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow/flow_internal.h"
#include "testutil.h"

static const char *fixture(const char *name) {
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s/tests/fixtures/flows/%s", GPUSEG_SOURCE_DIR, name);
    return buf;
}

static gpuseg_npy *npy_load(const char *path) {
    gpuseg_npy *a = NULL;
    ck_assert_msg(gpuseg_npy_read(path, &a) == GPUSEG_OK, "%s", gpuseg_last_error());
    return a;
}

/* Labels of a fixture as uint32 (the files hold uint16). */
static uint32_t *load_labels(const char *name, uint32_t *H, uint32_t *W) {
    gpuseg_npy *a = npy_load(fixture(name));
    ck_assert_int_eq(a->dtype, GPUSEG_DTYPE_U16);
    ck_assert_uint_eq(a->ndim, 2);
    *H = (uint32_t)a->shape[0];
    *W = (uint32_t)a->shape[1];
    const size_t n = (size_t)*H * *W;
    uint32_t *l = malloc(n * sizeof *l);
    for (size_t i = 0; i < n; i++)
        l[i] = ((const uint16_t *)a->data)[i];
    gpuseg_npy_free(a);
    return l;
}

static float *flows_of(gpuseg_ctx *ctx, const uint32_t *labels, uint32_t H, uint32_t W) {
    float *f = malloc(2 * (size_t)H * W * sizeof *f);
    gpuseg_status st = gpuseg_labels_to_flows(ctx, labels, H, W, f);
    ck_assert_msg(st == GPUSEG_OK, "labels_to_flows: %s", gpuseg_last_error());
    return f;
}

/* --- hand-computed cases ---------------------------------------------------------------------- */

/* A 3x3 square in a 5x5 image: the centre is the middle pixel; by symmetry the heat field is
 * symmetric, so edge-middle pixels point straight at the centre, corners along the diagonal,
 * and the centre's own gradient is 0 (Cellpose: 0 / 1e-60 = 0). Exact up to float32 rounding of
 * the symmetric sums (1e-6). */
START_TEST(square_3x3) {
    gpuseg_ctx *ctx = tu_ctx();
    uint32_t lab[25] = {0};
    for (int y = 1; y < 4; y++)
        for (int x = 1; x < 4; x++)
            lab[y * 5 + x] = 7;
    float *f = flows_of(ctx, lab, 5, 5);
    const float *dy = f, *dx = f + 25;
    const float r = (float)sqrt(0.5);
    for (int i = 0; i < 25; i++)
        if (!lab[i])
            ck_assert(dy[i] == 0.0f && dx[i] == 0.0f);
    ck_assert_float_eq_tol(dy[1 * 5 + 2], 1.0f, 1e-6f);
    ck_assert_float_eq_tol(dx[1 * 5 + 2], 0.0f, 1e-6f);
    ck_assert_float_eq_tol(dy[3 * 5 + 2], -1.0f, 1e-6f);
    ck_assert_float_eq_tol(dx[2 * 5 + 1], 1.0f, 1e-6f);
    ck_assert_float_eq_tol(dx[2 * 5 + 3], -1.0f, 1e-6f);
    ck_assert_float_eq_tol(dy[1 * 5 + 1], r, 1e-6f);
    ck_assert_float_eq_tol(dx[1 * 5 + 1], r, 1e-6f);
    ck_assert_float_eq_tol(dy[3 * 5 + 3], -r, 1e-6f);
    ck_assert_float_eq_tol(dx[3 * 5 + 3], -r, 1e-6f);
    ck_assert_float_eq_tol(dy[2 * 5 + 2], 0.0f, 1e-6f);
    ck_assert_float_eq_tol(dx[2 * 5 + 2], 0.0f, 1e-6f);
    free(f);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Degenerate inputs: a 1x1 mask (no neighbours: zero gradient), an empty image (zero flows), a
 * horizontal 1x3 bar at the image border (end pixels point inward, the centre pixel is 0). */
START_TEST(tiny_images) {
    gpuseg_ctx *ctx = tu_ctx();
    uint32_t one = 5;
    float *f = flows_of(ctx, &one, 1, 1);
    ck_assert(f[0] == 0.0f && f[1] == 0.0f);
    free(f);
    uint32_t empty[12] = {0};
    f = flows_of(ctx, empty, 3, 4);
    for (int i = 0; i < 24; i++)
        ck_assert(f[i] == 0.0f);
    free(f);
    uint32_t bar[3] = {2, 2, 2};
    f = flows_of(ctx, bar, 1, 3);
    ck_assert(f[0] == 0.0f && f[1] == 0.0f && f[2] == 0.0f); /* dY plane */
    ck_assert_float_eq_tol(f[3 + 0], 1.0f, 1e-6f);
    ck_assert_float_eq_tol(f[3 + 1], 0.0f, 1e-6f);
    ck_assert_float_eq_tol(f[3 + 2], -1.0f, 1e-6f);
    free(f);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Two touching masks: each diffuses on its own (the other's pixels are zeros), so each one's
 * flows equal those of the mask alone. */
START_TEST(touching_masks_independent) {
    gpuseg_ctx *ctx = tu_ctx();
    enum { H = 9, W = 14 };
    uint32_t both[H * W] = {0}, a[H * W] = {0}, b[H * W] = {0};
    for (int y = 1; y < 8; y++)
        for (int x = 1; x < 13; x++) {
            uint32_t v = x < 6 ? 1 : (x + y < 12 ? 3 : 1);
            both[y * W + x] = v;
            (v == 1 ? a : b)[y * W + x] = v;
        }
    float *fb = flows_of(ctx, both, H, W), *fa1 = flows_of(ctx, a, H, W),
          *fa2 = flows_of(ctx, b, H, W);
    for (int i = 0; i < 2 * H * W; i++) {
        const uint32_t l = both[i % (H * W)];
        const float want = l == 1 ? fa1[i] : l == 3 ? fa2[i] : 0.0f;
        ck_assert_msg(fb[i] == want, "index %d: %g vs %g", i, fb[i], want);
    }
    free(fb);
    free(fa1);
    free(fa2);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* --- against Cellpose ----------------------------------------------------------------------- */

/* Tolerance. Cellpose diffuses in float64; we keep the field as a double-float (~44 bits), sum
 * the 3x3 neighbourhood column by column (an order that differs from Cellpose's only within that
 * precision), and round the unit vector to float32. The fixture is float64 rounded
 * to float32 (error <= 6e-8), our float32 normalisation adds a few ulp: measured max 1.19e-7 on
 * every pixel of the three fixtures (PoCL). TOL allows 8x that for other devices' rounding of
 * the final sqrt/division. Pixels where Cellpose's own gradient is rounding noise (a centre that
 * is not exactly symmetric in float64) cannot agree in general; none occur in these fixtures,
 * so no outlier is allowed (MAX_OUTLIERS); see docs/flows.md.
 * With native doubles (ctx->fp64: CPU devices with cl_khr_fp64, or GPUSEG_FP64=1) every variant
 * computes Cellpose's float64 expression in its order, so the flows must be the fixture's bits
 * exactly (error 0); ctest runs this program again with GPUSEG_FP64=0 for the float pairs. */
#define TOL          1e-6f
#define MAX_OUTLIERS 0

static void compare_fixture(gpuseg_ctx *ctx, const char *name, uint32_t mult) {
    char path[256];
    uint32_t H, W;
    snprintf(path, sizeof path, "%s_labels.npy", name);
    uint32_t *lab = load_labels(path, &H, &W);
    for (size_t i = 0; i < (size_t)H * W; i++)
        lab[i] *= mult;
    snprintf(path, sizeof path, "%s_flows.npy", name);
    gpuseg_npy *ref = npy_load(fixture(path));
    ck_assert_int_eq(ref->dtype, GPUSEG_DTYPE_F32);
    ck_assert(ref->ndim == 3 && ref->shape[0] == 2 && ref->shape[1] == H && ref->shape[2] == W);
    float *f = flows_of(ctx, lab, H, W);
    const float *r = ref->data;
    size_t fg = 0, out = 0;
    double worst = 0, worst_in = 0;
    for (size_t i = 0; i < 2 * (size_t)H * W; i++) {
        const double e = fabs((double)f[i] - r[i]);
        if (!lab[i % ((size_t)H * W)]) {
            ck_assert_msg(f[i] == 0.0f, "%s: background pixel %zu has flow %g", name, i, f[i]);
            continue;
        }
        fg++;
        if (e > worst)
            worst = e;
        if (e > TOL)
            out++;
        else if (e > worst_in)
            worst_in = e;
    }
    fprintf(stderr,
            "%s (labels x%u): %zu mask values, max |err| %.3g, %zu beyond %.0e, max "
            "|err| of the rest %.3g\n",
            name, mult, fg, worst, out, (double)TOL, worst_in);
    ck_assert_msg(out <= MAX_OUTLIERS,
                  "%s: %zu of %zu flow values differ from Cellpose by more than %g (worst %g)",
                  name, out, fg, (double)TOL, worst);
    if (ctx->fp64)
        ck_assert_msg(worst == 0, "%s: native doubles, yet a flow differs from Cellpose by %g",
                      name, worst);
    free(f);
    gpuseg_npy_free(ref);
    free(lab);
}

START_TEST(cellpose_fixtures) {
    gpuseg_ctx *ctx = tu_ctx();
    compare_fixture(ctx, "dsbfluo", 1);
    compare_fixture(ctx, "dsbmany", 1);
    compare_fixture(ctx, "usi", 1);
    /* gaps: Cellpose gives the same flows for labels x3 (checked by the fixture script) */
    compare_fixture(ctx, "dsbmany", 3);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* The local-memory path (one work-group per small mask) and the per-step global path use the
 * same arithmetic: forcing every mask onto the global path, or a mix (boxes over 300 pixels
 * global), must give identical bits. */
START_TEST(local_and_global_paths_agree) {
    gpuseg_ctx *ctx = tu_ctx();
    const char *names[] = {"dsbmany_labels.npy", "usi_labels.npy"};
    for (int i = 0; i < 2; i++) {
        uint32_t H, W;
        uint32_t *lab = load_labels(names[i], &H, &W);
        const size_t n = 2 * (size_t)H * W;
        gpuseg__l2f_local_limit = -1;
        float *fa = flows_of(ctx, lab, H, W);
        gpuseg__l2f_local_limit = 0;
        float *fg = flows_of(ctx, lab, H, W);
        gpuseg__l2f_local_limit = 300;
        float *fm = flows_of(ctx, lab, H, W);
        gpuseg__l2f_local_limit = -1;
        ck_assert_msg(memcmp(fa, fg, n * sizeof *fa) == 0, "%s: local vs global path", names[i]);
        ck_assert_msg(memcmp(fa, fm, n * sizeof *fa) == 0, "%s: mixed paths", names[i]);
        free(fa);
        free(fg);
        free(fm);
        free(lab);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

/* The two per-mask kernels, l2f_box (one work-item per mask, chosen on CPU devices) and l2f_local
 * (one work-group per mask, chosen on GPUs), use the same arithmetic: forcing either on the same
 * device must give identical bits, alone and mixed with the per-step path (boxes over 300
 * pixels). */
START_TEST(box_and_workgroup_variants_agree) {
    gpuseg_ctx *ctx = tu_ctx();
    const char *names[] = {"dsbmany_labels.npy", "usi_labels.npy"};
    for (int i = 0; i < 2; i++) {
        uint32_t H, W;
        uint32_t *lab = load_labels(names[i], &H, &W);
        const size_t n = 2 * (size_t)H * W;
        float *f[4];
        for (int v = 0; v < 4; v++) {
            gpuseg__flow_variant = v & 1;
            gpuseg__l2f_local_limit = v < 2 ? -1 : 300;
            f[v] = flows_of(ctx, lab, H, W);
        }
        gpuseg__flow_variant = -1;
        gpuseg__l2f_local_limit = -1;
        ck_assert_msg(memcmp(f[0], f[1], n * sizeof *f[0]) == 0, "%s: box vs work-group", names[i]);
        ck_assert_msg(memcmp(f[2], f[3], n * sizeof *f[0]) == 0, "%s: mixed paths", names[i]);
        ck_assert_msg(memcmp(f[0], f[2], n * sizeof *f[0]) == 0, "%s: limit 300", names[i]);
        for (int v = 0; v < 4; v++)
            free(f[v]);
        free(lab);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Cellpose's masks_to_flows_cpu for an image holding one mask (label 1), in float64 on the host:
 * padded box, centre = mask pixel nearest the mean, n_iter = 2 * ((h + 2) + (w + 2)) steps of
 * T[centre] += 1 and the 3x3 mean over mask pixels, central differences, unit length. */
static void reference_flows_one_mask(const uint32_t *lab, int H, int W, float *out) {
    int y0 = H, y1 = -1, x0 = W, x1 = -1;
    double sy = 0, sx = 0, n = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            if (lab[y * W + x] == 1) {
                y0 = y < y0 ? y : y0, y1 = y > y1 ? y : y1;
                x0 = x < x0 ? x : x0, x1 = x > x1 ? x : x1;
            }
    for (int y = y0; y <= y1; y++) /* coordinates in the padded box, as Cellpose */
        for (int x = x0; x <= x1; x++)
            if (lab[y * W + x] == 1)
                sy += y - y0 + 1, sx += x - x0 + 1, n++;
    const double my = sy / n, mx = sx / n;
    const int bh = y1 - y0 + 3, bw = x1 - x0 + 3;
    int cy = 0, cx = 0;
    double best = INFINITY;
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++) {
            if (lab[y * W + x] != 1)
                continue;
            const double dy = (y - y0 + 1) - my, dx = (x - x0 + 1) - mx;
            const double dy2 = dy * dy, dx2 = dx * dx, d = dx2 + dy2;
            if (d < best)
                best = d, cy = y - y0 + 1, cx = x - x0 + 1;
        }
    double *T = calloc((size_t)bh * bw, sizeof *T), *N = calloc((size_t)bh * bw, sizeof *N);
    ck_assert(T && N);
#define IN(yy, xx) (lab[((yy) + y0 - 1) * W + (xx) + x0 - 1] == 1)
    const int n_iter = 2 * ((bh - 2 + 2) + (bw - 2 + 2));
    for (int it = 0; it < n_iter; it++) {
        T[cy * bw + cx] += 1;
        for (int y = 1; y < bh - 1; y++)
            for (int x = 1; x < bw - 1; x++) {
                if (!IN(y, x))
                    continue;
                double s = 0;
                for (int dy = -1; dy <= 1; dy++)
                    for (int dx = -1; dx <= 1; dx++)
                        s += T[(y + dy) * bw + x + dx];
                N[y * bw + x] = s / 9.0;
            }
        double *t = T;
        T = N;
        N = t;
    }
    memset(out, 0, 2 * (size_t)H * W * sizeof *out);
    for (int y = 1; y < bh - 1; y++)
        for (int x = 1; x < bw - 1; x++) {
            if (!IN(y, x))
                continue;
            const double dy = T[(y + 1) * bw + x] - T[(y - 1) * bw + x];
            const double dx = T[y * bw + x + 1] - T[y * bw + x - 1];
            const double len = 1e-60 + sqrt(dy * dy + dx * dx);
            const size_t p = (size_t)(y + y0 - 1) * W + (size_t)(x + x0 - 1);
            out[p] = (float)(dy / len);
            out[(size_t)H * W + p] = (float)(dx / len);
        }
#undef IN
    free(T);
    free(N);
}

/* A mask with stray fragments far from its body has a huge, mostly empty box: it diffuses only
 * in the piece holding its centre (the other pieces' field stays exactly 0 in Cellpose too),
 * which lets the per-mask kernels take it instead of the per-step path. Checked against a
 * float64 host reference of Cellpose's algorithm (tolerance as for the fixtures: float32
 * rounding of the unit vector), the fragments' flows are exactly 0, and every path and variant
 * gives the same bits. */
START_TEST(stray_fragments) {
    gpuseg_ctx *ctx = tu_ctx();
    enum { H = 150, W = 170 };
    uint32_t *lab = calloc(H * W, sizeof *lab);
    float *ref = malloc(2 * H * W * sizeof *ref);
    ck_assert(lab && ref);
    for (int y = 20; y < 34; y++) /* body: a 14 x 11 blob with a notch */
        for (int x = 25; x < 36; x++)
            lab[y * W + x] = !(y > 28 && x > 31);
    lab[140 * W + 160] = 1; /* fragments: a pixel and a pair far away */
    lab[5 * W + 150] = lab[6 * W + 151] = 1;
    reference_flows_one_mask(lab, H, W, ref);
    float *f[3];
    for (int v = 0; v < 3; v++) {
        gpuseg__flow_variant = v == 2 ? -1 : v;
        gpuseg__l2f_local_limit = v == 2 ? 0 : -1;
        f[v] = flows_of(ctx, lab, H, W);
    }
    gpuseg__flow_variant = -1;
    gpuseg__l2f_local_limit = -1;
    for (int v = 1; v < 3; v++)
        ck_assert_msg(memcmp(f[0], f[v], 2 * H * W * sizeof *f[0]) == 0, "variant %d differs", v);
    double worst = 0;
    for (size_t i = 0; i < 2 * (size_t)H * W; i++) {
        const double e = fabs((double)f[0][i] - ref[i]);
        worst = e > worst ? e : worst;
    }
    fprintf(stderr, "stray fragments: max |err| %.3g against the float64 reference\n", worst);
    ck_assert_msg(worst <= TOL, "max |error| %g against the float64 reference", worst);
    const size_t frag[3] = {140 * W + 160, 5 * W + 150, 6 * W + 151};
    for (int i = 0; i < 3; i++)
        ck_assert(f[0][frag[i]] == 0.0f && f[0][H * W + frag[i]] == 0.0f);
    ck_assert(f[0][21 * W + 30] != 0.0f); /* the body has flows */
    for (int v = 0; v < 3; v++)
        free(f[v]);
    free(ref);
    free(lab);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Label values far above the image size (the sorted-distinct path of the mask numbering) give
 * the same flows as small ones: only equality of labels matters. */
START_TEST(huge_label_values) {
    gpuseg_ctx *ctx = tu_ctx();
    uint32_t H, W;
    uint32_t *lab = load_labels("dsbfluo_labels.npy", &H, &W);
    float *f1 = flows_of(ctx, lab, H, W);
    for (size_t i = 0; i < (size_t)H * W; i++)
        if (lab[i])
            lab[i] = 4000000000u - lab[i] * 1000003u;
    float *f2 = flows_of(ctx, lab, H, W);
    ck_assert(memcmp(f1, f2, 2 * (size_t)H * W * sizeof *f1) == 0);
    free(f1);
    free(f2);
    free(lab);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* The device-buffer entry points (public and the internal one the flow-error QC calls) give the
 * host version's result; the internal one refuses labels above its stated maximum. */
START_TEST(cl_mem_api) {
    gpuseg_ctx *ctx = tu_ctx();
    uint32_t H, W;
    uint32_t *lab = load_labels("dsbmany_labels.npy", &H, &W);
    const size_t n = (size_t)H * W;
    float *want = flows_of(ctx, lab, H, W), *got = malloc(2 * n * sizeof *got);
    cl_int err;
    cl_mem dl = clCreateBuffer(gpuseg_ctx_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                               n * 4, lab, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    cl_mem df =
        clCreateBuffer(gpuseg_ctx_cl_context(ctx), CL_MEM_READ_WRITE, 2 * n * 4, NULL, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    ck_assert_int_eq(gpuseg_labels_to_flows_cl(ctx, dl, H, W, df), GPUSEG_OK);
    ck_assert_int_eq(clEnqueueReadBuffer(gpuseg_ctx_cl_queue(ctx), df, CL_TRUE, 0, 2 * n * 4, got,
                                         0, NULL, NULL),
                     CL_SUCCESS);
    ck_assert(memcmp(want, got, 2 * n * 4) == 0);
    uint32_t maxl = 0;
    for (size_t i = 0; i < n; i++)
        maxl = lab[i] > maxl ? lab[i] : maxl;
    memset(got, 0xff, 2 * n * 4);
    ck_assert_int_eq(clEnqueueWriteBuffer(gpuseg_ctx_cl_queue(ctx), df, CL_TRUE, 0, 2 * n * 4, got,
                                          0, NULL, NULL),
                     CL_SUCCESS);
    ck_assert_int_eq(gpuseg__labels_to_flows_cl(ctx, dl, H, W, maxl, df), GPUSEG_OK);
    ck_assert_int_eq(clEnqueueReadBuffer(gpuseg_ctx_cl_queue(ctx), df, CL_TRUE, 0, 2 * n * 4, got,
                                         0, NULL, NULL),
                     CL_SUCCESS);
    ck_assert(memcmp(want, got, 2 * n * 4) == 0); /* background overwritten with 0 too */
    ck_assert_int_eq(gpuseg__labels_to_flows_cl(ctx, dl, H, W, maxl - 1, df),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "exceeds the stated maximum"));
    clReleaseMemObject(dl);
    clReleaseMemObject(df);
    free(want);
    free(got);
    free(lab);
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(bad_arguments) {
    gpuseg_ctx *ctx = tu_ctx();
    uint32_t lab[4] = {1, 1, 0, 2};
    float f[8];
    ck_assert_int_eq(gpuseg_labels_to_flows(ctx, NULL, 2, 2, f), GPUSEG_INVALID_ARGUMENT);
    ck_assert_str_ne(gpuseg_last_error(), "");
    ck_assert_int_eq(gpuseg_labels_to_flows(ctx, lab, 0, 2, f), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "empty image"));
    ck_assert_int_eq(gpuseg_labels_to_flows(ctx, lab, 1u << 16, 1u << 16, f), GPUSEG_TOO_LARGE);
    ck_assert(strstr(gpuseg_last_error(), "exceed the limit"));
    ck_assert_int_eq(gpuseg_labels_to_flows(NULL, lab, 2, 2, f), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_labels_to_flows(ctx, lab, 2, 2, f), GPUSEG_OK);
    ck_assert_str_eq(gpuseg_last_error(), "");
    gpuseg_ctx_free(ctx);
}
END_TEST

/* --- diameter (host) ----------------------------------------------------------------------------
 */

/* A number of a fixture from expected.json (written by Python's json: repr, so strtod gives the
 * exact double back). */
static double expected_number(const char *name, const char *key) {
    void *data = NULL;
    size_t n = 0;
    ck_assert_int_eq(gpuseg__read_file(NULL, fixture("expected.json"), 1 << 20, &data, &n),
                     GPUSEG_OK);
    char *txt = realloc(data, n + 1);
    txt[n] = 0;
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": {", name);
    const char *p = strstr(txt, pat);
    ck_assert_msg(p != NULL, "%s not in expected.json", name);
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    p = strstr(p, pat);
    ck_assert(p != NULL);
    double v = strtod(p + strlen(pat), NULL);
    free(txt);
    return v;
}

START_TEST(diameter_cases) {
    double d = -1;
    /* two masks of 2 and 4 pixels: median of sqrt(2), 2 is their mean */
    const uint32_t a[8] = {1, 1, 2, 0, 2, 2, 2, 0};
    ck_assert_int_eq(gpuseg_labels_diameter(a, 2, 4, &d), GPUSEG_OK);
    ck_assert(d == ((sqrt(2.0) + 2.0) / 2.0) / (pow(3.14159265358979323846, 0.5) / 2.0));
    /* no background value: Cellpose drops the smallest label as if it were background */
    const uint32_t b[6] = {1, 1, 2, 2, 2, 2};
    ck_assert_int_eq(gpuseg_labels_diameter(b, 2, 3, &d), GPUSEG_OK);
    ck_assert(d == 2.0 / (pow(3.14159265358979323846, 0.5) / 2.0));
    /* no masks: 0; gaps and huge values: counted by value */
    const uint32_t c[4] = {0, 0, 0, 0};
    ck_assert_int_eq(gpuseg_labels_diameter(c, 2, 2, &d), GPUSEG_OK);
    ck_assert(d == 0.0);
    const uint32_t e[4] = {0, 4000000000u, 4000000000u, 4000000000u};
    ck_assert_int_eq(gpuseg_labels_diameter(e, 2, 2, &d), GPUSEG_OK);
    ck_assert(d == sqrt(3.0) / (pow(3.14159265358979323846, 0.5) / 2.0));
    ck_assert_int_eq(gpuseg_labels_diameter(NULL, 2, 2, &d), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_labels_diameter(c, 0, 2, &d), GPUSEG_INVALID_ARGUMENT);
    ck_assert_str_ne(gpuseg_last_error(), "");
}
END_TEST

/* Equal to Cellpose's utils.diameters to the last bit. */
START_TEST(diameter_fixtures) {
    const char *names[] = {"dsbfluo", "dsbmany", "usi"};
    for (int i = 0; i < 3; i++) {
        char path[64];
        uint32_t H, W;
        snprintf(path, sizeof path, "%s_labels.npy", names[i]);
        uint32_t *lab = load_labels(path, &H, &W);
        double d = 0, want = expected_number(names[i], "diameter");
        ck_assert_int_eq(gpuseg_labels_diameter(lab, H, W, &d), GPUSEG_OK);
        ck_assert_msg(d == want, "%s: %.17g vs Cellpose %.17g", names[i], d, want);
        free(lab);
    }
}
END_TEST

/* --- the `gpuseg flows` command -----------------------------------------------------------------
 */

START_TEST(cli_flows) {
    gpuseg_ctx *ctx = tu_ctx();
    uint32_t H, W;
    uint32_t *lab = load_labels("usi_labels.npy", &H, &W);
    const size_t n = (size_t)H * W;
    float *want = flows_of(ctx, lab, H, W);
    const char *dir = tu_tmpdir();
    /* labels through a 16-bit PNG (another reader than the fixture's .npy) */
    char png[256], out[256], unit[256];
    snprintf(png, sizeof png, "%s/lab.png", dir);
    snprintf(out, sizeof out, "%s/flows.npy", dir);
    snprintf(unit, sizeof unit, "%s/unit.npy", dir);
    gpuseg_image img = {
        .width = W, .height = H, .channels = 1, .pages = 1, .dtype = GPUSEG_DTYPE_U32, .data = lab};
    ck_assert_msg(gpuseg_labels_write(png, &img, NULL) == GPUSEG_OK, "%s", gpuseg_last_error());
    tu_cli_result *r = tu_cli("flows '%s' -o '%s'", png, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert(strstr(r->out, "diameter 35.85 px"));
    free(r);
    gpuseg_npy *a = npy_load(out);
    ck_assert(a->dtype == GPUSEG_DTYPE_F32 && a->ndim == 3 && a->shape[0] == 3 &&
              a->shape[1] == H && a->shape[2] == W);
    const float *f = a->data;
    for (size_t i = 0; i < n; i++) {
        ck_assert(f[i] == 5.0f * want[i] && f[n + i] == 5.0f * want[n + i]);
        ck_assert(f[2 * n + i] == (lab[i] ? 5.0f : -5.0f));
    }
    gpuseg_npy_free(a);
    r = tu_cli("flows --unit --json '%s' -o '%s'", png, unit);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert(strstr(r->out, "\"diameter\": 35.850299"));
    free(r);
    a = npy_load(unit);
    ck_assert(a->ndim == 3 && a->shape[0] == 2);
    ck_assert(memcmp(a->data, want, 2 * n * sizeof *want) == 0);
    gpuseg_npy_free(a);

    /* errors: missing file, float labels, RGB labels, bad command lines */
    r = tu_cli("flows '%s/missing.png' -o '%s'", dir, out);
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "missing.png") && tu_count_lines(r->err) == 1);
    free(r);
    char fl[256];
    snprintf(fl, sizeof fl, "%s/float.npy", dir);
    ck_assert_int_eq(gpuseg_npy_write(fl, GPUSEG_DTYPE_F32, 2, (const uint64_t[]){2, 4}, want),
                     GPUSEG_OK);
    r = tu_cli("flows '%s' -o '%s'", fl, out);
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "float.npy: labels must be integers") && tu_count_lines(r->err) == 1);
    free(r);
    snprintf(fl, sizeof fl, "%s/rgb.npy", dir);
    ck_assert_int_eq(gpuseg_npy_write(fl, GPUSEG_DTYPE_U16, 3, (const uint64_t[]){8, 8, 3}, lab),
                     GPUSEG_OK);
    r = tu_cli("flows '%s' -o '%s'", fl, out);
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "rgb.npy: a label image must have one page and one channel"));
    free(r);
    r = tu_cli("flows '%s'", png);
    ck_assert_int_eq(r->status, 2);
    free(r);
    r = tu_cli("flows --bogus '%s' -o x.npy", png);
    ck_assert_int_eq(r->status, 2);
    free(r);
    tu_rmtree(dir);
    free(want);
    free(lab);
    gpuseg_ctx_free(ctx);
}
END_TEST

Suite *suite(int device);
Suite *suite(int device) {
    Suite *s = suite_create("labels_to_flows");
    TCase *host = tcase_create("host");
    tcase_add_test(host, diameter_cases);
    tcase_add_test(host, diameter_fixtures);
    suite_add_tcase(s, host);
    if (device) {
        TCase *tc = tcase_create("device");
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, square_3x3);
        tcase_add_test(tc, tiny_images);
        tcase_add_test(tc, touching_masks_independent);
        tcase_add_test(tc, cellpose_fixtures);
        tcase_add_test(tc, huge_label_values);
        tcase_add_test(tc, local_and_global_paths_agree);
        tcase_add_test(tc, box_and_workgroup_variants_agree);
        tcase_add_test(tc, stray_fragments);
        tcase_add_test(tc, cl_mem_api);
        tcase_add_test(tc, bad_arguments);
        tcase_add_test(tc, cli_flows);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void) {
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    return tu_run(suite(dev == 0));
}
