/* kernels/dynamics.cl: flows -> masks, the per-pixel and per-seed stages (Cellpose 3.1.1.3
 * compute_masks, CPU path): foreground threshold and flow scaling, Euler integration with
 * bilinear sampling (one pixel per work-item, or 8 as float8 lanes for CPU devices, with the
 * identical arithmetic), the end-point histogram, 5x5 seed maxima, seed growth and painting, label
 * assignment, per-label statistics and relabelling through a table. Every kernel checks its
 * bounds. FP contraction is off: the exact-arithmetic helpers below rely on separate roundings. */
#pragma OPENCL FP_CONTRACT OFF

/* x / 5 correctly rounded (numpy's float32 division), without relying on the device's division
 * accuracy (OpenCL allows 2.5 ulp). One Newton correction with fma; checked against IEEE
 * division for every finite float32 on the host (only the sign of -0 differs, which cannot
 * change any result here). */
static inline float div5(float x) {
    float q = x * 0.2f;
    float r = fma(-q, 5.0f, x);
    return fma(r, 0.2f, q);
}

/* ---- exact-ish arithmetic: Cellpose's numba map_coordinates evaluates, with numba's typing
 * (float32 fractions fy, fx; the literal 1 makes 1 - f a float64):
 *   t00 = (F00 * (1 - fy)) * (1 - fx)      float64 products
 *   t01 = (F01 * (1 - fy)) * fx            float64 products
 *   t10 = float32(F10 * fy) * (1 - fx)     float32 product, then float64
 *   t11 = float32(float32(F11 * fy) * fx)  float32 products
 *   value = float32(((t00 + t01) + t10) + t11)   float64 sums, one final rounding.
 * With GPUSEG_FP64 the float64 parts are native doubles: numba's arithmetic exactly. Without it
 * we evaluate them as unevaluated float pairs (error-free products via fma, two-sum) and round
 * once, which gives the same float32 except when the exact value lies within ~2^-46 (relative)
 * of a rounding boundary. The pair arithmetic is kernels/common.h's (ff, ff8). */

/* Bilinear sample from the four corner values f00 (y0, x0), f01 (y0, x1), f10 (y1, x0), f11 (y1,
 * x1), as numba map_coordinates in Cellpose's steps_interp: y0 = min(H-1, trunc(py)),
 * y1 = min(H-1, y0+1), fy = py - trunc(py); the weights wy0 = 1 - fy, wx0 = 1 - fx (one_minus:
 * float64, or an exact pair). With GPUSEG_FP64 (programs.c: CPU devices with cl_khr_fp64) the
 * float64 parts are native doubles: exactly numba's arithmetic, in its order, with its one final
 * rounding. Each body is written once and instantiated for a scalar and for vector lanes
 * (masks_euler8), so a lane computes exactly what the scalar kernel computes. */
#ifdef GPUSEG_FP64
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#define BILINEAR(NAME, T, D, TO_D, TO_T)                                                           \
    static inline T NAME(const T f00, const T f01, const T f10, const T f11, const D wy0,          \
                         const T fy, const D wx0, const T fx) {                                    \
        const D t00 = (TO_D(f00) * wy0) * wx0;                                                     \
        const D t01 = (TO_D(f01) * wy0) * TO_D(fx);                                                \
        const D t10 = TO_D(f10 * fy) * wx0;                                                        \
        const D t11 = TO_D((f11 * fy) * fx);                                                       \
        return TO_T(((t00 + t01) + t10) + t11);                                                    \
    }
