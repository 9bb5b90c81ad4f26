/* model/model.c: the public model API: a state dict read by statedict.c, checked against the
 * CPnet topology of Cellpose 3 (4 levels; channel widths nbase and nout inferred from the
 * shapes), with Cellpose 4 (SAM) files recognised and refused, and diam_mean / diam_labels read
 * the way Cellpose's strict=False load leaves them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/internal.h"
#include "gpuseg/model.h"
#include "model/statedict.h"

struct gpuseg_model {
    char *path;
    gpuseg__state_dict sd;
    gpuseg_model_info info;
};

/* Cellpose's CellposeModel default when a file carries no diam_mean (pre-2.0 files). */
#define DEFAULT_DIAM_MEAN 30.0f

/* What one expected tensor must look like. */
typedef enum { KIND_FLOAT, KIND_LEARNED, KIND_COUNTER } kind;

typedef struct {
    const gpuseg__state_dict *sd;
    const char *path;
    size_t matched;      /* expected tensors found in the file */
    unsigned char *seen; /* per file tensor: matched an expected name */
    size_t n_parameters; /* learnable elements */
    gpuseg_status st;
} checker;

static void shape_str(char *out, size_t cap, int ndim, const int64_t *s) {
    size_t k = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (k < cap)
        snprintf(out + k, cap - k, "]");
}

/* Checks one expected tensor (name built from fmt); records the first failure. */
static void expect(checker *c, kind kd, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                   const char *fmt, ...) GPUSEG__PRINTF(8, 9);
static void expect(checker *c, kind kd, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                   const char *fmt, ...) {
    if (c->st != GPUSEG_OK)
        return;
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int64_t want[4] = {d0, d1, d2, d3};
    char ws[96], hs[160];
    shape_str(ws, sizeof ws, ndim, want);
    long i = gpuseg__sd_find(c->sd, name);
    if (i < 0) {
        /* Cellpose loads with strict=False: BN counters (absent before PyTorch 0.4.1) and the
         * diameters (absent before Cellpose 2.0) may be missing. */
        if (kd == KIND_COUNTER || !strcmp(name, "diam_mean") || !strcmp(name, "diam_labels"))
            return;
        c->st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: missing tensor '%s' (expected shape %s)",
                             c->path, name, ws);
        return;
    }
    const gpuseg__sd_tensor *t = &c->sd->t[i];
    c->matched++;
    c->seen[i] = 1;
    int ok = t->ndim == ndim;
    for (int k = 0; ok && k < ndim; k++)
        ok = t->shape[k] == want[k];
    if (!ok) {
        shape_str(hs, sizeof hs, t->ndim, t->shape);
        c->st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: tensor '%s' has shape %s, expected %s",
                             c->path, name, hs, ws);
        return;
    }
    if (kd != KIND_COUNTER && !t->data) {
        c->st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                             "%s: tensor '%s' has dtype %s, expected a floating-point type",
                             c->path, name, gpuseg_tensor_dtype_name(t->dtype));
        return;
    }
    if (kd == KIND_LEARNED)
        c->n_parameters += t->numel;
}

/* BN(ch) at prefix: weight, bias, running_mean, running_var, num_batches_tracked. */
static void expect_bn(checker *c, const char *prefix, int64_t ch) {
    expect(c, KIND_LEARNED, 1, ch, 0, 0, 0, "%s.weight", prefix);
    expect(c, KIND_LEARNED, 1, ch, 0, 0, 0, "%s.bias", prefix);
    expect(c, KIND_FLOAT, 1, ch, 0, 0, 0, "%s.running_mean", prefix);
    expect(c, KIND_FLOAT, 1, ch, 0, 0, 0, "%s.running_var", prefix);
    expect(c, KIND_COUNTER, 0, 0, 0, 0, 0, "%s.num_batches_tracked", prefix);
}

/* batchconv / batchconv0 at prefix: BN at <prefix>.0, conv at <prefix>.<conv_index>. */
static void expect_batchconv(checker *c, const char *prefix, int conv_index, int64_t cin,
                             int64_t cout, int64_t k) {
    char p[160];
    snprintf(p, sizeof p, "%s.0", prefix);
    expect_bn(c, p, cin);
    expect(c, KIND_LEARNED, 4, cout, cin, k, k, "%s.%d.weight", prefix, conv_index);
    expect(c, KIND_LEARNED, 1, cout, 0, 0, 0, "%s.%d.bias", prefix, conv_index);
}

