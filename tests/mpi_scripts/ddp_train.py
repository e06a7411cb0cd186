"""Train a small model for a few steps with DistributedDataParallel (under mpirun) or plainly
(--plain, one process, no fastmod.distributed at all) and write the per-step global losses and
the final weights to OUT/<tag>.npz (rank 0). tests/test_distributed.py compares the runs.

    python ddp_train.py OUT --model mlp --plain            # the single-process reference
    mpirun -n 3 python ddp_train.py OUT --model mlp        # 3 ranks, same global batches
"""
import argparse
import os

import numpy as np

import fastmod
from fastmod import losses, nn, optim

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--model", default="mlp", choices=("mlp", "syncbn", "localbn", "cnn", "user"))
ap.add_argument("--steps", type=int, default=6)
ap.add_argument("--batch", type=int, default=24)
ap.add_argument("--n", type=int, default=100)
ap.add_argument("--dtype", default="float64")
ap.add_argument("--plain", action="store_true")
ap.add_argument("--overlap", action="store_true")
ap.add_argument("--bucket-mb", type=float, default=25)
ap.add_argument("--tag", default=None)
ap.add_argument("--sync-bn", action="store_true", help="convert_sync_batchnorm (not with --plain)")
args = ap.parse_args()
dt = np.dtype(args.dtype)

rng = np.random.default_rng(1)
if args.model in ("cnn", "syncbn", "localbn"):
    x = rng.standard_normal((args.n, 3, 8, 8)).astype(dt)
else:
    x = rng.standard_normal((args.n, 20)).astype(dt)
y = rng.integers(0, 5, args.n)



class Scale(nn.Module):
    """A user's module: y = x * w, backward(dy) alone (Module adapts it)."""

    def __init__(self, features):
        super().__init__()
        self.weight = nn.Parameter(np.linspace(0.5, 1.5, features))

    def forward(self, x):
        self.save_for_backward(x)
        return x * self.weight.data

    def backward(self, dy):
        (x,) = self.saved_for_backward()
        self.weight.grad += (dy * x).sum(0)
        return dy * self.weight.data


fastmod.manual_seed(0)
if args.model == "user":
    # no Sequential at the top: a Residual / Parallel tree with user modules, a module applied
    # twice in one forward (shared: its gradient is complete only after its second backward)
    shared = nn.Linear(16, 16)
    model = nn.Parallel(
        nn.Sequential(nn.Linear(20, 16), nn.ReLU(), Scale(16),
                      nn.Residual(nn.Sequential(shared, nn.Tanh(), shared, Scale(16))),
                      nn.Linear(16, 5)),
        nn.Sequential(Scale(20), nn.Linear(20, 5)))
elif args.model == "mlp":
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 5))
else:
    from fastmod.distributed import SyncBatchNorm
    conv = getattr(nn, "Conv2d")
    layers = [conv(3, 8, 3, padding=1), nn.ReLU()]
    if args.model == "syncbn":
        layers.append(SyncBatchNorm(8))
    elif args.model == "localbn":
        layers.append(nn.BatchNorm2d(8))
    layers += [conv(8, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(128, 5)]
    model = nn.Sequential(*layers)
model.astype(dt)
crit = losses.CrossEntropyLoss()
opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

if args.plain:
    net, r, size = model, 0, 1
else:
    import fastmod.distributed as dist
    dist.init()
    r, size = dist.rank(), dist.world_size()
    if r != 0:                                  # a different init: the broadcast must fix it
        for p in model.parameters():
            p.data[...] = rng.standard_normal(p.shape)
    if args.sync_bn:
        dist.convert_sync_batchnorm(model)
    # buckets already started when the last layer's backward ends (hook registered before
    # DDP's own, so it runs first)
    early = []
    last = next(m for m in model.modules() if m._parameters)     # the first layer holding any
    last.register_post_backward_hook(
        lambda m: early.append(net._overlap_state["next"] if net._overlap_state else -1))
    net = dist.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb, overlap=args.overlap)

step_losses = []
step = 0
epoch = 0
while step < args.steps:
    order = np.random.default_rng([0, epoch]).permutation(args.n)
    for s in range(0, args.n, args.batch):
        if step == args.steps:
            break
        idx = order[s:s + args.batch]
        if not args.plain:
            idx = dist.shard(idx)
        opt.zero_grad()
        out = net(x[idx])
        lval = crit(out, y[idx])
        net.backward(crit.backward())
        opt.step()
        if not args.plain:
            tot = dist.allreduce(np.array([lval * len(idx), len(idx)]))
            lval = tot[0] / tot[1]
        step_losses.append(lval)
        step += 1
    epoch += 1

spread = 0.0                               # replicas must hold the same parameters
if not args.plain and size > 1:
    mine = np.concatenate([p.data.ravel() for p in model.parameters()])
    first = mine.copy()
    dist._S.comm.Bcast(first, root=0)
    spread = float(dist.allreduce(np.array([np.max(np.abs(mine - first))]), op="max")[0])
if r == 0:
    tag = args.tag or ("plain" if args.plain else f"ranks{size}")
    sd = model.state_dict()
    np.savez(os.path.join(args.out, tag + ".npz"), losses=np.array(step_losses),
             spread=np.array(spread),
             **{"p:" + k: v for k, v in sd.items()})
    print(f"rank 0 of {size}: {step} steps, last loss {step_losses[-1]:.6f}, "
          f"threads {fastmod.get_num_threads()}", flush=True)
    if not args.plain and args.overlap:
        print(f"buckets started before backward ended: {min(early)} of {len(net._buckets)}",
              flush=True)