typedef double wgt;
static inline wgt one_minus(float f) {
    return 1.0 - (double)f;
}
BILINEAR(bilinear_c, float, double, convert_double, convert_float)
#else
#define BILINEAR(NAME, T, P)                                                                       \
    static inline T NAME(const T f00, const T f01, const T f10, const T f11, const P wy0,          \
                         const T fy, const P wx0, const T fx) {                                    \
        const T zero = (T)(0.0f);                                                                  \
        const P t00 = P##_mul(P##_mul_f(f00, wy0), wx0);                                           \
        const P t01 = P##_mul(P##_mul_f(f01, wy0), P##_make(fx, zero));                            \
        const P t10 = P##_mul_f(f10 * fy, wx0);                                                    \
        const P t11 = P##_make((f11 * fy) * fx, zero);                                             \
        const P s = P##_add(P##_add(P##_add(t00, t01), t10), t11);                                 \
        return s.h + s.l;                                                                          \
    }
typedef ff wgt;
static inline wgt one_minus(float f) {
    return ff_two_sum(1.0f, -f);
}
BILINEAR(bilinear_c, float, ff)
#endif

/* Bilinear sample of plane F (H x W) at the corners (y0, x0) .. (y1, x1). */
static inline float bilinear(__global const float *F, uint W, int y0, int y1, int x0, int x1,
                             wgt wy0, float fy, wgt wx0, float fx) {
    return bilinear_c(F[(size_t)y0 * W + x0], F[(size_t)y0 * W + x1], F[(size_t)y1 * W + x0],
                      F[(size_t)y1 * W + x1], wy0, fy, wx0, fx);
}

/* ---- stage 1: threshold and scale -------------------------------------------------------- */

/* Pixel i of flows [3, n] (dY, dX, cellprob): (dY, dX) * (cellprob > thr) / 5 (float32, as
 * numpy) into *fy, *fx; returns whether it is followed (foreground). When bad is not NULL, a
 * non-finite value is counted in bad[0] and bad[1] receives the smallest flat index
 * (channel * n + i) of one (init 0xffffffff). */
static inline int prep_pixel(__global const float *flows, const uint n, const size_t i,
                             const float thr, float *fy, float *fx, __global uint *bad) {
    const float dy = flows[i], dx = flows[n + i], cp = flows[2 * (size_t)n + i];
    if (bad && (!isfinite(dy) || !isfinite(dx) || !isfinite(cp))) {
        atomic_inc(&bad[0]);
        uint c = !isfinite(dy) ? 0u : (!isfinite(dx) ? 1u : 2u);
        atomic_min(&bad[1], (uint)(c * n + i));
    }
    const int fg = cp > thr;
    *fy = fg ? div5(dy) : 0.0f;
    *fx = fg ? div5(dx) : 0.0f;
    return fg;
}

/* GPUs: F [2, H*W] planes of the scaled flows (prep_pixel); end[i] = 0 for a followed pixel, -1
 * otherwise; bad as prep_pixel. */
__kernel void masks_prep(__global const float *flows, const uint n, const float thr,
                         __global float *F, __global int *end, __global uint *bad) {
    const uint i = get_global_id(0);
    if (i >= n)
        return;
    float fy, fx;
    const int fg = prep_pixel(flows, n, i, thr, &fy, &fx, bad);
    F[i] = fy;
    F[n + i] = fx;
    end[i] = fg ? 0 : -1;
}

/* CPU devices (masks_euler8): the scaled flows packed as G, (dY, dX) pairs per pixel with row
 * stride W + 1 and one extra row and column repeating the last ones. Then the four corners of a
 * bilinear sample are two 16-byte loads, (y0, x0 .. x0+1) and (y0+1, x0 .. x0+1), and the edge
 * clamp min(L-1, p0+1) needs no test: the extra cells hold the clamped values. end and bad as
 * masks_prep. Global size: (W + 1, H + 1). */
