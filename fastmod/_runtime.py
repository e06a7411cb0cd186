"""Process-wide state: thread count (OpenMP + BLAS), grad mode, forward-pass counter, RNG.

Threads: fastmod.set_num_threads(n) sets OpenMP's count and SciPy's OpenBLAS (the library that
scipy.linalg.cython_blas, hence every fastmod GEMM, calls). NumPy's own OpenBLAS is limited too
through threadpoolctl, so nothing else oversubscribes the cores. The initial count comes from
FASTMOD_NUM_THREADS, else OMP_NUM_THREADS, else the number of usable cores.
"""
import ctypes
import os
import threading

import numpy as np

from fastmod._kernels import _threads


class _State(threading.local):
    def __init__(self):
        self.grad_enabled = True
        self.depth = 0          # nesting depth of Module.__call__
        self.pass_id = 0        # incremented at each top-level forward call


STATE = _State()


# ---------------------------------------------------------------- threads
def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        return os.cpu_count() or 1


def _openblas_candidates():
    """Paths of loaded OpenBLAS libraries, SciPy's first (the one cython_blas calls)."""
    import glob
    import scipy
    import scipy.linalg.cython_blas  # noqa: F401  (loads SciPy's BLAS)
    site = os.path.dirname(os.path.dirname(scipy.__file__))
    paths = []
    for pattern in ("scipy.libs/*openblas*", "scipy/.dylibs/*openblas*", "scipy.libs/*blas*"):
        paths += sorted(glob.glob(os.path.join(site, pattern)))
    try:
        from threadpoolctl import threadpool_info
        paths += [i["filepath"] for i in threadpool_info() if i.get("internal_api") == "openblas"]
    except ImportError:
        pass
    return list(dict.fromkeys(paths))


def _find_scipy_openblas():
    """(path, set_num_threads address, get_num_threads address) of SciPy's OpenBLAS, or
    (None, 0, 0) when it cannot be found (then fastmod cannot pin it: see set_num_threads)."""
    try:
        paths = _openblas_candidates()
    except ImportError:
        return None, 0, 0
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for p in ("scipy_openblas", "openblas", "scipy_openblas64_", "openblas64_"):
            setter = getattr(lib, p + "_set_num_threads", None)
            getter = getattr(lib, p + "_get_num_threads", None)
            if setter is not None and getter is not None:
                return (path, ctypes.cast(setter, ctypes.c_void_p).value or 0,
                        ctypes.cast(getter, ctypes.c_void_p).value or 0)
    return None, 0, 0


_SCIPY_BLAS_PATH, _set_addr, _get_addr = _find_scipy_openblas()
_threads.set_blas_functions(_set_addr, _get_addr)


