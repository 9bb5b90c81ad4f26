/* tests/test_catalogue.c: the bad-input catalogue (issue #8): one table of command lines, each
 * run as the `gpuseg` command under `timeout`, across every file type gpuseg reads (PNG, JPEG,
 * TIFF, PNM, .npy images and flows, .bin + .json labels, model files, shm segments) and every
 * command. A bad input must end with its exit code (1 bad input, 2 usage), exactly one stderr
 * line "gpuseg: ..." naming the file and the problem, no signal, no hang, and nothing new in the
 * folder (no partial or temporary file) nor in /dev/shm. Degenerate but valid inputs (blank,
 * 1x1, no objects) must give a correct, complete result. docs/catalogue.md lists the decisions.
 * GPUSEG_CATALOGUE_WRAPPER (e.g. "valgrind -q --error-exitcode=99") runs each command under it. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strcasestr */
#endif
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define TINY_MODEL    GPUSEG_SOURCE_DIR "/tests/fixtures/model/tiny_cpnet.pth"
#define FIXTURE_MODEL GPUSEG_SOURCE_DIR "/tests/fixtures/model/"
#define BUNDLED_MODEL GPUSEG_BUNDLED_MODEL
#define CORPUS_IMAGE  GPUSEG_SOURCE_DIR "/tests/fuzz/corpus/image/"

/* Seconds one command may take: the slowest case (segment with the bundled model on a 2-core
 * PoCL CPU, program cache cold) takes about 5 s; a hang is what this limit catches. */
#define CASE_TIMEOUT_S 120

/* How a case's result is checked beyond exit code and stderr (valid inputs only). */
typedef enum {
    CHECK_NONE,
    CHECK_LABELS_EMPTY,     /* out.bin + out.json: all zero, n_masks 0, shape from 'h', 'w' */
    CHECK_FLOWS_BACKGROUND, /* out.npy: [3,h,w], zero flows, cellprob -5 */
    CHECK_EVAL_NO_OBJECTS,  /* JSON on stdout: n_true 0, n_pred 0, ap null */
    CHECK_INFO_1X1,         /* JSON on stdout: width 1, height 1 */
    CHECK_SHM_PUT,          /* JSON on stdout naming a new segment (removed after the check) */
} check_kind;

typedef struct {
    const char *name;
    const char *args;    /* shell fragment after `gpuseg`, run in the case's folder */
    int exit_code;       /* 0, 1 (bad input) or 2 (usage) */
    const char *file;    /* what the error line must name (NULL: nothing to name) */
    const char *keyword; /* a word of the problem, case-insensitive (NULL for exit 0) */
    bool device;         /* reaches the OpenCL device (skipped without one) */
    check_kind check;
    const char *outputs; /* files the command writes (space-separated), for exit 0 */
    uint32_t h, w;       /* expected output size (checks) */
} cat_case;

/* Inputs (made by make_inputs in every case's fresh folder):
 *  empty.png (0 bytes)          text.png (text, not an image)   trunc.png (PNG cut in half)
 *  trunc.jpg (JPEG cut short)   trunc.tif (TIFF cut short)     huge.pgm (P5 100000 x 100000)
 *  huge.tif (100000 x 100000)   huge.png (IHDR 100000 x 100000) nan.tif (float32 with a NaN)
 *  nan.npy / inf.npy (float32 images with a NaN / an Inf)       c64.npy obj.npy be.npy (dtypes)
 *  d4.npy ([2,3,4,5] float32)   d5.npy (5-D)                  short.npy (data cut short)
 *  flows2.npy ([2,8,8])         flows_u8.npy (uint8 [3,8,8])  flows_nan.npy (a NaN in dY)
 *  flows_bg.npy ([3,8,8] background) flows_1x1.npy            blank.npy blank.png (16x16 zero)
 *  one.png (1x1)                flat.npy (16x16 constant 200)  lab.bin + lab.json (valid 4x4)
 *  nojson.bin (no sidecar)      badsize.bin/.json (size mismatch) badjson.bin/.json (no shape)
 *  labf.npy (float32 labels)    neg.npy (int32 with -1)        trunc.pth (zip cut)
 *  foreign.pth (a zip, not torch) adir/ and adir.png/ (folders)  stack3.tif (3 pages of 16x16)
 * plus, for the cases naming @S, a segment /gpuseg-cat<pid>-<case>-bad whose header is garbage. */
