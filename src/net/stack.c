/* net/stack.c: Z stacks as Cellpose 3.1 CellposeModel.eval(do_3D=False, stitch_threshold=T):
 * the stack normalised as a whole (norm3D, on the host), each plane segmented in 2-D with
 * min_size off, the planes' masks stitched (utils.stitch3D) and the volume's holes filled and
 * small masks removed (utils.fill_holes_and_remove_small_masks). See gpuseg/volume.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "gpuseg/volume.h"
#include "net/net_internal.h"

static float load_sample(const gpuseg_image *img, size_t i) {
    switch (img->dtype) {
    case GPUSEG_DTYPE_U8:
        return (float)((const uint8_t *)img->data)[i];
    case GPUSEG_DTYPE_U16:
        return (float)((const uint16_t *)img->data)[i];
    case GPUSEG_DTYPE_U32:
        return (float)((const uint32_t *)img->data)[i];
    case GPUSEG_DTYPE_I32:
        return (float)((const int32_t *)img->data)[i];
    default:
        return ((const float *)img->data)[i];
    }
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* numpy.percentile's linear rule on n sorted float32 samples, in float32 as numpy 2 computes it
 * for float32 data (the same arithmetic as the device's prep_finalize). */
static float percentile(const float *sorted, size_t n, float pct) {
    volatile float q = pct / 100.0f;
    volatile float vi = (float)(n - 1) * q;
    if ((double)vi >= (double)(n - 1))
        return sorted[n - 1];
    size_t i0 = (size_t)floor((double)vi);
    float t = (float)((double)vi - (double)i0);
    float a = sorted[i0], b = sorted[i0 + 1];
    float diff = b - a;
    volatile float prod = diff * (t >= 0.5f ? 1.0f - t : t);
    return t >= 0.5f ? b - prod : a + prod;
}

/* Cellpose's convert_image (channels [chan, chan2] -> 2 planes) and normalize_img(norm3D=True)
 * over the whole stack: a new float32 image of 2 channels, Z pages (p->normalize 0: the
 * channels only). */
gpuseg_status gpuseg__normalize_stack(gpuseg_ctx *ctx, const gpuseg_image *img,
                                      const gpuseg_segment_params *p, gpuseg_image **out) {
    const uint32_t nc = img->channels, Z = img->pages, H = img->height, W = img->width;
    int sel[2];
    if (nc == 1) {
        sel[0] = 0;
        sel[1] = -1;
    } else if (p->chan == 0) {
        sel[0] = -2; /* grey: the mean of all channels */
        sel[1] = -1;
    } else if (p->chan < 0 || p->chan2 < 0 || (uint32_t)p->chan > nc || (uint32_t)p->chan2 > nc) {
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "channels [%d, %d] asked of an image with %u channels", p->chan,
                            p->chan2, nc);
    } else {
        sel[0] = p->chan - 1;
        sel[1] = p->chan2 > 0 ? p->chan2 - 1 : -1;
    }
    gpuseg_image *x = NULL;
    gpuseg_status st = gpuseg_image_create(W, H, 2, Z, GPUSEG_DTYPE_F32, &x);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(ctx, st, "normalising the stack");
    float *v = x->data;
    const size_t n = (size_t)Z * H * W;
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < 2; c++) {
            float s = 0.0f;
            if (sel[c] >= 0) {
                s = load_sample(img, i * nc + (size_t)sel[c]);
            } else if (sel[c] == -2) {
                s = load_sample(img, i * nc);
                for (uint32_t k = 1; k < nc; k++)
                    s = s + load_sample(img, i * nc + k);
                s = s / (float)nc;
            }
            if (!isfinite(s)) {
                gpuseg_image_free(x);
                return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                                    "normalising the stack: plane %zu holds NaN or infinite "
                                    "samples",
                                    i / ((size_t)H * W));
            }
            v[2 * i + (size_t)c] = s;
        }
    /* normalize99(downsample=True): above 224^3 samples, every (Z // 50)-th plane, (H // 224)-th
     * row and (W // 224)-th column, from 0 */
    size_t sz = 1, sy = 1, sx = 1;
    if (n > 224ull * 224ull * 224ull) {
        sz = Z / 50 > 1 ? Z / 50 : 1;
        sy = H / 224 > 1 ? H / 224 : 1;
        sx = W / 224 > 1 ? W / 224 : 1;
    }
    const size_t ns = ((Z + sz - 1) / sz) * ((H + sy - 1) / sy) * ((W + sx - 1) / sx);
    float *s = malloc(ns * sizeof *s);
    if (!s) {
        gpuseg_image_free(x);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "normalising the stack: %zu samples", ns);
    }
    for (int c = 0; c < 2 && p->normalize; c++) {
        float mn = v[c], mx = v[c];
        for (size_t i = 0; i < n; i++) {
            float t = v[2 * i + (size_t)c];
            mn = t < mn ? t : mn;
            mx = t > mx ? t : mx;
        }
        if (!(mx > mn))
            continue; /* np.ptp == 0: left as is, never inverted */
        size_t k = 0;
        for (size_t z = 0; z < Z; z += sz)
            for (size_t y = 0; y < H; y += sy)
                for (size_t xx = 0; xx < W; xx += sx)
                    s[k++] = v[2 * ((z * H + y) * W + xx) + (size_t)c];
        qsort(s, k, sizeof *s, cmp_float);
        const float lo = percentile(s, k, p->norm_lo), hi = percentile(s, k, p->norm_hi);
        const float d = hi - lo;
        for (size_t i = 0; i < n; i++) {
            float *t = &v[2 * i + (size_t)c];
            *t = d > 1e-3f ? (*t - lo) / d : 0.0f;
            if (p->invert)
                *t = 1.0f - *t;
        }
    }
    free(s);
    *out = x;
    return GPUSEG_OK;
}

