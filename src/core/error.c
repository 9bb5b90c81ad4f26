/* core/error.c: status names and messages, the per-thread and per-context last-error buffers,
 * OpenCL error names, and the log callback plumbing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "gpuseg_version.h"

static _Thread_local char tls_error[GPUSEG__ERRMSG_LEN];

const char *gpuseg_status_name(gpuseg_status s) {
    switch (s) {
#define NAME_CASE_(name, value, msg)                                                               \
    case GPUSEG_##name:                                                                            \
        return "GPUSEG_" #name;
        GPUSEG_STATUS_MAP(NAME_CASE_)
#undef NAME_CASE_
    }
    return "GPUSEG_UNKNOWN_STATUS";
}

const char *gpuseg_status_message(gpuseg_status s) {
    switch (s) {
#define MSG_CASE_(name, value, msg)                                                                \
    case GPUSEG_##name:                                                                            \
        return msg;
        GPUSEG_STATUS_MAP(MSG_CASE_)
#undef MSG_CASE_
    }
    return "unknown status";
}

const char *gpuseg_last_error(void) {
    return tls_error;
}

const char *gpuseg_version(void) {
    return GPUSEG_VERSION_STRING;
}

void gpuseg_free(void *p) {
    free(p);
}

const char *gpuseg_ctx_last_error(const gpuseg_ctx *ctx) {
    return ctx ? ctx->errmsg : "";
}

void gpuseg__clear_error(gpuseg_ctx *ctx) {
    tls_error[0] = '\0';
    if (ctx)
        ctx->errmsg[0] = '\0';
}

gpuseg_status gpuseg__failv(gpuseg_ctx *ctx, gpuseg_status status, const char *fmt, va_list ap) {
    /* Format into a local buffer first: the arguments may point into tls_error itself (a
     * caller re-reporting gpuseg_last_error()), and vsnprintf's source and destination must
     * not overlap. */
    char line[GPUSEG__ERRMSG_LEN];
    vsnprintf(line, sizeof line, fmt, ap);
    /* Messages are one line even when they quote bytes from a hostile file (ZIP entry names,
     * records) or a multi-line build log: line breaks and tabs become spaces, other control
     * bytes '?' (found by tests/fuzz/fuzz_model). */
    for (char *c = line; *c; c++)
        if (*c == '\n' || *c == '\r' || *c == '\t')
            *c = ' ';
        else if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
    memcpy(tls_error, line, sizeof tls_error);
    if (ctx)
        memcpy(ctx->errmsg, tls_error, sizeof ctx->errmsg);
    if (ctx)
        gpuseg__log(ctx, GPUSEG_LOG_DEBUG, "error %s: %s", gpuseg_status_name(status), tls_error);
    return status;
}

gpuseg_status gpuseg__fail(gpuseg_ctx *ctx, gpuseg_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    gpuseg__failv(ctx, status, fmt, ap);
    va_end(ap);
    return status;
}

gpuseg_status gpuseg__fail_cl(gpuseg_ctx *ctx, cl_int err, const char *fmt, ...) {
    char what[GPUSEG__ERRMSG_LEN / 2];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    gpuseg_status st = (err == CL_MEM_OBJECT_ALLOCATION_FAILURE || err == CL_OUT_OF_RESOURCES ||
                        err == CL_OUT_OF_HOST_MEMORY)
                           ? GPUSEG_DEVICE_MEMORY
                           : GPUSEG_OPENCL;
    return gpuseg__fail(ctx, st, "%s: %s (%d)", what, gpuseg_cl_error_name(err), (int)err);
}

gpuseg_status gpuseg__wrap(gpuseg_ctx *ctx, gpuseg_status status, const char *fmt, ...) {
    char prefix[512];
    char old[GPUSEG__ERRMSG_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, tls_error, sizeof old);
    snprintf(tls_error, sizeof tls_error, "%s: %s", prefix, old);
    if (ctx)
        memcpy(ctx->errmsg, tls_error, sizeof ctx->errmsg);
    return status;
}

