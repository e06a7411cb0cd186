"""Normalization layers: LayerNorm (the seed's LN-S and LN), BatchNorm1d/2d and GroupNorm.

Each is one fused forward kernel (statistics, normalize and affine) and one fused backward kernel
(input, weight and bias gradients together) in fastmod/_kernels/norm.pyx. Forward saves x and the
float64 mean and rstd = 1/sqrt(var + eps) per row / channel / group; nothing else of x's size.
Variances are biased with eps inside the square root, as torch; BatchNorm's running_var is
updated with the unbiased one.
"""
import numbers

import numpy as np

from fastmod._kernels import norm as _k
from fastmod._validate import boolean, finite_float, positive_int
from fastmod.nn.module import Module, Parameter, as_float_dtype, grad_buffer_of, unmark_grad_buffers


def _eps(value, who):
    v = finite_float(value, f"{who}: eps")
    if v <= 0:
        raise ValueError(f"{who}: eps must be > 0, got {value!r}")
    return v


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, statistics over the trailing
    len(normalized_shape) dims of each sample (biased var).

    Seed: "Layer Normalization". LN-S(z) = (z - mu) / sigma is `elementwise_affine=False`
    (with eps inside the square root); LN(z) = beta + gamma * LN-S(z) is the default, with
    gamma = `weight` (ones) and beta = `bias` (zeros).

    The seed states two properties wrongly; the mathematics says:
      * LN-S(alpha z) = sign(alpha) LN-S(z): invariant for alpha > 0 only (a negative alpha flips
        the sign), and only up to eps: LN-S(alpha z) = sign(alpha) (z - mu) / sqrt(var + eps /
        alpha^2), exact when eps = 0, approximate for eps > 0 (it fails when alpha^2 var ~ eps).
        Hence LN(MM_{aW,ab}(z)) = LN(MM_{W,b}(z)) for a > 0, while for a < 0 it is
        beta - gamma * LN-S(MM_{W,b}(z)) (the seed claims invariance for every a != 0).
      * LN-S(z + c 1) = LN-S(z): adding the same constant to every entry changes nothing -- an
        invariance, not LN(z + c) = LN(z) + c.

    Args:
        normalized_shape: int or tuple of ints, the trailing shape normalized over.
        eps: added to the variance, > 0 (default 1e-5).
        elementwise_affine: learn weight (and bias); False gives the seed's LN-S.
        bias: learn a bias when elementwise_affine (default True).
        dtype: float32 (default) or float64.

    Shape:
        x (*, *normalized_shape) -> y same shape; weight, bias normalized_shape.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.LayerNorm(64)(np.zeros((8, 10, 64), np.float32)).shape
        (8, 10, 64)
    """

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 dtype=np.float32):
        super().__init__()
        if isinstance(normalized_shape, (numbers.Integral, np.integer)) and \
                not isinstance(normalized_shape, bool):
            normalized_shape = (normalized_shape,)
        try:
            shape = tuple(normalized_shape)
        except TypeError:
            raise ValueError("LayerNorm: normalized_shape must be an int or a tuple of ints, "
                             f"got {normalized_shape!r}") from None
        if not shape:
            raise ValueError("LayerNorm: normalized_shape must not be empty")
        self.normalized_shape = tuple(positive_int(d, "LayerNorm: normalized_shape entries")
                                      for d in shape)
        self.eps = _eps(eps, "LayerNorm")
        self.elementwise_affine = boolean(elementwise_affine, "LayerNorm: elementwise_affine")
        boolean(bias, "LayerNorm: bias")
        dt = as_float_dtype(dtype, "LayerNorm: dtype")
        self._d = int(np.prod(self.normalized_shape))
        if self.elementwise_affine:
            self.weight = Parameter(np.ones(self.normalized_shape, dt))
            self.bias = Parameter(np.zeros(self.normalized_shape, dt)) if bias else None
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self._ones = None

    def reset_parameters(self):
        if self.weight is not None:
            self.weight.data.fill(1)
        if self.bias is not None:
            self.bias.data.fill(0)

    def extra_repr(self):
        s = f"{self.normalized_shape}"
        if self.eps != 1e-5:
            s += f", eps={self.eps}"
        if not self.elementwise_affine:
            s += ", elementwise_affine=False"
        elif self.bias is None:
            s += ", bias=False"
        return s

    def _dtype(self):
        return self.weight.data.dtype if self.weight is not None else None

    def forward(self, x):
        dt = self._dtype()
        x = self._check_array(x) if dt is None else self._check_dtype(x, dt)
        k = len(self.normalized_shape)
        if x.ndim < k or x.shape[x.ndim - k:] != self.normalized_shape:
            raise ValueError(f"{self._short_repr()}: expected input of shape "
                             f"(*, {', '.join(map(str, self.normalized_shape))}), got {x.shape}")
        d = self._d
        rows = x.size // d
        y = np.empty_like(x)
        mean, rstd = np.empty(rows), np.empty(rows)
        w, b = self.weight, self.bias
        _k.layernorm_forward(y, mean, rstd, x, None if w is None else w.data,
                             None if b is None else b.data, rows, d, self.eps)
        self._save(x, mean, rstd)        # x (*, D), mean / rstd (rows,) float64
        return y

    def backward(self, dy, need_input_grad=True):
        x, mean, rstd = self._saved()
        dy = self._check_grad(dy, x.shape, x.dtype)
        d = self._d
        rows = x.size // d
        w, b = self.weight, self.bias
        dw, acc_w = grad_buffer_of(w)
        db, acc_b = grad_buffer_of(b)
        if w is None:
            # LN-S: the kernel's g = dy * w with w = 1
            if self._ones is None or self._ones.dtype != x.dtype:
                self._ones = np.ones(d, x.dtype)
            wd = self._ones
        else:
            wd = w.data
        dx = np.empty_like(x) if need_input_grad else None
        if dx is None and dw is None and db is None:
            return None
        _k.layernorm_backward(dx, dw, db, dy, x, wd, mean, rstd, rows, d, acc_w, acc_b)
        return dx


def init_batchnorm_state(m, c, dt):
    """BatchNorm's parameters and buffers, as torch names them: weight/bias (ones/zeros) when
    m.affine, running_mean/running_var/num_batches_tracked when m.track_running_stats."""
    if m.affine:
        m.weight = Parameter(np.ones(c, dt))
        m.bias = Parameter(np.zeros(c, dt))
    else:
        m.register_parameter("weight", None)
        m.register_parameter("bias", None)
    if m.track_running_stats:
        m.register_buffer("running_mean", np.zeros(c, dt))
        m.register_buffer("running_var", np.ones(c, dt))
        m.register_buffer("num_batches_tracked", np.zeros((), np.int64))
    else:
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            m.register_buffer(name, None)


class _BatchNorm(Module):
    """Shared by BatchNorm1d and BatchNorm2d: y = (x - mean) / sqrt(var + eps) * weight + bias per
    channel, with batch statistics over (N, *spatial) in training and the running ones in eval."""
    _ranks = ()
    _shape_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32):
        super().__init__()
        who = type(self).__name__
        self.num_features = positive_int(num_features, f"{who}: num_features")
        self.eps = _eps(eps, who)
        if momentum is not None:
            momentum = finite_float(momentum, f"{who}: momentum", low=0.0, high=1.0)
        self.momentum = momentum
        self.affine = boolean(affine, f"{who}: affine")
        self.track_running_stats = boolean(track_running_stats, f"{who}: track_running_stats")
        dt = as_float_dtype(dtype, f"{who}: dtype")
        c = self.num_features
        init_batchnorm_state(self, c, dt)

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.fill(0)
            self.running_var.fill(1)
            self.num_batches_tracked.fill(0)

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self.weight.data.fill(1)
            self.bias.data.fill(0)

    def _dtype(self):
        """The parameters' dtype, else the running statistics', else None (any float input)."""
        if self.weight is not None:
            return self.weight.data.dtype
        rm = self.running_mean
        return rm.dtype if isinstance(rm, np.ndarray) else None

    def _running_stats(self, dtype):
        """(running_mean, running_var), checked before a kernel reads or updates them (they are
        plain attributes a user may reassign): both None, or both (C,) arrays of the input's
        dtype; a read-only, non-contiguous or misaligned pair is replaced by copies."""
        rm, rv = self.running_mean, self.running_var
        if rm is None and rv is None:
            return None, None
        c = self.num_features
        if type(rm) is np.ndarray and type(rv) is np.ndarray and rm.dtype == dtype and \
                rv.dtype == dtype and rm.shape == (c,) and rv.shape == (c,) and \
                rm.flags.carray and rv.flags.carray:            # the usual case
            return rm, rv
        for name, a in (("running_mean", rm), ("running_var", rv)):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{self._short_repr()}: expected {name} to be a ({c},) {dtype} "
                                f"array (or both running statistics None), got {type(a).__name__}")
            if a.shape != (c,):
                raise ValueError(f"{self._short_repr()}: expected {name} of shape ({c},), got {a.shape}")
            if a.dtype != dtype:
                raise TypeError(f"{self._short_repr()}: expected {name} of dtype {dtype} like the "
                                f"input, got {a.dtype}")
        if not (rm.flags.carray and rv.flags.carray):    # C-contiguous, aligned, writeable
            rm, rv = self.running_mean, self.running_var = \
                np.ascontiguousarray(rm).copy(), np.ascontiguousarray(rv).copy()
        return rm, rv

    def extra_repr(self):
        s = f"{self.num_features}"
        if self.eps != 1e-5:
            s += f", eps={self.eps}"
        if self.momentum != 0.1:
            s += f", momentum={self.momentum}"
        if not self.affine:
            s += ", affine=False"
        if not self.track_running_stats:
            s += ", track_running_stats=False"
        return s

    def forward(self, x):
        dt = self._dtype()
        x = self._check_array(x) if dt is None else self._check_dtype(x, dt)
        c = self.num_features
        if x.ndim not in self._ranks or x.shape[1] != c:
            raise ValueError(f"{self._short_repr()}: expected input of shape "
                             f"{self._shape_text.format(c=c)}, got {x.shape}")
        n = x.shape[0]
        s = x.size // (n * c)
        rm, rv = self._running_stats(x.dtype)
        # torch: batch statistics when training, or when there are no running ones
        batch_stats = self.training or rm is None
        update = self.training and rm is not None
        if batch_stats and n * s == 1:      # torch raises here too (eval without running stats)
            raise ValueError(f"{self._short_repr()}: expected more than 1 value per channel "
                             f"when using batch statistics, got input of shape {x.shape}")
        factor = 0.0
        if update:      # num_batches_tracked counts after the kernel (it may raise MemoryError)
            tracked = 0 if self.num_batches_tracked is None else int(self.num_batches_tracked)
            factor = (1.0 / float(tracked + 1) if self.momentum is None
                      else self.momentum)
        y = np.empty_like(x)
        mean, rstd = np.empty(c), np.empty(c)
        w, b = self.weight, self.bias
        _k.batchnorm_forward(y, mean, rstd, rm if (update or not batch_stats) else None,
                             rv if (update or not batch_stats) else None, x,
                             None if w is None else w.data, None if b is None else b.data,
                             n, c, s, self.eps, factor, batch_stats)
        if update and self.num_batches_tracked is not None:
            self.num_batches_tracked += 1
        self._save(x, mean, rstd, batch_stats)   # x, mean / rstd (C,) float64, which statistics
        return y

    def backward(self, dy, need_input_grad=True):
        x, mean, rstd, batch_stats = self._saved()
        dy = self._check_grad(dy, x.shape, x.dtype)
        n, c = x.shape[0], self.num_features
        s = x.size // (n * c)
        w, b = self.weight, self.bias
        dx = np.empty_like(x) if need_input_grad else None
        dw, acc_w = grad_buffer_of(w)
        db, acc_b = grad_buffer_of(b)
        if dx is None and dw is None and db is None:
            return None
        try:
            _k.batchnorm_backward(dx, dw, db, dy, x, None if w is None else w.data, mean, rstd,
                                  n, c, s, batch_stats, acc_w, acc_b)
        except MemoryError:
            unmark_grad_buffers((w, acc_w), (b, acc_b))
            raise
        return dx


class BatchNorm1d(_BatchNorm):
    """y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias per channel, over the batch (and L).

    Seed: "Other Normalization Techniques" -- Batch Normalization, BN(x) = gamma (x - mu_B) /
    sqrt(sigma_B^2 + eps) + beta with mu_B, sigma_B^2 taken across the batch dimension (and the
    length, for (N, C, L) input): each channel has mean 0 and variance 1 over the batch.
    Training uses the batch statistics (biased var) and updates running_mean / running_var
    (unbiased var) with `momentum` (None: cumulative average over num_batches_tracked, as torch);
    eval uses the running statistics, where BN is a fixed per-channel affine map.

    Args:
        num_features: C, the number of channels.
        eps: added to the variance, > 0 (default 1e-5).
        momentum: weight of the new batch in the running statistics (default 0.1), or None.
        affine: learn weight (ones) and bias (zeros) per channel (default True).
        track_running_stats: keep running statistics (default True); if False, batch
            statistics are used in eval too.
        dtype: float32 (default) or float64.

    Shape:
        x (N, C) or (N, C, L) -> y same shape.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.BatchNorm1d(16)(np.random.randn(8, 16).astype(np.float32)).shape
        (8, 16)
    """
    _ranks = (2, 3)
    _shape_text = "(N, {c}) or (N, {c}, L)"


class BatchNorm2d(_BatchNorm):
    """y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias per channel, over (N, H, W).

    Seed: "Other Normalization Techniques" -- Batch Normalization (normalizes across the batch:
    each channel has mean 0 and variance 1 over N, H and W); used in the seed's ResBlock with BN.
    Training uses batch statistics and updates the running ones (see BatchNorm1d); eval uses
    the running statistics.

    Args:
        num_features: C, the number of channels.
        eps, momentum, affine, track_running_stats, dtype: as BatchNorm1d.

    Shape:
        x (N, C, H, W) -> y same shape.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.BatchNorm2d(3)(np.random.randn(2, 3, 4, 4).astype(np.float32)).shape
        (2, 3, 4, 4)
    """
    _ranks = (4,)
    _shape_text = "(N, {c}, H, W)"


class GroupNorm(Module):
    """y = (x - E[x]) / sqrt(Var[x] + eps) * weight + bias, statistics per sample over each group
    of num_channels / num_groups channels (and all spatial positions).

    Seed: "Other Normalization Techniques" -- Group Normalization, GN(x) = gamma (x - mu_G) /
    sqrt(sigma_G^2 + eps) + beta with mu_G, sigma_G^2 taken within groups of channels of one
    sample (independent of the batch size). One group is LayerNorm over (C, *) (with a
    per-channel affine); num_channels groups is InstanceNorm.

    Args:
        num_groups: G, must divide num_channels.
        num_channels: C.
        eps: added to the variance, > 0 (default 1e-5).
        affine: learn a per-channel weight (ones) and bias (zeros) (default True).
        dtype: float32 (default) or float64.

    Shape:
        x (N, C, *) -> y same shape.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.GroupNorm(2, 4)(np.random.randn(2, 4, 5, 5).astype(np.float32)).shape
        (2, 4, 5, 5)
    """

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, dtype=np.float32):
        super().__init__()
        self.num_groups = positive_int(num_groups, "GroupNorm: num_groups")
        self.num_channels = positive_int(num_channels, "GroupNorm: num_channels")
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels ({self.num_channels}) must be divisible "
                             f"by num_groups ({self.num_groups})")
        self.eps = _eps(eps, "GroupNorm")
        self.affine = boolean(affine, "GroupNorm: affine")
        dt = as_float_dtype(dtype, "GroupNorm: dtype")
        if self.affine:
            self.weight = Parameter(np.ones(self.num_channels, dt))
            self.bias = Parameter(np.zeros(self.num_channels, dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def reset_parameters(self):
        if self.affine:
            self.weight.data.fill(1)
            self.bias.data.fill(0)

    def extra_repr(self):
        s = f"{self.num_groups}, {self.num_channels}"
        if self.eps != 1e-5:
            s += f", eps={self.eps}"
        if not self.affine:
            s += ", affine=False"
        return s

    def forward(self, x):
        w, b = self.weight, self.bias
        x = self._check_array(x) if w is None else self._check_dtype(x, w.data.dtype)
        c, g = self.num_channels, self.num_groups
        if x.ndim < 2 or x.shape[1] != c:
            raise ValueError(f"{self._short_repr()}: expected input of shape (N, {c}, *), "
                             f"got {x.shape}")
        n = x.shape[0]
        s = x.size // (n * c)
        y = np.empty_like(x)
        mean, rstd = np.empty(n * g), np.empty(n * g)
        _k.groupnorm_forward(y, mean, rstd, x, None if w is None else w.data,
                             None if b is None else b.data, n, c, s, g, self.eps)
        self._save(x, mean, rstd)        # x, mean / rstd (N, G) float64
        return y

    def backward(self, dy, need_input_grad=True):
        x, mean, rstd = self._saved()
        dy = self._check_grad(dy, x.shape, x.dtype)
        n, c, g = x.shape[0], self.num_channels, self.num_groups
        s = x.size // (n * c)
        w, b = self.weight, self.bias
        dw, acc_w = grad_buffer_of(w)
        db, acc_b = grad_buffer_of(b)
        dx = np.empty_like(x) if need_input_grad else None
        if dx is None and dw is None and db is None:
            return None
        _k.groupnorm_backward(dx, dw, db, dy, x, None if w is None else w.data, mean, rstd,
                              n, c, s, g, acc_w, acc_b)
        return dx
