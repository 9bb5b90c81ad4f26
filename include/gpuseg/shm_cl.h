/* gpuseg/shm_cl.h: the device-buffer (cl_mem) entry points of the shared-memory hand-off
 * (gpuseg/shm.h): labels go from a device buffer straight into the mapped segment, with no
 * intermediate host buffer of gpuseg's own. Kept apart from gpuseg/shm.h so that users of the
 * host API do not need the OpenCL headers. */
#ifndef GPUSEG_SHM_CL_H
#define GPUSEG_SHM_CL_H

#include "gpuseg/gpuseg_cl.h"
#include "gpuseg/shm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Reads the segment's whole array (data_bytes bytes) from `labels`, starting `offset` bytes
 * into the buffer, directly into the mapping (a blocking clEnqueueReadBuffer on the context's
 * queue whose host pointer is the mapped payload). seg must be a producer's handle that is not
 * yet published; the buffer belongs to the caller, was created on the context's OpenCL context
 * and holds at least offset + data_bytes bytes (checked: GPUSEG_INVALID_ARGUMENT otherwise).
 * The caller then publishes (gpuseg_shm_publish) or aborts. */
GPUSEG_API gpuseg_status gpuseg_shm_read_buffer(gpuseg_ctx *ctx, gpuseg_shm *seg, cl_mem labels,
                                                size_t offset);

/* One call: creates a segment (name as in gpuseg_shm_create) for an array of dtype/ndim/shape,
 * reads it from `labels` (from byte 0) with gpuseg_shm_read_buffer and publishes it with n_masks
 * and diameter. On failure nothing is left behind. On success the caller owns *out
 * (gpuseg_shm_free; gpuseg_shm_unlink when done). */
GPUSEG_API gpuseg_status gpuseg_shm_create_from_buffer(gpuseg_ctx *ctx, const char *name,
                                                       cl_mem labels, gpuseg_dtype dtype,
                                                       uint32_t ndim, const uint64_t *shape,
                                                       uint64_t n_masks, double diameter,
                                                       gpuseg_shm **out);
/* gpuseg_shm_create_from_buffer with publication options (params NULL = defaults). */
GPUSEG_API gpuseg_status gpuseg_shm_create_from_buffer_ex(gpuseg_ctx *ctx, const char *name,
                                                          cl_mem labels, gpuseg_dtype dtype,
                                                          uint32_t ndim, const uint64_t *shape,
                                                          uint64_t n_masks, double diameter,
                                                          const gpuseg_shm_publish_params *params,
                                                          gpuseg_shm **out);

#ifdef __cplusplus
}
#endif
#endif
