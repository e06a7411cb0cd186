"""SyncBatchNorm on uneven shards of one batch vs BatchNorm on the whole batch in one process.

Rank r takes samples r::N of a fixed (B, C, H, W) batch; the loss is the global mean
L = (1/B) sum_i <y_i, G_i>, so rank r's local loss mean gives dy_r = G_r / n_r, and
SyncBatchNorm's dx is the gradient of L scaled by B / n_r (the weight DDP undoes). Rank 0 writes
y, dx (in the global order), the parameter gradients (summed with weights n_r / B) and the
running statistics to OUT/syncbn_ranksN.npz.
"""
import os
import sys

import numpy as np

import fastmod.distributed as dist

out_dir = sys.argv[1]
dist.init()
r, size = dist.rank(), dist.world_size()
comm = dist._S.comm
B, C = 11, 4
rng = np.random.default_rng(0)
x = rng.standard_normal((B, C, 3, 5)) * 3 + 1.5
G = rng.standard_normal(x.shape)
idx = np.arange(B)[r::size]
m = dist.SyncBatchNorm(C, momentum=0.3, dtype=np.float64)
m.weight.data[...] = rng.standard_normal(C)
m.bias.data[...] = rng.standard_normal(C)
for _ in range(2):                                   # two steps: running stats move twice
    m.zero_grad()
    y = m(x[idx])
    dx = m.backward(G[idx] / len(idx)) * (len(idx) / B)
    gw = m.weight.grad * (len(idx) / B)
    gb = m.bias.grad * (len(idx) / B)
parts = comm.gather((idx, y, dx), root=0)
gw = dist.allreduce(gw.copy())
gb = dist.allreduce(gb.copy())
if r == 0:
    Y, DX = np.empty_like(x), np.empty_like(x)
    for i, yy, dd in parts:
        Y[i], DX[i] = yy, dd
    np.savez(os.path.join(out_dir, f"syncbn_ranks{size}.npz"), y=Y, dx=DX, gw=gw, gb=gb,
             running_mean=m.running_mean, running_var=m.running_var,
             nbt=m.num_batches_tracked)
