/* core/internal.h: what the library's modules share and the public API does not show: the
 * context structure, error reporting, overflow-checked size arithmetic, and the helpers for
 * OpenCL programs, kernels and buffers. Never installed. */
#ifndef GPUSEG_INTERNAL_H
#define GPUSEG_INTERNAL_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nettle/sha2.h>

#include "gpuseg/gpuseg.h"
#include "gpuseg/gpuseg_cl.h"

#define GPUSEG__ERRMSG_LEN 2048
#define GPUSEG__MAX_PROGRAMS                                                                       \
    256 /* the GEMM builds one program per parameter set (tuner: dozens)                           \
         */
#define GPUSEG__MAX_KERNELS 256

#if defined(__GNUC__)
#define GPUSEG__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define GPUSEG__PRINTF(a, b)
#endif

typedef struct gpuseg__program_entry {
    char name[64];
    char options[256];
    cl_program program;
} gpuseg__program_entry;

typedef struct gpuseg__kernel_entry {
    const char *program; /* points into the program table's name */
    char name[64];
    cl_kernel kernel;
} gpuseg__kernel_entry;

struct gpuseg_ctx {
    gpuseg_device_info dev;
    cl_platform_id platform;
    cl_device_id device;
    cl_context cl;
    cl_command_queue queue;
    bool use_cache;
    char cache_dir[1024];
    char kernel_dir[1024]; /* empty: embedded sources */
    gpuseg_log_fn log;
    void *log_user;
    gpuseg_log_level log_level;
    gpuseg__program_entry programs[GPUSEG__MAX_PROGRAMS];
    unsigned n_programs;
    gpuseg__kernel_entry kernels[GPUSEG__MAX_KERNELS];
    unsigned n_kernels;
    gpuseg_program_stats stats;
    struct gpuseg__profile *prof; /* core/profile.c; NULL unless GPUSEG_PROFILE is set */
    gpuseg_limits limits;         /* resolved at creation (core/limits.c) */
    /* Programs are built with -DGPUSEG_FP64=1: the flow kernels (dynamics.cl, labels_to_flows.cl)
     * then compute Cellpose's float64 arithmetic in native double instead of float pairs. On by
     * default on CPU devices with cl_khr_fp64 (fast there; GPUs keep the float pairs, as many
     * have slow or no fp64); $GPUSEG_FP64=0 or 1 overrides where the device has fp64. */
    bool fp64;
    gpuseg_progress_fn progress; /* gpuseg_ctx_set_progress; NULL: none */
    void *progress_user;
    double progress_lo, progress_hi; /* the span reported fractions map into (progress_push) */
    atomic_int cancel;     /* gpuseg_ctx_cancel: lock-free, so a signal handler may set it */
    size_t largest_buffer; /* the largest gpuseg__buffer so far (gpuseg__largest_buffer) */
    char errmsg[GPUSEG__ERRMSG_LEN];
};

/* --- errors ------------------------------------------------------------------------------- */

/* Records a failure: formats the message into the thread's last-error buffer and, when ctx is
 * not NULL, into the context. Returns status so that callers can write
 * `return gpuseg__fail(ctx, GPUSEG_FORMAT, "%s: ...", path);`. */
gpuseg_status gpuseg__fail(gpuseg_ctx *ctx, gpuseg_status status, const char *fmt, ...)
    GPUSEG__PRINTF(3, 4);
gpuseg_status gpuseg__failv(gpuseg_ctx *ctx, gpuseg_status status, const char *fmt, va_list ap)
    GPUSEG__PRINTF(3, 0);

/* Records an OpenCL failure "what: CL_NAME (code)"; CL_MEM_OBJECT_ALLOCATION_FAILURE and
 * CL_OUT_OF_RESOURCES map to GPUSEG_DEVICE_MEMORY, everything else to GPUSEG_OPENCL. */
gpuseg_status gpuseg__fail_cl(gpuseg_ctx *ctx, cl_int err, const char *fmt, ...)
    GPUSEG__PRINTF(3, 4);

/* Prefixes the current message (thread and ctx) with "prefix: ", so that context grows as an
 * error travels up. Returns status unchanged. */
gpuseg_status gpuseg__wrap(gpuseg_ctx *ctx, gpuseg_status status, const char *fmt, ...)
    GPUSEG__PRINTF(3, 4);

/* Clears the thread's (and ctx's) last error; public entry points call it on entry. */
void gpuseg__clear_error(gpuseg_ctx *ctx);

