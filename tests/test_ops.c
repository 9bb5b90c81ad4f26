/* tests/test_ops.c: the tensor ops of src/ops against a plain-C oracle (double accumulation) on
 * seeded random inputs, odd sizes included: the convolution with each implementation forced
 * (im2col + CLBlast, direct kernel, Winograd) and chosen automatically, batch-norm folding,
 * standalone BN+ReLU, max-pool, upsampling with skip, add, style, linear; and the error paths
 * (wrong sizes, bad descriptions, bad GPUSEG_CONV). The oracle lives here because only tests use
 * it. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops_internal.h"
#include "testutil.h"

/* --- helpers ------------------------------------------------------------------------------ */

static uint64_t rng_state;
static void rng_seed(uint64_t s) {
    rng_state = s * 0x9E3779B97F4A7C15ull + 1;
}
/* Uniform in [lo, hi) (xorshift64*). */
static float rnd(float lo, float hi) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t v = rng_state * 0x2545F4914F6CDD1Dull;
    return lo + (hi - lo) * (float)((double)(v >> 11) / 9007199254740992.0);
}
static float *rnd_array(size_t n, float lo, float hi) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    ck_assert_ptr_nonnull(a);
    for (size_t i = 0; i < n; i++)
        a[i] = rnd(lo, hi);
    return a;
}

static cl_mem upload(gpuseg_ctx *ctx, const float *host, size_t n) {
    cl_mem m = NULL;
    ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_WRITE, n * sizeof(float), "test", &m),
                     GPUSEG_OK);
    if (host)
        ck_assert_int_eq(
            clEnqueueWriteBuffer(ctx->queue, m, CL_TRUE, 0, n * sizeof(float), host, 0, NULL, NULL),
            CL_SUCCESS);
    return m;
}
static float *download(gpuseg_ctx *ctx, cl_mem m, size_t n) {
    float *h = malloc(n * sizeof *h);
    ck_assert_ptr_nonnull(h);
    ck_assert_int_eq(
        clEnqueueReadBuffer(ctx->queue, m, CL_TRUE, 0, n * sizeof(float), h, 0, NULL, NULL),
        CL_SUCCESS);
    return h;
}

/* Asserts |got - want| <= rel * mag + abs_tol element-wise, printing the worst case first. */
/* The largest error / tolerance ratio check_close has seen in this process (for reports). */
static double seen_ratio;

static void check_close(const char *what, const float *got, const double *want, const double *mag,
                        size_t n, double rel, double abs_tol) {
    double worst = -1, worst_ratio = 0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        const double err = fabs((double)got[i] - want[i]);
        const double lim = rel * (mag ? mag[i] : fabs(want[i])) + abs_tol;
        const double ratio = isnan(got[i]) ? INFINITY : err == 0 ? 0 : err / lim;
        if (ratio > worst_ratio || worst < 0) {
            worst_ratio = ratio;
            worst = err;
            wi = i;
        }
    }
    if (worst_ratio > seen_ratio)
        seen_ratio = worst_ratio;
    if (!(worst_ratio <= 1.0))
        fprintf(stderr, "%s: worst at %zu: got %.9g want %.9g (err %.3g, %.2fx the tolerance)\n",
                what, wi, (double)got[wi], want[wi], worst, worst_ratio);
    ck_assert_msg(worst_ratio <= 1.0, "%s: error %.3g at %zu is %.2fx the tolerance", what, worst,
                  wi, worst_ratio);
}

/* --- convolution oracle ------------------------------------------------------------------- */

typedef struct {
    unsigned batch, cin, cout, h, w, k;
    int bn, relu, bias, add_in, pre_add, residual, residual_is_out;
} conv_case;

typedef struct {
    float *in, *wt, *bias, *scale, *shift, *add_in, *pre_add, *residual;
} conv_data;

/* want = the layer in double; mag = the sum of the magnitudes of everything summed into each
 * output (|bias| + |residual| + sum |w| * (magnitude of the prologue value)), where a prologue
 * value's magnitude is (|in| + |add_in| + |pre_add|) * |scale| + |shift|: that is what float32
 * rounding errors scale with, whatever the order of accumulation. */
static void conv_oracle(const conv_case *c, const conv_data *d, double *want, double *mag) {
    const unsigned H = c->h, W = c->w, K = c->k, pad = K / 2;
    const size_t hw = (size_t)H * W;
    double *t = malloc(c->cin * hw * sizeof *t), *tm = malloc(c->cin * hw * sizeof *tm);
    ck_assert(t && tm);
    for (unsigned n = 0; n < c->batch; n++) {
        for (unsigned ci = 0; ci < c->cin; ci++) {
            for (size_t i = 0; i < hw; i++) {
                const size_t idx = ((size_t)n * c->cin + ci) * hw + i;
                double v = d->in[idx], m = fabs(v);
                if (c->add_in) {
                    v += d->add_in[idx];
                    m += fabs(d->add_in[idx]);
                }
                if (c->pre_add) {
                    v += d->pre_add[n * c->cin + ci];
                    m += fabs(d->pre_add[n * c->cin + ci]);
                }
                if (c->bn) {
                    v = v * d->scale[ci] + d->shift[ci];
                    m = m * fabs(d->scale[ci]) + fabs(d->shift[ci]);
                }
                if (c->relu && v < 0)
                    v = 0;
                t[ci * hw + i] = v;
                tm[ci * hw + i] = m;
            }
        }
        for (unsigned co = 0; co < c->cout; co++) {
            for (unsigned y = 0; y < H; y++) {
                for (unsigned x = 0; x < W; x++) {
                    double s = c->bias ? d->bias[co] : 0, m = fabs(s);
                    for (unsigned ci = 0; ci < c->cin; ci++)
                        for (unsigned ky = 0; ky < K; ky++)
                            for (unsigned kx = 0; kx < K; kx++) {
                                const int yy = (int)(y + ky) - (int)pad,
                                          xx = (int)(x + kx) - (int)pad;
                                if (yy < 0 || yy >= (int)H || xx < 0 || xx >= (int)W)
                                    continue; /* zero padding after BN/ReLU */
                                const double wv = d->wt[((co * c->cin + ci) * K + ky) * K + kx];
                                s += wv * t[ci * hw + (size_t)yy * W + xx];
                                m += fabs(wv) * tm[ci * hw + (size_t)yy * W + xx];
                            }
                    const size_t o = (((size_t)n * c->cout + co) * H + y) * W + x;
                    if (c->residual) {
                        s += d->residual[o];
                        m += fabs(d->residual[o]);
                    }
                    want[o] = s;
                    mag[o] = m;
                }
            }
        }
    }
    free(t);
    free(tm);
}

