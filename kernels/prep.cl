/* kernels/prep.cl: Cellpose's input side: channel selection and conversion of interleaved raw
 * samples to float32 planes, and per-channel 1st/99th percentile normalisation with exact order
 * statistics (a 4-pass radix select over the float bits: 8 bits per pass, local histograms).
 * Contraction is off so that every float operation rounds as numpy's float32 arithmetic does. */
#pragma OPENCL FP_CONTRACT OFF

/* The gpuseg_dtype codes (DT_U8 .. DT_F32) and ST_RANK of the per-channel state (uint words laid
 * out by src/prep/normalize.c) are build options from the host (src/core/kernel_defs.h). */
#if !defined(DT_U8) || !defined(DT_F32) || !defined(ST_RANK)
#error "DT_*, ST_RANK: build options from the host (src/core/kernel_defs.h)"
#endif

#define ST_MIN 0
#define ST_MAX 1
#define ST_BAD 2
#define ST_PRE 3 /* 4 prefixes: rank lo, lo + 1, hi, hi + 1; ST_RANK: 4 remaining ranks */

inline float load_sample(__global const uchar *src, int dtype, size_t i) {
    switch (dtype) {
    case DT_U8:
        return (float)src[i];
    case DT_U16:
        return (float)((__global const ushort *)src)[i];
    case DT_U32:
        return convert_float_rte(((__global const uint *)src)[i]);
    case DT_I32:
        return convert_float_rte(((__global const int *)src)[i]);
    default:
        return ((__global const float *)src)[i];
    }
}

/* sel: >= 0 channel index, -1 zero plane, -2 mean over all nc channels (numpy's float32 mean
 * over the last axis: sequential sum, then one division). */
inline float pick(__global const uchar *src, int dtype, size_t base, uint nc, int sel) {
    if (sel == -1)
        return 0.0f;
    if (sel >= 0)
        return load_sample(src, dtype, base + (size_t)sel);
    float s = load_sample(src, dtype, base);
    for (uint c = 1; c < nc; c++)
        s = s + load_sample(src, dtype, base + c);
    return s / (float)nc;
}

/* Interleaved pixels x nc samples -> dst = [2, npix] planes. */
__kernel void prep_channels(__global const uchar *src, const int dtype, const uint npix,
                            const uint nc, const int sel0, const int sel1, __global float *dst) {
    const uint i = get_global_id(0);
    if (i >= npix)
        return;
    const size_t base = (size_t)i * nc;
    dst[i] = pick(src, dtype, base, nc, sel0);
    dst[(size_t)npix + i] = pick(src, dtype, base, nc, sel1);
}

