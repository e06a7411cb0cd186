"""Peak resident memory of one train step (and one inference), fastmod vs torch eager.

    python bench/memory.py [--threads 2] [--workloads cnn_b32,...] [--modes train,infer]

Each (framework, workload, mode) runs in a fresh process: the model, data, loss and optimizer
are built (bench/workloads.py's runners, as compare.py), the kernel's peak-RSS counter is reset
(`echo 5 > /proc/self/clear_refs`) and five steps run. Reported: the peak resident memory
during the steps above the resident memory before the first (MB) -- what training adds on top
of the model, data and libraries: saved activations, gradients, optimizer state, scratch,
allocator pools -- and the ratio fastmod / torch (issue #15: no higher than torch eager's on
the conv workloads). Linux only (reads /proc/self/status).
"""
import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CONV = ("cnn_b32", "conv1d_b64", "bnresnet_b32", "groupnorm_cnn_b32", "densenet_b16")


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _child(framework, name, mode, threads):
    """Runs in the fresh process: prints {"base_mb", "peak_mb"} as JSON."""
    import workloads
    if framework == "torch":
        import torch
        torch.set_num_threads(threads)
    else:
        fm = workloads.import_fastmod()
        fm.set_num_threads(threads)
    runner = workloads.RUNNERS[framework](workloads.WORKLOADS[name], mode)
    step = runner.train if mode == "train" else runner.infer
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                              # reset VmHWM to the current RSS
    base = _status_kb("VmRSS")
    for _ in range(5):
        step()
    peak = _status_kb("VmHWM")
    print(json.dumps({"base_mb": base / 1024, "peak_mb": (peak - base) / 1024}))


def measure(framework, name, mode, threads):
    r = subprocess.run([sys.executable, __file__, "--child", framework, name, mode, str(threads)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{framework} {name} {mode}: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workloads", default=",".join(CONV))
    ap.add_argument("--modes", default="train,infer")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rows = []
    print(f"{'workload':18} {'mode':6} {'fastmod MB':>10} {'torch MB':>9} {'fm/torch':>8}  "
          f"(peak RSS of 5 steps above the RSS before them; threads {args.threads})")
    for name in args.workloads.split(","):
        for mode in args.modes.split(","):
            fm = measure("fastmod", name, mode, args.threads)
            th = measure("torch", name, mode, args.threads)
            ratio = fm["peak_mb"] / th["peak_mb"] if th["peak_mb"] > 0 else float("nan")
            rows.append({"workload": name, "mode": mode, "fastmod_mb": fm["peak_mb"],
                         "torch_mb": th["peak_mb"], "ratio": ratio})
            print(f"{name:18} {mode:6} {fm['peak_mb']:10.1f} {th['peak_mb']:9.1f} {ratio:8.2f}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
