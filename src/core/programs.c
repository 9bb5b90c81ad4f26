/* core/programs.c: OpenCL programs from the sources embedded at build time (or from an explicit
 * development folder), kept per context in memory and on disk in the program cache.
 *
 * A program's source text is kernels/common.h, a "#line 1" directive and kernels/NAME.cl; its build
 * options are BASE_BUILD_OPTIONS, the host constants of core/kernel_defs.h as -D options,
 * -DGPUSEG_FP64=1 when the context uses doubles, and the caller's options.
 *
 * Cache file: <cache_dir>/<key>.clbin, where key = SHA-256 over the cache format version, the
 * program name, the exact source text (header included), the build options, and the
 * platform/device/driver identity. Layout (little-endian): "GPUSEGPC", u32 format version, u32
 * header size, u8[32] key, u64 binary size, u8[32] SHA-256 of the binary, then the binary. Every
 * field is checked before use; any problem (missing, short, corrupt, rejected by the driver) falls
 * back to compiling. Files are written to a temporary name in the same folder and renamed, so
 * concurrent processes never see a torn file. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/internal.h"
#include "core/kernel_defs.h"
#include "core/kernels_embedded.h"

#define CACHE_MAGIC          "GPUSEGPC"
#define CACHE_FORMAT_VERSION 1u
#define CACHE_HEADER_SIZE    (8 + 4 + 4 + 32 + 8 + 32)
#define CACHE_MAX_BINARY     (256u << 20)
#define BASE_BUILD_OPTIONS   "-cl-std=CL1.2"

gpuseg_status gpuseg_cache_dir(const gpuseg_ctx_params *params, char *buf, size_t len) {
    const char *dir = params ? params->cache_dir : NULL;
    int n;
    const char *env;
    if (dir && *dir)
        n = snprintf(buf, len, "%s", dir);
    else if ((env = getenv("GPUSEG_CACHE_DIR")) && *env)
        n = snprintf(buf, len, "%s", env);
    else if ((env = getenv("XDG_CACHE_HOME")) && *env)
        n = snprintf(buf, len, "%s/gpuseg", env);
    else if ((env = getenv("HOME")) && *env)
        n = snprintf(buf, len, "%s/.cache/gpuseg", env);
    else
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "program cache: no folder (set GPUSEG_CACHE_DIR or HOME)");
    if (n < 0 || (size_t)n >= len)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "program cache: folder name too long");
    return GPUSEG_OK;
}

/* mkdir -p with mode 0700 for the folders we create. */
static int make_dirs(const char *path) {
    char tmp[1024];
    if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
        return -1;
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
        return -1;
    return 0;
}

/* The text of kernels/FILE: from the override folder when one is set (for the header
 * common.h, `header`, only when the folder holds it), else embedded (NULL: there is none).
 * *owned is set when the caller must free the returned text. */
static gpuseg_status kernel_file(gpuseg_ctx *ctx, const char *file, int header,
                                 const gpuseg__kernel_source *embedded, const char **src,
                                 size_t *len, char **owned) {
    *owned = NULL;
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", ctx->kernel_dir, file);
    if (ctx->kernel_dir[0] && (!header || access(path, F_OK) == 0)) {
        void *data = NULL;
        size_t n = 0;
        gpuseg_status st = gpuseg__read_file(ctx, path, 16u << 20, &data, &n);
        if (st != GPUSEG_OK)
            return gpuseg__wrap(ctx, st, "kernel override folder (GPUSEG_KERNEL_DIR)");
        *owned = data;
        *src = data;
        *len = n;
        return GPUSEG_OK;
    }
    if (!embedded)
        return gpuseg__fail(ctx, GPUSEG_NOT_FOUND, "no embedded OpenCL source kernels/%s", file);
    *src = embedded->source;
    *len = embedded->length;
    return GPUSEG_OK;
}

/* The source text of program `name` as it is compiled and hashed: the shared header, a #line
 * directive (so that the build log's line numbers are the program file's) and the program. The
 * returned text is the caller's to free. */