void gpuseg__log(gpuseg_ctx *ctx, gpuseg_log_level level, const char *fmt, ...)
    GPUSEG__PRINTF(3, 4);

/* --- progress and cancel ----------------------------------------------------------------- */

/* GPUSEG_CANCELLED with the message "<what>: cancelled" when a cancel request stands on ctx
 * (gpuseg_ctx_cancel), else GPUSEG_OK. Long calls call it between device steps. */
gpuseg_status gpuseg__check_cancel(gpuseg_ctx *ctx, const char *what);
/* Reports progress to ctx's callback (nothing when none is set). `fraction` (clamped to 0..1) is
 * of the step that reports it: it is mapped into the current span (the whole call unless a
 * caller narrowed it with gpuseg__progress_push), so a step reports 0..1 of its own work both
 * when called on its own (gpuseg_flows_to_masks) and nested (the masks stage of gpuseg_segment). */
void gpuseg__progress(gpuseg_ctx *ctx, const char *stage, uint64_t done, uint64_t total,
                      double fraction);
/* A progress span: fractions reported inside it land in [lo, hi] of the whole call. */
typedef struct gpuseg__progress_span {
    double lo, hi;
} gpuseg__progress_span;
/* Narrows ctx's span to [lo, hi] of the current one (0 <= lo <= hi <= 1) and returns the
 * current one, which the caller restores with gpuseg__progress_pop on every path out. */
gpuseg__progress_span gpuseg__progress_push(gpuseg_ctx *ctx, double lo, double hi);
void gpuseg__progress_pop(gpuseg_ctx *ctx, gpuseg__progress_span saved);

/* --- overflow-checked sizes --------------------------------------------------------------- */

/* *out = a * b; false on overflow. */
static inline bool gpuseg__mul_size(size_t a, size_t b, size_t *out) {
    if (b != 0 && a > SIZE_MAX / b)
        return false;
    *out = a * b;
    return true;
}
/* *out = a * b * c * d; false on overflow. */
static inline bool gpuseg__mul4_size(size_t a, size_t b, size_t c, size_t d, size_t *out) {
    size_t t;
    return gpuseg__mul_size(a, b, &t) && gpuseg__mul_size(t, c, &t) && gpuseg__mul_size(t, d, out);
}
static inline bool gpuseg__add_size(size_t a, size_t b, size_t *out) {
    if (a > SIZE_MAX - b)
        return false;
    *out = a + b;
    return true;
}

/* --- memory ------------------------------------------------------------------------------- */

/* Gives the whole pages inside [p, p + bytes) back to the system (Linux: madvise MADV_DONTNEED;
 * elsewhere nothing happens): for a buffer whose content there is no longer needed, so that the
 * resident memory shrinks before the buffer is freed. The bytes become unspecified (zeros on
 * Linux); the buffer stays valid and is freed as usual. */
void gpuseg__drop_pages(void *p, size_t bytes);

/* --- sorted label values --------------------------------------------------------------------- */

