"""Time SPEC §6's reference workloads side by side: fastmod vs PyTorch vs pure NumPy.

    python bench/compare.py                       # all workloads, all cores
    python bench/compare.py --threads 2 --workloads mlp_b128,mlp_b1_infer,resnet_s_b128
    python bench/compare.py --quick --json out.json
    python bench/compare.py --isa avx2            # fastmod's AVX2 kernels (torch, OpenBLAS native)
    python bench/compare.py --emulate-avx2        # every library as on an AVX2-only CPU
    python bench/compare.py --frameworks fastmod,torch,compile,ort   # + torch.compile, ONNX Runtime

All frameworks run in one process, float32, at the same thread count (fastmod.set_num_threads,
torch.set_num_threads, NumPy's BLAS capped through threadpoolctl). Repeats are interleaved --
fastmod, torch, numpy, then the reverse order, and so on -- so that a slow spell of a busy
machine hits every framework alike; each cell is the median of the repeats. Ratios (fastmod /
other, lower is better) are what to read on a shared machine, not absolute times.

A train step is forward, cross-entropy, backward and an SGD(momentum=0.9) step; inference is
a forward pass in eval mode with nothing kept for backward. GFLOP/s counts GEMM work only
(see bench/workloads.py) and is compared with two machine rates measured here: the SGEMM rate
(one large float32 GEMM through fastmod's pgemm -- a Linear forward -- and through torch.mm)
and the FMA peak of the instruction set fastmod runs at (fastmod._kernels.<isa>.probe: a
register-only FMA loop on every benchmark thread, the physical limit).

The header names what each library runs on this CPU: fastmod's kernel level (--isa), SciPy's
and NumPy's OpenBLAS core type, torch's CPU capability and oneDNN's ISA. OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE change OpenBLAS's kernels and blocking; SPEC §6's targets are measured with
both unset (a warning says so when they are set). --emulate-avx2 re-runs this script with the
variables that make fastmod, torch (ATen and oneDNN) and OpenBLAS choose their AVX2 code, which
they read when they load -- the ratios an AVX2-only machine would show, on this one.

Before timing, fastmod (and NumPy) load the torch model's weights and the inference outputs are
compared: the `check` column is the largest |fastmod - torch| / max|torch| over the logits.
"""
import argparse
import gc
import importlib
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import workloads as W  # noqa: E402

TARGET = {"mlp_b1_infer": 0.5}          # fastmod/torch targets (SPEC §6); 1.0 otherwise
GEOMEAN_TARGET = 0.65

# --emulate-avx2: what fastmod, ATen, oneDNN and OpenBLAS read when they load (so they must be in
# the environment before the process starts) to run the code they would run on an AVX2-only CPU
# torch's float32 GEMMs are MKL's, which ignores the ATen/oneDNN variables: without
# MKL_ENABLE_INSTRUCTIONS torch's Linear layers kept AVX-512 (mlp_b128 infer 0.59 ms either way)
EMULATE_AVX2 = (("FASTMOD_ISA", "avx2"), ("ATEN_CPU_CAPABILITY", "avx2"),
                ("ONEDNN_MAX_CPU_ISA", "AVX2"), ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
                ("OPENBLAS_CORETYPE", "Haswell"))
# set for a benchmark, these make OpenBLAS run another core's kernels or blocking (SPEC §6: unset)
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


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


def measure_fma_peaks(threads, seconds):
    """{isa: GFLOP/s} of float32 FMAs on `threads` threads at once, for every instruction-set
    level fastmod has and this CPU runs (fastmod._kernels.<isa>.probe.fma_peak: independent FMA
    chains in registers; each thread's fastest chunk, so a busy machine lowers it little)."""
    fastmod = W.import_fastmod()
    return {isa: importlib.import_module(f"fastmod._kernels.{isa}.probe").fma_peak(threads, seconds)
            for isa in fastmod._kernels.supported_isas()}


# ---------------------------------------------------------------- machine and libraries
def _under(path, package):
    """True when `path` is inside `package`'s installation (its directory or its bundled
    `<package>.libs` / `<package>/.dylibs`, where wheels keep their OpenBLAS)."""
    parts = os.path.normcase(os.path.normpath(path)).split(os.sep)
    return any(p == package or p.startswith(package + ".libs") for p in parts)


