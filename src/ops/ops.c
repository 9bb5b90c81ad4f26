/* ops/ops.c: the ops object (context, scratch buffers, convolution choice table), buffer-size
 * validation shared by every op, and batch-norm folding. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops/ops_internal.h"

/* The tuning table: register blocking of the direct kernel per kind of device, measured with
 * bench/bench_conv (GPUSEG_CONV_TILE overrides it for tuning runs). */
static void default_tile(const gpuseg_ctx *ctx, gpuseg__conv_tile *t) {
    /* Measured on PoCL 3.1 / AVX2 (AMD EPYC, 16 ymm registers), bench_conv, CPU time per run:
     * 2x4x1 (8 accumulators) and 2x5x1 / 1x5x2 (10) reach 65-80 GFLOP/s per core on CPnet's
     * 3x3 layers; 12 accumulators (2x6x1, 2x3x2, 3x4x1) spill and fall to 35-55. 2x4x1 also
     * divides every CPnet channel count, so no lane is wasted. GPUs have not been tuned: they
     * get the same blocking until someone measures one. */
    t->rows = 2;
    t->couts = 4;
    t->xvecs = 1;
    (void)ctx;
}

/* The fused 1x1 kernel's blocking (band layout), measured the same way (bench_conv's 1x1
 * shapes, best of 4 runs on a shared machine, GFLOP/s for 32->64 at 112^2, 64->32 at 224^2,
 * 32->3 at 224^2): 4 channels x 2 vectors 54 / 34 / 8.3; 6x2 50 / 32 / 6.5; 4x3 47 / 28 / 8.2;
 * 8x1 39 / 29 / 6.1; 3x4 26 / 20 / 6.9. 4x2 has 8 accumulators, the FMA latency x ports, and
 * loads 2 vectors + 4 broadcasts per 8 FMAs. */
static void default_tile1(const gpuseg_ctx *ctx, gpuseg__conv_tile *t) {
    t->couts1 = 4;
    t->xvecs1 = 2;
    (void)ctx;
}

/* The direct kernel's layout: BLOCK on GPUs (not yet measured on one: the first GPU run found
 * BAND's one-work-item work-groups 11x slower than PyTorch, docs/gpu.md), BAND elsewhere. */
static gpuseg_status default_layout(gpuseg_ctx *ctx, unsigned *layout) {
    const char *env = getenv("GPUSEG_CONV_LAYOUT");
    if (env && *env) {
        if (strcmp(env, "band") == 0)
            *layout = GPUSEG__CONV_BAND;
        else if (strcmp(env, "block") == 0)
            *layout = GPUSEG__CONV_BLOCK;
        else
            return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                "GPUSEG_CONV_LAYOUT='%s': expected band or block", env);
        return GPUSEG_OK;
    }
    const gpuseg_device_info *dev = gpuseg_ctx_device(ctx);
    *layout = dev && dev->type == GPUSEG_DEVICE_GPU ? GPUSEG__CONV_BLOCK : GPUSEG__CONV_BAND;
    return GPUSEG_OK;
}

void gpuseg__ops_params_default(gpuseg__ops_params *p) {
    memset(p, 0, sizeof *p);
    p->conv = GPUSEG__CONV_AUTO;
}

