"""Data-parallel scaling: train steps of two reference workloads on 1 and 2 MPI ranks x threads.

    python bench/bench_distributed.py                      # the table of README's "Scaling out"
    python bench/bench_distributed.py --workloads mlp_b128 --configs 1x1,2x1 --steps 40
    python bench/bench_distributed.py --transport tcp      # force TCP over loopback (no shared
                                                           # memory): what a network adds
    python bench/bench_distributed.py --overlap            # also time Iallreduce overlap (2x1)

Each configuration is one `mpirun -n RANKS --bind-to none` of this file in worker mode. The
global batch is the workload's (128 for mlp_b128, 32 for cnn_b32); each rank trains on its
1/RANKS shard with DistributedDataParallel (fastmod.optim.SGD, momentum 0.9). Reported: the
median train step (ms), samples per second, the speed-up over the first configuration (1 rank x 1
thread), the median time per step spent in the gradient all-reduce (ms; waiting for the slower
rank included) and the median and minimum time of one all-reduce of all the gradients alone
(ranks enter it together after a barrier; the minimum is the transport's cost when both ranks
are on a core, the median adds the machine's scheduling delays).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

WORKLOADS = ("mlp_b128", "cnn_b32")


def _workload(name):
    import workloads
    if name not in workloads.WORKLOADS:
        raise SystemExit(f"bench_distributed: unknown workload {name!r} "
                         f"(one of {', '.join(workloads.WORKLOADS)})")
    return workloads.WORKLOADS[name]


def worker(args):
    import numpy as np
    import workloads
    fastmod = workloads.import_fastmod()
    import fastmod.distributed as dist
    from fastmod.losses import CrossEntropyLoss
    dist.init(threads=args.threads)
    r, n = dist.rank(), dist.world_size()
    wl = _workload(args.workload)
    x, y = workloads.make_data(wl)
    idx = np.arange(len(x))[r::n]
    x, y = np.ascontiguousarray(x[idx]), y[idx]
    fastmod.manual_seed(0)
    model = wl.fastmod_model(fastmod.nn)
    ddp = dist.DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb, overlap=args.overlap)
    opt, _ = workloads.make_fastmod_sgd(model)
    crit = CrossEntropyLoss()
    times, reduce_times = [], []
    dist.barrier()
    for i in range(args.warmup + args.steps):
        a0 = ddp.allreduce_time
        t0 = time.perf_counter()
        opt.zero_grad()
        crit(ddp(x), y)
        ddp.backward(crit.backward())
        opt.step()
        t1 = time.perf_counter()
        if i >= args.warmup:
            times.append(t1 - t0)
            reduce_times.append(ddp.allreduce_time - a0)
    step = statistics.median(times)
    red = statistics.median(reduce_times)
    pure = pure_min = 0.0
    if n > 1:            # the all-reduce alone: all ranks enter together (no waiting for a rank)
        from mpi4py import MPI
        buf = np.zeros(sum(p.size for p in model.parameters()), np.float32)
        comm, alone = dist._S.comm, []
        for _ in range(args.steps):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            alone.append(time.perf_counter() - t0)
        pure, pure_min = statistics.median(alone), min(alone)
    allsteps = dist._S.comm.gather((step, red), root=0) if n > 1 else [(step, red)]
    if r == 0:
        step = max(s for s, _ in allsteps)
        red = statistics.median(x for _, x in allsteps)
        nparams = model.num_parameters()
        print("RESULT " + json.dumps({"workload": wl.name, "ranks": n, "threads": fastmod.get_num_threads(),
                                      "step_ms": 1e3 * step, "reduce_ms": 1e3 * red,
                                      "alone_ms": 1e3 * pure, "alone_min_ms": 1e3 * pure_min,
                                      "samples_per_s": wl.shape[0] / step, "params": nparams,
                                      "overlap": args.overlap}), flush=True)


def _mpirun():
    here = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return here if os.path.exists(here) else shutil.which("mpirun")


def launch(wl, ranks, threads, args, overlap=False):
    cmd = [_mpirun(), "--oversubscribe", "--bind-to", "none", "-n", str(ranks)]
    if args.transport == "tcp":
        cmd += ["--mca", "pml", "ob1", "--mca", "btl", "tcp,self"]
    cmd += [sys.executable, os.path.abspath(__file__), "--worker", wl, "--threads", str(threads),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--bucket-mb", str(args.bucket_mb)]
    if overlap:
        cmd.append("--overlap")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("FASTMOD_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", metavar="WORKLOAD", help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--configs", default="1x1,1x2,2x1,2x2", help="RANKSxTHREADS, comma-separated")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=1, help="runs per configuration (best kept)")
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--overlap", action="store_true", help="also time 2x1 with overlap (1 MB buckets)")
    ap.add_argument("--transport", choices=("auto", "tcp"), default="auto",
                    help="tcp: Open MPI's TCP transport over loopback instead of shared memory")
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    if args.worker:
        args.workload = args.worker
        return worker(args)
    if _mpirun() is None:
        raise SystemExit('bench_distributed: no mpirun (pip install ".[mpi]")')
    configs = [tuple(int(v) for v in c.split("x")) for c in args.configs.split(",")]
    rows = []
    for wl in args.workloads.split(","):
        base = None
        for ranks, threads in configs:
            res = min((launch(wl, ranks, threads, args) for _ in range(args.repeats)),
                      key=lambda d: d["step_ms"])
            base = base or res["step_ms"]
            res["speedup"] = base / res["step_ms"]
            rows.append(res)
            _print_row(res)
        if args.overlap:
            saved = args.bucket_mb
            args.bucket_mb = 1.0
            for ov in (False, True):
                res = launch(wl, 2, 1, args, overlap=ov)
                res["speedup"] = base / res["step_ms"]
                res["note"] = f"1 MB buckets, overlap={'on' if ov else 'off'}"
                rows.append(res)
                _print_row(res)
            args.bucket_mb = saved
    print()
    print("| workload | ranks x threads | step (ms) | samples/s | speed-up | all-reduce in step "
          "(ms) | all-reduce alone, median / min (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        note = f" ({r['note']})" if r.get("note") else ""
        red = (f"{r['reduce_ms']:.2f} | {r['alone_ms']:.2f} / {r.get('alone_min_ms', 0):.2f}"
               if r["ranks"] > 1 else "- | -")
        print(f"| {r['workload']} | {r['ranks']} x {r['threads']}{note} | {r['step_ms']:.2f} | "
              f"{r['samples_per_s']:.0f} | {r['speedup']:.2f}x | {red} |")


def _print_row(r):
    print(f"{r['workload']}: {r['ranks']} rank(s) x {r['threads']} thread(s)"
          + (f" [{r['note']}]" if r.get("note") else "")
          + f": step {r['step_ms']:.2f} ms, {r['samples_per_s']:.0f} samples/s, "
          f"all-reduce {r['reduce_ms']:.2f} ms/step ({r['alone_ms']:.2f} alone, "
          f"min {r.get('alone_min_ms', 0):.2f}), speed-up {r['speedup']:.2f}x", flush=True)


if __name__ == "__main__":
    main()
