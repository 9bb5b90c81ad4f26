/* net/volume3d.c: Cellpose 3.1 CellposeModel.eval(x, do_3D=True): the stack normalised as a whole
 * (norm3D), resized (YX by the rescale factor, Z by anisotropy x rescale), the 2-D network run on
 * every YX, ZX and ZY slice (core.run_3D), the three views' flows summed into dZ, dY, dX and
 * cellprob, resized back, optionally smoothed (scipy gaussian_filter, flow3D_smooth), and the
 * 3-D masks (gpuseg_flows_to_masks3d). See gpuseg/volume.h and docs/segment.md ("Z stacks").
 *
 * Memory (host; the device holds one slice's tiles and maps at a time): the combined flows
 * yf = float32 [4][Z'][H'][W'] at the network's scale (16 bytes a voxel) are the only volume-sized
 * float buffer of the network phase besides the resized input (8 bytes a voxel); each slice's
 * maps are added into yf as they come and dropped. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/flows.h"
#include "gpuseg/volume.h"
#include "net/net_internal.h"
#include "prep/prep_internal.h"

/* Cellpose's views: run_3D's p = 0 (YX planes), 1 (planes at fixed Y: Z x X images) and 2 (planes
 * at fixed X: Z x Y images), in its order (the cellprob sum is rounded in that order). */
enum { VIEW_YX = 0, VIEW_ZX = 1, VIEW_ZY = 2 };

typedef struct vol_dims {
    uint32_t Z, H, W;
} vol_dims;

static size_t nvox(vol_dims d) {
    return (size_t)d.Z * d.H * d.W;
}

/* The slice s of view v of the planar volume x = [nch][Z][H][W] into buf = [nch][h][w]. */
static void slice_get(const float *x, uint32_t nch, vol_dims d, int v, uint32_t s, float *buf) {
    const size_t n = nvox(d), hw = (size_t)d.H * d.W;
    for (uint32_t c = 0; c < nch; c++) {
        const float *xc = x + c * n;
        if (v == VIEW_YX) {
            memcpy(buf, xc + s * hw, hw * sizeof *buf);
            buf += hw;
        } else if (v == VIEW_ZX) {
            for (uint32_t z = 0; z < d.Z; z++, buf += d.W)
                memcpy(buf, xc + z * hw + (size_t)s * d.W, d.W * sizeof *buf);
        } else {
            for (uint32_t z = 0; z < d.Z; z++)
                for (uint32_t y = 0; y < d.H; y++)
                    *buf++ = xc[z * hw + (size_t)y * d.W + s];
        }
    }
}

/* The inverse of slice_get: buf = [nch][h][w] written into slice s of view v of x. */
static void slice_put(float *x, uint32_t nch, vol_dims d, int v, uint32_t s, const float *buf) {
    const size_t n = nvox(d), hw = (size_t)d.H * d.W;
    for (uint32_t c = 0; c < nch; c++) {
        float *xc = x + c * n;
        if (v == VIEW_YX) {
            memcpy(xc + s * hw, buf, hw * sizeof *buf);
            buf += hw;
        } else if (v == VIEW_ZX) {
            for (uint32_t z = 0; z < d.Z; z++, buf += d.W)
                memcpy(xc + z * hw + (size_t)s * d.W, buf, d.W * sizeof *buf);
        } else {
            for (uint32_t z = 0; z < d.Z; z++)
                for (uint32_t y = 0; y < d.H; y++)
                    xc[z * hw + (size_t)y * d.W + s] = *buf++;
        }
    }
}

/* Adds the network's maps m = [3][h][w] (flow along the image's rows, along its columns,
 * cellprob) of slice s of view v into yf = [4][Z][H][W] (dZ, dY, dX, cellprob) as run_3D does. */
