/* gpuseg/shm.h: the shared-memory hand-off of a label array between processes. A producer
 * publishes labels into a POSIX shared-memory segment ("/gpuseg-<random>": one header page, then
 * the array at a page-aligned offset); a consumer in another process (the `gpuseg save` saver, a
 * Python session, ...) maps it by name, validates it and uses it. The byte layout is specified in
 * docs/shm.md so that any language can read it. The device-buffer (cl_mem) entry points are in
 * gpuseg/shm_cl.h. POSIX (Linux) only. */
#ifndef GPUSEG_SHM_H
#define GPUSEG_SHM_H

#include "gpuseg/common.h"
#include "gpuseg/image.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Layout constants (docs/shm.md has the full table of header fields). */
#define GPUSEG_SHM_MAGIC       "GPUSEGSH" /* 8 bytes at offset 0, no terminating NUL */
#define GPUSEG_SHM_VERSION     1u
#define GPUSEG_SHM_HEADER_SIZE 128u /* bytes of defined header fields in version 1 */
#define GPUSEG_SHM_MAX_DIMS    4u
/* Largest payload accepted by producers and readers (refused before mapping or allocating). */
#define GPUSEG_SHM_MAX_BYTES (1ull << 38)
/* Size of a name buffer, terminating NUL included. Names are "/gpuseg-" followed by 1 or more of
 * [A-Za-z0-9._-]; generated names are "/gpuseg-" + 16 hex digits. */
#define GPUSEG_SHM_NAME_MAX 128u

/* The state word, stored last by the producer (release) and loaded by readers (acquire). */
typedef enum gpuseg_shm_state {
    GPUSEG_SHM_WRITING = 0, /* created; header or payload still being written */
    GPUSEG_SHM_READY = 1,   /* complete: payload and checksum final */
    GPUSEG_SHM_FAILED = 2   /* the producer gave up; the payload is meaningless */
} gpuseg_shm_state;

/* A segment, open for writing (producer) or for reading (consumer). Opaque. */
typedef struct gpuseg_shm gpuseg_shm;

/* What a segment's header says, plus its name and total size. */
typedef struct gpuseg_shm_info {
    char name[GPUSEG_SHM_NAME_MAX]; /* always with the leading '/' */
    gpuseg_shm_state state;
    gpuseg_dtype dtype;                  /* GPUSEG_DTYPE_U16 or GPUSEG_DTYPE_U32 */
    uint32_t ndim;                       /* 1..4 */
    uint64_t shape[GPUSEG_SHM_MAX_DIMS]; /* row-major, last axis fastest; unused entries 0 */
    uint64_t data_offset;                /* byte offset of the array (page aligned) */
    uint64_t data_bytes;                 /* product of shape x sample size */
    uint64_t segment_bytes;              /* size of the whole segment */
    uint64_t n_masks;
    double diameter;         /* pixels; 0 when unknown */
    int64_t producer_pid;    /* process that created the segment */
    uint64_t producer_start; /* its start time in clock ticks after boot (0: unknown) */
    uint64_t created_ns;     /* creation time, ns since the Unix epoch */
    uint32_t checksum;       /* CRC-32 (as zlib.crc32) of the payload; valid when READY */
} gpuseg_shm_info;

/* ---- producer ------------------------------------------------------------------------------ */

/* Creates a new segment for an array of `dtype` (U16 or U32) with `ndim` (1..4) dimensions
 * `shape`, in state WRITING, mapped read-write, with mode 0600. name NULL: a fresh unpredictable
 * name ("/gpuseg-" + 16 hex digits from getrandom, retried on collision); otherwise that name
 * (with or without the leading '/'), which must not exist yet. On success *out is a handle that
 * the caller releases with gpuseg_shm_free; fill the array through gpuseg_shm_payload_writable,
 * then call gpuseg_shm_publish (or gpuseg_shm_abort). The segment itself stays in the system
 * until someone calls gpuseg_shm_unlink. */
GPUSEG_API gpuseg_status gpuseg_shm_create(const char *name, gpuseg_dtype dtype, uint32_t ndim,
                                           const uint64_t *shape, gpuseg_shm **out);

