"""transformer_b16 (SPEC §6) side by side with PyTorch, plus a per-part breakdown.

Model: 2 x TransformerEncoderLayer(256, 8, 1024, dropout=0, gelu), mean over tokens,
Linear 256 -> 10; input (16, 64, 256) float32. A train step is forward, cross-entropy, backward
(the input needs no gradient, in both frameworks), SGD(momentum=0.9) step; inference runs in
eval mode with nothing kept for backward. fastmod and torch run alternately in one process at
the same thread count; the reported time is the median, the ratio fastmod / torch (< 1: faster).

    python bench/bench_attention.py [--threads 2] [--reps 30] [--no-parts]
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import fastmod  # noqa: E402
import fastmod.nn as nn  # noqa: E402
from fastmod.losses import CrossEntropyLoss  # noqa: E402

N, T, E, H, FF, C = 16, 64, 256, 8, 1024, 10


class MeanTokens(nn.Module):
    """(N, T, E) -> (N, E), the mean over tokens."""

    def forward(self, x):
        self._save(x.shape)
        return x.mean(axis=1)

    def backward(self, dy, need_input_grad=True):
        (shape,) = self._saved()
        return np.ascontiguousarray(np.broadcast_to((dy / shape[1])[:, None, :], shape))


def fastmod_model():
    return nn.Sequential(*[nn.TransformerEncoderLayer(E, H, FF, dropout=0.0, activation="gelu")
                           for _ in range(2)], MeanTokens(), nn.Linear(E, C))


def torch_model(torch):
    class TMean(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=1)
    return torch.nn.Sequential(*[torch.nn.TransformerEncoderLayer(E, H, FF, dropout=0.0,
                                                                  activation="gelu", batch_first=True)
                                 for _ in range(2)], TMean(), torch.nn.Linear(E, C))


def median_time(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def alternate(pairs, reps):
    """pairs: {name: (fastmod_fn, torch_fn)} -> {name: (fastmod median s, torch median s)}.
    The two run in turn, one call each, so both see the same machine load."""
    out = {}
    for name, (f, t) in pairs.items():
        for _ in range(3):
            f()
            t()
        tf, tt = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            t1 = time.perf_counter()
            t()
            t2 = time.perf_counter()
            tf.append(t1 - t0)
            tt.append(t2 - t1)
        out[name] = (float(np.median(tf)), float(np.median(tt)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--no-parts", action="store_true", help="skip the per-part breakdown")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    fastmod.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, T, E)).astype(np.float32)
    y = rng.integers(0, C, N)

    torch.manual_seed(0)
    tm = torch_model(torch)
    fm = fastmod_model()
    fm.load_state_dict({k: v.detach().numpy() for k, v in tm.state_dict().items()})
    from fastmod.optim import SGD
    fopt = SGD(fm.parameters(), lr=0.01, momentum=0.9)
    topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
    crit, tcrit = CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def f_train():
        fopt.zero_grad()
        loss = crit(fm(x), y)
        fm.backward(crit.backward(), need_input_grad=False)
        fopt.step()
        return loss

    def t_train():
        topt.zero_grad()
        loss = tcrit(tm(tx), ty)
        loss.backward()
        topt.step()
        return loss

    def f_infer():
        with fastmod.no_grad():
            return fm(x)

    def t_infer():
        with torch.inference_mode():
            return tm(tx)

    # same weights, same outputs (a sanity check before timing)
    fm.eval(); tm.eval()
    np.testing.assert_allclose(f_infer(), t_infer().numpy(), rtol=1e-3, atol=1e-4)
    fm.train(); tm.train()

    print(f"transformer_b16: {args.threads} threads, median of {args.reps}, fastmod / torch "
          f"(torch {torch.__version__})")
    res = alternate({"train step": (f_train, t_train)}, args.reps)
    fm.eval(); tm.eval()
    res.update(alternate({"inference": (f_infer, t_infer)}, args.reps))
    fm.train(); tm.train()
    for name, (a, b) in res.items():
        print(f"  {name:<28s} fastmod {a * 1e3:8.2f} ms   torch {b * 1e3:8.2f} ms   ratio {a / b:5.2f}")
    if not args.no_parts:
        parts(torch, rng, args.reps)


def parts(torch, rng, reps):
    """The same work split into the layer's pieces, each timed alone (forward + backward
    unless marked fwd), fastmod vs torch."""
    tnn = torch.nn
    x = rng.standard_normal((N, T, E)).astype(np.float32)
    g = rng.standard_normal((N, T, E)).astype(np.float32)
    tx = torch.from_numpy(x).requires_grad_(True)
    tg = torch.from_numpy(g)
    pairs = {}

    tmha = tnn.MultiheadAttention(E, H, batch_first=True)
    mha = nn.MultiheadAttention(E, H)
    mha.load_state_dict({k: v.detach().numpy() for k, v in tmha.state_dict().items()})

    def f_mha():
        mha(x)
        mha.backward(g)

    def t_mha():
        out, _ = tmha(tx, tx, tx, need_weights=False)
        out.backward(tg)
    pairs["MHA fwd+bwd"] = (f_mha, t_mha)

    def f_mha_inf():
        with fastmod.no_grad():
            mha(x)

    def t_mha_inf():
        with torch.inference_mode():
            tmha(tx, tx, tx, need_weights=False)
    pairs["MHA fwd (inference)"] = (f_mha_inf, t_mha_inf)

    # the attention core alone: softmax(QK^T/sqrt(d))V on (N, H, T, d)
    q = rng.standard_normal((N, H, T, E // H)).astype(np.float32)
    tq = torch.from_numpy(q)
    pairs["attention core fwd"] = (
        lambda: nn.scaled_dot_product_attention(q, q, q),
        lambda: torch.nn.functional.scaled_dot_product_attention(tq, tq, tq))

    h = rng.standard_normal((N, T, FF)).astype(np.float32)
    th = torch.from_numpy(h).requires_grad_(True)
    hg = torch.from_numpy(np.ones_like(h))
    gelu, tgelu = nn.GELU(), tnn.GELU()

    def f_gelu():
        gelu(h)
        gelu.backward(h)

    def t_gelu():
        tgelu(th).backward(hg)
    pairs["GELU (N, T, 1024)"] = (f_gelu, t_gelu)

    lin1, tlin1 = nn.Linear(E, FF), tnn.Linear(E, FF)
    lin2, tlin2 = nn.Linear(FF, E), tnn.Linear(FF, E)
    act, tact = nn.GELU(), tnn.GELU()

    def f_ff():
        lin2(act(lin1(x)))
        lin1.backward(act.backward(lin2.backward(g)))

    def t_ff():
        tlin2(tact(tlin1(tx))).backward(tg)
    pairs["FF (linear1, gelu, linear2)"] = (f_ff, t_ff)

    try:
        ln = nn.LayerNorm(E)
    except AttributeError:
        ln = None
    if ln is not None:
        tln = tnn.LayerNorm(E)

        def f_ln():
            ln(x)
            ln.backward(g)

        def t_ln():
            tln(tx).backward(tg)
        pairs["LayerNorm"] = (f_ln, t_ln)

    res = alternate(pairs, reps)
    print("  per part (each alone; fwd+bwd unless noted):")
    for name, (a, b) in res.items():
        print(f"    {name:<30s} fastmod {a * 1e3:8.3f} ms   torch {b * 1e3:8.3f} ms   ratio {a / b:5.2f}")


if __name__ == "__main__":
    main()
