/* model/statedict.c: from the bytes of a torch.save file to named float32 tensors: format
 * sniffing (ZIP vs legacy PyTorch vs foreign files), the archive's root folder and byteorder
 * record, data.pkl through the restricted pickle reader, and each tensor's storage (bounds,
 * strides, dtype conversion from float16/bfloat16/float64, byte swapping). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "model/pickle.h"
#include "model/statedict.h"
#include "model/zip.h"

static size_t dtype_size(gpuseg_tensor_dtype t) {
    switch (t) {
    case GPUSEG_TENSOR_F64:
    case GPUSEG_TENSOR_I64:
        return 8;
    case GPUSEG_TENSOR_F32:
    case GPUSEG_TENSOR_I32:
        return 4;
    case GPUSEG_TENSOR_F16:
    case GPUSEG_TENSOR_BF16:
    case GPUSEG_TENSOR_I16:
        return 2;
    default:
        return 1;
    }
}

static int dtype_is_float(gpuseg_tensor_dtype t) {
    return t == GPUSEG_TENSOR_F32 || t == GPUSEG_TENSOR_F64 || t == GPUSEG_TENSOR_F16 ||
           t == GPUSEG_TENSOR_BF16;
}

GPUSEG_API const char *gpuseg_tensor_dtype_name(gpuseg_tensor_dtype t) {
    static const char *names[] = {"float32", "float64", "float16", "bfloat16", "int64",
                                  "int32",   "int16",   "int8",    "uint8",    "bool"};
    return (unsigned)t < sizeof names / sizeof names[0] ? names[t] : "unknown";
}

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1F, m = h & 0x3FF, bits;
    if (e == 0x1F) {
        bits = sign | 0x7F800000u | m << 13; /* inf / nan */
    } else if (e) {
        bits = sign | (e + 112) << 23 | m << 13;
    } else if (m) { /* subnormal half: normalise */
        e = 113;
        while (!(m & 0x400)) {
            m <<= 1;
            e--;
        }
        bits = sign | e << 23 | (m & 0x3FF) << 13;
    } else {
        bits = sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Element idx of a storage as float32 (little- or big-endian bytes). */
static float load_elem(const unsigned char *base, size_t idx, gpuseg_tensor_dtype t, int be) {
    size_t es = dtype_size(t);
    const unsigned char *p = base + idx * es;
    uint64_t u = 0;
    for (size_t i = 0; i < es; i++)
        u |= (uint64_t)p[be ? es - 1 - i : i] << (8 * i);
    switch (t) {
    case GPUSEG_TENSOR_F32: {
        uint32_t b = (uint32_t)u;
        float f;
        memcpy(&f, &b, sizeof f);
        return f;
    }
    case GPUSEG_TENSOR_F64: {
        double d;
        memcpy(&d, &u, sizeof d);
        return (float)d;
    }
    case GPUSEG_TENSOR_F16:
        return half_to_float((uint16_t)u);
    default: { /* bfloat16: the top half of a float32 */
        uint32_t b = (uint32_t)u << 16;
        float f;
        memcpy(&f, &b, sizeof f);
        return f;
    }
    }
}

static const char *type_name(uint8_t t) {
    static const char *n[] = {"None", "bool", "int",    "str",     "tuple",
                              "list", "dict", "global", "storage", "tensor"};
    return t < sizeof n / sizeof n[0] ? n[t] : "?";
}

/* Explains a file that is not a ZIP archive. */
static gpuseg_status not_zip(const unsigned char *b, size_t n, const char *path) {
    if (n == 0)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: empty file, not a PyTorch model", path);
    if ((n >= 2 && b[0] == 0x80 && b[1] >= 2 && b[1] <= 5) ||
        (n >= 262 && memcmp(b + 257, "ustar", 5) == 0))
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: legacy PyTorch format (before 1.6): re-save with "
                            "torch.save(..., _use_new_zipfile_serialization=True)",
                            path);
    static const struct {
        const char *magic;
        size_t len;
        const char *what;
    } kinds[] = {{"\x89PNG", 4, "a PNG image"},         {"\xFF\xD8\xFF", 3, "a JPEG image"},
                 {"II*\0", 4, "a TIFF image"},          {"MM\0*", 4, "a TIFF image"},
                 {"\x93NUMPY", 6, "a NumPy .npy file"}, {"\x89HDF", 4, "an HDF5 file"},
                 {"\x1F\x8B", 2, "a gzip file"},        {"\x08", 1, "possibly an ONNX file"}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++)
        if (n >= kinds[i].len && memcmp(b, kinds[i].magic, kinds[i].len) == 0)
            return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                "%s: not a PyTorch model file (it looks like %s)", path,
                                kinds[i].what);
    char hex[32] = "";
    for (size_t i = 0, k = 0; i < 4 && i < n; i++)
        k += (size_t)snprintf(hex + k, sizeof hex - k, "%s%02x", i ? " " : "", b[i]);
    return gpuseg__fail(NULL, GPUSEG_FORMAT,
                        "%s: not a PyTorch model file (starts with bytes %s, not the ZIP "
                        "signature 'PK' that torch.save writes)",
                        path, hex);
}

