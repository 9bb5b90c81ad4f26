/* tests/test_size_model.c: Cellpose's SizeModel regression (gpuseg_size_model_style_diameter)
 * on hand-computed cases: the formula exp(A . (s - smean) + log(diam_mean) + ymean), the
 * floor at 5, the NaN fallback to diam_mean, and bad arguments. Host only. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "gpuseg/model.h"
#include "testutil.h"

START_TEST(style_diameter) {
    const double A[3] = {0.5, -0.25, 0.125}, smean[3] = {0.1, 0.2, -0.3};
    gpuseg_size_model sm = {.n = 3, .A = A, .smean = smean, .ymean = -0.1, .diam_mean = 30.0};
    const float style[3] = {0.6f, 0.2f, 0.5f};
    double d = 0;
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, style, 3, &d), GPUSEG_OK);
    double dot =
        0.5 * ((double)0.6f - 0.1) - 0.25 * ((double)0.2f - 0.2) + 0.125 * ((double)0.5f + 0.3);
    double want = exp(dot + log(30.0) - 0.1);
    ck_assert_double_eq_tol(d, want, 1e-12 * want);
    ck_assert_double_eq_tol(d, 30.0 * exp(0.25 + 0.1 - 0.1), 1e-5); /* 38.52 */
    /* styles far from the training mean: floored at 5 */
    const float low[3] = {-20.f, 0.2f, -0.3f};
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, low, 3, &d), GPUSEG_OK);
    ck_assert_double_eq(d, 5.0);
    /* NaN style: Cellpose falls back to diam_mean */
    const float bad[3] = {NAN, 0.f, 0.f};
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, bad, 3, &d), GPUSEG_OK);
    ck_assert_double_eq(d, 30.0);
    /* at the mean style with ymean 0: diam_mean itself */
    sm.ymean = 0.0;
    const float mean[3] = {0.1f, 0.2f, -0.3f};
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, mean, 3, &d), GPUSEG_OK);
    ck_assert_double_eq_tol(d, 30.0, 1e-5);
    /* arguments */
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, style, 2, &d), GPUSEG_INVALID_ARGUMENT);
    ck_assert(strstr(gpuseg_last_error(), "2 values"));
    sm.diam_mean = 0.0;
    ck_assert_int_eq(gpuseg_size_model_style_diameter(&sm, style, 3, &d), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_size_model_style_diameter(NULL, style, 3, &d), GPUSEG_INVALID_ARGUMENT);
}
END_TEST

int main(void) {
    Suite *s = suite_create("size_model");
    TCase *tc = tcase_create("host");
    tcase_add_test(tc, style_diameter);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