/* Runs one case on the device with ops and compares with the oracle. Tolerance: every output is
 * a sum of K = cin*k*k products plus bias and residual, accumulated in float32 in some order,
 * after a prologue of two or three float32 roundings per input. The classical bound for such a
 * sum is about (K + 3) * 2^-24 of the sum of the magnitudes of its terms: 3.5e-5 for the largest
 * K here (576), inside the 1e-4 used even in the worst case (typical errors, growing like
 * sqrt(K), are 100x smaller). An indexing mistake (a wrong or missing tap or channel) moves a
 * result by the size of a whole term, about sum / K >= 1.7e-3 of it: 17x the tolerance or more.
 * The small absolute term only covers outputs whose magnitude sum is zero. */
static void run_conv_case(gpuseg_ctx *ctx, gpuseg__ops *ops, const conv_case *c, uint64_t seed,
                          const char *label) {
    rng_seed(seed);
    const size_t hw = (size_t)c->h * c->w, nin = c->batch * c->cin * hw,
                 nout = c->batch * c->cout * hw, nw = (size_t)c->cout * c->cin * c->k * c->k;
    conv_data d = {0};
    d.in = rnd_array(nin, -2, 2);
    d.wt = rnd_array(nw, -0.5f, 0.5f);
    d.bias = rnd_array(c->cout, -1, 1);
    /* BN with randomised running statistics, so that scale and shift matter (and some channels
     * have negative scale). */
    float *g = rnd_array(c->cin, -1.5f, 1.5f), *b = rnd_array(c->cin, -1, 1),
          *mean = rnd_array(c->cin, -1, 1), *var = rnd_array(c->cin, 0.05f, 3);
    d.scale = malloc(c->cin * sizeof(float));
    d.shift = malloc(c->cin * sizeof(float));
    gpuseg__bn_fold(g, b, mean, var, c->cin, 1e-5f, d.scale, d.shift);
    d.add_in = rnd_array(nin, -1, 1);
    d.pre_add = rnd_array((size_t)c->batch * c->cin, -1, 1);
    d.residual = rnd_array(nout, -3, 3);

    double *want = malloc(nout * sizeof *want), *mag = malloc(nout * sizeof *mag);
    conv_oracle(c, &d, want, mag);

    cl_mem in = upload(ctx, d.in, nin), wt = upload(ctx, d.wt, nw);
    cl_mem bias = c->bias ? upload(ctx, d.bias, c->cout) : NULL;
    cl_mem sc = c->bn ? upload(ctx, d.scale, c->cin) : NULL;
    cl_mem sh = c->bn ? upload(ctx, d.shift, c->cin) : NULL;
    cl_mem ad = c->add_in ? upload(ctx, d.add_in, nin) : NULL;
    cl_mem pa = c->pre_add ? upload(ctx, d.pre_add, (size_t)c->batch * c->cin) : NULL;
    cl_mem out = upload(ctx, c->residual_is_out ? d.residual : NULL, nout);
    cl_mem res = c->residual ? (c->residual_is_out ? out : upload(ctx, d.residual, nout)) : NULL;

    gpuseg__conv_desc desc = {.name = label,
                              .batch = c->batch,
                              .cin = c->cin,
                              .cout = c->cout,
                              .height = c->h,
                              .width = c->w,
                              .ksize = c->k,
                              .weight = wt,
                              .bias = bias,
                              .bn_scale = sc,
                              .bn_shift = sh,
                              .relu = c->relu,
                              .add_in = ad,
                              .pre_add = pa,
                              .residual = res};
    gpuseg_status st = gpuseg__conv2d(ops, &desc, in, out);
    ck_assert_msg(st == GPUSEG_OK, "%s: %s", label, gpuseg_ctx_last_error(ctx));
    float *got = download(ctx, out, nout);
    check_close(label, got, want, mag, nout, 1e-4, 1e-6);

    free(got);
    free(want);
    free(mag);
    cl_mem all[] = {in, wt, bias, sc, sh, ad, pa, out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        gpuseg__release(&all[i]);
    if (!c->residual_is_out)
        gpuseg__release(&res);
    free(g);
    free(b);
    free(mean);
    free(var);
    free(d.in);
    free(d.wt);
    free(d.bias);
    free(d.scale);
    free(d.shift);
    free(d.add_in);
    free(d.pre_add);
    free(d.residual);
}

/* Odd sizes, every optional part on and off, both kernel sizes; CPnet's real shapes at reduced
 * spatial size (cin up to 64 for 3x3 and 300 for 1x1, so K up to 576). */
/* clang-format off */
static const conv_case conv_cases[] = {
    /* batch cin cout h w k | bn relu bias add pre res res_is_out */
    {2, 2, 3, 7, 5, 3,    1, 1, 1, 0, 0, 0, 0},
    {1, 5, 9, 17, 33, 3,  1, 1, 1, 1, 1, 1, 1},
    {2, 6, 3, 1, 1, 1,    1, 0, 1, 0, 0, 1, 0},
    {1, 3, 2, 1, 1, 3,    1, 1, 1, 0, 0, 0, 0},
    {1, 16, 16, 24, 24, 3, 0, 0, 0, 0, 0, 0, 0},
    {2, 32, 3, 9, 11, 1,  1, 1, 1, 0, 0, 0, 0},
    {1, 64, 8, 10, 10, 3, 1, 1, 1, 0, 1, 1, 0},
    {3, 2, 32, 16, 16, 3, 1, 0, 1, 0, 0, 0, 0},
    {1, 32, 64, 13, 19, 1, 1, 0, 1, 0, 0, 1, 1},
    {1, 1, 1, 2, 3, 3,    0, 1, 0, 1, 1, 0, 0},
    {2, 7, 5, 6, 9, 1,    1, 1, 1, 1, 1, 1, 0},
    {1, 4, 6, 3, 21, 1,   1, 1, 0, 0, 1, 0, 0},
    /* 1x1 over several chunks and work-items of the fused kernel, ending in a partial vector */
    {2, 12, 10, 37, 41, 1, 1, 1, 1, 1, 1, 1, 1},
    /* 1x1 with many channels: the fused kernel's chunks get shorter (96 pixels) */
    {1, 300, 5, 3, 7, 1,  1, 0, 1, 0, 0, 1, 0},
    /* 3x3 over several chunks and work-items of the Winograd kernel (19x21 tiles in rows of
     * 24, 64-tile chunks), odd height and width (partial tiles and vectors) */
    {2, 12, 10, 37, 41, 3, 1, 1, 1, 1, 1, 1, 1},
};
/* clang-format on */

static void run_all_cases_gemm(gpuseg__conv_impl impl, unsigned rows, unsigned couts,
                               unsigned xvecs, unsigned couts1, unsigned xvecs1, unsigned layout,
                               const gpuseg__gemm_params *gemm) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg__ops_params p;
    gpuseg__ops_params_default(&p);
    if (gemm)
        p.gemm = *gemm;
    p.conv = impl;
    p.tile_rows = rows;
    p.tile_couts = couts;
    p.tile_xvecs = xvecs;
    p.tile1_couts = couts1;
    p.tile1_xvecs = xvecs1;
    p.layout = layout;
    gpuseg__ops *ops = NULL;
    ck_assert_int_eq(gpuseg__ops_create(ctx, &p, &ops), GPUSEG_OK);
    if (layout)
        ck_assert_uint_eq(ops->tile.layout, layout);
    for (size_t i = 0; i < sizeof conv_cases / sizeof conv_cases[0]; i++) {
        char label[96];
        const conv_case *c = &conv_cases[i];
        gpuseg__gemm_params gp;
        gpuseg__gemm_params_for(ops,
                                &(gpuseg__conv_desc){.batch = c->batch,
                                                     .cin = c->cin,
                                                     .cout = c->cout,
                                                     .height = c->h,
                                                     .width = c->w,
                                                     .ksize = c->k},
                                &gp);
        snprintf(label, sizeof label,
                 "%s tile %ux%ux%u 1x1 %ux%u %s gemm %u,%u,%u,%u,%u,%u,%u case %zu (%ux%ux%ux%u "
                 "-> %u, k%u)",
                 gpuseg__conv_impl_name(impl), ops->tile.rows, ops->tile.couts, ops->tile.xvecs,
                 ops->tile.couts1, ops->tile.xvecs1,
                 ops->tile.layout == GPUSEG__CONV_BLOCK ? "block" : "band", gp.tm, gp.th, gp.tw,
                 gp.tk, gp.wm, gp.wn, gp.pad, i, c->batch, c->cin, c->h, c->w, c->cout, c->k);
        run_conv_case(ctx, ops, c, 1000 + i, label);
        ck_assert_int_eq(gpuseg__conv_choice(ops, &(gpuseg__conv_desc){.ksize = c->k}), impl);
    }
    gpuseg__ops_free(ops);
    gpuseg_ctx_free(ctx);
}

