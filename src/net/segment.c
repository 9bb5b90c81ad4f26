/* net/segment.c: CellposeModel.eval (Cellpose 3.1, 2-D, resample=True) on the device:
 * rescale factor and niter as Cellpose computes them (float32), prep (channels, normalise,
 * resize, pad), tiles through the network batch by batch (halving the batch when device memory
 * runs out), taper blend, resize back, flows -> masks; style vector as run_net's per-image sum. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "flow/masks_internal.h"
#include "gpuseg/flows_cl.h"
#include "net/net_internal.h"
#include "prep/prep_internal.h"

/* Device memory the flows -> masks step allocates per pixel at its peak (the seeding stage,
 * counted from its allocations: scaled flows 8, end points 4, seed histogram 4, paint counts 4,
 * paint winners 4, seed ids 4 bytes; the flows it is given are released after its first stage). */
#define GPUSEG__MASKS_BYTES_PER_PIXEL 28

/* The numeric fields every segmentation entry checks: diameter >= 0, batch size 1..1024, finite
 * tile overlap and thresholds. */
gpuseg_status gpuseg__check_segment_numbers(gpuseg_ctx *ctx, const gpuseg_segment_params *p) {
    if (!isfinite(p->diameter) || p->diameter < 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "diameter %g: must be 0 (the model's own) or a positive number of "
                            "pixels",
                            p->diameter);
    if (p->batch_size == 0 || p->batch_size > 1024)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "batch size %u: must be 1..1024",
                            p->batch_size);
    if (!isfinite(p->tile_overlap) || !isfinite(p->cellprob_threshold) ||
        !isfinite(p->flow_threshold))
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "tile overlap and thresholds must be finite numbers");
    return GPUSEG_OK;
}

gpuseg_status gpuseg__rescale_niter(gpuseg_ctx *ctx, const gpuseg_net *net,
                                    const gpuseg_segment_params *p, float *rescale,
                                    uint32_t *niter) {
    *rescale = 1.0f; /* defined on failure too */
    *niter = 0;
    const gpuseg_model_info *mi = &net->info;
    /* Cellpose: rescale = diam_mean / diameter with a float32 diam_mean (numpy keeps float32
     * with a Python float), else diam_mean / diam_labels (both float32). */
    float r =
        p->diameter > 0 ? mi->diam_mean / (float)p->diameter : mi->diam_mean / mi->diam_labels;
    if (!(r > 0.0f) || !isfinite(r) || r > 1e4f)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "diameter %g: rescale factor %g (diam_mean %g / diameter) is absurd",
                            p->diameter, (double)r, (double)mi->diam_mean);
    /* niter0 = 1 / rescale * 200 in float32, then np.uint32 (truncation) in follow_flows */
    float nf = (1.0f / r) * 200.0f;
    uint32_t n = p->niter ? p->niter : (nf >= 4294967295.0f ? UINT32_MAX : (uint32_t)nf);
    if (n == 0)
        n = 1; /* rescale > 200: Cellpose follows 0 steps; to the masks module 0 means "default
                * (200)", so one step is the closest we can ask for */
    *rescale = r;
    *niter = n;
    return GPUSEG_OK;
}

void gpuseg_segment_params_default(gpuseg_segment_params *p) {
    memset(p, 0, sizeof *p);
    p->diameter = 0.0;
    p->normalize = 1;
    p->norm_lo = 1.0f;
    p->norm_hi = 99.0f;
    p->flow_threshold = 0.4f;
    p->cellprob_threshold = 0.0f;
    p->niter = 0;
    p->min_size = 15;
    p->max_size_fraction = 0.4;
    p->tile_overlap = 0.1;
    p->batch_size = 8;
}

void gpuseg_segment_result_free(gpuseg_segment_result *r) {
    if (!r)
        return;
    gpuseg_image_free(r->labels);
    free(r->flows);
    free(r->style);
    memset(r, 0, sizeof *r);
}

/* Where each stage of one pass ends, as a fraction of the pass (progress reports; a rough
 * split of the time on GPUs and PoCL alike: the network dominates, the masks come second). */
#define SPAN_PREP    0.05
#define SPAN_NETWORK 0.75
#define SPAN_BLEND   0.80

