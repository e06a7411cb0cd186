"""fastmod.from_torch: the fastmod equivalent of a torch.nn module tree, weights included.

    import torch, fastmod
    tmodel = torch.nn.Sequential(torch.nn.Linear(784, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
    model = fastmod.from_torch(tmodel)          # same names, weights, dtype and train/eval state
    model(x)                                    # x: a NumPy array; same outputs as tmodel

torch is imported inside from_torch only: fastmod never needs it otherwise.
"""
from collections import OrderedDict

import numpy as np

from fastmod import nn

__all__ = ["from_torch"]


class _Problems:
    """Every unsupported submodule and option found during one conversion, raised together."""

    def __init__(self):
        self.items, self.any_option = [], False     # messages in the order found

    def __len__(self):
        return len(self.items)

    def unsupported(self, path, tm, why="has no fastmod equivalent"):
        self.items.append(f"{path} ({_type_name(tm)}) {why}")

    def option(self, path, tm, text):
        self.items.append(f"{path} ({_type_name(tm)}): {text}")
        self.any_option = True

    def raise_if_any(self):
        items = list(OrderedDict.fromkeys(self.items))      # a shared module once
        if not items:
            return
        head = "from_torch: " if len(items) == 1 else \
            f"from_torch: {len(items)} parts of the model cannot be converted:\n  "
        # TypeError when every problem is a module type (or dtype) fastmod lacks, ValueError
        # when any is an option value; the message names every one either way
        cls = ValueError if self.any_option else TypeError
        raise cls(head + "\n  ".join(items))


def _type_name(tm):
    """'torch.nn.Linear' for torch.nn's public classes, else module.qualname."""
    t = type(tm)
    mod = t.__module__
    if mod.startswith("torch.nn.modules"):
        import torch.nn
        if getattr(torch.nn, t.__name__, None) is t:
            return f"torch.nn.{t.__name__}"
    return f"{mod}.{t.__qualname__}"


