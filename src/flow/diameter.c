/* flow/diameter.c: the diameter of a label image as Cellpose 3.1 utils.diameters defines it:
 * median over masks of sqrt(pixel count), divided by sqrt(pi)/2. Host-only. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "gpuseg/flows.h"

/* Pixel counts of the distinct values in increasing value order (background included when
 * present), as fastremap.unique(return_counts=True). *counts: malloc'd, free() it. */
static gpuseg_status value_counts(const uint32_t *labels, size_t npix, uint64_t **counts,
                                  size_t *n) {
    uint32_t maxl = 0;
    for (size_t i = 0; i < npix; i++)
        if (labels[i] > maxl)
            maxl = labels[i];
    *counts = NULL;
    *n = 0;
    if ((uint64_t)maxl <= 4 * (uint64_t)npix + 65536) {
        uint64_t *table = calloc((size_t)maxl + 1, sizeof *table);
        if (!table)
            return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "diameter: table of %u labels", maxl);
        for (size_t i = 0; i < npix; i++)
            table[labels[i]]++;
        size_t k = 0;
        for (size_t l = 0; l <= maxl; l++)
            if (table[l])
                table[k++] = table[l];
        *counts = table;
        *n = k;
        return GPUSEG_OK;
    }
    uint32_t *u = malloc(npix * sizeof *u);
    uint64_t *c = malloc(npix * sizeof *c);
    if (!u || !c) {
        free(u);
        free(c);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "diameter: %zu pixels", npix);
    }
    memcpy(u, labels, npix * sizeof *u);
    qsort(u, npix, sizeof *u, gpuseg__cmp_u32);
    size_t k = 0;
    for (size_t i = 0; i < npix; i++) {
        if (i == 0 || u[i] != u[i - 1])
            c[k++] = 0;
        c[k - 1]++;
    }
    free(u);
    *counts = c;
    *n = k;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_labels_diameter(const uint32_t *labels, uint32_t H, uint32_t W, double *diam) {
    gpuseg__clear_error(NULL);
    if (!labels || !diam)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "diameter: NULL argument");
    *diam = 0.0;
    if (H == 0 || W == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT, "diameter: empty image (%u x %u)", H, W);
    if ((uint64_t)H * W > GPUSEG_MAX_IMAGE_PIXELS)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "diameter: %u x %u pixels exceed the limit", H,
                            W);
    uint64_t *counts = NULL;
    size_t n = 0;
    gpuseg_status st = value_counts(labels, (size_t)H * W, &counts, &n);
    if (st != GPUSEG_OK)
        return st;
    /* Cellpose drops the first distinct value as "background" even when the image has no 0
     * (every pixel labelled): then the smallest label's count is dropped. Reproduced. */
    if (n <= 1) {
        free(counts);
        return GPUSEG_OK; /* no mask: numpy's median of nothing is NaN, which Cellpose maps to 0 */
    }
    uint64_t *c = counts + 1;
    const size_t m = n - 1;
    qsort(c, m, sizeof *c, gpuseg__cmp_u64);
    /* median of sqrt(count): sqrt is monotone, so take it of the middle count(s); an even number
     * of masks averages the two middle values as numpy does ((a + b) / 2). */
    double md;
    if (m % 2)
        md = sqrt((double)c[m / 2]);
    else
        md = (sqrt((double)c[m / 2 - 1]) + sqrt((double)c[m / 2])) / 2.0;
    /* pow, not sqrt: Python evaluates np.pi**0.5 with C pow. */
    *diam = md / (pow(3.14159265358979323846, 0.5) / 2.0);
    free(counts);
    return GPUSEG_OK;
}
