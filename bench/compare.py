"""Time SPEC §6's reference workloads side by side: fastmod vs PyTorch vs pure NumPy.

    python bench/compare.py                       # all workloads, all cores
    python bench/compare.py --threads 2 --workloads mlp_b128,mlp_b1_infer,resnet_s_b128
    python bench/compare.py --quick --json out.json

All frameworks run in one process, float32, at the same thread count (fastmod.set_num_threads,
torch.set_num_threads, NumPy's BLAS capped through threadpoolctl). Repeats are interleaved --
fastmod, torch, numpy, then the reverse order, and so on -- so that a slow spell of a busy
machine hits every framework alike; each cell is the median of the repeats. Ratios (fastmod /
other, lower is better) are what to read on a shared machine, not absolute times.

A train step is forward, cross-entropy, backward and an SGD(momentum=0.9) step; inference is
a forward pass in eval mode with nothing kept for backward. GFLOP/s counts GEMM work only
(see bench/workloads.py) and is compared with the machine's SGEMM rate measured here: one
large float32 GEMM through fastmod's pgemm (a Linear forward) and through torch.mm.

Before timing, fastmod (and NumPy) load the torch model's weights and the inference outputs are
compared: the `check` column is the largest |fastmod - torch| / max|torch| over the logits.
"""
import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import workloads as W  # noqa: E402

TARGET = {"mlp_b1_infer": 0.5}          # fastmod/torch targets (SPEC §6); 1.0 otherwise
GEOMEAN_TARGET = 0.8


# ---------------------------------------------------------------- timing
# Pause after a sample before the next framework's: NumPy's OpenBLAS worker threads keep
# spinning for ~0.1 s (2^28 cycles) after its last call, and on a small machine they take the
# cores from the OpenMP threads that fastmod and torch share (measured on 2 cores: fastmod's
# MLP step 12 ms right after NumPy, 6.6 ms after a 0.3 s pause). OpenMP's own spin is ~1 ms.
SETTLE = {"numpy": 0.15}
SETTLE_DEFAULT = 0.005


TIMER = time.perf_counter       # --cpu-time: time.thread_time (valid at one thread only)


def interleaved(fns, repeats, min_time, reduce=statistics.median):
    """{name: median seconds per call} (or `reduce` of the samples), the callables' repeats
    interleaved in alternating order.

    Each callable is warmed up, then timed in samples of `inner` calls (inner chosen so that a
    sample lasts about min_time); sample r runs the frameworks forward when r is even and in
    reverse when odd, with a pause after each sample (SETTLE) so that one framework's idle
    threads do not spin on the next one's cores.
    """
    inner = {}
    for name, fn in fns.items():
        fn()
        fn()
        n, t0 = 0, TIMER()
        while True:
            fn()
            n += 1
            dt = TIMER() - t0
            if dt > min_time / 2 or n >= 1000:
                break
        inner[name] = max(1, int(round(min_time / (dt / n))))
        if len(fns) > 1:
            time.sleep(SETTLE.get(name, SETTLE_DEFAULT))
    samples = {name: [] for name in fns}
    order = list(fns)
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for name in (order if r % 2 == 0 else order[::-1]):
                fn, n = fns[name], inner[name]
                t0 = TIMER()
                for _ in range(n):
                    fn()
                samples[name].append((TIMER() - t0) / n)
                if len(fns) > 1:
                    time.sleep(SETTLE.get(name, SETTLE_DEFAULT))
            gc.collect()
    finally:
        if gc_was:
            gc.enable()
    return {name: reduce(v) for name, v in samples.items()}


