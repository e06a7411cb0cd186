"""Composition (the seed's "Module Composition Strategies"): sequential, parallel, residual."""
from collections import OrderedDict

import numpy as np

from fastmod._validate import positive_int
from fastmod._runtime import STATE
from fastmod.nn.activation import make_activation
from fastmod._kernels import linear as _kl
from fastmod.nn.linear import Linear
from fastmod.nn.conv import Conv1d, Conv2d, chainable, conv_chain_forward
from fastmod.nn.module import (F32, STRUCTURE_VERSION, Module, elementwise_activation,
                               fuses_input_activation_grad, fuses_output_activation)

# Sequential's float32 Linear chains (ReLUs fused) run in one kernel call below this many rows
# under no_grad: the per-layer Python of a batch-1 MLP (~2-3 us a layer) against ~20 us of work
CHAIN_MAX_ROWS = 8

def _like(x):
    """(shape, dtype) of a float array, to check a gradient against in backward; (None, None)
    for anything else (e.g. integer tokens: their gradient, None, is passed through)."""
    return (x.shape, x.dtype) if isinstance(x, np.ndarray) and x.dtype.kind == "f" else (None, None)


class Identity(Module):
    """y = x. Shape: any -> same. Backward checks that dy has x's shape and dtype (when x is an
    array) and returns it."""

    def forward(self, x):
        self._save(*_like(x))
        return x

    def backward(self, dy, need_input_grad=True):
        shape, dtype = self._saved()
        if shape is not None:
            dy = self._check_grad(dy, shape, dtype)
        return dy if need_input_grad else None