void gpuseg__log(gpuseg_ctx *ctx, gpuseg_log_level level, const char *fmt, ...) {
    if (!ctx || !ctx->log || level > ctx->log_level)
        return;
    char line[GPUSEG__ERRMSG_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    ctx->log(ctx->log_user, level, line);
}

const char *gpuseg_cl_error_name(cl_int err) {
    switch (err) {
#define CL_CASE_(e)                                                                                \
    case e:                                                                                        \
        return #e;
        CL_CASE_(CL_SUCCESS)
        CL_CASE_(CL_DEVICE_NOT_FOUND)
        CL_CASE_(CL_DEVICE_NOT_AVAILABLE)
        CL_CASE_(CL_COMPILER_NOT_AVAILABLE)
        CL_CASE_(CL_MEM_OBJECT_ALLOCATION_FAILURE)
        CL_CASE_(CL_OUT_OF_RESOURCES)
        CL_CASE_(CL_OUT_OF_HOST_MEMORY)
        CL_CASE_(CL_PROFILING_INFO_NOT_AVAILABLE)
        CL_CASE_(CL_MEM_COPY_OVERLAP)
        CL_CASE_(CL_IMAGE_FORMAT_MISMATCH)
        CL_CASE_(CL_IMAGE_FORMAT_NOT_SUPPORTED)
        CL_CASE_(CL_BUILD_PROGRAM_FAILURE)
        CL_CASE_(CL_MAP_FAILURE)
        CL_CASE_(CL_MISALIGNED_SUB_BUFFER_OFFSET)
        CL_CASE_(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
        CL_CASE_(CL_COMPILE_PROGRAM_FAILURE)
        CL_CASE_(CL_LINKER_NOT_AVAILABLE)
        CL_CASE_(CL_LINK_PROGRAM_FAILURE)
        CL_CASE_(CL_DEVICE_PARTITION_FAILED)
        CL_CASE_(CL_KERNEL_ARG_INFO_NOT_AVAILABLE)
        CL_CASE_(CL_INVALID_VALUE)
        CL_CASE_(CL_INVALID_DEVICE_TYPE)
        CL_CASE_(CL_INVALID_PLATFORM)
        CL_CASE_(CL_INVALID_DEVICE)
        CL_CASE_(CL_INVALID_CONTEXT)
        CL_CASE_(CL_INVALID_QUEUE_PROPERTIES)
        CL_CASE_(CL_INVALID_COMMAND_QUEUE)
        CL_CASE_(CL_INVALID_HOST_PTR)
        CL_CASE_(CL_INVALID_MEM_OBJECT)
        CL_CASE_(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)
        CL_CASE_(CL_INVALID_IMAGE_SIZE)
        CL_CASE_(CL_INVALID_SAMPLER)
        CL_CASE_(CL_INVALID_BINARY)
        CL_CASE_(CL_INVALID_BUILD_OPTIONS)
        CL_CASE_(CL_INVALID_PROGRAM)
        CL_CASE_(CL_INVALID_PROGRAM_EXECUTABLE)
        CL_CASE_(CL_INVALID_KERNEL_NAME)
        CL_CASE_(CL_INVALID_KERNEL_DEFINITION)
        CL_CASE_(CL_INVALID_KERNEL)
        CL_CASE_(CL_INVALID_ARG_INDEX)
        CL_CASE_(CL_INVALID_ARG_VALUE)
        CL_CASE_(CL_INVALID_ARG_SIZE)
        CL_CASE_(CL_INVALID_KERNEL_ARGS)
        CL_CASE_(CL_INVALID_WORK_DIMENSION)
        CL_CASE_(CL_INVALID_WORK_GROUP_SIZE)
        CL_CASE_(CL_INVALID_WORK_ITEM_SIZE)
        CL_CASE_(CL_INVALID_GLOBAL_OFFSET)
        CL_CASE_(CL_INVALID_EVENT_WAIT_LIST)
        CL_CASE_(CL_INVALID_EVENT)
        CL_CASE_(CL_INVALID_OPERATION)
        CL_CASE_(CL_INVALID_GL_OBJECT)
        CL_CASE_(CL_INVALID_BUFFER_SIZE)
        CL_CASE_(CL_INVALID_MIP_LEVEL)
        CL_CASE_(CL_INVALID_GLOBAL_WORK_SIZE)
        CL_CASE_(CL_INVALID_PROPERTY)
        CL_CASE_(CL_INVALID_IMAGE_DESCRIPTOR)
        CL_CASE_(CL_INVALID_COMPILER_OPTIONS)
        CL_CASE_(CL_INVALID_LINKER_OPTIONS)
        CL_CASE_(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef CL_CASE_
    case -1001:
        return "CL_PLATFORM_NOT_FOUND_KHR";
    }
    return "CL_UNKNOWN_ERROR";
}