/* Plans the network for `want` tiles of th x tw, halving the batch while the device runs out of
 * memory; *got receives the batch that fits. */
gpuseg_status gpuseg__plan_batch(gpuseg_ctx *ctx, gpuseg_net *net, unsigned want, uint32_t th,
                                 uint32_t tw, unsigned *got) {
    gpuseg_status st;
    for (unsigned b = want;; b /= 2) {
        st = gpuseg__net_plan(net, b, th, tw);
        if (st == GPUSEG_OK) {
            *got = b;
            return GPUSEG_OK;
        }
        if (st != GPUSEG_DEVICE_MEMORY)
            return st;
        if (b == 1)
            break;
        gpuseg__log(ctx, GPUSEG_LOG_WARN, "network buffers for %u tiles do not fit; trying %u", b,
                    b / 2);
    }
    return gpuseg__wrap(
        ctx, st, "network: even a batch of 1 tile of %ux%u does not fit in device memory", th, tw);
}

/* The network part: tiles batch by batch through the net into the blend, then the blended maps
 * resized back into full ([3, ly0, lx0], caller's) and the style summed into style_sum.
 *
 * Peak memory: once the last tile has been through the net, the resized image and (for large
 * images) the net's workspace sit idle while the blend, the resize back and the masks step
 * allocate per pixel, so they are released then and the peak is the larger phase rather than
 * their sum (4096^2, bundled model, PoCL: peak RSS 1020 -> 804 MiB, docs/segment.md). The
 * workspace is kept when the masks step needs less than it (GPUSEG__MASKS_BYTES_PER_PIXEL):
 * planning it again for the next, small, image would cost more time than the memory is worth. */
static gpuseg_status run_tiles(gpuseg_ctx *ctx, gpuseg_net *net, gpuseg__prep_out *in,
                               unsigned batch, cl_mem full, float *style_sum,
                               unsigned *batch_used) {
    const gpuseg__tile_geom *g = &in->geom;
    uint32_t ntiles = g->ny * g->nx, ns = (uint32_t)net->info.nbase[4];
    gpuseg__blend b = {0};
    cl_mem maps = NULL;
    float *style = NULL;
    unsigned bsz = 0;
    gpuseg_status st =
        gpuseg__plan_batch(ctx, net, batch < ntiles ? batch : ntiles, g->th, g->tw, &bsz);
    if (st != GPUSEG_OK)
        return st;
    *batch_used = bsz;
    style = malloc((size_t)bsz * ns * sizeof *style);
    if (!style)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "style: out of host memory");
    if ((st = gpuseg__blend_begin(ctx, g, 3, &b)) != GPUSEG_OK)
        goto fail;
    memset(style_sum, 0, ns * sizeof *style_sum);
    gpuseg__progress(ctx, "network", 0, ntiles, SPAN_PREP);
    for (uint32_t first = 0; first < ntiles; first += bsz) {
        uint32_t count = ntiles - first < bsz ? ntiles - first : bsz;
        if ((st = gpuseg__check_cancel(ctx, "network")) != GPUSEG_OK ||
            (st = gpuseg__tiles_extract(ctx, in->image, 2, g, first, count, net->in)) !=
                GPUSEG_OK ||
            (st = gpuseg__net_forward(net, count)) != GPUSEG_OK ||
            (st = gpuseg__blend_add(ctx, &b, g, net->out, first, count)) != GPUSEG_OK ||
            (st = gpuseg__read_buf(ctx, net->style, (size_t)count * ns * sizeof(float), style,
                                   "style")) != GPUSEG_OK)
            goto fail;
        for (uint32_t t = 0; t < count; t++)
            for (uint32_t c = 0; c < ns; c++)
                style_sum[c] += style[(size_t)t * ns + c];
        gpuseg__progress(ctx, "network", first + count, ntiles,
                         SPAN_PREP + (SPAN_NETWORK - SPAN_PREP) * (first + count) / ntiles);
    }
    gpuseg__progress(ctx, "blend", 0, 0, SPAN_NETWORK);
    if ((st = gpuseg__check_cancel(ctx, "blend")) != GPUSEG_OK)
        goto fail;
    gpuseg__release(&in->image); /* the kernels enqueued on them keep them alive until done */
    gpuseg__release(&in->tiles);
    if ((size_t)g->ly0 * g->lx0 * GPUSEG__MASKS_BYTES_PER_PIXEL >= gpuseg__net_workspace_bytes(net))
        gpuseg__net_release_workspace(net);
    size_t mbytes;
    if (!gpuseg__mul4_size(3, g->lyr, g->lxr, sizeof(float), &mbytes)) {
        st = gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "blended maps: size overflows");
        goto fail;
    }
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, mbytes, "blended maps", &maps)) != GPUSEG_OK ||
        (st = gpuseg__blend_end(ctx, &b, g, maps)) != GPUSEG_OK ||
        (st = gpuseg__resize_maps(ctx, maps, 3, g, full)) != GPUSEG_OK)
        goto fail;
    /* run_net: stylei /= (stylei**2).sum()**0.5 over the image's summed tile styles */
    float ss = 0.0f;
    for (uint32_t c = 0; c < ns; c++)
        ss += style_sum[c] * style_sum[c];
    ss = sqrtf(ss);
    for (uint32_t c = 0; c < ns; c++)
        style_sum[c] /= ss;
