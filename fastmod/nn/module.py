"""Module and Parameter: the API every fastmod layer shares (SPEC §2).

A Module computes `y = m(x)` (forward) and `dx = m.backward(dy)` (backward). Forward saves what
backward needs only while grad mode is on (not inside `fastmod.no_grad()`). Backward returns
the input gradient and *adds* parameter gradients into `p.grad`, as torch does.

Saved state is a stack per module: a module applied twice within one forward pass (one top-level
call) keeps both states and backward pops them in reverse order, which is the order a
container's backward visits them. A new top-level forward releases what earlier passes left
(so evaluating in training mode never leaks memory); a backward with nothing to pop raises.

The protocol a module (built-in or a user's) follows -- README "Writing your own module":
- `forward(*inputs)` computes and, through `self._save(...)`, keeps what backward needs.
- `backward(dy, need_input_grad=True)` pops it (`self._saved()`), adds parameter gradients into
  `p.grad` and returns the input gradient, or None when need_input_grad is False (the first
  layer of a model: nothing needs d(loss)/d(data)). A subclass may define `backward(self, dy)`
  alone: Module adapts it once, when the class is created, so every caller passes
  need_input_grad as a keyword and none inspects signatures.
- Fusion is offered, never assumed: a module may declare capabilities (`fused_activations`,
  `fused_input_activation_grads`, `elementwise_activation`, below) and containers fuse by
  capability. A subclass that overrides forward or backward loses the capabilities it does not
  restate, and a module with forward or full backward hooks is never fused.
- Hooks: `register_forward_pre_hook`, `register_forward_hook`, `register_full_backward_hook`
  (torch's signatures) and `register_post_backward_hook` (after each backward of the module,
  its parameters' gradients accumulated). A module without hooks runs no hook code at all.
"""
import functools
import inspect
from collections import OrderedDict, namedtuple

import numpy as np

from fastmod._runtime import STATE

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
F32, F64 = FLOAT_DTYPES

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


def _mismatch_error(got_shape, want_shape):
    """The exception class for an array that does not match the one expected (SPEC §4-5): a
    shape mismatch is a ValueError, a dtype mismatch (with the right shape) a TypeError; when
    both differ the shape is reported first (ValueError), the message naming both."""
    return ValueError if tuple(got_shape) != tuple(want_shape) else TypeError


