"""Losses: `loss = crit(output, target)` returns a float; `crit.backward()` returns
d(loss)/d(output). Mean reduction by default, as torch."""
import numpy as np

from fastmod._kernels import losses as _k
from fastmod._validate import finite_float
from fastmod.nn.module import FLOAT_DTYPES, c_array


def _check_reduction(reduction, who):
    if reduction not in ("mean", "sum"):
        raise ValueError(f"{who}: reduction must be 'mean' or 'sum', got {reduction!r}")
    return reduction


def _check_float_array(x, who, name):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{who}: expected a numpy.ndarray {name}, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{who}: expected a float32 or float64 {name}, got {x.dtype}")
    if x.size == 0:
        raise ValueError(f"{who}: expected a non-empty {name}, got shape {x.shape}")
    return c_array(x)


class CrossEntropyLoss:
    """Softmax cross-entropy on logits, computed stably (log-sum-exp) in one fused kernel.

    loss = mean over rows of -sum_c q_c log softmax(x)_c, with q = (1 - eps) onehot(t) + eps / C
    (label_smoothing = eps, as torch). Rows whose target is ignore_index are left out.

    Shape: logits (N, C) float32/float64, target (N,) integer class indices in [0, C).

    Example:
        >>> import numpy as np, fastmod
        >>> crit = fastmod.losses.CrossEntropyLoss()
        >>> round(crit(np.zeros((2, 4), np.float32), np.array([0, 3])), 4)
        1.3863
    """

    def __init__(self, label_smoothing=0.0, reduction="mean", ignore_index=-100):
        self.label_smoothing = finite_float(label_smoothing, "CrossEntropyLoss: label_smoothing", 0.0, 1.0)
        self.reduction = _check_reduction(reduction, "CrossEntropyLoss")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise ValueError(f"CrossEntropyLoss: ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        self._saved = None

    def __repr__(self):
        return f"CrossEntropyLoss(label_smoothing={self.label_smoothing})"

    def __call__(self, logits, target):
        return self.forward(logits, target)

    def forward(self, logits, target):
        who = "CrossEntropyLoss"
        self._saved = None                  # a failed call must not leave an older batch behind
        logits = _check_float_array(logits, who, "logits")
        if logits.ndim != 2:
            raise ValueError(f"{who}: expected logits of shape (N, C), got {logits.shape}")
        n, c = logits.shape
        target = np.asarray(target)
        if target.dtype.kind not in "iu":
            raise TypeError(f"{who}: expected integer class indices as target, got {target.dtype}")
        if target.shape != (n,):
            raise ValueError(f"{who}: expected target of shape ({n},) for logits {logits.shape}, "
                             f"got {target.shape}")
        target = c_array(target, np.int64)
        count, bad = _k.check_targets(target, c, self.ignore_index)
        if bad is not None:
            raise ValueError(f"{who}: target {bad} is out of range for {c} classes")
        probs = np.empty_like(logits)
        rows = np.empty(n, np.float64)
        _k.softmax_xent_forward(probs, rows, logits, target, self.label_smoothing, self.ignore_index)
        total = float(rows.sum())
        if self.reduction == "mean":
            scale = 1.0 / count if count else 0.0
            loss = total * scale if count else float("nan")
        else:
            scale, loss = 1.0, total
        self._saved = (probs, target, scale)
        return loss

    def backward(self):
        if self._saved is None:
            raise RuntimeError("CrossEntropyLoss.backward: call the loss on a batch first")
        probs, target, scale = self._saved
        self._saved = None
        dx = np.empty_like(probs)
        _k.softmax_xent_backward(dx, probs, target, self.label_smoothing, scale, self.ignore_index)
        return dx


class MSELoss:
    """loss = mean((output - target) ** 2) (sum with reduction='sum').

    Shape: output and target of the same shape and dtype.
    """

    def __init__(self, reduction="mean"):
        self.reduction = _check_reduction(reduction, "MSELoss")
        self._saved = None

    def __repr__(self):
        return "MSELoss()"

    def __call__(self, output, target):
        return self.forward(output, target)

    def forward(self, output, target):
        self._saved = None                  # a failed call must not leave an older batch behind
        output = _check_float_array(output, "MSELoss", "output")
        target = _check_float_array(np.asarray(target), "MSELoss", "target")
        if target.shape != output.shape:
            raise ValueError(f"MSELoss: expected target of shape {output.shape}, got {target.shape}")
        if target.dtype != output.dtype:
            raise TypeError(f"MSELoss: expected {output.dtype} target like the output, got {target.dtype}")
        scale = 1.0 / output.size if self.reduction == "mean" else 1.0
        self._saved = (output, target, scale)
        return _k.squared_error_sum(output, target) * scale

    def backward(self):
        if self._saved is None:
            raise RuntimeError("MSELoss.backward: call the loss on a batch first")
        output, target, scale = self._saved
        self._saved = None
        dx = np.empty_like(output)
        _k.mse_backward(dx, output, target, scale)
        return dx
