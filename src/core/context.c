/* core/context.c: OpenCL platform and device discovery, device choice (GPU first, then CPU,
 * overridable by index or name), context creation with its capabilities queried once, and the
 * checked helpers for kernel arguments, launches and buffers. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"

#define MAX_PLATFORMS            16
#define MAX_DEVICES_PER_PLATFORM 64

static const char NO_PLATFORM_HINT[] =
    "no OpenCL platform found: install an OpenCL driver (ICD) for your GPU, or PoCL for the CPU "
    "(Debian/Ubuntu: apt-get install ocl-icd-libopencl1 pocl-opencl-icd; tools/setup.sh does)";

static void info_string(cl_device_id d, cl_device_info what, char *buf, size_t len) {
    buf[0] = '\0';
    if (clGetDeviceInfo(d, what, len, buf, NULL) != CL_SUCCESS)
        buf[0] = '\0';
    buf[len - 1] = '\0';
}

static void platform_string(cl_platform_id p, cl_platform_info what, char *buf, size_t len) {
    buf[0] = '\0';
    if (clGetPlatformInfo(p, what, len, buf, NULL) != CL_SUCCESS)
        buf[0] = '\0';
    buf[len - 1] = '\0';
}

static void query_device(cl_platform_id p, cl_device_id d, gpuseg_device_info *info) {
    memset(info, 0, sizeof *info);
    platform_string(p, CL_PLATFORM_NAME, info->platform_name, sizeof info->platform_name);
    platform_string(p, CL_PLATFORM_VERSION, info->platform_version, sizeof info->platform_version);
    info_string(d, CL_DEVICE_NAME, info->name, sizeof info->name);
    info_string(d, CL_DEVICE_VENDOR, info->vendor, sizeof info->vendor);
    info_string(d, CL_DEVICE_VERSION, info->device_version, sizeof info->device_version);
    info_string(d, CL_DRIVER_VERSION, info->driver_version, sizeof info->driver_version);
    cl_device_type type = 0;
    clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    info->type = (type & CL_DEVICE_TYPE_GPU)           ? GPUSEG_DEVICE_GPU
                 : (type & CL_DEVICE_TYPE_CPU)         ? GPUSEG_DEVICE_CPU
                 : (type & CL_DEVICE_TYPE_ACCELERATOR) ? GPUSEG_DEVICE_ACCELERATOR
                                                       : GPUSEG_DEVICE_OTHER;
    cl_ulong u = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof u, &u, NULL) == CL_SUCCESS)
        info->global_mem_bytes = u;
    u = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof u, &u, NULL) == CL_SUCCESS)
        info->max_alloc_bytes = u;
    u = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_SIZE, sizeof u, &u, NULL) == CL_SUCCESS)
        info->local_mem_bytes = u;
    size_t wg = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL) == CL_SUCCESS)
        info->max_work_group_size = wg;
    cl_uint cu = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL) == CL_SUCCESS)
        info->compute_units = cu;
    size_t ext_len = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &ext_len) == CL_SUCCESS && ext_len) {
        char *ext = malloc(ext_len + 1);
        if (ext && clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, ext_len, ext, NULL) == CL_SUCCESS) {
            ext[ext_len] = '\0';
            info->fp16 = strstr(ext, "cl_khr_fp16") != NULL;
            info->fp64 = strstr(ext, "cl_khr_fp64") != NULL;
        }
        free(ext);
    }
}

/* Enumerates (platform, device) pairs in a stable order. ids may be NULL. */
static gpuseg_status enumerate(gpuseg_device_info **out, size_t *count, cl_platform_id **pids,
                               cl_device_id **dids) {
    *out = NULL;
    *count = 0;
    cl_platform_id plats[MAX_PLATFORMS];
    cl_uint np = 0;
    cl_int err = clGetPlatformIDs(MAX_PLATFORMS, plats, &np);
    if (err == -1001 /* CL_PLATFORM_NOT_FOUND_KHR */ || (err == CL_SUCCESS && np == 0))
        return gpuseg__fail(NULL, GPUSEG_NO_PLATFORM, "%s", NO_PLATFORM_HINT);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(NULL, err, "clGetPlatformIDs");
    if (np > MAX_PLATFORMS)
        np = MAX_PLATFORMS;
    size_t cap = (size_t)np * MAX_DEVICES_PER_PLATFORM;
    gpuseg_device_info *list = calloc(cap, sizeof *list);
    cl_platform_id *pl = calloc(cap, sizeof *pl);
    cl_device_id *dl = calloc(cap, sizeof *dl);
    if (!list || !pl || !dl) {
        free(list);
        free(pl);
        free(dl);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "device list: out of memory");
    }
    size_t n = 0;
    for (cl_uint p = 0; p < np; p++) {
        cl_device_id devs[MAX_DEVICES_PER_PLATFORM];
        cl_uint nd = 0;
        if (clGetDeviceIDs(plats[p], CL_DEVICE_TYPE_ALL, MAX_DEVICES_PER_PLATFORM, devs, &nd) !=
            CL_SUCCESS)
            continue; /* a platform without devices (CL_DEVICE_NOT_FOUND) is not an error */
        if (nd > MAX_DEVICES_PER_PLATFORM)
            nd = MAX_DEVICES_PER_PLATFORM;
        for (cl_uint d = 0; d < nd; d++) {
            query_device(plats[p], devs[d], &list[n]);
            list[n].index = (int)n;
            list[n].platform_index = (int)p;
            list[n].device_index = (int)d;
            pl[n] = plats[p];
            dl[n] = devs[d];
            n++;
        }
    }
    *out = list;
    *count = n;
    if (pids)
        *pids = pl;
    else
        free(pl);
    if (dids)
        *dids = dl;
    else
        free(dl);
    return GPUSEG_OK;
}

