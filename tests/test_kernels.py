"""The compiled kernels (darknetpy/_kernels.c) against the numpy code they replace.

The numpy references in darknetpy/kernels.py are the reference: the finite-difference checks
(test_gradients.py, float64) run them. The kernels run only for float32 and compute exp and
tanh with their own polynomials, so they agree with numpy to float32 rounding, not bit for bit:
values here are O(1) and the tolerance is 3e-7 absolute plus 3e-7 relative (2-3 ulp; numpy's own
float32 tanh is within 1-2 ulp of the true value). Network-level: a whole training step with and
without the kernels, costs and accumulated updates to 1e-5 of each array's largest entry; with
batch_normalize 3e-4, since normalizing over 3 streams divides by standard deviations that can be
small and so magnifies an ulp of difference in the gates.

The kernels are built when `pip install` finds a C compiler; they are required here whenever
the machine has one, so a failed build fails these tests instead of skipping them.
"""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from darknetpy import kernels
from darknetpy.layers import base, gru, lstm
from darknetpy.layers.base import transpose_into
from darknetpy.network import Network

try:
    from darknetpy import _kernels as K
except ImportError:
    K = None
    if shutil.which("cc") or shutil.which("gcc"):
        raise  # a compiler is here: the kernels should have been built
pytestmark = pytest.mark.skipif(K is None, reason="darknetpy._kernels not built (no C compiler at install)")

ATOL = RTOL = 3e-7


def arrays(rng, *shapes, low=-3.0, high=3.0):
    return [rng.uniform(low, high, s).astype(np.float32) for s in shapes]


def assert_same_as_numpy(fn_numpy, fn_kernel, inputs, outputs, names):
    """Call both forms on copies of the same arrays (outputs start as NaN); every array, inputs
    included (the kernels write some in place), must agree to ATOL/RTOL."""
    results = []
    for fn in (fn_numpy, fn_kernel):
        ins = [a.copy() for a in inputs]
        outs = [np.full_like(a, np.nan) for a in outputs]
        fn(*ins, *outs)
        results.append(ins + outs)
    for a, b, name in zip(*results, names.split()):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=name)


SHAPES = [(8, 32), (5, 3), (256, 1)]  # n, streams: a whole number of 64-float chunks and ragged ones


def blocked(layout, rng, k, n, S, **bounds):
    """An array of k gate blocks for n features and S streams in a step op's `layout`:
    "feature-major" (k n, S) as the training loops run, "rows" (S, k n) as the steppers do."""
    (a,) = arrays(rng, (k * n, S), **bounds)
    return a if layout == "feature-major" else np.ascontiguousarray(a.T)


