/* tests/test_model.c: reading Cellpose model files (model/zip.c, pickle.c, statedict.c,
 * model.c) against fixtures made by tools/fixtures/make_model_fixtures.py with Cellpose's own
 * CPnet and torch.save: every tensor bit-exact (sha256 of its float32 values), inferred nbase,
 * diameters, dtype conversion, byte order, each malformed or foreign file with its own status
 * and message, hand-built ZIP archives (Zip64 extra fields, compressed entries), hand-built
 * pickle streams, and truncation / random-byte / mutation loops that must never crash. Host
 * only: no OpenCL device is needed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/pickle.h"
#include "model/statedict.h"
#include "model/zip.h"
#include "testutil.h"

#define FIX GPUSEG_SOURCE_DIR "/tests/fixtures/model/"

static const char *fix(const char *name) {
    static char buf[4][1024];
    static int k;
    char *b = buf[k++ % 4];
    snprintf(b, 1024, "%s%s", FIX, name);
    return b;
}

static unsigned char *slurp(const char *path, size_t *n) {
    void *d = NULL;
    ck_assert_msg(gpuseg__read_file(NULL, path, (size_t)1 << 28, &d, n) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    return d;
}

static void sha_hex(const void *d, size_t n, char hex[65]) {
    gpuseg__sha256 s;
    unsigned char dig[32];
    gpuseg__sha256_init(&s);
    gpuseg__sha256_update(&s, d, n);
    gpuseg__sha256_final(&s, dig);
    gpuseg__sha256_hex(dig, hex);
}

/* One line of a fixture description (tools/fixtures/make_model_fixtures.py, describe()). */
typedef struct {
    char name[160], dtype[16], sha[65];
    int ndim;
    long long shape[8];
    double sum, sumsq, first;
} desc;

static int read_desc(FILE *f, desc *d) {
    char sum[64], sumsq[64], first[64];
    if (fscanf(f, "%159s %15s %d", d->name, d->dtype, &d->ndim) != 3)
        return 0;
    ck_assert(d->ndim >= 0 && d->ndim <= 8);
    for (int i = 0; i < d->ndim; i++)
        ck_assert_int_eq(fscanf(f, "%lld", &d->shape[i]), 1);
    ck_assert_int_eq(fscanf(f, "%64s %63s %63s %63s", d->sha, sum, sumsq, first), 4);
    d->sum = strtod(sum, NULL); /* Python float.hex() output; strtod reads hex floats */
    d->sumsq = strtod(sumsq, NULL);
    d->first = strtod(first, NULL);
    return 1;
}

/* Compares one loaded tensor with its description. Values: the sha256 of the float32 bytes
 * must match exactly (bit-exact load, including float16/bfloat16/float64 conversion, which is
 * exact or correctly rounded both here and in torch). The float64 sums are compared with a
 * relative tolerance of 1e-12 of sum|x|: numpy sums pairwise, we sum sequentially, and each of
 * the <= 1e5 additions adds at most 2^-53 relative error (1e5 * 1.1e-16 = 1.1e-11 would be
 * the worst case; random-sign data stays far below it, and any wrong value is far above). */
static void check_tensor(const desc *d, const char *name, gpuseg_tensor_dtype dt, int ndim,
                         const int64_t *shape, size_t numel, const float *data) {
    ck_assert_str_eq(name, d->name);
    ck_assert_str_eq(gpuseg_tensor_dtype_name(dt), d->dtype);
    ck_assert_int_eq(ndim, d->ndim);
    size_t ne = 1;
    for (int i = 0; i < ndim; i++) {
        ck_assert_int_eq(shape[i], d->shape[i]);
        ne *= (size_t)shape[i];
    }
    ck_assert_uint_eq(numel, ne);
    if (!strcmp(d->sha, "-")) {
        ck_assert_ptr_null(data);
        return;
    }
    ck_assert_ptr_nonnull(data);
    ck_assert_uint_eq((uintptr_t)data % 64, 0);
    char hex[65];
    sha_hex(data, numel * sizeof(float), hex);
    ck_assert_msg(!strcmp(hex, d->sha), "%s: values differ from the fixture", name);
    double s = 0, ss = 0, sa = 0;
    for (size_t i = 0; i < numel; i++) {
        s += data[i];
        ss += (double)data[i] * data[i];
        sa += data[i] < 0 ? -(double)data[i] : data[i];
    }
    if (sa < 1e300) { /* inf in the float16 fixture: the sha256 already covers it */
        ck_assert_msg(s - d->sum <= 1e-12 * sa && d->sum - s <= 1e-12 * sa, "%s sum %.17g vs %.17g",
                      name, s, d->sum);
        ck_assert_msg(ss - d->sumsq <= 1e-12 * ss && d->sumsq - ss <= 1e-12 * ss, "%s sumsq", name);
    }
    ck_assert_msg(data[0] == (float)d->first, "%s first value", name);
}

