"""Conv1d / Conv2d (the seed's Conv1D / Conv2D): NumPy reference, gradcheck, torch parity, the
seed's simplified forms (Conv1D-S = Q z, Conv2D-S's double sum), threads, bad input."""
from types import SimpleNamespace

import numpy as np
import pytest

import fastmod
from fastmod import nn
from reference import assert_close


# ------------------------------------------------------------------ an independent reference
def _pad_pairs(pad, k, d):
    """Padding argument -> [(lo, hi)] per spatial dim, as torch defines 'same' / 'valid'."""
    if pad == "valid":
        return [(0, 0)] * len(k)
    if pad == "same":
        return [(di * (ki - 1) // 2, di * (ki - 1) - di * (ki - 1) // 2) for ki, di in zip(k, d)]
    return [(p, p) for p in pad]


def _windows(xp, k, s, d, out):
    """Yield (offsets, view) for every kernel tap: view[n, c, *o] = xp[n, c, *(o*s + off*d)]."""
    for off in np.ndindex(*k):
        sl = tuple(slice(o * di, o * di + si * (oi - 1) + 1, si)
                   for o, di, si, oi in zip(off, d, s, out))
        yield off, (slice(None), slice(None)) + sl


def conv_ref(x, w, b, stride, pad, dil, groups):
    """y (N, OC, *out) by direct summation over kernel taps (einsum), float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    nd = x.ndim - 2
    k = w.shape[2:]
    pads = _pad_pairs(pad, k, dil)
    xp = np.pad(x, [(0, 0), (0, 0)] + pads)
    out = [(xp.shape[2 + i] - dil[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(nd)]
    N, C = x.shape[:2]
    OC = w.shape[0]
    cg, og = C // groups, OC // groups
    y = np.zeros((N, OC, *out))
    for off, sl in _windows(xp, k, stride, dil, out):
        patch = xp[sl]
        for g in range(groups):
            y[:, g * og:(g + 1) * og] += np.einsum(
                "nc...,oc->no...", patch[:, g * cg:(g + 1) * cg], w[(slice(g * og, (g + 1) * og), slice(None)) + off])
    if b is not None:
        y += np.asarray(b, np.float64).reshape((1, OC) + (1,) * nd)
    return y


def conv_ref_backward(dy, x, w, stride, pad, dil, groups):
    """(dx, dw, db) of conv_ref for output gradient dy: the adjoint of each tap's slice."""
    x, w, dy = (np.asarray(a, np.float64) for a in (x, w, dy))
    nd = x.ndim - 2
    k = w.shape[2:]
    pads = _pad_pairs(pad, k, dil)
    xp = np.pad(x, [(0, 0), (0, 0)] + pads)
    out = dy.shape[2:]
    C, OC = x.shape[1], w.shape[0]
    cg, og = C // groups, OC // groups
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for off, sl in _windows(xp, k, stride, dil, out):
        for g in range(groups):
            cs, os_ = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
            dxp[sl][:, cs] += np.einsum("no...,oc->nc...", dy[:, os_], w[(os_, slice(None)) + off])
            ax = [0] + list(range(2, 2 + nd))
            dw[(os_, slice(None)) + off] += np.tensordot(dy[:, os_], xp[sl][:, cs], axes=(ax, ax))
    inner = tuple(slice(lo, xp.shape[2 + i] - hi) for i, (lo, hi) in enumerate(pads))
    dx = dxp[(slice(None), slice(None)) + inner]
    return dx, dw, dy.sum(axis=tuple(i for i in range(dy.ndim) if i != 1))


# ------------------------------------------------------------------ the grid of shapes
# (in, out, kernel, kwargs, input shape): odd sizes, stride > kernel, padding, dilation, groups
# (incl. depthwise), batch 1, 1x1 kernels, inputs smaller than the kernel (made up by padding)
CASES_2D = [
    (3, 5, 3, dict(padding=1), (2, 3, 7, 9)),
    (4, 6, (3, 2), dict(stride=(2, 3), padding=(2, 1), dilation=(1, 2), groups=2), (3, 4, 9, 7)),
    (3, 4, 2, dict(stride=3), (2, 3, 8, 7)),                         # stride > kernel
    (4, 8, 1, {}, (2, 4, 5, 6)),                                     # 1x1: plain GEMM
    (4, 8, 1, dict(stride=2), (2, 4, 5, 6)),                         # 1x1 strided: im2col
    (4, 4, 3, dict(padding=1, groups=4), (2, 4, 6, 5)),              # depthwise
    (4, 8, 3, dict(padding="same", groups=4), (1, 4, 5, 6)),         # depthwise x2, batch 1
    (3, 2, 5, dict(padding=2), (2, 3, 3, 2)),                        # H, W < kernel, padded
    (2, 3, 4, dict(padding="same", dilation=2), (2, 2, 6, 7)),       # even kernel: asymmetric
    (2, 3, 3, dict(padding="valid", bias=False), (1, 2, 3, 3)),      # output 1x1
    (6, 4, 3, dict(stride=2, padding=1, groups=2, bias=False), (3, 6, 8, 8)),
    (4, 4, 4, dict(padding="same", dilation=2, groups=4), (2, 4, 7, 6)),   # depthwise, dilated
    (4, 8, 3, dict(stride=2, padding=1, groups=4), (2, 4, 7, 6)),          # depthwise, strided
    (3, 3, (1, 5), dict(padding=(0, 3), groups=3, bias=False), (2, 3, 4, 3)),
    (3, 4, 3, dict(stride=2, padding=1), (2, 3, 5, 71)),             # stride-2 rows: vector blocks + tails
]
CASES_1D = [
    (1, 1, 3, dict(padding=1, bias=False), (2, 1, 9)),               # Conv1D-S
    (4, 8, 4, dict(padding="same", dilation=2), (3, 4, 11)),
    (4, 6, 3, dict(stride=4, padding=2, groups=2), (2, 4, 11)),
    (3, 5, 1, {}, (1, 3, 7)),
    (3, 3, 5, dict(padding=3, groups=3), (2, 3, 2)),                 # L < kernel, depthwise
    (2, 3, 3, dict(stride=2, padding=2, dilation=2), (2, 2, 66)),     # stride 2, dilated, even L
]
CASES = [("2d",) + c for c in CASES_2D] + [("1d",) + c for c in CASES_1D]
IDS = [f"{c[0]}-{i}" for i, c in enumerate(CASES)]


def _norm(v, nd):
    return (v,) * nd if isinstance(v, int) else tuple(v)


def make_case(case, dtype, seed=0):
    kind, cin, cout, k, kw, shape = case
    fastmod.manual_seed(seed)
    cls = nn.Conv2d if kind == "2d" else nn.Conv1d
    m = cls(cin, cout, k, dtype=dtype, **kw)
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    nd = 2 if kind == "2d" else 1
    geo = dict(stride=_norm(kw.get("stride", 1), nd), dil=_norm(kw.get("dilation", 1), nd),
               groups=kw.get("groups", 1))
    pad = kw.get("padding", 0)
    geo["pad"] = pad if isinstance(pad, str) else _norm(pad, nd)
    return m, x, geo


def _ref_args(m, geo):
    return (geo["stride"], geo["pad"], geo["dil"], geo["groups"])


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_reference(case, dtype):
    m, x, geo = make_case(case, dtype)
    y = m(x)
    want = conv_ref(x, m.weight.data, None if m.bias is None else m.bias.data, *_ref_args(m, geo))
    assert y.shape == want.shape and y.dtype == dtype
    assert_close(y, want, dtype)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_backward_matches_reference(case, dtype, threads):
    m, x, geo = make_case(case, dtype)
    y = m(x)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx = m.backward(dy)
    rdx, rdw, rdb = conv_ref_backward(dy, x, m.weight.data, *_ref_args(m, geo))
    assert dx.shape == x.shape and dx.dtype == dtype
    assert_close(dx, rdx, dtype)
    assert_close(m.weight.grad, rdw, dtype)
    if m.bias is not None:
        assert_close(m.bias.grad, rdb, dtype)


# ------------------------------------------------------------------ every algorithm of the plan
# The kernel module runs one of several algorithms per phase (conv/plan.pxi): conv2d_algorithms
# lists the ones that apply to a call, and conv2d_forward(algorithm=) / conv2d_backward(
# dw_algorithm=, dx_algorithm=) run a named one (ValueError where it does not apply). Each test
# below runs every applicable algorithm of a phase on every shape against the NumPy reference.
# Besides CASES, shapes of the algorithms' own edge cases:
ALGO_CASES = CASES + [
    # Winograd F(2x2, 3x3): odd and even output sizes, paddings 0 / 1 / 2 / asymmetric, batch 1,
    # inputs smaller than a tile
    ("2d", 8, 16, 3, dict(padding=1), (3, 8, 7, 9)),
    ("2d", 6, 32, 3, dict(padding=1), (2, 6, 5, 7)),              # OC 32: wino-igemm, every level
    ("2d", 5, 6, 3, dict(padding=2), (2, 5, 4, 5)),
    ("2d", 5, 6, 3, {}, (2, 5, 6, 8)),
    ("2d", 20, 12, 3, dict(padding=(0, 2)), (1, 20, 5, 3)),
    ("2d", 4, 3, 3, dict(padding=1, bias=False), (2, 4, 1, 1)),
    ("2d", 33, 7, 3, dict(padding="same"), (2, 33, 6, 5)),
    ("2d", 32, 6, 3, dict(padding=1), (2, 32, 5, 7)),             # C = 32: dx through wino-igemm
    # Winograd F(2, 5)
    ("1d", 8, 16, 5, dict(padding=2), (3, 8, 37)),                   # odd length
    ("1d", 5, 7, 5, {}, (2, 5, 9)),                                  # no padding
    ("1d", 6, 3, 5, dict(padding=4, bias=False), (1, 6, 2)),         # input shorter than a tile
    ("1d", 32, 64, 5, dict(padding=2), (3, 32, 64)),
    ("2d", 4, 6, (1, 5), dict(padding=(0, 2)), (2, 4, 3, 11)),       # several rows
    # the direct loops: OC % 4, OW % 16 != 0; OW = 16 exactly; the register-block shapes of
    # simd/fm_tuning.h: one vector of outputs with a partial channel block, NO = 8 with 7
    # channels, NO = 6 (avx2) / 8 (avx512) with a ragged row
    ("2d", 3, 13, 3, dict(padding=1), (2, 3, 17, 33)),
    ("2d", 2, 5, (2, 4), dict(padding=(1, 2), dilation=(2, 1)), (2, 2, 9, 20)),
    ("2d", 3, 4, 3, dict(padding=1), (1, 3, 16, 16)),
    ("2d", 3, 13, 3, dict(padding=1), (2, 3, 9, 16)),
    ("2d", 5, 7, 3, dict(padding=1), (1, 5, 6, 5)),
    ("2d", 12, 30, 3, dict(padding=1), (2, 12, 7, 40)),
    # the implicit GEMM's blocks: OC 70 (4 vectors + a partial block), a dilated 1-D kernel
    # (runs of C), a 2x3 kernel with 33 output channels, position tails everywhere
    ("2d", 20, 70, 3, dict(stride=2, padding=1), (2, 20, 9, 11)),
    ("1d", 17, 40, 5, dict(padding=4, dilation=2), (2, 17, 23)),
    ("2d", 16, 33, (2, 3), dict(padding=(1, 0)), (3, 16, 7, 6)),
]
ALGO_IDS = [f"{c[0]}-{i}" for i, c in enumerate(ALGO_CASES)]
# the plan's blocking: the defaults; one output row per im2col tile and one image (one 2x2 tile)
# per im2row (Winograd) GEMM; 3 Winograd tiles per block (partial images per block); the whole
# batch in one block (threads then left without images)
BLOCKS = {"default": None,
          "row-tiles": dict(tile_elements=1),
          "image-per-gemm": dict(im2row_positions=1, wino_tiles=1),
          "3-tiles": dict(wino_tiles=3),
          "batch": dict(tile_elements=1 << 40, im2row_positions=1 << 20, wino_tiles=1 << 20)}
# (Winograd's rounding error scales with the largest values of the result -- its transforms mix
# the terms of a tile before the GEMM and take differences after it -- as assert_close allows.)


def kernel_call(case, dtype, seed=0):
    """A case as the kernel sees it: 4-D x, w, dy (Conv1d: H = KH = 1), the geometry arguments,
    the NumPy reference's y, dx, dw, db in those shapes, and random arrays to accumulate into."""
    m, x, geo = make_case(case, dtype, seed)
    H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, _ = m._geometry(x.shape[2:])
    N, OC = x.shape[0], m.out_channels
    b = None if m.bias is None else m.bias.data
    out_shape = m.output_shape(x.shape)
    dy = np.random.default_rng(seed + 1).standard_normal(out_shape).astype(dtype)
    rdx, rdw, rdb = conv_ref_backward(dy, x, m.weight.data, *_ref_args(m, geo))
    c = SimpleNamespace(
        x=x.reshape(N, -1, H, W), w=m.weight.data.reshape(OC, -1, KH, KW), b=b,
        dy=dy.reshape(N, OC, OH, OW), args=(SH, SW, PH, PW, DH, DW, m.groups), dtype=dtype,
        y_ref=conv_ref(x, m.weight.data, b, *_ref_args(m, geo)).reshape(N, OC, OH, OW),
        dx_ref=rdx.reshape(N, -1, H, W), dw_ref=rdw.reshape(OC, -1, KH, KW), db_ref=rdb)
    rng = np.random.default_rng(seed + 2)
    c.dx0, c.dw0, c.db0 = (rng.standard_normal(a.shape).astype(dtype) for a in (c.x, c.w, rdb))
    c.scale, c.shift = rng.uniform(0.5, 2, OC).astype(dtype), rng.standard_normal(OC).astype(dtype)
    c.res = rng.standard_normal((N, OC + 3, OH, OW)).astype(dtype)[:, 3:]
    c.algorithms = lambda blocks=None: _k().conv2d_algorithms(c.x, c.dy, c.w, *c.args, blocks)
    return c


def _k():
    from fastmod._kernels import conv
    return conv


def run_forward(c, relu=False, **override):
    y = np.full(c.dy.shape, np.nan, c.dtype)
    _k().conv2d_forward(y, c.x, c.w, c.b, *c.args, relu, **override)
    return y


def run_backward(c, want=("dx", "dw", "db"), accumulate=False, **override):
    """(dx, dw, db) of the kernel (None where not wanted): written over NaN, or added to
    c.dx0 / c.dw0 / c.db0 when accumulate."""
    init = (lambda a: a.copy()) if accumulate else (lambda a: np.full_like(a, np.nan))
    dx, dw, db = (init(a) if name in want else None
                  for name, a in (("dx", c.dx0), ("dw", c.dw0), ("db", c.db0)))
    _k().conv2d_backward(dx, dw, db, c.dy, c.x, c.w, *c.args, accumulate, accumulate, accumulate,
                         **override)
    return dx, dw, db


def check_backward(c, got, accumulate):
    base = (lambda a: a) if accumulate else (lambda a: 0)
    for a, ref, a0 in zip(got, (c.dx_ref, c.dw_ref, c.db_ref), (c.dx0, c.dw0, c.db0)):
        if a is not None:
            assert_close(a, ref + base(a0), c.dtype)


@pytest.mark.parametrize("blocks", list(BLOCKS))
@pytest.mark.parametrize("case", ALGO_CASES, ids=ALGO_IDS)
def test_every_forward_algorithm_matches_reference(case, blocks, dtype, threads):
    # plain and with the fused ReLU (the same values as max(y, 0) of the plain call, bit for bit)
    c = kernel_call(case, dtype)
    names = c.algorithms(BLOCKS[blocks])["forward"]
    assert "im2col" in names or "gemm-1x1" in names      # the general path applies everywhere
    for name in names:
        y = run_forward(c, algorithm=name, blocks=BLOCKS[blocks])
        assert_close(y, c.y_ref, dtype)
        yr = run_forward(c, relu=True, algorithm=name, blocks=BLOCKS[blocks])
        np.testing.assert_array_equal(yr, np.maximum(y, 0), err_msg=name)
        # the inference epilogues on each image: a BatchNorm after the ReLU, then a skip (a
        # batch-strided channel slice), each alone and both
        for scale, shift, res in ((c.scale, c.shift, None), (None, None, c.res),
                                  (c.scale, c.shift, c.res)):
            ye = run_forward(c, relu=True, algorithm=name, blocks=BLOCKS[blocks], scale=scale,
                             shift=shift, residual=res)
            want = yr if scale is None else yr * scale[:, None, None] + shift[:, None, None]
            assert_close(ye, want if res is None else want + res, dtype)
        # the weights packed once (planned inference): the same bits as packing per call
        if blocks == "default":
            got, pk = _k().conv2d_pack_forward(c.x, c.dy, c.w, c.b, *c.args, algorithm=name)
            assert got == name
            yp = run_forward(c, relu=True, algorithm=name, packed=pk)
            np.testing.assert_array_equal(yp, yr, err_msg=name)
            with pytest.raises(ValueError, match="packed must come from conv2d_pack_forward"):
                run_forward(c, algorithm=name, packed=np.empty(pk.size + 1, dtype))


@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
@pytest.mark.parametrize("blocks", list(BLOCKS))
@pytest.mark.parametrize("case", ALGO_CASES, ids=ALGO_IDS)
def test_every_dw_algorithm_matches_reference(case, blocks, accumulate, dtype, threads):
    # dW through each algorithm with dx and db in the same call (dx: the plan's choice given
    # that dW; im2row computes both), and dW alone; overwritten or accumulated into
    c = kernel_call(case, dtype)
    names = c.algorithms(BLOCKS[blocks])["dW"]
    assert "im2col" in names
    for name in names:
        for want in (("dx", "dw", "db"), ("dw",)):
            got = run_backward(c, want, accumulate, dw_algorithm=name, blocks=BLOCKS[blocks])
            check_backward(c, got, accumulate)


@pytest.mark.parametrize("accumulate", [False, True], ids=["overwrite", "accumulate"])
@pytest.mark.parametrize("blocks", list(BLOCKS))
@pytest.mark.parametrize("case", ALGO_CASES, ids=ALGO_IDS)
def test_every_dx_algorithm_matches_reference(case, blocks, accumulate, dtype, threads):
    # dx through each algorithm -- as a forward of dy through each forward algorithm that
    # applies (fwd:...) too -- with dW and db in the same call, and dx alone (DenseBlock
    # accumulates dx into a channel prefix)
    c = kernel_call(case, dtype)
    names = c.algorithms(BLOCKS[blocks])["dx"]
    assert "col2im" in names or "depthwise" in names
    for name in names:
        for want in (("dx", "dw", "db"), ("dx",)):
            got = run_backward(c, want, accumulate, dx_algorithm=name, blocks=BLOCKS[blocks])
            check_backward(c, got, accumulate)


def test_every_algorithm_is_reached(isa):
    # between them the shapes above reach every algorithm name at every level (float32; float64
    # all but the float32-only SIMD ones), so the tests above run each one
    conv = _k()
    seen = {np.float32: set(), np.float64: set()}
    for case in ALGO_CASES:
        for dt in seen:
            for phase, names in kernel_call(case, dt).algorithms().items():
                seen[dt].update(f"{phase}={n}" for n in names)
    every = ({"forward=" + n for n in conv.FORWARD_ALGORITHMS}
             | {"dW=" + n for n in conv.DW_ALGORITHMS} | {"dx=" + n for n in conv.DX_ALGORITHMS})
    f32_only = {"forward=small", "forward=igemm", "forward=wino-igemm", "dW=direct", "dW=igemm",
                "dW=wino-igemm", "dx=im2row-igemm", "dx=fwd:small", "dx=fwd:igemm",
                "dx=fwd:wino-igemm"}
    assert seen[np.float32] == every, every - seen[np.float32]
    assert seen[np.float64] == every - f32_only, (every - f32_only) ^ seen[np.float64]


def test_algorithm_override_rejects_what_does_not_apply():
    conv = _k()
    c = kernel_call(CASES[5], np.float64)                     # depthwise
    with pytest.raises(ValueError, match=r"algorithm 'wino' does not apply to this call "
                                         r"\(applicable: depthwise, im2col, im2col-t\)"):
        run_forward(c, algorithm="wino")
    with pytest.raises(ValueError, match="expected algorithm one of depthwise, small"):
        run_forward(c, algorithm="fast")
    c = kernel_call(ALGO_CASES[-3], np.float64)               # stride 2, groups 1
    with pytest.raises(ValueError, match="do not apply to this call together"):
        run_backward(c, dw_algorithm="im2row", dx_algorithm="col2im")   # im2row: dW and dx
    with pytest.raises(ValueError, match="expected blocks keys"):
        run_forward(c, blocks={"tiles": 3})
    assert "dx=im2row" in conv.conv2d_paths(c.x, c.dy, c.w, *c.args)  # the default plan


def _fd_check(c, fwd, dw, dx, n=12, eps=1e-6):
    """Central differences of sum(y * dy) with the forward through `fwd` against dW through `dw`
    and dx through `dx` (float64), at n random entries of w and of x."""
    _, gw, _ = run_backward(c, ("dw",), dw_algorithm=dw)
    gx, _, _ = run_backward(c, ("dx",), dx_algorithm=dx)
    rng = np.random.default_rng(3)
    for a, grad in ((c.w, gw), (c.x, gx)):
        for i in rng.integers(0, a.size, n):
            v = a.flat[i]
            a.flat[i] = v + eps
            up = np.sum(run_forward(c, algorithm=fwd) * c.dy)
            a.flat[i] = v - eps
            down = np.sum(run_forward(c, algorithm=fwd) * c.dy)
            a.flat[i] = v
            np.testing.assert_allclose(grad.flat[i], (up - down) / (2 * eps), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", ALGO_CASES[len(CASES) + 1:len(CASES) + 7],
                         ids=ALGO_IDS[len(CASES) + 1:len(CASES) + 7])
def test_winograd_gradcheck(case):
    c = kernel_call(case, np.float64)
    _fd_check(c, "wino", "wino", "fwd:wino")


@pytest.mark.parametrize("case", ALGO_CASES[len(CASES) + 8:len(CASES) + 13],
                         ids=ALGO_IDS[len(CASES) + 8:len(CASES) + 13])
def test_winograd5_gradcheck(case):
    c = kernel_call(case, np.float64)
    _fd_check(c, "wino5", "im2col", "fwd:wino5")


def test_winograd_dw_accumulates_and_repeats(dtype, threads):
    # dW (+)= through Winograd: accumulate=True adds to the gradient there; the same thread
    # count gives bit-identical results (fixed-order sum of the per-thread dU partials)
    conv = _k()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 48, 3, 3)).astype(dtype)
    x = rng.standard_normal((5, 48, 7, 8)).astype(dtype)
    dy = rng.standard_normal((5, 10, 7, 8)).astype(dtype)
    dw0 = rng.standard_normal(w.shape).astype(dtype)
    outs = []
    for _ in range(2):
        dw = dw0.copy()
        conv.conv2d_backward(None, dw, None, dy, x, w, 1, 1, 1, 1, 1, 1, 1, True, False, False,
                             dw_algorithm="wino")
        outs.append(dw)
    _, rdw, _ = conv_ref_backward(dy, x, w, (1, 1), (1, 1), (1, 1), 1)
    assert_close(outs[0], dw0 + rdw, dtype)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_winograd_accumulates_into_dx(dtype, threads):
    # DenseBlock adds each layer's input gradient into a channel prefix: dx through Winograd
    # (dy has 12 channels, which the plan leaves on dxconv) with accumulate=True adds to what is
    # there
    c = kernel_call(("2d", 40, 12, 3, dict(padding=1), (3, 40, 9, 10)), dtype)
    got = run_backward(c, ("dx",), accumulate=True, dx_algorithm="fwd:wino")
    check_backward(c, got, accumulate=True)


