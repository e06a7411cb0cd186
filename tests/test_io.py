"""fastmod.save / load / load_into: round trips, bit-identical resume, rejection of bad files,
atomic writes."""
import json
import os
import zipfile

import numpy as np
import pytest

import fastmod
from fastmod import nn
from fastmod.io import CheckpointError


def _model(seed=0, dtype=np.float32):
    fastmod.manual_seed(seed)
    return fastmod.models.mlp([6, 16, 16, 3], dtype=dtype)


def _data(dtype=np.float32):
    return fastmod.data.make_classification(64, n_features=6, n_classes=3, seed=1, dtype=dtype)


def _batches(x, y, steps):
    """The first `steps` minibatches of a shuffled loader, across epochs."""
    loader = fastmod.data.DataLoader((x, y), batch_size=16, shuffle=True, seed=7)
    out = []
    while len(out) < steps:
        out.extend(loader)
    return out[:steps]


def _train(model, opt, batches, sched=None):
    crit = fastmod.losses.CrossEntropyLoss()
    for xb, yb in batches:
        opt.zero_grad()
        crit(model(xb), yb)
        model.backward(crit.backward())
        opt.step()
        if sched is not None:
            sched.step()
    return model


def test_roundtrip_outputs_identical(tmp_path, dtype):
    m = _model(dtype=dtype)
    x, _ = _data(dtype)
    path = tmp_path / "m.npz"
    fastmod.save(path, m, epoch=3, acc=np.float32(0.5), config={"sizes": [6, 16, 16, 3]})
    ck = fastmod.load(path)
    assert list(ck.state_dict) == list(m.state_dict())
    assert ck.meta == {"epoch": 3, "acc": 0.5, "config": {"sizes": [6, 16, 16, 3]}}
    assert ck.optimizer is None and ck["meta"]["epoch"] == 3
    m2 = _model(seed=1, dtype=dtype)
    assert not np.array_equal(m2(x), m(x))
    out = fastmod.load_into(str(path), m2)
    assert out.meta["epoch"] == 3
    np.testing.assert_array_equal(m2(x), m(x))
    for k, v in ck.state_dict.items():
        assert v.dtype == dtype


def test_buffers_and_int_arrays_kept(tmp_path):
    class WithBuffer(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)
            self.register_buffer("count", np.array(7, np.int64))
            self.register_buffer("scratch", np.zeros(3, np.float32), persistent=False)
    m = WithBuffer()
    fastmod.save(tmp_path / "b.npz", m)
    ck = fastmod.load(tmp_path / "b.npz")
    assert list(ck.state_dict) == list(m.state_dict()) == ["count", "lin.weight", "lin.bias"]
    assert ck.state_dict["count"].dtype == np.int64 and ck.state_dict["count"].shape == ()
    assert int(ck.state_dict["count"]) == 7
    m2 = WithBuffer()
    m2.count[...] = 0
    fastmod.load_into(tmp_path / "b.npz", m2)               # a 0-d buffer (like BatchNorm's
    assert int(m2.count) == 7                                # num_batches_tracked) fits back


@pytest.mark.parametrize("name,kw", [("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
                                     ("Adam", dict(lr=0.01, amsgrad=True)),
                                     ("AdamW", dict(lr=0.01, weight_decay=0.1))])
def test_resumed_training_is_bit_identical(tmp_path, name, kw):
    """Train 10 steps; or train 4, checkpoint (model + optimizer + scheduler in meta), load into
    fresh objects in a 'new process', train 6 more: same bits."""
    x, y = _data()
    cls = getattr(fastmod.optim, name)
    sched_cls = fastmod.optim.lr_scheduler.CosineAnnealingLR

    batches = _batches(x, y, 10)
    full = _model()
    opt = cls(full.parameters(), **kw)
    _train(full, opt, batches, sched=sched_cls(opt, T_max=10))

    first = _model()
    opt1 = cls(first.parameters(), **kw)
    s1 = sched_cls(opt1, T_max=10)
    _train(first, opt1, batches[:4], sched=s1)
    path = tmp_path / "ckpt.npz"
    fastmod.save(path, first, opt1, step=4, scheduler=s1.state_dict())

    resumed = _model(seed=123)                           # different initial weights
    opt2 = cls(resumed.parameters(), lr=999.0)           # hyper-parameters come from the file
    s2 = sched_cls(opt2, T_max=10)
    ck = fastmod.load_into(path, resumed, opt2)
    s2.load_state_dict(ck.meta["scheduler"])
    assert ck.optimizer_type == name
    _train(resumed, opt2, batches[ck.meta["step"]:], sched=s2)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=k)