/* ---- the valid model ---- */

START_TEST(tiny_cpnet_values) {
    gpuseg_model *m = NULL;
    ck_assert_msg(gpuseg_model_load(fix("tiny_cpnet.pth"), &m) == GPUSEG_OK, "%s",
                  gpuseg_last_error());
    gpuseg_model_info in;
    gpuseg_model_get_info(m, &in);
    int nb[5] = {2, 3, 4, 5, 6};
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(in.nbase[i], nb[i]);
    ck_assert_int_eq(in.nout, 3);
    ck_assert_int_eq(in.style_channels, 6);
    ck_assert(in.diam_mean == 27.5f && in.has_diam_mean);
    ck_assert(in.diam_labels == 23.25f && in.has_diam_labels);
    ck_assert_uint_eq(in.n_tensors, 313);
    ck_assert_uint_eq(in.n_parameters, 7236); /* versions.json "n_parameters" */
    ck_assert_int_eq(in.weight_dtype, GPUSEG_TENSOR_F32);
    ck_assert_str_eq(gpuseg_model_path(m), fix("tiny_cpnet.pth"));
    FILE *f = fopen(fix("tiny_cpnet.txt"), "r");
    ck_assert_ptr_nonnull(f);
    desc d;
    size_t i = 0;
    while (read_desc(f, &d)) {
        gpuseg_tensor_info t, u;
        ck_assert_int_eq(gpuseg_model_tensor_at(m, i++, &t), GPUSEG_OK); /* file order */
        check_tensor(&d, t.name, t.file_dtype, t.ndim, t.shape, t.numel, t.data);
        ck_assert_int_eq(gpuseg_model_tensor(m, d.name, &u), GPUSEG_OK);
        ck_assert_ptr_eq(u.data, t.data);
        ck_assert_ptr_eq(u.name, t.name);
    }
    fclose(f);
    ck_assert_uint_eq(i, 313);
    gpuseg_tensor_info t;
    ck_assert_int_eq(gpuseg_model_tensor(m, "output.3.weight", &t), GPUSEG_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "output.3.weight"));
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "tiny_cpnet.pth"));
    ck_assert_int_eq(gpuseg_model_tensor_at(m, 313, &t), GPUSEG_INVALID_ARGUMENT);
    gpuseg_model_free(m);
    gpuseg_model_free(NULL);
}
END_TEST

START_TEST(no_diam_labels) {
    gpuseg_model *m = NULL;
    ck_assert_int_eq(gpuseg_model_load(fix("tiny_no_diam_labels.pth"), &m), GPUSEG_OK);
    gpuseg_model_info in;
    gpuseg_model_get_info(m, &in);
    /* Like Cellpose's strict=False load: diam_labels falls back to diam_mean. */
    ck_assert(in.diam_mean == 27.5f && in.diam_labels == 27.5f && !in.has_diam_labels);
    ck_assert_uint_eq(in.n_tensors, 312);
    gpuseg_tensor_info t;
    ck_assert_int_eq(gpuseg_model_tensor(m, "diam_labels", &t), GPUSEG_NOT_FOUND);
    gpuseg_model_free(m);
}
END_TEST

/* ---- generic state dicts: dtypes, views, byte order ---- */

