/* kernels/masks3d.cl: flows -> masks in 3-D (src/flow/masks3d.c, docs/masks.md "Volumes"):
 * Cellpose 3.1's follow_flows for a volume, which always takes steps_interp's PyTorch branch:
 * torch.nn.functional.grid_sample (trilinear, zeros padding, align_corners=False) on flows
 * pre-scaled by 2/(L-1), positions normalised to [-1, 1]. The arithmetic is PyTorch's CPU
 * grid_sampler_3d in float32, operation by operation (no contraction), so end points are
 * Cellpose's bits. Then the end-point histogram and its seeds (5x5x5 maxima with count > 10). */
#pragma OPENCL FP_CONTRACT OFF

/* The scaled flows of voxel i (x, y, z; w: the next voxel's x, or the buffer's padding float). */
#define M3_LOAD(i) vload4(0, im + 3 * (size_t)(i))

/* grid_sample of the 3 channels of im (x, y, z scaled flows, 3 floats a voxel, one float of
 * padding at the end) at the normalised position g = (x, y, z, 0): PyTorch's
 * grid_sampler_3d_cpu_impl, bilinear, padding zeros, align_corners False. The three axes go
 * through the same float32 operations lane by lane (L = (W, H, D, 1), Lm1 = (W-1, H-1, D-1, 1)).
 * Corners outside the volume are skipped; when the whole 2x2x2 cell is inside (the common case)
 * the same sums are made without per-corner tests. Returns (dx, dy, dz, 0). */
static inline float4 m3_sample(__global const float *im, float4 L, int4 Lm1, int W, int HW,
                               float4 g) {
    const float4 i = ((g + 1.0f) * L - 1.0f) * 0.5f;
    int4 f0 = convert_int4(i); /* towards zero; i >= -0.5, so floor is one lower where f0 > i */
    f0 = f0 + (convert_float4(f0) > i); /* a true comparison is -1 */
    const float4 w0 = convert_float4(f0 + 1) - i, w1 = i - convert_float4(f0);
    /* PyTorch's order: tnw, tne, tsw, tse, bnw, bne, bsw, bse (x fastest, then y, then z); each
     * weight (wx * wy) * wz */
    const float4 wxy = (float4)(w0.x, w1.x, w0.x, w1.x) * (float4)(w0.y, w0.y, w1.y, w1.y);
    const float4 wa = wxy * w0.z, wb = wxy * w1.z;
    float4 out = (float4)(0.0f);
    /* the cell is inside where 0 <= floor(i) <= L - 2, that is 0 <= i < L - 1 */
    if (all(i >= 0.0f && i < convert_float4(Lm1))) {
        const uint b = (uint)f0.z * (uint)HW + (uint)f0.y * (uint)W + (uint)f0.x;
        out = out + M3_LOAD(b) * wa.x;
        out = out + M3_LOAD(b + 1) * wa.y;
        out = out + M3_LOAD(b + W) * wa.z;
        out = out + M3_LOAD(b + W + 1) * wa.w;
        out = out + M3_LOAD(b + HW) * wb.x;
        out = out + M3_LOAD(b + HW + 1) * wb.y;
        out = out + M3_LOAD(b + HW + W) * wb.z;
        out = out + M3_LOAD(b + HW + W + 1) * wb.w;
    } else {
        const float ws[8] = {wa.x, wa.y, wa.z, wa.w, wb.x, wb.y, wb.z, wb.w};
        const int H = HW / W, D = Lm1.z + 1;
        for (int c = 0; c < 8; c++) {
            const int x = f0.x + (c & 1), y = f0.y + ((c >> 1) & 1), z = f0.z + (c >> 2);
            if (x >= 0 && x < W && y >= 0 && y < H && z >= 0 && z < D)
                out = out +
                      M3_LOAD((size_t)z * (size_t)HW + (size_t)y * (size_t)W + (size_t)x) * ws[c];
        }
    }
    out.w = 0.0f;
    return out;
}

#ifndef M3_LANES
#define M3_LANES 2 /* trajectories a work-item follows side by side */
#endif

/* One trajectory of m3_euler. */
typedef struct m3_traj {
    float4 p, q, b;  /* position after t steps, after t - 1 steps, Brent's tortoise */
    uint t, lim;     /* steps made; steps to make (niter until a cycle is found) */
    uint power, lam; /* Brent's cycle search */
    uint i;          /* index in the list; UINT_MAX: the lane is idle */
} m3_traj;

static inline void m3_begin(m3_traj *s, uint i, __global const uint *list, __global const float *tz,
                            __global const float *ty, __global const float *tx, uint HW, uint W,
                            uint niter) {
    const uint v = list[i];
    const uint z = v / HW, r = v - z * HW, y = r / W, x = r - y * W;
    s->p = s->q = s->b = (float4)(tx[x], ty[y], tz[z], 0.0f);
    s->t = 0;
    s->lim = niter;
    s->power = s->lam = 1;
    s->i = i;
}

