/* bench/bench_net.c: times the CPnet forward pass (src/net/cpnet.c) on a given tile batch, in
 * batches of 8 as Cellpose runs them, and writes the outputs so that a script can check them
 * against PyTorch (bench/net_vs_cellpose.py runs both sides on the same tiles).
 *   bench_net MODEL.pth TILES.npy (float32 [N, nchan, H, W]) OUT.npy [REPEATS (default 3)]
 * Prints one JSON object: cold (first run, includes program builds and the convolution choice),
 * min/median/max of the warm runs, seconds per tile, the implementation each layer shape got.
 * With BENCH_NET_PROFILE=1 set, one more pass waits after every op and reports per-layer wall
 * time, share and GFLOP/s (the waits add a little). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "net/net_internal.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int die(const char *what) {
    fprintf(stderr, "bench_net: %s: %s\n", what, gpuseg_last_error());
    return 1;
}

/* One pass over all tiles (batches of 8); outputs copied into out when not NULL. */
static int run_all(gpuseg_ctx *ctx, gpuseg_net *net, const float *tiles, size_t n, size_t in_sz,
                   size_t out_sz, float *out) {
    for (size_t first = 0; first < n; first += 8) {
        unsigned count = (unsigned)(n - first < 8 ? n - first : 8);
        if (clEnqueueWriteBuffer(ctx->queue, net->in, CL_FALSE, 0, count * in_sz * 4,
                                 tiles + first * in_sz, 0, NULL, NULL) != CL_SUCCESS)
            return 1;
        if (gpuseg__net_forward(net, count) != GPUSEG_OK)
            return 1;
        if (out && clEnqueueReadBuffer(ctx->queue, net->out, CL_FALSE, 0, count * out_sz * 4,
                                       out + first * out_sz, 0, NULL, NULL) != CL_SUCCESS)
            return 1;
    }
    return clFinish(ctx->queue) == CL_SUCCESS ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_net MODEL.pth TILES.npy OUT.npy [REPEATS]\n");
        return 2;
    }
    int repeats = argc > 4 && atoi(argv[4]) > 0 ? atoi(argv[4]) : 3;
    gpuseg_npy *tiles = NULL;
    if (gpuseg_npy_read(argv[2], &tiles) != GPUSEG_OK)
        return die("reading tiles");
    if (tiles->dtype != GPUSEG_DTYPE_F32 || tiles->ndim != 4) {
        fprintf(stderr, "bench_net: %s: expected float32 [N, C, H, W]\n", argv[2]);
        return 1;
    }
    gpuseg_ctx *ctx = NULL;
    gpuseg_net *net = NULL;
    if (gpuseg_ctx_create(NULL, &ctx) != GPUSEG_OK)
        return die("context");
    if (gpuseg_net_load(ctx, argv[1], &net) != GPUSEG_OK)
        return die("model");
    size_t n = tiles->shape[0];
    unsigned C = (unsigned)tiles->shape[1], H = (unsigned)tiles->shape[2],
             W = (unsigned)tiles->shape[3];
    if ((int)C != net->info.nbase[0]) {
        fprintf(stderr, "bench_net: tiles have %u channels, the model %d\n", C, net->info.nbase[0]);
        return 1;
    }
    if (gpuseg__net_plan(net, n < 8 ? (unsigned)n : 8, H, W) != GPUSEG_OK)
        return die("plan");
    size_t in_sz = (size_t)C * H * W, out_sz = (size_t)net->info.nout * H * W;
    float *out = malloc(n * out_sz * sizeof *out);
    double *t = malloc((size_t)repeats * sizeof *t);
    if (!out || !t)
        return 1;
    double t0 = now();
    if (run_all(ctx, net, tiles->data, n, in_sz, out_sz, out))
        return die("forward");
    double cold = now() - t0;
    for (int r = 0; r < repeats; r++) {
        t0 = now();
        if (run_all(ctx, net, tiles->data, n, in_sz, out_sz, NULL))
            return die("forward");
        t[r] = now() - t0;
    }
    qsort(t, (size_t)repeats, sizeof *t, cmp_d);
    uint64_t shape[4] = {n, (uint64_t)net->info.nout, H, W};
    if (gpuseg_npy_write(argv[3], GPUSEG_DTYPE_F32, 4, shape, out) != GPUSEG_OK)
        return die("writing outputs");
    printf("{\"device\":\"%s\",\"tiles\":%zu,\"tile\":[%u,%u],\"nbase\":[%d,%d,%d,%d,%d],"
           "\"cold_s\":%.4f,\"min_s\":%.4f,\"median_s\":%.4f,\"max_s\":%.4f,"
           "\"median_s_per_tile\":%.5f,\"conv_choices\":[",
           gpuseg_ctx_device(ctx)->name, n, H, W, net->info.nbase[0], net->info.nbase[1],
           net->info.nbase[2], net->info.nbase[3], net->info.nbase[4], cold, t[0], t[repeats / 2],
           t[repeats - 1], t[repeats / 2] / (double)n);
    for (unsigned i = 0; i < net->ops->n_choices; i++) {
        const gpuseg__conv_choice_entry *e = &net->ops->choices[i];
        printf("%s\"%ux%u %ux%u k%u: %s\"", i ? "," : "", e->cin, e->cout, e->height, e->width,
               e->ksize, gpuseg__conv_impl_name((gpuseg__conv_impl)e->impl));
    }
    printf("]");
    if (getenv("BENCH_NET_PROFILE")) {
        /* one more pass with a wait after every op: per-layer wall time (sums over batches) */
        net->profile = 1;
        if (run_all(ctx, net, tiles->data, n, in_sz, out_sz, NULL))
            return die("forward");
        double total = 0;
        for (unsigned i = 0; i < net->n_prof; i++)
            total += net->prof[i].seconds;
        printf(",\"profile_total_s\":%.4f,\"profile\":[", total);
        for (unsigned i = 0; i < net->n_prof; i++) {
            const gpuseg__net_prof *p = &net->prof[i];
            printf("%s{\"op\":\"%s\",\"s\":%.4f,\"share\":%.3f,\"gflops\":%.1f}", i ? "," : "",
                   p->name, p->seconds, p->seconds / total,
                   p->seconds > 0 ? p->flops / p->seconds * 1e-9 : 0.0);
        }
        printf("]");
    }
    printf("}\n");
    free(out);
    free(t);
    gpuseg_npy_free(tiles);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
    return 0;
}
