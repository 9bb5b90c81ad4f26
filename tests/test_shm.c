/* tests/test_shm.c: the shared-memory hand-off. CRC-32 against the standard check value and a
 * bitwise reference; names and the JSON line; the header bytes at the offsets docs/shm.md
 * documents; producer (`gpuseg shm put`, or this process) and saver (`gpuseg save`) as separate
 * processes with byte-for-byte equal output in every format; a saver that waits for a stalled
 * producer; a producer killed mid-write; every corrupted header field; foreign owners; many
 * concurrent producers; `shm clean` removing dead producers' segments only; the device-buffer
 * path; the Python example (its own ctest entry, test_shm_numpy: a skip without numpy). Every
 * segment a test makes is named with this run's prefix and removed; main() fails the run if any is
 * left. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gpuseg/shm_cl.h"
#include "shm/shm_internal.h"
#include "testutil.h"

/* "/gpuseg-tst<pid of main>-": every named segment of this run starts with it. */
static char g_prefix[64];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A segment name for this test: prefix + tag + pid of the test's process. */
static void seg_name(char *buf, const char *tag) {
    snprintf(buf, GPUSEG_SHM_NAME_MAX, "%s%s-%d", g_prefix, tag, (int)getpid());
}

static bool seg_exists(const char *name) {
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0) {
        ck_assert_int_eq(errno, ENOENT);
        return false;
    }
    close(fd);
    return true;
}

/* Maps a segment read-write (for corrupting it); *size receives its size. */
static unsigned char *map_rw(const char *name, size_t *size) {
    int fd = shm_open(name, O_RDWR, 0);
    ck_assert_msg(fd >= 0, "shm_open %s: %s", name, strerror(errno));
    struct stat sb;
    ck_assert_int_eq(fstat(fd, &sb), 0);
    void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    ck_assert(m != MAP_FAILED);
    close(fd);
    *size = (size_t)sb.st_size;
    return m;
}

/* Reads the 128-byte header without mapping; false when not yet there. */
static bool read_header(const char *name, unsigned char *hdr) {
    int fd = shm_open(name, O_RDONLY, 0);
    if (fd < 0)
        return false;
    ssize_t n = pread(fd, hdr, GPUSEG_SHM_HEADER_SIZE, 0);
    close(fd);
    return n == (ssize_t)GPUSEG_SHM_HEADER_SIZE;
}

/* Waits until a producer has written the segment's header (magic present). */
static void wait_magic(const char *name) {
    unsigned char hdr[GPUSEG_SHM_HEADER_SIZE];
    double t0 = now_s();
    while (!(read_header(name, hdr) && memcmp(hdr, GPUSEG_SHM_MAGIC, 8) == 0)) {
        ck_assert_msg(now_s() - t0 < 20, "%s did not appear within 20 s", name);
        sleep_ms(1);
    }
}

static uint32_t header_state(const char *name) {
    unsigned char hdr[GPUSEG_SHM_HEADER_SIZE];
    ck_assert(read_header(name, hdr));
    return gpuseg__ld32(hdr + GPUSEG__SHM_OFF_STATE);
}

/* Starts `gpuseg args...` in the background; stdout/stderr go to files (NULL: /dev/null).
 * stall_ms > 0 sets GPUSEG_SHM_TEST_STALL_MS. The child dies with this test process. */
static pid_t spawn_cli(int stall_ms, const char *out, const char *err, const char *const *args) {
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (stall_ms > 0) {
            char v[32];
            snprintf(v, sizeof v, "%d", stall_ms);
            setenv("GPUSEG_SHM_TEST_STALL_MS", v, 1);
        }
        int fo = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int fe = open(err ? err : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fo < 0 || fe < 0)
            _exit(126);
        dup2(fo, 1);
        dup2(fe, 2);
        char *argv[32];
        int n = 0;
        argv[n++] = (char *)"gpuseg";
        for (; args[n - 1] && n < 31; n++)
            argv[n] = (char *)(uintptr_t)args[n - 1];
        argv[n] = NULL;
        execv(GPUSEG_CLI, argv);
        _exit(127);
    }
    return pid;
}

static int wait_rc(pid_t pid) {
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* 1 when a folder has any entry (the savers must leave no file, partial or temporary). */
static int dir_nonempty(const char *dir) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "test -z \"$(ls -A '%s')\"", dir);
    return system(cmd) == 0 ? 0 : 1;
}

/* Random labels in [0, max_label], deterministic. */
static void *make_labels(gpuseg_dtype dt, size_t n, uint32_t max_label, uint32_t seed) {
    size_t es = dt == GPUSEG_DTYPE_U16 ? 2 : 4;
    unsigned char *d = malloc(n * es);
    ck_assert_ptr_nonnull(d);
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        uint32_t v = (x >> 8) % (max_label + 1);
        if (es == 2)
            ((uint16_t *)d)[i] = (uint16_t)v;
        else
            ((uint32_t *)d)[i] = v;
    }
    return d;
}

static uint64_t distinct_nonzero(gpuseg_dtype dt, const void *d, size_t n) {
    static unsigned char seen[1 << 17];
    memset(seen, 0, sizeof seen);
    uint64_t c = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t v = dt == GPUSEG_DTYPE_U16 ? ((const uint16_t *)d)[i] : ((const uint32_t *)d)[i];
        ck_assert_uint_lt(v, sizeof seen);
        c += v && !seen[v];
        seen[v] = 1;
    }
    return c;
}

/* Extracts the value of "shm" from a producer's JSON line. */
static void json_name(const char *json, char *name) {
    const char *p = strstr(json, "{\"shm\":\"");
    ck_assert_msg(p != NULL, "no JSON line in '%s'", json);
    p += 8;
    const char *q = strchr(p, '"');
    ck_assert_ptr_nonnull(q);
    ck_assert_uint_lt((size_t)(q - p), GPUSEG_SHM_NAME_MAX);
    memcpy(name, p, (size_t)(q - p));
    name[q - p] = '\0';
}

/* ---- checksum, names, JSON -------------------------------------------------------------- */

