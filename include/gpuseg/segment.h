/* gpuseg/segment.h: Cellpose 3.1 segmentation of 2-D images on the device: the CPnet network
 * (weights uploaded once) and CellposeModel.eval's pipeline around it: channels, percentile
 * normalisation, rescale to the model's diameter, padding, 224-pixel tiles through the network
 * batch by batch, tile blending, resize back, flows -> masks. See docs/net.md. */
#ifndef GPUSEG_SEGMENT_H
#define GPUSEG_SEGMENT_H

#include "gpuseg/common.h"
#include "gpuseg/context.h"
#include "gpuseg/image.h"
#include "gpuseg/model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* A CPnet on one context's device: folded weights and the activation buffers of the last
 * tile shape used. Not thread-safe (like the context). */
typedef struct gpuseg_net gpuseg_net;

/* Loads a Cellpose 3 model file (gpuseg_model_load; its errors and messages) and uploads it to
 * ctx's device. The library allocates *out; free it with gpuseg_net_free before ctx. */
GPUSEG_API gpuseg_status gpuseg_net_load(gpuseg_ctx *ctx, const char *path, gpuseg_net **out);

/* Uploads an already loaded model (the caller keeps and frees model; the net copies what it
 * needs). The library allocates *out; free it with gpuseg_net_free. */
GPUSEG_API gpuseg_status gpuseg_net_create(gpuseg_ctx *ctx, const gpuseg_model *model,
                                           gpuseg_net **out);

/* Releases a net and its device buffers; accepts NULL. */
GPUSEG_API void gpuseg_net_free(gpuseg_net *net);

/* The model's summary (nbase, nout, diam_mean, diam_labels, ...), copied into *info. */
GPUSEG_API void gpuseg_net_get_info(const gpuseg_net *net, gpuseg_model_info *info);

/* Parameters of gpuseg_segment; gpuseg_segment_params_default gives Cellpose 3.1's eval
 * defaults. */
typedef struct gpuseg_segment_params {
    double diameter; /* cell diameter in pixels; 0: diam_mean / diam_labels scaling
                      * (Cellpose's diameter=None for models without a size model) */
    int chan, chan2; /* Cellpose channels: chan 0 grey, 1 red, 2 green, 3 blue; chan2 0
                      * none (default 0, 0) */
    int invert;      /* 0 */
    int normalize;   /* 1: percentile normalisation (Cellpose normalize=True) */
    /* Its percentiles: 1 and 99 (Cellpose's normalize={'percentile': (lo, hi)}, the command's
     * --norm_percentile LO HI); 0 <= norm_lo < norm_hi <= 100. */
    float norm_lo, norm_hi;
    float flow_threshold;     /* 0.4; <= 0: flow-error QC off */
    float cellprob_threshold; /* 0.0 */
    uint32_t niter;           /* 0: trunc(200 / rescale) as Cellpose with resample=True */
    int32_t min_size;         /* 15; <= 0: off */
    double max_size_fraction; /* 0.4 */
    int augment;              /* 0: flip test-time augmentation */
    double tile_overlap;      /* 0.1 */
    unsigned batch_size;      /* 8 tiles per forward pass (halved on device-memory failure) */
    uint32_t page;            /* which page of a multi-page image (0) */
    int want_flows;           /* 1: result->flows receives the [3, H, W] maps */
    int want_style;           /* 1: result->style receives the style vector */
    /* 0 (default, Cellpose eval parity): one pass at `diameter`. 1: estimate the object size
     * from a first pass at `diameter` (or diam_labels when 0) as the median equivalent
     * diameter of its masks (gpuseg_labels_diameter), then segment again at that estimate,
     * and so on, until a pass's masks measure within 10% of the diameter it ran at (that pass
     * is kept), it finds no masks, or 3 passes have run. Cellpose's SizeModel refines its
     * style-regression guess once the same way; here the first guess is the model's training
     * diameter, which can be 2-3x off. result->diameter_estimated says which. */
    int estimate_diameter;
    /* NULL (default), or Cellpose's size model for this net (gpuseg_size_model_load of the file
     * gpuseg_size_model_find gives; kept by the caller). With diameter 0 it estimates the
     * diameter as Cellpose 3.1's models.Cellpose.eval does (diameter 0 / None with a size
     * model): pass 1 at diameter 0 (rescale diam_mean / diam_labels) gives the style vector and
     * from it the style diameter d_s (gpuseg_size_model_style_diameter); pass 2 at d_s (rescale
     * size-model diam_mean / d_s) gives masks whose median diameter (gpuseg_labels_diameter) is
     * the estimate d, or the size model's diam_mean when there are none; pass 3, the result,
     * is the segmentation at d. Cellpose's pass 2 runs resample=False, interp=False; gpuseg's
     * runs its one pipeline (resample=True, interpolated steps), so d can differ slightly from
     * Cellpose's (0.2-1.1% on tests/fixtures/size; docs/net.md). Pass 1's masks are computed
     * but unused. estimate_diameter is ignored when a size model is used. With a diameter > 0
     * the size model is not used. */
    const gpuseg_size_model *size_model;
} gpuseg_segment_params;

