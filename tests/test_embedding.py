"""Embedding: gather forward, scatter-add backward, torch parity, gradcheck, bad input."""
import numpy as np
import pytest

import fastmod
import fastmod.nn as nn
from reference import assert_close


def ref_backward(idx, dy, V, padding_idx=None):
    """dW[v] = sum of dy rows whose id is v (np.add.at), float64."""
    dw = np.zeros((V, dy.shape[-1]))
    np.add.at(dw, idx.reshape(-1), dy.reshape(-1, dy.shape[-1]).astype(np.float64))
    if padding_idx is not None:
        dw[padding_idx] = 0
    return dw


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
def test_forward_and_backward_match_reference(dtype, rng, shape, threads):
    m = nn.Embedding(11, 40, dtype=dtype)
    x = rng.integers(0, 11, size=shape)
    y = m(x)
    assert y.shape == shape + (40,) and y.dtype == dtype
    np.testing.assert_array_equal(y, m.weight.data[x])
    dy = rng.standard_normal(y.shape).astype(dtype)
    assert m.backward(dy) is None
    np.testing.assert_allclose(m.weight.grad, ref_backward(x, dy, 11),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)


def test_gradients_accumulate_and_repeated_ids_add(rng):
    m = nn.Embedding(4, 3, dtype=np.float64)
    x = np.array([1, 1, 1, 2])
    dy = np.ones((4, 3))
    m(x)
    m.backward(dy)
    m(x)
    m.backward(dy)
    np.testing.assert_array_equal(m.weight.grad[:, 0], [0, 6, 2, 0])
    m.zero_grad()
    m(x)
    m.backward(dy)
    np.testing.assert_array_equal(m.weight.grad[:, 0], [0, 3, 1, 0])


def test_padding_idx(rng):
    m = nn.Embedding(6, 4, padding_idx=-1)
    assert m.padding_idx == 5 and not m.weight.data[5].any()
    x = np.array([[5, 0, 5]])
    y = m(x)
    assert not y[0, 0].any()
    m.backward(np.ones_like(y))
    assert not m.weight.grad[5].any() and (m.weight.grad[0] == 1).all()


def test_init_is_standard_normal():
    fastmod.manual_seed(0)
    w = nn.Embedding(1000, 64).weight.data
    assert abs(w.mean()) < 0.01 and abs(w.std() - 1) < 0.01


def test_gradcheck_weight(rng):
    m = nn.Embedding(5, 3, dtype=np.float64)    # (the padding row is frozen by definition)
    fastmod.gradcheck(m, rng.integers(0, 5, size=(3, 4)))


def test_torch_parity_state_dict_both_ways(dtype, rng):
    torch = pytest.importorskip("torch")
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    tm = torch.nn.Embedding(9, 6, padding_idx=0).to(tdt)
    m = nn.Embedding(9, 6, padding_idx=0, dtype=dtype)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = rng.integers(0, 9, size=(4, 5))
    ty = tm(torch.from_numpy(x))
    y = m(x)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(dy))
    m.backward(dy)
    assert_close(m.weight.grad, tm.weight.grad.numpy(), dtype)
    tm2 = torch.nn.Embedding(9, 6).to(tdt)
    tm2.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    np.testing.assert_array_equal(tm2(torch.from_numpy(x)).detach().numpy(), y)


def test_threads_bit_identical(rng):
    m = nn.Embedding(50, 256)
    x = rng.integers(0, 50, size=(64, 33))
    dy = rng.standard_normal((64, 33, 256)).astype(np.float32)
    grads = []
    for nt in (1, 2, 2):
        fastmod.set_num_threads(nt)
        m.zero_grad()
        m(x)
        m.backward(dy)
        grads.append(m.weight.grad.copy())
    # each element gets its additions in index order whatever the thread count
    np.testing.assert_array_equal(grads[0], grads[1])
    np.testing.assert_array_equal(grads[1], grads[2])


def test_bad_input():
    m = nn.Embedding(10, 4)
    with pytest.raises(ValueError, match=r"token id 10 is out of range \[0, 10\)"):
        m(np.array([1, 10]))
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        m(np.array([[-1, 3]]))
    with pytest.raises(TypeError, match="expected integer token ids, got float32"):
        m(np.zeros(3, np.float32))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        m([1, 2])
    with pytest.raises(ValueError, match="non-empty"):
        m(np.zeros((0,), np.int64))
    with pytest.raises(ValueError, match="num_embeddings must be a positive integer"):
        nn.Embedding(0, 4)
    with pytest.raises(ValueError, match="padding_idx must be an int in"):
        nn.Embedding(10, 4, padding_idx=10)
    y = m(np.array([1, 2]))
    with pytest.raises(ValueError, match="expected a gradient of shape"):
        m.backward(np.zeros((2, 5), np.float32))


# ------------------------------------------------------------------ max_norm, scale_grad_by_freq, from_pretrained
def ref_renorm(w, ids, max_norm, p):
    """Rows looked up with a p-norm above max_norm scaled by max_norm / (norm + 1e-7)."""
    w = np.asarray(w, np.float64).copy()
    for r in np.unique(ids):
        n = np.abs(w[r]).max() if p == np.inf else (np.abs(w[r]) ** p).sum() ** (1 / p)
        if n > max_norm:
            w[r] *= max_norm / (n + 1e-7)
    return w