static const cat_case CASES[] = {
    /* --- images: PNG, JPEG, TIFF, PNM --- */
    {"empty file", "info empty.png", 1, "empty.png", "empty", 0, 0, 0, 0, 0},
    {"wrong magic", "info text.png", 1, "text.png", "format", 0, 0, 0, 0, 0},
    {"truncated PNG", "eval trunc.png trunc.png", 1, "trunc.png", "decode", 0, 0, 0, 0, 0},
    {"truncated JPEG", "segment trunc.jpg --model @M -o out.bin --quiet", 1, "trunc.jpg", "decode",
     1, 0, 0, 0, 0},
    {"truncated TIFF", "shm put trunc.tif", 1, "trunc.tif", "strip", 0, 0, 0, 0, 0},
    {"huge PNM", "info huge.pgm", 1, "huge.pgm", "limit", 0, 0, 0, 0, 0},
    {"huge TIFF", "eval huge.tif huge.tif", 1, "huge.tif", "limit", 0, 0, 0, 0, 0},
    {"huge PNG", "segment huge.png --model @M -o out.bin --quiet", 1, "huge.png", "limit", 1, 0, 0,
     0, 0},
    {"NaN in float TIFF", "segment nan.tif --model @M -o out.bin --quiet", 1, "nan.tif", "NaN", 1,
     0, 0, 0, 0},
    {"folder as image", "info adir", 1, "adir", "directory", 0, 0, 0, 0, 0},
    {"missing image", "segment missing.png --model @M -o out.bin --quiet", 1, "missing.png",
     "no such file", 1, 0, 0, 0, 0},
    /* --- .npy images --- */
    {"NaN in .npy image", "segment nan.npy --model @M -o out.bin --quiet", 1, "nan.npy", "NaN", 1,
     0, 0, 0, 0},
    {"Inf in .npy image", "segment inf.npy --model @B -o out.tif --quiet", 1, "inf.npy", "infinite",
     1, 0, 0, 0, 0},
    {"complex .npy", "info c64.npy", 1, "c64.npy", "not supported", 0, 0, 0, 0, 0},
    {"object .npy", "info obj.npy", 1, "obj.npy", "objects", 0, 0, 0, 0, 0},
    {"big-endian .npy", "shm put be.npy", 1, "be.npy", "big-endian", 0, 0, 0, 0, 0},
    {"4-D .npy, 5 channels", "info d4.npy", 1, "d4.npy", "channels", 0, 0, 0, 0, 0},
    {"5-D .npy", "eval d5.npy d5.npy", 1, "d5.npy", "dimensions", 0, 0, 0, 0, 0},
    {"truncated .npy", "info short.npy", 1, "short.npy", "truncated", 0, 0, 0, 0, 0},
    /* --- .npy flows (masks) --- */
    {"flows [2,H,W]", "masks flows2.npy -o out.tif", 1, "flows2.npy", "shape", 0, 0, 0, 0, 0},
    {"flows uint8", "masks flows_u8.npy -o out.tif", 1, "flows_u8.npy", "float32", 0, 0, 0, 0, 0},
    {"flows 4-D", "masks d4.npy -o out.tif", 1, "d4.npy", "shape", 0, 0, 0, 0, 0},
    {"NaN in flows", "masks flows_nan.npy -o out.npy", 1, "flows_nan.npy", "NaN", 1, 0, 0, 0, 0},
    {"masks output in a missing folder", "masks flows_bg.npy -o nodir/out.tif", 1, "nodir/out.tif",
     "no such file", 1, 0, 0, 0, 0},
    {"masks output is a folder", "masks flows_bg.npy -o adir", 1, "adir", "extension", 0, 0, 0, 0,
     0},
    {"masks output folder named .png", "masks flows_bg.npy -o adir.png", 1, "adir.png", "directory",
     1, 0, 0, 0, 0},
    /* --- .bin + .json labels and other label files (flows, eval, shm put) --- */
    {"label .bin without sidecar", "eval lab.bin nojson.bin", 1, "nojson.bin", "sidecar", 0, 0, 0,
     0, 0},
    {"label .bin size mismatch", "flows badsize.bin -o out.npy", 1, "badsize.bin", "size", 0, 0, 0,
     0, 0},
    {"label sidecar without shape", "eval badjson.bin lab.bin", 1, "badjson.json", "shape", 0, 0, 0,
     0, 0},
    {"info label .bin size mismatch", "info badsize.bin", 1, "badsize.bin", "size", 0, 0, 0, 0, 0},
    {"shm put label .bin without sidecar", "shm put nojson.bin", 1, "nojson.bin", "sidecar", 0, 0,
     0, 0, 0},
    {"float labels", "flows labf.npy -o out.npy", 1, "labf.npy", "integers", 0, 0, 0, 0, 0},
    {"negative labels", "eval neg.npy neg.npy", 1, "neg.npy", "negative", 0, 0, 0, 0, 0},
    {"eval size mismatch", "eval lab.bin blank.npy", 1, "blank.npy", "16 x 16", 0, 0, 0, 0, 0},
    {"eval missing prediction", "eval lab.bin missing.bin", 1, "missing.bin", "no such", 0, 0, 0, 0,
     0},
    /* --- model files --- */
    {"model missing", "model info missing.pth", 1, "missing.pth", "no such file", 0, 0, 0, 0, 0},
    {"model is a folder", "model info adir", 1, "adir", "not a regular file", 0, 0, 0, 0, 0},
    {"model truncated zip", "model info trunc.pth", 1, "trunc.pth", "truncated", 0, 0, 0, 0, 0},
    {"model foreign zip", "segment blank.npy --model foreign.pth -o out.bin", 1, "foreign.pth",
     "torch.save", 1, 0, 0, 0, 0},
    {"model Cellpose 4", "model info @Fcp4_like.pth", 1, "cp4_like.pth", "Cellpose 4", 0, 0, 0, 0,
     0},
    {"model legacy format", "segment blank.npy --model @Flegacy.pth -o out.bin", 1, "legacy.pth",
     "legacy", 1, 0, 0, 0, 0},
    {"model wrong tensor shape", "model info @Ftiny_wrong_shape.pth", 1, "tiny_wrong_shape.pth",
     "shape", 0, 0, 0, 0, 0},
    {"model image as model", "model info blank.png", 1, "blank.png", "not a PyTorch model", 0, 0, 0,
     0, 0},
    /* --- shared-memory segments --- */
    {"shm missing segment", "save --shm /gpuseg-catalogue-none -o out.bin", 1,
     "/gpuseg-catalogue-none", "no such segment", 0, 0, 0, 0, 0},
    {"shm corrupt header", "save --shm @S -o out.tif --timeout 0", 1, "@S", "magic", 0, 0, 0, 0, 0},
    {"shm rm bad name", "shm rm ../etc/passwd", 1, "../etc/passwd", "name", 0, 0, 0, 0, 0},
    {"shm batch missing save dir", "shm batch blank.png --save-dir nodir --host", 1,
     "nodir/blank.bin", "no such file", 0, 0, 0, 0, 0},
    {"shm list bad prefix", "shm list --prefix /etc/x", 2, "'/etc/x'", "does not start with", 0, 0,
     0, 0, 0},
    {"shm clean bad prefix", "shm clean --prefix bad", 2, "'bad'", "/gpuseg-", 0, 0, 0, 0, 0},
    /* --- usage errors --- */
    {"unknown command", "frobnicate x", 2, "frobnicate", "unknown command", 0, 0, 0, 0, 0},
    {"unknown option", "info --bogus blank.png", 2, "'--bogus'", "is unknown", 0, 0, 0, 0, 0},
    {"option without its value", "masks flows_bg.npy -o", 2, "'-o'", "needs a value", 0, 0, 0, 0,
     0},
    {"missing operand", "flows -o out.npy", 2, NULL, "usage: gpuseg flows", 0, 0, 0, 0, 0},
    {"unknown shm subcommand", "shm frob", 2, "frob", "unknown subcommand", 0, 0, 0, 0, 0},
    {"cache unknown action", "cache frob", 2, NULL, "usage: gpuseg cache", 0, 0, 0, 0, 0},
    {"--diameter -1", "segment blank.npy --model @M --diameter -1", 2, "--diameter", "'-1'", 0, 0,
     0, 0, 0},
    {"--flow-threshold nan", "masks flows_bg.npy -o out.tif --flow-threshold nan", 2,
     "--flow-threshold", "'nan'", 0, 0, 0, 0, 0},
    {"--niter abc", "segment blank.npy --model @M --niter abc", 2, "--niter", "'abc'", 0, 0, 0, 0,
     0},
    {"--thresholds out of range", "eval lab.bin lab.bin --thresholds 0.3", 2, "--thresholds", "0.3",
     0, 0, 0, 0, 0},
    {"-o with two images", "segment blank.npy one.png --model @M -o out.bin", 2, "-o", "one output",
     0, 0, 0, 0, 0},
    {"devices: no such device", "devices --device 99", 1, "99", "no OpenCL device", 1, 0, 0, 0, 0},
    /* --- silently wrong results, refused before any device work (issue #21) --- */
    {"segment a multi-page TIFF", "segment stack3.tif --model @M -o out.bin", 1, "stack3.tif",
     "3 pages", 0, 0, 0, 0, 0},
    {"segment --page beyond the pages", "segment stack3.tif --page 3 --model @M -o out.bin", 1,
     "stack3.tif", "--page 3", 0, 0, 0, 0, 0},
    {"segment --stitch-threshold with --page",
     "segment stack3.tif --stitch-threshold 0.5 --page 1 --model @M -o out.bin", 2,
     "--stitch-threshold 0.5", "--page", 0, 0, 0, 0, 0},
    {"segment --stitch-threshold with PNG labels",
     "segment stack3.tif --stitch-threshold 0.5 --model @M -o out.png", 2, "--stitch-threshold",
     "out.png", 0, 0, 0, 0, 0},
    {"segment --stitch-threshold not a number", "segment stack3.tif --stitch-threshold x", 2,
     "--stitch-threshold", "'x'", 0, 0, 0, 0, 0},
    {"segment --chan beyond the channels", "segment blank.png --chan 2 --model @M -o out.bin", 1,
     "blank.png", "1 channel", 0, 0, 0, 0, 0},
    {"segment --chan2, one-channel model", "segment blank.png --chan 1 --chan2 2 --model @B", 2,
     "--chan2 2", "without a second channel", 0, 0, 0, 0, 0},
    {"segment -o disagrees with --format", "segment blank.png --model @M -o out.tif --format png",
     2, "out.tif", "disagree", 0, 0, 0, 0, 0},
    {"segment -o unknown extension", "segment blank.png --model @M -o out.jpg", 2, "out.jpg",
     "extension", 0, 0, 0, 0, 0},
    {"segment --block-size not a multiple of 16", "segment blank.png --model @M --block-size 100",
     2, "--block-size 100", "multiple of 16", 0, 0, 0, 0, 0},
    {"segment --block-size below 64", "segment blank.png --model @M --block-size 32", 2,
     "--block-size 32", "at least 64", 0, 0, 0, 0, 0},
    {"segment --halo not a number", "segment blank.png --model @M --halo x", 2, "--halo", "'x'", 0,
     0, 0, 0, 0},
    {"segment --max-memory not a size", "segment blank.png --model @M --max-memory 12Q", 2,
     "--max-memory", "'12Q'", 0, 0, 0, 0, 0},
    {"segment --block-size with streamed TIFF and PNG masks",
     "segment blank.png --model @M --block-size 64 -o out.tif --save-png", 2, "--save-png",
     "TIFF labels", 0, 0, 0, 0, 0},
    {"segment --resume without streamed TIFF labels",
     "segment blank.png --model @M --block-size 64 -o out.bin --resume", 2, "--resume",
     "tiled TIFF", 0, 0, 0, 0, 0},
    {"segment --max-memory over: streamed TIFF and outlines",
     "segment blank.png --model @M --max-memory 1K --format tif --save-outlines", 1, "blank.png",
     "blockwise", 0, 0, 0, 0, 0},
    {"segment output in a missing folder", "segment blank.png --model @M -o nodir/out.bin", 1,
     "nodir/out.bin", "no such folder", 0, 0, 0, 0, 0},
    {"segment two images, one output", "segment blank.png blank.npy --model @M", 2,
     "blank_segmentation.bin", "both", 0, 0, 0, 0, 0},
    {"segment Cellpose flag not supported", "segment blank.png --Zstack", 2, "--Zstack",
     "not supported", 0, 0, 0, 0, 0},
    {"segment --do_3D on a 2-D image", "segment blank.png --model @M --do_3D", 1, "blank.png",
     "2-D image", 0, 0, 0, 0, 0},
    {"segment Cellpose training flag", "segment blank.png --train --n_epochs 10", 2, "--train",
     "does not train", 0, 0, 0, 0, 0},
    {"segment --norm_percentile one value", "segment blank.png --model @M --norm_percentile 1", 2,
     "--norm-percentile", "two values", 0, 0, 0, 0, 0},
    {"segment --save-dir is a file", "segment blank.png --model @M --save-dir blank.npy", 1,
     "blank.npy", "not a folder", 0, 0, 0, 0, 0},
    /* --- degenerate but valid --- */
    {"segment blank image", "segment blank.npy --model @M -o out.bin --quiet", 0, NULL, NULL, 1,
     CHECK_LABELS_EMPTY, "out.bin out.json", 16, 16},
    {"segment 1x1 image", "segment one.png --model @B -o out.bin --quiet", 0, NULL, NULL, 1,
     CHECK_LABELS_EMPTY, "out.bin out.json", 1, 1},
    {"segment constant image", "segment flat.npy --model @B -o out.bin --quiet", 0, NULL, NULL, 1,
     CHECK_LABELS_EMPTY, "out.bin out.json", 16, 16},
    {"masks all background", "masks flows_bg.npy -o out.bin", 0, NULL, NULL, 1, CHECK_LABELS_EMPTY,
     "out.bin out.json", 8, 8},
    {"masks 1x1 flows", "masks flows_1x1.npy -o out.bin", 0, NULL, NULL, 1, CHECK_LABELS_EMPTY,
     "out.bin out.json", 1, 1},
    {"flows of no objects", "flows blank.png -o out.npy", 0, NULL, NULL, 1, CHECK_FLOWS_BACKGROUND,
     "out.npy", 16, 16},
    {"eval no objects", "eval blank.png blank.npy --json", 0, NULL, NULL, 0, CHECK_EVAL_NO_OBJECTS,
     "", 0, 0},
    {"info 1x1 image", "info one.png", 0, NULL, NULL, 0, CHECK_INFO_1X1, "", 1, 1},
    {"shm clean, nothing to clean", "shm clean --prefix @P", 0, NULL, NULL, 0, CHECK_NONE, "", 0,
     0},
    {"info label .bin", "info lab.bin", 0, NULL, NULL, 0, CHECK_NONE, "", 4, 4},
    {"shm put label .bin", "shm put lab.bin --json --name @P", 0, NULL, NULL, 0, CHECK_SHM_PUT, "",
     4, 4},
    {"shm put no objects", "shm put blank.png --json --name @P", 0, NULL, NULL, 0, CHECK_SHM_PUT,
     "", 16, 16},
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

/* ---- input files ------------------------------------------------------------------------- */

static void writef(const char *dir, const char *name, const void *data, size_t n) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    tu_write_file(path, data, n);
}

