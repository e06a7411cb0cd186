"""Linear: the seed's matrix-multiplication module MM_{W,b}(z) = W z + b."""
import threading

import numpy as np

from fastmod._kernels import activations as _ka
from fastmod._kernels import linear as _k
from fastmod.nn import init
from fastmod._validate import boolean, positive_int
from fastmod.nn.module import aligned_empty, F32, Module, Parameter, activation_flag, as_float_dtype, grad_buffer_of


_SCRATCH = threading.local()      # .z: the transposed forward's work array (see Linear._scratch)


class Linear(Module):
    """y = x W^T + b  (the seed's MM_{W,b}, "7.3 Basic Building Blocks").

    Note: with b != 0 this map is affine, not linear: MM(a z1 + b z2) = a MM(z1) + b MM(z2) only
    when the bias is zero (the seed's "Linearity" property needs b = 0). Parameter count
    out*in + out.

    Args:
        in_features: size of each input row (m in the seed).
        out_features: size of each output row (n in the seed).
        bias: learn an additive bias (default True).
        dtype: float32 (default) or float64.

    Shape:
        x (*, in_features) -> y (*, out_features); weight (out_features, in_features).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.Linear(784, 10)(np.zeros((32, 784), np.float32)).shape
        (32, 10)
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32):
        super().__init__()
        self.in_features = positive_int(in_features, "Linear: in_features")
        self.out_features = positive_int(out_features, "Linear: out_features")
        boolean(bias, "Linear: bias")
        dt = as_float_dtype(dtype, "Linear: dtype")
        self.weight = Parameter(aligned_empty((self.out_features, self.in_features), dt))
        self.bias = Parameter(aligned_empty(self.out_features, dt)) if bias else None
        self.reset_parameters()

    def __setattr__(self, name, value):
        # the kernels trust weight (out, in) and bias (out,) of one dtype: a parameter put
        # back after `m.bias = None` (or `m.weight = None`) is checked here
        if name in ("weight", "bias") and isinstance(value, Parameter) and "out_features" in self.__dict__:
            want = (self.out_features, self.in_features) if name == "weight" else (self.out_features,)
            other = self._parameters.get("bias" if name == "weight" else "weight")
            if value.shape != want:
                raise ValueError(f"{self._short_repr()}: {name} must have shape {want}, got {value.shape}")
            if other is not None and other.dtype != value.dtype:
                raise TypeError(f"{self._short_repr()}: {name} must be {other.dtype} like the "
                                f"{'bias' if name == 'weight' else 'weight'}, got {value.dtype}")
        super().__setattr__(name, value)

    def reset_parameters(self):
        init.default_weight_bias_(self.weight, self.bias)

    def extra_repr(self):
        s = f"{self.in_features}, {self.out_features}"
        return s if self.bias is not None else s + ", bias=False"

    fused_activations = frozenset({"relu"})
    fused_input_activation_grads = frozenset({"relu"})

    def forward(self, x, activation=None):
        """y = x W^T + b; activation='relu': max(y, 0) in the same kernel call (a container's
        fusion of a following ReLU, Module.fused_activations). What is saved for backward is
        the same either way: backward takes d(loss)/d(x W^T + b), the activation's backward
        stays with the caller."""
        relu = activation_flag(activation, self)
        w = self.weight.data
        x = self._check_input(x, w)
        b = self.bias
        b = None if b is None else b.data
        shape = x.shape
        if len(shape) == 2:                         # (N, in): no reshapes (~1 us of a batch-1 call)
            y = np.empty((shape[0], self.out_features), w.dtype)
            _k.linear_forward(y, x, w, b, relu, self._scratch(shape[0], w.dtype))
            self._save(x, shape)
            return y
        x2 = x.reshape(-1, self.in_features)
        y = np.empty((x2.shape[0], self.out_features), w.dtype)
        _k.linear_forward(y, x2, w, b, relu, self._scratch(x2.shape[0], w.dtype))
        self._save(x2, shape)                       # x (N, in) for dW, x's shape for dx
        return y.reshape(shape[:-1] + (self.out_features,))

    def _check_input(self, x, w):
        """x as an array of w's dtype, of shape (*, in_features) (else ValueError)."""
        x = self._check_dtype(x, w.dtype)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self._short_repr()}: expected input of shape (*, {self.in_features}), "
                             f"got {x.shape}")
        return x

    def _forward_gelu(self, x):
        """GELU(x W^T + b) (exact GELU), nothing saved: inference's fusion of a following GELU
        (TransformerEncoderLayer's feed-forward under no_grad). The GELU runs in the GEMM's
        epilogue where the kernel can (float32 fm_pgemm path), else in place on the output:
        no second array, no second pass over it from memory."""
        w = self.weight.data
        x = self._check_input(x, w)
        b = self.bias
        x2 = x.reshape(-1, self.in_features)
        y = np.empty((x2.shape[0], self.out_features), w.dtype)
        if not _k.linear_forward(y, x2, w, None if b is None else b.data, _k.GELU,
                                 self._scratch(x2.shape[0], w.dtype)):
            _ka.activation_forward(_ka.KIND["gelu"], y, y)
        return y.reshape(x.shape[:-1] + (self.out_features,))

    def _scratch(self, n, dtype):
        """The float32 forward's (out, N) work array when the kernel takes its transposed path,
        else None: one per Python thread shared by every Linear (it stays in cache, and a fresh
        one would be page-faulted in at every call)."""
        if n < 32 or dtype is not F32 or not _k.forward_scratch_ok(n, self.in_features, self.out_features):
            return None
        size = n * self.out_features
        z = getattr(_SCRATCH, "z", None)
        if z is None or z.size < size:
            z = _SCRATCH.z = np.empty(size, F32)
        return z

    def backward(self, dy, need_input_grad=True, *, input_activation=None):
        """dx = dy W, dW += dy^T x, db += sum(dy). input_activation='relu' (a container's
        fusion, Module.fused_input_activation_grads): this layer's input was a ReLU's output,
        and the returned gradient is w.r.t. that ReLU's input -- masked by input > 0 block by
        block inside the kernel, the same values as ReLU.backward after this one."""
        relu_in = activation_flag(input_activation, self, "input_activation")
        x2, xshape = self._saved()
        w = self.weight
        dy = self._check_grad(dy, xshape[:-1] + (self.out_features,), w.data.dtype)
        dy2 = dy if dy.ndim == 2 else dy.reshape(-1, self.out_features)
        dw, acc_w = grad_buffer_of(w)
        db, acc_b = grad_buffer_of(self.bias)
        if not need_input_grad:
            _k.linear_backward(None, dw, db, dy2, x2, w.data, bool(acc_w), bool(acc_b))
            return None
        out = np.empty(xshape, x2.dtype)
        mask = x2 if relu_in else None          # the ReLU's output is this layer's input
        _k.linear_backward(out, dw, db, dy2, x2, w.data, bool(acc_w), bool(acc_b), mask)
        return out

