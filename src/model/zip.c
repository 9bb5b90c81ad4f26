/* model/zip.c: read-only ZIP parsing for torch.save archives: end-of-central-directory search
 * (with the Zip64 locator and record torch's miniz writer always adds), central-directory entries
 * (with Zip64 extra fields), local headers, and the CRC-32 check (zlib's, through gpuseg__crc32).
 * Hand-written on purpose rather than libzip (docs/architecture.md). All arithmetic on file offsets
 * is done in uint64_t and checked against the buffer size, so a corrupt or hostile file fails
 * cleanly. */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "model/zip.h"

static uint16_t rd16(const unsigned char *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) {
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

/* True when [off, off + len) lies inside [0, limit); overflow-safe. */
static int span_ok(uint64_t off, uint64_t len, uint64_t limit) {
    return off <= limit && len <= limit - off;
}

/* ---- central directory ---- */

static int entry_cmp(const void *a, const void *b) {
    const gpuseg__zip_entry *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c)
        return c;
    return x->name_len < y->name_len ? -1 : x->name_len > y->name_len;
}

/* Finds the end-of-central-directory record and returns the central directory's offset, size
 * and entry count, taking the Zip64 record when a locator precedes the classic record. */
static gpuseg_status find_cd(const gpuseg__zip *z, uint64_t *cd_off, uint64_t *cd_size,
                             uint64_t *count, uint64_t *cd_end_limit) {
    const unsigned char *b = z->buf;
    size_t size = z->size;
    if (size < 22)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: file too short for a ZIP archive (%zu bytes)",
                            z->path, size);
    /* The record is 22 bytes plus a comment of at most 65535 bytes, so it starts in the last
     * 65557 bytes; scan backwards for its signature with a consistent comment length. */
    size_t lo = size > 65557 ? size - 65557 : 0;
    size_t eocd = (size_t)-1;
    for (size_t p = size - 22 + 1; p-- > lo;) {
        if (b[p] == 'P' && b[p + 1] == 'K' && b[p + 2] == 5 && b[p + 3] == 6 &&
            (uint64_t)p + 22 + rd16(b + p + 20) <= size) {
            eocd = p;
            break;
        }
    }
    if (eocd == (size_t)-1)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: no ZIP end-of-central-directory record (truncated file?)",
                            z->path);
    const unsigned char *e = b + eocd;
    if (rd16(e + 4) != 0 || rd16(e + 6) != 0)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: multi-disk ZIP archives are not supported", z->path);
    *count = rd16(e + 10);
    *cd_size = rd32(e + 12);
    *cd_off = rd32(e + 16);
    *cd_end_limit = eocd;
    /* Zip64 locator: 20 bytes right before the classic record. */
    if (eocd >= 20 && rd32(b + eocd - 20) == 0x07064b50u) {
        const unsigned char *loc = b + eocd - 20;
        uint64_t z64 = rd64(loc + 8);
        if (rd32(loc + 4) != 0 || rd32(loc + 16) > 1)
            return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                "%s: multi-disk ZIP archives are not supported", z->path);
        if (!span_ok(z64, 56, eocd - 20) || rd32(b + z64) != 0x06064b50u)
            return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                "%s: Zip64 end-of-central-directory locator points outside the "
                                "file (truncated or corrupt)",
                                z->path);
        const unsigned char *r = b + z64;
        if (rd32(r + 16) != 0 || rd32(r + 20) != 0)
            return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                "%s: multi-disk ZIP archives are not supported", z->path);
        *count = rd64(r + 32);
        *cd_size = rd64(r + 40);
        *cd_off = rd64(r + 48);
        *cd_end_limit = z64;
    } else if (*count == 0xFFFF || *cd_size == 0xFFFFFFFFu || *cd_off == 0xFFFFFFFFu) {
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: ZIP end record needs a Zip64 record, which is missing", z->path);
    }
    if (!span_ok(*cd_off, *cd_size, *cd_end_limit))
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: ZIP central directory (offset %llu, %llu bytes) lies outside the "
                            "file (truncated or corrupt)",
                            z->path, (unsigned long long)*cd_off, (unsigned long long)*cd_size);
    if (*count > GPUSEG__ZIP_MAX_ENTRIES)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "%s: ZIP archive has %llu entries (limit %u)",
                            z->path, (unsigned long long)*count, GPUSEG__ZIP_MAX_ENTRIES);
    if (*count * 46 > *cd_size)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: ZIP central directory of %llu bytes cannot hold %llu entries",
                            z->path, (unsigned long long)*cd_size, (unsigned long long)*count);
    return GPUSEG_OK;
}

/* Replaces saturated 32-bit fields by their values in the Zip64 extra field (id 0x0001), which
 * lists, in this order, only those that are saturated. */
static gpuseg_status zip64_extra(const gpuseg__zip *z, const unsigned char *x, size_t xlen,
                                 gpuseg__zip_entry *en, int need_u, int need_c, int need_o) {
    size_t p = 0;
    while (p + 4 <= xlen) {
        uint16_t id = rd16(x + p), len = rd16(x + p + 2);
        if (len > xlen - p - 4)
            break;
        if (id == 1) {
            const unsigned char *f = x + p + 4;
            size_t need = 8u * (size_t)(need_u + need_c + need_o), q = 0;
            if (len < need)
                break;
            if (need_u)
                en->usize = rd64(f + q), q += 8;
            if (need_c)
                en->csize = rd64(f + q), q += 8;
            if (need_o)
                en->local_offset = rd64(f + q);
            return GPUSEG_OK;
        }
        p += 4u + len;
    }
    return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: ZIP entry '%.*s' lacks its Zip64 extra field",
                        z->path, (int)(en->name_len > 200 ? 200 : en->name_len), en->name);
}

