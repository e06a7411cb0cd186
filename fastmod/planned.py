"""fastmod.inference (this module: fastmod.planned): a trained model planned once for inference.

    planned = fastmod.inference(model)       # model is not modified and stays trainable
    y = planned(x)                           # == model.eval()(x) under no_grad (float rounding)
    planned.refreeze()                       # after more training: picks up the new weights

Planning walks the module tree once and writes a flat program of steps over numbered
registers (register 0 is the input):
- a BatchNorm in eval mode right after a Conv / Linear is folded into it (w' = w * s,
  b' = (b - mean) * s + beta, s = gamma / sqrt(var + eps), computed in float64);
- a ReLU right after a Conv / Linear (folded or not) runs inside its kernel call;
- float32 Linear weights are packed once (fm_pgemm.h: transposed into register-block panels,
  bias padded): a batch runs the prepacked GEMM, bias and ReLU in its registers;
- a Residual's skip and a Parallel's sum are added in place into the branch's fresh output,
  ResidualBlock runs as its two fused Linear calls and one in-place add, Flatten is a view,
  Identity and Dropout (eval) are nothing;
- a lone ReLU is one np.maximum into its planned buffer;
- any other module (a BatchNorm after something else, attention, pools, norms, a user's
  module, ...) runs as it is: an eval-mode
  copy taken at planning time, called under no_grad (correct, and allocating as it always does).
Every register's buffer is allocated on the first call with a given input shape and dtype and
reused by every later call with that shape (an arena per shape, per Python thread: planned
models may be called from several threads at once). Each call returns a fresh copy of the
result, so a later call never overwrites what an earlier one returned.
"""
import copy
import threading
import time

import numpy as np

from fastmod._kernels import activations as _ka
from fastmod._kernels import conv as _kconv
from fastmod._kernels import linear as _kl
from fastmod._runtime import no_grad
from fastmod.nn import (BatchNorm1d, BatchNorm2d, BNResBlock, Conv1d, Conv2d, Dropout, Flatten,
                        GroupNorm, Identity, Linear, Parallel, ReLU, Residual, ResidualBlock,
                        Sequential)
from fastmod.nn.module import F32, Module, aligned_empty, elementwise_activation

__all__ = ["inference", "PlannedModel"]


# ------------------------------------------------------------------------------ steps
# float32 layers with at least this many rows run the prepacked GEMM (weights packed once, at
# planning); fewer rows (batch 1) keep the Linear kernel's GEMV path, which reads w as it is
PACKED_MIN_ROWS = 8
# ... and more outputs than this: up to 16 the Linear kernel's skinny loops are faster (2
# threads, 128 x 512 -> 10: 10.4 us vs 16.6 us packed; 128 x 256 -> 256: 78.6 vs 51.6 packed)
PACKED_MIN_OUT = 16


def _aligned_copy(a):
    """A C-contiguous copy of a starting at a 64-byte boundary (nn.module.aligned_empty: the
    batch-1 GEMV of mlp_b1_infer ran 25% slower on a copy 32 bytes off)."""
    out = aligned_empty(a.shape, a.dtype)
    np.copyto(out, a)
    return out


