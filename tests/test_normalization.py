"""LayerNorm (the seed's LN-S / LN), BatchNorm1d/2d and GroupNorm: NumPy references, gradcheck,
torch parity, the seed's properties (as corrected in SPEC §2), numerics, threads, bad input."""
import numpy as np
import pytest

import fastmod
from fastmod import nn
from reference import assert_close

RTOL = {np.float32: 1e-5, np.float64: 1e-12}
ATOL = {np.float32: 1e-5, np.float64: 1e-12}


def tol(dtype):
    dt = np.dtype(dtype).type
    return {"rtol": RTOL[dt], "atol": ATOL[dt]}


# ------------------------------------------------------------------ NumPy references (float64)
# Written from the definitions: x_hat = (x - mean) / sqrt(var + eps) over `axes` (biased var),
# y = x_hat * w + b; backward of x_hat: dx = rstd (g - mean(g) - x_hat mean(g x_hat)), g = dy * w.
def _stats(x, axes, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    return mean, 1.0 / np.sqrt(var + eps)


def normalize_ref(x, axes, eps, w=None, b=None, stats=None):
    """(y, x_hat, rstd); w, b already shaped to broadcast; `stats` = fixed (mean, rstd)."""
    mean, rstd = stats if stats is not None else _stats(x, axes, eps)
    xh = (np.asarray(x, np.float64) - mean) * rstd
    y = xh * (1.0 if w is None else np.asarray(w, np.float64))
    if b is not None:
        y = y + np.asarray(b, np.float64)
    return y, xh, rstd


def normalize_backward_ref(dy, xh, rstd, axes, w=None, fixed_stats=False):
    """dx of y = normalize(x) * w + b; with fixed_stats (BN eval) the statistics are constants."""
    g = np.asarray(dy, np.float64) * (1.0 if w is None else np.asarray(w, np.float64))
    if fixed_stats:
        return g * rstd
    return rstd * (g - g.mean(axis=axes, keepdims=True)
                   - xh * (g * xh).mean(axis=axes, keepdims=True))


def layernorm_ref(x, k, eps=1e-5, w=None, b=None):
    return normalize_ref(x, tuple(range(x.ndim - k, x.ndim)), eps, w, b)


def batchnorm_axes(x):
    return (0,) + tuple(range(2, x.ndim))


def channel_shape(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def groupnorm_ref(x, G, eps=1e-5, w=None, b=None):
    """GN via the reshape (N, G, C/G * spatial); returns y in x's shape, x_hat grouped, rstd."""
    n, c = x.shape[:2]
    xg = np.asarray(x, np.float64).reshape(n, G, -1)
    _, xh, rstd = normalize_ref(xg, (2,), eps)
    xh = xh.reshape(x.shape)
    cs = channel_shape(x)
    y = xh * (1.0 if w is None else np.asarray(w, np.float64).reshape(cs))
    if b is not None:
        y = y + np.asarray(b, np.float64).reshape(cs)
    return y, xh, rstd


def groupnorm_backward_ref(dy, x, G, eps=1e-5, w=None):
    n, c = x.shape[:2]
    _, xh, rstd = groupnorm_ref(x, G, eps)
    g = np.asarray(dy, np.float64) * (1.0 if w is None else np.asarray(w, np.float64).reshape(channel_shape(x)))
    gg, xg = g.reshape(n, G, -1), xh.reshape(n, G, -1)
    dx = rstd * (gg - gg.mean(axis=2, keepdims=True) - xg * (gg * xg).mean(axis=2, keepdims=True))
    return dx.reshape(x.shape)


def randomize(m, rng):
    """Non-trivial weight / bias (the defaults 1 / 0 would hide mistakes)."""
    for p in m.parameters():
        p.data[...] = rng.standard_normal(p.shape).astype(p.dtype)
    return m


def as_f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


# ================================================================== LayerNorm
LN_CASES = [  # (input shape, normalized_shape, kwargs)
    ((6, 10), 10, {}),
    ((3, 4, 16), (16,), {}),
    ((5, 3, 4), (3, 4), {}),
    ((7, 33), 33, {"elementwise_affine": False}),
    ((4, 2, 9), (9,), {"bias": False}),
    ((12,), 12, {"eps": 1e-3}),
]


@pytest.mark.parametrize("shape,ns,kw", LN_CASES)
def test_layernorm_matches_reference(shape, ns, kw, dtype, threads, rng):
    m = randomize(nn.LayerNorm(ns, dtype=dtype, **kw), rng)
    k = 1 if isinstance(ns, int) else len(ns)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    w = None if m.weight is None else m.weight.data
    b = None if m.bias is None else m.bias.data
    y = m(x)
    assert y.shape == x.shape and y.dtype == dtype
    yr, xh, rstd = layernorm_ref(x, k, m.eps, w, b)
    np.testing.assert_allclose(y, yr, **tol(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    dx = m.backward(dy)
    axes = tuple(range(x.ndim - k, x.ndim))
    np.testing.assert_allclose(dx, normalize_backward_ref(dy, xh, rstd, axes, w), **tol(dtype))
    lead = tuple(range(x.ndim - k))
    if w is not None:
        np.testing.assert_allclose(m.weight.grad, (np.float64(dy) * xh).sum(axis=lead), **tol(dtype))
    if b is not None:
        np.testing.assert_allclose(m.bias.grad, np.float64(dy).sum(axis=lead), **tol(dtype))


@pytest.mark.parametrize("shape,ns,kw", LN_CASES)
def test_layernorm_gradcheck(shape, ns, kw, rng):
    m = randomize(nn.LayerNorm(ns, dtype=np.float64, **kw), rng)
    assert fastmod.gradcheck(m, rng.standard_normal(shape))


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
@pytest.mark.parametrize("shape,ns,kw", LN_CASES)
def test_layernorm_torch_parity(shape, ns, kw, direction, torch, parity, dtype, rng):
    tm = torch.nn.LayerNorm(ns, **kw)
    fm = randomize(nn.LayerNorm(ns, dtype=dtype, **kw), rng)
    with torch.no_grad():
        for p in tm.parameters():
            p.normal_()
    parity(fm, tm, rng.standard_normal(shape).astype(dtype), direction=direction)


# ================================================================== BatchNorm
BN_CASES = [  # (class, input shape)
    (nn.BatchNorm1d, (16, 5)),
    (nn.BatchNorm1d, (200, 3)),          # more than one row block of the (N, C) path
    (nn.BatchNorm1d, (4, 5, 7)),
    (nn.BatchNorm2d, (3, 4, 5, 6)),
    # the column path ((N, C, S) with S <= 16 as an (N, C * S) matrix, rows split over threads):
    # odd sizes, several row blocks per thread, 2 threads really used (> 2 * 32768 elements)
    (nn.BatchNorm1d, (517, 131)),
    (nn.BatchNorm1d, (263, 61, 5)),
    (nn.BatchNorm1d, (5, 4099, 9)),     # rows wider than a statistics block: one row per block
    (nn.BatchNorm1d, (33, 7, 17)),      # S = 17: the per-(n, c) run path
]


def bn_ref_step(x, m, rm, rv, w, b, momentum, nbt):
    """One training-mode forward: (y, x_hat, rstd, new running mean, new running var)."""
    axes = batchnorm_axes(x)
    cs = channel_shape(x)
    y, xh, rstd = normalize_ref(x, axes, m.eps, None if w is None else w.reshape(cs),
                                None if b is None else b.reshape(cs))
    cnt = x.size // x.shape[1]
    mean = np.float64(x).mean(axis=axes)
    var_unbiased = np.float64(x).var(axis=axes) * cnt / (cnt - 1)
    f = 1.0 / nbt if momentum is None else momentum
    return y, xh, rstd, (1 - f) * rm + f * mean, (1 - f) * rv + f * var_unbiased


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("cls,shape", BN_CASES)
def test_batchnorm_train_matches_reference(cls, shape, momentum, dtype, threads, rng):
    m = randomize(cls(shape[1], momentum=momentum, dtype=dtype), rng)
    w, b = as_f64(m.weight.data, m.bias.data)
    rm, rv = np.zeros(shape[1]), np.ones(shape[1])
    axes, cs = batchnorm_axes(np.empty(shape)), (1, shape[1]) + (1,) * (len(shape) - 2)
    for step in range(1, 4):
        x = (rng.standard_normal(shape) * (step + 1) + step).astype(dtype)
        y = m(x)
        yr, xh, rstd, rm, rv = bn_ref_step(x, m, rm, rv, w, b, momentum, step)
        np.testing.assert_allclose(y, yr, **tol(dtype))
        np.testing.assert_allclose(m.running_mean, rm, **tol(dtype))
        np.testing.assert_allclose(m.running_var, rv, **tol(dtype))
        assert m.num_batches_tracked.dtype == np.int64 and m.num_batches_tracked.shape == ()
        assert int(m.num_batches_tracked) == step
        dy = rng.standard_normal(shape).astype(dtype)
        m.zero_grad()
        dx = m.backward(dy)
        np.testing.assert_allclose(dx, normalize_backward_ref(dy, xh, rstd, axes, w.reshape(cs)),
                                   **tol(dtype))
        np.testing.assert_allclose(m.weight.grad, (np.float64(dy) * xh).sum(axis=axes), **tol(dtype))
        np.testing.assert_allclose(m.bias.grad, np.float64(dy).sum(axis=axes), **tol(dtype))


@pytest.mark.parametrize("cls,shape", BN_CASES)
def test_batchnorm_eval_is_a_per_channel_affine_map(cls, shape, dtype, threads, rng):
    m = randomize(cls(shape[1], dtype=dtype), rng)
    m.running_mean[...] = rng.standard_normal(shape[1])
    m.running_var[...] = rng.uniform(0.5, 2.0, shape[1])
    m.eval()
    x = rng.standard_normal(shape).astype(dtype)
    cs = channel_shape(x)
    stats = (np.float64(m.running_mean).reshape(cs), 1 / np.sqrt(np.float64(m.running_var).reshape(cs) + m.eps))
    w, b = as_f64(m.weight.data, m.bias.data)
    yr, xh, rstd = normalize_ref(x, None, m.eps, w.reshape(cs), b.reshape(cs), stats=stats)
    before = (m.running_mean.copy(), m.running_var.copy(), int(m.num_batches_tracked))
    np.testing.assert_allclose(m(x), yr, **tol(dtype))
    assert np.array_equal(m.running_mean, before[0]) and np.array_equal(m.running_var, before[1])
    assert int(m.num_batches_tracked) == before[2]
    dy = rng.standard_normal(shape).astype(dtype)
    dx = m.backward(dy)
    axes = batchnorm_axes(x)
    np.testing.assert_allclose(dx, normalize_backward_ref(dy, xh, rstd, axes, w.reshape(cs), fixed_stats=True),
                               **tol(dtype))
    np.testing.assert_allclose(m.weight.grad, (np.float64(dy) * xh).sum(axis=axes), **tol(dtype))
    np.testing.assert_allclose(m.bias.grad, np.float64(dy).sum(axis=axes), **tol(dtype))
    # a batch of one is fine in eval
    assert m(x[:1]).shape == (1,) + x.shape[1:]


BN_GRADCHECK = [
    ("train", {}), ("eval", {}), ("train", {"affine": False}), ("eval", {"affine": False}),
    ("train", {"track_running_stats": False}), ("eval", {"track_running_stats": False}),
    ("train", {"momentum": None}),
]


@pytest.mark.parametrize("mode,kw", BN_GRADCHECK)
@pytest.mark.parametrize("cls,shape", [(nn.BatchNorm1d, (6, 3)), (nn.BatchNorm1d, (3, 2, 5)),
                                       (nn.BatchNorm2d, (2, 3, 3, 4))])
def test_batchnorm_gradcheck(cls, shape, mode, kw, rng):
    m = randomize(cls(shape[1], dtype=np.float64, **kw), rng)
    if m.running_mean is not None:
        m.running_mean[...] = rng.standard_normal(shape[1])
        m.running_var[...] = rng.uniform(0.5, 2.0, shape[1])
    m.train(mode == "train")
    assert fastmod.gradcheck(m, rng.standard_normal(shape) * 2 + 1)


def _torch_bn(torch, cls, c, **kw):
    return getattr(torch.nn, cls.__name__)(c, **kw)


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
@pytest.mark.parametrize("kw", [{}, {"affine": False}, {"track_running_stats": False},
                                {"momentum": None}, {"eps": 1e-3, "momentum": 0.5}])
@pytest.mark.parametrize("cls,shape", BN_CASES)
def test_batchnorm_torch_parity_train_then_eval(cls, shape, kw, direction, torch, parity, dtype, rng):
    fm = cls(shape[1], dtype=dtype, **kw)
    tm = _torch_bn(torch, cls, shape[1], **kw)
    if direction == "f2t":
        randomize(fm, rng)
        if fm.running_mean is not None:
            fm.running_mean[...] = rng.standard_normal(shape[1])
            fm.running_var[...] = rng.uniform(0.5, 2.0, shape[1])
            fm.num_batches_tracked[...] = 5
    else:
        with torch.no_grad():
            for p in tm.parameters():
                p.normal_()
            if tm.running_mean is not None:
                tm.running_mean.normal_()
                tm.running_var.uniform_(0.5, 2.0)
                tm.num_batches_tracked.fill_(7)
    tm = tm.to(torch.float64 if dtype == np.float64 else torch.float32)
    ptol = {"rtol": 1e-4, "atol": 1e-4} if dtype == np.float32 else None
    # several training steps: outputs, gradients and the running statistics follow torch (after
    # step 0 the states are equal, so re-loading fastmod's into torch ("f2t") changes nothing
    # and each step's own update is what the state comparison below checks)
    for step in range(3):
        x = (rng.standard_normal(shape) * 2 + step).astype(dtype)
        parity(fm, tm, x, direction=direction if step == 0 else "f2t", seed=step, parity_tol=ptol)
        tsd = tm.state_dict()
        for k, v in fm.state_dict().items():     # torch's float32 statistics: parity tolerance
            assert_close(v, tsd[k].numpy(), dtype, err_msg=k)
        tm.zero_grad()
    fm.eval()
    tm.eval()
    parity(fm, tm, rng.standard_normal(shape).astype(dtype), direction="f2t", seed=9, parity_tol=ptol)


def test_batchnorm_state_dict_names_and_buffers(torch):
    fm, tm = nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    fsd, tsd = fm.state_dict(), tm.state_dict()
    assert list(fsd) == list(tsd) == ["weight", "bias", "running_mean", "running_var",
                                      "num_batches_tracked"]
    assert fsd["num_batches_tracked"].dtype == np.int64 and fsd["num_batches_tracked"].shape == ()
    tm.num_batches_tracked.fill_(11)
    fm.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
    assert int(fm.num_batches_tracked) == 11
    assert list(nn.BatchNorm1d(3, affine=False, track_running_stats=False).state_dict()) == []
    assert list(nn.BatchNorm1d(3, track_running_stats=False).state_dict()) == ["weight", "bias"]


# ================================================================== GroupNorm
GN_CASES = [  # (num_groups, input shape, kwargs)
    (2, (3, 4, 5, 6), {}),
    (3, (2, 6, 7), {}),
    (4, (5, 8), {}),                    # (N, C): each group is a row segment
    (1, (2, 3, 4, 4), {"affine": False}),
    (6, (2, 6, 9), {"eps": 1e-3}),
]


@pytest.mark.parametrize("G,shape,kw", GN_CASES)
def test_groupnorm_matches_reference(G, shape, kw, dtype, threads, rng):
    m = randomize(nn.GroupNorm(G, shape[1], dtype=dtype, **kw), rng)
    x = (rng.standard_normal(shape) * 2 - 1).astype(dtype)
    w = None if m.weight is None else np.float64(m.weight.data)
    b = None if m.bias is None else np.float64(m.bias.data)
    y = m(x)
    yr, xh, _ = groupnorm_ref(x, G, m.eps, w, b)
    np.testing.assert_allclose(y, yr, **tol(dtype))
    dy = rng.standard_normal(shape).astype(dtype)
    dx = m.backward(dy)
    np.testing.assert_allclose(dx, groupnorm_backward_ref(dy, x, G, m.eps, w), **tol(dtype))
    axes = batchnorm_axes(x)
    if w is not None:
        np.testing.assert_allclose(m.weight.grad, (np.float64(dy) * xh).sum(axis=axes), **tol(dtype))
        np.testing.assert_allclose(m.bias.grad, np.float64(dy).sum(axis=axes), **tol(dtype))


@pytest.mark.parametrize("G,shape,kw", GN_CASES)
def test_groupnorm_gradcheck(G, shape, kw, rng):
    m = randomize(nn.GroupNorm(G, shape[1], dtype=np.float64, **kw), rng)
    assert fastmod.gradcheck(m, rng.standard_normal(shape))


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
@pytest.mark.parametrize("G,shape,kw", GN_CASES)
def test_groupnorm_torch_parity(G, shape, kw, direction, torch, parity, dtype, rng):
    fm = nn.GroupNorm(G, shape[1], dtype=dtype, **kw)
    tm = torch.nn.GroupNorm(G, shape[1], **kw)
    if direction == "f2t":
        randomize(fm, rng)
    else:
        with torch.no_grad():
            for p in tm.parameters():
                p.normal_()
    # torch's float32 GroupNorm backward is the less accurate one on small groups (measured on
    # (5, 8) with 4 groups against a float64 reference: max error 8e-4 vs fastmod's 2e-5)
    ptol = {"rtol": 1e-3, "atol": 1e-4} if dtype == np.float32 else None
    parity(fm, tm, rng.standard_normal(shape).astype(dtype), direction=direction, parity_tol=ptol)


# ================================================================== the seed's properties
def lns(eps=1e-5, n=32, dtype=np.float64):
    return nn.LayerNorm(n, eps=eps, elementwise_affine=False, dtype=dtype)


@pytest.mark.parametrize("alpha", [2.0, 0.25, 1024.0, -2.0, -0.5])
def test_lns_scale_exact_with_negligible_eps(alpha, dtype, rng):
    """LN-S(alpha z) = sign(alpha) LN-S(z), exactly when eps plays no role (eps = 0 in exact
    arithmetic; here eps = 1e-30 < ulp(var) and alpha a power of two, so every rounding scales)."""
    m = lns(eps=1e-30, dtype=dtype)
    z = rng.standard_normal((4, 32)).astype(dtype)
    with fastmod.no_grad():
        np.testing.assert_array_equal(m(alpha * z), np.sign(alpha) * m(z))


@pytest.mark.parametrize("alpha", [3.7, 0.3, 100.0])
def test_lns_scale_invariance_for_positive_alpha_up_to_eps(alpha, dtype, rng):
    m = lns(dtype=dtype)
    z = rng.standard_normal((4, 32)).astype(dtype)
    with fastmod.no_grad():
        np.testing.assert_allclose(m(alpha * z), m(z), rtol=1e-4, atol=1e-4)
        # the seed's "for any alpha != 0" is wrong: a negative alpha flips the sign
        np.testing.assert_allclose(m(-alpha * z), -m(z), rtol=1e-4, atol=1e-4)
        assert not np.allclose(m(-alpha * z), m(z), atol=1e-2)


def test_lns_scale_invariance_breaks_when_alpha_squared_var_is_near_eps(rng):
    """LN-S(alpha z) uses var + eps / alpha^2: with eps > 0 the invariance is only approximate."""
    m = lns(eps=1e-5)
    z = rng.standard_normal((4, 32))
    with fastmod.no_grad():
        y, ys = m(z), m(1e-3 * z)
    z0 = z - z.mean(axis=1, keepdims=True)
    expected = z0 / np.sqrt((z0 ** 2).mean(axis=1, keepdims=True) + 1e-5 / 1e-6)
    np.testing.assert_allclose(ys, expected, rtol=1e-10, atol=1e-12)
    assert np.abs(ys - y).max() > 0.5


@pytest.mark.parametrize("c", [5.0, -3.25, 1e3])
def test_lns_translation_invariance(c, dtype, rng):
    """LN-S(z + c 1) = LN-S(z) (the seed's "LN(z + c) = LN(z) + c" is wrong)."""
    m = lns(dtype=dtype)
    z = rng.standard_normal((4, 32)).astype(dtype)
    with fastmod.no_grad():
        y, yc = m(z), m(z + dtype(c))
    t = {np.float32: 1e-3 if abs(c) >= 1e3 else 1e-5, np.float64: 1e-10}[dtype]
    np.testing.assert_allclose(yc, y, rtol=t, atol=t)
    assert not np.allclose(yc, y + c)


@pytest.mark.parametrize("a", [0.5, 3.0, 1e3])
def test_ln_of_scaled_linear_layer(a, rng):
    """LN(MM_{aW,ab}(z)) = LN(MM_{W,b}(z)) for a > 0; for a < 0 it is beta - gamma LN-S(...)."""
    lin = nn.Linear(8, 16, dtype=np.float64)
    # eps negligible: with eps > 0 the identity holds only up to eps / a^2 (see above)
    ln = randomize(nn.LayerNorm(16, eps=1e-14, dtype=np.float64), rng)
    lin_a = nn.Linear(8, 16, dtype=np.float64)
    z = rng.standard_normal((5, 8))
    with fastmod.no_grad():
        ref = ln(lin(z))
        for sign in (1, -1):
            lin_a.weight.data[...] = sign * a * lin.weight.data
            lin_a.bias.data[...] = sign * a * lin.bias.data
            out = ln(lin_a(z))
            expected = ref if sign > 0 else 2 * ln.bias.data - ref
            np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_normalization_axes_match_the_seeds_table(rng):
    """BN: mean 0 / var 1 per channel across the batch (N, H, W); LN: per sample across the
    features; GN: per sample within each group of channels."""
    # offsets per sample and per channel: each norm removes some of them and keeps the others
    x = (rng.standard_normal((8, 6, 5, 5)) + np.linspace(-4, 4, 8).reshape(8, 1, 1, 1)
         + np.array([-5, 5, -3, 3, -1, 1.0]).reshape(1, 6, 1, 1))
    eps = 1e-12
    with fastmod.no_grad():
        bn = nn.BatchNorm2d(6, eps=eps, dtype=np.float64)(x)
        ln = nn.LayerNorm((6, 5, 5), eps=eps, dtype=np.float64)(x)
        gn = nn.GroupNorm(3, 6, eps=eps, dtype=np.float64)(x)

    def check(y, axes, reshape=None):
        y = y if reshape is None else y.reshape(reshape)
        np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-10)
        np.testing.assert_allclose(y.var(axis=axes), 1, atol=1e-8)

    check(bn, (0, 2, 3))
    check(ln, (1, 2, 3))
    check(gn, 2, reshape=(8, 3, -1))
    # and not along the other axes
    assert np.abs(bn.mean(axis=(1, 2, 3))).max() > 0.1       # per sample: not normalized
    assert np.abs(ln.mean(axis=(0, 2, 3))).max() > 0.1       # per channel: not normalized
    assert np.abs(gn.mean(axis=(0, 2, 3))).max() > 0.1


def test_groupnorm_one_group_is_layernorm_over_chw(dtype, rng):
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    with fastmod.no_grad():
        gn = nn.GroupNorm(1, 4, dtype=dtype)(x)
        ln = nn.LayerNorm((4, 5, 6), elementwise_affine=False, dtype=dtype)(x)
    np.testing.assert_allclose(gn, ln, **tol(dtype))


def test_groupnorm_c_groups_is_instancenorm(dtype, rng):
    x = (rng.standard_normal((3, 4, 5, 6)) * 2 + 1).astype(dtype)
    with fastmod.no_grad():
        gn = nn.GroupNorm(4, 4, affine=False, dtype=dtype)(x)
    inorm, _, _ = normalize_ref(x, (2, 3), 1e-5)                # instance norm: per (n, c)
    np.testing.assert_allclose(gn, inorm, **tol(dtype))


def test_groupnorm_c_groups_matches_torch_instancenorm(torch, rng):
    x = rng.standard_normal((3, 4, 5, 6))
    with fastmod.no_grad():
        gn = nn.GroupNorm(4, 4, affine=False, dtype=np.float64)(x)
    ref = torch.nn.InstanceNorm2d(4)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(gn, ref, rtol=1e-10, atol=1e-10)


# ================================================================== numerics
def _huge_mean_inputs(rng):
    x = (1e4 + 1e-3 * rng.standard_normal((6, 8, 4, 4))).astype(np.float32)
    return x


@pytest.mark.parametrize("name", ["layernorm", "batchnorm", "groupnorm"])
def test_huge_mean_tiny_variance_no_cancellation(name, rng):
    """1e4 + 1e-3 randn in float32: E[x^2] - E[x]^2 would lose every digit; the kernels' two-pass
    double statistics and hi/lo mean split match a float64 reference on the same float32 data."""
    x = _huge_mean_inputs(rng)
    eps = 1e-12                      # var ~ 1e-6: keep eps from dominating
    mods = {"layernorm": lambda dt: nn.LayerNorm((8, 4, 4), eps=eps, dtype=dt),
            "batchnorm": lambda dt: nn.BatchNorm2d(8, eps=eps, dtype=dt),
            "groupnorm": lambda dt: nn.GroupNorm(2, 8, eps=eps, dtype=dt)}
    m32, m64 = mods[name](np.float32), mods[name](np.float64)
    y32 = m32(x)
    y64 = m64(x.astype(np.float64))                # the float64 reference on the same data
    assert np.isfinite(y32).all()
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    assert np.abs(y32).max() > 1                   # really normalized, not collapsed to 0
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx64 = m64.backward(dy.astype(np.float64))         # ~ 1e3: rstd ~ 1 / 1e-3
    np.testing.assert_allclose(m32.backward(dy), dx64, rtol=1e-3, atol=1e-4 * np.abs(dx64).max())
    if name == "batchnorm":
        np.testing.assert_allclose(m32.running_mean, m64.running_mean, rtol=1e-6)
        np.testing.assert_allclose(m32.running_var, m64.running_var, rtol=1e-3)


@pytest.mark.parametrize("shape", [(301, 67), (97, 33, 3), (2001, 5)])
def test_batchnorm1d_columns_huge_mean_tiny_variance(shape, threads, rng):
    """BatchNorm1d's column path (statistics down strided columns, row blocks merged with Chan's
    formula, threads merged in order): float32 on 1e4 + 1e-3 randn matches float64."""
    x = (1e4 + 1e-3 * rng.standard_normal(shape)).astype(np.float32)
    m32 = nn.BatchNorm1d(shape[1], eps=1e-12)
    m64 = nn.BatchNorm1d(shape[1], eps=1e-12, dtype=np.float64)
    y32, y64 = m32(x), m64(x.astype(np.float64))
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-4)
    assert np.abs(y32).max() > 1
    axes = batchnorm_axes(x)
    yr, xh, rstd = normalize_ref(x, axes, 1e-12)
    np.testing.assert_allclose(y64, yr, rtol=1e-8, atol=1e-8)
    dy = rng.standard_normal(shape).astype(np.float32)
    dx64 = m64.backward(dy.astype(np.float64))
    np.testing.assert_allclose(dx64, normalize_backward_ref(dy, xh, rstd, axes),
                               rtol=1e-7, atol=1e-9 * np.abs(dx64).max())
    np.testing.assert_allclose(m32.backward(dy), dx64, rtol=1e-3, atol=1e-4 * np.abs(dx64).max())
    np.testing.assert_allclose(m32.running_mean, m64.running_mean, rtol=1e-6)
    np.testing.assert_allclose(m32.running_var, m64.running_var, rtol=1e-3)


@pytest.mark.parametrize("name", ["layernorm", "ln-s", "batchnorm", "groupnorm"])
def test_constant_input_gives_bias_and_no_nan(name, dtype, rng):
    x = np.full((4, 6, 3, 3), 7.5, dtype)
    m = {"layernorm": lambda: nn.LayerNorm((6, 3, 3), dtype=dtype),
         "ln-s": lambda: nn.LayerNorm((3, 3), elementwise_affine=False, dtype=dtype),
         "batchnorm": lambda: nn.BatchNorm2d(6, dtype=dtype),
         "groupnorm": lambda: nn.GroupNorm(3, 6, dtype=dtype)}[name]()
    randomize(m, rng)
    with np.errstate(all="raise"):
        y = m(x)
        dx = m.backward(rng.standard_normal(x.shape).astype(dtype))
    assert np.isfinite(y).all() and np.isfinite(dx).all()
    expected = np.zeros_like(y) if m.bias is None else np.broadcast_to(
        m.bias.data.reshape((1, 6, 1, 1) if name in ("batchnorm", "groupnorm") else m.bias.shape), y.shape)
    np.testing.assert_allclose(y, expected, atol=1e-6)
    for p in m.parameters():
        assert np.isfinite(p.grad).all()


# ================================================================== threads
def _all_modules(dtype):
    return [(nn.LayerNorm(256, dtype=dtype), (256, 256)),
            (nn.LayerNorm((16, 64), dtype=dtype), (64, 16, 64)),
            (nn.BatchNorm1d(64, dtype=dtype), (1024, 64)),
            (nn.BatchNorm1d(16, dtype=dtype), (64, 16, 64)),
            (nn.BatchNorm1d(131, dtype=dtype), (517, 131)),
            (nn.BatchNorm1d(61, dtype=dtype), (263, 61, 5)),
            (nn.BatchNorm2d(16, dtype=dtype), (16, 16, 16, 16)),
            (nn.GroupNorm(4, 16, dtype=dtype), (16, 16, 16, 16)),
            (nn.GroupNorm(8, 256, dtype=dtype), (256, 256))]


def _run(m, x, dy):
    m.zero_grad()
    y = m(x)
    dx = m.backward(dy)
    return [y, dx] + [p.grad.copy() for p in m.parameters()] + [b.copy() for b in m.buffers()]


def test_thread_counts_agree_and_repeat_bit_identical(dtype, rng):
    """Shapes large enough that the kernels really use 2 threads (GRAIN = 32768 elements)."""
    for m, shape in _all_modules(dtype):
        randomize(m, rng)
        x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        state = m.state_dict()
        results = {}
        for nt in (1, 2, 2, 1):
            fastmod.set_num_threads(nt)
            m.load_state_dict(state)
            out = _run(m, x, dy)
            if nt in results:
                for a, b in zip(out, results[nt]):
                    assert np.array_equal(a, b), f"{m}: not bit-identical at {nt} threads"
            results[nt] = out
        for a, b in zip(results[1], results[2]):
            np.testing.assert_allclose(a, b, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                       atol=1e-5 if dtype == np.float32 else 1e-12)


# ================================================================== module behaviour
def test_no_grad_saves_nothing_and_backward_raises(rng):
    m = nn.LayerNorm(8)
    with fastmod.no_grad():
        m(rng.standard_normal((2, 8)).astype(np.float32))
    with pytest.raises(RuntimeError, match="no saved forward state"):
        m.backward(np.ones((2, 8), np.float32))


@pytest.mark.parametrize("make,shape", [(lambda: nn.LayerNorm(6, dtype=np.float64), (3, 6)),
                                        (lambda: nn.BatchNorm1d(6, dtype=np.float64), (5, 6)),
                                        (lambda: nn.GroupNorm(2, 6, dtype=np.float64), (3, 6, 2))])
def test_applied_twice_gives_both_gradients(make, shape, rng):
    """A module used twice in one pass (y = m(m(x))) keeps both saved states."""
    m = randomize(make(), rng)
    seq = nn.Sequential(m, m)
    assert fastmod.gradcheck(seq, rng.standard_normal(shape))


def test_need_input_grad_false_and_frozen_parameters(rng):
    m = randomize(nn.GroupNorm(2, 4, dtype=np.float64), rng)
    x, dy = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    m(x)
    dx_full = m.backward(dy)
    wg, bg = m.weight.grad.copy(), m.bias.grad.copy()
    m.zero_grad()
    m(x)
    assert m.backward(dy, need_input_grad=False) is None
    np.testing.assert_array_equal(m.weight.grad, wg)
    m.zero_grad()
    m.weight.requires_grad = False
    m(x)
    np.testing.assert_array_equal(m.backward(dy), dx_full)
    assert not m.weight.has_grad()
    np.testing.assert_array_equal(m.bias.grad, bg)


def test_parameter_gradients_accumulate(rng):
    for m, shape in [(nn.LayerNorm(5, dtype=np.float64), (3, 5)),
                     (nn.BatchNorm2d(3, dtype=np.float64), (2, 3, 2, 2)),
                     (nn.GroupNorm(3, 3, dtype=np.float64), (2, 3, 4))]:
        x, dy = rng.standard_normal(shape), rng.standard_normal(shape)
        m.zero_grad()
        m(x)
        m.backward(dy)
        once = [p.grad.copy() for p in m.parameters()]
        m(x)
        m.backward(dy)
        for p, g in zip(m.parameters(), once):
            np.testing.assert_allclose(p.grad, 2 * g, rtol=1e-12)


def test_non_contiguous_input_and_astype(rng):
    m = nn.LayerNorm(4)
    x = rng.standard_normal((4, 6)).astype(np.float32).T          # (6, 4) view
    np.testing.assert_allclose(m(x), layernorm_ref(np.ascontiguousarray(x), 1)[0], **tol(np.float32))
    bn = nn.BatchNorm2d(3).double()
    assert bn.running_mean.dtype == np.float64 and bn.num_batches_tracked.dtype == np.int64
    assert bn(rng.standard_normal((2, 3, 2, 2))).dtype == np.float64


def test_repr_shows_non_defaults():
    assert repr(nn.LayerNorm(8)) == "LayerNorm((8,))"
    assert repr(nn.LayerNorm((2, 3), eps=1e-6, elementwise_affine=False)) == \
        "LayerNorm((2, 3), eps=1e-06, elementwise_affine=False)"
    assert repr(nn.BatchNorm2d(4, momentum=None, affine=False)) == \
        "BatchNorm2d(4, momentum=None, affine=False)"
    assert repr(nn.GroupNorm(2, 4, eps=1e-3)) == "GroupNorm(2, 4, eps=0.001)"


# ================================================================== bad input
@pytest.mark.parametrize("make,x,match", [
    (lambda: nn.LayerNorm(8), np.zeros((2, 7), np.float32), r"expected input of shape \(\*, 8\), got \(2, 7\)"),
    (lambda: nn.LayerNorm((3, 4)), np.zeros((2, 4, 3), np.float32), r"\(\*, 3, 4\), got \(2, 4, 3\)"),
    (lambda: nn.LayerNorm((3, 4)), np.zeros((4,), np.float32), r"\(\*, 3, 4\), got \(4,\)"),
    (lambda: nn.BatchNorm1d(4), np.zeros((2, 3), np.float32), r"\(N, 4\) or \(N, 4, L\), got \(2, 3\)"),
    (lambda: nn.BatchNorm1d(4), np.zeros((2, 4, 3, 3), np.float32), r"got \(2, 4, 3, 3\)"),
    (lambda: nn.BatchNorm2d(4), np.zeros((2, 3, 5, 5), np.float32), r"\(N, 4, H, W\), got \(2, 3, 5, 5\)"),
    (lambda: nn.BatchNorm2d(4), np.zeros((2, 4, 5), np.float32), r"\(N, 4, H, W\), got \(2, 4, 5\)"),
    (lambda: nn.GroupNorm(2, 4), np.zeros((2, 6, 5), np.float32), r"\(N, 4, \*\), got \(2, 6, 5\)"),
    (lambda: nn.GroupNorm(2, 4), np.zeros((4,), np.float32), r"\(N, 4, \*\), got \(4,\)"),
])
def test_wrong_shapes_raise_value_error(make, x, match):
    with pytest.raises(ValueError, match=match):
        make()(x)


@pytest.mark.parametrize("make", [lambda: nn.LayerNorm(4), lambda: nn.BatchNorm1d(4),
                                  lambda: nn.GroupNorm(2, 4),
                                  lambda: nn.LayerNorm(4, elementwise_affine=False).double()])
def test_dtype_mismatch_raises_type_error(make):
    m = make()
    if m.weight is None:                     # LN-S has no weights: any float dtype is accepted
        assert m(np.ones((2, 4), np.float32)).dtype == np.float32
        with pytest.raises(TypeError, match="float32 or float64"):
            m(np.ones((2, 4), np.int64))
        return
    with pytest.raises(TypeError, match="expected float32 input like its weights, got float64"):
        m(np.ones((3, 4)))
    with pytest.raises(TypeError, match="got int64"):
        m(np.ones((3, 4), np.int64))


ONE_VALUE_CASES = [(nn.BatchNorm1d, (1, 3), True), (nn.BatchNorm2d, (1, 3, 1, 1), True),
                   (nn.BatchNorm1d, (1, 3, 1), False)]


@pytest.mark.parametrize("cls,shape,track", ONE_VALUE_CASES)
def test_batchnorm_training_needs_more_than_one_value_per_channel(cls, shape, track):
    m = cls(3, track_running_stats=track)
    with pytest.raises(ValueError, match="(?i)expected more than 1 value per channel"):
        m(np.ones(shape, np.float32))
    if track:
        assert int(m.num_batches_tracked) == 0          # nothing was updated
    # eval without running statistics uses batch statistics: it raises there too
    with pytest.raises(ValueError, match="(?i)expected more than 1 value per channel"):
        cls(3, track_running_stats=False).eval()(np.ones(shape, np.float32))
    assert cls(3).eval()(np.ones(shape, np.float32)).shape == shape     # running stats: fine
    big = (1, 3, 2) if len(shape) == 3 else (1, 3, 1, 2) if len(shape) == 4 else (2, 3)
    assert cls(3)(np.ones(big, np.float32)).shape == big                 # N * spatial = 2
    assert nn.GroupNorm(1, 1)(np.ones((1, 1), np.float32)).shape == (1, 1)   # GN is fine


@pytest.mark.parametrize("cls,shape,track", ONE_VALUE_CASES)
def test_one_value_per_channel_torch_agrees(cls, shape, track, torch):
    tm = getattr(torch.nn, cls.__name__)(3, track_running_stats=track)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        tm(torch.ones(shape))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        getattr(torch.nn, cls.__name__)(3, track_running_stats=False).eval()(torch.ones(shape))


def test_running_statistics_are_checked_before_the_kernel(dtype):
    """running_mean / running_var are plain attributes: a reassigned one of another shape or
    dtype (the kernel would read and write it as a (C,) array of the input's dtype) or a lone
    None is refused, naming the module; read-only or non-contiguous ones are replaced by
    copies (as torch's in-place update needs a writeable buffer)."""
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(dtype)
    other = np.float32 if dtype == np.float64 else np.float64
    for train in (True, False):
        for name in ("running_mean", "running_var"):
            m = nn.BatchNorm1d(3, dtype=dtype).train(train)
            setattr(m, name, np.zeros(2, dtype))
            with pytest.raises(ValueError, match=rf"BatchNorm1d\(3\): expected {name} of shape \(3,\), got \(2,\)"):
                m(x)
            setattr(m, name, np.zeros(3, other))
            with pytest.raises(TypeError, match=rf"BatchNorm1d\(3\): expected {name} of dtype {np.dtype(dtype)}.*got {np.dtype(other)}"):
                m(x)
            setattr(m, name, None)
            with pytest.raises(TypeError, match=rf"expected {name} to be a \(3,\) .*got NoneType"):
                m(x)
    m = nn.BatchNorm1d(3, dtype=dtype)
    m.running_mean = np.zeros(6, dtype)[::2]                # non-contiguous: replaced by a copy
    m.running_var = np.ones(3, dtype)
    m.running_var.flags.writeable = False
    m(x)
    assert m.running_mean.flags.c_contiguous and m.running_var.flags.writeable
    np.testing.assert_allclose(m.running_mean, 0.1 * x.astype(np.float64).mean(0), rtol=1e-5)
    m.running_mean = m.running_var = None                   # both None: batch statistics, as torch
    m.eval()
    np.testing.assert_allclose(m(x), nn.BatchNorm1d(3, track_running_stats=False, dtype=dtype)(x))


def test_batchnorm_without_state_takes_either_dtype():
    """No parameters and no running statistics: nothing holds a dtype, so both are accepted (as
    LayerNorm and GroupNorm without affine); the constructor's dtype is not cached."""
    m = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(m(x), m(x.astype(np.float32)), rtol=1e-5, atol=1e-5)
    assert m(x).dtype == np.float64 and m.backward(np.ones_like(x)).dtype == np.float64


@pytest.mark.parametrize("eps", [0, 0.0, -1e-5, float("nan"), float("inf"), "1e-5", None])
def test_bad_eps(eps):
    for make in (lambda: nn.LayerNorm(4, eps=eps), lambda: nn.BatchNorm1d(4, eps=eps),
                 lambda: nn.BatchNorm2d(4, eps=eps), lambda: nn.GroupNorm(2, 4, eps=eps)):
        with pytest.raises(ValueError, match="eps"):
            make()


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match=r"num_channels \(6\) must be divisible by num_groups \(4\)"):
        nn.GroupNorm(4, 6)
    with pytest.raises(ValueError, match="num_groups must be a positive integer"):
        nn.GroupNorm(0, 6)
    with pytest.raises(ValueError, match="num_features must be a positive integer"):
        nn.BatchNorm2d(0)
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm1d(3, momentum=float("nan"))
    with pytest.raises(ValueError, match="momentum"):
        nn.BatchNorm1d(3, momentum=1.5)
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm(())
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm((3, 0))
    with pytest.raises(ValueError, match="normalized_shape"):
        nn.LayerNorm("abc")
    with pytest.raises(ValueError, match="elementwise_affine must be a bool"):
        nn.LayerNorm(3, elementwise_affine=1)
    with pytest.raises(TypeError, match="dtype"):
        nn.GroupNorm(1, 2, dtype=np.int32)


def test_backward_checks_the_gradient_shape(rng):
    for m, shape in [(nn.LayerNorm(4), (2, 4)), (nn.BatchNorm1d(4), (3, 4)),
                     (nn.GroupNorm(2, 4), (2, 4, 3))]:
        m(rng.standard_normal(shape).astype(np.float32))
        with pytest.raises(ValueError, match="expected a gradient of shape"):
            m.backward(np.ones((5, 5), np.float32))
