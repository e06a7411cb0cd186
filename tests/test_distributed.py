"""fastmod.distributed: the sampler and SyncBatchNorm in one process, then data-parallel runs
under mpirun (1, 2 and 3 ranks on this machine) compared with one process.

The MPI tests run tests/mpi_scripts/*.py with `mpirun` (next to sys.executable, else on PATH)
and a timeout; they are skipped, with the reason, when mpi4py or mpirun is missing
(pip install ".[mpi]").
"""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import fastmod
import fastmod.distributed as dist
from fastmod.distributed import DistributedSampler, SyncBatchNorm, convert_sync_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "tests", "mpi_scripts")
TIMEOUT = 120


# ------------------------------------------------------------------------------ no MPI needed
def test_imports_without_mpi4py_and_names_the_extra():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "import fastmod, fastmod.distributed as d\n"
            "assert not d.is_available()\n"
            "s = d.DistributedSampler(10, num_replicas=2, rank=1); assert len(s) == 5\n"
            "try:\n    d.init()\nexcept ImportError as e:\n    print('IMPORTERROR', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "IMPORTERROR" in r.stdout and 'pip install ".[mpi]"' in r.stdout


@pytest.mark.parametrize("n,R,drop_last", [(10, 3, False), (10, 3, True), (12, 4, False),
                                           (7, 2, True), (5, 8, False), (100, 3, False)])
