/* shm/shm.c: the life of one shared-memory label segment: create (unpredictable name, O_EXCL,
 * mode 0600, space reserved up front), publish (checksum, then the state word with release
 * ordering), abort, open for reading (ownership checks, waiting for READY, full header
 * validation against the mapped size, checksum), views, close and unlink. The layout is in
 * shm_internal.h and docs/shm.md; listing and cleaning are in shm_list.c. */
#define _GNU_SOURCE /* getrandom (glibc declares it only with _DEFAULT_SOURCE or _GNU_SOURCE) */
#include <errno.h>
#include <jansson.h>
#include <fcntl.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shm/shm_internal.h"

/* The payload checksum is CRC-32 with zlib's parameters (core/crc32.c): every language has it in
 * its standard library (Python: zlib.crc32), so a consumer verifies a segment without extra
 * packages. */
uint32_t gpuseg_shm_checksum(uint32_t crc, const void *data, size_t n) {
    return gpuseg__crc32(crc, data, n);
}

/* The state word is a 32-bit little-endian field accessed atomically; on a big-endian host the
 * value is byte-swapped so that the bytes in memory stay little-endian. */
static uint32_t le32(uint32_t v) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return __builtin_bswap32(v);
#else
    return v;
#endif
}

static _Atomic uint32_t *state_word(const unsigned char *map) {
    _Static_assert(sizeof(_Atomic uint32_t) == 4, "state word must be 4 bytes");
    /* The mapping is page aligned and the offset 16, so the word is naturally aligned. Loads
     * through a read-only mapping are plain loads; the cast only drops const for the API. */
    return (_Atomic uint32_t *)(void *)(uintptr_t)(map + GPUSEG__SHM_OFF_STATE);
}

static uint32_t load_state(const unsigned char *map) {
    return le32(atomic_load_explicit(state_word(map), memory_order_acquire));
}

static void store_state(unsigned char *map, gpuseg_shm_state s) {
    atomic_store_explicit(state_word(map), le32((uint32_t)s), memory_order_release);
}

static void sleep_ms(double ms) {
    struct timespec ts = {(time_t)(ms / 1000.0), (long)(fmod(ms, 1000.0) * 1e6)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

const char *gpuseg_shm_state_name(gpuseg_shm_state s) {
    switch (s) {
    case GPUSEG_SHM_WRITING:
        return "writing";
    case GPUSEG_SHM_READY:
        return "ready";
    case GPUSEG_SHM_FAILED:
        return "failed";
    }
    return "invalid";
}

gpuseg_status gpuseg__shm_name(const char *name, char *out) {
    if (!name || !name[0])
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "shm: empty segment name");
    const char *s = name[0] == '/' ? name + 1 : name;
    size_t len = strlen(s);
    if (strncmp(s, "gpuseg-", 7) != 0 || len == 7)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "shm %.200s: not a gpuseg segment name (expected /gpuseg-...)", name);
    if (len + 2 > GPUSEG_SHM_NAME_MAX)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "shm %.200s: name longer than %u characters", name,
                            GPUSEG_SHM_NAME_MAX - 2);
    for (size_t i = 7; i < len; i++) {
        char c = s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == '-';
        if (!ok)
            return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                                "shm %.200s: names may only use letters, digits, '.', '_', '-'",
                                name);
    }
    snprintf(out, GPUSEG_SHM_NAME_MAX, "/%s", s);
    return GPUSEG_OK;
}

/* Number of elements and bytes of an array, overflow-checked and capped. */
static gpuseg_status array_bytes(const char *name, gpuseg_dtype dtype, uint32_t ndim,
                                 const uint64_t *shape, uint64_t *elements, uint64_t *bytes) {
    size_t esize = dtype == GPUSEG_DTYPE_U16 ? 2 : dtype == GPUSEG_DTYPE_U32 ? 4 : 0;
    if (esize == 0)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "shm %s: dtype code %d is not a label type (uint16=%d, uint32=%d)",
                            name, (int)dtype, GPUSEG_DTYPE_U16, GPUSEG_DTYPE_U32);
    if (ndim < 1 || ndim > GPUSEG_SHM_MAX_DIMS)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "shm %s: %u dimensions (1 to %u allowed)", name,
                            ndim, GPUSEG_SHM_MAX_DIMS);
    uint64_t n = 1;
    for (uint32_t i = 0; i < ndim; i++) {
        if (shape[i] == 0)
            return gpuseg__fail(NULL, GPUSEG_FORMAT, "shm %s: dimension %u is 0", name, i);
        if (n > GPUSEG_SHM_MAX_BYTES / shape[i])
            return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "shm %s: shape has more than %llu elements",
                                name, (unsigned long long)GPUSEG_SHM_MAX_BYTES);
        n *= shape[i];
    }
    if (n > GPUSEG_SHM_MAX_BYTES / esize)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE,
                            "shm %s: array of %llu elements exceeds the limit of %llu bytes", name,
                            (unsigned long long)n, (unsigned long long)GPUSEG_SHM_MAX_BYTES);
    *elements = n;
    *bytes = n * esize;
    return GPUSEG_OK;
}

