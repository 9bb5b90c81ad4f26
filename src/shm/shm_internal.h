/* shm/shm_internal.h: what the shared-memory files share: the byte offsets of the version-1
 * header (docs/shm.md is the specification; these must match its table), little-endian field
 * access, the handle structure, name checks and the producer-liveness test. Never installed. */
#ifndef GPUSEG_SHM_INTERNAL_H
#define GPUSEG_SHM_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/internal.h"
#include "gpuseg/shm.h"

/* Header field offsets (bytes from the start of the segment). */
enum {
    GPUSEG__SHM_OFF_MAGIC = 0,          /* u8[8]  "GPUSEGSH" */
    GPUSEG__SHM_OFF_VERSION = 8,        /* u32    1 */
    GPUSEG__SHM_OFF_HEADER_SIZE = 12,   /* u32    128 */
    GPUSEG__SHM_OFF_STATE = 16,         /* u32    0 writing, 1 ready, 2 failed (atomic) */
    GPUSEG__SHM_OFF_DTYPE = 20,         /* u32    2 uint16, 3 uint32 */
    GPUSEG__SHM_OFF_NDIM = 24,          /* u32    1..4 */
    GPUSEG__SHM_OFF_CHECKSUM_KIND = 28, /* u32    1 = CRC-32 (zlib) */
    GPUSEG__SHM_OFF_SHAPE = 32,         /* u64[4] */
    GPUSEG__SHM_OFF_DATA_OFFSET = 64,   /* u64 */
    GPUSEG__SHM_OFF_DATA_BYTES = 72,    /* u64 */
    GPUSEG__SHM_OFF_N_MASKS = 80,       /* u64 */
    GPUSEG__SHM_OFF_DIAMETER = 88,      /* f64 */
    GPUSEG__SHM_OFF_PID = 96,           /* u64 */
    GPUSEG__SHM_OFF_START = 104,        /* u64    producer start, clock ticks after boot */
    GPUSEG__SHM_OFF_CHECKSUM = 112,     /* u32 */
    GPUSEG__SHM_OFF_RESERVED = 116,     /* u32    0 */
    GPUSEG__SHM_OFF_CREATED = 120       /* u64    ns since the epoch */
};

#define GPUSEG__SHM_CHECKSUM_CRC32 1u
/* The header page: data_offset is at least this and a multiple of it. */
#define GPUSEG__SHM_PAGE 4096u
/* Largest data_offset a reader accepts (refuses absurd offsets before mapping). */
#define GPUSEG__SHM_MAX_DATA_OFFSET (1u << 20)
#define GPUSEG__SHM_PREFIX          "/gpuseg-"

/* A name prefix for new segments must be "/gpuseg-" followed by [A-Za-z0-9._-], short enough
 * for 16 hex digits after it; otherwise GPUSEG_INVALID_ARGUMENT with the message
 * "<what>'<prefix>' is not /gpuseg- followed by ..." (what names the setting, e.g.
 * "GPUSEG_SHM_PREFIX="). */
gpuseg_status gpuseg__shm_check_name_prefix(const char *what, const char *prefix);
/* name = prefix + 16 hex digits from getrandom (64 bits: a collision with a live segment is
 * practically impossible; creators use O_EXCL anyway). name holds GPUSEG_SHM_NAME_MAX. */
gpuseg_status gpuseg__shm_random_name(const char *prefix, char *name);

struct gpuseg_shm {
    gpuseg_shm_info info;
    unsigned char *map; /* whole segment */
    size_t map_bytes;
    bool writable; /* producer handle */
    bool finished; /* producer handle published or aborted */
};

static inline uint32_t gpuseg__ld32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t gpuseg__ld64(const unsigned char *p) {
    return (uint64_t)gpuseg__ld32(p) | (uint64_t)gpuseg__ld32(p + 4) << 32;
}
static inline void gpuseg__st32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static inline void gpuseg__st64(unsigned char *p, uint64_t v) {
    gpuseg__st32(p, (uint32_t)v);
    gpuseg__st32(p + 4, (uint32_t)(v >> 32));
}
static inline double gpuseg__ldf64(const unsigned char *p) {
    uint64_t u = gpuseg__ld64(p);
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}
static inline void gpuseg__stf64(unsigned char *p, double d) {
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    gpuseg__st64(p, u);
}

/* Normalises a segment name to "/gpuseg-..." in out (GPUSEG_SHM_NAME_MAX bytes); accepts it
 * with or without the leading '/'. GPUSEG_INVALID_ARGUMENT with a message otherwise. */
gpuseg_status gpuseg__shm_name(const char *name, char *out);

/* Decodes and checks a header snapshot (GPUSEG_SHM_HEADER_SIZE bytes) against the segment size:
 * every field, with overflow-checked arithmetic. Fills *info (name and segment_bytes excluded).
 * Messages start with the segment name. */
gpuseg_status gpuseg__shm_decode(const char *name, const unsigned char *hdr, uint64_t segment_bytes,
                                 gpuseg_shm_info *info);

/* Start time of a process in clock ticks after boot (field 22 of /proc/PID/stat); 0 when it
 * cannot be read. *zombie (may be NULL) is set when the process is a zombie or dead. */
uint64_t gpuseg__proc_start_time(int64_t pid, bool *zombie);

/* 1 when process pid exists, is not a zombie and (when start != 0 and /proc is readable) has
 * that start time; 0 when it is gone; -1 when pid is not a valid process id. */
int gpuseg__shm_producer_alive(int64_t pid, uint64_t start);

#endif
