/* kernels/labels_to_flows.cl: ideal flows from a label image (Cellpose masks_to_flows, CPU path):
 * the per-mask heat diffusion and the final central-difference gradient normalised to unit
 * length, in three variants with identical arithmetic (docs/flows.md): l2f_box (CPU devices: one
 * work-item diffuses one whole mask, rows as float8 vectors, no barriers), l2f_local (GPUs: one
 * work-group per small mask in local memory) and l2f_diffuse + l2f_gradient (one launch per step
 * over a list of pixels, for masks too large or too sparse for the other two). Every kernel
 * checks its bounds. */

/* The heat field is kept as an unevaluated sum of two floats (hi + lo, "double-float"), which
 * carries about 44 significant bits: float32 alone loses about 1e-4 of the flow direction on
 * large masks, where the gradient is small next to the field. Only additions and one
 * multiplication by 1/9 are needed: ff_add_renorm and ff_mul_renorm of kernels/common.h, which rely
 * on IEEE float32 rounding, so no contraction into FMAs. */
#pragma OPENCL FP_CONTRACT OFF

#ifndef GPUSEG_FP64 /* pair arithmetic that native doubles replace (heat_mean9, l2f_box) */
/* The 3x3 sum, in the one order every variant uses (so that they agree to the bit): column sums
 * (up + centre) + down, then (left column + centre column) + right column. This order lets
 * l2f_box share each column sum between three pixels of a row (4 additions per pixel instead of
 * 8); Cellpose's float64 order differs, which only moves the result within the double-float's
 * ~2^-44 relative precision. v[3*r + c]: row r, column c of the neighbourhood. */
static ff sum3x3(const ff *v) {
    const ff c0 = ff_add_renorm(ff_add_renorm(v[0], v[3]), v[6]);
    const ff c1 = ff_add_renorm(ff_add_renorm(v[1], v[4]), v[7]);
    const ff c2 = ff_add_renorm(ff_add_renorm(v[2], v[5]), v[8]);
    return ff_add_renorm(ff_add_renorm(c0, c1), c2);
}
#endif

/* The heat field's type and its three operations. With GPUSEG_FP64 (programs.c: CPU devices with
 * cl_khr_fp64) it is a native double and every variant computes exactly Cellpose's float64
 * expression, 1/9. * (centre + up + down + left + right + up-left + up-right + down-left +
 * down-right) in that order: the same bits as Cellpose's masks_to_flows_cpu. Otherwise a
 * double-float pair in sum3x3's order. ninth is unused with doubles. */
#ifdef GPUSEG_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
typedef double heat;
#define HEAT_ZERO 0.0
static heat heat_inc(const heat v) {
    return v + 1.0;
}
static heat heat_mean9(const heat *v, const float2 ninth) {
    (void)ninth;
    return (1.0 / 9.0) *
           ((((((((v[4] + v[1]) + v[7]) + v[3]) + v[5]) + v[0]) + v[2]) + v[6]) + v[8]);
}
#else
typedef ff heat;
#define HEAT_ZERO ff_make(0.0f, 0.0f)
static heat heat_inc(const heat v) {
    return ff_add_renorm(v, ff_make(1.0f, 0.0f));
}
static heat heat_mean9(const heat *v, const float2 ninth) {
    return ff_mul_renorm(sum3x3(v), ff_make(ninth.x, ninth.y));
}
#endif

/* Flat index of (y, x) when it lies in the image and has label lab, else -1: the other cells are
 * the zeros of Cellpose's per-mask array. */
static long mask_cell(__global const uint *labels, const int H, const int W, const int y,
                      const int x, const uint lab) {
    if (y < 0 || y >= H || x < 0 || x >= W)
        return -1;
    const uint q = (uint)y * (uint)W + (uint)x;
    return labels[q] == lab ? (long)q : -1;
}

/* Field value of neighbour (y, x) as seen from a pixel of label `lab` (field_at below), with the
 * +1 that Cellpose adds to the mask's centre before each averaging step. */
