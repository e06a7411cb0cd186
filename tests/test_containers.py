"""Composition (Identity, Sequential, ModuleList, Residual, Parallel, ResidualBlock) and the
shape/regularization layers Flatten and Dropout."""
import numpy as np
import pytest

import fastmod
from fastmod import nn
import reference as ref
from reference import assert_close, tol


def lin(i, o, dtype=np.float64, bias=True, seed=0):
    fastmod.manual_seed(seed)
    return nn.Linear(i, o, bias=bias, dtype=dtype)


# ------------------------------------------------------------------ Identity
def test_identity(rng):
    m = nn.Identity()
    x = rng.standard_normal((2, 3))
    assert m(x) is x
    dy = rng.standard_normal((2, 3))
    assert m.backward(dy) is dy
    m(x)
    assert m.backward(dy, need_input_grad=False) is None
    m(x)
    with pytest.raises(ValueError, match=r"Identity\(\)\.backward: expected a gradient of shape \(2, 3\)"):
        m.backward(dy[:, :2])           # checked like every module's (was returned as given)
    tokens = np.arange(3)
    assert m(tokens) is tokens and m.backward(None) is None     # non-float input: passed through
    assert fastmod.gradcheck(m, x)
    assert m.num_parameters() == 0 and m.state_dict() == {}


def test_identity_torch_parity(torch, parity, dtype, rng):
    parity(nn.Identity(), torch.nn.Identity(), rng.standard_normal((3, 4)).astype(dtype))


# ------------------------------------------------------------------ Sequential: composition
def test_sequential_is_composition(dtype, rng):
    """Sequential(f_1, ..., f_L)(x) = f_L(...f_1(x)); backward is the chain rule in reverse."""
    fs = [lin(4, 5, dtype, seed=1), nn.Tanh(), lin(5, 3, dtype, seed=2), nn.GELU()]
    seq = nn.Sequential(*fs)
    x = rng.standard_normal((6, 4)).astype(dtype)
    y = seq(x)
    h = x
    for f in fs:
        h = f(h)
    np.testing.assert_array_equal(y, h)
    # against the references, composed by hand
    w1, b1, w2, b2 = (p.data for p in seq.parameters())
    assert_close(y, ref.gelu(ref.linear(ref.tanh(ref.linear(x, w1, b1)), w2, b2)), dtype)
    # backward = chain of the children's backward, last to first
    dy = rng.standard_normal(y.shape).astype(dtype)
    seq.zero_grad()
    seq(x)
    dx = seq.backward(dy)
    grads = [p.grad.copy() for p in seq.parameters()]
    seq.zero_grad()
    h = x
    for f in fs:                                    # the children called one by one
        h = f(h)
    g = dy
    for f in reversed(fs):
        g = f.backward(g)
    np.testing.assert_array_equal(dx, g)
    for a, p in zip(grads, seq.parameters()):
        np.testing.assert_array_equal(a, p.grad)


def test_sequential_gradcheck(rng):
    seq = nn.Sequential(lin(4, 5), nn.Sigmoid(), lin(5, 2, seed=3), nn.LogSoftmax(dim=1))
    assert fastmod.gradcheck(seq, rng.standard_normal((3, 4)))


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
def test_sequential_torch_parity(torch, parity, dtype, direction, rng):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 6),
                             torch.nn.GELU(approximate="tanh"), torch.nn.Linear(6, 2, bias=False))
    fm = nn.Sequential(nn.Linear(4, 6, dtype=dtype), nn.ReLU(), nn.Linear(6, 6, dtype=dtype),
                       nn.GELU(approximate="tanh"), nn.Linear(6, 2, bias=False, dtype=dtype))
    parity(fm, tm, rng.standard_normal((5, 4)).astype(dtype), direction=direction)


def test_sequential_named_children_and_indexing():
    a, b, c = nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)
    seq = nn.Sequential(a, b, c)
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"]
    assert len(seq) == 3 and seq[0] is a and seq[-1] is c and list(seq) == [a, b, c]
    sub = seq[1:]
    assert isinstance(sub, nn.Sequential) and list(sub) == [b, c]
    assert list(sub.state_dict()) == ["2.weight", "2.bias"]        # names kept, as torch
    seq.append(nn.Sigmoid())
    assert len(seq) == 4 and "3" in dict(seq.named_children())
    from collections import OrderedDict
    named = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.ReLU())]))
    assert list(named.state_dict()) == ["fc.weight", "fc.bias"]
    assert nn.Sequential()(np.ones(3)).tolist() == [1, 1, 1]


