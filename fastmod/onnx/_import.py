"""ONNX graph -> fastmod module tree (Sequential / Residual / Parallel of public modules).

How it reads a graph:
  1. Static shapes of every value, from ONNX shape inference with the input's symbolic batch
     dim set to a probe size (_PROBE_N): they tell ranks (Conv1d or Conv2d, BatchNorm1d or 2d),
     what a Reshape does (a Flatten) and where the batch axis is (attention).
  2. Values computed from initializers, Constants and Shape alone are "constants": weights,
     shapes and axes, evaluated with NumPy when a weight needs its value (Transpose / Split of
     an initializer, ...). Everything else is data, flowing from the graph input.
  3. The data graph is walked from the input: a value with one consumer continues a chain
     (one importer per op family, some consuming a few nodes: MatMul + Add, Reshape +
     InstanceNormalization + Reshape + Mul + Add, the Erf form of GELU); a value with several
     consumers opens branches, closed where they meet: Add -> Residual (one branch is the value
     itself) or Parallel(combine='sum'), Concat -> Parallel(combine='concat'). Attention
     subgraphs (MatMul, Softmax, MatMul between input and output projections) are found first
     and become one MultiheadAttention.
"""
from collections import OrderedDict

import numpy as np

from fastmod import nn

_PROBE_N = 97           # the batch size shapes are inferred at: a prime no other dim is likely to be


class _ImportError(Exception):
    """One node that cannot be imported, with its message (collected, raised together)."""

    def __init__(self, node, text, option=False):
        super().__init__(f"node {node.name or '(unnamed)'!r} ({node.op_type}): {text}")
        self.option = option


# ops that carry data; anything else seen on the data path is reported as unsupported
_DATA_OPS = {"Gemm", "MatMul", "Add", "Mul", "Div", "Sub", "Erf", "Conv", "Pad", "Relu", "Gelu",
             "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "BatchNormalization",
             "LayerNormalization", "GroupNormalization", "InstanceNormalization", "Reshape",
             "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
             "Dropout", "Identity", "Concat", "Gather", "Transpose", "Split", "Squeeze",
             "Unsqueeze", "Slice", "Cast"}
_NO_DATA_CONSUMER = {"Shape", "Size"}       # read only the shape of their input


