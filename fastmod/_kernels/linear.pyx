# cython: language_level=3
"""Linear (the seed's MM_{W,b}) forward and backward on BLAS.

Legend: N = rows (batch, flattened leading dims), IN = in_features, OUT = out_features.
Layouts (row-major, C-contiguous, one dtype): x (N, IN), weight (OUT, IN), bias (OUT,), y (N, OUT).

The def entry points take ndarrays and read their data pointers directly: acquiring a typed
memoryview costs ~1 us per argument, which is most of the budget of a batch-1 forward. The
Python layer (fastmod.nn) has already checked shapes, dtypes and contiguity.
"""
cimport numpy as cnp
from cython cimport floating
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
from fastmod._kernels._alloc cimport fm_malloc

from cython.parallel cimport prange

from fastmod._kernels._blas cimport gemm, pgemm, pgemv, pgemm_plan, pgemm_block
from fastmod._kernels._threads cimport num_threads, threads_for

cnp.import_array()

# Skinny layers (OUT <= SKINNY_OUT, float32) and the transposed forward's epilogue: vector
# kernels in simd/fm_linear.h (written once against simd/fm_vec.h, compiled per instruction set).
cdef extern from "fm_linear.h":
    int SK_HAVE
    int SK_COLS
    void sk_forward_rows(float* y, const float* x, const float* w, const float* b,
                         int IN, int OUT, int r0, int r1, int relu) noexcept nogil
    void sk_dw_cols(float* dw, const float* dy, const float* x, int N, int IN, int OUT,
                    int c0, int c1, int acc_in) noexcept nogil
    void sk_dx_rows(float* dx, const float* dy, const float* w, const float* mask,
                    int IN, int OUT, int r0, int r1, int acc_in) noexcept nogil
    void tr_bias_relu(float* y, int ldy, const float* z, int ldz, const float* b,
                      int o0, int o1, int n0, int n1, int relu) noexcept nogil
    void sk_gemv_rows(float* y, const float* w, const float* x, const float* b, int IN,
                      int o0, int o1, int relu) noexcept nogil
    ctypedef struct sk_gemv_layer:
        float* y
        const float* w
        const float* b
        int IN, OUT, relu
    void sk_gemv_chain(const sk_gemv_layer* L, int n, const float* x, int nt) noexcept nogil

# Prepacked GEMM (planned inference, fastmod.inference): simd/fm_pgemm.h
cdef extern from "fm_pgemm.h":
    int fm_pgemm_ocp(int OUT) noexcept nogil
    int fm_pgemm_panel_cols(int OUT) noexcept nogil
    void fm_pgemm_pack(float* wk, float* bp, const float* w, const float* b, int OUT,
                       int IN) noexcept nogil
    void fm_pgemm_pack_cols(float* wk, const float* w, int OUT, int IN, int o0,
                            int o1) noexcept nogil
    void fm_pgemm_rows(float* y, const float* x, const float* wk, const float* bp, int n0,
                       int n1, int IN, int OUT, int p0, int p1, int relu) noexcept nogil
    Py_ssize_t fm_pgemm_ws_size(int IN, int OUT, int np) noexcept nogil
    void fm_pgemm_nn(float* y, Py_ssize_t ldy, const float* a, Py_ssize_t ars, Py_ssize_t aks,
                     const float* b, Py_ssize_t ldb, int K, int NC, int m0, int m1, int p0,
                     int p1, int beta, float* ws) noexcept nogil
    void fm_pgemm_rows_raw(float* y, const float* x, const float* w, const float* bp, int n0,
                           int n1, int IN, int OUT, int p0, int p1, int relu,
                           float* ws) noexcept nogil
    int FM_PG_GELU
    int fm_pgemm_gelu_ok() noexcept nogil

GELU = 2    # linear_forward's relu= for a GELU epilogue (simd/fm_pgemm.h's FM_PG_GELU)

cdef enum:
    SKINNY_OUT = 16                  # out_features up to this go through the sk_* kernels
    SKINNY_GRAIN = 1 << 18           # multiply-adds per thread before a second thread helps
    GEMV_GRAIN = 1 << 17             # batch-1 forward: multiply-adds per thread


cdef int _skinny_threads(int N, int IN, int OUT) noexcept nogil:
    return threads_for(<Py_ssize_t>N * IN * OUT, SKINNY_GRAIN)


