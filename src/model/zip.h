/* model/zip.h: a minimal read-only ZIP reader for the archives torch.save writes (stored
 * entries, data descriptors, Zip64 end records and extra fields), working on a buffer that
 * holds the whole file. Every offset and size is checked against the buffer before use; nothing
 * is decompressed. Internal to the model module (and its tests). */
#ifndef GPUSEG_MODEL_ZIP_H
#define GPUSEG_MODEL_ZIP_H

#include <stddef.h>
#include <stdint.h>

#include "gpuseg/common.h"

/* At most this many entries (a CPnet file has 319; the cap keeps the index small). */
#define GPUSEG__ZIP_MAX_ENTRIES 65536u

typedef struct gpuseg__zip_entry {
    const char *name; /* points into the archive buffer, NOT terminated */
    size_t name_len;
    uint16_t method; /* 0 = stored */
    uint16_t flags;
    uint32_t crc32;
    uint64_t csize, usize;
    uint64_t local_offset;
} gpuseg__zip_entry;

typedef struct gpuseg__zip {
    const unsigned char *buf;
    size_t size;
    const char *path;           /* for messages */
    gpuseg__zip_entry *entries; /* sorted by name (for lookup) */
    size_t n_entries;
    const char *first_name; /* the first central-directory entry (torch's root folder) */
    size_t first_len;
} gpuseg__zip;

/* Parses the central directory of the ZIP archive in buf[0..size). The archive keeps pointers
 * into buf, which must outlive it. path names the file in messages. Free with
 * gpuseg__zip_close. Fails with GPUSEG_FORMAT (malformed), GPUSEG_UNSUPPORTED (multi-disk) or
 * GPUSEG_TOO_LARGE (too many entries). */
gpuseg_status gpuseg__zip_open(gpuseg__zip *z, const unsigned char *buf, size_t size,
                               const char *path);
void gpuseg__zip_close(gpuseg__zip *z);

/* Index of the entry named name (len bytes), or -1. */
long gpuseg__zip_find(const gpuseg__zip *z, const char *name, size_t len);

/* Locates the data of entry i: checks the local header, refuses compressed or encrypted entries
 * (GPUSEG_UNSUPPORTED), bounds-checks the data and, when verify_crc, checks its CRC-32
 * (GPUSEG_CHECKSUM). *data points into the archive buffer. */
gpuseg_status gpuseg__zip_data(const gpuseg__zip *z, size_t i, int verify_crc,
                               const unsigned char **data, size_t *n);

#endif
