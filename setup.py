"""Build fastmod's Cython kernels.

Every ``fastmod/_kernels/*.pyx`` becomes an extension compiled with -O3 and OpenMP when the
compiler supports it (otherwise the kernels run serially and a warning is printed).

Environment switches:
  FASTMOD_DEBUG=1      boundscheck/wraparound on, -O0 -g (a debug build the tests can use)
  FASTMOD_PORTABLE=1   no -march=native (for wheels meant to run on other machines)
  FASTMOD_KERNELS=a,b  build only these kernel modules (fast iteration during development)
"""
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEBUG = os.environ.get("FASTMOD_DEBUG", "") not in ("", "0")
PORTABLE = os.environ.get("FASTMOD_PORTABLE", "") not in ("", "0")
ONLY = [s.strip() for s in os.environ.get("FASTMOD_KERNELS", "").split(",") if s.strip()]


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
    compile_args += ["-fno-math-errno", "-Wno-unused-function", "-Wno-maybe-uninitialized"]
    if not PORTABLE and not DEBUG and _compiles(["-march=native"]):
        compile_args.append("-march=native")
if HAVE_OPENMP:
    compile_args += OMP_COMPILE
    link_args += OMP_LINK

# FASTMOD_SANITIZE=1: AddressSanitizer + UndefinedBehaviorSanitizer build (-O1 -g, frame
# pointers), for running the test suite under the sanitizers (CONTRIBUTING.md has the command:
# Python itself is not instrumented, so libasan is preloaded). The instruction-set flags are
# kept as the other switches set them, so the default build checks the SIMD paths and
# FASTMOD_PORTABLE=1 the scalar ones. -fno-wrapv undoes Python's -fwrapv, which would hide
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

extensions = []
for pyx in sorted(glob.glob(os.path.join("fastmod", "_kernels", "*.pyx"))):
    name = os.path.splitext(os.path.basename(pyx))[0]
    if ONLY and name not in ONLY:
        continue
    extensions.append(Extension(
        "fastmod._kernels." + name, [pyx],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args, extra_link_args=link_args,
    ))

from Cython.Build import cythonize  # noqa: E402  (after the probes, so a missing Cython fails clearly)

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives,
                          nthreads=int(os.environ.get("FASTMOD_BUILD_JOBS", "0") or 0)),
    zip_safe=False,
)
