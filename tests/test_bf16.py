"""The AMX bfloat16 product (_amx.h, op matmul_bf16): out = beta·out + bf16(A) @ bf16(B), A = a or
aᵀ, B = b or bᵀ, against kernels.matmul_bf16 (numpy's float32 product of the same rounded inputs)
and against float64.

Tolerance: both products sum the same exact bf16·bf16 terms in float32, each in its own order, so
each is within K·2⁻²⁴·(|A| @ |B|) of the exact sum (recursive summation's bound, u = 2⁻²⁴), and the
add of beta·out within 2⁻²⁴·|out| more: (K+1)·2⁻²⁴·(|A| @ |B| + |out|) elementwise from the float64
product of bf16(A) and bf16(B), twice that from the numpy reference. A wrong tile, edge or rounding
is off by O(|A| @ |B| / K). Where the inputs are bf16 values whose float32 sums are exact (small
integers), both must give the same bits.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from darknetpy import kernels

try:
    from darknetpy import _kernels as K
except ImportError:
    K = None
pytestmark = pytest.mark.skipif(
    K is None or not hasattr(K, "matmul_bf16") or not kernels.compiled("matmul_bf16"),
    reason="the AMX kernel is not in the module: no C build, DARKNETPY_KERNELS=0/avx2, or no AMX-BF16 on this CPU/OS")

# (M, K, N): one element, edges of the 16-row, 32-K and 16/32-column tiles on every side, a long K
# (several of the kernel's 8-tile K chunks), and K = 0 (out = beta·out)
SHAPES = [(1, 1, 1), (5, 0, 7), (15, 17, 33), (17, 33, 15), (33, 65, 1), (65, 255, 257), (257, 31, 65), (16, 1152, 32), (2, 1152, 17)]
FLAGS = [(ta, tb, beta) for ta in (0, 1) for tb in (0, 1) for beta in (0, 1)]


def operands(rng, M, Kd, N, ta, tb, scale=1.0):
    a = (rng.standard_normal((Kd, M) if ta else (M, Kd)) * scale).astype(np.float32)
    b = rng.standard_normal((N, Kd) if tb else (Kd, N)).astype(np.float32)
    return a, b


def framed(out0):
    """out0's copy as rows 1..M of an array with a guard row above and below, so that a write past
    out's last element (or before its first) shows: out is still C-contiguous."""
    M, N = out0.shape
    frame = np.full((M + 2, N), 7.0, np.float32)
    frame[1:-1] = out0
    return frame, frame[1:-1]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_every_transpose_and_beta_against_the_reference_and_float64(shape):
    M, Kd, N = shape
    rng = np.random.default_rng(M * 1000 + N)
    for ta, tb, beta in FLAGS:
        a, b = operands(rng, M, Kd, N, ta, tb, scale=3.0)
        out0 = rng.standard_normal((M, N)).astype(np.float32)
        want = out0.copy()
        kernels.matmul_bf16(want, a, b, ta, tb, beta)
        frame, out = framed(out0)
        K.matmul_bf16(out, a, b, ta, tb, beta)
        A = kernels.bf16(a.T if ta else a).astype(np.float64)
        B = kernels.bf16(b.T if tb else b).astype(np.float64)
        exact = A @ B + (out0 if beta else 0)
        bound = (Kd + 1) * 2.0**-24 * (np.abs(A) @ np.abs(B) + (np.abs(out0) if beta else 0))
        case = f"M, K, N = {shape}, ta={ta} tb={tb} beta={beta}"
        assert (np.abs(out - exact) <= bound).all(), case + f": off float64 by {np.abs(out - exact).max()}"
        assert (np.abs(out - want) <= 2 * bound).all(), case + f": off the reference by {np.abs(out - want).max()}"
        assert (frame[0] == 7).all() and (frame[-1] == 7).all(), case + ": wrote outside out"


def test_exact_sums_give_the_reference_bits():
    """Integers in [-8, 8] are bf16 values and their sums (|.| < 2²⁴) are exact in float32 in any
    order: the kernel, the reference and int64 arithmetic agree bit for bit, beta=1 included."""
    rng = np.random.default_rng(1)
    for M, Kd, N in [(50, 1152, 70), (33, 97, 18)]:
        for ta, tb, beta in FLAGS:
            a = rng.integers(-8, 9, (Kd, M) if ta else (M, Kd)).astype(np.float32)
            b = rng.integers(-8, 9, (N, Kd) if tb else (Kd, N)).astype(np.float32)
            out0 = rng.integers(-1000, 1001, (M, N)).astype(np.float32)
            exact = (a.T if ta else a).astype(np.int64) @ (b.T if tb else b).astype(np.int64) + (out0.astype(np.int64) if beta else 0)
            want, got = out0.copy(), out0.copy()
            kernels.matmul_bf16(want, a, b, ta, tb, beta)
            K.matmul_bf16(got, a, b, ta, tb, beta)
            np.testing.assert_array_equal(want, exact.astype(np.float32))
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"ta={ta} tb={tb} beta={beta}")