LAYOUTS = ["feature-major", "rows"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("n,S", SHAPES)
def test_lstm_step(n, S, peephole, layout):
    """lstm_step's C form against layers/lstm.py's reference, in both layouts, with and without
    peepholes."""
    rng = np.random.default_rng(n * S + peephole)
    g, xu, c = (blocked(layout, rng, k, n, S) for k in (4, 4, 1))
    P = (blocked(layout, rng, 3, n, S),) if peephole else ()
    outs = [np.empty_like(c) for _ in range(3)]
    assert_same_as_numpy(lambda *a: lstm.lstm_step(*a, *P), lambda *a: K.lstm_step(*a, *P), [g, xu, c], outs,
                         "g xu c c1 tc h1")


@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("n,S", SHAPES)
def test_lstm_back(n, S, peephole):
    rng = np.random.default_rng(n + S + peephole)
    dh, dc, DH, c = arrays(rng, (n, S), (n, S), (n, S), (n, S), low=-1, high=1)
    ifo, gg, tc = arrays(rng, (3 * n, S), (n, S), (n, S), low=-0.99, high=0.99)
    g = np.concatenate([np.abs(ifo), gg])  # gates as the forward step leaves them: σ in (0, 1), tanh in (-1, 1)
    peep = arrays(rng, (3 * n, S), (3 * n, S), low=-1, high=1) if peephole else []  # P, dP
    assert_same_as_numpy(lstm.lstm_back, K.lstm_back, [dh, dc, DH, g, c, tc], [np.empty((4 * n, S), np.float32)] + peep,
                         "dh dc DH g c tc d P dP")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n,S", SHAPES)
def test_gru_zr(n, S, layout):
    rng = np.random.default_rng(n * 7 + S)
    zr, xu, h = (blocked(layout, rng, k, n, S) for k in (2, 3, 1))
    assert_same_as_numpy(gru.gru_zr, K.gru_zr, [zr, xu, h], [np.empty_like(h)], "zr xu h rh")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("n,S", SHAPES)
@pytest.mark.parametrize("tanh", [0, 1])
@pytest.mark.parametrize("train", [False, True])
def test_gru_step(n, S, tanh, train, layout):
    rng = np.random.default_rng(n * 11 + S + tanh)
    c, xu, h = (blocked(layout, rng, k, n, S) for k in (1, 3, 1))
    zr = blocked(layout, rng, 2, n, S, low=0.01, high=0.99)  # gates
    outs = [np.empty_like(h)] + ([np.empty_like(xu)] if train else [])
    assert_same_as_numpy(lambda *a: gru.gru_step(tanh, *a), lambda *a: K.gru_step(tanh, *a), [c, xu, zr, h], outs,
                         "c xu zr h h1 P")


@pytest.mark.parametrize("op", ["lstm_step", "gru_zr", "gru_step"])
def test_a_kernel_in_the_wrong_layout_is_caught(op):
    """Not vacuous: the comparison above fails for a C form that gets the layout wrong (rows
    handed over flat, so the kernel reads them as feature-major blocks)."""
    n, S, rng = 8, 3, np.random.default_rng(0)
    ins, outs = {"lstm_step": ((4, 4, 1), 3), "gru_zr": ((2, 3, 1), 1), "gru_step": ((1, 3, 2, 1), 1)}[op]
    inputs = [blocked("rows", rng, k, n, S, low=0.01, high=0.99) for k in ins]
    reference = {"lstm_step": lstm.lstm_step, "gru_zr": gru.gru_zr, "gru_step": lambda *a: gru.gru_step(0, *a)}[op]
    kernel = {"lstm_step": K.lstm_step, "gru_zr": K.gru_zr, "gru_step": lambda *a: K.gru_step(0, *a)}[op]
    with pytest.raises(AssertionError):
        assert_same_as_numpy(reference, lambda *a: kernel(*(x.reshape(-1) for x in a)), inputs,
                             [np.empty((S, n), np.float32)] * outs, "a b c d e f")


@pytest.mark.parametrize("n,S", SHAPES)
def test_gru_back(n, S):
    rng = np.random.default_rng(n * 13 + S)
    dh, drh, P = arrays(rng, (n, S), (n, S), (3 * n, S), low=-1, high=1)
    (zr,) = arrays(rng, (2 * n, S), low=0.01, high=0.99)
    d0 = np.zeros((3 * n, S), np.float32)
    assert_same_as_numpy(gru.gru_back, K.gru_back,
                         [dh, drh, zr, P, d0], [], "dh drh zr P d")


def test_activations_over_the_whole_float_range():
    """tanh and σ through the LSTM kernel's g and i gates, against float64 numpy, from 0 to ±1e30
    (the kernel clamps before exp): within 3 ulp of 1 everywhere, relatively within 3 ulp near 0."""
    x = np.concatenate([np.linspace(-12, 12, 48001), [0.0, 1e-30, -1e-30, 1e-8, 40, -40, 1e4, -1e4, 1e30, -1e30]])
    x = x.astype(np.float32)
    m = x.size
    g, xu = np.zeros((4, m), np.float32), np.zeros((4, m), np.float32)
    xu[0], xu[3] = x / 2, x  # i's row is pre-halved: σ(2 * x/2)
    c1, tc, h1 = (np.empty((1, m), np.float32) for _ in range(3))
    K.lstm_step(g, xu, np.zeros((1, m), np.float32), c1, tc, h1)
    x64 = x.astype(np.float64)
    with np.errstate(over="ignore"):
        tanh, sigmoid = np.tanh(x64), 1 / (1 + np.exp(-x64))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g[3], tanh, rtol=4e-7, atol=1e-37)
    np.testing.assert_allclose(g[0], sigmoid, rtol=0, atol=ATOL)
    small = np.abs(x64) < 1e-3
    np.testing.assert_allclose(g[3][small], tanh[small], rtol=4e-7, atol=0)


