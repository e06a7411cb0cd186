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
from libc.math cimport exp, expf, erfc, tanh, tanhf, sqrt

from fastmod._kernels._threads cimport threads_for

cnp.import_array()

cdef enum:
    RELU = 0
    SIGMOID = 1
    TANH = 2
    GELU = 3
    GELU_TANH = 4

KIND = {"relu": RELU, "sigmoid": SIGMOID, "tanh": TANH, "gelu": GELU, "gelu_tanh": GELU_TANH}


# float32 GELU: vector kernels in simd/fm_gelu.h (the numerics are explained there), compiled
# per instruction set; the scalar loops below do the tails (and everything at the scalar level).
cdef extern from "fm_gelu.h":
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


cdef inline floating _sigmoid(floating v) noexcept nogil:
    # stable both ways: exp never overflows
    cdef floating e
    if v >= 0:
        return 1 / (1 + _exp(-v))
    e = _exp(v)
    return e / (1 + e)


cdef inline double _clamp_keep_nan(double v) noexcept nogil:
    # [-1e4, 1e4] with NaN kept: where x multiplies a factor that vanishes at +-inf
    if v > 1e4:
        return 1e4
    if v < -1e4:
        return -1e4
    return v


cdef inline double _gelu_scalar(double v) noexcept nogil:
    # 0.5 x erfc(-x / sqrt 2) in double (float32 inputs too: the scalar path handles at most
    # 7 elements per chunk after the AVX2 loop, or all of them in a build without AVX2):
    # erfc keeps the tail x < 0 accurate where 1 + erf(x / sqrt 2) cancels
    if v < 0:
        return 0.5 * _clamp_keep_nan(v) * erfc(-v * SQRT1_2)
    return 0.5 * v * erfc(-v * SQRT1_2)       # +inf -> inf, NaN -> NaN


cdef inline double _gelu_grad_scalar(double v) noexcept nogil:
    # Phi(x) + x phi(x); x phi(x) -> 0 at +-inf (clamped x: inf * 0 would be NaN)
    cdef double c = _clamp_keep_nan(v)
    return 0.5 * erfc(-v * SQRT1_2) + c * INV_SQRT_2PI * exp(-0.5 * c * c)


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
            y[i] = <floating>_gelu_scalar(<double>x[i])
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
            dx[i] = dy[i] * <floating>_gelu_grad_scalar(<double>x[i])
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