class _Converter:
    def __init__(self, torch, custom):
        self.torch, self.tnn = torch, torch.nn
        self.problems = _Problems()
        self.memo = {}                      # id(torch module) -> fastmod module (shared modules)
        self.params = {}                    # id(torch Parameter) -> fastmod Parameter (ties)
        tnn = self.tnn
        self.table = OrderedDict([
            (tnn.Sequential, self._sequential), (tnn.ModuleList, self._module_list),
            (tnn.Linear, self._linear), (tnn.Identity, self._simple(nn.Identity)),
            (tnn.ReLU, self._relu), (tnn.Sigmoid, self._simple(nn.Sigmoid)),
            (tnn.Tanh, self._simple(nn.Tanh)), (tnn.GELU, self._gelu),
            (tnn.Softmax, self._softmax(nn.Softmax)), (tnn.LogSoftmax, self._softmax(nn.LogSoftmax)),
            (tnn.LayerNorm, self._layer_norm), (tnn.BatchNorm1d, self._batch_norm(nn.BatchNorm1d)),
            (tnn.BatchNorm2d, self._batch_norm(nn.BatchNorm2d)), (tnn.GroupNorm, self._group_norm),
            (tnn.Conv1d, self._conv(nn.Conv1d)), (tnn.Conv2d, self._conv(nn.Conv2d)),
            (tnn.MaxPool1d, self._max_pool(nn.MaxPool1d)), (tnn.MaxPool2d, self._max_pool(nn.MaxPool2d)),
            (tnn.AvgPool1d, self._avg_pool(nn.AvgPool1d)), (tnn.AvgPool2d, self._avg_pool(nn.AvgPool2d)),
            (tnn.AdaptiveAvgPool1d, self._adaptive(nn.AdaptiveAvgPool1d)),
            (tnn.AdaptiveAvgPool2d, self._adaptive(nn.AdaptiveAvgPool2d)),
            (tnn.AdaptiveMaxPool1d, self._adaptive(nn.AdaptiveMaxPool1d)),
            (tnn.AdaptiveMaxPool2d, self._adaptive(nn.AdaptiveMaxPool2d)),
            (tnn.Flatten, self._flatten), (tnn.Dropout, self._dropout),
            (tnn.MultiheadAttention, self._mha), (tnn.TransformerEncoderLayer, self._encoder_layer),
            (tnn.TransformerEncoder, self._encoder), (tnn.Embedding, self._embedding),
        ])
        self.custom = {}
        for cls, fn in (custom or {}).items():
            if not (isinstance(cls, type) and issubclass(cls, tnn.Module)) or not callable(fn):
                raise TypeError("from_torch: custom must map torch.nn.Module subclasses to "
                                f"functions (module, convert) -> fastmod module, got {cls!r}: {fn!r}")
            self.custom[cls] = fn

    # -- dispatch -----------------------------------------------------------------------------
    def _lookup(self, tm):
        """The converter for tm: the user's for its exact class, else the table's for its class
        or a base class whose forward it does not override (e.g. MultiheadAttention's
        NonDynamicallyQuantizableLinear); None when there is none."""
        t = type(tm)
        if t in self.custom:
            fn = self.custom[t]
            return lambda tm, path: fn(tm, lambda child, name: self.convert(child, f"{path}.{name}"))
        for base in t.__mro__:
            fn = self.table.get(base)
            if fn is not None:
                return fn if t.forward is base.forward else None
        return None

    def convert(self, tm, path):
        """fastmod module for torch module tm at `path` (None when it cannot be converted: the
        problem is recorded and conversion continues, to name every problem at once)."""
        if not isinstance(tm, self.tnn.Module):
            self.problems.items.append(f"{path}: expected a torch.nn.Module, got {type(tm).__name__}")
            return None
        key = id(tm)
        if key in self.memo:
            return self.memo[key]
        fn = self._lookup(tm)
        if fn is None:
            self.problems.unsupported(path, tm)
            return None
        hooks = [kind for kind, attr in (("forward pre-", "_forward_pre_hooks"),
                                         ("forward ", "_forward_hooks"),
                                         ("backward pre-", "_backward_pre_hooks"),
                                         ("backward ", "_backward_hooks"))
                 if getattr(tm, attr, None)]
        if hooks:                               # code fastmod would silently not run
            self.problems.option(path, tm, "has " + " and ".join(f"{k}hooks" for k in hooks)
                                 + ", which a fastmod module cannot run (remove them first)")
            return None
        n_problems = len(self.problems)
        try:
            fm = fn(tm, path)
        except (TypeError, ValueError) as e:    # fastmod's constructor refused an option value
            if len(self.problems) == n_problems:   # (else a child's problem is the cause)
                self.problems.option(path, tm, str(e))
            return None
        if fm is None or len(self.problems) > n_problems:
            return None
        if not isinstance(fm, nn.Module):
            raise TypeError(f"from_torch: the converter for {_type_name(tm)} returned "
                            f"{type(fm).__name__}, not a fastmod Module")
        self.memo[key] = fm
        return fm

    # -- weights -----------------------------------------------------------------------------------
    def dtype(self, tm, path):
        """np.float32 / np.float64: the dtype of tm's floating parameters and buffers (float32
        when it has none); a problem when they mix dtypes or use another (float16, ...)."""
        torch = self.torch
        found = {t.dtype for t in list(tm.parameters()) + list(tm.buffers())
                 if t.is_floating_point()}
        if not found:
            return np.float32
        if len(found) > 1:
            self.problems.option(path, tm, "mixes dtypes " + ", ".join(sorted(map(str, found)))
                                 + " (fastmod modules hold one dtype: use .float() or .double())")
            return None
        (dt,) = found
        if dt == torch.float32:
            return np.float32
        if dt == torch.float64:
            return np.float64
        self.problems.unsupported(path, tm, f"has dtype {dt}, which fastmod does not support "
                                            "(float32 or float64: use .float() or .double())")
        return None

    def load(self, fm, tm, path):
        """Copy tm's parameters and buffers into fm (same names), with requires_grad, and tie
        fm's parameters where tm's are one tensor shared by several modules."""
        sd = {k: v.detach().cpu().numpy() for k, v in tm.state_dict().items()}
        try:
            fm.load_state_dict(sd)
        except (TypeError, ValueError) as e:
            self.problems.option(path, tm, f"its weights do not fit the fastmod module ({e})")
            return None
        owners = dict(fm.named_modules(remove_duplicate=False))
        fparams = dict(fm.named_parameters(remove_duplicate=False))
        for name, tp in tm.named_parameters(remove_duplicate=False):
            fp = fparams[name]
            fp.requires_grad = bool(tp.requires_grad)
            tied = self.params.setdefault(id(tp), fp)
            if tied is not fp:                  # the same torch tensor seen before: share it
                owner, _, attr = name.rpartition(".")
                setattr(owners[owner], attr, tied)
        return fm

    # -- containers ---------------------------------------------------------------------------------
    def _sequential(self, tm, path):
        # _modules, not named_children(): a module used twice is listed at both places
        kids = OrderedDict((name, self.convert(child, f"{path}.{name}"))
                           for name, child in tm._modules.items())
        if any(v is None for v in kids.values()):
            return None
        return nn.Sequential(kids)

    def _module_list(self, tm, path):
        kids = [self.convert(child, f"{path}.{i}") for i, child in enumerate(tm)]
        if any(v is None for v in kids):
            return None
        return nn.ModuleList(kids)

    # -- layers ---------------------------------------------------------------------------------------
    def _linear(self, tm, path):
        dt = self.dtype(tm, path)
        if dt is None:
            return None
        fm = nn.Linear(tm.in_features, tm.out_features, bias=tm.bias is not None, dtype=dt)
        return self.load(fm, tm, path)

    @staticmethod
    def _simple(cls):
        return lambda tm, path: cls()

    def _relu(self, tm, path):
        return nn.ReLU(inplace=bool(tm.inplace))

    def _gelu(self, tm, path):
        return nn.GELU(approximate=tm.approximate)

    def _softmax(self, cls):
        def make(tm, path):
            if tm.dim is None:
                self.problems.option(path, tm, "dim=None (torch's implicit, deprecated choice of "
                                               "dimension) is not supported: construct it with dim=...")
                return None
            return cls(dim=tm.dim)
        return make

    def _layer_norm(self, tm, path):
        dt = self.dtype(tm, path)
        if dt is None:
            return None
        affine = bool(tm.elementwise_affine)
        fm = nn.LayerNorm(tuple(tm.normalized_shape), eps=tm.eps, elementwise_affine=affine,
                          bias=(tm.bias is not None) if affine else True, dtype=dt)
        return self.load(fm, tm, path)

    def _batch_norm(self, cls):
        def make(tm, path):
            dt = self.dtype(tm, path)
            if dt is None:
                return None
            fm = cls(tm.num_features, eps=tm.eps, momentum=tm.momentum, affine=bool(tm.affine),
                     track_running_stats=bool(tm.track_running_stats), dtype=dt)
            return self.load(fm, tm, path)
        return make

    def _group_norm(self, tm, path):
        dt = self.dtype(tm, path)
        if dt is None:
            return None
        fm = nn.GroupNorm(tm.num_groups, tm.num_channels, eps=tm.eps, affine=bool(tm.affine), dtype=dt)
        return self.load(fm, tm, path)

    def _conv(self, cls):
        def make(tm, path):
            dt = self.dtype(tm, path)
            if dt is None:
                return None
            pad = tm.padding if isinstance(tm.padding, str) else tuple(tm.padding)
            fm = cls(tm.in_channels, tm.out_channels, tuple(tm.kernel_size), stride=tuple(tm.stride),
                     padding=pad, dilation=tuple(tm.dilation), groups=tm.groups,
                     bias=tm.bias is not None, padding_mode=tm.padding_mode, dtype=dt)
            return self.load(fm, tm, path)
        return make

    def _max_pool(self, cls):
        return lambda tm, path: cls(tm.kernel_size, stride=tm.stride, padding=tm.padding,
                                    dilation=tm.dilation, return_indices=bool(tm.return_indices),
                                    ceil_mode=bool(tm.ceil_mode))

    def _avg_pool(self, cls):
        def make(tm, path):
            kw = {}
            if getattr(tm, "divisor_override", None) is not None:
                kw["divisor_override"] = tm.divisor_override
            return cls(tm.kernel_size, stride=tm.stride, padding=tm.padding,
                       ceil_mode=bool(tm.ceil_mode), count_include_pad=bool(tm.count_include_pad), **kw)
        return make

    def _adaptive(self, cls):
        def make(tm, path):
            kw = {"return_indices": bool(tm.return_indices)} if hasattr(tm, "return_indices") else {}
            size = tm.output_size
            return cls(tuple(size) if isinstance(size, (tuple, list)) else size, **kw)
        return make

    def _flatten(self, tm, path):
        return nn.Flatten(tm.start_dim, tm.end_dim)

    def _dropout(self, tm, path):
        return nn.Dropout(tm.p, inplace=bool(tm.inplace))

    def _embedding(self, tm, path):
        dt = self.dtype(tm, path)
        if dt is None:
            return None
        # sparse=True only changes the gradient's format in torch: fastmod's is dense
        fm = nn.Embedding(tm.num_embeddings, tm.embedding_dim, padding_idx=tm.padding_idx,
                          max_norm=tm.max_norm, norm_type=tm.norm_type,
                          scale_grad_by_freq=bool(tm.scale_grad_by_freq), dtype=dt)
        return self.load(fm, tm, path)

    # -- attention and transformer --------------------------------------------------------------------
    def _mha(self, tm, path):
        dt = self.dtype(tm, path)
        if dt is None:
            return None
        if type(tm.out_proj).forward is not self.tnn.Linear.forward:
            self.problems.unsupported(f"{path}.out_proj", tm.out_proj, "overrides Linear.forward")
            return None
        fm = nn.MultiheadAttention(tm.embed_dim, tm.num_heads, dropout=tm.dropout,
                                   bias=tm.in_proj_bias is not None,
                                   add_bias_kv=tm.bias_k is not None,
                                   add_zero_attn=bool(tm.add_zero_attn), kdim=tm.kdim, vdim=tm.vdim,
                                   batch_first=bool(tm.batch_first), dtype=dt)
        return self.load(fm, tm, path)

    def _activation_of(self, tm, path):
        """A TransformerEncoderLayer's activation: 'relu' / 'gelu' for torch's F.relu / F.gelu,
        or the converted module when it is a module (e.g. nn.GELU(approximate='tanh'))."""
        F = self.tnn.functional
        act = tm.activation
        if act is F.relu or act is self.torch.relu:
            return "relu"
        if act is F.gelu:
            return "gelu"
        if isinstance(act, self.tnn.Module):
            return self.convert(act, f"{path}.activation")
        name = getattr(act, "__name__", None)
        if name is not None and getattr(self.torch, name, None) is act:
            name = f"torch.{name}"
        elif name is not None and getattr(F, name, None) is act:
            name = f"torch.nn.functional.{name}"
        else:
            name = getattr(act, "__qualname__", None) or repr(act)
        self.problems.option(path, tm, f"activation={name} is not supported (fastmod takes "
                                       "'relu', 'gelu' or a module such as torch.nn.GELU())")
        return None

    def _encoder_layer(self, tm, path):
        dt = self.dtype(tm, path)
        act = self._activation_of(tm, path)
        if dt is None or act is None:
            return None
        sa = tm.self_attn
        p = tm.dropout.p
        ps = {"dropout": p, "dropout1": tm.dropout1.p, "dropout2": tm.dropout2.p,
              "self_attn.dropout": sa.dropout}
        if len(set(ps.values())) > 1:
            self.problems.option(path, tm, "its dropout probabilities differ ("
                                 + ", ".join(f"{k}={v}" for k, v in ps.items())
                                 + "); fastmod's layer has one dropout")
            return None
        if tm.norm1.eps != tm.norm2.eps:
            self.problems.option(path, tm, f"norm1.eps ({tm.norm1.eps}) and norm2.eps "
                                           f"({tm.norm2.eps}) differ; fastmod's layer has one "
                                           "layer_norm_eps")
            return None
        bias = tm.linear1.bias is not None
        if not (sa._qkv_same_embed_dim and sa.bias_k is None and not sa.add_zero_attn
                and (sa.in_proj_bias is not None) == bias):
            self.problems.option(path, tm, "its self_attn has options a TransformerEncoderLayer "
                                           "does not build (kdim/vdim, add_bias_kv, add_zero_attn)")
            return None
        fm = nn.TransformerEncoderLayer(sa.embed_dim, sa.num_heads,
                                        dim_feedforward=tm.linear1.out_features, dropout=p,
                                        activation=act if isinstance(act, str) else "relu",
                                        layer_norm_eps=tm.norm1.eps,
                                        batch_first=bool(sa.batch_first),
                                        norm_first=bool(tm.norm_first), bias=bias, dtype=dt)
        if not isinstance(act, str):
            fm.activation = act
        return self.load(fm, tm, path)

    def _encoder(self, tm, path):
        layers = [self.convert(layer, f"{path}.layers.{i}") for i, layer in enumerate(tm.layers)]
        norm = None if tm.norm is None else self.convert(tm.norm, f"{path}.norm")
        if any(v is None for v in layers) or (tm.norm is not None and norm is None):
            return None
        fm = nn.TransformerEncoder(layers[0], 1)
        fm.layers = nn.ModuleList(layers)       # the converted layers themselves, not copies
        fm.num_layers = len(layers)
        fm.norm = norm
        return fm