class Sequential(Module):
    """f(x) = f_n(... f_2(f_1(x))) (the seed's sequential composition); backward in reverse.

    Args: modules, or one OrderedDict of name -> module. Children are named "0", "1", ...

    Example:
        >>> import numpy as np, fastmod.nn as nn
        >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> m(np.zeros((3, 4), np.float32)).shape
        (3, 2)
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], (dict, OrderedDict)):
            items = modules[0].items()
        else:
            items = ((str(i), m) for i, m in enumerate(modules))
        for name, m in items:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: element {name!r} is a {type(m).__name__}, not a Module")
            self.add_module(name, m)

    # Fusion by capability (Module's protocol), never by class:
    # - a layer that fuses_output_activation followed by an elementwise_activation module: one
    #   call, layer(x, activation=name), applies it to the fresh output in place -- the
    #   activation module's call, check, allocation and pass over the output saved
    #   (mlp_b1_infer: 2 us of ~65 us per Linear + ReLU; Conv + ReLU in training: 3% of a
    #   cnn_b32 step at one thread);
    # - an activation followed by a layer that fuses_input_activation_grad: the layer's backward
    #   folds the activation's into its input gradient (Linear: ReLU's mask applied block by
    #   block inside the kernel, no extra pass or array).
    # The plan is cached until a module's children or hooks change (STRUCTURE_VERSION), and
    # what forward did is saved with grad enabled, so backward follows it exactly.
    _CALL, _FUSED, _ACTIVATE, _CHAIN = 0, 1, 2, 3

    def _plan(self):
        """((kind, module, activation name, activation module, input activation, folded), ...):
        _CALL -- m(x); _FUSED -- m(x, activation=name), the activation module skipped (folded:
        the next layer does its backward, else this container does, from the output);
        _ACTIVATE -- an activation computed without saving (the next layer folds its backward).
        input activation: the name m's backward folds in (the activation before it), or None."""
        d = self.__dict__
        cached = d.get("_plan_cache")
        if cached is not None and cached[0] == STRUCTURE_VERSION[0]:
            return cached[1]
        mods = tuple(m for m in self._modules.values() if m is not None)
        plan, absorbed, i, n = [], None, 0, len(mods)
        while i < n:
            m = mods[i]
            act = elementwise_activation(mods[i + 1]) if i + 1 < n else None
            if act is not None and fuses_output_activation(m, act):
                folded = i + 2 < n and fuses_input_activation_grad(mods[i + 2], act)
                plan.append((self._FUSED, m, act, mods[i + 1], absorbed, folded))
                absorbed = act if folded else None
                i += 2
                continue
            act = elementwise_activation(m)
            if act is not None and i + 1 < n and fuses_input_activation_grad(mods[i + 1], act):
                plan.append((self._ACTIVATE, m, act, None, None, True))
                absorbed = act
            else:
                plan.append((self._CALL, m, None, None, absorbed, False))
                absorbed = None
            i += 1
        plan = tuple(plan)
        d["_plan_cache"] = (STRUCTURE_VERSION[0], plan)
        return plan

    def _linear_chain(self, plan):
        """(in_features, ((Linear, relu), ...)) when the plan is two or more float32 Linear
        layers of exactly that class -- each followed by a fused ReLU or nothing, none hooked
        or wrapped (profiling) -- else None; cached with the plan."""
        d = self.__dict__
        cached = d.get("_chain_cache")
        if cached is not None and cached[0] is plan:
            chain = cached[1]
        else:
            chain = None
            if len(plan) >= 2 and all(
                    type(m) is Linear and m.weight.data.dtype == F32 and (
                        (kind == self._FUSED and act == "relu") or kind == self._CALL)
                    for kind, m, act, _, _, _ in plan):
                chain = (plan[0][1].in_features,
                         tuple((m, kind == self._FUSED) for kind, m, _, _, _, _ in plan))
            d["_chain_cache"] = (plan, chain)
        if chain is None or any("forward" in m.__dict__ or m.__dict__.get("_observed")
                                for m, _ in chain[1]):
            return None
        return chain

    def _conv_runs(self, plan):
        """The plan with each run of two or more convolutions (each followed by a fused ReLU or
        nothing) as one entry (_CHAIN, ((conv, relu), ...), the run's plan entries), or None
        when there is no such run; cached with the plan."""
        d = self.__dict__
        cached = d.get("_conv_runs_cache")
        if cached is not None and cached[0] is plan:
            return cached[1]
        out, run = [], []

        def flush():
            if len(run) > 1:
                out.append((self._CHAIN, tuple((e[1], e[0] == self._FUSED) for e in run),
                            tuple(run)))
            else:
                out.extend(run)
            run.clear()

        for e in plan:
            kind, m, act = e[:3]
            if type(m) in (Conv1d, Conv2d) and (kind == self._CALL or (
                    kind == self._FUSED and act == "relu")):
                run.append(e)
                continue
            flush()
            out.append(e)
        flush()
        runs = tuple(out) if any(e[0] == self._CHAIN for e in out) else None
        d["_conv_runs_cache"] = (plan, runs)
        return runs

    def _forward_steps(self, steps, x):
        """Under no_grad: the plan's entries in turn (a _CHAIN run depth first in one kernel call
        when its layers and x allow, else layer by layer)."""
        for e in steps:
            kind, m = e[0], e[1]
            if kind == self._CHAIN:
                y = conv_chain_forward(m, x) if all(chainable(c) for c, _ in m) else None
                x = self._forward_steps(e[2], x) if y is None else y
            elif kind == 1:                         # nothing to release or save: no __call__
                x = m.forward(x, activation=e[2])
            elif kind == 2:
                x = m.activate(x)
            else:
                x = m(x)
        return x

    def forward(self, x):
        if not self._modules:                       # empty: the identity (checked as Identity)
            self._save(*_like(x))
            return x
        plan = self._plan()
        if not STATE.grad_enabled:
            chain = self._linear_chain(plan)
            if chain is not None and type(x) is np.ndarray and x.dtype == F32 and x.ndim == 2 \
                    and x.shape[0] < CHAIN_MAX_ROWS and x.shape[1] == chain[0] \
                    and x.flags.c_contiguous and x.flags.aligned:
                # float32 Linear layers (ReLUs fused) at a small batch: one kernel call
                n = x.shape[0]
                outs = [np.empty((n, m.out_features), F32) for m, _ in chain[1]]
                _kl.linear_chain_forward(x, tuple(
                    (y, m.weight.data, None if m.bias is None else m.bias.data, relu)
                    for y, (m, relu) in zip(outs, chain[1])))
                return outs[-1]
            # runs of convolutions (ReLUs fused) depth first: one kernel call per run
            return self._forward_steps(self._conv_runs(plan) or plan, x)
        steps = []          # (module, its input activation, activation module, its output)
        for kind, m, act, act_mod, absorbed, folded in plan:
            if kind == 1:
                x = m(x, activation=act)
                steps.append((m, absorbed, act_mod, None if folded else x))
            elif kind == 2:
                x = m.activate(x)                   # its backward is the next layer's
            else:
                x = m(x)
                steps.append((m, absorbed, None, None))
        self._save(steps)
        return x

    def backward(self, dy, need_input_grad=True):
        if not self._modules:
            shape, dtype = self._saved()
            if shape is not None:
                dy = self._check_grad(dy, shape, dtype)
            return dy if need_input_grad else None
        (steps,) = self._saved()
        for k in range(len(steps) - 1, -1, -1):
            m, absorbed, act, y = steps[k]
            if y is not None:                       # the fused activation's backward
                dy = act.grad_from_output(dy, y)
            need = need_input_grad or k > 0
            if absorbed is None:
                dy = m.backward(dy, need_input_grad=need)
            else:
                dy = m.backward(dy, need_input_grad=need, input_activation=absorbed)
        return dy if need_input_grad else None

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            # keeps the children's names, as torch does ("1", "2" for seq[1:])
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return list(self._modules.values())[idx]

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"Sequential.append: expected a Module, got {type(module).__name__}")
        self.add_module(str(len(self._modules)), module)
        return self