def test_sampler_shards_like_torch(n, R, drop_last):
    shards = [DistributedSampler(n, R, r, shuffle=True, seed=3, drop_last=drop_last).indices()
              for r in range(R)]
    sizes = {len(s) for s in shards}
    assert len(sizes) == 1                                   # equal shard sizes
    per = sizes.pop()
    assert per == (n // R if drop_last else -(-n // R))
    allidx = np.concatenate(shards)
    if drop_last:
        assert len(np.unique(allidx)) == len(allidx) == per * R     # disjoint
    else:
        assert set(allidx.tolist()) == set(range(n))                # every sample, padded
        assert len(allidx) - len(np.unique(allidx)) == per * R - n
    # the permutation is fastmod.fit's / DataLoader's: default_rng([seed, epoch])
    perm = np.random.default_rng([3, 0]).permutation(n)
    assert np.array_equal(shards[0][:1], perm[:1])


def test_sampler_matches_torch_distributed_sampler_layout():
    pytest.importorskip("torch")
    from torch.utils.data import DistributedSampler as TDS
    for n, R, drop in [(10, 3, False), (10, 3, True), (5, 8, False)]:
        for r in range(R):
            t = list(TDS(range(n), num_replicas=R, rank=r, shuffle=False, drop_last=drop))
            f = list(DistributedSampler(n, R, r, shuffle=False, drop_last=drop))
            assert t == f


def test_sampler_epochs_and_local_batches_reassemble_the_global_batch():
    n, R, B = 96, 3, 12
    s = [DistributedSampler(n, R, r, seed=5) for r in range(R)]
    a = s[0].indices()
    for x in s:
        x.set_epoch(1)
    assert not np.array_equal(a, s[0].indices())
    order = np.random.default_rng([5, 1]).permutation(n)
    local = [x.indices() for x in s]
    for k in range(n // B):                              # local batch B / R on every rank
        got = np.concatenate([loc[k * (B // R):(k + 1) * (B // R)] for loc in local])
        assert set(got.tolist()) == set(order[k * B:(k + 1) * B].tolist())
        assert np.array_equal(np.sort(got), np.sort(dist.shard(order[k * B:(k + 1) * B], R, 0).tolist()
                                                  + dist.shard(order[k * B:(k + 1) * B], R, 1).tolist()
                                                  + dist.shard(order[k * B:(k + 1) * B], R, 2).tolist()))


def test_sampler_bad_arguments():
    with pytest.raises(ValueError, match="rank must be in"):
        DistributedSampler(10, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="num_replicas must be a positive integer"):
        DistributedSampler(10, num_replicas=0, rank=0)
    with pytest.raises(ValueError, match="no sample for any rank"):
        DistributedSampler(2, num_replicas=3, rank=0, drop_last=True)
    with pytest.raises(ValueError, match="epoch"):
        DistributedSampler(10, 2, 0).set_epoch(-1)


def test_default_threads_split_the_cores_among_the_ranks(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(dist, "_usable_cores", lambda: 8)          # not bound by mpirun
    assert [dist.default_threads(r) for r in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setattr(dist, "_usable_cores", lambda: 2)          # bound to 2 of the 8 cores
    assert dist.default_threads(4) == 2


def test_fit_helper_rejects_a_global_batch_smaller_than_the_ranks():
    h = dist.FitHelper.__new__(dist.FitHelper)        # no MPI: only the arithmetic
    h.size, h.rank = 3, 1
    h.check_batches(100, 24, False)                   # last batch 4 >= 3 ranks
    h.check_batches(98, 24, True)                     # the tail of 2 is dropped
    with pytest.raises(ValueError, match="at least 3 samples, but one has 2.*drop_last=True"):
        h.check_batches(98, 24, False)
    with pytest.raises(ValueError, match="at least 3 samples, but one has 2"):
        h.check_batches(98, 2, True)
    np.testing.assert_array_equal(h.shard(np.arange(10)), [1, 4, 7])


def _bn_reference(x, w, b, eps=1e-5):
    ax = (0,) + tuple(range(2, x.ndim))
    shp = (1, -1) + (1,) * (x.ndim - 2)
    mu, var = x.mean(ax, keepdims=True), x.var(ax, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w.reshape(shp) + b.reshape(shp), mu.ravel(), var.ravel()


@pytest.mark.parametrize("shape", [(6, 3), (5, 3, 7), (4, 3, 5, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_syncbatchnorm_one_process_is_batchnorm(shape, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    m = SyncBatchNorm(3, dtype=dtype)
    m.weight.data[...] = rng.standard_normal(3)
    m.bias.data[...] = rng.standard_normal(3)
    y = m(x)
    ref, mu, var = _bn_reference(x.astype(np.float64), m.weight.data.astype(np.float64),
                                 m.bias.data.astype(np.float64))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
    M = x.size // 3
    np.testing.assert_allclose(m.running_mean, 0.1 * mu, rtol=tol, atol=tol)
    np.testing.assert_allclose(m.running_var, 0.9 + 0.1 * var * M / (M - 1), rtol=tol, atol=tol)
    assert int(m.num_batches_tracked) == 1
    m.eval()
    ye = m(x)
    rs = 1 / np.sqrt(m.running_var.astype(np.float64) + 1e-5)
    shp = (1, -1) + (1,) * (x.ndim - 2)
    np.testing.assert_allclose(ye, ((x - m.running_mean.reshape(shp)) * rs.reshape(shp)
                                    * m.weight.data.reshape(shp) + m.bias.data.reshape(shp)),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("train", [True, False])
def test_syncbatchnorm_gradcheck(train):
    rng = np.random.default_rng(1)
    m = SyncBatchNorm(3, dtype=np.float64)
    m.weight.data[...] = rng.standard_normal(3)
    m.bias.data[...] = rng.standard_normal(3)
    m.running_var[...] = rng.uniform(0.5, 2, 3)
    m.train(train)
    m.momentum = 0.0 if train else 0.1                 # keep running stats fixed across evals
    fastmod.gradcheck(m, rng.standard_normal((4, 3, 5)))


@pytest.mark.parametrize("train", [True, False])
def test_syncbatchnorm_skips_input_grad(train):
    """need_input_grad=False (a first layer): None back, parameter gradients as usual."""
    rng = np.random.default_rng(2)
    x, dy = rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 5))
    grads = []
    for need in (True, False):
        m = SyncBatchNorm(3, dtype=np.float64).train(train)
        m(x)
        dx = m.backward(dy, need_input_grad=need)
        assert (dx is None) == (not need)
        grads.append((m.weight.grad.copy(), m.bias.grad.copy()))
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_syncbatchnorm_matches_fastmod_and_torch_batchnorm():
    nn = fastmod.nn
    if not hasattr(nn, "BatchNorm2d"):
        pytest.skip("fastmod.nn.BatchNorm2d is not in this build yet")
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 5, 5))
    bn = nn.BatchNorm2d(3).astype(np.float64)
    bn.weight.data[...] = rng.standard_normal(3)
    sbn = convert_sync_batchnorm(nn.Sequential(bn))[0]
    assert isinstance(sbn, SyncBatchNorm) and sbn.weight is bn.weight
    bn2 = nn.BatchNorm2d(3).astype(np.float64)
    bn2.load_state_dict(bn.state_dict())
    dy = rng.standard_normal(x.shape)
    y1, y2 = sbn(x), bn2(x)
    np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sbn.backward(dy), bn2.backward(dy), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sbn.weight.grad, bn2.weight.grad, rtol=1e-9, atol=1e-12)
    for k, v in bn2.state_dict().items():
        np.testing.assert_allclose(sbn.state_dict()[k], v, rtol=1e-10)
    try:
        import torch
    except ImportError:
        return
    tbn = torch.nn.BatchNorm2d(3).double()
    tbn.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in bn2.state_dict().items()})
    sbn.running_mean[...], sbn.running_var[...] = bn2.running_mean, bn2.running_var
    sbn.num_batches_tracked[...] = bn2.num_batches_tracked
    sbn.zero_grad()
    tx = torch.from_numpy(x).requires_grad_()
    ty = tbn(tx)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(sbn(x), ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sbn.backward(dy), tx.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sbn.weight.grad, tbn.weight.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sbn.running_var, tbn.running_var.numpy(), rtol=1e-10)


def test_convert_sync_batchnorm_keeps_parameters_and_names():
    class BatchNorm2d(fastmod.nn.Module):                # duck-typed stand-in for nn.BatchNorm2d
        def __init__(self, c):
            super().__init__()
            self.num_features, self.eps, self.momentum = c, 1e-3, 0.2
            self.affine, self.track_running_stats = True, True
            self.weight = fastmod.nn.Parameter(np.full(c, 2.0, np.float32))
            self.bias = fastmod.nn.Parameter(np.zeros(c, np.float32))
            self.register_buffer("running_mean", np.ones(c, np.float32))
            self.register_buffer("running_var", np.ones(c, np.float32))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))
    bn = BatchNorm2d(4)
    model = fastmod.nn.Sequential(fastmod.nn.Linear(2, 2), bn)
    before = model.state_dict()
    convert_sync_batchnorm(model)
    assert isinstance(model[1], SyncBatchNorm) and model[1].weight is bn.weight
    assert model[1].eps == 1e-3 and model[1].momentum == 0.2
    after = model.state_dict()
    assert list(before) == list(after)
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def test_syncbatchnorm_bad_input():
    m = SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3"):
        m(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="float32"):
        m(np.zeros((2, 3), np.float64))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="num_features"):
        SyncBatchNorm(0)


# ------------------------------------------------------------------------------ under mpirun
def _mpirun():
    here = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return here if os.path.exists(here) else shutil.which("mpirun")


def _need_mpi():
    if not dist.is_available():
        pytest.skip('mpi4py is not installed (pip install ".[mpi]"): MPI tests skipped')
    if _mpirun() is None:
        pytest.skip('no mpirun next to the Python interpreter or on PATH (pip install ".[mpi]" '
                    'brings Open MPI): MPI tests skipped')


def _env(**extra):
    env = dict(os.environ)
    env.update(PYTHONPATH=ROOT + os.pathsep + env.get("PYTHONPATH", ""),
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               FASTMOD_NUM_THREADS="1", FASTMOD_DIST_TIMEOUT="60",
               OMPI_MCA_rmaps_base_oversubscribe="1", PRTE_MCA_rmaps_default_mapping_policy=":oversubscribe")
    env.update(extra)
    return env


RUN_TIMES = {}


def _run(ranks, script, *args, expect_ok=True, env=None, timeout=TIMEOUT):
    """mpirun -n ranks python script args; ranks=0: plain python (no mpirun)."""
    cmd = [sys.executable, os.path.join(SCRIPTS, script), *map(str, args)]
    if ranks:
        cmd = [_mpirun(), "--oversubscribe", "-n", str(ranks)] + cmd
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env or _env(),
                           timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout} s (hang?)\n"
                    f"{(e.stderr or b'')[-3000:]}")
    RUN_TIMES[f"{script} {' '.join(map(str, args))} -n {ranks}"] = time.perf_counter() - t0
    if expect_ok and r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}")
    return r


def _load(path):
    with np.load(path) as d:
        out = {k: d[k] for k in d.files}
    assert out.pop("spread", 0.0) == 0.0, f"{path}: the replicas' parameters differ"
    return out


@pytest.mark.parametrize("model,dtype", [("mlp", "float64"), ("cnn", "float32")])
def test_ddp_matches_one_process(tmp_path, model, dtype):
    """Same global batches (the last one split unevenly) -> same losses and weights."""
    _need_mpi()
    args = (tmp_path, "--model", model, "--dtype", dtype)
    _run(0, "ddp_train.py", *args, "--plain")
    ref = _load(tmp_path / "plain.npz")
    tol = 1e-11 if dtype == "float64" else 2e-5
    for n in ((1, 2, 3) if model == "mlp" else (2,)):
        _run(n, "ddp_train.py", *args)
        got = _load(tmp_path / f"ranks{n}.npz")
        assert set(got) == set(ref)
        for k in ref:
            if n == 1 and k != "losses":   # one rank: nothing is reduced, bit-identical weights
                np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
            np.testing.assert_allclose(got[k], ref[k], rtol=tol, atol=tol, err_msg=f"{n} ranks: {k}")


def test_ddp_overlapped_small_buckets_matches(tmp_path):
    """Iallreduce per bucket during backward (many tiny buckets) gives the same result."""
    _need_mpi()
    _run(0, "ddp_train.py", tmp_path, "--plain")
    _run(2, "ddp_train.py", tmp_path, "--overlap", "--bucket-mb", "0.002")
    ref, got = _load(tmp_path / "plain.npz"), _load(tmp_path / "ranks2.npz")
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-11, atol=1e-11, err_msg=k)


