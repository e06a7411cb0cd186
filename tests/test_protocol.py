"""The module protocol users write against (README "Writing your own module"): backward with or
without need_input_grad, fusion by capability, hooks, bound gradient storage, and user modules
inside every container, fit, save/load and gradcheck. DistributedDataParallel with user modules
(2 ranks) is in test_distributed.py (--model user)."""
import ast
import os

import numpy as np
import pytest

import fastmod
from fastmod import losses, nn, optim
from fastmod.nn.module import (elementwise_activation, fuses_input_activation_grad,
                               fuses_output_activation)
from reference import assert_close


# ------------------------------------------------------------------ user modules
class Scale(nn.Module):
    """y = x * w (per feature); backward(dy) alone -- Module adapts it."""

    def __init__(self, features, dtype=np.float32):
        super().__init__()
        self.weight = nn.Parameter(np.linspace(0.5, 1.5, features).astype(dtype))
        self.calls = 0

    def forward(self, x):
        self.save_for_backward(x)
        return x * self.weight.data

    def backward(self, dy):
        self.calls += 1
        (x,) = self.saved_for_backward()
        self.weight.grad += (dy * x).reshape(-1, x.shape[-1]).sum(0)
        return dy * self.weight.data


class Shift(nn.Module):
    """y = x + b; the full signature: skips dx when not needed."""

    def __init__(self, features, dtype=np.float32):
        super().__init__()
        self.bias = nn.Parameter(np.full(features, 0.1, dtype))
        self.dx_computed = 0

    def forward(self, x):
        self.save_for_backward(x.shape)
        return x + self.bias.data

    def backward(self, dy, need_input_grad=True):
        (shape,) = self.saved_for_backward()
        self.bias.grad += dy.reshape(-1, shape[-1]).sum(0)
        if not need_input_grad:
            return None
        self.dx_computed += 1
        return dy.copy()


class Square(nn.Module):
    """y = x * x, no parameters (a user activation, not fusable)."""

    def forward(self, x):
        self.save_for_backward(x)
        return x * x

    def backward(self, dy):
        (x,) = self.saved_for_backward()
        return 2 * x * dy


def _mlp(dtype=np.float32):
    fastmod.manual_seed(3)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), Scale(8), nn.Linear(8, 8), nn.ReLU(),
                         Shift(8), nn.Linear(8, 3)).astype(dtype)


def test_backward_without_the_flag_is_adapted(rng):
    m = Scale(4)
    assert "need_input_grad" in m.backward.__code__.co_varnames
    x = rng.standard_normal((5, 4)).astype(np.float32)
    dy = rng.standard_normal((5, 4)).astype(np.float32)
    m(x)
    assert m.backward(dy, need_input_grad=False) is None
    assert_close(m.weight.grad, (dy * x).sum(0), np.float32)          # still accumulated
    m(x)
    assert_close(m.backward(dy), dy * m.weight.data, np.float32)
    assert m.backward.__name__ == "backward" and m.calls == 2
    # a class that takes the flag (or **kwargs) is left as written
    assert Shift.backward.__qualname__ == "Shift.backward"


@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(Scale(4), nn.Tanh(), Shift(4)),
    lambda: nn.Residual(nn.Sequential(Scale(4), Square())),
    lambda: nn.Parallel(Scale(4), nn.Sequential(Shift(4), nn.Sigmoid()), combine="concat"),
    lambda: nn.Parallel(Scale(4), Shift(4)),
    lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Scale(4), nn.Linear(4, 4), nn.ReLU(), Shift(4)),
])
def test_user_modules_in_containers_gradcheck(make, rng):
    """Input and parameter gradients of containers holding user modules (float64 finite
    differences), with need_input_grad False passed down to a user module first in line."""
    model = make().astype(np.float64)
    x = rng.standard_normal((3, 4))
    fastmod.gradcheck(model, x)
    y = model(x)
    model.zero_grad()
    assert model.backward(np.ones_like(y), need_input_grad=False) is None
    assert any(p.has_grad() for p in model.parameters())


