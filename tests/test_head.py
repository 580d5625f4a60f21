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


def independent_softmax_xent(x, ids, groups, temperature):
    """The cost and delta in float64, from the definition: p = exp(x/T) / Σ over each slice."""
    z = x.astype(np.float64).reshape(len(x), groups, -1) / temperature
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    p = (e / e.sum(axis=-1, keepdims=True)).reshape(x.shape)
    delta = -p
    delta[np.arange(len(x)), ids] += 1
    return -np.log(p[np.arange(len(x)), ids]).sum(), delta


@needs_team
@pytest.mark.parametrize("groups,temperature", [(1, 1.0), (2, 0.7)])
def test_softmax_xent_gives_the_bits_of_softmax_then_xent_on_any_number_of_threads(groups, temperature):
    """softmax_xent (_head.h), the training head in one read of the logits: the bits of the C softmax
    then the C xent, whose costs it adds in the same chunks, on 1, 2 and 3 threads (a row skipped or
    done twice, a wrong temperature, slice or id would not be), and within float32 rounding of the
    definition in float64."""
    R, V = 1000, 100  # above the size from which a call runs on the team; the last chunk is short
    rng = np.random.default_rng(7 + groups)
    x = rng.uniform(-30, 30, (R, V)).astype(np.float32)
    ids = rng.integers(0, V, R)
    p, want = np.empty_like(x), np.empty_like(x)
    K.softmax(x, p, groups, temperature)
    want_cost = K.xent(p, ids, want)

    def run():
        delta = np.full_like(x, np.nan)
        return K.softmax_xent(x, ids, delta, groups, temperature), delta
    for cost, delta in on_threads(run):
        assert cost == want_cost
        np.testing.assert_array_equal(delta, want)
    cost64, delta64 = independent_softmax_xent(x, ids, groups, temperature)
    np.testing.assert_allclose(delta, delta64, rtol=0, atol=2e-6)
    np.testing.assert_allclose(cost, cost64, rtol=1e-5)


def test_softmax_xent_reference_is_the_definition():
    """layers/softmax.py's numpy softmax_xent (the reference the C form is held to through the ops
    it composes) against the float64 definition, float32 and float64 inputs."""
    from darknetpy.layers.softmax import softmax_xent
    rng = np.random.default_rng(3)
    x = rng.uniform(-20, 20, (50, 12))
    ids = rng.integers(0, 12, 50)
    for dtype, atol in ((np.float64, 1e-13), (np.float32, 2e-6)):
        delta = np.full(x.shape, np.nan, dtype)
        cost = softmax_xent(x.astype(dtype), ids, delta, 3, 1.3)
        want_cost, want_delta = independent_softmax_xent(x.astype(dtype), ids, 3, 1.3)
        np.testing.assert_allclose(delta, want_delta, rtol=0, atol=atol)
        np.testing.assert_allclose(cost, want_cost, rtol=10 * np.finfo(dtype).eps * 50)


@needs_team
def test_softmax_xent_checks_its_arguments():
    x, ids, delta = np.zeros((4, 6), np.float32), np.zeros(4, np.int64), np.zeros((4, 6), np.float32)
    with pytest.raises(ValueError, match="multiple of groups"):
        K.softmax_xent(x, ids, delta, 4, 1.0)
    with pytest.raises(ValueError, match="softmax_xent"):
        K.softmax_xent(x, ids, np.zeros((3, 6), np.float32), 1, 1.0)
    with pytest.raises(ValueError, match="softmax_xent"):
        K.softmax_xent(x, np.array([0, 1, 6, 2]), delta, 1, 1.0)  # an id past the row
    with pytest.raises(TypeError):
        K.softmax_xent(x, ids, delta, 0, 1.0)


@pytest.mark.usefixtures("kernels_mode")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_training_loss_from_the_logits_is_forward_then_loss(write_cfg, dtype):
    """Network.accumulate takes the [softmax]'s cost and delta from its logits in one op
    (Softmax.train_loss): the bits of the layer's forward then its loss, in every kernel mode; for
    one-hot float truth too (the two ops then), and a [cost] after [softmax] is still not the loss."""
    from darknetpy.network import Network
    net = Network(write_cfg("[net]\ninputs=24\nbatch=8\ntime_steps=5\n\n[connected]\noutput=24\nactivation=linear\n\n"
                            "[softmax]\ntemperature=0.8\ngroups=2\n\n[cost]\n"), dtype=dtype)
    assert net.loss_layer == 1
    layer = net.layers[1]
    rng = np.random.default_rng(11)
    x = rng.normal(0, 4, (5, 8, 24)).astype(dtype)
    ids = rng.integers(0, 24, (5, 8))
    for truth in (ids, np.eye(24, dtype=dtype)[ids]):
        want_cost, want_delta = layer.loss(layer.forward(x, True, []), truth)
        want_delta = want_delta.copy()
        cost, delta = layer.train_loss(x, truth)
        assert cost == want_cost and cost.dtype == dtype
        np.testing.assert_array_equal(delta, want_delta)