@pytest.mark.parametrize("p", [2.0, 1.0, np.inf])
def test_max_norm_renormalizes_looked_up_rows(dtype, rng, p):
    m = nn.Embedding(12, 5, max_norm=1.5, norm_type=p, dtype=dtype)
    w0 = m.weight.data.copy()
    x = rng.integers(0, 6, size=(3, 4))               # rows 6.. are never looked up
    ref = ref_renorm(w0, x, 1.5, p)
    y = m(x)
    np.testing.assert_allclose(m.weight.data, ref, rtol=1e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(m.weight.data[6:], w0[6:])
    np.testing.assert_array_equal(y, m.weight.data[x])
    norms = np.abs(y).max(-1) if p == np.inf else (np.abs(y.astype(np.float64)) ** p).sum(-1) ** (1 / p)
    assert norms.max() <= 1.5 * (1 + 1e-5)


@pytest.mark.parametrize("p", [2.0, 1.0])
def test_max_norm_and_freq_scaling_match_torch(dtype, rng, p):
    torch = pytest.importorskip("torch")
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    kw = dict(padding_idx=2, max_norm=1.2, norm_type=p, scale_grad_by_freq=True)
    tm = torch.nn.Embedding(9, 6, **kw).to(tdt)
    m = nn.Embedding(9, 6, dtype=dtype, **kw)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    x = np.array([[1, 1, 2, 5], [1, 3, 5, 8]])
    ty = tm(torch.from_numpy(x))
    y = m(x)
    # torch takes the row norms in float32 (vectorized: its rounding depends on the CPU),
    # fastmod in float64: equal at the parity tolerance (the tight check is
    # test_max_norm_renormalizes_looked_up_rows against a float64 reference)
    assert_close(y, ty.detach().numpy(), dtype)
    assert_close(m.weight.data, tm.weight.detach().numpy(), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    ty.backward(torch.from_numpy(dy))
    m.backward(dy)
    assert_close(m.weight.grad, tm.weight.grad.numpy(), dtype)
    assert "max_norm=1.2" in repr(m) and "scale_grad_by_freq=True" in repr(m)


def test_scale_grad_by_freq_reference(rng):
    """Not the true gradient by design (torch's heuristic: each row's sum divided by its id's
    count in the batch), so no gradcheck; the true one is the default (test_gradcheck_weight)."""
    m = nn.Embedding(6, 3, scale_grad_by_freq=True, dtype=np.float64)
    x = np.array([0, 4, 4, 4, 1, 0])
    m(x)
    dy = rng.standard_normal((6, 3))
    m.backward(dy)
    counts = np.bincount(x, minlength=6)
    np.testing.assert_allclose(m.weight.grad, ref_backward(x, dy / counts[x][:, None], 6))


def test_max_norm_gradcheck(rng):
    """The renormalization is not differentiated (as torch): with rows already within max_norm
    the module is a plain lookup and gradcheck holds."""
    m = nn.Embedding(5, 3, max_norm=100.0, dtype=np.float64)
    fastmod.gradcheck(m, rng.integers(0, 5, size=(3, 4)))


def test_from_pretrained_like_torch(dtype):
    torch = pytest.importorskip("torch")
    w = np.arange(12, dtype=dtype).reshape(4, 3)
    m = nn.Embedding.from_pretrained(w, padding_idx=1)
    tm = torch.nn.Embedding.from_pretrained(torch.from_numpy(w.copy()), padding_idx=1)
    assert m.weight.data.dtype == dtype and not m.weight.requires_grad
    np.testing.assert_array_equal(m.weight.data, tm.weight.detach().numpy())   # row 1 kept
    x = np.array([[0, 1, 3]])
    np.testing.assert_array_equal(m(x), tm(torch.from_numpy(x)).numpy())
    w[0, 0] = 100                                       # a copy, not a view
    assert m.weight.data[0, 0] == 0
    m2 = nn.Embedding.from_pretrained(w, freeze=False)
    assert m2.weight.requires_grad
    m2(x)
    m2.backward(np.ones((1, 3, 3), dtype))
    np.testing.assert_array_equal(m2.weight.grad[[0, 1, 3]], np.ones((3, 3)))


def test_options_bad_arguments():
    with pytest.raises(ValueError, match="max_norm must be > 0"):
        nn.Embedding(10, 4, max_norm=0)
    with pytest.raises(ValueError, match="norm_type must be a positive number"):
        nn.Embedding(10, 4, max_norm=1, norm_type=0)
    with pytest.raises(ValueError, match="scale_grad_by_freq must be a bool"):
        nn.Embedding(10, 4, scale_grad_by_freq=1)
    with pytest.raises(ValueError, match="expected a non-empty 2-D numpy.ndarray"):
        nn.Embedding.from_pretrained(np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Embedding.from_pretrained(np.zeros((5, 2), np.int64))
