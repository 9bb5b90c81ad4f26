/* net/cpnet.c: Cellpose's CPnet on the device. Weights are uploaded once per net (batch norms
 * folded into per-channel scale/shift, applied in the convolution prologue); the forward pass of
 * a batch of tiles runs the encoder (4 resdown blocks, 2x2 max-pool between them), the style
 * vector, the decoder (4 resup blocks with the style added before conv_1..3, nearest x2
 * upsampling between them; the deepest block gets xd[3] as input and skip) and the 1x1 head. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net_internal.h"

#define BN_EPS 1e-5f /* nn.BatchNorm2d(eps=1e-5) in every CPnet layer */

static gpuseg_status tensor(const gpuseg_model *m, const char *prefix, const char *suffix,
                            size_t numel, const float **data) {
    char name[160];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    gpuseg_tensor_info t;
    gpuseg_status st = gpuseg_model_tensor(m, name, &t);
    if (st != GPUSEG_OK)
        return st;
    if (t.numel != numel || !t.data)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: %s holds %zu values, the net needs %zu",
                            gpuseg_model_path(m), name, t.numel, numel);
    *data = t.data;
    return GPUSEG_OK;
}

/* Uploads one layer: BN "<bn>.{weight,bias,running_mean,running_var}" (folded) and the
 * convolution "<conv>.{weight,bias}" of shape [cout][cin][k][k]. */
static gpuseg_status layer_load(gpuseg_net *net, const gpuseg_model *m, const char *bn,
                                const char *conv, unsigned cin, unsigned cout, unsigned k, int relu,
                                gpuseg__layer *L) {
    gpuseg_ctx *ctx = net->ctx;
    /* set by tensor() on success (NULL-initialised for -O3 maybe-uninitialized) */
    const float *bw = NULL, *bb = NULL, *mean = NULL, *var = NULL, *w = NULL, *b = NULL;
    gpuseg_status st;
    if ((st = tensor(m, bn, ".weight", cin, &bw)) != GPUSEG_OK ||
        (st = tensor(m, bn, ".bias", cin, &bb)) != GPUSEG_OK ||
        (st = tensor(m, bn, ".running_mean", cin, &mean)) != GPUSEG_OK ||
        (st = tensor(m, bn, ".running_var", cin, &var)) != GPUSEG_OK ||
        (st = tensor(m, conv, ".weight", (size_t)cout * cin * k * k, &w)) != GPUSEG_OK ||
        (st = tensor(m, conv, ".bias", cout, &b)) != GPUSEG_OK)
        return st;
    snprintf(L->name, sizeof L->name, "%s", conv);
    L->cin = cin;
    L->cout = cout;
    L->ksize = k;
    L->relu = relu;
    float *sc = malloc(2 * (size_t)cin * sizeof(float));
    if (!sc)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "%s: out of host memory", conv);
    gpuseg__bn_fold(bw, bb, mean, var, cin, BN_EPS, sc, sc + cin);
    if ((st = gpuseg__upload(ctx, sc, cin * sizeof(float), conv, &L->scale)) == GPUSEG_OK &&
        (st = gpuseg__upload(ctx, sc + cin, cin * sizeof(float), conv, &L->shift)) == GPUSEG_OK &&
        (st = gpuseg__upload(ctx, w, (size_t)cout * cin * k * k * sizeof(float), conv,
                             &L->weight)) == GPUSEG_OK)
        st = gpuseg__upload(ctx, b, cout * sizeof(float), conv, &L->bias);
    free(sc);
    return st;
}

static void layer_free(gpuseg__layer *L) {
    gpuseg__release(&L->weight);
    gpuseg__release(&L->bias);
    gpuseg__release(&L->scale);
    gpuseg__release(&L->shift);
}

/* Encoder level l: resdown(nbase[l] -> nbase[l+1]). */
static gpuseg_status down_load(gpuseg_net *net, const gpuseg_model *m, int l) {
    const int *nb = net->info.nbase;
    unsigned cin = (unsigned)nb[l], cout = (unsigned)nb[l + 1];
    char bn[128], cv[128];
    gpuseg__block *B = &net->down[l];
    gpuseg_status st;
    snprintf(bn, sizeof bn, "downsample.down.res_down_%d.proj.0", l);
    snprintf(cv, sizeof cv, "downsample.down.res_down_%d.proj.1", l);
    if ((st = layer_load(net, m, bn, cv, cin, cout, 1, 0, &B->proj)) != GPUSEG_OK)
        return st;
    for (int k = 0; k < 4; k++) {
        snprintf(bn, sizeof bn, "downsample.down.res_down_%d.conv.conv_%d.0", l, k);
        snprintf(cv, sizeof cv, "downsample.down.res_down_%d.conv.conv_%d.2", l, k);
        if ((st = layer_load(net, m, bn, cv, k ? cout : cin, cout, 3, 1, &B->conv[k])) != GPUSEG_OK)
            return st;
    }
    return GPUSEG_OK;
}