def _default_threads():
    for var in ("FASTMOD_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "").strip()
        if v:
            try:
                n = int(v.split(",")[0])
            except ValueError:
                raise ValueError(f"{var}={v!r}: expected a positive integer") from None
            if n < 1:
                raise ValueError(f"{var}={v!r}: expected a positive integer")
            return n
    return _usable_cores()


_other_blas = None   # threadpoolctl controllers of the other BLAS libraries, found once


def _limit_other_blas(n):
    """Cap every other BLAS in the process (NumPy's) at n threads; SciPy's stays fastmod's.
    Scanning the loaded libraries costs ~8 ms, so it is done once; libraries loaded later
    (rare) are not seen."""
    global _other_blas
    if _other_blas is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _other_blas = []
            return
        scipy_blas = os.path.realpath(_SCIPY_BLAS_PATH) if _SCIPY_BLAS_PATH else None
        _other_blas = [lib for lib in ThreadpoolController().lib_controllers
                       if lib.user_api == "blas" and os.path.realpath(lib.filepath) != scipy_blas]
    for lib in _other_blas:
        try:
            lib.set_num_threads(n)
        except Exception:  # a library that refuses is left as it is
            pass


def set_num_threads(n):
    """Use `n` threads for fastmod's kernels (OpenMP loops and the GEMMs they split), and cap
    NumPy's BLAS at n. SciPy's OpenBLAS itself is kept at one thread: fastmod splits each GEMM
    over its own OpenMP threads, so only one thread pool ever runs."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"set_num_threads: expected a positive integer, got {n!r}")
    n = int(n)
    _threads.set_threads(n)
    _limit_other_blas(n)


def get_num_threads():
    """The thread count fastmod's kernels use."""
    return _threads.get_threads()


def have_openmp():
    """True when the kernels were compiled with OpenMP (else they run on one thread)."""
    return _threads.have_openmp()


set_num_threads(_default_threads())


# ---------------------------------------------------------------- memory allocator
# Activations and gradients are fresh NumPy arrays of megabytes at every step. glibc serves such
# blocks with mmap and gives them back to the kernel when freed (or trims the heap top), so the
# next step faults every page in again and the kernel zeroes it: measured here at 1 thread,
# 1,200-3,000 page faults per inference step, 11-27% of the step (transformer_b16 62.6 ->
# 55.4 ms, conv1d_b64 25.5 -> 18.7 ms, bnresnet_b32 61.9 -> 54.6 ms with the setting below).
# fastmod therefore asks glibc to serve blocks below MALLOC_MMAP_BYTES from the heap and to keep
# up to MALLOC_KEEP_BYTES of freed heap for reuse (torch's CPU allocator faults 4-17x less
# for the same models). The setting is process-wide; FASTMOD_MALLOC=system at import leaves
# malloc as it is. Not glibc (macOS, musl): nothing is done.
MALLOC_MMAP_BYTES = 64 << 20
MALLOC_KEEP_BYTES = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3       # glibc's mallopt parameter numbers


def _tune_malloc():
    """Apply the allocator setting above; True when glibc accepted it."""
    choice = os.environ.get("FASTMOD_MALLOC", "").strip().lower()
    if choice == "system":
        return False
    if choice not in ("", "reuse"):
        raise ValueError(f"FASTMOD_MALLOC={choice!r}: expected 'reuse' (default) or 'system'")
    import platform
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_BYTES)) and \
        bool(mallopt(_M_TRIM_THRESHOLD, MALLOC_KEEP_BYTES))


MALLOC_TUNED = _tune_malloc()


# ---------------------------------------------------------------- grad mode
class no_grad:
    """Context manager / decorator (`@no_grad()` or `@no_grad`): forward passes keep nothing
    for backward (inference)."""

    def __new__(cls, fn=None):
        self = super().__new__(cls)
        return self if fn is None else self(fn)     # bare `@no_grad` decorates fn directly

    def __enter__(self):
        self._prev = STATE.grad_enabled
        STATE.grad_enabled = False
        return self

    def __exit__(self, *exc):
        STATE.grad_enabled = self._prev
        return False

    def __call__(self, fn):
        import functools

        if not callable(fn):
            raise TypeError(f"{type(self).__name__}: expected a function to decorate, got {type(fn).__name__}")
        cls = type(self)                             # enable_grad decorates with enable_grad

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with cls():
                return fn(*args, **kwargs)
        return wrapper


class enable_grad(no_grad):
    """Context manager / decorator: re-enable saving for backward inside a no_grad block."""

    def __enter__(self):
        self._prev = STATE.grad_enabled
        STATE.grad_enabled = True
        return self


def is_grad_enabled():
    return STATE.grad_enabled


# ---------------------------------------------------------------- random numbers
_rng = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator behind parameter initialization and dropout (as torch.manual_seed)."""
    global _rng
    _rng = np.random.default_rng(seed)
    return _rng


def default_generator():
    return _rng


def get_rng_state():
    return _rng.bit_generator.state


def set_rng_state(state):
    _rng.bit_generator.state = state
