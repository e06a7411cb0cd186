"""fastmod.gradcheck itself: it must catch wrong backward passes and say where."""
import re

import numpy as np
import pytest

import fastmod
from fastmod import nn


class Square(nn.Module):
    """y = x**2 with a backward that can be made wrong at one element."""

    def __init__(self, bad_index=None, bad_by=1.0):
        super().__init__()
        self.bad_index, self.bad_by = bad_index, bad_by

    def forward(self, x):
        x = self._check_array(x)
        self._save(x)
        return x * x

    def backward(self, dy, need_input_grad=True):
        (x,) = self._saved()
        dx = 2 * x * dy
        if self.bad_index is not None:
            dx[self.bad_index] += self.bad_by
        return dx


class Scale(nn.Module):
    """y = x * w (w per column) with a parameter gradient that can be made wrong."""

    def __init__(self, n, bad_index=None):
        super().__init__()
        self.w = nn.Parameter(np.linspace(0.5, 1.5, n))
        self.bad_index = bad_index

    def forward(self, x):
        self._save(x)
        return x * self.w.data

    def backward(self, dy, need_input_grad=True):
        (x,) = self._saved()
        g, acc = self.w.grad_buffer()
        s = (dy * x).sum(axis=0)
        if self.bad_index is not None:
            s[self.bad_index] *= 1.01
        g[...] = g + s if acc else s
        return dy * self.w.data


class Product(nn.Module):
    """Two inputs: y = a * b; backward returns a tuple."""

    def forward(self, a, b):
        self._save(a, b)
        return a * b

    def backward(self, dy, need_input_grad=True):
        a, b = self._saved()
        return dy * b, dy * a


def test_correct_backward_passes(rng):
    res = fastmod.gradcheck(Square(), rng.standard_normal((3, 4)))
    assert res and res.ok and res.checked == 12
    assert "gradcheck passed: 12 elements, 0 outside" in res.report
    assert fastmod.gradcheck(Product(), rng.standard_normal((2, 3)), rng.standard_normal((2, 3)))
    assert fastmod.gradcheck(Scale(3), rng.standard_normal((4, 3)))


def test_wrong_input_gradient_is_caught_and_located(rng):
    x = rng.standard_normal((3, 4))
    with pytest.raises(fastmod.GradcheckError) as err:
        fastmod.gradcheck(Square(bad_index=(1, 2)), x)
    msg = str(err.value)
    assert "gradcheck FAILED" in msg and "1 outside" in msg
    assert "worst: input 0 at (1, 2)" in msg
    m = re.search(r"analytic (\S+), numeric (\S+), \|diff\| (\S+)", msg)
    assert m is not None
    analytic, numeric = float(m.group(1).rstrip(",")), float(m.group(2).rstrip(","))
    assert abs(analytic - numeric - 1.0) < 1e-4           # off by exactly the injected 1.0
    assert isinstance(err.value, AssertionError)          # plain asserts in user tests catch it too


def test_wrong_parameter_gradient_is_caught_and_located(rng):
    with pytest.raises(fastmod.GradcheckError, match=r"worst: parameter 'w' at \(2,\)"):
        fastmod.gradcheck(Scale(4, bad_index=2), rng.standard_normal((5, 4)))
    # the input gradient alone is right
    assert fastmod.gradcheck(Scale(4, bad_index=2), rng.standard_normal((5, 4)), check_params=False)


def test_wrong_second_input_gradient(rng):
    class BadProduct(Product):
        def backward(self, dy, need_input_grad=True):
            da, db = super().backward(dy)
            return da, db * 1.1

    with pytest.raises(fastmod.GradcheckError, match="worst: input 1 at"):
        fastmod.gradcheck(BadProduct(), rng.standard_normal((2, 2)), rng.standard_normal((2, 2)))


def test_result_without_raising(rng):
    res = fastmod.gradcheck(Square(bad_index=(0, 0), bad_by=5.0), rng.standard_normal((2, 2)),
                            raise_exception=False)
    assert not res and not res.ok
    assert res.worst["where"] == "input 0" and tuple(res.worst["index"]) == (0, 0)
    assert abs(res.worst["abs_err"] - 5.0) < 1e-4
    assert repr(res) == res.report


def test_tiny_error_below_tolerance_passes_and_sampling(rng):
    assert fastmod.gradcheck(Square(bad_index=(0, 0), bad_by=1e-9), rng.standard_normal((2, 2)))
    res = fastmod.gradcheck(Square(), rng.standard_normal((20, 20)), max_elements=10)
    assert res.checked == 10


def test_rejects_float32_modules_and_inputs(rng):
    with pytest.raises(TypeError, match=r"module must be float64.*found a float32 parameter"):
        fastmod.gradcheck(nn.Linear(3, 2), rng.standard_normal((2, 3)))
    with pytest.raises(TypeError, match="input 0 must be float64, got float32"):
        fastmod.gradcheck(Square(), np.ones((2, 2), np.float32))
    with pytest.raises(TypeError, match="expected a fastmod Module, got function"):
        fastmod.gradcheck(lambda x: x, np.ones(2))


def test_missing_or_misshapen_gradient():
    class NoGrad(Square):
        def backward(self, dy, need_input_grad=True):
            super().backward(dy)
            return None

    class Misshapen(Square):
        def backward(self, dy, need_input_grad=True):
            return super().backward(dy).ravel()

    with pytest.raises(fastmod.GradcheckError, match="backward returned no gradient for input 0"):
        fastmod.gradcheck(NoGrad(), np.ones((2, 2)))
    with pytest.raises(fastmod.GradcheckError, match=r"gradient of input 0 has shape \(4,\), expected \(2, 2\)"):
        fastmod.gradcheck(Misshapen(), np.ones((2, 2)))


def test_inputs_buffers_and_grads_are_left_alone(rng):
    class Counting(Square):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", np.zeros(1))

        def forward(self, x):
            self.calls += 1
            return super().forward(x)

    m = Counting()
    x = rng.standard_normal((2, 3))
    x0 = x.copy()
    assert fastmod.gradcheck(m, x)
    np.testing.assert_array_equal(x, x0)
    assert m.calls[0] == 0                                 # buffers restored
    s = Scale(3)
    s.w.grad = np.full(3, 7.0)
    fastmod.gradcheck(s, x)
    assert not s.w.has_grad()                              # left zeroed, not holding fd junk


def test_noncontiguous_inputs_are_perturbed_correctly(rng):
    """A transposed input must be checked for real (its numeric gradient is not zero)."""
    x = rng.standard_normal((4, 3)).T
    assert not x.flags.c_contiguous
    assert fastmod.gradcheck(Square(), x)
    with pytest.raises(fastmod.GradcheckError, match=r"input 0 at \(2, 1\)"):
        fastmod.gradcheck(Square(bad_index=(2, 1)), x)


def test_frozen_parameters_are_skipped(rng):
    s = Scale(3, bad_index=1)
    s.w.requires_grad = False
    assert fastmod.gradcheck(s, rng.standard_normal((2, 3)))
