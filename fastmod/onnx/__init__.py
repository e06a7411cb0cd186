"""fastmod.onnx: export a fastmod model to an ONNX file, and build a fastmod model from one.

    import fastmod, fastmod.onnx
    model = fastmod.models.cnn()
    fastmod.onnx.export(model, x, "cnn.onnx")       # standard ONNX (opset 21), batch dim "N"
    same = fastmod.onnx.load("cnn.onnx")            # a trainable fastmod model again

`onnx` is imported inside these functions only (pip install "fastmod[onnx]"): importing
fastmod never needs it.
"""
import copy

import numpy as np

from fastmod import nn
from fastmod._runtime import no_grad

__all__ = ["export", "load"]


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f'fastmod.onnx needs the onnx package (pip install "fastmod[onnx]"): '
                          f"{e}") from None
    return onnx


def _model_dtype(model, arrays):
    """The model's float dtype: its first floating parameter or buffer's, else the first
    float input's, else float32."""
    for t in list(model.state_dict().values()) + list(arrays):
        if isinstance(t, np.ndarray) and t.dtype in (np.float32, np.float64):
            return t.dtype
    return np.dtype(np.float32)


def export(model, example_input, path=None, *, kwargs=None, dtype=None, input_names=None,
           output_names=None):
    """Write `model` as an ONNX model (opset 21, standard operators only), in eval mode.

    The graph is written by walking the module tree, one emitter per module family (not by
    tracing): Linear -> Gemm (2-D input) or MatMul + Add, ReLU/Sigmoid/Tanh/GELU -> Relu /
    Sigmoid / Tanh / Gelu, Softmax/LogSoftmax, LayerNorm -> LayerNormalization, BatchNorm ->
    BatchNormalization (running statistics), GroupNorm -> GroupNormalization, Conv1d/2d ->
    Conv (Pad before it for reflect/replicate/circular padding), pools -> MaxPool /
    AveragePool / GlobalAveragePool (adaptive pools with unequal bins: Slice + Reduce* per
    bin), Flatten -> Flatten or Reshape, Dropout -> Dropout, Identity -> Identity, Embedding
    -> Gather, Residual/Parallel -> Add/Concat, MultiheadAttention and the transformer
    layers -> MatMul/Softmax/Reshape/Transpose subgraphs (see fastmod/onnx/_export.py for
    every emitter). Parameters and buffers are initializers named as in model.state_dict().

    The model runs once on `example_input` (fastmod's own errors for a wrong input shape or
    dtype), the graph's static shapes come from it, except the batch dim: symbolic ("N"; the
    first dim, the second for batch_first=False attention/transformer layers), any batch
    size runs. Each module's train/eval state is
    restored afterwards.

    float64 models are written as float64 (every operator used is defined for double);
    ONNX Runtime's CPU provider lacks double kernels for Conv, AveragePool,
    GlobalAveragePool and Erf (exact GELU), so to run such a model there export it with
    dtype=np.float32 (a converted copy is exported; the model is not changed).

    Args:
        model: a fastmod.nn.Module built from fastmod.nn modules and fastmod.models.
        example_input: an array, or a tuple of arrays for several inputs (MultiheadAttention's
            query, key, value); integer ids for Embedding.
        path: file to write (None: only return the ModelProto).
        kwargs: keyword options of model's forward, fixed into the graph: need_weights,
            average_attn_weights, is_causal (masks given as arrays are not supported).
        dtype: np.float32 / np.float64 to export a converted copy; None keeps the model's.
        input_names, output_names: graph input/output names (default "input" / "output",
            "input_0", ... when there are several).

    Returns:
        The onnx.ModelProto (checked with onnx.checker.check_model).

    Raises:
        TypeError: a module has no ONNX emitter (every such module named with its dotted
            path and type); ValueError: an option of a supported module cannot be expressed
            (naming it); ImportError: onnx is not installed.

    Example:
        >>> import numpy as np, fastmod, fastmod.onnx
        >>> m = fastmod.models.mlp([4, 8, 2])
        >>> proto = fastmod.onnx.export(m, np.zeros((1, 4), np.float32))
        >>> [n.op_type for n in proto.graph.node]
        ['Gemm', 'Relu', 'Gemm']
    """
    onnx = _onnx()
    from fastmod.onnx._export import Exporter, Value

    if not isinstance(model, nn.Module):
        raise TypeError(f"fastmod.onnx.export: expected a fastmod.nn.Module, got {type(model).__name__}")
    arrays = example_input if isinstance(example_input, tuple) else (example_input,)
    for i, a in enumerate(arrays):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"fastmod.onnx.export: expected example_input to be a numpy.ndarray "
                            f"or a tuple of them, got {type(a).__name__} at position {i}")
        if a.ndim == 0:
            raise ValueError("fastmod.onnx.export: example_input needs a batch dim, got a 0-d array")
    kwargs = dict(kwargs or {})
    if dtype is not None:
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"fastmod.onnx.export: dtype must be float32 or float64, got {dt}")
        if dt != _model_dtype(model, arrays):
            model = copy.deepcopy(model).astype(dt)
            arrays = tuple(a.astype(dt) if a.dtype.kind == "f" else a for a in arrays)
    dt = _model_dtype(model, arrays)

    modes = [(m, m.training) for _, m in model.named_modules(remove_duplicate=False)]
    model.eval()
    try:
        with no_grad():
            model(*arrays, **kwargs)            # fastmod's own error for a wrong input
        ex = Exporter(onnx, dt)
        ins = [Value(ex.b.fresh(n), a) for n, a in zip(_names(input_names, "input", len(arrays)),
                                                       arrays)]
        outs = ex.emit(model, "", ins, **kwargs)
    finally:
        for m, mode in modes:
            m.__dict__["training"] = mode
    if ex.problems:
        items = list(dict.fromkeys(msg for msg, _ in ex.problems))
        cls = ValueError if any(opt for _, opt in ex.problems) else TypeError
        head = "fastmod.onnx.export: " if len(items) == 1 else \
            f"fastmod.onnx.export: {len(items)} parts of the model cannot be exported:\n  "
        raise cls(head + "\n  ".join(items))

    # graph outputs get their own names (an Identity when one Value is output twice or is an input)
    names = _names(output_names, "output", len(outs))
    taken = {i.name for i in ins}
    renames = {}
    for v, name in zip(outs, names):
        if v.name in taken or v.name in renames:
            ex.b.op("Identity", [v.name], "/output")
            ex.b.nodes[-1].output[0] = name
        else:
            renames[v.name] = name
        taken.add(v.name)
    for node in ex.b.nodes:
        for seq in (node.input, node.output):
            for j, n in enumerate(seq):
                if n in renames:
                    seq[j] = renames[n]
    helper = onnx.helper
    tensor_type = helper.np_dtype_to_tensor_dtype
    axis = batch_axis(model)
    graph_in = [helper.make_tensor_value_info(
        v.name, tensor_type(v.array.dtype),
        [("N" if i == axis else d) for i, d in enumerate(v.shape)]) for v in ins]
    graph_out = [helper.make_tensor_value_info(n, tensor_type(np.asarray(v.array).dtype), None)
                 for v, n in zip(outs, names)]
    proto = ex.b.model(graph_in, graph_out, f"fastmod {type(model).__name__}")
    # the outputs' shapes (with the symbolic batch dim), as ONNX's shape inference finds them
    inferred = onnx.shape_inference.infer_shapes(proto)
    for out, inf, v in zip(proto.graph.output, inferred.graph.output, outs):
        if inf.type.tensor_type.HasField("shape"):
            out.type.CopyFrom(inf.type)
        else:                   # e.g. after GroupNormalization (a function): fastmod's shape
            out.type.CopyFrom(helper.make_tensor_type_proto(
                out.type.tensor_type.elem_type,
                [("N" if i == axis else d) for i, d in enumerate(np.shape(v.array))]))
    onnx.checker.check_model(proto)
    if path is not None:
        onnx.save(proto, path)
    return proto


