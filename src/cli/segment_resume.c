/* cli/segment_resume.c: the resumable state of a streamed blockwise run (cli/segment_resume.h,
 * docs/blockwise.md "Resuming"). */
#define _DEFAULT_SOURCE
#include "segment_resume.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <nettle/sha2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "cli.h"

enum { REC_KEY = 1, REC_NORM = 2, REC_DIAM = 3, REC_BLOCK = 4 };
#define REC_MAGIC   0x524a5347u /* "GSJR" */
#define REC_HEAD    16          /* magic, type, payload length (u64) */
#define BLOCK_FIXED (4 * 4 + 8 * SEG_PARTS + 8)
#define JOURNAL     "journal"

static const char *const PART_NAME[SEG_PARTS] = {"outlines.txt.part", "rois.zip.part",
                                                 "geojson.part"};

struct seg_state {
    char dir[4096];
    char journal[4200];
    int fd;
    uint64_t end; /* journal bytes */
    uint32_t blocks;
    uint64_t *zoff; /* per finished block: offset and length of its deflated labels */
    uint64_t *zlen;
    size_t block_cap;
    uint64_t *masks;
    size_t n_masks, mask_cap;
    bool have_norm, have_diam;
    float norm[8];
    seg_state_diam diam;
    uint32_t n_too_big;
    uint64_t n_tiles_run;
    uint64_t lengths[SEG_PARTS];
};

uint32_t seg_state_blocks(const seg_state *s) {
    return s->blocks;
}
const float *seg_state_norm(const seg_state *s) {
    return s->have_norm ? s->norm : NULL;
}
const seg_state_diam *seg_state_diameter(const seg_state *s) {
    return s->have_diam ? &s->diam : NULL;
}
const uint64_t *seg_state_masks(const seg_state *s, uint32_t *n) {
    *n = (uint32_t)s->n_masks;
    return s->masks;
}
void seg_state_counters(const seg_state *s, uint32_t *n_too_big, uint64_t *n_tiles_run) {
    *n_too_big = s->n_too_big;
    *n_tiles_run = s->n_tiles_run;
}
uint64_t seg_state_part_length(const seg_state *s, int part) {
    return s->lengths[part];
}
void seg_state_part_path(const seg_state *s, int part, char *buf, size_t len) {
    snprintf(buf, len, "%s/%s", s->dir, PART_NAME[part]);
}
const char *seg_state_dir(const seg_state *s) {
    return s->dir;
}

/* Removes the state folder: its known files, then the folder (anything else in it stays, and
 * so does the folder). */
static void remove_dir(const char *dir) {
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", dir, JOURNAL);
    unlink(p);
    for (int i = 0; i < SEG_PARTS; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, PART_NAME[i]);
        unlink(p);
    }
    rmdir(dir);
}

void seg_state_close(seg_state *s, bool remove) {
    if (!s)
        return;
    if (s->fd >= 0)
        close(s->fd);
    if (remove)
        remove_dir(s->dir);
    free(s->zoff);
    free(s->zlen);
    free(s->masks);
    free(s);
}

static gpuseg_status io_fail(const seg_state *s, const char *what) {
    return cli_set_error(GPUSEG_IO, "%s: %s: %s", s->journal, what, strerror(errno));
}

