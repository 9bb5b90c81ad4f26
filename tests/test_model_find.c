/* tests/test_model_find.c: finding model files as a Cellpose user keeps them (gpuseg_model_find,
 * gpuseg_model_cellpose_dir, gpuseg_size_model_find): Cellpose 3.1's folder from
 * $CELLPOSE_LOCAL_MODELS_PATH or $HOME/.cellpose/models, its file names (nucleitorch_0, ...),
 * the caller's folders first, paths as given, and the one-line error naming every place tried.
 * Host only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "gpuseg/model.h"
#include "testutil.h"

static void touch(const char *dir, const char *name) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    tu_write_file(p, "x", 1);
}

START_TEST(find_models) {
    const char *tmp = tu_tmpdir();
    char cp[512], home[512], mine[512], want[1024], got[1024];
    snprintf(cp, sizeof cp, "%s/cpmodels", tmp);
    snprintf(home, sizeof home, "%s/home", tmp);
    snprintf(mine, sizeof mine, "%s/mine", tmp);
    ck_assert_int_eq(mkdir(cp, 0700), 0);
    ck_assert_int_eq(mkdir(mine, 0700), 0);
    ck_assert_int_eq(mkdir(home, 0700), 0);
    snprintf(want, sizeof want, "%s/.cellpose", home);
    ck_assert_int_eq(mkdir(want, 0700), 0);
    snprintf(want, sizeof want, "%s/.cellpose/models", home);
    ck_assert_int_eq(mkdir(want, 0700), 0);
    touch(want, "cyto3");
    touch(cp, "cyto3");
    touch(cp, "nucleitorch_0");
    touch(cp, "cyto2torch_0");
    touch(cp, "tissuenet_cp3");
    touch(cp, "size_cyto3.npy");
    touch(cp, "size_nucleitorch_0.npy");
    touch(mine, "cyto3");
    touch(mine, "my_model");
    touch(mine, "my_model_size.npy");
    ck_assert_int_eq(mkdir(strcat(strcpy(got, cp), "/livecell_cp3"), 0700), 0); /* a folder */

    setenv("HOME", home, 1);
    setenv("CELLPOSE_LOCAL_MODELS_PATH", cp, 1);
    ck_assert_int_eq(gpuseg_model_cellpose_dir(got, sizeof got), GPUSEG_OK);
    ck_assert_str_eq(got, cp);
    struct {
        const char *name, *file;
    } cases[] = {{"cyto3", "cyto3"},
                 {"nuclei", "nucleitorch_0"},
                 {"cyto2", "cyto2torch_0"},
                 {"nucleitorch_0", "nucleitorch_0"},
                 {"tissuenet_cp3", "tissuenet_cp3"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        ck_assert_msg(gpuseg_model_find(cases[i].name, NULL, 0, got, sizeof got) == GPUSEG_OK,
                      "%s: %s", cases[i].name, gpuseg_last_error());
        snprintf(want, sizeof want, "%s/%s", cp, cases[i].file);
        ck_assert_str_eq(got, want);
    }
    /* the caller's folders come first */
    const char *dirs[] = {"/nonexistent-gpuseg", mine};
    ck_assert_int_eq(gpuseg_model_find("cyto3", dirs, 2, got, sizeof got), GPUSEG_OK);
    snprintf(want, sizeof want, "%s/cyto3", mine);
    ck_assert_str_eq(got, want);
    /* a path is used as given */
    snprintf(want, sizeof want, "%s/my_model", mine);
    ck_assert_int_eq(gpuseg_model_find(want, NULL, 0, got, sizeof got), GPUSEG_OK);
    ck_assert_str_eq(got, want);
    snprintf(want, sizeof want, "%s/nothing", mine);
    ck_assert_int_eq(gpuseg_model_find(want, NULL, 0, got, sizeof got), GPUSEG_NOT_FOUND);
    ck_assert(strstr(gpuseg_last_error(), want));

    /* not found: one line naming every place tried */
    ck_assert_int_eq(gpuseg_model_find("cyto", dirs, 2, got, sizeof got), GPUSEG_NOT_FOUND);
    const char *msg = gpuseg_last_error();
    ck_assert_int_eq(tu_count_lines(msg), 0);
    ck_assert_msg(strstr(msg, "/nonexistent-gpuseg/cyto") && strstr(msg, "cytotorch_0") &&
                      strstr(msg, "/mine/cyto,") && strstr(msg, cp),
                  "%s", msg);
    /* a folder with the name is not a model */
    ck_assert_int_eq(gpuseg_model_find("livecell_cp3", NULL, 0, got, sizeof got), GPUSEG_NOT_FOUND);

    /* without the variable: $HOME/.cellpose/models */
    unsetenv("CELLPOSE_LOCAL_MODELS_PATH");
    ck_assert_int_eq(gpuseg_model_find("cyto3", NULL, 0, got, sizeof got), GPUSEG_OK);
    snprintf(want, sizeof want, "%s/.cellpose/models/cyto3", home);
    ck_assert_str_eq(got, want);
    ck_assert_int_eq(gpuseg_model_find("nuclei", NULL, 0, got, sizeof got), GPUSEG_NOT_FOUND);
    snprintf(want, sizeof want, "%s/.cellpose/models/nucleitorch_0", home);
    ck_assert_msg(strstr(gpuseg_last_error(), want), "%s", gpuseg_last_error());
    setenv("CELLPOSE_LOCAL_MODELS_PATH", "", 1); /* empty = unset, as in Cellpose */
    ck_assert_int_eq(gpuseg_model_find("cyto3", NULL, 0, got, sizeof got), GPUSEG_OK);
    snprintf(want, sizeof want, "%s/.cellpose/models/cyto3", home);
    ck_assert_str_eq(got, want);
    unsetenv("HOME");
    unsetenv("CELLPOSE_LOCAL_MODELS_PATH");
    ck_assert_int_eq(gpuseg_model_cellpose_dir(got, sizeof got), GPUSEG_NOT_FOUND);
    ck_assert_int_eq(gpuseg_model_find("cyto3", NULL, 0, got, sizeof got), GPUSEG_NOT_FOUND);
    ck_assert(strstr(gpuseg_last_error(), "HOME"));
    ck_assert_int_eq(gpuseg_model_find("", NULL, 0, got, sizeof got), GPUSEG_INVALID_ARGUMENT);
    char small[8];
    setenv("CELLPOSE_LOCAL_MODELS_PATH", cp, 1);
    ck_assert_int_eq(gpuseg_model_find("cyto3", NULL, 0, small, sizeof small),
                     GPUSEG_INVALID_ARGUMENT);

    /* size models beside the model file, under Cellpose's names */
    snprintf(want, sizeof want, "%s/cyto3", cp);
    ck_assert_int_eq(gpuseg_size_model_find(want, got, sizeof got), GPUSEG_OK);
    snprintf(want, sizeof want, "%s/size_cyto3.npy", cp);
    ck_assert_str_eq(got, want);
    snprintf(want, sizeof want, "%s/nucleitorch_0", cp);
    ck_assert_int_eq(gpuseg_size_model_find(want, got, sizeof got), GPUSEG_OK);
    snprintf(want, sizeof want, "%s/size_nucleitorch_0.npy", cp);
    ck_assert_str_eq(got, want);
    snprintf(want, sizeof want, "%s/my_model", mine);
    ck_assert_int_eq(gpuseg_size_model_find(want, got, sizeof got), GPUSEG_OK);
    snprintf(want, sizeof want, "%s/my_model_size.npy", mine);
    ck_assert_str_eq(got, want);
    snprintf(want, sizeof want, "%s/cyto2torch_0", cp);
    ck_assert_int_eq(gpuseg_size_model_find(want, got, sizeof got), GPUSEG_NOT_FOUND);
    ck_assert(strstr(gpuseg_last_error(), "size_cyto2torch_0.npy"));
    tu_rmtree(tmp);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model_find");
    TCase *tc = tcase_create("host");
    tcase_add_test(tc, find_models);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
