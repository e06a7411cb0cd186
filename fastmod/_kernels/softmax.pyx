# cython: language_level=3
"""Softmax / log-softmax along one axis, forward and backward.

Legend: the array is viewed as (O, C, I): O = product of the dims before the softmax axis,
C = the axis, I = product of the dims after it (I = 1 for the last axis: contiguous rows).
Rows (o, i) are independent; the prange runs over them.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport exp

from fastmod._kernels._rowops cimport row_softmax, row_softmax_backward
from fastmod._kernels._threads cimport threads_for

cnp.import_array()


cdef void _softmax_forward(floating* y, const floating* x, Py_ssize_t O, Py_ssize_t C,
                           Py_ssize_t I, bint log_) noexcept nogil:
    cdef Py_ssize_t r, o, i, c, base
    cdef double lse
    cdef int nt = threads_for(O * I * C, 8192)
    for r in prange(O * I, num_threads=nt, schedule='static'):
        o = r // I
        i = r % I
        base = o * C * I + i
        lse = row_softmax(y + base, x + base, C, I)
        if log_:
            for c in range(C):
                y[base + c * I] = <floating>(x[base + c * I] - lse)


cdef void _softmax_backward(floating* dx, const floating* dy, const floating* y, Py_ssize_t O,
                            Py_ssize_t C, Py_ssize_t I, bint log_) noexcept nogil:
    cdef Py_ssize_t r, o, i, c, base
    cdef double tot
    cdef int nt = threads_for(O * I * C, 8192)
    for r in prange(O * I, num_threads=nt, schedule='static'):
        o = r // I
        i = r % I
        base = o * C * I + i
        if log_:
            # y = log p: dx = dy - p * sum(dy)
            tot = 0
            for c in range(C):
                tot = tot + dy[base + c * I]
            for c in range(C):
                dx[base + c * I] = <floating>(dy[base + c * I] - exp(<double>y[base + c * I]) * tot)
        else:
            row_softmax_backward(dx + base, dy + base, y + base, C, I)


def softmax_forward(cnp.ndarray y, cnp.ndarray x, Py_ssize_t O, Py_ssize_t C, Py_ssize_t I, bint log):
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _softmax_forward(<float*>py, <float*>px, O, C, I, log)
    else:
        with nogil:
            _softmax_forward(<double*>py, <double*>px, O, C, I, log)


def softmax_backward(cnp.ndarray dx, cnp.ndarray dy, cnp.ndarray y, Py_ssize_t O, Py_ssize_t C,
                     Py_ssize_t I, bint log):
    cdef void* pdx = cnp.PyArray_DATA(dx)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* py = cnp.PyArray_DATA(y)
    if cnp.PyArray_TYPE(dy) == cnp.NPY_FLOAT32:
        with nogil:
            _softmax_backward(<float*>pdx, <float*>pdy, <float*>py, O, C, I, log)
    else:
        with nogil:
            _softmax_backward(<double*>pdx, <double*>pdy, <double*>py, O, C, I, log)
