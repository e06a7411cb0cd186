"""Minibatches: `DataLoader` (epochs, reproducible shuffling, set_epoch), `batches`, and
`train_test_split`.

Shuffling is reproducible from a seed: epoch e uses the permutation drawn by
numpy.random.default_rng([seed, e]), so it does not depend on how many batches were read
before, and `set_epoch(e)` (as torch's DistributedSampler) puts a resumed run back on the
same order. Without a seed, one is drawn from fastmod's generator, so `fastmod.manual_seed`
makes a whole training run reproducible.
"""
import math
import numbers

import numpy as np

from fastmod import _runtime
from fastmod._validate import boolean, positive_int, seed

__all__ = ["DataLoader", "batches", "train_test_split"]


def _seed(value, who):
    """A non-negative int seed; None draws one from fastmod's generator (fastmod.manual_seed)."""
    return seed(value, who, lambda: _runtime.default_generator().integers(2 ** 63))


def _as_arrays(arrays, who):
    """One array or a tuple/list of arrays with the same first dimension -> list of ndarrays."""
    single = isinstance(arrays, np.ndarray)
    seq = [arrays] if single else arrays
    if not isinstance(seq, (list, tuple)) or not seq:
        raise TypeError(f"{who}: expected an array or a non-empty tuple of arrays, got "
                        f"{type(arrays).__name__}")
    out = []
    for i, a in enumerate(seq):
        a = np.asarray(a)
        if a.dtype == object:
            raise TypeError(f"{who}: array {i} has dtype object; expected numbers")
        if a.ndim == 0:
            raise ValueError(f"{who}: array {i} is a scalar; expected at least one dimension "
                             "(samples first)")
        out.append(a)
    n = len(out[0])
    lengths = [len(a) for a in out]
    if any(m != n for m in lengths):
        raise ValueError(f"{who}: all arrays must have the same number of samples (first "
                         f"dimension), got lengths {lengths}")
    if n == 0:
        raise ValueError(f"{who}: the arrays are empty (0 samples)")
    return out, single


def _permutation(n, seed, epoch):
    return np.random.default_rng([seed, epoch]).permutation(n)


class DataLoader:
    """Iterate over minibatches of one or several arrays that share their first dimension.

    Each `for batch in loader` is one epoch; with shuffle=True every epoch has its own order,
    fixed by (seed, epoch). The epoch counter advances by one per completed or started
    iteration; `set_epoch(e)` sets the epoch the next iteration uses.

    Args:
        arrays: an ndarray, or a tuple/list of ndarrays (e.g. (x, y)) with equal lengths.
        batch_size: samples per batch (the last one may be smaller unless drop_last).
        shuffle: draw a new order every epoch (default False, as torch).
        seed: non-negative int for the shuffling; None draws one from fastmod's generator.
        drop_last: skip the last, incomplete batch.

    Yields: a tuple of batches (one per array), or one array when `arrays` was one array.
        Batches are C-contiguous (copies when shuffled, views of the arrays otherwise).

    Example:
        >>> import numpy as np, fastmod
        >>> x, y = np.zeros((10, 3), np.float32), np.arange(10)
        >>> loader = fastmod.data.DataLoader((x, y), batch_size=4, shuffle=True, seed=0)
        >>> len(loader), [len(yb) for _, yb in loader]
        (3, [4, 4, 2])
    """

    def __init__(self, arrays, batch_size=32, shuffle=False, seed=None, drop_last=False):
        self.arrays, self._single = _as_arrays(arrays, "DataLoader")
        self.batch_size = positive_int(batch_size, "DataLoader: batch_size")
        self.shuffle = boolean(shuffle, "DataLoader: shuffle")
        self.drop_last = boolean(drop_last, "DataLoader: drop_last")
        self.seed = _seed(seed, "DataLoader")
        self.epoch = 0

    @property
    def num_samples(self):
        return len(self.arrays[0])

    def __len__(self):
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_last else -(-n // b)

    def set_epoch(self, epoch):
        """Use `epoch`'s order for the next iteration (resuming a run at that epoch)."""
        if isinstance(epoch, (bool, np.bool_)) or not isinstance(epoch, (numbers.Integral, np.integer)) \
                or epoch < 0:
            raise ValueError(f"DataLoader.set_epoch: epoch must be a non-negative integer, got {epoch!r}")
        self.epoch = int(epoch)

    def order(self, epoch=None):
        """The sample indices of `epoch` (default: the next one), in the order they are served."""
        e = self.epoch if epoch is None else epoch
        if self.shuffle:
            return _permutation(self.num_samples, self.seed, e)
        return np.arange(self.num_samples)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        return _iterate(self.arrays, self._single, self.batch_size, self.drop_last,
                        _permutation(self.num_samples, self.seed, epoch) if self.shuffle else None)

    def __repr__(self):
        return (f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, drop_last={self.drop_last}, seed={self.seed})")


def _iterate(arrays, single, batch_size, drop_last, perm):
    n = len(arrays[0])
    stop = n - n % batch_size if drop_last else n
    for lo in range(0, stop, batch_size):
        hi = min(lo + batch_size, n)
        if perm is None:
            out = [np.ascontiguousarray(a[lo:hi]) for a in arrays]
        else:
            idx = perm[lo:hi]
            out = [a[idx] for a in arrays]          # fancy indexing: a contiguous copy
        yield out[0] if single else tuple(out)


def batches(x, y=None, batch_size=32, shuffle=True, seed=None, drop_last=False, epoch=0):
    """One epoch of minibatches of x (and y): yields xb, or (xb, yb) when y is given.

    The order is DataLoader's for the same (seed, epoch).

    Example:
        >>> import numpy as np, fastmod
        >>> [xb.tolist() for xb in fastmod.data.batches(np.arange(5), batch_size=2, shuffle=False)]
        [[0, 1], [2, 3], [4]]
    """
    arrays = x if y is None else (x, y)
    if y is None and not isinstance(x, np.ndarray):
        arrays = np.asarray(x)
    loader = DataLoader(arrays, batch_size=batch_size, shuffle=shuffle, seed=seed,
                        drop_last=drop_last)
    loader.set_epoch(epoch)
    return iter(loader)


def train_test_split(x, y, test_fraction=0.2, seed=None, shuffle=True):
    """Split (x, y) into (x_train, x_test, y_train, y_test), as scikit-learn orders them.

    The test part has ceil(test_fraction * n) samples; both parts must be non-empty.

    Example:
        >>> import numpy as np, fastmod
        >>> xtr, xte, ytr, yte = fastmod.data.train_test_split(np.zeros((10, 2)), np.arange(10), 0.3, seed=0)
        >>> xtr.shape, xte.shape
        ((7, 2), (3, 2))
    """
    (x, y), _ = _as_arrays((x, y), "train_test_split")
    if isinstance(test_fraction, (bool, np.bool_)) or not isinstance(test_fraction, numbers.Real) \
            or not 0 < float(test_fraction) < 1:
        raise ValueError(f"train_test_split: test_fraction must be a real in (0, 1), got {test_fraction!r}")
    boolean(shuffle, "train_test_split: shuffle")
    n = len(x)
    n_test = int(math.ceil(float(test_fraction) * n))
    if n_test >= n:
        raise ValueError(f"train_test_split: test_fraction {test_fraction} of {n} samples leaves "
                         "no training samples")
    idx = np.random.default_rng(_seed(seed, "train_test_split")).permutation(n) if shuffle \
        else np.arange(n)
    tr, te = idx[: n - n_test], idx[n - n_test:]
    return x[tr], x[te], y[tr], y[te]
