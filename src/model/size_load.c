/* model/size_load.c: reads Cellpose's size model, the file SizeModel / train_size write with
 * np.save(path, {"A": ..., "smean": ..., "diam_mean": ..., "ymean": ...}): a .npy of a 0-d
 * object array whose payload is a pickle of that array (numpy mode of the restricted pickle
 * reader, model/pickle.c). Nothing in the file is executed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "model/pickle.h"
#include "model/size_internal.h"

/* Far above a real size model (256 float64 weights + 256 float32 means: ~5 KB). */
#define SIZE_MODEL_MAX_BYTES ((size_t)16 << 20)
/* Longest style accepted (the built-in models have 256). */
#define SIZE_MODEL_MAX_N (1u << 20)

/* The struct handed out, with its arrays after it (gpuseg_size_model_free frees it whole). */
typedef struct {
    gpuseg_size_model pub; /* first: the caller's pointer is this struct's */
    double values[];       /* A[n], then smean[n] */
} size_model_block;

/* Skips spaces in the header text. */
static const char *skip_sp(const char *s, const char *end) {
    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    return s;
}

/* The value of 'key' in the header dict text h[0..n): a pointer to it, or NULL. */
static const char *header_value(const char *h, size_t n, const char *key) {
    size_t k = strlen(key);
    for (size_t i = 0; i + k + 2 <= n; i++)
        if ((h[i] == '\'' || h[i] == '"') && memcmp(h + i + 1, key, k) == 0 &&
            h[i + 1 + k] == h[i]) {
            const char *s = skip_sp(h + i + k + 2, h + n);
            if (s < h + n && *s == ':')
                return skip_sp(s + 1, h + n);
        }
    return NULL;
}

static int starts(const char *s, const char *end, const char *lit) {
    size_t k = strlen(lit);
    return (size_t)(end - s) >= k && memcmp(s, lit, k) == 0;
}

/* Checks the .npy magic and header: an object array ('|O'), C order, shape (). Sets *payload
 * to the offset of the pickle. */
static gpuseg_status check_header(const unsigned char *b, size_t n, const char *path,
                                  size_t *payload) {
    static const unsigned char magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
    if (n < 10 || memcmp(b, magic, 6) != 0) {
        if (n >= 4 && b[0] == 'P' && b[1] == 'K' && b[2] == 3 && b[3] == 4)
            return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                "%s: a ZIP archive (a model file?), not a Cellpose size model "
                                "(.npy)",
                                path);
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: not a .npy file (no \\x93NUMPY magic), so not a Cellpose size "
                            "model",
                            path);
    }
    size_t hl, h0;
    if (b[6] == 1) {
        hl = (size_t)b[8] | (size_t)b[9] << 8;
        h0 = 10;
    } else if (b[6] == 2 || b[6] == 3) {
        if (n < 12)
            return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: .npy header is truncated", path);
        hl = (size_t)b[8] | (size_t)b[9] << 8 | (size_t)b[10] << 16 | (size_t)b[11] << 24;
        h0 = 12;
    } else {
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED, "%s: .npy format version %u.%u", path, b[6],
                            b[7]);
    }
    if (hl > n - h0)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: .npy header is truncated", path);
    const char *h = (const char *)b + h0, *end = h + hl;
    const char *descr = header_value(h, hl, "descr"), *fo = header_value(h, hl, "fortran_order"),
               *shape = header_value(h, hl, "shape");
    if (!descr || !fo || !shape)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: .npy header lacks descr, fortran_order or shape", path);
    if (!starts(descr, end, "'|O'") && !starts(descr, end, "\"|O\""))
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: a numeric .npy array, not a Cellpose size model (an object "
                            ".npy holding a dict with A, smean, ymean, diam_mean)",
                            path);
    if (!starts(fo, end, "False") || !starts(shape, end, "()"))
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: an object .npy that is not a single object (shape ()), so not "
                            "a Cellpose size model",
                            path);
    *payload = h0 + hl;
    return GPUSEG_OK;
}

/* The value of key in dict d, or NO object (UINT32_MAX). */
static uint32_t dict_get(const gpuseg__pickle *p, uint32_t d, const char *key) {
    const gpuseg__pk_obj *o = &p->objs[d];
    size_t k = strlen(key);
    uint32_t found = UINT32_MAX;
    for (uint32_t i = 0; i + 1 < o->u.seq.n; i += 2) {
        const gpuseg__pk_obj *ko = &p->objs[o->u.seq.items[i]];
        if (ko->type == GPUSEG__PK_STR && ko->u.str.n == k && memcmp(ko->u.str.s, key, k) == 0)
            found = o->u.seq.items[i + 1]; /* the last one wins, as in a Python dict */
    }
    return found;
}

/* A number: a Python float or int, a numpy scalar, or a 0-d / one-element float array. */
static int number_value(const gpuseg__pickle *p, uint32_t idx, double *v) {
    const gpuseg__pk_obj *o = &p->objs[idx];
    if (o->type == GPUSEG__PK_FLOAT) {
        *v = o->u.f;
        return 1;
    }
    if (o->type == GPUSEG__PK_INT) {
        *v = (double)o->u.i;
        return 1;
    }
    return 0;
}

/* A float32/float64 vector (1-D, or 2-D with one row): its length, or 0 when idx is not one
 * (or is longer than SIZE_MODEL_MAX_N). */