def test_bad_arguments_raise():
    n, S = 4, 2
    f32 = lambda *s: np.zeros(s, np.float32)
    with pytest.raises(TypeError, match="float32"):
        K.lstm_back(*(np.zeros((n, S)) for _ in range(3)), f32(4 * n, S), f32(n, S), f32(n, S), f32(4 * n, S))
    with pytest.raises(ValueError, match="expected"):
        K.lstm_back(f32(n, S), f32(n, S), f32(n, S), f32(4 * n, S), f32(n, S), f32(n, S), f32(3 * n, S))
    with pytest.raises(TypeError, match="lstm_back"):  # P without dP
        K.lstm_back(f32(n, S), f32(n, S), f32(n, S), f32(4 * n, S), f32(n, S), f32(n, S), f32(4 * n, S), f32(3 * n, S))
    with pytest.raises((ValueError, BufferError)):  # not C-contiguous
        K.gru_zr(f32(2 * n, 2 * S)[:, ::2], f32(2 * n, S), f32(n, S), f32(n, S))
    with pytest.raises(TypeError):
        K.gru_back(f32(n, S))


@pytest.mark.parametrize("decay", [0.0, 5e-4])
def test_optimizer_updates_are_bitwise_numpys(decay):
    """adam_ema (AdamW's shrink, Adam, the EMA's move) and sgd do kernels.py's float32 operations in
    the same order without FMA contraction: the same bits, over a few updates (the state carries over)."""
    rng = np.random.default_rng(7)
    f = np.float32
    start = [rng.normal(0, 1, 1000).astype(np.float32) for _ in range(4)]
    start[3] = np.abs(start[3])  # v, Adam's second moment, is never negative
    runs = []
    for adam_ema, sgd in ((kernels.adam_ema, kernels.sgd), (K.adam_ema, K.sgd)):
        p, u, m, v, s = (a.copy() for a in start + [start[0]])
        q, w = start[0].copy(), start[1].copy()
        for t in range(1, 4):
            u += start[2]
            adam_ema(p, u, m, v, s, f(1 - 0.01 * 0.02), f(-decay * 64), f(0.9), f(1 - 0.9), f(0.999), f(1 - 0.999),
                     f(1 - 0.9 ** t), f(1 - 0.999 ** t), f(0.01), f(1e-7), f(0.99), f(1 - 0.99))
            w += start[2]
            sgd(q, w, f(-decay * 64), f(0.1 / 64), f(0.9))
        runs.append((p, u, m, v, s, q, w))
    for a, b, name in zip(*runs, "p u m v s sgd-p sgd-u".split()):
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_onehot_grad():
    """dW[id] += dz's rows per one-hot id, against the numpy reference (sums in another order:
    float32 rounding); ids out of range and wrong dtypes raise instead of writing elsewhere."""
    rng = np.random.default_rng(5)
    ids = rng.integers(0, 9, 500)
    dz = rng.normal(0, 1, (500, 12)).astype(np.float32)
    want, got = (rng.normal(0, 1, (10, 12)).astype(np.float32) for _ in range(2))
    got[...] = want
    kernels.onehot_grad(want, ids, dz)
    K.onehot_grad(got, ids.astype(np.int64), dz)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for bad in (np.array([0, 10]), np.array([-1, 0])):
        with pytest.raises(ValueError, match="out of range"):
            K.onehot_grad(got, bad, dz[:2])
    with pytest.raises(TypeError, match="int64"):
        K.onehot_grad(got, ids.astype(np.int32), dz)


