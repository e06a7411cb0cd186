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
