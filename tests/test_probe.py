"""fastmod._kernels.<isa>.probe: the float32 FMA peak per instruction-set level (bench/compare.py).

Sanity only -- a positive finite rate at every level this CPU supports, wider levels not far
below narrower ones -- never a timing bound: the tests run on loaded machines.
"""
import importlib
import math

import pytest

from fastmod import _kernels

SECONDS = 0.003          # a few ms of looping per call
LANES = {"scalar": 1, "avx2": 8, "avx512": 16}


def _probe(isa):
    return importlib.import_module(f"fastmod._kernels.{isa}.probe")


@pytest.mark.parametrize("level", _kernels.supported_isas())
def test_fma_peak_positive_at_every_level(level):
    p = _probe(level)
    assert p.ISA == level and p.LANES == LANES[level] and p.CHAINS >= 8
    for threads in (1, 2):
        rate = p.fma_peak(threads, SECONDS)
        assert math.isfinite(rate) and rate > 0


def test_active_level_is_a_stand_in():
    assert _kernels.probe.ISA == _kernels.get_isa()


@pytest.mark.parametrize("threads, seconds", [(0, 0.001), (1, 0.0), (1, float("nan"))])
def test_fma_peak_bad_arguments(threads, seconds):
    with pytest.raises(ValueError, match="fma_peak: expected"):
        _kernels.probe.fma_peak(threads, seconds)
