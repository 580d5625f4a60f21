"""The training softmax and its cross-entropy (the [softmax] layer's C ops) on the step loops' thread
team: large calls share their rows among the threads. The same bits on 1, 2 and 3 threads, and
kernels.py's numpy references (test_kernels.py checks the small, one-thread calls)."""
import numpy as np
import pytest

from darknetpy import kernels
from test_kernels import K

needs_team = pytest.mark.skipif(K is None or not hasattr(K, "loop_threads"),
                                reason="the step loops' thread team (_loop.h) is not built on this CPU")


def on_threads(fn):
    """fn() on 1, 2 and 3 threads of the team: its three results."""
    wanted, runs = K.loop_threads(0), []
    try:
        for threads in (1, 2, 3):
            assert K.loop_threads(threads) == threads
            runs.append(fn())
    finally:
        K.loop_threads(wanted)
    return runs


@needs_team
@pytest.mark.parametrize("groups,temperature", [(1, 1.0), (2, 0.7)])
def test_softmax_and_cross_entropy_give_the_same_bits_on_any_number_of_threads(groups, temperature):
    R, V = 1000, 100  # R V above the size from which a call runs on the team; the last share is short
    rng = np.random.default_rng(groups)
    x = rng.uniform(-30, 30, (R, V)).astype(np.float32)
    ids = rng.integers(0, V, R)

    def run():
        p, delta = np.full_like(x, np.nan), np.full_like(x, np.nan)
        K.softmax(x, p, groups, temperature)
        cost = K.xent(p, ids, delta)
        return p, cost, delta
    runs = on_threads(run)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
    p, cost, delta = runs[-1]
    want_p = np.empty_like(x)
    kernels.softmax(x, want_p, groups, temperature)
    np.testing.assert_allclose(p, want_p, rtol=2e-6, atol=1e-12)  # test_kernels.py's tolerances
    want_delta = np.empty_like(x)
    want_cost = kernels.xent(p, ids, want_delta)
    np.testing.assert_array_equal(delta, want_delta)
    np.testing.assert_allclose(cost, -np.log(p[np.arange(R), ids].astype(np.float64)).sum(), rtol=1e-12)
    np.testing.assert_allclose(cost, want_cost, rtol=1e-5)


@needs_team
@pytest.mark.parametrize("bias", [False, True])
def test_add_gives_numpy_bits_on_any_number_of_threads(bias):
    """add (_head.h, the [connected] bias and [sru]'s highway delta on the team): out += x for x
    shaped as out or one row of it, every row of a call that the team shares (the last share short):
    the bits of numpy's out += x on 1, 2 and 3 threads (a row left out, run twice or given the
    wrong x would not be)."""
    rng = np.random.default_rng(5)
    out = rng.uniform(-3, 3, (3, 333, 70)).astype(np.float32)
    x = rng.uniform(-3, 3, 70 if bias else out.shape).astype(np.float32)
    want = out + x
    for got in on_threads(lambda: (lambda o: (K.add(o, x), o)[1])(out.copy())):
        np.testing.assert_array_equal(got, want)
    with kernels.use("c"):
        assert kernels.get("add", out, x) is K.add
    with kernels.use("numpy"):
        o = out.copy()
        kernels.get("add", o, x)(o, x)
        np.testing.assert_array_equal(o, want)


@needs_team
def test_add_checks_its_shapes():
    out = np.zeros((4, 5), np.float32)
    for x in (np.zeros(4, np.float32), np.zeros((5, 4), np.float32), np.zeros((4, 5, 1), np.float32)):
        with pytest.raises(ValueError, match="add"):
            K.add(out, x)
    with pytest.raises(TypeError):
        K.add(out, np.zeros(5))  # float64
