/* gpuseg/context.h: the device context. A context owns one OpenCL platform/device, its
 * in-order queue, the compiled programs (in memory and in the on-disk program cache) and the
 * last error message. One context is used by one thread at a time; create one per thread for
 * parallel work. */
#ifndef GPUSEG_CONTEXT_H
#define GPUSEG_CONTEXT_H

#include "gpuseg/common.h"
#include "gpuseg/limits.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct gpuseg_ctx gpuseg_ctx;

typedef enum gpuseg_log_level {
    GPUSEG_LOG_ERROR = 0,
    GPUSEG_LOG_WARN = 1,
    GPUSEG_LOG_INFO = 2,
    GPUSEG_LOG_DEBUG = 3
} gpuseg_log_level;

/* Log callback; msg is one line without a trailing newline. */
typedef void (*gpuseg_log_fn)(void *user, gpuseg_log_level level, const char *msg);

typedef enum gpuseg_device_type {
    GPUSEG_DEVICE_GPU = 1,
    GPUSEG_DEVICE_CPU = 2,
    GPUSEG_DEVICE_ACCELERATOR = 3,
    GPUSEG_DEVICE_OTHER = 4
} gpuseg_device_type;

/* What gpuseg knows of one OpenCL device; queried once. */
typedef struct gpuseg_device_info {
    int index;          /* position in the flat list over all platforms (what --device N means) */
    int platform_index; /* OpenCL platform number */
    int device_index;   /* device number within its platform */
    gpuseg_device_type type;
    char platform_name[128];
    char platform_version[128];
    char name[128];
    char vendor[128];
    char device_version[128];
    char driver_version[128];
    uint64_t global_mem_bytes;
    uint64_t max_alloc_bytes;
    uint64_t local_mem_bytes;
    size_t max_work_group_size;
    unsigned compute_units;
    int fp16; /* cl_khr_fp16 available */
    int fp64; /* cl_khr_fp64 available (double precision) */
} gpuseg_device_info;

typedef struct gpuseg_ctx_params {
    /* Which device. NULL means the environment variable GPUSEG_DEVICE, and when that is unset or
     * empty, automatic choice: the first GPU, else the first CPU device (PoCL), else the first
     * device of any type. Accepted forms: "auto", "gpu", "cpu", a number N (index in
     * `gpuseg devices`), "P:D" (platform P, device D), or a case-insensitive substring of
     * "platform name / device name". */
    const char *device;
    /* 1 (default): compiled programs are kept on disk and reused across processes; 0: off.
     * The environment variable GPUSEG_NO_PROGRAM_CACHE=1 turns it off too. */
    int program_cache;
    /* Cache folder; NULL: $GPUSEG_CACHE_DIR, else $XDG_CACHE_HOME/gpuseg, else
     * $HOME/.cache/gpuseg. */
    const char *cache_dir;
    /* Development override: a folder of .cl files read instead of the embedded sources; NULL:
     * $GPUSEG_KERNEL_DIR, else the sources embedded at build time. Never the working folder. */
    const char *kernel_dir;
    /* Largest single device allocation gpuseg makes, in bytes; 0 (default): the device's own
     * limit (CL_DEVICE_MAX_MEM_ALLOC_SIZE). A lower value leaves room for other users of the
     * device and exercises the smaller-batch fallbacks. The environment variable
     * GPUSEG_MAX_ALLOC_BYTES sets it when this is 0. */
    uint64_t max_alloc_bytes;
    /* Size limits for calls made with this context (objects in flows -> masks, the model file
     * of gpuseg_net_load; pass gpuseg_ctx_limits' copy to gpuseg_image_read_ex for images);
     * members left 0 come from
     * GPUSEG_MAX_PIXELS / GPUSEG_MAX_OBJECTS / GPUSEG_MAX_MODEL_BYTES, else the defaults of
     * gpuseg/limits.h. A bad value fails gpuseg_ctx_create with GPUSEG_INVALID_ARGUMENT. */
    gpuseg_limits limits;
    gpuseg_log_fn log;          /* NULL: no logging */
    void *log_user;             /* passed to log */
    gpuseg_log_level log_level; /* messages above this level are not produced (default WARN) */
} gpuseg_ctx_params;

/* Fills *p with the documented defaults above. */
GPUSEG_API void gpuseg_ctx_params_default(gpuseg_ctx_params *p);

/* Creates a context. params may be NULL (defaults). On success *out receives a context that the
 * caller releases with gpuseg_ctx_free. On failure *out is NULL and gpuseg_last_error() says why
 * (e.g. GPUSEG_NO_PLATFORM with the packages to install). */
