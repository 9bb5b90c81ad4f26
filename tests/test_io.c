/* tests/test_io.c: image I/O (host only, no device): real PNG and TIFF files from ../shared/data
 * checked against their manifests and against SHA-256 sums of the pixels decoded by independent
 * readers (tifffile, OpenCV); hand-made TIFFs of every supported layout with exact pixel values;
 * .npy reading, the image shape rule and writing; round trips of every label writer; a
 * catalogue of bad inputs (each: right status, one-line message naming the file, no crash);
 * and the `gpuseg info` command. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image_write.h>
#include <tiffio.h>

#include "io/io_internal.h"
#include "testutil.h"

/* ---- helpers ---- */

static void pixel_sha(const gpuseg_image *img, char hex[65]) {
    size_t bytes;
    ck_assert(gpuseg__image_bytes(img, &bytes));
    gpuseg__sha256 s;
    unsigned char d[32];
    gpuseg__sha256_init(&s);
    gpuseg__sha256_update(&s, img->data, bytes);
    gpuseg__sha256_final(&s, d);
    gpuseg__sha256_hex(d, hex);
}

static gpuseg_image *must_read(const char *path) {
    gpuseg_image *img = NULL;
    gpuseg_status st = gpuseg_image_read(path, &img);
    ck_assert_msg(st == GPUSEG_OK, "%s: %s", path, gpuseg_last_error());
    ck_assert_ptr_nonnull(img);
    return img;
}

/* Asserts that a failed call left the expected status and a one-line message naming path. */
static void expect_error(gpuseg_status got, gpuseg_status want, const char *path) {
    const char *msg = gpuseg_last_error();
    ck_assert_msg(got == want, "%s: got %s, want %s (%s)", path, gpuseg_status_name(got),
                  gpuseg_status_name(want), msg);
    ck_assert_msg(strstr(msg, path) != NULL, "message does not name %s: %s", path, msg);
    ck_assert_msg(strchr(msg, '\n') == NULL, "message is not one line: %s", msg);
}

/* Both readers must fail the same way: info from the header, and the full read. */
static void expect_read_error(const char *path, gpuseg_status want) {
    gpuseg_image *img = (gpuseg_image *)0x1;
    expect_error(gpuseg_image_read(path, &img), want, path);
    ck_assert_ptr_null(img);
    gpuseg_image_info info;
    expect_error(gpuseg_image_info_read(path, &info), want, path);
}

