# cython: language_level=3
"""Thread-count helper shared by every kernel.

fastmod.set_num_threads(n) stores n here. OpenMP loops ask `threads_for(work, grain)` so that tiny
loops stay serial (entering a parallel region costs ~1-2 us). BLAS is SciPy's bundled OpenBLAS
(the one scipy.linalg.cython_blas calls); the Python layer finds its set/get_num_threads symbols
with ctypes and hands their addresses here, so a kernel can drop BLAS to one thread around a
prange that calls GEMM (no oversubscription) at the cost of a C call.
"""
from libc.stdint cimport uintptr_t

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fm_have_openmp(void) { return 1; }
    static void fm_omp_set(int n) { omp_set_num_threads(n); }
    static int fm_omp_max(void) { return omp_get_max_threads(); }
    #else
    static int fm_have_openmp(void) { return 0; }
    static void fm_omp_set(int n) { (void)n; }
    static int fm_omp_max(void) { return 1; }
    #endif
    typedef void (*fm_set_fn)(int);
    typedef int (*fm_get_fn)(void);
    """
    int fm_have_openmp() noexcept nogil
    void fm_omp_set(int n) noexcept nogil
    int fm_omp_max() noexcept nogil
    ctypedef void (*fm_set_fn)(int) noexcept nogil
    ctypedef int (*fm_get_fn)() noexcept nogil

cdef int _n_threads = 1
cdef fm_set_fn _blas_set = NULL
cdef fm_get_fn _blas_get = NULL


cdef int num_threads() noexcept nogil:
    return _n_threads


cdef int threads_for(Py_ssize_t work, Py_ssize_t grain) noexcept nogil:
    """Threads worth using for `work` units when each thread should get at least `grain`."""
    cdef Py_ssize_t n = work // grain if grain > 0 else work
    if n < 1:
        return 1
    if n < _n_threads:
        return <int>n
    return _n_threads


cdef int blas_get_num_threads() noexcept nogil:
    if _blas_get != NULL:
        return _blas_get()
    return 1


cdef void blas_set_num_threads(int n) noexcept nogil:
    if _blas_set != NULL:
        _blas_set(n)


def have_openmp():
    """True when the kernels were compiled with OpenMP."""
    return bool(fm_have_openmp())


def omp_max_threads():
    return fm_omp_max()


def set_threads(int n):
    """Set fastmod's thread count for OpenMP loops and BLAS (n >= 1; the caller validates)."""
    global _n_threads
    _n_threads = n if fm_have_openmp() else 1
    fm_omp_set(_n_threads)
    # BLAS stays at one thread: fastmod splits GEMMs over its OpenMP threads (see _blas.pxd);
    # without OpenMP, BLAS threads are the only parallelism left, so let it use n.
    blas_set_num_threads(1 if fm_have_openmp() else n)


def get_threads():
    return _n_threads


def set_blas_functions(uintptr_t set_addr, uintptr_t get_addr):
    """Install the addresses of SciPy's OpenBLAS set/get_num_threads (0 = unknown)."""
    global _blas_set, _blas_get
    _blas_set = <fm_set_fn>set_addr if set_addr else NULL
    _blas_get = <fm_get_fn>get_addr if get_addr else NULL


def blas_threads():
    """What SciPy's OpenBLAS reports as its thread count (1 when it cannot be asked)."""
    return blas_get_num_threads()
