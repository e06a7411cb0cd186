"""Pooling: MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool2d, GlobalAvgPool -- NumPy reference,
gradcheck, torch parity, threads, bad input."""
import math

import numpy as np
import pytest

import fastmod
from fastmod import nn
from reference import assert_close, tol


# ------------------------------------------------------------------ independent references
def _out(size, k, s, p, d, ceil):
    span = size + 2 * p - d * (k - 1) - 1
    o = (math.ceil(span / s) if ceil else span // s) + 1
    if ceil and (o - 1) * s >= size + p:
        o -= 1
    return o


def pool_ref(x, kind, k, s, p, d=(1, 1), ceil=False, count_include_pad=True):
    """Direct loops over windows on (N, C, H, W) in float64. Returns y and, for max, the argmax
    (flat h*W + w, first maximum)."""
    x = np.asarray(x, np.float64)
    N, C, H, W = x.shape
    OH, OW = _out(H, k[0], s[0], p[0], d[0], ceil), _out(W, k[1], s[1], p[1], d[1], ceil)
    y = np.zeros((N, C, OH, OW))
    arg = np.zeros((N, C, OH, OW), np.int64)
    for i in range(OH):
        for j in range(OW):
            h0, w0 = i * s[0] - p[0], j * s[1] - p[1]
            if kind == "max":
                taps = [(h0 + a * d[0], w0 + b * d[1]) for a in range(k[0]) for b in range(k[1])]
                taps = [(h, w) for h, w in taps if 0 <= h < H and 0 <= w < W]
                vals = np.stack([x[:, :, h, w] for h, w in taps], axis=-1)
                best = vals.argmax(axis=-1)
                y[:, :, i, j] = vals.max(axis=-1)
                flat = np.array([h * W + w for h, w in taps])
                arg[:, :, i, j] = flat[best]
            else:
                he, we = min(h0 + k[0], H + p[0]), min(w0 + k[1], W + p[1])
                area = (he - h0) * (we - w0)
                hs, ws, he, we = max(h0, 0), max(w0, 0), min(he, H), min(we, W)
                if not count_include_pad:
                    area = (he - hs) * (we - ws)
                y[:, :, i, j] = x[:, :, hs:he, ws:we].sum(axis=(2, 3)) / area
    return y, arg


def adaptive_ref(x, oh, ow):
    x = np.asarray(x, np.float64)
    H, W = x.shape[-2:]
    y = np.zeros(x.shape[:-2] + (oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, h1 = (i * H) // oh, -(-((i + 1) * H) // oh)
            w0, w1 = (j * W) // ow, -(-((j + 1) * W) // ow)
            y[..., i, j] = x[..., h0:h1, w0:w1].mean(axis=(-2, -1))
    return y


# ------------------------------------------------------------------ the grid
# (kind, kernel, stride, padding, dilation, ceil_mode, count_include_pad, input shape)
CASES_2D = [
    ("max", 2, None, 0, 1, False, True, (2, 3, 8, 8)),
    ("max", 3, 2, 1, 1, False, True, (2, 3, 9, 7)),
    ("max", (3, 2), (1, 3), (1, 1), (2, 1), False, True, (1, 2, 9, 8)),    # stride > kernel
    ("max", 3, 2, 1, 2, True, True, (2, 2, 10, 7)),
    ("max", 3, 3, 1, 1, False, True, (1, 2, 2, 2)),                       # H, W < kernel
    ("avg", 2, None, 0, 1, False, True, (2, 3, 8, 8)),
    ("avg", 3, 2, 1, 1, False, True, (2, 3, 9, 7)),
    ("avg", 3, 2, 1, 1, True, False, (2, 3, 10, 7)),
    ("avg", 3, 2, 1, 1, True, True, (2, 3, 10, 8)),
    ("avg", (2, 3), (4, 1), (1, 0), 1, False, True, (1, 2, 9, 8)),
    ("avg", 3, 3, 1, 1, False, False, (1, 2, 2, 2)),
]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES_2D)]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def make_pool(case, nd=2):
    kind, k, s, p, d, ceil, cip, shape = case
    if kind == "max":
        cls = nn.MaxPool2d if nd == 2 else nn.MaxPool1d
        return cls(k, s, p, dilation=d, ceil_mode=ceil)
    cls = nn.AvgPool2d if nd == 2 else nn.AvgPool1d
    return cls(k, s, p, ceil_mode=ceil, count_include_pad=cip)


def torch_pool(torch, case, nd=2):
    kind, k, s, p, d, ceil, cip, shape = case
    if kind == "max":
        cls = torch.nn.MaxPool2d if nd == 2 else torch.nn.MaxPool1d
        return cls(k, s, p, dilation=d, ceil_mode=ceil)
    cls = torch.nn.AvgPool2d if nd == 2 else torch.nn.AvgPool1d
    return cls(k, s, p, ceil_mode=ceil, count_include_pad=cip)


def _ref_for(case, x):
    kind, k, s, p, d, ceil, cip, shape = case
    return pool_ref(x, kind, _pair(k), _pair(k if s is None else s), _pair(p), _pair(d), ceil, cip)


@pytest.mark.parametrize("case", CASES_2D, ids=IDS)
def test_pool2d_forward_backward_match_reference(case, dtype, threads, rng):
    m = make_pool(case)
    x = rng.standard_normal(case[-1]).astype(dtype)
    y = m(x)
    want, arg = _ref_for(case, x)
    assert y.shape == want.shape and y.dtype == dtype
    np.testing.assert_allclose(y, want, **tol(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = m.backward(dy)
    # reference backward: the adjoint of the forward, element by element
    N, C, H, W = x.shape
    rdx = np.zeros((N, C, H * W))
    if case[0] == "max":
        for n in range(N):
            for c in range(C):
                np.add.at(rdx[n, c], arg[n, c].reshape(-1), dy[n, c].reshape(-1).astype(np.float64))
    else:
        for idx in np.ndindex(*x.shape):
            e = np.zeros(x.shape)
            e[idx] = 1
            rdx[idx[0], idx[1], idx[2] * W + idx[3]] = np.sum(_ref_for(case, e)[0] * dy)
    np.testing.assert_allclose(dx, rdx.reshape(x.shape), **tol(dtype))


@pytest.mark.parametrize("case", CASES_2D, ids=IDS)
def test_pool2d_gradcheck(case, rng):
    m = make_pool(case)
    fastmod.gradcheck(m, rng.standard_normal(case[-1]))


@pytest.mark.parametrize("case", CASES_2D, ids=IDS)
def test_pool2d_torch_parity(case, dtype, torch, rng):
    m, tm = make_pool(case), torch_pool(torch, case)
    x = rng.standard_normal(case[-1]).astype(dtype)
    y = m(x)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tm(xt)
    assert_close(y, yt.detach().numpy(), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(m.backward(dy), xt.grad.numpy(), dtype)


CASES_1D = [
    ("max", 2, None, 0, 1, False, True, (2, 3, 9)),
    ("max", 3, 4, 1, 2, False, True, (2, 3, 11)),
    ("max", 3, 2, 1, 1, True, True, (1, 2, 10)),
    ("avg", 3, 2, 1, 1, False, True, (2, 3, 9)),
    ("avg", 4, 3, 2, 1, True, False, (2, 3, 11)),
    ("avg", 5, 1, 2, 1, False, True, (1, 1, 3)),       # L < kernel
]


@pytest.mark.parametrize("case", CASES_1D, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES_1D)])
def test_pool1d_torch_parity_and_gradcheck(case, dtype, torch, rng):
    m, tm = make_pool(case, nd=1), torch_pool(torch, case, nd=1)
    x = rng.standard_normal(case[-1]).astype(dtype)
    y = m(x)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tm(xt)
    assert_close(y, yt.detach().numpy(), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(m.backward(dy), xt.grad.numpy(), dtype)
    fastmod.gradcheck(make_pool(case, nd=1), rng.standard_normal(case[-1]))


@pytest.mark.parametrize("nd,kw,shape", [
    (2, dict(kernel_size=3, stride=2, padding=1), (2, 3, 9, 8)),
    (2, dict(kernel_size=(2, 3), stride=(1, 2), dilation=(2, 1), ceil_mode=True), (1, 2, 7, 10)),
    (1, dict(kernel_size=3, stride=2, padding=1), (2, 3, 11)),
    (2, dict(kernel_size=2), (3, 6, 6)),                             # unbatched
])
def test_maxpool_return_indices(nd, kw, shape, dtype, torch, rng):
    """(values, int64 argmax) as torch -- the flat index into the input plane (the reference's
    argmax) -- and backward takes dy or (dy, None), the indices taking no gradient."""
    cls = nn.MaxPool2d if nd == 2 else nn.MaxPool1d
    m = cls(return_indices=True, **kw)
    assert "return_indices=True" in repr(m)
    x = rng.standard_normal(shape).astype(dtype)
    y, idx = m(x)
    assert idx.dtype == np.int64 and idx.shape == y.shape
    y_plain = cls(**kw)(x)
    np.testing.assert_array_equal(y, y_plain)
    if nd == 2 and len(shape) == 4:
        k, s = m.kernel_size, m.stride
        _, arg = pool_ref(x, "max", k, s, m.padding, m.dilation, m.ceil_mode)
        np.testing.assert_array_equal(idx, arg)
    tcls = torch.nn.MaxPool2d if nd == 2 else torch.nn.MaxPool1d
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt, it = tcls(return_indices=True, **kw)(xt)
    np.testing.assert_array_equal(idx, it.numpy())
    assert_close(y, yt.detach().numpy(), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(m.backward((dy, None)), xt.grad.numpy(), dtype)
    m(x)
    assert_close(m.backward(dy), xt.grad.numpy(), dtype)
    m(x)
    with pytest.raises(ValueError, match=r"expected \(dy, None\)"):
        m.backward((dy, None, None))


def test_maxpool_return_indices_gradcheck(rng):
    m = nn.MaxPool2d(3, stride=2, padding=1, return_indices=True)

    class Values(nn.Module):                 # gradcheck differentiates the values output
        def __init__(self):
            super().__init__()
            self.pool = m

        def forward(self, x):
            return self.pool(x)[0]

        def backward(self, dy, need_input_grad=True):
            return self.pool.backward((dy, None), need_input_grad)

    fastmod.gradcheck(Values(), rng.standard_normal((2, 2, 7, 6)))


def test_maxpool_propagates_nan_and_ignores_padding():
    x = -np.ones((1, 1, 4, 4), np.float32)
    x[0, 0, 1, 1] = np.nan
    y = nn.MaxPool2d(2, padding=1)(x)
    assert np.isnan(y[0, 0, 1, 1]) and np.isnan(y).sum() == 1   # window (1, 1) holds x[1, 1]
    assert (y[~np.isnan(y)] == -1).all()            # the zero padding never wins


def test_unbatched_input(rng):
    x = rng.standard_normal((3, 8, 8))
    np.testing.assert_allclose(nn.MaxPool2d(2)(x), nn.MaxPool2d(2)(x[None])[0])
    np.testing.assert_allclose(nn.AdaptiveAvgPool2d(1)(x), x.mean(axis=(1, 2)).reshape(3, 1, 1))


# ------------------------------------------------------------------ adaptive / global
@pytest.mark.parametrize("out", [1, (3, 4), (None, 2), (5, 7)])
def test_adaptive_avgpool(out, dtype, torch, rng):
    m = nn.AdaptiveAvgPool2d(out)
    tm = torch.nn.AdaptiveAvgPool2d(out)
    x = rng.standard_normal((2, 3, 10, 7)).astype(dtype)
    y = m(x)
    o = _pair(out) if not isinstance(out, tuple) else out
    want = adaptive_ref(x, o[0] or 10, o[1] or 7)
    np.testing.assert_allclose(y, want, **tol(dtype))
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tm(xt)
    assert_close(y, yt.detach().numpy(), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(m.backward(dy), xt.grad.numpy(), dtype)
    fastmod.gradcheck(nn.AdaptiveAvgPool2d(out), rng.standard_normal((2, 3, 10, 7)))


def test_global_avgpool(dtype, threads, rng):
    m = nn.GlobalAvgPool()
    x = rng.standard_normal((3, 64, 9, 7)).astype(dtype)
    y = m(x)
    assert y.shape == (3, 64)
    np.testing.assert_allclose(y, x.astype(np.float64).mean(axis=(2, 3)), **tol(dtype))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = m.backward(dy)
    np.testing.assert_allclose(dx, np.broadcast_to(dy[:, :, None, None] / 63, x.shape), **tol(dtype))
    fastmod.gradcheck(nn.GlobalAvgPool(), rng.standard_normal((2, 3, 4, 5)))
    assert nn.GlobalAvgPool()(x[:, :, :, 0]).shape == (3, 64)     # (N, C, L) works too


def test_pool_threads_agree(dtype, rng):
    x = rng.standard_normal((8, 32, 16, 16)).astype(dtype)
    dy = None
    for m in (nn.MaxPool2d(3, 2, 1), nn.AvgPool2d(2), nn.AdaptiveAvgPool2d(1)):
        out = []
        for nt in (1, 2, 2):
            fastmod.set_num_threads(nt)
            y = m(x)
            dy = np.ones_like(y)
            out.append((y, m.backward(dy)))
        for a, b in zip(out[1], out[2]):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(out[0], out[1]):
            np.testing.assert_array_equal(a, b)      # planes are independent: same bits


# ------------------------------------------------------------------ bad input
def test_bad_pool_inputs():
    m = nn.MaxPool2d(3)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, H, W\) or \(C, H, W\), got \(4, 4\)"):
        m(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        m(np.zeros((1, 1, 2, 8), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        nn.AvgPool1d(4)(np.zeros((1, 1, 3), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        m(np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        m(np.zeros((1, 1, 8, 8), np.int64))
    y = m(np.zeros((1, 1, 9, 9), np.float32))
    with pytest.raises(TypeError, match="expected a gradient of shape .* and dtype float32"):
        m.backward(np.zeros((1, 1, 3, 3), np.float64))
    assert y.shape == (1, 1, 3, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, C, \*spatial\)"):
        nn.GlobalAvgPool()(np.zeros((2, 3), np.float32))


@pytest.mark.parametrize("make,match", [
    (lambda: nn.MaxPool2d(0), "kernel_size must be >= 1"),
    (lambda: nn.MaxPool2d(2, stride=-1), "stride must be >= 1"),
    (lambda: nn.MaxPool2d(2, padding=2), "at most half of the kernel size"),
    (lambda: nn.AvgPool2d(3, padding=-1), "padding must be >= 0"),
    (lambda: nn.AvgPool1d((2, 2)), "kernel_size must be an int or a tuple of 1"),
    (lambda: nn.MaxPool1d(2, dilation=0), "dilation must be >= 1"),
    (lambda: nn.AdaptiveAvgPool2d(0), "output_size must be >= 1"),
    (lambda: nn.AvgPool2d(2, divisor_override=0), "divisor_override must be a positive integer"),
    (lambda: nn.MaxPool2d(2, return_indices="yes"), "return_indices"),
])
def test_bad_pool_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_pool_repr():
    assert repr(nn.MaxPool2d(2)) == "MaxPool2d(kernel_size=2)"
    assert repr(nn.AvgPool2d(3, 2, 1, count_include_pad=False)) == \
        "AvgPool2d(kernel_size=3, stride=2, padding=1, count_include_pad=False)"
    assert repr(nn.AdaptiveAvgPool2d(1)) == "AdaptiveAvgPool2d(output_size=1)"


# ------------------------------------------------------------------ adaptive 1-D, adaptive max
def adaptive_nd_ref(x, out, kind):
    """torch's bins on the last len(out) dims, float64; max also returns the flat argmax."""
    x = np.asarray(x, np.float64)
    nd = len(out)
    lead = x.shape[:-nd]
    spatial = x.shape[-nd:]
    xs = x.reshape((-1,) + ((1,) if nd == 1 else ()) + spatial)
    H, W = xs.shape[1:]
    OH, OW = (1, out[0]) if nd == 1 else out
    y = np.zeros((xs.shape[0], OH, OW))
    arg = np.zeros(y.shape, np.int64)
    for i in range(OH):
        h0, h1 = (i * H) // OH, -(-(i + 1) * H // OH)
        for j in range(OW):
            w0, w1 = (j * W) // OW, -(-(j + 1) * W // OW)
            win = xs[:, h0:h1, w0:w1].reshape(xs.shape[0], -1)
            if kind == "avg":
                y[:, i, j] = win.mean(1)
            else:
                a = win.argmax(1)
                y[:, i, j] = win[np.arange(len(a)), a]
                arg[:, i, j] = (h0 + a // (w1 - w0)) * W + w0 + a % (w1 - w0)
    shape = lead + tuple(out)
    return y.reshape(shape), arg.reshape(shape)


ADAPTIVE = [("avg", 1, (5,), (2, 3, 11)), ("avg", 1, (4,), (3, 7)), ("avg", 1, (1,), (2, 3, 4)),
            ("max", 1, (3,), (2, 3, 10)), ("max", 1, (7,), (2, 2, 7)),
            ("max", 2, (2, 3), (2, 3, 7, 9)), ("max", 2, (5, 5), (1, 2, 5, 5)),
            ("max", 2, (1, 1), (3, 6, 6)), ("max", 2, (4, 3), (2, 2, 3, 2))]   # bins overlap


def _adaptive(kind, nd, out, **kw):
    cls = {("avg", 1): nn.AdaptiveAvgPool1d, ("max", 1): nn.AdaptiveMaxPool1d,
           ("max", 2): nn.AdaptiveMaxPool2d}[kind, nd]
    return cls(out if nd == 2 else out[0], **kw)


@pytest.mark.parametrize("kind,nd,out,shape", ADAPTIVE)
def test_adaptive_pools_reference_torch_gradcheck(kind, nd, out, shape, dtype, torch, rng):
    x = rng.standard_normal(shape).astype(dtype)
    m = _adaptive(kind, nd, out)
    y = m(x)
    ref, arg = adaptive_nd_ref(x, out, kind)
    np.testing.assert_allclose(y, ref, **tol(dtype))
    tname = f"Adaptive{kind.capitalize()}Pool{nd}d"
    tm = getattr(torch.nn, tname)(out if nd == 2 else out[0])
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    yt = tm(xt)
    assert_close(y, yt.detach().numpy(), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(m.backward(dy), xt.grad.numpy(), dtype)
    if kind == "max":
        m2 = _adaptive(kind, nd, out, return_indices=True)
        y2, idx = m2(x)
        _, it = getattr(torch.nn, tname)(out if nd == 2 else out[0], return_indices=True)(
            torch.from_numpy(x))
        np.testing.assert_array_equal(idx, it.numpy())
        np.testing.assert_array_equal(idx, arg)
        assert_close(m2.backward((dy, None)), xt.grad.numpy(), dtype)
    fastmod.gradcheck(_adaptive(kind, nd, out), rng.standard_normal(shape))


def test_adaptive_max_nan_and_threads(rng, torch):
    x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
    x[0, 0, 1, 1] = x[0, 0, 2, 2] = np.nan
    y, idx = nn.AdaptiveMaxPool2d(2, return_indices=True)(x)
    yt, it = torch.nn.AdaptiveMaxPool2d(2, return_indices=True)(torch.from_numpy(x))
    assert np.isnan(y[0, 0, 0, 0])
    np.testing.assert_array_equal(idx, it.numpy())                  # the last NaN, as torch
    np.testing.assert_array_equal(y, yt.numpy())
    xs = rng.standard_normal((64, 32, 16, 16)).astype(np.float32)
    outs = []
    for nt in (1, 2):
        fastmod.set_num_threads(nt)
        outs.append(nn.AdaptiveMaxPool2d((3, 5))(xs))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_adaptive_pools_bad_input():
    with pytest.raises(ValueError, match=r"AdaptiveMaxPool1d.*expected input of shape \(N, C, L\)"):
        nn.AdaptiveMaxPool1d(2)(np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match="output_size must be >= 1"):
        nn.AdaptiveAvgPool1d(0)
    with pytest.raises(ValueError, match="return_indices must be a bool"):
        nn.AdaptiveMaxPool2d(2, return_indices=1)
    with pytest.raises(TypeError):
        nn.AdaptiveAvgPool2d(2, return_indices=True)
    assert repr(nn.AdaptiveMaxPool2d((2, 3), return_indices=True)) == \
        "AdaptiveMaxPool2d(output_size=(2, 3), return_indices=True)"
    assert repr(nn.AdaptiveAvgPool1d(4)) == "AdaptiveAvgPool1d(output_size=4)"