static uint32_t crc_bitwise(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

START_TEST(checksum_values) {
    /* the CRC-32/ISO-HDLC check value (= zlib.crc32(b"123456789")) */
    ck_assert_uint_eq(gpuseg_shm_checksum(0, "123456789", 9), 0xCBF43926u);
    ck_assert_uint_eq(gpuseg_shm_checksum(0, "", 0), 0);
    unsigned char buf[1100];
    unsigned char *lab = make_labels(GPUSEG_DTYPE_U32, sizeof buf / 4, 0xFFFFFFFEu, 7);
    memcpy(buf, lab, sizeof buf);
    free(lab);
    /* every alignment and a spread of lengths against the bitwise definition */
    for (size_t off = 0; off < 9; off++)
        for (size_t len = 0; len + off <= sizeof buf; len += 37)
            ck_assert_uint_eq(gpuseg_shm_checksum(0, buf + off, len), crc_bitwise(buf + off, len));
    /* continuing from a previous value equals one pass */
    uint32_t part = gpuseg_shm_checksum(0, buf, 333);
    ck_assert_uint_eq(gpuseg_shm_checksum(part, buf + 333, sizeof buf - 333),
                      gpuseg_shm_checksum(0, buf, sizeof buf));
}
END_TEST

START_TEST(names_and_json) {
    char out[GPUSEG_SHM_NAME_MAX];
    ck_assert_int_eq(gpuseg__shm_name("gpuseg-ab_c.1", out), GPUSEG_OK);
    ck_assert_str_eq(out, "/gpuseg-ab_c.1");
    ck_assert_int_eq(gpuseg__shm_name("/gpuseg-x", out), GPUSEG_OK);
    ck_assert_str_eq(out, "/gpuseg-x");
    const char *bad[] = {"", "/other", "gpuseg-", "/gpuseg-a/b", "gpuseg-a b", "gpuseg-$x"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_int_eq(gpuseg__shm_name(bad[i], out), GPUSEG_INVALID_ARGUMENT);
        ck_assert(gpuseg_last_error()[0] != '\0');
    }
    char longname[200];
    memset(longname, 'a', sizeof longname);
    memcpy(longname, "gpuseg-", 7);
    longname[199] = '\0';
    ck_assert_int_eq(gpuseg__shm_name(longname, out), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "longer than"));

    gpuseg_shm_info in;
    memset(&in, 0, sizeof in);
    snprintf(in.name, sizeof in.name, "/gpuseg-x");
    in.dtype = GPUSEG_DTYPE_U16;
    in.ndim = 2;
    in.shape[0] = 5;
    in.shape[1] = 7;
    in.data_offset = 4096;
    in.data_bytes = 70;
    in.n_masks = 3;
    in.diameter = 17.5;
    char js[512];
    ck_assert_int_eq(gpuseg_shm_json(&in, js, sizeof js), GPUSEG_OK);
    ck_assert_str_eq(js, "{\"shm\":\"/gpuseg-x\",\"shape\":[5,7],\"dtype\":\"uint16\","
                         "\"offset\":4096,\"bytes\":70,\"n_masks\":3,\"diameter\":17.5}");
    in.diameter = 0.1; /* shortest form that reads back exactly */
    ck_assert_int_eq(gpuseg_shm_json(&in, js, sizeof js), GPUSEG_OK);
    ck_assert_ptr_nonnull(strstr(js, "\"diameter\":0.1}"));
    ck_assert_int_eq(gpuseg_shm_json(&in, js, 20), GPUSEG_TOO_LARGE);
    ck_assert_str_eq(gpuseg_shm_state_name(GPUSEG_SHM_READY), "ready");
    ck_assert_str_eq(gpuseg_shm_state_name((gpuseg_shm_state)9), "invalid");
}
END_TEST

/* ---- library round trip and the documented byte layout ---------------------------------- */

START_TEST(library_roundtrip) {
    char name[GPUSEG_SHM_NAME_MAX];
    seg_name(name, "rt");
    const uint64_t shape[3] = {2, 5, 7};
    gpuseg_shm *w = NULL;
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U32, 3, shape, &w), GPUSEG_OK);
    const gpuseg_shm_info *wi = gpuseg_shm_get_info(w);
    long ps = sysconf(_SC_PAGESIZE);
    ck_assert_uint_eq(wi->data_offset, ps > 4096 ? (uint64_t)ps : 4096u);
    ck_assert_uint_eq(wi->data_bytes, 2 * 5 * 7 * 4);
    ck_assert_int_eq(wi->state, GPUSEG_SHM_WRITING);
    ck_assert_int_eq(header_state(name), GPUSEG_SHM_WRITING);
    /* a reader meanwhile: not ready (no waiting) */
    gpuseg_shm *r = NULL;
    ck_assert_int_eq(gpuseg_shm_open(name, 0, &r), GPUSEG_NOT_READY);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), name));
    uint32_t *p = gpuseg_shm_payload_writable(w);
    ck_assert_ptr_nonnull(p);
    for (int i = 0; i < 70; i++)
        p[i] = (uint32_t)(i % 10);
    ck_assert_int_eq(gpuseg_shm_publish(w, 9, 12.25), GPUSEG_OK);
    ck_assert_ptr_null(gpuseg_shm_payload_writable(w));
    ck_assert_int_eq(gpuseg_shm_publish(w, 9, 12.25), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_shm_abort(w), GPUSEG_INVALID_ARGUMENT);

    /* the header bytes, at the offsets of docs/shm.md */
    unsigned char h[GPUSEG_SHM_HEADER_SIZE];
    ck_assert(read_header(name, h));
    ck_assert(memcmp(h, "GPUSEGSH", 8) == 0);
    ck_assert_uint_eq(gpuseg__ld32(h + 8), 1);
    ck_assert_uint_eq(gpuseg__ld32(h + 12), 128);
    ck_assert_uint_eq(gpuseg__ld32(h + 16), 1);
    ck_assert_uint_eq(gpuseg__ld32(h + 20), 3);
    ck_assert_uint_eq(gpuseg__ld32(h + 24), 3);
    ck_assert_uint_eq(gpuseg__ld32(h + 28), 1);
    ck_assert_uint_eq(gpuseg__ld64(h + 32), 2);
    ck_assert_uint_eq(gpuseg__ld64(h + 40), 5);
    ck_assert_uint_eq(gpuseg__ld64(h + 48), 7);
    ck_assert_uint_eq(gpuseg__ld64(h + 56), 0);
    ck_assert_uint_eq(gpuseg__ld64(h + 64), wi->data_offset);
    ck_assert_uint_eq(gpuseg__ld64(h + 72), 280);
    ck_assert_uint_eq(gpuseg__ld64(h + 80), 9);
    ck_assert(gpuseg__ldf64(h + 88) == 12.25);
    ck_assert_uint_eq(gpuseg__ld64(h + 96), (uint64_t)getpid());
    ck_assert_uint_eq(gpuseg__ld64(h + 104), gpuseg__proc_start_time(getpid(), NULL));
    ck_assert_uint_ne(gpuseg__ld64(h + 104), 0);
    ck_assert_uint_eq(gpuseg__ld32(h + 112), gpuseg_shm_checksum(0, p, 280));
    ck_assert_uint_eq(gpuseg__ld32(h + 116), 0);
    uint64_t created = gpuseg__ld64(h + 120);
    ck_assert_uint_gt(created, (uint64_t)(time(NULL) - 60) * 1000000000ull);

    ck_assert_int_eq(gpuseg_shm_open(name, 0, &r), GPUSEG_OK);
    const gpuseg_shm_info *ri = gpuseg_shm_get_info(r);
    ck_assert_str_eq(ri->name, name);
    ck_assert_int_eq(ri->state, GPUSEG_SHM_READY);
    ck_assert_int_eq(ri->dtype, GPUSEG_DTYPE_U32);
    ck_assert_uint_eq(ri->ndim, 3);
    ck_assert_uint_eq(ri->n_masks, 9);
    ck_assert(ri->diameter == 12.25);
    ck_assert_int_eq(ri->producer_pid, getpid());
    ck_assert(memcmp(gpuseg_shm_payload(r), p, 280) == 0);
    ck_assert_ptr_null(gpuseg_shm_payload_writable(r));
    gpuseg_image view;
    ck_assert_int_eq(gpuseg_shm_labels_view(r, &view), GPUSEG_OK);
    ck_assert_uint_eq(view.pages, 2);
    ck_assert_uint_eq(view.height, 5);
    ck_assert_uint_eq(view.width, 7);
    ck_assert_uint_eq(view.channels, 1);
    ck_assert_ptr_eq(view.data, gpuseg_shm_payload(r));
    gpuseg_shm_free(r);
    gpuseg_shm_free(w);
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), name));
    ck_assert_int_eq(gpuseg_shm_open(name, 0, &r), GPUSEG_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "no such segment"));
    ck_assert_ptr_null(r);

    /* one-call producer from an image; a random name */
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(6, 4, 1, 1, GPUSEG_DTYPE_U16, &img), GPUSEG_OK);
    ((uint16_t *)img->data)[5] = 1;
    ck_assert_int_eq(gpuseg_shm_create_labels(NULL, img, 1, 0, &w), GPUSEG_OK);
    char rnd[GPUSEG_SHM_NAME_MAX];
    snprintf(rnd, sizeof rnd, "%s", gpuseg_shm_get_info(w)->name);
    ck_assert_uint_eq(strlen(rnd), 8 + 16);
    ck_assert_uint_eq(strspn(rnd + 8, "0123456789abcdef"), 16);
    gpuseg_shm_free(w);
    ck_assert_int_eq(gpuseg_shm_open(rnd, 0, &r), GPUSEG_OK);
    ck_assert_uint_eq(gpuseg_shm_get_info(r)->shape[0], 4);
    ck_assert_uint_eq(gpuseg_shm_get_info(r)->shape[1], 6);
    gpuseg_shm_free(r);
    ck_assert_int_eq(gpuseg_shm_unlink(rnd), GPUSEG_OK);
    /* a failing one-call producer leaves nothing and keeps its message */
    seg_name(name, "rt1");
    ck_assert_int_eq(gpuseg_shm_create_labels(name, img, 100, 0, &w), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "100 masks"));
    ck_assert(!seg_exists(name));
    gpuseg_image_free(img);

    /* abort -> readers stop with "failed"; closing unpublished -> failed too */
    seg_name(name, "ab");
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U16, 1, shape, &w), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_abort(w), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_open(name, 5, &r), GPUSEG_NOT_READY);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "marked it failed"));
    gpuseg_shm_free(w);
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U16, 1, shape, &w), GPUSEG_OK);
    gpuseg_shm_free(w);
    ck_assert_int_eq(header_state(name), GPUSEG_SHM_FAILED);

    /* producer-side refusals */
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U16, 1, shape, &w),
                     GPUSEG_INVALID_ARGUMENT); /* exists: O_EXCL */
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "exists"));
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_F32, 1, shape, &w), GPUSEG_UNSUPPORTED);
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U16, 5, shape, &w), GPUSEG_FORMAT);
    const uint64_t zero[2] = {3, 0}, huge[2] = {1ull << 32, 1ull << 32};
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U16, 2, zero, &w), GPUSEG_FORMAT);
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U16, 2, huge, &w), GPUSEG_TOO_LARGE);
    ck_assert(!seg_exists(name));
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U16, 1, shape, &w), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_publish(w, 0, NAN), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_shm_publish(w, 3, 0), GPUSEG_INVALID_ARGUMENT); /* 3 masks, 2 px */
    ck_assert_int_eq(gpuseg_shm_publish(w, 2, 0), GPUSEG_OK);
    gpuseg_shm_free(w);
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
}
END_TEST