static gpuseg_status program_source(gpuseg_ctx *ctx, const char *name, char **text, size_t *len) {
    *text = NULL;
    const gpuseg__kernel_source *embedded = NULL;
    for (const gpuseg__kernel_source *k = gpuseg__kernel_sources; k->name; k++)
        if (strcmp(k->name, name) == 0)
            embedded = k;
    char file[256];
    if (snprintf(file, sizeof file, "%s.cl", name) >= (int)sizeof file)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "program name too long: %s", name);
    const char *hdr = NULL, *prog = NULL;
    size_t hlen = 0, plen = 0;
    char *hown = NULL, *pown = NULL;
    gpuseg_status st = kernel_file(ctx, "common.h", 1, &gpuseg__kernel_header, &hdr, &hlen, &hown);
    if (st == GPUSEG_OK)
        st = kernel_file(ctx, file, 0, embedded, &prog, &plen, &pown);
    static const char line[] = "\n#line 1\n";
    const size_t n = hlen + (sizeof line - 1) + plen;
    char *out = st == GPUSEG_OK ? malloc(n + 1) : NULL;
    if (st == GPUSEG_OK && !out)
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "program '%s': out of memory", name);
    if (out) {
        memcpy(out, hdr, hlen);
        memcpy(out + hlen, line, sizeof line - 1);
        memcpy(out + hlen + sizeof line - 1, prog, plen);
        out[n] = '\0';
        *text = out;
        *len = n;
    }
    free(hown);
    free(pown);
    return st;
}

/* " -DNAME=value" for every host constant of core/kernel_defs.h. */
static void host_defines(char *buf, size_t cap) {
    size_t used = 0;
    buf[0] = '\0';
#define GPUSEG__DEFINE(name, value)                                                                \
    if (used < cap)                                                                                \
        used += (size_t)snprintf(buf + used, cap - used, " -D%s=%d", name, (int)(value));
    GPUSEG__KERNEL_DEFS(GPUSEG__DEFINE)
#undef GPUSEG__DEFINE
}

static void cache_key(const gpuseg_ctx *ctx, const char *name, const char *src, size_t len,
                      const char *options, unsigned char key[32]) {
    gpuseg__sha256 s;
    gpuseg__sha256_init(&s);
    char ver[32];
    snprintf(ver, sizeof ver, "gpuseg-program-cache-%u", CACHE_FORMAT_VERSION);
    gpuseg__sha256_str(&s, ver);
    gpuseg__sha256_str(&s, name);
    gpuseg__sha256_update(&s, src, len);
    gpuseg__sha256_str(&s, "");
    gpuseg__sha256_str(&s, options);
    gpuseg__sha256_device(&s, ctx);
    gpuseg__sha256_final(&s, key);
}

static void cache_path(const gpuseg_ctx *ctx, const unsigned char key[32], char *path, size_t len) {
    char hex[65];
    gpuseg__sha256_hex(key, hex);
    snprintf(path, len, "%s/%s.clbin", ctx->cache_dir, hex);
}

