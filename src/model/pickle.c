/* model/pickle.c: the restricted pickle reader behind model loading. It interprets only the
 * opcodes torch.save emits for a state dict, resolves only collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2 / _rebuild_parameter and torch.<X>Storage, and turns
 * persistent ids ('storage', type, key, location, numel) into storage objects. In numpy mode
 * (Cellpose's size model, an object array saved by np.save) it reads instead the opcodes numpy's
 * pickles use (protocols 2-5: FRAME, MEMOIZE, STACK_GLOBAL, BINFLOAT, BINBYTES) and resolves only
 * numpy's _reconstruct, ndarray, dtype and scalar, which it turns into array, dtype and float
 * objects. Nothing is ever executed or imported; containers refer to objects by index, so no
 * step recurses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "model/pickle.h"

#define NO_OBJ UINT32_MAX

typedef struct {
    gpuseg__pickle *p;
    const unsigned char *d;
    size_t n, pos, op_pos; /* op_pos: offset of the opcode being executed (for messages) */
    const char *path;
    uint32_t *stack;
    size_t sp, cap_stack;
    size_t marks[GPUSEG__PK_MAX_MARKS];
    size_t n_marks;
    uint32_t *memo;
    size_t cap_memo;
    size_t n_memo; /* memo slots written (MEMOIZE's next key, as Python's len(memo)) */
    gpuseg__pickle_mode mode;
    const char *what; /* names the stream in messages */
} reader;

static gpuseg_status fail(reader *r, gpuseg_status st, const char *what) {
    return gpuseg__fail(NULL, st, "%s: %s: %s at offset %zu", r->path, r->what, what, r->op_pos);
}

static gpuseg_status need(reader *r, size_t k, const unsigned char **out) {
    if (k > r->n - r->pos)
        return fail(r, GPUSEG_FORMAT, "pickle data ends inside an opcode (truncated)");
    *out = r->d + r->pos;
    r->pos += k;
    return GPUSEG_OK;
}

static gpuseg_status new_obj(reader *r, uint8_t type, uint32_t *idx) {
    gpuseg__pickle *p = r->p;
    *idx = 0; /* defined on failure too (callers then return; gcc -O3 cannot see that) */
    if (p->n_objs == p->cap_objs) {
        if (p->cap_objs >= GPUSEG__PK_MAX_OBJECTS)
            return fail(r, GPUSEG_TOO_LARGE, "pickle creates too many objects");
        uint32_t cap = p->cap_objs ? p->cap_objs * 2 : 256;
        if (cap > GPUSEG__PK_MAX_OBJECTS)
            cap = GPUSEG__PK_MAX_OBJECTS;
        gpuseg__pk_obj *o = realloc(p->objs, (size_t)cap * sizeof *o);
        if (!o)
            return fail(r, GPUSEG_OUT_OF_MEMORY, "out of memory");
        p->objs = o;
        p->cap_objs = cap;
    }
    *idx = p->n_objs++;
    memset(&p->objs[*idx], 0, sizeof p->objs[*idx]);
    p->objs[*idx].type = type;
    return GPUSEG_OK;
}

static gpuseg_status push(reader *r, uint32_t obj) {
    if (r->sp == r->cap_stack) {
        if (r->cap_stack >= GPUSEG__PK_MAX_STACK)
            return fail(r, GPUSEG_TOO_LARGE, "pickle stack grows too deep");
        size_t cap = r->cap_stack ? r->cap_stack * 2 : 64;
        uint32_t *s = realloc(r->stack, cap * sizeof *s);
        if (!s)
            return fail(r, GPUSEG_OUT_OF_MEMORY, "out of memory");
        r->stack = s;
        r->cap_stack = cap;
    }
    r->stack[r->sp++] = obj;
    return GPUSEG_OK;
}

/* Pops into *obj; fails on an empty stack or when the top belongs below the innermost mark. */
static gpuseg_status pop(reader *r, uint32_t *obj) {
    size_t floor = r->n_marks ? r->marks[r->n_marks - 1] : 0;
    if (r->sp <= floor)
        return fail(r, GPUSEG_FORMAT, "pickle stack underflow");
    *obj = r->stack[--r->sp];
    return GPUSEG_OK;
}

static gpuseg_status top(reader *r, uint32_t *obj) {
    size_t floor = r->n_marks ? r->marks[r->n_marks - 1] : 0;
    if (r->sp <= floor)
        return fail(r, GPUSEG_FORMAT, "pickle stack underflow");
    *obj = r->stack[r->sp - 1];
    return GPUSEG_OK;
}

/* Pops the innermost mark: the items above it are stack[*from .. sp). */
static gpuseg_status pop_mark(reader *r, size_t *from) {
    if (!r->n_marks)
        return fail(r, GPUSEG_FORMAT, "pickle uses a MARK that was never set");
    *from = r->marks[--r->n_marks];
    return GPUSEG_OK;
}

/* Appends k object indices to container c (growing its slot array). */
static gpuseg_status seq_add(reader *r, uint32_t c, const uint32_t *items, size_t k) {
    gpuseg__pickle *p = r->p;
    if (k > GPUSEG__PK_MAX_ITEMS - p->n_items)
        return fail(r, GPUSEG_TOO_LARGE, "pickle containers hold too many items");
    gpuseg__pk_obj *o = &p->objs[c];
    size_t need_n = (size_t)o->u.seq.n + k;
    if (need_n > o->u.seq.cap) {
        size_t cap = o->u.seq.cap ? o->u.seq.cap : 4;
        while (cap < need_n)
            cap *= 2;
        uint32_t *it = realloc(o->u.seq.items, cap * sizeof *it);
        if (!it)
            return fail(r, GPUSEG_OUT_OF_MEMORY, "out of memory");
        o->u.seq.items = it;
        o->u.seq.cap = (uint32_t)cap;
    }
    if (k)
        memcpy(o->u.seq.items + o->u.seq.n, items, k * sizeof *items);
    o->u.seq.n = (uint32_t)need_n;
    p->n_items += k;
    return GPUSEG_OK;
}

