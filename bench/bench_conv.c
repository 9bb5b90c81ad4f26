/* bench/bench_conv.c: GFLOP/s of each convolution implementation (im2col + CLBlast, our direct
 * kernel, Winograd F(2x2,3x3) on the 3x3 shapes, the implicit GEMM with the set tuned for the
 * shape or the default) on CPnet's layer shapes for a batch of 224x224
 * tiles, with the fused BN+ReLU prologue and bias as the network runs them. GFLOP/s always count
 * the direct convolution's 2 * H * W * cin * cout * k^2 per sample (Winograd does fewer
 * multiplies; its figure is the direct-equivalent rate). Checks a sample of outputs against a
 * plain-C computation before timing; one warm-up, then repeats; JSON on stdout.
 * Usage: bench_conv [--batch N] [--repeats R] [--impl LIST] [--quick], LIST a comma-separated
 * list of clblast, direct, winograd, gemm, both (clblast,direct) or all (the default).
 * bench/conv_vs_openblas.py runs it beside OpenBLAS sgemm on the same GEMM shapes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops/ops_internal.h"

typedef struct {
    const char *name;
    unsigned cin, cout, hw, k;
} shape;

/* The 3x3 layers of each CPnet level (224 tiles), two 1x1 projections, the first layer (2
 * input channels) and the output head (1x1, 32 -> 3). */
static const shape shapes[] = {
    {"c32_224_k3", 32, 32, 224, 3},     {"c64_112_k3", 64, 64, 112, 3},
    {"c128_56_k3", 128, 128, 56, 3},    {"c256_28_k3", 256, 256, 28, 3},
    {"c32to64_112_k1", 32, 64, 112, 1}, {"c64to32_224_k1", 64, 32, 224, 1},
    {"c2to32_224_k3", 2, 32, 224, 3},   {"c32to3_224_k1", 32, 3, 224, 1},
};

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static uint64_t rs = 88172645463325252ull;
static float rnd(void) {
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (float)((double)(rs >> 11) / 9007199254740992.0) * 2.0f - 1.0f;
}

static int fail(gpuseg_ctx *ctx, const char *what) {
    fprintf(stderr, "bench_conv: %s: %s\n", what, ctx ? gpuseg_ctx_last_error(ctx) : "");
    return 1;
}

/* Checks 64 random outputs against a double-precision computation (tolerance as in
 * tests/test_ops.c: 1e-4 of the sum of magnitudes). */
