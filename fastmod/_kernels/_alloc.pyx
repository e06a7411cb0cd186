# cython: language_level=3
"""fm_malloc: every scratch allocation of the kernels goes through here.

A kernel that gets NULL frees whatever it already holds and returns -1 (nogil); its def entry
point raises MemoryError. Never a NULL pointer handed to a thread, never a segfault.

Test-only hook: ``_fail_alloc_after(n)`` makes the allocation after the next n fail (once; the
hook then disarms itself), and ``_alloc_count()`` counts the allocations made since import, so
a test can count a call's allocations and fail each of them in turn (tests/test_memory.py).
Unarmed, the hook costs one load and a branch per allocation. The counters are updated
atomically (a kernel may allocate from inside a parallel region).
"""


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define FM_ADD(p, v) __atomic_add_fetch((p), (v), __ATOMIC_RELAXED)
    #define FM_LOAD(p) __atomic_load_n((p), __ATOMIC_RELAXED)
    #define FM_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
    #else
    #define FM_ADD(p, v) (*(p) += (v))
    #define FM_LOAD(p) (*(p))
    #define FM_STORE(p, v) (*(p) = (v))
    #endif
    static long long fm_alloc_calls = 0;
    static long long fm_alloc_countdown = -1;      /* < 0: hook off */
    /* 1 when this allocation is the one the hook fails (then the countdown is -1: off) */
    static int fm_alloc_fail_now(void) {
        FM_ADD(&fm_alloc_calls, 1);
        if (FM_LOAD(&fm_alloc_countdown) < 0) return 0;
        return FM_ADD(&fm_alloc_countdown, -1) == -1;
    }
    static long long fm_alloc_get_calls(void) { return FM_LOAD(&fm_alloc_calls); }
    #if defined(_WIN32)
    #include <malloc.h>
    static void* fm_aligned_malloc(size_t n) { return malloc(n); }    /* free() must match */
    #else
    #include <stdlib.h>
    static void* fm_aligned_malloc(size_t n) {
        void* p = NULL;
        return posix_memalign(&p, 64, n) == 0 ? p : NULL;
    }
    #endif
    static void fm_alloc_arm(long long n) { FM_STORE(&fm_alloc_countdown, n); }
    """
    int fm_alloc_fail_now() noexcept nogil
    long long fm_alloc_get_calls() noexcept nogil
    void fm_alloc_arm(long long n) noexcept nogil
    void* fm_aligned_malloc(size_t n) noexcept nogil


cdef void* fm_malloc(size_t nbytes) noexcept nogil:
    # 64-byte aligned (a cache line, an AVX-512 vector: packed weights and planes read with
    # vector loads off a line touch two lines each -- the batch-1 GEMV ran 25% slower on
    # weights 32 bytes off); free() releases it. A size of 0 asks for one line, so that NULL
    # always means out of memory
    if fm_alloc_fail_now():
        return NULL
    return fm_aligned_malloc(nbytes if nbytes > 0 else 64)


def _fail_alloc_after(long long n):
    """Test hook: the next n kernel allocations succeed, the one after fails (once).
    n < 0 disarms the hook."""
    fm_alloc_arm(n if n >= 0 else -1)


def _alloc_count():
    """How many kernel allocations (fm_malloc calls) were made since import."""
    return fm_alloc_get_calls()
