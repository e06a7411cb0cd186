"""fastmod.optim: SGD / Adam / AdamW (fused kernels), clip_grad_norm_, schedulers.

Each optimizer is checked against an independent NumPy reference (float64 math) and against
torch.optim (same parameters and gradients for several steps), in float32 and float64, with
several parameter groups; then resuming, skipping, validation and the schedulers' lr sequences.
"""
import math

import numpy as np
import pytest

import fastmod
from fastmod.nn import Parameter
from fastmod.optim import SGD, Adam, AdamW, clip_grad_norm_
from fastmod.optim import lr_scheduler as fls
from reference import assert_close

# fastmod vs torch / the float64 reference after a few steps (a few ulps per step, momentum)
TOL = {np.float32: dict(rtol=1e-5, atol=2e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}
SHAPES = [(7, 5), (5,), (3, 2, 4)]

SGD_CONFIGS = [
    dict(lr=0.1),
    dict(lr=0.1, weight_decay=0.05),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
    dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.02),
    dict(lr=0.1, momentum=0.5, maximize=True),
]
ADAM_CONFIGS = [
    dict(lr=0.01),
    dict(lr=0.01, weight_decay=0.1),
    dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, amsgrad=True),
    dict(lr=0.01, betas=(0.3, 0.9), weight_decay=0.05, amsgrad=True),   # lerp's large-weight form
    dict(lr=0.01, maximize=True),
]


def _params(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _grads(dtype, step, shapes=SHAPES):
    rng = np.random.default_rng(100 + step)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


# ------------------------------------------------------------------ independent NumPy references
def ref_sgd(params, grads_per_step, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
            nesterov=False, maximize=False):
    ps = [p.astype(np.float64) for p in params]
    bufs = [None] * len(ps)
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            d = -g.astype(np.float64) if maximize else g.astype(np.float64)
            d = d + weight_decay * ps[i]
            if momentum:
                bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + (1 - dampening) * d
                d = d + momentum * bufs[i] if nesterov else bufs[i]
            ps[i] = ps[i] - lr * d
    return ps


def ref_adam(params, grads_per_step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
             amsgrad=False, maximize=False, decoupled=False):
    b1, b2 = betas
    ps = [p.astype(np.float64) for p in params]
    m = [np.zeros_like(p) for p in ps]
    v = [np.zeros_like(p) for p in ps]
    vmax = [np.zeros_like(p) for p in ps]
    for t, grads in enumerate(grads_per_step, 1):
        for i, g in enumerate(grads):
            d = -g.astype(np.float64) if maximize else g.astype(np.float64)
            if decoupled:
                ps[i] = ps[i] * (1 - lr * weight_decay)
            else:
                d = d + weight_decay * ps[i]
            m[i] = b1 * m[i] + (1 - b1) * d
            v[i] = b2 * v[i] + (1 - b2) * d * d
            vmax[i] = np.maximum(vmax[i], v[i])
            vhat = (vmax[i] if amsgrad else v[i]) / (1 - b2 ** t)
            ps[i] = ps[i] - lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(vhat) + eps)
    return ps


def _run_fastmod(cls, dtype, kw, steps=6, shapes=SHAPES):
    params = [Parameter(p) for p in _params(dtype, shapes=shapes)]
    opt = cls(params, **kw)
    for s in range(steps):
        opt.zero_grad()
        for p, g in zip(params, _grads(dtype, s, shapes)):
            p.grad = g
        opt.step()
    return params, opt


