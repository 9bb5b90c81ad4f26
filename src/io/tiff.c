/* io/tiff.c: TIFF through libtiff: reading every page of 8/16/32-bit unsigned, int32 and
 * float32 images with 1-4 samples per pixel, contiguous or separate planes, strips or tiles
 * (real samples, never TIFFReadRGBA), and writing uint16/uint32 label images. libtiff's
 * messages go to a per-call handler (never to stderr) and become our one-line error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tiffio.h>

#include "io/tiff_internal.h"

/* Pages accepted in one file; more is far beyond any microscopy stack we read whole. */
#define TIFF_MAX_PAGES 100000u

/* The format attribute lets compilers check vsnprintf's use of libtiff's format. */
static int on_error(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap)
    GPUSEG__PRINTF(4, 0);
static int on_error(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
    (void)tif;
    (void)module;
    tiff_msgs *m = user;
    if (m && m->err[0] == '\0') {
        vsnprintf(m->err, sizeof m->err, fmt, ap);
        /* keep the message on one line */
        for (char *p = m->err; *p; p++)
            if (*p == '\n' || *p == '\r')
                *p = ' ';
    }
    return 1;
}

static int on_warning(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap) {
    (void)tif;
    (void)user;
    (void)module;
    (void)fmt;
    (void)ap;
    return 1;
}

TIFF *gpuseg__tiff_open(const char *path, const char *mode, int fd, tiff_msgs *msgs) {
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    if (!opts)
        return NULL;
    TIFFOpenOptionsSetErrorHandlerExtR(opts, on_error, msgs);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, on_warning, msgs);
    TIFF *tif = fd >= 0 ? TIFFFdOpenExt(fd, path, mode, opts) : TIFFOpenExt(path, mode, opts);
    TIFFOpenOptionsFree(opts);
    return tif;
}

const char *gpuseg__tiff_why(const tiff_msgs *m) {
    return m->err[0] ? m->err : "libtiff reported no detail";
}

gpuseg_status gpuseg__tiff_describe(const char *path, TIFF *tif, uint32_t page, page_desc *d) {
    uint16_t spp = 1, bps = 1, fmt = SAMPLEFORMAT_UINT, planar = PLANARCONFIG_CONTIG;
    uint16_t photometric = 0, compression = COMPRESSION_NONE;
    memset(d, 0, sizeof *d);
    if (!TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &d->w) ||
        !TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &d->h))
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: TIFF page %u has no image size", path,
                            page + 1);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bps);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &fmt);
    TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &planar);
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
    TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photometric);
    gpuseg_status st = gpuseg__image_check_size(path, "TIFF page", d->w, d->h, 1, 1);
    if (st != GPUSEG_OK)
        return st;
    if (spp < 1 || spp > 4)
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: TIFF page %u has %u samples per pixel (1 to 4 supported)", path,
                            page + 1, spp);
    if (fmt == SAMPLEFORMAT_UINT && bps == 8)
        d->dtype = GPUSEG_DTYPE_U8;
    else if (fmt == SAMPLEFORMAT_UINT && bps == 16)
        d->dtype = GPUSEG_DTYPE_U16;
    else if (fmt == SAMPLEFORMAT_UINT && bps == 32)
        d->dtype = GPUSEG_DTYPE_U32;
    else if (fmt == SAMPLEFORMAT_INT && bps == 32)
        d->dtype = GPUSEG_DTYPE_I32;
    else if (fmt == SAMPLEFORMAT_IEEEFP && bps == 32)
        d->dtype = GPUSEG_DTYPE_F32;
    else
        return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                            "%s: TIFF page %u has %u-bit %s samples (8/16/32-bit unsigned, "
                            "32-bit signed and 32-bit float are supported)",
                            path, page + 1, bps,
                            fmt == SAMPLEFORMAT_INT      ? "signed"
                            : fmt == SAMPLEFORMAT_IEEEFP ? "float"
                            : fmt == SAMPLEFORMAT_UINT   ? "unsigned"
                                                         : "complex or unknown");
    if (photometric == PHOTOMETRIC_YCBCR) {
        if (compression != COMPRESSION_JPEG)
            return gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                "%s: TIFF page %u is YCbCr without JPEG compression", path,
                                page + 1);
        /* Let libtiff's JPEG codec convert to RGB instead of returning subsampled YCbCr. */
        TIFFSetField(tif, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB);
    }
    if (planar != PLANARCONFIG_CONTIG && planar != PLANARCONFIG_SEPARATE)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: TIFF page %u has planar configuration %u",
                            path, page + 1, planar);
    d->spp = spp;
    d->bps = bps;
    d->fmt = fmt;
    d->planar = planar;
    return GPUSEG_OK;
}

