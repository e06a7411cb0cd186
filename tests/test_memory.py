"""Out of memory: every kernel allocation is checked and ends in a MemoryError (never a segfault),
the failed call leaves no trace, and the next call works. Kernel scratch comes from one allocator
(fastmod._kernels._alloc.fm_malloc) whose test hook fails the n-th allocation; each test counts
a call's allocations and fails every one of them in turn. Also: requests too large for the
machine, where the Python layer allocates, raise MemoryError cleanly."""
import numpy as np
import pytest

import fastmod
from fastmod import nn
from fastmod._kernels import _alloc


def _count(run):
    n0 = _alloc._alloc_count()
    run()
    return _alloc._alloc_count() - n0


def _fail_each(run, compare):
    """run() -> results; fail each of its allocations in turn: MemoryError, and the next normal
    run() gives the same results (bit-identical: same inputs, same thread count)."""
    want = run()
    k = _count(run)
    assert k >= 1, "the call made no kernel allocation"
    for i in range(k):
        _alloc._fail_alloc_after(i)
        try:
            with pytest.raises(MemoryError, match="out of memory"):
                run()
        finally:
            _alloc._fail_alloc_after(-1)
        compare(run(), want)
    return k


def _equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            np.testing.assert_array_equal(g, w)


def test_hook_fails_exactly_the_nth_allocation_once():
    from fastmod._kernels import optim as _k
    g = np.ones(8, np.float32)
    n0 = _alloc._alloc_count()
    _k.sgd_step_multi([g.copy()], [g], None, 0.1, 0.0, 0.0, 0.0, False, False)
    assert _alloc._alloc_count() - n0 == 2          # pointer table and sizes
    _alloc._fail_alloc_after(1)
    with pytest.raises(MemoryError):
        _k.sgd_step_multi([g.copy()], [g], None, 0.1, 0.0, 0.0, 0.0, False, False)
    _k.sgd_step_multi([g.copy()], [g], None, 0.1, 0.0, 0.0, 0.0, False, False)   # disarmed
    _alloc._fail_alloc_after(5)
    _alloc._fail_alloc_after(-1)                     # disarming works before it fires
    _k.sgd_step_multi([g.copy()], [g], None, 0.1, 0.0, 0.0, 0.0, False, False)


# ------------------------------------------------------------------ convolution
# (N, C, spatial, OC, kernel, stride, padding, groups): between them every forward, dW and dx
# path of conv.pyx with the default thresholds (asserted below through conv2d_paths)
CONV_CASES = {
    "depthwise": (4, 8, (10, 10), 8, 3, 1, 1, 8),
    "depthwise-s2": (4, 8, (10, 10), 8, 3, 2, 1, 8),
    "small": (4, 3, (12, 12), 16, 3, 1, 1, 1),
    "wino": (2, 32, (8, 8), 32, 3, 1, 1, 1),
    "wino-dw": (2, 48, (8, 8), 16, 3, 1, 1, 1),
    "wino5": (2, 64, (20,), 64, 5, 1, 0, 1),
    "shifted": (2, 16, (8, 8), 28, 3, 1, 1, 1),
    "im2row": (2, 16, (9, 9), 32, 3, 2, 1, 1),
    "gemm-1x1": (4, 8, (6, 6), 16, 1, 1, 0, 1),
    "im2col": (2, 12, (9, 9), 32, 3, 2, 1, 1),
    "im2col-t": (2, 8, (9, 9), 8, 3, 2, 0, 1),
    "dxconv": (2, 72, (6, 6), 14, 3, 1, 1, 1),
    "groups": (2, 8, (8, 8), 8, 3, 1, 1, 2),
    "direct-dw": (2, 24, (8, 8), 12, 3, 1, 1, 1),
}


