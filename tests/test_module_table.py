"""Properties every module shares, over the table of all public modules and model constructors
(module_table.py): astype leaves nothing stale, and backward validates its output gradient."""
import inspect

import numpy as np
import pytest

import fastmod
from fastmod import models, nn
from module_table import CASES, MODEL_CASES, NN_CASES

RUNNABLE = [k for k, c in CASES.items() if c.inputs is not None]


def _public_module_classes():
    return {name: obj for name, obj in vars(nn).items()
            if isinstance(obj, type) and issubclass(obj, nn.Module) and obj is not nn.Module
            and not name.startswith("_")}


def test_every_public_module_is_in_the_table():
    covered = {type(c.make()) for c in NN_CASES.values()}
    public = _public_module_classes()
    assert set(nn.__all__) >= set(public), "public Module subclasses missing from fastmod.nn.__all__"
    missing = sorted(name for name, cls in public.items() if cls not in covered)
    assert not missing, f"add rows for {missing} to tests/module_table.py"


def test_every_model_constructor_is_in_the_table():
    public = {name for name, obj in vars(models).items() if not name.startswith("_")
              and (inspect.isfunction(obj) or inspect.isclass(obj))}
    missing = sorted(public - set(MODEL_CASES))
    assert not missing, f"add rows for {missing} to tests/module_table.py"


def _forward(m, case, dtype, seed=0):
    fastmod.manual_seed(seed)                   # dropout draws the same mask every time
    args = case.inputs(dtype, np.random.default_rng(seed))
    out = m(*args, **case.kwargs)
    return args, out


def _output_grads(out, rng):
    """The output's gradient: normal of its shape and dtype; for (values, indices / attention
    weights) outputs (dy, None), the second takes no gradient."""
    if isinstance(out, tuple):
        return (rng.standard_normal(out[0].shape).astype(out[0].dtype),) + (None,) * (len(out) - 1)
    return rng.standard_normal(out.shape).astype(out.dtype)


@pytest.mark.parametrize("name", list(CASES))
def test_astype_round_trip_forward_backward(name):
    """astype(float64), a float64 forward + backward, astype(float32), a float32 one: outputs,
    input gradients, parameters, buffers and parameter gradients all of the new dtype (a dtype
    cached anywhere in a module fails here)."""
    case = CASES[name]
    m = case.make()
    for dt in (np.float64, np.float32):
        assert m.astype(dt) is m
        for pname, p in m.named_parameters():
            assert p.dtype == dt, pname
        for bname, b in m.named_buffers():
            assert b.dtype == dt or b.dtype.kind != "f", bname
        if case.inputs is None:
            continue
        m.zero_grad()
        args, out = _forward(m, case, dt)
        outs = out if isinstance(out, tuple) else (out,)
        for o in outs:
            assert o.dtype == dt or o.dtype.kind != "f"
        dx = m.backward(_output_grads(out, np.random.default_rng(1)))
        dxs = dx if isinstance(dx, tuple) else (dx,)
        assert len(dxs) == len(args)
        for d, a in zip(dxs, args):
            if a.dtype.kind == "f":
                assert d.dtype == dt and d.shape == a.shape
            else:
                assert d is None                # integer tokens take no gradient
        for pname, p in m.named_parameters():
            assert p.has_grad() and p.grad.dtype == dt, pname


def _bad_grads(out):
    """(output gradient, exception type) pairs that backward must refuse: wrong shapes (one
    broadcastable), wrong dtypes, and for (values, indices/weights) outputs malformed tuples."""
    values = out[0] if isinstance(out, tuple) else out
    shape = values.shape
    g = np.ones(shape, values.dtype)
    other = np.float64 if values.dtype == np.float32 else np.float32
    bad = [(np.ones(shape[:-1] + (shape[-1] + 1,), values.dtype), ValueError),
           (np.ones((1,) + shape, values.dtype), ValueError),     # would broadcast
           (np.ones(shape[::-1] if shape[::-1] != shape else shape[1:], values.dtype), ValueError),
           (g.astype(other), TypeError),
           (g.astype(np.float16), TypeError),
           (g.tolist(), TypeError)]
    if isinstance(out, tuple):
        bad = [((b, None), err) for b, err in bad]
        bad += [((g,), ValueError), ((g, None, None), ValueError),
                ((g, np.zeros(out[1].shape, out[1].dtype)), TypeError)]
    return bad


@pytest.mark.parametrize("name", list(CASES))
def test_backward_validates_output_gradient(name):
    """Every backward checks dy against what its forward returned -- shape (ValueError) and
    dtype (TypeError) exactly, naming the module -- before any kernel runs (no parameter
    gradient is touched); a non-contiguous dy of the right shape and dtype is copied."""
    case = CASES[name]
    m = case.make()
    if case.inputs is None:
        with pytest.raises(TypeError, match=rf"{type(m).__name__} does not define backward"):
            m.backward(np.zeros(3, np.float32))
        return
    names = [f"{s._short_repr()}.backward" for s in m.modules()]
    for dy, err in _bad_grads(_forward(m, case, np.float32)[1]):
        m.zero_grad()
        _forward(m, case, np.float32)
        with pytest.raises(err) as e:
            m.backward(dy)
        assert type(e.value) is err, (type(dy), e.value)
        assert any(s in str(e.value) for s in names), str(e.value)
        assert "expected" in str(e.value) and "got" in str(e.value), str(e.value)
        for pname, p in m.named_parameters():
            assert not p.has_grad(), f"{pname} got a gradient from a refused backward"
    # right shape and dtype, not contiguous: copied, the same result as contiguous
    results = []
    for contiguous in (True, False):
        m.zero_grad()
        _, out = _forward(m, case, np.float32)
        dy = _output_grads(out, np.random.default_rng(1))
        if not contiguous:
            dys = dy if isinstance(dy, tuple) else (dy,)
            dys = tuple(None if d is None else np.repeat(d, 2, axis=-1)[..., ::2] for d in dys)
            assert not dys[0].flags.c_contiguous
            dy = dys if isinstance(dy, tuple) else dys[0]
        dx = m.backward(dy)
        results.append([dx] if not isinstance(dx, tuple) else list(dx))
        results[-1] += [p.grad.copy() for p in m.parameters()]
    for a, b in zip(*results):
        if a is None:
            assert b is None
        else:
            np.testing.assert_array_equal(a, b)