static uint32_t vector_len(const gpuseg__pickle *p, uint32_t idx) {
    const gpuseg__pk_obj *o = &p->objs[idx];
    if (o->type != GPUSEG__PK_ARRAY || !o->u.array.built)
        return 0;
    const gpuseg__pk_obj *dt = &p->objs[o->u.array.dtype], *sh = &p->objs[o->u.array.shape];
    if (dt->u.dtype.kind != 'f' || (dt->u.dtype.size != 4 && dt->u.dtype.size != 8) ||
        sh->u.seq.n == 0 || sh->u.seq.n > 2)
        return 0;
    if (sh->u.seq.n == 2 && p->objs[sh->u.seq.items[0]].u.i != 1)
        return 0;
    int64_t len = p->objs[sh->u.seq.items[sh->u.seq.n - 1]].u.i;
    return len > 0 && len <= (int64_t)SIZE_MODEL_MAX_N ? (uint32_t)len : 0;
}

/* Copies the vector at idx (vector_len(p, idx) values) into out as double. */
static void vector_copy(const gpuseg__pickle *p, uint32_t idx, double *out) {
    const gpuseg__pk_obj *o = &p->objs[idx];
    const gpuseg__pk_obj *dt = &p->objs[o->u.array.dtype], *data = &p->objs[o->u.array.data];
    const unsigned char *b = (const unsigned char *)data->u.str.s;
    uint32_t k = dt->u.dtype.size, count = vector_len(p, idx);
    int big = dt->u.dtype.order == '>';
    for (uint32_t i = 0; i < count; i++) {
        uint64_t u = 0;
        for (uint32_t j = 0; j < k; j++)
            u |= (uint64_t)b[(size_t)i * k + (big ? k - 1 - j : j)] << (8 * j);
        if (k == 4) {
            uint32_t u32 = (uint32_t)u;
            float f;
            memcpy(&f, &u32, sizeof f);
            out[i] = (double)f;
        } else {
            memcpy(&out[i], &u, sizeof out[i]);
        }
    }
}

/* The dict in the 0-d object array p->root -> a new size model. */
static gpuseg_status read_dict(const gpuseg__pickle *p, const char *path, gpuseg_size_model **out) {
    const gpuseg__pk_obj *root = &p->objs[p->root];
    uint32_t d = UINT32_MAX;
    if (root->type == GPUSEG__PK_ARRAY && root->u.array.built &&
        p->objs[root->u.array.dtype].u.dtype.kind == 'O' &&
        p->objs[root->u.array.data].u.seq.n == 1)
        d = p->objs[root->u.array.data].u.seq.items[0];
    if (d == UINT32_MAX || p->objs[d].type != GPUSEG__PK_DICT)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: the .npy holds something other than a dict, so not a Cellpose "
                            "size model",
                            path);
    static const char *const keys[4] = {"A", "smean", "diam_mean", "ymean"};
    uint32_t v[4];
    for (int k = 0; k < 4; k++)
        if ((v[k] = dict_get(p, d, keys[k])) == UINT32_MAX)
            return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                "%s: size model dict lacks '%s' (Cellpose's has A, smean, "
                                "diam_mean, ymean)",
                                path, keys[k]);
    uint32_t n = vector_len(p, v[0]), ns = vector_len(p, v[1]);
    if (!n || !ns)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: size model '%s' is not a float vector of 1..%u values", path,
                            n ? "smean" : "A", SIZE_MODEL_MAX_N);
    if (n != ns)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: size model 'A' has %u values but 'smean' %u",
                            path, n, ns);
    double diam_mean = 0, ymean = 0;
    if (!number_value(p, v[2], &diam_mean) || !number_value(p, v[3], &ymean))
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: size model '%s' is not a number", path,
                            number_value(p, v[2], &diam_mean) ? "ymean" : "diam_mean");
    if (!(diam_mean > 0) || !isfinite(diam_mean) || !isfinite(ymean))
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: size model diam_mean %g / ymean %g: not a positive diameter "
                            "and a finite offset",
                            path, diam_mean, ymean);
    size_model_block *b = malloc(sizeof *b + 2 * (size_t)n * sizeof(double));
    if (!b)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: size model: out of memory", path);
    vector_copy(p, v[0], b->values);
    vector_copy(p, v[1], b->values + n);
    for (size_t i = 0; i < 2 * (size_t)n; i++)
        if (!isfinite(b->values[i])) {
            free(b);
            return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                "%s: size model '%s' holds a value that is not finite", path,
                                i < n ? "A" : "smean");
        }
    b->pub.n = n;
    b->pub.A = b->values;
    b->pub.smean = b->values + n;
    b->pub.diam_mean = diam_mean;
    b->pub.ymean = ymean;
    b->pub.smean_f32 = p->objs[p->objs[v[1]].u.array.dtype].u.dtype.size == 4;
    *out = &b->pub;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__size_model_load_mem(const unsigned char *buf, size_t n, const char *path,
                                          gpuseg_size_model **out) {
    *out = NULL;
    size_t off = 0;
    gpuseg_status st = check_header(buf, n, path, &off);
    if (st != GPUSEG_OK)
        return st;
    gpuseg__pickle p;
    st = gpuseg__pickle_parse_mode(&p, buf + off, n - off, path, "size model pickle",
                                   GPUSEG__PICKLE_NUMPY);
    if (st == GPUSEG_OK)
        st = read_dict(&p, path, out);
    gpuseg__pickle_free(&p);
    return st;
}

gpuseg_status gpuseg_size_model_load(const char *path, gpuseg_size_model **out) {
    gpuseg__clear_error(NULL);
    if (!path || !out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_size_model_load: NULL argument");
    *out = NULL;
    void *data = NULL;
    size_t n = 0;
    gpuseg_status st = gpuseg__read_file(NULL, path, SIZE_MODEL_MAX_BYTES, &data, &n);
    if (st != GPUSEG_OK)
        return st;
    st = gpuseg__size_model_load_mem(data, n, path, out);
    free(data);
    return st;
}

void gpuseg_size_model_free(gpuseg_size_model *sm) {
    free(sm); /* the block starts with it (size_model_block) */
}
