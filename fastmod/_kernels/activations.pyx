# cython: language_level=3
"""Element-wise activations (the seed's sigma) and their backward passes.

Legend: n = number of elements; x input, y output, dy / dx gradients, all C-contiguous, one dtype.
Kinds: RELU, SIGMOID, TANH, GELU (exact, x * Phi(x) with erf), GELU_TANH (tanh approximation).
Loops run over contiguous chunks, one per thread, in a prange; below GRAIN elements per thread
they run serially because entering a parallel region costs more than the work.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp, expf, erf, erff, tanh, tanhf, sqrt

from fastmod._kernels._threads cimport threads_for

cnp.import_array()

cdef enum:
    RELU = 0
    SIGMOID = 1
    TANH = 2
    GELU = 3
    GELU_TANH = 4

KIND = {"relu": RELU, "sigmoid": SIGMOID, "tanh": TANH, "gelu": GELU, "gelu_tanh": GELU_TANH}


# float32 GELU in C with AVX2 + FMA (scalar fallback): glibc's scalar erff/expf made GELU
# forward + backward ~7x slower than torch's vectorized one on (16, 64, 1024).
# erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), exp(-u) (u >= 0) by a Cephes polynomial.
cdef extern from *:
    """
    #include <math.h>
    #if defined(__AVX2__) && defined(__FMA__)
    #include <immintrin.h>
    static inline __m256 fma_exp8_nonpos(__m256 x) {
        __m256 t = _mm256_max_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _mm256_set1_ps(-126.0f));
        __m256i n = _mm256_sub_epi32(_mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_set1_ps(126.5f))), _mm256_set1_epi32(126));
        __m256 fn = _mm256_cvtepi32_ps(n);
        __m256 r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(0.693359375f), x);
        r = _mm256_fnmadd_ps(fn, _mm256_set1_ps(-2.12194440e-4f), r);
        __m256 y = _mm256_set1_ps(1.9875691500e-4f);
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507e-3f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073e-3f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894e-2f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459e-1f));
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201e-1f));
        y = _mm256_fmadd_ps(_mm256_mul_ps(y, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
        __m256 p2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
        return _mm256_and_ps(_mm256_mul_ps(y, p2), _mm256_cmp_ps(x, _mm256_set1_ps(-87.33f), _CMP_GE_OQ));
    }
    /* erf(z) and exp(-z^2) together */
    static inline __m256 fma_erf8(__m256 z, __m256* e_out) {
        __m256 sign = _mm256_and_ps(z, _mm256_set1_ps(-0.0f));
        __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), z);
        __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, _mm256_set1_ps(1.0f)));
        __m256 p = _mm256_set1_ps(1.061405429f);
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
        p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
        p = _mm256_mul_ps(p, t);
        __m256 e = fma_exp8_nonpos(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), a), a));
        *e_out = e;
        return _mm256_or_ps(sign, _mm256_fnmadd_ps(p, e, _mm256_set1_ps(1.0f)));
    }
    #define FMA_HAVE_AVX2 1
    #else
    #define FMA_HAVE_AVX2 0
    #endif
    /* returns how many leading elements were done (a multiple of 8); the caller does the rest */
    static Py_ssize_t fma_gelu_fwd_f32(float* y, const float* x, Py_ssize_t lo, Py_ssize_t hi) {
        Py_ssize_t i = lo;
    #if FMA_HAVE_AVX2
        __m256 e;
        for (; i + 8 <= hi; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            __m256 er = fma_erf8(_mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f)), &e);
            _mm256_storeu_ps(y + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v),
                                                  _mm256_add_ps(_mm256_set1_ps(1.0f), er)));
        }
    #endif
        return i;
    }
    static Py_ssize_t fma_gelu_bwd_f32(float* dx, const float* dy, const float* x, Py_ssize_t lo, Py_ssize_t hi) {
        Py_ssize_t i = lo;
    #if FMA_HAVE_AVX2
        __m256 e;
        for (; i + 8 <= hi; i += 8) {
            __m256 v = _mm256_loadu_ps(x + i);
            __m256 er = fma_erf8(_mm256_mul_ps(v, _mm256_set1_ps(0.70710678118654752f)), &e);
            /* Phi(x) + x phi(x), phi(x) = exp(-x^2/2) / sqrt(2 pi) = e / sqrt(2 pi) */
            __m256 d = _mm256_fmadd_ps(_mm256_mul_ps(v, _mm256_set1_ps(0.39894228040143268f)), e,
                                       _mm256_mul_ps(_mm256_set1_ps(0.5f), _mm256_add_ps(_mm256_set1_ps(1.0f), er)));
            _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(dy + i), d));
        }
    #endif
        return i;
    }
    """
    Py_ssize_t fma_gelu_fwd_f32(float* y, const float* x, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
    Py_ssize_t fma_gelu_bwd_f32(float* dx, const float* dy, const float* x, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil

cdef double SQRT1_2 = 0.70710678118654752440       # 1/sqrt(2)
cdef double INV_SQRT_2PI = 0.39894228040143267794  # 1/sqrt(2 pi)
cdef double SQRT_2_PI = 0.79788456080286535588     # sqrt(2/pi)
cdef double GELU_C = 0.044715
cdef Py_ssize_t GRAIN_CHEAP = 65536                 # relu: memory-bound (see below)
cdef Py_ssize_t GRAIN_TRANS = 4096                  # exp / erf / tanh per element
# ReLU forward + backward on 65536 float32 (the MLP's 128 x 512), 2 cores, median of 300:
# 1 thread 41.6 us, 2 threads 41.2 us with spinning OpenMP threads, 26 vs 63 us with
# OMP_WAIT_POLICY=passive: a second thread only pays from ~128k elements, so each thread
# gets at least 64k (a memory-bound loop; fewer parallel regions also suffer less on a
# loaded machine, where a region can wait a time slice for a descheduled thread).


cdef inline floating _exp(floating v) noexcept nogil:
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline floating _tanh(floating v) noexcept nogil:
    if floating is float:
        return tanhf(v)
    else:
        return tanh(v)


cdef inline floating _erf(floating v) noexcept nogil:
    if floating is float:
        return erff(v)
    else:
        return erf(v)


cdef inline floating _sigmoid(floating v) noexcept nogil:
    # stable both ways: exp never overflows
    cdef floating e
    if v >= 0:
        return 1 / (1 + _exp(-v))
    e = _exp(v)
    return e / (1 + e)


cdef void _forward_range(int kind, floating* y, const floating* x,
                         Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating v, u
    if kind == RELU:
        for i in range(lo, hi):
            v = x[i]
            y[i] = 0 if v < 0 else v     # max(0, v) with NaN kept, as torch
    elif kind == SIGMOID:
        for i in range(lo, hi):
            y[i] = _sigmoid(x[i])
    elif kind == TANH:
        for i in range(lo, hi):
            y[i] = _tanh(x[i])
    elif kind == GELU:
        if floating is float:
            lo = fma_gelu_fwd_f32(y, x, lo, hi)
        for i in range(lo, hi):
            v = x[i]
            y[i] = <floating>0.5 * v * (1 + _erf(v * <floating>SQRT1_2))
    else:
        for i in range(lo, hi):
            v = x[i]
            u = <floating>SQRT_2_PI * (v + <floating>GELU_C * v * v * v)
            y[i] = <floating>0.5 * v * (1 + _tanh(u))


cdef void _backward_range(int kind, floating* dx, const floating* dy, const floating* x,
                          const floating* y, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    # ReLU/Sigmoid/Tanh use the saved output y; the GELUs need the input x.
    cdef Py_ssize_t i
    cdef floating v, t, s, u
    if kind == RELU:
        for i in range(lo, hi):
            dx[i] = dy[i] if y[i] > 0 else 0
    elif kind == SIGMOID:
        for i in range(lo, hi):
            s = y[i]
            dx[i] = dy[i] * s * (1 - s)
    elif kind == TANH:
        for i in range(lo, hi):
            t = y[i]
            dx[i] = dy[i] * (1 - t * t)
    elif kind == GELU:
        # d/dx x Phi(x) = Phi(x) + x phi(x)
        if floating is float:
            lo = fma_gelu_bwd_f32(dx, dy, x, lo, hi)
        for i in range(lo, hi):
            v = x[i]
            dx[i] = dy[i] * (<floating>0.5 * (1 + _erf(v * <floating>SQRT1_2))
                             + v * <floating>INV_SQRT_2PI * _exp(<floating>-0.5 * v * v))
    else:
        for i in range(lo, hi):
            v = x[i]
            u = <floating>SQRT_2_PI * (v + <floating>GELU_C * v * v * v)
            t = _tanh(u)
            dx[i] = dy[i] * (<floating>0.5 * (1 + t) + <floating>0.5 * v * (1 - t * t)
                             * <floating>SQRT_2_PI * (1 + 3 * <floating>GELU_C * v * v))


cdef void _forward(int kind, floating* y, const floating* x, Py_ssize_t n) noexcept nogil:
    cdef int nt = threads_for(n, GRAIN_CHEAP if kind == RELU else GRAIN_TRANS)
    cdef Py_ssize_t c, chunk, lo, hi
    if nt <= 1:
        _forward_range(kind, y, x, 0, n)
        return
    chunk = (n + nt - 1) // nt
    for c in prange(nt, num_threads=nt, schedule='static'):
        lo = c * chunk
        hi = min(n, lo + chunk)
        if lo < hi:
            _forward_range(kind, y, x, lo, hi)


cdef void _backward(int kind, floating* dx, const floating* dy, const floating* x,
                    const floating* y, Py_ssize_t n) noexcept nogil:
    cdef int nt = threads_for(n, GRAIN_CHEAP if kind == RELU else GRAIN_TRANS)
    cdef Py_ssize_t c, chunk, lo, hi
    if nt <= 1:
        _backward_range(kind, dx, dy, x, y, 0, n)
        return
    chunk = (n + nt - 1) // nt
    for c in prange(nt, num_threads=nt, schedule='static'):
        lo = c * chunk
        hi = min(n, lo + chunk)
        if lo < hi:
            _backward_range(kind, dx, dy, x, y, lo, hi)


cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


def activation_forward(int kind, cnp.ndarray y, cnp.ndarray x):
    """y = act(x) element-wise (y may be x: in place)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(x)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _forward(kind, <float*>py, <float*>px, n)
    else:
        with nogil:
            _forward(kind, <double*>py, <double*>px, n)


def activation_backward(int kind, cnp.ndarray dx, cnp.ndarray dy, object x, object y):
    """dx = dy * act'(x); ReLU/Sigmoid/Tanh read y (the forward output), the GELUs read x."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(dy)
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = _ptr(x)
    cdef void* py = _ptr(y)
    if cnp.PyArray_TYPE(dy) == cnp.NPY_FLOAT32:
        with nogil:
            _backward(kind, <float*>pdx, <float*>pdy, <float*>px, <float*>py, n)
    else:
        with nogil:
            _backward(kind, <double*>pdx, <double*>pdy, <double*>px, <double*>py, n)