gpuseg_status gpuseg_device_list(gpuseg_device_info **out, size_t *count) {
    gpuseg__clear_error(NULL);
    if (!out || !count)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_device_list: NULL argument");
    return enumerate(out, count, NULL, NULL);
}

static int ci_contains(const char *hay, const char *needle) {
    size_t nl = strlen(needle);
    for (const char *h = hay; *h; h++) {
        size_t i = 0;
        while (i < nl && h[i] && tolower((unsigned char)h[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == nl)
            return 1;
    }
    return nl == 0;
}

static int first_of_type(const gpuseg_device_info *list, size_t count, gpuseg_device_type t) {
    for (size_t i = 0; i < count; i++)
        if (list[i].type == t)
            return (int)i;
    return -1;
}

gpuseg_status gpuseg_device_choose(const gpuseg_device_info *list, size_t count, const char *spec,
                                   size_t *index) {
    if (!index)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_device_choose: NULL index");
    if (!spec) {
        spec = getenv("GPUSEG_DEVICE");
    }
    if (!spec || !*spec)
        spec = "auto";
    if (count == 0)
        return gpuseg__fail(NULL, GPUSEG_NO_DEVICE,
                            "no OpenCL device found on any platform (device '%s')", spec);
    int found = -1;
    if (strcmp(spec, "auto") == 0) {
        found = first_of_type(list, count, GPUSEG_DEVICE_GPU);
        if (found < 0)
            found = first_of_type(list, count, GPUSEG_DEVICE_CPU);
        if (found < 0)
            found = 0;
    } else if (strcmp(spec, "gpu") == 0) {
        found = first_of_type(list, count, GPUSEG_DEVICE_GPU);
    } else if (strcmp(spec, "cpu") == 0) {
        found = first_of_type(list, count, GPUSEG_DEVICE_CPU);
    } else {
        char *end = NULL;
        long a = strtol(spec, &end, 10);
        if (end != spec && *end == '\0') {
            if (a >= 0 && (size_t)a < count)
                found = (int)a;
        } else if (end != spec && *end == ':' && end[1]) {
            char *end2 = NULL;
            long b = strtol(end + 1, &end2, 10);
            if (*end2 == '\0')
                for (size_t i = 0; i < count; i++)
                    if (list[i].platform_index == a && list[i].device_index == b)
                        found = (int)i;
        } else {
            for (size_t i = 0; i < count && found < 0; i++) {
                char both[300];
                snprintf(both, sizeof both, "%s / %s", list[i].platform_name, list[i].name);
                if (ci_contains(both, spec))
                    found = (int)i;
            }
        }
    }
    if (found < 0)
        return gpuseg__fail(NULL, GPUSEG_NO_DEVICE,
                            "no OpenCL device matches '%s' (%zu device%s; see `gpuseg devices`)",
                            spec, count, count == 1 ? "" : "s");
    *index = (size_t)found;
    return GPUSEG_OK;
}

void gpuseg_ctx_params_default(gpuseg_ctx_params *p) {
    memset(p, 0, sizeof *p);
    p->program_cache = 1;
    p->log_level = GPUSEG_LOG_WARN;
}

static void copy_str(char *dst, size_t n, const char *src) {
    snprintf(dst, n, "%s", src ? src : "");
}

gpuseg_status gpuseg_ctx_create(const gpuseg_ctx_params *params, gpuseg_ctx **out) {
    gpuseg__clear_error(NULL);
    if (!out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_ctx_create: NULL out");
    *out = NULL;
    gpuseg_ctx_params defaults;
    if (!params) {
        gpuseg_ctx_params_default(&defaults);
        params = &defaults;
    }
    gpuseg_device_info *list = NULL;
    cl_platform_id *pids = NULL;
    cl_device_id *dids = NULL;
    size_t count = 0, idx = 0;
    gpuseg_ctx *ctx = NULL;
    gpuseg_status st = enumerate(&list, &count, &pids, &dids);
    if (st != GPUSEG_OK)
        return st;
    st = gpuseg_device_choose(list, count, params->device, &idx);
    if (st != GPUSEG_OK)
        goto fail;
    ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "context: out of memory");
        goto fail;
    }
    atomic_init(&ctx->cancel, 0);
    ctx->progress_hi = 1.0;
    ctx->dev = list[idx];
    ctx->platform = pids[idx];
    ctx->device = dids[idx];
    ctx->log = params->log;
    ctx->log_user = params->log_user;
    ctx->log_level = params->log_level;
    const char *no_cache = getenv("GPUSEG_NO_PROGRAM_CACHE");
    ctx->use_cache = params->program_cache && !(no_cache && *no_cache && strcmp(no_cache, "0"));
    if (gpuseg_cache_dir(params, ctx->cache_dir, sizeof ctx->cache_dir) != GPUSEG_OK)
        ctx->use_cache = false; /* no folder to cache in: compile every time */
    uint64_t cap = params->max_alloc_bytes;
    const char *cap_env = getenv("GPUSEG_MAX_ALLOC_BYTES");
    if (cap == 0 && cap_env && *cap_env) {
        char *end = NULL;
        unsigned long long v = strtoull(cap_env, &end, 10);
        if (*end || v == 0) {
            st = gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                              "GPUSEG_MAX_ALLOC_BYTES='%s': not a positive number of bytes",
                              cap_env);
            goto fail;
        }
        cap = v;
    }
    if (cap && (ctx->dev.max_alloc_bytes == 0 || cap < ctx->dev.max_alloc_bytes))
        ctx->dev.max_alloc_bytes = cap;
    if ((st = gpuseg_limits_resolve(&params->limits, &ctx->limits)) != GPUSEG_OK)
        goto fail;
    const char *kdir = params->kernel_dir ? params->kernel_dir : getenv("GPUSEG_KERNEL_DIR");
    copy_str(ctx->kernel_dir, sizeof ctx->kernel_dir, kdir);

    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)ctx->platform, 0};
    ctx->cl = clCreateContext(props, 1, &ctx->device, NULL, NULL, &err);
    if (!ctx->cl) {
        st = gpuseg__fail_cl(NULL, err, "clCreateContext on '%s'", ctx->dev.name);
        goto fail;
    }
    /* Profiling is enabled so that bench/ can read per-kernel times from events; its cost on an
     * in-order queue is a timestamp per command. */
    ctx->queue = clCreateCommandQueue(ctx->cl, ctx->device, CL_QUEUE_PROFILING_ENABLE, &err);
    if (!ctx->queue) {
        st = gpuseg__fail_cl(NULL, err, "clCreateCommandQueue on '%s'", ctx->dev.name);
        goto fail;
    }
    ctx->prof = gpuseg__profile_new(); /* GPUSEG_PROFILE: per-kernel event times (bench/) */
    const char *fp64 = getenv("GPUSEG_FP64");
    ctx->fp64 = ctx->dev.fp64 &&
                (fp64 && *fp64 ? strcmp(fp64, "0") != 0 : ctx->dev.type == GPUSEG_DEVICE_CPU);
    gpuseg__log(ctx, GPUSEG_LOG_INFO, "device %d: %s / %s (%s)", ctx->dev.index,
                ctx->dev.platform_name, ctx->dev.name, ctx->dev.driver_version);
    free(list);
    free(pids);
    free(dids);
    *out = ctx;
    return GPUSEG_OK;