static size_t count_entries(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

static void *slurp(const char *path, size_t *n) {
    void *data;
    ck_assert_int_eq(gpuseg__read_file(NULL, path, (size_t)1 << 30, &data, n), GPUSEG_OK);
    return data;
}

/* Deterministic pseudo-random bytes (LCG), so that failures reproduce. */
static uint32_t lcg(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

/* ---- real data ---- */

START_TEST(dsb2018_pngs) {
    FILE *f = fopen(tu_data("dsb2018/dev/manifest.tsv"), "r");
    ck_assert_ptr_nonnull(f);
    char line[1024];
    ck_assert_ptr_nonnull(fgets(line, sizeof line, f)); /* header */
    int rows = 0;
    while (fgets(line, sizeof line, f)) {
        char id[128], cat[64];
        unsigned w, h, nobj;
        ck_assert_int_eq(sscanf(line, "%127s %63s %u %u %u", id, cat, &w, &h, &nobj), 5);
        char path[2048];
        snprintf(path, sizeof path, "%s", tu_data("dsb2018/dev/images/%s.png", id));
        gpuseg_image *img = must_read(path);
        ck_assert_uint_eq(img->width, w);
        ck_assert_uint_eq(img->height, h);
        ck_assert_uint_eq(img->channels, 4);
        ck_assert_uint_eq(img->pages, 1);
        ck_assert_int_eq(img->dtype, GPUSEG_DTYPE_U8);
        const uint8_t *p = img->data;
        bool grey = strstr(cat, "gray") != NULL;
        for (size_t i = 0; i < (size_t)w * h; i++) {
            ck_assert_uint_eq(p[4 * i + 3], 255);
            if (grey)
                ck_assert(p[4 * i] == p[4 * i + 1] && p[4 * i] == p[4 * i + 2]);
        }
        gpuseg_image_free(img);

        snprintf(path, sizeof path, "%s", tu_data("dsb2018/dev/labels/%s.png", id));
        gpuseg_image *lab = must_read(path);
        ck_assert_uint_eq(lab->width, w);
        ck_assert_uint_eq(lab->height, h);
        ck_assert_uint_eq(lab->channels, 1);
        ck_assert_int_eq(lab->dtype, GPUSEG_DTYPE_U16);
        const uint16_t *l = lab->data;
        uint16_t mx = 0;
        static unsigned char seen[65536];
        memset(seen, 0, sizeof seen);
        unsigned distinct = 0;
        for (size_t i = 0; i < (size_t)w * h; i++) {
            mx = l[i] > mx ? l[i] : mx;
            if (l[i] && !seen[l[i]]) {
                seen[l[i]] = 1;
                distinct++;
            }
        }
        ck_assert_uint_eq(mx, nobj);
        ck_assert_uint_eq(distinct, nobj);
        gpuseg_image_free(lab);
        rows++;
    }
    fclose(f);
    ck_assert_int_eq(rows, 8);
}
END_TEST

/* Expected SHA-256 of the decoded pixel bytes (C order, little-endian samples), computed with
 * tifffile 2024 / OpenCV 4 from the Cellpose 3.1.1.3 virtual environment: an independent decoder,
 * so a match means every sample is exact. */
START_TEST(tiff_and_png_real) {
    static const struct {
        const char *rel;
        unsigned w, h, ch;
        gpuseg_dtype dtype;
        const char *sha;
    } cases[] = {
        {"usiigaci-phase/dev/images/set5.tif", 1024, 1022, 1, GPUSEG_DTYPE_U16,
         "a278161dce3576001458d0608bcedeef5a3cb33501858a13622be14206555995"},
        {"usiigaci-phase/dev/labels/set5.png", 1024, 1022, 1, GPUSEG_DTYPE_U8,
         "be4600d354edd5c3d464de8866d307259cfb7760c749e86e9e20b76eb2565463"},
        {"stardist-sample/package_data/img2d.tif", 512, 512, 1, GPUSEG_DTYPE_U16,
         "8952cab7611450bd761f81e14b95bdd197d5b17487ed98f6814fd35720e65963"},
        {"stardist-sample/package_data/mask2d.tif", 512, 512, 1, GPUSEG_DTYPE_U16,
         "13ef0db2a960a93cf97cc419d9e02aa90038feb4b143fe6e0623bcfcc10ad5f4"},
        {"stardist-sample/tests_data/img2d.tif", 256, 256, 1, GPUSEG_DTYPE_U8,
         "c0e13ac6e1fb81c8e96dccacc76199e1b5367cdb7755032224a63497a56bdfad"},
        {"stardist-sample/tests_data/mask2d.tif", 256, 256, 1, GPUSEG_DTYPE_U16,
         "715c339bbc218d5050b34605bc98f98f67c47cf3c0949f615d68019cc4649990"},
        {"dsb2018/dev/images/58cc121d37fb7f1b4a5252024d88415936781e540252b8f734faeedd29b682d5.png",
         256, 256, 4, GPUSEG_DTYPE_U8,
         "0d81b43a37ac74192da2d9e2546ed877972ca4ede45ab492beafe45f0c57a3dc"},
        {"dsb2018/dev/labels/1a11552569160f0b1ea10bedbd628ce6c14f29edec5092034c2309c556df833e.png",
         1024, 1024, 1, GPUSEG_DTYPE_U16,
         "2230912a8b878b49b9ebebdd21afdb4af5cacd2b312e32e6c626cd1af6e19777"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *path = tu_data("%s", cases[k].rel);
        gpuseg_image_info info;
        ck_assert_int_eq(gpuseg_image_info_read(path, &info), GPUSEG_OK);
        gpuseg_image *img = must_read(path);
        ck_assert_uint_eq(img->width, cases[k].w);
        ck_assert_uint_eq(img->height, cases[k].h);
        ck_assert_uint_eq(img->channels, cases[k].ch);
        ck_assert_int_eq(img->dtype, cases[k].dtype);
        ck_assert_uint_eq(info.width, cases[k].w);
        ck_assert_uint_eq(info.height, cases[k].h);
        ck_assert_uint_eq(info.channels, cases[k].ch);
        ck_assert_uint_eq(info.pages, 1);
        ck_assert_int_eq(info.dtype, cases[k].dtype);
        char hex[65];
        pixel_sha(img, hex);
        ck_assert_msg(strcmp(hex, cases[k].sha) == 0, "%s: pixels differ", cases[k].rel);
        gpuseg_image_free(img);
    }
    /* usiigaci label ids: 45 objects in set5 (manifest) and max id 45 */
    gpuseg_image *lab = must_read(tu_data("usiigaci-phase/dev/labels/set5.png"));
    uint8_t mx = 0;
    for (size_t i = 0; i < (size_t)lab->width * lab->height; i++)
        mx = ((uint8_t *)lab->data)[i] > mx ? ((uint8_t *)lab->data)[i] : mx;
    ck_assert_uint_eq(mx, 45);
    gpuseg_image_free(lab);
}
END_TEST

/* ---- hand-made TIFFs ---- */

typedef struct {
    const char *name;
    uint16_t bps, fmt, spp, planar, compression;
    uint32_t w, h, pages;
    uint32_t tile; /* 0: strips of 5 rows */
    bool big_endian;
    gpuseg_dtype dtype;
} tiff_case;

/* A value that differs for every (page, y, x, channel) and exercises the type's range. */
static double tval(const tiff_case *c, uint32_t p, uint32_t y, uint32_t x, uint32_t ch) {
    double v = (double)(((p * 31 + y) * 257 + x) * 5 + ch);
    switch (c->dtype) {
    case GPUSEG_DTYPE_U8:
        return (double)((uint32_t)v % 251);
    case GPUSEG_DTYPE_U16:
        return (double)((uint32_t)(v * 13) % 65521);
    case GPUSEG_DTYPE_U32:
        return (double)(4000000000u - (uint32_t)v * 7);
    case GPUSEG_DTYPE_I32:
        return -2000000000.0 + v * 3;
    case GPUSEG_DTYPE_F32:
        return (v - 1000) * 0.25; /* exact in float32 */
    }
    return 0;
}

static void store(gpuseg_dtype t, void *buf, size_t i, double v) {
    switch (t) {
    case GPUSEG_DTYPE_U8:
        ((uint8_t *)buf)[i] = (uint8_t)v;
        break;
    case GPUSEG_DTYPE_U16:
        ((uint16_t *)buf)[i] = (uint16_t)v;
        break;
    case GPUSEG_DTYPE_U32:
        ((uint32_t *)buf)[i] = (uint32_t)v;
        break;
    case GPUSEG_DTYPE_I32:
        ((int32_t *)buf)[i] = (int32_t)v;
        break;
    case GPUSEG_DTYPE_F32:
        ((float *)buf)[i] = (float)v;
        break;
    }
}

static double load_v(gpuseg_dtype t, const void *buf, size_t i) {
    switch (t) {
    case GPUSEG_DTYPE_U8:
        return ((const uint8_t *)buf)[i];
    case GPUSEG_DTYPE_U16:
        return ((const uint16_t *)buf)[i];
    case GPUSEG_DTYPE_U32:
        return ((const uint32_t *)buf)[i];
    case GPUSEG_DTYPE_I32:
        return ((const int32_t *)buf)[i];
    case GPUSEG_DTYPE_F32:
        return ((const float *)buf)[i];
    }
    return -1;
}

static void write_tiff(const char *path, const tiff_case *c) {
    TIFF *t = TIFFOpen(path, c->big_endian ? "wb" : "wl");
    ck_assert_ptr_nonnull(t);
    size_t bs = c->bps / 8;
    for (uint32_t p = 0; p < c->pages; p++) {
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, c->w);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, c->h);
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, c->spp);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, c->bps);
        TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, c->fmt);
        TIFFSetField(t, TIFFTAG_PLANARCONFIG, c->planar);
        TIFFSetField(t, TIFFTAG_COMPRESSION, c->compression);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC,
                     c->spp >= 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK);
        if (c->spp == 2 || c->spp == 4) {
            uint16_t extra = EXTRASAMPLE_UNASSALPHA;
            TIFFSetField(t, TIFFTAG_EXTRASAMPLES, 1, &extra);
        }
        bool sep = c->planar == PLANARCONFIG_SEPARATE;
        uint32_t planes = sep ? c->spp : 1, per = sep ? 1 : c->spp;
        if (c->tile) {
            TIFFSetField(t, TIFFTAG_TILEWIDTH, c->tile);
            TIFFSetField(t, TIFFTAG_TILELENGTH, c->tile);
            size_t tsz = (size_t)c->tile * c->tile * per * bs;
            void *buf = malloc(tsz);
            for (uint32_t pl = 0; pl < planes; pl++)
                for (uint32_t ty = 0; ty < c->h; ty += c->tile)
                    for (uint32_t tx = 0; tx < c->w; tx += c->tile) {
                        memset(buf, 0, tsz);
                        for (uint32_t y = 0; y < c->tile; y++)
                            for (uint32_t x = 0; x < c->tile; x++)
                                for (uint32_t k = 0; k < per; k++)
                                    if (ty + y < c->h && tx + x < c->w)
                                        store(c->dtype, buf, ((size_t)y * c->tile + x) * per + k,
                                              tval(c, p, ty + y, tx + x, sep ? pl : k));
                        ck_assert(TIFFWriteTile(t, buf, tx, ty, 0, (uint16_t)pl) >= 0);
                    }
            free(buf);
        } else {
            TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, 5);
            size_t rsz = (size_t)c->w * per * bs;
            void *buf = malloc(rsz);
            for (uint32_t pl = 0; pl < planes; pl++)
                for (uint32_t y = 0; y < c->h; y++) {
                    for (uint32_t x = 0; x < c->w; x++)
                        for (uint32_t k = 0; k < per; k++)
                            store(c->dtype, buf, (size_t)x * per + k,
                                  tval(c, p, y, x, sep ? pl : k));
                    ck_assert(TIFFWriteScanline(t, buf, y, (uint16_t)pl) == 1);
                }
            free(buf);
        }
        ck_assert(TIFFWriteDirectory(t));
    }
    TIFFClose(t);
}