static void run_all_cases(gpuseg__conv_impl impl, unsigned rows, unsigned couts, unsigned xvecs,
                          unsigned couts1, unsigned xvecs1, unsigned layout) {
    run_all_cases_gemm(impl, rows, couts, xvecs, couts1, xvecs1, layout, NULL);
}

/* The tuned blocking, and one where every dimension is odd or larger than 1 (3 rows, 5 output
 * channels, 2 vectors; for the fused 1x1 kernel 5 channels x 3 vectors), so that partial blocks
 * in every direction are exercised; in both work layouts whatever the device (BLOCK is the GPU
 * default, BAND the CPU one: CI has only PoCL). The band layout runs 1x1 layers through the
 * fused kernel and narrow 3x3 planes through the flat one, the block layout both through the
 * two-pass conv*_direct. */
START_TEST(conv_direct) {
    unsetenv("GPUSEG_CONV_TILE");
    unsetenv("GPUSEG_CONV_TILE1");
    unsetenv("GPUSEG_CONV_LAYOUT");
    run_all_cases(GPUSEG__CONV_DIRECT, 0, 0, 0, 0, 0, 0);
    run_all_cases(GPUSEG__CONV_DIRECT, 3, 5, 2, 5, 3, GPUSEG__CONV_BAND);
    run_all_cases(GPUSEG__CONV_DIRECT, 0, 0, 0, 0, 0, GPUSEG__CONV_BLOCK);
    run_all_cases(GPUSEG__CONV_DIRECT, 3, 5, 2, 5, 3, GPUSEG__CONV_BLOCK);
}
END_TEST

/* Winograd F(2x2,3x3) forced, in both layouts (the kernel is the same; the block layout is what
 * GPUs get). 1x1 cases run the direct kernel (documented fallback), the 3x3 ones cover odd sizes
 * (partial 2x2 tiles and 8-tile vectors: 7x5, 17x33, 2x3, 1x1, 37x41), cin 64 (2-vector chunks
 * ending in a zero-padded vector), several chunks and work-items, residual == out and every
 * prologue option. Tolerance: the same 1e-4 * sum|terms| bound. The transforms multiply only by
 * 1, -1 and 0.5 (exact), and each transformed value is a sum of at most 4 (input), 9 (weights)
 * and 9 (output) terms, so rounding adds a few float32 roundings of sums of the same magnitudes
 * to the K-term accumulation: the worst case grows by a small constant factor (measured: the
 * worst output uses under a tenth of the tolerance, printed below), while a wrong transform
 * entry moves outputs by a whole term (a G entry of 0.45 instead of 0.5 fails at many times the
 * tolerance). */
START_TEST(conv_winograd) {
    unsetenv("GPUSEG_CONV_TILE");
    unsetenv("GPUSEG_CONV_TILE1");
    unsetenv("GPUSEG_CONV_LAYOUT");
    seen_ratio = 0;
    run_all_cases(GPUSEG__CONV_WINOGRAD, 0, 0, 0, 0, 0, GPUSEG__CONV_BAND);
    run_all_cases(GPUSEG__CONV_WINOGRAD, 0, 0, 0, 0, 0, GPUSEG__CONV_BLOCK);
    fprintf(stderr, "winograd: worst error %.3f of the tolerance\n", seen_ratio);
    ck_assert(seen_ratio <= 1.0);
}
END_TEST

/* The implicit GEMM (kernels/conv_gemm.cl), prologue fused into its tile loads: the per-shape
 * sets (default, cut down to small layers: TM and TK shrink for cout 1-9 and cin 1-7), the GPU
 * default forced on every layer, and odd sets where nothing divides anything: 12 channels x 3x5
 * pixels (15 pixels per tile, 12 work-items of 3x5 accumulators), K steps of 3 (cin 1, 2, 5, 7,
 * 16, 64, 300 all end in a partial step), no padding; 1-wide tiles with 1x1 blocks; wide
 * 4 x 32 tiles. Every set fits 48 KiB of local memory and 256 work-items (what GPUs offer), so
 * the test runs the same everywhere. Every case: partial tiles in both directions, residual ==
 * out, every prologue option. Same tolerance as the direct kernel (the same products summed in
 * another order). */
START_TEST(conv_gemm) {
    unsetenv("GPUSEG_CONV_GEMM");
    unsetenv("GPUSEG_CONV_TUNE");
    const gpuseg__gemm_params sets[] = {{128, 8, 16, 8, 8, 8, 1},
                                        {12, 3, 5, 3, 3, 5, 0},
                                        {4, 1, 1, 2, 1, 1, 3},
                                        {64, 4, 32, 8, 4, 8, 1}};
    seen_ratio = 0;
    run_all_cases_gemm(GPUSEG__CONV_GEMM, 0, 0, 0, 0, 0, 0, NULL);
    for (size_t i = 0; i < sizeof sets / sizeof sets[0]; i++)
        run_all_cases_gemm(GPUSEG__CONV_GEMM, 0, 0, 0, 0, 0, 0, &sets[i]);
    fprintf(stderr, "gemm: worst error %.3f of the tolerance\n", seen_ratio);
    ck_assert(seen_ratio <= 1.0);
}
END_TEST