static heat heat_at(__global const uint *labels, __global const heat *t, const int H, const int W,
                    const int y, const int x, const uint lab, const uint center) {
    const long q = mask_cell(labels, H, W, y, x, lab);
    if (q < 0)
        return HEAT_ZERO;
    return (uint)q == center ? heat_inc(t[q]) : t[q];
}

/* One diffusion step for the first `count` entries of `list` (pixel index, mask index):
 * t_out[p] = heat_mean9 of the 3x3 neighbourhood of p in t_in. ninth is 1/9 as a double-float
 * (hi, lo), computed by the host. */
__kernel void l2f_diffuse(__global const uint *labels, __global const uint2 *list,
                          __global const uint *centers, __global const heat *t_in,
                          __global heat *t_out, const uint H, const uint W, const uint count,
                          const float2 ninth) {
    const uint i = get_global_id(0);
    if (i >= count)
        return;
    const uint2 e = list[i];
    const uint p = e.x;
    const uint lab = labels[p];
    const uint c = centers[e.y];
    const int y = (int)(p / W), x = (int)(p % W);
    const int h = (int)H, w = (int)W;
    heat v[9];
    for (int r = 0; r < 3; r++)
        for (int q = 0; q < 3; q++)
            v[3 * r + q] = heat_at(labels, t_in, h, w, y + r - 1, x + q - 1, lab, c);
    t_out[p] = heat_mean9(v, ninth);
}

/* (dY, dX) = (yp - ym, xp - xm) normalised to unit length, 0 where both are 0. */
#ifdef GPUSEG_FP64
/* Cellpose: mu / (1e-60 + sqrt(dy^2 + dx^2)) in float64, then float32. */
static float2 unit_gradient(const heat yp, const heat ym, const heat xp, const heat xm) {
    const double dy = yp - ym, dx = xp - xm;
    const double n = 1e-60 + sqrt(dy * dy + dx * dx);
    return (float2)((float)(dy / n), (float)(dx / n));
}
#else
static float2 unit_gradient(const ff yp, const ff ym, const ff xp, const ff xm) {
    float dy = ff_add_renorm(yp, ff_make(-ym.h, -ym.l)).h;
    float dx = ff_add_renorm(xp, ff_make(-xm.h, -xm.l)).h;
    /* A difference below the double-float's resolution of its operands (about 2^-44 relative)
     * is rounding noise: at the centre of a symmetric mask Cellpose's float64 gets exactly 0
     * there, while our noise would be normalised into an arbitrary unit vector. 2^-40 leaves a
     * margin; real gradients are many orders of magnitude larger relative to the field. */
    const float tiny = 0x1p-40f;
    if (fabs(dy) <= tiny * fmax(fabs(yp.h), fabs(ym.h)))
        dy = 0.0f;
    if (fabs(dx) <= tiny * fmax(fabs(xp.h), fabs(xm.h)))
        dx = 0.0f;
    /* Scale by the larger component first: squares of tiny gradients would underflow in float32
     * where Cellpose's float64 does not. */
    const float m = fmax(fabs(dy), fabs(dx));
    float uy = 0.0f, ux = 0.0f;
    if (m > 0.0f) {
        const float sy = dy / m, sx = dx / m;
        const float n = sqrt(sy * sy + sx * sx);
        uy = sy / n;
        ux = sx / n;
    }
    return (float2)(uy, ux);
}
#endif

/* Field value of neighbour (y, x) as seen from a pixel of label `lab`, without the centre
 * increment (the gradient reads the field after the last averaging step). */
static heat field_at(__global const uint *labels, __global const heat *t, const int H, const int W,
                     const int y, const int x, const uint lab) {
    const long q = mask_cell(labels, H, W, y, x, lab);
    return q < 0 ? HEAT_ZERO : t[q];
}

/* Flows of the first `count` list entries: dY = T[y+1,x] - T[y-1,x], dX = T[y,x+1] - T[y,x-1]
 * (double-float differences, then rounded to float), divided by their length (0 where both are
 * 0). A mask's final field lies in t0 when its iteration count is even and in t1 when it is odd.
 * flows holds the dY plane then the dX plane; background pixels are not touched (the host
 * zero-fills them). */