/* Appends one record and fsyncs: a crash leaves it whole or as a tail the loader drops. */
static gpuseg_status put_record(seg_state *s, uint32_t type, const void *a, size_t na,
                                const void *b, size_t nb, const void *c, size_t nc) {
    unsigned char head[REC_HEAD];
    const uint32_t magic = REC_MAGIC;
    const uint64_t len = na + nb + nc;
    memcpy(head, &magic, 4);
    memcpy(head + 4, &type, 4);
    memcpy(head + 8, &len, 8);
    uint32_t crc = (uint32_t)crc32(0, head, REC_HEAD);
    const void *part[5] = {head, a, b, c, &crc};
    const size_t size[5] = {REC_HEAD, na, nb, nc, 4};
    for (int i = 1; i < 4; i++) /* crc32_z(crc, NULL, 0) would restart at 0 */
        if (size[i])
            crc = (uint32_t)crc32_z(crc, part[i], size[i]);
    uint64_t off = s->end;
    for (int i = 0; i < 5; i++) {
        const unsigned char *d = part[i];
        size_t n = size[i];
        while (n) {
            ssize_t w = pwrite(s->fd, d, n, (off_t)off);
            if (w < 0 && errno == EINTR)
                continue;
            if (w <= 0)
                return io_fail(s, "write failed");
            d += w;
            n -= (size_t)w;
            off += (uint64_t)w;
        }
    }
    if (fsync(s->fd) != 0)
        return io_fail(s, "fsync failed");
    s->end = off;
    return GPUSEG_OK;
}

static gpuseg_status grow_blocks(seg_state *s) {
    if (s->blocks < s->block_cap)
        return GPUSEG_OK;
    size_t cap = s->block_cap ? 2 * s->block_cap : 64;
    uint64_t *a = realloc(s->zoff, cap * sizeof *a);
    if (a)
        s->zoff = a;
    uint64_t *b = a ? realloc(s->zlen, cap * sizeof *b) : NULL;
    if (b)
        s->zlen = b;
    if (!a || !b)
        return cli_set_error(GPUSEG_OUT_OF_MEMORY, "%s: out of memory", s->journal);
    s->block_cap = cap;
    return GPUSEG_OK;
}

static gpuseg_status add_masks(seg_state *s, const uint64_t *v, uint32_t n) {
    if (s->n_masks + n > s->mask_cap) {
        size_t cap = s->mask_cap ? s->mask_cap : 1024;
        while (cap < s->n_masks + n)
            cap *= 2;
        uint64_t *m = realloc(s->masks, cap * sizeof *m);
        if (!m)
            return cli_set_error(GPUSEG_OUT_OF_MEMORY, "%s: out of memory", s->journal);
        s->masks = m;
        s->mask_cap = cap;
    }
    if (n)
        memcpy(s->masks + s->n_masks, v, (size_t)n * sizeof *v);
    s->n_masks += n;
    return GPUSEG_OK;
}

/* The first member of the key that differs from the saved one, as "NAME (then X, now Y)";
 * nested objects (the parameters) by their members. */
static void key_diff(json_t *then, json_t *now, const char *prefix, char *out, size_t len) {
    const char *k;
    json_t *v;
    json_object_foreach(now, k, v) {
        json_t *t = json_object_get(then, k);
        if (t && json_equal(t, v))
            continue;
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, k);
        if (t && json_is_object(t) && json_is_object(v)) {
            char pre[256];
            snprintf(pre, sizeof pre, "%s.", name);
            key_diff(t, v, pre, out, len);
            if (out[0])
                return;
            continue;
        }
        char *a = t ? json_dumps(t, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
        char *b = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
        snprintf(out, len, "%s (then %.200s, now %.200s)", name, a ? a : "none", b ? b : "?");
        free(a);
        free(b);
        return;
    }
    json_object_foreach(then, k, v) {
        if (!json_object_get(now, k)) {
            snprintf(out, len, "%s%s (then set, now none)", prefix, k);
            return;
        }
    }
}

/* Reads the journal's valid records into s; *key_ok false (and why in diff) when its KEY is
 * not `key`. The journal is cut after its last valid record (a killed append). */
