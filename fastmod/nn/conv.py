"""Convolutions: the seed's Conv1D / Conv2D ("Convolutional Modules") as torch's Conv1d / Conv2d.

Convolution here is cross-correlation, as in the seed's formula and in torch:
    y[n, o, i, j] = b[o] + sum_{c in group(o), p, q} w[o, c, p, q] x[n, c, i*s - pad + p*d, j*s - pad + q*d]
The seed's Conv1D-S is Conv1d(1, 1, 2l+1, padding=l, bias=False) (multiplication by the banded
matrix Q), Conv2D-S the 2-D analogue; the multi-channel Conv1D / Conv2D sum one Conv-S per
(output, input) channel pair: k*C*C' (resp. k^2*C*C') weights, plus C' biases.

The kernels (fastmod/_kernels/conv.pyx) run parallel over the batch, each thread with its own
scratch: im2col / patch rows + a single-threaded GEMM in general, a plain GEMM for 1x1 kernels,
Winograd F(2x2, 3x3) / F(2, 5) for wide 3x3 / k5 stride-1 layers, direct FMA loops for few
input or output channels; fastmod/_kernels/conv/plan.pxi lists which layer takes which path.
"""
import threading

import numpy as np

from fastmod._kernels import conv as _k
from fastmod.nn import init
from fastmod._validate import boolean, int_tuple, positive_int
from fastmod.nn.module import aligned_empty, Module, activation_flag, Parameter, as_float_dtype, grad_buffer_of, unmark_grad_buffers

_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


def _sample_contiguous(a, shape, dtype, writeable=False):
    """a is a non-empty ndarray of `dtype` (and `shape`, when given) whose samples a[i] are each
    C-contiguous and aligned (the batch stride may be larger: a channel slice of a buffer)."""
    if type(a) is not np.ndarray or a.dtype != dtype or a.size == 0 or a.ndim < 2:
        return False
    if (shape is not None and a.shape != tuple(shape)) or not a.flags.aligned:
        return False
    if writeable and not a.flags.writeable:
        return False
    return a[0].flags.c_contiguous and a.strides[0] >= a[0].nbytes


def _describe(a):
    return f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__


def _out_size(size, k, s, lo, hi, d):
    """floor((size + lo + hi - d*(k - 1) - 1) / s) + 1 (<= 0 when the kernel does not fit)."""
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