@pytest.mark.parametrize("overlap", [False, True])
def test_ddp_user_modules_any_tree_matches_one_process(tmp_path, overlap):
    """User modules (backward(dy) alone) in a Parallel / Residual tree with a module applied
    twice per forward: 2 ranks match one process; with overlap the buckets are started from
    post-backward hooks while backward runs (not all at the end)."""
    _need_mpi()
    _run(0, "ddp_train.py", tmp_path, "--model", "user", "--plain")
    extra = ("--overlap", "--bucket-mb", "0.0005") if overlap else ()
    r = _run(2, "ddp_train.py", tmp_path, "--model", "user", *extra)
    ref, got = _load(tmp_path / "plain.npz"), _load(tmp_path / "ranks2.npz")
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-11, atol=1e-11, err_msg=k)
    if overlap:
        early, _, total = r.stdout.split("buckets started before backward ended: ")[1].split()[:3]
        assert 0 < int(early) < int(total), r.stdout


def test_syncbn_training_matches_one_process(tmp_path):
    """Conv + SyncBatchNorm on 3 ranks == BatchNorm on the whole batch in one process
    (losses, weights and running statistics)."""
    _need_mpi()
    _run(0, "ddp_train.py", tmp_path, "--model", "syncbn", "--plain")
    ref = _load(tmp_path / "plain.npz")
    for n in (3,):
        _run(n, "ddp_train.py", tmp_path, "--model", "syncbn")
        got = _load(tmp_path / f"ranks{n}.npz")
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-11, atol=1e-11, err_msg=f"{n}: {k}")


