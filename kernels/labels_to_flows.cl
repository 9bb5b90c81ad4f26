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
 * multiplication by 1/9 are needed; both are error-free transformations that rely on IEEE
 * float32 rounding, so no contraction into FMAs (the one FMA below is explicit). */
#pragma OPENCL FP_CONTRACT OFF

#ifndef GPUSEG_FP64 /* pair arithmetic that native doubles replace (heat_mean9, l2f_box) */
/* a + b in double-float (Knuth's two-sum on the high parts, then renormalise). */
static float2 dd_add(const float2 a, const float2 b) {
    const float s = a.x + b.x;
    const float bb = s - a.x;
    float e = (a.x - (s - bb)) + (b.x - bb);
    e = e + (a.y + b.y);
    const float hi = s + e;
    return (float2)(hi, e - (hi - s));
}

/* a * c for the double-float constant c = (c.x, c.y); fma gives the exact error of c.x * a.x
 * (OpenCL requires fma to be correctly rounded). */
static float2 dd_mul(const float2 a, const float2 c) {
    const float p = a.x * c.x;
    float e = fma(a.x, c.x, -p);
    e = e + (a.x * c.y + a.y * c.x);
    const float hi = p + e;
    return (float2)(hi, e - (hi - p));
}

/* The 3x3 sum, in the one order every variant uses (so that they agree to the bit): column sums
 * (up + centre) + down, then (left column + centre column) + right column. This order lets
 * l2f_box share each column sum between three pixels of a row (4 additions per pixel instead of
 * 8); Cellpose's float64 order differs, which only moves the result within the double-float's
 * ~2^-44 relative precision. v[3*r + c]: row r, column c of the neighbourhood. */
static float2 sum3x3(const float2 *v) {
    const float2 c0 = dd_add(dd_add(v[0], v[3]), v[6]);
    const float2 c1 = dd_add(dd_add(v[1], v[4]), v[7]);
    const float2 c2 = dd_add(dd_add(v[2], v[5]), v[8]);
    return dd_add(dd_add(c0, c1), c2);
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
typedef float2 heat;
#define HEAT_ZERO ((float2)(0.0f, 0.0f))
static heat heat_inc(const heat v) {
    return dd_add(v, (float2)(1.0f, 0.0f));
}
static heat heat_mean9(const heat *v, const float2 ninth) {
    return dd_mul(sum3x3(v), ninth);
}
#endif

/* T value of neighbour (y, x) as seen from a pixel of label `lab`: pixels outside the image or of
 * another label are the zeros of Cellpose's per-mask array; the mask's centre carries the +1 that
 * Cellpose adds before each averaging step. */
static heat heat_at(__global const uint *labels, __global const heat *t, const int H, const int W,
                    const int y, const int x, const uint lab, const uint center) {
    if (y < 0 || y >= H || x < 0 || x >= W)
        return HEAT_ZERO;
    const uint q = (uint)y * (uint)W + (uint)x;
    if (labels[q] != lab)
        return HEAT_ZERO;
    const heat v = t[q];
    return q == center ? heat_inc(v) : v;
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
static float2 unit_gradient(const float2 yp, const float2 ym, const float2 xp, const float2 xm) {
    float dy = dd_add(yp, -ym).x, dx = dd_add(xp, -xm).x;
    /* A difference below the double-float's resolution of its operands (about 2^-44 relative)
     * is rounding noise: at the centre of a symmetric mask Cellpose's float64 gets exactly 0
     * there, while our noise would be normalised into an arbitrary unit vector. 2^-40 leaves a
     * margin; real gradients are many orders of magnitude larger relative to the field. */
    const float tiny = 0x1p-40f;
    if (fabs(dy) <= tiny * fmax(fabs(yp.x), fabs(ym.x)))
        dy = 0.0f;
    if (fabs(dx) <= tiny * fmax(fabs(xp.x), fabs(xm.x)))
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

/* Same-label T value without the centre increment (the gradient reads the field after the last
 * averaging step). */
static heat field_at(__global const uint *labels, __global const heat *t, const int H, const int W,
                     const int y, const int x, const uint lab) {
    if (y < 0 || y >= H || x < 0 || x >= W)
        return HEAT_ZERO;
    const uint q = (uint)y * (uint)W + (uint)x;
    return labels[q] == lab ? t[q] : HEAT_ZERO;
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
#define L2F_SLOTS 16
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
 * is swept row by row as float8 vectors (the double-float arithmetic lane by lane, so each lane
 * rounds exactly as dd_add / dd_mul above), and each column sum is computed once and shared by
 * three pixels. Thousands of masks give the parallelism. */

#ifndef GPUSEG_FP64
typedef struct {
    float8 h, l;
} dd8;

static dd8 dd8_add(const dd8 a, const dd8 b) { /* dd_add, lane by lane */
    const float8 s = a.h + b.h;
    const float8 bb = s - a.h;
    float8 e = (a.h - (s - bb)) + (b.h - bb);
    e = e + (a.l + b.l);
    const float8 hi = s + e;
    dd8 r = {hi, e - (hi - s)};
    return r;
}

static dd8 dd8_mul(const dd8 a, const float2 c) { /* dd_mul, lane by lane */
    const float8 p = a.h * c.x;
    float8 e = fma(a.h, (float8)(c.x), -p);
    e = e + (a.h * c.y + a.l * c.x);
    const float8 hi = p + e;
    dd8 r = {hi, e - (hi - p)};
    return r;
}

static dd8 dd8_load(__global const float *hi, __global const float *lo) {
    dd8 r = {vload8(0, hi), vload8(0, lo)};
    return r;
}
#endif

/* Cell j of l2f_box's field: one double of the plane at hi (GPUSEG_FP64), or the pair of
 * planes hi, lo. */
static heat box_heat(__global const float *hi, __global const float *lo, const uint j) {
#ifdef GPUSEG_FP64
    (void)lo;
    return ((__global const double *)hi)[j];
#else
    return (float2)(hi[j], lo[j]);
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
    for (uint it = 0; it < f.y; it++) {
        /* Cellpose's T[centre] += 1 before each averaging step */
        const float2 c = dd_add((float2)(ah[cj], al[cj]), (float2)(1.0f, 0.0f));
        ah[cj] = c.x;
        al[cj] = c.y;
        /* rows 0 and bh - 1 are padding: never updated */
        for (uint r = 1; r + 1 < bh; r++) {
            const uint j = r * S;
            /* column sums of rows r-1..r+1; ch[1 + q] holds column q, ch[0] and the tail are 0 */
            for (uint q = 0; q < S; q += 8) {
                const dd8 s = dd8_add(dd8_add(dd8_load(ah + j - S + q, al + j - S + q),
                                              dd8_load(ah + j + q, al + j + q)),
                                      dd8_load(ah + j + S + q, al + j + S + q));
                vstore8(s.h, 0, ch + 1 + q);
                vstore8(s.l, 0, cl + 1 + q);
            }
            for (uint q = 0; q < S; q += 8) {
                const dd8 s = dd8_mul(
                    dd8_add(dd8_add(dd8_load(ch + q, cl + q), dd8_load(ch + q + 1, cl + q + 1)),
                            dd8_load(ch + q + 2, cl + q + 2)),
                    ninth);
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
