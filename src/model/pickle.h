/* model/pickle.h: a restricted, non-executing reader for the pickle streams that torch.save
 * writes for state dicts (protocol 2, torch's default; torch.load(weights_only=True), which
 * Cellpose uses, cannot read protocol 4 framing either).
 * It builds a small object graph (ints, strings, tuples, lists, dicts, storages, tensors) and
 * refuses every other opcode or global by name. No recursion, bounded stack, memo and object
 * counts. Internal to the model module (and its tests). */
#ifndef GPUSEG_MODEL_PICKLE_H
#define GPUSEG_MODEL_PICKLE_H

#include <stddef.h>
#include <stdint.h>

#include "gpuseg/common.h"
#include "gpuseg/model.h"

/* Limits far above what a state dict needs (a full CPnet makes ~6,000 objects) that keep a
 * hostile stream from using more than a few hundred MB. */
#define GPUSEG__PK_MAX_OBJECTS (1u << 22)
#define GPUSEG__PK_MAX_ITEMS   (1u << 24) /* all tuple/list/dict slots together */
#define GPUSEG__PK_MAX_STACK   (1u << 18)
#define GPUSEG__PK_MAX_MARKS   1024u

typedef enum {
    GPUSEG__PK_NONE,
    GPUSEG__PK_BOOL,
    GPUSEG__PK_INT,
    GPUSEG__PK_STR,
    GPUSEG__PK_TUPLE,
    GPUSEG__PK_LIST,
    GPUSEG__PK_DICT, /* items: key, value, key, value, ... */
    GPUSEG__PK_GLOBAL,
    GPUSEG__PK_STORAGE,
    GPUSEG__PK_TENSOR,
    /* numpy mode only (GPUSEG__PICKLE_NUMPY) */
    GPUSEG__PK_FLOAT, /* BINFLOAT, or a numpy float scalar (u.f) */
    GPUSEG__PK_BYTES, /* SHORT_BINBYTES / BINBYTES / BINBYTES8 (u.str) */
    GPUSEG__PK_DTYPE, /* numpy.dtype(descr, False, True) [+ BUILD state] (u.dtype) */
    GPUSEG__PK_ARRAY  /* numpy _reconstruct(ndarray, (0,), b'b') [+ BUILD state] (u.array) */
} gpuseg__pk_type;

/* The only globals the reader resolves. */
typedef enum {
    GPUSEG__PKG_ORDERED_DICT,
    GPUSEG__PKG_REBUILD_TENSOR_V2,
    GPUSEG__PKG_REBUILD_PARAMETER,
    GPUSEG__PKG_STORAGE_TYPE, /* torch.<X>Storage; dtype in the object */
    /* numpy mode only */
    GPUSEG__PKG_NP_RECONSTRUCT, /* numpy.core.multiarray._reconstruct (or numpy._core...) */
    GPUSEG__PKG_NP_NDARRAY,     /* numpy.ndarray */
    GPUSEG__PKG_NP_DTYPE,       /* numpy.dtype */
    GPUSEG__PKG_NP_SCALAR       /* numpy.core.multiarray.scalar (or numpy._core...) */
} gpuseg__pk_global;

/* What a stream may contain. */
typedef enum {
    GPUSEG__PICKLE_TORCH = 0, /* a torch.save state dict (data.pkl): protocol 2, torch globals */
    /* a numpy object array pickled by np.save (Cellpose's size_<model>.npy): protocols 2-5
     * (FRAME, MEMOIZE, STACK_GLOBAL, BINFLOAT, BINBYTES), numpy's array/dtype/scalar globals */
    GPUSEG__PICKLE_NUMPY = 1
} gpuseg__pickle_mode;

typedef struct gpuseg__pk_tensor {
    uint32_t storage; /* object index of a GPUSEG__PK_STORAGE */
    int64_t offset;   /* in elements */
    int ndim;
    int64_t shape[GPUSEG_TENSOR_MAX_DIMS];
    int64_t stride[GPUSEG_TENSOR_MAX_DIMS];
} gpuseg__pk_tensor;

typedef struct gpuseg__pk_obj {
    uint8_t type; /* gpuseg__pk_type */
    union {
        int64_t i; /* INT, BOOL */
        struct {
            const char *s; /* points into the pickle bytes; not terminated */
            size_t n;
        } str;
        struct {
            uint32_t *items;
            uint32_t n, cap;
        } seq; /* TUPLE, LIST, DICT (2 slots per pair) */
        struct {
            uint8_t which; /* gpuseg__pk_global */
            uint8_t dtype; /* gpuseg_tensor_dtype for STORAGE_TYPE */
        } global;
        struct {
            uint8_t dtype;
            const char *key; /* archive record data/<key>; points into the pickle bytes */
            size_t key_len;
            int64_t numel;
        } storage;
        uint32_t tensor; /* index into gpuseg__pickle.tensors */
        double f;        /* FLOAT */
        struct {
            char kind;     /* 'f', 'i', 'u', 'b', 'O', ... (numpy's type character) */
            char order;    /* '<', '>', '|' or '=' (from BUILD; '=' native until then) */
            uint32_t size; /* bytes per element (the number in the descr: 'f8' -> 8) */
        } dtype;
        struct {
            uint32_t dtype; /* object index of a DTYPE (valid once built) */
            uint32_t shape; /* object index of the shape tuple (ints) */
            uint32_t data;  /* BYTES (numeric) or LIST (object arrays) */
            uint8_t built;  /* BUILD has set the fields above */
            uint8_t fortran;
        } array;
    } u;
} gpuseg__pk_obj;

typedef struct gpuseg__pickle {
    gpuseg__pk_obj *objs;
    uint32_t n_objs, cap_objs;
    gpuseg__pk_tensor *tensors;
    uint32_t n_tensors, cap_tensors;
    uint32_t root; /* the object STOP returned */
    size_t n_items;
} gpuseg__pickle;

/* Parses data[0..n) into *p (free with gpuseg__pickle_free, also after a failure). path names
 * the file in messages ("<path>: data.pkl: pickle opcode 0x63 ... at offset 12"). Strings in
 * the result point into data, which must outlive *p. */
gpuseg_status gpuseg__pickle_parse(gpuseg__pickle *p, const unsigned char *data, size_t n,
                                   const char *path);
/* The same for a stream of the given mode; what names the stream in messages ("data.pkl"). */
gpuseg_status gpuseg__pickle_parse_mode(gpuseg__pickle *p, const unsigned char *data, size_t n,
                                        const char *path, const char *what,
                                        gpuseg__pickle_mode mode);
void gpuseg__pickle_free(gpuseg__pickle *p);

#endif