def test_sequential_need_input_grad_false(rng):
    seq = nn.Sequential(lin(3, 4), nn.ReLU(), lin(4, 2, seed=1))
    x, dy = rng.standard_normal((2, 3)), rng.standard_normal((2, 2))
    seq(x)
    dx = seq.backward(dy)
    g = [p.grad.copy() for p in seq.parameters()]
    seq.zero_grad()
    seq(x)
    assert seq.backward(dy, need_input_grad=False) is None
    for a, p in zip(g, seq.parameters()):
        np.testing.assert_array_equal(a, p.grad)
    assert dx is not None


def test_sequential_bad_input():
    with pytest.raises(TypeError, match=r"Sequential: element '1' is a str, not a Module"):
        nn.Sequential(nn.ReLU(), "relu")
    with pytest.raises(TypeError, match="expected a Module, got int"):
        nn.Sequential().append(3)
    seq = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    with pytest.raises(RuntimeError, match="no saved forward state"):
        seq.backward(np.zeros((1, 2), np.float32))
    with pytest.raises(ValueError, match=r"Linear\(3, 2\): expected input of shape \(\*, 3\)"):
        seq(np.zeros((1, 4), np.float32))


# ------------------------------------------------------------------ a module used twice
def test_module_used_twice_in_sequential_gradcheck(rng):
    shared = lin(4, 4)
    seq = nn.Sequential(shared, nn.Tanh(), shared)
    assert fastmod.gradcheck(seq, rng.standard_normal((3, 4)))
    assert seq.num_parameters() == 4 * 4 + 4           # counted once
    act = nn.Tanh()
    assert fastmod.gradcheck(nn.Sequential(lin(4, 4), act, lin(4, 4, seed=1), act),
                             rng.standard_normal((2, 4)))


def test_module_used_twice_torch_parity(torch, parity, rng):
    torch.manual_seed(0)
    tl = torch.nn.Linear(4, 4)
    tm = torch.nn.Sequential(tl, torch.nn.Tanh(), tl)
    fl = lin(4, 4)
    fm = nn.Sequential(fl, nn.Tanh(), fl)
    parity(fm, tm, rng.standard_normal((3, 4)))


def test_module_used_twice_in_parallel_and_residual(rng):
    shared = lin(3, 3)
    assert fastmod.gradcheck(nn.Parallel(shared, nn.Sequential(shared, nn.Sigmoid())),
                             rng.standard_normal((2, 3)))
    # the two uses see different inputs: backward must hand each use its own saved state
    # (regression: Parallel visited branches in forward order and swapped them)
    act = nn.Tanh()
    assert fastmod.gradcheck(nn.Parallel(act, nn.Sequential(lin(3, 3), act)),
                             rng.standard_normal((2, 3)))
    assert fastmod.gradcheck(nn.Parallel(shared, nn.Sequential(nn.Tanh(), shared), combine="concat"),
                             rng.standard_normal((2, 3)))
    assert fastmod.gradcheck(nn.Sequential(shared, nn.Residual(nn.Sequential(nn.Sigmoid(), shared))),
                             rng.standard_normal((2, 3)))
    res = nn.Residual(nn.Sequential(lin(3, 3, seed=2), nn.Tanh()))
    assert fastmod.gradcheck(nn.Sequential(res, res), rng.standard_normal((2, 3)))


# ------------------------------------------------------------------ ModuleList
def test_module_list(torch):
    ml = nn.ModuleList([nn.Linear(2, 3), nn.ReLU()])
    ml.append(nn.Linear(3, 1)).extend([nn.Tanh()])
    assert len(ml) == 4 and isinstance(ml[0], nn.Linear) and isinstance(ml[-1], nn.Tanh)
    assert isinstance(ml[1:3], nn.ModuleList) and len(ml[1:3]) == 2
    assert [type(m).__name__ for m in ml] == ["Linear", "ReLU", "Linear", "Tanh"]
    tl = torch.nn.ModuleList([torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1),
                              torch.nn.Tanh()])
    assert list(ml.state_dict()) == list(tl.state_dict())
    assert [n for n, _ in ml.named_parameters()] == [n for n, _ in tl.named_parameters()]
    assert ml.num_parameters() == sum(p.numel() for p in tl.parameters())
    with pytest.raises(TypeError, match="ModuleList is a container"):
        ml(np.zeros((1, 2), np.float32))
    with pytest.raises(TypeError, match="expected a Module, got str"):
        ml.append("relu")
    with pytest.raises(TypeError, match="expected a Module"):
        nn.ModuleList([nn.ReLU(), 1])


