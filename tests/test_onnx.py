"""fastmod.onnx: export of every row of tests/module_table.py (checked by onnx's full checker,
run in ONNX Runtime against fastmod's eval output at rtol 1e-5 of the result's scale, at the
example's batch size and another one), float64 export, import of what export writes and of
what torch.onnx.export writes for the same torch modules (outputs equal to ONNX Runtime's on
the same file, one SGD step lowers the loss), and every unsupported module / operator named."""
import io
import subprocess
import sys

import numpy as np
import pytest

import fastmod
from fastmod import nn
from module_table import CASES
from reference import assert_close

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
import fastmod.onnx  # noqa: E402

RNG_SEED = 0


def _session(proto):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1         # the machine is shared; parity needs no speed
    so.log_severity_level = 3
    return ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _ort(proto, xs):
    s = _session(proto)
    return s.run(None, {i.name: x for i, x in zip(s.get_inputs(), xs)})


def _eval(m, xs, kwargs=None):
    """fastmod's eval outputs as a list (the module's own mode restored)."""
    modes = [(mm, mm.training) for _, mm in m.named_modules(remove_duplicate=False)]
    m.eval()
    try:
        with fastmod.no_grad():
            out = m(*xs, **(kwargs or {}))
    finally:
        for mm, mode in modes:
            mm.__dict__["training"] = mode
    return list(out) if isinstance(out, tuple) else [out]


def _compare(got, want, dtype=np.float32):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        if w.dtype.kind in "iu":
            np.testing.assert_array_equal(g, w)
        else:
            assert g.dtype == w.dtype
            assert_close(g, w, dtype, parity=False)


def _bigger_batch(xs, axis):
    """The inputs with a batch of 2N + 1 (rows repeated and reversed) on the batch axis."""
    out = []
    for x in xs:
        first = np.take(x, [0], axis=axis)
        out.append(np.concatenate([x, np.flip(x, axis=axis), first], axis=axis))
    return out


def _modes(m):
    return [mm.training for _, mm in m.named_modules(remove_duplicate=False)]


# ------------------------------------------------------------------------------ export
@pytest.mark.parametrize("name", sorted(CASES))
def test_export_runs_in_onnxruntime(name, tmp_path):
    case = CASES[name]
    if case.inputs is None:
        pytest.skip("no forward (a container such as ModuleList): there is no computation to export")
    m = case.make()
    xs = list(case.inputs(np.float32, np.random.default_rng(RNG_SEED)))
    before = _modes(m)
    path = tmp_path / "model.onnx"
    proto = fastmod.onnx.export(m, xs[0] if len(xs) == 1 else tuple(xs), str(path),
                                kwargs=case.kwargs)
    assert _modes(m) == before                      # train/eval state restored
    onnx.checker.check_model(str(path), full_check=True)
    assert onnx.load(str(path)).graph == proto.graph
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)      # no custom ops
    assert proto.opset_import[0].version >= 17
    inits = {t.name for t in proto.graph.initializer}
    sd = {k for k in m.state_dict() if not k.endswith("num_batches_tracked")}
    assert sd <= inits, f"state_dict entries missing as initializers: {sorted(sd - inits)}"
    _compare(_ort(proto, xs), _eval(m, xs, case.kwargs))
    # the batch dim is symbolic: another batch size runs and matches too
    axis = fastmod.onnx.batch_axis(m)
    assert proto.graph.input[0].type.tensor_type.shape.dim[axis].dim_param == "N"
    xs2 = _bigger_batch(xs, axis)
    _compare(_ort(proto, xs2), _eval(m, xs2, case.kwargs))


def test_float64_is_exported_as_float64():
    m = fastmod.models.mlp([4, 6, 3], activation="tanh", dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((5, 4))
    proto = fastmod.onnx.export(m, x)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert {t.data_type for t in proto.graph.initializer} == {onnx.TensorProto.DOUBLE}
    (got,) = _ort(proto, [x])
    assert got.dtype == np.float64
    assert_close(got, _eval(m, [x])[0], np.float64, parity=False)


def test_float64_conv_model_exports_as_float32_on_request():
    # a valid float64 file (ONNX defines Conv for double) that ONNX Runtime's CPU provider
    # cannot run; dtype=np.float32 exports a converted copy instead
    m = fastmod.models.cnn(dtype=np.float64)
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8))
    p64 = fastmod.onnx.export(m, x)
    onnx.checker.check_model(p64, full_check=True)
    assert p64.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    fm = fastmod.onnx.load(p64)                     # and it comes back as float64
    assert fm[0].weight.dtype == np.float64
    assert_close(_eval(fm, [x])[0], _eval(m, [x])[0], np.float64, parity=False)
    p32 = fastmod.onnx.export(m, x, dtype=np.float32)
    assert m[0].weight.dtype == np.float64          # the model itself is not converted
    (got,) = _ort(p32, [x.astype(np.float32)])
    assert got.dtype == np.float32
    assert_close(got, _eval(m, [x])[0].astype(np.float32), np.float32)