fail:
    gpuseg__blend_free(&b);
    gpuseg__release(&maps);
    free(style);
    return st;
}

/* Cellpose sizes the rescaled image as int(L * rsz) with rsz a numpy float32 and L a Python int,
 * so the product is rounded to float32 before truncation; prep computes trunc(L * r) in double.
 * The two differ when L * r lies within float32 rounding below an integer. The resize itself
 * depends only on the sizes, so this returns a double factor whose truncated products equal the
 * float32 ones on both axes (r itself when they agree already, which is nearly always). */
double gpuseg__prep_rescale(float r, uint32_t ly0, uint32_t lx0) {
    if (r == 1.0f)
        return 1.0;
    const uint32_t L[2] = {ly0, lx0};
    double want[2], cand[3] = {(double)r, 0, 0};
    for (int a = 0; a < 2; a++) {
        float prod = (float)L[a] * r;
        want[a] = prod < 4294967296.0f ? (double)(uint32_t)prod : -1;
        cand[a + 1] = want[a] >= 0 ? nextafter(want[a] / L[a], INFINITY) : (double)r;
    }
    for (int c = 0; c < 3; c++) {
        int ok = 1;
        for (int a = 0; a < 2; a++)
            ok &= want[a] >= 0 && floor((double)L[a] * cand[c]) == want[a];
        if (ok)
            return cand[c];
    }
    return (double)r;
}

