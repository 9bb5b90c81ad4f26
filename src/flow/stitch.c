/* flow/stitch.c: Cellpose 3.1 utils.stitch3D (masks of consecutive planes linked by IoU) and
 * utils.fill_holes_and_remove_small_masks on a volume (fill_voids.fill per label's bounding box,
 * size filter with fastremap's first-appearance renumbering). Host-only; exact replicas of
 * Cellpose's rules, quirks included (gpuseg/volume.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/internal.h"
#include "gpuseg/volume.h"

/* Checks a Z x H x W label volume; *n receives the voxel count and *maxl the largest label. */
static gpuseg_status check_volume(const char *what, const uint32_t *labels, uint32_t Z, uint32_t H,
                                  uint32_t W, size_t *n, uint32_t *maxl) {
    if (!labels || Z == 0 || H == 0 || W == 0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: empty labels (%u x %u x %u) or NULL", what, Z, H, W);
    if (!gpuseg__mul4_size(Z, H, W, sizeof(uint64_t), n) || *n / sizeof(uint64_t) >= UINT32_MAX)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE, "%s: %u x %u x %u voxels are too many", what, Z,
                            H, W);
    *n /= sizeof(uint64_t);
    uint32_t m = 0;
    for (size_t i = 0; i < *n; i++)
        if (labels[i] > m)
            m = labels[i];
    if ((uint64_t)m > (uint64_t)*n)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "%s: label %u is larger than the %zu voxels of the volume", what, m,
                            *n);
    *maxl = m;
    return GPUSEG_OK;
}

static uint32_t plane_max(const uint32_t *p, size_t n) {
    uint32_t m = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] > m)
            m = p[i];
    return m;
}

/* The run of equal (a << 32 | b) keys that starts at s in the sorted keys: the pair (*ka, *kb)
 * and its IoU (overlap / union, from the masks' areas). Returns the index after the run. */
static size_t next_pair(const uint64_t *keys, size_t nk, size_t s, const uint64_t *area_a,
                        const uint64_t *area_b, uint32_t *ka, uint32_t *kb, double *iou) {
    size_t e = s;
    while (e < nk && keys[e] == keys[s])
        e++;
    *ka = (uint32_t)(keys[s] >> 32);
    *kb = (uint32_t)keys[s];
    uint64_t ov = e - s;
    *iou = (double)ov / (double)(area_a[*ka] + area_b[*kb] - ov);
    return e;
}

/* One step of stitch3D: plane a (z+1, labels 1..na) against the stitched plane b (z, labels
 * 1..nb), both non-empty. map[1..na] receives the new label of each a; *mmax grows by the new
 * labels. Scratch: area_a (na + 1), area_b (nb + 1), colmax (nb + 1), best (na + 1), bestb
 * (na + 1), keys (npix). */
static void stitch_pair(const uint32_t *a, const uint32_t *b, size_t npix, uint32_t na, uint32_t nb,
                        double thr, uint64_t *area_a, uint64_t *area_b, double *colmax,
                        double *best, uint32_t *bestb, uint64_t *keys, uint32_t *map,
                        uint64_t *mmax) {
    memset(area_a, 0, ((size_t)na + 1) * sizeof *area_a);
    memset(area_b, 0, ((size_t)nb + 1) * sizeof *area_b);
    size_t nk = 0;
    for (size_t i = 0; i < npix; i++) {
        area_a[a[i]]++;
        area_b[b[i]]++;
        if (a[i] && b[i])
            keys[nk++] = (uint64_t)a[i] << 32 | b[i];
    }
    if (nk)
        qsort(keys, nk, sizeof *keys, gpuseg__cmp_u64);
    /* iou[iou < thr] = 0; then the largest of each column b */
    for (uint32_t k = 0; k <= nb; k++)
        colmax[k] = 0.0;
    uint32_t ka, kb;
    double iou;
    for (size_t s = 0; s < nk;) {
        s = next_pair(keys, nk, s, area_a, area_b, &ka, &kb, &iou);
        if (!(iou < thr) && iou > colmax[kb])
            colmax[kb] = iou;
    }
    /* iou[iou < colmax] = 0; each row's argmax (first b of the largest) */
    for (uint32_t k = 0; k <= na; k++) {
        best[k] = 0.0;
        bestb[k] = 0;
    }
    for (size_t s = 0; s < nk;) {
        s = next_pair(keys, nk, s, area_a, area_b, &ka, &kb, &iou);
        if (!(iou < thr) && !(iou < colmax[kb]) && iou > best[ka]) { /* keys ascend in b */
            best[ka] = iou;
            bestb[ka] = kb;
        }
    }
    map[0] = 0;
    for (uint32_t k = 1; k <= na; k++)
        map[k] = best[k] > 0.0 ? bestb[k] : (uint32_t)++ * mmax;
}