# ---------------------------------------------------------------- machine peak
def measure_sgemm_peak(size, repeats, have_torch):
    """GFLOP/s of one (size x size) @ (size x size) float32 GEMM: fastmod's pgemm (through a
    bias-free Linear forward under no_grad) and torch.mm, at the current thread counts. A peak:
    the fastest of the repeats (a median let one busy spell of a shared machine halve the
    rate: 86 vs 142 GFLOP/s in two runs ten minutes apart)."""
    fastmod = W.import_fastmod()
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    lin = fastmod.nn.Linear(size, size, bias=False)
    fns = {}

    def fm():
        with fastmod.no_grad():
            lin(a)
    fns["fastmod"] = fm
    if have_torch:
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(lin.weight.data.T.copy())
        out = torch.empty(size, size)
        fns["torch"] = lambda: torch.mm(ta, tb, out=out)
    t = interleaved(fns, repeats, min_time=0.0, reduce=min)
    flops = 2.0 * size ** 3
    return {k: flops / v / 1e9 for k, v in t.items()}


# ---------------------------------------------------------------- per-call overhead
def measure_overhead(repeats, have_torch):
    """Microseconds per forward call of tiny modules: (1, 4) through Linear(4, 4) and ReLU."""
    fastmod = W.import_fastmod()
    x = np.ones((1, 4), np.float32)
    lin, relu = fastmod.nn.Linear(4, 4), fastmod.nn.ReLU()
    seq = fastmod.nn.Sequential(fastmod.nn.Linear(4, 4), fastmod.nn.ReLU())
    cases = {"Linear(4,4)": (lin, None), "ReLU": (relu, None), "Sequential(Linear, ReLU)": (seq, None)}
    if have_torch:
        import torch
        tx = torch.from_numpy(x)
        tcases = {"Linear(4,4)": torch.nn.Linear(4, 4), "ReLU": torch.nn.ReLU(),
                  "Sequential(Linear, ReLU)": torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())}
    rows = []
    for label, (m, _) in cases.items():
        for grad in (True, False):
            fns = {}
            if grad:
                fns["fastmod"] = lambda m=m: m(x)
            else:
                def fm(m=m):
                    with fastmod.no_grad():
                        return m(x)
                fns["fastmod"] = fm
            if have_torch:
                tm = tcases[label]
                if grad:
                    tx.requires_grad_(False)
                    fns["torch"] = lambda tm=tm: tm(tx)
                else:
                    def tf(tm=tm):
                        with torch.no_grad():
                            return tm(tx)
                    fns["torch"] = tf
            t = interleaved(fns, repeats, min_time=0.01)
            rows.append({"module": label, "mode": "train fwd" if grad else "no_grad fwd",
                         "fastmod_us": t["fastmod"] * 1e6,
                         "torch_us": t["torch"] * 1e6 if have_torch else None})
    return rows


# ---------------------------------------------------------------- one workload
def max_rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def build_runners(wl, mode, frameworks):
    """{framework: runner or message}."""
    out = {}
    for fw in frameworks:
        try:
            out[fw] = W.RUNNERS[fw](wl, mode)
        except W.Unavailable as e:
            out[fw] = str(e).split(" (")[0]
        except Exception as e:  # a module that exists but fails to build: report, go on
            out[fw] = f"error: {type(e).__name__}: {e}"
    return out


def run_workload(wl, mode, frameworks, repeats, min_time):
    runners = build_runners(wl, mode, frameworks)
    tr = runners.get("torch")
    check = None
    if tr is not None and not isinstance(tr, str):
        for fw in ("fastmod", "numpy"):
            r = runners.get(fw)
            if r is None or isinstance(r, str):
                continue
            try:
                r.load_torch_weights(tr.model)
            except Exception:
                continue
            if fw == "fastmod" and mode == "infer":
                try:
                    check = max_rel_diff(r.infer(), tr.infer().numpy())
                except Exception as e:
                    runners[fw] = f"error: {type(e).__name__}: {e}"
    fns, notes = {}, {}
    for fw, r in runners.items():
        if isinstance(r, str):
            notes[fw] = r
            continue
        fn = r.train if mode == "train" else r.infer
        try:
            fn()                       # a module that fails at run time is reported, not fatal
        except Exception as e:
            notes[fw] = f"error: {type(e).__name__}: {e}"
            continue
        fns[fw] = fn
    times = interleaved(fns, repeats, min_time) if fns else {}
    extra = {}
    fr = runners.get("fastmod")
    if mode == "train" and fr is not None and not isinstance(fr, str):
        extra["fastmod_sgd"] = fr.opt_kind
    return times, notes, check, extra