def test_module_list_inside_module_forward(rng):
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([lin(3, 3, seed=i) for i in range(3)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

        def backward(self, dy):
            for layer in reversed(list(self.layers)):
                dy = layer.backward(dy)
            return dy

    m = Stack()
    assert [n for n, _ in m.named_parameters()][:2] == ["layers.0.weight", "layers.0.bias"]
    assert fastmod.gradcheck(m, rng.standard_normal((2, 3)))


# ------------------------------------------------------------------ Residual
def test_residual_forward_and_gradcheck(dtype, rng):
    g = nn.Sequential(lin(4, 4, dtype), nn.Tanh())
    res = nn.Residual(g)
    x = rng.standard_normal((3, 4)).astype(dtype)
    w, b = g[0].weight.data, g[0].bias.data
    assert_close(res(x), x + ref.tanh(ref.linear(x, w, b)), dtype)
    if dtype == np.float64:
        assert fastmod.gradcheck(res, x)


def test_residual_jacobian_is_identity_plus_dg(rng):
    """d Res / dz = I + dg/dz (the seed's residual derivative), checked on a small case:
    analytic rows (backward of unit vectors) against I + the numeric Jacobian of g."""
    g = nn.Sequential(lin(3, 3), nn.GELU(), lin(3, 3, seed=4))
    res = nn.Residual(g)
    z = rng.standard_normal(3)                          # 1-D input: a single vector z
    with fastmod.no_grad():
        jg = ref.numeric_jacobian(lambda v: g(v), z)
        jres = ref.numeric_jacobian(lambda v: res(v), z)
    np.testing.assert_allclose(jres, np.eye(3) + jg, rtol=1e-7, atol=1e-8)
    rows = []
    for i in range(3):
        res(z)
        rows.append(res.backward(np.eye(3)[i]))
    np.testing.assert_allclose(np.array(rows), np.eye(3) + jg, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
def test_residual_torch_parity(torch, parity, dtype, direction, rng):
    class TRes(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fn = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sigmoid())

        def forward(self, x):
            return x + self.fn(x)

    torch.manual_seed(0)
    parity(nn.Residual(nn.Sequential(nn.Linear(4, 4, dtype=dtype), nn.Sigmoid())), TRes(),
           rng.standard_normal((2, 3, 4)).astype(dtype), direction=direction)


def test_residual_bad_input(rng):
    with pytest.raises(TypeError, match="Residual: expected a Module, got function"):
        nn.Residual(lambda x: x)
    res = nn.Residual(lin(3, 2))
    with pytest.raises(ValueError, match=r"must keep the input's shape \(4, 3\), got \(4, 2\)"):
        res(rng.standard_normal((4, 3)))
    res = nn.Residual(nn.Tanh())
    with pytest.raises(RuntimeError, match="no saved forward state"):
        res.backward(np.zeros((2, 2)))
    res(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"Residual.*gradient of shape \(2, 2\).*got \(2, 3\)"):
        res.backward(np.zeros((2, 3)))
    res = nn.Residual(nn.Identity())
    res(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"gradient of shape \(2, 2\)"):
        res.backward(np.zeros((4,)))


def test_residual_need_input_grad_false(rng):
    res = nn.Residual(lin(3, 3))
    x, dy = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    res(x)
    assert res.backward(dy, need_input_grad=False) is None
    _, rdw, rdb = ref.linear_backward(dy, x, res.fn.weight.data)
    np.testing.assert_allclose(res.fn.weight.grad, rdw, rtol=1e-12)
    np.testing.assert_allclose(res.fn.bias.grad, rdb, rtol=1e-12)


# ------------------------------------------------------------------ Parallel
def _torch_parallel(torch, branches, combine, dim=1):
    class TPar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for i, b in enumerate(branches):
                self.add_module(str(i), b)

        def forward(self, x):
            outs = [b(x) for b in self.children()]
            return sum(outs) if combine == "sum" else torch.cat(outs, dim=dim)
    return TPar()


def test_parallel_sum_matches_manual(dtype, rng):
    b0, b1 = lin(4, 3, dtype), nn.Sequential(lin(4, 3, dtype, seed=1), nn.Tanh())
    b2 = lin(4, 3, dtype, bias=False, seed=2)
    par = nn.Parallel(b0, b1, b2)
    x = rng.standard_normal((5, 4)).astype(dtype)
    w0, bb0 = b0.weight.data, b0.bias.data
    w1, bb1 = b1[0].weight.data, b1[0].bias.data
    w2 = b2.weight.data
    want = ref.linear(x, w0, bb0) + ref.tanh(ref.linear(x, w1, bb1)) + ref.linear(x, w2)
    assert_close(par(x), want, dtype)


def test_parallel_sum_gradcheck(rng):
    par = nn.Parallel(lin(4, 3), nn.Sequential(lin(4, 3, seed=1), nn.Tanh()))
    assert fastmod.gradcheck(par, rng.standard_normal((5, 4)))
    assert fastmod.gradcheck(nn.Parallel(nn.Identity(), nn.Sigmoid(), nn.Identity()),
                             rng.standard_normal((2, 3)))


@pytest.mark.parametrize("case", ["2d_dim1", "3d_dim-1", "3d_dim1", "dim0"])
def test_parallel_concat(case, rng):
    if case == "2d_dim1":
        x, dim = rng.standard_normal((2, 4)), 1
        branches = [lin(4, 3), nn.Sequential(lin(4, 2, seed=1), nn.ReLU()), nn.Identity()]
    elif case == "3d_dim-1":
        x, dim = rng.standard_normal((2, 5, 4)), -1
        branches = [lin(4, 3), nn.Sequential(lin(4, 2, seed=1), nn.Tanh()), nn.Identity()]
    elif case == "3d_dim1":                          # join along the middle axis
        x, dim = rng.standard_normal((2, 5, 4)), 1
        branches = [lin(4, 4), nn.Identity()]
    else:                                            # join batches
        x, dim = rng.standard_normal((3, 4)), 0
        branches = [lin(4, 4), nn.Sigmoid()]
    par = nn.Parallel(*branches, combine="concat", dim=dim)
    y = par(x)
    with fastmod.no_grad():
        outs = [b(x) for b in branches]
    np.testing.assert_array_equal(y, np.concatenate(outs, axis=dim))
    assert fastmod.gradcheck(par, x)


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
@pytest.mark.parametrize("combine", ["sum", "concat"])
def test_parallel_torch_parity(torch, parity, dtype, combine, direction, rng):
    torch.manual_seed(0)
    tb = [torch.nn.Linear(4, 3), torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.GELU())]
    tm = _torch_parallel(torch, tb, combine)
    fm = nn.Parallel(nn.Linear(4, 3, dtype=dtype), nn.Sequential(nn.Linear(4, 3, dtype=dtype), nn.GELU()),
                     combine=combine)
    parity(fm, tm, rng.standard_normal((5, 4)).astype(dtype), direction=direction)


def test_parallel_need_input_grad_false(rng):
    par = nn.Parallel(lin(3, 2), lin(3, 2, seed=1))
    par(rng.standard_normal((4, 3)))
    assert par.backward(rng.standard_normal((4, 2)), need_input_grad=False) is None
    assert all(p.has_grad() for p in par.parameters())


def test_parallel_bad_input(rng):
    with pytest.raises(ValueError, match="at least one branch"):
        nn.Parallel()
    with pytest.raises(ValueError, match="combine must be 'sum' or 'concat', got 'max'"):
        nn.Parallel(nn.ReLU(), combine="max")
    with pytest.raises(ValueError, match="dim must be an int"):
        nn.Parallel(nn.ReLU(), combine="concat", dim="1")
    with pytest.raises(TypeError, match="branch 1 is a int, not a Module"):
        nn.Parallel(nn.ReLU(), 1)
    x = rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match=r"branch 1 gave shape \(2, 4\), branch 0 gave \(2, 3\)"):
        nn.Parallel(nn.Identity(), lin(3, 4))(x)
    with pytest.raises(ValueError, match=r"'concat' needs equal shapes except on dim 1"):
        nn.Parallel(nn.Identity(), nn.Flatten(0), combine="concat")(x)
    with pytest.raises(ValueError, match=r"dim 2 out of range"):
        nn.Parallel(nn.Identity(), combine="concat", dim=2)(x)
    par = nn.Parallel(nn.Identity(), nn.Identity())
    with pytest.raises(RuntimeError, match="no saved forward state"):
        par.backward(x)
    par(x)
    with pytest.raises(ValueError, match=r"Parallel.*gradient of shape \(2, 3\).*got \(3, 2\)"):
        par.backward(x.T.copy())
    par = nn.Parallel(nn.Identity(), nn.Identity(), combine="concat")
    par(x)
    with pytest.raises(ValueError, match=r"gradient of shape \(2, 6\)"):
        par.backward(x)


# ------------------------------------------------------------------ ResidualBlock
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_residual_block_reference(act, dtype, rng):
    blk = nn.ResidualBlock(4, activation=act, dtype=dtype)
    assert blk.mm1.weight.dtype == dtype
    z = rng.standard_normal((3, 2, 4)).astype(dtype)
    s = ref.ACTIVATIONS[act][0]
    w1, b1, w2, b2 = blk.mm1.weight.data, blk.mm1.bias.data, blk.mm2.weight.data, blk.mm2.bias.data
    want = z + s(ref.linear(s(ref.linear(z, w2, b2)), w1, b1))   # z + sigma(MM1(sigma(MM2(z))))
    assert_close(blk(z), want, dtype)


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh"])
def test_residual_block_gradcheck(act, rng):
    blk = nn.ResidualBlock(4, activation=act, dtype=np.float64)
    assert fastmod.gradcheck(blk, rng.standard_normal((3, 4)))


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_residual_block_torch_parity(torch, parity, act, direction, dtype, rng):
    class TBlock(torch.nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.mm1 = torch.nn.Linear(dim, dim)
            self.mm2 = torch.nn.Linear(dim, dim)
            self.act = torch.nn.ReLU() if act == "relu" else torch.nn.GELU()

        def forward(self, z):
            return z + self.act(self.mm1(self.act(self.mm2(z))))

    torch.manual_seed(0)
    parity(nn.ResidualBlock(5, activation=act, dtype=dtype), TBlock(5),
           rng.standard_normal((4, 5)).astype(dtype), direction=direction)


def test_residual_block_api(rng):
    blk = nn.ResidualBlock(3)
    assert blk.num_parameters() == 2 * (3 * 3 + 3)
    assert list(blk.state_dict()) == ["mm1.weight", "mm1.bias", "mm2.weight", "mm2.bias"]
    assert repr(blk).startswith("ResidualBlock(3")
    blk = nn.ResidualBlock(3, activation="gelu", dtype=np.float64)
    blk(rng.standard_normal((2, 3)))
    assert blk.backward(np.ones((2, 3)), need_input_grad=False) is None
    assert blk.mm2.weight.has_grad()
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        nn.ResidualBlock(0)
    with pytest.raises(ValueError, match="activation must be one of"):
        nn.ResidualBlock(3, activation="swish")
    with pytest.raises(ValueError, match=r"Linear\(3, 3\): expected input of shape \(\*, 3\)"):
        nn.ResidualBlock(3)(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="float32.*float64"):
        nn.ResidualBlock(3)(np.zeros((2, 3)))


# ------------------------------------------------------------------ non-contiguous / read-only
@pytest.mark.parametrize("make", [
    lambda: nn.Sequential(lin(4, 4), nn.ReLU()),
    lambda: nn.Residual(lin(4, 4)),
    lambda: nn.Parallel(lin(4, 4), nn.Identity()),
    lambda: nn.Parallel(lin(4, 2), nn.Identity(), combine="concat"),
    lambda: nn.ResidualBlock(4, dtype=np.float64),
    lambda: nn.Flatten(0),
], ids=["sequential", "residual", "parallel_sum", "parallel_concat", "resblock", "flatten"])
def test_containers_noncontiguous_and_readonly(make, rng):
    m = make()
    base = rng.standard_normal((4, 8))
    for x in (base.T[::2], base[:, ::2]):
        assert not x.flags.c_contiguous
        y = m(x)
        dy = rng.standard_normal(y.shape)
        dx = m.backward(dy)
        m.zero_grad()
        xc = np.ascontiguousarray(x)
        np.testing.assert_array_equal(m(xc), y)
        np.testing.assert_array_equal(m.backward(dy), dx)
    ro = base[:, :4].copy()
    ro.flags.writeable = False
    y = m(ro)
    m.backward(np.ones_like(y))
    np.testing.assert_array_equal(ro, base[:, :4])


# ------------------------------------------------------------------ Flatten
@pytest.mark.parametrize("start,end", [(1, -1), (0, -1), (1, 2), (0, 1), (-2, -1), (2, 2)])
def test_flatten(start, end, torch, parity, dtype, rng):
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    m = nn.Flatten(start, end)
    y = parity(m, torch.nn.Flatten(start, end), x)[0]
    s, e = start % 4, end % 4
    assert y.shape == x.shape[:s] + (int(np.prod(x.shape[s:e + 1])),) + x.shape[e + 1:]
    np.testing.assert_array_equal(y, x.reshape(y.shape))
    if dtype == np.float64:
        assert fastmod.gradcheck(m, x)


def test_flatten_bad_input():
    with pytest.raises(ValueError, match="start_dim must be an int"):
        nn.Flatten(1.0)
    m = nn.Flatten(2, 1)
    with pytest.raises(ValueError, match=r"cannot flatten dims 2\.\.1 of input of shape \(2, 3, 4\)"):
        m(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"cannot flatten dims 1\.\.-1 of input of shape \(\)"):
        nn.Flatten()(np.zeros(()))
    m = nn.Flatten()
    m(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"Flatten\(\)\.backward: expected a gradient of shape \(2, 12\)"):
        m.backward(np.zeros((2, 3, 4)))
    with pytest.raises(TypeError, match="int64"):
        m(np.zeros((2, 3), np.int64))


# ------------------------------------------------------------------ Dropout
class FixedDraws:
    """A stand-in generator whose draws never change, so Dropout's mask is fixed (gradcheck
    evaluates the forward many times)."""

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)
        self.cache = {}

    def random(self, shape, dtype=np.float64):
        if shape not in self.cache:
            self.cache[shape] = self.rng.random(shape)
        return self.cache[shape].astype(dtype)


def test_dropout_train_mask_and_backward(dtype, rng):
    p = 0.3
    m = nn.Dropout(p, generator=np.random.default_rng(7))
    x = (rng.random((50, 40)) + 0.5).astype(dtype)       # never 0, so kept == (y != 0)
    y = m(x)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), **tol(dtype))
    assert 0.6 < kept.mean() < 0.8                      # 2000 draws at keep-rate 0.7 (seeded)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dx = m.backward(dy)
    np.testing.assert_allclose(dx, np.where(kept, dy / (1 - p), 0), **tol(dtype))


