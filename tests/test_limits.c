/* tests/test_limits.c: the size limits (gpuseg/limits.h: pixels, objects, model bytes; their
 * parsing, defaults, environment and context settings, the readers', loader's and masks step's
 * refusals and the CLI flags) and the safe output path (core/afile.c): no temporary file left,
 * an older file kept when a write fails on a full disk (RLIMIT_FSIZE in a child, so EFBIG without
 * root), symlinks, FIFOs, directories and /dev/full refused unless allowed. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define MODEL GPUSEG_SOURCE_DIR "/tests/fixtures/model/tiny_cpnet.pth"
#define FLOWS GPUSEG_SOURCE_DIR "/tests/fixtures/masks/dsb65_flows.npy"

/* A W x H uint16 label image with values that deflate and PNG cannot squeeze much (a simple
 * LCG), so that every format's file is larger than the few KB the disk-full tests allow. */
static gpuseg_image *noisy_labels(uint32_t w, uint32_t h, uint32_t seed) {
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(w, h, 1, 1, GPUSEG_DTYPE_U16, &img), GPUSEG_OK);
    uint16_t *p = img->data;
    uint32_t x = seed;
    for (size_t i = 0; i < (size_t)w * h; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (uint16_t)(x >> 16);
    }
    return img;
}

/* Number of entries in dir whose name contains ".tmp-" (the writer's temporary files). */
static int count_tmp(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strstr(e->d_name, ".tmp-") != NULL;
    closedir(d);
    return n;
}

static void assert_one_line_naming(const char *msg, const char *name, const char *what) {
    ck_assert_msg(strstr(msg, name) != NULL, "message does not name %s: %s", name, msg);
    ck_assert_msg(strstr(msg, what) != NULL, "message lacks '%s': %s", what, msg);
    ck_assert_msg(strchr(msg, '\n') == NULL, "message is not one line: %s", msg);
}

static long file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (long)sb.st_size : -1;
}

/* ---- limits: parsing, defaults, environment ---- */

START_TEST(limit_parse_and_resolve) {
    uint64_t v = 0;
    ck_assert_int_eq(gpuseg_limit_parse("123", &v), GPUSEG_OK);
    ck_assert_uint_eq(v, 123);
    ck_assert_int_eq(gpuseg_limit_parse("4k", &v), GPUSEG_OK);
    ck_assert_uint_eq(v, 4096);
    ck_assert_int_eq(gpuseg_limit_parse("100M", &v), GPUSEG_OK);
    ck_assert_uint_eq(v, 100ull << 20);
    ck_assert_int_eq(gpuseg_limit_parse("1G", &v), GPUSEG_OK);
    ck_assert_uint_eq(v, 1ull << 30);
    ck_assert_int_eq(gpuseg_limit_parse("2T", &v), GPUSEG_OK);
    ck_assert_uint_eq(v, 2ull << 40);
    const char *bad[] = {"", "0", "-5", "1.5G", "12x", "G", "4GB", "99999999999999999999", "1 "};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(gpuseg_limit_parse(bad[i], &v) == GPUSEG_INVALID_ARGUMENT, "'%s'", bad[i]);
        ck_assert(strchr(gpuseg_last_error(), '\n') == NULL);
    }
    ck_assert_int_eq(gpuseg_limit_parse("16777216T", &v), GPUSEG_INVALID_ARGUMENT); /* 2^64 */

    unsetenv("GPUSEG_MAX_PIXELS");
    unsetenv("GPUSEG_MAX_OBJECTS");
    unsetenv("GPUSEG_MAX_MODEL_BYTES");
    gpuseg_limits d, r;
    gpuseg_limits_default(&d);
    ck_assert_uint_eq(d.max_pixels, 1ull << 30);
    ck_assert_uint_eq(d.max_objects, 1ull << 24);
    ck_assert_uint_eq(d.max_model_bytes, 256ull << 20);
    ck_assert_int_eq(gpuseg_limits_resolve(NULL, &r), GPUSEG_OK);
    ck_assert_mem_eq(&r, &d, sizeof r);
    /* the environment fills what the caller leaves 0; the caller's values win */
    setenv("GPUSEG_MAX_PIXELS", "1M", 1);
    setenv("GPUSEG_MAX_OBJECTS", "77", 1);
    gpuseg_limits in = {0, 5, 0};
    ck_assert_int_eq(gpuseg_limits_resolve(&in, &r), GPUSEG_OK);
    ck_assert_uint_eq(r.max_pixels, 1u << 20);
    ck_assert_uint_eq(r.max_objects, 5);
    ck_assert_uint_eq(r.max_model_bytes, 256ull << 20);
    /* bad environment values and values over the absolute maxima are refused, named */
    setenv("GPUSEG_MAX_OBJECTS", "lots", 1);
    ck_assert_int_eq(gpuseg_limits_resolve(NULL, &r), GPUSEG_INVALID_ARGUMENT);
    assert_one_line_naming(gpuseg_last_error(), "GPUSEG_MAX_OBJECTS", "lots");
    unsetenv("GPUSEG_MAX_OBJECTS");
    setenv("GPUSEG_MAX_PIXELS", "2G", 1);
    ck_assert_int_eq(gpuseg_limits_resolve(NULL, &r), GPUSEG_INVALID_ARGUMENT);
    assert_one_line_naming(gpuseg_last_error(), "GPUSEG_MAX_PIXELS", "most gpuseg supports");
    unsetenv("GPUSEG_MAX_PIXELS");
    gpuseg_limits big = {0, 0, (1ull << 30) + 1};
    ck_assert_int_eq(gpuseg_limits_resolve(&big, &r), GPUSEG_INVALID_ARGUMENT);
    assert_one_line_naming(gpuseg_last_error(), "max_model_bytes", "1073741825");
}
END_TEST