class _ConvNd(Module):
    _nd = 2
    _layout = "(N, C, H, W)"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", dtype=np.float32):
        super().__init__()
        name, nd = type(self).__name__, self._nd
        self.in_channels = positive_int(in_channels, f"{name}: in_channels")
        self.out_channels = positive_int(out_channels, f"{name}: out_channels")
        self.kernel_size = int_tuple(kernel_size, nd, f"{name}: kernel_size")
        self.stride = int_tuple(stride, nd, f"{name}: stride")
        self.dilation = int_tuple(dilation, nd, f"{name}: dilation")
        self.groups = positive_int(groups, f"{name}: groups")
        boolean(bias, f"{name}: bias")
        if self.in_channels % self.groups:
            raise ValueError(f"{name}: in_channels ({self.in_channels}) must be divisible by "
                             f"groups ({self.groups})")
        if self.out_channels % self.groups:
            raise ValueError(f"{name}: out_channels ({self.out_channels}) must be divisible by "
                             f"groups ({self.groups})")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"{name}: padding_mode must be one of {_PADDING_MODES}, "
                             f"got {padding_mode!r}")
        self.padding_mode = padding_mode
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{name}: padding must be 'same', 'valid', an int or a tuple of "
                                 f"{nd} ints, got {padding!r}")
            if padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{name}: padding='same' needs stride 1, got stride {self.stride}")
            self.padding = padding
            if padding == "valid":
                self._pad = tuple((0, 0) for _ in range(nd))
            else:
                # torch: total d*(k-1), the smaller half first (extra on the bottom / right)
                tot = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
                self._pad = tuple((t // 2, t - t // 2) for t in tot)
        else:
            self.padding = int_tuple(padding, nd, f"{name}: padding", minimum=0)
            self._pad = tuple((p, p) for p in self.padding)
        # what the kernels pad with zeros: all of it, or nothing when forward pads the input
        # itself (reflect / replicate / circular)
        self._kpad = self._pad if padding_mode == "zeros" else tuple((0, 0) for _ in range(nd))
        dt = as_float_dtype(dtype, f"{name}: dtype")
        self.weight = Parameter(aligned_empty((self.out_channels, self.in_channels // self.groups)
                                         + self.kernel_size, dt))
        self.bias = Parameter(aligned_empty(self.out_channels, dt)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        """torch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias,
        fan_in = in_channels/groups * prod(kernel_size)."""
        init.default_weight_bias_(self.weight, self.bias)

    def extra_repr(self):
        nd = self._nd

        def show(v):
            return v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v

        s = f"{self.in_channels}, {self.out_channels}, kernel_size={show(self.kernel_size)}"
        if self.stride != (1,) * nd:
            s += f", stride={show(self.stride)}"
        if self.padding != (0,) * nd:
            s += f", padding={self.padding!r}" if isinstance(self.padding, str) \
                else f", padding={show(self.padding)}"
        if self.dilation != (1,) * nd:
            s += f", dilation={show(self.dilation)}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s

    # -- geometry ------------------------------------------------------------------------------
    def _geometry(self, spatial, pad=None):
        """(H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, (bottom, right padding)) as 2-D
        numbers (Conv1d: H = KH = 1), with the kernels' zero padding (pad: another one)."""
        H, W = spatial
        KH, KW = self.kernel_size
        SH, SW = self.stride
        DH, DW = self.dilation
        (PH, PH1), (PW, PW1) = self._kpad if pad is None else pad
        return (H, W, _out_size(H, KH, SH, PH, PH1, DH), _out_size(W, KW, SW, PW, PW1, DW),
                KH, KW, SH, SW, PH, PW, DH, DW, (PH1, PW1))

    def _check_input(self, x):
        w = self.weight.data
        x = self._check_dtype(x, w.dtype)
        nd = self._nd
        if x.ndim != nd + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self._short_repr()}: expected input of shape "
                             f"{self._layout.replace('C', str(self.in_channels), 1)}, got {x.shape}")
        return x

    def output_shape(self, shape):
        """The output shape for an input of `shape` (N, C, *spatial); ValueError if the dilated
        kernel does not fit in the padded input."""
        g = self._geometry(tuple(shape[2:]), self._pad)
        out = (g[3],) if self._nd == 1 else (g[2], g[3])
        if any(o <= 0 for o in out):
            padded = tuple(s + sum(p) for s, p in zip(shape[2:], self._pad))
            dil = tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel_size))
            raise ValueError(f"{self._short_repr()}: the kernel (dilated size {dil}) is larger "
                             f"than the padded input (size {padded}) for input of shape "
                             f"{tuple(shape)}")
        return (shape[0], self.out_channels) + out

    # -- the stateless interface (DenseBlock's shared buffer) ------------------------------------
    def pack_forward(self, out, x):
        """The forward's weights packed once for calls like forward_into(out, x) (the same
        shapes, dtype and batch strides): an opaque value for forward_into(prepacked=), valid
        until the weights change (planned inference)."""
        geom = self._raw_geometry(x, "pack_forward")
        H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, _ = geom
        b = self.bias
        return _k.conv2d_pack_forward(self._as4(x), self._as4(out),
                                      self.weight.data.reshape(self.out_channels, -1, KH, KW),
                                      None if b is None else b.data, SH, SW, PH, PW, DH, DW,
                                      self.groups)

    def forward_into(self, out, x, activation=None, scale=None, shift=None, residual=None,
                     prepacked=None):
        """out <- conv(x) + b (then max(., 0) when activation='relu'), nothing saved: for a
        container that keeps layers' inputs and outputs as channel slices of one buffer. x
        (N, C, *spatial) and out (N, C', *out_spatial) may be batch-strided views (contiguous
        within one sample, e.g. buf[:, :C]); zero padding only. backward_into is its backward.

        Inference epilogues, fused into the same pass over each output image (no backward):
        scale and shift (C',) -- out = out * scale + shift per channel after the activation (an
        eval-mode BatchNorm that follows the ReLU); residual (out's shape, contiguous within each
        sample) -- then out += residual (a skip connection). prepacked: pack_forward(out, x)'s
        value for these shapes and the current weights (not packed again)."""
        relu = activation_flag(activation, self)
        geom = self._raw_geometry(x, "forward_into")
        oshape = self.output_shape(x.shape)
        if not _sample_contiguous(out, oshape, x.dtype, writeable=True):
            raise ValueError(f"{self._short_repr()}.forward_into: out must be a writeable "
                             f"{x.dtype} array of shape {oshape}, contiguous within each sample, "
                             f"got {_describe(out)}")
        if (scale is None) != (shift is None):
            raise ValueError(f"{self._short_repr()}.forward_into: scale and shift go together")
        if scale is not None:
            scale = np.ascontiguousarray(scale, x.dtype)
            shift = np.ascontiguousarray(shift, x.dtype)
            if scale.shape != (self.out_channels,) or shift.shape != (self.out_channels,):
                raise ValueError(f"{self._short_repr()}.forward_into: scale and shift must have "
                                 f"shape ({self.out_channels},), got {scale.shape} and "
                                 f"{shift.shape}")
        if residual is not None:
            if not _sample_contiguous(residual, oshape, x.dtype):
                raise ValueError(f"{self._short_repr()}.forward_into: residual must be a "
                                 f"{x.dtype} array of shape {oshape}, contiguous within each "
                                 f"sample, got {_describe(residual)}")
            residual = self._as4(residual)
        post = {} if scale is None and residual is None else \
            dict(scale=scale, shift=shift, residual=residual)
        if prepacked is not None:
            post["algorithm"], post["packed"] = prepacked
        self._forward_into(self._as4(out), self._as4(x), geom, relu, **post)

    def backward_into(self, dy, x, dx=None, accumulate_dx=False):
        """forward_into's backward: the parameter gradients (+)= those of out = conv(x) + b for
        the output gradient dy, and dx (+)= (accumulate_dx) the input gradient when dx (x's
        shape; may be batch-strided like x) is given. An activation's backward is the caller's
        (e.g. dy masked by out > 0 for 'relu')."""
        geom = self._raw_geometry(x, "backward_into")
        if not _sample_contiguous(dy, self.output_shape(x.shape), x.dtype):
            raise ValueError(f"{self._short_repr()}.backward_into: dy must be a {x.dtype} array "
                             f"of shape {self.output_shape(x.shape)}, contiguous within each "
                             f"sample, got {_describe(dy)}")
        if dx is not None and not _sample_contiguous(dx, x.shape, x.dtype, writeable=True):
            raise ValueError(f"{self._short_repr()}.backward_into: dx must be a writeable "
                             f"{x.dtype} array of shape {x.shape}, contiguous within each sample, "
                             f"got {_describe(dx)}")
        self._backward_into(None if dx is None else self._as4(dx), self._as4(dy), self._as4(x),
                            geom, acc_dx=bool(accumulate_dx))

    def _as4(self, a):
        return a[:, :, None, :] if self._nd == 1 else a

    def _raw_geometry(self, x, who):
        """The kernels' geometry for forward_into / backward_into's x, checked."""
        if self.padding_mode != "zeros":
            raise ValueError(f"{self._short_repr()}.{who}: needs padding_mode='zeros', got "
                             f"{self.padding_mode!r}")
        w = self.weight.data
        if not _sample_contiguous(x, None, w.dtype) or x.ndim != self._nd + 2 \
                or x.shape[1] != self.in_channels:
            raise ValueError(f"{self._short_repr()}.{who}: x must be a {w.dtype} array of shape "
                             f"{self._layout.replace('C', str(self.in_channels), 1)}, contiguous "
                             f"within each sample, got {_describe(x)}")
        return self._geometry(x.shape[2:])

    def _forward_into(self, y4, x4, geom, relu=False, scale=None, shift=None, residual=None,
                      algorithm=None, packed=None):
        """y4 (N, OC, OH, OW) <- conv(x4 (N, C, H, W)), then max(., 0) in place when relu (in
        the same kernel call), then forward_into's epilogues; both may have a batch stride >
        C*H*W."""
        H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, _ = geom
        b = self.bias
        _k.conv2d_forward(y4, x4, self.weight.data.reshape(self.out_channels, -1, KH, KW),
                          None if b is None else b.data, SH, SW, PH, PW, DH, DW, self.groups,
                          relu, algorithm=algorithm, scale=scale, shift=shift,
                          residual=residual, packed=packed)

    def _backward_into(self, dx4, dy4, x4, geom, acc_dx=False):
        """Parameter gradients (+)= and dx4 (N, C, H, W) (+)= (acc_dx) the input gradient
        (dx4 None: skip it)."""
        H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, _ = geom
        w, b = self.weight, self.bias
        dw, acc_w = grad_buffer_of(w)
        if dw is not None:
            dw = dw.reshape(self.out_channels, -1, KH, KW)
        db, acc_b = grad_buffer_of(b)
        if dw is None and db is None and dx4 is None:
            return
        try:
            _k.conv2d_backward(dx4, dw, db, dy4, x4, w.data.reshape(self.out_channels, -1, KH, KW),
                               SH, SW, PH, PW, DH, DW, self.groups, bool(acc_w), bool(acc_b),
                               bool(acc_dx))
        except MemoryError:
            unmark_grad_buffers((w, acc_w), (b, acc_b))
            raise

    # -- forward / backward ----------------------------------------------------------------------
    fused_activations = frozenset({"relu"})

    def forward(self, x, activation=None):
        """y = conv(x) + b; activation='relu': max(y, 0) in the same kernel call (a container's
        fusion of a following ReLU, Module.fused_activations). What is saved for backward is
        the same either way: backward takes d(loss)/d(conv(x) + b), the activation's backward
        stays with the caller."""
        relu = activation_flag(activation, self)
        x = self._check_input(x)
        out_shape = self.output_shape(x.shape)
        xshape = x.shape
        if self.padding_mode != "zeros":
            x = self._pad_input(x)
        geom = self._geometry(x.shape[2:])
        H, W, OH, OW = geom[:4]
        N = x.shape[0]
        x4 = x.reshape(N, self.in_channels, H, W)
        y = np.empty(out_shape, x.dtype)
        self._forward_into(y.reshape(N, self.out_channels, OH, OW), x4, geom, relu)
        self._save(x4, xshape, out_shape, geom)       # x (N, C, H, W) for dW and the shapes
        return y

    def backward(self, dy, need_input_grad=True):
        x4, xshape, out_shape, geom = self._saved()
        dy = self._check_grad(dy, out_shape, x4.dtype)
        OH, OW = geom[2:4]
        dy4 = dy.reshape(out_shape[0], self.out_channels, OH, OW)
        if self.padding_mode != "zeros":              # the padded input's gradient, folded
            dxp = np.empty(x4.shape, x4.dtype) if need_input_grad else None
            self._backward_into(dxp, dy4, x4, geom)
            if dxp is None:
                return None
            padded = xshape[:2] + tuple(n + lo + hi for n, (lo, hi) in zip(xshape[2:], self._pad))
            return self._fold_padding(dxp.reshape(padded), xshape)
        dx = np.empty(xshape, x4.dtype) if need_input_grad else None
        self._backward_into(None if dx is None else dx.reshape(x4.shape), dy4, x4, geom)
        return dx

    # -- reflect / replicate / circular padding -------------------------------------------------
    _NP_MODE = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}

    def _pad_input(self, x):
        """x padded by self._pad with the padding mode (np.pad: reflect, edge, wrap), as torch;
        torch's limits: reflect padding < the input size, circular padding <= it."""
        mode = self.padding_mode
        for size, (lo, hi) in zip(x.shape[2:], self._pad):
            if (mode == "reflect" and max(lo, hi) >= size) or \
                    (mode == "circular" and max(lo, hi) > size):
                rel = "smaller than" if mode == "reflect" else "at most"
                raise ValueError(f"{self._short_repr()}: padding_mode={mode!r} needs padding "
                                 f"{rel} the input size, got padding {self._pad} for input of "
                                 f"shape {x.shape}")
        return np.pad(x, ((0, 0), (0, 0)) + self._pad, mode=self._NP_MODE[mode])

    def _fold_padding(self, dxp, xshape):
        """The input gradient from the padded input's: each padded position adds into the
        input position it copied (the index map is np.pad of the positions, same mode)."""
        dx = dxp
        for axis, (size, (lo, hi)) in enumerate(zip(xshape[2:], self._pad), start=2):
            src = np.pad(np.arange(size), (lo, hi), mode=self._NP_MODE[self.padding_mode])
            inner = [slice(None)] * dx.ndim
            inner[axis] = slice(lo, lo + size)
            out = dx[tuple(inner)].copy()
            for p in list(range(lo)) + list(range(lo + size, lo + size + hi)):
                at, frm = [slice(None)] * dx.ndim, [slice(None)] * dx.ndim
                at[axis], frm[axis] = src[p], p
                out[tuple(at)] += dx[tuple(frm)]
            dx = out
        return np.ascontiguousarray(dx)