def test_names_and_path_none():
    m = nn.Sequential(nn.Linear(3, 2))
    proto = fastmod.onnx.export(m, np.zeros((1, 3), np.float32), input_names=["x"],
                                output_names=["logits"])
    assert [i.name for i in proto.graph.input] == ["x"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert [d.dim_param or d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim] \
        == ["N", 2]
    with pytest.raises(ValueError, match="expected 1 distinct non-empty output names"):
        fastmod.onnx.export(m, np.zeros((1, 3), np.float32), output_names=["a", "b"])


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


class Halver(nn.Module):
    def forward(self, x):
        return x / 2


def test_export_names_every_module_without_emitter():
    m = nn.Sequential(nn.Linear(3, 3), Doubler(), nn.Residual(nn.Sequential(Halver())))
    with pytest.raises(TypeError) as e:
        fastmod.onnx.export(m, np.zeros((2, 3), np.float32))
    msg = str(e.value)
    assert "2 parts of the model cannot be exported" in msg
    assert f"model.1 ({__name__}.Doubler) has no ONNX emitter" in msg
    assert f"model.2.fn.0 ({__name__}.Halver) has no ONNX emitter" in msg


def test_export_names_options_onnx_cannot_express():
    m = nn.Sequential(nn.Embedding(10, 4, max_norm=1.0))
    with pytest.raises(ValueError, match=r"model\.0 \(fastmod\.nn\.Embedding\) max_norm"):
        fastmod.onnx.export(m, np.zeros((2, 3), np.int64))
    mha = nn.MultiheadAttention(8, 2)
    x = np.zeros((2, 5, 8), np.float32)
    with pytest.raises(ValueError, match=r"model \(fastmod\.nn\.MultiheadAttention\) is exported "
                                         "without masks"):
        fastmod.onnx.export(mha, x, kwargs={"attn_mask": np.zeros((5, 5), bool)})


def test_export_wrong_input_is_fastmods_own_error():
    m = nn.Sequential(nn.Conv2d(3, 4, 3))
    x = np.zeros((2, 4, 8, 8), np.float32)
    with pytest.raises(ValueError) as ours:
        m(x)
    with pytest.raises(ValueError) as e:
        fastmod.onnx.export(m, x)
    assert str(e.value) == str(ours.value)
    with pytest.raises(TypeError, match="expected example_input to be a numpy.ndarray"):
        fastmod.onnx.export(m, [[1.0]])
    with pytest.raises(TypeError, match="expected a fastmod.nn.Module"):
        fastmod.onnx.export(object(), x)


def test_import_fastmod_does_not_import_onnx():
    code = "import sys, fastmod; assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_onnx_is_a_clear_import_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r'pip install "fastmod\[onnx\]"'):
        fastmod.onnx.export(nn.ReLU(), np.zeros((1, 2), np.float32))
    with pytest.raises(ImportError, match=r'pip install "fastmod\[onnx\]"'):
        fastmod.onnx.load("model.onnx")


# ------------------------------------------------------------------------------ import
# rows whose export load() reads back (the others use graph pieces with no fastmod module of
# their own, see test_load_names_every_unsupported_node)
ROUND_TRIP = ["Linear", "Linear-3d-nobias", "Sequential", "Residual", "Parallel-sum",
              "Parallel-concat", "ResidualBlock", "ResidualBlock-gelu", "GELU-tanh", "Softmax",
              "LogSoftmax", "Dropout", "Embedding", "MultiheadAttention",
              "TransformerEncoderLayer", "TransformerEncoder", "Conv1d", "Conv2d",
              "Conv2d-reflect-groups", "MaxPool2d", "AvgPool1d", "GlobalAvgPool", "BNResBlock",
              "DenseBlock", "LayerNorm", "LayerNorm-S", "BatchNorm1d", "BatchNorm2d", "GroupNorm",
              "models.mlp", "models.resnet_s", "models.cnn", "models.bn_resnet", "models.densenet"]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_round_trip_fastmod(name):
    case = CASES[name]
    m = case.make()
    (x,) = case.inputs(np.float32, np.random.default_rng(RNG_SEED))
    proto = fastmod.onnx.export(m, x)
    fm = fastmod.onnx.load(proto)
    assert not fm.training
    # as many weights, or more: load makes every norm affine (LN-S's unit scale trainable)
    assert fm.num_parameters() >= m.num_parameters()
    x2 = _bigger_batch([x], 0)[0]
    _compare(_eval(fm, [x2]), _ort(proto, [x2]))
    _compare(_eval(fm, [x2]), _eval(m, [x2]))


def _sgd_step_lowers_loss(fm, x):
    """One SGD step on a regression loss lowers it: the imported model trains."""
    fm.train()
    y = np.random.default_rng(3).standard_normal(fm(x).shape).astype(np.float32)
    crit = fastmod.losses.MSELoss()
    opt = fastmod.optim.SGD(fm.parameters(), lr=0.05)
    loss0 = crit(fm(x), y)
    fm.backward(crit.backward())
    opt.step()
    assert np.isfinite(loss0) and crit(fm(x), y) < loss0


@pytest.mark.parametrize("name", ["models.mlp", "models.cnn", "TransformerEncoderLayer"])
def test_imported_model_fine_tunes(name):
    case = CASES[name]
    m = case.make().eval()
    (x,) = case.inputs(np.float32, np.random.default_rng(RNG_SEED))
    fm = fastmod.onnx.load(fastmod.onnx.export(m, x))
    _sgd_step_lowers_loss(fm, x)


def test_load_from_path_and_dtype(tmp_path):
    m = fastmod.models.mlp([4, 5, 2])
    x = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    fastmod.onnx.export(m, x, str(tmp_path / "m.onnx"))
    fm = fastmod.onnx.load(tmp_path / "m.onnx", dtype=np.float64)
    assert fm[0].weight.dtype == np.float64
    assert_close(_eval(fm, [x.astype(np.float64)])[0], _eval(m, [x])[0], np.float32)
    assert list(fm.state_dict()) == list(m.state_dict())     # same Sequential layout


def test_load_names_every_unsupported_node():
    # the token classifier's positional embedding, padding mask and token mean have no
    # fastmod module of their own: every such node is listed
    case = CASES["models.transformer_classifier"]
    (x,) = case.inputs(np.float32, np.random.default_rng(RNG_SEED))
    proto = fastmod.onnx.export(case.make(), x)
    with pytest.raises(TypeError) as e:
        fastmod.onnx.load(proto)
    msg = str(e.value)
    bad = [n for n in proto.graph.node if n.op_type in ("Equal", "Where", "ReduceMin", "Not",
                                                         "ReduceSum", "Max")]
    assert f"{len(bad)} node(s) use operators with no fastmod module" in msg
    for n in bad:
        assert f"{n.name} ({n.op_type})" in msg


def test_load_bad_arguments_and_structures():
    helper = onnx.helper
    with pytest.raises(TypeError, match="expected a path or an onnx.ModelProto"):
        fastmod.onnx.load(3)
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 3])
    # two branches meeting in a Mul: no fastmod module computes that
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="r"),
             helper.make_node("Tanh", ["x"], ["b"], name="t"),
             helper.make_node("Mul", ["a", "b"], ["y"], name="product")]
    g = helper.make_graph(nodes, "g", [x], [y])
    with pytest.raises(TypeError, match=r"'product' \(Mul\): branches meeting in Mul"):
        fastmod.onnx.load(helper.make_model(g))
    z = helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, ["N", 3])
    g2 = helper.make_graph([helper.make_node("Relu", ["x"], ["y"]),
                            helper.make_node("Tanh", ["x"], ["z"])], "g", [x], [y, z])
    with pytest.raises(TypeError, match="expected a graph with one input and one output"):
        fastmod.onnx.load(helper.make_model(g2))


