"""Attention (the seed's "Transformer Modules"): scaled dot-product attention and
multi-head attention, forward and backward on one Cython kernel (fastmod._kernels.attention)."""
import math

import numpy as np

from fastmod import _runtime
from fastmod._kernels import attention as _ka
from fastmod._kernels import linear as _kl
from fastmod._runtime import STATE
from fastmod.nn import init
from fastmod._validate import boolean, finite_float, positive_int
from fastmod.nn.linear import Linear
from fastmod.nn.module import aligned_empty, Module, Parameter, as_float_dtype, c_array, grad_buffer_of


def _additive_mask(mask, dtype, shapes, who, name, bool_true_masks=True):
    """A bool or float mask -> a C-contiguous additive float mask of `dtype` (or None).

    bool: True = this position may NOT be attended (torch.nn.MultiheadAttention's convention;
    bool_true_masks=False flips it, as F.scaled_dot_product_attention's True = may attend).
    float: added to the scores (use -inf to mask). `shapes` lists the accepted shapes.
    """
    if mask is None:
        return None
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"{who}: expected {name} to be a numpy.ndarray (bool or {dtype}), "
                        f"got {type(mask).__name__}")
    if mask.shape not in shapes:
        expected = " or ".join(str(s) for s in shapes)
        raise ValueError(f"{who}: expected {name} of shape {expected}, got {mask.shape}")
    if mask.dtype == np.bool_:
        blocked = mask if bool_true_masks else ~mask
        out = np.zeros(mask.shape, dtype)
        out[blocked] = -np.inf
        return out
    if mask.dtype != dtype:
        raise TypeError(f"{who}: expected a bool or {dtype} {name} (like the query), got {mask.dtype}")
    return c_array(mask)


def _drop_seed(generator):
    g = generator if generator is not None else _runtime.default_generator()
    return int(g.integers(0, 2 ** 63, dtype=np.int64))


