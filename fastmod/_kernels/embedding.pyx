# cython: language_level=3
"""Embedding lookup (a row gather) and its backward (a row scatter-add).

Legend: V = num_embeddings, D = embedding_dim, M = number of indices (any input shape, flattened).
Layouts: weight (V, D), idx (M,) int64 in [0, V) (checked by the Python layer), y / dy (M, D).

Forward parallelizes over output rows. Backward adds dy rows into dweight rows, and several
indices may name the same row: the threads split the D columns instead, so each thread owns
its columns of every row, no two threads write one element, and every element receives its
additions in index order at any thread count (bit-identical results).
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t
from libc.string cimport memcpy

from fastmod._kernels._threads cimport threads_for

cnp.import_array()

cdef Py_ssize_t GRAIN = 1 << 15      # elements copied / added per thread before splitting pays


cdef void _embedding_forward(floating* y, const floating* w, const int64_t* idx,
                             Py_ssize_t M, Py_ssize_t D) noexcept nogil:
    cdef Py_ssize_t i
    cdef int nt = threads_for(M * D, GRAIN)
    for i in prange(M, num_threads=nt, schedule='static'):
        memcpy(y + i * D, w + idx[i] * D, D * sizeof(floating))


cdef void _embedding_backward(floating* dw, const floating* dy, const int64_t* idx,
                              Py_ssize_t M, Py_ssize_t D, int64_t padding_idx) noexcept nogil:
    cdef Py_ssize_t c, i, j, lo, hi, chunk
    cdef int64_t r
    cdef int nt = threads_for(M * D, GRAIN)
    if nt > D // 16:
        nt = max(1, <int>(D // 16))        # at least 16 columns (a cache line) per thread
    chunk = (D + nt - 1) // nt
    for c in prange(nt, num_threads=nt, schedule='static'):
        lo = c * chunk
        hi = min(D, lo + chunk)
        for i in range(M):
            r = idx[i]
            if r == padding_idx:
                continue
            for j in range(lo, hi):
                dw[r * D + j] += dy[i * D + j]


def embedding_forward(cnp.ndarray y, cnp.ndarray w, cnp.ndarray idx):
    """y (M, D) = w[idx] for idx (M,) int64."""
    cdef Py_ssize_t M = cnp.PyArray_SIZE(idx), D = cnp.PyArray_DIM(w, 1)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef int64_t* pi = <int64_t*>cnp.PyArray_DATA(idx)
    if cnp.PyArray_TYPE(w) == cnp.NPY_FLOAT32:
        with nogil:
            _embedding_forward(<float*>py, <float*>pw, pi, M, D)
    else:
        with nogil:
            _embedding_forward(<double*>py, <double*>pw, pi, M, D)


def embedding_backward(cnp.ndarray dw, cnp.ndarray dy, cnp.ndarray idx, int64_t padding_idx):
    """dw[idx[i]] += dy[i] for every i (rows equal to padding_idx are skipped; -1 = none)."""
    cdef Py_ssize_t M = cnp.PyArray_SIZE(idx), D = cnp.PyArray_DIM(dw, 1)
    cdef void* pdw = cnp.PyArray_DATA(dw)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef int64_t* pi = <int64_t*>cnp.PyArray_DATA(idx)
    if cnp.PyArray_TYPE(dw) == cnp.NPY_FLOAT32:
        with nogil:
            _embedding_backward(<float*>pdw, <float*>pdy, pi, M, D, padding_idx)
    else:
        with nogil:
            _embedding_backward(<double*>pdw, <double*>pdy, pi, M, D, padding_idx)
