/* ops/conv_gemm.c: host side of the implicit-GEMM convolution (kernels/conv_gemm.cl): parameter
 * sets (checked against the device's work-group and local-memory limits before anything is
 * built), the choice of a set per layer shape (forced, tuned, the committed table in
 * conv_params.c, or the default), the launch, the tuner (a sweep over candidate sets, the fastest
 * kept in memory and in <cache>/<key>.convtune beside the program cache), and the fp16 probe. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kernels_embedded.h"
#include "ops/ops_internal.h"

#define TUNE_FORMAT  1
#define TUNE_MAGIC   "gpuseg-conv-tune"
#define TUNE_MAX_LEN (GPUSEG__GEMM_TUNED * 128 + 64)

/* Defaults where neither the tuner nor the table has a set: 128 x 128 output tiles (8 x 16
 * pixels for 3x3), 256 work-items of 8 x 8 accumulators, 8 input channels per K step (3x3: 42.9
 * KiB of local memory, inside the 48 KiB every current GPU offers) or 16 (1x1). Cut down to
 * small layers by fit() below. */
static const gpuseg__gemm_params default3 = {128, 8, 16, 8, 8, 8, 1};
static const gpuseg__gemm_params default1 = {128, 8, 16, 16, 8, 8, 1};

/* The tuner's candidates (each cut down to the layer by fit(), duplicates and sets the device
 * refuses skipped): work-groups of 128-512, register blocks of 16-64 accumulators, pixel tiles
 * square-ish or wide (rows of 32 pixels suit coalescing on GPUs), K steps of 8-32. */
static const gpuseg__gemm_params candidates[] = {
    {128, 8, 16, 8, 8, 8, 1}, {128, 8, 8, 8, 8, 4, 1},   {64, 8, 16, 8, 4, 8, 1},
    {64, 8, 8, 8, 4, 4, 1},   {64, 16, 16, 8, 4, 8, 1},  {128, 16, 16, 8, 8, 8, 1},
    {64, 8, 16, 16, 4, 8, 1}, {64, 4, 32, 8, 4, 8, 1},   {128, 4, 32, 8, 8, 8, 1},
    {64, 8, 32, 8, 8, 8, 1},  {32, 8, 32, 8, 4, 8, 1},   {128, 8, 16, 16, 8, 8, 1},
    {64, 8, 16, 32, 4, 8, 1}, {128, 4, 16, 16, 8, 4, 1},
};
#define N_CANDIDATES (sizeof candidates / sizeof candidates[0])

static unsigned pow2_at_least(unsigned v) {
    unsigned p = 1;
    while (p < v)
        p *= 2;
    return p;
}

static bool same_params(const gpuseg__gemm_params *a, const gpuseg__gemm_params *b) {
    return a->tm == b->tm && a->th == b->th && a->tw == b->tw && a->tk == b->tk && a->wm == b->wm &&
           a->wn == b->wn && a->pad == b->pad;
}

/* Cuts a set down to a small layer: output channels per tile halved (with the register block,
 * so that the work-group keeps its size) while half the tile still covers cout; K steps halved
 * while half still covers cin (CPnet's first layer has 2 input channels). */
static void fit(gpuseg__gemm_params *p, const gpuseg__conv_desc *d) {
    while (p->wm > 1 && p->wm % 2 == 0 && p->tm / 2 >= pow2_at_least(d->cout)) {
        p->tm /= 2;
        p->wm /= 2;
    }
    while (p->tk > 1 && p->tk / 2 >= pow2_at_least(d->cin))
        p->tk /= 2;
}

static size_t local_bytes(const gpuseg__gemm_params *p, unsigned ksize) {
    const size_t tn = (size_t)p->th * p->tw;
    const size_t in = ksize == 3 ? (size_t)p->tk * (p->th + 2) * (p->tw + 2) : (size_t)p->tk * tn;
    const size_t w = (size_t)p->tk * ksize * ksize * (p->tm + p->pad);
    return (in + w) * sizeof(float);
}

