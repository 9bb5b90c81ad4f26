/* io/tiff_region.c: the region reader (gpuseg/region.h). TIFF: the header and directories are
 * read at open; a region read decodes only the tiles or strips it intersects
 * (TIFFReadEncodedTile / TIFFReadEncodedStrip) into a cache of the block rows the last region
 * spanned, so that reading block by block in raster order decodes each block about once and
 * memory stays about (region height + 2 block heights) x image width. Other formats are read
 * whole at open and regions are copied from memory. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpuseg/region.h"
#include "io/tiff_internal.h"

/* Pages accepted (as the whole-image reader). */
#define REGION_MAX_PAGES 100000u
/* A decoding block (tile or strip) may hold at most this many pixels, or the page's pixel count
 * when that is larger: a tile far larger than its image is a corrupt or hostile header. */
#define REGION_MAX_BLOCK_PIXELS (1ull << 24)

/* The decoded blocks of one block row (a row of tiles, or one strip) of one page: across x
 * planes slots, NULL until decoded. */
typedef struct {
    uint32_t page, row;
    unsigned char **blk;
} band_row;

struct gpuseg_image_region_reader {
    char *path;
    gpuseg_image_region_info info;
    /* TIFF */
    TIFF *tif;
    tiff_msgs *msgs; /* heap: libtiff keeps a pointer to it */
    uint32_t dir;    /* the directory libtiff is on */
    page_desc d;
    uint32_t across, down, planes;
    size_t unit;        /* bytes per pixel of a decoded block (one sample when separate) */
    size_t block_bytes; /* bytes of a full decoded block */
    band_row *rows;
    size_t nrows, caprows;
    uint64_t decoded;
    size_t cache_bytes;
    /* other formats */
    gpuseg_image *whole;
};

static void row_free(gpuseg_image_region_reader *r, band_row *b) {
    size_t n = (size_t)r->across * r->planes;
    for (size_t i = 0; i < n; i++)
        if (b->blk[i]) {
            free(b->blk[i]);
            r->cache_bytes -= r->block_bytes;
        }
    free(b->blk);
    b->blk = NULL;
}

/* Drops the cached rows that are not rows r0..r1 of page. */
static void cache_keep(gpuseg_image_region_reader *r, uint32_t page, uint32_t r0, uint32_t r1) {
    size_t k = 0;
    for (size_t i = 0; i < r->nrows; i++) {
        band_row *b = &r->rows[i];
        if (b->page == page && b->row >= r0 && b->row <= r1)
            r->rows[k++] = *b;
        else
            row_free(r, b);
    }
    r->nrows = k;
}

static band_row *cache_row(gpuseg_image_region_reader *r, uint32_t page, uint32_t row) {
    for (size_t i = 0; i < r->nrows; i++)
        if (r->rows[i].page == page && r->rows[i].row == row)
            return &r->rows[i];
    if (r->nrows == r->caprows) {
        size_t cap = r->caprows ? r->caprows * 2 : 8;
        band_row *nr = realloc(r->rows, cap * sizeof *nr);
        if (!nr)
            return NULL;
        r->rows = nr;
        r->caprows = cap;
    }
    band_row *b = &r->rows[r->nrows];
    b->blk = calloc((size_t)r->across * r->planes, sizeof *b->blk);
    if (!b->blk)
        return NULL;
    b->page = page;
    b->row = row;
    r->nrows++;
    return b;
}

void gpuseg_image_region_close(gpuseg_image_region_reader *r) {
    if (!r)
        return;
    cache_keep(r, UINT32_MAX, 1, 0); /* drops every row */
    free(r->rows);
    if (r->tif)
        TIFFClose(r->tif);
    free(r->msgs);
    gpuseg_image_free(r->whole);
    free(r->path);
    free(r);
}

/* The tile (or strip: full width, rows per strip) size of the current directory; 0 x 0 for a
 * tiled directory without its tile tags. */
static void block_dims(gpuseg_image_region_reader *r, uint32_t *bw, uint32_t *bh) {
    *bw = r->d.w;
    *bh = r->d.h;
    if (r->info.tiled) {
        *bw = *bh = 0;
        TIFFGetField(r->tif, TIFFTAG_TILEWIDTH, bw);
        TIFFGetField(r->tif, TIFFTAG_TILELENGTH, bh);
    } else {
        TIFFGetFieldDefaulted(r->tif, TIFFTAG_ROWSPERSTRIP, bh);
        if (*bh == 0 || *bh > r->d.h)
            *bh = r->d.h;
    }
}