def test_small_direct_keeps_nan_under_fused_relu():
    c = kernel_call(("2d", 3, 5, 3, dict(padding=1), (2, 3, 6, 7)), np.float32)
    c.x[1, 0, 2, 2] = np.nan
    got = run_forward(c, relu=True, algorithm="small")
    assert np.isnan(got[1, :, 1:4, 1:4]).all() and not np.isnan(got[0]).any()
    assert not (got < 0).any()


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck(case):
    m, x, _ = make_case(case, np.float64)
    fastmod.gradcheck(m, x, max_elements=64)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("direction", ["t2f", "f2t"])
def test_torch_parity(case, direction, dtype, parity, torch):
    m, x, _ = make_case(case, dtype)
    kind, cin, cout, k, kw, shape = case
    tcls = torch.nn.Conv2d if kind == "2d" else torch.nn.Conv1d
    tm = tcls(cin, cout, k, **kw)
    parity(m, tm, x, direction=direction)


# ------------------------------------------------------------------ threads and the batch split
# big enough that the kernels split the batch over 2 threads (and batch 1: GEMMs split instead)
THREAD_CASES = [
    (nn.Conv2d, (8, 16, 3), dict(padding=1), (5, 8, 12, 11)),
    (nn.Conv2d, (16, 32, 1), {}, (3, 16, 10, 10)),
    (nn.Conv2d, (16, 16, 3), dict(padding=1, groups=16), (4, 16, 12, 12)),
    (nn.Conv1d, (16, 32, 5), dict(padding=2), (6, 16, 64)),
    (nn.Conv2d, (32, 64, 3), dict(padding=1), (1, 32, 16, 16)),
]