/* Decoder level l: resup(nbaseup[l+1] -> nbaseup[l]) with nbaseup = [nb1, nb2, nb3, nb4, nb4]. */
static unsigned nbaseup(const gpuseg_net *net, int i) {
    return (unsigned)net->info.nbase[i < 4 ? i + 1 : 4];
}

static gpuseg_status up_load(gpuseg_net *net, const gpuseg_model *m, int l) {
    unsigned cin = nbaseup(net, l + 1), cout = nbaseup(net, l);
    unsigned ns = (unsigned)net->info.nbase[4];
    char bn[128], cv[128];
    gpuseg__block *B = &net->up[l];
    gpuseg_status st;
    snprintf(bn, sizeof bn, "upsample.up.res_up_%d.proj.0", l);
    snprintf(cv, sizeof cv, "upsample.up.res_up_%d.proj.1", l);
    if ((st = layer_load(net, m, bn, cv, cin, cout, 1, 0, &B->proj)) != GPUSEG_OK)
        return st;
    snprintf(bn, sizeof bn, "upsample.up.res_up_%d.conv.conv_0.0", l);
    snprintf(cv, sizeof cv, "upsample.up.res_up_%d.conv.conv_0.2", l);
    if ((st = layer_load(net, m, bn, cv, cin, cout, 3, 1, &B->conv[0])) != GPUSEG_OK)
        return st;
    for (int k = 1; k < 4; k++) {
        snprintf(bn, sizeof bn, "upsample.up.res_up_%d.conv.conv_%d.conv.0", l, k);
        snprintf(cv, sizeof cv, "upsample.up.res_up_%d.conv.conv_%d.conv.2", l, k);
        if ((st = layer_load(net, m, bn, cv, cout, cout, 3, 1, &B->conv[k])) != GPUSEG_OK)
            return st;
        char fp[128];
        const float *fw = NULL, *fb = NULL;
        snprintf(fp, sizeof fp, "upsample.up.res_up_%d.conv.conv_%d.full", l, k);
        if ((st = tensor(m, fp, ".weight", (size_t)cout * ns, &fw)) != GPUSEG_OK ||
            (st = tensor(m, fp, ".bias", cout, &fb)) != GPUSEG_OK ||
            (st = gpuseg__upload(net->ctx, fw, (size_t)cout * ns * sizeof(float), fp,
                                 &B->full_w[k - 1])) != GPUSEG_OK ||
            (st = gpuseg__upload(net->ctx, fb, cout * sizeof(float), fp, &B->full_b[k - 1])) !=
                GPUSEG_OK)
            return st;
    }
    return GPUSEG_OK;
}

static void block_free(gpuseg__block *B) {
    layer_free(&B->proj);
    for (int k = 0; k < 4; k++)
        layer_free(&B->conv[k]);
    for (int k = 0; k < 3; k++) {
        gpuseg__release(&B->full_w[k]);
        gpuseg__release(&B->full_b[k]);
    }
}

