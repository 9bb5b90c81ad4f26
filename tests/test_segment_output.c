/* tests/test_segment_output.c: the batch output pipeline of `gpuseg segment`
 * (src/cli/segment_output.c), driven through `gpuseg shm batch`: label files -> segments ->
 * saver processes -> files equal to the inputs; failing savers (unwritable folder, an output
 * that is a directory, a saver killed by a signal, a saver that cannot start) named on stderr
 * with nothing left in /dev/shm; --shm-only --json lines; many batches at once; a batch killed
 * with SIGTERM (nothing left) or SIGKILL (nothing left after `shm clean`). Every segment is
 * named with this run's prefix; main() fails the run if any is left. */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gpuseg/gpuseg.h"
#include "testutil.h"

static char g_prefix[64]; /* "/gpuseg-tso<pid of main>-" */
static int g_dev;         /* 0: a device is usable (batch uploads to it) */

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Labels 0..max-1 in a pseudo-random pattern (deterministic). */
static void *make_labels(gpuseg_dtype dt, size_t n, uint32_t max, uint32_t seed) {
    void *p = malloc(n * (dt == GPUSEG_DTYPE_U16 ? 2 : 4));
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        uint32_t v = (x >> 8) % max;
        if (dt == GPUSEG_DTYPE_U16)
            ((uint16_t *)p)[i] = (uint16_t)v;
        else
            ((uint32_t *)p)[i] = v;
    }
    return p;
}

/* Number of segments with this run's prefix (+ tag). */
static size_t count_segments(const char *tag) {
    char p[128];
    snprintf(p, sizeof p, "%s%s", g_prefix, tag);
    gpuseg_shm_entry *e = NULL;
    size_t n = 0;
    ck_assert_int_eq(gpuseg_shm_list(p, &e, &n), GPUSEG_OK);
    gpuseg_free(e);
    return n;
}

/* The test inputs: a.npy uint16 [37, 53] (labels < 300), b.npy uint32 [29, 41] (labels up to
 * 10^6, so above 65535), c.tif uint16 [64, 64]. */
typedef struct {
    char path[3][300];
    void *data[3];
    size_t bytes[3];
    uint32_t h[3], w[3];
} inputs;

static void make_inputs(const char *dir, inputs *in) {
    const uint32_t h[3] = {37, 29, 64}, w[3] = {53, 41, 64}, mx[3] = {300, 1000000, 50};
    const gpuseg_dtype dt[3] = {GPUSEG_DTYPE_U16, GPUSEG_DTYPE_U32, GPUSEG_DTYPE_U16};
    const char *names[3] = {"a.npy", "b.npy", "c.tif"};
    for (int i = 0; i < 3; i++) {
        snprintf(in->path[i], sizeof in->path[i], "%s/%s", dir, names[i]);
        in->h[i] = h[i];
        in->w[i] = w[i];
        in->data[i] = make_labels(dt[i], (size_t)h[i] * w[i], mx[i], (uint32_t)i + 7);
        in->bytes[i] = (size_t)h[i] * w[i] * (dt[i] == GPUSEG_DTYPE_U16 ? 2 : 4);
        if (i < 2) {
            const uint64_t shape[2] = {h[i], w[i]};
            ck_assert_int_eq(gpuseg_npy_write(in->path[i], dt[i], 2, shape, in->data[i]),
                             GPUSEG_OK);
        } else {
            gpuseg_image img = {w[i], h[i], 1, 1, dt[i], in->data[i]};
            ck_assert_int_eq(gpuseg_labels_write(in->path[i], &img, NULL), GPUSEG_OK);
        }
    }
}

static void free_inputs(inputs *in) {
    for (int i = 0; i < 3; i++)
        free(in->data[i]);
}

/* Number of distinct non-zero values (what batch stores as n_masks). */
static unsigned long distinct(const inputs *in, int i) {
    size_t n = (size_t)in->h[i] * in->w[i];
    unsigned char *seen = calloc(1000001, 1);
    unsigned long c = 0;
    for (size_t k = 0; k < n; k++) {
        uint32_t v =
            in->bytes[i] == n * 2 ? ((uint16_t *)in->data[i])[k] : ((uint32_t *)in->data[i])[k];
        if (v && !seen[v]++)
            c++;
    }
    free(seen);
    return c;
}

