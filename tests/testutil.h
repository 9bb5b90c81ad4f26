/* tests/testutil.h: helpers shared by the Check test programs: running a suite, getting a device
 * context (skip with 77 only where there is truly no OpenCL device; GPUSEG_REQUIRE_DEVICE=1, set
 * by .ci/run, turns that skip into a failure), temporary folders, running the gpuseg command and
 * capturing its output, and paths to the shared data. */
#ifndef GPUSEG_TESTUTIL_H
#define GPUSEG_TESTUTIL_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>

#include "core/internal.h"

/* Runs the suite; returns the process exit code (0 if all passed). */
int tu_run(Suite *s);

/* Call at the start of main() of a test program that needs a device: returns 0 when an OpenCL
 * device is usable, 77 (skip) when none is and GPUSEG_REQUIRE_DEVICE is unset, 1 otherwise. */
int tu_require_device(void); /* probes in a child: never initialises OpenCL here */

/* A new context on the default device (fails the test if it cannot be created). */
gpuseg_ctx *tu_ctx(void);

/* Creates a fresh temporary folder (removed by tu_rmtree); returns a static-lifetime string. */
const char *tu_tmpdir(void);
/* Removes a folder tree (rm -rf). */
void tu_rmtree(const char *dir);

/* Result of running the gpuseg command. */
typedef struct {
    int status; /* exit code, or 128 + signal number if it was killed by a signal */
    char out[65536];
    char err[16384];
} tu_cli_result;

/* Runs `{ gpuseg <args> ; }` through /bin/sh (args is a shell fragment, printf-formatted) and
 * captures its exit status, stdout and stderr. The result is malloc'd; free() it. */
tu_cli_result *tu_cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The shared test data (dsb2018, usiigaci-phase, stardist-sample): $GPUSEG_SHARED_DATA when set,
 * else the folder CMake's GPUSEG_SHARED_DATA named (default ../shared/data beside the source). */
const char *tu_shared_data(void);
/* Path inside the shared data (printf-formatted); returns a static buffer (one at a time). Fails
 * the test, naming the folder and the variable, when the shared data is absent. */
const char *tu_data(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Test cases that need something a fresh clone may lack go in a TCase tagged with what they need
 * (tu_tcase_needing): TU_NEEDS_SHARED_DATA (the shared data above) or TU_NEEDS_NUMPY (python3, or
 * $GPUSEG_PYTHON, importing numpy). tests/CMakeLists.txt runs them as their own ctest entry
 * (<program>_shared_data, <program>_numpy, with CK_INCLUDE_TAGS) and the rest without them
 * (CK_EXCLUDE_TAGS); tu_run turns a run of such cases whose need is missing into one line naming
 * it and exit code 77, which ctest counts as skipped. */
#define TU_NEEDS_SHARED_DATA "shared_data"
#define TU_NEEDS_NUMPY       "numpy"
TCase *tu_tcase_needing(const char *name, const char *need);
/* The Python that has numpy ($GPUSEG_PYTHON, else python3); NULL when it cannot import numpy. */
const char *tu_python_with_numpy(void);

/* Writes bytes to a file (test setup); fails the test on error. */
void tu_write_file(const char *path, const void *data, size_t n);

/* Reads a whole file (test fails if it cannot); the buffer has a NUL after the *n bytes, so text
 * files can be searched as strings. free() it. */
char *tu_read_file(const char *path, size_t *n);

/* Asserts that the file holds exactly the n bytes of data. */
void tu_assert_file_equals(const char *path, const void *data, size_t n);

/* True when the file exists. */
bool tu_exists(const char *path);

/* Number of '\n' in s (for "one-line error" checks). */
int tu_count_lines(const char *s);

#endif