/* Reads the record <root>/<name>; *idx = -1 when absent. */
static gpuseg_status record(const gpuseg__zip *z, const char *root, size_t rlen, const char *name,
                            size_t nlen, unsigned flags, const unsigned char **d, size_t *n,
                            long *idx) {
    char full[512];
    if (rlen + 1 + nlen >= sizeof full) {
        *idx = -1;
        return GPUSEG_OK;
    }
    memcpy(full, root, rlen);
    full[rlen] = '/';
    memcpy(full + rlen + 1, name, nlen);
    *idx = gpuseg__zip_find(z, full, rlen + 1 + nlen);
    if (*idx < 0)
        return GPUSEG_OK;
    return gpuseg__zip_data(z, (size_t)*idx, !(flags & GPUSEG__SD_NO_CRC), d, n);
}

/* State-dict keys are module paths ("output.2.weight"): refuse empty, huge, or ones with
 * control characters, so that every name can be printed in a one-line message. */
static int name_ok(const char *s, size_t n) {
    if (n == 0 || n > 1000)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

static int by_name_cmp(const void *a, const void *b) {
    const gpuseg__sd_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Validates one tensor's view of its storage and copies it out as contiguous float32. */
static gpuseg_status fill_tensor(const gpuseg__zip *z, const char *root, size_t rlen,
                                 unsigned flags, int be, const gpuseg__pickle *pk,
                                 const gpuseg__pk_tensor *pt, gpuseg__sd_tensor *t,
                                 const char *path) {
    const gpuseg__pk_obj *so = &pk->objs[pt->storage];
    gpuseg_tensor_dtype dt = (gpuseg_tensor_dtype)so->u.storage.dtype;
    size_t es = dtype_size(dt);
    char dname[300];
    int klen = (int)(so->u.storage.key_len > 200 ? 200 : so->u.storage.key_len);
    snprintf(dname, sizeof dname, "data/%.*s", klen, so->u.storage.key);
    const unsigned char *d;
    size_t n;
    long idx;
    gpuseg_status st = record(z, root, rlen, dname, strlen(dname), flags, &d, &n, &idx);
    if (st != GPUSEG_OK)
        return st;
    if (idx < 0 || so->u.storage.key_len > 200)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: tensor '%s': its storage record '%.*s/%s' is missing", path,
                            t->name, (int)rlen, root, dname);
    uint64_t snumel = (uint64_t)so->u.storage.numel;
    if (snumel > n / es || snumel * es != n)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: tensor '%s': storage '%s' has %zu bytes, expected %llu x %zu",
                            path, t->name, dname, n, (unsigned long long)snumel, es);
    /* numel and the largest element index the view touches, overflow-checked against the
     * storage length (itself bounded by the file size). */
    uint64_t numel = 1, last = (uint64_t)pt->offset;
    for (int i = 0; i < pt->ndim; i++) {
        if (pt->shape[i] < 0 || pt->stride[i] < 0)
            return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                "%s: tensor '%s' has a negative size or stride", path, t->name);
        uint64_t s = (uint64_t)pt->shape[i];
        if (s && numel > UINT64_MAX / s)
            return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: tensor '%s' is impossibly large", path,
                                t->name);
        numel *= s;
    }
    if (numel) {
        for (int i = 0; i < pt->ndim; i++) {
            uint64_t s = (uint64_t)pt->shape[i] - 1, str = (uint64_t)pt->stride[i];
            if (str && s > (UINT64_MAX - last) / str)
                return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                    "%s: tensor '%s' reaches outside its storage", path, t->name);
            last += s * str;
        }
        if (last >= snumel)
            return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                "%s: tensor '%s' reaches element %llu of a storage of %llu", path,
                                t->name, (unsigned long long)last, (unsigned long long)snumel);
    }
    t->dtype = dt;
    t->ndim = pt->ndim;
    memcpy(t->shape, pt->shape, sizeof t->shape);
    t->numel = (size_t)numel;
    if (!t->data || !numel)
        return GPUSEG_OK; /* integer tensor: validated, values not kept */
    int contiguous = 1;
    int64_t expect = 1;
    for (int i = pt->ndim - 1; i >= 0; i--) {
        if (pt->shape[i] != 1 && pt->stride[i] != expect)
            contiguous = 0;
        expect *= pt->shape[i];
    }
    if (contiguous && dt == GPUSEG_TENSOR_F32 && !be) {
        memcpy(t->data, d + (size_t)pt->offset * 4, (size_t)numel * 4);
        return GPUSEG_OK;
    }
    /* General case: walk the index space with an odometer (no recursion). */
    int64_t ix[GPUSEG_TENSOR_MAX_DIMS] = {0};
    size_t src = (size_t)pt->offset;
    for (size_t k = 0; k < (size_t)numel; k++) {
        t->data[k] = load_elem(d, src, dt, be);
        for (int i = pt->ndim - 1; i >= 0; i--) {
            if (++ix[i] < pt->shape[i]) {
                src += (size_t)pt->stride[i];
                break;
            }
            src -= (size_t)(pt->stride[i] * (pt->shape[i] - 1));
            ix[i] = 0;
        }
    }
    return GPUSEG_OK;
}

