"""fastmod.fit: history, exact resume (bit-identical), Ctrl-C checkpoints, NaN/inf stops with
the step named and the last good checkpoint intact, argument checks."""
import os
import signal

import numpy as np
import pytest

import fastmod
from fastmod import _runtime, losses, nn, optim
from fastmod.training import (History, TrainingDiverged, TrainingInterrupted, evaluate, fit,
                              read_fit_state)

EPOCHS, BATCH = 3, 16


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest; bit-identity holds at any fixed count (conftest
    restores the count afterwards)."""
    fastmod.set_num_threads(1)


def _data(n=100, d=6, classes=3, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    w = np.random.default_rng(100).standard_normal((d, classes))     # one labelling rule
    y = (x @ w).argmax(1).astype(np.int64)
    return x, y


def _setup(seed=0, dropout=0.2, init_seed=None):
    """A model with dropout (uses fastmod's generator), SGD momentum, a per-step cosine schedule."""
    fastmod.manual_seed(seed if init_seed is None else init_seed)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=EPOCHS * 7)
    return model, opt, sched


def _fit(model, opt, sched, **kw):
    train = _data()
    val = _data(40, seed=1)
    kw.setdefault("epochs", EPOCHS)
    return fit(model, losses.CrossEntropyLoss(), opt, train, val, batch_size=BATCH, seed=3,
               scheduler=sched, scheduler_interval="step", progress=False, **kw)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k], err_msg=k)


def test_fit_is_exported():
    assert fastmod.fit is fit


def test_fit_history_and_learning():
    model, opt, sched = _setup(dropout=0.0)
    h = _fit(model, opt, sched, epochs=6)
    assert isinstance(h, History) and h.epochs_done == 6 and h.steps == 6 * 7
    assert h["epoch"] == [1, 2, 3, 4, 5, 6]
    for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "time"):
        assert len(h[k]) == 6, k
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["val_acc"][-1] > 0.8
    loss, acc = evaluate(model, losses.CrossEntropyLoss(), _data(40, seed=1))
    assert loss == pytest.approx(h["val_loss"][-1]) and acc == h["val_acc"][-1]
    assert model.training


def test_fit_is_deterministic():
    a = _setup()
    ha = _fit(*a)
    b = _setup()
    hb = _fit(*b)
    _assert_same_state(a[0], b[0])
    assert ha["step_loss"] == hb["step_loss"]


def _sigint_at(step):
    def cb(info):
        if info["step"] == step:
            os.kill(os.getpid(), signal.SIGINT)
    return cb