def test_draw():
    """One inverse-CDF draw per row equals the numpy reference exactly (both sum in float64 in
    order): random rows with zero-mass symbols, u on and next to every cumulative boundary, u just
    below 1, a row without mass, a one-symbol vocabulary. Never a zero-mass symbol where the row has
    mass. Wrong dtypes and shapes raise."""
    rng = np.random.default_rng(11)
    p = (rng.random((400, 37)) ** rng.integers(1, 12, (400, 1))).astype(np.float32)
    p[rng.random(p.shape) < 0.3] = 0
    p[-1] = 0
    c = np.cumsum(p, axis=1, dtype=np.float64)
    cols = rng.integers(0, 37, 400)
    edge = c[np.arange(400), cols] / np.where(c[:, -1] > 0, c[:, -1], 1)
    for u in (rng.random(400), edge, np.nextafter(edge, 0), np.nextafter(edge, 1) % 1,
              np.zeros(400), np.full(400, 1 - 2 ** -53)):
        want, got = np.empty(400, np.int64), np.full(400, -1, np.int64)
        kernels.draw(p, u, want)
        K.draw(p, u, got)
        np.testing.assert_array_equal(got, want)
        assert (p[np.arange(399), got[:-1]] > 0)[c[:-1, -1] > 0].all()
    one, got = np.ones((3, 1), np.float32), np.empty(3, np.int64)
    K.draw(one, np.array([0.0, 0.5, 0.999]), got)
    assert got.tolist() == [0, 0, 0]
    with pytest.raises(TypeError, match="float64"):
        K.draw(p, u.astype(np.float32), got)
    with pytest.raises(ValueError, match="p \\(R, V\\)"):
        K.draw(p, u[:3], got)


@pytest.mark.parametrize("T,S,k,V,L", [(3, 32, 1024, 256, 1040), (2, 16, 13, 7, 13), (4, 5, 20, 9, 24), (1, 1, 3, 2, 3)])
def test_onehot_project(T, S, k, V, L):
    """out[t, :, s] = the first k of table row ids[t, s], exactly (a copy): whole 8 x 8 blocks, ragged
    rows and streams, padded table rows. Ids out of range, wrong dtypes and shapes raise."""
    rng = np.random.default_rng(T * S + k)
    table = rng.normal(0, 1, (V, L)).astype(np.float32)
    ids = rng.integers(0, V, (T, S))
    out = np.full((T, k, S), np.nan, np.float32)
    K.onehot_project(out, table, ids)
    np.testing.assert_array_equal(out, table[ids, :k].transpose(0, 2, 1))
    bad = ids.copy()
    bad[-1, -1] = V
    with pytest.raises(ValueError, match="out of range"):
        K.onehot_project(out, table, bad)
    with pytest.raises(TypeError, match="int64"):
        K.onehot_project(out, table, ids.astype(np.int32))
    with pytest.raises(ValueError, match="out \\(T, k, S\\)"):
        K.onehot_project(out, table[:, :k - 1].copy(), ids)  # rows shorter than k


@pytest.mark.parametrize("shape", [(3, 16, 32), (2, 13, 21), (4, 8, 1030), (5, 1, 7), (9, 7), (0, 4, 4), (2, 0, 3)])
def test_transpose(shape):
    """out = x with its last two axes swapped, exactly: whole 8 x 8 blocks, ragged edges, 2-D, empty."""
    x = np.random.default_rng(len(shape)).normal(0, 1, shape).astype(np.float32)
    out = np.full(shape[:-2] + shape[:-3:-1], np.nan, np.float32)
    K.transpose(out, x)
    np.testing.assert_array_equal(out, np.swapaxes(x, -1, -2))
    assert transpose_into(np.empty_like(out), x).tobytes() == out.tobytes()


def test_transpose_checks_shapes_and_falls_back_for_other_arrays():
    x = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="transpose"):
        K.transpose(np.zeros((2, 3, 4), np.float32), x)
    with pytest.raises(TypeError, match="float32"):
        K.transpose(np.zeros((2, 4, 3)), x)
    for shape in ((2, 3, 4), (2, 11, 1030)):  # float64, not C order: numpy's copy, whole and by eight rows
        y = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)[:, :, ::-1]
        got = transpose_into(np.empty((shape[0], shape[2], shape[1])), y)
        np.testing.assert_array_equal(got, np.swapaxes(y, 1, 2))


