"""The Module / Parameter API (SPEC §2): traversal, modes, gradients, dtype, state dicts,
grad mode and saved state."""
import numpy as np
import pytest

import fastmod
from fastmod import nn
import reference as ref
from reference import assert_close


def lin(i, o, dtype=np.float64, bias=True, seed=0):
    fastmod.manual_seed(seed)
    return nn.Linear(i, o, bias=bias, dtype=dtype)


class WithBuffers(nn.Module):
    """A tiny module with a parameter, a float buffer, an int buffer and a non-persistent one."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(3, np.float32))
        self.register_buffer("running", np.zeros(3, np.float32))
        self.register_buffer("count", np.zeros((), np.int64))
        self.register_buffer("scratch", np.zeros(2, np.float32), persistent=False)

    def forward(self, x):
        x = self._check_dtype(x, self.scale.dtype)
        self._save(x)
        return x * self.scale.data

    def backward(self, dy, need_input_grad=True):
        (x,) = self._saved()
        g, acc = self.scale.grad_buffer()
        s = (dy * x).reshape(-1, 3).sum(0)
        g[...] = g + s if acc else s
        return dy * self.scale.data


def fm_model(dtype=np.float32):
    return nn.Sequential(nn.Linear(4, 8, dtype=dtype), nn.ReLU(),
                         nn.Sequential(nn.Linear(8, 8, dtype=dtype), nn.Tanh()),
                         nn.ResidualBlock(8, dtype=dtype), nn.Linear(8, 2, bias=False, dtype=dtype))


def torch_model(torch):
    class TBlock(torch.nn.Module):
        def __init__(self, d):
            super().__init__()
            self.mm1, self.mm2 = torch.nn.Linear(d, d), torch.nn.Linear(d, d)

        def forward(self, z):
            return z + torch.relu(self.mm1(torch.relu(self.mm2(z))))

    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
                               torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh()),
                               TBlock(8), torch.nn.Linear(8, 2, bias=False))


# ------------------------------------------------------------------ traversal: names as torch
def test_names_and_layouts_match_torch(torch):
    fm, tm = fm_model(), torch_model(torch)
    assert [n for n, _ in fm.named_parameters()] == [n for n, _ in tm.named_parameters()]
    fsd, tsd = fm.state_dict(), tm.state_dict()
    assert list(fsd) == list(tsd)
    assert all(fsd[k].shape == tuple(tsd[k].shape) for k in tsd)
    assert all(isinstance(v, np.ndarray) for v in fsd.values())
    assert fm.num_parameters() == sum(p.numel() for p in tm.parameters())
    assert [n for n, _ in fm.named_children()] == [n for n, _ in tm.named_children()]
    fnames = [n for n, _ in fm.named_modules()]
    tnames = [n for n, _ in tm.named_modules()]
    # fastmod's ResidualBlock also has its two activation modules as children
    assert [n for n in fnames if "act_" not in n] == tnames


def test_loaded_torch_weights_give_torch_outputs(torch, rng):
    fm, tm = fm_model(np.float64), torch_model(torch).double()
    fm.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    x = rng.standard_normal((3, 4))
    np.testing.assert_allclose(fm(x), tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    # and the other way
    fm2 = fm_model(np.float64)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in fm2.state_dict().items()})
    np.testing.assert_allclose(fm2(x), tm(torch.from_numpy(x)).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_shared_modules_and_tied_weights_are_deduplicated_as_torch(torch):
    shared = nn.Linear(3, 3)
    fm = nn.Sequential(shared, nn.ReLU(), shared)
    tshared = torch.nn.Linear(3, 3)
    tm = torch.nn.Sequential(tshared, torch.nn.ReLU(), tshared)
    assert [n for n, _ in fm.named_parameters()] == [n for n, _ in tm.named_parameters()] \
        == ["0.weight", "0.bias"]
    assert list(fm.state_dict()) == list(tm.state_dict())      # state_dict keeps both names
    assert [n for n, _ in fm.named_modules()] == [n for n, _ in tm.named_modules()]
    assert len(list(fm.parameters())) == 2 and fm.num_parameters() == 12
    # a Parameter shared by two Linears (weight tying)
    a, b = nn.Linear(3, 3), nn.Linear(3, 3)
    b.weight = a.weight
    ta, tb = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)
    tb.weight = ta.weight
    fm, tm = nn.Sequential(a, b), torch.nn.Sequential(ta, tb)
    assert [n for n, _ in fm.named_parameters()] == [n for n, _ in tm.named_parameters()]
    assert list(fm.state_dict()) == list(tm.state_dict())


def test_tied_weight_gradients_add(rng):
    a, b = lin(3, 3), lin(3, 3, seed=1)
    b.weight = a.weight
    seq = nn.Sequential(a, nn.Tanh(), b)
    assert fastmod.gradcheck(seq, rng.standard_normal((2, 3)))


def test_children_modules_apply():
    inner = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    outer = nn.Sequential(inner, nn.Linear(2, 1))
    assert list(outer.children()) == [inner, outer[1]]
    assert [type(m).__name__ for m in outer.modules()] == ["Sequential", "Sequential", "Linear", "ReLU", "Linear"]
    assert [n for n, _ in outer.named_modules()] == ["", "0", "0.0", "0.1", "1"]
    seen = []
    outer.apply(lambda m: seen.append(type(m).__name__))
    assert seen == ["Linear", "ReLU", "Sequential", "Linear", "Sequential"]    # children first
    assert [n for n, _ in outer.named_parameters(prefix="model")][0] == "model.0.0.weight"
    assert list(outer.named_parameters(recurse=False)) == []


def test_buffers_in_state_dict_and_astype():
    m = nn.Sequential(WithBuffers(), nn.Linear(3, 2))
    assert [n for n, _ in m.named_buffers()] == ["0.running", "0.count", "0.scratch"]
    assert len(list(m.buffers())) == 3
    assert list(m.state_dict()) == ["0.scale", "0.running", "0.count", "1.weight", "1.bias"]
    m.astype(np.float64)
    wb = m[0]
    assert wb.running.dtype == np.float64 and wb.scratch.dtype == np.float64
    assert wb.count.dtype == np.int64                  # integer buffers keep their type
    with pytest.raises(TypeError, match="buffer 'running' must be an ndarray"):
        wb.running = [0.0, 0.0, 0.0]


# ------------------------------------------------------------------ modes
def test_train_eval_propagate():
    drop = nn.Dropout(0.5)
    m = nn.Sequential(nn.Linear(2, 2), nn.Sequential(drop, nn.ReLU()))
    assert all(x.training for x in m.modules())
    assert m.eval() is m
    assert not any(x.training for x in m.modules())
    x = np.ones((4, 2), np.float32)
    np.testing.assert_array_equal(drop(x), x)             # eval: identity
    m.train()
    assert all(x.training for x in m.modules())
    m.train(False)
    assert not drop.training
    with pytest.raises(ValueError, match="mode must be a bool"):
        m.train("yes")


# ------------------------------------------------------------------ gradients
def test_gradients_accumulate_until_zero_grad(rng):
    m = nn.Sequential(lin(3, 4), nn.Tanh(), lin(4, 2, seed=1))
    x1, x2 = rng.standard_normal((2, 5, 3))
    d1, d2 = rng.standard_normal((2, 5, 2))

    def grads(x, dy):
        m.zero_grad()
        m(x)
        m.backward(dy)
        return [p.grad.copy() for p in m.parameters()]

    g1, g2 = grads(x1, d1), grads(x2, d2)
    m.zero_grad()
    for x, dy in ((x1, d1), (x2, d2)):                   # two backward calls, no zero_grad between
        m(x)
        m.backward(dy)
    for a, b, p in zip(g1, g2, m.parameters()):
        np.testing.assert_allclose(p.grad, a + b, rtol=1e-12, atol=1e-14)
    m.zero_grad()
    for p in m.parameters():
        np.testing.assert_array_equal(p.grad, 0)
    m(x1)
    m.backward(d1)                                       # after zero_grad: overwrites, not adds
    for a, p in zip(g1, m.parameters()):
        np.testing.assert_array_equal(p.grad, a)


def test_gradient_accumulation_matches_torch(torch, rng):
    fm = lin(3, 2)
    tm = torch.nn.Linear(3, 2).double()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in fm.state_dict().items()})
    for _ in range(2):
        x, dy = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
        fm(x)
        fm.backward(dy)
        tm(torch.from_numpy(x)).backward(torch.from_numpy(dy))
    assert_close(fm.weight.grad, tm.weight.grad.numpy(), np.float64)
    assert_close(fm.bias.grad, tm.bias.grad.numpy(), np.float64)


def test_requires_grad_false_and_num_parameters(rng):
    m = nn.Sequential(lin(3, 4), nn.ReLU(), lin(4, 2, seed=1))
    assert m.num_parameters() == 3 * 4 + 4 + 4 * 2 + 2
    m[0].requires_grad_(False)
    assert m.num_parameters(trainable_only=True) == 4 * 2 + 2
    assert m.num_parameters() == 3 * 4 + 4 + 4 * 2 + 2
    m(rng.standard_normal((2, 3)))
    m.backward(rng.standard_normal((2, 2)))
    assert not m[0].weight.has_grad() and not m[0].bias.has_grad()
    assert m[2].weight.has_grad()
    # still the right input gradient
    m[0].requires_grad_(True)
    m[0].weight.requires_grad = False
    assert fastmod.gradcheck(m, rng.standard_normal((2, 3)))


def test_parameter_basics():
    p = nn.Parameter(np.arange(6, dtype=np.float64).reshape(2, 3))
    assert p.shape == (2, 3) and p.dtype == np.float64 and p.size == 6 and p.ndim == 2
    assert np.asarray(p) is p.data and repr(p) == "Parameter(shape=(2, 3), dtype=float64)"
    np.testing.assert_array_equal(p.grad, np.zeros((2, 3)))
    p.grad = np.ones((2, 3))
    np.testing.assert_array_equal(p.grad, 1)
    with pytest.raises(TypeError, match=r"expected float64 array of shape \(2, 3\), got float32 \(2, 3\)"):
        p.grad = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"got float64 \(3, 2\)"):
        p.grad = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"got float32 \(3, 2\)"):      # both: the shape first
        p.grad = np.ones((3, 2), np.float32)
    p.grad = None
    np.testing.assert_array_equal(p.grad, 0)
    with pytest.raises(TypeError, match="expected float32 or float64 data, got int64"):
        nn.Parameter(np.arange(3))
    assert nn.Parameter(np.ones((3, 2)).T).data.flags.c_contiguous


def test_parameter_data_keeps_shape_and_dtype(rng):
    """Kernels size their loops from the module's arguments: replacing a parameter's data
    with another shape or dtype (a transposed weight, say) must fail loudly, not read or write
    out of bounds."""
    m = nn.Linear(6, 3)
    w = m.weight.data
    with pytest.raises(ValueError, match=r"Parameter.data: expected a float32 array of shape \(3, 6\).*got float32 \(6, 3\)"):
        m.weight.data = w.T.copy()
    with pytest.raises(TypeError, match=r"expected a float32 array.*got float64 \(3, 6\)"):
        m.weight.data = w.astype(np.float64)
    with pytest.raises(ValueError, match=r"Linear\(6, 3\): weight must have shape \(3, 6\), got \(2, 2\)"):
        m.weight = nn.Parameter(np.zeros((2, 2), np.float32))
    with pytest.raises(TypeError, match="bias must be float32 like the weight, got float64"):
        m.bias = nn.Parameter(np.zeros(3))
    wb = WithBuffers()                                     # any module: same shape and dtype
    with pytest.raises(ValueError, match=r"WithBuffers: cannot replace parameter 'scale' \(float32 \(3,\)\) with a float32 \(4,\) one"):
        wb.scale = nn.Parameter(np.ones(4, np.float32))
    with pytest.raises(TypeError, match=r"cannot replace parameter 'scale' \(float32 \(3,\)\) with a float64"):
        wb.scale = nn.Parameter(np.ones(3))
    assert m.weight.data is w
    m.weight.data -= 1.0                                   # in-place updates keep the array
    assert m.weight.data is w
    m.weight.data = np.asfortranarray(np.ones((3, 6), np.float32))
    assert m.weight.data.flags.c_contiguous
    m.weight = nn.Parameter(np.full((3, 6), 2.0, np.float32))    # same shape: fine (tying)
    x = rng.standard_normal((2, 6)).astype(np.float32)
    np.testing.assert_allclose(m(x), ref.linear(x, m.weight.data, m.bias.data), rtol=1e-5, atol=1e-5)


def test_module_attribute_rules():
    class NoInit(nn.Module):
        def __init__(self):
            self.w = 1

    with pytest.raises(AttributeError, match=r"call Module.__init__\(\) before assigning attribute 'w'"):
        NoInit()
    m = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="cannot assign ndarray to parameter 'weight'"):
        m.weight = np.zeros((2, 2), np.float32)
    m.bias = None
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    seq = nn.Sequential(nn.ReLU())
    with pytest.raises(TypeError, match="cannot assign int to submodule '0'"):
        setattr(seq, "0", 3)
    with pytest.raises(TypeError, match="register_parameter: expected a Parameter"):
        m.register_parameter("w2", np.zeros(2))
    with pytest.raises(TypeError, match="register_buffer: expected an ndarray"):
        m.register_buffer("b2", [1.0])
    with pytest.raises(TypeError, match="ReLU does not define"):
        nn.Module.forward(nn.ReLU())


# ------------------------------------------------------------------ dtype
def test_astype_round_trip_and_mismatch_errors(rng):
    m = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.ResidualBlock(4))
    x32 = rng.standard_normal((2, 3)).astype(np.float32)
    y32 = m(x32)
    m.backward(np.ones_like(y32))
    assert m.astype(np.float64) is m
    assert all(p.dtype == np.float64 for p in m.parameters()) and m.dtype == np.float64
    assert all(p.grad.dtype == np.float64 for p in m.parameters())
    y64 = m(x32.astype(np.float64))
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, y32, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match=r"Linear\(3, 4\): expected float64 input like its weights, got float32"):
        m(x32)
    m.astype("float32")
    assert all(p.dtype == np.float32 for p in m.parameters())
    np.testing.assert_array_equal(m(x32), y32)           # f32 -> f64 -> f32 is exact
    with pytest.raises(TypeError, match="float64"):
        m(x32.astype(np.float64))
    with pytest.raises(TypeError, match="expected float32 or float64, got int64"):
        m.astype(np.int64)
    with pytest.raises(TypeError, match=r"got int64 \(use .astype\(np.float32\) on the input\)$"):
        m(x32.astype(np.int64))                          # no advice to make the module int64
    assert m.double().dtype == np.float64 and m.float().dtype == np.float32


def test_astype_releases_saved_state(rng):
    m = nn.Linear(3, 2)
    m(rng.standard_normal((2, 3)).astype(np.float32))
    m.astype(np.float64)
    with pytest.raises(RuntimeError, match="no saved forward state"):
        m.backward(np.zeros((2, 2)))


# ------------------------------------------------------------------ state_dict / load_state_dict
def test_state_dict_is_a_copy():
    m = nn.Linear(2, 2)
    sd = m.state_dict()
    sd["weight"][...] = 7
    assert not np.any(m.weight.data == 7)


def test_load_state_dict_round_trip_and_torch_tensors(torch, rng):
    a, b = fm_model(), fm_model()
    res = b.load_state_dict(a.state_dict())
    assert res.missing_keys == [] and res.unexpected_keys == []
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    # torch tensors are accepted as values
    tm = torch_model(torch)
    b.load_state_dict(tm.state_dict())
    np.testing.assert_array_equal(b.state_dict()["0.weight"], tm.state_dict()["0.weight"].numpy())


def test_load_state_dict_errors_name_every_problem_and_change_nothing():
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    before = m.state_dict()
    good = m.state_dict()
    bad = dict(good)
    del bad["2.bias"]
    bad["2.extra"] = np.zeros(2, np.float32)
    bad["0.weight"] = np.zeros((3, 4), np.float32)        # transposed shape
    bad["0.bias"] = np.zeros(4, np.float64)                # wrong dtype
    bad["2.weight"] = np.zeros((2, 4), np.float32)         # fine on its own
    with pytest.raises(ValueError) as err:
        m.load_state_dict(bad)
    msg = str(err.value)
    assert "missing keys: 2.bias" in msg
    assert "unexpected keys: 2.extra" in msg
    assert "0.weight: expected shape (4, 3), got (3, 4)" in msg
    assert "0.bias: expected dtype float32, got float64" in msg
    for k, v in m.state_dict().items():                    # nothing was modified
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(ValueError, match="0.bias: contains NaN or infinite values"):
        m.load_state_dict({**good, "0.bias": np.full(4, np.nan, np.float32)})
    # a buffer may hold -inf on purpose (e.g. an attention mask)
    wb = WithBuffers()
    sd = wb.state_dict()
    sd["running"] = np.array([0.0, -np.inf, 1.0], np.float32)
    wb.load_state_dict(sd)
    assert wb.running[1] == -np.inf
    with pytest.raises(TypeError, match="expected a dict of arrays, got list"):
        m.load_state_dict([1, 2])


def test_dtype_mismatches_are_type_errors(rng):
    """SPEC §4: a dtype mismatch is a TypeError naming both dtypes; a shape mismatch stays a
    ValueError, and when both differ the shape is reported (ValueError, naming both)."""
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    good = m.state_dict()
    with pytest.raises(TypeError, match="0.bias: expected dtype float32, got float64; "
                                        "2.weight: expected dtype float32, got float64"):
        m.load_state_dict({**good, "0.bias": np.zeros(4), "2.weight": np.zeros((2, 4))})
    with pytest.raises(ValueError, match="0.weight: expected shape") as err:   # mixed: ValueError
        m.load_state_dict({**good, "0.bias": np.zeros(4), "0.weight": np.zeros((3, 4), np.float32)})
    assert not isinstance(err.value, TypeError)
    with pytest.raises(ValueError, match="missing keys: 2.bias"):
        m.load_state_dict({k: v.astype(np.float64) for k, v in good.items() if k != "2.bias"})
    p = m[0].weight
    for setter in (lambda v: setattr(p, "grad", v), lambda v: setattr(p, "data", v),
                   lambda v: setattr(m[0], "weight", nn.Parameter(v))):
        with pytest.raises(TypeError, match=r"float32.*got float64"):
            setter(np.zeros((4, 3)))
        with pytest.raises(ValueError, match=r"\(4, 3\).*got .*\(3, 4\)"):
            setter(np.zeros((3, 4), np.float32))
        with pytest.raises(ValueError, match=r"\(4, 3\).*got .*\(3, 4\)"):
            setter(np.zeros((3, 4)))
    m(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match=r"Linear\(4, 2\)\.backward: expected a gradient of shape "
                                        r"\(2, 2\) and dtype float32 .*got \(2, 2\) float64"):
        m.backward(np.zeros((2, 2)))
    with pytest.raises(TypeError, match=r"Linear\(3, 4\): expected float32 input like its weights, "
                                        r"got float64"):
        m(np.zeros((2, 3)))


def test_load_state_dict_non_strict():
    m = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    sd = {"0.weight": np.ones((4, 3), np.float32), "junk": np.zeros(1)}
    res = m.load_state_dict(sd, strict=False)
    assert res.unexpected_keys == ["junk"]
    assert res.missing_keys == ["0.bias", "1.weight", "1.bias"]
    np.testing.assert_array_equal(m[0].weight.data, 1)
    with pytest.raises(ValueError, match=r"0.weight: expected shape \(4, 3\), got \(3, 4\)"):
        m.load_state_dict({"0.weight": np.ones((3, 4), np.float32)}, strict=False)


def test_load_state_dict_keeps_parameter_identity_and_read_only_arrays():
    m = nn.Linear(2, 2)
    w = m.weight
    ro = np.full((2, 2), 3.0, np.float32)
    ro.flags.writeable = False
    m.load_state_dict({"weight": ro, "bias": np.zeros(2, np.float32)})
    assert m.weight is w                                   # optimizers hold Parameter objects
    np.testing.assert_array_equal(m.weight.data, 3)
    m.weight.data[0, 0] = 1                                # still writable: a copy was made
    assert ro[0, 0] == 3


# ------------------------------------------------------------------ grad mode and saved state
def test_no_grad_saves_nothing(rng):
    m = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    with fastmod.no_grad():
        assert not fastmod.is_grad_enabled()
        y = m(x)
        assert all(not mod._stack for mod in m.modules())
    assert fastmod.is_grad_enabled()
    with pytest.raises(RuntimeError, match=r"Sequential\(\)\.backward: no saved forward state"):
        m.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match=r"Linear\(4, 2\)\.backward: no saved forward state"):
        m[2].backward(np.ones_like(y))
    np.testing.assert_array_equal(m(x), y)                 # same output with grad on

    @fastmod.no_grad()
    def infer(v):
        assert not fastmod.is_grad_enabled()
        return m(v)

    np.testing.assert_array_equal(infer(x), y)
    assert fastmod.is_grad_enabled()
    with fastmod.no_grad():
        with fastmod.enable_grad():
            assert fastmod.is_grad_enabled()
            m(x)
        assert not fastmod.is_grad_enabled()
    m.backward(np.ones_like(y))                            # enable_grad saved the state


def test_grad_mode_decorators():
    @fastmod.enable_grad()
    def on():
        return fastmod.is_grad_enabled()

    @fastmod.enable_grad
    def on_bare():
        return fastmod.is_grad_enabled()

    @fastmod.no_grad
    def off_bare():
        return fastmod.is_grad_enabled()

    with fastmod.no_grad():
        assert on() and on_bare()          # regression: enable_grad() decorated with no_grad
        assert not fastmod.is_grad_enabled()
    assert not off_bare() and fastmod.is_grad_enabled()
    assert off_bare.__name__ == "off_bare"
    with pytest.raises(TypeError, match="no_grad: expected a function to decorate, got int"):
        fastmod.no_grad()(3)


def test_no_grad_restored_after_exception():
    with pytest.raises(ValueError):
        with fastmod.no_grad():
            raise ValueError("boom")
    assert fastmod.is_grad_enabled()


def test_new_top_level_forward_releases_old_state(rng):
    m = nn.Sequential(lin(3, 4), nn.Tanh(), lin(4, 2, seed=1))
    x1, x2 = rng.standard_normal((2, 5, 3))
    dy = rng.standard_normal((5, 2))
    m(x1)
    m(x2)                                                  # a new pass: x1's state is dropped
    assert all(len(mod._stack) <= 1 for mod in m.modules())
    dx = m.backward(dy)
    g = [p.grad.copy() for p in m.parameters()]
    with pytest.raises(RuntimeError, match="no saved forward state"):
        m.backward(dy)
    m.zero_grad()
    m(x2)
    np.testing.assert_array_equal(m.backward(dy), dx)      # the gradients are x2's
    for a, p in zip(g, m.parameters()):
        np.testing.assert_array_equal(a, p.grad)


def test_module_shared_across_two_top_level_calls_raises_clearly(rng):
    """enc and dec called one after the other (two passes) share an activation: the second
    pass releases the first one's state, so enc's backward raises instead of using dec's."""
    act = nn.Tanh()
    enc, dec = nn.Sequential(lin(3, 3), act), nn.Sequential(lin(3, 3, seed=1), act)
    h = enc(rng.standard_normal((2, 3)))
    y = dec(h)
    dh = dec.backward(np.ones_like(y))
    with pytest.raises(RuntimeError, match=r"Tanh\(\)\.backward: no saved forward state.*new top-level forward"):
        enc.backward(dh)