/* Computes the payload checksum, stores n_masks and diameter, and publishes the segment: the
 * state word becomes READY with release ordering, after every other byte. Only for a handle
 * from gpuseg_shm_create, once. */
GPUSEG_API gpuseg_status gpuseg_shm_publish(gpuseg_shm *seg, uint64_t n_masks, double diameter);

/* Options of publication (gpuseg_shm_publish_ex and the one-call producers' _ex variants). */
typedef struct gpuseg_shm_publish_params {
    /* Test hook: sleep this many milliseconds (at most 600000) before publishing, with the
     * segment still WRITING, so that a test can start a reader early or kill the producer
     * mid-write. 0 (the default): no delay. */
    uint32_t test_stall_ms;
} gpuseg_shm_publish_params;

/* gpuseg_shm_publish with options; params NULL = all defaults. */
GPUSEG_API gpuseg_status gpuseg_shm_publish_ex(gpuseg_shm *seg, uint64_t n_masks, double diameter,
                                               const gpuseg_shm_publish_params *params);

/* Marks an unpublished segment FAILED, so that waiting readers stop at once. Does not unlink. */
GPUSEG_API gpuseg_status gpuseg_shm_abort(gpuseg_shm *seg);

/* One call for the common case: creates a segment (name as in gpuseg_shm_create) for a
 * one-channel U16 or U32 label image (shape [H, W], or [pages, H, W] when pages > 1), copies the
 * labels and publishes. On failure nothing is left behind (the segment is marked failed and
 * unlinked). On success the caller owns *out (gpuseg_shm_free; gpuseg_shm_unlink when done). */
GPUSEG_API gpuseg_status gpuseg_shm_create_labels(const char *name, const gpuseg_image *labels,
                                                  uint64_t n_masks, double diameter,
                                                  gpuseg_shm **out);
/* gpuseg_shm_create_labels with publication options (params NULL = defaults). */
GPUSEG_API gpuseg_status gpuseg_shm_create_labels_ex(const char *name, const gpuseg_image *labels,
                                                     uint64_t n_masks, double diameter,
                                                     const gpuseg_shm_publish_params *params,
                                                     gpuseg_shm **out);

/* A fresh segment name for gpuseg_shm_create: prefix (NULL: "/gpuseg-") followed by 16 hex
 * digits from getrandom (64 bits: a collision is practically impossible, and creators use
 * O_EXCL anyway), written into name (GPUSEG_SHM_NAME_MAX bytes). A prefix must be "/gpuseg-"
 * followed by [A-Za-z0-9._-], short enough for the digits; otherwise GPUSEG_INVALID_ARGUMENT
 * with a message that starts with the quoted prefix ("'/bad' is not /gpuseg- followed by ..."),
 * so that a caller can put the setting's name before it. Lets a program register a name (for
 * clean-up on a signal, say) before the segment exists, and keep one job's segments apart
 * under one prefix (gpuseg_shm_list, gpuseg_shm_clean). */
GPUSEG_API gpuseg_status gpuseg_shm_random_name(const char *prefix, char *name);

/* ---- consumer ------------------------------------------------------------------------------ */

/* Opens an existing segment read-only and validates it: the owner must be the calling user and
 * the mode must not let others write; it waits up to timeout_s seconds (0: no waiting) for the
 * state READY, polling every few milliseconds, and fails early when the producer process is
 * gone while the segment is still WRITING. Then every header field is checked against the
 * mapped size and the payload checksum is verified. Errors (gpuseg_last_error) name the segment:
 * GPUSEG_NOT_FOUND (no such segment), GPUSEG_PERMISSION (other owner, writable by others),
 * GPUSEG_NOT_READY (still writing after the timeout, producer gone, or FAILED), GPUSEG_FORMAT
 * (bad magic, sizes, shape, offset), GPUSEG_UNSUPPORTED (version, dtype), GPUSEG_CHECKSUM.
 * On success the caller releases *out with gpuseg_shm_free. */
GPUSEG_API gpuseg_status gpuseg_shm_open(const char *name, double timeout_s, gpuseg_shm **out);

