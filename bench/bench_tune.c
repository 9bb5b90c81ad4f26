/* bench/bench_tune.c: the implicit-GEMM convolution's tuner run over CPnet's layer shapes, and the
 * tuned GEMM timed beside the other implementations on each shape.
 *
 * For each distinct convolution shape of a CPnet of the given widths (NBASE = nbase[0..4], e.g.
 * 2,32,64,128,256 for Cellpose's full width; several --nbase may be given) on TILE x TILE tiles
 * in batches of BATCH: the tuner's sweep (src/ops/conv_gemm.c: every candidate parameter set cut
 * down to the layer, each timed on the whole batch; the fastest kept in the tuned cache beside
 * the program cache, which gpuseg then uses on this device), then the tuned GEMM, direct,
 * Winograd (3x3) and CLBlast (GPUs; --clblast on CPUs) each timed the same way (one warm-up, the
 * median of REPEATS runs). Output: JSON on stdout (device, its fp32 peak inputs, each shape's
 * layer count and FLOPs, every candidate's time, each implementation's median and GFLOP/s);
 * --emit-c FILE writes the fastest sets as lines of the committed table (src/ops/conv_params.c).
 * Random weights and inputs, BN + ReLU + bias as the network runs them. A sample of outputs is
 * checked against a plain-C computation first (the GEMM with its tuned set).
 * Usage: bench_tune [--nbase N0,N1,N2,N3,N4]... [--tile T] [--batch B] [--repeats R] [--clblast]
 *                  [--emit-c FILE] [--device-name NAME]
 * --device-name: the DEVICE field of the emitted lines (default: the OpenCL device name). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ops/ops_internal.h"

typedef struct {
    unsigned cin, cout, hw, k, layers;
} shape;

#define MAX_SHAPES 128

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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

static void add_shape(shape *s, unsigned *n, unsigned cin, unsigned cout, unsigned hw, unsigned k) {
    for (unsigned i = 0; i < *n; i++)
        if (s[i].cin == cin && s[i].cout == cout && s[i].hw == hw && s[i].k == k) {
            s[i].layers++;
            return;
        }
    if (*n < MAX_SHAPES)
        s[(*n)++] = (shape){cin, cout, hw, k, 1};
}

/* CPnet's convolutions (src/net/cpnet.c): encoder level l (plane T >> l): proj 1x1 nb[l] ->
 * nb[l+1], conv_0 3x3 nb[l] -> nb[l+1], conv_1..3 3x3 nb[l+1] -> nb[l+1]; decoder level l with
 * nbaseup = [nb1, nb2, nb3, nb4, nb4]: proj 1x1 and conv_0 3x3 up[l+1] -> up[l], conv_1..3
 * up[l] -> up[l]; the head 1x1 nb1 -> 3. */
static void cpnet_shapes(const unsigned nb[5], unsigned tile, shape *s, unsigned *n) {
    for (unsigned l = 0; l < 4; l++) {
        const unsigned hw = tile >> l;
        add_shape(s, n, nb[l], nb[l + 1], hw, 1);
        add_shape(s, n, nb[l], nb[l + 1], hw, 3);
        for (int k = 1; k < 4; k++)
            add_shape(s, n, nb[l + 1], nb[l + 1], hw, 3);
    }
    const unsigned up[5] = {nb[1], nb[2], nb[3], nb[4], nb[4]};
    for (int l = 3; l >= 0; l--) {
        const unsigned hw = tile >> l;
        add_shape(s, n, up[l + 1], up[l], hw, 1);
        add_shape(s, n, up[l + 1], up[l], hw, 3);
        for (int k = 1; k < 4; k++)
            add_shape(s, n, up[l], up[l], hw, 3);
    }
    add_shape(s, n, nb[1], 3, tile, 1);
}

static int fail(gpuseg_ctx *ctx, const char *what) {
    fprintf(stderr, "bench_tune: %s: %s\n", what, ctx ? gpuseg_ctx_last_error(ctx) : "");
    return 1;
}

