/* tests/test_region.c: streaming I/O for whole-slide images (gpuseg/region.h): the region reader
 * on tiled and striped, classic and BigTIFF files made here with libtiff (odd sizes, partial
 * edge tiles, separate planes, several pages, a pyramid level), against the whole-image reader;
 * each tile decoded once in raster order; corrupt and truncated tiled TIFFs; non-TIFF
 * fallback; the tiled BigTIFF label writer (uint16 and uint32, blocks in any order, edge tiles)
 * read back by both readers, its argument checks, and that nothing partial is ever published;
 * bounded peak memory (VmHWM) reading a 8192^2 tiled TIFF region by region; the written file
 * checked with tifffile when a Python with it is available. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <dirent.h>
#include <tiffio.h>

#include "gpuseg/gpuseg.h"
#include "testutil.h"

/* ---- making TIFFs ---- */

typedef struct {
    uint32_t w, h, spp, pages;
    gpuseg_dtype dtype;
    uint32_t tw, th; /* tiles when tw > 0 */
    uint32_t rps;    /* rows per strip otherwise */
    bool separate, bigtiff;
    uint16_t compression;
    bool pyramid; /* append a half-size reduced-resolution IFD */
} spec;

static double sample(uint32_t x, uint32_t y, uint32_t c, uint32_t p, gpuseg_dtype t) {
    uint64_t v = (uint64_t)x * 7u + (uint64_t)y * 13u + c * 101u + p * 31u;
    switch (t) {
    case GPUSEG_DTYPE_U8:
        return (double)(v & 0xff);
    case GPUSEG_DTYPE_U16:
        return (double)((v * 257u) & 0xffff);
    case GPUSEG_DTYPE_F32:
        return (double)x + 0.5 * y - c;
    default:
        return (double)(v * 65537u & 0xffffffffu);
    }
}

static void put(unsigned char *dst, gpuseg_dtype t, double v) {
    switch (t) {
    case GPUSEG_DTYPE_U8:
        *dst = (unsigned char)v;
        break;
    case GPUSEG_DTYPE_U16: {
        uint16_t s = (uint16_t)v;
        memcpy(dst, &s, 2);
        break;
    }
    case GPUSEG_DTYPE_F32: {
        float f = (float)v;
        memcpy(dst, &f, 4);
        break;
    }
    default: {
        uint32_t u = (uint32_t)v;
        memcpy(dst, &u, 4);
    }
    }
}

static void set_tags(TIFF *t, const spec *s, uint32_t w, uint32_t h) {
    uint16_t bits = (uint16_t)(gpuseg_dtype_size(s->dtype) * 8);
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, w);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, h);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, (uint16_t)s->spp);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, bits);
    TIFFSetField(t, TIFFTAG_SAMPLEFORMAT,
                 s->dtype == GPUSEG_DTYPE_F32 ? SAMPLEFORMAT_IEEEFP : SAMPLEFORMAT_UINT);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, s->spp == 3 ? PHOTOMETRIC_RGB : PHOTOMETRIC_MINISBLACK);
    if (s->spp == 2 || s->spp == 4) {
        uint16_t extra = EXTRASAMPLE_UNSPECIFIED;
        TIFFSetField(t, TIFFTAG_EXTRASAMPLES, 1, &extra);
    }
    TIFFSetField(t, TIFFTAG_PLANARCONFIG,
                 s->separate ? PLANARCONFIG_SEPARATE : PLANARCONFIG_CONTIG);
    TIFFSetField(t, TIFFTAG_COMPRESSION, s->compression ? s->compression : COMPRESSION_NONE);
    if (s->tw) {
        TIFFSetField(t, TIFFTAG_TILEWIDTH, s->tw);
        TIFFSetField(t, TIFFTAG_TILELENGTH, s->th);
    } else {
        TIFFSetField(t, TIFFTAG_ROWSPERSTRIP, s->rps);
    }
}