static uint32_t rd32(const unsigned char *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) {
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}
static void wr32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}
static void wr64(unsigned char *p, uint64_t v) {
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

static cl_int build(gpuseg_ctx *ctx, cl_program prog, const char *options) {
    return clBuildProgram(prog, 1, &ctx->device, options, NULL, NULL);
}

/* Tries the on-disk cache; returns NULL (and logs why at debug level) on any problem. */
static cl_program cache_load(gpuseg_ctx *ctx, const unsigned char key[32], const char *options) {
    char path[1200];
    cache_path(ctx, key, path, sizeof path);
    void *data = NULL;
    size_t n = 0;
    if (access(path, R_OK) != 0)
        return NULL;
    if (gpuseg__read_file(NULL, path, CACHE_MAX_BINARY + CACHE_HEADER_SIZE, &data, &n) !=
        GPUSEG_OK) {
        gpuseg__log(ctx, GPUSEG_LOG_DEBUG, "program cache: %s", gpuseg_last_error());
        gpuseg__clear_error(NULL);
        return NULL;
    }
    const unsigned char *p = data;
    const char *why = NULL;
    cl_program prog = NULL;
    if (n < CACHE_HEADER_SIZE || memcmp(p, CACHE_MAGIC, 8) != 0)
        why = "not a gpuseg program-cache file";
    else if (rd32(p + 8) != CACHE_FORMAT_VERSION || rd32(p + 12) != CACHE_HEADER_SIZE)
        why = "other cache format version";
    else if (memcmp(p + 16, key, 32) != 0)
        why = "key mismatch";
    else if (rd64(p + 48) != n - CACHE_HEADER_SIZE)
        why = "truncated";
    else {
        unsigned char digest[32];
        gpuseg__sha256 s;
        gpuseg__sha256_init(&s);
        gpuseg__sha256_update(&s, p + CACHE_HEADER_SIZE, n - CACHE_HEADER_SIZE);
        gpuseg__sha256_final(&s, digest);
        if (memcmp(digest, p + 56, 32) != 0)
            why = "checksum mismatch";
    }
    if (!why) {
        size_t blen = n - CACHE_HEADER_SIZE;
        const unsigned char *bin = p + CACHE_HEADER_SIZE;
        cl_int status = CL_SUCCESS, err = CL_SUCCESS;
        prog = clCreateProgramWithBinary(ctx->cl, 1, &ctx->device, &blen, &bin, &status, &err);
        if (!prog || err != CL_SUCCESS || status != CL_SUCCESS) {
            why = "driver rejected the binary";
        } else if (build(ctx, prog, options) != CL_SUCCESS) {
            why = "driver could not build the binary";
        }
        if (why && prog) {
            clReleaseProgram(prog);
            prog = NULL;
        }
    }
    if (why)
        gpuseg__log(ctx, GPUSEG_LOG_DEBUG, "program cache: %s: %s; compiling instead", path, why);
    free(data);
    return prog;
}

static void cache_store(gpuseg_ctx *ctx, const unsigned char key[32], cl_program prog) {
    size_t blen = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof blen, &blen, NULL) != CL_SUCCESS ||
        blen == 0 || blen > CACHE_MAX_BINARY)
        return;
    unsigned char *file = malloc(CACHE_HEADER_SIZE + blen);
    if (!file)
        return;
    unsigned char *bin = file + CACHE_HEADER_SIZE;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bin, &bin, NULL) != CL_SUCCESS) {
        free(file);
        return;
    }
    memcpy(file, CACHE_MAGIC, 8);
    wr32(file + 8, CACHE_FORMAT_VERSION);
    wr32(file + 12, CACHE_HEADER_SIZE);
    memcpy(file + 16, key, 32);
    wr64(file + 48, blen);
    gpuseg__sha256 s;
    gpuseg__sha256_init(&s);
    gpuseg__sha256_update(&s, bin, blen);
    gpuseg__sha256_final(&s, file + 56);
    char path[1200];
    cache_path(ctx, key, path, sizeof path);
    if (make_dirs(ctx->cache_dir) == 0 &&
        gpuseg__write_file_atomic(NULL, path, file, CACHE_HEADER_SIZE + blen) == GPUSEG_OK) {
        ctx->stats.cache_stores++;
    } else {
        /* A cache that cannot be written (read-only home, full disk) only costs time. */
        gpuseg__log(ctx, GPUSEG_LOG_DEBUG, "program cache: cannot write %s: %s", path,
                    gpuseg_last_error());
        gpuseg__clear_error(NULL);
    }
    free(file);
}

