/* cli/segment_blocks.c: blockwise `gpuseg segment` (cli/segment_blocks.h, docs/segment.md). */
#include "segment_blocks.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

uint64_t seg_blocks_estimate(uint32_t width, uint32_t height, uint32_t channels,
                             gpuseg_dtype dtype) {
    uint64_t px = (uint64_t)width * height;
    return px * (SEG_BLOCKS_BYTES_PER_PIXEL + (uint64_t)channels * gpuseg_dtype_size(dtype));
}

uint64_t seg_blocks_default_budget(uint64_t dev_bytes) {
    long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
    uint64_t half = pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size / 2 : UINT64_MAX;
    return dev_bytes && dev_bytes < half ? dev_bytes : half;
}

uint32_t seg_blocks_tile(uint32_t block_size) {
    uint32_t t = 512;
    while (t > 16 && block_size % t)
        t /= 2;
    return t;
}

/* The region callback: a new image of the region, read through the reader. */
typedef struct src_user {
    gpuseg_image_region_reader *r;
    uint32_t page;
} src_user;

static gpuseg_status read_region(void *user, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h,
                                 gpuseg_image **out) {
    const src_user *u = user;
    const gpuseg_image_region_info *in = gpuseg_image_region_info_of(u->r);
    gpuseg_image *img = NULL;
    gpuseg_status st = gpuseg_image_create(w, h, in->channels, 1, in->dtype, &img);
    if (st == GPUSEG_OK)
        st = gpuseg_image_region_read(u->r, u->page, x0, y0, w, h, img);
    if (st != GPUSEG_OK) {
        gpuseg_image_free(img);
        img = NULL;
    }
    *out = img;
    return st;
}

gpuseg_status seg_blocks_sample_diameter(gpuseg_ctx *ctx, gpuseg_net *net,
                                         gpuseg_image_region_reader *r,
                                         const gpuseg_segment_params *p,
                                         gpuseg_segment_result *sample, uint32_t *sw,
                                         uint32_t *sh) {
    const gpuseg_image_region_info *in = gpuseg_image_region_info_of(r);
    uint32_t w = in->width < SEG_BLOCKS_SAMPLE ? in->width : SEG_BLOCKS_SAMPLE;
    uint32_t h = in->height < SEG_BLOCKS_SAMPLE ? in->height : SEG_BLOCKS_SAMPLE;
    src_user u = {r, p->page};
    gpuseg_image *img = NULL;
    gpuseg_status st = read_region(&u, (in->width - w) / 2, (in->height - h) / 2, w, h, &img);
    if (st != GPUSEG_OK)
        return st;
    gpuseg_segment_params q = *p;
    q.page = 0;
    q.want_flows = 0;
    q.want_style = 0;
    gpuseg_segment_result res;
    memset(&res, 0, sizeof res);
    st = gpuseg_segment(ctx, net, img, &q, &res);
    *sample = res;
    sample->labels = NULL; /* only the numbers are kept */
    sample->flows = NULL;
    sample->style = NULL;
    gpuseg_segment_result_free(&res);
    gpuseg_image_free(img);
    *sw = w;
    *sh = h;
    return st;
}

/* The labels sink: into the tiled writer, or into the assembled image. */
typedef struct sink_user {
    gpuseg_labels_tiff *tiff;
    gpuseg_image *labels; /* U32 */
} sink_user;

static gpuseg_status write_labels(void *user, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h,
                                  const uint32_t *lab) {
    sink_user *u = user;
    if (u->tiff)
        return gpuseg_labels_tiff_write_block(u->tiff, x0, y0, w, h, lab);
    uint32_t *d = u->labels->data;
    for (uint32_t y = 0; y < h; y++)
        memcpy(d + (size_t)(y0 + y) * u->labels->width + x0, lab + (size_t)y * w,
               (size_t)w * sizeof *lab);
    return GPUSEG_OK;
}

/* uint32 labels whose values fit 16 bits rewritten as uint16 in the same buffer (each value
 * moves to a lower address, read before it is overwritten), as gpuseg_segment returns them. */
static void narrow_u16(gpuseg_image *lab) {
    size_t n = (size_t)lab->width * lab->height;
    unsigned char *b = lab->data; /* char access: the two views alias */
    for (size_t i = 0; i < n; i++) {
        uint32_t v;
        memcpy(&v, b + 4 * i, sizeof v);
        uint16_t v16 = (uint16_t)v;
        memcpy(b + 2 * i, &v16, sizeof v16);
    }
    lab->dtype = GPUSEG_DTYPE_U16;
}

gpuseg_status seg_blocks_run(gpuseg_ctx *ctx, gpuseg_net *net, gpuseg_image_region_reader *r,
                             const gpuseg_segment_params *p, const gpuseg_blocks_params *bp,
                             const char *tiff_out, unsigned write_flags, gpuseg_image **labels,
                             gpuseg_blocks_result *res) {
    const gpuseg_image_region_info *in = gpuseg_image_region_info_of(r);
    src_user su = {r, p->page};
    gpuseg_block_source src = {in->width, in->height, read_region, &su};
    sink_user k = {NULL, NULL};
    gpuseg_status st;
    *labels = NULL;
    if (tiff_out)
        st = gpuseg_labels_tiff_open(tiff_out, in->width, in->height, GPUSEG_DTYPE_U32,
                                     seg_blocks_tile(bp->block_size), write_flags, &k.tiff);
    else
        st = gpuseg_image_create(in->width, in->height, 1, 1, GPUSEG_DTYPE_U32, &k.labels);
    if (st != GPUSEG_OK)
        return st;
    if (k.labels) /* blocks whose masks are all too big write zeros: start from background */
        memset(k.labels->data, 0, (size_t)in->width * in->height * sizeof(uint32_t));
    gpuseg_segment_params q = *p;
    q.page = 0; /* the regions read are one page */
    q.want_flows = 0;
    q.want_style = 0;
    st = gpuseg_segment_blocks(ctx, net, &src, &q, bp, write_labels, &k, res);
    if (k.tiff) {
        if (st == GPUSEG_OK)
            st = gpuseg_labels_tiff_commit(k.tiff); /* frees the writer in every case */
        else
            gpuseg_labels_tiff_abort(k.tiff);
        return st;
    }
    if (st != GPUSEG_OK) {
        gpuseg_image_free(k.labels);
        return st;
    }
    if (res->n_masks <= UINT16_MAX)
        narrow_u16(k.labels);
    *labels = k.labels;
    return GPUSEG_OK;
}
