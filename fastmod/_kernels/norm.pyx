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
merges the per-block (mean, M2) pairs with Chan's formula in order of n (for S <= 16, the
column path: blocks of rows, then threads in order, then the S columns), so x is read once from
memory for the statistics and once to normalize. Element-wise loops run in the data's precision
with the mean split into hi + lo parts (see _affine), so x - mean keeps its digits there too.
The reductions have a fixed vectorized order (see the C block): bit-identical on repeat.

Threads: each prange runs over what it writes (rows, channel blocks, (n, g) pairs), with
num_threads from threads_for. Parameter gradients that cross rows / samples go through per-thread
partials (`part` (nt, 2, D or C), each thread owning a contiguous range) summed in thread order,
so a fixed thread count gives bit-identical results (BatchNorm's column path splits rows the same
way and merges its per-thread column statistics / sums in thread order).
Gradients of w and b are added into dw / db when acc is set (Parameter.grad_buffer), else written.
"""
import numpy as np
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free

from fastmod._kernels._alloc cimport fm_malloc
from fastmod._kernels._threads cimport threads_for

cnp.import_array()

cdef Py_ssize_t GRAIN = 1 << 15          # elements per thread before a 2nd thread pays off

cdef extern from *:
    """
    /* Reductions over n contiguous values, accumulated in double for float data, in a fixed
       order: simd/fm_reduce.h (FM_DL doubles per vector, four accumulators), then the tail. */
    #include "fm_reduce.h"
    #if FM_HAVE_DVEC
    #define FM_NORM_REDUCTIONS(T, S)                                                          \\
    static inline double fm_sum_##S(const T* x, Py_ssize_t n) {                               \\
        FM_ACC4; double s = 0.0; Py_ssize_t i = 0;                                            \\
        FM_RED_LOOP(FM_SUM_STEP_##S)                                                          \\
        for (; i < n; i++) s += (double)x[i];                                                 \\
        return fm_hsum4(a0, a1, a2, a3) + s;                                                   \\
    }                                                                                         \\
    /* sum of squared deviations from m */                                                    \\
    static inline double fm_ssd_##S(const T* x, Py_ssize_t n, double m) {                     \\
        FM_ACC4; fm_dv d4; double s = 0.0, d; Py_ssize_t i = 0;                               \\
        FM_RED_LOOP(FM_SSD_STEP_##S)                                                          \\
        for (; i < n; i++) { d = (double)x[i] - m; s += d * d; }                              \\
        return fm_hsum4(a0, a1, a2, a3) + s;                                                   \\
    }                                                                                         \\
    /* sum(dy) and sum(dy * (x - m)) in one pass */                                           \\
    static inline void fm_dsum_##S(const T* dy, const T* x, Py_ssize_t n, double m,           \\
                                   double* s_dy, double* s_dyx) {                             \\
        FM_ACC4; FM_ACC4B; fm_dv g4; double sa = 0.0, sb = 0.0, g; Py_ssize_t i = 0;          \\
        FM_RED_LOOP(FM_DSUM_STEP_##S)                                                         \\
        for (; i < n; i++) { g = (double)dy[i]; sa += g; sb += g * ((double)x[i] - m); }      \\
        *s_dy = fm_hsum4(a0, a1, a2, a3) + sa; *s_dyx = fm_hsum4(b0, b1, b2, b3) + sb;          \\
    }                                                                                         \\
    /* sum(dy * w) and sum(dy * w * (x - m)) in one pass (w per element) */                   \\
    static inline void fm_dsum_w_##S(const T* dy, const T* w, const T* x, Py_ssize_t n,      \\
                                     double m, double* s_g, double* s_gx) {                   \\
        FM_ACC4; FM_ACC4B; fm_dv g4; double sa = 0.0, sb = 0.0, g; Py_ssize_t i = 0;          \\
        FM_RED_LOOP(FM_DSUMW_STEP_##S)                                                        \\
        for (; i < n; i++) {                                                                  \\
            g = (double)dy[i] * (double)w[i]; sa += g; sb += g * ((double)x[i] - m); }        \\
        *s_g = fm_hsum4(a0, a1, a2, a3) + sa; *s_gx = fm_hsum4(b0, b1, b2, b3) + sb;            \\
    }                                                                                         \\
    /* fm_dsum_w, and pw += dy * (x - m) * rs, pb += dy (the weight / bias gradient partials) */ \\
    static inline void fm_dsum_w_acc_##S(const T* dy, const T* w, const T* x, Py_ssize_t n,  \\
                                         double m, double rs, double* pw, double* pb,         \\
                                         double* s_g, double* s_gx) {                         \\
        FM_ACC4; FM_ACC4B; fm_dv h4, d4, g4; double sa = 0.0, sb = 0.0, g, h, d;              \\
        Py_ssize_t i = 0;                                                                     \\
        FM_RED_LOOP(FM_DSUMWACC_STEP_##S)                                                     \\
        for (; i < n; i++) {                                                                  \\
            h = (double)dy[i]; d = (double)x[i] - m; g = h * (double)w[i];                    \\
            sa += g; sb += g * d; pw[i] += h * (d * rs); pb[i] += h; }                        \\
        *s_g = fm_hsum4(a0, a1, a2, a3) + sa; *s_gx = fm_hsum4(b0, b1, b2, b3) + sb;            \\
    }
    /* one 4-value step of each reduction, accumulating into A (and B) */
    #define FM_SUM_STEP_f(A, B, j) A += fm_ld_f(x + (j));
    #define FM_SUM_STEP_d(A, B, j) A += fm_ld_d(x + (j));
    #define FM_SSD_STEP_f(A, B, j) d4 = fm_ld_f(x + (j)) - m; A += d4 * d4;
    #define FM_SSD_STEP_d(A, B, j) d4 = fm_ld_d(x + (j)) - m; A += d4 * d4;
    #define FM_DSUM_STEP_f(A, B, j) g4 = fm_ld_f(dy + (j)); A += g4; B += g4 * (fm_ld_f(x + (j)) - m);
    #define FM_DSUM_STEP_d(A, B, j) g4 = fm_ld_d(dy + (j)); A += g4; B += g4 * (fm_ld_d(x + (j)) - m);
    #define FM_DSUMW_STEP_f(A, B, j) g4 = fm_ld_f(dy + (j)) * fm_ld_f(w + (j)); A += g4;        \\
                                     B += g4 * (fm_ld_f(x + (j)) - m);
    #define FM_DSUMW_STEP_d(A, B, j) g4 = fm_ld_d(dy + (j)) * fm_ld_d(w + (j)); A += g4;        \\
                                     B += g4 * (fm_ld_d(x + (j)) - m);
    #define FM_DSUMWACC_STEP_f(A, B, j) h4 = fm_ld_f(dy + (j)); d4 = fm_ld_f(x + (j)) - m;      \\
        g4 = h4 * fm_ld_f(w + (j)); A += g4; B += g4 * d4;                                    \\
        fm_st_d(pw + (j), fm_ld_d(pw + (j)) + h4 * (d4 * rs)); fm_st_d(pb + (j), fm_ld_d(pb + (j)) + h4);
    #define FM_DSUMWACC_STEP_d(A, B, j) h4 = fm_ld_d(dy + (j)); d4 = fm_ld_d(x + (j)) - m;      \\
        g4 = h4 * fm_ld_d(w + (j)); A += g4; B += g4 * d4;                                    \\
        fm_st_d(pw + (j), fm_ld_d(pw + (j)) + h4 * (d4 * rs)); fm_st_d(pb + (j), fm_ld_d(pb + (j)) + h4);
    #else
    #define FM_NORM_REDUCTIONS(T, S)                                                          \\
    static double fm_sum_##S(const T* x, Py_ssize_t n) {                                      \\
        double s = 0.0; Py_ssize_t i; for (i = 0; i < n; i++) s += (double)x[i]; return s; } \\
    static double fm_ssd_##S(const T* x, Py_ssize_t n, double m) {                            \\
        double s = 0.0, d; Py_ssize_t i;                                                      \\
        for (i = 0; i < n; i++) { d = (double)x[i] - m; s += d * d; } return s; }             \\
    static void fm_dsum_##S(const T* dy, const T* x, Py_ssize_t n, double m,                  \\
                            double* s_dy, double* s_dyx) {                                    \\
        double a = 0.0, b = 0.0, g; Py_ssize_t i;                                             \\
        for (i = 0; i < n; i++) { g = (double)dy[i]; a += g; b += g * ((double)x[i] - m); }   \\
        *s_dy = a; *s_dyx = b; }                                                              \\
    static void fm_dsum_w_##S(const T* dy, const T* w, const T* x, Py_ssize_t n, double m,   \\
                              double* s_g, double* s_gx) {                                    \\
        double a = 0.0, b = 0.0, g; Py_ssize_t i;                                             \\
        for (i = 0; i < n; i++) {                                                             \\
            g = (double)dy[i] * (double)w[i]; a += g; b += g * ((double)x[i] - m); }          \\
        *s_g = a; *s_gx = b; }                                                                \\
    static void fm_dsum_w_acc_##S(const T* dy, const T* w, const T* x, Py_ssize_t n,         \\
                                  double m, double rs, double* pw, double* pb,                \\
                                  double* s_g, double* s_gx) {                                \\
        double a = 0.0, b = 0.0, g, h, d; Py_ssize_t i;                                       \\
        for (i = 0; i < n; i++) {                                                             \\
            h = (double)dy[i]; d = (double)x[i] - m; g = h * (double)w[i];                    \\
            a += g; b += g * d; pw[i] += h * (d * rs); pb[i] += h; }                          \\
        *s_g = a; *s_gx = b; }
    #endif
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
    void fm_dsum_w_acc_f(const float* dy, const float* w, const float* x, Py_ssize_t n, double m,
                         double rs, double* pw, double* pb, double* s_g, double* s_gx) noexcept nogil
    void fm_dsum_w_acc_d(const double* dy, const double* w, const double* x, Py_ssize_t n,
                         double m, double rs, double* pw, double* pb, double* s_g,
                         double* s_gx) noexcept nogil


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