static void place_block(unsigned char *page, const page_desc *d, const unsigned char *blk,
                        uint32_t x0, uint32_t y0, uint32_t bw, uint32_t bh, int plane) {
    size_t bs = gpuseg_dtype_size(d->dtype);
    size_t px = bs * d->spp; /* bytes per output pixel */
    uint32_t cw = x0 + bw > d->w ? d->w - x0 : bw;
    uint32_t ch = y0 + bh > d->h ? d->h - y0 : bh;
    for (uint32_t y = 0; y < ch; y++) {
        unsigned char *dst = page + ((size_t)(y0 + y) * d->w + x0) * px;
        if (plane < 0) {
            memcpy(dst, blk + (size_t)y * bw * px, (size_t)cw * px);
        } else {
            const unsigned char *src = blk + (size_t)y * bw * bs;
            dst += (size_t)plane * bs;
            for (uint32_t x = 0; x < cw; x++)
                memcpy(dst + (size_t)x * px, src + (size_t)x * bs, bs);
        }
    }
}

static gpuseg_status read_page(const char *path, TIFF *tif, uint32_t page, const page_desc *d,
                               unsigned char *dst, const tiff_msgs *msgs) {
    size_t bs = gpuseg_dtype_size(d->dtype);
    int planes = d->planar == PLANARCONFIG_SEPARATE ? (int)d->spp : 1;
    size_t unit = d->planar == PLANARCONFIG_SEPARATE ? bs : bs * d->spp; /* bytes per block px */
    unsigned char *buf = NULL;
    gpuseg_status st = GPUSEG_OK;
    if (TIFFIsTiled(tif)) {
        uint32_t tw = 0, th = 0;
        TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw);
        TIFFGetField(tif, TIFFTAG_TILELENGTH, &th);
        size_t want;
        if (tw == 0 || th == 0 || tw > GPUSEG_MAX_IMAGE_SIDE || th > GPUSEG_MAX_IMAGE_SIDE ||
            !gpuseg__mul4_size(tw, th, unit, 1, &want))
            return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: TIFF page %u has bad tile size %u x %u",
                                path, page + 1, tw, th);
        buf = malloc(want);
        if (!buf)
            return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
        for (int p = 0; p < planes; p++)
            for (uint32_t y = 0; y < d->h; y += th)
                for (uint32_t x = 0; x < d->w; x += tw) {
                    ttile_t t = TIFFComputeTile(tif, x, y, 0, (uint16_t)p);
                    tmsize_t got = TIFFReadEncodedTile(tif, t, buf, (tmsize_t)want);
                    if (got < 0 || (size_t)got != want) {
                        st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                                          "%s: TIFF page %u: cannot read tile %u: %s", path,
                                          page + 1, (unsigned)t, gpuseg__tiff_why(msgs));
                        goto done;
                    }
                    place_block(dst, d, buf, x, y, tw, th,
                                d->planar == PLANARCONFIG_SEPARATE ? p : -1);
                }
    } else {
        uint32_t rps = d->h;
        TIFFGetFieldDefaulted(tif, TIFFTAG_ROWSPERSTRIP, &rps);
        if (rps == 0 || rps > d->h)
            rps = d->h;
        size_t row = (size_t)d->w * unit, cap;
        if (!gpuseg__mul_size(row, rps, &cap))
            return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: TIFF strip size overflows", path);
        buf = malloc(cap);
        if (!buf)
            return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
        uint32_t per_plane = (d->h + rps - 1) / rps;
        for (int p = 0; p < planes; p++)
            for (uint32_t s = 0; s < per_plane; s++) {
                uint32_t y0 = s * rps;
                uint32_t rows = d->h - y0 < rps ? d->h - y0 : rps;
                size_t want = row * rows;
                tstrip_t strip = (tstrip_t)((uint32_t)p * per_plane + s);
                tmsize_t got = TIFFReadEncodedStrip(tif, strip, buf, (tmsize_t)want);
                if (got < 0 || (size_t)got != want) {
                    st = gpuseg__fail(NULL, GPUSEG_FORMAT,
                                      "%s: TIFF page %u: cannot read strip %u%s: %s", path,
                                      page + 1, (unsigned)strip, got >= 0 ? " (truncated)" : "",
                                      gpuseg__tiff_why(msgs));
                    goto done;
                }
                place_block(dst, d, buf, 0, y0, d->w, rows,
                            d->planar == PLANARCONFIG_SEPARATE ? p : -1);
            }
    }
