"""Embedding: a learned lookup table for integer tokens."""
import math
import numbers

import numpy as np

from fastmod._kernels import embedding as _k
from fastmod.nn import init
from fastmod._validate import boolean, finite_float, positive_int
from fastmod.nn.module import aligned_empty, Module, Parameter, as_float_dtype, c_array


class Embedding(Module):
    """y[..., :] = weight[x[...], :] — row x of a (num_embeddings, embedding_dim) table.

    torch.nn.Embedding's layout and initialization (weight ~ N(0, 1), the padding_idx row
    zero). Backward scatter-adds the output gradient into weight.grad (repeated indices add
    up; the padding_idx row gets no gradient) and returns None: integer inputs have no gradient.
    Gradients are dense arrays (torch's sparse=True has no counterpart).

    Args:
        num_embeddings: V, the vocabulary size.
        embedding_dim: D.
        padding_idx: a row (negative counts from the end, as torch) whose vector stays zero
            and is not trained; None (default) for none.
        max_norm: if given, each row a forward pass looks up whose norm_type-norm exceeds
            max_norm is first rescaled in place to norm max_norm (torch: by
            max_norm / (norm + 1e-7)); the rescaling is not differentiated.
        norm_type: the p of the p-norm for max_norm (default 2; inf allowed).
        scale_grad_by_freq: divide each row's gradient by how often its id occurs in the batch.
        dtype: float32 (default) or float64.

    Shape: x (*) integer in [0, V) -> y (*, D).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.Embedding(100, 16)(np.array([[1, 2, 3]])).shape
        (1, 3, 16)
    """

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 norm_type=2.0, scale_grad_by_freq=False, dtype=np.float32, generator=None,
                 _weight=None):
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
        self.max_norm = None if max_norm is None else \
            finite_float(max_norm, "Embedding: max_norm", 0.0, high=None, low_open=True)
        if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) \
                or not (norm_type > 0):
            raise ValueError(f"Embedding: norm_type must be a positive number, got {norm_type!r}")
        self.norm_type = float(norm_type)
        self.scale_grad_by_freq = boolean(scale_grad_by_freq, "Embedding: scale_grad_by_freq")
        dt = as_float_dtype(dtype, "Embedding: dtype")
        if _weight is None:
            self.weight = Parameter(aligned_empty((V, self.embedding_dim), dt))
            self.reset_parameters(generator)
        else:
            self.weight = Parameter(np.array(_weight, dt, copy=True))

    @classmethod
    def from_pretrained(cls, embeddings, freeze=True, padding_idx=None, max_norm=None,
                        norm_type=2.0, scale_grad_by_freq=False):
        """An Embedding holding a copy of `embeddings` (V, D) (its dtype, float32 or float64),
        frozen (requires_grad False) unless freeze=False, as torch.nn.Embedding.from_pretrained.
        The padding_idx row is kept as given (not zeroed), as torch."""
        if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2 or embeddings.size == 0:
            raise ValueError("Embedding.from_pretrained: expected a non-empty 2-D numpy.ndarray "
                             f"(num_embeddings, embedding_dim), got "
                             f"{getattr(embeddings, 'shape', type(embeddings).__name__)}")
        m = cls(embeddings.shape[0], embeddings.shape[1], padding_idx, max_norm, norm_type,
                scale_grad_by_freq, dtype=embeddings.dtype, _weight=embeddings)
        m.weight.requires_grad = not boolean(freeze, "Embedding.from_pretrained: freeze")
        return m

    def reset_parameters(self, generator=None):
        init.normal_(self.weight, generator=generator)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def extra_repr(self):
        s = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            s += f", padding_idx={self.padding_idx}"
        if self.max_norm is not None:
            s += f", max_norm={self.max_norm}"
            if self.norm_type != 2:
                s += f", norm_type={self.norm_type}"
        if self.scale_grad_by_freq:
            s += ", scale_grad_by_freq=True"
        return s

    def _renorm(self, idx):
        """torch's embedding_renorm_: rows looked up whose norm exceeds max_norm are scaled to
        it, in place."""
        w = self.weight.data
        rows = np.unique(idx)
        sub = w[rows].astype(np.float64)
        p = self.norm_type
        norms = np.abs(sub).max(axis=1) if p == math.inf else \
            (np.abs(sub) ** p).sum(axis=1) ** (1.0 / p)
        big = norms > self.max_norm
        if big.any():
            scale = self.max_norm / (norms[big] + 1e-7)
            w[rows[big]] = (sub[big] * scale[:, None]).astype(w.dtype)

    def forward(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self._short_repr()}: expected a numpy.ndarray of integer token "
                            f"ids, got {type(x).__name__}")
        if x.dtype.kind not in "iu":
            raise TypeError(f"{self._short_repr()}: expected integer token ids, got {x.dtype}")
        if x.size == 0:
            raise ValueError(f"{self._short_repr()}: expected non-empty token ids, got shape {x.shape}")
        idx = c_array(x, np.int64).reshape(-1)
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= self.num_embeddings:
            bad = lo if lo < 0 else hi
            raise ValueError(f"{self._short_repr()}: token id {bad} is out of range "
                             f"[0, {self.num_embeddings})")
        if self.max_norm is not None:
            self._renorm(idx)
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
            dy2 = dy.reshape(-1, self.embedding_dim)
            if self.scale_grad_by_freq:
                counts = np.bincount(idx, minlength=self.num_embeddings)
                dy2 = (dy2 / counts[idx][:, None]).astype(dy2.dtype)
            _k.embedding_backward(dw, dy2, idx,
                                  -1 if self.padding_idx is None else self.padding_idx)
        return None
