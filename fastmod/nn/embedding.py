"""Embedding: a learned lookup table for integer tokens."""
import numbers

import numpy as np

from fastmod._kernels import embedding as _k
from fastmod.nn import init
from fastmod.nn._validate import positive_int
from fastmod.nn.module import Module, Parameter, as_float_dtype


class Embedding(Module):
    """y[..., :] = weight[x[...], :] — row x of a (num_embeddings, embedding_dim) table.

    torch.nn.Embedding's layout and initialization (weight ~ N(0, 1), the padding_idx row
    zero). Backward scatter-adds the output gradient into weight.grad (repeated indices add
    up; the padding_idx row gets no gradient) and returns None: integer inputs have no gradient.
    max_norm / sparse gradients are not supported.

    Args:
        num_embeddings: V, the vocabulary size.
        embedding_dim: D.
        padding_idx: a row (negative counts from the end, as torch) whose vector stays zero
            and is not trained; None (default) for none.
        dtype: float32 (default) or float64.

    Shape: x (*) integer in [0, V) -> y (*, D).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.Embedding(100, 16)(np.array([[1, 2, 3]])).shape
        (1, 3, 16)
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, dtype=np.float32,
                 generator=None):
        super().__init__()
        V = self.num_embeddings = positive_int(num_embeddings, "Embedding: num_embeddings")
        self.embedding_dim = positive_int(embedding_dim, "Embedding: embedding_dim")
        if padding_idx is not None:
            if isinstance(padding_idx, bool) or not isinstance(padding_idx, (numbers.Integral, np.integer)) \
                    or not -V <= padding_idx < V:
                raise ValueError(f"Embedding: padding_idx must be an int in [-{V}, {V}), "
                                 f"got {padding_idx!r}")
            padding_idx = int(padding_idx) % V
        self.padding_idx = padding_idx
        dt = as_float_dtype(dtype, "Embedding: dtype")
        self.weight = Parameter(np.empty((V, self.embedding_dim), dt))
        self.reset_parameters(generator)

    def reset_parameters(self, generator=None):
        init.normal_(self.weight, generator=generator)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        return s if self.padding_idx is None else s + f", padding_idx={self.padding_idx}"

    def forward(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self._short_repr()}: expected a numpy.ndarray of integer token "
                            f"ids, got {type(x).__name__}")
        if x.dtype.kind not in "iu":
            raise TypeError(f"{self._short_repr()}: expected integer token ids, got {x.dtype}")
        if x.size == 0:
            raise ValueError(f"{self._short_repr()}: expected non-empty token ids, got shape {x.shape}")
        idx = np.ascontiguousarray(x, dtype=np.int64).reshape(-1)
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.num_embeddings:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{self._short_repr()}: token id {bad} is out of range "
                             f"[0, {self.num_embeddings})")
        w = self.weight.data
        y = np.empty((idx.size, self.embedding_dim), w.dtype)
        _k.embedding_forward(y, w, idx)
        out_shape = x.shape + (self.embedding_dim,)
        self._save(idx, out_shape)                     # the flat ids (M,) for the scatter-add
        return y.reshape(out_shape)

    def backward(self, dy, need_input_grad=True):
        idx, out_shape = self._saved()
        w = self.weight
        dy = self._check_grad(dy, out_shape, w.data.dtype)
        if w.requires_grad:
            dw, acc = w.grad_buffer()
            if not acc:
                dw.fill(0)
            _k.embedding_backward(dw, dy.reshape(-1, self.embedding_dim), idx,
                                  -1 if self.padding_idx is None else self.padding_idx)
        return None