/* The tuner: with tuning on, the first GEMM call of a shape sweeps the candidate sets (cut down to
 * the layer, each timed), keeps the fastest in the ops object and in the tuned file beside the
 * program cache, which a new ops object reads; the result is right with the tuned set; a damaged
 * file is ignored. A set the device cannot hold is refused with the reason, before anything
 * runs. The half probe answers yes or no without leaving an error behind. */
START_TEST(conv_gemm_tune) {
    unsetenv("GPUSEG_CONV");
    unsetenv("GPUSEG_CONV_GEMM");
    unsetenv("GPUSEG_CONV_TUNE");
    const char *dir = tu_tmpdir();
    setenv("GPUSEG_CACHE_DIR", dir, 1);
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg__ops_params p;
    gpuseg__ops_params_default(&p);
    p.conv = GPUSEG__CONV_GEMM;
    p.tune = 1;
    gpuseg__ops *ops = NULL;
    ck_assert_int_eq(gpuseg__ops_create(ctx, &p, &ops), GPUSEG_OK);
    ck_assert_uint_eq(ops->n_tuned, 0);
    const conv_case c = {2, 2, 2, 13, 11, 3, 1, 1, 1, 1, 1, 1, 1};
    const gpuseg__conv_desc shape = {
        .batch = 2, .cin = 2, .cout = 2, .height = 13, .width = 11, .ksize = 3};
    run_conv_case(ctx, ops, &c, 91, "tuned gemm");
    ck_assert_uint_eq(ops->n_tuned, 1);
    const gpuseg__gemm_tuned *t = gpuseg__gemm_tuned_find(ops, &shape, false);
    ck_assert_ptr_nonnull(t);
    ck_assert(t->seconds > 0 && !gpuseg__gemm_check(ops, &t->p, 3));
    ck_assert(t->p.tk <= 2 && t->p.tm <= 16); /* cut down to the layer */
    gpuseg__gemm_params got;
    gpuseg__gemm_params_for(ops, &shape, &got);
    ck_assert(memcmp(&got, &t->p, sizeof got) == 0);
    const gpuseg__gemm_params tuned = t->p;
    /* the sweep by hand: every candidate reported, the best one kept */
    gpuseg__gemm_trial trials[32];
    unsigned nt = 0;
    gpuseg__gemm_params best;
    double bs = 0;
    cl_mem in = upload(ctx, NULL, 2 * 2 * 13 * 11), w = upload(ctx, NULL, 2 * 2 * 9);
    gpuseg__conv_desc d = shape;
    d.weight = w;
    ck_assert_int_eq(gpuseg__conv_gemm_tune(ops, &d, in, &best, &bs, trials, 32, &nt), GPUSEG_OK);
    ck_assert_uint_ge(nt, 3);
    double minimum = 0;
    for (unsigned i = 0; i < nt; i++)
        if (trials[i].seconds > 0 && (minimum == 0 || trials[i].seconds < minimum))
            minimum = trials[i].seconds;
    ck_assert(bs == minimum);
    gpuseg__release(&in);
    gpuseg__release(&w);
    gpuseg__ops_free(ops);
    if (ctx->use_cache) {
        /* a new ops object knows the tuned set without tuning (no trials: n_tuned stays 1) */
        p.tune = 0;
        ck_assert_int_eq(gpuseg__ops_create(ctx, &p, &ops), GPUSEG_OK);
        ck_assert_uint_eq(ops->n_tuned, 1);
        ck_assert_ptr_nonnull(gpuseg__gemm_tuned_find(ops, &shape, true));
        run_conv_case(ctx, ops, &c, 92, "tuned gemm, from the file");
        gpuseg__ops_free(ops);
        char cmd[1400];
        snprintf(cmd, sizeof cmd,
                 "n=0; for f in '%s'/*.convtune; do [ -f \"$f\" ] && n=$((n+1)); "
                 "echo 'gpuseg-conv-tune 1 1\n2 2 2 13 11 3 16 8 16 2 3 8 1 5.0' > \"$f\"; done; "
                 "[ $n = 1 ]",
                 dir);
        ck_assert_int_eq(system(cmd), 0); /* WM 3 does not divide TM 16: malformed */
        ck_assert_int_eq(gpuseg__ops_create(ctx, &p, &ops), GPUSEG_OK);
        ck_assert_uint_eq(ops->n_tuned, 0);
        gpuseg__ops_free(ops);
        /* `cache clear` removes the tuned file */
        size_t removed = 0;
        gpuseg_ctx_params cp;
        gpuseg_ctx_params_default(&cp);
        cp.cache_dir = dir;
        ck_assert_int_eq(gpuseg_cache_clear(&cp, &removed), GPUSEG_OK);
        snprintf(cmd, sizeof cmd, "! ls '%s' | grep -q convtune", dir);
        ck_assert_int_eq(system(cmd), 0);
    }
    (void)tuned;
    /* AUTO with tuning on: the new shape is tuned, then the GEMM timed beside the others (on
     * every device), and the result is right whichever wins */
    gpuseg__ops_params pa;
    gpuseg__ops_params_default(&pa);
    pa.tune = 1;
    ck_assert_int_eq(gpuseg__ops_create(ctx, &pa, &ops), GPUSEG_OK);
    const conv_case c2 = {1, 3, 5, 9, 7, 3, 1, 1, 1, 0, 1, 1, 1};
    run_conv_case(ctx, ops, &c2, 93, "auto, tuning on");
    ck_assert_uint_eq(ops->n_choices, 1);
    ck_assert(ops->choices[0].seconds_gemm > 0 && ops->choices[0].seconds_direct > 0);
    ck_assert_ptr_nonnull(gpuseg__gemm_tuned_find(
        ops,
        &(gpuseg__conv_desc){.batch = 1, .cin = 3, .cout = 5, .height = 9, .width = 7, .ksize = 3},
        false));
    gpuseg__ops_free(ops);
    /* a set too large for the device: refused, naming the layer's kernel size and the reason */
    p.tune = 0;
    p.gemm = (gpuseg__gemm_params){256, 64, 64, 64, 16, 8, 1};
    ck_assert_int_eq(gpuseg__ops_create(ctx, &p, &ops), GPUSEG_OK);
    ck_assert_ptr_nonnull(gpuseg__gemm_check(ops, &p.gemm, 3));
    in = upload(ctx, NULL, 2 * 2 * 13 * 11);
    w = upload(ctx, NULL, 2 * 2 * 9);
    cl_mem out = upload(ctx, NULL, 2 * 2 * 13 * 11);
    d.weight = w;
    ck_assert_int_eq(gpuseg__conv2d(ops, &d, in, out), GPUSEG_INVALID_ARGUMENT);
    ck_assert_msg(strstr(gpuseg_ctx_last_error(ctx), "local memory") ||
                      strstr(gpuseg_ctx_last_error(ctx), "work-group"),
                  "%s", gpuseg_ctx_last_error(ctx));
    gpuseg__release(&in);
    gpuseg__release(&w);
    gpuseg__release(&out);
    /* fp16: reported or not, the probe answers and leaves no error */
    const int h = gpuseg__ops_half_probe(ops);
    ck_assert(h == 0 || h == 1);
    ck_assert_int_eq(gpuseg__ops_half_probe(ops), h);
    if (ctx->dev.fp16)
        ck_assert_int_eq(h, 1);
    fprintf(stderr, "half arithmetic on '%s': %s (cl_khr_fp16 %s)\n", ctx->dev.name,
            h ? "yes" : "no", ctx->dev.fp16 ? "reported" : "not reported");
    gpuseg__ops_free(ops);
    gpuseg_ctx_free(ctx);
    tu_rmtree(dir);
}
END_TEST