class MultiheadAttention(Module):
    """MHA(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V),
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V  (the seed's "Multi-Head Attention").

    torch.nn.MultiheadAttention's parameters, names and initialization: `in_proj_weight` (3E, E)
    holds W^Q, W^K, W^V stacked (xavier_uniform), `in_proj_bias` (3E,) zeros, `out_proj` a
    Linear(E, E) with zero bias; d_k = E / num_heads and the scale is 1/sqrt(d_k). For
    self-attention Q, K and V come from one GEMM with the stacked weight, and the heads are read
    and written in place (no split/merge copies). The attention probabilities (N, H, T, S) are the
    only array of that size kept for backward; dropout on them is regenerated from a seed.

    Differences from torch:
      * `m(x)` returns the output array, not torch's `(output, weights)` tuple. With
        `need_weights=True` it returns `(output, weights)`, weights averaged over heads
        (N, T, S) (or per head (N, H, T, S) with average_attn_weights=False), taken before
        dropout; backward then takes the output's gradient dy, or (dy, None) (the weights
        get no gradient).
      * `is_causal=True` alone applies the causal mask (torch requires attn_mask with it).
        With add_bias_kv / add_zero_attn the appended key positions stay visible to every
        query (torch's result when it merges masks; its fused path hides them).
      * A query whose keys are all masked attends to nothing (zero output row); torch gives NaN.

    Args:
        embed_dim: E, the model width (divisible by num_heads).
        num_heads: H.
        dropout: dropout probability on the attention weights (training only).
        bias: learn in_proj_bias and out_proj.bias (default True).
        add_bias_kv: learn bias_k, bias_v (1, 1, E), appended to the projected keys/values as
            one more position (S + 1), as torch.
        add_zero_attn: append a zero key/value position (after bias_kv's), as torch.
        kdim, vdim: feature sizes of key and value (default E). When either differs from E the
            projections are separate parameters q_proj_weight (E, E), k_proj_weight (E, kdim),
            v_proj_weight (E, vdim), as torch (no in_proj_weight), and key/value must be given.
        batch_first: inputs (N, T, E) (default True); False takes (T, N, E) (transposed copies).
        dtype: float32 (default) or float64.
        generator: numpy Generator for dropout (default: fastmod's, see fastmod.manual_seed).

    Call:
        m(x, attn_mask=None, is_causal=False, key_padding_mask=None) — self-attention;
        m(query, key, value, ...) — attention of query over key/value (backward returns
        (dquery, dkey, dvalue)). Masks: attn_mask (T, S) or (N*H, T, S), key_padding_mask
        (N, S); bool (True = may not attend, as torch) or additive float of the query's dtype.

    Shape: query (N, T, E), key (N, S, kdim), value (N, S, vdim) -> (N, T, E).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.MultiheadAttention(64, 4)(np.zeros((2, 10, 64), np.float32)).shape
        (2, 10, 64)
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=True, dtype=np.float32,
                 generator=None):
        super().__init__()
        who = "MultiheadAttention"
        E = self.embed_dim = positive_int(embed_dim, f"{who}: embed_dim")
        H = self.num_heads = positive_int(num_heads, f"{who}: num_heads")
        if E % H:
            raise ValueError(f"{who}: embed_dim ({E}) must be divisible by num_heads ({H})")
        self.head_dim = E // H
        self.dropout = finite_float(dropout, f"{who}: dropout", 0.0, 1.0, high_open=True)
        self.batch_first = boolean(batch_first, f"{who}: batch_first")
        boolean(bias, f"{who}: bias")
        self.kdim = E if kdim is None else positive_int(kdim, f"{who}: kdim")
        self.vdim = E if vdim is None else positive_int(vdim, f"{who}: vdim")
        self._qkv_same_embed_dim = self.kdim == E and self.vdim == E
        self.add_zero_attn = boolean(add_zero_attn, f"{who}: add_zero_attn")
        dt = as_float_dtype(dtype, f"{who}: dtype")
        self.generator = generator
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(aligned_empty((3 * E, E), dt))
        else:                                   # torch's names and shapes for kdim/vdim != E
            self.in_proj_weight = None
            self.q_proj_weight = Parameter(aligned_empty((E, E), dt))
            self.k_proj_weight = Parameter(aligned_empty((E, self.kdim), dt))
            self.v_proj_weight = Parameter(aligned_empty((E, self.vdim), dt))
        self.in_proj_bias = Parameter(aligned_empty(3 * E, dt)) if bias else None
        if boolean(add_bias_kv, f"{who}: add_bias_kv"):
            self.bias_k = Parameter(aligned_empty((1, 1, E), dt))
            self.bias_v = Parameter(aligned_empty((1, 1, E), dt))
        else:
            self.bias_k = self.bias_v = None
        self.out_proj = Linear(E, E, bias=bias, dtype=dt)
        self.reset_parameters()

    def reset_parameters(self):
        """torch's: xavier_uniform_ on the input projections, zero biases, xavier_normal_ on
        bias_k/bias_v; out_proj.weight keeps Linear's default (kaiming_uniform, a=sqrt(5))."""
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            for p in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(p)
        self.out_proj.reset_parameters()
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
            init.xavier_normal_(self.bias_v)

    def extra_repr(self):
        s = f"{self.embed_dim}, {self.num_heads}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.in_proj_bias is None:
            s += ", bias=False"
        if self.bias_k is not None:
            s += ", add_bias_kv=True"
        if self.add_zero_attn:
            s += ", add_zero_attn=True"
        if self.kdim != self.embed_dim:
            s += f", kdim={self.kdim}"
        if self.vdim != self.embed_dim:
            s += f", vdim={self.vdim}"
        if not self.batch_first:
            s += ", batch_first=False"
        return s

    def _projections(self):
        """[(weight Parameter, row slice or None)] for Q, K, V: slices of in_proj_weight, or
        the separate q/k/v_proj_weight (kdim/vdim != E)."""
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            return [(self.in_proj_weight, slice(i * E, (i + 1) * E)) for i in range(3)]
        return [(self.q_proj_weight, None), (self.k_proj_weight, None),
                (self.v_proj_weight, None)]

    # -- input checks ---------------------------------------------------------------------------
    def _dtype(self):
        """The dtype of the input projections (read at each call: astype converts them)."""
        p = self.in_proj_weight if self._qkv_same_embed_dim else self.q_proj_weight
        return p.data.dtype

    def _check_seq(self, x, name, dt, n=None, E=None):
        if isinstance(x, np.ndarray) and x.dtype == np.bool_:
            raise TypeError(f"{self._short_repr()}: got a bool array as {name}; masks are "
                            f"keyword arguments (attn_mask=..., key_padding_mask=...)")
        x = self._check_dtype(x, dt, name)
        E = self.embed_dim if E is None else E
        lead = "N, L" if self.batch_first else "L, N"
        if x.ndim != 3 or x.shape[2] != E:
            raise ValueError(f"{self._short_repr()}: expected {name} of shape ({lead}, {E}), "
                             f"got {x.shape}")
        if not self.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        if n is not None and x.shape[0] != n:
            raise ValueError(f"{self._short_repr()}: {name} has batch size {x.shape[0]}, the "
                             f"query has {n}")
        return x

    def _masks(self, attn_mask, key_padding_mask, N, T, S, dt):
        who, H = self._short_repr(), self.num_heads
        am = _additive_mask(attn_mask, dt, [(T, S), (N * H, T, S)], who, "attn_mask")
        kpm = _additive_mask(key_padding_mask, dt, [(N, S)], who, "key_padding_mask")
        stride = 0 if am is None or am.ndim == 2 else T * S
        return am, stride, kpm

    # -- forward / backward ---------------------------------------------------------------------
    def forward(self, query, key=None, value=None, *, attn_mask=None, is_causal=False,
                key_padding_mask=None, need_weights=False, average_attn_weights=True):
        E, H, D = self.embed_dim, self.num_heads, self.head_dim
        dt = self._dtype()
        b = None if self.in_proj_bias is None else self.in_proj_bias.data
        boolean(is_causal, f"{self._short_repr()}: is_causal")
        for name, a in (("key", key), ("value", value)):
            if isinstance(a, np.ndarray) and a.dtype == np.bool_:
                raise TypeError(f"{self._short_repr()}: got a bool array as {name}; masks are "
                                f"keyword arguments (attn_mask=..., key_padding_mask=...)")
        if (key is None) != (value is None):
            raise ValueError(f"{self._short_repr()}: pass both key and value (cross-attention) "
                             "or neither (self-attention)")
        self_attn = key is None
        if self_attn and not self._qkv_same_embed_dim:
            raise ValueError(f"{self._short_repr()}: kdim={self.kdim} and vdim={self.vdim} are "
                             f"not embed_dim={E}: pass key and value")
        x = self._check_seq(query, "query", dt)
        N, T = x.shape[0], x.shape[1]
        extra = (self.bias_k is not None) + self.add_zero_attn      # appended key positions
        if self_attn and extra == 0:
            S0 = S = T
            qkv = np.empty((N * T, 3 * E), dt)                  # [Q | K | V] from one GEMM
            _kl.linear_forward(qkv, x.reshape(N * T, E), self.in_proj_weight.data, b)
            q, k, v, ld = qkv, qkv[:, E:], qkv[:, 2 * E:], 3 * E
            inputs = (x,)
        else:
            if self_attn:
                kx = vx = x
                inputs = (x,)
            else:
                kx = self._check_seq(key, "key", dt, N, self.kdim)
                vx = self._check_seq(value, "value", dt, N, self.vdim)
                if vx.shape[1] != kx.shape[1]:
                    raise ValueError(f"{self._short_repr()}: key and value must have the same "
                                     f"length, got {kx.shape[1]} and {vx.shape[1]}")
                inputs = (x, kx, vx)
            S0 = kx.shape[1]
            S = S0 + extra
            q = np.empty((N * T, E), dt)
            k, v = np.empty((N, S, E), dt), np.empty((N, S, E), dt)
            for i, ((p, rows), src, dst) in enumerate(zip(self._projections(), (x, kx, vx),
                                                        (q, k, v))):
                w = p.data if rows is None else p.data[rows]
                bi = None if b is None else b[i * E:(i + 1) * E]
                if i == 0 or extra == 0:
                    _kl.linear_forward(dst.reshape(-1, E), src.reshape(-1, src.shape[2]), w, bi)
                else:                                           # project, then append
                    part = np.empty((N * S0, E), dt)
                    _kl.linear_forward(part, src.reshape(-1, src.shape[2]), w, bi)
                    dst[:, :S0] = part.reshape(N, S0, E)
                    if self.bias_k is not None:
                        dst[:, S0] = (self.bias_k if i == 1 else self.bias_v).data[0, 0]
                    if self.add_zero_attn:
                        dst[:, S - 1] = 0
            k, v, ld = k.reshape(N * S, E), v.reshape(N * S, E), E
        am, am_stride, kpm = self._masks(attn_mask, key_padding_mask, N, T, S0, dt)
        causal = is_causal
        if extra:
            am, am_stride, kpm = self._extend_masks(am, kpm, is_causal, T, S0, extra, dt)
            causal = False                                      # now part of am
        drop = self.dropout if self.training else 0.0
        seed = _drop_seed(self.generator) if drop > 0 else 0
        keep = STATE.grad_enabled
        P = np.empty((N, H, T, S), dt) if keep or need_weights else None
        ctx = np.empty((N, T, E), dt)                           # heads' outputs, concatenated
        _ka.attention_forward(ctx, P, q, k, v, am, am_stride, kpm, N, H, T, S, D, ld, ld, ld, E,
                              1.0 / math.sqrt(D), causal, drop, seed)
        out = self.out_proj(ctx)
        # for backward: the projection inputs, Q/K/V (packed or separate), P, dropout's seed,
        # whether forward returned (output, weights)
        self._save(inputs, q, k, v, ld, P, drop, seed, S0, need_weights)
        if not self.batch_first:
            out = np.ascontiguousarray(out.transpose(1, 0, 2))
        if need_weights:
            weights = P.mean(axis=1) if average_attn_weights else P.copy()
            return out, weights
        return out

    @staticmethod
    def _extend_masks(am, kpm, is_causal, T, S0, extra, dt):
        """Masks for S0 keys -> masks for S0 + extra (bias_kv / zero positions: attended, as
        torch pads them with zeros). A causal mask becomes explicit (over the S0 keys)."""
        if is_causal:
            causal = np.where(np.arange(S0)[None, :] > np.arange(T)[:, None], -np.inf, 0)
            am = causal.astype(dt) if am is None else am + causal.astype(dt)
        if am is not None:
            am = np.ascontiguousarray(np.concatenate(
                (am, np.zeros(am.shape[:-1] + (extra,), dt)), axis=-1))
        if kpm is not None:
            kpm = np.ascontiguousarray(np.concatenate(
                (kpm, np.zeros((kpm.shape[0], extra), dt)), axis=1))
        stride = 0 if am is None or am.ndim == 2 else am.shape[1] * am.shape[2]
        return am, stride, kpm

    def backward(self, dy, need_input_grad=True):
        inputs, q, k, v, ld, P, drop, seed, S0, need_weights = self._saved()
        E, H, D = self.embed_dim, self.num_heads, self.head_dim
        N, _, T, S = P.shape
        dt = P.dtype
        if need_weights and isinstance(dy, tuple):              # (d out, None) for (out, weights)
            dy = self._first_output_grad(dy, ("output", "attention weights"), "they take none")
        if not self.batch_first:
            dy = self._check_grad(dy, (T, N, E), dt)
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
        else:
            dy = self._check_grad(dy, (N, T, E), dt)
        dctx = self.out_proj.backward(dy)
        packed = ld == 3 * E
        if packed:                                              # views of one (N*T, 3E)
            dqkv = np.empty((N * T, 3 * E), dt)
            dq, dk, dv = dqkv, dqkv[:, E:], dqkv[:, 2 * E:]
        else:
            dq, dk, dv = np.empty_like(q), np.empty_like(k), np.empty_like(v)
        _ka.attention_backward(dq, dk, dv, dctx, P, q, k, v, N, H, T, S, D, ld, ld, ld, E,
                               1.0 / math.sqrt(D), drop, seed)
        db, acc_b = grad_buffer_of(self.in_proj_bias)
        if packed:
            wp = self.in_proj_weight
            dw, acc_w = grad_buffer_of(wp)
            x2 = inputs[0].reshape(N * T, E)
            dx = np.empty_like(x2) if need_input_grad else None
            _kl.linear_backward(dx, dw, db, dqkv, x2, wp.data, acc_w, acc_b)
            return self._out_grad(dx, N, T) if need_input_grad else None
        if S != S0:                                             # appended positions
            dk, dv = dk.reshape(N, S, E), dv.reshape(N, S, E)
            if self.bias_k is not None:
                for p, d in ((self.bias_k, dk), (self.bias_v, dv)):
                    g, acc = grad_buffer_of(p)
                    if g is not None:
                        total = d[:, S0].sum(axis=0, dtype=np.float64).astype(dt)
                        if acc:
                            g[0, 0] += total
                        else:
                            g[0, 0] = total
            dk = np.ascontiguousarray(dk[:, :S0]).reshape(N * S0, E)
            dv = np.ascontiguousarray(dv[:, :S0]).reshape(N * S0, E)
        srcs = inputs if len(inputs) == 3 else inputs * 3
        if self._qkv_same_embed_dim:                            # one buffer, asked for once
            dw_all, acc_all = grad_buffer_of(self.in_proj_weight)
        grads = []
        for i, ((p, rows), dpart, src) in enumerate(zip(self._projections(), (dq, dk, dv), srcs)):
            if rows is None:
                dw, acc_w = grad_buffer_of(p)
            else:
                dw, acc_w = (None if dw_all is None else dw_all[rows]), acc_all
            x2 = src.reshape(-1, src.shape[2])
            dx = np.empty_like(x2) if need_input_grad else None
            _kl.linear_backward(dx, dw, None if db is None else db[i * E:(i + 1) * E], dpart,
                                x2, p.data if rows is None else p.data[rows], acc_w, acc_b)
            grads.append(self._out_grad(dx, N, src.shape[1]) if need_input_grad else None)
        if not need_input_grad:
            return None
        if len(inputs) == 1:                                    # self-attention: x fed Q, K, V
            return grads[0] + grads[1] + grads[2]
        return tuple(grads)

    def _out_grad(self, dx, N, L):
        dx = dx.reshape(N, L, dx.shape[1])
        return dx if self.batch_first else np.ascontiguousarray(dx.transpose(1, 0, 2))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, generator=None):
    """softmax(Q K^T * scale + mask) V for (N, H, T, D) / (N, H, S, D) arrays (inference: no
    backward; use MultiheadAttention for training). Like torch.nn.functional's, a bool attn_mask
    here means True = MAY attend (the opposite of MultiheadAttention's bool masks); attn_mask
    has shape (T, S) or (N, H, T, S). scale defaults to 1/sqrt(D).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> q = np.zeros((2, 4, 10, 16), np.float32)
        >>> nn.scaled_dot_product_attention(q, q, q).shape
        (2, 4, 10, 16)
    """
    who = "scaled_dot_product_attention"
    arrs = []
    for name, a in (("query", query), ("key", key), ("value", value)):
        if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
            raise TypeError(f"{who}: expected {name} a float32/float64 numpy.ndarray, got "
                            f"{getattr(a, 'dtype', type(a).__name__)}")
        if a.ndim != 4 or a.size == 0:
            raise ValueError(f"{who}: expected a non-empty {name} of shape (N, H, L, D), got {a.shape}")
        arrs.append(c_array(a))
    q, k, v = arrs
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"{who}: query, key and value must share a dtype, got {q.dtype}, "
                        f"{k.dtype}, {v.dtype}")
    N, H, T, D = q.shape
    S = k.shape[2]
    if k.shape != (N, H, S, D) or v.shape != (N, H, S, D):
        raise ValueError(f"{who}: expected key and value of shape {(N, H, S, D)} for query "
                         f"{q.shape}, got {k.shape} and {v.shape}")
    am = _additive_mask(attn_mask, q.dtype, [(T, S), (N, H, T, S)], who, "attn_mask",
                        bool_true_masks=False)
    p = finite_float(dropout_p, f"{who}: dropout_p", 0.0, 1.0, high_open=True)
    seed = _drop_seed(generator) if p > 0 else 0
    sc = 1.0 / math.sqrt(D) if scale is None else finite_float(scale, f"{who}: scale")
    out = np.empty((N, H, T, D), q.dtype)
    # (N, H, L, D) is N*H "batches" of one head each, rows of stride D
    _ka.attention_forward(out, None, q, k, v, am, 0 if am is None or am.ndim == 2 else T * S,
                          None, N * H, 1, T, S, D, D, D, D, D, sc, boolean(is_causal, f"{who}: is_causal"),
                          p, seed)
    return out
