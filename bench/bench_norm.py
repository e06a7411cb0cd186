"""Normalization forward+backward: fastmod vs torch, alternating in one process, printing ratios.

    python bench/bench_norm.py [--threads 2] [--repeat 15] [--dtype float32]

Workloads (float32 by default), each a training-mode module's forward + backward (input and
parameter gradients):
  (64, 64, 32, 32): LayerNorm over the last dim (32), LayerNorm over (C, H, W), BatchNorm2d(64),
                    GroupNorm(8, 64);
  (4096, 1024):     LayerNorm(1024), BatchNorm1d(1024) (the (N, C) analogue of BatchNorm2d),
                    GroupNorm(32, 1024).
Timings alternate fastmod / torch per repetition; the medians are reported with the ratio
fastmod / torch (< 1: fastmod is faster). Target: every ratio <= 1.0 at 2 threads.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastmod  # noqa: E402
from fastmod import nn  # noqa: E402


def cases(shape):
    """(label, fastmod factory, torch factory) for one input shape."""
    import torch
    c = shape[1]
    if len(shape) == 4:
        out = [(f"LayerNorm({shape[-1]})", lambda: nn.LayerNorm(shape[-1]), lambda: torch.nn.LayerNorm(shape[-1])),
               ("LayerNorm(C,H,W)", lambda: nn.LayerNorm(shape[1:]), lambda: torch.nn.LayerNorm(shape[1:])),
               ("BatchNorm2d", lambda: nn.BatchNorm2d(c), lambda: torch.nn.BatchNorm2d(c))]
    else:
        out = [("LayerNorm(1024)", lambda: nn.LayerNorm(shape[-1]), lambda: torch.nn.LayerNorm(shape[-1])),
               ("BatchNorm1d", lambda: nn.BatchNorm1d(c), lambda: torch.nn.BatchNorm1d(c))]
    g = 8 if c == 64 else 32
    out.append((f"GroupNorm({g},{c})", lambda: nn.GroupNorm(g, c), lambda: torch.nn.GroupNorm(g, c)))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    fastmod.set_num_threads(args.threads)
    dt = np.dtype(args.dtype)
    tdt = torch.float32 if dt == np.float32 else torch.float64
    rng = np.random.default_rng(0)
    print(f"threads={args.threads} dtype={dt} repeat={args.repeat} (median ms, fwd+bwd)")
    print(f"{'shape':>18} {'module':>18} {'fastmod':>9} {'torch':>9} {'ratio':>7}")
    ratios = []
    for shape in [(64, 64, 32, 32), (4096, 1024)]:
        x = rng.standard_normal(shape).astype(dt)
        dy = rng.standard_normal(shape).astype(dt)
        xt0, dyt = torch.from_numpy(x), torch.from_numpy(dy)
        for label, fm_make, tm_make in cases(shape):
            fm = fm_make().astype(dt)
            tm = tm_make().to(tdt)

            def run_fm():
                fm(x)
                fm.backward(dy)

            def run_t():
                xt = xt0.detach().requires_grad_(True)
                tm(xt).backward(dyt)

            run_fm(), run_t(), run_fm(), run_t()        # warm-up (allocations, thread pools)
            tf, tt = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                run_fm()
                tf.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                run_t()
                tt.append(time.perf_counter() - t0)
            f, t = np.median(tf) * 1e3, np.median(tt) * 1e3
            ratios.append(f / t)
            print(f"{str(shape):>18} {label:>18} {f:9.2f} {t:9.2f} {f / t:7.2f}x")
    print(f"geometric mean ratio: {np.exp(np.mean(np.log(ratios))):.2f}x")


if __name__ == "__main__":
    main()