gpuseg_status gpuseg__zip_open(gpuseg__zip *z, const unsigned char *buf, size_t size,
                               const char *path) {
    memset(z, 0, sizeof *z);
    z->buf = buf;
    z->size = size;
    z->path = path;
    uint64_t cd_off = 0, cd_size = 0, count = 0, cd_limit = 0;
    gpuseg_status st = find_cd(z, &cd_off, &cd_size, &count, &cd_limit);
    if (st != GPUSEG_OK)
        return st;
    if (count == 0)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: ZIP archive is empty", path);
    z->entries = calloc((size_t)count, sizeof *z->entries);
    if (!z->entries)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    uint64_t p = cd_off, end = cd_off + cd_size;
    for (uint64_t i = 0; i < count; i++) {
        if (!span_ok(p, 46, end) || rd32(buf + p) != 0x02014b50u) {
            st =
                gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: ZIP central directory entry %llu is corrupt",
                             path, (unsigned long long)i);
            goto fail;
        }
        const unsigned char *c = buf + p;
        gpuseg__zip_entry *en = &z->entries[i];
        size_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
        if (!span_ok(p + 46, (uint64_t)nlen + xlen + clen, end)) {
            st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                              "%s: ZIP central directory entry %llu overruns the directory", path,
                              (unsigned long long)i);
            goto fail;
        }
        en->flags = rd16(c + 8);
        en->method = rd16(c + 10);
        en->crc32 = rd32(c + 16);
        en->csize = rd32(c + 20);
        en->usize = rd32(c + 24);
        en->local_offset = rd32(c + 42);
        en->name = (const char *)c + 46;
        en->name_len = nlen;
        int nu = en->usize == 0xFFFFFFFFu, nc = en->csize == 0xFFFFFFFFu,
            no = en->local_offset == 0xFFFFFFFFu;
        if (nu || nc || no) {
            st = zip64_extra(z, c + 46 + nlen, xlen, en, nu, nc, no);
            if (st != GPUSEG_OK)
                goto fail;
        }
        if (i == 0) {
            z->first_name = en->name;
            z->first_len = nlen;
        }
        p += 46u + nlen + xlen + clen;
    }
    z->n_entries = (size_t)count;
    qsort(z->entries, z->n_entries, sizeof *z->entries, entry_cmp);
    for (size_t i = 1; i < z->n_entries; i++)
        if (entry_cmp(&z->entries[i - 1], &z->entries[i]) == 0) {
            const gpuseg__zip_entry *en = &z->entries[i];
            st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: ZIP archive has two entries named '%.*s'",
                              path, (int)(en->name_len > 200 ? 200 : en->name_len), en->name);
            goto fail;
        }
    return GPUSEG_OK;
fail:
    gpuseg__zip_close(z);
    return st;
}

void gpuseg__zip_close(gpuseg__zip *z) {
    free(z->entries);
    z->entries = NULL;
    z->n_entries = 0;
}

long gpuseg__zip_find(const gpuseg__zip *z, const char *name, size_t len) {
    size_t lo = 0, hi = z->n_entries;
    gpuseg__zip_entry key = {.name = name, .name_len = len};
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = entry_cmp(&key, &z->entries[mid]);
        if (c == 0)
            return (long)mid;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

gpuseg_status gpuseg__zip_data(const gpuseg__zip *z, size_t i, int verify_crc,
                               const unsigned char **data, size_t *n) {
    const gpuseg__zip_entry *en = &z->entries[i];
    int nl = (int)(en->name_len > 200 ? 200 : en->name_len);
    if (en->flags & 1)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED, "%s: ZIP entry '%.*s' is encrypted", z->path,
                            nl, en->name);
    if (en->method != 0)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: ZIP entry '%.*s' is compressed (method %u); torch.save writes "
                            "uncompressed entries: re-save the model with torch.save or re-zip "
                            "it with 'zip -0'",
                            z->path, nl, en->name, (unsigned)en->method);
    if (en->csize != en->usize)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: ZIP entry '%.*s' is stored but its sizes differ (%llu vs %llu)",
                            z->path, nl, en->name, (unsigned long long)en->csize,
                            (unsigned long long)en->usize);
    uint64_t off = en->local_offset;
    if (!span_ok(off, 30, z->size) || rd32(z->buf + off) != 0x04034b50u)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: ZIP local header of '%.*s' is missing (truncated or corrupt)",
                            z->path, nl, en->name);
    const unsigned char *l = z->buf + off;
    uint64_t lname = rd16(l + 26), lextra = rd16(l + 28);
    if (!span_ok(off + 30, lname + lextra, z->size) || lname != en->name_len ||
        memcmp(l + 30, en->name, en->name_len) != 0)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: ZIP local header of '%.*s' does not match the central directory",
                            z->path, nl, en->name);
    uint64_t doff = off + 30 + lname + lextra;
    if (!span_ok(doff, en->csize, z->size) || en->csize > SIZE_MAX)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "%s: data of ZIP entry '%.*s' (%llu bytes at %llu) lies outside the "
                            "file (truncated?)",
                            z->path, nl, en->name, (unsigned long long)en->csize,
                            (unsigned long long)doff);
    *data = z->buf + doff;
    *n = (size_t)en->csize;
    if (verify_crc) {
        uint32_t crc = gpuseg__crc32(0, *data, *n);
        if (crc != en->crc32)
            return gpuseg__fail(NULL, GPUSEG_CHECKSUM,
                                "%s: ZIP entry '%.*s' fails its CRC-32 check (0x%08x, expected "
                                "0x%08x): the file is corrupt",
                                z->path, nl, en->name, crc, en->crc32);
    }
    return GPUSEG_OK;
}
