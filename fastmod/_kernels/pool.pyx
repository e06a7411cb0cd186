# cython: language_level=3
"""Pooling (the CNN parts of the seed): max, average, adaptive average and adaptive max,
forward and backward.

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


cdef void _max_forward(floating* y, int* idx, const floating* x, int R, int H, int W, int OH,
                       int OW, int KH, int KW, int SH, int SW, int PH, int PW, int DH,
                       int DW) noexcept nogil:
    cdef Py_ssize_t xs = <Py_ssize_t>H * W, ys = <Py_ssize_t>OH * OW
    cdef int r, nt = threads_for(<Py_ssize_t>R * ys * KH * KW, GRAIN)
    for r in prange(R, num_threads=nt, schedule='static'):
        _max_forward_plane(y + r * ys, idx + r * ys, x + r * xs, H, W, OH, OW, KH, KW, SH, SW,
                           PH, PW, DH, DW)


def maxpool2d_forward(cnp.ndarray y, cnp.ndarray idx, cnp.ndarray x, int KH, int KW, int SH,
                      int SW, int PH, int PW, int DH, int DW):
    """y, idx (R, OH, OW) = max over each window of x (R, H, W) (every window holds a tap)."""
    cdef int R = <int>cnp.PyArray_DIM(x, 0), H = <int>cnp.PyArray_DIM(x, 1)
    cdef int W = <int>cnp.PyArray_DIM(x, 2)
    cdef int OH = <int>cnp.PyArray_DIM(y, 1), OW = <int>cnp.PyArray_DIM(y, 2)
    cdef int* pi = <int*>cnp.PyArray_DATA(idx)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        _max_forward(<float*>cnp.PyArray_DATA(y), pi, <float*>cnp.PyArray_DATA(x), R, H, W, OH,
                     OW, KH, KW, SH, SW, PH, PW, DH, DW)
    else:
        _max_forward(<double*>cnp.PyArray_DATA(y), pi, <double*>cnp.PyArray_DATA(x), R, H, W,
                     OH, OW, KH, KW, SH, SW, PH, PW, DH, DW)


cdef void _max_backward(floating* dx, const floating* dy, const int* idx, int R, Py_ssize_t xs,
                        Py_ssize_t ys) noexcept nogil:
    # per plane: dx (H*W) = 0, then dx[idx[k]] += dy[k] (overlapping windows add)
    cdef int r, nt = threads_for(<Py_ssize_t>R * (xs + ys), GRAIN)
    cdef Py_ssize_t k
    cdef floating* d
    cdef const floating* g
    cdef const int* ix
    for r in prange(R, num_threads=nt, schedule='static'):
        d = dx + r * xs
        g = dy + r * ys
        ix = idx + r * ys
        memset(d, 0, xs * sizeof(floating))
        for k in range(ys):
            d[ix[k]] += g[k]


def maxpool2d_backward(cnp.ndarray dx, cnp.ndarray dy, cnp.ndarray idx):
    """dx (R, H, W) = scatter-add of dy (R, OH, OW) at the saved argmax idx."""
    cdef int R = <int>cnp.PyArray_DIM(dx, 0)
    cdef Py_ssize_t xs = cnp.PyArray_DIM(dx, 1) * cnp.PyArray_DIM(dx, 2)
    cdef Py_ssize_t ys = cnp.PyArray_DIM(dy, 1) * cnp.PyArray_DIM(dy, 2)
    cdef int* pi = <int*>cnp.PyArray_DATA(idx)
    if cnp.PyArray_TYPE(dx) == cnp.NPY_FLOAT32:
        _max_backward(<float*>cnp.PyArray_DATA(dx), <float*>cnp.PyArray_DATA(dy), pi, R, xs, ys)
    else:
        _max_backward(<double*>cnp.PyArray_DATA(dx), <double*>cnp.PyArray_DATA(dy), pi, R, xs,
                      ys)


# ---------------------------------------------------------------- average pooling (windows, adaptive bins)
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


cdef void _avg_plane(floating* y, floating* dx, const floating* x, const floating* dy, int H,
                     int W, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW,
                     bint count_pad, int divisor, bint adaptive, bint backward) noexcept nogil:
    # windows: AvgPool's (_avg_window) or, adaptive, torch's bins -- rows floor(i*H/OH) ..
    # ceil((i+1)*H/OH), columns likewise. forward: y[i, j] = scale * (window sum of x);
    # backward: dx = 0, then each window += scale * dy[i, j] -- or, when the adaptive bins
    # tile the plane (H % OH == W % OW == 0: global pooling, say), each window = scale * dy
    # in one pass (global pooling's backward of (16, 72, 32, 32), 2 threads: 1.38 -> 0.31 ms)
    cdef int i, j, h, w, h0, h1, w0, w1
    cdef double s, scale
    cdef floating g
    cdef bint tiles = adaptive and H % OH == 0 and W % OW == 0
    if backward and not tiles:
        memset(dx, 0, <Py_ssize_t>H * W * sizeof(floating))
    for i in range(OH):
        for j in range(OW):
            if adaptive:
                h0, h1 = (i * H) // OH, ((i + 1) * H + OH - 1) // OH
                w0, w1 = (j * W) // OW, ((j + 1) * W + OW - 1) // OW
                scale = 1.0 / ((h1 - h0) * (w1 - w0))
            else:
                scale = _avg_window(i, j, H, W, KH, KW, SH, SW, PH, PW, count_pad, divisor,
                                    &h0, &h1, &w0, &w1)
            if backward:
                g = <floating>(dy[i * OW + j] * scale)
                if tiles:
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            dx[h * W + w] = g
                else:
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            dx[h * W + w] += g
            elif w0 == 0 and w1 == W:              # whole rows: one contiguous run
                y[i * OW + j] = <floating>(sum_contig(x + h0 * W, (h1 - h0) * W) * scale)
            else:
                s = 0
                for h in range(h0, h1):
                    s += sum_contig(x + h * W + w0, w1 - w0)
                y[i * OW + j] = <floating>(s * scale)


cdef void _avg(floating* xbuf, floating* ybuf, int R, int H, int W, int OH, int OW, int KH,
               int KW, int SH, int SW, int PH, int PW, bint count_pad, int divisor,
               bint adaptive, bint backward) noexcept nogil:
    # forward reads xbuf (R, H, W) and writes ybuf (R, OH, OW); backward reads ybuf (= dy)
    # and writes xbuf (= dx)
    cdef Py_ssize_t xs = <Py_ssize_t>H * W, ys = <Py_ssize_t>OH * OW
    cdef int r, nt = threads_for(<Py_ssize_t>R * (xs if adaptive else ys * KH * KW), GRAIN)
    for r in prange(R, num_threads=nt, schedule='static'):
        _avg_plane(ybuf + r * ys, xbuf + r * xs, xbuf + r * xs, ybuf + r * ys, H, W, OH, OW,
                   KH, KW, SH, SW, PH, PW, count_pad, divisor, adaptive, backward)


cdef _avg_dispatch(cnp.ndarray xbuf, cnp.ndarray ybuf, int KH, int KW, int SH, int SW, int PH,
                   int PW, bint count_pad, int divisor, bint adaptive, bint backward):
    cdef int R = <int>cnp.PyArray_DIM(xbuf, 0), H = <int>cnp.PyArray_DIM(xbuf, 1)
    cdef int W = <int>cnp.PyArray_DIM(xbuf, 2)
    cdef int OH = <int>cnp.PyArray_DIM(ybuf, 1), OW = <int>cnp.PyArray_DIM(ybuf, 2)
    if cnp.PyArray_TYPE(xbuf) == cnp.NPY_FLOAT32:
        _avg(<float*>cnp.PyArray_DATA(xbuf), <float*>cnp.PyArray_DATA(ybuf), R, H, W, OH, OW,
             KH, KW, SH, SW, PH, PW, count_pad, divisor, adaptive, backward)
    else:
        _avg(<double*>cnp.PyArray_DATA(xbuf), <double*>cnp.PyArray_DATA(ybuf), R, H, W, OH, OW,
             KH, KW, SH, SW, PH, PW, count_pad, divisor, adaptive, backward)


def avgpool2d_forward(cnp.ndarray y, cnp.ndarray x, int KH, int KW, int SH, int SW, int PH,
                      int PW, bint count_include_pad, int divisor_override):
    """y (R, OH, OW) = window means of x (R, H, W) (divisor_override > 0 replaces the count)."""
    _avg_dispatch(x, y, KH, KW, SH, SW, PH, PW, count_include_pad, divisor_override, False,
                  False)


def avgpool2d_backward(cnp.ndarray dx, cnp.ndarray dy, int KH, int KW, int SH, int SW, int PH,
                       int PW, bint count_include_pad, int divisor_override):
    """dx (R, H, W) = each dy (R, OH, OW) spread evenly (1/divisor) over its window."""
    _avg_dispatch(dx, dy, KH, KW, SH, SW, PH, PW, count_include_pad, divisor_override, False,
                  True)


def adaptive_avgpool2d_forward(cnp.ndarray y, cnp.ndarray x):
    """y (R, OH, OW) = means of x (R, H, W) over torch's adaptive bins (OH = OW = 1: global mean)."""
    _avg_dispatch(x, y, 0, 0, 0, 0, 0, 0, False, 0, True, False)


