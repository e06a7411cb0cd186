"""fastmod module tree -> ONNX graph: one emitter per module family, walking the tree.

Each emitter writes the ONNX nodes of one module for inputs it is given as Values (name and
the example array fastmod computed), and returns its outputs' names; the walker then runs the
module itself on the example arrays, so every Value downstream carries fastmod's own output
(its static shape, for the emitters that need one). The batch dim stays symbolic: reshapes
copy it with 0 or infer it with -1, never write its size.
"""
import math

import numpy as np

from fastmod import models, nn
from fastmod._runtime import no_grad
from fastmod.onnx._graph import GraphBuilder, Value


def _join(path, name):
    return f"{path}.{name}" if path else name


def _show(path):
    """Dotted path as from_torch's messages write it: 'model', 'model.0.mm1'."""
    return f"model.{path}" if path else "model"


def _hint(path):
    """Node-name prefix like torch's exporter writes ('/0/mm1')."""
    return "/" + path.replace(".", "/") if path else ""


def _type_name(m):
    t = type(m)
    if t.__module__.startswith("fastmod.nn") and getattr(nn, t.__name__, None) is t:
        return f"fastmod.nn.{t.__name__}"
    return f"{t.__module__}.{t.__qualname__}"


def _shape_only(shape, dtype):
    """A zero-stride array standing for a tensor of `shape` (emitters read only its shape)."""
    return np.broadcast_to(np.zeros((), dtype), tuple(shape))