@pytest.mark.parametrize("kw", SGD_CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_matches_numpy_reference(kw, dtype):
    params, _ = _run_fastmod(SGD, dtype, kw)
    ref = ref_sgd(_params(dtype), [_grads(dtype, s) for s in range(6)], **kw)
    for p, r in zip(params, ref):
        assert p.data.dtype == dtype
        np.testing.assert_allclose(p.data, r, **TOL[dtype])


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize("kw", ADAM_CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_adam_matches_numpy_reference(cls, kw, dtype):
    params, opt = _run_fastmod(cls, dtype, kw)
    full = dict(opt.defaults)
    ref = ref_adam(_params(dtype), [_grads(dtype, s) for s in range(6)], lr=full["lr"],
                   betas=full["betas"], eps=full["eps"], weight_decay=full["weight_decay"],
                   amsgrad=full["amsgrad"], maximize=full["maximize"], decoupled=cls is AdamW)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.data, r, **TOL[dtype])


def _torch_run(torch, tcls, dtype, groups_kw, steps, shapes=SHAPES, split=2):
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    ts = [torch.tensor(p, dtype=tdt, requires_grad=True) for p in _params(dtype, shapes=shapes)]
    g0, g1 = groups_kw
    opt = tcls([dict(params=ts[:split], **g0), dict(params=ts[split:], **g1)])
    for s in range(steps):
        opt.zero_grad()
        for t, g in zip(ts, _grads(dtype, s, shapes)):
            t.grad = torch.tensor(g)
        opt.step()
    return ts, opt


def _fm_groups_run(cls, dtype, groups_kw, steps, shapes=SHAPES, split=2):
    ps = [Parameter(p) for p in _params(dtype, shapes=shapes)]
    g0, g1 = groups_kw
    opt = cls([dict(params=ps[:split], **g0), dict(params=ps[split:], **g1)])
    for s in range(steps):
        opt.zero_grad()
        for p, g in zip(ps, _grads(dtype, s, shapes)):
            p.grad = g
        opt.step()
    return ps, opt


@pytest.mark.parametrize("name,groups", [
    ("SGD", [dict(lr=0.1, momentum=0.9, weight_decay=0.01), dict(lr=0.02, momentum=0.5, nesterov=True)]),
    ("SGD", [dict(lr=0.1), dict(lr=0.05, momentum=0.9, dampening=0.2, maximize=True)]),
    ("Adam", [dict(lr=0.01, weight_decay=0.1), dict(lr=0.003, betas=(0.5, 0.9), amsgrad=True)]),
    ("AdamW", [dict(lr=0.01), dict(lr=0.02, weight_decay=0.3, eps=1e-5, maximize=True)]),
])
def test_parity_with_torch_param_groups(torch, name, groups, dtype):
    fm_params, fm_opt = _fm_groups_run(getattr(fastmod.optim, name), dtype, groups, steps=8)
    t_params, t_opt = _torch_run(torch, getattr(torch.optim, name), dtype, groups, steps=8)
    for p, t in zip(fm_params, t_params):
        np.testing.assert_allclose(p.data, t.detach().numpy(), **TOL[dtype])
    # the state mirrors torch's: same entries, same values
    fsd, tsd = fm_opt.state_dict(), t_opt.state_dict()
    assert set(fsd["state"]) == set(tsd["state"])
    for k, st in tsd["state"].items():
        assert set(fsd["state"][k]) == set(st)
        for name_, v in st.items():
            np.testing.assert_allclose(np.asarray(fsd["state"][k][name_], dtype=np.float64),
                                       v.numpy().astype(np.float64), **TOL[dtype])
    for fg, tg in zip(fsd["param_groups"], tsd["param_groups"]):
        assert fg["params"] == tg["params"]
        for k in fg:
            if k != "params":
                assert fg[k] == (tuple(tg[k]) if k == "betas" else tg[k]), k


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, weight_decay=0.01)),
                                     ("Adam", dict(lr=0.01, amsgrad=True)),
                                     ("AdamW", dict(lr=0.01, weight_decay=0.1))])
def test_parallel_kernels_independent_of_thread_count(name, kw, dtype):
    """Parameters above the kernels' grain run in a prange; the update is element-wise, so 1 and
    2 threads give the same bits."""
    shapes = [(300, 250), (250,)]
    out = []
    for nt in (1, 2):
        fastmod.set_num_threads(nt)
        ps, _ = _run_fastmod(getattr(fastmod.optim, name), dtype, kw, steps=3, shapes=shapes)
        out.append([p.data.copy() for p in ps])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)
    ref_params, _ = _run_fastmod(getattr(fastmod.optim, name), dtype, kw, steps=3, shapes=shapes)
    np.testing.assert_array_equal(ref_params[0].data, out[0][0])


