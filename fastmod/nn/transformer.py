"""TransformerEncoderLayer, the seed's "Transformer Block" (self-attention + feed-forward,
residual connections, layer normalization), and TransformerEncoder, a stack of them; torch's
names."""
import numpy as np

from fastmod._validate import boolean, finite_float, positive_int
from fastmod._runtime import STATE
from fastmod.nn.activation import GELU, make_activation
from fastmod.nn.attention import MultiheadAttention
from fastmod.nn.linear import Linear
from fastmod.nn.misc import Dropout
from fastmod.nn.module import Module, as_float_dtype
from fastmod.nn.normalization import LayerNorm


class TransformerEncoderLayer(Module):
    """Post-LN (default): x = norm1(x + SA(x)); y = norm2(x + FF(x)); pre-LN (norm_first=True):
    x = x + SA(norm1(x)); y = x + FF(norm2(x)), with SA = self_attn (MultiheadAttention) and
    FF(x) = linear2(dropout(activation(linear1(x)))) (the seed's "Transformer Block").

    Note: the seed writes TransformerBlock(x) = LN2(x + FFN(LN1(x + MHA(x)))), adding the block's
    input x in the second residual where the standard post-LN block (Vaswani et al.; torch) adds
    LN1's output. This layer implements the standard block, as SPEC.md asks: the second residual
    adds z = LN1(x + MHA(x)), i.e. LN2(z + FFN(z)).

    Parameters and child names are torch's (self_attn, linear1, linear2, norm1, norm2, dropout,
    dropout1, dropout2), so state_dicts move both ways. Dropout (on the attention weights, after
    the activation, and on both residual branches) is active in training mode only.

    Args:
        d_model: E, the model width.
        nhead: attention heads (d_model must be divisible by nhead).
        dim_feedforward: hidden width of the feed-forward network (default 2048).
        dropout: dropout probability (default 0.1).
        activation: 'relu' (default), 'gelu', or a Module class.
        layer_norm_eps: eps of both LayerNorms (default 1e-5).
        batch_first: (N, T, E) inputs (default True; False takes (T, N, E)).
        norm_first: pre-LN instead of post-LN (default False).
        bias: biases in the Linear and LayerNorm layers (default True).
        dtype: float32 (default) or float64.
        generator: numpy Generator for the dropouts (default: fastmod's).

    Call: layer(src, src_mask=None, src_key_padding_mask=None, is_causal=False), the masks as
    MultiheadAttention's attn_mask / key_padding_mask. Returns the output array.

    Shape: src (N, T, E) -> (N, T, E).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0)
        >>> layer(np.zeros((2, 5, 32), np.float32)).shape
        (2, 5, 32)
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=True, norm_first=False, bias=True,
                 dtype=np.float32, generator=None):
        super().__init__()
        who = "TransformerEncoderLayer"
        self.d_model = positive_int(d_model, f"{who}: d_model")
        self.nhead = positive_int(nhead, f"{who}: nhead")
        self.dim_feedforward = positive_int(dim_feedforward, f"{who}: dim_feedforward")
        p = finite_float(dropout, f"{who}: dropout", 0.0, 1.0, high_open=True)
        self.layer_norm_eps = finite_float(layer_norm_eps, f"{who}: layer_norm_eps", 0.0, low_open=True)
        self.batch_first = boolean(batch_first, f"{who}: batch_first")
        self.norm_first = boolean(norm_first, f"{who}: norm_first")
        boolean(bias, f"{who}: bias")
        dt = as_float_dtype(dtype, f"{who}: dtype")
        if self.d_model % self.nhead:
            raise ValueError(f"{who}: d_model ({self.d_model}) must be divisible by nhead ({self.nhead})")
        self.dropout_p = p
        self.activation_name = activation if isinstance(activation, str) else getattr(
            activation, "__name__", type(activation).__name__)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=p, bias=bias, batch_first=True,
                                            dtype=dt, generator=generator)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dt)
        self.dropout = Dropout(p, generator=generator)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dt)
        self.norm1 = LayerNorm(d_model, eps=self.layer_norm_eps, bias=bias, dtype=dt)
        self.norm2 = LayerNorm(d_model, eps=self.layer_norm_eps, bias=bias, dtype=dt)
        self.dropout1 = Dropout(p, generator=generator)
        self.dropout2 = Dropout(p, generator=generator)
        self.activation = make_activation(activation, who)

    def extra_repr(self):
        s = f"{self.d_model}, {self.nhead}"
        if self.dim_feedforward != 2048:
            s += f", dim_feedforward={self.dim_feedforward}"
        if self.dropout_p != 0.1:
            s += f", dropout={self.dropout_p}"
        if self.activation_name != "relu":
            s += f", activation={self.activation_name!r}"
        if self.layer_norm_eps != 1e-5:
            s += f", layer_norm_eps={self.layer_norm_eps}"
        if not self.batch_first:
            s += ", batch_first=False"
        if self.norm_first:
            s += ", norm_first=True"
        return s

    # -- pieces ----------------------------------------------------------------------------------
    def _sa(self, x, mask_kw):
        return self.dropout1(self.self_attn(x, **mask_kw))     # a fresh array: safe to += into

    def _ff(self, x):
        if not STATE.grad_enabled and type(self.activation) is GELU and \
                self.activation.approximate == "none" and type(self.linear1) is Linear and \
                not any(m.__dict__.get("_observed") or "forward" in m.__dict__
                        for m in (self.linear1, self.activation)):
            # inference: the GELU in linear1's GEMM epilogue (its input is not kept)
            return self.dropout2(self.linear2(self.dropout(self.linear1._forward_gelu(x))))
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def _ff_backward(self, d):
        d = self.linear2.backward(self.dropout2.backward(d))
        return self.linear1.backward(self.activation.backward(self.dropout.backward(d)))

    # -- forward / backward ----------------------------------------------------------------------
    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = self._check_dtype(src, self.linear1.weight.data.dtype, "src")
        E = self.d_model
        if x.ndim != 3 or x.shape[2] != E:
            lead = "N, T" if self.batch_first else "T, N"
            raise ValueError(f"{self._short_repr()}: expected src of shape ({lead}, {E}), got {x.shape}")
        if not self.batch_first:
            x = np.ascontiguousarray(x.transpose(1, 0, 2))
        mask_kw = {"attn_mask": src_mask, "key_padding_mask": src_key_padding_mask,
                   "is_causal": is_causal}
        if self.norm_first:
            x1 = self._sa(self.norm1(x), mask_kw)
            x1 += x                                     # x1 = x + SA(LN1(x))
            y = self._ff(self.norm2(x1))
            y += x1                                     # y = x1 + FF(LN2(x1))
        else:
            h = self._sa(x, mask_kw)
            h += x
            x1 = self.norm1(h)                          # x1 = LN1(x + SA(x))
            h = self._ff(x1)
            h += x1
            y = self.norm2(h)                           # y = LN2(x1 + FF(x1))
        self._save(y.shape, y.dtype)
        return y if self.batch_first else np.ascontiguousarray(y.transpose(1, 0, 2))

    def backward(self, dy, need_input_grad=True):
        shape, dtype = self._saved()
        if not self.batch_first:
            dy = self._check_grad(dy, (shape[1], shape[0], shape[2]), dtype)
            dy = np.ascontiguousarray(dy.transpose(1, 0, 2))
        dy = self._check_grad(dy, shape, dtype)
        if self.norm_first:
            dx1 = self.norm2.backward(self._ff_backward(dy))
            dx1 += dy                                   # through the residual
            dsa = self.self_attn.backward(self.dropout1.backward(dx1))
            if not need_input_grad:
                self.norm1.backward(dsa, need_input_grad=False)   # its parameters' grads only
                return None
            dx = self.norm1.backward(dsa)
            dx += dx1
        else:
            dh = self.norm2.backward(dy)
            dx1 = self._ff_backward(dh)
            dx1 += dh
            dh = self.norm1.backward(dx1)
            dsa = self.self_attn.backward(self.dropout1.backward(dh), need_input_grad)
            if not need_input_grad:
                return None
            dx = dsa
            dx += dh
        return dx if self.batch_first else np.ascontiguousarray(dx.transpose(1, 0, 2))


class TransformerEncoder(Module):
    """num_layers copies of an encoder layer applied in turn, then an optional final norm, as
    torch.nn.TransformerEncoder (children `layers.{i}` and `norm`, so state_dicts move both
    ways). Like torch, the copies are deep copies of `encoder_layer`: every layer starts with
    the same weights. A numpy Generator held by the layer is shared by the copies, not cloned
    (cloned generators would draw the same dropout masks in every layer).

    Args:
        encoder_layer: a TransformerEncoderLayer (or any module taking (src, src_mask=...,
            src_key_padding_mask=..., is_causal=...)).
        num_layers: how many copies.
        norm: a module applied to the last layer's output (e.g. LayerNorm(d_model)), or None.
        enable_nested_tensor, mask_check: accepted for torch's signature; no effect here.

    Call: encoder(src, mask=None, src_key_padding_mask=None, is_causal=False), each mask passed
    to every layer. Backward runs the layers in reverse.

    Shape: as the layer's, e.g. (N, T, E) -> (N, T, E).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0)
        >>> nn.TransformerEncoder(layer, 2)(np.zeros((2, 5, 32), np.float32)).shape
        (2, 5, 32)
    """

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True,
                 mask_check=True):
        super().__init__()
        import copy

        from fastmod.nn.containers import ModuleList

        who = "TransformerEncoder"
        if not isinstance(encoder_layer, Module):
            raise TypeError(f"{who}: expected encoder_layer to be a Module, got "
                            f"{type(encoder_layer).__name__}")
        if norm is not None and not isinstance(norm, Module):
            raise TypeError(f"{who}: expected norm to be a Module or None, got {type(norm).__name__}")
        self.num_layers = positive_int(num_layers, f"{who}: num_layers")
        boolean(enable_nested_tensor, f"{who}: enable_nested_tensor")
        boolean(mask_check, f"{who}: mask_check")
        shared = {}
        for m in encoder_layer.modules():
            for v in vars(m).values():
                if isinstance(v, np.random.Generator):
                    shared[id(v)] = v
        self.layers = ModuleList(copy.deepcopy(encoder_layer, dict(shared))
                                 for _ in range(self.num_layers))
        self.norm = norm

    def extra_repr(self):
        return f"num_layers={self.num_layers}"

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                      is_causal=is_causal)
        return x if self.norm is None else self.norm(x)

    def backward(self, dy, need_input_grad=True):
        if self.norm is not None:
            dy = self.norm.backward(dy)
        layers = list(self.layers)
        for layer in reversed(layers[1:]):
            dy = layer.backward(dy)
        return layers[0].backward(dy, need_input_grad=need_input_grad)
