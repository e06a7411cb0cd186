"""Pure-NumPy forward + backward for the benchmark workloads (independent of fastmod).

The baseline a careful NumPy user would write: BLAS matmuls (NumPy's own BLAS), im2col
convolutions through sliding_window_view, col2im by adding one kernel offset at a time,
softmax cross-entropy, and SGD with momentum, all in float32. Names and layouts follow torch
(weight (out, in) / (out, in, kh, kw)) so that a torch state_dict loads with `load`.

    model = build("mlp", rng); logits = model.forward(x, keep=True)
    loss, dlogits = cross_entropy(logits, y); model.backward(dlogits, need_dx=False)
"""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

F32 = np.float32


class Layer:
    params = ()                         # names of the arrays in self.p (torch names)

    def __init__(self):
        self.p, self.g, self.saved = {}, {}, None

    def named(self, prefix):
        for name in self.params:
            yield prefix + name, self.p, self.g, name

    def forward(self, x, keep):
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        raise NotImplementedError


def _uniform(rng, bound, shape):
    return rng.uniform(-bound, bound, shape).astype(F32)


class Linear(Layer):
    params = ("weight", "bias")

    def __init__(self, n_in, n_out, rng):
        super().__init__()
        bound = 1 / np.sqrt(n_in)
        self.p = {"weight": _uniform(rng, bound, (n_out, n_in)), "bias": _uniform(rng, bound, n_out)}
        self.g = {k: np.zeros_like(v) for k, v in self.p.items()}

    def forward(self, x, keep):
        y = x @ self.p["weight"].T
        y += self.p["bias"]
        if keep:
            self.saved = x
        return y

    def backward(self, dy, need_dx=True):
        x = self.saved
        np.matmul(dy.T, x, out=self.g["weight"])
        np.sum(dy, axis=0, out=self.g["bias"])
        return dy @ self.p["weight"] if need_dx else None


class ReLU(Layer):
    def forward(self, x, keep):
        y = np.maximum(x, 0)
        if keep:
            self.saved = y
        return y

    def backward(self, dy, need_dx=True):
        return dy * (self.saved > 0)


class Flatten(Layer):
    def forward(self, x, keep):
        self.saved = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self.saved)


class ResidualBlock(Layer):
    """z + relu(mm1(relu(mm2(z))))"""

    def __init__(self, dim, rng):
        super().__init__()
        self.mm2, self.act2 = Linear(dim, dim, rng), ReLU()
        self.mm1, self.act1 = Linear(dim, dim, rng), ReLU()

    def named(self, prefix):
        yield from self.mm1.named(prefix + "mm1.")
        yield from self.mm2.named(prefix + "mm2.")

    def forward(self, z, keep):
        h = self.act1.forward(self.mm1.forward(self.act2.forward(self.mm2.forward(z, keep), keep),
                                               keep), keep)
        return h + z                    # not +=: h is what act1 saved

    def backward(self, dy, need_dx=True):
        g = self.mm1.backward(self.act1.backward(dy))
        g = self.mm2.backward(self.act2.backward(g), need_dx)
        if need_dx:
            g += dy
        return g