static void check_dtypes(const char *file, int big_endian) {
    gpuseg__state_dict sd;
    ck_assert_msg(gpuseg__sd_load_file(fix(file), 0, &sd) == GPUSEG_OK, "%s", gpuseg_last_error());
    ck_assert_int_eq(sd.big_endian, big_endian);
    FILE *f = fopen(fix("dtypes.txt"), "r");
    ck_assert_ptr_nonnull(f);
    desc d;
    size_t i = 0;
    while (read_desc(f, &d)) {
        ck_assert_uint_lt(i, sd.n);
        const gpuseg__sd_tensor *t = &sd.t[i++];
        check_tensor(&d, t->name, t->dtype, t->ndim, t->shape, t->numel, t->data);
        ck_assert_int_eq(gpuseg__sd_find(&sd, d.name), (long)(i - 1));
    }
    fclose(f);
    ck_assert_uint_eq(i, sd.n);
    ck_assert_int_eq(gpuseg__sd_find(&sd, "nope"), -1);
    gpuseg__sd_free(&sd);
}

START_TEST(dtypes_and_views) {
    check_dtypes("dtypes.pth", 0);
}
END_TEST

START_TEST(big_endian) {
    check_dtypes("dtypes_be.pth", 1);
}
END_TEST

/* ---- bad files ---- */

static void expect_fail(const char *path, gpuseg_status want, const char *needle) {
    gpuseg_model *m = (gpuseg_model *)1;
    gpuseg_status st = gpuseg_model_load(path, &m);
    ck_assert_msg(st == want, "%s: got %s (%s), want %s", path, gpuseg_status_name(st),
                  gpuseg_last_error(), gpuseg_status_name(want));
    ck_assert_ptr_null(m);
    const char *e = gpuseg_last_error();
    ck_assert_msg(strstr(e, path) != NULL, "message does not name the file: %s", e);
    ck_assert_msg(strstr(e, needle) != NULL, "message lacks '%s': %s", needle, e);
    ck_assert_int_eq(tu_count_lines(e), 0);
}

START_TEST(bad_fixture_files) {
    expect_fail(fix("legacy.pth"), GPUSEG_UNSUPPORTED,
                "legacy PyTorch format (before 1.6): re-save with torch.save(..., "
                "_use_new_zipfile_serialization=True)");
    expect_fail(fix("cp4_like.pth"), GPUSEG_UNSUPPORTED,
                "Cellpose 4 (SAM) model: not supported, gpuseg runs Cellpose 3 (CPnet) models");
    expect_fail(fix("tiny_wrong_shape.pth"), GPUSEG_FORMAT,
                "tensor 'downsample.down.res_down_2.conv.conv_1.2.weight' has shape [5, 4, 3, 3], "
                "expected [5, 5, 3, 3]");
    expect_fail(fix("tiny_extra_key.pth"), GPUSEG_FORMAT,
                "unexpected tensor 'downsample.down.res_down_4.conv.conv_0.2.weight'");
    expect_fail(fix("tiny_int_weight.pth"), GPUSEG_FORMAT,
                "tensor 'output.2.weight' has dtype int64, expected a floating-point type");
    expect_fail(fix("checkpoint.pth"), GPUSEG_FORMAT, "entry 'model' is a dict, not a tensor");
    expect_fail(fix("dtypes_p4.pth"), GPUSEG_UNSUPPORTED, "pickle opcode 0x95 is not supported");
    expect_fail(fix("dtypes.pth"), GPUSEG_FORMAT,
                "missing tensor 'downsample.down.res_down_0.conv.conv_0.2.weight'");
    expect_fail(fix("versions.json"), GPUSEG_FORMAT, "not a PyTorch model file");
    expect_fail(fix("does_not_exist.pth"), GPUSEG_NOT_FOUND, "No such file");
    expect_fail(FIX, GPUSEG_IO, "not a regular file");
}
END_TEST

START_TEST(foreign_and_empty_files) {
    const char *dir = tu_tmpdir();
    char p[256];
    snprintf(p, sizeof p, "%s/cells.pth", dir);
    tu_write_file(p, "\x89PNG\r\n\x1a\n\0\0\0\rIHDR", 16);
    expect_fail(p, GPUSEG_FORMAT, "not a PyTorch model file (it looks like a PNG image)");
    tu_write_file(p, "", 0);
    expect_fail(p, GPUSEG_FORMAT, "empty file");
    tu_write_file(p, "PK\3\4", 4);
    expect_fail(p, GPUSEG_FORMAT, "too short for a ZIP archive");
    tu_rmtree(dir);
}
END_TEST

/* Minimal ZIP writer for hand-made archives: stored (or fake-compressed) entries, optional Zip64
 * extra fields in the central directory and Zip64 end records. */
