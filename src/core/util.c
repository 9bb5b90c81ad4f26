/* core/util.c: SHA-256 (nettle; program-cache keys and kernel hashes) and CRC-32 (zlib; ZIP
 * entries, PNG chunks, the shm payload) behind the library's own names, whole-file reading with
 * a size cap, atomic writing of a buffer through core/afile.c, and page release. */
#define _DEFAULT_SOURCE /* madvise's MADV_DONTNEED (glibc declares it only with this) */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "core/internal.h"

/* ---- SHA-256 (nettle) and CRC-32 (zlib) ---- */

void gpuseg__sha256_init(gpuseg__sha256 *s) {
    sha256_init(&s->nettle);
}

void gpuseg__sha256_update(gpuseg__sha256 *s, const void *data, size_t n) {
    sha256_update(&s->nettle, n, data);
}

void gpuseg__sha256_final(gpuseg__sha256 *s, unsigned char out[32]) {
    sha256_digest(&s->nettle, SHA256_DIGEST_SIZE, out);
}

void gpuseg__sha256_hex(const unsigned char digest[32], char hex[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
    hex[64] = '\0';
}

void gpuseg__sha256_str(gpuseg__sha256 *s, const char *str) {
    gpuseg__sha256_update(s, str, strlen(str) + 1);
}

void gpuseg__sha256_device(gpuseg__sha256 *s, const gpuseg_ctx *ctx) {
    gpuseg__sha256_str(s, ctx->dev.platform_name);
    gpuseg__sha256_str(s, ctx->dev.platform_version);
    gpuseg__sha256_str(s, ctx->dev.vendor);
    gpuseg__sha256_str(s, ctx->dev.name);
    gpuseg__sha256_str(s, ctx->dev.device_version);
    gpuseg__sha256_str(s, ctx->dev.driver_version);
}

uint32_t gpuseg__crc32(uint32_t crc, const void *data, size_t n) {
    /* crc32_z takes a z_size_t length, so buffers over 4 GiB need no chunking. */
    return (uint32_t)crc32_z(crc, data, n);
}

double gpuseg__now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- files ---- */

gpuseg_status gpuseg__read_file(gpuseg_ctx *ctx, const char *path, size_t max_bytes, void **data,
                                size_t *n) {
    *data = NULL;
    *n = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return gpuseg__fail(ctx, errno == ENOENT ? GPUSEG_NOT_FOUND : GPUSEG_IO, "%s: %s", path,
                            strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return gpuseg__fail(ctx, GPUSEG_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        close(fd);
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "%s: file of %lld bytes exceeds the %zu limit",
                            path, (long long)st.st_size, max_bytes);
    }
    size_t size = (size_t)st.st_size;
    unsigned char *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "%s: cannot allocate %zu bytes", path, size);
    }
    size_t got = 0;
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            int e = r < 0 ? errno : 0;
            free(buf);
            close(fd);
            return gpuseg__fail(ctx, GPUSEG_IO, "%s: read failed: %s", path,
                                e ? strerror(e) : "file shrank while reading");
        }
        got += (size_t)r;
    }
    close(fd);
    *data = buf;
    *n = size;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__write_file_atomic(gpuseg_ctx *ctx, const char *path, const void *data,
                                        size_t n) {
    return gpuseg__write_file_atomic_ex(ctx, path, 0, data, n);
}

gpuseg_status gpuseg__write_file_atomic_ex(gpuseg_ctx *ctx, const char *path, unsigned flags,
                                           const void *data, size_t n) {
    /* The one atomic path (core/afile.c). */
    gpuseg__afile af = {.fd = -1};
    gpuseg_status st = gpuseg__afile_open_ex(ctx, path, flags, &af);
    if (st != GPUSEG_OK)
        return st;
    if ((st = gpuseg__afile_write(&af, data, n)) != GPUSEG_OK) {
        gpuseg__afile_abort(&af);
        return st;
    }
    return gpuseg__afile_commit(&af);
}

int gpuseg__cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int gpuseg__cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

void gpuseg__drop_pages(void *p, size_t bytes) {
#if defined(__linux__)
    const long ps = sysconf(_SC_PAGESIZE);
    const size_t page = ps > 0 ? (size_t)ps : 4096;
    const uintptr_t a = ((uintptr_t)p + page - 1) / page * page,
                    b = ((uintptr_t)p + bytes) / page * page;
    if (b > a)
        (void)madvise((void *)a, b - a, MADV_DONTNEED); /* advice: a refusal changes nothing */
#else
    (void)p;
    (void)bytes;
#endif
}