/* ---- producer and saver as separate processes ------------------------------------------- */

START_TEST(cli_put_and_save) {
    const char *dir = tu_tmpdir();
    char in32[256], in16[256], out[256], js[256];
    const size_t H = 37, W = 53, N = H * W;
    uint32_t *l32 = make_labels(GPUSEG_DTYPE_U32, N, 300, 1);
    uint16_t *l16 = make_labels(GPUSEG_DTYPE_U16, 3 * N, 1000, 2);
    snprintf(in32, sizeof in32, "%s/l32.npy", dir);
    snprintf(in16, sizeof in16, "%s/l16.npy", dir);
    const uint64_t s2[2] = {H, W}, s3[3] = {3, H, W};
    ck_assert_int_eq(gpuseg_npy_write(in32, GPUSEG_DTYPE_U32, 2, s2, l32), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_npy_write(in16, GPUSEG_DTYPE_U16, 3, s3, l16), GPUSEG_OK);

    tu_cli_result *r = tu_cli("shm put '%s' --json --diameter 17.5", in32);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_int_eq(tu_count_lines(r->out), 1);
    char name[GPUSEG_SHM_NAME_MAX], expect[512];
    json_name(r->out, name);
    snprintf(expect, sizeof expect,
             "{\"shm\":\"%s\",\"shape\":[37,53],\"dtype\":\"uint32\",\"offset\":4096,"
             "\"bytes\":%zu,\"n_masks\":%llu,\"diameter\":17.5}\n",
             name, N * 4, (unsigned long long)distinct_nonzero(GPUSEG_DTYPE_U32, l32, N));
    ck_assert_str_eq(r->out, expect);
    free(r);
    gpuseg_shm *seg = NULL;
    ck_assert_int_eq(gpuseg_shm_open(name, 0, &seg), GPUSEG_OK);
    ck_assert(memcmp(gpuseg_shm_payload(seg), l32, N * 4) == 0);

    /* .bin + sidecar: byte for byte the segment's payload */
    snprintf(out, sizeof out, "%s/o.bin", dir);
    r = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_msg(r->status == 0 && r->err[0] == '\0', "%d %s", r->status, r->err);
    free(r);
    tu_assert_file_equals(out, gpuseg_shm_payload(seg), N * 4);
    snprintf(js, sizeof js, "%s/o.json", dir);
    size_t jn = 0;
    char *j = tu_read_file(js, &jn);
    ck_assert_ptr_nonnull(strstr(j, "\"shape\":[37,53]"));
    ck_assert_ptr_nonnull(strstr(j, "\"dtype\":\"uint32\""));
    snprintf(expect, sizeof expect, "\"n_masks\":%llu,\"diameter\":17.5",
             (unsigned long long)gpuseg_shm_get_info(seg)->n_masks);
    ck_assert_msg(strstr(j, expect) != NULL, "%s", j);
    free(j);
    /* .npy: the data part equals the payload; .tif and .png read back equal */
    snprintf(out, sizeof out, "%s/o.npy", dir);
    r = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    gpuseg_npy *npy = NULL;
    ck_assert_int_eq(gpuseg_npy_read(out, &npy), GPUSEG_OK);
    ck_assert_int_eq(npy->dtype, GPUSEG_DTYPE_U32);
    ck_assert(npy->ndim == 2 && npy->shape[0] == H && npy->shape[1] == W);
    ck_assert(memcmp(npy->data, gpuseg_shm_payload(seg), N * 4) == 0);
    gpuseg_npy_free(npy);
    const char *exts[] = {"tif", "png"};
    for (int e = 0; e < 2; e++) {
        snprintf(out, sizeof out, "%s/o.%s", dir, exts[e]);
        r = tu_cli("save --shm /%s -o '%s'", name + 1, out);
        ck_assert_msg(r->status == 0, "%s: %s", exts[e], r->err);
        free(r);
        gpuseg_image *img = NULL;
        ck_assert_int_eq(gpuseg_image_read(out, &img), GPUSEG_OK);
        ck_assert(img->width == W && img->height == H && img->channels == 1);
        for (size_t i = 0; i < N; i++) {
            uint32_t v = img->dtype == GPUSEG_DTYPE_U16 ? ((uint16_t *)img->data)[i]
                                                        : ((uint32_t *)img->data)[i];
            ck_assert_uint_eq(v, l32[i]);
        }
        gpuseg_image_free(img);
    }
    gpuseg_shm_free(seg);
    /* --unlink removes the segment after saving */
    snprintf(out, sizeof out, "%s/u.bin", dir);
    r = tu_cli("save --shm %s -o '%s' --unlink", name, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    ck_assert(!seg_exists(name));
    tu_assert_file_equals(out, l32, N * 4);

    /* three pages of uint16: .bin and .tif keep them; .png refuses, leaving no file */
    char sub[256];
    snprintf(sub, sizeof sub, "%s/p", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    r = tu_cli("shm put '%s' --json", in16);
    ck_assert_msg(r->status == 0, "%s", r->err);
    json_name(r->out, name);
    ck_assert_ptr_nonnull(strstr(r->out, "\"shape\":[3,37,53],\"dtype\":\"uint16\""));
    free(r);
    /* without --name, $GPUSEG_SHM_PREFIX names the segment (as for segment and shm batch); a
     * bad one is refused in one line and nothing is created */
    char pre[64], pname[128];
    snprintf(pre, sizeof pre, "/gpuseg-tput%d-", (int)getpid());
    setenv("GPUSEG_SHM_PREFIX", pre, 1);
    r = tu_cli("shm put '%s'", in16);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strncmp(r->out, pre, strlen(pre)) == 0, "%s", r->out);
    snprintf(pname, sizeof pname, "%.*s", (int)strcspn(r->out, "\n"), r->out);
    ck_assert_uint_eq(strlen(pname), strlen(pre) + 16);
    free(r);
    ck_assert_int_eq(gpuseg_shm_unlink(pname), GPUSEG_OK);
    setenv("GPUSEG_SHM_PREFIX", "/bad", 1);
    r = tu_cli("shm put '%s'", in16);
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "GPUSEG_SHM_PREFIX='/bad'"));
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    free(r);
    unsetenv("GPUSEG_SHM_PREFIX");
    snprintf(out, sizeof out, "%s/p.bin", sub);
    r = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    tu_assert_file_equals(out, l16, 3 * N * 2);
    snprintf(out, sizeof out, "%s/p.tif", dir);
    r = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_read(out, &img), GPUSEG_OK);
    ck_assert_uint_eq(img->pages, 3);
    ck_assert(memcmp(img->data, l16, 3 * N * 2) == 0);
    gpuseg_image_free(img);
    snprintf(sub, sizeof sub, "%s/q", dir);
    ck_assert_int_eq(mkdir(sub, 0700), 0);
    snprintf(out, sizeof out, "%s/p.png", sub);
    r = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_ptr_nonnull(strstr(r->err, "p.png"));
    free(r);
    snprintf(out, sizeof out, "%s/p.xyz", sub);
    r = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "extension"));
    free(r);
    ck_assert_int_eq(dir_nonempty(sub), 0);

    /* command-line errors */
    r = tu_cli("save --shm %s", name);
    ck_assert_int_eq(r->status, 2);
    free(r);
    r = tu_cli("save --shm %s -o x.bin extra", name);
    ck_assert_int_eq(r->status, 2);
    free(r);
    r = tu_cli("save --shm /other -o '%s/x.bin'", sub);
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, "not a gpuseg segment name"));
    free(r);
    r = tu_cli("shm rm %s", name);
    ck_assert_int_eq(r->status, 0);
    free(r);
    r = tu_cli("shm rm %s", name);
    ck_assert_int_eq(r->status, 1);
    ck_assert_ptr_nonnull(strstr(r->err, name));
    free(r);
    ck_assert_int_eq(dir_nonempty(sub), 0);
    free(l32);
    free(l16);
    tu_rmtree(dir);
}
END_TEST

