/* tests/fuzz/fuzz_zip.c: libFuzzer target for the model module's ZIP reader (src/model/zip.h):
 * central directory and Zip64 parsing, then, for every entry, the local-header check, data
 * bounds and CRC-32, and lookup by name. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include "fuzz_common.h"

#include "fuzz_check.h"
#include "model/zip.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_INPUT)
        return 0;
    gpuseg__zip z;
    gpuseg_status st = gpuseg__zip_open(&z, data, size, "fuzz.zip");
    fuzz_check_status(st, "fuzz.zip");
    if (st != GPUSEG_OK)
        return 0;
    volatile unsigned char sink = 0;
    for (size_t i = 0; i < z.n_entries; i++) {
        const gpuseg__zip_entry *e = &z.entries[i];
        /* names point into the buffer: reading them must stay inside it */
        for (size_t k = 0; k < e->name_len; k++)
            sink ^= (unsigned char)e->name[k];
        if (gpuseg__zip_find(&z, e->name, e->name_len) < 0)
            abort();
        const unsigned char *p = NULL;
        size_t n = 0;
        st = gpuseg__zip_data(&z, i, 1, &p, &n);
        fuzz_check_status(st, "fuzz.zip");
        if (st == GPUSEG_OK) {
            if (n && (p < data || p + n > data + size))
                abort();
            for (size_t k = 0; k < n; k++)
                sink ^= p[k];
        }
    }
    (void)sink;
    gpuseg__zip_close(&z);
    return 0;
}