/* One pass of CellposeModel.eval at p->diameter (estimate_diameter ignored). */
static gpuseg_status segment_once(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *img,
                                  const gpuseg_segment_params *params,
                                  gpuseg_segment_result *result) {
    memset(result, 0, sizeof *result);
    const gpuseg_segment_params p = *params;
    const gpuseg_model_info *mi = &net->info;
    if (mi->nout != 3)
        return gpuseg__fail(ctx, GPUSEG_UNSUPPORTED,
                            "%s: the model has %d outputs; segmentation needs 3 (dY, dX, "
                            "cellprob)",
                            net->model_path, mi->nout);
    gpuseg_status cst = gpuseg__check_segment_numbers(ctx, &p);
    if (cst != GPUSEG_OK)
        return cst;

    float r;
    uint32_t niter;
    gpuseg_status rst = gpuseg__rescale_niter(ctx, net, &p, &r, &niter);
    if (rst != GPUSEG_OK)
        return rst;

    gpuseg__prep_params pp;
    gpuseg__prep_params_default(&pp);
    pp.chan = p.chan;
    pp.chan2 = p.chan2;
    pp.normalize = p.normalize;
    pp.pct_lo = p.norm_lo;
    pp.pct_hi = p.norm_hi;
    pp.invert = p.invert;
    if (p.page >= img->pages)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "page %u: the image has %u", p.page,
                            img->pages);
    pp.rescale = gpuseg__prep_rescale(r, img->height, img->width);
    pp.augment = p.augment;
    pp.tile_overlap = p.tile_overlap;
    pp.page = p.page;
    pp.no_tiles = 1;

    gpuseg__prep_out in;
    memset(&in, 0, sizeof in);
    cl_mem full = NULL, labels = NULL;
    float *style = NULL;
    gpuseg_status st;
    double t0 = gpuseg__now_s();
    gpuseg__progress(ctx, "prep", 0, 0, 0.0);
    if ((st = gpuseg__check_cancel(ctx, "prep")) != GPUSEG_OK ||
        (st = gpuseg__prep_image(ctx, img, &pp, &in)) != GPUSEG_OK)
        goto fail;
    uint32_t H = in.geom.ly0, W = in.geom.lx0, ns = (uint32_t)mi->nbase[4];
    size_t fbytes;
    if (!gpuseg__mul4_size(3, H, W, sizeof(float), &fbytes)) {
        st = gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "flows: size overflows");
        goto fail;
    }
    style = malloc(ns * sizeof *style);
    if (!style) {
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "style: out of host memory");
        goto fail;
    }
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, fbytes, "flows", &full)) != GPUSEG_OK ||
        (st = run_tiles(ctx, net, &in, p.batch_size, full, style, &result->batch_size)) !=
            GPUSEG_OK)
        goto fail;
    clFinish(ctx->queue);
    double t1 = gpuseg__now_s();

    gpuseg_masks_params mp;
    gpuseg_masks_params_default(&mp);
    mp.cellprob_threshold = p.cellprob_threshold;
    mp.flow_threshold = p.flow_threshold;
    mp.niter = niter;
    mp.min_size = p.min_size;
    mp.max_size_fraction = p.max_size_fraction;
    gpuseg_dtype dt;
    uint32_t nm;
    if (p.want_flows) {
        result->flows = malloc(fbytes);
        if (!result->flows) {
            st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flows: out of host memory");
            goto fail;
        }
        if ((st = gpuseg__read_buf(ctx, full, fbytes, result->flows, "flows")) != GPUSEG_OK)
            goto fail;
    }
    /* The flows are handed over: flows -> masks releases them once its first stage has read them,
     * so that the rest of it runs without their 12 bytes per pixel. It reports its own progress
     * (0..1 of the masks step) into the last part of the pass. */
    gpuseg__progress(ctx, "masks", 0, 0, SPAN_BLEND);
    if ((st = gpuseg__check_cancel(ctx, "masks")) != GPUSEG_OK)
        goto fail;
    gpuseg__progress_span outer = gpuseg__progress_push(ctx, SPAN_BLEND, 1.0);
    st = gpuseg__masks_run(ctx, full, 1, H, W, &mp, NULL, &labels, &dt, &nm);
    gpuseg__progress_pop(ctx, outer);
    full = NULL;
    if (st != GPUSEG_OK)
        goto fail;
    if ((st = gpuseg_image_create(W, H, 1, 1, dt, &result->labels)) != GPUSEG_OK ||
        (st = gpuseg__read_buf(ctx, labels, (size_t)H * W * gpuseg_dtype_size(dt),
                               result->labels->data, "labels")) != GPUSEG_OK)
        goto fail;
    if (p.want_style) {
        result->style = style;
        style = NULL;
    }
    result->style_len = ns;
    result->n_masks = nm;
    result->passes = 1;
    result->diameter = p.diameter > 0 ? p.diameter : (double)mi->diam_labels;
    result->rescale = (double)r;
    result->niter = niter;
    result->n_tiles = in.geom.ny * in.geom.nx;
    result->seconds_net = t1 - t0;
    result->seconds_masks = gpuseg__now_s() - t1;
    st = GPUSEG_OK;
fail:
    if (st != GPUSEG_OK) {
        gpuseg_segment_result_free(result);
        if (st == GPUSEG_CANCELLED)
            clFinish(ctx->queue); /* the device memory is freed once no kernel uses it */
        if (img && img->width)
            gpuseg__wrap(ctx, st, "segmenting %ux%u image", img->width, img->height);
    }
    gpuseg__release(&full);
    gpuseg__release(&labels);
    gpuseg__prep_out_free(&in);
    free(style);
    return st;
}

/* At most this many passes when estimating the diameter: the first at the given diameter (or
 * diam_labels), then at each estimate until one measures within 10% of its pass. */
#define GPUSEG__DIAMETER_PASSES 3