def _conv(case, dtype):
    N, C, sp, OC, k, s, p, G = CONV_CASES[case]
    cls = nn.Conv2d if len(sp) == 2 else nn.Conv1d
    m = cls(C, OC, k, stride=s, padding=p, groups=G, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((N, C) + sp).astype(dtype)
    return m, x


def test_conv_cases_cover_every_path():
    # in float32 and float64 (the SIMD paths -- small, direct dW, implicit GEMM -- are float32's)
    from fastmod._kernels import conv as _k
    seen = set()
    for case in CONV_CASES:
        for dt in (np.float32, np.float64):
            m, x = _conv(case, dt)
            y = m(x)
            x4 = x if x.ndim == 4 else x[:, :, None, :]
            y4 = y if y.ndim == 4 else y[:, :, None, :]
            w4 = m.weight.data if x.ndim == 4 else m.weight.data[:, :, None, :]
            st, pd = (m.stride, m.padding) if x.ndim == 4 else ((1, m.stride[0]), (0, m.padding[0]))
            paths = _k.conv2d_paths(x4, y4, w4, *st, *pd, 1, 1, m.groups)
            # (Winograd's and the rows path's GEMMs on BLAS or the implicit-GEMM kernel: the
            # same scratch either way)
            seen.update(paths.replace("-igemm", "").replace("gemm-1x1-t", "gemm-1x1").split())
    want = {"forward=" + f for f in ("depthwise", "small", "wino", "wino5", "shifted", "im2row",
                                     "gemm-1x1", "im2col", "im2col-t", "igemm")}
    want |= {"dW=" + f for f in ("depthwise", "wino", "im2col", "im2col-t", "im2row", "direct",
                                 "igemm")}
    want |= {"dx=" + f for f in ("depthwise", "dxconv", "col2im", "fwd:small", "fwd:wino",
                                 "fwd:wino5", "fwd:im2row", "im2row", "fwd:igemm")}
    if fastmod.get_isa() == "scalar":      # the direct loops and the implicit GEMM need vectors
        want -= {"forward=small", "dx=fwd:small", "dW=direct", "forward=igemm", "dW=igemm",
                 "dx=fwd:igemm"}
    if fastmod.get_isa() == "avx2":        # stride-1 forwards stay off the implicit GEMM
        want -= {"dx=fwd:igemm"}
        if _k._blas_runs_avx512():         # and all of it where the BLAS runs AVX-512 kernels
            want -= {"forward=igemm", "dW=igemm"}
    assert want <= seen, want - seen


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_forward_out_of_memory(case, dtype, threads):
    m, x = _conv(case, dtype)
    with fastmod.no_grad():
        _fail_each(lambda: (m(x),), _equal)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_backward_out_of_memory(case, dtype, threads):
    """Training step: forward and backward allocations. A failed backward leaves the gradients
    as they were (a gradient it was to overwrite stays unset, not the uninitialized buffer)."""
    m, x = _conv(case, dtype)
    dy = np.random.default_rng(1).standard_normal(m(x).shape).astype(dtype)
    m.backward(dy)

    def run():
        m.zero_grad()
        m(x)
        dx = m.backward(dy)
        return dx, m.weight.grad.copy(), m.bias.grad.copy()

    def compare(got, want):
        _equal(got, want)

    want = run()
    k = _count(run)
    for i in range(k):
        m.zero_grad()
        _alloc._fail_alloc_after(i)
        try:
            with pytest.raises(MemoryError, match="out of memory"):
                m(x)
                m.backward(dy)
        finally:
            _alloc._fail_alloc_after(-1)
        assert not m.weight.has_grad() and not m.bias.has_grad()
        compare(run(), want)
    # accumulating into existing gradients: a failed backward adds nothing
    run()
    g0 = m.weight.grad.copy()
    m(x)
    _alloc._fail_alloc_after(0)
    try:
        with pytest.raises(MemoryError):
            m.backward(dy)
    finally:
        _alloc._fail_alloc_after(-1)
    assert m.weight.has_grad()
    np.testing.assert_array_equal(m.weight.grad, g0)


def test_denseblock_out_of_memory():
    """DenseBlock calls the convolution kernels on views of one buffer (accumulating dx)."""
    m = nn.DenseBlock(4, 4, 3)
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    dy = np.random.default_rng(1).standard_normal(m(x).shape).astype(np.float32)
    m.backward(dy)

    def run():
        m.zero_grad()
        y = m(x)
        return (y, m.backward(dy)) + tuple(p.grad.copy() for p in m.parameters())

    _fail_each(run, _equal)


# ------------------------------------------------------------------ batch normalization
@pytest.mark.parametrize("shape", [(16, 6), (8, 5, 3, 4)], ids=["1d", "2d"])
def test_batchnorm_out_of_memory(shape, dtype, threads):
    """Column-path BatchNorm (spatial size <= 16) allocates its scratch; a failed training
    forward leaves running statistics and num_batches_tracked as they were."""
    m = nn.BatchNorm1d(shape[1], dtype=dtype) if len(shape) == 2 else \
        nn.BatchNorm2d(shape[1], dtype=dtype)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype) * 3 + 1
    dy = np.random.default_rng(1).standard_normal(shape).astype(dtype)
    state = {k: v.copy() for k, v in m.state_dict().items()}

    def run():
        m.load_state_dict(state)
        m.zero_grad()
        m.train()
        y = m(x)
        dx = m.backward(dy)
        m.eval()
        ye = m(x)
        return (y, dx, ye, m.weight.grad.copy(), m.bias.grad.copy()) + \
            tuple(v.copy() for v in m.state_dict().values())

    want = run()
    k = _count(run)
    assert k >= 4
    for i in range(k):
        m.load_state_dict(state)
        m.zero_grad()
        m.train()
        _alloc._fail_alloc_after(i)
        try:
            with pytest.raises(MemoryError, match="out of memory"):
                m(x)
                m.backward(dy)
                m.eval()
                m(x)
        finally:
            _alloc._fail_alloc_after(-1)
        if m.training:          # failed in the training forward or backward
            assert int(m.num_batches_tracked) in (0, 1)
            if int(m.num_batches_tracked) == 0:          # the forward failed: no trace
                for key, v in state.items():
                    np.testing.assert_array_equal(m.state_dict()[key], v)
            assert not m.weight.has_grad() and not m.bias.has_grad()
        _equal(run(), want)


