"""Parameter initialization, with torch.nn.init's formulas and defaults.

Every function fills its argument (a Parameter or an ndarray) in place and returns it. Random
draws come from `generator` (a numpy Generator) or fastmod's global one (`fastmod.manual_seed`).
"""
import math

import numpy as np

from fastmod import _runtime


def _array(t):
    return t.data if hasattr(t, "data") and not isinstance(t, np.ndarray) else t


def _gen(generator):
    return generator if generator is not None else _runtime.default_generator()


def calculate_gain(nonlinearity, param=None):
    """torch.nn.init.calculate_gain."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid", "identity")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise ValueError(f"calculate_gain: negative_slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    if nonlinearity == "gelu":
        return math.sqrt(2.0)
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(a):
    if a.ndim < 2:
        raise ValueError(f"fan in and fan out need an array of at least 2 dims, got shape {a.shape}")
    receptive = int(np.prod(a.shape[2:])) if a.ndim > 2 else 1
    return a.shape[1] * receptive, a.shape[0] * receptive


def _fan(a, mode):
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(a)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(t, a=0.0, b=1.0, generator=None):
    arr = _array(t)
    arr[...] = _gen(generator).uniform(a, b, size=arr.shape)
    return t


def normal_(t, mean=0.0, std=1.0, generator=None):
    arr = _array(t)
    arr[...] = _gen(generator).normal(mean, std, size=arr.shape)
    return t


def constant_(t, val):
    _array(t).fill(val)
    return t


def zeros_(t):
    return constant_(t, 0.0)


def ones_(t):
    return constant_(t, 1.0)


def xavier_uniform_(t, gain=1.0, generator=None):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(_array(t))
    bound = gain * math.sqrt(6.0 / float(fan_in + fan_out))
    return uniform_(t, -bound, bound, generator)


def xavier_normal_(t, gain=1.0, generator=None):
    fan_in, fan_out = _calculate_fan_in_and_fan_out(_array(t))
    return normal_(t, 0.0, gain * math.sqrt(2.0 / float(fan_in + fan_out)), generator)


def kaiming_uniform_(t, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    fan = _fan(_array(t), mode)
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return uniform_(t, -bound, bound, generator)


def kaiming_normal_(t, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None):
    fan = _fan(_array(t), mode)
    return normal_(t, 0.0, calculate_gain(nonlinearity, a) / math.sqrt(fan), generator)


def trunc_normal_(t, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    """Normal(mean, std) redrawn until inside [a, b] (torch.nn.init.trunc_normal_)."""
    arr = _array(t)
    g = _gen(generator)
    out = g.normal(mean, std, size=arr.shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = g.normal(mean, std, size=int(bad.sum()))
        bad = (out < a) | (out > b)
    arr[...] = out
    return t


def default_weight_bias_(weight, bias, generator=None):
    """torch's default for Linear and Conv: kaiming_uniform_(a=sqrt(5)) on the weight, i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias."""
    kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        fan_in, _ = _calculate_fan_in_and_fan_out(_array(weight))
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        uniform_(bias, -bound, bound, generator)
