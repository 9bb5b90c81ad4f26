/* tests/fuzz/fuzz_pickle.c: libFuzzer target for the restricted pickle reader
 * (src/model/pickle.h) on arbitrary data.pkl streams: opcode decoding, the stack, marks, memo,
 * globals, persistent ids and tensor rebuilding. The resulting graph is walked to check that
 * every index it holds is in range. Every input is parsed in both modes (torch state dict and
 * numpy size model); inputs that start like a .npy also go through the size-model loader
 * (src/model/size_load.c). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include "fuzz_common.h"

#include <math.h>
#include <string.h>

#include "fuzz_check.h"
#include "model/pickle.h"
#include "model/size_internal.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

static void fuzz_pickle_mode(const uint8_t *data, size_t size, gpuseg__pickle_mode mode) {
    gpuseg__pickle p;
    gpuseg_status st = gpuseg__pickle_parse_mode(&p, data, size, "fuzz.pkl", "data.pkl", mode);
    fuzz_check_status(st, "fuzz.pkl");
    if (st == GPUSEG_OK) {
        if (p.root >= p.n_objs)
            abort();
        for (uint32_t i = 0; i < p.n_objs; i++) {
            const gpuseg__pk_obj *o = &p.objs[i];
            switch (o->type) {
            case GPUSEG__PK_TUPLE:
            case GPUSEG__PK_LIST:
            case GPUSEG__PK_DICT:
                for (uint32_t k = 0; k < o->u.seq.n; k++)
                    if (o->u.seq.items[k] >= p.n_objs)
                        abort();
                break;
            case GPUSEG__PK_STR:
                if (o->u.str.n && ((const uint8_t *)o->u.str.s < data ||
                                   (const uint8_t *)o->u.str.s + o->u.str.n > data + size))
                    abort();
                break;
            case GPUSEG__PK_TENSOR:
                if (o->u.tensor >= p.n_tensors || p.tensors[o->u.tensor].storage >= p.n_objs ||
                    p.objs[p.tensors[o->u.tensor].storage].type != GPUSEG__PK_STORAGE)
                    abort();
                break;
            case GPUSEG__PK_ARRAY:
                if (o->u.array.built &&
                    (o->u.array.dtype >= p.n_objs || o->u.array.shape >= p.n_objs ||
                     o->u.array.data >= p.n_objs ||
                     p.objs[o->u.array.dtype].type != GPUSEG__PK_DTYPE))
                    abort();
                break;
            default:
                break;
            }
        }
    }
    gpuseg__pickle_free(&p);
}

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_INPUT)
        return 0;
    fuzz_pickle_mode(data, size, GPUSEG__PICKLE_TORCH);
    fuzz_pickle_mode(data, size, GPUSEG__PICKLE_NUMPY);
    if (size >= 6 && memcmp(data, "\x93NUMPY", 6) == 0) {
        gpuseg_size_model *sm = NULL;
        gpuseg_status st = gpuseg__size_model_load_mem(data, size, "fuzz.npy", &sm);
        fuzz_check_status(st, "fuzz.npy");
        if (st == GPUSEG_OK) {
            if (!sm || sm->n == 0 || !(sm->diam_mean > 0))
                abort();
            for (uint32_t i = 0; i < sm->n; i++)
                if (!isfinite(sm->A[i]) || !isfinite(sm->smean[i]))
                    abort();
        } else if (sm) {
            abort();
        }
        gpuseg_size_model_free(sm);
    }
    return 0;
}