class Conv1d(_ConvNd):
    """y = b + sum over input channels of w * x, sliding along L (the seed's Conv1D;
    cross-correlation, as torch.nn.Conv1d). "Convolutional Modules": Conv1D-S is
    Conv1d(1, 1, 2l+1, padding=l, bias=False), i.e. y = Q z with the seed's banded matrix Q.

    Args:
        in_channels, out_channels: C and C'.
        kernel_size: k. stride, dilation: ints >= 1. padding: int >= 0, 'valid' (0) or 'same'
            (stride 1; output length L, extra padding on the right for an even d*(k-1)).
        groups: split channels into groups convolved separately (groups = C: depthwise).
        bias: learn C' biases (default True). padding_mode: 'zeros' (default), 'reflect',
            'replicate' or 'circular', as torch.
        dtype: float32 (default) or float64.

    Shape:
        x (N, C, L) -> y (N, C', L_out), L_out = floor((L + 2*padding - dilation*(k-1) - 1) / stride) + 1;
        weight (C', C/groups, k) -- k*C*C'/groups parameters plus C' biases.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.Conv1d(32, 64, 5, padding=2)(np.zeros((8, 32, 100), np.float32)).shape
        (8, 64, 100)
    """
    _nd = 1
    _layout = "(N, C, L)"

    def _geometry(self, spatial, pad=None):
        (L,), (K,), (S,), (D,), ((P0, P1),) = tuple(spatial), self.kernel_size, self.stride, \
            self.dilation, self._kpad if pad is None else pad
        return (1, L, 1, _out_size(L, K, S, P0, P1, D), 1, K, 1, S, 0, P0, 1, D, (0, P1))