__kernel void masks_prep_packed(__global const float *flows, const uint H, const uint W,
                                const float thr, __global float *G, __global int *end,
                                __global uint *bad) {
    const uint x = get_global_id(0), y = get_global_id(1);
    if (x > W || y > H)
        return;
    const uint n = H * W;
    const size_t src = (size_t)min(y, H - 1) * W + min(x, W - 1);
    const int real = x < W && y < H; /* the extra row and column repeat a real pixel */
    float fy, fx;
    const int fg = prep_pixel(flows, n, src, thr, &fy, &fx, real ? bad : 0);
    const size_t dst = 2 * ((size_t)y * (W + 1) + x);
    G[dst] = fy;
    G[dst + 1] = fx;
    if (real)
        end[src] = fg ? 0 : -1;
}

/* ---- stage 2: Euler integration and histogram ------------------------------------------ */

/* Follows every foreground pixel for niter steps; end[i] = flat index of trunc(final position),
 * hist[end] += 1. pos (may be NULL): final float positions, y plane then x plane (tests).
 * Window of a larger image (blockwise segmentation): the H x W buffers are the window at (oy, ox)
 * of a GH x GW image; positions are the image's (so that they round as in a whole-image run),
 * clamped to the image, and samples and end points are clamped to the window. The whole image:
 * oy = ox = 0, GH = H, GW = W. */
__kernel void masks_euler(__global const float *F, const uint H, const uint W, const uint niter,
                          __global int *end, __global uint *hist, __global float *pos,
                          const uint oy, const uint ox, const uint GH, const uint GW) {
    const uint x = get_global_id(0), y = get_global_id(1);
    if (x >= W || y >= H)
        return;
    const size_t i = (size_t)y * W + x;
    if (end[i] < 0)
        return;
    const size_t n = (size_t)H * W;
    __global const float *Fy = F, *Fx = F + n;
    const float ymax = (float)(GH - 1), xmax = (float)(GW - 1);
    float py = (float)(y + oy), px = (float)(x + ox);
    /* The step is a pure function of the position, so once the sequence repeats (a fixed point,
     * or a 2-cycle, common at the sinks) the position after niter steps is known: stop early.
     * This changes no result, only the work. */
    float ay = -1.0f, ax = -1.0f; /* position one step back (none yet) */
    for (uint t = 0; t < niter; t++) {
        int iy = (int)py, ix = (int)px; /* trunc; positions are >= 0 */
        /* window origin (oy, ox): samples at the window's own indices, clamped to the window */
        int y0 = min((int)H - 1, max(0, iy - (int)oy)), x0 = min((int)W - 1, max(0, ix - (int)ox));
        int y1 = min((int)H - 1, y0 + 1), x1 = min((int)W - 1, x0 + 1);
        float fy = py - (float)iy, fx = px - (float)ix; /* exact (Sterbenz) */
        const wgt wy0 = one_minus(fy), wx0 = one_minus(fx);
        float vy = bilinear(Fy, W, y0, y1, x0, x1, wy0, fy, wx0, fx);
        float vx = bilinear(Fx, W, y0, y1, x0, x1, wy0, fy, wx0, fx);
        /* numpy: minimum(L-1, maximum(0, p + v)) in float32 */
        float ny = fmin(ymax, fmax(0.0f, py + vy));
        float nx = fmin(xmax, fmax(0.0f, px + vx));
        if (ny == py && nx == px)
            break; /* fixed point */
        if (ny == ay && nx == ax) {
            /* 2-cycle: p(t+1) = p(t-1); p(niter) = p(t+1) when niter - (t+1) is even */
            if (((niter - (t + 1)) & 1u) == 0) {
                py = ny;
                px = nx;
            }
            break;
        }
        ay = py;
        ax = px;
        py = ny;
        px = nx;
    }
    if (pos) {
        pos[i] = py;
        pos[n + i] = px;
    }
    const int ey = min((int)H - 1, max(0, (int)py - (int)oy));
    const int ex = min((int)W - 1, max(0, (int)px - (int)ox));
    const int e = ey * (int)W + ex;
    end[i] = e;
    atomic_inc(&hist[e]);
}

