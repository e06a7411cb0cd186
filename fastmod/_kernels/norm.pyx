# cython: language_level=3
"""Fused normalization kernels: LayerNorm, BatchNorm, GroupNorm -- one forward and one backward each.

Legend: R = rows, D = normalized size (LayerNorm views x as (R, D)); N = batch, C = channels,
S = spatial size (product of the dims after C; 1 for an (N, C) input), G = groups, Cg = C / G,
M = number of values one statistic is taken over (D, N*S or Cg*S).
x input, y output, w = gamma (weight), b = beta (bias), dy / dx gradients: C-contiguous, one dtype.
mean and rstd = 1 / sqrt(var + eps) (biased var) are float64, one per row / channel / (n, g);
forward writes them and backward reads them (with x: nothing of the input's size is saved twice).

Numerics: statistics are accumulated in double for float32 data, in two passes over an L1/L2-sized
block (mean, then the sum of squared deviations) -- never E[x^2] - E[x]^2, which cancels
catastrophically for inputs like 1e4 + 1e-3 * randn. BatchNorm's channel (N blocks of S values)
merges the per-block (mean, M2) pairs with Chan's formula in order of n, so x is read once from
memory for the statistics and once to normalize. `x - mean` is always formed in double.
The reductions are `omp simd` loops (a fixed vectorized order: bit-identical on repeat).

Threads: each prange runs over what it writes (rows, channel blocks, (n, g) pairs). Parameter
gradients that cross rows go through per-thread partials (LayerNorm, `part` (nt, 2, D)) summed in
thread order, or through per-(n, c) sums reduced over n serially (GroupNorm), so a fixed thread
count gives bit-identical results.
Gradients of w and b are added into dw / db when acc is set (Parameter.grad_buffer), else written.
"""
import numpy as np
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

from fastmod._kernels._threads cimport threads_for

cnp.import_array()

cdef Py_ssize_t GRAIN = 1 << 15          # elements per thread before a 2nd thread pays off

cdef extern from *:
    """
    /* Reductions over n contiguous values, accumulated in double. `omp simd reduction` lets the
       compiler keep several vector accumulators (a fixed order: the same bits on every call);
       without it the double adds form one serial dependency chain (~4x slower on AVX2). */
    #define FM_NORM_REDUCTIONS(T, S)                                                          \\
    static inline double fm_sum_##S(const T* x, Py_ssize_t n) {                               \\
        double s = 0.0; Py_ssize_t i;                                                         \\
        _Pragma("omp simd reduction(+:s)")                                                    \\
        for (i = 0; i < n; i++) s += (double)x[i];                                            \\
        return s;                                                                             \\
    }                                                                                         \\
    /* sum of squared deviations from m */                                                    \\
    static inline double fm_ssd_##S(const T* x, Py_ssize_t n, double m) {                     \\
        double s = 0.0; Py_ssize_t i;                                                         \\
        _Pragma("omp simd reduction(+:s)")                                                    \\
        for (i = 0; i < n; i++) { double d = (double)x[i] - m; s += d * d; }                  \\
        return s;                                                                             \\
    }                                                                                         \\
    /* sum(dy) and sum(dy * (x - m)) in one pass */                                           \\
    static inline void fm_dsum_##S(const T* dy, const T* x, Py_ssize_t n, double m,           \\
                                   double* s_dy, double* s_dyx) {                             \\
        double a = 0.0, b = 0.0; Py_ssize_t i;                                                \\
        _Pragma("omp simd reduction(+:a,b)")                                                  \\
        for (i = 0; i < n; i++) { double g = (double)dy[i]; a += g; b += g * ((double)x[i] - m); } \\
        *s_dy = a; *s_dyx = b;                                                                \\
    }                                                                                         \\
    /* sum(dy * w) and sum(dy * w * (x - m)) in one pass (w per element) */                   \\
    static inline void fm_dsum_w_##S(const T* dy, const T* w, const T* x, Py_ssize_t n,      \\
                                     double m, double* s_g, double* s_gx) {                   \\
        double a = 0.0, b = 0.0; Py_ssize_t i;                                                \\
        _Pragma("omp simd reduction(+:a,b)")                                                  \\
        for (i = 0; i < n; i++) {                                                             \\
            double g = (double)dy[i] * (double)w[i]; a += g; b += g * ((double)x[i] - m); }   \\
        *s_g = a; *s_gx = b;                                                                  \\
    }
    FM_NORM_REDUCTIONS(float, f)
    FM_NORM_REDUCTIONS(double, d)
    """
    double fm_sum_f(const float* x, Py_ssize_t n) noexcept nogil
    double fm_sum_d(const double* x, Py_ssize_t n) noexcept nogil
    double fm_ssd_f(const float* x, Py_ssize_t n, double m) noexcept nogil
    double fm_ssd_d(const double* x, Py_ssize_t n, double m) noexcept nogil
    void fm_dsum_f(const float* dy, const float* x, Py_ssize_t n, double m,
                   double* s_dy, double* s_dyx) noexcept nogil
    void fm_dsum_d(const double* dy, const double* x, Py_ssize_t n, double m,
                   double* s_dy, double* s_dyx) noexcept nogil
    void fm_dsum_w_f(const float* dy, const float* w, const float* x, Py_ssize_t n, double m,
                     double* s_g, double* s_gx) noexcept nogil
    void fm_dsum_w_d(const double* dy, const double* w, const double* x, Py_ssize_t n, double m,
                     double* s_g, double* s_gx) noexcept nogil