__kernel void l2f_gradient(__global const uint *labels, __global const uint2 *list,
                           __global const uint *niter, __global const heat *t0,
                           __global const heat *t1, __global float *flows, const uint H,
                           const uint W, const uint count) {
    const uint i = get_global_id(0);
    if (i >= count)
        return;
    const uint2 e = list[i];
    const uint p = e.x;
    const uint lab = labels[p];
    __global const heat *t = (niter[e.y] & 1u) ? t1 : t0;
    const int y = (int)(p / W), x = (int)(p % W);
    const int h = (int)H, w = (int)W;
    const heat yp = field_at(labels, t, h, w, y + 1, x, lab);
    const heat ym = field_at(labels, t, h, w, y - 1, x, lab);
    const heat xp = field_at(labels, t, h, w, y, x + 1, lab);
    const heat xm = field_at(labels, t, h, w, y, x - 1, lab);
    const float2 u = unit_gradient(yp, ym, xp, xm);
    const float uy = u.x, ux = u.y;
    const uint npix = H * W;
    flows[p] = uy;
    flows[npix + p] = ux;
}

/* Whole diffusion of small masks in local memory: one work-group per mask, all of its steps in
 * one launch (the global path above needs one launch per step). boxes[g] = (y, x, height, width)
 * of mask g's bounding box padded by one pixel (y, x may be -1); cn[g] = (centre pixel index,
 * iteration count). The local field holds the padded box; pixels not of the mask (other labels,
 * outside the image, the padding) stay 0, exactly the zeros of Cellpose's per-mask array, and
 * because the box is padded no neighbour lookup leaves it. Each work-item keeps the new values of
 * its pixels in registers between the two barriers of a step (L2F_SLOTS pixels per item, so a box
 * may hold L2F_SLOTS * local size pixels; the host checks this and the local memory size). The
 * arithmetic is the same as in l2f_diffuse and l2f_gradient, so both paths give identical bits. */