@pytest.mark.parametrize("cls,args,kw,shape", THREAD_CASES)
def test_threads_agree_and_repeat_bit_identical(cls, args, kw, shape, dtype):
    rng = np.random.default_rng(0)
    fastmod.manual_seed(0)
    m = cls(*args, dtype=dtype, **kw)
    x = rng.standard_normal(shape).astype(dtype)
    dy = None
    results = {}
    for nt in (1, 2, 2):
        fastmod.set_num_threads(nt)
        m.zero_grad()
        y = m(x)
        if dy is None:
            dy = rng.standard_normal(y.shape).astype(dtype)
        dx = m.backward(dy)
        res = (y, dx, m.weight.grad.copy(), m.bias.grad.copy())
        if nt in results:                       # same thread count: bit-identical
            for a, b in zip(results[nt], res):
                np.testing.assert_array_equal(a, b)
        results[nt] = res
    for a, b in zip(results[1], results[2]):
        assert_close(a, b, dtype)


def test_gradients_accumulate_until_zero_grad(rng):
    m = nn.Conv2d(3, 4, 3, padding=1, dtype=np.float64)
    x = rng.standard_normal((2, 3, 5, 5))
    dy = rng.standard_normal((2, 4, 5, 5))
    m(x)
    m.backward(dy)
    g1, b1 = m.weight.grad.copy(), m.bias.grad.copy()
    m(x)
    m.backward(dy)
    np.testing.assert_allclose(m.weight.grad, 2 * g1, rtol=1e-12)
    np.testing.assert_allclose(m.bias.grad, 2 * b1, rtol=1e-12)
    m.zero_grad()
    m(x)
    m.backward(dy)
    np.testing.assert_allclose(m.weight.grad, g1, rtol=1e-12)