def as_float_dtype(dtype, who="dtype"):
    """np.float32 / np.float64 (any spelling) -> np.dtype; anything else -> TypeError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{who}: expected float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{who}: expected float32 or float64, got {dt}")
    return dt


class Parameter:
    """A learnable array: `.data` (updated in place by optimizers) and `.grad` (same shape).

    Gradients are zeroed lazily: `zero_grad()` only marks the gradient as zero, and the next
    backward overwrites it instead of adding (BLAS beta = 0), so zeroing costs nothing and a
    parameter no backward reached is skipped by the optimizers, like torch's `grad=None`.
    """
    __slots__ = ("_data", "_grad", "_grad_zero", "_bound", "requires_grad", "__weakref__")

    def __init__(self, data, requires_grad=True):
        data = np.asarray(data)
        if data.dtype not in FLOAT_DTYPES:
            raise TypeError(f"Parameter: expected float32 or float64 data, got {data.dtype}")
        self._data = c_array(data)
        self._grad = None
        self._grad_zero = True
        self._bound = False
        self.requires_grad = bool(requires_grad)

    # -- data ------------------------------------------------------------------------------
    @property
    def data(self):
        """The values: a C-contiguous float32/float64 array whose shape and dtype never change
        behind the module's back (kernels trust them), except through Module.astype."""
        return self._data

    @data.setter
    def data(self, value):
        cur = self._data
        if value is cur:                    # `p.data -= lr * g` assigns the same array back
            return
        value = np.asarray(value)
        if value.shape != cur.shape or value.dtype != cur.dtype:
            raise _mismatch_error(value.shape, cur.shape)(f"Parameter.data: expected a {cur.dtype} array of shape {cur.shape} "
                      f"(the parameter's), got {value.dtype} {value.shape}; assign into "
                      "p.data[...] to change values, use Module.astype to change the dtype")
        self._data = c_array(value)

    def _set_data(self, value):
        """Replace data with an array of another dtype (Module.astype); the gradient is dropped."""
        self._data = c_array(value)
        self._grad = None
        self._grad_zero = True
        self._bound = False                 # a bound gradient view has the old dtype

    # -- gradient access -------------------------------------------------------------------
    @property
    def grad(self):
        """d(loss)/d(data), an array of data's shape and dtype (zeros before any backward)."""
        g = self._grad
        if g is None or g.shape != self.data.shape or g.dtype != self.data.dtype:
            g = self._grad = np.zeros_like(self.data)
        elif self._grad_zero:
            g.fill(0)
        self._grad_zero = False
        return g

    @grad.setter
    def grad(self, value):
        if value is None:
            self._grad_zero = True
            return
        value = np.asarray(value)
        if value.shape != self.data.shape or value.dtype != self.data.dtype:
            raise _mismatch_error(value.shape, self.data.shape)(
                f"Parameter.grad: expected {self.data.dtype} array of shape {self.data.shape}, "
                f"got {value.dtype} {value.shape}")
        if self._bound:
            np.copyto(self._grad, value)    # a bound gradient stays where bind_grad put it
        else:
            self._grad = np.ascontiguousarray(value).copy()
        self._grad_zero = False

    def bind_grad(self, view):
        """Keep this parameter's gradient in `view` from now on: an array of the parameter's shape
        and dtype, C-contiguous and writeable -- typically a slice of one flat buffer, so that a
        bucketed all-reduce (DistributedDataParallel) or a fused optimizer sees every gradient
        in one array. The current gradient, if any, is copied into it; backward then writes and
        accumulates there, `p.grad` returns it and assigning `p.grad` copies into it. The
        binding ends when the parameter's dtype changes (Module.astype).

        Example:
            >>> flat = np.zeros(sum(p.size for p in model.parameters()), np.float32)
            >>> offset = 0
            >>> for p in model.parameters():
            ...     p.bind_grad(flat[offset:offset + p.size].reshape(p.shape)); offset += p.size
        """
        if not isinstance(view, np.ndarray):
            raise TypeError(f"Parameter.bind_grad: expected a numpy.ndarray, got {type(view).__name__}")
        if view.shape != self.data.shape or view.dtype != self.data.dtype:
            raise _mismatch_error(view.shape, self.data.shape)(
                f"Parameter.bind_grad: expected a {self.data.dtype} array of shape "
                f"{self.data.shape}, got {view.dtype} {view.shape}")
        if not (view.flags.c_contiguous and view.flags.aligned and view.flags.writeable):
            raise ValueError("Parameter.bind_grad: the view must be C-contiguous, aligned and "
                             "writeable (the kernels write gradients through raw pointers)")
        had = self.has_grad()
        if had and self._grad is not view:
            view[...] = self._grad
        self._grad = view
        self._grad_zero = not had
        self._bound = True

    @property
    def bound_grad(self):
        """The array bind_grad bound this parameter's gradient to, or None when unbound."""
        return self._grad if self._bound else None

    def grad_buffer(self):
        """(grad array, accumulate) for kernels: write with beta = 0 when accumulate is False."""
        g = self._grad
        if g is None or g.shape != self.data.shape or g.dtype != self.data.dtype:
            g = self._grad = np.empty_like(self.data)
            self._grad_zero = True
        acc = not self._grad_zero
        self._grad_zero = False
        return g, acc

    def has_grad(self):
        """False until a backward (or an assignment) gives this parameter a gradient."""
        return not self._grad_zero

    def zero_grad(self):
        self._grad_zero = True

    # -- array-like conveniences -------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    @property
    def ndim(self):
        return self.data.ndim

    def numpy(self):
        return self.data

    def __array__(self, dtype=None, copy=None):
        return self.data if dtype is None else self.data.astype(dtype)

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