gpuseg_status gpuseg_labels_stitch3d(uint32_t *labels, uint32_t Z, uint32_t H, uint32_t W,
                                     double threshold, uint32_t *n_masks) {
    gpuseg__clear_error(NULL);
    size_t n;
    uint32_t maxl;
    gpuseg_status st = check_volume("stitch3d", labels, Z, H, W, &n, &maxl);
    if (st != GPUSEG_OK)
        return st;
    if (!isfinite(threshold) || threshold < 0.0)
        return gpuseg__fail(NULL, GPUSEG_INVALID_ARGUMENT,
                            "stitch3d: threshold %g (a finite IoU >= 0, Cellpose's "
                            "stitch_threshold)",
                            threshold);
    const size_t npix = (size_t)H * W;
    /* stitched labels grow past the input's: at most the sum of the planes' largest labels */
    uint64_t total = 0;
    for (uint32_t z = 0; z < Z; z++)
        total += plane_max(labels + (size_t)z * npix, npix);
    if (total >= UINT32_MAX)
        return gpuseg__fail(NULL, GPUSEG_TOO_LARGE,
                            "stitch3d: the planes' labels add up to %llu, beyond uint32",
                            (unsigned long long)total);
    maxl = (uint32_t)total;
    uint64_t *area_a = malloc(((size_t)maxl + 1) * sizeof *area_a);
    uint64_t *area_b = malloc(((size_t)maxl + 1) * sizeof *area_b);
    double *colmax = malloc(((size_t)maxl + 1) * sizeof *colmax);
    double *best = malloc(((size_t)maxl + 1) * sizeof *best);
    uint32_t *bestb = malloc(((size_t)maxl + 1) * sizeof *bestb);
    uint32_t *map = malloc(((size_t)maxl + 1) * sizeof *map);
    uint64_t *keys = malloc(npix * sizeof *keys);
    if (!area_a || !area_b || !colmax || !best || !bestb || !map || !keys) {
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "stitch3d: tables for %u labels of %u x %u",
                          maxl, H, W);
        goto done;
    }
    uint64_t mmax = plane_max(labels, npix);
    int stitched = 0;
    for (uint32_t z = 0; z + 1 < Z; z++) {
        uint32_t *a = labels + (size_t)(z + 1) * npix;
        const uint32_t *b = labels + (size_t)z * npix;
        uint32_t na = plane_max(a, npix), nb = plane_max(b, npix);
        if (na == 0 || nb == 0) {
            if (!stitched) {
                mmax = na; /* Cellpose: masks[i + 1] kept, mmax = its max */
            } else {
                for (size_t i = 0; i < npix; i++)
                    if (a[i])
                        a[i] = (uint32_t)(a[i] + mmax);
                mmax += na;
            }
            continue;
        }
        stitch_pair(a, b, npix, na, nb, threshold, area_a, area_b, colmax, best, bestb, keys, map,
                    &mmax);
        for (size_t i = 0; i < npix; i++)
            a[i] = map[a[i]];
        stitched = 1;
    }
    if (n_masks)
        *n_masks = plane_max(labels, n);
