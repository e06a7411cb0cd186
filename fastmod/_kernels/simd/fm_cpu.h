/* What this CPU and OS support (fastmod/_kernels/_cpu.pyx): CPUID feature bits, masked by what
 * the OS saves on a context switch (XGETBV: YMM state for AVX/AVX2/FMA, ZMM + opmask state for
 * AVX-512). A feature the CPU has but the OS does not enable is reported absent. Compiled once,
 * for the baseline; non-x86 builds report nothing (only the scalar level is built there).
 */
#ifndef FM_CPU_H
#define FM_CPU_H
#include <string.h>

enum {
    FM_CPU_SSE2 = 1 << 0, FM_CPU_AVX = 1 << 1, FM_CPU_AVX2 = 1 << 2, FM_CPU_FMA = 1 << 3,
    FM_CPU_F16C = 1 << 4, FM_CPU_AVX512F = 1 << 5, FM_CPU_AVX512BW = 1 << 6,
    FM_CPU_AVX512DQ = 1 << 7, FM_CPU_AVX512VL = 1 << 8, FM_CPU_AVX512VNNI = 1 << 9,
    FM_CPU_AVX512BF16 = 1 << 10, FM_CPU_AVX512FP16 = 1 << 11, FM_CPU_AMX = 1 << 12
};

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define FM_CPU_X86 1
static void fm_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
}
static unsigned long long fm_xgetbv0(void) {
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
}
#elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
#include <intrin.h>
#include <immintrin.h>
#define FM_CPU_X86 1
static void fm_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) { __cpuidex((int*)r, (int)leaf, (int)sub); }
static unsigned long long fm_xgetbv0(void) { return _xgetbv(0); }
#else
#define FM_CPU_X86 0
#endif

static int fm_cpu_is_x86(void) { return FM_CPU_X86; }

static unsigned fm_cpu_features(void) {
    unsigned f = 0;
#if FM_CPU_X86
    unsigned r[4], maxleaf, b7 = 0, c7 = 0, d7 = 0, a71 = 0;
    unsigned long long xcr0 = 0;
    int ymm, zmm;
    fm_cpuid(0, 0, r);
    maxleaf = r[0];
    if (maxleaf < 1) return 0;
    fm_cpuid(1, 0, r);
    if (r[3] & (1u << 26)) f |= FM_CPU_SSE2;
    if (r[2] & (1u << 27)) xcr0 = fm_xgetbv0();            /* OSXSAVE */
    ymm = (xcr0 & 0x6) == 0x6;                              /* XMM + YMM state */
    zmm = (xcr0 & 0xe6) == 0xe6;                            /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (ymm && (r[2] & (1u << 28))) f |= FM_CPU_AVX;
    if (ymm && (r[2] & (1u << 12))) f |= FM_CPU_FMA;
    if (ymm && (r[2] & (1u << 29))) f |= FM_CPU_F16C;
    if (maxleaf >= 7) {
        fm_cpuid(7, 0, r);
        b7 = r[1]; c7 = r[2]; d7 = r[3];
        fm_cpuid(7, 1, r);
        a71 = r[0];
    }
    if (ymm && (b7 & (1u << 5))) f |= FM_CPU_AVX2;
    if (zmm) {
        if (b7 & (1u << 16)) f |= FM_CPU_AVX512F;
        if (b7 & (1u << 30)) f |= FM_CPU_AVX512BW;
        if (b7 & (1u << 17)) f |= FM_CPU_AVX512DQ;
        if (b7 & (1u << 31)) f |= FM_CPU_AVX512VL;
        if (c7 & (1u << 11)) f |= FM_CPU_AVX512VNNI;
        if (a71 & (1u << 5)) f |= FM_CPU_AVX512BF16;
        if (d7 & (1u << 23)) f |= FM_CPU_AVX512FP16;
    }
    if (d7 & (1u << 24)) f |= FM_CPU_AMX;                  /* AMX-TILE (reported, not used) */
#endif
    return f;
}

/* the CPU's brand string ("" where CPUID has none) */
static void fm_cpu_brand(char out[49]) {
    memset(out, 0, 49);
#if FM_CPU_X86
    unsigned r[4], i;
    fm_cpuid(0x80000000u, 0, r);
    if (r[0] < 0x80000004u) return;
    for (i = 0; i < 3; i++) {
        fm_cpuid(0x80000002u + i, 0, r);
        memcpy(out + 16 * i, r, 16);
    }
#endif
}
#endif /* FM_CPU_H */