class _Linear:
    """out = x W^T + b (then ReLU), one kernel call into the planned buffer: float32 through
    the weights packed at planning time (_kl.linear_forward_packed), else the Linear kernel."""
    kind = "Linear"

    def __init__(self, src, dst, w, b, relu, label):
        self.src, self.dst, self.w, self.b, self.relu, self.label = src, dst, w, b, relu, label
        self.out_features = w.shape[0]
        self.wk = self.bp = None
        if w.dtype == F32 and w.shape[0] > PACKED_MIN_OUT:
            wshape, bshape = _kl.packed_shape(w.shape[0], w.shape[1])
            self.wk, self.bp = aligned_empty(wshape, F32), aligned_empty(bshape, F32)
            _kl.pack_weights(self.wk, self.bp, w, b)

    def out_shape(self, shape):
        return shape[:-1] + (self.out_features,)

    def run(self, regs, arena):
        x = regs[self.src]
        w = self.w
        if x.ndim == 0 or x.shape[-1] != w.shape[1] or x.dtype != w.dtype:
            raise (TypeError if x.ndim and x.shape[-1] == w.shape[1] else ValueError)(
                f"fastmod.inference: {self.label}: expected {w.dtype} input of shape "
                f"(*, {w.shape[1]}), got {x.dtype} {x.shape}")
        x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]))
        y = arena.get(self.dst, self.out_shape(x.shape), x.dtype)
        n, i, o = x2.shape[0], x2.shape[1], self.out_features
        if self.wk is not None and n >= PACKED_MIN_ROWS:
            _kl.linear_forward_packed(y.reshape(-1, o), x2, self.wk, self.bp, o, self.relu)
            regs[self.dst] = y
            return
        scratch = None
        if x.dtype == F32 and n >= 32 and _kl.forward_scratch_ok(n, i, o):
            scratch = arena.get((self.dst, "scratch"), (n * o,), F32)
        _kl.linear_forward(y.reshape(-1, o), x2, self.w, self.b, self.relu, scratch)
        regs[self.dst] = y


class _LinearChain:
    """Consecutive float32 _Linear steps (each reading the one before): at fewer rows than
    PACKED_MIN_ROWS (batch 1) one kernel call runs them all (linear_chain_forward: no Python
    between the layers); at more, each step's own run (the packed GEMM)."""
    kind = "Linear"

    def __init__(self, steps):
        self.steps = steps
        self.src, self.dst = steps[0].src, steps[-1].dst
        self.label = " > ".join(st.label for st in steps)

    def out_shape(self, shape):
        return shape[:-1] + (self.steps[-1].out_features,)

    def run(self, regs, arena):
        x = regs[self.src]
        first = self.steps[0]
        if x.ndim == 0 or x.dtype != F32 or x.shape[-1] != first.w.shape[1] or \
                x.size // max(x.shape[-1], 1) >= PACKED_MIN_ROWS or not x.flags.c_contiguous:
            for st in self.steps:
                st.run(regs, arena)
            return
        x2 = x.reshape(-1, x.shape[-1])
        key = (id(self), "chain")
        cached = arena.bufs.get(key)          # the layers' tuple: the arena's buffers, per shape
        if cached is None:
            layers, outs, shape = [], [], x.shape
            for st in self.steps:
                shape = st.out_shape(shape)
                y = arena.get(st.dst, shape, F32)
                outs.append(y)
                layers.append((y.reshape(-1, st.out_features), st.w, st.b, st.relu))
            cached = arena.bufs[key] = (tuple(layers), tuple(outs))
        layers, outs = cached
        for st, y in zip(self.steps, outs):
            regs[st.dst] = y
        _kl.linear_chain_forward(x2, layers)


class _ConvChain:
    """Consecutive float32 _Conv steps, each reading the one before (an intermediate read by
    nothing outside the chain but the chain's own skips), run depth first: one kernel call in
    which each thread takes its images through every layer while they are in its cache
    (conv2d_chain_forward)."""
    kind = "Conv"

    def __init__(self, steps, dead):
        self.steps, self.dead = steps, dead
        self.src, self.dst = steps[0].src, steps[-1].dst
        self.label = " > ".join(st.label for st in steps)

    def run(self, regs, arena):
        """The kernel's layer tuples (buffers, views, the weights packed once per shape; each
        layer's shapes checked by its forward_into geometry), then one call."""
        layers, cur = [], regs[self.src]
        for st in self.steps:              # (a skip from an earlier layer: in regs already)
            conv = st.conv
            H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, _ = \
                conv._raw_geometry(cur, "forward_into")
            y, r, pk = st.prepare(regs, arena, cur)
            b = conv.bias
            layers.append((conv._as4(y), conv._as4(cur),
                           conv.weight.data.reshape(conv.out_channels, -1, KH, KW),
                           None if b is None else b.data, pk[0], pk[1], st.activation == "relu",
                           SH, SW, PH, PW, DH, DW, st.scale, st.shift,
                           None if r is None else conv._as4(r)))
            cur = y
        _kconv.conv2d_chain_forward(tuple(layers), dead=self.dead)


