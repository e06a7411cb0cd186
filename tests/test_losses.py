"""fastmod.losses: CrossEntropyLoss and MSELoss."""
import numpy as np
import pytest

from fastmod import losses
import reference as ref
from reference import assert_close, tol

CE_CASES = [  # (label_smoothing, reduction, ignore_index, targets with ignored rows?)
    (0.0, "mean", -100, False),
    (0.0, "sum", -100, False),
    (0.1, "mean", -100, False),
    (0.25, "sum", -100, False),
    (0.0, "mean", -100, True),
    (0.1, "mean", 2, True),
    (0.2, "sum", -1, True),
]


def ce_inputs(rng, dtype, n=6, c=5, ignore=False, ignore_index=-100):
    x = (rng.standard_normal((n, c)) * 2).astype(dtype)
    t = rng.integers(0, c, n)
    if ignore:
        t[[1, 4]] = ignore_index
    return x, t


# ------------------------------------------------------------------ cross-entropy
@pytest.mark.parametrize("eps,reduction,ignore_index,ignore", CE_CASES)
def test_cross_entropy_matches_reference(eps, reduction, ignore_index, ignore, dtype, rng):
    x, t = ce_inputs(rng, dtype, ignore=ignore, ignore_index=ignore_index)
    crit = losses.CrossEntropyLoss(label_smoothing=eps, reduction=reduction, ignore_index=ignore_index)
    loss = crit(x, t)
    assert isinstance(loss, float)
    want, wgrad = ref.cross_entropy(x, t, eps, ignore_index, reduction)
    np.testing.assert_allclose(loss, want, **tol(dtype))
    g = crit.backward()
    assert g.shape == x.shape and g.dtype == dtype
    np.testing.assert_allclose(g, wgrad, **tol(dtype))
    if ignore:
        np.testing.assert_array_equal(g[[1, 4]], 0)


@pytest.mark.parametrize("eps,reduction,ignore_index,ignore", CE_CASES)
def test_cross_entropy_finite_differences(eps, reduction, ignore_index, ignore, rng):
    x, t = ce_inputs(rng, np.float64, n=5, c=3, ignore=ignore, ignore_index=ignore_index)
    crit = losses.CrossEntropyLoss(label_smoothing=eps, reduction=reduction, ignore_index=ignore_index)
    crit(x, t)
    g = crit.backward()
    num = ref.numeric_grad(lambda z: losses.CrossEntropyLoss(eps, reduction, ignore_index)(z, t), x)
    np.testing.assert_allclose(g, num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("eps,reduction,ignore_index,ignore", CE_CASES)
def test_cross_entropy_torch_parity(eps, reduction, ignore_index, ignore, torch, dtype, rng):
    x, t = ce_inputs(rng, dtype, ignore=ignore, ignore_index=ignore_index)
    crit = losses.CrossEntropyLoss(label_smoothing=eps, reduction=reduction, ignore_index=ignore_index)
    loss = crit(x, t)
    g = crit.backward()
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    tl = torch.nn.CrossEntropyLoss(label_smoothing=eps, reduction=reduction,
                                   ignore_index=ignore_index)(xt, torch.from_numpy(t))
    tl.backward()
    assert_close(loss, tl.item(), dtype)
    assert_close(g, xt.grad.numpy(), dtype)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_cross_entropy_huge_logits_are_stable(eps, dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype)
    t = np.array([0, 0, 1, 1])
    crit = losses.CrossEntropyLoss(label_smoothing=eps)
    with np.errstate(all="raise"):
        loss = crit(x, t)
        g = crit.backward()
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    want, wgrad = ref.cross_entropy(x, t, eps)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    np.testing.assert_allclose(g, wgrad, **tol(dtype))
    # a confident correct prediction costs ~0; a confident wrong one ~2e4 per row
    crit = losses.CrossEntropyLoss(reduction="sum")
    assert crit(x[:1], np.array([0])) == 0.0
    np.testing.assert_allclose(crit(x[:1], np.array([1])), 2e4, rtol=1e-6)


def test_cross_entropy_known_values():
    crit = losses.CrossEntropyLoss()
    assert abs(crit(np.zeros((2, 4), np.float32), np.array([0, 3])) - np.log(4)) < 1e-6
    # targets may be any integer type, or a list
    for t in (np.array([1, 0], np.int32), np.array([1, 0], np.uint8), [1, 0]):
        np.testing.assert_allclose(crit(np.array([[0.0, 1.0], [2.0, 0.0]]), t), np.log1p(np.exp(-1.0))
                                   / 2 + np.log1p(np.exp(-2.0)) / 2, rtol=1e-12)


def test_cross_entropy_all_rows_ignored_is_nan_as_torch(torch):
    x = np.ones((2, 3))
    t = np.array([-100, -100])
    crit = losses.CrossEntropyLoss()
    assert np.isnan(crit(x, t))
    assert np.isnan(torch.nn.CrossEntropyLoss()(torch.from_numpy(x), torch.from_numpy(t)).item())
    np.testing.assert_array_equal(crit.backward(), 0)
    assert losses.CrossEntropyLoss(reduction="sum")(x, t) == 0.0


def test_cross_entropy_noncontiguous_and_readonly(rng):
    base = rng.standard_normal((5, 8))
    x = base.T[:, ::2]                                     # (8, 3), strided
    t = rng.integers(0, 3, 8)
    crit = losses.CrossEntropyLoss()
    a, ga = crit(x, t), crit.backward()
    xc = np.ascontiguousarray(x)
    xc.flags.writeable = False
    t.flags.writeable = False
    assert crit(xc, t) == a
    np.testing.assert_array_equal(crit.backward(), ga)


def test_cross_entropy_bad_targets():
    crit = losses.CrossEntropyLoss()
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="target 4 is out of range for 4 classes"):
        crit(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="target -1 is out of range for 4 classes"):
        crit(x, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"expected target of shape \(3,\) for logits \(3, 4\), got \(2,\)"):
        crit(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"expected target of shape \(3,\).*got \(3, 1\)"):
        crit(x, np.array([[0], [1], [2]]))
    with pytest.raises(TypeError, match="expected integer class indices as target, got float64"):
        crit(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="integer class indices.*bool"):
        crit(x, np.array([True, False, True]))
    # -100 is ignored, not out of range; with another ignore_index it is out of range
    crit(x, np.array([0, -100, 1]))
    with pytest.raises(ValueError, match="target -100 is out of range"):
        losses.CrossEntropyLoss(ignore_index=3)(x, np.array([0, -100, 1]))