/* ---- pixels: every reader refuses from the header ---- */

START_TEST(pixels_readers) {
    const char *dir = tu_tmpdir();
    char png[512], npy[512], tif[512];
    snprintf(png, sizeof png, "%s/a.png", dir);
    snprintf(npy, sizeof npy, "%s/a.npy", dir);
    snprintf(tif, sizeof tif, "%s/a.tif", dir);
    gpuseg_image *lab = noisy_labels(100, 100, 1);
    ck_assert_int_eq(gpuseg_labels_write(png, lab, NULL), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_write(npy, lab, NULL), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_write(tif, lab, NULL), GPUSEG_OK);
    const char *paths[] = {png, npy, tif};
    gpuseg_limits at = {10000, 0, 0}, below = {9999, 0, 0};
    for (int i = 0; i < 3; i++) {
        gpuseg_image *img = NULL;
        ck_assert_msg(gpuseg_image_read_ex(paths[i], &at, &img) == GPUSEG_OK, "%s",
                      gpuseg_last_error());
        gpuseg_image_free(img);
        img = NULL;
        ck_assert_int_eq(gpuseg_image_read_ex(paths[i], &below, &img), GPUSEG_TOO_LARGE);
        ck_assert_ptr_null(img);
        /* "FILE: image is 100x100 = 10 kpixels, over the limit of 9999 pixels (--max-pixels /
         * GPUSEG_MAX_PIXELS)" */
        assert_one_line_naming(gpuseg_last_error(), paths[i], "image is 100x100 = 10 kpixels");
        assert_one_line_naming(gpuseg_last_error(), paths[i],
                               "over the limit of 9999 pixels (--max-pixels / GPUSEG_MAX_PIXELS)");
        /* the environment reaches the plain reader and the header reader */
        setenv("GPUSEG_MAX_PIXELS", "9999", 1);
        ck_assert_int_eq(gpuseg_image_read(paths[i], &img), GPUSEG_TOO_LARGE);
        gpuseg_image_info info;
        ck_assert_int_eq(gpuseg_image_info_read(paths[i], &info), GPUSEG_TOO_LARGE);
        unsetenv("GPUSEG_MAX_PIXELS");
    }
    /* at the absolute maximum the message says so instead of naming a flag */
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_read_ex(png, NULL, &img), GPUSEG_OK);
    gpuseg_image_free(img);
    gpuseg_image_free(lab);
    tu_rmtree(dir);
}
END_TEST

/* ---- model file size ---- */

