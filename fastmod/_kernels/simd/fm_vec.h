/* fastmod's vector layer: one set of float vector operations, FM_W lanes wide, that every
 * hand-written SIMD kernel (the headers beside this one and the fm_v loops in the .pyx files)
 * is written against once.
 *
 * Every kernel module is compiled once per instruction-set level (setup.py) and the level is
 * chosen at import from what the CPU and OS support (fastmod/_kernels/__init__.py,
 * FASTMOD_ISA overrides):
 *
 *   FM_LEVEL 0  "scalar"  FM_W = 1   plain C: any CPU (x86-64 baseline, aarch64, ...)
 *   FM_LEVEL 1  "avx2"    FM_W = 8   AVX2 + FMA (+ F16C)                       __m256
 *   FM_LEVEL 2  "avx512"  FM_W = 16  AVX-512 F/BW/DQ/VL (+ AVX2, FMA)          __m512
 *
 * The build passes -DFM_LEVEL=n with the matching -m flags; without it the level follows the
 * compiler's target macros (a plain `cc -march=native` build of a header still works).
 *
 * Semantics shared by every level (the scalar one spells them out):
 *   fm_vmax(a, b) = a > b ? a : b   and   fm_vmin(a, b) = a < b ? a : b   (b when either is NaN,
 *     as maxps/minps do: fm_vmax(x, c) clamps and keeps NaN only when NaN is the second operand)
 *   masks (fm_vm) come from ordered comparisons (false on NaN) except fm_vnlt (true on NaN);
 *   fm_vselect(m, t, f) = m ? t : f;   fm_vkeep(v, m) = m ? v : 0
 *   fm_vhsum adds the lanes in a fixed order: the same bits on every call.
 *   fm_vload_n / fm_vstore_n touch only the first n lanes (0 <= n <= FM_W).
 *   fm_vtranspose(r): r[i] lane j <-> r[j] lane i for an array of FM_W vectors (a square block).
 *   fm_vdeinterleave2(a, b, &even, &odd): of the 2*FM_W floats p = a then b, even = p[0], p[2],
 *     ..., odd = p[1], p[3], ...;  fm_vinterleave2(even, odd, &a, &b) is its inverse.
 */
#ifndef FM_VEC_H
#define FM_VEC_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifndef FM_LEVEL
#  if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#    define FM_LEVEL 2
#  elif defined(__AVX2__) && defined(__FMA__)
#    define FM_LEVEL 1
#  else
#    define FM_LEVEL 0
#  endif
#endif

#if FM_LEVEL >= 1
#  include <immintrin.h>
#endif

#if FM_LEVEL == 2
#  define FM_ISA_NAME "avx512"
#elif FM_LEVEL == 1
#  define FM_ISA_NAME "avx2"
#else
#  define FM_ISA_NAME "scalar"
#endif

#if defined(__clang__)
#  pragma clang diagnostic ignored "-Wpsabi"    /* static inline only: no vector ABI crosses a call */
#elif defined(__GNUC__)
#  pragma GCC diagnostic ignored "-Wpsabi"
#endif

/* ------------------------------------------------------------------ AVX-512: 16 floats */
#if FM_LEVEL == 2
#define FM_W 16
typedef __m512 fm_vf;
typedef __mmask16 fm_vm;
typedef __m512i fm_vi;
typedef __m512d fm_vd;           /* FM_W / 2 doubles */
#define FM_WD 8

static inline fm_vf fm_vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void fm_vstore(float* p, fm_vf v) { _mm512_storeu_ps(p, v); }
static inline fm_vf fm_vset1(float a) { return _mm512_set1_ps(a); }
static inline fm_vf fm_vzero(void) { return _mm512_setzero_ps(); }
static inline fm_vf fm_vadd(fm_vf a, fm_vf b) { return _mm512_add_ps(a, b); }
static inline fm_vf fm_vsub(fm_vf a, fm_vf b) { return _mm512_sub_ps(a, b); }
static inline fm_vf fm_vmul(fm_vf a, fm_vf b) { return _mm512_mul_ps(a, b); }
static inline fm_vf fm_vdiv(fm_vf a, fm_vf b) { return _mm512_div_ps(a, b); }
/* 1 / b to ~1e-8 relative (14-bit estimate + one Newton step): vdivps zmm issues one per 16
   cycles, this two FMAs and an estimate (GELU forward 384 -> 2xx us on 1M floats, 2 threads) */