START_TEST(conv_clblast) {
    run_all_cases(GPUSEG__CONV_CLBLAST, 0, 0, 0, 0, 0, 0);
}
END_TEST

/* AUTO measures the implementations on first use of a shape (into scratch, so that an in-place
 * residual is not applied twice), remembers the winner (in the ops object and in a file beside the
 * program cache, which a new ops object reads), and the result is right either way. */
START_TEST(conv_auto) {
    unsetenv("GPUSEG_CONV");
    const char *dir = tu_tmpdir();
    setenv("GPUSEG_CACHE_DIR", dir, 1); /* a fresh cache: nothing measured yet */
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg__ops *ops = NULL;
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    const conv_case c = {2, 8, 8, 12, 20, 3, 1, 1, 1, 0, 1, 1, 1};
    gpuseg__conv_desc shape = {
        .batch = 2, .cin = 8, .cout = 8, .height = 12, .width = 20, .ksize = 3};
    ck_assert_int_eq(gpuseg__conv_choice(ops, &shape), GPUSEG__CONV_AUTO);
    run_conv_case(ctx, ops, &c, 77, "auto");
    gpuseg__conv_impl first = gpuseg__conv_choice(ops, &shape);
    ck_assert(first == GPUSEG__CONV_CLBLAST || first == GPUSEG__CONV_DIRECT ||
              first == GPUSEG__CONV_WINOGRAD || first == GPUSEG__CONV_GEMM);
    ck_assert_uint_eq(ops->n_choices, 1);
    ck_assert(ops->choices[0].seconds_direct > 0 && ops->choices[0].seconds_winograd > 0);
    /* CLBlast and the GEMM are timed on GPUs only (src/ops/conv.c choose) */
    if (ctx->dev.type == GPUSEG_DEVICE_CPU)
        ck_assert(ops->choices[0].seconds_clblast == 0 && first != GPUSEG__CONV_CLBLAST &&
                  ops->choices[0].seconds_gemm == 0 && first != GPUSEG__CONV_GEMM);
    else
        ck_assert(ops->choices[0].seconds_clblast > 0 && ops->choices[0].seconds_gemm > 0);
    run_conv_case(ctx, ops, &c, 78, "auto again");
    ck_assert_uint_eq(ops->n_choices, 1); /* measured once */
    ck_assert_int_eq(gpuseg__conv_choice(ops, &shape), first);
    gpuseg__ops_free(ops);
    if (ctx->use_cache) {
        /* A new ops object (as in a new process) knows the choice without measuring. */
        ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
        ck_assert_uint_eq(ops->n_choices, 1);
        ck_assert_int_eq(gpuseg__conv_choice(ops, &shape), first);
        gpuseg__ops_free(ops);
        /* Files of format 1 and 2 (before Winograd and before the GEMM: fewer timings; a
         * well-formed entry there) are ignored, so is a damaged one (measured again), and `cache
         * clear` removes it. */
        char cmd[1400];
        snprintf(cmd, sizeof cmd,
                 "for f in '%s'/*.convchoice; do "
                 "printf 'gpuseg-conv-choice 1 1\\n2 8 8 12 20 3 2 100.0 50.0\\n' > \"$f\"; done",
                 dir);
        ck_assert_int_eq(system(cmd), 0);
        ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
        ck_assert_uint_eq(ops->n_choices, 0);
        gpuseg__ops_free(ops);
        snprintf(cmd, sizeof cmd,
                 "for f in '%s'/*.convchoice; do "
                 "printf 'gpuseg-conv-choice 2 1\\n2 8 8 12 20 3 2 100.0 50.0 40.0\\n' > \"$f\"; "
                 "done",
                 dir);
        ck_assert_int_eq(system(cmd), 0);
        ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
        ck_assert_uint_eq(ops->n_choices, 0);
        gpuseg__ops_free(ops);
        snprintf(cmd, sizeof cmd,
                 "n=0; for f in '%s'/*.convchoice; do [ -f \"$f\" ] && n=$((n+1)); "
                 "echo 'gpuseg-conv-choice 3 5' > \"$f\"; done; [ $n = 1 ]",
                 dir);
        ck_assert_int_eq(system(cmd), 0);
        ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
        ck_assert_uint_eq(ops->n_choices, 0);
        gpuseg__ops_free(ops);
        size_t removed = 0;
        gpuseg_ctx_params cp;
        gpuseg_ctx_params_default(&cp);
        cp.cache_dir = dir;
        ck_assert_int_eq(gpuseg_cache_clear(&cp, &removed), GPUSEG_OK);
        ck_assert_uint_ge(removed, 1);
        snprintf(cmd, sizeof cmd, "! ls '%s' | grep -q convchoice", dir);
        ck_assert_int_eq(system(cmd), 0);
    }

    /* The environment variable forces one. */
    setenv("GPUSEG_CONV", "clblast", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    ck_assert_int_eq(gpuseg__conv_choice(ops, &shape), GPUSEG__CONV_CLBLAST);
    gpuseg__ops_free(ops);
    setenv("GPUSEG_CONV", "direct", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    ck_assert_int_eq(gpuseg__conv_choice(ops, &shape), GPUSEG__CONV_DIRECT);
    gpuseg__ops_free(ops);
    setenv("GPUSEG_CONV", "winograd", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    ck_assert_int_eq(gpuseg__conv_choice(ops, &shape), GPUSEG__CONV_WINOGRAD);
    gpuseg__ops_free(ops);
    setenv("GPUSEG_CONV", "gemm", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    ck_assert_int_eq(gpuseg__conv_choice(ops, &shape), GPUSEG__CONV_GEMM);
    gpuseg__ops_free(ops);
    setenv("GPUSEG_CONV", "fastest", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_null(ops);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "GPUSEG_CONV") != NULL);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "winograd") != NULL);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "gemm") != NULL);
    unsetenv("GPUSEG_CONV");
    /* The GEMM's parameters: the environment override, and sets refused with the reason. */
    setenv("GPUSEG_CONV_GEMM", "32,4,8,4,2,4", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    ck_assert(ops->gemm_force.tm == 32 && ops->gemm_force.th == 4 && ops->gemm_force.tw == 8 &&
              ops->gemm_force.tk == 4 && ops->gemm_force.wm == 2 && ops->gemm_force.wn == 4 &&
              ops->gemm_force.pad == 1);
    gpuseg__ops_free(ops);
    ops = NULL;
    setenv("GPUSEG_CONV_GEMM", "32,4,8", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "GPUSEG_CONV_GEMM='32,4,8'") != NULL);
    setenv("GPUSEG_CONV_GEMM", "32,4,8,4,3,4", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "WM must divide TM") != NULL);
    unsetenv("GPUSEG_CONV_GEMM");
    /* Blocking: the environment override, and sizes that would not fit in registers. */
    setenv("GPUSEG_CONV_TILE", "3,5,2", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    ck_assert(ops->tile.rows == 3 && ops->tile.couts == 5 && ops->tile.xvecs == 2);
    gpuseg__ops_free(ops);
    setenv("GPUSEG_CONV_TILE", "3;5", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "GPUSEG_CONV_TILE") != NULL);
    unsetenv("GPUSEG_CONV_TILE");
    setenv("GPUSEG_CONV_TILE1", "6,1", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    ck_assert(ops->tile.couts1 == 6 && ops->tile.xvecs1 == 1);
    gpuseg__ops_free(ops);
    ops = NULL;
    setenv("GPUSEG_CONV_TILE1", "6", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "GPUSEG_CONV_TILE1='6'") != NULL);
    setenv("GPUSEG_CONV_TILE1", "8,8", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "fused 1x1 convolution tile 8x8 out of range") !=
              NULL);
    unsetenv("GPUSEG_CONV_TILE1");
    setenv("GPUSEG_CONV_LAYOUT", "block", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    ck_assert_uint_eq(ops->tile.layout, GPUSEG__CONV_BLOCK);
    gpuseg__ops_free(ops);
    ops = NULL;
    setenv("GPUSEG_CONV_LAYOUT", "rows", 1);
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "GPUSEG_CONV_LAYOUT='rows'") != NULL);
    unsetenv("GPUSEG_CONV_LAYOUT");
    gpuseg__ops_params p;
    gpuseg__ops_params_default(&p);
    p.tile_rows = 8;
    p.tile_couts = 8;
    p.tile_xvecs = 1;
    ck_assert_int_eq(gpuseg__ops_create(ctx, &p, &ops), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "out of range") != NULL);
    gpuseg_ctx_free(ctx);
    tu_rmtree(dir);
}
END_TEST

