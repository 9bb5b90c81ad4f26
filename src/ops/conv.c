/* ops/conv.c: the one convolution call. Validates the layer description and buffers, runs the
 * shared prologue (skip add, style constant, folded BN, ReLU, zero padding) into a scratch
 * buffer laid out for the chosen implementation, and dispatches to im2col + CLBlast, the direct
 * kernel, Winograd (3x3) or the implicit GEMM (which applies the prologue itself). Under AUTO, the
 * first call per layer shape times each and keeps the fastest (in memory, per ops object, and on
 * disk: conv_choice.c). */
#include <string.h>

#include "ops/ops_internal.h"

const char *gpuseg__conv_impl_name(gpuseg__conv_impl impl) {
    switch (impl) {
    case GPUSEG__CONV_AUTO:
        return "auto";
    case GPUSEG__CONV_CLBLAST:
        return "clblast";
    case GPUSEG__CONV_DIRECT:
        return "direct";
    case GPUSEG__CONV_WINOGRAD:
        return "winograd";
    case GPUSEG__CONV_GEMM:
        return "gemm";
    }
    return "unknown";
}

static const char *layer_name(const gpuseg__conv_desc *d) {
    return d->name && *d->name ? d->name : "conv";
}

/* Every shape and buffer check, before anything is enqueued. */
static gpuseg_status validate(gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in, cl_mem out) {
    gpuseg_ctx *ctx = ops->ctx;
    const char *nm = layer_name(d);
    if (d->ksize != 1 && d->ksize != 3)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "%s: kernel size %u (1 or 3 supported)",
                            nm, d->ksize);
    if (!d->batch || !d->cin || !d->cout || !d->height || !d->width)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "%s: empty shape %ux%ux%ux%u -> %u", nm,
                            d->batch, d->cin, d->height, d->width, d->cout);
    /* Kernels index with int: every tensor (with the prologue's padding) must stay below 2^31
     * elements, and so must a batch's worth of planes. */
    const size_t lim = (size_t)1 << 31;
    size_t nin, nout, ppad;
    if (!gpuseg__mul4_size(d->batch, d->cin, d->height, d->width, &nin) ||
        !gpuseg__mul4_size(d->batch, d->cout, d->height, d->width, &nout) ||
        /* the prologue planes: rows rounded up to <= 8, columns to <= 32, plus the border */
        !gpuseg__mul4_size(d->batch, d->cin, (size_t)d->height + 10, (size_t)d->width + 34,
                           &ppad) ||
        ppad >= lim || nout >= lim || nin >= lim)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "%s: tensor %ux%ux%ux%u -> %u too large", nm,
                            d->batch, d->cin, d->height, d->width, d->cout);
    if ((d->bn_scale == NULL) != (d->bn_shift == NULL))
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "%s: batch-norm scale and shift must be given together", nm);
    if (in == out || (d->add_in && d->add_in == out))
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "%s: the output buffer may not be an input (only the residual)", nm);
    gpuseg_status st;
    size_t nw;
    if (!gpuseg__mul4_size(d->cout, d->cin, d->ksize, d->ksize, &nw))
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "%s: weight size overflows", nm);
    if ((st = gpuseg__ops_check_buf(ops, nm, "input", in, nin)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, nm, "output", out, nout)) != GPUSEG_OK ||
        (st = gpuseg__ops_check_buf(ops, nm, "weight", d->weight, nw)) != GPUSEG_OK)
        return st;
    if (d->bias && (st = gpuseg__ops_check_buf(ops, nm, "bias", d->bias, d->cout)) != GPUSEG_OK)
        return st;
    if (d->bn_scale &&
        ((st = gpuseg__ops_check_buf(ops, nm, "bn scale", d->bn_scale, d->cin)) != GPUSEG_OK ||
         (st = gpuseg__ops_check_buf(ops, nm, "bn shift", d->bn_shift, d->cin)) != GPUSEG_OK))
        return st;
    if (d->add_in &&
        (st = gpuseg__ops_check_buf(ops, nm, "added input", d->add_in, nin)) != GPUSEG_OK)
        return st;
    if (d->pre_add && (st = gpuseg__ops_check_buf(ops, nm, "channel constant", d->pre_add,
                                                  (size_t)d->batch * d->cin)) != GPUSEG_OK)
        return st;
    if (d->residual &&
        (st = gpuseg__ops_check_buf(ops, nm, "residual", d->residual, nout)) != GPUSEG_OK)
        return st;
    return GPUSEG_OK;
}