done:
    free(area_a);
    free(area_b);
    free(colmax);
    free(best);
    free(bestb);
    free(map);
    free(keys);
    return st;
}

/* fastremap.unique(..., return_counts)[1][1:] < min_size -> fastremap.mask, then
 * fastremap.renumber (first appearance, 0 kept). count: maxl + 1 scratch, map: maxl + 1. */
static void size_filter(uint32_t *v, size_t n, uint32_t maxl, int32_t min_size, uint64_t *count,
                        uint32_t *map) {
    memset(count, 0, ((size_t)maxl + 1) * sizeof *count);
    for (size_t i = 0; i < n; i++)
        count[v[i]]++;
    /* the k-th present value after the first one (0 when there is background) is judged, and
     * label value k + 1 removed: Cellpose's index arithmetic */
    memset(map, 0, ((size_t)maxl + 1) * sizeof *map); /* map[x] = 1: remove value x */
    uint64_t k = 0;
    int first = 1;
    for (uint64_t x = 0; x <= maxl; x++) {
        if (!count[x])
            continue;
        if (first) {
            first = 0;
            continue;
        }
        if (count[x] < (uint64_t)min_size && k + 1 <= maxl)
            map[k + 1] = 1;
        k++;
    }
    for (size_t i = 0; i < n; i++)
        if (map[v[i]])
            v[i] = 0;
    /* renumber by first appearance: map[x] = new label + 1 once seen (0: not yet) */
    memset(map, 0, ((size_t)maxl + 1) * sizeof *map);
    uint32_t next = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t x = v[i];
        if (!x)
            continue;
        if (!map[x])
            map[x] = ++next;
        v[i] = map[x];
    }
}

typedef struct box {
    uint32_t z0, z1, y0, y1, x0, x1; /* inclusive; z0 > z1: absent */
} box;

/* fill_voids.fill of (box == value) and the relabelling to `to`: voxels of the box that are
 * the value, or that are not 6-connected to a face of the box through voxels that are not it.
 * seen/stack: scratch of the box's volume. */
static void fill_one(uint32_t *v, uint32_t H, uint32_t W, const box *b, uint32_t value, uint32_t to,
                     unsigned char *seen, size_t *stack) {
    const uint32_t dz = b->z1 - b->z0 + 1, dy = b->y1 - b->y0 + 1, dx = b->x1 - b->x0 + 1;
    const size_t nb = (size_t)dz * dy * dx;
#define AT(z, y, x) (((size_t)(b->z0 + (z)) * H + (b->y0 + (y))) * W + (b->x0 + (x)))
    size_t sp = 0;
    for (uint32_t z = 0; z < dz; z++)
        for (uint32_t y = 0; y < dy; y++)
            for (uint32_t x = 0; x < dx; x++) {
                size_t i = ((size_t)z * dy + y) * dx + x;
                int in = v[AT(z, y, x)] == value;
                seen[i] = in ? 2 : 0; /* 2: the mask, 1: reached from a face, 0: not yet */
                if (!in &&
                    (z == 0 || y == 0 || x == 0 || z == dz - 1 || y == dy - 1 || x == dx - 1)) {
                    seen[i] = 1;
                    stack[sp++] = i;
                }
            }
    while (sp) {
        size_t i = stack[--sp];
        uint32_t x = (uint32_t)(i % dx), y = (uint32_t)(i / dx % dy), z = (uint32_t)(i / dx / dy);
        size_t nbr[6];
        int k = 0;
        if (x > 0)
            nbr[k++] = i - 1;
        if (x + 1 < dx)
            nbr[k++] = i + 1;
        if (y > 0)
            nbr[k++] = i - dx;
        if (y + 1 < dy)
            nbr[k++] = i + dx;
        if (z > 0)
            nbr[k++] = i - (size_t)dx * dy;
        if (z + 1 < dz)
            nbr[k++] = i + (size_t)dx * dy;
        for (int t = 0; t < k; t++)
            if (seen[nbr[t]] == 0) {
                seen[nbr[t]] = 1;
                stack[sp++] = nbr[t];
            }
    }
    for (size_t i = 0; i < nb; i++)
        if (seen[i] != 1) {
            uint32_t x = (uint32_t)(i % dx), y = (uint32_t)(i / dx % dy),
                     z = (uint32_t)(i / dx / dy);
            v[AT(z, y, x)] = to;
        }
#undef AT
}

