/* tests/fuzz/fuzz_pickle.c: libFuzzer target for the restricted pickle reader
 * (src/model/pickle.h) on arbitrary data.pkl streams: opcode decoding, the stack, marks, memo,
 * globals, persistent ids and tensor rebuilding. The resulting graph is walked to check that
 * every index it holds is in range. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include "fuzz_common.h"

#include "fuzz_check.h"
#include "model/pickle.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_INPUT)
        return 0;
    gpuseg__pickle p;
    gpuseg_status st = gpuseg__pickle_parse(&p, data, size, "fuzz.pkl");
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
            default:
                break;
            }
        }
    }
    gpuseg__pickle_free(&p);
    return 0;
}
