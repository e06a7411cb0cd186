"""fit(..., distributed=True) stopped after one epoch on some ranks and resumed on another number
of ranks: the same run as one uninterrupted process (mode: plain | first | second)."""
import sys, os, numpy as np, fastmod
from fastmod import losses, nn, optim
out, mode = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
x = rng.standard_normal((100, 12)); y = (x[:, 0] > 0).astype(np.int64)
fastmod.manual_seed(0)
model = nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 2)).astype(np.float64)
opt = optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
ck = os.path.join(out, "ck.npz")
kw = dict(batch_size=24, seed=3, checkpoint=ck, progress=False)
if mode == "plain":
    h = fastmod.fit(model, losses.CrossEntropyLoss(), opt, (x, y), epochs=2, **kw)
elif mode == "first":
    h = fastmod.fit(model, losses.CrossEntropyLoss(), opt, (x, y), epochs=1, distributed=True, **kw)
else:
    h = fastmod.fit(model, losses.CrossEntropyLoss(), opt, (x, y), epochs=2, distributed=True, resume=ck, **kw)
import fastmod.distributed as dist
if dist.rank() == 0:
    np.save(os.path.join(out, mode + ".npy"), np.concatenate([np.array(h["step_loss"])] + [p.data.ravel() for p in model.parameters()]))