static void format_shape(const gpuseg_shm_info *info, char *buf, size_t len) {
    size_t used = 0;
    buf[0] = '\0';
    for (uint32_t i = 0; i < info->ndim && i < GPUSEG_SHM_MAX_DIMS && used < len; i++)
        used += (size_t)snprintf(buf + used, len - used, "%s%llu", i ? "x" : "",
                                 (unsigned long long)info->shape[i]);
}

gpuseg_status gpuseg__shm_decode(const char *name, const unsigned char *h, uint64_t segment_bytes,
                                 gpuseg_shm_info *info) {
    memset(info, 0, sizeof *info);
    if (memcmp(h + GPUSEG__SHM_OFF_MAGIC, GPUSEG_SHM_MAGIC, 8) != 0)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "shm %s: bad magic (not a gpuseg label segment)",
                            name);
    uint32_t version = gpuseg__ld32(h + GPUSEG__SHM_OFF_VERSION);
    if (version != GPUSEG_SHM_VERSION)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "shm %s: layout version %u (this gpuseg reads version %u)", name,
                            version, GPUSEG_SHM_VERSION);
    uint32_t hsize = gpuseg__ld32(h + GPUSEG__SHM_OFF_HEADER_SIZE);
    if (hsize != GPUSEG_SHM_HEADER_SIZE)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "shm %s: header size %u (version %u headers are %u bytes)", name, hsize,
                            GPUSEG_SHM_VERSION, GPUSEG_SHM_HEADER_SIZE);
    uint32_t state = gpuseg__ld32(h + GPUSEG__SHM_OFF_STATE);
    if (state > GPUSEG_SHM_FAILED)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "shm %s: invalid state word %u", name, state);
    uint32_t kind = gpuseg__ld32(h + GPUSEG__SHM_OFF_CHECKSUM_KIND);
    if (kind != GPUSEG__SHM_CHECKSUM_CRC32)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "shm %s: checksum kind %u (only 1 = CRC-32 is known)", name, kind);
    info->state = (gpuseg_shm_state)state;
    info->dtype = (gpuseg_dtype)gpuseg__ld32(h + GPUSEG__SHM_OFF_DTYPE);
    info->ndim = gpuseg__ld32(h + GPUSEG__SHM_OFF_NDIM);
    for (unsigned i = 0; i < GPUSEG_SHM_MAX_DIMS; i++)
        info->shape[i] = gpuseg__ld64(h + GPUSEG__SHM_OFF_SHAPE + 8 * i);
    info->data_offset = gpuseg__ld64(h + GPUSEG__SHM_OFF_DATA_OFFSET);
    info->data_bytes = gpuseg__ld64(h + GPUSEG__SHM_OFF_DATA_BYTES);
    info->n_masks = gpuseg__ld64(h + GPUSEG__SHM_OFF_N_MASKS);
    info->diameter = gpuseg__ldf64(h + GPUSEG__SHM_OFF_DIAMETER);
    info->producer_pid = (int64_t)gpuseg__ld64(h + GPUSEG__SHM_OFF_PID);
    info->producer_start = gpuseg__ld64(h + GPUSEG__SHM_OFF_START);
    info->checksum = gpuseg__ld32(h + GPUSEG__SHM_OFF_CHECKSUM);
    info->created_ns = gpuseg__ld64(h + GPUSEG__SHM_OFF_CREATED);
    info->segment_bytes = segment_bytes;

    uint64_t elements = 0, bytes = 0;
    if (info->ndim < 1 || info->ndim > GPUSEG_SHM_MAX_DIMS)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "shm %s: %u dimensions (1 to %u allowed)", name,
                            info->ndim, GPUSEG_SHM_MAX_DIMS);
    for (unsigned i = info->ndim; i < GPUSEG_SHM_MAX_DIMS; i++)
        if (info->shape[i] != 0)
            return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                "shm %s: unused shape entry %u is %llu (must be 0)", name, i,
                                (unsigned long long)info->shape[i]);
    gpuseg_status st = array_bytes(name, info->dtype, info->ndim, info->shape, &elements, &bytes);
    if (st != GPUSEG_OK)
        return st;
    char shape[128];
    format_shape(info, shape, sizeof shape);
    if (info->data_bytes != bytes)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "shm %s: data size %llu bytes does not match shape %s of %s (%llu "
                            "bytes)",
                            name, (unsigned long long)info->data_bytes, shape,
                            gpuseg_dtype_name(info->dtype), (unsigned long long)bytes);
    if (info->data_offset < GPUSEG__SHM_PAGE || info->data_offset % GPUSEG__SHM_PAGE != 0 ||
        info->data_offset > GPUSEG__SHM_MAX_DATA_OFFSET)
        return gpuseg__fail(NULL, GPUSEG_FORMAT,
                            "shm %s: data offset %llu is not a multiple of %u in [%u, %u]", name,
                            (unsigned long long)info->data_offset, GPUSEG__SHM_PAGE,
                            GPUSEG__SHM_PAGE, GPUSEG__SHM_MAX_DATA_OFFSET);
    /* data_offset <= 2^20 and data_bytes <= 2^38: the sum cannot overflow 64 bits. */
    if (info->data_offset + info->data_bytes > segment_bytes)
        return gpuseg__fail(
            NULL, GPUSEG_FORMAT,
            "shm %s: shape %s of %s needs %llu bytes at offset %llu but the "
            "segment has only %llu bytes",
            name, shape, gpuseg_dtype_name(info->dtype), (unsigned long long)info->data_bytes,
            (unsigned long long)info->data_offset, (unsigned long long)segment_bytes);
    uint64_t max_label = info->dtype == GPUSEG_DTYPE_U16 ? 0xFFFFu : 0xFFFFFFFFu;
    if (info->n_masks > elements || info->n_masks > max_label)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "shm %s: %llu masks cannot fit in %llu %s pixels",
                            name, (unsigned long long)info->n_masks, (unsigned long long)elements,
                            gpuseg_dtype_name(info->dtype));
    if (!isfinite(info->diameter) || info->diameter < 0)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "shm %s: diameter %g is not a size", name,
                            info->diameter);
    if (info->producer_pid <= 0 || info->producer_pid > INT32_MAX)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "shm %s: producer pid %lld is not a process id",
                            name, (long long)info->producer_pid);
    return GPUSEG_OK;
}

