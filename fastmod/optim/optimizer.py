"""Optimizer: parameter groups, per-parameter state, zero_grad, state_dict (torch.optim's API).

The seed ("Training Considerations") asks for per-module learning rates and regularization:
pass a list of dicts, each with its own 'params' and any hyper-parameter to override, exactly
as with torch.optim:

    opt = fastmod.optim.SGD([{"params": model[0].parameters(), "lr": 1e-2},
                             {"params": model[2].parameters(), "weight_decay": 0.0}],
                            lr=1e-1, momentum=0.9)

A parameter whose gradient was not touched since zero_grad() (`not p.has_grad()`) is skipped by
step(), as torch skips parameters whose grad is None.
"""
import copy
import math

import numpy as np

from fastmod._validate import boolean, finite_float
from fastmod.nn.module import FLOAT_DTYPES, Parameter


def _to_numpy(v):
    """Arrays from fastmod or torch state dicts -> numpy (a torch tensor via .numpy())."""
    if hasattr(v, "detach") and hasattr(v, "numpy"):
        v = v.detach().cpu().numpy()
    return v


class Optimizer:
    """Base class: holds `param_groups` (list of dicts with a 'params' list) and `state`
    ({Parameter: dict of per-parameter state}). Subclasses define `defaults`, `_check_group`
    (validates one group's hyper-parameters) and `step()`."""

    #: names of the array-valued entries of a parameter's state (checked on load_state_dict)
    _array_state = ()

    def __init__(self, params, defaults):
        self.defaults = dict(defaults)
        self.state = {}
        self.param_groups = []
        name = type(self).__name__
        if isinstance(params, (Parameter, np.ndarray)):
            raise TypeError(f"{name}: params must be an iterable of Parameters or of dicts, got a "
                            f"single {type(params).__name__} (wrap it in a list)")
        if isinstance(params, (set, frozenset)):
            raise TypeError(f"{name}: params must be an ordered iterable (a list), not a set: "
                            "the order must be the same from run to run")
        try:
            groups = list(params)
        except TypeError:
            raise TypeError(f"{name}: params must be an iterable of Parameters or of dicts, got "
                            f"{type(params).__name__}") from None
        if not groups:
            raise ValueError(f"{name}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    # -- groups ----------------------------------------------------------------------------
    def add_param_group(self, param_group):
        """Add a dict {'params': Parameters, **hyper-parameters}; missing hyper-parameters take
        the optimizer's defaults. A parameter may belong to one group only."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: a parameter group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{name}: a parameter group needs a 'params' entry")
        params = param_group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{name}: a group's params must be an ordered iterable (a list), not a set")
        else:
            try:
                params = list(params)
            except TypeError:
                raise TypeError(f"{name}: a group's params must be Parameters, got "
                                f"{type(params).__name__}") from None
        for i, p in enumerate(params):
            if isinstance(p, tuple) and len(p) == 2 and isinstance(p[1], Parameter):
                params[i] = p = p[1]          # named_parameters() pairs, as torch 2.x accepts
            if not isinstance(p, Parameter):
                raise TypeError(f"{name}: can only optimize fastmod Parameters, got "
                                f"{type(p).__name__} at position {i} of a group's params")
        if not params:
            raise ValueError(f"{name}: a parameter group has an empty 'params' list")
        ids = [id(p) for p in params]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{name}: a parameter group lists the same parameter twice")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if seen.intersection(ids):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group")
        group = dict(param_group)
        group["params"] = params
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self._check_group(group)
        self.param_groups.append(group)

    def _check_group(self, group):
        """Validate (and normalize, in place) one group's hyper-parameters -> ValueError."""

    # -- gradients ---------------------------------------------------------------------------
    def zero_grad(self, set_to_none=True):
        """Mark every gradient as zero (the next backward overwrites instead of adding)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.zero_grad()

    def _arrays(self, p):
        """(data, grad) of a parameter with a gradient, C-contiguous and writeable for the kernels."""
        d = p.data
        if d.dtype not in FLOAT_DTYPES:     # .data reassigned to something else: never reach a kernel
            raise TypeError(f"{type(self).__name__}: parameter data must be float32 or float64, "
                            f"got {d.dtype} (shape {d.shape})")
        if not d.flags.c_contiguous:
            d = p.data = np.ascontiguousarray(d)
        if not d.flags.writeable:
            raise ValueError(f"{type(self).__name__}: parameter of shape {d.shape} has read-only "
                             "data; the optimizer updates it in place")
        g = p.grad
        if not g.flags.c_contiguous:
            g = np.ascontiguousarray(g)
        return d, g

    def _state_array(self, st, key, data):
        """state[key] checked against the parameter's data (its dtype may have changed with astype)."""
        a = st[key]
        if a.shape != data.shape or a.dtype != data.dtype:
            raise RuntimeError(f"{type(self).__name__}: state '{key}' is {a.dtype} {a.shape} but its "
                               f"parameter is {data.dtype} {data.shape} (was the model converted "
                               "with astype after creating the optimizer? create the optimizer after "
                               "converting the model)")
        return a

    def step(self, closure=None):
        raise TypeError(f"{type(self).__name__} does not define step()")

    # -- state dict ---------------------------------------------------------------------------
    def state_dict(self):
        """{'state': {index: {name: value}}, 'param_groups': [{..., 'params': [index, ...]}]}.

        Parameters are numbered in group order from 0 (torch's structure). Arrays are copies,
        so the result can be kept while training continues.
        """
        index = {}
        groups = []
        for g in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in g.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append(packed)
        state = {}
        for g in self.param_groups:
            for p in g["params"]:
                st = self.state.get(p)
                if st:
                    state[index[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                           for k, v in st.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Restore groups' hyper-parameters and per-parameter state from `state_dict` (from
        fastmod's or torch.optim's state_dict()). Group and parameter counts and the state
        arrays' shapes must match; float state is converted to its parameter's dtype (as torch
        does). Nothing is modified when a check fails."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "state" not in state_dict or \
                "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and "
                             f"'param_groups', got {type(state_dict).__name__}"
                             + (f" with keys {sorted(map(str, state_dict))}" if isinstance(state_dict, dict) else ""))
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the state has {len(saved_groups)} parameter "
                             f"groups, the optimizer has {len(self.param_groups)}")
        id_map = {}
        new_groups = []
        for gi, (sg, g) in enumerate(zip(saved_groups, self.param_groups)):
            if not isinstance(sg, dict) or "params" not in sg:
                raise ValueError(f"{name}.load_state_dict: parameter group {gi} is not a dict with 'params'")
            if len(sg["params"]) != len(g["params"]):
                raise ValueError(f"{name}.load_state_dict: parameter group {gi} has "
                                 f"{len(sg['params'])} parameters in the state, "
                                 f"{len(g['params'])} in the optimizer")
            for idx, p in zip(sg["params"], g["params"]):
                id_map[int(idx)] = p
            ng = {k: copy.deepcopy(_to_numpy(v)) for k, v in sg.items() if k != "params"}
            for k in self.defaults:
                ng.setdefault(k, g[k])
            ng["params"] = g["params"]
            try:
                self._check_group(ng)
            except ValueError as e:
                raise ValueError(f"{name}.load_state_dict: parameter group {gi}: {e}") from None
            new_groups.append(ng)
        new_state = {}
        saved_state = state_dict["state"]
        if not isinstance(saved_state, dict):
            raise ValueError(f"{name}.load_state_dict: 'state' must be a dict, got "
                             f"{type(saved_state).__name__}")
        for key, st in saved_state.items():
            try:
                p = id_map[int(key)]
            except (KeyError, ValueError, TypeError):
                raise ValueError(f"{name}.load_state_dict: state for parameter {key!r}, which is "
                                 f"in no parameter group") from None
            if not isinstance(st, dict):
                raise ValueError(f"{name}.load_state_dict: state {key} is not a dict")
            new_state[p] = self._convert_state(st, p, key)
        self.param_groups[:] = new_groups
        self.state = new_state

    def _convert_state(self, st, p, key):
        """One parameter's saved state -> ours: arrays copied C-contiguous at p's dtype."""
        name = type(self).__name__
        out = {}
        for k, v in st.items():
            v = _to_numpy(v)
            if k in self._array_state:
                if v is None:
                    out[k] = None
                    continue
                a = np.asarray(v)
                if a.shape != p.data.shape:
                    raise ValueError(f"{name}.load_state_dict: state {key}['{k}'] has shape "
                                     f"{a.shape}, its parameter {p.data.shape}")
                if a.dtype.kind != "f":
                    raise TypeError(f"{name}.load_state_dict: state {key}['{k}'] has dtype "
                                     f"{a.dtype}, expected a float array")
                out[k] = np.array(a, dtype=p.data.dtype, order="C", copy=True)
            elif k == "step":
                s = float(np.asarray(v))
                if not math.isfinite(s) or s < 0 or s != int(s):
                    raise ValueError(f"{name}.load_state_dict: state {key}['step'] must be a "
                                     f"non-negative integer, got {v!r}")
                out[k] = int(s)
            else:
                out[k] = copy.deepcopy(v)
        return out

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for k in sorted(g):
                if k != "params":
                    lines.append(f"    {k}: {g[k]}")
        lines.append(")")
        return "\n".join(lines)


# -- hyper-parameter checks shared by the optimizers --------------------------------------------
def check_real(group, key, who, low=0.0, high=None, high_open=False):
    """group[key] must be a finite real in [low, high] (high open when asked); stored as float."""
    group[key] = finite_float(group[key], f"{who}: {key}", low, high, high_open=high_open)


def check_bool(group, key, who):
    group[key] = boolean(group[key], f"{who}: {key}")
