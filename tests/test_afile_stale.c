/* tests/test_afile_stale.c: the atomic writer removes the stale temporaries of its own target
 * (TARGET.tmp-XXXXXX left by a writer that was killed) and nothing else: not other targets',
 * not names of another shape, not young files, not files a live writer holds (its flock), not
 * symlinks or folders; a writer killed with SIGKILL mid-write leaves a temporary that the next
 * write of the same target removes. Host only. */
#define _DEFAULT_SOURCE /* flock */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

static void make_file(const char *dir, const char *name, int age_s) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    tu_write_file(p, "x", 1);
    if (age_s) {
        struct timespec t[2];
        clock_gettime(CLOCK_REALTIME, &t[0]);
        t[0].tv_sec -= age_s;
        t[1] = t[0];
        ck_assert_int_eq(utimensat(AT_FDCWD, p, t, 0), 0);
    }
}

static bool there(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    struct stat s;
    return lstat(p, &s) == 0;
}

START_TEST(stale_temporaries) {
    const char *dir = tu_tmpdir();
    const char *removed[] = {"out.bin.tmp-abc123", "out.bin.tmp-ZZ9z0a"};
    const char *kept[] = {"out.bin.tmp-abc12",  "out.bin.tmp-abc1234", "other.bin.tmp-abc123",
                          "out.bin.tmp-ab!123", "xout.bin.tmp-abc123", "out.bin.tmp-young1",
                          "out.bin.tmp-locked", "out.binx.tmp-abc123"};
    for (int i = 0; i < 2; i++)
        make_file(dir, removed[i], 3600);
    for (int i = 0; i < 8; i++)
        make_file(dir, kept[i], i == 5 ? 0 : 3600);
    /* a live writer: holds the lock on its temporary (another open file description) */
    char p[1024];
    snprintf(p, sizeof p, "%s/out.bin.tmp-locked", dir);
    int lfd = open(p, O_RDWR);
    ck_assert_int_ge(lfd, 0);
    ck_assert_int_eq(flock(lfd, LOCK_EX), 0);
    /* a symlink and a folder with a temporary's name */
    snprintf(p, sizeof p, "%s/out.bin.tmp-link01", dir);
    ck_assert_int_eq(symlink("other.bin.tmp-abc123", p), 0);
    snprintf(p, sizeof p, "%s/out.bin.tmp-dir001", dir);
    ck_assert_int_eq(mkdir(p, 0700), 0);

    snprintf(p, sizeof p, "%s/out.bin", dir);
    ck_assert_int_eq(gpuseg__write_file_atomic(NULL, p, "hello", 5), GPUSEG_OK);
    tu_assert_file_equals(p, "hello", 5);
    for (int i = 0; i < 2; i++)
        ck_assert_msg(!there(dir, removed[i]), "%s not removed", removed[i]);
    for (int i = 0; i < 8; i++)
        ck_assert_msg(there(dir, kept[i]), "%s removed", kept[i]);
    ck_assert(there(dir, "out.bin.tmp-link01") && there(dir, "out.bin.tmp-dir001"));
    /* once its writer is gone (lock released) it goes too */
    close(lfd);
    ck_assert_int_eq(gpuseg__write_file_atomic(NULL, p, "again", 5), GPUSEG_OK);
    ck_assert(!there(dir, "out.bin.tmp-locked"));
    ck_assert(there(dir, "out.bin.tmp-young1"));
    tu_rmtree(dir);
}
END_TEST

/* A writer killed with SIGKILL between creating and committing its temporary. */
START_TEST(killed_writer) {
    const char *dir = tu_tmpdir();
    char p[1024];
    snprintf(p, sizeof p, "%s/labels.npy", dir);
    int pipefd[2];
    ck_assert_int_eq(pipe(pipefd), 0);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        gpuseg__afile af = {.fd = -1};
        if (gpuseg__afile_open(p, &af) != GPUSEG_OK || gpuseg__afile_write(&af, "part", 4))
            _exit(1);
        (void)!write(pipefd[1], "k", 1);
        pause();
        _exit(0);
    }
    char c;
    ck_assert_int_eq(read(pipefd[0], &c, 1), 1);
    /* while the writer lives, an old-looking temporary is still its own: kept */
    tu_cli_result *r = tu_cli("--version >/dev/null; cd '%s' && ls -A", dir);
    ck_assert_msg(strstr(r->out, "labels.npy.tmp-"), "%s", r->out);
    char tmpname[256];
    ck_assert_int_eq(sscanf(strstr(r->out, "labels.npy.tmp-"), "%255s", tmpname), 1);
    free(r);
    char tp[1400];
    snprintf(tp, sizeof tp, "%s/%s", dir, tmpname);
    struct timespec t[2];
    clock_gettime(CLOCK_REALTIME, &t[0]);
    t[0].tv_sec -= 3600;
    t[1] = t[0];
    ck_assert_int_eq(utimensat(AT_FDCWD, tp, t, 0), 0);
    ck_assert_int_eq(gpuseg__write_file_atomic(NULL, p, "v1", 2), GPUSEG_OK);
    ck_assert(there(dir, tmpname));
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    ck_assert(WIFSIGNALED(status));
    ck_assert(there(dir, tmpname));
    ck_assert_int_eq(gpuseg__write_file_atomic(NULL, p, "v2", 2), GPUSEG_OK);
    ck_assert_msg(!there(dir, tmpname), "%s left behind", tmpname);
    tu_assert_file_equals(p, "v2", 2);
    close(pipefd[0]);
    close(pipefd[1]);
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("afile_stale");
    TCase *tc = tcase_create("host");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, stale_temporaries);
    tcase_add_test(tc, killed_writer);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