const char *gpuseg__gemm_check_sizes(const gpuseg__gemm_params *p) {
    if (!p->tm || !p->th || !p->tw || !p->tk || !p->wm || !p->wn || p->tm > 256 || p->th > 64 ||
        p->tw > 256 || p->tk > 64 || p->wm > 16 || p->wn > 16 || p->pad > 8)
        return "a size out of range (TM 1-256, TH 1-64, TW 1-256, TK 1-64, WM and WN 1-16, "
               "PAD 0-8)";
    if (p->tm % p->wm || ((size_t)p->th * p->tw) % p->wn)
        return "WM must divide TM and WN must divide TH * TW";
    if (p->wm * p->wn > 128)
        return "more than 128 accumulators per work-item";
    return NULL;
}

const char *gpuseg__gemm_check(const gpuseg__ops *ops, const gpuseg__gemm_params *p,
                               unsigned ksize) {
    const char *why = gpuseg__gemm_check_sizes(p);
    if (why)
        return why;
    const size_t wg = (size_t)(p->tm / p->wm) * ((size_t)p->th * p->tw / p->wn);
    const size_t maxwg = ops->ctx->dev.max_work_group_size ? ops->ctx->dev.max_work_group_size : 1;
    if (wg > maxwg || wg > 1024)
        return "the work-group is larger than the device allows";
    if (local_bytes(p, ksize) > ops->ctx->dev.local_mem_bytes)
        return "the tiles need more local memory than the device has";
    return NULL;
}

const gpuseg__gemm_tuned *gpuseg__gemm_tuned_find(const gpuseg__ops *ops,
                                                  const gpuseg__conv_desc *d, bool any_batch) {
    for (unsigned i = 0; i < ops->n_tuned; i++) {
        const gpuseg__gemm_tuned *e = &ops->tuned[i];
        if ((any_batch || e->batch == d->batch) && e->cin == d->cin && e->cout == d->cout &&
            e->height == d->height && e->width == d->width && e->ksize == d->ksize)
            return e;
    }
    return NULL;
}

void gpuseg__gemm_params_for(const gpuseg__ops *ops, const gpuseg__conv_desc *d,
                             gpuseg__gemm_params *p) {
    if (ops->gemm_force.tm) {
        *p = ops->gemm_force;
        return;
    }
    const gpuseg__gemm_tuned *t = gpuseg__gemm_tuned_find(ops, d, false);
    if (!t)
        t = gpuseg__gemm_tuned_find(ops, d, true);
    if (t && !gpuseg__gemm_check(ops, &t->p, d->ksize)) {
        *p = t->p;
        return;
    }
    const gpuseg__gemm_db_entry *e = gpuseg__gemm_db_find(ops->ctx->dev.name, d);
    *p = e ? e->p : d->ksize == 3 ? default3 : default1;
    fit(p, d);
    if (!gpuseg__gemm_check(ops, p, d->ksize))
        return;
    *p = d->ksize == 3 ? default3 : default1;
    fit(p, d);
    /* Smaller devices: halve the pixel tile, then the K step, until it fits (a 64-work-item,
     * 16 KiB device still takes 128 x 16 or smaller tiles). */
    while (gpuseg__gemm_check(ops, p, d->ksize) && (p->th > 1 || p->tk > 1)) {
        if (p->th > 1)
            p->th /= 2;
        else
            p->tk /= 2;
    }
}