def test_user_modules_match_a_numpy_reference(rng):
    m = _mlp(np.float64)
    x = rng.standard_normal((5, 6))
    l0, s, l1, sh, l2 = m[0], m[2], m[3], m[5], m[6]
    h = np.maximum(x @ l0.weight.data.T + l0.bias.data, 0) * s.weight.data
    h = np.maximum(h @ l1.weight.data.T + l1.bias.data, 0) + sh.bias.data
    want = h @ l2.weight.data.T + l2.bias.data
    assert_close(m(x), want, np.float64)
    fastmod.gradcheck(m, x)


def test_first_user_module_skips_its_input_gradient(rng):
    shift = Shift(6)
    model = nn.Sequential(shift, nn.Linear(6, 3))
    x = rng.standard_normal((4, 6)).astype(np.float32)
    model(x)
    assert model.backward(np.ones((4, 3), np.float32), need_input_grad=False) is None
    assert shift.dx_computed == 0 and shift.bias.has_grad()


def test_fit_save_load_with_user_modules(tmp_path, rng):
    x = rng.standard_normal((256, 6)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(np.int64)
    model = _mlp()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    hist = fastmod.fit(model, losses.CrossEntropyLoss(), opt, (x, y), epochs=15, batch_size=32,
                       progress=False, handle_sigint=False)
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert model[2].calls > 0                      # the user backward ran inside fit
    path = str(tmp_path / "user.npz")
    fastmod.save(path, model, opt)
    other = _mlp()
    other.load_state_dict(fastmod.load(path).state_dict)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)
    with fastmod.no_grad():
        np.testing.assert_array_equal(other(x), model(x))


# ------------------------------------------------------------------ fusion by capability
@pytest.fixture
def fused_calls(monkeypatch):
    """Records the activation= / input_activation= each Linear / Conv call received."""
    calls = []
    for cls in (nn.Linear, nn.Conv2d):
        fwd, bwd = cls.forward, cls.backward

        def forward(self, x, activation=None, _f=fwd):
            calls.append(("fwd", type(self).__name__, activation))
            return _f(self, x, activation=activation)

        def backward(self, dy, need_input_grad=True, _b=bwd, **kw):
            calls.append(("bwd", type(self).__name__, kw.get("input_activation")))
            return _b(self, dy, need_input_grad=need_input_grad, **kw)
        monkeypatch.setattr(cls, "forward", forward)
        monkeypatch.setattr(cls, "backward", backward)
    return calls


def test_builtin_fusion_survives_a_user_module_next_to_it(fused_calls, rng):
    m = _mlp()
    x = rng.standard_normal((4, 6)).astype(np.float32)
    y = m(x)
    m.backward(np.ones_like(y))
    # Linear0 + ReLU and Linear1 + ReLU fused in forward; the user modules after the ReLUs mean
    # no Linear folds a ReLU's backward (its input is Scale's / Shift's output)
    assert [c for c in fused_calls if c[0] == "fwd"] == [("fwd", "Linear", "relu")] * 2 + [("fwd", "Linear", None)]
    assert [c[2] for c in fused_calls if c[0] == "bwd"] == [None, None, None]
    fused_calls.clear()
    plain = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    plain.backward(np.ones((4, 3), np.float32)) if plain(x) is not None else None
    assert ("bwd", "Linear", "relu") in fused_calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fusion_never_changes_results(dtype, rng):
    """The same model fused (capabilities) and unfused (a forward hook on every layer) gives
    the same outputs and gradients within float tolerance, in an MLP and a CNN."""
    fastmod.manual_seed(1)
    mlp = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    for model, shape in ((mlp, (5, 7)), (cnn, (2, 3, 6, 6))):
        model.astype(dtype)
        x = rng.standard_normal(shape).astype(dtype)
        runs = []
        for observe in (False, True):
            handles = [m.register_forward_hook(lambda *a: None) for m in model] if observe else []
            model.zero_grad()
            y = model(x)
            dx = model.backward(np.cos(y))
            runs.append([y, dx] + [p.grad.copy() for p in model.parameters()])
            for h in handles:
                h.remove()
        for a, b in zip(*runs):
            assert_close(a, b, dtype)