/* Builds a tuple from stack[from .. sp) and replaces those items by it. */
static gpuseg_status make_tuple(reader *r, size_t from) {
    uint32_t t;
    gpuseg_status st = new_obj(r, GPUSEG__PK_TUPLE, &t);
    if (st == GPUSEG_OK)
        st = seq_add(r, t, from < r->sp ? r->stack + from : NULL, r->sp - from);
    if (st != GPUSEG_OK)
        return st;
    r->sp = from;
    return push(r, t);
}

static gpuseg_status memo_put(reader *r, uint64_t key, uint32_t obj) {
    /* The pickler numbers memo slots 0, 1, 2, ...; a key beyond the stream length is bogus. */
    if (key >= r->n || key >= GPUSEG__PK_MAX_OBJECTS)
        return fail(r, GPUSEG_FORMAT, "pickle memo key out of range");
    if (key >= r->cap_memo) {
        size_t cap = r->cap_memo ? r->cap_memo : 256;
        while (cap <= key)
            cap *= 2;
        uint32_t *m = realloc(r->memo, cap * sizeof *m);
        if (!m)
            return fail(r, GPUSEG_OUT_OF_MEMORY, "out of memory");
        for (size_t i = r->cap_memo; i < cap; i++)
            m[i] = NO_OBJ;
        r->memo = m;
        r->cap_memo = cap;
    }
    if (r->memo[key] == NO_OBJ)
        r->n_memo++;
    r->memo[key] = obj;
    return GPUSEG_OK;
}

static gpuseg_status memo_get(reader *r, uint64_t key) {
    if (key >= r->cap_memo || r->memo[key] == NO_OBJ)
        return fail(r, GPUSEG_FORMAT, "pickle reads a memo slot that was never written");
    return push(r, r->memo[key]);
}

static int str_is(const gpuseg__pk_obj *o, const char *s) {
    size_t n = strlen(s);
    return o->type == GPUSEG__PK_STR && o->u.str.n == n && memcmp(o->u.str.s, s, n) == 0;
}

static gpuseg_status push_str(reader *r, const unsigned char *s, size_t n) {
    uint32_t o;
    gpuseg_status st = new_obj(r, GPUSEG__PK_STR, &o);
    if (st != GPUSEG_OK)
        return st;
    r->p->objs[o].u.str.s = (const char *)s;
    r->p->objs[o].u.str.n = n;
    return push(r, o);
}

static gpuseg_status push_int(reader *r, uint8_t type, int64_t v) {
    uint32_t o;
    gpuseg_status st = new_obj(r, type, &o);
    if (st != GPUSEG_OK)
        return st;
    r->p->objs[o].u.i = v;
    return push(r, o);
}

static const struct {
    const char *name;
    gpuseg_tensor_dtype dtype;
} storage_types[] = {
    {"FloatStorage", GPUSEG_TENSOR_F32}, {"DoubleStorage", GPUSEG_TENSOR_F64},
    {"HalfStorage", GPUSEG_TENSOR_F16},  {"BFloat16Storage", GPUSEG_TENSOR_BF16},
    {"LongStorage", GPUSEG_TENSOR_I64},  {"IntStorage", GPUSEG_TENSOR_I32},
    {"ShortStorage", GPUSEG_TENSOR_I16}, {"CharStorage", GPUSEG_TENSOR_I8},
    {"ByteStorage", GPUSEG_TENSOR_U8},   {"BoolStorage", GPUSEG_TENSOR_BOOL},
};

static int span_eq(const char *s, size_t n, const char *lit) {
    return strlen(lit) == n && memcmp(s, lit, n) == 0;
}

/* Resolves module.name to one of the allowed globals and pushes it. */
static gpuseg_status push_global(reader *r, const char *mod, size_t mlen, const char *name,
                                 size_t nlen) {
    int which = -1, dtype = 0;
    if (r->mode == GPUSEG__PICKLE_NUMPY) {
        int core = span_eq(mod, mlen, "numpy.core.multiarray") ||
                   span_eq(mod, mlen, "numpy._core.multiarray");
        if (core && span_eq(name, nlen, "_reconstruct"))
            which = GPUSEG__PKG_NP_RECONSTRUCT;
        else if (core && span_eq(name, nlen, "scalar"))
            which = GPUSEG__PKG_NP_SCALAR;
        else if (span_eq(mod, mlen, "numpy") && span_eq(name, nlen, "ndarray"))
            which = GPUSEG__PKG_NP_NDARRAY;
        else if (span_eq(mod, mlen, "numpy") && span_eq(name, nlen, "dtype"))
            which = GPUSEG__PKG_NP_DTYPE;
    } else if (span_eq(mod, mlen, "collections") && span_eq(name, nlen, "OrderedDict"))
        which = GPUSEG__PKG_ORDERED_DICT;
    else if (span_eq(mod, mlen, "torch._utils") && span_eq(name, nlen, "_rebuild_tensor_v2"))
        which = GPUSEG__PKG_REBUILD_TENSOR_V2;
    else if (span_eq(mod, mlen, "torch._utils") && span_eq(name, nlen, "_rebuild_parameter"))
        which = GPUSEG__PKG_REBUILD_PARAMETER;
    else if (span_eq(mod, mlen, "torch"))
        for (size_t i = 0; i < sizeof storage_types / sizeof storage_types[0]; i++)
            if (span_eq(name, nlen, storage_types[i].name)) {
                which = GPUSEG__PKG_STORAGE_TYPE;
                dtype = storage_types[i].dtype;
            }
    if (which < 0) {
        /* Name the global, with bytes outside printable ASCII shown as '?'. */
        char msg[300], mm[101], nn[101];
        size_t k;
        for (k = 0; k < mlen && k < 100; k++)
            mm[k] = mod[k] >= 0x20 && mod[k] < 0x7f ? mod[k] : '?';
        mm[k] = 0;
        for (k = 0; k < nlen && k < 100; k++)
            nn[k] = name[k] >= 0x20 && name[k] < 0x7f ? name[k] : '?';
        nn[k] = 0;
        snprintf(msg, sizeof msg, "pickle refers to '%s.%s', which a Cellpose %s never contains",
                 mm, nn, r->mode == GPUSEG__PICKLE_NUMPY ? "size model" : "state dict");
        return fail(r, GPUSEG_UNSUPPORTED, msg);
    }
    uint32_t o;
    gpuseg_status st = new_obj(r, GPUSEG__PK_GLOBAL, &o);
    if (st != GPUSEG_OK)
        return st;
    r->p->objs[o].u.global.which = (uint8_t)which;
    r->p->objs[o].u.global.dtype = (uint8_t)dtype;
    return push(r, o);
}

