# cython: language_level=3
"""The machine's float32 FMA peak at this module's instruction-set level (bench/compare.py).

Built once per level like every kernel module, so each level's peak is
``importlib.import_module(f"fastmod._kernels.{isa}.probe").fma_peak(threads, seconds)``; the
loop itself is simd/fm_peak.h (independent FMA chains in registers, nothing loaded or stored).
The scalar level's peak is the scalar one (one lane per operation), so avx512 >= avx2 >= scalar
by the vector width on a CPU that runs the wide FMAs at full rate.
"""
from libc.stdlib cimport malloc, free
from cython.parallel cimport prange, threadid

cdef extern from "fm_peak.h":
    const char* FM_ISA_NAME
    int FM_W
    int FM_PEAK_CHAINS
    double fm_peak_thread(double seconds, double warmup, long chunk_iters, double* best_rate) noexcept nogil

ISA = FM_ISA_NAME.decode("ascii")       # 'scalar', 'avx2' or 'avx512'
LANES = FM_W                            # float32 lanes per vector FMA
CHAINS = FM_PEAK_CHAINS                 # independent accumulator chains in the loop

# iterations of the unrolled loop between two clock reads: ~30-70 us of FMAs at 3 GHz (every
# level), short enough that a chunk rarely loses the core, long enough that reading the clock
# (~20 ns) is noise.
cdef long CHUNK_ITERS = 4096


def fma_peak(int threads, double seconds):
    """GFLOP/s of float32 FMAs at this level on `threads` threads at once (the sum of their rates).

    Each thread runs the register-only FMA loop in chunks, warms up (max(2 ms, 10% of
    `seconds`), at most 50 ms) and then times chunks for `seconds`; its rate is its fastest
    chunk's. A thread that OpenMP did not give (no OpenMP build, a thread limit) is not counted
    twice: the rates are summed over distinct threads.
    """
    if threads < 1:
        raise ValueError(f"fma_peak: expected threads >= 1, got {threads}")
    if not seconds > 0:
        raise ValueError(f"fma_peak: expected seconds > 0, got {seconds}")
    cdef double warmup = min(max(0.002, 0.1 * seconds), 0.05)
    cdef double* rate = <double*>malloc(threads * sizeof(double))
    cdef double* sink = <double*>malloc(threads * sizeof(double))
    cdef int* tid = <int*>malloc(threads * sizeof(int))
    cdef int t
    if rate == NULL or sink == NULL or tid == NULL:
        free(rate); free(sink); free(tid)
        raise MemoryError()
    try:
        # one iteration per thread: `threads` loops running at the same time
        for t in prange(threads, nogil=True, num_threads=threads, schedule="static", chunksize=1):
            sink[t] = fm_peak_thread(seconds, warmup, CHUNK_ITERS, &rate[t])
            tid[t] = threadid()
        best = {}
        checksum = 0.0
        for t in range(threads):
            best[tid[t]] = max(best.get(tid[t], 0.0), rate[t])
            checksum += sink[t]
    finally:
        free(rate); free(sink); free(tid)
    # 0 * checksum is 0 for the finite sums the loop makes; it keeps the sums observable
    return sum(best.values()) / 1e9 + 0.0 * checksum
