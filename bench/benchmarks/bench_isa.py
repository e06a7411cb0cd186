"""asv benchmarks per instruction-set level: the FMA peak and kernels with hand-written SIMD.

Every kernel module is built per level (scalar, avx2, avx512) and fastmod._kernels.set_isa picks
one; these run the same call at each level the CPU supports (the others are skipped:
NotImplementedError in setup), so a change to simd/*.h shows at every level. The ISA axis is
fixed -- not this CPU's list -- so that results of different machines line up.
"""
import importlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import workloads as W  # noqa: E402

ISAS = ["scalar", "avx2", "avx512"]


def _use_isa(isa):
    """Switch fastmod's kernels to `isa`; returns (fastmod, the level to restore)."""
    fastmod = W.import_fastmod()
    k = fastmod._kernels
    if isa not in k.supported_isas():
        raise NotImplementedError(f"this CPU or build has no {isa} kernels")
    before = k.get_isa()
    k.set_isa(isa)
    return fastmod, before


class FMAPeak:
    """float32 FMA peak (GFLOP/s) at each level on fastmod's threads (probe.fma_peak)."""

    params = [ISAS]
    param_names = ["isa"]

    def setup(self, isa):
        self.fastmod, self.before = _use_isa(isa)
        self.probe = importlib.import_module(f"fastmod._kernels.{isa}.probe")

    def teardown(self, isa):
        self.fastmod._kernels.set_isa(self.before)

    def track_gflops(self, isa):
        return self.probe.fma_peak(self.fastmod.get_num_threads(), 0.1)

    track_gflops.unit = "GFLOP/s"


class KernelForward:
    """Forward passes under no_grad whose inner loops are simd/*.h:
    gelu           GELU on (16, 64, 1024) (simd/fm_gelu.h; transformer_b16's FFN)
    linear_skinny  Linear(512, 10) on (128, 512) (simd/fm_linear.h; the 10-class output layers)
    conv_3ch       Conv2d(3, 32, 3, padding=1) on (32, 3, 32, 32) (cnn_b32's first layer: the
                   direct few-channel convolution in conv.pyx at avx2 / avx512, im2col + GEMM at
                   the scalar level)
    """

    params = [["gelu", "linear_skinny", "conv_3ch"], ISAS]
    param_names = ["kernel", "isa"]

    def setup(self, kernel, isa):
        self.fastmod, self.before = _use_isa(isa)
        nn = self.fastmod.nn
        rng = np.random.default_rng(0)
        self.m, shape = {"gelu": (nn.GELU(), (16, 64, 1024)),
                         "linear_skinny": (nn.Linear(512, 10), (128, 512)),
                         "conv_3ch": (nn.Conv2d(3, 32, 3, padding=1), (32, 3, 32, 32))}[kernel]
        self.x = rng.standard_normal(shape, dtype=np.float32)

    def teardown(self, kernel, isa):
        self.fastmod._kernels.set_isa(self.before)

    def time_forward(self, kernel, isa):
        with self.fastmod.no_grad():
            self.m(self.x)