/* GLOBAL: "module\nname\n" in the stream. */
static gpuseg_status op_global(reader *r) {
    const char *s = (const char *)r->d + r->pos;
    size_t left = r->n - r->pos;
    const char *nl1 = memchr(s, '\n', left);
    if (!nl1)
        return fail(r, GPUSEG_FORMAT, "pickle GLOBAL is not terminated (truncated)");
    const char *nm = nl1 + 1;
    const char *nl2 = memchr(nm, '\n', left - (size_t)(nm - s));
    if (!nl2)
        return fail(r, GPUSEG_FORMAT, "pickle GLOBAL is not terminated (truncated)");
    r->pos += (size_t)(nl2 + 1 - s);
    return push_global(r, s, (size_t)(nl1 - s), nm, (size_t)(nl2 - nm));
}

/* BINPERSID: ('storage', <torch.XStorage>, key, location, numel) -> storage object. */
static gpuseg_status op_persid(reader *r) {
    uint32_t pid = 0;
    gpuseg_status st = pop(r, &pid);
    if (st != GPUSEG_OK)
        return st;
    const gpuseg__pickle *p = r->p;
    const gpuseg__pk_obj *t = &p->objs[pid];
    if (t->type != GPUSEG__PK_TUPLE || t->u.seq.n != 5 ||
        !str_is(&p->objs[t->u.seq.items[0]], "storage"))
        return fail(r, GPUSEG_FORMAT,
                    "pickle persistent id is not ('storage', type, key, location, numel)");
    const gpuseg__pk_obj *ty = &p->objs[t->u.seq.items[1]], *key = &p->objs[t->u.seq.items[2]],
                         *loc = &p->objs[t->u.seq.items[3]], *num = &p->objs[t->u.seq.items[4]];
    if (ty->type != GPUSEG__PK_GLOBAL || ty->u.global.which != GPUSEG__PKG_STORAGE_TYPE ||
        key->type != GPUSEG__PK_STR || loc->type != GPUSEG__PK_STR || num->type != GPUSEG__PK_INT ||
        num->u.i < 0)
        return fail(r, GPUSEG_FORMAT,
                    "pickle persistent id is not ('storage', type, key, location, numel)");
    uint32_t o;
    if ((st = new_obj(r, GPUSEG__PK_STORAGE, &o)) != GPUSEG_OK)
        return st;
    gpuseg__pk_obj *so = &r->p->objs[o];
    /* re-read: new_obj may have moved the array */
    t = &r->p->objs[pid];
    ty = &r->p->objs[t->u.seq.items[1]];
    key = &r->p->objs[t->u.seq.items[2]];
    num = &r->p->objs[t->u.seq.items[4]];
    so->u.storage.dtype = ty->u.global.dtype;
    so->u.storage.key = key->u.str.s;
    so->u.storage.key_len = key->u.str.n;
    so->u.storage.numel = num->u.i;
    return push(r, o);
}

/* Reads a tuple of ints (a size or stride) into v; returns its length or -1. */
static int int_tuple(const gpuseg__pickle *p, uint32_t idx, int64_t *v) {
    const gpuseg__pk_obj *t = &p->objs[idx];
    if (t->type != GPUSEG__PK_TUPLE || t->u.seq.n > GPUSEG_TENSOR_MAX_DIMS)
        return -1;
    for (uint32_t i = 0; i < t->u.seq.n; i++) {
        const gpuseg__pk_obj *e = &p->objs[t->u.seq.items[i]];
        if (e->type != GPUSEG__PK_INT)
            return -1;
        v[i] = e->u.i;
    }
    return (int)t->u.seq.n;
}

static gpuseg_status rebuild_tensor(reader *r, uint32_t args) {
    gpuseg__pickle *p = r->p;
    const gpuseg__pk_obj *a = &p->objs[args];
    if (a->u.seq.n != 6 && a->u.seq.n != 7)
        return fail(r, GPUSEG_FORMAT, "pickle calls _rebuild_tensor_v2 with the wrong arguments");
    const uint32_t *it = a->u.seq.items;
    gpuseg__pk_tensor t;
    memset(&t, 0, sizeof t);
    const gpuseg__pk_obj *so = &p->objs[it[0]], *off = &p->objs[it[1]], *rg = &p->objs[it[4]];
    int64_t stride[GPUSEG_TENSOR_MAX_DIMS];
    int nd = int_tuple(p, it[2], t.shape), ns = int_tuple(p, it[3], stride);
    if (so->type != GPUSEG__PK_STORAGE || off->type != GPUSEG__PK_INT || off->u.i < 0 || nd < 0 ||
        ns != nd || rg->type != GPUSEG__PK_BOOL)
        return fail(r, GPUSEG_FORMAT,
                    "pickle calls _rebuild_tensor_v2 with arguments of the wrong types");
    t.storage = it[0];
    t.offset = off->u.i;
    t.ndim = nd;
    memcpy(t.stride, stride, sizeof stride);
    if (p->n_tensors == p->cap_tensors) {
        uint32_t cap = p->cap_tensors ? p->cap_tensors * 2 : 64;
        gpuseg__pk_tensor *nt = realloc(p->tensors, (size_t)cap * sizeof *nt);
        if (!nt)
            return fail(r, GPUSEG_OUT_OF_MEMORY, "out of memory");
        p->tensors = nt;
        p->cap_tensors = cap;
    }
    uint32_t o;
    gpuseg_status st = new_obj(r, GPUSEG__PK_TENSOR, &o);
    if (st != GPUSEG_OK)
        return st;
    p->tensors[p->n_tensors] = t;
    p->objs[o].u.tensor = p->n_tensors++;
    return push(r, o);
}