class _Conv:
    """out = conv(x) + b (then ReLU), then out * scale + shift (a BatchNorm after the ReLU),
    then out + regs[res] (a skip connection): one forward_into of a frozen copy (a BatchNorm
    before the ReLU folded into its weights), the epilogues on each image while it is in
    cache."""
    kind = "Conv"

    def __init__(self, src, dst, conv, relu, label):
        self.src, self.dst, self.conv, self.label = src, dst, conv, label
        self.activation = "relu" if relu else None
        self.scale = self.shift = self.res = None
        self.packed = {}                          # (x.shape, x.strides) -> conv.pack_forward

    def out_shape(self, shape):
        return self.conv.output_shape(shape)

    def prepare(self, regs, arena, x):
        """(y, residual, packed) for input x: the planned output buffer (set as regs[dst]), the
        skip's array (checked, C-contiguous samples) or None, and the weights packed once per
        input shape."""
        y = arena.get(self.dst, self.out_shape(x.shape), x.dtype)
        r = None
        if self.res is not None:
            r = regs[self.res]
            if r.shape != y.shape or r.dtype != y.dtype:
                raise ValueError(f"fastmod.inference: {self.label}: cannot add shapes {y.shape} "
                                 f"and {r.shape}")
            if not r[0].flags.c_contiguous:
                r = np.ascontiguousarray(r)
        key = (x.shape, x.strides, x.dtype.str)
        pk = self.packed.get(key)
        if pk is None:
            pk = self.packed[key] = self.conv.pack_forward(y, x)   # (64-byte aligned)
        regs[self.dst] = y
        return y, r, pk

    def run(self, regs, arena):
        x = regs[self.src]
        y, r, pk = self.prepare(regs, arena, x)
        self.conv.forward_into(y, x, activation=self.activation, scale=self.scale,
                               shift=self.shift, residual=r, prepacked=pk)


_RELU = _ka.KIND["relu"]


class _Relu:
    """max(x, 0) through the activation kernel (threads, vectors): in place when the planner
    found x's buffer dead after this step (_Planner.finish), else into the planned buffer."""
    kind = "ReLU"

    def __init__(self, src, dst, label):
        self.src, self.dst, self.label = src, dst, label
        self.inplace = False

    def run(self, regs, arena):
        x = regs[self.src]
        if not (x.flags.c_contiguous and x.dtype in (np.float32, np.float64)):
            y = arena.get(self.dst, x.shape, x.dtype)
            np.maximum(x, 0, out=y)
        else:
            y = x if self.inplace else arena.get(self.dst, x.shape, x.dtype)
            _ka.activation_forward(_RELU, y, x)
        regs[self.dst] = y


class _AddInto:
    """regs[dst] += regs[other] in place (dst is a fresh buffer of this program)."""
    kind = "Add"

    def __init__(self, dst, other, label):
        self.dst, self.other, self.label = dst, other, label

    def run(self, regs, arena):
        y, z = regs[self.dst], regs[self.other]
        if y.shape != z.shape:
            raise ValueError(f"fastmod.inference: {self.label}: cannot add shapes {y.shape} "
                             f"and {z.shape}")
        y += z


class _Concat:
    kind = "Concat"

    def __init__(self, srcs, dst, dim, label):
        self.srcs, self.dst, self.dim, self.label = srcs, dst, dim, label

    def run(self, regs, arena):
        xs = [regs[s] for s in self.srcs]
        d = self.dim % xs[0].ndim
        shape = list(xs[0].shape)
        shape[d] = sum(x.shape[d] for x in xs)
        y = arena.get(self.dst, tuple(shape), xs[0].dtype)
        np.concatenate(xs, axis=d, out=y)
        regs[self.dst] = y