static void write_text(const char *dir, const char *name, const char *text) {
    writef(dir, name, text, strlen(text));
}

/* A .npy file with any header dict (for dtypes gpuseg_npy_write cannot write) and nbytes of
 * zero data. */
static void write_npy_raw(const char *dir, const char *name, const char *dict, size_t nbytes) {
    unsigned char buf[1024] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    size_t dl = strlen(dict), total = 10 + dl + 1;
    size_t pad = (64 - total % 64) % 64;
    size_t hl = dl + pad + 1;
    ck_assert(10 + hl + nbytes <= sizeof buf);
    buf[8] = (unsigned char)(hl & 0xff);
    buf[9] = (unsigned char)(hl >> 8);
    memcpy(buf + 10, dict, dl);
    memset(buf + 10 + dl, ' ', pad);
    buf[10 + dl + pad] = '\n';
    writef(dir, name, buf, 10 + hl + nbytes);
}

static void write_npy(const char *dir, const char *name, gpuseg_dtype t, uint32_t ndim,
                      const uint64_t *shape, const void *data) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ck_assert_msg(gpuseg_npy_write(path, t, ndim, shape, data) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
}

static void write_labels(const char *dir, const char *name, uint32_t h, uint32_t w,
                         const uint16_t *v) {
    gpuseg_image *img = NULL;
    ck_assert(gpuseg_image_create(w, h, 1, 1, GPUSEG_DTYPE_U16, &img) == GPUSEG_OK);
    if (v)
        memcpy(img->data, v, (size_t)h * w * sizeof *v);
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    ck_assert_msg(gpuseg_labels_write(path, img, NULL) == GPUSEG_OK, "%s", gpuseg_last_error());
    gpuseg_image_free(img);
}

