# cython: language_level=3
# Vector math shared by the kernels (AVX2 + FMA builds; other builds do not define it and the
# callers keep their scalar paths).

cdef extern from *:
    """
    #ifndef FASTMOD_SIMD_EXP
    #define FASTMOD_SIMD_EXP
    #if defined(__AVX2__) && defined(__FMA__)
    #include <immintrin.h>
    /* exp(hi + lo), 8 floats, for hi + lo <= 0 (softmax after the max is subtracted; GELU's
       -x^2/2 split exactly into hi + lo, |lo| < 4): n = round((hi + lo) / ln 2), r = hi + lo -
       n ln 2 with hi - n*C1 exact (C1 has 9 significant bits), a degree-6 polynomial, times
       2^n. Exactly 0 where hi < -87.33 or is NaN (-inf included: masked scores). */
    static inline __m256 fm_exp8_hilo(__m256 hi, __m256 lo) {
        __m256 s = _mm256_add_ps(hi, lo);
        __m256 t = _mm256_max_ps(_mm256_mul_ps(s, _mm256_set1_ps(1.44269504088896341f)), _mm256_set1_ps(-126.0f));
        __m256i n = _mm256_sub_epi32(_mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_set1_ps(126.5f))), _mm256_set1_epi32(126));
        __m256 fn = _mm256_cvtepi32_ps(n);
        __m256 r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(0.693359375f), hi);
        r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(-2.12194440e-4f), r);
        r = _mm256_add_ps(r, lo);
        __m256 y = _mm256_set1_ps(1.9875691500e-4f);
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
        y = _mm256_fmadd_ps(_mm256_mul_ps(y, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
        __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
        return _mm256_and_ps(_mm256_mul_ps(y, p2), _mm256_cmp_ps(hi, _mm256_set1_ps(-87.33f), _CMP_GE_OQ));
    }
    #endif
    #endif
    """
