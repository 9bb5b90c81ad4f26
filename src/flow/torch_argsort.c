/* flow/torch_argsort.c: the permutation of PyTorch's CPU torch.argsort (stable=False) of a 1-D
 * integer tensor, ties included. PyTorch's CPU sort kernel (aten/src/ATen/native/cpu/
 * SortingKernel.cpp) sorts (value, index) pairs with std::sort and a comparator on the values
 * alone when stable is False; its Linux builds use libstdc++, whose std::sort is an introsort
 * (median-of-three quicksort with an unguarded partition down to runs of 16, heapsort past a
 * depth of 2 floor(log2 n), then one insertion sort). That algorithm is deterministic, so
 * "unstable" means a fixed, reproducible order of equal values, which this file replays step by
 * step (libstdc++'s __introsort_loop, __move_median_to_first, __unguarded_partition,
 * __final_insertion_sort, __make_heap / __sort_heap / __adjust_heap / __push_heap).
 * Checked against torch 2.x's argsort (CPU, Linux wheel) on 3,000 random int32 arrays of up to
 * 4,000 values with many ties, and on McIlroy's quicksort adversary (values halved: ties), which
 * drives it into the heapsort branch: the same permutation every time; tests/test_vol.c keeps
 * three such cases. Cellpose's get_masks_torch paints seeds in this order (docs/masks.md,
 * "Volumes"). */
#include <stddef.h>
#include <stdint.h>

#include "flow/masks_internal.h"

#define TA_THRESHOLD 16 /* libstdc++ _S_threshold */

typedef struct ta {
    const uint32_t *key;
    uint32_t *a;
} ta;

static int ta_lt(const ta *t, ptrdiff_t i, ptrdiff_t j) {
    return t->key[t->a[i]] < t->key[t->a[j]];
}

static void ta_swap(ta *t, ptrdiff_t i, ptrdiff_t j) {
    const uint32_t v = t->a[i];
    t->a[i] = t->a[j];
    t->a[j] = v;
}

/* __adjust_heap(first, hole, len, value) followed by its __push_heap. */
static void ta_adjust_heap(ta *t, ptrdiff_t first, ptrdiff_t hole, ptrdiff_t len, uint32_t value) {
    uint32_t *a = t->a;
    const ptrdiff_t top = hole;
    ptrdiff_t second = hole;
    while (second < (len - 1) / 2) {
        second = 2 * (second + 1);
        if (ta_lt(t, first + second, first + second - 1))
            second--;
        a[first + hole] = a[first + second];
        hole = second;
    }
    if ((len & 1) == 0 && second == (len - 2) / 2) {
        second = 2 * (second + 1);
        a[first + hole] = a[first + second - 1];
        hole = second - 1;
    }
    ptrdiff_t parent = (hole - 1) / 2;
    while (hole > top && t->key[a[first + parent]] < t->key[value]) {
        a[first + hole] = a[first + parent];
        hole = parent;
        parent = (hole - 1) / 2;
    }
    a[first + hole] = value;
}

/* __partial_sort(first, last, last): __make_heap then __sort_heap. */
static void ta_heapsort(ta *t, ptrdiff_t first, ptrdiff_t last) {
    const ptrdiff_t len = last - first;
    if (len >= 2)
        for (ptrdiff_t parent = (len - 2) / 2;; parent--) {
            ta_adjust_heap(t, first, parent, len, t->a[first + parent]);
            if (parent == 0)
                break;
        }
    while (last - first > 1) {
        last--;
        const uint32_t v = t->a[last];
        t->a[last] = t->a[first];
        ta_adjust_heap(t, first, 0, last - first, v);
    }
}

static void ta_median_to_first(ta *t, ptrdiff_t res, ptrdiff_t x, ptrdiff_t y, ptrdiff_t z) {
    if (ta_lt(t, x, y)) {
        if (ta_lt(t, y, z))
            ta_swap(t, res, y);
        else if (ta_lt(t, x, z))
            ta_swap(t, res, z);
        else
            ta_swap(t, res, x);
    } else if (ta_lt(t, x, z))
        ta_swap(t, res, x);
    else if (ta_lt(t, y, z))
        ta_swap(t, res, z);
    else
        ta_swap(t, res, y);
}

static ptrdiff_t ta_partition(ta *t, ptrdiff_t first, ptrdiff_t last, ptrdiff_t pivot) {
    for (;;) {
        while (ta_lt(t, first, pivot))
            first++;
        last--;
        while (ta_lt(t, pivot, last))
            last--;
        if (!(first < last))
            return first;
        ta_swap(t, first, last);
        first++;
    }
}

static void ta_introsort_loop(ta *t, ptrdiff_t first, ptrdiff_t last, int depth) {
    while (last - first > TA_THRESHOLD) {
        if (depth == 0) {
            ta_heapsort(t, first, last);
            return;
        }
        depth--;
        const ptrdiff_t mid = first + (last - first) / 2;
        ta_median_to_first(t, first, first + 1, mid, last - 1);
        const ptrdiff_t cut = ta_partition(t, first + 1, last, first);
        ta_introsort_loop(t, cut, last, depth);
        last = cut;
    }
}

/* __unguarded_linear_insert(i) */
static void ta_linear_insert(ta *t, ptrdiff_t i) {
    uint32_t *a = t->a;
    const uint32_t v = a[i];
    ptrdiff_t next = i - 1;
    while (t->key[v] < t->key[a[next]]) {
        a[i] = a[next];
        i = next;
        next--;
    }
    a[i] = v;
}

/* __insertion_sort(first, last) */
static void ta_insertion_sort(ta *t, ptrdiff_t first, ptrdiff_t last) {
    if (first == last)
        return;
    for (ptrdiff_t i = first + 1; i < last; i++) {
        if (ta_lt(t, i, first)) {
            const uint32_t v = t->a[i];
            for (ptrdiff_t j = i; j > first; j--)
                t->a[j] = t->a[j - 1];
            t->a[first] = v;
        } else
            ta_linear_insert(t, i);
    }
}

void gpuseg__torch_argsort_u32(const uint32_t *key, uint32_t *idx, uint32_t n) {
    for (uint32_t i = 0; i < n; i++)
        idx[i] = i;
    if (n < 2)
        return;
    ta t = {key, idx};
    int lg = 0;
    while (((uint64_t)n >> (lg + 1)) != 0)
        lg++;
    ta_introsort_loop(&t, 0, (ptrdiff_t)n, 2 * lg);
    if (n > TA_THRESHOLD) {
        ta_insertion_sort(&t, 0, TA_THRESHOLD);
        for (ptrdiff_t i = TA_THRESHOLD; i < (ptrdiff_t)n; i++)
            ta_linear_insert(&t, i);
    } else
        ta_insertion_sort(&t, 0, (ptrdiff_t)n);
}
