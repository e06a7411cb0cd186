"""TransformerEncoderLayer (post-LN and pre-LN) and models.transformer_classifier: torch parity
(outputs, all gradients, masks, state_dict both ways), NumPy reference, gradcheck, properties,
bad input."""
import math

import numpy as np
import pytest

import fastmod
import fastmod.nn as nn
from reference import assert_close

E, H, F, N, T = 16, 4, 24, 3, 6


# ------------------------------------------------------------------ NumPy reference
def ref_ln(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def ref_mha(x, sd, prefix, heads):
    w, b = sd[prefix + "in_proj_weight"], sd[prefix + "in_proj_bias"]
    q, k, v = np.split(x @ w.T + b, 3, axis=-1)
    n, t, e = x.shape
    d = e // heads
    split = lambda a: a.reshape(n, t, heads, d).transpose(0, 2, 1, 3)     # noqa: E731
    s = split(q) @ split(k).transpose(0, 1, 3, 2) / math.sqrt(d)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ctx = (p @ split(v)).transpose(0, 2, 1, 3).reshape(n, t, e)
    return ctx @ sd[prefix + "out_proj.weight"].T + sd[prefix + "out_proj.bias"]


def ref_layer(x, sd, heads, act, norm_first):
    """The standard encoder block in float64 (torch's definition)."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    x = x.astype(np.float64)
    f = (lambda z: np.maximum(z, 0)) if act == "relu" else \
        (lambda z: 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2))))
    ln1 = lambda z: ref_ln(z, sd["norm1.weight"], sd["norm1.bias"])     # noqa: E731
    ln2 = lambda z: ref_ln(z, sd["norm2.weight"], sd["norm2.bias"])     # noqa: E731
    ff = lambda z: f(z @ sd["linear1.weight"].T + sd["linear1.bias"]) @ sd["linear2.weight"].T \
        + sd["linear2.bias"]                                            # noqa: E731
    sa = lambda z: ref_mha(z, sd, "self_attn.", heads)                  # noqa: E731
    if norm_first:
        x = x + sa(ln1(x))
        return x + ff(ln2(x))
    x = ln1(x + sa(x))
    return ln2(x + ff(x))


def _randomize(m, rng, scale=0.2):
    for p in m.parameters():
        p.data += (scale * rng.standard_normal(p.shape)).astype(p.dtype)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_forward_matches_numpy_reference(dtype, rng, norm_first, act):
    m = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, activation=act, norm_first=norm_first,
                                   dtype=dtype)
    _randomize(m, rng)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    y = m(x)
    assert y.shape == (N, T, E) and y.dtype == dtype
    assert_close(y, ref_layer(x, m.state_dict(), H, act, norm_first), dtype)


def test_post_ln_is_the_standard_block_not_the_seed_formula(rng):
    """The seed's LN2(x + FFN(LN1(x + MHA(x)))) differs from the standard block we implement."""
    m = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, dtype=np.float64)
    _randomize(m, rng)
    x = rng.standard_normal((N, T, E))
    sd = {k: v for k, v in m.state_dict().items()}
    z = ref_ln(x + ref_mha(x, sd, "self_attn.", H), sd["norm1.weight"], sd["norm1.bias"])
    ff = np.maximum(z @ sd["linear1.weight"].T + sd["linear1.bias"], 0) @ sd["linear2.weight"].T \
        + sd["linear2.bias"]
    standard = ref_ln(z + ff, sd["norm2.weight"], sd["norm2.bias"])
    seed = ref_ln(x + ff, sd["norm2.weight"], sd["norm2.bias"])
    y = m(x)
    np.testing.assert_allclose(y, standard, rtol=1e-10, atol=1e-10)
    assert not np.allclose(y, seed, atol=1e-3)


# ------------------------------------------------------------------ torch parity
def _pair(dtype, norm_first, act, batch_first=True):
    torch = pytest.importorskip("torch")
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    torch.manual_seed(0)
    tm = torch.nn.TransformerEncoderLayer(E, H, F, dropout=0.0, activation=act,
                                          batch_first=batch_first, norm_first=norm_first).to(tdt)
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.1 * torch.randn_like(p))
    m = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, activation=act, norm_first=norm_first,
                                   batch_first=batch_first, dtype=dtype)
    assert set(m.state_dict()) == set(tm.state_dict())
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    return torch, m, tm


