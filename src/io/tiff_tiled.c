/* io/tiff_tiled.c: the tiled BigTIFF label writer (gpuseg/region.h): tiles written as blocks
 * arrive (TIFFWriteEncodedTile, any order), into core/afile.c's temporary file beside the
 * target, renamed over it on commit; nothing partial is ever published. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gpuseg/region.h"
#include "io/tiff_internal.h"

struct gpuseg_labels_tiff {
    gpuseg__afile af;
    char *path; /* af.path points here */
    TIFF *tif;
    tiff_msgs *msgs;
    uint32_t width, height, tile, across, down;
    gpuseg_dtype dtype;
    size_t bs;
    uint8_t *done; /* one byte per tile */
    uint64_t left; /* tiles not yet written */
    unsigned char *buf;
    gpuseg_status failed; /* GPUSEG_OK until a write fails */
};

static void writer_free(gpuseg_labels_tiff *w) {
    free(w->buf);
    free(w->done);
    free(w->msgs);
    free(w->path);
    free(w);
}

void gpuseg_labels_tiff_abort(gpuseg_labels_tiff *w) {
    if (!w)
        return;
    if (w->tif)
        TIFFClose(w->tif); /* flushes into the temporary file, which goes next */
    gpuseg__afile_abort(&w->af);
    writer_free(w);
}

/* A failed libtiff write: errno is still that of the failed write(), so a full disk is named. */
static gpuseg_status write_failed(gpuseg_labels_tiff *w, int e, const char *what) {
    if (e == ENOSPC || e == EDQUOT || e == EFBIG)
        w->failed = gpuseg__fail_write(NULL, w->path, "write failed", e);
    else
        w->failed = gpuseg__fail(NULL, GPUSEG_IO, "%s: %s failed: %s", w->path, what,
                                 gpuseg__tiff_why(w->msgs));
    return w->failed;
}