/* Runs the prologue into scratch slot 0 with geometry g. */
static gpuseg_status prologue(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                              const gpuseg__conv_geom *g, cl_mem in, cl_mem *src) {
    gpuseg_ctx *ctx = ops->ctx;
    size_t bytes;
    if (!gpuseg__mul4_size((size_t)d->batch * d->cin, g->hp, g->wp, sizeof(float), &bytes))
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "%s: prologue size overflows", layer_name(d));
    gpuseg_status st = gpuseg__ops_scratch(ops, 0, bytes, src);
    if (st != GPUSEG_OK)
        return st;
    cl_kernel k;
    if ((st = gpuseg__kernel(ctx, "conv", "conv_prologue", &k)) != GPUSEG_OK)
        return st;
    const cl_int C = (cl_int)d->cin, H = (cl_int)d->height, W = (cl_int)d->width,
                 pad = (cl_int)(d->ksize / 2), hp = (cl_int)g->hp, wp = (cl_int)g->wp,
                 planes = (cl_int)(d->batch * d->cin), relu = d->relu ? 1 : 0;
    st = gpuseg__set_args(ctx, k, 14, sizeof(cl_mem), &in, sizeof(cl_mem), &d->add_in,
                          sizeof(cl_mem), &d->pre_add, sizeof(cl_mem), &d->bn_scale, sizeof(cl_mem),
                          &d->bn_shift, sizeof(cl_int), &relu, sizeof(cl_mem), src, sizeof(cl_int),
                          &C, sizeof(cl_int), &H, sizeof(cl_int), &W, sizeof(cl_int), &pad,
                          sizeof(cl_int), &hp, sizeof(cl_int), &wp, sizeof(cl_int), &planes);
    if (st != GPUSEG_OK)
        return st;
    const size_t global[2] = {g->hp, (size_t)planes};
    const size_t local[2] = {g->hp >= 16 ? 16 : 1, 1};
    return gpuseg__run(ctx, k, 2, global, local);
}

/* Prologue + one implementation, writing into out (the fused 1x1 kernel does its own prologue). */
static gpuseg_status run_impl(gpuseg__ops *ops, gpuseg__conv_impl impl, const gpuseg__conv_desc *d,
                              cl_mem in, cl_mem out) {
    /* Winograd is 3x3 only: forced on another layer, the direct kernel runs it. */
    if (impl == GPUSEG__CONV_WINOGRAD && !gpuseg__conv_winograd_takes(ops, d))
        impl = GPUSEG__CONV_DIRECT;
    if (impl == GPUSEG__CONV_DIRECT && gpuseg__conv_direct_fused(ops, d))
        return gpuseg__conv1x1_fused(ops, d, in, out);
    if (impl == GPUSEG__CONV_GEMM) /* applies the prologue while loading its tiles */
        return gpuseg__conv_gemm(ops, d, NULL, in, out);
    gpuseg__conv_geom g;
    if (impl == GPUSEG__CONV_CLBLAST)
        gpuseg__conv_clblast_geom(d, &g);
    else if (impl == GPUSEG__CONV_WINOGRAD)
        gpuseg__conv_winograd_geom(d, &g);
    else
        gpuseg__conv_direct_geom(ops, d, &g);
    cl_mem src;
    gpuseg_status st = prologue(ops, d, &g, in, &src);
    if (st != GPUSEG_OK)
        return st;
    if (impl == GPUSEG__CONV_CLBLAST)
        return gpuseg__conv_clblast(ops, d, &g, src, out);
    if (impl == GPUSEG__CONV_WINOGRAD)
        return gpuseg__conv_winograd(ops, d, &g, src, out);
    return gpuseg__conv_direct(ops, d, &g, src, out);
}

/* One warm-up run (program builds, CLBlast's own kernel compilation, scratch growth) and one
 * timed run of impl into the trial buffer. */
