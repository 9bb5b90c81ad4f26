/* gpuseg/gpuseg_cl.h: OpenCL interoperability. Include this (it includes CL/cl.h) to reach the
 * context's OpenCL objects and the functions that take device buffers (cl_mem). Build with
 * CL_TARGET_OPENCL_VERSION=120, as gpuseg's CMake package and pkg-config file set. */
#ifndef GPUSEG_CL_H
#define GPUSEG_CL_H

#include <CL/cl.h>
#include "gpuseg/context.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The context's OpenCL objects; owned by the context (do not release them). */
GPUSEG_API cl_context gpuseg_ctx_cl_context(const gpuseg_ctx *ctx);
GPUSEG_API cl_device_id gpuseg_ctx_cl_device(const gpuseg_ctx *ctx);
GPUSEG_API cl_command_queue gpuseg_ctx_cl_queue(const gpuseg_ctx *ctx);

/* Name of an OpenCL error code ("CL_OUT_OF_RESOURCES"); "CL_UNKNOWN_ERROR" if unknown. */
GPUSEG_API const char *gpuseg_cl_error_name(cl_int err);

#ifdef __cplusplus
}
#endif
#endif
