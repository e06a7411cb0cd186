"""fastmod.from_torch: every supported torch.nn module type (a table, as tests/module_table.py),
nested models (a CNN, a transformer classifier, the reference workloads of bench/workloads.py)
against torch itself: outputs, the input gradient and every parameter gradient (float32 at
rtol 1e-5 of the result's scale, float64 at 1e-10), state_dict keys and values, dtypes,
requires_grad, shared modules and parameters, train/eval state; unsupported modules and options
named, every one of them, in one error."""
import importlib.util
import os
from collections import OrderedDict

import numpy as np
import pytest

import fastmod
from fastmod import nn
from module_table import floats, tokens
from reference import assert_close

torch = pytest.importorskip("torch")
tnn = torch.nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = {np.float32: 1e-5, np.float64: 1e-10}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)            # the machine is shared; parity needs no speed
    yield
    torch.set_num_threads(n)


class TCase:
    """make() -> a torch module (float32, train mode unless made otherwise); inputs(dtype, rng)
    -> forward's arrays; call: 'mha' for torch's (q, k, v) -> (out, weights) convention."""

    def __init__(self, make, inputs, call=None, indices=False):
        self.make, self.inputs, self.call, self.indices = make, inputs, call, indices


def _mha(*a, **k):
    return lambda: tnn.MultiheadAttention(*a, **k)


def _tel(*a, **k):
    return lambda: tnn.TransformerEncoderLayer(*a, **k)


def _encoder():
    layer = tnn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, activation="gelu")
    return tnn.TransformerEncoder(layer, 2, norm=tnn.LayerNorm(8), enable_nested_tensor=False)