START_TEST(tiff_handmade) {
    /* 37 x 21 with 16-pixel tiles leaves partial edge tiles; 5-row strips leave a short last
     * strip. Values are compared exactly (integers, and float32 values exact by construction). */
    static const tiff_case cases[] = {
        {"f32", 32, SAMPLEFORMAT_IEEEFP, 1, PLANARCONFIG_CONTIG, COMPRESSION_NONE, 37, 21, 1, 0,
         false, GPUSEG_DTYPE_F32},
        {"i32", 32, SAMPLEFORMAT_INT, 1, PLANARCONFIG_CONTIG, COMPRESSION_ADOBE_DEFLATE, 37, 21, 1,
         0, false, GPUSEG_DTYPE_I32},
        {"u32", 32, SAMPLEFORMAT_UINT, 1, PLANARCONFIG_CONTIG, COMPRESSION_LZW, 37, 21, 1, 0, false,
         GPUSEG_DTYPE_U32},
        {"u16x2pages", 16, SAMPLEFORMAT_UINT, 1, PLANARCONFIG_CONTIG, COMPRESSION_NONE, 37, 21, 2,
         0, false, GPUSEG_DTYPE_U16},
        {"u16be", 16, SAMPLEFORMAT_UINT, 1, PLANARCONFIG_CONTIG, COMPRESSION_NONE, 37, 21, 1, 0,
         true, GPUSEG_DTYPE_U16},
        {"u8rgb_sep", 8, SAMPLEFORMAT_UINT, 3, PLANARCONFIG_SEPARATE, COMPRESSION_NONE, 37, 21, 1,
         0, false, GPUSEG_DTYPE_U8},
        {"u16rgb_sep_tiled", 16, SAMPLEFORMAT_UINT, 3, PLANARCONFIG_SEPARATE,
         COMPRESSION_ADOBE_DEFLATE, 37, 21, 1, 16, false, GPUSEG_DTYPE_U16},
        {"u8rgba_tiled", 8, SAMPLEFORMAT_UINT, 4, PLANARCONFIG_CONTIG, COMPRESSION_NONE, 37, 21, 1,
         16, false, GPUSEG_DTYPE_U8},
        {"f32x3pages_tiled_be", 32, SAMPLEFORMAT_IEEEFP, 2, PLANARCONFIG_CONTIG, COMPRESSION_NONE,
         37, 21, 3, 16, true, GPUSEG_DTYPE_F32},
    };
    const char *dir = tu_tmpdir();
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const tiff_case *c = &cases[k];
        char path[256];
        snprintf(path, sizeof path, "%s/%s.tif", dir, c->name);
        write_tiff(path, c);
        gpuseg_image_info info;
        ck_assert_msg(gpuseg_image_info_read(path, &info) == GPUSEG_OK, "%s", gpuseg_last_error());
        ck_assert_str_eq(info.format, "tiff");
        ck_assert_uint_eq(info.pages, c->pages);
        ck_assert_uint_eq(info.channels, c->spp);
        ck_assert_int_eq(info.dtype, c->dtype);
        gpuseg_image *img = must_read(path);
        ck_assert_uint_eq(img->width, c->w);
        ck_assert_uint_eq(img->height, c->h);
        ck_assert_uint_eq(img->channels, c->spp);
        ck_assert_uint_eq(img->pages, c->pages);
        ck_assert_int_eq(img->dtype, c->dtype);
        size_t i = 0;
        for (uint32_t p = 0; p < c->pages; p++)
            for (uint32_t y = 0; y < c->h; y++)
                for (uint32_t x = 0; x < c->w; x++)
                    for (uint32_t ch = 0; ch < c->spp; ch++, i++) {
                        double want = tval(c, p, y, x, ch), got = load_v(c->dtype, img->data, i);
                        ck_assert_msg(got == want,
                                      "%s: page %u (%u,%u) ch %u: got %.17g want %.17g", c->name, p,
                                      x, y, ch, got, want);
                    }
        gpuseg_image_free(img);
    }

    /* Pages that differ in size are refused. */
    char path[256];
    snprintf(path, sizeof path, "%s/mixed.tif", dir);
    TIFF *t = TIFFOpen(path, "w");
    for (uint32_t p = 0; p < 2; p++) {
        uint32_t w = p ? 8 : 9;
        TIFFSetField(t, TIFFTAG_IMAGEWIDTH, w);
        TIFFSetField(t, TIFFTAG_IMAGELENGTH, 4);
        TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
        TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
        TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
        unsigned char row[16] = {0};
        for (uint32_t y = 0; y < 4; y++)
            TIFFWriteScanline(t, row, y, 0);
        TIFFWriteDirectory(t);
    }
    TIFFClose(t);
    gpuseg_image *img = NULL;
    expect_error(gpuseg_image_read(path, &img), GPUSEG_UNSUPPORTED, path);
    ck_assert(strstr(gpuseg_last_error(), "page 2") != NULL);

    /* 16-bit signed and 64-bit float are outside the supported types. */
    snprintf(path, sizeof path, "%s/i16.tif", dir);
    t = TIFFOpen(path, "w");
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, 4);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, 2);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 16);
    TIFFSetField(t, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_INT);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    int16_t row[4] = {-1, 2, -3, 4};
    TIFFWriteScanline(t, row, 0, 0);
    TIFFWriteScanline(t, row, 1, 0);
    TIFFClose(t);
    expect_read_error(path, GPUSEG_UNSUPPORTED);
    tu_rmtree(dir);
}
END_TEST

/* ---- .npy ---- */