static void slice_add(float *yf, vol_dims d, int v, uint32_t s, const float *m) {
    const size_t n = nvox(d), hw = (size_t)d.H * d.W;
    /* the yf channel that the image's row flow and column flow go to */
    const int cr = v == VIEW_YX ? 1 : 0, cc = v == VIEW_ZY ? 1 : 2;
    float *fr = yf + cr * n, *fc = yf + cc * n, *fp = yf + 3 * n;
    if (v == VIEW_YX) {
        const float *m0 = m, *m1 = m + hw, *m2 = m + 2 * hw;
        const size_t o = (size_t)s * hw;
        for (size_t i = 0; i < hw; i++) {
            fr[o + i] += m0[i];
            fc[o + i] += m1[i];
            fp[o + i] += m2[i];
        }
    } else if (v == VIEW_ZX) {
        const size_t sl = (size_t)d.Z * d.W;
        for (uint32_t z = 0; z < d.Z; z++)
            for (uint32_t x = 0; x < d.W; x++) {
                const size_t i = (size_t)z * d.W + x, o = z * hw + (size_t)s * d.W + x;
                fr[o] += m[i];
                fc[o] += m[sl + i];
                fp[o] += m[2 * sl + i];
            }
    } else {
        const size_t sl = (size_t)d.Z * d.H;
        for (uint32_t z = 0; z < d.Z; z++)
            for (uint32_t y = 0; y < d.H; y++) {
                const size_t i = (size_t)z * d.H + y, o = z * hw + (size_t)y * d.W + s;
                fr[o] += m[i];
                fc[o] += m[sl + i];
                fp[o] += m[2 * sl + i];
            }
    }
}

/* Resizes the planar volume x = [nch][d.Z][d.H][d.W] along one view's slices (view YX: each
 * plane to dh x dw; view ZX: each Z x W slice to dh x dw = Z' x W) on the device with `rule`;
 * *out receives a new [nch][...] volume of dims *od. One channel after the other (the rule's
 * arithmetic is per channel), each channel of x given back to the system once resized
 * (gpuseg__drop_pages: x is the caller's to free, its content is then unspecified), so that the
 * peak is x and one channel of the result rather than both volumes. */
static gpuseg_status resize_volume(gpuseg_ctx *ctx, float *x, uint32_t nch, vol_dims d, int v,
                                   uint32_t dh, uint32_t dw, gpuseg__resize_rule rule, float **out,
                                   vol_dims *od) {
    vol_dims o = d;
    uint32_t h, w, ns;
    if (v == VIEW_YX) {
        o.H = dh;
        o.W = dw;
        h = d.H;
        w = d.W;
        ns = d.Z;
    } else {
        o.Z = dh;
        o.W = dw;
        h = d.Z;
        w = d.W;
        ns = d.H;
    }
    const size_t sin = (size_t)h * w, sout = (size_t)dh * dw, nin = nvox(d), nout = nvox(o);
    float *vol = malloc(nout * nch * sizeof *vol);
    float *a = malloc(sin * sizeof *a), *b = malloc(sout * sizeof *b);
    cl_mem da = NULL, db = NULL;
    gpuseg_status st = GPUSEG_OK;
    if (!vol || !a || !b)
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "do_3D: resizing %u x %u x %u voxels", o.Z,
                          o.H, o.W);
    if (st == GPUSEG_OK &&
        ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, sin * sizeof(float), "do_3D resize", &da)) !=
             GPUSEG_OK ||
         (st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, sout * sizeof(float), "do_3D resize", &db)) !=
             GPUSEG_OK))
        st = gpuseg__wrap(ctx, st, "do_3D: resizing");
    for (uint32_t c = 0; st == GPUSEG_OK && c < nch; c++) {
        for (uint32_t s = 0; st == GPUSEG_OK && s < ns; s++) {
            slice_get(x + c * nin, 1, d, v, s, a);
            if ((st = gpuseg__write_buf(ctx, da, sin * sizeof(float), a, "do_3D resize")) !=
                    GPUSEG_OK ||
                (st = gpuseg__resize(ctx, da, 1, h, w, db, dh, dw, rule)) != GPUSEG_OK ||
                (st = gpuseg__read_buf(ctx, db, sout * sizeof(float), b, "do_3D resize")) !=
                    GPUSEG_OK)
                break;
            slice_put(vol + c * nout, 1, o, v, s, b);
        }
        gpuseg__drop_pages(x + c * nin, nin * sizeof *x);
    }
    gpuseg__release(&da);
    gpuseg__release(&db);
    free(a);
    free(b);
    if (st != GPUSEG_OK) {
        free(vol);
        return st;
    }
    *out = vol;
    *od = o;
    return GPUSEG_OK;
}