/* Error paths: each refused before anything runs, with the status and a message naming the
 * layer and the problem. */
START_TEST(conv_errors) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg__ops *ops = NULL;
    gpuseg__ops_params p;
    gpuseg__ops_params_default(&p);
    p.conv = GPUSEG__CONV_DIRECT;
    ck_assert_int_eq(gpuseg__ops_create(ctx, &p, &ops), GPUSEG_OK);
    cl_mem in = upload(ctx, NULL, 2 * 4 * 4), out = upload(ctx, NULL, 3 * 4 * 4),
           wt = upload(ctx, NULL, 3 * 2 * 9), small = upload(ctx, NULL, 3);
    const gpuseg__conv_desc ok = {.name = "layer_x",
                                  .batch = 1,
                                  .cin = 2,
                                  .cout = 3,
                                  .height = 4,
                                  .width = 4,
                                  .ksize = 3,
                                  .weight = wt};
    ck_assert_int_eq(gpuseg__conv2d(ops, &ok, in, out), GPUSEG_OK);
    struct {
        gpuseg__conv_desc d;
        cl_mem in, out;
        const char *needle;
    } bad[] = {
        {ok, small, out, "input buffer holds 12 bytes"},
        {ok, in, small, "output buffer"},
        {ok, in, out, "kernel size 5"},
        {ok, in, out, "weight"},
        {ok, in, out, "bias"},
        {ok, in, out, "scale and shift"},
        {ok, in, in, "may not be an input"},
        {ok, in, out, "empty shape"},
        {ok, in, out, "channel constant"},
        {ok, in, out, "too large"},
    };
    bad[2].d.ksize = 5;
    bad[3].d.cin = 3; /* the input is then too small too: make it fit, so the weight fails */
    bad[3].in = upload(ctx, NULL, 3 * 4 * 4);
    bad[4].d.bias = small;
    bad[4].d.cout = 3;
    bad[4].d.bias = upload(ctx, NULL, 2);
    bad[5].d.bn_scale = small;
    bad[7].d.width = 0;
    bad[8].d.pre_add = upload(ctx, NULL, 1);
    bad[9].d.height = 1u << 20;
    bad[9].d.width = 1u << 12;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        gpuseg_status st = gpuseg__conv2d(ops, &bad[i].d, bad[i].in, bad[i].out);
        const char *msg = gpuseg_ctx_last_error(ctx);
        ck_assert_msg(st == GPUSEG_INVALID_ARGUMENT || (i == 9 && st == GPUSEG_TOO_LARGE),
                      "case %zu: status %s (%s)", i, gpuseg_status_name(st), msg);
        ck_assert_msg(strstr(msg, "layer_x") && strstr(msg, bad[i].needle),
                      "case %zu: message '%s' lacks '%s'", i, msg, bad[i].needle);
    }
    gpuseg__release(&bad[3].in);
    gpuseg__release(&bad[4].d.bias);
    gpuseg__release(&bad[8].d.pre_add);
    /* Small ops refuse wrong sizes too. */
    ck_assert_int_eq(gpuseg__maxpool2(ops, in, small, 2, 4, 4), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "maxpool2: output buffer holds 12 bytes"));
    ck_assert_int_eq(gpuseg__maxpool2(ops, in, out, 2, 1, 4), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg__upsample2(ops, in, NULL, small, 2, 4, 4), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg__upsample2(ops, small, small, out, 1, 1, 2), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "upsample2: skip buffer"));
    ck_assert_int_eq(gpuseg__add(ops, in, small, out, 32), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "add: second input"));
    ck_assert_int_eq(gpuseg__style(ops, in, small, 1, 4, 8), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg__linear(ops, in, small, NULL, out, 1, 2, 3), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "linear: weight"));
    ck_assert_int_eq(gpuseg__bn_act(ops, in, small, small, 1, out, 1, 4, 8),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg__add(ops, in, in, out, 0), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), "add: empty shape"));
    gpuseg__release(&in);
    gpuseg__release(&out);
    gpuseg__release(&wt);
    gpuseg__release(&small);
    gpuseg__ops_free(ops);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* --- small ops ---------------------------------------------------------------------------- */

