# cython: language_level=3
"""Scaled dot-product attention, forward and backward: softmax(Q K^T * scale + mask) V per
(batch, head), with a fused, stable row softmax and optional dropout on the probabilities.

Legend: N = batch, H = heads, T = query length, S = key length, D = head dim.
Layouts (row-major, one dtype): head h of batch n reads Q rows q + n*T*ldq + h*D (T rows of D,
stride ldq), K rows k + n*S*ldk + h*D, V rows v + n*S*ldv + h*D, and writes O rows
out + n*T*ldo + h*D. With ldq = ldk = ldv = 3E these are the column blocks of the packed
(N, T, 3E) in-projection output, and with ldo = E the output is already the (N, T, E)
concatenation of the heads: no head split/merge copies. The gradients dq, dk, dv use the
layouts of q, k, v.

P (N, H, T, S) keeps the softmax probabilities for backward (NULL: inference, the scores live
in a per-thread (T, S) scratch). Masks are additive, in the data's dtype: amask (T, S) shared
(amask_stride 0) or one per (batch, head) (stride T*S); kpm (N, S) per batch (key padding);
causal allows key s for query t only when s <= t. A row whose keys are all masked gets zero
probabilities (torch gives NaN there).

Dropout (training): each probability is kept with prob. 1 - p and scaled by 1/(1 - p). The keep
decision is a hash of (seed, n, h, t, s) (splitmix64), so backward regenerates the same mask
instead of storing a second (N, H, T, S) array, and it does not depend on the thread count.

The prange runs over the N*H (batch, head) pairs; each thread calls the single-threaded gemm
and owns its (T, S) scratch blocks (allocated by the def wrapper, indexed by thread id), so every output block is written by exactly one thread and results are
bit-identical at any thread count.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange, parallel, threadid
from libc.math cimport exp, INFINITY
from libc.stdint cimport uint64_t
from libc.stdlib cimport free

from fastmod._kernels._alloc cimport fm_malloc
from fastmod._kernels._blas cimport gemm
from fastmod._kernels._threads cimport num_threads, threads_for

import numpy as np

cnp.import_array()

cdef Py_ssize_t GRAIN = 1 << 16          # multiply-adds per thread before a 2nd thread pays off

# float32 row helpers (max, exp + sum, dot; sums in double): vector kernels in
# simd/fm_softmax.h, compiled per instruction set.
# float32 at the vector levels: the two per-head products through fastmod's register-blocked
# GEMM kernel (simd/fm_pgemm.h) instead of BLAS calls (a 64 x 64 x 32 sgemm is mostly call and
# packing overhead: transformer_b16's attention core ran at 94 GFLOP/s, 716 us a layer)
cdef extern from "fm_pgemm.h":
    int FM_LEVEL
    int fm_pgemm_panel_cols(int OUT) noexcept nogil
    Py_ssize_t fm_pgemm_ws_size(int IN, int OUT, int panels) noexcept nogil
    void fm_pgemm_nn(float* y, Py_ssize_t ldy, const float* a, Py_ssize_t ars, Py_ssize_t aks,
                     const float* b, Py_ssize_t ldb, int K, int NC, int m0, int m1, int p0,
                     int p1, int beta, float* ws) noexcept nogil

cdef extern from "fm_conv.h":
    void fm_transpose_add(float* dst, Py_ssize_t ldd, const float* src, Py_ssize_t lds,
                          int rows, int cols, const float* bias, int acc, int relu) noexcept nogil


cdef inline Py_ssize_t _own_size(int S, int D) noexcept nogil:
    # floats of a thread's scratch for _own_products: K_h^T (D, S) and the two GEMMs' slabs
    cdef int ps = fm_pgemm_panel_cols(S), pd = fm_pgemm_panel_cols(D)
    return ((<Py_ssize_t>D * S + 15) // 16 * 16
            + (fm_pgemm_ws_size(D, S, (S + ps - 1) // ps) + 15) // 16 * 16
            + fm_pgemm_ws_size(S, D, (D + pd - 1) // pd))


cdef inline void _own_scores(float* pp, const float* qh, int ldq, const float* kh, int ldk,
                             int T, int S, int D, float scale, float* own) noexcept nogil:
    # pp (T, S) = Q_h (T, D) @ (scale K_h^T) (D, S): K_h transposed and scaled into own first
    cdef float* kt = own
    cdef float* ws = own + (<Py_ssize_t>D * S + 15) // 16 * 16
    cdef int ps = fm_pgemm_panel_cols(S)
    cdef Py_ssize_t i
    fm_transpose_add(kt, S, kh, ldk, S, D, NULL, 0, 0)
    for i in range(<Py_ssize_t>D * S):
        kt[i] = kt[i] * scale
    fm_pgemm_nn(pp, S, qh, ldq, 1, kt, S, D, S, 0, T, 0, (S + ps - 1) // ps, 0, ws)


cdef inline void _own_context(float* oh, int ldo, const float* pd, const float* vh, int ldv,
                              int T, int S, int D, float* own) noexcept nogil:
    # O_h (T, D) = P (T, S) @ V_h (S, D), V_h read row by row (its slabs copied)
    cdef int ps = fm_pgemm_panel_cols(S), pdc = fm_pgemm_panel_cols(D)
    cdef float* ws = own + (<Py_ssize_t>D * S + 15) // 16 * 16 \
        + (fm_pgemm_ws_size(D, S, (S + ps - 1) // ps) + 15) // 16 * 16
    fm_pgemm_nn(oh, ldo, pd, S, 1, vh, ldv, S, D, 0, T, 0, (D + pdc - 1) // pdc, 0, ws)


cdef extern from "fm_softmax.h":
    float fm_rowmax_f32(const float* p, Py_ssize_t n) noexcept nogil
    double fm_expsum_f32(float* p, Py_ssize_t n, float m) noexcept nogil
    double fm_dot_f32(const float* a, const float* b, Py_ssize_t n) noexcept nogil


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    """splitmix64's finalizer: a counter -> 64 well-mixed bits."""
    x = (x ^ (x >> 30)) * <uint64_t>0xBF58476D1CE4E5B9ULL
    x = (x ^ (x >> 27)) * <uint64_t>0x94D049BB133111EBULL
    return x ^ (x >> 31)


