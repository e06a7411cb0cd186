"""The seed's "Modern CNN Architectures" blocks: ResBlock with batch normalization, DenseNet block."""
import numpy as np

from fastmod._runtime import STATE
from fastmod._validate import positive_int
from fastmod.nn.activation import make_activation
from fastmod.nn.containers import ModuleList
from fastmod.nn.conv import Conv2d
from fastmod.nn.module import Module, as_float_dtype, elementwise_activation, fuses_output_activation
from fastmod.nn.normalization import BatchNorm2d


def _hidden(module, name, value):
    # activations are stateless: kept as plain attributes so that the children (and the
    # state_dict) are exactly the seed's conv / bn layers, as in the equivalent torch module
    object.__setattr__(module, name, value)


class BNResBlock(Module):
    """ResBlock(x) = BN(sigma(Conv(BN(sigma(Conv(x)))))) + x, in the seed's order exactly:
    bn2(sigma(conv2(bn1(sigma(conv1(x)))))) + x ("Modern CNN Architectures", ResNet with BN).

    Args:
        channels: C, the input and output channels of both 3x3 convolutions (padding 1, bias).
        activation: sigma, 'relu' (default) or any name / Module class fastmod.nn accepts.
        dtype: float32 (default) or float64.

    Children: conv1, bn1, conv2, bn2 (torch names; sigma has no parameters).

    Shape: x (N, C, H, W) -> y same shape.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.BNResBlock(16)(np.zeros((2, 16, 8, 8), np.float32)).shape
        (2, 16, 8, 8)
    """

    def __init__(self, channels, activation="relu", dtype=np.float32):
        super().__init__()
        self.channels = positive_int(channels, "BNResBlock: channels")
        dt = as_float_dtype(dtype, "BNResBlock: dtype")
        self.conv1 = Conv2d(channels, channels, 3, padding=1, dtype=dt)
        self.bn1 = BatchNorm2d(channels, dtype=dt)
        self.conv2 = Conv2d(channels, channels, 3, padding=1, dtype=dt)
        self.bn2 = BatchNorm2d(channels, dtype=dt)
        self.activation = activation
        _hidden(self, "act1", make_activation(activation, "BNResBlock"))
        _hidden(self, "act2", make_activation(activation, "BNResBlock"))

    def extra_repr(self):
        s = f"{self.channels}"
        return s if self.activation == "relu" else s + f", activation={self.activation!r}"

    def forward(self, x):
        x = self._check_dtype(x, self.conv1.weight.data.dtype)
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{self._short_repr()}: expected input of shape "
                             f"(N, {self.channels}, H, W), got {x.shape}")
        a1, a2 = elementwise_activation(self.act1), elementwise_activation(self.act2)
        if not STATE.grad_enabled and a1 is not None and fuses_output_activation(self.conv1, a1) \
                and a2 is not None and fuses_output_activation(self.conv2, a2):
            # inference: each activation applied inside its convolution's call (same values)
            h = self.bn1(self.conv1(x, activation=a1))
            y = self.bn2(self.conv2(h, activation=a2))
        else:
            h = self.bn1(self.act1(self.conv1(x)))
            y = self.bn2(self.act2(self.conv2(h)))
        y += x                                  # the skip connection (y is bn2's own output)
        self._save(y.shape, y.dtype)
        return y

    def backward(self, dy, need_input_grad=True):
        shape, dtype = self._saved()
        dy = self._check_grad(dy, shape, dtype)
        g = self.act2.backward(self.bn2.backward(dy))
        g = self.act1.backward(self.bn1.backward(self.conv2.backward(g)))
        dx = self.conv1.backward(g, need_input_grad=need_input_grad)
        if not need_input_grad:
            return None
        dx += dy                                # d(skip)/dx = I
        return dx