/* Moves libtiff to directory `page` and checks it still matches page 1. */
static gpuseg_status set_dir(gpuseg_image_region_reader *r, uint32_t page) {
    if (r->dir == page)
        return GPUSEG_OK;
    r->msgs->err[0] = '\0';
    if (!TIFFSetDirectory(r->tif, (tdir_t)page)) {
        r->dir = UINT32_MAX;
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: cannot open TIFF page %u: %s", r->path,
                            page + 1, gpuseg__tiff_why(r->msgs));
    }
    r->dir = page;
    page_desc d;
    gpuseg_status st = gpuseg__tiff_describe(r->path, r->tif, page, &d);
    if (st != GPUSEG_OK)
        return st;
    if (d.w != r->d.w || d.h != r->d.h || d.spp != r->d.spp || d.dtype != r->d.dtype ||
        d.planar != r->d.planar || (bool)TIFFIsTiled(r->tif) != r->info.tiled)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: TIFF page %u changed since it was opened",
                            r->path, page + 1);
    uint32_t bw, bh;
    block_dims(r, &bw, &bh);
    if (bw != r->info.block_width || bh != r->info.block_height)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: TIFF page %u has %s of %u x %u but page 1 has %u x %u (the "
                            "region reader needs one block size for all pages)",
                            r->path, page + 1, r->info.tiled ? "tiles" : "strips", bw, bh,
                            r->info.block_width, r->info.block_height);
    return GPUSEG_OK;
}

/* The block size of the current directory, checked. */
static gpuseg_status block_size(gpuseg_image_region_reader *r) {
    uint32_t bw, bh;
    const char *kind = r->info.tiled ? "tile" : "strip";
    block_dims(r, &bw, &bh);
    uint64_t page_px = (uint64_t)r->d.w * r->d.h;
    uint64_t max_px = page_px > REGION_MAX_BLOCK_PIXELS ? page_px : REGION_MAX_BLOCK_PIXELS;
    if (bw == 0 || bh == 0 || bw > GPUSEG_MAX_IMAGE_SIDE || bh > GPUSEG_MAX_IMAGE_SIDE ||
        (uint64_t)bw * bh > max_px)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: TIFF page 1 has a bad %s size %u x %u",
                            r->path, kind, bw, bh);
    r->info.block_width = bw;
    r->info.block_height = bh;
    r->planes = r->d.planar == PLANARCONFIG_SEPARATE ? r->d.spp : 1;
    size_t bs = gpuseg_dtype_size(r->d.dtype);
    r->unit = r->d.planar == PLANARCONFIG_SEPARATE ? bs : bs * r->d.spp;
    r->block_bytes = (size_t)bw * bh * r->unit; /* < 2^24 px or the page: no overflow */
    r->across = (r->d.w + bw - 1) / bw;
    r->down = (r->d.h + bh - 1) / bh;
    uint32_t per_plane = r->across * r->down;
    uint32_t want = per_plane * r->planes;
    uint32_t have = r->info.tiled ? TIFFNumberOfTiles(r->tif) : TIFFNumberOfStrips(r->tif);
    if (have < want)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: TIFF page 1 lists %u %ss, %u needed", r->path,
                            have, kind, want);
    return GPUSEG_OK;
}

/* Walks the directories after page 1: pages are the leading ones of page 1's size, type and
 * layout that are not marked reduced-resolution; anything else ends level 0. */
static gpuseg_status count_pages(gpuseg_image_region_reader *r) {
    tdir_t n = TIFFNumberOfDirectories(r->tif);
    if (n < 1)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: TIFF has no pages", r->path);
    r->info.ifds = (uint32_t)n;
    uint16_t nsub = 0;
    void *subs = NULL;
    if (TIFFGetField(r->tif, TIFFTAG_SUBIFD, &nsub, &subs) && nsub > 0)
        r->info.level0_only = true;
    uint32_t pages = 1;
    while (pages < (uint32_t)n && pages < REGION_MAX_PAGES) {
        if (!TIFFSetDirectory(r->tif, (tdir_t)pages))
            break;
        r->dir = pages;
        uint32_t sft = 0;
        page_desc d;
        if (TIFFGetField(r->tif, TIFFTAG_SUBFILETYPE, &sft) && (sft & FILETYPE_REDUCEDIMAGE))
            break;
        if (gpuseg__tiff_describe(r->path, r->tif, pages, &d) != GPUSEG_OK)
            break;
        if (d.w != r->d.w || d.h != r->d.h || d.spp != r->d.spp || d.dtype != r->d.dtype ||
            d.planar != r->d.planar || (bool)TIFFIsTiled(r->tif) != r->info.tiled)
            break;
        pages++;
    }
    /* A directory that is not a page of level 0 is not an error: keep no message of it. */
    gpuseg__clear_error(NULL);
    r->msgs->err[0] = '\0';
    if (pages < (uint32_t)n)
        r->info.level0_only = true;
    r->info.pages = pages;
    if (r->dir != 0) {
        if (!TIFFSetDirectory(r->tif, 0))
            return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: cannot return to TIFF page 1: %s",
                                r->path, gpuseg__tiff_why(r->msgs));
        r->dir = 0;
        page_desc d;
        gpuseg_status st = gpuseg__tiff_describe(r->path, r->tif, 0, &d);
        if (st != GPUSEG_OK)
            return st;
    }
    return GPUSEG_OK;
}