def openblas_libraries():
    """{'scipy': {...}, 'numpy': {...}}: the threadpoolctl entry (architecture = OpenBLAS's core
    type, version, filepath) of the OpenBLAS that SciPy's cython_blas -- hence every fastmod GEMM
    -- calls and of NumPy's; missing keys when threadpoolctl or the library is absent."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {}
    fastmod = W.import_fastmod()
    scipy_path = getattr(fastmod._runtime, "_SCIPY_BLAS_PATH", None)
    same = (lambda p: os.path.realpath(p) == os.path.realpath(scipy_path)) if scipy_path else None
    out = {}
    for info in threadpool_info():
        if info.get("internal_api") != "openblas":
            continue
        fp = info.get("filepath") or ""
        entry = {k: info.get(k) for k in ("architecture", "version", "filepath", "num_threads")}
        if (same(fp) if same else _under(fp, "scipy")) and "scipy" not in out:
            out["scipy"] = entry
        elif _under(fp, "numpy") and "numpy" not in out:
            out["numpy"] = entry
    return out


def onednn_isa(torch):
    """oneDNN's ISA as its verbose mode names it ("Intel AVX2", ...), or None.

    oneDNN has no Python query; with verbose on it prints `onednn_verbose,...,cpu,isa:<name>`
    to the C stdout once, when the process's first primitive runs -- so this must be called
    before torch runs oneDNN code, and it captures file descriptor 1 around one small reorder
    (a small convolution may not reach oneDNN: torch picks its own kernel for small inputs).
    """
    mk = getattr(getattr(torch, "backends", None), "mkldnn", None)
    try:
        if mk is None or not mk.is_available():
            return None
        sys.stdout.flush()
        saved = os.dup(1)
        with tempfile.TemporaryFile() as f:
            os.dup2(f.fileno(), 1)
            try:
                with mk.verbose(mk.VERBOSE_ON):
                    torch.ones(2, 8).to_mkldnn().to_dense()     # a oneDNN reorder, any shape
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
                os.close(saved)
            f.seek(0)
            text = f.read().decode("utf-8", "replace")
    except Exception:
        return None
    for line in text.splitlines():
        if ",cpu,isa:" in line:
            return line.split(",cpu,isa:", 1)[1].strip()
    return None


def machine_info(torch):
    """What runs on this CPU: brand, fastmod's kernel level, OpenBLAS core types, torch's."""
    fastmod = W.import_fastmod()
    k = fastmod._kernels
    info = {"cpu": k._cpu.brand() or platform.processor() or platform.machine(),
            "isa": k.get_isa(), "supported_isas": list(k.supported_isas()),
            "built_isas": list(k.built_isas()), "openblas": openblas_libraries(),
            "torch_cpu_capability": None, "onednn_isa": None,
            "env": {v: os.environ[v] for v in OPENBLAS_VARS + tuple(n for n, _ in EMULATE_AVX2)
                    if v in os.environ}}
    if torch is not None:
        try:
            info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except Exception:
            pass
        info["onednn_isa"] = onednn_isa(torch)
    return info


def emulation_mismatches(info):
    """Libraries that did not take the emulation variables set in the environment:
    [(variable, wanted, what the library reports)]."""
    env, bad = info["env"], []
    if "FASTMOD_ISA" in env and info["isa"] != env["FASTMOD_ISA"].lower():
        bad.append(("FASTMOD_ISA", env["FASTMOD_ISA"], f"fastmod runs {info['isa']}"))
    cap = info["torch_cpu_capability"]
    if "ATEN_CPU_CAPABILITY" in env and cap is not None and cap.lower() != env["ATEN_CPU_CAPABILITY"].lower():
        bad.append(("ATEN_CPU_CAPABILITY", env["ATEN_CPU_CAPABILITY"], f"torch's CPU capability is {cap}"))
    isa = info["onednn_isa"]
    if "ONEDNN_MAX_CPU_ISA" in env and isa is not None:
        want = env["ONEDNN_MAX_CPU_ISA"].upper()
        wider = any(w in isa.upper() for w in ("AVX-512", "AVX512", "AVX10", "AMX"))
        if want.startswith("AVX2") and wider:
            bad.append(("ONEDNN_MAX_CPU_ISA", env["ONEDNN_MAX_CPU_ISA"], f"oneDNN runs {isa}"))
    if "OPENBLAS_CORETYPE" in env:
        for lib, e in sorted(info["openblas"].items()):
            arch = e.get("architecture")
            if arch and arch.lower() != env["OPENBLAS_CORETYPE"].lower():
                bad.append(("OPENBLAS_CORETYPE", env["OPENBLAS_CORETYPE"],
                            f"{lib}'s OpenBLAS core is {arch}"))
    return bad


def print_machine(info, fma, threads, emulated):
    """The header lines: CPU, fastmod's level, BLAS cores, torch's; warnings; FMA peaks."""
    bl = info["openblas"]
    blas = " | ".join(f"{lib}'s OpenBLAS {e.get('version') or '?'}: core {e.get('architecture') or '?'}"
                      + (" (fastmod's GEMMs)" if lib == "scipy" else "")
                      for lib, e in sorted(bl.items(), key=lambda kv: kv[0] != "scipy"))
    print(f"CPU {info['cpu']} | fastmod ISA {info['isa']} "
          f"(supported: {', '.join(info['supported_isas'])})")
    print(f"BLAS: {blas or 'OpenBLAS core types unknown (pip install threadpoolctl)'}")
    if info["torch_cpu_capability"] is not None or info["onednn_isa"] is not None:
        print(f"torch: CPU capability {info['torch_cpu_capability'] or '?'} | "
              f"oneDNN ISA {info['onednn_isa'] or '?'}")
    env = info["env"]
    if emulated:
        print("--emulate-avx2: this process was started with "
              + " ".join(f"{n}={v}" for n, v in EMULATE_AVX2)
              + ": fastmod, torch and OpenBLAS run their AVX2 code (an AVX2-only CPU's ratios)")
    stray = [v for v in OPENBLAS_VARS if v in env and not (emulated and v == "OPENBLAS_CORETYPE")]
    if stray:
        print(f"WARNING: {', '.join(f'{v}={env[v]}' for v in stray)} set: OpenBLAS (SciPy's, which "
              f"fastmod's GEMMs call, and NumPy's) runs other kernels or blocking than this CPU's, "
              f"and SPEC §6's targets are measured with both unset. Run: "
              f"env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/compare.py ...")
    for var, want, got in emulation_mismatches(info):
        print(f"WARNING: {var}={want} is set, but {got}"
              + (" (torch was loaded before the variable was set?)" if var == "ATEN_CPU_CAPABILITY" else ""))
    if emulated and info["torch_cpu_capability"] is None and info["onednn_isa"] is None:
        print("WARNING: --emulate-avx2: torch is not importable; only fastmod and OpenBLAS emulate")
    if fma:
        print(f"FMA peak float32, {threads} thread{'s' if threads > 1 else ''}: "
              + " | ".join(f"{isa} {g:.1f}" for isa, g in fma.items())
              + f" GFLOP/s  (%fma below: of {info['isa']}'s)")


def rerun_emulating_avx2(argv):
    """Run this script again, without --emulate-avx2, in an environment with EMULATE_AVX2 set;
    returns its exit status."""
    env = dict(os.environ, **dict(EMULATE_AVX2))
    # (argparse also takes a prefix of the option: --emulate-a)
    args = [a for a in argv if not (a.startswith("--emulate-") and "--emulate-avx2".startswith(a))]
    args.append("--emulated-avx2")
    cmd = [sys.executable, os.path.abspath(__file__)] + args
    print("--emulate-avx2: re-running as\n  "
          + " ".join(f"{n}={v}" for n, v in EMULATE_AVX2) + " "
          + " ".join(shlex.quote(a) for a in ["python", os.path.relpath(cmd[1])] + args[:-1]),
          flush=True)
    return subprocess.call(cmd, env=env)


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
        for fw in ("fastmod", "numpy", "planned"):
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
    # ONNX Runtime alone, after the others: its idle threads spin (its default, the fastest
    # setting for it) and slow any other framework timed in the same process while its
    # session lives (W.OrtRunner); closed afterwards, so the next row is not disturbed
    alone = {fw: fns.pop(fw) for fw in ("ort",) if fw in fns}
    times = interleaved(fns, repeats, min_time) if fns else {}
    for fw, fn in alone.items():
        times.update(interleaved({fw: fn}, repeats, min_time))
        runners[fw].close()
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
    return "n/a" if note.startswith("not yet") else ("-" if note.startswith("no ") else "ERR")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for every framework (default: all usable cores)")
    ap.add_argument("--workloads", default=None,
                    help="comma-separated names (default: all): " + ",".join(W.WORKLOADS))
    ap.add_argument("--modes", default="train,infer", help="train,infer (default both)")
    ap.add_argument("--frameworks", default="fastmod,torch,numpy",
                    help="any of fastmod, torch, numpy, compile (torch.compile), ort (ONNX "
                         "Runtime, inference), planned (fastmod.inference, inference); with compile/ort a line per row gives their "
                         "times and fastmod / the best of torch, compile and ort")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved samples per cell")
    ap.add_argument("--min-time", type=float, default=None, help="seconds per sample")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the calling thread's CPU time (needs --threads 1): robust "
                         "single-thread ratios on a machine other processes keep busy")
    ap.add_argument("--isa", default=None, choices=("auto", "scalar", "avx2", "avx512"),
                    help="fastmod's kernel level (fastmod._kernels.set_isa; default: FASTMOD_ISA, "
                         "else the best this CPU runs); torch and OpenBLAS are not affected")
    ap.add_argument("--emulate-avx2", action="store_true",
                    help="re-run with " + " ".join(f"{n}={v}" for n, v in EMULATE_AVX2)
                         + ": fastmod, torch and OpenBLAS all run their AVX2 code")
    ap.add_argument("--emulated-avx2", action="store_true", help=argparse.SUPPRESS)  # the re-run
    ap.add_argument("--no-peak", action="store_true",
                    help="skip the SGEMM and FMA peak measurements")
    ap.add_argument("--no-overhead", action="store_true", help="skip the per-call overhead table")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.emulate_avx2 and not args.emulated_avx2:
        if args.isa not in (None, "avx2"):
            ap.error(f"--emulate-avx2 runs fastmod at avx2, not --isa {args.isa}")
        raise SystemExit(rerun_emulating_avx2(sys.argv[1:] if argv is None else list(argv)))

    fastmod = W.import_fastmod()
    if args.isa is not None:
        try:
            fastmod._kernels.set_isa(args.isa)
        except ValueError as e:
            ap.error(f"--isa {args.isa}: {e}")
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
          f"numpy {np.__version__} | {platform.machine()} | threads {threads} | "
          f"repeats {repeats} x ~{min_time * 1e3:.0f} ms, interleaved, median"
          + (", thread CPU time" if args.cpu_time else ", wall time"))
    info = machine_info(torch)          # before torch runs anything (oneDNN's ISA: see there)
    fma = {} if args.no_peak else measure_fma_peaks(threads, 0.05 if args.quick else 0.2)
    print_machine(info, fma, threads, args.emulated_avx2)
    fma_peak = fma.get(info["isa"])
    result = {"threads": threads, "repeats": repeats, "min_time": min_time, "loadavg": load,
              "timer": "thread_time" if args.cpu_time else "perf_counter",
              "versions": {"fastmod": fastmod.__version__, "numpy": np.__version__,
                           "torch": torch.__version__ if torch else None,
                           "python": platform.python_version()},
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "isa": info["isa"], "emulate_avx2": args.emulated_avx2, "machine": info,
              "fma_peak_gflops": fma, "rows": []}
    emulation = emulation_mismatches(info)
    if emulation:
        result["emulation_mismatches"] = [list(m) for m in emulation]

    peak = None
    if not args.no_peak:
        size = 1024 if args.quick else 2048
        peaks = measure_sgemm_peak(size, 3 if args.quick else 7, have_torch)
        peak = max(peaks.values())
        result["sgemm_gflops"] = dict(peaks, size=size)
        print(f"SGEMM {size}^3 float32: fastmod pgemm {peaks['fastmod']:.1f} GFLOP/s"
              + (f", torch.mm {peaks['torch']:.1f} GFLOP/s" if "torch" in peaks else "")
              + f"  (%sgemm below: of {peak:.1f})")

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
           f"{'fm/torch':>9}{'fm/numpy':>9}{'fm GF/s':>9}{'%sgemm':>7}{'%fma':>6}{'torch GF/s':>11}"
           f"{'check':>9}  target")
    print(hdr)
    print("-" * (len(hdr) - 1))
    ratios, best_ratios, planned_ort = [], [], []
    extra_peers = [fw for fw in frameworks if fw in W.PEERS and fw != "torch"]
    planned = "planned" in frameworks
    for name in names:
        wl = W.WORKLOADS[name]
        for mode in wl.modes:
            if mode not in modes:
                continue
            times, notes, check, extra = run_workload(wl, mode, frameworks, repeats, min_time)
            tf, tt, tn = times.get("fastmod"), times.get("torch"), times.get("numpy")
            peers = {fw: times[fw] for fw in W.PEERS if fw in times}
            best = min(peers, key=peers.get) if peers else None
            r_best = tf / peers[best] if tf and best else None
            r_t = tf / tt if tf and tt else None
            r_n = tf / tn if tf and tn else None
            flops = wl.flops(mode)
            gf = flops / tf / 1e9 if tf else None
            tgf = flops / tt / 1e9 if tt else None
            pct = 100 * gf / peak if gf and peak else None
            pct_fma = 100 * gf / fma_peak if gf and fma_peak else None
            target = TARGET.get(name, 1.0)
            verdict = "-" if r_t is None else (f"<= {target}: " + ("ok" if r_t <= target else "MISS"))
            if r_t is not None:
                ratios.append(r_t)
            print(f"{name:<19}{mode:<6}{fmt_ms(tf, notes.get('fastmod')):>11}"
                  f"{fmt_ms(tt, notes.get('torch')):>10}{fmt_ms(tn, notes.get('numpy')):>10}"
                  f"{(f'{r_t:.3f}' if r_t else '-'):>9}{(f'{r_n:.3f}' if r_n else '-'):>9}"
                  f"{(f'{gf:.1f}' if gf else '-'):>9}{(f'{pct:.0f}%' if pct else '-'):>7}"
                  f"{(f'{pct_fma:.0f}%' if pct_fma else '-'):>6}"
                  f"{(f'{tgf:.1f}' if tgf else '-'):>11}"
                  f"{(f'{check:.0e}' if check is not None else '-'):>9}  {verdict}")
            if extra_peers:
                print("    " + "  ".join(f"{fw} {fmt_ms(times.get(fw), notes.get(fw))} ms"
                                         for fw in extra_peers)
                      + (f"  | fastmod / best ({best}): {r_best:.3f}" if r_best else ""))
            if r_best is not None:
                best_ratios.append(r_best)
            tp = times.get("planned")
            if planned and tp:
                pb = {fw: times[fw] for fw in ("torch", "ort") if fw in times}
                print(f"    fastmod.inference {fmt_ms(tp, None)} ms"
                      + "".join(f" | planned / {fw}: {tp / t:.3f}" for fw, t in pb.items()))
                if "ort" in pb:
                    planned_ort.append(tp / pb["ort"])
            for fw, note in notes.items():
                if note.startswith("error"):
                    print(f"    {fw}: {note}")
            result["rows"].append({"workload": name, "mode": mode, "flops": flops,
                                   "seconds": times, "notes": notes,
                                   "fastmod_over_torch": r_t, "fastmod_over_numpy": r_n,
                                   "fastmod_gflops": gf, "torch_gflops": tgf,
                                   "percent_of_peak": pct, "percent_of_fma_peak": pct_fma,
                                   "check_max_rel_diff": check,
                                   "best_peer": best, "fastmod_over_best": r_best,
                                   "target": target, **extra})
    gm = W.geomean(ratios)
    result["geomean_fastmod_over_torch"] = gm
    if planned_ort:
        result["geomean_planned_over_ort"] = W.geomean(planned_ort)
        print(f"\ngeometric mean fastmod.inference / ONNX Runtime over {len(planned_ort)} rows: "
              f"{W.geomean(planned_ort):.3f}")
    if extra_peers and best_ratios:
        result["geomean_fastmod_over_best"] = W.geomean(best_ratios)
        print(f"\ngeometric mean fastmod / best of {', '.join(['torch'] + extra_peers)} over "
              f"{len(best_ratios)} rows: {W.geomean(best_ratios):.3f}")
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
