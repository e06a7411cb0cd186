"""fastmod.inference: a planned model gives model.eval()'s outputs under no_grad (float32 1e-5
relative), folds BatchNorm into the convolution before it, reuses its buffers per input shape,
leaves the model untouched, re-plans on refreeze, and is safe to call from several threads."""
import threading

import numpy as np
import pytest

import fastmod
from fastmod import models, nn
from reference import assert_close
from test_protocol import Scale


def _randomize_bn(model, rng):
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            m.running_mean[...] = rng.standard_normal(m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            if m.weight is not None:
                m.weight.data[...] = rng.uniform(0.5, 1.5, m.weight.shape)
                m.bias.data[...] = rng.standard_normal(m.bias.shape)
    return model


def _want(model, x):
    was = model.training
    model.eval()
    with fastmod.no_grad():
        y = model(x)
    model.train(was)
    return y


CASES = {
    "mlp": (lambda: models.mlp([12, 16, 16, 3]), (5, 12)),
    "resnet_s": (lambda: models.resnet_s(8, 2, 3, in_features=12), (5, 12)),
    "cnn": (lambda: models.cnn(in_channels=1, num_classes=3, image_size=8), (2, 1, 8, 8)),
    "bn_resnet": (lambda: models.bn_resnet(in_channels=1, num_classes=3, channels=8, num_blocks=2),
                  (2, 1, 8, 8)),
    "densenet": (lambda: models.densenet(in_channels=1, num_classes=3), (2, 1, 8, 8)),
    "transformer": (lambda: models.transformer_classifier(3, in_features=6, d_model=8, nhead=2,
                                                          num_layers=1, max_len=5, dropout=0.0),
                    (2, 5, 6)),
    "conv-bn-relu": (lambda: nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                           nn.Conv2d(6, 4, 3, bias=False), nn.BatchNorm2d(4),
                                           nn.Conv1d if False else nn.Flatten(), nn.Linear(64, 3)),
                     (3, 3, 6, 6)),
    "conv1d-bn": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), nn.BatchNorm1d(4), nn.ReLU(),
                                        nn.Flatten(), nn.Linear(28, 2)), (3, 2, 7)),
    # BatchNorms after the ReLU and skips: the convolutions' epilogues (1-D and 2-D, a skip
    # of a different shape falls back to a plain add)
    "conv-relu-bn-skip": (lambda: nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(6),
        nn.Residual(nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(6))),
        nn.Residual(nn.Conv2d(6, 6, 1)), nn.Flatten(), nn.Linear(216, 3)), (3, 3, 6, 6)),
    "conv1d-relu-bn-skip": (lambda: nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm1d(4),
        nn.Residual(nn.Sequential(nn.Conv1d(4, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm1d(4))),
        nn.Flatten(), nn.Linear(28, 2)), (3, 2, 7)),
    "composition": (lambda: nn.Sequential(
        nn.Linear(6, 8), nn.ReLU(), Scale(8),
        nn.Residual(nn.Sequential(nn.Linear(8, 8), nn.Tanh())),
        nn.Parallel(nn.Linear(8, 4), nn.Sequential(nn.Identity(), nn.Linear(8, 4), nn.ReLU())),
        nn.Parallel(nn.Identity(), nn.ReLU(), combine="concat"), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Dropout(0.5), nn.Linear(8, 2)), (4, 6)),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(CASES))
def test_planned_matches_eval_forward(name, dtype, rng):
    make, shape = CASES[name]
    fastmod.manual_seed(0)
    model = _randomize_bn(make().astype(dtype), rng)
    model.train()                                      # planning uses eval semantics anyway
    x = rng.standard_normal(shape).astype(dtype)
    planned = fastmod.inference(model)
    want = _want(model, x)
    got = planned(x)
    assert got.dtype == dtype and got.shape == want.shape
    assert_close(got, want, dtype)
    assert model.training                              # the model is untouched
    x2 = rng.standard_normal((shape[0] + 3,) + shape[1:]).astype(dtype)     # another shape
    assert_close(planned(x2), _want(model, x2), dtype)
    assert_close(planned(x), want, dtype)


