/* tests/test_segment.c: gpuseg_segment (Cellpose 3.1 CellposeModel.eval, 2-D) against Cellpose
 * itself on the fixtures of tools/fixtures/make_net_fixtures.py (a small random CPnet; a grey
 * crop at diameter 0, an RGB crop with chan 2 / chan2 3 at diameter 36, a grey crop with
 * augment at diameter 30): blended, resized flows and cellprob, the style vector, niter, and
 * the final masks (AP@0.5), with each convolution implementation; batching; the `gpuseg
 * segment` command (outputs and their contents) and its error paths. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net/net_internal.h"
#include "testutil.h"

#define FIX GPUSEG_SOURCE_DIR "/tests/fixtures/net/"

/* The cases as make_net_fixtures.py ran them (see MANIFEST.json there: the thresholds are its
 * recorded per-case cellprob medians; niter its trunc(200 / rescale)). */
static const struct {
    const char *name;
    int chan, chan2;
    double diameter;
    int augment;
    float flow_threshold, cellprob_threshold;
    uint32_t niter, n_masks;
} cases[] = {
    {"grey", 0, 0, 0.0, 0, 0.0f, -0.13f, 163, 99},
    {"rgb", 2, 3, 36.0, 0, 2.0f, 2.36f, 240, 4},
    {"aug", 0, 0, 30.0, 1, 0.0f, -0.18f, 200, 139},
    /* 132 x 120 at diameter 36: Cellpose's float32 int(L * r) gives 110 x 100 (double: 109 x 99) */
    {"d36", 0, 0, 36.0, 0, 0.0f, -0.1f, 240, 45},
};
static const char *impls[] = {"direct", "clblast", "winograd"};
#define N_IMPLS (int)(sizeof impls / sizeof impls[0])

static gpuseg_npy *load(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, FIX "%s", name);
    gpuseg_npy *a = NULL;
    ck_assert_msg(gpuseg_npy_read(path, &a) == GPUSEG_OK, "%s", gpuseg_last_error());
    return a;
}

static gpuseg_image *load_image(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, FIX "%s", name);
    gpuseg_image *img = NULL;
    ck_assert_msg(gpuseg_image_read(path, &img) == GPUSEG_OK, "%s", gpuseg_last_error());
    return img;
}

static uint32_t *labels_u32(const void *data, gpuseg_dtype t, size_t n) {
    uint32_t *o = malloc(n * sizeof *o);
    ck_assert_ptr_nonnull(o);
    for (size_t i = 0; i < n; i++)
        o[i] = t == GPUSEG_DTYPE_U16 ? ((const uint16_t *)data)[i] : ((const uint32_t *)data)[i];
    return o;
}

static void params_for(int c, gpuseg_segment_params *p) {
    gpuseg_segment_params_default(p);
    p->chan = cases[c].chan;
    p->chan2 = cases[c].chan2;
    p->diameter = cases[c].diameter;
    p->augment = cases[c].augment;
    p->flow_threshold = cases[c].flow_threshold;
    p->cellprob_threshold = cases[c].cellprob_threshold;
    p->want_flows = 1;
    p->want_style = 1;
}