START_TEST(model_bytes) {
    long size = file_size(MODEL);
    ck_assert_int_gt(size, 100);
    gpuseg_model *m = NULL;
    gpuseg_limits at = {0, 0, (uint64_t)size}, below = {0, 0, (uint64_t)size - 1};
    ck_assert_msg(gpuseg_model_load_ex(MODEL, &at, &m) == GPUSEG_OK, "%s", gpuseg_last_error());
    gpuseg_model_free(m);
    m = NULL;
    ck_assert_int_eq(gpuseg_model_load_ex(MODEL, &below, &m), GPUSEG_TOO_LARGE);
    ck_assert_ptr_null(m);
    assert_one_line_naming(gpuseg_last_error(), MODEL,
                           "(--max-model-bytes / GPUSEG_MAX_MODEL_BYTES)");
    char want[64];
    snprintf(want, sizeof want, "(%ld bytes), over the limit", size);
    assert_one_line_naming(gpuseg_last_error(), MODEL, want);
    char env[32];
    snprintf(env, sizeof env, "%ld", size - 1);
    setenv("GPUSEG_MAX_MODEL_BYTES", env, 1);
    ck_assert_int_eq(gpuseg_model_load(MODEL, &m), GPUSEG_TOO_LARGE);
    unsetenv("GPUSEG_MAX_MODEL_BYTES");
    ck_assert_int_eq(gpuseg_model_load(MODEL, &m), GPUSEG_OK);
    gpuseg_model_free(m);
}
END_TEST

/* ---- CLI flags (no device needed: info, model info) ---- */

START_TEST(cli_limit_flags) {
    const char *dir = tu_tmpdir();
    char png[512];
    snprintf(png, sizeof png, "%s/a.png", dir);
    gpuseg_image *lab = noisy_labels(100, 100, 2);
    ck_assert_int_eq(gpuseg_labels_write(png, lab, NULL), GPUSEG_OK);
    gpuseg_image_free(lab);

    tu_cli_result *r = tu_cli("info --max-pixels 9999 '%s'", png);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    assert_one_line_naming(strtok(r->err, "\n"), png, "over the limit of 9999 pixels");
    ck_assert(strncmp(r->err, "gpuseg: ", 8) == 0);
    free(r);
    r = tu_cli("info --max-pixels 10k '%s'", png);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    r = tu_cli("info --max-pixels 2G '%s'", png);
    ck_assert_int_eq(r->status, 2);
    ck_assert(strstr(r->err, "--max-pixels") && strstr(r->err, "most gpuseg supports"));
    free(r);
    r = tu_cli("info --max-pixels zero '%s'", png);
    ck_assert_int_eq(r->status, 2);
    ck_assert(strstr(r->err, "--max-pixels") && strstr(r->err, "'zero'"));
    free(r);
    r = tu_cli("model info --max-model-bytes 100 '%s'", MODEL);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert(strstr(r->err, MODEL) && strstr(r->err, "over the limit of 100 B"));
    free(r);
    r = tu_cli("model info --max-model-bytes 1M '%s'", MODEL);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    /* eval reads label files: images and the raw .bin + .json sidecar */
    char bin[512];
    snprintf(bin, sizeof bin, "%s/a.bin", dir);
    lab = noisy_labels(100, 100, 2);
    ck_assert_int_eq(gpuseg_labels_write(bin, lab, NULL), GPUSEG_OK);
    gpuseg_image_free(lab);
    r = tu_cli("eval '%s' '%s' --max-pixels 9999", png, png);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, png) && strstr(r->err, "over the limit of 9999 pixels"), "%s",
                  r->err);
    free(r);
    r = tu_cli("eval '%s' '%s' --max-pixels 9999", bin, bin);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, bin) && strstr(r->err, "over the limit of 9999 pixels"), "%s",
                  r->err);
    free(r);
    r = tu_cli("eval '%s' '%s' --max-pixels 10000", bin, png);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    /* a bad environment value is reported, not ignored */
    r = tu_cli("info '%s'; GPUSEG_MAX_PIXELS=abc '%s' info '%s'", png, GPUSEG_CLI, png);
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "GPUSEG_MAX_PIXELS") && strstr(r->err, "'abc'"));
    free(r);
    tu_rmtree(dir);
}
END_TEST

/* ---- safe outputs ---- */

/* In a child with a file size limit of 4 KiB and SIGXFSZ ignored, write() past 4 KiB fails
 * with EFBIG, as on a full disk. The child writes lab to path and exits 0 when the call
 * returned GPUSEG_IO with a one-line "disk full" message naming the file. */
