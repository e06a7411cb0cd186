"""MultiheadAttention and scaled_dot_product_attention: NumPy reference, torch parity (outputs,
all gradients, masks, state_dict both ways), gradcheck, the seed's properties, bad input."""
import math

import numpy as np
import pytest

import fastmod
import fastmod.nn as nn
from reference import assert_close

E, H, N, T = 16, 4, 3, 6


# ------------------------------------------------------------------ NumPy reference
def ref_softmax(s):
    s = s - s.max(axis=-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


def ref_mha(x, kx, vx, w, b, wo, bo, H, mask=None):
    """softmax(Q K^T / sqrt(d) + mask) V per head, in float64; mask additive (T, S)."""
    x, kx, vx, w, wo = (np.asarray(a, np.float64) for a in (x, kx, vx, w, wo))
    Ed = w.shape[1]
    b = np.zeros(3 * Ed) if b is None else np.asarray(b, np.float64)
    q = x @ w[:Ed].T + b[:Ed]
    k = kx @ w[Ed:2 * Ed].T + b[Ed:2 * Ed]
    v = vx @ w[2 * Ed:].T + b[2 * Ed:]
    n, t, _ = q.shape
    s_len = k.shape[1]
    d = Ed // H
    qh = q.reshape(n, t, H, d).transpose(0, 2, 1, 3)
    kh = k.reshape(n, s_len, H, d).transpose(0, 2, 1, 3)
    vh = v.reshape(n, s_len, H, d).transpose(0, 2, 1, 3)
    sc = qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(d)
    if mask is not None:
        sc = sc + mask
    p = ref_softmax(sc)
    ctx = (p @ vh).transpose(0, 2, 1, 3).reshape(n, t, Ed)
    out = ctx @ np.asarray(wo, np.float64).T
    return out if bo is None else out + bo, p


def _params(m):
    b = None if m.in_proj_bias is None else m.in_proj_bias.data
    bo = None if m.out_proj.bias is None else m.out_proj.bias.data
    return m.in_proj_weight.data, b, m.out_proj.weight.data, bo


@pytest.mark.parametrize("bias", [True, False])
def test_forward_matches_numpy_reference(dtype, rng, bias):
    m = nn.MultiheadAttention(E, H, bias=bias, dtype=dtype)
    if bias:
        m.in_proj_bias.data[:] = rng.standard_normal(3 * E)
        m.out_proj.bias.data[:] = rng.standard_normal(E)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    y = m(x)
    ref, _ = ref_mha(x, x, x, *_params(m), H)
    assert y.dtype == dtype and y.shape == (N, T, E)
    assert_close(y, ref, dtype)


def test_cross_attention_matches_reference(dtype, rng):
    m = nn.MultiheadAttention(E, H, dtype=dtype)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    kx = rng.standard_normal((N, 9, E)).astype(dtype)
    vx = rng.standard_normal((N, 9, E)).astype(dtype)
    ref, _ = ref_mha(x, kx, vx, *_params(m), H)
    assert_close(m(x, kx, vx), ref, dtype)


def test_attention_weights_match_reference(dtype, rng):
    """The fused softmax (a polynomial exp for float32) against float64 NumPy, per head."""
    m = nn.MultiheadAttention(E, H, dtype=dtype)
    x = (2 * rng.standard_normal((N, 37, E))).astype(dtype)     # 37: vector body + tail
    mask = np.where(rng.random((37, 37)) < 0.3, -np.inf, rng.standard_normal((37, 37)))
    mask[:, 0] = 0
    _, w = m(x, attn_mask=mask.astype(dtype), need_weights=True, average_attn_weights=False)
    _, p = ref_mha(x, x, x, *_params(m), H, mask=mask)
    assert_close(w, p, dtype)
    assert not w[..., mask == -np.inf].any()


def test_init_like_torch():
    m = nn.MultiheadAttention(64, 8)
    bound = math.sqrt(6.0 / (64 + 3 * 64))
    w = m.in_proj_weight.data
    assert w.shape == (192, 64) and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert not m.in_proj_bias.data.any() and not m.out_proj.bias.data.any()
    assert list(m.state_dict()) == ["in_proj_weight", "in_proj_bias", "out_proj.weight",
                                    "out_proj.bias"]


# ------------------------------------------------------------------ torch parity
torch = None


def _torch():
    global torch
    torch = pytest.importorskip("torch")
    return torch


def _pair(dtype, bias=True, batch_first=True, seed=0):
    t = _torch()
    tdt = t.float32 if dtype == np.float32 else t.float64
    t.manual_seed(seed)
    tm = t.nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first).to(tdt)
    with t.no_grad():
        for p in tm.parameters():
            p.add_(0.1 * t.randn_like(p))       # non-zero biases
    m = nn.MultiheadAttention(E, H, bias=bias, batch_first=batch_first, dtype=dtype)
    m.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    return m, tm


