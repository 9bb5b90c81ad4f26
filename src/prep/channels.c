/* prep/channels.c: Cellpose's channel choice (convert_image + reshape with channels=[chan, chan2],
 * or channels=None) for one page of a host image: the raw interleaved samples are uploaded as
 * they are and converted to a float32 [2, H, W] device tensor by kernels/prep.cl. Also the
 * default parameters of the whole pre-processing stage. */
#include "prep/prep_internal.h"

void gpuseg__prep_params_default(gpuseg__prep_params *p) {
    p->chan = 0;
    p->chan2 = 0;
    p->normalize = 1;
    p->pct_lo = 1.0f;
    p->pct_hi = 99.0f;
    p->invert = 0;
    p->rescale = 1.0;
    p->augment = 0;
    p->tile_overlap = 0.1;
    p->page = 0;
    p->no_tiles = 0;
}

/* Selector of each output plane: >= 0 channel index, -1 zeros, -2 mean of all channels. */
static gpuseg_status selectors(gpuseg_ctx *ctx, uint32_t nc, int chan, int chan2, int sel[2]) {
    if (chan < GPUSEG__CHAN_NONE || chan > 4 || chan2 < 0 || chan2 > 4)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "channels [%d, %d]: chan must be 0..4 (0 = grey, 1 = red, 2 = green, "
                            "3 = blue) and chan2 0..4",
                            chan, chan2);
    if (nc == 1) { /* Cellpose: a single channel is always [data, zeros] */
        sel[0] = 0;
        sel[1] = -1;
        return GPUSEG_OK;
    }
    if (chan == GPUSEG__CHAN_NONE) { /* first nchan = 2 channels */
        sel[0] = 0;
        sel[1] = 1;
        return GPUSEG_OK;
    }
    if (chan == 0) { /* grey: mean over all channels; chan2 is ignored */
        sel[0] = -2;
        sel[1] = -1;
        return GPUSEG_OK;
    }
    if ((uint32_t)chan > nc || (uint32_t)chan2 > nc)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "channels [%d, %d] asked of an image with %u channels", chan, chan2,
                            nc);
    sel[0] = chan - 1;
    sel[1] = chan2 > 0 ? chan2 - 1 : -1;
    return GPUSEG_OK;
}

gpuseg_status gpuseg__prep_channels(gpuseg_ctx *ctx, const gpuseg_image *img,
                                    const gpuseg__prep_params *p, cl_mem *out) {
    *out = NULL;
    if (!img || !img->data || !p)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "prep: no image");
    if (img->width == 0 || img->height == 0 || img->channels == 0 || img->channels > 4 ||
        img->pages == 0)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "prep: image of %u x %u pixels, %u channels, %u pages is empty or "
                            "malformed",
                            img->width, img->height, img->channels, img->pages);
    if (p->page >= img->pages)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "prep: page %u of a %u-page image",
                            p->page, img->pages);
    const size_t es = gpuseg_dtype_size(img->dtype);
    if (es == 0)
        return gpuseg__fail(ctx, GPUSEG_UNSUPPORTED, "prep: unknown sample type %d",
                            (int)img->dtype);
    size_t npix, raw, planes;
    if ((uint64_t)img->width * img->height > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "prep: %u x %u pixels exceed the limit",
                            img->width, img->height);
    if (!gpuseg__mul_size(img->width, img->height, &npix) ||
        !gpuseg__mul_size(npix, (size_t)img->channels * es, &raw) ||
        !gpuseg__mul_size(npix, 2 * sizeof(float), &planes))
        return gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "prep: image size overflows");
    int sel[2] = {0, -1};
    gpuseg_status st = selectors(ctx, img->channels, p->chan, p->chan2, sel);
    if (st)
        return st;
    cl_mem src = NULL, dst = NULL;
    cl_kernel k;
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_ONLY, raw, "prep: raw image", &src)) ||
        (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, planes, "prep: image planes", &dst)))
        goto fail;
    const unsigned char *page = (const unsigned char *)img->data + raw * p->page;
    cl_int err = clEnqueueWriteBuffer(ctx->queue, src, CL_TRUE, 0, raw, page, 0, NULL, NULL);
    if (err != CL_SUCCESS) {
        st = gpuseg__fail_cl(ctx, err, "prep: uploading the image");
        goto fail;
    }
    cl_int dtype = (cl_int)img->dtype, s0 = sel[0], s1 = sel[1];
    cl_uint n = (cl_uint)npix, nc = img->channels;
    if ((st = gpuseg__kernel(ctx, "prep", "prep_channels", &k)) ||
        (st = gpuseg__set_args(ctx, k, 7, sizeof(cl_mem), &src, sizeof dtype, &dtype, sizeof n, &n,
                               sizeof nc, &nc, sizeof s0, &s0, sizeof s1, &s1, sizeof(cl_mem),
                               &dst)) ||
        (st = gpuseg__run(ctx, k, 1, (size_t[]){npix}, (size_t[]){64})))
        goto fail;
    /* The kernel must have read the upload before src goes; releasing is deferred by OpenCL
     * until the enqueued kernel is done, so no wait is needed here. */
    gpuseg__release(&src);
    *out = dst;
    return GPUSEG_OK;
fail:
    gpuseg__release(&src);
    gpuseg__release(&dst);
    return st;
}