def from_torch(module, *, custom=None):
    """The fastmod module equivalent to a torch.nn module tree, with its weights and buffers.

    Converts Sequential, ModuleList, Linear, ReLU, Sigmoid, Tanh, GELU, Softmax, LogSoftmax,
    LayerNorm, BatchNorm1d/2d, GroupNorm, Conv1d/2d (stride, padding incl. 'same', dilation,
    groups, bias, padding_mode), Max/AvgPool1d/2d, AdaptiveAvg/MaxPool1d/2d, Flatten, Dropout,
    Identity, MultiheadAttention, TransformerEncoderLayer, TransformerEncoder and Embedding.
    The result has torch's child names (so its state_dict has torch's keys), each module's
    dtype (float32 or float64), parameters' requires_grad, modules and parameters shared as in
    torch, and every module's train/eval state (a submodule in eval stays in eval). torch is
    imported here only.

    Differences to know: a fastmod module returns arrays, not tuples — MultiheadAttention
    returns its output alone unless called with need_weights=True (torch returns
    (output, weights) by default). Subclasses of these modules are converted only when they do
    not override forward (anything else is a model of its own: pass `custom`).

    Args:
        module: a torch.nn.Module.
        custom: {torch module class: fn(module, convert) -> fastmod module} for classes of your
            own (exact class); `convert(child, name)` converts a child (recording problems
            under its dotted path), e.g.
            ``{MyBlock: lambda m, convert: fastmod.nn.Residual(convert(m.body, "body"))}``
            (the function copies any weights of its own).

    Raises:
        TypeError: naming the dotted path and class of *every* submodule with no fastmod
            equivalent (e.g. ``model.3 (torch.nn.LSTM) has no fastmod equivalent``) or an
            unsupported dtype; ValueError: as well when any option has no fastmod equivalent
            (an activation function other than relu/gelu, Softmax(dim=None), forward or
            backward hooks, ...), naming it.
        ImportError: torch is not installed.

    Example:
        >>> import torch, fastmod
        >>> t = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).double().eval()
        >>> m = fastmod.from_torch(t)
        >>> m[0].weight.dtype, m.training
        (dtype('float64'), False)
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"from_torch needs PyTorch (pip install torch): {e}") from None
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_torch: expected a torch.nn.Module, got {type(module).__name__}")
    conv = _Converter(torch, custom)
    fm = conv.convert(module, "model")
    conv.problems.raise_if_any()
    # train/eval per module, matched by dotted name (fastmod keeps torch's): torch's state, or
    # the parent's for a module torch does not have (a TransformerEncoderLayer's activation,
    # a function in torch)
    tmodes = {name: m.training for name, m in module.named_modules(remove_duplicate=False)}
    _copy_modes(fm, "", tmodes, module.training)
    return fm


def _copy_modes(fm, name, tmodes, parent):
    own = tmodes.get(name, parent)
    fm.__dict__["training"] = own
    for child_name, child in fm._modules.items():
        if child is not None:
            _copy_modes(child, f"{name}.{child_name}" if name else child_name, tmodes, own)