# ------------------------------------------------------------------------------ from torch
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def _torch_cases(torch):
    tnn = torch.nn

    class MHA(tnn.Module):              # torch's MultiheadAttention returns a tuple
        def __init__(self):
            super().__init__()
            self.attn = tnn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            return self.attn(x, x, x)[0]

    return {
        "mlp": (lambda: tnn.Sequential(tnn.Linear(4, 8), tnn.ReLU(), tnn.Linear(8, 3)), (3, 4)),
        "cnn-bn-pool": (lambda: tnn.Sequential(
            tnn.Conv2d(3, 4, 3, padding=1), tnn.BatchNorm2d(4), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(4, 4, 3, padding=1), tnn.ReLU(), tnn.AvgPool2d(2), tnn.Flatten(),
            tnn.Linear(4, 2)), (2, 3, 4, 4)),
        "mlp-bn1d-dropout": (lambda: tnn.Sequential(
            tnn.Linear(4, 6), tnn.BatchNorm1d(6), tnn.Tanh(), tnn.Dropout(0.2), tnn.Linear(6, 2),
            tnn.LogSoftmax(-1)), (3, 4)),
        "layernorm-gelu": (lambda: tnn.Sequential(
            tnn.Linear(4, 6), tnn.LayerNorm(6), tnn.GELU(), tnn.Linear(6, 2), tnn.Softmax(-1)),
            (2, 5, 4)),
        "groupnorm-cnn": (lambda: tnn.Sequential(
            tnn.Conv2d(3, 4, 3, padding=1), tnn.GroupNorm(2, 4), tnn.ReLU(),
            tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(4, 2)), (2, 3, 4, 4)),
        "conv1d-reflect": (lambda: tnn.Sequential(
            tnn.Conv1d(3, 4, 3, padding=1, padding_mode="reflect"), tnn.Sigmoid(),
            tnn.MaxPool1d(2), tnn.Flatten()), (2, 3, 8)),
        "multihead-attention": (MHA, (2, 5, 8)),
    }