typedef struct {
    unsigned char b[8192];
    size_t n;
} zbuf;

static void put(zbuf *z, const void *d, size_t k) {
    ck_assert_uint_le(z->n + k, sizeof z->b);
    memcpy(z->b + z->n, d, k);
    z->n += k;
}
static void p16(zbuf *z, unsigned v) {
    unsigned char b[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    put(z, b, 2);
}
static void p32(zbuf *z, uint32_t v) {
    p16(z, v & 0xFFFF);
    p16(z, v >> 16);
}
static void p64(zbuf *z, uint64_t v) {
    p32(z, (uint32_t)v);
    p32(z, (uint32_t)(v >> 32));
}

typedef struct {
    const char *name;
    const void *data;
    size_t n;
    unsigned method;
} zentry;

static void make_zip(zbuf *z, const zentry *e, int ne, int zip64) {
    uint32_t offs[8];
    z->n = 0;
    for (int i = 0; i < ne; i++) {
        offs[i] = (uint32_t)z->n;
        p32(z, 0x04034b50u);
        p16(z, 20);
        p16(z, 0);
        p16(z, e[i].method);
        p32(z, 0);
        p32(z, gpuseg__crc32(0, e[i].data, e[i].n));
        p32(z, (uint32_t)e[i].n);
        p32(z, (uint32_t)e[i].n);
        p16(z, (unsigned)strlen(e[i].name));
        p16(z, 0);
        put(z, e[i].name, strlen(e[i].name));
        put(z, e[i].data, e[i].n);
    }
    size_t cd = z->n;
    for (int i = 0; i < ne; i++) {
        p32(z, 0x02014b50u);
        p16(z, 45);
        p16(z, 45);
        p16(z, 0);
        p16(z, e[i].method);
        p32(z, 0);
        p32(z, gpuseg__crc32(0, e[i].data, e[i].n));
        p32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)e[i].n);
        p32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)e[i].n);
        p16(z, (unsigned)strlen(e[i].name));
        p16(z, zip64 ? 28 : 0);
        p16(z, 0);
        p16(z, 0);
        p16(z, 0);
        p32(z, 0);
        p32(z, zip64 ? 0xFFFFFFFFu : offs[i]);
        put(z, e[i].name, strlen(e[i].name));
        if (zip64) {
            p16(z, 1);
            p16(z, 24);
            p64(z, e[i].n);
            p64(z, e[i].n);
            p64(z, offs[i]);
        }
    }
    size_t cd_size = z->n - cd;
    if (zip64) {
        size_t rec = z->n;
        p32(z, 0x06064b50u);
        p64(z, 44);
        p16(z, 45);
        p16(z, 45);
        p32(z, 0);
        p32(z, 0);
        p64(z, (uint64_t)ne);
        p64(z, (uint64_t)ne);
        p64(z, cd_size);
        p64(z, cd);
        p32(z, 0x07064b50u);
        p32(z, 0);
        p64(z, rec);
        p32(z, 1);
    }
    p32(z, 0x06054b50u);
    p16(z, 0);
    p16(z, 0);
    p16(z, zip64 ? 0xFFFF : (unsigned)ne);
    p16(z, zip64 ? 0xFFFF : (unsigned)ne);
    p32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)cd_size);
    p32(z, zip64 ? 0xFFFFFFFFu : (uint32_t)cd);
    p16(z, 0);
}

/* A hand-written protocol-2 pickle of OrderedDict(w=tensor([1.5, -2]) from storage "0"). */
static const char PKL[] = "\x80\x02"
                          "ccollections\nOrderedDict\nq\x00)R"
                          "(X\x01\x00\x00\x00w"
                          "ctorch._utils\n_rebuild_tensor_v2\n"
                          "((X\x07\x00\x00\x00storagectorch\nFloatStorage\n"
                          "X\x01\x00\x00\x00\x30X\x03\x00\x00\x00"
                          "cpuK\x02tQ"
                          "K\x00K\x02\x85K\x01\x85\x89h\x00)RtRu.";
static const float W[2] = {1.5f, -2.0f};

static gpuseg_status load_zip(const zbuf *z, gpuseg__state_dict *sd) {
    return gpuseg__sd_load_mem(z->b, z->n, "hand.zip", 0, sd);
}