/* Appends plane z's results to the volume's. */
static gpuseg_status take_plane(gpuseg_ctx *ctx, const gpuseg_segment_result *r, uint32_t z,
                                uint32_t Z, size_t npix, uint32_t *vol,
                                gpuseg_segment_result *out) {
    const gpuseg_image *lab = r->labels;
    for (size_t i = 0; i < npix; i++)
        vol[(size_t)z * npix + i] = lab->dtype == GPUSEG_DTYPE_U32
                                        ? ((const uint32_t *)lab->data)[i]
                                        : ((const uint16_t *)lab->data)[i];
    if (r->flows) {
        if (!out->flows && !(out->flows = malloc((size_t)Z * 3 * npix * sizeof(float))))
            return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "stack: flows of %u planes", Z);
        memcpy(out->flows + (size_t)z * 3 * npix, r->flows, 3 * npix * sizeof(float));
    }
    if (r->style) {
        if (!out->style && !(out->style = malloc((size_t)Z * r->style_len * sizeof(float))))
            return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "stack: styles of %u planes", Z);
        memcpy(out->style + (size_t)z * r->style_len, r->style, r->style_len * sizeof(float));
        out->style_len = r->style_len;
    }
    out->diameter = r->diameter;
    out->rescale = r->rescale;
    out->niter = r->niter;
    out->batch_size = r->batch_size;
    out->n_tiles += r->n_tiles;
    out->passes += r->passes;
    out->seconds_net += r->seconds_net;
    out->seconds_masks += r->seconds_masks;
    return GPUSEG_OK;
}

/* One diameter for the stack: estimated on the middle plane when asked (sets p->diameter and
 * turns estimation off), as a share [0, share] of the call. */
gpuseg_status gpuseg__stack_diameter(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *x,
                                     gpuseg_segment_params *p, double share,
                                     gpuseg_segment_result *out) {
    if (p->diameter > 0 || (!p->estimate_diameter && !p->size_model))
        return GPUSEG_OK;
    gpuseg_segment_params q = *p;
    q.page = x->pages / 2;
    q.want_flows = q.want_style = 0;
    gpuseg_segment_result r;
    gpuseg__progress_span sp = gpuseg__progress_push(ctx, 0.0, share);
    gpuseg_status st = gpuseg_segment(ctx, net, x, &q, &r);
    gpuseg__progress_pop(ctx, sp);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(ctx, st, "estimating the diameter on plane %u", q.page);
    p->diameter = r.diameter;
    p->estimate_diameter = 0;
    p->size_model = NULL;
    out->diameter_estimated = r.diameter_estimated;
    out->diameter_first_pass = r.diameter_first_pass;
    out->diameter_estimate = r.diameter_estimate;
    out->diameter_style = r.diameter_style;
    out->passes = r.passes;
    out->seconds_net = r.seconds_net;
    out->seconds_masks = r.seconds_masks;
    gpuseg_segment_result_free(&r);
    return GPUSEG_OK;
}

/* The stitched volume as the result's label image (uint16 unless a label needs uint32). */
gpuseg_status gpuseg__volume_labels(gpuseg_ctx *ctx, const uint32_t *vol, uint32_t Z, uint32_t H,
                                    uint32_t W, uint32_t n_masks, gpuseg_image **out) {
    gpuseg_dtype dt = n_masks > 65535 ? GPUSEG_DTYPE_U32 : GPUSEG_DTYPE_U16;
    gpuseg_status st = gpuseg_image_create(W, H, 1, Z, dt, out);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(ctx, st, "stack labels");
    const size_t n = (size_t)Z * H * W;
    if (dt == GPUSEG_DTYPE_U32)
        memcpy((*out)->data, vol, n * sizeof *vol);
    else
        for (size_t i = 0; i < n; i++)
            ((uint16_t *)(*out)->data)[i] = (uint16_t)vol[i];
    return GPUSEG_OK;
}

