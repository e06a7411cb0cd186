"""Bundled digits, IDX and npz readers (gzip and plain), and every bad-data case they refuse."""
import gzip
import os
import struct

import numpy as np
import pytest

from fastmod.data.datasets import load_dataset, load_digits, scale_to_unit
from fastmod.data.idx import (DataDtypeError, DataError, check_xy, read_idx, read_idx_dir, read_idx_pair,
                              read_npz, write_idx)


# ------------------------------------------------------------------------------ digits
def test_load_digits_bundled():
    x, y = load_digits()
    assert x.shape == (1797, 8, 8) and x.dtype == np.float32
    assert y.shape == (1797,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(y), [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    # first image of scikit-learn's copy (pixel values 0..16, scaled by 1/16)
    assert (x[0, 0] * 16).astype(int).tolist() == [0, 0, 5, 13, 9, 1, 0, 0]
    assert y[:10].tolist() == list(range(10))
    x64, _ = load_digits(np.float64)
    assert x64.dtype == np.float64


def test_licence_note_is_shipped():
    here = os.path.join(os.path.dirname(__import__("fastmod").__file__), "data")
    text = open(os.path.join(here, "LICENSE_digits.txt")).read()
    assert "CC BY 4.0" in text and "Alpaydin" in text


# ------------------------------------------------------------------------------ IDX
def _mnist_like(rng, n=12, h=5, w=4):
    x = rng.integers(0, 256, size=(n, h, w), dtype=np.uint8)
    y = rng.integers(0, 10, size=n).astype(np.uint8)
    return x, y


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_roundtrip(tmp_path, rng, gz, dtype):
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    p = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), a)
    with open(p, "rb") as f:
        assert (f.read(2) == b"\x1f\x8b") == gz
    b = read_idx(p)
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative
    np.testing.assert_array_equal(a, b)


def test_idx_header_is_big_endian(tmp_path):
    p = tmp_path / "labels-idx1-ubyte"
    p.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 3) + bytes([7, 8, 9]))
    np.testing.assert_array_equal(read_idx(p), [7, 8, 9])
    q = tmp_path / "ints.idx"
    q.write_bytes(bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">ii", -2, 70000))
    np.testing.assert_array_equal(read_idx(q), [-2, 70000])


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_dir_mnist_names(tmp_path, rng, gz):
    ext = ".gz" if gz else ""
    x, y = _mnist_like(rng)
    xt, yt = _mnist_like(rng, n=5)
    write_idx(tmp_path / f"train-images-idx3-ubyte{ext}", x)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{ext}", y)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{ext}", xt)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{ext}", yt)
    (tmp_path / "README.txt").write_text("not data")
    d = read_idx_dir(tmp_path)
    np.testing.assert_array_equal(d["train"][0], x)
    np.testing.assert_array_equal(d["train"][1], y)
    np.testing.assert_array_equal(d["test"][0], xt)
    assert d["train"][1].dtype == np.int64
    ds = load_dataset(tmp_path)                       # scaled to [0, 1], float32
    assert ds["train"][0].dtype == np.float32
    np.testing.assert_allclose(ds["train"][0], x / 255.0, rtol=1e-6)
    assert ds["test"][0].shape == (5, 5, 4)


def test_idx_dir_train_only(tmp_path, rng):
    x, y = _mnist_like(rng)
    write_idx(tmp_path / "train-images.idx3-ubyte", x)       # Kaggle's spelling
    write_idx(tmp_path / "train-labels.idx1-ubyte", y)
    d = read_idx_dir(tmp_path)
    assert set(d) == {"train"} and d["train"][0].shape == x.shape


# ------------------------------------------------------------------------------ npz
def test_npz_x_y(tmp_path, rng):
    x = rng.standard_normal((20, 3)).astype(np.float32)
    y = rng.integers(0, 4, 20)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    d = read_npz(tmp_path / "d.npz")
    np.testing.assert_array_equal(d["train"][0], x)
    np.testing.assert_array_equal(d["train"][1], y)
    np.savez_compressed(tmp_path / "c.npz", x=x, y=y.astype(np.float64))   # integral floats ok
    assert load_dataset(tmp_path / "c.npz")["train"][1].dtype == np.int64


