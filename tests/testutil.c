/* tests/testutil.c: implementation of the shared test helpers (see testutil.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

/* True when the comma/space separated list names word. */
static bool names(const char *list, const char *word) {
    size_t n = strlen(word);
    for (const char *p = list; p && (p = strstr(p, word)) != NULL; p += n)
        if ((p == list || p[-1] == ',' || p[-1] == ' ') &&
            (p[n] == 0 || p[n] == ',' || p[n] == ' '))
            return true;
    return false;
}

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

const char *tu_shared_data(void) {
    const char *env = getenv("GPUSEG_SHARED_DATA");
    return env && *env ? env : GPUSEG_SHARED_DATA;
}

const char *tu_python_with_numpy(void) {
    const char *py = getenv("GPUSEG_PYTHON");
    if (!py || !*py)
        py = "python3";
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' -c 'import numpy' >/dev/null 2>&1", py);
    return system(cmd) == 0 ? py : NULL;
}

TCase *tu_tcase_needing(const char *name, const char *need) {
    TCase *tc = tcase_create(name);
    tcase_set_tags(tc, need);
    return tc;
}

int tu_run(Suite *s) {
    /* A run of the cases that need something (CK_INCLUDE_TAGS, set by tests/CMakeLists.txt) is
     * a skip, said in one line, when that something is missing. */
    const char *inc = getenv("CK_INCLUDE_TAGS");
    if (names(inc, TU_NEEDS_SHARED_DATA) && !is_dir(tu_shared_data())) {
        printf("SKIP: shared test data not found: %s does not exist (set GPUSEG_SHARED_DATA, in "
               "the environment or to CMake, to another copy)\n",
               tu_shared_data());
        srunner_free(srunner_create(s)); /* frees the suite */
        return 77;
    }
    if (names(inc, TU_NEEDS_NUMPY) && !tu_python_with_numpy()) {
        const char *py = getenv("GPUSEG_PYTHON");
        printf("SKIP: %s cannot import numpy (set GPUSEG_PYTHON to a Python that can)\n",
               py && *py ? py : "python3");
        srunner_free(srunner_create(s)); /* frees the suite */
        return 77;
    }
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

int tu_require_device(void) {
    /* Probe in a child process: OpenCL runtimes (PoCL's worker threads among them) do not
     * survive fork(), and Check forks once per test, so the parent must never initialise one. */
    int pipefd[2];
    if (pipe(pipefd) != 0)
        return 1;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(pipefd[0]);
        gpuseg_ctx *ctx = NULL;
        char msg[600];
        int ok = gpuseg_ctx_create(NULL, &ctx) == GPUSEG_OK;
        if (ok)
            snprintf(msg, sizeof msg, "%s / %s", gpuseg_ctx_device(ctx)->platform_name,
                     gpuseg_ctx_device(ctx)->name);
        else
            snprintf(msg, sizeof msg, "%s", gpuseg_last_error());
        ssize_t w = write(pipefd[1], msg, strlen(msg));
        (void)w;
        gpuseg_ctx_free(ctx);
        _exit(ok ? 0 : 1);
    }
    close(pipefd[1]);
    char msg[600];
    ssize_t n = read(pipefd[0], msg, sizeof msg - 1);
    msg[n > 0 ? n : 0] = '\0';
    close(pipefd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        printf("device: %s\n", msg);
        return 0;
    }
    const char *req = getenv("GPUSEG_REQUIRE_DEVICE");
    if (req && *req && strcmp(req, "0") != 0) {
        fprintf(stderr, "FAIL: GPUSEG_REQUIRE_DEVICE is set but no device is usable: %s\n", msg);
        return 1;
    }
    printf("SKIP: no usable OpenCL device (%s)\n", msg);
    return 77;
}

gpuseg_ctx *tu_ctx(void) {
    gpuseg_ctx *ctx = NULL;
    gpuseg_status st = gpuseg_ctx_create(NULL, &ctx);
    ck_assert_msg(st == GPUSEG_OK, "gpuseg_ctx_create: %s", gpuseg_last_error());
    return ctx;
}

const char *tu_tmpdir(void) {
    static char bufs[16][64];
    static int next = 0;
    char *b = bufs[next++ % 16];
    snprintf(b, 64, "/tmp/gpuseg-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(b));
    return b;
}

void tu_rmtree(const char *dir) {
    char cmd[1200];
    if (!dir || strncmp(dir, "/tmp/gpuseg-test-", 17) != 0)
        return; /* never remove anything else */
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    int rc = system(cmd);
    (void)rc;
}

static void slurp(const char *path, char *buf, size_t len) {
    FILE *f = fopen(path, "rb");
    size_t n = 0;
    if (f) {
        n = fread(buf, 1, len - 1, f);
        fclose(f);
    }
    buf[n] = '\0';
}

tu_cli_result *tu_cli(const char *fmt, ...) {
    char args[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    const char *dir = tu_tmpdir();
    char cmd[8192], outp[128], errp[128];
    snprintf(outp, sizeof outp, "%s/stdout", dir);
    snprintf(errp, sizeof errp, "%s/stderr", dir);
    /* Braces: a shell list in args has all of its output captured, not just the last part. */
    snprintf(cmd, sizeof cmd, "{ '%s' %s ; } </dev/null >'%s' 2>'%s'", GPUSEG_CLI, args, outp,
             errp);
    tu_cli_result *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    int rc = system(cmd);
    if (rc == -1)
        r->status = -1;
    else if (WIFEXITED(rc))
        r->status = WEXITSTATUS(rc);
    else
        r->status = 128 + WTERMSIG(rc);
    slurp(outp, r->out, sizeof r->out);
    slurp(errp, r->err, sizeof r->err);
    tu_rmtree(dir);
    return r;
}

const char *tu_data(const char *fmt, ...) {
    static char path[2048];
    char rel[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rel, sizeof rel, fmt, ap);
    va_end(ap);
    ck_assert_msg(
        is_dir(tu_shared_data()),
        "shared test data not found: %s does not exist (set GPUSEG_SHARED_DATA to another "
        "copy)",
        tu_shared_data());
    snprintf(path, sizeof path, "%s/%s", tu_shared_data(), rel);
    return path;
}

void tu_write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert_uint_eq(fwrite(data, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

char *tu_read_file(const char *path, size_t *n) {
    void *data = NULL;
    ck_assert_msg(gpuseg__read_file(NULL, path, (size_t)1 << 30, &data, n) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    char *text = realloc(data, *n + 1);
    ck_assert_ptr_nonnull(text);
    text[*n] = '\0';
    return text;
}

void tu_assert_file_equals(const char *path, const void *data, size_t n) {
    size_t got = 0;
    char *buf = tu_read_file(path, &got);
    ck_assert_msg(got == n, "%s: %zu bytes, expected %zu", path, got, n);
    ck_assert_msg(memcmp(buf, data, n) == 0, "%s: content differs", path);
    free(buf);
}

bool tu_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int tu_count_lines(const char *s) {
    int n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}
