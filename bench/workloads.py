"""The reference workloads of SPEC §6, built the same way for fastmod, PyTorch and NumPy.

Each workload is a model, an input shape and 10 classes. A *runner* builds one framework's copy
of the model plus its data, loss and optimizer, and exposes two callables:

    train()   forward, cross-entropy, backward, SGD(momentum=0.9) step
    infer()   forward with nothing kept for backward (fastmod.no_grad / torch.no_grad), eval mode

FLOPs are counted as GEMM work only: 2*M*N*K per GEMM (convolutions as their im2col GEMM,
attention's two batched products included); a train step is forward + dW + dx for every layer
except the first layer's dx (the input needs no gradient, and torch skips it too).

Used by bench/compare.py (side by side, interleaved) and by the asv suite (bench/benchmarks/).
"""
import math
import os
import sys
from collections import OrderedDict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def import_fastmod():
    """fastmod from the installed package, else from this checkout (an in-place build)."""
    try:
        import fastmod
    except ImportError:
        sys.path.insert(0, REPO)
        import fastmod
    return fastmod


if HERE not in sys.path:
    sys.path.insert(0, HERE)          # numpy_ref next to this file

import numpy_ref  # noqa: E402

LR, MOMENTUM, CLASSES = 0.01, 0.9, 10


class Unavailable(Exception):
    """The framework lacks a module this workload needs (e.g. not written yet)."""


# ---------------------------------------------------------------- FLOP counting
def _gemm_flops(gemms, train):
    """gemms: [(M, N, K, count)] in forward order; the first entry's dx is skipped in training."""
    total = 0
    for i, (m, n, k, count) in enumerate(gemms):
        f = 2.0 * m * n * k * count
        total += f if not train else f * (2 if i == 0 else 3)
    return total


def _conv_gemm(batch, cin, cout, kernel_elems, out_spatial):
    # im2col GEMM: (N*out_spatial, Cin*k) @ (Cin*k, Cout)
    return (batch * out_spatial, cout, cin * kernel_elems, 1)


# ---------------------------------------------------------------- the workloads
class Workload:
    def __init__(self, name, shape, description, gemms, modes=("train", "infer"),
                 numpy_model=None, gemm_bound=False):
        self.name, self.shape, self.description = name, tuple(shape), description
        self.gemms, self.modes = gemms, modes
        self.numpy_model = numpy_model
        self.gemm_bound = gemm_bound

    def flops(self, mode):
        return _gemm_flops(self.gemms, mode == "train")

    # each framework's model: overridden per workload below
    def fastmod_model(self, nn):
        raise NotImplementedError

    def torch_model(self, tnn):
        raise NotImplementedError


def _mlp_gemms(b):
    return [(b, 512, 784, 1), (b, 512, 512, 1), (b, 10, 512, 1)]


class MLP(Workload):
    def fastmod_model(self, nn):
        return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                             nn.Linear(512, 10))

    def torch_model(self, tnn):
        return tnn.Sequential(tnn.Linear(784, 512), tnn.ReLU(), tnn.Linear(512, 512), tnn.ReLU(),
                              tnn.Linear(512, 10))


class ResNetS(Workload):
    def fastmod_model(self, nn):
        return nn.Sequential(*[nn.ResidualBlock(256) for _ in range(8)], nn.Linear(256, 10))

    def torch_model(self, tnn):
        return tnn.Sequential(*[TorchParts.residual_block(tnn, 256) for _ in range(8)],
                              tnn.Linear(256, 10))


class CNN(Workload):
    def fastmod_model(self, nn):
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Conv2d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
                             nn.Flatten(), nn.Linear(4096, 10))

    torch_model = fastmod_model


class Conv1D(Workload):
    def fastmod_model(self, nn):
        return nn.Sequential(nn.Conv1d(32, 64, 5, padding=2), nn.ReLU(),
                             nn.Conv1d(64, 64, 5, padding=2), nn.ReLU(),
                             nn.Flatten(), nn.Linear(16384, 10))

    torch_model = fastmod_model


class BNResNet(Workload):
    def fastmod_model(self, nn):
        return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.BNResBlock(64), nn.BNResBlock(64),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    def torch_model(self, tnn):
        return tnn.Sequential(tnn.Conv2d(3, 64, 3, padding=1), TorchParts.bn_res_block(tnn, 64),
                              TorchParts.bn_res_block(tnn, 64), tnn.AdaptiveAvgPool2d(1),
                              tnn.Flatten(), tnn.Linear(64, 10))