static gpuseg_status open_tiff_reader(gpuseg_image_region_reader *r, uint64_t max_pixels) {
    r->msgs = calloc(1, sizeof *r->msgs);
    if (!r->msgs)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", r->path);
    /* "m": no memory mapping. libtiff maps a whole file read with "r", and the pages a region
     * reader touches then stay in the process's RSS: 1.06 GB of a 1 Gpx slide's 1.53 GiB peak
     * (bench/results/cpu-pocl-2core/slides.md). Regions are read with pread instead. */
    r->tif = gpuseg__tiff_open(r->path, "rm", -1, r->msgs);
    if (!r->tif)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: not a readable TIFF file: %s", r->path,
                            gpuseg__tiff_why(r->msgs));
    r->dir = 0;
    uint64_t old = gpuseg__image_read_limit(max_pixels);
    gpuseg_status st = gpuseg__tiff_describe(r->path, r->tif, 0, &r->d);
    gpuseg__image_read_limit(old);
    if (st != GPUSEG_OK)
        return st;
    r->info.width = r->d.w;
    r->info.height = r->d.h;
    r->info.channels = r->d.spp;
    r->info.dtype = r->d.dtype;
    r->info.streamed = true;
    r->info.tiled = TIFFIsTiled(r->tif) != 0;
    r->info.bigtiff = TIFFIsBigTIFF(r->tif) != 0;
    r->info.separate = r->d.planar == PLANARCONFIG_SEPARATE;
    uint16_t comp = COMPRESSION_NONE;
    TIFFGetFieldDefaulted(r->tif, TIFFTAG_COMPRESSION, &comp);
    r->info.compression = comp;
    if ((st = block_size(r)) != GPUSEG_OK)
        return st;
    return count_pages(r);
}

gpuseg_status gpuseg_image_region_open(const char *path, const gpuseg_limits *limits,
                                       gpuseg_image_region_reader **out) {
    gpuseg__clear_error(NULL);
    if (!out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_image_region_open: out is NULL");
    *out = NULL;
    gpuseg_limits lim;
    gpuseg_status st = gpuseg_limits_resolve(limits, &lim);
    if (st != GPUSEG_OK)
        return gpuseg__wrap(NULL, st, "%s", path ? path : "image");
    const char *format;
    if ((st = gpuseg__image_format(path, &format)) != GPUSEG_OK)
        return st;
    gpuseg_image_region_reader *r = calloc(1, sizeof *r);
    if (!r || !(r->path = strdup(path))) {
        free(r);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    snprintf(r->info.format, sizeof r->info.format, "%s", format);
    if (strcmp(format, "tiff") == 0) {
        st = open_tiff_reader(r, lim.max_pixels);
    } else {
        st = gpuseg_image_read_ex(path, &lim, &r->whole);
        if (st == GPUSEG_OK) {
            r->info.width = r->info.block_width = r->whole->width;
            r->info.height = r->info.block_height = r->whole->height;
            r->info.channels = r->whole->channels;
            r->info.pages = r->whole->pages;
            r->info.dtype = r->whole->dtype;
        }
    }
    if (st != GPUSEG_OK) {
        gpuseg_image_region_close(r);
        return st;
    }
    *out = r;
    return GPUSEG_OK;
}

const gpuseg_image_region_info *gpuseg_image_region_info_of(const gpuseg_image_region_reader *r) {
    return r ? &r->info : NULL;
}

void gpuseg_image_region_stats(const gpuseg_image_region_reader *r, uint64_t *decoded,
                               size_t *cache_bytes) {
    if (decoded)
        *decoded = r ? r->decoded : 0;
    if (cache_bytes)
        *cache_bytes = r ? r->cache_bytes : 0;
}

/* Decodes block (col, row) of plane p of the current page into a new buffer. */
static gpuseg_status decode(gpuseg_image_region_reader *r, uint32_t page, uint32_t col,
                            uint32_t row, uint32_t p, unsigned char **out) {
    unsigned char *buf = malloc(r->block_bytes);
    if (!buf)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory for a %zu-byte block",
                            r->path, r->block_bytes);
    r->msgs->err[0] = '\0';
    tmsize_t got, want;
    uint32_t index;
    if (r->info.tiled) {
        index = TIFFComputeTile(r->tif, col * r->info.block_width, row * r->info.block_height, 0,
                                (uint16_t)p);
        want = (tmsize_t)r->block_bytes;
        got = TIFFReadEncodedTile(r->tif, index, buf, want);
    } else {
        uint32_t y0 = row * r->info.block_height;
        uint32_t rows = r->d.h - y0 < r->info.block_height ? r->d.h - y0 : r->info.block_height;
        index = p * r->down + row;
        want = (tmsize_t)((size_t)r->d.w * rows * r->unit);
        got = TIFFReadEncodedStrip(r->tif, index, buf, want);
    }
    if (got != want) {
        free(buf);
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: TIFF page %u: cannot read %s %u%s: %s",
                            r->path, page + 1, r->info.tiled ? "tile" : "strip", index,
                            got >= 0 ? " (truncated)" : "", gpuseg__tiff_why(r->msgs));
    }
    r->decoded++;
    r->cache_bytes += r->block_bytes;
    *out = buf;
    return GPUSEG_OK;
}

