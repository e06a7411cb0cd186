"""fastmod.profile: where one inference and one train step spend their time, per layer.

    result = fastmod.profile(model, x, y)           # y: integer classes -> CrossEntropyLoss
    print(result)                                   # the table, slowest layers first
    result.to_dict()                                # rows and totals as plain Python values
    fastmod.profile(model, x, y, trace="step.json") # + a Chrome trace (chrome://tracing, Perfetto)

How it measures. For the profile only, every module's bound forward / backward (and the
stateless pair a buffer-sharing container calls: forward_into, backward_into) is
replaced by a timing wrapper stored as an *instance* attribute; the classes are never touched,
and the instance attributes are removed afterwards (also when the model raises), so a model
that is not being profiled runs exactly the code it always runs. A module's time is its *self*
time: from entering it to leaving it, minus the time spent in the wrapped modules it calls (so a
MultiheadAttention row holds its projections and attention kernel, not its out_proj Linear).
Each phase is repeated and the median kept. The model is left as it was found: parameter
gradients, buffers (BatchNorm's running statistics), train/eval flags, saved forward state and
the random generators (dropout) are restored.
"""
import importlib
import json
import os
import statistics
import time
import tracemalloc
from collections import defaultdict

import numpy as np

from fastmod import _runtime
from fastmod._validate import positive_int
from fastmod._runtime import STATE, no_grad
from fastmod.nn import Conv1d, Conv2d, Embedding, Linear, MultiheadAttention
from fastmod.nn.module import Module

__all__ = ["profile", "ProfileResult", "fma_peak_gflops"]

# methods through which a module's own work runs: the public pair (a container's fusion calls
# them too, with activation= / input_activation=) and the stateless pair a buffer-sharing
# container calls (DenseBlock's convolutions: forward_into / backward_into)
_FORWARD = ("forward", "forward_into")
_BACKWARD = ("backward", "backward_into")

_PEAK = {}


def fma_peak_gflops(dtype=np.float32, threads=None):
    """The machine's measured FMA peak in GFLOP/s at the kernels' instruction-set level and
    `threads` threads (default: fastmod's): fastmod._kernels.<isa>.probe.fma_peak, measured once
    (50 ms) per level and thread count and cached. float64 gets half of float32's rate at the
    vector levels (half the lanes per FMA), the same at the scalar level."""
    from fastmod import get_isa, get_num_threads
    isa = get_isa()
    threads = get_num_threads() if threads is None else int(threads)
    key = (isa, threads)
    if key not in _PEAK:
        probe = importlib.import_module(f"fastmod._kernels.{isa}.probe")
        _PEAK[key] = float(probe.fma_peak(threads, 0.05))
    peak = _PEAK[key]
    return peak / 2 if np.dtype(dtype) == np.float64 and isa != "scalar" else peak


