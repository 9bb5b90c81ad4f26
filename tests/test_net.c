/* tests/test_net.c: the CPnet forward pass on the device (src/net/cpnet.c) against Cellpose's
 * own CPnet in PyTorch (fixtures by tools/fixtures/make_net_fixtures.py: a small net, nbase
 * [2, 8, 12, 16, 32], random BN statistics, three 96 x 80 normalised crops), with each
 * convolution implementation forced; plan and forward errors; model-file errors through
 * gpuseg_net_load. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "net/net_internal.h"
#include "testutil.h"

#define FIX GPUSEG_SOURCE_DIR "/tests/fixtures/net/"

static gpuseg_npy *load(const char *name) {
    char path[1024];
    snprintf(path, sizeof path, FIX "%s", name);
    gpuseg_npy *a = NULL;
    ck_assert_msg(gpuseg_npy_read(path, &a) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_int_eq(a->dtype, GPUSEG_DTYPE_F32);
    return a;
}

static size_t numel(const gpuseg_npy *a) {
    size_t n = 1;
    for (uint32_t i = 0; i < a->ndim; i++)
        n *= (size_t)a->shape[i];
    return n;
}

static const char *impls[] = {"direct", "clblast", "winograd", "gemm"};
#define N_IMPLS (int)(sizeof impls / sizeof impls[0])

/* Forward of the fixture batch; output and style against PyTorch. */
START_TEST(forward_matches_pytorch) {
    setenv("GPUSEG_CONV", impls[_i], 1); /* Check forks per test: this stays in this test */
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert_msg(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    gpuseg_model_info mi;
    gpuseg_net_get_info(net, &mi);
    ck_assert_int_eq(mi.nbase[1], 8);
    ck_assert_int_eq(mi.nbase[4], 32);
    ck_assert_float_eq(mi.diam_labels, 24.5f);
    gpuseg_npy *in = load("fwd_in.npy"), *want = load("fwd_out.npy"), *wst = load("fwd_style.npy");
    unsigned B = (unsigned)in->shape[0], H = (unsigned)in->shape[2], W = (unsigned)in->shape[3];
    ck_assert_uint_eq(B, 3);
    /* plan for a larger batch than used: the forward runs any batch up to the plan */
    ck_assert(gpuseg__net_plan(net, 4, H, W) == GPUSEG_OK);
    ck_assert(clEnqueueWriteBuffer(ctx->queue, net->in, CL_TRUE, 0, numel(in) * 4, in->data, 0,
                                   NULL, NULL) == CL_SUCCESS);
    ck_assert_msg(gpuseg__net_forward(net, B) == GPUSEG_OK, "%s", gpuseg_last_error());
    float *got = malloc(numel(want) * 4), *st = malloc(numel(wst) * 4);
    ck_assert(clEnqueueReadBuffer(ctx->queue, net->out, CL_TRUE, 0, numel(want) * 4, got, 0, NULL,
                                  NULL) == CL_SUCCESS);
    ck_assert(clEnqueueReadBuffer(ctx->queue, net->style, CL_TRUE, 0, numel(wst) * 4, st, 0, NULL,
                                  NULL) == CL_SUCCESS);
    const float *w = want->data;
    float lo = INFINITY, hi = -INFINITY;
    double err = 0;
    for (size_t i = 0; i < numel(want); i++) {
        lo = fminf(lo, w[i]);
        hi = fmaxf(hi, w[i]);
        err = fmax(err, fabs((double)got[i] - w[i]));
    }
    double serr = 0;
    for (size_t i = 0; i < numel(wst); i++)
        serr = fmax(serr, fabs((double)st[i] - ((const float *)wst->data)[i]));
    printf("forward (%s): max abs error %.3g over output range %.3g (%.2g of it); style %.3g\n",
           impls[_i], err, (double)(hi - lo), err / (hi - lo), serr);
    /* 31 float32 layers with sums of up to 16*9 = 144 terms, accumulated in another order than
     * PyTorch's: measured ~1e-6 of the range; 1e-4 of the range leaves margin while a wrong tap,
     * skip or style term moves outputs by percent of the range. The style vector (unit norm) is
     * checked to 1e-5 absolute (measured ~1e-7). */
    ck_assert_msg(err <= 1e-4 * (hi - lo), "forward error %g, range %g", err, (double)(hi - lo));
    ck_assert_msg(serr <= 1e-5, "style error %g", serr);
    free(got);
    free(st);
    gpuseg_npy_free(in);
    gpuseg_npy_free(want);
    gpuseg_npy_free(wst);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(plan_and_forward_errors) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = NULL;
    ck_assert(gpuseg_net_load(ctx, FIX "small_cpnet.pth", &net) == GPUSEG_OK);
    ck_assert_int_eq(gpuseg__net_plan(net, 2, 100, 64), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "100x64") != NULL);
    ck_assert_int_eq(gpuseg__net_plan(net, 0, 64, 64), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg__net_plan(net, 2, 32, 16), GPUSEG_OK);
    ck_assert_int_eq(gpuseg__net_forward(net, 3), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "batch of 3") != NULL);
    /* an absurd plan is refused (too large for one device allocation or for size_t) */
    ck_assert(gpuseg__net_plan(net, 1024, 1u << 16, 1u << 16) != GPUSEG_OK);
    ck_assert(gpuseg_last_error()[0] != 0);
    /* a re-plan after the failure works */
    ck_assert_int_eq(gpuseg__net_plan(net, 1, 16, 16), GPUSEG_OK);
    ck_assert_int_eq(gpuseg__net_forward(net, 1), GPUSEG_OK);
    gpuseg_net_free(net);
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(model_errors) {
    gpuseg_ctx *ctx = tu_ctx();
    gpuseg_net *net = (gpuseg_net *)1;
    const char *missing = FIX "no_such_model.pth";
    ck_assert_int_eq(gpuseg_net_load(ctx, missing, &net), GPUSEG_NOT_FOUND);
    ck_assert_ptr_null(net);
    ck_assert(strstr(gpuseg_last_error(), missing) != NULL);
    ck_assert(strstr(gpuseg_ctx_last_error(ctx), missing) != NULL);
    /* an image is not a model: the loader's message names the file and what it looks like */
    const char *png = FIX "grey_img.png";
    ck_assert_int_eq(gpuseg_net_load(ctx, png, &net), GPUSEG_FORMAT);
    ck_assert(strstr(gpuseg_last_error(), png) && strstr(gpuseg_last_error(), "PNG"));
    /* a wrong-shape model from the model module's fixtures */
    const char *bad = GPUSEG_SOURCE_DIR "/tests/fixtures/model/tiny_wrong_shape.pth";
    ck_assert_int_eq(gpuseg_net_load(ctx, bad, &net), GPUSEG_FORMAT);
    ck_assert(strstr(gpuseg_last_error(), "tiny_wrong_shape.pth") != NULL);
    ck_assert_int_eq(gpuseg_net_load(ctx, NULL, &net), GPUSEG_INVALID_ARGUMENT);
    /* the tiny model of the model module ([2,3,4,5,6]) loads: any widths work */
    ck_assert(gpuseg_net_load(ctx, GPUSEG_SOURCE_DIR "/tests/fixtures/model/tiny_cpnet.pth",
                              &net) == GPUSEG_OK);
    gpuseg_net_free(net);
    gpuseg_net_free(NULL);
    gpuseg_ctx_free(ctx);
}
END_TEST

int main(void) {
    Suite *s = suite_create("net");
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    if (dev == 0) {
        TCase *d = tcase_create("device");
        tcase_set_timeout(d, 300);
        tcase_add_loop_test(d, forward_matches_pytorch, 0, N_IMPLS);
        tcase_add_test(d, plan_and_forward_errors);
        tcase_add_test(d, model_errors);
        suite_add_tcase(s, d);
    }
    return tu_run(s);
}