/* One directory of w x h (the pattern of page p, every `step`-th pixel for a reduced level). */
static void write_dir(TIFF *t, const spec *s, uint32_t w, uint32_t h, uint32_t p, uint32_t step) {
    set_tags(t, s, w, h);
    if (step > 1)
        TIFFSetField(t, TIFFTAG_SUBFILETYPE, FILETYPE_REDUCEDIMAGE);
    size_t bs = gpuseg_dtype_size(s->dtype);
    uint32_t planes = s->separate ? s->spp : 1, per = s->separate ? 1 : s->spp;
    uint32_t bw = s->tw ? s->tw : w, bh = s->tw ? s->th : s->rps;
    size_t bytes = (size_t)bw * bh * per * bs;
    unsigned char *buf = malloc(bytes);
    ck_assert_ptr_nonnull(buf);
    for (uint32_t pl = 0; pl < planes; pl++)
        for (uint32_t by = 0; by < h; by += bh)
            for (uint32_t bx = 0; bx < w; bx += bw) {
                memset(buf, 0, bytes);
                uint32_t rows = s->tw ? bh : (h - by < bh ? h - by : bh);
                for (uint32_t y = 0; y < rows && by + y < h; y++)
                    for (uint32_t x = 0; x < bw && bx + x < w; x++)
                        for (uint32_t c = 0; c < per; c++)
                            put(buf + (((size_t)y * bw + x) * per + c) * bs, s->dtype,
                                sample((bx + x) * step, (by + y) * step, s->separate ? pl : c, p,
                                       s->dtype));
                tmsize_t n = (tmsize_t)((size_t)bw * rows * per * bs);
                if (s->tw)
                    ck_assert_int_eq(TIFFWriteEncodedTile(
                                         t, TIFFComputeTile(t, bx, by, 0, (uint16_t)pl), buf, n),
                                     n);
                else
                    ck_assert_int_eq(
                        TIFFWriteEncodedStrip(t, TIFFComputeStrip(t, by, (uint16_t)pl), buf, n), n);
            }
    free(buf);
    ck_assert(TIFFWriteDirectory(t));
}

static void make_tiff(const char *path, const spec *s) {
    TIFF *t = TIFFOpen(path, s->bigtiff ? "w8" : "w");
    ck_assert_ptr_nonnull(t);
    for (uint32_t p = 0; p < s->pages; p++)
        write_dir(t, s, s->w, s->h, p, 1);
    if (s->pyramid)
        write_dir(t, s, (s->w + 1) / 2, (s->h + 1) / 2, 0, 2);
    TIFFClose(t);
}

/* Asserts that region (x, y, w, h) of page p holds the pattern. */
static void check_region(const gpuseg_image *img, const spec *s, uint32_t p, uint32_t x0,
                         uint32_t y0) {
    size_t bs = gpuseg_dtype_size(s->dtype);
    unsigned char want[4];
    for (uint32_t y = 0; y < img->height; y++)
        for (uint32_t x = 0; x < img->width; x++)
            for (uint32_t c = 0; c < s->spp; c++) {
                put(want, s->dtype, sample(x0 + x, y0 + y, c, p, s->dtype));
                const unsigned char *got = (const unsigned char *)img->data +
                                           (((size_t)y * img->width + x) * s->spp + c) * bs;
                if (memcmp(got, want, bs) != 0)
                    ck_abort_msg("page %u pixel (%u, %u) channel %u differs", p, x0 + x, y0 + y, c);
            }
}

static gpuseg_image *region(gpuseg_image_region_reader *r, uint32_t p, uint32_t x, uint32_t y,
                            uint32_t w, uint32_t h) {
    const gpuseg_image_region_info *in = gpuseg_image_region_info_of(r);
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(w, h, in->channels, 1, in->dtype, &img), GPUSEG_OK);
    gpuseg_status st = gpuseg_image_region_read(r, p, x, y, w, h, img);
    ck_assert_msg(st == GPUSEG_OK, "%s", gpuseg_last_error());
    return img;
}

static const spec SPECS[] = {
    /* w, h, spp, pages, dtype, tw, th, rps, separate, bigtiff, compression, pyramid */
    {100, 70, 1, 1, GPUSEG_DTYPE_U8, 16, 16, 0, false, false, COMPRESSION_ADOBE_DEFLATE, false},
    {77, 53, 3, 1, GPUSEG_DTYPE_U16, 32, 48, 0, true, false, COMPRESSION_NONE, false},
    {61, 45, 2, 2, GPUSEG_DTYPE_U32, 0, 0, 7, false, false, COMPRESSION_LZW, false},
    {40, 33, 1, 1, GPUSEG_DTYPE_F32, 0, 0, 33, false, false, COMPRESSION_ADOBE_DEFLATE, false},
    {130, 97, 4, 1, GPUSEG_DTYPE_U8, 0, 0, 5, true, true, COMPRESSION_ADOBE_DEFLATE, false},
    {200, 150, 1, 3, GPUSEG_DTYPE_U16, 64, 32, 0, false, true, COMPRESSION_ADOBE_DEFLATE, true},
};