def _check_parity(torch, m, tm, x, dtype, mask_kw=None, t_mask_kw=None):
    mask_kw = mask_kw or {}
    tm.zero_grad()
    xt = torch.tensor(x, requires_grad=True)
    yt = tm(xt, **(t_mask_kw if t_mask_kw is not None else
                   {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                    for k, v in mask_kw.items()}))
    y = m(x, **mask_kw)
    assert_close(y, yt.detach().numpy(), dtype)
    g = np.random.default_rng(5).standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(g))
    m.zero_grad()
    dx = m.backward(g)
    assert_close(dx, xt.grad.numpy(), dtype)
    tp = dict(tm.named_parameters())
    for name, p in m.named_parameters():
        assert_close(p.grad, tp[name].grad.numpy(), dtype, err_msg=name)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_torch_parity(dtype, rng, norm_first, act, threads):
    torch, m, tm = _pair(dtype, norm_first, act)
    _check_parity(torch, m, tm, rng.standard_normal((N, T, E)).astype(dtype), dtype)


@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
def test_torch_parity_masks(dtype, rng, norm_first):
    torch, m, tm = _pair(dtype, norm_first, "gelu")
    x = rng.standard_normal((N, T, E)).astype(dtype)
    pad = np.zeros((N, T), bool)
    pad[1, -2:] = True
    causal = np.triu(np.ones((T, T), bool), 1)
    _check_parity(torch, m, tm, x, dtype, {"src_mask": causal, "src_key_padding_mask": pad})
    tdt = tm.linear1.weight.dtype
    tcausal = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=tdt)
    _check_parity(torch, m, tm, x, dtype, {"is_causal": True},
                  {"src_mask": tcausal, "is_causal": True})


def test_torch_parity_batch_second(rng):
    torch, m, tm = _pair(np.float64, False, "relu", batch_first=False)
    _check_parity(torch, m, tm, rng.standard_normal((T, N, E)), np.float64)


def test_state_dict_into_torch(rng):
    torch = pytest.importorskip("torch")
    m = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, activation="gelu", norm_first=True)
    _randomize(m, rng)
    tm = torch.nn.TransformerEncoderLayer(E, H, F, dropout=0.0, activation="gelu",
                                          batch_first=True, norm_first=True)
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in m.state_dict().items()})
    x = rng.standard_normal((N, T, E)).astype(np.float32)
    assert_close(m(x), tm(torch.from_numpy(x)).detach().numpy(), np.float32)


# ------------------------------------------------------------------ gradcheck, properties
@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_gradcheck(rng, norm_first, act):
    m = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, activation=act, norm_first=norm_first,
                                   dtype=np.float64)
    _randomize(m, rng)
    fastmod.gradcheck(m, rng.standard_normal((2, 3, 8)), max_elements=48,
                      forward_kwargs={"is_causal": True})


def test_permutation_equivariance(dtype, rng):
    m = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, dtype=dtype)
    _randomize(m, rng)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    perm = rng.permutation(T)
    assert_close(m(x[:, perm]), m(x)[:, perm], dtype)


def test_dropout_train_eval_and_generator(rng):
    x = rng.standard_normal((2, 5, E)).astype(np.float32)
    m = nn.TransformerEncoderLayer(E, H, F, dropout=0.3, generator=np.random.default_rng(3))
    y1 = m(x)
    m.backward(np.ones_like(y1))
    assert not np.allclose(y1, m(x))                         # new masks each call
    for d in (m.dropout, m.dropout1, m.dropout2):
        d.generator = np.random.default_rng(9)
    m.self_attn.generator = np.random.default_rng(9)
    ya = m(x)
    for d in (m.dropout, m.dropout1, m.dropout2):
        d.generator = np.random.default_rng(9)
    m.self_attn.generator = np.random.default_rng(9)
    np.testing.assert_array_equal(ya, m(x))                 # seeded -> reproducible
    m.eval()
    np.testing.assert_array_equal(m(x), m(x))


def test_threads_equal_and_repeat_bit_identical(rng):
    m = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, activation="gelu")
    x = rng.standard_normal((4, 20, 64)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    out = {}
    for nt in (1, 2, 2):
        fastmod.set_num_threads(nt)
        m.zero_grad()
        y = m(x)
        dx = m.backward(g)
        cur = (y, dx, m.self_attn.in_proj_weight.grad.copy(), m.linear1.weight.grad.copy())
        if nt in out:
            for a, b in zip(out[nt], cur):
                np.testing.assert_array_equal(a, b)
        out[nt] = cur
    for a, b in zip(out[1], out[2]):
        assert_close(a, b, np.float32)


def test_need_input_grad_false_gives_same_parameter_grads(rng):
    for nf in (False, True):
        m = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, norm_first=nf, dtype=np.float64)
        x = rng.standard_normal((N, T, E))
        g = rng.standard_normal(x.shape)
        m(x)
        m.backward(g)
        grads = {k: p.grad.copy() for k, p in m.named_parameters()}
        m.zero_grad()
        m(x)
        assert m.backward(g, need_input_grad=False) is None
        for k, p in m.named_parameters():
            np.testing.assert_allclose(p.grad, grads[k], rtol=1e-12, atol=1e-12, err_msg=k)