/* A sub-buffer of buf: `bytes` from `offset`; NULL when the device refuses it (an offset that
 * is not a multiple of its base-address alignment): the caller then runs one slice at a time. */
static cl_mem sub_buffer(cl_mem buf, size_t offset, size_t bytes) {
    cl_buffer_region reg = {offset, bytes};
    cl_int err = CL_SUCCESS;
    cl_mem m = clCreateSubBuffer(buf, CL_MEM_READ_WRITE, CL_BUFFER_CREATE_TYPE_REGION, &reg, &err);
    return err == CL_SUCCESS ? m : NULL;
}

/* The slices of one view k at a time: device buffers for k slices' images and maps, and k
 * windows on the network's input and output (sub-buffers) so that one forward pass takes the
 * tiles of k slices (Cellpose's run_net batches several images the same way: batch_size //
 * tiles per image). */
#define MAX_GROUP 64
typedef struct view_group {
    unsigned k;
    cl_mem din[MAX_GROUP], dmaps[MAX_GROUP], in[MAX_GROUP], out[MAX_GROUP];
} view_group;

static void group_free(view_group *vg) {
    for (unsigned i = 0; i < MAX_GROUP; i++) {
        gpuseg__release(&vg->din[i]);
        gpuseg__release(&vg->dmaps[i]);
        gpuseg__release(&vg->in[i]);
        gpuseg__release(&vg->out[i]);
    }
    vg->k = 0;
}

/* Plans the network for the view's tiles (nt per slice of npx pixels, tile th x tw) and sets up
 * *vg for as many slices per pass as the batch holds (at least 1). *bsz: the tiles per pass. */
static gpuseg_status group_setup(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg__tile_geom *g,
                                 size_t npx, uint32_t nslices, unsigned batch, view_group *vg,
                                 unsigned *bsz) {
    const uint32_t nt = g->ny * g->nx;
    unsigned k = nt < batch ? batch / nt : 1;
    k = k > nslices ? nslices : k;
    k = k > MAX_GROUP ? MAX_GROUP : k;
    k = k < 1 ? 1 : k;
    gpuseg_status st =
        gpuseg__plan_batch(ctx, net, k > 1 ? k * nt : (batch < nt ? batch : nt), g->th, g->tw, bsz);
    if (st != GPUSEG_OK)
        return st;
    if (k > 1 && *bsz < k * nt)
        k = *bsz / nt > 1 ? *bsz / nt : 1;
    const size_t tin = (size_t)net->info.nbase[0] * g->th * g->tw * sizeof(float);
    const size_t tout = (size_t)net->info.nout * g->th * g->tw * sizeof(float);
    for (unsigned i = 0; i < k && k > 1; i++) {
        vg->in[i] = sub_buffer(net->in, (size_t)i * nt * tin, (size_t)nt * tin);
        vg->out[i] = sub_buffer(net->out, (size_t)i * nt * tout, (size_t)nt * tout);
        if (!vg->in[i] || !vg->out[i]) { /* not aligned: one slice per pass */
            group_free(vg);
            k = 1;
            break;
        }
    }
    vg->k = k;
    for (unsigned i = 0; st == GPUSEG_OK && i < k; i++)
        if ((st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, 2 * npx * sizeof(float), "do_3D slice",
                                 &vg->din[i])) == GPUSEG_OK)
            st = gpuseg__buffer(ctx, CL_MEM_READ_WRITE, 3 * npx * sizeof(float), "do_3D maps",
                                &vg->dmaps[i]);
    return st;
}

