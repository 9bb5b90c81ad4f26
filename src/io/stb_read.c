/* io/stb_read.c: PNG, JPEG, BMP, PNM and GIF through Debian's compiled stb_image (libstb):
 * the header is checked with stbi_info before any decoding so that absurd sizes are refused by
 * our limits, then 8- or 16-bit samples are decoded with the channels as stored. */
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <stb_image.h>

#include "io/io_internal.h"

/* stb reads from memory with an int length; larger files are refused before reading. */
#define STB_MAX_FILE ((size_t)INT_MAX)

/* stb_image 2.27 (Debian bookworm) returns 16-bit PNM samples in file (big-endian) byte order
 * instead of native order; newer releases fix that. Rather than trusting a version number, we
 * decode a 1 x 1 PGM holding 0x0102 once and see which order comes back. */
static pthread_once_t pnm_probe_once = PTHREAD_ONCE_INIT;
static bool pnm16_needs_swap;

static void probe_pnm16(void) {
    static const unsigned char pgm[] = "P5\n1 1\n65535\n\x01\x02";
    int w, h, c;
    stbi_us *v = stbi_load_16_from_memory(pgm, (int)sizeof pgm - 1, &w, &h, &c, 1);
    pnm16_needs_swap = v && v[0] == 0x0201;
    stbi_image_free(v);
}

/* Reads the size from the fixed-position header fields of PNG, BMP and GIF, so that a header
 * claiming absurd dimensions gets our size message even where stbi_info only says "unknown
 * image type" (it tries every format and keeps the last reason). false: not available. */
static bool header_size(const char *format, const unsigned char *b, size_t n, uint64_t *w,
                        uint64_t *h) {
    if (strcmp(format, "png") == 0 && n >= 24 && memcmp(b + 12, "IHDR", 4) == 0) {
        *w = (uint64_t)b[16] << 24 | (uint64_t)b[17] << 16 | (uint64_t)b[18] << 8 | b[19];
        *h = (uint64_t)b[20] << 24 | (uint64_t)b[21] << 16 | (uint64_t)b[22] << 8 | b[23];
        return true;
    }
    if (strcmp(format, "bmp") == 0 && n >= 26 && b[14] >= 40) {
        uint32_t uw =
            (uint32_t)b[18] | (uint32_t)b[19] << 8 | (uint32_t)b[20] << 16 | (uint32_t)b[21] << 24;
        uint32_t uh =
            (uint32_t)b[22] | (uint32_t)b[23] << 8 | (uint32_t)b[24] << 16 | (uint32_t)b[25] << 24;
        /* signed 32-bit fields; a negative height means rows stored top-down */
        int64_t sw = uw > INT32_MAX ? (int64_t)uw - 4294967296LL : (int64_t)uw;
        int64_t sh = uh > INT32_MAX ? (int64_t)uh - 4294967296LL : (int64_t)uh;
        *w = (uint64_t)(sw < 0 ? -sw : sw);
        *h = (uint64_t)(sh < 0 ? -sh : sh);
        return true;
    }
    if (strcmp(format, "gif") == 0 && n >= 10) {
        *w = (uint64_t)b[6] | (uint64_t)b[7] << 8;
        *h = (uint64_t)b[8] | (uint64_t)b[9] << 8;
        return true;
    }
    return false;
}

gpuseg_status gpuseg__stb_read(const char *path, const char *format, gpuseg_image_info *info,
                               gpuseg_image **out) {
    void *file = NULL;
    size_t n = 0;
    gpuseg_status st = gpuseg__read_file(NULL, path, STB_MAX_FILE, &file, &n);
    if (st != GPUSEG_OK)
        return st;
    uint64_t hw, hh;
    if (header_size(format, file, n, &hw, &hh) &&
        (hw > GPUSEG_MAX_IMAGE_SIDE || hh > GPUSEG_MAX_IMAGE_SIDE ||
         hw * hh > GPUSEG_MAX_IMAGE_PIXELS)) {
        free(file);
        return gpuseg__image_check_size(path, format, hw, hh, 1, 1);
    }
    int w = 0, h = 0, comp = 0;
    if (!stbi_info_from_memory(file, (int)n, &w, &h, &comp)) {
        /* stb refuses sides over 2^24 itself; report that as a size refusal, like ours. */
        const char *r = stbi_failure_reason();
        bool big = r && strstr(r, "large") != NULL;
        free(file);
        if (big)
            return gpuseg__fail(NULL, GPUSEG_TOO_LARGE,
                                "%s: %s header claims too large an image "
                                "(%s)",
                                path, format, r);
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: corrupt or unsupported %s header: %s", path,
                            format, r ? r : "unknown reason");
    }
    st = gpuseg__image_check_size(path, format, (uint64_t)(unsigned)w, (uint64_t)(unsigned)h,
                                  (uint64_t)(unsigned)comp, 1);
    if (st != GPUSEG_OK) {
        free(file);
        return st;
    }
    bool is16 = stbi_is_16_bit_from_memory(file, (int)n) != 0;
    gpuseg_dtype dtype = is16 ? GPUSEG_DTYPE_U16 : GPUSEG_DTYPE_U8;
    if (info) {
        free(file);
        info->width = (uint32_t)w;
        info->height = (uint32_t)h;
        info->channels = (uint32_t)comp;
        info->pages = 1;
        info->dtype = dtype;
        return GPUSEG_OK;
    }
    /* Another part of the process may have asked stb to flip; we always want rows top down. */
    stbi_set_flip_vertically_on_load_thread(0);
    int w2 = 0, h2 = 0, c2 = 0;
    void *px = is16 ? (void *)stbi_load_16_from_memory(file, (int)n, &w2, &h2, &c2, comp)
                    : (void *)stbi_load_from_memory(file, (int)n, &w2, &h2, &c2, comp);
    free(file);
    if (!px) {
        const char *r = stbi_failure_reason();
        bool big = r && strstr(r, "large") != NULL;
        return gpuseg__fail(NULL, big ? GPUSEG_TOO_LARGE : GPUSEG_FORMAT,
                            "%s: cannot decode %s: %s", path, format, r ? r : "unknown reason");
    }
    if (w2 != w || h2 != h) {
        stbi_image_free(px);
        return gpuseg__fail(NULL, GPUSEG_FORMAT, "%s: %s size changed while decoding", path,
                            format);
    }
    if (is16 && strcmp(format, "pnm") == 0) {
        pthread_once(&pnm_probe_once, probe_pnm16);
        if (pnm16_needs_swap) {
            uint16_t *p = px;
            for (size_t i = 0, k = (size_t)w * (size_t)h * (size_t)comp; i < k; i++)
                p[i] = (uint16_t)(p[i] << 8 | p[i] >> 8);
        }
    }
    gpuseg_image *img = calloc(1, sizeof *img);
    if (!img) {
        stbi_image_free(px);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    img->width = (uint32_t)w;
    img->height = (uint32_t)h;
    img->channels = (uint32_t)comp;
    img->pages = 1;
    img->dtype = dtype;
    /* stb allocates with malloc (STBI_MALLOC default), so the pixels can be released with
     * free() by gpuseg_image_free; Debian's libstb uses the defaults. */
    img->data = px;
    *out = img;
    return GPUSEG_OK;
}
