/* model/statedict.h: a PyTorch state dict read from a torch.save file (ZIP archive + pickle +
 * raw storages) into named tensors with float32 values. Knows nothing about CPnet; model.c
 * validates the names and shapes. Internal to the model module (and its tests). */
#ifndef GPUSEG_MODEL_STATEDICT_H
#define GPUSEG_MODEL_STATEDICT_H

#include <stddef.h>
#include <stdint.h>

#include "gpuseg/model.h"

/* Most entries in a state dict (a CPnet has 313). */
#define GPUSEG__SD_MAX_TENSORS 65536u

/* Skip CRC-32 checks: only for tests that mutate data.pkl to exercise the pickle reader. */
#define GPUSEG__SD_NO_CRC 1u

typedef struct gpuseg__sd_tensor {
    const char *name; /* terminated; in the state dict's name arena */
    gpuseg_tensor_dtype dtype;
    int ndim;
    int64_t shape[GPUSEG_TENSOR_MAX_DIMS];
    size_t numel;
    float *data; /* contiguous float32, 64-byte aligned; NULL for integer/bool dtypes */
} gpuseg__sd_tensor;

typedef struct gpuseg__state_dict {
    gpuseg__sd_tensor *t; /* file order */
    size_t n;
    gpuseg__sd_tensor **by_name; /* pointers into t, sorted by name */
    char *names;
    float *values;
    int big_endian; /* the file's byteorder record said "big" (values were swapped) */
} gpuseg__state_dict;

/* Reads the state dict in buf[0..size), the bytes of the file `path` (named in messages).
 * The result owns copies of everything it needs; buf may be freed afterwards. Free with
 * gpuseg__sd_free (also after a failure). */
gpuseg_status gpuseg__sd_load_mem(const unsigned char *buf, size_t size, const char *path,
                                  unsigned flags, gpuseg__state_dict *sd);
/* Reads the file (at most GPUSEG_MODEL_MAX_FILE_BYTES) and calls gpuseg__sd_load_mem. */
gpuseg_status gpuseg__sd_load_file(const char *path, unsigned flags, gpuseg__state_dict *sd);
void gpuseg__sd_free(gpuseg__state_dict *sd);

/* gpuseg_model_load from bytes already in memory (path only names them in messages), with
 * statedict flags; for tests (truncation and mutation loops without files). */
gpuseg_status gpuseg__model_load_mem(const unsigned char *buf, size_t n, const char *path,
                                     unsigned flags, gpuseg_model **out);

/* Index of the tensor named name, or -1. */
long gpuseg__sd_find(const gpuseg__state_dict *sd, const char *name);

#endif
