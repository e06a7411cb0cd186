"""Every public module of fastmod.nn and every fastmod.models constructor in one table: how to
build one (float32) and what to feed it. The cross-module tests (test_module_table.py) run over
it: the astype round trip and the checks of backward's output gradient. A public Module
subclass, or a model constructor, without a row here fails test_module_table.py.
"""
import numpy as np

from fastmod import models, nn


class Case:
    """make() -> the module (float32); inputs(dtype, rng) -> forward's positional arguments
    (None: the module has no forward, e.g. ModuleList); kwargs: forward's keyword arguments."""

    def __init__(self, make, inputs, **kwargs):
        self.make, self.inputs, self.kwargs = make, inputs, kwargs


def floats(*shapes):
    """inputs(dtype, rng): one standard-normal array of `dtype` per shape."""
    return lambda dt, rng: tuple(rng.standard_normal(s).astype(dt) for s in shapes)


def tokens(shape, vocab):
    """inputs: integer ids in [0, vocab) (any dtype asked for: ids take no dtype)."""
    return lambda dt, rng: (rng.integers(0, vocab, shape),)


def _mha_cross():
    return nn.MultiheadAttention(8, 2, kdim=5, vdim=3, add_bias_kv=True, add_zero_attn=True)


def _encoder():
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    return nn.TransformerEncoder(layer, 2, norm=nn.LayerNorm(8))