/* The network on every slice of every view of x = [2][d], added into yf = [4][d] (zeroed by the
 * caller). Slices go k at a time (group_setup): their images uploaded and cut into tiles, one
 * forward pass (or, for slices of more tiles than a batch, batches of one slice's tiles), each
 * slice blended on the device, read back and added. *tiles receives the tiles run. Progress:
 * [lo, hi] of the call. */
static gpuseg_status run_views(gpuseg_ctx *ctx, gpuseg_net *net, const float *x, uint32_t nchx,
                               vol_dims d, const gpuseg_segment_params *p, float *yf,
                               uint32_t *tiles, unsigned *batch_used, double lo, double hi) {
    const uint32_t ns[3] = {d.Z, d.H, d.W};
    const uint32_t sh[3] = {d.H, d.Z, d.Z}, sw[3] = {d.W, d.W, d.H};
    const uint64_t total = (uint64_t)d.Z + d.H + d.W;
    uint64_t done = 0;
    gpuseg_status st = GPUSEG_OK;
    *tiles = 0;
    for (int v = 0; v < 3 && st == GPUSEG_OK; v++) {
        gpuseg__tile_geom g;
        memset(&g, 0, sizeof g);
        view_group vg;
        memset(&vg, 0, sizeof vg);
        const size_t npx = (size_t)sh[v] * sw[v];
        float *in = malloc(2 * npx * sizeof *in), *maps = malloc(3 * npx * sizeof *maps);
        unsigned bsz = 0;
        if (!in || !maps)
            st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "do_3D: slices of %u x %u", sh[v], sw[v]);
        else if (nchx == 1) /* the second channel is zeros (Cellpose's channels [c, 0]) */
            memset(in + npx, 0, npx * sizeof *in);
        if (st == GPUSEG_OK)
            st = gpuseg__tile_geometry(ctx, sh[v], sw[v], 1.0, p->augment, p->tile_overlap, &g);
        const uint32_t nt = g.ny * g.nx;
        if (st == GPUSEG_OK)
            st = group_setup(ctx, net, &g, npx, ns[v], p->batch_size, &vg, &bsz);
        if (bsz > *batch_used)
            *batch_used = bsz;
        for (uint32_t s0 = 0; st == GPUSEG_OK && s0 < ns[v]; s0 += vg.k) {
            const unsigned kk = ns[v] - s0 < vg.k ? ns[v] - s0 : vg.k;
            if ((st = gpuseg__check_cancel(ctx, "do_3D")) != GPUSEG_OK)
                break;
            gpuseg__progress(ctx,
                             v == VIEW_YX   ? "network YX"
                             : v == VIEW_ZX ? "network ZX"
                                            : "network ZY",
                             s0, ns[v], lo + (hi - lo) * (double)done / (double)total);
            for (unsigned i = 0; st == GPUSEG_OK && i < kk; i++) {
                slice_get(x, nchx, d, v, s0 + i, in);
                if ((st = gpuseg__write_buf(ctx, vg.din[i], 2 * npx * sizeof(float), in,
                                            "do_3D slice")) == GPUSEG_OK &&
                    vg.k > 1)
                    st = gpuseg__tiles_extract(ctx, vg.din[i], 2, &g, 0, nt, vg.in[i]);
            }
            if (st == GPUSEG_OK && vg.k > 1)
                st = gpuseg__net_forward(net, kk * nt);
            for (unsigned i = 0; st == GPUSEG_OK && i < kk; i++) {
                gpuseg__blend b = {0};
                st = gpuseg__blend_begin(ctx, &g, 3, &b);
                if (vg.k > 1 && st == GPUSEG_OK)
                    st = gpuseg__blend_add(ctx, &b, &g, vg.out[i], 0, nt);
                for (uint32_t first = 0; vg.k == 1 && st == GPUSEG_OK && first < nt; first += bsz) {
                    uint32_t count = nt - first < bsz ? nt - first : bsz;
                    if ((st = gpuseg__tiles_extract(ctx, vg.din[0], 2, &g, first, count,
                                                    net->in)) == GPUSEG_OK &&
                        (st = gpuseg__net_forward(net, count)) == GPUSEG_OK)
                        st = gpuseg__blend_add(ctx, &b, &g, net->out, first, count);
                }
                if (st == GPUSEG_OK &&
                    (st = gpuseg__blend_end(ctx, &b, &g, vg.dmaps[i])) == GPUSEG_OK)
                    st = gpuseg__read_buf(ctx, vg.dmaps[i], 3 * npx * sizeof(float), maps,
                                          "do_3D maps");
                gpuseg__blend_free(&b);
                if (st == GPUSEG_OK)
                    slice_add(yf, d, v, s0 + i, maps);
                *tiles += nt;
                done++;
            }
        }
        group_free(&vg);
        gpuseg__tile_geom_free(&g);
        free(in);
        free(maps);
        if (st != GPUSEG_OK && st != GPUSEG_CANCELLED)
            st = gpuseg__wrap(ctx, st, "do_3D: the %s view",
                              v == VIEW_YX   ? "YX"
                              : v == VIEW_ZX ? "ZX (planes at fixed Y)"
                                             : "ZY (planes at fixed X)");
    }
    return st;
}

