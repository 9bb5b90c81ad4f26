/* tests/fuzz/fuzz_npy.c: libFuzzer target for gpuseg_npy_read (the .npy reader without any
 * image interpretation): header dictionary parsing, dtype/shape/order checks and the data-size
 * check, on arbitrary bytes written to a per-process memfd. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include "fuzz_common.h"

#include "fuzz_check.h"
#include "gpuseg/image.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_INPUT)
        return 0;
    const char *path = fuzz_file(data, size);
    if (!path)
        return 0;
    gpuseg_npy *arr = NULL;
    gpuseg_status st = gpuseg_npy_read(path, &arr);
    fuzz_check_status(st, path);
    if (st == GPUSEG_OK) {
        if (!arr || arr->ndim < 1 || arr->ndim > 4)
            abort();
        size_t n = gpuseg_dtype_size(arr->dtype);
        for (uint32_t i = 0; i < 4; i++) {
            if (arr->shape[i] < 1 || (i >= arr->ndim && arr->shape[i] != 1))
                abort();
            n *= (size_t)arr->shape[i];
        }
        /* the data came from the file, so it cannot be larger than the input */
        if (n > size)
            abort();
        volatile unsigned char sink = 0;
        for (size_t i = 0; i < n; i++)
            sink ^= ((const unsigned char *)arr->data)[i];
        (void)sink;
    } else if (arr) {
        abort();
    }
    gpuseg_npy_free(arr);
    return 0;
}
