/* bench/bench_region.c: peak memory and time of the streaming I/O of gpuseg/region.h on a
 * whole-slide-sized image (issue #16). Makes a SIDE^2 uint8 deflate tiled BigTIFF (tiles of 256,
 * written tile by tile, so making it needs no image buffer) in DIR, then, in this order because
 * VmHWM only grows: reads it region by region (BLOCK^2 blocks with a 64-pixel overlap, raster
 * order, every block's corner pixels checked), writes a SIDE^2 uint32 label BigTIFF block by
 * block (gpuseg_labels_tiff_*), and reads the image whole (gpuseg_image_read) for comparison.
 * Prints one JSON object: VmHWM (KiB, /proc/self/status) before and after each step, seconds,
 * tiles decoded. Host only.
 *   bench_region [--side N (default 16384)] [--block N (default 1024)] [--dir DIR (default /tmp)]
 *                [--keep: leave the files] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tiffio.h>

#include "gpuseg/gpuseg.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

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

static unsigned char pixel(uint32_t x, uint32_t y) {
    return (unsigned char)((x / 4 + y / 8 * 3) & 0xff);
}

static int make_image(const char *path, uint32_t side, uint32_t tile) {
    TIFF *t = TIFFOpen(path, "w8");
    if (!t)
        return -1;
    TIFFSetField(t, TIFFTAG_IMAGEWIDTH, side);
    TIFFSetField(t, TIFFTAG_IMAGELENGTH, side);
    TIFFSetField(t, TIFFTAG_SAMPLESPERPIXEL, 1);
    TIFFSetField(t, TIFFTAG_BITSPERSAMPLE, 8);
    TIFFSetField(t, TIFFTAG_PHOTOMETRIC, PHOTOMETRIC_MINISBLACK);
    TIFFSetField(t, TIFFTAG_COMPRESSION, COMPRESSION_ADOBE_DEFLATE);
    TIFFSetField(t, TIFFTAG_TILEWIDTH, tile);
    TIFFSetField(t, TIFFTAG_TILELENGTH, tile);
    unsigned char *buf = malloc((size_t)tile * tile);
    int rc = buf ? 0 : -1;
    for (uint32_t y = 0; rc == 0 && y < side; y += tile)
        for (uint32_t x = 0; rc == 0 && x < side; x += tile) {
            for (uint32_t yy = 0; yy < tile; yy++)
                for (uint32_t xx = 0; xx < tile; xx++)
                    buf[(size_t)yy * tile + xx] = pixel(x + xx, y + yy);
            if (TIFFWriteEncodedTile(t, TIFFComputeTile(t, x, y, 0, 0), buf,
                                     (tmsize_t)tile * tile) < 0)
                rc = -1;
        }
    free(buf);
    TIFFClose(t);
    return rc;
}

static int die(const char *what) {
    fprintf(stderr, "bench_region: %s: %s\n", what, gpuseg_last_error());
    return 1;
}

int main(int argc, char **argv) {
    uint32_t side = 16384, block = 1024, tile = 256, halo = 64;
    const char *dir = "/tmp";
    int keep = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--side") == 0 && i + 1 < argc)
            side = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--block") == 0 && i + 1 < argc)
            block = (uint32_t)strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--dir") == 0 && i + 1 < argc)
            dir = argv[++i];
        else if (strcmp(argv[i], "--keep") == 0)
            keep = 1;
        else {
            fprintf(stderr, "usage: bench_region [--side N] [--block N] [--dir DIR] [--keep]\n");
            return 2;
        }
    }
    if (side < 256 || block < 2 * halo || block % 16 != 0) {
        fprintf(stderr, "bench_region: --side >= 256, --block a multiple of 16 >= 128\n");
        return 2;
    }
    char img_path[1024], lab_path[1024];
    snprintf(img_path, sizeof img_path, "%s/bench_region_%d.tif", dir, (int)getpid());
    snprintf(lab_path, sizeof lab_path, "%s/bench_region_%d_labels.tif", dir, (int)getpid());
    long hwm0 = vm_hwm_kib();
    double t0 = now();
    if (make_image(img_path, side, tile) != 0) {
        fprintf(stderr, "bench_region: cannot write %s\n", img_path);
        return 1;
    }
    double t_make = now() - t0;
    long hwm_make = vm_hwm_kib();

    /* Region reads: blocks of `block` with `halo` on each side (clipped), raster order. */
    gpuseg_image_region_reader *r = NULL;
    if (gpuseg_image_region_open(img_path, NULL, &r) != GPUSEG_OK)
        return die("open");
    gpuseg_image *buf = NULL;
    uint32_t bmax = block + 2 * halo;
    if (gpuseg_image_create(bmax, bmax, 1, 1, GPUSEG_DTYPE_U8, &buf) != GPUSEG_OK)
        return die("create");
    t0 = now();
    size_t cache_peak = 0;
    for (uint32_t y = 0; y < side; y += block)
        for (uint32_t x = 0; x < side; x += block) {
            uint32_t x0 = x >= halo ? x - halo : 0, y0 = y >= halo ? y - halo : 0;
            uint32_t x1 = x + block + halo < side ? x + block + halo : side;
            uint32_t y1 = y + block + halo < side ? y + block + halo : side;
            buf->width = x1 - x0;
            buf->height = y1 - y0;
            if (gpuseg_image_region_read(r, 0, x0, y0, x1 - x0, y1 - y0, buf) != GPUSEG_OK)
                return die("region read");
            const unsigned char *p = buf->data;
            size_t last = (size_t)buf->width * buf->height - 1;
            if (p[0] != pixel(x0, y0) || p[last] != pixel(x1 - 1, y1 - 1)) {
                fprintf(stderr, "bench_region: wrong pixels in block (%u, %u)\n", x, y);
                return 1;
            }
            size_t c;
            gpuseg_image_region_stats(r, NULL, &c);
            cache_peak = c > cache_peak ? c : cache_peak;
        }
    double t_region = now() - t0;
    uint64_t decoded = 0;
    gpuseg_image_region_stats(r, &decoded, NULL);
    gpuseg_image_region_close(r);
    gpuseg_image_free(buf);
    long hwm_region = vm_hwm_kib();

    /* Labels written block by block (uint32, tiles of 512). */
    gpuseg_labels_tiff *w = NULL;
    if (gpuseg_labels_tiff_open(lab_path, side, side, GPUSEG_DTYPE_U32, 512, 0, &w) != GPUSEG_OK)
        return die("labels open");
    uint32_t *lab = malloc((size_t)block * block * sizeof *lab);
    if (!lab)
        return 1;
    t0 = now();
    for (uint32_t y = 0; y < side; y += block)
        for (uint32_t x = 0; x < side; x += block) {
            uint32_t bw = side - x < block ? side - x : block;
            uint32_t bh = side - y < block ? side - y : block;
            for (uint32_t yy = 0; yy < bh; yy++)
                for (uint32_t xx = 0; xx < bw; xx++)
                    lab[(size_t)yy * bw + xx] = ((y + yy) / 12) * (side / 12 + 1) + (x + xx) / 12;
            if (gpuseg_labels_tiff_write_block(w, x, y, bw, bh, lab) != GPUSEG_OK) {
                gpuseg_labels_tiff_abort(w);
                return die("labels write");
            }
        }
    if (gpuseg_labels_tiff_commit(w) != GPUSEG_OK)
        return die("labels commit");
    double t_write = now() - t0;
    free(lab);
    long hwm_write = vm_hwm_kib();

    /* The whole image at once, for comparison. */
    gpuseg_image *whole = NULL;
    t0 = now();
    if (gpuseg_image_read(img_path, &whole) != GPUSEG_OK)
        return die("whole read");
    double t_whole = now() - t0;
    gpuseg_image_free(whole);
    long hwm_whole = vm_hwm_kib();
    if (!keep) {
        unlink(img_path);
        unlink(lab_path);
    }
    printf("{\"side\": %u, \"tile\": %u, \"block\": %u, \"halo\": %u, \"image_mib\": %.1f,\n"
           " \"make\": {\"s\": %.2f, \"vmhwm_kib\": [%ld, %ld]},\n"
           " \"region_read\": {\"s\": %.2f, \"vmhwm_kib\": [%ld, %ld], \"cache_peak_kib\": %zu, "
           "\"tiles_decoded\": %llu, \"tiles\": %llu},\n"
           " \"labels_write_u32\": {\"s\": %.2f, \"vmhwm_kib\": [%ld, %ld]},\n"
           " \"whole_read\": {\"s\": %.2f, \"vmhwm_kib\": [%ld, %ld]}}\n",
           side, tile, block, halo, (double)side * side / 1048576.0, t_make, hwm0, hwm_make,
           t_region, hwm_make, hwm_region, cache_peak / 1024, (unsigned long long)decoded,
           (unsigned long long)((side + tile - 1) / tile) * ((side + tile - 1) / tile), t_write,
           hwm_region, hwm_write, t_whole, hwm_write, hwm_whole);
    return 0;
}
