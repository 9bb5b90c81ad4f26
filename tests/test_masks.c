/* tests/test_masks.c: flows -> masks (src/flow/masks.c) against Cellpose 3.1.1.3 fixtures made by
 * tools/fixtures/make_mask_fixtures.py (tests/fixtures/masks/: dsb2018 nuclei, a usiigaci
 * whole-cell crop with noisy flows so that the flow-error QC drops masks), the Euler end points
 * and per-mask flow errors against Cellpose's, hand-made cases (empty, 1x1, NaN/Inf, 65536 masks
 * -> uint32), hole filling against a host flood fill, Cellpose's size-filter quirk, progress
 * reports and cancelling (no buffer left behind at any stage), and the `gpuseg masks` command's
 * success and error paths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flow/masks_internal.h"
#include "testutil.h"

#define FIX GPUSEG_SOURCE_DIR "/tests/fixtures/masks/"

static gpuseg_npy *load(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, FIX "%s", name);
    gpuseg_npy *a = NULL;
    ck_assert_msg(gpuseg_npy_read(path, &a) == GPUSEG_OK, "%s", gpuseg_last_error());
    return a;
}

static uint32_t label_at(const gpuseg_image *img, size_t i) {
    return img->dtype == GPUSEG_DTYPE_U16 ? ((const uint16_t *)img->data)[i]
                                          : ((const uint32_t *)img->data)[i];
}

static uint32_t npy_label(const gpuseg_npy *a, size_t i) {
    return a->dtype == GPUSEG_DTYPE_U16 ? ((const uint16_t *)a->data)[i]
                                        : ((const uint32_t *)a->data)[i];
}

/* Average precision at IoU threshold thr as Cellpose defines it: TP / (TP + FP + FN), a pair
 * matching when IoU >= thr. For thr >= 0.5 an object can match at most one other, so counting
 * the pairs above the threshold is the optimal assignment. gt/pred: label values per pixel. */
static double ap_at(const uint32_t *gt, const uint32_t *pred, size_t n, double thr) {
    uint32_t ng = 0, np_ = 0;
    for (size_t i = 0; i < n; i++) {
        ng = gt[i] > ng ? gt[i] : ng;
        np_ = pred[i] > np_ ? pred[i] : np_;
    }
    size_t stride = (size_t)np_ + 1;
    uint32_t *ov = calloc(((size_t)ng + 1) * stride, sizeof *ov);
    uint32_t *ag = calloc((size_t)ng + 1, sizeof *ag), *ap = calloc(stride, sizeof *ap);
    ck_assert(ov && ag && ap);
    for (size_t i = 0; i < n; i++) {
        ov[gt[i] * stride + pred[i]]++;
        ag[gt[i]]++;
        ap[pred[i]]++;
    }
    uint32_t ngp = 0, npp = 0, tp = 0;
    for (uint32_t g = 1; g <= ng; g++)
        ngp += ag[g] > 0;
    for (uint32_t p = 1; p <= np_; p++)
        npp += ap[p] > 0;
    for (uint32_t g = 1; g <= ng; g++)
        for (uint32_t p = 1; p <= np_; p++) {
            uint32_t in = ov[g * stride + p];
            if (in && (double)in / (double)(ag[g] + ap[p] - in) >= thr)
                tp++;
        }
    free(ov);
    free(ag);
    free(ap);
    uint32_t den = ngp + npp - tp;
    return den == 0 ? 1.0 : (double)tp / den;
}

/* ---- host-only ---------------------------------------------------------------------------- */

START_TEST(params_default) {
    gpuseg_masks_params p;
    memset(&p, 0xff, sizeof p);
    gpuseg_masks_params_default(&p);
    ck_assert_float_eq(p.cellprob_threshold, 0.0f);
    ck_assert_float_eq(p.flow_threshold, 0.4f);
    ck_assert_uint_eq(p.niter, 200);
    ck_assert_int_eq(p.min_size, 15);
    ck_assert_double_eq(p.max_size_fraction, 0.4);
}
END_TEST

/* Cellpose 3.1.1.3 takes the position of a small mask in the list of present labels as its value:
 * with values {0, 1, 3, 4} present and value 3 small, position 1 -> value 2 is "removed" (absent,
 * so nothing happens) and the small mask survives; with value 4 small, value 3 is removed. */
START_TEST(size_filter_quirk) {
    uint32_t count[5] = {100, 50, 0, 5, 40};
    uint8_t rm[5] = {0};
    gpuseg__masks_size_filter(count, 4, 15, rm);
    ck_assert(rm[2] && !rm[1] && !rm[3] && !rm[4]); /* value 2 is absent: a no-op */
    uint32_t count2[5] = {100, 50, 0, 40, 5};
    memset(rm, 0, sizeof rm);
    gpuseg__masks_size_filter(count2, 4, 15, rm);
    ck_assert(rm[3] && !rm[4] && !rm[1]);
    /* without background the first label's count is dropped instead: value 1 small is missed,
     * value 2 small removes value 1 */
    uint32_t count3[3] = {0, 5, 5};
    memset(rm, 0, sizeof rm);
    gpuseg__masks_size_filter(count3, 2, 15, rm);
    ck_assert(rm[1] && !rm[2]);
    /* min_size <= 0: no filter */
    memset(rm, 0, sizeof rm);
    gpuseg__masks_size_filter(count2, 4, 0, rm);
    ck_assert(!rm[3] && !rm[4]);
    /* renumbering by first appearance, skipping removed and empty values */
    uint32_t first[5] = {0, 30, 0, 10, 20}, map[5];
    uint8_t rm2[5] = {0, 0, 0, 0, 1};
    ck_assert_uint_eq(gpuseg__masks_renumber(count, first, rm2, 4, map), 2);
    ck_assert_uint_eq(map[0], 0);
    ck_assert_uint_eq(map[1], 2);
    ck_assert_uint_eq(map[2], 0);
    ck_assert_uint_eq(map[3], 1);
    ck_assert_uint_eq(map[4], 0);
}
END_TEST