cdef inline void _dsum_w_acc(const floating* dy, const floating* w, const floating* x,
                             Py_ssize_t n, double m, double rs, double* pw, double* pb,
                             double* s_g, double* s_gx) noexcept nogil:
    if floating is float:
        fm_dsum_w_acc_f(dy, w, x, n, m, rs, pw, pb, s_g, s_gx)
    else:
        fm_dsum_w_acc_d(dy, w, x, n, m, rs, pw, pb, s_g, s_gx)


# Element-wise loops run in the data's precision (8 floats per AVX2 op instead of 4 doubles:
# ~2x on LayerNorm forward) without losing the statistics' digits: the double mean is split
# into hi = float(m) and lo = float(m - hi), and (x - hi) - lo is x - m to float accuracy even
# when |m| >> std (x - hi is exact near m; rounding hi alone would cost ulp(m) / std).
cdef inline void _affine(floating* y, const floating* x, Py_ssize_t n, double m, double scale,
                         double shift) noexcept nogil:
    """y = (x - m) * scale + shift over n values (one channel / group block / row)."""
    cdef floating mh = <floating>m
    cdef floating ml = <floating>(m - mh)
    cdef floating sc = <floating>scale
    cdef floating sh = <floating>shift
    cdef Py_ssize_t i
    for i in range(n):
        y[i] = (x[i] - mh - ml) * sc + sh