static int write_with_fsize_limit(const char *path, const gpuseg_image *lab, unsigned flags) {
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct rlimit rl = {4096, 4096};
        signal(SIGXFSZ, SIG_IGN);
        if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
            _exit(3);
        gpuseg_status st = gpuseg_labels_write_ex(path, lab, "{\"n\":1}", flags);
        const char *m = gpuseg_last_error();
        _exit(st == GPUSEG_IO && strstr(m, path) && strstr(m, "disk full (File too large)") &&
                      !strchr(m, '\n')
                  ? 0
                  : 4);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

START_TEST(disk_full_library) {
    const char *dir = tu_tmpdir();
    gpuseg_image *lab = noisy_labels(120, 100, 3); /* 24 KB of samples */
    const char *ext[] = {"npy", "tif", "png", "bin"};
    for (int i = 0; i < 4; i++) {
        char path[512], json[512];
        snprintf(path, sizeof path, "%s/out.%s", dir, ext[i]);
        snprintf(json, sizeof json, "%s/out.json", dir);
        /* a new file: nothing at all is left behind */
        ck_assert_msg(write_with_fsize_limit(path, lab, 0) == 0, "%s", ext[i]);
        ck_assert(!tu_exists(path));
        ck_assert_int_eq(count_tmp(dir), 0);
        /* an older file is kept as it was */
        tu_write_file(path, "old", 3);
        ck_assert_msg(write_with_fsize_limit(path, lab, 0) == 0, "%s", ext[i]);
        tu_assert_file_equals(path, "old", 3);
        ck_assert_int_eq(count_tmp(dir), 0);
        ck_assert(!tu_exists(json) || strcmp(ext[i], "bin") != 0);
        remove(path);
    }
    /* /dev/full, once allowed, is written directly and reports ENOSPC */
    /* (labels need an extension to choose a format; .npy arrays do not) */
    gpuseg_image *small = noisy_labels(4, 4, 4);
    uint64_t shape[2] = {4, 4};
    ck_assert_int_eq(gpuseg_npy_write("/dev/full", GPUSEG_DTYPE_U16, 2, shape, small->data),
                     GPUSEG_PERMISSION);
    assert_one_line_naming(gpuseg_last_error(), "/dev/full", "a character device");
    ck_assert_int_eq(gpuseg_npy_write_ex("/dev/full", GPUSEG_DTYPE_U16, 2, shape, small->data,
                                         GPUSEG_WRITE_ALLOW_SPECIAL),
                     GPUSEG_IO);
    assert_one_line_naming(gpuseg_last_error(), "/dev/full", "disk full (No space left on device)");
    gpuseg_image_free(small);
    gpuseg_image_free(lab);
    tu_rmtree(dir);
}
END_TEST

START_TEST(special_targets) {
    const char *dir = tu_tmpdir();
    gpuseg_image *lab = noisy_labels(8, 8, 5);
    char real[512], link[512], fifo[512], sub[512], path[512];
    snprintf(real, sizeof real, "%s/real.npy", dir);
    snprintf(link, sizeof link, "%s/link.npy", dir);
    snprintf(fifo, sizeof fifo, "%s/fifo.npy", dir);
    snprintf(sub, sizeof sub, "%s/sub.npy", dir);
    tu_write_file(real, "keep", 4);
    ck_assert_int_eq(symlink(real, link), 0);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    ck_assert_int_eq(mkdir(sub, 0700), 0);

    /* refused, named, and nothing touched (the FIFO is never opened: no hang) */
    ck_assert_int_eq(gpuseg_labels_write(link, lab, NULL), GPUSEG_PERMISSION);
    assert_one_line_naming(gpuseg_last_error(), link, "symbolic link");
    assert_one_line_naming(gpuseg_last_error(), link, "--allow-special-output");
    tu_assert_file_equals(real, "keep", 4);
    ck_assert_int_eq(gpuseg_labels_write(fifo, lab, NULL), GPUSEG_PERMISSION);
    assert_one_line_naming(gpuseg_last_error(), fifo, "a FIFO");
    ck_assert_int_eq(gpuseg_labels_write(sub, lab, NULL), GPUSEG_IO);
    assert_one_line_naming(gpuseg_last_error(), sub, "is a directory");
    ck_assert_int_eq(gpuseg_labels_write_ex(sub, lab, NULL, GPUSEG_WRITE_ALLOW_SPECIAL), GPUSEG_IO);
    uint64_t shape[2] = {8, 8};
    ck_assert_int_eq(gpuseg_npy_write("/dev/null", GPUSEG_DTYPE_U16, 2, shape, lab->data),
                     GPUSEG_PERMISSION);
    assert_one_line_naming(gpuseg_last_error(), "/dev/null", "a character device");
    /* the .bin sidecar is checked too: a symlinked .json stops the pair, the .bin is not left */
    char bin[512], json[512];
    snprintf(bin, sizeof bin, "%s/pair.bin", dir);
    snprintf(json, sizeof json, "%s/pair.json", dir);
    ck_assert_int_eq(symlink(real, json), 0);
    ck_assert_int_eq(gpuseg_labels_write(bin, lab, NULL), GPUSEG_PERMISSION);
    assert_one_line_naming(gpuseg_last_error(), json, "symbolic link");
    ck_assert(!tu_exists(bin));
    ck_assert_int_eq(count_tmp(dir), 0);

    /* allowed: the link's destination is replaced atomically and the link stays a link */
    ck_assert_msg(gpuseg_labels_write_ex(link, lab, NULL, GPUSEG_WRITE_ALLOW_SPECIAL) == GPUSEG_OK,
                  "%s", gpuseg_last_error());
    struct stat sb;
    ck_assert_int_eq(lstat(link, &sb), 0);
    ck_assert(S_ISLNK(sb.st_mode));
    gpuseg_npy *arr = NULL;
    ck_assert_int_eq(gpuseg_npy_read(real, &arr), GPUSEG_OK);
    ck_assert_mem_eq(arr->data, lab->data, 8 * 8 * 2);
    gpuseg_npy_free(arr);
    /* the environment variable allows it too, and /dev/null takes the data directly */
    setenv("GPUSEG_ALLOW_SPECIAL_OUTPUT", "1", 1);
    ck_assert_int_eq(gpuseg_npy_write("/dev/null", GPUSEG_DTYPE_U16, 2, shape, lab->data),
                     GPUSEG_OK);
    unsetenv("GPUSEG_ALLOW_SPECIAL_OUTPUT");
    ck_assert_int_eq(count_tmp(dir), 0);

    /* a new file gets the umask's permissions (0666 & ~022), not mkstemp's 0600 */
    mode_t old = umask(022);
    snprintf(path, sizeof path, "%s/mode.npy", dir);
    ck_assert_int_eq(gpuseg_labels_write(path, lab, NULL), GPUSEG_OK);
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0644);
    umask(077);
    remove(path);
    ck_assert_int_eq(gpuseg_labels_write(path, lab, NULL), GPUSEG_OK);
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_int_eq(sb.st_mode & 0777, 0600);
    umask(old);
    gpuseg_image_free(lab);
    tu_rmtree(dir);
}
END_TEST

