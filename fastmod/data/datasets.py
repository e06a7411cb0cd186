"""Bundled data sets (no network) and one entry point for data on disk.

`load_digits()` reads the UCI handwritten digits bundled with fastmod (1,797 images, 8x8,
CC BY 4.0; see fastmod/data/LICENSE_digits.txt). `load_dataset(path)` reads a user's `.npz`
(arrays x and y) or a directory of MNIST-format IDX files (see fastmod.data.idx).

Example:
    >>> from fastmod.data.datasets import load_digits
    >>> x, y = load_digits()
    >>> x.shape, x.dtype, y.shape, int(y.max())
    ((1797, 8, 8), dtype('float32'), (1797,), 9)
"""
import gzip
import os

import numpy as np

from fastmod.data.idx import DataError, check_xy, read_idx_dir, read_npz

__all__ = ["load_digits", "load_dataset", "scale_to_unit"]

_HERE = os.path.dirname(os.path.abspath(__file__))
DIGITS_PATH = os.path.join(_HERE, "digits.csv.gz")


def load_digits(dtype=np.float32):
    """The UCI optical-recognition handwritten digits (scikit-learn's copy, 1,797 samples).

    Returns:
        x: (1797, 8, 8) array of `dtype`, pixel values 0..16 divided by 16 (so in [0, 1]).
        y: (1797,) int64 labels 0..9.
    """
    try:
        with gzip.open(DIGITS_PATH, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except FileNotFoundError:
        raise FileNotFoundError(f"{DIGITS_PATH}: the bundled digits data is missing (a broken "
                                "install? reinstall fastmod)") from None
    if table.shape != (1797, 65):
        raise DataError(f"{DIGITS_PATH}: expected 1797 rows of 64 pixels + 1 label, got "
                        f"shape {table.shape}")
    x = (table[:, :64].reshape(-1, 8, 8) / 16.0).astype(dtype)
    return check_xy(x, table[:, 64], DIGITS_PATH, num_classes=10)


def scale_to_unit(x, dtype=np.float32):
    """Integer images (e.g. uint8 0..255) -> floats in [0, 1] (divided by their maximum: 255
    for uint8 data that reaches it); float data is only converted to `dtype`."""
    x = np.asarray(x)
    if x.dtype.kind in "biu":
        top = 255 if x.dtype == np.uint8 else max(int(x.max()), 1)
        return (x / float(top)).astype(dtype)
    return x.astype(dtype, copy=False)


def load_dataset(path=None, num_classes=None):
    """{'name', 'train': (x, y), 'test': (x, y) or None} from the bundled digits (path None or
    'digits'), an `.npz` file, or a directory of MNIST-format IDX files. x is float32 in [0, 1]
    for integer images; y int64. A test split is present only when the files provide one."""
    if path is None or path == "digits":
        x, y = load_digits()
        return {"name": "digits", "train": (x, y), "test": None}
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or directory (expected an .npz with arrays "
                                "x and y, or a directory of MNIST-format IDX files)")
    if os.path.isdir(path):
        splits = read_idx_dir(path, num_classes)
    elif path.endswith(".npz"):
        splits = read_npz(path, num_classes)
    else:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:2] == b"PK":
            splits = read_npz(path, num_classes)
        else:
            raise DataError(f"{path}: unsupported data file: expected an .npz with arrays x and "
                            "y, or a directory holding MNIST-format IDX files (pass the "
                            "directory, not one IDX file)")
    out = {"name": path, "train": None, "test": None}
    for split, (x, y) in splits.items():
        out[split] = (scale_to_unit(x), y)
    return out
