"""Linear (the seed's MM_{W,b}): reference, gradcheck, torch parity, seed properties, bad input."""
import math

import numpy as np
import pytest

import fastmod
from fastmod import nn
import reference as ref
from reference import assert_close

SHAPES = [(5, 4), (2, 3, 4), (4,)]   # (N, in), (N, *, in), 1-D (in,)


def make(in_f=4, out_f=3, bias=True, dtype=np.float64):
    fastmod.manual_seed(0)
    return nn.Linear(in_f, out_f, bias=bias, dtype=dtype)


# ------------------------------------------------------------------ forward / backward vs NumPy
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d", "1d"])
def test_forward_matches_reference(dtype, shape, bias, rng):
    m = make(bias=bias, dtype=dtype)
    x = rng.standard_normal(shape).astype(dtype)
    y = m(x)
    assert y.shape == shape[:-1] + (3,) and y.dtype == dtype
    want = ref.linear(x, m.weight.data, None if m.bias is None else m.bias.data)
    assert_close(y, want, dtype)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d", "1d"])
def test_backward_matches_reference(dtype, shape, bias, rng):
    m = make(bias=bias, dtype=dtype)
    x = rng.standard_normal(shape).astype(dtype)
    y = m(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = m.backward(dy)
    rdx, rdw, rdb = ref.linear_backward(dy, x, m.weight.data)
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_close(dx, rdx, dtype)
    assert_close(m.weight.grad, rdw, dtype)
    if bias:
        assert_close(m.bias.grad, rdb, dtype)


# (N, in, out) big enough (>= 2^19 multiply-adds) that pgemm / pgemv split over 2 threads:
# C split by rows and by columns, with and without a transposed operand, edges not multiples
# of the 16-element block alignment, and the batch-1 GEMV path.
SPLIT_CASES = [(96, 96, 64), (40, 128, 160), (75, 101, 83), (1, 1024, 512)]
# the float32 forward on fm_pgemm with w as it is (linear.pyx _raw_forward): threads over the
# column panels (panels a multiple of the threads) or over the rows, several row ranges (250),
# several balanced slabs of k (784), a last panel of 17 columns, two rows; and the shape that
# goes back to BLAS (many slabs of k and a large y)
SPLIT_CASES += [(128, 784, 512), (250, 300, 70), (130, 784, 33), (2, 17, 200), (600, 1024, 256)]


@pytest.mark.parametrize("n,i,o", SPLIT_CASES)
def test_split_gemm_paths_match_reference(n, i, o, dtype, rng):
    fastmod.set_num_threads(2)                        # conftest restores the count afterwards
    m = make(i, o, dtype=dtype)
    x = rng.standard_normal((n, i) if n > 1 else (i,)).astype(dtype)
    y = m(x)
    assert_close(y, ref.linear(x, m.weight.data, m.bias.data), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = m.backward(dy)
    rdx, rdw, rdb = ref.linear_backward(dy, x, m.weight.data)
    assert_close(dx, rdx, dtype)
    assert_close(m.weight.grad, rdw, dtype)
    assert_close(m.bias.grad, rdb, dtype)


# ------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d", "1d"])
def test_gradcheck(shape, bias, rng):
    m = make(bias=bias)
    assert fastmod.gradcheck(m, rng.standard_normal(shape))


def test_gradcheck_frozen_weight_and_transposed_input(rng):
    m = make()
    m.weight.requires_grad = False
    x = rng.standard_normal((4, 6)).T            # non-contiguous input
    assert fastmod.gradcheck(m, x)


# ------------------------------------------------------------------ torch parity
@pytest.mark.parametrize("direction", ["t2f", "f2t"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=["2d", "3d", "1d"])
def test_torch_parity(torch, parity, dtype, shape, bias, direction, rng):
    torch.manual_seed(0)
    tm = torch.nn.Linear(4, 3, bias=bias)
    fm = make(bias=bias, dtype=dtype)
    parity(fm, tm, rng.standard_normal(shape).astype(dtype), direction=direction)


def test_default_init_matches_torch_bounds():
    fastmod.manual_seed(3)
    m = nn.Linear(50, 40)
    bound = 1 / math.sqrt(50)
    for p in (m.weight.data, m.bias.data):
        assert p.dtype == np.float32
        assert np.abs(p).max() <= bound
        assert np.abs(p).max() > 0.8 * bound       # uniform over the whole interval, not a sliver
    assert m.weight.shape == (40, 50) and m.bias.shape == (40,)


# ------------------------------------------------------------------ the seed's properties
def test_linear_without_bias_is_linear(rng):
    m = make(bias=False)
    z1, z2 = rng.standard_normal((2, 3, 4))
    a, b = 1.7, -0.6
    np.testing.assert_allclose(m(a * z1 + b * z2), a * m(z1) + b * m(z2), rtol=1e-12, atol=1e-12)


def test_linear_with_bias_is_affine_not_linear(rng):
    """The seed claims MM(a z1 + b z2) = a MM(z1) + b MM(z2); with b != 0 it fails (affine)."""
    m = make(bias=True)
    m.bias.data[...] = [0.5, -1.0, 2.0]
    z1, z2 = rng.standard_normal((2, 3, 4))
    a, b = 1.7, -0.6
    lhs, rhs = m(a * z1 + b * z2), a * m(z1) + b * m(z2)
    assert not np.allclose(lhs, rhs)
    # exactly off by (1 - a - b) * bias: affine
    np.testing.assert_allclose(lhs - rhs, np.broadcast_to((1 - a - b) * m.bias.data, lhs.shape),
                               rtol=1e-12, atol=1e-12)
    # ... and affine combinations (a + b = 1) are preserved
    np.testing.assert_allclose(m(0.3 * z1 + 0.7 * z2), 0.3 * m(z1) + 0.7 * m(z2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n,mm", [(3, 4), (10, 1), (1, 7)])
def test_parameter_count(n, mm):
    assert nn.Linear(mm, n).num_parameters() == n * mm + n
    assert nn.Linear(mm, n, bias=False).num_parameters() == n * mm


# ------------------------------------------------------------------ layouts: strides, read-only
@pytest.mark.parametrize("kind", ["transposed", "sliced", "readonly", "fortran"])
def test_noncontiguous_and_readonly_inputs(dtype, kind, rng):
    m = make(dtype=dtype)
    base = rng.standard_normal((8, 10)).astype(dtype)
    x = {"transposed": base[:4].T,                      # (10, 4), strides swapped
         "sliced": base[::2, 1:9:2],                    # (4, 4), every other row/column
         "fortran": np.asfortranarray(base[:, :4]),
         "readonly": base[:, :4].copy()}[kind]
    if kind == "readonly":
        x.flags.writeable = False
    assert kind == "readonly" or not x.flags.c_contiguous
    y = m(x)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = m.backward(dy)
    gw = m.weight.grad.copy()
    m.zero_grad()
    xc = np.ascontiguousarray(x)
    np.testing.assert_array_equal(m(xc), y)
    np.testing.assert_array_equal(m.backward(dy), dx)
    np.testing.assert_array_equal(m.weight.grad, gw)
    # a non-contiguous output gradient too
    m.zero_grad()
    m(xc)
    dy_t = np.ascontiguousarray(dy.T).T
    assert not dy_t.flags.c_contiguous
    np.testing.assert_array_equal(m.backward(dy_t), dx)


def test_input_not_modified(rng):
    m = make()
    x = rng.standard_normal((3, 4))
    x0 = x.copy()
    m.backward(np.ones_like(m(x)))
    np.testing.assert_array_equal(x, x0)


def test_need_input_grad_false_returns_none_and_fills_parameter_grads(rng):
    m = make()
    x = rng.standard_normal((5, 4))
    dy = rng.standard_normal((5, 3))
    m(x)
    assert m.backward(dy, need_input_grad=False) is None
    gw, gb = m.weight.grad.copy(), m.bias.grad.copy()
    _, rdw, rdb = ref.linear_backward(dy, x, m.weight.data)
    np.testing.assert_allclose(gw, rdw, rtol=1e-12)
    np.testing.assert_allclose(gb, rdb, rtol=1e-12)


def test_requires_grad_false_skips_that_gradient(rng):
    m = make()
    m.bias.requires_grad = False
    x, dy = rng.standard_normal((5, 4)), rng.standard_normal((5, 3))
    m(x)
    dx = m.backward(dy)
    assert not m.bias.has_grad()
    np.testing.assert_array_equal(m.bias.grad, 0)
    rdx, rdw, _ = ref.linear_backward(dy, x, m.weight.data)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12)
    np.testing.assert_allclose(m.weight.grad, rdw, rtol=1e-12)


# ------------------------------------------------------------------ bad input
def test_bad_inputs():
    m = nn.Linear(4, 3)                                   # float32
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match=r"Linear\(4, 3\): expected input of shape \(\*, 4\), got \(2, 5\)"):
        m(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected input of shape \(\*, 4\), got \(\)"):
        m(np.ones((), np.float32))
    with pytest.raises(TypeError, match=r"float32.*float64"):
        m(x.astype(np.float64))
    with pytest.raises(TypeError, match=r"float32.*int64"):
        m(np.zeros((2, 4), np.int64))
    with pytest.raises(TypeError, match=r"float32.*float16"):
        m(np.zeros((2, 4), np.float16))
    with pytest.raises(TypeError, match=r"numpy.ndarray.*list"):
        m([[0.0] * 4] * 2)
    with pytest.raises(ValueError, match=r"non-empty.*\(0, 4\)"):
        m(np.zeros((0, 4), np.float32))
    with pytest.raises(ValueError, match=r"non-empty"):
        m(np.zeros((2, 0, 4), np.float32))


def test_bad_backward():
    m = nn.Linear(4, 3)
    with pytest.raises(RuntimeError, match=r"Linear\(4, 3\)\.backward: no saved forward state"):
        m.backward(np.zeros((2, 3), np.float32))
    m(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected a gradient of shape \(2, 3\).*got \(2, 4\)"):
        m.backward(np.zeros((2, 4), np.float32))
    m(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"dtype float32.*got \(2, 3\) float64"):
        m.backward(np.zeros((2, 3), np.float64))
    m(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match=r"numpy.ndarray gradient, got list"):
        m.backward([[0.0] * 3] * 2)
    m(np.zeros((2, 4), np.float32))
    m.backward(np.zeros((2, 3), np.float32))
    with pytest.raises(RuntimeError, match="no saved forward state"):
        m.backward(np.zeros((2, 3), np.float32))       # one backward per forward


@pytest.mark.parametrize("args,kwargs,match", [
    ((0, 3), {}, "in_features must be a positive integer"),
    ((4, -1), {}, "out_features must be a positive integer"),
    ((4.0, 3), {}, "in_features must be a positive integer"),
    ((True, 3), {}, "in_features must be a positive integer"),
    ((4, float("nan")), {}, "out_features must be a positive integer"),
    ((4, 3), {"bias": "yes"}, "bias must be a bool"),
])
def test_bad_constructor_args(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.Linear(*args, **kwargs)


def test_bad_dtype_constructor_arg():
    with pytest.raises(TypeError, match="expected float32 or float64, got int32"):
        nn.Linear(2, 2, dtype=np.int32)


def test_repr():
    assert repr(nn.Linear(4, 3)) == "Linear(4, 3)"
    assert repr(nn.Linear(4, 3, bias=False)) == "Linear(4, 3, bias=False)"


def test_replacing_parameters_is_checked():
    """weight (out, in) and bias (out,) of one dtype, also when put back after `= None`:
    the kernels size their loops from them."""
    m = nn.Linear(4, 3, bias=False)
    with pytest.raises(ValueError, match=r"Linear\(4, 3, bias=False\): bias must have shape \(3,\), got \(1,\)"):
        m.bias = fastmod.nn.Parameter(np.zeros(1, np.float32))
    with pytest.raises(TypeError, match="bias must be float32 like the weight, got float64"):
        m.bias = fastmod.nn.Parameter(np.zeros(3))
    m.bias = fastmod.nn.Parameter(np.full(3, 2.0, np.float32))
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(m(x), ref.linear(x, m.weight.data, m.bias.data), rtol=1e-5)
    m.weight = None
    with pytest.raises(ValueError, match=r"weight must have shape \(3, 4\), got \(4, 3\)"):
        m.weight = fastmod.nn.Parameter(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"Parameter.data: expected a float32 array of shape \(3,\)"):
        m.bias.data = np.zeros(4, np.float32)


# ------------------------------------------------------------------ fusions used by the containers
@pytest.mark.parametrize("n,i,o", SPLIT_CASES + [(300, 70, 40), (7, 5, 3)])
def test_backward_input_activation_relu_matches_reference(n, i, o, dtype, threads, rng):
    """backward(dy, input_activation='relu'): the input was a ReLU's output, and dx is the
    gradient w.r.t. that ReLU's input -- zeroed where the input <= 0, block by block in every
    split of the kernel; parameter gradients unchanged."""
    m = make(i, o, dtype=dtype)
    x = np.maximum(rng.standard_normal((n, i)), 0).astype(dtype)      # a ReLU's output
    m(x)
    dy = rng.standard_normal((n, o)).astype(dtype)
    rdx, rdw, rdb = ref.linear_backward(dy, x, m.weight.data)
    dx = m.backward(dy, input_activation="relu")
    assert_close(dx, np.where(x > 0, rdx, 0), dtype)
    assert_close(m.weight.grad, rdw, dtype)
    assert_close(m.bias.grad, rdb, dtype)
    m(x)
    assert m.backward(dy, need_input_grad=False, input_activation="relu") is None
    with pytest.raises(ValueError, match="input_activation must be None or 'relu', got 'gelu'"):
        m(x)
        m.backward(dy, input_activation="gelu")


@pytest.mark.parametrize("n,i,o", SPLIT_CASES + [(300, 70, 40), (7, 5, 3)])
@pytest.mark.parametrize("mode", ["mask", "acc_dx", "both"])
def test_backward_kernel_mask_and_accumulate(n, i, o, mode, dtype, threads, rng):
    """The kernel's two epilogues: mask (dx zeroed where mask <= 0, NaN -> 0) and acc_dx (the
    input gradient added into dx, beta = 1); with both, dW and db accumulated too."""
    from fastmod._kernels import linear as k
    m = make(i, o, dtype=dtype)
    x = rng.standard_normal((n, i)).astype(dtype)
    dy = rng.standard_normal((n, o)).astype(dtype)
    rdx, rdw, rdb = ref.linear_backward(dy, x, m.weight.data)
    mask = rng.standard_normal((n, i)).astype(dtype)
    mask[0, 0] = np.nan
    buf = rng.standard_normal((n, i)).astype(dtype)
    want = rdx.copy()
    if mode != "mask":
        want = want + buf
    if mode != "acc_dx":
        want = np.where(mask > 0, want, 0)
    dx = buf.copy() if mode != "mask" else np.empty_like(buf)
    dw, db = np.empty_like(m.weight.data), np.empty_like(m.bias.data)
    acc = mode == "both"                          # and the parameter gradients accumulated
    w0, b0 = (rng.standard_normal(a.shape).astype(dtype) for a in (dw, db))
    if acc:
        dw[...], db[...] = w0, b0
    k.linear_backward(dx, dw, db, dy, x, m.weight.data, acc, acc,
                      mask if mode != "acc_dx" else None, mode != "mask")
    assert_close(dx, want, dtype)
    assert_close(dw, rdw + w0 if acc else rdw, dtype)
    assert_close(db, rdb + b0 if acc else rdb, dtype)


# ------------------------------------------------------------------ skinny layers (out <= 16)
# float32 layers with out_features <= 16 run direct AVX2 loops instead of BLAS: forward tiles of
# 2 rows x 5 outputs, dW tiles of 3 outputs x 32 columns, dx tiles of 3 rows x 32 columns, with
# narrower / scalar loops for the tails. Sizes below hit every tail, and the split over 2
# threads (>= 2^19 multiply-adds).
SKINNY_CASES = [(128, 512, 10), (7, 5, 3), (1, 77, 16), (33, 100, 1), (300, 203, 11),
                (65, 64, 5), (2, 8, 6), (129, 257, 17), (3, 1, 2)]


@pytest.mark.parametrize("n,i,o", SKINNY_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_skinny_paths_match_reference(n, i, o, bias, dtype, threads, rng):
    m = make(i, o, bias=bias, dtype=dtype)
    x = rng.standard_normal((n, i)).astype(dtype)
    b = m.bias.data if bias else None
    assert_close(m(x), ref.linear(x, m.weight.data, b), dtype)
    with fastmod.no_grad():                            # the fused ReLU of Sequential's inference
        assert_close(m.forward(x, activation="relu"), np.maximum(ref.linear(x, m.weight.data, b), 0), dtype)
    m(x)
    dy = rng.standard_normal((n, o)).astype(dtype)
    rdx, rdw, rdb = ref.linear_backward(dy, x, m.weight.data)
    assert_close(m.backward(dy), rdx, dtype)
    assert_close(m.weight.grad, rdw, dtype)
    if bias:
        assert_close(m.bias.grad, rdb, dtype)
    m(x)                                     # accumulate into the gradients, dx masked by x > 0
    dx = m.backward(dy, input_activation="relu")
    assert_close(dx, np.where(x > 0, rdx, 0), dtype)
    assert_close(m.weight.grad, 2 * rdw, dtype)
    k_mask = rng.standard_normal((n, i)).astype(dtype)                # the kernel's two epilogues
    k_mask[0, 0] = np.nan
    buf = rng.standard_normal((n, i)).astype(dtype)
    dx = buf.copy()
    from fastmod._kernels import linear as k
    k.linear_backward(dx, None, None, dy, x, m.weight.data, False, False, k_mask, True)
    assert_close(dx, np.where(k_mask > 0, rdx + buf, 0), dtype)
    m(x)
    assert m.backward(dy, need_input_grad=False) is None
    assert_close(m.weight.grad, 3 * rdw, dtype)


def test_skinny_results_do_not_depend_on_threads(rng):
    m = make(203, 10, dtype=np.float32)
    x = rng.standard_normal((300, 203)).astype(np.float32)
    dy = rng.standard_normal((300, 10)).astype(np.float32)
    out = []
    for t in (1, 2):
        fastmod.set_num_threads(t)
        m.zero_grad()
        y = m(x)
        out.append((y, m.backward(dy), m.weight.grad.copy(), m.bias.grad.copy()))
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_skinny_nan_and_inf_propagate(rng):
    m = make(40, 10, dtype=np.float32)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    x[1, 3], x[4, 39] = np.nan, np.inf
    y = m(x)
    assert np.isnan(y[1]).all() and not np.isfinite(y[4]).any() and np.isfinite(y[[0, 2, 3, 5]]).all()


# ------------------------------------------------------------------ transposed forward (float32)
# float32 forwards with 32 <= N <= 192, out > 16 and >= 2^24 multiply-adds compute z = W x^T (out, N)
# in a per-thread scratch array shared by the Linears, then y = z^T + b (ReLU) in 8 x 8 AVX tiles.
TRANSPOSED_CASES = [(64, 512, 512), (67, 500, 600), (190, 300, 300), (128, 784, 512), (131, 341, 533)]


@pytest.mark.parametrize("n,i,o", TRANSPOSED_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_transposed_forward_matches_reference(n, i, o, bias, threads, rng):
    from fastmod._kernels import linear as k
    assert k.forward_scratch_ok(n, i, o)
    assert not k.forward_scratch_ok(256, i, o)          # larger batches: the direct call wins
    m = make(i, o, bias=bias, dtype=np.float32)
    x = rng.standard_normal((n, i)).astype(np.float32)
    x[1, 2] = np.nan
    b = m.bias.data if bias else None
    want = ref.linear(x, m.weight.data, b)
    assert_close(m(x), want, np.float32)
    with fastmod.no_grad():
        y = m.forward(x, activation="relu")
    assert np.isnan(y[1]).all()                               # NaN kept by the fused ReLU
    assert_close(y, np.maximum(want, 0), np.float32)
    assert_close(m(x[:32 if n > 32 else n]), want[:32 if n > 32 else n], np.float32)  # smaller N
    x3 = x.reshape(1, n, i)
    assert_close(m(x3), want.reshape(1, n, o), np.float32)


def test_transposed_forward_same_as_direct_path_in_sequential(rng):
    """The MLP's hidden layers through the transposed path vs float64 (exact reference)."""
    m = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    m64 = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)).double()
    m64.load_state_dict({k: v.astype(np.float64) for k, v in m.state_dict().items()})
    x = rng.standard_normal((128, 784)).astype(np.float32)
    want = m64(x.astype(np.float64))
    assert_close(m(x), want, np.float32)
    with fastmod.no_grad():
        assert_close(m(x), want, np.float32)


# ------------------------------------------------------------------ batch-1 forward (GEMV)
@pytest.mark.parametrize("i,o", [(784, 512), (37, 23), (16, 17), (5, 33), (1, 20), (130, 1)])
@pytest.mark.parametrize("bias", [True, False])
def test_batch1_forward_matches_reference(i, o, bias, threads, rng):
    """The float32 batch-1 forward (sk_gemv_rows at the vector levels: 4 rows per step, ragged
    row tails through partial loads, row blocks per thread), with the fused ReLU of Sequential,
    against float64; NaN in the input propagates to every output."""
    lin = make(i, o, bias=bias, dtype=np.float32)
    seq = fastmod.nn.Sequential(make(i, o, bias=bias, dtype=np.float32), fastmod.nn.ReLU())
    seq[0].load_state_dict(lin.state_dict())
    x = rng.standard_normal((1, i)).astype(np.float32)
    want = ref.linear(x.astype(np.float64), lin.weight.data.astype(np.float64),
                      lin.bias.data.astype(np.float64) if bias else None)
    with fastmod.no_grad():
        assert_close(lin(x), want, np.float32)
        assert_close(seq(x), np.maximum(want, 0), np.float32)
        x[0, i // 2] = np.nan
        assert np.isnan(lin(x)).all() and np.isnan(seq(x)).all()


@pytest.mark.parametrize("n,i,o", [(64, 256, 1024), (33, 40, 70), (3, 16, 17), (300, 8, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_gelu_epilogue_matches_separate_gelu(n, i, o, dtype, threads, rng):
    """Linear._forward_gelu (inference's Linear + GELU: the exact GELU in the GEMM's epilogue on
    the float32 fm_pgemm path, else in place after the GEMM) equals GELU applied to the layer's
    output, on every path and level; linear_forward says whether it applied the GELU."""
    from fastmod._kernels import linear as kl
    m = nn.Linear(i, o, dtype=dtype)
    x = rng.standard_normal((2, n, i)).astype(dtype) * 2
    want = np.asarray(ref.gelu(m(x).astype(np.float64))).astype(dtype)
    with fastmod.no_grad():
        got = m._forward_gelu(x)
    assert got.shape == (2, n, o) and got.dtype == dtype
    assert_close(got, want, dtype)
    y = np.empty((2 * n, o), dtype)
    done = kl.linear_forward(y, x.reshape(-1, i), m.weight.data, m.bias.data, kl.GELU)
    if done:
        assert dtype == np.float32 and fastmod.get_isa() != "scalar"
        assert_close(y, want.reshape(-1, o), dtype)
    else:
        assert_close(y, m(x).reshape(-1, o), dtype)       # the GEMM alone
    if dtype == np.float32 and fastmod.get_isa() != "scalar" and (n, i, o) == (64, 256, 1024):
        assert done                                      # transformer_b16's linear1: fused
    assert kl.linear_forward(y, x.reshape(-1, i), m.weight.data, None, 1) is True
    with pytest.raises(ValueError, match="relu must be 0, 1 or GELU"):
        kl.linear_forward(y, x.reshape(-1, i), m.weight.data, None, 3)
    with pytest.raises(ValueError, match="expected input of shape"):
        m._forward_gelu(x[..., :-1])
