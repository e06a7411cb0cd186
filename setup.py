"""Build fastmod's Cython kernels.

Every kernel module ``fastmod/_kernels/<name>.pyx`` is cythonized once and its C compiled once
per instruction-set level, into ``fastmod._kernels.<level>.<name>``:

  scalar   the platform's baseline (x86-64: SSE2; also aarch64 and anything else)
  avx2     -mavx2 -mfma -mf16c                                   (x86 only)
  avx512   -mavx512f -mavx512bw -mavx512dq -mavx512vl + AVX2/FMA (x86 only)

``fastmod/_kernels/__init__.py`` picks the best level the CPU and OS support at import
(FASTMOD_ISA overrides), so one build -- a wheel -- runs at full speed on any x86-64 CPU and
never executes an instruction the CPU lacks. The hand-written SIMD is written once against
``fastmod/_kernels/simd/fm_vec.h`` (FM_W lanes per level). ``_threads`` and ``_cpu`` are built
once (baseline). -O3 and OpenMP when the compiler supports it (otherwise the kernels run
serially and a warning is printed). No -march=native unless asked for.

Environment switches:
  FASTMOD_DEBUG=1      boundscheck/wraparound on, -O0 -g (a debug build the tests can use)
  FASTMOD_NATIVE=1     add -march=native to every level (a build for this machine only)
  FASTMOD_ISAS=a,b     build only these levels (scalar is always built; fast development builds)
  FASTMOD_KERNELS=a,b  build only these kernel modules (fast iteration during development)
  FASTMOD_BUILD_JOBS=n parallel compile jobs (default: the number of cores)
"""
import glob
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("FASTMOD_DEBUG", "") not in ("", "0")
NATIVE = os.environ.get("FASTMOD_NATIVE", "") not in ("", "0")
ONLY = [s.strip() for s in os.environ.get("FASTMOD_KERNELS", "").split(",") if s.strip()]
ONLY_ISAS = [s.strip() for s in os.environ.get("FASTMOD_ISAS", "").split(",") if s.strip()]
JOBS = int(os.environ.get("FASTMOD_BUILD_JOBS", "0") or 0) or (os.cpu_count() or 1)