static gpuseg_status time_impl(gpuseg__ops *ops, gpuseg__conv_impl impl, const gpuseg__conv_desc *d,
                               cl_mem in, cl_mem trial, double *seconds) {
    gpuseg_status st;
    cl_int err;
    for (int rep = 0; rep < 2; rep++) {
        double t0 = gpuseg__now_s();
        if ((st = run_impl(ops, impl, d, in, trial)) != GPUSEG_OK)
            return st;
        if ((err = clFinish(ops->ctx->queue)) != CL_SUCCESS)
            return gpuseg__fail_cl(ops->ctx, err, "%s: clFinish", layer_name(d));
        *seconds = gpuseg__now_s() - t0;
    }
    return GPUSEG_OK;
}

static gpuseg__conv_choice_entry *find_choice(gpuseg__ops *ops, const gpuseg__conv_desc *d) {
    for (unsigned i = 0; i < ops->n_choices; i++) {
        gpuseg__conv_choice_entry *e = &ops->choices[i];
        if (e->batch == d->batch && e->cin == d->cin && e->cout == d->cout &&
            e->height == d->height && e->width == d->width && e->ksize == d->ksize)
            return e;
    }
    return NULL;
}

gpuseg__conv_impl gpuseg__conv_choice(const gpuseg__ops *ops, const gpuseg__conv_desc *d) {
    if (ops->conv != GPUSEG__CONV_AUTO)
        return (gpuseg__conv_impl)ops->conv;
    const gpuseg__conv_choice_entry *e = find_choice((gpuseg__ops *)ops, d);
    return e ? (gpuseg__conv_impl)e->impl : GPUSEG__CONV_AUTO;
}

/* With tuning on, a shape the tuner has not seen (at this batch) is tuned before the GEMM runs
 * it, on the whole batch (src/ops/conv_gemm.c). */
static gpuseg_status gemm_tune_if_new(gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in) {
    if (!ops->tune || ops->gemm_force.tm || gpuseg__gemm_tuned_find(ops, d, false))
        return GPUSEG_OK;
    gpuseg_status st = gpuseg__conv_gemm_tune(ops, d, in, NULL, NULL, NULL, 0, NULL);
    return st == GPUSEG_OK ? st : gpuseg__wrap(ops->ctx, st, "%s: tuning the GEMM", layer_name(d));
}