START_TEST(bn_fold_matches_formula) {
    /* Hand-computed: (x - 1) / sqrt(4 - 1e-5 + 1e-5) * 3 + 0.5 = 1.5 x - 1. */
    const float w = 3, b = 0.5f, m = 1, v = 4.0f - 1e-5f;
    float s, t;
    gpuseg__bn_fold(&w, &b, &m, &v, 1, 1e-5f, &s, &t);
    ck_assert_float_eq_tol(s, 1.5f, 1e-6f);
    ck_assert_float_eq_tol(t, -1.0f, 1e-6f);
}
END_TEST

/* The committed GEMM parameter table (src/ops/conv_params.c): every entry a valid set for its
 * kernel size (device-independent checks), found again for its own shape and device, a
 * neighbouring shape finds an entry of the same device and kernel size, another device none. */
START_TEST(gemm_table) {
    ck_assert_uint_ge(gpuseg__gemm_db_len, 1);
    ck_assert_ptr_null(gpuseg__gemm_db[gpuseg__gemm_db_len].device); /* the end marker */
    for (size_t i = 0; i < gpuseg__gemm_db_len; i++) {
        const gpuseg__gemm_db_entry *e = &gpuseg__gemm_db[i];
        ck_assert_msg(!gpuseg__gemm_check_sizes(&e->p), "entry %zu: %s", i,
                      gpuseg__gemm_check_sizes(&e->p));
        ck_assert(e->device && *e->device && (e->ksize == 1 || e->ksize == 3));
        ck_assert(e->cin && e->cout && e->height && e->width && e->us > 0 && e->batch);
        gpuseg__conv_desc d = {.batch = 1,
                               .cin = e->cin,
                               .cout = e->cout,
                               .height = e->height,
                               .width = e->width,
                               .ksize = e->ksize};
        const gpuseg__gemm_db_entry *f = gpuseg__gemm_db_find(e->device, &d);
        ck_assert(f && f->cin == e->cin && f->cout == e->cout && f->height == e->height &&
                  f->width == e->width && f->ksize == e->ksize);
        d.height *= 2;
        d.width *= 2;
        f = gpuseg__gemm_db_find(e->device, &d);
        ck_assert(f && strcmp(f->device, e->device) == 0 && f->ksize == e->ksize);
        ck_assert_ptr_null(gpuseg__gemm_db_find("no such device", &d));
    }
}
END_TEST