def test_batchnorm_is_folded_and_relu_fused(rng):
    fastmod.manual_seed(0)
    model = CASES["conv-bn-relu"][0]()
    planned = fastmod.inference(model)
    lines = planned.describe()
    assert lines[0].split() == ["Conv", "0+bn+relu"]
    assert lines[1].split() == ["Conv", "3+bn"]
    assert not any(line.startswith(("ReLU", "module")) for line in lines)
    bnres = fastmod.inference(models.bn_resnet(in_channels=1, num_classes=3, channels=8, num_blocks=1))
    lines = [line.split() for line in bnres.describe()]
    # bn2(relu(conv2(bn1(relu(conv1(x)))))) + x: the BatchNorms after the ReLUs and the skip's
    # add are the convolutions' epilogues
    assert lines[1:3] == [["Conv", "1.conv1+relu+bn1"], ["Conv", "1.conv2+relu+bn2+add"]], lines
    assert not any(line[0] in ("module", "Add") for line in lines[:3])
    chain = fastmod.inference(CASES["conv-relu-bn-skip"][0]())
    assert [line.split() for line in chain.describe()][:3] == [
        ["Conv", "0+relu+2"], ["Conv", "3.fn.0+relu+2+add"], ["Conv", "4.fn+add"]]


def test_buffers_are_reused_and_results_are_fresh(rng):
    model = models.mlp([12, 16, 3])
    planned = fastmod.inference(model)
    x = rng.standard_normal((4, 12)).astype(np.float32)
    a = planned(x)
    bufs = dict(planned._local.arenas[(x.shape, x.dtype.str)].bufs)
    b = planned(x + 1)
    after = planned._local.arenas[(x.shape, x.dtype.str)].bufs
    assert all(after[k] is v for k, v in bufs.items())          # no allocation in steady state
    assert not np.array_equal(a, b)                              # a was not overwritten
    assert_close(a, _want(model, x), np.float32)


def test_refreeze_picks_up_new_weights(rng):
    model = models.mlp([6, 8, 2])
    planned = fastmod.inference(model)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    before = planned(x)
    model[0].weight.data *= 2                                    # more training, in place
    assert_close(planned(x), before, np.float32)                 # the plan holds its copy
    planned.refreeze()
    assert_close(planned(x), _want(model, x), np.float32)
    assert not np.allclose(planned(x), before)


THREAD_CASES = {
    "conv-bn-relu": (lambda: CASES["conv-bn-relu"][0](), (3, 6, 6)),
    # a depth-first chain with a handoff between implicit-GEMM layers; a batch-1 Linear chain
    "handoff": (lambda: nn.Sequential(nn.Conv2d(4, 32, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Flatten(), nn.Linear(128, 40), nn.ReLU(),
                                      nn.Linear(40, 3)), (4, 8, 8)),
}


@pytest.mark.parametrize("case", sorted(THREAD_CASES))
def test_threads_share_a_planned_model(case, rng):
    fastmod.manual_seed(0)
    make, shape = THREAD_CASES[case]
    model = _randomize_bn(make(), rng)
    planned = fastmod.inference(model)
    xs = [rng.standard_normal((n,) + shape).astype(np.float32) for n in (1, 2, 3, 2, 1, 3)]
    wants = [_want(model, x) for x in xs]
    errors = []

    def work(i):
        try:
            for _ in range(20):
                assert_close(planned(xs[i]), wants[i], np.float32)
        except Exception as e:                                   # reported below
            errors.append(e)
    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_hooked_and_user_modules_run_as_they_are(rng):
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), Scale(4), nn.Linear(4, 2))
    seen = []
    model[3].register_forward_hook(lambda m, a, out: seen.append(out.shape))
    planned = fastmod.inference(model)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    assert_close(planned(x), _want(model, x), np.float32)
    kinds = [line.split()[0] for line in planned.describe()]
    assert kinds == ["Linear", "module", "module"]