def test_subclass_overriding_forward_loses_capabilities(rng):
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2.0

    class NamedLinear(nn.Linear):              # nothing overridden: keeps them
        pass

    class LoudReLU(nn.ReLU):
        def forward(self, x):
            self.seen = True
            return super().forward(x)

    assert MyLinear.fused_activations == frozenset() and not fuses_output_activation(MyLinear(2, 2), "relu")
    assert fuses_output_activation(NamedLinear(2, 2), "relu")
    assert fuses_input_activation_grad(NamedLinear(2, 2), "relu")
    assert elementwise_activation(nn.ReLU()) == "relu" and elementwise_activation(LoudReLU()) is None
    fastmod.manual_seed(0)
    m = nn.Sequential(MyLinear(3, 4), nn.ReLU(), nn.Linear(4, 2), LoudReLU())
    x = rng.standard_normal((2, 3)).astype(np.float32)
    lin0, lin1 = m[0], m[2]
    want = np.maximum(np.maximum(2 * (x @ lin0.weight.data.T + lin0.bias.data), 0)
                      @ lin1.weight.data.T + lin1.bias.data, 0)
    assert_close(m(x), want, np.float32)
    assert m[3].seen


def test_a_user_module_declaring_a_capability_is_fused(rng):
    class Affine(nn.Module):
        fused_activations = frozenset({"relu"})

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(np.full(3, 2.0, np.float32))
            self.fused = 0

        def forward(self, x, activation=None):
            self.save_for_backward(x)
            y = x * self.w.data
            if activation == "relu":
                self.fused += 1
                np.maximum(y, 0, out=y)
            return y

        def backward(self, dy, need_input_grad=True):
            (x,) = self.saved_for_backward()
            self.w.grad += (dy * x).sum(0)
            return dy * self.w.data if need_input_grad else None

    a = Affine()
    m = nn.Sequential(a, nn.ReLU(), nn.Linear(3, 2))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    y = m(x)
    assert a.fused == 1
    m.backward(np.ones_like(y))
    ref = nn.Sequential(Affine(), nn.ReLU(), nn.Linear(3, 2))
    ref[0].register_forward_hook(lambda *args: None)        # observed: not fused
    ref.load_state_dict(m.state_dict())
    m.zero_grad()
    y = m(x)
    dx = m.backward(np.ones_like(y))
    ry = ref(x)
    rdx = ref.backward(np.ones_like(ry))
    assert ref[0].fused == 0
    assert_close(y, ry, np.float32)
    assert_close(dx, rdx, np.float32)
    assert_close(a.w.grad, ref[0].w.grad, np.float32)


def test_fusion_arguments_are_checked(rng):
    lin = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"Linear\(3, 2\): activation must be None or 'relu', got 'tanh'"):
        lin(np.ones((1, 3), np.float32), activation="tanh")
    conv = nn.Conv2d(2, 3, 3)
    with pytest.raises(ValueError, match="activation must be None or 'relu'"):
        conv(np.ones((1, 2, 4, 4), np.float32), activation="gelu")