/* _i = case * 2 + implementation */
START_TEST(matches_cellpose_eval) {
    int c = _i / N_IMPLS;
    setenv("GPUSEG_CONV", impls[_i % N_IMPLS], 1); /* forked per test: stays in this test */
    char name[64];
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK);
    snprintf(name, sizeof name, "%s_img.png", cases[c].name);
    gpuseg_image *img = load_image(name);
    gpuseg_segment_params p;
    params_for(c, &p);
    gpuseg_segment_result r;
    ck_assert_msg(gpuseg_segment(ctx, net, img, &p, &r) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_uint_eq(r.niter, cases[c].niter);
    uint32_t H = img->height, W = img->width;
    ck_assert_uint_eq(r.labels->height, H);
    ck_assert_uint_eq(r.labels->width, W);

    snprintf(name, sizeof name, "%s_flows.npy", cases[c].name);
    gpuseg_npy *fl = load(name);
    ck_assert(fl->shape[0] == 3 && fl->shape[1] == H && fl->shape[2] == W);
    const float *want = fl->data;
    double err[3] = {0, 0, 0}, range[3] = {0, 0, 0};
    for (int k = 0; k < 3; k++) {
        float lo = INFINITY, hi = -INFINITY;
        for (size_t i = (size_t)k * H * W; i < (size_t)(k + 1) * H * W; i++) {
            err[k] = fmax(err[k], fabs((double)r.flows[i] - want[i]));
            lo = fminf(lo, want[i]);
            hi = fmaxf(hi, want[i]);
        }
        range[k] = hi - lo;
        /* forward ~1e-6 of the range (test_net), blend ~1 ulp, resize back ~1e-7 relative;
         * measured up to ~2e-6 of the range. 1e-4 of each map's range leaves margin while a
         * wrong tile, flip, sign or pad moves values by a large part of the range. */
        ck_assert_msg(err[k] <= 1e-4 * range[k], "%s map %d: error %g, range %g", cases[c].name, k,
                      err[k], range[k]);
    }
    snprintf(name, sizeof name, "%s_style.npy", cases[c].name);
    gpuseg_npy *st = load(name);
    ck_assert_uint_eq(r.style_len, st->shape[0]);
    double serr = 0;
    for (uint32_t k = 0; k < r.style_len; k++)
        serr = fmax(serr, fabs((double)r.style[k] - ((const float *)st->data)[k]));
    ck_assert_msg(serr <= 1e-5, "style error %g", serr); /* unit vector; measured ~1e-7 */

    snprintf(name, sizeof name, "%s_masks.npy", cases[c].name);
    gpuseg_npy *mk = load(name);
    uint32_t *truth = labels_u32(mk->data, mk->dtype, (size_t)H * W);
    uint32_t *pred = labels_u32(r.labels->data, r.labels->dtype, (size_t)H * W);
    gpuseg_ap_result ap;
    double thr = 0.5;
    ck_assert(gpuseg_metrics_ap(truth, pred, H, W, &thr, 1, &ap) == GPUSEG_OK);
    size_t same = 0;
    for (size_t i = 0; i < (size_t)H * W; i++)
        same += truth[i] == pred[i];
    printf("%s (%s): flows err %.2g/%.2g/%.2g (ranges %.3g/%.3g/%.3g), style %.2g, masks %u vs "
           "%u, AP@0.5 %.4f, equal pixels %.5f, net %.2f s, masks %.2f s\n",
           cases[c].name, impls[_i % N_IMPLS], err[0], err[1], err[2], range[0], range[1], range[2],
           serr, r.n_masks, cases[c].n_masks, ap.ap, (double)same / ((double)H * W), r.seconds_net,
           r.seconds_masks);
    /* the flows differ by float rounding only, so a mask may move a few boundary pixels */
    ck_assert_msg(ap.ap >= 0.99, "AP@0.5 %g", ap.ap);
    ck_assert_uint_eq(ap.n_true, cases[c].n_masks);
    free(truth);
    free(pred);
    gpuseg_npy_free(mk);
    gpuseg_npy_free(st);
    gpuseg_npy_free(fl);
    gpuseg_segment_result_free(&r);
    gpuseg_image_free(img);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Batches of 1 and 3 tiles give the same flows as the default 8 (per-tile work does not depend
 * on the batch); the style and the masks too. */
START_TEST(batching_invariant) {
    setenv("GPUSEG_CONV", "direct", 1);
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK);
    gpuseg_image *img = load_image("aug_img.png");
    gpuseg_segment_params p;
    params_for(2, &p);
    gpuseg_segment_result a, b;
    ck_assert(gpuseg_segment(ctx, net, img, &p, &a) == GPUSEG_OK);
    ck_assert_uint_eq(a.batch_size, 4); /* 4 tiles: the batch is cut to the tile count */
    p.batch_size = 3;
    ck_assert(gpuseg_segment(ctx, net, img, &p, &b) == GPUSEG_OK);
    ck_assert_uint_eq(b.batch_size, 3);
    size_t n = (size_t)3 * img->height * img->width;
    ck_assert(memcmp(a.flows, b.flows, n * sizeof(float)) == 0);
    ck_assert_uint_eq(a.n_masks, b.n_masks);
    gpuseg_segment_result_free(&b);
    p.batch_size = 1;
    ck_assert(gpuseg_segment(ctx, net, img, &p, &b) == GPUSEG_OK);
    ck_assert(memcmp(a.flows, b.flows, n * sizeof(float)) == 0);
    ck_assert(memcmp(a.style, b.style, a.style_len * sizeof(float)) == 0);
    gpuseg_segment_result_free(&a);
    gpuseg_segment_result_free(&b);
    gpuseg_image_free(img);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(api_errors) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK);
    gpuseg_image *rgb = load_image("rgb_img.png");
    gpuseg_segment_params p;
    gpuseg_segment_params_default(&p);
    ck_assert_uint_eq(p.batch_size, 8);
    ck_assert_float_eq(p.flow_threshold, 0.4f);
    ck_assert_int_eq(p.min_size, 15);
    gpuseg_segment_result r;
    p.diameter = -3;
    ck_assert_int_eq(gpuseg_segment(ctx, net, rgb, &p, &r), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "diameter") != NULL);
    ck_assert_ptr_null(r.labels);
    p.diameter = NAN;
    ck_assert_int_eq(gpuseg_segment(ctx, net, rgb, &p, &r), GPUSEG_INVALID_ARGUMENT);
    p.diameter = 1e-6; /* rescale 3e7 */
    ck_assert_int_eq(gpuseg_segment(ctx, net, rgb, &p, &r), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "absurd") != NULL);
    p.diameter = 0;
    p.chan = 4; /* the RGB image has 3 channels */
    ck_assert_int_eq(gpuseg_segment(ctx, net, rgb, &p, &r), GPUSEG_INVALID_ARGUMENT);
    ck_assert(gpuseg_last_error()[0] != 0);
    p.chan = 0;
    p.batch_size = 0;
    ck_assert_int_eq(gpuseg_segment(ctx, net, rgb, &p, &r), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_segment(ctx, net, NULL, NULL, &r), GPUSEG_INVALID_ARGUMENT);

    /* an image smaller than a tile (and than the padding): 12 x 9, one tile of 32 x 32 */
    gpuseg_image *tiny = NULL;
    ck_assert(gpuseg_image_create(9, 12, 1, 1, GPUSEG_DTYPE_U8, &tiny) == GPUSEG_OK);
    for (int i = 0; i < 108; i++)
        ((uint8_t *)tiny->data)[i] = (uint8_t)((i * 37) % 251);
    ck_assert_msg(gpuseg_segment(ctx, net, tiny, NULL, &r) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_uint_eq(r.labels->width, 9);
    ck_assert_uint_eq(r.labels->height, 12);
    ck_assert_uint_eq(r.n_tiles, 1);
    ck_assert_ptr_null(r.flows); /* not asked for */
    gpuseg_segment_result_free(&r);
    gpuseg_segment_result_free(&r); /* twice is harmless */
    gpuseg_image_free(tiny);
    gpuseg_image_free(rgb);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* What the progress callback saw, and when it cancels. */
typedef struct {
    gpuseg_ctx *ctx;
    unsigned calls, network_calls;
    double first, last;
    int decreasing; /* a fraction below the one before */
    uint64_t net_done, net_total;
    uint64_t cancel_after;    /* cancel once this many tiles went through (0: never) */
    const char *cancel_stage; /* or when this stage starts (NULL: never) */
    unsigned preps;           /* "prep" reports: one per pass */
    unsigned cancel_prep;     /* cancel at this "prep" report (0: never) */
} progress_log;

static void on_progress(void *user, const gpuseg_progress *p) {
    progress_log *l = user;
    ck_assert_ptr_nonnull(p->stage);
    ck_assert(p->fraction >= 0.0 && p->fraction <= 1.0);
    if (l->calls == 0)
        l->first = p->fraction;
    else if (p->fraction < l->last)
        l->decreasing = 1;
    l->last = p->fraction;
    l->calls++;
    if (strcmp(p->stage, "network") == 0) {
        l->network_calls++;
        ck_assert(p->done <= p->total);
        l->net_done = p->done;
        l->net_total = p->total;
        if (l->cancel_after && p->done >= l->cancel_after)
            gpuseg_ctx_cancel(l->ctx, 1);
    }
    if (strcmp(p->stage, "prep") == 0 && ++l->preps == l->cancel_prep)
        gpuseg_ctx_cancel(l->ctx, 1);
    if (l->cancel_stage && strcmp(p->stage, l->cancel_stage) == 0)
        gpuseg_ctx_cancel(l->ctx, 1);
}

static void assert_empty(const gpuseg_segment_result *r) {
    ck_assert_ptr_null(r->labels);
    ck_assert_ptr_null(r->flows);
    ck_assert_ptr_null(r->style);
    ck_assert_uint_eq(r->n_masks, 0);
    ck_assert_uint_eq(r->passes, 0);
}

/* Progress: fractions never go back and end at 1, the network stage counts every tile; a cancel
 * requested from the callback (mid-network, at the masks stage, in a diameter-estimation pass)
 * ends the call with GPUSEG_CANCELLED, an empty result and a one-line message; the flag stays
 * until cleared, and the next call then succeeds with the same masks as an undisturbed one. */
START_TEST(progress_and_cancel) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK);
    gpuseg_image *img = load_image("aug_img.png");
    gpuseg_segment_params p;
    params_for(2, &p);
    p.batch_size = 1; /* 4 tiles, 4 batches */
    progress_log l = {.ctx = ctx};
    gpuseg_ctx_set_progress(ctx, on_progress, &l);
    gpuseg_segment_result a, r;
    ck_assert_msg(gpuseg_segment(ctx, net, img, &p, &a) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_int_eq(l.decreasing, 0);
    ck_assert(l.first < 0.05);
    ck_assert(l.last == 1.0);
    ck_assert_uint_eq(l.net_total, 4);
    ck_assert_uint_eq(l.net_done, 4);
    ck_assert_uint_ge(l.network_calls, 5); /* 0 of 4, then after each batch */

    /* cancelled after the first batch */
    l = (progress_log){.ctx = ctx, .cancel_after = 1};
    ck_assert_int_eq(gpuseg_segment(ctx, net, img, &p, &r), GPUSEG_CANCELLED);
    assert_empty(&r);
    ck_assert_msg(strstr(gpuseg_ctx_last_error(ctx), "cancelled") != NULL, "%s",
                  gpuseg_ctx_last_error(ctx));
    ck_assert_int_eq(tu_count_lines(gpuseg_ctx_last_error(ctx)), 0);
    ck_assert_uint_eq(l.net_done, 1); /* no further batch ran */
    ck_assert(gpuseg_ctx_cancelled(ctx));
    /* the flag stands: the next call stops at its first check, before any progress */
    l = (progress_log){.ctx = ctx};
    ck_assert_int_eq(gpuseg_segment(ctx, net, img, &p, &r), GPUSEG_CANCELLED);
    assert_empty(&r);
    ck_assert_uint_eq(l.calls, 0);
    gpuseg_ctx_cancel(ctx, 0);

    /* cancelled when the masks stage starts */
    l = (progress_log){.ctx = ctx, .cancel_stage = "masks"};
    ck_assert_int_eq(gpuseg_segment(ctx, net, img, &p, &r), GPUSEG_CANCELLED);
    assert_empty(&r);
    ck_assert_uint_eq(l.net_done, 4);
    gpuseg_ctx_cancel(ctx, 0);

    /* cleared: the same call succeeds, with the same masks */
    l = (progress_log){.ctx = ctx};
    ck_assert_msg(gpuseg_segment(ctx, net, img, &p, &r) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_uint_eq(r.n_masks, a.n_masks);
    size_t n = (size_t)img->height * img->width;
    ck_assert(memcmp(r.labels->data, a.labels->data, n * gpuseg_dtype_size(a.labels->dtype)) == 0);
    ck_assert(l.last == 1.0);
    gpuseg_segment_result_free(&r);

    /* with diameter estimation: still non-decreasing and ending at 1 over several passes, and a
     * cancel in a later pass leaves nothing behind */
    p.estimate_diameter = 1;
    l = (progress_log){.ctx = ctx};
    ck_assert_msg(gpuseg_segment(ctx, net, img, &p, &r) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_int_eq(l.decreasing, 0);
    ck_assert(l.last == 1.0);
    unsigned passes = r.passes;
    gpuseg_segment_result_free(&r);
    ck_assert_uint_ge(passes, 2); /* diameter 30 is far from what these masks measure */
    l = (progress_log){.ctx = ctx, .cancel_prep = 2}; /* as the second pass starts */
    ck_assert_int_eq(gpuseg_segment(ctx, net, img, &p, &r), GPUSEG_CANCELLED);
    assert_empty(&r);
    ck_assert_uint_eq(l.preps, 2);
    ck_assert_int_eq(l.decreasing, 0);
    ck_assert(l.last > 0.0 && l.last < 1.0);
    gpuseg_ctx_cancel(ctx, 0);
    gpuseg_ctx_set_progress(ctx, NULL, NULL);
    gpuseg_segment_result_free(&a);
    gpuseg_image_free(img);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}
END_TEST

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s", path);
    static char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = 0;
    fclose(f);
    return buf;
}

START_TEST(cli_segment) {
    const char *dir = tu_tmpdir();
    char cmd[4096], path[1024];
    /* default output beside the image: STEM_segmentation.bin + .json, summary on stderr */
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/grey.png'", FIX "grey_img.png", dir);
    ck_assert_int_eq(system(cmd), 0);
    tu_cli_result *r =
        tu_cli("segment '%s/grey.png' --model '%s' --flow-threshold 0 --cellprob-threshold "
               "-0.13 --save-flows --diameter model", /* Cellpose's diameter=None: parity */
               dir, FIX "small_cpnet.pth");
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert(strstr(r->err, "99 masks") && strstr(r->err, "diameter 24.50"));
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    free(r);
    snprintf(path, sizeof path, "%s/grey_segmentation.json", dir);
    const char *js = read_text(path);
    ck_assert_msg(strstr(js, "\"shape\":[200,184]") && strstr(js, "\"dtype\":\"uint16\"") &&
                      strstr(js, "\"n_masks\":99") && strstr(js, "\"diameter\":24.5") &&
                      strstr(js, "small_cpnet.pth") && strstr(js, "\"niter\":163") &&
                      strstr(js, "\"gpuseg_version\"") && strstr(js, "\"flow_threshold\":0"),
                  "%s", js);
    snprintf(path, sizeof path, "%s/grey_segmentation.bin", dir);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    static uint16_t lab[200 * 184];
    ck_assert_uint_eq(fread(lab, 2, 200 * 184 + 1, f), 200 * 184);
    fclose(f);
    gpuseg_npy *mk = load("grey_masks.npy");
    uint32_t *truth = labels_u32(mk->data, mk->dtype, 200 * 184);
    uint32_t *pred = labels_u32(lab, GPUSEG_DTYPE_U16, 200 * 184);
    gpuseg_ap_result ap;
    double thr = 0.5;
    ck_assert(gpuseg_metrics_ap(truth, pred, 200, 184, &thr, 1, &ap) == GPUSEG_OK);
    ck_assert(ap.ap >= 0.99);
    free(truth);
    free(pred);
    gpuseg_npy_free(mk);
    gpuseg_npy *fl = NULL, *sv = NULL;
    snprintf(path, sizeof path, "%s/grey_flows.npy", dir);
    ck_assert(gpuseg_npy_read(path, &fl) == GPUSEG_OK);
    ck_assert(fl->dtype == GPUSEG_DTYPE_F32 && fl->ndim == 3 && fl->shape[0] == 3 &&
              fl->shape[1] == 200 && fl->shape[2] == 184);
    snprintf(path, sizeof path, "%s/grey_style.npy", dir);
    ck_assert(gpuseg_npy_read(path, &sv) == GPUSEG_OK);
    ck_assert(sv->ndim == 1 && sv->shape[0] == 32);
    gpuseg_npy_free(fl);
    gpuseg_npy_free(sv);

    /* --save-dir, --format tif, --quiet, a small image (.npy, 20 x 30) */
    uint8_t small[600];
    for (int i = 0; i < 600; i++)
        small[i] = (uint8_t)((i * 71) % 255);
    uint64_t sh[2] = {20, 30};
    snprintf(path, sizeof path, "%s/small.npy", dir);
    ck_assert(gpuseg_npy_write(path, GPUSEG_DTYPE_U8, 2, sh, small) == GPUSEG_OK);
    snprintf(cmd, sizeof cmd, "mkdir '%s/out'", dir);
    ck_assert_int_eq(system(cmd), 0);
    r = tu_cli("segment '%s' '%s/grey.png' --model '%s' --save-dir '%s/out' --format tif --quiet",
               path, dir, FIX "small_cpnet.pth", dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_str_eq(r->err, "");
    free(r);
    snprintf(path, sizeof path, "%s/out/small_segmentation.tif", dir);
    ck_assert(tu_exists(path));
    snprintf(path, sizeof path, "%s/out/grey_segmentation.tif", dir);
    ck_assert(tu_exists(path));
    /* -o */
    r = tu_cli("segment '%s/grey.png' --model '%s' -o '%s/o.npy' --quiet", dir,
               FIX "small_cpnet.pth", dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    snprintf(path, sizeof path, "%s/o.npy", dir);
    ck_assert(tu_exists(path));

    /* errors: one line each, naming the problem */
    r = tu_cli("segment '%s/grey.png' --model no_such_model", dir); /* not a file, no model */
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "--model no_such_model") && strstr(r->err, "models"));
    free(r);
    r = tu_cli("segment '%s/grey.png' --model '%s/none.pth'", dir, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "none.pth") != NULL);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    free(r);
    r = tu_cli("segment '%s/grey.png' --model '%s/grey.png'", dir, dir); /* not a model */
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "grey.png") && strstr(r->err, "PNG"));
    free(r);
    r = tu_cli("segment '%s' --model '%s' --chan 4 --save-dir '%s'", FIX "rgb_img.png",
               FIX "small_cpnet.pth", dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "rgb_img.png") != NULL);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    free(r);
    r = tu_cli("segment '%s/grey.png' --model '%s' --diameter -4", dir, FIX "small_cpnet.pth");
    ck_assert_int_eq(r->status, 2);
    ck_assert(strstr(r->err, "--diameter") != NULL);
    free(r);
    r = tu_cli("segment '%s/grey.png' --model '%s' --diameter 0.0001", dir, FIX "small_cpnet.pth");
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "grey.png") && strstr(r->err, "absurd"));
    free(r);
    /* A --save-dir that does not exist is created, as Cellpose does (issue #21); one that
     * cannot be (its parent is a file) is refused in one line before any work. */
    r = tu_cli("segment '%s/grey.png' --model '%s' --save-dir '%s/nope' --quiet", dir,
               FIX "small_cpnet.pth", dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    snprintf(path, sizeof path, "%s/nope/grey_segmentation.bin", dir);
    ck_assert(tu_exists(path));
    r = tu_cli("segment '%s/grey.png' --model '%s' --save-dir '%s/grey.png/nope'", dir,
               FIX "small_cpnet.pth", dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "nope") != NULL);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    free(r);
    r = tu_cli("segment '%s/missing.png' --model '%s'", dir, FIX "small_cpnet.pth");
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "missing.png") != NULL);
    free(r);
    tu_rmtree(dir);
}
END_TEST