/* The same integration, 8 pixels of a row per work-item as float8 lanes, for CPU devices: there
 * the scalar kernel's data-dependent loop keeps the compiler from vectorising across work-items,
 * and this one runs the ~110 operations of a step 8 lanes at a time. Each lane performs exactly
 * the scalar kernel's operations (same helpers, lane by lane), so the end points are identical
 * bits; a lane that has stopped (fixed point, 2-cycle, background) keeps its position while the
 * others go on. Reads the flows from G (masks_prep_packed) and the pixels from masks_rows' lists.
 * Global size: (ceil(W / 8), H). */
#ifdef GPUSEG_FP64
/* The doubles are handled as two double4 halves: a double8 is wider than AVX2's registers, and
 * the compiler warns that passing one changes the ABI. */
typedef struct {
    double4 lo, hi;
} wgt8;

static inline wgt8 one_minus8(float8 f) {
    const wgt8 r = {1.0 - convert_double4(f.lo), 1.0 - convert_double4(f.hi)};
    return r;
}

BILINEAR(bilinear4, float4, double4, convert_double4, convert_float4)

/* bilinear_c() lane by lane. */
static inline float8 bilinear8(float8 f00, float8 f01, float8 f10, float8 f11, wgt8 wy0, float8 fy,
                               wgt8 wx0, float8 fx) {
    return (float8)(bilinear4(f00.lo, f01.lo, f10.lo, f11.lo, wy0.lo, fy.lo, wx0.lo, fx.lo),
                    bilinear4(f00.hi, f01.hi, f10.hi, f11.hi, wy0.hi, fy.hi, wx0.hi, fx.hi));
}
#else
typedef ff8 wgt8;

static inline wgt8 one_minus8(float8 f) {
    return ff8_two_sum((float8)(1.0f), -f);
}

BILINEAR(bilinear8, float8, ff8) /* bilinear_c() lane by lane */
#endif
#undef BILINEAR

/* For masks_euler8: xs[y*W + k] = column of the k-th followed pixel of row y, cnt[y] = their
 * number, so that the float8 lanes are filled with followed pixels only (about a third of the
 * pixels of a typical image are background). Global size: H. */
__kernel void masks_rows(__global const int *end, const uint H, const uint W, __global uint *xs,
                         __global uint *cnt) {
    const uint y = get_global_id(0);
    if (y >= H)
        return;
    const size_t row = (size_t)y * W;
    uint k = 0;
    for (uint x = 0; x < W; x++)
        if (end[row + x] >= 0)
            xs[row + k++] = x;
    cnt[y] = k;
}