# ------------------------------------------------------------------ forward_into / backward_into
@pytest.mark.parametrize("nd", [1, 2])
def test_conv_stateless_pair_on_channel_slices(nd, rng):
    """forward_into / backward_into on batch-strided channel slices of one buffer equal the
    module's forward / backward on contiguous copies (what DenseBlock relies on)."""
    conv = (nn.Conv1d(3, 2, 3, padding=1) if nd == 1 else nn.Conv2d(3, 2, 3, padding=1)).double()
    sp = (5,) if nd == 1 else (5, 4)
    buf = rng.standard_normal((4, 7) + sp)
    x = buf[:, :3]
    conv.forward_into(buf[:, 3:5], x, activation="relu")
    want = np.maximum(conv(np.ascontiguousarray(x)), 0)
    assert_close(buf[:, 3:5], want, np.float64)
    dy = rng.standard_normal(want.shape)
    conv.zero_grad()
    rdx = conv.backward(dy)
    rdw, rdb = conv.weight.grad.copy(), conv.bias.grad.copy()
    conv.zero_grad()
    dbuf = np.ones_like(buf)
    conv.backward_into(dy, x, dx=dbuf[:, :3], accumulate_dx=True)
    assert_close(dbuf[:, :3], rdx + 1, np.float64)
    np.testing.assert_array_equal(dbuf[:, 3:], 1)
    assert_close(conv.weight.grad, rdw, np.float64)
    assert_close(conv.bias.grad, rdb, np.float64)
    with pytest.raises(ValueError, match="out must be a writeable float64 array of shape"):
        conv.forward_into(np.empty((4, 2) + sp, np.float32), x)
    with pytest.raises(ValueError, match="x must be a float64 array"):
        conv.forward_into(buf[:, 3:5], x[..., ::2])
    with pytest.raises(ValueError, match="needs padding_mode='zeros'"):
        nn.Conv2d(3, 2, 3, padding=1, padding_mode="reflect").forward_into(
            np.empty((1, 2, 4, 4), np.float32), np.ones((1, 3, 4, 4), np.float32))
    # the inference epilogues: out = relu(conv(x)) * scale + shift + residual, per channel
    scale, shift = rng.uniform(0.5, 2, 2), rng.standard_normal(2)
    res = rng.standard_normal(want.shape)
    shp = (-1,) + (1,) * nd
    conv.forward_into(buf[:, 3:5], x, activation="relu", scale=scale, shift=shift, residual=res)
    assert_close(buf[:, 3:5], want * scale.reshape(shp) + shift.reshape(shp) + res, np.float64)
    pk = conv.pack_forward(buf[:, 3:5], x)                       # the weights packed once
    conv.forward_into(buf[:, 3:5], x, activation="relu", scale=scale, shift=shift, residual=res,
                      prepacked=pk)
    assert_close(buf[:, 3:5], want * scale.reshape(shp) + shift.reshape(shp) + res, np.float64)
    conv.forward_into(buf[:, 3:5], x, residual=buf[:, 5:7])      # a skip from the same buffer
    assert_close(buf[:, 3:5], conv(np.ascontiguousarray(x)) + buf[:, 5:7], np.float64)
    with pytest.raises(ValueError, match="scale and shift go together"):
        conv.forward_into(buf[:, 3:5], x, scale=scale)
    with pytest.raises(ValueError, match=r"scale and shift must have shape \(2,\)"):
        conv.forward_into(buf[:, 3:5], x, scale=np.ones(3), shift=np.ones(3))
    with pytest.raises(ValueError, match="residual must be a float64 array of shape"):
        conv.forward_into(buf[:, 3:5], x, residual=res[:1])
    with pytest.raises(ValueError, match="residual must be a float64 array of shape"):
        conv.forward_into(buf[:, 3:5], x, residual=res.astype(np.float32))


# ------------------------------------------------------------------ hooks
def test_forward_hooks_see_and_may_replace_values(rng):
    lin = nn.Linear(3, 2)
    seen = []
    h1 = lin.register_forward_pre_hook(lambda m, args: (args[0] * 2,))
    h2 = lin.register_forward_hook(lambda m, args, out: seen.append((args[0].copy(), out.copy())))
    x = np.ones((1, 3), np.float32)
    y = lin(x)
    np.testing.assert_array_equal(seen[0][0], 2 * x)
    np.testing.assert_array_equal(seen[0][1], y)
    h3 = lin.register_forward_hook(lambda m, args, out: out * 0)
    np.testing.assert_array_equal(lin(x), 0)
    for h in (h1, h2, h3):
        h.remove()
    assert "forward" not in lin.__dict__                   # no hook code left on the module
    with pytest.raises(TypeError, match="a hook must be callable"):
        lin.register_forward_hook(3)