fail:
    gpuseg_ctx_free(ctx);
    free(list);
    free(pids);
    free(dids);
    return st;
}

void gpuseg_ctx_free(gpuseg_ctx *ctx) {
    if (!ctx)
        return;
    if (ctx->queue)
        clFinish(ctx->queue);
    gpuseg__profile_free(ctx->prof);
    for (unsigned i = 0; i < ctx->n_kernels; i++)
        clReleaseKernel(ctx->kernels[i].kernel);
    for (unsigned i = 0; i < ctx->n_programs; i++)
        clReleaseProgram(ctx->programs[i].program);
    if (ctx->queue)
        clReleaseCommandQueue(ctx->queue);
    if (ctx->cl)
        clReleaseContext(ctx->cl);
    free(ctx);
}

void gpuseg_ctx_limits(const gpuseg_ctx *ctx, gpuseg_limits *out) {
    if (!out)
        return;
    if (ctx)
        *out = ctx->limits;
    else
        gpuseg_limits_default(out);
}

const gpuseg_device_info *gpuseg_ctx_device(const gpuseg_ctx *ctx) {
    return ctx ? &ctx->dev : NULL;
}

cl_context gpuseg_ctx_cl_context(const gpuseg_ctx *ctx) {
    return ctx ? ctx->cl : NULL;
}

