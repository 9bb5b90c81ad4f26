/* tests/test_metrics.c: average precision as Cellpose 3.1 computes it: hand-made cases checked
 * against Cellpose by tools/fixtures/make_flow_fixtures.py (exact counts), the committed
 * fixtures (real ground truth vs a perturbed copy; counts and float32 AP equal to Cellpose's),
 * the greedy matching against an exact maximum matching on random overlapping masks, error
 * paths, and the `gpuseg eval` command on files and folders. Host-only: no device needed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/stat.h>

#include "testutil.h"

static const double k_th[3] = {0.5, 0.75, 0.9};

static void ap3(const uint32_t *t, const uint32_t *p, uint32_t H, uint32_t W,
                gpuseg_ap_result r[3]) {
    gpuseg_status st = gpuseg_metrics_ap(t, p, H, W, NULL, 3, r);
    ck_assert_msg(st == GPUSEG_OK, "%s", gpuseg_last_error());
}

static void expect(const gpuseg_ap_result r[3], const int tp[3], const int fp[3], const int fn[3]) {
    for (int k = 0; k < 3; k++) {
        ck_assert_double_eq(r[k].threshold, k_th[k]);
        ck_assert_uint_eq(r[k].tp, (unsigned)tp[k]);
        ck_assert_uint_eq(r[k].fp, (unsigned)fp[k]);
        ck_assert_uint_eq(r[k].fn, (unsigned)fn[k]);
        const float den = (float)tp[k] + (float)fp[k] + (float)fn[k];
        if (den > 0)
            ck_assert(r[k].ap == (double)((float)tp[k] / den));
        else
            ck_assert(isnan(r[k].ap));
    }
}

/* Each case's expected counts were checked against Cellpose (make_flow_fixtures.py). */
START_TEST(hand_cases) {
    gpuseg_ap_result r[3];
    const uint32_t same[6] = {1, 1, 0, 0, 2, 2};
    ap3(same, same, 2, 3, r);
    expect(r, (int[]){2, 2, 2}, (int[]){0, 0, 0}, (int[]){0, 0, 0});
    ck_assert(r[0].ap == 1.0);
    /* one true mask split in two predictions: IoU exactly 0.5 twice, only one can match */
    ap3((const uint32_t[]){1, 1}, (const uint32_t[]){1, 2}, 1, 2, r);
    expect(r, (int[]){1, 0, 0}, (int[]){1, 2, 2}, (int[]){0, 1, 1});
    /* the mirror: one prediction covering two true masks */
    ap3((const uint32_t[]){1, 2}, (const uint32_t[]){1, 1}, 1, 2, r);
    expect(r, (int[]){1, 0, 0}, (int[]){0, 1, 1}, (int[]){1, 2, 2});
    /* IoU 0.75 exactly: >= matches at 0.75 */
    ap3((const uint32_t[]){1, 1, 1, 1}, (const uint32_t[]){1, 1, 1, 0}, 1, 4, r);
    expect(r, (int[]){1, 1, 0}, (int[]){0, 0, 1}, (int[]){0, 0, 1});
    /* no prediction; the truth's gaps count (n = max label) */
    ap3((const uint32_t[]){0, 3, 0}, (const uint32_t[]){0, 0, 0}, 1, 3, r);
    expect(r, (int[]){0, 0, 0}, (int[]){0, 0, 0}, (int[]){3, 3, 3});
    ck_assert(r[0].ap == 0.0 && r[0].n_true == 3 && r[0].n_pred == 0);
    /* prediction without truth */
    ap3((const uint32_t[]){0, 0}, (const uint32_t[]){1, 2}, 1, 2, r);
    expect(r, (int[]){0, 0, 0}, (int[]){2, 2, 2}, (int[]){0, 0, 0});
    /* both empty: 0/0 = NaN as in Cellpose */
    ap3((const uint32_t[]){0, 0, 0, 0}, (const uint32_t[]){0, 0, 0, 0}, 2, 2, r);
    expect(r, (int[]){0, 0, 0}, (int[]){0, 0, 0}, (int[]){0, 0, 0});
    /* a 1x1 image with one mask on each side */
    ap3((const uint32_t[]){7}, (const uint32_t[]){9}, 1, 1, r);
    expect(r, (int[]){1, 1, 1}, (int[]){8, 8, 8}, (int[]){6, 6, 6});
}
END_TEST

/* Maximum bipartite matching (Kuhn's augmenting paths) over pairs with IoU >= th: the exact
 * maximum number of pairs that Cellpose's Hungarian assignment reaches. */