/* ---- device: Cellpose fixtures --------------------------------------------------------------- */

typedef struct {
    const char *flows, *masks;
    float flow_threshold, cellprob_threshold;
    uint32_t niter;
    int32_t min_size;
} fixture_case;

static const fixture_case cases[] = {
    {"dsb65_flows.npy", "dsb65_masks_qc.npy", 0.4f, 0.0f, 200, 15},
    {"dsb313_flows.npy", "dsb313_masks_qc.npy", 0.4f, 0.0f, 200, 15},
    {"usi_flows.npy", "usi_masks_qc.npy", 0.4f, 0.0f, 200, 15},
    {"usi_flows.npy", "usi_masks_noqc.npy", 0.0f, 0.0f, 200, 15},
    /* size filter off after QC removed masks: label values are compacted by the fill loop */
    {"usi_flows.npy", "usi_masks_min0.npy", 0.4f, 0.0f, 200, 0},
    {"usi_flows.npy", "usi_masks_niter57_cp07.npy", 0.4f, 0.7f, 57, 15},
};

/* Acceptance: AP@0.5 >= 0.99 and AP@0.9 >= 0.95 against Cellpose (the bar), the same
 * number of masks and dtype, and at least 99.9% of pixels with the identical label value (the
 * Euler end points are bit-exact on PoCL, see euler_bitexact; a device that flushes denormals or
 * rounds a near-tie differently may move a handful of pixels, never whole masks). */