__kernel void masks_euler8(__global const float *G, const uint H, const uint W, const uint niter,
                           __global const uint *rxs, __global const uint *rcnt, __global int *end,
                           __global uint *hist, __global float *pos, const uint oy, const uint ox,
                           const uint GH, const uint GW) {
    const uint k8 = get_global_id(0) * 8, y = get_global_id(1);
    if (y >= H || k8 >= rcnt[y])
        return;
    const uint nk = min(8u, rcnt[y] - k8); /* lanes 0 .. nk - 1 hold followed pixels */
    const size_t row = (size_t)y * W, n = (size_t)H * W;
    uint xk[8];
    for (uint k = 0; k < 8; k++)
        xk[k] = k < nk ? rxs[row + k8 + k] : 0u;
    const int8 xs = (int8)(xk[0], xk[1], xk[2], xk[3], xk[4], xk[5], xk[6], xk[7]);
    int8 act = (int8)(0, 1, 2, 3, 4, 5, 6, 7) < (int)nk;
    const float8 ymax = (float8)((float)(GH - 1)), xmax = (float8)((float)(GW - 1));
    const int8 hm = (int8)((int)H - 1), wm = (int8)((int)W - 1), w1 = (int8)((int)W + 1);
    const int8 oy8 = (int8)((int)oy), ox8 = (int8)((int)ox);
    float8 py = (float8)((float)(y + oy)), px = convert_float8(xs + ox8);
    float8 ay = (float8)(-1.0f), ax = (float8)(-1.0f);
    for (uint t = 0; t < niter && any(act); t++) {
        const int8 iy = convert_int8(py), ix = convert_int8(px); /* trunc; positions >= 0 */
        const int8 y0 = min(hm, max((int8)(0), iy - oy8)), x0 = min(wm, max((int8)(0), ix - ox8));
        const float8 fy = py - convert_float8(iy), fx = px - convert_float8(ix);
        const wgt8 wy0 = one_minus8(fy), wx0 = one_minus8(fx);
        const int8 i0 = 2 * (y0 * w1 + x0), i1 = i0 + 2 * w1;
        /* a[k] = (dY, dX) at (y0, x0) and (y0, x0 + 1) of lane k; b[k] the same at row y0 + 1 */
        float4 a[8], b[8];
        a[0] = vload4(0, G + i0.s0), b[0] = vload4(0, G + i1.s0);
        a[1] = vload4(0, G + i0.s1), b[1] = vload4(0, G + i1.s1);
        a[2] = vload4(0, G + i0.s2), b[2] = vload4(0, G + i1.s2);
        a[3] = vload4(0, G + i0.s3), b[3] = vload4(0, G + i1.s3);
        a[4] = vload4(0, G + i0.s4), b[4] = vload4(0, G + i1.s4);
        a[5] = vload4(0, G + i0.s5), b[5] = vload4(0, G + i1.s5);
        a[6] = vload4(0, G + i0.s6), b[6] = vload4(0, G + i1.s6);
        a[7] = vload4(0, G + i0.s7), b[7] = vload4(0, G + i1.s7);
#define L8(v, c) (float8)(v[0].c, v[1].c, v[2].c, v[3].c, v[4].c, v[5].c, v[6].c, v[7].c)
        const float8 vy = bilinear8(L8(a, x), L8(a, z), L8(b, x), L8(b, z), wy0, fy, wx0, fx);
        const float8 vx = bilinear8(L8(a, y), L8(a, w), L8(b, y), L8(b, w), wy0, fy, wx0, fx);
#undef L8
        const float8 ny = fmin(ymax, fmax((float8)(0.0f), py + vy));
        const float8 nx = fmin(xmax, fmax((float8)(0.0f), px + vx));
        /* the scalar kernel's three cases, per lane: fixed point (stop), 2-cycle (stop, taking
         * the new position when niter - (t + 1) is even), else step */
        const int8 fixed = act & (ny == py) & (nx == px);
        const int8 cyc = act & ~fixed & (ny == ay) & (nx == ax);
        const int8 step = act & ~fixed & ~cyc;
        const int8 take = step | (((niter - (t + 1)) & 1u) == 0 ? cyc : (int8)(0));
        ay = select(ay, py, step);
        ax = select(ax, px, step);
        py = select(py, ny, take);
        px = select(px, nx, take);
        act = step;
    }
    const float pys[8] = {py.s0, py.s1, py.s2, py.s3, py.s4, py.s5, py.s6, py.s7};
    const float pxs[8] = {px.s0, px.s1, px.s2, px.s3, px.s4, px.s5, px.s6, px.s7};
    for (uint k = 0; k < nk; k++) {
        const size_t i = row + xk[k];
        if (pos) {
            pos[i] = pys[k];
            pos[n + i] = pxs[k];
        }
        const int ey = min((int)H - 1, max(0, (int)pys[k] - (int)oy));
        const int ex = min((int)W - 1, max(0, (int)pxs[k] - (int)ox));
        const int e = ey * (int)W + ex;
        end[i] = e;
        atomic_inc(&hist[e]);
    }
}

/* ---- stage 3: seeds ------------------------------------------------------------------------ */

/* A seed is a histogram cell with count > 10 that equals the maximum of its 5x5 neighbourhood
 * (cells outside the image ignored; Cellpose's 20-pixel zero border cannot change a maximum of
 * non-negative counts). Appends the cell's flat index to seeds (order arbitrary). */
