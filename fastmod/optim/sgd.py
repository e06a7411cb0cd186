"""Stochastic gradient descent with momentum, dampening, Nesterov and weight decay (torch.optim.SGD)."""
import numpy as np

from fastmod._kernels import optim as _k
from fastmod.optim.optimizer import Optimizer, check_bool, check_real


class SGD(Optimizer):
    """p <- p - lr * d, torch.optim.SGD's update, in one fused pass per parameter.

    With g the gradient (negated when maximize) and t the step number:

        d   = g + weight_decay * p
        buf = d                                      (t = 1)
        buf = momentum * buf + (1 - dampening) * d   (t > 1)
        d   = d + momentum * buf  (nesterov)   or   buf   (momentum != 0)
        p   = p - lr * d

    The seed's "Training Considerations" (per-module learning rates and regularization) are
    parameter groups: a list of dicts, each overriding any of the arguments below.

    Args:
        params: an iterable of Parameters, or of dicts {'params': ..., 'lr': ..., ...}.
        lr: learning rate (default 1e-3, as torch).
        momentum: momentum factor (default 0: no buffer is kept).
        dampening: dampening of the momentum (default 0).
        weight_decay: L2 penalty added to the gradient (default 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening == 0).
        maximize: ascend instead of descend.

    Example:
        >>> import fastmod
        >>> model = fastmod.nn.Linear(4, 2)
        >>> opt = fastmod.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        >>> opt.param_groups[0]["momentum"]
        0.9
    """

    _array_state = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, maximize=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group):
        who = "SGD"
        check_real(group, "lr", who)
        check_real(group, "momentum", who)
        check_real(group, "dampening", who)
        check_real(group, "weight_decay", who)
        check_bool(group, "nesterov", who)
        check_bool(group, "maximize", who)
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(f"{who}: Nesterov momentum requires a momentum and zero dampening, "
                             f"got momentum={group['momentum']}, dampening={group['dampening']}")

    def step(self, closure=None):
        """Update every parameter that has a gradient; returns closure() when one is given."""
        loss = closure() if closure is not None else None
        state = self.state
        for group in self.param_groups:
            self._check_group(group)
            lr, mom, damp = group["lr"], group["momentum"], group["dampening"]
            wd, nesterov, maximize = group["weight_decay"], group["nesterov"], group["maximize"]
            # parameters with a momentum history (or without momentum) are updated together,
            # per dtype, in one kernel call and one parallel region (mlp_b128: 6 calls -> 1,
            # resnet_s_b128: 34 -> 1); a first step (buffer set to d) runs on its own
            batch = {}
            for p in group["params"]:
                if not p.has_grad():
                    continue
                data, grad = self._arrays(p)
                buf = None
                if mom != 0:
                    st = state.get(p)
                    if st is None:
                        st = state[p] = {}
                    if st.get("momentum_buffer") is None:
                        st["momentum_buffer"] = buf = np.empty_like(data)   # set to d: first
                        _k.sgd_step(data, grad, buf, lr, wd, mom, damp, nesterov, maximize, True)
                        continue
                    buf = self._state_array(st, "momentum_buffer", data)
                lists = batch.get(data.dtype)
                if lists is None:
                    lists = batch[data.dtype] = ([], [], [] if mom != 0 else None)
                lists[0].append(data)
                lists[1].append(grad)
                if buf is not None:
                    lists[2].append(buf)
            for ps, gs, bufs in batch.values():
                _k.sgd_step_multi(ps, gs, bufs, lr, wd, mom, damp, nesterov, maximize)
        return loss
