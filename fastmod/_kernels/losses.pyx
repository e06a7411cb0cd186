# cython: language_level=3
"""Fused softmax + cross-entropy and mean squared error, forward and backward.

Legend: N = rows, C = classes; logits (N, C) C-contiguous, targets int64 (N,) class indices.
Cross-entropy with label smoothing eps (as torch): the target distribution is
(1 - eps) * onehot + eps / C, so per row
    loss = (1 - eps) * (lse - x[t]) + eps * (lse - mean(x)),    lse = log sum exp(x)
and d loss / d x = softmax(x) - (1 - eps) * onehot - eps / C.
Rows whose target equals ignore_index contribute neither loss nor gradient.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

from fastmod._kernels._rowops cimport row_softmax
from fastmod._kernels._threads cimport threads_for

cnp.import_array()


cdef void _xent_forward(floating* probs, double* row_loss, const floating* x, const int64_t* t,
                        Py_ssize_t N, Py_ssize_t C, double eps, int64_t ignore_index) noexcept nogil:
    cdef Py_ssize_t n, c
    cdef double lse, mean
    cdef int nt = threads_for(N * C, 16384)
    for n in prange(N, num_threads=nt, schedule='static'):
        lse = row_softmax(probs + n * C, x + n * C, C, 1)
        if t[n] == ignore_index:
            row_loss[n] = 0
            continue
        mean = 0
        if eps != 0:
            for c in range(C):
                mean = mean + x[n * C + c]
            mean = mean / C
        row_loss[n] = (1 - eps) * (lse - x[n * C + t[n]]) + eps * (lse - mean)


cdef void _xent_backward(floating* dx, const floating* probs, const int64_t* t, Py_ssize_t N,
                         Py_ssize_t C, double eps, double scale, int64_t ignore_index) noexcept nogil:
    cdef Py_ssize_t n, c
    cdef floating s = <floating>scale, off = <floating>(eps / C * scale)
    cdef int nt = threads_for(N * C, 32768)
    for n in prange(N, num_threads=nt, schedule='static'):
        if t[n] == ignore_index:
            for c in range(C):
                dx[n * C + c] = 0
            continue
        for c in range(C):
            dx[n * C + c] = probs[n * C + c] * s - off
        dx[n * C + t[n]] -= <floating>((1 - eps) * scale)


def check_targets(cnp.ndarray t, Py_ssize_t C, int64_t ignore_index):
    """(rows whose target is not ignore_index, the first target outside [0, C) or None) for
    int64 targets t (N,): the loss's checks in one pass instead of five NumPy calls."""
    cdef Py_ssize_t N = cnp.PyArray_SIZE(t), n, count = 0
    cdef const int64_t* pt = <const int64_t*>cnp.PyArray_DATA(t)
    cdef int64_t v
    for n in range(N):
        v = pt[n]
        if v == ignore_index:
            continue
        if v < 0 or v >= C:
            return count, v
        count += 1
    return count, None


def softmax_xent_forward(cnp.ndarray probs, cnp.ndarray row_loss, cnp.ndarray x, cnp.ndarray t,
                         double eps, int64_t ignore_index):
    """probs (N, C) = softmax(x); row_loss (N,) float64 = smoothed cross-entropy per row."""
    cdef Py_ssize_t N = cnp.PyArray_DIM(x, 0), C = cnp.PyArray_DIM(x, 1)
    cdef void* pp = cnp.PyArray_DATA(probs)
    cdef double* pl = <double*>cnp.PyArray_DATA(row_loss)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef int64_t* pt = <int64_t*>cnp.PyArray_DATA(t)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _xent_forward(<float*>pp, pl, <float*>px, pt, N, C, eps, ignore_index)
    else:
        with nogil:
            _xent_forward(<double*>pp, pl, <double*>px, pt, N, C, eps, ignore_index)


def softmax_xent_backward(cnp.ndarray dx, cnp.ndarray probs, cnp.ndarray t, double eps,
                          double scale, int64_t ignore_index):
    """dx (N, C) = scale * (probs - (1 - eps) * onehot(t) - eps / C)."""
    cdef Py_ssize_t N = cnp.PyArray_DIM(probs, 0), C = cnp.PyArray_DIM(probs, 1)
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pp = cnp.PyArray_DATA(probs)
    cdef int64_t* pt = <int64_t*>cnp.PyArray_DATA(t)
    if cnp.PyArray_TYPE(probs) == cnp.NPY_FLOAT32:
        with nogil:
            _xent_backward(<float*>pdx, <float*>pp, pt, N, C, eps, scale, ignore_index)
    else:
        with nogil:
            _xent_backward(<double*>pdx, <double*>pp, pt, N, C, eps, scale, ignore_index)


cdef double _sq_err_sum(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    cdef double s = 0, d
    cdef Py_ssize_t i
    for i in range(n):
        d = <double>a[i] - b[i]
        s += d * d
    return s


cdef void _mse_backward(floating* dx, const floating* a, const floating* b, Py_ssize_t n,
                        double scale) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating s = <floating>(2 * scale)
    for i in range(n):
        dx[i] = s * (a[i] - b[i])


def squared_error_sum(cnp.ndarray a, cnp.ndarray b):
    """sum((a - b) ** 2) accumulated in double."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    cdef void* pa = cnp.PyArray_DATA(a)
    cdef void* pb = cnp.PyArray_DATA(b)
    cdef double s
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
        with nogil:
            s = _sq_err_sum(<float*>pa, <float*>pb, n)
    else:
        with nogil:
            s = _sq_err_sum(<double*>pa, <double*>pb, n)
    return s


def mse_backward(cnp.ndarray dx, cnp.ndarray a, cnp.ndarray b, double scale):
    """dx = 2 * scale * (a - b)."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pa = cnp.PyArray_DATA(a)
    cdef void* pb = cnp.PyArray_DATA(b)
    if cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32:
        with nogil:
            _mse_backward(<float*>pdx, <float*>pa, <float*>pb, n, scale)
    else:
        with nogil:
            _mse_backward(<double*>pdx, <double*>pa, <double*>pb, n, scale)