cdef inline void _layernorm_row(floating* y, const floating* x, const floating* w,
                                const floating* b, Py_ssize_t n, double m, double rs) noexcept nogil:
    """y = (x - m) * rs * w + b (b NULL: none)."""
    cdef floating mh = <floating>m
    cdef floating ml = <floating>(m - mh)
    cdef floating r = <floating>rs
    cdef Py_ssize_t i
    if b == NULL:
        for i in range(n):
            y[i] = (x[i] - mh - ml) * r * w[i]
    else:
        for i in range(n):
            y[i] = (x[i] - mh - ml) * r * w[i] + b[i]


cdef inline void _dx_row(floating* dx, const floating* dy, const floating* w, const floating* x,
                         Py_ssize_t n, double m, double k1, double k2, double k3) noexcept nogil:
    """dx = dy * w * k1 - k2 - (x - m) * k3 (w NULL: 1), the normalization backward's form."""
    cdef floating mh = <floating>m
    cdef floating ml = <floating>(m - mh)
    cdef floating a = <floating>k1
    cdef floating c = <floating>k2
    cdef floating e = <floating>k3
    cdef Py_ssize_t i
    if w == NULL:
        for i in range(n):
            dx[i] = dy[i] * a - c - (x[i] - mh - ml) * e
    else:
        for i in range(n):
            dx[i] = dy[i] * w[i] * a - c - (x[i] - mh - ml) * e


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
cdef enum:
    LN_BLOCK = 8          # rows whose statistics are computed phase by phase (see below)


cdef void _layernorm_forward(floating* y, double* mean, double* rstd, const floating* x,
                             const floating* w, const floating* b, Py_ssize_t R, Py_ssize_t D,
                             double eps, int nt) noexcept nogil:
    # y[r] = (x[r] - mean[r]) * rstd[r] * w + b; w, b NULL for LN-S (or b NULL: bias=False).
    # Rows go in blocks of LN_BLOCK, one phase at a time (sums, squared deviations, rstd,
    # output): a short row's statistics are a chain of dependent latencies (sum -> mean -> ssd
    # -> sqrt -> divide) and phases give the CPU 8 independent chains to overlap
    # (LayerNorm(32) on (64, 64, 32, 32) at 1 thread, with the register accumulators: forward
    # 8.9 -> 3.4 ms, torch 6.2).
    cdef Py_ssize_t rb, r, r0, r1, nb = (R + LN_BLOCK - 1) // LN_BLOCK
    cdef double inv_d = 1.0 / D
    for rb in prange(nb, num_threads=nt, schedule='static'):
        r0 = rb * LN_BLOCK
        r1 = min(R, r0 + LN_BLOCK)
        for r in range(r0, r1):
            mean[r] = _sum(x + r * D, D) * inv_d
        for r in range(r0, r1):
            rstd[r] = _ssd(x + r * D, D, mean[r]) * inv_d + eps
        for r in range(r0, r1):
            rstd[r] = 1.0 / sqrt(rstd[r])
        for r in range(r0, r1):
            if w == NULL:
                _affine(y + r * D, x + r * D, D, mean[r], rstd[r], 0.0)
            else:
                _layernorm_row(y + r * D, x + r * D, w, b, D, mean[r], rstd[r])