def test_failed_forward_does_not_break_later_passes(rng):
    m = nn.Sequential(lin(3, 3), nn.ReLU(), lin(4, 2))      # second Linear has the wrong width
    with pytest.raises(ValueError, match=r"Linear\(4, 2\)"):
        m(rng.standard_normal((2, 3)))
    ok = nn.Sequential(m[0], m[1])
    assert fastmod.gradcheck(ok, rng.standard_normal((2, 3)) + 0.01)


def test_module_used_twice_keeps_both_states(rng):
    """Called twice in one pass, a module pops its saved states last-in first-out, so each use
    gets its own gradient (checked against the reference by hand)."""
    shared = lin(3, 3)
    x = rng.standard_normal((4, 3))
    dy = rng.standard_normal((4, 3))
    seq = nn.Sequential(shared, shared)
    y = seq(x)
    dx = seq.backward(dy)
    w, b = shared.weight.data, shared.bias.data
    h = ref.linear(x, w, b)
    np.testing.assert_allclose(y, ref.linear(h, w, b), rtol=1e-12)
    dh, dw2, db2 = ref.linear_backward(dy, h, w)
    rdx, dw1, db1 = ref.linear_backward(dh, x, w)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12)
    np.testing.assert_allclose(shared.weight.grad, dw1 + dw2, rtol=1e-12)
    np.testing.assert_allclose(shared.bias.grad, db1 + db2, rtol=1e-12)