typedef struct {
    int nt, np;
    const double *iou; /* nt x np */
    double th;
    int *match_p; /* pred -> true or -1 */
    char *seen;
} kuhn;

static int augment(kuhn *k, int a) {
    for (int b = 0; b < k->np; b++) {
        if (k->iou[a * k->np + b] < k->th || k->seen[b])
            continue;
        k->seen[b] = 1;
        if (k->match_p[b] < 0 || augment(k, k->match_p[b])) {
            k->match_p[b] = a;
            return 1;
        }
    }
    return 0;
}

/* Random images of overlapping rectangles (later ones overwrite earlier ones, so masks are cut
 * into odd shapes), truth vs prediction, against the exact matching. */
START_TEST(greedy_is_maximum) {
    enum { H = 24, W = 24, NT = 14 };
    uint32_t t[H * W], p[H * W];
    unsigned seed = 12345;
    for (int iter = 0; iter < 300; iter++) {
        for (int img = 0; img < 2; img++) {
            uint32_t *a = img ? p : t;
            memset(a, 0, sizeof t);
            for (uint32_t l = 1; l <= NT; l++) {
                int y0 = (int)(rand_r(&seed) % H), x0 = (int)(rand_r(&seed) % W);
                int h = 1 + (int)(rand_r(&seed) % 7), w = 1 + (int)(rand_r(&seed) % 7);
                for (int y = y0; y < y0 + h && y < H; y++)
                    for (int x = x0; x < x0 + w && x < W; x++)
                        a[y * W + x] = l;
            }
        }
        /* dense IoU as Cellpose builds it */
        static double ov[NT + 1][NT + 1];
        memset(ov, 0, sizeof ov);
        for (int i = 0; i < H * W; i++)
            ov[t[i]][p[i]] += 1;
        double iou[NT * NT];
        uint32_t nt = 0, np = 0;
        for (int i = 0; i < H * W; i++) {
            nt = t[i] > nt ? t[i] : nt;
            np = p[i] > np ? p[i] : np;
        }
        for (int a = 1; a <= NT; a++)
            for (int b = 1; b <= NT; b++) {
                double ra = 0, cb = 0;
                for (int j = 0; j <= NT; j++) {
                    ra += ov[a][j];
                    cb += ov[j][b];
                }
                const double u = ra + cb - ov[a][b];
                iou[(a - 1) * NT + (b - 1)] = u > 0 ? ov[a][b] / u : 0;
            }
        gpuseg_ap_result r[3];
        ap3(t, p, H, W, r);
        for (int k = 0; k < 3; k++) {
            int match_p[NT];
            char seen[NT];
            kuhn K = {NT, NT, iou, k_th[k], match_p, seen};
            memset(match_p, 0xff, sizeof match_p);
            int best = 0;
            for (int a = 0; a < NT; a++) {
                memset(seen, 0, sizeof seen);
                best += augment(&K, a);
            }
            ck_assert_msg(r[k].tp == (unsigned)best, "iteration %d th %g: %u vs exact %d", iter,
                          k_th[k], r[k].tp, best);
            ck_assert_uint_eq(r[k].fp, np - r[k].tp);
            ck_assert_uint_eq(r[k].fn, nt - r[k].tp);
        }
    }
}
END_TEST

static const char *fixture(const char *name) {
    static char buf[1024];
    snprintf(buf, sizeof buf, "%s/tests/fixtures/flows/%s", GPUSEG_SOURCE_DIR, name);
    return buf;
}

static uint32_t *load_labels(const char *path, uint32_t *H, uint32_t *W) {
    gpuseg_npy *a = NULL;
    ck_assert_msg(gpuseg_npy_read(path, &a) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert(a->dtype == GPUSEG_DTYPE_U16 && a->ndim == 2);
    *H = (uint32_t)a->shape[0];
    *W = (uint32_t)a->shape[1];
    uint32_t *l = malloc((size_t)*H * *W * sizeof *l);
    for (size_t i = 0; i < (size_t)*H * *W; i++)
        l[i] = ((const uint16_t *)a->data)[i];
    gpuseg_npy_free(a);
    return l;
}

/* The k-th number of list `key` of fixture `name` in expected.json. */
static double expected(const char *name, const char *key, int k) {
    void *data = NULL;
    size_t n = 0;
    ck_assert_int_eq(gpuseg__read_file(NULL, fixture("expected.json"), 1 << 20, &data, &n),
                     GPUSEG_OK);
    char *txt = realloc(data, n + 1);
    txt[n] = 0;
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\": {", name);
    const char *p = strstr(txt, pat);
    ck_assert(p);
    snprintf(pat, sizeof pat, "\"%s\": [", key);
    p = strstr(p, pat);
    ck_assert(p);
    p += strlen(pat);
    char *end;
    double v = 0;
    for (int i = 0; i <= k; i++) {
        v = strtod(p, &end);
        ck_assert(end != p);
        p = end;
        while (*p == ',' || *p == ' ' || *p == '\n')
            p++;
    }
    free(txt);
    return v;
}

