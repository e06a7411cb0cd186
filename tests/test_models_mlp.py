"""fastmod.models.mlp and resnet_s: structure, the seed's formulas (NumPy reference), torch
parity with state_dicts loaded both ways, gradcheck, bad arguments."""
import numpy as np
import pytest

import fastmod
from fastmod import nn
from fastmod.models import mlp, resnet_s
from reference import assert_close

ACTS = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh}


def _ref_mlp(model, x, act):
    """MLP(x) = MM_L(sigma(MM_{L-1}(... sigma(MM_1(x)))))"""
    h = x.astype(np.float64)
    lins = [m for m in model if isinstance(m, nn.Linear)]
    for i, lin in enumerate(lins):
        h = h @ lin.weight.data.T.astype(np.float64) + lin.bias.data
        if i < len(lins) - 1:
            h = ACTS[act](h)
    return h


def _ref_resnet_s(model, x, act):
    """MM(Res(... Res(x))), Res(z) = z + sigma(MM_1(sigma(MM_2(z))))"""
    s = ACTS[act]
    h = x.astype(np.float64)
    for m in model:
        if isinstance(m, nn.ResidualBlock):
            inner = s(h @ m.mm2.weight.data.T.astype(np.float64) + m.mm2.bias.data)
            h = h + s(inner @ m.mm1.weight.data.T.astype(np.float64) + m.mm1.bias.data)
        else:
            h = h @ m.weight.data.T.astype(np.float64) + m.bias.data
    return h


def test_mlp_structure_and_names():
    m = mlp([5, 7, 3, 2])
    assert [type(c).__name__ for c in m] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"]
    assert m.num_parameters() == 5 * 7 + 7 + 7 * 3 + 3 + 3 * 2 + 2
    assert list(mlp([4, 2]).state_dict()) == ["0.weight", "0.bias"]
    nb = mlp([4, 3, 2], activation="gelu", bias=False, dtype=np.float64)
    assert list(nb.state_dict()) == ["0.weight", "2.weight"]
    assert isinstance(nb[1], nn.GELU) and nb.dtype == np.float64


def test_resnet_s_structure_and_names():
    m = resnet_s(8, 3, 4)
    assert [type(c).__name__ for c in m] == ["ResidualBlock"] * 3 + ["Linear"]
    assert list(m.state_dict())[:4] == ["0.mm1.weight", "0.mm1.bias", "0.mm2.weight", "0.mm2.bias"]
    assert list(m.state_dict())[-2:] == ["3.weight", "3.bias"]
    p = resnet_s(8, 2, 4, in_features=5)
    assert p[0].in_features == 5 and p[0].out_features == 8 and len(p) == 4
    assert len(resnet_s(8, 2, 4, in_features=8)) == 3          # no projection when widths agree
    assert resnet_s(256, 8, 10).num_parameters() == 8 * 2 * (256 * 256 + 256) + 256 * 10 + 10


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_forward_matches_seed_formulas(dtype, act):
    fastmod.manual_seed(0)
    x = np.random.default_rng(0).standard_normal((9, 6)).astype(dtype)
    m = mlp([6, 10, 8, 3], activation=act, dtype=dtype)
    assert_close(m(x), _ref_mlp(m, x, act), dtype)
    r = resnet_s(6, 3, 4, activation=act, dtype=dtype)
    assert_close(r(x), _ref_resnet_s(r, x, act), dtype)
    rp = resnet_s(5, 2, 4, in_features=6, activation=act, dtype=dtype)
    assert_close(rp(x), _ref_resnet_s(rp, x, act), dtype)


def test_gradcheck():
    fastmod.manual_seed(1)
    x = np.random.default_rng(1).standard_normal((3, 4))
    fastmod.gradcheck(mlp([4, 5, 3], activation="tanh", dtype=np.float64), x)
    fastmod.gradcheck(resnet_s(4, 2, 3, activation="tanh", dtype=np.float64), x)
    fastmod.gradcheck(resnet_s(3, 1, 2, in_features=4, activation="tanh", dtype=np.float64), x)


def _torch_resnet_s(torch, dim, depth, num_classes, in_features=None):
    class Res(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mm1 = torch.nn.Linear(dim, dim)
            self.mm2 = torch.nn.Linear(dim, dim)

        def forward(self, z):
            return z + torch.relu(self.mm1(torch.relu(self.mm2(z))))

    layers = [torch.nn.Linear(in_features, dim)] if in_features and in_features != dim else []
    layers += [Res() for _ in range(depth)] + [torch.nn.Linear(dim, num_classes)]
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
def test_torch_parity(parity, torch, dtype, direction):
    x = np.random.default_rng(2).standard_normal((6, 7)).astype(dtype)
    tm = torch.nn.Sequential(torch.nn.Linear(7, 9), torch.nn.ReLU(), torch.nn.Linear(9, 5),
                             torch.nn.ReLU(), torch.nn.Linear(5, 3))
    parity(mlp([7, 9, 5, 3], dtype=dtype), tm, x, direction=direction)
    parity(resnet_s(6, 2, 3, in_features=7, dtype=dtype),
           _torch_resnet_s(torch, 6, 2, 3, in_features=7), x, direction=direction)
    x6 = x[:, :6].copy()
    parity(resnet_s(6, 3, 4, dtype=dtype), _torch_resnet_s(torch, 6, 3, 4), x6, direction=direction)


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least two entries"):
        mlp([4])
    with pytest.raises(ValueError, match=r"mlp: sizes\[1\] must be a positive integer, got 0"):
        mlp([4, 0, 2])
    with pytest.raises(ValueError, match="sizes must be a list of positive integers"):
        mlp(10)
    with pytest.raises(ValueError, match="activation must be one of"):
        mlp([4, 2], activation="swishy")
    with pytest.raises(TypeError, match="expected float32 or float64"):
        mlp([4, 2], dtype=np.int64)
    with pytest.raises(ValueError, match="bias must be a bool"):
        mlp([4, 2], bias="no")
    with pytest.raises(ValueError, match="resnet_s: depth must be a positive integer, got 0"):
        resnet_s(8, 0, 2)
    with pytest.raises(ValueError, match="resnet_s: dim must be a positive integer"):
        resnet_s(-8, 2, 2)
    with pytest.raises(ValueError, match="resnet_s: num_classes must be a positive integer"):
        resnet_s(8, 2, 2.0)
    with pytest.raises(ValueError, match="resnet_s: in_features must be a positive integer"):
        resnet_s(8, 2, 2, in_features=0)
    m = resnet_s(8, 1, 2)
    with pytest.raises(ValueError, match=r"expected input of shape \(\*, 8\), got \(3, 5\)"):
        m(np.zeros((3, 5), np.float32))
    with pytest.raises(TypeError, match="float32"):
        mlp([4, 2])(np.zeros((2, 4)))
