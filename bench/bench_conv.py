"""Convolution workloads: fastmod vs torch, alternating in one process, printing ratios.

    python bench/bench_conv.py [--threads 2] [--repeat 15] [--only train|layers|phases]
                               [--forward NAME] [--dw NAME] [--dx NAME]

Three sections:
  train   SPEC §6's conv workloads (cnn_b32, conv1d_b64, bnresnet_b32, groupnorm_cnn_b32,
          densenet_b16): one train step (forward, cross-entropy, backward, SGD momentum step),
          median ms of fastmod and torch, ratio fastmod/torch (< 1: fastmod faster), and the
          achieved GFLOP/s (GEMM work as bench/workloads.py counts it).
  layers  every distinct conv / pool layer of those workloads alone: forward, and backward
          (input + parameter gradients), fastmod vs torch -- to find the slow parts.
  phases  the same conv layers, each phase alone -- forward, dW + db, dx -- fastmod's kernels
          vs torch's convolution / convolution_backward with an output mask (which of the
          kernel's paths each phase takes is printed: wino, wino5, small, im2row, shifted, ...);
          --forward / --dw / --dx NAME run that algorithm instead of the plan's choice on the
          layers it applies to (conv2d_algorithms; the others keep the plan's), to compare two
          algorithms on the same layers.
Timings alternate fastmod / torch per repetition, medians of wall-clock time reported. On a
shared machine, `--threads 1 --clock cpu` reports the minimum CPU time instead (process time is
what a single-threaded run actually computed, whatever else the cores are doing).
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import fastmod  # noqa: E402
from fastmod import nn  # noqa: E402
import workloads as W  # noqa: E402

TRAIN = ["cnn_b32", "conv1d_b64", "bnresnet_b32", "groupnorm_cnn_b32", "densenet_b16"]

# (label, module args, input shape) of every distinct layer in the workloads above
CONV_LAYERS = [
    ("cnn.conv1 3-32 s1", nn.Conv2d, (3, 32, 3), dict(padding=1), (32, 3, 32, 32)),
    ("cnn.conv2 32-64 s2", nn.Conv2d, (32, 64, 3), dict(stride=2, padding=1), (32, 32, 32, 32)),
    ("cnn.conv3 64-64 s2", nn.Conv2d, (64, 64, 3), dict(stride=2, padding=1), (32, 64, 16, 16)),
    ("conv1d.1 32-64 k5", nn.Conv1d, (32, 64, 5), dict(padding=2), (64, 32, 256)),
    ("conv1d.2 64-64 k5", nn.Conv1d, (64, 64, 5), dict(padding=2), (64, 64, 256)),
    ("bnres.stem 3-64 16x16", nn.Conv2d, (3, 64, 3), dict(padding=1), (32, 3, 16, 16)),
    ("bnres.conv 64-64 16x16", nn.Conv2d, (64, 64, 3), dict(padding=1), (32, 64, 16, 16)),
    ("dense.stem 3-24 32x32", nn.Conv2d, (3, 24, 3), dict(padding=1), (16, 3, 32, 32)),
    ("dense.l0 24-12 32x32", nn.Conv2d, (24, 12, 3), dict(padding=1), (16, 24, 32, 32)),
    ("dense.l1 36-12 32x32", nn.Conv2d, (36, 12, 3), dict(padding=1), (16, 36, 32, 32)),
    ("dense.l2 48-12 32x32", nn.Conv2d, (48, 12, 3), dict(padding=1), (16, 48, 32, 32)),
    ("dense.l3 60-12 32x32", nn.Conv2d, (60, 12, 3), dict(padding=1), (16, 60, 32, 32)),
    ("1x1 64-128 16x16", nn.Conv2d, (64, 128, 1), {}, (32, 64, 16, 16)),
    ("depthwise 64 3x3", nn.Conv2d, (64, 64, 3), dict(padding=1, groups=64), (32, 64, 16, 16)),
]
POOL_LAYERS = [
    ("maxpool2 64@16x16", nn.MaxPool2d, (2,), {}, (32, 64, 16, 16)),
    ("avgpool2 64@16x16", nn.AvgPool2d, (2,), {}, (32, 64, 16, 16)),
    ("adaptive1 64@16x16", nn.AdaptiveAvgPool2d, (1,), {}, (32, 64, 16, 16)),
]


CLOCK = {"wall": (time.perf_counter, np.median), "cpu": (time.process_time, np.min)}
_clock = CLOCK["wall"]


def alternate(fns, repeat):
    """Run each callable in turn `repeat` times (after 2 warm-ups); median wall seconds of each
    (or minimum CPU seconds with --clock cpu)."""
    timer, pick = _clock
    for _ in range(2):
        for f in fns:
            f()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for i, f in enumerate(fns):
            t0 = timer()
            f()
            times[i].append(timer() - t0)
    return [float(pick(t)) for t in times]


def bench_train(repeat):
    print("\n== train steps (forward + cross-entropy + backward + SGD momentum), ms ==")
    print(f"{'workload':>20} {'fastmod':>9} {'torch':>9} {'ratio':>7} {'fm GF/s':>8} {'t GF/s':>8}")
    ratios = []
    for name in TRAIN:
        wl = W.WORKLOADS[name]
        try:
            fm = W.FastmodRunner(wl, "train")
        except W.Unavailable as e:
            print(f"{name:>20}  skipped: {e}")
            continue
        tr = W.TorchRunner(wl, "train")
        fm.load_torch_weights(tr.model)
        tf, tt = alternate([fm.train, tr.train], repeat)
        fl = wl.flops("train")
        ratios.append(tf / tt)
        print(f"{name:>20} {tf * 1e3:9.2f} {tt * 1e3:9.2f} {tf / tt:7.2f} {fl / tf / 1e9:8.1f} "
              f"{fl / tt / 1e9:8.1f}")
    if ratios:
        print(f"{'geomean ratio':>20} {W.geomean(ratios):37.2f}")


def bench_layers(repeat):
    import torch
    print("\n== layers alone, ms: forward | backward (dx, dW, db) ==")
    print(f"{'layer':>24} {'fm fwd':>8} {'t fwd':>8} {'ratio':>6} | {'fm bwd':>8} {'t bwd':>8} "
          f"{'ratio':>6}")
    rng = np.random.default_rng(0)
    for label, cls, args, kw, shape in CONV_LAYERS + POOL_LAYERS:
        fm = cls(*args, **kw)
        tcls = getattr(torch.nn, cls.__name__)
        tm = tcls(*args, **kw)
        if fm.state_dict():
            fm.load_state_dict({k: v.numpy() for k, v in tm.state_dict().items()})
        x = rng.standard_normal(shape, dtype=np.float32)
        xt = torch.from_numpy(x).requires_grad_(True)
        y = fm(x)
        dy = rng.standard_normal(y.shape, dtype=np.float32)
        dyt = torch.from_numpy(dy)
        state = {}

        def fm_fwd():
            fm(x)

        def t_fwd():
            state["yt"] = tm(xt)

        def fm_bwd():
            fm(x)
            fm.backward(dy)

        def t_bwd():
            xt.grad = None
            tm.zero_grad()
            tm(xt).backward(dyt)

        f1, t1 = alternate([fm_fwd, t_fwd], repeat)
        f2, t2 = alternate([fm_bwd, t_bwd], repeat)
        # backward alone = (forward + backward) - forward
        fb, tb = max(f2 - f1, 1e-9), max(t2 - t1, 1e-9)
        print(f"{label:>24} {f1 * 1e3:8.3f} {t1 * 1e3:8.3f} {f1 / t1:6.2f} | {fb * 1e3:8.3f} "
              f"{tb * 1e3:8.3f} {fb / tb:6.2f}")


def bench_phases(repeat, forward=None, dw=None, dx=None):
    """forward / dw / dx: an algorithm name (conv2d_algorithms) to run instead of the plan's
    choice where it applies."""
    import torch
    from fastmod._kernels import conv as _k
    print("\n== conv phases alone, ms: forward | dW + db | dx (fastmod / torch) ==")
    print(f"{'layer':>24} {'fm fwd':>7} {'t fwd':>7} {'ratio':>5} | {'fm dW':>7} {'t dW':>7} "
          f"{'ratio':>5} | {'fm dx':>7} {'t dx':>7} {'ratio':>5} | paths")
    rng = np.random.default_rng(0)
    for label, cls, args, kw, shape in CONV_LAYERS:
        m = cls(*args, **kw)
        x = rng.standard_normal(shape, dtype=np.float32)
        y = m(x)
        m._saved()
        geom = m._geometry(x.shape[2:])
        H, Wd, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, _ = geom
        N = x.shape[0]
        x4 = x.reshape(N, -1, H, Wd)
        y4 = y.reshape(N, -1, OH, OW)
        w4 = m.weight.data.reshape(m.out_channels, -1, KH, KW)
        b = m.bias.data
        dy4 = rng.standard_normal(y4.shape, dtype=np.float32)
        dx4, dw4, db = np.empty_like(x4), np.empty_like(w4), np.empty_like(b)
        xt, wt, bt, dyt = (torch.from_numpy(a) for a in (x4, w4, b, dy4))
        G = m.groups
        conv_args = ([SH, SW], [PH, PW], [DH, DW], False, [0, 0], G)
        ok = _k.conv2d_algorithms(x4, y4, w4, SH, SW, PH, PW, DH, DW, G)
        fo = {"algorithm": forward} if forward in ok["forward"] else {}
        wo = {"dw_algorithm": dw} if dw in ok["dW"] else {}
        xo = {"dx_algorithm": dx} if dx in ok["dx"] else {}

        def fm_fwd():
            _k.conv2d_forward(y4, x4, w4, b, SH, SW, PH, PW, DH, DW, G, **fo)

        def t_fwd():
            torch.ops.aten.convolution(xt, wt, bt, *conv_args)

        def fm_dw():
            _k.conv2d_backward(None, dw4, db, dy4, x4, w4, SH, SW, PH, PW, DH, DW, G,
                               False, False, False, **wo)

        def t_dw():
            torch.ops.aten.convolution_backward(dyt, xt, wt, [m.out_channels], *conv_args,
                                                [False, True, True])

        def fm_dx():
            _k.conv2d_backward(dx4, None, None, dy4, x4, w4, SH, SW, PH, PW, DH, DW, G,
                               False, False, False, **xo)

        def t_dx():
            torch.ops.aten.convolution_backward(dyt, xt, wt, [m.out_channels], *conv_args,
                                                [True, False, False])

        with torch.no_grad():
            f1, t1 = alternate([fm_fwd, t_fwd], repeat)
            f2, t2 = alternate([fm_dw, t_dw], repeat)
            f3, t3 = alternate([fm_dx, t_dx], repeat)
        paths = _k.conv2d_paths(x4, y4, w4, SH, SW, PH, PW, DH, DW, G)
        forced = " ".join(f"{k}={n}" for k, o in (("forward", fo), ("dW", wo), ("dx", xo))
                          for n in o.values())
        if forced:
            paths += f" (forced: {forced})"
        print(f"{label:>24} {f1 * 1e3:7.2f} {t1 * 1e3:7.2f} {f1 / t1:5.2f} | {f2 * 1e3:7.2f} "
              f"{t2 * 1e3:7.2f} {f2 / t2:5.2f} | {f3 * 1e3:7.2f} {t3 * 1e3:7.2f} {f3 / t3:5.2f} | "
              f"{paths}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--only", choices=["train", "layers", "phases"], default=None)
    ap.add_argument("--forward", default=None, help="phases: the forward through this algorithm")
    ap.add_argument("--dw", default=None, help="phases: dW through this algorithm")
    ap.add_argument("--dx", default=None, help="phases: dx through this algorithm")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: minimum process time (meaningful with --threads 1 only)")
    args = ap.parse_args()
    global _clock
    _clock = CLOCK[args.clock]
    import torch
    torch.set_num_threads(args.threads)
    fastmod.set_num_threads(args.threads)
    print(f"threads={args.threads} repeat={args.repeat} clock={args.clock} float32 "
          f"torch {torch.__version__}")
    if args.only in (None, "train"):
        bench_train(args.repeat)
    if args.only in (None, "layers"):
        bench_layers(args.repeat)
    if args.only in (None, "phases"):
        bench_phases(args.repeat, args.forward, args.dw, args.dx)


if __name__ == "__main__":
    main()