done:
    free(buf);
    return st;
}

gpuseg_status gpuseg__tiff_read(const char *path, gpuseg_image_info *info, gpuseg_image **out) {
    tiff_msgs msgs = {{0}};
    TIFF *tif = gpuseg__tiff_open(path, "r", -1, &msgs);
    if (!tif)
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: not a readable TIFF file: %s", path,
                            gpuseg__tiff_why(&msgs));
    gpuseg_status st;
    gpuseg_image *img = NULL;
    page_desc first, d;
    if ((st = gpuseg__tiff_describe(path, tif, 0, &first)) != GPUSEG_OK)
        goto fail;
    /* Count pages; libtiff detects IFD loops. */
    tdir_t pages = TIFFNumberOfDirectories(tif);
    if (pages < 1 || pages > TIFF_MAX_PAGES) {
        st = gpuseg__fail(NULL, pages < 1 ? GPUSEG_FORMAT : GPUSEG_TOO_LARGE,
                          "%s: TIFF has %u pages (1 to %u supported)", path, (unsigned)pages,
                          TIFF_MAX_PAGES);
        goto fail;
    }
    if ((st = gpuseg__image_check_size(path, "TIFF", first.w, first.h, first.spp, pages)) !=
        GPUSEG_OK)
        goto fail;
    if (info) {
        info->width = first.w;
        info->height = first.h;
        info->channels = first.spp;
        info->pages = (uint32_t)pages;
        info->dtype = first.dtype;
        TIFFClose(tif);
        return GPUSEG_OK;
    }
    if ((st = gpuseg__image_alloc(path, first.w, first.h, first.spp, (uint32_t)pages, first.dtype,
                                  &img)) != GPUSEG_OK)
        goto fail;
    size_t page_bytes = (size_t)first.w * first.h * first.spp * gpuseg_dtype_size(first.dtype);
    for (tdir_t p = 0; p < pages; p++) {
        if (p > 0) {
            if (!TIFFSetDirectory(tif, p)) {
                st = gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: cannot open TIFF page %u: %s", path,
                                  (unsigned)p + 1, gpuseg__tiff_why(&msgs));
                goto fail;
            }
            if ((st = gpuseg__tiff_describe(path, tif, p, &d)) != GPUSEG_OK)
                goto fail;
            if (d.w != first.w || d.h != first.h || d.spp != first.spp || d.dtype != first.dtype) {
                st =
                    gpuseg__fail(NULL, GPUSEG_UNSUPPORTED,
                                 "%s: TIFF page %u is %u x %u x %u %s but page 1 is %u x %u x %u "
                                 "%s (all pages must match)",
                                 path, (unsigned)p + 1, d.w, d.h, d.spp, gpuseg_dtype_name(d.dtype),
                                 first.w, first.h, first.spp, gpuseg_dtype_name(first.dtype));
                goto fail;
            }
        } else {
            d = first;
        }
        if ((st = read_page(path, tif, p, &d, (unsigned char *)img->data + p * page_bytes,
                            &msgs)) != GPUSEG_OK)
            goto fail;
    }
    TIFFClose(tif);
    *out = img;
    return GPUSEG_OK;
fail:
    gpuseg_image_free(img);
    TIFFClose(tif);
    return st;
}

/* ---- writing labels ---- */

/* libtiff reports a failed write() as a message without errno; errno is still that of the
 * failed call when the write path returns, so a full disk is named as such. */
static gpuseg_status tiff_write_failed(const char *path, int e, unsigned page,
                                       const char *why_text) {
    if (e == ENOSPC || e == EDQUOT || e == EFBIG)
        return gpuseg__fail_write(NULL, path, "write failed", e);
    return gpuseg__fail(NULL, GPUSEG_IO, "%s: writing TIFF page %u failed: %s", path, page,
                        why_text);
}