def test_npz_keras_layout(tmp_path, rng):
    x, y = _mnist_like(rng)
    np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x[:3], y_test=y[:3])
    ds = load_dataset(tmp_path / "mnist.npz")
    assert ds["train"][0].shape == (12, 5, 4) and ds["test"][0].shape == (3, 5, 4)


def test_scale_to_unit():
    assert scale_to_unit(np.array([[0, 255]], np.uint8)).tolist() == [[0.0, 1.0]]
    assert scale_to_unit(np.array([[0, 8, 16]], np.int64)).tolist() == [[0.0, 0.5, 1.0]]
    f = np.array([[0.5, -2.0]])
    assert scale_to_unit(f).dtype == np.float32


# ------------------------------------------------------------------------------ bad data
@pytest.mark.parametrize("body, problem", [
    (b"\x00\x00", "corrupt IDX header.*2 bytes"),
    (b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic number 0x01020801"),
    (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown data type code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "declares 3 dimensions but the file ends after 1"),
    (b"\x00\x00\x08\x02" + struct.pack(">II", 4, 4) + bytes(10), r"truncated.*\(4, 4\).*16 data bytes.*holds 10"),
    (b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes(3), "bytes left over"),
    (b"\x00\x00\x08\x02" + struct.pack(">II", 0xFFFFFFFF, 0xFFFFFFFF) + bytes(8), "truncated"),
], ids=["short", "magic", "type", "ndim0", "dims", "truncated", "trailing", "huge"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_corrupt_header(tmp_path, body, problem, gz):
    p = tmp_path / ("bad-images-idx3-ubyte" + (".gz" if gz else ""))
    if gz:
        with gzip.open(p, "wb") as f:
            f.write(body)
    else:
        p.write_bytes(body)
    with pytest.raises(DataError, match=problem) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_idx_corrupt_gzip(tmp_path):
    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage-not-deflate")
    with pytest.raises(DataError, match=f"{p}: not a valid gzip file"):
        read_idx(p)


def test_idx_pair_mismatch(tmp_path, rng):
    x, y = _mnist_like(rng)
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y[:-2])
    with pytest.raises(DataError, match="12 images but 10 labels") as e:
        read_idx_dir(tmp_path)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_idx_labels_wrong_shape(tmp_path, rng):
    x, y = _mnist_like(rng)
    write_idx(tmp_path / "i.idx", x)
    write_idx(tmp_path / "l.idx", y.reshape(3, 4))
    with pytest.raises(DataError, match=r"l.idx: expected labels of shape \(N,\), got shape \(3, 4\)"):
        read_idx_pair(tmp_path / "i.idx", tmp_path / "l.idx")
    write_idx(tmp_path / "i1.idx", y)
    with pytest.raises(DataError, match=r"i1.idx: expected images of shape"):
        read_idx_pair(tmp_path / "i1.idx", tmp_path / "l.idx")


def test_idx_labels_out_of_range(tmp_path, rng):
    x, y = _mnist_like(rng)
    y = y.astype(np.int16)
    y[4] = -1
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    with pytest.raises(DataError, match=r"label -1 of sample 4 is out of range") as e:
        read_idx_dir(tmp_path)
    assert str(tmp_path) in str(e.value)
    y[4] = 10
    write_idx(tmp_path / "train-labels-idx1-ubyte", y)
    with pytest.raises(DataError, match=r"label 10 of sample 4 is out of range \[0, 9\] for 10 classes"):
        read_idx_dir(tmp_path, num_classes=10)


def test_idx_dir_missing_files(tmp_path, rng):
    with pytest.raises(DataError, match="no MNIST-format IDX files found"):
        read_idx_dir(tmp_path)
    x, y = _mnist_like(rng)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    with pytest.raises(DataError, match="no train labels file"):
        read_idx_dir(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", x)
    with pytest.raises(DataError, match="more than one train images file"):
        read_idx_dir(tmp_path)


@pytest.mark.parametrize("arrays, problem", [
    (dict(x=np.zeros((5, 2)), y=np.zeros(4, int)), r"different lengths: x has 5 samples.*y has 4"),
    (dict(x=np.zeros(5), y=np.zeros(5, int)), r"x must have shape \(N, features...\).*got shape \(5,\)"),
    (dict(x=np.zeros((5, 2)), y=np.zeros((5, 3), int)), r"y must be class labels of shape \(N,\).*one-hot"),
    (dict(x=np.zeros((5, 2)), y=np.array([0, 1, 2, -3, 1])), r"label -3 of sample 3 is out of range"),
    (dict(x=np.zeros((5, 2)), y=np.array([0, 1.5, 2, 3, 1])), "non-integer values"),
    (dict(x=np.array([[0.0, np.nan]] * 3), y=np.zeros(3, int)), "NaN or infinite values"),
    (dict(x=np.zeros((0, 2)), y=np.zeros(0, int)), "empty"),
    (dict(x=np.array([["a", "b"]]), y=np.zeros(1, int)), "x must be numeric"),
    (dict(a=np.zeros((5, 2)), b=np.zeros(5)), r"expected arrays 'x' and 'y'.*\['a', 'b'\]"),
], ids=["length", "x-rank", "y-onehot", "negative", "fractional", "nan", "empty", "strings", "keys"])
def test_npz_bad(tmp_path, arrays, problem):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(DataError, match=problem) as e:
        load_dataset(p)
    assert str(p) in str(e.value)


def test_dtype_problems_are_type_errors_too():
    """A dtype problem in a data set is a DataDtypeError: a DataError (ValueError) that is also
    a TypeError, as every dtype error in fastmod."""
    for x, y, match in [(np.array([["a", "b"]]), np.zeros(1, int), "x must be numeric, got dtype <U1"),
                        (np.zeros((2, 2)), np.array(["a", "b"]), "integer class labels, got dtype <U1")]:
        with pytest.raises(DataDtypeError, match=match) as e:
            check_xy(x, y, "data.npz")
        assert isinstance(e.value, TypeError) and isinstance(e.value, DataError)
    with pytest.raises(DataError) as e:                   # other problems stay ValueErrors only
        check_xy(np.zeros(3), np.zeros(3, int), "data.npz")
    assert not isinstance(e.value, TypeError)


def test_npz_not_an_archive(tmp_path):
    p = tmp_path / "fake.npz"
    p.write_bytes(b"hello, not a zip")
    with pytest.raises(DataError, match=f"{p}: not a valid .npz file"):
        read_npz(p)
    q = tmp_path / "broken.npz"
    q.write_bytes(b"PK\x03\x04" + b"\x00" * 40)
    with pytest.raises(DataError, match=f"{q}: not a valid .npz file"):
        read_npz(q)


def test_npz_object_arrays_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, x=np.array([[1, 2]], dtype=object), y=np.zeros(1, int))
    with pytest.raises(DataError, match="cannot read without pickle"):
        read_npz(p)


def test_load_dataset_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_dataset(tmp_path / "nope.npz")
    p = tmp_path / "data.csv"
    p.write_text("1,2,3\n")
    with pytest.raises(DataError, match=f"{p}: unsupported data file"):
        load_dataset(p)


def test_check_xy_num_classes():
    x, y = check_xy(np.zeros((3, 2), np.uint8), np.array([[0], [1], [2]]), "src", num_classes=3)
    assert y.tolist() == [0, 1, 2] and y.dtype == np.int64
    with pytest.raises(DataError, match="src: label 3 of sample 0 is out of range"):
        check_xy(np.zeros((1, 2)), np.array([3]), "src", num_classes=3)