/* Copies the part of block (col, row) plane p that lies in the region into out. */
static void copy_block(const gpuseg_image_region_reader *r, const unsigned char *blk, uint32_t col,
                       uint32_t row, uint32_t p, uint32_t x, uint32_t y, uint32_t w, uint32_t h,
                       unsigned char *out) {
    const uint32_t bw = r->info.block_width, bh = r->info.block_height;
    const uint32_t bx = col * bw, by = row * bh;
    const uint32_t x0 = bx > x ? bx : x, y0 = by > y ? by : y;
    const uint32_t x1 = bx + bw < x + w ? bx + bw : x + w, y1 = by + bh < y + h ? by + bh : y + h;
    const size_t bs = gpuseg_dtype_size(r->d.dtype), px = bs * r->d.spp;
    for (uint32_t yy = y0; yy < y1; yy++) {
        const unsigned char *src = blk + ((size_t)(yy - by) * bw + (x0 - bx)) * r->unit;
        unsigned char *dst = out + ((size_t)(yy - y) * w + (x0 - x)) * px;
        if (!r->info.separate) {
            memcpy(dst, src, (size_t)(x1 - x0) * px);
        } else {
            dst += (size_t)p * bs;
            for (uint32_t xx = 0; xx < x1 - x0; xx++)
                memcpy(dst + (size_t)xx * px, src + (size_t)xx * bs, bs);
        }
    }
}

gpuseg_status gpuseg_image_region_read(gpuseg_image_region_reader *r, uint32_t page, uint32_t x,
                                       uint32_t y, uint32_t w, uint32_t h, gpuseg_image *out) {
    gpuseg__clear_error(NULL);
    if (!r || !out || !out->data)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_image_region_read: reader, out or out->data is NULL");
    const gpuseg_image_region_info *in = &r->info;
    if (page >= in->pages || w == 0 || h == 0 || x >= in->width || y >= in->height ||
        w > in->width - x || h > in->height - y)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: region %u x %u at (%u, %u) of page %u is outside the %u x %u "
                            "image of %u pages",
                            r->path, w, h, x, y, page + 1, in->width, in->height, in->pages);
    if (out->width != w || out->height != h || out->channels != in->channels ||
        out->dtype != in->dtype || out->pages != 1)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: region image is %u x %u x %u %s x %u pages; the region needs "
                            "%u x %u x %u %s x 1 page",
                            r->path, out->width, out->height, out->channels,
                            gpuseg_dtype_name(out->dtype), out->pages, w, h, in->channels,
                            gpuseg_dtype_name(in->dtype));
    const size_t px = gpuseg_dtype_size(in->dtype) * in->channels;
    if (r->whole) {
        const unsigned char *src =
            (const unsigned char *)r->whole->data + (size_t)page * in->width * in->height * px;
        for (uint32_t yy = 0; yy < h; yy++)
            memcpy((unsigned char *)out->data + (size_t)yy * w * px,
                   src + ((size_t)(y + yy) * in->width + x) * px, (size_t)w * px);
        return GPUSEG_OK;
    }
    gpuseg_status st = set_dir(r, page);
    if (st != GPUSEG_OK)
        return st;
    const uint32_t r0 = y / in->block_height, r1 = (y + h - 1) / in->block_height;
    const uint32_t c0 = x / in->block_width, c1 = (x + w - 1) / in->block_width;
    cache_keep(r, page, r0, r1);
    for (uint32_t row = r0; row <= r1; row++) {
        band_row *b = cache_row(r, page, row);
        if (!b)
            return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", r->path);
        for (uint32_t col = c0; col <= c1; col++)
            for (uint32_t p = 0; p < r->planes; p++) {
                unsigned char **slot = &b->blk[(size_t)col * r->planes + p];
                if (!*slot && (st = decode(r, page, col, row, p, slot)) != GPUSEG_OK)
                    return st;
                copy_block(r, *slot, col, row, p, x, y, w, h, out->data);
            }
    }
    return GPUSEG_OK;
}