/* 32 random outputs against a double computation (tolerance as tests/test_ops.c). */
static int check_sample(const shape *s, unsigned batch, const float *in, const float *wt,
                        const float *bias, const float *sc, const float *sh, const float *out) {
    const unsigned H = s->hw, W = s->hw, K = s->k, pad = K / 2;
    for (int t = 0; t < 32; t++) {
        rs ^= (uint64_t)(t + 1) * 0x9E3779B97F4A7C15ull;
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
        if (!(fabs(got - sum) <= 1e-4 * mag + 1e-6)) {
            fprintf(stderr,
                    "bench_tune: %ux%u %u->%u at %u: wrong result at (%u,%u,%u,%u): %g vs %g\n",
                    s->k, s->k, s->cin, s->cout, s->hw, n, co, y, x, got, sum);
            return 1;
        }
    }
    return 0;
}

/* Median seconds of `repeats` runs of ops on d (after one warm-up run). */
static int time_ops(gpuseg_ctx *ctx, gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in,
                    cl_mem out, unsigned repeats, double *median) {
    double t[100];
    if (gpuseg__conv2d(ops, d, in, out) != GPUSEG_OK || clFinish(ctx->queue) != CL_SUCCESS)
        return 1;
    for (unsigned r = 0; r < repeats; r++) {
        const double t0 = now_seconds();
        if (gpuseg__conv2d(ops, d, in, out) != GPUSEG_OK || clFinish(ctx->queue) != CL_SUCCESS)
            return 1;
        t[r] = now_seconds() - t0;
    }
    qsort(t, repeats, sizeof t[0], cmp_double);
    *median = t[repeats / 2];
    return 0;
}