def test_bad_input():
    planned = fastmod.inference(models.mlp([4, 2]))
    with pytest.raises(TypeError, match="expected float32 input like the model's weights, got float64"):
        planned(np.zeros((1, 4)))
    with pytest.raises(TypeError, match="expected a numpy.ndarray input, got list"):
        planned([[0.0] * 4])
    with pytest.raises(ValueError, match=r"1: expected float32 input of shape \(\*, 4\), got float32 \(1, 3\)"):
        fastmod.inference(nn.Sequential(Scale(3), nn.Linear(4, 2)))(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(4\): expected input of shape"):
        fastmod.inference(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(4)))(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="x must be a float32 array of shape"):
        fastmod.inference(nn.Sequential(nn.Conv2d(3, 2, 3)))(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(TypeError, match="expected a fastmod Module, got int"):
        fastmod.inference(3)


@pytest.mark.parametrize("n,i,o", [(1, 5, 3), (7, 33, 70), (13, 300, 17), (64, 256, 64),
                                   (29, 520, 130), (6, 1, 1), (250, 784, 40), (129, 130, 96)])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_prepacked_gemm_kernel(n, i, o, relu, bias, threads, rng):
    """linear_forward_packed over tails of every kind: rows not a multiple of the register
    block, outputs not a multiple of a panel, k over one slab or several balanced ones (784 =
    7 x 112), rows over several ranges (250 > 120); a NaN row stays NaN through the ReLU."""
    from fastmod._kernels import linear as k
    x = rng.standard_normal((n, i)).astype(np.float32)
    w = rng.standard_normal((o, i)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    wshape, bshape = k.packed_shape(o, i)
    wk, bp = np.empty(wshape, np.float32), np.empty(bshape, np.float32)
    k.pack_weights(wk, bp, w, b)
    x[-1, 0] = np.nan
    y = np.full((n, o), np.nan, np.float32)
    k.linear_forward_packed(y, x, wk, bp, o, relu)
    want = x.astype(np.float64) @ w.T.astype(np.float64) + (0 if b is None else b)
    assert np.isnan(y[-1]).all()
    assert_close(y[:-1], (np.maximum(want, 0) if relu else want)[:-1], np.float32)


def test_planned_linear_uses_the_packed_weights(rng):
    """A float32 batch goes through the packed GEMM; batch 1 and float64 through the kernel."""
    model = models.mlp([40, 70, 5])
    planned = fastmod.inference(model)
    step = planned.steps[0]
    assert step.wk is not None and step.wk.shape[0] == 40
    assert planned.steps[1].wk is None                  # 5 outputs: the skinny kernel
    for n in (1, 32):
        x = rng.standard_normal((n, 40)).astype(np.float32)
        assert_close(planned(x), _want(model, x), np.float32)
    assert fastmod.inference(model.double()).steps[0].wk is None


def test_profile_shows_the_plan(rng):
    """fastmod.profile of a planned model: one row per plan step (folded and fused names),
    GEMM work counted per step; a train step is refused."""
    fastmod.manual_seed(0)
    planned = fastmod.inference(CASES["conv-bn-relu"][0]())
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    r = fastmod.profile(planned, x, repeats=1)
    names = {row["name"]: row for row in r.rows}
    assert set(names) == {"0+bn+relu", "3+bn", "5", "6"}
    assert names["0+bn+relu"]["type"] == "Conv"
    assert names["0+bn+relu"]["infer_flops"] == 2.0 * 2 * 6 * 6 * 6 * 3 * 9
    assert names["6"]["infer_flops"] == 2.0 * 2 * 64 * 3
    assert "planned Sequential" in str(r) and "4 plan steps" in str(r)
    with pytest.raises(ValueError, match="has no train step"):
        fastmod.profile(planned, x, np.zeros(2, np.int64))


def test_relu_in_place_only_on_dead_buffers(rng):
    """A ReLU overwrites its input only when no later step reads that buffer (directly or
    through a view) and it is not the caller's x; the results are eval()'s either way."""
    cases = [
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                       nn.Linear(4 * 36, 3)), (2, 3, 8, 8), [True]),
        # the skip reads the Linear's output after the inner ReLU; the last ReLU's input is dead
        (nn.Sequential(nn.Linear(3, 4), nn.Residual(nn.Sequential(nn.ReLU(), nn.Linear(4, 4))),
                       nn.ReLU()), (5, 3), [False, True]),
        # the concatenation reads the GroupNorm's output beside the ReLU's
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4),
                       nn.Parallel(nn.ReLU(), nn.Identity(), combine="concat")), (2, 3, 8, 8),
         [False]),
        (nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), (4, 3), [False]),        # the caller's x
    ]
    for model, shape, want in cases:
        planned = fastmod.inference(model)
        assert [s.inplace for s in planned.steps if s.kind == "ReLU"] == want
        x = rng.standard_normal(shape).astype(np.float32)
        x0 = x.copy()
        assert_close(planned(x), _want(model, x), np.float32)
        np.testing.assert_array_equal(x, x0)
        assert_close(planned(x), _want(model, x), np.float32)             # a second call


