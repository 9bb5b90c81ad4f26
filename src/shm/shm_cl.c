/* shm/shm_cl.c: device buffer -> shared-memory segment. The labels are read with one blocking
 * clEnqueueReadBuffer whose destination is the mapped payload itself, so the only host copy is
 * the one the OpenCL driver makes (if any) into the segment's pages. */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "gpuseg/shm_cl.h"
#include "shm/shm_internal.h"

gpuseg_status gpuseg_shm_read_buffer(gpuseg_ctx *ctx, gpuseg_shm *seg, cl_mem labels,
                                     size_t offset) {
    gpuseg__clear_error(ctx);
    if (!ctx || !seg || !labels)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "gpuseg_shm_read_buffer: NULL argument");
    void *dst = gpuseg_shm_payload_writable(seg);
    if (!dst)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "shm %s: not a producer's handle, or already published",
                            seg->info.name);
    size_t have = 0, need = 0;
    cl_int err = clGetMemObjectInfo(labels, CL_MEM_SIZE, sizeof have, &have, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "shm %s: clGetMemObjectInfo(labels)", seg->info.name);
    if (!gpuseg__add_size(offset, (size_t)seg->info.data_bytes, &need) || need > have)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "shm %s: labels buffer has %zu bytes, the segment needs %llu at "
                            "offset %zu",
                            seg->info.name, have, (unsigned long long)seg->info.data_bytes, offset);
    err = clEnqueueReadBuffer(gpuseg_ctx_cl_queue(ctx), labels, CL_TRUE, offset,
                              (size_t)seg->info.data_bytes, dst, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "shm %s: clEnqueueReadBuffer(labels)", seg->info.name);
    return GPUSEG_OK;
}

gpuseg_status gpuseg_shm_create_from_buffer(gpuseg_ctx *ctx, const char *name, cl_mem labels,
                                            gpuseg_dtype dtype, uint32_t ndim,
                                            const uint64_t *shape, uint64_t n_masks,
                                            double diameter, gpuseg_shm **out) {
    return gpuseg_shm_create_from_buffer_ex(ctx, name, labels, dtype, ndim, shape, n_masks,
                                            diameter, NULL, out);
}

gpuseg_status gpuseg_shm_create_from_buffer_ex(gpuseg_ctx *ctx, const char *name, cl_mem labels,
                                               gpuseg_dtype dtype, uint32_t ndim,
                                               const uint64_t *shape, uint64_t n_masks,
                                               double diameter,
                                               const gpuseg_shm_publish_params *params,
                                               gpuseg_shm **out) {
    gpuseg__clear_error(ctx);
    if (!out)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_shm_create_from_buffer: NULL argument");
    *out = NULL;
    gpuseg_shm *seg = NULL;
    gpuseg_status st = gpuseg_shm_create(name, dtype, ndim, shape, &seg);
    if (st == GPUSEG_OK)
        st = gpuseg_shm_read_buffer(ctx, seg, labels, 0);
    if (st == GPUSEG_OK)
        st = gpuseg_shm_publish_ex(seg, n_masks, diameter, params);
    if (st != GPUSEG_OK) {
        /* Keep the message of the step that failed (copied: it lives in the buffer that
         * gpuseg__fail writes) and record it in the context too. */
        char msg[GPUSEG__ERRMSG_LEN];
        snprintf(msg, sizeof msg, "%s", gpuseg_last_error());
        if (seg) {
            char nm[GPUSEG_SHM_NAME_MAX];
            snprintf(nm, sizeof nm, "%s", seg->info.name);
            gpuseg_shm_free(seg); /* unpublished: marked FAILED for any early reader */
            shm_unlink(nm);
        }
        return gpuseg__fail(ctx, st, "%s", msg);
    }
    *out = seg;
    return GPUSEG_OK;
}