/* The kernels of set p (one program per set, both kernel sizes). */
static gpuseg_status kernels(gpuseg__ops *ops, const gpuseg__gemm_params *p, cl_kernel *k3,
                             cl_kernel *k1) {
    for (unsigned i = 0; i < ops->n_gemm_k; i++)
        if (same_params(&ops->gemm_k[i].p, p)) {
            *k3 = ops->gemm_k[i].k3;
            *k1 = ops->gemm_k[i].k1;
            return GPUSEG_OK;
        }
    if (ops->n_gemm_k == GPUSEG__GEMM_KERNELS)
        return gpuseg__fail(ops->ctx, GPUSEG_INTERNAL, "gemm: more than %d parameter sets in use",
                            GPUSEG__GEMM_KERNELS);
    char opts[160];
    snprintf(opts, sizeof opts,
             "-DGEMM_TM=%u -DGEMM_TH=%u -DGEMM_TW=%u -DGEMM_TK=%u -DGEMM_WM=%u -DGEMM_WN=%u "
             "-DGEMM_PAD=%u",
             p->tm, p->th, p->tw, p->tk, p->wm, p->wn, p->pad);
    cl_program prog;
    gpuseg_status st = gpuseg__program(ops->ctx, "conv_gemm", opts, &prog);
    if (st != GPUSEG_OK)
        return st;
    cl_kernel a = NULL, b = NULL;
    if ((st = gpuseg__ops_kernel(ops, prog, "conv_gemm", "conv3x3_gemm", &a)) != GPUSEG_OK)
        return st;
    if ((st = gpuseg__ops_kernel(ops, prog, "conv_gemm", "conv1x1_gemm", &b)) != GPUSEG_OK) {
        clReleaseKernel(a);
        return st;
    }
    ops->gemm_k[ops->n_gemm_k].p = *p;
    ops->gemm_k[ops->n_gemm_k].k3 = *k3 = a;
    ops->gemm_k[ops->n_gemm_k].k1 = *k1 = b;
    ops->n_gemm_k++;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__conv_gemm(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                                const gpuseg__gemm_params *pp, cl_mem in, cl_mem out) {
    gpuseg_ctx *ctx = ops->ctx;
    gpuseg__gemm_params p;
    if (pp)
        p = *pp;
    else
        gpuseg__gemm_params_for(ops, d, &p);
    const char *why = gpuseg__gemm_check(ops, &p, d->ksize);
    if (why)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "gemm parameters %u,%u,%u,%u,%u,%u,%u for a %ux%u layer on '%s': %s",
                            p.tm, p.th, p.tw, p.tk, p.wm, p.wn, p.pad, d->ksize, d->ksize,
                            ctx->dev.name, why);
    cl_kernel k3 = NULL, k1 = NULL;
    gpuseg_status st = kernels(ops, &p, &k3, &k1);
    if (st != GPUSEG_OK)
        return st;
    cl_kernel k = d->ksize == 3 ? k3 : k1;
    /* The kernel's reqd_work_group_size can still exceed what this kernel may use (registers). */
    size_t kmax = 0;
    const size_t wg = (size_t)(p.tm / p.wm) * ((size_t)p.th * p.tw / p.wn);
    if (clGetKernelWorkGroupInfo(k, ctx->device, CL_KERNEL_WORK_GROUP_SIZE, sizeof kmax, &kmax,
                                 NULL) == CL_SUCCESS &&
        kmax && kmax < wg)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "gemm parameters %u,%u,%u,%u,%u,%u,%u: work-group %zu, the kernel "
                            "allows %zu on '%s'",
                            p.tm, p.th, p.tw, p.tk, p.wm, p.wn, p.pad, wg, kmax, ctx->dev.name);
    const cl_int Ci = (cl_int)d->cin, Co = (cl_int)d->cout, H = (cl_int)d->height,
                 W = (cl_int)d->width, relu = d->relu ? 1 : 0;
    if ((st = gpuseg__set_args(ctx, k, 14, sizeof(cl_mem), &in, sizeof(cl_mem), &d->add_in,
                               sizeof(cl_mem), &d->pre_add, sizeof(cl_mem), &d->bn_scale,
                               sizeof(cl_mem), &d->bn_shift, sizeof(cl_int), &relu, sizeof(cl_mem),
                               &d->weight, sizeof(cl_mem), &d->bias, sizeof(cl_mem), &d->residual,
                               sizeof(cl_mem), &out, sizeof(cl_int), &Ci, sizeof(cl_int), &Co,
                               sizeof(cl_int), &H, sizeof(cl_int), &W)) != GPUSEG_OK)
        return st;
    const size_t tiles =
        d->ksize == 3
            ? (size_t)((d->height + p.th - 1) / p.th) * ((d->width + p.tw - 1) / p.tw)
            : ((size_t)d->height * d->width + (size_t)p.th * p.tw - 1) / ((size_t)p.th * p.tw);
    const size_t global[3] = {wg * tiles, (d->cout + p.tm - 1) / p.tm, d->batch};
    const size_t local[3] = {wg, 1, 1};
    return gpuseg__run(ctx, k, 3, global, local);
}

/* --- the tuner ---------------------------------------------------------------------------- */