GPUSEG_API void gpuseg_segment_params_default(gpuseg_segment_params *p);

/* What gpuseg_segment returns. Everything in it belongs to the caller: release with
 * gpuseg_segment_result_free. */
typedef struct gpuseg_segment_result {
    gpuseg_image *labels; /* H x W, one channel, uint16 (uint32 if > 65535 masks) */
    uint32_t n_masks;
    float *flows; /* float32 [3][H][W]: dY, dX (network scale), cellprob logit; or NULL */
    float *style; /* float32 [style_len] (unit L2 norm over the image's tiles); or NULL */
    uint32_t style_len;
    double diameter; /* the diameter used: the given one, or diam_mean * diam_labels /
                      * diam_mean = diam_labels for diameter 0 */
    double rescale;  /* diam_mean / diameter, as float32 (Cellpose's arithmetic) */
    uint32_t niter;  /* Euler steps used */
    uint32_t n_tiles;
    unsigned batch_size;               /* tiles per forward pass actually used */
    double seconds_net, seconds_masks; /* wall time of the network part and of flows -> masks
                                        * (all passes summed with estimate_diameter) */
    /* With estimate_diameter: 1 when the masks gave an estimate (`diameter` is always the one
     * the labels were made at: the last pass's); 0 when estimation was off or the first pass
     * found no masks. */
    int diameter_estimated;
    double diameter_first_pass; /* with estimate_diameter: the first pass's diameter, else 0 */
    double diameter_estimate;   /* with estimate_diameter: median equivalent diameter of the
                                 * last pass's masks (0 when none), else 0 */
    unsigned passes;            /* network passes run: 1 to 3 */
    /* With a size model (params.size_model, diameter 0), 3 passes and: diameter_style = the
     * style-regression diameter (SizeModel's diam_style), diameter_first_pass = pass 1's
     * diameter (diam_labels), diameter_estimate = the median diameter of pass 2's masks (0 when
     * none), diameter_estimated = 1 when it is > 0, diameter = pass 3's (the estimate, or the
     * size model's diam_mean when pass 2 found no masks: SizeModel's diam). Else 0. */
    double diameter_style;
} gpuseg_segment_result;

/* Segments one 2-D image (page params->page) as CellposeModel.eval(resample=True) does.
 * params may be NULL (defaults). On success *result is filled (its buffers allocated by the
 * library, freed by gpuseg_segment_result_free); on failure it is left empty. Errors:
 * GPUSEG_INVALID_ARGUMENT (a bad diameter, chan beyond the image's channels, ...),
 * GPUSEG_DEVICE_MEMORY (even one tile per batch does not fit), the prep and masks errors. */
GPUSEG_API gpuseg_status gpuseg_segment(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *img,
                                        const gpuseg_segment_params *params,
                                        gpuseg_segment_result *result);

/* Releases what a result holds and zeroes it; accepts an empty result. */
GPUSEG_API void gpuseg_segment_result_free(gpuseg_segment_result *result);

#ifdef __cplusplus
}
#endif
#endif