START_TEST(region_reads_match) {
    const spec *s = &SPECS[_i];
    const char *dir = tu_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/in.tif", dir);
    make_tiff(path, s);
    gpuseg_image_region_reader *r = NULL;
    gpuseg_status st = gpuseg_image_region_open(path, NULL, &r);
    ck_assert_msg(st == GPUSEG_OK, "%s", gpuseg_last_error());
    const gpuseg_image_region_info *in = gpuseg_image_region_info_of(r);
    ck_assert_uint_eq(in->width, s->w);
    ck_assert_uint_eq(in->height, s->h);
    ck_assert_uint_eq(in->channels, s->spp);
    ck_assert_uint_eq(in->pages, s->pages);
    ck_assert_int_eq(in->dtype, s->dtype);
    ck_assert_str_eq(in->format, "tiff");
    ck_assert(in->streamed);
    ck_assert_int_eq(in->tiled, s->tw > 0);
    ck_assert_int_eq(in->bigtiff, s->bigtiff);
    ck_assert_int_eq(in->separate, s->separate);
    ck_assert_uint_eq(in->compression, s->compression);
    ck_assert_uint_eq(in->block_width, s->tw ? s->tw : s->w);
    ck_assert_uint_eq(in->block_height, s->tw ? s->th : s->rps);
    ck_assert_uint_eq(in->ifds, s->pages + (s->pyramid ? 1 : 0));
    ck_assert_int_eq(in->level0_only, s->pyramid);

    /* Block by block in raster order, no overlap: every block decoded exactly once. */
    uint32_t B = 24;
    for (uint32_t p = 0; p < s->pages; p++)
        for (uint32_t y = 0; y < s->h; y += B)
            for (uint32_t x = 0; x < s->w; x += B) {
                uint32_t w = s->w - x < B ? s->w - x : B, h = s->h - y < B ? s->h - y : B;
                gpuseg_image *img = region(r, p, x, y, w, h);
                check_region(img, s, p, x, y);
                gpuseg_image_free(img);
            }
    uint64_t decoded = 0;
    size_t cache = 0;
    gpuseg_image_region_stats(r, &decoded, &cache);
    uint32_t bw = in->block_width, bh = in->block_height;
    uint64_t blocks =
        (uint64_t)((s->w + bw - 1) / bw) * ((s->h + bh - 1) / bh) * (s->separate ? s->spp : 1);
    ck_assert_uint_eq(decoded, blocks * s->pages);
    ck_assert_uint_gt(cache, 0);

    /* Overlapping blocks (a halo of 5) and odd regions anywhere; the whole page at once. */
    for (uint32_t y = 0; y < s->h; y += 17)
        for (uint32_t x = 0; x < s->w; x += 17) {
            uint32_t x0 = x >= 5 ? x - 5 : 0, y0 = y >= 5 ? y - 5 : 0;
            uint32_t w = s->w - x0 < 27 ? s->w - x0 : 27, h = s->h - y0 < 27 ? s->h - y0 : 27;
            gpuseg_image *img = region(r, s->pages - 1, x0, y0, w, h);
            check_region(img, s, s->pages - 1, x0, y0);
            gpuseg_image_free(img);
        }
    gpuseg_image *all = region(r, 0, 0, 0, s->w, s->h);
    gpuseg_image *whole = NULL;
    ck_assert_int_eq(gpuseg_image_read(path, &whole), s->pyramid ? GPUSEG_UNSUPPORTED : GPUSEG_OK);
    if (whole) {
        size_t page_bytes = (size_t)s->w * s->h * s->spp * gpuseg_dtype_size(s->dtype);
        ck_assert_mem_eq(all->data, whole->data, page_bytes);
        gpuseg_image_free(whole);
    }
    gpuseg_image_free(all);

    /* Bad calls: outside the image, the wrong out image; the reader stays usable. */
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(4, 4, s->spp, 1, s->dtype, &img), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_image_region_read(r, 0, s->w - 3, 0, 4, 4, img),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "outside"));
    ck_assert_int_eq(gpuseg_image_region_read(r, s->pages, 0, 0, 4, 4, img),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_image_region_read(r, 0, 0, 0, 4, 3, img), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "in.tif"));
    ck_assert_int_eq(gpuseg_image_region_read(r, 0, 1, 2, 4, 4, img), GPUSEG_OK);
    check_region(img, s, 0, 1, 2);
    gpuseg_image_free(img);
    gpuseg_image_region_close(r);
    tu_rmtree(dir);
}
END_TEST