static void put16(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static void put32(unsigned char *p, uint32_t v) {
    put16(p, v & 0xffff);
    put16(p + 2, v >> 16);
}

/* A minimal little-endian one-strip greyscale TIFF of w x h samples of `bits` (sample format
 * 1 = unsigned, 3 = IEEE float); the pixel data (nbytes) follows the IFD. */
static void write_tiff(const char *dir, const char *name, uint32_t w, uint32_t h, uint32_t bits,
                       uint32_t format, const void *data, size_t nbytes) {
    enum { NTAGS = 10 };
    size_t ifd = 8, data_off = ifd + 2 + NTAGS * 12 + 4;
    unsigned char *b = calloc(1, data_off + nbytes);
    ck_assert_ptr_nonnull(b);
    memcpy(b, "II*\0", 4);
    put32(b + 4, (uint32_t)ifd);
    put16(b + ifd, NTAGS);
    const uint32_t tags[NTAGS][3] = {{256, 4, w}, {257, 4, h},     {258, 3, bits}, {259, 3, 1},
                                     {262, 3, 1}, {273, 4, 0},     {277, 3, 1},    {278, 4, h},
                                     {279, 4, 0}, {339, 3, format}};
    for (int i = 0; i < NTAGS; i++) {
        unsigned char *e = b + ifd + 2 + 12 * i;
        put16(e, tags[i][0]);
        put16(e + 2, tags[i][1]);
        put32(e + 4, 1);
        uint32_t v = tags[i][0] == 273   ? (uint32_t)data_off
                     : tags[i][0] == 279 ? (uint32_t)((size_t)w * h * bits / 8)
                                         : tags[i][2];
        if (tags[i][1] == 3)
            put16(e + 8, v);
        else
            put32(e + 8, v);
    }
    if (nbytes)
        memcpy(b + data_off, data, nbytes);
    writef(dir, name, b, data_off + nbytes);
    free(b);
}

/* Copies the first `keep` bytes (all when keep is 0) of src (a committed file) to dir/name. */
static void copy_prefix(const char *src, const char *dir, const char *name, size_t keep) {
    size_t n = 0;
    char *data = tu_read_file(src, &n);
    writef(dir, name, data, keep && keep < n ? keep : n);
    free(data);
}

static void make_inputs(const char *dir) {
    write_text(dir, "empty.png", "");
    write_text(dir, "text.png", "hello, this is not an image at all\n");
    /* PNG: a valid 16x16 label PNG cut in half (inside the compressed data) */
    uint16_t v16[16 * 16] = {0};
    write_labels(dir, "blank.png", 16, 16, v16);
    char path[512];
    snprintf(path, sizeof path, "%s/blank.png", dir);
    size_t n = 0;
    char *png = tu_read_file(path, &n);
    ck_assert_uint_gt(n, 60);
    writef(dir, "trunc.png", png, n / 2 + 10);
    /* huge.png: the same file with its IHDR saying 100000 x 100000 (CRC fixed up) */
    unsigned char *hp = (unsigned char *)png;
    for (int i = 0; i < 2; i++) {
        unsigned char *d = hp + 16 + 4 * i;
        d[0] = 0, d[1] = 0x01, d[2] = 0x86, d[3] = 0xa0; /* 100000 big-endian */
    }
    uint32_t crc = gpuseg__crc32(0, hp + 12, 17);
    hp[29] = (unsigned char)(crc >> 24), hp[30] = (unsigned char)(crc >> 16);
    hp[31] = (unsigned char)(crc >> 8), hp[32] = (unsigned char)crc;
    writef(dir, "huge.png", hp, n);
    free(png);
    write_labels(dir, "one.png", 1, 1, NULL);
    copy_prefix(CORPUS_IMAGE "grey.jpg", dir, "trunc.jpg", 300);
    /* TIFF: 16x12 uint8 promised, 100 bytes present; huge dimensions; a float NaN */
    unsigned char pix[100] = {0};
    write_tiff(dir, "trunc.tif", 16, 12, 8, 1, pix, sizeof pix);
    write_tiff(dir, "huge.tif", 100000, 100000, 8, 1, NULL, 0);
    float fl[8 * 8] = {0};
    fl[9] = NAN;
    write_tiff(dir, "nan.tif", 8, 8, 32, 3, fl, sizeof fl);
    write_text(dir, "huge.pgm", "P5\n100000 100000\n255\n");
    /* .npy images */
    uint64_t s16[2] = {16, 16}, s8[2] = {8, 8};
    write_npy(dir, "nan.npy", GPUSEG_DTYPE_F32, 2, s8, fl);
    fl[9] = INFINITY;
    write_npy(dir, "inf.npy", GPUSEG_DTYPE_F32, 2, s8, fl);
    write_npy_raw(dir, "c64.npy", "{'descr': '<c8', 'fortran_order': False, 'shape': (4, 4), }",
                  128);
    write_npy_raw(dir, "obj.npy", "{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 16);
    write_npy_raw(dir, "be.npy", "{'descr': '>u2', 'fortran_order': False, 'shape': (4, 4), }", 32);
    write_npy_raw(dir, "d4.npy",
                  "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4, 5), }", 480);
    write_npy_raw(dir, "d5.npy",
                  "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 1, 2, 2, 2), }", 8);
    write_npy_raw(dir, "short.npy", "{'descr': '<u2', 'fortran_order': False, 'shape': (8, 8), }",
                  100);
    uint8_t u8[16 * 16] = {0};
    write_npy(dir, "blank.npy", GPUSEG_DTYPE_U8, 2, s16, u8);
    memset(u8, 200, sizeof u8);
    write_npy(dir, "flat.npy", GPUSEG_DTYPE_U8, 2, s16, u8);
    /* flows */
    float fw[3 * 8 * 8] = {0};
    for (int i = 0; i < 64; i++)
        fw[128 + i] = -5.0f; /* cellprob logit: background everywhere */
    uint64_t s3[3] = {3, 8, 8}, s2[3] = {2, 8, 8}, s1[3] = {3, 1, 1};
    write_npy(dir, "flows_bg.npy", GPUSEG_DTYPE_F32, 3, s3, fw);
    write_npy(dir, "flows_1x1.npy", GPUSEG_DTYPE_F32, 3, s1, fw + 125);
    write_npy(dir, "flows2.npy", GPUSEG_DTYPE_F32, 3, s2, fw);
    write_npy(dir, "flows_u8.npy", GPUSEG_DTYPE_U8, 3, s3, u8);
    fw[10] = NAN;
    write_npy(dir, "flows_nan.npy", GPUSEG_DTYPE_F32, 3, s3, fw);
    /* labels */
    uint16_t lab[16] = {0, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 2, 0, 0, 2, 2};
    write_labels(dir, "lab.bin", 4, 4, lab);
    copy_prefix(GPUSEG_SOURCE_DIR "/tests/fixtures/model/legacy.pth", dir, "nojson.bin", 32);
    writef(dir, "badsize.bin", lab, 30);
    write_text(dir, "badsize.json",
               "{\"shape\":[4,4],\"dtype\":\"uint16\",\"byte_order\":\"little\",\"order\":\"C\"}");
    writef(dir, "badjson.bin", lab, 32);
    write_text(dir, "badjson.json", "{\"dtype\":\"uint16\"}");
    write_npy(dir, "labf.npy", GPUSEG_DTYPE_F32, 2, s8, fl);
    int32_t neg[8 * 8] = {0};
    neg[5] = -1;
    write_npy(dir, "neg.npy", GPUSEG_DTYPE_I32, 2, s8, neg);
    /* models */
    copy_prefix(TINY_MODEL, dir, "trunc.pth", 60000);
    /* foreign.pth: a stored ZIP holding one top-level file (hello.txt), as `zip` would write */
    unsigned char zip[128] = {0};
    size_t zl = 0;
    const uint32_t zcrc = gpuseg__crc32(0, "hi", 2);
    for (int central = 0; central < 2; central++) {
        unsigned char *h = zip + zl;
        int o = central ? 2 : 0; /* the central header has "version made by" first */
        put32(h, central ? 0x02014b50u : 0x04034b50u);
        put16(h + 4, 20);
        put16(h + 4 + o, 10);
        put32(h + 14 + o, zcrc);
        put32(h + 18 + o, 2);
        put32(h + 22 + o, 2);
        put16(h + 26 + o, 9);
        size_t hl = central ? 46 : 30;
        memcpy(h + hl, "hello.txt", 9);
        if (!central)
            memcpy(h + hl + 9, "hi", 2);
        zl += hl + 9 + (central ? 0 : 2);
    }
    unsigned char *eocd = zip + zl;
    put32(eocd, 0x06054b50u);
    put16(eocd + 8, 1);
    put16(eocd + 10, 1);
    put32(eocd + 12, 55); /* central directory: 46 + 9 bytes at offset 41 */
    put32(eocd + 16, 41);
    writef(dir, "foreign.pth", zip, zl + 22);
    snprintf(path, sizeof path, "%s/adir", dir);
    ck_assert_int_eq(mkdir(path, 0700), 0);
    snprintf(path, sizeof path, "%s/adir.png", dir);
    ck_assert_int_eq(mkdir(path, 0700), 0);
    /* stack3.tif: 3 pages of 16x16 (a Z stack, or channels stored as pages) */
    gpuseg_image *stack = NULL;
    ck_assert(gpuseg_image_create(16, 16, 1, 3, GPUSEG_DTYPE_U16, &stack) == GPUSEG_OK);
    snprintf(path, sizeof path, "%s/stack3.tif", dir);
    ck_assert(gpuseg_labels_write(path, stack, NULL) == GPUSEG_OK);
    gpuseg_image_free(stack);
}

/* ---- running and checking ---------------------------------------------------------------- */

/* Replaces @D (the case folder), @M (tiny model), @B (bundled model), @F (model fixtures
 * folder), @S (this case's corrupt segment name) and @P (its segment prefix) in s. */
static void expand(const char *s, const char *shm, const char *prefix, char *out, size_t len) {
    size_t k = 0;
    for (; *s && k + 1 < len; s++) {
        const char *rep = NULL;
        if (s[0] == '@' && s[1]) {
            rep = s[1] == 'M'   ? TINY_MODEL
                  : s[1] == 'B' ? BUNDLED_MODEL
                  : s[1] == 'F' ? FIXTURE_MODEL
                  : s[1] == 'S' ? shm
                  : s[1] == 'P' ? prefix
                                : NULL;
        }
        if (rep) {
            k += (size_t)snprintf(out + k, len - k, "%s", rep);
            s++;
        } else {
            out[k++] = *s;
        }
    }
    ck_assert_uint_lt(k, len - 1);
    out[k] = 0;
}

/* The names in dir (recursively, as "sub/name"), sorted and joined by spaces. */
static void list_rec(const char *dir, const char *rel, char *out, size_t len) {
    char path[1024];
    snprintf(path, sizeof path, "%s%s%s", dir, rel[0] ? "/" : "", rel);
    DIR *d = opendir(path);
    ck_assert_ptr_nonnull(d);
    char *names[256];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < 256)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            names[n++] = strdup(e->d_name);
    closedir(d);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    for (size_t i = 0; i < n; i++) {
        char sub[1024];
        snprintf(sub, sizeof sub, "%s%s%s", rel, rel[0] ? "/" : "", names[i]);
        size_t k = strlen(out);
        snprintf(out + k, len - k, "%s ", sub);
        char full[2048];
        struct stat st;
        snprintf(full, sizeof full, "%s/%s", dir, sub);
        if (lstat(full, &st) == 0 && S_ISDIR(st.st_mode))
            list_rec(dir, sub, out, len);
        free(names[i]);
    }
}

/* Segments in /dev/shm whose name starts with prefix (without '/'), joined by spaces. */
static void list_shm(const char *prefix, char *out, size_t len) {
    out[0] = 0;
    DIR *d = opendir("/dev/shm");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strncmp(e->d_name, prefix, strlen(prefix)) == 0) {
            size_t k = strlen(out);
            snprintf(out + k, len - k, "%s ", e->d_name);
        }
    closedir(d);
}