class DenseBlock(Module):
    """x_l = sigma(Conv_l([x_0, ..., x_{l-1}])) for l = 1..L; output [x_0, x_1, ..., x_L]
    concatenated on channels ("Modern CNN Architectures", DenseNet).

    No quadratic copying: the output (N, in + L*growth, H, W) is allocated once, x_0 is copied
    into its first channels, and each layer's convolution reads the channel prefix in place and
    writes its own channel slice (the conv kernels take a batch stride). Backward runs the
    layers in reverse, each adding its input gradient into the prefix of one gradient buffer.

    Args:
        in_channels: channels of x_0.
        growth_rate: channels each layer adds.
        num_layers: L.
        activation: sigma, 'relu' (default) or any name / Module class fastmod.nn accepts.
        dtype: float32 (default) or float64.

    Children: layers.{i} = Conv2d(in + i*growth, growth, 3, padding=1) with bias.

    Shape: x (N, in, H, W) -> y (N, in + L*growth, H, W). The returned array is also kept for
    backward: do not modify it in place before calling backward.

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> nn.DenseBlock(24, 12, 4)(np.zeros((2, 24, 8, 8), np.float32)).shape
        (2, 72, 8, 8)
    """

    def __init__(self, in_channels, growth_rate, num_layers, activation="relu", dtype=np.float32):
        super().__init__()
        self.in_channels = positive_int(in_channels, "DenseBlock: in_channels")
        self.growth_rate = positive_int(growth_rate, "DenseBlock: growth_rate")
        self.num_layers = positive_int(num_layers, "DenseBlock: num_layers")
        dt = as_float_dtype(dtype, "DenseBlock: dtype")
        self.out_channels = in_channels + num_layers * growth_rate
        self.layers = ModuleList(Conv2d(in_channels + i * growth_rate, growth_rate, 3, padding=1,
                                        dtype=dt) for i in range(num_layers))
        self.activation = activation
        acts = [make_activation(activation, "DenseBlock") for _ in range(num_layers)]
        _hidden(self, "_acts", acts)

    def extra_repr(self):
        s = f"{self.in_channels}, {self.growth_rate}, {self.num_layers}"
        return s if self.activation == "relu" else s + f", activation={self.activation!r}"

    def forward(self, x):
        x = self._check_dtype(x, self.layers[0].weight.data.dtype)
        for i, conv in enumerate(self.layers):
            # the kernels are called directly on one buffer: every layer must have its dtype
            # (a layer converted alone with astype would be read as the wrong type)
            if conv.weight.data.dtype != x.dtype:
                raise TypeError(f"{self._short_repr()}: layers.{i} is {conv.weight.data.dtype}, "
                                f"layers.0 {x.dtype}; convert the whole block with astype")
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{self._short_repr()}: expected input of shape "
                             f"(N, {self.in_channels}, H, W), got {x.shape}")
        N, c0, H, W = x.shape
        g = self.growth_rate
        buf = np.empty((N, self.out_channels, H, W), x.dtype)
        buf[:, :c0] = x
        # each layer reads the channel prefix in place and writes its own slice (forward_into);
        # an activation the convolutions can apply is applied in their kernel calls
        acts = [elementwise_activation(a) for a in self._acts]
        fused = all(a is not None and fuses_output_activation(c, a) for a, c in zip(acts, self.layers))
        for i, conv in enumerate(self.layers):
            cin = c0 + i * g
            if fused:
                conv.forward_into(buf[:, cin:cin + g], buf[:, :cin], activation=acts[i])
            else:
                z = np.empty((N, g, H, W), x.dtype)
                conv.forward_into(z, buf[:, :cin])
                buf[:, cin:cin + g] = self._acts[i](z)
        self._save(buf, fused and acts)             # the concatenation: every layer's input
        return buf

    def backward(self, dy, need_input_grad=True):
        buf, acts = self._saved()
        fused = bool(acts)
        dy = self._check_grad(dy, buf.shape, buf.dtype)
        c0, g = self.in_channels, self.growth_rate
        # dbuf accumulates d(loss)/d(channel block): layer i's output block is complete once
        # the layers after it (the only readers) have added their input gradients
        dbuf = dy.copy()
        for i in reversed(range(self.num_layers)):
            cin = c0 + i * g
            out = buf[:, cin:cin + g]
            if fused and acts[i] == "relu":         # relu' from the output, on the slices
                dz = np.multiply(dbuf[:, cin:cin + g], out > 0)
            elif fused:
                dz = self._acts[i].grad_from_output(np.ascontiguousarray(dbuf[:, cin:cin + g]),
                                                    np.ascontiguousarray(out))
            else:
                dz = self._acts[i].backward(np.ascontiguousarray(dbuf[:, cin:cin + g]))
            dprefix = dbuf[:, :cin] if (i > 0 or need_input_grad) else None
            self.layers[i].backward_into(dz, buf[:, :cin], dx=dprefix, accumulate_dx=True)
        return np.ascontiguousarray(dbuf[:, :c0]) if need_input_grad else None