gpuseg_status gpuseg__shm_check_name_prefix(const char *what, const char *prefix) {
    size_t n = strlen(prefix);
    bool ok = n >= 8 && strncmp(prefix, GPUSEG__SHM_PREFIX, 8) == 0 && n + 16 < GPUSEG_SHM_NAME_MAX;
    for (size_t i = 8; ok && i < n; i++) {
        char c = prefix[i];
        ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '.' || c == '_' || c == '-';
    }
    if (!ok)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s'%.200s' is not /gpuseg- followed by [A-Za-z0-9._-] (at most %u "
                            "characters)",
                            what, prefix, GPUSEG_SHM_NAME_MAX - 17);
    return GPUSEG_OK;
}

gpuseg_status gpuseg_shm_random_name(const char *prefix, char *name) {
    gpuseg__clear_error(NULL);
    if (!name)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_shm_random_name: NULL name");
    if (!prefix)
        prefix = GPUSEG__SHM_PREFIX;
    gpuseg_status st = gpuseg__shm_check_name_prefix("", prefix);
    return st == GPUSEG_OK ? gpuseg__shm_random_name(prefix, name) : st;
}

gpuseg_status gpuseg__shm_random_name(const char *prefix, char *name) {
    uint64_t r = 0;
    unsigned char *p = (unsigned char *)&r;
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t k = getrandom(p + got, sizeof r - got, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k < 0)
            return gpuseg__fail(NULL, GPUSEG_IO, "shm: getrandom failed: %s", strerror(errno));
        got += (size_t)k;
    }
    snprintf(name, GPUSEG_SHM_NAME_MAX, "%s%016llx", prefix, (unsigned long long)r);
    return GPUSEG_OK;
}

static gpuseg_status open_new(const char *name, char *out_name, int *fd_out) {
    if (name) {
        gpuseg_status st = gpuseg__shm_name(name, out_name);
        if (st != GPUSEG_OK)
            return st;
        int fd = shm_open(out_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0)
            return gpuseg__fail(NULL, errno == EEXIST ? GPUSEG_INVALID_ARGUMENT : GPUSEG_IO,
                                "shm %s: cannot create: %s", out_name, strerror(errno));
        *fd_out = fd;
        return GPUSEG_OK;
    }
    /* 64 random bits: a collision with a live segment is practically impossible, and O_EXCL
     * turns one into a retry rather than two producers sharing a segment. */
    for (int attempt = 0; attempt < 16; attempt++) {
        gpuseg_status st = gpuseg__shm_random_name(GPUSEG__SHM_PREFIX, out_name);
        if (st != GPUSEG_OK)
            return st;
        int fd = shm_open(out_name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
            *fd_out = fd;
            return GPUSEG_OK;
        }
        if (errno != EEXIST)
            return gpuseg__fail(NULL, GPUSEG_IO, "shm %s: cannot create: %s", out_name,
                                strerror(errno));
    }
    return gpuseg__fail(NULL, GPUSEG_INTERNAL, "shm: 16 random names in a row already existed");
}