class Conv2d(_ConvNd):
    """y = b + sum over input channels of w * x, sliding over (H, W) (the seed's Conv2D;
    cross-correlation, as torch.nn.Conv2d). Conv2D-S is Conv2d(1, 1, 2l+1, padding=l, bias=False).

    Args:
        in_channels, out_channels: C and C'.
        kernel_size, stride, dilation: an int or an (h, w) pair.
        padding: an int, an (h, w) pair, 'valid' (0) or 'same' (stride 1 only).
        groups: split channels into groups convolved separately (groups = C: depthwise).
        bias: learn C' biases (default True). padding_mode: 'zeros' (default), 'reflect',
            'replicate' or 'circular', as torch.
        dtype: float32 (default) or float64.

    Shape:
        x (N, C, H, W) -> y (N, C', H_out, W_out),
        H_out = floor((H + 2*padding[0] - dilation[0]*(kernel_size[0]-1) - 1) / stride[0]) + 1
        (W_out likewise); weight (C', C/groups, kh, kw) -- k^2*C*C'/groups weights plus C' biases.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.Conv2d(3, 16, 3, stride=2, padding=1)(np.zeros((4, 3, 32, 32), np.float32)).shape
        (4, 16, 16, 16)
    """
    _nd = 2


def chainable(m):
    """True when m can run inside conv_chain_forward: exactly a float32 Conv1d / Conv2d of one
    group with zero padding, neither hooked nor wrapped (profiling)."""
    return (type(m) in (Conv1d, Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
            and m.weight.data.dtype == np.float32 and "forward" not in m.__dict__
            and not m.__dict__.get("_observed"))


_POOL = threading.local()      # per thread: conv_chain_forward's intermediate outputs


def _intermediate(shape, i):
    """A float32 array of `shape` for the i-th intermediate output of a chain, reused by the
    calling thread's later chains (nothing outside one kernel call ever sees it; a handed-over
    output is never even written, so its pages are never touched). At most 16 kept."""
    d = getattr(_POOL, "bufs", None)
    if d is None:
        d = _POOL.bufs = {}
    a = d.get((shape, i))
    if a is None:
        if len(d) >= 16:
            d.clear()
        a = d[shape, i] = np.empty(shape, np.float32)
    return a


def conv_chain_forward(layers, x):
    """The output of the convolutions ((conv, relu), ...) applied one after another to x --
    conv(x) + b, then max(., 0) where relu -- nothing saved (inference), computed depth first:
    each thread takes its images through every layer while they are in its cache, and an output
    that only the next layer reads goes straight into that layer's input layout between the
    kernels that can (conv2d_chain_forward; the intermediates live in a per-thread pool, only
    the result is a fresh array). None when no output can be handed over, or when x
    is not a float32 array the layers accept one after another (the caller then runs them one
    by one, which raises the layer's own error)."""
    if type(x) is not np.ndarray or x.dtype != np.float32:
        return None
    x = np.ascontiguousarray(x)
    tuples, cur = [], x
    for m, relu in layers:
        if cur.ndim != m._nd + 2 or cur.shape[1] != m.in_channels:
            return None
        g = m._geometry(cur.shape[2:])
        if g[2] <= 0 or g[3] <= 0:
            return None
        KH, KW, SH, SW, PH, PW, DH, DW = g[4:12]
        oshape = m.output_shape(cur.shape)
        y = np.empty(oshape, np.float32) if len(tuples) == len(layers) - 1 else \
            _intermediate(oshape, len(tuples))
        y4, x4 = m._as4(y), m._as4(cur)
        w4 = m.weight.data.reshape(m.out_channels, -1, KH, KW)
        b = None if m.bias is None else m.bias.data
        algo, packed = _k.conv2d_pack_forward(x4, y4, w4, b, SH, SW, PH, PW, DH, DW, 1)
        tuples.append((y4, x4, w4, b, algo, packed, relu, SH, SW, PH, PW, DH, DW, None, None, None))
        cur = y
    if not any(a[4] in ("small", "igemm") and c[4] == "igemm" for a, c in zip(tuples, tuples[1:])):
        # no output to hand over: one image at a time only shrinks the Winograd / im2row
        # blocks (conv1d_b64 at the avx2 level, F(2, 5) twice: 1.03x the layers one by one)
        return None
    _k.conv2d_chain_forward(tuple(tuples), dead=(True,) * (len(tuples) - 1) + (False,))
    return cur