/* qsort comparisons of uint32_t and uint64_t values. */
int gpuseg__cmp_u32(const void *a, const void *b);
int gpuseg__cmp_u64(const void *a, const void *b);
/* Index of v in the sorted distinct values vals[0..n) (v is known to be among them). */
static inline size_t gpuseg__find_u32(const uint32_t *vals, size_t n, uint32_t v) {
    size_t lo = 0, hi = n;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (vals[mid] <= v)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

/* --- OpenCL programs, kernels, buffers ---------------------------------------------------- */

/* Returns the program built from kernels/<name>.cl with the given extra build options (may be
 * NULL), compiling it or loading it from the cache on first use. The context owns it. */
gpuseg_status gpuseg__program(gpuseg_ctx *ctx, const char *name, const char *options,
                              cl_program *out);

/* Returns kernel `kernel` of program `program` (default build options). The context owns it
 * and reuses it; set all arguments before every enqueue. */
gpuseg_status gpuseg__kernel(gpuseg_ctx *ctx, const char *program, const char *kernel,
                             cl_kernel *out);

/* Sets kernel arguments from (size, pointer) pairs, naming the kernel and the index on failure.
 * Example: gpuseg__set_args(ctx, k, 3, sizeof(cl_mem), &buf, sizeof(cl_int), &n, ...). */
gpuseg_status gpuseg__set_args(gpuseg_ctx *ctx, cl_kernel k, unsigned n, ...);

/* Enqueues a 1-D or 2-D kernel over global (rounded up to multiples of local where local is
 * non-zero; kernels check bounds). local may be NULL. */
gpuseg_status gpuseg__run(gpuseg_ctx *ctx, cl_kernel k, unsigned dims, const size_t *global,
                          const size_t *local);

/* The largest buffer gpuseg__buffer has allocated on ctx since the last reset (reset != 0 sets
 * it back to 0 after reading): tests and benches check that blockwise runs allocate by block. */
size_t gpuseg__largest_buffer(gpuseg_ctx *ctx, int reset);

/* Allocates a device buffer of `bytes` (> 0) with flags; refuses sizes over the device's maximum
 * single allocation with GPUSEG_DEVICE_MEMORY and a message naming `what`. */
gpuseg_status gpuseg__buffer(gpuseg_ctx *ctx, cl_mem_flags flags, size_t bytes, const char *what,
                             cl_mem *out);

/* A new read-only buffer holding `bytes` of host data (blocking write); on failure *out is NULL
 * and the message names `what`. */
gpuseg_status gpuseg__upload(gpuseg_ctx *ctx, const void *data, size_t bytes, const char *what,
                             cl_mem *out);

/* Blocking write of `bytes` from src into the start of buf; the message names `what`. */
gpuseg_status gpuseg__write_buf(gpuseg_ctx *ctx, cl_mem buf, size_t bytes, const void *src,
                                const char *what);

/* Blocking read of the first `bytes` of buf into dst; the message names `what`. */
gpuseg_status gpuseg__read_buf(gpuseg_ctx *ctx, cl_mem buf, size_t bytes, void *dst,
                               const char *what);

/* Releases a buffer if not NULL and sets it to NULL. */
void gpuseg__release(cl_mem *m);

/* --- per-kernel profile (bench/) ------------------------------------------------------- */

/* With GPUSEG_PROFILE set (and not "0") when a context is created, every kernel gpuseg__run
 * enqueues, and every event handed to gpuseg__profile_event, is timed from its OpenCL profiling
 * event (CL_PROFILING_COMMAND_START to _END) and summed per kernel name. Events are read in
 * batches, so the queue is not serialised. Off (the default), nothing is recorded. */
typedef struct gpuseg__kernel_time {
    char name[64];
    double seconds; /* summed device time */
    uint64_t count; /* launches */
} gpuseg__kernel_time;

typedef struct gpuseg__profile gpuseg__profile;

/* A profile when GPUSEG_PROFILE is set (NULL otherwise, or out of memory: profiling off);
 * gpuseg_ctx_create calls it, gpuseg_ctx_free frees it with gpuseg__profile_free. */
gpuseg__profile *gpuseg__profile_new(void);
void gpuseg__profile_free(gpuseg__profile *p);

/* Books ev (which it releases) under name; a no-op (releasing ev) when profiling is off. */
void gpuseg__profile_event(gpuseg_ctx *ctx, const char *name, cl_event ev);

/* Waits for the pending events and points *times at the per-name table (owned by ctx, valid
 * until the next call or gpuseg__profile_reset); *n = 0 when profiling is off. */
gpuseg_status gpuseg__profile_read(gpuseg_ctx *ctx, const gpuseg__kernel_time **times, unsigned *n);

/* Drops the pending events and zeroes the table (e.g. after a warm-up run). */
void gpuseg__profile_reset(gpuseg_ctx *ctx);

/* --- small utilities ---------------------------------------------------------------------- */

/* SHA-256 of data, incremental (nettle's sha256 underneath; final also resets for reuse). */
typedef struct gpuseg__sha256 {
    struct sha256_ctx nettle;
} gpuseg__sha256;
void gpuseg__sha256_init(gpuseg__sha256 *s);
void gpuseg__sha256_update(gpuseg__sha256 *s, const void *data, size_t n);
void gpuseg__sha256_final(gpuseg__sha256 *s, unsigned char out[32]);
void gpuseg__sha256_hex(const unsigned char digest[32], char hex[65]);

/* Adds str and its NUL (which separates the fields) to s. */
void gpuseg__sha256_str(gpuseg__sha256 *s, const char *str);
/* Adds the device's identity to s: platform name and version, vendor, device name and version,
 * driver version (the program cache and the convolution choice table key on it). */
void gpuseg__sha256_device(gpuseg__sha256 *s, const gpuseg_ctx *ctx);

/* Monotonic clock in seconds (an arbitrary origin: for differences only). */
double gpuseg__now_s(void);

/* CRC-32 (zlib's crc32_z, so any length): start with crc = 0, or chain the previous result to
 * checksum data in pieces. Used by ZIP entries, PNG chunks and the shm payload. */
uint32_t gpuseg__crc32(uint32_t crc, const void *data, size_t n);

/* --- limits (core/limits.c) ----------------------------------------------------------------- */

typedef enum {
    GPUSEG__LIMIT_PIXELS = 0,
    GPUSEG__LIMIT_OBJECTS,
    GPUSEG__LIMIT_MODEL_BYTES
} gpuseg__limit;

/* How to raise a limit, for messages: "--max-pixels / GPUSEG_MAX_PIXELS", or "the most gpuseg
 * supports" when limit is already the absolute maximum. Returns buf. */
const char *gpuseg__limit_hint(gpuseg__limit which, uint64_t limit, char *buf, size_t len);
/* v with three significant digits and a decimal prefix and a trailing space ("4.9 G", "1.07 G",
 * "512 "), so that a unit can follow ("4.9 Gpixels"). Returns buf. */
const char *gpuseg__fmt_count(uint64_t v, char *buf, size_t len);
/* flags with GPUSEG_WRITE_ALLOW_SPECIAL added when GPUSEG_ALLOW_SPECIAL_OUTPUT is set (not 0). */
unsigned gpuseg__write_flags(unsigned flags);

/* --- atomic file writing (core/afile.c) ---------------------------------------------------- */

/* A file being written atomically: a temporary file created (O_EXCL, mode 0666 less the umask)
 * in the target's folder, written, fsync'ed and renamed over the target; the folder is fsync'ed
 * too. A target that is a symlink or not a regular file is refused unless
 * GPUSEG_WRITE_ALLOW_SPECIAL is given (then a symlink's destination is replaced atomically and
 * a special file such as a FIFO or /dev/null is written directly, `direct`); a directory is
 * always refused. Write errors name the file, with "disk full" for ENOSPC, EDQUOT and EFBIG.
 * After commit or abort the struct owns nothing; on any failure the temporary file is removed
 * and an existing target is untouched. Errors are recorded in ctx (may be NULL). */
typedef struct gpuseg__afile {
    const char *path; /* target as given (not owned), named in messages */
    char *target;     /* what is renamed over: path, or a symlink's destination (owned) */
    char *tmp;        /* temporary file name (owned); NULL when direct */
    int fd;
    bool direct; /* writing straight into a special file (allowed by the flag) */
    gpuseg_ctx *ctx;
} gpuseg__afile;

/* Flags from the environment only (gpuseg__write_flags(0)); _ex takes the caller's flags. */
gpuseg_status gpuseg__afile_open(const char *path, gpuseg__afile *af);
gpuseg_status gpuseg__afile_open_ex(gpuseg_ctx *ctx, const char *path, unsigned flags,
                                    gpuseg__afile *af);
gpuseg_status gpuseg__afile_write(gpuseg__afile *af, const void *data, size_t n);
/* fsync, close and rename; on failure the temporary file is removed. */
gpuseg_status gpuseg__afile_commit(gpuseg__afile *af);
/* Like commit but without the rename: the data is durable in af->tmp, which the caller renames
 * later with gpuseg__afile_rename (used to publish two files together). */
gpuseg_status gpuseg__afile_finish(gpuseg__afile *af);
gpuseg_status gpuseg__afile_rename(gpuseg__afile *af);
/* Closes and removes the temporary file; accepts a struct already committed or never opened
 * (initialise with {.fd = -1}). */
void gpuseg__afile_abort(gpuseg__afile *af);
/* Records the failure of a write-side call on path with errno e ("disk full" wording for
 * ENOSPC/EDQUOT/EFBIG) and returns GPUSEG_IO. */
gpuseg_status gpuseg__fail_write(gpuseg_ctx *ctx, const char *path, const char *what, int e);

/* Writes `n` bytes to `path` atomically: a temporary file in the same folder, fsync, rename.
 * Either the complete file exists afterwards or the previous state is kept. */
gpuseg_status gpuseg__write_file_atomic(gpuseg_ctx *ctx, const char *path, const void *data,
                                        size_t n);
/* The same with the writer's flags (GPUSEG_WRITE_ALLOW_SPECIAL: gpuseg__afile_open_ex). */
gpuseg_status gpuseg__write_file_atomic_ex(gpuseg_ctx *ctx, const char *path, unsigned flags,
                                           const void *data, size_t n);

/* Reads a whole file (at most max_bytes) into a new buffer (free with free()). */
gpuseg_status gpuseg__read_file(gpuseg_ctx *ctx, const char *path, size_t max_bytes, void **data,
                                size_t *n);

#endif