int main(int argc, char **argv) {
    unsigned tile = 224, batch = 8, repeats = 5, nb[8][5], n_nb = 0;
    int clblast_cpu = 0;
    const char *emit = NULL, *devname = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--nbase") == 0 && i + 1 < argc && n_nb < 8) {
            unsigned *v = nb[n_nb];
            if (sscanf(argv[++i], "%u,%u,%u,%u,%u", &v[0], &v[1], &v[2], &v[3], &v[4]) != 5 ||
                !v[0] || !v[1] || !v[2] || !v[3] || !v[4] || v[4] > 1024) {
                fprintf(stderr, "bench_tune: --nbase '%s': expected five widths\n", argv[i]);
                return 2;
            }
            n_nb++;
        } else if (strcmp(argv[i], "--tile") == 0 && i + 1 < argc)
            tile = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc)
            batch = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc)
            repeats = (unsigned)atoi(argv[++i]);
        else if (strcmp(argv[i], "--clblast") == 0)
            clblast_cpu = 1;
        else if (strcmp(argv[i], "--emit-c") == 0 && i + 1 < argc)
            emit = argv[++i];
        else if (strcmp(argv[i], "--device-name") == 0 && i + 1 < argc)
            devname = argv[++i];
        else {
            fprintf(stderr, "usage: bench_tune [--nbase N0,N1,N2,N3,N4]... [--tile T] [--batch B] "
                            "[--repeats R] [--clblast] [--emit-c FILE] [--device-name NAME]\n");
            return 2;
        }
    }
    if (tile < 8 || tile % 8 || tile > 1024 || batch < 1 || batch > 64 || repeats < 1 ||
        repeats > 100) {
        fprintf(stderr,
                "bench_tune: tile a multiple of 8 up to 1024, batch 1..64, repeats 1..100\n");
        return 2;
    }
    if (!n_nb) {
        const unsigned full[5] = {2, 32, 64, 128, 256};
        memcpy(nb[0], full, sizeof full);
        n_nb = 1;
    }
    shape shapes[MAX_SHAPES];
    unsigned ns = 0;
    for (unsigned i = 0; i < n_nb; i++)
        cpnet_shapes(nb[i], tile, shapes, &ns);

    gpuseg_ctx *ctx = NULL;
    if (gpuseg_ctx_create(NULL, &ctx) != GPUSEG_OK)
        return fail(NULL, gpuseg_last_error());
    const gpuseg_device_info *dev = gpuseg_ctx_device(ctx);
    cl_uint clock_mhz = 0;
    clGetDeviceInfo(ctx->device, CL_DEVICE_MAX_CLOCK_FREQUENCY, sizeof clock_mhz, &clock_mhz, NULL);
    FILE *ef = NULL;
    if (emit && !(ef = fopen(emit, "w"))) {
        fprintf(stderr, "bench_tune: %s: cannot write\n", emit);
        gpuseg_ctx_free(ctx);
        return 1;
    }
    gpuseg__ops *probe_ops = NULL;
    if (gpuseg__ops_create(ctx, NULL, &probe_ops) != GPUSEG_OK)
        return fail(ctx, "ops");
    const int half = gpuseg__ops_half_probe(probe_ops);
    gpuseg__ops_free(probe_ops);
    printf("{\n  \"device\": \"%s\",\n  \"platform\": \"%s\",\n  \"driver\": \"%s\",\n"
           "  \"type\": \"%s\",\n  \"compute_units\": %u,\n  \"max_clock_mhz\": %u,\n"
           "  \"local_mem_bytes\": %llu,\n  \"max_work_group_size\": %zu,\n"
           "  \"fp16_extension\": %d,\n  \"half_arithmetic\": %d,\n"
           "  \"tile\": %u,\n  \"batch\": %u,\n  \"repeats\": %u,\n  \"shapes\": [",
           dev->name, dev->platform_name, dev->driver_version,
           dev->type == GPUSEG_DEVICE_GPU   ? "gpu"
           : dev->type == GPUSEG_DEVICE_CPU ? "cpu"
                                            : "other",
           dev->compute_units, (unsigned)clock_mhz, (unsigned long long)dev->local_mem_bytes,
           dev->max_work_group_size, dev->fp16, half, tile, batch, repeats);
    fflush(stdout);
    const bool blast = dev->type != GPUSEG_DEVICE_CPU || clblast_cpu;
    for (unsigned si = 0; si < ns; si++) {
        const shape *s = &shapes[si];
        const size_t hw = (size_t)s->hw * s->hw, nin = batch * s->cin * hw,
                     nout = batch * s->cout * hw, nw = (size_t)s->cout * s->cin * s->k * s->k;
        float *in = malloc(nin * 4), *wt = malloc(nw * 4), *bias = malloc(s->cout * 4),
              *sc = malloc(s->cin * 4), *sh = malloc(s->cin * 4), *out = malloc(nout * 4);
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
        cl_int err = CL_SUCCESS;
        const cl_mem_flags f = CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR;
        cl_mem din = clCreateBuffer(ctx->cl, f, nin * 4, in, &err),
               dw = clCreateBuffer(ctx->cl, f, nw * 4, wt, &err),
               db = clCreateBuffer(ctx->cl, f, s->cout * 4, bias, &err),
               dsc = clCreateBuffer(ctx->cl, f, s->cin * 4, sc, &err),
               dsh = clCreateBuffer(ctx->cl, f, s->cin * 4, sh, &err),
               dout = clCreateBuffer(ctx->cl, CL_MEM_READ_WRITE, nout * 4, NULL, &err);
        if (!din || !dw || !db || !dsc || !dsh || !dout)
            return fail(NULL, "clCreateBuffer");
        const gpuseg__conv_desc d = {.name = "tune",
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
        /* the sweep */
        gpuseg__ops_params p;
        gpuseg__ops_params_default(&p);
        p.conv = GPUSEG__CONV_GEMM;
        gpuseg__ops *ops = NULL;
        if (gpuseg__ops_create(ctx, &p, &ops) != GPUSEG_OK)
            return fail(ctx, "ops");
        gpuseg__gemm_trial trials[64];
        unsigned nt = 0;
        gpuseg__gemm_params best;
        double bs = 0;
        const double t0 = now_seconds();
        if (gpuseg__conv_gemm_tune(ops, &d, din, &best, &bs, trials, 64, &nt) != GPUSEG_OK)
            return fail(ctx, "tuner");
        const double tune_s = now_seconds() - t0;
        printf("%s\n    {\"cin\": %u, \"cout\": %u, \"hw\": %u, \"k\": %u, \"layers\": %u, "
               "\"flops\": %.0f, \"tune_s\": %.2f, \"best\": [%u, %u, %u, %u, %u, %u, %u], "
               "\"best_s\": %.6e, \"trials\": [",
               si ? "," : "", s->cin, s->cout, s->hw, s->k, s->layers, flops, tune_s, best.tm,
               best.th, best.tw, best.tk, best.wm, best.wn, best.pad, bs);
        for (unsigned i = 0; i < nt; i++)
            printf("%s{\"p\": [%u, %u, %u, %u, %u, %u, %u], \"s\": %.6e}", i ? ", " : "",
                   trials[i].p.tm, trials[i].p.th, trials[i].p.tw, trials[i].p.tk, trials[i].p.wm,
                   trials[i].p.wn, trials[i].p.pad, trials[i].seconds);
        printf("], \"impls\": {");
        /* the tuned GEMM (the ops object now holds the tuned set) checked, then every
         * implementation timed the same way */
        if (gpuseg__conv2d(ops, &d, din, dout) != GPUSEG_OK ||
            clEnqueueReadBuffer(ctx->queue, dout, CL_TRUE, 0, nout * 4, out, 0, NULL, NULL) ||
            check_sample(s, batch, in, wt, bias, sc, sh, out))
            return fail(ctx, "tuned gemm");
        gpuseg__ops_free(ops);
        int firsti = 1;
        for (int impl = GPUSEG__CONV_CLBLAST; impl <= GPUSEG__CONV_GEMM; impl++) {
            if ((impl == GPUSEG__CONV_CLBLAST && !blast) ||
                (impl == GPUSEG__CONV_WINOGRAD && s->k != 3))
                continue;
            gpuseg__ops_params q;
            gpuseg__ops_params_default(&q);
            q.conv = (gpuseg__conv_impl)impl;
            if (gpuseg__ops_create(ctx, &q, &ops) != GPUSEG_OK)
                return fail(ctx, "ops");
            double med = 0;
            if (impl == GPUSEG__CONV_WINOGRAD && !gpuseg__conv_winograd_takes(ops, &d))
                med = -1; /* does not take the layer on this device: not timed */
            else if (time_ops(ctx, ops, &d, din, dout, repeats, &med))
                return fail(ctx, gpuseg__conv_impl_name((gpuseg__conv_impl)impl));
            if (med > 0)
                printf("%s\"%s\": {\"median_s\": %.6e, \"gflops\": %.2f}", firsti ? "" : ", ",
                       gpuseg__conv_impl_name((gpuseg__conv_impl)impl), med, flops / med * 1e-9);
            if (med > 0)
                firsti = 0;
            gpuseg__ops_free(ops);
        }
        printf("}}");
        fflush(stdout);
        if (ef)
            fprintf(ef,
                    "    {\"%s\", %u, %u, %u, %u, %u, {%u, %u, %u, %u, %u, %u, %u}, %.1f, %u},\n",
                    devname ? devname : dev->name, s->k, s->cin, s->cout, s->hw, s->hw, best.tm,
                    best.th, best.tw, best.tk, best.wm, best.wn, best.pad, bs * 1e6, batch);
        cl_mem all[] = {din, dw, db, dsc, dsh, dout};
        for (size_t i = 0; i < 6; i++)
            clReleaseMemObject(all[i]);
        free(in);
        free(wt);
        free(bias);
        free(sc);
        free(sh);
        free(out);
    }
    printf("\n  ]\n}\n");
    if (ef && fclose(ef) != 0) {
        fprintf(stderr, "bench_tune: %s: write failed\n", emit);
        gpuseg_ctx_free(ctx);
        return 1;
    }
    gpuseg_ctx_free(ctx);
    return 0;
}
