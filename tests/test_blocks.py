"""BNResBlock and DenseBlock (the seed's "Modern CNN Architectures") and the CNN model
constructors: NumPy composition reference, gradcheck, torch parity both ways, bad input."""
import numpy as np
import pytest

import fastmod
from fastmod import nn, models
from reference import assert_close, tol


# ------------------------------------------------------------------ torch equivalents
def torch_bn_res_block(torch, c):
    class BNResBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.BatchNorm2d(c)
            self.conv2, self.bn2 = torch.nn.Conv2d(c, c, 3, padding=1), torch.nn.BatchNorm2d(c)

        def forward(self, x):
            return self.bn2(torch.relu(self.conv2(self.bn1(torch.relu(self.conv1(x)))))) + x
    return BNResBlock()


def torch_dense_block(torch, cin, growth, n, act=None):
    act = act or torch.relu

    class DenseBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Conv2d(cin + i * growth, growth, 3, padding=1)
                                               for i in range(n)])

        def forward(self, x):
            feats = x
            for conv in self.layers:
                feats = torch.cat([feats, act(conv(feats))], dim=1)
            return feats
    return DenseBlock()


# ------------------------------------------------------------------ BNResBlock
def test_bnresblock_children_and_state_dict_names():
    m = nn.BNResBlock(4)
    assert [n for n, _ in m.named_children()] == ["conv1", "bn1", "conv2", "bn2"]
    assert list(m.state_dict())[:2] == ["conv1.weight", "conv1.bias"]
    assert m.conv1.kernel_size == (3, 3) and m.conv1.padding == (1, 1) and m.conv1.bias is not None
    assert repr(m).startswith("BNResBlock(4")