/* Runs `gpuseg <args>` in dir under timeout (and GPUSEG_CATALOGUE_WRAPPER, if set), with its
 * shm segments named prefix...; like tu_cli, with the exit status 128 + N for signal N. */
static tu_cli_result *run_cli(const char *dir, const char *shm_prefix, const char *args) {
    const char *wrap = getenv("GPUSEG_CATALOGUE_WRAPPER");
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && GPUSEG_SHM_PREFIX='/%s' timeout -k 5 %d %s '%s' %s </dev/null "
             ">'%s/../cat-stdout' 2>'%s/../cat-stderr'",
             dir, shm_prefix, CASE_TIMEOUT_S, wrap ? wrap : "", GPUSEG_CLI, args, dir, dir);
    tu_cli_result *r = calloc(1, sizeof *r);
    ck_assert_ptr_nonnull(r);
    int rc = system(cmd);
    r->status = rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
    char path[512];
    const char *which[2] = {"stdout", "stderr"};
    char *bufs[2] = {r->out, r->err};
    size_t lens[2] = {sizeof r->out, sizeof r->err};
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/../cat-%s", dir, which[i]);
        FILE *f = fopen(path, "rb");
        size_t n = f ? fread(bufs[i], 1, lens[i] - 1, f) : 0;
        if (f)
            fclose(f);
        bufs[i][n] = 0;
    }
    return r;
}