START_TEST(saver_waits_for_producer) {
    const char *dir = tu_tmpdir();
    char in[256], out[256], name[GPUSEG_SHM_NAME_MAX];
    const size_t N = 64 * 48;
    uint16_t *lab = make_labels(GPUSEG_DTYPE_U16, N, 40, 3);
    snprintf(in, sizeof in, "%s/l.npy", dir);
    const uint64_t shape[2] = {64, 48};
    ck_assert_int_eq(gpuseg_npy_write(in, GPUSEG_DTYPE_U16, 2, shape, lab), GPUSEG_OK);
    seg_name(name, "wait");
    const char *args[] = {"shm", "put", in, "--json", "--name", name, NULL};
    /* The producer sleeps 1500 ms in state "writing" before it publishes. */
    pid_t prod = spawn_cli(1500, NULL, NULL, args);
    wait_magic(name);
    ck_assert_int_eq(header_state(name), GPUSEG_SHM_WRITING);
    snprintf(out, sizeof out, "%s/w.bin", dir);
    double t0 = now_s();
    tu_cli_result *r = tu_cli("save --shm %s -o '%s' --timeout 30", name, out);
    double waited = now_s() - t0;
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    /* The saver was started while the producer still had ~1.5 s of its stall to go; 0.5 s is
     * a margin for a slow machine, not a measurement: it proves the saver waited. */
    ck_assert_msg(waited > 0.5, "saver returned after %.3f s", waited);
    ck_assert_int_eq(wait_rc(prod), 0);
    ck_assert_int_eq(header_state(name), GPUSEG_SHM_READY);
    tu_assert_file_equals(out, lab, N * 2);
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
    free(lab);
    tu_rmtree(dir);
}
END_TEST

START_TEST(killed_producer_refused) {
    const char *dir = tu_tmpdir();
    char in[256], out[256], name[GPUSEG_SHM_NAME_MAX];
    const size_t N = 30 * 20;
    uint16_t *lab = make_labels(GPUSEG_DTYPE_U16, N, 40, 4);
    snprintf(in, sizeof in, "%s/l.npy", dir);
    const uint64_t shape[2] = {30, 20};
    ck_assert_int_eq(gpuseg_npy_write(in, GPUSEG_DTYPE_U16, 2, shape, lab), GPUSEG_OK);
    free(lab);
    char outdir[256];
    snprintf(outdir, sizeof outdir, "%s/out", dir);
    ck_assert_int_eq(mkdir(outdir, 0700), 0);
    snprintf(out, sizeof out, "%s/k.bin", outdir);
    seg_name(name, "kill");
    const char *args[] = {"shm", "put", in, "--name", name, NULL};
    pid_t prod = spawn_cli(60000, NULL, NULL, args);
    wait_magic(name);

    /* alive but stalled: "not ready" after the timeout */
    tu_cli_result *r = tu_cli("save --shm %s -o '%s' --timeout 0.3", name, out);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, name) && strstr(r->err, "not ready after 0.3 s"), "%s", r->err);
    free(r);
    ck_assert_int_eq(dir_nonempty(outdir), 0);

    /* SIGKILL mid-write: refused at once, first as a zombie (not yet reaped), then reaped */
    ck_assert_int_eq(kill(prod, SIGKILL), 0);
    for (int reaped = 0; reaped < 2; reaped++) {
        if (reaped)
            ck_assert_int_eq(wait_rc(prod), 128 + SIGKILL);
        double t0 = now_s();
        r = tu_cli("save --shm %s -o '%s' --timeout 20", name, out);
        ck_assert_int_eq(r->status, 1);
        ck_assert_msg(strstr(r->err, name) && strstr(r->err, "not ready") &&
                          strstr(r->err, "is gone"),
                      "%s", r->err);
        /* detected from the pid, not by running into the 20 s timeout */
        ck_assert_msg(now_s() - t0 < 10, "took %.1f s", now_s() - t0);
        free(r);
        ck_assert_int_eq(dir_nonempty(outdir), 0);
    }
    r = tu_cli("shm list --prefix %s", name);
    ck_assert_int_eq(r->status, 0);
    ck_assert_msg(strstr(r->out, name) && strstr(r->out, " writing ") && strstr(r->out, " no "),
                  "%s", r->out);
    free(r);
    r = tu_cli("shm clean --prefix %s", name);
    ck_assert_int_eq(r->status, 0);
    ck_assert_str_eq(r->out, "removed 1 segment\n");
    free(r);
    ck_assert(!seg_exists(name));

    /* a producer that gives up marks the segment failed */
    gpuseg_shm *w = NULL;
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U16, 2, shape, &w), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_abort(w), GPUSEG_OK);
    r = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "marked it failed"), "%s", r->err);
    free(r);
    ck_assert_int_eq(dir_nonempty(outdir), 0);
    gpuseg_shm_free(w);
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
    tu_rmtree(dir);
}
END_TEST

