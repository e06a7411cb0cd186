"""The `fastmod` command end to end, with tiny budgets: train/eval-only/resume, user data, bad
data, NaN and Ctrl-C handling, bench, help, and one run in a subprocess."""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import fastmod
from fastmod import cli, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_MODELS = cli.MODELS


def run(capsys, *argv):
    argv = list(argv)
    if argv[:1] == ["train"] and "--threads" not in argv:
        argv += ["--threads", "1"]           # tiny models: one thread is fastest (and fair on CI)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _available(name):
    attr = {"transformer": "transformer_classifier"}.get(name, name)
    return hasattr(fastmod.models, attr)


def _tiny_images(path, n=60, classes=3, seed=0, **extra):
    """A small learnable 8x8 image problem: class c lights up row 2c."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 4, size=(n, 8, 8)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, 2 * c] += 12
    np.savez(path, x=x, y=y, **extra)
    return str(path)


def _state(path):
    ck = fastmod.load(path)
    return ck.state_dict, ck.optimizer, ck.meta


# ------------------------------------------------------------------------------ help
def test_help_lists_commands_and_options(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "bench" in out
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for opt in ("--model", "--epochs", "--batch-size", "--lr", "--optimizer", "--weight-decay",
                "--threads", "--seed", "--out", "--resume", "--eval-only", "--data"):
        assert opt in out, opt
    for m in ALL_MODELS:
        assert m in out
    assert cli.main([]) == 0                      # bare `fastmod` prints the help
    assert "train" in capsys.readouterr().out


# ------------------------------------------------------------------------------ train
def test_train_eval_only_end_to_end(tmp_path, capsys):
    out_dir = str(tmp_path / "run")
    code, out, err = run(capsys, "train", "--model", "mlp", "--epochs", "2", "--threads", "1",
                         "--out", out_dir)
    assert code == 0, err
    assert "bundled UCI digits" in out and "1437 train / 360 test" in out
    assert "test accuracy" in out and "parameters" in out and "wall time" in out
    assert "epoch 2/2" in err                          # the progress bar (tqdm or plain lines)
    hist = json.load(open(os.path.join(out_dir, "history.json")))
    assert hist["config"]["model"] == "mlp" and hist["config"]["epochs"] == 2
    acc = hist["test_accuracy"]
    assert acc > 0.85 and f"{100 * acc:.2f}%" in out
    with open(os.path.join(out_dir, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    sd, opt, meta = _state(os.path.join(out_dir, "checkpoint.npz"))
    assert meta["config"]["optimizer"] == "adam" and opt is not None
    assert hist["parameters"] == sum(v.size for v in sd.values())

    code, out, err = run(capsys, "train", "--eval-only", os.path.join(out_dir, "checkpoint.npz"))
    assert code == 0, err
    assert f"test accuracy {100 * acc:.2f}%" in out


def test_default_command_trains_the_cnn(tmp_path, capsys):
    if not _available("cnn"):
        pytest.skip("fastmod.models.cnn not available yet")
    code, out, err = run(capsys, "train", "--epochs", "1", "--no-progress", "--out", str(tmp_path))
    assert code == 0, err
    assert out.startswith("fastmod train: cnn")
    assert os.path.exists(tmp_path / "checkpoint.npz")


def test_resume_equals_uninterrupted(tmp_path, capsys):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    common = ["--model", "mlp", "--threads", "1", "--no-progress", "--batch-size", "200"]
    assert run(capsys, "train", *common, "--epochs", "3", "--out", a)[0] == 0
    assert run(capsys, "train", *common, "--epochs", "3", "--out", b)[0] == 0
    # interrupt b's twin run after step 10 (epoch 2 of 3, 8 steps per epoch): Ctrl-C
    c = str(tmp_path / "c")
    real_fit = training.fit

    def fit_with_ctrl_c(*args, **kw):
        kw["callback"] = lambda info: info["step"] == 10 and os.kill(os.getpid(), signal.SIGINT)
        return real_fit(*args, **kw)
    training.fit = fit_with_ctrl_c
    try:
        code, out, err = run(capsys, "train", *common, "--epochs", "3", "--out", c)
    finally:
        training.fit = real_fit
    assert code == 130
    assert "interrupted at step 10 (epoch 2)" in err
    assert f"fastmod train --resume {os.path.join(c, 'checkpoint.npz')}" in err
    code, out, err = run(capsys, "train", "--resume", os.path.join(c, "checkpoint.npz"),
                         "--threads", "1", "--no-progress")
    assert code == 0, err
    assert "resuming from" in out
    for ref in (a, b, c):
        sd, opt, _ = _state(os.path.join(ref, "checkpoint.npz"))
        sd_a, opt_a, _ = _state(os.path.join(a, "checkpoint.npz"))
        for k in sd_a:
            np.testing.assert_array_equal(sd[k], sd_a[k], err_msg=f"{ref}: {k}")
        for i in opt_a["state"]:
            for k, v in opt_a["state"][i].items():
                np.testing.assert_array_equal(opt["state"][i][k], v)
    ha = json.load(open(os.path.join(a, "history.json")))["history"]
    hc = json.load(open(os.path.join(c, "history.json")))["history"]
    assert ha["step_loss"] == hc["step_loss"] and ha["val_acc"] == hc["val_acc"]


def test_resume_can_extend_and_ignores_other_settings(tmp_path, capsys):
    d = str(tmp_path / "r")
    assert run(capsys, "train", "--model", "mlp", "--epochs", "1", "--no-progress", "--out", d)[0] == 0
    ck = os.path.join(d, "checkpoint.npz")
    before = _state(ck)[0]
    code, out, err = run(capsys, "train", "--resume", ck, "--epochs", "2", "--lr", "0.5",
                         "--no-progress")
    assert code == 0, err
    assert "ignoring --lr" in err and "after 1 of 2 epochs" in out
    h = json.load(open(os.path.join(d, "history.json")))["history"]
    assert h["epoch"] == [1, 2]
    assert abs(h["lr"][-1]) < 1e-12                  # the cosine, stretched, ends at 0 ...
    after = _state(ck)[0]                            # ... and epoch 2 did train
    assert any(not np.array_equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------ user data
@pytest.mark.parametrize("model", ALL_MODELS)
def test_every_model_on_user_npz(tmp_path, capsys, model):
    if not _available(model):
        pytest.skip(f"fastmod.models for {model} not available yet")
    data = _tiny_images(tmp_path / "tiny.npz", n=40)
    code, out, err = run(capsys, "train", "--model", model, "--data", data, "--epochs", "1",
                         "--batch-size", "16", "--no-progress", "--out", str(tmp_path / model))
    assert code == 0, err
    assert "32 train / 8 test" in out and "3 classes" in out
    code, out, err = run(capsys, "train", "--eval-only", str(tmp_path / model / "checkpoint.npz"))
    assert code == 0, err
    assert "test accuracy" in out


def test_user_idx_directory_with_test_split(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split, n in (("train", 50), ("t10k", 20)):
        y = rng.integers(0, 2, n).astype(np.uint8)
        x = rng.integers(0, 50, (n, 6, 6)).astype(np.uint8)
        x[y == 1, :3] += 200
        fastmod.data.write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", x)
        fastmod.data.write_idx(tmp_path / f"{split}-labels-idx1-ubyte", y)
    code, out, err = run(capsys, "train", "--model", "mlp", "--data", str(tmp_path), "--epochs",
                         "3", "--no-progress", "--out", str(tmp_path / "run"))
    assert code == 0, err
    assert "50 train / 20 test samples (the files' own train/test sets), 2 classes" in out


@pytest.mark.parametrize("arrays, problem", [
    (dict(x=np.zeros((10, 8, 8)), y=np.zeros(9, int)), "x has 10 samples"),
    (dict(x=np.zeros((10, 8, 8)), y=np.arange(10) - 1), "label -1 of sample 0 is out of range"),
    (dict(x=np.zeros(10), y=np.zeros(10, int)), r"x must have shape \(N, features...\)"),
    (dict(x=np.zeros((10, 8, 8)), y=np.zeros((10, 2), int)), r"y must be class labels"),
    (dict(images=np.zeros((10, 8, 8))), "expected arrays 'x' and 'y'"),
])
def test_bad_user_data_is_refused(tmp_path, capsys, arrays, problem):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    code, out, err = run(capsys, "train", "--model", "mlp", "--data", str(p), "--out",
                         str(tmp_path / "run"))
    assert code == 1
    assert err.startswith(f"fastmod train: error: {p}")
    assert problem.replace("\\", "") in err or __import__("re").search(problem, err)
    assert not os.path.exists(tmp_path / "run" / "checkpoint.npz")


def test_corrupt_idx_is_refused(tmp_path, capsys):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00\x00\x00\x05")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05" + bytes(5))
    code, _, err = run(capsys, "train", "--model", "mlp", "--data", str(tmp_path))
    assert code == 1
    assert "train-images-idx3-ubyte: corrupt IDX header" in err


def test_eval_only_on_other_data(tmp_path, capsys):
    d = str(tmp_path / "run")
    assert run(capsys, "train", "--model", "mlp", "--epochs", "1", "--no-progress", "--out", d)[0] == 0
    ck = os.path.join(d, "checkpoint.npz")
    x, y = fastmod.data.load_digits()
    np.savez(tmp_path / "same.npz", x_train=x[:10], y_train=y[:10], x_test=x[-50:], y_test=y[-50:])
    code, out, err = run(capsys, "train", "--eval-only", ck, "--data", str(tmp_path / "same.npz"))
    assert code == 0, err
    assert "50 test samples" in out
    np.savez(tmp_path / "big.npz", x=np.zeros((20, 9, 9)), y=np.arange(20) % 3)
    code, _, err = run(capsys, "train", "--eval-only", ck, "--data", str(tmp_path / "big.npz"))
    assert code == 1 and "samples have shape (9, 9), but the checkpoint's model was trained on (8, 8)" in err
    np.savez(tmp_path / "many.npz", x=np.zeros((20, 8, 8)), y=np.arange(20))
    code, _, err = run(capsys, "train", "--eval-only", ck, "--data", str(tmp_path / "many.npz"))
    assert code == 1 and "label 19 is out of range for the checkpoint's model, which has 10 classes" in err


def test_transformer_needs_images(tmp_path, capsys):
    p = tmp_path / "flat.npz"
    np.savez(p, x=np.zeros((10, 5)), y=np.arange(10) % 2)
    code, _, err = run(capsys, "train", "--model", "transformer", "--data", str(p))
    assert code == 1 and "reads each image's rows as tokens" in err


def test_missing_paths(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--data", str(tmp_path / "nope.npz"))
    assert code == 1 and "no such file or directory" in err
    code, _, err = run(capsys, "train", "--eval-only", str(tmp_path / "nope.npz"))
    assert code == 1 and "nope.npz" in err
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a checkpoint")
    code, _, err = run(capsys, "train", "--resume", str(junk))
    assert code == 1 and "junk.npz" in err
    code, _, err = run(capsys, "train", "--epochs", "0")
    assert code == 1 and "--epochs must be a positive integer" in err


# ------------------------------------------------------------------------------ robustness
def test_nan_loss_stops_with_step_and_exit_code(tmp_path, capsys):
    code, out, err = run(capsys, "train", "--model", "mlp", "--optimizer", "sgd", "--lr", "1e30",
                         "--epochs", "2", "--no-progress", "--out", str(tmp_path))
    assert code == 1
    assert "fastmod train: error:" in err and "at step" in err and "training stopped" in err
    assert not os.path.exists(tmp_path / "checkpoint.npz")


def test_plot_note_without_matplotlib(monkeypatch, tmp_path, capsys):
    import builtins
    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_mpl)
    h = training.History()
    assert cli.write_plot(h, str(tmp_path / "c.png"), "t") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matplotlib is not installed" in err


# ------------------------------------------------------------------------------ bench, processes
def test_bench_without_source_tree(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "_compare_script", lambda: str(tmp_path / "nope" / "compare.py"))
    code, out, _ = run(capsys, "bench")
    assert code == 1 and "bench/compare.py" in out and "source" in out


def test_bench_finds_compare_script():
    assert os.path.isfile(cli._compare_script()) == os.path.isdir(os.path.join(ROOT, "bench"))


def test_python_dash_m_fastmod(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FASTMOD_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "fastmod", "train", "--model", "mlp", "--epochs", "1",
                        "--no-progress", "--out", str(tmp_path)], capture_output=True, text=True,
                       env=env, cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    exe = shutil.which("fastmod")
    if exe:                                       # the console script, when installed
        r = subprocess.run([exe, "--help"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0 and "train" in r.stdout