@pytest.mark.parametrize("G,R,n", [(1, 32, 24), (64, 3, 7), (5, 2, 1), (3, 17, 40)])
def test_batchnorm_kernels_give_numpys_bits(G, R, n):
    """Dense.normalize (training) and backward_norm through the kernels and through numpy: outputs,
    cached statistics, rolling statistics, the delta and the scale updates all equal to the bit."""
    from darknetpy.layers.connected import Dense
    rng = np.random.default_rng(G * R + n)
    z = rng.normal(0.5, 2, (G, R, n)).astype(np.float32)
    z[:, :, 0] = 3.0  # a constant feature: σ = 0
    dz = rng.normal(0, 1, (G, R, n)).astype(np.float32)
    runs = []
    for backend in ("numpy", "c"):
        with kernels.use(backend):
            dense = Dense(4, n, ["x"], True, np.random.default_rng(0))
            dense.scales[...] = rng.normal(1, 0.3, n).astype(np.float32) if not runs else runs[0][-1]
            kept = []
            out = dense.normalize(z.copy(), True, kept)
            cached = [a.copy() for a in kept[0]]
            dx = dense.backward_norm(dz.copy(), kept[0])
        runs.append([out, *cached, dense.rolling_mean, dense.rolling_variance, dx, dense.dscales, dense.db,
                     dense.scales.copy()])
    for a, b, name in zip(*runs, "out xhat sigma d rolling_mean rolling_variance dx dscales db scales".split()):
        np.testing.assert_array_equal(b, a, err_msg=name)


def test_batchnorm_kernels_check_shapes():
    f32 = lambda *s: np.zeros(s, np.float32)
    with pytest.raises(ValueError, match="rows >= 2"):
        K.bn_forward(f32(2, 1, 3), f32(2, 1, 3), f32(2, 1, 3), f32(4, 2, 3), f32(3), f32(3), 1e-6)
    with pytest.raises(ValueError, match="argument 4"):
        K.bn_forward(f32(2, 5, 3), f32(2, 5, 3), f32(2, 5, 3), f32(3, 2, 3), f32(3), f32(3), 1e-6)
    with pytest.raises(ValueError, match="argument 6"):
        K.bn_backward(f32(2, 5, 3), f32(2, 5, 3), f32(2, 3), f32(2, 3), f32(3), f32(2, 5, 2), f32(3))
    with pytest.raises(TypeError):
        K.bn_forward(f32(2, 5, 3))


def test_activations_use_the_kernels_for_float32_arrays_in_c_order(monkeypatch):
    """leaky/relie's in-place, gradient and delta forms call the kernels for float32 C-order arrays
    and only for them (their values: tests/test_activations.py)."""
    from darknetpy import activations
    calls = []
    for name in ("slope_act", "slope_grad"):
        kernel = kernels.C.ops[name]
        monkeypatch.setitem(kernels.C.ops, name, lambda *a, _name=name, _k=kernel: calls.append(_name) or _k(*a))
    x, y, d = (np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4) for _ in range(3))
    with kernels.use("c"):
        activations.in_place("leaky")(x, np.empty_like(x))
        activations.gradient_into("relie")(y, np.empty_like(y))
        activations.delta_through("leaky")(d, y, np.empty_like(y))
        assert calls == ["slope_act", "slope_grad", "slope_grad"]
        activations.in_place("leaky")(x.astype(np.float64), np.empty((3, 4)))
        activations.in_place("relie")(x.T, np.empty_like(x.T))
        activations.in_place("tanh")(x, np.empty_like(x))
    assert len(calls) == 3


def test_slope_kernels_check_their_arguments():
    """(Their values: tests/test_activations.py, bit for bit against numpy and Darknet.)"""
    x = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="slope"):
        K.slope_act(x, 1.5)
    with pytest.raises(TypeError, match="float32"):
        K.slope_act(x.astype(np.float64), 0.1)
    with pytest.raises(ValueError, match="expected"):
        K.slope_grad(x, np.zeros(7, np.float32), 0.1)
    with pytest.raises(ValueError, match="expected"):
        K.slope_grad(x, x.copy(), 0.1, np.zeros(9, np.float32))
    with pytest.raises(TypeError):
        K.slope_grad(x, x)


