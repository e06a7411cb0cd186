# cython: language_level=3
# Inline row kernels shared by softmax, cross-entropy and attention: stable (max-subtracted)
# softmax over a strided row, statistics in double even for float32 data.
from cython cimport floating
from libc.math cimport exp, log


cdef inline double row_max(const floating* x, Py_ssize_t C, Py_ssize_t s) noexcept nogil:
    cdef double m = x[0]
    cdef Py_ssize_t c
    for c in range(1, C):
        if x[c * s] > m:
            m = x[c * s]
    return m


cdef inline double row_softmax(floating* y, const floating* x, Py_ssize_t C, Py_ssize_t s) noexcept nogil:
    """y = softmax(x) over C elements of stride s; returns log-sum-exp(x)."""
    cdef double m = row_max(x, C, s), tot = 0, e
    cdef Py_ssize_t c
    for c in range(C):
        e = exp(<double>x[c * s] - m)
        y[c * s] = <floating>e
        tot += e
    cdef double inv = 1.0 / tot
    for c in range(C):
        y[c * s] = <floating>(y[c * s] * inv)
    return m + log(tot)


cdef inline void row_softmax_backward(floating* dx, const floating* dy, const floating* y,
                                      Py_ssize_t C, Py_ssize_t s) noexcept nogil:
    """dx = y * (dy - sum(dy * y)) over one row."""
    cdef double dot = 0
    cdef Py_ssize_t c
    for c in range(C):
        dot += <double>dy[c * s] * y[c * s]
    for c in range(C):
        dx[c * s] = <floating>(y[c * s] * (dy[c * s] - dot))