def test_untouched_parameters_are_skipped(dtype):
    lin = fastmod.nn.Linear(3, 2, dtype=dtype)
    extra = Parameter(np.ones(4, dtype))
    opt = Adam(list(lin.parameters()) + [extra], lr=0.1)
    before = extra.data.copy()
    lin.zero_grad()
    lin(np.ones((2, 3), dtype))
    lin.backward(np.ones((2, 2), dtype))
    opt.step()
    np.testing.assert_array_equal(extra.data, before)
    assert extra not in opt.state
    assert lin.weight in opt.state and opt.state[lin.weight]["step"] == 1
    # after zero_grad nothing has a gradient: a step changes nothing
    opt.zero_grad()
    w = lin.weight.data.copy()
    opt.step()
    np.testing.assert_array_equal(lin.weight.data, w)
    assert opt.state[lin.weight]["step"] == 1
    assert not lin.weight.has_grad()


def test_sgd_trains_a_linear_model_with_backward():
    """End to end: Linear + MSE, the gradient comes from backward (beta=0 / accumulate paths)."""
    fastmod.manual_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3))
    y = x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3
    lin = fastmod.nn.Linear(3, 1, dtype=np.float64)
    crit = fastmod.losses.MSELoss()
    opt = SGD(lin.parameters(), lr=0.1, momentum=0.9)
    for _ in range(200):
        opt.zero_grad()
        crit(lin(x), y)
        lin.backward(crit.backward())
        opt.step()
    np.testing.assert_allclose(lin.weight.data, [[1.0, -2.0, 0.5]], atol=1e-4)
    np.testing.assert_allclose(lin.bias.data, [0.3], atol=1e-4)


def test_closure_is_called_and_its_loss_returned():
    p = Parameter(np.ones(3))
    opt = SGD([p], lr=0.5)

    def closure():
        p.grad = 2 * p.data
        return float(np.sum(p.data ** 2))

    assert opt.step(closure) == 3.0
    np.testing.assert_allclose(p.data, 0.0)


# ------------------------------------------------------------------ state_dict / resume
@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.1, momentum=0.9, nesterov=True)),
                                     ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
                                     ("AdamW", dict(lr=0.01))])
def test_resume_from_state_dict_is_bit_identical(name, kw, dtype):
    cls = getattr(fastmod.optim, name)
    full, _ = _run_fastmod(cls, dtype, kw, steps=7)
    # 4 steps, state_dict, then a fresh optimizer on copies of the parameters, 3 more steps
    ps, opt = _run_fastmod(cls, dtype, kw, steps=4)
    sd = opt.state_dict()
    opt.step()                                  # a state_dict is a copy: later steps don't change it
    ps2 = [Parameter(p.data.copy()) for p in ps]
    opt2 = cls(ps2, lr=123.0)                   # hyper-parameters come back from the state too
    opt2.load_state_dict(sd)
    # undo the extra step on the parameters: restart from the 4-step parameters
    ps4, _ = _run_fastmod(cls, dtype, kw, steps=4)
    for p2, p4 in zip(ps2, ps4):
        p2.data[...] = p4.data
    for s in range(4, 7):
        opt2.zero_grad()
        for p, g in zip(ps2, _grads(dtype, s)):
            p.grad = g
        opt2.step()
    for a, b in zip(full, ps2):
        np.testing.assert_array_equal(a.data, b.data)
    assert opt2.param_groups[0]["lr"] == kw["lr"]


def test_state_dict_structure_is_torchs():
    ps = [Parameter(np.ones((2, 2), np.float32)), Parameter(np.ones(2, np.float32))]
    opt = Adam([{"params": [ps[0]]}, {"params": [ps[1]], "lr": 0.1}], lr=0.01)
    for p in ps:
        p.grad = np.ones_like(p.data)
    opt.step()
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert [g["lr"] for g in sd["param_groups"]] == [0.01, 0.1]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}
    assert sd["state"][0]["step"] == 1
    sd["state"][0]["exp_avg"][...] = 99         # a copy: the optimizer is not affected
    assert not np.any(opt.state[ps[0]]["exp_avg"] == 99)


