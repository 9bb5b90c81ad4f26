/* ops/ops_internal.h: the tensor operations CPnet needs, on device buffers (NCHW float32):
 * convolution (1x1/3x3, fused BN+ReLU prologue, bias + residual epilogue) behind one call with
 * three implementations (im2col + CLBlast GEMM, our own direct kernel, Winograd F(2x2,3x3) for
 * 3x3 layers), and the small ops
 * (max-pool, upsample, add, style, linear, standalone BN). Internal: the network module uses it;
 * nothing here is installed. */
#ifndef GPUSEG_OPS_INTERNAL_H
#define GPUSEG_OPS_INTERNAL_H

#include "core/internal.h"

/* Which convolution implementation runs. AUTO: $GPUSEG_CONV if set ("clblast", "direct",
 * "winograd", "gemm" or "auto"), else the fastest, measured once per layer shape and device, kept
 * in the ops object and in a small file beside the program cache (when the cache is on). WINOGRAD
 * forced on a layer it does not take (1x1, or a cin whose transformed input does not fit the
 * device's local memory) runs the direct kernel there. */
typedef enum gpuseg__conv_impl {
    GPUSEG__CONV_AUTO = 0,
    GPUSEG__CONV_CLBLAST = 1,  /* im2col + CLBlastSgemm */
    GPUSEG__CONV_DIRECT = 2,   /* kernels/conv_direct.cl conv*_direct */
    GPUSEG__CONV_WINOGRAD = 3, /* kernels/conv_winograd.cl, 3x3 only */
    GPUSEG__CONV_GEMM = 4      /* kernels/conv_gemm.cl: implicit GEMM, local-memory tiles */
} gpuseg__conv_impl;

/* One parameter set of the implicit-GEMM kernel (kernels/conv_gemm.cl, compile-time options):
 * output channels x pixels per work-group (tm x th * tw; th x tw is the pixel rectangle of 3x3
 * layers, 1x1 layers take th * tw consecutive pixels), input channels per K step (tk), the
 * register block per work-item (wm x wn), and the local weight tile's row padding (pad). */
typedef struct gpuseg__gemm_params {
    unsigned tm, th, tw, tk, wm, wn, pad;
} gpuseg__gemm_params;

typedef struct gpuseg__ops_params {
    gpuseg__conv_impl conv; /* default AUTO */
    /* Direct-kernel blocking; 0 = from the tuning table (ops.c), or $GPUSEG_CONV_TILE="R,C,X". */
    unsigned tile_rows, tile_couts, tile_xvecs;
    /* The fused 1x1 kernel's blocking (band layout); 0 = from the table, or
     * $GPUSEG_CONV_TILE1="C,X" (output channels, 8-pixel vectors). */
    unsigned tile1_couts, tile1_xvecs;
    /* How the direct kernel's work is spread: 0 = by device type (GPUs: block, others: band) or
     * $GPUSEG_CONV_LAYOUT=band|block; GPUSEG__CONV_BAND or GPUSEG__CONV_BLOCK. */
    unsigned layout;
    /* The implicit GEMM's parameters for every shape (tm = 0: per shape, from the tuned cache, the
     * committed table or the default), or $GPUSEG_CONV_GEMM="TM,TH,TW,TK,WM,WN[,PAD]". */
    gpuseg__gemm_params gemm;
    /* 1: the first use of a layer shape with the GEMM (forced or under AUTO) sweeps its
     * parameter sets first and keeps the fastest (tuned cache); 0: $GPUSEG_CONV_TUNE=1 turns it
     * on. */
    int tune;
} gpuseg__ops_params;

/* The direct kernel's work split. BAND: a work-item computes its rows x channels block across
 * the whole width, work-groups of one (PoCL runs a work-group per core-task, so few and fat is
 * fast). BLOCK: a work-item computes one 8*xvecs-pixel block, neighbouring work-items take
 * neighbouring blocks in work-groups of up to 64 (what a GPU needs: with BAND every warp would
 * run one lane). */
