/* kernels/common.h: prepended by src/core/programs.c to the source of every program (not a
 * program of its own), so that it is part of every program's text and of its cache key.
 *
 * Host constants are not defined here: they come as build options from one definition on the
 * host (src/core/kernel_defs.h), so that host and kernels cannot disagree. A program that uses
 * one checks that it is there.
 *
 * Float pairs ("double-float"): an unevaluated sum h + l of two floats, about 44 significant
 * bits, for the kernels that must follow Cellpose's float64 arithmetic on devices without
 * doubles (docs/flows.md, docs/masks.md). One set of operations, defined for a scalar pair ff
 * (float) and a vector pair ff8 (float8, the CPU kernels' lanes) from the same text, so a lane
 * of ff8 rounds exactly as ff. They rely on IEEE float32 rounding of every operation: FP
 * contraction is off for them, and explicit fma gives the exact error of a product (OpenCL
 * requires fma to be correctly rounded).
 *   P_two_sum(a, b)   a + b exactly (Knuth).
 *   P_two_prod(a, b)  a * b exactly.
 *   P_renorm(x)       the same value with |l| <= ulp(h) / 2 (fast two-sum, |x.l| <= |x.h|).
 *   P_add(a, b)       a + b: two-sum of the high parts, the low parts added to its error; not
 *                     renormalised.
 *   P_add_renorm(a, b)  P_renorm(P_add(a, b)), the classic double-float sum.
 *   P_mul_f(a, b)     float a times pair b; the cross term folded in with fma; not renormalised.
 *   P_mul(a, b)       pair times pair; both cross terms folded in with fma (a.l * b.l is below
 *                     the pair's precision); not renormalised.
 *   P_mul_renorm(a, b)  pair times pair, the two cross terms rounded and summed first, then
 *                     added to the error of the high product, renormalised. Rounds differently
 *                     from P_mul; labels_to_flows.cl's heat field uses it (its flows are pinned
 *                     to these roundings by the parity tests).
 */
#pragma OPENCL FP_CONTRACT OFF

#define GPUSEG_FLOAT_PAIR(P, T)                                                                    \
    typedef struct {                                                                               \
        T h, l;                                                                                    \
    } P;                                                                                           \
    static inline P P##_make(const T h, const T l) {                                               \
        P r;                                                                                       \
        r.h = h;                                                                                   \
        r.l = l;                                                                                   \
        return r;                                                                                  \
    }                                                                                              \
    static inline P P##_two_sum(const T a, const T b) {                                            \
        const T s = a + b;                                                                         \
        const T bb = s - a;                                                                        \
        return P##_make(s, (a - (s - bb)) + (b - bb));                                             \
    }                                                                                              \
    static inline P P##_two_prod(const T a, const T b) {                                           \
        const T p = a * b;                                                                         \
        return P##_make(p, fma(a, b, -p));                                                         \
    }                                                                                              \
    static inline P P##_renorm(const P x) {                                                        \
        const T h = x.h + x.l;                                                                     \
        return P##_make(h, x.l - (h - x.h));                                                       \
    }                                                                                              \
    static inline P P##_add(const P a, const P b) {                                                \
        P s = P##_two_sum(a.h, b.h);                                                               \
        s.l = s.l + (a.l + b.l);                                                                   \
        return s;                                                                                  \
    }                                                                                              \
    static inline P P##_add_renorm(const P a, const P b) {                                         \
        return P##_renorm(P##_add(a, b));                                                          \
    }                                                                                              \
    static inline P P##_mul_f(const T a, const P b) {                                              \
        P r = P##_two_prod(a, b.h);                                                                \
        r.l = fma(a, b.l, r.l);                                                                    \
        return r;                                                                                  \
    }                                                                                              \
    static inline P P##_mul(const P a, const P b) {                                                \
        P r = P##_mul_f(a.h, b);                                                                   \
        r.l = fma(a.l, b.h, r.l);                                                                  \
        return r;                                                                                  \
    }                                                                                              \
    static inline P P##_mul_renorm(const P a, const P b) {                                         \
        P r = P##_two_prod(a.h, b.h);                                                              \
        r.l = r.l + (a.h * b.l + a.l * b.h);                                                       \
        return P##_renorm(r);                                                                      \
    }

GPUSEG_FLOAT_PAIR(ff, float)
GPUSEG_FLOAT_PAIR(ff8, float8)
#undef GPUSEG_FLOAT_PAIR

/* Back to the OpenCL default for the program's own text; a program that needs contraction off
 * says so itself. */
#pragma OPENCL FP_CONTRACT ON
