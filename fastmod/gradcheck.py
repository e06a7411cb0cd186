"""fastmod.gradcheck: finite-difference check of a module's hand-written backward (float64)."""
import numpy as np

from fastmod._runtime import no_grad
from fastmod.nn.module import Module


class GradcheckError(AssertionError):
    """Raised by gradcheck when an analytic gradient disagrees with finite differences."""


class GradcheckResult:
    """ok (bool), worst (dict describing the worst element) and report (readable text)."""

    def __init__(self, ok, worst, checked, report):
        self.ok, self.worst, self.checked, self.report = ok, worst, checked, report

    def __bool__(self):
        return self.ok

    def __repr__(self):
        return self.report


def _as_tuple(v):
    return v if isinstance(v, tuple) else (v,)


def _is_float(a):
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def gradcheck(module, *inputs, eps=1e-6, atol=1e-6, rtol=1e-4, check_inputs=True,
              check_params=True, max_elements=256, seed=0, raise_exception=True, forward_kwargs=None):
    """Compare `module.backward` with central finite differences on inputs and parameters.

    The module and its floating inputs must be float64. With a fixed random output gradient g,
    L = sum_k <g_k, y_k>; the analytic dL/dx (backward's return) and dL/dp (p.grad) are compared
    with (L(x + eps e_i) - L(x - eps e_i)) / (2 eps) for up to `max_elements` entries (chosen at
    random with `seed`) of every floating input and every parameter. An element passes when
    |analytic - numeric| <= atol + rtol * |numeric|. Buffers (e.g. BatchNorm's running stats)
    are restored afterwards.

    Returns a GradcheckResult (truthy when all pass); raises GradcheckError with a report of the
    worst element instead when raise_exception is True.

    Example:
        >>> import numpy as np, fastmod, fastmod.nn as nn
        >>> m = nn.Linear(3, 2).astype(np.float64)
        >>> bool(fastmod.gradcheck(m, np.random.randn(4, 3)))
        True
    """
    if not isinstance(module, Module):
        raise TypeError(f"gradcheck: expected a fastmod Module, got {type(module).__name__}")
    kwargs = forward_kwargs or {}
    for p in module.parameters():
        if p.dtype != np.float64:
            raise TypeError("gradcheck: the module must be float64 (call .astype(np.float64)); "
                            f"found a {p.dtype} parameter")
    # C-order copies: perturbing x.reshape(-1) below must write into the array itself (a
    # transposed input's reshape would be a copy, and its numeric gradient silently zero)
    inputs = [np.array(x, order="C", copy=True) if isinstance(x, np.ndarray) else x for x in inputs]
    for i, x in enumerate(inputs):
        if _is_float(x) and x.dtype != np.float64:
            raise TypeError(f"gradcheck: input {i} must be float64, got {x.dtype}")
    buffers = {k: np.array(v, copy=True) for k, v in module.named_buffers()}
    rng = np.random.default_rng(seed)

    def restore_buffers():
        for name, b in module.named_buffers():
            if name in buffers:
                b[...] = buffers[name]

    # analytic
    module.zero_grad()
    ys = _as_tuple(module(*inputs, **kwargs))
    gs = tuple(rng.standard_normal(y.shape) if _is_float(y) else None for y in ys)
    dxs = module.backward(gs if len(gs) > 1 else gs[0])
    dxs = _as_tuple(dxs) if len(inputs) > 1 else (dxs,)
    restore_buffers()
    analytic = []
    if check_inputs:
        for i, x in enumerate(inputs):
            if _is_float(x):
                if i >= len(dxs) or dxs[i] is None:
                    raise GradcheckError(f"gradcheck: backward returned no gradient for input {i}")
                analytic.append((f"input {i}", x, np.asarray(dxs[i]).copy()))
    if check_params:
        for name, p in module.named_parameters():
            if p.requires_grad:
                analytic.append((f"parameter {name!r}", p.data, p.grad.copy()))

    def loss():
        with no_grad():
            out = _as_tuple(module(*inputs, **kwargs))
        restore_buffers()
        return sum(float(np.sum(g * y)) for g, y in zip(gs, out) if g is not None)

    worst, checked, failures = None, 0, 0
    for label, arr, ana in analytic:
        if ana.shape != arr.shape:
            raise GradcheckError(f"gradcheck: gradient of {label} has shape {ana.shape}, "
                                 f"expected {arr.shape}")
        flat = arr.reshape(-1)
        idx = np.arange(flat.size)
        if flat.size > max_elements:
            idx = rng.choice(flat.size, max_elements, replace=False)
        for j in idx:
            orig = flat[j]
            flat[j] = orig + eps
            lp = loss()
            flat[j] = orig - eps
            lm = loss()
            flat[j] = orig
            num = (lp - lm) / (2 * eps)
            a = float(ana.reshape(-1)[j])
            err = abs(a - num)
            tol = atol + rtol * abs(num)
            checked += 1
            if err > tol:
                failures += 1
            score = err / tol
            if worst is None or score > worst["score"]:
                worst = {"where": label, "index": np.unravel_index(j, arr.shape), "analytic": a,
                         "numeric": num, "abs_err": err, "score": score}
    ok = failures == 0
    if worst is None:
        report = "gradcheck: nothing to check (no floating inputs or parameters)"
    else:
        report = (f"gradcheck {'passed' if ok else 'FAILED'}: {checked} elements, {failures} "
                  f"outside atol={atol:g} + rtol={rtol:g}*|numeric|; worst: {worst['where']} at "
                  f"{tuple(int(i) for i in worst['index'])}: analytic {worst['analytic']:.8g}, "
                  f"numeric {worst['numeric']:.8g}, |diff| {worst['abs_err']:.3g}")
    module.zero_grad()
    if not ok and raise_exception:
        raise GradcheckError(report)
    return GradcheckResult(ok, worst, checked, report)