class Importer:
    def __init__(self, onnx, model):
        self.onnx = onnx
        from onnx import numpy_helper
        self.np_helper = numpy_helper
        g = model.graph
        self.graph = g
        inits = {t.name for t in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1 or len(g.output) != 1:
            raise TypeError(f"fastmod.onnx.load: expected a graph with one input and one output "
                            f"(a fastmod model takes and returns one array), got inputs "
                            f"{[i.name for i in inputs]} and outputs {[o.name for o in g.output]}")
        self.input, self.output = inputs[0].name, g.output[0].name
        self.consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.producer = {}
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
        self.shapes = self._infer_shapes(model, inputs[0])
        # data values: reachable from the input through ops that read data
        self.data = {self.input}
        for n in g.node:
            if n.op_type not in _NO_DATA_CONSUMER and any(i in self.data for i in n.input):
                self.data.update(o for o in n.output if o)
        self.users = {}
        self.order = {}
        for k, n in enumerate(g.node):
            self.order[id(n)] = k
            for i in OrderedDict.fromkeys(n.input):
                if i in self.data and n.op_type not in _NO_DATA_CONSUMER:
                    self.users.setdefault(i, []).append(n)
        self.data_nodes = [n for n in g.node if any(o in self.data for o in n.output)]
        self.attention = {}             # block input value -> (module, output value)

    # -- shapes and constants ---------------------------------------------------------------
    def _infer_shapes(self, model, inp):
        onnx = self.onnx
        self.batch = None
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for i in m.graph.input:
            if i.name == inp.name:          # the batch dim: the first symbolic one
                probes = iter((_PROBE_N, 89, 83, 79))
                for d in i.type.tensor_type.shape.dim:
                    if not d.HasField("dim_value"):
                        d.dim_value = next(probes, 73)
        try:
            m = onnx.shape_inference.infer_shapes(m, data_prop=True)
        except Exception:               # noqa: BLE001 -- shapes are optional: patterns check
            return {}
        shapes = {}
        for vi in list(m.graph.input) + list(m.graph.value_info) + list(m.graph.output):
            t = vi.type.tensor_type
            if t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim):
                shapes[vi.name] = tuple(d.dim_value for d in t.shape.dim)
        probed = [d for d in shapes.get(inp.name, ()) if d == _PROBE_N]
        self.batch = _PROBE_N if probed else shapes.get(inp.name, (None,))[0]
        return shapes

    def shape(self, name, node):
        s = self.shapes.get(name)
        if s is None:
            raise _ImportError(node, f"the shape of {name!r} is not known (ONNX shape inference "
                                     "could not find it)")
        return s

    def const(self, name):
        """The value of a constant (initializer, Constant, or arithmetic on them), or None
        when `name` is data or cannot be evaluated."""
        if name in self.consts:
            return self.consts[name]
        if not name or name in self.data or name not in self.producer:
            return None
        n = self.producer[name]
        ins = [self.const(i) if i else None for i in n.input]
        if any(i is not None and v is None for i, v in zip(n.input, ins)) and n.op_type != "Shape":
            return None
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in n.attribute}
        out = _fold(n, ins, attrs, self)
        if out is None:
            return None
        for o, v in zip(n.output, out):
            self.consts[o] = v
        return self.consts.get(name)

    def attr(self, node, name, default=None):
        for a in node.attribute:
            if a.name == name:
                v = self.onnx.helper.get_attribute_value(a)
                if isinstance(v, float):        # stored as float32: 1e-5, not 9.99999974e-06
                    return float(str(np.float32(v)))
                return v.decode() if isinstance(v, bytes) else v
        return default

    def data_inputs(self, node):
        return [i for i in node.input if i in self.data]

    def single_user(self, value, op_type=None):
        us = self.users.get(value, [])
        if len(us) == 1 and value != self.output and (op_type is None or us[0].op_type == op_type):
            return us[0]
        return None

    # -- entry --------------------------------------------------------------------------------
    def build(self):
        bad = [n for n in self.data_nodes if n.op_type not in _DATA_OPS]
        if bad:
            raise TypeError(f"fastmod.onnx.load: {len(bad)} node(s) use operators with no fastmod "
                            "module:\n  " + "\n  ".join(
                                f"{n.name or '(unnamed)'} ({n.op_type})" for n in bad))
        problems = []
        for n in self.data_nodes:
            if n.op_type == "Softmax" and self._is_attention(n):
                try:
                    self._find_attention(n)
                except _ImportError as e:
                    problems.append(e)
        mods = []
        if not problems:
            try:
                mods = self.chain(self.input, self.output)
            except _ImportError as e:
                problems.append(e)
        if problems:
            cls = ValueError if any(p.option for p in problems) else TypeError
            raise cls("fastmod.onnx.load: cannot build the model:\n  "
                      + "\n  ".join(str(p) for p in problems))
        return _seq(mods)

    # -- structure ----------------------------------------------------------------------------
    def chain(self, v, end, first=None):
        """Modules turning value v into value `end` (first: the consumer of v to start with,
        when v's other consumers belong to other branches)."""
        mods = []
        while v != end:
            block = self.attention.get(v)
            if block is not None and (first is _ATTENTION or first is None and all(
                    id(u) in block[2] for u in self.users[v])):
                first = None
                mods.append(block[0])
                v = block[1]
                continue
            us = [first] if first is not None else self.users.get(v, [])
            first = None
            if not us:
                node = self.producer.get(v)
                raise _ImportError(node or _Unnamed(v), f"its output {v!r} does not reach the "
                                                        "graph output")
            if len(us) == 1:
                m, v = self.step(us[0], v)
            else:
                m, v = self.merge(v, us)
            if m is not None:
                mods.append(m)
        return mods

    def join_of(self, v, starts):
        """The node where every data path leaving v through `starts` meets again."""
        remaining = {v: len(starts)}
        start = min(self.order[id(n)] for n in starts)
        region = []
        for n in self.graph.node[start:]:
            ins = [i for i in OrderedDict.fromkeys(n.input) if i in remaining]
            if not ins or n.op_type in _NO_DATA_CONSUMER:
                continue
            region.append(n)
            for i in ins:
                remaining[i] -= 1
                if remaining[i] == 0:
                    del remaining[i]
            for o in n.output:
                if o in self.data:
                    remaining[o] = len(self.users.get(o, [])) + (o == self.output)
            if len(remaining) == 1 and n.output[0] in remaining:
                return n, region
        raise _ImportError(starts[0], f"the branches leaving {v!r} do not meet again")

    def _ancestors(self, value, stop):
        seen, todo = set(), [value]
        while todo:
            x = todo.pop()
            if x in seen or x == stop or x not in self.data:
                continue
            seen.add(x)
            n = self.producer.get(x)
            if n is not None:
                todo.extend(i for i in n.input if i in self.data)
        return seen

    def merge(self, v, starts):
        """Branches from v joined by Add (Residual / Parallel sum), Concat (Parallel concat),
        or the Erf form of GELU (x * 0.5 * (1 + erf(x / sqrt 2)))."""
        join, region = self.join_of(v, starts)
        if join.op_type == "Mul" and any(n.op_type == "Erf" for n in region):
            return self._gelu_erf(v, join, region)
        if join.op_type not in ("Add", "Concat"):
            raise _ImportError(join, f"branches meeting in {join.op_type} have no fastmod "
                                     "module (Add and Concat do: Residual, Parallel)")
        branches = []
        for u in join.input:
            if u == v:
                branches.append(None)
                continue
            anc = self._ancestors(u, v)
            firsts = [n for n in starts if any(o in anc for o in n.output)]
            if v in self.attention and (self.attention[v][1] == u or self.attention[v][1] in anc):
                firsts = [_ATTENTION]       # the attention block starts the branch
            if len(firsts) != 1:
                raise _ImportError(join, f"its input {u!r} is not one branch from {v!r}")
            branches.append(_seq(self.chain(v, u, first=firsts[0])))
        if join.op_type == "Add":
            if len(branches) != 2:
                raise _ImportError(join, "expected two inputs")
            if None in branches:
                g = branches[1] if branches[0] is None else branches[0]
                return (nn.Residual(g) if g is not None else None), join.output[0]
            return nn.Parallel(*branches, combine="sum"), join.output[0]
        axis = self.attr(join, "axis")
        mods = [nn.Identity() if b is None else b for b in branches]
        return nn.Parallel(*mods, combine="concat", dim=axis), join.output[0]

    # -- one step of a chain -------------------------------------------------------------------
    def step(self, node, v):
        """(module or None, output value) for the chain continuing at `node` (consumer of v)."""
        fn = getattr(self, f"_op_{node.op_type}", None)
        if fn is None:
            raise _ImportError(node, "has no fastmod module at this place in the graph")
        return fn(node, v)

    def _dtype(self, *arrays):
        for a in arrays:
            if a is not None and a.dtype in (np.float32, np.float64):
                return a.dtype
        return np.dtype(np.float32)

    def _need_const(self, node, idx, what):
        name = node.input[idx] if idx < len(node.input) else ""
        if not name:
            return None
        val = self.const(name)
        if val is None:
            raise _ImportError(node, f"expected a constant {what}, got a computed value {name!r}")
        return val

    # linear
    def _op_Gemm(self, node, v):
        """Gemm(x, W, b) with alpha = beta = 1, transA = 0 -> Linear."""
        if node.input[0] != v:
            raise _ImportError(node, "expected the data as input A")
        if self.attr(node, "transA", 0) or self.attr(node, "alpha", 1.0) != 1.0 \
                or self.attr(node, "beta", 1.0) != 1.0:
            raise _ImportError(node, "alpha, beta must be 1 and transA 0", option=True)
        w = self._need_const(node, 1, "weight")
        w = w if self.attr(node, "transB", 0) else w.T
        b = self._need_const(node, 2, "bias")
        if b is not None and b.size != w.shape[0]:
            b = np.broadcast_to(b.reshape(-1), (w.shape[0],))
        return _linear(w, b), node.output[0]

    def _op_MatMul(self, node, v):
        """MatMul(x, W) [+ Add(b)] -> Linear (weight W^T)."""
        if node.input[0] != v:
            raise _ImportError(node, "expected the data as the first input")
        w = self.const(node.input[1])
        if w is None or w.ndim != 2:
            raise _ImportError(node, "expected a 2-D constant weight as the second input "
                                     "(a product of two computed values is attention's)")
        out, b = node.output[0], None
        add = self.single_user(out, "Add")
        if add is not None:
            other = [i for i in add.input if i != out]
            bval = self.const(other[0]) if len(other) == 1 else None
            if bval is not None and bval.size == w.shape[1]:
                b, out = bval.reshape(-1), add.output[0]
        return _linear(w.T, b), out

    # activations
    def _op_Relu(self, node, v):
        return nn.ReLU(), node.output[0]

    def _op_Sigmoid(self, node, v):
        return nn.Sigmoid(), node.output[0]

    def _op_Tanh(self, node, v):
        return nn.Tanh(), node.output[0]

    def _op_Gelu(self, node, v):
        return nn.GELU(approximate=self.attr(node, "approximate", "none")), node.output[0]

    def _op_Softmax(self, node, v):
        return nn.Softmax(dim=self.attr(node, "axis", -1)), node.output[0]

    def _op_LogSoftmax(self, node, v):
        return nn.LogSoftmax(dim=self.attr(node, "axis", -1)), node.output[0]

    def _gelu_erf(self, v, join, region):
        """Exact GELU written out: x * 0.5 * (1 + erf(x / sqrt 2)) -- Div (or Mul) -> Erf ->
        Add(1) -> Mul(x, .) with the Mul by 0.5 before (torch's dynamo exporter) or after
        (its TorchScript exporter) the product."""
        consts = {}
        for n in region:
            if n is join or n.op_type == "Erf":
                continue
            c = [self.const(i) for i in n.input if i not in self.data]
            if len(c) != 1 or c[0] is None or c[0].size != 1 or n.op_type not in ("Div", "Mul", "Add"):
                raise _ImportError(join, "an Erf subgraph that is not GELU's")
            consts.setdefault(n.op_type, []).append(float(c[0].reshape(())))
        out = join.output[0]
        if "Mul" not in consts or len(consts["Mul"]) == 1 and "Div" not in consts:
            half = self.single_user(out, "Mul")
            c = None if half is None else [self.const(i) for i in half.input if i != out]
            if c and c[0] is not None and c[0].size == 1:
                consts.setdefault("Mul", []).append(float(c[0].reshape(())))
                out = half.output[0]
        scale = consts.get("Div", [])
        muls = sorted(consts.get("Mul", []))
        ok = (consts.get("Add") and np.allclose(consts["Add"], [1.0])
              and (np.allclose(scale, [np.sqrt(2)]) and np.allclose(muls, [0.5]) or
                   not scale and np.allclose(muls, sorted([0.5, 1 / np.sqrt(2)]))))
        if not ok or v not in join.input:
            raise _ImportError(join, "an Erf subgraph that is not GELU's")
        return nn.GELU(), out

    # normalization
    def _op_BatchNormalization(self, node, v):
        """BatchNormalization (inference: one output) -> BatchNorm1d (rank 2, 3) / 2d (rank 4)."""
        if len([o for o in node.output if o]) > 1 or self.attr(node, "training_mode", 0):
            raise _ImportError(node, "training-mode BatchNormalization is not supported", True)
        scale, bias, mean, var = (self._need_const(node, i, w) for i, w in
                                  enumerate(("scale", "bias", "mean", "var"), 1))
        rank = len(self.shape(v, node))
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
        c = scale.size
        m = cls(c, eps=self.attr(node, "epsilon", 1e-5),
                momentum=round(1.0 - self.attr(node, "momentum", 0.9), 12), dtype=self._dtype(scale))
        _copy(m, weight=scale, bias=bias, running_mean=mean, running_var=var)
        return m, node.output[0]

    def _op_LayerNormalization(self, node, v):
        """LayerNormalization(axis) -> LayerNorm over the trailing dims from axis."""
        shape = self.shape(v, node)
        axis = self.attr(node, "axis", -1) % len(shape)
        scale = self._need_const(node, 1, "scale")
        bias = self._need_const(node, 2, "bias")
        ns = shape[axis:]
        m = nn.LayerNorm(ns, eps=self.attr(node, "epsilon", 1e-5), bias=bias is not None,
                         dtype=self._dtype(scale))
        _copy(m, weight=scale.reshape(ns), bias=None if bias is None else bias.reshape(ns))
        return m, node.output[0]

    def _op_GroupNormalization(self, node, v):
        """GroupNormalization -> GroupNorm (opset 18's per-group scale spread over channels)."""
        g = self.attr(node, "num_groups")
        c = self.shape(v, node)[1]
        scale, bias = self._need_const(node, 1, "scale"), self._need_const(node, 2, "bias")
        if scale.size != c:
            scale, bias = np.repeat(scale, c // g), np.repeat(bias, c // g)
        m = nn.GroupNorm(g, c, eps=self.attr(node, "epsilon", 1e-5), dtype=self._dtype(scale))
        _copy(m, weight=scale, bias=bias)
        return m, node.output[0]

    def _op_Reshape(self, node, v):
        """torch's GroupNorm (Reshape (N, G, -1) -> InstanceNormalization -> Reshape back ->
        Mul(weight) -> Add(bias)) -> GroupNorm; a Reshape joining adjacent dims -> Flatten;
        a Reshape to the same shape -> nothing."""
        out = node.output[0]
        inorm = self.single_user(out, "InstanceNormalization")
        if inorm is not None:
            return self._group_norm_torch(node, inorm, v)
        src, dst = self.shape(v, node), self.shape(out, node)
        if src == dst:
            return None, out
        for s in range(len(src)):
            for e in range(s, len(src)):
                if src[:s] + (int(np.prod(src[s:e + 1])),) + src[e + 1:] == dst:
                    return nn.Flatten(s, e), out
        raise _ImportError(node, f"a Reshape from {src} to {dst} is not a Flatten", True)

    def _group_norm_torch(self, reshape, inorm, v):
        x_shape = self.shape(v, reshape)
        g = self.shape(reshape.output[0], reshape)[1]
        c = x_shape[1]
        back = self.single_user(inorm.output[0], "Reshape")
        if back is None or self.shapes.get(back.output[0]) != x_shape:
            raise _ImportError(inorm, "expected a Reshape back to the input's shape (GroupNorm)")
        s0, b0 = self._need_const(inorm, 1, "scale"), self._need_const(inorm, 2, "bias")
        if not (np.all(s0 == 1) and np.all(b0 == 0)):
            raise _ImportError(inorm, "expected GroupNorm's unit scale and zero bias", True)
        out = back.output[0]
        dt = self._dtype(s0)
        weight, bias = np.ones(c, dt), np.zeros(c, dt)
        mul = self.single_user(out, "Mul")
        if mul is not None:
            wv = [self.const(i) for i in mul.input if i != out]
            if wv and wv[0] is not None and wv[0].size == c:
                weight, out = wv[0].reshape(-1), mul.output[0]
                add = self.single_user(out, "Add")
                bv = None if add is None else [self.const(i) for i in add.input if i != out]
                if bv and bv[0] is not None and bv[0].size == c:
                    bias, out = bv[0].reshape(-1), add.output[0]
        m = nn.GroupNorm(g, c, eps=self.attr(inorm, "epsilon", 1e-5), dtype=dt)
        _copy(m, weight=weight, bias=bias)
        return m, out

    # convolution and pooling
    def _spatial(self, node, nd, key, default):
        vals = self.attr(node, key, None)
        return tuple(vals) if vals else (default,) * nd

    def _check_auto_pad(self, node):
        ap = self.attr(node, "auto_pad", "NOTSET")
        if ap != "NOTSET":
            raise _ImportError(node, f"auto_pad={ap!r} is not supported (explicit pads are)", True)

    def _op_Pad(self, node, v):
        """Pad (reflect / edge / wrap, or zeros) followed by Conv -> Conv with padding_mode."""
        conv = self.single_user(node.output[0], "Conv")
        if conv is None:
            raise _ImportError(node, "a Pad not followed by a Conv has no fastmod module")
        pads = self._need_const(node, 1, "pads").tolist()
        mode = self.attr(node, "mode", "constant")
        modes = {"reflect": "reflect", "edge": "replicate", "wrap": "circular", "constant": "zeros"}
        value = self._need_const(node, 2, "constant value")
        r = len(pads) // 2
        if mode not in modes or pads[:2] != [0, 0] or pads[r:r + 2] != [0, 0] \
                or (value is not None and np.any(value != 0)) or len(node.input) > 3 and node.input[3]:
            raise _ImportError(node, f"only Pad of the spatial dims (mode {sorted(modes)}, zero "
                                     f"value) before a Conv is supported, got mode {mode!r}, "
                                     f"pads {pads}", True)
        return self._conv(conv, (pads[2:r], pads[r + 2:]), modes[mode])

    def _op_Conv(self, node, v):
        return self._conv(node, None, "zeros")

    def _conv(self, node, pre_pad, padding_mode):
        """Conv (1-D or 2-D kernel) -> Conv1d / Conv2d: symmetric pads, or torch's 'same'."""
        self._check_auto_pad(node)
        w = self._need_const(node, 1, "weight")
        b = self._need_const(node, 2, "bias")
        nd = w.ndim - 2
        if nd not in (1, 2):
            raise _ImportError(node, f"a {nd}-D convolution has no fastmod module", True)
        k = tuple(w.shape[2:])
        stride = self._spatial(node, nd, "strides", 1)
        dil = self._spatial(node, nd, "dilations", 1)
        pads = list(self._spatial(node, 2 * nd, "pads", 0))
        lo, hi = pads[:nd], pads[nd:]
        if pre_pad is not None:
            if any(pads):
                raise _ImportError(node, "both a Pad before it and its own pads", True)
            lo, hi = pre_pad
        if lo == hi:
            padding = tuple(lo)
        elif all(s == 1 for s in stride) and all(
                (l, h) == (d * (kk - 1) // 2, d * (kk - 1) - d * (kk - 1) // 2)
                for l, h, d, kk in zip(lo, hi, dil, k)):
            padding = "same"
        else:
            raise _ImportError(node, f"asymmetric pads {pads} (other than 'same') are not "
                                     "supported", True)
        group = self.attr(node, "group", 1)
        cls = nn.Conv1d if nd == 1 else nn.Conv2d
        m = cls(w.shape[1] * group, w.shape[0], k, stride=stride, padding=padding, dilation=dil,
                groups=group, bias=b is not None, padding_mode=padding_mode, dtype=self._dtype(w))
        _copy(m, weight=w, bias=b)
        return m, node.output[0]

    def _pool_args(self, node):
        self._check_auto_pad(node)
        k = tuple(self.attr(node, "kernel_shape"))
        nd = len(k)
        if nd not in (1, 2):
            raise _ImportError(node, f"{nd}-D pooling has no fastmod module", True)
        pads = self._spatial(node, 2 * nd, "pads", 0)
        if pads[:nd] != pads[nd:]:
            raise _ImportError(node, f"asymmetric pads {list(pads)} are not supported", True)
        return nd, dict(kernel_size=k, stride=self._spatial(node, nd, "strides", 1),
                        padding=pads[:nd], ceil_mode=bool(self.attr(node, "ceil_mode", 0)))

    def _op_MaxPool(self, node, v):
        """MaxPool (values only) -> MaxPool1d / 2d."""
        if len(node.output) > 1 and node.output[1]:
            raise _ImportError(node, "MaxPool's indices output is not supported (a fastmod "
                                     "model has one output)", True)
        nd, kw = self._pool_args(node)
        kw["dilation"] = self._spatial(node, nd, "dilations", 1)
        return (nn.MaxPool1d if nd == 1 else nn.MaxPool2d)(**kw), node.output[0]

    def _op_AveragePool(self, node, v):
        """AveragePool -> AvgPool1d / 2d."""
        nd, kw = self._pool_args(node)
        if self._spatial(node, nd, "dilations", 1) != (1,) * nd:
            raise _ImportError(node, "dilated average pooling is not supported", True)
        kw["count_include_pad"] = bool(self.attr(node, "count_include_pad", 0))
        return (nn.AvgPool1d if nd == 1 else nn.AvgPool2d)(**kw), node.output[0]

    def _op_GlobalAveragePool(self, node, v):
        """GlobalAveragePool [+ Flatten(axis=1)] -> GlobalAvgPool, else AdaptiveAvgPool(1)."""
        flat = self.single_user(node.output[0], "Flatten")
        if flat is not None and self.attr(flat, "axis", 1) == 1:
            return nn.GlobalAvgPool(), flat.output[0]
        rank = len(self.shape(v, node))
        return (nn.AdaptiveAvgPool1d if rank == 3 else nn.AdaptiveAvgPool2d)(1), node.output[0]

    def _op_GlobalMaxPool(self, node, v):
        """GlobalMaxPool -> AdaptiveMaxPool1d / 2d (1)."""
        rank = len(self.shape(v, node))
        return (nn.AdaptiveMaxPool1d if rank == 3 else nn.AdaptiveMaxPool2d)(1), node.output[0]

    # shape and regularization
    def _op_Flatten(self, node, v):
        """Flatten(axis=1) -> Flatten()."""
        if self.attr(node, "axis", 1) != 1:
            raise _ImportError(node, "only Flatten(axis=1) is supported", True)
        return nn.Flatten(), node.output[0]

    def _op_Dropout(self, node, v):
        """Dropout(ratio) -> Dropout(p) (mask output unused)."""
        if len(node.output) > 1 and node.output[1] and node.output[1] in self.users:
            raise _ImportError(node, "Dropout's mask output is not supported", True)
        ratio = self._need_const(node, 1, "ratio")
        return nn.Dropout(0.5 if ratio is None else float(ratio)), node.output[0]

    def _op_Identity(self, node, v):
        return nn.Identity(), node.output[0]

    def _op_Gather(self, node, v):
        """Gather(table, ids, axis=0) -> Embedding."""
        table = self.const(node.input[0])
        if node.input[1] != v or table is None or table.ndim != 2 or self.attr(node, "axis", 0):
            raise _ImportError(node, "only Gather(constant table (V, D), ids, axis=0) "
                                     "(an Embedding) is supported")
        m = nn.Embedding(table.shape[0], table.shape[1], dtype=self._dtype(table))
        _copy(m, weight=table)
        return m, node.output[0]

    # -- attention ------------------------------------------------------------------------------
    def _find_attention(self, softmax):
        """Register the MultiheadAttention around `softmax`: scores = MatMul(q, k) (scaled,
        maybe before) -> Softmax -> MatMul(p, v); the projections are the nearest MatMul or
        Gemm with constant weights before them (one packed (E, 3E) or three), the output
        projection the first after; the block spans from the projections' common input
        (plus a Transpose(1, 0, 2) when the block ends with one) to the first value after the
        output projection with the input's shape."""
        qk = self._producer_before(softmax.input[0], ("Add", "Mul", "Div"))
        pv = self.single_user(softmax.output[0], "MatMul")
        if qk is None or qk.op_type != "MatMul" or pv.input[0] != softmax.output[0]:
            raise _ImportError(softmax, "a Softmax in the middle of the graph that is not "
                                        "attention's (MatMul -> Softmax -> MatMul)")
        n = self.producer.get(softmax.input[0])
        while n is not qk:
            if n.op_type == "Add":
                raise _ImportError(n, "attention with a mask is not supported (fastmod's "
                                      "MultiheadAttention takes masks as call arguments)", True)
            n = self.producer.get(self.data_inputs(n)[0])
        projs = OrderedDict()
        for role, val in (("q", qk.input[0]), ("k", qk.input[1]), ("v", pv.input[1])):
            for p in self._projections(val, softmax):
                projs.setdefault(id(p), [p, set()])[1].add(role)
        srcs = {p.input[0] for p, _ in projs.values()}
        if len(srcs) != 1:
            raise _ImportError(softmax, "attention whose query, key and value come from "
                                        "different inputs (only self-attention is imported)")
        x0 = srcs.pop()
        # the output projection and what follows up to the input's shape
        out, after = pv.output[0], []
        while True:
            n = self.single_user(out)
            if n is None:
                raise _ImportError(pv, "attention without an output projection")
            if n.op_type in ("MatMul", "Gemm"):
                break
            after.append(n)
            out = n.output[0]
        out_proj, _ = (self._op_MatMul(n, out) if n.op_type == "MatMul" else self._op_Gemm(n, out))
        out = n.output[0]
        if n.op_type == "MatMul" and out_proj.bias is not None:
            out = self.single_user(out, "Add").output[0]
        x_in = x0
        t = self.producer.get(x0)
        if t is not None and t.op_type == "Transpose" and list(self.attr(t, "perm")) == [1, 0, 2] \
                and all(u.op_type in ("MatMul", "Gemm") for u in self.users[x0]):
            x_in = t.input[0]           # seq-first math inside: the Transposes belong to it
        target = self.shape(x_in, softmax)
        while self.shapes.get(out) != target:
            n = self.single_user(out)
            if n is None or n.op_type not in ("Transpose", "Reshape"):
                raise _ImportError(pv, "attention output that does not return to the input's "
                                       "shape through Transpose/Reshape")
            out = n.output[0]
        E = target[-1]
        batch_first = target[0] == self.batch
        scores = self.shape(qk.output[0], qk)
        H = scores[1] if len(scores) == 4 else scores[0] // self.batch
        if E % H:
            raise _ImportError(softmax, f"{H} heads do not divide the width {E}")
        self._check_scale(softmax, 1.0 / np.sqrt(E // H))
        m = self._mha(softmax, list(projs.values()), out_proj, E, H, batch_first)
        inside = {id(u) for u in self.users[x_in] if u.output[0] in self._ancestors(out, x_in)}
        self.attention[x_in] = (m, out, inside)

    def _is_attention(self, softmax):
        """A Softmax between two products of computed values (scores, then weights x values)."""
        pv = self.single_user(softmax.output[0], "MatMul")
        qk = self._producer_before(softmax.input[0], ("Add", "Mul", "Div"))
        return pv is not None and qk is not None and qk.op_type == "MatMul" and \
            all(i in self.data for i in list(pv.input) + list(qk.input))

    def _producer_before(self, value, ops):
        """The first node producing `value` (walking back over `ops` with one data input)."""
        n = self.producer.get(value)
        while n is not None and n.op_type in ops and len(self.data_inputs(n)) == 1:
            n = self.producer.get(self.data_inputs(n)[0])
        return n

    def _projections(self, value, anchor):
        """The MatMul / Gemm nodes with constant weights that `value` is computed from,
        walking back over reshaping, slicing and bias-adding nodes."""
        found, todo, seen = [], [value], set()
        while todo:
            x = todo.pop()
            n = self.producer.get(x)
            if n is None:
                raise _ImportError(anchor, "attention input without a projection")
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.op_type in ("MatMul", "Gemm") and self.const(n.input[1]) is not None:
                found.append(n)
                continue
            if n.op_type not in ("Transpose", "Reshape", "Split", "Gather", "Squeeze", "Unsqueeze",
                                 "Slice", "Add", "Mul", "Div"):
                raise _ImportError(n, "unexpected between attention's projections and its "
                                      "scores")
            todo.extend(self.data_inputs(n))
        return found

    def _check_scale(self, softmax, want):
        """The product of the constant scalar Mul/Div factors between the projections and
        the Softmax must be 1/sqrt(d_head)."""
        scale, seen, todo = 1.0, set(), [softmax.input[0]]
        while todo:
            n = self.producer.get(todo.pop())
            if n is None or id(n) in seen:
                continue
            seen.add(id(n))
            if n.op_type in ("MatMul", "Gemm") and self.const(n.input[1]) is not None:
                continue                    # a projection: the block's input is behind it
            if n.op_type in ("Mul", "Div"):
                c = [self.const(i) for i in n.input if i not in self.data]
                if c and c[0] is not None and c[0].size == 1:
                    f = float(c[0].reshape(()))
                    scale = scale * f if n.op_type == "Mul" else scale / f
            todo.extend(self.data_inputs(n))
        if not np.isclose(scale, want, rtol=1e-4):
            raise _ImportError(softmax, f"attention scaled by {scale:g}, not 1/sqrt(d_head) = "
                                        f"{want:g}", True)

    def _mha(self, anchor, projs, out_proj, E, H, batch_first):
        weights, biases = {}, {}
        for p, roles in projs:
            w = self.const(p.input[1])
            w = w.T if p.op_type == "MatMul" or not self.attr(p, "transB", 0) else w
            b = None
            if p.op_type == "Gemm":
                b = self.const(p.input[2]) if len(p.input) > 2 and p.input[2] else None
            else:
                add = self.single_user(p.output[0], "Add")
                if add is not None:
                    c = [self.const(i) for i in add.input if i != p.output[0]]
                    b = c[0] if c and c[0] is not None else None
            if w.shape == (3 * E, E):
                if roles != {"q", "k", "v"}:
                    raise _ImportError(p, "a packed (3E) projection must feed query, key and value")
                for i, r in enumerate("qkv"):
                    weights[r] = w[i * E:(i + 1) * E]
                    biases[r] = None if b is None else b.reshape(-1)[i * E:(i + 1) * E]
            elif w.shape == (E, E) and len(roles) == 1:
                (r,) = roles
                weights[r], biases[r] = w, None if b is None else b.reshape(-1)
            else:
                raise _ImportError(p, f"an attention projection of shape {w.shape} for roles "
                                      f"{sorted(roles)} (expected (E, E) each or (3E, E) packed)")
        if set(weights) != {"q", "k", "v"}:
            raise _ImportError(anchor, "attention without query, key and value projections")
        dt = out_proj.weight.data.dtype
        # one bias flag for all four projections (torch's optimizer drops all-zero biases):
        # a missing one is zeros
        has_bias = out_proj.bias is not None or any(b is not None for b in biases.values())
        m = nn.MultiheadAttention(E, H, bias=has_bias, batch_first=batch_first, dtype=dt)
        m.in_proj_weight.data[...] = np.concatenate([weights[r] for r in "qkv"])
        if has_bias:
            m.in_proj_bias.data[...] = np.concatenate(
                [np.zeros(E, dt) if biases[r] is None else biases[r] for r in "qkv"])
            m.out_proj.bias.data[...] = 0 if out_proj.bias is None else out_proj.bias.data
        m.out_proj.weight.data[...] = out_proj.weight.data
        return m


_ATTENTION = object()       # chain(first=_ATTENTION): the branch is the attention block at v


class _Unnamed:
    def __init__(self, value):
        self.name, self.op_type = value, "graph value"


def _fold(n, ins, attrs, imp):
    """NumPy value(s) of node n on constant inputs `ins` (None: not a foldable op)."""
    op = n.op_type
    x = ins[0] if ins else None
    if op == "Constant":
        t = attrs.get("value")
        if t is not None:
            return [imp.np_helper.to_array(t)]
        for key in ("value_float", "value_int"):
            if key in attrs:
                return [np.asarray(attrs[key])]
        for key in ("value_floats", "value_ints"):
            if key in attrs:
                return [np.asarray(attrs[key])]
        return None
    if op == "ConstantOfShape":
        t = attrs.get("value")
        fill = imp.np_helper.to_array(t).reshape(-1) if t is not None else np.zeros(1, np.float32)
        return [np.full(tuple(int(d) for d in x), fill[0], fill.dtype)]
    if op == "Shape":
        s = imp.shapes.get(n.input[0])
        return None if s is None else [np.asarray(s, np.int64)]
    if op == "Identity":
        return [x]
    if op == "Transpose":
        return [np.transpose(x, attrs.get("perm"))]
    if op == "Cast":
        from onnx import helper
        return [x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))]
    if op == "Reshape":
        shape = [d if d != 0 else x.shape[i] for i, d in enumerate(ins[1].tolist())]
        return [x.reshape(shape)]
    if op == "Unsqueeze":
        axes = ins[1].tolist() if len(ins) > 1 and ins[1] is not None else attrs["axes"]
        out = x
        for a in sorted(a % (x.ndim + len(axes)) for a in axes):
            out = np.expand_dims(out, a)
        return [out]
    if op == "Squeeze":
        axes = ins[1].tolist() if len(ins) > 1 and ins[1] is not None else attrs.get("axes")
        return [np.squeeze(x, tuple(axes) if axes is not None else None)]
    if op == "Concat":
        return [np.concatenate([np.atleast_1d(i) for i in ins], attrs["axis"])]
    if op == "Gather":
        return [np.take(x, ins[1], axis=attrs.get("axis", 0))]
    if op == "Split":
        axis = attrs.get("axis", 0)
        if len(ins) > 1 and ins[1] is not None:
            return np.split(x, np.cumsum(ins[1])[:-1], axis=axis)
        return np.array_split(x, len(n.output), axis=axis)
    if op == "Slice":
        starts, ends = ins[1].tolist(), ins[2].tolist()
        axes = ins[3].tolist() if len(ins) > 3 and ins[3] is not None else range(len(starts))
        steps = ins[4].tolist() if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
        idx = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            idx[a] = slice(s, e, st)
        return [x[tuple(idx)]]
    binary = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": None,
              "Mod": np.mod, "Equal": np.equal}
    if op in binary and len(ins) == 2:
        a, b = ins
        if op == "Div":
            return [a // b if a.dtype.kind in "iu" else a / b]
        return [binary[op](a, b).astype(np.result_type(a, b)) if op != "Equal" else np.equal(a, b)]
    if op in ("Sqrt", "Neg", "Floor", "Ceil"):
        return [{"Sqrt": np.sqrt, "Neg": np.negative, "Floor": np.floor, "Ceil": np.ceil}[op](x)]
    return None


def _linear(w, b):
    m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, dtype=w.dtype if w.dtype in
                  (np.float32, np.float64) else np.float32)
    _copy(m, weight=w, bias=b)
    return m


def _copy(m, **arrays):
    """Copy arrays into m's parameters / buffers of the same name (None: leave)."""
    for name, a in arrays.items():
        if a is None:
            continue
        t = getattr(m, name)
        target = t.data if isinstance(t, nn.Parameter) else t
        target[...] = np.asarray(a).reshape(target.shape)


def _seq(mods):
    """One module for a list: itself, a Sequential, or an Identity for none."""
    mods = [m for m in mods if m is not None]
    if not mods:
        return nn.Identity()
    return mods[0] if len(mods) == 1 else nn.Sequential(*mods)