@pytest.mark.parametrize("activation", ["leaky", "relie"])
@pytest.mark.parametrize("shortcut", [0, 1])
def test_rnn_step_kernels_give_numpys_bits(activation, shortcut, write_cfg):
    """[rnn]'s step functions forward and back (layers/rnn.py, RNN.step_functions): the kernels
    against the numpy references, bit for bit, on values around zero (signed zeros included)."""
    cfg = write_cfg(f"[net]\ninputs=4\n[rnn]\noutput=8\nactivation={activation}\nshortcut={shortcut}\n")
    rng = np.random.default_rng(shortcut)
    b, bias, x, s, w, y = arrays(rng, *[(8, 32)] * 6, low=-1, high=1)
    b[0, :4] = y[0, :4] = [0.0, -0.0, 1e-40, -1e-40]
    extra = (s,) if shortcut else ()
    results = []
    for backend in ("numpy", "c"):
        with kernels.use(backend):
            step, back = Network(cfg).layers[0].step_functions(np.empty_like(b))
            assert (step.func is K.rnn_step) == (backend == "c")
            out = [b.copy(), np.full_like(b, np.nan), s.copy(), np.full_like(b, np.nan)]
            step(out[0], bias, x, out[1], *extra)
            back(out[2], w, y, out[3], *extra)
        results.append(out)
    for got, want, name in zip(*reversed(results), ["b", "s1", "ds1", "d"]):
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_rnn_step_kernels_check_their_arguments():
    a = np.zeros((8, 4), np.float32)
    with pytest.raises(ValueError, match="expected"):
        K.rnn_step(0.1, a, a, a, np.zeros(31, np.float32))
    with pytest.raises(ValueError, match="slope"):
        K.rnn_back(-1.0, a, a, a, a)
    with pytest.raises(TypeError, match="rnn_back"):
        K.rnn_back(0.1, a, a, a)
    with pytest.raises(TypeError, match="float32"):
        K.rnn_step(0.1, a, a, a.astype(np.float64), a)


@pytest.mark.parametrize("groups,temperature", [(1, 1.0), (1, 0.7), (4, 1.0), (2, 1.6)])
def test_softmax_and_cross_entropy(groups, temperature, write_cfg):
    """The training softmax and its loss (cost and delta) against the numpy code of
    layers/softmax.py, on logits from -30 to 30 (saturated rows included)."""
    cfg = write_cfg(f"[net]\ninputs=16\n[softmax]\ngroups={groups}\ntemperature={temperature}\n")
    rng = np.random.default_rng(groups)
    x = rng.uniform(-30, 30, (5, 3, 16)).astype(np.float32)
    y = rng.integers(0, 16, (5, 3))
    results = []
    for backend in ("numpy", "c"):
        with kernels.use(backend):
            layer = Network(cfg).layers[0]
            p = layer.forward(x, True, []).copy()
            cost, delta = layer.loss(p, y)
        results.append((p, cost, delta.copy()))
    (p0, c0, d0), (p1, c1, d1) = results
    np.testing.assert_allclose(p1, p0, rtol=2e-6, atol=1e-12)
    np.testing.assert_allclose(c1, c0, rtol=1e-6)
    np.testing.assert_allclose(d1, d0, rtol=2e-6, atol=2.4e-7)  # 1 - p near p = 1: 2 ulp of 1
    np.testing.assert_allclose(p1.reshape(5, 3, groups, -1).sum(axis=-1), 1, rtol=1e-6)


NETS = {
    "lstm": "[lstm]\noutput=6\n",
    "lstm-bn": "[lstm]\noutput=6\nbatch_normalize=1\n",
    "gru": "[gru]\noutput=5\n",
    "gru-tanh-bn": "[gru]\noutput=5\ntanh=1\nbatch_normalize=1\n",
    "stack": "[lstm]\noutput=7\n[gru]\noutput=4\n",
    "stack-adam": "adam=1\n[lstm]\noutput=7\n[gru]\noutput=4\n",
    "rnn-leaky": "[rnn]\noutput=8\nactivation=leaky\n",
    "rnn-relie-bn-shortcut": "[rnn]\noutput=8\nactivation=relie\nbatch_normalize=1\nshortcut=1\n",
}