def test_linear_chain_runs_batch_one_in_one_call(rng):
    """Consecutive float32 Linear steps run as one kernel call at batch 1 (linear_chain_forward)
    and step by step at larger batches; a Linear whose output is read twice (a skip) ends its
    chain. describe() still lists every layer."""
    from fastmod.planned import _LinearChain
    model = models.mlp([40, 70, 60, 5])
    planned = fastmod.inference(model)
    assert [type(s).__name__ for s in planned._program] == ["_LinearChain"]
    assert len(planned.describe()) == 3
    for shape in ((1, 40), (40,), (3, 40), (32, 40)):
        x = rng.standard_normal(shape).astype(np.float32)
        assert_close(planned(x), _want(model, x), np.float32)
    skip = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8),
                         nn.Residual(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))),
                         nn.Linear(8, 3))
    planned = fastmod.inference(skip)
    kinds = [type(s).__name__ for s in planned._program]
    assert kinds[0] == "_LinearChain" and len(planned._program[0].steps) == 2, kinds
    assert "_AddInto" in kinds
    x = rng.standard_normal((1, 6)).astype(np.float32)
    assert_close(planned(x), _want(skip, x), np.float32)
    assert all(type(s) is not _LinearChain for s in fastmod.inference(model.double())._program)


def test_conv_chain_runs_depth_first(rng):
    """Consecutive float32 convolutions run as one depth-first chain (conv2d_chain_forward),
    epilogues and skips included; results as eval()'s for two input shapes."""
    from fastmod.planned import _ConvChain
    for name in ("cnn", "bn_resnet", "conv-relu-bn-skip", "conv1d-relu-bn-skip"):
        make, shape = CASES[name]
        fastmod.manual_seed(0)
        model = _randomize_bn(make(), rng)
        planned = fastmod.inference(model)
        assert any(type(s) is _ConvChain for s in planned._program), name
        for n in (shape[0], 1):
            x = rng.standard_normal((n,) + shape[1:]).astype(np.float32)
            assert_close(planned(x), _want(model, x), np.float32)
    # an output read by nothing but the next convolution is marked dead (handed over in the
    # next layer's layout where both are implicit GEMMs and the first has no epilogue); one a
    # skip reads as well is not
    model = nn.Sequential(nn.Conv2d(8, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Residual(nn.Conv2d(32, 32, 3, padding=1)),
                          nn.Conv2d(32, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 16, 3))
    planned = fastmod.inference(model)
    chain = planned._program[0]
    assert type(chain) is _ConvChain and chain.dead == (True, False, True, False), chain.dead
    for n in (4, 1):
        x = rng.standard_normal((n, 8, 16, 16)).astype(np.float32)
        assert_close(planned(x), _want(model, x), np.float32)