def test_dropout_reproducible_with_manual_seed(rng):
    x = rng.random((8, 8)) + 0.5
    fastmod.manual_seed(11)
    a = nn.Dropout(0.5)(x)
    fastmod.manual_seed(11)
    b = nn.Dropout(0.5)(x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, nn.Dropout(0.5)(x))   # the next draw differs


def test_dropout_eval_p0_p1(rng):
    x = rng.standard_normal((3, 4))
    m = nn.Dropout(0.5)
    m.eval()
    assert m(x) is x and m.backward(x) is x
    m0 = nn.Dropout(0.0)
    np.testing.assert_array_equal(m0(x), x)
    m1 = nn.Dropout(1.0)
    np.testing.assert_array_equal(m1(x), 0)
    np.testing.assert_array_equal(m1.backward(np.ones_like(x)), 0)


def test_dropout_gradcheck(rng):
    m = nn.Dropout(0.4, generator=FixedDraws())
    assert fastmod.gradcheck(m, rng.standard_normal((4, 5)))
    assert fastmod.gradcheck(nn.Sequential(lin(5, 5), nn.Dropout(0.4, generator=FixedDraws(1))),
                             rng.standard_normal((4, 5)))


def test_dropout_eval_torch_parity(torch, parity, rng):
    parity(nn.Dropout(0.5).eval(), torch.nn.Dropout(0.5).eval(), rng.standard_normal((3, 4)))


