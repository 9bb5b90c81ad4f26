/* bench/bench_overlap.c: does saving overlap with segmentation? Times `gpuseg shm batch` (the
 * output pipeline of `gpuseg segment`: publish to shared memory, spawn `gpuseg save`) on N
 * label images of S x S (uint16, or uint32 with DTYPE u32), serial (--max-in-flight 0: publish,
 * save, wait) against pipelined (--max-in-flight 2), with --busy-ms B standing in for the device
 * work of each image (a benchmark knob of `shm batch` only), plus the segment-only part
 * (--shm-only). Usage: bench_overlap GPUSEG [N=8] [S=2048] [B=150] [FORMAT=bin] [DIR=/tmp]
 * [DTYPE=u16]. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "gpuseg/gpuseg.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Runs the shell command; returns wall seconds, or -1 when it failed. */
static double timed(const char *cmd) {
    double t0 = now_s();
    int rc = system(cmd);
    double t = now_s() - t0;
    if (rc != 0) {
        fprintf(stderr, "bench_overlap: failed (%d): %s\n", rc, cmd);
        return -1;
    }
    return t;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr,
                "usage: bench_overlap GPUSEG [N=8] [S=2048] [B=150] [FORMAT=bin] [DIR=/tmp] "
                "[DTYPE=u16|u32]\n");
        return 2;
    }
    const char *exe = argv[1];
    int n = argc > 2 ? atoi(argv[2]) : 8;
    int side = argc > 3 ? atoi(argv[3]) : 2048;
    int busy = argc > 4 ? atoi(argv[4]) : 150;
    const char *fmt = argc > 5 ? argv[5] : "bin";
    const char *base = argc > 6 ? argv[6] : "/tmp";
    int wide = argc > 7 && strcmp(argv[7], "u32") == 0;
    size_t sample = wide ? 4 : 2;
    if (n < 1 || n > 200 || side < 16 || side > 8192 || busy < 0) {
        fprintf(stderr, "bench_overlap: bad N, S or B\n");
        return 2;
    }
    char dir[512];
    snprintf(dir, sizeof dir, "%s/bench_overlap.XXXXXX", base);
    if (!mkdtemp(dir)) {
        fprintf(stderr, "bench_overlap: %s: %s\n", dir, strerror(errno));
        return 1;
    }
    if (!wide && side > 4096) {
        fprintf(stderr, "bench_overlap: S > 4096 needs DTYPE u32\n");
        return 2;
    }
    size_t count = (size_t)side * (size_t)side;
    void *lab = malloc(count * sample);
    size_t list_len = (size_t)n * 600 + 1;
    char *list = calloc(1, list_len);
    if (!lab || !list)
        return 1;
    for (int i = 0; i < n; i++) {
        /* blocky labels (64 x 64 cells), different per image; at most (S / 64) * 1000 + S / 64
         * + N, which fits uint16 for S <= 4096 (checked above) */
        for (size_t k = 0; k < count; k++) {
            uint32_t v = (uint32_t)((k / (size_t)side / 64) * 1000 + (k % (size_t)side) / 64 + 1 +
                                    (size_t)i);
            if (wide)
                ((uint32_t *)lab)[k] = v;
            else
                ((uint16_t *)lab)[k] = (uint16_t)v;
        }
        char p[560];
        snprintf(p, sizeof p, "%s/in%03d.npy", dir, i);
        const uint64_t shape[2] = {(uint64_t)side, (uint64_t)side};
        if (gpuseg_npy_write(p, wide ? GPUSEG_DTYPE_U32 : GPUSEG_DTYPE_U16, 2, shape, lab) !=
            GPUSEG_OK) {
            fprintf(stderr, "bench_overlap: %s\n", gpuseg_last_error());
            return 1;
        }
        strcat(list, " '");
        strcat(list, p);
        strcat(list, "'");
    }
    free(lab);
    size_t cmd_len = list_len + 2048;
    char *cmd = malloc(cmd_len);
    char prefix[64];
    snprintf(prefix, sizeof prefix, "/gpuseg-bench%d-", (int)getpid());
    printf("%d images of %d x %d %s (%.1f MiB each), --busy-ms %d, format %s, in %s\n", n, side,
           side, wide ? "uint32" : "uint16", (double)(count * sample) / 1048576.0, busy, fmt, dir);

    /* segment-only: read + upload + busy + publish, no saving (segments removed afterwards).
     * Each of the three is run 3 times, interleaved, after one warm-up; the minimum counts (the
     * machine is shared, so the minimum is the least disturbed run). */
    double seg = 1e30, t[2] = {1e30, 1e30};
    const int mif[2] = {0, 2};
    for (int rep = 0; rep < 4; rep++) {
        snprintf(cmd, cmd_len,
                 "'%s' shm batch%s --shm-only --busy-ms %d --name-prefix %s > /dev/null && '%s' "
                 "shm clean --prefix %s > /dev/null",
                 exe, list, busy, prefix, exe, prefix);
        double v = timed(cmd);
        if (v < 0)
            return 1;
        if (rep > 0 && v < seg)
            seg = v;
        for (int m = 0; m < 2 && rep > 0; m++) {
            snprintf(cmd, cmd_len,
                     "rm -rf '%s/out' && mkdir '%s/out' && '%s' shm batch%s --save-dir "
                     "'%s/out' --format %s --max-in-flight %d --busy-ms %d --name-prefix %s",
                     dir, dir, exe, list, dir, fmt, mif[m], busy, prefix);
            v = timed(cmd);
            if (v < 0)
                return 1;
            if (v < t[m])
                t[m] = v;
        }
    }
    printf("segment only (no saving)          %7.3f s\n", seg);
    printf("serial   (--max-in-flight 0)      %7.3f s  (save part %.3f s)\n", t[0], t[0] - seg);
    printf("pipelined (--max-in-flight 2)     %7.3f s  (%.0f%% of serial)\n", t[1],
           t[0] > 0 ? 100.0 * t[1] / t[0] : 0.0);
    snprintf(cmd, cmd_len, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_overlap: could not remove %s\n", dir);
    free(cmd);
    free(list);
    return 0;
}