/* The CLI through `gpuseg shm put` + `gpuseg save` (no device needed): a 4 KiB file size limit
 * set in the shell, with SIGXFSZ ignored, then symlink refusal and --allow-special-output. */
START_TEST(cli_outputs) {
    const char *dir = tu_tmpdir();
    char src[512], out[512], link[512], real[512];
    snprintf(src, sizeof src, "%s/src.npy", dir);
    snprintf(out, sizeof out, "%s/out.npy", dir);
    snprintf(link, sizeof link, "%s/link.npy", dir);
    snprintf(real, sizeof real, "%s/real.npy", dir);
    gpuseg_image *lab = noisy_labels(120, 100, 6);
    ck_assert_int_eq(gpuseg_labels_write(src, lab, NULL), GPUSEG_OK);
    tu_cli_result *r = tu_cli("shm put '%s'", src);
    ck_assert_msg(r->status == 0, "%s", r->err);
    char name[256];
    ck_assert_int_eq(sscanf(r->out, "%255s", name), 1);
    free(r);

    tu_write_file(out, "old", 3);
    r = tu_cli("--version >/dev/null; ulimit -f 4; trap '' XFSZ; '%s' save --shm %s -o '%s'",
               GPUSEG_CLI, name, out);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, out) && strstr(r->err, "disk full"), "%s", r->err);
    free(r);
    tu_assert_file_equals(out, "old", 3);
    ck_assert_int_eq(count_tmp(dir), 0);

    tu_write_file(real, "keep", 4);
    ck_assert_int_eq(symlink(real, link), 0);
    r = tu_cli("save --shm %s -o '%s'", name, link);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert(strstr(r->err, link) && strstr(r->err, "symbolic link"));
    free(r);
    tu_assert_file_equals(real, "keep", 4);
    r = tu_cli("save --shm %s -o '%s' --allow-special-output", name, link);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    ck_assert_int_eq(file_size(real), file_size(src));
    r = tu_cli("save --shm %s -o '%s' --unlink", name, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    ck_assert_int_eq(file_size(out), file_size(src));
    ck_assert_int_eq(count_tmp(dir), 0);
    gpuseg_image_free(lab);
    tu_rmtree(dir);
}
END_TEST

/* ---- objects: the masks step refuses too many seeds (device) ---- */