/* scipy.ndimage.gaussian_filter(dP, (0, s, s, s)) on the three flow channels of f = [4][d]:
 * gaussian_filter1d along Z, then Y, then X (each pass rounded to float32, as scipy writes its
 * float32 output between axes), truncate 4.0, mode 'reflect' (d c b a | a b c d | d c b a),
 * the symmetric correlation summed in double as scipy's correlate1d does. */
static gpuseg_status smooth_flows(gpuseg_ctx *ctx, float *f, vol_dims d, double sigma) {
    const int r = (int)(4.0 * sigma + 0.5);
    const uint32_t Lmax = d.Z > d.H ? (d.Z > d.W ? d.Z : d.W) : (d.H > d.W ? d.H : d.W);
    double *w = malloc((size_t)(r + 1) * sizeof *w);
    double *line = malloc(((size_t)Lmax + 2 * (size_t)r) * sizeof *line);
    if (!w || !line) {
        free(w);
        free(line);
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "flow3D_smooth: out of host memory");
    }
    /* _gaussian_kernel1d: exp(-0.5 / sigma^2 * x^2) / sum */
    double sum = 0.0;
    const double s2 = sigma * sigma;
    for (int x = -r; x <= r; x++)
        sum += exp(-0.5 / s2 * (double)x * (double)x);
    for (int x = 0; x <= r; x++)
        w[x] = exp(-0.5 / s2 * (double)x * (double)x) / sum;
    const size_t n = nvox(d);
    for (int axis = 0; axis < 3; axis++) {
        const uint32_t L = axis == 0 ? d.Z : axis == 1 ? d.H : d.W;
        const size_t stride = axis == 0 ? (size_t)d.H * d.W : axis == 1 ? d.W : 1;
        const size_t nlines = n / L;
        for (int c = 0; c < 3; c++) {
            float *fc = f + (size_t)c * n;
            for (size_t li = 0; li < nlines; li++) {
                /* the line's first element: every index with coordinate 0 along the axis */
                size_t base;
                if (axis == 0)
                    base = li;
                else if (axis == 1)
                    base = (li / d.W) * ((size_t)d.H * d.W) + li % d.W;
                else
                    base = li * d.W;
                for (long k = -r; k < (long)L + r; k++) {
                    long m = k % (2 * (long)L);
                    if (m < 0)
                        m += 2 * (long)L;
                    if (m >= (long)L)
                        m = 2 * (long)L - 1 - m;
                    line[k + r] = (double)fc[base + (size_t)m * stride];
                }
                for (uint32_t i = 0; i < L; i++) {
                    const double *q = line + r + i;
                    double t = q[0] * w[0];
                    for (int j = 1; j <= r; j++)
                        t += (q[j] + q[-j]) * w[j];
                    fc[base + (size_t)i * stride] = (float)t;
                }
            }
        }
    }
    free(w);
    free(line);
    return GPUSEG_OK;
}