START_TEST(npy_round_trip_and_shapes) {
    const char *dir = tu_tmpdir();
    char path[256];
    static const gpuseg_dtype types[] = {GPUSEG_DTYPE_U8, GPUSEG_DTYPE_U16, GPUSEG_DTYPE_U32,
                                         GPUSEG_DTYPE_I32, GPUSEG_DTYPE_F32};
    static const uint64_t shapes[][4] = {{7, 1, 1, 1}, {6, 5, 1, 1}, {3, 6, 5, 1}, {2, 3, 6, 5}};
    tiff_case vc = {0};
    for (size_t ti = 0; ti < 5; ti++)
        for (uint32_t nd = 1; nd <= 4; nd++) {
            const uint64_t *sh = shapes[nd - 1];
            size_t n = (size_t)(sh[0] * sh[1] * sh[2] * sh[3]);
            vc.dtype = types[ti];
            void *buf = malloc(n * 4);
            for (size_t i = 0; i < n; i++)
                store(types[ti], buf, i, tval(&vc, 0, 0, (uint32_t)i, 0));
            snprintf(path, sizeof path, "%s/a%zu_%u.npy", dir, ti, nd);
            ck_assert_int_eq(gpuseg_npy_write(path, types[ti], nd, sh, buf), GPUSEG_OK);
            /* numpy's layout: header padded with spaces to a multiple of 64, ending in '\n' */
            size_t fn;
            unsigned char *f = slurp(path, &fn);
            size_t hl = f[8] | (size_t)f[9] << 8;
            ck_assert_uint_eq((10 + hl) % 64, 0);
            ck_assert_uint_eq(f[10 + hl - 1], '\n');
            ck_assert_uint_eq(fn, 10 + hl + n * gpuseg_dtype_size(types[ti]));
            free(f);
            gpuseg_npy *a = NULL;
            ck_assert_int_eq(gpuseg_npy_read(path, &a), GPUSEG_OK);
            ck_assert_int_eq(a->dtype, types[ti]);
            ck_assert_uint_eq(a->ndim, nd);
            for (uint32_t d = 0; d < 4; d++)
                ck_assert_uint_eq(a->shape[d], sh[d]);
            ck_assert_mem_eq(a->data, buf, n * gpuseg_dtype_size(types[ti]));
            gpuseg_npy_free(a);
            free(buf);
        }
    /* The exact header numpy 1.x/2.x writes for np.save(f, np.zeros((6,5), np.uint16)). */
    snprintf(path, sizeof path, "%s/a1_2.npy", dir);
    size_t fn;
    char *f = slurp(path, &fn);
    ck_assert(memcmp(f + 10, "{'descr': '<u2', 'fortran_order': False, 'shape': (6, 5), }", 59) ==
              0);
    free(f);

    /* The image shape rule. */
    static const struct {
        uint32_t nd;
        uint64_t sh[4];
        uint32_t pages, h, w, c;
    } rules[] = {
        {2, {6, 5}, 1, 6, 5, 1},       {3, {3, 6, 5}, 3, 6, 5, 1}, {3, {6, 5, 3}, 1, 6, 5, 3},
        {3, {6, 5, 4}, 1, 6, 5, 4},    {3, {6, 5, 7}, 6, 5, 7, 1}, {3, {4, 4, 3}, 4, 4, 3, 1},
        {4, {2, 6, 5, 2}, 2, 6, 5, 2},
    };
    for (size_t k = 0; k < sizeof rules / sizeof rules[0]; k++) {
        size_t n = (size_t)rules[k].sh[0] * rules[k].sh[1] *
                   (rules[k].nd > 2 ? rules[k].sh[2] : 1) * (rules[k].nd > 3 ? rules[k].sh[3] : 1);
        float *buf = malloc(n * sizeof *buf);
        for (size_t i = 0; i < n; i++)
            buf[i] = (float)i * 0.5f;
        snprintf(path, sizeof path, "%s/rule%zu.npy", dir, k);
        ck_assert_int_eq(gpuseg_npy_write(path, GPUSEG_DTYPE_F32, rules[k].nd, rules[k].sh, buf),
                         GPUSEG_OK);
        gpuseg_image *img = must_read(path);
        ck_assert_uint_eq(img->pages, rules[k].pages);
        ck_assert_uint_eq(img->height, rules[k].h);
        ck_assert_uint_eq(img->width, rules[k].w);
        ck_assert_uint_eq(img->channels, rules[k].c);
        ck_assert_mem_eq(img->data, buf, n * sizeof *buf);
        gpuseg_image_info info;
        ck_assert_int_eq(gpuseg_image_info_read(path, &info), GPUSEG_OK);
        ck_assert_str_eq(info.format, "npy");
        ck_assert_uint_eq(info.pages, rules[k].pages);
        ck_assert_uint_eq(info.channels, rules[k].c);
        gpuseg_image_free(img);
        free(buf);
    }
    /* A 1-D array is not an image; a 4-D one with 5 channels neither. */
    snprintf(path, sizeof path, "%s/a0_1.npy", dir);
    expect_read_error(path, GPUSEG_UNSUPPORTED);
    uint64_t sh5[4] = {2, 6, 5, 5};
    float z[300] = {0};
    snprintf(path, sizeof path, "%s/ch5.npy", dir);
    ck_assert_int_eq(gpuseg_npy_write(path, GPUSEG_DTYPE_F32, 4, sh5, z), GPUSEG_OK);
    expect_read_error(path, GPUSEG_UNSUPPORTED);
    /* The writer refuses shapes over GPUSEG_NPY_MAX_ELEMENTS, wrap-around included. */
    uint64_t wrap[2] = {1ull << 32, 1ull << 32};
    snprintf(path, sizeof path, "%s/wrap.npy", dir);
    expect_error(gpuseg_npy_write(path, GPUSEG_DTYPE_U8, 2, wrap, z), GPUSEG_TOO_LARGE, path);
    ck_assert(!tu_exists(path));
    /* Writing into a folder that does not exist fails cleanly. */
    snprintf(path, sizeof path, "%s/no/such/dir/x.npy", dir);
    expect_error(gpuseg_npy_write(path, GPUSEG_DTYPE_F32, 4, sh5, z), GPUSEG_IO, path);
    tu_rmtree(dir);
}
END_TEST

/* Writes a .npy file with a given header dictionary and data size (for lying headers). */
static void write_npy_raw(const char *path, int major, const char *dict, size_t data_bytes) {
    size_t dl = strlen(dict), pre = major == 1 ? 10 : 12;
    size_t total = (pre + dl + 1 + 63) / 64 * 64;
    unsigned char *b = calloc(1, total + data_bytes);
    memcpy(b, "\x93NUMPY", 6);
    b[6] = (unsigned char)major;
    size_t hl = total - pre;
    b[8] = (unsigned char)hl;
    b[9] = (unsigned char)(hl >> 8);
    memcpy(b + pre, dict, dl);
    memset(b + pre + dl, ' ', hl - dl - 1);
    b[total - 1] = '\n';
    tu_write_file(path, b, total + data_bytes);
    free(b);
}