gpuseg_status gpuseg__ops_create(gpuseg_ctx *ctx, const gpuseg__ops_params *params,
                                 gpuseg__ops **out) {
    *out = NULL;
    if (!ctx)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "ops: NULL context");
    gpuseg__ops_params p;
    if (params)
        p = *params;
    else
        gpuseg__ops_params_default(&p);
    if (p.conv != GPUSEG__CONV_AUTO && p.conv != GPUSEG__CONV_CLBLAST &&
        p.conv != GPUSEG__CONV_DIRECT && p.conv != GPUSEG__CONV_WINOGRAD &&
        p.conv != GPUSEG__CONV_GEMM)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "ops: unknown convolution kind %d",
                            (int)p.conv);
    if (p.conv == GPUSEG__CONV_AUTO) {
        /* Read once here, so that one ops object behaves the same for its whole life. */
        const char *env = getenv("GPUSEG_CONV");
        if (env && *env) {
            if (strcmp(env, "clblast") == 0)
                p.conv = GPUSEG__CONV_CLBLAST;
            else if (strcmp(env, "direct") == 0)
                p.conv = GPUSEG__CONV_DIRECT;
            else if (strcmp(env, "winograd") == 0)
                p.conv = GPUSEG__CONV_WINOGRAD;
            else if (strcmp(env, "gemm") == 0)
                p.conv = GPUSEG__CONV_GEMM;
            else if (strcmp(env, "auto") != 0)
                return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                    "GPUSEG_CONV='%s': expected clblast, direct, winograd, gemm or "
                                    "auto",
                                    env);
        }
    }
    gpuseg__conv_tile tile = {
        .rows = p.tile_rows, .couts = p.tile_couts, .xvecs = p.tile_xvecs, .layout = p.layout};
    if (!tile.rows && !tile.couts && !tile.xvecs) {
        const char *env = getenv("GPUSEG_CONV_TILE");
        if (env && *env && sscanf(env, "%u,%u,%u", &tile.rows, &tile.couts, &tile.xvecs) != 3)
            return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                "GPUSEG_CONV_TILE='%s': expected ROWS,COUTS,XVECS", env);
        if (!env || !*env)
            default_tile(ctx, &tile);
    }
    /* The fused 1x1 kernel's blocking: the params, else $GPUSEG_CONV_TILE1="C,X", else the
     * table. */
    tile.couts1 = p.tile1_couts;
    tile.xvecs1 = p.tile1_xvecs;
    if (!tile.couts1 && !tile.xvecs1) {
        const char *env = getenv("GPUSEG_CONV_TILE1");
        if (env && *env && sscanf(env, "%u,%u", &tile.couts1, &tile.xvecs1) != 2)
            return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                "GPUSEG_CONV_TILE1='%s': expected COUTS,XVECS", env);
        if (!env || !*env)
            default_tile1(ctx, &tile);
    }
    if (!tile.layout) {
        gpuseg_status st = default_layout(ctx, &tile.layout);
        if (st != GPUSEG_OK)
            return st;
    }
    if (tile.layout != GPUSEG__CONV_BAND && tile.layout != GPUSEG__CONV_BLOCK)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "ops: direct-convolution layout %u",
                            tile.layout);
    /* rows * couts * xvecs float8 accumulators must stay in registers; more is never faster. */
    if (tile.rows < 1 || tile.rows > 8 || tile.couts < 1 || tile.couts > 16 || tile.xvecs < 1 ||
        tile.xvecs > 4 || tile.rows * tile.couts * tile.xvecs > 32)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "ops: direct-convolution tile %ux%ux%u out of range", tile.rows,
                            tile.couts, tile.xvecs);
    if (tile.couts1 < 1 || tile.couts1 > 16 || tile.xvecs1 < 1 || tile.xvecs1 > 8 ||
        tile.couts1 * tile.xvecs1 > 32)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "ops: fused 1x1 convolution tile %ux%u out of range", tile.couts1,
                            tile.xvecs1);
    /* The GEMM's parameters for every shape: the params, else $GPUSEG_CONV_GEMM, else per shape.
     * Checked here in the terms every device shares (sizes, divisibility); the device's limits
     * are checked per layer (a set may fit a 1x1 layer's local memory and not a 3x3 one's). */
    gpuseg__gemm_params gf = p.gemm;
    if (!gf.tm) {
        const char *env = getenv("GPUSEG_CONV_GEMM");
        if (env && *env) {
            gf.pad = 1;
            if (sscanf(env, "%u,%u,%u,%u,%u,%u,%u", &gf.tm, &gf.th, &gf.tw, &gf.tk, &gf.wm, &gf.wn,
                       &gf.pad) < 6)
                return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                    "GPUSEG_CONV_GEMM='%s': expected TM,TH,TW,TK,WM,WN[,PAD]", env);
        }
    }
    if (gf.tm) {
        const char *why = gpuseg__gemm_check_sizes(&gf);
        if (why)
            return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                "ops: gemm parameters %u,%u,%u,%u,%u,%u,%u: %s", gf.tm, gf.th,
                                gf.tw, gf.tk, gf.wm, gf.wn, gf.pad, why);
    }
    int tune = p.tune;
    if (!tune) {
        const char *env = getenv("GPUSEG_CONV_TUNE");
        tune = env && strcmp(env, "1") == 0;
    }
    gpuseg__ops *ops = calloc(1, sizeof *ops);
    if (!ops)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "ops: out of memory");
    ops->ctx = ctx;
    ops->conv = p.conv;
    ops->tile = tile;
    ops->gemm_force = gf;
    ops->tune = tune;
    ops->half = -1;
    if (ops->conv == GPUSEG__CONV_AUTO || ops->conv == GPUSEG__CONV_GEMM)
        gpuseg__gemm_tuned_load(ops);
    if (ops->conv == GPUSEG__CONV_AUTO) /* after the tuned sets: they are part of its key */
        gpuseg__conv_choice_load(ops);
    *out = ops;
    return GPUSEG_OK;
}