CASES = {
    "Linear": TCase(lambda: tnn.Linear(4, 3), floats((3, 4))),
    "Linear-3d-nobias": TCase(lambda: tnn.Linear(4, 3, bias=False), floats((2, 5, 4))),
    "ReLU": TCase(tnn.ReLU, floats((3, 7))),
    "Sigmoid": TCase(tnn.Sigmoid, floats((3, 7))),
    "Tanh": TCase(tnn.Tanh, floats((2, 3, 4))),
    "GELU": TCase(tnn.GELU, floats((3, 7))),
    "GELU-tanh": TCase(lambda: tnn.GELU(approximate="tanh"), floats((3, 7))),
    "Softmax": TCase(lambda: tnn.Softmax(dim=1), floats((3, 4, 5))),
    "LogSoftmax": TCase(lambda: tnn.LogSoftmax(dim=-1), floats((3, 7))),
    "Identity": TCase(tnn.Identity, floats((3, 7))),
    "Sequential": TCase(lambda: tnn.Sequential(tnn.Linear(4, 6), tnn.ReLU(), tnn.Linear(6, 3),
                                               tnn.Tanh()), floats((3, 4))),
    "Sequential-named-nested": TCase(
        lambda: tnn.Sequential(OrderedDict(
            [("body", tnn.Sequential(tnn.Linear(4, 6), tnn.GELU())), ("head", tnn.Linear(6, 2))])),
        floats((3, 4))),
    "LayerNorm": TCase(lambda: tnn.LayerNorm(7), floats((3, 7))),
    "LayerNorm-S": TCase(lambda: tnn.LayerNorm((2, 7), elementwise_affine=False), floats((3, 2, 7))),
    "LayerNorm-nobias-eps": TCase(lambda: tnn.LayerNorm(7, eps=1e-3, bias=False), floats((3, 7))),
    "BatchNorm1d": TCase(lambda: tnn.BatchNorm1d(3), floats((4, 3, 5))),
    "BatchNorm1d-eval": TCase(lambda: tnn.BatchNorm1d(3, momentum=0.3).eval(), floats((4, 3))),
    "BatchNorm2d": TCase(lambda: tnn.BatchNorm2d(3, eps=1e-3), floats((2, 3, 4, 4))),
    "BatchNorm2d-cumulative": TCase(lambda: tnn.BatchNorm2d(3, momentum=None), floats((2, 3, 4, 4))),
    "BatchNorm2d-stateless": TCase(lambda: tnn.BatchNorm2d(3, affine=False, track_running_stats=False),
                                   floats((2, 3, 4, 4))),
    "GroupNorm": TCase(lambda: tnn.GroupNorm(2, 4), floats((2, 4, 5))),
    "GroupNorm-noaffine": TCase(lambda: tnn.GroupNorm(2, 4, eps=1e-4, affine=False),
                                floats((2, 4, 3, 3))),
    "Conv1d": TCase(lambda: tnn.Conv1d(3, 4, 3, padding=1), floats((2, 3, 9))),
    "Conv1d-same-dilated": TCase(lambda: tnn.Conv1d(3, 4, 4, padding="same", dilation=2),
                                 floats((2, 3, 9))),
    "Conv1d-groups-stride-circular": TCase(
        lambda: tnn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, padding_mode="circular"),
        floats((2, 4, 9))),
    "Conv2d": TCase(lambda: tnn.Conv2d(3, 4, 3, stride=2, padding=1), floats((2, 3, 7, 6))),
    "Conv2d-reflect-groups": TCase(lambda: tnn.Conv2d(4, 4, 3, padding=1, groups=2,
                                                      padding_mode="reflect"), floats((2, 4, 5, 5))),
    "Conv2d-same-even-replicate": TCase(
        lambda: tnn.Conv2d(3, 2, (2, 3), padding="same", padding_mode="replicate"),
        floats((2, 3, 5, 6))),
    "Conv2d-valid-nobias-dilated": TCase(
        lambda: tnn.Conv2d(3, 5, 3, stride=(1, 2), padding="valid", dilation=(2, 1), bias=False),
        floats((2, 3, 8, 7))),
    "Conv2d-depthwise": TCase(lambda: tnn.Conv2d(4, 8, 3, padding=(1, 0), groups=4),
                              floats((2, 4, 5, 5))),
    "MaxPool1d": TCase(lambda: tnn.MaxPool1d(2), floats((2, 3, 9))),
    "MaxPool2d": TCase(lambda: tnn.MaxPool2d(2), floats((2, 3, 6, 7))),
    "MaxPool2d-pad-dilation-ceil": TCase(lambda: tnn.MaxPool2d(3, stride=2, padding=1, dilation=2,
                                                               ceil_mode=True), floats((2, 3, 9, 8))),
    "MaxPool2d-indices": TCase(lambda: tnn.MaxPool2d(3, stride=2, padding=1, return_indices=True),
                               floats((2, 3, 7, 7)), indices=True),
    "AvgPool1d": TCase(lambda: tnn.AvgPool1d(3, stride=2, padding=1), floats((2, 3, 9))),
    "AvgPool2d": TCase(lambda: tnn.AvgPool2d(2), floats((2, 3, 6, 7))),
    "AvgPool2d-nopad-count-ceil": TCase(
        lambda: tnn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
        floats((2, 3, 8, 7))),
    "AvgPool2d-divisor": TCase(lambda: tnn.AvgPool2d(2, divisor_override=3), floats((2, 3, 4, 4))),
    "AdaptiveAvgPool1d": TCase(lambda: tnn.AdaptiveAvgPool1d(4), floats((2, 3, 9))),
    "AdaptiveAvgPool2d": TCase(lambda: tnn.AdaptiveAvgPool2d((2, 3)), floats((2, 3, 6, 7))),
    "AdaptiveAvgPool2d-None": TCase(lambda: tnn.AdaptiveAvgPool2d((None, 2)), floats((2, 3, 5, 7))),
    "AdaptiveMaxPool1d": TCase(lambda: tnn.AdaptiveMaxPool1d(3), floats((2, 3, 8))),
    "AdaptiveMaxPool2d-indices": TCase(lambda: tnn.AdaptiveMaxPool2d(2, return_indices=True),
                                       floats((2, 3, 5, 6)), indices=True),
    "Flatten": TCase(tnn.Flatten, floats((2, 3, 4))),
    "Flatten-dims": TCase(lambda: tnn.Flatten(0, 1), floats((2, 3, 4))),
    "Dropout-eval": TCase(lambda: tnn.Dropout(0.5).eval(), floats((3, 7))),
    "Dropout-p0": TCase(lambda: tnn.Dropout(0.0), floats((3, 7))),
    "MultiheadAttention": TCase(_mha(8, 2, batch_first=True), floats((2, 5, 8)), call="mha"),
    "MultiheadAttention-nobias": TCase(_mha(8, 4, bias=False, batch_first=True), floats((2, 3, 8)),
                                       call="mha"),
    "MultiheadAttention-cross": TCase(_mha(8, 2, kdim=5, vdim=3, add_bias_kv=True,
                                           add_zero_attn=True, batch_first=True),
                                      floats((2, 5, 8), (2, 4, 5), (2, 4, 3)), call="mha"),
    "MultiheadAttention-seq-first": TCase(_mha(8, 2), floats((5, 2, 8)), call="mha"),
    "TransformerEncoderLayer": TCase(_tel(8, 2, 16, dropout=0.0, batch_first=True),
                                     floats((2, 5, 8))),
    "TransformerEncoderLayer-pre-gelu": TCase(
        _tel(8, 2, 16, dropout=0.0, activation="gelu", norm_first=True, layer_norm_eps=1e-4,
             batch_first=True), floats((2, 5, 8))),
    "TransformerEncoderLayer-module-activation": TCase(
        _tel(8, 2, 16, dropout=0.0, activation=tnn.GELU(approximate="tanh"), batch_first=True),
        floats((2, 5, 8))),
    "TransformerEncoderLayer-nobias": TCase(_tel(8, 2, 16, dropout=0.0, bias=False, batch_first=True),
                                            floats((2, 5, 8))),
    "TransformerEncoderLayer-seq-first": TCase(_tel(8, 2, 16, dropout=0.0), floats((5, 2, 8))),
    "TransformerEncoder": TCase(_encoder, floats((2, 5, 8))),
    "Embedding": TCase(lambda: tnn.Embedding(10, 4, padding_idx=0), tokens((3, 5), 10)),
    "Embedding-scale-grad": TCase(lambda: tnn.Embedding(10, 4, scale_grad_by_freq=True),
                                  tokens((3, 5), 10)),
}


