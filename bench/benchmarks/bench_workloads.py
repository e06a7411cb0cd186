"""asv benchmarks: fastmod on SPEC §6's reference workloads (bench/workloads.py).

time_train_step / peakmem_train_step: forward, cross-entropy, backward, SGD(momentum) step.
time_infer / peakmem_infer: a forward pass under fastmod.no_grad() in eval mode.
Workloads whose modules fastmod does not have yet are skipped (NotImplementedError in setup,
asv's skip mechanism). Threads: fastmod's default (FASTMOD_NUM_THREADS, else all cores).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workloads as W  # noqa: E402

TRAIN = [n for n, w in W.WORKLOADS.items() if "train" in w.modes]
INFER = [n for n, w in W.WORKLOADS.items() if "infer" in w.modes]


def _runner(name, mode):
    try:
        return W.FastmodRunner(W.WORKLOADS[name], mode)
    except W.Unavailable as e:
        raise NotImplementedError(f"{name}: fastmod module {e}") from None


class TrainStep:
    params = [TRAIN]
    param_names = ["workload"]
    timeout = 300

    def setup(self, name):
        self.runner = _runner(name, "train")
        self.runner.train()                # warm-up: allocations, optimizer state

    def time_train_step(self, name):
        self.runner.train()

    def peakmem_train_step(self, name):
        for _ in range(3):
            self.runner.train()


class Inference:
    params = [INFER]
    param_names = ["workload"]
    timeout = 300

    def setup(self, name):
        self.runner = _runner(name, "infer")
        self.runner.infer()

    def time_infer(self, name):
        self.runner.infer()

    def peakmem_infer(self, name):
        for _ in range(3):
            self.runner.infer()