/* ---- corrupted headers -------------------------------------------------------------------- */

typedef struct {
    unsigned off, size; /* field to overwrite (4 or 8 bytes; 1 for a single byte) */
    uint64_t value;
    gpuseg_status status;
    const char *text; /* expected in the message */
} corruption;

START_TEST(corrupt_headers) {
    char name[GPUSEG_SHM_NAME_MAX];
    seg_name(name, "bad");
    const uint32_t H = 37, W = 53;
    uint16_t *lab = make_labels(GPUSEG_DTYPE_U16, (size_t)H * W, 500, 5);
    gpuseg_image img = {W, H, 1, 1, GPUSEG_DTYPE_U16, lab};
    gpuseg_shm *w = NULL;
    ck_assert_int_eq(gpuseg_shm_create_labels(name, &img, 100, 20, &w), GPUSEG_OK);
    gpuseg_shm_free(w);
    size_t size = 0;
    unsigned char *m = map_rw(name, &size);
    ck_assert_uint_eq(size, 4096 + H * W * 2);
    unsigned char saved[GPUSEG_SHM_HEADER_SIZE];
    memcpy(saved, m, sizeof saved);
    uint64_t nan_bits;
    double nan = NAN, neg = -1.0;
    memcpy(&nan_bits, &nan, 8);
    uint64_t neg_bits;
    memcpy(&neg_bits, &neg, 8);
    const corruption cases[] = {
        {0, 1, 'X', GPUSEG_FORMAT, "bad magic"},
        {8, 4, 7, GPUSEG_UNSUPPORTED, "layout version 7"},
        {12, 4, 64, GPUSEG_FORMAT, "header size 64"},
        {12, 4, 129, GPUSEG_FORMAT, "header size 129"},
        {16, 4, 9, GPUSEG_FORMAT, "invalid state word 9"},
        {20, 4, 5, GPUSEG_UNSUPPORTED, "dtype code 5"},
        {20, 4, 3, GPUSEG_FORMAT, "does not match shape"},
        {24, 4, 5, GPUSEG_FORMAT, "5 dimensions"},
        {24, 4, 0, GPUSEG_FORMAT, "0 dimensions"},
        {28, 4, 2, GPUSEG_UNSUPPORTED, "checksum kind 2"},
        {32, 8, 0, GPUSEG_FORMAT, "dimension 0 is 0"},
        {48, 8, 1, GPUSEG_FORMAT, "unused shape entry 2"},
        {32, 8, 1ull << 62, GPUSEG_TOO_LARGE, "more than"},
        {64, 8, 100, GPUSEG_FORMAT, "data offset 100"},
        {64, 8, 8192, GPUSEG_FORMAT, "segment has only"},
        {72, 8, (uint64_t)H * W * 2 + 2, GPUSEG_FORMAT, "does not match shape"},
        {80, 8, 1000000, GPUSEG_FORMAT, "1000000 masks"},
        {88, 8, nan_bits, GPUSEG_FORMAT, "diameter"},
        {88, 8, neg_bits, GPUSEG_FORMAT, "diameter -1"},
        {96, 8, 0, GPUSEG_FORMAT, "pid 0"},
        {112, 4, 0x12345678, GPUSEG_CHECKSUM, "checksum"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const corruption *c = &cases[i];
        if (c->size == 1)
            m[c->off] = (unsigned char)c->value;
        else if (c->size == 4)
            gpuseg__st32(m + c->off, (uint32_t)c->value);
        else
            gpuseg__st64(m + c->off, c->value);
        gpuseg_shm *r = NULL;
        gpuseg_status st = gpuseg_shm_open(name, 0, &r);
        ck_assert_msg(st == c->status && strstr(gpuseg_last_error(), name) &&
                          strstr(gpuseg_last_error(), c->text),
                      "case %zu: %s: %s", i, gpuseg_status_name(st), gpuseg_last_error());
        ck_assert_ptr_null(r);
        memcpy(m, saved, sizeof saved);
    }
    /* a shape larger than the segment, with a consistent data size */
    gpuseg__st64(m + 32, 1u << 20);
    gpuseg__st64(m + 72, (uint64_t)(1u << 20) * W * 2);
    gpuseg_shm *r = NULL;
    ck_assert_int_eq(gpuseg_shm_open(name, 0, &r), GPUSEG_FORMAT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "shape 1048576x53 of uint16 needs"));
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "segment has only"));

    /* the same through the saver (a separate process): one line naming the segment, no file */
    const char *dir = tu_tmpdir();
    char out[256];
    snprintf(out, sizeof out, "%s/c.bin", dir);
    tu_cli_result *res = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_int_eq(res->status, 1);
    ck_assert_int_eq(tu_count_lines(res->err), 1);
    ck_assert_msg(strncmp(res->err, "gpuseg: shm ", 12) == 0 && strstr(res->err, name) &&
                      strstr(res->err, "segment has only"),
                  "%s", res->err);
    free(res);
    memcpy(m, saved, sizeof saved);
    gpuseg__st32(m + 8, 2);
    res = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_int_eq(res->status, 1);
    ck_assert_msg(strstr(res->err, "layout version 2"), "%s", res->err);
    free(res);
    memcpy(m, saved, sizeof saved);
    gpuseg__st32(m + 20, 4);
    res = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_int_eq(res->status, 1);
    ck_assert_msg(strstr(res->err, "dtype code 4"), "%s", res->err);
    free(res);
    memcpy(m, saved, sizeof saved);
    m[4096 + 1000] ^= 0x01; /* one flipped payload bit */
    res = tu_cli("save --shm %s -o '%s'", name, out);
    ck_assert_int_eq(res->status, 1);
    ck_assert_msg(strstr(res->err, "checksum") && strstr(res->err, name), "%s", res->err);
    free(res);
    ck_assert_int_eq(dir_nonempty(dir), 0);
    m[4096 + 1000] ^= 0x01;
    ck_assert_int_eq(gpuseg_shm_open(name, 0, &r), GPUSEG_OK); /* restored: accepted again */
    gpuseg_shm_free(r);

    /* truncated segments */
    munmap(m, size);
    int fd = shm_open(name, O_RDWR, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(ftruncate(fd, 4096), 0);
    ck_assert_int_eq(gpuseg_shm_open(name, 0, &r), GPUSEG_FORMAT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "segment has only 4096 bytes"));
    ck_assert_int_eq(ftruncate(fd, 100), 0);
    ck_assert_int_eq(gpuseg_shm_open(name, 0.05, &r), GPUSEG_NOT_READY);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "not yet sized"));
    close(fd);
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
    free(lab);
    tu_rmtree(dir);
}
END_TEST

/* Random corruptions of a valid header (1 to 4 random bytes, or a random 64-bit field): the
 * decoder must never accept a header whose array does not fit the segment, and never fail
 * without a message naming the segment. (A cheap in-suite stand-in for a fuzz target.) */