class _View:
    """Flatten: a view of the input register, no copy."""
    kind = "Flatten"

    def __init__(self, src, dst, start, end, label):
        self.src, self.dst, self.start, self.end, self.label = src, dst, start, end, label

    def run(self, regs, arena):
        x = regs[self.src]
        nd = x.ndim
        s, e = self.start % nd, self.end % nd
        regs[self.dst] = x.reshape(x.shape[:s] + (-1,) + x.shape[e + 1:])


class _Module:
    """A module the planner does not rewrite: its eval-mode copy, called under no_grad."""
    kind = "module"

    def __init__(self, src, dst, module, label):
        self.src, self.dst, self.module, self.label = src, dst, module, label

    def run(self, regs, arena):
        regs[self.dst] = self.module(regs[self.src])


# ------------------------------------------------------------------------------ planning
def _bn_scale_shift(bn):
    """(scale, shift) float64 of an eval-mode BatchNorm; None when it has no running statistics."""
    if bn.running_mean is None or bn.running_var is None:
        return None
    scale = 1.0 / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
    shift = -bn.running_mean.astype(np.float64) * scale
    if bn.weight is not None:
        scale = scale * bn.weight.data.astype(np.float64)
        shift = shift * bn.weight.data.astype(np.float64) + bn.bias.data.astype(np.float64)
    return scale, shift


def _plain(m):
    """True when m is exactly the built-in class (a subclass may compute something else)."""
    return type(m) in (Sequential, Residual, Parallel, ResidualBlock, BNResBlock, Linear, Conv1d, Conv2d,
                       BatchNorm1d, BatchNorm2d, GroupNorm, ReLU, Flatten, Identity, Dropout)


def _read_counts(steps):
    """{register: how many times the steps read it} (an _AddInto reads the buffer it adds into)."""
    reads = {}
    for st in steps:
        for a in ("src", "other", "res"):
            r = getattr(st, a, None)
            if r is not None:
                reads[r] = reads.get(r, 0) + 1
        for r in getattr(st, "srcs", ()):
            reads[r] = reads.get(r, 0) + 1
        if type(st) is _AddInto:
            reads[st.dst] = reads.get(st.dst, 0) + 1
    return reads


def _chain_convs(steps, result):
    """steps with each run of float32 _Conv steps, each reading the previous one's output, as
    one _ConvChain (depth first). An intermediate that nothing but the next convolution reads
    (and not the result) is marked dead: between two implicit-GEMM layers the kernel then hands
    it over in the next layer's layout without writing it (conv2d_chain_forward's dead)."""
    out, run = [], []
    reads = _read_counts(steps)
    reads[result] = reads.get(result, 0) + 1

    def flush():
        if len(run) > 1:
            out.append(_ConvChain(list(run), tuple(reads.get(st.dst, 0) == 1
                                                   for st in run[:-1]) + (False,)))
        else:
            out.extend(run)
        run.clear()

    for st in steps:
        ok = type(st) is _Conv and st.conv.weight.data.dtype == F32
        if ok and run and run[-1].dst == st.src:
            run.append(st)
            continue
        flush()
        if ok:
            run.append(st)
        else:
            out.append(st)
    flush()
    return out