static gpuseg_status load(seg_state *s, const char *key, bool *key_ok, char *diff, size_t dlen) {
    struct stat sb;
    if (fstat(s->fd, &sb) != 0)
        return io_fail(s, "cannot read");
    const uint64_t size = (uint64_t)sb.st_size;
    uint64_t off = 0;
    unsigned char *buf = NULL;
    size_t cap = 0;
    gpuseg_status st = GPUSEG_OK;
    *key_ok = false;
    bool first = true;
    while (off + REC_HEAD + 4 <= size) {
        unsigned char head[REC_HEAD];
        if (pread(s->fd, head, REC_HEAD, (off_t)off) != REC_HEAD)
            break;
        uint32_t magic, type;
        uint64_t len;
        memcpy(&magic, head, 4);
        memcpy(&type, head + 4, 4);
        memcpy(&len, head + 8, 8);
        if (magic != REC_MAGIC || len > size - off - REC_HEAD - 4)
            break;
        if (len + 4 > cap) {
            unsigned char *nb = realloc(buf, len + 4);
            if (!nb) {
                st = cli_set_error(GPUSEG_OUT_OF_MEMORY, "%s: out of memory", s->journal);
                break;
            }
            buf = nb;
            cap = len + 4;
        }
        if (pread(s->fd, buf, len + 4, (off_t)(off + REC_HEAD)) != (ssize_t)(len + 4))
            break;
        uint32_t crc = (uint32_t)crc32(0, head, REC_HEAD), saved;
        if (len)
            crc = (uint32_t)crc32_z(crc, buf, len);
        memcpy(&saved, buf + len, 4);
        if (crc != saved)
            break;
        if (first) { /* the KEY, else the journal is not ours */
            if (type != REC_KEY)
                break;
            json_t *a = json_loadb((const char *)buf, len, 0, NULL), *b = json_loads(key, 0, NULL);
            *key_ok = a && b && json_equal(a, b);
            if (!*key_ok && a && b)
                key_diff(a, b, "", diff, dlen);
            json_decref(a);
            json_decref(b);
            if (!*key_ok)
                break;
            first = false;
        } else if (type == REC_NORM && len == sizeof s->norm) {
            memcpy(s->norm, buf, sizeof s->norm);
            s->have_norm = true;
        } else if (type == REC_DIAM && len == sizeof s->diam) {
            memcpy(&s->diam, buf, sizeof s->diam);
            s->have_diam = true;
        } else if (type == REC_BLOCK && len >= BLOCK_FIXED) {
            uint32_t f[4];
            uint64_t lens[SEG_PARTS], zlen;
            memcpy(f, buf, sizeof f);
            memcpy(lens, buf + 16, sizeof lens);
            memcpy(&zlen, buf + 16 + sizeof lens, 8);
            if (f[0] != s->blocks || BLOCK_FIXED + 8 * (uint64_t)f[1] + zlen != len)
                break;
            if ((st = grow_blocks(s)) != GPUSEG_OK)
                break;
            uint64_t *fp = malloc(((size_t)f[1] + 1) * sizeof *fp);
            if (!fp) {
                st = cli_set_error(GPUSEG_OUT_OF_MEMORY, "%s: out of memory", s->journal);
                break;
            }
            memcpy(fp, buf + BLOCK_FIXED, (size_t)f[1] * 8);
            st = add_masks(s, fp, f[1]);
            free(fp);
            if (st != GPUSEG_OK)
                break;
            s->zoff[s->blocks] = off + REC_HEAD + BLOCK_FIXED + 8 * (uint64_t)f[1];
            s->zlen[s->blocks] = zlen;
            s->blocks++;
            s->n_too_big += f[2];
            s->n_tiles_run += f[3];
            memcpy(s->lengths, lens, sizeof lens);
        } else {
            break;
        }
        off += REC_HEAD + len + 4;
    }
    free(buf);
    s->end = off;
    if (st == GPUSEG_OK && *key_ok && off < size && ftruncate(s->fd, (off_t)off) != 0)
        st = io_fail(s, "cannot cut the unfinished record");
    return st;
}