def check_training_step_with_and_without_kernels(cfg, data, bn, prepare=lambda net: None):
    """Two float32 nets from `cfg` with the same weights (`prepare(net)` may set more) and `data`,
    one through the kernels and one through numpy: the same costs and accumulated updates over the
    datums (the state carries over), then the same weights after an update."""
    results = []
    for backend in ("numpy", "c"):
        with kernels.use(backend):
            net = Network(cfg, seed=1)
            prepare(net)
            costs = [net.accumulate(x, y) for x, y in data]
            updates = {k: v.copy() for k, v in net.params(updates=True).items()}
            net.update()
        results.append((costs, updates, {k: v.copy() for k, v in net.params().items()}))
    (want_costs, want, want_params), (got_costs, got, got_params) = results
    np.testing.assert_allclose(got_costs, want_costs, rtol=1e-5)
    for key in want:
        scale = max(np.abs(want[key]).max(), 1e-3) * (3e-4 if bn else 1e-5)
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=scale, err_msg=key)
    for key in want_params:
        np.testing.assert_allclose(got_params[key], want_params[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("ids", [True, False])
@pytest.mark.parametrize("body", NETS.values(), ids=NETS.keys())
def test_training_step_with_and_without_kernels(body, ids, write_cfg):
    """check_training_step_with_and_without_kernels over two datums, SGD (Adam for stack-adam)."""
    cfg = write_cfg("[net]\nbatch=3\ntime_steps=4\ninputs=9\n" + body + "[connected]\noutput=9\nactivation=linear\n[softmax]\n")
    rng = np.random.default_rng(3)
    data = [(rng.integers(0, 9, (4, 3)) if ids else rng.uniform(-1, 1, (4, 3, 9)).astype(np.float32),
             rng.integers(0, 9, (4, 3))) for _ in range(2)]
    check_training_step_with_and_without_kernels(cfg, data, "batch_normalize" in body)


PANEL_SHAPES = [(1, 5, 3), (2, 20, 16), (7, 33, 47), (8, 64, 32), (9, 256, 1024), (17, 100, 200), (32, 1024, 256)]


@pytest.mark.skipif(K is None or not hasattr(K, "panel_matmul"), reason="panel_matmul's C form needs AVX-512")
@pytest.mark.parametrize("M,Kdim,N", PANEL_SHAPES)
def test_panel_matmul(M, Kdim, N):
    """out = x W + b from W packed in 32-column panels, x as rows and as a feature-major transpose,
    against the float64 product: within float32 summation's error bound, K ulp of Σ|x||W| + |b|
    (a wrong column or row is off by O(1)). Row counts around the 8-row tiles, column counts
    around the 16/32-column masks; the packing zero past N."""
    rng = np.random.default_rng(M * N)
    x, W, b = arrays(rng, (M, Kdim), (Kdim, N), (N,))
    want = x.astype(np.float64) @ W + b
    bound = Kdim * 2.0 ** -24 * (np.abs(x).astype(np.float64) @ np.abs(W) + np.abs(b))
    Wp = kernels.pack_panels(W)
    P = -(-N // 32)
    assert Wp.shape == (P, Kdim, 32)
    cols = np.arange(P * 32)
    np.testing.assert_array_equal(Wp.transpose(1, 0, 2).reshape(Kdim, -1)[:, cols < N], W)
    assert not Wp.transpose(1, 0, 2).reshape(Kdim, -1)[:, cols >= N].any()
    for name, xin in (("panel_matmul", x), ("panel_matmul_t", np.ascontiguousarray(x.T))):
        for fn in (getattr(kernels, name), getattr(K, name)):
            got = np.full((M, N), np.nan, np.float32)
            fn(got, xin, Wp, b)
            assert (np.abs(got - want) <= bound).all(), (name, fn, np.abs(got - want).max())
    with pytest.raises(ValueError, match="panel_matmul"):
        K.panel_matmul(np.empty((M, N + 1), np.float32), x, Wp, b)


@pytest.mark.skipif(K is None or not hasattr(K, "panel_matmul"), reason="panel_matmul's C form needs AVX-512")
def test_panel_matmul_threads_and_fork(tmp_path):
    """With 3 threads asked (OPENBLAS_NUM_THREADS), 7 panels split 3 ways and 2 panels on one thread
    give the product; a child forked after the workers started makes its own and does not hang."""
    code = """if True:
        import os, numpy as np
        from darknetpy import kernels, _kernels as K
        assert K.panel_threads(0) == 3, K.panel_threads(0)
        rng = np.random.default_rng(0)
        def check(M, Kdim, N):
            x, W, b = (rng.uniform(-1, 1, s).astype(np.float32) for s in ((M, Kdim), (Kdim, N), (N,)))
            out = np.empty((M, N), np.float32)
            K.panel_matmul(out, x, kernels.pack_panels(W), b)
            assert np.abs(out - (x.astype(np.float64) @ W + b)).max() < 1e-4
        check(9, 300, 200); check(3, 40, 47)
        pid = os.fork()
        if pid == 0:
            check(9, 300, 200)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        check(9, 300, 200)
        print("ok")
    """
    env = dict(os.environ, OPENBLAS_NUM_THREADS="3")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                         cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr


needs_panel = pytest.mark.skipif(K is None or not hasattr(K, "panel_matmul"),
                                 reason="panel_matmul's C form needs AVX-512")


@needs_panel
@pytest.mark.parametrize("S", [3, 5, 8, 17, 32])
def test_step_product_on_one_thread_is_the_panel_product(monkeypatch, S):
    """A training loop's per-step product A x on one thread runs through the packed panels (A of
    160 rows: five panels, the last one full; 70: a ragged last panel) and equals the float64
    product within float32 summation's bound; an x that is not C-contiguous takes np.matmul."""
    with kernels.use("c"):  # whatever DARKNETPY_KERNELS says
        one_thread_panel_product(monkeypatch, S)


def one_thread_panel_product(monkeypatch, S):
    monkeypatch.setattr(kernels, "threads", lambda: 1)
    rng = np.random.default_rng(S)
    for m, Kdim in ((160, 40), (70, 300)):
        A, x = arrays(rng, (m, Kdim), (Kdim, S))
        product = base.step_product(A, S)
        assert product.__name__ == "product"  # not the np.matmul fallback
        want = A.astype(np.float64) @ x
        bound = Kdim * 2.0 ** -24 * (np.abs(A).astype(np.float64) @ np.abs(x))
        for xin in (x, np.asfortranarray(x)):
            out = np.full((m, S), np.nan, np.float32)
            assert product(xin, out) is out
            assert (np.abs(out - want) <= bound).all(), np.abs(out - want).max()
    monkeypatch.setattr(kernels, "threads", lambda: 2)  # more threads: OpenBLAS shares the work
    assert base.step_product(A, S).__name__ == "matmul"
    monkeypatch.setattr(kernels, "threads", lambda: 1)  # 2 streams: a matrix of a million entries
    assert base.step_product(np.zeros((1024, 1024), np.float32), 2).__name__ == "product"
    assert base.step_product(np.zeros((1024, 1023), np.float32), 2).__name__ == "matmul"


@needs_panel
@pytest.mark.parametrize("layer", ["lstm", "gru", "rnn"])
def test_training_on_one_thread_equals_numpys_matmuls(tmp_path, monkeypatch, layer):
    """A training datum on one thread (the step loops' products on the panel kernel) against the same
    datum with np.matmul: outputs, cost and every accumulated gradient agree to float32 rounding."""
    cfg = tmp_path / "net.cfg"
    tanh = "activation=tanh\n" if layer == "rnn" else ""
    cfg.write_text(f"[net]\ninputs=20\nbatch=5\ntime_steps=6\n[{layer}]\noutput=40\n{tanh}[{layer}]\noutput=70\n"
                   f"{tanh}[connected]\noutput=20\nactivation=linear\n[softmax]\n")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 20, (6, 5)), rng.integers(0, 20, (6, 5))
    runs = []
    for threads in (1, 2):
        monkeypatch.setattr(kernels, "threads", lambda threads=threads: threads)
        net = Network(cfg, seed=3)
        cost = net.accumulate(x, y)
        runs.append((cost, [u.copy() for _, u, _ in net.slots()]))
    (cost1, grads1), (cost2, grads2) = runs
    assert cost1 == pytest.approx(cost2, rel=1e-6)
    for g1, g2 in zip(grads1, grads2):
        np.testing.assert_allclose(g1, g2, rtol=1e-4, atol=1e-6 * np.abs(g2).max())


def test_switch_off_by_environment(tmp_path):
    """DARKNETPY_KERNELS=0 runs the numpy code; float64 nets always do. (The child runs in tmp_path:
    from the repository root `import darknetpy` would find the source tree, which has no build.)"""
    code = ("import numpy; from darknetpy import kernels as k; "
            "import darknetpy.layers.lstm as l; print(k.get('lstm_step', numpy.zeros(1, numpy.float32)) is not l.lstm_step)")
    for value, expected in (("0", "False"), ("1", "True")):
        env = dict(os.environ, DARKNETPY_KERNELS=value)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                             cwd=tmp_path)
        assert out.stdout.strip() == expected
    assert kernels.get("lstm_step", np.zeros(1)) is lstm.lstm_step