gpuseg_status gpuseg__sd_load_mem(const unsigned char *buf, size_t size, const char *path,
                                  unsigned flags, gpuseg__state_dict *sd) {
    memset(sd, 0, sizeof *sd);
    gpuseg__zip z;
    gpuseg__pickle pk;
    memset(&z, 0, sizeof z);
    memset(&pk, 0, sizeof pk);
    gpuseg_status st;
    if (size < 4 || buf[0] != 'P' || buf[1] != 'K' ||
        !((buf[2] == 3 && buf[3] == 4) || (buf[2] == 5 && buf[3] == 6)))
        return not_zip(buf, size, path);
    if ((st = gpuseg__zip_open(&z, buf, size, path)) != GPUSEG_OK)
        return st;
    /* torch names records "<root>/<name>", root being the folder of the first entry. */
    const char *slash = memchr(z.first_name, '/', z.first_len);
    if (!slash) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                          "%s: ZIP archive is not a torch.save file (its first entry is not "
                          "inside a folder)",
                          path);
        goto fail;
    }
    const char *root = z.first_name;
    size_t rlen = (size_t)(slash - root);
    const unsigned char *d;
    size_t n;
    long idx;
    if ((st = record(&z, root, rlen, "byteorder", 9, flags, &d, &n, &idx)) != GPUSEG_OK)
        goto fail;
    if (idx >= 0) {
        if (n == 3 && memcmp(d, "big", 3) == 0)
            sd->big_endian = 1;
        else if (!(n == 6 && memcmp(d, "little", 6) == 0)) {
            st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: unknown byteorder record '%.*s'", path,
                              (int)(n > 20 ? 20 : n), (const char *)d);
            goto fail;
        }
    }
    if ((st = record(&z, root, rlen, "data.pkl", 8, flags, &d, &n, &idx)) != GPUSEG_OK)
        goto fail;
    if (idx < 0) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                          "%s: ZIP archive has no '%.*s/data.pkl': not a PyTorch model file", path,
                          (int)(rlen > 200 ? 200 : rlen), root);
        goto fail;
    }
    if ((st = gpuseg__pickle_parse(&pk, d, n, path)) != GPUSEG_OK)
        goto fail;
    const gpuseg__pk_obj *rootobj = &pk.objs[pk.root];
    if (rootobj->type != GPUSEG__PK_DICT) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: data.pkl holds a %s, not a state dict", path,
                          type_name(rootobj->type));
        goto fail;
    }
    size_t count = rootobj->u.seq.n / 2, name_bytes = 0, floats = 0;
    if (count == 0) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: the state dict is empty", path);
        goto fail;
    }
    if (count > GPUSEG__SD_MAX_TENSORS) {
        st = gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "%s: state dict has %zu entries (limit %u)", path,
                          count, GPUSEG__SD_MAX_TENSORS);
        goto fail;
    }
    /* First pass: types, names and sizes, so that everything is allocated once. */
    for (size_t i = 0; i < count; i++) {
        const gpuseg__pk_obj *k = &pk.objs[rootobj->u.seq.items[2 * i]];
        const gpuseg__pk_obj *v = &pk.objs[rootobj->u.seq.items[2 * i + 1]];
        if (k->type != GPUSEG__PK_STR || !name_ok(k->u.str.s, k->u.str.n)) {
            st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: state dict entry %zu has a bad name", path,
                              i);
            goto fail;
        }
        if (v->type != GPUSEG__PK_TENSOR) {
            st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                              "%s: state dict entry '%.*s' is a %s, not a tensor (a training "
                              "checkpoint rather than a model state dict?)",
                              path, (int)k->u.str.n, k->u.str.s, type_name(v->type));
            goto fail;
        }
        const gpuseg__pk_tensor *pt = &pk.tensors[v->u.tensor];
        name_bytes += k->u.str.n + 1;
        if (dtype_is_float((gpuseg_tensor_dtype)pk.objs[pt->storage].u.storage.dtype)) {
            /* The element count is bounded by the storage (checked in fill_tensor), so any
             * product beyond the file size is refused here before allocating. */
            size_t ne = 1;
            for (int j = 0; j < pt->ndim; j++) {
                if (pt->shape[j] < 0 || !gpuseg__mul_size(ne, (size_t)pt->shape[j], &ne) ||
                    ne > size) {
                    st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                                      "%s: tensor '%.*s' has a shape larger than the file", path,
                                      (int)k->u.str.n, k->u.str.s);
                    goto fail;
                }
            }
            floats += (ne + 15) & ~(size_t)15; /* 64-byte aligned starts */
            if (floats > size) {
                st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                                  "%s: tensors claim more values than the file holds", path);
                goto fail;
            }
        }
    }
    sd->t = calloc(count, sizeof *sd->t);
    sd->by_name = calloc(count, sizeof *sd->by_name);
    sd->names = malloc(name_bytes);
    sd->values = floats ? aligned_alloc(64, floats * sizeof(float)) : NULL;
    if (!sd->t || !sd->by_name || !sd->names || (floats && !sd->values)) {
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory for %zu tensors", path,
                          count);
        goto fail;
    }
    sd->n = count;
    char *np = sd->names;
    float *vp = sd->values;
    for (size_t i = 0; i < count; i++) {
        const gpuseg__pk_obj *k = &pk.objs[rootobj->u.seq.items[2 * i]];
        const gpuseg__pk_obj *v = &pk.objs[rootobj->u.seq.items[2 * i + 1]];
        const gpuseg__pk_tensor *pt = &pk.tensors[v->u.tensor];
        gpuseg__sd_tensor *t = &sd->t[i];
        memcpy(np, k->u.str.s, k->u.str.n);
        np[k->u.str.n] = 0;
        t->name = np;
        np += k->u.str.n + 1;
        if (dtype_is_float((gpuseg_tensor_dtype)pk.objs[pt->storage].u.storage.dtype)) {
            size_t ne = 1;
            for (int j = 0; j < pt->ndim; j++)
                ne *= (size_t)pt->shape[j];
            t->data = vp;
            vp += (ne + 15) & ~(size_t)15;
        }
        st = fill_tensor(&z, root, rlen, flags, sd->big_endian, &pk, pt, t, path);
        if (st != GPUSEG_OK)
            goto fail;
        sd->by_name[i] = t;
    }
    qsort(sd->by_name, count, sizeof *sd->by_name, by_name_cmp);
    for (size_t i = 1; i < count; i++)
        if (strcmp(sd->by_name[i - 1]->name, sd->by_name[i]->name) == 0) {
            st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: state dict has two tensors named '%s'",
                              path, sd->by_name[i]->name);
            goto fail;
        }
    gpuseg__pickle_free(&pk);
    gpuseg__zip_close(&z);
    return GPUSEG_OK;
fail:
    gpuseg__pickle_free(&pk);
    gpuseg__zip_close(&z);
    gpuseg__sd_free(sd);
    return st;
}

gpuseg_status gpuseg__sd_load_file(const char *path, unsigned flags, gpuseg__state_dict *sd) {
    memset(sd, 0, sizeof *sd);
    void *buf = NULL;
    size_t n = 0;
    gpuseg_status st = gpuseg__read_file(NULL, path, GPUSEG_MODEL_MAX_FILE_BYTES, &buf, &n);
    if (st != GPUSEG_OK)
        return st;
    st = gpuseg__sd_load_mem(buf, n, path, flags, sd);
    free(buf);
    return st;
}

void gpuseg__sd_free(gpuseg__state_dict *sd) {
    free(sd->t);
    free(sd->by_name);
    free(sd->names);
    free(sd->values);
    memset(sd, 0, sizeof *sd);
}

long gpuseg__sd_find(const gpuseg__state_dict *sd, const char *name) {
    size_t lo = 0, hi = sd->n;
    if (!sd->by_name)
        return -1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, sd->by_name[mid]->name);
        if (c == 0)
            return (long)(sd->by_name[mid] - sd->t);
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}