cdef void _layernorm_backward(floating* dx, double* part, double* sums, const floating* dy,
                              const floating* x, const floating* w, const double* mean,
                              const double* rstd, Py_ssize_t R, Py_ssize_t D,
                              int nt) noexcept nogil:
    # g = dy * w, xhat = (x - m) * rs:
    #   dx = rs * (g - mean(g) - xhat * mean(g * xhat))   (dx NULL: not wanted)
    #   part[t, 0] += dy * xhat (-> dw), part[t, 1] += dy (-> db), over thread t's rows (part NULL:
    #   no parameter gradient wanted). w is never NULL here (LN-S passes ones).
    # Rows in blocks of LN_BLOCK, sums first then dx (as forward: independent chains to overlap;
    # LayerNorm(32) on (64, 64, 32, 32) at 1 thread: backward 8.1 -> 4.0 ms, torch 3.8); sums
    # (nt, 2, LN_BLOCK) holds a block's sum(g), sum(g * (x - m)).
    cdef Py_ssize_t t, r, r0, r1, lo, hi, chunk = (R + nt - 1) // nt
    cdef double* pw
    cdef double* pb
    cdef double* sg
    cdef double* sgx
    cdef double m, rs, inv_d = 1.0 / D
    for t in prange(nt, num_threads=nt, schedule='static'):
        lo = t * chunk
        hi = min(R, lo + chunk)
        pw = NULL
        pb = NULL
        if part != NULL:
            pw = part + 2 * t * D
            pb = pw + D
        sg = sums + 2 * t * LN_BLOCK
        sgx = sg + LN_BLOCK
        r0 = lo
        while r0 < hi:
            r1 = min(hi, r0 + LN_BLOCK)
            for r in range(r0, r1):
                if pw != NULL:
                    _dsum_w_acc(dy + r * D, w, x + r * D, D, mean[r], rstd[r], pw, pb,
                                sg + (r - r0), sgx + (r - r0))
                elif dx != NULL:
                    _dsum_w(dy + r * D, w, x + r * D, D, mean[r], sg + (r - r0), sgx + (r - r0))
            if dx != NULL:
                for r in range(r0, r1):
                    m = mean[r]
                    rs = rstd[r]
                    _dx_row(dx + r * D, dy + r * D, w, x + r * D, D, m, rs,
                            rs * sg[r - r0] * inv_d, rs * rs * rs * sgx[r - r0] * inv_d)
            r0 = r1


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
    cdef cnp.ndarray sums = np.empty(nt * 2 * LN_BLOCK)
    cdef double* psc = <double*>cnp.PyArray_DATA(sums)
    if dw is not None or db is not None:
        part = np.zeros(nt * 2 * D)
        pp = <double*>cnp.PyArray_DATA(part)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _layernorm_backward(<float*>pdx, pp, psc, <float*>pdy, <float*>px, <float*>pw, pm, pr, R, D, nt)
    else:
        with nogil:
            _layernorm_backward(<double*>pdx, pp, psc, <double*>pdy, <double*>px, <double*>pw, pm, pr, R, D, nt)
    _store_partials(dw, db, pp, nt, D, acc_w, acc_b)


# ================================================================== BatchNorm
cdef enum:
    BN_ROWS = 64          # (N, C) input: rows per block whose statistics are merged (L2-sized)



# (N, C, S) input with small S (S == 1: the (N, C) layout) is a row-major (N, W = C * S) matrix
# whose column j belongs to channel j // S: each channel's values are strided down columns, so
# the kernels below walk whole rows (the inner loop over W contiguous values vectorizes) and
# split the rows over threads. Statistics: per thread, blocks of rows small enough for L2 are
# reduced two-pass per column (mean, then squared deviations) and merged into the thread's
# (mean, M2) with Chan's formula, then the threads merge in thread order and the S columns of a
# channel merge in order of s (same bits at a fixed thread count). Element-wise passes use
# per-column coefficients in the data's precision, the mean split into hi + lo as _affine.
cdef enum:
    BN_COLS_MAX_S = 16        # S up to this uses the column path
    BN_BLOCK_BYTES = 1 << 17  # rows per statistics block: ~this many bytes of x


cdef inline void _cols_stats(double* tm, double* tq, double* bm, double* bq,
                             const floating* x, Py_ssize_t lo, Py_ssize_t hi, Py_ssize_t W,
                             Py_ssize_t B) noexcept nogil:
    """tm, tq (W,) = mean and M2 of each column of x over rows [lo, hi); bm, bq (W,) scratch."""
    cdef Py_ssize_t n, j, r0 = lo, r1
    cdef const floating* xr
    cdef double d, d1, d2, d3, m, k, kq, inv
    for j in range(W):
        tm[j] = 0.0
        tq[j] = 0.0
    while r0 < hi:
        r1 = min(hi, r0 + B)
        for j in range(W):
            bm[j] = 0.0
            bq[j] = 0.0
        # 4 rows per sweep: a quarter of the accumulator loads / stores
        n = r0
        while n + 4 <= r1:
            xr = x + n * W
            for j in range(W):
                bm[j] += (<double>xr[j] + <double>xr[W + j]) + (<double>xr[2 * W + j]
                                                                + <double>xr[3 * W + j])
            n = n + 4
        while n < r1:
            xr = x + n * W
            for j in range(W):
                bm[j] += xr[j]
            n = n + 1
        inv = 1.0 / (r1 - r0)
        for j in range(W):
            bm[j] *= inv
        n = r0
        while n + 4 <= r1:
            xr = x + n * W
            for j in range(W):
                m = bm[j]
                d = xr[j] - m
                d1 = xr[W + j] - m
                d2 = xr[2 * W + j] - m
                d3 = xr[3 * W + j] - m
                bq[j] += (d * d + d1 * d1) + (d2 * d2 + d3 * d3)
            n = n + 4
        while n < r1:
            xr = x + n * W
            for j in range(W):
                d = xr[j] - bm[j]
                bq[j] += d * d
            n = n + 1
        k = <double>(r1 - r0) / (r1 - lo)       # weight of the new block in the merge
        kq = (r0 - lo) * k
        for j in range(W):
            d = bm[j] - tm[j]
            tm[j] += d * k
            tq[j] += bq[j] + d * d * kq
        r0 = r1