START_TEST(hand_made_zips) {
    zbuf z;
    gpuseg__state_dict sd;
    for (int zip64 = 0; zip64 < 2; zip64++) {
        zentry e[2] = {{"arch/data.pkl", PKL, sizeof PKL - 1, 0}, {"arch/data/0", W, 8, 0}};
        make_zip(&z, e, 2, zip64);
        ck_assert_msg(load_zip(&z, &sd) == GPUSEG_OK, "zip64 %d: %s", zip64, gpuseg_last_error());
        ck_assert_uint_eq(sd.n, 1);
        ck_assert_str_eq(sd.t[0].name, "w");
        ck_assert(sd.t[0].ndim == 1 && sd.t[0].shape[0] == 2);
        ck_assert(sd.t[0].data[0] == 1.5f && sd.t[0].data[1] == -2.0f);
        gpuseg__sd_free(&sd);
        /* every truncation of the hand-made archive fails cleanly */
        for (size_t k = 0; k < z.n; k++) {
            ck_assert_int_ne(gpuseg__sd_load_mem(z.b, k, "hand.zip", 0, &sd), GPUSEG_OK);
            ck_assert_str_ne(gpuseg_last_error(), "");
            gpuseg__sd_free(&sd);
        }
    }
    zentry nopkl[1] = {{"arch/data/0", W, 8, 0}};
    make_zip(&z, nopkl, 1, 0);
    ck_assert_int_eq(load_zip(&z, &sd), GPUSEG_FORMAT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "no 'arch/data.pkl'"));
    zentry deflated[2] = {{"arch/data.pkl", PKL, sizeof PKL - 1, 8}, {"arch/data/0", W, 8, 0}};
    make_zip(&z, deflated, 2, 0);
    ck_assert_int_eq(load_zip(&z, &sd), GPUSEG_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "is compressed (method 8)"));
    zentry nostore[1] = {{"arch/data.pkl", PKL, sizeof PKL - 1, 0}};
    make_zip(&z, nostore, 1, 0);
    ck_assert_int_eq(load_zip(&z, &sd), GPUSEG_FORMAT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "storage record 'arch/data/0' is missing"));
    zentry shortdata[2] = {{"arch/data.pkl", PKL, sizeof PKL - 1, 0}, {"arch/data/0", W, 4, 0}};
    make_zip(&z, shortdata, 2, 0);
    ck_assert_int_eq(load_zip(&z, &sd), GPUSEG_FORMAT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "has 4 bytes, expected 2 x 4"));
    zentry flat[2] = {{"data.pkl", PKL, sizeof PKL - 1, 0}, {"data/0", W, 8, 0}};
    make_zip(&z, flat, 2, 0);
    ck_assert_int_eq(load_zip(&z, &sd), GPUSEG_FORMAT);
    zentry bo[3] = {{"arch/byteorder", "middle", 6, 0},
                    {"arch/data.pkl", PKL, sizeof PKL - 1, 0},
                    {"arch/data/0", W, 8, 0}};
    make_zip(&z, bo, 3, 0);
    ck_assert_int_eq(load_zip(&z, &sd), GPUSEG_FORMAT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "unknown byteorder record 'middle'"));
    zentry dup[3] = {{"arch/data.pkl", PKL, sizeof PKL - 1, 0},
                     {"arch/data/0", W, 8, 0},
                     {"arch/data/0", W, 8, 0}};
    make_zip(&z, dup, 3, 0);
    ck_assert_int_eq(load_zip(&z, &sd), GPUSEG_FORMAT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "two entries named 'arch/data/0'"));
    /* a central directory pointing outside the file */
    zentry ok[2] = {{"arch/data.pkl", PKL, sizeof PKL - 1, 0}, {"arch/data/0", W, 8, 0}};
    make_zip(&z, ok, 2, 0);
    z.b[z.n - 6] = 0xFF; /* cd offset high byte */
    ck_assert_int_eq(load_zip(&z, &sd), GPUSEG_FORMAT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "lies outside the file"));
    gpuseg__sd_free(&sd);
}
END_TEST

/* ---- hand-made pickle streams ---- */

