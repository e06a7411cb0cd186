"""Pooling, the CNN parts beside the seed's convolutions: max, average, adaptive average and
max, global average.

Each output element summarizes one window of one channel plane, so every kernel
(fastmod/_kernels/pool.pyx) runs over planes (N*C of them), in parallel. Windows, strides,
padding, ceil_mode and count_include_pad follow torch.nn exactly.
"""
import numpy as np

from fastmod._kernels import pool as _k
from fastmod._validate import boolean, int_tuple, positive_int
from fastmod.nn.module import Module


def _pool_out(size, k, s, p, d, ceil_mode):
    """torch's pooling output size: floor (or ceil) of (size + 2p - d(k-1) - 1)/s, plus 1; with
    ceil_mode the last window must start inside the input or its left padding."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


class _PoolNd(Module):
    """Shared geometry and checks; subclasses set _nd and implement _forward/_backward on
    (planes, H, W) arrays."""
    _nd = 2
    _has_dilation = False
    return_indices = False              # max pooling: also return the argmax indices

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
        super().__init__()
        name, nd = type(self).__name__, self._nd
        self.kernel_size = int_tuple(kernel_size, nd, f"{name}: kernel_size")
        self.stride = self.kernel_size if stride is None or stride == () or stride == [] else \
            int_tuple(stride, nd, f"{name}: stride")
        self.padding = int_tuple(padding, nd, f"{name}: padding", minimum=0)
        self.dilation = int_tuple(dilation, nd, f"{name}: dilation")
        self.ceil_mode = boolean(ceil_mode, f"{name}: ceil_mode")
        for k, p in zip(self.kernel_size, self.padding):
            if p > k // 2:
                raise ValueError(f"{name}: padding {self.padding} must be at most half of the "
                                 f"kernel size {self.kernel_size}")

    def _show(self, v):
        return v[0] if len(set(v)) == 1 else v

    def extra_repr(self):
        nd = self._nd
        s = f"kernel_size={self._show(self.kernel_size)}"
        if self.stride != self.kernel_size:
            s += f", stride={self._show(self.stride)}"
        if self.padding != (0,) * nd:
            s += f", padding={self._show(self.padding)}"
        if self.dilation != (1,) * nd:
            s += f", dilation={self._show(self.dilation)}"
        if self.ceil_mode:
            s += ", ceil_mode=True"
        return s

    def _geometry(self):
        """(KH, KW, SH, SW, PH, PW, DH, DW) as 2-D numbers (1-D: KH = 1)."""
        if self._nd == 1:
            return (1, self.kernel_size[0], 1, self.stride[0], 0, self.padding[0], 1,
                    self.dilation[0])
        return self.kernel_size + self.stride + self.padding + self.dilation

    def _planes(self, x):
        """x (N, C, *spatial) or unbatched (C, *spatial) -> (x3 (planes, H, W), out_shape, geom)."""
        x = self._check_array(x)
        nd = self._nd
        if x.ndim not in (nd + 1, nd + 2):
            lay = "(N, C, L) or (C, L)" if nd == 1 else "(N, C, H, W) or (C, H, W)"
            raise ValueError(f"{self._short_repr()}: expected input of shape {lay}, got {x.shape}")
        spatial = x.shape[-nd:]
        H, W = (1, spatial[0]) if nd == 1 else spatial
        KH, KW, SH, SW, PH, PW, DH, DW = g = self._geometry()
        OH = _pool_out(H, KH, SH, PH, DH, self.ceil_mode)
        OW = _pool_out(W, KW, SW, PW, DW, self.ceil_mode)
        if OH < 1 or OW < 1:
            raise ValueError(f"{self._short_repr()}: the window (kernel {self.kernel_size}, "
                             f"dilation {self.dilation}) does not fit the padded input: input "
                             f"shape {x.shape}, padding {self.padding}")
        out_shape = x.shape[:-nd] + ((OW,) if nd == 1 else (OH, OW))
        return x.reshape(-1, H, W), out_shape, (H, W, OH, OW) + g

    def forward(self, x):
        x3, out_shape, geom = self._planes(x)
        y3 = np.empty((x3.shape[0],) + geom[2:4], x3.dtype)
        saved = self._forward(y3, x3, geom)
        self._save(x3.shape, x.shape, out_shape, x3.dtype, geom, saved)
        if self.return_indices:
            return y3.reshape(out_shape), saved.reshape(out_shape).astype(np.int64)
        return y3.reshape(out_shape)

    def backward(self, dy, need_input_grad=True):
        shape3, xshape, out_shape, dtype, geom, saved = self._saved()
        if self.return_indices and isinstance(dy, tuple):
            dy = self._first_output_grad(dy, ("values", "indices"), "integers take none")
        dy = self._check_grad(dy, out_shape, dtype)
        if not need_input_grad:
            return None
        dx3 = np.empty(shape3, dtype)
        self._backward(dx3, dy.reshape((shape3[0],) + geom[2:4]), geom, saved)
        return dx3.reshape(xshape)


class _MaxPoolNd(_PoolNd):
    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices=False,
                 ceil_mode=False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.return_indices = boolean(return_indices, f"{type(self).__name__}: return_indices")

    def extra_repr(self):
        s = super().extra_repr()
        return s + ", return_indices=True" if self.return_indices else s

    def _forward(self, y3, x3, geom):
        idx = np.empty(y3.shape, np.int32)
        _k.maxpool2d_forward(y3, idx, x3, *geom[4:])
        return idx                      # the argmax of each window (flat in its plane)

    def _backward(self, dx3, dy3, geom, idx):
        _k.maxpool2d_backward(dx3, dy3, idx)


class MaxPool1d(_MaxPoolNd):
    """y[n, c, i] = max of x[n, c, i*stride - padding + j*dilation] over j < kernel_size
    (padding never wins; NaN propagates), as torch.nn.MaxPool1d.

    Args: kernel_size; stride (default kernel_size); padding (<= kernel_size/2); dilation;
        return_indices (also return each window's argmax as int64 indices into L, as torch;
        backward then takes dy or (dy, None)); ceil_mode (default False).

    Shape: (N, C, L) -> (N, C, L_out), L_out = floor((L + 2*padding - dilation*(kernel_size-1) - 1)
    / stride) + 1 (ceil with ceil_mode).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.MaxPool1d(2)(np.zeros((4, 3, 9), np.float32)).shape
        (4, 3, 4)
    """
    _nd = 1


class MaxPool2d(_MaxPoolNd):
    """y[n, c, i, j] = max of x over the (dilated) window at (i*stride - padding, j*stride -
    padding), as torch.nn.MaxPool2d; the gradient goes to each window's (first) maximum.

    Args: kernel_size, stride (default kernel_size), padding (<= kernel_size/2), dilation: ints or
        pairs; return_indices (also return each window's argmax as int64 flat indices h*W + w
        into its input plane, as torch; backward then takes dy or (dy, None)); ceil_mode.

    Shape: (N, C, H, W) -> (N, C, H_out, W_out),
    H_out = floor((H + 2*padding[0] - dilation[0]*(kernel_size[0]-1) - 1) / stride[0]) + 1.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.MaxPool2d(2)(np.zeros((4, 3, 8, 8), np.float32)).shape
        (4, 3, 4, 4)
    """
    _nd = 2


class _AvgPoolNd(_PoolNd):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        name = type(self).__name__
        self.count_include_pad = boolean(count_include_pad, f"{name}: count_include_pad")
        self.divisor_override = None if divisor_override is None else \
            positive_int(divisor_override, f"{name}: divisor_override")

    def extra_repr(self):
        s = super().extra_repr()
        if not self.count_include_pad:
            s += ", count_include_pad=False"
        if self.divisor_override is not None:
            s += f", divisor_override={self.divisor_override}"
        return s

    def _args(self, geom):
        KH, KW, SH, SW, PH, PW = geom[4:10]
        return (KH, KW, SH, SW, PH, PW, self.count_include_pad, self.divisor_override or 0)

    def _forward(self, y3, x3, geom):
        _k.avgpool2d_forward(y3, x3, *self._args(geom))

    def _backward(self, dx3, dy3, geom, saved):
        _k.avgpool2d_backward(dx3, dy3, *self._args(geom))


class AvgPool1d(_AvgPoolNd):
    """y[n, c, i] = mean of x[n, c, i*stride - padding + j] over j < kernel_size, as
    torch.nn.AvgPool1d (count_include_pad=True: padded zeros count in the divisor).

    Args: kernel_size; stride (default kernel_size); padding (<= kernel_size/2); ceil_mode;
        count_include_pad (default True).

    Shape: (N, C, L) -> (N, C, L_out), L_out = floor((L + 2*padding - kernel_size) / stride) + 1.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.AvgPool1d(3, stride=2)(np.zeros((4, 3, 9), np.float32)).shape
        (4, 3, 4)
    """
    _nd = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool2d(_AvgPoolNd):
    """y[n, c, i, j] = mean of x over the kernel_size window at (i*stride - padding,
    j*stride - padding), as torch.nn.AvgPool2d.

    Args: kernel_size, stride (default kernel_size), padding (<= kernel_size/2): ints or pairs;
        ceil_mode; count_include_pad (default True: padded zeros count in the divisor);
        divisor_override (divide by this instead).

    Shape: (N, C, H, W) -> (N, C, H_out, W_out),
    H_out = floor((H + 2*padding[0] - kernel_size[0]) / stride[0]) + 1.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.AvgPool2d(2)(np.zeros((4, 3, 8, 8), np.float32)).shape
        (4, 3, 4, 4)
    """
    _nd = 2


class _AdaptivePoolNd(Module):
    """Shared by the adaptive poolings: torch's bins (bin i of OH covers rows floor(i*H/OH) ..
    ceil((i+1)*H/OH)), on (planes, H, W) arrays (1-D: H = 1)."""
    _nd = 2
    _max = False

    def __init__(self, output_size, return_indices=False):
        super().__init__()
        name, nd = type(self).__name__, self._nd
        if isinstance(output_size, (tuple, list)) and len(output_size) == nd:
            self.output_size = tuple(None if v is None else
                                     positive_int(v, f"{name}: output_size")
                                     for v in output_size)
        else:
            self.output_size = int_tuple(output_size, nd, f"{name}: output_size")
        self.return_indices = boolean(return_indices, f"{name}: return_indices")

    def extra_repr(self):
        o = self.output_size
        s = f"output_size={o[0] if len(set(o)) == 1 else o}"
        return s + ", return_indices=True" if self.return_indices else s

    def forward(self, x):
        x = self._check_array(x)
        nd = self._nd
        if x.ndim not in (nd + 1, nd + 2):
            lay = "(N, C, L) or (C, L)" if nd == 1 else "(N, C, H, W) or (C, H, W)"
            raise ValueError(f"{self._short_repr()}: expected input of shape {lay}, got {x.shape}")
        spatial = x.shape[-nd:]
        out = tuple(s if o is None else o for s, o in zip(spatial, self.output_size))
        H, W = (1, spatial[0]) if nd == 1 else spatial
        OH, OW = (1, out[0]) if nd == 1 else out
        x3 = x.reshape(-1, H, W)
        y3 = np.empty((x3.shape[0], OH, OW), x.dtype)
        out_shape = x.shape[:-nd] + out
        if self._max:
            idx = np.empty(y3.shape, np.int32)
            _k.adaptive_maxpool2d_forward(y3, idx, x3)
        else:
            idx = None
            _k.adaptive_avgpool2d_forward(y3, x3)
        self._save(x3.shape, x.shape, out_shape, x.dtype, idx)
        if self.return_indices:
            return y3.reshape(out_shape), idx.reshape(out_shape).astype(np.int64)
        return y3.reshape(out_shape)

    def backward(self, dy, need_input_grad=True):
        shape3, xshape, out_shape, dtype, idx = self._saved()
        if self.return_indices and isinstance(dy, tuple):
            dy = self._first_output_grad(dy, ("values", "indices"), "integers take none")
        dy = self._check_grad(dy, out_shape, dtype)
        if not need_input_grad:
            return None
        dx3 = np.empty(shape3, dtype)
        dy3 = dy.reshape((shape3[0],) + ((1,) + out_shape[-1:] if self._nd == 1 else out_shape[-2:]))
        if self._max:
            _k.maxpool2d_backward(dx3, dy3, idx)
        else:
            _k.adaptive_avgpool2d_backward(dx3, dy3)
        return dx3.reshape(xshape)


class AdaptiveAvgPool2d(_AdaptivePoolNd):
    """Average over an (OH, OW) grid of bins, bin i covering rows floor(i*H/OH) ..
    ceil((i+1)*H/OH) (and columns likewise), as torch.nn.AdaptiveAvgPool2d. output_size=1 is
    global average pooling.

    Args: output_size: an int or an (OH, OW) pair (None in a pair keeps that input size).

    Shape: (N, C, H, W) -> (N, C, OH, OW); also unbatched (C, H, W).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.AdaptiveAvgPool2d(1)(np.zeros((4, 64, 8, 8), np.float32)).shape
        (4, 64, 1, 1)
    """

    def __init__(self, output_size):
        super().__init__(output_size)


class AdaptiveAvgPool1d(_AdaptivePoolNd):
    """Average over OL bins, bin i covering floor(i*L/OL) .. ceil((i+1)*L/OL), as
    torch.nn.AdaptiveAvgPool1d (output_size=1: the mean over L).

    Args: output_size: OL.

    Shape: (N, C, L) -> (N, C, OL); also unbatched (C, L).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.AdaptiveAvgPool1d(4)(np.zeros((2, 8, 10), np.float32)).shape
        (2, 8, 4)
    """
    _nd = 1

    def __init__(self, output_size):
        super().__init__(output_size)


class AdaptiveMaxPool2d(_AdaptivePoolNd):
    """Maximum over an (OH, OW) grid of torch's adaptive bins (as AdaptiveAvgPool2d), as
    torch.nn.AdaptiveMaxPool2d: NaN propagates; the gradient goes to each bin's argmax.

    Args: output_size: an int or an (OH, OW) pair (None keeps that input size);
        return_indices: also return the argmax as int64 flat indices h*W + w into the input
        plane (backward then takes dy or (dy, None)).

    Shape: (N, C, H, W) -> (N, C, OH, OW); also unbatched (C, H, W).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.AdaptiveMaxPool2d((2, 3))(np.zeros((4, 8, 7, 9), np.float32)).shape
        (4, 8, 2, 3)
    """
    _max = True


class AdaptiveMaxPool1d(_AdaptivePoolNd):
    """Maximum over OL adaptive bins, as torch.nn.AdaptiveMaxPool1d (see AdaptiveMaxPool2d).

    Args: output_size: OL; return_indices (indices into L).

    Shape: (N, C, L) -> (N, C, OL); also unbatched (C, L).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.AdaptiveMaxPool1d(1)(np.zeros((2, 8, 10), np.float32)).shape
        (2, 8, 1)
    """
    _nd = 1
    _max = True


class GlobalAvgPool(Module):
    """y[n, c] = mean of x[n, c] over all spatial positions (AdaptiveAvgPool2d(1) + Flatten in
    one step).

    Shape: (N, C, *spatial) -> (N, C) (any number of spatial dims >= 1).

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.GlobalAvgPool()(np.zeros((4, 64, 8, 8), np.float32)).shape
        (4, 64)
    """

    def forward(self, x):
        x = self._check_array(x)
        if x.ndim < 3:
            raise ValueError(f"{self._short_repr()}: expected input of shape (N, C, *spatial), "
                             f"got {x.shape}")
        N, C = x.shape[:2]
        x3 = x.reshape(N * C, 1, -1)
        y3 = np.empty((N * C, 1, 1), x.dtype)
        _k.adaptive_avgpool2d_forward(y3, x3)
        self._save(x3.shape, x.shape, x.dtype)
        return y3.reshape(N, C)

    def backward(self, dy, need_input_grad=True):
        shape3, xshape, dtype = self._saved()
        dy = self._check_grad(dy, xshape[:2], dtype)
        if not need_input_grad:
            return None
        dx3 = np.empty(shape3, dtype)
        _k.adaptive_avgpool2d_backward(dx3, dy.reshape(shape3[0], 1, 1))
        return dx3.reshape(xshape)
