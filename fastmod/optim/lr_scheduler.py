"""Learning-rate schedulers (torch.optim.lr_scheduler), computed in closed form.

Call `scheduler.step()` once per epoch (or per iteration, for warm-up), after
`optimizer.step()`. The scheduler sets every group's 'lr' to f(epoch) * the group's
'initial_lr' (its lr when the first scheduler was created), using torch's closed forms; torch
computes most of them recursively, which agrees to rounding. Because the value is a function
of the epoch alone, a resumed run (scheduler.load_state_dict) continues exactly.

    sched = SequentialLR(opt, [LinearLR(opt, start_factor=0.1, total_iters=5),
                               CosineAnnealingLR(opt, T_max=95)], milestones=[5])
"""
import bisect
import math
import numbers

import numpy as np

from fastmod._validate import finite_float, positive_int
from fastmod.optim.optimizer import Optimizer


class LRScheduler:
    """Base class. Subclasses define `_factor_lrs(epoch)` -> the lr of each group at `epoch`.

    Attributes: optimizer, base_lrs (each group's 'initial_lr'), last_epoch (starts at 0 after
    construction, +1 per step()).
    """

    def __init__(self, optimizer, last_epoch=-1):
        who = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{who}: expected a fastmod.optim Optimizer, got {type(optimizer).__name__}")
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, (numbers.Integral, np.integer)) \
                or last_epoch < -1:
            raise ValueError(f"{who}: last_epoch must be an integer >= -1, got {last_epoch!r}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(optimizer.param_groups):
                if "initial_lr" not in g:
                    raise ValueError(f"{who}: param 'initial_lr' is not specified in param_groups[{i}] "
                                     "when resuming (last_epoch != -1)")
        self.base_lrs = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self.step()

    def lrs_at(self, epoch):
        """The learning rate of each group at `epoch` (closed form)."""
        raise TypeError(f"{type(self).__name__} does not define lrs_at()")

    def get_lr(self):
        return self.lrs_at(self.last_epoch)

    def get_last_lr(self):
        """The learning rates the last step() set, one per parameter group."""
        return list(self._last_lr)

    def step(self):
        self.last_epoch += 1
        self._apply(self.lrs_at(self.last_epoch))

    def _apply(self, lrs):
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self._last_lr = [float(lr) for lr in lrs]

    _not_state = ("optimizer",)

    def state_dict(self):
        """Everything but the optimizer (and functions): JSON-serializable for the built-ins."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in self.__dict__.items() if k not in self._not_state}

    def load_state_dict(self, state_dict):
        if not isinstance(state_dict, dict):
            raise TypeError(f"{type(self).__name__}.load_state_dict: expected a dict, got "
                            f"{type(state_dict).__name__}")
        unknown = [k for k in state_dict if k not in self.__dict__ or k in self._not_state]
        if unknown:
            raise ValueError(f"{type(self).__name__}.load_state_dict: unexpected keys {unknown}")
        self.__dict__.update(state_dict)

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, last_lr={self._last_lr})"


class StepLR(LRScheduler):
    """lr = initial_lr * gamma ** (epoch // step_size).

    Example:
        >>> import fastmod
        >>> opt = fastmod.optim.SGD(fastmod.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> s = fastmod.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        >>> [s.step() or round(s.get_last_lr()[0], 3) for _ in range(4)]
        [1.0, 0.5, 0.5, 0.25]
    """

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = positive_int(step_size, "StepLR: step_size")
        self.gamma = finite_float(gamma, "StepLR: gamma", 0.0)
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, epoch):
        return [b * self.gamma ** (epoch // self.step_size) for b in self.base_lrs]


class MultiStepLR(LRScheduler):
    """lr = initial_lr * gamma ** (number of milestones <= epoch)."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        try:
            ms = list(milestones)
        except TypeError:
            raise ValueError(f"MultiStepLR: milestones must be a list of integers, got {milestones!r}") from None
        self.milestones = sorted(positive_int(m, "MultiStepLR: a milestone") for m in ms)
        self.gamma = finite_float(gamma, "MultiStepLR: gamma", 0.0)
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, epoch):
        k = bisect.bisect_right(self.milestones, epoch)
        return [b * self.gamma ** k for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (SGDR without
    restarts; beyond T_max the cosine continues, as torch's)."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = positive_int(T_max, "CosineAnnealingLR: T_max")
        self.eta_min = finite_float(eta_min, "CosineAnnealingLR: eta_min", 0.0)
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, epoch):
        c = (1 + math.cos(math.pi * epoch / self.T_max)) / 2
        return [self.eta_min + (b - self.eta_min) * c for b in self.base_lrs]


class LinearLR(LRScheduler):
    """lr = initial_lr * (start_factor + (end_factor - start_factor) * min(epoch, total_iters) /
    total_iters): a linear warm-up from start_factor to end_factor over total_iters steps."""

    def __init__(self, optimizer, start_factor=1.0 / 3, end_factor=1.0, total_iters=5, last_epoch=-1):
        self.start_factor = finite_float(start_factor, "LinearLR: start_factor", 0.0, 1.0, low_open=True)
        self.end_factor = finite_float(end_factor, "LinearLR: end_factor", 0.0, 1.0)
        self.total_iters = positive_int(total_iters, "LinearLR: total_iters")
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, epoch):
        f = self.start_factor + (self.end_factor - self.start_factor) * \
            min(self.total_iters, epoch) / self.total_iters
        return [b * f for b in self.base_lrs]


class LambdaLR(LRScheduler):
    """lr = initial_lr * lr_lambda(epoch) (one function, or one per parameter group).

    state_dict() leaves the functions out (they are code, not data)."""

    _not_state = ("optimizer", "lr_lambdas")

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"LambdaLR: expected a fastmod.optim Optimizer, got {type(optimizer).__name__}")
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"LambdaLR: expected {n} lr_lambdas (one per group), got {len(lr_lambda)}")
            fns = list(lr_lambda)
        else:
            fns = [lr_lambda] * n
        for f in fns:
            if not callable(f):
                raise TypeError(f"LambdaLR: lr_lambda must be callable, got {type(f).__name__}")
        self.lr_lambdas = fns
        super().__init__(optimizer, last_epoch)

    def lrs_at(self, epoch):
        out = []
        for b, f in zip(self.base_lrs, self.lr_lambdas):
            factor = f(epoch)
            if isinstance(factor, (bool, np.bool_)) or not isinstance(factor, (numbers.Real, np.floating)) \
                    or not math.isfinite(float(factor)) or factor < 0:
                raise ValueError(f"LambdaLR: lr_lambda({epoch}) must return a finite real >= 0, "
                                 f"got {factor!r}")
            out.append(b * float(factor))
        return out


