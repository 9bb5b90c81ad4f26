/* gpuseg/limits.h: the size limits on what gpuseg reads (pixels per image page, objects found
 * by the masks step, bytes of a model file) and the flag that lets writers use output paths
 * that are symlinks or special files. Every limit has a compiled default, can be set per call
 * or per context, and by an environment variable; docs/io.md has the table. */
#ifndef GPUSEG_LIMITS_H
#define GPUSEG_LIMITS_H

#include "gpuseg/common.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Absolute maxima: no setting goes above these (they are what the code is built and tested
 * for). Pixels per page: 2^30, a 32768 x 32768 whole-slide plane (= GPUSEG_MAX_IMAGE_PIXELS).
 * Objects: label values are uint32 and 0 is background. Model file: 1 GiB
 * (= GPUSEG_MODEL_MAX_FILE_BYTES; a full-size CPnet is ~26 MB). */
#define GPUSEG_LIMIT_MAX_PIXELS      (1ull << 30)
#define GPUSEG_LIMIT_MAX_OBJECTS     4294967294ull
#define GPUSEG_LIMIT_MAX_MODEL_BYTES (1ull << 30)

/* Defaults (docs/io.md says why): pixels at the maximum, so that whole-slide planes keep
 * working; 2^24 objects (~0.6 GB of per-object host tables, more than a dense 32768^2 slide of
 * 10-pixel nuclei holds); 256 MiB of model file (ten times the largest Cellpose 3 model). */
#define GPUSEG_DEFAULT_MAX_PIXELS      GPUSEG_LIMIT_MAX_PIXELS
#define GPUSEG_DEFAULT_MAX_OBJECTS     (1ull << 24)
#define GPUSEG_DEFAULT_MAX_MODEL_BYTES (256ull << 20)

/* A set of limits. A member of 0 means "not set here": the environment variable
 * (GPUSEG_MAX_PIXELS, GPUSEG_MAX_OBJECTS, GPUSEG_MAX_MODEL_BYTES) when it is set and non-empty,
 * else the default above. */
typedef struct gpuseg_limits {
    uint64_t max_pixels;      /* pixels per image page (width x height) */
    uint64_t max_objects;     /* objects (seeds) in one flows -> masks run */
    uint64_t max_model_bytes; /* size of a model file */
} gpuseg_limits;

/* Fills *l with the compiled defaults (the environment is not read). */
GPUSEG_API void gpuseg_limits_default(gpuseg_limits *l);

/* The limits in effect for `in` (may be NULL = all members 0): each 0 member is taken from its
 * environment variable, else from the default. GPUSEG_INVALID_ARGUMENT (message naming the
 * variable or member) for an environment value that is not a count, or any value above the
 * absolute maximum. *out is the caller's; nothing is allocated. */
GPUSEG_API gpuseg_status gpuseg_limits_resolve(const gpuseg_limits *in, gpuseg_limits *out);

/* Parses a limit as written in the environment and on the command line: decimal digits with
 * an optional suffix K, M, G or T (case-insensitive; powers of 1024), e.g. "1G" = 2^30. The
 * value must be at least 1. GPUSEG_INVALID_ARGUMENT (message quoting text) otherwise. */
GPUSEG_API gpuseg_status gpuseg_limit_parse(const char *text, uint64_t *out);

/* Writer flag: accept an output path that is a symlink (the file it points to is replaced,
 * atomically, and the link is kept) or a special file such as a FIFO or /dev/null (written
 * directly: no temporary file and no rename are possible there). Without it such paths are
 * refused with GPUSEG_PERMISSION. A directory is always refused. The environment variable
 * GPUSEG_ALLOW_SPECIAL_OUTPUT=1 sets it for writers called without flags. */
#define GPUSEG_WRITE_ALLOW_SPECIAL 1u

#ifdef __cplusplus
}
#endif
#endif