static gpuseg_status pk(const char *s, size_t n, const char *needle) {
    gpuseg__pickle p;
    gpuseg_status st = gpuseg__pickle_parse(&p, (const unsigned char *)s, n, "x.pth");
    gpuseg__pickle_free(&p);
    if (needle)
        ck_assert_msg(strstr(gpuseg_last_error(), needle) != NULL, "'%s' not in: %s", needle,
                      gpuseg_last_error());
    return st;
}
#define PK(lit, needle) pk(lit, sizeof lit - 1, needle)

START_TEST(pickle_streams) {
    gpuseg__pickle p;
    ck_assert_int_eq(gpuseg__pickle_parse(&p, (const unsigned char *)PKL, sizeof PKL - 1, "x"),
                     GPUSEG_OK);
    ck_assert_int_eq(p.objs[p.root].type, GPUSEG__PK_DICT);
    ck_assert_uint_eq(p.n_tensors, 1);
    gpuseg__pickle_free(&p);
    /* integers: BININT negative, LONG1 negative and 8-byte, BININT2 */
    const char ints[] = "\x80\x02(J\xfe\xff\xff\xff\x8a\x02\x00\x80\x8a\x08\xff\xff\xff\xff\xff"
                        "\xff\xff\x7fM\x34\x12t.";
    ck_assert_int_eq(gpuseg__pickle_parse(&p, (const unsigned char *)ints, sizeof ints - 1, "x"),
                     GPUSEG_OK);
    const gpuseg__pk_obj *t = &p.objs[p.root];
    ck_assert_int_eq(t->type, GPUSEG__PK_TUPLE);
    ck_assert_uint_eq(t->u.seq.n, 4);
    ck_assert_int_eq(p.objs[t->u.seq.items[0]].u.i, -2);
    ck_assert_int_eq(p.objs[t->u.seq.items[1]].u.i, -32768);
    ck_assert_int_eq(p.objs[t->u.seq.items[2]].u.i, INT64_MAX);
    ck_assert_int_eq(p.objs[t->u.seq.items[3]].u.i, 0x1234);
    gpuseg__pickle_free(&p);

    ck_assert_int_eq(PK("\x80\x02"
                        "cos\nsystem\n.",
                        "'os.system'"),
                     GPUSEG_UNSUPPORTED);
    ck_assert_int_eq(PK("\x80\x02"
                        "cbuiltins\neval\n.",
                        "'builtins.eval'"),
                     GPUSEG_UNSUPPORTED);
    ck_assert_int_eq(PK("\x80\x02"
                        "G\x00.",
                        "opcode 0x47 ('G')"),
                     GPUSEG_UNSUPPORTED);
    ck_assert_int_eq(PK("\x80\x02"
                        "\xff.",
                        "opcode 0xff is not"),
                     GPUSEG_UNSUPPORTED);
    ck_assert_int_eq(PK("\x80\x02)", "without STOP"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02.", "underflow"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02h\x05.", "never written"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02)r\xff\xff\xff\x7f.", "memo key out of range"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02X\xff\xff\xff\xff", "truncated"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02t.", "MARK that was never set"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02)(s.", "underflow"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02)))s.", "not a dict"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02))a.", "not a list"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02)Q.", "persistent id"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02))R.", "REDUCE"), GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x01.", "protocol"), GPUSEG_UNSUPPORTED);
    ck_assert_int_eq(PK("\x80\x02\x8a\x09\0\0\0\0\0\0\0\0\0.", "wider than 64"),
                     GPUSEG_UNSUPPORTED);
    ck_assert_int_eq(PK("\x80\x02"
                        "ctorch._utils\n_rebuild_tensor_v2\n)R.",
                        "wrong arguments"),
                     GPUSEG_FORMAT);
    ck_assert_int_eq(PK("\x80\x02}}b.", NULL), GPUSEG_OK); /* BUILD on a dict: attributes */
    ck_assert_int_eq(PK("\x80\x02)}b.", "BUILD"), GPUSEG_UNSUPPORTED);
    /* MARK nesting and stack depth are bounded */
    size_t n = 2 + 2000 + 1;
    char *deep = malloc(n);
    memcpy(deep, "\x80\x02", 2);
    memset(deep + 2, '(', 2000);
    deep[n - 1] = '.';
    ck_assert_int_eq(pk(deep, n, "MARKs too deeply"), GPUSEG_TOO_LARGE);
    free(deep);
    n = 2 + 2 * 300000 + 1;
    deep = malloc(n);
    memcpy(deep, "\x80\x02", 2);
    for (size_t i = 0; i < 300000; i++)
        memcpy(deep + 2 + 2 * i, "K\x01", 2);
    deep[n - 1] = '.';
    ck_assert_int_eq(pk(deep, n, "stack grows too deep"), GPUSEG_TOO_LARGE);
    free(deep);
}
END_TEST

