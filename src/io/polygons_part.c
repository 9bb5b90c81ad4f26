/* io/polygons_part.c: the polygon files (text, ImageJ ROI zip, GeoJSON) built piece by piece in
 * a part file that outlives the process (gpuseg/outlines.h): a blockwise run appends the
 * polygons of each block's new masks, journals the part's length, and publishes the finished
 * file at the end. The pieces are made by the whole-file writers' own functions (io/polygons.c,
 * io/rois.c, io/geojson.c), so the published file has their bytes. The ROI zip's central
 * directory is not kept in memory: publishing rebuilds it from the part's local headers. */
#define _DEFAULT_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gpuseg/outlines.h"
#include "io/io_internal.h"

struct gpuseg_polygons_part {
    char *path;
    int fd;
    gpuseg_polygons_format format;
    uint64_t len; /* bytes written */
    int first;    /* GeoJSON: no feature yet */
};

void gpuseg_polygons_part_close(gpuseg_polygons_part *f) {
    if (!f)
        return;
    if (f->fd >= 0)
        close(f->fd);
    free(f->path);
    free(f);
}

/* Writes n bytes at offset off of fd. */
static gpuseg_status put_at(const char *path, int fd, uint64_t off, const void *data, size_t n) {
    const unsigned char *d = data;
    while (n) {
        ssize_t w = pwrite(fd, d, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return gpuseg__fail_write(NULL, path, "write failed", w < 0 ? errno : 0);
        d += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return GPUSEG_OK;
}

/* Reads n bytes at offset off of fd; GPUSEG_FORMAT when the file ends first. */
static gpuseg_status get_at(const char *path, int fd, uint64_t off, void *data, size_t n) {
    unsigned char *d = data;
    while (n) {
        ssize_t r = pread(fd, d, n, (off_t)off);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return gpuseg__fail(NULL, GPUSEG_IO, "%s: read failed: %s", path, strerror(errno));
        if (r == 0)
            return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: ends early (a damaged part file)", path);
        d += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return GPUSEG_OK;
}

gpuseg_status gpuseg_polygons_part_open(const char *part_path, gpuseg_polygons_format format,
                                        uint64_t keep, gpuseg_polygons_part **out) {
    gpuseg__clear_error(NULL);
    if (!out || !part_path || !*part_path)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_polygons_part_open: NULL");
    *out = NULL;
    if (format != GPUSEG_POLYGONS_TXT && format != GPUSEG_POLYGONS_ROIS &&
        format != GPUSEG_POLYGONS_GEOJSON)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "%s: unknown polygon format %d",
                            part_path, (int)format);
    const uint64_t head = format == GPUSEG_POLYGONS_GEOJSON ? strlen(gpuseg__geojson_head) : 0;
    if (keep && keep < head)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: %llu bytes kept, less than the header",
                            part_path, (unsigned long long)keep);
    gpuseg_polygons_part *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(part_path))) {
        free(f);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", part_path);
    }
    f->format = format;
    f->fd = open(part_path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (keep ? 0 : O_TRUNC), 0666);
    gpuseg_status st = GPUSEG_OK;
    struct stat sb;
    if (f->fd < 0) {
        st = gpuseg__fail_write(NULL, part_path, "cannot open", errno);
    } else if (fstat(f->fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        st = gpuseg__fail(NULL, GPUSEG_IO, "%s: not a regular file", part_path);
    } else if ((uint64_t)sb.st_size < keep) {
        st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                          "%s: %llu bytes, shorter than the %llu its journal gives", part_path,
                          (unsigned long long)sb.st_size, (unsigned long long)keep);
    } else if (ftruncate(f->fd, (off_t)keep) != 0) {
        st = gpuseg__fail_write(NULL, part_path, "cannot cut", errno);
    } else if (!keep && head) {
        st = put_at(part_path, f->fd, 0, gpuseg__geojson_head, head);
        keep = head;
    }
    if (st != GPUSEG_OK) {
        gpuseg_polygons_part_close(f);
        return st;
    }
    f->len = keep;
    f->first = keep == head;
    *out = f;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_polygons_part_append(gpuseg_polygons_part *f, const gpuseg_polygons *p) {
    gpuseg__clear_error(NULL);
    if (!f)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_polygons_part_append: NULL");
    gpuseg_status st = gpuseg__polygons_check(f->path, p);
    if (st != GPUSEG_OK)
        return st;
    gpuseg__membuf m = {0}, cd = {0};
    uint64_t count = 0;
    if (f->format == GPUSEG_POLYGONS_TXT)
        gpuseg__polygons_txt_lines(p, &m);
    else if (f->format == GPUSEG_POLYGONS_GEOJSON)
        gpuseg__geojson_features(p, NULL, &f->first, &m);
    else
        st = gpuseg__rois_append(f->path, p, f->len, &m, &cd, &count);
    if (st == GPUSEG_OK && m.failed)
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", f->path);
    if (st == GPUSEG_OK && m.len &&
        (st = put_at(f->path, f->fd, f->len, m.buf, m.len)) == GPUSEG_OK)
        f->len += m.len;
    free(m.buf);
    free(cd.buf); /* rebuilt from the local headers when published */
    return st;
}

