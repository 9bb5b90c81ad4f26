/* tests/test_roundtrip.c: round trip on real ground truth. Every label image of
 * ../shared/data/dsb2018/dev (8 images, 605 nuclei) and usiigaci-phase/dev (5 images, 277 cells)
 * goes labels -> flows (gpuseg_labels_to_flows) -> network-scale flows (5 x unit flows, cellprob
 * +5 inside / -5 outside, the convention of `gpuseg flows`) -> masks (gpuseg_flows_to_masks,
 * Cellpose defaults, QC on) and is scored against itself. Cellpose 3.1.1.3 on the same flows
 * reproduces every object at IoU 0.9 on both sets (bench/roundtrip_vs_cellpose.py: pooled AP@0.5 =
 * AP@0.75 = AP@0.9 = 1.0, TP 605 and 277); gpuseg must do the same: AP@0.9 >= 0.99 pooled. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

static uint32_t *read_labels(const char *path, uint32_t *H, uint32_t *W) {
    gpuseg_image *img = NULL;
    ck_assert_msg(gpuseg_image_read(path, &img) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_uint_eq(img->channels, 1);
    size_t n = (size_t)img->width * img->height;
    uint32_t *lab = malloc(n * sizeof *lab);
    ck_assert_ptr_nonnull(lab);
    for (size_t i = 0; i < n; i++)
        lab[i] = img->dtype == GPUSEG_DTYPE_U8    ? ((uint8_t *)img->data)[i]
                 : img->dtype == GPUSEG_DTYPE_U16 ? ((uint16_t *)img->data)[i]
                                                  : ((uint32_t *)img->data)[i];
    *H = img->height;
    *W = img->width;
    gpuseg_image_free(img);
    return lab;
}

static void roundtrip_set(const char *set, const char *const *ids, size_t n_ids,
                          uint32_t want_objects) {
    gpuseg_ctx *ctx = tu_ctx();
    const double thr[3] = {0.5, 0.75, 0.9};
    uint64_t tp[3] = {0}, fp[3] = {0}, fn[3] = {0};
    uint64_t objects = 0;
    for (size_t k = 0; k < n_ids; k++) {
        uint32_t H, W;
        uint32_t *truth = read_labels(tu_data("%s/labels/%s", set, ids[k]), &H, &W);
        size_t n = (size_t)H * W;
        float *flows = malloc(3 * n * sizeof *flows);
        ck_assert_ptr_nonnull(flows);
        ck_assert_msg(gpuseg_labels_to_flows(ctx, truth, H, W, flows) == GPUSEG_OK, "%s: %s",
                      ids[k], gpuseg_last_error());
        for (size_t i = 0; i < 2 * n; i++)
            flows[i] *= 5.0f;
        for (size_t i = 0; i < n; i++)
            flows[2 * n + i] = truth[i] ? 5.0f : -5.0f;
        gpuseg_masks_params p;
        gpuseg_masks_params_default(&p);
        gpuseg_image *masks = NULL;
        uint32_t n_masks = 0;
        ck_assert_msg(gpuseg_flows_to_masks(ctx, flows, H, W, &p, &masks, &n_masks) == GPUSEG_OK,
                      "%s: %s", ids[k], gpuseg_last_error());
        uint32_t *pred = malloc(n * sizeof *pred);
        ck_assert_ptr_nonnull(pred);
        for (size_t i = 0; i < n; i++)
            pred[i] = masks->dtype == GPUSEG_DTYPE_U16 ? ((uint16_t *)masks->data)[i]
                                                       : ((uint32_t *)masks->data)[i];
        gpuseg_ap_result ap[3];
        ck_assert(gpuseg_metrics_ap(truth, pred, H, W, thr, 3, ap) == GPUSEG_OK);
        for (int t = 0; t < 3; t++) {
            tp[t] += ap[t].tp;
            fp[t] += ap[t].fp;
            fn[t] += ap[t].fn;
        }
        objects += ap[0].n_true;
        printf("%s %s: %u objects, %u masks, AP@0.9 %.4f\n", set, ids[k], ap[0].n_true, n_masks,
               ap[2].ap);
        free(pred);
        gpuseg_image_free(masks);
        free(flows);
        free(truth);
    }
    ck_assert_uint_eq(objects, want_objects); /* the manifests' object counts */
    for (int t = 0; t < 3; t++) {
        double ap = (double)tp[t] / (double)(tp[t] + fp[t] + fn[t]);
        printf("%s pooled AP@%.2f = %.4f (TP %llu FP %llu FN %llu)\n", set, thr[t], ap,
               (unsigned long long)tp[t], (unsigned long long)fp[t], (unsigned long long)fn[t]);
        ck_assert_msg(ap >= 0.99, "%s: pooled AP@%.2f %.4f < 0.99", set, thr[t], ap);
    }
    gpuseg_ctx_free(ctx);
}

START_TEST(dsb2018_dev) {
    static const char *const ids[] = {
        "02903040e19ddf92f452907644ad3822918f54af41dd85e5a3fe3e1b6d6f9339.png",
        "07fb37aafa6626608af90c1e18f6a743f29b6b233d2e427dcd1102df6a916cf5.png",
        "1a11552569160f0b1ea10bedbd628ce6c14f29edec5092034c2309c556df833e.png",
        "40b00d701695d8ea5d59f95ac39e18004040c96d17fbc1a539317c674eca084b.png",
        "420f43d21dbaba42bf8c0995b3a2c85537876d594433770c6c6f3d6b779ec15f.png",
        "58cc121d37fb7f1b4a5252024d88415936781e540252b8f734faeedd29b682d5.png",
        "b82548ab19466b461614e6055aaf49fbc24c03a2d20e65575b680c7c28268807.png",
        "ee927e8255096971ddae1bd975cf80c4ad7c847c82d0b5f5dd2ddfe5407007ee.png"};
    roundtrip_set("dsb2018/dev", ids, 8, 605);
}
END_TEST

START_TEST(usiigaci_dev) {
    char names[5][64];
    const char *ids[5];
    FILE *m = fopen(tu_data("usiigaci-phase/dev/manifest.tsv"), "r");
    ck_assert_ptr_nonnull(m);
    char line[1024];
    size_t n = 0;
    while (fgets(line, sizeof line, m) && n < 5) {
        if (strncmp(line, "name\t", 5) == 0 || !strchr(line, '\t'))
            continue;
        snprintf(names[n], sizeof names[n], "%.*s.png", (int)strcspn(line, "\t"), line);
        ids[n] = names[n];
        n++;
    }
    fclose(m);
    ck_assert_uint_eq(n, 5);
    roundtrip_set("usiigaci-phase/dev", ids, 5, 277);
}
END_TEST

int main(void) {
    int dev = tu_require_device();
    if (dev != 0)
        return dev;
    Suite *s = suite_create("roundtrip");
    TCase *d = tu_tcase_needing("device", TU_NEEDS_SHARED_DATA);
    tcase_set_timeout(d, 600);
    tcase_add_test(d, dsb2018_dev);
    tcase_add_test(d, usiigaci_dev);
    suite_add_tcase(s, d);
    return tu_run(s);
}
