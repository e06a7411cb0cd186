"""asv benchmarks: per-call overhead of tiny modules and the SGEMM rate behind every Linear."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workloads as W  # noqa: E402


class TinyForward:
    """A (1, 4) input through Linear(4, 4) / ReLU: what Python-side validation costs per call."""

    params = [["Linear", "ReLU", "Sequential"], [True, False]]
    param_names = ["module", "grad"]

    def setup(self, module, grad):
        fastmod = W.import_fastmod()
        nn = fastmod.nn
        self.m = {"Linear": lambda: nn.Linear(4, 4), "ReLU": nn.ReLU,
                  "Sequential": lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU())}[module]()
        self.x = np.ones((1, 4), np.float32)
        self.ctx = fastmod.enable_grad if grad else fastmod.no_grad

    def time_forward(self, module, grad):
        with self.ctx():
            self.m(self.x)


class SGEMM:
    """(n, n) @ (n, n) float32 through Linear (fastmod's pgemm at the default thread count)."""

    params = [[512, 1024]]
    param_names = ["n"]

    def setup(self, n):
        fastmod = W.import_fastmod()
        self.fastmod = fastmod
        self.lin = fastmod.nn.Linear(n, n, bias=False)
        self.x = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)

    def time_linear_forward(self, n):
        with self.fastmod.no_grad():
            self.lin(self.x)

    def track_gflops(self, n):
        import time
        best = float("inf")
        for _ in range(5):
            t0 = time.perf_counter()
            self.time_linear_forward(n)
            best = min(best, time.perf_counter() - t0)
        return 2.0 * n ** 3 / best / 1e9

    track_gflops.unit = "GFLOP/s"