cdef inline void _dropout_row(floating* pd, const floating* p, Py_ssize_t S, uint64_t seed,
                              uint64_t base, uint64_t thr, floating inv_keep) noexcept nogil:
    """pd[s] = p[s] * keep(s) / (1 - p_drop); keep(s) = hash(seed, base + s) >= thr."""
    cdef Py_ssize_t s
    for s in range(S):
        if (_mix(seed + (base + <uint64_t>s) * <uint64_t>0x9E3779B97F4A7C15ULL) >> 32) >= thr:
            pd[s] = p[s] * inv_keep
        else:
            pd[s] = 0


cdef inline void _softmax_row(floating* p, const floating* am, const floating* km,
                              Py_ssize_t S, Py_ssize_t valid) noexcept nogil:
    """p[:valid] (scaled scores) += masks, then stable softmax in place; p[valid:] = 0."""
    cdef Py_ssize_t s
    cdef floating m = -INFINITY, e
    cdef double tot = 0
    if am != NULL:
        for s in range(valid):
            p[s] = p[s] + am[s]
    if km != NULL:
        for s in range(valid):
            p[s] = p[s] + km[s]
    if floating is float:
        m = fm_rowmax_f32(p, valid)
    else:
        for s in range(valid):
            if p[s] > m:
                m = p[s]
    if m == -INFINITY:                  # every key masked: no attention at all
        valid = 0
    else:
        if floating is float:
            tot = fm_expsum_f32(p, valid, m)
        else:
            for s in range(valid):
                e = exp(p[s] - m)
                p[s] = e
                tot += e
        e = <floating>(1.0 / tot)
        for s in range(valid):
            p[s] = p[s] * e
    for s in range(valid, S):
        p[s] = 0