/* Labels travel through shared memory: --shm-only --json leaves a segment that a separate saver
 * turns into the same bytes the default run writes; a save that fails names the image. */
START_TEST(cli_segment_shm) {
    const char *dir = tu_tmpdir();
    char cmd[4096], path[1024], name[256];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s/grey.png' && mkdir '%s/adir.bin'", FIX "grey_img.png",
             dir, dir);
    ck_assert_int_eq(system(cmd), 0);
    const char *args = "--flow-threshold 0 --cellprob-threshold -0.13 --quiet --diameter model";
    tu_cli_result *r = tu_cli("segment '%s/grey.png' --model '%s' %s --max-in-flight 0", dir,
                              FIX "small_cpnet.pth", args);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    r = tu_cli("segment '%s/grey.png' --model '%s' %s --shm-only --json", dir,
               FIX "small_cpnet.pth", args);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_int_eq(tu_count_lines(r->out), 1);
    ck_assert_msg(strstr(r->out, "\"shape\":[200,184]") && strstr(r->out, "\"dtype\":\"uint16\"") &&
                      strstr(r->out, "\"n_masks\":99") && strstr(r->out, "\"offset\":"),
                  "%s", r->out);
    const char *p = strstr(r->out, "\"shm\":\"");
    ck_assert_ptr_nonnull(p);
    p += 7;
    size_t n = strcspn(p, "\"");
    ck_assert(n > 8 && n < sizeof name && strncmp(p, "/gpuseg-", 8) == 0);
    memcpy(name, p, n);
    name[n] = 0;
    free(r);
    snprintf(path, sizeof path, "/dev/shm%s", name);
    ck_assert_msg(tu_exists(path), "segment %s was not left for the caller", name);
    r = tu_cli("save --shm '%s' -o '%s/from_shm.bin' --unlink", name, dir);
    ck_assert_msg(r->status == 0, "%s", r->err);
    free(r);
    ck_assert(!tu_exists(path));
    snprintf(cmd, sizeof cmd, "cmp '%s/grey_segmentation.bin' '%s/from_shm.bin'", dir, dir);
    ck_assert_int_eq(system(cmd), 0);

    /* the output path is a folder: the saver fails, segment names the image and exits 1 */
    r = tu_cli("segment '%s/grey.png' --model '%s' %s -o '%s/adir.bin'", dir, FIX "small_cpnet.pth",
               args, dir);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "grey.png") && strstr(r->err, "failed"), "%s", r->err);
    free(r);
    tu_rmtree(dir);
}
END_TEST