gpuseg_status gpuseg_shm_create(const char *name, gpuseg_dtype dtype, uint32_t ndim,
                                const uint64_t *shape, gpuseg_shm **out) {
    gpuseg__clear_error(NULL);
    if (!out || !shape)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_shm_create: NULL argument");
    *out = NULL;
    uint64_t elements = 0, bytes = 0;
    gpuseg_status st = array_bytes(name ? name : "(new)", dtype, ndim, shape, &elements, &bytes);
    if (st != GPUSEG_OK)
        return st;
    /* The array starts on a page boundary: the header page is 4096 bytes, or the host's page
     * size where that is larger, so that the array could also be mapped on its own. */
    uint64_t offset = GPUSEG__SHM_PAGE;
    long ps = sysconf(_SC_PAGESIZE);
    if (ps > (long)GPUSEG__SHM_PAGE && ps <= (long)GPUSEG__SHM_MAX_DATA_OFFSET &&
        ps % GPUSEG__SHM_PAGE == 0)
        offset = (uint64_t)ps;
    uint64_t total = offset + bytes;
    if (total > SIZE_MAX || total > (uint64_t)INT64_MAX)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "shm: %llu bytes do not fit in memory",
                            (unsigned long long)total);

    gpuseg_shm *seg = calloc(1, sizeof *seg);
    if (!seg)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "shm: out of memory");
    int fd = -1;
    st = open_new(name, seg->info.name, &fd);
    if (st != GPUSEG_OK) {
        free(seg);
        return st;
    }
    /* Mode 0600 whatever the umask; reserve the memory now so that a full /dev/shm is an error
     * here rather than a SIGBUS when the payload is written. */
    int err = fchmod(fd, 0600) != 0 ? errno : 0;
    if (!err)
        err = posix_fallocate(fd, 0, (off_t)total);
    if (err) {
        st = gpuseg__fail(NULL, err == ENOSPC ? GPUSEG_OUT_OF_MEMORY : GPUSEG_IO,
                          "shm %s: cannot reserve %llu bytes: %s", seg->info.name,
                          (unsigned long long)total, strerror(err));
        goto fail;
    }
    void *map = mmap(NULL, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "shm %s: mmap of %llu bytes failed: %s",
                          seg->info.name, (unsigned long long)total, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    seg->map = map;
    seg->map_bytes = (size_t)total;
    seg->writable = true;

    gpuseg_shm_info *in = &seg->info;
    in->state = GPUSEG_SHM_WRITING;
    in->dtype = dtype;
    in->ndim = ndim;
    for (uint32_t i = 0; i < ndim; i++)
        in->shape[i] = shape[i];
    in->data_offset = offset;
    in->data_bytes = bytes;
    in->segment_bytes = total;
    in->producer_pid = (int64_t)getpid();
    in->producer_start = gpuseg__proc_start_time(in->producer_pid, NULL);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    in->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;

    unsigned char *h = seg->map; /* zero-filled by posix_fallocate: state is WRITING */
    gpuseg__st32(h + GPUSEG__SHM_OFF_VERSION, GPUSEG_SHM_VERSION);
    gpuseg__st32(h + GPUSEG__SHM_OFF_HEADER_SIZE, GPUSEG_SHM_HEADER_SIZE);
    gpuseg__st32(h + GPUSEG__SHM_OFF_DTYPE, (uint32_t)dtype);
    gpuseg__st32(h + GPUSEG__SHM_OFF_NDIM, ndim);
    gpuseg__st32(h + GPUSEG__SHM_OFF_CHECKSUM_KIND, GPUSEG__SHM_CHECKSUM_CRC32);
    for (unsigned i = 0; i < GPUSEG_SHM_MAX_DIMS; i++)
        gpuseg__st64(h + GPUSEG__SHM_OFF_SHAPE + 8 * i, in->shape[i]);
    gpuseg__st64(h + GPUSEG__SHM_OFF_DATA_OFFSET, offset);
    gpuseg__st64(h + GPUSEG__SHM_OFF_DATA_BYTES, bytes);
    gpuseg__st64(h + GPUSEG__SHM_OFF_PID, (uint64_t)in->producer_pid);
    gpuseg__st64(h + GPUSEG__SHM_OFF_START, in->producer_start);
    gpuseg__st64(h + GPUSEG__SHM_OFF_CREATED, in->created_ns);
    /* The magic goes last: a reader that sees it also sees the pid it uses to tell whether a
     * segment still WRITING has a live producer. */
    atomic_thread_fence(memory_order_release);
    memcpy(h + GPUSEG__SHM_OFF_MAGIC, GPUSEG_SHM_MAGIC, 8);
    *out = seg;
    return GPUSEG_OK;

fail:
    if (fd >= 0)
        close(fd);
    shm_unlink(seg->info.name);
    free(seg);
    return st;
}

