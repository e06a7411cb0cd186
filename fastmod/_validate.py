"""Argument checks shared by every floor: nn (constructor arguments), optim (hyper-parameters,
checked at every step), data, distributed, the CLI and the tools.

Floor-neutral: this module imports nothing from fastmod, so anything may import it. Each check
returns the value normalized (a Python int, float or bool) or raises a ValueError naming `what`
(SPEC §5: a bad argument value is a ValueError, as torch's).
"""
import math
import numbers

import numpy as np


def positive_int(value, what, minimum=1):
    """An integer >= minimum (default 1: 'a positive integer'); bools are not integers here."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)) \
            or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{what} must be {need}, got {value!r}")
    return int(value)


def nonneg_int(value, what):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return int(value)


def finite_float(value, what, low=None, high=None, low_open=False, high_open=False):
    """A finite real in [low, high] (open ends where asked); anything else -> ValueError."""
    if type(value) is float:                # the common case (optimizers check every step)
        v = value
    elif isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise ValueError(f"{what} must be a real number, got {value!r}")
    else:
        v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{what} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{what} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return v


def boolean(value, what):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{what} must be a bool, got {value!r}")
    return bool(value)


def int_tuple(value, n, what, minimum=1):
    """An int or a length-n sequence of ints, each >= minimum -> tuple of n ints."""
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        vals = (int(value),) * n
    else:
        try:
            vals = tuple(value)
        except TypeError:
            raise ValueError(f"{what} must be an int or a tuple of {n} ints, got {value!r}") from None
        if len(vals) != n or any(isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer))
                                 for v in vals):
            raise ValueError(f"{what} must be an int or a tuple of {n} ints, got {value!r}")
        vals = tuple(int(v) for v in vals)
    if any(v < minimum for v in vals):
        raise ValueError(f"{what} must be >= {minimum}, got {value!r}")
    return vals


def seed(value, what, draw=None):
    """A non-negative int seed; None -> draw() when a draw is given (e.g. one from fastmod's
    generator), else an error."""
    if value is None and draw is not None:
        return int(draw())
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)) \
            or value < 0:
        raise ValueError(f"{what}: seed must be a non-negative integer{' or None' if draw else ''}, "
                         f"got {value!r}")
    return int(value)
