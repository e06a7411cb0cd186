"""The seed's convolutional architectures as ready-to-train constructors: CNN, BN-ResNet, DenseNet.

Defaults suit small images: 1x8x8 digits (fastmod.data's bundled set); pass in_channels=3,
image_size=32 for CIFAR-sized inputs. Every model returns logits (no softmax) and its
state_dict names match the torch.nn.Sequential of the same layers.
"""
import numpy as np

from fastmod._validate import positive_int
from fastmod.nn.activation import make_activation
from fastmod.nn.blocks import BNResBlock, DenseBlock
from fastmod.nn.containers import Sequential
from fastmod.nn.conv import Conv2d
from fastmod.nn.linear import Linear
from fastmod.nn.misc import Flatten
from fastmod.nn.module import as_float_dtype
from fastmod.nn.pooling import AdaptiveAvgPool2d

__all__ = ["cnn", "bn_resnet", "densenet"]


def _channels(value, who):
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{who}: channels must be a list of positive integers, got {value!r}")
    chans = [positive_int(c, f"{who}: channels[{i}]") for i, c in enumerate(value)]
    if not chans:
        raise ValueError(f"{who}: channels needs at least one entry")
    return chans


def cnn(in_channels=1, num_classes=10, image_size=8, channels=(16, 32), activation="relu",
        dtype=np.float32):
    """CNN(x) = MM(sigma(Conv2D(... sigma(Conv2D(x))))) ("Convolutional Neural Networks").

    3x3 convolutions with padding 1: the first with stride 1, each later one with stride 2
    (halving the image), a sigma after every convolution, then Flatten and one Linear (MM).
    in_channels=3, image_size=32, channels=(32, 64, 64) is SPEC §6's cnn_b32.

    Args:
        in_channels: image channels (1 for the bundled digits).
        num_classes: logits out.
        image_size: H = W of the input (an int or an (H, W) pair), to size the Linear.
        channels: output channels of each convolution.
        activation: sigma ('relu' default, or any name / Module class fastmod.nn accepts).
        dtype: float32 (default) or float64.

    Shape: (N, in_channels, H, W) -> (N, num_classes).

    Example:
        >>> import numpy as np, fastmod
        >>> fastmod.models.cnn()(np.zeros((4, 1, 8, 8), np.float32)).shape
        (4, 10)
    """
    who = "cnn"
    in_channels = positive_int(in_channels, f"{who}: in_channels")
    num_classes = positive_int(num_classes, f"{who}: num_classes")
    if isinstance(image_size, (tuple, list)):
        h, w = (positive_int(v, f"{who}: image_size") for v in image_size)
    else:
        h = w = positive_int(image_size, f"{who}: image_size")
    chans = _channels(channels, who)
    dt = as_float_dtype(dtype, f"{who}: dtype")
    make_activation(activation, who)
    layers, c = [], in_channels
    for i, co in enumerate(chans):
        stride = 1 if i == 0 else 2
        layers += [Conv2d(c, co, 3, stride=stride, padding=1, dtype=dt),
                   make_activation(activation, who)]
        if stride == 2:
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        c = co
    layers += [Flatten(), Linear(c * h * w, num_classes, dtype=dt)]
    return Sequential(*layers)


def bn_resnet(in_channels=1, num_classes=10, channels=32, num_blocks=2, activation="relu",
              dtype=np.float32):
    """Conv2d stem, num_blocks x BNResBlock, global average pooling, Linear ("Modern CNN
    Architectures": ResBlock(x) = BN(sigma(Conv(BN(sigma(Conv(x)))))) + x).

    in_channels=3, channels=64 is SPEC §6's bnresnet_b32. Any image size works (the pooling is
    global).

    Args:
        in_channels: image channels. num_classes: logits out.
        channels: width of the stem and of every block.
        num_blocks: residual blocks.
        activation: sigma inside the blocks. dtype: float32 (default) or float64.

    Shape: (N, in_channels, H, W) -> (N, num_classes).

    Example:
        >>> import numpy as np, fastmod
        >>> fastmod.models.bn_resnet()(np.zeros((4, 1, 8, 8), np.float32)).shape
        (4, 10)
    """
    who = "bn_resnet"
    in_channels = positive_int(in_channels, f"{who}: in_channels")
    num_classes = positive_int(num_classes, f"{who}: num_classes")
    channels = positive_int(channels, f"{who}: channels")
    num_blocks = positive_int(num_blocks, f"{who}: num_blocks")
    dt = as_float_dtype(dtype, f"{who}: dtype")
    return Sequential(Conv2d(in_channels, channels, 3, padding=1, dtype=dt),
                      *[BNResBlock(channels, activation, dtype=dt) for _ in range(num_blocks)],
                      AdaptiveAvgPool2d(1), Flatten(), Linear(channels, num_classes, dtype=dt))


def densenet(in_channels=1, num_classes=10, stem_channels=24, growth_rate=12, num_layers=4,
             activation="relu", dtype=np.float32):
    """Conv2d stem, one DenseBlock, global average pooling, Linear ("Modern CNN Architectures":
    x_l = sigma(Conv([x_0, ..., x_{l-1}])), output [x_0, ..., x_L]).

    in_channels=3 with the defaults is SPEC §6's densenet_b16.

    Args:
        in_channels: image channels. num_classes: logits out.
        stem_channels: channels of x_0 (the stem convolution's output).
        growth_rate, num_layers: of the DenseBlock (its output has stem + L*growth channels).
        activation: sigma inside the block. dtype: float32 (default) or float64.

    Shape: (N, in_channels, H, W) -> (N, num_classes).

    Example:
        >>> import numpy as np, fastmod
        >>> fastmod.models.densenet()(np.zeros((4, 1, 8, 8), np.float32)).shape
        (4, 10)
    """
    who = "densenet"
    in_channels = positive_int(in_channels, f"{who}: in_channels")
    num_classes = positive_int(num_classes, f"{who}: num_classes")
    stem = positive_int(stem_channels, f"{who}: stem_channels")
    block = DenseBlock(stem, growth_rate, num_layers, activation, dtype=dtype)
    dt = as_float_dtype(dtype, f"{who}: dtype")
    return Sequential(Conv2d(in_channels, stem, 3, padding=1, dtype=dt), block,
                      AdaptiveAvgPool2d(1), Flatten(),
                      Linear(block.out_channels, num_classes, dtype=dt))