#ifndef L2F_SLOTS
#error "L2F_SLOTS: a build option from the host (src/core/kernel_defs.h)"
#endif
__kernel void l2f_local(__global const uint *labels, __global const int4 *boxes,
                        __global const uint2 *cn, __global float *flows, const uint H, const uint W,
                        const uint n_masks, const float2 ninth, __local heat *t,
                        __local uchar *member) {
    const uint g = get_group_id(0);
    if (g >= n_masks)
        return; /* whole work-group leaves together: no barrier is skipped by part of it */
    const uint lid = get_local_id(0), lsz = get_local_size(0);
    const int4 b = boxes[g];
    const uint2 c = cn[g];
    const uint bw = (uint)b.w, nbox = (uint)b.z * (uint)b.w;
    const uint lab = labels[c.x];
    const uint cy = c.x / W, cx = c.x % W;
    const uint cj = (uint)((int)cy - b.x) * bw + (uint)((int)cx - b.y);
    for (uint j = lid; j < nbox; j += lsz) {
        const int y = b.x + (int)(j / bw), x = b.y + (int)(j % bw);
        const int in = y >= 0 && y < (int)H && x >= 0 && x < (int)W;
        member[j] = in && labels[(uint)y * W + (uint)x] == lab;
        t[j] = HEAT_ZERO;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    heat nv[L2F_SLOTS];
    for (uint it = 0; it < c.y; it++) {
        for (uint k = 0; k < L2F_SLOTS; k++) {
            const uint j = lid + k * lsz;
            if (j >= nbox || !member[j])
                continue;
            heat v[9];
            for (uint r = 0; r < 3; r++)
                for (uint q = 0; q < 3; q++) {
                    const uint jj = j + r * bw + q - bw - 1;
                    v[3 * r + q] = jj == cj ? heat_inc(t[jj]) : t[jj];
                }
            nv[k] = heat_mean9(v, ninth);
        }
        barrier(CLK_LOCAL_MEM_FENCE);
        for (uint k = 0; k < L2F_SLOTS; k++) {
            const uint j = lid + k * lsz;
            if (j < nbox && member[j])
                t[j] = nv[k];
        }
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    const uint npix = H * W;
    for (uint j = lid; j < nbox; j += lsz) {
        if (!member[j])
            continue;
        const float2 u = unit_gradient(t[j + bw], t[j - bw], t[j + 1], t[j - 1]);
        const uint p = (uint)(b.x + (int)(j / bw)) * W + (uint)(b.y + (int)(j % bw));
        flows[p] = u.x;
        flows[npix + p] = u.y;
    }
}

/* ---- l2f_box: one work-item per mask, for CPU devices ---------------------------------------
 * On a CPU, the work-group variant above pays for its barriers (PoCL runs the work-items in a
 * loop between barriers, every step) and its per-pixel branches keep the compiler from using
 * vector instructions. Here one work-item diffuses one whole mask with no barrier: the padded box
 * is swept row by row as float8 vectors (the double-float arithmetic lane by lane, ff8, so each
 * lane rounds exactly as the ff operations above), and each column sum is computed once and shared
 * by three pixels. Thousands of masks give the parallelism. */

#ifndef GPUSEG_FP64
static ff8 ff8_load(__global const float *hi, __global const float *lo) {
    return ff8_make(vload8(0, hi), vload8(0, lo));
}
#endif

/* Cell j of l2f_box's field: one double of the plane at hi (GPUSEG_FP64), or the pair of
 * planes hi, lo. */
static heat box_heat(__global const float *hi, __global const float *lo, const uint j) {
#ifdef GPUSEG_FP64
    (void)lo;
    return ((__global const double *)hi)[j];
#else
    return ff_make(hi[j], lo[j]);
#endif
}

/* boxes[g] = (y, x, height, width) of mask g's bounding box padded by one pixel (as l2f_local);
 * info[g] = (centre pixel index, iteration count, scratch offset in floats, row stride S: width
 * rounded up to 8). One launch takes jobs base .. end - 1. scratch at info[g].z holds 5 planes of
 * height * S floats (field A hi, lo, field B hi, lo, membership 1/0) and two column-sum rows of S +
 * 8 floats, all initialised here, and 8 guard floats before them (read, never used, by the double
 * sweep). Cells outside the mask (other labels, outside the image, the padding, columns beyond the
 * width) stay 0, the zeros of Cellpose's per-mask array.
 * With GPUSEG_FP64 the two float planes of a field are one plane of doubles, and each row is swept
 * as double4 vectors in Cellpose's order (heat_mean9) with no column sums. Its loads reach one
 * cell before and after the box's padding ring (the guard, or the next plane): those lanes are
 * padding, whose result is discarded. */
__kernel void l2f_box(__global const uint *labels, __global const int4 *boxes,
                      __global const uint4 *info, const uint base, const uint end,
                      __global float *flows, const uint H, const uint W, const float2 ninth,
                      __global float *scratch) {
    const uint g = base + get_global_id(0);
    if (g >= end)
        return;
    const int4 b = boxes[g];
    const uint4 f = info[g];
    const uint bh = (uint)b.z, bw = (uint)b.w, S = f.w, plane = bh * S;
    __global float *ah = scratch + f.z, *al = ah + plane, *nh = al + plane, *nl = nh + plane;
    __global float *mem = nl + plane, *ch = mem + plane, *cl = ch + S + 8;
    const uint lab = labels[f.x];
    const uint cj = (f.x / W - (uint)b.x) * S + (f.x % W - (uint)b.y);
    for (uint r = 0; r < bh; r++) {
        const int y = b.x + (int)r;
        for (uint q = 0; q < S; q++) {
            const int x = b.y + (int)q;
            const uint j = r * S + q;
            const int in = q < bw && y >= 0 && y < (int)H && x >= 0 && x < (int)W &&
                           labels[(uint)y * W + (uint)x] == lab;
            mem[j] = in ? 1.0f : 0.0f;
            ah[j] = al[j] = nh[j] = nl[j] = 0.0f;
        }
    }
    for (uint q = 0; q < S + 8; q++)
        ch[q] = cl[q] = 0.0f;
    for (uint q = 1; q <= 8; q++)
        ah[-(int)q] = 0.0f;
    const uint npix = H * W;
#ifdef GPUSEG_FP64
    (void)ninth;
    __global double *A = (__global double *)ah, *N = (__global double *)nh;
    for (uint it = 0; it < f.y; it++) {
        A[cj] += 1.0; /* Cellpose's T[centre] += 1 before each averaging step */
        for (uint r = 1; r + 1 < bh; r++)
            for (uint q = 0; q < S; q += 4) { /* double4: AVX2's width */
                __global const double *c = A + r * S + q;
                const double4 s = (((((((vload4(0, c) + vload4(0, c - S)) + vload4(0, c + S)) +
                                       vload4(0, c - 1)) +
                                      vload4(0, c + 1)) +
                                     vload4(0, c - S - 1)) +
                                    vload4(0, c - S + 1)) +
                                   vload4(0, c + S - 1)) +
                                  vload4(0, c + S + 1);
                const long4 in = convert_long4(vload4(0, mem + r * S + q) != (float4)(0.0f));
                vstore4(select((double4)(0.0), (1.0 / 9.0) * s, in), 0, N + r * S + q);
            }
        __global double *t = A;
        A = N;
        N = t;
    }
    ah = (__global float *)A; /* the final field, for the gradient below */
#else
    const ff8 ninth8 = ff8_make((float8)(ninth.x), (float8)(ninth.y));
    for (uint it = 0; it < f.y; it++) {
        /* Cellpose's T[centre] += 1 before each averaging step */
        const ff c = heat_inc(ff_make(ah[cj], al[cj]));
        ah[cj] = c.h;
        al[cj] = c.l;
        /* rows 0 and bh - 1 are padding: never updated */
        for (uint r = 1; r + 1 < bh; r++) {
            const uint j = r * S;
            /* column sums of rows r-1..r+1; ch[1 + q] holds column q, ch[0] and the tail are 0 */
            for (uint q = 0; q < S; q += 8) {
                const ff8 s =
                    ff8_add_renorm(ff8_add_renorm(ff8_load(ah + j - S + q, al + j - S + q),
                                                  ff8_load(ah + j + q, al + j + q)),
                                   ff8_load(ah + j + S + q, al + j + S + q));
                vstore8(s.h, 0, ch + 1 + q);
                vstore8(s.l, 0, cl + 1 + q);
            }
            for (uint q = 0; q < S; q += 8) {
                const ff8 s =
                    ff8_mul_renorm(ff8_add_renorm(ff8_add_renorm(ff8_load(ch + q, cl + q),
                                                                 ff8_load(ch + q + 1, cl + q + 1)),
                                                  ff8_load(ch + q + 2, cl + q + 2)),
                                   ninth8);
                const int8 in = vload8(0, mem + j + q) != (float8)(0.0f);
                vstore8(select((float8)(0.0f), s.h, in), 0, nh + j + q);
                vstore8(select((float8)(0.0f), s.l, in), 0, nl + j + q);
            }
        }
        __global float *t = ah;
        ah = nh;
        nh = t;
        t = al;
        al = nl;
        nl = t;
    }
#endif
    for (uint r = 1; r + 1 < bh; r++)
        for (uint q = 1; q + 1 < bw; q++) {
            const uint j = r * S + q;
            if (mem[j] == 0.0f)
                continue;
            const float2 u = unit_gradient(box_heat(ah, al, j + S), box_heat(ah, al, j - S),
                                           box_heat(ah, al, j + 1), box_heat(ah, al, j - 1));
            const uint p = (uint)(b.x + (int)r) * W + (uint)(b.y + (int)q);
            flows[p] = u.x;
            flows[npix + p] = u.y;
        }
}
