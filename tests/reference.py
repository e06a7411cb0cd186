"""Independent pure-NumPy references for the foundation's kernels (float64 math).

Written from the definitions (torch's documentation and the seed), not from fastmod's code:
every fastmod module's forward is compared with these in float32 and float64, with the
tolerance of `tol(dtype)`. Nothing here imports fastmod.
"""
import math

import numpy as np

# fastmod vs these references (computed in float64, then compared at the module's dtype)
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
ATOL = {np.float32: 1e-6, np.float64: 1e-12}
# fastmod vs torch, or results that went through a GEMM (another summation order)
PARITY_RTOL = {np.float32: 1e-4, np.float64: 1e-10}
PARITY_ATOL = {np.float32: 1e-5, np.float64: 1e-10}


def tol(dtype, parity=False, like=None):
    """{'rtol': ..., 'atol': ...} for np.testing.assert_allclose at `dtype`.

    like: the expected array; the atol then grows to rtol * max |like| (see assert_close).
    """
    dt = np.dtype(dtype).type
    kw = {"rtol": PARITY_RTOL[dt], "atol": PARITY_ATOL[dt]} if parity else \
        {"rtol": RTOL[dt], "atol": ATOL[dt]}
    return kw if like is None else scaled(kw, like)


def scaled(kw, like):
    """kw with its atol raised to rtol * max |like| (the result's scale)."""
    a = np.abs(np.asarray(like, dtype=np.float64))
    a = a[np.isfinite(a)]
    scale = float(a.max()) if a.size else 0.0
    return {"rtol": kw["rtol"], "atol": max(kw["atol"], kw["rtol"] * scale)}


def assert_close(actual, desired, dtype, parity=True, err_msg="", **kw):
    """assert_allclose for results of sums (GEMMs, convolutions, reductions): rtol per dtype and
    an atol relative to the result's scale, max(atol, rtol * max |desired|).

    A float32 sum of K terms is off by up to ~K * eps times the size of its terms, whatever its
    own size: an element that cancels to near zero carries the rounding error of the large
    ones, so a tolerance relative to each element fails wherever the summation order differs.
    It does differ per CPU: torch's kernels (AVX2 / AVX-512 / default builds, MKL, oneDNN or
    OpenBLAS) and the BLAS under fastmod (OpenBLAS picks its kernel per CPU) each add in their
    own order. Compare against torch only at parity=True (float32: 1e-4 of the result's
    scale, above any of those paths' error); the tight checks are against float64 references.
    kw: rtol / atol overriding the dtype's (the atol is still raised to the scale).
    """
    base = tol(dtype, parity)
    base.update(kw)
    desired = np.asarray(desired)
    np.testing.assert_allclose(actual, desired, err_msg=err_msg, **scaled(base, desired))


def f64(a):
    return np.asarray(a, dtype=np.float64)


# ------------------------------------------------------------------ linear
def linear(x, w, b=None):
    """y[..., o] = sum_i x[..., i] w[o, i] + b[o], in float64 (einsum)."""
    y = np.einsum("...i,oi->...o", f64(x), f64(w))
    return y if b is None else y + f64(b)


def linear_backward(dy, x, w):
    """(dx, dw, db) of y = x w^T + b for output gradient dy; x (..., in), dy (..., out)."""
    dy2 = f64(dy).reshape(-1, np.shape(w)[0])
    x2 = f64(x).reshape(-1, np.shape(w)[1])
    dx = (dy2 @ f64(w)).reshape(np.shape(x))
    return dx, dy2.T @ x2, dy2.sum(axis=0)


# ------------------------------------------------------------------ activations
_erf = np.vectorize(math.erf, otypes=[np.float64])


def relu(x):
    x = f64(x)
    return np.where(x > 0, x, 0.0)


def sigmoid(x):
    x = f64(x)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def tanh(x):
    return np.tanh(f64(x))


def gelu(x):
    """x * Phi(x) with Phi the standard normal CDF (erf form)."""
    x = f64(x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
    x = f64(x)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def relu_grad(x):
    return (f64(x) > 0).astype(np.float64)


def sigmoid_grad(x):
    s = sigmoid(x)
    return s * (1 - s)


def tanh_grad(x):
    return 1 - np.tanh(f64(x)) ** 2


def gelu_grad(x):
    x = f64(x)
    return 0.5 * (1.0 + _erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def gelu_tanh_grad(x):
    x = f64(x)
    k = math.sqrt(2.0 / math.pi)
    t = np.tanh(k * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)


ACTIVATIONS = {"relu": (relu, relu_grad), "sigmoid": (sigmoid, sigmoid_grad),
               "tanh": (tanh, tanh_grad), "gelu": (gelu, gelu_grad),
               "gelu_tanh": (gelu_tanh, gelu_tanh_grad)}


# ------------------------------------------------------------------ softmax
def log_softmax(x, axis=-1):
    x = f64(x)
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


def softmax(x, axis=-1):
    return np.exp(log_softmax(x, axis))


def softmax_backward(dy, y, axis=-1):
    dy, y = f64(dy), f64(y)
    return y * (dy - (dy * y).sum(axis=axis, keepdims=True))


def log_softmax_backward(dy, logy, axis=-1):
    dy = f64(dy)
    return dy - np.exp(f64(logy)) * dy.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------ losses
def cross_entropy(logits, target, label_smoothing=0.0, ignore_index=-100, reduction="mean"):
    """(loss, d loss / d logits) for logits (N, C) and int targets (N,), torch's definition:
    per row -sum_c q_c log softmax(x)_c with q = (1 - eps) onehot(t) + eps / C; ignored rows
    are dropped and 'mean' divides by the number of kept rows."""
    x = f64(logits)
    n, c = x.shape
    t = np.asarray(target)
    keep = t != ignore_index
    logp = log_softmax(x, axis=1)
    q = np.full((n, c), label_smoothing / c)
    rows = np.nonzero(keep)[0]
    q[rows, t[rows]] += 1.0 - label_smoothing
    q[~keep] = 0.0
    per_row = -(q * logp).sum(axis=1)
    grad = np.exp(logp) * keep[:, None] - q
    if reduction == "mean":
        k = keep.sum()
        return per_row.sum() / k, grad / k
    return per_row.sum(), grad


def mse(out, target, reduction="mean"):
    d = f64(out) - f64(target)
    if reduction == "mean":
        return (d ** 2).mean(), 2 * d / d.size
    return (d ** 2).sum(), 2 * d


# ------------------------------------------------------------------ numerical derivatives
def numeric_jacobian(fn, x, eps=1e-6):
    """J[i, j] = d fn(x).flat[i] / d x.flat[j] by central differences (x float64)."""
    x = np.array(x, dtype=np.float64, order="C", copy=True)
    flat = x.reshape(-1)
    y0 = np.asarray(fn(x)).reshape(-1)
    jac = np.empty((y0.size, flat.size))
    for j in range(flat.size):
        orig = flat[j]
        flat[j] = orig + eps
        yp = np.array(fn(x), dtype=np.float64).reshape(-1)
        flat[j] = orig - eps
        ym = np.array(fn(x), dtype=np.float64).reshape(-1)
        flat[j] = orig
        jac[:, j] = (yp - ym) / (2 * eps)
    return jac


def numeric_grad(fn, x, eps=1e-6):
    """d fn(x) / d x for a scalar-valued fn, by central differences."""
    return numeric_jacobian(lambda z: np.array([fn(z)]), x, eps).reshape(np.shape(x))