def test_custom_module_with_buffers_gradcheck(rng):
    m = WithBuffers().astype(np.float64)
    m.scale.data[...] = [0.5, -2.0, 3.0]
    assert fastmod.gradcheck(m, rng.standard_normal((2, 3)))


def test_repr_nested():
    m = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    assert repr(m) == "Sequential(\n  (0): Linear(2, 3)\n  (1): ReLU()\n)"


# ------------------------------------------------------------------ fastmod.nn.init
@pytest.mark.parametrize("nonlin,param", [("linear", None), ("sigmoid", None), ("tanh", None),
                                          ("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2),
                                          ("leaky_relu", 0), ("selu", None), ("conv2d", None)])
def test_calculate_gain_matches_torch(torch, nonlin, param):
    assert nn.init.calculate_gain(nonlin, param) == pytest.approx(torch.nn.init.calculate_gain(nonlin, param))


@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 5), (6, 2, 3, 3)])
def test_fans_and_init_bounds_match_torch(torch, shape):
    a = np.empty(shape)
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(a)
    assert (fan_in, fan_out) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    g = np.random.default_rng(0)
    bound = np.sqrt(6.0 / (fan_in + fan_out))
    v = nn.init.xavier_uniform_(a, generator=g)
    assert v is a and np.abs(a).max() <= bound and np.abs(a).max() > 0.5 * bound
    nn.init.kaiming_uniform_(a, a=np.sqrt(5), generator=g)       # torch's Linear/Conv default
    assert np.abs(a).max() <= 1 / np.sqrt(fan_in)
    nn.init.kaiming_uniform_(a, mode="fan_out", nonlinearity="relu", generator=g)
    assert np.abs(a).max() <= np.sqrt(6.0 / fan_out)
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out'"):
        nn.init.kaiming_normal_(a, mode="fan")