# ------------------------------------------------------------------ bad input
def test_bad_arguments_and_inputs(rng):
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by nhead \(3\)"):
        nn.TransformerEncoderLayer(10, 3)
    with pytest.raises(ValueError, match="activation must be one of"):
        nn.TransformerEncoderLayer(8, 2, activation="swish")
    with pytest.raises(ValueError, match="dropout must be"):
        nn.TransformerEncoderLayer(8, 2, dropout=-0.1)
    m = nn.TransformerEncoderLayer(8, 2, 16)
    with pytest.raises(ValueError, match=r"expected src of shape \(N, T, 8\), got \(2, 3, 9\)"):
        m(np.zeros((2, 3, 9), np.float32))
    with pytest.raises(TypeError, match="expected float32 src like its weights, got float64"):
        m(np.zeros((2, 3, 8)))
    with pytest.raises(ValueError, match="expected attn_mask of shape"):
        m(np.zeros((2, 3, 8), np.float32), src_mask=np.zeros((3, 4), bool))


# ------------------------------------------------------------------ the classifier
def test_transformer_classifier_tokens_trains(rng):
    from fastmod.models import transformer_classifier
    from fastmod.losses import CrossEntropyLoss
    from fastmod.optim import Adam
    fastmod.manual_seed(0)
    model = transformer_classifier(num_classes=2, vocab_size=12, max_len=8, d_model=16, nhead=2,
                                   num_layers=2, dim_feedforward=32, dropout=0.0)
    # class = whether token 1 appears
    x = rng.integers(2, 12, size=(64, 8))
    y = rng.integers(0, 2, 64)
    x[y == 1, rng.integers(0, 8, int((y == 1).sum()))] = 1
    crit, opt = CrossEntropyLoss(), Adam(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = crit(model(x), y)
        first = loss if first is None else first
        model.backward(crit.backward())
        opt.step()
    assert loss < 0.5 * first
    model.eval()
    with fastmod.no_grad():
        assert model(x).shape == (64, 2)


def test_transformer_classifier_vectors_and_padding(rng):
    from fastmod.models import transformer_classifier
    m = transformer_classifier(num_classes=3, in_features=5, max_len=10, d_model=8, nhead=2,
                               num_layers=1, dim_feedforward=16, dropout=0.0, dtype=np.float64)
    fastmod.gradcheck(m, rng.standard_normal((2, 4, 5)), max_elements=24)
    tok = transformer_classifier(num_classes=3, vocab_size=6, padding_idx=0, max_len=10,
                                 d_model=8, nhead=2, num_layers=1, dim_feedforward=16,
                                 dropout=0.0, dtype=np.float64)
    tok.eval()
    a = np.array([[3, 4, 5, 0, 0]])
    b = np.array([[3, 4, 5]])
    # padding tokens are masked out of attention and of the mean
    np.testing.assert_allclose(tok(a), tok(b), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="longer than max_len"):
        tok(np.ones((1, 11), np.int64))
    with pytest.raises(TypeError, match="expected a bool numpy.ndarray as key_padding_mask, got float64"):
        tok(a, key_padding_mask=np.zeros((1, 5)))             # a dtype error: TypeError
    with pytest.raises(ValueError, match=r"expected key_padding_mask of shape \(1, 5\), got \(1, 4\)"):
        tok(a, key_padding_mask=np.zeros((1, 4), bool))
    with pytest.raises(ValueError, match="exactly one of vocab_size"):
        transformer_classifier(num_classes=3)


# ------------------------------------------------------------------ TransformerEncoder
def _enc_pair(dtype, norm_first, with_norm, batch_first=True, layers=3):
    torch = pytest.importorskip("torch")
    tdt = torch.float32 if dtype == np.float32 else torch.float64
    torch.manual_seed(1)
    tl = torch.nn.TransformerEncoderLayer(E, H, F, dropout=0.0, activation="gelu",
                                          batch_first=batch_first, norm_first=norm_first)
    tm = torch.nn.TransformerEncoder(tl, layers, norm=torch.nn.LayerNorm(E) if with_norm else None,
                                     enable_nested_tensor=False).to(tdt)
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.1 * torch.randn_like(p))           # the copies differ from here on
    layer = nn.TransformerEncoderLayer(E, H, F, dropout=0.0, activation="gelu",
                                       norm_first=norm_first, batch_first=batch_first, dtype=dtype)
    m = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(E, dtype=dtype) if with_norm else None)
    assert list(m.state_dict()) == list(tm.state_dict())
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    return torch, m, tm


