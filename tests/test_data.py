"""fastmod.data: DataLoader / batches (coverage, reproducible shuffling, set_epoch),
train_test_split, synthetic datasets, and bad input."""
import numpy as np
import pytest

import fastmod
from fastmod.data import DataLoader, batches, make_classification, make_spirals, train_test_split


def _xy(n=23):
    return np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("bs", [1, 5, 23, 40])
def test_every_sample_once_per_epoch(shuffle, drop_last, bs):
    x, y = _xy()
    loader = DataLoader((x, y), batch_size=bs, shuffle=shuffle, seed=3, drop_last=drop_last)
    got = list(loader)
    assert len(got) == len(loader) == (23 // bs if drop_last else -(-23 // bs))
    seen = np.concatenate([yb for _, yb in got]) if got else np.array([], int)
    for xb, yb in got:
        assert xb.flags.c_contiguous and yb.flags.c_contiguous
        np.testing.assert_array_equal(xb, x[yb])            # pairs stay together
        if drop_last:
            assert len(yb) == bs
    assert len(set(seen.tolist())) == len(seen)
    if not drop_last:
        assert sorted(seen.tolist()) == list(range(23))
    if not shuffle:
        assert seen.tolist() == list(range(len(seen)))


def test_shuffling_reproducible_and_new_each_epoch():
    x, y = _xy(50)
    a = DataLoader((x, y), batch_size=8, shuffle=True, seed=11)
    b = DataLoader((x, y), batch_size=8, shuffle=True, seed=11)
    ea = [np.concatenate([yb for _, yb in a]) for _ in range(3)]
    eb = [np.concatenate([yb for _, yb in b]) for _ in range(3)]
    for u, v in zip(ea, eb):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(ea[0], ea[1]) and not np.array_equal(ea[1], ea[2])
    c = DataLoader((x, y), batch_size=8, shuffle=True, seed=12)
    assert not np.array_equal(np.concatenate([yb for _, yb in c]), ea[0])
    # set_epoch puts a fresh loader (a resumed run) on epoch 2's order
    d = DataLoader((x, y), batch_size=8, shuffle=True, seed=11)
    d.set_epoch(2)
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in d]), ea[2])
    np.testing.assert_array_equal(d.order(1), ea[1])
    assert d.epoch == 3
    # an abandoned epoch still advances: the next iteration is the next epoch
    e = DataLoader((x, y), batch_size=8, shuffle=True, seed=11)
    next(iter(e))
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in e]), ea[1])


def test_seed_none_follows_manual_seed():
    x, y = _xy(30)
    fastmod.manual_seed(5)
    a = np.concatenate([yb for _, yb in DataLoader((x, y), 4, shuffle=True)])
    fastmod.manual_seed(5)
    b = np.concatenate([yb for _, yb in DataLoader((x, y), 4, shuffle=True)])
    np.testing.assert_array_equal(a, b)


def test_single_array_and_batches_function():
    x, y = _xy(10)
    loader = DataLoader(x, batch_size=4)
    out = list(loader)
    assert isinstance(out[0], np.ndarray) and [len(b) for b in out] == [4, 4, 2]
    assert [b.tolist() for b in batches(np.arange(5), batch_size=2, shuffle=False)] == [[0, 1], [2, 3], [4]]
    pairs = list(batches(x, y, batch_size=3, seed=1, epoch=4))
    ref = DataLoader((x, y), batch_size=3, shuffle=True, seed=1)
    ref.set_epoch(4)
    for (xa, ya), (xb, yb) in zip(pairs, ref):
        np.testing.assert_array_equal(ya, yb)
    assert [b.tolist() for b in batches([[1, 2], [3, 4], [5, 6]], batch_size=2, shuffle=False)] == \
        [[[1, 2], [3, 4]], [[5, 6]]]


def test_three_arrays_and_batch_bigger_than_data():
    x, y = _xy(5)
    w = np.ones(5)
    (xb, yb, wb), = list(DataLoader((x, y, w), batch_size=100, shuffle=True, seed=0))
    assert len(xb) == 5
    assert list(DataLoader((x, y), batch_size=100, drop_last=True)) == []