void *gpuseg_shm_payload_writable(gpuseg_shm *seg) {
    if (!seg || !seg->writable || seg->finished)
        return NULL;
    return seg->map + seg->info.data_offset;
}

const void *gpuseg_shm_payload(const gpuseg_shm *seg) {
    return seg ? seg->map + seg->info.data_offset : NULL;
}

const gpuseg_shm_info *gpuseg_shm_get_info(const gpuseg_shm *seg) {
    return seg ? &seg->info : NULL;
}

gpuseg_status gpuseg_shm_publish(gpuseg_shm *seg, uint64_t n_masks, double diameter) {
    return gpuseg_shm_publish_ex(seg, n_masks, diameter, NULL);
}

gpuseg_status gpuseg_shm_publish_ex(gpuseg_shm *seg, uint64_t n_masks, double diameter,
                                    const gpuseg_shm_publish_params *params) {
    gpuseg__clear_error(NULL);
    if (!seg || !seg->writable || seg->finished)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "shm %s: publish needs a producer's handle that is not yet "
                            "published or aborted",
                            seg ? seg->info.name : "(null)");
    uint64_t elements = seg->info.data_bytes / gpuseg_dtype_size(seg->info.dtype);
    uint64_t max_label = seg->info.dtype == GPUSEG_DTYPE_U16 ? 0xFFFFu : 0xFFFFFFFFu;
    if (n_masks > elements || n_masks > max_label)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "shm %s: %llu masks in %llu %s pixels",
                            seg->info.name, (unsigned long long)n_masks,
                            (unsigned long long)elements, gpuseg_dtype_name(seg->info.dtype));
    if (!isfinite(diameter) || diameter < 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "shm %s: diameter %g is not a size (use 0 for unknown)", seg->info.name,
                            diameter);
    if (params && params->test_stall_ms > 0) /* the segment stays WRITING meanwhile */
        sleep_ms((double)(params->test_stall_ms < 600000u ? params->test_stall_ms : 600000u));
    unsigned char *h = seg->map;
    uint32_t crc = gpuseg_shm_checksum(0, h + seg->info.data_offset, seg->info.data_bytes);
    gpuseg__st64(h + GPUSEG__SHM_OFF_N_MASKS, n_masks);
    gpuseg__stf64(h + GPUSEG__SHM_OFF_DIAMETER, diameter);
    gpuseg__st32(h + GPUSEG__SHM_OFF_CHECKSUM, crc);
    /* Everything above happens-before any reader's acquire load that sees READY. */
    store_state(h, GPUSEG_SHM_READY);
    seg->finished = true;
    seg->info.state = GPUSEG_SHM_READY;
    seg->info.n_masks = n_masks;
    seg->info.diameter = diameter;
    seg->info.checksum = crc;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_shm_abort(gpuseg_shm *seg) {
    gpuseg__clear_error(NULL);
    if (!seg || !seg->writable || seg->finished)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "shm %s: abort needs a producer's handle that is not yet published",
                            seg ? seg->info.name : "(null)");
    store_state(seg->map, GPUSEG_SHM_FAILED);
    seg->finished = true;
    seg->info.state = GPUSEG_SHM_FAILED;
    return GPUSEG_OK;
}

void gpuseg_shm_free(gpuseg_shm *seg) {
    if (!seg)
        return;
    if (seg->writable && !seg->finished)
        store_state(seg->map, GPUSEG_SHM_FAILED);
    if (seg->map)
        munmap(seg->map, seg->map_bytes);
    free(seg);
}

gpuseg_status gpuseg_shm_unlink(const char *name) {
    gpuseg__clear_error(NULL);
    char nm[GPUSEG_SHM_NAME_MAX];
    gpuseg_status st = gpuseg__shm_name(name, nm);
    if (st != GPUSEG_OK)
        return st;
    if (shm_unlink(nm) != 0) {
        int e = errno;
        return gpuseg__fail(NULL,
                            e == ENOENT   ? GPUSEG_NOT_FOUND
                            : e == EACCES ? GPUSEG_PERMISSION
                                          : GPUSEG_IO,
                            "shm %s: cannot remove: %s", nm, strerror(e));
    }
    return GPUSEG_OK;
}