def batch_axis(model):
    """The batch axis of the model's input: 1 for sequence-first attention and transformer
    layers (batch_first=False, input (T, N, E)), else 0."""
    return 1 if getattr(model, "batch_first", True) is False else 0


def _names(given, base, n):
    if given is not None:
        given = list(given)
        if len(given) != n or len(set(given)) != n or not all(isinstance(s, str) and s for s in given):
            raise ValueError(f"fastmod.onnx.export: expected {n} distinct non-empty {base} "
                             f"names, got {given!r}")
        return given
    return [base] if n == 1 else [f"{base}_{i}" for i in range(n)]


def load(model, dtype=None):
    """Build a fastmod model from an ONNX model (a path or an onnx.ModelProto).

    The result is a tree of public fastmod modules (Sequential, Residual, Parallel, Linear,
    Conv1d/2d, the norms, pools, activations, MultiheadAttention, Embedding, ...) with the
    graph's weights copied in, in eval mode; it gives ONNX Runtime's outputs on the same file
    and trains like any fastmod model (call .train() first).

    Reads the operators fastmod.onnx.export writes and those torch.onnx.export writes for the
    same torch modules: Gemm, MatMul (+ Add), Conv (+ Pad), Relu, Gelu and its Erf form,
    Sigmoid, Tanh, Softmax, LogSoftmax, BatchNormalization, LayerNormalization,
    GroupNormalization and torch's InstanceNormalization form of it, MaxPool, AveragePool,
    GlobalAveragePool, Flatten, Reshape (to (N, -1)), Dropout, Identity, Add of two branches
    (Residual / Parallel), Concat (Parallel), Gather (Embedding) and self-attention
    subgraphs (MatMul -> Softmax -> MatMul between constant-weight projections: what export
    writes for MultiheadAttention, and torch's for MultiheadAttention and
    TransformerEncoderLayer) as MultiheadAttention. Arithmetic on constants and shapes
    (Transpose / Split of a weight, Shape, Gather, Concat, ...) is folded first. Not read back:
    masked attention, adaptive pools with unequal bins, BatchNorm without running statistics,
    sequence-first transformer layers, graphs with several inputs or outputs.

    Args:
        model: a path to an .onnx file or an onnx.ModelProto with one input and one output.
        dtype: None keeps the graph's float type; np.float32 / np.float64 converts.

    Raises:
        TypeError: the graph uses operators (or patterns) with no fastmod module: every
            such node is named with its op_type; ValueError: an attribute value fastmod
            does not support (naming the node and attribute); ImportError: onnx missing.
    """
    onnx = _onnx()
    from fastmod.onnx._import import Importer

    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        model = onnx.load(model)
    if not isinstance(model, onnx.ModelProto):
        raise TypeError(f"fastmod.onnx.load: expected a path or an onnx.ModelProto, got "
                        f"{type(model).__name__}")
    fm = Importer(onnx, model).build()
    if dtype is not None:
        fm.astype(dtype)
    return fm.eval()
