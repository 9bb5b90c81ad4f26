/* flow/edges.c: Cellpose 3.1 utils.remove_edge_masks (the CLI's --exclude_on_edges): every mask
 * whose bounding box touches the image border is removed, and the remaining labels are renumbered
 * 1..n in the order of their old values (np.unique's return_inverse). Host-only. */
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "gpuseg/flows.h"

/* The distinct label values (0 included when present) in increasing order: a table indexed by
 * value when the largest is small, else a sorted copy. *vals: malloc'd. */
static gpuseg_status distinct_labels(const uint32_t *labels, size_t npix, uint32_t **vals,
                                     size_t *n) {
    uint32_t maxl = 0;
    for (size_t i = 0; i < npix; i++)
        if (labels[i] > maxl)
            maxl = labels[i];
    uint32_t *v;
    size_t k = 0;
    if ((uint64_t)maxl <= 4 * (uint64_t)npix + 65536) {
        unsigned char *seen = calloc((size_t)maxl + 1, 1);
        v = seen ? malloc(((size_t)maxl + 1) * sizeof *v) : NULL;
        if (v) {
            for (size_t i = 0; i < npix; i++)
                seen[labels[i]] = 1;
            for (size_t l = 0; l <= maxl; l++)
                if (seen[l])
                    v[k++] = (uint32_t)l;
        }
        free(seen);
    } else {
        v = malloc(npix * sizeof *v);
        if (v) {
            memcpy(v, labels, npix * sizeof *v);
            qsort(v, npix, sizeof *v, gpuseg__cmp_u32);
            for (size_t i = 0; i < npix; i++)
                if (k == 0 || v[k - 1] != v[i])
                    v[k++] = v[i];
        }
    }
    if (!v)
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "remove edge masks: label table");
    *vals = v;
    *n = k;
    return GPUSEG_OK;
}

gpuseg_status gpuseg_labels_remove_edge_masks(uint32_t *labels, uint32_t H, uint32_t W,
                                              uint32_t *n_masks) {
    gpuseg__clear_error(NULL);
    if (!labels || H == 0 || W == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "remove edge masks: empty labels (%u x %u) or NULL", H, W);
    size_t npix;
    if (!gpuseg__mul_size(H, W, &npix))
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "remove edge masks: %u x %u overflows", H, W);
    uint32_t *vals = NULL;
    size_t nv = 0;
    gpuseg_status st = distinct_labels(labels, npix, &vals, &nv);
    if (st != GPUSEG_OK)
        return st;
    /* map[j]: the new label of vals[j]; a mask touches the border iff one of its pixels lies on
     * it (its bounding box then starts at 0 or ends at the size: Cellpose's test). */
    uint32_t *map = calloc(nv, sizeof *map);
    if (!map) {
        free(vals);
        return gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "remove edge masks: table of %zu labels",
                            nv);
    }
    const uint32_t EDGE = UINT32_MAX;
    for (uint32_t x = 0; x < W; x++) {
        map[gpuseg__find_u32(vals, nv, labels[x])] = EDGE;
        map[gpuseg__find_u32(vals, nv, labels[(size_t)(H - 1) * W + x])] = EDGE;
    }
    for (uint32_t y = 0; y < H; y++) {
        map[gpuseg__find_u32(vals, nv, labels[(size_t)y * W])] = EDGE;
        map[gpuseg__find_u32(vals, nv, labels[(size_t)y * W + W - 1])] = EDGE;
    }
    uint32_t next = 0;
    for (size_t j = 0; j < nv; j++)
        map[j] = vals[j] != 0 && map[j] != EDGE ? ++next : 0;
    for (size_t i = 0; i < npix; i++)
        labels[i] = map[gpuseg__find_u32(vals, nv, labels[i])];
    free(map);
    free(vals);
    if (n_masks)
        *n_masks = next;
    return GPUSEG_OK;
}