/* ---- round trip ------------------------------------------------------------------------- */

START_TEST(batch_roundtrip) {
    const char *dir = tu_tmpdir();
    inputs in;
    make_inputs(dir, &in);
    /* .bin with the default 2 in flight (through the device when there is one), then with
     * --host and 3 in flight, then serial (0). */
    const char *modes[3] = {"", "--host --max-in-flight 3", "--max-in-flight 0"};
    for (int m = 0; m < 3; m++) {
        char out[300];
        snprintf(out, sizeof out, "%s/out%d", dir, m);
        ck_assert_int_eq(mkdir(out, 0755), 0);
        tu_cli_result *r = tu_cli("shm batch '%s' '%s' '%s' --save-dir '%s' --name-prefix %sr %s",
                                  in.path[0], in.path[1], in.path[2], out, g_prefix, modes[m]);
        ck_assert_msg(r->status == 0, "mode '%s': %s", modes[m], r->err);
        ck_assert_str_eq(r->out, "");
        free(r);
        const char *stem[3] = {"a", "b", "c"};
        for (int i = 0; i < 3; i++) {
            char p[400];
            snprintf(p, sizeof p, "%s/%s.bin", out, stem[i]);
            tu_assert_file_equals(p, in.data[i], in.bytes[i]);
            snprintf(p, sizeof p, "%s/%s.json", out, stem[i]);
            size_t n = 0;
            char *js = tu_read_file(p, &n), want[512];
            snprintf(want, sizeof want, "{\"shape\":[%u,%u],\"dtype\":\"%s\"", in.h[i], in.w[i],
                     i == 1 ? "uint32" : "uint16");
            ck_assert_msg(strncmp(js, want, strlen(want)) == 0, "%s", js);
            snprintf(want, sizeof want, "\"n_masks\":%lu,\"diameter\":0,", distinct(&in, i));
            ck_assert_msg(strstr(js, want) != NULL, "%s lacks %s", js, want);
            /* the caller's metadata (--meta of the saver) is in the sidecar */
            snprintf(want, sizeof want, "\"input\":\"%s\"}\n", in.path[i]);
            ck_assert_msg(strstr(js, want) != NULL, "%s lacks %s", js, want);
            free(js);
        }
        ck_assert_uint_eq(count_segments("r"), 0);
    }
    /* other formats: read back and compare the samples */
    const char *fmts[2] = {"npy", "tif"};
    for (int f = 0; f < 2; f++) {
        char out[300];
        snprintf(out, sizeof out, "%s/fmt%s", dir, fmts[f]);
        ck_assert_int_eq(mkdir(out, 0755), 0);
        tu_cli_result *r =
            tu_cli("shm batch '%s' '%s' '%s' --save-dir '%s' --format %s --name-prefix %sr",
                   in.path[0], in.path[1], in.path[2], out, fmts[f], g_prefix);
        ck_assert_msg(r->status == 0, "%s", r->err);
        free(r);
        const char *stem[3] = {"a", "b", "c"};
        for (int i = 0; i < 3; i++) {
            char p[400];
            snprintf(p, sizeof p, "%s/%s.%s", out, stem[i], fmts[f]);
            gpuseg_image *img = NULL;
            ck_assert_int_eq(gpuseg_image_read(p, &img), GPUSEG_OK);
            ck_assert_uint_eq(img->height, in.h[i]);
            ck_assert_uint_eq(img->width, in.w[i]);
            ck_assert(memcmp(img->data, in.data[i], in.bytes[i]) == 0);
            gpuseg_image_free(img);
        }
    }
    ck_assert_uint_eq(count_segments("r"), 0);
    free_inputs(&in);
    tu_rmtree(dir);
}
END_TEST

/* ---- failures ----------------------------------------------------------------------------- */