/* ---- robustness loops ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rnd(void) { /* xorshift64*: deterministic, so failures reproduce */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1Dull;
}

/* Loads bytes as a model; must return OK (then the model is sane) or a clean failure. */
static int try_load(const unsigned char *b, size_t n, unsigned flags) {
    gpuseg_model *m = NULL;
    gpuseg_status st = gpuseg__model_load_mem(b, n, "mutant.pth", flags, &m);
    if (st == GPUSEG_OK) {
        gpuseg_model_info in;
        gpuseg_model_get_info(m, &in);
        ck_assert(in.nbase[0] >= 1 && in.nout >= 1 && in.n_tensors >= 1);
        for (size_t i = 0; i < in.n_tensors; i++) {
            gpuseg_tensor_info t;
            ck_assert_int_eq(gpuseg_model_tensor_at(m, i, &t), GPUSEG_OK);
            volatile float sink = 0; /* touch every value (ASan checks the bounds) */
            for (size_t k = 0; t.data && k < t.numel; k++)
                sink += t.data[k];
            (void)sink;
        }
        gpuseg_model_free(m);
        return 1;
    }
    ck_assert_ptr_null(m);
    ck_assert_msg(strstr(gpuseg_last_error(), "mutant.pth") != NULL, "%s", gpuseg_last_error());
    return 0;
}

START_TEST(truncations) {
    size_t n;
    unsigned char *b = slurp(fix("tiny_cpnet.pth"), &n);
    ck_assert(try_load(b, n, 0));
    size_t count = 0;
    for (size_t k = 0; k < n; k += 97, count++)
        ck_assert_msg(!try_load(b, k, 0), "truncation to %zu bytes loaded", k);
    /* the last few bytes too (inside the end records) */
    for (size_t k = n - 100; k < n; k++)
        ck_assert(!try_load(b, k, 0));
    ck_assert_uint_gt(count, 1000);
    free(b);
}
END_TEST

START_TEST(random_bytes) {
    unsigned char *b = malloc(70000);
    for (int it = 0; it < 300; it++) {
        size_t n = (size_t)(rnd() % 70000);
        for (size_t i = 0; i < n; i++)
            b[i] = (unsigned char)rnd();
        if (it % 3 == 1 && n >= 4)
            memcpy(b, "PK\3\4", 4);
        if (it % 3 == 2 && n >= 22) /* a plausible end record at the end */
            memcpy(b + n - 22, "PK\5\6\0\0\0\0", 8);
        ck_assert(!try_load(b, n, 0));
    }
    free(b);
}
END_TEST

/* Byte flips inside data.pkl with CRC checks off, so that the pickle reader and the state-dict
 * checks (not the CRC) see the damage; then flips anywhere with CRC checks on. */
START_TEST(mutations) {
    size_t n;
    unsigned char *orig = slurp(fix("tiny_cpnet.pth"), &n);
    unsigned char *b = malloc(n);
    gpuseg__zip z;
    ck_assert_int_eq(gpuseg__zip_open(&z, orig, n, "x"), GPUSEG_OK);
    long e = gpuseg__zip_find(&z, "tiny_cpnet/data.pkl", 19);
    ck_assert_int_ge(e, 0);
    const unsigned char *pkl;
    size_t pn;
    ck_assert_int_eq(gpuseg__zip_data(&z, (size_t)e, 1, &pkl, &pn), GPUSEG_OK);
    size_t off = (size_t)(pkl - orig);
    gpuseg__zip_close(&z);
    int loaded = 0, it;
    for (it = 0; it < 1500; it++) {
        memcpy(b, orig, n);
        int flips = 1 + (int)(rnd() % 4);
        for (int f = 0; f < flips; f++) {
            size_t at = off + (size_t)(rnd() % pn);
            b[at] = rnd() % 4 ? (unsigned char)(b[at] ^ (1u << (rnd() % 8))) : (unsigned char)rnd();
        }
        loaded += try_load(b, n, GPUSEG__SD_NO_CRC);
    }
    /* Flips inside names of _metadata, or in pad bytes, still load: some must, most must not. */
    ck_assert_int_gt(loaded, 0);
    ck_assert_int_lt(loaded, it);
    for (it = 0; it < 300; it++) {
        memcpy(b, orig, n);
        size_t at = (size_t)(rnd() % n);
        b[at] ^= (unsigned char)(1u << (rnd() % 8));
        try_load(b, n, 0);
    }
    free(b);
    free(orig);
}
END_TEST

