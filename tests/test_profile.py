"""fastmod.profile: a row for every leaf (MLP, CNN, transformer, the blocks whose containers call
their convolutions directly), exact GEMM/conv FLOP counts, finite percentages, bytes kept for
backward, the model left exactly as it was (outputs, gradients, buffers, generators, saved
state, no wrappers left, also after an exception), the Chrome trace, `fastmod train --profile`."""
import io
import json
import math

import numpy as np
import pytest

import fastmod
from fastmod import cli, models, nn
from fastmod.profiler import fma_peak_gflops

WRAPPED = ("forward", "backward", "_forward", "_backward", "_forward_into", "_backward_into")


def _no_wrappers(model):
    for m in model.modules():
        for meth in WRAPPED:
            assert meth not in m.__dict__, (type(m).__name__, meth)
        assert type(m).forward is m.forward.__func__
        assert type(m).backward is m.backward.__func__


def _rows(result):
    return {r["name"]: r for r in result.rows}


def _mlp():
    fastmod.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 5))


def _data(shape, classes=5, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(dtype), rng.integers(0, classes, shape[0])


# ------------------------------------------------------------------------------ rows and FLOPs
def test_mlp_rows_flops_and_saved_bytes():
    model = _mlp()
    x, y = _data((8, 20))
    r = fastmod.profile(model, x, y, repeats=2)
    rows = _rows(r)
    assert set(rows) == {"0", "1", "2", "3", "4", "(loss)", "(containers)"}
    assert rows["0"]["type"] == "Linear" and rows["(loss)"]["type"] == "CrossEntropyLoss"
    for name, (i, o) in {"0": (20, 32), "2": (32, 16), "4": (16, 5)}.items():
        f = 2 * 8 * i * o
        assert rows[name]["infer_flops"] == f and rows[name]["fwd_flops"] == f
        # backward: dW and dx, except the first layer's dx (the input needs no gradient)
        assert rows[name]["bwd_flops"] == (f if name == "0" else 2 * f)
        assert rows[name]["train_flops"] == rows[name]["fwd_flops"] + rows[name]["bwd_flops"]
        for k in ("train_gflops_per_s", "train_peak_pct", "infer_gflops_per_s", "infer_peak_pct"):
            assert math.isfinite(rows[name][k]) and rows[name][k] > 0, (name, k)
    for name in ("1", "3"):
        assert rows[name]["train_flops"] == 0 and rows[name]["train_peak_pct"] is None
    # the first Linear keeps its input (8, 20) float32 for backward; Tanh its output (8, 16)
    assert rows["0"]["saved_bytes"] == x.nbytes
    assert rows["3"]["saved_bytes"] == 8 * 16 * 4
    t = r.totals
    assert t["train_flops"] == sum(rows[n]["train_flops"] for n in ("0", "2", "4"))
    assert t["saved_bytes"] >= rows["0"]["saved_bytes"] and t["step_peak_bytes"] > 0
    assert t["infer_peak_bytes"] > 0 and t["peak_gflops"] > 0
    for k in ("step_ms", "step_ms_uninstrumented", "infer_ms", "infer_ms_uninstrumented"):
        assert t[k] > 0 and math.isfinite(t[k])
    # slowest first (by train time: forward + backward)
    times = [row["fwd_ms"] + row["bwd_ms"] for row in r.rows]
    assert times == sorted(times, reverse=True)
    json.dumps(r.to_dict())                                     # plain values
    text = str(r)
    for name in ("Linear", "ReLU", "Tanh", "total", "GFLOP/s", "% peak", "tracemalloc"):
        assert name in text


def test_cnn_conv_flops_exact():
    fastmod.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 6, (3, 2), stride=2, groups=2), nn.BatchNorm2d(6), nn.GELU(),
                          nn.Identity(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 5))
    x, y = _data((4, 3, 10, 10))
    r = fastmod.profile(model, x, y, repeats=1)
    rows = _rows(r)
    leaves = {n for n, m in model.named_modules() if not list(m.children())}
    assert leaves <= set(rows)
    # Conv: 2 * N * OC * (C / groups) * k * OH * OW
    c0 = 2 * 4 * 8 * 3 * 9 * 10 * 10
    c3 = 2 * 4 * 6 * (8 // 2) * (3 * 2) * 2 * 2                # 5x5 -> OH = 2, OW = 2
    assert rows["0"]["fwd_flops"] == c0 and rows["0"]["bwd_flops"] == c0   # first: no dx
    assert rows["3"]["fwd_flops"] == c3 and rows["3"]["bwd_flops"] == 2 * c3
    assert rows["9"]["fwd_flops"] == 2 * 4 * 6 * 5
    assert rows["4"]["saved_bytes"] > 0 and rows["4"]["train_flops"] == 0
    # inference runs the Conv + ReLU pair as one kernel call: the ReLU is not called
    assert rows["1"]["infer_calls"] == 0 and rows["0"]["infer_calls"] == 1
    assert rows["0"]["infer_flops"] == c0


def test_conv1d_flops_and_float64_peak():
    fastmod.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(4, 6, 5, padding=2, dilation=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(6 * 12, 3)).astype(np.float64)
    x, y = _data((2, 4, 12), classes=3, dtype=np.float64)
    r = fastmod.profile(model, x, y, repeats=1)
    assert _rows(r)["0"]["fwd_flops"] == 2 * 2 * 6 * 4 * 5 * 12
    want = fma_peak_gflops(np.float32) / (1 if fastmod.get_isa() == "scalar" else 2)
    assert r.totals["peak_gflops"] == want and r.totals["dtype"] == "float64"


def test_blocks_that_call_their_convolutions_directly():
    """DenseBlock runs its convolutions through _forward_into/_backward_into, BNResBlock and
    ResidualBlock through _forward (ReLU fused): each convolution / Linear still has its row
    and its FLOPs."""
    fastmod.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.DenseBlock(4, 2, 2), nn.BNResBlock(8),
                          nn.GlobalAvgPool(), nn.ResidualBlock(8), nn.Linear(8, 3))
    x, y = _data((2, 1, 6, 6), classes=3)
    r = fastmod.profile(model, x, y, repeats=1)
    rows = _rows(r)
    for i in range(2):
        row = rows[f"1.layers.{i}"]
        f = 2 * 2 * 2 * (4 + 2 * i) * 9 * 36
        assert row["fwd_flops"] == f and row["bwd_flops"] == 2 * f and row["fwd_calls"] == 1
        assert row["infer_flops"] == f
    for name in ("2.conv1", "2.conv2"):
        assert rows[name]["fwd_flops"] == 2 * 2 * 8 * 8 * 9 * 36
    for name in ("4.mm1", "4.mm2"):
        assert rows[name]["fwd_flops"] == 2 * 2 * 8 * 8 and rows[name]["bwd_flops"] == 4 * 2 * 8 * 8
    assert "1" not in rows and "(containers)" in rows           # DenseBlock: a container
    _no_wrappers(model)


