/* kernels/masks3d.cl: flows -> masks in 3-D (src/flow/masks3d.c, docs/masks.md "Volumes"):
 * Cellpose 3.1's follow_flows for a volume, which always takes steps_interp's PyTorch branch:
 * torch.nn.functional.grid_sample (trilinear, zeros padding, align_corners=False) on flows
 * pre-scaled by 2/(L-1), positions normalised to [-1, 1]. The arithmetic is PyTorch's CPU
 * grid_sampler_3d in float32, operation by operation (no contraction), so end points are
 * Cellpose's bits. Then the end-point histogram and its seeds (5x5x5 maxima with count > 10). */
#pragma OPENCL FP_CONTRACT OFF

/* grid_sample of the 3 channels of im (x, y, z scaled flows; w unused) at normalised (gx, gy,
 * gz): PyTorch's grid_sampler_3d_cpu_impl, bilinear, padding zeros, align_corners False. */
static inline float3 m3_sample(__global const float4 *im, int D, int H, int W, float gx, float gy,
                               float gz) {
    const float ix = ((gx + 1.0f) * (float)W - 1.0f) * 0.5f;
    const float iy = ((gy + 1.0f) * (float)H - 1.0f) * 0.5f;
    const float iz = ((gz + 1.0f) * (float)D - 1.0f) * 0.5f;
    const int x0 = (int)floor(ix), y0 = (int)floor(iy), z0 = (int)floor(iz);
    const int x1 = x0 + 1, y1 = y0 + 1, z1 = z0 + 1;
    const float wx0 = (float)x1 - ix, wx1 = ix - (float)x0;
    const float wy0 = (float)y1 - iy, wy1 = iy - (float)y0;
    const float wz0 = (float)z1 - iz, wz1 = iz - (float)z0;
    const int xs[2] = {x0, x1}, ys[2] = {y0, y1}, zs[2] = {z0, z1};
    const float wxs[2] = {wx0, wx1}, wys[2] = {wy0, wy1}, wzs[2] = {wz0, wz1};
    float3 out = (float3)(0.0f, 0.0f, 0.0f);
    /* PyTorch's order: tnw, tne, tsw, tse, bnw, bne, bsw, bse (x fastest, then y, then z) */
    for (int c = 0; c < 8; c++) {
        const int a = c & 1, b = (c >> 1) & 1, d = c >> 2;
        const int x = xs[a], y = ys[b], z = zs[d];
        float w = wxs[a] * wys[b];
        w = w * wzs[d];
        if (x >= 0 && x < W && y >= 0 && y < H && z >= 0 && z < D) {
            const float4 v = im[((size_t)z * H + y) * W + x];
            float px = v.x * w, py = v.y * w, pz = v.z * w;
            out.x = out.x + px;
            out.y = out.y + py;
            out.z = out.z + pz;
        }
    }
    return out;
}

/* One followed voxel per work-item: niter Euler steps, clamped to [-1, 1]; stops early at a
 * fixed point or a 2-cycle (the step is a function of the position alone, so the position after
 * niter steps is then known). End point: (p + 1) * 0.5 * (L - 1) truncated, as a voxel index;
 * counted in hist. tz, ty, tx: the normalised start coordinate of each index (host-computed). */
__kernel void m3_euler(__global const float4 *im, __global const uint *list, uint n,
                       __global const float *tz, __global const float *ty, __global const float *tx,
                       int D, int H, int W, uint niter, __global uint *end,
                       __global volatile uint *hist) {
    const uint i = get_global_id(0);
    if (i >= n)
        return;
    const uint v = list[i];
    const uint HW = (uint)H * (uint)W;
    const int z = (int)(v / HW);
    const uint r = v - (uint)z * HW;
    const int y = (int)(r / (uint)W);
    const int x = (int)(r - (uint)y * (uint)W);
    float px = tx[x], py = ty[y], pz = tz[z];
    float qx = px, qy = py, qz = pz;
    for (uint t = 0; t < niter; t++) {
        const float3 d = m3_sample(im, D, H, W, px, py, pz);
        const float nx = fmin(fmax(px + d.x, -1.0f), 1.0f);
        const float ny = fmin(fmax(py + d.y, -1.0f), 1.0f);
        const float nz = fmin(fmax(pz + d.z, -1.0f), 1.0f);
        if (nx == px && ny == py && nz == pz)
            break;
        if (t > 0 && nx == qx && ny == qy && nz == qz) {
            /* p -> q -> p ...: after step t we are at q; niter-1-t steps remain */
            if (((niter - 1 - t) & 1u) == 0) {
                px = nx;
                py = ny;
                pz = nz;
            }
            break;
        }
        qx = px;
        qy = py;
        qz = pz;
        px = nx;
        py = ny;
        pz = nz;
    }
    float fx = (px + 1.0f) * 0.5f, fy = (py + 1.0f) * 0.5f, fz = (pz + 1.0f) * 0.5f;
    fx = fx * (float)(W - 1);
    fy = fy * (float)(H - 1);
    fz = fz * (float)(D - 1);
    const int ex = clamp((int)fx, 0, W - 1), ey = clamp((int)fy, 0, H - 1),
              ez = clamp((int)fz, 0, D - 1);
    const uint e = ((uint)ez * (uint)H + (uint)ey) * (uint)W + (uint)ex;
    end[i] = e;
    atomic_inc(&hist[e]);
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
