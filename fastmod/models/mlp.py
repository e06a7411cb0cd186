"""The seed's fully connected architectures as ready-to-train constructors: MLP and ResNet-S."""

import numpy as np

from fastmod.nn.activation import make_activation
from fastmod.nn.containers import ResidualBlock, Sequential
from fastmod.nn.linear import Linear
from fastmod.nn.module import as_float_dtype
from fastmod._validate import positive_int

__all__ = ["mlp", "resnet_s"]


def mlp(sizes, activation="relu", bias=True, dtype=np.float32):
    """MLP(x) = MM_{W[L],b[L]}(sigma(MM_{W[L-1],b[L-1]}(... sigma(MM_{W[1],b[1]}(x)) ...)))

    The seed's multi-layer perceptron ("Composition Examples"): Linear layers of the given
    sizes with an activation between consecutive ones (none after the last: it gives logits).

    Args:
        sizes: layer widths [in_features, hidden_1, ..., out_features] (at least two).
        activation: 'relu' (default), 'gelu', 'tanh', 'sigmoid', ... or a Module class.
        bias: give every Linear a bias (default True).
        dtype: float32 (default) or float64.

    Returns:
        Sequential(Linear, act, Linear, act, ..., Linear): state_dict names '0.weight',
        '0.bias', '2.weight', ... exactly as torch.nn.Sequential of the same layers.

    Shape: (N, sizes[0]) -> (N, sizes[-1]).

    Example:
        >>> import numpy as np, fastmod
        >>> model = fastmod.models.mlp([784, 512, 512, 10])
        >>> model(np.zeros((32, 784), np.float32)).shape
        (32, 10)
    """
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"mlp: sizes must be a list of positive integers, got {sizes!r}")
    sizes = [positive_int(s, f"mlp: sizes[{i}]") for i, s in enumerate(sizes)]
    if len(sizes) < 2:
        raise ValueError(f"mlp: sizes needs at least two entries (in and out features), got {sizes}")
    if not isinstance(bias, (bool, np.bool_)):
        raise ValueError(f"mlp: bias must be a bool, got {bias!r}")
    dt = as_float_dtype(dtype, "mlp: dtype")
    make_activation(activation, "mlp")          # validate once, before building anything
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(make_activation(activation, "mlp"))
        layers.append(Linear(a, b, bias=bool(bias), dtype=dt))
    return Sequential(*layers)


def resnet_s(dim, depth, num_classes, in_features=None, activation="relu", dtype=np.float32):
    """ResNet-S(x) = MM(Res(Res(... Res(x) ...))), Res(z) = z + sigma(MM_1(sigma(MM_2(z))))

    The seed's simplified ResNet ("Residual Connections"): `depth` ResidualBlocks of width
    `dim`, then a Linear head to `num_classes` logits. When in_features is given and differs
    from dim, a Linear(in_features, dim) projection comes first (the residual stream needs a
    fixed width; the seed's formula assumes x already has it).

    Args:
        dim: width of the residual stream (the blocks' Linear(dim, dim) layers).
        depth: number of residual blocks (>= 1).
        num_classes: outputs of the final MM.
        in_features: input width (default dim: no projection).
        activation: sigma, 'relu' by default (see ResidualBlock).
        dtype: float32 (default) or float64.

    Returns:
        Sequential([Linear(in_features, dim)], ResidualBlock(dim) x depth, Linear(dim, num_classes)).
        state_dict names: '0.mm1.weight', '0.mm2.bias', ..., f'{depth}.weight' (the head; all
        indices shift by one with the projection), as a torch.nn.Sequential of modules with
        children mm1 and mm2.

    Shape: (N, in_features or dim) -> (N, num_classes).

    Example:
        >>> import numpy as np, fastmod
        >>> model = fastmod.models.resnet_s(256, 8, 10)
        >>> model(np.zeros((4, 256), np.float32)).shape
        (4, 10)
    """
    dim = positive_int(dim, "resnet_s: dim")
    depth = positive_int(depth, "resnet_s: depth")
    num_classes = positive_int(num_classes, "resnet_s: num_classes")
    if in_features is not None:
        in_features = positive_int(in_features, "resnet_s: in_features")
    dt = as_float_dtype(dtype, "resnet_s: dtype")
    make_activation(activation, "resnet_s")
    layers = []
    if in_features is not None and in_features != dim:
        layers.append(Linear(in_features, dim, dtype=dt))
    layers += [ResidualBlock(dim, activation=activation, dtype=dt) for _ in range(depth)]
    layers.append(Linear(dim, num_classes, dtype=dt))
    return Sequential(*layers)
