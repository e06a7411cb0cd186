"""End to end: the seed's MLP and ResNet-S learn a small synthetic problem with fastmod's
optimizers, schedulers, clipping and DataLoader; runs are bit-identical for a seed.

The thresholds were chosen with margin: over seeds 0-9, 300 steps reach a full-data loss of at
most 0.016 (MLP, Adam) and 0.014 (ResNet-S, AdamW); 600 steps of SGD with warm-up, cosine
decay and two parameter groups reach at most 0.051 (accuracy >= 0.987).
"""
import numpy as np
import pytest

import fastmod
from fastmod.data import DataLoader, make_spirals
from fastmod.optim import SGD, Adam, AdamW, CosineAnnealingLR, LinearLR, SequentialLR

STEPS = 300


@pytest.fixture(scope="module")
def spirals():
    return make_spirals(300, n_classes=3, noise=0.1, seed=0)


def _train(model, opt, x, y, seed, steps=STEPS, sched=None, clip=None):
    crit = fastmod.losses.CrossEntropyLoss()
    loader = DataLoader((x, y), batch_size=64, shuffle=True, seed=seed)
    step = 0
    while step < steps:
        for xb, yb in loader:
            opt.zero_grad()
            loss = crit(model(xb), yb)
            assert np.isfinite(loss), f"non-finite loss at step {step}"
            model.backward(crit.backward())
            if clip is not None:
                fastmod.optim.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            if step == steps:
                break
    with fastmod.no_grad():
        logits = model(x)
    return crit(logits, y), float((logits.argmax(1) == y).mean())


def _mlp_adam(seed, x, y):
    fastmod.manual_seed(seed)
    model = fastmod.models.mlp([2, 64, 64, 3])
    return model, _train(model, Adam(model.parameters(), lr=0.01), x, y, seed)


def test_mlp_learns_spirals(spirals):
    x, y = spirals
    model, (loss, acc) = _mlp_adam(0, x, y)
    assert loss < 0.1 and acc > 0.97
    # a linear model cannot: the problem really needs the hidden layers
    fastmod.manual_seed(0)
    lin = fastmod.models.mlp([2, 3])
    lin_loss, lin_acc = _train(lin, Adam(lin.parameters(), lr=0.01), x, y, 0)
    assert lin_loss > 0.5 and lin_acc < 0.7


def test_resnet_s_learns_spirals(spirals):
    x, y = spirals
    fastmod.manual_seed(1)
    model = fastmod.models.resnet_s(32, 3, 3, in_features=2)
    loss, acc = _train(model, AdamW(model.parameters(), lr=0.01), x, y, 1)
    assert loss < 0.1 and acc > 0.97


def test_sgd_with_warmup_cosine_and_clipping(spirals):
    """Per-module learning rates (the seed's "Training Considerations") as parameter groups."""
    x, y = spirals
    fastmod.manual_seed(2)
    model = fastmod.models.mlp([2, 64, 64, 3])
    opt = SGD([{"params": list(model[0].parameters()) + list(model[2].parameters())},
               {"params": model[4].parameters(), "lr": 0.05, "weight_decay": 0.0}],
              lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = SequentialLR(opt, [LinearLR(opt, start_factor=0.1, total_iters=20),
                               CosineAnnealingLR(opt, T_max=2 * STEPS - 20)], milestones=[20])
    loss, acc = _train(model, opt, x, y, 2, steps=2 * STEPS, sched=sched, clip=5.0)
    assert loss < 0.15 and acc > 0.95
    assert sched.get_last_lr() == pytest.approx([0.0, 0.0], abs=1e-12)   # annealed to eta_min


def test_same_seed_bit_identical_different_seed_differs(spirals):
    x, y = spirals
    x, y = x[:128], y[:128]
    runs = []
    for seed in (5, 5, 6):
        fastmod.manual_seed(seed)
        model = fastmod.models.resnet_s(16, 2, 3, in_features=2)
        _train(model, Adam(model.parameters(), lr=0.01), x, y, seed, steps=40)
        runs.append(model.state_dict())
    for k in runs[0]:
        np.testing.assert_array_equal(runs[0][k], runs[1][k], err_msg=k)
    assert any(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_float64_training_matches_float32_closely(spirals):
    """The same run in float64 and float32 follows the same path (no dtype-specific bug)."""
    x, y = spirals
    out = {}
    for dt in (np.float32, np.float64):
        fastmod.manual_seed(3)
        model = fastmod.models.mlp([2, 16, 3], dtype=dt)
        _train(model, SGD(model.parameters(), lr=0.05, momentum=0.9), x.astype(dt), y, 3, steps=30)
        out[dt] = model.state_dict()
    for k in out[np.float32]:
        np.testing.assert_allclose(out[np.float32][k], out[np.float64][k], rtol=1e-3, atol=1e-4)