/* The scenario from Python (examples/python/shm_consumer.py, numpy + standard library):
 * start `gpuseg segment --shm-only --json`, map the segment, save it, release it. Needs numpy
 * ($GPUSEG_PYTHON, else python3): ctest runs it as test_segment_numpy, a skip without numpy. */
START_TEST(python_consumer_segment) {
    const char *py = tu_python_with_numpy();
    ck_assert_msg(py != NULL, "numpy missing: set GPUSEG_PYTHON to a Python that has it");
    char cmd[4096];
    const char *dir = tu_tmpdir();
    snprintf(cmd, sizeof cmd,
             "cp '%s' '%s/grey.png' && cd '%s' && '%s' '%s/examples/python/shm_consumer.py' "
             "grey.png --gpuseg '%s' --command '{gpuseg} segment {image} --model %s "
             "--diameter model --flow-threshold 0 --cellprob-threshold -0.13 --shm-only --json "
             "--quiet' "
             "-o py.bin > py.log 2>&1 && grep -q 'n_masks: 99' py.log && "
             "'%s' segment grey.png --model '%s' --diameter model --flow-threshold 0 "
             "--cellprob-threshold -0.13 --quiet && cmp py.bin grey_segmentation.bin",
             FIX "grey_img.png", dir, dir, py, GPUSEG_SOURCE_DIR, GPUSEG_CLI, FIX "small_cpnet.pth",
             GPUSEG_CLI, FIX "small_cpnet.pth");
    ck_assert_int_eq(system(cmd), 0);
    tu_rmtree(dir);
}
END_TEST