def test_cross_entropy_bad_logits_and_order():
    crit = losses.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"expected logits of shape \(N, C\), got \(4,\)"):
        crit(np.zeros(4), np.array([0]))
    with pytest.raises(ValueError, match=r"expected logits of shape \(N, C\), got \(2, 3, 4\)"):
        crit(np.zeros((2, 3, 4)), np.array([0, 1]))
    with pytest.raises(TypeError, match="float32 or float64 logits, got int64"):
        crit(np.zeros((2, 3), np.int64), np.array([0, 1]))
    with pytest.raises(TypeError, match="numpy.ndarray logits, got list"):
        crit([[0.0, 1.0]], np.array([0]))
    with pytest.raises(ValueError, match=r"non-empty logits, got shape \(0, 3\)"):
        crit(np.zeros((0, 3)), np.zeros(0, np.int64))
    with pytest.raises(RuntimeError, match="call the loss on a batch first"):
        losses.CrossEntropyLoss().backward()
    crit(np.zeros((2, 3)), np.array([0, 1]))
    crit.backward()
    with pytest.raises(RuntimeError, match="call the loss on a batch first"):
        crit.backward()


@pytest.mark.parametrize("kwargs,match", [
    ({"label_smoothing": -0.1}, "label_smoothing must be >= 0"),
    ({"label_smoothing": 1.5}, "label_smoothing must be <= 1"),
    ({"label_smoothing": float("nan")}, "label_smoothing must be finite"),
    ({"label_smoothing": float("inf")}, "label_smoothing must be finite"),
    ({"label_smoothing": "0.1"}, "label_smoothing must be a real number"),
    ({"reduction": "none"}, "reduction must be 'mean' or 'sum', got 'none'"),
    ({"ignore_index": 1.5}, "ignore_index must be an int"),
    ({"ignore_index": True}, "ignore_index must be an int"),
])
def test_cross_entropy_bad_constructor_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.CrossEntropyLoss(**kwargs)


# ------------------------------------------------------------------ MSE
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)])
def test_mse_matches_reference_and_torch(reduction, shape, dtype, torch, rng):
    out = rng.standard_normal(shape).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    crit = losses.MSELoss(reduction=reduction)
    loss = crit(out, target)
    g = crit.backward()
    want, wgrad = ref.mse(out, target, reduction)
    np.testing.assert_allclose(loss, want, **tol(dtype))
    np.testing.assert_allclose(g, wgrad, **tol(dtype))
    ot = torch.from_numpy(out.copy()).requires_grad_(True)
    tl = torch.nn.MSELoss(reduction=reduction)(ot, torch.from_numpy(target))
    tl.backward()
    assert_close(loss, tl.item(), dtype)
    assert_close(g, ot.grad.numpy(), dtype)


def test_mse_finite_differences(rng):
    out, target = rng.standard_normal((2, 3, 4))
    crit = losses.MSELoss()
    crit(out, target)
    num = ref.numeric_grad(lambda z: losses.MSELoss()(z, target), out)
    np.testing.assert_allclose(crit.backward(), num, rtol=1e-6, atol=1e-10)


def test_mse_noncontiguous(rng):
    out, target = rng.standard_normal((2, 4, 3))
    crit = losses.MSELoss()
    a, ga = crit(out.T, target.T), crit.backward()
    assert crit(np.ascontiguousarray(out.T), np.ascontiguousarray(target.T)) == a
    np.testing.assert_array_equal(crit.backward(), ga)


def test_mse_bad_input():
    crit = losses.MSELoss()
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match=r"expected target of shape \(2, 3\), got \(3, 2\)"):
        crit(x, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"expected target of shape \(2, 3\), got \(3,\)"):
        crit(x, np.zeros(3, np.float32))                  # no silent broadcast
    with pytest.raises(TypeError, match="expected float32 target like the output, got float64"):
        crit(x, np.zeros((2, 3)))
    with pytest.raises(TypeError, match="float32 or float64 target, got int64"):
        crit(x, np.zeros((2, 3), np.int64))
    with pytest.raises(TypeError, match="numpy.ndarray output, got list"):
        crit([0.0], np.zeros(1))
    with pytest.raises(ValueError, match="non-empty output"):
        crit(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(RuntimeError, match="call the loss on a batch first"):
        losses.MSELoss().backward()
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        losses.MSELoss(reduction="max")


@pytest.mark.parametrize("make,good,bad", [
    (losses.CrossEntropyLoss, (np.zeros((2, 3)), np.array([0, 1])), (np.zeros((2, 3)), np.array([0, 5]))),
    (losses.MSELoss, (np.zeros(3), np.ones(3)), (np.zeros(3), np.ones(4))),
])
def test_failed_call_does_not_leave_an_older_batch_for_backward(make, good, bad):
    crit = make()
    crit(*good)
    with pytest.raises(ValueError):
        crit(*bad)
    with pytest.raises(RuntimeError, match="call the loss on a batch first"):
        crit.backward()
