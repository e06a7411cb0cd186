"""Convolution workloads: fastmod vs torch, alternating in one process, printing ratios.

    python bench/bench_conv.py [--threads 2] [--repeat 15] [--only train|layers|phases|peers]
                               [--forward NAME] [--dw NAME] [--dx NAME] [--layers SUBSTR,...]

Four sections:
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
  peers   each phase of the same conv layers against every peer a user could pick: torch eager,
          torch.compile (inductor, of the same aten calls) and, forward only, ONNX Runtime (the
          layer exported alone); ratio fastmod / fastest peer, which peer that was, geometric
          means. ONNX Runtime is timed alone after the others (its idle threads spin).
--layers SUBSTR,... keeps the conv / pool layers whose label contains one of the substrings.
Timings alternate fastmod / torch per repetition, medians of wall-clock time reported. On a
shared machine, `--threads 1 --clock cpu` reports the minimum CPU time instead (process time is
what a single-threaded run actually computed, whatever else the cores are doing).
"""
import argparse
import os
import sys
import time
from types import SimpleNamespace

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


def bench_layers(repeat, layers):
    import torch
    print("\n== layers alone, ms: forward | backward (dx, dW, db) ==")
    print(f"{'layer':>24} {'fm fwd':>8} {'t fwd':>8} {'ratio':>6} | {'fm bwd':>8} {'t bwd':>8} "
          f"{'ratio':>6}")
    rng = np.random.default_rng(0)
    for label, cls, args, kw, shape in layers:
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


def conv_case(cls, args, kw, shape, rng, forward=None, dw=None, dx=None):
    """One conv layer as the phase sections time it: fastmod's kernels on NCHW arrays (Conv1d:
    H = 1) and torch's aten.convolution / convolution_backward with an output mask on the same
    memory, the plan's algorithms unless forward / dw / dx name one (conv2d_algorithms) that
    applies. A namespace of the arrays, tensors and the six phase callables."""
    import torch
    from fastmod._kernels import conv as _k
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
        return torch.ops.aten.convolution(xt, wt, bt, *conv_args)

    def fm_dw():
        _k.conv2d_backward(None, dw4, db, dy4, x4, w4, SH, SW, PH, PW, DH, DW, G,
                           False, False, False, **wo)

    def t_dw():
        return torch.ops.aten.convolution_backward(dyt, xt, wt, [m.out_channels], *conv_args,
                                                   [False, True, True])

    def fm_dx():
        _k.conv2d_backward(dx4, None, None, dy4, x4, w4, SH, SW, PH, PW, DH, DW, G,
                           False, False, False, **xo)

    def t_dx():
        return torch.ops.aten.convolution_backward(dyt, xt, wt, [m.out_channels], *conv_args,
                                                   [True, False, False])

    forced = " ".join(f"{k}={n}" for k, o in (("forward", fo), ("dW", wo), ("dx", xo))
                      for n in o.values())
    paths = _k.conv2d_paths(x4, y4, w4, SH, SW, PH, PW, DH, DW, G)
    return SimpleNamespace(m=m, x=x, x4=x4, y4=y4, w4=w4, b=b, dy4=dy4, dx4=dx4, dw4=dw4, db=db,
                           xt=xt, wt=wt, bt=bt, dyt=dyt, conv_args=conv_args, paths=paths,
                           forced=forced, fm_fwd=fm_fwd, t_fwd=t_fwd, fm_dw=fm_dw, t_dw=t_dw,
                           fm_dx=fm_dx, t_dx=t_dx)