def test_dropout_inplace(rng):
    x = rng.random((4, 4)) + 0.5
    y = nn.Dropout(0.5, inplace=True, generator=np.random.default_rng(0))(x)
    assert y is x and np.any(x == 0)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf"), "0.5", None, True])
def test_dropout_bad_p(p):
    with pytest.raises(ValueError, match="Dropout: p must be"):
        nn.Dropout(p)


def test_dropout_bad_input():
    with pytest.raises(ValueError, match="generator must be a numpy Generator"):
        nn.Dropout(0.5, generator=42)
    m = nn.Dropout(0.5)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        m([1.0])
    with pytest.raises(TypeError, match="int64"):
        m(np.arange(3))
    with pytest.raises(ValueError, match="non-empty"):
        m(np.zeros((0,)))
    with pytest.raises(RuntimeError, match="no saved forward state"):
        m.backward(np.zeros(3))
    m(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"gradient of shape \(2, 3\)"):
        m.backward(np.ones((3, 2)))


# ------------------------------------------------------------------ fused Linear + ReLU (grad on)
class _PlainReLU(nn.ReLU):
    """A ReLU subclass: containers fuse exactly ReLU, so this one runs as a separate module."""


def _copy_weights(dst, src):
    dst.load_state_dict(src.state_dict())


