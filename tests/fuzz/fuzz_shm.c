/* tests/fuzz/fuzz_shm.c: libFuzzer target for the shared-memory header validator
 * (gpuseg__shm_decode, src/shm/shm_internal.h), which every consumer runs on a header written
 * by another process before trusting any of it. Input: 8 bytes of segment size (little-endian)
 * then the 128-byte header (zero-padded when short). A header it accepts is formatted with
 * gpuseg_shm_json, as a producer would print it. No segment is created. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include <string.h>

#include "fuzz_common.h"

#include "fuzz_check.h"
#include "shm/shm_internal.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
    if (size < 8 || size > 8 + GPUSEG_SHM_HEADER_SIZE)
        return 0;
    uint64_t segment_bytes = gpuseg__ld64(data);
    unsigned char hdr[GPUSEG_SHM_HEADER_SIZE] = {0};
    memcpy(hdr, data + 8, size - 8);
    gpuseg_shm_info info;
    gpuseg_status st = gpuseg__shm_decode("/gpuseg-fuzz", hdr, segment_bytes, &info);
    fuzz_check_status(st, "/gpuseg-fuzz");
    if (st != GPUSEG_OK)
        return 0;
    if (info.data_offset + info.data_bytes > segment_bytes)
        abort();
    snprintf(info.name, sizeof info.name, "%s", "/gpuseg-fuzz");
    char json[512];
    st = gpuseg_shm_json(&info, json, sizeof json);
    if (st != GPUSEG_OK || !memchr(json, 0, sizeof json))
        abort();
    return 0;
}