cl_device_id gpuseg_ctx_cl_device(const gpuseg_ctx *ctx) {
    return ctx ? ctx->device : NULL;
}

cl_command_queue gpuseg_ctx_cl_queue(const gpuseg_ctx *ctx) {
    return ctx ? ctx->queue : NULL;
}

void gpuseg_ctx_program_stats(const gpuseg_ctx *ctx, gpuseg_program_stats *out) {
    if (ctx && out)
        *out = ctx->stats;
}

/* ---- checked kernel helpers ---- */

static const char *kernel_name(cl_kernel k, char *buf, size_t len) {
    buf[0] = '\0';
    if (clGetKernelInfo(k, CL_KERNEL_FUNCTION_NAME, len, buf, NULL) != CL_SUCCESS)
        snprintf(buf, len, "?");
    buf[len - 1] = '\0';
    return buf;
}

gpuseg_status gpuseg__set_args(gpuseg_ctx *ctx, cl_kernel k, unsigned n, ...) {
    va_list ap;
    va_start(ap, n);
    for (unsigned i = 0; i < n; i++) {
        size_t size = va_arg(ap, size_t);
        const void *ptr = va_arg(ap, const void *);
        cl_int err = clSetKernelArg(k, i, size, ptr);
        if (err != CL_SUCCESS) {
            va_end(ap);
            char name[64];
            return gpuseg__fail_cl(ctx, err, "clSetKernelArg(%s, %u)",
                                   kernel_name(k, name, sizeof name), i);
        }
    }
    va_end(ap);
    return GPUSEG_OK;
}

gpuseg_status gpuseg__run(gpuseg_ctx *ctx, cl_kernel k, unsigned dims, const size_t *global,
                          const size_t *local) {
    size_t g[3];
    for (unsigned i = 0; i < dims && i < 3; i++) {
        g[i] = global[i];
        if (local && local[i])
            g[i] = (g[i] + local[i] - 1) / local[i] * local[i];
        if (g[i] == 0)
            return GPUSEG_OK; /* nothing to do: an empty launch is not an error */
    }
    cl_event ev = NULL;
    cl_int err = clEnqueueNDRangeKernel(ctx->queue, k, dims, NULL, g, local, 0, NULL,
                                        ctx->prof ? &ev : NULL);
    if (err != CL_SUCCESS) {
        char name[64];
        return gpuseg__fail_cl(ctx, err, "clEnqueueNDRangeKernel(%s)",
                               kernel_name(k, name, sizeof name));
    }
    if (ev) {
        char name[64];
        gpuseg__profile_event(ctx, kernel_name(k, name, sizeof name), ev);
    }
    return GPUSEG_OK;
}

