/* kernels/tiles.cl: tiles for the network and the blend back (Cellpose make_tiles,
 * unaugment_tiles, average_tiles). Padding is virtual: tiles read the unpadded image and see
 * zeros outside it. With augment, tile (j, i) is flipped in y when i is odd and in x when j is
 * odd (make_tiles' rule), and the blend undoes the flips and negates dY / dX accordingly. */
#pragma OPENCL FP_CONTRACT OFF

/* x [nch, lyr, lxr] -> tiles [ntiles, nch, th, tw] holding tiles first .. first + ntiles - 1;
 * global (tw, th, ntiles * nch). */
__kernel void tiles_extract(__global const float *x, const uint nch, const uint lyr, const uint lxr,
                            const uint ypad1, const uint xpad1, const uint th, const uint tw,
                            const uint first, const uint ntiles, const uint nx,
                            __global const uint *ys, __global const uint *xs, const int augment,
                            __global float *tiles) {
    const uint col = get_global_id(0), r = get_global_id(1), tc = get_global_id(2);
    if (col >= tw || r >= th || tc >= ntiles * nch)
        return;
    const uint c = tc % nch, t = first + tc / nch;
    const size_t g = (size_t)tc * th + r;
    const uint j = t / nx, i = t - j * nx;
    const int flipy = augment && (i & 1u), flipx = augment && (j & 1u);
    const uint rr = flipy ? th - 1 - r : r, cc = flipx ? tw - 1 - col : col;
    const long yy = (long)ys[j] + rr - ypad1, xx = (long)xs[i] + cc - xpad1;
    float v = 0.0f;
    if (yy >= 0 && yy < lyr && xx >= 0 && xx < lxr)
        v = x[((size_t)c * lyr + (size_t)yy) * lxr + (size_t)xx];
    tiles[(size_t)g * tw + col] = v;
}

/* Adds tiles first .. first + count - 1 (y [count, nout, th, tw]) into acc [nout + 1, lyr, lxr]
 * (nout <= 4; plane nout sums the weights): for each pixel of the unpadded region, taper
 * weight times value over the tiles that cover it, in tile order (as average_tiles adds), so
 * any batching gives the same sums. Global (lxr, rows): rows row0 .. row0 + rows - 1 of the
 * region, those the batch's tiles can cover (the host computes them). */
__kernel void tiles_blend_add(__global const float *y, const uint nout, const uint lyr,
                              const uint lxr, const uint ypad1, const uint xpad1, const uint th,
                              const uint tw, const uint ny, const uint nx, const uint first,
                              const uint count, __global const uint *ys, __global const uint *xs,
                              const int augment, __global const float *mask, __global float *acc,
                              const uint row0) {
    const uint x = get_global_id(0), yrow = row0 + get_global_id(1);
    if (x >= lxr || yrow >= lyr || nout > 4)
        return;
    const uint py = yrow + ypad1, px = x + xpad1;
    const size_t plane = (size_t)lyr * lxr, at = (size_t)yrow * lxr + x;
    float a[4], wsum = acc[nout * plane + at];
    for (uint c = 0; c < nout; c++)
        a[c] = acc[c * plane + at];
    const uint j0 = first / nx, j1 = (first + count - 1) / nx;
    for (uint j = j0; j <= j1 && j < ny; j++) {
        if (py < ys[j] || py >= ys[j] + th)
            continue;
        const uint r = py - ys[j];
        for (uint i = 0; i < nx; i++) {
            const uint t = j * nx + i;
            if (t < first || t >= first + count || px < xs[i] || px >= xs[i] + tw)
                continue;
            const uint q = px - xs[i];
            const float wgt = mask[r * tw + q];
            const int flipy = augment && (i & 1u), flipx = augment && (j & 1u);
            const uint tr = flipy ? th - 1 - r : r, tq = flipx ? tw - 1 - q : q;
            __global const float *tp = y + (size_t)(t - first) * nout * th * tw;
            for (uint c = 0; c < nout; c++) {
                float v = tp[((size_t)c * th + tr) * tw + tq];
                if ((c == 0 && flipy) || (c == 1 && flipx))
                    v = -v;
                a[c] = a[c] + v * wgt;
            }
            wsum = wsum + wgt;
        }
    }
    for (uint c = 0; c < nout; c++)
        acc[c * plane + at] = a[c];
    acc[nout * plane + at] = wsum;
}

/* out [nout, n] = acc [c] / acc [nout] (the weight sum; > 0 wherever a tile covers). */
__kernel void tiles_blend_finish(__global const float *acc, const uint nout, const uint n,
                                 __global float *out) {
    const uint i = get_global_id(0), c = get_global_id(1);
    if (i >= n || c >= nout)
        return;
    out[(size_t)c * n + i] = acc[(size_t)c * n + i] / acc[(size_t)nout * n + i];
}