def _compare_grads(m, tm, dtype):
    for name, p in m.named_parameters():
        tp = dict(tm.named_parameters())[name]
        assert_close(p.grad, tp.grad.numpy(), dtype, err_msg=name)


def _run_both(m, tm, dtype, rng, inputs, mask_kw=None, t_mask_kw=None, seed=1):
    t = torch
    mask_kw = mask_kw or {}
    t_mask_kw = t_mask_kw if t_mask_kw is not None else {
        k: (t.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in mask_kw.items()}
    tin = [t.tensor(a, requires_grad=True) for a in inputs]
    targs = tin if len(tin) == 3 else tin * 3
    ty, _ = tm(*targs, need_weights=False, **t_mask_kw)
    y = m(*inputs, **mask_kw)
    assert_close(y, ty.detach().numpy(), dtype)
    g = np.random.default_rng(seed).standard_normal(y.shape).astype(dtype)
    ty.backward(t.from_numpy(g))
    m.zero_grad()
    dx = m.backward(g)
    dxs = dx if isinstance(dx, tuple) else (dx,)
    assert len(dxs) == len(inputs)
    for d, ti in zip(dxs, tin):
        assert_close(d, ti.grad.numpy(), dtype)
    _compare_grads(m, tm, dtype)
    return y


@pytest.mark.parametrize("bias", [True, False])
def test_torch_parity_self_attention(dtype, rng, bias, threads):
    m, tm = _pair(dtype, bias)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    _run_both(m, tm, dtype, rng, [x])


def test_torch_parity_cross_attention(dtype, rng):
    m, tm = _pair(dtype)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    kx = rng.standard_normal((N, 9, E)).astype(dtype)
    vx = rng.standard_normal((N, 9, E)).astype(dtype)
    _run_both(m, tm, dtype, rng, [x, kx, vx])


def test_torch_parity_batch_second(dtype, rng):
    m, tm = _pair(dtype, batch_first=False)
    x = rng.standard_normal((T, N, E)).astype(dtype)
    _run_both(m, tm, dtype, rng, [x])


def test_torch_parity_causal(dtype, rng):
    m, tm = _pair(dtype)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    tmask = torch.nn.Transformer.generate_square_subsequent_mask(T, dtype=tm.in_proj_weight.dtype)
    _run_both(m, tm, dtype, rng, [x], {"is_causal": True},
              {"attn_mask": tmask, "is_causal": True})
    # the same causal mask given explicitly (bool, True = blocked) gives the same result
    causal = np.triu(np.ones((T, T), bool), 1)
    y1 = m(x, attn_mask=causal)
    np.testing.assert_array_equal(y1, m(x, is_causal=True))


@pytest.mark.parametrize("kind", ["bool2d", "float2d", "bool3d", "float3d"])
def test_torch_parity_attn_mask(dtype, rng, kind):
    m, tm = _pair(dtype)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    shape = (T, T) if kind.endswith("2d") else (N * H, T, T)
    blocked = rng.random(shape) < 0.4
    blocked[..., 0] = False                                  # every query keeps one key
    if kind.startswith("bool"):
        mask = blocked
    else:
        mask = np.where(blocked, -np.inf, rng.standard_normal(shape)).astype(dtype)
    _run_both(m, tm, dtype, rng, [x], {"attn_mask": mask})


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_torch_parity_key_padding_mask(dtype, rng, kind):
    m, tm = _pair(dtype)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    pad = np.zeros((N, T), bool)
    pad[0, -2:] = True
    pad[2, -4:] = True
    kpm = pad if kind == "bool" else np.where(pad, -np.inf, 0).astype(dtype)
    causal = np.triu(np.ones((T, T), bool), 1)
    if kind == "float":
        causal = np.where(causal, -np.inf, 0).astype(dtype)
    _run_both(m, tm, dtype, rng, [x], {"key_padding_mask": kpm, "attn_mask": causal})


def test_need_weights_matches_torch(dtype, rng):
    m, tm = _pair(dtype)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    tx = torch.from_numpy(x)
    for avg in (True, False):
        ty, tw = tm(tx, tx, tx, need_weights=True, average_attn_weights=avg)
        y, w = m(x, need_weights=True, average_attn_weights=avg)
        assert_close(y, ty.detach().numpy(), dtype)
        assert_close(w, tw.detach().numpy(), dtype)


def test_state_dict_into_torch(dtype, rng):
    """fastmod -> torch: names and layouts identical, same outputs."""
    t = _torch()
    m = nn.MultiheadAttention(E, H, dtype=dtype)
    m.in_proj_bias.data[:] = rng.standard_normal(3 * E)
    tm = t.nn.MultiheadAttention(E, H, batch_first=True).to(
        t.float32 if dtype == np.float32 else t.float64)
    tm.load_state_dict({k: t.from_numpy(v) for k, v in m.state_dict().items()})
    x = rng.standard_normal((N, T, E)).astype(dtype)
    ty, _ = tm(*[t.from_numpy(x)] * 3, need_weights=False)
    assert_close(m(x), ty.detach().numpy(), dtype)


def test_sdpa_function_matches_torch(dtype, rng):
    t = _torch()
    q = rng.standard_normal((2, 3, 5, 8)).astype(dtype)
    k = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    v = rng.standard_normal((2, 3, 7, 8)).astype(dtype)
    allowed = rng.random((5, 7)) > 0.3
    allowed[:, 0] = True
    F = t.nn.functional
    tq, tk, tv = map(t.from_numpy, (q, k, v))
    for kw, tkw in [({}, {}), ({"is_causal": True}, {"is_causal": True}),
                    ({"attn_mask": allowed}, {"attn_mask": t.from_numpy(allowed)}),
                    ({"scale": 0.3}, {"scale": 0.3})]:
        assert_close(nn.scaled_dot_product_attention(q, k, v, **kw),
                     F.scaled_dot_product_attention(tq, tk, tv, **tkw).numpy(), dtype)


# ------------------------------------------------------------------ gradcheck (float64)
class _FixedSeed:
    """A 'generator' that always gives the same seed: dropout's mask is the same every call,
    so finite differences see a deterministic function."""

    def integers(self, *a, **k):
        return 12345


@pytest.mark.parametrize("case", ["plain", "causal_kpm", "mask3d", "dropout"])
def test_gradcheck_self_attention(rng, case):
    gen = _FixedSeed() if case == "dropout" else None
    m = nn.MultiheadAttention(8, 2, dropout=0.3 if case == "dropout" else 0.0,
                              dtype=np.float64, generator=gen)
    m.in_proj_bias.data[:] = rng.standard_normal(24) * 0.1
    x = rng.standard_normal((2, 4, 8))
    kw = {}
    if case == "causal_kpm":
        kw = {"is_causal": True, "key_padding_mask": np.array([[0, 0, 0, 0], [0, 0, 1, 1]], bool)}
    elif case == "mask3d":
        kw = {"attn_mask": rng.standard_normal((4, 4, 4))}
    fastmod.gradcheck(m, x, forward_kwargs=kw)


def test_gradcheck_cross_attention(rng):
    m = nn.MultiheadAttention(8, 2, dtype=np.float64)
    fastmod.gradcheck(m, rng.standard_normal((2, 3, 8)), rng.standard_normal((2, 5, 8)),
                      rng.standard_normal((2, 5, 8)))


# ------------------------------------------------------------------ properties
def test_attention_rows_sum_to_one(dtype, rng):
    m = nn.MultiheadAttention(E, H, dtype=dtype)
    x = (3 * rng.standard_normal((N, T, E))).astype(dtype)
    for kw in ({}, {"is_causal": True}):
        _, w = m(x, need_weights=True, average_attn_weights=False, **kw)
        assert w.shape == (N, H, T, T) and (w >= 0).all()
        np.testing.assert_allclose(w.sum(-1), 1, rtol=1e-5 if dtype == np.float32 else 1e-12)
        if kw:
            assert not w[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]].any()


