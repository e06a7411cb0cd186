"""Shared fixtures: dtype and thread parametrization, a seeded RNG, state restoration."""
import os
import sys

import numpy as np
import pytest

# `pytest` run from the checkout imports the in-place build, not an installed copy.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import fastmod  # noqa: E402

DTYPES = [np.float32, np.float64]

# Instruction-set levels: every test of a kernel runs at each level this host supports (scalar,
# avx2, avx512: fastmod.set_isa), so the portable and AVX2 code stays tested on an AVX-512 host
# and results must agree across levels at the tests' tolerances. FASTMOD_TEST_ISAS=avx2,avx512
# restricts the levels (a quicker local run). Files that test no kernel run once, at the level
# chosen at import.
_want = [s.strip() for s in os.environ.get("FASTMOD_TEST_ISAS", "").split(",") if s.strip()]
TEST_ISAS = [lv for lv in fastmod.supported_isas() if not _want or lv in _want] or [fastmod.get_isa()]
ONE_ISA_FILES = {"test_allocator", "test_cli", "test_data", "test_datasets", "test_distributed",
                 "test_io", "test_readme", "test_fit", "test_isa", "test_probe", "test_bench_compare",
                 "test_interop", "test_profile", "test_onnx"}


def pytest_generate_tests(metafunc):
    if "isa" in metafunc.fixturenames:
        name = metafunc.module.__name__.rsplit(".", 1)[-1]
        levels = [fastmod.get_isa()] if name in ONE_ISA_FILES else TEST_ISAS
        metafunc.parametrize("isa", levels, indirect=True, ids=levels)


@pytest.fixture(autouse=True)
def isa(request):
    """The instruction-set level the kernels run at during this test (restored afterwards)."""
    level = getattr(request, "param", fastmod.get_isa())
    prev = fastmod.get_isa()
    if level != prev:
        fastmod.set_isa(level)
    yield level
    if fastmod.get_isa() != prev:
        fastmod.set_isa(prev)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Every test leaves fastmod's thread count as it found it."""
    n = fastmod.get_num_threads()
    yield
    if fastmod.get_num_threads() != n:     # set_num_threads costs ~8 ms (threadpoolctl)
        fastmod.set_num_threads(n)


@pytest.fixture(autouse=True)
def _grad_mode_on():
    """A test that fails inside `with no_grad():` must not leak grad mode into the next one."""
    yield
    from fastmod._runtime import STATE
    STATE.grad_enabled = True
    STATE.depth = 0


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(params=DTYPES, ids=["f32", "f64"])
def dtype(request):
    return request.param


@pytest.fixture(params=[1, 2], ids=["t1", "t2"])
def threads(request):
    """Run the test at 1 thread and at 2 (the restore fixture resets the count afterwards)."""
    fastmod.set_num_threads(request.param)
    return request.param


@pytest.fixture
def torch():
    """torch, or skip the test when it is not installed (parity tests only)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)     # the machine is shared; parity needs no speed
    return torch


@pytest.fixture
def parity(torch):
    """check(fm_module, torch_module, *inputs, direction='t2f'|'f2t', dy=None, atol/rtol):
    load the weights one way (torch -> fastmod via {k: v.numpy()}, or fastmod -> torch via
    torch.from_numpy), then compare state_dict names and shapes, forward outputs, the input
    gradient and every parameter gradient, each at the parity tolerance relative to the
    result's scale (reference.assert_close: torch's float32 kernels differ per CPU).
    parity_tol: {'rtol', 'atol'} overriding the dtype's. Returns (y, dx) from fastmod."""
    from reference import assert_close

    def check(fm, tm, x, direction="t2f", dy=None, seed=0, parity_tol=None):
        dt = x.dtype
        tm = tm.to(torch.float64 if dt == np.float64 else torch.float32)
        tsd, fsd = tm.state_dict(), fm.state_dict()
        assert list(tsd) == list(fsd), "state_dict names differ from torch's"
        for k in tsd:
            assert tuple(tsd[k].shape) == fsd[k].shape, k
        if direction == "t2f":
            fm.load_state_dict({k: v.detach().numpy() for k, v in tsd.items()})
        else:
            tm.load_state_dict({k: torch.from_numpy(v) for k, v in fsd.items()})
        kw = parity_tol or {}
        fm.zero_grad()
        y = fm(x)
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        yt = tm(xt)
        assert_close(y, yt.detach().numpy(), dt, **kw)
        if dy is None:
            dy = np.random.default_rng(seed).standard_normal(y.shape).astype(dt)
        dx = fm.backward(dy)
        yt.backward(torch.from_numpy(dy.copy()))
        assert_close(dx, xt.grad.numpy(), dt, **kw)
        fparams = dict(fm.named_parameters())
        tparams = dict(tm.named_parameters())
        assert list(fparams) == list(tparams)
        for k, p in tparams.items():
            assert_close(fparams[k].grad, p.grad.numpy(), dt, err_msg=k, **kw)
        return y, dx

    return check
