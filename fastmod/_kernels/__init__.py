"""fastmod's kernels, compiled once per instruction-set level and chosen at import.

Every kernel module (``conv``, ``linear``, ...) is built three times from one source (setup.py):
``fastmod._kernels.scalar.conv`` (the platform's baseline), ``.avx2.conv`` (AVX2 + FMA) and
``.avx512.conv`` (AVX-512 F/BW/DQ/VL); the hand-written SIMD in them is written once against
``simd/fm_vec.h``. ``fastmod._kernels.conv`` -- what the module layer imports -- is a stand-in
module whose namespace is the chosen level's: at import the best level that the CPU and the OS
support (``_cpu``), or the one named by ``FASTMOD_ISA`` (scalar, avx2, avx512). ``set_isa``
switches every kernel module at once (``fastmod.set_isa``), so the same process can run and
compare every level the host supports (the tests do). ``probe`` is a kernel module too: its
``fma_peak`` is each level's float32 FMA peak (bench/compare.py reports rates against it).
"""
import functools
import importlib
import importlib.util
import os
import sys
import types
import warnings

from fastmod._kernels import _cpu

LEVELS = ("scalar", "avx2", "avx512")          # from the most portable to the fastest
MODULES = ("activations", "attention", "conv", "embedding", "linear", "losses", "norm",
           "optim", "pool", "probe", "softmax")

_active = None


def _stand_in(name):
    m = types.ModuleType("fastmod._kernels." + name,
                         f"fastmod's {name} kernels at the chosen instruction-set level "
                         "(fastmod._kernels.set_isa).")
    sys.modules[m.__name__] = m
    return m


for _name in MODULES:
    globals()[_name] = _stand_in(_name)
del _name


@functools.lru_cache(maxsize=None)
def built_isas():
    """The levels this build contains, most portable first (scalar is always there)."""
    return tuple(lv for lv in LEVELS
                 if importlib.util.find_spec(f"fastmod._kernels.{lv}.conv") is not None)


def supported_isas():
    """The levels this build contains that this CPU and OS can run."""
    return tuple(lv for lv in built_isas() if _cpu.supports(lv))


def best_isa():
    """The fastest level that is both built and supported here."""
    return supported_isas()[-1]


def get_isa():
    """The level the kernels run at now ('scalar', 'avx2' or 'avx512')."""
    return _active


def set_isa(level):
    """Run every kernel at `level` ('scalar', 'avx2', 'avx512' or 'auto' for the best one).

    Raises ValueError for an unknown level, or one this build or this CPU does not have.
    """
    global _active
    if level == "auto":
        level = best_isa()
    if level not in LEVELS:
        raise ValueError(f"set_isa: expected one of {', '.join(LEVELS + ('auto',))}, got {level!r}")
    if level not in built_isas():
        raise ValueError(f"set_isa: this build of fastmod has no {level!r} kernels "
                         f"(built: {', '.join(built_isas())})")
    if not _cpu.supports(level):
        missing = [f for f in _cpu.LEVEL_NEEDS[level] if not _cpu.features().get(f)]
        raise ValueError(f"set_isa: this CPU (or OS) cannot run {level!r} kernels: no "
                         f"{', '.join(missing)} (supported: {', '.join(supported_isas())})")
    impls = {name: importlib.import_module(f"fastmod._kernels.{level}.{name}") for name in MODULES}
    for name, impl in impls.items():
        m = globals()[name]
        keep = {"__name__": m.__name__, "__doc__": impl.__doc__, "__isa__": level}
        m.__dict__.clear()
        m.__dict__.update(impl.__dict__)
        m.__dict__.update(keep)
    _active = level
    return level


def _initial_isa():
    want = os.environ.get("FASTMOD_ISA", "").strip().lower()
    if want in ("", "auto"):
        return best_isa()
    try:
        if want not in LEVELS:
            raise ValueError(f"expected one of {', '.join(LEVELS)} or auto, got {want!r}")
        set_isa(want)
        return want
    except ValueError as e:
        warnings.warn(f"FASTMOD_ISA={want}: {e}; using {best_isa()!r}", RuntimeWarning, stacklevel=2)
        return best_isa()


set_isa(_initial_isa())
