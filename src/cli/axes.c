/* cli/axes.c: an image read with its Z and channel axes named (Cellpose's --z_axis and
 * --channel_axis): see axes.h. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "axes.h"
#include "cli.h"

/* Whether path ends in .npy (any case). */
static bool is_npy(const char *path) {
    size_t n = strlen(path);
    return n > 4 && strcasecmp(path + n - 4, ".npy") == 0;
}

gpuseg_status cli_read_with_axes(const char *path, int z_axis, int channel_axis,
                                 gpuseg_image **out) {
    *out = NULL;
    uint64_t shape[4];
    uint32_t ndim = 0;
    gpuseg_dtype dt;
    const void *data;
    gpuseg_npy *arr = NULL;
    gpuseg_image *img = NULL;
    gpuseg_status st;
    if (is_npy(path)) {
        if ((st = gpuseg_npy_read(path, &arr)) != GPUSEG_OK) {
            cli_error("%s", gpuseg_last_error());
            return st;
        }
        ndim = arr->ndim;
        memcpy(shape, arr->shape, sizeof shape);
        dt = arr->dtype;
        data = arr->data;
    } else {
        if ((st = gpuseg_image_read_ex(path, &cli_limits, &img)) != GPUSEG_OK) {
            cli_error("%s", gpuseg_last_error());
            return st;
        }
        if (img->pages > 1)
            shape[ndim++] = img->pages;
        shape[ndim++] = img->height;
        shape[ndim++] = img->width;
        if (img->channels > 1)
            shape[ndim++] = img->channels;
        dt = img->dtype;
        data = img->data;
    }
    /* the axes: z, c (or -1), then y, x */
    int ax[4] = {-1, -1, -1, -1}; /* z, c, y, x */
    const int given[2] = {z_axis, channel_axis};
    const char *const names[2] = {"--z-axis", "--channel-axis"};
    st = GPUSEG_INVALID_ARGUMENT;
    for (int k = 0; k < 2; k++) {
        if (given[k] == CLI_AXIS_NONE)
            continue;
        int a = given[k] < 0 ? given[k] + (int)ndim : given[k];
        if (a < 0 || a >= (int)ndim) {
            cli_error("%s: %s %d, but the image has %u axes (0..%u, or -%u..-1)", path, names[k],
                      given[k], ndim, ndim - 1, ndim);
            goto done;
        }
        ax[k] = a;
    }
    if (ax[0] >= 0 && ax[0] == ax[1]) {
        cli_error("%s: --z-axis and --channel-axis name the same axis (%d)", path, ax[0]);
        goto done;
    }
    int rest[4], nrest = 0;
    for (int a = 0; a < (int)ndim; a++)
        if (a != ax[0] && a != ax[1])
            rest[nrest++] = a;
    if (ax[1] < 0 && nrest == 4 - (ax[0] >= 0)) /* 4-D: channels last (other than Z) */
        ax[1] = rest[--nrest];
    if (ax[0] < 0 && nrest == 3) { /* Z first of the three left */
        ax[0] = rest[0];
        memmove(rest, rest + 1, 2 * sizeof *rest);
        nrest = 2;
    }
    if (nrest != 2) {
        cli_error("%s: an array of %u axes with --z-axis %s and --channel-axis %s leaves %d axes "
                  "for Y and X (2 needed)",
                  path, ndim, ax[0] >= 0 ? "given" : "not given",
                  ax[1] >= 0 ? "given" : "not given", nrest);
        goto done;
    }
    ax[2] = rest[0];
    ax[3] = rest[1];
    const uint64_t Z = ax[0] >= 0 ? shape[ax[0]] : 1, C = ax[1] >= 0 ? shape[ax[1]] : 1;
    const uint64_t H = shape[ax[2]], W = shape[ax[3]];
    if (C > 4) {
        cli_error("%s: --channel-axis gives %llu channels (at most 4)", path,
                  (unsigned long long)C);
        goto done;
    }
    if (Z > UINT32_MAX || H > UINT32_MAX || W > UINT32_MAX) {
        cli_error("%s: an axis of over 2^32 samples", path);
        st = GPUSEG_TOO_LARGE;
        goto done;
    }
    gpuseg_image *o = NULL;
    if ((st = gpuseg_image_create((uint32_t)W, (uint32_t)H, (uint32_t)C, (uint32_t)Z, dt, &o)) !=
        GPUSEG_OK) {
        cli_error("%s: %s", path, gpuseg_last_error());
        goto done;
    }
    /* strides of the source array, in samples */
    uint64_t stride[4] = {1, 1, 1, 1};
    for (int a = (int)ndim - 2; a >= 0; a--)
        stride[a] = stride[a + 1] * shape[a + 1];
    const uint64_t sz = ax[0] >= 0 ? stride[ax[0]] : 0, sc = ax[1] >= 0 ? stride[ax[1]] : 0;
    const uint64_t sy = stride[ax[2]], sx = stride[ax[3]];
    const size_t es = gpuseg_dtype_size(dt);
    char *dst = o->data;
    const char *src = data;
    for (uint64_t z = 0; z < Z; z++)
        for (uint64_t y = 0; y < H; y++)
            for (uint64_t x = 0; x < W; x++)
                for (uint64_t c = 0; c < C; c++, dst += es)
                    memcpy(dst, src + (z * sz + y * sy + x * sx + c * sc) * es, es);
    *out = o;
    st = GPUSEG_OK;
done:
    gpuseg_npy_free(arr);
    gpuseg_image_free(img);
    return st;
}
