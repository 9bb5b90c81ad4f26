/* tests/fuzz/fuzz_common.h: what every fuzz target shares: the input cap and a per-process
 * in-memory file (memfd, reached as /proc/self/fd/N) that the path-taking readers open, so each
 * input costs no disk I/O and nothing is left behind when the process exits. Each target is
 * also compiled into tests/test_fuzz_replay.c, which renames its entry point through
 * FUZZ_ENTRY; hence everything here is static and include-guarded. */
#ifndef GPUSEG_FUZZ_COMMON_H
#define GPUSEG_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#ifndef FUZZ_ENTRY
#define FUZZ_ENTRY LLVMFuzzerTestOneInput
#endif

/* Inputs larger than this are ignored: every format reaches its interesting states in far
 * fewer bytes, and larger inputs only slow the fuzzer down. */
#define FUZZ_MAX_INPUT (1u << 20)

/* Most bytes a target lets a reader allocate for pixels: a 40-byte header may claim a 2^30
 * pixel image, which the library accepts by design (GPUSEG_MAX_IMAGE_PIXELS); the fuzzer's
 * RSS limit would report that as a crash, so targets read only headers beyond this. */
#define FUZZ_MAX_DECODED (64u << 20)

/* Replaces the contents of this process's memfd with data[0..size) and returns its path
 * (a static buffer), or NULL when the memfd cannot be made (the target then returns 0). The
 * memfd lives until the process exits; the kernel frees it then. */
static inline const char *fuzz_file(const uint8_t *data, size_t size) {
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("gpuseg-fuzz", 0);
        if (fd < 0)
            return NULL;
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0)
        return NULL;
    size_t done = 0;
    while (done < size) {
        ssize_t w = pwrite(fd, data + done, size - done, (off_t)done);
        if (w <= 0)
            return NULL;
        done += (size_t)w;
    }
    return path;
}

#endif