START_TEST(cellpose_fixtures) {
    const char *names[] = {"dsbfluo", "dsbmany", "usi"};
    for (int i = 0; i < 3; i++) {
        char path[64];
        uint32_t H, W, H2, W2;
        snprintf(path, sizeof path, "%s_labels.npy", names[i]);
        uint32_t *t = load_labels(fixture(path), &H, &W);
        snprintf(path, sizeof path, "%s_pred.npy", names[i]);
        uint32_t *p = load_labels(fixture(path), &H2, &W2);
        ck_assert(H == H2 && W == W2);
        gpuseg_ap_result r[3];
        ap3(t, p, H, W, r);
        for (int k = 0; k < 3; k++) {
            ck_assert_uint_eq(r[k].tp, (unsigned)expected(names[i], "tp", k));
            ck_assert_uint_eq(r[k].fp, (unsigned)expected(names[i], "fp", k));
            ck_assert_uint_eq(r[k].fn, (unsigned)expected(names[i], "fn", k));
            /* Cellpose's AP is float32; the JSON holds its exact value */
            ck_assert_msg(r[k].ap == expected(names[i], "ap", k), "%s: AP %.9g vs %.9g", names[i],
                          r[k].ap, expected(names[i], "ap", k));
        }
        free(t);
        free(p);
    }
}
END_TEST

START_TEST(bad_arguments) {
    const uint32_t a[4] = {1, 1, 0, 2};
    gpuseg_ap_result r[3];
    ck_assert_int_eq(gpuseg_metrics_ap(NULL, a, 2, 2, NULL, 3, r), GPUSEG_INVALID_ARGUMENT);
    ck_assert_str_ne(gpuseg_last_error(), "");
    ck_assert_int_eq(gpuseg_metrics_ap(a, a, 0, 2, NULL, 3, r), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_metrics_ap(a, a, 2, 2, NULL, 2, r), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_metrics_ap(a, a, 2, 2, (const double[]){0.3}, 1, r),
                     GPUSEG_UNSUPPORTED);
    ck_assert(strstr(gpuseg_last_error(), "0.3"));
    ck_assert_int_eq(gpuseg_metrics_ap(a, a, 2, 2, (const double[]){NAN}, 1, r),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_metrics_ap(a, a, 1u << 16, 1u << 16, NULL, 3, r), GPUSEG_TOO_LARGE);
    ck_assert_int_eq(gpuseg_metrics_ap(a, a, 2, 2, (const double[]){1.0}, 1, r), GPUSEG_OK);
    ck_assert_uint_eq(r[0].tp, 2);
    ck_assert_str_eq(gpuseg_last_error(), "");
}
END_TEST

/* --- `gpuseg eval`
 * -------------------------------------------------------------------------------- */

static void write_labels(const char *path, const uint32_t *lab, uint32_t H, uint32_t W) {
    gpuseg_image img = {.width = W,
                        .height = H,
                        .channels = 1,
                        .pages = 1,
                        .dtype = GPUSEG_DTYPE_U32,
                        .data = (void *)lab};
    ck_assert_msg(gpuseg_labels_write(path, &img, NULL) == GPUSEG_OK, "%s", gpuseg_last_error());
}

