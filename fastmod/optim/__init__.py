"""fastmod.optim: optimizers, gradient clipping and learning-rate schedulers (torch.optim's API).

    opt = fastmod.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = fastmod.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100)
    for x, y in loader:
        opt.zero_grad(); loss = crit(model(x), y); model.backward(crit.backward())
        fastmod.optim.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    sched.step()
"""
from fastmod.optim.optimizer import Optimizer
from fastmod.optim.sgd import SGD
from fastmod.optim.adam import Adam, AdamW
from fastmod.optim.clip import clip_grad_norm_
from fastmod.optim import lr_scheduler
from fastmod.optim.lr_scheduler import (LRScheduler, StepLR, MultiStepLR, CosineAnnealingLR,
                                        LinearLR, LambdaLR, SequentialLR)

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "clip_grad_norm_", "lr_scheduler", "LRScheduler",
           "StepLR", "MultiStepLR", "CosineAnnealingLR", "LinearLR", "LambdaLR", "SequentialLR"]
