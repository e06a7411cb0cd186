"""Element-wise activations (the seed's sigma) and Softmax."""
import numpy as np

from fastmod._kernels import activations as _k
from fastmod._kernels import softmax as _ks
from fastmod._validate import boolean
from fastmod.nn.module import Module


class _Elementwise(Module):
    """y = f(x) element-wise; backward reads y (ReLU, Sigmoid, Tanh) or x (GELU)."""
    _kind = None          # index into the kernel's KIND table
    _needs_input = False  # backward needs x (else y)

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = boolean(inplace, f"{type(self).__name__}: inplace")

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""

    def forward(self, x):
        x = self._check_array(x)
        y = x if self.inplace and x.flags.writeable else np.empty_like(x)
        if self._needs_input:
            if y is x:
                raise ValueError(f"{self._short_repr()}: inplace is not supported (backward needs the input)")
            _k.activation_forward(self._kind, y, x)
            self._save(x)
        else:
            _k.activation_forward(self._kind, y, x)
            self._save(y)
        return y

    def backward(self, dy, need_input_grad=True):
        (saved,) = self._saved()
        dy = self._check_grad(dy, saved.shape, saved.dtype)
        if not need_input_grad:
            return None
        dx = np.empty_like(dy)
        if self._needs_input:
            _k.activation_backward(self._kind, dx, dy, saved, None)
        else:
            _k.activation_backward(self._kind, dx, dy, None, saved)
        return dx

    # -- the fusion interface (modules with elementwise_activation set: ReLU) -----------------
    def activate(self, x):
        """forward without saving anything: for a container that has the next layer fold this
        activation's backward into its own (fuses_input_activation_grad)."""
        x = self._check_array(x)
        y = x if self.inplace and x.flags.writeable else np.empty_like(x)
        _k.activation_forward(self._kind, y, x)
        return y

    def grad_from_output(self, dy, y):
        """The input gradient from the output y (for a container that had the layer before this
        activation apply it: the layer's forward(x, activation=...)); y and dy of one shape and
        dtype, which the caller guarantees."""
        dx = np.empty_like(dy)
        _k.activation_backward(self._kind, dx, self._check_grad(dy, y.shape, y.dtype), None, y)
        return dx


class ReLU(_Elementwise):
    """sigma(z) = max(0, z), element-wise (the seed's ReLU). Shape: any -> same.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.ReLU()(np.array([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """
    _kind = _k.KIND["relu"]
    elementwise_activation = "relu"       # Linear / Conv fold it into their kernels (containers)


class Sigmoid(_Elementwise):
    """sigma(z) = 1 / (1 + exp(-z)), computed without overflow for any z. Shape: any -> same."""
    _kind = _k.KIND["sigmoid"]


class Tanh(_Elementwise):
    """sigma(z) = tanh(z). Shape: any -> same."""
    _kind = _k.KIND["tanh"]


class GELU(_Elementwise):
    """sigma(z) = z * Phi(z) (the seed's GELU); approximate='tanh' uses
    0.5 z (1 + tanh(sqrt(2/pi) (z + 0.044715 z^3))) as torch does. Shape: any -> same."""
    _needs_input = True

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self._kind = _k.KIND["gelu" if approximate == "none" else "gelu_tanh"]

    def extra_repr(self):
        return "" if self.approximate == "none" else "approximate='tanh'"


ACTIVATIONS = {"relu": ReLU, "sigmoid": Sigmoid, "tanh": Tanh, "gelu": GELU,
               "gelu_tanh": lambda: GELU(approximate="tanh"), "identity": None}


def make_activation(spec, who):
    """'relu' / 'gelu' / ... or a Module class / factory -> a new activation module instance."""
    if isinstance(spec, str):
        if spec not in ACTIVATIONS:
            raise ValueError(f"{who}: activation must be one of {sorted(ACTIVATIONS)}, got {spec!r}")
        factory = ACTIVATIONS[spec]
        if factory is None:
            from fastmod.nn.containers import Identity
            return Identity()
        return factory()
    if isinstance(spec, type) and issubclass(spec, Module):
        return spec()
    if callable(spec) and not isinstance(spec, Module):
        m = spec()
        if isinstance(m, Module):
            return m
    raise ValueError(f"{who}: activation must be a name like 'relu' or a Module class, got {spec!r}")


class _SoftmaxBase(Module):
    _log = False

    def __init__(self, dim=-1):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise ValueError(f"{type(self).__name__}: dim must be an int, got {dim!r}")
        self.dim = int(dim)

    def extra_repr(self):
        return f"dim={self.dim}"

    def _axis(self, x):
        d = self.dim
        if not -x.ndim <= d < x.ndim:
            raise ValueError(f"{self._short_repr()}: dim {d} is out of range for input of shape {x.shape}")
        d %= x.ndim
        outer = int(np.prod(x.shape[:d], dtype=np.int64))
        inner = int(np.prod(x.shape[d + 1:], dtype=np.int64))
        return outer, x.shape[d], inner

    def forward(self, x):
        x = self._check_array(x)
        o, c, i = self._axis(x)
        y = np.empty_like(x)
        _ks.softmax_forward(y, x, o, c, i, self._log)
        self._save(y, (o, c, i))
        return y

    def backward(self, dy, need_input_grad=True):
        y, (o, c, i) = self._saved()
        dy = self._check_grad(dy, y.shape, y.dtype)
        if not need_input_grad:
            return None
        dx = np.empty_like(dy)
        _ks.softmax_backward(dx, dy, y, o, c, i, self._log)
        return dx


class Softmax(_SoftmaxBase):
    """y = exp(x - max) / sum(exp(x - max)) along `dim` (stable). Shape: any -> same."""


class LogSoftmax(_SoftmaxBase):
    """y = x - logsumexp(x) along `dim` (stable). Shape: any -> same."""
    _log = True