START_TEST(cli_eval) {
    uint32_t H, W, H2, W2;
    uint32_t *t1 = load_labels(fixture("dsbmany_labels.npy"), &H, &W);
    uint32_t *p1 = load_labels(fixture("dsbmany_pred.npy"), &H, &W);
    uint32_t *t2 = load_labels(fixture("usi_labels.npy"), &H2, &W2);
    uint32_t *p2 = load_labels(fixture("usi_pred.npy"), &H2, &W2);
    const char *dir = tu_tmpdir();
    char gt[256], pr[256], f[512];
    snprintf(gt, sizeof gt, "%s/gt", dir);
    snprintf(pr, sizeof pr, "%s/pred", dir);
    ck_assert(mkdir(gt, 0700) == 0 && mkdir(pr, 0700) == 0);
    /* truth: Cellpose training layout (image + X_masks) for one, a bare label file for the
     * other; predictions: gpuseg's raw .bin + sidecar, Cellpose's _cp_masks, plus decoys */
    snprintf(f, sizeof f, "%s/many_masks.png", gt);
    write_labels(f, t1, H, W);
    snprintf(f, sizeof f, "%s/many.tif", gt); /* stands for the image: the suffixed file wins */
    write_labels(f, p1, H, W);
    snprintf(f, sizeof f, "%s/usi.npy", gt);
    write_labels(f, t2, H2, W2);
    snprintf(f, sizeof f, "%s/many_segmentation.bin", pr);
    write_labels(f, p1, H, W);
    snprintf(f, sizeof f, "%s/many.png", pr);
    write_labels(f, t1, H, W);
    snprintf(f, sizeof f, "%s/usi_cp_masks.tif", pr);
    write_labels(f, p2, H2, W2);
    snprintf(f, sizeof f, "%s/notes.txt", pr);
    tu_write_file(f, "x", 1);

    /* one pair of files: the fixture's numbers */
    snprintf(f, sizeof f, "%s/usi_cp_masks.tif", pr);
    tu_cli_result *r = tu_cli("eval '%s/usi.npy' '%s'", gt, f);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strstr(r->out, "usi_cp_masks.tif: n_true 8, n_pred 8 | AP@0.5 0.6000 (TP 6 FP "
                                 "2 FN 2) | AP@0.75 0.6000 (TP 6 FP 2 FN 2) | AP@0.9 0.2308 (TP "
                                 "3 FP 5 FN 5)"),
                  "%s", r->out);
    free(r);
    /* folders: pooled = sums (many: TP 19/15/8 FP 3/7/14 FN 6/10/17; usi: 6/6/3, 2/2/5, 2/2/5) */
    r = tu_cli("eval '%s' '%s'", gt, pr);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strstr(r->out, "many: n_true 25, n_pred 22 | AP@0.5 0.6786"), "%s", r->out);
    ck_assert(strstr(r->out, "usi: n_true 8, n_pred 8"));
    ck_assert_msg(strstr(r->out, "pooled over 2 images: AP@0.5 0.6579 (TP 25 FP 5 FN 8) | "
                                 "AP@0.75 0.5000 (TP 21 FP 9 FN 12) | AP@0.9 0.2115 (TP 11 FP 19 "
                                 "FN 22)"),
                  "%s", r->out);
    ck_assert(strstr(r->out, "mean per-image AP: AP@0.5 0.6393"));
    free(r);
    r = tu_cli("eval --json --thresholds 0.5,0.95 '%s' '%s'", gt, pr);
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_msg(strstr(r->out, "\"thresholds\": [0.5, 0.95]") &&
                      strstr(r->out, "\"pooled\": {\"ap\": [0.657895, ") &&
                      strstr(r->out, "\"name\": \"many\"") && tu_count_lines(r->out) == 1,
                  "%s", r->out);
    free(r);

    /* errors: a truth without prediction, two predictions for one stem, size mismatch, a file
     * and a folder, a missing path, a threshold below 0.5 */
    snprintf(f, sizeof f, "%s/extra.npy", gt);
    write_labels(f, t2, H2, W2);
    r = tu_cli("eval '%s' '%s'", gt, pr);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "no prediction for 'extra'") && tu_count_lines(r->err) == 1, "%s",
                  r->err);
    free(r);
    remove(f);
    snprintf(f, sizeof f, "%s/usi_masks.npy", pr);
    write_labels(f, p2, H2, W2);
    r = tu_cli("eval '%s' '%s'", gt, pr);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "two label files for 'usi'"), "%s", r->err);
    free(r);
    remove(f);
    r = tu_cli("eval '%s/usi.npy' '%s/many.png'", gt, pr);
    ck_assert_int_eq(r->status, 1);
    ck_assert_msg(strstr(r->err, "many.png: 160 x 160 labels, but the truth"), "%s", r->err);
    free(r);
    r = tu_cli("eval '%s/usi.npy' '%s'", gt, pr);
    ck_assert_int_eq(r->status, 2);
    free(r);
    r = tu_cli("eval '%s/nothing.png' '%s/many.png'", gt, pr);
    ck_assert_int_eq(r->status, 1);
    ck_assert(strstr(r->err, "nothing.png: no such file"));
    free(r);
    r = tu_cli("eval --thresholds 0.3 '%s' '%s'", gt, pr);
    ck_assert_int_eq(r->status, 2);
    free(r);
    tu_rmtree(dir);
    free(t1);
    free(p1);
    free(t2);
    free(p2);
}
END_TEST

int main(void) {
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("host");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, hand_cases);
    tcase_add_test(tc, greedy_is_maximum);
    tcase_add_test(tc, cellpose_fixtures);
    tcase_add_test(tc, bad_arguments);
    tcase_add_test(tc, cli_eval);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