def bench_phases(repeat, layers, forward=None, dw=None, dx=None):
    """forward / dw / dx: an algorithm name (conv2d_algorithms) to run instead of the plan's
    choice where it applies."""
    import torch
    print("\n== conv phases alone, ms: forward | dW + db | dx (fastmod / torch) ==")
    print(f"{'layer':>24} {'fm fwd':>7} {'t fwd':>7} {'ratio':>5} | {'fm dW':>7} {'t dW':>7} "
          f"{'ratio':>5} | {'fm dx':>7} {'t dx':>7} {'ratio':>5} | paths")
    rng = np.random.default_rng(0)
    for label, cls, args, kw, shape in layers:
        c = conv_case(cls, args, kw, shape, rng, forward, dw, dx)
        with torch.no_grad():
            f1, t1 = alternate([c.fm_fwd, c.t_fwd], repeat)
            f2, t2 = alternate([c.fm_dw, c.t_dw], repeat)
            f3, t3 = alternate([c.fm_dx, c.t_dx], repeat)
        paths = c.paths + (f" (forced: {c.forced})" if c.forced else "")
        print(f"{label:>24} {f1 * 1e3:7.2f} {t1 * 1e3:7.2f} {f1 / t1:5.2f} | {f2 * 1e3:7.2f} "
              f"{t2 * 1e3:7.2f} {f2 / t2:5.2f} | {f3 * 1e3:7.2f} {t3 * 1e3:7.2f} {f3 / t3:5.2f} | "
              f"{paths}")


def compiled_phases(c):
    """torch.compile'd (inductor, default mode, static shapes) forward, dW + db and dx of
    conv_case c -- the same aten calls, same output masks -- compiled and run once here (under
    no_grad, as timed): {phase: callable}."""
    import torch
    # the three functions are new closures of the same code objects for every layer: without a
    # reset, dynamo would recompile them with dynamic shapes, and after the recompile limit (8)
    # silently run them eagerly
    torch._dynamo.reset()
    a, n = c.conv_args, [c.m.out_channels]
    fwd = torch.compile(lambda x, w, b: torch.ops.aten.convolution(x, w, b, *a), dynamic=False)
    dw = torch.compile(lambda dy, x, w: torch.ops.aten.convolution_backward(
        dy, x, w, n, *a, [False, True, True]), dynamic=False)
    dx = torch.compile(lambda dy, x, w: torch.ops.aten.convolution_backward(
        dy, x, w, n, *a, [True, False, False]), dynamic=False)
    fns = {"fwd": lambda: fwd(c.xt, c.wt, c.bt), "dW": lambda: dw(c.dyt, c.xt, c.wt),
           "dx": lambda: dx(c.dyt, c.xt, c.wt)}
    with torch.no_grad():
        for f in fns.values():
            f()
    return fns


class OrtConv(W.OrtRunner):
    """W.OrtRunner's session (same options, `threads` intra-op threads; infer, close) around
    one layer alone: torch's module with fastmod's weights, exported by the TorchScript
    exporter as OrtRunner does."""

    def __init__(self, ort, c, cls, args, kw, threads):
        import io
        import warnings
        import torch
        tm = getattr(torch.nn, cls.__name__)(*args, **kw)
        with torch.no_grad():
            tm.weight.copy_(torch.from_numpy(c.m.weight.data))
            tm.bias.copy_(torch.from_numpy(c.b))
        buf = io.BytesIO()
        # dynamo=False (W.OrtRunner's exporter) warns that it is deprecated on every export
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(tm, (torch.from_numpy(c.x),), buf, input_names=["x"],
                              output_names=["y"], opset_version=17, dynamo=False)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        self.feed = {"x": c.x}


