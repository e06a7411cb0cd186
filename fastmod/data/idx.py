"""Readers for data a user already has on disk: MNIST-format IDX files and `.npz` archives.

IDX (the format of MNIST, Fashion-MNIST, EMNIST, KMNIST): a 4-byte magic number -- two zero
bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64)
and the number of dimensions -- then one big-endian uint32 per dimension, then the values,
big-endian, row-major. Files may be gzip-compressed (recognized by content, not by name).

`.npz`: arrays `x` and `y`, or Keras' `x_train`, `y_train` (+ `x_test`, `y_test`). Read with
`allow_pickle=False`, so loading a file never runs code.

Every problem -- a corrupt header, a truncated file, wrong shapes, labels out of range, x and y
of different lengths -- is a `DataError` (a ValueError) whose message starts with the file; one
about dtypes (non-numeric x, non-integer labels) is a `DataDtypeError`, a DataError that is also a
TypeError.

Example:
    >>> x, y = read_idx_pair("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")  # doctest: +SKIP
    >>> x.shape, y.shape                                                                  # doctest: +SKIP
    ((60000, 28, 28), (60000,))
"""
import gzip
import os
import struct
import zlib
import zipfile

import numpy as np

__all__ = ["DataError", "DataDtypeError", "read_idx", "write_idx", "read_idx_pair", "read_idx_dir", "read_npz",
           "check_xy"]

# IDX type code -> big-endian dtype
IDX_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
             0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


class DataError(ValueError):
    """A data file that cannot be used, with the file and the problem in the message."""


class DataDtypeError(DataError, TypeError):
    """A DataError about the dtype of the arrays (also a TypeError, as every dtype error)."""