def _torch_export(torch, tm, shape, dynamo=False):
    tm.eval()
    x = torch.randn(*shape)
    f = io.BytesIO()
    if dynamo:
        prog = torch.onnx.export(tm, (x,), dynamo=True, opset_version=18, input_names=["x"],
                                 dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
        return prog.model_proto
    # no constant folding: BatchNormalization stays a node (folding merges it into the Conv)
    torch.onnx.export(tm, (x,), f, dynamo=False, opset_version=17, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}}, do_constant_folding=False)
    return onnx.load_from_string(f.getvalue())


def _check_torch_round_trip(torch, tm, proto, shape):
    fm = fastmod.onnx.load(proto)
    x = np.random.default_rng(5).standard_normal((shape[0] + 2,) + shape[1:]).astype(np.float32)
    (want,) = _ort(proto, [x])
    _compare(_eval(fm, [x]), [want])
    with torch.no_grad():
        assert_close(_eval(fm, [x])[0], tm(torch.from_numpy(x)).numpy(), np.float32)
    _sgd_step_lowers_loss(fm, x)
    return fm


@pytest.mark.parametrize("name", ["mlp", "cnn-bn-pool", "mlp-bn1d-dropout", "layernorm-gelu",
                                  "groupnorm-cnn", "conv1d-reflect", "multihead-attention"])
def test_round_trip_from_torch(name, torch):
    import warnings
    make, shape = _torch_cases(torch)[name]
    torch.manual_seed(0)
    tm = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the TorchScript exporter's deprecation notice
        proto = _torch_export(torch, tm, shape)
    fm = _check_torch_round_trip(torch, tm, proto, shape)
    expected = {"cnn-bn-pool": nn.BatchNorm2d, "mlp-bn1d-dropout": nn.BatchNorm1d,
                "layernorm-gelu": nn.GELU, "groupnorm-cnn": nn.GroupNorm,
                "multihead-attention": nn.MultiheadAttention}.get(name)
    if expected is not None:
        assert any(type(m) is expected for m in fm.modules())


def test_transformer_encoder_from_torch(torch):
    # torch 2.13's TorchScript exporter cannot trace TransformerEncoderLayer (its
    # scaled_dot_product_attention call gets is_causal as a tensor); the dynamo exporter can
    pytest.importorskip("onnxscript")
    import contextlib
    import os
    tnn = torch.nn
    torch.manual_seed(0)
    layer = tnn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, activation="gelu")
    tm = tnn.TransformerEncoder(layer, 2, norm=tnn.LayerNorm(8), enable_nested_tensor=False)
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        proto = _torch_export(torch, tm, (2, 5, 8), dynamo=True)
    fm = _check_torch_round_trip(torch, tm, proto, (2, 5, 8))
    assert sum(type(m) is nn.MultiheadAttention for m in fm.modules()) == 2


def test_readme_example_runs(tmp_path, monkeypatch):
    import os
    import re
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = text.split("## ONNX export and import", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(code, "README.md ONNX export and import", "exec"), ns)
    assert (tmp_path / "cnn.onnx").exists() and ns["y"].shape == (3, 10)


def test_softmax_before_a_linear_is_not_attention():
    m = nn.Sequential(nn.Linear(4, 6), nn.Softmax(-1), nn.Linear(6, 3))
    x = np.random.default_rng(6).standard_normal((2, 5, 4)).astype(np.float32)
    proto = fastmod.onnx.export(m, x)
    fm = fastmod.onnx.load(proto)
    assert [type(c) for c in fm] == [nn.Linear, nn.Softmax, nn.Linear]
    _compare(_eval(fm, [x]), _ort(proto, [x]))