def adaptive_avgpool2d_backward(cnp.ndarray dx, cnp.ndarray dy):
    """dx (R, H, W) = each dy (R, OH, OW) spread evenly over its adaptive bin."""
    _avg_dispatch(dx, dy, 0, 0, 0, 0, 0, 0, False, 0, True, True)


# ---------------------------------------------------------------- adaptive max pooling
cdef void _adaptive_max_plane(floating* y, int* idx, const floating* x, int H, int W, int OH,
                              int OW) noexcept nogil:
    # torch's adaptive bins (as _adaptive_plane); y = max over the bin, idx its flat position
    # h*W + w: the first maximum in row-major order, or the last NaN (NaN wins), as torch
    cdef int i, j, h, w, h0, h1, w0, w1, best
    cdef floating m, v
    for i in range(OH):
        h0 = (i * H) // OH
        h1 = ((i + 1) * H + OH - 1) // OH
        for j in range(OW):
            w0 = (j * W) // OW
            w1 = ((j + 1) * W + OW - 1) // OW
            best = h0 * W + w0
            m = x[best]
            for h in range(h0, h1):
                for w in range(w0, w1):
                    v = x[h * W + w]
                    if v > m or v != v:             # torch: the last NaN wins
                        m = v
                        best = h * W + w
            y[i * OW + j] = m
            idx[i * OW + j] = best