enum { GPUSEG__CONV_BAND = 1, GPUSEG__CONV_BLOCK = 2 };

void gpuseg__ops_params_default(gpuseg__ops_params *p);

/* The ops object: the context it runs on, scratch buffers (prologue planes, im2col columns)
 * reused across calls, and the per-shape convolution choice. Not thread-safe (like the context).
 */
typedef struct gpuseg__ops gpuseg__ops;

/* 0: prologue planes, 1: im2col columns, 2: trial output, 3: Winograd weights, 4: the tuner's
 * output (a whole batch) */
#define GPUSEG__OPS_SCRATCH 5
/* Layer shapes remembered (CPnet has about 21 per tile shape and batch size; the table on disk
 * collects every model, tile shape and batch size used on the device, so it needs room). */
#define GPUSEG__OPS_CHOICES 1024

/* What AUTO measured for one layer shape (seconds of one warm run each). */
typedef struct gpuseg__conv_choice_entry {
    unsigned batch, cin, cout, height, width, ksize;
    int impl; /* gpuseg__conv_impl */
    double seconds_clblast, seconds_direct;
    double seconds_winograd; /* 0 where not measured (1x1 layers, or not taken) */
    double seconds_gemm;     /* 0 where not measured (CPU devices unless tuning, below) */
} gpuseg__conv_choice_entry;

/* A GEMM parameter set the tuner kept for one layer shape (seconds: one run of the whole batch). */
typedef struct gpuseg__gemm_tuned {
    unsigned batch, cin, cout, height, width, ksize;
    gpuseg__gemm_params p;
    double seconds;
} gpuseg__gemm_tuned;
#define GPUSEG__GEMM_TUNED   256
#define GPUSEG__GEMM_KERNELS 48

/* Register blocking of the direct kernel: rows x output channels x 8-pixel vectors per work-item.
 */
typedef struct gpuseg__conv_tile {
    unsigned rows, couts, xvecs;
    /* The fused 1x1 kernel's blocking (band layout): output channels x 8-pixel vectors. */
    unsigned couts1, xvecs1;
    unsigned layout; /* GPUSEG__CONV_BAND or GPUSEG__CONV_BLOCK */
} gpuseg__conv_tile;

struct gpuseg__ops {
    gpuseg_ctx *ctx;
    int conv; /* gpuseg__conv_impl: forced, or AUTO */
    gpuseg__conv_tile tile;
    /* built with the tile's -D options; owned here (fused1, flat3: band layout only) */
    cl_kernel direct3, direct1, fused1, flat3;
    cl_kernel wino_w, wino3;        /* conv_winograd.cl: weight transform, the convolution */
    gpuseg__gemm_params gemm_force; /* tm = 0: per shape */
    int tune;
    struct {
        gpuseg__gemm_params p;
        cl_kernel k3, k1;
    } gemm_k[GPUSEG__GEMM_KERNELS]; /* conv_gemm.cl's kernels per parameter set */
    unsigned n_gemm_k;
    gpuseg__gemm_tuned tuned[GPUSEG__GEMM_TUNED]; /* the tuner's results (and its file's) */
    unsigned n_tuned;
    int half; /* gpuseg__ops_half_probe: -1 not probed yet */
    cl_mem scratch[GPUSEG__OPS_SCRATCH];
    size_t scratch_bytes[GPUSEG__OPS_SCRATCH];
    gpuseg__conv_choice_entry choices[GPUSEG__OPS_CHOICES];
    unsigned n_choices;
};

/* Creates an ops object on ctx (which must outlive it). params may be NULL (defaults). The
 * caller frees *out with gpuseg__ops_free. GPUSEG_INVALID_ARGUMENT for a bad $GPUSEG_CONV. */
gpuseg_status gpuseg__ops_create(gpuseg_ctx *ctx, const gpuseg__ops_params *params,
                                 gpuseg__ops **out);
