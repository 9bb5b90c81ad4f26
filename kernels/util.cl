/* kernels/util.cl: small element-wise kernels shared by every stage: fills and conversions of
 * raw image samples to float32 planes. Every kernel checks its bounds (the host rounds the
 * global size up to the work-group size). */

__kernel void fill_f32(__global float *dst, const uint n, const float value) {
    const uint i = get_global_id(0);
    if (i < n)
        dst[i] = value;
}

__kernel void fill_u32(__global uint *dst, const uint n, const uint value) {
    const uint i = get_global_id(0);
    if (i < n)
        dst[i] = value;
}

/* Interleaved samples (pixels x channels) -> one float plane per channel (planar, C x N), for
 * samples of type T. */
#define TO_PLANAR_F32(NAME, T)                                                                     \
    __kernel void NAME(__global const T *src, __global float *dst, const uint npix,                \
                       const uint channels) {                                                      \
        const uint i = get_global_id(0);                                                           \
        if (i >= npix)                                                                             \
            return;                                                                                \
        for (uint c = 0; c < channels; c++)                                                        \
            dst[c * npix + i] = (float)src[i * channels + c];                                      \
    }
TO_PLANAR_F32(u8_to_planar_f32, uchar)
TO_PLANAR_F32(u16_to_planar_f32, ushort)
#undef TO_PLANAR_F32
