/* gpuseg/common.h: export macro, status codes, version, error messages and memory release.
 * Every fallible gpuseg function returns a gpuseg_status; GPUSEG_OK (0) is success and every
 * failure is negative. The detailed message of the last failure is kept per thread
 * (gpuseg_last_error) and, for calls that take a context, in the context as well. */
#ifndef GPUSEG_COMMON_H
#define GPUSEG_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(GPUSEG_BUILDING_LIBRARY)
#define GPUSEG_API __attribute__((visibility("default")))
#else
#define GPUSEG_API
#endif

/* One table of every status: enum value, number and default message (X-macro, so that the enum,
 * gpuseg_status_name and gpuseg_status_message cannot drift apart). The raw OpenCL error code
 * never becomes a status; it goes into the detailed message instead. */
#define GPUSEG_STATUS_MAP(X)                                                                       \
    X(OK, 0, "success")                                                                            \
    X(INVALID_ARGUMENT, -1, "invalid argument")                                                    \
    X(OUT_OF_MEMORY, -2, "out of host memory")                                                     \
    X(IO, -3, "input/output error")                                                                \
    X(FORMAT, -4, "malformed or corrupt data")                                                     \
    X(UNSUPPORTED, -5, "unsupported format or feature")                                            \
    X(TOO_LARGE, -6, "size exceeds a limit")                                                       \
    X(NO_PLATFORM, -7, "no OpenCL platform installed")                                             \
    X(NO_DEVICE, -8, "no matching OpenCL device")                                                  \
    X(OPENCL, -9, "OpenCL call failed")                                                            \
    X(BUILD, -10, "OpenCL program build failed")                                                   \
    X(DEVICE_MEMORY, -11, "out of device memory")                                                  \
    X(NOT_FOUND, -12, "not found")                                                                 \
    X(TIMEOUT, -13, "timed out")                                                                   \
    X(NOT_READY, -14, "not ready")                                                                 \
    X(CHECKSUM, -15, "checksum mismatch")                                                          \
    X(PERMISSION, -16, "permission denied")                                                        \
    X(CANCELLED, -17, "cancelled")                                                                 \
    X(INTERNAL, -18, "internal error")

typedef enum gpuseg_status {
#define GPUSEG_STATUS_ENUM_(name, value, msg) GPUSEG_##name = value,
    GPUSEG_STATUS_MAP(GPUSEG_STATUS_ENUM_)
#undef GPUSEG_STATUS_ENUM_
} gpuseg_status;

/* "GPUSEG_FORMAT" for GPUSEG_FORMAT; "GPUSEG_UNKNOWN_STATUS" for values outside the table. */
GPUSEG_API const char *gpuseg_status_name(gpuseg_status s);
/* The short default message of a status ("malformed or corrupt data"). */
GPUSEG_API const char *gpuseg_status_message(gpuseg_status s);

/* Detailed one-line message of the most recent failure of a gpuseg call on the calling thread,
 * e.g. "cells.tif: TIFF header claims 2147483648 x 2147483648 pixels (limit 1073741824)".
 * Empty string when nothing failed yet. The pointer stays valid until the next gpuseg call on
 * this thread. */
GPUSEG_API const char *gpuseg_last_error(void);

/* Library version as "MAJOR.MINOR.PATCH". */
GPUSEG_API const char *gpuseg_version(void);

/* sizeof of the public structure named `name` (its typedef name, e.g. "gpuseg_segment_params"),
 * 0 for a name that is not one: for bindings that declare the structures without a compiler
 * (the Python package checks its ctypes copies against it when it loads the library). */
GPUSEG_API size_t gpuseg_struct_size(const char *name);

/* Releases memory that a gpuseg function allocated and documented as "free with gpuseg_free".
 * Accepts NULL. */
GPUSEG_API void gpuseg_free(void *p);

/* The fewest significant digits (1 to 17) with which "%.*g" writes the finite double v so that
 * it reads back as v: the n of jansson's JSON_REAL_PRECISION(n) for the shortest exact form. */
GPUSEG_API int gpuseg_shortest_digits(double v);

#ifdef __cplusplus
}
#endif
#endif