cdef inline void _cols_affine(floating* y, const floating* x, const floating* mh,
                              const floating* ml, const floating* sc, const floating* sh,
                              Py_ssize_t W) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(W):
        y[j] = (x[j] - mh[j] - ml[j]) * sc[j] + sh[j]


cdef inline void _cols_dsum(double* pa, double* pq, const floating* dy, const floating* x,
                            const double* cm, Py_ssize_t W) noexcept nogil:
    cdef Py_ssize_t j
    cdef double g
    for j in range(W):
        g = dy[j]
        pa[j] += g
        pq[j] += g * (x[j] - cm[j])


cdef inline void _cols_dsum4(double* pa, double* pq, const floating* dy, const floating* x,
                             const double* cm, Py_ssize_t W) noexcept nogil:
    """_cols_dsum over 4 consecutive rows (a quarter of the accumulator loads / stores)."""
    cdef Py_ssize_t j
    cdef double g0, g1, g2, g3, m
    for j in range(W):
        m = cm[j]
        g0 = dy[j]
        g1 = dy[W + j]
        g2 = dy[2 * W + j]
        g3 = dy[3 * W + j]
        pa[j] += (g0 + g1) + (g2 + g3)
        pq[j] += ((g0 * (x[j] - m) + g1 * (x[W + j] - m))
                  + (g2 * (x[2 * W + j] - m) + g3 * (x[3 * W + j] - m)))


cdef inline void _cols_dx(floating* dx, const floating* dy, const floating* x, const floating* mh,
                          const floating* ml, const floating* k1, const floating* k2,
                          const floating* k3, Py_ssize_t W) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(W):
        dx[j] = dy[j] * k1[j] - k2[j] - (x[j] - mh[j] - ml[j]) * k3[j]


cdef int _bn_cols_forward(floating* y, double* mean, double* rstd, floating* run_mean,
                          floating* run_var, const floating* x, const floating* w,
                          const floating* b, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                          double eps, double factor, bint batch_stats, int nt) noexcept nogil:
    """The column path of _batchnorm_forward (same contract); -1 when out of memory."""
    cdef Py_ssize_t W = C * S, M = N * S, t, j, c, s, n, lo, hi, chunk = (N + nt - 1) // nt
    cdef Py_ssize_t B = BN_BLOCK_BYTES // (W * <Py_ssize_t>sizeof(floating))
    cdef double* st = NULL
    cdef double* tm
    cdef double* tq
    cdef double d, f, na, nb, m, q, var, scl
    cdef floating* co = <floating*>fm_malloc(4 * W * sizeof(floating))
    if co == NULL:
        return -1
    if B < 1:
        B = 1
    if batch_stats:
        st = <double*>fm_malloc(4 * nt * W * sizeof(double))
        if st == NULL:
            free(co)
            return -1
        for t in prange(nt, num_threads=nt, schedule='static'):
            lo = min(N, t * chunk)
            hi = min(N, lo + chunk)
            _cols_stats(st + 4 * t * W, st + (4 * t + 1) * W, st + (4 * t + 2) * W,
                        st + (4 * t + 3) * W, x, lo, hi, W, B)
        # merge the threads in order into thread 0's (mean, M2)
        tm = st
        tq = st + W
        for t in range(1, nt):
            na = <double>min(N, t * chunk)
            nb = <double>(min(N, (t + 1) * chunk) - min(N, t * chunk))
            if nb <= 0:
                continue
            f = nb / (na + nb)
            for j in range(W):
                d = st[4 * t * W + j] - tm[j]
                tm[j] += d * f
                tq[j] += st[(4 * t + 1) * W + j] + d * d * na * f
        for c in range(C):
            m = tm[c * S]
            q = tq[c * S]
            for s in range(1, S):
                f = 1.0 / (s + 1)
                d = tm[c * S + s] - m
                m += d * f
                q += tq[c * S + s] + d * d * (s * N) * f
            var = q / M
            mean[c] = m
            rstd[c] = 1.0 / sqrt(var + eps)
            if run_mean != NULL:
                run_mean[c] = <floating>((1.0 - factor) * run_mean[c] + factor * m)
                run_var[c] = <floating>((1.0 - factor) * run_var[c] + factor * var * M / (M - 1))
        free(st)
    else:
        for c in range(C):
            mean[c] = run_mean[c]
            rstd[c] = 1.0 / sqrt(<double>run_var[c] + eps)
    for c in range(C):
        scl = rstd[c] * (w[c] if w != NULL else 1.0)
        for s in range(S):
            j = c * S + s
            co[j] = <floating>mean[c]
            co[W + j] = <floating>(mean[c] - co[j])
            co[2 * W + j] = <floating>scl
            co[3 * W + j] = <floating>(b[c] if b != NULL else 0.0)
    for t in prange(nt, num_threads=nt, schedule='static'):
        lo = min(N, t * chunk)
        hi = min(N, lo + chunk)
        for n in range(lo, hi):
            _cols_affine(y + n * W, x + n * W, co, co + W, co + 2 * W, co + 3 * W, W)
    free(co)
    return 0