START_TEST(objects_limit) {
    gpuseg_npy *f = NULL;
    ck_assert_int_eq(gpuseg_npy_read(FLOWS, &f), GPUSEG_OK);
    const uint32_t H = (uint32_t)f->shape[1], W = (uint32_t)f->shape[2];
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_image *lab = NULL;
    uint32_t n = 0;
    ck_assert_msg(gpuseg_flows_to_masks(ctx, f->data, H, W, NULL, &lab, &n) == GPUSEG_OK, "%s",
                  gpuseg_ctx_last_error(ctx));
    ck_assert_uint_gt(n, 2);
    gpuseg_image_free(lab);
    gpuseg_ctx_free(ctx);

    /* a context limit below the count; the masks would have been n <= seeds */
    gpuseg_ctx_params p;
    gpuseg_ctx_params_default(&p);
    p.limits.max_objects = 2;
    ck_assert_int_eq(gpuseg_ctx_create(&p, &ctx), GPUSEG_OK);
    gpuseg_limits got;
    gpuseg_ctx_limits(ctx, &got);
    ck_assert_uint_eq(got.max_objects, 2);
    lab = NULL;
    ck_assert_int_eq(gpuseg_flows_to_masks(ctx, f->data, H, W, NULL, &lab, &n), GPUSEG_TOO_LARGE);
    ck_assert_ptr_null(lab);
    assert_one_line_naming(gpuseg_ctx_last_error(ctx), "objects after seeding",
                           "over the limit of 2 (--max-objects / GPUSEG_MAX_OBJECTS)");
    gpuseg_ctx_free(ctx);
    /* a bad environment value fails the context, named */
    setenv("GPUSEG_MAX_OBJECTS", "-1", 1);
    ck_assert_int_eq(gpuseg_ctx_create(NULL, &ctx), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "GPUSEG_MAX_OBJECTS"));
    unsetenv("GPUSEG_MAX_OBJECTS");
    gpuseg_npy_free(f);

    /* the CLI flag */
    const char *dir = tu_tmpdir();
    char out[512];
    snprintf(out, sizeof out, "%s/m.tif", dir);
    tu_cli_result *r = tu_cli("masks '%s' -o '%s' --max-objects 2", FLOWS, out);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, FLOWS) && strstr(r->err, "over the limit of 2"), "%s", r->err);
    free(r);
    ck_assert(!tu_exists(out));
    r = tu_cli("masks '%s' -o '%s' --max-objects 1k", FLOWS, out);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    ck_assert(tu_exists(out));
    tu_rmtree(dir);
}
END_TEST

/* `gpuseg segment` takes the flags too and refuses before any work (device: it makes a
 * context). The image is a 512 x 512 TIFF of the shared data. */
START_TEST(cli_segment_limits) {
    const char *dir = tu_tmpdir();
    char img[1024], out[512];
    snprintf(img, sizeof img, "%s", tu_data("stardist-sample/package_data/mask2d.tif"));
    snprintf(out, sizeof out, "%s/seg.tif", dir);
    tu_cli_result *r =
        tu_cli("segment '%s' -o '%s' --model '%s' --max-pixels 100", img, out, MODEL);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, img) && strstr(r->err, "image is 512x512 = 262 kpixels, over the "
                                                        "limit of 100 pixels (--max-pixels / "
                                                        "GPUSEG_MAX_PIXELS)"),
                  "%s", r->err);
    free(r);
    r = tu_cli("segment '%s' -o '%s' --model '%s' --max-model-bytes 1000", img, out, MODEL);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_msg(strstr(r->err, MODEL) && strstr(r->err, "over the limit of 1000 B"), "%s",
                  r->err);
    free(r);
    ck_assert(!tu_exists(out));
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("limits");
    TCase *host = tcase_create("host");
    tcase_set_timeout(host, 120);
    tcase_add_test(host, limit_parse_and_resolve);
    tcase_add_test(host, pixels_readers);
    tcase_add_test(host, model_bytes);
    tcase_add_test(host, cli_limit_flags);
    tcase_add_test(host, disk_full_library);
    tcase_add_test(host, special_targets);
    tcase_add_test(host, cli_outputs);
    suite_add_tcase(s, host);
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    if (dev == 0) {
        TCase *d = tcase_create("device");
        tcase_set_timeout(d, 300);
        tcase_add_test(d, objects_limit);
        suite_add_tcase(s, d);
        TCase *sd = tu_tcase_needing("device_shared_data", TU_NEEDS_SHARED_DATA);
        tcase_set_timeout(sd, 300);
        tcase_add_test(sd, cli_segment_limits);
        suite_add_tcase(s, sd);
    }
    return tu_run(s);
}