/* ---- numpy mode: arrays, dtypes and scalars as numpy pickles them ---- */

/* STACK_GLOBAL: module and name strings from the stack. */
static gpuseg_status op_stack_global(reader *r) {
    uint32_t nm = 0, md = 0;
    gpuseg_status st = pop(r, &nm);
    if (st == GPUSEG_OK)
        st = pop(r, &md);
    if (st != GPUSEG_OK)
        return st;
    const gpuseg__pk_obj *m = &r->p->objs[md], *n = &r->p->objs[nm];
    if (m->type != GPUSEG__PK_STR || n->type != GPUSEG__PK_STR)
        return fail(r, GPUSEG_FORMAT, "pickle STACK_GLOBAL without a module and a name");
    return push_global(r, m->u.str.s, m->u.str.n, n->u.str.s, n->u.str.n);
}

/* numpy.dtype(descr, align, copy): descr is numpy's type character and size ('f8', 'O8'),
 * optionally after a byte-order character. */
static gpuseg_status np_dtype(reader *r, uint32_t args) {
    const gpuseg__pk_obj *a = &r->p->objs[args];
    if (a->u.seq.n != 3 || r->p->objs[a->u.seq.items[0]].type != GPUSEG__PK_STR)
        return fail(r, GPUSEG_FORMAT, "pickle calls numpy.dtype with the wrong arguments");
    const gpuseg__pk_obj *d = &r->p->objs[a->u.seq.items[0]];
    const char *s = d->u.str.s;
    size_t n = d->u.str.n, i = 0;
    char order = '=';
    if (n && (s[0] == '<' || s[0] == '>' || s[0] == '|' || s[0] == '='))
        order = s[i++];
    if (i >= n || !strchr("fiubO", s[i]) || s[i] == 0)
        return fail(r, GPUSEG_UNSUPPORTED,
                    "pickle makes a numpy dtype other than float, integer, bool or object");
    char kind = s[i++];
    uint32_t size = 0;
    if (i == n || n - i > 2)
        return fail(r, GPUSEG_FORMAT, "pickle makes a numpy dtype with a bad size");
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return fail(r, GPUSEG_FORMAT, "pickle makes a numpy dtype with a bad size");
        size = size * 10 + (uint32_t)(s[i] - '0');
    }
    if (size == 0 || size > 16)
        return fail(r, GPUSEG_FORMAT, "pickle makes a numpy dtype with a bad size");
    uint32_t o = 0;
    gpuseg_status st = new_obj(r, GPUSEG__PK_DTYPE, &o);
    if (st != GPUSEG_OK)
        return st;
    r->p->objs[o].u.dtype.kind = kind;
    r->p->objs[o].u.dtype.order = order;
    r->p->objs[o].u.dtype.size = size;
    return push(r, o);
}

/* Little-endian value of k <= 8 bytes (byte-swapped first for a big-endian dtype). */
static uint64_t np_bytes_u64(const unsigned char *b, uint32_t k, int big) {
    uint64_t u = 0;
    for (uint32_t i = 0; i < k; i++)
        u |= (uint64_t)b[big ? k - 1 - i : i] << (8 * i);
    return u;
}

/* numpy.core.multiarray.scalar(dtype, bytes): a float (or integer) scalar such as np.float32. */
static gpuseg_status np_scalar(reader *r, uint32_t args) {
    const gpuseg__pk_obj *a = &r->p->objs[args];
    if (a->u.seq.n != 2)
        return fail(r, GPUSEG_FORMAT, "pickle calls numpy scalar with the wrong arguments");
    const gpuseg__pk_obj *dt = &r->p->objs[a->u.seq.items[0]], *b = &r->p->objs[a->u.seq.items[1]];
    if (dt->type != GPUSEG__PK_DTYPE || b->type != GPUSEG__PK_BYTES ||
        b->u.str.n != dt->u.dtype.size)
        return fail(r, GPUSEG_FORMAT, "pickle calls numpy scalar with the wrong arguments");
    const unsigned char *v = (const unsigned char *)b->u.str.s;
    int big = dt->u.dtype.order == '>';
    uint32_t k = dt->u.dtype.size;
    if (dt->u.dtype.kind == 'f' && (k == 4 || k == 8)) {
        uint64_t u = np_bytes_u64(v, k, big);
        double x;
        if (k == 4) {
            uint32_t u32 = (uint32_t)u;
            float f;
            memcpy(&f, &u32, sizeof f);
            x = (double)f;
        } else {
            memcpy(&x, &u, sizeof x);
        }
        uint32_t o = 0;
        gpuseg_status st = new_obj(r, GPUSEG__PK_FLOAT, &o);
        if (st != GPUSEG_OK)
            return st;
        r->p->objs[o].u.f = x;
        return push(r, o);
    }
    if ((dt->u.dtype.kind == 'i' || dt->u.dtype.kind == 'u') && k <= 8 && (k & (k - 1)) == 0) {
        uint64_t u = np_bytes_u64(v, k, big);
        if (dt->u.dtype.kind == 'i' && k < 8 && (u >> (8 * k - 1)) & 1)
            u |= ~(uint64_t)0 << (8 * k); /* sign-extend */
        if (dt->u.dtype.kind == 'u' && k == 8 && u > INT64_MAX)
            return fail(r, GPUSEG_UNSUPPORTED, "pickle holds an integer wider than 63 bits");
        int64_t iv;
        memcpy(&iv, &u, sizeof iv);
        return push_int(r, GPUSEG__PK_INT, iv);
    }
    return fail(r, GPUSEG_UNSUPPORTED, "pickle makes a numpy scalar that is not a number");
}

/* numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b'): an empty array that BUILD
 * fills in. */
static gpuseg_status np_reconstruct(reader *r, uint32_t args) {
    const gpuseg__pk_obj *a = &r->p->objs[args];
    if (a->u.seq.n != 3)
        return fail(r, GPUSEG_FORMAT, "pickle calls numpy _reconstruct with the wrong arguments");
    const gpuseg__pk_obj *cls = &r->p->objs[a->u.seq.items[0]];
    if (cls->type != GPUSEG__PK_GLOBAL || cls->u.global.which != GPUSEG__PKG_NP_NDARRAY)
        return fail(r, GPUSEG_UNSUPPORTED,
                    "pickle reconstructs a numpy array subclass (only numpy.ndarray is read)");
    uint32_t o = 0;
    gpuseg_status st = new_obj(r, GPUSEG__PK_ARRAY, &o);
    if (st != GPUSEG_OK)
        return st;
    return push(r, o);
}

/* BUILD on a numpy array: state (version, shape, dtype, is_fortran, data) as
 * ndarray.__reduce__ writes it (data: bytes, or a list for object arrays). */
static gpuseg_status np_build_array(reader *r, uint32_t arr, uint32_t state) {
    gpuseg__pickle *p = r->p;
    const gpuseg__pk_obj *t = &p->objs[state];
    if (t->type != GPUSEG__PK_TUPLE || (t->u.seq.n != 5 && t->u.seq.n != 4))
        return fail(r, GPUSEG_FORMAT, "pickle sets a numpy array from a bad state");
    const uint32_t *it = t->u.seq.items + (t->u.seq.n == 5);
    if (t->u.seq.n == 5 && p->objs[t->u.seq.items[0]].type != GPUSEG__PK_INT)
        return fail(r, GPUSEG_FORMAT, "pickle sets a numpy array from a bad state");
    if (p->objs[arr].u.array.built)
        return fail(r, GPUSEG_FORMAT, "pickle sets a numpy array twice");
    int64_t shape[GPUSEG_TENSOR_MAX_DIMS];
    int nd = int_tuple(p, it[0], shape);
    const gpuseg__pk_obj *dt = &p->objs[it[1]], *fo = &p->objs[it[2]], *data = &p->objs[it[3]];
    if (nd < 0 || dt->type != GPUSEG__PK_DTYPE ||
        (fo->type != GPUSEG__PK_BOOL && fo->type != GPUSEG__PK_INT))
        return fail(r, GPUSEG_FORMAT, "pickle sets a numpy array from a bad state");
    uint64_t count = 1;
    for (int i = 0; i < nd; i++) {
        if (shape[i] < 0 || (uint64_t)shape[i] > GPUSEG__PK_MAX_ITEMS)
            return fail(r, GPUSEG_FORMAT, "pickle sets a numpy array with a bad shape");
        count *= (uint64_t)shape[i];
        if (count > GPUSEG__PK_MAX_ITEMS)
            return fail(r, GPUSEG_TOO_LARGE, "pickle sets a numpy array with too many elements");
    }
    if (dt->u.dtype.kind == 'O') {
        if (data->type != GPUSEG__PK_LIST || data->u.seq.n != count)
            return fail(r, GPUSEG_FORMAT,
                        "pickle sets a numpy object array whose items do not match its shape");
    } else if (data->type != GPUSEG__PK_BYTES || data->u.str.n != count * dt->u.dtype.size) {
        return fail(r, GPUSEG_FORMAT,
                    "pickle sets a numpy array whose data size does not match its shape");
    }
    gpuseg__pk_obj *o = &p->objs[arr];
    o->u.array.shape = it[0];
    o->u.array.dtype = it[1];
    o->u.array.data = it[3];
    o->u.array.fortran = fo->u.i != 0;
    o->u.array.built = 1;
    return GPUSEG_OK;
}

/* BUILD on a numpy dtype: state (version, byteorder, subarray, names, fields, elsize,
 * alignment[, flags]); only plain dtypes (no subarray, names or fields) are read. */
static gpuseg_status np_build_dtype(reader *r, uint32_t dt, uint32_t state) {
    gpuseg__pickle *p = r->p;
    const gpuseg__pk_obj *t = &p->objs[state];
    if (t->type != GPUSEG__PK_TUPLE || t->u.seq.n < 5)
        return fail(r, GPUSEG_FORMAT, "pickle sets a numpy dtype from a bad state");
    const gpuseg__pk_obj *bo = &p->objs[t->u.seq.items[1]];
    if (bo->type != GPUSEG__PK_STR || bo->u.str.n != 1 || !strchr("<>|=", bo->u.str.s[0]) ||
        bo->u.str.s[0] == 0)
        return fail(r, GPUSEG_FORMAT, "pickle sets a numpy dtype with a bad byte order");
    for (int k = 2; k <= 4; k++)
        if (p->objs[t->u.seq.items[k]].type != GPUSEG__PK_NONE)
            return fail(r, GPUSEG_UNSUPPORTED,
                        "pickle makes a structured or sub-array numpy dtype");
    p->objs[dt].u.dtype.order = bo->u.str.s[0];
    return GPUSEG_OK;
}

static gpuseg_status push_bytes(reader *r, const unsigned char *s, size_t n) {
    uint32_t o = 0;
    gpuseg_status st = new_obj(r, GPUSEG__PK_BYTES, &o);
    if (st != GPUSEG_OK)
        return st;
    r->p->objs[o].u.str.s = (const char *)s;
    r->p->objs[o].u.str.n = n;
    return push(r, o);
}