def _run(m, x, dy, need_input_grad=True):
    m.zero_grad()
    y = m(x)
    dx = m.backward(dy, need_input_grad=need_input_grad)
    return y, dx, [p.grad.copy() for p in m.parameters()]


def _assert_same_run(a, b, dtype):
    (ya, dxa, ga), (yb, dxb, gb) = a, b
    np.testing.assert_allclose(ya, yb, **tol(dtype))
    if dxb is None:
        assert dxa is None
    else:
        np.testing.assert_allclose(dxa, dxb, **tol(dtype))
    for p, q in zip(ga, gb):
        np.testing.assert_allclose(p, q, **tol(dtype))


@pytest.mark.parametrize("n", [1, 7, 64])
@pytest.mark.parametrize("need", [True, False])
def test_sequential_fused_linear_relu_training_matches_separate(n, need, dtype, threads, rng):
    """With grad on, Sequential fuses Linear + ReLU (forward: one kernel call; backward: the
    ReLU's mask applied to the Linear's input gradient in its kernel): same outputs, input and
    parameter gradients as separate modules; ReLU first, last, and shared twice included."""
    def build(R):
        r = R()
        return nn.Sequential(R(), nn.Linear(5, 33, dtype=dtype), R(), nn.Linear(33, 17, dtype=dtype),
                             r, nn.Linear(17, 17, dtype=dtype), r, nn.Linear(17, 3, dtype=dtype), R())
    fused, plain = build(nn.ReLU), build(_PlainReLU)
    _copy_weights(plain, fused)
    x = rng.standard_normal((n, 5)).astype(dtype)
    x[0, 0] = np.nan if n > 1 else x[0, 0]           # NaN through the fused mask as through ReLU
    dy = rng.standard_normal((n, 3)).astype(dtype)
    for _ in range(2):                                # twice: the second pass reuses the state
        _assert_same_run(_run(fused, x, dy, need), _run(plain, x, dy, need), dtype)
    assert all(not m._stack for m in fused.modules())


