/* bench/bench_masks.c: times flows -> masks (QC on, Cellpose defaults) on 512^2, 1024^2 and 2048^2
 * inputs made by tiling a fixture's flows, through the host API (upload + download included) and
 * the cl_mem API (flows already on the device, labels left there). Checks the result on the fixture
 * itself against Cellpose's masks before timing; first (cold) run reported apart; warm-up, then
 * the median/min/max of REPEATS runs; one JSON object on stdout.
 *   bench_masks [FIXTURE_DIR (default tests/fixtures/masks)] [REPEATS (default 5)]
 *               [--save DIR: write the tiled inputs' labels as DIR/gpuseg_<side>.npy]
 *               [--side N: only the N x N input (512, 1024 or 2048)]
 * With GPUSEG_PROFILE=1 in the environment, each size also gets the per-kernel device times of
 * its timed host-API runs (OpenCL profiling events, core/profile.c), per run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_profile.h"
#include "gpuseg/flows_cl.h"
#include "gpuseg/gpuseg.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int die(const char *what) {
    fprintf(stderr, "bench_masks: %s: %s\n", what, gpuseg_last_error());
    return 1;
}

/* [3, side, side] flows: the fixture repeated (no flipping, so the flows stay consistent). */
static float *tile(const float *src, uint32_t H, uint32_t W, uint32_t side) {
    const size_t n = (size_t)side * side, m = (size_t)H * W;
    float *dst = malloc(3 * n * sizeof *dst);
    if (!dst)
        return NULL;
    for (uint32_t c = 0; c < 3; c++)
        for (uint32_t y = 0; y < side; y++)
            for (uint32_t x = 0; x < side; x++)
                dst[c * n + (size_t)y * side + x] = src[c * m + (size_t)(y % H) * W + x % W];
    return dst;
}

int main(int argc, char **argv) {
    const char *dir = "tests/fixtures/masks", *save = NULL;
    int repeats = 5, pos = 0;
    uint32_t only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--save") && i + 1 < argc)
            save = argv[++i];
        else if (!strcmp(argv[i], "--side") && i + 1 < argc)
            only = (uint32_t)atoi(argv[++i]);
        else if (pos++ == 0)
            dir = argv[i];
        else
            repeats = atoi(argv[i]) > 0 ? atoi(argv[i]) : 5;
    }
    char path[1024];
    gpuseg_npy *fl = NULL, *ref = NULL;
    snprintf(path, sizeof path, "%s/dsb313_flows.npy", dir);
    if (gpuseg_npy_read(path, &fl) != GPUSEG_OK)
        return die("reading the fixture");
    snprintf(path, sizeof path, "%s/dsb313_masks_qc.npy", dir);
    if (gpuseg_npy_read(path, &ref) != GPUSEG_OK)
        return die("reading the fixture");
    const uint32_t H = (uint32_t)fl->shape[1], W = (uint32_t)fl->shape[2];
    gpuseg_ctx *ctx = NULL;
    if (gpuseg_ctx_create(NULL, &ctx) != GPUSEG_OK)
        return die("context");
    const gpuseg_device_info *dev = gpuseg_ctx_device(ctx);

    /* cold run (program build or cache load) + correctness on the fixture itself */
    gpuseg_image *lab = NULL;
    uint32_t nm = 0;
    double t0 = now();
    if (gpuseg_flows_to_masks(ctx, fl->data, H, W, NULL, &lab, &nm) != GPUSEG_OK)
        return die("fixture");
    double cold = now() - t0;
    size_t diff = 0;
    for (size_t i = 0; i < (size_t)H * W; i++)
        diff += ((uint16_t *)lab->data)[i] != ((uint16_t *)ref->data)[i];
    gpuseg_image_free(lab);
    if (diff > (size_t)H * W / 1000) {
        fprintf(stderr, "bench_masks: %zu pixels differ from Cellpose on the fixture\n", diff);
        return 1;
    }
    printf("{\"bench\":\"masks\",\"device\":\"%s\",\"driver\":\"%s\",\"cold_fixture_s\":%.4f,"
           "\"fixture_pixels_differing\":%zu,\"repeats\":%d,\"sizes\":[",
           dev->name, dev->driver_version, cold, diff, repeats);
    const uint32_t sides[3] = {512, 1024, 2048};
    int printed = 0;
    double *t = malloc((size_t)repeats * sizeof *t);
    for (int s = 0; s < 3; s++) {
        const uint32_t side = sides[s];
        if (only && side != only)
            continue;
        const size_t n = (size_t)side * side;
        float *big = tile(fl->data, H, W, side);
        if (!big || !t)
            return die("out of memory");
        double med[2], lo[2], hi[2];
        uint32_t masks = 0;
        /* mode 0: host API; mode 1: device buffers, run first so that the profile printed below
         * is the host-API runs' */
        cl_int err;
        cl_mem dflows =
            clCreateBuffer(gpuseg_ctx_cl_context(ctx), CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR,
                           3 * n * sizeof(float), big, &err);
        if (err != CL_SUCCESS)
            return die("flows buffer");
        for (int mode = 1; mode >= 0; mode--) {
            for (int r = -1; r < repeats; r++) { /* r = -1: warm-up */
                if (r == 0 && mode == 0)
                    gpuseg__profile_reset(ctx);
                double a = now();
                if (mode == 0) {
                    if (gpuseg_flows_to_masks(ctx, big, side, side, NULL, &lab, &masks) !=
                        GPUSEG_OK)
                        return die("masks");
                    if (r == -1 && save) {
                        char out[1024];
                        snprintf(out, sizeof out, "%s/gpuseg_%u.npy", save, side);
                        uint64_t shape[2] = {side, side};
                        if (gpuseg_npy_write(out, lab->dtype, 2, shape, lab->data) != GPUSEG_OK)
                            return die("saving labels");
                    }
                    gpuseg_image_free(lab);
                } else {
                    cl_mem out = NULL;
                    gpuseg_dtype dt;
                    if (gpuseg_flows_to_masks_cl(ctx, dflows, side, side, NULL, &out, &dt,
                                                 &masks) != GPUSEG_OK)
                        return die("masks (cl)");
                    clReleaseMemObject(out);
                }
                if (r >= 0)
                    t[r] = now() - a;
            }
            qsort(t, (size_t)repeats, sizeof *t, cmp_d);
            med[mode] = t[repeats / 2];
            lo[mode] = t[0];
            hi[mode] = t[repeats - 1];
        }
        clReleaseMemObject(dflows);
        printf("%s{\"side\":%u,\"n_masks\":%u,\"host_api_s\":{\"median\":%.4f,\"min\":%.4f,"
               "\"max\":%.4f},\"device_api_s\":{\"median\":%.4f,\"min\":%.4f,\"max\":%.4f}",
               printed++ ? "," : "", side, masks, med[0], lo[0], hi[0], med[1], lo[1], hi[1]);
        if (bench_print_profile(ctx, repeats))
            return die("profile");
        printf("}");
        fflush(stdout);
        free(big);
    }
    printf("]}\n");
    free(t);
    gpuseg_ctx_free(ctx);
    gpuseg_npy_free(fl);
    gpuseg_npy_free(ref);
    return 0;
}