def test_transformer_rows_and_attention_flops():
    fastmod.manual_seed(0)
    N, T, E, H, F = 2, 6, 16, 4, 32
    model = models.transformer_classifier(3, vocab_size=20, d_model=E, nhead=H, num_layers=2,
                                          dim_feedforward=F, max_len=T)
    x = np.random.default_rng(0).integers(0, 20, (N, T))
    y = np.array([0, 2])
    r = fastmod.profile(model, x, y, repeats=1)
    rows = _rows(r)
    leaves = {n for n, m in model.named_modules() if not list(m.children())}
    assert leaves <= set(rows)
    attn = rows["encoder.layers.0.self_attn"] if "encoder.layers.0.self_attn" in rows else \
        next(v for k, v in rows.items() if k.endswith("layers.0.self_attn"))
    assert attn["type"] == "MultiheadAttention"
    proj, products = 2 * N * T * E * 3 * E, 2 * (2 * N * T * T * E)
    assert attn["fwd_flops"] == proj + products and attn["bwd_flops"] == 2 * (proj + products)
    lin1 = next(v for k, v in rows.items() if k.endswith("layers.1.linear1"))
    assert lin1["fwd_flops"] == 2 * N * T * E * F
    for row in r.rows:
        if row["train_flops"]:
            assert math.isfinite(row["train_peak_pct"]) and row["train_peak_pct"] > 0
    _no_wrappers(model)