class ConvNd(Layer):
    """Convolution (cross-correlation) on (N, C, *spatial) by im2col; 1 or 2 spatial dims."""
    params = ("weight", "bias")

    def __init__(self, cin, cout, k, stride, pad, nd, rng):
        super().__init__()
        self.k, self.stride, self.pad, self.nd = k, stride, pad, nd
        bound = 1 / np.sqrt(cin * k ** nd)
        self.p = {"weight": _uniform(rng, bound, (cout, cin) + (k,) * nd),
                  "bias": _uniform(rng, bound, cout)}
        self.g = {key: np.zeros_like(v) for key, v in self.p.items()}

    def _cols(self, x):
        nd, k, s, p = self.nd, self.k, self.stride, self.pad
        xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p)] * nd)
        win = sliding_window_view(xp, (k,) * nd, axis=tuple(range(2, 2 + nd)))
        win = win[(slice(None), slice(None)) + (slice(None, None, s),) * nd]
        # win (N, C, *out, *k) -> cols (N, *out, C, *k)
        order = (0,) + tuple(range(2, 2 + nd)) + (1,) + tuple(range(2 + nd, 2 + 2 * nd))
        win = win.transpose(order)
        out = win.shape[1:1 + nd]
        return np.ascontiguousarray(win).reshape(-1, x.shape[1] * k ** nd), out, xp.shape

    def forward(self, x, keep):
        cols, out, xp_shape = self._cols(x)
        w = self.p["weight"].reshape(self.p["weight"].shape[0], -1)
        y = cols @ w.T
        y += self.p["bias"]
        n, cout = x.shape[0], w.shape[0]
        y = y.reshape((n,) + out + (cout,))
        if keep:
            self.saved = (cols, out, xp_shape, x.shape)
        return np.ascontiguousarray(np.moveaxis(y, -1, 1))

    def backward(self, dy, need_dx=True):
        cols, out, xp_shape, x_shape = self.saved
        nd, k, s, p = self.nd, self.k, self.stride, self.pad
        cout = dy.shape[1]
        dy2 = np.ascontiguousarray(np.moveaxis(dy, 1, -1)).reshape(-1, cout)
        w = self.p["weight"].reshape(cout, -1)
        np.matmul(dy2.T, cols, out=self.g["weight"].reshape(cout, -1))
        np.sum(dy2, axis=0, out=self.g["bias"])
        if not need_dx:
            return None
        n, cin = x_shape[0], x_shape[1]
        dcols = (dy2 @ w).reshape((n,) + out + (cin,) + (k,) * nd)
        dxp = np.zeros(xp_shape, F32)
        for off in np.ndindex(*(k,) * nd):
            src = dcols[(slice(None),) * (2 + nd) + off]              # (N, *out, C)
            dst = (slice(None), slice(None)) + tuple(slice(o, o + s * m, s) for o, m in zip(off, out))
            dxp[dst] += np.moveaxis(src, -1, 1)
        inner = (slice(None), slice(None)) + tuple(slice(p, d - p) for d in xp_shape[2:])
        return np.ascontiguousarray(dxp[inner])


class Sequential(Layer):
    def __init__(self, *layers):
        super().__init__()
        self.layers = list(layers)

    def named(self, prefix=""):
        for i, layer in enumerate(self.layers):
            yield from layer.named(f"{prefix}{i}.")

    def forward(self, x, keep):
        for layer in self.layers:
            x = layer.forward(x, keep)
        return x

    def backward(self, dy, need_dx=True):
        for layer in reversed(self.layers[1:]):
            dy = layer.backward(dy)
        return self.layers[0].backward(dy, need_dx)

    def params(self):
        """[(parameter array, gradient array)] in a fixed order."""
        return [(p[name], g[name]) for _, p, g, name in self.named()]

    def load(self, state):
        for key, p, _, name in self.named():
            np.copyto(p[name], state[key])


def build(kind, rng):
    if kind == "mlp":
        return Sequential(Linear(784, 512, rng), ReLU(), Linear(512, 512, rng), ReLU(),
                          Linear(512, 10, rng))
    if kind == "resnet_s":
        return Sequential(*[ResidualBlock(256, rng) for _ in range(8)], Linear(256, 10, rng))
    if kind == "cnn":
        return Sequential(ConvNd(3, 32, 3, 1, 1, 2, rng), ReLU(), ConvNd(32, 64, 3, 2, 1, 2, rng),
                          ReLU(), ConvNd(64, 64, 3, 2, 1, 2, rng), ReLU(), Flatten(),
                          Linear(4096, 10, rng))
    if kind == "conv1d":
        return Sequential(ConvNd(32, 64, 5, 1, 2, 1, rng), ReLU(), ConvNd(64, 64, 5, 1, 2, 1, rng),
                          ReLU(), Flatten(), Linear(16384, 10, rng))
    raise ValueError(f"no NumPy reference for {kind!r}")


def cross_entropy(logits, target):
    """Mean softmax cross-entropy and its gradient w.r.t. the logits (stable: max-subtracted)."""
    n = logits.shape[0]
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(s[:, 0]) - z[np.arange(n), target]))
    d = e / s
    d[np.arange(n), target] -= 1
    d /= n
    return loss, d


class SGD:
    """buf = momentum * buf + g; p -= lr * buf (torch's SGD with momentum, no dampening)."""

    def __init__(self, pairs, lr, momentum):
        self.pairs, self.lr, self.momentum = pairs, lr, momentum
        self.bufs = [None] * len(pairs)

    def step(self):
        for i, (p, g) in enumerate(self.pairs):
            buf = self.bufs[i]
            if buf is None:
                buf = self.bufs[i] = g.copy()
            else:
                buf *= self.momentum
                buf += g
            p -= self.lr * buf