def test_batchnorm_momentum_none_counts_after_a_failed_forward():
    m = nn.BatchNorm1d(3, momentum=None)
    x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
    ref = nn.BatchNorm1d(3, momentum=None)
    _alloc._fail_alloc_after(0)
    try:
        with pytest.raises(MemoryError):
            m(x)
    finally:
        _alloc._fail_alloc_after(-1)
    assert int(m.num_batches_tracked) == 0
    m(x)
    ref(x)
    _equal((m.running_mean, m.running_var, m.num_batches_tracked),
           (ref.running_mean, ref.running_var, ref.num_batches_tracked))


# ------------------------------------------------------------------ optimizers
def test_sgd_multi_out_of_memory(dtype):
    lin = nn.Sequential(nn.Linear(6, 5, dtype=dtype), nn.Linear(5, 3, dtype=dtype))
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(dtype)
    start = {k: v.copy() for k, v in lin.state_dict().items()}

    def run():
        lin.load_state_dict(start)
        opt = fastmod.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
        out = []
        for _ in range(3):              # the first step sets the buffers; later ones go multi
            lin.zero_grad()
            lin(x)
            lin.backward(np.ones((4, 3), dtype))
            opt.step()
        out = [p.data.copy() for p in lin.parameters()]
        return out

    _fail_each(run, _equal)