cdef int _bn_cols_backward(floating* dx, double* work, const floating* dy, const floating* x,
                           const floating* w, const double* mean, const double* rstd,
                           Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, bint batch_stats,
                           int nt) noexcept nogil:
    """The column path of _batchnorm_backward (same contract); -1 when out of memory."""
    cdef Py_ssize_t W = C * S, t, j, c, s, n, lo, hi, chunk = (N + nt - 1) // nt
    cdef double M = <double>(N * S)
    cdef double a1, a2, a3
    cdef double* part = <double*>fm_malloc((2 * nt + 1) * W * sizeof(double))
    cdef double* cm
    cdef floating* co
    if part == NULL:
        return -1
    co = <floating*>fm_malloc(5 * W * sizeof(floating))
    if co == NULL:
        free(part)
        return -1
    cm = part + 2 * nt * W
    for c in range(C):
        for s in range(S):
            cm[c * S + s] = mean[c]
    for t in prange(nt, num_threads=nt, schedule='static'):
        lo = min(N, t * chunk)
        hi = min(N, lo + chunk)
        for j in range(2 * W):
            part[2 * t * W + j] = 0.0
        n = lo
        while n + 4 <= hi:
            _cols_dsum4(part + 2 * t * W, part + (2 * t + 1) * W, dy + n * W, x + n * W, cm, W)
            n = n + 4
        while n < hi:
            _cols_dsum(part + 2 * t * W, part + (2 * t + 1) * W, dy + n * W, x + n * W, cm, W)
            n = n + 1
    for t in range(1, nt):
        for j in range(2 * W):
            part[j] += part[2 * t * W + j]
    for c in range(C):
        a1 = 0.0
        a2 = 0.0
        for s in range(S):
            a1 += part[c * S + s]
            a2 += part[W + c * S + s]
        work[c] = a1
        work[C + c] = a2
    if dx != NULL:
        for c in range(C):
            a1 = rstd[c] * (w[c] if w != NULL else 1.0)
            a2 = 0.0
            a3 = 0.0
            if batch_stats:
                a2 = a1 * work[c] / M
                a3 = a1 * rstd[c] * rstd[c] * work[C + c] / M
            for s in range(S):
                j = c * S + s
                co[j] = <floating>mean[c]
                co[W + j] = <floating>(mean[c] - co[j])
                co[2 * W + j] = <floating>a1
                co[3 * W + j] = <floating>a2
                co[4 * W + j] = <floating>a3
        for t in prange(nt, num_threads=nt, schedule='static'):
            lo = min(N, t * chunk)
            hi = min(N, lo + chunk)
            for n in range(lo, hi):
                _cols_dx(dx + n * W, dy + n * W, x + n * W, co, co + W, co + 2 * W, co + 3 * W,
                         co + 4 * W, W)
    free(co)
    free(part)
    return 0


cdef void _batchnorm_forward(floating* y, double* mean, double* rstd, double* work,
                             floating* run_mean, floating* run_var, const floating* x,
                             const floating* w, const floating* b, Py_ssize_t N, Py_ssize_t C,
                             Py_ssize_t S, double eps, double factor, bint batch_stats,
                             int nt) noexcept nogil:
    # batch_stats: mean/var over (N, S) per channel (biased var in rstd, unbiased into run_var:
    # run = (1 - factor) * run + factor * stat when run_mean is not NULL); else the running stats.
    # Threads own blocks of channels and walk x in memory order within their block. Statistics
    # come from blocks small enough for the cache (one (n, c) row of S values, or BN_ROWS rows
    # of an (N, C) input), two-pass within a block and merged over blocks in order with Chan et
    # al.'s formula: x is read once from memory for the statistics and once to normalize.
    # work (4, C): the blocks' mean and M2, then the per-channel scale and shift.
    cdef Py_ssize_t t, n, c, c0, c1, r0, r1, cb = (C + nt - 1) // nt
    cdef Py_ssize_t M = N * S
    cdef double bm, bq, d, k, var
    cdef const floating* xb
    cdef double* wm = work
    cdef double* wq = work + C
    cdef double* sc = work + 2 * C
    cdef double* sh = work + 3 * C
    for t in prange(nt, num_threads=nt, schedule='static'):
        c0 = t * cb
        c1 = min(C, c0 + cb)
        if batch_stats:
            # mean[c] holds the merged mean, rstd[c] the merged M2 (sum of squared deviations)
            for c in range(c0, c1):
                mean[c] = 0.0
                rstd[c] = 0.0
            if S == 1:
                r0 = 0
                while r0 < N:
                    r1 = min(N, r0 + BN_ROWS)
                    for c in range(c0, c1):
                        wm[c] = 0.0
                        wq[c] = 0.0
                    for n in range(r0, r1):
                        for c in range(c0, c1):
                            wm[c] += x[n * C + c]
                    for c in range(c0, c1):
                        wm[c] /= (r1 - r0)
                    for n in range(r0, r1):
                        for c in range(c0, c1):
                            d = x[n * C + c] - wm[c]
                            wq[c] += d * d
                    k = <double>(r1 - r0) / r1        # weight of the new block in the merge
                    for c in range(c0, c1):
                        d = wm[c] - mean[c]
                        mean[c] += d * k
                        rstd[c] += wq[c] + d * d * r0 * k
                    r0 = r1
            else:
                for n in range(N):
                    k = 1.0 / (n + 1)
                    for c in range(c0, c1):
                        xb = x + (n * C + c) * S
                        bm = _sum(xb, S) / S
                        bq = _ssd(xb, S, bm)
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
        for c in range(c0, c1):
            sc[c] = rstd[c] * (w[c] if w != NULL else 1.0)
            sh[c] = b[c] if b != NULL else 0.0
        if S == 1:
            for n in range(N):
                for c in range(c0, c1):
                    y[n * C + c] = <floating>((x[n * C + c] - mean[c]) * sc[c] + sh[c])
        else:
            for n in range(N):
                for c in range(c0, c1):
                    _affine(y + (n * C + c) * S, x + (n * C + c) * S, S, mean[c], sc[c], sh[c])


