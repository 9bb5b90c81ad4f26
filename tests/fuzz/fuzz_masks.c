/* tests/fuzz/fuzz_masks.c: libFuzzer target for flows -> masks (gpuseg_flows_to_masks) on
 * arbitrary small flow fields and parameters, on an OpenCL device (PoCL on the CPU), with one
 * context per process made at the first input. Input: H, W (1..48 each), a mode byte, the
 * parameters, then the [3, H, W] values (dY, dX, cellprob): raw float32 bit patterns (any NaN,
 * Inf, denormal) or, in the compact mode, one signed byte per value / 16, with -128 = NaN and
 * 127 = +Inf; short inputs repeat their values. Invariants checked: an error has a one-line
 * message and no result; a result is H x W, one channel, uint16 or uint32, its largest label is
 * n_masks, and with the size filter on (min_size > 0) every label 1..n_masks is present and the
 * labels appear in row-major order 1, 2, 3, ... (renumbering by first appearance). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memfd_create (fuzz_common.h) */
#endif
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"

#include "fuzz_check.h"
#include "gpuseg/gpuseg.h"

#define FUZZ_MASKS_MAX_SIDE 48u

int FUZZ_ENTRY(const uint8_t *data, size_t size);

/* The device context shared by every input of this process (NULL when none can be made: the
 * target then does nothing, and the replay test reports the skip before calling it). */
static gpuseg_ctx *fuzz_masks_ctx(void) {
    static gpuseg_ctx *ctx;
    static int tried;
    if (!tried) {
        tried = 1;
        if (gpuseg_ctx_create(NULL, &ctx) != GPUSEG_OK)
            ctx = NULL;
    }
    return ctx;
}

/* Frees the shared context (for the replay test; libFuzzer never returns to call it). */
__attribute__((unused)) static void fuzz_masks_release(void) {
    gpuseg_ctx_free(fuzz_masks_ctx());
}

static float fuzz_masks_f32(const uint8_t *p) {
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

int FUZZ_ENTRY(const uint8_t *data, size_t size) {
    /* header: H, W, mode, cellprob_threshold f32, flow_threshold f32, niter u16, min_size i16,
     * max_size_fraction f32 = 19 bytes; at least one value byte follows */
    enum { HDR = 19 };
    if (size < HDR + 1 || size > FUZZ_MAX_INPUT)
        return 0;
    gpuseg_ctx *ctx = fuzz_masks_ctx();
    if (!ctx)
        return 0;
    const uint32_t H = 1 + data[0] % FUZZ_MASKS_MAX_SIDE, W = 1 + data[1] % FUZZ_MASKS_MAX_SIDE;
    const int compact = data[2] & 1, defaults = data[2] & 2;
    gpuseg_masks_params p;
    gpuseg_masks_params_default(&p);
    if (!defaults) {
        p.cellprob_threshold = fuzz_masks_f32(data + 3);
        p.flow_threshold = fuzz_masks_f32(data + 7);
        p.niter = (uint32_t)(data[11] | data[12] << 8) % 512; /* Cellpose's 200 and beyond */
        p.min_size = (int16_t)(data[13] | data[14] << 8);
        p.max_size_fraction = fuzz_masks_f32(data + 15);
    }
    const uint8_t *v = data + HDR;
    const size_t nv = size - HDR, n = 3 * (size_t)H * W;
    float *flows = malloc(n * sizeof *flows);
    if (!flows)
        abort();
    bool finite = true;
    for (size_t i = 0; i < n; i++) {
        float f;
        if (compact) {
            int8_t b = (int8_t)v[i % nv];
            f = b == -128 ? NAN : b == 127 ? INFINITY : (float)b / 16.0f;
        } else {
            const size_t k = 4 * i;
            uint8_t q[4] = {v[k % nv], v[(k + 1) % nv], v[(k + 2) % nv], v[(k + 3) % nv]};
            f = fuzz_masks_f32(q);
        }
        finite = finite && isfinite(f);
        flows[i] = f;
    }
    gpuseg_image *labels = NULL;
    uint32_t n_masks = 0xdeadbeef;
    gpuseg_status st = gpuseg_flows_to_masks(ctx, flows, H, W, &p, &labels, &n_masks);
    free(flows);
    fuzz_check_status(st, NULL);
    if (st != GPUSEG_OK) {
        /* non-finite flows are refused; finite flows with any parameters must work */
        if (labels || (finite && st != GPUSEG_INVALID_ARGUMENT)) {
            fprintf(stderr, "fuzz_masks: %s (%s) on %ux%u %s flows\n", gpuseg_status_name(st),
                    gpuseg_last_error(), H, W, finite ? "finite" : "non-finite");
            abort();
        }
        return 0;
    }
    if (!finite || !labels || labels->width != W || labels->height != H || labels->channels != 1 ||
        labels->pages != 1 ||
        (labels->dtype != GPUSEG_DTYPE_U16 && labels->dtype != GPUSEG_DTYPE_U32) ||
        n_masks > (uint32_t)H * W)
        abort();
    uint32_t largest = 0, next = 1;
    uint8_t *seen = calloc((size_t)n_masks + 1, 1);
    if (!seen)
        abort();
    for (size_t i = 0; i < (size_t)H * W; i++) {
        uint32_t l = labels->dtype == GPUSEG_DTYPE_U16 ? ((const uint16_t *)labels->data)[i]
                                                       : ((const uint32_t *)labels->data)[i];
        if (l > n_masks)
            abort();
        largest = l > largest ? l : largest;
        if (l && !seen[l]) {
            seen[l] = 1;
            /* renumbered by first appearance unless the size filter is off (docs/masks.md) */
            if (p.min_size > 0 && l != next)
                abort();
            next++;
        }
    }
    if (largest != n_masks || (p.min_size > 0 && next != n_masks + 1))
        abort();
    free(seen);
    gpuseg_image_free(labels);
    return 0;
}