__kernel void masks_seeds(__global const uint *hist, const uint H, const uint W,
                          __global uint *seeds, __global uint *n_seeds, const uint cap) {
    const uint x = get_global_id(0), y = get_global_id(1);
    if (x >= W || y >= H)
        return;
    const uint h = hist[(size_t)y * W + x];
    if (h <= 10)
        return;
    for (int dy = -2; dy <= 2; dy++) {
        int yy = (int)y + dy;
        if (yy < 0 || yy >= (int)H)
            continue;
        for (int dx = -2; dx <= 2; dx++) {
            int xx = (int)x + dx;
            if (xx < 0 || xx >= (int)W)
                continue;
            if (hist[(size_t)yy * W + xx] > h)
                return;
        }
    }
    uint k = atomic_inc(n_seeds);
    if (k < cap)
        seeds[k] = y * W + x;
}

/* Grows seed k: the 11x11 window around it, 5 times "dilate by 3x3 within the window, keep cells
 * with count > 2" (Cellpose get_masks_torch). Rows are 11-bit masks. Stores the region in
 * region[k*11 .. k*11+10], records seedid[cell] = k, and raises best[c] to the seed's count for
 * every covered cell c (pass 1 of painting: the highest count wins, as Cellpose paints seeds in
 * ascending count order). */
__kernel void masks_grow(__global const uint *hist, const uint H, const uint W,
                         __global const uint *seeds, const uint n_seeds, __global ushort *region,
                         __global uint *seedid, __global uint *best) {
    const uint k = get_global_id(0);
    if (k >= n_seeds)
        return;
    const uint c = seeds[k];
    const int cy = (int)(c / W), cx = (int)(c % W);
    ushort ok[11], m[11], nm[11];
    for (int r = 0; r < 11; r++) {
        int yy = cy - 5 + r;
        ushort bits = 0;
        if (yy >= 0 && yy < (int)H) {
            for (int b = 0; b < 11; b++) {
                int xx = cx - 5 + b;
                if (xx >= 0 && xx < (int)W && hist[(size_t)yy * W + xx] > 2)
                    bits |= (ushort)(1u << b);
            }
        }
        ok[r] = bits;
        m[r] = 0;
    }
    m[5] = (ushort)(1u << 5);
    for (int it = 0; it < 5; it++) {
        for (int r = 0; r < 11; r++) {
            uint v = m[r];
            if (r > 0)
                v |= m[r - 1];
            if (r < 10)
                v |= m[r + 1];
            v = (v | (v << 1) | (v >> 1)) & 0x7ffu;
            nm[r] = (ushort)(v & ok[r]);
        }
        for (int r = 0; r < 11; r++)
            m[r] = nm[r];
    }
    const uint h = hist[c];
    seedid[c] = k;
    for (int r = 0; r < 11; r++) {
        region[(size_t)k * 11 + r] = m[r];
        for (int b = 0; b < 11; b++)
            if (m[r] & (1u << b))
                atomic_max(&best[(size_t)(cy - 5 + r) * W + (uint)(cx - 5 + b)], h);
    }
}

/* Pass 2 of painting: among the seeds with the highest count at a cell, the one latest in
 * row-major order wins (what a stable ascending sort would give; torch's argsort is not stable,
 * so Cellpose leaves this tie unspecified). win[c] = flat index of the winning seed + 1. */
__kernel void masks_paint(__global const uint *hist, const uint W, __global const uint *seeds,
                          const uint n_seeds, __global const ushort *region,
                          __global const uint *best, __global uint *win) {
    const uint k = get_global_id(0);
    if (k >= n_seeds)
        return;
    const uint c = seeds[k];
    const int cy = (int)(c / W), cx = (int)(c % W);
    const uint h = hist[c];
    for (int r = 0; r < 11; r++) {
        uint m = region[(size_t)k * 11 + r];
        for (int b = 0; b < 11; b++) {
            if (!(m & (1u << b)))
                continue;
            size_t cell = (size_t)(cy - 5 + r) * W + (uint)(cx - 5 + b);
            if (best[cell] == h)
                atomic_max(&win[cell], c + 1);
        }
    }
}