# ------------------------------------------------------------------------------ helpers
def _torch_dtype(dt):
    return torch.float64 if dt == np.float64 else torch.float32


def _check_structure(fm, tm, exact=True):
    """Same state_dict keys (in order) and values (exact: as converted; else after a forward,
    within the dtype's tolerance), dtypes, requires_grad and train/eval state for every module
    torch names."""
    tsd, fsd = tm.state_dict(), fm.state_dict()
    assert list(fsd) == list(tsd)
    for k, v in tsd.items():
        v = v.detach().numpy()
        assert fsd[k].dtype == v.dtype, k
        if exact or v.dtype.kind != "f":
            np.testing.assert_array_equal(fsd[k], v, err_msg=k)
        else:
            assert_close(fsd[k], v, v.dtype, rtol=RTOL[v.dtype.type], err_msg=k)
    fparams = dict(fm.named_parameters())
    for k, p in tm.named_parameters():
        assert fparams[k].requires_grad == p.requires_grad, k
    fmods = dict(fm.named_modules(remove_duplicate=False))
    for name, m in tm.named_modules(remove_duplicate=False):
        assert name in fmods, name
        assert fmods[name].training == m.training, name


def _run_torch(tm, case, xs):
    xts = [torch.from_numpy(x.copy()) for x in xs]
    for xt in xts:
        if xt.is_floating_point():
            xt.requires_grad_(True)
    if case.call == "mha":
        q = xts[0]
        k, v = (xts[1], xts[2]) if len(xts) == 3 else (q, q)
        y = tm(q, k, v, need_weights=False)[0]
    else:
        y = tm(*xts)
    return y, xts