/* Many segment processes at once: no segment name collides, every output is written, nothing
 * is left in /dev/shm; a process killed with SIGKILL mid-batch leaves only segments that
 * `gpuseg shm clean` removes. */
START_TEST(cli_segment_concurrent) {
    const char *dir = tu_tmpdir();
    char cmd[8192], prefix[64];
    snprintf(prefix, sizeof prefix, "/gpuseg-tseg%d-", (int)getpid());
    snprintf(cmd, sizeof cmd,
             "cd '%s' && for i in 1 2 3 4 5 6; do cp '%s' g$i.png; done && "
             "export GPUSEG_SHM_PREFIX='%s'; pids=; for j in 1 2 3 4; do mkdir o$j; "
             "'%s' segment g1.png g2.png g3.png --model '%s' --quiet --save-dir o$j & "
             "pids=\"$pids $!\"; done; rc=0; for p in $pids; do wait $p || rc=1; done; "
             "[ $rc = 0 ] && [ $(ls o*/*_segmentation.bin | wc -l) = 12 ] && "
             "[ $(ls /dev/shm | grep -c '^%s') = 0 ]",
             dir, FIX "grey_img.png", prefix, GPUSEG_CLI, FIX "small_cpnet.pth", prefix + 1);
    ck_assert_int_eq(system(cmd), 0);
    /* SIGKILL during a batch (savers still running or segments being published) */
    snprintf(cmd, sizeof cmd,
             "cd '%s' && mkdir k && export GPUSEG_SHM_PREFIX='%s'; "
             "'%s' segment g1.png g2.png g3.png g4.png g5.png g6.png --model '%s' --quiet "
             "--save-dir k & p=$!; sleep 1.5; kill -9 $p; wait $p; sleep 0.5; "
             "'%s' shm clean --prefix '%s' >/dev/null; [ $(ls /dev/shm | grep -c '^%s') = 0 ]",
             dir, prefix, GPUSEG_CLI, FIX "small_cpnet.pth", GPUSEG_CLI, prefix, prefix + 1);
    ck_assert_int_eq(system(cmd), 0);
    tu_rmtree(dir);
}
END_TEST