void gpuseg__ops_free(gpuseg__ops *ops); /* accepts NULL */
/* Bytes of the scratch buffers held now, and releasing them (the next call allocates again). */
size_t gpuseg__ops_scratch_bytes(const gpuseg__ops *ops);
void gpuseg__ops_release_scratch(gpuseg__ops *ops);
gpuseg_ctx *gpuseg__ops_ctx(const gpuseg__ops *ops);

/* Folds eval-mode batch norm into y = x * scale + shift (host arrays of n values):
 * scale = weight / sqrt(var + eps), shift = bias - mean * scale. */
void gpuseg__bn_fold(const float *weight, const float *bias, const float *mean, const float *var,
                     size_t n, float eps, float *scale, float *shift);

/* One convolution layer:
 *   t   = in (+ add_in) (+ pre_add[n][ci])          before BN, as batchconvstyle adds skip+style
 *   t   = t * bn_scale[ci] + bn_shift[ci], then ReLU if relu   (only on real pixels)
 *   out = conv_k(t, zero padding k/2) + bias (+ residual)
 * Buffers are the caller's; residual may be the same buffer as out (accumulate in place), in may
 * not. NULL means "absent" for every optional buffer; bn_scale and bn_shift come together. */
typedef struct gpuseg__conv_desc {
    const char *name; /* for messages ("res_down_2.conv_1"); may be NULL */
    unsigned batch, cin, cout, height, width;
    unsigned ksize;  /* 1 or 3 */
    cl_mem weight;   /* [cout][cin][k][k] (PyTorch OIHW) */
    cl_mem bias;     /* [cout] or NULL */
    cl_mem bn_scale; /* [cin] or NULL (no BN) */
    cl_mem bn_shift; /* [cin] or NULL */
    int relu;        /* ReLU after BN */
    cl_mem add_in;   /* [batch][cin][h][w] or NULL */
    cl_mem pre_add;  /* [batch][cin] or NULL */
    cl_mem residual; /* [batch][cout][h][w] or NULL; may equal out */
} gpuseg__conv_desc;

/* Enqueues the convolution (in: [batch][cin][h][w], out: [batch][cout][h][w]). Validates every
 * size and buffer (GPUSEG_INVALID_ARGUMENT naming the layer and the problem). Under AUTO, the
 * first call for a new layer shape (on this device, unless the program cache is off) times both
 * implementations on the first sample of the batch (into scratch, so out and residual are
 * untouched by the trials) and keeps the faster. */
gpuseg_status gpuseg__conv2d(gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in, cl_mem out);

/* The implementation calls with d's shape use: the forced one, the one AUTO measured, or
 * GPUSEG__CONV_AUTO when no call with this shape has been made yet. */
gpuseg__conv_impl gpuseg__conv_choice(const gpuseg__ops *ops, const gpuseg__conv_desc *d);
const char *gpuseg__conv_impl_name(gpuseg__conv_impl impl);

/* --- small ops (all enqueue only; planes = batch * channels) ------------------------------ */

/* out = act(in * scale[c] + shift[c]) over [batch][c][hw]. out may be in. */
gpuseg_status gpuseg__bn_act(gpuseg__ops *ops, cl_mem in, cl_mem scale, cl_mem shift, int relu,
                             cl_mem out, unsigned batch, unsigned c, size_t hw);
/* [planes][h][w] -> [planes][h/2][w/2] (floor), 2x2 max. */
gpuseg_status gpuseg__maxpool2(gpuseg__ops *ops, cl_mem in, cl_mem out, size_t planes, unsigned h,
                               unsigned w);
/* [planes][h][w] -> [planes][2h][2w] nearest, plus skip ([planes][2h][2w]) when not NULL. */
gpuseg_status gpuseg__upsample2(gpuseg__ops *ops, cl_mem in, cl_mem skip, cl_mem out, size_t planes,
                                unsigned h, unsigned w);