/* PNG and .npy: read whole at open, regions copied; limits refuse from the header. */
START_TEST(region_fallback_and_limits) {
    const char *dir = tu_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/a.npy", dir);
    uint64_t shape[2] = {30, 41};
    uint16_t *v = malloc(30 * 41 * 2);
    ck_assert_ptr_nonnull(v);
    for (int i = 0; i < 30 * 41; i++)
        v[i] = (uint16_t)(i * 3);
    ck_assert_int_eq(gpuseg_npy_write(path, GPUSEG_DTYPE_U16, 2, shape, v), GPUSEG_OK);
    gpuseg_image_region_reader *r = NULL;
    ck_assert_int_eq(gpuseg_image_region_open(path, NULL, &r), GPUSEG_OK);
    const gpuseg_image_region_info *in = gpuseg_image_region_info_of(r);
    ck_assert(!in->streamed);
    ck_assert_str_eq(in->format, "npy");
    ck_assert_uint_eq(in->width, 41);
    ck_assert_uint_eq(in->height, 30);
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(5, 7, 1, 1, GPUSEG_DTYPE_U16, &img), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_image_region_read(r, 0, 36, 23, 5, 7, img), GPUSEG_OK);
    for (int y = 0; y < 7; y++)
        for (int x = 0; x < 5; x++)
            ck_assert_uint_eq(((uint16_t *)img->data)[y * 5 + x], v[(23 + y) * 41 + 36 + x]);
    gpuseg_image_free(img);
    gpuseg_image_region_close(r);
    free(v);

    /* A big tiled TIFF over the pixel limit is refused at open, from the header alone. */
    spec s = {300, 200, 1, 1, GPUSEG_DTYPE_U8, 16, 16, 0, false, true, COMPRESSION_NONE, false};
    snprintf(path, sizeof path, "%s/big.tif", dir);
    make_tiff(path, &s);
    gpuseg_limits lim = {.max_pixels = 59999};
    ck_assert_int_eq(gpuseg_image_region_open(path, &lim, &r), GPUSEG_TOO_LARGE);
    ck_assert_ptr_null(r);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "big.tif: image is 300x200"));
    lim.max_pixels = 60000;
    ck_assert_int_eq(gpuseg_image_region_open(path, &lim, &r), GPUSEG_OK);
    gpuseg_image_region_close(r);

    /* Missing, empty and non-image files. */
    snprintf(path, sizeof path, "%s/none.tif", dir);
    ck_assert_int_eq(gpuseg_image_region_open(path, NULL, &r), GPUSEG_NOT_FOUND);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "none.tif"));
    snprintf(path, sizeof path, "%s/text.tif", dir);
    tu_write_file(path, "hello world", 11);
    ck_assert_int_eq(gpuseg_image_region_open(path, NULL, &r), GPUSEG_UNSUPPORTED);
    ck_assert_int_eq(tu_count_lines(gpuseg_last_error()), 0);
    gpuseg_image_region_close(NULL);
    tu_rmtree(dir);
}
END_TEST

/* Offset of the array of tag `tag` (n > 1 SHORT or LONG entries) in a classic little-endian
 * TIFF's first IFD; *size = 2 or 4 bytes per entry. */
static uint32_t ifd_array(const unsigned char *f, size_t n, uint16_t tag, unsigned *size) {
    uint32_t ifd;
    memcpy(&ifd, f + 4, 4);
    ck_assert_uint_lt(ifd + 2, n);
    uint16_t entries;
    memcpy(&entries, f + ifd, 2);
    for (uint16_t i = 0; i < entries; i++) {
        const unsigned char *e = f + ifd + 2 + 12u * i;
        uint16_t t;
        memcpy(&t, e, 2);
        if (t == tag) {
            uint16_t type;
            memcpy(&type, e + 2, 2);
            ck_assert(type == TIFF_SHORT || type == TIFF_LONG);
            *size = type == TIFF_SHORT ? 2 : 4;
            uint32_t off;
            memcpy(&off, e + 8, 4);
            return off;
        }
    }
    ck_abort_msg("tag %u not found", tag);
    return 0;
}

/* Truncated and corrupt tiled TIFFs: every failure is one line naming the file, never a crash;
 * the whole-image reader refuses the same files. */