class _Planner:
    def __init__(self):
        self.steps, self.nreg, self.fresh = [], 1, set()     # fresh: buffers this program owns

    def reg(self):
        self.nreg += 1
        self.fresh.add(self.nreg - 1)
        return self.nreg - 1

    def module(self, m, src, label):
        if not _plain(m) or m.__dict__.get("_observed"):
            return self.fallback(m, src, label)
        t = type(m)
        if t is Sequential:
            return self.sequence(list(m._modules.items()), src, label)
        if t in (Identity, Dropout):
            return src
        if t is Flatten:
            dst = self.reg()
            self.fresh.discard(dst)                           # a view of src, not a buffer
            self.steps.append(_View(src, dst, m.start_dim, m.end_dim, label))
            return dst
        if t is Residual:
            out = self.module(m.fn, src, f"{label}.fn")
            return self.add_into(out, src, label)
        if t is Parallel:
            outs = [self.module(b, src, f"{label}.{name}") for name, b in m._modules.items()]
            if m.combine == "sum":
                out = outs[0]
                for o in outs[1:]:
                    out = self.add_into(out, o, label)
                return out
            dst = self.reg()
            self.steps.append(_Concat(outs, dst, m.dim, label))
            return dst
        if t is ResidualBlock and elementwise_activation(m.act_inner) == "relu" == \
                elementwise_activation(m.act_outer):
            a = self.linear(m.mm2, None, True, src, f"{label}.mm2")
            h = self.linear(m.mm1, None, True, a, f"{label}.mm1")
            return self.add_into(h, src, label)
        if t is BNResBlock and elementwise_activation(m.act1) == "relu" == \
                elementwise_activation(m.act2) and _bn_scale_shift(m.bn1) is not None \
                and _bn_scale_shift(m.bn2) is not None:
            # bn2(relu(conv2(bn1(relu(conv1(x)))))) + x: the BatchNorms follow the ReLUs, so
            # they cannot be folded into the convolutions before them
            # -- they become the epilogues of those convolutions, with the skip's add
            h = self.conv(m.conv1, None, True, src, f"{label}.conv1")
            self.post_bn(m.bn1, f"{label}.bn1")
            h = self.conv(m.conv2, None, True, h, f"{label}.conv2")
            self.post_bn(m.bn2, f"{label}.bn2")
            return self.add_into(h, src, label)
        if t is ReLU:
            dst = self.reg()
            self.steps.append(_Relu(src, dst, label))
            return dst
        if t is GroupNorm:                        # runs as it is; its output is a new array
            return self.fallback(m, src, label, fresh_output=True)
        if t in (BatchNorm1d, BatchNorm2d):
            # a BatchNorm after anything else runs as it is: its eval kernel is one pass (a
            # NumPy scale-and-shift took two: bnresnet_b32 inference 8.6 ms planned vs 6.8
            # eager); its output is a new array, so a skip may be added into it in place
            return self.fallback(m, src, label, fresh_output=True)
        if t is Linear:
            return self.linear(m, None, False, src, label)
        if t in (Conv1d, Conv2d):
            return self.conv(m, None, False, src, label)
        return self.fallback(m, src, label)

    def sequence(self, items, src, label):
        i, n = 0, len(items)
        while i < n:
            name, m = items[i]
            sub = f"{label}.{name}" if label else name
            if type(m) in (Linear, Conv1d, Conv2d) and not m.__dict__.get("_observed") and \
                    (type(m) is Linear or m.padding_mode == "zeros"):
                bn, relu, j = None, False, i + 1
                # folding a BatchNorm into a Linear is left out: BatchNorm1d normalizes dim 1,
                # the Linear's features are the last dim (the same only for 2-D inputs)
                if j < n and type(m) is not Linear and \
                        type(items[j][1]) is (BatchNorm1d if type(m) is Conv1d else BatchNorm2d) \
                        and not items[j][1].__dict__.get("_observed") \
                        and _bn_scale_shift(items[j][1]) is not None:
                    bn, j = items[j][1], j + 1
                if j < n and type(items[j][1]) is ReLU and not items[j][1].__dict__.get("_observed"):
                    relu, j = True, j + 1
                src = (self.linear if type(m) is Linear else self.conv)(m, bn, relu, src, sub)
                # a BatchNorm after the ReLU: the convolution's epilogue
                if relu and type(m) is not Linear and j < n and \
                        type(items[j][1]) is (BatchNorm1d if type(m) is Conv1d else BatchNorm2d) \
                        and not items[j][1].__dict__.get("_observed") \
                        and _bn_scale_shift(items[j][1]) is not None:
                    self.post_bn(items[j][1], f"{label}.{items[j][0]}" if label else items[j][0])
                    j += 1
                i = j
                continue
            src = self.module(m, src, sub)
            i += 1
        return src

    def linear(self, m, bn, relu, src, label):
        w = _aligned_copy(m.weight.data)
        b = m.bias.data.copy() if m.bias is not None else None
        dst = self.reg()
        self.steps.append(_Linear(src, dst, w, b, relu, label + ("+relu" if relu else "")))
        return dst

    def conv(self, m, bn, relu, src, label):
        if m.padding_mode != "zeros":
            return self.fallback(m, src, label)
        c = copy.deepcopy(m)
        if bn is not None or c.bias is None:
            from fastmod.nn import Parameter
            scale, shift = _bn_scale_shift(bn) if bn is not None else (np.ones(c.out_channels),
                                                                       np.zeros(c.out_channels))
            w = m.weight.data.astype(np.float64)
            b = m.bias.data.astype(np.float64) if m.bias is not None else np.zeros(c.out_channels)
            dt = m.weight.data.dtype
            c.weight.data[...] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(dt)
            if c.bias is None:
                c.bias = Parameter(np.zeros(c.out_channels, dt))
            c.bias.data[...] = (b * scale + shift).astype(dt)
        c.eval()
        dst = self.reg()
        self.steps.append(_Conv(src, dst, c, relu, label + ("+bn" if bn is not None else "")
                                + ("+relu" if relu else "")))
        return dst

    def post_bn(self, bn, label):
        """The eval-mode BatchNorm bn applied to the output of the step just planned (a _Conv
        with a ReLU) as its epilogue."""
        step = self.steps[-1]
        scale, shift = _bn_scale_shift(bn)
        dt = step.conv.weight.data.dtype
        step.scale, step.shift = scale.astype(dt), shift.astype(dt)
        step.label += f"+{label.rsplit('.', 1)[-1]}"

    def chain_linears(self):
        """The steps with each run of float32 _Linear steps -- each reading the previous one's
        output, which nothing else reads -- as one _LinearChain (batch 1 in one kernel call)."""
        reads = _read_counts(self.steps)
        out, run = [], []
        for st in self.steps + [None]:
            if type(st) is _Linear and st.w.dtype == F32 and run and run[-1].dst == st.src \
                    and reads.get(st.src, 0) == 1:
                run.append(st)
                continue
            if len(run) > 1:
                out.append(_LinearChain(run))
            else:
                out.extend(run)
            run = [st] if type(st) is _Linear and st.w.dtype == F32 else []
            if st is not None and not run:
                out.append(st)
        return out

    def finish(self, out):
        """Mark the ReLUs that may overwrite their input: a buffer of this program (not the
        caller's x) that no later step reads, directly or through a view (a Flatten, or a
        fallback module's output, which may alias its input), and that is not the result."""
        root = {0: 0}
        defined = {0: -1}
        reads = []
        for i, st in enumerate(self.steps):
            r = [getattr(st, a) for a in ("src", "other", "res") if getattr(st, a, None) is not None]
            r += list(getattr(st, "srcs", ()))
            if type(st) is _AddInto:
                r.append(st.dst)
            reads.append(r)
            alias = type(st) in (_View, _Module, _Relu)     # (every ReLU as if in place)
            if st.dst not in root:
                root[st.dst] = root.get(st.src, st.src) if alias else st.dst
                defined[st.dst] = i
        for i, st in enumerate(self.steps):
            if type(st) is not _Relu or st.src not in self.fresh:
                continue
            base = root.get(st.src, st.src)
            if base == 0:
                continue
            group = {q for q, b in root.items() if b == base and defined[q] < i}
            if out in group or any(q in group for r in reads[i + 1:] for q in r):
                continue
            st.inplace = True

    def add_into(self, out, other, label):
        last = self.steps[-1] if self.steps else None
        if type(last) is _Conv and last.dst == out and last.res is None and out != other:
            last.res = other                      # the skip added in the convolution's epilogue
            last.label += "+add"
            return out
        if out not in self.fresh:                 # the input or a view: add into a new buffer
            dst = self.reg()
            self.steps.append(_Copy(out, dst, label))
            out = dst
        self.steps.append(_AddInto(out, other, label))
        return out

    def fallback(self, m, src, label, fresh_output=False):
        c = copy.deepcopy(m)
        c.eval()
        dst = self.reg()
        if not fresh_output:
            self.fresh.discard(dst)               # the module's own output (may alias its input)
        self.steps.append(_Module(src, dst, c, label or type(m).__name__))
        return dst


