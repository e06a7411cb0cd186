# cython: language_level=3
"""Pooling (the CNN parts of the seed): max, average and adaptive average, forward and backward.

Legend: R = number of planes (N*C), H, W = input size, OH, OW = output size, KH, KW = window,
SH, SW = stride, PH, PW = padding, DH, DW = dilation (max pooling only).
Layouts (row-major, C-contiguous, one dtype): x (R, H, W), y (R, OH, OW); max pooling also
writes idx (R, OH, OW) int32, the flat index h*W + w of each window's maximum within its plane.
1-D pooling is the H = KH = 1 case. Planes are independent: every loop runs over planes, in
contiguous chunks, one per thread, so each thread writes only its own planes (no reductions).
Averages accumulate in double.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from fastmod._kernels._planes cimport sum_contig
from fastmod._kernels._threads cimport threads_for

cnp.import_array()

cdef Py_ssize_t GRAIN = 16384        # elements of work per thread below which a loop stays serial


cdef inline int _imin(int a, int b) noexcept nogil:
    return a if a < b else b


cdef inline int _imax(int a, int b) noexcept nogil:
    return a if a > b else b


# ---------------------------------------------------------------- max pooling
cdef void _max_forward_plane(floating* y, int* idx, const floating* x, int H, int W, int OH,
                             int OW, int KH, int KW, int SH, int SW, int PH, int PW, int DH,
                             int DW) noexcept nogil:
    # y[i, j] = max over the window's in-bounds taps (NaN wins, as torch); idx = its argmax
    cdef int i, j, p, q, h, w, best
    cdef floating m, v
    for i in range(OH):
        for j in range(OW):
            best = -1
            m = 0
            for p in range(KH):
                h = i * SH - PH + p * DH
                if h < 0 or h >= H:
                    continue
                for q in range(KW):
                    w = j * SW - PW + q * DW
                    if w < 0 or w >= W:
                        continue
                    v = x[h * W + w]
                    if best < 0 or v > m or v != v:
                        m = v
                        best = h * W + w
                        if v != v:
                            break
                if best >= 0 and m != m:
                    break
            y[i * OW + j] = m
            idx[i * OW + j] = best


def maxpool2d_forward(cnp.ndarray y, cnp.ndarray idx, cnp.ndarray x, int KH, int KW, int SH,
                      int SW, int PH, int PW, int DH, int DW):
    """y, idx (R, OH, OW) = max over each window of x (R, H, W) (every window holds a tap)."""
    cdef int R = <int>cnp.PyArray_DIM(x, 0), H = <int>cnp.PyArray_DIM(x, 1)
    cdef int W = <int>cnp.PyArray_DIM(x, 2)
    cdef int OH = <int>cnp.PyArray_DIM(y, 1), OW = <int>cnp.PyArray_DIM(y, 2)
    cdef Py_ssize_t xs = <Py_ssize_t>H * W, ys = <Py_ssize_t>OH * OW
    cdef int r, nt = threads_for(<Py_ssize_t>R * ys * KH * KW, GRAIN)
    cdef int* pi = <int*>cnp.PyArray_DATA(idx)
    cdef float* xf
    cdef float* yf
    cdef double* xd
    cdef double* yd
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        xf = <float*>cnp.PyArray_DATA(x)
        yf = <float*>cnp.PyArray_DATA(y)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _max_forward_plane(yf + r * ys, pi + r * ys, xf + r * xs, H, W, OH, OW, KH, KW, SH,
                               SW, PH, PW, DH, DW)
    else:
        xd = <double*>cnp.PyArray_DATA(x)
        yd = <double*>cnp.PyArray_DATA(y)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _max_forward_plane(yd + r * ys, pi + r * ys, xd + r * xs, H, W, OH, OW, KH, KW, SH,
                               SW, PH, PW, DH, DW)


cdef void _max_backward_plane(floating* dx, const floating* dy, const int* idx, Py_ssize_t xs,
                              Py_ssize_t ys) noexcept nogil:
    # dx (H*W) = 0, then dx[idx[k]] += dy[k] (overlapping windows add)
    cdef Py_ssize_t k
    memset(dx, 0, xs * sizeof(floating))
    for k in range(ys):
        dx[idx[k]] += dy[k]


def maxpool2d_backward(cnp.ndarray dx, cnp.ndarray dy, cnp.ndarray idx):
    """dx (R, H, W) = scatter-add of dy (R, OH, OW) at the saved argmax idx."""
    cdef int R = <int>cnp.PyArray_DIM(dx, 0)
    cdef Py_ssize_t xs = cnp.PyArray_DIM(dx, 1) * cnp.PyArray_DIM(dx, 2)
    cdef Py_ssize_t ys = cnp.PyArray_DIM(dy, 1) * cnp.PyArray_DIM(dy, 2)
    cdef int r, nt = threads_for(<Py_ssize_t>R * (xs + ys), GRAIN)
    cdef int* pi = <int*>cnp.PyArray_DATA(idx)
    cdef float* f
    cdef float* gf
    cdef double* d
    cdef double* gd
    if cnp.PyArray_TYPE(dx) == cnp.NPY_FLOAT32:
        f = <float*>cnp.PyArray_DATA(dx)
        gf = <float*>cnp.PyArray_DATA(dy)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _max_backward_plane(f + r * xs, gf + r * ys, pi + r * ys, xs, ys)
    else:
        d = <double*>cnp.PyArray_DATA(dx)
        gd = <double*>cnp.PyArray_DATA(dy)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _max_backward_plane(d + r * xs, gd + r * ys, pi + r * ys, xs, ys)


# ---------------------------------------------------------------- average pooling
cdef inline double _avg_window(int i, int j, int H, int W, int KH, int KW, int SH, int SW,
                               int PH, int PW, bint count_pad, int divisor,
                               int* h0, int* h1, int* w0, int* w1) noexcept nogil:
    # torch's rule: the window is clipped to the padded input for the divisor (count_pad), to
    # the input for the sum; returns 1/divisor
    cdef int hs = i * SH - PH, ws = j * SW - PW
    cdef int he = _imin(hs + KH, H + PH), we = _imin(ws + KW, W + PW)
    cdef int area = (he - hs) * (we - ws)
    hs = _imax(hs, 0)
    ws = _imax(ws, 0)
    he = _imin(he, H)
    we = _imin(we, W)
    h0[0], h1[0], w0[0], w1[0] = hs, he, ws, we
    if divisor > 0:
        return 1.0 / divisor
    if not count_pad:
        area = (he - hs) * (we - ws)
    return 1.0 / area if area > 0 else 0.0


cdef void _avg_forward_plane(floating* y, const floating* x, int H, int W, int OH, int OW,
                             int KH, int KW, int SH, int SW, int PH, int PW, bint count_pad,
                             int divisor) noexcept nogil:
    cdef int i, j, h, w, h0, h1, w0, w1
    cdef double s, scale
    for i in range(OH):
        for j in range(OW):
            scale = _avg_window(i, j, H, W, KH, KW, SH, SW, PH, PW, count_pad, divisor,
                                &h0, &h1, &w0, &w1)
            s = 0
            for h in range(h0, h1):
                for w in range(w0, w1):
                    s += x[h * W + w]
            y[i * OW + j] = <floating>(s * scale)


cdef void _avg_backward_plane(floating* dx, const floating* dy, int H, int W, int OH, int OW,
                              int KH, int KW, int SH, int SW, int PH, int PW, bint count_pad,
                              int divisor) noexcept nogil:
    cdef int i, j, h, w, h0, h1, w0, w1
    cdef floating g
    memset(dx, 0, <Py_ssize_t>H * W * sizeof(floating))
    for i in range(OH):
        for j in range(OW):
            g = <floating>(dy[i * OW + j] * _avg_window(i, j, H, W, KH, KW, SH, SW, PH, PW,
                                                        count_pad, divisor, &h0, &h1, &w0, &w1))
            for h in range(h0, h1):
                for w in range(w0, w1):
                    dx[h * W + w] += g


def avgpool2d_forward(cnp.ndarray y, cnp.ndarray x, int KH, int KW, int SH, int SW, int PH,
                      int PW, bint count_include_pad, int divisor_override):
    """y (R, OH, OW) = window means of x (R, H, W) (divisor_override > 0 replaces the count)."""
    cdef int R = <int>cnp.PyArray_DIM(x, 0), H = <int>cnp.PyArray_DIM(x, 1)
    cdef int W = <int>cnp.PyArray_DIM(x, 2)
    cdef int OH = <int>cnp.PyArray_DIM(y, 1), OW = <int>cnp.PyArray_DIM(y, 2)
    cdef Py_ssize_t xs = <Py_ssize_t>H * W, ys = <Py_ssize_t>OH * OW
    cdef int r, nt = threads_for(<Py_ssize_t>R * ys * KH * KW, GRAIN)
    cdef float* xf
    cdef float* yf
    cdef double* xd
    cdef double* yd
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        xf = <float*>cnp.PyArray_DATA(x)
        yf = <float*>cnp.PyArray_DATA(y)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _avg_forward_plane(yf + r * ys, xf + r * xs, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                               count_include_pad, divisor_override)
    else:
        xd = <double*>cnp.PyArray_DATA(x)
        yd = <double*>cnp.PyArray_DATA(y)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _avg_forward_plane(yd + r * ys, xd + r * xs, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                               count_include_pad, divisor_override)


def avgpool2d_backward(cnp.ndarray dx, cnp.ndarray dy, int KH, int KW, int SH, int SW, int PH,
                       int PW, bint count_include_pad, int divisor_override):
    """dx (R, H, W) = each dy (R, OH, OW) spread evenly (1/divisor) over its window."""
    cdef int R = <int>cnp.PyArray_DIM(dx, 0), H = <int>cnp.PyArray_DIM(dx, 1)
    cdef int W = <int>cnp.PyArray_DIM(dx, 2)
    cdef int OH = <int>cnp.PyArray_DIM(dy, 1), OW = <int>cnp.PyArray_DIM(dy, 2)
    cdef Py_ssize_t xs = <Py_ssize_t>H * W, ys = <Py_ssize_t>OH * OW
    cdef int r, nt = threads_for(<Py_ssize_t>R * ys * KH * KW, GRAIN)
    cdef float* xf
    cdef float* yf
    cdef double* xd
    cdef double* yd
    if cnp.PyArray_TYPE(dx) == cnp.NPY_FLOAT32:
        xf = <float*>cnp.PyArray_DATA(dx)
        yf = <float*>cnp.PyArray_DATA(dy)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _avg_backward_plane(xf + r * xs, yf + r * ys, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                count_include_pad, divisor_override)
    else:
        xd = <double*>cnp.PyArray_DATA(dx)
        yd = <double*>cnp.PyArray_DATA(dy)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _avg_backward_plane(xd + r * xs, yd + r * ys, H, W, OH, OW, KH, KW, SH, SW, PH, PW,
                                count_include_pad, divisor_override)


# ---------------------------------------------------------------- adaptive average pooling
cdef void _adaptive_plane(floating* y, floating* dx, const floating* x, const floating* dy,
                          int H, int W, int OH, int OW, bint backward) noexcept nogil:
    # torch's bins: rows floor(i*H/OH) .. ceil((i+1)*H/OH), columns likewise
    cdef int i, j, h, w, h0, h1, w0, w1
    cdef double s, scale
    cdef floating g
    if backward:
        memset(dx, 0, <Py_ssize_t>H * W * sizeof(floating))
    for i in range(OH):
        h0 = (i * H) // OH
        h1 = ((i + 1) * H + OH - 1) // OH
        for j in range(OW):
            w0 = (j * W) // OW
            w1 = ((j + 1) * W + OW - 1) // OW
            scale = 1.0 / ((h1 - h0) * (w1 - w0))
            if backward:
                g = <floating>(dy[i * OW + j] * scale)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        dx[h * W + w] += g
            else:
                s = 0
                for h in range(h0, h1):
                    s += sum_contig(x + h * W + w0, w1 - w0)
                y[i * OW + j] = <floating>(s * scale)


def adaptive_avgpool2d_forward(cnp.ndarray y, cnp.ndarray x):
    """y (R, OH, OW) = means of x (R, H, W) over torch's adaptive bins (OH = OW = 1: global mean)."""
    cdef int R = <int>cnp.PyArray_DIM(x, 0), H = <int>cnp.PyArray_DIM(x, 1)
    cdef int W = <int>cnp.PyArray_DIM(x, 2)
    cdef int OH = <int>cnp.PyArray_DIM(y, 1), OW = <int>cnp.PyArray_DIM(y, 2)
    cdef Py_ssize_t xs = <Py_ssize_t>H * W, ys = <Py_ssize_t>OH * OW
    cdef int r, nt = threads_for(<Py_ssize_t>R * xs, GRAIN)
    cdef float* xf
    cdef float* yf
    cdef double* xd
    cdef double* yd
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        xf = <float*>cnp.PyArray_DATA(x)
        yf = <float*>cnp.PyArray_DATA(y)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _adaptive_plane(yf + r * ys, NULL, xf + r * xs, NULL, H, W, OH, OW, False)
    else:
        xd = <double*>cnp.PyArray_DATA(x)
        yd = <double*>cnp.PyArray_DATA(y)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _adaptive_plane(yd + r * ys, NULL, xd + r * xs, NULL, H, W, OH, OW, False)