static int check_sample(const shape *s, unsigned batch, const float *in, const float *wt,
                        const float *bias, const float *sc, const float *sh, const float *out) {
    const unsigned H = s->hw, W = s->hw, K = s->k, pad = K / 2;
    for (int t = 0; t < 64; t++) {
        rs ^= (uint64_t)t * 0x9E3779B97F4A7C15ull;
        const unsigned n = (unsigned)(rs % batch), co = (unsigned)((rs >> 8) % s->cout),
                       y = (unsigned)((rs >> 20) % H), x = (unsigned)((rs >> 36) % W);
        (void)rnd();
        double sum = bias[co], mag = fabs(bias[co]);
        for (unsigned ci = 0; ci < s->cin; ci++)
            for (unsigned ky = 0; ky < K; ky++)
                for (unsigned kx = 0; kx < K; kx++) {
                    const int yy = (int)(y + ky) - (int)pad, xx = (int)(x + kx) - (int)pad;
                    if (yy < 0 || yy >= (int)H || xx < 0 || xx >= (int)W)
                        continue;
                    double v =
                        in[(((size_t)n * s->cin + ci) * H + yy) * W + xx] * (double)sc[ci] + sh[ci];
                    v = v < 0 ? 0 : v;
                    const double w = wt[((size_t)(co * s->cin + ci) * K + ky) * K + kx];
                    sum += w * v;
                    mag += fabs(w * v);
                }
        const double got = out[(((size_t)n * s->cout + co) * H + y) * W + x];
        if (fabs(got - sum) > 1e-4 * mag + 1e-6) {
            fprintf(stderr, "bench_conv: %s: wrong result at (%u,%u,%u,%u): %g vs %g\n", s->name, n,
                    co, y, x, got, sum);
            return 1;
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    unsigned batch = 2, repeats = 5;
    int want[5] = {0, 1, 1, 1, 1}, quick = 0; /* by gpuseg__conv_impl */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc)
            repeats = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--impl") == 0 && i + 1 < argc) {
            char list[128];
            snprintf(list, sizeof list, "%s", argv[++i]);
            want[1] = want[2] = want[3] = want[4] = 0;
            for (char *tok = strtok(list, ","); tok; tok = strtok(NULL, ",")) {
                if (strcmp(tok, "clblast") == 0)
                    want[GPUSEG__CONV_CLBLAST] = 1;
                else if (strcmp(tok, "direct") == 0)
                    want[GPUSEG__CONV_DIRECT] = 1;
                else if (strcmp(tok, "winograd") == 0)
                    want[GPUSEG__CONV_WINOGRAD] = 1;
                else if (strcmp(tok, "gemm") == 0)
                    want[GPUSEG__CONV_GEMM] = 1;
                else if (strcmp(tok, "both") == 0)
                    want[GPUSEG__CONV_CLBLAST] = want[GPUSEG__CONV_DIRECT] = 1;
                else if (strcmp(tok, "all") == 0)
                    want[1] = want[2] = want[3] = want[4] = 1;
                else {
                    fprintf(stderr, "bench_conv: --impl: unknown implementation '%s'\n", tok);
                    return 2;
                }
            }
        } else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else {
            fprintf(stderr, "usage: bench_conv [--batch N] [--repeats R] "
                            "[--impl clblast,direct,winograd,gemm|both|all] [--quick]\n");
            return 2;
        }
    }
    if (batch < 1 || batch > 64 || repeats < 1 || repeats > 100) {
        fprintf(stderr, "bench_conv: batch 1..64, repeats 1..100\n");
        return 2;
    }
    gpuseg_ctx *ctx = NULL;
    if (gpuseg_ctx_create(NULL, &ctx) != GPUSEG_OK)
        return fail(NULL, gpuseg_last_error());
    const gpuseg_device_info *dev = gpuseg_ctx_device(ctx);
    printf("{\n  \"device\": \"%s\",\n  \"platform\": \"%s\",\n  \"driver\": \"%s\",\n"
           "  \"batch\": %u,\n  \"repeats\": %u,\n  \"results\": [",
           dev->name, dev->platform_name, dev->driver_version, batch, repeats);
    const size_t nshapes = quick ? 2 : sizeof shapes / sizeof shapes[0];
    int first = 1;
    for (size_t si = 0; si < nshapes; si++) {
        const shape *s = &shapes[si];
        const size_t hw = (size_t)s->hw * s->hw, nin = batch * s->cin * hw,
                     nout = batch * s->cout * hw, nw = (size_t)s->cout * s->cin * s->k * s->k;
        float *in = malloc(nin * sizeof *in), *wt = malloc(nw * sizeof *wt),
              *bias = malloc(s->cout * sizeof *bias), *sc = malloc(s->cin * sizeof *sc),
              *sh = malloc(s->cin * sizeof *sh), *out = malloc(nout * sizeof *out);
        if (!in || !wt || !bias || !sc || !sh || !out)
            return fail(NULL, "out of memory");
        for (size_t i = 0; i < nin; i++)
            in[i] = rnd();
        for (size_t i = 0; i < nw; i++)
            wt[i] = rnd() * 0.1f;
        for (unsigned i = 0; i < s->cout; i++)
            bias[i] = rnd();
        for (unsigned i = 0; i < s->cin; i++) {
            sc[i] = 1.0f + 0.5f * rnd();
            sh[i] = 0.2f * rnd();
        }
        cl_mem din = NULL, dw = NULL, db = NULL, dsc = NULL, dsh = NULL, dout = NULL;
        cl_int err = CL_SUCCESS;
        const cl_mem_flags f = CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR;
        din = clCreateBuffer(ctx->cl, f, nin * 4, in, &err);
        dw = clCreateBuffer(ctx->cl, f, nw * 4, wt, &err);
        db = clCreateBuffer(ctx->cl, f, s->cout * 4, bias, &err);
        dsc = clCreateBuffer(ctx->cl, f, s->cin * 4, sc, &err);
        dsh = clCreateBuffer(ctx->cl, f, s->cin * 4, sh, &err);
        dout = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, nout * 4, NULL, &err);
        if (!din || !dw || !db || !dsc || !dsh || !dout)
            return fail(NULL, "clCreateBuffer");
        const gpuseg__conv_desc d = {.name = s->name,
                                     .batch = batch,
                                     .cin = s->cin,
                                     .cout = s->cout,
                                     .height = s->hw,
                                     .width = s->hw,
                                     .ksize = s->k,
                                     .weight = dw,
                                     .bias = db,
                                     .bn_scale = dsc,
                                     .bn_shift = dsh,
                                     .relu = 1};
        const double flops = 2.0 * s->cout * s->cin * s->k * s->k * (double)hw * batch;
        for (int impl = GPUSEG__CONV_CLBLAST; impl <= GPUSEG__CONV_GEMM; impl++) {
            /* Winograd forced on a 1x1 layer would run the direct kernel: not listed. */
            if (!want[impl] || (impl == GPUSEG__CONV_WINOGRAD && s->k != 3))
                continue;
            gpuseg__ops_params p;
            gpuseg__ops_params_default(&p);
            p.conv = (gpuseg__conv_impl)impl;
            gpuseg__ops *ops = NULL;
            if (gpuseg__ops_create(ctx, &p, &ops) != GPUSEG_OK)
                return fail(ctx, "ops");
            /* Cold run (program builds, CLBlast's kernel compilation) reported apart. */
            double t0 = now_seconds();
            if (gpuseg__conv2d(ops, &d, din, dout) != GPUSEG_OK || clFinish(ctx->queue))
                return fail(ctx, s->name);
            const double cold = now_seconds() - t0;
            if (clEnqueueReadBuffer(ctx->queue, dout, CL_TRUE, 0, nout * 4, out, 0, NULL, NULL) ||
                check_sample(s, batch, in, wt, bias, sc, sh, out))
                return 1;
            /* Wall time, and the process's CPU time (all threads): on this shared machine the
             * CPU time per run is the steadier measure of the work itself. */
            double times[100], cpu[100];
            for (unsigned r = 0; r < repeats; r++) {
                t0 = now_seconds();
                const double c0 = cpu_seconds();
                if (gpuseg__conv2d(ops, &d, din, dout) != GPUSEG_OK || clFinish(ctx->queue))
                    return fail(ctx, s->name);
                times[r] = now_seconds() - t0;
                cpu[r] = cpu_seconds() - c0;
            }
            qsort(times, repeats, sizeof times[0], cmp_double);
            qsort(cpu, repeats, sizeof cpu[0], cmp_double);
            const double med = times[repeats / 2], cmed = cpu[repeats / 2];
            printf("%s\n    {\"shape\": \"%s\", \"impl\": \"%s\", \"cin\": %u, \"cout\": %u, "
                   "\"hw\": %u, \"k\": %u, \"gemm_m\": %u, \"gemm_n\": %zu, \"gemm_k\": %u, "
                   "\"cold_s\": %.6f, \"min_s\": %.6f, \"median_s\": %.6f, \"max_s\": %.6f, "
                   "\"gflops\": %.2f, \"cpu_median_s\": %.6f, \"gflops_per_cpu_s\": %.2f}",
                   first ? "" : ",", s->name, gpuseg__conv_impl_name((gpuseg__conv_impl)impl),
                   s->cin, s->cout, s->hw, s->k, s->cout, hw * batch, s->cin * s->k * s->k, cold,
                   times[0], med, times[repeats - 1], flops / med * 1e-9, cmed,
                   flops / cmed * 1e-9);
            fflush(stdout);
            first = 0;
            gpuseg__ops_free(ops);
        }
        clReleaseMemObject(din);
        clReleaseMemObject(dw);
        clReleaseMemObject(db);
        clReleaseMemObject(dsc);
        clReleaseMemObject(dsh);
        clReleaseMemObject(dout);
        free(in);
        free(wt);
        free(bias);
        free(sc);
        free(sh);
        free(out);
    }
    printf("\n  ]\n}\n");
    gpuseg_ctx_free(ctx);
    return 0;
}