def test_rounds_to_nearest_even_not_by_truncation():
    """bf16 keeps 8 significant bits: near 1 its step is 2⁻⁷. 1 + 0.75·2⁻⁷ rounds up (truncation
    gives 1); 1 + 2⁻⁸, halfway, goes to the even 1 (round-half-up gives 1 + 2⁻⁷); 1 + 1.5·2⁻⁷,
    halfway, to the even 1 + 2⁻⁶; and the same negated. With K = 1 and the other factor 1 the
    product is the rounded value itself, on both sides of the product."""
    x = np.array([1 + 0.75 * 2**-7, 1 + 2**-8, 1 + 1.5 * 2**-7, -(1 + 0.75 * 2**-7), 3.0], np.float32)
    rounded = np.array([1 + 2**-7, 1.0, 1 + 2**-6, -(1 + 2**-7), 3.0], np.float32)
    one = np.ones((1, 1), np.float32)
    for ta in (0, 1):
        for tb in (0, 1):
            out = np.zeros((5, 1), np.float32)  # bf16(x) as A's column, B = 1
            K.matmul_bf16(out, np.ascontiguousarray(x[None, :] if ta else x[:, None]), one, ta, tb, 0)
            np.testing.assert_array_equal(out[:, 0], rounded, err_msg=f"A side, ta={ta} tb={tb}")
            out = np.zeros((1, 5), np.float32)  # A = 1, bf16(x) as B's row
            K.matmul_bf16(out, one, np.ascontiguousarray(x[:, None] if tb else x[None, :]), ta, tb, 0)
            np.testing.assert_array_equal(out[0], rounded, err_msg=f"B side, ta={ta} tb={tb}")


def test_the_same_bits_on_one_and_two_threads():
    """Each output block is summed by one thread in K order, whichever thread that is."""
    wanted = K.loop_threads(0)
    runs = []
    try:
        for threads in (1, 2):
            assert K.loop_threads(threads) == threads
            results = []
            for ta, tb, beta in FLAGS:
                a, b = operands(np.random.default_rng(ta * 4 + tb * 2 + beta), 130, 300, 200, ta, tb)
                out = np.ones((130, 200), np.float32)
                K.matmul_bf16(out, a, b, ta, tb, beta)
                results.append(out)
            runs.append(results)
    finally:
        K.loop_threads(wanted)
    for one, two in zip(*runs):
        np.testing.assert_array_equal(one.view(np.uint32), two.view(np.uint32))


def test_the_c_column_serves_the_op():
    """kernels.get picks the compiled op for float32 C-contiguous arrays (the column takes any op
    the module has)."""
    a = np.zeros((2, 3), np.float32)
    assert kernels.get("matmul_bf16", a, a, a) is K.matmul_bf16
    assert K.amx is True


def test_bad_calls_raise_instead_of_crashing():
    rng = np.random.default_rng(3)
    a, b = operands(rng, 20, 30, 40, 0, 0)
    out = np.zeros((20, 40), np.float32)
    square = np.ones((32, 32), np.float32)
    with pytest.raises(ValueError, match="shares memory"):
        K.matmul_bf16(square, square, np.ones((32, 32), np.float32), 0, 0, 0)
    with pytest.raises(ValueError, match="shares memory"):
        K.matmul_bf16(square[:16], np.ones((16, 32), np.float32), square, 0, 0, 1)  # out is b's first half
    with pytest.raises(ValueError, match=r"a \(K, M\)"):
        K.matmul_bf16(out, a, b, 1, 0, 0)  # a is (M, K): wrong for ta
    with pytest.raises(ValueError, match=r"b \(N, K\)"):
        K.matmul_bf16(out, a, b, 0, 1, 0)
    with pytest.raises(ValueError, match="2-D"):
        K.matmul_bf16(out.ravel(), a, b, 0, 0, 0)
    with pytest.raises(ValueError, match="beta must be 0 or 1"):
        K.matmul_bf16(out, a, b, 0, 0, 0.5)
    with pytest.raises(TypeError, match="float32"):
        K.matmul_bf16(out, a.astype(np.float64), b, 0, 0, 0)
    with pytest.raises(ValueError, match="not C-contiguous"):  # numpy's buffer protocol says so
        K.matmul_bf16(out, np.asfortranarray(a), b, 0, 0, 0)
    with pytest.raises(TypeError, match="matmul_bf16"):
        K.matmul_bf16(out, a, b)
    assert not out.any()


def test_not_in_the_module_that_stands_for_a_cpu_without_avx512():
    """DARKNETPY_KERNELS=avx2 builds the module a CPU without AVX-512 gets: no matmul_bf16, amx False,
    and kernels falls back to numpy's reference for the op."""
    code = ("from darknetpy import kernels, _kernels as K; "
            "print(hasattr(K, 'matmul_bf16'), K.amx, kernels.get('matmul_bf16') is kernels.matmul_bf16)")
    env = dict(os.environ, DARKNETPY_KERNELS="avx2")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False", "True"]