cdef void _skinny_forward(float* y, const float* x, const float* w, const float* b,
                          int N, int IN, int OUT, bint relu) noexcept nogil:
    cdef int nt = _skinny_threads(N, IN, OUT), t, chunk
    if nt > N // 2:
        nt = max(1, N // 2)
    if nt <= 1:
        sk_forward_rows(y, x, w, b, IN, OUT, 0, N, relu)
        return
    chunk = ((N + nt - 1) // nt + 1) // 2 * 2
    for t in prange(nt, num_threads=nt, schedule='static'):
        if t * chunk < N:
            sk_forward_rows(y, x, w, b, IN, OUT, t * chunk, min(N, (t + 1) * chunk), relu)


cdef void _skinny_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                           const float* w, int N, int IN, int OUT, bint acc_w, bint acc_b,
                           const float* mask, bint acc_dx) noexcept nogil:
    # one parallel region: thread t takes dW's column block t, db's column range t and dx's
    # row block t
    cdef int nt = _skinny_threads(N, IN, OUT), t, cw, cx, cb
    if nt > max(N // 3, IN // SK_COLS):
        nt = max(1, max(N // 3, IN // SK_COLS))
    if nt <= 1:
        if dw != NULL:
            sk_dw_cols(dw, dy, x, N, IN, OUT, 0, IN, acc_w)
        if db != NULL:
            _bias_grad(db, dy, N, OUT, acc_b)
        if dx != NULL:
            sk_dx_rows(dx, dy, w, mask, IN, OUT, 0, N, acc_dx)
        return
    cw = ((IN + nt - 1) // nt + SK_COLS - 1) // SK_COLS * SK_COLS
    cx = ((N + nt - 1) // nt + 2) // 3 * 3
    cb = (OUT + nt - 1) // nt
    for t in prange(nt, num_threads=nt, schedule='static'):
        if dw != NULL and t * cw < IN:
            sk_dw_cols(dw, dy, x, N, IN, OUT, t * cw, min(IN, (t + 1) * cw), acc_w)
        if db != NULL:
            _bias_grad(db, dy, N, OUT, acc_b, t * cb, min(OUT, (t + 1) * cb))
        if dx != NULL and t * cx < N:
            sk_dx_rows(dx, dy, w, mask, IN, OUT, t * cx, min(N, (t + 1) * cx), acc_dx)


cdef void _forward_block(floating* y, const floating* x, const floating* w, const floating* b,
                         int N, int IN, int OUT, int t, int chunk, bint relu) noexcept nogil:
    # Block t of y (rows when N >= OUT, else columns: pgemm_plan's partition): broadcast b into
    # it, GEMM with beta = 1 (0 without bias), then max(., 0) while the block is in cache.
    cdef bint by_rows = N >= OUT
    cdef int parts = N if by_rows else OUT
    cdef int lo = t * chunk, hi = min(parts, lo + chunk)
    cdef int r0 = lo if by_rows else 0, r1 = hi if by_rows else N
    cdef int c0 = 0 if by_rows else lo, c1 = OUT if by_rows else hi
    cdef int n, c
    cdef floating beta = 0, v
    cdef floating* row
    if lo >= hi:
        return
    if b != NULL:
        for n in range(r0, r1):
            memcpy(y + <Py_ssize_t>n * OUT + c0, b + c0, (c1 - c0) * sizeof(floating))
        beta = 1
    pgemm_block(t, chunk, False, True, N, OUT, IN, <floating>1, x, IN, w, IN, beta, y, OUT)
    if relu:
        for n in range(r0, r1):
            row = y + <Py_ssize_t>n * OUT
            for c in range(c0, c1):
                v = row[c]
                row[c] = 0 if v < 0 else v     # as ReLU's kernel: NaN stays NaN (as torch)


cdef void _gemv_forward(float* y, const float* x, const float* w, const float* b, int IN,
                        int OUT, bint relu) noexcept nogil:
    # batch 1, float32, vector levels: sk_gemv_rows over row blocks of 8 per thread (measured on
    # the AVX-512 Xeon, 784 -> 512 + ReLU, one thread: see simd/fm_linear.h)
    cdef int nt = threads_for(<Py_ssize_t>OUT * IN, GEMV_GRAIN), t, chunk
    if nt > OUT // 8:
        nt = max(1, OUT // 8)
    if nt <= 1:
        sk_gemv_rows(y, w, x, b, IN, 0, OUT, relu)
        return
    chunk = ((OUT + nt - 1) // nt + 7) // 8 * 8
    for t in prange(nt, num_threads=nt, schedule='static'):
        if t * chunk < OUT:
            sk_gemv_rows(y, w, x, b, IN, t * chunk, min(OUT, (t + 1) * chunk), relu)


cdef void _linear_forward(floating* y, const floating* x, const floating* w, const floating* b,
                          int N, int IN, int OUT, bint relu) noexcept nogil:
    # y (N, OUT) = x (N, IN) @ w.T (IN, OUT) + b, then y = max(y, 0) when relu. A block's bias,
    # GEMM and ReLU run in the same thread: one parallel region per call.
    cdef int n, t, chunk, nb
    cdef floating beta = 0, v
    cdef int nt = num_threads()
    if floating is float:
        if SK_HAVE and OUT <= SKINNY_OUT:
            _skinny_forward(y, x, w, b, N, IN, OUT, relu)
            return
    if N == 1:
        if floating is float:
            if SK_HAVE:
                _gemv_forward(y, x, w, b, IN, OUT, relu)
                return
        if b != NULL:
            memcpy(y, b, OUT * sizeof(floating))
            beta = 1
        pgemv(False, OUT, IN, <floating>1, w, IN, x, beta, y, nt)
        if relu:
            for n in range(OUT):
                v = y[n]
                y[n] = 0 if v < 0 else v
        return
    nb = pgemm_plan(N, OUT, IN, nt, &chunk)
    if nb <= 1:
        _forward_block(y, x, w, b, N, IN, OUT, 0, chunk, relu)
        return
    for t in prange(nb, num_threads=nb, schedule='static'):
        _forward_block(y, x, w, b, N, IN, OUT, t, chunk, relu)


cdef enum:
    BIAS_BLOCK = 4096                # columns per pass of _bias_grad (32 KB of stack)


cdef void _bias_grad(floating* db, const floating* dy, Py_ssize_t N, int C, bint accumulate,
                     int lo=0, int hi=-1) noexcept nogil:
    # db[lo:hi] (+)= dy[:, lo:hi] (dy (N, C)) summed over rows, in double so long batches keep
    # precision; each column's sum runs in the same order whatever the column range. The
    # accumulators are on the stack, BIAS_BLOCK columns per pass: this runs inside parallel
    # regions, where a failed malloc could not be reported
    if hi < 0:
        hi = C
    cdef double acc[BIAS_BLOCK]
    cdef Py_ssize_t n
    cdef int c, w
    cdef const floating* row
    while lo < hi:
        w = min(hi - lo, BIAS_BLOCK)
        for c in range(w):
            acc[c] = 0
        for n in range(N):
            row = dy + n * C + lo
            for c in range(w):
                acc[c] += row[c]
        if accumulate:
            for c in range(w):
                db[lo + c] = <floating>(db[lo + c] + acc[c])
        else:
            for c in range(w):
                db[lo + c] = <floating>acc[c]
        lo = lo + w


cdef void _mask_block(floating* dx, const floating* mask, int N, int IN, int t,
                      int chunk) noexcept nogil:
    # dx = 0 where mask <= 0 (a ReLU's saved output: relu' read from it, NaN -> 0 as ReLU's
    # backward), over block t of pgemm_plan(N, IN, .)'s partition (t = -1: all of dx)
    cdef bint by_rows = N >= IN
    cdef int parts = N if by_rows else IN
    cdef int lo = 0 if t < 0 else t * chunk
    cdef int hi = parts if t < 0 else min(parts, lo + chunk)
    cdef int r0 = lo if by_rows else 0, r1 = hi if by_rows else N
    cdef int c0 = 0 if by_rows else lo, c1 = IN if by_rows else hi
    cdef int n, c
    cdef floating* row
    cdef const floating* mrow
    for n in range(r0, r1):
        row = dx + <Py_ssize_t>n * IN
        mrow = mask + <Py_ssize_t>n * IN
        for c in range(c0, c1):
            row[c] = row[c] if mrow[c] > 0 else 0


cdef inline bint _raw_bwd_ok(int N, int IN, int OUT) noexcept nogil:
    # the backward on fm_pgemm (_raw_backward; threads split IN's column panels), unless a
    # product has many slabs of k and a large output (dW: k = N, output = the weights; dx: k =
    # OUT, output (N, IN)) -- as the forward's rule
    return SK_HAVE and N >= RAW_MIN_N and OUT > SKINNY_OUT and IN >= RAW_BWD_MIN_IN and (
        (N + 127) // 128 <= RAW_MAX_SLABS or <double>IN * OUT * 4 <= RAW_MAX_W_BYTES) and (
        (OUT + 127) // 128 <= RAW_MAX_SLABS or <double>N * IN * 4 <= RAW_MAX_W_BYTES)


cdef int _raw_backward(float* dx, float* dw, float* db, const float* dy, const float* x,
                       const float* w, int N, int IN, int OUT, bint acc_w, bint acc_b,
                       const float* mask, bint acc_dx) noexcept nogil:
    # dW (OUT, IN) (+)= dy^T x and dx (N, IN) (+)= dy W on fm_pgemm (fm_pgemm_nn: dy and dy^T
    # read in place, each slab of x's / W's column panels copied as it is needed), db over
    # column ranges, in one parallel region: thread t takes a range of IN's column panels for
    # both products. 0, or -1 when out of memory (nothing written; the caller takes BLAS)
    cdef int pw = fm_pgemm_panel_cols(IN)
    cdef int panels = (IN + pw - 1) // pw
    cdef int nt = threads_for(<Py_ssize_t>N * IN * OUT * ((dw != NULL) + (dx != NULL)),
                              PACKED_GRAIN)
    cdef int t, p0, p1, c0, c1, n, c, nbb = 0, cb = 0
    cdef float* ws
    cdef float* row
    cdef const float* mrow
    if nt > panels:
        nt = panels
    if nt < 1:
        nt = 1
    cdef int pper = (panels + nt - 1) // nt
    cdef Py_ssize_t per = (max(fm_pgemm_ws_size(N, IN, pper),
                               fm_pgemm_ws_size(OUT, IN, pper)) + 15) // 16 * 16
    ws = <float*>fm_malloc(nt * per * sizeof(float))         # 64-byte aligned
    if ws == NULL:
        return -1
    if db != NULL:
        nbb = max(1, min(nt, threads_for(<Py_ssize_t>N * OUT, 32768)))
        cb = (OUT + nbb - 1) // nbb
    for t in prange(nt, num_threads=nt, schedule='static'):
        p0 = t * pper
        p1 = min(panels, p0 + pper)
        if p0 < p1:
            if dw != NULL:
                fm_pgemm_nn(dw, IN, dy, 1, OUT, x, IN, N, IN, 0, OUT, p0, p1, acc_w,
                            ws + t * per)
            if dx != NULL:
                fm_pgemm_nn(dx, IN, dy, OUT, 1, w, IN, OUT, IN, 0, N, p0, p1, acc_dx,
                            ws + t * per)
                if mask != NULL:                  # the ReLU before: dx = 0 where out <= 0
                    c0 = p0 * pw
                    c1 = min(IN, p1 * pw)
                    for n in range(N):
                        row = dx + <Py_ssize_t>n * IN
                        mrow = mask + <Py_ssize_t>n * IN
                        for c in range(c0, c1):
                            row[c] = row[c] if mrow[c] > 0 else 0
        if t < nbb:
            _bias_grad(db, dy, N, OUT, acc_b, t * cb, min(OUT, (t + 1) * cb))
    free(ws)
    return 0


cdef void _linear_backward(floating* dx, floating* dw, floating* db,
                           const floating* dy, const floating* x, const floating* w,
                           int N, int IN, int OUT, bint acc_w, bint acc_b,
                           const floating* mask, bint acc_dx) noexcept nogil:
    # mask (N, IN) or NULL: dx zeroed where mask <= 0, block by block while it is in cache (a
    # ReLU before this Linear: its backward fused here). acc_dx: dx += dy @ W (beta = 1).
    cdef int nt = num_threads()
    cdef int t, cw = 0, cx = 0, cb, nbw = 0, nbx = 0, nbb = 0, nreg
    cdef floating beta_w = <floating>(1 if acc_w else 0)
    cdef floating beta_x = <floating>(1 if acc_dx else 0)
    if floating is float:
        if SK_HAVE and OUT <= SKINNY_OUT and N > 1:
            _skinny_backward(dx, dw, db, dy, x, w, N, IN, OUT, acc_w, acc_b, mask, acc_dx)
            return
    if floating is float:
        if _raw_bwd_ok(N, IN, OUT) and \
                _raw_backward(dx, dw, db, dy, x, w, N, IN, OUT, acc_w, acc_b, mask, acc_dx) == 0:
            return
    if N == 1:
        # batch 1: dW and db are outer products / copies, dx a GEMV
        if dw != NULL:
            pgemm(True, False, OUT, IN, N, <floating>1, dy, OUT, x, IN, beta_w, dw, IN, nt)
        if db != NULL:
            _bias_grad(db, dy, N, OUT, acc_b)
        if dx != NULL:
            pgemv(True, OUT, IN, <floating>1, w, IN, dy, beta_x, dx, nt)
            if mask != NULL:
                _mask_block(dx, mask, N, IN, -1, 0)
        return
    # dW (OUT, IN) (+)= dy.T (OUT, N) @ x (N, IN); dx (N, IN) = dy (N, OUT) @ W (OUT, IN);
    # db (OUT,) (+)= dy summed over rows. All three run in ONE parallel region: thread t
    # computes block t of dW and of dx (the blocks pgemm would use: same results) and a
    # column range of db -- one fork/join instead of two per Linear backward.
    if dw != NULL:
        nbw = pgemm_plan(OUT, IN, N, nt, &cw)
    if dx != NULL:
        nbx = pgemm_plan(N, IN, OUT, nt, &cx)
    nreg = max(nbw, nbx)
    if db != NULL:
        nbb = min(nreg, threads_for(<Py_ssize_t>N * OUT, 32768))
    if nreg <= 1:
        if dw != NULL:
            gemm(True, False, OUT, IN, N, <floating>1, dy, OUT, x, IN, beta_w, dw, IN)
        if db != NULL:
            _bias_grad(db, dy, N, OUT, acc_b)
        if dx != NULL:
            gemm(False, False, N, IN, OUT, <floating>1, dy, OUT, w, IN, beta_x, dx, IN)
            if mask != NULL:
                _mask_block(dx, mask, N, IN, -1, 0)
        return
    if nbb < 1 and db != NULL:
        nbb = 1
    cb = (OUT + nbb - 1) // nbb if nbb > 0 else 0
    for t in prange(nreg, num_threads=nreg, schedule='static'):
        if t < nbw:
            pgemm_block(t, cw, True, False, OUT, IN, N, <floating>1, dy, OUT, x, IN, beta_w, dw, IN)
        if t < nbb:
            _bias_grad(db, dy, N, OUT, acc_b, t * cb, min(OUT, (t + 1) * cb))
        if t < nbx:
            pgemm_block(t, cx, False, False, N, IN, OUT, <floating>1, dy, OUT, w, IN,
                        beta_x, dx, IN)
            if mask != NULL:
                _mask_block(dx, mask, N, IN, t, cx)


cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef void _forward_t_block(float* y, float* z, const float* x, const float* w, const float* b,
                           int N, int IN, int OUT, int t, int chunk, bint relu) noexcept nogil:
    # block t of z (OUT, N) = w @ x.T (pgemm_plan(OUT, N, IN)'s partition), then its part of
    # y = z.T + b (ReLU) while in cache
    cdef bint by_rows = OUT >= N
    cdef int parts = OUT if by_rows else N
    cdef int lo = t * chunk, hi = min(parts, lo + chunk)
    if lo >= hi:
        return
    pgemm_block(t, chunk, False, True, OUT, N, IN, <float>1, w, IN, x, IN, <float>0, z, N)
    if by_rows:
        tr_bias_relu(y, OUT, z, N, b, lo, hi, 0, N, relu)
    else:
        tr_bias_relu(y, OUT, z, N, b, 0, OUT, lo, hi, relu)


cdef void _linear_forward_t(float* y, float* z, const float* x, const float* w, const float* b,
                            int N, int IN, int OUT, bint relu) noexcept nogil:
    # y (N, OUT) through z = w @ x.T (OUT, N) and a transposing epilogue. SciPy's OpenBLAS
    # 0.3.30 packs the (OUT, IN) weight operand of the direct call (y = x @ w.T: sgemm 'T','N'
    # with W as A) with a slow copy routine (sgemm_incopy 14% of a 128x512x512 forward, 6% in
    # NumPy's 0.3.31): with the operands exchanged the GEMM runs at NumPy's speed (1 thread:
    # 128x784 -> 512 1587 vs 1759 us, 512 -> 512 987 vs 1090 us), and the transpose-bias-ReLU
    # pass costs less than the difference.
    cdef int nt = num_threads(), chunk, t
    cdef int nb = pgemm_plan(OUT, N, IN, nt, &chunk)
    if nb <= 1:
        _forward_t_block(y, z, x, w, b, N, IN, OUT, 0, chunk, relu)
        return
    for t in prange(nb, num_threads=nb, schedule='static'):
        _forward_t_block(y, z, x, w, b, N, IN, OUT, t, chunk, relu)


def linear_forward(cnp.ndarray y, cnp.ndarray x, cnp.ndarray w, object b, int relu=0,
                   object scratch=None):
    """y (N, OUT) = x (N, IN) @ w.T + b (b may be None); then y = max(y, 0) when relu.

    scratch: None, or a float32 array of N * OUT elements for the transposed path (float32,
    32 <= N <= 192, OUT > 16; see forward_scratch_ok); other calls ignore it.

    relu = GELU (inference only: the output before it is not kept) asks for y = GELU(x @ w.T +
    b) in the GEMM's epilogue, on each block while it is in registers; that happens on the
    float32 fm_pgemm path at the vector levels, and the return value says whether it did (else
    y holds x @ w.T + b and the caller applies the GELU). Returns True for relu 0 or 1.
    """
    cdef int N = <int>cnp.PyArray_DIM(x, 0), IN = <int>cnp.PyArray_DIM(x, 1)
    cdef int OUT = <int>cnp.PyArray_DIM(w, 0)
    cdef void* py = cnp.PyArray_DATA(y)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef void* pb = _ptr(b)
    cdef void* pz = _ptr(scratch)
    cdef int rc
    cdef bint gelu = relu == 2                  # GELU
    if relu != 0 and relu != 1 and not gelu:
        raise ValueError(f"linear_forward: relu must be 0, 1 or GELU ({GELU}), got {relu}")
    if gelu:
        relu = 0
        if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32 and fm_pgemm_gelu_ok() and _raw_ok(N, IN, OUT):
            with nogil:
                rc = _raw_forward(<float*>py, <float*>px, <float*>pw, <float*>pb, N, IN, OUT,
                                  FM_PG_GELU)
            if rc == 0:
                return True
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        if _raw_ok(N, IN, OUT):
            with nogil:
                rc = _raw_forward(<float*>py, <float*>px, <float*>pw, <float*>pb, N, IN, OUT,
                                  relu)
            if rc == 0:
                return not gelu
        if pz != NULL and _transposed_ok(N, IN, OUT):
            with nogil:
                _linear_forward_t(<float*>py, <float*>pz, <float*>px, <float*>pw, <float*>pb,
                                  N, IN, OUT, relu)
            return not gelu
        with nogil:
            _linear_forward(<float*>py, <float*>px, <float*>pw, <float*>pb, N, IN, OUT, relu)
    else:
        with nogil:
            _linear_forward(<double*>py, <double*>px, <double*>pw, <double*>pb, N, IN, OUT, relu)
    return not gelu


# The float32 forward on the prepacked GEMM's kernel (simd/fm_pgemm.h) with w read as it is,
# each thread packing the k-slabs of its own column panels as it needs them, against the BLAS
# paths (OpenBLAS packs both operands at every call). Measured, AVX-512 Sapphire Rapids, 2
# threads, GFLOP/s BLAS -> here (torch 2.13): 128x256->256 169 -> 237 (227), 128x784->512 192
# -> 253 (289), 128x512->512 229 -> 267 (282), 8x512->512 66 -> 84 (126), 1024x1024->256 276
# -> 293 (297), 1024x256->1024 292 -> 303 (309), 4096x1024->256 273 -> 294 (301); but with
# many slabs of k and large weights a large y is re-read and re-written once per slab:
# 2048x2048->512 286 -> 280, 1024x4096->1024 297 -> 273 -- those stay on BLAS.
cdef enum:
    RAW_MIN_N = 2                    # rows from which the forward runs fm_pgemm on w as it is
    RAW_COLS_MAX_N = 512             # threads split the column panels up to this many rows
                                     # (64x784->512: 235 vs 186 GF/s splitting the rows)
    RAW_MAX_SLABS = 2                # beyond this many slabs of k (fm_pgemm.h's FM_PG_KC) ...
    RAW_MAX_W_BYTES = 2 << 20        # ... only while the weights are this small
    RAW_BWD_MIN_IN = 64              # the backward from this many input features


cdef inline bint _raw_ok(int N, int IN, int OUT) noexcept nogil:
    return SK_HAVE and N >= RAW_MIN_N and OUT > SKINNY_OUT and (
        (IN + 127) // 128 <= RAW_MAX_SLABS or <double>IN * OUT * 4 <= RAW_MAX_W_BYTES)


cdef struct PgSplit:
    # how fm_pgemm's forward is shared among threads: pt threads over column panels (pper
    # each) times the rest over rows (rows each); nt threads in all (1: no parallel region)
    int nt, pt, pper, rows, panels


cdef inline void _pg_split(PgSplit* s, int N, int IN, int OUT, int cols_max_n) noexcept nogil:
    # threads over the column panels (each thread its part of the weights) when the panels
    # divide among them and there are at most cols_max_n rows, else over the rows
    cdef int nt = threads_for(<Py_ssize_t>N * IN * OUT, PACKED_GRAIN), rt
    s.panels = fm_pgemm_ocp(OUT) // fm_pgemm_panel_cols(OUT)
    if nt > 1 and s.panels % nt == 0 and N <= cols_max_n:
        s.pt, rt = nt, 1
    else:
        s.pt, rt = 1, max(nt, 1)
    s.nt = s.pt * rt
    s.pper = (s.panels + s.pt - 1) // s.pt
    s.rows = (N + rt - 1) // rt


cdef inline void _pg_part(const PgSplit* s, int t, float* y, const float* x, const float* wk,
                          const float* w, const float* bp, int N, int IN, int OUT, int relu,
                          float* ws) noexcept nogil:
    # thread t's part: from wk packed once (fm_pgemm_rows), or from w as it is, its slabs
    # packed into ws as they are needed (fm_pgemm_rows_raw)
    cdef int p0 = (t % s.pt) * s.pper, n0 = (t // s.pt) * s.rows
    cdef int p1 = min(s.panels, p0 + s.pper), n1 = min(N, n0 + s.rows)
    if p0 >= p1 or n0 >= n1:
        return
    if wk != NULL:
        fm_pgemm_rows(y, x, wk, bp, n0, n1, IN, OUT, p0, p1, relu)
    else:
        fm_pgemm_rows_raw(y, x, w, bp, n0, n1, IN, OUT, p0, p1, relu, ws)


cdef void _pg_forward(const PgSplit* s, float* y, const float* x, const float* wk,
                      const float* w, const float* bp, int N, int IN, int OUT, int relu,
                      float* ws, Py_ssize_t per) noexcept nogil:
    # y = x @ w.T + bp (then relu 1: ReLU, FM_PG_GELU: GELU) over s threads; ws: per floats
    # a thread (raw w only)
    cdef int t
    if s.nt <= 1:
        _pg_part(s, 0, y, x, wk, w, bp, N, IN, OUT, relu, ws)
        return
    for t in prange(s.nt, num_threads=s.nt, schedule='static'):
        _pg_part(s, t, y, x, wk, w, bp, N, IN, OUT, relu, ws + t * per)


cdef int _raw_forward(float* y, const float* x, const float* w, const float* b, int N, int IN,
                      int OUT, int relu) noexcept nogil:
    # y = x @ w.T + b (then ReLU) through fm_pgemm with w read as it is: each thread packs the
    # slabs of the column panels it computes, as it needs them (fm_pgemm_rows_raw). 0, or -1
    # when out of memory (nothing written; the caller takes the BLAS path)
    cdef PgSplit s
    cdef int ocp = fm_pgemm_ocp(OUT), o
    _pg_split(&s, N, IN, OUT, RAW_COLS_MAX_N)
    cdef Py_ssize_t per = (fm_pgemm_ws_size(IN, OUT, s.pper) + 15) // 16 * 16
    cdef Py_ssize_t nb = (ocp + 15) // 16 * 16              # fm_malloc: 64-byte aligned
    cdef float* bp = <float*>fm_malloc((nb + s.nt * per) * sizeof(float))
    if bp == NULL:
        return -1
    for o in range(ocp):
        bp[o] = b[o] if (b != NULL and o < OUT) else 0
    _pg_forward(&s, y, x, NULL, w, bp, N, IN, OUT, relu, bp + nb, per)
    free(bp)
    return 0


cdef enum:
    TRANSPOSED_MIN_N = 32            # the transposed forward from this batch size
    TRANSPOSED_MAX_N = 192           # up to this one (measured, transposed / direct time at 1
                                     # and 2 threads: N 64 0.80-0.89, 128 0.91-1.0, 256 0.99-1.11,
                                     # 512 1.01-1.22, 1024 1.0-1.25 -- z^T stops fitting in cache)
    TRANSPOSED_MIN_MACS = 1 << 24    # and this much work (the epilogue is a pass over y)


cdef inline bint _transposed_ok(int N, int IN, int OUT) noexcept nogil:
    return TRANSPOSED_MIN_N <= N <= TRANSPOSED_MAX_N and OUT > SKINNY_OUT and \
        <double>N * IN * OUT >= TRANSPOSED_MIN_MACS


def forward_scratch_ok(int N, int IN, int OUT):
    """True when a float32 forward of these sizes takes the transposed path (needs scratch)."""
    return _transposed_ok(N, IN, OUT)


def linear_backward(object dx, object dw, object db, cnp.ndarray dy, cnp.ndarray x,
                    cnp.ndarray w, bint acc_w, bint acc_b, object mask=None, bint acc_dx=False):
    """dx (+)= dy @ w; dw (+)= dy.T @ x; db (+)= dy.sum(0). Any of dx, dw, db may be None to skip it.

    acc_w / acc_b / acc_dx: add into dw / db / dx (True) or overwrite them (False).
    mask: None, or an (N, IN) array: dx is then zeroed where mask <= 0 (ReLU's backward, from
    the ReLU's saved output, applied after the accumulation).
    """
    cdef int N = <int>cnp.PyArray_DIM(x, 0), IN = <int>cnp.PyArray_DIM(x, 1)
    cdef int OUT = <int>cnp.PyArray_DIM(w, 0)
    cdef void* pdx = _ptr(dx)
    cdef void* pdw = _ptr(dw)
    cdef void* pdb = _ptr(db)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    cdef void* px = cnp.PyArray_DATA(x)
    cdef void* pw = cnp.PyArray_DATA(w)
    cdef void* pm = _ptr(mask)
    if cnp.PyArray_TYPE(x) == cnp.NPY_FLOAT32:
        with nogil:
            _linear_backward(<float*>pdx, <float*>pdw, <float*>pdb, <float*>pdy, <float*>px,
                             <float*>pw, N, IN, OUT, acc_w, acc_b, <float*>pm, acc_dx)
    else:
        with nogil:
            _linear_backward(<double*>pdx, <double*>pdw, <double*>pdb, <double*>pdy, <double*>px,
                             <double*>pw, N, IN, OUT, acc_w, acc_b, <double*>pm, acc_dx)


def bias_grad(cnp.ndarray db, cnp.ndarray dy, bint accumulate):
    """db (C,) (+)= dy (R, C) summed over rows (R = dy.size // C), in double."""
    cdef int C = <int>cnp.PyArray_DIM(db, 0)
    cdef Py_ssize_t R = cnp.PyArray_SIZE(dy) // C
    cdef void* pdb = cnp.PyArray_DATA(db)
    cdef void* pdy = cnp.PyArray_DATA(dy)
    if cnp.PyArray_TYPE(dy) == cnp.NPY_FLOAT32:
        with nogil:
            _bias_grad(<float*>pdb, <float*>pdy, R, C, accumulate)
    else:
        with nogil:
            _bias_grad(<double*>pdb, <double*>pdy, R, C, accumulate)


# ---------------------------------------------------------------- a chain of layers (planned)
def linear_chain_forward(cnp.ndarray x, tuple layers):
    """Several float32 Linear layers in a row, one Python call: layers is a tuple of (y, w, b,
    relu) with y (N, OUT) the layer's output buffer (the next layer's input), w (OUT, IN), b
    (OUT,) or None; x (N, IN) the first input. All C-contiguous float32 with matching shapes
    (unchecked: fastmod.inference plans them). Each layer's kernel is linear_forward's (batch 1:
    the GEMV). The per-layer Python overhead of a planned MLP at batch 1 was ~3 us a layer."""
    cdef int n = len(layers), i, nt
    cdef int N = <int>cnp.PyArray_DIM(x, 0)
    cdef sk_gemv_layer* c = <sk_gemv_layer*>malloc(max(n, 1) * sizeof(sk_gemv_layer))
    cdef const float* src = <const float*>cnp.PyArray_DATA(x)
    cdef Py_ssize_t most = 0
    cdef int widest = 0
    if c == NULL:
        raise MemoryError()
    for i in range(n):
        y, w, b, relu = layers[i]
        c[i].y = <float*>cnp.PyArray_DATA(<cnp.ndarray>y)
        c[i].w = <const float*>cnp.PyArray_DATA(<cnp.ndarray>w)
        c[i].b = <const float*>_ptr(b)
        c[i].OUT = <int>cnp.PyArray_DIM(<cnp.ndarray>w, 0)
        c[i].IN = <int>cnp.PyArray_DIM(<cnp.ndarray>w, 1)
        c[i].relu = relu
    if N == 1 and SK_HAVE:
        # batch 1: one parallel region over every layer (sk_gemv_chain), threads as the
        # largest layer's GEMV would take them
        for i in range(n):
            most = max(most, <Py_ssize_t>c[i].IN * c[i].OUT)
            widest = max(widest, c[i].OUT)
        nt = max(1, min(threads_for(most, GEMV_GRAIN), widest // 8))
        with nogil:
            sk_gemv_chain(c, n, src, nt)
        free(c)
        return
    with nogil:
        for i in range(n):
            _linear_forward(c[i].y, src, c[i].w, c[i].b, N, c[i].IN, c[i].OUT, c[i].relu)
            src = c[i].y
    free(c)


# ---------------------------------------------------------------- prepacked (planned inference)
def packed_shape(int OUT, int IN):
    """(IN, OCP) of the packed weights and (OCP,) of the padded bias for an (OUT, IN) Linear."""
    cdef int ocp = fm_pgemm_ocp(OUT)
    return (IN, ocp), (ocp,)


def pack_weights(cnp.ndarray wk, cnp.ndarray bp, cnp.ndarray w, object b):
    """wk (IN, OCP) <- w (OUT, IN) transposed, zero columns past OUT; bp (OCP,) <- b padded
    (zeros when b is None). float32, shapes from packed_shape. Threads split the columns."""
    cdef int OUT = <int>cnp.PyArray_DIM(w, 0), IN = <int>cnp.PyArray_DIM(w, 1)
    cdef float* pk = <float*>cnp.PyArray_DATA(wk)
    cdef float* pb = <float*>cnp.PyArray_DATA(bp)
    cdef const float* pw = <const float*>cnp.PyArray_DATA(w)
    cdef const float* pbi = <const float*>_ptr(b)
    cdef int ocp = fm_pgemm_ocp(OUT), t, o0, o1
    cdef int nt = threads_for(<Py_ssize_t>OUT * IN, PACK_GRAIN)
    cdef int chunk = ((ocp + nt - 1) // nt + 15) // 16 * 16        # whole vectors per thread
    with nogil:
        fm_pgemm_pack(pk, pb, pw, pbi, OUT, 0)            # the padded bias (no columns of w)
        if nt <= 1:
            fm_pgemm_pack_cols(pk, pw, OUT, IN, 0, ocp)
        else:
            for t in prange(nt, num_threads=nt, schedule='static'):
                o0 = t * chunk
                o1 = min(ocp, o0 + chunk)
                if o0 < o1:
                    fm_pgemm_pack_cols(pk, pw, OUT, IN, o0, o1)


cdef enum:
    PACK_GRAIN = 1 << 15             # weights per thread before a second thread helps packing
    PACKED_ROWS_PER_THREAD = 16      # (x4: rows per thread before threads split the rows)
    PACKED_GRAIN = 1 << 17           # multiply-adds per thread before a second thread helps


def linear_forward_packed(cnp.ndarray y, cnp.ndarray x, cnp.ndarray wk, cnp.ndarray bp,
                          int OUT, bint relu=False):
    """y (N, OUT) = x (N, IN) @ w.T + b (then ReLU) from pack_weights' wk and bp; float32,
    C-contiguous. Each thread takes a range of column panels (its part of wk stays in its own
    L2) and, when there are fewer panels than threads, a range of rows."""
    cdef int N = <int>cnp.PyArray_DIM(x, 0), IN = <int>cnp.PyArray_DIM(x, 1)
    cdef float* py = <float*>cnp.PyArray_DATA(y)
    cdef const float* px = <const float*>cnp.PyArray_DATA(x)
    cdef const float* pk = <const float*>cnp.PyArray_DATA(wk)
    cdef const float* pb = <const float*>cnp.PyArray_DATA(bp)
    cdef PgSplit s
    # few rows (below 4 x PACKED_ROWS_PER_THREAD a thread): threads over column panels
    _pg_split(&s, N, IN, OUT, 4 * PACKED_ROWS_PER_THREAD * max(1, num_threads()) - 1)
    with nogil:
        _pg_forward(&s, py, px, pk, NULL, pb, N, IN, OUT, relu, NULL, 0)