def test_bnresblock_is_the_seeds_composition(dtype, rng):
    # bn2(relu(conv2(bn1(relu(conv1(x)))))) + x, composed from the separately tested modules
    m = nn.BNResBlock(3, dtype=dtype)
    x = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    y = m(x)
    seq = nn.Sequential(m.conv1, nn.ReLU(), m.bn1, m.conv2, nn.ReLU(), m.bn2)
    for b in (m.bn1, m.bn2):                        # undo the running-stat update of m(x)
        b.running_mean[...] = 0
        b.running_var[...] = 1
    np.testing.assert_allclose(y, seq(x) + x, **tol(dtype))


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_bnresblock_inference_equals_grad_mode_forward(activation, dtype, threads, rng):
    # under no_grad each ReLU is fused into its convolution's kernel call: the same values as
    # the grad-mode forward (eval mode: BN uses the running stats in both)
    m = nn.BNResBlock(16, activation=activation, dtype=dtype)
    for b in (m.bn1, m.bn2):
        b.running_mean[...] = rng.standard_normal(16)
        b.running_var[...] = rng.uniform(0.5, 2, 16)
    m.eval()
    x = rng.standard_normal((3, 16, 6, 5)).astype(dtype)
    want = m(x)
    m.backward(np.ones_like(want))                  # consume what the grad-mode forward kept
    with fastmod.no_grad():
        got = m(x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", [(3, 4, 5, 6), (2, 4, 1, 1), (1, 4, 2, 3)])
def test_bnresblock_gradcheck(shape, rng):
    m = nn.BNResBlock(4, dtype=np.float64)
    fastmod.gradcheck(m, rng.standard_normal(shape), max_elements=64)


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
@pytest.mark.parametrize("shape", [(4, 6, 7, 5), (2, 6, 8, 8)])
def test_bnresblock_torch_parity(direction, shape, dtype, threads, parity, torch, rng):
    m = nn.BNResBlock(6, dtype=dtype)
    tm = torch_bn_res_block(torch, 6)
    x = rng.standard_normal(shape).astype(dtype)
    # float32: BN's backward cancels (sum of dy minus its mean): absolute error ~1e-7 of the
    # largest gradient (here ~1e2), so an absolute tolerance on that scale
    ptol = {"rtol": 1e-3, "atol": 1e-3} if dtype == np.float32 else None
    parity(m, tm, x, direction=direction, parity_tol=ptol)
    # the running statistics moved the same way, and eval mode agrees too
    for k, v in tm.state_dict().items():
        assert_close(m.state_dict()[k], v.numpy(), dtype, err_msg=k)
    m.eval(), tm.eval()
    assert_close(m(x), tm(torch.from_numpy(x)).detach().numpy(), dtype)


def test_bnresblock_activation_and_need_input_grad(rng):
    m = nn.BNResBlock(3, activation="tanh", dtype=np.float64)
    x = rng.standard_normal((2, 3, 4, 4))
    fastmod.gradcheck(m, x, max_elements=32)
    y = m(x)
    assert m.backward(np.ones_like(y), need_input_grad=False) is None
    assert np.any(m.conv1.weight.grad != 0)


def test_bnresblock_bad_input():
    m = nn.BNResBlock(4)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, H, W\), got \(2, 3, 5, 5\)"):
        m(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(TypeError, match="float32.*float64"):
        m(np.zeros((2, 4, 5, 5), np.float64))
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        nn.BNResBlock(0)
    with pytest.raises(ValueError, match="activation must be"):
        nn.BNResBlock(4, activation="swishy")


# ------------------------------------------------------------------ DenseBlock
def dense_ref(x, convs):
    """[x_0, ..., x_L] with x_l = relu(conv_l(concat(x_0..x_{l-1}))), by explicit concatenation."""
    feats = x
    for conv in convs:
        feats = np.concatenate([feats, np.maximum(conv(feats), 0)], axis=1)
    return feats


def test_denseblock_children_and_shapes():
    m = nn.DenseBlock(24, 12, 4)
    assert [n for n, _ in m.named_children()] == ["layers"]
    assert [k for k in m.state_dict()][:4] == ["layers.0.weight", "layers.0.bias",
                                              "layers.1.weight", "layers.1.bias"]
    for i, conv in enumerate(m.layers):
        assert (conv.in_channels, conv.out_channels) == (24 + 12 * i, 12)
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.bias is not None
    assert m(np.zeros((2, 24, 5, 5), np.float32)).shape == (2, 72, 5, 5)


def test_denseblock_matches_explicit_concatenation(dtype, threads, rng):
    m = nn.DenseBlock(3, 2, 3, dtype=dtype)
    x = rng.standard_normal((4, 3, 6, 5)).astype(dtype)
    y = m(x)
    # the same convolutions called the ordinary way, one concatenation per layer
    fresh = [nn.Conv2d(c.in_channels, c.out_channels, 3, padding=1, dtype=dtype) for c in m.layers]
    for f, c in zip(fresh, m.layers):
        f.load_state_dict(c.state_dict())
    assert_close(y, dense_ref(x, fresh), dtype)
    np.testing.assert_array_equal(y[:, :3], x)


@pytest.mark.parametrize("shape,act", [((2, 3, 4, 5), "relu"), ((1, 3, 1, 2), "relu"),
                                       ((2, 3, 3, 3), "tanh")])
def test_denseblock_gradcheck(shape, act, rng):
    m = nn.DenseBlock(3, 2, 3, activation=act, dtype=np.float64)
    fastmod.gradcheck(m, rng.standard_normal(shape), max_elements=64)


@pytest.mark.parametrize("direction", ["t2f", "f2t"])
def test_denseblock_torch_parity(direction, dtype, threads, parity, torch, rng):
    m = nn.DenseBlock(5, 3, 4, dtype=dtype)
    tm = torch_dense_block(torch, 5, 3, 4)
    parity(m, tm, rng.standard_normal((3, 5, 7, 6)).astype(dtype), direction=direction)


def test_denseblock_other_activation_torch_parity(parity, torch, rng):
    m = nn.DenseBlock(4, 2, 2, activation="sigmoid", dtype=np.float64)
    tm = torch_dense_block(torch, 4, 2, 2, act=torch.sigmoid)
    parity(m, tm, rng.standard_normal((2, 4, 5, 5)))


def test_denseblock_threads_bit_identical_on_repeat(dtype, rng):
    m = nn.DenseBlock(8, 4, 3, dtype=dtype)
    x = rng.standard_normal((6, 8, 9, 9)).astype(dtype)
    out = {}
    for nt in (1, 2, 2):
        fastmod.set_num_threads(nt)
        m.zero_grad()
        y = m(x)
        dx = m.backward(np.ones_like(y))
        res = (y.copy(), dx, m.layers[2].weight.grad.copy())
        if nt in out:
            for a, b in zip(out[nt], res):
                np.testing.assert_array_equal(a, b)
        out[nt] = res
    for a, b in zip(out[1], out[2]):
        assert_close(a, b, dtype)


def test_denseblock_need_input_grad_false(rng):
    m = nn.DenseBlock(3, 2, 2, dtype=np.float64)
    x = rng.standard_normal((2, 3, 4, 4))
    y = m(x)
    assert m.backward(np.ones_like(y), need_input_grad=False) is None
    g0 = m.layers[0].weight.grad.copy()
    m.zero_grad()
    m(x)
    m.backward(np.ones_like(y))
    np.testing.assert_allclose(m.layers[0].weight.grad, g0, rtol=1e-12)


def test_denseblock_bad_input():
    m = nn.DenseBlock(4, 2, 2)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 4, H, W\), got \(2, 3, 5, 5\)"):
        m(np.zeros((2, 3, 5, 5), np.float32))
    with pytest.raises(TypeError, match="float32.*float64"):
        m(np.zeros((2, 4, 5, 5), np.float64))
    with pytest.raises(ValueError, match="non-empty"):
        m(np.zeros((0, 4, 5, 5), np.float32))
    for args, match in [((0, 2, 2), "in_channels"), ((4, 0, 2), "growth_rate"),
                        ((4, 2, -1), "num_layers")]:
        with pytest.raises(ValueError, match=match + " must be a positive integer"):
            nn.DenseBlock(*args)
    # one layer converted alone: its weights would be read as the block's dtype by the kernels
    m.layers[1].astype(np.float64)
    with pytest.raises(TypeError, match=r"DenseBlock\(4, 2, 2\): layers.1 is float64, layers.0 float32"):
        m(np.zeros((2, 4, 5, 5), np.float32))
    m.astype(np.float64)
    assert m(np.zeros((2, 4, 5, 5))).dtype == np.float64