START_TEST(decode_random_headers) {
    unsigned char good[GPUSEG_SHM_HEADER_SIZE] = {0};
    memcpy(good, GPUSEG_SHM_MAGIC, 8);
    gpuseg__st32(good + 8, 1);
    gpuseg__st32(good + 12, 128);
    gpuseg__st32(good + 16, 1);
    gpuseg__st32(good + 20, 2);
    gpuseg__st32(good + 24, 2);
    gpuseg__st32(good + 28, 1);
    gpuseg__st64(good + 32, 30);
    gpuseg__st64(good + 40, 20);
    gpuseg__st64(good + 64, 4096);
    gpuseg__st64(good + 72, 1200);
    gpuseg__st64(good + 80, 7);
    gpuseg__st64(good + 96, 1234);
    const uint64_t size = 4096 + 1200;
    gpuseg_shm_info info;
    ck_assert_int_eq(gpuseg__shm_decode("/gpuseg-f", good, size, &info), GPUSEG_OK);
    uint32_t x = 12345;
    int accepted = 0;
    for (int it = 0; it < 20000; it++) {
        unsigned char h[GPUSEG_SHM_HEADER_SIZE];
        memcpy(h, good, sizeof h);
        x = x * 1664525u + 1013904223u;
        if (x & 0x80000000u) {
            int nb = 1 + (int)((x >> 8) & 3);
            for (int b = 0; b < nb; b++) {
                x = x * 1664525u + 1013904223u;
                h[(x >> 8) % GPUSEG_SHM_HEADER_SIZE] = (unsigned char)(x >> 24);
            }
        } else {
            x = x * 1664525u + 1013904223u;
            uint64_t v = ((uint64_t)x << 32) | (x * 2654435761u);
            gpuseg__st64(h + 8 * ((x >> 8) % 16), v >> ((x >> 4) & 63));
        }
        gpuseg__clear_error(NULL);
        gpuseg_status st = gpuseg__shm_decode("/gpuseg-f", h, size, &info);
        if (st == GPUSEG_OK) {
            accepted++;
            ck_assert_uint_le(info.data_offset + info.data_bytes, size);
            ck_assert_uint_ge(info.data_offset, 4096);
        } else {
            ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "/gpuseg-f"));
        }
    }
    /* some mutations hit bytes that do not matter (padding, created_ns, pid): accepted */
    ck_assert_int_gt(accepted, 0);
}
END_TEST

START_TEST(foreign_owner_refused) {
    char name[GPUSEG_SHM_NAME_MAX];
    seg_name(name, "own");
    uint16_t lab[12] = {0, 1, 1, 2};
    gpuseg_image img = {4, 3, 1, 1, GPUSEG_DTYPE_U16, lab};
    gpuseg_shm *w = NULL, *r = NULL;
    ck_assert_int_eq(gpuseg_shm_create_labels(name, &img, 2, 0, &w), GPUSEG_OK);
    gpuseg_shm_free(w);
    int fd = shm_open(name, O_RDWR, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(fchmod(fd, 0666), 0);
    ck_assert_int_eq(gpuseg_shm_open(name, 0, &r), GPUSEG_PERMISSION);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "writable by group or others (mode 0666)"));
    ck_assert_int_eq(fchmod(fd, 0600), 0);
    ck_assert_int_eq(gpuseg_shm_open(name, 0, &r), GPUSEG_OK);
    gpuseg_shm_free(r);
    if (geteuid() != 0) {
        printf("SKIP foreign_owner_refused (chown part): not root, cannot give a segment away\n");
    } else {
        ck_assert_int_eq(fchown(fd, 65534, 65534), 0);
        ck_assert_int_eq(gpuseg_shm_open(name, 0, &r), GPUSEG_PERMISSION);
        ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "owned by uid 65534"));
        const char *dir = tu_tmpdir();
        tu_cli_result *res = tu_cli("save --shm %s -o '%s/f.bin'", name, dir);
        ck_assert_int_eq(res->status, 1);
        ck_assert_msg(strstr(res->err, name) && strstr(res->err, "owned by uid 65534"), "%s",
                      res->err);
        free(res);
        ck_assert_int_eq(dir_nonempty(dir), 0);
        tu_rmtree(dir);
        /* clean never touches another user's segment, even with its producer gone */
        unsigned char *m;
        size_t size;
        m = map_rw(name, &size);
        gpuseg__st64(m + GPUSEG__SHM_OFF_START, gpuseg__ld64(m + GPUSEG__SHM_OFF_START) + 1);
        munmap(m, size);
        size_t removed = 99;
        ck_assert_int_eq(gpuseg_shm_clean(name, &removed), GPUSEG_OK);
        ck_assert_uint_eq(removed, 0);
        ck_assert(seg_exists(name));
        ck_assert_int_eq(fchown(fd, 0, 0), 0);
    }
    close(fd);
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
}
END_TEST

/* ---- many producers at once ------------------------------------------------------------- */

START_TEST(concurrent_producers) {
    enum { NP = 16 };
    const char *dir = tu_tmpdir();
    char in[256];
    uint16_t *lab = make_labels(GPUSEG_DTYPE_U16, 40 * 30, 20, 6);
    snprintf(in, sizeof in, "%s/l.npy", dir);
    const uint64_t shape[2] = {40, 30};
    ck_assert_int_eq(gpuseg_npy_write(in, GPUSEG_DTYPE_U16, 2, shape, lab), GPUSEG_OK);
    pid_t pids[NP];
    char outs[NP][300];
    for (int i = 0; i < NP; i++) {
        snprintf(outs[i], sizeof outs[i], "%s/o%d.txt", dir, i);
        const char *args[] = {"shm", "put", in, "--json", NULL};
        pids[i] = spawn_cli(0, outs[i], NULL, args);
    }
    int rcs[NP];
    for (int i = 0; i < NP; i++)
        rcs[i] = wait_rc(pids[i]);
    /* collect and remove every name first, so that a failed assertion leaves nothing */
    char names[NP][GPUSEG_SHM_NAME_MAX];
    int existed[NP], removed_ok[NP];
    for (int i = 0; i < NP; i++) {
        size_t n = 0;
        char *txt = tu_read_file(outs[i], &n);
        names[i][0] = '\0';
        if (strstr(txt, "{\"shm\":\""))
            json_name(txt, names[i]);
        free(txt);
        existed[i] = names[i][0] && seg_exists(names[i]);
        removed_ok[i] = names[i][0] && gpuseg_shm_unlink(names[i]) == GPUSEG_OK;
    }
    for (int i = 0; i < NP; i++) {
        ck_assert_int_eq(rcs[i], 0);
        ck_assert(existed[i] && removed_ok[i]);
        ck_assert_uint_eq(strlen(names[i]), 24);
        ck_assert_uint_eq(strspn(names[i] + 8, "0123456789abcdef"), 16);
        for (int k = 0; k < i; k++)
            ck_assert_str_ne(names[i], names[k]);
        ck_assert(!seg_exists(names[i]));
    }
    /* the same explicit name from 8 processes at once: exactly one wins (O_EXCL) */
    char name[GPUSEG_SHM_NAME_MAX];
    seg_name(name, "race");
    char errs[8][300];
    for (int i = 0; i < 8; i++) {
        snprintf(errs[i], sizeof errs[i], "%s/e%d.txt", dir, i);
        const char *args[] = {"shm", "put", in, "--name", name, NULL};
        pids[i] = spawn_cli(0, NULL, errs[i], args);
    }
    int wins = 0;
    for (int i = 0; i < 8; i++) {
        int rc = wait_rc(pids[i]);
        size_t n = 0;
        char *txt = tu_read_file(errs[i], &n);
        if (rc == 0)
            wins++;
        else
            ck_assert_msg(rc == 1 && strstr(txt, "exists"), "rc %d: %s", rc, txt);
        free(txt);
    }
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
    ck_assert_int_eq(wins, 1);
    free(lab);
    tu_rmtree(dir);
}
END_TEST