/* Peak memory (segment.c, run_tiles): after the network, an image whose masks step needs at
 * least the net's workspace releases it (and the next image plans it again); a small image
 * keeps it. Either way the results do not change: the same labels and flows after a release and
 * a re-plan, bit for bit. */
START_TEST(workspace_release) {
    setenv("GPUSEG_CONV", "direct", 1);
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK);
    gpuseg_image *small = load_image("grey_img.png");
    gpuseg_segment_params p;
    params_for(0, &p);
    gpuseg_segment_result a, b, c, d;
    ck_assert(gpuseg_segment(ctx, net, small, &p, &a) == GPUSEG_OK);
    p.batch_size = a.batch_size; /* so that the big image's plan is the same size */
    const size_t ws = gpuseg__net_workspace_bytes(net);
    ck_assert_uint_gt(net->plan_batch, 0); /* kept */
    ck_assert_uint_gt(ws, (size_t)small->width * small->height * 28);

    /* the small image tiled k x k, k chosen so that 28 bytes per pixel reach the workspace */
    uint32_t k = 1;
    while ((size_t)k * k * small->width * small->height * 28 < ws)
        k++;
    gpuseg_image *big = NULL;
    ck_assert(gpuseg_image_create(small->width * k, small->height * k, small->channels, 1,
                                  small->dtype, &big) == GPUSEG_OK);
    const size_t px = gpuseg_dtype_size(small->dtype) * small->channels;
    for (uint32_t y = 0; y < big->height; y++)
        for (uint32_t t = 0; t < k; t++)
            memcpy((char *)big->data + ((size_t)y * big->width + (size_t)t * small->width) * px,
                   (const char *)small->data + (size_t)(y % small->height) * small->width * px,
                   small->width * px);
    ck_assert(gpuseg_segment(ctx, net, big, &p, &b) == GPUSEG_OK);
    ck_assert_uint_eq(net->plan_batch, 0); /* released */
    ck_assert_uint_eq(gpuseg__net_workspace_bytes(net), 0);
    ck_assert(gpuseg_segment(ctx, net, big, &p, &c) == GPUSEG_OK); /* planned again */
    const size_t nb = (size_t)big->width * big->height;
    ck_assert_uint_eq(b.n_masks, c.n_masks);
    ck_assert(memcmp(b.flows, c.flows, 3 * nb * sizeof(float)) == 0);
    ck_assert(memcmp(b.labels->data, c.labels->data, nb * gpuseg_dtype_size(b.labels->dtype)) == 0);
    ck_assert(gpuseg_segment(ctx, net, small, &p, &d) == GPUSEG_OK);
    ck_assert_uint_gt(net->plan_batch, 0);
    const size_t ns = (size_t)small->width * small->height;
    ck_assert_uint_eq(a.n_masks, d.n_masks);
    ck_assert(memcmp(a.flows, d.flows, 3 * ns * sizeof(float)) == 0);
    gpuseg_segment_result_free(&a);
    gpuseg_segment_result_free(&b);
    gpuseg_segment_result_free(&c);
    gpuseg_segment_result_free(&d);
    gpuseg_image_free(big);
    gpuseg_image_free(small);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}