/* Each followed pixel takes the label of the cell its end point fell into: seed list index + 1
 * (provisional), 0 when no seed region covers it. */
__kernel void masks_assign(__global const int *end, const uint n, __global const uint *win,
                           __global const uint *seedid, __global uint *labels) {
    const uint i = get_global_id(0);
    if (i >= n)
        return;
    const int e = end[i];
    uint lab = 0;
    if (e >= 0) {
        uint w = win[e];
        if (w)
            lab = seedid[w - 1] + 1;
    }
    labels[i] = lab;
}

/* ---- per-label statistics and relabelling ----------------------------------------------- */

/* For labels 1..n_labels (index l-1): count, first flat index (row-major first appearance)
 * and, when box is not NULL, the bounding box as min y, max y, min x, max x at box[4*(l-1)].
 * The host initialises count 0, first 0xffffffff, box (0xffffffff, 0, 0xffffffff, 0). */
__kernel void masks_stats(__global const uint *labels, const uint H, const uint W,
                          const uint n_labels, __global uint *count, __global uint *first,
                          __global uint *box) {
    const uint x = get_global_id(0), y = get_global_id(1);
    if (x >= W || y >= H)
        return;
    const uint i = y * W + x;
    const uint l = labels[i];
    if (l == 0 || l > n_labels)
        return;
    atomic_inc(&count[l - 1]);
    atomic_min(&first[l - 1], i);
    if (box) {
        atomic_min(&box[4 * (l - 1) + 0], y);
        atomic_max(&box[4 * (l - 1) + 1], y);
        atomic_min(&box[4 * (l - 1) + 2], x);
        atomic_max(&box[4 * (l - 1) + 3], x);
    }
}

/* masks_stats for CPU devices: one work-item per row (global size H), one set of atomics per
 * run of equal labels instead of per pixel (masks are runs of tens of pixels along a row, so
 * this takes most of the locked operations away; same results, since count, min and max do not
 * depend on the order of the updates). */
__kernel void masks_stats_rows(__global const uint *labels, const uint H, const uint W,
                               const uint n_labels, __global uint *count, __global uint *first,
                               __global uint *box) {
    const uint y = get_global_id(0);
    if (y >= H)
        return;
    __global const uint *row = labels + (size_t)y * W;
    uint x = 0;
    while (x < W) {
        const uint l = row[x], x0 = x;
        while (x < W && row[x] == l)
            x++;
        if (l == 0 || l > n_labels)
            continue;
        atomic_add(&count[l - 1], x - x0);
        atomic_min(&first[l - 1], y * W + x0);
        if (box) {
            atomic_min(&box[4 * (l - 1) + 0], y);
            atomic_max(&box[4 * (l - 1) + 1], y);
            atomic_min(&box[4 * (l - 1) + 2], x0);
            atomic_max(&box[4 * (l - 1) + 3], x - 1);
        }
    }
}

/* labels[i] = map[labels[i]] (map[0] = 0; labels above n_map become 0). */
__kernel void masks_relabel(__global uint *labels, const uint n, __global const uint *map,
                            const uint n_map) {
    const uint i = get_global_id(0);
    if (i >= n)
        return;
    const uint l = labels[i];
    labels[i] = l < n_map ? map[l] : 0u;
}

/* Final conversion to uint16 (when every label is below 65536). */
__kernel void masks_to_u16(__global const uint *labels, const uint n, __global ushort *out) {
    const uint i = get_global_id(0);
    if (i < n)
        out[i] = (ushort)labels[i];
}