class GroupNormCNN(Workload):
    def fastmod_model(self, nn):
        return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.ReLU(),
                             nn.Conv2d(64, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))

    torch_model = fastmod_model


class Transformer(Workload):
    def fastmod_model(self, nn):
        return nn.Sequential(*[nn.TransformerEncoderLayer(256, 8, dim_feedforward=1024, dropout=0.0,
                                                          activation="gelu") for _ in range(2)],
                             _fastmod_mean_tokens(nn), nn.Linear(256, 10))

    def torch_model(self, tnn):
        return tnn.Sequential(*[tnn.TransformerEncoderLayer(256, 8, dim_feedforward=1024, dropout=0.0,
                                                            activation="gelu", batch_first=True)
                                for _ in range(2)],
                              TorchParts.mean_tokens(tnn), tnn.Linear(256, 10))


class DenseNet(Workload):
    def fastmod_model(self, nn):
        return nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), nn.DenseBlock(24, 12, 4),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(72, 10))

    def torch_model(self, tnn):
        return tnn.Sequential(tnn.Conv2d(3, 24, 3, padding=1), TorchParts.dense_block(tnn, 24, 12, 4),
                              tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(72, 10))


def _transformer_gemms(b, t, d, h, ff):
    dh = d // h
    per_layer = [(b * t, 3 * d, d, 1),          # in_proj
                 (t, t, dh, b * h),             # Q K^T per (batch, head)
                 (t, dh, t, b * h),             # A V
                 (b * t, d, d, 1),              # out_proj
                 (b * t, ff, d, 1),             # linear1
                 (b * t, d, ff, 1)]             # linear2
    return per_layer * 2 + [(b, 10, d, 1)]


WORKLOADS = OrderedDict((w.name, w) for w in [
    MLP("mlp_b128", (128, 784), "Linear 784-512-512-10, ReLU", _mlp_gemms(128),
        numpy_model="mlp", gemm_bound=True),
    MLP("mlp_b1_infer", (1, 784), "same MLP, batch 1, inference only", _mlp_gemms(1),
        modes=("infer",), numpy_model="mlp"),
    ResNetS("resnet_s_b128", (128, 256), "8 x ResidualBlock(256), Linear 256-10",
            # the first block's mm2 on its own: it is the one GEMM whose dx a train step skips
            [(128, 256, 256, 1), (128, 256, 256, 15), (128, 10, 256, 1)], numpy_model="resnet_s",
            gemm_bound=True),
    CNN("cnn_b32", (32, 3, 32, 32), "Conv2d 3-32-64-64 (s1,s2,s2), ReLU, Linear 4096-10",
        [_conv_gemm(32, 3, 32, 9, 1024), _conv_gemm(32, 32, 64, 9, 256),
         _conv_gemm(32, 64, 64, 9, 64), (32, 10, 4096, 1)], numpy_model="cnn"),
    Conv1D("conv1d_b64", (64, 32, 256), "Conv1d 32-64-64 k5, ReLU, Linear 16384-10",
           [_conv_gemm(64, 32, 64, 5, 256), _conv_gemm(64, 64, 64, 5, 256), (64, 10, 16384, 1)],
           numpy_model="conv1d"),
    BNResNet("bnresnet_b32", (32, 3, 16, 16), "Conv2d 3-64, 2 x BNResBlock(64), pool, Linear",
             [_conv_gemm(32, 3, 64, 9, 256), (32 * 256, 64, 576, 4), (32, 10, 64, 1)]),
    GroupNormCNN("groupnorm_cnn_b32", (32, 3, 16, 16), "Conv2d 3-64-64 + GroupNorm(8), pool, Linear",
                 [_conv_gemm(32, 3, 64, 9, 256), _conv_gemm(32, 64, 64, 9, 256), (32, 10, 64, 1)]),
    Transformer("transformer_b16", (16, 64, 256), "2 x TransformerEncoderLayer(256, 8, 1024, gelu)",
                _transformer_gemms(16, 64, 256, 8, 1024)),
    DenseNet("densenet_b16", (16, 3, 32, 32), "Conv2d 3-24, DenseBlock(24, 12, 4), pool, Linear",
             [_conv_gemm(16, 3, 24, 9, 1024)]
             + [_conv_gemm(16, 24 + 12 * i, 12, 9, 1024) for i in range(4)] + [(16, 10, 72, 1)]),
])

FOUNDATION = ("mlp_b128", "mlp_b1_infer", "resnet_s_b128")