def test_optimizer_state_stored_without_pickle(tmp_path):
    m = _model()
    opt = fastmod.optim.Adam(m.parameters(), lr=0.01)
    x, y = _data()
    _train(m, opt, _batches(x, y, 2))
    path = tmp_path / "c.npz"
    fastmod.save(path, m, opt)
    with np.load(path, allow_pickle=False) as z:
        names = set(z.files)
        assert all(z[k].dtype != object for k in names)
        header = json.loads(bytes(z["__fastmod__"]).decode())
    assert "optim/0/exp_avg" in names and "model/0.weight" in names
    assert header["format"] == "fastmod-checkpoint" and header["optimizer"]["type"] == "Adam"
    ck = fastmod.load(path)
    assert ck.optimizer["state"][0]["step"] == 2
    assert ck.optimizer["param_groups"][0]["betas"] == (0.9, 0.999)
    np.testing.assert_array_equal(ck.optimizer["state"][0]["exp_avg"], opt.state[m[0].weight]["exp_avg"])


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_truncated_and_corrupt_files_rejected(tmp_path):
    m = _model()
    good = tmp_path / "good.npz"
    fastmod.save(good, m, fastmod.optim.SGD(m.parameters(), lr=0.1), epoch=1)
    raw = good.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 30, 10):
        bad = tmp_path / f"trunc{cut}.npz"
        _write(bad, raw[:cut])
        with pytest.raises(CheckpointError, match=f"trunc{cut}.npz: .*(truncated or corrupt)"):
            fastmod.load(bad)
    # flip bytes inside the first stored array's data: the zip CRC check catches it
    flipped = bytearray(raw)
    pos = raw.index(b"\x93NUMPY") + 200
    flipped[pos:pos + 8] = bytes(8)
    _write(tmp_path / "flip.npz", bytes(flipped))
    with pytest.raises(CheckpointError, match="flip.npz: truncated or corrupt"):
        fastmod.load(tmp_path / "flip.npz")
    _write(tmp_path / "garbage.npz", b"this is not a zip file at all" * 10)
    with pytest.raises(CheckpointError, match="garbage.npz: not a readable .npz checkpoint"):
        fastmod.load(tmp_path / "garbage.npz")
    with pytest.raises(FileNotFoundError):
        fastmod.load(tmp_path / "missing.npz")