START_TEST(failed_saves) {
    const char *dir = tu_tmpdir();
    inputs in;
    make_inputs(dir, &in);
    char out[300], blocker[400];
    snprintf(out, sizeof out, "%s/out", dir);
    ck_assert_int_eq(mkdir(out, 0755), 0);
    /* out/b.bin is a directory: the saver of b fails, a and c are saved */
    snprintf(blocker, sizeof blocker, "%s/b.bin", out);
    ck_assert_int_eq(mkdir(blocker, 0755), 0);
    tu_cli_result *r = tu_cli("shm batch '%s' '%s' '%s' --save-dir '%s' --name-prefix %sf",
                              in.path[0], in.path[1], in.path[2], out, g_prefix);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    char want[800];
    snprintf(want, sizeof want, "gpuseg: saving %s to %s/b.bin failed: %s/b.bin: ", in.path[1], out,
             out);
    ck_assert_msg(strncmp(r->err, want, strlen(want)) == 0, "%s", r->err);
    free(r);
    snprintf(blocker, sizeof blocker, "%s/a.bin", out);
    tu_assert_file_equals(blocker, in.data[0], in.bytes[0]);
    snprintf(blocker, sizeof blocker, "%s/c.bin", out);
    tu_assert_file_equals(blocker, in.data[2], in.bytes[2]);
    ck_assert_uint_eq(count_segments("f"), 0);

    /* a folder that does not exist: every save fails, each named */
    r = tu_cli("shm batch '%s' '%s' --save-dir '%s/none' --name-prefix %sf", in.path[0], in.path[1],
               dir, g_prefix);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 2);
    for (int i = 0; i < 2; i++) {
        snprintf(want, sizeof want, "saving %s to %s/none/%c.bin failed: ", in.path[i], dir,
                 'a' + i);
        ck_assert_msg(strstr(r->err, want) != NULL, "%s", r->err);
    }
    free(r);
    ck_assert_uint_eq(count_segments("f"), 0);

    /* a saver killed by a signal */
    char killer[400];
    snprintf(killer, sizeof killer, "%s/killer.sh", dir);
    tu_write_file(killer, "#!/bin/sh\nkill -9 $$\n", 21);
    ck_assert_int_eq(chmod(killer, 0755), 0);
    r = tu_cli("shm batch '%s' --save-dir '%s' --saver '%s' --host --name-prefix %sf", in.path[0],
               out, killer, g_prefix);
    ck_assert_int_eq(r->status, 1);
    snprintf(want, sizeof want,
             "gpuseg: saving %s to %s/a.bin failed: killed by signal 9 (SIGKILL)\n", in.path[0],
             out);
    ck_assert_str_eq(r->err, want);
    free(r);
    ck_assert_uint_eq(count_segments("f"), 0);

    /* a saver that cannot start: the image is named, nothing left */
    r = tu_cli("shm batch '%s' --save-dir '%s' --saver '%s/missing' --host --name-prefix %sf",
               in.path[0], out, dir, g_prefix);
    ck_assert_int_eq(r->status, 1);
    snprintf(want, sizeof want, "gpuseg: %s: cannot start the saver %s/missing: ", in.path[0], dir);
    ck_assert_msg(strncmp(r->err, want, strlen(want)) == 0, "%s", r->err);
    free(r);
    ck_assert_uint_eq(count_segments("f"), 0);

    /* usage errors */
    r = tu_cli("shm batch '%s' --save-dir '%s' --shm-only", in.path[0], out);
    ck_assert_int_eq(r->status, 2);
    free(r);
    r = tu_cli("save --shm %sx -o '%s/x.bin' --meta '{\"a\":1'", g_prefix, dir);
    ck_assert_int_eq(r->status, 2);
    ck_assert_msg(strstr(r->err, "--meta") != NULL, "%s", r->err);
    free(r);
    r = tu_cli("shm batch '%s' --shm-only --name-prefix /tmp/x", in.path[0]);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "name prefix") != NULL, "%s", r->err);
    free(r);
    free_inputs(&in);
    tu_rmtree(dir);
}
END_TEST

/* ---- --shm-only --json ------------------------------------------------------------------- */

