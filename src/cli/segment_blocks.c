/* cli/segment_blocks.c: blockwise `gpuseg segment` (cli/segment_blocks.h, docs/segment.md). */
#include "segment_blocks.h"

#include <signal.h>
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

/* ---- the streamed run: tiled TIFF labels, polygon files, resumable state ---------------- */

typedef struct stream_user {
    gpuseg_labels_tiff *tiff;
    seg_state *state;
    gpuseg_polygons_part *part[SEG_PARTS];
    unsigned char *z; /* the last block's labels, deflated for the journal */
    size_t zcap, zlen;
} stream_user;

static gpuseg_status stream_labels(void *user, uint32_t x0, uint32_t y0, uint32_t w, uint32_t h,
                                   const uint32_t *lab) {
    stream_user *u = user;
    gpuseg_status st = gpuseg_labels_tiff_write_block(u->tiff, x0, y0, w, h, lab);
    if (st == GPUSEG_OK)
        st = seg_state_deflate(lab, (size_t)w * h, &u->z, &u->zcap, &u->zlen);
    return st;
}

/* The outline polygons of the masks new in a block (whole inside its window), in image
 * coordinates, appended to each part file. */
static gpuseg_status stream_polygons(stream_user *u, const gpuseg_blocks_event *ev) {
    gpuseg_image win = {ev->width, ev->height, 1, 1, GPUSEG_DTYPE_U32, (void *)ev->labels};
    gpuseg_polygons *poly = NULL;
    gpuseg_status st = gpuseg_labels_polygons(&win, &poly);
    if (st != GPUSEG_OK)
        return st;
    if (poly->n != ev->n_new) {
        gpuseg_polygons_free(poly);
        return cli_set_error(GPUSEG_INTERNAL, "block %u: %u polygons for %u new masks",
                             ev->block + 1, poly->n, ev->n_new);
    }
    for (size_t i = 0; i < poly->start[poly->n]; i++) {
        poly->xy[2 * i] += (int32_t)ev->x0;
        poly->xy[2 * i + 1] += (int32_t)ev->y0;
    }
    for (int k = 0; k < SEG_PARTS && st == GPUSEG_OK; k++)
        if (u->part[k])
            st = gpuseg_polygons_part_append(u->part[k], poly);
    gpuseg_polygons_free(poly);
    return st;
}

static gpuseg_status stream_event(void *user, const gpuseg_blocks_event *ev) {
    stream_user *u = user;
    if (ev->block == GPUSEG_BLOCKS_NORM)
        return seg_state_put_norm(u->state, ev->norm);
    gpuseg_status st = GPUSEG_OK;
    uint64_t len[SEG_PARTS] = {0, 0, 0};
    if (ev->n_new)
        st = stream_polygons(u, ev);
    for (int k = 0; k < SEG_PARTS && st == GPUSEG_OK; k++)
        if (u->part[k])
            st = gpuseg_polygons_part_sync(u->part[k], &len[k]);
    if (st == GPUSEG_OK)
        st = seg_state_put_block(u->state, ev->block, u->z, u->zlen, ev->first_pixel, ev->n_new,
                                 ev->n_too_big, ev->n_tiles_run, len);
    /* test hook: GPUSEG_TEST_KILL_AFTER_BLOCKS=N kills the process (SIGKILL) once N blocks are
     * journaled, as a crash or the OOM killer would */
    const char *kill_at = getenv("GPUSEG_TEST_KILL_AFTER_BLOCKS");
    if (st == GPUSEG_OK && kill_at && strtoul(kill_at, NULL, 10) == (unsigned long)ev->block + 1)
        raise(SIGKILL);
    return st;
}

