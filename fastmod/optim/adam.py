"""Adam and AdamW (torch.optim.Adam / AdamW), one fused pass per parameter."""
import numpy as np

from fastmod._kernels import optim as _k
from fastmod.optim.optimizer import Optimizer, check_bool, check_real


class Adam(Optimizer):
    """Adam (Kingma & Ba) with torch.optim.Adam's exact formulas.

    With g the gradient (negated when maximize) and t the step number (from 1):

        g     = g + weight_decay * p                    (Adam; AdamW decays p instead)
        m     = beta1 * m + (1 - beta1) * g             (computed as torch's lerp)
        v     = beta2 * v + (1 - beta2) * g * g
        vmax  = max(vmax, v)                            (amsgrad; v below becomes vmax)
        p     = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    eps is added after the bias-corrected square root, as torch does (not to v).

    Args:
        params: an iterable of Parameters, or of dicts {'params': ..., 'lr': ..., ...}.
        lr: learning rate (default 1e-3).
        betas: (beta1, beta2), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: L2 penalty added to the gradient (default 0).
        amsgrad: use the running maximum of v (default False).
        maximize: ascend instead of descend.

    Example:
        >>> import fastmod
        >>> opt = fastmod.optim.Adam(fastmod.nn.Linear(4, 2).parameters(), lr=1e-3)
        >>> opt.param_groups[0]["betas"]
        (0.9, 0.999)
    """

    _array_state = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False):
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize)
        super().__init__(params, defaults)

    def _check_group(self, group):
        who = type(self).__name__
        check_real(group, "lr", who)
        check_real(group, "eps", who)
        check_real(group, "weight_decay", who)
        check_bool(group, "amsgrad", who)
        check_bool(group, "maximize", who)
        betas = group["betas"]
        try:
            b = tuple(betas)
        except TypeError:
            b = ()
        if len(b) != 2:
            raise ValueError(f"{who}: betas must be a pair (beta1, beta2), got {betas!r}")
        for i, v in enumerate(b):
            tmp = {f"betas[{i}]": v}
            check_real(tmp, f"betas[{i}]", who, 0.0, 1.0, high_open=True)
        group["betas"] = (float(b[0]), float(b[1]))

    def step(self, closure=None):
        """Update every parameter that has a gradient; returns closure() when one is given."""
        loss = closure() if closure is not None else None
        state = self.state
        decoupled = self._decoupled
        for group in self.param_groups:
            self._check_group(group)
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            amsgrad, maximize = group["amsgrad"], group["maximize"]
            for p in group["params"]:
                if not p.has_grad():
                    continue
                data, grad = self._arrays(p)
                st = state.get(p)
                if not st:
                    st = state[p] = {"step": 0, "exp_avg": np.zeros_like(data),
                                     "exp_avg_sq": np.zeros_like(data)}
                    if amsgrad:
                        st["max_exp_avg_sq"] = np.zeros_like(data)
                m = self._state_array(st, "exp_avg", data)
                v = self._state_array(st, "exp_avg_sq", data)
                vmax = None
                if amsgrad:
                    if st.get("max_exp_avg_sq") is None:     # amsgrad switched on mid-training
                        st["max_exp_avg_sq"] = np.zeros_like(data)
                    vmax = self._state_array(st, "max_exp_avg_sq", data)
                st["step"] = t = st["step"] + 1
                # the scalars exactly as torch computes them, in Python floats
                step = float(t)
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                step_size = lr / bias_correction1
                bias_correction2_sqrt = bias_correction2 ** 0.5
                _k.adam_step(data, grad, m, v, vmax, lr, beta1, beta2, eps, wd,
                             step_size, bias_correction2_sqrt, decoupled, maximize)
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), torch.optim.AdamW's formulas.

    Instead of adding weight_decay * p to the gradient, every step first shrinks the
    parameter: p = p * (1 - lr * weight_decay), then applies Adam's update.

    Args: as Adam, with weight_decay defaulting to 1e-2 (torch's default).

    Example:
        >>> import fastmod
        >>> opt = fastmod.optim.AdamW(fastmod.nn.Linear(4, 2).parameters())
        >>> opt.param_groups[0]["weight_decay"]
        0.01
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)