# ------------------------------------------------------------------------------ FLOP counts
def _gemm_flops(m, meth, args, kwargs, out):
    """(weight GEMM FLOPs, activation-activation GEMM FLOPs) of one forward call of m: Linear
    2*rows*in*out, Conv 2*N*OC*(C/groups)*k*OH*OW, MultiheadAttention its Q/K/V projections
    (weight) and the two batched products Q K^T and P V (activation); 0 for everything else
    (element-wise and normalization work is not counted)."""
    if isinstance(out, tuple):
        out = out[0]
    if meth == "forward_into":
        out = args[0] if args else kwargs["out"]
    if isinstance(m, Linear):
        rows = out.size // m.out_features
        return 2.0 * rows * m.in_features * m.out_features, 0.0
    if isinstance(m, (Conv1d, Conv2d)):
        n, oc = out.shape[0], out.shape[1]
        spatial = int(np.prod(out.shape[2:]))
        k = int(np.prod(m.kernel_size))
        return 2.0 * n * oc * (m.in_channels // m.groups) * k * spatial, 0.0
    if isinstance(m, MultiheadAttention):
        q = args[0]
        key = args[1] if len(args) > 1 and args[1] is not None else kwargs.get("key")
        key = q if key is None else key
        if m.batch_first:
            n, t, s0 = q.shape[0], q.shape[1], key.shape[1]
        else:
            n, t, s0 = q.shape[1], q.shape[0], key.shape[0]
        e = m.embed_dim
        s = s0 + (m.bias_k is not None) + bool(m.add_zero_attn)
        proj = 2.0 * n * t * e * e + 2.0 * n * s0 * e * (m.kdim + m.vdim)
        return proj, 2 * 2.0 * n * t * s * e           # Q K^T and P V over all heads
    return 0.0, 0.0


def _needs_dx(meth, args, kwargs):
    if meth == "backward_into":                 # backward_into(dy, x, dx=None, ...)
        return (args[2] if len(args) > 2 else kwargs.get("dx")) is not None
    return bool(args[1] if len(args) > 1 else kwargs.get("need_input_grad", True))


# ------------------------------------------------------------------------------ saved bytes
def _arrays(obj, out):
    if isinstance(obj, np.ndarray):
        out.append(obj)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            _arrays(v, out)
    elif isinstance(obj, dict):
        for v in obj.values():
            _arrays(v, out)


def _intervals(arrays):
    """{id of the owning buffer: [(lo, hi) byte ranges]} of the arrays (views of one buffer
    grouped, so that memory saved twice, e.g. Q, K and V as views of one QKV array, counts once)."""
    groups = defaultdict(list)
    for a in arrays:
        if a.nbytes == 0:
            continue
        base = a
        while isinstance(base.base, np.ndarray):
            base = base.base
        lo = a.__array_interface__["data"][0]
        span = sum((s - 1) * abs(st) for s, st in zip(a.shape, a.strides)) + a.itemsize
        low = lo + sum((s - 1) * st for s, st in zip(a.shape, a.strides) if st < 0)
        groups[id(base)].append((low, low + span))
    return groups


def _union_bytes(groups):
    total = 0
    for spans in groups.values():
        spans.sort()
        cur_lo, cur_hi = spans[0]
        for lo, hi in spans[1:]:
            if lo > cur_hi:
                total += cur_hi - cur_lo
                cur_lo, cur_hi = lo, hi
            else:
                cur_hi = max(cur_hi, hi)
        total += cur_hi - cur_lo
    return total


def _saved_arrays(m):
    out = []
    for entry in m.__dict__.get("_stack", ()):
        _arrays(entry[1], out)
    return out


# ------------------------------------------------------------------------------ the recorder
class _Recorder:
    """Timing wrappers and what they record: self time per (module, phase), calls, FLOPs and,
    for a trace, one event per call."""

    def __init__(self, entries):
        self.entries = entries              # [(name, module)] unique modules
        self.stack = []                     # [module index, child time]
        self.installed = []                 # (module, attribute, had one, old value)
        self.reset()
        self.recording = False              # FLOPs (the first, un-timed pass)
        self.flops = defaultdict(float)     # (index, phase) -> FLOPs per pass
        self.pending = defaultdict(list)    # index -> [(weight, activation) FLOPs] of forwards
        self.events = None                  # [(index, phase, start ns, duration ns)]

    def reset(self):
        self.self_ns = defaultdict(int)
        self.calls = defaultdict(int)

    def install(self):
        for i, (_, m) in enumerate(self.entries):
            d = m.__dict__
            for meth in _FORWARD + _BACKWARD:
                if not callable(getattr(type(m), meth, None)):
                    continue
                had = meth in d
                old = d.get(meth)
                self.installed.append((m, meth, had, old))
                d[meth] = self._wrap(i, m, meth, getattr(m, meth), meth in _FORWARD)

    def uninstall(self):
        for m, meth, had, old in reversed(self.installed):
            if had:
                m.__dict__[meth] = old
            else:
                m.__dict__.pop(meth, None)
        self.installed = []

    def _wrap(self, idx, module, meth, fn, is_forward):
        rec = self
        clock = time.perf_counter_ns

        def timed(*args, **kwargs):
            stack = rec.stack
            if stack and stack[-1][0] == idx:       # the module's own inner call
                return fn(*args, **kwargs)
            if is_forward:
                phase = "fwd" if STATE.grad_enabled else "infer"
            else:
                phase = "bwd"
            frame = [idx, 0]
            stack.append(frame)
            t0 = clock()
            try:
                out = fn(*args, **kwargs)
            finally:
                dt = clock() - t0
                stack.pop()
                if stack:
                    stack[-1][1] += dt
                key = (idx, phase)
                rec.self_ns[key] += dt - frame[1]
                rec.calls[key] += 1
                if rec.events is not None:
                    rec.events.append((idx, phase, t0, dt))
            if rec.recording:
                rec._count(idx, module, meth, phase, args, kwargs, out)
            return out

        timed.__wrapped__ = fn
        return timed

    def _count(self, idx, m, meth, phase, args, kwargs, out):
        if phase == "bwd":
            pending = self.pending[idx]
            w, a = pending.pop() if pending else (0.0, 0.0)
            dw = any(p is not None and p.requires_grad for p in m._parameters.values())
            self.flops[(idx, "bwd")] += 2 * a + w * (int(dw) + int(_needs_dx(meth, args, kwargs)))
            return
        w, a = _gemm_flops(m, meth, args, kwargs, out)
        self.flops[(idx, phase)] += w + a
        if phase == "fwd":
            self.pending[idx].append((w, a))


# ------------------------------------------------------------------------------ model state
class _Snapshot:
    """Everything a profile changes, to put back: gradients, buffers, Embedding weights that
    max_norm renormalizes, train/eval flags, saved forward state, random generators."""

    def __init__(self, model, loss):
        mods = list(model.modules())
        self.training = [(m, m.__dict__.get("training", True)) for m in mods]
        self.stacks = [(m, list(m._stack)) for m in mods]
        self.grads = []
        for p in model.parameters():
            g = p._grad
            self.grads.append((p, g, None if g is None or p._grad_zero else g.copy(),
                               p._grad_zero))
        self.buffers = [(m, name, b, b.copy()) for m in mods for name, b in m._buffers.items()
                        if isinstance(b, np.ndarray)]
        self.weights = [(m.weight, m.weight.data.copy()) for m in mods
                        if isinstance(m, Embedding) and m.max_norm is not None]
        gens = {id(_runtime._rng): _runtime._rng}
        for m in mods:
            for v in vars(m).values():
                if isinstance(v, np.random.Generator):
                    gens[id(v)] = v
        self.default_rng = _runtime._rng
        self.gens = [(g, g.bit_generator.state) for g in gens.values()]
        self.loss = loss
        self.loss_saved = getattr(loss, "_saved", None)

    def restore(self):
        for m, mode in self.training:
            m.__dict__["training"] = mode
        for m, stack in self.stacks:
            m._stack[:] = stack
        for p, g, values, zero in self.grads:
            if values is not None:
                g[...] = values
            p._grad, p._grad_zero = g, zero
        for m, name, b, values in self.buffers:
            if m._buffers.get(name) is not b:
                setattr(m, name, b)
            np.copyto(b, values)
        for p, values in self.weights:
            p.data[...] = values
        _runtime._rng = self.default_rng
        for g, state in self.gens:
            g.bit_generator.state = state
        if hasattr(self.loss, "_saved"):
            self.loss._saved = self.loss_saved


# ------------------------------------------------------------------------------ the result
class ProfileResult:
    """The per-layer table of one profile: `rows` (dicts, slowest first), `totals` (dict),
    `str(result)` the table, `to_dict()` both as plain Python values (JSON-ready)."""

    def __init__(self, rows, totals):
        self.rows, self.totals = rows, totals

    def to_dict(self):
        return {"rows": [dict(r) for r in self.rows], "totals": dict(self.totals)}

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    def __repr__(self):
        return f"<ProfileResult: {len(self.rows)} rows, {self.totals['description']}>"

    def __str__(self):
        t = self.totals
        train = t["train"]
        head = ["layer", "type", "infer ms"] + (["fwd ms", "bwd ms"] if train else []) + \
            ["GFLOP", "GFLOP/s", "% peak"] + (["saved"] if train else [])

        def ms(v, calls=1):
            return "-" if calls == 0 or v is None else f"{v:.3f}"

        def gf(v):
            return "-" if not v else f"{v / 1e9:.4f}"

        def rate(v):
            return "-" if v is None else f"{v:.1f}"

        def pct(v):
            return "-" if v is None else f"{v:.1f}"

        lines = []
        for r in self.rows + [t["total_row"]]:
            cells = [r["name"], r["type"], ms(r["infer_ms"], r["infer_calls"])]
            if train:
                cells += [ms(r["fwd_ms"], r["fwd_calls"]), ms(r["bwd_ms"], r["bwd_calls"])]
                cells += [gf(r["train_flops"]), rate(r["train_gflops_per_s"]),
                          pct(r["train_peak_pct"]), _bytes(r["saved_bytes"])]
            else:
                cells += [gf(r["infer_flops"]), rate(r["infer_gflops_per_s"]),
                          pct(r["infer_peak_pct"])]
            lines.append(cells)
        widths = [max(len(str(c)) for c in col) for col in zip(head, *lines)]
        left = {0, 1}

        def fmt(cells):
            return "  ".join(str(c).ljust(w) if i in left else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths)))

        out = [f"fastmod.profile: {t['description']}", fmt(head),
               "  ".join("-" * w for w in widths)]
        out += [fmt(c) for c in lines[:-1]]
        out.append("  ".join("-" * w for w in widths))
        out.append(fmt(lines[-1]))
        out.append("")
        out.append(f"un-instrumented: inference {t['infer_ms_uninstrumented']:.3f} ms"
                   + (f", train step {t['step_ms_uninstrumented']:.3f} ms (instrumented "
                      f"{t['step_ms']:.3f} ms: forward {t['fwd_ms']:.3f} + loss "
                      f"{t['loss_ms']:.3f} + backward {t['bwd_ms']:.3f})" if train else ""))
        out.append(f"FMA peak {t['peak_gflops']:.1f} GFLOP/s ({t['dtype']}, {t['isa']}, "
                   f"{t['threads']} thread{'s' if t['threads'] != 1 else ''}); GFLOP counts GEMM "
                   "and convolution work only" + ("; GFLOP/s and % peak of the train step "
                                                   "(forward + backward)" if train else ""))
        mem = f"peak memory (tracemalloc): inference {_bytes(t['infer_peak_bytes'])}"
        if train:
            mem += (f", train step {_bytes(t['step_peak_bytes'])}; kept for backward "
                    f"{_bytes(t['saved_bytes'])} (distinct memory)")
        out.append(mem + " -- NumPy arrays and Python objects allocated during the pass above "
                   "what was held before it; the kernels' C scratch is not included")
        out.append("'-': not called in that pass (e.g. a ReLU fused into the Linear/Conv before "
                   "it, whose row holds its time) or no GEMM work")
        return "\n".join(out)