gpuseg_status seg_state_open(const char *labels_path, const char *key, bool resume, seg_state **out,
                             uint32_t *replaced) {
    *out = NULL;
    *replaced = 0;
    seg_state *s = calloc(1, sizeof *s);
    if (!s)
        return cli_set_error(GPUSEG_OUT_OF_MEMORY, "%s: out of memory", labels_path);
    s->fd = -1;
    const char *slash = strrchr(labels_path, '/');
    int n = slash ? snprintf(s->dir, sizeof s->dir, "%.*s/.%s.gpuseg-resume",
                             (int)(slash - labels_path), labels_path, slash + 1)
                  : snprintf(s->dir, sizeof s->dir, ".%s.gpuseg-resume", labels_path);
    if (n < 0 || (size_t)n >= sizeof s->dir) {
        free(s);
        return cli_set_error(GPUSEG_INVALID_ARGUMENT, "%s: path too long", labels_path);
    }
    snprintf(s->journal, sizeof s->journal, "%s/%s", s->dir, JOURNAL);
    gpuseg_status st = GPUSEG_OK;
    struct stat sb;
    if (lstat(s->dir, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        st = cli_set_error(GPUSEG_IO, "%s: in the way of the resumable state (not a folder)",
                           s->dir);
        goto fail;
    }
    s->fd = open(s->journal, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    if (s->fd >= 0) {
        bool key_ok;
        char diff[600] = "";
        if ((st = load(s, key, &key_ok, diff, sizeof diff)) != GPUSEG_OK)
            goto fail;
        if (resume && !key_ok) {
            st = cli_set_error(GPUSEG_INVALID_ARGUMENT,
                               "%s: --resume: the saved state (%s) is of another run: %s; run "
                               "without --resume to start over",
                               labels_path, s->dir,
                               diff[0] ? diff : "its journal does not start with a run's key");
            goto fail;
        }
        if (resume)
            goto done;
        *replaced = (key_ok ? s->blocks : 0) + 1;
        close(s->fd);
        s->fd = -1;
        remove_dir(s->dir);
        s->blocks = 0;
        s->n_masks = 0;
        s->have_norm = s->have_diam = false;
        s->n_too_big = 0;
        s->n_tiles_run = 0;
        memset(s->lengths, 0, sizeof s->lengths);
    } else if (errno != ENOENT) {
        st = io_fail(s, "cannot open");
        goto fail;
    }
    if (mkdir(s->dir, 0777) != 0 && errno != EEXIST) {
        st = cli_set_error(GPUSEG_IO, "%s: cannot create the resumable state: %s", s->dir,
                           strerror(errno));
        goto fail;
    }
    s->fd = open(s->journal, O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0666);
    if (s->fd < 0) {
        st = io_fail(s, "cannot create");
        goto fail;
    }
    s->end = 0;
    if ((st = put_record(s, REC_KEY, key, strlen(key), NULL, 0, NULL, 0)) != GPUSEG_OK)
        goto fail;
done:
    *out = s;
    return GPUSEG_OK;
fail:
    seg_state_close(s, false);
    return st;
}

gpuseg_status seg_state_put_norm(seg_state *s, const float norm[8]) {
    gpuseg_status st = put_record(s, REC_NORM, norm, 8 * sizeof *norm, NULL, 0, NULL, 0);
    if (st == GPUSEG_OK) {
        memcpy(s->norm, norm, sizeof s->norm);
        s->have_norm = true;
    }
    return st;
}

gpuseg_status seg_state_put_diameter(seg_state *s, const seg_state_diam *d) {
    seg_state_diam c;
    memset(&c, 0, sizeof c); /* no padding bytes of the stack in the file */
    c.diameter = d->diameter;
    c.diameter_style = d->diameter_style;
    c.sample_w = d->sample_w;
    c.sample_h = d->sample_h;
    c.estimated = d->estimated;
    gpuseg_status st = put_record(s, REC_DIAM, &c, sizeof c, NULL, 0, NULL, 0);
    if (st == GPUSEG_OK) {
        s->diam = c;
        s->have_diam = true;
    }
    return st;
}

gpuseg_status seg_state_put_block(seg_state *s, uint32_t k, const void *z, size_t zlen,
                                  const uint64_t *first_pixel, uint32_t n_new, uint32_t n_too_big,
                                  uint32_t n_tiles_run, const uint64_t lengths[SEG_PARTS]) {
    if (k != s->blocks)
        return cli_set_error(GPUSEG_INTERNAL, "%s: block %u after %u", s->journal, k, s->blocks);
    gpuseg_status st;
    if ((st = grow_blocks(s)) != GPUSEG_OK || (st = add_masks(s, first_pixel, n_new)) != GPUSEG_OK)
        return st;
    unsigned char fixed[BLOCK_FIXED];
    const uint32_t f[4] = {k, n_new, n_too_big, n_tiles_run};
    const uint64_t zl = zlen;
    memcpy(fixed, f, sizeof f);
    memcpy(fixed + 16, lengths, 8 * SEG_PARTS);
    memcpy(fixed + 16 + 8 * SEG_PARTS, &zl, 8);
    const uint64_t at = s->end + REC_HEAD + BLOCK_FIXED + 8 * (uint64_t)n_new;
    if ((st = put_record(s, REC_BLOCK, fixed, sizeof fixed, first_pixel, 8 * (size_t)n_new, z,
                         zlen)) != GPUSEG_OK) {
        s->n_masks -= n_new;
        return st;
    }
    s->zoff[s->blocks] = at;
    s->zlen[s->blocks] = zlen;
    s->blocks++;
    s->n_too_big += n_too_big;
    s->n_tiles_run += n_tiles_run;
    memcpy(s->lengths, lengths, sizeof s->lengths);
    return GPUSEG_OK;
}

gpuseg_status seg_state_deflate(const uint32_t *labels, size_t n, unsigned char **z, size_t *cap,
                                size_t *zlen) {
    uLong need = compressBound((uLong)(n * sizeof *labels));
    if (need > *cap) {
        unsigned char *nz = realloc(*z, need);
        if (!nz)
            return cli_set_error(GPUSEG_OUT_OF_MEMORY, "resumable state: out of memory");
        *z = nz;
        *cap = need;
    }
    uLongf len = (uLongf)*cap;
    if (compress2(*z, &len, (const Bytef *)labels, (uLong)(n * sizeof *labels), 1) != Z_OK)
        return cli_set_error(GPUSEG_INTERNAL, "resumable state: deflate failed");
    *zlen = len;
    return GPUSEG_OK;
}

gpuseg_status seg_state_block_labels(seg_state *s, uint32_t k, uint32_t w, uint32_t h,
                                     uint32_t *labels) {
    if (k >= s->blocks)
        return cli_set_error(GPUSEG_INTERNAL, "%s: no block %u", s->journal, k);
    unsigned char *z = malloc(s->zlen[k] ? s->zlen[k] : 1);
    if (!z)
        return cli_set_error(GPUSEG_OUT_OF_MEMORY, "%s: out of memory", s->journal);
    gpuseg_status st = GPUSEG_OK;
    if (pread(s->fd, z, s->zlen[k], (off_t)s->zoff[k]) != (ssize_t)s->zlen[k]) {
        st = io_fail(s, "cannot read a block");
    } else {
        uLongf len = (uLongf)((size_t)w * h * sizeof *labels);
        if (uncompress((Bytef *)labels, &len, z, (uLong)s->zlen[k]) != Z_OK ||
            len != (size_t)w * h * sizeof *labels)
            st = cli_set_error(GPUSEG_FORMAT, "%s: block %u does not hold %ux%u labels", s->journal,
                               k + 1, w, h);
    }
    free(z);
    return st;
}

gpuseg_status seg_state_file_sha256(const char *path, char hex[65]) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return cli_set_error(GPUSEG_IO, "%s: cannot read: %s", path, strerror(errno));
    struct sha256_ctx c;
    sha256_init(&c);
    unsigned char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        sha256_update(&c, n, buf);
    int bad = ferror(f);
    fclose(f);
    if (bad)
        return cli_set_error(GPUSEG_IO, "%s: read failed", path);
    unsigned char d[SHA256_DIGEST_SIZE];
    sha256_digest(&c, sizeof d, d);
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
    return GPUSEG_OK;
}