static uint64_t le_u64(const unsigned char *a, size_t k) {
    uint64_t u = 0;
    for (size_t i = 0; i < k; i++)
        u |= (uint64_t)a[i] << (8 * i);
    return u;
}

/* The opcodes only numpy mode reads; *handled = 0 for any other. */
static gpuseg_status numpy_op(reader *r, unsigned char op, int *handled) {
    const unsigned char *a = NULL;
    gpuseg_status st = GPUSEG_OK;
    *handled = 1;
    switch (op) {
    case 0x95: /* FRAME: an 8-byte length; the frame's opcodes follow inline */
        return need(r, 8, &a);
    case 0x94: /* MEMOIZE */ {
        uint32_t o = 0;
        if ((st = top(r, &o)) != GPUSEG_OK)
            return st;
        return memo_put(r, r->n_memo, o);
    }
    case 0x93: /* STACK_GLOBAL */
        return op_stack_global(r);
    case 0x8c: /* SHORT_BINUNICODE */
        if ((st = need(r, 1, &a)) != GPUSEG_OK)
            return st;
        {
            size_t k = a[0];
            if ((st = need(r, k, &a)) == GPUSEG_OK)
                st = push_str(r, a, k);
        }
        return st;
    case 0x8d:   /* BINUNICODE8 */
    case 0x8e: { /* BINBYTES8 */
        if ((st = need(r, 8, &a)) != GPUSEG_OK)
            return st;
        uint64_t k = le_u64(a, 8);
        if (k > r->n - r->pos)
            return fail(r, GPUSEG_FORMAT, "pickle data ends inside an opcode (truncated)");
        if ((st = need(r, (size_t)k, &a)) != GPUSEG_OK)
            return st;
        return op == 0x8d ? push_str(r, a, (size_t)k) : push_bytes(r, a, (size_t)k);
    }
    case 'C': /* SHORT_BINBYTES */
        if ((st = need(r, 1, &a)) != GPUSEG_OK)
            return st;
        {
            size_t k = a[0];
            if ((st = need(r, k, &a)) == GPUSEG_OK)
                st = push_bytes(r, a, k);
        }
        return st;
    case 'B': { /* BINBYTES: 4-byte length */
        if ((st = need(r, 4, &a)) != GPUSEG_OK)
            return st;
        size_t k = (size_t)le_u64(a, 4);
        if ((st = need(r, k, &a)) == GPUSEG_OK)
            st = push_bytes(r, a, k);
        return st;
    }
    case 'G': { /* BINFLOAT: big-endian IEEE double */
        if ((st = need(r, 8, &a)) != GPUSEG_OK)
            return st;
        uint64_t u = 0;
        for (int i = 0; i < 8; i++)
            u = u << 8 | a[i];
        double x;
        memcpy(&x, &u, sizeof x);
        uint32_t o = 0;
        if ((st = new_obj(r, GPUSEG__PK_FLOAT, &o)) != GPUSEG_OK)
            return st;
        r->p->objs[o].u.f = x;
        return push(r, o);
    }
    default:
        *handled = 0;
        return GPUSEG_OK;
    }
}

static gpuseg_status op_reduce(reader *r) {
    uint32_t fn = 0, args = 0;
    gpuseg_status st = pop(r, &args);
    if (st == GPUSEG_OK)
        st = pop(r, &fn);
    if (st != GPUSEG_OK)
        return st;
    gpuseg__pickle *p = r->p;
    const gpuseg__pk_obj *f = &p->objs[fn], *a = &p->objs[args];
    if (f->type != GPUSEG__PK_GLOBAL || a->type != GPUSEG__PK_TUPLE)
        return fail(r, GPUSEG_FORMAT, "pickle REDUCE without a callable and an argument tuple");
    switch (f->u.global.which) {
    case GPUSEG__PKG_ORDERED_DICT: {
        if (a->u.seq.n != 0)
            return fail(r, GPUSEG_UNSUPPORTED, "pickle builds an OrderedDict from arguments");
        uint32_t d;
        if ((st = new_obj(r, GPUSEG__PK_DICT, &d)) != GPUSEG_OK)
            return st;
        return push(r, d);
    }
    case GPUSEG__PKG_REBUILD_TENSOR_V2:
        return rebuild_tensor(r, args);
    case GPUSEG__PKG_NP_RECONSTRUCT:
        return np_reconstruct(r, args);
    case GPUSEG__PKG_NP_DTYPE:
        return np_dtype(r, args);
    case GPUSEG__PKG_NP_SCALAR:
        return np_scalar(r, args);
    case GPUSEG__PKG_NP_NDARRAY:
        return fail(r, GPUSEG_UNSUPPORTED, "pickle calls numpy.ndarray directly");
    case GPUSEG__PKG_REBUILD_PARAMETER:
        /* Parameter(data, requires_grad, hooks): for reading weights it is just `data`. */
        if (a->u.seq.n != 3 || p->objs[a->u.seq.items[0]].type != GPUSEG__PK_TENSOR)
            return fail(r, GPUSEG_FORMAT,
                        "pickle calls _rebuild_parameter with the wrong arguments");
        return push(r, a->u.seq.items[0]);
    default:
        return fail(r, GPUSEG_UNSUPPORTED, "pickle calls a storage type");
    }
}

static gpuseg_status op_setitems(reader *r, size_t from) {
    if ((r->sp - from) % 2)
        return fail(r, GPUSEG_FORMAT, "pickle SETITEMS with an odd number of items");
    if (from == 0 || (r->n_marks && r->marks[r->n_marks - 1] >= from))
        return fail(r, GPUSEG_FORMAT, "pickle SETITEMS without a dict");
    uint32_t d = r->stack[from - 1];
    if (r->p->objs[d].type != GPUSEG__PK_DICT)
        return fail(r, GPUSEG_FORMAT, "pickle SETITEM on something that is not a dict");
    gpuseg_status st = seq_add(r, d, from < r->sp ? r->stack + from : NULL, r->sp - from);
    r->sp = from;
    return st;
}