/* The value after "key": in a JSON line (up to , or }), copied into buf. */
static bool field(const char *line, const char *key, char *buf, size_t len) {
    char k[64];
    snprintf(k, sizeof k, "\"%s\":", key);
    const char *p = strstr(line, k);
    if (!p)
        return false;
    p += strlen(k);
    size_t n = 0;
    int depth = 0;
    bool str = false;
    while (p[n] && (str || depth || (p[n] != ',' && p[n] != '}'))) {
        if (p[n] == '"' && (n == 0 || p[n - 1] != '\\'))
            str = !str;
        else if (!str && p[n] == '[')
            depth++;
        else if (!str && p[n] == ']')
            depth--;
        n++;
    }
    if (n + 1 > len)
        return false;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return true;
}

START_TEST(shm_only_json) {
    const char *dir = tu_tmpdir();
    inputs in;
    make_inputs(dir, &in);
    tu_cli_result *r = tu_cli("shm batch '%s' '%s' '%s' --shm-only --json --name-prefix %sj",
                              in.path[0], in.path[1], in.path[2], g_prefix);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_int_eq(tu_count_lines(r->out), 3);
    char names[3][GPUSEG_SHM_NAME_MAX];
    char *line = r->out;
    for (int i = 0; i < 3; i++) {
        char *nl = strchr(line, '\n');
        *nl = '\0';
        char v[512];
        /* one object: starts with {, ends with }, braces and quotes balanced */
        ck_assert(line[0] == '{' && nl[-1] == '}');
        int depth = 0, quotes = 0;
        for (char *c = line; *c; c++) {
            depth += (*c == '{') - (*c == '}');
            quotes += *c == '"' && c[-1] != '\\';
        }
        ck_assert_int_eq(depth, 0);
        ck_assert_int_eq(quotes % 2, 0);
        ck_assert(field(line, "shm", v, sizeof v));
        ck_assert_uint_eq(strlen(v), strlen(g_prefix) + 1 + 16 + 2);
        snprintf(names[i], sizeof names[i], "%.*s", (int)strlen(v) - 2, v + 1);
        ck_assert(field(line, "shape", v, sizeof v));
        char want[600];
        snprintf(want, sizeof want, "[%u,%u]", in.h[i], in.w[i]);
        ck_assert_str_eq(v, want);
        ck_assert(field(line, "dtype", v, sizeof v));
        ck_assert_str_eq(v, i == 1 ? "\"uint32\"" : "\"uint16\"");
        ck_assert(field(line, "offset", v, sizeof v));
        ck_assert_str_eq(v, "4096");
        ck_assert(field(line, "bytes", v, sizeof v));
        ck_assert_uint_eq(strtoull(v, NULL, 10), in.bytes[i]);
        ck_assert(field(line, "n_masks", v, sizeof v));
        ck_assert_uint_eq(strtoull(v, NULL, 10), distinct(&in, i));
        ck_assert(field(line, "diameter", v, sizeof v));
        ck_assert_str_eq(v, "0");
        ck_assert(field(line, "image", v, sizeof v));
        snprintf(want, sizeof want, "\"%s\"", in.path[i]);
        ck_assert_str_eq(v, want);
        line = nl + 1;
    }
    free(r);
    /* the segments are there, ready, and hold the labels */
    for (int i = 0; i < 3; i++) {
        gpuseg_shm *seg = NULL;
        ck_assert_int_eq(gpuseg_shm_open(names[i], 0, &seg), GPUSEG_OK);
        ck_assert(memcmp(gpuseg_shm_payload(seg), in.data[i], in.bytes[i]) == 0);
        gpuseg_shm_free(seg);
    }
    ck_assert_uint_eq(count_segments("j"), 3);
    r = tu_cli("shm rm %s %s %s", names[0], names[1], names[2]);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    ck_assert_uint_eq(count_segments("j"), 0);
    free_inputs(&in);
    tu_rmtree(dir);
}
END_TEST

/* ---- many batches at once ------------------------------------------------------------------ */

/* Starts gpuseg with args (NULL-terminated), stdout and stderr to files (NULL: /dev/null), with
 * GPUSEG_SHM_TEST_STALL_MS=stall_ms when stall_ms is not NULL. */