static inline fm_vf fm_vrecip(fm_vf b) {
    __m512 r = _mm512_rcp14_ps(b);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(b, r, _mm512_set1_ps(1.0f)), r);
}
static inline fm_vf fm_vfma(fm_vf a, fm_vf b, fm_vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline fm_vf fm_vfnma(fm_vf a, fm_vf b, fm_vf c) { return _mm512_fnmadd_ps(a, b, c); }
static inline fm_vf fm_vfms(fm_vf a, fm_vf b, fm_vf c) { return _mm512_fmsub_ps(a, b, c); }
static inline fm_vf fm_vmax(fm_vf a, fm_vf b) { return _mm512_max_ps(a, b); }
static inline fm_vf fm_vmin(fm_vf a, fm_vf b) { return _mm512_min_ps(a, b); }
static inline fm_vf fm_vabs(fm_vf a) { return _mm512_abs_ps(a); }
static inline fm_vm fm_vlt(fm_vf a, fm_vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
static inline fm_vm fm_vgt(fm_vf a, fm_vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
static inline fm_vm fm_vge(fm_vf a, fm_vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
static inline fm_vm fm_vnlt(fm_vf a, fm_vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_NLT_UQ); }
static inline fm_vf fm_vselect(fm_vm m, fm_vf t, fm_vf f) { return _mm512_mask_blend_ps(m, f, t); }
static inline fm_vf fm_vkeep(fm_vf v, fm_vm m) { return _mm512_maskz_mov_ps(m, v); }
static inline __mmask16 fm__first(int n) { return (__mmask16)((1u << n) - 1u); }
static inline fm_vf fm_vload_n(const float* p, int n) { return _mm512_maskz_loadu_ps(fm__first(n), p); }
static inline void fm_vstore_n(float* p, fm_vf v, int n) { _mm512_mask_storeu_ps(p, fm__first(n), v); }
static inline float fm_vhsum(fm_vf v) {
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline fm_vi fm_vcvtt(fm_vf a) { return _mm512_cvttps_epi32(a); }
static inline fm_vf fm_vi2f(fm_vi a) { return _mm512_cvtepi32_ps(a); }
static inline fm_vi fm_viset1(int a) { return _mm512_set1_epi32(a); }
static inline fm_vi fm_viadd(fm_vi a, fm_vi b) { return _mm512_add_epi32(a, b); }
static inline fm_vi fm_visub(fm_vi a, fm_vi b) { return _mm512_sub_epi32(a, b); }
static inline fm_vf fm_vpow2i(fm_vi n) {          /* 2^n for -126 <= n <= 127 */
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23));
}
/* doubles: accumulate the lanes of a float vector, widened, into two double vectors */
static inline fm_vd fm_vdzero(void) { return _mm512_setzero_pd(); }
static inline fm_vd fm__lo_d(fm_vf v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
static inline fm_vd fm__hi_d(fm_vf v) { return _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)); }
static inline double fm_vdhsum(fm_vd a) {
    __m256d s4 = _mm256_add_pd(_mm512_castpd512_pd256(a), _mm512_extractf64x4_pd(a, 1));
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(s4), _mm256_extractf128_pd(s4, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
static inline fm_vd fm_vdadd(fm_vd a, fm_vd b) { return _mm512_add_pd(a, b); }
static inline fm_vd fm_vdfma(fm_vd a, fm_vd b, fm_vd c) { return _mm512_fmadd_pd(a, b, c); }
/* 16 x 16 in registers: pairs of rows interleaved, then groups of 4 rows within 128-bit lanes,
   then the lanes gathered (64 shuffles for 256 values) */
static inline void fm_vtranspose(fm_vf r[16]) {
    __m512 t[16], u[16];
    int i, k;
    for (i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);      /* per lane: r_i[0] r_i+1[0] r_i[1] r_i+1[1] */
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);  /*           r_i[2] r_i+1[2] r_i[3] r_i+1[3] */
    }
    for (i = 0; i < 16; i += 4) {                        /* u[i + k]: rows i..i+3 at column 4L + k */
        u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (k = 0; k < 4; k++) {
        __m512 x0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x88);     /* lanes 0, 2 of rows 0-7 */
        __m512 y0 = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xDD);     /* lanes 1, 3 */
        __m512 x1 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x88);
        __m512 y1 = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xDD);
        r[k] = _mm512_shuffle_f32x4(x0, x1, 0x88);
        r[8 + k] = _mm512_shuffle_f32x4(x0, x1, 0xDD);
        r[4 + k] = _mm512_shuffle_f32x4(y0, y1, 0x88);
        r[12 + k] = _mm512_shuffle_f32x4(y0, y1, 0xDD);
    }
}
static inline void fm_vdeinterleave2(fm_vf a, fm_vf b, fm_vf* even, fm_vf* odd) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    *even = _mm512_permutex2var_ps(a, ie, b);
    *odd = _mm512_permutex2var_ps(a, io, b);
}
static inline void fm_vinterleave2(fm_vf even, fm_vf odd, fm_vf* a, fm_vf* b) {
    const __m512i il = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i ih = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    *a = _mm512_permutex2var_ps(even, il, odd);
    *b = _mm512_permutex2var_ps(even, ih, odd);
}