/* The median equivalent diameter of a result's labels (Cellpose utils.diameters). */
static gpuseg_status labels_diameter(gpuseg_ctx *ctx, const gpuseg_image *lab, double *d) {
    size_t npix = (size_t)lab->width * lab->height;
    if (lab->dtype == GPUSEG_DTYPE_U32)
        return gpuseg_labels_diameter(lab->data, lab->height, lab->width, d);
    uint32_t *wide = malloc(npix * sizeof *wide);
    if (!wide)
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "diameter estimate: out of host memory");
    const uint16_t *s = lab->data;
    for (size_t i = 0; i < npix; i++)
        wide[i] = s[i];
    gpuseg_status st = gpuseg_labels_diameter(wide, lab->height, lab->width, d);
    free(wide);
    return st;
}

/* Diameter 0 with a size model, as Cellpose 3.1's models.Cellpose.eval: SizeModel.eval (pass 1
 * for the style, pass 2 at the style diameter whose masks measure the objects), then the
 * segmentation at that measure (gpuseg_segment_params.size_model). */
static gpuseg_status segment_size_model(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *img,
                                        const gpuseg_segment_params *p,
                                        gpuseg_segment_result *result) {
    const gpuseg_size_model *sm = p->size_model;
    const gpuseg_model_info *mi = &net->info;
    if ((uint32_t)mi->nbase[4] != sm->n)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "size model of %u style values for a model of %d (%s): not its size "
                            "model",
                            sm->n, mi->nbase[4], net->model_path);
    gpuseg_segment_params q = *p;
    q.want_style = 1;
    q.want_flows = 0;
    q.estimate_diameter = 0;
    q.size_model = NULL;
    gpuseg_segment_result r1, r2;
    memset(&r2, 0, sizeof r2);
    /* Pass 1: CellposeModel.eval(diameter=None) -> rescale diam_mean / diam_labels. Each pass
     * is a third of the call's progress. */
    gpuseg__progress_span outer = gpuseg__progress_push(ctx, 0.0, 1.0 / 3);
    gpuseg_status st = segment_once(ctx, net, img, &q, &r1);
    gpuseg__progress_pop(ctx, outer);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(ctx, st, "size model: style pass");
    double ds = 0.0, d = 0.0, est = 0.0;
    st = gpuseg_size_model_style_diameter(sm, r1.style, r1.style_len, &ds);
    if (st != GPUSEG_OK) {
        gpuseg__wrap(ctx, st, "size model");
        goto done;
    }
    /* Pass 2 at rescale = size-model diam_mean / ds; segment_once divides the net's diam_mean
     * (float32) by the diameter, so the diameter is scaled when the two diam_means differ. */
    q.want_style = 0;
    q.diameter =
        sm->diam_mean == (double)mi->diam_mean ? ds : ds * (double)mi->diam_mean / sm->diam_mean;
    outer = gpuseg__progress_push(ctx, 1.0 / 3, 2.0 / 3);
    st = segment_once(ctx, net, img, &q, &r2);
    gpuseg__progress_pop(ctx, outer);
    if (st != GPUSEG_OK) {
        gpuseg__wrap(ctx, st, "size model: pass at the style diameter %.2f", ds);
        goto done;
    }
    if ((st = labels_diameter(ctx, r2.labels, &est)) != GPUSEG_OK) {
        gpuseg__wrap(ctx, st, "size model: measuring the masks");
        goto done;
    }
    d = (est == 0.0 || isnan(est)) ? sm->diam_mean : est; /* SizeModel.eval's fallback */
    /* Pass 3: models.Cellpose.eval's cp.eval(diameter=diam), with the caller's parameters. */
    q = *p;
    q.estimate_diameter = 0;
    q.size_model = NULL;
    q.diameter = d;
    outer = gpuseg__progress_push(ctx, 2.0 / 3, 1.0);
    st = segment_once(ctx, net, img, &q, result);
    gpuseg__progress_pop(ctx, outer);
    if (st != GPUSEG_OK) {
        gpuseg__wrap(ctx, st, "size model: pass at the estimated diameter %.2f", d);
        goto done;
    }
    result->passes = 3;
    result->diameter_style = ds;
    result->diameter_first_pass = r1.diameter;
    result->diameter_estimate = est > 0.0 ? est : 0.0;
    result->diameter_estimated = est > 0.0;
    result->seconds_net += r1.seconds_net + r2.seconds_net;
    result->seconds_masks += r1.seconds_masks + r2.seconds_masks;
    gpuseg__progress(ctx, "done", 1, 1, 1.0);