def _open(path):
    """A binary stream over `path`, decompressed when the content is gzip."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory, expected an IDX file")
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == _GZIP_MAGIC else open(path, "rb")


def _read(f, n, path):
    """Up to n bytes, in chunks (so a corrupt header's huge size never allocates more than the
    file holds); a corrupt gzip stream becomes a DataError naming the file."""
    chunks, left = [], n
    try:
        while left > 0:
            c = f.read(min(left, 1 << 24))
            if not c:
                break
            chunks.append(c)
            left -= len(c)
    except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: not a valid gzip file ({e})") from None
    return b"".join(chunks)


def read_idx(path):
    """The array stored in an IDX file (gzip or plain), in native byte order.

    Raises DataError naming the file when the header is corrupt (not two zero bytes, an unknown
    type code, zero dimensions, a truncated dimension list) or the data does not match the
    header's shape (truncated or trailing bytes).
    """
    path = os.fspath(path)
    f = _open(path)
    with f:
        magic = _read(f, 4, path)
        if len(magic) < 4:
            raise DataError(f"{path}: corrupt IDX header: the file has {len(magic)} bytes, "
                            "expected at least a 4-byte magic number")
        if magic[0] != 0 or magic[1] != 0:
            raise DataError(f"{path}: corrupt IDX header: magic number 0x{magic.hex()} does not "
                            "start with two zero bytes (not an IDX file?)")
        code, ndim = magic[2], magic[3]
        if code not in IDX_TYPES:
            raise DataError(f"{path}: corrupt IDX header: unknown data type code 0x{code:02x} "
                            f"(expected one of {', '.join(f'0x{c:02x}' for c in IDX_TYPES)})")
        if ndim == 0:
            raise DataError(f"{path}: corrupt IDX header: 0 dimensions")
        raw = _read(f, 4 * ndim, path)
        if len(raw) < 4 * ndim:
            raise DataError(f"{path}: corrupt IDX header: it declares {ndim} dimensions but the "
                            f"file ends after {len(raw) // 4} of them")
        shape = struct.unpack(f">{ndim}I", raw)
        dt = IDX_TYPES[code]
        count = 1
        for s in shape:
            count *= s
        nbytes = count * dt.itemsize
        # read what the header promises, then 1 byte more to detect trailing data
        data = _read(f, nbytes, path)
        if len(data) < nbytes:
            raise DataError(f"{path}: truncated IDX file: the header declares shape {shape} "
                            f"({nbytes} data bytes) but the file holds {len(data)}")
        if _read(f, 1, path):
            raise DataError(f"{path}: corrupt IDX file: bytes left over after the {nbytes} data "
                            f"bytes of shape {shape} the header declares")
    return np.frombuffer(data, dt).astype(dt.newbyteorder("="), copy=True).reshape(shape)


def write_idx(path, array, compress=None):
    """Write `array` (uint8, int8, int16, int32, float32 or float64) as an IDX file; gzip it
    when `compress` is True or, by default, when `path` ends with '.gz'."""
    path = os.fspath(path)
    a = np.ascontiguousarray(array)
    if a.dtype not in _CODES:
        raise TypeError(f"write_idx: cannot store dtype {a.dtype} in IDX "
                        "(uint8, int8, int16, int32, float32, float64)")
    if a.ndim < 1 or a.ndim > 255:
        raise ValueError(f"write_idx: expected 1 to 255 dimensions, got {a.ndim}")
    code = _CODES[a.dtype]
    body = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + \
        a.astype(IDX_TYPES[code], copy=False).tobytes()
    if compress is None:
        compress = path.endswith(".gz")
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(body)
    return path


def check_xy(x, y, source, num_classes=None):
    """Validate a data set: x (N, ...) numeric and finite, y (N,) integer labels in
    [0, num_classes) (or >= 0 when num_classes is None). Returns (x, y int64).

    `source` names where the arrays came from (a file); every error message starts with it.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype.kind not in "biuf":
        raise DataDtypeError(f"{source}: x must be numeric, got dtype {x.dtype}")
    if x.ndim < 2:
        raise DataError(f"{source}: x must have shape (N, features...) with one row per sample, "
                        f"got shape {x.shape}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = " (one-hot labels? pass y.argmax(1))" if y.ndim == 2 else ""
        raise DataError(f"{source}: y must be class labels of shape (N,), got shape {y.shape}{hint}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{source}: x and y have different lengths: x has {x.shape[0]} samples "
                        f"(shape {x.shape}), y has {y.shape[0]} labels")
    if x.shape[0] == 0:
        raise DataError(f"{source}: the data set is empty (0 samples)")
    if any(s == 0 for s in x.shape[1:]):
        raise DataError(f"{source}: x has an empty sample shape {x.shape[1:]}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        bad = int(np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))[0])
        raise DataError(f"{source}: x contains NaN or infinite values (first in sample {bad})")
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise DataError(f"{source}: y must hold integer class labels, got non-integer "
                            f"values of dtype {y.dtype}")
    elif y.dtype.kind not in "iu":
        raise DataDtypeError(f"{source}: y must hold integer class labels, got dtype {y.dtype}")
    lo, hi = y.min(), y.max()
    if lo < 0 or (num_classes is not None and hi >= num_classes):
        i = int(np.flatnonzero((y < 0) | ((y >= num_classes) if num_classes is not None else False))[0])
        rng = f"[0, {num_classes - 1}]" if num_classes is not None else "[0, ...)"
        raise DataError(f"{source}: label {y[i].item()} of sample {i} is out of range {rng}"
                        + (f" for {num_classes} classes" if num_classes is not None else ""))
    return x, y.astype(np.int64)


def read_idx_pair(images, labels, num_classes=None):
    """(x, y) from an images IDX file (N, ...) and a labels IDX file (N,), validated together."""
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim < 2:
        raise DataError(f"{os.fspath(images)}: expected images of shape (N, H, W) or (N, D), "
                        f"got shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{os.fspath(labels)}: expected labels of shape (N,), got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{os.fspath(images)} and {os.fspath(labels)}: {x.shape[0]} images but "
                        f"{y.shape[0]} labels")
    return check_xy(x, y, f"{os.fspath(images)} + {os.path.basename(os.fspath(labels))}",
                    num_classes)


def _idx_role(name):
    """('train' | 'test', 'images' | 'labels') from an MNIST-style file name, or None."""
    n = name.lower()
    if n.endswith(".gz"):
        n = n[:-3]
    if "idx" not in n and not n.endswith(".idx"):
        return None
    if "image" in n or "idx3" in n:
        kind = "images"
    elif "label" in n or "idx1" in n:
        kind = "labels"
    else:
        return None
    split = "test" if ("t10k" in n or "test" in n) else "train"
    return split, kind


def read_idx_dir(path, num_classes=None):
    """{'train': (x, y)[, 'test': (x, y)]} from a directory of MNIST-format IDX files.

    Files are recognized by their usual names: `train-images-idx3-ubyte[.gz]`,
    `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`
    (also `*images.idx3-ubyte`, `test-*`). A test pair is optional.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DataError(f"{path}: not a directory")
    found = {}
    for name in sorted(os.listdir(path)):
        role = _idx_role(name)
        if role is None:
            continue
        if role in found:
            raise DataError(f"{path}: more than one {role[0]} {role[1]} file "
                            f"({os.path.basename(found[role])} and {name})")
        found[role] = os.path.join(path, name)
    out = {}
    for split in ("train", "test"):
        imgs, labs = found.get((split, "images")), found.get((split, "labels"))
        if imgs is None and labs is None:
            continue
        if imgs is None or labs is None:
            have = imgs or labs
            missing = "images" if imgs is None else "labels"
            raise DataError(f"{path}: found {os.path.basename(have)} but no {split} {missing} "
                            f"file (expected a name like "
                            f"{'train' if split == 'train' else 't10k'}-{missing}-idx"
                            f"{'3' if missing == 'images' else '1'}-ubyte[.gz])")
        out[split] = read_idx_pair(imgs, labs, num_classes)
    if "train" not in out:
        raise DataError(f"{path}: no MNIST-format IDX files found (expected "
                        "train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz])")
    return out


def read_npz(path, num_classes=None):
    """{'train': (x, y)[, 'test': (x, y)]} from an .npz with arrays `x` and `y`, or with
    `x_train`, `y_train` and optionally `x_test`, `y_test` (Keras' mnist.npz)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] != b"PK":
        raise DataError(f"{path}: not a valid .npz file (an .npz is a zip archive of arrays "
                        "x and y, as written by numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if {"x", "y"} <= keys:
                pairs = {"train": ("x", "y")}
            elif {"x_train", "y_train"} <= keys:
                pairs = {"train": ("x_train", "y_train")}
                if {"x_test", "y_test"} <= keys:
                    pairs["test"] = ("x_test", "y_test")
            else:
                raise DataError(f"{path}: expected arrays 'x' and 'y' (or 'x_train' and "
                                f"'y_train'), found {sorted(keys) or 'no arrays'}")
            arrays = {split: (z[a], z[b]) for split, (a, b) in pairs.items()}
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DataError(f"{path}: not a valid .npz file ({e})") from None
    except ValueError as e:     # object arrays need pickle, which we never allow
        raise DataError(f"{path}: cannot read without pickle ({e}); store plain numeric "
                        "arrays") from None
    return {split: check_xy(x, y, f"{path} [{split}]" if len(arrays) > 1 else path, num_classes)
            for split, (x, y) in arrays.items()}