/* ------------------------------------------------------------------ AVX2 + FMA: 8 floats */
#elif FM_LEVEL == 1
#define FM_W 8
typedef __m256 fm_vf;
typedef __m256 fm_vm;            /* all-ones / all-zeros lanes */
typedef __m256i fm_vi;
typedef __m256d fm_vd;
#define FM_WD 4

static inline fm_vf fm_vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void fm_vstore(float* p, fm_vf v) { _mm256_storeu_ps(p, v); }
static inline fm_vf fm_vset1(float a) { return _mm256_set1_ps(a); }
static inline fm_vf fm_vzero(void) { return _mm256_setzero_ps(); }
static inline fm_vf fm_vadd(fm_vf a, fm_vf b) { return _mm256_add_ps(a, b); }
static inline fm_vf fm_vsub(fm_vf a, fm_vf b) { return _mm256_sub_ps(a, b); }
static inline fm_vf fm_vmul(fm_vf a, fm_vf b) { return _mm256_mul_ps(a, b); }
static inline fm_vf fm_vdiv(fm_vf a, fm_vf b) { return _mm256_div_ps(a, b); }
/* 1 / b to ~3e-7 relative (12-bit estimate + one Newton step; see the AVX-512 version) */
static inline fm_vf fm_vrecip(fm_vf b) {
    __m256 r = _mm256_rcp_ps(b);
    return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(b, r, _mm256_set1_ps(1.0f)), r);
}
static inline fm_vf fm_vfma(fm_vf a, fm_vf b, fm_vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline fm_vf fm_vfnma(fm_vf a, fm_vf b, fm_vf c) { return _mm256_fnmadd_ps(a, b, c); }
static inline fm_vf fm_vfms(fm_vf a, fm_vf b, fm_vf c) { return _mm256_fmsub_ps(a, b, c); }
static inline fm_vf fm_vmax(fm_vf a, fm_vf b) { return _mm256_max_ps(a, b); }
static inline fm_vf fm_vmin(fm_vf a, fm_vf b) { return _mm256_min_ps(a, b); }
static inline fm_vf fm_vabs(fm_vf a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
static inline fm_vm fm_vlt(fm_vf a, fm_vf b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
static inline fm_vm fm_vgt(fm_vf a, fm_vf b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
static inline fm_vm fm_vge(fm_vf a, fm_vf b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
static inline fm_vm fm_vnlt(fm_vf a, fm_vf b) { return _mm256_cmp_ps(a, b, _CMP_NLT_UQ); }
static inline fm_vf fm_vselect(fm_vm m, fm_vf t, fm_vf f) { return _mm256_blendv_ps(f, t, m); }
static inline fm_vf fm_vkeep(fm_vf v, fm_vm m) { return _mm256_and_ps(v, m); }
static inline __m256i fm__first(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline fm_vf fm_vload_n(const float* p, int n) { return _mm256_maskload_ps(p, fm__first(n)); }
static inline void fm_vstore_n(float* p, fm_vf v, int n) { _mm256_maskstore_ps(p, fm__first(n), v); }
static inline float fm_vhsum(fm_vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline fm_vi fm_vcvtt(fm_vf a) { return _mm256_cvttps_epi32(a); }
static inline fm_vf fm_vi2f(fm_vi a) { return _mm256_cvtepi32_ps(a); }
static inline fm_vi fm_viset1(int a) { return _mm256_set1_epi32(a); }
static inline fm_vi fm_viadd(fm_vi a, fm_vi b) { return _mm256_add_epi32(a, b); }
static inline fm_vi fm_visub(fm_vi a, fm_vi b) { return _mm256_sub_epi32(a, b); }
static inline fm_vf fm_vpow2i(fm_vi n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}
static inline fm_vd fm_vdzero(void) { return _mm256_setzero_pd(); }
static inline fm_vd fm__lo_d(fm_vf v) { return _mm256_cvtps_pd(_mm256_castps256_ps128(v)); }
static inline fm_vd fm__hi_d(fm_vf v) { return _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)); }
static inline double fm_vdhsum(fm_vd a) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
static inline fm_vd fm_vdadd(fm_vd a, fm_vd b) { return _mm256_add_pd(a, b); }
static inline fm_vd fm_vdfma(fm_vd a, fm_vd b, fm_vd c) { return _mm256_fmadd_pd(a, b, c); }
/* 8 x 8 in registers (24 shuffles for 64 values) */
static inline void fm_vtranspose(fm_vf r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20); r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20); r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31); r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31); r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
static inline void fm_vdeinterleave2(fm_vf a, fm_vf b, fm_vf* even, fm_vf* odd) {
    /* a0 a2 b0 b2 | a4 a6 b4 b6, then the 64-bit pairs reordered 0 2 1 3 */
    *even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
    *odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
}
static inline void fm_vinterleave2(fm_vf even, fm_vf odd, fm_vf* a, fm_vf* b) {
    __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
    *a = _mm256_permute2f128_ps(lo, hi, 0x20);
    *b = _mm256_permute2f128_ps(lo, hi, 0x31);
}

/* ------------------------------------------------------------------ scalar: 1 float */
#else
#define FM_W 1
typedef float fm_vf;
typedef int fm_vm;
typedef int32_t fm_vi;
typedef double fm_vd;
#define FM_WD 1

static inline fm_vf fm_vload(const float* p) { return *p; }
static inline void fm_vstore(float* p, fm_vf v) { *p = v; }
static inline fm_vf fm_vset1(float a) { return a; }
static inline fm_vf fm_vzero(void) { return 0.0f; }
static inline fm_vf fm_vadd(fm_vf a, fm_vf b) { return a + b; }
static inline fm_vf fm_vsub(fm_vf a, fm_vf b) { return a - b; }
static inline fm_vf fm_vmul(fm_vf a, fm_vf b) { return a * b; }
static inline fm_vf fm_vdiv(fm_vf a, fm_vf b) { return a / b; }
static inline fm_vf fm_vrecip(fm_vf b) { return 1.0f / b; }
static inline fm_vf fm_vfma(fm_vf a, fm_vf b, fm_vf c) { return a * b + c; }
static inline fm_vf fm_vfnma(fm_vf a, fm_vf b, fm_vf c) { return c - a * b; }
static inline fm_vf fm_vfms(fm_vf a, fm_vf b, fm_vf c) { return a * b - c; }
static inline fm_vf fm_vmax(fm_vf a, fm_vf b) { return a > b ? a : b; }
static inline fm_vf fm_vmin(fm_vf a, fm_vf b) { return a < b ? a : b; }
static inline fm_vf fm_vabs(fm_vf a) { uint32_t u; memcpy(&u, &a, 4); u &= 0x7fffffffu; memcpy(&a, &u, 4); return a; }
static inline fm_vm fm_vlt(fm_vf a, fm_vf b) { return a < b; }
static inline fm_vm fm_vgt(fm_vf a, fm_vf b) { return a > b; }
static inline fm_vm fm_vge(fm_vf a, fm_vf b) { return a >= b; }
static inline fm_vm fm_vnlt(fm_vf a, fm_vf b) { return !(a < b); }
static inline fm_vf fm_vselect(fm_vm m, fm_vf t, fm_vf f) { return m ? t : f; }
static inline fm_vf fm_vkeep(fm_vf v, fm_vm m) { return m ? v : 0.0f; }
static inline fm_vf fm_vload_n(const float* p, int n) { return n > 0 ? *p : 0.0f; }
static inline void fm_vstore_n(float* p, fm_vf v, int n) { if (n > 0) *p = v; }
static inline float fm_vhsum(fm_vf v) { return v; }
static inline fm_vi fm_vcvtt(fm_vf a) { return (int32_t)a; }
static inline fm_vf fm_vi2f(fm_vi a) { return (float)a; }
static inline fm_vi fm_viset1(int a) { return a; }
static inline fm_vi fm_viadd(fm_vi a, fm_vi b) { return a + b; }
static inline fm_vi fm_visub(fm_vi a, fm_vi b) { return a - b; }
static inline fm_vf fm_vpow2i(fm_vi n) {
    uint32_t u = (uint32_t)(n + 127) << 23; float f; memcpy(&f, &u, 4); return f;
}
static inline fm_vd fm_vdzero(void) { return 0.0; }
static inline fm_vd fm__lo_d(fm_vf v) { return (double)v; }
static inline fm_vd fm__hi_d(fm_vf v) { (void)v; return 0.0; }
static inline double fm_vdhsum(fm_vd a) { return a; }
static inline fm_vd fm_vdadd(fm_vd a, fm_vd b) { return a + b; }
static inline fm_vd fm_vdfma(fm_vd a, fm_vd b, fm_vd c) { return a * b + c; }
static inline void fm_vtranspose(fm_vf r[1]) { (void)r; }     /* a 1 x 1 block */
static inline void fm_vdeinterleave2(fm_vf a, fm_vf b, fm_vf* even, fm_vf* odd) { *even = a; *odd = b; }
static inline void fm_vinterleave2(fm_vf even, fm_vf odd, fm_vf* a, fm_vf* b) { *a = even; *b = odd; }
#endif

/* ------------------------------------------------------------------ written once, every level */

/* max(v, 0) with NaN kept (v where v >= 0 or unordered) */
static inline fm_vf fm_vrelu(fm_vf v) { return fm_vkeep(v, fm_vnlt(v, fm_vzero())); }

/* a0 += v's low lanes, a1 += its high lanes, widened to double (sums of float data in double) */
static inline void fm_vdacc(fm_vd* a0, fm_vd* a1, fm_vf v) {
    *a0 = fm_vdadd(*a0, fm__lo_d(v));
#if FM_LEVEL >= 1
    *a1 = fm_vdadd(*a1, fm__hi_d(v));
#else
    (void)a1;
#endif
}
/* a0/a1 += x * y lane by lane, in double */
static inline void fm_vdacc_mul(fm_vd* a0, fm_vd* a1, fm_vf x, fm_vf y) {
    *a0 = fm_vdfma(fm__lo_d(x), fm__lo_d(y), *a0);
#if FM_LEVEL >= 1
    *a1 = fm_vdfma(fm__hi_d(x), fm__hi_d(y), *a1);
#else
    (void)a1;
#endif
}

/* x*x = h + l exactly (h the rounded square): FMA levels use fma(x, x, -h); the scalar level
   squares in double, exact for float x (48 significant bits < 53) */
static inline void fm_vsqr_split(fm_vf x, fm_vf* h, fm_vf* l) {
#if FM_LEVEL >= 1
    *h = fm_vmul(x, x);
    *l = fm_vfms(x, x, *h);
#else
    double d = (double)x * (double)x;
    *h = (float)d;
    *l = (float)(d - (double)*h);
#endif
}

/* exp(hi + lo), for hi + lo <= 0 (softmax after the max is subtracted; GELU's -x^2/2 split
   exactly into hi + lo, |lo| < 4): n = round((hi + lo) / ln 2), r = hi + lo - n ln 2 with
   hi - n*C1 exact (C1 has 9 significant bits), a degree-6 polynomial (relative error < 2e-7),
   times 2^n. Exactly 0 where hi < -87.33 (-inf included: masked scores); NaN stays NaN. */
static inline fm_vf fm_vexp_hilo(fm_vf hi, fm_vf lo) {
    fm_vf s = fm_vadd(hi, lo);
    fm_vf t = fm_vmax(fm_vmul(s, fm_vset1(1.44269504088896341f)), fm_vset1(-126.0f));
    t = fm_vmin(t, fm_vset1(0.0f));         /* (never binds for hi + lo <= 0; keeps the cast defined) */
    fm_vi n = fm_visub(fm_vcvtt(fm_vadd(t, fm_vset1(126.5f))), fm_viset1(126));
    fm_vf fn = fm_vi2f(n);
    fm_vf r = fm_vfnma(fn, fm_vset1(0.693359375f), hi);
    r = fm_vfnma(fn, fm_vset1(-2.12194440e-4f), r);
    r = fm_vadd(r, lo);
    fm_vf y = fm_vset1(1.9875691500e-4f);
    y = fm_vfma(y, r, fm_vset1(1.3981999507e-3f));
    y = fm_vfma(y, r, fm_vset1(8.3334519073e-3f));
    y = fm_vfma(y, r, fm_vset1(4.1665795894e-2f));
    y = fm_vfma(y, r, fm_vset1(1.6666665459e-1f));
    y = fm_vfma(y, r, fm_vset1(5.0000001201e-1f));
    y = fm_vfma(fm_vmul(y, r), r, fm_vadd(r, fm_vset1(1.0f)));
    return fm_vselect(fm_vlt(hi, fm_vset1(-87.33f)), fm_vzero(), fm_vmul(y, fm_vpow2i(n)));
}

#endif /* FM_VEC_H */