class ModuleList(Module):
    """A list of modules that registers them (named "0", "1", ...); it has no forward."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module):
        if not isinstance(module, Module):
            raise TypeError(f"ModuleList.append: expected a Module, got {type(module).__name__}")
        self.add_module(str(len(self._modules)), module)
        return self

    def extend(self, modules):
        for m in modules:
            self.append(m)
        return self

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __getitem__(self, idx):
        mods = list(self._modules.values())
        if isinstance(idx, slice):
            return ModuleList(mods[idx])
        return mods[idx]

    def forward(self, *args, **kwargs):
        raise TypeError("ModuleList is a container, not a layer: iterate over it and call its modules")


class Residual(Module):
    """f(x) = x + g(x) (the seed's residual composition; a skip connection is
    Residual(Sequential(...))). Backward: dx = dy + g.backward(dy).

    Shape: x -> same (g must preserve the shape).
    """

    def __init__(self, fn):
        super().__init__()
        if not isinstance(fn, Module):
            raise TypeError(f"Residual: expected a Module, got {type(fn).__name__}")
        self.fn = fn

    def forward(self, x):
        gx = self.fn(x)
        if not isinstance(gx, np.ndarray) or gx.shape != np.shape(x):
            raise ValueError(f"Residual: the wrapped module must keep the input's shape "
                             f"{np.shape(x)}, got {getattr(gx, 'shape', type(gx).__name__)}")
        self._save(gx.shape, gx.dtype)
        return x + gx

    def backward(self, dy, need_input_grad=True):
        shape, dtype = self._saved()
        dy = self._check_grad(dy, shape, dtype)
        dg = self.fn.backward(dy, need_input_grad=need_input_grad)
        return dy + dg if need_input_grad else None


class Parallel(Module):
    """f(x) = Combine(f_1(x), ..., f_n(x)) (the seed's parallel composition).

    Args:
        *branches: modules applied to the same input.
        combine: 'sum' (outputs of equal shape are added) or 'concat' (joined along `dim`).
        dim: the concatenation axis (default 1, channels / features).

    Backward: the output gradient is given (split, for concat) to each branch, and the
    branches' input gradients are added.
    """

    def __init__(self, *branches, combine="sum", dim=1):
        super().__init__()
        if not branches:
            raise ValueError("Parallel: expected at least one branch")
        if combine not in ("sum", "concat"):
            raise ValueError(f"Parallel: combine must be 'sum' or 'concat', got {combine!r}")
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise ValueError(f"Parallel: dim must be an int, got {dim!r}")
        for i, b in enumerate(branches):
            if not isinstance(b, Module):
                raise TypeError(f"Parallel: branch {i} is a {type(b).__name__}, not a Module")
            self.add_module(str(i), b)
        self.combine = combine
        self.dim = int(dim)

    def extra_repr(self):
        return f"combine={self.combine!r}" + (f", dim={self.dim}" if self.combine == "concat" else "")

    def forward(self, x):
        outs = [b(x) for b in self._modules.values()]
        if self.combine == "sum":
            shape = outs[0].shape
            for i, o in enumerate(outs[1:], 1):
                if o.shape != shape:
                    raise ValueError(f"{self._short_repr()}: branch {i} gave shape {o.shape}, "
                                     f"branch 0 gave {shape}; 'sum' needs equal shapes")
            y = outs[0].copy()
            for o in outs[1:]:
                y += o
            self._save(None, y.shape, y.dtype)
            return y
        nd = outs[0].ndim
        if not -nd <= self.dim < nd:
            raise ValueError(f"{self._short_repr()}: dim {self.dim} out of range for outputs of rank {nd}")
        d = self.dim % nd
        for i, o in enumerate(outs[1:], 1):
            if o.ndim != nd or o.shape[:d] + o.shape[d + 1:] != outs[0].shape[:d] + outs[0].shape[d + 1:]:
                raise ValueError(f"{self._short_repr()}: branch {i} gave shape {o.shape}, branch 0 "
                                 f"gave {outs[0].shape}; 'concat' needs equal shapes except on dim {d}")
        y = np.concatenate(outs, axis=d)
        self._save(np.cumsum([o.shape[d] for o in outs])[:-1], y.shape, y.dtype)
        return y

    def backward(self, dy, need_input_grad=True):
        splits, shape, dtype = self._saved()
        dy = self._check_grad(dy, shape, dtype)
        branches = list(self._modules.values())
        if splits is None:
            parts = [dy] * len(branches)
        else:
            parts = np.split(dy, splits, axis=self.dim % dy.ndim)
        dx = None
        # last branch first: a module shared by several branches pops its saved states
        # last-in first-out, so the branches must be visited in the reverse of forward's order
        for b, g in reversed(list(zip(branches, parts))):
            gi = b.backward(np.ascontiguousarray(g), need_input_grad=need_input_grad)
            if need_input_grad:
                dx = gi.copy() if dx is None else dx.__iadd__(gi)
        return dx


class ResidualBlock(Module):
    """Res(z) = z + sigma(MM_1(sigma(MM_2(z)))) — the seed's residual block, "Advanced Modules".

    Args:
        dim: feature size (MM_1 and MM_2 are Linear(dim, dim)).
        activation: 'relu' (default), 'gelu', 'tanh', 'sigmoid', or a Module class.

    Shape: (*, dim) -> (*, dim). Children: mm1, mm2 (MM_2 is applied first, as in the seed).
    """

    def __init__(self, dim, activation="relu", dtype=np.float32):
        super().__init__()
        dim = positive_int(dim, "ResidualBlock: dim")
        self.dim = dim
        self.mm1 = Linear(dim, dim, dtype=dtype)
        self.mm2 = Linear(dim, dim, dtype=dtype)
        self.act_inner = make_activation(activation, "ResidualBlock")   # sigma after MM_2
        self.act_outer = make_activation(activation, "ResidualBlock")   # sigma after MM_1
        self.activation = activation

    def extra_repr(self):
        return f"{self.dim}" + ("" if self.activation == "relu" else f", activation={self.activation!r}")

    def _fused(self):
        """The ReLU path by capability: each activation folded into its Linear's kernel."""
        return (elementwise_activation(self.act_inner) == "relu"
                and elementwise_activation(self.act_outer) == "relu"
                and fuses_output_activation(self.mm2, "relu")
                and fuses_output_activation(self.mm1, "relu")
                and fuses_input_activation_grad(self.mm1, "relu"))

    def forward(self, z):
        if not self._fused():
            h = self.act_outer(self.mm1(self.act_inner(self.mm2(z))))
            self._save(False, None)
            return z + h
        # ReLU (the default): each ReLU applied inside its Linear's kernel call; same values,
        # two passes and two arrays fewer. Under no_grad the skip is added in place into the
        # fresh output.
        a = self.mm2(z, activation="relu")
        h = self.mm1(a, activation="relu")
        if not STATE.grad_enabled:
            if h.shape == np.shape(z):
                h += z
                return h
            return z + h
        self._save(True, h)                         # the outer ReLU's output, for its mask
        return z + h

    def backward(self, dy, need_input_grad=True):
        fused, h = self._saved()
        if not fused:
            g = self.mm1.backward(self.act_outer.backward(dy))
            g = self.mm2.backward(self.act_inner.backward(g), need_input_grad=need_input_grad)
            if not need_input_grad:
                return None
            g += dy
            return g
        g = self.mm1.backward(self.act_outer.grad_from_output(dy, h), input_activation="relu")
        dx = self.mm2.backward(g, need_input_grad=need_input_grad)
        if not need_input_grad:
            return None
        dx += dy                                    # the skip connection
        return dx