START_TEST(region_bad_tiled_tiffs) {
    const char *dir = tu_tmpdir();
    char good[512], bad[512];
    snprintf(good, sizeof good, "%s/good.tif", dir);
    snprintf(bad, sizeof bad, "%s/bad.tif", dir);
    spec s = {90, 70, 1,     1,     GPUSEG_DTYPE_U16,          32,
              32, 0,  false, false, COMPRESSION_ADOBE_DEFLATE, false};
    make_tiff(good, &s);
    size_t n;
    unsigned char *f = (unsigned char *)tu_read_file(good, &n);
    /* 9 tiles; libtiff writes the tile data first and the directory at the end. */
    for (size_t cut = 0; cut < n; cut += n / 23 + 1) {
        tu_write_file(bad, f, cut);
        gpuseg_image_region_reader *r = NULL;
        gpuseg_status st = gpuseg_image_region_open(bad, NULL, &r);
        ck_assert_msg(st == GPUSEG_FORMAT, "cut at %zu: %s", cut, gpuseg_status_name(st));
        ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "bad.tif"));
        ck_assert_int_eq(tu_count_lines(gpuseg_last_error()), 0);
        gpuseg_image *img = NULL;
        ck_assert_int_eq(gpuseg_image_read(bad, &img), GPUSEG_FORMAT);
    }
    /* Directory intact, tile data lying: the last tile points past the end of the file (a
     * truncated copy), another tile's deflate stream is garbage. */
    unsigned osize, csize;
    uint32_t offs = ifd_array(f, n, TIFFTAG_TILEOFFSETS, &osize);
    uint32_t counts = ifd_array(f, n, TIFFTAG_TILEBYTECOUNTS, &csize);
    ck_assert_uint_eq(osize, 4);
    unsigned char *g = malloc(n);
    ck_assert_ptr_nonnull(g);
    memcpy(g, f, n);
    uint32_t last_off = (uint32_t)n - 8, first_off, first_count = 0;
    memcpy(g + offs + 8 * 4, &last_off, 4);
    memcpy(&first_off, g + offs, 4);
    memcpy(&first_count, g + counts, csize);
    memset(g + first_off + 2, 0xA5, first_count - 2);
    tu_write_file(bad, g, n);
    gpuseg_image_region_reader *r = NULL;
    ck_assert_int_eq(gpuseg_image_region_open(bad, NULL, &r), GPUSEG_OK);
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(32, 32, 1, 1, GPUSEG_DTYPE_U16, &img), GPUSEG_OK);
    int failed = 0;
    for (uint32_t y = 0; y < 64; y += 32)
        for (uint32_t x = 0; x < 64; x += 32) {
            gpuseg_status st = gpuseg_image_region_read(r, 0, x, y, 32, 32, img);
            if (st != GPUSEG_OK) {
                ck_assert_int_eq(st, GPUSEG_FORMAT);
                ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "bad.tif: TIFF page 1"));
                ck_assert_int_eq(tu_count_lines(gpuseg_last_error()), 0);
                failed++;
            } else {
                check_region(img, &s, 0, x, y);
            }
        }
    ck_assert_int_eq(failed, 1); /* tile 0 */
    gpuseg_image_free(img);
    ck_assert_int_eq(gpuseg_image_create(26, 6, 1, 1, GPUSEG_DTYPE_U16, &img), GPUSEG_OK);
    gpuseg_status st = gpuseg_image_region_read(r, 0, 64, 64, 26, 6, img);
    ck_assert_int_eq(st, GPUSEG_FORMAT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "tile 8"));
    gpuseg_image_free(img);
    gpuseg_image_region_close(r);
    ck_assert_int_eq(gpuseg_image_read(bad, &img), GPUSEG_FORMAT);
    free(g);
    free(f);
    tu_rmtree(dir);
}
END_TEST

/* ---- the tiled label writer ---- */

static uint32_t label_at(uint32_t x, uint32_t y, gpuseg_dtype t) {
    uint32_t v = (x / 5) * 1000u + (y / 3) * 7u + 1u;
    return t == GPUSEG_DTYPE_U16 ? (v & 0xffff) : v * 3u; /* > 65535 for uint32 */
}

/* Writes the block (x, y, w, h) of the pattern. */
static gpuseg_status put_block(gpuseg_labels_tiff *wr, gpuseg_dtype t, uint32_t x, uint32_t y,
                               uint32_t w, uint32_t h) {
    size_t bs = gpuseg_dtype_size(t);
    unsigned char *buf = malloc((size_t)w * h * bs);
    ck_assert_ptr_nonnull(buf);
    for (uint32_t yy = 0; yy < h; yy++)
        for (uint32_t xx = 0; xx < w; xx++) {
            uint32_t v = label_at(x + xx, y + yy, t);
            if (t == GPUSEG_DTYPE_U16) {
                uint16_t s = (uint16_t)v;
                memcpy(buf + ((size_t)yy * w + xx) * 2, &s, 2);
            } else {
                memcpy(buf + ((size_t)yy * w + xx) * 4, &v, 4);
            }
        }
    gpuseg_status st = gpuseg_labels_tiff_write_block(wr, x, y, w, h, buf);
    free(buf);
    return st;
}

static void check_labels(const gpuseg_image *img, gpuseg_dtype t, uint32_t x0, uint32_t y0) {
    ck_assert_int_eq(img->dtype, t);
    ck_assert_uint_eq(img->channels, 1);
    for (uint32_t y = 0; y < img->height; y++)
        for (uint32_t x = 0; x < img->width; x++) {
            size_t i = (size_t)y * img->width + x;
            uint32_t got = t == GPUSEG_DTYPE_U16 ? ((const uint16_t *)img->data)[i]
                                                 : ((const uint32_t *)img->data)[i];
            if (got != label_at(x0 + x, y0 + y, t))
                ck_abort_msg("label at (%u, %u) is %u, not %u", x0 + x, y0 + y, got,
                             label_at(x0 + x, y0 + y, t));
        }
}