START_TEST(crc_detects_corruption) {
    size_t n;
    unsigned char *b = slurp(fix("tiny_cpnet.pth"), &n);
    gpuseg__zip z;
    ck_assert_int_eq(gpuseg__zip_open(&z, b, n, "x"), GPUSEG_OK);
    long e = gpuseg__zip_find(&z, "tiny_cpnet/data/7", 17);
    ck_assert_int_ge(e, 0);
    const unsigned char *d;
    size_t dn;
    ck_assert_int_eq(gpuseg__zip_data(&z, (size_t)e, 1, &d, &dn), GPUSEG_OK);
    ck_assert_uint_eq(dn, 3 * 2 * 3 * 3 * 4); /* res_down_0.conv.conv_0.2.weight [3,2,3,3] */
    gpuseg__zip_close(&z);
    b[d - b + 5] ^= 1;
    gpuseg_model *m = NULL;
    ck_assert_int_eq(gpuseg__model_load_mem(b, n, "bad.pth", 0, &m), GPUSEG_CHECKSUM);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "'tiny_cpnet/data/7' fails its CRC-32"));
    /* without the CRC check it loads, with the changed value */
    ck_assert_int_eq(gpuseg__model_load_mem(b, n, "bad.pth", GPUSEG__SD_NO_CRC, &m), GPUSEG_OK);
    gpuseg_model_free(m);
    /* known CRC-32 check value */
    ck_assert_uint_eq(gpuseg__crc32(0, "123456789", 9), 0xCBF43926u);
    free(b);
}
END_TEST

START_TEST(cli_model_info) {
    tu_cli_result *r = tu_cli("model info '%s'", fix("tiny_cpnet.pth"));
    ck_assert_msg(r->status == 0, "%s", r->err);
    ck_assert_ptr_nonnull(strstr(r->out, "\"nbase\": [2, 3, 4, 5, 6]"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"nout\": 3"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"diam_mean\": 27.5"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"diam_labels\": 23.25"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"n_tensors\": 313"));
    ck_assert_ptr_nonnull(strstr(r->out, "\"parameters\": 7236"));
    free(r);
    r = tu_cli("model info --tensors '%s'", fix("tiny_cpnet.pth"));
    ck_assert_int_eq(r->status, 0);
    ck_assert_ptr_nonnull(
        strstr(r->out,
               "{\"name\": \"output.2.weight\", \"dtype\": \"float32\", \"shape\": [3, 3, 1, 1]}"));
    free(r);
    r = tu_cli("model info '%s'", fix("cp4_like.pth"));
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert_ptr_nonnull(strstr(r->err, "Cellpose 4 (SAM) model"));
    free(r);
    r = tu_cli("model info");
    ck_assert_int_eq(r->status, 2);
    free(r);
    r = tu_cli("model frobnicate x");
    ck_assert_int_eq(r->status, 2);
    free(r);
}
END_TEST

int main(void) {
    Suite *s = suite_create("model");
    TCase *tc = tcase_create("host");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, tiny_cpnet_values);
    tcase_add_test(tc, no_diam_labels);
    tcase_add_test(tc, dtypes_and_views);
    tcase_add_test(tc, big_endian);
    tcase_add_test(tc, bad_fixture_files);
    tcase_add_test(tc, foreign_and_empty_files);
    tcase_add_test(tc, hand_made_zips);
    tcase_add_test(tc, pickle_streams);
    tcase_add_test(tc, truncations);
    tcase_add_test(tc, random_bytes);
    tcase_add_test(tc, mutations);
    tcase_add_test(tc, crc_detects_corruption);
    tcase_add_test(tc, cli_model_info);
    suite_add_tcase(s, tc);
    return tu_run(s);
}
