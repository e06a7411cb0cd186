"""fastmod: Cython-accelerated CPU neural-network modules with hand-written backward passes.

    import numpy as np, fastmod
    from fastmod import nn
    model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10))
    logits = model(x); loss = crit(logits, y); model.backward(crit.backward()); opt.step()
"""
from fastmod._runtime import (set_num_threads, get_num_threads, have_openmp, no_grad,
                              enable_grad, is_grad_enabled, manual_seed, default_generator)
from fastmod._config import set_isa, get_isa, supported_isas, show_config
from fastmod import nn, losses
from fastmod.gradcheck import gradcheck, GradcheckError
from fastmod import optim, data, models
from fastmod.io import save, load, load_into
from fastmod.training import fit, evaluate
from fastmod.interop import from_torch
from fastmod.profiler import profile
from fastmod.planned import inference, PlannedModel

__version__ = "0.1.0"

__all__ = ["nn", "losses", "gradcheck", "GradcheckError", "set_num_threads", "get_num_threads", "have_openmp", "no_grad",
           "set_isa", "get_isa", "supported_isas", "show_config",
           "enable_grad", "is_grad_enabled", "manual_seed", "default_generator",
           "optim", "data", "models", "save", "load", "load_into", "fit", "evaluate",
           "from_torch", "profile", "inference", "PlannedModel"]
