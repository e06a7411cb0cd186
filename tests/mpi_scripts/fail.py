"""A rank that raises, dies or hangs in the middle of training: the others must stop (not hang).

    mpirun -n 2 python fail.py raise|die|hang
"""
import os
import signal
import sys
import time

import numpy as np

import fastmod
import fastmod.distributed as dist
from fastmod import losses, nn, optim

mode = sys.argv[1]
dist.init()
fastmod.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
ddp = dist.DistributedDataParallel(model)
opt = optim.SGD(model.parameters(), lr=0.1)
crit = losses.CrossEntropyLoss()
rng = np.random.default_rng(dist.rank())
for step in range(1000):
    if step == 3 and dist.rank() == 1:
        if mode == "raise":
            raise RuntimeError("injected failure on rank 1")
        if mode == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "hang":
            time.sleep(600)
    x, y = rng.standard_normal((4, 8)).astype(np.float32), rng.integers(0, 3, 4)
    opt.zero_grad()
    crit(ddp(x), y)
    ddp.backward(crit.backward())
    opt.step()
    time.sleep(0.01)
print("rank", dist.rank(), "finished: the failure was not detected", flush=True)
