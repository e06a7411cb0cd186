# cython: language_level=3
# Fused row-major GEMM/GEMV over scipy.linalg.cython_blas (the OpenBLAS bundled with SciPy).
# Row-major trick: a row-major (m, n) matrix is column-major (n, m), so C = op(A) op(B) is asked of
# BLAS as C^T = op(B)^T op(A)^T, i.e. the operands are swapped and m, n exchanged.
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm, sgemv, dgemv


cdef inline void gemm(bint trans_a, bint trans_b, int m, int n, int k,
                      floating alpha, const floating* a, int lda,
                      const floating* b, int ldb,
                      floating beta, floating* c, int ldc) noexcept nogil:
    """C (m, n) = alpha * op(A) @ op(B) + beta * C, all row-major.

    op(A) is (m, k): A is (m, k) with lda >= k, or (k, m) with lda >= m when trans_a.
    op(B) is (k, n): B is (k, n) with ldb >= n, or (n, k) with ldb >= k when trans_b.
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    if floating is float:
        sgemm(&tb, &ta, &n, &m, &k, &alpha, <float*>b, &ldb, <float*>a, &lda, &beta, c, &ldc)
    else:
        dgemm(&tb, &ta, &n, &m, &k, &alpha, <double*>b, &ldb, <double*>a, &lda, &beta, c, &ldc)


cdef inline void gemv(bint trans_a, int m, int n, floating alpha, const floating* a, int lda,
                      const floating* x, floating beta, floating* y) noexcept nogil:
    """y = alpha * op(A) @ x + beta * y with A row-major (m, n), lda >= n.

    Not transposed: x (n,), y (m,). Transposed: x (m,), y (n,).
    """
    cdef char t = b'N' if trans_a else b'T'     # row-major A is column-major A^T
    cdef int one = 1
    if floating is float:
        sgemv(&t, &n, &m, &alpha, <float*>a, &lda, <float*>x, &one, &beta, y, &one)
    else:
        dgemv(&t, &n, &m, &alpha, <double*>a, &lda, <double*>x, &one, &beta, y, &one)


# ---------------------------------------------------------------- parallel wrappers
# fastmod keeps SciPy's OpenBLAS at one thread and parallelizes GEMM itself with OpenMP: each
# thread computes a block of C with a single-threaded GEMM. Two thread pools (OpenBLAS's
# pthreads and OpenMP) on the same cores spin-wait against each other after every call: on 2
# cores that made an MLP train step 9x slower (42 ms vs 4.5 ms) than one pool does.
from cython.parallel cimport prange

cdef enum:
    PGEMM_SERIAL_MACS = 1 << 18     # below ~262k multiply-adds one thread is faster
    PGEMM_ALIGN = 16                # block edges on multiples of 16 (cache lines, SIMD panels)


cdef inline int _pgemm_threads(int m, int n, int k, int nt) noexcept nogil:
    cdef double macs = <double>m * n * k
    if nt <= 1 or macs < PGEMM_SERIAL_MACS:
        return 1
    if macs < <double>PGEMM_SERIAL_MACS * nt:
        return max(1, <int>(macs / PGEMM_SERIAL_MACS))
    return nt


cdef inline int pgemm_plan(int m, int n, int k, int nt, int* chunk) noexcept nogil:
    """How many blocks pgemm splits C (m, n) into at `nt` threads (1 = one plain GEMM) and, in
    chunk, the rows (m >= n) or columns (m < n) per block: the one partition both pgemm and
    callers that run several GEMMs in one parallel region (pgemm_block) use."""
    cdef int parts = m if m >= n else n, c
    nt = _pgemm_threads(m, n, k, nt)
    chunk[0] = parts
    if nt <= 1:
        return 1
    c = (parts + nt - 1) // nt
    c = ((c + PGEMM_ALIGN - 1) // PGEMM_ALIGN) * PGEMM_ALIGN
    chunk[0] = c
    return (parts + c - 1) // c


cdef inline void pgemm_block(int t, int chunk, bint trans_a, bint trans_b, int m, int n, int k,
                             floating alpha, const floating* a, int lda,
                             const floating* b, int ldb,
                             floating beta, floating* c, int ldc) noexcept nogil:
    """Block t of the partition pgemm_plan gave (chunk rows when m >= n, else chunk columns),
    as one single-threaded GEMM."""
    cdef bint by_rows = m >= n
    cdef int parts = m if by_rows else n
    cdef int lo = t * chunk, hi = min(parts, lo + chunk)
    if lo >= hi:
        return
    if by_rows:
        gemm(trans_a, trans_b, hi - lo, n, k, alpha,
             a + (lo if trans_a else <Py_ssize_t>lo * lda), lda, b, ldb,
             beta, c + <Py_ssize_t>lo * ldc, ldc)
    else:
        gemm(trans_a, trans_b, m, hi - lo, k, alpha, a, lda,
             b + (<Py_ssize_t>lo * ldb if trans_b else lo), ldb,
             beta, c + lo, ldc)


cdef inline void pgemm(bint trans_a, bint trans_b, int m, int n, int k,
                       floating alpha, const floating* a, int lda,
                       const floating* b, int ldb,
                       floating beta, floating* c, int ldc, int nt) noexcept nogil:
    """gemm() with C split into `nt` blocks (by rows when m >= n, else by columns), one per
    OpenMP thread, each a single-threaded BLAS call. Same blocks for the same nt: results are
    reproducible at a fixed thread count."""
    cdef int t, chunk
    cdef int nb = pgemm_plan(m, n, k, nt, &chunk)
    if nb <= 1:
        gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        return
    for t in prange(nb, num_threads=nb, schedule='static'):
        pgemm_block(t, chunk, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


cdef inline void pgemv(bint trans_a, int m, int n, floating alpha, const floating* a, int lda,
                       const floating* x, floating beta, floating* y, int nt) noexcept nogil:
    """gemv() split over OpenMP threads along the output vector."""
    cdef int t, lo, hi, chunk, parts = n if trans_a else m
    nt = _pgemm_threads(m, n, 1, nt)
    if nt > 1:
        chunk = (parts + nt - 1) // nt
        chunk = ((chunk + PGEMM_ALIGN - 1) // PGEMM_ALIGN) * PGEMM_ALIGN
        nt = (parts + chunk - 1) // chunk
    if nt <= 1:
        gemv(trans_a, m, n, alpha, a, lda, x, beta, y)
        return
    for t in prange(nt, num_threads=nt, schedule='static'):
        lo = t * chunk
        hi = min(parts, lo + chunk)
        if lo < hi:
            if trans_a:
                # y[lo:hi] = A[:, lo:hi]^T x: the column block of row-major A
                gemv(True, m, hi - lo, alpha, a + lo, lda, x, beta, y + lo)
            else:
                gemv(False, hi - lo, n, alpha, a + <Py_ssize_t>lo * lda, lda, x, beta, y + lo)