static bool tune_path(const gpuseg__ops *ops, char *path, size_t len) {
    const gpuseg_ctx *ctx = ops->ctx;
    if (!ctx->use_cache || !ctx->cache_dir[0])
        return false;
    gpuseg__sha256 s;
    gpuseg__sha256_init(&s);
    char buf[64];
    snprintf(buf, sizeof buf, "%s %d", TUNE_MAGIC, TUNE_FORMAT);
    gpuseg__sha256_str(&s, buf);
    gpuseg__sha256_device(&s, ctx);
    for (const gpuseg__kernel_source *k = gpuseg__kernel_sources; k->name; k++)
        if (strcmp(k->name, "conv_gemm") == 0)
            gpuseg__sha256_str(&s, k->sha256);
    unsigned char dg[32];
    char hex[65];
    gpuseg__sha256_final(&s, dg);
    gpuseg__sha256_hex(dg, hex);
    return snprintf(path, len, "%s/%s.convtune", ctx->cache_dir, hex) < (int)len;
}

/* Parses a tuned file; the count, or -1 if anything is off (then it is ignored). */
static int tune_parse(const gpuseg__ops *ops, const char *text, gpuseg__gemm_tuned *e,
                      unsigned max) {
    int fmt = 0, n = -1, used = 0;
    if (sscanf(text, TUNE_MAGIC " %d %d%n", &fmt, &n, &used) != 2 || fmt != TUNE_FORMAT || n < 0 ||
        (unsigned)n > max)
        return -1;
    const char *p = text + used;
    for (int i = 0; i < n; i++) {
        unsigned v[13];
        double us;
        if (sscanf(p, " %u %u %u %u %u %u %u %u %u %u %u %u %u %lf%n", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7], &v[8], &v[9], &v[10], &v[11], &v[12], &us,
                   &used) != 14)
            return -1;
        p += used;
        const gpuseg__gemm_params gp = {v[6], v[7], v[8], v[9], v[10], v[11], v[12]};
        if (!v[0] || !v[1] || !v[2] || !v[3] || !v[4] || (v[5] != 1 && v[5] != 3) || !(us > 0) ||
            gpuseg__gemm_check(ops, &gp, v[5]))
            return -1;
        e[i] = (gpuseg__gemm_tuned){v[0], v[1], v[2], v[3], v[4], v[5], gp, us * 1e-6};
    }
    return n;
}

static int tune_read(const gpuseg__ops *ops, const char *path, gpuseg__gemm_tuned *e) {
    void *data = NULL;
    size_t n = 0;
    if (gpuseg__read_file(NULL, path, TUNE_MAX_LEN, &data, &n) != GPUSEG_OK) {
        gpuseg__clear_error(NULL);
        return 0;
    }
    char *text = realloc(data, n + 1);
    if (!text) {
        free(data);
        return 0;
    }
    text[n] = '\0';
    const int count = tune_parse(ops, text, e, GPUSEG__GEMM_TUNED);
    free(text);
    if (count < 0) {
        gpuseg__log(ops->ctx, GPUSEG_LOG_DEBUG, "%s: malformed; tuning again", path);
        return 0;
    }
    return count;
}

void gpuseg__gemm_tuned_load(gpuseg__ops *ops) {
    char path[1200];
    if (!tune_path(ops, path, sizeof path))
        return;
    const int n = tune_read(ops, path, ops->tuned);
    ops->n_tuned = n > 0 ? (unsigned)n : 0;
}

static bool same_tuned_shape(const gpuseg__gemm_tuned *a, const gpuseg__gemm_tuned *b) {
    return a->batch == b->batch && a->cin == b->cin && a->cout == b->cout &&
           a->height == b->height && a->width == b->width && a->ksize == b->ksize;
}

