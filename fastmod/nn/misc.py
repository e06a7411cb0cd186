"""Shape and regularization layers: Flatten, Dropout."""
import numpy as np

from fastmod import _runtime
from fastmod._validate import boolean, finite_float
from fastmod.nn.module import Module


class Flatten(Module):
    """Join dims start_dim..end_dim into one (a view, no copy).

    Shape: (N, C, H, W) -> (N, C*H*W) with the defaults start_dim=1, end_dim=-1.
    """

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for v, n in ((start_dim, "start_dim"), (end_dim, "end_dim")):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"Flatten: {n} must be an int, got {v!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def extra_repr(self):
        return "" if (self.start_dim, self.end_dim) == (1, -1) else \
            f"start_dim={self.start_dim}, end_dim={self.end_dim}"

    def forward(self, x):
        x = self._check_array(x)
        nd = x.ndim
        s, e = self.start_dim, self.end_dim
        if not (-nd <= s < nd and -nd <= e < nd) or s % nd > e % nd:
            raise ValueError(f"{self._short_repr()}: cannot flatten dims {s}..{e} of input of shape {x.shape}")
        s, e = s % nd, e % nd
        y = x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])
        self._save(x.shape, y.shape, x.dtype)
        return y

    def backward(self, dy, need_input_grad=True):
        shape, out_shape, dtype = self._saved()
        dy = self._check_grad(dy, out_shape, dtype)
        return dy.reshape(shape) if need_input_grad else None


class Dropout(Module):
    """In training, zero each element with probability p and scale the rest by 1/(1-p);
    identity in eval mode. Draws come from fastmod's generator (fastmod.manual_seed) or the
    `generator` given. Shape: any -> same."""

    def __init__(self, p=0.5, inplace=False, generator=None):
        super().__init__()
        self.p = finite_float(p, "Dropout: p", 0.0, 1.0)
        self.inplace = boolean(inplace, "Dropout: inplace")
        if generator is not None and not callable(getattr(generator, "random", None)):
            raise ValueError(f"Dropout: generator must be a numpy Generator (or None), got {generator!r}")
        self.generator = generator

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        x = self._check_array(x)
        if not self.training or self.p == 0.0:
            self._save(None, x.shape, x.dtype)      # identity: the shape and dtype for backward
            return x
        if self.p == 1.0:
            mask = np.zeros_like(x)
        else:
            g = self.generator if self.generator is not None else _runtime.default_generator()
            keep = g.random(x.shape, dtype=np.float32 if x.dtype == np.float32 else np.float64) >= self.p
            mask = keep.astype(x.dtype)
            mask *= 1.0 / (1.0 - self.p)
        self._save(mask, x.shape, x.dtype)
        if self.inplace and x.flags.writeable:
            x *= mask
            return x
        return x * mask

    def backward(self, dy, need_input_grad=True):
        mask, shape, dtype = self._saved()
        dy = self._check_grad(dy, shape, dtype)
        if not need_input_grad:
            return None
        return dy if mask is None else dy * mask