gpuseg_status gpuseg_shm_create_labels(const char *name, const gpuseg_image *labels,
                                       uint64_t n_masks, double diameter, gpuseg_shm **out) {
    return gpuseg_shm_create_labels_ex(name, labels, n_masks, diameter, NULL, out);
}

gpuseg_status gpuseg_shm_create_labels_ex(const char *name, const gpuseg_image *labels,
                                          uint64_t n_masks, double diameter,
                                          const gpuseg_shm_publish_params *params,
                                          gpuseg_shm **out) {
    gpuseg__clear_error(NULL);
    if (!labels || !labels->data || !out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_shm_create_labels: NULL argument");
    *out = NULL;
    if (labels->channels != 1 || labels->pages < 1 || labels->width < 1 || labels->height < 1)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "shm: labels must have one channel and at least one page, row and "
                            "column (got %u x %u x %u channels x %u pages)",
                            labels->width, labels->height, labels->channels, labels->pages);
    uint64_t shape[3];
    uint32_t ndim = 0;
    if (labels->pages > 1)
        shape[ndim++] = labels->pages;
    shape[ndim++] = labels->height;
    shape[ndim++] = labels->width;
    gpuseg_shm *seg = NULL;
    gpuseg_status st = gpuseg_shm_create(name, labels->dtype, ndim, shape, &seg);
    if (st != GPUSEG_OK)
        return st;
    memcpy(gpuseg_shm_payload_writable(seg), labels->data, (size_t)seg->info.data_bytes);
    st = gpuseg_shm_publish_ex(seg, n_masks, diameter, params);
    if (st != GPUSEG_OK) {
        store_state(seg->map, GPUSEG_SHM_FAILED); /* not _abort: it would clear the message */
        seg->finished = true;
        shm_unlink(seg->info.name);
        gpuseg_shm_free(seg);
        return st;
    }
    *out = seg;
    return GPUSEG_OK;
}

/* ---- reading ------------------------------------------------------------------------------ */

static gpuseg_status open_fail_errno(const char *nm, const char *what) {
    int e = errno;
    return gpuseg__fail(NULL,
                        e == ENOENT                 ? GPUSEG_NOT_FOUND
                        : e == EACCES || e == EPERM ? GPUSEG_PERMISSION
                                                    : GPUSEG_IO,
                        "shm %s: %s: %s", nm, what, e == ENOENT ? "no such segment" : strerror(e));
}

/* Opens segment nm read-only and checks that this user owns it and that nobody else may write
 * it. *fd: the open descriptor (GPUSEG_OK), else -1. */
static gpuseg_status open_owned(const char *nm, int *fd) {
    *fd = shm_open(nm, O_RDONLY | O_CLOEXEC, 0);
    if (*fd < 0)
        return open_fail_errno(nm, "cannot open");
    struct stat sb;
    gpuseg_status st = GPUSEG_OK;
    if (fstat(*fd, &sb) != 0)
        st = open_fail_errno(nm, "fstat");
    /* Only the user who made a segment may consume it: the name is not a secret once it has
     * been printed, and another user's segment could be shaped to mislead the reader. */
    else if (sb.st_uid != geteuid())
        st = gpuseg__fail(NULL, GPUSEG_PERMISSION,
                          "shm %s: owned by uid %u, not by this user (uid %u); refusing to read it",
                          nm, (unsigned)sb.st_uid, (unsigned)geteuid());
    else if (sb.st_mode & 0022)
        st = gpuseg__fail(NULL, GPUSEG_PERMISSION,
                          "shm %s: writable by group or others (mode %04o); refusing to read it",
                          nm, (unsigned)(sb.st_mode & 07777));
    if (st != GPUSEG_OK) {
        close(*fd);
        *fd = -1;
    }
    return st;
}

/* One look at the header page hp of segment nm: GPUSEG_OK with *ready set when it is READY,
 * GPUSEG_OK with *waiting saying why when it may still become ready, else the failure. */