static gpuseg_status build_log_error(gpuseg_ctx *ctx, cl_program prog, cl_int err,
                                     const char *name) {
    size_t n = 0;
    char *log = NULL;
    if (clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, 0, NULL, &n) == CL_SUCCESS &&
        n > 0 && (log = malloc(n + 1)) != NULL &&
        clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, n, log, NULL) ==
            CL_SUCCESS) {
        log[n] = '\0';
    } else {
        free(log);
        log = NULL;
    }
    gpuseg_status st =
        gpuseg__fail(ctx, GPUSEG_BUILD, "building OpenCL program '%s' for '%s': %s (%d)%s%s", name,
                     ctx->dev.name, gpuseg_cl_error_name(err), (int)err,
                     log ? "; build log:\n" : "", log ? log : "");
    free(log);
    return st;
}

gpuseg_status gpuseg__program(gpuseg_ctx *ctx, const char *name, const char *options,
                              cl_program *out) {
    *out = NULL;
    if (!options)
        options = "";
    for (unsigned i = 0; i < ctx->n_programs; i++) {
        if (strcmp(ctx->programs[i].name, name) == 0 &&
            strcmp(ctx->programs[i].options, options) == 0) {
            *out = ctx->programs[i].program;
            return GPUSEG_OK;
        }
    }
    if (ctx->n_programs >= GPUSEG__MAX_PROGRAMS)
        return gpuseg__fail(ctx, GPUSEG_INTERNAL, "program table full (%d)", GPUSEG__MAX_PROGRAMS);
    if (strlen(name) >= sizeof ctx->programs[0].name ||
        strlen(options) >= sizeof ctx->programs[0].options)
        return gpuseg__fail(ctx, GPUSEG_INTERNAL, "program '%s': name or options too long", name);

    double t0 = gpuseg__now_s();
    char *owned = NULL;
    size_t len = 0;
    gpuseg_status st = program_source(ctx, name, &owned, &len);
    if (st != GPUSEG_OK)
        return st;
    const char *src = owned;
    char defines[512], full_options[1024];
    host_defines(defines, sizeof defines);
    if (snprintf(full_options, sizeof full_options, "%s%s%s %s", BASE_BUILD_OPTIONS, defines,
                 ctx->fp64 ? " -DGPUSEG_FP64=1" : "", options) >= (int)sizeof full_options) {
        free(owned);
        return gpuseg__fail(ctx, GPUSEG_INTERNAL, "program '%s': build options too long", name);
    }

    unsigned char key[32];
    cl_program prog = NULL;
    if (ctx->use_cache) {
        cache_key(ctx, name, src, len, full_options, key);
        prog = cache_load(ctx, key, full_options);
        if (prog)
            ctx->stats.cache_hits++;
    }
    if (!prog) {
        if (ctx->stats.compiled == 0) /* the first compile of this context: say why it is slow */
            gpuseg__log(ctx, GPUSEG_LOG_INFO,
                        "compiling the OpenCL programs for %s (the first run on a device takes "
                        "longer; %s)",
                        ctx->dev.name,
                        ctx->use_cache ? "later runs reuse them from the program cache"
                                       : "the program cache is off");
        cl_int err;
        prog = clCreateProgramWithSource(ctx->cl, 1, &src, &len, &err);
        if (!prog) {
            free(owned);
            return gpuseg__fail_cl(ctx, err, "clCreateProgramWithSource(%s)", name);
        }
        err = build(ctx, prog, full_options);
        if (err != CL_SUCCESS) {
            st = build_log_error(ctx, prog, err, name);
            clReleaseProgram(prog);
            free(owned);
            return st;
        }
        ctx->stats.compiled++;
        if (ctx->use_cache)
            cache_store(ctx, key, prog);
    }
    free(owned);
    gpuseg__program_entry *e = &ctx->programs[ctx->n_programs++];
    snprintf(e->name, sizeof e->name, "%s", name);
    snprintf(e->options, sizeof e->options, "%s", options);
    e->program = prog;
    double dt = gpuseg__now_s() - t0;
    ctx->stats.build_seconds += dt;
    gpuseg__log(ctx, GPUSEG_LOG_DEBUG, "program %s [%s]: %.3f s", name, options, dt);
    *out = prog;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__kernel(gpuseg_ctx *ctx, const char *program, const char *kernel,
                             cl_kernel *out) {
    *out = NULL;
    for (unsigned i = 0; i < ctx->n_kernels; i++) {
        if (strcmp(ctx->kernels[i].name, kernel) == 0 &&
            strcmp(ctx->kernels[i].program, program) == 0) {
            *out = ctx->kernels[i].kernel;
            return GPUSEG_OK;
        }
    }
    if (ctx->n_kernels >= GPUSEG__MAX_KERNELS)
        return gpuseg__fail(ctx, GPUSEG_INTERNAL, "kernel table full (%d)", GPUSEG__MAX_KERNELS);
    if (strlen(kernel) >= sizeof ctx->kernels[0].name)
        return gpuseg__fail(ctx, GPUSEG_INTERNAL, "kernel name too long: %s", kernel);
    cl_program prog;
    gpuseg_status st = gpuseg__program(ctx, program, NULL, &prog);
    if (st != GPUSEG_OK)
        return st;
    cl_int err;
    cl_kernel k = clCreateKernel(prog, kernel, &err);
    if (!k)
        return gpuseg__fail_cl(ctx, err, "clCreateKernel(%s.cl: %s)", program, kernel);
    gpuseg__kernel_entry *e = &ctx->kernels[ctx->n_kernels++];
    /* Point at the program table's copy of the name, which lives as long as the context. */
    e->program = NULL;
    for (unsigned i = 0; i < ctx->n_programs; i++)
        if (ctx->programs[i].program == prog)
            e->program = ctx->programs[i].name;
    snprintf(e->name, sizeof e->name, "%s", kernel);
    e->kernel = k;
    *out = k;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_ctx_build_all(gpuseg_ctx *ctx, unsigned *n_built) {
    if (!ctx)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_ctx_build_all: NULL context");
    gpuseg__clear_error(ctx);
    unsigned n = 0;
    for (const gpuseg__kernel_source *k = gpuseg__kernel_sources; k->name; k++) {
        cl_program prog;
        gpuseg_status st = gpuseg__program(ctx, k->name, NULL, &prog);
        if (st != GPUSEG_OK)
            return st;
        n++;
    }
    if (n_built)
        *n_built = n;
    return GPUSEG_OK;
}

static int is_cache_file(const char *name) {
    size_t n = strlen(name);
    /* <64 hex>.clbin or <64 hex>.clbin.tmp-XXXXXX (a temporary left by a killed process) */
    if (n < 64 + 6)
        return 0;
    for (int i = 0; i < 64; i++)
        if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f')))
            return 0;
    return strcmp(name + 64, ".clbin") == 0 || strncmp(name + 64, ".clbin.tmp-", 11) == 0 ||
           /* ops/conv_choice.c: measured convolution choices, keyed like the programs */
           strcmp(name + 64, ".convchoice") == 0 ||
           strncmp(name + 64, ".convchoice.tmp-", 16) == 0 ||
           /* ops/conv_gemm.c: the GEMM tuner's parameter sets */
           strcmp(name + 64, ".convtune") == 0 || strncmp(name + 64, ".convtune.tmp-", 14) == 0;
}

gpuseg_status gpuseg_cache_clear(const gpuseg_ctx_params *params, size_t *removed) {
    gpuseg__clear_error(NULL);
    char dir[1024];
    gpuseg_status st = gpuseg_cache_dir(params, dir, sizeof dir);
    if (st != GPUSEG_OK)
        return st;
    size_t count = 0;
    if (removed)
        *removed = 0;
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT)
            return GPUSEG_OK;
        return gpuseg__fail(NULL, GPUSEG_IO, "%s: %s", dir, strerror(errno));
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!is_cache_file(e->d_name))
            continue;
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (unlink(path) == 0)
            count++;
        else if (errno != ENOENT) {
            int err = errno;
            closedir(d);
            return gpuseg__fail(NULL, GPUSEG_IO, "%s: cannot remove: %s", path, strerror(err));
        }
    }
    closedir(d);
    if (removed)
        *removed = count;
    return GPUSEG_OK;
}