def test_inference_only_and_tuple_of_inputs():
    fastmod.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, kdim=5, vdim=3)
    q = np.ones((2, 4, 8), np.float32)
    k = np.ones((2, 3, 5), np.float32)
    v = np.ones((2, 3, 3), np.float32)
    r = fastmod.profile(mha, (q, k, v), repeats=1)
    assert not r.totals["train"] and r.totals["step_ms"] is None
    row = _rows(r)["(model)"]
    assert row["infer_flops"] == 2 * 2 * 4 * 8 * 8 + 2 * 2 * 3 * 8 * (5 + 3) + 4 * 2 * 4 * 3 * 8
    assert row["saved_bytes"] is None and "fwd ms" not in str(r)
    assert _rows(r)["out_proj"]["infer_flops"] == 2 * 2 * 4 * 8 * 8


def test_regression_target_uses_mse():
    model = _mlp()
    x, _ = _data((4, 20))
    r = fastmod.profile(model, x, np.zeros((4, 5), np.float32), repeats=1)
    assert r.totals["loss"] == "MSELoss"


# ------------------------------------------------------------------------------ nothing changes
def _stateful_model():
    fastmod.manual_seed(3)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Dropout(0.3), nn.Flatten(), nn.Linear(4 * 25, 3))


def test_model_unchanged_by_profiling():
    x, y = _data((3, 2, 5, 5), classes=3)
    dy = np.random.default_rng(1).standard_normal((3, 3)).astype(np.float32)
    # reference: no profile
    ref = _stateful_model()
    fastmod.manual_seed(11)
    y_ref = ref(x)
    ref.backward(dy)
    y_ref2 = ref(x)
    # the same, with a profile between a forward and its backward
    model = _stateful_model()
    fastmod.manual_seed(11)
    y_a = model(x)                                  # training mode, dropout drawn
    before = {k: v.copy() for k, v in model.state_dict().items()}
    mode = [m.training for m in model.modules()]
    model[3].eval()                                 # per-module modes survive too
    r = fastmod.profile(model, x, y, repeats=2)
    assert len(r.rows) > 0
    _no_wrappers(model)
    assert [m.training for m in model.modules()] == mode[:4] + [False] + mode[5:]
    model[3].train()
    for k, v in model.state_dict().items():         # BatchNorm's statistics, weights
        np.testing.assert_array_equal(v, before[k], err_msg=k)
    model.backward(dy)                              # the forward before the profile
    np.testing.assert_array_equal(y_a, y_ref)
    for (k, p), (_, q) in zip(model.named_parameters(), ref.named_parameters()):
        np.testing.assert_array_equal(p.grad, q.grad, err_msg=k)
    # the generator continues where it was: the next dropout masks are the same
    np.testing.assert_array_equal(model(x), y_ref2)


def test_gradients_kept():
    model = _mlp()
    x, y = _data((4, 20))
    crit = fastmod.losses.CrossEntropyLoss()
    crit(model(x), y)
    model.backward(crit.backward())
    grads = {k: p.grad.copy() for k, p in model.named_parameters()}
    fastmod.profile(model, x, y, loss=crit, repeats=1)
    for k, p in model.named_parameters():
        np.testing.assert_array_equal(p.grad, grads[k], err_msg=k)
    model.zero_grad()                               # zeroed before: still zero after
    fastmod.profile(model, x, y, repeats=1)
    assert not any(p.has_grad() for p in model.parameters())


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.fail = False

    def forward(self, x):
        y = self.lin(x)
        if self.fail and fastmod.is_grad_enabled():
            raise RuntimeError("boom in forward")
        return y

    def backward(self, dy, need_input_grad=True):
        return self.lin.backward(dy, need_input_grad)