/* Entries of dir other than "." and "..". */
static int entries(const char *dir) {
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static void write_labels(const char *path, uint32_t W, uint32_t H, gpuseg_dtype t, uint32_t tile,
                         uint32_t block, bool reverse) {
    gpuseg_labels_tiff *wr = NULL;
    gpuseg_status st = gpuseg_labels_tiff_open(path, W, H, t, tile, 0, &wr);
    ck_assert_msg(st == GPUSEG_OK, "%s", gpuseg_last_error());
    uint32_t nx = (W + block - 1) / block, ny = (H + block - 1) / block;
    for (uint32_t k = 0; k < nx * ny; k++) {
        uint32_t i = reverse ? nx * ny - 1 - k : k;
        uint32_t x = (i % nx) * block, y = (i / nx) * block;
        uint32_t w = W - x < block ? W - x : block, h = H - y < block ? H - y : block;
        st = put_block(wr, t, x, y, w, h);
        ck_assert_msg(st == GPUSEG_OK, "%s", gpuseg_last_error());
        ck_assert(!tu_exists(path)); /* nothing appears before the commit */
    }
    st = gpuseg_labels_tiff_commit(wr);
    ck_assert_msg(st == GPUSEG_OK, "%s", gpuseg_last_error());
}

START_TEST(labels_tiff_round_trip) {
    static const struct {
        uint32_t w, h, tile, block;
        gpuseg_dtype t;
        bool reverse;
    } cases[] = {
        {100, 70, 16, 32, GPUSEG_DTYPE_U16, false}, {257, 129, 64, 64, GPUSEG_DTYPE_U32, true},
        {16, 16, 16, 16, GPUSEG_DTYPE_U32, false},  {33, 700, 0, 512, GPUSEG_DTYPE_U16, true},
        {1, 1, 16, 16, GPUSEG_DTYPE_U32, false},
    };
    const char *dir = tu_tmpdir();
    char path[512];
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        snprintf(path, sizeof path, "%s/labels_%zu.tif", dir, c);
        write_labels(path, cases[c].w, cases[c].h, cases[c].t, cases[c].tile, cases[c].block,
                     cases[c].reverse);
        ck_assert_int_eq(entries(dir), (int)c + 1); /* no temporary left */
        gpuseg_image *img = NULL;
        ck_assert_int_eq(gpuseg_image_read(path, &img), GPUSEG_OK);
        ck_assert_uint_eq(img->width, cases[c].w);
        ck_assert_uint_eq(img->height, cases[c].h);
        ck_assert_uint_eq(img->pages, 1);
        check_labels(img, cases[c].t, 0, 0);
        gpuseg_image_free(img);
        gpuseg_image_region_reader *r = NULL;
        ck_assert_int_eq(gpuseg_image_region_open(path, NULL, &r), GPUSEG_OK);
        const gpuseg_image_region_info *in = gpuseg_image_region_info_of(r);
        uint32_t tile = cases[c].tile ? cases[c].tile : GPUSEG_LABELS_TIFF_TILE;
        ck_assert(in->tiled && in->bigtiff && in->streamed);
        ck_assert_uint_eq(in->block_width, tile);
        ck_assert_uint_eq(in->block_height, tile);
        ck_assert_uint_eq(in->compression, COMPRESSION_ADOBE_DEFLATE);
        ck_assert_int_eq(in->dtype, cases[c].t);
        uint32_t x = cases[c].w / 3, y = cases[c].h / 4;
        img = region(r, 0, x, y, cases[c].w - x, cases[c].h - y);
        check_labels(img, cases[c].t, x, y);
        gpuseg_image_free(img);
        gpuseg_image_region_close(r);
    }
    tu_rmtree(dir);
}
END_TEST