gpuseg_status gpuseg_net_create(gpuseg_ctx *ctx, const gpuseg_model *model, gpuseg_net **out) {
    gpuseg__clear_error(ctx);
    if (!ctx || !model || !out)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "gpuseg_net_create: NULL argument");
    *out = NULL;
    gpuseg_net *net = calloc(1, sizeof *net);
    if (!net)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "gpuseg_net_create: out of host memory");
    net->ctx = ctx;
    gpuseg_model_get_info(model, &net->info);
    snprintf(net->model_path, sizeof net->model_path, "%s", gpuseg_model_path(model));
    gpuseg_status st = gpuseg__ops_create(ctx, NULL, &net->ops);
    for (int l = 0; l < 4 && st == GPUSEG_OK; l++)
        st = down_load(net, model, l);
    for (int l = 0; l < 4 && st == GPUSEG_OK; l++)
        st = up_load(net, model, l);
    if (st == GPUSEG_OK)
        st = layer_load(net, model, "output.0", "output.2", nbaseup(net, 0),
                        (unsigned)net->info.nout, 1, 1, &net->head);
    if (st != GPUSEG_OK) {
        gpuseg__wrap(ctx, st, "%s", net->model_path);
        gpuseg_net_free(net);
        return st;
    }
    *out = net;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_net_load(gpuseg_ctx *ctx, const char *path, gpuseg_net **out) {
    gpuseg__clear_error(ctx);
    if (!ctx || !path || !out)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "gpuseg_net_load: NULL argument");
    *out = NULL;
    gpuseg_model *m = NULL;
    gpuseg_status st = gpuseg_model_load_ex(path, &ctx->limits, &m);
    if (st != GPUSEG_OK) { /* the loader's message (thread-local) goes to the context too;
                            * copied first because gpuseg__fail writes the same buffer */
        char msg[GPUSEG__ERRMSG_LEN];
        snprintf(msg, sizeof msg, "%s", gpuseg_last_error());
        return gpuseg__fail(ctx, st, "%s", msg);
    }
    st = gpuseg_net_create(ctx, m, out);
    gpuseg_model_free(m);
    return st;
}

void gpuseg_net_free(gpuseg_net *net) {
    if (!net)
        return;
    gpuseg__net_unplan(net);
    for (int l = 0; l < 4; l++) {
        block_free(&net->down[l]);
        block_free(&net->up[l]);
    }
    layer_free(&net->head);
    gpuseg__ops_free(net->ops);
    free(net);
}

void gpuseg_net_get_info(const gpuseg_net *net, gpuseg_model_info *info) {
    *info = net->info;
}

/* --- plan ---------------------------------------------------------------------------------- */

void gpuseg__net_unplan(gpuseg_net *net) {
    for (int l = 0; l < 4; l++) {
        gpuseg__release(&net->xd[l]);
        for (int k = 0; k < 3; k++)
            gpuseg__release(&net->feat[l][k]);
    }
    for (int k = 0; k < 3; k++)
        gpuseg__release(&net->tmp[k]);
    gpuseg__release(&net->in);
    gpuseg__release(&net->out);
    gpuseg__release(&net->style);
    net->plan_batch = net->plan_h = net->plan_w = 0;
    net->plan_bytes = 0;
}

size_t gpuseg__net_workspace_bytes(const gpuseg_net *net) {
    return net->plan_bytes + gpuseg__ops_scratch_bytes(net->ops);
}

void gpuseg__net_release_workspace(gpuseg_net *net) {
    gpuseg__net_unplan(net);
    gpuseg__ops_release_scratch(net->ops);
}

static gpuseg_status plan_buf(gpuseg_net *net, size_t b, size_t c, size_t hw, const char *what,
                              cl_mem *m) {
    size_t bytes;
    if (!gpuseg__mul4_size(b, c, hw, sizeof(float), &bytes))
        return gpuseg__fail(net->ctx, GPUSEG_TOO_LARGE, "network %s buffer: size overflows", what);
    gpuseg_status st = gpuseg__buffer(net->ctx, CL_MEM_READ_WRITE, bytes, what, m);
    if (st == GPUSEG_OK)
        net->plan_bytes += bytes;
    return st;
}

