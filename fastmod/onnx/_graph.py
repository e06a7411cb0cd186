"""A small ONNX graph builder shared by export: unique names, initializers, nodes.

onnx is imported by the caller (fastmod.onnx.export) before this module is used.
"""
from collections import OrderedDict

import numpy as np

OPSET = 21          # Gelu (20), GroupNormalization with per-channel scale (21), Pad 'wrap' (19)


class Value:
    """One tensor of the graph: its name and the example array fastmod computed for it (the
    emitters read static shapes from it; the batch dim stays symbolic in the graph)."""

    def __init__(self, name, array):
        self.name, self.array = name, array

    @property
    def shape(self):
        return self.array.shape

    @property
    def ndim(self):
        return self.array.ndim


class GraphBuilder:
    """Nodes and initializers of one graph; every name it hands out is unique.

    dtype: the model's float dtype (constants are made in it)."""

    def __init__(self, onnx, dtype):
        self.onnx, self.dtype = onnx, np.dtype(dtype)
        self.nodes, self.initializers = [], OrderedDict()
        self._used = set()

    def fresh(self, hint):
        """A new value or node name starting with `hint` ('/' separated, like torch's)."""
        name, k = hint, 1
        while name in self._used:
            k += 1
            name = f"{hint}_{k}"
        self._used.add(name)
        return name

    def param(self, name, array):
        """The initializer `name` (a state_dict key) holding `array`; shared weights once."""
        if name not in self.initializers:
            self._used.add(name)
            self.initializers[name] = np.ascontiguousarray(array)
        return name

    def const(self, value, hint, dtype=None):
        """An initializer for a constant (the model's float dtype unless `dtype` is given)."""
        arr = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.fresh(f"{hint}/const")
        self.initializers[name] = arr
        return name

    def ints(self, values, hint):
        """An int64 1-D constant (shapes, axes, slice bounds)."""
        return self.const(np.asarray(values, np.int64).reshape(-1), hint, np.int64)

    def op(self, op_type, inputs, hint, n_out=1, **attrs):
        """Add one node; returns its output name (a list of them when n_out > 1). Empty
        strings in `inputs` are omitted optional inputs."""
        node_name = self.fresh(f"{hint}/{op_type}")
        outs = [self.fresh(f"{node_name}_output_{i}") for i in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, list(inputs), outs,
                                                     name=node_name, **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self, inputs, outputs, doc):
        """The ModelProto: `inputs` / `outputs` are ValueInfoProtos."""
        helper, numpy_helper = self.onnx.helper, self.onnx.numpy_helper
        inits = [numpy_helper.from_array(a, n) for n, a in self.initializers.items()]
        graph = helper.make_graph(self.nodes, "fastmod", inputs, outputs, inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="fastmod", doc_string=doc)
        m.ir_version = min(m.ir_version, 10)        # what onnxruntime 1.2x reads
        return m