static pid_t spawn_cli(const char *const *args, const char *out, const char *err,
                       const char *stall_ms) {
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        int fo = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(err ? err : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fo, 1);
        dup2(fe, 2);
        if (stall_ms)
            setenv("GPUSEG_SHM_TEST_STALL_MS", stall_ms, 1);
        char *argv[32];
        int n = 0;
        argv[n++] = (char *)GPUSEG_CLI;
        for (; args[n - 1] && n < 31; n++)
            argv[n] = (char *)args[n - 1];
        argv[n] = NULL;
        execv(GPUSEG_CLI, argv);
        _exit(127);
    }
    return pid;
}

START_TEST(concurrent_batches) {
    enum { NB = 8 };
    const char *dir = tu_tmpdir();
    inputs in;
    make_inputs(dir, &in);
    char prefix[128], outs[NB][300], errs[NB][300];
    snprintf(prefix, sizeof prefix, "%sc", g_prefix);
    pid_t pids[NB];
    for (int b = 0; b < NB; b++) {
        snprintf(outs[b], sizeof outs[b], "%s/o%d", dir, b);
        snprintf(errs[b], sizeof errs[b], "%s/e%d.txt", dir, b);
        ck_assert_int_eq(mkdir(outs[b], 0755), 0);
        /* --host: eight OpenCL (PoCL) start-ups at once would only slow this 2-core test down;
         * the device path is covered by batch_roundtrip */
        const char *args[] = {
            "shm",   "batch",  in.path[0],      in.path[1], in.path[2],        "--save-dir",
            outs[b], "--host", "--name-prefix", prefix,     "--max-in-flight", "3",
            NULL};
        pids[b] = spawn_cli(args, NULL, errs[b], NULL);
    }
    for (int b = 0; b < NB; b++) {
        int status;
        ck_assert_int_eq(waitpid(pids[b], &status, 0), pids[b]);
        size_t n;
        char *e = tu_read_file(errs[b], &n);
        ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "batch %d: %s", b, e);
        free(e);
        const char *stem[3] = {"a", "b", "c"};
        for (int i = 0; i < 3; i++) {
            char p[400];
            snprintf(p, sizeof p, "%s/%s.bin", outs[b], stem[i]);
            tu_assert_file_equals(p, in.data[i], in.bytes[i]);
        }
    }
    ck_assert_uint_eq(count_segments("c"), 0);
    free_inputs(&in);
    tu_rmtree(dir);
}
END_TEST

/* ---- interrupted batches ------------------------------------------------------------------- */

/* Waits up to 10 s for a segment with prefix+tag to exist. */
static bool wait_segment(const char *tag) {
    for (int i = 0; i < 1000; i++) {
        if (count_segments(tag) > 0)
            return true;
        sleep_ms(10);
    }
    return false;
}

/* Waits up to 10 s for a segment with prefix+tag whose header is written (magic present). */
static bool wait_header(const char *tag) {
    char p[128];
    snprintf(p, sizeof p, "%s%s", g_prefix, tag);
    for (int i = 0; i < 1000; i++) {
        gpuseg_shm_entry *e = NULL;
        size_t n = 0;
        ck_assert_int_eq(gpuseg_shm_list(p, &e, &n), GPUSEG_OK);
        bool ok = n > 0 && e[0].header_valid;
        gpuseg_free(e);
        if (ok)
            return true;
        sleep_ms(10);
    }
    return false;
}

START_TEST(sigterm_while_publishing) {
    /* The producer stalls 5 s in state "writing" (test hook), so the signal arrives while the
     * segment is being published: the handler must remove it. */
    const char *dir = tu_tmpdir();
    inputs in;
    make_inputs(dir, &in);
    char prefix[128], out[300];
    snprintf(prefix, sizeof prefix, "%st", g_prefix);
    snprintf(out, sizeof out, "%s/o", dir);
    ck_assert_int_eq(mkdir(out, 0755), 0);
    const char *args[] = {"shm", "batch",         in.path[0], in.path[1], "--save-dir",
                          out,   "--name-prefix", prefix,     "--host",   NULL};
    pid_t pid = spawn_cli(args, NULL, NULL, "5000");
    ck_assert(wait_segment("t"));
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    ck_assert_uint_eq(count_segments("t"), 0); /* none at all, without `shm clean` */
    free_inputs(&in);
    tu_rmtree(dir);
}
END_TEST