def check_parity(tm, fm, xs, dtype, case=None, seed=0):
    """Forward outputs, input gradients and parameter gradients of fm vs tm (same weights)."""
    case = case or TCase(None, None)
    rtol = RTOL[np.dtype(dtype).type]
    fm.zero_grad()
    out = fm(*xs)
    yt, xts = _run_torch(tm, case, xs)
    if case.indices:                        # (values, indices)
        out, idx = out
        yt, it = yt
        np.testing.assert_array_equal(idx, it.numpy())
    assert out.dtype == np.dtype(dtype)
    assert_close(out, yt.detach().numpy(), dtype, rtol=rtol)
    dy = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    dx = fm.backward((dy, None) if case.indices else dy)
    yt.backward(torch.from_numpy(dy.copy()))
    dxs = dx if isinstance(dx, tuple) else (dx,)
    for i, xt in enumerate(xts):
        if xt.is_floating_point():
            assert_close(dxs[i], xt.grad.numpy(), dtype, rtol=rtol, err_msg=f"input {i}")
        else:
            assert dxs[i] is None
    fparams = dict(fm.named_parameters())
    tparams = dict(tm.named_parameters())
    assert list(fparams) == list(tparams)
    for k, p in tparams.items():
        if p.grad is None:
            assert not fparams[k].has_grad(), k
        else:
            assert_close(fparams[k].grad, p.grad.numpy(), dtype, rtol=rtol, err_msg=k)
    return out


# ------------------------------------------------------------------------------ every module type
@pytest.mark.parametrize("name", sorted(CASES))
def test_module_parity(name, dtype):
    case = CASES[name]
    torch.manual_seed(0)
    tm = case.make().to(_torch_dtype(dtype))
    fm = fastmod.from_torch(tm)
    _check_structure(fm, tm)
    xs = case.inputs(dtype, np.random.default_rng(1))
    check_parity(tm, fm, xs, dtype, case)
    # state changed by the forward (BatchNorm's running statistics) moves the same way
    _check_structure(fm, tm, exact=False)


def test_every_supported_type_is_in_the_table():
    from fastmod.interop import _Converter
    supported = set(_Converter(torch, None).table)
    seen = set()
    for case in CASES.values():
        seen.update(type(m) for m in case.make().modules())
    seen.add(tnn.ModuleList)                # covered by test_module_list below (no forward)
    assert supported <= seen, sorted(c.__name__ for c in supported - seen)


def test_module_list_and_modes():
    tm = tnn.ModuleList([tnn.Linear(4, 3), tnn.Dropout(0.2), tnn.BatchNorm1d(3).eval(),
                         tnn.ReLU(inplace=True)])
    fm = fastmod.from_torch(tm)
    assert isinstance(fm, nn.ModuleList) and [type(m) for m in fm] == \
        [nn.Linear, nn.Dropout, nn.BatchNorm1d, nn.ReLU]
    _check_structure(fm, tm)
    assert fm.training and fm[1].training and fm[1].p == 0.2 and not fm[2].training
    assert fm[3].inplace


def test_modes_copied_recursively():
    tm = tnn.Sequential(tnn.Linear(4, 4), tnn.Sequential(tnn.Dropout(0.5), tnn.BatchNorm1d(4)),
                        _encoder())
    tm[1].eval()                            # a submodule in eval inside a model in train
    tm[2].layers[1].dropout.eval()
    fm = fastmod.from_torch(tm)
    _check_structure(fm, tm)
    assert fm.training and not fm[1].training and not fm[1][0].training and not fm[1][1].training
    assert fm[2].layers[0].dropout.training and not fm[2].layers[1].dropout.training
    # the whole model in eval: every module in eval, including those torch does not have
    # (a TransformerEncoderLayer's activation, a function in torch)
    fm = fastmod.from_torch(tm.eval())
    assert not any(m.training for m in fm.modules())


