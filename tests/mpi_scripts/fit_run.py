"""fastmod.fit(..., distributed=True) under mpirun (or --plain: fit without it, one process).

Rank 0 writes OUT/<tag>.npz: the per-step and per-epoch curves, the final weights, and how many
checkpoints each rank wrote (only rank 0 may write them).
"""
import argparse
import os

import numpy as np

import fastmod
import fastmod.training as training
from fastmod import losses, nn, optim

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--plain", action="store_true")
ap.add_argument("--epochs", type=int, default=2)
ap.add_argument("--batch", type=int, default=24)
args = ap.parse_args()

rng = np.random.default_rng(0)
n = 100
x = rng.standard_normal((n, 12))
y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + 2 * (x[:, 2] > 0.5)
xv = rng.standard_normal((37, 12))
yv = (xv[:, 0] + xv[:, 1] > 0).astype(np.int64) + 2 * (xv[:, 2] > 0.5)
fastmod.manual_seed(0)
model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 4)).astype(np.float64)
opt = optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)

writes = [0]
_write = training._write_checkpoint


def counting_write(*a, **k):
    writes[0] += 1
    return _write(*a, **k)


training._write_checkpoint = counting_write
tag = "plain" if args.plain else None
kw = {} if args.plain else {"distributed": True}
hist = fastmod.fit(model, losses.CrossEntropyLoss(), opt, (x, y), (xv, yv), epochs=args.epochs,
                   batch_size=args.batch, seed=3, scheduler=sched, scheduler_interval="step",
                   checkpoint=os.path.join(args.out, f"ckpt_{tag or 'dist'}.npz"), progress=False,
                   **kw)
size, r = 1, 0
counts = writes
if not args.plain:
    import fastmod.distributed as dist
    size, r = dist.world_size(), dist.rank()
    counts = dist._S.comm.gather(writes[0], root=0)
if r == 0:
    np.savez(os.path.join(args.out, tag or f"fit_ranks{size}") + ".npz",
             step_loss=np.array(hist["step_loss"]), train_loss=np.array(hist["train_loss"]),
             train_acc=np.array(hist["train_acc"]), val_loss=np.array(hist["val_loss"]),
             val_acc=np.array(hist["val_acc"]), writes=np.array(counts),
             **{"p:" + k: v for k, v in model.state_dict().items()})