cdef void _attention_forward(floating* out, floating* P,
                             const floating* q, const floating* k, const floating* v,
                             const floating* amask, Py_ssize_t amask_stride, const floating* kpm,
                             int N, int H, int T, int S, int D,
                             int ldq, int ldk, int ldv, int ldo, floating scale, bint causal,
                             double drop_p, uint64_t seed, floating* work,
                             Py_ssize_t work_stride, int max_threads) noexcept nogil:
    cdef Py_ssize_t NH = <Py_ssize_t>N * H, TS = <Py_ssize_t>T * S
    cdef Py_ssize_t bh, n, h, t
    cdef int nt = threads_for(NH * TS * D, GRAIN)
    cdef bint drop = drop_p > 0
    cdef uint64_t thr = <uint64_t>(drop_p * 4294967296.0)
    cdef floating inv_keep = <floating>(1.0 / (1.0 - drop_p)) if drop else 1
    cdef floating* scratch = NULL
    cdef floating* pp
    cdef floating* pd
    cdef float* own_all = NULL
    cdef float* own = NULL
    cdef Py_ssize_t own_stride = 0
    if nt > NH:
        nt = <int>NH
    if nt > max_threads:
        nt = max_threads
    if floating is float and FM_LEVEL >= 1:
        own_stride = (_own_size(S, D) + 15) // 16 * 16
        own_all = <float*>fm_malloc(nt * own_stride * sizeof(float))   # NULL: BLAS instead
    with parallel(num_threads=nt):
        # this thread's (T, S) blocks: the scores when P is not kept, the dropped-out probabilities
        scratch = work + threadid() * work_stride
        own = own_all + threadid() * own_stride if own_all != NULL else NULL
        for bh in prange(NH, schedule='static'):
            n = bh // H
            h = bh % H
            pp = P + bh * TS if P != NULL else scratch
            # scores (T, S) = scale * Q_h (T, D) @ K_h^T (D, S)
            if floating is float:
                if own != NULL:
                    _own_scores(pp, q + n * T * ldq + h * D, ldq, k + n * S * ldk + h * D, ldk,
                                T, S, D, scale, own)
                else:
                    gemm(False, True, T, S, D, scale, q + n * T * ldq + h * D, ldq,
                         k + n * S * ldk + h * D, ldk, <floating>0, pp, S)
            else:
                gemm(False, True, T, S, D, scale, q + n * T * ldq + h * D, ldq,
                     k + n * S * ldk + h * D, ldk, <floating>0, pp, S)
            for t in range(T):
                _softmax_row(pp + t * S,
                             amask + bh * amask_stride + t * S if amask != NULL else NULL,
                             kpm + n * S if kpm != NULL else NULL,
                             S, min(t + 1, S) if causal else S)
            pd = pp
            if drop:
                pd = scratch + (TS if P == NULL else 0)
                for t in range(T):
                    _dropout_row(pd + t * S, pp + t * S, S, seed, <uint64_t>(bh * TS + t * S),
                                 thr, inv_keep)
            # O_h (T, D) = P (T, S) @ V_h (S, D), written into the heads' concatenation
            if floating is float:
                if own != NULL:
                    _own_context(out + n * T * ldo + h * D, ldo, pd, v + n * S * ldv + h * D,
                                 ldv, T, S, D, own)
                else:
                    gemm(False, False, T, D, S, <floating>1, pd, S, v + n * S * ldv + h * D,
                         ldv, <floating>0, out + n * T * ldo + h * D, ldo)
            else:
                gemm(False, False, T, D, S, <floating>1, pd, S, v + n * S * ldv + h * D, ldv,
                     <floating>0, out + n * T * ldo + h * D, ldo)
    free(own_all)


