/* Sums over n contiguous float or double values, accumulated in double, in a fixed order (the
 * same bits on every call), for the normalization kernels (norm.pyx) and the plane sums of
 * pooling and conv's bias gradient (_planes.pxd).
 *
 * gcc/clang vector extensions of FM_DL doubles: 8 at the avx512 level (one zmm), 4 otherwise
 * (one ymm with AVX; the compiler splits them at the scalar level). Four accumulators: an add
 * (fma) has 3-4 cycles of latency, so four chains keep the FP pipes busy (two left the
 * reductions latency-bound at ~2 values per cycle); registers, not an accumulator array (an
 * array was zeroed with `rep stos` and spilled, which made LayerNorm(32) backward 2x slower).
 * FM_RED_LOOP steps 4*FM_DL values, then FM_DL at a time into the first accumulator; the
 * caller does the scalar tail. Other compilers: FM_HAVE_DVEC is 0 and callers keep plain loops.
 */
#ifndef FM_REDUCE_H
#define FM_REDUCE_H
#include <string.h>
#include "fm_vec.h"

#if defined(__GNUC__) || defined(__clang__)
#define FM_HAVE_DVEC 1
#if defined(__clang__)
#pragma clang diagnostic ignored "-Wpsabi"     /* static inline only: no vector ABI crosses a call */
#endif
#if FM_LEVEL >= 2
#define FM_DL 8
#else
#define FM_DL 4
#endif
typedef double fm_dv __attribute__((vector_size(8 * FM_DL)));
typedef float fm_fv __attribute__((vector_size(4 * FM_DL)));

#if FM_LEVEL >= 2
static inline fm_dv fm_ld_f(const float* p) { return (fm_dv)_mm512_cvtps_pd(_mm256_loadu_ps(p)); }
#elif FM_LEVEL >= 1
/* one vcvtps2pd from memory (the generic conversion became 2 x 128-bit + insert) */
static inline fm_dv fm_ld_f(const float* p) { return (fm_dv)_mm256_cvtps_pd(_mm_loadu_ps(p)); }
#else
static inline fm_dv fm_ld_f(const float* p) {
    fm_fv v; memcpy(&v, p, sizeof v); return __builtin_convertvector(v, fm_dv); }
#endif
static inline fm_dv fm_ld_d(const double* p) { fm_dv v; memcpy(&v, p, sizeof v); return v; }
static inline void fm_st_d(double* p, fm_dv v) { memcpy(p, &v, sizeof v); }

/* the four accumulators' lanes, folded in a fixed order */
static inline double fm_hsum4(fm_dv a0, fm_dv a1, fm_dv a2, fm_dv a3) {
    fm_dv c = (a0 + a1) + (a2 + a3);
#if FM_DL == 8
    return ((c[0] + c[4]) + (c[2] + c[6])) + ((c[1] + c[5]) + (c[3] + c[7]));
#else
    return (c[0] + c[2]) + (c[1] + c[3]);
#endif
}

#define FM_RED_LOOP(STEP)                                                                     \
    for (; i + 4 * FM_DL <= n; i += 4 * FM_DL) {                                              \
        STEP(a0, b0, i) STEP(a1, b1, i + FM_DL) STEP(a2, b2, i + 2 * FM_DL)                   \
        STEP(a3, b3, i + 3 * FM_DL) }                                                         \
    for (; i + FM_DL <= n; i += FM_DL) { STEP(a0, b0, i) }
#define FM_ACC4 fm_dv a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}
#define FM_ACC4B fm_dv b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0}
#else
#define FM_HAVE_DVEC 0
#endif

#endif /* FM_REDUCE_H */