# ---------------------------------------------------------------- report
def fmt_ms(t, note):
    if t is not None:
        return f"{t * 1e3:.3f}" if t < 0.01 else f"{t * 1e3:.2f}"
    if note is None:
        return "-"
    return "n/a" if note.startswith("not yet") else ("-" if note.startswith("no NumPy") else "ERR")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for every framework (default: all usable cores)")
    ap.add_argument("--workloads", default=None,
                    help="comma-separated names (default: all): " + ",".join(W.WORKLOADS))
    ap.add_argument("--modes", default="train,infer", help="train,infer (default both)")
    ap.add_argument("--frameworks", default="fastmod,torch,numpy")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved samples per cell")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per sample")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the calling thread's CPU time (needs --threads 1): robust "
                         "single-thread ratios on a machine other processes keep busy")
    ap.add_argument("--no-peak", action="store_true", help="skip the SGEMM peak measurement")
    ap.add_argument("--no-overhead", action="store_true", help="skip the per-call overhead table")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)

    fastmod = W.import_fastmod()
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    if args.cpu_time and args.threads != 1:
        ap.error("--cpu-time measures one thread's CPU time: use it with --threads 1")
    if args.cpu_time:
        global TIMER
        TIMER = time.thread_time
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                               else os.cpu_count() or 1)
    fastmod.set_num_threads(threads)          # also caps NumPy's BLAS at `threads`
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    try:
        import torch
        torch.set_num_threads(threads)
        have_torch = "torch" in frameworks
    except ImportError:
        torch, have_torch = None, False
        frameworks = [f for f in frameworks if f != "torch"]
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(threads, user_api="blas")
        fastmod.set_num_threads(threads)      # re-pin SciPy's OpenBLAS (fastmod's) to 1
    except ImportError:
        pass

    repeats = args.repeats or (5 if args.quick else 21)
    min_time = args.min_time if args.min_time is not None else (0.01 if args.quick else 0.025)
    names = list(W.WORKLOADS) if not args.workloads else [s.strip() for s in args.workloads.split(",")]
    unknown = [n for n in names if n not in W.WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {list(W.WORKLOADS)}")
    modes = [m.strip() for m in args.modes.split(",")]

    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    if load is not None and load > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {load:.1f} on {os.cpu_count()} cores. Other processes take the "
              f"cores; multi-threaded timings then measure the scheduler (an OpenMP barrier waits "
              f"for a descheduled thread). Ratios stay comparable; absolute times do not. "
              f"See bench/README.md.")
    print(f"fastmod {fastmod.__version__} | torch {torch.__version__ if torch else '-'} | "
          f"numpy {np.__version__} | {platform.processor() or platform.machine()} | threads {threads} | "
          f"repeats {repeats} x ~{min_time * 1e3:.0f} ms, interleaved, median"
          + (", thread CPU time" if args.cpu_time else ", wall time"))
    result = {"threads": threads, "repeats": repeats, "min_time": min_time, "loadavg": load,
              "timer": "thread_time" if args.cpu_time else "perf_counter",
              "versions": {"fastmod": fastmod.__version__, "numpy": np.__version__,
                           "torch": torch.__version__ if torch else None,
                           "python": platform.python_version()},
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rows": []}

    peak = None
    if not args.no_peak:
        size = 1024 if args.quick else 2048
        peaks = measure_sgemm_peak(size, 3 if args.quick else 7, have_torch)
        peak = max(peaks.values())
        result["sgemm_gflops"] = dict(peaks, size=size)
        print(f"SGEMM {size}^3 float32: fastmod pgemm {peaks['fastmod']:.1f} GFLOP/s"
              + (f", torch.mm {peaks['torch']:.1f} GFLOP/s" if "torch" in peaks else "")
              + f"  (peak used for %: {peak:.1f})")

    if not args.no_overhead:
        rows = measure_overhead(5 if args.quick else 15, have_torch)
        result["overhead_us"] = rows
        print("\nper-call overhead, input (1, 4), us per forward call (median):")
        print(f"  {'module':<26}{'mode':<13}{'fastmod':>9}{'torch':>9}{'ratio':>8}")
        for r in rows:
            t, f = r["torch_us"], r["fastmod_us"]
            print(f"  {r['module']:<26}{r['mode']:<13}{f:>9.2f}{(f'{t:.2f}' if t else '-'):>9}"
                  f"{(f'{f / t:.2f}' if t else '-'):>8}")

    hdr = (f"\n{'workload':<19}{'mode':<6}{'fastmod ms':>11}{'torch ms':>10}{'numpy ms':>10}"
           f"{'fm/torch':>9}{'fm/numpy':>9}{'fm GF/s':>9}{'%peak':>7}{'torch GF/s':>11}"
           f"{'check':>9}  target")
    print(hdr)
    print("-" * (len(hdr) - 1))
    ratios = []
    for name in names:
        wl = W.WORKLOADS[name]
        for mode in wl.modes:
            if mode not in modes:
                continue
            times, notes, check, extra = run_workload(wl, mode, frameworks, repeats, min_time)
            tf, tt, tn = times.get("fastmod"), times.get("torch"), times.get("numpy")
            r_t = tf / tt if tf and tt else None
            r_n = tf / tn if tf and tn else None
            flops = wl.flops(mode)
            gf = flops / tf / 1e9 if tf else None
            tgf = flops / tt / 1e9 if tt else None
            pct = 100 * gf / peak if gf and peak else None
            target = TARGET.get(name, 1.0)
            verdict = "-" if r_t is None else (f"<= {target}: " + ("ok" if r_t <= target else "MISS"))
            if r_t is not None:
                ratios.append(r_t)
            print(f"{name:<19}{mode:<6}{fmt_ms(tf, notes.get('fastmod')):>11}"
                  f"{fmt_ms(tt, notes.get('torch')):>10}{fmt_ms(tn, notes.get('numpy')):>10}"
                  f"{(f'{r_t:.3f}' if r_t else '-'):>9}{(f'{r_n:.3f}' if r_n else '-'):>9}"
                  f"{(f'{gf:.1f}' if gf else '-'):>9}{(f'{pct:.0f}%' if pct else '-'):>7}"
                  f"{(f'{tgf:.1f}' if tgf else '-'):>11}"
                  f"{(f'{check:.0e}' if check is not None else '-'):>9}  {verdict}")
            for fw, note in notes.items():
                if note.startswith("error"):
                    print(f"    {fw}: {note}")
            result["rows"].append({"workload": name, "mode": mode, "flops": flops,
                                   "seconds": times, "notes": notes,
                                   "fastmod_over_torch": r_t, "fastmod_over_numpy": r_n,
                                   "fastmod_gflops": gf, "torch_gflops": tgf,
                                   "percent_of_peak": pct, "check_max_rel_diff": check,
                                   "target": target, **extra})
    gm = W.geomean(ratios)
    result["geomean_fastmod_over_torch"] = gm
    sgd = {r.get("fastmod_sgd") for r in result["rows"] if r.get("fastmod_sgd")}
    print(f"\ngeometric mean fastmod/torch over {len(ratios)} rows: {gm:.3f} "
          f"(target <= {GEOMEAN_TARGET})" + (f" | fastmod optimizer: {', '.join(sorted(sgd))}" if sgd else ""))
    missing = sorted({r["workload"] for r in result["rows"]
                      if str(r["notes"].get("fastmod", "")).startswith("not yet")})
    if missing:
        print("fastmod modules not yet available for: " + ", ".join(missing))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=float)
        print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