done:
    gpuseg_segment_result_free(&r1);
    gpuseg_segment_result_free(&r2);
    return st;
}

gpuseg_status gpuseg_segment(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *img,
                             const gpuseg_segment_params *params, gpuseg_segment_result *result) {
    gpuseg__clear_error(ctx);
    if (!ctx || !net || !img || !result)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "gpuseg_segment: NULL argument");
    memset(result, 0, sizeof *result);
    gpuseg_segment_params p;
    if (params)
        p = *params;
    else
        gpuseg_segment_params_default(&p);
    if (p.size_model && p.diameter == 0.0)
        return segment_size_model(ctx, net, img, &p, result);
    /* Progress: each pass is an equal share of the call, as many shares as passes may run; a
     * call that stops early (one pass only, or an estimate that agrees) jumps to 1 at its end. */
    const unsigned shares = p.estimate_diameter ? GPUSEG__DIAMETER_PASSES : 1;
    gpuseg__progress_span outer = gpuseg__progress_push(ctx, 0.0, 1.0 / shares);
    gpuseg_status st = gpuseg__check_cancel(ctx, "gpuseg_segment");
    if (st == GPUSEG_OK)
        st = segment_once(ctx, net, img, &p, result);
    gpuseg__progress_pop(ctx, outer);
    if (st != GPUSEG_OK)
        return st;
    if (!p.estimate_diameter) {
        gpuseg__progress(ctx, "done", 1, 1, 1.0);
        return st;
    }
    /* Pass 1 is done at the given diameter (or diam_labels); its masks measure the objects.
     * Cellpose's SizeModel refines its style-regression guess once the same way (the median
     * diameter of the masks segmented at the guess). Here the guess is the model's training
     * diameter, which can be 2-3x off, and masks segmented far from their scale measure large
     * (on dsb2018/dev, 9 px nuclei measured 11.5 px from a pass at 23 px and 9.3 px from a pass
     * at 11.5 px), so the estimate is followed until a pass's masks measure within 10% of its
     * own diameter, for at most GPUSEG__DIAMETER_PASSES passes. */
    const double d1 = result->diameter;
    double d = d1, est = 0.0;
    for (;;) {
        if ((st = labels_diameter(ctx, result->labels, &est)) != GPUSEG_OK) {
            gpuseg_segment_result_free(result);
            return gpuseg__wrap(ctx, st, "estimating the diameter");
        }
        result->diameter_first_pass = d1;
        result->diameter_estimate = est;
        if (!(est > 0.0)) {
            gpuseg__progress(ctx, "done", 1, 1, 1.0);
            return GPUSEG_OK; /* no masks: nothing to measure, this pass stands */
        }
        result->diameter_estimated = 1;
        /* Within 10% the rescale would change by at most ~10%, well inside the size jitter the
         * network is trained with (Cellpose's scale_range 0.5: x0.75..x1.25 around diam_mean),
         * so the masks would change little; keeping this pass saves another network pass. */
        if (fabs(est - d) <= 0.1 * d || result->passes >= GPUSEG__DIAMETER_PASSES) {
            gpuseg__progress(ctx, "done", 1, 1, 1.0);
            return GPUSEG_OK;
        }
        /* The next pass at the estimate. The net keeps its weights and tile buffers (tiles are
         * the same size at any scale), so only the per-image prep and flow buffers are made
         * again. */
        gpuseg_segment_result next;
        p.diameter = est;
        outer = gpuseg__progress_push(ctx, (double)result->passes / shares,
                                      (double)(result->passes + 1) / shares);
        st = gpuseg__check_cancel(ctx, "diameter estimate");
        if (st == GPUSEG_OK)
            st = segment_once(ctx, net, img, &p, &next);
        gpuseg__progress_pop(ctx, outer);
        if (st != GPUSEG_OK) {
            gpuseg_segment_result_free(result);
            return gpuseg__wrap(ctx, st, "pass %u at the estimated diameter %.2f",
                                result->passes + 1, est);
        }
        next.passes = result->passes + 1;
        next.seconds_net += result->seconds_net;
        next.seconds_masks += result->seconds_masks;
        gpuseg_segment_result_free(result);
        *result = next;
        d = est;
    }
}