/* The header of an open segment (as validated at open / as written by the producer). The
 * pointer is owned by the handle and valid until gpuseg_shm_free. */
GPUSEG_API const gpuseg_shm_info *gpuseg_shm_get_info(const gpuseg_shm *seg);

/* The array: data_bytes bytes at data_offset inside the mapping, owned by the handle. */
GPUSEG_API const void *gpuseg_shm_payload(const gpuseg_shm *seg);
/* The same, writable; NULL for a read-only handle or once published. */
GPUSEG_API void *gpuseg_shm_payload_writable(gpuseg_shm *seg);

/* Describes the array as a one-channel label image without copying: view->data points into the
 * mapping (do not write through it or free it; it is valid until gpuseg_shm_free). ndim must
 * be 2 ([H, W]) or 3 ([pages, H, W]) with sides within the image limits of gpuseg/image.h. */
GPUSEG_API gpuseg_status gpuseg_shm_labels_view(const gpuseg_shm *seg, gpuseg_image *view);

/* Unmaps and frees the handle (the segment stays in the system). A producer's handle that was
 * neither published nor aborted is marked FAILED first. Accepts NULL. */
GPUSEG_API void gpuseg_shm_free(gpuseg_shm *seg);

/* Removes the segment's name from the system (mappings stay valid until unmapped). name with
 * or without the leading '/'. GPUSEG_NOT_FOUND when it does not exist. */
GPUSEG_API gpuseg_status gpuseg_shm_unlink(const char *name);

/* ---- inspection and clean-up --------------------------------------------------------------- */

/* One segment found in /dev/shm. */
typedef struct gpuseg_shm_entry {
    char name[GPUSEG_SHM_NAME_MAX];
    uint64_t segment_bytes;
    uint32_t uid;
    int64_t mtime_s;      /* last modification, seconds since the epoch */
    int header_valid;     /* 1: a well-formed version-1 header was read (fields below are set) */
    gpuseg_shm_info info; /* meaningful when header_valid */
    int producer_alive;   /* 1 alive, 0 gone, -1 unknown (no readable header) */
} gpuseg_shm_entry;

/* Lists the segments whose names start with `prefix` (NULL: "/gpuseg-"), sorted by name. Reads
 * each header without waiting and without verifying the checksum. *entries is allocated (free
 * with gpuseg_free; NULL when *n is 0). */
GPUSEG_API gpuseg_status gpuseg_shm_list(const char *prefix, gpuseg_shm_entry **entries, size_t *n);

/* Unlinks the calling user's segments (names starting with prefix; NULL: "/gpuseg-") whose
 * producer process is gone (exited, zombie, or its pid now belongs to another process), in any
 * state -- READY ones left by `--shm-only` for a caller included -- and those without a valid
 * header whose last change is older than 60 s (a producer killed while creating one). Segments
 * of live producers are kept. *removed (may be NULL) receives the count. */
GPUSEG_API gpuseg_status gpuseg_shm_clean(const char *prefix, size_t *removed);

/* ---- helpers ------------------------------------------------------------------------------- */

/* Formats the one-line JSON description a producer prints for its caller, without a newline:
 * {"shm":"/gpuseg-...","shape":[H,W],"dtype":"uint16","offset":4096,"bytes":N,"n_masks":N,
 *  "diameter":D}. GPUSEG_TOO_LARGE when it does not fit in len bytes. */
GPUSEG_API gpuseg_status gpuseg_shm_json(const gpuseg_shm_info *info, char *buf, size_t len);

/* The payload checksum: CRC-32 with the zlib/ISO-HDLC parameters (reflected polynomial
 * 0xEDB88320, initial value and final XOR 0xFFFFFFFF), so that zlib.crc32 and binascii.crc32
 * give the same number. crc is 0 to start; pass the previous result to continue. */
GPUSEG_API uint32_t gpuseg_shm_checksum(uint32_t crc, const void *data, size_t n);

/* "writing", "ready", "failed" ("invalid" otherwise). */
GPUSEG_API const char *gpuseg_shm_state_name(gpuseg_shm_state s);

#ifdef __cplusplus
}
#endif
#endif
