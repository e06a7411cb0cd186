"""fastmod.nn: the seed's building blocks as modules with hand-written backward passes."""
from fastmod.nn.module import Module, Parameter
from fastmod.nn.linear import Linear
from fastmod.nn.activation import ReLU, Sigmoid, Tanh, GELU, Softmax, LogSoftmax
from fastmod.nn.containers import (Identity, Sequential, ModuleList, Residual, Parallel,
                                   ResidualBlock)
from fastmod.nn.misc import Flatten, Dropout
from fastmod.nn.normalization import LayerNorm, BatchNorm1d, BatchNorm2d, GroupNorm
from fastmod.nn.attention import MultiheadAttention, scaled_dot_product_attention
from fastmod.nn.embedding import Embedding
from fastmod.nn.transformer import TransformerEncoderLayer, TransformerEncoder
from fastmod.nn.conv import Conv1d, Conv2d
from fastmod.nn.pooling import (MaxPool1d, MaxPool2d, AvgPool1d, AvgPool2d, AdaptiveAvgPool1d,
                                AdaptiveAvgPool2d, AdaptiveMaxPool1d, AdaptiveMaxPool2d,
                                GlobalAvgPool)
from fastmod.nn.blocks import BNResBlock, DenseBlock
from fastmod.nn import init

__all__ = ["Module", "Parameter", "Linear", "ReLU", "Sigmoid", "Tanh", "GELU", "Softmax",
           "LogSoftmax", "Identity", "Sequential", "ModuleList", "Residual", "Parallel",
           "ResidualBlock", "Flatten", "Dropout", "init"]
__all__ += ["MultiheadAttention", "scaled_dot_product_attention", "Embedding",
            "TransformerEncoderLayer", "TransformerEncoder"]
__all__ += ["LayerNorm", "BatchNorm1d", "BatchNorm2d", "GroupNorm"]
__all__ += ["Conv1d", "Conv2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d",
            "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
            "GlobalAvgPool", "BNResBlock", "DenseBlock"]
