/* tests/fuzz/fuzz_image.c: libFuzzer target for image reading as gpuseg drives it: the bytes
 * become a file that gpuseg_image_info_read and gpuseg_image_read open, so format detection by
 * magic and every reader behind it (PNG/JPEG/BMP/PNM/GIF through stb, TIFF through libtiff,
 * NumPy .npy) see arbitrary input. The header and the decoded image must agree. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create */
#endif
#include "fuzz_common.h"

#include "fuzz_check.h"
#include "gpuseg/image.h"

int FUZZ_ENTRY(const uint8_t *data, size_t size);

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
    if (size > FUZZ_MAX_INPUT)
        return 0;
    const char *path = fuzz_file(data, size);
    if (!path)
        return 0;
    gpuseg_image_info info;
    gpuseg_status st = gpuseg_image_info_read(path, &info);
    fuzz_check_status(st, path);
    if (st != GPUSEG_OK)
        return 0;
    /* Decode only what fits the cap (see FUZZ_MAX_DECODED); overflow-safe in 64 bits since
     * each factor is below 2^32 and the first product is checked before the next. */
    uint64_t bytes = (uint64_t)info.width * info.height;
    if (bytes > FUZZ_MAX_DECODED)
        return 0;
    bytes *= (uint64_t)info.channels * gpuseg_dtype_size(info.dtype);
    if (bytes > FUZZ_MAX_DECODED || bytes * info.pages > FUZZ_MAX_DECODED)
        return 0;
    gpuseg_image *img = NULL;
    st = gpuseg_image_read(path, &img);
    fuzz_check_status(st, path);
    if (st == GPUSEG_OK) {
        if (!img || !img->data || img->width != info.width || img->height != info.height ||
            img->channels != info.channels || img->pages != info.pages || img->dtype != info.dtype)
            abort();
        /* touch every byte so a short allocation shows up under ASan */
        size_t n = (size_t)img->width * img->height * img->channels * img->pages *
                   gpuseg_dtype_size(img->dtype);
        volatile unsigned char sink = 0;
        for (size_t i = 0; i < n; i++)
            sink ^= ((const unsigned char *)img->data)[i];
        (void)sink;
    } else if (img) {
        abort(); /* a failed read must not hand out an image */
    }
    gpuseg_image_free(img);
    return 0;
}