/* The finished blocks of the state written again into the new TIFF. */
static gpuseg_status replay(stream_user *u, uint32_t W, uint32_t H, uint32_t bs) {
    const uint32_t done = seg_state_blocks(u->state), nbx = (W + bs - 1) / bs;
    if (!done)
        return GPUSEG_OK;
    uint32_t *lab = malloc((size_t)bs * bs * sizeof *lab);
    if (!lab)
        return cli_set_error(GPUSEG_OUT_OF_MEMORY, "--resume: out of memory");
    gpuseg_status st = GPUSEG_OK;
    for (uint32_t k = 0; k < done && st == GPUSEG_OK; k++) {
        const uint32_t y0 = (k / nbx) * bs, x0 = (k % nbx) * bs;
        const uint32_t h = H - y0 < bs ? H - y0 : bs, w = W - x0 < bs ? W - x0 : bs;
        if ((st = seg_state_block_labels(u->state, k, w, h, lab)) == GPUSEG_OK)
            st = gpuseg_labels_tiff_write_block(u->tiff, x0, y0, w, h, lab);
    }
    free(lab);
    return st;
}

gpuseg_status seg_blocks_stream(gpuseg_ctx *ctx, gpuseg_net *net, gpuseg_image_region_reader *r,
                                const gpuseg_segment_params *p, const gpuseg_blocks_params *bp,
                                const char *tiff_out, const char *const part_out[SEG_PARTS],
                                unsigned write_flags, seg_state *state, gpuseg_blocks_result *res) {
    static const gpuseg_polygons_format fmt[SEG_PARTS] = {GPUSEG_POLYGONS_TXT, GPUSEG_POLYGONS_ROIS,
                                                          GPUSEG_POLYGONS_GEOJSON};
    const gpuseg_image_region_info *in = gpuseg_image_region_info_of(r);
    src_user su = {r, p->page};
    gpuseg_block_source src = {in->width, in->height, read_region, &su};
    stream_user u;
    memset(&u, 0, sizeof u);
    u.state = state;
    memset(res, 0, sizeof *res);
    if (part_out[SEG_PART_ROIS] && part_out[SEG_PART_ROIS][0] &&
        (in->width > 60001 || in->height > 60001)) /* refused now rather than hours later */
        return cli_set_error(GPUSEG_UNSUPPORTED,
                             "%s: the image is %ux%u; ImageJ ROIs hold coordinates up to 60000",
                             part_out[SEG_PART_ROIS], in->width, in->height);
    gpuseg_status st =
        gpuseg_labels_tiff_open(tiff_out, in->width, in->height, GPUSEG_DTYPE_U32,
                                seg_blocks_tile(bp->block_size), write_flags, &u.tiff);
    if (st != GPUSEG_OK)
        return st;
    char path[4300];
    for (int k = 0; k < SEG_PARTS && st == GPUSEG_OK; k++)
        if (part_out[k] && part_out[k][0]) {
            seg_state_part_path(state, k, path, sizeof path);
            st = gpuseg_polygons_part_open(path, fmt[k], seg_state_part_length(state, k),
                                           &u.part[k]);
        }
    if (st == GPUSEG_OK)
        st = replay(&u, in->width, in->height, bp->block_size);
    gpuseg_blocks_params b = *bp;
    b.on_event = stream_event;
    b.event_user = &u;
    b.norm = seg_state_norm(state);
    b.first_block = seg_state_blocks(state);
    b.known_masks = seg_state_masks(state, &b.n_known);
    uint32_t big0;
    uint64_t tiles0;
    seg_state_counters(state, &big0, &tiles0);
    gpuseg_segment_params q = *p;
    q.page = 0; /* the regions read are one page */
    q.want_flows = 0;
    q.want_style = 0;
    if (st == GPUSEG_OK)
        st = gpuseg_segment_blocks(ctx, net, &src, &q, &b, stream_labels, &u, res);
    if (st == GPUSEG_OK) { /* the counters of the whole run, as an uninterrupted one gives them */
        res->n_blocks += b.first_block;
        res->n_too_big += big0;
        res->n_tiles_run += tiles0;
    }
    for (int k = 0; k < SEG_PARTS; k++) {
        if (st == GPUSEG_OK && u.part[k])
            st = gpuseg_polygons_part_publish(u.part[k], part_out[k], write_flags);
        gpuseg_polygons_part_close(u.part[k]);
    }
    free(u.z);
    if (st == GPUSEG_OK)
        return gpuseg_labels_tiff_commit(u.tiff); /* frees the writer in every case */
    gpuseg_labels_tiff_abort(u.tiff);
    return st;
}