START_TEST(npy_bad) {
    const char *dir = tu_tmpdir();
    static const struct {
        const char *dict;
        size_t bytes;
        gpuseg_status want;
    } cases[] = {
        {"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24, GPUSEG_UNSUPPORTED},
        {"{'descr': '>u2', 'fortran_order': False, 'shape': (2, 3), }", 12, GPUSEG_UNSUPPORTED},
        {"{'descr': '|O', 'fortran_order': False, 'shape': (2, 3), }", 48, GPUSEG_UNSUPPORTED},
        {"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48, GPUSEG_UNSUPPORTED},
        {"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8,
         GPUSEG_UNSUPPORTED},
        /* data shorter and longer than the shape says */
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (20, 30), }", 2399, GPUSEG_FORMAT},
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (20, 30), }", 2401, GPUSEG_FORMAT},
        /* absurd shapes: refused before any allocation */
        {"{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776), }", 16,
         GPUSEG_TOO_LARGE},
        /* 2^32 x 2^32 = 2^64 wraps to 0 in 64-bit arithmetic: must still be refused */
        {"{'descr': '<u2', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", 0,
         GPUSEG_TOO_LARGE},
        {"{'descr': '<u2', 'fortran_order': False, 'shape': (99999999999999999999999, 2), }", 16,
         GPUSEG_TOO_LARGE},
        {"{'descr': '<u2', 'fortran_order': False, 'shape': (2, 2, 2, 2, 2), }", 64,
         GPUSEG_UNSUPPORTED},
        {"{'descr': '<u2', 'fortran_order': False, 'shape': (0, 2), }", 0, GPUSEG_FORMAT},
        {"{'descr': '<u2', 'fortran_order': False, 'shape': (), }", 2, GPUSEG_UNSUPPORTED},
        /* malformed dictionaries */
        {"{'descr': '<u2', 'shape': (2, 2), }", 8, GPUSEG_FORMAT},
        {"{'descr': '<u2', 'fortran_order': False, 'shape': (2, 2), 'extra': 1}", 8, GPUSEG_FORMAT},
        {"{'descr': '<u2', 'fortran_order': False, 'shape': (2, x), }", 8, GPUSEG_FORMAT},
        {"['descr', '<u2']", 8, GPUSEG_FORMAT},
        {"{'descr': '<u2', 'fortran_order': False, 'shape': (2, 2), } trailing", 8, GPUSEG_FORMAT},
    };
    char path[256];
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        snprintf(path, sizeof path, "%s/bad%zu.npy", dir, k);
        write_npy_raw(path, 1, cases[k].dict, cases[k].bytes);
        gpuseg_npy *a = (gpuseg_npy *)0x1;
        expect_error(gpuseg_npy_read(path, &a), cases[k].want, path);
        ck_assert_ptr_null(a);
        gpuseg_image *img = NULL;
        expect_error(gpuseg_image_read(path, &img), cases[k].want, path);
    }
    /* version 2.0 (4-byte header length) reads; version 9 does not */
    snprintf(path, sizeof path, "%s/v2.npy", dir);
    write_npy_raw(path, 2, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", 24);
    gpuseg_npy *a = NULL;
    ck_assert_int_eq(gpuseg_npy_read(path, &a), GPUSEG_OK);
    ck_assert_uint_eq(a->shape[1], 3);
    gpuseg_npy_free(a);
    snprintf(path, sizeof path, "%s/v9.npy", dir);
    write_npy_raw(path, 9, "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", 24);
    expect_error(gpuseg_npy_read(path, &a), GPUSEG_UNSUPPORTED, path);
    /* a header length that runs past the end of the file */
    snprintf(path, sizeof path, "%s/hlen.npy", dir);
    tu_write_file(path, "\x93NUMPY\x01\x00\xff\x7f{'descr'", 18);
    expect_error(gpuseg_npy_read(path, &a), GPUSEG_FORMAT, path);
    /* shorter than the magic */
    snprintf(path, sizeof path, "%s/short.npy", dir);
    tu_write_file(path, "\x93NUMPY", 6);
    expect_error(gpuseg_npy_read(path, &a), GPUSEG_FORMAT, path);
    tu_rmtree(dir);
}
END_TEST

/* ---- label writers ---- */

static gpuseg_image *make_labels(gpuseg_dtype t, uint32_t w, uint32_t h, uint32_t pages,
                                 uint32_t maxv) {
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(w, h, 1, pages, t, &img), GPUSEG_OK);
    uint32_t s = 12345;
    size_t n = (size_t)w * h * pages;
    for (size_t i = 0; i < n; i++) {
        /* blocky labels with some random ones up to maxv, so the predictor and filters see both
         * runs and noise */
        uint32_t v = (i % 7 == 0) ? lcg(&s) % (maxv + 1) : (uint32_t)((i / 13) % (maxv + 1));
        store(t, img->data, i, v);
    }
    return img;
}

START_TEST(labels_round_trip) {
    const char *dir = tu_tmpdir();
    static const char *exts[] = {"tif", "tiff", "png", "npy", "bin", "TIF"};
    static const struct {
        gpuseg_dtype t;
        uint32_t pages, maxv;
    } kinds[] = {{GPUSEG_DTYPE_U16, 1, 65535},
                 {GPUSEG_DTYPE_U32, 1, 4000000000u},
                 {GPUSEG_DTYPE_U32, 1, 65535},
                 {GPUSEG_DTYPE_U8, 1, 255},
                 {GPUSEG_DTYPE_U16, 3, 1000}};
    char path[256];
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        gpuseg_image *lab = make_labels(kinds[k].t, 67, 45, kinds[k].pages, kinds[k].maxv);
        for (size_t e = 0; e < sizeof exts / sizeof exts[0]; e++) {
            bool png = strcmp(exts[e], "png") == 0;
            snprintf(path, sizeof path, "%s/l%zu.%s", dir, k, exts[e]);
            gpuseg_status st = gpuseg_labels_write(path, lab, NULL);
            if (png && (kinds[k].maxv > 65535 || kinds[k].pages > 1)) {
                /* refused, and nothing (not even a temporary file) is left behind */
                size_t before = count_entries(dir);
                expect_error(st, GPUSEG_UNSUPPORTED, path);
                ck_assert(!tu_exists(path));
                ck_assert_uint_eq(count_entries(dir), before);
                continue;
            }
            ck_assert_msg(st == GPUSEG_OK, "%s: %s", path, gpuseg_last_error());
            gpuseg_image *back = NULL;
            if (strcmp(exts[e], "bin") == 0) {
                size_t n;
                void *raw = slurp(path, &n);
                back = calloc(1, sizeof *back);
                *back = *lab;
                back->data = raw;
                back->dtype = lab->dtype == GPUSEG_DTYPE_U8 ? GPUSEG_DTYPE_U16 : lab->dtype;
                ck_assert_uint_eq(n, (size_t)lab->width * lab->height * lab->pages *
                                         gpuseg_dtype_size(back->dtype));
            } else {
                back = must_read(path);
            }
            /* uint8 labels are widened to uint16; everything else comes back unchanged */
            gpuseg_dtype want_t = lab->dtype == GPUSEG_DTYPE_U8 ? GPUSEG_DTYPE_U16 : lab->dtype;
            if (png && lab->dtype == GPUSEG_DTYPE_U32)
                want_t = GPUSEG_DTYPE_U16;
            ck_assert_int_eq(back->dtype, want_t);
            ck_assert_uint_eq(back->width, lab->width);
            ck_assert_uint_eq(back->height, lab->height);
            ck_assert_uint_eq(back->pages, lab->pages);
            ck_assert_uint_eq(back->channels, 1);
            size_t n = (size_t)lab->width * lab->height * lab->pages;
            for (size_t i = 0; i < n; i++)
                ck_assert(load_v(back->dtype, back->data, i) == load_v(lab->dtype, lab->data, i));
            gpuseg_image_free(back);
        }
        gpuseg_image_free(lab);
    }
    /* only the finished files remain: 5 kinds x 6 names, minus 2 refused PNGs, plus 5 sidecars */
    ck_assert_uint_eq(count_entries(dir), 5 * 6 - 2 + 5);

    /* the .bin sidecar */
    gpuseg_image *lab = make_labels(GPUSEG_DTYPE_U32, 4, 3, 2, 9);
    snprintf(path, sizeof path, "%s/side.bin", dir);
    ck_assert_int_eq(gpuseg_labels_write(path, lab,
                                         " { \"model\": \"cyto3\", \"n\": [1, {\"a\": "
                                         "\"}\"}] } "),
                     GPUSEG_OK);
    size_t n;
    snprintf(path, sizeof path, "%s/side.json", dir);
    char *j = slurp(path, &n);
    const char *want = "{\"shape\":[2,3,4],\"dtype\":\"uint32\",\"byte_order\":\"little\","
                       "\"order\":\"C\",\"model\": \"cyto3\", \"n\": [1, {\"a\": \"}\"}]}\n";
    ck_assert_uint_eq(n, strlen(want));
    ck_assert(memcmp(j, want, n) == 0);
    free(j);
    snprintf(path, sizeof path, "%s/plain.bin", dir);
    gpuseg_image one = *lab;
    one.pages = 1;
    ck_assert_int_eq(gpuseg_labels_write(path, &one, NULL), GPUSEG_OK);
    snprintf(path, sizeof path, "%s/plain.json", dir);
    j = slurp(path, &n);
    want = "{\"shape\":[3,4],\"dtype\":\"uint32\",\"byte_order\":\"little\",\"order\":\"C\"}\n";
    ck_assert_uint_eq(n, strlen(want));
    ck_assert(memcmp(j, want, n) == 0);
    free(j);

    /* refusals: bad json_extra, unknown extension, float labels, several channels, no folder */
    size_t before = count_entries(dir);
    snprintf(path, sizeof path, "%s/x.bin", dir);
    expect_error(gpuseg_labels_write(path, lab, "[1,2]"), GPUSEG_INVALID_ARGUMENT, path);
    expect_error(gpuseg_labels_write(path, lab, "{\"a\": 1"), GPUSEG_INVALID_ARGUMENT, path);
    expect_error(gpuseg_labels_write(path, lab, "{\"a\": 1} {}"), GPUSEG_INVALID_ARGUMENT, path);
    snprintf(path, sizeof path, "%s/x.jpg", dir);
    expect_error(gpuseg_labels_write(path, lab, NULL), GPUSEG_UNSUPPORTED, path);
    gpuseg_image bad = *lab;
    bad.dtype = GPUSEG_DTYPE_F32;
    snprintf(path, sizeof path, "%s/x.tif", dir);
    expect_error(gpuseg_labels_write(path, &bad, NULL), GPUSEG_INVALID_ARGUMENT, path);
    bad = *lab;
    bad.channels = 2;
    bad.pages = 1;
    expect_error(gpuseg_labels_write(path, &bad, NULL), GPUSEG_INVALID_ARGUMENT, path);
    ck_assert_uint_eq(count_entries(dir), before);
    snprintf(path, sizeof path, "%s/missing/x.tif", dir);
    expect_error(gpuseg_labels_write(path, lab, NULL), GPUSEG_IO, path);
    snprintf(path, sizeof path, "%s/missing/x.bin", dir);
    expect_error(gpuseg_labels_write(path, lab, NULL), GPUSEG_IO, path);
    gpuseg_image_free(lab);
    tu_rmtree(dir);
}
END_TEST