/* Reads the little-endian uint16/uint32 label file dir/out.bin with its sidecar and checks that
 * it is h x w, all zero, with n_masks 0. */
static void check_labels_empty(const char *dir, const cat_case *c) {
    char path[512];
    size_t nj = 0, nb = 0;
    snprintf(path, sizeof path, "%s/out.json", dir);
    char *json = tu_read_file(path, &nj);
    char shape[64];
    snprintf(shape, sizeof shape, "\"shape\":[%u,%u]", c->h, c->w);
    ck_assert_msg(strstr(json, shape) != NULL, "%s: %s lacks %s", c->name, json, shape);
    ck_assert_msg(strstr(json, "\"n_masks\":0") != NULL, "%s: %s", c->name, json);
    size_t sample = strstr(json, "\"dtype\":\"uint16\"") ? 2 : 4;
    ck_assert(sample == 2 || strstr(json, "\"dtype\":\"uint32\"") != NULL);
    free(json);
    snprintf(path, sizeof path, "%s/out.bin", dir);
    unsigned char *bin = (unsigned char *)tu_read_file(path, &nb);
    ck_assert_uint_eq(nb, (size_t)c->h * c->w * sample);
    for (size_t i = 0; i < nb; i++)
        ck_assert_msg(bin[i] == 0, "%s: label byte %zu is %u", c->name, i, bin[i]);
    free(bin);
}

