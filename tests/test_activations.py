"""Activations written differently from Darknet's C expressions (for speed) against them, bit for
bit, on the values where such rewrites go wrong: signed zeros, denormals, infinities, NaN. The
in-place, gradient and delta forms run twice: through numpy, and through the C kernels (leaky,
relie) when they are built."""
import numpy as np
import pytest

from darknetpy import activations, kernels


# (activation, which code runs its float32 forms): every one through numpy, those with C kernels
# through them too.
FORMS = [(name, "numpy") for name in sorted(activations.ACTIVATIONS)] + [(name, "kernels") for name in sorted(activations.SLOPES)]


@pytest.fixture
def path(request):
    """Run the case's forms through numpy, or through the kernels (skipped when they are not in use)."""
    if request.param == "kernels" and kernels.label().startswith("numpy"):
        pytest.skip("the C kernels are not in use (not built, or DARKNETPY_KERNELS=0)")
    with kernels.use("numpy" if request.param == "numpy" else "c"):
        yield request.param


f32 = np.float32
EDGES = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan,
                  0.5, -0.5, 1.0, -1.0], np.float32)
VALUES = np.concatenate([EDGES, np.random.default_rng(0).normal(0, 10, 1025).astype(np.float32)])  # 1040 = 16 x 65

# Darknet's activations.h, one float at a time: (activate, gradient from the output)
DARKNET = {
    "leaky": (lambda x: x if x > 0 else f32(0.1) * x, lambda y: f32(1) if y > 0 else f32(0.1)),
    "relie": (lambda x: x if x > 0 else f32(0.01) * x, lambda y: f32(1) if y > 0 else f32(0.01)),
    "ramp": (None, lambda y: f32(int(y > 0) + 0.1)),
    "plse": (None, lambda y: f32(0.01) if (y < 0 or y > 1) else f32(0.125)),
    "lhtan": (None, lambda y: f32(1) if (y > 0 and y < 1) else f32(0.001)),
}


def assert_bitwise(got, expected):
    assert got.dtype == np.float32 and got.shape == expected.shape
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])


@pytest.mark.parametrize("name", [k for k, (f, _) in sorted(DARKNET.items()) if f])
def test_piecewise_activation_matches_darknet_bitwise(name):
    with np.errstate(invalid="ignore", over="ignore"):
        expected = np.array([DARKNET[name][0](x) for x in VALUES], np.float32)
        assert_bitwise(activations.get(name)[0](VALUES), expected)


@pytest.mark.parametrize("name", sorted(DARKNET))
def test_piecewise_gradient_matches_darknet_bitwise(name):
    expected = np.array([DARKNET[name][1](y) for y in VALUES], np.float32)
    assert_bitwise(activations.get(name)[1](VALUES.reshape(16, -1)).ravel(), expected)


@pytest.mark.parametrize("name,path", FORMS, indirect=["path"])
def test_in_place_form_equals_the_function_bitwise(name, path):
    """The step loops' in-place activations (and the copying fallback) give f(x) exactly."""
    f = activations.get(name)[0]
    x = VALUES.reshape(16, -1).copy()
    with np.errstate(invalid="ignore", over="ignore"):
        expected = np.asarray(f(x), np.float32)
        got = activations.in_place(name)(x, np.empty_like(x))
    assert got is x
    assert_bitwise(x, expected)


@pytest.mark.parametrize("name,path", FORMS, indirect=["path"])
def test_gradient_into_equals_the_gradient_bitwise(name, path):
    """The training loops' gradients written into a buffer (and the copying fallback) give df(y)."""
    y = VALUES.reshape(16, -1)
    out = np.full_like(y, 7)
    with np.errstate(all="ignore"):
        expected = np.asarray(activations.get(name)[1](y), np.float32)
        got = activations.gradient_into(name)(y, out)
    assert got is out
    assert_bitwise(out, expected)


@pytest.mark.parametrize("name,path", FORMS, indirect=["path"])
def test_delta_through_is_delta_times_the_gradient_bitwise(name, path):
    y = VALUES.reshape(16, -1)
    delta = np.random.default_rng(1).normal(0, 3, y.shape).astype(np.float32)
    with np.errstate(all="ignore"):
        expected = delta * activations.get(name)[1](y)
        got = activations.delta_through(name)(delta, y, np.empty_like(y))
    assert_bitwise(got, expected)
