"""Activations written differently from Darknet's C expressions (for speed) against them, bit for
bit, on the values where such rewrites go wrong: signed zeros, denormals, infinities, NaN."""
import numpy as np
import pytest

from darknetpy import activations

f32 = np.float32
EDGES = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-38, -1e-38, 3.4e38, -3.4e38, np.inf, -np.inf, np.nan,
                  0.5, -0.5, 1.0, -1.0], np.float32)
VALUES = np.concatenate([EDGES, np.random.default_rng(0).normal(0, 10, 1000).astype(np.float32)])

# Darknet's activations.h, one float at a time
DARKNET = {
    "leaky": lambda x: x if x > 0 else f32(0.1) * x,
    "relie": lambda x: x if x > 0 else f32(0.01) * x,
}


@pytest.mark.parametrize("name", sorted(DARKNET))
def test_piecewise_activation_matches_darknet_bitwise(name):
    f, _ = activations.get(name)
    with np.errstate(invalid="ignore", over="ignore"):
        expected = np.array([DARKNET[name](x) for x in VALUES], np.float32)
        got = f(VALUES)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32)[~np.isnan(expected)], expected.view(np.uint32)[~np.isnan(expected)])
    assert np.array_equal(np.isnan(got), np.isnan(expected))
