"""fastmod.show_config(): what this fastmod runs on and how it was built.

Like numpy.show_config() / torch.__config__.show(): the CPU and the SIMD features found (CPUID,
masked by what the OS enables), the kernels' instruction-set level (chosen at import, FASTMOD_ISA
or fastmod.set_isa to change it), the levels built and supported, the BLAS libraries (SciPy's
OpenBLAS, the one every fastmod GEMM calls, and its core type), thread counts and the compiler
flags of each level.
"""
import os
import platform
import sys

from fastmod import _kernels
from fastmod._kernels import _cpu

ISA_ENV = ("FASTMOD_ISA", "FASTMOD_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_CORETYPE",
           "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "FASTMOD_MALLOC")


def set_isa(level):
    """Run fastmod's kernels at instruction-set level `level`: 'scalar', 'avx2', 'avx512', or
    'auto' (the best this CPU supports, chosen at import unless FASTMOD_ISA says otherwise).
    Every level computes the same results within float rounding. Returns the level set.
    Raises ValueError for a level this build or this CPU does not have."""
    return _kernels.set_isa(level)


def get_isa():
    """The instruction-set level fastmod's kernels run at now."""
    return _kernels.get_isa()


def supported_isas():
    """The levels this build has and this CPU (and OS) can run, most portable first."""
    return _kernels.supported_isas()


def _blas_libraries():
    """[{'user', 'library', 'version', 'core type', 'threads', 'path'}] from threadpoolctl."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    from fastmod import _runtime
    scipy_path = os.path.realpath(_runtime._SCIPY_BLAS_PATH) if _runtime._SCIPY_BLAS_PATH else None
    out = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        path = info.get("filepath", "")
        user = "scipy (fastmod's GEMMs)" if scipy_path and os.path.realpath(path) == scipy_path else "other"
        if "numpy" in path and user == "other":
            user = "numpy"
        out.append({"user": user, "library": info.get("internal_api", "?"),
                    "version": info.get("version"), "core type": info.get("architecture"),
                    "threads": info.get("num_threads"), "path": path})
    return out


def config_info():
    """show_config's content as a dict."""
    import numpy
    import scipy
    from fastmod import __version__, _runtime
    feats = _cpu.features()
    return {
        "fastmod": __version__,
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu": _cpu.brand() or platform.processor() or "?",
        "cpu features": [name for name, on in feats.items() if on],
        "isa": _kernels.get_isa(),
        "isas built": list(_kernels.built_isas()),
        "isas supported": list(_kernels.supported_isas()),
        "threads": _runtime.get_num_threads(),
        "openmp": _runtime.have_openmp(),
        "blas": _blas_libraries(),
        "build": _cpu.build_info(),
        "environment": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
    }


def show_config(file=None):
    """Print what fastmod runs on (CPU features, instruction-set level, BLAS and its core type,
    threads) and how it was built (compiler and flags per level)."""
    info = config_info()
    out = file or sys.stdout
    w = lambda s="": print(s, file=out)    # noqa: E731
    w(f"fastmod {info['fastmod']} (Python {info['python']}, NumPy {info['numpy']}, "
      f"SciPy {info['scipy']}) on {info['platform']}")
    w(f"CPU: {info['cpu']}")
    w(f"  SIMD features (CPU and OS): {' '.join(info['cpu features']) or 'none detected'}")
    w(f"Kernels: instruction-set level {info['isa']!r}   built: {', '.join(info['isas built'])}"
      f"   supported here: {', '.join(info['isas supported'])}")
    w("  (FASTMOD_ISA=scalar|avx2|avx512 at import, or fastmod.set_isa(level), changes it)")
    w(f"Threads: {info['threads']} (OpenMP {'on' if info['openmp'] else 'off: kernels run serially'});"
      " SciPy's BLAS kept at 1 thread inside fastmod's parallel loops")
    w("BLAS:")
    for b in info["blas"] or [{"user": "?", "library": "threadpoolctl not installed", "version": None,
                               "core type": None, "threads": None, "path": ""}]:
        w(f"  {b['user']}: {b['library']} {b['version'] or ''}, core type {b['core type']}, "
          f"{b['threads']} threads  {b['path']}")
    w(f"Compiler: {info['build']['compiler']} ({info['build']['cc']})")
    for lv, flags in info["build"]["flags"].items():
        w(f"  {lv}: {flags}")
    if info["environment"]:
        w("Environment: " + "  ".join(f"{k}={v}" for k, v in info["environment"].items()))