void gpuseg__ops_free(gpuseg__ops *ops) {
    if (!ops)
        return;
    for (unsigned i = 0; i < GPUSEG__OPS_SCRATCH; i++)
        gpuseg__release(&ops->scratch[i]);
    const cl_kernel kernels[] = {ops->direct3, ops->direct1, ops->fused1,
                                 ops->flat3,   ops->wino_w,  ops->wino3};
    for (size_t i = 0; i < sizeof kernels / sizeof kernels[0]; i++)
        if (kernels[i])
            clReleaseKernel(kernels[i]);
    for (unsigned i = 0; i < ops->n_gemm_k; i++) {
        clReleaseKernel(ops->gemm_k[i].k3);
        clReleaseKernel(ops->gemm_k[i].k1);
    }
    free(ops);
}

size_t gpuseg__ops_chunks_per_item(const gpuseg__ops *ops, size_t chunks, unsigned batch) {
    const unsigned cu = ops->ctx->dev.compute_units ? ops->ctx->dev.compute_units : 1;
    size_t per = (chunks * batch + 16 * (size_t)cu - 1) / (16 * (size_t)cu);
    if (per < 1)
        per = 1;
    return per > chunks ? chunks : per;
}

gpuseg_status gpuseg__ops_kernel(gpuseg__ops *ops, cl_program prog, const char *file,
                                 const char *name, cl_kernel *k) {
    if (*k)
        return GPUSEG_OK;
    cl_int err;
    if (!(*k = clCreateKernel(prog, name, &err)))
        return gpuseg__fail_cl(ops->ctx, err, "clCreateKernel(%s.cl: %s)", file, name);
    return GPUSEG_OK;
}

size_t gpuseg__ops_scratch_bytes(const gpuseg__ops *ops) {
    size_t n = 0;
    for (unsigned i = 0; i < GPUSEG__OPS_SCRATCH; i++)
        n += ops->scratch_bytes[i]; /* 0 for a slot without a buffer */
    return n;
}

void gpuseg__ops_release_scratch(gpuseg__ops *ops) {
    for (unsigned i = 0; i < GPUSEG__OPS_SCRATCH; i++) {
        gpuseg__release(&ops->scratch[i]);
        ops->scratch_bytes[i] = 0;
    }
}

gpuseg_ctx *gpuseg__ops_ctx(const gpuseg__ops *ops) {
    return ops->ctx;
}

void gpuseg__bn_fold(const float *weight, const float *bias, const float *mean, const float *var,
                     size_t n, float eps, float *scale, float *shift) {
    for (size_t i = 0; i < n; i++) {
        /* In double, so that the folded constants are the correctly rounded values. */
        const double s = (double)weight[i] / sqrt((double)var[i] + (double)eps);
        scale[i] = (float)s;
        shift[i] = (float)((double)bias[i] - (double)mean[i] * s);
    }
}

gpuseg_status gpuseg__ops_check_buf(gpuseg__ops *ops, const char *op, const char *what, cl_mem m,
                                    size_t floats) {
    size_t need;
    if (!gpuseg__mul_size(floats, sizeof(float), &need))
        return gpuseg__fail(ops->ctx, GPUSEG_TOO_LARGE, "%s: %s: size overflows", op, what);
    if (!m)
        return gpuseg__fail(ops->ctx, GPUSEG_INVALID_ARGUMENT, "%s: %s: missing buffer", op, what);
    size_t have = 0;
    cl_int err = clGetMemObjectInfo(m, CL_MEM_SIZE, sizeof have, &have, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ops->ctx, err, "%s: %s: clGetMemObjectInfo", op, what);
    if (have < need)
        return gpuseg__fail(ops->ctx, GPUSEG_INVALID_ARGUMENT,
                            "%s: %s buffer holds %zu bytes, the shape needs %zu", op, what, have,
                            need);
    return GPUSEG_OK;
}

gpuseg_status gpuseg__ops_scratch(gpuseg__ops *ops, unsigned slot, size_t bytes, cl_mem *out) {
    *out = NULL;
    if (slot >= GPUSEG__OPS_SCRATCH)
        return gpuseg__fail(ops->ctx, GPUSEG_INTERNAL, "ops: scratch slot %u", slot);
    if (!ops->scratch[slot] || ops->scratch_bytes[slot] < bytes) {
        gpuseg__release(&ops->scratch[slot]);
        ops->scratch_bytes[slot] = 0;
        gpuseg_status st =
            gpuseg__buffer(ops->ctx, CL_MEM_READ_WRITE, bytes, "ops scratch", &ops->scratch[slot]);
        if (st != GPUSEG_OK)
            return st;
        ops->scratch_bytes[slot] = bytes;
    }
    *out = ops->scratch[slot];
    return GPUSEG_OK;
}