static gpuseg_status op_appends(reader *r, size_t from) {
    if (from == 0 || (r->n_marks && r->marks[r->n_marks - 1] >= from))
        return fail(r, GPUSEG_FORMAT, "pickle APPENDS without a list");
    uint32_t l = r->stack[from - 1];
    if (r->p->objs[l].type != GPUSEG__PK_LIST)
        return fail(r, GPUSEG_FORMAT, "pickle APPEND on something that is not a list");
    gpuseg_status st = seq_add(r, l, from < r->sp ? r->stack + from : NULL, r->sp - from);
    r->sp = from;
    return st;
}

/* The opcodes that push a literal: None, booleans, integers and strings. Sets *handled when op is
 * one of them. */
static gpuseg_status op_literal(reader *r, unsigned char op, int *handled) {
    gpuseg_status st = GPUSEG_OK;
    const unsigned char *a = NULL;
    uint32_t o = 0;
    *handled = 1;
    switch (op) {
    case 'N': /* NONE */
        if ((st = new_obj(r, GPUSEG__PK_NONE, &o)) == GPUSEG_OK)
            st = push(r, o);
        break;
    case 0x88: /* NEWTRUE */
    case 0x89: /* NEWFALSE */
        st = push_int(r, GPUSEG__PK_BOOL, op == 0x88);
        break;
    case 'K': /* BININT1 */
        if ((st = need(r, 1, &a)) == GPUSEG_OK)
            st = push_int(r, GPUSEG__PK_INT, a[0]);
        break;
    case 'M': /* BININT2 */
        if ((st = need(r, 2, &a)) == GPUSEG_OK)
            st = push_int(r, GPUSEG__PK_INT, a[0] | a[1] << 8);
        break;
    case 'J': /* BININT: signed 32-bit */
        if ((st = need(r, 4, &a)) == GPUSEG_OK) {
            uint32_t u =
                (uint32_t)a[0] | (uint32_t)a[1] << 8 | (uint32_t)a[2] << 16 | (uint32_t)a[3] << 24;
            st = push_int(r, GPUSEG__PK_INT,
                          u >= 0x80000000u ? (int64_t)u - 0x100000000LL : (int64_t)u);
        }
        break;
    case 0x8a: { /* LONG1: little-endian two's complement of n bytes */
        if ((st = need(r, 1, &a)) != GPUSEG_OK)
            break;
        size_t k = a[0];
        if (k > 8)
            return fail(r, GPUSEG_UNSUPPORTED, "pickle integer wider than 64 bits");
        if ((st = need(r, k, &a)) != GPUSEG_OK)
            break;
        uint64_t u = 0;
        for (size_t i = 0; i < k; i++)
            u |= (uint64_t)a[i] << (8 * i);
        if (k && k < 8 && (a[k - 1] & 0x80))
            u |= ~(uint64_t)0 << (8 * k); /* sign-extend */
        int64_t v;
        memcpy(&v, &u, sizeof v);
        st = push_int(r, GPUSEG__PK_INT, v);
        break;
    }
    case 'X':   /* BINUNICODE: 4-byte length */
    case 'T': { /* BINSTRING (Python 2 str): same layout */
        if ((st = need(r, 4, &a)) != GPUSEG_OK)
            break;
        size_t k = (size_t)a[0] | (size_t)a[1] << 8 | (size_t)a[2] << 16 | (size_t)a[3] << 24;
        if ((st = need(r, k, &a)) == GPUSEG_OK)
            st = push_str(r, a, k);
        break;
    }
    case 'U': { /* SHORT_BINSTRING */
        if ((st = need(r, 1, &a)) != GPUSEG_OK)
            break;
        size_t k = a[0];
        if ((st = need(r, k, &a)) == GPUSEG_OK)
            st = push_str(r, a, k);
        break;
    }
    default:
        *handled = 0;
    }
    return st;
}

/* The memo opcodes (BINPUT, LONG_BINPUT, BINGET, LONG_BINGET). Sets *handled when op is one of
 * them. */
static gpuseg_status op_memo(reader *r, unsigned char op, int *handled) {
    gpuseg_status st = GPUSEG_OK;
    const unsigned char *a = NULL;
    uint32_t o = 0;
    *handled = 1;
    switch (op) {
    case 'q': /* BINPUT */
        if ((st = need(r, 1, &a)) == GPUSEG_OK && (st = top(r, &o)) == GPUSEG_OK)
            st = memo_put(r, a[0], o);
        break;
    case 'r': /* LONG_BINPUT */
        if ((st = need(r, 4, &a)) == GPUSEG_OK && (st = top(r, &o)) == GPUSEG_OK)
            st = memo_put(r,
                          (uint64_t)a[0] | (uint64_t)a[1] << 8 | (uint64_t)a[2] << 16 |
                              (uint64_t)a[3] << 24,
                          o);
        break;
    case 'h': /* BINGET */
        if ((st = need(r, 1, &a)) == GPUSEG_OK)
            st = memo_get(r, a[0]);
        break;
    case 'j': /* LONG_BINGET */
        if ((st = need(r, 4, &a)) == GPUSEG_OK)
            st = memo_get(r, (uint64_t)a[0] | (uint64_t)a[1] << 8 | (uint64_t)a[2] << 16 |
                                 (uint64_t)a[3] << 24);
        break;
    default:
        *handled = 0;
    }
    return st;
}