void gpuseg__gemm_tuned_store(gpuseg__ops *ops) {
    char path[1200];
    if (!tune_path(ops, path, sizeof path))
        return;
    gpuseg__gemm_tuned *all = malloc(GPUSEG__GEMM_TUNED * sizeof *all);
    char *text = malloc(TUNE_MAX_LEN);
    if (!all || !text) {
        free(all);
        free(text);
        return;
    }
    /* merged with what other processes stored meanwhile; ours win for the same shape */
    int n = tune_read(ops, path, all);
    for (unsigned i = 0; i < ops->n_tuned; i++) {
        int j = 0;
        while (j < n && !same_tuned_shape(&all[j], &ops->tuned[i]))
            j++;
        if (j == n && n == GPUSEG__GEMM_TUNED)
            break;
        all[j] = ops->tuned[i];
        if (j == n)
            n++;
    }
    size_t len = (size_t)snprintf(text, TUNE_MAX_LEN, "%s %d %d\n", TUNE_MAGIC, TUNE_FORMAT, n);
    for (int i = 0; i < n && len < TUNE_MAX_LEN; i++) {
        const gpuseg__gemm_tuned *e = &all[i];
        len += (size_t)snprintf(text + len, TUNE_MAX_LEN - len,
                                "%u %u %u %u %u %u %u %u %u %u %u %u %u %.1f\n", e->batch, e->cin,
                                e->cout, e->height, e->width, e->ksize, e->p.tm, e->p.th, e->p.tw,
                                e->p.tk, e->p.wm, e->p.wn, e->p.pad, e->seconds * 1e6);
    }
    if (len < TUNE_MAX_LEN && gpuseg__write_file_atomic(NULL, path, text, len) != GPUSEG_OK) {
        gpuseg__log(ops->ctx, GPUSEG_LOG_DEBUG, "conv tune: %s", gpuseg_last_error());
        gpuseg__clear_error(NULL);
    }
    free(all);
    free(text);
}

/* Seconds of one run of set p on d (out: the tuner's scratch): a warm-up (the build), then the
 * best of 3 groups of `reps` back-to-back runs (GPUs: 5 per group, so that launch gaps count
 * less; CPUs: 1). */
static gpuseg_status time_set(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                              const gpuseg__gemm_params *p, cl_mem in, cl_mem out,
                              double *seconds) {
    gpuseg_status st;
    cl_int err;
    const int reps = ops->ctx->dev.type == GPUSEG_DEVICE_CPU ? 1 : 5;
    *seconds = 0;
    for (int g = -1; g < 3; g++) {
        const double t0 = gpuseg__now_s();
        for (int r = 0; r < (g < 0 ? 1 : reps); r++)
            if ((st = gpuseg__conv_gemm(ops, d, p, in, out)) != GPUSEG_OK)
                return st;
        if ((err = clFinish(ops->ctx->queue)) != CL_SUCCESS)
            return gpuseg__fail_cl(ops->ctx, err, "gemm tuner: clFinish");
        const double t = (gpuseg__now_s() - t0) / reps;
        if (g >= 0 && (*seconds == 0 || t < *seconds))
            *seconds = t;
    }
    return GPUSEG_OK;
}