/* ---- bad inputs ---- */

/* PNG's CRC-32, to make headers that a strict decoder would accept. */
static uint32_t crc32(const unsigned char *p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
}

static void put_be32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void put_le(unsigned char *p, uint32_t v, int n) {
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* Truncated real files (shared data). */
START_TEST(truncated_real_files) {
    const char *dir = tu_tmpdir();
    char path[256];
    /* truncated files: the first half of a real PNG and of a real TIFF (header intact, pixel
     * data missing) */
    static const char *reals[] = {
        "dsb2018/dev/labels/1a11552569160f0b1ea10bedbd628ce6c14f29edec5092034c2309c556df833e.png",
        "usiigaci-phase/dev/images/set5.tif"};
    for (int r = 0; r < 2; r++) {
        size_t n;
        unsigned char *d = slurp(tu_data("%s", reals[r]), &n);
        snprintf(path, sizeof path, "%s/trunc%d.%s", dir, r, r ? "tif" : "png");
        tu_write_file(path, d, n / 2);
        gpuseg_image *img = NULL;
        expect_error(gpuseg_image_read(path, &img), GPUSEG_FORMAT, path);
        free(d);
    }
    tu_rmtree(dir);
}
END_TEST

START_TEST(bad_inputs) {
    const char *dir = tu_tmpdir();
    char path[256];

    /* a directory, a missing path, a path through a file */
    expect_read_error(dir, GPUSEG_IO);
    snprintf(path, sizeof path, "%s/missing.png", dir);
    expect_read_error(path, GPUSEG_NOT_FOUND);

    snprintf(path, sizeof path, "%s/empty.tif", dir);
    tu_write_file(path, "", 0);
    expect_read_error(path, GPUSEG_FORMAT);

    /* random bytes (no known magic) */
    uint32_t s = 99;
    unsigned char rnd[4096];
    for (size_t i = 0; i < sizeof rnd; i++)
        rnd[i] = (unsigned char)lcg(&s);
    rnd[0] = 'x';
    snprintf(path, sizeof path, "%s/random.png", dir);
    tu_write_file(path, rnd, sizeof rnd);
    expect_read_error(path, GPUSEG_UNSUPPORTED);

    /* random bytes after each magic: never a crash, always a clean status */
    static const char *magics[] = {
        "\x89PNG\r\n\x1a\n", "\xff\xd8\xff", "BM", "GIF89a", "P5", "II*\0", "MM\0*", "\x93NUMPY"};
    static const size_t mlen[] = {8, 3, 2, 6, 2, 4, 4, 6};
    for (size_t m = 0; m < 8; m++)
        for (int trial = 0; trial < 20; trial++) {
            size_t len = 8 + lcg(&s) % 600;
            for (size_t i = 0; i < len; i++)
                rnd[i] = (unsigned char)lcg(&s);
            memcpy(rnd, magics[m], mlen[m]);
            snprintf(path, sizeof path, "%s/magic%zu_%d.bin", dir, m, trial);
            tu_write_file(path, rnd, len);
            gpuseg_image *img = NULL;
            gpuseg_status st = gpuseg_image_read(path, &img);
            if (st == GPUSEG_OK) {
                /* a format with no integrity check (BMP, PNM, JPEG) may decode noise */
                gpuseg_image_free(img);
                continue;
            }
            ck_assert(st == GPUSEG_FORMAT || st == GPUSEG_UNSUPPORTED || st == GPUSEG_TOO_LARGE);
            ck_assert_msg(strstr(gpuseg_last_error(), path), "%s", gpuseg_last_error());
            ck_assert(strchr(gpuseg_last_error(), '\n') == NULL);
        }

    /* a TIFF cut inside its header */
    snprintf(path, sizeof path, "%s/trunc_hdr.tif", dir);
    tu_write_file(path, "II*\0\x08\0\0\0\x05\0", 10);
    expect_read_error(path, GPUSEG_FORMAT);

    /* headers that claim 2^31 x 2^31 pixels */
    unsigned char png[33] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n',
                             0,    0,   0,   13,  'I',  'H',  'D',  'R'};
    put_be32(png + 16, 1u << 31);
    put_be32(png + 20, 1u << 31);
    png[24] = 8; /* depth */
    png[25] = 0; /* grey */
    put_be32(png + 29, crc32(png + 12, 17));
    snprintf(path, sizeof path, "%s/huge.png", dir);
    tu_write_file(path, png, sizeof png);
    /* stb refuses sides over 2^24 itself ("too large"): reported as GPUSEG_TOO_LARGE too */
    expect_read_error(path, GPUSEG_TOO_LARGE);
    /* within stb's limits but beyond ours: 2^20 + 1 wide */
    put_be32(png + 16, (1u << 20) + 1);
    put_be32(png + 20, 4);
    put_be32(png + 29, crc32(png + 12, 17));
    snprintf(path, sizeof path, "%s/wide.png", dir);
    tu_write_file(path, png, sizeof png);
    expect_read_error(path, GPUSEG_TOO_LARGE);

    /* a TIFF whose only IFD says 2^31 x 2^31, 8-bit grey */
    unsigned char tif[8 + 2 + 12 * 6 + 4] = {'I', 'I', 42, 0, 8, 0, 0, 0, 6, 0};
    static const uint16_t tags[6] = {256, 257, 258, 262, 273, 279};
    static const uint16_t typ[6] = {4, 4, 3, 3, 4, 4};
    const uint32_t vals[6] = {1u << 31, 1u << 31, 8, 1, 200, 1};
    for (int i = 0; i < 6; i++) {
        unsigned char *e = tif + 10 + 12 * i;
        put_le(e, tags[i], 2);
        put_le(e + 2, typ[i], 2);
        put_le(e + 4, 1, 4);
        put_le(e + 8, vals[i], typ[i] == 3 ? 2 : 4);
    }
    snprintf(path, sizeof path, "%s/huge.tif", dir);
    tu_write_file(path, tif, sizeof tif);
    expect_read_error(path, GPUSEG_TOO_LARGE);

    /* PNM: 100000 x 100000 fits the side limit but not the pixel limit */
    snprintf(path, sizeof path, "%s/huge.pgm", dir);
    const char *pgm = "P5\n100000 100000\n255\n";
    tu_write_file(path, pgm, strlen(pgm));
    expect_read_error(path, GPUSEG_TOO_LARGE);
    snprintf(path, sizeof path, "%s/ascii.pgm", dir);
    tu_write_file(path, "P2\n2 2\n255\n0 1 2 3\n", 19);
    expect_read_error(path, GPUSEG_UNSUPPORTED);
    tu_rmtree(dir);
}
END_TEST

