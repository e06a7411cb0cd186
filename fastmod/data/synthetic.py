"""Synthetic classification problems, generated on the spot (no files, no network) and
deterministic from a seed: for tests, examples and quick training runs."""
import math

import numpy as np

from fastmod._validate import finite_float, positive_int, seed as check_seed
from fastmod.nn.module import as_float_dtype

__all__ = ["make_spirals", "make_classification"]


def _balanced_labels(n, k, rng):
    y = np.arange(n) % k
    return y[rng.permutation(n)].astype(np.int64)


def make_spirals(n_samples=600, n_classes=3, noise=0.2, turns=1.0, seed=0, dtype=np.float32):
    """K interleaved spiral arms in the plane, one per class: a classic problem that a linear
    model cannot solve and a small MLP can.

    Sample i of class k at radius r in (0, 1]: angle = 2 pi (k / K + turns * r) + noise * N(0, 1),
    x = r * (sin(angle), cos(angle)). Classes are balanced (sizes differ by at most one) and
    the samples are shuffled.

    Returns:
        x (n_samples, 2) of `dtype`, y (n_samples,) int64 in [0, n_classes).

    Example:
        >>> import fastmod
        >>> x, y = fastmod.data.make_spirals(300, n_classes=3, seed=0)
        >>> x.shape, y.shape, sorted(set(y.tolist()))
        ((300, 2), (300,), [0, 1, 2])
    """
    n = positive_int(n_samples, "make_spirals: n_samples")
    k = positive_int(n_classes, "make_spirals: n_classes", 2)
    if n < k:
        raise ValueError(f"make_spirals: n_samples ({n}) must be at least n_classes ({k})")
    noise = finite_float(noise, "make_spirals: noise", 0.0)
    turns = finite_float(turns, "make_spirals: turns", 0.0)
    dt = as_float_dtype(dtype, "make_spirals: dtype")
    rng = np.random.default_rng(check_seed(seed, "make_spirals"))
    y = _balanced_labels(n, k, rng)
    r = rng.uniform(0.05, 1.0, n)
    angle = 2 * np.pi * (y / k + turns * r) + noise * rng.standard_normal(n)
    x = np.stack([r * np.sin(angle), r * np.cos(angle)], axis=1)
    return np.ascontiguousarray(x, dtype=dt), y


def make_classification(n_samples=1000, n_features=20, n_classes=2, n_informative=None,
                        class_sep=3.0, seed=0, dtype=np.float32):
    """Gaussian classes: each class is a unit-variance Gaussian around its own centre in the
    first `n_informative` features; the other features are pure N(0, 1) noise.

    Centres are drawn from N(0, class_sep^2 / (2 n_informative) I), so that the expected squared
    distance between two centres is class_sep^2 whatever the dimension (class_sep is the
    typical separation in units of the noise's standard deviation). Classes are balanced and
    shuffled.

    Returns:
        x (n_samples, n_features) of `dtype`, y (n_samples,) int64 in [0, n_classes).

    Example:
        >>> import fastmod
        >>> x, y = fastmod.data.make_classification(100, n_features=5, n_classes=3, seed=1)
        >>> x.shape, int(y.max())
        ((100, 5), 2)
    """
    n = positive_int(n_samples, "make_classification: n_samples")
    d = positive_int(n_features, "make_classification: n_features")
    k = positive_int(n_classes, "make_classification: n_classes", 2)
    if n < k:
        raise ValueError(f"make_classification: n_samples ({n}) must be at least n_classes ({k})")
    inf = d if n_informative is None else positive_int(n_informative, "make_classification: n_informative")
    if inf > d:
        raise ValueError(f"make_classification: n_informative ({inf}) must be <= n_features ({d})")
    sep = finite_float(class_sep, "make_classification: class_sep", 0.0)
    dt = as_float_dtype(dtype, "make_classification: dtype")
    rng = np.random.default_rng(check_seed(seed, "make_classification"))
    centres = sep * rng.standard_normal((k, inf)) * math.sqrt(0.5 / inf)
    y = _balanced_labels(n, k, rng)
    x = rng.standard_normal((n, d))
    x[:, :inf] += centres[y]
    return np.ascontiguousarray(x, dtype=dt), y