gpuseg_status gpuseg__conv_gemm_tune(gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in,
                                     gpuseg__gemm_params *best, double *best_seconds,
                                     gpuseg__gemm_trial *trials, unsigned max_trials,
                                     unsigned *n_trials) {
    gpuseg_ctx *ctx = ops->ctx;
    if (n_trials)
        *n_trials = 0;
    size_t bytes;
    if (!gpuseg__mul4_size((size_t)d->batch * d->cout, d->height, d->width, sizeof(float), &bytes))
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "gemm tuner: size overflows");
    cl_mem out;
    gpuseg_status st = gpuseg__ops_scratch(ops, 4, bytes, &out);
    if (st != GPUSEG_OK)
        return st;
    gpuseg__conv_desc t = *d;
    t.residual = NULL; /* the caller's residual may be its output: leave both untouched */
    gpuseg__gemm_params seen[N_CANDIDATES + 1];
    unsigned nseen = 0;
    double bs = 0;
    gpuseg__gemm_params bp = {0};
    for (size_t c = 0; c <= N_CANDIDATES; c++) {
        /* the candidates, then the set the table or the default would give */
        gpuseg__gemm_params p;
        if (c < N_CANDIDATES) {
            p = candidates[c];
            fit(&p, d);
        } else {
            const gpuseg__gemm_db_entry *e = gpuseg__gemm_db_find(ops->ctx->dev.name, d);
            p = e ? e->p : d->ksize == 3 ? default3 : default1;
            fit(&p, d);
        }
        bool dup = false;
        for (unsigned i = 0; i < nseen; i++)
            dup = dup || same_params(&seen[i], &p);
        if (dup)
            continue;
        seen[nseen++] = p;
        double s = 0;
        if (!gpuseg__gemm_check(ops, &p, d->ksize)) {
            st = time_set(ops, &t, &p, in, out, &s);
            if (st == GPUSEG_INVALID_ARGUMENT) { /* the kernel's own work-group limit */
                gpuseg__clear_error(ctx);
                s = 0;
            } else if (st != GPUSEG_OK) {
                return st;
            }
        }
        if (trials && n_trials && *n_trials < max_trials)
            trials[(*n_trials)++] = (gpuseg__gemm_trial){p, s};
        if (s > 0 && (bs == 0 || s < bs)) {
            bs = s;
            bp = p;
        }
    }
    if (bs == 0)
        return gpuseg__fail(ctx, GPUSEG_UNSUPPORTED,
                            "gemm tuner: no parameter set runs a %ux%u layer on '%s'", d->ksize,
                            d->ksize, ctx->dev.name);
    gpuseg__gemm_tuned e = {d->batch, d->cin, d->cout, d->height, d->width, d->ksize, bp, bs};
    gpuseg__gemm_tuned *slot = (gpuseg__gemm_tuned *)gpuseg__gemm_tuned_find(ops, d, false);
    if (!slot) {
        if (ops->n_tuned == GPUSEG__GEMM_TUNED)
            ops->n_tuned = 0; /* full: start over rather than tune every call */
        slot = &ops->tuned[ops->n_tuned++];
    }
    *slot = e;
    gpuseg__gemm_tuned_store(ops);
    gpuseg__log(ctx, GPUSEG_LOG_DEBUG,
                "gemm tuner: %ux%ux%ux%u -> %u k%u: %u,%u,%u,%u,%u,%u,%u in %.3f ms", d->batch,
                d->cin, d->height, d->width, d->cout, d->ksize, bp.tm, bp.th, bp.tw, bp.tk, bp.wm,
                bp.wn, bp.pad, 1e3 * bs);
    if (best)
        *best = bp;
    if (best_seconds)
        *best_seconds = bs;
    return GPUSEG_OK;
}

/* --- fp16 --------------------------------------------------------------------------------- */

int gpuseg__ops_half_probe(gpuseg__ops *ops) {
    if (ops->half >= 0)
        return ops->half;
    gpuseg_ctx *ctx = ops->ctx;
    ops->half = 0;
    cl_program prog;
    cl_kernel k = NULL;
    cl_mem x = NULL, y = NULL;
    const float xs[2] = {1.5f, 2.0f};
    float ys[1] = {0};
    if (gpuseg__program(ctx, "conv_gemm", "-DGEMM_HALF_PROBE", &prog) == GPUSEG_OK &&
        gpuseg__ops_kernel(ops, prog, "conv_gemm", "half_probe", &k) == GPUSEG_OK &&
        gpuseg__upload(ctx, xs, sizeof xs, "half probe", &x) == GPUSEG_OK &&
        gpuseg__buffer(ctx, CL_MEM_READ_WRITE, sizeof ys, "half probe", &y) == GPUSEG_OK &&
        gpuseg__set_args(ctx, k, 2, sizeof(cl_mem), &x, sizeof(cl_mem), &y) == GPUSEG_OK &&
        gpuseg__run(ctx, k, 1, (const size_t[]){1}, NULL) == GPUSEG_OK &&
        gpuseg__read_buf(ctx, y, sizeof ys, ys, "half probe") == GPUSEG_OK)
        ops->half = ys[0] == 4.5f; /* 1.5 * 2 + 1.5, exact in half */
    else
        gpuseg__clear_error(ctx); /* no half: a build failure is the answer, not an error */
    if (k)
        clReleaseKernel(k);
    gpuseg__release(&x);
    gpuseg__release(&y);
    gpuseg__log(ctx, GPUSEG_LOG_DEBUG, "fp16: cl_khr_fp16 %s, half arithmetic %s",
                ctx->dev.fp16 ? "reported" : "not reported", ops->half ? "works" : "does not");
    return ops->half;
}
