/* bench/bench_segment.c: times gpuseg_segment (the library's whole CellposeModel.eval pipeline:
 * upload, normalise, resize, tiles, network, blend, flows -> masks, download) on images of
 * several sizes in one process, so that start-up is excluded and time per megapixel can be
 * compared across sizes. Per image: one warm-up run (the first image's is reported as cold:
 * program loads, convolution choices), then REPEATS runs: min/median/max wall time and the
 * network / masks split. With GPUSEG_PROFILE=1 in the environment, the per-kernel device times
 * of the timed runs (OpenCL profiling events, core/profile.c) are added, per run.
 *   bench_segment MODEL IMAGE... [--repeats R (3)] [--diameter D (0)] [--save DIR]
 * --save writes each image's labels (from the warm-up run) to DIR/<index>.npy so that a script
 * can check them against Cellpose. One JSON object on stdout. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_profile.h"
#include "core/internal.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int die(const char *what, const char *path) {
    fprintf(stderr, "bench_segment: %s: %s: %s\n", path, what, gpuseg_last_error());
    return 1;
}

int main(int argc, char **argv) {
    int repeats = 3;
    double diameter = 0;
    const char *save = NULL, *model = NULL;
    const char *images[64];
    int n_images = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--repeats") && i + 1 < argc)
            repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--diameter") && i + 1 < argc)
            diameter = atof(argv[++i]);
        else if (!strcmp(argv[i], "--save") && i + 1 < argc)
            save = argv[++i];
        else if (!model)
            model = argv[i];
        else if (n_images < 64)
            images[n_images++] = argv[i];
    }
    if (!model || n_images == 0 || repeats < 1 || repeats > 100) {
        fprintf(stderr, "usage: bench_segment MODEL IMAGE... [--repeats R] [--diameter D] "
                        "[--save DIR]\n");
        return 2;
    }
    double t0 = now();
    gpuseg_ctx *ctx = NULL;
    gpuseg_net *net = NULL;
    if (gpuseg_ctx_create(NULL, &ctx) != GPUSEG_OK)
        return die("context", "-");
    if (gpuseg_net_load(ctx, model, &net) != GPUSEG_OK)
        return die("model", model);
    const double startup = now() - t0;
    const gpuseg_device_info *dev = gpuseg_ctx_device(ctx);
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    p.diameter = diameter;
    p.want_flows = 0;
    p.want_style = 0;
    printf("{\"bench\":\"segment\",\"device\":\"%s\",\"driver\":\"%s\",\"model\":\"%s\","
           "\"repeats\":%d,\"profile\":%s,\"startup_s\":%.4f,\"images\":[",
           dev->name, dev->driver_version, model, repeats, ctx->prof ? "true" : "false", startup);
    double *t = malloc(3 * (size_t)repeats * sizeof *t);
    if (!t)
        return 1;
    for (int i = 0; i < n_images; i++) {
        gpuseg_image *img = NULL;
        if (gpuseg_image_read(images[i], &img) != GPUSEG_OK)
            return die("reading", images[i]);
        gpuseg_segment_result res = {0};
        t0 = now();
        if (gpuseg_segment(ctx, net, img, &p, &res) != GPUSEG_OK)
            return die("segment", images[i]);
        const double first = now() - t0;
        const uint32_t n_masks = res.n_masks, n_tiles = res.n_tiles;
        if (save) {
            char out[1024];
            snprintf(out, sizeof out, "%s/%d.npy", save, i);
            uint64_t shape[2] = {res.labels->height, res.labels->width};
            if (gpuseg_npy_write(out, res.labels->dtype, 2, shape, res.labels->data) != GPUSEG_OK)
                return die("saving labels", out);
        }
        gpuseg_segment_result_free(&res);
        gpuseg__profile_reset(ctx);
        double *tn = t + repeats, *tm = t + 2 * repeats;
        for (int r = 0; r < repeats; r++) {
            t0 = now();
            if (gpuseg_segment(ctx, net, img, &p, &res) != GPUSEG_OK)
                return die("segment", images[i]);
            t[r] = now() - t0;
            tn[r] = res.seconds_net;
            tm[r] = res.seconds_masks;
            if (res.n_masks != n_masks) { /* the pipeline is deterministic: a change is a bug */
                fprintf(stderr, "bench_segment: %s: %u masks, then %u\n", images[i], n_masks,
                        res.n_masks);
                return 1;
            }
            gpuseg_segment_result_free(&res);
        }
        qsort(t, (size_t)repeats, sizeof *t, cmp_d);
        qsort(tn, (size_t)repeats, sizeof *tn, cmp_d);
        qsort(tm, (size_t)repeats, sizeof *tm, cmp_d);
        const double mp = (double)img->width * img->height * 1e-6;
        printf("%s{\"image\":\"%s\",\"width\":%u,\"height\":%u,\"megapixels\":%.4f,"
               "\"n_masks\":%u,\"n_tiles\":%u,\"first_s\":%.4f,\"min_s\":%.4f,\"median_s\":%.4f,"
               "\"max_s\":%.4f,\"median_s_per_mp\":%.4f,\"net_median_s\":%.4f,"
               "\"masks_median_s\":%.4f",
               i ? "," : "", images[i], img->width, img->height, mp, n_masks, n_tiles, first, t[0],
               t[repeats / 2], t[repeats - 1], t[repeats / 2] / mp, tn[repeats / 2],
               tm[repeats / 2]);
        if (bench_print_profile(ctx, repeats))
            return die("profile", images[i]);
        printf("}");
        fflush(stdout);
        gpuseg_image_free(img);
    }
    printf("]}\n");
    free(t);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
    return 0;
}