cdef void _batchnorm_backward(floating* dx, double* work, const floating* dy, const floating* x,
                              const floating* w, const double* mean, const double* rstd,
                              Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, bint batch_stats,
                              int nt) noexcept nogil:
    # work (5, C): sum(dy), sum(dy * (x - mean)) over (N, S) (-> db, dw / rstd), then the
    # per-channel coefficients of dx = k1 dy - k2 - (x - mean) k3:
    # batch_stats: dx = w rs (dy - mean(dy) - xhat mean(dy xhat)); else (eval, fixed running
    # statistics: a per-channel affine map) dx = w rs dy.
    cdef Py_ssize_t t, n, c, c0, c1, p, cb = (C + nt - 1) // nt
    cdef double M = <double>(N * S)
    cdef double a, q
    cdef double* sdy = work
    cdef double* sdx = work + C
    cdef double* k1 = work + 2 * C
    cdef double* k2 = work + 3 * C
    cdef double* k3 = work + 4 * C
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
                    a = 0.0             # assigned here so that prange makes a, q thread-private
                    q = 0.0
                    _dsum(dy + p, x + p, S, mean[c], &a, &q)
                    sdy[c] += a
                    sdx[c] += q
        if dx != NULL:
            for c in range(c0, c1):
                k1[c] = rstd[c] * (w[c] if w != NULL else 1.0)
                k2[c] = 0.0
                k3[c] = 0.0
                if batch_stats:
                    k2[c] = k1[c] * sdy[c] / M
                    k3[c] = k1[c] * rstd[c] * rstd[c] * sdx[c] / M
            if S == 1:
                for n in range(N):
                    for c in range(c0, c1):
                        p = n * C + c
                        dx[p] = <floating>(k1[c] * dy[p] - k2[c] - (x[p] - mean[c]) * k3[c])
            else:
                for n in range(N):
                    for c in range(c0, c1):
                        p = (n * C + c) * S
                        _dx_row(dx + p, dy + p, <const floating*>NULL, x + p, S, mean[c],
                                k1[c], k2[c], k3[c])


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
    cdef int nt, rc = 0
    if S <= BN_COLS_MAX_S:
        nt = _nt(N, N * C * S)
        with nogil:
            if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
                rc = _bn_cols_forward(<float*>py, pm, pr, <float*>prm, <float*>prv, <float*>px,
                                      <float*>pw, <float*>pb, N, C, S, eps, factor, batch_stats, nt)
            else:
                rc = _bn_cols_forward(<double*>py, pm, pr, <double*>prm, <double*>prv,
                                      <double*>px, <double*>pw, <double*>pb, N, C, S, eps,
                                      factor, batch_stats, nt)
        if rc != 0:
            raise MemoryError("batchnorm_forward: out of memory")
        return
    nt = _nt(C, N * C * S)
    cdef cnp.ndarray work = np.empty(4 * C)
    cdef double* pk = <double*>cnp.PyArray_DATA(work)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _batchnorm_forward(<float*>py, pm, pr, pk, <float*>prm, <float*>prv, <float*>px,
                               <float*>pw, <float*>pb, N, C, S, eps, factor, batch_stats, nt)
    else:
        with nogil:
            _batchnorm_forward(<double*>py, pm, pr, pk, <double*>prm, <double*>prv, <double*>px,
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
    cdef int nt, rc = 0
    cdef cnp.ndarray sums = np.empty(5 * C)
    cdef double* ps = <double*>cnp.PyArray_DATA(sums)
    cdef Py_ssize_t c
    if S <= BN_COLS_MAX_S:
        nt = _nt(N, N * C * S)
        with nogil:
            if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
                rc = _bn_cols_backward(<float*>pdx, ps, <float*>pdy, <float*>px, <float*>pw,
                                       pm, pr, N, C, S, batch_stats, nt)
            else:
                rc = _bn_cols_backward(<double*>pdx, ps, <double*>pdy, <double*>px, <double*>pw,
                                       pm, pr, N, C, S, batch_stats, nt)
        if rc != 0:
            raise MemoryError("batchnorm_backward: out of memory")
    else:
        nt = _nt(C, N * C * S)
        if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
            with nogil:
                _batchnorm_backward(<float*>pdx, ps, <float*>pdy, <float*>px, <float*>pw, pm,
                                    pr, N, C, S, batch_stats, nt)
        else:
            with nogil:
                _batchnorm_backward(<double*>pdx, ps, <double*>pdy, <double*>px, <double*>pw,
                                    pm, pr, N, C, S, batch_stats, nt)
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
        g = i - n * G
        xb = x + i * M
        m = _sum(xb, M) / M
        rs = 1.0 / sqrt(_ssd(xb, M, m) / M + eps)
        mean[i] = m
        rstd[i] = rs
        if S == 1:                      # (N, C) input: the group is a LayerNorm row
            if w == NULL:
                _affine(y + i * M, xb, M, m, rs, 0.0)
            else:
                _layernorm_row(y + i * M, xb, w + g * cg, b + g * cg if b != NULL else NULL,
                               M, m, rs)
        else:
            for c in range(g * cg, (g + 1) * cg):
                sc = rs * (w[c] if w != NULL else 1.0)
                sh = b[c] if b != NULL else 0.0
                _affine(y + (n * C + c) * S, x + (n * C + c) * S, S, m, sc, sh)


cdef void _groupnorm_backward(floating* dx, double* part, const floating* dy, const floating* x,
                              const floating* w, const double* mean, const double* rstd,
                              Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t G,
                              int nt) noexcept nogil:
    # Thread t owns a contiguous range of the (n, g) blocks and adds into its partials
    # part[t, 0, c] += sum_s dy * xhat (-> dw) and part[t, 1, c] += sum_s dy (-> db) (part NULL:
    # no parameter gradient wanted). g_c = dy * w[c]:
    #   dx = rs * (g - mean(g) - xhat * mean(g * xhat)) over the group (dx NULL: not wanted).
    cdef Py_ssize_t t, i, lo, hi, n, g, c, p, cg = C // G, M = cg * S
    cdef Py_ssize_t chunk = (N * G + nt - 1) // nt
    cdef double m, rs, a, q, s1, s2, k2, k3, wc
    cdef double* pw
    cdef double* pb
    for t in prange(nt, num_threads=nt, schedule='static'):
        lo = t * chunk
        hi = min(N * G, lo + chunk)
        pw = NULL
        pb = NULL
        if part != NULL:
            pw = part + 2 * t * C
            pb = pw + C
        for i in range(lo, hi):
            n = i // G
            g = i - n * G
            m = mean[i]
            rs = rstd[i]
            s1 = 0.0                    # assigned here so that prange makes them thread-private
            s2 = 0.0
            a = 0.0
            q = 0.0
            if S == 1:                  # (N, C) input: the group is a row segment of cg values
                p = n * C + g * cg
                if pw != NULL:
                    for c in range(cg):
                        pw[g * cg + c] += dy[p + c] * ((x[p + c] - m) * rs)
                        pb[g * cg + c] += dy[p + c]
                if dx != NULL:
                    if w != NULL:
                        _dsum_w(dy + p, w + g * cg, x + p, cg, m, &s1, &s2)
                    else:
                        _dsum(dy + p, x + p, cg, m, &s1, &s2)
                    _dx_row(dx + p, dy + p, w + g * cg if w != NULL else NULL, x + p, cg, m, rs,
                            rs * s1 / M, rs * rs * rs * s2 / M)
            else:
                for c in range(g * cg, (g + 1) * cg):
                    p = (n * C + c) * S
                    _dsum(dy + p, x + p, S, m, &a, &q)
                    if pw != NULL:
                        pw[c] += q * rs
                        pb[c] += a
                    wc = w[c] if w != NULL else 1.0
                    s1 = s1 + wc * a
                    s2 = s2 + wc * q
                if dx != NULL:
                    k2 = rs * s1 / M
                    k3 = rs * rs * rs * s2 / M
                    for c in range(g * cg, (g + 1) * cg):
                        p = (n * C + c) * S
                        _dx_row(dx + p, dy + p, <const floating*>NULL, x + p, S, m,
                                rs * (w[c] if w != NULL else 1.0), k2, k3)


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
    cdef cnp.ndarray part = None
    cdef double* pp = NULL
    if dw is not None or db is not None:
        part = np.zeros(nt * 2 * C)
        pp = <double*>cnp.PyArray_DATA(part)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _groupnorm_backward(<float*>pdx, pp, <float*>pdy, <float*>px, <float*>pw, pm, pr,
                                N, C, S, G, nt)
    else:
        with nogil:
            _groupnorm_backward(<double*>pdx, pp, <double*>pdy, <double*>px, <double*>pw, pm, pr,
                                N, C, S, G, nt)
    _store_partials(dw, db, pp, nt, C, acc_w, acc_b)


# ================================================================== helpers
cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _store_partials(object dw, object db, double* part, int nt, Py_ssize_t n, bint acc_w,
                          bint acc_b):
    """part (nt, 2, n): sum over threads in thread order (the same bits every call at a fixed
    thread count), then dw (=/+=) part[:, 0], db (=/+=) part[:, 1]."""
    cdef Py_ssize_t t, j
    if part == NULL:
        return
    with nogil:
        for t in range(1, nt):
            for j in range(2 * n):
                part[j] += part[2 * t * n + j]
    _store_any(dw, part, n, acc_w)
    _store_any(db, part + n, n, acc_b)


cdef void _store_any(object g, double* v, Py_ssize_t n, bint acc):
    """g (n,) float32/float64 array or None: g = v, or g += v when acc."""
    if g is None:
        return
    cdef void* pg = cnp.PyArray_DATA(<cnp.ndarray>g)
    if cnp.PyArray_TYPE(<cnp.ndarray>g) == cnp.NPY_FLOAT32:
        _store(<float*>pg, v, n, acc)
    else:
        _store(<double*>pg, v, n, acc)