@pytest.mark.parametrize("need", [True, False])
def test_sequential_fused_conv_relu_training_matches_separate(need, dtype, threads, rng):
    """With grad on, Sequential fuses Conv + ReLU in the forward (the ReLU applied in the
    convolution's kernel call, the output saved as the ReLU's state): same outputs, input and
    parameter gradients as separate modules, on the cnn workload's kinds of layers (a
    3-channel stem, stride 2, Conv1d), NaN kept."""
    def build(R):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, dtype=dtype), R(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1, dtype=dtype), R(),
                             nn.Flatten(), nn.Linear(16 * 4 * 5, 3, dtype=dtype), R())
    fused, plain = build(nn.ReLU), build(_PlainReLU)
    _copy_weights(plain, fused)
    x = rng.standard_normal((4, 3, 7, 9)).astype(dtype)
    x[1, 0, 3, 3] = np.nan
    dy = rng.standard_normal((4, 3)).astype(dtype)
    for _ in range(2):
        _assert_same_run(_run(fused, x, dy, need), _run(plain, x, dy, need), dtype)
    assert all(not m._stack for m in fused.modules())
    c1 = nn.Sequential(nn.Conv1d(4, 6, 5, padding=2, dtype=dtype), nn.ReLU())
    c1p = nn.Sequential(nn.Conv1d(4, 6, 5, padding=2, dtype=dtype), _PlainReLU())
    _copy_weights(c1p, c1)
    x1 = rng.standard_normal((3, 4, 11)).astype(dtype)
    dy1 = rng.standard_normal((3, 6, 11)).astype(dtype)
    _assert_same_run(_run(c1, x1, dy1, need), _run(c1p, x1, dy1, need), dtype)


def test_sequential_fused_linear_relu_gradcheck(rng):
    m = nn.Sequential(nn.Linear(4, 6, dtype=np.float64), nn.ReLU(), nn.Linear(6, 3, dtype=np.float64),
                      nn.ReLU(), nn.Linear(3, 2, dtype=np.float64))
    assert fastmod.gradcheck(m, rng.standard_normal((5, 4)))


@pytest.mark.parametrize("n", [1, 5, 128])
@pytest.mark.parametrize("need", [True, False])
def test_residual_block_fused_matches_separate(n, need, dtype, threads, rng):
    """ResidualBlock with ReLU: both ReLUs fused into the Linears and the skip gradient
    accumulated by mm2's GEMM (beta = 1) -- same values as the module-by-module path."""
    fused = nn.ResidualBlock(24, dtype=dtype)
    plain = nn.ResidualBlock(24, activation=_PlainReLU, dtype=dtype)
    _copy_weights(plain, fused)
    x = rng.standard_normal((n, 24)).astype(dtype)
    dy = rng.standard_normal((n, 24)).astype(dtype)
    for _ in range(2):
        _assert_same_run(_run(fused, x, dy, need), _run(plain, x, dy, need), dtype)
    with fastmod.no_grad():                           # inference: skip added in place
        np.testing.assert_allclose(fused(x), plain(x), **tol(dtype))
    x3 = rng.standard_normal((2, 3, 24)).astype(dtype)
    dy3 = rng.standard_normal((2, 3, 24)).astype(dtype)
    _assert_same_run(_run(fused, x3, dy3), _run(plain, x3, dy3), dtype)


def test_residual_block_fused_gradcheck(rng):
    assert fastmod.gradcheck(nn.ResidualBlock(6, dtype=np.float64), rng.standard_normal((3, 6)))