/* The implementation for d's shape, measuring each now if AUTO has not yet decided. */
static gpuseg_status choose(gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in,
                            gpuseg__conv_impl *impl) {
    if (ops->conv != GPUSEG__CONV_AUTO) {
        *impl = (gpuseg__conv_impl)ops->conv;
        return GPUSEG_OK;
    }
    gpuseg__conv_choice_entry *e = find_choice(ops, d);
    if (e) {
        *impl = (gpuseg__conv_impl)e->impl;
        return GPUSEG_OK;
    }
    /* The trials write to scratch (slot 2) without the residual, so that the caller's out and
     * residual (possibly the same buffer) are untouched; the residual read costs the same. They
     * run on the first sample only: the ranking does not change with the batch (both
     * implementations loop over samples), and on CPUs CLBlast is slow enough that timing a
     * whole batch of 224-pixel tiles would add seconds to the first forward pass. */
    gpuseg__conv_desc t = *d;
    t.residual = NULL;
    t.batch = 1;
    size_t bytes;
    if (!gpuseg__mul4_size((size_t)d->cout, d->height, d->width, sizeof(float), &bytes))
        return gpuseg__fail(ops->ctx, GPUSEG_TOO_LARGE, "%s: size overflows", layer_name(d));
    cl_mem trial;
    gpuseg_status st = gpuseg__ops_scratch(ops, 2, bytes, &trial);
    if (st != GPUSEG_OK)
        return st;
    /* Winograd only where it takes the layer (3x3); tw stays 0 otherwise. CLBlast not on CPU
     * devices (tc stays 0): through PoCL it ran at 0.06-0.12 of OpenBLAS per core on every
     * CPnet shape (docs/ops.md), never near direct, and its trials cost a cold run ~15 s of
     * kernel compilation; GPUSEG_CONV=clblast still forces it. */
    /* The GEMM likewise only on GPUs, or where tuning is on (then tuned first): through PoCL it
     * ran at a fraction of direct's speed on every CPnet shape (docs/ops.md) and each of its
     * parameter sets is a program to compile. */
    double tc = 0, td = 0, tw = 0, tg = 0;
    const bool wino = gpuseg__conv_winograd_takes(ops, d);
    const bool blast = ops->ctx->dev.type != GPUSEG_DEVICE_CPU;
    bool gemm = ops->ctx->dev.type != GPUSEG_DEVICE_CPU || ops->tune;
    if ((st = time_impl(ops, GPUSEG__CONV_DIRECT, &t, in, trial, &td)) != GPUSEG_OK ||
        (wino && (st = time_impl(ops, GPUSEG__CONV_WINOGRAD, &t, in, trial, &tw)) != GPUSEG_OK) ||
        (blast && (st = time_impl(ops, GPUSEG__CONV_CLBLAST, &t, in, trial, &tc)) != GPUSEG_OK) ||
        (gemm && (st = gemm_tune_if_new(ops, d, in)) != GPUSEG_OK))
        return gpuseg__wrap(ops->ctx, st, "%s: measuring the convolution implementations",
                            layer_name(d));
    if (gemm && (st = time_impl(ops, GPUSEG__CONV_GEMM, &t, in, trial, &tg)) != GPUSEG_OK) {
        /* A set the device refuses at launch (a kernel's work-group limit below its size, on a
         * device no one tuned): the GEMM is not a contender for this shape, the others are. */
        if (st != GPUSEG_INVALID_ARGUMENT)
            return gpuseg__wrap(ops->ctx, st, "%s: measuring the convolution implementations",
                                layer_name(d));
        gpuseg__log(ops->ctx, GPUSEG_LOG_DEBUG, "%s: gemm left out: %s", layer_name(d),
                    gpuseg_ctx_last_error(ops->ctx));
        gpuseg__clear_error(ops->ctx);
        gemm = false;
        tg = 0;
    }
    gpuseg__conv_impl pick = GPUSEG__CONV_DIRECT;
    double best = td;
    if (wino && tw < best) {
        pick = GPUSEG__CONV_WINOGRAD;
        best = tw;
    }
    if (blast && tc < best) {
        pick = GPUSEG__CONV_CLBLAST;
        best = tc;
    }
    if (gemm && tg < best)
        pick = GPUSEG__CONV_GEMM;
    gpuseg__log(ops->ctx, GPUSEG_LOG_DEBUG,
                "%s: %ux%ux%ux%u -> %u k%u: clblast %.3f ms, direct %.3f ms, winograd %.3f ms, "
                "gemm %.3f ms: using %s",
                layer_name(d), d->batch, d->cin, d->height, d->width, d->cout, d->ksize, 1e3 * tc,
                1e3 * td, 1e3 * tw, 1e3 * tg, gpuseg__conv_impl_name(pick));
    if (ops->n_choices == GPUSEG__OPS_CHOICES)
        ops->n_choices = 0; /* full: forget the table in memory rather than measure every call */
    {
        e = &ops->choices[ops->n_choices++];
        e->batch = d->batch;
        e->cin = d->cin;
        e->cout = d->cout;
        e->height = d->height;
        e->width = d->width;
        e->ksize = d->ksize;
        e->impl = pick;
        e->seconds_clblast = tc;
        e->seconds_direct = td;
        e->seconds_winograd = tw;
        e->seconds_gemm = tg;
        gpuseg__conv_choice_store(ops);
    }
    *impl = pick;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__conv2d(gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in, cl_mem out) {
    if (!ops || !d)
        return gpuseg__fail(ops ? ops->ctx : NULL, GPUSEG_INVALID_ARGUMENT,
                            "conv: NULL ops or description");
    gpuseg_status st = validate(ops, d, in, out);
    if (st != GPUSEG_OK)
        return st;
    gpuseg__conv_impl impl = GPUSEG__CONV_DIRECT;
    if ((st = choose(ops, d, in, &impl)) != GPUSEG_OK)
        return st;
    if (impl == GPUSEG__CONV_GEMM && (st = gemm_tune_if_new(ops, d, in)) != GPUSEG_OK)
        return st;
    if ((st = run_impl(ops, impl, d, in, out)) != GPUSEG_OK)
        return gpuseg__wrap(ops->ctx, st, "%s (%s)", layer_name(d), gpuseg__conv_impl_name(impl));
    return GPUSEG_OK;
}