def max_rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def bench_peers(repeat, layers, threads):
    """Every phase of every layer: fastmod's kernel (the plan's choice) against each peer,
    ratio fastmod / fastest peer. Forward: torch eager, torch.compile, ONNX Runtime; dW + db and
    dx: torch eager, torch.compile (ONNX Runtime has no backward)."""
    import torch
    try:
        import onnxruntime as ort
    except ImportError as e:
        ort = None
        print(f"note: onnxruntime not importable ({e}): no ort column")
    peers = {"fwd": ("torch", "compile", "ort"), "dW": ("torch", "compile"),
             "dx": ("torch", "compile")}
    print("\n== conv phases against every peer, ms; ratio fastmod / fastest peer (which) ==")
    head = f"{'layer':>24}"
    for ph, names in peers.items():
        head += f" | {'fm ' + ph:>7}" + "".join(f" {n:>7}" for n in names) + f" {'ratio':<14}"
    print(head.rstrip())
    rng = np.random.default_rng(0)
    ratios = {ph: [] for ph in peers}
    for label, cls, args, kw, shape in layers:
        c = conv_case(cls, args, kw, shape, rng)
        fm = {"fwd": c.fm_fwd, "dW": c.fm_dw, "dx": c.fm_dx}
        eager = {"fwd": c.t_fwd, "dW": c.t_dw, "dx": c.t_dx}
        try:
            comp = compiled_phases(c)
        except Exception as e:                # no compiler / unsupported: reported, not fatal
            comp = {}
            print(f"note: {label}: torch.compile failed ({type(e).__name__}: {e}): '-'")
        times = {}
        with torch.no_grad():
            # once, untimed: every peer computes what fastmod does
            for f in fm.values():
                f()
            yt = c.t_fwd()
            _, dwt, dbt = c.t_dw()
            dxt = c.t_dx()[0]
            got = [("fastmod fwd", c.y4, yt), ("fastmod dW", c.dw4, dwt),
                   ("fastmod db", c.db, dbt), ("fastmod dx", c.dx4, dxt)]
            if comp:
                got += [("compile fwd", comp["fwd"](), yt), ("compile dW", comp["dW"]()[1], dwt),
                        ("compile dx", comp["dx"]()[0], dxt)]
            for ph in peers:
                fns = [fm[ph], eager[ph]] + ([comp[ph]] if comp else [])
                times[ph] = dict(zip(("fastmod", "torch", "compile"), alternate(fns, repeat)))
        if ort is not None:
            # alone, after the others, then closed: its idle intra-op threads spin and would
            # slow whatever ran while its session lives (W.OrtRunner)
            try:
                o = OrtConv(ort, c, cls, args, kw, threads)
            except Exception as e:            # an export / session failure: reported, not fatal
                print(f"note: {label}: ONNX Runtime failed ({type(e).__name__}: {e}): '-'")
            else:
                got.append(("ort fwd", o.infer().reshape(c.y4.shape), yt))
                times["fwd"]["ort"] = alternate([o.infer], repeat)[0]
                o.close()
        for what, a, ref in got:
            d = max_rel_diff(a, ref)
            if d > 1e-4:
                print(f"WARNING: {label}: {what} differs from torch eager's by {d:.1e} (relative)")
        row = f"{label:>24}"
        for ph, names in peers.items():
            t = times[ph]
            best = min((n for n in names if n in t), key=t.get)
            r = t["fastmod"] / t[best]
            ratios[ph].append(r)
            row += (f" | {t['fastmod'] * 1e3:7.3f}"
                    + "".join(f" {t[n] * 1e3:7.3f}" if n in t else f" {'-':>7}" for n in names)
                    + f" {f'{r:.2f} ({best})':<14}")
        print(row.rstrip())
    row = f"{'geomean fastmod / best':>24}"
    for ph, names in peers.items():
        row += f" | {'':>7}" + " " * (8 * len(names)) + f" {W.geomean(ratios[ph]):<14.2f}"
    print(row.rstrip())


def select(layers, substrings):
    """The (label, ...) entries whose label contains one of the substrings (all if None)."""
    if substrings is None:
        return layers
    return [e for e in layers if any(s in e[0] for s in substrings)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--only", choices=["train", "layers", "phases", "peers"], default=None)
    ap.add_argument("--forward", default=None, help="phases: the forward through this algorithm")
    ap.add_argument("--dw", default=None, help="phases: dW through this algorithm")
    ap.add_argument("--dx", default=None, help="phases: dx through this algorithm")
    ap.add_argument("--layers", default=None, metavar="SUBSTR,...",
                    help="layers / phases / peers: only the layers whose label contains one")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: minimum process time (meaningful with --threads 1 only)")
    args = ap.parse_args()
    subs = args.layers.split(",") if args.layers else None
    convs = select(CONV_LAYERS, subs)
    pools = select(POOL_LAYERS, subs)
    if not convs + pools:
        ap.error(f"--layers {args.layers}: no layer's label contains any of these")
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
        bench_layers(args.repeat, convs + pools)
    if args.only in (None, "phases"):
        bench_phases(args.repeat, convs, args.forward, args.dw, args.dx)
    if args.only in (None, "peers"):
        bench_peers(args.repeat, convs, args.threads)


if __name__ == "__main__":
    main()