def aligned_empty(shape, dtype):
    """An uninitialised C-contiguous array starting at a 64-byte boundary (a cache line, and an
    AVX-512 vector): the parameters' home. NumPy's allocations are 16-byte aligned only, and the
    kernels' vector loads of a weight matrix off a cache line touch two lines each (measured:
    mlp_b1_infer's batch-1 GEMV 10-25% slower, the packed GEMM 8%)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    buf = np.empty(n * dtype.itemsize + 64, np.uint8)
    off = -buf.ctypes.data % 64
    return buf[off:off + n * dtype.itemsize].view(dtype).reshape(shape)


def c_array(a, dtype=None):
    """a as a C-contiguous, aligned ndarray, copied only when it is not one: the kernels read
    raw pointers, and a misaligned one (np.frombuffer at an odd offset, a packed record field)
    is undefined behaviour that vectorized loops may fault on."""
    a = np.ascontiguousarray(a, dtype=dtype)
    return a if a.flags.aligned else a.copy()


def grad_buffer_of(p):
    """(gradient array, accumulate) for a kernel to write p's gradient into (see
    Parameter.grad_buffer), or (None, False) when p is None or frozen (requires_grad False)."""
    if p is None or not p.requires_grad:
        return None, False
    return p.grad_buffer()


def unmark_grad_buffers(*pairs):
    """(p, accumulate) pairs from grad_buffer_of whose kernel raised before writing (out of
    memory): a gradient it was to overwrite (accumulate False) is still no gradient, not the
    uninitialized buffer."""
    for p, acc in pairs:
        if p is not None and p.requires_grad and not acc:
            p.zero_grad()


# ------------------------------------------------------------------------------ the protocol
def _adapt_backward(fn):
    """fn itself when it takes need_input_grad (or **kwargs); else backward(self, dy,
    need_input_grad=True) calling fn(self, dy) and dropping its result when no input gradient
    is wanted (the parameter gradients are still accumulated)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn
    if "need_input_grad" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                          for p in params.values()):
        return fn

    @functools.wraps(fn)
    def backward(self, dy, need_input_grad=True):
        dx = fn(self, dy)
        return dx if need_input_grad else None
    return backward


# Bumped whenever any module's children or hooks change: containers cache their fusion plans
# against it (a plan is rebuilt only after such a change, not at every call).
STRUCTURE_VERSION = [0]

_CAPABILITIES = (("fused_activations", frozenset()), ("fused_input_activation_grads", frozenset()),
                 ("elementwise_activation", None))


def fuses_output_activation(m, name):
    """Whether `m(x, activation=name)` returns name(m(x)) in one call (a container may then skip
    the activation module's forward; the activation's backward stays the container's job)."""
    return name in m.fused_activations and not m.__dict__.get("_observed")


def fuses_input_activation_grad(m, name):
    """Whether `m.backward(dy, need_input_grad, input_activation=name)` returns the gradient
    w.r.t. the input of an activation `name` that produced m's input (the activation's backward
    done inside m's: ReLU's mask is m's own saved input > 0)."""
    return name in m.fused_input_activation_grads and not m.__dict__.get("_observed")


def elementwise_activation(m):
    """The name of the element-wise activation m computes exactly ('relu'), None if m is not
    one or is observed by hooks. Such a module offers `activate(x)` (forward without saving
    state) and `grad_from_output(dy, y)` (backward from its output)."""
    return None if m.__dict__.get("_observed") else m.elementwise_activation


def activation_flag(name, module, arg="activation"):
    """A fused activation argument: None -> False, 'relu' -> True (the one activation fastmod's
    kernels fuse); anything else -> ValueError naming the module."""
    if name is None:
        return False
    if name == "relu":
        return True
    raise ValueError(f"{module._short_repr()}: {arg} must be None or 'relu', got {name!r}")