cdef void _attention_backward(floating* dq, floating* dk, floating* dv, const floating* dout,
                              const floating* P, const floating* q, const floating* k,
                              const floating* v, int N, int H, int T, int S, int D,
                              int ldq, int ldk, int ldv, int ldo, floating scale,
                              double drop_p, uint64_t seed, floating* work,
                              Py_ssize_t work_stride, int max_threads) noexcept nogil:
    cdef Py_ssize_t NH = <Py_ssize_t>N * H, TS = <Py_ssize_t>T * S
    cdef Py_ssize_t bh, n, h, t, s
    cdef int nt = threads_for(NH * TS * D, GRAIN)
    cdef bint drop = drop_p > 0
    cdef uint64_t thr = <uint64_t>(drop_p * 4294967296.0)
    cdef floating inv_keep = <floating>(1.0 / (1.0 - drop_p)) if drop else 1
    cdef floating* scratch = NULL
    cdef floating* dp
    cdef floating* pd
    cdef floating* row
    cdef const floating* pp
    cdef const floating* prow
    cdef const floating* dop
    cdef double dot
    if nt > NH:
        nt = <int>NH
    if nt > max_threads:
        nt = max_threads
    with parallel(num_threads=nt):
        scratch = work + threadid() * work_stride      # this thread's dP (and dropout) blocks
        for bh in prange(NH, schedule='static'):
            n = bh // H
            h = bh % H
            pp = P + bh * TS
            dop = dout + n * T * ldo + h * D
            dp = scratch
            pd = <floating*>pp
            if drop:
                pd = scratch + TS
                for t in range(T):
                    _dropout_row(pd + t * S, pp + t * S, S, seed, <uint64_t>(bh * TS + t * S),
                                 thr, inv_keep)
            # dV_h (S, D) = Pd^T (S, T) @ dO_h (T, D)
            gemm(True, False, S, D, T, <floating>1, pd, S, dop, ldo, <floating>0,
                 dv + n * S * ldv + h * D, ldv)
            # dPd (T, S) = dO_h (T, D) @ V_h^T (D, S)
            gemm(False, True, T, S, D, <floating>1, dop, ldo, v + n * S * ldv + h * D, ldv,
                 <floating>0, dp, S)
            for t in range(T):
                row = dp + t * S
                prow = pp + t * S
                if drop:
                    # dP = dPd * keep / (1 - p): pd is zero exactly where dropped (or p = 0)
                    for s in range(S):
                        if pd[t * S + s] == 0:
                            row[s] = 0
                        else:
                            row[s] = row[s] * inv_keep
                # softmax backward: dS = P * (dP - sum(dP * P)), the sum in double
                if floating is float:
                    dot = fm_dot_f32(row, prow, S)
                else:
                    dot = 0
                    for s in range(S):
                        dot = dot + row[s] * prow[s]
                for s in range(S):
                    row[s] = prow[s] * <floating>(row[s] - dot)
            # dQ_h (T, D) = scale * dS (T, S) @ K_h (S, D)
            gemm(False, False, T, D, S, scale, dp, S, k + n * S * ldk + h * D, ldk,
                 <floating>0, dq + n * T * ldq + h * D, ldq)
            # dK_h (S, D) = scale * dS^T (S, T) @ Q_h (T, D)
            gemm(True, False, S, D, T, scale, dp, S, q + n * T * ldq + h * D, ldq,
                 <floating>0, dk + n * S * ldk + h * D, ldk)


cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef object _scratch(int blocks, Py_ssize_t TS, int nthreads, cnp.ndarray like):
    """(nthreads * blocks * TS,) scratch of like's dtype, or None when no block is needed.
    Allocated here (not malloc'd inside the kernel) so that running out of memory is a
    MemoryError, never a NULL pointer in a thread."""
    if blocks == 0:
        return None
    return np.empty(<Py_ssize_t>nthreads * blocks * TS, dtype=like.dtype)