cdef inline double _sum(const floating* x, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return fm_sum_f(x, n)
    else:
        return fm_sum_d(x, n)


cdef inline double _ssd(const floating* x, Py_ssize_t n, double m) noexcept nogil:
    if floating is float:
        return fm_ssd_f(x, n, m)
    else:
        return fm_ssd_d(x, n, m)


cdef inline void _dsum(const floating* dy, const floating* x, Py_ssize_t n, double m,
                       double* s_dy, double* s_dyx) noexcept nogil:
    if floating is float:
        fm_dsum_f(dy, x, n, m, s_dy, s_dyx)
    else:
        fm_dsum_d(dy, x, n, m, s_dy, s_dyx)


cdef inline void _dsum_w(const floating* dy, const floating* w, const floating* x, Py_ssize_t n,
                         double m, double* s_g, double* s_gx) noexcept nogil:
    if floating is float:
        fm_dsum_w_f(dy, w, x, n, m, s_g, s_gx)
    else:
        fm_dsum_w_d(dy, w, x, n, m, s_g, s_gx)


cdef inline void _affine(floating* y, const floating* x, Py_ssize_t n, double m, double scale,
                         double shift) noexcept nogil:
    """y = (x - m) * scale + shift over n values (one channel / group block)."""
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = <floating>((x[i] - m) * scale + shift)


cdef inline void _store(floating* g, const double* v, Py_ssize_t n, bint acc) noexcept nogil:
    cdef Py_ssize_t i
    if acc:
        for i in range(n):
            g[i] = <floating>(g[i] + v[i])
    else:
        for i in range(n):
            g[i] = <floating>v[i]


cdef inline int _nt(Py_ssize_t units, Py_ssize_t elements) noexcept nogil:
    """Threads for `units` independent pieces of work covering `elements` values."""
    cdef int nt = threads_for(elements, GRAIN)
    if nt > units:
        nt = <int>units
    return nt if nt > 0 else 1


# ================================================================== LayerNorm
cdef void _layernorm_forward(floating* y, double* mean, double* rstd, const floating* x,
                             const floating* w, const floating* b, Py_ssize_t R, Py_ssize_t D,
                             double eps, int nt) noexcept nogil:
    # y[r] = (x[r] - mean[r]) * rstd[r] * w + b; w, b NULL for LN-S (or b NULL: bias=False)
    cdef Py_ssize_t r, j
    cdef const floating* xr
    cdef floating* yr
    cdef double m, rs
    for r in prange(R, num_threads=nt, schedule='static'):
        xr = x + r * D
        yr = y + r * D
        m = _sum(xr, D) / D
        rs = 1.0 / sqrt(_ssd(xr, D, m) / D + eps)
        mean[r] = m
        rstd[r] = rs
        if w == NULL:
            _affine(yr, xr, D, m, rs, 0.0)
        elif b == NULL:
            for j in range(D):
                yr[j] = <floating>((xr[j] - m) * rs * w[j])
        else:
            for j in range(D):
                yr[j] = <floating>((xr[j] - m) * rs * w[j] + b[j])


cdef void _layernorm_backward(floating* dx, double* part, const floating* dy, const floating* x,
                              const floating* w, const double* mean, const double* rstd,
                              Py_ssize_t R, Py_ssize_t D, int nt) noexcept nogil:
    # g = dy * w, xhat = (x - m) * rs:
    #   dx = rs * (g - mean(g) - xhat * mean(g * xhat))   (dx NULL: not wanted)
    #   part[t, 0] += dy * xhat (-> dw), part[t, 1] += dy (-> db), over thread t's rows (part NULL:
    #   no parameter gradient wanted). w is never NULL here (LN-S passes ones).
    cdef Py_ssize_t t, r, j, lo, hi, chunk = (R + nt - 1) // nt
    cdef const floating* xr
    cdef const floating* dyr
    cdef floating* dxr
    cdef double* pw
    cdef double* pb
    cdef double m, rs, s_g, s_gx, c1, c2, g
    for t in prange(nt, num_threads=nt, schedule='static'):
        lo = t * chunk
        hi = min(R, lo + chunk)
        pw = NULL
        pb = NULL
        if part != NULL:
            pw = part + 2 * t * D
            pb = pw + D
        for r in range(lo, hi):
            xr = x + r * D
            dyr = dy + r * D
            m = mean[r]
            rs = rstd[r]
            if pw != NULL:
                for j in range(D):
                    g = dyr[j]
                    pw[j] += g * ((xr[j] - m) * rs)
                    pb[j] += g
            if dx != NULL:
                dxr = dx + r * D
                _dsum_w(dyr, w, xr, D, m, &s_g, &s_gx)
                c1 = rs * s_g / D
                c2 = rs * rs * rs * s_gx / D
                for j in range(D):
                    dxr[j] = <floating>(rs * (<double>dyr[j] * w[j]) - c1 - (xr[j] - m) * c2)


def layernorm_forward(cnp.ndarray y, cnp.ndarray mean, cnp.ndarray rstd, cnp.ndarray x,
                      object w, object b, Py_ssize_t R, Py_ssize_t D, double eps):
    """y (R, D) = LN(x (R, D)); writes mean, rstd (R,) float64. w, b (D,) or None."""
    cdef void* py = cnp.PyArray_DATA(y)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = _ptr(w)
    cdef void* pb = _ptr(b)
    cdef int nt = _nt(R, R * D)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _layernorm_forward(<float*>py, pm, pr, <float*>px, <float*>pw, <float*>pb, R, D, eps, nt)
    else:
        with nogil:
            _layernorm_forward(<double*>py, pm, pr, <double*>px, <double*>pw, <double*>pb, R, D, eps, nt)


def layernorm_backward(object dx, object dw, object db, cnp.ndarray dy, cnp.ndarray x,
                       cnp.ndarray w, cnp.ndarray mean, cnp.ndarray rstd, Py_ssize_t R,
                       Py_ssize_t D, bint acc_w, bint acc_b):
    """dx (R, D) or None; dw, db (D,) or None (+= when acc_*). w (D,): ones for LN-S."""
    cdef void* pdx = _ptr(dx)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef int nt = _nt(R, R * D)
    cdef cnp.ndarray part = None
    cdef double* pp = NULL
    cdef Py_ssize_t t, j
    if dw is not None or db is not None:
        part = np.zeros(nt * 2 * D)
        pp = <double*>cnp.PyArray_DATA(part)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _layernorm_backward(<float*>pdx, pp, <float*>pdy, <float*>px, <float*>pw, pm, pr, R, D, nt)
    else:
        with nogil:
            _layernorm_backward(<double*>pdx, pp, <double*>pdy, <double*>px, <double*>pw, pm, pr, R, D, nt)
    if pp != NULL:
        with nogil:
            for t in range(1, nt):                       # thread order: same bits every call
                for j in range(2 * D):
                    pp[j] += pp[2 * t * D + j]
        _store_any(dw, pp, D, acc_w)
        _store_any(db, pp + D, D, acc_b)


# ================================================================== BatchNorm
cdef void _batchnorm_forward(floating* y, double* mean, double* rstd, floating* run_mean,
                             floating* run_var, const floating* x, const floating* w,
                             const floating* b, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                             double eps, double factor, bint batch_stats, int nt) noexcept nogil:
    # batch_stats: mean/var over (N, S) per channel (biased var in rstd, unbiased into run_var:
    # run = (1 - factor) * run + factor * stat when run_mean is not NULL); else the running stats.
    # Threads own blocks of channels and walk x in memory order within their block.
    cdef Py_ssize_t t, n, c, c0, c1, s, cb = (C + nt - 1) // nt
    cdef Py_ssize_t M = N * S
    cdef double bm, bq, d, k, m, rs, var, sc, sh
    cdef const floating* xb
    cdef floating* yb
    for t in prange(nt, num_threads=nt, schedule='static'):
        c0 = t * cb
        c1 = min(C, c0 + cb)
        if batch_stats:
            # mean[c] accumulates the running mean, rstd[c] the running M2 (sum of squared devs)
            for c in range(c0, c1):
                mean[c] = 0.0
                rstd[c] = 0.0
            if S == 1:
                for n in range(N):
                    for c in range(c0, c1):
                        mean[c] += x[n * C + c]
                for c in range(c0, c1):
                    mean[c] /= N
                for n in range(N):
                    for c in range(c0, c1):
                        d = x[n * C + c] - mean[c]
                        rstd[c] += d * d
            else:
                for n in range(N):
                    k = <double>S / ((n + 1) * S)      # weight of the new block in the merge
                    for c in range(c0, c1):
                        xb = x + (n * C + c) * S
                        bm = _sum(xb, S) / S
                        bq = _ssd(xb, S, bm)
                        # Chan et al.: merge (n*S, mean, M2) with (S, bm, bq)
                        d = bm - mean[c]
                        mean[c] += d * k
                        rstd[c] += bq + d * d * (n * S) * k
            for c in range(c0, c1):
                var = rstd[c] / M
                rstd[c] = 1.0 / sqrt(var + eps)
                if run_mean != NULL:
                    run_mean[c] = <floating>((1.0 - factor) * run_mean[c] + factor * mean[c])
                    run_var[c] = <floating>((1.0 - factor) * run_var[c]
                                            + factor * var * M / (M - 1))
        else:
            for c in range(c0, c1):
                mean[c] = run_mean[c]
                rstd[c] = 1.0 / sqrt(<double>run_var[c] + eps)
        if S == 1:
            for n in range(N):
                for c in range(c0, c1):
                    sc = rstd[c] * (w[c] if w != NULL else 1.0)
                    sh = b[c] if b != NULL else 0.0
                    y[n * C + c] = <floating>((x[n * C + c] - mean[c]) * sc + sh)
        else:
            for n in range(N):
                for c in range(c0, c1):
                    sc = rstd[c] * (w[c] if w != NULL else 1.0)
                    sh = b[c] if b != NULL else 0.0
                    _affine(y + (n * C + c) * S, x + (n * C + c) * S, S, mean[c], sc, sh)


cdef void _batchnorm_backward(floating* dx, double* sums, const floating* dy, const floating* x,
                              const floating* w, const double* mean, const double* rstd,
                              Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, bint batch_stats,
                              int nt) noexcept nogil:
    # sums[c] = sum(dy), sums[C + c] = sum(dy * (x - mean)) over (N, S) (-> db, dw / rstd);
    # batch_stats: dx = w rs (dy - mean(dy) - xhat mean(dy xhat)); else (eval, fixed running
    # statistics: a per-channel affine map) dx = w rs dy.
    cdef Py_ssize_t t, n, c, c0, c1, s, p, cb = (C + nt - 1) // nt
    cdef double M = <double>(N * S)
    cdef double a, q, k1, k2, k3, m
    cdef double* sdy = sums
    cdef double* sdx = sums + C
    for t in prange(nt, num_threads=nt, schedule='static'):
        c0 = t * cb
        c1 = min(C, c0 + cb)
        for c in range(c0, c1):
            sdy[c] = 0.0
            sdx[c] = 0.0
        if S == 1:
            for n in range(N):
                for c in range(c0, c1):
                    a = dy[n * C + c]
                    sdy[c] += a
                    sdx[c] += a * (x[n * C + c] - mean[c])
        else:
            for n in range(N):
                for c in range(c0, c1):
                    p = (n * C + c) * S
                    _dsum(dy + p, x + p, S, mean[c], &a, &q)
                    sdy[c] += a
                    sdx[c] += q
        if dx != NULL:
            for n in range(N):
                for c in range(c0, c1):
                    m = mean[c]
                    k1 = rstd[c] * (w[c] if w != NULL else 1.0)
                    k2 = 0.0
                    k3 = 0.0
                    if batch_stats:
                        k2 = k1 * sdy[c] / M
                        k3 = k1 * rstd[c] * rstd[c] * sdx[c] / M
                    p = (n * C + c) * S
                    for s in range(S):
                        dx[p + s] = <floating>(k1 * dy[p + s] - k2 - (x[p + s] - m) * k3)


def batchnorm_forward(cnp.ndarray y, cnp.ndarray mean, cnp.ndarray rstd, object run_mean,
                      object run_var, cnp.ndarray x, object w, object b, Py_ssize_t N,
                      Py_ssize_t C, Py_ssize_t S, double eps, double factor, bint batch_stats):
    """y (N, C, S) = BN(x); mean, rstd (C,) float64 out. batch_stats: statistics of x (and
    run_mean/run_var, when given, updated with weight `factor`); else run_mean/run_var are used."""
    cdef void* py = cnp.PyArray_DATA(y)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef void* prm = _ptr(run_mean)
    cdef void* prv = _ptr(run_var)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = _ptr(w)
    cdef void* pb = _ptr(b)
    cdef int nt = _nt(C, N * C * S)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _batchnorm_forward(<float*>py, pm, pr, <float*>prm, <float*>prv, <float*>px,
                               <float*>pw, <float*>pb, N, C, S, eps, factor, batch_stats, nt)
    else:
        with nogil:
            _batchnorm_forward(<double*>py, pm, pr, <double*>prm, <double*>prv, <double*>px,
                               <double*>pw, <double*>pb, N, C, S, eps, factor, batch_stats, nt)


def batchnorm_backward(object dx, object dw, object db, cnp.ndarray dy, cnp.ndarray x, object w,
                       cnp.ndarray mean, cnp.ndarray rstd, Py_ssize_t N, Py_ssize_t C,
                       Py_ssize_t S, bint batch_stats, bint acc_w, bint acc_b):
    """dx (N, C, S) or None; dw, db (C,) or None (+= when acc_*)."""
    cdef void* pdx = _ptr(dx)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = _ptr(w)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef int nt = _nt(C, N * C * S)
    cdef cnp.ndarray sums = np.empty(2 * C)
    cdef double* ps = <double*>cnp.PyArray_DATA(sums)
    cdef Py_ssize_t c
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _batchnorm_backward(<float*>pdx, ps, <float*>pdy, <float*>px, <float*>pw, pm, pr,
                                N, C, S, batch_stats, nt)
    else:
        with nogil:
            _batchnorm_backward(<double*>pdx, ps, <double*>pdy, <double*>px, <double*>pw, pm, pr,
                                N, C, S, batch_stats, nt)
    for c in range(C):
        ps[C + c] *= pr[c]                   # sum(dy * xhat)
    _store_any(dw, ps + C, C, acc_w)
    _store_any(db, ps, C, acc_b)


# ================================================================== GroupNorm
cdef void _groupnorm_forward(floating* y, double* mean, double* rstd, const floating* x,
                             const floating* w, const floating* b, Py_ssize_t N, Py_ssize_t C,
                             Py_ssize_t S, Py_ssize_t G, double eps, int nt) noexcept nogil:
    # (n, g) owns the contiguous block x[n, g*Cg:(g+1)*Cg, :] of M = Cg*S values
    cdef Py_ssize_t i, n, g, c, cg = C // G, M = cg * S
    cdef const floating* xb
    cdef double m, rs, sc, sh
    for i in prange(N * G, num_threads=nt, schedule='static'):
        n = i // G
        g = i % G
        xb = x + i * M
        m = _sum(xb, M) / M
        rs = 1.0 / sqrt(_ssd(xb, M, m) / M + eps)
        mean[i] = m
        rstd[i] = rs
        for c in range(g * cg, (g + 1) * cg):
            sc = rs * (w[c] if w != NULL else 1.0)
            sh = b[c] if b != NULL else 0.0
            _affine(y + (n * C + c) * S, x + (n * C + c) * S, S, m, sc, sh)


cdef void _groupnorm_backward(floating* dx, double* sums, const floating* dy, const floating* x,
                              const floating* w, const double* mean, const double* rstd,
                              Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t G,
                              int nt) noexcept nogil:
    # sums[n, c] = sum_s dy, sums[N*C + n*C + c] = sum_s dy * (x - mean[n, g]) (reduced over n
    # afterwards, in order, into db and dw: no cross-thread sums at all).
    # g_c = dy * w[c]: dx = rs * (g - mean(g) - xhat * mean(g * xhat)) over the group.
    cdef Py_ssize_t i, n, g, c, s, p, cg = C // G, M = cg * S, NC = N * C
    cdef double m, rs, a, q, s1, s2, k1, k2, k3, wc
    for i in prange(N * G, num_threads=nt, schedule='static'):
        n = i // G
        g = i % G
        m = mean[i]
        rs = rstd[i]
        s1 = 0.0
        s2 = 0.0
        for c in range(g * cg, (g + 1) * cg):
            p = (n * C + c) * S
            _dsum(dy + p, x + p, S, m, &a, &q)
            sums[n * C + c] = a
            sums[NC + n * C + c] = q
            wc = w[c] if w != NULL else 1.0
            s1 = s1 + wc * a
            s2 = s2 + wc * q
        if dx != NULL:
            k2 = rs * s1 / M
            k3 = rs * rs * rs * s2 / M
            for c in range(g * cg, (g + 1) * cg):
                k1 = rs * (w[c] if w != NULL else 1.0)
                p = (n * C + c) * S
                for s in range(S):
                    dx[p + s] = <floating>(k1 * dy[p + s] - k2 - (x[p + s] - m) * k3)


def groupnorm_forward(cnp.ndarray y, cnp.ndarray mean, cnp.ndarray rstd, cnp.ndarray x,
                      object w, object b, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                      Py_ssize_t G, double eps):
    """y (N, C, S) = GN(x); mean, rstd (N, G) float64 out; w, b (C,) or None."""
    cdef void* py = cnp.PyArray_DATA(y)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = _ptr(w)
    cdef void* pb = _ptr(b)
    cdef int nt = _nt(N * G, N * C * S)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _groupnorm_forward(<float*>py, pm, pr, <float*>px, <float*>pw, <float*>pb,
                               N, C, S, G, eps, nt)
    else:
        with nogil:
            _groupnorm_forward(<double*>py, pm, pr, <double*>px, <double*>pw, <double*>pb,
                               N, C, S, G, eps, nt)


def groupnorm_backward(object dx, object dw, object db, cnp.ndarray dy, cnp.ndarray x, object w,
                       cnp.ndarray mean, cnp.ndarray rstd, Py_ssize_t N, Py_ssize_t C,
                       Py_ssize_t S, Py_ssize_t G, bint acc_w, bint acc_b):
    """dx (N, C, S) or None; dw, db (C,) or None (+= when acc_*)."""
    cdef void* pdx = _ptr(dx)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = _ptr(w)
    cdef double* pm = <double*>cnp.PyArray_DATA(mean)
    cdef double* pr = <double*>cnp.PyArray_DATA(rstd)
    cdef int nt = _nt(N * G, N * C * S)
    cdef cnp.ndarray sums = np.empty(2 * N * C)
    cdef double* ps = <double*>cnp.PyArray_DATA(sums)
    cdef Py_ssize_t n, c, cg = C // G
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _groupnorm_backward(<float*>pdx, ps, <float*>pdy, <float*>px, <float*>pw, pm, pr,
                                N, C, S, G, nt)
    else:
        with nogil:
            _groupnorm_backward(<double*>pdx, ps, <double*>pdy, <double*>px, <double*>pw, pm, pr,
                                N, C, S, G, nt)
    if dw is None and db is None:
        return
    with nogil:
        # row 0 of each half collects the sums over n: db (sum dy), dw (sum dy * xhat)
        for c in range(C):
            ps[N * C + c] *= pr[c // cg]
        for n in range(1, N):
            for c in range(C):
                ps[c] += ps[n * C + c]
                ps[N * C + c] += ps[N * C + n * C + c] * pr[n * (C // cg) + c // cg]
    _store_any(dw, ps + N * C, C, acc_w)
    _store_any(db, ps, C, acc_b)


# ================================================================== helpers
cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _store_any(object g, double* v, Py_ssize_t n, bint acc):
    """g (n,) float32/float64 array or None: g = v, or g += v when acc."""
    if g is None:
        return
    cdef void* pg = cnp.PyArray_DATA(<cnp.ndarray>g)
    if cnp.PyArray_TYPE(<cnp.ndarray>g) == cnp.NPY_FLOAT32:
        _store(<float*>pg, v, n, acc)
    else:
        _store(<double*>pg, v, n, acc)