class RemovableHandle:
    """What register_*_hook returns: `handle.remove()` unregisters the hook."""

    def __init__(self, module, kind, key):
        self._module, self._kind, self._key = module, kind, key

    def remove(self):
        m = self._module
        hooks = m.__dict__.get("_hooks")
        if hooks is not None and hooks[self._kind].pop(self._key, None) is not None:
            m._install_hooks()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


class _HookedForward:
    """The instance-level forward of a module with forward hooks (the class's forward inside)."""
    __slots__ = ("module",)

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        m = self.module
        hooks = m.__dict__["_hooks"]
        for hook in list(hooks["forward_pre"].values()):
            r = hook(m, args)
            if r is not None:
                args = r if isinstance(r, tuple) else (r,)
        out = type(m).forward(m, *args, **kwargs)
        for hook in list(hooks["forward"].values()):
            r = hook(m, args, out)
            if r is not None:
                out = r
        return out


class _HookedBackward:
    """The instance-level backward of a module with backward hooks."""
    __slots__ = ("module",)

    def __init__(self, module):
        self.module = module

    def __call__(self, dy, need_input_grad=True, **kwargs):
        m = self.module
        hooks = m.__dict__["_hooks"]
        dx = type(m).backward(m, dy, need_input_grad=need_input_grad, **kwargs)
        full = hooks["backward"]
        if full:
            grad_out = dy if isinstance(dy, tuple) else (dy,)
            single = not isinstance(dx, tuple)
            grad_in = (dx,) if single else dx
            for hook in list(full.values()):
                r = hook(m, grad_in, grad_out)
                if r is not None:
                    grad_in = r if isinstance(r, tuple) else (r,)
            dx = grad_in[0] if single else grad_in
        for hook in list(hooks["post_backward"].values()):
            hook(m)
        return dx