class SequentialLR(LRScheduler):
    """Run `schedulers[i]` from milestones[i-1] on (with its own epoch counted from 0 there):
    e.g. LinearLR warm-up for 5 steps, then CosineAnnealingLR.

    Args:
        optimizer: the optimizer every scheduler drives.
        schedulers: the schedulers, in order (built on the same optimizer).
        milestones: increasing epochs at which the next scheduler takes over
            (len(schedulers) - 1 of them).
    """

    _not_state = ("optimizer", "_schedulers")

    def __init__(self, optimizer, schedulers, milestones, last_epoch=-1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"SequentialLR: expected a fastmod.optim Optimizer, got {type(optimizer).__name__}")
        scheds = list(schedulers)
        if not scheds:
            raise ValueError("SequentialLR: expected at least one scheduler")
        for i, s in enumerate(scheds):
            if not isinstance(s, LRScheduler) or isinstance(s, SequentialLR):
                raise TypeError(f"SequentialLR: schedulers[{i}] must be a (non-sequential) "
                                f"LRScheduler, got {type(s).__name__}")
            if s.optimizer is not optimizer:
                raise ValueError(f"SequentialLR: schedulers[{i}] drives another optimizer than "
                                 "the one given")
        ms = [positive_int(m, "SequentialLR: a milestone") for m in milestones]
        if len(ms) != len(scheds) - 1:
            raise ValueError(f"SequentialLR: expected {len(scheds) - 1} milestones for "
                             f"{len(scheds)} schedulers, got {len(ms)}")
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError(f"SequentialLR: milestones must be increasing, got {ms}")
        self._schedulers = scheds
        self._milestones = ms
        super().__init__(optimizer, last_epoch)

    def _locate(self, epoch):
        idx = bisect.bisect_right(self._milestones, epoch)
        start = self._milestones[idx - 1] if idx > 0 else 0
        return self._schedulers[idx], epoch - start

    def lrs_at(self, epoch):
        sched, sub = self._locate(epoch)
        return sched.lrs_at(sub)

    def step(self):
        self.last_epoch += 1
        sched, sub = self._locate(self.last_epoch)
        lrs = sched.lrs_at(sub)
        sched.last_epoch = sub
        sched._last_lr = [float(v) for v in lrs]
        self._apply(lrs)

    def state_dict(self):
        d = super().state_dict()
        d["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return d

    def load_state_dict(self, state_dict):
        if not isinstance(state_dict, dict):
            raise TypeError(f"SequentialLR.load_state_dict: expected a dict, got {type(state_dict).__name__}")
        state_dict = dict(state_dict)
        subs = state_dict.pop("_schedulers", None)
        if subs is None or len(subs) != len(self._schedulers):
            raise ValueError(f"SequentialLR.load_state_dict: expected the states of "
                             f"{len(self._schedulers)} schedulers")
        super().load_state_dict(state_dict)
        for s, sd in zip(self._schedulers, subs):
            s.load_state_dict(sd)
