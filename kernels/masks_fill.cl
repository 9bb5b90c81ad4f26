/* kernels/masks_fill.cl: the per-mask stages of flows -> masks, one work-group per mask over its
 * bounding box: the flow-error of a mask (Cellpose metrics.flow_error: mean squared difference
 * between the ideal flows of the mask and the network flows / 5) and hole filling (Cellpose
 * fill_voids: background of the box not 4-connected to the box border). Work-groups must be
 * launched with local size MASKS_WG (a build option, src/core/kernel_defs.h). FP contraction is
 * off for the exact sums; the pair arithmetic (ff) is kernels/common.h's. */
#pragma OPENCL FP_CONTRACT OFF

#ifndef MASKS_WG
#error "MASKS_WG: a build option from the host (src/core/kernel_defs.h)"
#endif

/* (a - b)^2 as a pair, a and b float: the difference is exact as a pair, its square nearly. */
static inline ff sqdiff(float a, float b) {
    const ff d = ff_two_sum(a, -b);
    ff r = ff_two_prod(d.h, d.h);
    r.l = fma(2.0f * d.h, d.l, r.l);
    return r;
}

/* Work-group g handles label g+1 (box[4g..4g+3] = y0, y1, x0, x1). sums[4g..4g+3] = sum over the
 * mask of (muY - dY/5)^2 as (hi, lo), then the same for X. S: the scaled flows dP/5 of stage 1
 * (masks_prep or masks_prep_packed; every mask pixel is a followed pixel, where they are exactly
 * dP/5), dY/5 of pixel (y, x) at S[oy + y * rs + x * es] and dX/5 at S[ox + y * rs + x * es];
 * mu: ideal [2, n]. */