/* out = a + b over n floats (out may be a or b). */
gpuseg_status gpuseg__add(gpuseg__ops *ops, cl_mem a, cl_mem b, cl_mem out, size_t n);
/* style[n][c] = mean over [h][w] of in[n][c], then each style[n] divided by its L2 norm. */
gpuseg_status gpuseg__style(gpuseg__ops *ops, cl_mem in, cl_mem style, unsigned batch, unsigned c,
                            size_t hw);
/* out[n][m] = w[m][:] . in[n][:] + b[m] (b may be NULL). */
gpuseg_status gpuseg__linear(gpuseg__ops *ops, cl_mem in, cl_mem w, cl_mem b, cl_mem out,
                             unsigned batch, unsigned k, unsigned m);

/* --- shared by the ops/ files ------------------------------------------------------------- */

/* GPUSEG_INVALID_ARGUMENT unless buffer m (named what, in op) holds at least `floats` floats. */
gpuseg_status gpuseg__ops_check_buf(gpuseg__ops *ops, const char *op, const char *what, cl_mem m,
                                    size_t floats);
/* A scratch buffer slot (0..3) of at least `bytes`, grown (reallocated) as needed; owned by ops.
 */
gpuseg_status gpuseg__ops_scratch(gpuseg__ops *ops, unsigned slot, size_t bytes, cl_mem *out);

/* For kernels that give a work-item a run of whole chunks of one sample (conv1x1_fused,
 * conv3x3_winograd, band layout): chunks per work-item, about 16 work-groups per compute unit over
 * the batch (enough to balance cores that other work also uses, few enough that PoCL's
 * per-work-group cost stays small), between 1 and chunks (a sample's chunk count). */
size_t gpuseg__ops_chunks_per_item(const gpuseg__ops *ops, size_t chunks, unsigned batch);

/* *k = kernel `name` of prog (built from kernels/<file>.cl), created on first use and kept in the
 * ops object (which releases it); nothing happens when *k is already set. */
gpuseg_status gpuseg__ops_kernel(gpuseg__ops *ops, cl_program prog, const char *file,
                                 const char *name, cl_kernel *k);

/* The prologue plane geometry each implementation needs; conv.c fills it and runs it. */
typedef struct gpuseg__conv_geom {
    unsigned hp, wp; /* plane rows, row stride of the prologue buffer */
} gpuseg__conv_geom;

/* Implementations (conv_clblast.c, conv_direct.c): src is the prologue buffer of geometry g
 * ([batch][cin][hp][wp]); they write out (bias + residual included). */
gpuseg_status gpuseg__conv_clblast(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                                   const gpuseg__conv_geom *g, cl_mem src, cl_mem out);
gpuseg_status gpuseg__conv_direct(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                                  const gpuseg__conv_geom *g, cl_mem src, cl_mem out);
/* The fused 1x1 path (band layout, no prologue pass; conv_direct.c): whether it takes d, and
 * the call, which reads the caller's input directly. */
bool gpuseg__conv_direct_fused(const gpuseg__ops *ops, const gpuseg__conv_desc *d);
gpuseg_status gpuseg__conv1x1_fused(gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in,
                                    cl_mem out);
/* Winograd F(2x2,3x3) (conv_winograd.c): whether it takes d (3x3, and its transformed input
 * fits the device's local memory), its prologue geometry, and the call (the weight transform
 * goes to scratch slot 3). */
bool gpuseg__conv_winograd_takes(const gpuseg__ops *ops, const gpuseg__conv_desc *d);
void gpuseg__conv_winograd_geom(const gpuseg__conv_desc *d, gpuseg__conv_geom *g);
gpuseg_status gpuseg__conv_winograd(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                                    const gpuseg__conv_geom *g, cl_mem src, cl_mem out);
/* The implicit GEMM (conv_gemm.c; no prologue pass: the kernel applies it while loading).
 * gpuseg__gemm_check: 0 when p can run a ksize layer on this device, else why not (a static
 * string: a size out of range, a block that does not divide its tile, a work-group or local
 * memory over the device's limits). gpuseg__gemm_params_for: the set for d's shape: forced,
 * else tuned (this batch, then any batch), else the committed table (conv_params.c), else the
 * default; made valid for the device (TK cut down to the channels, then the default). */
