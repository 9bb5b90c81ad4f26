/* kernels/labels_to_flows.cl: ideal flows from a label image (Cellpose masks_to_flows, CPU path):
 * one Jacobi step of the per-mask heat diffusion, and the final central-difference gradient
 * normalised to unit length. The host lists the foreground pixels grouped by mask (masks with
 * more iterations first) so that one launch over a prefix of the list updates exactly the masks
 * that are still diffusing. Every kernel checks its bounds. */

/* The heat field is kept as an unevaluated sum of two floats (hi + lo, "double-float"), which
 * carries about 44 significant bits: float32 alone loses about 1e-4 of the flow direction on
 * large masks, where the gradient is small next to the field. Only additions and one
 * multiplication by 1/9 are needed; both are error-free transformations that rely on IEEE
 * float32 rounding, so no contraction into FMAs (the one FMA below is explicit). */
#pragma OPENCL FP_CONTRACT OFF

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

/* T value of neighbour (y, x) as seen from a pixel of label `lab`: pixels outside the image or of
 * another label are the zeros of Cellpose's per-mask array; the mask's centre carries the +1 that
 * Cellpose adds before each averaging step. */
static float2 heat_at(__global const uint *labels, __global const float2 *t, const int H,
                      const int W, const int y, const int x, const uint lab, const uint center) {
    if (y < 0 || y >= H || x < 0 || x >= W)
        return (float2)(0.0f, 0.0f);
    const uint q = (uint)y * (uint)W + (uint)x;
    if (labels[q] != lab)
        return (float2)(0.0f, 0.0f);
    const float2 v = t[q];
    return q == center ? dd_add(v, (float2)(1.0f, 0.0f)) : v;
}

/* One diffusion step for the first `count` entries of `list` (pixel index, mask index):
 * t_out[p] = (1/9) * (sum of the 3x3 neighbourhood of p in t_in), in Cellpose's summation order
 * (centre, up, down, left, right, up-left, up-right, down-left, down-right). ninth is 1/9 as a
 * double-float (hi, lo), computed by the host. */
__kernel void l2f_diffuse(__global const uint *labels, __global const uint2 *list,
                          __global const uint *centers, __global const float2 *t_in,
                          __global float2 *t_out, const uint H, const uint W, const uint count,
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
    float2 s = heat_at(labels, t_in, h, w, y, x, lab, c);
    s = dd_add(s, heat_at(labels, t_in, h, w, y - 1, x, lab, c));
    s = dd_add(s, heat_at(labels, t_in, h, w, y + 1, x, lab, c));
    s = dd_add(s, heat_at(labels, t_in, h, w, y, x - 1, lab, c));
    s = dd_add(s, heat_at(labels, t_in, h, w, y, x + 1, lab, c));
    s = dd_add(s, heat_at(labels, t_in, h, w, y - 1, x - 1, lab, c));
    s = dd_add(s, heat_at(labels, t_in, h, w, y - 1, x + 1, lab, c));
    s = dd_add(s, heat_at(labels, t_in, h, w, y + 1, x - 1, lab, c));
    s = dd_add(s, heat_at(labels, t_in, h, w, y + 1, x + 1, lab, c));
    t_out[p] = dd_mul(s, ninth);
}

/* (dY, dX) = (yp - ym, xp - xm) normalised to unit length, 0 where both are 0. */
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

/* Same-label T value without the centre increment (the gradient reads the field after the last
 * averaging step). */
static float2 field_at(__global const uint *labels, __global const float2 *t, const int H,
                       const int W, const int y, const int x, const uint lab) {
    if (y < 0 || y >= H || x < 0 || x >= W)
        return (float2)(0.0f, 0.0f);
    const uint q = (uint)y * (uint)W + (uint)x;
    return labels[q] == lab ? t[q] : (float2)(0.0f, 0.0f);
}

/* Flows of the first `count` list entries: dY = T[y+1,x] - T[y-1,x], dX = T[y,x+1] - T[y,x-1]
 * (double-float differences, then rounded to float), divided by their length (0 where both are
 * 0). A mask's final field lies in t0 when its iteration count is even and in t1 when it is odd.
 * flows holds the dY plane then the dX plane; background pixels are not touched (the host
 * zero-fills them). */
__kernel void l2f_gradient(__global const uint *labels, __global const uint2 *list,
                           __global const uint *niter, __global const float2 *t0,
                           __global const float2 *t1, __global float *flows, const uint H,
                           const uint W, const uint count) {
    const uint i = get_global_id(0);
    if (i >= count)
        return;
    const uint2 e = list[i];
    const uint p = e.x;
    const uint lab = labels[p];
    __global const float2 *t = (niter[e.y] & 1u) ? t1 : t0;
    const int y = (int)(p / W), x = (int)(p % W);
    const int h = (int)H, w = (int)W;
    const float2 yp = field_at(labels, t, h, w, y + 1, x, lab);
    const float2 ym = field_at(labels, t, h, w, y - 1, x, lab);
    const float2 xp = field_at(labels, t, h, w, y, x + 1, lab);
    const float2 xm = field_at(labels, t, h, w, y, x - 1, lab);
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
                        const uint n_masks, const float2 ninth, __local float2 *t,
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
        t[j] = (float2)(0.0f, 0.0f);
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    float2 nv[L2F_SLOTS];
    for (uint it = 0; it < c.y; it++) {
        for (uint k = 0; k < L2F_SLOTS; k++) {
            const uint j = lid + k * lsz;
            if (j >= nbox || !member[j])
                continue;
#define L2F_T(q) ((q) == cj ? dd_add(t[q], (float2)(1.0f, 0.0f)) : t[q])
            float2 s = L2F_T(j);
            s = dd_add(s, L2F_T(j - bw));
            s = dd_add(s, L2F_T(j + bw));
            s = dd_add(s, L2F_T(j - 1));
            s = dd_add(s, L2F_T(j + 1));
            s = dd_add(s, L2F_T(j - bw - 1));
            s = dd_add(s, L2F_T(j - bw + 1));
            s = dd_add(s, L2F_T(j + bw - 1));
            s = dd_add(s, L2F_T(j + bw + 1));
#undef L2F_T
            nv[k] = dd_mul(s, ninth);
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