class _Copy:
    kind = "Copy"

    def __init__(self, src, dst, label):
        self.src, self.dst, self.label = src, dst, label

    def run(self, regs, arena):
        x = regs[self.src]
        y = arena.get(self.dst, x.shape, x.dtype)
        np.copyto(y, x)
        regs[self.dst] = y


class _Arena:
    """The buffers of one (input shape, dtype): allocated on first use, then reused."""

    def __init__(self):
        self.bufs = {}

    def get(self, key, shape, dtype):
        b = self.bufs.get(key)
        if b is None or b.shape != shape or b.dtype != dtype:
            b = self.bufs[key] = aligned_empty(shape, dtype)    # (a cache line per row start)
        return b


# ------------------------------------------------------------------------------ the model
class PlannedModel:
    """What fastmod.inference returns: `planned(x)` is `model.eval()(x)` under no_grad."""

    def __init__(self, model):
        if not isinstance(model, Module):
            raise TypeError(f"fastmod.inference: expected a fastmod Module, got {type(model).__name__}")
        self.model = model
        self._local = threading.local()
        self.refreeze()

    def refreeze(self):
        """Plan again from the model's current weights (after more training); returns self."""
        p = _Planner()
        out = p.module(self.model, 0, "")
        p.finish(out)
        self.steps, self.out, self.nreg = tuple(p.steps), out, p.nreg
        self._program = tuple(_chain_convs(p.chain_linears(), out))   # what a call runs
        self.dtype = self.model.dtype
        self._generation = getattr(self, "_generation", 0) + 1
        return self

    def __call__(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"fastmod.inference: expected a numpy.ndarray input, got {type(x).__name__}")
        if x.dtype.kind == "f" and x.dtype != self.dtype:
            raise TypeError(f"fastmod.inference: expected {self.dtype} input like the model's "
                            f"weights, got {x.dtype}")
        x = np.ascontiguousarray(x)
        local = self._local
        arenas = getattr(local, "arenas", None)
        if arenas is None or local.generation != self._generation:
            arenas = local.arenas = {}
            local.generation = self._generation
        key = (x.shape, x.dtype.str)
        arena = arenas.get(key)
        if arena is None:
            arena = arenas[key] = _Arena()
        regs = [None] * self.nreg
        regs[0] = x
        with no_grad():
            for step in self._program:
                step.run(regs, arena)
        return np.array(regs[self.out], copy=True)

    def run_timed(self, x):
        """(result, [(step, input, output, ns)]): one call with each step's inputs, output and
        wall time (fastmod.profile's view of a planned model)."""
        clock = time.perf_counter_ns
        x = np.ascontiguousarray(x)
        self(x)                                       # the arena for this shape, checks
        arena = self._local.arenas[(x.shape, x.dtype.str)]
        regs = [None] * self.nreg
        regs[0] = x
        out = []
        with no_grad():
            for step in self.steps:
                src = regs[getattr(step, "src", getattr(step, "dst", 0))]
                t0 = clock()
                step.run(regs, arena)
                out.append((step, src, regs[step.dst], clock() - t0))
        return np.array(regs[self.out], copy=True), out

    def describe(self):
        """One line per step: its kind and the module path(s) it covers."""
        return [f"{s.kind:<9} {s.label}" for s in self.steps]

    def __repr__(self):
        kinds = {}
        for s in self.steps:
            kinds[s.kind] = kinds.get(s.kind, 0) + 1
        return (f"PlannedModel({type(self.model).__name__}: {len(self.steps)} steps, "
                + ", ".join(f"{v} {k}" for k, v in kinds.items()) + ")")


def inference(model):
    """A planned copy of `model` for inference (see the module docstring); the model itself is
    not modified and stays trainable. Call `.refreeze()` on the result after changing weights."""
    return PlannedModel(model)