/* ---- shm clean: dead producers only ----------------------------------------------------- */

START_TEST(clean_dead_only) {
    const char *dir = tu_tmpdir();
    char in[256], prefix[GPUSEG_SHM_NAME_MAX], a[160], b[160], c[160], d[160], e[160], f[160];
    uint16_t lab[6] = {0, 1, 2, 2, 1, 0};
    snprintf(in, sizeof in, "%s/l.npy", dir);
    const uint64_t shape[2] = {2, 3};
    ck_assert_int_eq(gpuseg_npy_write(in, GPUSEG_DTYPE_U16, 2, shape, lab), GPUSEG_OK);
    seg_name(prefix, "clean");
    snprintf(a, sizeof a, "%s-a", prefix); /* ready, producer exited */
    snprintf(b, sizeof b, "%s-b", prefix); /* writing, producer alive */
    snprintf(c, sizeof c, "%s-c", prefix); /* ready, producer alive (this process) */
    snprintf(d, sizeof d, "%s-d", prefix); /* no header, 2 minutes old */
    snprintf(e, sizeof e, "%s-e", prefix); /* no header, new */
    snprintf(f, sizeof f, "%s-f", prefix); /* this pid, but another start time: pid reused */
    tu_cli_result *r = tu_cli("shm put '%s' --name %s", in, a);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert(strncmp(r->out, a, strlen(a)) == 0 && strcmp(r->out + strlen(a), "\n") == 0);
    free(r);
    const char *args[] = {"shm", "put", in, "--name", b, NULL};
    pid_t pb = spawn_cli(60000, NULL, NULL, args);
    wait_magic(b);
    gpuseg_image img = {3, 2, 1, 1, GPUSEG_DTYPE_U16, lab};
    gpuseg_shm *w = NULL;
    ck_assert_int_eq(gpuseg_shm_create_labels(c, &img, 2, 0, &w), GPUSEG_OK);
    gpuseg_shm_free(w);
    ck_assert_int_eq(gpuseg_shm_create_labels(f, &img, 2, 0, &w), GPUSEG_OK);
    gpuseg_shm_free(w);
    size_t size;
    unsigned char *m = map_rw(f, &size);
    gpuseg__st64(m + GPUSEG__SHM_OFF_START, gpuseg__ld64(m + GPUSEG__SHM_OFF_START) + 1);
    munmap(m, size);
    int fd = shm_open(d, O_RDWR | O_CREAT | O_EXCL, 0600);
    ck_assert_int_ge(fd, 0);
    struct timespec old[2] = {{time(NULL) - 120, 0}, {time(NULL) - 120, 0}};
    ck_assert_int_eq(futimens(fd, old), 0);
    close(fd);
    fd = shm_open(e, O_RDWR | O_CREAT | O_EXCL, 0600);
    ck_assert_int_ge(fd, 0);
    close(fd);

    gpuseg_shm_entry *list = NULL;
    size_t n = 0;
    ck_assert_int_eq(gpuseg_shm_list(prefix, &list, &n), GPUSEG_OK);
    ck_assert_uint_eq(n, 6);
    const char *names[6] = {a, b, c, d, e, f};
    const int alive[6] = {0, 1, 1, -1, -1, 0};
    const int state[6] = {GPUSEG_SHM_READY, GPUSEG_SHM_WRITING, GPUSEG_SHM_READY, -1, -1,
                          GPUSEG_SHM_READY};
    for (size_t i = 0; i < 6; i++) { /* sorted by name: a..f */
        ck_assert_str_eq(list[i].name, names[i]);
        ck_assert_int_eq(list[i].producer_alive, alive[i]);
        ck_assert_int_eq(list[i].header_valid, state[i] >= 0);
        if (state[i] >= 0)
            ck_assert_int_eq(list[i].info.state, state[i]);
    }
    ck_assert_int_eq(list[1].info.producer_pid, pb);
    gpuseg_free(list);
    r = tu_cli("shm list --prefix %s", prefix);
    ck_assert_int_eq(r->status, 0);
    ck_assert_int_eq(tu_count_lines(r->out), 7);
    free(r);

    r = tu_cli("shm clean --prefix %s", prefix);
    ck_assert_int_eq(r->status, 0);
    ck_assert_str_eq(r->out, "removed 3 segments\n");
    free(r);
    ck_assert(!seg_exists(a) && !seg_exists(d) && !seg_exists(f));
    ck_assert(seg_exists(b) && seg_exists(c) && seg_exists(e));
    ck_assert_int_eq(kill(pb, SIGKILL), 0);
    ck_assert_int_eq(wait_rc(pb), 128 + SIGKILL);
    r = tu_cli("shm clean --prefix %s", prefix);
    ck_assert_str_eq(r->out, "removed 1 segment\n");
    free(r);
    ck_assert(!seg_exists(b));
    ck_assert_int_eq(gpuseg_shm_unlink(c), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_unlink(e), GPUSEG_OK);
    r = tu_cli("shm clean --prefix /tmp/x"); /* a bad option value: usage error */
    ck_assert_int_eq(r->status, 2);
    ck_assert_ptr_nonnull(strstr(r->err, "does not start with /gpuseg-"));
    free(r);
    tu_rmtree(dir);
}
END_TEST

/* ---- device buffer -> segment ------------------------------------------------------------ */

START_TEST(device_buffer) {
    gpuseg_ctx *ctx = tu_ctx();
    const size_t H = 61, W = 47, N = H * W;
    uint32_t *lab = make_labels(GPUSEG_DTYPE_U32, N, 100000, 8);
    unsigned char *host = malloc(64 + N * 4);
    memset(host, 0xAB, 64);
    memcpy(host + 64, lab, N * 4);
    cl_int err;
    cl_mem buf = clCreateBuffer(gpuseg_ctx_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                                64 + N * 4, host, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    char name[GPUSEG_SHM_NAME_MAX];
    seg_name(name, "dev");
    const uint64_t shape[2] = {H, W};
    gpuseg_shm *w = NULL;
    ck_assert_int_eq(gpuseg_shm_create(name, GPUSEG_DTYPE_U32, 2, shape, &w), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_read_buffer(ctx, w, buf, 64), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_read_buffer(ctx, w, buf, 65), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "labels buffer has"));
    ck_assert_int_eq(gpuseg_shm_publish(w, 5, 9.5), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_shm_read_buffer(ctx, w, buf, 64), GPUSEG_INVALID_ARGUMENT);
    gpuseg_shm_free(w);
    const char *dir = tu_tmpdir();
    tu_cli_result *r = tu_cli("save --shm %s -o '%s/d.bin' --unlink", name, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    char out[256];
    snprintf(out, sizeof out, "%s/d.bin", dir);
    tu_assert_file_equals(out, lab, N * 4);
    ck_assert(!seg_exists(name));

    /* one call; too small a buffer leaves nothing behind */
    const uint64_t big[2] = {H + 1, W};
    ck_assert_int_eq(
        gpuseg_shm_create_from_buffer(ctx, name, buf, GPUSEG_DTYPE_U32, 2, big, 5, 0, &w),
        GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_null(w);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "labels buffer has"));
    ck_assert(!seg_exists(name));
    cl_mem buf2 = clCreateBuffer(gpuseg_ctx_cl_context(ctx),
                                 CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, N * 4, lab, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    ck_assert_int_eq(
        gpuseg_shm_create_from_buffer(ctx, name, buf2, GPUSEG_DTYPE_U32, 2, shape, 5, 9.5, &w),
        GPUSEG_OK);
    gpuseg_shm *rd = NULL;
    ck_assert_int_eq(gpuseg_shm_open(name, 0, &rd), GPUSEG_OK);
    ck_assert(memcmp(gpuseg_shm_payload(rd), lab, N * 4) == 0);
    ck_assert(gpuseg_shm_get_info(rd)->diameter == 9.5);
    gpuseg_shm_free(rd);
    gpuseg_shm_free(w);
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);
    clReleaseMemObject(buf);
    clReleaseMemObject(buf2);
    gpuseg_ctx_free(ctx);
    free(host);
    free(lab);
    tu_rmtree(dir);
}
END_TEST