def attention_forward(cnp.ndarray out, object P, cnp.ndarray q, cnp.ndarray k, cnp.ndarray v,
                      object amask, Py_ssize_t amask_stride, object kpm,
                      int N, int H, int T, int S, int D, int ldq, int ldk, int ldv, int ldo,
                      double scale, bint causal, double drop_p, uint64_t seed):
    """out = softmax(scale * Q K^T + masks) V per (batch, head); P (N, H, T, S) keeps the
    probabilities (None: not kept). q, k, v, out may be views into larger arrays: pass the
    arrays whose data pointer is the first element, with their row strides ld*."""
    cdef Py_ssize_t TS = <Py_ssize_t>T * S
    cdef int nthreads = num_threads()
    # per thread: a (T, S) block for the scores when P is not kept, one for dropout
    cdef int blocks = (1 if P is None else 0) + (1 if drop_p > 0 else 0)
    work = _scratch(blocks, TS, nthreads, q)
    cdef void* pw = _ptr(work)
    cdef Py_ssize_t ws = blocks * TS
    cdef void* po = cnp.PyArray_DATA(out)
    cdef void* pP = _ptr(P)
    cdef void* pq = cnp.PyArray_DATA(q)
    cdef void* pk = cnp.PyArray_DATA(k)
    cdef void* pv = cnp.PyArray_DATA(v)
    cdef void* pam = _ptr(amask)
    cdef void* pkm = _ptr(kpm)
    if cnp.PyArray_TYPE(q) == cnp.NPY_FLOAT32:
        with nogil:
            _attention_forward(<float*>po, <float*>pP, <float*>pq, <float*>pk, <float*>pv,
                               <float*>pam, amask_stride, <float*>pkm, N, H, T, S, D,
                               ldq, ldk, ldv, ldo, <float>scale, causal, drop_p, seed,
                               <float*>pw, ws, nthreads)
    else:
        with nogil:
            _attention_forward(<double*>po, <double*>pP, <double*>pq, <double*>pk, <double*>pv,
                               <double*>pam, amask_stride, <double*>pkm, N, H, T, S, D,
                               ldq, ldk, ldv, ldo, scale, causal, drop_p, seed,
                               <double*>pw, ws, nthreads)


def attention_backward(cnp.ndarray dq, cnp.ndarray dk, cnp.ndarray dv, cnp.ndarray dout,
                       cnp.ndarray P, cnp.ndarray q, cnp.ndarray k, cnp.ndarray v,
                       int N, int H, int T, int S, int D, int ldq, int ldk, int ldv, int ldo,
                       double scale, double drop_p, uint64_t seed):
    """dq, dk, dv (layouts of q, k, v; overwritten) from dout (layout of out) and the saved P."""
    cdef Py_ssize_t TS = <Py_ssize_t>T * S
    cdef int nthreads = num_threads()
    # per thread: a (T, S) block for dP, one for the dropped-out probabilities
    cdef int blocks = 1 + (1 if drop_p > 0 else 0)
    work = _scratch(blocks, TS, nthreads, q)
    cdef void* pw = _ptr(work)
    cdef Py_ssize_t ws = blocks * TS
    cdef void* pdq = cnp.PyArray_DATA(dq)
    cdef void* pdk = cnp.PyArray_DATA(dk)
    cdef void* pdv = cnp.PyArray_DATA(dv)
    cdef void* pdo = cnp.PyArray_DATA(dout)
    cdef void* pP = cnp.PyArray_DATA(P)
    cdef void* pq = cnp.PyArray_DATA(q)
    cdef void* pk = cnp.PyArray_DATA(k)
    cdef void* pv = cnp.PyArray_DATA(v)
    if cnp.PyArray_TYPE(q) == cnp.NPY_FLOAT32:
        with nogil:
            _attention_backward(<float*>pdq, <float*>pdk, <float*>pdv, <float*>pdo, <float*>pP,
                                <float*>pq, <float*>pk, <float*>pv, N, H, T, S, D,
                                ldq, ldk, ldv, ldo, <float>scale, drop_p, seed,
                                <float*>pw, ws, nthreads)
    else:
        with nogil:
            _attention_backward(<double*>pdq, <double*>pdk, <double*>pdv, <double*>pdo,
                                <double*>pP, <double*>pq, <double*>pk, <double*>pv, N, H, T, S, D,
                                ldq, ldk, ldv, ldo, scale, drop_p, seed,
                                <double*>pw, ws, nthreads)
