/* tests/test_fuzz_replay.c: runs every file of the fuzz corpus (tests/fuzz/corpus/<target>/:
 * valid seeds, broken variants and regression inputs for crashes the fuzzers found) through
 * the fuzz targets of tests/fuzz/ as an ordinary test, without libFuzzer. Each target's source
 * is compiled into this file under its own entry-point name (FUZZ_ENTRY); the targets abort on
 * a broken invariant and the sanitizer build catches memory errors, so this test fails when a
 * regression input misbehaves again. The masks corpus needs an OpenCL device (skipped without
 * one unless GPUSEG_REQUIRE_DEVICE=1). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create, used by the targets */
#endif
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"

#define FUZZ_ENTRY fuzz_image_entry
#include "fuzz/fuzz_image.c"
#undef FUZZ_ENTRY
#define FUZZ_ENTRY fuzz_npy_entry
#include "fuzz/fuzz_npy.c"
#undef FUZZ_ENTRY
#define FUZZ_ENTRY fuzz_model_entry
#include "fuzz/fuzz_model.c"
#undef FUZZ_ENTRY
#define FUZZ_ENTRY fuzz_zip_entry
#include "fuzz/fuzz_zip.c"
#undef FUZZ_ENTRY
#define FUZZ_ENTRY fuzz_pickle_entry
#include "fuzz/fuzz_pickle.c"
#undef FUZZ_ENTRY
#define FUZZ_ENTRY fuzz_shm_entry
#include "fuzz/fuzz_shm.c"
#undef FUZZ_ENTRY
#define FUZZ_ENTRY fuzz_masks_entry
#include "fuzz/fuzz_masks.c"
#undef FUZZ_ENTRY

typedef int (*fuzz_fn)(const uint8_t *, size_t);

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Feeds every regular file of corpus/<target> to fn, each in a heap buffer of exactly its size
 * (as libFuzzer does, so that ASan sees any read past the end); returns how many it fed. */
static size_t replay(const char *target, fuzz_fn fn) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/tests/fuzz/corpus/%s", GPUSEG_SOURCE_DIR, target);
    DIR *d = opendir(dir);
    ck_assert_msg(d != NULL, "cannot open %s", dir);
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            names = realloc(names, cap * sizeof *names);
            ck_assert_ptr_nonnull(names);
        }
        names[n] = strdup(e->d_name);
        ck_assert_ptr_nonnull(names[n]);
        n++;
    }
    closedir(d);
    qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        char path[8192];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "rb");
        ck_assert_msg(f != NULL, "cannot open %s", path);
        ck_assert_int_eq(fseek(f, 0, SEEK_END), 0);
        long len = ftell(f);
        ck_assert_int_ge(len, 0);
        rewind(f);
        uint8_t *buf = malloc(len ? (size_t)len : 1);
        ck_assert_ptr_nonnull(buf);
        ck_assert_uint_eq(fread(buf, 1, (size_t)len, f), (size_t)len);
        fclose(f);
        int rc = fn(buf, (size_t)len);
        ck_assert_msg(rc == 0, "%s returned %d", path, rc);
        free(buf);
        free(names[i]);
    }
    free(names);
    return n;
}

/* Each corpus holds at least one valid seed and a few broken files; fewer than 3 means the
 * corpus folder went missing or was emptied, which must fail rather than pass vacuously. */
#define REPLAY_TEST(name)                                                                          \
    START_TEST(replay_##name) {                                                                    \
        ck_assert_uint_ge(replay(#name, fuzz_##name##_entry), 3);                                  \
    }                                                                                              \
    END_TEST

REPLAY_TEST(image)
REPLAY_TEST(npy)
REPLAY_TEST(model)
REPLAY_TEST(zip)
REPLAY_TEST(pickle)
REPLAY_TEST(shm)

/* flows -> masks runs on the device: the target makes its context at the first input (here,
 * inside the forked test) and this test frees it. */
START_TEST(replay_masks) {
    ck_assert_uint_ge(replay("masks", fuzz_masks_entry), 3);
    ck_assert_msg(fuzz_masks_ctx() != NULL, "no device context: %s", gpuseg_last_error());
    fuzz_masks_release();
}
END_TEST

int main(void) {
    Suite *s = suite_create("fuzz_replay");
    TCase *tc = tcase_create("corpus");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, replay_image);
    tcase_add_test(tc, replay_npy);
    tcase_add_test(tc, replay_model);
    tcase_add_test(tc, replay_zip);
    tcase_add_test(tc, replay_pickle);
    tcase_add_test(tc, replay_shm);
    suite_add_tcase(s, tc);
    /* the device corpus: skipped without a device, failed under GPUSEG_REQUIRE_DEVICE=1 */
    int dev = tu_require_device();
    if (dev == 1)
        return 1;
    if (dev == 0) {
        TCase *tcd = tcase_create("device");
        tcase_set_timeout(tcd, 300);
        tcase_add_test(tcd, replay_masks);
        suite_add_tcase(s, tcd);
    } else {
        printf("SKIP: masks corpus (no OpenCL device)\n");
    }
    return tu_run(s);
}