/* The normalised stack xi ([Z][H][W][2], interleaved) as planar channels *x = [nchx][Z][H][W],
 * rearranged in xi's own buffer (taken from it): one plane when the second channel is all zeros
 * (Cellpose's channels [c, 0] or a one-channel stack: the network's second input is zeros, filled
 * per slice by run_views), else two. The peak is the stack plus one plane, not two stacks. */
static gpuseg_status planar_channels(gpuseg_ctx *ctx, gpuseg_image *xi, float **x, uint32_t *nchx) {
    const size_t n = (size_t)xi->pages * xi->height * xi->width;
    float *v = xi->data;
    size_t i = 0;
    while (i < n && v[2 * i + 1] == 0.0f)
        i++;
    float *c2 = NULL;
    if (i < n && !(c2 = malloc(n * sizeof *c2)))
        return gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "do_3D: %u x %u x %u voxels", xi->pages,
                            xi->height, xi->width);
    for (i = 0; c2 && i < n; i++)
        c2[i] = v[2 * i + 1];
    for (i = 0; i < n; i++) /* v[i] <- v[2 i]: the reads stay ahead of the writes */
        v[i] = v[2 * i];
    if (c2) {
        memcpy(v + n, c2, n * sizeof *v);
        free(c2);
        *nchx = 2;
    } else {
        float *s = realloc(v, n * sizeof *v); /* shrinking: a refusal keeps v */
        v = s ? s : v;
        *nchx = 1;
    }
    xi->data = NULL;
    *x = v;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_segment_volume(gpuseg_ctx *ctx, gpuseg_net *net, const gpuseg_image *img,
                                    const gpuseg_segment_params *params, double anisotropy,
                                    double flow3d_smooth, gpuseg_segment_result *result) {
    gpuseg__clear_error(ctx);
    if (!ctx || !net || !img || !result)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT, "gpuseg_segment_volume: NULL argument");
    memset(result, 0, sizeof *result);
    if (!isfinite(anisotropy) || !(anisotropy > 0.0) || anisotropy > 1e4)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "do_3D: anisotropy %g (the Z step over the XY pixel size, > 0)",
                            anisotropy);
    if (!isfinite(flow3d_smooth) || flow3d_smooth < 0.0 || flow3d_smooth > 1e3)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "do_3D: flow3D_smooth %g (a Gaussian sigma in voxels, >= 0; 0: off)",
                            flow3d_smooth);
    if (img->pages < 2 || img->height < 2 || img->width < 2)
        return gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                            "do_3D: a %u x %u x %u image; 3-D segmentation needs a Z stack of at "
                            "least 2 x 2 x 2 (pages x height x width)",
                            img->pages, img->height, img->width);
    if (net->info.nout != 3)
        return gpuseg__fail(ctx, GPUSEG_UNSUPPORTED,
                            "%s: the model has %d outputs; segmentation needs 3 (dY, dX, "
                            "cellprob)",
                            net->model_path, net->info.nout);
    gpuseg_segment_params p;
    if (params)
        p = *params;
    else
        gpuseg_segment_params_default(&p);
    gpuseg_status cst = gpuseg__check_segment_numbers(ctx, &p);
    if (cst != GPUSEG_OK)
        return cst;
    const vol_dims d0 = {img->pages, img->height, img->width};
    const size_t n0 = nvox(d0);
    gpuseg_image *xi = NULL;
    float *x = NULL, *xr = NULL, *yf = NULL, *tmp = NULL;
    uint32_t *lab = NULL;
    gpuseg_status st = gpuseg__check_cancel(ctx, "gpuseg_segment_volume");
    double t0 = gpuseg__now_s();
    /* seconds_net: the estimation's passes (their own network time, set by stack_diameter) and
     * this pass's normalisation, resizes and network; seconds_masks: resize back, smoothing and
     * masks */
    /* 1. channels and normalisation over the whole stack (norm3D), as [Z][H][W][2] */
    if (st == GPUSEG_OK) {
        gpuseg__progress(ctx, "normalising", 0, 0, 0.0);
        st = gpuseg__normalize_stack(ctx, img, &p, &xi);
    }
    const int est = p.diameter <= 0 && (p.estimate_diameter || p.size_model);
    const double f_diam = est ? 0.1 : 0.0, f_net = 0.8;
    if (st == GPUSEG_OK) {
        gpuseg_segment_params q = p;
        q.normalize = 0;
        q.invert = 0;
        q.chan = 1;
        q.chan2 = 2;
        const double te = gpuseg__now_s();
        st = gpuseg__stack_diameter(ctx, net, xi, &q, f_diam, result);
        p.diameter = q.diameter;
        t0 += gpuseg__now_s() - te; /* counted in result->seconds_net already */
    }
    float r = 1.0f;
    uint32_t niter = 0;
    if (st == GPUSEG_OK)
        st = gpuseg__rescale_niter(ctx, net, &p, &r, &niter);
    /* planar [nchx][Z][H][W], in the normalised stack's own buffer */
    uint32_t nchx = 2;
    if (st == GPUSEG_OK)
        st = planar_channels(ctx, xi, &x, &nchx);
    gpuseg_image_free(xi);
    xi = NULL;
    /* 2. the resize: YX by r (trunc(L * r) in float32), then Z to trunc(Z * anisotropy * r) */
    vol_dims d = d0;
    const int resize = r != 1.0f || anisotropy != 1.0;
    if (st == GPUSEG_OK && resize) {
        gpuseg__progress(ctx, "resizing", 0, 0, f_diam);
        const float fh = (float)d0.H * r, fw = (float)d0.W * r;
        const float fz = (float)((double)d0.Z * anisotropy) * r;
        if (!(fh >= 1.0f && fw >= 1.0f && fz >= 1.0f) || fh > 1e6f || fw > 1e6f || fz > 1e6f)
            st = gpuseg__fail(ctx, GPUSEG_INVALID_ARGUMENT,
                              "do_3D: rescale %g and anisotropy %g make the %u x %u x %u stack "
                              "%.0f x %.0f x %.0f",
                              (double)r, anisotropy, d0.Z, d0.H, d0.W, (double)fz, (double)fh,
                              (double)fw);
        vol_dims dm;
        if (st == GPUSEG_OK && r != 1.0f) {
            st = resize_volume(ctx, x, nchx, d0, VIEW_YX, (uint32_t)fh, (uint32_t)fw,
                               GPUSEG__RESIZE_CV, &tmp, &dm);
            if (st == GPUSEG_OK) {
                free(x);
                x = tmp;
                tmp = NULL;
                d = dm;
            }
        }
        if (st == GPUSEG_OK) {
            st = resize_volume(ctx, x, nchx, d, VIEW_ZX, (uint32_t)fz, d.W, GPUSEG__RESIZE_CV, &xr,
                               &dm);
            if (st == GPUSEG_OK) {
                free(x);
                x = xr;
                xr = NULL;
                d = dm;
            }
        }
    }
    /* 3. the network on the three views, summed into yf */
    const size_t n = nvox(d);
    uint32_t ntiles = 0;
    if (st == GPUSEG_OK && !(yf = calloc(4 * n, sizeof *yf)))
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "do_3D: flows of %u x %u x %u voxels", d.Z,
                          d.H, d.W);
    if (st == GPUSEG_OK)
        st = run_views(ctx, net, x, nchx, d, &p, yf, &ntiles, &result->batch_size, f_diam + 0.02,
                       f_net);
    free(x);
    x = NULL;
    double t1 = gpuseg__now_s();
    /* 4. resized back: YX per plane, then Z (OpenCV's 4-channel path: the EXACT rule) */
    if (st == GPUSEG_OK && resize) {
        gpuseg__progress(ctx, "resizing back", 0, 0, f_net);
        vol_dims dm;
        if (r != 1.0f) {
            st = resize_volume(ctx, yf, 4, d, VIEW_YX, d0.H, d0.W, GPUSEG__RESIZE_EXACT, &tmp, &dm);
            if (st == GPUSEG_OK) {
                free(yf);
                yf = tmp;
                tmp = NULL;
                d = dm;
            }
        }
        if (st == GPUSEG_OK && d.Z != d0.Z) {
            st = resize_volume(ctx, yf, 4, d, VIEW_ZX, d0.Z, d.W, GPUSEG__RESIZE_EXACT, &tmp, &dm);
            if (st == GPUSEG_OK) {
                free(yf);
                yf = tmp;
                tmp = NULL;
                d = dm;
            }
        }
    }
    /* 5. flow3D_smooth */
    if (st == GPUSEG_OK && flow3d_smooth > 0.0) {
        gpuseg__progress(ctx, "smoothing", 0, 0, f_net);
        st = smooth_flows(ctx, yf, d, flow3d_smooth);
    }
    /* 6. masks */
    uint32_t nm = 0;
    if (st == GPUSEG_OK && !(lab = malloc(n0 * sizeof *lab)))
        st = gpuseg__fail(ctx, GPUSEG_OUT_OF_MEMORY, "do_3D: labels of %u x %u x %u voxels", d0.Z,
                          d0.H, d0.W);
    if (st == GPUSEG_OK) {
        gpuseg_masks_params mp;
        gpuseg_masks_params_default(&mp);
        mp.cellprob_threshold = p.cellprob_threshold;
        mp.flow_threshold = p.flow_threshold;
        mp.niter = niter;
        mp.min_size = p.min_size;
        mp.max_size_fraction = p.max_size_fraction;
        gpuseg__progress(ctx, "masks", 0, 0, f_net + 0.02);
        gpuseg__progress_span sp = gpuseg__progress_push(ctx, f_net + 0.02, 0.99);
        /* the flows handed over unless the caller wants them: they and the masks step's scaled
         * copy are then not resident together */
        st = p.want_flows
                 ? gpuseg_flows_to_masks3d(ctx, yf, d0.Z, d0.H, d0.W, &mp, lab, &nm)
                 : gpuseg_flows_to_masks3d_consume(ctx, yf, d0.Z, d0.H, d0.W, &mp, lab, &nm);
        gpuseg__progress_pop(ctx, sp);
    }
    if (st == GPUSEG_OK)
        st = gpuseg__volume_labels(ctx, lab, d0.Z, d0.H, d0.W, nm, &result->labels);
    free(lab);
    if (st == GPUSEG_OK && p.want_flows) {
        result->flows = yf;
        yf = NULL;
    }
    free(yf);
    free(tmp);
    if (st != GPUSEG_OK) {
        gpuseg_segment_result_free(result);
        if (st == GPUSEG_CANCELLED)
            clFinish(ctx->queue);
        return st == GPUSEG_CANCELLED
                   ? st
                   : gpuseg__wrap(ctx, st, "do_3D on %u x %u x %u", d0.Z, d0.H, d0.W);
    }
    result->n_masks = nm;
    result->diameter = p.diameter > 0 ? p.diameter : (double)net->info.diam_labels;
    result->rescale = (double)r;
    result->niter = niter;
    result->n_tiles = ntiles;
    result->passes += 1;
    result->seconds_net += t1 - t0;
    result->seconds_masks += gpuseg__now_s() - t1;
    gpuseg__progress(ctx, "done", 1, 1, 1.0);
    return GPUSEG_OK;
}