def test_float64_model_and_requires_grad():
    tm = tnn.Sequential(tnn.Linear(4, 5), tnn.ReLU(), tnn.Linear(5, 2)).double()
    tm[0].weight.requires_grad_(False)
    fm = fastmod.from_torch(tm)
    assert fm.dtype == np.float64 and not fm[0].weight.requires_grad and fm[0].bias.requires_grad
    x = np.random.default_rng(0).standard_normal((3, 4))
    check_parity(tm, fm, (x,), np.float64)
    assert not fm[0].weight.has_grad()


def test_weights_are_copies():
    tm = tnn.Linear(3, 2)
    fm = fastmod.from_torch(tm)
    with torch.no_grad():
        tm.weight.add_(1.0)
    assert not np.array_equal(fm.weight.data, tm.weight.detach().numpy())


def test_shared_modules_and_tied_parameters():
    lin = tnn.Linear(4, 4)
    other = tnn.Linear(4, 4)
    other.weight = lin.weight                   # tied weights, separate biases
    tm = tnn.Sequential(lin, tnn.Tanh(), lin, tnn.Tanh(), other).double()
    fm = fastmod.from_torch(tm)
    assert fm[0] is fm[2] and fm[4].weight is fm[0].weight and fm[4].bias is not fm[0].bias
    assert list(fm.state_dict()) == list(tm.state_dict())
    x = np.random.default_rng(0).standard_normal((3, 4))
    check_parity(tm, fm, (x,), np.float64)      # gradients summed over all three uses


# ------------------------------------------------------------------------------ nested models
def _cnn():
    return tnn.Sequential(
        tnn.Conv2d(3, 8, 3, padding=1), tnn.BatchNorm2d(8), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(8, 16, 3, padding="same", groups=2, bias=False), tnn.GroupNorm(4, 16), tnn.GELU(),
        tnn.Conv2d(16, 16, 3, stride=2, padding=1, padding_mode="reflect"), tnn.ReLU(),
        tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Dropout(0.0), tnn.Linear(16, 10),
        tnn.LogSoftmax(dim=1))


def _transformer_classifier(vocab=20, d=16, t=6, classes=4):
    layer = tnn.TransformerEncoderLayer(d, 4, 32, dropout=0.0, activation="gelu", batch_first=True)
    return tnn.Sequential(tnn.Embedding(vocab, d, padding_idx=0),
                          tnn.TransformerEncoder(layer, 2, norm=tnn.LayerNorm(d),
                                                 enable_nested_tensor=False),
                          tnn.Flatten(), tnn.Linear(t * d, classes))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_nested_cnn(dtype, mode):
    torch.manual_seed(0)
    tm = _cnn().to(_torch_dtype(dtype))
    tm.train(mode == "train")
    fm = fastmod.from_torch(tm)
    _check_structure(fm, tm)
    x = np.random.default_rng(2).standard_normal((4, 3, 12, 12)).astype(dtype)
    check_parity(tm, fm, (x,), dtype)
    _check_structure(fm, tm, exact=False)       # running statistics updated alike


def test_nested_transformer_classifier(dtype):
    torch.manual_seed(0)
    tm = _transformer_classifier().to(_torch_dtype(dtype))
    fm = fastmod.from_torch(tm)
    _check_structure(fm, tm)
    x = np.random.default_rng(3).integers(0, 20, (3, 6))
    x[:, -1] = 0                                # padding tokens
    check_parity(tm, fm, (x,), dtype)