class Exporter:
    """Emits a module tree into a GraphBuilder; records every module it cannot emit."""

    def __init__(self, onnx, dtype):
        self.b = GraphBuilder(onnx, dtype)
        self.problems = []                  # (message, is_option) in the order found
        self.table = {
            nn.Sequential: self._sequential, nn.Residual: self._residual,
            nn.Parallel: self._parallel, nn.Identity: self._identity,
            nn.Linear: self._linear, nn.ReLU: self._unary("Relu"),
            nn.Sigmoid: self._unary("Sigmoid"), nn.Tanh: self._unary("Tanh"),
            nn.GELU: self._gelu, nn.Softmax: self._softmax("Softmax"),
            nn.LogSoftmax: self._softmax("LogSoftmax"), nn.Flatten: self._flatten,
            nn.Dropout: self._dropout, nn.ResidualBlock: self._residual_block,
            nn.LayerNorm: self._layer_norm, nn.BatchNorm1d: self._batch_norm,
            nn.BatchNorm2d: self._batch_norm, nn.GroupNorm: self._group_norm,
            nn.Conv1d: self._conv, nn.Conv2d: self._conv,
            nn.MaxPool1d: self._max_pool, nn.MaxPool2d: self._max_pool,
            nn.AvgPool1d: self._avg_pool, nn.AvgPool2d: self._avg_pool,
            nn.AdaptiveAvgPool1d: self._adaptive_pool, nn.AdaptiveAvgPool2d: self._adaptive_pool,
            nn.AdaptiveMaxPool1d: self._adaptive_pool, nn.AdaptiveMaxPool2d: self._adaptive_pool,
            nn.GlobalAvgPool: self._global_avg_pool, nn.Embedding: self._embedding,
            nn.MultiheadAttention: self._mha,
            nn.TransformerEncoderLayer: self._encoder_layer,
            nn.TransformerEncoder: self._encoder, nn.BNResBlock: self._bn_res_block,
            nn.DenseBlock: self._dense_block,
            models.TransformerClassifier: self._transformer_classifier,
        }

    # -- walking ----------------------------------------------------------------------------
    def _lookup(self, m):
        """The emitter for m's class, or for a base class whose forward m does not override."""
        t = type(m)
        for base in t.__mro__:
            fn = self.table.get(base)
            if fn is not None:
                return fn if t.forward is base.forward else None
        return None

    def problem(self, path, m, text, option=True):
        self.problems.append((f"{_show(path)} ({_type_name(m)}) {text}", option))

    def emit(self, m, path, xs, **kw):
        """Emit module m (at dotted `path`) on input Values xs; returns its output Values.
        kw: forward's keyword options (need_weights, is_causal, ...) and internal ones."""
        fn = self._lookup(m)
        if fn is None:
            self.problem(path, m, "has no ONNX emitter", option=False)
            names = None
        else:
            names = fn(m, path, xs, **kw)
        if names is not None and isinstance(names[0], Value):
            return names
        # fastmod's own outputs: the shapes downstream emitters read
        fwd_kw = {k: v for k, v in kw.items() if k != "key_padding"}
        with no_grad():
            out = m(*[x.array for x in xs], **fwd_kw)
        outs = list(out) if isinstance(out, tuple) else [out]
        if names is None:                   # keep walking to find every problem
            names = [self.b.fresh(f"{_hint(path)}/unsupported") for _ in outs]
        return [Value(n, a) for n, a in zip(names, outs)]

    def op(self, op_type, inputs, path, **attrs):
        return self.b.op(op_type, [i.name if isinstance(i, Value) else i for i in inputs],
                         _hint(path), **attrs)

    def param(self, path, name, array):
        return self.b.param(_join(path, name), array)

    # -- containers -------------------------------------------------------------------------
    def _sequential(self, m, path, xs):
        """Children in order (an empty Sequential is an Identity node)."""
        if not len(m):
            return [self.op("Identity", xs, path)]
        for name, child in m._modules.items():
            xs = self.emit(child, _join(path, name), xs)
        return xs

    def _identity(self, m, path, xs):
        """Identity."""
        return [self.op("Identity", xs, path)]

    def _residual(self, m, path, xs):
        """x + g(x): Add."""
        (g,) = self.emit(m.fn, _join(path, "fn"), xs)
        return [self.op("Add", [xs[0], g], path)]

    def _parallel(self, m, path, xs):
        """Branches on one input, joined by a chain of Add or one Concat."""
        outs = [self.emit(b, _join(path, name), xs)[0] for name, b in m._modules.items()]
        if m.combine == "concat":
            return [self.op("Concat", outs, path, axis=m.dim % outs[0].ndim)]
        y = outs[0].name
        for o in outs[1:]:
            y = self.op("Add", [y, o], path)
        return [y]

    def _residual_block(self, m, path, xs):
        """z + act(mm1(act(mm2(z)))): the Linear emitters, the activations', Add."""
        h = xs
        for name in ("mm2", "act_inner", "mm1", "act_outer"):
            h = self.emit(getattr(m, name), _join(path, name), h)
        return [self.op("Add", [xs[0], h[0]], path)]

    # -- layers -----------------------------------------------------------------------------
    def _linear(self, m, path, xs):
        """Gemm(transB=1) on 2-D input; MatMul(x, Transpose(weight)) + Add(bias) otherwise."""
        (x,) = xs
        w = self.param(path, "weight", m.weight.data)
        b = None if m.bias is None else self.param(path, "bias", m.bias.data)
        if x.ndim == 2:
            return [self.op("Gemm", [x, w] + ([b] if b else []), path, transB=1)]
        y = self.op("MatMul", [x, self.op("Transpose", [w], path, perm=[1, 0])], path)
        return [y if b is None else self.op("Add", [y, b], path)]

    def _unary(self, op_type):
        def emit(m, path, xs):
            return [self.op(op_type, xs, path)]
        emit.__doc__ = f"{op_type}."
        return emit

    def _gelu(self, m, path, xs):
        """Gelu (opset 20) with approximate 'none' or 'tanh'."""
        return [self.op("Gelu", xs, path, approximate=m.approximate)]

    def _softmax(self, op_type):
        def emit(m, path, xs):
            return [self.op(op_type, xs, path, axis=m.dim % xs[0].ndim)]
        emit.__doc__ = f"{op_type} over one axis."
        return emit

    def _flatten(self, m, path, xs):
        """Flatten(axis=1) for the default dims (what torch writes), else Reshape: 0 (copy) for
        the dims before start_dim, -1 for the joined ones, the static sizes after end_dim."""
        (x,) = xs
        nd = x.ndim
        s, e = m.start_dim % nd, m.end_dim % nd
        if s == 1 and e == nd - 1:
            return [self.op("Flatten", xs, path, axis=1)]
        shape = [0] * s + [-1] + list(x.shape[e + 1:])
        return [self.op("Reshape", [x, self.b.ints(shape, _hint(path))], path)]

    def _dropout(self, m, path, xs):
        """Dropout with its ratio (an identity at inference)."""
        return [self.op("Dropout", [xs[0], self.b.const(m.p, _hint(path))], path)]

    def _layer_norm(self, m, path, xs):
        """LayerNormalization over the trailing len(normalized_shape) dims."""
        shape = m.normalized_shape
        w = self.param(path, "weight", m.weight.data) if m.elementwise_affine else \
            self.b.const(np.ones(shape), _hint(path))
        b = self.param(path, "bias", m.bias.data) if getattr(m, "bias", None) is not None else ""
        return [self.op("LayerNormalization", [xs[0], w, b] if b else [xs[0], w], path,
                        axis=-len(shape), epsilon=m.eps)]

    def _affine_consts(self, m, path, c):
        """(scale, bias) names: the module's weight/bias, or ones/zeros when not affine."""
        if m.affine:
            return self.param(path, "weight", m.weight.data), self.param(path, "bias", m.bias.data)
        return self.b.const(np.ones(c), _hint(path)), self.b.const(np.zeros(c), _hint(path))

    def _batch_norm(self, m, path, xs):
        """BatchNormalization with the running statistics (eval); without running statistics
        (track_running_stats=False, batch statistics even in eval) the normalization written
        out: ReduceMean, Sub, Mul, Sqrt, Div and the affine Mul/Add."""
        (x,) = xs
        c = m.num_features
        scale, bias = self._affine_consts(m, path, c)
        if m.running_mean is not None:
            mom = 0.9 if m.momentum is None else 1.0 - m.momentum     # ONNX keeps 1 - torch's
            return [self.op("BatchNormalization",
                            [x, scale, bias, self.param(path, "running_mean", m.running_mean),
                             self.param(path, "running_var", m.running_var)],
                            path, epsilon=m.eps, momentum=mom)]
        h = _hint(path)
        axes = self.b.ints([0] + list(range(2, x.ndim)), h)
        mean = self.op("ReduceMean", [x, axes], path, keepdims=1)
        d = self.op("Sub", [x, mean], path)
        var = self.op("ReduceMean", [self.op("Mul", [d, d], path), axes], path, keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.b.const(m.eps, h)], path)], path)
        y = self.op("Div", [d, std], path)
        cshape = self.b.ints([c] + [1] * (x.ndim - 2), h)
        y = self.op("Mul", [y, self.op("Reshape", [scale, cshape], path)], path)
        return [self.op("Add", [y, self.op("Reshape", [bias, cshape], path)], path)]

    def _group_norm(self, m, path, xs):
        """GroupNormalization (opset 21: per-channel scale and bias)."""
        scale, bias = self._affine_consts(m, path, m.num_channels)
        return [self.op("GroupNormalization", [xs[0], scale, bias], path,
                        num_groups=m.num_groups, epsilon=m.eps)]

    def _batched(self, m, path, x, nd):
        if x.ndim != nd + 2:
            self.problem(path, m, f"is exported for batched input (N, C, {nd} spatial dims) only, "
                                  f"got an input of shape {x.shape}")
            return False
        return True

    def _conv(self, m, path, xs):
        """Conv (zero padding in its pads); reflect / replicate / circular padding is a Pad
        (mode reflect / edge / wrap) before it."""
        (x,) = xs
        nd = len(m.kernel_size)
        if not self._batched(m, path, x, nd):
            return None
        lo, hi = [p[0] for p in m._pad], [p[1] for p in m._pad]
        pads = lo + hi
        if m.padding_mode != "zeros":
            mode = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}[m.padding_mode]
            x = self.op("Pad", [x, self.b.ints([0, 0] + lo + [0, 0] + hi, _hint(path))], path,
                        mode=mode)
            pads = [0] * (2 * nd)
        w = self.param(path, "weight", m.weight.data)
        ins = [x, w] + ([self.param(path, "bias", m.bias.data)] if m.bias is not None else [])
        return [self.op("Conv", ins, path, kernel_shape=list(m.kernel_size),
                        strides=list(m.stride), pads=pads, dilations=list(m.dilation),
                        group=m.groups)]

    def _plane_indices(self, idx, path, spatial):
        """ONNX MaxPool's indices count over the whole (N, C, *spatial) tensor; torch's and
        fastmod's within each plane: Mod by the plane size."""
        return self.op("Mod", [idx, self.b.ints(int(np.prod(spatial)), _hint(path))], path)

    def _max_pool(self, m, path, xs):
        """MaxPool (the second output, Mod by the plane size, for return_indices)."""
        (x,) = xs
        nd = len(m.kernel_size)
        if not self._batched(m, path, x, nd):
            return None
        outs = self.b.op("MaxPool", [x.name], _hint(path), n_out=2 if m.return_indices else 1,
                         kernel_shape=list(m.kernel_size), strides=list(m.stride),
                         pads=list(m.padding) * 2, dilations=list(m.dilation),
                         ceil_mode=int(m.ceil_mode))
        if not m.return_indices:
            return [outs]
        return [outs[0], self._plane_indices(outs[1], path, x.shape[2:])]

    def _avg_pool(self, m, path, xs):
        """AveragePool; divisor_override: AveragePool counting the padding, then Mul by
        (kernel area / divisor)."""
        (x,) = xs
        nd = len(m.kernel_size)
        if not self._batched(m, path, x, nd):
            return None
        div = m.divisor_override
        y = self.op("AveragePool", [x], path, kernel_shape=list(m.kernel_size),
                    strides=list(m.stride), pads=list(m.padding) * 2, ceil_mode=int(m.ceil_mode),
                    count_include_pad=int(m.count_include_pad or div is not None))
        if div is not None:
            y = self.op("Mul", [y, self.b.const(np.prod(m.kernel_size) / div, _hint(path))], path)
        return [y]

    def _adaptive_pool(self, m, path, xs):
        """Bins of equal size: GlobalAveragePool / GlobalMaxPool (output 1) or AveragePool /
        MaxPool (kernel = stride = in // out; Mod for the indices). Other sizes: one Slice
        per bin (torch's bins floor(i*H/OH) .. ceil((i+1)*H/OH)), ReduceMean / ReduceMax (and
        ArgMax turned into plane indices with Div/Mod/Add) and a Concat of the bins."""
        (x,) = xs
        nd = m._nd
        if not self._batched(m, path, x, nd):
            return None
        spatial = x.shape[2:]
        out = tuple(s if o is None else o for s, o in zip(spatial, m.output_size))
        is_max = m._max
        if all(s % o == 0 for s, o in zip(spatial, out)):
            if all(o == 1 for o in out) and not m.return_indices:
                return [self.op("GlobalMaxPool" if is_max else "GlobalAveragePool", xs, path)]
            k = [s // o for s, o in zip(spatial, out)]
            if not is_max:
                return [self.op("AveragePool", xs, path, kernel_shape=k, strides=k)]
            outs = self.b.op("MaxPool", [x.name], _hint(path), n_out=2 if m.return_indices else 1,
                             kernel_shape=k, strides=k)
            if not m.return_indices:
                return [outs]
            return [outs[0], self._plane_indices(outs[1], path, spatial)]
        return self._adaptive_bins(m, path, x, spatial, out)

    def _adaptive_bins(self, m, path, x, spatial, out):
        h = _hint(path)
        axes = list(range(2, 2 + len(spatial)))
        bins = [[(i * s // o, -(-(i + 1) * s // o)) for i in range(o)] for s, o in zip(spatial, out)]
        values, indices = [], []
        flat = self.b.ints([0, 0, -1], h)
        for cell in np.ndindex(*out):
            lo = [bins[a][i][0] for a, i in enumerate(cell)]
            hi = [bins[a][i][1] for a, i in enumerate(cell)]
            win = self.op("Reshape", [self.op("Slice", [x, self.b.ints(lo, h), self.b.ints(hi, h),
                                                        self.b.ints(axes, h)], path), flat], path)
            last = self.b.ints([-1], h)
            values.append(self.op("ReduceMax" if m._max else "ReduceMean", [win, last], path,
                                  keepdims=1))
            if m.return_indices:
                # local flat index in the window -> index in the plane: sum over spatial axes
                # of (lo_a + (local // stride_a) % len_a) * plane_stride_a
                local = self.op("ArgMax", [win], path, axis=-1, keepdims=1)
                lens = [b - a for a, b in zip(lo, hi)]
                total = None
                for a in range(len(spatial)):
                    inner = int(np.prod(lens[a + 1:]))
                    coord = self.op("Mod", [self.op("Div", [local, self.b.ints(inner, h)], path),
                                            self.b.ints(lens[a], h)], path)
                    coord = self.op("Add", [coord, self.b.ints(lo[a], h)], path)
                    term = self.op("Mul", [coord, self.b.ints(int(np.prod(spatial[a + 1:])), h)],
                                   path)
                    total = term if total is None else self.op("Add", [total, term], path)
                indices.append(total)
        shape = self.b.ints([0, 0] + list(out), h)
        outs = [self.op("Reshape", [self.op("Concat", values, path, axis=2), shape], path)]
        if m.return_indices:
            outs.append(self.op("Reshape", [self.op("Concat", indices, path, axis=2), shape], path))
        return outs

    def _global_avg_pool(self, m, path, xs):
        """GlobalAveragePool, Flatten(axis=1): (N, C, *spatial) -> (N, C)."""
        if xs[0].ndim < 3:
            self.problem(path, m, f"expects (N, C, *spatial) input, got shape {xs[0].shape}")
            return None
        return [self.op("Flatten", [self.op("GlobalAveragePool", xs, path)], path, axis=1)]

    def _embedding(self, m, path, xs):
        """Gather(weight, ids) on axis 0 (ids of a type other than int32/int64 Cast first)."""
        if m.max_norm is not None:
            self.problem(path, m, "max_norm renormalizes the table in place at lookup, which "
                                  "an ONNX graph cannot do (renormalize the weights and set "
                                  "max_norm=None)")
            return None
        (ids,) = xs
        i = ids.name
        if ids.array.dtype not in (np.int32, np.int64):
            i = self.op("Cast", [i], path, to=self.b.onnx.TensorProto.INT64)
        return [self.op("Gather", [self.param(path, "weight", m.weight.data), i], path, axis=0)]

    # -- attention --------------------------------------------------------------------------
    def _mha(self, m, path, xs, need_weights=False, average_attn_weights=True, is_causal=False,
             key_padding=None, attn_mask=None, key_padding_mask=None):
        """Multi-head attention written out: per projection MatMul(x, Transpose(W)) + Add (the
        packed in_proj_weight / in_proj_bias Split in three), Concat of bias_k / zeros (Expand
        over the batch), Reshape/Transpose into heads, MatMul, Mul by 1/sqrt(d_head), Add of
        the causal / key-padding mask, Softmax, MatMul, Transpose/Reshape, out_proj (Linear's
        emitter); ReduceMean over heads for the averaged weights."""
        if attn_mask is not None or key_padding_mask is not None:
            self.problem(path, m, "is exported without masks: attn_mask / key_padding_mask "
                                  "arrays are not graph inputs (is_causal=True is supported)")
            return None
        h = _hint(path)
        E, H, D = m.embed_dim, m.num_heads, m.head_dim
        dt = self.b.dtype
        seqs = [x.name for x in xs]
        if not m.batch_first:
            seqs = [self.op("Transpose", [s], path, perm=[1, 0, 2]) for s in seqs]
        q_in = seqs[0]
        k_in, v_in = (seqs[1], seqs[2]) if len(seqs) == 3 else (q_in, q_in)
        N_T = xs[0].shape[:2] if m.batch_first else xs[0].shape[1::-1]
        T = N_T[1]
        S0 = (xs[1].shape[1] if m.batch_first else xs[1].shape[0]) if len(xs) == 3 else T
        if m._qkv_same_embed_dim:
            ws = self.b.op("Split", [self.param(path, "in_proj_weight", m.in_proj_weight.data)],
                           h, n_out=3, num_outputs=3, axis=0)
        else:
            ws = [self.param(path, f"{c}_proj_weight", getattr(m, f"{c}_proj_weight").data)
                  for c in "qkv"]
        bs = [None] * 3
        if m.in_proj_bias is not None:
            bs = self.b.op("Split", [self.param(path, "in_proj_bias", m.in_proj_bias.data)], h,
                           n_out=3, num_outputs=3, axis=0)
        proj = []
        for src, w, b in zip((q_in, k_in, v_in), ws, bs):
            y = self.op("MatMul", [src, self.op("Transpose", [w], path, perm=[1, 0])], path)
            proj.append(y if b is None else self.op("Add", [y, b], path))
        q, k, v = proj
        extra = (m.bias_k is not None) + m.add_zero_attn
        if extra:
            # (N, 1, E) rows appended to the keys and values: batch size from Shape(k)
            n1e = self.op("Concat", [self.op("Slice", [self.op("Shape", [k], path),
                                                       self.b.ints([0], h), self.b.ints([1], h)],
                                             path), self.b.ints([1, E], h)], path, axis=0)
            rows_k, rows_v = [], []
            if m.bias_k is not None:
                rows_k.append(self.param(path, "bias_k", m.bias_k.data))
                rows_v.append(self.param(path, "bias_v", m.bias_v.data))
            if m.add_zero_attn:
                zero = self.b.const(np.zeros((1, 1, E)), h)
                rows_k.append(zero)
                rows_v.append(zero)
            k = self.op("Concat", [k] + [self.op("Expand", [r, n1e], path) for r in rows_k],
                        path, axis=1)
            v = self.op("Concat", [v] + [self.op("Expand", [r, n1e], path) for r in rows_v],
                        path, axis=1)
        S = S0 + extra
        heads = self.b.ints([0, 0, H, D], h)
        q = self.op("Transpose", [self.op("Reshape", [q, heads], path)], path, perm=[0, 2, 1, 3])
        kt = self.op("Transpose", [self.op("Reshape", [k, heads], path)], path, perm=[0, 2, 3, 1])
        v = self.op("Transpose", [self.op("Reshape", [v, heads], path)], path, perm=[0, 2, 1, 3])
        scores = self.op("Mul", [self.op("MatMul", [q, kt], path),
                                 self.b.const(1.0 / math.sqrt(D), h)], path)
        if is_causal:
            mask = np.zeros((T, S))
            mask[:, :S0][np.arange(S0)[None, :] > np.arange(T)[:, None]] = -np.inf
            scores = self.op("Add", [scores, self.b.const(mask, h)], path)
        keep_rows = None
        if key_padding is not None:
            # a finite "minus infinity", so that a row with every key masked stays finite; it
            # is zeroed afterwards (fastmod: such a query attends to nothing, a zero row)
            big = self.b.const(np.finfo(dt).min, h)
            add = self.op("Where", [key_padding, big, self.b.const(0.0, h)], path)
            scores = self.op("Add", [scores, self.op("Unsqueeze", [add, self.b.ints([1, 2], h)],
                                                     path)], path)
            masked = self.op("Cast", [key_padding], path, to=self.b.onnx.helper.np_dtype_to_tensor_dtype(dt))
            all_masked = self.op("ReduceMin", [masked, self.b.ints([1], h)], path, keepdims=1)
            keep_rows = self.op("Unsqueeze", [self.op("Sub", [self.b.const(1.0, h), all_masked],
                                                      path), self.b.ints([2, 3], h)], path)
        p = self.op("Softmax", [scores], path, axis=-1)
        if keep_rows is not None:
            p = self.op("Mul", [p, keep_rows], path)
        ctx = self.op("MatMul", [p, v], path)
        ctx = self.op("Reshape", [self.op("Transpose", [ctx], path, perm=[0, 2, 1, 3]),
                                  self.b.ints([0, 0, E], h)], path)
        (out,) = self.emit(m.out_proj, _join(path, "out_proj"),
                           [Value(ctx, _shape_only(N_T + (E,), dt))])
        out = out.name
        if not m.batch_first:
            out = self.op("Transpose", [out], path, perm=[1, 0, 2])
        if not need_weights:
            return [out]
        if average_attn_weights:
            p = self.op("ReduceMean", [p, self.b.ints([1], h)], path, keepdims=0)
        return [out, p]

    def _encoder_layer(self, m, path, xs, is_causal=False, key_padding=None, src_mask=None,
                       src_key_padding_mask=None):
        """Post-LN: x1 = LN1(x + SA(x)), y = LN2(x1 + FF(x1)); pre-LN: x1 = x + SA(LN1(x)),
        y = x1 + FF(LN2(x1)); FF = linear2(act(linear1)). Add nodes and the children's
        emitters (dropout is the identity in eval); Transpose around it when seq-first."""
        if src_mask is not None or src_key_padding_mask is not None:
            self.problem(path, m, "is exported without masks: src_mask / src_key_padding_mask "
                                  "arrays are not graph inputs (is_causal=True is supported)")
            return None
        (x,) = xs
        if not m.batch_first:
            x = Value(self.op("Transpose", [x], path, perm=[1, 0, 2]),
                      np.ascontiguousarray(x.array.transpose(1, 0, 2)))
        sub = lambda name, v, **kw: self.emit(getattr(m, name), _join(path, name), [v], **kw)[0]

        def sa(v):
            return sub("self_attn", v, is_causal=is_causal, key_padding=key_padding)

        def ff(v):
            return sub("linear2", sub("activation", sub("linear1", v)))

        def add(a, b):
            return Value(self.op("Add", [a, b], path), a.array)

        if m.norm_first:
            x1 = add(x, sa(sub("norm1", x)))
            y = add(x1, ff(sub("norm2", x1)))
        else:
            x1 = sub("norm1", add(x, sa(x)))
            y = sub("norm2", add(x1, ff(x1)))
        return [y.name if m.batch_first else self.op("Transpose", [y], path, perm=[1, 0, 2])]

    def _encoder(self, m, path, xs, is_causal=False, key_padding=None, mask=None,
                 src_key_padding_mask=None):
        """The layers' emitters in turn, then the norm's."""
        for i, layer in enumerate(m.layers):
            xs = self.emit(layer, _join(path, f"layers.{i}"), xs, is_causal=is_causal,
                           key_padding=key_padding, src_mask=mask,
                           src_key_padding_mask=src_key_padding_mask)
        return xs if m.norm is None else self.emit(m.norm, _join(path, "norm"), xs)

    def _transformer_classifier(self, m, path, xs, key_padding_mask=None):
        """embed (Gather or Linear) + Slice of pos_embedding to the sequence length (from
        Shape), the layers, the norm, the mean over tokens (ReduceMean; with padding_idx a
        weighted ReduceSum of the non-padding tokens, whose key-padding mask is an Equal
        of the ids) and the head."""
        if key_padding_mask is not None:
            self.problem(path, m, "is exported without key_padding_mask arrays (padding from "
                                  "padding_idx is supported)")
            return None
        (x,) = xs
        hh = _hint(path)
        e = self.emit(m.embed, _join(path, "embed"), xs)[0]
        t = self.op("Slice", [self.op("Shape", [x], path), self.b.ints([1], hh),
                              self.b.ints([2], hh)], path)
        pos = self.op("Slice", [self.param(path, "pos_embedding", m.pos_embedding.data),
                                self.b.ints([0], hh), t, self.b.ints([0], hh)], path)
        h = Value(self.op("Add", [e, pos], path), e.array)
        kpm = None
        if m.padding_idx is not None:
            kpm = self.op("Equal", [x, self.b.const(m.padding_idx, hh, x.array.dtype)], path)
        for i, layer in enumerate(m.layers):
            (h,) = self.emit(layer, _join(path, f"layers.{i}"), [h], key_padding=kpm)
        if m.norm is not None:
            (h,) = self.emit(m.norm, _join(path, "norm"), [h])
        axis1 = self.b.ints([1], hh)
        if kpm is None:
            pooled = self.op("ReduceMean", [h, axis1], path, keepdims=0)
        else:
            keep = self.op("Cast", [self.op("Not", [kpm], path)], path,
                           to=self.b.onnx.helper.np_dtype_to_tensor_dtype(self.b.dtype))
            count = self.op("Max", [self.op("ReduceSum", [keep, axis1], path, keepdims=1),
                                    self.b.const(1.0, hh)], path)
            wts = self.op("Unsqueeze", [self.op("Div", [keep, count], path),
                                        self.b.ints([2], hh)], path)
            pooled = self.op("ReduceSum", [self.op("Mul", [h, wts], path), axis1], path,
                             keepdims=0)
        n, d = h.shape[0], h.shape[2]
        return self.emit(m.head, _join(path, "head"), [Value(pooled, _shape_only((n, d), self.b.dtype))])

    # -- CNN blocks -------------------------------------------------------------------------
    def _bn_res_block(self, m, path, xs):
        """bn2(act(conv2(bn1(act(conv1(x)))))) + x: the children's emitters and Add."""
        h = xs
        for name in ("conv1", "act1", "bn1", "conv2", "act2", "bn2"):
            h = self.emit(getattr(m, name), _join(path, name), h)
        return [self.op("Add", [h[0], xs[0]], path)]

    def _dense_block(self, m, path, xs):
        """x_l = act(Conv_l(x_0..x_{l-1})): per layer the Conv emitter, the activation's and a
        Concat on channels of everything so far."""
        feats = xs[0]
        for i, conv in enumerate(m.layers):
            z = self.emit(conv, _join(path, f"layers.{i}"), [feats])
            z = self.emit(m._acts[i], _join(path, f"act{i}"), z)[0]
            feats = Value(self.op("Concat", [feats, z], path, axis=1),
                          _shape_only(feats.shape[:1] + (feats.shape[1] + z.shape[1],)
                                      + feats.shape[2:], self.b.dtype))
        return [feats.name]