static void check_flows_background(const char *dir, const cat_case *c) {
    char path[512];
    snprintf(path, sizeof path, "%s/out.npy", dir);
    gpuseg_npy *a = NULL;
    ck_assert_msg(gpuseg_npy_read(path, &a) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert(a->dtype == GPUSEG_DTYPE_F32 && a->ndim == 3);
    ck_assert(a->shape[0] == 3 && a->shape[1] == c->h && a->shape[2] == c->w);
    const float *f = a->data;
    size_t np = (size_t)c->h * c->w;
    for (size_t i = 0; i < np; i++) { /* exact: no object, so no flow is ever computed */
        ck_assert(f[i] == 0.0f && f[np + i] == 0.0f);
        ck_assert(f[2 * np + i] == -5.0f);
    }
    gpuseg_npy_free(a);
}

static bool contains_ci(const char *hay, const char *needle) {
    return strcasestr(hay, needle) != NULL;
}

/* Removes any leftover segment of this case (so that a failure leaves no litter) and says how
 * many there were. */
static int remove_shm(const char *names) {
    int n = 0;
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", names);
    for (char *save = NULL, *t = strtok_r(buf, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
        char nm[300];
        snprintf(nm, sizeof nm, "/%s", t);
        shm_unlink(nm);
        n++;
    }
    return n;
}

static int g_device_ok; /* set in main(): 1 when an OpenCL device is usable */

START_TEST(catalogue_case) {
    const cat_case *c = &CASES[_i];
    if (c->device && !g_device_ok) {
        printf("SKIP %s: no OpenCL device\n", c->name);
        return;
    }
    char base[64];
    snprintf(base, sizeof base, "%s", tu_tmpdir());
    char dir[128];
    snprintf(dir, sizeof dir, "%s/in", base);
    ck_assert_int_eq(mkdir(dir, 0700), 0);
    make_inputs(dir);
    /* this case's segments: gpuseg-cat<pid>-<case>... (the pid of the forked test) */
    char prefix[64], shm[80], sprefix[80];
    snprintf(prefix, sizeof prefix, "gpuseg-cat%d-%d-", (int)getpid(), _i);
    snprintf(shm, sizeof shm, "/%sbad", prefix);
    snprintf(sprefix, sizeof sprefix, "/%sput", prefix);
    if (strstr(c->args, "@S")) { /* a segment whose header is garbage */
        int fd = shm_open(shm, O_CREAT | O_EXCL | O_RDWR, 0600);
        ck_assert_int_ge(fd, 0);
        unsigned char junk[8192];
        for (size_t i = 0; i < sizeof junk; i++)
            junk[i] = (unsigned char)(i * 37 + 11);
        ck_assert_int_eq((int)write(fd, junk, sizeof junk), (int)sizeof junk);
        close(fd);
    }
    char before[8192] = "", after[8192] = "", shm_before[4096], shm_after[4096];
    list_rec(dir, "", before, sizeof before);
    list_shm(prefix, shm_before, sizeof shm_before);

    char args[2048], file[512] = "";
    expand(c->args, shm, sprefix, args, sizeof args);
    if (c->file)
        expand(c->file, shm, sprefix, file, sizeof file);
    tu_cli_result *r = run_cli(dir, prefix, args);

    list_rec(dir, "", after, sizeof after);
    list_shm(prefix, shm_after, sizeof shm_after);
    if (strstr(c->args, "@S"))
        shm_unlink(shm);

    printf("[%2d] %-34s exit %d %s%s", _i, c->name, r->status, r->err[0] ? r->err : "(no stderr)",
           r->err[0] && r->err[strlen(r->err) - 1] == '\n' ? "" : "\n");
    fflush(stdout);
    /* never a signal or a hang (timeout: 124; killed after it: 137) */
    ck_assert_msg(r->status >= 0 && r->status < 124, "%s: `gpuseg %s` ended with status %d: %s",
                  c->name, args, r->status, r->err);
    ck_assert_msg(r->status == c->exit_code, "%s: `gpuseg %s`: exit %d, expected %d; stderr: %s",
                  c->name, args, r->status, c->exit_code, r->err);
    if (c->exit_code != 0) {
        ck_assert_msg(tu_count_lines(r->err) == 1 && strncmp(r->err, "gpuseg: ", 8) == 0 &&
                          r->err[strlen(r->err) - 1] == '\n',
                      "%s: stderr is not one line \"gpuseg: ...\": [%s]", c->name, r->err);
        ck_assert_msg(!file[0] || strstr(r->err, file), "%s: the message does not name %s: %s",
                      c->name, file, r->err);
        ck_assert_msg(contains_ci(r->err, c->keyword), "%s: the message lacks \"%s\": %s", c->name,
                      c->keyword, r->err);
        ck_assert_msg(strcmp(before, after) == 0, "%s: files changed: before [%s] after [%s]",
                      c->name, before, after);
    } else {
        ck_assert_msg(r->err[0] == 0, "%s: stderr: %s", c->name, r->err);
        char expect[8192];
        snprintf(expect, sizeof expect, "%s", before);
        /* the expected outputs, merged into the sorted listing by a second sort */
        char all[8192];
        snprintf(all, sizeof all, "%s%s%s", before, c->outputs, c->outputs[0] ? " " : "");
        char *names[300];
        size_t n = 0;
        for (char *save = NULL, *t = strtok_r(all, " ", &save); t && n < 300;
             t = strtok_r(NULL, " ", &save))
            names[n++] = t;
        for (size_t i = 1; i < n; i++)
            for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
                char *t = names[j];
                names[j] = names[j - 1];
                names[j - 1] = t;
            }
        expect[0] = 0;
        for (size_t i = 0; i < n; i++) {
            size_t k = strlen(expect);
            snprintf(expect + k, sizeof expect - k, "%s ", names[i]);
        }
        ck_assert_msg(strcmp(expect, after) == 0, "%s: files: expected [%s], got [%s]", c->name,
                      expect, after);
        switch (c->check) {
        case CHECK_LABELS_EMPTY:
            check_labels_empty(dir, c);
            break;
        case CHECK_FLOWS_BACKGROUND:
            check_flows_background(dir, c);
            break;
        case CHECK_EVAL_NO_OBJECTS: /* Cellpose: AP = TP / (TP + FP + FN) = 0/0, NaN -> null */
            ck_assert_msg(strstr(r->out, "\"n_true\": 0, \"n_pred\": 0") &&
                              strstr(r->out, "\"ap\": [null, null, null]"),
                          "%s: %s", c->name, r->out);
            break;
        case CHECK_INFO_1X1:
            ck_assert_msg(strstr(r->out, "\"width\":1,\"height\":1,\"channels\":1"), "%s: %s",
                          c->name, r->out);
            break;
        case CHECK_SHM_PUT: {
            /* blank.png (16 x 16) has no object, lab.bin (4 x 4) two */
            char want[64], shape[64];
            snprintf(want, sizeof want, "{\"shm\":\"/%s", prefix);
            snprintf(shape, sizeof shape, "\"shape\":[%u,%u]", c->h, c->w);
            ck_assert_msg(strstr(r->out, want) && strstr(r->out, shape) &&
                              strstr(r->out, c->h == 4 ? "\"n_masks\":2" : "\"n_masks\":0"),
                          "%s: %s", c->name, r->out);
            ck_assert_msg(remove_shm(shm_after) == 1, "%s: segments [%s]", c->name, shm_after);
            shm_after[0] = 0;
            break;
        }
        case CHECK_NONE:
            break;
        }
    }
    /* no segment left behind (the corrupt one was ours and is gone) */
    int left = remove_shm(shm_after) - (strstr(c->args, "@S") ? 1 : 0);
    ck_assert_msg(left == 0, "%s: shared-memory segments left: [%s] (before: [%s])", c->name,
                  shm_after, shm_before);
    free(r);
    tu_rmtree(base);
}
END_TEST

int main(void) {
    int dev = tu_require_device();
    if (dev == 1)
        return 1; /* GPUSEG_REQUIRE_DEVICE and no device */
    g_device_ok = dev == 0;
    Suite *s = suite_create("catalogue");
    TCase *tc = tcase_create("bad_input");
    tcase_set_timeout(tc, CASE_TIMEOUT_S + 30);
    tcase_add_loop_test(tc, catalogue_case, 0, N_CASES);
    suite_add_tcase(s, tc);
    printf("%d catalogue cases\n", N_CASES);
    return tu_run(s);
}