/* Order-preserving map float -> uint (-0 counts as +0, as numpy's comparisons do). */
inline uint fkey(float v) {
    uint u = as_uint(v);
    if (v == 0.0f)
        u = 0u;
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
inline float keyf(uint k) {
    return as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/* The samples [*first, *end) a work-item visits with stride *step: a grid-stride loop, so that
 * neighbouring work-items read neighbouring samples (what a GPU wants), or, in work-groups of
 * one work-item (how the host launches these on CPU devices), one contiguous run each, so that
 * every thread streams through its own part of the plane. */
inline void sample_range(uint n, uint *first, uint *end, uint *step) {
    const ulong gid = get_global_id(0), gsz = get_global_size(0);
    if (get_local_size(0) == 1) {
        const ulong per = ((ulong)n + gsz - 1) / gsz;
        *first = (uint)min((ulong)n, gid * per);
        *end = (uint)min((ulong)n, (gid + 1) * per);
        *step = 1u;
    } else {
        *first = (uint)gid;
        *end = n;
        *step = (uint)gsz;
    }
}

/* Minimum and maximum key and the number of NaN/Inf samples of one plane (st: that channel's
 * state words). One atomic per work-group. */
__kernel void prep_minmax(__global const float *x, const uint off, const uint n,
                          __global uint *st) {
    __local uint lmin, lmax, lbad;
    if (get_local_id(0) == 0) {
        lmin = 0xffffffffu;
        lmax = 0u;
        lbad = 0u;
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    uint mn = 0xffffffffu, mx = 0u, bad = 0u, first, end, step;
    sample_range(n, &first, &end, &step);
    for (uint i = first; i < end; i += step) {
        const float v = x[(size_t)off + i];
        if (!isfinite(v)) {
            bad++;
            continue;
        }
        const uint k = fkey(v);
        mn = min(mn, k);
        mx = max(mx, k);
    }
    atomic_min(&lmin, mn);
    atomic_max(&lmax, mx);
    if (bad)
        atomic_add(&lbad, bad);
    barrier(CLK_LOCAL_MEM_FENCE);
    if (get_local_id(0) == 0) {
        atomic_min(&st[ST_MIN], lmin);
        atomic_max(&st[ST_MAX], lmax);
        if (lbad)
            atomic_add(&st[ST_BAD], lbad);
    }
}

/* One radix pass for 4 rank queries at once: hist[q][b] counts the sampled keys that share the
 * bits above `shift + 8` with query q's prefix and have digit b at `shift`. The sample is the
 * grid (yy * sy, xx * sx), yy < n / nxs, xx < nxs, of a plane of width w (Cellpose subsamples
 * planes above 224^3 pixels with these strides). */
/* Every key lies in [st[ST_MIN], st[ST_MAX]] (prep_minmax, over the whole plane, so over any
 * sample of it too). When the two share every bit from `shift` up, the digit at `shift` is the
 * minimum's for every key: prep_radix_hist skips the pass and prep_radix_select takes the digit
 * from the minimum with the rank unchanged. A constant plane (e.g. the zero second channel of a
 * one-channel image) then costs no pass at all. */
inline int digit_known(__global const uint *st, uint shift) {
    return ((st[ST_MIN] ^ st[ST_MAX]) >> shift) == 0u;
}

__kernel void prep_radix_hist(__global const float *x, const uint off, const uint w, const uint nxs,
                              const uint n, const uint sy, const uint sx, const uint shift,
                              __global const uint *st, __global uint *hist) {
    __local uint lh[4 * 256];
    for (uint i = get_local_id(0); i < 4 * 256; i += get_local_size(0))
        lh[i] = 0u;
    barrier(CLK_LOCAL_MEM_FENCE);
    if (digit_known(st, shift))
        return; /* the same for every work-item, so no barrier below is left waiting */
    const uint himask = shift >= 24 ? 0u : (0xffffffffu << (shift + 8));
    uint pre[4];
    int own[4]; /* queries with the same prefix share one histogram (the first one's) */
    for (int q = 0; q < 4; q++) {
        pre[q] = st[ST_PRE + q];
        own[q] = 1;
        for (int p = 0; p < q; p++)
            if (pre[p] == pre[q])
                own[q] = 0;
    }
    /* In work-groups of one work-item nothing else touches lh, so plain increments do (local
     * atomics are real locked operations on CPU devices: they made this kernel ~2% of a
     * segment run there). */
    const int solo = get_local_size(0) == 1;
    uint first, end, step;
    sample_range(n, &first, &end, &step);
    for (uint s = first; s < end; s += step) {
        size_t at = s; /* the whole plane unless subsampled */
        if (sy != 1 || sx != 1) {
            const uint yy = s / nxs, xx = s - yy * nxs;
            at = (size_t)yy * sy * w + (size_t)xx * sx;
        }
        const float v = x[(size_t)off + at];
        const uint k = fkey(v);
        const uint b = (k >> shift) & 255u;
        for (int q = 0; q < 4; q++)
            if (own[q] && ((k ^ pre[q]) & himask) == 0u) {
                if (solo)
                    lh[q * 256 + b]++;
                else
                    atomic_inc(&lh[q * 256 + b]);
            }
    }
    barrier(CLK_LOCAL_MEM_FENCE);
    for (uint i = get_local_id(0); i < 4 * 256; i += get_local_size(0))
        if (lh[i])
            atomic_add(&hist[i], lh[i]);
}

/* Picks, for each of the 4 queries, the digit whose bucket holds the remaining rank, and
 * narrows the prefix and the rank. One work-item: the prefixes are read before any changes. */
__kernel void prep_radix_select(__global uint *st, __global const uint *hist, const uint shift) {
    if (get_global_id(0) != 0)
        return;
    uint pre[4];
    for (int q = 0; q < 4; q++)
        pre[q] = st[ST_PRE + q];
    for (int q = 0; q < 4; q++) {
        int h = q; /* the histogram of the first query with this prefix (prep_radix_hist) */
        for (int p = q - 1; p >= 0; p--)
            if (pre[p] == pre[q])
                h = p;
        const uint rank = st[ST_RANK + q];
        uint cum = 0u, b = 0u;
        if (digit_known(st, shift)) {
            st[ST_PRE + q] = pre[q] | (st[ST_MIN] & (255u << shift));
            continue;
        }
        for (; b < 255u; b++) {
            const uint c = hist[h * 256 + b];
            if (rank < cum + c)
                break;
            cum += c;
        }
        st[ST_RANK + q] = rank - cum;
        st[ST_PRE + q] = pre[q] | (b << shift);
    }
}

/* numpy's _lerp in float32: a + (b-a)*t, or b - (b-a)*(1-t) when t >= 0.5, each operation
 * rounded. The product goes through a volatile so that no compiler can fuse it with the sum
 * into one fma. On NVIDIA's OpenCL (H200, driver 580) test_prep saw normalised values 2^-23 off
 * numpy's, the size of one rounding of p_lo, despite FP_CONTRACT OFF above; a fused lerp is
 * the likely cause (this change is not yet checked there). One work-item runs this. */
inline float np_lerp(float a, float b, float t) {
    const float diff = b - a;
    volatile float prod = diff * (t >= 0.5f ? 1.0f - t : t);
    if (t >= 0.5f)
        return b - prod;
    return a + prod;
}

/* Percentiles from the selected order statistics, and the channel's mode (normalize99 and
 * normalize_img): par = {p_lo, p_hi, mode, p_hi - p_lo}; mode 0 = constant channel (left
 * unchanged, never inverted), 1 = normalise, 2 = p_hi - p_lo <= 1e-3 (set to 0). */
__kernel void prep_finalize(__global const uint *st, const float glo, const float ghi,
                            __global float *par, const uint c) {
    if (get_global_id(0) != 0)
        return;
    par += 4 * c;
    const float plo = np_lerp(keyf(st[ST_PRE + 0]), keyf(st[ST_PRE + 1]), glo);
    const float phi = np_lerp(keyf(st[ST_PRE + 2]), keyf(st[ST_PRE + 3]), ghi);
    const float d = phi - plo;
    float mode;
    if (st[ST_MIN] >= st[ST_MAX])
        mode = 0.0f;
    else
        mode = d > 1e-3f ? 1.0f : 2.0f; /* numpy compares a float32 with 1e-3 in float32 */
    par[0] = plo;
    par[1] = phi;
    par[2] = mode;
    par[3] = d;
}

/* x = [nch, npix] planes; channel c uses par[4c..4c+3]. The division is refined with one fma
 * step so that it rounds correctly even where the device's `/` is not (OpenCL allows 2.5 ulp);
 * numpy divides correctly rounded. */
__kernel void prep_normalize(__global float *x, const uint npix, const uint nch, const int invert,
                             __global const float *par) {
    const uint i = get_global_id(0), c = get_global_id(1);
    if (i >= npix || c >= nch)
        return;
    const int mode = (int)par[c * 4 + 2];
    if (mode == 0)
        return;
    const size_t at = (size_t)c * npix + i;
    float v = 0.0f;
    if (mode == 1) {
        const float num = x[at] - par[c * 4 + 0];
        const float d = par[c * 4 + 3];
        float q = num / d;
        const float r = fma(-q, d, num);
        v = q + r / d;
    }
    if (invert)
        v = 1.0f - v;
    x[at] = v;
}