def test_need_input_grad_false_and_no_grad(rng):
    m = nn.Conv1d(3, 4, 3, dtype=np.float64)
    x = rng.standard_normal((2, 3, 8))
    y = m(x)
    assert m.backward(np.ones_like(y), need_input_grad=False) is None
    assert np.any(m.weight.grad != 0)
    with fastmod.no_grad():
        m(x)
    with pytest.raises(RuntimeError, match="no saved forward state"):
        m.backward(np.ones_like(y))


def test_applied_twice_gives_both_gradients(rng):
    # y = conv(conv(x)): the module keeps a stack of saved inputs
    m = nn.Conv2d(2, 2, 3, padding=1, dtype=np.float64)
    x = rng.standard_normal((1, 2, 4, 4))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = m

        def forward(self, x):
            return self.c(self.c(x))

        def backward(self, dy):
            return self.c.backward(self.c.backward(dy))

    fastmod.gradcheck(Twice(), x)


def test_non_contiguous_input_is_copied(rng):
    m = nn.Conv2d(3, 2, 3, dtype=np.float64)
    x = rng.standard_normal((2, 7, 7, 3)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(m(x), conv_ref(x, m.weight.data, m.bias.data, (1, 1), (0, 0), (1, 1), 1),
                               rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ the seed's special cases
def test_conv1d_s_is_the_banded_matrix_q(rng):
    # Conv1D-S(z)_i = sum_j w_j z_{i - l + (j-1)}: y = Q z with Q[i, i - l + j] = w_j
    for ell in (1, 2):
        m = nn.Conv1d(1, 1, 2 * ell + 1, padding=ell, bias=False, dtype=np.float64)
        assert m.num_parameters() == 2 * ell + 1
        w = m.weight.data.reshape(-1)
        n = 9
        Q = np.zeros((n, n))
        for i in range(n):
            for j in range(2 * ell + 1):
                c = i - ell + j
                if 0 <= c < n:
                    Q[i, c] = w[j]
        z = rng.standard_normal(n)
        y = m(z.reshape(1, 1, n)).reshape(-1)
        np.testing.assert_allclose(y, Q @ z, rtol=1e-12, atol=1e-12)
        # and its backward is Q^T (the gradient of <g, Q z>)
        g = rng.standard_normal(n)
        np.testing.assert_allclose(m.backward(g.reshape(1, 1, n)).reshape(-1), Q.T @ g,
                                   rtol=1e-12, atol=1e-12)


def test_conv2d_s_is_the_double_sum(rng):
    # Conv2D-S(z)_{i,j} = sum_{p,q} w_{p,q} z_{i+p-l, j+q-l} (zero outside z)
    k, ell = 3, 1
    m = nn.Conv2d(1, 1, k, padding=ell, bias=False, dtype=np.float64)
    assert m.num_parameters() == k * k
    w = m.weight.data[0, 0]
    z = rng.standard_normal((6, 5))
    want = np.zeros_like(z)
    for i in range(6):
        for j in range(5):
            for p in range(k):
                for q in range(k):
                    a, b = i + p - ell, j + q - ell
                    if 0 <= a < 6 and 0 <= b < 5:
                        want[i, j] += w[p, q] * z[a, b]
    np.testing.assert_allclose(m(z.reshape(1, 1, 6, 5))[0, 0], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls,spatial", [(nn.Conv1d, (10,)), (nn.Conv2d, (5, 6))])
def test_multichannel_is_a_sum_of_single_channel_convs(cls, spatial, rng):
    # Conv(z)_i = sum_j Conv-S_{i,j}(z_j): each (output, input) pair is its own Conv-S
    C, Cp, k = 3, 4, 3
    m = cls(C, Cp, k, padding=1, bias=False, dtype=np.float64)
    z = rng.standard_normal((1, C) + spatial)
    y = m(z)
    single = cls(1, 1, k, padding=1, bias=False, dtype=np.float64)
    for i in range(Cp):
        total = 0
        for j in range(C):
            single.weight.data[...] = m.weight.data[i, j]
            total = total + single(z[:, j:j + 1])[0, 0]
        np.testing.assert_allclose(y[0, i], total, rtol=1e-12, atol=1e-12)


def test_parameter_counts():
    assert nn.Conv1d(3, 5, 7, bias=False).num_parameters() == 7 * 3 * 5
    assert nn.Conv1d(3, 5, 7).num_parameters() == 7 * 3 * 5 + 5
    assert nn.Conv2d(3, 5, 3, bias=False).num_parameters() == 3 * 3 * 3 * 5
    assert nn.Conv2d(3, 5, 3).num_parameters() == 3 * 3 * 3 * 5 + 5
    assert nn.Conv2d(4, 8, 3, groups=4).num_parameters() == 9 * 8 + 8


def test_default_init_is_torchs(torch):
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, fan_in = C/groups * k*k
    m = nn.Conv2d(8, 64, 3, groups=2)
    bound = 1 / np.sqrt(4 * 9)
    for p in (m.weight.data, m.bias.data):
        assert np.abs(p).max() <= bound and np.abs(p).max() > 0.9 * bound
    assert m.weight.shape == tuple(torch.nn.Conv2d(8, 64, 3, groups=2).weight.shape)


def test_repr_and_state_dict_names():
    assert repr(nn.Conv2d(3, 16, 3)) == "Conv2d(3, 16, kernel_size=3)"
    assert repr(nn.Conv2d(3, 16, (3, 5), stride=2, padding="same" if False else 1, groups=1,
                          bias=False)) == "Conv2d(3, 16, kernel_size=(3, 5), stride=2, padding=1, bias=False)"
    assert repr(nn.Conv1d(4, 4, 3, padding="same", groups=4)) == \
        "Conv1d(4, 4, kernel_size=3, padding='same', groups=4)"
    assert list(nn.Conv1d(2, 3, 3).state_dict()) == ["weight", "bias"]
    assert nn.Conv1d(2, 3, 3).state_dict()["weight"].shape == (3, 2, 3)


# ------------------------------------------------------------------ bad input
def test_bad_inputs(rng):
    m = nn.Conv2d(3, 16, 3)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(8, 4, 8, 8\)"):
        m(np.zeros((8, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"expected input of shape"):
        m(np.zeros((3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="float32.*float64"):
        m(np.zeros((1, 3, 8, 8), np.float64))
    with pytest.raises(ValueError, match="larger than the padded input"):
        m(np.zeros((1, 3, 2, 8), np.float32))
    with pytest.raises(ValueError, match="larger than the padded input"):
        nn.Conv1d(1, 1, 5, dilation=2)(np.zeros((1, 1, 8), np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        m(np.zeros((0, 3, 8, 8), np.float32))
    with pytest.raises(TypeError, match="ndarray"):
        m([[1.0]])
    y = m(np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="expected a gradient of shape"):
        m.backward(np.zeros((2, 16, 8, 8), np.float32))
    assert y.shape == (2, 16, 6, 6)


@pytest.mark.parametrize("kwargs,match", [
    (dict(in_channels=0, out_channels=4, kernel_size=3), "in_channels must be a positive integer"),
    (dict(in_channels=3, out_channels=-1, kernel_size=3), "out_channels must be a positive integer"),
    (dict(in_channels=3, out_channels=4, kernel_size=0), "kernel_size must be >= 1"),
    (dict(in_channels=3, out_channels=4, kernel_size=(3, 3, 3)), "kernel_size must be an int or a tuple of 2"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=0), "stride must be >= 1"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=-1), "padding must be >= 0"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding="full"), "padding must be 'same'"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding="same", stride=2), "needs stride 1"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, dilation=0), "dilation must be >= 1"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=2), r"in_channels \(3\) must be divisible by groups \(2\)"),
    (dict(in_channels=4, out_channels=6, kernel_size=3, groups=4), r"out_channels \(6\) must be divisible by groups \(4\)"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, groups=0), "groups must be a positive integer"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding_mode="mirror"), "padding_mode must be one of"),
    (dict(in_channels=3, out_channels=4, kernel_size=3, bias=1), "bias must be a bool"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nn.Conv2d(**kwargs)


def test_bad_dtype_argument():
    with pytest.raises(TypeError, match="float32 or float64"):
        nn.Conv1d(2, 2, 3, dtype=np.int32)


# ------------------------------------------------------------------ fused ReLU (inference)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_relu_equals_conv_then_relu(case, dtype, threads):
    # Sequential(Conv, ReLU) under no_grad: one kernel call applying the ReLU to each image;
    # the same values as the convolution followed by the ReLU module (the plan's algorithm here;
    # every algorithm's fused ReLU: test_every_forward_algorithm_matches_reference)
    m, x, _ = make_case(case, dtype)
    seq = nn.Sequential(m, nn.ReLU())
    want = nn.ReLU()(m(x))
    m._saved()                                  # drop what the grad-mode forward kept
    with fastmod.no_grad():
        got = seq(x)
        plain = m(x)
    assert got.dtype == dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert (plain < 0).any() and not (got < 0).any()   # the plain call left its ReLU off


def test_fused_relu_keeps_nan(dtype):
    m = nn.Conv2d(2, 3, 3, padding=1, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(dtype)
    x[1, 0, 2, 2] = np.nan
    with fastmod.no_grad():
        got = nn.Sequential(m, nn.ReLU())(x)
    want = nn.ReLU()(m(x))
    np.testing.assert_array_equal(got, want)        # NaN where NaN (assert_array_equal: NaN == NaN)
    assert np.isnan(got[1]).any() and not np.isnan(got[0]).any()


# ------------------------------------------------------------------ padding_mode reflect / replicate / circular
def pad_ref(x, pads, mode):
    """Independent reference: explicit index maps per spatial axis (torch's definitions)."""
    out = np.asarray(x, np.float64)
    for axis, (lo, hi) in enumerate(pads, start=2):
        n = out.shape[axis]
        pos = np.arange(-lo, n + hi)
        if mode == "reflect":
            idx = np.abs(pos)
            idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
        elif mode == "replicate":
            idx = np.clip(pos, 0, n - 1)
        else:
            idx = pos % n
        out = np.take(out, idx, axis=axis)
    return out


def conv_ref_valid(xp, w, b, stride, dilation, groups):
    """Cross-correlation without padding, float64, direct sums (any 1-D or 2-D)."""
    nd = xp.ndim - 2
    xp4 = xp if nd == 2 else xp[:, :, None, :]
    w4 = np.asarray(w, np.float64) if nd == 2 else np.asarray(w, np.float64)[:, :, None, :]
    SH, SW = (1, stride[0]) if nd == 1 else stride
    DH, DW = (1, dilation[0]) if nd == 1 else dilation
    N, C, H, W = xp4.shape
    OC, Cg, KH, KW = w4.shape
    OH, OW = (H - DH * (KH - 1) - 1) // SH + 1, (W - DW * (KW - 1) - 1) // SW + 1
    y = np.zeros((N, OC, OH, OW))
    og = OC // groups
    for o in range(OC):
        g = o // og
        for c in range(Cg):
            for i in range(KH):
                for j in range(KW):
                    y[:, o] += w4[o, c, i, j] * xp4[:, g * Cg + c, i * DH: i * DH + SH * (OH - 1) + 1: SH,
                                                   j * DW: j * DW + SW * (OW - 1) + 1: SW]
    if b is not None:
        y += np.asarray(b, np.float64)[None, :, None, None]
    return y if nd == 2 else y[:, :, 0, :]


PAD_CASES = [
    (2, "reflect", dict(kernel_size=3, padding=1), (2, 3, 7, 6)),
    (2, "replicate", dict(kernel_size=(3, 5), padding=(1, 2), stride=2), (2, 3, 9, 8)),
    (2, "circular", dict(kernel_size=3, padding=2, dilation=2), (1, 2, 5, 6)),
    (2, "replicate", dict(kernel_size=4, padding="same", groups=3), (2, 6, 8, 7)),
    (2, "reflect", dict(kernel_size=3, padding=(2, 0)), (1, 3, 3, 4)),
    (1, "reflect", dict(kernel_size=4, padding="same"), (2, 3, 9)),
    (1, "circular", dict(kernel_size=5, padding=2, stride=3), (2, 4, 11)),
    (1, "replicate", dict(kernel_size=3, padding=4), (1, 2, 2)),              # pad > size
]
PAD_IDS = [f"{c[1]}-{c[0]}d-{i}" for i, c in enumerate(PAD_CASES)]


@pytest.mark.parametrize("nd,mode,kw,shape", PAD_CASES, ids=PAD_IDS)
def test_padding_modes_reference_torch_gradcheck(nd, mode, kw, shape, dtype, rng):
    torch = pytest.importorskip("torch")
    C = shape[1]
    cls, tcls = (nn.Conv2d, torch.nn.Conv2d) if nd == 2 else (nn.Conv1d, torch.nn.Conv1d)
    m = cls(C, 6, padding_mode=mode, dtype=dtype, **kw)
    assert f"padding_mode='{mode}'" in repr(m)
    x = rng.standard_normal(shape).astype(dtype)
    pads = m._pad
    ref = conv_ref_valid(pad_ref(x, pads, mode), m.weight.data, m.bias.data,
                         m.stride, m.dilation, m.groups)
    y = m(x)
    assert_close(y, ref, dtype)
    tm = tcls(C, 6, padding_mode=mode, **kw).to(torch.float32 if dtype == np.float32 else torch.float64)
    tm.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in m.state_dict().items()})
    xt = torch.tensor(x, requires_grad=True)
    yt = tm(xt)
    assert_close(y, yt.detach().numpy(), dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.from_numpy(dy))
    assert_close(m.backward(dy), xt.grad.numpy(), dtype)
    assert_close(m.weight.grad, tm.weight.grad.numpy(), dtype)
    m(x)
    assert m.backward(dy, need_input_grad=False) is None
    if dtype == np.float64:
        fastmod.gradcheck(cls(C, 6, padding_mode=mode, dtype=np.float64, **kw), x)


def test_padding_modes_bad_input():
    with pytest.raises(ValueError, match=r"padding_mode='reflect' needs padding smaller than "
                                         r"the input size"):
        nn.Conv2d(2, 3, 5, padding=2, padding_mode="reflect")(np.zeros((1, 2, 2, 6), np.float32))
    with pytest.raises(ValueError, match=r"padding_mode='circular' needs padding at most"):
        nn.Conv1d(2, 3, 7, padding=3, padding_mode="circular")(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match="expected input of shape"):
        nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate")(np.zeros((1, 3, 5, 5), np.float32))


# ------------------------------------------------------------------ depth-first chains (planned)
@pytest.mark.parametrize("group", [1, 3])
def test_chain_forward_matches_layer_by_layer(group, threads, rng):
    """conv2d_chain_forward (each thread takes its images through every layer in turn) gives
    what the layers give one after another: the few-channel stem, a stride-2 implicit GEMM,
    a Winograd layer with a BatchNorm epilogue and a skip from an earlier layer, a 1x1 layer
    with a skip from the chain's input; blocks of `group` images."""
    k = _k()
    N = 5
    x = rng.standard_normal((N, 3, 12, 12)).astype(np.float32)
    specs = [(3, 16, 3, 1, 1), (16, 32, 3, 2, 1), (32, 32, 3, 1, 1), (32, 32, 1, 1, 0)]
    ws = [(rng.standard_normal((o, c, kk, kk)) * 0.2).astype(np.float32) for c, o, kk, s, p in specs]
    bs = [rng.standard_normal(o).astype(np.float32) for c, o, kk, s, p in specs]
    scale, shift = rng.uniform(0.5, 2, 32).astype(np.float32), rng.standard_normal(32).astype(np.float32)
    ys, cur, layers, want = [], x, [], []
    for i, ((c, o, kk, s, p), w, b) in enumerate(zip(specs, ws, bs)):
        oh = (cur.shape[2] + 2 * p - kk) // s + 1
        y = np.full((N, o, oh, oh), np.nan, np.float32)
        algo, pk = k.conv2d_pack_forward(cur, y, w, b, s, s, p, p, 1, 1, 1)
        sc, sh = (scale, shift) if i == 2 else (None, None)
        res = ys[1] if i == 2 else (ys[2] if i == 3 else None)
        layers.append((y, cur, w, b, algo, pk, i < 3, s, s, p, p, 1, 1, sc, sh, res))
        ref = np.empty_like(y)
        res_i = {2: 1, 3: 2}.get(i)
        k.conv2d_forward(ref, want[-1] if want else x, w, b, s, s, p, p, 1, 1, 1, i < 3,
                         scale=sc, shift=sh, residual=None if res_i is None else want[res_i])
        ys.append(y)
        want.append(ref)
        cur = y
    if fastmod.get_isa() != "scalar":             # the SIMD algorithms (the scalar level: BLAS)
        assert "small" in {l[4] for l in layers}
    k.conv2d_chain_forward(tuple(layers), group)
    for got, ref in zip(ys, want):
        assert_close(got, ref, np.float32)
    bad = (layers[0][:5] + (np.empty(3, np.float32),) + layers[0][6:],)
    with pytest.raises(ValueError, match="packed must be conv2d_pack_forward's"):
        k.conv2d_chain_forward(bad)


def test_chain_hands_dead_outputs_to_the_next_implicit_gemm(threads, rng):
    """dead=: between two implicit-GEMM layers an output only the next layer reads is never
    written -- it goes straight into the next layer's padded plane (bias and ReLU applied on
    the way) -- and the chain's last output is what the layers give one after another; odd
    sizes (a 7x7 plane after a stride-2 layer, 20 channels: a partial vector)."""
    k = _k()
    N = 3
    x = rng.standard_normal((N, 8, 13, 13)).astype(np.float32)
    specs = [(8, 20, 3, 2, 1), (20, 24, 3, 1, 1), (24, 16, 3, 2, 1)]
    layers, ys, cur, ref = [], [], x, x
    for i, (c, o, kk, s, p) in enumerate(specs):
        w = (rng.standard_normal((o, c, kk, kk)) * 0.2).astype(np.float32)
        b = rng.standard_normal(o).astype(np.float32)
        oh = (cur.shape[2] + 2 * p - kk) // s + 1
        y = np.full((N, o, oh, oh), np.nan, np.float32)
        names = k.conv2d_algorithms(cur, y, w, s, s, p, p, 1, 1, 1)["forward"]
        if "igemm" not in names:
            pytest.skip("no implicit GEMM at this level")
        algo, pk = k.conv2d_pack_forward(cur, y, w, b, s, s, p, p, 1, 1, 1, algorithm="igemm")
        layers.append((y, cur, w, b, algo, pk, True, s, s, p, p, 1, 1, None, None, None))
        want = np.empty_like(y)
        k.conv2d_forward(want, ref, w, b, s, s, p, p, 1, 1, 1, True)
        ys.append(y)
        cur, ref = y, want
    k.conv2d_chain_forward(tuple(layers), 1, (True, True, False))
    assert np.isnan(ys[0]).all() and np.isnan(ys[1]).all()         # handed over, not written
    assert_close(ys[2], ref, np.float32)
    for y in ys:
        y.fill(np.nan)
    k.conv2d_chain_forward(tuple(layers), 1, (False, True, False))  # the first one kept
    assert not np.isnan(ys[0]).any() and np.isnan(ys[1]).all()
    assert_close(ys[2], ref, np.float32)


@pytest.mark.parametrize("oc, width, bias, relu, dil", [(32, 32, True, True, 1), (20, 13, False, True, 1),
                                                        (40, 9, True, False, 2), (7, 6, True, True, 1)])
def test_chain_hands_a_direct_stem_to_the_next_implicit_gemm(oc, width, bias, relu, dil, threads, rng):
    """dead=: a few-channel direct layer ("small") before an implicit GEMM writes its output
    (+ bias, ReLU) straight into that layer's padded plane through the direct loops vectorized
    over output channels -- its own y is never written; rows of any width (blocks of 8, 4 and
    1 outputs), channel counts that are not whole vectors or blocks, dilation."""
    k = _k()
    N = 3
    x = rng.standard_normal((N, 3, width, width)).astype(np.float32)
    w0 = (rng.standard_normal((oc, 3, 3, 3)) * 0.3).astype(np.float32)
    b0 = rng.standard_normal(oc).astype(np.float32) if bias else None
    w1 = (rng.standard_normal((16, oc, 3, 3)) * 0.2).astype(np.float32)
    b1 = rng.standard_normal(16).astype(np.float32)
    y0 = np.full((N, oc, width, width), np.nan, np.float32)
    oh = (width - 1) // 2 + 1
    y1 = np.full((N, 16, oh, oh), np.nan, np.float32)
    # (forced: the scalar level's plan takes neither, its kernels are tested all the same)
    assert "small" in k.conv2d_algorithms(x, y0, w0, 1, 1, dil, dil, dil, dil, 1)["forward"]
    assert "igemm" in k.conv2d_algorithms(y0, y1, w1, 2, 2, 1, 1, 1, 1, 1)["forward"]
    a0, p0 = k.conv2d_pack_forward(x, y0, w0, b0, 1, 1, dil, dil, dil, dil, 1, algorithm="small")
    a1, p1 = k.conv2d_pack_forward(y0, y1, w1, b1, 2, 2, 1, 1, 1, 1, 1, algorithm="igemm")
    want0, want1 = np.empty_like(y0), np.empty_like(y1)
    k.conv2d_forward(want0, x, w0, b0, 1, 1, dil, dil, dil, dil, 1, relu)
    k.conv2d_forward(want1, want0, w1, b1, 2, 2, 1, 1, 1, 1, 1, True)
    layers = ((y0, x, w0, b0, a0, p0, relu, 1, 1, dil, dil, dil, dil, None, None, None),
              (y1, y0, w1, b1, a1, p1, True, 2, 2, 1, 1, 1, 1, None, None, None))
    assert p0.ctypes.data % 64 == 0 and p1.ctypes.data % 64 == 0   # packed rows on cache lines
    k.conv2d_chain_forward(layers, 1, (True, False))
    assert np.isnan(y0).all()                                       # handed over, not written
    assert_close(y1, want1, np.float32)
    y1.fill(np.nan)
    k.conv2d_chain_forward(layers, 1, (False, False))               # kept: written, same result
    assert_close(y0, want0, np.float32)
    assert_close(y1, want1, np.float32)