END_TEST

/* Device memory running out (simulated by capping the largest allocation): the batch is halved
 * until it fits, with the same results; when not even one tile fits, a clear error. */
START_TEST(memory_fallback) {
    setenv("GPUSEG_CONV", "direct", 1);
    gpuseg_image *img = load_image("aug_img.png");
    gpuseg_segment_params p;
    params_for(2, &p);
    gpuseg_segment_result a, b;
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK);
    ck_assert(gpuseg_segment(ctx, net, img, &p, &a) == GPUSEG_OK);
    ck_assert_uint_eq(a.batch_size, 4);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);

    gpuseg_ctx_params cp;
    gpuseg_ctx_params_default(&cp);
    cp.max_alloc_bytes = 3000000; /* one 224x208 tile's activations take 2.2 MB */
    ck_assert(gpuseg_ctx_create(&cp, &ctx) == GPUSEG_OK);
    ck_assert(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK);
    ck_assert_msg(gpuseg_segment(ctx, net, img, &p, &b) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_uint_lt(b.batch_size, 4);
    ck_assert_uint_ge(b.batch_size, 1);
    size_t n = (size_t)3 * img->height * img->width;
    ck_assert(memcmp(a.flows, b.flows, n * sizeof(float)) == 0);
    ck_assert_uint_eq(a.n_masks, b.n_masks);
    gpuseg_segment_result_free(&b);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);

    cp.max_alloc_bytes = 1000000;
    ck_assert(gpuseg_ctx_create(&cp, &ctx) == GPUSEG_OK);
    ck_assert(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK);
    ck_assert_int_eq(gpuseg_segment(ctx, net, img, &p, &b), GPUSEG_DEVICE_MEMORY);
    ck_assert_msg(strstr(gpuseg_ctx_last_error(ctx), "even a batch of 1 tile") != NULL, "%s",
                  gpuseg_ctx_last_error(ctx));
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
    gpuseg_segment_result_free(&a);
    gpuseg_image_free(img);
}
END_TEST

int main(void) {
    Suite *s = suite_create("segment");
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    if (dev == 0) {
        TCase *d = tcase_create("device");
        tcase_set_timeout(d, 600);
        tcase_add_loop_test(d, matches_cellpose_eval, 0,
                            (int)(sizeof cases / sizeof cases[0]) * N_IMPLS);
        tcase_add_test(d, batching_invariant);
        tcase_add_test(d, memory_fallback);
        tcase_add_test(d, workspace_release);
        tcase_add_test(d, api_errors);
        tcase_add_test(d, cli_segment);
        tcase_add_test(d, cli_segment_shm);
        tcase_add_test(d, cli_segment_concurrent);
        suite_add_tcase(s, d);
        TCase *np = tu_tcase_needing("numpy", TU_NEEDS_NUMPY);
        tcase_set_timeout(np, 600);
        tcase_add_test(np, python_consumer_segment);
        suite_add_tcase(s, np);
        TCase *pc = tcase_create("progress"); /* CK_RUN_CASE=progress runs it alone */
        tcase_set_timeout(pc, 600);
        tcase_add_test(pc, progress_and_cancel);
        suite_add_tcase(s, pc);
    }
    return tu_run(s);
}