def _compiles(flags, link_flags=(), source="int main(void){return 0;}\n"):
    """True when the C compiler accepts `flags` on a tiny program (used to probe -fopenmp)."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()
    d = tempfile.mkdtemp()
    try:
        src = os.path.join(d, "t.c")
        with open(src, "w") as f:
            f.write(source)
        cmd = cc + list(flags) + [src, "-o", os.path.join(d, "t.out")] + list(link_flags)
        return subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(d, ignore_errors=True)


OMP_SRC = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel\n{n=omp_get_num_threads();}\nreturn n<0;}\n"
if sys.platform == "win32":
    OMP_COMPILE, OMP_LINK = ["/openmp"], []
else:
    OMP_COMPILE, OMP_LINK = ["-fopenmp"], ["-fopenmp"]
HAVE_OPENMP = sys.platform == "win32" or _compiles(OMP_COMPILE, OMP_LINK, OMP_SRC)
if not HAVE_OPENMP:
    print("*** fastmod: the C compiler does not support OpenMP; kernels will run on one thread. "
          "(On macOS: brew install libomp and set CC to an OpenMP-capable compiler.)", file=sys.stderr)

compile_args, link_args = [], []
if sys.platform != "win32":
    compile_args += ["-O0", "-g"] if DEBUG else ["-O3"]
    compile_args += ["-fno-math-errno", "-Wno-unused-function"]
    if _compiles(["-Werror", "-Wno-maybe-uninitialized"]):      # gcc's; clang warns about it
        compile_args.append("-Wno-maybe-uninitialized")
    if NATIVE and _compiles(["-march=native"]):
        compile_args.append("-march=native")
if HAVE_OPENMP:
    compile_args += OMP_COMPILE
    link_args += OMP_LINK

# FASTMOD_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer build (-O1 -g, frame
# pointers), for running the test suite under the sanitizers (CONTRIBUTING.md has the command:
# Python itself is not instrumented, so libasan is preloaded). Every instruction-set level is
# instrumented (the suite runs each one: scalar, avx2, avx512). -fno-wrapv undoes Python's -fwrapv, which would hide
# signed overflow from UBSan; float-cast-overflow (a NaN or out-of-range float converted to an
# integer) is not part of GCC's "undefined". Build with --force after a normal build.
if os.environ.get("FASTMOD_SANITIZE", "") not in ("", "0") and sys.platform != "win32":
    SANITIZE_FLAGS = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-omit-frame-pointer"]
    compile_args = [a for a in compile_args if not a.startswith("-O")] + SANITIZE_FLAGS + [
        "-fno-wrapv", "-g", "-O1"]
    link_args += SANITIZE_FLAGS

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "nonecheck": False,
    "embedsignature": True,
}

# instruction-set levels: (name, FM_LEVEL, flags); a level is built when the compiler takes
# its flags (x86 only for avx2 / avx512). The MSVC flags are /arch:AVX2 and /arch:AVX512.
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
AVX2 = ["/arch:AVX2"] if sys.platform == "win32" else ["-mavx2", "-mfma", "-mf16c"]
AVX512 = (["/arch:AVX512"] if sys.platform == "win32" else
          AVX2 + ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"])
LEVELS = [("scalar", 0, [])]
if X86:
    LEVELS += [("avx2", 1, AVX2), ("avx512", 2, AVX512)]
if ONLY_ISAS:
    LEVELS = [lv for lv in LEVELS if lv[0] == "scalar" or lv[0] in ONLY_ISAS]
if sys.platform != "win32":
    LEVELS = [lv for lv in LEVELS if not lv[2] or _compiles(lv[2])]

SIMD_DIR = os.path.join("fastmod", "_kernels", "simd")
SIMD_HEADERS = sorted(glob.glob(os.path.join(SIMD_DIR, "*.h")))
SINGLE = ("_threads", "_cpu", "_alloc")   # built once, for the baseline (shared state)

base = []
for pyx in sorted(glob.glob(os.path.join("fastmod", "_kernels", "*.pyx"))):
    name = os.path.splitext(os.path.basename(pyx))[0]
    if ONLY and name not in ONLY and name not in SINGLE:
        continue
    base.append(Extension(
        "fastmod._kernels." + name, [pyx],
        include_dirs=[np.get_include(), SIMD_DIR],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args, extra_link_args=link_args,
        depends=SIMD_HEADERS,
    ))

from Cython.Build import cythonize  # noqa: E402  (after the probes, so a missing Cython fails clearly)
from setuptools.command.build_ext import build_ext  # noqa: E402

# Cython writes one C file per .pyx; each kernel module's C is then compiled once per level.
# The module's init function (PyInit_<name>) and its code are the same at every level, so
# fastmod._kernels.avx2.conv is conv.pyx compiled with -DFM_LEVEL=1 and the AVX2 flags.
# what fastmod.show_config() reports: the compiler and each level's flags, baked into _cpu
def _c_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


BUILD_INFO = [("FM_BUILD_CC", _c_string(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")),
              ("FM_BUILD_LEVELS", _c_string(",".join(lv[0] for lv in LEVELS)))]
BUILD_INFO += [("FM_BUILD_FLAGS_" + lv[0].upper(), _c_string(" ".join(compile_args + lv[2]))) for lv in LEVELS]

def _level_source(c_file, level):
    """build/fm_levels/<level>/<name>.c: one line including the module's generated C. Each level
    compiles its own file, so its object file has its own path (compiled from the shared .c,
    the levels' objects had one path in build_temp: parallel builds raced, and an avx512 module
    was once linked from the avx2 object)."""
    path = os.path.join("build", "fm_levels", level, os.path.basename(c_file))
    text = '#include "%s"\n' % os.path.abspath(c_file).replace(os.sep, "/")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path) or open(path).read() != text:
        with open(path, "w") as f:
            f.write(text)
    return path


extensions = []
for ext in cythonize(base, compiler_directives=directives, nthreads=JOBS if JOBS > 1 else 0):
    name = ext.name.rsplit(".", 1)[1]
    if name in SINGLE:
        if name == "_cpu":
            ext.define_macros = list(ext.define_macros) + BUILD_INFO
        extensions.append(ext)
        continue
    for level, num, flags in LEVELS:
        extensions.append(Extension(
            "fastmod._kernels.%s.%s" % (level, name), [_level_source(ext.sources[0], level)],
            include_dirs=list(ext.include_dirs),
            define_macros=list(ext.define_macros) + [("FM_LEVEL", str(num))],
            extra_compile_args=list(ext.extra_compile_args) + flags,
            extra_link_args=list(ext.extra_link_args),
            depends=list(ext.depends) + list(ext.sources),
        ))


class BuildExt(build_ext):
    """build_ext compiling extensions in parallel (FASTMOD_BUILD_JOBS, default: all cores)."""

    def finalize_options(self):
        super().finalize_options()
        if not self.parallel and JOBS > 1:
            self.parallel = JOBS


setup(
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