START_TEST(labels_tiff_refusals) {
    const char *dir = tu_tmpdir();
    char path[512], link[600];
    snprintf(path, sizeof path, "%s/out.tif", dir);
    gpuseg_labels_tiff *wr = NULL;
    ck_assert_int_eq(gpuseg_labels_tiff_open(path, 64, 64, GPUSEG_DTYPE_U8, 16, 0, &wr),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_labels_tiff_open(path, 64, 64, GPUSEG_DTYPE_U16, 20, 0, &wr),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(gpuseg_labels_tiff_open(path, 0, 64, GPUSEG_DTYPE_U16, 16, 0, &wr),
                     GPUSEG_FORMAT);
    ck_assert_int_eq(gpuseg_labels_tiff_open(path, 1u << 21, 4, GPUSEG_DTYPE_U16, 16, 0, &wr),
                     GPUSEG_TOO_LARGE);
    ck_assert_ptr_null(wr);
    ck_assert_int_eq(entries(dir), 0);

    /* An existing target keeps its bytes when the new file is aborted or left incomplete. */
    tu_write_file(path, "old", 3);
    ck_assert_int_eq(gpuseg_labels_tiff_open(path, 40, 40, GPUSEG_DTYPE_U16, 16, 0, &wr),
                     GPUSEG_OK);
    ck_assert_int_eq(entries(dir), 2); /* the target and the temporary */
    ck_assert_int_eq(put_block(wr, GPUSEG_DTYPE_U16, 16, 0, 16, 16), GPUSEG_OK);
    /* off the grid, past the edge, not reaching the edge, written twice: refused, no effect */
    ck_assert_int_eq(put_block(wr, GPUSEG_DTYPE_U16, 8, 0, 16, 16), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "out.tif: block 16 x 16 at (8, 0)"));
    ck_assert_int_eq(put_block(wr, GPUSEG_DTYPE_U16, 32, 0, 16, 16), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(put_block(wr, GPUSEG_DTYPE_U16, 0, 0, 10, 16), GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(put_block(wr, GPUSEG_DTYPE_U16, 0, 0, 40, 16), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(strstr(gpuseg_last_error(), "tile at (16, 0) was already written"));
    ck_assert_int_eq(gpuseg_labels_tiff_write_block(wr, 0, 0, 16, 16, NULL),
                     GPUSEG_INVALID_ARGUMENT);
    ck_assert_int_eq(put_block(wr, GPUSEG_DTYPE_U16, 0, 16, 40, 24), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_tiff_commit(wr), GPUSEG_INVALID_ARGUMENT);
    ck_assert_ptr_nonnull(
        strstr(gpuseg_last_error(), "2 of 9 tiles were never written (the first at (0, 0))"));
    tu_assert_file_equals(path, "old", 3);
    ck_assert_int_eq(entries(dir), 1);
    ck_assert_int_eq(gpuseg_labels_tiff_open(path, 40, 40, GPUSEG_DTYPE_U16, 16, 0, &wr),
                     GPUSEG_OK);
    ck_assert_int_eq(put_block(wr, GPUSEG_DTYPE_U16, 0, 0, 40, 40), GPUSEG_OK);
    gpuseg_labels_tiff_abort(wr);
    tu_assert_file_equals(path, "old", 3);
    ck_assert_int_eq(entries(dir), 1);
    gpuseg_labels_tiff_abort(NULL);

    /* A symlink target is refused unless allowed. */
    snprintf(link, sizeof link, "%s/link.tif", dir);
    ck_assert_int_eq(symlink("out.tif", link), 0);
    ck_assert_int_eq(gpuseg_labels_tiff_open(link, 40, 40, GPUSEG_DTYPE_U16, 16, 0, &wr),
                     GPUSEG_PERMISSION);
    ck_assert_int_eq(gpuseg_labels_tiff_open(link, 40, 40, GPUSEG_DTYPE_U16, 16,
                                             GPUSEG_WRITE_ALLOW_SPECIAL, &wr),
                     GPUSEG_OK);
    ck_assert_int_eq(put_block(wr, GPUSEG_DTYPE_U16, 0, 0, 40, 40), GPUSEG_OK);
    ck_assert_int_eq(gpuseg_labels_tiff_commit(wr), GPUSEG_OK);
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_read(path, &img), GPUSEG_OK);
    check_labels(img, GPUSEG_DTYPE_U16, 0, 0);
    gpuseg_image_free(img);

    /* A writer killed mid-file leaves no target, only its (lock-free, stale) temporary. */
    snprintf(path, sizeof path, "%s/killed.tif", dir);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        gpuseg_labels_tiff *k = NULL;
        if (gpuseg_labels_tiff_open(path, 64, 64, GPUSEG_DTYPE_U32, 16, 0, &k) == GPUSEG_OK &&
            put_block(k, GPUSEG_DTYPE_U32, 0, 0, 64, 32) == GPUSEG_OK)
            raise(SIGKILL);
        _exit(3);
    }
    int ws = 0;
    ck_assert_int_eq(waitpid(pid, &ws, 0), pid);
    ck_assert(WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL);
    ck_assert(!tu_exists(path));
    ck_assert_int_eq(entries(dir), 3); /* out.tif, link.tif, killed.tif.tmp-XXXXXX */
    tu_rmtree(dir);
}
END_TEST

/* ---- peak memory ---- */

static long vm_hwm_kib(void) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %ld kB", &v) == 1)
            break;
    fclose(f);
    return v;
}