def adaptive_avgpool2d_backward(cnp.ndarray dx, cnp.ndarray dy):
    """dx (R, H, W) = each dy (R, OH, OW) spread evenly over its adaptive bin."""
    cdef int R = <int>cnp.PyArray_DIM(dx, 0), H = <int>cnp.PyArray_DIM(dx, 1)
    cdef int W = <int>cnp.PyArray_DIM(dx, 2)
    cdef int OH = <int>cnp.PyArray_DIM(dy, 1), OW = <int>cnp.PyArray_DIM(dy, 2)
    cdef Py_ssize_t xs = <Py_ssize_t>H * W, ys = <Py_ssize_t>OH * OW
    cdef int r, nt = threads_for(<Py_ssize_t>R * xs, GRAIN)
    cdef float* xf
    cdef float* yf
    cdef double* xd
    cdef double* yd
    if cnp.PyArray_TYPE(dx) == cnp.NPY_FLOAT32:
        xf = <float*>cnp.PyArray_DATA(dx)
        yf = <float*>cnp.PyArray_DATA(dy)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _adaptive_plane(NULL, xf + r * xs, NULL, yf + r * ys, H, W, OH, OW, True)
    else:
        xd = <double*>cnp.PyArray_DATA(dx)
        yd = <double*>cnp.PyArray_DATA(dy)
        for r in prange(R, nogil=True, num_threads=nt, schedule='static'):
            _adaptive_plane(NULL, xd + r * xs, NULL, yd + r * ys, H, W, OH, OW, True)
