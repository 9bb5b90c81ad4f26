/* flow/masks_internal.h: internals of flows -> masks (flow/masks.c, flow/masks_table.c): the
 * full pipeline with optional debug outputs for tests, and the host-side per-mask table steps
 * (Cellpose's size filter and renumbering rules), which are pure functions. */
#ifndef GPUSEG_MASKS_INTERNAL_H
#define GPUSEG_MASKS_INTERNAL_H

#include "flow/flow_internal.h"

/* Optional intermediate results (every pointer may be NULL; the caller allocates). */
typedef struct gpuseg__masks_debug {
    float *pos;           /* [2*H*W]: final Euler positions (y plane, x plane), followed pixels */
    uint32_t *pre_labels; /* [H*W]: get_masks output (before QC), labels 1..n_pre */
    double *flow_err;     /* [flow_err_cap]: flow error of pre-QC label l at index l-1 */
    uint32_t flow_err_cap;
    uint32_t n_pre;        /* out: number of pre-QC masks */
    uint32_t n_qc_removed; /* out: masks removed by the flow-error QC */
} gpuseg__masks_debug;

/* The whole pipeline on a device buffer flows (float32 [3*H*W]). On success *labels_out is a new
 * buffer (uint16 or uint32 [H*W], per *dtype) that the caller releases (clReleaseMemObject).
 * take_flows: the caller hands over its reference to flows, which is released as soon as the
 * first stage has read it (or on failure), so that the rest runs without it; else flows is only
 * read. Checks ctx's cancel flag before each stage (GPUSEG_CANCELLED, nothing left allocated, no
 * output) and reports progress with stage "masks" after each. Does not clear the error state. */
gpuseg_status gpuseg__masks_run(gpuseg_ctx *ctx, cl_mem flows, int take_flows, uint32_t H,
                                uint32_t W, const gpuseg_masks_params *p, gpuseg__masks_debug *dbg,
                                cl_mem *labels_out, gpuseg_dtype *dtype, uint32_t *n_masks);

/* A window of a larger image (blockwise segmentation, docs/blockwise.md): the H x W flows are
 * rows oy .. oy + H - 1 and columns ox .. ox + W - 1 of a gh x gw image. Euler positions are
 * the image's (so they round as in a whole-image run) and are clamped to the image;
 * max_size_fraction is relative to image_pixels; plain_size_filter: the size filters remove
 * the masks whose own count is below min_size (not Cellpose 3.1.1.3's position-for-value
 * quirk, which depends on the numbering of the whole image). */
typedef struct gpuseg__masks_window {
    uint32_t oy, ox, gh, gw;
    uint64_t image_pixels;
    int plain_size_filter;
} gpuseg__masks_window;

/* gpuseg__masks_run on a window (win NULL: the whole image, gpuseg__masks_run itself). */
gpuseg_status gpuseg__masks_run_window(gpuseg_ctx *ctx, cl_mem flows, int take_flows, uint32_t H,
                                       uint32_t W, const gpuseg__masks_window *win,
                                       const gpuseg_masks_params *p, gpuseg__masks_debug *dbg,
                                       cl_mem *labels_out, gpuseg_dtype *dtype, uint32_t *n_masks);

/* Hole filling on the device: for each label l in 1..n_labels with count[l] > 0 and box
 * box[4*l .. 4*l+3] = (min y, max y, min x, max x) (host tables indexed by value), the cells of
 * the box that are not l and not 4-connected to the box border through such cells take label l;
 * a cell in the holes of several masks goes to the one with the largest box (the outermost).
 * labels: uint32 [H*W] device buffer, rewritten in place. scratch_cap: bytes of box scratch per
 * launch (0: 64 MiB; more launches when the boxes need more; tests make it small). */
gpuseg_status gpuseg__masks_fill_holes(gpuseg_ctx *ctx, cl_mem labels, uint32_t H, uint32_t W,
                                       uint32_t n_labels, const uint32_t *count,
                                       const uint32_t *box, size_t scratch_cap);

/* Cellpose 3.1.1.3 fill_holes_and_remove_small_masks size filter, reproduced with its quirk:
 * the present values (0 included when count[0] > 0) are listed in increasing order, the first
 * entry is dropped, and for the j-th remaining entry (0-based) whose count is < min_size the
 * label VALUE j+1 is removed (not the entry itself; identical only without gaps). count[v] is the
 * pixel count of value v (v = 0..n_values). Sets remove[v] = 1 for removed values (others are
 * left as they are). */
void gpuseg__masks_size_filter(const uint32_t *count, uint32_t n_values, int32_t min_size,
                               uint8_t *remove);

/* Renumbering table by first appearance: values v in 1..n_values with count[v] > 0 and
 * !remove[v] (remove may be NULL) get 1..N in increasing order of first[v] (flat index of the
 * first pixel); map[v] = new value or 0, map[0] = 0. Returns N, or UINT32_MAX when out of host
 * memory. */
uint32_t gpuseg__masks_renumber(const uint32_t *count, const uint32_t *first, const uint8_t *remove,
                                uint32_t n_values, uint32_t *map);

/* idx = the permutation that PyTorch's CPU torch.argsort (stable=False) gives for key[0..n-1]:
 * libstdc++'s std::sort (introsort) replayed step by step, so equal keys come out in torch's
 * order, not in index order (flow/torch_argsort.c). */
void gpuseg__torch_argsort_u32(const uint32_t *key, uint32_t *idx, uint32_t n);

#endif