gpuseg_status gpuseg__tiff_write_labels(const char *path, const gpuseg_image *lab, unsigned flags) {
    gpuseg__afile af;
    gpuseg_status st = gpuseg__afile_open_ex(NULL, path, flags, &af);
    if (st != GPUSEG_OK)
        return st;
    tiff_msgs msgs = {{0}};
    size_t bs = gpuseg_dtype_size(lab->dtype), bytes;
    gpuseg__image_bytes(lab, &bytes);
    /* Classic TIFF offsets are 32-bit; switch to BigTIFF well before they could overflow. */
    const char *mode = bytes > ((size_t)1 << 31) ? "w8" : "w";
    /* TIFFClose closes the descriptor it was given: hand it a duplicate so that we can still
     * fsync and close ours. */
    int fd2 = dup(af.fd);
    TIFF *tif = fd2 >= 0 ? gpuseg__tiff_open(path, mode, fd2, &msgs) : NULL;
    if (!tif) {
        if (fd2 >= 0)
            close(fd2);
        gpuseg__afile_abort(&af);
        return gpuseg__fail(NULL, GPUSEG_IO, "%s: cannot start the TIFF: %s", path,
                            gpuseg__tiff_why(&msgs));
    }
    bool deflate = TIFFIsCODECConfigured(COMPRESSION_ADOBE_DEFLATE);
    errno = 0; /* read after a failure: only a write() failing from here on may set it */
    size_t row = (size_t)lab->width * bs;
    /* Strips of about 256 KiB keep memory small and compression effective. */
    uint32_t rps = (uint32_t)((size_t)(256 * 1024) / row);
    if (rps < 1)
        rps = 1;
    for (uint32_t p = 0; p < lab->pages; p++) {
        const unsigned char *page =
            (const unsigned char *)lab->data + (size_t)p * row * lab->height;
        int ok = TIFFSetField(tif, TIFFTAG_IMAGEWIDTH, lab->width) &&
                 TIFFSetField(tif, TIFFTAG_IMAGELENGTH, lab->height) &&
                 TIFFSetField(tif, TIFFTAG_SAMPLESPERPIXEL, 1) &&
                 TIFFSetField(tif, TIFFTAG_BITSPERSAMPLE, (uint16_t)(bs * 8)) &&
                 TIFFSetField(tif, TIFFTAG_SAMPLEFORMAT, SAMPLEFORMAT_UINT) &&
                 TIFFSetField(tif, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK) &&
                 TIFFSetField(tif, TIFFTAG_PLANARCONFIG, PLANARCONFIG_CONTIG) &&
                 TIFFSetField(tif, TIFFTAG_ROWSPERSTRIP, rps) &&
                 TIFFSetField(tif, TIFFTAG_COMPRESSION,
                              deflate ? COMPRESSION_ADOBE_DEFLATE : COMPRESSION_NONE) &&
                 (!deflate || TIFFSetField(tif, TIFFTAG_PREDICTOR, PREDICTOR_HORIZONTAL));
        if (ok && lab->pages > 1)
            ok = TIFFSetField(tif, TIFFTAG_SUBFILETYPE, FILETYPE_PAGE) &&
                 TIFFSetField(tif, TIFFTAG_PAGENUMBER, (uint16_t)p, (uint16_t)lab->pages);
        /* The predictor works in place on the buffer it is given, so each strip is copied. */
        for (uint32_t y = 0; ok && y < lab->height; y += rps) {
            uint32_t rows = lab->height - y < rps ? lab->height - y : rps;
            tmsize_t n = (tmsize_t)(row * rows);
            void *tmp = malloc((size_t)n);
            if (!tmp) {
                TIFFClose(tif);
                gpuseg__afile_abort(&af);
                return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
            }
            memcpy(tmp, page + (size_t)y * row, (size_t)n);
            ok = TIFFWriteEncodedStrip(tif, TIFFComputeStrip(tif, y, 0), tmp, n) == n;
            free(tmp);
        }
        if (ok)
            ok = TIFFWriteDirectory(tif);
        if (!ok) {
            int e = errno;
            TIFFClose(tif);
            gpuseg__afile_abort(&af);
            return tiff_write_failed(path, e, p + 1, gpuseg__tiff_why(&msgs));
        }
    }
    errno = 0;
    TIFFClose(tif);
    if (msgs.err[0]) {
        int e = errno;
        gpuseg__afile_abort(&af);
        return tiff_write_failed(path, e, lab->pages, msgs.err);
    }
    return gpuseg__afile_commit(&af);
}