# ---------------------------------------------------------------- pieces torch.nn lacks
class TorchParts:
    """torch.nn versions of fastmod's composite blocks, with fastmod's child names (so a
    state_dict moves between them)."""

    @staticmethod
    def residual_block(tnn, dim):
        class ResidualBlock(tnn.Module):
            def __init__(self):
                super().__init__()
                self.mm1, self.mm2 = tnn.Linear(dim, dim), tnn.Linear(dim, dim)

            def forward(self, z):
                return z + self.mm1(self.mm2(z).relu()).relu()
        return ResidualBlock()

    @staticmethod
    def bn_res_block(tnn, c):
        class BNResBlock(tnn.Module):
            def __init__(self):
                super().__init__()
                self.conv1, self.bn1 = tnn.Conv2d(c, c, 3, padding=1), tnn.BatchNorm2d(c)
                self.conv2, self.bn2 = tnn.Conv2d(c, c, 3, padding=1), tnn.BatchNorm2d(c)

            def forward(self, x):
                return self.bn2(self.conv2(self.bn1(self.conv1(x).relu())).relu()) + x
        return BNResBlock()

    @staticmethod
    def dense_block(tnn, cin, growth, n_layers):
        import torch

        class DenseBlock(tnn.Module):
            def __init__(self):
                super().__init__()
                self.layers = tnn.ModuleList([tnn.Conv2d(cin + i * growth, growth, 3, padding=1)
                                              for i in range(n_layers)])

            def forward(self, x):
                feats = x
                for conv in self.layers:
                    feats = torch.cat([feats, conv(feats).relu()], dim=1)
                return feats
        return DenseBlock()

    @staticmethod
    def mean_tokens(tnn):
        class MeanTokens(tnn.Module):
            def forward(self, x):
                return x.mean(dim=1)
        return MeanTokens()


def _fastmod_mean_tokens(nn):
    """(N, T, D) -> (N, D): the mean over tokens (fastmod has no module for it; bench-local)."""
    class MeanTokens(nn.Module):
        def forward(self, x):
            self._save(x.shape)
            return x.mean(axis=1)

        def backward(self, dy, need_input_grad=True):
            (shape,) = self._saved()
            return np.ascontiguousarray(np.broadcast_to((dy / shape[1])[:, None, :], shape))
    return MeanTokens()


