/* prep/prep.c: the whole way in for one image, as Cellpose 3.1's CellposeModel.eval + run_net
 * do it: channels -> normalise (+ invert) -> resize by the rescale factor -> pad -> tiles. The
 * result stays on the device for the network; the geometry tells the way back. */
#include <string.h>

#include "prep/prep_internal.h"

void gpuseg__prep_out_free(gpuseg__prep_out *out) {
    if (!out)
        return;
    gpuseg__release(&out->image);
    gpuseg__release(&out->tiles);
    gpuseg__tile_geom_free(&out->geom);
}

gpuseg_status gpuseg__prep_image(gpuseg_ctx *ctx, const gpuseg_image *img,
                                 const gpuseg__prep_params *p, gpuseg__prep_out *out) {
    memset(out, 0, sizeof *out);
    if (!img || !p)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "prep: no image or parameters");
    if (p->invert && !p->normalize)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "prep: invert needs normalisation (as in Cellpose)");
    cl_mem planes = NULL;
    gpuseg_status st;
    if ((st = gpuseg__prep_channels(ctx, img, p, &planes)))
        return st;
    const uint32_t h = img->height, w = img->width;
    if (p->normalize && (st = gpuseg__prep_normalize(ctx, planes, 2, h, w, p->invert, p->pct_lo,
                                                     p->pct_hi, &out->stats)))
        goto fail;
    if ((st =
             gpuseg__tile_geometry(ctx, h, w, p->rescale, p->augment, p->tile_overlap, &out->geom)))
        goto fail;
    const gpuseg__tile_geom *g = &out->geom;
    if (g->lyr == h && g->lxr == w) {
        out->image = planes; /* rescale 1 (or a size that truncates back): no resize */
        planes = NULL;
    } else {
        size_t bytes;
        if (!gpuseg__mul4_size(2, g->lyr, g->lxr, sizeof(float), &bytes)) {
            st = gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "prep: resized image overflows");
            goto fail;
        }
        if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, bytes, "prep: resized image",
                                 &out->image)) ||
            (st = gpuseg__resize(ctx, planes, 2, h, w, out->image, g->lyr, g->lxr,
                                 GPUSEG__RESIZE_CV)))
            goto fail;
        gpuseg__release(&planes);
    }
    if (p->no_tiles)
        return GPUSEG_OK;
    size_t tbytes;
    if (!gpuseg__mul4_size((size_t)g->ny * g->nx, 2, g->th, (size_t)g->tw * sizeof(float),
                           &tbytes)) {
        st = gpuseg__fail(ctx, GPUSEG_TOO_LARGE, "prep: tile batch overflows");
        goto fail;
    }
    if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, tbytes, "prep: tiles", &out->tiles)) ||
        (st = gpuseg__tiles_extract(ctx, out->image, 2, g, 0, g->ny * g->nx, out->tiles)))
        goto fail;
    return GPUSEG_OK;
fail:
    gpuseg__release(&planes);
    gpuseg__prep_out_free(out);
    return st;
}