@pytest.mark.parametrize("norm_first,with_norm", [(False, False), (True, True), (False, True)],
                         ids=["post", "pre+norm", "post+norm"])
def test_encoder_torch_parity(dtype, rng, norm_first, with_norm):
    torch, m, tm = _enc_pair(dtype, norm_first, with_norm)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    _check_parity(torch, m, tm, x, dtype)
    kpm = np.zeros((N, T), bool)
    kpm[1, -2:] = True
    mask = np.triu(np.ones((T, T), bool), 1)
    _check_parity(torch, m, tm, x, dtype, {"mask": mask, "src_key_padding_mask": kpm})


def test_encoder_batch_second_and_reference(rng):
    torch, m, tm = _enc_pair(np.float64, False, True, batch_first=False, layers=2)
    x = rng.standard_normal((T, N, E))
    _check_parity(torch, m, tm, x, np.float64)
    sd = m.state_dict()
    h = x.transpose(1, 0, 2)
    for i in range(2):
        h = ref_layer(h, {k[len(f"layers.{i}."):]: v for k, v in sd.items()
                          if k.startswith(f"layers.{i}.")}, H, "gelu", False)
    ref = ref_ln(h, sd["norm.weight"], sd["norm.bias"]).transpose(1, 0, 2)
    np.testing.assert_allclose(m(x), ref, rtol=1e-10, atol=1e-12)


def test_encoder_copies_are_deep_and_share_the_generator(rng):
    gen = np.random.default_rng(0)
    layer = nn.TransformerEncoderLayer(E, H, F, dropout=0.5, generator=gen)
    m = nn.TransformerEncoder(layer, 2)
    a, b = m.layers[0], m.layers[1]
    np.testing.assert_array_equal(a.linear1.weight.data, b.linear1.weight.data)   # as torch
    assert a.linear1.weight.data is not b.linear1.weight.data
    a.linear1.weight.data[0, 0] += 1
    assert a.linear1.weight.data[0, 0] != b.linear1.weight.data[0, 0]
    assert a.dropout.generator is gen and b.self_attn.generator is gen             # shared
    assert m.layers[0] is not layer and repr(m).startswith("TransformerEncoder(num_layers=2")


def test_encoder_gradcheck_and_need_input_grad(rng):
    layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, dtype=np.float64)
    m = nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8, dtype=np.float64))
    for p in m.parameters():
        p.data += 0.2 * rng.standard_normal(p.shape)
    x = rng.standard_normal((2, 3, 8))
    fastmod.gradcheck(m, x, forward_kwargs={"is_causal": True})
    grads = []
    for need in (True, False):
        m.zero_grad()
        y = m(x)
        dx = m.backward(np.ones_like(y), need_input_grad=need)
        assert (dx is None) == (not need)
        grads.append([p.grad.copy() for p in m.parameters()])
    for g1, g2 in zip(*grads):
        np.testing.assert_allclose(g1, g2, rtol=1e-12, atol=1e-14)


def test_encoder_bad_arguments():
    layer = nn.TransformerEncoderLayer(8, 2, 12)
    with pytest.raises(TypeError, match="expected encoder_layer to be a Module"):
        nn.TransformerEncoder("layer", 2)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        nn.TransformerEncoder(layer, 0)
    with pytest.raises(TypeError, match="expected norm to be a Module or None"):
        nn.TransformerEncoder(layer, 2, norm=3)
    with pytest.raises(ValueError, match="expected src of shape"):
        nn.TransformerEncoder(layer, 2)(np.zeros((2, 3, 7), np.float32))


@pytest.mark.parametrize("norm_first", [False, True], ids=["post", "pre"])
def test_inference_gelu_fused_into_linear1(rng, norm_first, threads):
    """Under no_grad a plain GELU after linear1 runs in linear1's GEMM epilogue
    (Linear._forward_gelu): the same output as the layer with grad enabled (which keeps
    linear1's output for backward); a hooked activation runs as itself."""
    m = nn.TransformerEncoderLayer(32, 4, dim_feedforward=80, dropout=0.0, activation="gelu",
                                   batch_first=True, norm_first=norm_first)
    m.eval()
    x = rng.standard_normal((3, 7, 32)).astype(np.float32)
    want = m(x)
    calls = []
    orig = type(m.linear1)._forward_gelu
    type(m.linear1)._forward_gelu = lambda self, a: (calls.append(1), orig(self, a))[1]
    try:
        with fastmod.no_grad():
            assert_close(m(x), want, np.float32)
        assert len(calls) == 1
        seen = []
        h = m.activation.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
        with fastmod.no_grad():
            assert_close(m(x), want, np.float32)
        assert seen == [(3, 7, 80)] and len(calls) == 1
        h.remove()
    finally:
        type(m.linear1)._forward_gelu = orig