gpuseg_status gpuseg__buffer(gpuseg_ctx *ctx, cl_mem_flags flags, size_t bytes, const char *what,
                             cl_mem *out) {
    *out = NULL;
    if (bytes == 0)
        bytes = 4; /* OpenCL refuses zero-size buffers; a tiny one keeps callers simple */
    if (ctx->dev.max_alloc_bytes && bytes > ctx->dev.max_alloc_bytes)
        return gpuseg__fail(ctx, GPUSEG_DEVICE_MEMORY,
                            "%s: %zu bytes exceed the device's largest allocation (%llu bytes on "
                            "'%s')",
                            what, bytes, (unsigned long long)ctx->dev.max_alloc_bytes,
                            ctx->dev.name);
    cl_int err;
    *out = clCreateBuffer(ctx->cl, flags, bytes, NULL, &err);
    if (!*out)
        return gpuseg__fail_cl(ctx, err, "%s: clCreateBuffer(%zu bytes)", what, bytes);
    if (bytes > ctx->largest_buffer)
        ctx->largest_buffer = bytes;
    return GPUSEG_OK;
}

size_t gpuseg__largest_buffer(gpuseg_ctx *ctx, int reset) {
    size_t b = ctx->largest_buffer;
    if (reset)
        ctx->largest_buffer = 0;
    return b;
}

gpuseg_status gpuseg__upload(gpuseg_ctx *ctx, const void *data, size_t bytes, const char *what,
                             cl_mem *out) {
    gpuseg_status st = gpuseg__buffer(ctx, CL_MEM_READ_ONLY, bytes, what, out);
    if (st != GPUSEG_OK)
        return st;
    if ((st = gpuseg__write_buf(ctx, *out, bytes, data, what)) != GPUSEG_OK)
        gpuseg__release(out);
    return st;
}

gpuseg_status gpuseg__write_buf(gpuseg_ctx *ctx, cl_mem buf, size_t bytes, const void *src,
                                const char *what) {
    if (bytes == 0)
        return GPUSEG_OK;
    cl_int err = clEnqueueWriteBuffer(ctx->queue, buf, CL_TRUE, 0, bytes, src, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "%s: upload of %zu bytes", what, bytes);
    return GPUSEG_OK;
}

gpuseg_status gpuseg__read_buf(gpuseg_ctx *ctx, cl_mem buf, size_t bytes, void *dst,
                               const char *what) {
    if (bytes == 0)
        return GPUSEG_OK;
    cl_int err = clEnqueueReadBuffer(ctx->queue, buf, CL_TRUE, 0, bytes, dst, 0, NULL, NULL);
    if (err != CL_SUCCESS)
        return gpuseg__fail_cl(ctx, err, "%s: reading back %zu bytes", what, bytes);
    return GPUSEG_OK;
}

void gpuseg__release(cl_mem *m) {
    if (m && *m) {
        clReleaseMemObject(*m);
        *m = NULL;
    }
}

void gpuseg_ctx_set_progress(gpuseg_ctx *ctx, gpuseg_progress_fn fn, void *user) {
    if (!ctx)
        return;
    ctx->progress = fn;
    ctx->progress_user = user;
}

void gpuseg_ctx_cancel(gpuseg_ctx *ctx, int on) {
    if (ctx)
        atomic_store(&ctx->cancel, on ? 1 : 0);
}

int gpuseg_ctx_cancelled(const gpuseg_ctx *ctx) {
    return ctx && atomic_load(&((gpuseg_ctx *)ctx)->cancel) ? 1 : 0;
}

gpuseg_status gpuseg__check_cancel(gpuseg_ctx *ctx, const char *what) {
    if (!gpuseg_ctx_cancelled(ctx))
        return GPUSEG_OK;
    return gpuseg__fail(ctx, GPUSEG_CANCELLED, "%s: cancelled", what);
}

void gpuseg__progress(gpuseg_ctx *ctx, const char *stage, uint64_t done, uint64_t total,
                      double fraction) {
    if (!ctx || !ctx->progress)
        return;
    double f = !(fraction >= 0) ? 0 : fraction > 1 ? 1 : fraction; /* NaN: 0 */
    gpuseg_progress p = {stage, done, total,
                         ctx->progress_lo + f * (ctx->progress_hi - ctx->progress_lo)};
    ctx->progress(ctx->progress_user, &p);
}

gpuseg__progress_span gpuseg__progress_push(gpuseg_ctx *ctx, double lo, double hi) {
    gpuseg__progress_span saved = {ctx->progress_lo, ctx->progress_hi};
    double w = saved.hi - saved.lo;
    ctx->progress_lo = saved.lo + lo * w;
    ctx->progress_hi = saved.lo + hi * w;
    return saved;
}

void gpuseg__progress_pop(gpuseg_ctx *ctx, gpuseg__progress_span saved) {
    ctx->progress_lo = saved.lo;
    ctx->progress_hi = saved.hi;
}