def test_foreign_npz_and_pickles_rejected(tmp_path):
    np.savez(tmp_path / "plain.npz", weight=np.ones(3))
    with pytest.raises(CheckpointError, match=r"plain.npz: not a fastmod checkpoint: the .npz has no '__fastmod__' entry \(entries: \['weight'\]\)"):
        fastmod.load(tmp_path / "plain.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    with pytest.raises(CheckpointError, match="single .npy array"):
        fastmod.load(tmp_path / "single.npy")
    # an object array (would need pickle to read) is refused, not unpickled
    np.savez(tmp_path / "obj.npz", __fastmod__=np.frombuffer(b"{}", np.uint8),
             x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="obj.npz"):
        fastmod.load(tmp_path / "obj.npz")
    header = {"format": "fastmod-checkpoint", "version": 99, "model_keys": []}
    np.savez(tmp_path / "future.npz",
             __fastmod__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(CheckpointError, match="version 99 is newer"):
        fastmod.load(tmp_path / "future.npz")
    header = {"format": "fastmod-checkpoint", "version": 1, "model_keys": ["w"]}
    np.savez(tmp_path / "missing_arr.npz",
             __fastmod__=np.frombuffer(json.dumps(header).encode(), np.uint8))
    with pytest.raises(CheckpointError, match="model entry 'w' but the file has no array"):
        fastmod.load(tmp_path / "missing_arr.npz")
    np.savez(tmp_path / "badjson.npz", __fastmod__=np.frombuffer(b"{not json", np.uint8))
    with pytest.raises(CheckpointError, match="badjson.npz: corrupt checkpoint header"):
        fastmod.load(tmp_path / "badjson.npz")


def test_mismatched_model_or_optimizer_rejected_all_or_nothing(tmp_path):
    m = _model()
    opt = fastmod.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    x, y = _data()
    _train(m, opt, _batches(x, y, 2))
    path = tmp_path / "ck.npz"
    fastmod.save(path, m, opt)

    other = fastmod.models.mlp([6, 8, 3])
    with pytest.raises(CheckpointError, match=r"ck.npz: does not fit Sequential: .*0.weight: expected shape \(8, 6\), got \(16, 6\)"):
        fastmod.load_into(path, other)
    deeper = fastmod.models.mlp([6, 16, 16, 3, 3])
    with pytest.raises(CheckpointError, match="missing keys: 6.weight, 6.bias"):
        fastmod.load_into(path, deeper)
    f64 = _model(dtype=np.float64)
    with pytest.raises(CheckpointError, match="expected dtype float64, got float32") as err:
        fastmod.load_into(path, f64)
    assert isinstance(err.value, TypeError)          # dtypes only: also a TypeError
    assert not isinstance(CheckpointError("x"), TypeError)
    # optimizer of another type, or a checkpoint without optimizer state
    fresh = _model(seed=5)
    with pytest.raises(CheckpointError, match="holds SGD state, cannot load it into Adam"):
        fastmod.load_into(path, fresh, fastmod.optim.Adam(fresh.parameters()))
    fastmod.save(tmp_path / "noopt.npz", m)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        fastmod.load_into(tmp_path / "noopt.npz", fresh, fastmod.optim.SGD(fresh.parameters()))
    # the optimizer fits but the model does not: neither changes
    small = fastmod.models.mlp([6, 16, 16, 3])
    small[0].weight.data = np.zeros((16, 6), np.float32)     # still fits...
    small.add_module("extra", nn.Linear(2, 2))              # ...but an extra key does not
    sopt = fastmod.optim.SGD(list(small.parameters())[:6], lr=0.5, momentum=0.9)
    before = sopt.state_dict()
    w_before = small[0].weight.data.copy()
    with pytest.raises(CheckpointError, match="unexpected keys|missing keys"):
        fastmod.load_into(path, small, sopt)
    assert sopt.state_dict()["param_groups"][0]["lr"] == before["param_groups"][0]["lr"] == 0.5
    assert sopt.state == {}
    np.testing.assert_array_equal(small[0].weight.data, w_before)
    # strict=False loads what fits
    fastmod.load_into(path, small, strict=False)
    np.testing.assert_array_equal(small[0].weight.data, m[0].weight.data)


def test_atomic_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    m = _model()
    path = tmp_path / "ck.npz"
    fastmod.save(path, m, epoch=1)
    before = path.read_bytes()

    real_savez = np.savez

    def crashing_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial data")       # something reached the disk, then a failure
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", crashing_savez)
    with pytest.raises(OSError, match="disk full"):
        fastmod.save(path, _model(seed=3), epoch=2)
    monkeypatch.setattr(np, "savez", real_savez)
    assert path.read_bytes() == before
    assert fastmod.load(path).meta == {"epoch": 1}
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]          # no temporary file left behind

    def crashing_replace(src, dst):
        raise KeyboardInterrupt                                   # interrupted just before rename
    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        fastmod.save(path, _model(seed=4), epoch=3)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]
    fastmod.save(path, m, epoch=4)
    assert fastmod.load(path).meta == {"epoch": 4}
    assert (os.stat(path).st_mode & 0o777) == (0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_save_bad_arguments(tmp_path):
    m = _model()
    with pytest.raises(TypeError, match=r"meta\['when'\] is not JSON-serializable"):
        fastmod.save(tmp_path / "x.npz", m, when=object())
    with pytest.raises(TypeError, match="expected a Module with state_dict"):
        fastmod.save(tmp_path / "x.npz", "model")
    with pytest.raises(TypeError, match="expected an optimizer with state_dict"):
        fastmod.save(tmp_path / "x.npz", m, optimizer=42)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fastmod.save(tmp_path / "nodir" / "x.npz", m)
    assert not (tmp_path / "x.npz").exists()


def test_zip_members_are_plain_npy(tmp_path):
    """The format is readable by any NumPy, without fastmod: plain .npy members in a zip."""
    m = _model()
    fastmod.save(tmp_path / "m.npz", m)
    with zipfile.ZipFile(tmp_path / "m.npz") as zf:
        names = zf.namelist()
    assert "model/0.weight.npy" in names and "__fastmod__.npy" in names
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["model/0.weight"], m[0].weight.data)