@pytest.mark.parametrize("stop_step", [10, 7], ids=["mid-epoch", "epoch-boundary"])
def test_ctrl_c_then_resume_is_bit_identical(tmp_path, stop_step):
    ref = _setup()
    href = _fit(*ref)
    ref_rng = _runtime.get_rng_state()

    ckpt = str(tmp_path / "ckpt.npz")
    run = _setup()
    with pytest.raises(TrainingInterrupted) as e:
        _fit(*run, checkpoint=ckpt, callback=_sigint_at(stop_step))
    assert e.value.checkpoint == ckpt and e.value.step == stop_step
    assert f"after step {stop_step}" in str(e.value)
    assert isinstance(e.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handler restored
    st = read_fit_state(ckpt)
    assert (st["epoch"], st["batch"]) == divmod(stop_step, 7)

    # a fresh process would build the model with any initialization: resume overwrites it all
    fastmod.manual_seed(999)
    res = _setup(init_seed=12345)
    hres = _fit(*res, resume=ckpt)
    _assert_same_state(ref[0], res[0])
    assert hres["step_loss"] == href["step_loss"]
    for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert hres[k] == href[k], k
    for p_ref, p_res in zip(ref[1].state_dict()["state"].values(), res[1].state_dict()["state"].values()):
        np.testing.assert_array_equal(p_ref["momentum_buffer"], p_res["momentum_buffer"])
    assert res[2].last_epoch == ref[2].last_epoch
    assert _runtime.get_rng_state() == ref_rng           # dropout draws continued exactly


def test_resume_from_epoch_checkpoint_extends_run(tmp_path):
    ref = _setup()
    _fit(*ref)
    ckpt = str(tmp_path / "c.npz")
    first = _setup()
    h1 = _fit(*first, epochs=1, checkpoint=ckpt)
    assert h1.epochs_done == 1
    res = _setup(init_seed=7)
    h = _fit(*res, resume=ckpt)
    assert h.epochs_done == EPOCHS
    _assert_same_state(ref[0], res[0])


def test_resume_refuses_other_data_layout(tmp_path):
    ckpt = str(tmp_path / "c.npz")
    _fit(*_setup(), epochs=1, checkpoint=ckpt)
    model, opt, sched = _setup()
    with pytest.raises(ValueError, match="another data layout"):
        fit(model, losses.CrossEntropyLoss(), opt, _data(), epochs=2, batch_size=BATCH + 1,
            seed=3, scheduler=sched, resume=ckpt, progress=False)


def _poison(step, where, value, before, ckpt):
    def cb(info):
        if info["step"] == step:                     # in epoch 2: the epoch-1 checkpoint exists
            before.append(open(ckpt, "rb").read())
            p = info["model"][3].bias if where == "logits" else info["model"][0].weight
            p.data.flat[0] = value
    return cb


@pytest.mark.parametrize("value", [np.nan, np.inf], ids=["nan", "inf"])
def test_nonfinite_loss_stops_and_keeps_checkpoint(tmp_path, value):
    ckpt = str(tmp_path / "ckpt.npz")
    model, opt, sched = _setup(dropout=0.0)
    before = []
    with pytest.raises(TrainingDiverged) as e:
        _fit(model, opt, sched, checkpoint=ckpt, callback=_poison(10, "logits", value, before, ckpt))
    msg = str(e.value)
    assert "at step 11 (epoch 2, batch 4 of 7)" in msg and ("nan" in msg or "inf" in msg)
    assert f"the last good checkpoint, {ckpt} (end of epoch 1), is unchanged" in msg
    assert e.value.step == 11 and e.value.epoch == 2 and e.value.checkpoint == ckpt
    assert e.value.history.steps == 10
    assert open(ckpt, "rb").read() == before[0]          # byte for byte
    st = read_fit_state(ckpt)
    assert (st["epoch"], st["batch"]) == (1, 0)
    sd = fastmod.load(ckpt).state_dict
    assert all(np.all(np.isfinite(v)) for v in sd.values())


def test_nonfinite_parameters_caught_before_saving(tmp_path):
    """A NaN that does not reach the loss (it hides behind a ReLU) is still never saved."""
    ckpt = str(tmp_path / "ckpt.npz")
    model, opt, sched = _setup(dropout=0.0)
    before = []
    with pytest.raises(TrainingDiverged, match=r"(parameters hold NaN or infinite values after "
                       r"step 14 \(end of epoch 2\)|loss is nan at step 11).*last good "
                       r"checkpoint.*end of epoch 1"):
        _fit(model, opt, sched, checkpoint=ckpt, callback=_poison(10, "hidden", np.nan, before, ckpt))
    assert open(ckpt, "rb").read() == before[0]


def test_divergence_without_checkpoint_and_huge_lr():
    fastmod.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    opt = optim.SGD(model.parameters(), lr=1e30)
    with pytest.raises(TrainingDiverged, match=r"at step \d+ .*no checkpoint was being written"):
        fit(model, losses.CrossEntropyLoss(), opt, _data(), epochs=3, progress=False)


def test_ctrl_c_without_checkpoint():
    model, opt, sched = _setup()
    with pytest.raises(TrainingInterrupted, match="nothing was saved") as e:
        _fit(model, opt, sched, callback=_sigint_at(2))
    assert e.value.checkpoint is None and e.value.history.steps == 2


def test_progress_fallback_without_tqdm(monkeypatch, capsys):
    import builtins
    real_import = builtins.__import__

    def no_tqdm(name, *a, **k):
        if name.startswith("tqdm"):
            raise ImportError("no tqdm")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tqdm)
    model, opt, sched = _setup()
    train = _data()
    fit(model, losses.CrossEntropyLoss(), opt, train, train, epochs=2, batch_size=BATCH,
        progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2: loss" in err and "epoch 2/2: loss" in err and "val_acc" in err


def test_regression_without_accuracy():
    fastmod.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    x = np.random.default_rng(0).standard_normal((40, 3)).astype(np.float32)
    y = x.sum(1, keepdims=True).astype(np.float32)
    h = fit(model, losses.MSELoss(), optim.Adam(model.parameters(), lr=1e-2), (x, y), (x, y),
            epochs=3, batch_size=8, progress=False)
    assert h["train_acc"] == [None] * 3 and h["val_acc"] == [None] * 3
    assert h["train_loss"][-1] < h["train_loss"][0]


@pytest.mark.parametrize("kw, err, match", [
    (dict(epochs=-1), ValueError, "epochs must be a non-negative integer"),
    (dict(batch_size=0), ValueError, "batch_size must be a positive integer"),
    (dict(scheduler_interval="month"), ValueError, "scheduler_interval"),
    (dict(clip_grad_norm=-1.0), ValueError, "clip_grad_norm"),
    (dict(train=(np.zeros((4, 6), np.float32), np.zeros(3, np.int64))), ValueError,
     "same length"),
    (dict(optimizer="sgd"), TypeError, "fastmod.optim optimizer"),
    (dict(model=lambda x: x), TypeError, "fastmod Module"),
])
def test_fit_bad_arguments(kw, err, match):
    model, opt, _ = _setup()
    args = dict(model=model, loss=losses.CrossEntropyLoss(), optimizer=opt, train=_data(),
                progress=False)
    args.update(kw)
    with pytest.raises(err, match=match):
        fit(**args)


def test_resume_needs_fit_checkpoint(tmp_path):
    model, opt, sched = _setup()
    p = str(tmp_path / "plain.npz")
    fastmod.save(p, model)
    with pytest.raises(ValueError, match="holds no training state"):
        _fit(model, opt, sched, resume=p)


def test_clip_grad_norm_runs():
    model, opt, sched = _setup()
    h = _fit(model, opt, sched, epochs=1, clip_grad_norm=0.5)
    assert h.steps == 7


class _Recorder(nn.Module):
    """Wraps a model; records how fit calls backward (with need_input_grad)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x):
        return self.inner(x)

    def backward(self, dy, need_input_grad=True):
        self.calls.append(need_input_grad)
        return self.inner.backward(dy, need_input_grad=need_input_grad)


class _PlainRecorder(_Recorder):
    """A user's module with backward(dy) alone (Module adapts it to take need_input_grad)."""

    def backward(self, dy):
        self.calls.append("plain")
        return self.inner.backward(dy)


def test_fit_skips_the_input_gradient():
    """The data needs no gradient: fit asks for none (torch's default), so the first layer's
    dx is never computed -- and the result is the same as computing and dropping it."""
    model, opt, sched = _setup(dropout=0.0)
    rec = _Recorder(model)
    h1 = _fit(rec, opt, sched)
    assert rec.calls and set(rec.calls) == {False}

    model2, opt2, sched2 = _setup(dropout=0.0)
    plain = _PlainRecorder(model2)
    h2 = _fit(plain, opt2, sched2)
    assert set(plain.calls) == {"plain"}               # backward(dy) alone still works
    _assert_same_state(model, model2)
    assert h1["train_loss"] == h2["train_loss"]


def test_fit_and_evaluate_feed_token_ids_as_integers():
    """A token model (Embedding first) gets its integer ids as they are; casting them to the
    model's float dtype made every fit of a token model fail in Embedding."""
    model = fastmod.models.transformer_classifier(2, vocab_size=10, d_model=8, nhead=2,
                                                  num_layers=1, max_len=8, dropout=0.0)
    x = np.random.default_rng(0).integers(0, 10, (16, 5))
    y = (x[:, 0] > 4).astype(np.int64)
    h = fit(model, losses.CrossEntropyLoss(), optim.Adam(model.parameters(), lr=1e-2), (x, y),
            epochs=2, batch_size=8, progress=False, handle_sigint=False)
    assert len(h["train_loss"]) == 2
    loss, acc = evaluate(model, losses.CrossEntropyLoss(), (x, y))
    assert np.isfinite(loss) and 0 <= acc <= 1
    # integer pixels for a float model are still converted (no Embedding)
    mlp = fastmod.models.mlp([5, 4, 2])
    assert np.isfinite(evaluate(mlp, losses.CrossEntropyLoss(), (x, y))[0])