def test_init_statistics_and_constants():
    g = np.random.default_rng(1)
    big = nn.Parameter(np.empty((400, 500)))
    nn.init.kaiming_normal_(big, nonlinearity="relu", generator=g)
    assert big.data.std() == pytest.approx(np.sqrt(2.0 / 500), rel=0.02)
    nn.init.xavier_normal_(big, gain=2.0, generator=g)
    assert big.data.std() == pytest.approx(2.0 * np.sqrt(2.0 / 900), rel=0.02)
    nn.init.trunc_normal_(big, std=1.0, a=-0.5, b=0.5, generator=g)
    assert big.data.min() >= -0.5 and big.data.max() <= 0.5
    nn.init.normal_(big, 3.0, 0.5, generator=g)
    assert big.data.mean() == pytest.approx(3.0, abs=0.01)
    nn.init.zeros_(big)
    assert not big.data.any()
    nn.init.ones_(big)
    assert (big.data == 1).all()
    nn.init.constant_(big, -2.5)
    assert (big.data == -2.5).all()
    with pytest.raises(ValueError, match="at least 2 dims"):
        nn.init.xavier_uniform_(np.empty(3))
    with pytest.raises(ValueError, match="unsupported nonlinearity"):
        nn.init.calculate_gain("swish")


def test_manual_seed_makes_init_reproducible():
    fastmod.manual_seed(5)
    a = nn.Linear(4, 3).state_dict()
    fastmod.manual_seed(5)
    b = nn.Linear(4, 3).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(nn.Linear(4, 3).weight.data, a["weight"])


def test_stale_state_released_before_the_next_forward_allocates(rng):
    """A new grad-enabled forward drops what the previous pass saved as each module is called
    (before it allocates its output), and a no_grad forward in between keeps it for backward."""
    import weakref
    lin, relu = nn.Linear(6, 5), nn.ReLU()
    m = nn.Sequential(lin, relu)
    x = rng.standard_normal((4, 6)).astype(np.float32)
    y1 = m(x)
    ref1 = weakref.ref(y1)                  # the fused ReLU's output, saved in Sequential's plan
    dy = rng.standard_normal(y1.shape).astype(np.float32)
    want = m.backward(dy)
    y1 = m(x)
    with fastmod.no_grad():
        m(x + 1)
    np.testing.assert_array_equal(m.backward(dy), want)     # the no_grad pass kept the state
    del y1
    m(x)
    assert ref1() is None                   # released, not kept alongside the new pass
    assert len(m._stack) == 1 and len(lin._stack) == 1 and not relu._stack