/* Every tensor of a CPnet with widths nb and nout outputs, in Cellpose's save order. */
static void expect_cpnet(checker *c, const int nb[5], int nout) {
    char p[160];
    expect(c, KIND_FLOAT, 1, 1, 0, 0, 0, "diam_mean");
    expect(c, KIND_FLOAT, 1, 1, 0, 0, 0, "diam_labels");
    for (int k = 0; k < 4; k++) {
        int cin = nb[k], cout = nb[k + 1];
        for (int t = 0; t < 4; t++) {
            snprintf(p, sizeof p, "downsample.down.res_down_%d.conv.conv_%d", k, t);
            expect_batchconv(c, p, 2, t ? cout : cin, cout, 3);
        }
        snprintf(p, sizeof p, "downsample.down.res_down_%d.proj", k);
        expect_batchconv(c, p, 1, cin, cout, 1);
    }
    /* Decoder widths nbaseup = [nb1, nb2, nb3, nb4, nb4]; res_up_k maps up[k+1] -> up[k]; every
     * style layer reads the nb4-long style vector. */
    int up[5] = {nb[1], nb[2], nb[3], nb[4], nb[4]};
    for (int k = 0; k < 4; k++) {
        int cin = up[k + 1], cout = up[k];
        snprintf(p, sizeof p, "upsample.up.res_up_%d.conv.conv_0", k);
        expect_batchconv(c, p, 2, cin, cout, 3);
        for (int t = 1; t < 4; t++) {
            snprintf(p, sizeof p, "upsample.up.res_up_%d.conv.conv_%d.conv", k, t);
            expect_batchconv(c, p, 2, cout, cout, 3);
            expect(c, KIND_LEARNED, 2, cout, nb[4], 0, 0,
                   "upsample.up.res_up_%d.conv.conv_%d.full.weight", k, t);
            expect(c, KIND_LEARNED, 1, cout, 0, 0, 0,
                   "upsample.up.res_up_%d.conv.conv_%d.full.bias", k, t);
        }
        snprintf(p, sizeof p, "upsample.up.res_up_%d.proj", k);
        expect_batchconv(c, p, 1, cin, cout, 1);
    }
    expect_batchconv(c, "output", 2, up[0], nout, 1);
}

/* Reads a width from dimension dim of a 4-D tensor; fails naming it when absent or odd. */
static gpuseg_status width_of(const gpuseg__state_dict *sd, const char *path, const char *name,
                              int dim, int *out) {
    long i = gpuseg__sd_find(sd, name);
    if (i < 0)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: not a Cellpose CPnet model: missing tensor '%s'", path, name);
    const gpuseg__sd_tensor *t = &sd->t[i];
    if (t->ndim != 4 || t->shape[dim] < 1 || t->shape[dim] > 65536) {
        char hs[160];
        shape_str(hs, sizeof hs, t->ndim, t->shape);
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: tensor '%s' has shape %s; a CPnet convolution weight is "
                            "[out, in, k, k]",
                            path, name, hs);
    }
    *out = (int)t->shape[dim];
    return GPUSEG_OK;
}

static gpuseg_status check_cpnet(gpuseg_model *m) {
    const gpuseg__state_dict *sd = &m->sd;
    const char *path = m->path;
    for (size_t i = 0; i < sd->n; i++) {
        const char *nm = sd->t[i].name;
        if (!strcmp(nm, "W2") || !strncmp(nm, "encoder.patch_embed", 19) ||
            !strncmp(nm, "encoder.blocks.", 15))
            return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                "%s: Cellpose 4 (SAM) model: not supported, gpuseg runs Cellpose "
                                "3 (CPnet) models",
                                path);
    }
    gpuseg_model_info *in = &m->info;
    gpuseg_status st =
        width_of(sd, path, "downsample.down.res_down_0.conv.conv_0.2.weight", 1, &in->nbase[0]);
    for (int k = 0; k < 4 && st == GPUSEG_OK; k++) {
        char nm[96];
        snprintf(nm, sizeof nm, "downsample.down.res_down_%d.conv.conv_0.2.weight", k);
        st = width_of(sd, path, nm, 0, &in->nbase[k + 1]);
    }
    if (st == GPUSEG_OK)
        st = width_of(sd, path, "output.2.weight", 0, &in->nout);
    if (st != GPUSEG_OK)
        return st;
    checker c = {.sd = sd, .path = path, .st = GPUSEG_OK};
    c.seen = calloc(sd->n, 1);
    if (!c.seen)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    expect_cpnet(&c, in->nbase, in->nout);
    if (c.st == GPUSEG_OK && c.matched != sd->n) {
        /* Something the topology does not have (another architecture, a fifth level, ...). */
        for (size_t i = 0; i < sd->n; i++)
            if (!c.seen[i]) {
                c.st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                                    "%s: unexpected tensor '%s': not part of a CPnet with nbase "
                                    "[%d, %d, %d, %d, %d]",
                                    path, sd->t[i].name, in->nbase[0], in->nbase[1], in->nbase[2],
                                    in->nbase[3], in->nbase[4]);
                break;
            }
    }
    free(c.seen);
    if (c.st != GPUSEG_OK)
        return c.st;
    in->style_channels = in->nbase[4];
    in->n_tensors = sd->n;
    in->n_parameters = c.n_parameters;
    long i = gpuseg__sd_find(sd, "output.2.weight");
    in->weight_dtype = sd->t[i].dtype;
    long dm = gpuseg__sd_find(sd, "diam_mean"), dl = gpuseg__sd_find(sd, "diam_labels");
    in->has_diam_mean = dm >= 0;
    in->diam_mean = dm >= 0 ? sd->t[dm].data[0] : DEFAULT_DIAM_MEAN;
    in->has_diam_labels = dl >= 0;
    in->diam_labels = dl >= 0 ? sd->t[dl].data[0] : in->diam_mean;
    return GPUSEG_OK;
}

