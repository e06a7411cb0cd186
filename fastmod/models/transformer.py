"""transformer_classifier: the seed's Transformer (MHA + FFN blocks with LayerNorm) as a
sequence classifier: embed, N encoder layers, mean over tokens, a linear head."""
import numpy as np

from fastmod import nn
from fastmod.nn import init
from fastmod._validate import boolean, positive_int
from fastmod.nn.module import Module, Parameter, as_float_dtype


class TransformerClassifier(Module):
    """logits = head(mean_t(encoder(embed(x) + pos[:T]))).

    Token input (vocab_size given): x (N, T) integer ids -> Embedding; vector input
    (in_features given): x (N, T, in_features) -> Linear projection. A learned positional
    embedding `pos_embedding` (max_len, d_model) is added, num_layers TransformerEncoderLayers
    (`layers.{i}`) follow (pre-LN adds a final LayerNorm `norm`), then the mean over the tokens
    that are not padding, and `head` = Linear(d_model, num_classes).

    Padding: with padding_idx (tokens) the positions holding it are excluded from attention (as
    keys) and from the mean; forward also takes key_padding_mask (N, T) bool (True = padding).

    Shape: (N, T) ints or (N, T, in_features) -> (N, num_classes); T <= max_len.
    """

    def __init__(self, num_classes, vocab_size=None, in_features=None, d_model=128, nhead=4,
                 num_layers=2, dim_feedforward=None, dropout=0.1, activation="gelu",
                 max_len=512, norm_first=False, padding_idx=None, dtype=np.float32, generator=None):
        super().__init__()
        who = "transformer_classifier"
        if (vocab_size is None) == (in_features is None):
            raise ValueError(f"{who}: give exactly one of vocab_size (token input) or "
                             f"in_features (vector input)")
        self.num_classes = positive_int(num_classes, f"{who}: num_classes")
        self.d_model = d = positive_int(d_model, f"{who}: d_model")
        self.max_len = positive_int(max_len, f"{who}: max_len")
        num_layers = positive_int(num_layers, f"{who}: num_layers")
        ff = 4 * d if dim_feedforward is None else positive_int(dim_feedforward, f"{who}: dim_feedforward")
        norm_first = boolean(norm_first, f"{who}: norm_first")
        dt = as_float_dtype(dtype, f"{who}: dtype")
        self.tokens = vocab_size is not None
        if self.tokens:
            self.embed = nn.Embedding(vocab_size, d, padding_idx=padding_idx, dtype=dt,
                                      generator=generator)
            self.padding_idx = self.embed.padding_idx
        else:
            if padding_idx is not None:
                raise ValueError(f"{who}: padding_idx needs token input (vocab_size)")
            self.embed = nn.Linear(positive_int(in_features, f"{who}: in_features"), d, dtype=dt)
            self.padding_idx = None
        self.pos_embedding = Parameter(np.empty((self.max_len, d), dt))
        init.normal_(self.pos_embedding, std=0.02, generator=generator)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, nhead, ff, dropout=dropout, activation=activation,
                                       norm_first=norm_first, dtype=dt, generator=generator)
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(d, dtype=dt) if norm_first else None
        self.head = nn.Linear(d, self.num_classes, dtype=dt)

    def extra_repr(self):
        kind = f"vocab_size={self.embed.num_embeddings}" if self.tokens else \
            f"in_features={self.embed.in_features}"
        return f"num_classes={self.num_classes}, {kind}, d_model={self.d_model}"

    def forward(self, x, key_padding_mask=None):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self._short_repr()}: expected a numpy.ndarray input, got {type(x).__name__}")
        want = 2 if self.tokens else 3
        if x.ndim != want:
            shape = "(N, T) token ids" if self.tokens else f"(N, T, {self.embed.in_features})"
            raise ValueError(f"{self._short_repr()}: expected input of shape {shape}, got {x.shape}")
        N, T = x.shape[0], x.shape[1]
        if T > self.max_len:
            raise ValueError(f"{self._short_repr()}: sequence length {T} is longer than max_len "
                             f"{self.max_len}")
        if key_padding_mask is None and self.padding_idx is not None:
            key_padding_mask = x == self.padding_idx
        if key_padding_mask is not None:
            kpm = key_padding_mask
            if not isinstance(kpm, np.ndarray) or kpm.dtype != np.bool_:
                raise TypeError(f"{self._short_repr()}: expected a bool numpy.ndarray as "
                                f"key_padding_mask, got {getattr(kpm, 'dtype', type(kpm).__name__)}")
            if kpm.shape != (N, T):
                raise ValueError(f"{self._short_repr()}: expected key_padding_mask of shape "
                                 f"{(N, T)}, got {kpm.shape}")
        h = self.embed(x)
        h += self.pos_embedding.data[:T]
        for layer in self.layers:
            h = layer(h, src_key_padding_mask=key_padding_mask)
        if self.norm is not None:
            h = self.norm(h)
        # mean over the non-padding tokens: weights (N, T), 1/count where kept
        if key_padding_mask is None:
            wts = np.full((N, T), 1.0 / T, h.dtype)
        else:
            keep = ~key_padding_mask
            wts = (keep / np.maximum(keep.sum(1, keepdims=True), 1)).astype(h.dtype)
        pooled = np.einsum("nt,nte->ne", wts, h)
        self._save(wts, T)
        return self.head(pooled)

    def backward(self, dlogits, need_input_grad=True):
        wts, T = self._saved()
        dpooled = self.head.backward(dlogits)
        dh = wts[:, :, None] * dpooled[:, None, :]
        if self.norm is not None:
            dh = self.norm.backward(dh)
        for layer in reversed(list(self.layers)):
            dh = layer.backward(dh)
        pos = self.pos_embedding
        if pos.requires_grad:
            g, acc = pos.grad_buffer()
            if not acc:
                g.fill(0)
            g[:T] += dh.sum(axis=0)
        if self.tokens:
            return self.embed.backward(dh)
        return self.embed.backward(dh, need_input_grad)


def transformer_classifier(num_classes, vocab_size=None, in_features=None, d_model=128, nhead=4,
                           num_layers=2, dim_feedforward=None, dropout=0.1, activation="gelu",
                           max_len=512, norm_first=False, padding_idx=None, dtype=np.float32,
                           generator=None):
    """A Transformer sequence classifier (see TransformerClassifier): token input with
    vocab_size, or vector input with in_features; dim_feedforward defaults to 4 * d_model.

    Example:
        >>> import numpy as np
        >>> from fastmod.models import transformer_classifier
        >>> m = transformer_classifier(10, vocab_size=100, d_model=32, nhead=4, max_len=64)
        >>> m(np.zeros((8, 20), np.int64)).shape
        (8, 10)
    """
    return TransformerClassifier(num_classes, vocab_size=vocab_size, in_features=in_features,
                                 d_model=d_model, nhead=nhead, num_layers=num_layers,
                                 dim_feedforward=dim_feedforward, dropout=dropout,
                                 activation=activation, max_len=max_len, norm_first=norm_first,
                                 padding_idx=padding_idx, dtype=dtype, generator=generator)