/* ---- the stb formats: JPEG, BMP, PNM (8 and 16 bit), GIF, PNG grey+alpha ---- */

START_TEST(stb_formats) {
    const char *dir = tu_tmpdir();
    char path[256];
    enum { W = 13, H = 7 };
    unsigned char rgb[W * H * 3], ga[W * H * 2];
    for (int i = 0; i < W * H; i++) {
        rgb[3 * i] = (unsigned char)(i * 3);
        rgb[3 * i + 1] = (unsigned char)(255 - i);
        rgb[3 * i + 2] = (unsigned char)(i * 7);
        ga[2 * i] = (unsigned char)(i * 2);
        ga[2 * i + 1] = (unsigned char)(200 - i);
    }
    /* BMP (24-bit, stored bottom-up: the reader must return rows top-down) */
    snprintf(path, sizeof path, "%s/a.bmp", dir);
    ck_assert(stbi_write_bmp(path, W, H, 3, rgb));
    gpuseg_image *img = must_read(path);
    ck_assert_uint_eq(img->channels, 3);
    ck_assert_int_eq(img->dtype, GPUSEG_DTYPE_U8);
    ck_assert_mem_eq(img->data, rgb, sizeof rgb);
    gpuseg_image_free(img);
    /* PNG grey + alpha */
    snprintf(path, sizeof path, "%s/ga.png", dir);
    ck_assert(stbi_write_png(path, W, H, 2, ga, W * 2));
    img = must_read(path);
    ck_assert_uint_eq(img->channels, 2);
    ck_assert_mem_eq(img->data, ga, sizeof ga);
    gpuseg_image_free(img);
    /* JPEG is lossy: a flat grey image must come back within 2 levels (quantisation of a
     * constant block leaves only rounding) */
    unsigned char flat[W * H];
    memset(flat, 117, sizeof flat);
    snprintf(path, sizeof path, "%s/g.jpg", dir);
    ck_assert(stbi_write_jpg(path, W, H, 1, flat, 95));
    gpuseg_image_info info;
    ck_assert_int_eq(gpuseg_image_info_read(path, &info), GPUSEG_OK);
    ck_assert_str_eq(info.format, "jpeg");
    img = must_read(path);
    ck_assert_uint_eq(img->width, W);
    for (int i = 0; i < W * H; i++)
        ck_assert_int_le(abs((int)((uint8_t *)img->data)[i] - 117), 2);
    gpuseg_image_free(img);
    /* PGM 16-bit (big-endian samples) and PPM 8-bit */
    unsigned char pgm[64];
    int hl = snprintf((char *)pgm, sizeof pgm, "P5\n3 2\n65535\n");
    static const uint16_t v16[6] = {0, 1, 258, 40000, 65535, 7};
    for (int i = 0; i < 6; i++) {
        pgm[hl + 2 * i] = (unsigned char)(v16[i] >> 8);
        pgm[hl + 2 * i + 1] = (unsigned char)v16[i];
    }
    snprintf(path, sizeof path, "%s/a.pgm", dir);
    tu_write_file(path, pgm, (size_t)hl + 12);
    img = must_read(path);
    ck_assert_int_eq(img->dtype, GPUSEG_DTYPE_U16);
    ck_assert_uint_eq(img->width, 3);
    ck_assert_mem_eq(img->data, v16, sizeof v16);
    gpuseg_image_free(img);
    hl = snprintf((char *)pgm, sizeof pgm, "P6\n# comment\n2 1\n255\n");
    memcpy(pgm + hl, "\x01\x02\x03\xfd\xfe\xff", 6);
    snprintf(path, sizeof path, "%s/a.ppm", dir);
    tu_write_file(path, pgm, (size_t)hl + 6);
    img = must_read(path);
    ck_assert_uint_eq(img->channels, 3);
    ck_assert_mem_eq(img->data, "\x01\x02\x03\xfd\xfe\xff", 6);
    gpuseg_image_free(img);
    /* GIF: a 2 x 1 image, palette {red, blue}, pixels [1, 0]; stb returns RGBA */
    static const unsigned char gif[] = {
        'G',  'I', 'F',  '8',  '9', 'a', 2, 0, 1, 0, 0x80, 0, 0, /* screen, 2-colour table */
        255,  0,   0,    0,    0,   255,                         /* red, blue */
        0x2C, 0,   0,    0,    0,   2,   0, 1, 0, 0,             /* image descriptor */
        2,    2,   0x0C, 0x0A, 0,   0x3B};                       /* LZW min 2: clear,1,0,end */
    snprintf(path, sizeof path, "%s/a.gif", dir);
    tu_write_file(path, gif, sizeof gif);
    img = must_read(path);
    ck_assert_uint_eq(img->width, 2);
    ck_assert_uint_eq(img->height, 1);
    ck_assert_uint_eq(img->channels, 4);
    ck_assert_mem_eq(img->data, "\x00\x00\xff\xff\xff\x00\x00\xff", 8);
    gpuseg_image_free(img);
    tu_rmtree(dir);
}
END_TEST

/* ---- mutated files: no crash, no leak, a clean status (run under AddressSanitizer) ---- */

