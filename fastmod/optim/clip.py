"""Gradient clipping by global norm (torch.nn.utils.clip_grad_norm_)."""
import math
import numbers

import numpy as np

from fastmod._kernels import optim as _k
from fastmod.nn.module import Parameter


def _grads(parameters, who):
    if isinstance(parameters, Parameter):
        parameters = [parameters]
    try:
        params = list(parameters)
    except TypeError:
        raise TypeError(f"{who}: expected Parameters, got {type(parameters).__name__}") from None
    for i, p in enumerate(params):
        if not isinstance(p, Parameter):
            raise TypeError(f"{who}: expected Parameters, got {type(p).__name__} at position {i}")
    # like torch's `p.grad is not None`: gradients untouched since zero_grad() are left out
    return [p.grad for p in params if p.has_grad()]


def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False):
    """Scale all gradients together so that their global norm is at most max_norm.

        total = ||(||g_1||_p, ..., ||g_k||_p)||_p      (the norm of all gradients as one vector)
        g_i  <- g_i * min(1, max_norm / (total + 1e-6))

    The 2-norm is one fused pass per gradient, accumulated in double.

    Args:
        parameters: Parameters (an iterable, or one); those without a gradient are skipped.
        max_norm: the largest allowed norm (>= 0).
        norm_type: p of the p-norm, a positive real or float('inf') (default 2).
        error_if_nonfinite: raise RuntimeError when the total norm is NaN or infinite
            (default False: the gradients are then scaled by a NaN factor, as in torch).

    Returns:
        The total norm before clipping, as a Python float.

    Example:
        >>> import numpy as np, fastmod
        >>> lin = fastmod.nn.Linear(2, 1)
        >>> lin.weight.grad = np.array([[3.0, 4.0]], np.float32)
        >>> fastmod.optim.clip_grad_norm_(lin.parameters(), 1.0)
        5.0
    """
    who = "clip_grad_norm_"
    if isinstance(max_norm, (bool, np.bool_)) or not isinstance(max_norm, numbers.Real) \
            or not math.isfinite(float(max_norm)) or max_norm < 0:
        raise ValueError(f"{who}: max_norm must be a finite real >= 0, got {max_norm!r}")
    if isinstance(norm_type, (bool, np.bool_)) or not isinstance(norm_type, numbers.Real) \
            or math.isnan(float(norm_type)) or not float(norm_type) > 0:
        raise ValueError(f"{who}: norm_type must be a positive real or inf, got {norm_type!r}")
    max_norm, p = float(max_norm), float(norm_type)
    grads = _grads(parameters, who)
    if not grads:
        return 0.0
    if p == 2.0:
        total = math.sqrt(sum(_k.sum_squares(np.ascontiguousarray(g)) for g in grads))
    elif math.isinf(p):
        total = max(float(np.max(np.abs(g))) for g in grads)
    else:
        norms = np.array([np.linalg.norm(g.ravel().astype(np.float64), p) for g in grads])
        total = float(np.linalg.norm(norms, p))
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"{who}: the total norm of order {norm_type} of the gradients is "
                           f"non-finite ({total}), so it cannot be clipped; pass "
                           "error_if_nonfinite=False to scale the gradients by it anyway")
    coef = max_norm / (total + 1e-6)
    if not coef < 1.0 and not math.isnan(coef):
        return total                      # torch multiplies by 1.0: a no-op
    with np.errstate(invalid="ignore"):       # inf * 0 -> NaN, as torch (no warning)
        for g in grads:
            g *= g.dtype.type(coef)
    return total