__kernel __attribute__((reqd_work_group_size(MASKS_WG, 1, 1))) void
masks_qc_sums(__global const uint *labels, const uint W, const uint n, __global const float *S,
              const uint oy, const uint ox, const uint rs, const uint es, __global const float *mu,
              __global const uint *box, const uint n_labels, __global float *sums) {
    __local float acc[4][MASKS_WG];
    const uint g = get_group_id(0), lid = get_local_id(0);
    if (g >= n_labels)
        return; /* whole work-group leaves together */
    const uint l = g + 1;
    const uint y0 = box[4 * g], y1 = box[4 * g + 1], x0 = box[4 * g + 2], x1 = box[4 * g + 3];
    ff sy = {0.0f, 0.0f}, sx = {0.0f, 0.0f};
    if (y0 <= y1 && x0 <= x1) {
        const uint bw = x1 - x0 + 1;
        const ulong area = (ulong)(y1 - y0 + 1) * bw;
        for (ulong k = lid; k < area; k += MASKS_WG) {
            const uint y = y0 + (uint)(k / bw), x = x0 + (uint)(k % bw);
            const size_t i = (size_t)y * W + x;
            if (labels[i] != l)
                continue;
            const size_t s = (size_t)y * rs + (size_t)x * es;
            sy = ff_add(sy, sqdiff(mu[i], S[oy + s]));
            sx = ff_add(sx, sqdiff(mu[n + i], S[ox + s]));
        }
    }
    acc[0][lid] = sy.h;
    acc[1][lid] = sy.l;
    acc[2][lid] = sx.h;
    acc[3][lid] = sx.l;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint s = MASKS_WG / 2; s > 0; s >>= 1) {
        if (lid < s) {
            ff a = {acc[0][lid], acc[1][lid]}, b = {acc[0][lid + s], acc[1][lid + s]};
            ff c = {acc[2][lid], acc[3][lid]}, d = {acc[2][lid + s], acc[3][lid + s]};
            a = ff_add(a, b);
            c = ff_add(c, d);
            acc[0][lid] = a.h;
            acc[1][lid] = a.l;
            acc[2][lid] = c.h;
            acc[3][lid] = c.l;
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    if (lid == 0) {
        sums[4 * g + 0] = acc[0][0];
        sums[4 * g + 1] = acc[1][0];
        sums[4 * g + 2] = acc[2][0];
        sums[4 * g + 3] = acc[3][0];
    }
}

/* One sweep of hole filling along a line of a box's scratch: the len cells start, start + step,
 * ... A free cell (1) that follows a reached cell (2) with no cell of the label (0) between
 * becomes reached. Returns whether any did. */
static inline int sweep(__global uchar *S, const size_t start, const long step, const uint len) {
    int carry = 0, changed = 0;
    for (uint k = 0; k < len; k++) {
        __global uchar *cell = S + (long)start + (long)k * step;
        const uchar v = *cell;
        if (v == 0)
            carry = 0;
        else if (v == 2)
            carry = 1;
        else if (carry) {
            *cell = 2;
            changed = 1;
        }
    }
    return changed;
}

/* Hole filling. Job j (work-group j of this launch, job index base + j) is the row
 * jobs[8*(base+j) ..]: label, y0, y1, x0, x1, scratch offset, priority (>= 1). In the box, the
 * cells that are not the label are free; free cells on the box border are reached, and reach
 * spreads 4-connected through free cells (alternating row and column sweeps until nothing
 * changes). Free cells never reached are holes: fillprio[cell] = max(fillprio, priority). The
 * host gives larger boxes larger priorities, so a hole inside nested masks goes to the outermost
 * one, as Cellpose's sequential per-label filling ends up doing. scratch: one byte per box cell
 * (0 = the label, 1 = free, 2 = reached). */
__kernel __attribute__((reqd_work_group_size(MASKS_WG, 1, 1))) void
masks_fill_holes(__global const uint *labels, const uint W, __global const uint *jobs,
                 const uint base, const uint n_jobs, __global uchar *scratch,
                 __global uint *fillprio) {
    __local int changed[1];
    const uint j = get_group_id(0), lid = get_local_id(0);
    if (j >= n_jobs)
        return;
    __global const uint *job = jobs + 8 * (size_t)(base + j);
    const uint l = job[0], y0 = job[1], y1 = job[2], x0 = job[3], x1 = job[4];
    const uint prio = job[6];
    __global uchar *S = scratch + job[5];
    const uint bh = y1 - y0 + 1, bw = x1 - x0 + 1;
    const ulong area = (ulong)bh * bw;
    for (ulong k = lid; k < area; k += MASKS_WG) {
        const uint r = (uint)(k / bw), c = (uint)(k % bw);
        const uint lab = labels[(size_t)(y0 + r) * W + x0 + c];
        uchar v = 0;
        if (lab != l)
            v = (r == 0 || c == 0 || r == bh - 1 || c == bw - 1) ? 2 : 1;
        S[k] = v;
    }
    barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
    for (;;) {
        if (lid == 0)
            changed[0] = 0;
        barrier(CLK_LOCAL_MEM_FENCE);
        /* rows: left to right, then right to left */
        for (uint r = lid; r < bh; r += MASKS_WG) {
            const size_t row = (size_t)r * bw;
            if (sweep(S, row, 1, bw) | sweep(S, row + bw - 1, -1, bw))
                changed[0] = 1;
        }
        barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
        /* columns: top to bottom, then bottom to top */
        for (uint c = lid; c < bw; c += MASKS_WG) {
            if (sweep(S, c, (long)bw, bh) | sweep(S, (size_t)(bh - 1) * bw + c, -(long)bw, bh))
                changed[0] = 1;
        }
        barrier(CLK_GLOBAL_MEM_FENCE | CLK_LOCAL_MEM_FENCE);
        /* everyone reads the flag before lid 0 clears it at the top of the next round */
        const int again = changed[0];
        barrier(CLK_LOCAL_MEM_FENCE);
        if (!again)
            break;
    }
    for (ulong k = lid; k < area; k += MASKS_WG) {
        if (S[k] == 1) {
            const uint r = (uint)(k / bw), c = (uint)(k % bw);
            atomic_max(&fillprio[(size_t)(y0 + r) * W + x0 + c], prio);
        }
    }
}

/* Holes take the label of their winning mask: prio_label[p - 1] for fillprio p > 0. */
__kernel void masks_fill_apply(__global uint *labels, const uint n, __global const uint *fillprio,
                               __global const uint *prio_label) {
    const uint i = get_global_id(0);
    if (i >= n)
        return;
    const uint p = fillprio[i];
    if (p)
        labels[i] = prio_label[p - 1];
}