START_TEST(mutations) {
    const char *dir = tu_tmpdir();
    char seed[6][256];
    gpuseg_image *lab = make_labels(GPUSEG_DTYPE_U16, 40, 30, 1, 300);
    snprintf(seed[0], 256, "%s/s.png", dir);
    snprintf(seed[1], 256, "%s/s.tif", dir);
    snprintf(seed[2], 256, "%s/s.npy", dir);
    ck_assert_int_eq(gpuseg_labels_write(seed[0], lab, NULL), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_write(seed[1], lab, NULL), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_write(seed[2], lab, NULL), GPUSEG_OK);
    unsigned char px[40 * 30 * 3];
    for (size_t i = 0; i < sizeof px; i++)
        px[i] = (unsigned char)(i * 37);
    snprintf(seed[3], 256, "%s/s.jpg", dir);
    ck_assert(stbi_write_jpg(seed[3], 40, 30, 3, px, 80));
    snprintf(seed[4], 256, "%s/s.bmp", dir);
    ck_assert(stbi_write_bmp(seed[4], 40, 30, 3, px));
    tiff_case tc = {"t",
                    16,
                    SAMPLEFORMAT_UINT,
                    3,
                    PLANARCONFIG_SEPARATE,
                    COMPRESSION_ADOBE_DEFLATE,
                    37,
                    21,
                    2,
                    16,
                    false,
                    GPUSEG_DTYPE_U16};
    snprintf(seed[5], 256, "%s/t.tif", dir);
    write_tiff(seed[5], &tc);
    gpuseg_image_free(lab);
    uint32_t s = 2024;
    char path[256];
    snprintf(path, sizeof path, "%s/m", dir);
    int ok = 0, failed = 0;
    for (int f = 0; f < 6; f++) {
        size_t n;
        unsigned char *orig = slurp(seed[f], &n);
        unsigned char *buf = malloc(n);
        for (int trial = 0; trial < 150; trial++) {
            memcpy(buf, orig, n);
            size_t len = n;
            int edits = 1 + (int)(lcg(&s) % 8);
            for (int e = 0; e < edits; e++) {
                size_t at = lcg(&s) % n;
                switch (lcg(&s) % 3) {
                case 0: /* flip a byte, mostly in the header where structure lives */
                    at = at % (n < 256 ? n : 256);
                    buf[at] ^= (unsigned char)(1 + lcg(&s) % 255);
                    break;
                case 1: /* an extreme value */
                    buf[at] = (lcg(&s) & 1) ? 0xFF : 0x00;
                    break;
                default: /* truncate */
                    len = at > 8 ? at : len;
                    break;
                }
            }
            tu_write_file(path, buf, len);
            gpuseg_image *img = NULL;
            gpuseg_status st = gpuseg_image_read(path, &img);
            if (st == GPUSEG_OK) {
                ok++;
                gpuseg_image_free(img);
            } else {
                failed++;
                ck_assert_msg(strstr(gpuseg_last_error(), path), "%s", gpuseg_last_error());
                ck_assert(strchr(gpuseg_last_error(), '\n') == NULL);
            }
            gpuseg_image_info info;
            (void)gpuseg_image_info_read(path, &info);
        }
        free(buf);
        free(orig);
    }
    /* both outcomes must occur, or the mutations are not testing anything */
    ck_assert_int_gt(failed, 100);
    ck_assert_int_gt(ok, 10);
    tu_rmtree(dir);
}
END_TEST

/* ---- image object ---- */

START_TEST(image_create_limits) {
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(3, 2, 2, 2, GPUSEG_DTYPE_F32, &img), GPUSEG_OK);
    for (size_t i = 0; i < 24; i++)
        ck_assert(((float *)img->data)[i] == 0.0f);
    gpuseg_image_free(img);
    gpuseg_image_free(NULL);
    ck_assert_int_eq(gpuseg_image_create(0, 2, 1, 1, GPUSEG_DTYPE_U8, &img),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_image_create(1u << 16, 1u << 16, 1, 1, GPUSEG_DTYPE_U8, &img),
                     GPUSEG_TOO_LARGE);
    ck_assert_int_eq(gpuseg_image_create(4, 4, 5, 1, GPUSEG_DTYPE_U8, &img), GPUSEG_UNSUPPORTED);
    ck_assert_int_eq(gpuseg_image_create(4, 4, 1, 1, (gpuseg_dtype)9, &img),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_str_eq(gpuseg_dtype_name(GPUSEG_DTYPE_I32), "int32");
    ck_assert_uint_eq(gpuseg_dtype_size(GPUSEG_DTYPE_U16), 2);
    ck_assert_uint_eq(gpuseg_dtype_size((gpuseg_dtype)0), 0);
}
END_TEST

/* ---- CLI ---- */

START_TEST(cli_info) {
    const char *lab =
        "dsb2018/dev/labels/1a11552569160f0b1ea10bedbd628ce6c14f29edec5092034c2309c556df833e.png";
    char good1[2048], good2[2048];
    snprintf(good1, sizeof good1, "%s", tu_data("%s", lab));
    snprintf(good2, sizeof good2, "%s", tu_data("usiigaci-phase/dev/images/set5.tif"));
    tu_cli_result *r = tu_cli("info '%s' '%s'", good1, good2);
    ck_assert_int_eq(r->status, 0);
    ck_assert_int_eq(tu_count_lines(r->out), 2);
    ck_assert_str_eq(r->err, "");
    char want[4096];
    snprintf(want, sizeof want,
             "{\"path\":\"%s\",\"format\":\"png\",\"width\":1024,\"height\":1024,\"channels\":1,"
             "\"dtype\":\"uint16\",\"pages\":1}\n"
             "{\"path\":\"%s\",\"format\":\"tiff\",\"width\":1024,\"height\":1022,\"channels\":1,"
             "\"dtype\":\"uint16\",\"pages\":1}\n",
             good1, good2);
    ck_assert_str_eq(r->out, want);
    free(r);

    const char *dir = tu_tmpdir();
    char bad[256];
    snprintf(bad, sizeof bad, "%s/bad.tif", dir);
    tu_write_file(bad, "II*\0garbage", 11);
    r = tu_cli("info '%s' '%s' '%s'", good1, bad, good2);
    ck_assert_int_eq(r->status, 1);
    ck_assert_int_eq(tu_count_lines(r->out), 2);
    ck_assert_int_eq(tu_count_lines(r->err), 1);
    ck_assert(strncmp(r->err, "gpuseg: ", 8) == 0);
    ck_assert_ptr_nonnull(strstr(r->err, bad));
    free(r);
    r = tu_cli("info");
    ck_assert_int_eq(r->status, 2);
    free(r);
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("io");
    TCase *t = tcase_create("host");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, image_create_limits);
    tcase_add_test(t, tiff_handmade);
    tcase_add_test(t, npy_round_trip_and_shapes);
    tcase_add_test(t, npy_bad);
    tcase_add_test(t, labels_round_trip);
    tcase_add_test(t, bad_inputs);
    tcase_add_test(t, stb_formats);
    tcase_add_test(t, mutations);
    suite_add_tcase(s, t);
    TCase *sd = tu_tcase_needing("shared_data", TU_NEEDS_SHARED_DATA);
    tcase_set_timeout(sd, 120);
    tcase_add_test(sd, dsb2018_pngs);
    tcase_add_test(sd, tiff_and_png_real);
    tcase_add_test(sd, truncated_real_files);
    tcase_add_test(sd, cli_info);
    suite_add_tcase(s, sd);
    return tu_run(s);
}
