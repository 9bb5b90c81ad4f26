/* tests/test_labels_edit.c: label-image edits that Cellpose's command applies after eval:
 * utils.remove_edge_masks (--exclude_on_edges), checked on hand-made images whose answer is
 * worked out below. Host-only: no device needed. */
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

START_TEST(edge_masks_hand_case) {
    /* 5 x 6. Label 1 touches the top row, 7 only the bottom-right corner pixel, 9 the left
     * column; 3 and 5 are interior (and 5 > 3 keeps its order), 4 is never used (a gap). */
    uint32_t in[5 * 6] = {
        0, 1, 1, 0, 0, 0, /* */
        0, 1, 3, 3, 0, 0, /* */
        9, 0, 3, 5, 5, 0, /* */
        9, 0, 0, 5, 5, 7, /* */
        0, 0, 0, 0, 7, 7,
    };
    const uint32_t want[5 * 6] = {
        0, 0, 0, 0, 0, 0, /* */
        0, 0, 1, 1, 0, 0, /* */
        0, 0, 1, 2, 2, 0, /* */
        0, 0, 0, 2, 2, 0, /* */
        0, 0, 0, 0, 0, 0,
    };
    uint32_t n = 99;
    ck_assert_int_eq(gpuseg_labels_remove_edge_masks(in, 5, 6, &n), GPUSEG_OK);
    ck_assert_uint_eq(n, 2);
    for (int i = 0; i < 30; i++)
        ck_assert_msg(in[i] == want[i], "pixel %d: %u, want %u", i, in[i], want[i]);
}
END_TEST

START_TEST(edge_masks_all_or_none) {
    /* One pixel: on the border by definition. A 3 x 3 ring of one label touches every edge. */
    uint32_t one = 4, n = 7;
    ck_assert_int_eq(gpuseg_labels_remove_edge_masks(&one, 1, 1, &n), GPUSEG_OK);
    ck_assert_uint_eq(one, 0);
    ck_assert_uint_eq(n, 0);
    uint32_t blank[9] = {0};
    ck_assert_int_eq(gpuseg_labels_remove_edge_masks(blank, 3, 3, &n), GPUSEG_OK);
    ck_assert_uint_eq(n, 0);
    /* An interior mask of a large label value keeps nothing of its value: renumbered to 1. */
    uint32_t big[9] = {0, 0, 0, 0, 4000000000u, 0, 0, 0, 0};
    ck_assert_int_eq(gpuseg_labels_remove_edge_masks(big, 3, 3, &n), GPUSEG_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(big[4], 1);
    ck_assert_int_eq(gpuseg_labels_remove_edge_masks(NULL, 3, 3, &n), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_labels_remove_edge_masks(blank, 0, 3, &n), GPUSEG_INVALID_ARGUMENT);
}
END_TEST

int main(void) {
    Suite *s = suite_create("labels_edit");
    TCase *tc = tcase_create("edges");
    tcase_add_test(tc, edge_masks_hand_case);
    tcase_add_test(tc, edge_masks_all_or_none);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
