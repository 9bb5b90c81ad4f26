/* net/net_internal.h: the CPnet network on the device (cpnet.c): weights uploaded once with the
 * batch norms folded into per-channel scale/shift, activation buffers planned once per tile shape
 * and batch size and reused, and the forward pass of a batch of tiles (flows + style per tile).
 * segment.c builds Cellpose's eval pipeline on top of it. Internal; tests use it directly. */
#ifndef GPUSEG_NET_INTERNAL_H
#define GPUSEG_NET_INTERNAL_H

#include "core/internal.h"
#include "gpuseg/model.h"
#include "gpuseg/segment.h"
#include "ops/ops_internal.h"

/* One convolution layer as gpuseg__conv2d runs it (BN folded to scale/shift on the device). */
typedef struct gpuseg__layer {
    char name[48];
    unsigned cin, cout, ksize;
    int relu;
    cl_mem weight, bias, scale, shift;
} gpuseg__layer;

/* A residual block (resdown or resup): proj (BN, 1x1), conv_0..conv_3 (BN, ReLU, 3x3); resup
 * blocks also have the style Linear of conv_1..3 (full_w [cout][style], full_b [cout]). */
typedef struct gpuseg__block {
    gpuseg__layer proj, conv[4];
    cl_mem full_w[3], full_b[3];
} gpuseg__block;

/* Optional per-layer timing (benchmarks): with profile on, every op is followed by clFinish and
 * its wall time added to the entry of its name. Off by default (it serialises the queue). */
#define GPUSEG__NET_PROF_MAX 64
typedef struct gpuseg__net_prof {
    char name[48];
    unsigned calls;
    double seconds, flops; /* flops: 2 * MACs of the convolution (0 for other ops) */
} gpuseg__net_prof;

struct gpuseg_net {
    gpuseg_ctx *ctx;
    gpuseg__ops *ops;
    gpuseg_model_info info;
    char model_path[1024];
    gpuseg__block down[4], up[4];
    gpuseg__layer head;
    /* The plan: buffers for batches of up to plan_batch tiles of plan_h x plan_w. */
    unsigned plan_batch, plan_h, plan_w;
    size_t plan_bytes; /* device memory the planned buffers hold */
    cl_mem xd[4];      /* encoder outputs [B][nbase[l+1]][h>>l][w>>l] */
    cl_mem tmp[3];     /* scratch of the largest activation */
    cl_mem feat[4][3]; /* Linear(style) per resup conv_1..3: [B][cout] */
    cl_mem in;         /* [B][nbase[0]][h][w] the tile batch */
    cl_mem out;        /* [B][nout][h][w] */
    cl_mem style;      /* [B][nbase[4]] */
    int profile;
    unsigned n_prof;
    gpuseg__net_prof prof[GPUSEG__NET_PROF_MAX];
};

/* Makes sure buffers for `batch` tiles of h x w exist (reallocating when the shape grows or
 * changes). h and w must be multiples of 8 (three 2x2 poolings; Cellpose pads to 16).
 * GPUSEG_DEVICE_MEMORY when an allocation fails (the caller may retry with a smaller batch). */
gpuseg_status gpuseg__net_plan(gpuseg_net *net, unsigned batch, unsigned h, unsigned w);
/* Releases the planned buffers (weights stay). */
void gpuseg__net_unplan(gpuseg_net *net);
/* Device memory of the planned buffers and the convolution scratch: what the net holds between
 * forward passes beyond its weights. */
size_t gpuseg__net_workspace_bytes(const gpuseg_net *net);
/* Releases them (the next forward pass plans them again). */
void gpuseg__net_release_workspace(gpuseg_net *net);

/* Forward pass of net->in ([batch][nbase0][h][w], batch <= plan_batch, the planned h, w) into
 * net->out ([batch][nout][h][w]) and net->style ([batch][nbase4]); enqueues only. */
gpuseg_status gpuseg__net_forward(gpuseg_net *net, unsigned batch);

/* segment.c, shared with blockwise segmentation (blocks.c): plans the network for `want` tiles
 * of th x tw, halving the batch while the device runs out of memory (*got: the batch that fits);
 * and the double rescale factor whose truncated sizes equal Cellpose's float32 int(L * r). */
gpuseg_status gpuseg__plan_batch(gpuseg_ctx *ctx, gpuseg_net *net, unsigned want, uint32_t th,
                                 uint32_t tw, unsigned *got);
double gpuseg__prep_rescale(float r, uint32_t ly0, uint32_t lx0);
/* diameter >= 0, batch size 1..1024, finite tile overlap and thresholds (segment.c) */
gpuseg_status gpuseg__check_segment_numbers(gpuseg_ctx *ctx, const gpuseg_segment_params *p);
/* Cellpose's rescale (diam_mean / diameter, or diam_mean / diam_labels for diameter 0, in
 * float32) and Euler step count (trunc(200 / rescale) unless p->niter is given) for params p;
 * GPUSEG_INVALID_ARGUMENT for an absurd rescale. (segment.c; gpuseg_segment and blocks.c) */
gpuseg_status gpuseg__rescale_niter(gpuseg_ctx *ctx, const gpuseg_net *net,
                                    const gpuseg_segment_params *p, float *rescale,
                                    uint32_t *niter);

/* stack.c, shared with volume3d.c (Z stacks): Cellpose's convert_image + normalize_img(norm3D)
 * over the whole stack into a new float32 image of 2 channels, Z pages (p->normalize 0: the
 * channels only); the stack's one diameter estimated on its middle plane when p asks for it (p
 * updated: diameter set, estimation off; the estimate's members of *out filled), as a share
 * [0, share] of the call's progress; and a uint32 volume as a result's label image (uint16 up to
 * 65535 masks). */
gpuseg_status gpuseg__normalize_stack(gpuseg_ctx *ctx, const gpuseg_image *img,
                                      const gpuseg_segment_params *p, gpuseg_image **out);
gpuseg_status gpuseg__stack_diameter(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *x,
                                     gpuseg_segment_params *p, double share,
                                     gpuseg_segment_result *out);
gpuseg_status gpuseg__volume_labels(gpuseg_ctx *ctx, const uint32_t *vol, uint32_t Z, uint32_t H,
                                    uint32_t W, uint32_t n_masks, gpuseg_image **out);

#endif