gpuseg_status gpuseg__net_plan(gpuseg_net *net, unsigned batch, unsigned h, unsigned w) {
    if (batch == 0 || h == 0 || w == 0 || h % 8 || w % 8)
        return gpuseg__fail(net->ctx, GPUSEG_INVALID_ARGUMENT,
                            "network: tile %ux%u (batch %u) is not a positive multiple of 8", h, w,
                            batch);
    if (net->plan_batch >= batch && net->plan_h == h && net->plan_w == w)
        return GPUSEG_OK;
    gpuseg__net_unplan(net);
    const int *nb = net->info.nbase;
    size_t hw = (size_t)h * w, maxact = 0;
    for (int l = 0; l < 4; l++) {
        size_t hwl = hw >> (2 * l);
        /* largest channel count living at level l: encoder in/out, decoder in/out */
        unsigned c = (unsigned)nb[l + 1];
        if (l > 0 && (unsigned)nb[l] > c)
            c = (unsigned)nb[l];
        if (nbaseup(net, l + 1) > c)
            c = nbaseup(net, l + 1);
        if ((size_t)c * hwl > maxact)
            maxact = (size_t)c * hwl;
    }
    gpuseg_status st = GPUSEG_OK;
    for (int l = 0; l < 4 && st == GPUSEG_OK; l++)
        st = plan_buf(net, batch, (size_t)nb[l + 1], hw >> (2 * l), "encoder", &net->xd[l]);
    for (int k = 0; k < 3 && st == GPUSEG_OK; k++)
        st = plan_buf(net, batch, maxact, 1, "activation", &net->tmp[k]);
    for (int l = 0; l < 4 && st == GPUSEG_OK; l++)
        for (int k = 0; k < 3 && st == GPUSEG_OK; k++)
            st = plan_buf(net, batch, nbaseup(net, l), 1, "style feature", &net->feat[l][k]);
    if (st == GPUSEG_OK)
        st = plan_buf(net, batch, (size_t)nb[0], hw, "input", &net->in);
    if (st == GPUSEG_OK)
        st = plan_buf(net, batch, (size_t)net->info.nout, hw, "output", &net->out);
    if (st == GPUSEG_OK)
        st = plan_buf(net, batch, (size_t)nb[4], 1, "style", &net->style);
    if (st != GPUSEG_OK) {
        gpuseg__net_unplan(net);
        return st;
    }
    net->plan_batch = batch;
    net->plan_h = h;
    net->plan_w = w;
    return GPUSEG_OK;
}

/* --- forward ------------------------------------------------------------------------------- */

/* With net->profile: waits for the op just enqueued and books its time under name. */
static gpuseg_status prof_end(gpuseg_net *net, gpuseg_status st, const char *name, double t0,
                              double flops) {
    if (!net->profile || st != GPUSEG_OK)
        return st;
    clFinish(net->ctx->queue);
    double dt = gpuseg__now_s() - t0;
    unsigned i = 0;
    while (i < net->n_prof && strcmp(net->prof[i].name, name) != 0)
        i++;
    if (i == net->n_prof) {
        if (i == GPUSEG__NET_PROF_MAX)
            return st;
        snprintf(net->prof[i].name, sizeof net->prof[i].name, "%s", name);
        net->n_prof++;
    }
    net->prof[i].calls++;
    net->prof[i].seconds += dt;
    net->prof[i].flops += flops;
    return st;
}

static gpuseg_status conv(gpuseg_net *net, const gpuseg__layer *L, unsigned batch, unsigned h,
                          unsigned w, cl_mem in, cl_mem add_in, cl_mem pre_add, cl_mem residual,
                          cl_mem out) {
    gpuseg__conv_desc d = {.name = L->name,
                           .batch = batch,
                           .cin = L->cin,
                           .cout = L->cout,
                           .height = h,
                           .width = w,
                           .ksize = L->ksize,
                           .weight = L->weight,
                           .bias = L->bias,
                           .bn_scale = L->scale,
                           .bn_shift = L->shift,
                           .relu = L->relu,
                           .add_in = add_in,
                           .pre_add = pre_add,
                           .residual = residual};
    double t0 = net->profile ? gpuseg__now_s() : 0;
    return prof_end(net, gpuseg__conv2d(net->ops, &d, in, out), L->name, t0,
                    2.0 * batch * h * w * (double)L->cin * L->cout * L->ksize * L->ksize);
}

/* resdown: out = proj(x) + conv_1(conv_0(x)); out += conv_3(conv_2(out)). t: scratch. */
static gpuseg_status resdown(gpuseg_net *net, const gpuseg__block *B, unsigned n, unsigned h,
                             unsigned w, cl_mem x, cl_mem t, cl_mem out) {
    gpuseg_status st;
    if ((st = conv(net, &B->conv[0], n, h, w, x, NULL, NULL, NULL, t)) != GPUSEG_OK ||
        (st = conv(net, &B->proj, n, h, w, x, NULL, NULL, NULL, out)) != GPUSEG_OK ||
        (st = conv(net, &B->conv[1], n, h, w, t, NULL, NULL, out, out)) != GPUSEG_OK ||
        (st = conv(net, &B->conv[2], n, h, w, out, NULL, NULL, NULL, t)) != GPUSEG_OK)
        return st;
    return conv(net, &B->conv[3], n, h, w, t, NULL, NULL, out, out);
}

