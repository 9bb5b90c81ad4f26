/* tests/fuzz/fuzz_model.c: libFuzzer target for the model-file reader: the whole
 * gpuseg_model_load pipeline (ZIP directory, data.pkl pickle, storages, byte order, CPnet
 * name/shape validation) on bytes in memory. CRC-32 checks are skipped (GPUSEG__SD_NO_CRC) so
 * that mutated entries reach the pickle and storage code instead of stopping at the checksum;
 * the checksum path itself is covered by fuzz_zip. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include "fuzz_common.h"

#include "fuzz_check.h"
#include "gpuseg/model.h"
#include "model/statedict.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_INPUT)
        return 0;
    gpuseg_model *m = NULL;
    gpuseg_status st = gpuseg__model_load_mem(data, size, "fuzz.pth", GPUSEG__SD_NO_CRC, &m);
    fuzz_check_status(st, "fuzz.pth");
    if (st != GPUSEG_OK) {
        if (m)
            abort();
        return 0;
    }
    gpuseg_model_info info;
    gpuseg_model_get_info(m, &info);
    volatile float sink = 0;
    for (size_t i = 0; i < info.n_tensors; i++) {
        gpuseg_tensor_info t;
        if (gpuseg_model_tensor_at(m, i, &t) != GPUSEG_OK || !t.name)
            abort();
        gpuseg_tensor_info again;
        if (gpuseg_model_tensor(m, t.name, &again) != GPUSEG_OK)
            abort();
        if (t.data)
            for (size_t k = 0; k < t.numel; k++)
                sink += t.data[k];
    }
    (void)sink;
    gpuseg_model_free(m);
    return 0;
}