/* One Euler step of s (s->t < s->lim), then the cycle search while no cycle is known. */
static inline void m3_step(m3_traj *s, __global const float *im, float4 L, int4 Lm1, int W, int HW,
                           uint niter) {
    const float4 nw = fmin(fmax(s->p + m3_sample(im, L, Lm1, W, HW, s->p), -1.0f), 1.0f);
    const uint t = ++s->t;
    if (s->lim == niter) {
        uint cyc = 0;
        if (all(nw == s->p))
            cyc = 1;
        else if (all(nw == s->q))
            cyc = 2;
        else if (all(nw == s->b))
            cyc = s->lam;
        if (cyc)
            s->lim = t + (niter - t) % cyc;
        else {
            if (s->power == s->lam) {
                s->b = nw;
                s->power <<= 1;
                s->lam = 0;
            }
            s->lam++;
        }
    }
    s->q = s->p;
    s->p = nw;
}

/* Each work-item follows per_item listed voxels, M3_LANES side by side (independent dependency
 * chains that a CPU overlaps; a lane that ends takes the next voxel). Per voxel: niter Euler
 * steps, clamped to [-1, 1]. The step is a function of the position alone, so once the position
 * repeats (a fixed point, a 2-cycle, or a longer cycle found by Brent's method) the position
 * after niter steps is known: the trajectory makes only the steps left modulo the cycle's length.
 * End point: (p + 1) * 0.5 * (L - 1) truncated, as a voxel index; counted in hist. tz, ty, tx: the
 * normalised start coordinate of each index (host-computed). */
__kernel void m3_euler(__global const float *im, __global const uint *list, uint n,
                       __global const float *tz, __global const float *ty, __global const float *tx,
                       int D, int H, int W, uint niter, uint per_item, __global uint *end,
                       __global volatile uint *hist) {
    const size_t first = get_global_id(0) * (size_t)per_item;
    if (first >= n)
        return;
    const uint last = (uint)min(first + per_item, (size_t)n);
    const uint HW = (uint)H * (uint)W;
    const float4 L = (float4)((float)W, (float)H, (float)D, 1.0f);
    const float4 Lf1 = (float4)((float)(W - 1), (float)(H - 1), (float)(D - 1), 1.0f);
    const int4 Lm1 = (int4)(W - 1, H - 1, D - 1, 1);
    m3_traj s[M3_LANES];
    uint next = (uint)first, busy = 0;
#pragma unroll
    for (int k = 0; k < M3_LANES; k++) {
        s[k].i = UINT_MAX;
        if (next < last) {
            m3_begin(&s[k], next++, list, tz, ty, tx, HW, (uint)W, niter);
            busy++;
        }
    }
    while (busy) {
#pragma unroll
        for (int k = 0; k < M3_LANES; k++) {
            if (s[k].i == UINT_MAX)
                continue;
            if (s[k].t < s[k].lim) {
                m3_step(&s[k], im, L, Lm1, W, (int)HW, niter);
                if (s[k].t < s[k].lim)
                    continue;
            }
            const float4 f = ((s[k].p + 1.0f) * 0.5f) * Lf1;
            const int4 e4 = clamp(convert_int4(f), (int4)(0), Lm1);
            const uint e = ((uint)e4.z * (uint)H + (uint)e4.y) * (uint)W + (uint)e4.x;
            end[s[k].i] = e;
            atomic_inc(&hist[e]);
            if (next < last)
                m3_begin(&s[k], next++, list, tz, ty, tx, HW, (uint)W, niter);
            else {
                s[k].i = UINT_MAX;
                busy--;
            }
        }
    }
}

/* Seeds: voxels whose count is > 10 and the maximum of their 5x5x5 neighbourhood (clipped to
 * the volume; Cellpose's padding cells are empty), listed in any order (the host sorts them). */
__kernel void m3_seeds(__global const uint *hist, int D, int H, int W, __global uint *seeds,
                       __global volatile uint *n_seeds, uint cap) {
    const size_t v = get_global_id(0);
    const size_t nvox = (size_t)D * H * W;
    if (v >= nvox)
        return;
    const uint h = hist[v];
    if (h <= 10u)
        return;
    const int z = (int)(v / ((size_t)H * W));
    const int r = (int)(v - (size_t)z * H * W);
    const int y = r / W, x = r - (r / W) * W;
    for (int zz = max(z - 2, 0); zz <= min(z + 2, D - 1); zz++)
        for (int yy = max(y - 2, 0); yy <= min(y + 2, H - 1); yy++)
            for (int xx = max(x - 2, 0); xx <= min(x + 2, W - 1); xx++)
                if (hist[((size_t)zz * H + yy) * W + xx] > h)
                    return;
    const uint k = atomic_inc(n_seeds);
    if (k < cap)
        seeds[k] = (uint)v;
}