/* resup: out = proj(x) + conv_1(conv_0(x) + y + full_1(style));
 *        out += conv_3(conv_2(out + full_2(style)) + full_3(style)). */
static gpuseg_status resup(gpuseg_net *net, const gpuseg__block *B, cl_mem *feat, unsigned n,
                           unsigned h, unsigned w, cl_mem x, cl_mem y, cl_mem t, cl_mem out) {
    gpuseg_status st;
    if ((st = conv(net, &B->conv[0], n, h, w, x, NULL, NULL, NULL, t)) != GPUSEG_OK ||
        (st = conv(net, &B->proj, n, h, w, x, NULL, NULL, NULL, out)) != GPUSEG_OK ||
        (st = conv(net, &B->conv[1], n, h, w, t, y, feat[0], out, out)) != GPUSEG_OK ||
        (st = conv(net, &B->conv[2], n, h, w, out, NULL, feat[1], NULL, t)) != GPUSEG_OK)
        return st;
    return conv(net, &B->conv[3], n, h, w, t, NULL, feat[2], out, out);
}

gpuseg_status gpuseg__net_forward(gpuseg_net *net, unsigned n) {
    if (n == 0 || n > net->plan_batch)
        return gpuseg__fail(net->ctx, GPUSEG_INVALID_ARGUMENT,
                            "network: batch of %u tiles, the plan holds %u", n, net->plan_batch);
    const int *nb = net->info.nbase;
    unsigned h = net->plan_h, w = net->plan_w;
    gpuseg_status st = GPUSEG_OK;
    /* encoder: xd[0] at full size, xd[l] = resdown(maxpool(xd[l-1])) */
    for (int l = 0; l < 4 && st == GPUSEG_OK; l++) {
        unsigned hl = h >> l, wl = w >> l;
        cl_mem x = net->in;
        if (l > 0) {
            double t0 = net->profile ? gpuseg__now_s() : 0;
            st = gpuseg__maxpool2(net->ops, net->xd[l - 1], net->tmp[0], (size_t)n * nb[l], hl * 2,
                                  wl * 2);
            st = prof_end(net, st, "maxpool", t0, 0);
            x = net->tmp[0];
        }
        if (st == GPUSEG_OK)
            st = resdown(net, &net->down[l], n, hl, wl, x, net->tmp[1], net->xd[l]);
    }
    /* style of the deepest features; Linear(style) of every resup conv_1..3 */
    unsigned ns = (unsigned)nb[4];
    double t0 = net->profile ? gpuseg__now_s() : 0;
    if (st == GPUSEG_OK)
        st = gpuseg__style(net->ops, net->xd[3], net->style, n, ns, (size_t)(h >> 3) * (w >> 3));
    for (int l = 0; l < 4 && st == GPUSEG_OK; l++)
        for (int k = 0; k < 3 && st == GPUSEG_OK; k++)
            st = gpuseg__linear(net->ops, net->style, net->up[l].full_w[k], net->up[l].full_b[k],
                                net->feat[l][k], n, ns, nbaseup(net, l));
    if ((st = prof_end(net, st, "style+linear", t0, 0)) != GPUSEG_OK)
        return st;
    /* decoder: deepest block takes xd[3] as input and skip; then upsample x2 and add the skip of
     * the level inside conv_1 (tmp[0] input, tmp[1] scratch, tmp[2] block output). */
    st = resup(net, &net->up[3], net->feat[3], n, h >> 3, w >> 3, net->xd[3], net->xd[3],
               net->tmp[1], net->tmp[2]);
    for (int l = 2; l >= 0 && st == GPUSEG_OK; l--) {
        unsigned hl = h >> l, wl = w >> l;
        t0 = net->profile ? gpuseg__now_s() : 0;
        st = gpuseg__upsample2(net->ops, net->tmp[2], NULL, net->tmp[0],
                               (size_t)n * nbaseup(net, l + 1), hl / 2, wl / 2);
        st = prof_end(net, st, "upsample", t0, 0);
        if (st == GPUSEG_OK)
            st = resup(net, &net->up[l], net->feat[l], n, hl, wl, net->tmp[0], net->xd[l],
                       net->tmp[1], net->tmp[2]);
    }
    if (st == GPUSEG_OK)
        st = conv(net, &net->head, n, h, w, net->tmp[2], NULL, NULL, NULL, net->out);
    return st;
}
