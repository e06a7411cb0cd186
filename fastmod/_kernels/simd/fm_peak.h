/* The machine's float32 FMA peak at one instruction-set level (fastmod/_kernels/probe.pyx):
 * a register-only loop of independent fused multiply-adds, written once against fm_vec.h.
 *
 * A core issues at most P FMAs per cycle (P = 2 FMA ports on recent x86 server cores) and each
 * has a latency of L cycles (4 on Intel since Skylake and on Zen 4/5), so it takes P * L = 8
 * independent chains to keep the ports busy; the loop runs FM_PEAK_CHAINS of them (16 where
 * there are 32 vector registers, AVX-512; 12 where there are 16), unrolled FM_PEAK_UNROLL times
 * so that the loop counter and branch stay in the shadow of the FMAs.
 *
 * Each chain is x = x * a + b with a = 1 - 2^-12 and b = 2^-12: x converges to 1, never
 * denormal, never infinite (a denormal operand would cost a microcode assist). An empty asm
 * statement per chain and step ("the value is in a vector register and may have changed")
 * keeps the compiler from merging chains, packing the scalar level's chains into one SSE vector
 * (its peak is the scalar one: 1 lane per operation) or dropping the work; the caller also
 * folds the returned sum into its result. At the scalar level fm_vfma is a*b + c, which the
 * baseline x86-64 target computes as mulss + addss (2 FLOPs a step either way; the chain is
 * then twice as long, and 12 chains still cover it).
 *
 * The avx512 build's loop is 64 `vfmadd132ps zmm, zmm, zmm` and the counter, nothing touching
 * memory (objdump -d, fm_peak_fma_loop). One core of the Xeon (Sapphire Rapids class) we develop
 * on: avx512 249, avx2 134, scalar 11.5 GFLOP/s -- 64, 32 and ~3 FLOPs per cycle at ~3.9 GHz.
 *
 * Timing: fm_peak_now() is a monotonic wall clock in seconds.
 */
#ifndef FM_PEAK_H
#define FM_PEAK_H
#include "fm_vec.h"

#if defined(_WIN32)
#  include <windows.h>
static double fm_peak_now(void) {
    LARGE_INTEGER f, t;
    QueryPerformanceFrequency(&f);
    QueryPerformanceCounter(&t);
    return (double)t.QuadPart / (double)f.QuadPart;
}
#else
#  include <time.h>
static double fm_peak_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#endif

#if FM_LEVEL == 2
#  define FM_PEAK_CHAINS 16
#else
#  define FM_PEAK_CHAINS 12
#endif
#define FM_PEAK_UNROLL 4

/* "x lives in a vector register here and may have changed" (no instruction is emitted) */
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#  define FM_PEAK_OPAQUE(x) __asm__ volatile("" : "+v"(x))
#elif defined(__GNUC__) && defined(__aarch64__)
#  define FM_PEAK_OPAQUE(x) __asm__ volatile("" : "+w"(x))
#else
#  define FM_PEAK_OPAQUE(x) ((void)0)
#endif

/* FLOPs one call of fm_peak_fma_loop(iters, ...) performs */
static inline double fm_peak_flops(long iters) {
    return 2.0 * FM_W * FM_PEAK_CHAINS * FM_PEAK_UNROLL * (double)iters;
}

/* one chain's step; the chains are named variables, not an array, so that they live in
   registers (GCC kept an array of them on the stack: a store and a load per chain and round) */
#define FM_PEAK_STEP(x) do { x = fm_vfma(x, va, vb); FM_PEAK_OPAQUE(x); } while (0)
#if FM_PEAK_CHAINS == 16
#  define FM_PEAK_HI(M) M(x12) M(x13) M(x14) M(x15)
#else
#  define FM_PEAK_HI(M)
#endif
#define FM_PEAK_EACH(M) M(x0) M(x1) M(x2) M(x3) M(x4) M(x5) M(x6) M(x7) M(x8) M(x9) M(x10) M(x11) \
                        FM_PEAK_HI(M)
#define FM_PEAK_DECL(x) fm_vf x = fm_vset1(start); start += b;   /* distinct starts: nothing to merge */
#define FM_PEAK_ONE(x) FM_PEAK_STEP(x);
#define FM_PEAK_SUM(x) s = fm_vadd(s, x);

/* iters * FM_PEAK_UNROLL * FM_PEAK_CHAINS vector FMAs; returns the sum of the chains' lanes.
   Not inlined, so that its loop is one block to read in `objdump -d` (fm_peak_fma_loop). */
#if defined(__GNUC__)
__attribute__((noinline))
#endif
static float fm_peak_fma_loop(long iters, float a, float b) {
    fm_vf va = fm_vset1(a), vb = fm_vset1(b), s = fm_vzero();
    float start = 1.0f;
    long it;
    FM_PEAK_EACH(FM_PEAK_DECL)
    for (it = 0; it < iters; it++) {
        FM_PEAK_EACH(FM_PEAK_ONE) FM_PEAK_EACH(FM_PEAK_ONE)      /* FM_PEAK_UNROLL rounds */
        FM_PEAK_EACH(FM_PEAK_ONE) FM_PEAK_EACH(FM_PEAK_ONE)
    }
    FM_PEAK_EACH(FM_PEAK_SUM)
    return fm_vhsum(s);
}

/* One thread's peak: run fm_peak_fma_loop in chunks of `chunk_iters` for `warmup` seconds (the
   clock ramps up, and Intel cores run 512-bit FMAs at reduced throughput for the first ~10-20 us
   while the upper lanes power on), then for `seconds` more; *best_rate = the FLOP/s of the
   fastest chunk (a chunk that lost the core to another process does not count: a peak, like
   compare.py's SGEMM rate, is the fastest of the repeats). Returns the chains' sum. */
static double fm_peak_thread(double seconds, double warmup, long chunk_iters, double* best_rate) {
    double sink = 0.0, t0, t1, best = 0.0, end, flops = fm_peak_flops(chunk_iters);
    const float a = 1.0f - 1.0f / 4096.0f, b = 1.0f / 4096.0f;
    end = fm_peak_now() + warmup;
    do {
        sink += fm_peak_fma_loop(chunk_iters, a, b);
    } while (fm_peak_now() < end);
    t0 = fm_peak_now();
    end = t0 + seconds;
    do {
        sink += fm_peak_fma_loop(chunk_iters, a, b);
        t1 = fm_peak_now();
        if (t1 > t0 && flops / (t1 - t0) > best)
            best = flops / (t1 - t0);
        t0 = t1;
    } while (t1 < end);
    *best_rate = best;
    return sink;
}

#endif /* FM_PEAK_H */