def test_convert_sync_batchnorm_training_matches_batchnorm(tmp_path):
    """fastmod.nn.BatchNorm2d in one process == the same model after convert_sync_batchnorm
    on 2 ranks; with local BatchNorm (the default) the replicas still stay identical."""
    _need_mpi()
    if not hasattr(fastmod.nn, "BatchNorm2d"):
        pytest.skip("fastmod.nn.BatchNorm2d is not in this build yet")
    _run(0, "ddp_train.py", tmp_path, "--model", "localbn", "--plain")
    _run(2, "ddp_train.py", tmp_path, "--model", "localbn", "--sync-bn", "--tag", "sync")
    ref, got = _load(tmp_path / "plain.npz"), _load(tmp_path / "sync.npz")
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-10, atol=1e-11, err_msg=k)
    _run(2, "ddp_train.py", tmp_path, "--model", "localbn", "--tag", "local")   # spread == 0
    local = _load(tmp_path / "local.npz")
    assert np.all(np.isfinite(local["losses"]))
    assert not np.allclose(local["p:2.running_mean"], ref["p:2.running_mean"])  # local stats


def test_syncbn_forward_backward_on_uneven_shards(tmp_path):
    _need_mpi()
    B, C = 11, 4
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, C, 3, 5)) * 3 + 1.5
    G = rng.standard_normal(x.shape)
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    ax, M = (0, 2, 3), B * 15
    y, mu, var = _bn_reference(x, w, b)
    rstd = 1 / np.sqrt(var + 1e-5).reshape(1, -1, 1, 1)
    xh = (x - mu.reshape(1, -1, 1, 1)) * rstd
    g = G / B
    dx = w.reshape(1, -1, 1, 1) * rstd * (g - g.mean(ax, keepdims=True)
                                           - xh * (g * xh).mean(ax, keepdims=True))
    rm, rv = np.zeros(C), np.ones(C)
    for _ in range(2):
        rm, rv = 0.7 * rm + 0.3 * mu, 0.7 * rv + 0.3 * var * M / (M - 1)
    want = dict(y=y, dx=dx, gw=(g * xh).sum(ax), gb=g.sum(ax), running_mean=rm, running_var=rv)
    _run(3, "syncbn_check.py", tmp_path)
    got = _load(tmp_path / "syncbn_ranks3.npz")
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-12, atol=1e-12, err_msg=k)
    assert int(got["nbt"]) == 2