class Module:
    """Base class of every layer and container (torch.nn.Module's API on NumPy arrays)."""

    training = True

    #: Fusion capabilities (README "Writing your own module"). Containers fuse by these, never by
    #: class: `fused_activations` -- names `forward(x, activation=name)` applies to its output
    #: in the same call; `fused_input_activation_grads` -- names
    #: `backward(dy, need_input_grad, input_activation=name)` can fold into its input gradient;
    #: `elementwise_activation` -- the activation this module computes exactly (see
    #: elementwise_activation()). A subclass overriding forward or backward starts with none.
    fused_activations = frozenset()
    fused_input_activation_grads = frozenset()
    elementwise_activation = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        d = cls.__dict__
        if callable(d.get("backward")):
            cls.backward = _adapt_backward(d["backward"])
        if "forward" in d or "backward" in d:
            for attr, none in _CAPABILITIES:
                if attr not in d:
                    setattr(cls, attr, none)

    def __init__(self):
        d = self.__dict__
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_non_persistent"] = set()
        d["_modules"] = OrderedDict()
        d["_stack"] = []
        d["training"] = True

    # -- registration -------------------------------------------------------------------------
    def __setattr__(self, name, value):
        d = self.__dict__
        params = d.get("_parameters")
        if params is None:
            raise AttributeError(f"{type(self).__name__}: call Module.__init__() before assigning "
                                 f"attribute {name!r}")
        if isinstance(value, Parameter):
            old = params.get(name)
            if old is not None and (old.shape != value.shape or old.dtype != value.dtype):
                # the module's kernels size their loops from its constructor arguments
                raise _mismatch_error(value.shape, old.shape)(f"{type(self).__name__}: cannot replace parameter {name!r} "
                          f"({old.dtype} {old.shape}) with a {value.dtype} {value.shape} one")
            d["_modules"].pop(name, None)
            d["_buffers"].pop(name, None)
            params[name] = value
        elif isinstance(value, Module):
            params.pop(name, None)
            d["_buffers"].pop(name, None)
            d["_modules"][name] = value
            STRUCTURE_VERSION[0] += 1
        elif name in params:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} to "
                                f"parameter {name!r} (use a Parameter or None)")
            params[name] = None
        elif name in d["_buffers"]:
            if value is not None and not isinstance(value, np.ndarray):
                raise TypeError(f"{type(self).__name__}: buffer {name!r} must be an ndarray")
            d["_buffers"][name] = value
        elif name in d["_modules"]:
            if value is not None:
                raise TypeError(f"{type(self).__name__}: cannot assign {type(value).__name__} to "
                                f"submodule {name!r} (use a Module or None)")
            d["_modules"][name] = None
            STRUCTURE_VERSION[0] += 1
        object.__setattr__(self, name, value)

    def __delattr__(self, name):
        for reg in ("_parameters", "_buffers", "_modules"):
            self.__dict__[reg].pop(name, None)
        STRUCTURE_VERSION[0] += 1
        object.__delattr__(self, name)

    def register_parameter(self, name, param):
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: expected a Parameter or None, got {type(param).__name__}")
        self.__dict__["_parameters"][name] = param
        object.__setattr__(self, name, param)

    def register_buffer(self, name, array, persistent=True):
        """A state array that is not learned (e.g. BatchNorm's running_mean), saved in state_dict
        unless persistent=False."""
        if array is not None and not isinstance(array, np.ndarray):
            raise TypeError(f"register_buffer: expected an ndarray or None, got {type(array).__name__}")
        self.__dict__["_buffers"][name] = array
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)
        object.__setattr__(self, name, array)

    def add_module(self, name, module):
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: expected a Module, got {type(module).__name__}")
        self.__dict__["_modules"][str(name)] = module
        STRUCTURE_VERSION[0] += 1
        object.__setattr__(self, str(name), module)

    # -- hooks ----------------------------------------------------------------------------------
    def _add_hook(self, kind, hook):
        if not callable(hook):
            raise TypeError(f"{type(self).__name__}: a hook must be callable, got {type(hook).__name__}")
        d = self.__dict__
        hooks = d.get("_hooks")
        if hooks is None:
            hooks = d["_hooks"] = {"forward_pre": {}, "forward": {}, "backward": {},
                                   "post_backward": {}, "next": 0}
        key = hooks["next"]
        hooks["next"] = key + 1
        hooks[kind][key] = hook
        self._install_hooks()
        return RemovableHandle(self, kind, key)

    def _install_hooks(self):
        """Instance-level forward / backward wrappers while hooks of their kind exist (a module
        without hooks calls its class's methods directly: no cost); `_observed` (forward or full
        backward hooks) keeps containers from fusing the module, so hooks see its own values."""
        d = self.__dict__
        hooks = d["_hooks"]
        fwd = bool(hooks["forward_pre"] or hooks["forward"])
        bwd = bool(hooks["backward"] or hooks["post_backward"])
        for name, on, wrapper in (("forward", fwd, _HookedForward), ("backward", bwd, _HookedBackward)):
            cur = d.get(name)
            if on and not isinstance(cur, wrapper):
                d[name] = wrapper(self)
            elif not on and isinstance(cur, wrapper):
                del d[name]
        d["_observed"] = fwd or bool(hooks["backward"])
        STRUCTURE_VERSION[0] += 1

    def register_forward_pre_hook(self, hook):
        """hook(module, args) before each forward; may return new args (a tuple or one value)."""
        return self._add_hook("forward_pre", hook)

    def register_forward_hook(self, hook):
        """hook(module, args, output) after each forward; may return a new output."""
        return self._add_hook("forward", hook)

    def register_full_backward_hook(self, hook):
        """hook(module, grad_input, grad_output) after each backward, as torch's: tuples of the
        input gradients (None where not computed) and of the output gradients; may return new
        grad_input. The module is not fused with its neighbours while the hook is registered."""
        return self._add_hook("backward", hook)

    def register_post_backward_hook(self, hook):
        """hook(module) after each backward of this module, once the gradients of every parameter
        in it (its submodules' included) have been accumulated for that call -- what
        torch's register_post_accumulate_grad_hook gives per parameter (DistributedDataParallel's
        overlap starts its all-reduces from it). Does not prevent fusion."""
        return self._add_hook("post_backward", hook)

    # -- forward / backward -----------------------------------------------------------------
    def __call__(self, *args, **kwargs):
        st = STATE
        stack = self._stack
        if st.depth:
            # what an earlier pass left is released *before* this call allocates its outputs:
            # the freed blocks are reused at once (same sizes), so the heap does not grow by a
            # pass of activations and give pages back to the kernel at every step (measured:
            # ~640 page faults per ResNet-S train step otherwise). Not under no_grad: a
            # no_grad forward between a forward and its backward keeps the state, as _save.
            if stack and st.grad_enabled and stack[-1][0] != st.pass_id:
                stack.clear()
            return self.forward(*args, **kwargs)
        st.pass_id += 1                     # a top-level call starts a new forward pass
        if stack and st.grad_enabled:
            stack.clear()
        st.depth = 1
        try:
            return self.forward(*args, **kwargs)
        finally:
            st.depth = 0

    def forward(self, *args, **kwargs):
        raise TypeError(f"{type(self).__name__} does not define forward()")

    def backward(self, dy):
        raise TypeError(f"{type(self).__name__} does not define backward()")

    def _save(self, *state):
        """Keep `state` for backward (nothing is kept under no_grad())."""
        if not STATE.grad_enabled:
            return
        stack = self._stack
        pid = STATE.pass_id
        if stack and stack[-1][0] != pid:
            stack.clear()                   # left over from an earlier pass: release it
        stack.append((pid, state))

    def save_for_backward(self, *state):
        """Keep `state` (any objects: arrays, shapes, flags) for this call's backward -- nothing
        is kept under no_grad(). The public name of _save, for modules written by users."""
        self._save(*state)

    def saved_for_backward(self):
        """The tuple the matching forward passed to save_for_backward (popped: each forward
        allows one backward); a RuntimeError naming the module when there is none."""
        return self._saved()

    def _saved(self):
        """Pop the state the matching forward saved; a clear error when there is none."""
        try:
            return self._stack.pop()[1]
        except IndexError:
            raise RuntimeError(
                f"{self._short_repr()}.backward: no saved forward state. Call the module with "
                "grad enabled (not under fastmod.no_grad()) before backward; each forward "
                "allows one backward, and a new top-level forward releases the state of "
                "earlier ones.") from None

    def _release_saved(self):
        self._stack.clear()

    def saved_states(self):
        """How many forward calls' states this module keeps for backward: the backward calls
        still to come in this pass (0 after the last one)."""
        return len(self._stack)

    # -- input checks shared by the layers ------------------------------------------------------
    def _short_repr(self):
        extra = self.extra_repr()
        return f"{type(self).__name__}({extra})"

    def _check_array(self, x, name="input"):
        """x must be a non-empty float32/float64 ndarray; returns it C-contiguous."""
        if type(x) is np.ndarray:               # hot path: one test for the usual input
            dt = x.dtype
            if (dt is F32 or dt is F64) and x.flags.carray and x.size:
                return x
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self._short_repr()}: expected a numpy.ndarray {name}, "
                            f"got {type(x).__name__}")
        dt = x.dtype
        if dt is not F32 and dt is not F64 and dt not in FLOAT_DTYPES:
            raise TypeError(f"{self._short_repr()}: expected a float32 or float64 {name}, got {dt}")
        if x.size == 0:
            raise ValueError(f"{self._short_repr()}: expected a non-empty {name}, got shape {x.shape}")
        return c_array(x)

    def _check_dtype(self, x, dtype, name="input"):
        """x must be an ndarray of exactly `dtype` (the module's parameters' dtype)."""
        if type(x) is np.ndarray and x.dtype is dtype and x.flags.carray and x.size:
            return x                            # hot path: every layer's forward (carray: C-contiguous, aligned, writeable)
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{self._short_repr()}: expected a numpy.ndarray {name}, "
                            f"got {type(x).__name__}")
        if x.dtype is not dtype and x.dtype != dtype:
            hint = f"use .astype(np.{dtype}) on the {name}"
            if x.dtype in FLOAT_DTYPES:
                hint += f", or .astype(np.{x.dtype}) on the module"
            raise TypeError(f"{self._short_repr()}: expected {dtype} {name} like its weights, got "
                            f"{x.dtype} ({hint})")
        if x.size == 0:
            raise ValueError(f"{self._short_repr()}: expected a non-empty {name}, got shape {x.shape}")
        return c_array(x)

    def _first_output_grad(self, dys, outputs, why):
        """dy from backward's (dy, None), for a module with two outputs whose second takes no
        gradient (`outputs` names both, `why` says why the second takes none)."""
        if len(dys) != 2:
            raise ValueError(f"{self._short_repr()}.backward: expected (dy, None) for the two "
                             f"outputs ({outputs[0]}, {outputs[1]}), got a tuple of {len(dys)}")
        if dys[1] is not None:
            raise TypeError(f"{self._short_repr()}.backward: expected None as the {outputs[1]}' "
                            f"gradient ({why}), got {type(dys[1]).__name__}")
        return dys[0]

    def _check_grad(self, dy, shape, dtype):
        """The output gradient must match the forward output's shape and dtype."""
        if type(dy) is np.ndarray and dy.dtype is dtype and dy.shape == shape and dy.flags.carray:
            return dy                           # hot path: every layer's backward
        if not isinstance(dy, np.ndarray):
            raise TypeError(f"{self._short_repr()}.backward: expected a numpy.ndarray gradient, "
                            f"got {type(dy).__name__}")
        if dy.shape != shape or (dy.dtype is not dtype and dy.dtype != dtype):
            raise _mismatch_error(dy.shape, shape)(
                f"{self._short_repr()}.backward: expected a gradient of shape {shape} and dtype "
                f"{dtype} (the forward output's), got {dy.shape} {dy.dtype}")
        return c_array(dy)

    # -- traversal ------------------------------------------------------------------------------
    def named_modules(self, memo=None, prefix="", remove_duplicate=True):
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, m in self._modules.items():
            if m is None:
                continue
            sub = prefix + ("." if prefix else "") + name
            yield from m.named_modules(memo, sub, remove_duplicate)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_children(self):
        seen = set()
        for name, m in self._modules.items():
            if m is not None and id(m) not in seen:
                seen.add(id(m))
                yield name, m

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_parameters(self, prefix="", recurse=True, remove_duplicate=True):
        seen = set()
        mods = self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate) if recurse \
            else [(prefix, self)]
        for mprefix, m in mods:
            for name, p in m._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
                    continue
                seen.add(id(p))
                yield mprefix + ("." if mprefix else "") + name, p

    def parameters(self, recurse=True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix="", recurse=True, persistent_only=False):
        mods = self.named_modules(prefix=prefix) if recurse else [(prefix, self)]
        for mprefix, m in mods:
            for name, b in m._buffers.items():
                if b is None or (persistent_only and name in m._non_persistent):
                    continue
                yield mprefix + ("." if mprefix else "") + name, b

    def buffers(self, recurse=True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def apply(self, fn):
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # -- modes, gradients, sizes, dtype -------------------------------------------------------
    def train(self, mode=True):
        if not isinstance(mode, bool):
            raise ValueError(f"train: mode must be a bool, got {mode!r}")
        for m in self.modules():
            m.__dict__["training"] = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self, set_to_none=True):
        for p in self.parameters():
            p.zero_grad()

    def requires_grad_(self, requires_grad=True):
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def num_parameters(self, trainable_only=False):
        return int(sum(p.size for p in self.parameters() if p.requires_grad or not trainable_only))

    @property
    def dtype(self):
        """The dtype of the first parameter (float32 when the module has none)."""
        for p in self.parameters():
            return p.dtype
        return F32

    def astype(self, dtype):
        """Convert every parameter and floating buffer to `dtype` (float32 or float64), in place.

        Modules keep no dtype of their own: each reads it from its parameters (or buffers) at
        every call, so nothing else has to follow the conversion. Saved forward state is
        released (a backward needs a new forward)."""
        dt = as_float_dtype(dtype, f"{type(self).__name__}.astype")
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p.data.dtype != dt:
                    q = aligned_empty(p.data.shape, dt)
                    q[...] = p.data
                    p._set_data(q)
            for name, b in list(m._buffers.items()):
                if b is not None and b.dtype.kind == "f" and b.dtype != dt:
                    setattr(m, name, b.astype(dt))
            m._release_saved()
        return self

    def float(self):
        return self.astype(np.float32)

    def double(self):
        return self.astype(np.float64)

    # -- state dict ----------------------------------------------------------------------------
    def state_dict(self, prefix=""):
        """Flat {dotted name: array copy} of parameters and persistent buffers (torch names)."""
        out = OrderedDict()
        for mprefix, m in self.named_modules(prefix=prefix, remove_duplicate=False):
            dot = mprefix + ("." if mprefix else "")
            for name, p in m._parameters.items():
                if p is not None:
                    out[dot + name] = p.data.copy()
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[dot + name] = np.array(b, copy=True)
        return out

    def _state_targets(self):
        """{dotted name: (owner module, attribute name, current array)} as state_dict names them."""
        out = OrderedDict()
        for mprefix, m in self.named_modules(remove_duplicate=False):
            dot = mprefix + ("." if mprefix else "")
            for name, p in m._parameters.items():
                if p is not None:
                    out[dot + name] = (p, None, p.data)
            for name, b in m._buffers.items():
                if b is not None and name not in m._non_persistent:
                    out[dot + name] = (m, name, b)
        return out

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from `state_dict` into this module's parameters and buffers.

        Keys, shapes and dtypes are checked first and every mismatch is named in one error
        (missing and unexpected keys only when strict); nothing is modified when any check fails.
        The error is a TypeError when every problem is a dtype mismatch, else a ValueError (as
        for one array: a shape mismatch is reported before a dtype mismatch).
        Values may be NumPy arrays or anything with .numpy() (e.g. torch tensors).
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: expected a dict of arrays, got {type(state_dict).__name__}")
        targets = self._state_targets()
        problems, arrays, dtype_only = [], {}, True
        missing = [k for k in targets if k not in state_dict]
        unexpected = [k for k in state_dict if k not in targets]
        if strict:
            if missing:
                problems.append("missing keys: " + ", ".join(missing))
            if unexpected:
                problems.append("unexpected keys: " + ", ".join(map(str, unexpected)))
            dtype_only = not problems
        for key, (_, name, cur) in targets.items():
            if key not in state_dict:
                continue
            v = state_dict[key]
            if hasattr(v, "detach") and hasattr(v, "numpy"):
                v = v.detach().cpu().numpy()
            v = np.asarray(v)
            if v.shape != cur.shape:
                problems.append(f"{key}: expected shape {cur.shape}, got {v.shape}")
                dtype_only = False
            elif v.dtype != cur.dtype:
                problems.append(f"{key}: expected dtype {cur.dtype}, got {v.dtype}")
            elif name is None and not np.all(np.isfinite(v)):
                # parameters only: a buffer may hold -inf on purpose (e.g. an attention mask)
                problems.append(f"{key}: contains NaN or infinite values")
                dtype_only = False
            else:
                arrays[key] = v
        if problems:
            raise (TypeError if dtype_only else ValueError)(
                f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        for key, v in arrays.items():
            owner, name, cur = targets[key]
            if not cur.flags.writeable:
                cur = cur.copy()
                if name is None:
                    owner.data = cur
                else:
                    setattr(owner, name, cur)
            np.copyto(cur, v)
        for m in self.modules():
            m._release_saved()
        return IncompatibleKeys(missing, unexpected)

    # -- printing -------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = []
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"({name}): {sub}")
        main = f"{type(self).__name__}({self.extra_repr()}"
        if lines:
            return main + "\n  " + "\n  ".join(lines) + "\n)"
        return main + ")"