# ------------------------------------------------------------------ model constructors
@pytest.mark.parametrize("make,shape", [
    (models.cnn, (4, 1, 8, 8)),
    (lambda **kw: models.cnn(3, image_size=32, channels=(32, 64, 64), **kw), (2, 3, 32, 32)),
    (lambda **kw: models.cnn(1, image_size=(7, 9), **kw), (2, 1, 7, 9)),
    (lambda **kw: models.bn_resnet(channels=8, **kw), (4, 1, 8, 8)),
    (lambda **kw: models.bn_resnet(3, channels=64, **kw), (2, 3, 16, 16)),
    (lambda **kw: models.densenet(stem_channels=6, growth_rate=4, **kw), (4, 1, 8, 8)),
    (lambda **kw: models.densenet(3, **kw), (2, 3, 32, 32)),
])
def test_models_shapes_and_gradcheck(make, shape, rng):
    assert make()(rng.standard_normal(shape).astype(np.float32)).shape == (shape[0], 10)
    if shape[-1] <= 9:
        # tanh: no kinks for the finite differences to straddle
        m = make(activation="tanh", dtype=np.float64)
        fastmod.gradcheck(m, rng.standard_normal((2,) + shape[1:]), max_elements=16)


def test_cnn_matches_torch_sequential(torch, rng, parity):
    m = models.cnn(3, image_size=16, channels=(8, 16), dtype=np.float64)
    tm = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                             torch.nn.Conv2d(8, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
                             torch.nn.Flatten(), torch.nn.Linear(16 * 8 * 8, 10))
    parity(m, tm, rng.standard_normal((2, 3, 16, 16)))


def test_models_train_on_digits():
    # a few SGD steps on a batch of the bundled digits lower the loss for every model
    from fastmod.data.datasets import load_digits
    from fastmod.losses import CrossEntropyLoss
    from fastmod.optim import SGD
    xs, ys = load_digits()
    x, y = xs[:64, None], ys[:64]
    # densenet (global pooling right after one block, no downsampling) learns slowest
    for make, factor in ((models.cnn, 0.7), (models.bn_resnet, 0.7), (models.densenet, 0.99)):
        fastmod.manual_seed(0)
        m = make()
        opt = SGD(m.parameters(), lr=0.1, momentum=0.9)
        crit = CrossEntropyLoss()
        losses = []
        for _ in range(20):
            opt.zero_grad()
            losses.append(crit(m(x), y))
            m.backward(crit.backward())
            opt.step()
        assert losses[-1] < factor * losses[0], (make.__name__, losses)


def test_model_bad_arguments():
    with pytest.raises(ValueError, match="channels"):
        models.cnn(channels=())
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        models.bn_resnet(num_classes=0)
    with pytest.raises(TypeError, match="float32 or float64"):
        models.densenet(dtype=np.int8)