gpuseg_status gpuseg_segment_stack(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *img,
                                   const gpuseg_segment_params *params, double stitch_threshold,
                                   gpuseg_segment_result *result) {
    gpuseg__clear_error(ctx);
    if (!ctx || !net || !img || !result)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "gpuseg_segment_stack: NULL argument");
    memset(result, 0, sizeof *result);
    if (!isfinite(stitch_threshold) || !(stitch_threshold > 0.0))
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_segment_stack: stitch threshold %g (an IoU > 0)",
                            stitch_threshold);
    gpuseg_segment_params p;
    if (params)
        p = *params;
    else
        gpuseg_segment_params_default(&p);
    if (img->pages <= 1) { /* Cellpose: one plane is a 2-D image */
        p.page = 0;
        return gpuseg_segment(ctx, net, img, &p, result);
    }
    const uint32_t Z = img->pages, H = img->height, W = img->width;
    const size_t npix = (size_t)H * W;
    gpuseg_image *x = NULL;
    uint32_t *vol = NULL;
    gpuseg_status st = gpuseg__check_cancel(ctx, "gpuseg_segment_stack");
    if (st == GPUSEG_OK && p.normalize) {
        gpuseg__progress(ctx, "normalising", 0, 0, 0.0);
        if ((st = gpuseg__normalize_stack(ctx, img, &p, &x)) == GPUSEG_OK) {
            p.normalize = 0; /* done over the stack */
            p.invert = 0;
            p.chan = 1;
            p.chan2 = 2;
        }
    }
    const gpuseg_image *planes = x ? x : img;
    if (st == GPUSEG_OK && !(vol = malloc((size_t)Z * npix * sizeof *vol)))
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "gpuseg_segment_stack: %u x %u x %u labels", Z,
                          H, W);
    /* shares of the call: the diameter pass (when estimated) as one more plane, the planes,
     * then the stitching */
    const int est = p.diameter <= 0 && (p.estimate_diameter || p.size_model);
    const double span = 0.97, unit = span / (Z + (est ? 1 : 0)), first = est ? unit : 0.0;
    if (st == GPUSEG_OK)
        st = gpuseg__stack_diameter(ctx, net, planes, &p, first, result);
    const int32_t min_size = p.min_size;
    p.min_size = -1; /* Cellpose: min_size off per plane when stitching */
    for (uint32_t z = 0; st == GPUSEG_OK && z < Z; z++) {
        if ((st = gpuseg__check_cancel(ctx, "gpuseg_segment_stack")) != GPUSEG_OK)
            break;
        gpuseg__progress(ctx, "plane", z, Z, 0.0);
        gpuseg_segment_params q = p;
        q.page = z;
        gpuseg_segment_result r;
        gpuseg__progress_span sp =
            gpuseg__progress_push(ctx, first + unit * z, first + unit * (z + 1));
        st = gpuseg_segment(ctx, net, planes, &q, &r);
        gpuseg__progress_pop(ctx, sp);
        if (st != GPUSEG_OK) {
            st = gpuseg__wrap(ctx, st, "plane %u of 0..%u", z, Z - 1);
            break;
        }
        st = take_plane(ctx, &r, z, Z, npix, vol, result);
        gpuseg_segment_result_free(&r);
    }
    gpuseg_image_free(x);
    uint32_t nm = 0;
    if (st == GPUSEG_OK) {
        gpuseg__progress(ctx, "stitching", 0, 0, span);
        if ((st = gpuseg_labels_stitch3d(vol, Z, H, W, stitch_threshold, NULL)) != GPUSEG_OK ||
            (st = gpuseg_labels_fill_holes_3d(vol, Z, H, W, min_size, &nm)) != GPUSEG_OK)
            st = gpuseg__wrap(ctx, st, "stitching %u planes", Z);
    }
    if (st == GPUSEG_OK)
        st = gpuseg__volume_labels(ctx, vol, Z, H, W, nm, &result->labels);
    free(vol);
    if (st != GPUSEG_OK) {
        gpuseg_segment_result_free(result);
        return st;
    }
    result->n_masks = nm;
    gpuseg__progress(ctx, "done", 1, 1, 1.0);
    return GPUSEG_OK;
}