START_TEST(small_ops) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg__ops *ops = NULL;
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    rng_seed(5);
    /* Max-pool, odd sizes (floor): 2 samples x 3 channels of 7x5 -> 3x2, and 35x9 -> 17x4 (more
     * rows than a work-group, so the rounded-up launch is cut by the bounds check). Exact. */
    for (int big = 0; big < 2; big++) {
        const unsigned P = 6, H = big ? 35 : 7, W = big ? 9 : 5, Ho = H / 2, Wo = W / 2;
        float *a = rnd_array(P * H * W, -5, 5);
        double *want = malloc(P * Ho * Wo * sizeof *want);
        for (unsigned p = 0; p < P; p++)
            for (unsigned y = 0; y < Ho; y++)
                for (unsigned x = 0; x < Wo; x++) {
                    const float *q = a + ((size_t)p * H + 2 * y) * W + 2 * x;
                    want[(p * Ho + y) * Wo + x] = fmax(fmax(q[0], q[1]), fmax(q[W], q[W + 1]));
                }
        cl_mem in = upload(ctx, a, P * H * W), out = upload(ctx, NULL, P * Ho * Wo);
        ck_assert_int_eq(gpuseg__maxpool2(ops, in, out, P, H, W), GPUSEG_OK);
        float *got = download(ctx, out, P * Ho * Wo);
        check_close("maxpool2", got, want, NULL, P * Ho * Wo, 0, 0);
        free(got);
        free(want);
        free(a);
        gpuseg__release(&in);
        gpuseg__release(&out);
    }
    /* Nearest upsampling with and without skip: 4 planes of 3x5 -> 6x10 and of 9x4 -> 18x8. One
     * float add: the tolerance is one rounding of the sum (2^-24 relative, 1e-7 used). */
    for (int with_skip = 0; with_skip < 4; with_skip++) {
        const unsigned P = 4, H = with_skip < 2 ? 3 : 9, W = with_skip < 2 ? 5 : 4;
        const size_t no = (size_t)P * 4 * H * W;
        float *a = rnd_array(P * H * W, -5, 5), *s = rnd_array(no, -5, 5);
        double *want = malloc(no * sizeof *want), *mag = malloc(no * sizeof *mag);
        for (unsigned p = 0; p < P; p++)
            for (unsigned y = 0; y < 2 * H; y++)
                for (unsigned x = 0; x < 2 * W; x++) {
                    const size_t o = ((size_t)p * 2 * H + y) * 2 * W + x;
                    const double v = a[((size_t)p * H + y / 2) * W + x / 2];
                    want[o] = v + (with_skip & 1 ? s[o] : 0);
                    mag[o] = fabs(v) + (with_skip & 1 ? fabs(s[o]) : 0);
                }
        cl_mem in = upload(ctx, a, P * H * W), sk = with_skip & 1 ? upload(ctx, s, no) : NULL,
               out = upload(ctx, NULL, no);
        ck_assert_int_eq(gpuseg__upsample2(ops, in, sk, out, P, H, W), GPUSEG_OK);
        float *got = download(ctx, out, no);
        check_close(with_skip & 1 ? "upsample2+skip" : "upsample2", got, want, mag, no, 1e-7, 0);
        free(got);
        free(want);
        free(mag);
        free(a);
        free(s);
        gpuseg__release(&in);
        gpuseg__release(&sk);
        gpuseg__release(&out);
    }
    /* Add (in place into the first operand), 10001 elements (two whole chunks of 4096 and a
     * partial one); one rounding. */
    {
        const size_t n = 10001;
        float *a = rnd_array(n, -5, 5), *b = rnd_array(n, -5, 5);
        double *want = malloc(n * sizeof *want), *mag = malloc(n * sizeof *mag);
        for (size_t i = 0; i < n; i++) {
            want[i] = (double)a[i] + b[i];
            mag[i] = fabs(a[i]) + fabs(b[i]);
        }
        cl_mem da = upload(ctx, a, n), db = upload(ctx, b, n);
        ck_assert_int_eq(gpuseg__add(ops, da, db, da, n), GPUSEG_OK);
        float *got = download(ctx, da, n);
        check_close("add", got, want, mag, n, 1e-7, 0);
        free(got);
        free(want);
        free(mag);
        free(a);
        free(b);
        gpuseg__release(&da);
        gpuseg__release(&db);
    }
    /* Standalone BN + ReLU (and without ReLU), 2 x 3 channels x 13 pixels: one fma-like step,
     * tolerance 1e-6 of |x*scale| + |shift| (two roundings at most). */
    for (int relu = 0; relu < 2; relu++) {
        const unsigned N = 2, C = 3;
        const size_t HW = 13, n = N * C * HW;
        float *a = rnd_array(n, -3, 3), *sc = rnd_array(C, -2, 2), *sh = rnd_array(C, -1, 1);
        double *want = malloc(n * sizeof *want), *mag = malloc(n * sizeof *mag);
        for (size_t i = 0; i < n; i++) {
            const unsigned c = (unsigned)(i / HW % C);
            double v = (double)a[i] * sc[c] + sh[c];
            want[i] = relu && v < 0 ? 0 : v;
            mag[i] = fabs((double)a[i] * sc[c]) + fabs(sh[c]);
        }
        cl_mem din = upload(ctx, a, n), dsc = upload(ctx, sc, C), dsh = upload(ctx, sh, C),
               dout = upload(ctx, NULL, n);
        ck_assert_int_eq(gpuseg__bn_act(ops, din, dsc, dsh, relu, dout, N, C, HW), GPUSEG_OK);
        float *got = download(ctx, dout, n);
        check_close(relu ? "bn_relu" : "bn", got, want, mag, n, 1e-6, 0);
        free(got);
        free(want);
        free(mag);
        free(a);
        free(sc);
        free(sh);
        gpuseg__release(&din);
        gpuseg__release(&dsc);
        gpuseg__release(&dsh);
        gpuseg__release(&dout);
    }
    /* Style: 3 samples x 7 channels x (13x11) pixels, then the dense layer 7 -> 5. The mean is a
     * compensated sum (error ~1 ulp of the mean of |x|), the normalisation a few roundings: 1e-5
     * relative to the values' magnitudes covers both with margin; a wrong plane or a missing
     * normalisation is off by O(1). */
    {
        const unsigned N = 3, C = 7, M = 5;
        const size_t HW = 143, n = N * C * HW;
        float *a = rnd_array(n, -1, 3);
        double want[3 * 7], mag[3 * 7];
        float stylef[3 * 7];
        for (unsigned s = 0; s < N; s++) {
            double norm = 0;
            for (unsigned c = 0; c < C; c++) {
                double sum = 0;
                for (size_t i = 0; i < HW; i++)
                    sum += a[(s * C + c) * HW + i];
                want[s * C + c] = sum / (double)HW;
                norm += want[s * C + c] * want[s * C + c];
            }
            for (unsigned c = 0; c < C; c++) {
                want[s * C + c] /= sqrt(norm);
                mag[s * C + c] = 1.0; /* a unit vector's components */
            }
        }
        cl_mem din = upload(ctx, a, n), dst = upload(ctx, NULL, N * C);
        ck_assert_int_eq(gpuseg__style(ops, din, dst, N, C, HW), GPUSEG_OK);
        float *got = download(ctx, dst, N * C);
        check_close("style", got, want, mag, N * C, 1e-5, 0);
        memcpy(stylef, got, sizeof stylef);
        free(got);

        /* Linear on the device's style: sum of 7 products + bias, 1e-6 of the magnitudes. */
        float *w = rnd_array(M * C, -1, 1), *b = rnd_array(M, -1, 1);
        double lw[3 * 5], lm[3 * 5];
        for (unsigned s = 0; s < N; s++)
            for (unsigned m = 0; m < M; m++) {
                double v = b[m], mm = fabs(b[m]);
                for (unsigned k = 0; k < C; k++) {
                    v += (double)w[m * C + k] * stylef[s * C + k];
                    mm += fabs((double)w[m * C + k] * stylef[s * C + k]);
                }
                lw[s * M + m] = v;
                lm[s * M + m] = mm;
            }
        cl_mem dw = upload(ctx, w, M * C), db = upload(ctx, b, M), dl = upload(ctx, NULL, N * M);
        ck_assert_int_eq(gpuseg__linear(ops, dst, dw, db, dl, N, C, M), GPUSEG_OK);
        got = download(ctx, dl, N * M);
        check_close("linear", got, lw, lm, N * M, 1e-6, 0);
        free(got);
        free(a);
        free(w);
        free(b);
        gpuseg__release(&din);
        gpuseg__release(&dst);
        gpuseg__release(&dw);
        gpuseg__release(&db);
        gpuseg__release(&dl);
    }
    gpuseg__ops_free(ops);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Linear at CPnet's size (256 -> 256, batch 2, no bias): 256 products, 1e-5 of the magnitude
 * sum (a random-walk error of sqrt(256) * 2^-24 ~ 1e-6 of it). */
START_TEST(linear_full_size) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg__ops *ops = NULL;
    ck_assert_int_eq(gpuseg__ops_create(ctx, NULL, &ops), GPUSEG_OK);
    rng_seed(9);
    const unsigned N = 2, K = 256, M = 256;
    float *x = rnd_array(N * K, -1, 1), *w = rnd_array(M * K, -0.1f, 0.1f);
    double *want = malloc(N * M * sizeof *want), *mag = malloc(N * M * sizeof *mag);
    for (unsigned n = 0; n < N; n++)
        for (unsigned m = 0; m < M; m++) {
            double v = 0, mm = 0;
            for (unsigned k = 0; k < K; k++) {
                v += (double)w[m * K + k] * x[n * K + k];
                mm += fabs((double)w[m * K + k] * x[n * K + k]);
            }
            want[n * M + m] = v;
            mag[n * M + m] = mm;
        }
    cl_mem dx = upload(ctx, x, N * K), dw = upload(ctx, w, M * K), dy = upload(ctx, NULL, N * M);
    ck_assert_int_eq(gpuseg__linear(ops, dx, dw, NULL, dy, N, K, M), GPUSEG_OK);
    float *got = download(ctx, dy, N * M);
    check_close("linear 256", got, want, mag, N * M, 1e-5, 0);
    free(got);
    free(want);
    free(mag);
    free(x);
    free(w);
    gpuseg__release(&dx);
    gpuseg__release(&dw);
    gpuseg__release(&dy);
    gpuseg__ops_free(ops);
    gpuseg_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops");
    TCase *host = tcase_create("host");
    tcase_add_test(host, bn_fold_matches_formula);
    tcase_add_test(host, gemm_table);
    suite_add_tcase(s, host);
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    if (dev == 0) {
        TCase *d = tcase_create("device");
        tcase_set_timeout(d, 600);
        tcase_add_test(d, conv_direct);
        tcase_add_test(d, conv_winograd);
        tcase_add_test(d, conv_gemm);
        tcase_add_test(d, conv_gemm_tune);
        tcase_add_test(d, conv_clblast);
        tcase_add_test(d, conv_auto);
        tcase_add_test(d, conv_errors);
        tcase_add_test(d, small_ops);
        tcase_add_test(d, linear_full_size);
        suite_add_tcase(s, d);
    }
    return tu_run(s);
}