gpuseg_status gpuseg_labels_fill_holes_3d(uint32_t *labels, uint32_t Z, uint32_t H, uint32_t W,
                                          int32_t min_size, uint32_t *n_masks) {
    gpuseg__clear_error(NULL);
    size_t n;
    uint32_t maxl;
    gpuseg_status st = check_volume("fill holes", labels, Z, H, W, &n, &maxl);
    if (st != GPUSEG_OK)
        return st;
    uint64_t *count = malloc(((size_t)maxl + 1) * sizeof *count);
    uint32_t *map = malloc(((size_t)maxl + 1) * sizeof *map);
    box *boxes = malloc(((size_t)maxl + 1) * sizeof *boxes);
    unsigned char *seen = NULL;
    size_t *stack = NULL;
    if (!count || !map || !boxes) {
        st = gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "fill holes: tables for %u labels", maxl);
        goto done;
    }
    if (min_size > 0)
        size_filter(labels, n, maxl, min_size, count, map);
    /* scipy.ndimage.find_objects on the array as it is now */
    uint32_t m = plane_max(labels, n);
    for (uint32_t k = 0; k <= m; k++)
        boxes[k] = (box){UINT32_MAX, 0, UINT32_MAX, 0, UINT32_MAX, 0};
    size_t maxvol = 0;
    for (uint32_t z = 0; z < Z; z++)
        for (uint32_t y = 0; y < H; y++)
            for (uint32_t x = 0; x < W; x++) {
                uint32_t l = labels[((size_t)z * H + y) * W + x];
                if (!l)
                    continue;
                box *b = &boxes[l];
                b->z0 = z < b->z0 ? z : b->z0;
                b->z1 = z > b->z1 ? z : b->z1;
                b->y0 = y < b->y0 ? y : b->y0;
                b->y1 = y > b->y1 ? y : b->y1;
                b->x0 = x < b->x0 ? x : b->x0;
                b->x1 = x > b->x1 ? x : b->x1;
            }
    for (uint32_t k = 1; k <= m; k++)
        if (boxes[k].z0 != UINT32_MAX) {
            const box *b = &boxes[k];
            size_t vol = (size_t)(b->z1 - b->z0 + 1) * (b->y1 - b->y0 + 1) * (b->x1 - b->x0 + 1);
            if (vol > maxvol)
                maxvol = vol;
        }
    if (maxvol) {
        seen = malloc(maxvol);
        stack = malloc(maxvol * sizeof *stack);
        if (!seen || !stack) {
            st =
                gpuseg__fail(NULL, GPUSEG_OUT_OF_MEMORY, "fill holes: a box of %zu voxels", maxvol);
            goto done;
        }
    }
    uint32_t j = 0;
    for (uint32_t k = 1; k <= m; k++)
        if (boxes[k].z0 != UINT32_MAX)
            fill_one(labels, H, W, &boxes[k], k, ++j, seen, stack);
    if (min_size > 0) {
        uint32_t m2 = plane_max(labels, n);
        size_filter(labels, n, m2, min_size, count, map);
    }
    if (n_masks)
        *n_masks = plane_max(labels, n);
done:
    free(count);
    free(map);
    free(boxes);
    free(seen);
    free(stack);
    return st;
}