def _bytes(n):
    if n is None:
        return "-"
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# ------------------------------------------------------------------------------ profile
def _peak_bytes(fn):
    """Peak traced memory (tracemalloc: Python objects and NumPy arrays) of fn() above what was
    traced when it started."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        fn()
        return max(0, tracemalloc.get_traced_memory()[1] - base)
    finally:
        if started:
            tracemalloc.stop()


def profile(model, x, target=None, *, loss=None, repeats=5, file=None, trace=None):
    """Per-layer time, GEMM FLOPs, share of the machine's FMA peak and memory of one inference
    and (with a target) one train step of `model` on `x`.

    Inference: ``model(x)`` under ``fastmod.no_grad()`` in eval mode. Train step (when target is
    given), in training mode: zero_grad, forward, loss, loss backward, model backward (the
    input's gradient skipped, as fastmod.fit does) -- no optimizer step. Each is run once to
    warm up, `repeats` times without instrumentation (the reference times), then `repeats`
    times instrumented; medians are reported. The model is left exactly as it was (weights,
    gradients, buffers, train/eval flags, saved state, random generators).

    Per layer (each module with work of its own: every leaf, and modules with parameters of
    their own such as MultiheadAttention; containers' own time is one row): self time of
    inference, forward and backward in ms; GFLOP of the train step (forward + backward; GEMM and
    convolution work only: Linear 2*N*in*out, Conv 2*N*OC*(C/groups)*k*OH*OW, attention's
    projections and its two batched products; backward twice the forward, less the input
    gradient the first layer skips); GFLOP/s and % of the FMA peak (fma_peak_gflops); bytes
    kept for backward (the arrays in the module's saved state after the forward, views of one
    buffer counted once). Totals: the instrumented and un-instrumented step and inference times,
    and the peak memory of each (tracemalloc: NumPy arrays and Python objects allocated during
    the pass above what was held before it; the kernels' C scratch buffers are not seen).

    Args:
        model: a fastmod Module.
        x: the input array (or a tuple of inputs).
        target: the train step's target (None: inference only).
        loss: the loss (default: CrossEntropyLoss for integer targets, MSELoss otherwise).
        repeats: timed runs per phase (median; default 5).
        file: a text stream (e.g. sys.stdout) or a path to write the table to (default: none).
        trace: a path: write a Chrome trace (JSON 'traceEvents', one 'X' event per module call
            of the last instrumented inference and train step; chrome://tracing or Perfetto).

    Returns: a ProfileResult (`rows`, `totals`, `str()` the table, `to_dict()`).

    Example:
        >>> import numpy as np, fastmod
        >>> model = fastmod.nn.Sequential(fastmod.nn.Linear(8, 4), fastmod.nn.ReLU())
        >>> r = fastmod.profile(model, np.ones((2, 8), np.float32), np.array([0, 3]), repeats=1)
        >>> [(row["name"], row["fwd_flops"]) for row in r.rows if row["type"] == "Linear"]
        [('0', 128.0)]
    """
    from fastmod import get_isa, get_num_threads
    from fastmod.losses import CrossEntropyLoss, MSELoss
    from fastmod.planned import PlannedModel

    if isinstance(model, PlannedModel):
        if target is not None:
            raise ValueError("profile: a planned model (fastmod.inference) has no train step; "
                             "profile the model itself for one")
        return _profile_planned(model, x, positive_int(repeats, "profile: repeats"), file)
    if not isinstance(model, Module):
        raise TypeError(f"profile: expected a fastmod Module, got {type(model).__name__}")
    repeats = positive_int(repeats, "profile: repeats")
    xs = x if isinstance(x, tuple) else (x,)
    train = target is not None
    if train and loss is None:
        t = np.asarray(target)
        loss = CrossEntropyLoss() if t.dtype.kind in "iu" else MSELoss()
    entries = list(model.named_modules())
    rec = _Recorder(entries)
    snap = _Snapshot(model, loss)
    clock = time.perf_counter_ns
    timing = {}

    def infer():
        model.eval()
        t0 = clock()
        with no_grad():
            model(*xs)
        timing["infer"] = clock() - t0

    def backward(dy):                           # as fastmod.fit: no gradient for the input
        model.backward(dy, need_input_grad=False)

    def step():
        model.train()
        model.zero_grad()
        t0 = clock()
        out = model(*xs)
        t1 = clock()
        loss(out, target)
        t2 = clock()
        dy = loss.backward()
        t3 = clock()
        backward(dy)
        t4 = clock()
        timing.update(fwd=t1 - t0, loss_fwd=t2 - t1, loss_bwd=t3 - t2, bwd=t4 - t3, step=t4 - t0)
        if rec.events is not None:              # the loss in the trace (index None)
            rec.events += [(None, "fwd", t1, t2 - t1), (None, "bwd", t2, t3 - t2)]

    def runs(n, per_run=None):
        """Median inference time and the parts of the median train step (one run's, so that
        they add up), in ms."""
        infers, steps = [], []
        for _ in range(n):
            rec.reset()
            infer()
            infers.append(timing["infer"])
            if train:
                step()
                steps.append({k: timing[k] for k in ("fwd", "loss_fwd", "loss_bwd", "bwd", "step")})
            if per_run is not None:
                per_run()
        out = {"infer": statistics.median(infers) / 1e6}
        if steps:
            mid = sorted(steps, key=lambda t: t["step"])[(len(steps) - 1) // 2]
            out.update({k: v / 1e6 for k, v in mid.items()})
        return out

    try:
        # un-instrumented: warm-up, then the reference times
        runs(1)
        plain = runs(repeats)
        infer_peak = _peak_bytes(infer)
        step_peak = _peak_bytes(step) if train else None

        rec.install()
        try:
            # one recording pass (FLOPs, bytes kept for backward), then the timed ones
            rec.recording = True
            rec.reset()
            infer()
            saved, saved_total, loss_saved = {}, 0, 0
            if train:
                model.train()
                model.zero_grad()
                out = model(*xs)
                groups_all = defaultdict(list)
                for i, (_, m) in enumerate(entries):
                    g = _intervals(_saved_arrays(m))
                    saved[i] = _union_bytes({k: list(v) for k, v in g.items()})
                    for k, v in g.items():
                        groups_all[k].extend(v)
                saved_total = _union_bytes(groups_all)
                loss(out, target)
                loss_saved = _union_bytes(_intervals(
                    [a for a in (getattr(loss, "_saved", None) or ()) if isinstance(a, np.ndarray)]))
                backward(loss.backward())
            rec.recording = False
            per = defaultdict(list)

            def collect():
                for key, ns in rec.self_ns.items():
                    per[key].append(ns)
                for key, c in rec.calls.items():
                    calls[key] = c

            calls = {}
            inst = runs(repeats, collect)
            if trace is not None:
                rec.events = []
                runs(1)                             # the traced run
                events = rec.events
                rec.events = None
        finally:
            rec.uninstall()
    finally:
        snap.restore()

    dtype = model.dtype
    threads = get_num_threads()
    peak = fma_peak_gflops(dtype, threads)

    def med(idx, phase):
        v = per.get((idx, phase))
        if not v:
            return 0.0
        v = v + [0] * (repeats - len(v))           # a run where the module was not called
        return statistics.median(v) / 1e6

    def rate(flops, ms):
        if not flops or not ms:
            return None, None
        r = flops / (ms * 1e-3) / 1e9
        return r, 100.0 * r / peak

    rows, containers = [], []
    for i, (name, m) in enumerate(entries):
        row = {"name": name or "(model)", "type": type(m).__name__,
               "infer_ms": med(i, "infer"), "fwd_ms": med(i, "fwd"), "bwd_ms": med(i, "bwd"),
               "infer_calls": calls.get((i, "infer"), 0), "fwd_calls": calls.get((i, "fwd"), 0),
               "bwd_calls": calls.get((i, "bwd"), 0),
               "infer_flops": rec.flops[(i, "infer")], "fwd_flops": rec.flops[(i, "fwd")],
               "bwd_flops": rec.flops[(i, "bwd")], "saved_bytes": saved.get(i, 0) if train else None}
        row["train_flops"] = row["fwd_flops"] + row["bwd_flops"]
        row["infer_gflops_per_s"], row["infer_peak_pct"] = rate(row["infer_flops"], row["infer_ms"])
        row["train_gflops_per_s"], row["train_peak_pct"] = rate(
            row["train_flops"], row["fwd_ms"] + row["bwd_ms"])
        leaf = not any(c is not None for c in m._modules.values())
        own = any(p is not None for p in m._parameters.values())
        (rows if leaf or own else containers).append(row)

    def combined(name, typ, items, **extra):
        row = {"name": name, "type": typ}
        for k in ("infer_ms", "fwd_ms", "bwd_ms", "infer_flops", "fwd_flops", "bwd_flops",
                  "train_flops"):
            row[k] = sum(r[k] for r in items)
        for k in ("infer_calls", "fwd_calls", "bwd_calls"):
            row[k] = sum(r[k] for r in items)
        row["saved_bytes"] = sum(r["saved_bytes"] for r in items) if train else None
        row.update(extra)
        row["infer_gflops_per_s"], row["infer_peak_pct"] = rate(row["infer_flops"], row["infer_ms"])
        row["train_gflops_per_s"], row["train_peak_pct"] = rate(
            row["train_flops"], row["fwd_ms"] + row["bwd_ms"])
        return row

    if containers:
        rows.append(combined("(containers)", f"own time of {len(containers)}", containers))
    if train:
        rows.append({"name": "(loss)", "type": type(loss).__name__, "infer_ms": None,
                     "fwd_ms": inst["loss_fwd"], "bwd_ms": inst["loss_bwd"], "infer_calls": 0,
                     "fwd_calls": 1, "bwd_calls": 1, "infer_flops": 0.0, "fwd_flops": 0.0, "bwd_flops": 0.0,
                     "train_flops": 0.0, "saved_bytes": loss_saved, "infer_gflops_per_s": None,
                     "infer_peak_pct": None, "train_gflops_per_s": None, "train_peak_pct": None})
    key = (lambda r: r["fwd_ms"] + r["bwd_ms"]) if train else (lambda r: r["infer_ms"] or 0.0)
    rows.sort(key=key, reverse=True)

    # the total row: the measured passes (not the sum of the rows, which leaves out the time
    # between the wrappers)
    total = combined("total", f"{len(entries)} modules", [r for r in rows if r["name"] != "(loss)"])
    total.update(infer_ms=inst["infer"], infer_calls=1)
    if train:
        total.update(fwd_ms=inst["fwd"] + inst["loss_fwd"], bwd_ms=inst["loss_bwd"] + inst["bwd"],
                     fwd_calls=1, bwd_calls=1, saved_bytes=saved_total + loss_saved)
    total["infer_gflops_per_s"], total["infer_peak_pct"] = rate(total["infer_flops"], total["infer_ms"])
    total["train_gflops_per_s"], total["train_peak_pct"] = rate(
        total["train_flops"], total["fwd_ms"] + total["bwd_ms"]) if train else (None, None)
    shapes = ", ".join(str(getattr(a, "shape", "?")) for a in xs)
    totals = {
        "description": (f"{type(model).__name__} on {shapes} {np.dtype(dtype)}, "
                        f"{'inference and train step' if train else 'inference'}, median of "
                        f"{repeats}, {threads} thread{'s' if threads != 1 else ''}"),
        "train": train, "repeats": repeats, "dtype": str(np.dtype(dtype)), "isa": get_isa(),
        "threads": threads, "peak_gflops": peak,
        "infer_ms": inst["infer"], "infer_ms_uninstrumented": plain["infer"],
        "step_ms": inst.get("step"), "step_ms_uninstrumented": plain.get("step"),
        "fwd_ms": inst.get("fwd"), "loss_ms": inst["loss_fwd"] + inst["loss_bwd"] if train else None, "bwd_ms": inst.get("bwd"),
        "infer_flops": total["infer_flops"], "train_flops": total["train_flops"] if train else None,
        "infer_peak_bytes": infer_peak, "step_peak_bytes": step_peak,
        "saved_bytes": total["saved_bytes"], "total_row": total,
        "loss": type(loss).__name__ if train else None,
    }
    result = ProfileResult(rows, totals)
    if trace is not None:
        _write_trace(trace, events, entries, result)
    if file is not None:
        text = str(result) + "\n"
        if isinstance(file, (str, os.PathLike)):
            with open(file, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            file.write(text)
    return result


def _profile_planned(planned, x, repeats, file):
    """profile() of a fastmod.inference plan: one row per step (its kind and the module paths
    it covers, e.g. 'Conv  0+bn+relu'), inference only."""
    from fastmod import get_isa, get_num_threads
    runs = [planned.run_timed(x)[1] for _ in range(repeats + 1)][1:]
    t_plain = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        planned(x)
        t_plain.append(time.perf_counter_ns() - t0)
    dtype = planned.dtype
    threads = get_num_threads()
    peak = fma_peak_gflops(dtype, threads)
    rows = []
    for i, (step, src, out, _) in enumerate(runs[0]):
        ms = statistics.median(r[i][3] for r in runs) / 1e6
        if step.kind == "Linear":
            flops = 2.0 * out.size * step.w.shape[1]
        elif step.kind == "Conv":
            c = step.conv
            flops = 2.0 * out.size * (c.in_channels // c.groups) * int(np.prod(c.kernel_size))
        elif step.kind == "module":
            w, a = _gemm_flops(step.module, "forward", (src,), {}, out)
            flops = w + a
        else:
            flops = 0.0
        gfs = flops / (ms * 1e-3) / 1e9 if flops and ms else None
        rows.append({"name": step.label or "(model)", "type": step.kind if step.kind != "module"
                     else type(step.module).__name__, "infer_ms": ms, "infer_calls": 1,
                     "infer_flops": flops, "infer_gflops_per_s": gfs,
                     "infer_peak_pct": None if gfs is None else 100.0 * gfs / peak})
    rows.sort(key=lambda r: r["infer_ms"], reverse=True)
    total_ms = statistics.median(sum(s[3] for s in r) for r in runs) / 1e6
    flops = sum(r["infer_flops"] for r in rows)
    gfs = flops / (total_ms * 1e-3) / 1e9 if flops else None
    total = {"name": "total", "type": f"{len(rows)} steps", "infer_ms": total_ms, "infer_calls": 1,
             "infer_flops": flops, "infer_gflops_per_s": gfs,
             "infer_peak_pct": None if gfs is None else 100.0 * gfs / peak}
    shape = getattr(x, "shape", "?")
    totals = {"description": (f"planned {type(planned.model).__name__} on {shape} "
                              f"{np.dtype(dtype)}, inference, {len(rows)} plan steps, median of "
                              f"{repeats}, {threads} thread{'s' if threads != 1 else ''}"),
              "train": False, "repeats": repeats, "dtype": str(np.dtype(dtype)), "isa": get_isa(),
              "threads": threads, "peak_gflops": peak, "infer_ms": total_ms,
              "infer_ms_uninstrumented": statistics.median(t_plain) / 1e6,
              "infer_flops": flops, "infer_peak_bytes": _peak_bytes(lambda: planned(x)),
              "total_row": total, "loss": None, "saved_bytes": None, "step_ms": None,
              "step_ms_uninstrumented": None, "fwd_ms": None, "loss_ms": None, "bwd_ms": None,
              "train_flops": None, "step_peak_bytes": None}
    result = ProfileResult(rows, totals)
    if file is not None:
        text = str(result) + "\n"
        if isinstance(file, (str, os.PathLike)):
            with open(file, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            file.write(text)
    return result


def _write_trace(path, events, entries, result):
    """Chrome trace event format: one complete ('X') event per module call, µs timestamps."""
    cat = {"infer": "inference", "fwd": "forward", "bwd": "backward"}
    t0 = min((e[2] for e in events), default=0)
    pid = os.getpid()
    out = [{"name": "process_name", "ph": "M", "pid": pid, "tid": 0,
            "args": {"name": "fastmod.profile"}},
           {"name": "thread_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": "model"}}]
    loss = result.totals["loss"]
    for idx, phase, start, dur in sorted(events, key=lambda e: (e[2], -e[3])):
        if idx is None:
            name, typ = "(loss)", loss
        else:
            name, typ = entries[idx][0] or "(model)", type(entries[idx][1]).__name__
        out.append({"name": f"{name} {cat[phase]}", "cat": cat[phase], "ph": "X",
                    "ts": (start - t0) / 1e3, "dur": dur / 1e3, "pid": pid, "tid": 0,
                    "args": {"module": name, "type": typ}})
    doc = {"traceEvents": out, "displayTimeUnit": "ms",
           "otherData": {"fastmod.profile": result.totals["description"]}}
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    os.replace(tmp, path)
