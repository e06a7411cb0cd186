# cython: language_level=3
"""CPU features, for choosing the kernels' instruction-set level (fastmod/_kernels/__init__.py).

Compiled once, for the baseline of the platform (it runs before any level is chosen). The
detection itself is simd/fm_cpu.h: CPUID masked by what the OS enables (XGETBV).
"""

cdef extern from "fm_cpu.h":
    int fm_cpu_is_x86() noexcept nogil
    unsigned fm_cpu_features() noexcept nogil
    void fm_cpu_brand(char* out) noexcept nogil
    enum:
        FM_CPU_SSE2, FM_CPU_AVX, FM_CPU_AVX2, FM_CPU_FMA, FM_CPU_F16C, FM_CPU_AVX512F,
        FM_CPU_AVX512BW, FM_CPU_AVX512DQ, FM_CPU_AVX512VL, FM_CPU_AVX512VNNI,
        FM_CPU_AVX512BF16, FM_CPU_AVX512FP16, FM_CPU_AMX

_NAMES = (
    ("sse2", FM_CPU_SSE2), ("avx", FM_CPU_AVX), ("avx2", FM_CPU_AVX2), ("fma", FM_CPU_FMA),
    ("f16c", FM_CPU_F16C), ("avx512f", FM_CPU_AVX512F), ("avx512bw", FM_CPU_AVX512BW),
    ("avx512dq", FM_CPU_AVX512DQ), ("avx512vl", FM_CPU_AVX512VL),
    ("avx512_vnni", FM_CPU_AVX512VNNI), ("avx512_bf16", FM_CPU_AVX512BF16),
    ("avx512_fp16", FM_CPU_AVX512FP16), ("amx_tile", FM_CPU_AMX),
)

# what each kernel level needs (fm_vec.h's FM_LEVEL 1 and 2)
LEVEL_NEEDS = {
    "scalar": (),
    "avx2": ("avx", "avx2", "fma", "f16c"),
    "avx512": ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"),
}


def is_x86():
    """True when this build runs on x86 (CPUID available)."""
    return bool(fm_cpu_is_x86())


def features():
    """{name: bool} of the SIMD features that both the CPU and the OS support."""
    cdef unsigned f = fm_cpu_features()
    return {name: bool(f & bit) for name, bit in _NAMES}


def brand():
    """The CPU's brand string (CPUID), or '' when there is none."""
    cdef char buf[49]
    fm_cpu_brand(buf)
    return buf[:48].split(b"\0", 1)[0].decode("ascii", "replace").strip()


def supports(level):
    """True when the CPU and OS support every feature the kernel level `level` needs."""
    f = features()
    return all(f.get(n, False) for n in LEVEL_NEEDS[level])


cdef extern from *:
    """
    #ifndef FM_BUILD_CC
    #define FM_BUILD_CC "?"
    #endif
    #ifndef FM_BUILD_LEVELS
    #define FM_BUILD_LEVELS "scalar"
    #endif
    #ifndef FM_BUILD_FLAGS_SCALAR
    #define FM_BUILD_FLAGS_SCALAR ""
    #endif
    #ifndef FM_BUILD_FLAGS_AVX2
    #define FM_BUILD_FLAGS_AVX2 ""
    #endif
    #ifndef FM_BUILD_FLAGS_AVX512
    #define FM_BUILD_FLAGS_AVX512 ""
    #endif
    #if defined(__clang__)
    #define FM_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define FM_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
    #define FM_COMPILER "msvc"
    #else
    #define FM_COMPILER "unknown"
    #endif
    """
    const char* FM_BUILD_CC
    const char* FM_BUILD_LEVELS
    const char* FM_BUILD_FLAGS_SCALAR
    const char* FM_BUILD_FLAGS_AVX2
    const char* FM_BUILD_FLAGS_AVX512
    const char* FM_COMPILER


def build_info():
    """How the kernels were compiled: {'compiler', 'cc', 'flags': {level: flags}} (setup.py)."""
    levels = FM_BUILD_LEVELS.decode().split(",")
    flags = {"scalar": FM_BUILD_FLAGS_SCALAR, "avx2": FM_BUILD_FLAGS_AVX2,
             "avx512": FM_BUILD_FLAGS_AVX512}
    return {"compiler": FM_COMPILER.decode(), "cc": FM_BUILD_CC.decode(),
            "flags": {lv: flags[lv].decode() for lv in levels if lv in flags}}