# ---------------------------------------------------------------- data
def make_data(wl, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(wl.shape, dtype=np.float32)
    y = rng.integers(0, CLASSES, wl.shape[0]).astype(np.int64)
    return x, y


# ---------------------------------------------------------------- runners
class FastmodRunner:
    name = "fastmod"

    def __init__(self, wl, mode, seed=0):
        fastmod = import_fastmod()
        try:
            model = wl.fastmod_model(fastmod.nn)
        except (ImportError, AttributeError) as e:
            raise Unavailable(f"not yet available ({e})") from None
        self.fastmod, self.model, self.mode = fastmod, model, mode
        self.x, self.y = make_data(wl, seed)
        if mode == "train":
            model.train()
            from fastmod.losses import CrossEntropyLoss
            self.crit = CrossEntropyLoss()
            self.opt, self.opt_kind = make_fastmod_sgd(model)
        else:
            model.eval()

    def train(self):
        m = self.model
        self.opt.zero_grad()
        loss = self.crit(m(self.x), self.y)
        m.backward(self.crit.backward(), need_input_grad=False)   # as torch and NumPy: the
        # input needs no gradient, so the first layer's dx is not computed
        self.opt.step()
        return loss

    def infer(self):
        with self.fastmod.no_grad():
            return self.model(self.x)

    def load_torch_weights(self, tmodel):
        self.model.load_state_dict({k: v.detach().numpy() for k, v in tmodel.state_dict().items()})


class PlannedRunner(FastmodRunner):
    """fastmod.inference(model): the planned model (inference only)."""
    name = "planned"

    def __init__(self, wl, mode, seed=0):
        if mode != "infer":
            raise Unavailable("no train step (inference only)")
        super().__init__(wl, mode, seed)
        if not hasattr(self.fastmod, "inference"):
            raise Unavailable("not yet available (fastmod.inference)")
        self.planned = self.fastmod.inference(self.model)

    def infer(self):
        return self.planned(self.x)

    def load_torch_weights(self, tmodel):
        super().load_torch_weights(tmodel)
        self.planned.refreeze()


class _FusedSGD:
    """SGD with momentum (torch's formula: buf = m*buf + g; p -= lr*buf) on fastmod Parameters,
    used while fastmod.optim is not importable."""

    def __init__(self, params, lr=LR, momentum=MOMENTUM):
        self.params, self.lr, self.momentum = list(params), lr, momentum
        self.bufs = [None] * len(self.params)

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def step(self):
        for i, p in enumerate(self.params):
            if not p.has_grad():
                continue
            g, buf = p.grad, self.bufs[i]
            if buf is None:
                buf = self.bufs[i] = g.copy()
            else:
                buf *= self.momentum
                buf += g
            p.data -= self.lr * buf


def make_fastmod_sgd(model):
    try:
        from fastmod.optim import SGD
        opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        return opt, "fastmod.optim.SGD"
    except (ImportError, AttributeError):
        return _FusedSGD(model.parameters()), "bench fused SGD"


class TorchRunner:
    name = "torch"

    def __init__(self, wl, mode, seed=0):
        import torch
        torch.manual_seed(seed)
        self.torch, self.mode = torch, mode
        self.model = wl.torch_model(torch.nn)
        x, y = make_data(wl, seed)
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        if mode == "train":
            self.model.train()
            self.opt = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        else:
            self.model.eval()
        self.cross_entropy = torch.nn.functional.cross_entropy

    def train(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        return loss

    def infer(self):
        with self.torch.no_grad():
            return self.model(self.x)


class TorchCompileRunner(TorchRunner):
    """torch.compile'd model (inductor, default mode), torch's eager optimizer -- what a torch
    user picks for speed in training. Compiled on the first call (not timed: the caller warms
    every runner up before timing)."""
    name = "compile"

    def __init__(self, wl, mode, seed=0):
        super().__init__(wl, mode, seed)
        try:
            self.model = self.torch.compile(self.model)
        except Exception as e:                        # no compiler / unsupported platform
            raise Unavailable(f"torch.compile unavailable ({e})") from None


class OrtRunner:
    """ONNX Runtime inference (all graph optimizations, `threads` intra-op threads, sequential
    execution) of the torch model exported by torch.onnx.export -- what people pick for
    serving. Inference only; the weights are the torch runner's (same seed)."""
    name = "ort"

    def __init__(self, wl, mode, seed=0):
        if mode != "infer":
            raise Unavailable("no train step (inference only)")
        try:
            import onnxruntime as ort
            import torch
        except ImportError as e:
            raise Unavailable(f"not installed ({e})") from None
        import io
        tr = TorchRunner(wl, "infer", seed)
        buf = io.BytesIO()
        kw = {"dynamo": False} if "dynamo" in torch.onnx.export.__code__.co_varnames else {}
        torch.onnx.export(tr.model, (tr.x,), buf, input_names=["x"], output_names=["y"],
                          opset_version=17, **kw)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = torch.get_num_threads()
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # ORT's default: idle intra-op threads spin-wait (faster for ORT: cnn_b32 inference
        # 1.48 ms vs 1.65 without; batch 1 several times faster) -- and they slow whatever runs
        # next in the process (fastmod's cnn_b32 inference 1.8 ms alone, 2-5 ms after ORT,
        # even 0.6 s later): compare.py times ORT alone, after the others, then closes it
        self.sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])
        self.feed = {"x": tr.x.numpy()}

    def infer(self):
        return self.sess.run(None, self.feed)[0]

    def close(self):
        """End the session and its thread pool (its threads stop spinning)."""
        self.sess = None
        import gc
        gc.collect()


class NumpyRunner:
    name = "numpy"

    def __init__(self, wl, mode, seed=0):
        if wl.numpy_model is None:
            raise Unavailable("no NumPy reference for this workload")
        self.model = numpy_ref.build(wl.numpy_model, np.random.default_rng(seed))
        self.x, self.y = make_data(wl, seed)
        self.opt = numpy_ref.SGD(self.model.params(), LR, MOMENTUM)

    def train(self):
        logits = self.model.forward(self.x, keep=True)
        loss, dlogits = numpy_ref.cross_entropy(logits, self.y)
        self.model.backward(dlogits, need_dx=False)
        self.opt.step()
        return loss

    def infer(self):
        return self.model.forward(self.x, keep=False)

    def load_torch_weights(self, tmodel):
        self.model.load({k: v.detach().numpy() for k, v in tmodel.state_dict().items()})


RUNNERS = OrderedDict([("fastmod", FastmodRunner), ("torch", TorchRunner), ("numpy", NumpyRunner),
                       ("compile", TorchCompileRunner), ("ort", OrtRunner),
                       ("planned", PlannedRunner)])
PEERS = ("torch", "compile", "ort")      # what a user could pick instead of fastmod


def geomean(values):
    values = [v for v in values if v and v > 0 and math.isfinite(v)]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")
