/* tests/test_profile.c: the per-kernel profile behind GPUSEG_PROFILE (core/profile.c): off by
 * default (nothing recorded), on with the variable set: every gpuseg__run launch is booked
 * under its kernel name with its launch count and a device time from the OpenCL event, reading
 * waits for pending events, reset empties the table, and more launches than the pending list
 * holds are all counted. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

/* Launches util's u16_to_planar_f32 n times on 5 pixels. */
static void launch(gpuseg_ctx *ctx, int n) {
    const uint16_t src[10] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    cl_mem a = NULL, b = NULL;
    cl_kernel k;
    ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_ONLY, sizeof src, "src", &a), GPUSEG_OK);
    ck_assert_int_eq(gpuseg__buffer(ctx, CL_MEM_READ_WRITE, 10 * sizeof(float), "dst", &b),
                     GPUSEG_OK);
    ck_assert_int_eq(clEnqueueWriteBuffer(gpuseg_ctx_cl_queue(ctx), a, CL_TRUE, 0, sizeof src, src,
                                          0, NULL, NULL),
                     0);
    ck_assert_int_eq(gpuseg__kernel(ctx, "util", "u16_to_planar_f32", &k), GPUSEG_OK);
    cl_uint npix = 5, ch = 2;
    ck_assert_int_eq(gpuseg__set_args(ctx, k, 4, sizeof(cl_mem), &a, sizeof(cl_mem), &b,
                                      sizeof npix, &npix, sizeof ch, &ch),
                     GPUSEG_OK);
    size_t g = 5, l = 64;
    for (int i = 0; i < n; i++)
        ck_assert_int_eq(gpuseg__run(ctx, k, 1, &g, &l), GPUSEG_OK);
    ck_assert_int_eq(clFinish(gpuseg_ctx_cl_queue(ctx)), 0);
    gpuseg__release(&a);
    gpuseg__release(&b);
}

START_TEST(profile_off_by_default) {
    unsetenv("GPUSEG_PROFILE");
    gpuseg_ctx *ctx = tu_ctx();
    ck_assert_ptr_null(ctx->prof);
    launch(ctx, 2);
    const gpuseg__kernel_time *t = (const gpuseg__kernel_time *)1;
    unsigned n = 99;
    ck_assert_int_eq(gpuseg__profile_read(ctx, &t, &n), GPUSEG_OK);
    ck_assert_uint_eq(n, 0);
    ck_assert_ptr_null(t);
    gpuseg__profile_reset(ctx); /* harmless when off */
    gpuseg_ctx_free(ctx);
    setenv("GPUSEG_PROFILE", "0", 1); /* "0" means off too */
    ctx = tu_ctx();
    ck_assert_ptr_null(ctx->prof);
    gpuseg_ctx_free(ctx);
}
END_TEST

START_TEST(profile_counts_kernels) {
    setenv("GPUSEG_PROFILE", "1", 1);
    gpuseg_ctx *ctx = tu_ctx();
    ck_assert_ptr_nonnull(ctx->prof);
    launch(ctx, 3);
    const gpuseg__kernel_time *t = NULL;
    unsigned n = 0;
    ck_assert_int_eq(gpuseg__profile_read(ctx, &t, &n), GPUSEG_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_str_eq(t[0].name, "u16_to_planar_f32");
    ck_assert_uint_eq(t[0].count, 3);
    /* a 5-pixel kernel: some device time, far below a second (0 allowed: timer resolution) */
    ck_assert(t[0].seconds >= 0 && t[0].seconds < 1.0);
    gpuseg__profile_reset(ctx);
    ck_assert_int_eq(gpuseg__profile_read(ctx, &t, &n), GPUSEG_OK);
    ck_assert_uint_eq(n, 0);
    /* more launches than the pending list holds (1024): all counted, none lost */
    launch(ctx, 2500);
    ck_assert_int_eq(gpuseg__profile_read(ctx, &t, &n), GPUSEG_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(t[0].count, 2500);
    /* an event booked by hand (as for CLBlast) gets its own row */
    cl_event ev = NULL;
    ck_assert_int_eq(clEnqueueMarkerWithWaitList(gpuseg_ctx_cl_queue(ctx), 0, NULL, &ev), 0);
    gpuseg__profile_event(ctx, "marker", ev);
    ck_assert_int_eq(gpuseg__profile_read(ctx, &t, &n), GPUSEG_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(t[1].name, "marker");
    ck_assert_uint_eq(t[1].count, 1);
    gpuseg_ctx_free(ctx); /* frees the profile; pending events released (ASan/valgrind clean) */
    unsetenv("GPUSEG_PROFILE");
}
END_TEST

int main(void) {
    Suite *s = suite_create("profile");
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    if (dev == 0) {
        TCase *d = tcase_create("device");
        tcase_set_timeout(d, 120);
        tcase_add_test(d, profile_off_by_default);
        tcase_add_test(d, profile_counts_kernels);
        suite_add_tcase(s, d);
    }
    return tu_run(s);
}