@pytest.mark.parametrize("mode,needle", [
    ("raise", "rank 1 of 2: uncaught RuntimeError: injected failure on rank 1"),
    ("hang", "waited more than 3 s in Allreduce"),
    ("die", None)])
def test_a_failing_rank_stops_the_job(mode, needle):
    _need_mpi()
    t0 = time.perf_counter()
    r = _run(2, "fail.py", mode, expect_ok=False, env=_env(FASTMOD_DIST_TIMEOUT="3"), timeout=90)
    assert r.returncode != 0
    assert "failure was not detected" not in r.stdout
    if needle:
        assert needle in r.stderr
        assert "aborting all ranks" in r.stderr
    assert time.perf_counter() - t0 < 90


# ------------------------------------------------------------------------------ fit and the CLI
def _need_fit_distributed():
    import inspect
    from fastmod.training import fit
    if "distributed" not in inspect.signature(fit).parameters:
        pytest.skip("fastmod.fit has no distributed= parameter in this build")


def test_fit_distributed_matches_fit(tmp_path):
    """fit(..., distributed=True) on 1 and 3 ranks: the curves (per step, train, validation),
    the accuracies and the weights of plain fit; one rank bit-identical; rank 0 alone writes
    the checkpoints."""
    _need_mpi()
    _need_fit_distributed()
    _run(0, "fit_run.py", tmp_path, "--plain")
    ref = _load(tmp_path / "plain.npz")
    for n in (1, 3):
        _run(n, "fit_run.py", tmp_path)
        got = _load(tmp_path / f"fit_ranks{n}.npz")
        assert got["writes"].tolist() == [ref["writes"][0]] + [0] * (n - 1)
        for k in ref:
            if k == "writes":
                continue
            if n == 1:
                np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-11, atol=1e-12, err_msg=f"{n}: {k}")
        for k in ("train_acc", "val_acc"):
            np.testing.assert_array_equal(got[k], ref[k])


def test_fit_distributed_resumes_on_another_rank_count(tmp_path):
    """One epoch on 2 ranks, resumed to 2 epochs on 3 ranks == 2 epochs in one process."""
    _need_mpi()
    _need_fit_distributed()
    _run(0, "fit_resume.py", tmp_path, "plain")
    _run(2, "fit_resume.py", tmp_path, "first")
    _run(3, "fit_resume.py", tmp_path, "second")
    np.testing.assert_allclose(np.load(tmp_path / "second.npy"), np.load(tmp_path / "plain.npy"),
                               rtol=1e-12, atol=1e-13)


def test_cli_train_distributed(tmp_path):
    """`mpirun -n 2 fastmod train --distributed`: one summary (rank 0), the test accuracy and
    weights of the one-process run."""
    _need_mpi()
    _need_fit_distributed()
    import json
    common = ["--model", "mlp", "--epochs", "1", "--no-progress"]
    env = _env()
    plain = subprocess.run([sys.executable, "-m", "fastmod", "train", *common, "--out",
                            str(tmp_path / "one")], capture_output=True, text=True, env=env,
                           timeout=TIMEOUT, cwd=ROOT)
    assert plain.returncode == 0, plain.stderr
    t0 = time.perf_counter()
    r = subprocess.run([_mpirun(), "--oversubscribe", "-n", "2", sys.executable, "-m", "fastmod",
                        "train", "--distributed", *common, "--out", str(tmp_path / "two")],
                       capture_output=True, text=True, env=env, timeout=TIMEOUT, cwd=ROOT)
    RUN_TIMES["fastmod train --distributed -n 2"] = time.perf_counter() - t0
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.count("test accuracy") == 1 and "2 MPI ranks" in r.stdout
    h1 = json.load(open(tmp_path / "one" / "history.json"))
    h2 = json.load(open(tmp_path / "two" / "history.json"))
    assert h1["test_accuracy"] == h2["test_accuracy"]
    np.testing.assert_allclose(h2["history"]["step_loss"], h1["history"]["step_loss"], rtol=1e-4)
    from fastmod.io import load
    w1 = load(str(tmp_path / "one" / "checkpoint.npz")).state_dict
    w2 = load(str(tmp_path / "two" / "checkpoint.npz")).state_dict
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_mpi_run_times_report():
    """Prints how long each mpirun took (pytest -s shows it; -ra lists nothing for a pass)."""
    for k, v in RUN_TIMES.items():
        print(f"{v:6.1f} s  {k}")