/* ---- the Python example ------------------------------------------------------------------ */

/* Runs a shell command, capturing stdout (through a file) and stderr (through a pipe), and
 * returns its exit code. Reading stderr to its end also waits for every process that inherited
 * it: Python's resource tracker does, and it acts (unlinks "leaked" segments, warns) only when
 * the script has exited, so this is what makes the --keep check below deterministic. */
static int run_sh(const char *cmd, char *out, size_t outn, char *err, size_t errn) {
    const char *dir = tu_tmpdir();
    char full[4096], po[256];
    snprintf(po, sizeof po, "%s/o", dir);
    snprintf(full, sizeof full, "%s </dev/null 2>&1 >'%s'", cmd, po);
    fflush(stdout);
    FILE *p = popen(full, "r");
    ck_assert_ptr_nonnull(p);
    size_t n = 0, k;
    while ((k = fread(err + n, 1, errn - 1 - n, p)) > 0)
        n += k;
    char sink[256];
    while (fread(sink, 1, sizeof sink, p) > 0) {
    }
    err[n] = '\0';
    int rc = pclose(p);
    rc = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
    FILE *f = fopen(po, "rb");
    n = f ? fread(out, 1, outn - 1, f) : 0;
    if (f)
        fclose(f);
    out[n] = '\0';
    tu_rmtree(dir);
    return rc;
}

START_TEST(python_example) {
    /* ctest runs this as test_shm_numpy, a skip without numpy (testutil.h) */
    const char *py = tu_python_with_numpy();
    ck_assert_msg(py != NULL, "numpy missing: set GPUSEG_PYTHON to a Python that has it");
    char cmd[2048], out[8192], err[8192];
    const char *dir = tu_tmpdir();
    char in[256], res[256];
    const size_t H = 37, W = 53, N = H * W;
    uint32_t *lab = make_labels(GPUSEG_DTYPE_U32, N, 70, 9);
    snprintf(in, sizeof in, "%s/l.npy", dir);
    const uint64_t shape[2] = {H, W};
    ck_assert_int_eq(gpuseg_npy_write(in, GPUSEG_DTYPE_U32, 2, shape, lab), GPUSEG_OK);
    snprintf(res, sizeof res, "%s/py.bin", dir);
    const char *script = GPUSEG_SOURCE_DIR "/examples/python/shm_consumer.py";
    snprintf(cmd, sizeof cmd,
             "'%s' '%s' --gpuseg '%s' '%s' -o '%s' --command '{gpuseg} shm put {image} --json "
             "--diameter 23.5'",
             py, script, GPUSEG_CLI, in, res);
    int rc = run_sh(cmd, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, err);
    /* no resource-tracker warning or anything else on stderr */
    ck_assert_msg(err[0] == '\0', "stderr: %s", err);
    char expect[64];
    snprintf(expect, sizeof expect, "n_masks: %llu\n",
             (unsigned long long)distinct_nonzero(GPUSEG_DTYPE_U32, lab, N));
    ck_assert_msg(strstr(out, expect) && strstr(out, "diameter: 23.5\n"), "%s", out);
    tu_assert_file_equals(res, lab, N * 4);
    const char *s = strstr(out, "shm: ");
    ck_assert_ptr_nonnull(s);
    char name[GPUSEG_SHM_NAME_MAX];
    ck_assert_int_eq(sscanf(s + 5, "%127s", name), 1);
    ck_assert(!seg_exists(name)); /* released and removed */

    /* --keep leaves the segment (and Python's resource tracker must not remove it at exit) */
    snprintf(cmd, sizeof cmd, "'%s' '%s' --gpuseg '%s' '%s' -o '%s' --keep", py, script, GPUSEG_CLI,
             in, res);
    rc = run_sh(cmd, out, sizeof out, err, sizeof err);
    ck_assert_msg(rc == 0 && err[0] == '\0', "rc %d: %s", rc, err);
    s = strstr(out, "shm: ");
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(sscanf(s + 5, "%127s", name), 1);
    ck_assert(seg_exists(name));
    ck_assert_int_eq(gpuseg_shm_unlink(name), GPUSEG_OK);

    /* a failing producer: exit 1 with the producer's message */
    snprintf(cmd, sizeof cmd, "'%s' '%s' --gpuseg '%s' '%s/missing.tif' -o '%s/m.bin'", py, script,
             GPUSEG_CLI, dir, dir);
    rc = run_sh(cmd, out, sizeof out, err, sizeof err);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(err, "shm_consumer:") && strstr(err, "missing.tif"), "%s", err);
    free(lab);
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    snprintf(g_prefix, sizeof g_prefix, "/gpuseg-tst%d-", (int)getpid());
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    Suite *s = suite_create("shm");
    TCase *tc = tcase_create("shm");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, checksum_values);
    tcase_add_test(tc, names_and_json);
    tcase_add_test(tc, library_roundtrip);
    tcase_add_test(tc, cli_put_and_save);
    tcase_add_test(tc, saver_waits_for_producer);
    tcase_add_test(tc, killed_producer_refused);
    tcase_add_test(tc, corrupt_headers);
    tcase_add_test(tc, decode_random_headers);
    tcase_add_test(tc, foreign_owner_refused);
    tcase_add_test(tc, concurrent_producers);
    tcase_add_test(tc, clean_dead_only);
    if (dev == 0)
        tcase_add_test(tc, device_buffer);
    else
        printf("SKIP device_buffer: no usable OpenCL device\n");
    suite_add_tcase(s, tc);
    TCase *np = tu_tcase_needing("numpy", TU_NEEDS_NUMPY);
    tcase_set_timeout(np, 120);
    tcase_add_test(np, python_example);
    suite_add_tcase(s, np);
    int rc = tu_run(s);
    /* Every test removes what it made; anything with this run's prefix is a leak (or the
     * remains of a failed test): remove it and fail. */
    gpuseg_shm_entry *left = NULL;
    size_t n = 0;
    if (gpuseg_shm_list(g_prefix, &left, &n) == GPUSEG_OK) {
        for (size_t i = 0; i < n; i++) {
            fprintf(stderr, "FAIL: segment %s was left behind\n", left[i].name);
            gpuseg_shm_unlink(left[i].name);
        }
        if (n)
            rc = 1;
        gpuseg_free(left);
    }
    return rc;
}