def test_clip_grad_norm_out_of_memory(threads):
    p = nn.Parameter(np.ones(1 << 17, np.float32))
    p.grad = np.full(1 << 17, 0.5, np.float32)

    def run():
        g = p.grad.copy()
        q = nn.Parameter(p.data.copy())
        q.grad = g
        return (fastmod.optim.clip_grad_norm_([q], 1.0), q.grad)

    def compare(got, want):
        assert got[0] == want[0]
        np.testing.assert_array_equal(got[1], want[1])

    if threads > 1:
        _fail_each(run, compare)
    else:
        assert _count(run) == 0          # one thread: no partials, nothing to allocate


# ------------------------------------------------------------------ no scratch at all
def test_linear_bias_grad_allocates_nothing_and_is_blocked_exactly(threads):
    """The bias gradient runs inside parallel regions with its accumulators on the stack, in
    blocks of columns: wide layers (more columns than one block) sum each column in row order."""
    from fastmod._kernels import linear as _k
    rng = np.random.default_rng(0)
    for C in (5, 4096, 4097, 9000):
        dy = rng.standard_normal((37, C)).astype(np.float32)
        db = np.full(C, 0.25, np.float32)
        assert _count(lambda: _k.bias_grad(db, dy, True)) == 0
        want = 0.25 + dy.astype(np.float64).sum(0)
        np.testing.assert_allclose(db, want.astype(np.float32), rtol=1e-6, atol=1e-6)
    lin = nn.Linear(16, 5000)
    x = rng.standard_normal((40, 16)).astype(np.float32)
    dy = rng.standard_normal((40, 5000)).astype(np.float32)
    lin(x)
    assert _count(lambda: lin.backward(dy)) == 0
    np.testing.assert_allclose(lin.bias.grad, dy.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ requests too large
HUGE = 1 << 44          # elements: 64 TiB of float32, more than any machine this runs on


def test_huge_input_copy_raises_memory_error():
    """A non-contiguous input is copied by the module layer: a copy too large for the machine
    is a MemoryError (NumPy's), not a crash."""
    lin = nn.Linear(4, 3)
    x = np.broadcast_to(np.ones(4, np.float32), (HUGE // 4, 4))
    with pytest.raises(MemoryError):
        lin(x)
    assert lin(np.ones((2, 4), np.float32)).shape == (2, 3)


def test_huge_output_raises_memory_error():
    """A small input whose output is too large (padding) or a huge layer: MemoryError."""
    m = nn.Conv2d(1, 1, 1, padding=1 << 21)
    with pytest.raises(MemoryError):
        m(np.ones((1, 1, 1, 1), np.float32))
    assert nn.Conv2d(1, 1, 1, padding=2)(np.ones((1, 1, 1, 1), np.float32)).shape == (1, 1, 5, 5)
    with pytest.raises(MemoryError):
        nn.Linear(1 << 22, 1 << 22)
    with pytest.raises(MemoryError):
        nn.Embedding(1 << 30, 1 << 14)


# ------------------------------------------------------------------ misaligned arrays
def _misaligned(a):
    """A C-contiguous copy of a whose data pointer is not a multiple of its itemsize (NumPy
    allows it: np.frombuffer at an odd offset). Kernels read raw typed pointers, so the module
    layer must copy such arrays (UBSan: 'load of misaligned address' otherwise)."""
    buf = bytearray(a.nbytes + 1)
    out = np.frombuffer(buf, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned and out.flags.c_contiguous
    return out


MISALIGNED_MODULES = {
    "linear": (lambda dt: nn.Linear(16, 24, dtype=dt), (8, 16)),
    "linear-skinny": (lambda dt: nn.Linear(16, 10, dtype=dt), (40, 16)),
    "relu": (lambda dt: nn.ReLU(), (3, 37)),
    "gelu": (lambda dt: nn.GELU(), (3, 37)),
    "softmax": (lambda dt: nn.Softmax(-1), (5, 37)),
    "layernorm": (lambda dt: nn.LayerNorm(20, dtype=dt), (6, 20)),
    "batchnorm": (lambda dt: nn.BatchNorm2d(4, dtype=dt), (3, 4, 5, 5)),
    "groupnorm": (lambda dt: nn.GroupNorm(2, 4, dtype=dt), (3, 4, 5, 5)),
    "conv": (lambda dt: nn.Conv2d(3, 8, 3, padding=1, dtype=dt), (2, 3, 9, 9)),
    "maxpool": (lambda dt: nn.MaxPool2d(2), (2, 3, 8, 8)),
    "avgpool": (lambda dt: nn.AdaptiveAvgPool2d(1), (2, 3, 8, 8)),
    "attention": (lambda dt: nn.MultiheadAttention(16, 2, dtype=dt), (2, 7, 16)),
}


@pytest.mark.parametrize("name", list(MISALIGNED_MODULES))
def test_misaligned_inputs_are_copied(name, dtype):
    mk, shape = MISALIGNED_MODULES[name]
    m = mk(dtype)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    y = m(x)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    dx = m.backward(dy)
    assert m._check_array(_misaligned(x)).flags.aligned
    assert m._check_grad(_misaligned(dy), dy.shape, dy.dtype).flags.aligned
    y2 = m(_misaligned(x))
    dx2 = m.backward(_misaligned(dy))
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)


def test_misaligned_ids_targets_masks_and_parameters():
    rng = np.random.default_rng(0)
    emb = nn.Embedding(10, 4)
    ids = rng.integers(0, 10, (3, 5))
    np.testing.assert_array_equal(emb(_misaligned(ids)), emb(ids))
    crit = fastmod.losses.CrossEntropyLoss()
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    target = rng.integers(0, 5, 6)
    want = crit(logits, target)
    assert crit(_misaligned(logits), _misaligned(target)) == want
    att = nn.MultiheadAttention(8, 2)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    mask = np.triu(np.full((5, 5), -np.inf, np.float32), 1)
    np.testing.assert_array_equal(att(x, attn_mask=_misaligned(mask)), att(x, attn_mask=mask))
    lin = nn.Linear(4, 3)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    lin.weight.data = _misaligned(w)
    assert lin.weight.data.flags.aligned
    np.testing.assert_array_equal(lin.weight.data, w)
    assert nn.Parameter(_misaligned(w)).data.flags.aligned
    bn = nn.BatchNorm1d(3)
    bn.running_mean, bn.running_var = _misaligned(np.zeros(3, np.float32)), \
        _misaligned(np.ones(3, np.float32))
    xb = rng.standard_normal((5, 3)).astype(np.float32)
    bn(xb)
    assert bn.running_mean.flags.aligned and bn.running_var.flags.aligned
    ref = nn.BatchNorm1d(3)
    ref(xb)
    np.testing.assert_array_equal(bn.running_mean, ref.running_mean)


# ------------------------------------------------------------------ sanitizer findings
# (each found by the suite or /tmp edge-value runs under FASTMOD_SANITIZE=1, see CONTRIBUTING.md)
@pytest.mark.parametrize("T", [5, 13])         # scalar exp only / AVX2 body and scalar tail
def test_attention_nan_scores_propagate(T, dtype):
    """attention.pyx fm_expf_nonpos converted NaN to int ((int)(NaN + 126.5f), then INT_MIN -
    126: UBSan float-cast-overflow and signed-integer-overflow) for a NaN score; now NaN in, NaN
    out, as torch."""
    att = nn.MultiheadAttention(8, 2, dtype=dtype)
    x = np.random.default_rng(0).standard_normal((2, T, 8)).astype(dtype)
    x[0, T - 1, 0] = np.nan                   # one key of batch 0 (the scalar tail for T=13)
    y = att(x)
    assert np.isnan(y[0]).all() and np.isfinite(y[1]).all()
    dx = att.backward(np.ones_like(y))
    assert np.isfinite(dx[1]).all()