START_TEST(sigterm_while_saving) {
    /* The saver sleeps 1 s before saving: the signal arrives while it owns the segment; the
     * handler waits for it, so the file is written whole and the segment removed. */
    const char *dir = tu_tmpdir();
    inputs in;
    make_inputs(dir, &in);
    char prefix[128], out[300], slow[300], script[900], started[300];
    snprintf(prefix, sizeof prefix, "%ss", g_prefix);
    snprintf(out, sizeof out, "%s/o", dir);
    ck_assert_int_eq(mkdir(out, 0755), 0);
    snprintf(slow, sizeof slow, "%s/slow.sh", dir);
    snprintf(started, sizeof started, "%s/started", dir);
    /* the marker file tells the test that a saver runs (owns its segment) */
    int n = snprintf(script, sizeof script, "#!/bin/sh\n: > '%s'\nsleep 1\nexec '%s' \"$@\"\n",
                     started, GPUSEG_CLI);
    tu_write_file(slow, script, (size_t)n);
    ck_assert_int_eq(chmod(slow, 0755), 0);
    const char *args[] = {"shm", "batch",         in.path[0], in.path[1], in.path[2], "--save-dir",
                          out,   "--name-prefix", prefix,     "--host",   "--saver",  slow,
                          NULL};
    pid_t pid = spawn_cli(args, NULL, NULL, NULL);
    for (int i = 0; i < 1000 && !tu_exists(started); i++)
        sleep_ms(10);
    ck_assert(tu_exists(started));
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM);
    ck_assert_uint_eq(count_segments("s"), 0);
    char p[400];
    snprintf(p, sizeof p, "%s/a.bin", out);
    tu_assert_file_equals(p, in.data[0], in.bytes[0]); /* the saver in flight finished */
    free_inputs(&in);
    tu_rmtree(dir);
}
END_TEST

START_TEST(sigkill_then_clean) {
    /* SIGKILL cannot be handled: the segment being published stays, its producer is gone, and
     * `gpuseg shm clean` removes it. */
    const char *dir = tu_tmpdir();
    inputs in;
    make_inputs(dir, &in);
    char prefix[128], out[300];
    snprintf(prefix, sizeof prefix, "%sk", g_prefix);
    snprintf(out, sizeof out, "%s/o", dir);
    ck_assert_int_eq(mkdir(out, 0755), 0);
    const char *args[] = {"shm", "batch",         in.path[0], in.path[1], "--save-dir",
                          out,   "--name-prefix", prefix,     "--host",   NULL};
    pid_t pid = spawn_cli(args, NULL, NULL, "5000");
    /* killed before its header is written, a segment is only removed by `shm clean` after 60 s
     * (it cannot tell a dead producer from one still creating it): wait for the header */
    ck_assert(wait_header("k"));
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert_uint_eq(count_segments("k"), 1);
    tu_cli_result *r = tu_cli("shm clean --prefix %s", prefix);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_str_eq(r->out, "removed 1 segment\n");
    free(r);
    ck_assert_uint_eq(count_segments("k"), 0);
    free_inputs(&in);
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    snprintf(g_prefix, sizeof g_prefix, "/gpuseg-tso%d-", (int)getpid());
    g_dev = tu_require_device();
    if (g_dev == 1)
        return 1;
    if (g_dev != 0)
        printf("NOTE: no usable OpenCL device: batch uses the host path only\n");
    Suite *s = suite_create("segment_output");
    TCase *tc = tcase_create("segment_output");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, batch_roundtrip);
    tcase_add_test(tc, failed_saves);
    tcase_add_test(tc, shm_only_json);
    tcase_add_test(tc, concurrent_batches);
    tcase_add_test(tc, sigterm_while_publishing);
    tcase_add_test(tc, sigterm_while_saving);
    tcase_add_test(tc, sigkill_then_clean);
    suite_add_tcase(s, tc);
    int rc = tu_run(s);
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
