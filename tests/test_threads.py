"""Thread count (SPEC §4): one knob, equal results across counts, bit-identical at one count."""
import threading

import numpy as np
import pytest

import fastmod
from fastmod import losses, nn
from fastmod._runtime import _default_threads
from fastmod._kernels import _threads
from reference import scaled

MULTI = fastmod.have_openmp()


def run_workloads(dtype):
    """Forward + backward through every parallel kernel of the foundation, with shapes large
    enough that each one really splits over 2 threads (see the grains in _kernels/*.pyx)."""
    rng = np.random.default_rng(5)
    fastmod.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 128, dtype=dtype), nn.GELU(),
                          nn.ResidualBlock(128, activation="gelu", dtype=dtype),
                          nn.Linear(128, 128, dtype=dtype), nn.Tanh(), nn.Sigmoid(), nn.ReLU(),
                          nn.Linear(128, 160, dtype=dtype), nn.LogSoftmax(dim=1))
    x = rng.standard_normal((80, 96)).astype(dtype)      # 80 x 128 = 10240 activations per layer
    t = rng.integers(0, 160, 80)
    out = {}
    y = model(x)
    crit = losses.CrossEntropyLoss(label_smoothing=0.1)
    out["loss"] = np.array(crit(y, t))                   # 80 x 160 = 12800 logits
    out["y"] = y
    out["dx"] = model.backward(crit.backward())
    for name, p in model.named_parameters():
        out[name] = p.grad.copy()
    sm = nn.Softmax(dim=0)                               # strided rows (I > 1)
    big = rng.standard_normal((40, 600)).astype(dtype)
    out["softmax"] = sm(big)
    out["softmax_dx"] = sm.backward(big)
    big_ce = rng.standard_normal((520, 128)).astype(dtype)   # >= 2 x 32768: backward splits too
    out["ce"] = np.array(crit(big_ce, rng.integers(0, 128, 520)))
    out["ce_dx"] = crit.backward()
    relu = nn.ReLU()                                     # memory-bound: splits at >= 2 x 32768
    out["relu"] = relu(big_ce)
    out["relu_dx"] = relu.backward(big_ce)
    lin = nn.Linear(1024, 512, dtype=dtype)              # batch 1: the split GEMV path (>= 2^19 MACs)
    v = rng.standard_normal(1024).astype(dtype)
    out["gemv"] = lin(v)
    out["gemv_dx"] = lin.backward(np.ones(512, dtype))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_one_vs_two_threads_equal_within_tolerance(dtype):
    fastmod.set_num_threads(1)
    a = run_workloads(dtype)
    fastmod.set_num_threads(2)
    b = run_workloads(dtype)
    kw = {"rtol": 2e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-12, "atol": 1e-13}
    for k in a:      # sums split differently: the atol relative to each result's scale
        np.testing.assert_allclose(b[k], a[k], err_msg=k, **scaled(kw, a[k]))


@pytest.mark.parametrize("n", [1, 2])
def test_same_thread_count_is_bit_identical(n):
    fastmod.set_num_threads(n)
    a = run_workloads(np.float32)
    b = run_workloads(np.float32)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_get_num_threads_round_trips():
    for n in (1, 2, 3, np.int64(2)):
        fastmod.set_num_threads(n)
        assert fastmod.get_num_threads() == (int(n) if MULTI else 1)
        assert isinstance(fastmod.get_num_threads(), int)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, False, "2", None, 2.0])
def test_bad_thread_counts(bad):
    before = fastmod.get_num_threads()
    with pytest.raises(ValueError, match="set_num_threads: expected a positive integer"):
        fastmod.set_num_threads(bad)
    assert fastmod.get_num_threads() == before


@pytest.mark.skipif(not MULTI, reason="built without OpenMP")
def test_blas_stays_single_threaded():
    """fastmod splits GEMMs over its own OpenMP threads; SciPy's OpenBLAS pool stays at one
    thread so two pools never compete for the cores."""
    fastmod.set_num_threads(2)
    assert _threads.blas_threads() == 1


def test_environment_sets_the_default(monkeypatch):
    monkeypatch.delenv("FASTMOD_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _default_threads() >= 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert _default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")            # OpenMP's nested-list syntax
    assert _default_threads() == 4
    monkeypatch.setenv("FASTMOD_NUM_THREADS", "1")          # fastmod's own variable wins
    assert _default_threads() == 1
    for bad in ("0", "-2", "two"):
        monkeypatch.setenv("FASTMOD_NUM_THREADS", bad)
        with pytest.raises(ValueError, match=rf"FASTMOD_NUM_THREADS='{bad}': expected a positive integer"):
            _default_threads()


def test_grad_mode_is_per_python_thread():
    seen = []
    with fastmod.no_grad():
        t = threading.Thread(target=lambda: seen.append(fastmod.is_grad_enabled()))
        t.start()
        t.join()
        assert not fastmod.is_grad_enabled()
    assert seen == [True]