def test_softmax_is_stable_for_large_scores():
    m = nn.MultiheadAttention(4, 1, dtype=np.float32)
    m.in_proj_weight.data[:] = 1e3 * np.eye(12, 4)     # scores ~ 1e6
    x = np.random.default_rng(0).standard_normal((1, 5, 4)).astype(np.float32)
    y, w = m(x, need_weights=True)
    assert np.isfinite(y).all() and np.isfinite(w).all()


def test_permutation_equivariance(dtype, rng):
    """Without a mask, permuting the tokens permutes the outputs (and input gradients)."""
    m = nn.MultiheadAttention(E, H, dtype=dtype)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    perm = rng.permutation(T)
    y = m(x)
    g = rng.standard_normal(y.shape).astype(dtype)
    dx = m.backward(g)
    yp = m(x[:, perm])
    dxp = m.backward(g[:, perm])
    assert_close(yp, y[:, perm], dtype)
    assert_close(dxp, dx[:, perm], dtype)


def test_fully_masked_query_gives_zero_attention():
    m = nn.MultiheadAttention(8, 2, bias=False)
    x = np.random.default_rng(0).standard_normal((1, 3, 8)).astype(np.float32)
    mask = np.zeros((3, 3), bool)
    mask[1] = True                                   # query 1 may attend nothing
    y, w = m(x, attn_mask=mask, need_weights=True)
    assert np.isfinite(y).all() and not w[0, 1].any() and not y[0, 1].any()