GPUSEG_API gpuseg_status gpuseg_ctx_create(const gpuseg_ctx_params *params, gpuseg_ctx **out);

/* The limits in effect for this context (resolved at creation), copied into *out. */
GPUSEG_API void gpuseg_ctx_limits(const gpuseg_ctx *ctx, gpuseg_limits *out);

/* Releases a context and everything it owns. Accepts NULL. */
GPUSEG_API void gpuseg_ctx_free(gpuseg_ctx *ctx);

/* Progress of a long call (gpuseg_segment, gpuseg_flows_to_masks, blockwise runs): `stage`
 * names what runs now ("network", "masks", ...: a static string), `done` of `total` counts its
 * units (tiles, Euler steps, blocks; total 0 when unknown), and `fraction` (0 to 1) estimates
 * how much of the whole call is done. Called on the calling thread, between device steps. */
typedef struct gpuseg_progress {
    const char *stage;
    uint64_t done, total;
    double fraction;
} gpuseg_progress;
typedef void (*gpuseg_progress_fn)(void *user, const gpuseg_progress *p);

/* Sets (fn NULL: removes) the progress callback of calls made with ctx. */
GPUSEG_API void gpuseg_ctx_set_progress(gpuseg_ctx *ctx, gpuseg_progress_fn fn, void *user);

/* Asks the call running with ctx to stop (on = 1), or withdraws the request (on = 0). Safe from
 * any thread and from a signal handler. A long call checks the flag between device steps and
 * returns GPUSEG_CANCELLED, releasing what it made and leaving its outputs empty; the flag stays
 * set (every later call returns GPUSEG_CANCELLED at its first check) until cleared with on = 0. */
GPUSEG_API void gpuseg_ctx_cancel(gpuseg_ctx *ctx, int on);
/* 1 while a cancel request stands. */
GPUSEG_API int gpuseg_ctx_cancelled(const gpuseg_ctx *ctx);

/* Detailed message of the last failure of a call made with this context ("" if none). Owned by
 * the context; valid until the next call with it. */
GPUSEG_API const char *gpuseg_ctx_last_error(const gpuseg_ctx *ctx);

/* The device this context runs on. Owned by the context. */
GPUSEG_API const gpuseg_device_info *gpuseg_ctx_device(const gpuseg_ctx *ctx);

/* Builds (or loads from the program cache) every embedded program for the context's device.
 * Useful to warm the cache and to check a driver; *n_built (may be NULL) receives the number
 * of programs. */
GPUSEG_API gpuseg_status gpuseg_ctx_build_all(gpuseg_ctx *ctx, unsigned *n_built);

/* Statistics of program loading since the context was created. */
typedef struct gpuseg_program_stats {
    unsigned compiled;     /* built from source */
    unsigned cache_hits;   /* loaded from the on-disk cache */
    unsigned cache_stores; /* written to the on-disk cache */
    double build_seconds;  /* wall time spent in compiling or loading programs */
} gpuseg_program_stats;
GPUSEG_API void gpuseg_ctx_program_stats(const gpuseg_ctx *ctx, gpuseg_program_stats *out);

/* Lists every OpenCL device of every platform. On success *out is an array of *count entries
 * that the caller frees with gpuseg_free (NULL with count 0 when there are none). Returns
 * GPUSEG_NO_PLATFORM when no OpenCL platform (ICD) is installed. */
GPUSEG_API gpuseg_status gpuseg_device_list(gpuseg_device_info **out, size_t *count);

/* Resolves a device specification (see gpuseg_ctx_params.device; NULL = environment or auto)
 * against a device list, writing the chosen position into *index. GPUSEG_NO_DEVICE when
 * nothing matches. */
GPUSEG_API gpuseg_status gpuseg_device_choose(const gpuseg_device_info *list, size_t count,
                                              const char *spec, size_t *index);

/* The on-disk program cache folder that params (may be NULL) resolve to, written into buf.
 * GPUSEG_INVALID_ARGUMENT if it does not fit or no folder can be determined. */
GPUSEG_API gpuseg_status gpuseg_cache_dir(const gpuseg_ctx_params *params, char *buf, size_t len);

/* Removes every gpuseg program-cache file (and stale temporary file) from the cache folder that
 * params (may be NULL) resolve to; other files are left alone. *removed (may be NULL) receives
 * the number of files removed. A missing folder is not an error. */
GPUSEG_API gpuseg_status gpuseg_cache_clear(const gpuseg_ctx_params *params, size_t *removed);

#ifdef __cplusplus
}
#endif
#endif