static gpuseg_status load(const char *path, const unsigned char *buf, size_t n, unsigned flags,
                          gpuseg_model **out) {
    *out = NULL;
    gpuseg_model *m = calloc(1, sizeof *m);
    if (!m)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    m->path = malloc(strlen(path) + 1);
    if (!m->path) {
        free(m);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    strcpy(m->path, path);
    gpuseg_status st = buf ? gpuseg__sd_load_mem(buf, n, path, flags, &m->sd)
                           : gpuseg__sd_load_file(path, flags, &m->sd);
    if (st == GPUSEG_OK)
        st = check_cpnet(m);
    if (st != GPUSEG_OK) {
        gpuseg_model_free(m);
        return st;
    }
    *out = m;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__model_load_mem(const unsigned char *buf, size_t n, const char *path,
                                     unsigned flags, gpuseg_model **out) {
    gpuseg__clear_error(NULL);
    if (!buf || !path || !out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg__model_load_mem: NULL argument");
    return load(path, buf, n, flags, out);
}

/* Refuses a file over the max_model_bytes limit from its size alone, before reading it. A file
 * that cannot be stat'ed is left to the reader, whose message says why. */
static gpuseg_status check_model_size(const char *path, const gpuseg_limits *limits) {
    gpuseg_limits lim;
    gpuseg_status st = gpuseg_limits_resolve(limits, &lim);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(NULL, st, "%s", path);
    struct stat sb;
    if (stat(path, &sb) != 0 || !S_ISREG(sb.st_mode) || (uint64_t)sb.st_size <= lim.max_model_bytes)
        return GPUSEG_OK;
    char a[32], b[32], hint[96];
    return gpuseg__fail(
        NULL, GPUSEG_TOO_LARGE,
        "%s: model file is %sB (%lld bytes), over the limit of %sB (%llu bytes) "
        "(%s)",
        path, gpuseg__fmt_count((uint64_t)sb.st_size, a, sizeof a), (long long)sb.st_size,
        gpuseg__fmt_count(lim.max_model_bytes, b, sizeof b),
        (unsigned long long)lim.max_model_bytes,
        gpuseg__limit_hint(GPUSEG__LIMIT_MODEL_BYTES, lim.max_model_bytes, hint, sizeof hint));
}

GPUSEG_API gpuseg_status gpuseg_model_load(const char *path, gpuseg_model **out) {
    return gpuseg_model_load_ex(path, NULL, out);
}

GPUSEG_API gpuseg_status gpuseg_model_load_ex(const char *path, const gpuseg_limits *limits,
                                              gpuseg_model **out) {
    gpuseg__clear_error(NULL);
    if (!path || !out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_model_load: NULL argument");
    *out = NULL;
    gpuseg_status st = check_model_size(path, limits);
    if (st != GPUSEG_OK)
        return st;
    return load(path, NULL, 0, 0, out);
}

GPUSEG_API void gpuseg_model_free(gpuseg_model *m) {
    if (!m)
        return;
    gpuseg__sd_free(&m->sd);
    free(m->path);
    free(m);
}

GPUSEG_API void gpuseg_model_get_info(const gpuseg_model *m, gpuseg_model_info *info) {
    *info = m->info;
}

static void fill_info(const gpuseg__sd_tensor *t, gpuseg_tensor_info *out) {
    memset(out, 0, sizeof *out);
    out->name = t->name;
    out->file_dtype = t->dtype;
    out->ndim = t->ndim;
    memcpy(out->shape, t->shape, sizeof out->shape);
    out->numel = t->numel;
    out->data = t->data;
}

GPUSEG_API gpuseg_status gpuseg_model_tensor(const gpuseg_model *m, const char *name,
                                             gpuseg_tensor_info *out) {
    gpuseg__clear_error(NULL);
    if (!m || !name || !out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_model_tensor: NULL argument");
    long i = gpuseg__sd_find(&m->sd, name);
    if (i < 0)
        return gpuseg__fail(NULL, GPUSEG_NOT_FOUND, "%s: no tensor named '%s'", m->path, name);
    fill_info(&m->sd.t[i], out);
    return GPUSEG_OK;
}

GPUSEG_API gpuseg_status gpuseg_model_tensor_at(const gpuseg_model *m, size_t i,
                                                gpuseg_tensor_info *out) {
    gpuseg__clear_error(NULL);
    if (!m || !out || i >= m->sd.n)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_model_tensor_at: index %zu out of range", i);
    fill_info(&m->sd.t[i], out);
    return GPUSEG_OK;
}

GPUSEG_API const char *gpuseg_model_path(const gpuseg_model *m) {
    return m ? m->path : NULL;
}