const char *gpuseg__gemm_check(const gpuseg__ops *ops, const gpuseg__gemm_params *p,
                               unsigned ksize);
/* The checks of gpuseg__gemm_check that do not depend on the device. */
const char *gpuseg__gemm_check_sizes(const gpuseg__gemm_params *p);
void gpuseg__gemm_params_for(const gpuseg__ops *ops, const gpuseg__conv_desc *d,
                             gpuseg__gemm_params *p);
/* Runs d with parameter set p (p NULL: gpuseg__gemm_params_for). */
gpuseg_status gpuseg__conv_gemm(gpuseg__ops *ops, const gpuseg__conv_desc *d,
                                const gpuseg__gemm_params *p, cl_mem in, cl_mem out);
/* The tuner: times every valid candidate set on d (whole batch, residual left out, output into
 * scratch slot 4), keeps the fastest in ops->tuned and the tuned file, and returns it.
 * trials/max_trials (may be NULL/0) receive each candidate's set and seconds (0: refused on this
 * device), *n_trials their count. */
typedef struct gpuseg__gemm_trial {
    gpuseg__gemm_params p;
    double seconds;
} gpuseg__gemm_trial;
gpuseg_status gpuseg__conv_gemm_tune(gpuseg__ops *ops, const gpuseg__conv_desc *d, cl_mem in,
                                     gpuseg__gemm_params *best, double *best_seconds,
                                     gpuseg__gemm_trial *trials, unsigned max_trials,
                                     unsigned *n_trials);
/* The tuned entry for d's exact shape (batch included), or NULL. */
const gpuseg__gemm_tuned *gpuseg__gemm_tuned_find(const gpuseg__ops *ops,
                                                  const gpuseg__conv_desc *d, bool any_batch);
/* The tuned file (<cache>/<key>.convtune, key: device identity + conv_gemm.cl): load at
 * creation, store after each tuning; failures only cost a new tuning. */
void gpuseg__gemm_tuned_load(gpuseg__ops *ops);
void gpuseg__gemm_tuned_store(gpuseg__ops *ops);
/* Whether the device computes `half`: cl_khr_fp16 reported, or a kernel with half arithmetic
 * builds and gives the right result (NVIDIA computes half without reporting the extension).
 * 1 yes, 0 no; probed once per ops object. */
int gpuseg__ops_half_probe(gpuseg__ops *ops);

/* The committed parameter table (conv_params.c): sets measured on real devices. */
typedef struct gpuseg__gemm_db_entry {
    const char *device; /* a case-insensitive substring of the device name */
    unsigned ksize, cin, cout, height, width;
    gpuseg__gemm_params p;
    double us; /* the tuner's time for the entry's batch (informative) */
    unsigned batch;
} gpuseg__gemm_db_entry;
extern const gpuseg__gemm_db_entry gpuseg__gemm_db[];
extern const size_t gpuseg__gemm_db_len;
/* The committed set for d on the device of that name: the exact shape, else the nearest shape of
 * the same kernel size (log distance over cin, cout and plane pixels); NULL when the table has no
 * entry for the device. */
const gpuseg__gemm_db_entry *gpuseg__gemm_db_find(const char *device, const gpuseg__conv_desc *d);

/* The choice table on disk (conv_choice.c): load at creation (AUTO only), store after each new
 * measurement. Failures only cost a new measurement, so neither reports one. */
void gpuseg__conv_choice_load(gpuseg__ops *ops);
void gpuseg__conv_choice_store(gpuseg__ops *ops);

/* Geometry each implementation needs for its prologue buffer. */
void gpuseg__conv_clblast_geom(const gpuseg__conv_desc *d, gpuseg__conv_geom *g);
void gpuseg__conv_direct_geom(const gpuseg__ops *ops, const gpuseg__conv_desc *d,
                              gpuseg__conv_geom *g);

#endif
