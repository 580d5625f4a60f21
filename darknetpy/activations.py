"""Darknet's activations and their gradients, by Darknet name.

Each entry is (f, df): f maps pre-activations to outputs; df gives the derivative from the
OUTPUT y, as Darknet's gradient_array does (every one of these is exact written that way).
Both work in place-free numpy float32 and accept any array shape.
"""
import numpy as np

from . import kernels
from .errors import DarknetpyError
from .kernels import pick as _pick

f32 = np.float32


def _logistic(x):
    return f32(1) / (f32(1) + np.exp(-x))


def _stair(x):
    n = np.floor(x)
    half = np.floor(x / f32(2))
    return np.where(n % 2 == 0, half, (x - n) + half)


ACTIVATIONS = {
    "logistic": (_logistic, lambda y: (f32(1) - y) * y),
    "loggy": (lambda x: f32(2) * _logistic(x) - f32(1), lambda y: f32(2) * (f32(1) - (y + f32(1)) / f32(2)) * ((y + f32(1)) / f32(2))),
    "relu": (lambda x: np.maximum(x, f32(0)), lambda y: (y > 0).astype(np.float32)),
    "elu": (lambda x: np.where(x >= 0, x, np.expm1(x)), lambda y: np.where(y >= 0, f32(1), y + f32(1))),
    "selu": (lambda x: np.where(x >= 0, f32(1.0507) * x, f32(1.0507 * 1.6732) * np.expm1(x)),
             lambda y: np.where(y >= 0, f32(1.0507), y + f32(1.0507 * 1.6732))),
    # max(x, a·x) with 0 < a < 1 is Darknet's x > 0 ? x : a·x exactly, in one pass fewer.
    "relie": (lambda x: np.maximum(x, f32(0.01) * x), lambda y: _pick(y > 0, 1, 0.01)),
    "plse": (lambda x: np.where(x < -4, f32(0.01) * (x + f32(4)), np.where(x > 4, f32(0.01) * (x - f32(4)) + f32(1), f32(0.125) * x + f32(0.5))),
             lambda y: _pick(~((y < 0) | (y > 1)), 0.125, 0.01)),
    "hardtan": (lambda x: np.clip(x, f32(-1), f32(1)), lambda y: ((y > -1) & (y < 1)).astype(np.float32)),
    "lhtan": (lambda x: np.where(x < 0, f32(0.001) * x, np.where(x > 1, f32(0.001) * (x - f32(1)) + f32(1), x)),
              lambda y: _pick((y > 0) & (y < 1), 1, 0.001)),
    "linear": (lambda x: x, lambda y: np.ones_like(y)),
    "ramp": (lambda x: np.maximum(x, f32(0)) + f32(0.1) * x, lambda y: _pick(y > 0, 1.1, 0.1)),
    "leaky": (lambda x: np.maximum(x, f32(0.1) * x), lambda y: _pick(y > 0, 1, 0.1)),
    # Darknet computes tanh as (e^2x-1)/(e^2x+1), which is NaN above x=354.89; np.tanh is right there.
    "tanh": (np.tanh, lambda y: f32(1) - y * y),
    "stair": (_stair, lambda y: (np.floor(y) != y).astype(np.float32)),
}


def _ramp_(x, s):
    np.multiply(x, f32(0.1), out=s)  # 0.1 x first: max(x, 0) overwrites x
    return np.add(np.maximum(x, f32(0), out=x), s, out=x)


# In-place forms, (x, scratch) -> x, for a recurrent step loop that must not allocate: the same
# float32 operations as ACTIVATIONS (tests/test_activations.py holds them to it bit for bit).
IN_PLACE = {
    "linear": lambda x, s: x,
    "logistic": lambda x, s: np.reciprocal(np.add(np.exp(np.negative(x, out=x), out=x), f32(1), out=x), out=x),
    "tanh": lambda x, s: np.tanh(x, out=x),
    "relu": lambda x, s: np.maximum(x, f32(0), out=x),
    "ramp": _ramp_,
}


def _copying(fn, target):
    """The fallback for a name missing from IN_PLACE or GRADIENT_INTO: (a, b) -> fn(a) computed as
    a new array, then copied into target(a, b)."""
    def copy(a, b):
        out = target(a, b)
        np.copyto(out, fn(a))
        return out
    return copy


# leaky and relie are x above zero and a·x below: ops of their own in kernels.py (slope_act,
# slope_grad), which the compiled kernels do in one pass instead of numpy's two to four.
SLOPES = {"leaky": 0.1, "relie": 0.01}


def in_place(name):
    """f(x, scratch) that activates x in place (scratch: an array like x it may use). Activations
    without an in-place form here fall back to copying f(x) back into x."""
    if name in SLOPES:
        a = SLOPES[name]

        def act(x, scratch):
            kernels.get("slope_act", x)(x, a)
            return x
        return act
    return IN_PLACE.get(name) or _copying(ACTIVATIONS[name][0], lambda x, scratch: x)


# Gradients from the output written into `out`, (y, out) -> out, for training without temporaries:
# the same float32 operations as ACTIVATIONS (tests/test_activations.py holds them to it bit for
# bit). A comparison written into a float32 array gives 1.0 / 0.0 with no boolean array between.
GRADIENT_INTO = {
    "logistic": lambda y, out: np.multiply(np.subtract(f32(1), y, out=out), y, out=out),
    "tanh": lambda y, out: np.subtract(f32(1), np.multiply(y, y, out=out), out=out),
    "relu": lambda y, out: np.greater(y, f32(0), out=out),
    "ramp": lambda y, out: _pick(np.greater(y, f32(0), out=out), 1.1, 0.1, out),
}


def gradient_into(name):
    """g(y, out) that writes f'(y) into out; activations without a form here copy df(y) into it."""
    if name in SLOPES:
        a = SLOPES[name]

        def grad(y, out):
            kernels.get("slope_grad", y, out)(y, out, a)
            return out
        return grad
    return GRADIENT_INTO.get(name) or _copying(ACTIVATIONS[name][1], lambda y, out: out)


def delta_through(name):
    """(delta, y, out) -> delta ⊙ f'(y) written into out (not delta itself), the delta before the
    activation; linear hands delta on as it is (delta · 1 would be an exact but wasted pass)."""
    if name == "linear":
        return lambda delta, y, out: delta
    if name in SLOPES:
        a = SLOPES[name]

        def through(delta, y, out):
            kernels.get("slope_grad", y, out, delta)(y, out, a, delta)
            return out
        return through
    grad = gradient_into(name)
    return lambda delta, y, out: np.multiply(grad(y, out), delta, out=out)


def get(name, section=None, key="activation"):
    """(f, df) for a Darknet activation name; unknown names are an error (Darknet silently uses relu)."""
    if name not in ACTIVATIONS:
        message = f"unknown activation '{name}'; expected one of {', '.join(sorted(ACTIVATIONS))}"
        raise section.error(message, key) if section is not None else DarknetpyError(message)
    return ACTIVATIONS[name]