def test_loader_bad_input():
    x, y = _xy(10)
    with pytest.raises(ValueError, match=r"same number of samples \(first dimension\), got lengths \[10, 9\]"):
        DataLoader((x, y[:9]), batch_size=2)
    with pytest.raises(ValueError, match=r"got lengths \[10, 9\]"):
        list(batches(x, y[:9], batch_size=2))
    for bad in (0, -1, 2.5, True, None):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            DataLoader((x, y), batch_size=bad)
    with pytest.raises(ValueError, match="seed must be a non-negative integer or None"):
        DataLoader((x, y), 2, shuffle=True, seed=-1)
    with pytest.raises(ValueError, match="shuffle must be a bool"):
        DataLoader((x, y), 2, shuffle="yes")
    with pytest.raises(ValueError, match="0 samples"):
        DataLoader((x[:0], y[:0]), 2)
    with pytest.raises(ValueError, match="array 1 is a scalar"):
        DataLoader((x, np.float32(3)), 2)
    with pytest.raises(TypeError, match="expected an array or a non-empty tuple"):
        DataLoader((), 2)
    with pytest.raises(TypeError, match="dtype object"):
        DataLoader((x, np.array([None] * 10)), 2)
    with pytest.raises(ValueError, match="epoch must be a non-negative integer"):
        DataLoader((x, y), 2).set_epoch(-1)


def test_train_test_split():
    x, y = _xy(20)
    xtr, xte, ytr, yte = train_test_split(x, y, 0.25, seed=0)
    assert (len(xtr), len(xte)) == (15, 5)
    assert sorted(np.concatenate([ytr, yte]).tolist()) == list(range(20))
    np.testing.assert_array_equal(xtr, x[ytr])
    again = train_test_split(x, y, 0.25, seed=0)
    np.testing.assert_array_equal(again[3], yte)
    assert not np.array_equal(train_test_split(x, y, 0.25, seed=1)[3], yte)
    _, xte2, _, yte2 = train_test_split(x, y, 0.12, shuffle=False)
    assert yte2.tolist() == [17, 18, 19]                  # ceil(0.12 * 20) = 3, the tail
    for bad in (0, 1, 1.5, -0.1, float("nan"), "0.2"):
        with pytest.raises(ValueError, match=r"test_fraction must be a real in \(0, 1\)"):
            train_test_split(x, y, bad)
    with pytest.raises(ValueError, match="leaves no training samples"):
        train_test_split(x[:1], y[:1], 0.5)
    with pytest.raises(ValueError, match="got lengths"):
        train_test_split(x, y[:3], 0.5)


@pytest.mark.parametrize("maker,kw", [(make_spirals, dict(n_samples=301, n_classes=3)),
                                      (make_classification, dict(n_samples=301, n_features=7,
                                                                  n_classes=4, n_informative=3))])
def test_synthetic_datasets(maker, kw, dtype):
    x, y = maker(seed=4, dtype=dtype, **kw)
    k = kw["n_classes"]
    assert x.dtype == dtype and x.flags.c_contiguous and y.dtype == np.int64
    assert x.shape[0] == y.shape[0] == 301
    counts = np.bincount(y, minlength=k)
    assert counts.max() - counts.min() <= 1                  # balanced
    x2, y2 = maker(seed=4, dtype=dtype, **kw)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    x3, _ = maker(seed=5, dtype=dtype, **kw)
    assert not np.array_equal(x, x3)
    assert np.all(np.isfinite(x))


def test_spirals_geometry_and_classification_separation():
    x, y = make_spirals(600, n_classes=2, noise=0.0, seed=0, dtype=np.float64)
    r = np.hypot(x[:, 0], x[:, 1])
    assert r.min() >= 0.05 - 1e-12 and r.max() <= 1.0
    # without noise, the angle is determined by class and radius: same radius, opposite arms
    ang = np.arctan2(x[:, 0], x[:, 1])
    expected = 2 * np.pi * (y / 2 + r)
    np.testing.assert_allclose(np.cos(ang - expected), 1.0, atol=1e-9)
    # well separated Gaussian classes: the nearest class mean classifies nearly everything
    x, y = make_classification(2000, n_features=10, n_classes=3, class_sep=8.0, seed=0)
    means = np.stack([x[y == c].mean(0) for c in range(3)])
    pred = np.argmin(((x[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == y).mean() > 0.97
    # the noise features carry no class information
    x, y = make_classification(3000, n_features=6, n_informative=2, class_sep=8.0, seed=1)
    gap = np.abs(x[y == 0].mean(0) - x[y == 1].mean(0))
    assert gap[2:].max() < 0.2 and gap[:2].max() > 1.0


def test_synthetic_bad_arguments():
    with pytest.raises(ValueError, match="n_classes must be an integer >= 2"):
        make_spirals(100, n_classes=1)
    with pytest.raises(ValueError, match=r"n_samples \(2\) must be at least n_classes \(3\)"):
        make_spirals(2, n_classes=3)
    with pytest.raises(ValueError, match="noise must be >= 0.0"):
        make_spirals(noise=-1)
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        make_spirals(seed=None)
    with pytest.raises(TypeError, match="expected float32 or float64"):
        make_spirals(dtype=np.int32)
    with pytest.raises(ValueError, match=r"n_informative \(8\) must be <= n_features \(5\)"):
        make_classification(n_features=5, n_informative=8)
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        make_classification(n_samples=0)