START_TEST(fixtures_match_cellpose) {
    const fixture_case *c = &cases[_i];
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_npy *fl = load(c->flows), *ref = load(c->masks);
    const uint32_t H = (uint32_t)fl->shape[1], W = (uint32_t)fl->shape[2];
    const size_t n = (size_t)H * W;
    ck_assert_uint_eq(ref->shape[0], H);
    gpuseg_masks_params p;
    gpuseg_masks_params_default(&p);
    p.flow_threshold = c->flow_threshold;
    p.cellprob_threshold = c->cellprob_threshold;
    p.niter = c->niter;
    p.min_size = c->min_size;
    gpuseg_image *lab = NULL;
    uint32_t nm = 0;
    ck_assert_msg(gpuseg_flows_to_masks(ctx, fl->data, H, W, &p, &lab, &nm) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    ck_assert_int_eq(lab->dtype, ref->dtype);
    ck_assert_uint_eq(lab->width, W);
    ck_assert_uint_eq(lab->height, H);
    uint32_t *a = malloc(n * 4), *b = malloc(n * 4), ref_max = 0;
    size_t same = 0;
    for (size_t i = 0; i < n; i++) {
        a[i] = label_at(lab, i);
        b[i] = npy_label(ref, i);
        same += a[i] == b[i];
        ref_max = b[i] > ref_max ? b[i] : ref_max;
    }
    double ap5 = ap_at(b, a, n, 0.5), ap9 = ap_at(b, a, n, 0.9);
    fprintf(stderr,
            "%s (flow_threshold %.1f): %u masks (Cellpose %u), AP@0.5 %.4f AP@0.9 %.4f, "
            "identical pixels %.4f%%\n",
            c->masks, (double)c->flow_threshold, nm, ref_max, ap5, ap9, 100.0 * same / n);
    ck_assert_uint_eq(nm, ref_max);
    ck_assert(ap5 >= 0.99);
    ck_assert(ap9 >= 0.95);
    ck_assert(same >= n - n / 1000);
    free(a);
    free(b);
    gpuseg_image_free(lab);
    gpuseg_npy_free(fl);
    gpuseg_npy_free(ref);
    gpuseg_ctx_free(ctx);
}
END_TEST

static cl_mem upload(gpuseg_ctx *ctx, const void *data, size_t bytes) {
    cl_int err;
    cl_mem m = clCreateBuffer(gpuseg_ctx_cl_context(ctx), CL_MEM_READ_WRITE | CL_MEM_COPY_HOST_PTR,
                              bytes, (void *)data, &err);
    ck_assert_int_eq(err, CL_SUCCESS);
    return m;
}

/* Intermediate results: Euler end points equal Cellpose's float32 positions bit for bit (dsb65,
 * 4192 followed pixels), pre-QC masks equal get_masks' output, and per-mask flow errors agree
 * with Cellpose's float64 ones to 1e-4 relative (float32 ideal flows and sums vs float64). */
START_TEST(euler_bitexact_and_flow_errors) {
    gpuseg_ctx *ctx = tu_ctx();
    const char *names[2] = {"dsb65", "usi"};
    for (int t = 0; t < 2; t++) {
        char f[64];
        snprintf(f, sizeof f, "%s_flows.npy", names[t]);
        gpuseg_npy *fl = load(f);
        snprintf(f, sizeof f, "%s_premasks.npy", names[t]);
        gpuseg_npy *pre = load(f);
        snprintf(f, sizeof f, "%s_flowerr.npy", names[t]);
        gpuseg_npy *fe = load(f);
        const uint32_t H = (uint32_t)fl->shape[1], W = (uint32_t)fl->shape[2];
        const size_t n = (size_t)H * W;
        cl_mem d = upload(ctx, fl->data, 3 * n * sizeof(float));
        gpuseg__masks_debug dbg;
        memset(&dbg, 0, sizeof dbg);
        dbg.pos = malloc(2 * n * sizeof(float));
        dbg.pre_labels = malloc(n * 4);
        dbg.flow_err_cap = (uint32_t)fe->shape[0];
        dbg.flow_err = malloc((dbg.flow_err_cap + 1) * sizeof(double));
        cl_mem out = NULL;
        gpuseg_dtype dt;
        uint32_t nm;
        ck_assert_msg(gpuseg__masks_run(ctx, d, 0, H, W, NULL, &dbg, &out, &dt, &nm) == GPUSEG_OK,
                      "%s", gpuseg_last_error());
        ck_assert_uint_eq(dbg.n_pre, fe->shape[0]);
        size_t diff = 0;
        for (size_t i = 0; i < n; i++)
            diff += dbg.pre_labels[i] != npy_label(pre, i);
        ck_assert_msg(diff == 0, "%s: %zu pre-QC pixels differ", names[t], diff);
        double worst = 0;
        uint32_t removed = 0;
        for (uint32_t l = 0; l < dbg.n_pre; l++) {
            double r = ((const float *)fe->data)[l];
            double e = fabs(dbg.flow_err[l] - r) / fmax(r, 1e-6);
            worst = e > worst ? e : worst;
            removed += r > 0.4;
        }
        fprintf(stderr, "%s: flow errors worst relative difference %.3g, QC removed %u\n", names[t],
                worst, dbg.n_qc_removed);
        ck_assert(worst < 1e-4);
        ck_assert_uint_eq(dbg.n_qc_removed, removed);
        if (t == 0) {
            gpuseg_npy *pf = load("dsb65_pfinal.npy"); /* [2, n_followed], row-major order */
            const size_t nf = pf->shape[1];
            const float *ref = pf->data, *fg = (const float *)fl->data + 2 * n;
            size_t k = 0, exact = 0;
            for (size_t i = 0; i < n; i++) {
                if (!(fg[i] > 0.0f))
                    continue;
                ck_assert(k < nf);
                exact += dbg.pos[i] == ref[k] && dbg.pos[n + i] == ref[nf + k];
                k++;
            }
            fprintf(stderr, "dsb65: %zu of %zu end points bit-identical\n", exact, nf);
            ck_assert_uint_eq(k, nf);
            ck_assert_uint_eq(exact, nf);
            gpuseg_npy_free(pf);
        }
        free(dbg.pos);
        free(dbg.pre_labels);
        free(dbg.flow_err);
        clReleaseMemObject(out);
        clReleaseMemObject(d);
        gpuseg_npy_free(fl);
        gpuseg_npy_free(pre);
        gpuseg_npy_free(fe);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

/* The CPU kernels (masks_euler8 with masks_pack and masks_rows, l2f_box) and the GPU ones
 * (masks_euler, l2f_local) are chosen by device type; forced on the same device, they must give
 * the same end points (bits), the same flow errors (bits) and the same labels. */
START_TEST(cpu_and_gpu_kernels_agree) {
    gpuseg_ctx *ctx = tu_ctx();
    const char *names[3] = {"dsb65", "usi", "dsb313"};
    for (int t = 0; t < 3; t++) {
        char f[64];
        snprintf(f, sizeof f, "%s_flows.npy", names[t]);
        gpuseg_npy *fl = load(f);
        const uint32_t H = (uint32_t)fl->shape[1], W = (uint32_t)fl->shape[2];
        const size_t n = (size_t)H * W;
        cl_mem d = upload(ctx, fl->data, 3 * n * sizeof(float));
        float *pos[2];
        double *err[2];
        uint32_t *lab[2], nm[2], n_pre[2];
        for (int v = 0; v < 2; v++) {
            gpuseg__masks_debug dbg;
            memset(&dbg, 0, sizeof dbg);
            dbg.pos = pos[v] = calloc(2 * n, sizeof(float));
            dbg.flow_err_cap = 4096;
            dbg.flow_err = err[v] = calloc(dbg.flow_err_cap, sizeof(double));
            lab[v] = malloc(n * 4);
            ck_assert(pos[v] && err[v] && lab[v]);
            gpuseg__flow_variant = v;
            cl_mem out = NULL;
            gpuseg_dtype dt;
            gpuseg_status st = gpuseg__masks_run(ctx, d, 0, H, W, NULL, &dbg, &out, &dt, &nm[v]);
            gpuseg__flow_variant = -1;
            ck_assert_msg(st == GPUSEG_OK, "%s", gpuseg_last_error());
            ck_assert(dt == GPUSEG_DTYPE_U16);
            uint16_t *l16 = malloc(n * 2);
            ck_assert(l16);
            ck_assert(clEnqueueReadBuffer(gpuseg_ctx_cl_queue(ctx), out, CL_TRUE, 0, n * 2, l16, 0,
                                          NULL, NULL) == CL_SUCCESS);
            for (size_t i = 0; i < n; i++)
                lab[v][i] = l16[i];
            free(l16);
            n_pre[v] = dbg.n_pre;
            clReleaseMemObject(out);
        }
        ck_assert_uint_eq(nm[0], nm[1]);
        ck_assert_uint_eq(n_pre[0], n_pre[1]);
        const float *cp = (const float *)fl->data + 2 * n;
        for (size_t i = 0; i < 2 * n; i++)
            if (cp[i % n] > 0.0f) /* followed pixels only: no position is written elsewhere */
                ck_assert_msg(memcmp(&pos[0][i], &pos[1][i], sizeof(float)) == 0,
                              "%s: end point %zu: %.9g vs %.9g", names[t], i, (double)pos[0][i],
                              (double)pos[1][i]);
        ck_assert_msg(memcmp(err[0], err[1], 4096 * sizeof(double)) == 0, "%s: flow errors",
                      names[t]);
        ck_assert_msg(memcmp(lab[0], lab[1], n * 4) == 0, "%s: labels", names[t]);
        for (int v = 0; v < 2; v++) {
            free(pos[v]);
            free(err[v]);
            free(lab[v]);
        }
        clReleaseMemObject(d);
        gpuseg_npy_free(fl);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

/* The cl_mem variant gives the same labels as the host variant and leaves flows untouched. */
START_TEST(cl_variant) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_npy *fl = load("usi_flows.npy");
    const uint32_t H = (uint32_t)fl->shape[1], W = (uint32_t)fl->shape[2];
    const size_t n = (size_t)H * W;
    gpuseg_image *lab = NULL;
    uint32_t n1 = 0, n2 = 0;
    ck_assert(gpuseg_flows_to_masks(ctx, fl->data, H, W, NULL, &lab, &n1) == GPUSEG_OK);
    cl_mem d = upload(ctx, fl->data, 3 * n * sizeof(float)), out = NULL;
    gpuseg_dtype dt;
    ck_assert(gpuseg_flows_to_masks_cl(ctx, d, H, W, NULL, &out, &dt, &n2) == GPUSEG_OK);
    ck_assert_int_eq(dt, GPUSEG_DTYPE_U16);
    ck_assert_uint_eq(n1, n2);
    uint16_t *got = malloc(n * 2);
    float *back = malloc(3 * n * sizeof(float));
    cl_command_queue q = gpuseg_ctx_cl_queue(ctx);
    ck_assert_int_eq(clEnqueueReadBuffer(q, out, CL_TRUE, 0, n * 2, got, 0, NULL, NULL), 0);
    ck_assert_int_eq(clEnqueueReadBuffer(q, d, CL_TRUE, 0, 3 * n * 4, back, 0, NULL, NULL), 0);
    ck_assert(memcmp(got, lab->data, n * 2) == 0);
    ck_assert(memcmp(back, fl->data, 3 * n * 4) == 0);
    /* a buffer too small for [3, H, W] is refused */
    cl_mem small = upload(ctx, fl->data, n * sizeof(float));
    cl_mem o2 = NULL;
    ck_assert_int_eq(gpuseg_flows_to_masks_cl(ctx, small, H, W, NULL, &o2, &dt, NULL),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert(o2 == NULL);
    ck_assert(strstr(gpuseg_last_error(), "flows buffer") != NULL);
    clReleaseMemObject(small);
    clReleaseMemObject(out);
    clReleaseMemObject(d);
    free(got);
    free(back);
    gpuseg_image_free(lab);
    gpuseg_npy_free(fl);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* ---- device: hand-made cases ----------------------------------------------------------------- */

static gpuseg_image *run_masks(gpuseg_ctx *ctx, const float *fl, uint32_t H, uint32_t W,
                               const gpuseg_masks_params *p, uint32_t *nm) {
    gpuseg_image *lab = NULL;
    ck_assert_msg(gpuseg_flows_to_masks(ctx, fl, H, W, p, &lab, nm) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    return lab;
}

START_TEST(empty_and_tiny) {
    gpuseg_ctx *ctx = tu_ctx();
    /* all background: zero masks, uint16 zeros */
    const uint32_t H = 37, W = 53;
    float *fl = calloc(3 * (size_t)H * W, sizeof *fl);
    for (size_t i = 0; i < (size_t)H * W; i++) {
        fl[i] = 3.0f; /* flows present but nothing is foreground */
        fl[2 * (size_t)H * W + i] = -1.0f;
    }
    uint32_t nm = 99;
    gpuseg_image *lab = run_masks(ctx, fl, H, W, NULL, &nm);
    ck_assert_uint_eq(nm, 0);
    ck_assert_int_eq(lab->dtype, GPUSEG_DTYPE_U16);
    for (size_t i = 0; i < (size_t)H * W; i++)
        ck_assert_uint_eq(label_at(lab, i), 0);
    gpuseg_image_free(lab);
    /* foreground everywhere but flows zero: every pixel stays, counts 1 <= 10: no seed */
    for (size_t i = 0; i < (size_t)H * W; i++) {
        fl[i] = 0.0f;
        fl[2 * (size_t)H * W + i] = 5.0f;
    }
    lab = run_masks(ctx, fl, H, W, NULL, &nm);
    ck_assert_uint_eq(nm, 0);
    gpuseg_image_free(lab);
    /* 1x1, foreground and background */
    float one[3] = {1.0f, -1.0f, 2.0f};
    lab = run_masks(ctx, one, 1, 1, NULL, &nm);
    ck_assert_uint_eq(nm, 0);
    ck_assert_uint_eq(lab->width, 1);
    ck_assert_uint_eq(label_at(lab, 0), 0);
    gpuseg_image_free(lab);
    one[2] = -2.0f;
    lab = run_masks(ctx, one, 1, 1, NULL, &nm);
    ck_assert_uint_eq(nm, 0);
    gpuseg_image_free(lab);
    free(fl);
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(nonfinite_and_bad_arguments) {
    gpuseg_ctx *ctx = tu_ctx();
    const uint32_t H = 8, W = 9;
    const size_t n = (size_t)H * W;
    float *fl = calloc(3 * n, sizeof *fl);
    fl[n + 2 * W + 3] = NAN;          /* dX at y 2, x 3 */
    fl[2 * n + 5 * W + 1] = INFINITY; /* cellprob at y 5, x 1 */
    gpuseg_image *lab = (gpuseg_image *)1;
    ck_assert_int_eq(gpuseg_flows_to_masks(ctx, fl, H, W, NULL, &lab, NULL), GPUSEG_FORMAT);
    ck_assert(lab == NULL);
    const char *msg = gpuseg_last_error();
    ck_assert_msg(strstr(msg, "2 NaN or infinite values") && strstr(msg, "dX at y 2, x 3"), "%s",
                  msg);
    ck_assert_str_eq(gpuseg_ctx_last_error(ctx), msg);
    ck_assert_int_eq(gpuseg_flows_to_masks(ctx, NULL, H, W, NULL, &lab, NULL),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_flows_to_masks(ctx, fl, 0, W, NULL, &lab, NULL),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "empty image") != NULL);
    ck_assert_int_eq(gpuseg_flows_to_masks(ctx, fl, 1u << 20, 1u << 20, NULL, &lab, NULL),
                     GPUSEG_TOO_LARGE);
    gpuseg_masks_params p;
    gpuseg_masks_params_default(&p);
    p.flow_threshold = NAN;
    ck_assert_int_eq(gpuseg_flows_to_masks(ctx, fl, H, W, &p, &lab, NULL), GPUSEG_INVALID_ARGUMENT);
    free(fl);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Blocks of 4x4 pixels whose flows move every pixel onto the block's cell (1, 1) in one step
 * (integer displacements: dP = 5 * d divides back exactly, and integer positions sample a single
 * pixel). bw x bh blocks give bw * bh masks of 16 pixels; QC off. */
static float *block_flows(uint32_t bh, uint32_t bw) {
    const uint32_t H = 4 * bh, W = 4 * bw;
    const size_t n = (size_t)H * W;
    float *fl = malloc(3 * n * sizeof *fl);
    ck_assert(fl != NULL);
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++) {
            size_t i = (size_t)y * W + x;
            fl[i] = 5.0f * (1.0f - (float)(y % 4));
            fl[n + i] = 5.0f * (1.0f - (float)(x % 4));
            fl[2 * n + i] = 1.0f;
        }
    return fl;
}

/* Cellpose returns uint32 when a label >= 65536 is left after QC, uint16 otherwise. */
/* ---- device: progress reports and cancelling --------------------------------------------- */

typedef struct progress_log {
    gpuseg_ctx *ctx;
    int reports;        /* reports seen */
    int cancel_at;      /* cancel at this report (1-based); 0: never */
    double first, last; /* fractions of the first and the last report */
    int decreasing;     /* a fraction or a done count went down */
    int bad;            /* a report with another stage name, or done > total */
    uint64_t done;
} progress_log;

static void on_progress(void *user, const gpuseg_progress *p) {
    progress_log *l = user;
    if (l->reports == 0)
        l->first = p->fraction;
    else if (p->fraction < l->last || p->done < l->done)
        l->decreasing = 1;
    l->reports++;
    l->last = p->fraction;
    l->done = p->done;
    if (!p->stage || strcmp(p->stage, "masks") != 0 || p->done > p->total)
        l->bad = 1;
    if (l->reports == l->cancel_at)
        gpuseg_ctx_cancel(l->ctx, 1);
}

/* The context's reference count: PoCL counts every live buffer of the context in it, so a buffer
 * left behind by a run shows as a higher count afterwards. */
static cl_uint context_refs(gpuseg_ctx *ctx) {
    cl_uint refs = 0;
    ck_assert_int_eq(clGetContextInfo(gpuseg_ctx_cl_context(ctx), CL_CONTEXT_REFERENCE_COUNT,
                                      sizeof refs, &refs, NULL),
                     CL_SUCCESS);
    return refs;
}

/* context_refs once it has come down to want (0: once it holds still for 20 ms), or after 2 s:
 * PoCL drops the references of released buffers when its worker threads have retired the commands
 * that used them, a moment after clFinish. A buffer never released keeps the count up for good. */
static cl_uint settled_refs(gpuseg_ctx *ctx, cl_uint want) {
    clFinish(gpuseg_ctx_cl_queue(ctx));
    cl_uint refs = context_refs(ctx), prev = 0;
    for (int i = 0; i < 100 && (want ? refs > want : refs != prev); i++) {
        nanosleep(&(struct timespec){0, 20000000}, NULL);
        prev = refs;
        refs = context_refs(ctx);
    }
    return refs;
}

/* Progress of a whole run: every report names the stage "masks", fractions and done counts never
 * go down, the first is 0 and the last is 1. */
START_TEST(progress_reaches_one) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_npy *fl = load("usi_flows.npy");
    const uint32_t H = (uint32_t)fl->shape[1], W = (uint32_t)fl->shape[2];
    progress_log log = {.ctx = ctx};
    gpuseg_ctx_set_progress(ctx, on_progress, &log);
    uint32_t nm = 0;
    gpuseg_image *lab = run_masks(ctx, fl->data, H, W, NULL, &nm);
    ck_assert_uint_gt(nm, 0);
    ck_assert_int_ge(log.reports, 3);
    ck_assert(!log.decreasing);
    ck_assert(!log.bad);
    ck_assert(log.first == 0.0);
    ck_assert(log.last == 1.0);
    gpuseg_image_free(lab);
    gpuseg_npy_free(fl);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* A cancel request made from the progress callback at each report but the last (which comes
 * when the work is done) stops the run at the next check: GPUSEG_CANCELLED, no output, and no
 * device buffer left behind; the caller's flows buffer of the _cl variant is untouched. */
START_TEST(cancel_from_progress) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_npy *fl = load("usi_flows.npy");
    const uint32_t H = (uint32_t)fl->shape[1], W = (uint32_t)fl->shape[2];
    const size_t n = (size_t)H * W;
    progress_log log = {.ctx = ctx};
    gpuseg_ctx_set_progress(ctx, on_progress, &log);
    uint32_t nm = 0;
    gpuseg_image *lab = run_masks(ctx, fl->data, H, W, NULL, &nm); /* builds every kernel */
    gpuseg_image_free(lab);
    const int total = log.reports;
    ck_assert_int_ge(total, 3);
    /* the leak check below can see one buffer */
    const cl_uint refs0 = settled_refs(ctx, 0);
    cl_mem probe = upload(ctx, fl->data, 16);
    ck_assert_uint_eq(context_refs(ctx), refs0 + 1);
    clReleaseMemObject(probe);
    ck_assert_uint_eq(context_refs(ctx), refs0);
    for (int at = 1; at < total; at++) {
        log = (progress_log){.ctx = ctx, .cancel_at = at};
        gpuseg_ctx_cancel(ctx, 0);
        lab = NULL;
        nm = 77;
        ck_assert_int_eq(gpuseg_flows_to_masks(ctx, fl->data, H, W, NULL, &lab, &nm),
                         GPUSEG_CANCELLED);
        ck_assert_msg(lab == NULL, "cancelled at report %d: an output image", at);
        ck_assert_int_eq(log.reports, at);
        ck_assert_ptr_nonnull(strstr(gpuseg_ctx_last_error(ctx), "cancelled"));
        const cl_uint refs = settled_refs(ctx, refs0);
        ck_assert_msg(refs == refs0, "cancelled at report %d: %u buffers left", at, refs - refs0);
    }
    /* the _cl variant, cancelled half way, on a buffer it does not own */
    cl_mem d = upload(ctx, fl->data, 3 * n * sizeof(float)), out = NULL;
    gpuseg_dtype dt;
    log = (progress_log){.ctx = ctx, .cancel_at = total / 2};
    gpuseg_ctx_cancel(ctx, 0);
    ck_assert_int_eq(gpuseg_flows_to_masks_cl(ctx, d, H, W, NULL, &out, &dt, NULL),
                     GPUSEG_CANCELLED);
    ck_assert(out == NULL);
    cl_uint drefs = 0;
    ck_assert_int_eq(clGetMemObjectInfo(d, CL_MEM_REFERENCE_COUNT, sizeof drefs, &drefs, NULL),
                     CL_SUCCESS);
    ck_assert_uint_eq(drefs, 1);
    clReleaseMemObject(d);
    ck_assert_uint_eq(settled_refs(ctx, refs0), refs0);
    /* a standing request stops the next call before any work; withdrawn, the run completes */
    log = (progress_log){.ctx = ctx};
    ck_assert_int_eq(gpuseg_flows_to_masks(ctx, fl->data, H, W, NULL, &lab, &nm), GPUSEG_CANCELLED);
    ck_assert(lab == NULL);
    gpuseg_ctx_cancel(ctx, 0);
    lab = run_masks(ctx, fl->data, H, W, NULL, &nm);
    ck_assert_uint_gt(nm, 0);
    gpuseg_image_free(lab);
    gpuseg_npy_free(fl);
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(dtype_u32_from_65536_masks) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_masks_params p;
    gpuseg_masks_params_default(&p);
    p.flow_threshold = 0.0f;
    p.niter = 3;
    const uint32_t dims[2][2] = {{256, 256}, {255, 256}};
    for (int t = 0; t < 2; t++) {
        const uint32_t bh = dims[t][0], bw = dims[t][1], W = 4 * bw;
        float *fl = block_flows(bh, bw);
        uint32_t nm = 0;
        gpuseg_image *lab = run_masks(ctx, fl, 4 * bh, W, &p, &nm);
        ck_assert_uint_eq(nm, bh * bw);
        ck_assert_int_eq(lab->dtype, t == 0 ? GPUSEG_DTYPE_U32 : GPUSEG_DTYPE_U16);
        /* first appearance numbering: block (by, bx) is label by * bw + bx + 1 */
        for (uint32_t y = 0; y < 4 * bh; y += 7)
            for (uint32_t x = 0; x < W; x += 5)
                ck_assert_uint_eq(label_at(lab, (size_t)y * W + x), (y / 4) * bw + x / 4 + 1);
        gpuseg_image_free(lab);
        free(fl);
    }
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Host reference of hole filling for one label: free cells of the box not 4-connected to its
 * border (iterative flood fill). Writes owner[cell] = max(owner, prio). */
static void ref_fill(const uint32_t *lab, uint32_t W, uint32_t l, const uint32_t *bx, uint32_t prio,
                     uint32_t *owner) {
    const uint32_t y0 = bx[0], y1 = bx[1], x0 = bx[2], x1 = bx[3];
    const uint32_t bh = y1 - y0 + 1, bw = x1 - x0 + 1;
    uint8_t *s = calloc((size_t)bh * bw, 1);
    uint32_t *stack = malloc((size_t)bh * bw * sizeof *stack);
    size_t top = 0;
    for (uint32_t r = 0; r < bh; r++)
        for (uint32_t c = 0; c < bw; c++) {
            size_t k = (size_t)r * bw + c;
            if (lab[(size_t)(y0 + r) * W + x0 + c] == l)
                s[k] = 0;
            else if (r == 0 || c == 0 || r == bh - 1 || c == bw - 1) {
                s[k] = 2;
                stack[top++] = (uint32_t)k;
            } else
                s[k] = 1;
        }
    while (top) {
        uint32_t k = stack[--top], r = k / bw, c = k % bw;
        const int dr[4] = {-1, 1, 0, 0}, dc[4] = {0, 0, -1, 1};
        for (int d = 0; d < 4; d++) {
            int rr = (int)r + dr[d], cc = (int)c + dc[d];
            if (rr < 0 || cc < 0 || rr >= (int)bh || cc >= (int)bw)
                continue;
            size_t kk = (size_t)rr * bw + (size_t)cc;
            if (s[kk] == 1) {
                s[kk] = 2;
                stack[top++] = (uint32_t)kk;
            }
        }
    }
    for (uint32_t r = 0; r < bh; r++)
        for (uint32_t c = 0; c < bw; c++)
            if (s[(size_t)r * bw + c] == 1) {
                uint32_t *o = &owner[(size_t)(y0 + r) * W + x0 + c];
                *o = *o > prio ? *o : prio;
            }
    free(s);
    free(stack);
}

/* Device hole filling against the host reference on: a square spiral (its corridor to the
 * outside winds many times, so reach needs many row/column rounds; a true hole at its end),
 * a ring with another mask and a hole inside (the enclosed mask goes to the ring), and random
 * rectangles with random gaps. */
START_TEST(fill_holes_reference) {
    gpuseg_ctx *ctx = tu_ctx();
    const uint32_t H = 96, W = 120;
    const size_t n = (size_t)H * W;
    uint32_t *lab = calloc(n, 4), *got = malloc(n * 4), *want = malloc(n * 4);
    /* label 1: square spiral walls in [2, 61] x [2, 61], corridors 1 px, then a sealed hole */
    int t = 2, b = 61, l = 2, r = 61;
    for (int ring = 0; t <= b && l <= r; ring++) {
        for (int x = l; x <= r; x++)
            lab[t * W + x] = 1;
        for (int y = t; y <= b; y++)
            lab[y * W + r] = 1;
        for (int x = l; x <= r; x++)
            lab[b * W + x] = 1;
        for (int y = t + 2; y <= b; y++)
            lab[y * W + l] = 1;
        t += 2, b -= 2, l += 2, r -= 2;
        if (ring == 6) { /* close a box inside: a sealed hole with a 2x2 mask (label 3) */
            for (int y = t; y <= b; y++)
                for (int x = l; x <= r; x++)
                    lab[y * W + x] = (y == t || y == b || x == l || x == r) ? 1 : 0;
            lab[(t + 3) * W + l + 3] = lab[(t + 3) * W + l + 4] = 3;
            break;
        }
    }
    /* label 2: ring around label 4 (a plus shape) and a background hole */
    for (uint32_t y = 10; y < 40; y++)
        for (uint32_t x = 70; x < 110; x++)
            if (y == 10 || y == 39 || x == 70 || x == 109)
                lab[y * W + x] = 2;
    for (uint32_t k = 0; k < 9; k++) {
        lab[(20 + k) * W + 85] = 4;
        lab[24 * W + 81 + k] = 4;
    }
    /* labels 5..: random hollow rectangles with a gap in some walls, lower part of the image */
    srand(7);
    uint32_t nl = 4;
    for (int k = 0; k < 12; k++) {
        uint32_t y0 = 64 + (uint32_t)(rand() % 20), x0 = (uint32_t)(rand() % 100);
        uint32_t h = 4 + (uint32_t)(rand() % 10), w = 4 + (uint32_t)(rand() % 16);
        uint32_t v = ++nl;
        for (uint32_t y = y0; y < y0 + h && y < H; y++)
            for (uint32_t x = x0; x < x0 + w && x < W; x++)
                if (y == y0 || y == y0 + h - 1 || x == x0 || x == x0 + w - 1)
                    lab[y * W + x] = v;
        if (k % 3 == 0 && y0 + 1 < H)
            lab[(size_t)(y0 + 1) * W + x0] = 0; /* open wall: no hole */
    }
    /* tables from the image */
    uint32_t *count = calloc(nl + 1, 4), *box = malloc(4 * (nl + 1) * 4);
    for (uint32_t v = 0; v <= nl; v++) {
        box[4 * v] = box[4 * v + 2] = UINT32_MAX;
        box[4 * v + 1] = box[4 * v + 3] = 0;
    }
    for (uint32_t y = 0; y < H; y++)
        for (uint32_t x = 0; x < W; x++) {
            uint32_t v = lab[y * W + x];
            count[v]++;
            if (!v)
                continue;
            uint32_t *bx = box + 4 * v;
            bx[0] = y < bx[0] ? y : bx[0];
            bx[1] = y > bx[1] ? y : bx[1];
            bx[2] = x < bx[2] ? x : bx[2];
            bx[3] = x > bx[3] ? x : bx[3];
        }
    /* reference: priorities by (box area, label) as documented */
    uint32_t *owner = calloc(n, 4), *prio_of = calloc(nl + 1, 4);
    for (uint32_t v = 1; v <= nl; v++) {
        if (!count[v])
            continue;
        uint64_t av =
            (uint64_t)(box[4 * v + 1] - box[4 * v] + 1) * (box[4 * v + 3] - box[4 * v + 2] + 1);
        uint32_t rank = 1;
        for (uint32_t u = 1; u <= nl; u++) {
            if (!count[u] || u == v)
                continue;
            uint64_t au =
                (uint64_t)(box[4 * u + 1] - box[4 * u] + 1) * (box[4 * u + 3] - box[4 * u + 2] + 1);
            rank += au < av || (au == av && u < v);
        }
        prio_of[v] = rank;
    }
    for (uint32_t v = 1; v <= nl; v++)
        if (count[v])
            ref_fill(lab, W, v, box + 4 * v, prio_of[v], owner);
    for (size_t i = 0; i < n; i++) {
        want[i] = lab[i];
        if (owner[i])
            for (uint32_t v = 1; v <= nl; v++)
                if (prio_of[v] == owner[i])
                    want[i] = v;
    }
    /* twice: one launch, and launches of at most 200 scratch bytes (split between jobs) */
    const size_t caps[2] = {0, 200};
    for (int c = 0; c < 2; c++) {
        cl_mem d = upload(ctx, lab, n * 4);
        ck_assert_msg(gpuseg__masks_fill_holes(ctx, d, H, W, nl, count, box, caps[c]) == GPUSEG_OK,
                      "%s", gpuseg_last_error());
        ck_assert_int_eq(
            clEnqueueReadBuffer(gpuseg_ctx_cl_queue(ctx), d, CL_TRUE, 0, n * 4, got, 0, NULL, NULL),
            0);
        clReleaseMemObject(d);
        size_t diff = 0;
        for (size_t i = 0; i < n; i++)
            diff += got[i] != want[i];
        ck_assert_msg(diff == 0, "scratch cap %zu: %zu cells differ from the reference", caps[c],
                      diff);
    }
    size_t filled = 0;
    for (size_t i = 0; i < n; i++)
        filled += got[i] != lab[i];
    /* the spiral's sealed hole and its 2x2 mask, the ring's inside and its plus are filled */
    ck_assert(filled > 28 * 38);
    ck_assert_uint_eq(got[25 * W + 90], 2);
    ck_assert_uint_eq(got[24 * W + 85], 2);
    free(lab);
    free(got);
    free(want);
    free(count);
    free(box);
    free(owner);
    free(prio_of);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* ---- the command ------------------------------------------------------------------------------
 */

START_TEST(cli_masks) {
    const char *dir = tu_tmpdir();
    /* success: .tif and .npy outputs, one JSON line */
    tu_cli_result *r = tu_cli("masks '%s' -o '%s/out.npy'", FIX "dsb65_flows.npy", dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert(strstr(r->out, "\"n_masks\":65") != NULL);
    ck_assert_int_eq(tu_count_lines(r->out), 1);
    free(r);
    char path[1024];
    snprintf(path, sizeof path, "%s/out.npy", dir);
    gpuseg_npy *got = NULL, *ref = load("dsb65_masks_qc.npy");
    ck_assert(gpuseg_npy_read(path, &got) == GPUSEG_OK);
    ck_assert_int_eq(got->dtype, GPUSEG_DTYPE_U16);
    ck_assert_uint_eq(got->shape[0], 256);
    size_t same = 0;
    for (size_t i = 0; i < 256 * 256; i++)
        same += npy_label(got, i) == npy_label(ref, i);
    ck_assert(same >= 256 * 256 - 65);
    gpuseg_npy_free(got);
    gpuseg_npy_free(ref);
    r = tu_cli("masks '%s' --flow-threshold 0 --min-size 0 --niter 100 -o '%s/out.tif'",
               FIX "usi_flows.npy", dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    snprintf(path, sizeof path, "%s/out.tif", dir);
    ck_assert(tu_exists(path));
    free(r);

    /* wrong shape and wrong dtype: exit 1, one line naming the file */
    uint64_t sh[3] = {2, 4, 5};
    float zeros[60] = {0};
    snprintf(path, sizeof path, "%s/two.npy", dir);
    ck_assert(gpuseg_npy_write(path, GPUSEG_DTYPE_F32, 3, sh, zeros) == GPUSEG_OK);
    r = tu_cli("masks '%s' -o '%s/x.tif'", path, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert(strstr(r->err, path) && strstr(r->err, "[2, 4, 5]"));
    free(r);
    uint64_t sh3[3] = {3, 4, 5};
    uint16_t z16[60] = {0};
    snprintf(path, sizeof path, "%s/u16.npy", dir);
    ck_assert(gpuseg_npy_write(path, GPUSEG_DTYPE_U16, 3, sh3, z16) == GPUSEG_OK);
    r = tu_cli("masks '%s' -o '%s/x.tif'", path, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert(strstr(r->err, path) && strstr(r->err, "uint16"));
    free(r);
    /* NaN in the flows: exit 1, names the file and the place */
    float fl[60] = {0};
    fl[20 + 7] = NAN;
    snprintf(path, sizeof path, "%s/nan.npy", dir);
    ck_assert(gpuseg_npy_write(path, GPUSEG_DTYPE_F32, 3, sh3, fl) == GPUSEG_OK);
    r = tu_cli("masks '%s' -o '%s/x.tif'", path, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert(strstr(r->err, path) && strstr(r->err, "dX at y 1, x 2"));
    free(r);
    /* missing file: exit 1; missing -o or bad option value: usage, exit 2 */
    r = tu_cli("masks '%s/missing.npy' -o '%s/x.tif'", dir, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "missing.npy") != NULL);
    free(r);
    r = tu_cli("masks '%s' -o '%s/x.xyz'", FIX "dsb65_flows.npy", dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert(strstr(r->err, "x.xyz") != NULL);
    free(r);
    r = tu_cli("masks '%s'", FIX "dsb65_flows.npy");
    ck_assert_int_eq(r->status, 2);
    free(r);
    r = tu_cli("masks '%s' -o x.tif --niter abc", FIX "dsb65_flows.npy");
    ck_assert_int_eq(r->status, 2);
    free(r);
    snprintf(path, sizeof path, "%s/x.tif", dir);
    ck_assert(!tu_exists(path));
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("masks");
    TCase *host = tcase_create("host");
    tcase_add_test(host, params_default);
    tcase_add_test(host, size_filter_quirk);
    suite_add_tcase(s, host);
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    if (dev == 0) {
        TCase *d = tcase_create("device");
        tcase_set_timeout(d, 600);
        tcase_add_loop_test(d, fixtures_match_cellpose, 0, (int)(sizeof cases / sizeof cases[0]));
        tcase_add_test(d, euler_bitexact_and_flow_errors);
        tcase_add_test(d, cl_variant);
        tcase_add_test(d, cpu_and_gpu_kernels_agree);
        tcase_add_test(d, empty_and_tiny);
        tcase_add_test(d, nonfinite_and_bad_arguments);
        tcase_add_test(d, dtype_u32_from_65536_masks);
        tcase_add_test(d, progress_reaches_one);
        tcase_add_test(d, cancel_from_progress);
        tcase_add_test(d, fill_holes_reference);
        tcase_add_test(d, cli_masks);
        suite_add_tcase(s, d);
    }
    return tu_run(s);
}