gpuseg_status gpuseg_polygons_part_sync(gpuseg_polygons_part *f, uint64_t *length) {
    gpuseg__clear_error(NULL);
    if (!f)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_polygons_part_sync: NULL");
    if (fsync(f->fd) != 0)
        return gpuseg__fail_write(NULL, f->path, "fsync failed", errno);
    if (length)
        *length = f->len;
    return GPUSEG_OK;
}

static uint32_t rd16(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8;
}
static uint32_t rd32(const unsigned char *p) {
    return rd16(p) | rd16(p + 2) << 16;
}

/* Copies bytes [0, n) of the part into af. */
static gpuseg_status copy_part(gpuseg_polygons_part *f, gpuseg__afile *af, unsigned char *buf,
                               size_t cap) {
    gpuseg_status st = GPUSEG_OK;
    for (uint64_t off = 0; off < f->len && st == GPUSEG_OK;) {
        size_t n = f->len - off < cap ? (size_t)(f->len - off) : cap;
        if ((st = get_at(f->path, f->fd, off, buf, n)) == GPUSEG_OK)
            st = gpuseg__afile_write(af, buf, n);
        off += n;
    }
    return st;
}

/* The ZIP central directory and end records of the part's entries, into af. */
static gpuseg_status rois_tail(gpuseg_polygons_part *f, gpuseg__afile *af, const char *path) {
    gpuseg_status st = GPUSEG_OK;
    uint64_t count = 0, cd_len = 0;
    unsigned char h[46], name[64];
    for (uint64_t off = 0; off < f->len && st == GPUSEG_OK;) {
        if ((st = get_at(f->path, f->fd, off, h, 30)) != GPUSEG_OK)
            break;
        const uint32_t nl = rd16(h + 26), size = rd32(h + 18);
        if (rd32(h) != 0x04034b50 || nl > sizeof name || rd16(h + 28) != 0) {
            st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: no ZIP entry at offset %llu", f->path,
                              (unsigned long long)off);
            break;
        }
        if ((st = get_at(f->path, f->fd, off + 30, name, nl)) != GPUSEG_OK)
            break;
        gpuseg__rois_central(h, (uint32_t)off);
        if ((st = gpuseg__afile_write(af, h, 46)) == GPUSEG_OK)
            st = gpuseg__afile_write(af, name, nl);
        cd_len += 46 + nl;
        count++;
        off += 30 + (uint64_t)nl + size;
    }
    if (st != GPUSEG_OK)
        return st;
    gpuseg__membuf e = {0};
    if ((st = gpuseg__rois_end(path, count, f->len, cd_len, &e)) == GPUSEG_OK)
        st = gpuseg__afile_write(af, e.buf, e.len);
    free(e.buf);
    return st;
}

gpuseg_status gpuseg_polygons_part_publish(gpuseg_polygons_part *f, const char *path,
                                           unsigned flags) {
    gpuseg__clear_error(NULL);
    if (!f || !path)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_polygons_part_publish: NULL");
    gpuseg__afile af = {.fd = -1};
    gpuseg_status st = gpuseg__afile_open_ex(NULL, path, flags, &af);
    if (st != GPUSEG_OK)
        return st;
    const size_t cap = 1 << 16;
    unsigned char *buf = malloc(cap);
    if (!buf)
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    if (st == GPUSEG_OK)
        st = copy_part(f, &af, buf, cap);
    free(buf);
    if (st == GPUSEG_OK && f->format == GPUSEG_POLYGONS_GEOJSON)
        st = gpuseg__afile_write(&af, gpuseg__geojson_tail, strlen(gpuseg__geojson_tail));
    if (st == GPUSEG_OK && f->format == GPUSEG_POLYGONS_ROIS)
        st = rois_tail(f, &af, path);
    if (st == GPUSEG_OK)
        return gpuseg__afile_commit(&af);
    gpuseg__afile_abort(&af);
    return st;
}