NN_CASES = {
    "Linear": Case(lambda: nn.Linear(4, 3), floats((3, 4))),
    "Linear-3d-nobias": Case(lambda: nn.Linear(4, 3, bias=False), floats((2, 5, 4))),
    "ReLU": Case(nn.ReLU, floats((3, 7))),
    "ReLU-inplace": Case(lambda: nn.ReLU(inplace=True), floats((3, 7))),
    "Sigmoid": Case(nn.Sigmoid, floats((3, 7))),
    "Tanh": Case(nn.Tanh, floats((2, 3, 4))),
    "GELU": Case(nn.GELU, floats((3, 7))),
    "GELU-tanh": Case(lambda: nn.GELU(approximate="tanh"), floats((3, 7))),
    "Softmax": Case(lambda: nn.Softmax(dim=1), floats((3, 4, 5))),
    "LogSoftmax": Case(lambda: nn.LogSoftmax(dim=-1), floats((3, 7))),
    "Identity": Case(nn.Identity, floats((3, 7))),
    "Sequential": Case(lambda: nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.Tanh()),
                       floats((3, 4))),
    "Sequential-empty": Case(nn.Sequential, floats((3, 7))),
    "ModuleList": Case(lambda: nn.ModuleList([nn.Linear(4, 3), nn.ReLU()]), None),
    "Residual": Case(lambda: nn.Residual(nn.Sequential(nn.Linear(4, 4), nn.Sigmoid())),
                     floats((3, 4))),
    "Parallel-sum": Case(lambda: nn.Parallel(nn.Linear(4, 3), nn.Sequential(nn.Linear(4, 3), nn.GELU())),
                         floats((3, 4))),
    "Parallel-concat": Case(lambda: nn.Parallel(nn.Linear(4, 3), nn.Identity(), combine="concat"),
                            floats((3, 4))),
    "ResidualBlock": Case(lambda: nn.ResidualBlock(5), floats((3, 5))),
    "ResidualBlock-gelu": Case(lambda: nn.ResidualBlock(5, activation="gelu"), floats((2, 3, 5))),
    "Flatten": Case(nn.Flatten, floats((2, 3, 4))),
    "Dropout": Case(lambda: nn.Dropout(0.5), floats((3, 7))),
    "Dropout-eval": Case(lambda: nn.Dropout(0.5).eval(), floats((3, 7))),
    "MultiheadAttention": Case(lambda: nn.MultiheadAttention(8, 2), floats((2, 5, 8))),
    "MultiheadAttention-weights": Case(lambda: nn.MultiheadAttention(8, 2), floats((2, 5, 8)),
                                       need_weights=True),
    "MultiheadAttention-cross": Case(_mha_cross, floats((2, 5, 8), (2, 4, 5), (2, 4, 3))),
    "MultiheadAttention-seq-first": Case(lambda: nn.MultiheadAttention(8, 2, batch_first=False),
                                         floats((5, 2, 8)), is_causal=True),
    "Embedding": Case(lambda: nn.Embedding(10, 4, padding_idx=0), tokens((3, 5), 10)),
    "TransformerEncoderLayer": Case(lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0),
                                    floats((2, 5, 8))),
    "TransformerEncoderLayer-pre-seq-first": Case(
        lambda: nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, activation="gelu",
                                           norm_first=True, batch_first=False),
        floats((5, 2, 8))),
    "TransformerEncoder": Case(_encoder, floats((2, 5, 8))),
    "Conv1d": Case(lambda: nn.Conv1d(3, 4, 3, padding=1), floats((2, 3, 9))),
    "Conv2d": Case(lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), floats((2, 3, 7, 6))),
    "Conv2d-reflect-groups": Case(lambda: nn.Conv2d(4, 4, 3, padding=1, groups=2,
                                                    padding_mode="reflect"), floats((2, 4, 5, 5))),
    "MaxPool1d": Case(lambda: nn.MaxPool1d(2), floats((2, 3, 9))),
    "MaxPool2d": Case(lambda: nn.MaxPool2d(2), floats((2, 3, 6, 7))),
    "MaxPool2d-indices": Case(lambda: nn.MaxPool2d(3, stride=2, padding=1, return_indices=True),
                              floats((2, 3, 7, 7))),
    "AvgPool1d": Case(lambda: nn.AvgPool1d(3, stride=2, padding=1), floats((2, 3, 9))),
    "AvgPool2d": Case(lambda: nn.AvgPool2d(2), floats((2, 3, 6, 7))),
    "AdaptiveAvgPool1d": Case(lambda: nn.AdaptiveAvgPool1d(4), floats((2, 3, 9))),
    "AdaptiveAvgPool2d": Case(lambda: nn.AdaptiveAvgPool2d((2, 3)), floats((2, 3, 6, 7))),
    "AdaptiveMaxPool1d-indices": Case(lambda: nn.AdaptiveMaxPool1d(3, return_indices=True),
                                      floats((2, 3, 8))),
    "AdaptiveMaxPool2d": Case(lambda: nn.AdaptiveMaxPool2d(2), floats((2, 3, 5, 6))),
    "GlobalAvgPool": Case(nn.GlobalAvgPool, floats((2, 3, 5, 4))),
    "BNResBlock": Case(lambda: nn.BNResBlock(3), floats((2, 3, 5, 4))),
    "DenseBlock": Case(lambda: nn.DenseBlock(3, 2, 2), floats((2, 3, 5, 4))),
    "DenseBlock-tanh": Case(lambda: nn.DenseBlock(3, 2, 2, activation="tanh"), floats((2, 3, 4, 4))),
    "LayerNorm": Case(lambda: nn.LayerNorm(7), floats((3, 7))),
    "LayerNorm-S": Case(lambda: nn.LayerNorm((2, 7), elementwise_affine=False), floats((3, 2, 7))),
    "BatchNorm1d": Case(lambda: nn.BatchNorm1d(3), floats((4, 3, 5))),
    "BatchNorm1d-eval": Case(lambda: nn.BatchNorm1d(3).eval(), floats((4, 3))),
    "BatchNorm2d": Case(lambda: nn.BatchNorm2d(3), floats((2, 3, 4, 4))),
    "BatchNorm2d-stateless": Case(lambda: nn.BatchNorm2d(3, affine=False, track_running_stats=False),
                                  floats((2, 3, 4, 4))),
    "GroupNorm": Case(lambda: nn.GroupNorm(2, 4), floats((2, 4, 5))),
    "GroupNorm-noaffine": Case(lambda: nn.GroupNorm(2, 4, affine=False), floats((2, 4, 3, 3))),
}

MODEL_CASES = {
    "mlp": Case(lambda: models.mlp([4, 6, 3]), floats((3, 4))),
    "resnet_s": Case(lambda: models.resnet_s(6, 2, 3, in_features=4), floats((3, 4))),
    "cnn": Case(lambda: models.cnn(), floats((2, 1, 8, 8))),
    "bn_resnet": Case(lambda: models.bn_resnet(channels=4, num_blocks=1), floats((2, 1, 8, 8))),
    "densenet": Case(lambda: models.densenet(stem_channels=4, growth_rate=2, num_layers=2),
                     floats((2, 1, 8, 8))),
    "transformer_classifier": Case(
        lambda: models.transformer_classifier(3, vocab_size=11, d_model=8, nhead=2, num_layers=1,
                                              max_len=16, padding_idx=0),
        tokens((2, 6), 11)),
    "TransformerClassifier": Case(
        lambda: models.TransformerClassifier(3, in_features=5, d_model=8, nhead=2, num_layers=1,
                                             max_len=16, norm_first=True, dropout=0.0),
        floats((2, 6, 5))),
}

CASES = {**NN_CASES, **{f"models.{k}": v for k, v in MODEL_CASES.items()}}