cdef void _adaptive_max(floating* y, int* idx, const floating* x, int R, int H, int W, int OH,
                        int OW) noexcept nogil:
    cdef Py_ssize_t xs = <Py_ssize_t>H * W, ys = <Py_ssize_t>OH * OW
    cdef int r, nt = threads_for(<Py_ssize_t>R * xs, GRAIN)
    for r in prange(R, num_threads=nt, schedule='static'):
        _adaptive_max_plane(y + r * ys, idx + r * ys, x + r * xs, H, W, OH, OW)


def adaptive_maxpool2d_forward(cnp.ndarray y, cnp.ndarray idx, cnp.ndarray x):
    """y, idx (R, OH, OW) = max / argmax of x (R, H, W) over torch's adaptive bins; backward is
    maxpool2d_backward with this idx."""
    cdef int R = <int>cnp.PyArray_DIM(x, 0), H = <int>cnp.PyArray_DIM(x, 1)
    cdef int W = <int>cnp.PyArray_DIM(x, 2)
    cdef int OH = <int>cnp.PyArray_DIM(y, 1), OW = <int>cnp.PyArray_DIM(y, 2)
    cdef int* pi = <int*>cnp.PyArray_DATA(idx)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        _adaptive_max(<float*>cnp.PyArray_DATA(y), pi, <float*>cnp.PyArray_DATA(x), R, H, W,
                      OH, OW)
    else:
        _adaptive_max(<double*>cnp.PyArray_DATA(y), pi, <double*>cnp.PyArray_DATA(x), R, H, W,
                      OH, OW)