static gpuseg_status run(reader *r) {
    gpuseg_status st = GPUSEG_OK;
    const unsigned char *a = NULL;
    uint32_t o = 0, o2 = 0;
    size_t from = 0;
    while (st == GPUSEG_OK) {
        if (r->pos >= r->n)
            return fail(r, GPUSEG_FORMAT, "pickle ends without STOP (truncated)");
        r->op_pos = r->pos;
        unsigned char op = r->d[r->pos++];
        if (r->mode == GPUSEG__PICKLE_NUMPY) {
            int handled = 0;
            st = numpy_op(r, op, &handled);
            if (handled)
                continue;
        }
        int handled = 0;
        if ((st = op_literal(r, op, &handled)) != GPUSEG_OK || handled ||
            (st = op_memo(r, op, &handled)) != GPUSEG_OK || handled)
            continue;
        switch (op) {
        case 0x80: /* PROTO */
            if ((st = need(r, 1, &a)) == GPUSEG_OK && (a[0] < 2 || a[0] > 5))
                st = fail(r, GPUSEG_UNSUPPORTED, "pickle protocol outside 2..5");
            break;
        case '.': /* STOP */
            if ((st = pop(r, &o)) != GPUSEG_OK)
                return st;
            r->p->root = o;
            return GPUSEG_OK;
        case '(': /* MARK */
            if (r->n_marks == GPUSEG__PK_MAX_MARKS)
                return fail(r, GPUSEG_TOO_LARGE, "pickle nests MARKs too deeply");
            r->marks[r->n_marks++] = r->sp;
            break;
        case '}': /* EMPTY_DICT */
            if ((st = new_obj(r, GPUSEG__PK_DICT, &o)) == GPUSEG_OK)
                st = push(r, o);
            break;
        case ']': /* EMPTY_LIST */
            if ((st = new_obj(r, GPUSEG__PK_LIST, &o)) == GPUSEG_OK)
                st = push(r, o);
            break;
        case ')': /* EMPTY_TUPLE */
            st = make_tuple(r, r->sp);
            break;
        case 't': /* TUPLE */
            if ((st = pop_mark(r, &from)) == GPUSEG_OK)
                st = make_tuple(r, from);
            break;
        case 0x85:   /* TUPLE1 */
        case 0x86:   /* TUPLE2 */
        case 0x87: { /* TUPLE3 */
            size_t k = (size_t)(op - 0x84);
            size_t floor = r->n_marks ? r->marks[r->n_marks - 1] : 0;
            if (r->sp < floor + k)
                return fail(r, GPUSEG_FORMAT, "pickle stack underflow");
            st = make_tuple(r, r->sp - k);
            break;
        }
        case 'c': /* GLOBAL */
            st = op_global(r);
            break;
        case 'Q': /* BINPERSID */
            st = op_persid(r);
            break;
        case 'R': /* REDUCE */
            st = op_reduce(r);
            break;
        case 'b': /* BUILD: sets attributes; for a dict only the _metadata attribute */
            if ((st = pop(r, &o2)) != GPUSEG_OK || (st = top(r, &o)) != GPUSEG_OK)
                break;
            if (r->p->objs[o].type == GPUSEG__PK_ARRAY)
                st = np_build_array(r, o, o2);
            else if (r->p->objs[o].type == GPUSEG__PK_DTYPE)
                st = np_build_dtype(r, o, o2);
            else if (r->p->objs[o].type != GPUSEG__PK_DICT)
                st = fail(r, GPUSEG_UNSUPPORTED, "pickle BUILD on something that is not a dict");
            break;
        case 's': /* SETITEM */
            if (r->sp < 3 || (r->n_marks && r->marks[r->n_marks - 1] > r->sp - 3))
                return fail(r, GPUSEG_FORMAT, "pickle stack underflow");
            st = op_setitems(r, r->sp - 2);
            break;
        case 'u': /* SETITEMS */
            if ((st = pop_mark(r, &from)) == GPUSEG_OK)
                st = op_setitems(r, from);
            break;
        case 'a': /* APPEND */
            if (r->sp < 2 || (r->n_marks && r->marks[r->n_marks - 1] > r->sp - 2))
                return fail(r, GPUSEG_FORMAT, "pickle stack underflow");
            st = op_appends(r, r->sp - 1);
            break;
        case 'e': /* APPENDS */
            if ((st = pop_mark(r, &from)) == GPUSEG_OK)
                st = op_appends(r, from);
            break;
        default: {
            char msg[120];
            if (op >= 0x20 && op < 0x7f)
                snprintf(msg, sizeof msg,
                         "pickle opcode 0x%02x ('%c') is not supported (not part of a state dict)",
                         op, op);
            else
                snprintf(msg, sizeof msg,
                         "pickle opcode 0x%02x is not supported (not part of a state dict)", op);
            return fail(r, GPUSEG_UNSUPPORTED, msg);
        }
        }
    }
    return st;
}

gpuseg_status gpuseg__pickle_parse(gpuseg__pickle *p, const unsigned char *data, size_t n,
                                   const char *path) {
    return gpuseg__pickle_parse_mode(p, data, n, path, "data.pkl", GPUSEG__PICKLE_TORCH);
}

gpuseg_status gpuseg__pickle_parse_mode(gpuseg__pickle *p, const unsigned char *data, size_t n,
                                        const char *path, const char *what,
                                        gpuseg__pickle_mode mode) {
    memset(p, 0, sizeof *p);
    reader r;
    memset(&r, 0, sizeof r);
    r.p = p;
    r.d = data;
    r.n = n;
    r.path = path;
    r.what = what;
    r.mode = mode;
    gpuseg_status st = run(&r);
    free(r.stack);
    free(r.memo);
    return st;
}

void gpuseg__pickle_free(gpuseg__pickle *p) {
    for (uint32_t i = 0; i < p->n_objs; i++) {
        uint8_t t = p->objs[i].type;
        if (t == GPUSEG__PK_TUPLE || t == GPUSEG__PK_LIST || t == GPUSEG__PK_DICT)
            free(p->objs[i].u.seq.items);
    }
    free(p->objs);
    free(p->tensors);
    memset(p, 0, sizeof *p);
}
