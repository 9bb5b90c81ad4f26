/* io/rois.c: the ImageJ/Fiji ROI set Cellpose's --save_rois writes (io.save_rois: one ROI per
 * mask outline, written through roifile's ImagejRoi.frompoints + roiwrite) as a ZIP archive of
 * stored entries. Learnt from ImageJ's RoiDecoder and roifile (the .roi layout) and from the
 * ZIP application note (the archive); see docs/io.md.
 *
 * One .roi (all integers big-endian):
 *   header 1 (64 bytes): 0 "Iout", 4 version (u16), 6 type (u8), 8 top, 10 left, 12 bottom,
 *   14 right (i16), 16 vertex count (u16), 18..33 line/rectangle floats (0), 34 stroke width,
 *   36 shape-ROI size, 40 stroke colour, 44 fill colour, 48 subtype, 50 options, 52 arrow
 *   style, 53 arrow head, 54 rounded-rect arc, 56 position (i32), 60 header-2 offset (i32);
 *   then the n x offsets, then the n y offsets (i16, relative to left and top);
 *   header 2 (64 bytes): 4 C, 8 Z, 12 T positions, 16 name offset, 20 name length (chars),
 *   24 overlay label colour, 28 font size, 30 group, 31 image opacity, 32 image size,
 *   36 float stroke width, 40 properties offset, 44 properties length, 48 counters offset;
 *   then the name in UTF-16BE. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/outlines.h"
#include "io/io_internal.h"

enum {
    ROI_VERSION = 226,     /* what roifile's frompoints writes */
    ROI_TYPE_FREEHAND = 7, /* frompoints' type */
    ROI_OPTIONS = 8 | 32,  /* OVERLAY_LABELS | OVERLAY_BACKGROUNDS */
    ROI_MAX_COORD = 60000, /* roifile/ImageJ: larger integers need subpixel coordinates */
    DOS_DATE = (0 << 9) | (1 << 5) | 1 /* 1980-01-01: entries carry no wall-clock time, so
                                        * the same labels give the same bytes */
};

static void be16(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}
static void be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
static void le16(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void le32(unsigned char *p, uint32_t v) {
    le16(p, v & 0xffff);
    le16(p + 2, v >> 16);
}
static void le64(unsigned char *p, uint64_t v) {
    le32(p, (uint32_t)v);
    le32(p + 4, (uint32_t)(v >> 32));
}

/* The .roi bytes of polygon i into buf (sized by roi_size). */
static size_t roi_size(size_t nv, size_t name_len) {
    return 64 + 4 * nv + 64 + 2 * name_len;
}

static void roi_bytes(const gpuseg_polygons *p, uint32_t i, const char *name, unsigned char *b) {
    const size_t s = p->start[i], nv = p->start[i + 1] - s;
    const int32_t *xy = p->xy + 2 * s;
    int32_t l = xy[0], t = xy[1], r = xy[0], bo = xy[1];
    for (size_t k = 1; k < nv; k++) {
        l = xy[2 * k] < l ? xy[2 * k] : l;
        r = xy[2 * k] > r ? xy[2 * k] : r;
        t = xy[2 * k + 1] < t ? xy[2 * k + 1] : t;
        bo = xy[2 * k + 1] > bo ? xy[2 * k + 1] : bo;
    }
    const size_t nl = strlen(name), h2 = 64 + 4 * nv;
    memset(b, 0, roi_size(nv, nl));
    memcpy(b, "Iout", 4);
    be16(b + 4, ROI_VERSION);
    b[6] = ROI_TYPE_FREEHAND;
    be16(b + 8, (uint32_t)t);
    be16(b + 10, (uint32_t)l);
    be16(b + 12, (uint32_t)(bo + 1));
    be16(b + 14, (uint32_t)(r + 1));
    be16(b + 16, (uint32_t)nv);
    be16(b + 50, ROI_OPTIONS);
    be32(b + 60, (uint32_t)h2);
    for (size_t k = 0; k < nv; k++) {
        be16(b + 64 + 2 * k, (uint32_t)(xy[2 * k] - l));
        be16(b + 64 + 2 * nv + 2 * k, (uint32_t)(xy[2 * k + 1] - t));
    }
    unsigned char *q = b + h2;
    be32(q + 16, (uint32_t)(h2 + 64)); /* name offset */
    be32(q + 20, (uint32_t)nl);        /* name length in UTF-16 units */
    for (size_t k = 0; k < nl; k++)
        be16(q + 64 + 2 * k, (unsigned char)name[k]);
}

/* The fields that a ZIP local header (from offset 10) and a central directory entry (from 12)
 * share: time 0, DOS_DATE, CRC-32, both sizes (stored), the name's length. */
static void zip_entry_fields(unsigned char *p, uint32_t crc, uint32_t size, uint32_t name_len) {
    le16(p, 0);
    le16(p + 2, DOS_DATE);
    le32(p + 4, crc);
    le32(p + 8, size);
    le32(p + 12, size);
    le16(p + 16, name_len);
}

/* Appends the ZIP entries of p's non-empty polygons (local header + .roi each) to z, whose first
 * byte is at offset `base` of the archive, and their central directory entries to cd; *count
 * grows by the entries added. The checks of gpuseg_polygons_write_rois (path names the file). */
gpuseg_status gpuseg__rois_append(const char *path, const gpuseg_polygons *p, uint64_t base,
                                  gpuseg__membuf *z, gpuseg__membuf *cd, uint64_t *count) {
    size_t biggest = 0;
    for (uint32_t i = 0; i < p->n; i++) {
        size_t nv = p->start[i + 1] - p->start[i];
        if (!nv)
            continue;
        if (nv > 65535)
            return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                "%s: the outline of label %u has %zu vertices; an ImageJ ROI "
                                "holds at most 65535",
                                path, p->label[i], nv);
        for (size_t k = p->start[i]; k < p->start[i + 1]; k++)
            if (p->xy[2 * k] < 0 || p->xy[2 * k + 1] < 0 || p->xy[2 * k] > ROI_MAX_COORD ||
                p->xy[2 * k + 1] > ROI_MAX_COORD)
                return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                    "%s: label %u has a vertex at (%d, %d), outside ImageJ's "
                                    "integer coordinates 0..%d",
                                    path, p->label[i], (int)p->xy[2 * k], (int)p->xy[2 * k + 1],
                                    ROI_MAX_COORD);
        biggest = nv > biggest ? nv : biggest;
    }
    unsigned char *roi = malloc(roi_size(biggest, 16));
    if (!roi)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    gpuseg_status st = GPUSEG_OK;
    char name[24], entry[32];
    for (uint32_t i = 0; i < p->n && !z->failed && !cd->failed; i++) {
        size_t nv = p->start[i + 1] - p->start[i];
        if (!nv)
            continue;
        snprintf(name, sizeof name, "%04u", p->label[i]);
        int elen = snprintf(entry, sizeof entry, "%s.roi", name);
        size_t rlen = roi_size(nv, strlen(name));
        roi_bytes(p, i, name, roi);
        uint32_t crc = gpuseg__crc32(0, roi, rlen);
        if (base + z->len > 0xffffffffu) {
            st = gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                              "%s: the ROI archive passes 4 GiB (not supported)", path);
            break;
        }
        unsigned char h[46];
        memset(h, 0, sizeof h);
        le32(h, 0x04034b50);
        le16(h + 4, 20); /* version needed: 2.0 */
        zip_entry_fields(h + 10, crc, (uint32_t)rlen, (uint32_t)elen);
        const uint32_t local = (uint32_t)(base + z->len);
        gpuseg__membuf_put(z, h, 30);
        gpuseg__membuf_put(z, entry, elen);
        gpuseg__membuf_put(z, roi, (int)rlen);
        gpuseg__rois_central(h, local);
        gpuseg__membuf_put(cd, h, 46);
        gpuseg__membuf_put(cd, entry, elen);
        ++*count;
    }
    free(roi);
    if (st == GPUSEG_OK && (z->failed || cd->failed))
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    return st;
}