gpuseg_status gpuseg_labels_tiff_open(const char *path, uint32_t width, uint32_t height,
                                      gpuseg_dtype dtype, uint32_t tile, unsigned flags,
                                      gpuseg_labels_tiff **out) {
    gpuseg__clear_error(NULL);
    if (!out)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_labels_tiff_open: out is NULL");
    *out = NULL;
    if (!path || !*path)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "output path is empty");
    if (dtype != GPUSEG_DTYPE_U16 && dtype != GPUSEG_DTYPE_U32)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: tiled label TIFF must be uint16 or uint32, not %s", path,
                            gpuseg_dtype_name(dtype));
    if (tile == 0)
        tile = GPUSEG_LABELS_TIFF_TILE;
    if (tile < 16 || tile > 4096 || tile % 16 != 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: tile size %u (a multiple of 16 from 16 to 4096)", path, tile);
    gpuseg_status st = gpuseg__image_check_size(path, "label image", width, height, 1, 1);
    if (st != GPUSEG_OK)
        return st;
    gpuseg_labels_tiff *w = calloc(1, sizeof *w);
    if (!w)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    w->af.fd = -1;
    w->width = width;
    w->height = height;
    w->tile = tile;
    w->dtype = dtype;
    w->bs = gpuseg_dtype_size(dtype);
    w->across = (width + tile - 1) / tile;
    w->down = (height + tile - 1) / tile;
    w->left = (uint64_t)w->across * w->down;
    w->path = strdup(path);
    w->msgs = calloc(1, sizeof *w->msgs);
    w->done = calloc((size_t)w->left, 1);
    w->buf = malloc((size_t)tile * tile * w->bs);
    if (!w->path || !w->msgs || !w->done || !w->buf) {
        writer_free(w);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    if ((st = gpuseg__afile_open_ex(NULL, w->path, flags, &w->af)) != GPUSEG_OK) {
        writer_free(w);
        return st;
    }
    /* TIFFClose closes the descriptor it is given: give it a duplicate so that afile can still
     * fsync and close its own. BigTIFF always ("w8"): a whole-slide label file passes 4 GiB. */
    int fd2 = dup(w->af.fd);
    w->tif = fd2 >= 0 ? gpuseg__tiff_open(w->path, "w8", fd2, w->msgs) : NULL;
    if (!w->tif) {
        int e = errno;
        if (fd2 >= 0)
            close(fd2);
        st = fd2 < 0 ? gpuseg__fail_write(NULL, w->path, "cannot start the TIFF", e)
                     : gpuseg__fail(NULL, GPUSEG_IO, "%s: cannot start the TIFF: %s", w->path,
                                    gpuseg__tiff_why(w->msgs));
        gpuseg_labels_tiff_abort(w);
        return st;
    }
    bool deflate = TIFFIsCODECConfigured(COMPRESSION_ADOBE_DEFLATE);
    int ok = TIFFSetField(w->tif, TIFFTAG_IMAGEWIDTH, width) &&
             TIFFSetField(w->tif, TIFFTAG_IMAGELENGTH, height) &&
             TIFFSetField(w->tif, TIFFTAG_SAMPLESPERPIXEL, 1) &&
             TIFFSetField(w->tif, TIFFTAG_BITSPERSAMPLE, (uint16_t)(w->bs * 8)) &&
             TIFFSetField(w->tif, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_UINT) &&
             TIFFSetField(w->tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK) &&
             TIFFSetField(w->tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG) &&
             TIFFSetField(w->tif, TIFFTAG_TILEWIDTH, tile) &&
             TIFFSetField(w->tif, TIFFTAG_TILELENGTH, tile) &&
             TIFFSetField(w->tif, TIFFTAG_COMPRESSION,
                          deflate ? COMPRESSION_ADOBE_DEFLATE : COMPRESSION_NONE) &&
             (!deflate || TIFFSetField(w->tif, TIFFTAG_PREDICTOR, PREDICTOR_HORIZONTAL)) &&
             TIFFSetField(w->tif, TIFFTAG_SOFTWARE, "gpuseg");
    if (!ok) {
        st = gpuseg__fail(NULL, GPUSEG_INTERNAL, "%s: cannot set the TIFF tags: %s", w->path,
                          gpuseg__tiff_why(w->msgs));
        gpuseg_labels_tiff_abort(w);
        return st;
    }
    *out = w;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_labels_tiff_write_block(gpuseg_labels_tiff *w, uint32_t x, uint32_t y,
                                             uint32_t width, uint32_t height, const void *labels) {
    gpuseg__clear_error(NULL);
    if (!w || !labels)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "gpuseg_labels_tiff_write_block: writer or labels is NULL");
    if (w->failed != GPUSEG_OK)
        return gpuseg__fail(NULL, w->failed, "%s: an earlier write failed; abort the file",
                            w->path);
    const uint32_t t = w->tile;
    if (width == 0 || height == 0 || x >= w->width || y >= w->height || width > w->width - x ||
        height > w->height - y || x % t || y % t || (width % t && x + width != w->width) ||
        (height % t && y + height != w->height))
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: block %u x %u at (%u, %u) is not on the %u-pixel tile grid of "
                            "the %u x %u image (blocks start on tile corners and end on them or "
                            "at the right / bottom edge)",
                            w->path, width, height, x, y, t, w->width, w->height);
    const uint32_t c0 = x / t, c1 = (x + width - 1) / t, r0 = y / t, r1 = (y + height - 1) / t;
    for (uint32_t r = r0; r <= r1; r++)
        for (uint32_t c = c0; c <= c1; c++)
            if (w->done[(size_t)r * w->across + c])
                return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                                    "%s: the tile at (%u, %u) was already written", w->path, c * t,
                                    r * t);
    const unsigned char *src = labels;
    const size_t tile_bytes = (size_t)t * t * w->bs;
    for (uint32_t r = r0; r <= r1; r++)
        for (uint32_t c = c0; c <= c1; c++) {
            const uint32_t tx = c * t, ty = r * t;
            const uint32_t cw = w->width - tx < t ? w->width - tx : t;
            const uint32_t ch = w->height - ty < t ? w->height - ty : t;
            /* Edge tiles are padded with background; the predictor encodes in place, so the
             * buffer is refilled for every tile. */
            if (cw < t || ch < t)
                memset(w->buf, 0, tile_bytes);
            for (uint32_t yy = 0; yy < ch; yy++)
                memcpy(w->buf + (size_t)yy * t * w->bs,
                       src + ((size_t)(ty - y + yy) * width + (tx - x)) * w->bs,
                       (size_t)cw * w->bs);
            w->msgs->err[0] = '\0';
            errno = 0;
            ttile_t index = TIFFComputeTile(w->tif, tx, ty, 0, 0);
            if (TIFFWriteEncodedTile(w->tif, index, w->buf, (tmsize_t)tile_bytes) !=
                (tmsize_t)tile_bytes)
                return write_failed(w, errno, "writing a tile");
            w->done[(size_t)r * w->across + c] = 1;
            w->left--;
        }
    return GPUSEG_OK;
}

gpuseg_status gpuseg_labels_tiff_commit(gpuseg_labels_tiff *w) {
    gpuseg__clear_error(NULL);
    if (!w)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "gpuseg_labels_tiff_commit: NULL");
    gpuseg_status st;
    if (w->failed != GPUSEG_OK) {
        st = gpuseg__fail(NULL, w->failed, "%s: an earlier write failed; nothing was written",
                          w->path);
        gpuseg_labels_tiff_abort(w);
        return st;
    }
    if (w->left > 0) {
        size_t i = 0;
        while (w->done[i])
            i++;
        st = gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                          "%s: %llu of %llu tiles were never written (the first at (%u, %u)); "
                          "nothing was written",
                          w->path, (unsigned long long)w->left,
                          (unsigned long long)w->across * w->down,
                          (unsigned)(i % w->across) * w->tile, (unsigned)(i / w->across) * w->tile);
        gpuseg_labels_tiff_abort(w);
        return st;
    }
    w->msgs->err[0] = '\0';
    errno = 0;
    int ok = TIFFWriteDirectory(w->tif);
    int e = errno;
    if (ok)
        errno = 0;
    TIFFClose(w->tif);
    w->tif = NULL;
    if (ok) {
        e = errno;
        ok = w->msgs->err[0] == '\0';
    }
    if (!ok) {
        st = write_failed(w, e, "writing the TIFF directory");
        gpuseg_labels_tiff_abort(w);
        return st;
    }
    st = gpuseg__afile_commit(&w->af);
    writer_free(w);
    return st;
}