def test_full_backward_hook_is_torchs(rng):
    fastmod.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    dy = rng.standard_normal((3, 2)).astype(np.float32)
    m(x)
    m.backward(dy)                           # fused (cached plan) before the hook exists
    got = {}
    m[2].register_full_backward_hook(lambda mod, gi, go: got.update(gi=gi, go=go))
    m(x)
    dx = m.backward(dy)
    assert got["go"][0] is dy or np.array_equal(got["go"][0], dy)
    # grad_input is w.r.t. the hooked Linear's own input (the ReLU's output): not fused with it
    assert_close(got["gi"][0], dy @ m[2].weight.data, np.float32)
    # a hook may replace grad_input: doubling it doubles what reaches the first layer
    m[2].register_full_backward_hook(lambda mod, gi, go: (gi[0] * 2,))
    m(x)
    assert_close(m.backward(dy), 2 * dx, np.float32)


def test_post_backward_hook_fires_after_the_gradients(rng):
    fastmod.manual_seed(0)
    block = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), block)
    order, grads = [], []

    def hook(m):
        order.append(m)
        grads.append([p.grad.copy() for p in m.parameters()])
    hb = block.register_post_backward_hook(hook)
    model[0].register_post_backward_hook(hook)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    model(x)
    model.backward(np.ones((2, 4), np.float32))
    assert order == [block, model[0]]
    for g, p in zip(grads[0], block.parameters()):
        np.testing.assert_array_equal(g, p.grad)           # accumulated when it fired
    assert "_observed" in block.__dict__ and not block.__dict__["_observed"]   # fusion stays
    hb.remove()
    assert "backward" not in block.__dict__


# ------------------------------------------------------------------ bound gradients
def test_bind_grad_keeps_gradients_in_a_flat_buffer(rng):
    fastmod.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    params = list(model.parameters())
    flat = np.zeros(sum(p.size for p in params), np.float32)
    off, views = 0, []
    for p in params:
        views.append(flat[off:off + p.size].reshape(p.shape))
        p.bind_grad(views[-1])
        off += p.size
    x = rng.standard_normal((5, 3)).astype(np.float32)
    model(x)
    model.backward(np.ones((5, 2), np.float32))
    for p, v in zip(params, views):
        assert p.grad is v and p.bound_grad is v
    assert np.count_nonzero(flat)
    params[0].grad = np.full(params[0].shape, 7, np.float32)     # assignment copies into it
    np.testing.assert_array_equal(views[0], 7)
    model.zero_grad()
    model(x)
    model.backward(np.ones((5, 2), np.float32))                  # zeroed: overwritten, not added
    before = flat.copy()
    model(x)
    model.backward(np.ones((5, 2), np.float32))
    assert_close(flat, 2 * before, np.float32)
    model.astype(np.float64)                                     # the binding ends with the dtype
    assert params[0].bound_grad is None
    with pytest.raises(ValueError, match=r"expected a float64 array of shape \(4, 3\)"):
        params[0].bind_grad(np.zeros((3, 4)))
    with pytest.raises(TypeError, match="expected a float64 array"):
        params[0].bind_grad(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous"):
        params[0].bind_grad(np.zeros((3, 4)).T)


# ------------------------------------------------------------------ one validation module
def test_one_floor_neutral_validation_module():
    """fastmod/_validate.py imports nothing from fastmod, and no other module defines its own
    positive-int / real / bool / seed checker (they all import these)."""
    root = os.path.join(os.path.dirname(fastmod.__file__))
    src = open(os.path.join(root, "_validate.py")).read()
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(n.startswith("fastmod") for n in names), names
    banned = {"_positive_int", "positive_int", "_nonneg_int", "_real", "_nonneg_real",
              "check_positive", "_bool", "_check_seed", "finite_float", "boolean"}
    users = set()
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".py") or f == "_validate.py":
                continue
            text = open(os.path.join(dirpath, f)).read()
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef):
                    assert node.name not in banned, f"{f}: defines its own {node.name}"
            if "fastmod._validate import" in text:
                users.add(os.path.relpath(os.path.join(dirpath, f), root).split(os.sep)[0])
    assert {"nn", "optim", "data", "distributed.py", "cli.py", "training.py"} <= users
    assert not os.path.exists(os.path.join(root, "nn", "_validate.py"))