void gpuseg__rois_central(unsigned char h[46], uint32_t local) {
    /* h holds the local header (30 bytes): its shared fields move to the central entry's place */
    unsigned char f[18];
    memcpy(f, h + 10, sizeof f);
    memset(h, 0, 46);
    le32(h, 0x02014b50);
    le16(h + 4, 20); /* made by: 2.0, MS-DOS attributes */
    le16(h + 6, 20);
    memcpy(h + 12, f, sizeof f);
    le32(h + 42, local);
}

gpuseg_status gpuseg__rois_end(const char *path, uint64_t count, uint64_t cd_off, uint64_t cd_len,
                               gpuseg__membuf *z) {
    if (cd_off + cd_len > 0xffffffffu || cd_len > 0x7fffffff)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: the ROI archive passes 4 GiB (not supported)", path);
    unsigned char e[56 + 20 + 22];
    memset(e, 0, sizeof e);
    size_t elen = 0;
    if (count > 0xffff) { /* Zip64 end record + locator carry the entry count */
        le32(e, 0x06064b50);
        le64(e + 4, 44);
        le16(e + 12, 45);
        le16(e + 14, 45);
        le64(e + 24, count);
        le64(e + 32, count);
        le64(e + 40, cd_len);
        le64(e + 48, cd_off);
        le32(e + 56, 0x07064b50);
        le64(e + 64, cd_off + cd_len);
        le32(e + 72, 1);
        elen = 76;
    }
    le32(e + elen, 0x06054b50);
    le16(e + elen + 8, count > 0xffff ? 0xffff : (uint32_t)count);
    le16(e + elen + 10, count > 0xffff ? 0xffff : (uint32_t)count);
    le32(e + elen + 12, (uint32_t)cd_len);
    le32(e + elen + 16, (uint32_t)cd_off);
    gpuseg__membuf_put(z, e, (int)(elen + 22));
    return z->failed ? gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path)
                     : GPUSEG_OK;
}

gpuseg_status gpuseg_polygons_write_rois(const char *path, const gpuseg_polygons *p) {
    gpuseg__clear_error(NULL);
    gpuseg_status st = gpuseg__polygons_check(path, p);
    if (st != GPUSEG_OK)
        return st;
    /* Archive in memory: local header + data per entry, then the central directory. */
    gpuseg__membuf z = {0}, cd = {0};
    uint64_t count = 0;
    if ((st = gpuseg__rois_append(path, p, 0, &z, &cd, &count)) != GPUSEG_OK)
        goto done;
    const uint64_t cd_off = z.len, cd_len = cd.len;
    if (cd_off + cd_len > 0xffffffffu || cd_len > 0x7fffffff) {
        st = gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                          "%s: the ROI archive passes 4 GiB (not supported)", path);
        goto done;
    }
    gpuseg__membuf_put(&z, cd.buf, (int)cd.len);
    if ((st = gpuseg__rois_end(path, count, cd_off, cd_len, &z)) != GPUSEG_OK)
        goto done;
    st = gpuseg__write_file_atomic(NULL, path, z.buf, z.len);
done:
    free(z.buf);
    free(cd.buf);
    return st;
}