static gpuseg_status look_header(const char *nm, const unsigned char *hp, bool *ready,
                                 const char **waiting) {
    static const unsigned char zero[8];
    uint32_t state = load_state(hp);
    *ready = false;
    if (memcmp(hp, GPUSEG_SHM_MAGIC, 8) != 0) {
        if (memcmp(hp, zero, 8) != 0)
            return gpuseg__fail(NULL, GPUSEG_FORMAT,
                                "shm %s: bad magic (not a gpuseg label segment)", nm);
        *waiting = "header not yet written";
        return GPUSEG_OK;
    }
    int64_t pid = (int64_t)gpuseg__ld64(hp + GPUSEG__SHM_OFF_PID);
    if (state == GPUSEG_SHM_READY) {
        *ready = true;
        return GPUSEG_OK;
    }
    if (state == GPUSEG_SHM_FAILED)
        return gpuseg__fail(NULL, GPUSEG_NOT_READY,
                            "shm %s: its producer (pid %lld) marked it failed", nm, (long long)pid);
    if (state != GPUSEG_SHM_WRITING)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "shm %s: invalid state word %u", nm, state);
    if (gpuseg__shm_producer_alive(pid, gpuseg__ld64(hp + GPUSEG__SHM_OFF_START)) == 0)
        return gpuseg__fail(NULL, GPUSEG_NOT_READY,
                            "shm %s: not ready (state writing) and its producer "
                            "(pid %lld) is gone: it will never be ready",
                            nm, (long long)pid);
    *waiting = "state writing";
    return GPUSEG_OK;
}

/* Waits up to timeout_s for segment nm (open as fd) to be READY and copies its header to hdr.
 * The producer creates the segment, sizes it, writes the header (magic last), fills the array,
 * then stores READY; a reader may arrive at any point of that. */
static gpuseg_status wait_ready(const char *nm, int fd, double timeout_s,
                                unsigned char hdr[GPUSEG_SHM_HEADER_SIZE]) {
    double deadline = gpuseg__now_s() + timeout_s, nap = 1.0;
    unsigned char *hp = NULL;
    gpuseg_status st = GPUSEG_OK;
    for (;;) {
        struct stat sb;
        if (!hp && fstat(fd, &sb) != 0) {
            st = open_fail_errno(nm, "fstat");
            break;
        }
        if (!hp && sb.st_size >= (off_t)GPUSEG__SHM_PAGE) {
            void *m = mmap(NULL, GPUSEG__SHM_PAGE, PROT_READ, MAP_SHARED, fd, 0);
            if (m == MAP_FAILED) {
                st = open_fail_errno(nm, "mmap");
                break;
            }
            hp = m;
        }
        const char *waiting = "not yet sized by its producer";
        bool ready = false;
        if (hp && (st = look_header(nm, hp, &ready, &waiting)) != GPUSEG_OK)
            break;
        if (ready) {
            memcpy(hdr, hp, GPUSEG_SHM_HEADER_SIZE); /* after the acquire load that saw READY */
            break;
        }
        double left = deadline - gpuseg__now_s();
        if (left <= 0) {
            st = gpuseg__fail(NULL, GPUSEG_NOT_READY, "shm %s: not ready after %g s (%s)", nm,
                              timeout_s, waiting);
            break;
        }
        /* Short sleeps first (publication is usually imminent), then up to 20 ms. */
        sleep_ms(nap < left * 1000.0 ? nap : left * 1000.0);
        nap = nap * 2 < 20.0 ? nap * 2 : 20.0;
    }
    if (hp)
        munmap(hp, GPUSEG__SHM_PAGE);
    return st;
}

/* Maps the whole of ready segment nm (open as fd, header hdr), checks header and checksum and
 * makes the handle. */