def test_threads_equal_and_repeat_bit_identical(rng):
    m = nn.MultiheadAttention(64, 8)
    x = rng.standard_normal((4, 33, 64)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    res = {}
    for nt in (1, 2, 2):
        fastmod.set_num_threads(nt)
        m.zero_grad()
        y = m(x, is_causal=True)
        dx = m.backward(g)
        cur = (y, dx, m.in_proj_weight.grad.copy())
        if nt in res:
            for a, b in zip(res[nt], cur):
                np.testing.assert_array_equal(a, b)
        res[nt] = cur
    # across thread counts the float32 sums run in another order: equal within float tolerance
    # (gradients summed over N*T = 132 rows differ by ~1e-6 absolute)
    for a, b in zip(res[1], res[2]):
        assert_close(a, b, np.float32)


def test_dropout_train_eval_and_seeded_generator(rng):
    x = rng.standard_normal((2, 16, 8)).astype(np.float32)
    m = nn.MultiheadAttention(8, 2, dropout=0.5, generator=np.random.default_rng(7))
    m.eval()
    y_eval = m(x)
    np.testing.assert_array_equal(y_eval, m(x))              # eval: no dropout
    m.train()
    y1 = m(x)
    assert not np.allclose(y1, y_eval)
    m.generator = np.random.default_rng(7)
    np.testing.assert_array_equal(m(x), y1)                  # same seed -> same mask


def test_no_grad_keeps_nothing(rng):
    m = nn.MultiheadAttention(8, 2)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    with fastmod.no_grad():
        y2 = m(x)
    np.testing.assert_array_equal(m(x), y2)
    m._release_saved()
    with pytest.raises(RuntimeError, match="no saved forward state"):
        m.backward(y2)


def test_applied_twice_gives_both_gradients(rng):
    """y = m(m(x)): backward pops both saved states in order (vs finite differences)."""
    m = nn.MultiheadAttention(8, 2, dtype=np.float64)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(self.m(x))

        def backward(self, dy):
            return self.m.backward(self.m.backward(dy))

    fastmod.gradcheck(Twice(), rng.standard_normal((2, 3, 8)))


# ------------------------------------------------------------------ bad input
def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        nn.MultiheadAttention(8, 0)
    with pytest.raises(ValueError, match="dropout must be"):
        nn.MultiheadAttention(8, 2, dropout=1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.MultiheadAttention(8, 2, dtype=np.int32)


def test_bad_inputs(rng):
    m = nn.MultiheadAttention(8, 2)
    x = rng.standard_normal((2, 4, 8)).astype(np.float32)
    with pytest.raises(ValueError, match=r"expected query of shape \(N, L, 8\), got \(2, 4, 6\)"):
        m(np.zeros((2, 4, 6), np.float32))
    with pytest.raises(ValueError, match="expected query of shape"):
        m(np.zeros((4, 8), np.float32))
    with pytest.raises(TypeError, match="expected float32 query like its weights, got float64"):
        m(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"expected attn_mask of shape \(4, 4\) or \(4, 4, 4\)"):
        m(x, attn_mask=np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match=r"expected key_padding_mask of shape \(2, 4\)"):
        m(x, key_padding_mask=np.zeros((4, 2), bool))
    with pytest.raises(TypeError, match="bool or float32 attn_mask"):
        m(x, attn_mask=np.zeros((4, 4), np.float64))
    with pytest.raises(TypeError, match="masks are keyword arguments"):
        m(x, np.zeros((4, 4), bool))
    with pytest.raises(ValueError, match="both key and value"):
        m(x, x)
    with pytest.raises(ValueError, match="batch size 3"):
        m(x, np.zeros((3, 4, 8), np.float32), np.zeros((3, 4, 8), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        m(np.zeros((0, 4, 8), np.float32))
    y = m(x)
    with pytest.raises(ValueError, match="expected a gradient of shape"):
        m.backward(np.zeros((2, 4, 7), np.float32))


def test_astype_converts_everything_the_forward_checks(rng):
    """The module reads its dtype from its projections at every call (issue #13: a dtype cached
    at construction refused float64 queries after astype(np.float64))."""
    m = nn.MultiheadAttention(8, 2).astype(np.float64)
    x = rng.standard_normal((2, 3, 8))
    ref, _ = ref_mha(x, x, x, *_params(m), 2)
    np.testing.assert_allclose(m(x), ref, rtol=1e-12, atol=1e-12)
    assert m.backward(np.ones_like(x)).dtype == np.float64
    with pytest.raises(TypeError, match="expected float64 query like its weights, got float32"):
        m(x.astype(np.float32))
    m.out_proj.astype(np.float32)                   # converted alone: refused cleanly
    with pytest.raises(TypeError, match=r"Linear\(8, 8\): expected float32 input like its weights, got float64"):
        m(x)


def test_non_contiguous_input_is_copied(rng):
    m = nn.MultiheadAttention(8, 2)
    x = rng.standard_normal((4, 2, 8)).astype(np.float32)
    xt = x.transpose(1, 0, 2)
    np.testing.assert_array_equal(m(xt), m(np.ascontiguousarray(xt)))


# ------------------------------------------------------------------ kdim/vdim, add_bias_kv, add_zero_attn
def _pair_opts(dtype, seed=0, **kw):
    """torch and fastmod MHA with the same options, torch's (perturbed) weights loaded."""
    t = _torch()
    tdt = t.float32 if dtype == np.float32 else t.float64
    t.manual_seed(seed)
    tm = t.nn.MultiheadAttention(E, H, batch_first=True, **kw).to(tdt)
    with t.no_grad():
        for p in tm.parameters():
            p.add_(0.1 * t.randn_like(p))
    m = nn.MultiheadAttention(E, H, dtype=dtype, **kw)
    sd = {k: v.detach().numpy() for k, v in tm.state_dict().items()}
    assert set(m.state_dict()) == set(sd)
    m.load_state_dict(sd)
    return m, tm


def ref_mha_ext(m, x, kx, vx, mask=None, kpm=None):
    """Independent float64 reference of torch's semantics: project Q, K, V (separate or stacked
    weights), append bias_k/bias_v as one more key position, then a zero position, pad the
    masks with attended (0) columns; additive masks (T, S) and key padding (N, S) bool."""
    sd = {k: np.asarray(v, np.float64) for k, v in m.state_dict().items()}
    Ed = m.embed_dim
    if "in_proj_weight" in sd:
        wq, wk, wv = np.split(sd["in_proj_weight"], 3)
    else:
        wq, wk, wv = sd["q_proj_weight"], sd["k_proj_weight"], sd["v_proj_weight"]
    bq, bk, bv = np.split(sd.get("in_proj_bias", np.zeros(3 * Ed)), 3)
    x, kx, vx = (np.asarray(a, np.float64) for a in (x, kx, vx))
    q, k, v = x @ wq.T + bq, kx @ wk.T + bk, vx @ wv.T + bv
    n, t, S0 = x.shape[0], x.shape[1], kx.shape[1]
    add = np.zeros((t, S0)) if mask is None else np.asarray(mask, np.float64).copy()
    add = np.broadcast_to(add, (n, 1, t, S0)).copy()
    if kpm is not None:
        add[np.broadcast_to(kpm[:, None, None, :], add.shape)] = -np.inf
    cols = []
    if "bias_k" in sd:
        k = np.concatenate([k, np.broadcast_to(sd["bias_k"], (n, 1, Ed))], axis=1)
        v = np.concatenate([v, np.broadcast_to(sd["bias_v"], (n, 1, Ed))], axis=1)
        cols.append(0)
    if m.add_zero_attn:
        k = np.concatenate([k, np.zeros((n, 1, Ed))], axis=1)
        v = np.concatenate([v, np.zeros((n, 1, Ed))], axis=1)
        cols.append(0)
    add = np.concatenate([add, np.zeros((n, 1, t, len(cols)))], axis=-1)
    S, d = k.shape[1], Ed // m.num_heads
    qh = q.reshape(n, t, -1, d).transpose(0, 2, 1, 3)
    kh = k.reshape(n, S, -1, d).transpose(0, 2, 1, 3)
    vh = v.reshape(n, S, -1, d).transpose(0, 2, 1, 3)
    p = ref_softmax(qh @ kh.transpose(0, 1, 3, 2) / math.sqrt(d) + add)
    ctx = (p @ vh).transpose(0, 2, 1, 3).reshape(n, t, Ed)
    return ctx @ sd["out_proj.weight"].T + sd.get("out_proj.bias", 0), p


OPTS = [dict(add_bias_kv=True), dict(add_zero_attn=True),
        dict(add_bias_kv=True, add_zero_attn=True), dict(kdim=5, vdim=7),
        dict(kdim=5, vdim=E, add_bias_kv=True, add_zero_attn=True, bias=False)]
OPT_IDS = ["bias_kv", "zero_attn", "both", "kdim_vdim", "all"]


def _kv_inputs(m, dtype, rng, S=9):
    x = rng.standard_normal((N, T, E)).astype(dtype)
    kx = rng.standard_normal((N, S, m.kdim)).astype(dtype)
    vx = rng.standard_normal((N, S, m.vdim)).astype(dtype)
    return x, kx, vx


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("kw", OPTS, ids=OPT_IDS)
def test_options_match_reference_and_torch_cross(dtype, rng, kw):
    m, tm = _pair_opts(dtype, **kw)
    x, kx, vx = _kv_inputs(m, dtype, rng)
    kpm = np.zeros((N, 9), bool)
    kpm[1, 5:] = True
    mask = rng.standard_normal((T, 9)).astype(dtype)
    ref, p = ref_mha_ext(m, x, kx, vx, mask, kpm)
    y, w = m(x, kx, vx, attn_mask=mask, key_padding_mask=kpm, need_weights=True,
             average_attn_weights=False)
    assert_close(y, ref, dtype)
    assert_close(w, p, dtype)
    assert w.shape[-1] == 9 + kw.get("add_bias_kv", False) + kw.get("add_zero_attn", False)
    _run_both(m, tm, dtype, rng, [x, kx, vx],
              mask_kw={"attn_mask": mask, "key_padding_mask": kpm})


@pytest.mark.parametrize("kw", OPTS[:3], ids=OPT_IDS[:3])
def test_options_torch_parity_self_attention(dtype, rng, kw, threads):
    m, tm = _pair_opts(dtype, **kw)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    kpm = np.zeros((N, T), bool)
    kpm[0, -2:] = True
    ref, _ = ref_mha_ext(m, x, x, x, kpm=kpm)
    assert_close(m(x, key_padding_mask=kpm), ref, dtype)
    _run_both(m, tm, dtype, rng, [x], mask_kw={"key_padding_mask": kpm})


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("kw", OPTS[:3], ids=OPT_IDS[:3])
def test_options_causal_matches_torch_with_explicit_mask(dtype, rng, kw):
    """is_causal (fastmod) = torch given the causal attn_mask; the appended positions stay
    visible to every query, as torch pads the mask with zeros. (Torch's fused path -- no key
    padding mask, no weights -- instead hides them behind its T x (T+1) causal mask; a
    key_padding_mask of all False selects torch's padded-mask path here.)"""
    m, tm = _pair_opts(dtype, **kw)
    x = rng.standard_normal((N, T, E)).astype(dtype)
    tmask = torch.nn.Transformer.generate_square_subsequent_mask(
        T, dtype=torch.float32 if dtype == np.float32 else torch.float64)
    kpm = np.zeros((N, T), bool)
    _run_both(m, tm, dtype, rng, [x], mask_kw={"is_causal": True},
              t_mask_kw={"attn_mask": tmask, "is_causal": True,
                         "key_padding_mask": torch.from_numpy(kpm)})


@pytest.mark.parametrize("kw", OPTS, ids=OPT_IDS)
def test_options_gradcheck(rng, kw):
    m = nn.MultiheadAttention(8, 2, dtype=np.float64, **kw)
    if m.in_proj_bias is not None:
        m.in_proj_bias.data[:] = rng.standard_normal(24) * 0.1
    S = 5
    inputs = (rng.standard_normal((2, 3, 8)), rng.standard_normal((2, S, m.kdim)),
              rng.standard_normal((2, S, m.vdim)))
    fastmod.gradcheck(m, *inputs, forward_kwargs={
        "key_padding_mask": np.array([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]], bool)})
    if m._qkv_same_embed_dim:
        fastmod.gradcheck(m, inputs[0], forward_kwargs={"is_causal": True})


def test_options_state_dict_names_and_init_like_torch():
    t = _torch()
    m = nn.MultiheadAttention(E, H, kdim=5, vdim=7, add_bias_kv=True)
    tm = t.nn.MultiheadAttention(E, H, kdim=5, vdim=7, add_bias_kv=True)
    sd, tsd = m.state_dict(), tm.state_dict()
    assert list(sd) == list(tsd)
    for k in sd:
        assert sd[k].shape == tuple(tsd[k].shape), k
    assert "in_proj_weight" not in sd
    assert repr(m).splitlines()[0] == "MultiheadAttention(16, 4, add_bias_kv=True, kdim=5, vdim=7"
    # xavier_normal_ on (1, 1, E): std sqrt(2 / (E + E)); xavier_uniform_ on (E, kdim)
    big = nn.MultiheadAttention(256, 4, add_bias_kv=True, kdim=64)
    assert abs(big.bias_k.data.std() - math.sqrt(1 / 256)) < 0.3 * math.sqrt(1 / 256)
    bound = math.sqrt(6 / (256 + 64))
    assert np.abs(big.k_proj_weight.data).max() <= bound


def test_options_bad_input(rng):
    m = nn.MultiheadAttention(8, 2, kdim=4, vdim=6)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="kdim=4 and vdim=6 are not embed_dim=8: pass key and value"):
        m(x)
    with pytest.raises(ValueError, match=r"expected key of shape \(N, L, 4\), got \(2, 5, 8\)"):
        m(x, np.zeros((2, 5, 8), np.float32), np.zeros((2, 5, 6), np.float32))
    with pytest.raises(ValueError, match=r"expected value of shape \(N, L, 6\)"):
        m(x, np.zeros((2, 5, 4), np.float32), np.zeros((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="kdim must be a positive integer"):
        nn.MultiheadAttention(8, 2, kdim=0)
    with pytest.raises(ValueError, match="add_bias_kv must be a bool"):
        nn.MultiheadAttention(8, 2, add_bias_kv="yes")
    m2 = nn.MultiheadAttention(8, 2, add_bias_kv=True)
    with pytest.raises(ValueError, match=r"expected key_padding_mask of shape \(2, 3\)"):
        m2(x, key_padding_mask=np.zeros((2, 4), bool))          # masks cover the given keys


@pytest.mark.parametrize("T, bad", [(40, 3), (40, 37), (13, 12)])   # a vector lane, the tail
def test_nan_scores_propagate_in_every_lane(T, bad):
    """A NaN key makes every output of its batch NaN (as torch) whether the softmax meets it in
    a vector lane or the scalar tail: exp of NaN is NaN at every level, never 0 or a cast to int."""
    att = nn.MultiheadAttention(16, 2)
    x = np.random.default_rng(0).standard_normal((2, T, 16)).astype(np.float32)
    x[0, bad, 5] = np.nan
    y = att(x)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()


@pytest.mark.parametrize("T,S,D,H", [(64, 64, 32, 8), (13, 29, 5, 3), (1, 70, 24, 2), (40, 1, 17, 1)])
def test_attention_core_against_float64_reference(T, S, D, H, threads, rng):
    """The attention kernel's per-head products (float32 at the vector levels: K_h transposed
    and scaled, then fastmod's GEMM kernel for Q K^T and P V; float64 and the scalar level:
    BLAS) against a float64 NumPy softmax(Q K^T / sqrt(D)) V, on head and key counts that fill
    no vector (q, k, v read as strided views of one [Q | K | V] array, as the layer does)."""
    from fastmod._kernels import attention as ka
    N, E = 2, H * D
    for dt in (np.float32, np.float64):
        qkv = rng.standard_normal((N * max(T, S), 3 * E)).astype(dt)
        q = qkv[:N * T].reshape(N, T, 3 * E)[..., :E]
        k = qkv[:N * S].reshape(N, S, 3 * E)[..., E:2 * E]
        v = qkv[:N * S].reshape(N, S, 3 * E)[..., 2 * E:]
        ctx = np.full((N, T, E), np.nan, dt)
        P = np.empty((N, H, T, S), dt)
        ka.attention_forward(ctx, P, qkv, qkv[:, E:], qkv[:, 2 * E:], None, 0, None, N, H, T, S,
                             D, 3 * E, 3 * E, 3 * E, E, 1 / math.sqrt(D), False, 0.0, 0)
        sh = lambda a, L: a.astype(np.float64).reshape(N, L, H, D).transpose(0, 2, 1, 3)
        sc = sh(q, T) @ sh(k, S).transpose(0, 1, 3, 2) / math.sqrt(D)
        p = np.exp(sc - sc.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        want = (p @ sh(v, S)).transpose(0, 2, 1, 3).reshape(N, T, E)
        assert_close(P, p, dt)
        assert_close(ctx, want, dt)
