/* gpuseg/flows_cl.h: the device-buffer (cl_mem) versions of the functions in gpuseg/flows.h.
 * Buffers belong to the caller and must have been created on the context's OpenCL context;
 * the functions enqueue on the context's queue and return when the result is ready. */
#ifndef GPUSEG_FLOWS_CL_H
#define GPUSEG_FLOWS_CL_H

#include "gpuseg/flows.h"
#include "gpuseg/gpuseg_cl.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- labels -> flows (module flow/labels_to_flows.c) ---------------------------------------- */

/* As gpuseg_labels_to_flows, with labels (uint32[H*W]) and flows (float32[2*H*W], dY plane then
 * dX plane) in device buffers. Reads the labels back once to find each mask's bounding box and
 * centre. */
GPUSEG_API gpuseg_status gpuseg_labels_to_flows_cl(gpuseg_ctx *ctx, cl_mem labels, uint32_t H,
                                                   uint32_t W, cl_mem flows);

/* ---- end of labels -> flows section --------------------------------------------------------- */

/* ---- flows -> masks (module flow/masks.c) --------------------------------------------------- */

/* As gpuseg_flows_to_masks with the flows in a device buffer (float32 [3*H*W], at least that
 * size) and the labels left on the device: on success *labels_out is a new buffer of H*W samples
 * of *dtype (GPUSEG_DTYPE_U16 or GPUSEG_DTYPE_U32) that the caller releases with
 * clReleaseMemObject. The flows buffer is only read. */
GPUSEG_API gpuseg_status gpuseg_flows_to_masks_cl(gpuseg_ctx *ctx, cl_mem flows, uint32_t H,
                                                  uint32_t W, const gpuseg_masks_params *params,
                                                  cl_mem *labels_out, gpuseg_dtype *dtype,
                                                  uint32_t *n_masks);

/* ---- end of flows -> masks section ---------------------------------------------------------- */

#ifdef __cplusplus
}
#endif
#endif