static gpuseg_status map_segment(const char *nm, int fd, const unsigned char *hdr,
                                 gpuseg_shm **out) {
    struct stat sb;
    if (fstat(fd, &sb) != 0)
        return open_fail_errno(nm, "fstat");
    gpuseg_shm_info info;
    gpuseg_status st = gpuseg__shm_decode(nm, hdr, (uint64_t)sb.st_size, &info);
    if (st != GPUSEG_OK)
        return st;
    snprintf(info.name, sizeof info.name, "%s", nm);
    /* decode bounded data_offset + data_bytes by the size; the size itself must be mappable */
    if ((uint64_t)sb.st_size > SIZE_MAX ||
        (uint64_t)sb.st_size > GPUSEG__SHM_MAX_DATA_OFFSET + GPUSEG_SHM_MAX_BYTES)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "shm %s: segment of %lld bytes is too large",
                            nm, (long long)sb.st_size);
    size_t map_bytes = (size_t)sb.st_size;
    void *m = mmap(NULL, map_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return open_fail_errno(nm, "mmap");
    unsigned char *map = m;
    uint32_t crc = gpuseg_shm_checksum(0, map + info.data_offset, (size_t)info.data_bytes);
    gpuseg_shm *seg = NULL;
    if (crc != info.checksum)
        st = gpuseg__fail(NULL, GPUSEG_CHECKSUM,
                          "shm %s: payload checksum 0x%08x does not match the header's 0x%08x "
                          "(corrupt or modified after publication)",
                          nm, crc, info.checksum);
    else if (!(seg = calloc(1, sizeof *seg)))
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "shm %s: out of memory", nm);
    if (st != GPUSEG_OK) {
        munmap(map, map_bytes);
        return st;
    }
    seg->info = info;
    seg->map = map;
    seg->map_bytes = map_bytes;
    *out = seg;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_shm_open(const char *name, double timeout_s, gpuseg_shm **out) {
    gpuseg__clear_error(NULL);
    if (!out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_shm_open: NULL argument");
    *out = NULL;
    char nm[GPUSEG_SHM_NAME_MAX];
    gpuseg_status st = gpuseg__shm_name(name, nm);
    if (st != GPUSEG_OK)
        return st;
    if (!(timeout_s >= 0) || timeout_s > 1e7)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "shm %s: timeout %g s is not valid", nm,
                            timeout_s);
    int fd = -1;
    if ((st = open_owned(nm, &fd)) != GPUSEG_OK)
        return st;
    unsigned char hdr[GPUSEG_SHM_HEADER_SIZE];
    st = wait_ready(nm, fd, timeout_s, hdr);
    if (st == GPUSEG_OK)
        st = map_segment(nm, fd, hdr, out);
    close(fd);
    return st;
}

gpuseg_status gpuseg_shm_labels_view(const gpuseg_shm *seg, gpuseg_image *view) {
    gpuseg__clear_error(NULL);
    if (!seg || !view)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_shm_labels_view: NULL argument");
    const gpuseg_shm_info *in = &seg->info;
    if (in->ndim != 2 && in->ndim != 3)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "shm %s: %u-dimensional array is not a label image ([H, W] or "
                            "[pages, H, W])",
                            in->name, in->ndim);
    uint64_t pages = in->ndim == 3 ? in->shape[0] : 1;
    uint64_t h = in->shape[in->ndim - 2], w = in->shape[in->ndim - 1];
    if (w > GPUSEG_MAX_IMAGE_SIDE || h > GPUSEG_MAX_IMAGE_SIDE || w * h > GPUSEG_MAX_IMAGE_PIXELS ||
        pages > UINT32_MAX)
        return gpuseg__fail(
            NULL, GPUSEG_TOO_LARGE, "shm %s: %llu x %llu x %llu pages exceeds the image limits",
            in->name, (unsigned long long)w, (unsigned long long)h, (unsigned long long)pages);
    memset(view, 0, sizeof *view);
    view->width = (uint32_t)w;
    view->height = (uint32_t)h;
    view->channels = 1;
    view->pages = (uint32_t)pages;
    view->dtype = in->dtype;
    view->data = (void *)(uintptr_t)(seg->map + in->data_offset);
    return GPUSEG_OK;
}

gpuseg_status gpuseg_shm_json(const gpuseg_shm_info *info, char *buf, size_t len) {
    if (!info || !buf || len == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_shm_json: NULL argument");
    json_t *shape = json_array();
    for (uint32_t i = 0; i < info->ndim && i < GPUSEG_SHM_MAX_DIMS; i++)
        json_array_append_new(shape, json_integer((json_int_t)info->shape[i]));
    /* JSON has no NaN or infinity (producers only publish finite diameters); an integral
     * diameter is written as an integer (0, not 0.0) and others in their shortest form. */
    double d = info->diameter;
    json_t *diam = !isfinite(d)                                    ? json_null()
                   : d == floor(d) && fabs(d) < 9007199254740992.0 ? json_integer((json_int_t)d)
                                                                   : json_real(d);
    json_t *o = json_pack("{s:s,s:o,s:s,s:I,s:I,s:I,s:o}", "shm", info->name, "shape", shape,
                          "dtype", gpuseg_dtype_name(info->dtype), "offset",
                          (json_int_t)info->data_offset, "bytes", (json_int_t)info->data_bytes,
                          "n_masks", (json_int_t)info->n_masks, "diameter", diam);
    size_t flags = JSON_COMPACT | JSON_PRESERVE_ORDER |
                   JSON_REAL_PRECISION(isfinite(d) ? gpuseg_shortest_digits(d) : 17);
    size_t n = o ? json_dumpb(o, buf, len, flags) : 0;
    json_decref(o);
    if (n == 0)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "shm %s: cannot format its JSON line",
                            info->name);
    if (n >= len)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "shm %s: JSON line needs %zu bytes, have %zu",
                            info->name, n + 1, len);
    buf[n] = '\0';
    return GPUSEG_OK;
}