/* An 8192^2 uint8 deflate tiled TIFF (64 MiB of pixels) read in 1024^2 blocks: each tile is
 * decoded once and the peak resident memory grows by far less than the image. */
START_TEST(region_peak_memory) {
    if (vm_hwm_kib() < 0)
        return; /* no /proc: nothing to measure */
    const char *dir = tu_tmpdir();
    char path[512];
    snprintf(path, sizeof path, "%s/big.tif", dir);
    const uint32_t S = 8192, T = 256, B = 1024;
    spec s = {S, S, 1, 1, GPUSEG_DTYPE_U8, T, T, 0, false, true, COMPRESSION_ADOBE_DEFLATE, false};
    make_tiff(path, &s);
    gpuseg_image *img = NULL;
    ck_assert_int_eq(gpuseg_image_create(B, B, 1, 1, GPUSEG_DTYPE_U8, &img), GPUSEG_OK);
    long before = vm_hwm_kib();
    gpuseg_image_region_reader *r = NULL;
    ck_assert_int_eq(gpuseg_image_region_open(path, NULL, &r), GPUSEG_OK);
    size_t peak_cache = 0;
    for (uint32_t y = 0; y < S; y += B)
        for (uint32_t x = 0; x < S; x += B) {
            ck_assert_int_eq(gpuseg_image_region_read(r, 0, x, y, B, B, img), GPUSEG_OK);
            const unsigned char *p = img->data;
            ck_assert_uint_eq(p[0], (unsigned)sample(x, y, 0, 0, s.dtype));
            ck_assert_uint_eq(p[(size_t)B * B - 1],
                              (unsigned)sample(x + B - 1, y + B - 1, 0, 0, s.dtype));
            size_t cache;
            gpuseg_image_region_stats(r, NULL, &cache);
            if (cache > peak_cache)
                peak_cache = cache;
        }
    uint64_t decoded;
    gpuseg_image_region_stats(r, &decoded, NULL);
    gpuseg_image_region_close(r);
    long after = vm_hwm_kib();
    printf("region_peak_memory: %ux%u uint8 tiled %u: VmHWM %ld -> %ld KiB (+%ld), cache peak "
           "%zu KiB, %llu tiles decoded\n",
           S, S, T, before, after, after - before, peak_cache / 1024, (unsigned long long)decoded);
    ck_assert_uint_eq(decoded, (uint64_t)(S / T) * (S / T));
    ck_assert_uint_le(peak_cache, (size_t)S * B); /* one band of block rows */
#if defined(__SANITIZE_ADDRESS__)
    /* AddressSanitizer keeps freed memory in quarantine and adds shadow pages: the resident
     * peak says nothing about the reader there; the cache bound above still holds. */
    (void)after;
#else
    ck_assert_int_lt(after - before, 24 * 1024); /* the image is 64 MiB */
#endif
    gpuseg_image_free(img);
    tu_rmtree(dir);
}
END_TEST

/* The written file read by tifffile: tiled, BigTIFF, deflate, the same labels. */
START_TEST(labels_tiff_tifffile) {
    const char *py = tu_python_with_numpy();
    ck_assert_ptr_nonnull(py);
    const char *dir = tu_tmpdir();
    char path[512], cmd[2048];
    snprintf(path, sizeof path, "%s/labels.tif", dir);
    write_labels(path, 300, 200, GPUSEG_DTYPE_U32, 64, 128, true);
    snprintf(cmd, sizeof cmd, "'%s' '%s/tools/check_tiled_labels.py' '%s' 300 200 64 uint32", py,
             GPUSEG_SOURCE_DIR, path);
    int rc = system(cmd);
    ck_assert(WIFEXITED(rc));
    if (WEXITSTATUS(rc) == 77)
        printf("labels_tiff_tifffile: %s cannot import tifffile; not checked\n", py);
    else
        ck_assert_int_eq(WEXITSTATUS(rc), 0);
    tu_rmtree(dir);
}
END_TEST

int main(void) {
    Suite *s = suite_create("region");
    TCase *t = tcase_create("host");
    tcase_set_timeout(t, 300);
    tcase_add_loop_test(t, region_reads_match, 0, (int)(sizeof SPECS / sizeof SPECS[0]));
    tcase_add_test(t, region_fallback_and_limits);
    tcase_add_test(t, region_bad_tiled_tiffs);
    tcase_add_test(t, labels_tiff_round_trip);
    tcase_add_test(t, labels_tiff_refusals);
    tcase_add_test(t, region_peak_memory);
    suite_add_tcase(s, t);
    TCase *np = tu_tcase_needing("numpy", TU_NEEDS_NUMPY);
    tcase_set_timeout(np, 120);
    tcase_add_test(np, labels_tiff_tifffile);
    suite_add_tcase(s, np);
    return tu_run(s);
}