def test_sequential_linear_chain_under_no_grad(rng):
    """Under no_grad a Sequential of float32 Linear layers (ReLUs fused) runs a batch of fewer
    than 8 rows as one kernel call; the values are the layer-by-layer ones (NaN kept by the
    ReLU), and a hooked layer, a float64 model or a larger batch take the ordinary path."""
    from fastmod.nn import containers as C
    m = nn.Sequential(nn.Linear(12, 40), nn.ReLU(), nn.Linear(40, 30), nn.Linear(30, 5))
    assert m._linear_chain(m._plan()) is not None
    calls = []
    orig = C._kl.linear_chain_forward
    C._kl.linear_chain_forward = lambda *a: (calls.append(1), orig(*a))[1]
    try:
        for n in (1, 7, 8):
            x = rng.standard_normal((n, 12)).astype(np.float32)
            x[0, 0] = np.nan
            want = m[3](m[2](np.maximum(m[0](x), 0)))
            with fastmod.no_grad():
                got = m(x)
            assert_close(got[1:], want[1:], np.float32)
            assert np.isnan(got[0]).all()
        assert len(calls) == 2                        # 1 and 7 rows; 8 rows layer by layer
        seen = []
        h = m[2].register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        with fastmod.no_grad():
            m(x[:2])
        assert seen == [(2, 30)] and len(calls) == 2  # the hooked layer ran as itself
        h.remove()
        with fastmod.no_grad():
            m.double()(x[:2].astype(np.float64))
        assert len(calls) == 2
    finally:
        C._kl.linear_chain_forward = orig


@pytest.mark.parametrize("dims", [2, 1])
def test_sequential_conv_chain_under_no_grad(dims, threads, rng):
    """Under no_grad a run of float32 convolutions in a Sequential (ReLUs fused) runs depth
    first in one kernel call (conv.conv_chain_forward) with the layer-by-layer values (the
    few-channel stem and the stride-2 implicit GEMMs hand their outputs over); a hooked layer,
    a float64 model, a layer of two groups take the ordinary path; bad input raises the layer's
    own error."""
    from fastmod.nn import conv as K
    Conv = nn.Conv2d if dims == 2 else nn.Conv1d
    m = nn.Sequential(Conv(3, 32, 3, padding=1), nn.ReLU(), Conv(32, 24, 3, stride=2, padding=1),
                      nn.ReLU(), Conv(24, 16, 3, stride=2, padding=1), nn.Flatten(),
                      nn.Linear(16 * (4 if dims == 2 else 2) ** dims, 5))
    m.eval()
    shape = (3, 3, 13, 13) if dims == 2 else (3, 3, 7)
    x = rng.standard_normal(shape).astype(np.float32)
    want = m[6](m[5](m[4](np.maximum(m[2](np.maximum(m[0](x), 0)), 0))))
    # the plan's algorithms: the chain runs when an output can be handed over (the few-channel
    # stem or an implicit GEMM before an implicit GEMM; not at every level)
    algos, cur = [], x
    for c in (m[0], m[2], m[4]):
        y = np.empty(c.output_shape(cur.shape), np.float32)
        KH, KW = c._geometry(cur.shape[2:])[4:6]
        algos.append(K._k.conv2d_pack_forward(
            c._as4(cur), c._as4(y), c.weight.data.reshape(c.out_channels, -1, KH, KW), None,
            *c._geometry(cur.shape[2:])[6:12], 1)[0])
        cur = y
    chained = int(any(a in ("small", "igemm") and b == "igemm" for a, b in zip(algos, algos[1:])))
    if fastmod.get_isa() == "avx512":
        assert chained                                # cnn's stem and stride-2 layers
    calls = []
    orig = K._k.conv2d_chain_forward
    K._k.conv2d_chain_forward = lambda *a, **k: (calls.append(1), orig(*a, **k))[1]
    try:
        with fastmod.no_grad():
            got = m(x)
            again = m[:5](x)                          # the chain's result: a fresh array
            other = m[:5](x[:1] * 2)
        assert_close(got, want, np.float32)
        assert len(calls) == 3 * chained
        assert not np.shares_memory(again, other)
        assert_close(again, m[4](np.maximum(m[2](np.maximum(m[0](x), 0)), 0)), np.float32)
        calls.clear()
        calls.extend([1] * chained)
        seen = []
        h = m[2].register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        with fastmod.no_grad():
            assert_close(m(x), want, np.float32)
        assert len(seen) == 1 and len(calls) == chained   # the hooked layer ran as itself
        h.remove()
        with pytest.raises(ValueError, match="expected input of shape"):
            with fastmod.no_grad():
                m(x[:, :2])
        g = nn.Sequential(Conv(4, 8, 3, padding=1, groups=2), nn.ReLU(), Conv(8, 8, 1))
        x4 = rng.standard_normal((2, 4) + shape[2:]).astype(np.float32)
        with fastmod.no_grad():
            assert_close(g(x4), g[2](np.maximum(g[0](x4), 0)), np.float32)
        assert len(calls) == chained
        with fastmod.no_grad():
            got64 = m.double()(x.astype(np.float64))
        assert len(calls) == chained
        assert_close(got64, want, np.float32)
    finally:
        K._k.conv2d_chain_forward = orig
