/* flow/masks_table.c: the host-side per-mask table steps of flows -> masks: Cellpose 3.1.1.3's
 * size filter (with its position-for-value quirk) and renumbering by first appearance. These are
 * sequential by nature and touch one entry per mask (a few thousand), so they run on the host
 * between device stages (docs/masks.md). */
#include <stdlib.h>

#include "flow/masks_internal.h"

void gpuseg__masks_size_filter(const uint32_t *count, uint32_t n_values, int32_t min_size,
                               uint8_t *remove) {
    if (min_size <= 0)
        return;
    /* fastremap.unique(masks, return_counts=True)[1][1:]: counts of the present values in
     * increasing order, without the first one (background when it is present). */
    int dropped = 0;
    uint32_t j = 0;
    for (uint32_t v = 0; v <= n_values; v++) {
        if (count[v] == 0)
            continue;
        if (!dropped) {
            dropped = 1;
            continue;
        }
        if (count[v] < (uint32_t)min_size && j + 1 <= n_values)
            remove[j + 1] = 1; /* np.nonzero(counts < min_size)[0] + 1 is taken as a value */
        j++;
    }
}

typedef struct {
    uint32_t first, value;
} first_key;

static int cmp_first(const void *a, const void *b) {
    const first_key *x = a, *y = b;
    if (x->first != y->first)
        return x->first < y->first ? -1 : 1;
    return (x->value > y->value) - (x->value < y->value);
}

uint32_t gpuseg__masks_renumber(const uint32_t *count, const uint32_t *first, const uint8_t *remove,
                                uint32_t n_values, uint32_t *map) {
    first_key *keys = malloc(((size_t)n_values + 1) * sizeof *keys);
    if (!keys)
        return UINT32_MAX;
    uint32_t n = 0;
    map[0] = 0;
    for (uint32_t v = 1; v <= n_values; v++) {
        map[v] = 0;
        if (count[v] > 0 && !(remove && remove[v]))
            keys[n++] = (first_key){first[v], v};
    }
    qsort(keys, n, sizeof *keys, cmp_first);
    for (uint32_t k = 0; k < n; k++)
        map[keys[k].value] = k + 1;
    free(keys);
    return n;
}