def test_restored_after_an_exception():
    fastmod.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Exploding(), nn.ReLU())
    model.eval()
    model[1].fail = True
    x = np.ones((2, 4), np.float32)
    with pytest.raises(RuntimeError, match="boom in forward"):
        fastmod.profile(model, x, np.array([0, 1]), repeats=1)
    _no_wrappers(model)
    assert not any(m.training for m in model.modules())
    model[1].fail = False
    with fastmod.no_grad():
        y = model(x)
    assert y.shape == (2, 4)
    assert fastmod.is_grad_enabled()


def test_bad_arguments():
    model = _mlp()
    x, y = _data((2, 20))
    with pytest.raises(ValueError, match="repeats must be a positive integer"):
        fastmod.profile(model, x, y, repeats=0)
    with pytest.raises(TypeError, match="expected a fastmod Module"):
        fastmod.profile(lambda a: a, x)


# ------------------------------------------------------------------------------ outputs
def test_trace_and_file(tmp_path):
    model = _mlp()
    x, y = _data((4, 20))
    path = tmp_path / "trace.json"
    buf = io.StringIO()
    r = fastmod.profile(model, x, y, repeats=1, trace=str(path), file=buf)
    assert buf.getvalue() == str(r) + "\n"
    doc = json.loads(path.read_text())
    events = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    names = {e["name"] for e in events}
    for want in ("0 inference", "0 forward", "0 backward", "4 backward", "(model) forward",
                 "(loss) forward", "(loss) backward", "3 forward"):
        assert want in names, want
    for e in events:
        assert e["cat"] in ("inference", "forward", "backward")
        assert e["ts"] >= 0 and e["dur"] >= 0 and isinstance(e["pid"], int)
    # nesting: the model's forward spans its layers' forwards
    outer = next(e for e in events if e["name"] == "(model) forward")
    inner = next(e for e in events if e["name"] == "2 forward")
    assert outer["ts"] <= inner["ts"] and inner["ts"] + inner["dur"] <= outer["ts"] + outer["dur"] + 1e-3
    out = tmp_path / "table.txt"
    fastmod.profile(model, x, y, repeats=1, file=str(out))
    assert "fastmod.profile:" in out.read_text()


def test_cli_train_profile(tmp_path, capsys):
    code = cli.main(["train", "--model", "mlp", "--epochs", "1", "--threads", "1",
                     "--no-progress", "--out", str(tmp_path / "run"), "--profile"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "test accuracy" in out
    table = out.split("fastmod.profile:", 1)[1]
    assert "Linear" in table and "total" in table and "GFLOP/s" in table
    code = cli.main(["train", "--eval-only", str(tmp_path / "run" / "checkpoint.npz"),
                     "--threads", "1", "--profile"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "fastmod.profile:" in out


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = text.split("## Profiling", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md Profiling", "exec"), {})
    assert "fastmod.profile:" in capsys.readouterr().out
    assert json.loads((tmp_path / "step.json").read_text())["traceEvents"]


def test_flops_agree_with_the_benchmark_counts():
    """The profile's GEMM FLOPs of each reference workload = bench/workloads.py's count (an
    independent one, per GEMM shape)."""
    import importlib.util
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("bench_workloads",
                                                  os.path.join(root, "bench", "workloads.py"))
    wl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wl)
    fastmod.set_num_threads(1)
    for name, w in wl.WORKLOADS.items():
        fastmod.manual_seed(0)
        model = w.fastmod_model(nn)
        x, y = wl.make_data(w)
        train = "train" in w.modes
        t = fastmod.profile(model, x, y if train else None, repeats=1).totals
        assert t["infer_flops"] == w.flops("infer"), name
        if train:
            assert t["train_flops"] == w.flops("train"), name