def test_load_torch_state_dict_and_continue_like_torch(torch, dtype):
    """A torch.optim.Adam state (tensors, float step) loads into fastmod's Adam and the two
    continue together."""
    groups = [dict(lr=0.01), dict(lr=0.005, weight_decay=0.1)]
    t_params, t_opt = _torch_run(torch, torch.optim.Adam, dtype, groups, steps=3)
    ps = [Parameter(t.detach().numpy().copy()) for t in t_params]
    opt = Adam([dict(params=ps[:2]), dict(params=ps[2:])])
    opt.load_state_dict(t_opt.state_dict())
    assert opt.param_groups[1]["weight_decay"] == 0.1
    for s in range(3, 6):
        opt.zero_grad()
        t_opt.zero_grad()
        for p, t, g in zip(ps, t_params, _grads(dtype, s)):
            p.grad = g
            t.grad = torch.tensor(g)
        opt.step()
        t_opt.step()
    for p, t in zip(ps, t_params):
        np.testing.assert_allclose(p.data, t.detach().numpy(), **TOL[dtype])


def test_load_state_dict_rejects_mismatches():
    ps = [Parameter(np.ones((2, 2))), Parameter(np.ones(3))]
    opt = SGD(ps, lr=0.1, momentum=0.9)
    for p in ps:
        p.grad = np.ones_like(p.data)
    opt.step()
    sd = opt.state_dict()
    other = SGD([Parameter(np.ones((2, 2)))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="group 0 has 2 parameters in the state, 1 in the optimizer"):
        other.load_state_dict(sd)
    two_groups = SGD([{"params": [ps[0]]}, {"params": [ps[1]]}], lr=0.1)
    with pytest.raises(ValueError, match="1 parameter groups, the optimizer has 2"):
        two_groups.load_state_dict(sd)
    swapped = SGD([Parameter(np.ones(3)), Parameter(np.ones((2, 2)))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"state 0\['momentum_buffer'\] has shape \(2, 2\), its parameter \(3,\)"):
        swapped.load_state_dict(sd)
    with pytest.raises(ValueError, match="expected a dict with 'state' and 'param_groups'"):
        opt.load_state_dict({"state": {}})
    bad = opt.state_dict()
    bad["param_groups"][0]["lr"] = -1.0
    with pytest.raises(ValueError, match="group 0: SGD: lr must be >= 0.0, got -1.0"):
        opt.load_state_dict(bad)
    bad = opt.state_dict()
    bad["state"][5] = {"momentum_buffer": np.ones(3)}
    with pytest.raises(ValueError, match="in no parameter group"):
        opt.load_state_dict(bad)
    # nothing was changed by the failed loads
    np.testing.assert_array_equal(opt.state[ps[0]]["momentum_buffer"], sd["state"][0]["momentum_buffer"])


def test_load_state_dict_non_float_state_is_a_type_error():
    p = Parameter(np.ones(3, np.float32))
    opt = SGD([p], lr=0.1, momentum=0.9)
    groups = [dict(opt.state_dict()["param_groups"][0])]
    with pytest.raises(TypeError, match=r"state 0\['momentum_buffer'\] has dtype int64, expected a float"):
        opt.load_state_dict({"state": {0: {"momentum_buffer": np.ones(3, np.int64)}}, "param_groups": groups})
    with pytest.raises(ValueError, match=r"has shape \(2,\), its parameter \(3,\)"):
        opt.load_state_dict({"state": {0: {"momentum_buffer": np.ones(2, np.int64)}}, "param_groups": groups})


def test_state_converted_to_parameter_dtype_and_astype_after_creation_is_reported():
    p = Parameter(np.ones(3, np.float32))
    opt = SGD([p], lr=0.1, momentum=0.9)
    opt.load_state_dict({"state": {0: {"momentum_buffer": np.ones(3, np.float64)}},
                         "param_groups": [dict(opt.state_dict()["param_groups"][0])]})
    assert opt.state[p]["momentum_buffer"].dtype == np.float32
    lin = fastmod.nn.Linear(2, 2)
    opt = Adam(lin.parameters())
    lin(np.ones((1, 2), np.float32))
    lin.backward(np.ones((1, 2), np.float32))
    opt.step()
    lin.double()
    lin(np.ones((1, 2)))
    lin.backward(np.ones((1, 2)))
    with pytest.raises(RuntimeError, match="converted with astype after creating the optimizer"):
        opt.step()


# ------------------------------------------------------------------ validation
@pytest.mark.parametrize("cls,kw,match", [
    (SGD, dict(lr=-0.1), "lr must be >= 0.0, got -0.1"),
    (SGD, dict(lr=float("nan")), "lr must be finite"),
    (SGD, dict(lr=float("inf")), "lr must be finite"),
    (SGD, dict(lr="0.1"), "lr must be a real number"),
    (SGD, dict(momentum=-0.5), "momentum must be >= 0.0"),
    (SGD, dict(weight_decay=-1e-4), "weight_decay must be >= 0.0"),
    (SGD, dict(nesterov=True), "Nesterov momentum requires a momentum and zero dampening"),
    (SGD, dict(momentum=0.9, dampening=0.1, nesterov=True), "Nesterov"),
    (SGD, dict(nesterov=1), "nesterov must be a bool"),
    (Adam, dict(betas=(1.0, 0.999)), r"betas\[0\] must be < 1.0, got 1.0"),
    (Adam, dict(betas=(0.9, -0.1)), r"betas\[1\] must be >= 0.0"),
    (Adam, dict(betas=(0.9, float("nan"))), r"betas\[1\] must be finite"),
    (Adam, dict(betas=0.9), "betas must be a pair"),
    (Adam, dict(eps=-1e-8), "eps must be >= 0.0"),
    (AdamW, dict(weight_decay=float("inf")), "weight_decay must be finite"),
    (Adam, dict(amsgrad="yes"), "amsgrad must be a bool"),
])
def test_bad_hyper_parameters(cls, kw, match):
    with pytest.raises(ValueError, match=match):
        cls([Parameter(np.ones(2))], **kw)


def test_bad_parameter_lists():
    p = Parameter(np.ones(2))
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match="can only optimize fastmod Parameters, got ndarray"):
        SGD([np.ones(2)], lr=0.1)
    with pytest.raises(TypeError, match="single Parameter"):
        SGD(p, lr=0.1)
    with pytest.raises(TypeError, match="not a set"):
        SGD({p}, lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        SGD([{"params": [p]}, {"params": [p], "lr": 0.2}], lr=0.1)
    with pytest.raises(ValueError, match="same parameter twice"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="needs a 'params' entry"):
        SGD([{"lr": 0.1}])
    with pytest.raises(ValueError, match="lr must be >= 0.0, got -1"):
        SGD([{"params": [p], "lr": -1}], lr=0.1)
    opt = SGD([p], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [p]})
    q = Parameter(np.ones(2))
    opt.add_param_group({"params": q, "lr": 0.5, "momentum": 0.9})
    assert opt.param_groups[1]["lr"] == 0.5 and opt.param_groups[1]["weight_decay"] == 0.0
    # a hyper-parameter broken after construction is caught at step()
    opt.param_groups[0]["lr"] = float("nan")
    p.grad = np.ones(2)
    with pytest.raises(ValueError, match="lr must be finite"):
        opt.step()


def test_read_only_parameter_is_reported():
    p = Parameter(np.ones(3))
    p.data.flags.writeable = False
    p.grad = np.ones(3)
    with pytest.raises(ValueError, match="read-only"):
        SGD([p], lr=0.1).step()


def test_named_parameters_pairs_accepted():
    lin = fastmod.nn.Linear(2, 2)
    opt = SGD(lin.named_parameters(), lr=0.1)
    assert opt.param_groups[0]["params"] == [lin.weight, lin.bias]


# ------------------------------------------------------------------ clip_grad_norm_
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch(torch, dtype, norm_type, max_norm):
    grads = _grads(dtype, 0)
    ps = [Parameter(np.zeros_like(g)) for g in grads]
    for p, g in zip(ps, grads):
        p.grad = g
    ts = [torch.zeros(g.shape, dtype=torch.float64 if dtype == np.float64 else torch.float32,
                      requires_grad=True) for g in grads]
    for t, g in zip(ts, grads):
        t.grad = torch.tensor(g)
    total = clip_grad_norm_(ps, max_norm, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(ts, max_norm, norm_type)
    assert isinstance(total, float)
    flat = np.concatenate([g.ravel() for g in grads]).astype(np.float64)
    want = np.abs(flat).max() if norm_type == float("inf") else \
        float(np.sum(np.abs(flat) ** norm_type) ** (1.0 / norm_type))
    np.testing.assert_allclose(total, want, rtol=1e-6 if dtype == np.float32 else 1e-12)
    # torch sums the float32 norms in its own (CPU-dependent) order: parity tolerance
    assert_close(total, t_total.item(), dtype)
    for p, t in zip(ps, ts):
        assert_close(p.grad, t.grad.numpy(), dtype)


def test_clip_grad_norm_formula_and_skips(threads):
    rng = np.random.default_rng(3)
    big = Parameter(np.zeros((400, 300)))               # above the kernel's parallel grain
    big.grad = g = rng.standard_normal((400, 300))
    untouched = Parameter(np.zeros(5))
    expected = math.sqrt(float(np.sum(g * g)))
    g0 = g.copy()
    total = clip_grad_norm_([big, untouched], 1.0)
    assert total == pytest.approx(expected, rel=1e-13)
    np.testing.assert_allclose(big.grad, g0 * (1.0 / (expected + 1e-6)), rtol=1e-14)
    assert not untouched.has_grad()
    assert clip_grad_norm_([untouched], 1.0) == 0.0
    assert clip_grad_norm_(big, 1e9) == pytest.approx(1.0 / (expected + 1e-6) * expected)


def test_clip_grad_norm_same_threads_same_bits():
    g = np.random.default_rng(4).standard_normal(200_000).astype(np.float32)
    out = []
    for nt in (1, 2, 2):
        fastmod.set_num_threads(nt)
        p = Parameter(np.zeros_like(g))
        p.grad = g
        out.append(clip_grad_norm_([p], 0.1))
    assert out[1] == out[2]
    assert out[0] == pytest.approx(out[1], rel=1e-12)
    assert out[0] == pytest.approx(float(np.linalg.norm(g.astype(np.float64))), rel=1e-12)


def test_clip_grad_norm_nonfinite_and_bad_args():
    p = Parameter(np.zeros(3))
    p.grad = np.array([1.0, np.inf, 0.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert clip_grad_norm_([p], 1.0) == float("inf")
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="max_norm must be a finite real >= 0"):
            clip_grad_norm_([p], bad)
    for bad in (0, -2.0, float("nan")):
        with pytest.raises(ValueError, match="norm_type must be a positive real or inf"):
            clip_grad_norm_([p], 1.0, bad)
    with pytest.raises(TypeError, match="expected Parameters, got ndarray"):
        clip_grad_norm_([np.ones(3)], 1.0)


# ------------------------------------------------------------------ schedulers
def _sched_pair(torch, make_fm, make_t, steps=25, lrs=(0.1, 0.02)):
    ps = [Parameter(np.zeros(2)), Parameter(np.zeros(2))]
    opt = SGD([{"params": [ps[0]], "lr": lrs[0]}, {"params": [ps[1]], "lr": lrs[1]}], momentum=0.9)
    ts = [torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    t_opt = torch.optim.SGD([{"params": [ts[0]], "lr": lrs[0]}, {"params": [ts[1]], "lr": lrs[1]}],
                            momentum=0.9)
    s, ts_ = make_fm(opt), make_t(t_opt)
    got, want = [s.get_last_lr()], [ts_.get_last_lr()]
    for _ in range(steps):
        opt.step()
        t_opt.step()
        s.step()
        ts_.step()
        got.append(s.get_last_lr())
        want.append(ts_.get_last_lr())
        assert [g["lr"] for g in opt.param_groups] == got[-1]
    return np.array(got), np.array(want), s, opt


SCHEDULERS = {
    "StepLR": (lambda o: fls.StepLR(o, step_size=4, gamma=0.5),
               lambda t, o: t.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5)),
    "MultiStepLR": (lambda o: fls.MultiStepLR(o, milestones=[3, 7, 7, 12], gamma=0.3),
                    lambda t, o: t.optim.lr_scheduler.MultiStepLR(o, milestones=[3, 7, 7, 12], gamma=0.3)),
    "CosineAnnealingLR": (lambda o: fls.CosineAnnealingLR(o, T_max=10, eta_min=1e-3),
                          lambda t, o: t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-3)),
    "LinearLR": (lambda o: fls.LinearLR(o, start_factor=0.1, total_iters=8),
                 lambda t, o: t.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=8)),
    "LinearLR-decay": (lambda o: fls.LinearLR(o, start_factor=1.0, end_factor=0.2, total_iters=5),
                       lambda t, o: t.optim.lr_scheduler.LinearLR(o, start_factor=1.0, end_factor=0.2,
                                                                  total_iters=5)),
    "LambdaLR": (lambda o: fls.LambdaLR(o, [lambda e: 0.9 ** e, lambda e: 1 / (1 + e)]),
                 lambda t, o: t.optim.lr_scheduler.LambdaLR(o, [lambda e: 0.9 ** e, lambda e: 1 / (1 + e)])),
    "SequentialLR": (
        lambda o: fls.SequentialLR(o, [fls.LinearLR(o, start_factor=0.1, total_iters=5),
                                       fls.CosineAnnealingLR(o, T_max=15)], milestones=[5]),
        lambda t, o: t.optim.lr_scheduler.SequentialLR(
            o, [t.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5),
                t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=15)], milestones=[5])),
    "SequentialLR-3": (
        lambda o: fls.SequentialLR(o, [fls.LinearLR(o, start_factor=0.5, total_iters=3),
                                       fls.StepLR(o, step_size=2, gamma=0.5),
                                       fls.CosineAnnealingLR(o, T_max=6, eta_min=0.001)],
                                   milestones=[3, 10]),
        lambda t, o: t.optim.lr_scheduler.SequentialLR(
            o, [t.optim.lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=3),
                t.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
                t.optim.lr_scheduler.CosineAnnealingLR(o, T_max=6, eta_min=0.001)],
            milestones=[3, 10])),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_lr_sequence_matches_torch(torch, name):
    import warnings
    make_fm, make_t = SCHEDULERS[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, want, _, _ = _sched_pair(torch, make_fm, lambda o: make_t(torch, o))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


def test_scheduler_closed_forms():
    p = Parameter(np.zeros(1))
    opt = SGD([p], lr=1.0)
    s = fls.CosineAnnealingLR(opt, T_max=4)
    seq = [s.get_last_lr()[0]] + [s.step() or s.get_last_lr()[0] for _ in range(4)]
    np.testing.assert_allclose(seq, [1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                     (1 + math.cos(3 * math.pi / 4)) / 2, 0.0], atol=1e-15)
    opt = SGD([Parameter(np.zeros(1))], lr=2.0)
    s = fls.LinearLR(opt, start_factor=0.25, total_iters=4)
    seq = [s.get_last_lr()[0]] + [s.step() or s.get_last_lr()[0] for _ in range(6)]
    np.testing.assert_allclose(seq, [0.5, 0.875, 1.25, 1.625, 2.0, 2.0, 2.0])


def test_scheduler_state_dict_resume():
    def make():
        opt = SGD([Parameter(np.zeros(1))], lr=0.1)
        return opt, fls.SequentialLR(opt, [fls.LinearLR(opt, start_factor=0.1, total_iters=3),
                                           fls.CosineAnnealingLR(opt, T_max=10)], milestones=[3])
    opt, s = make()
    for _ in range(5):
        s.step()
    sd = s.state_dict()
    osd = opt.state_dict()
    import json
    json.dumps(sd)                              # built-in schedulers' states are plain data
    rest = [s.step() or s.get_last_lr()[0] for _ in range(6)]
    opt2, s2 = make()
    opt2.load_state_dict(osd)
    s2.load_state_dict(sd)
    assert [s2.step() or s2.get_last_lr()[0] for _ in range(6)] == rest
    with pytest.raises(ValueError, match="unexpected keys"):
        fls.StepLR(opt2, 2).load_state_dict({"bogus": 1})


def test_scheduler_bad_arguments():
    opt = SGD([Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(TypeError, match="expected a fastmod.optim Optimizer"):
        fls.StepLR("opt", 2)
    with pytest.raises(ValueError, match="step_size must be a positive integer"):
        fls.StepLR(opt, 0)
    with pytest.raises(ValueError, match="T_max must be a positive integer"):
        fls.CosineAnnealingLR(opt, T_max=2.5)
    with pytest.raises(ValueError, match="start_factor must be > 0.0"):
        fls.LinearLR(opt, start_factor=0.0)
    with pytest.raises(ValueError, match="end_factor must be <= 1.0"):
        fls.LinearLR(opt, end_factor=1.5)
    with pytest.raises(ValueError, match="gamma must be finite"):
        fls.MultiStepLR(opt, [2], gamma=float("nan"))
    with pytest.raises(ValueError, match="expected 1 lr_lambdas"):
        fls.LambdaLR(opt, [lambda e: 1.0, lambda e: 1.0])
    with pytest.raises(ValueError, match="lr_lambda\\(0\\) must return a finite real >= 0"):
        fls.LambdaLR(opt, lambda e: float("nan"))
    a, b = fls.StepLR(opt, 2), fls.StepLR(opt, 3)
    with pytest.raises(ValueError, match="expected 1 milestones for 2 schedulers"):
        fls.SequentialLR(opt, [a, b], milestones=[2, 4])
    other = SGD([Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="drives another optimizer"):
        fls.SequentialLR(other, [a, b], milestones=[2])
    fresh = SGD([Parameter(np.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match="'initial_lr' is not specified"):
        fls.StepLR(fresh, 2, last_epoch=3)



# ------------------------------------------------------------------ SGD: one multi-tensor pass
BIG_SHAPES = [(300, 257), (5,), (70001,), (3, 2, 4), (129, 513)]    # > 2 x 32768 elements: split


@pytest.mark.parametrize("kw", SGD_CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_sgd_multi_tensor_pass_matches_reference(kw, dtype, threads):
    """Every parameter with a momentum history (or every one, without momentum) is updated in
    one kernel call whose element ranges straddle parameter boundaries: same results as the
    per-parameter formulas, at 1 and 2 threads."""
    params, _ = _run_fastmod(SGD, dtype, kw, steps=4, shapes=BIG_SHAPES)
    ref = ref_sgd(_params(dtype, shapes=BIG_SHAPES), [_grads(dtype, s, BIG_SHAPES) for s in range(4)], **kw)
    for p, r in zip(params, ref):
        np.testing.assert_allclose(p.data, r, **TOL[dtype])


def test_sgd_multi_tensor_mixed_dtypes_skips_and_thread_count(rng):
    """float32 and float64 parameters in one group (one pass per dtype), untouched ones skipped,
    a parameter whose momentum starts later (its first step alone); bit-identical at 1 and 2
    threads."""
    def run(nt):
        fastmod.set_num_threads(nt)
        ps = [Parameter(np.random.default_rng(i).standard_normal(s).astype(dt))
              for i, (s, dt) in enumerate([((400, 300), np.float32), ((50001,), np.float64),
                                           ((7,), np.float32), ((90000,), np.float32)])]
        opt = SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01)
        for step in range(4):
            opt.zero_grad()
            for i, p in enumerate(ps):
                if i == 2 and step < 2:
                    continue                    # untouched: skipped, its momentum starts at step 2
                p.grad = np.random.default_rng(10 * step + i).standard_normal(p.shape).astype(p.dtype)
            opt.step()
        return [p.data.copy() for p in ps]
    a, b = run(1), run(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    ref_ps = [np.random.default_rng(i).standard_normal(s).astype(dt)
              for i, (s, dt) in enumerate([((400, 300), np.float32), ((50001,), np.float64),
                                           ((7,), np.float32), ((90000,), np.float32)])]
    for i, (x, p0) in enumerate(zip(a, ref_ps)):
        steps = range(2, 4) if i == 2 else range(4)
        grads = [[np.random.default_rng(10 * s + i).standard_normal(p0.shape).astype(p0.dtype)] for s in steps]
        want = ref_sgd([p0], grads, lr=0.05, momentum=0.9, weight_decay=0.01)[0]
        np.testing.assert_allclose(x, want, **TOL[p0.dtype.type])
