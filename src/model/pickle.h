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
    GPUSEG__PK_TENSOR
} gpuseg__pk_type;

/* The only globals the reader resolves. */
typedef enum {
    GPUSEG__PKG_ORDERED_DICT,
    GPUSEG__PKG_REBUILD_TENSOR_V2,
    GPUSEG__PKG_REBUILD_PARAMETER,
    GPUSEG__PKG_STORAGE_TYPE /* torch.<X>Storage; dtype in the object */
} gpuseg__pk_global;

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
void gpuseg__pickle_free(gpuseg__pickle *p);

#endif