def _workloads():
    spec = importlib.util.spec_from_file_location("bench_workloads",
                                                  os.path.join(ROOT, "bench", "workloads.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _custom_parts(tm, wl):
    """`custom` converters for bench/workloads.py's TorchParts (classes made per call: keyed by
    the instances' classes), each the fastmod block with the same child names."""
    def residual_block(m, convert):
        fm = nn.ResidualBlock(m.mm1.in_features, dtype=m.mm1.weight.detach().numpy().dtype)
        fm.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
        return fm

    def bn_res_block(m, convert):
        fm = nn.BNResBlock(m.conv1.in_channels, dtype=m.conv1.weight.detach().numpy().dtype)
        fm.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
        return fm

    def dense_block(m, convert):
        c = m.layers[0]
        fm = nn.DenseBlock(c.in_channels, c.out_channels, len(m.layers),
                           dtype=c.weight.detach().numpy().dtype)
        fm.load_state_dict({k: v.detach().numpy() for k, v in m.state_dict().items()})
        return fm

    makers = {"ResidualBlock": residual_block, "BNResBlock": bn_res_block,
              "DenseBlock": dense_block, "MeanTokens": lambda m, convert: wl._fastmod_mean_tokens(nn)}
    return {type(m): makers[type(m).__name__] for m in tm.modules() if type(m).__name__ in makers}


@pytest.mark.parametrize("name", ["mlp_b128", "resnet_s_b128", "cnn_b32", "conv1d_b64",
                                  "bnresnet_b32", "groupnorm_cnn_b32", "transformer_b16",
                                  "densenet_b16"])
def test_reference_workloads(name):
    """The benchmark's torch models (bench/workloads.py; their TorchParts blocks through
    `custom`), converted, at batch 2, float64 and float32."""
    wl = _workloads()
    w = wl.WORKLOADS[name]
    for dtype in (np.float64, np.float32):
        torch.manual_seed(0)
        tm = w.torch_model(tnn).to(_torch_dtype(dtype))
        fm = fastmod.from_torch(tm, custom=_custom_parts(tm, wl))
        assert list(fm.state_dict()) == list(tm.state_dict())
        x = np.random.default_rng(0).standard_normal((2,) + w.shape[1:]).astype(dtype)
        check_parity(tm, fm, (x,), dtype)


# ------------------------------------------------------------------------------ errors
class MyBlock(tnn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = tnn.LSTM(4, 4)

    def forward(self, x):
        return self.rnn(x)[0]


class LinearWithOwnForward(tnn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


class PlainLinearSubclass(tnn.Linear):
    pass


def test_every_unsupported_module_is_named():
    tm = tnn.Sequential(tnn.Linear(4, 4), tnn.ReLU(), tnn.Linear(4, 4), tnn.LSTM(4, 4),
                        tnn.Sequential(tnn.Tanh(), tnn.GRU(4, 4)), MyBlock(),
                        LinearWithOwnForward(4, 4), tnn.ConvTranspose2d(2, 2, 3))
    with pytest.raises(TypeError) as e:
        fastmod.from_torch(tm)
    msg = str(e.value)
    assert "4 parts" not in msg and "5 parts of the model cannot be converted" in msg
    for text in ("model.3 (torch.nn.LSTM) has no fastmod equivalent",
                 "model.4.1 (torch.nn.GRU) has no fastmod equivalent",
                 "model.5 (test_interop.MyBlock) has no fastmod equivalent",
                 "model.6 (test_interop.LinearWithOwnForward) has no fastmod equivalent",
                 "model.7 (torch.nn.ConvTranspose2d) has no fastmod equivalent"):
        assert text in msg, msg
    assert "model.5.rnn" not in msg             # the unsupported module, not its insides


def test_single_unsupported_root():
    with pytest.raises(TypeError, match=r"^from_torch: model \(torch.nn.LSTM\) has no fastmod "
                                        r"equivalent$"):
        fastmod.from_torch(tnn.LSTM(3, 3))


def test_subclass_without_own_forward_is_converted():
    fm = fastmod.from_torch(tnn.Sequential(PlainLinearSubclass(3, 2)))
    assert type(fm[0]) is nn.Linear


def test_unsupported_options_are_named():
    tm = tnn.Sequential(
        tnn.TransformerEncoderLayer(8, 2, 16, activation=torch.tanh, batch_first=True),
        tnn.Softmax(),                                               # dim=None
        tnn.Linear(8, 8).half(),
        tnn.LSTM(2, 2))
    with pytest.raises(ValueError) as e:
        fastmod.from_torch(tm)
    msg = str(e.value)
    assert "4 parts of the model cannot be converted" in msg
    assert "model.0 (torch.nn.TransformerEncoderLayer): activation=torch.tanh is not supported" in msg
    assert "model.1 (torch.nn.Softmax): dim=None" in msg
    assert "model.2 (torch.nn.Linear) has dtype torch.float16" in msg
    assert "model.3 (torch.nn.LSTM) has no fastmod equivalent" in msg


def test_encoder_layer_options_fastmod_lacks():
    layer = tnn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
    layer.dropout2.p = 0.3
    with pytest.raises(ValueError, match=r"model \(torch.nn.TransformerEncoderLayer\): its dropout "
                                         r"probabilities differ .*dropout2=0.3"):
        fastmod.from_torch(layer)
    layer = tnn.TransformerEncoderLayer(8, 2, 16, batch_first=True)
    layer.norm2.eps = 1e-3
    with pytest.raises(ValueError, match="norm1.eps .* and norm2.eps .* differ"):
        fastmod.from_torch(layer)
    tm = tnn.Sequential(tnn.Linear(2, 2), tnn.Linear(2, 2).double())
    fastmod.from_torch(tm)                      # each module its own dtype: allowed
    mixed = tnn.Linear(2, 2)
    mixed.bias.data = mixed.bias.data.double()
    with pytest.raises(ValueError, match=r"model \(torch.nn.Linear\): mixes dtypes"):
        fastmod.from_torch(mixed)


def test_bad_arguments():
    with pytest.raises(TypeError, match="expected a torch.nn.Module, got ndarray"):
        fastmod.from_torch(np.zeros(3))
    with pytest.raises(TypeError, match="custom must map torch.nn.Module subclasses"):
        fastmod.from_torch(tnn.Linear(2, 2), custom={"Linear": lambda m, c: None})


def test_custom_converter_with_children():
    class Skip(tnn.Module):
        def __init__(self):
            super().__init__()
            self.fn = tnn.Sequential(tnn.Linear(4, 4), tnn.Tanh())   # fastmod.nn.Residual's name

        def forward(self, x):
            return x + self.fn(x)

    tm = tnn.Sequential(Skip(), tnn.Linear(4, 2)).double()
    fm = fastmod.from_torch(tm, custom={Skip: lambda m, convert: nn.Residual(convert(m.fn, "fn"))})
    x = np.random.default_rng(0).standard_normal((3, 4))
    check_parity(tm, fm, (x,), np.float64)
    tm[0].fn.append(tnn.LSTM(4, 4))
    with pytest.raises(TypeError, match=r"model\.0\.fn\.2 \(torch.nn.LSTM\)"):
        fastmod.from_torch(tm, custom={Skip: lambda m, convert: nn.Residual(convert(m.fn, "fn"))})


def test_readme_example_runs():
    import re
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    section = text.split("## From PyTorch", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    ns = {}
    exec(compile(code, "README.md From PyTorch", "exec"), ns)
    assert not ns["model"].training


def test_hooks_are_refused():
    tm = tnn.Sequential(tnn.Linear(3, 3), tnn.ReLU(), tnn.utils.spectral_norm(tnn.Linear(3, 2)))
    tm[0].register_forward_hook(lambda m, i, o: o * 2)
    with pytest.raises(ValueError) as e:
        fastmod.from_torch(tm)
    msg = str(e.value)
    assert "model.0 (torch.nn.Linear): has forward hooks, which a fastmod module cannot run" in msg
    assert "model.2 (torch.nn.Linear): has forward pre-hooks" in msg
