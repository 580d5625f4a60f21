"""[sru] (darknetpy's extension, layers/sru.py): the forward against a float64 reference written
here from DESIGN.md's equations; exact BPTT by float64 finite differences on every entry (the
helpers and tolerances of test_gradients.py), vf and vr included, with and without batchnorm and
the ws projection, alone and in stacks with the other kinds; the C recurrence against its numpy
reference; the stepper, the weights file and `info`; and the commands (generate in every mode,
valid, vec, train with resume, MPI and --vocab chars) on small nets.
"""
import csv
import functools
import io
import os
import subprocess
import sys

import numpy as np
import pytest

import darknetpy
from darknetpy import kernels as kernelmod
from conftest import peaked_model, read_weights
from conftest import run_cli as run
from darknetpy.layers import sru as srumod
from darknetpy.network import Network
from test_gradients import check_gradients, data, head, random_net, randomize_vectors
from test_generation import at_temperature, generated, replay
from test_kernels import K, check_training_step_with_and_without_kernels
import test_mpi
from test_mpi import max_diff, needs_mpi
from test_train import TEXT, ok
from test_train import write_cfg as train_cfg

V = ("vf", "vr")
sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731


def is_v(key):
    return key.rsplit(".", 1)[1] in V


build = functools.partial(random_net, vectors=V)  # vf and vr ±0.8 too (they start at 0)


def sru(n, bn=0, activation="linear"):
    return f"[sru]\noutput={n}\nbatch_normalize={bn}\nactivation={activation}\n"


# ---- forward: DESIGN.md's equations, written out here ---------------------------------------------

def reference_forward(p, x, n, bn, train, g=lambda c: c, layer="layer0"):
    """h over the steps of one [sru] (`layer` of params p) from a zero cell, float64; x (T, S, inputs)."""
    def sub(name, v):
        z = v @ p[f"{layer}.{name}.weights"].T
        if bn:
            mean, var = (z.mean(0), z.var(0, ddof=1)) if train else \
                (p[f"{layer}.{name}.rolling_mean"], p[f"{layer}.{name}.rolling_variance"])
            z = p[f"{layer}.{name}.scales"] * (z - mean) / (np.sqrt(var) + 1e-6)
        return z + p[f"{layer}.{name}.biases"]
    c, out = np.zeros((x.shape[1], n)), []
    for xt in x:
        f = sig(sub("wf", xt) + p[f"{layer}.vf"] * c)
        r = sig(sub("wr", xt) + p[f"{layer}.vr"] * c)
        c = f * c + (1 - f) * sub("w", xt)
        s = xt if xt.shape[1] == n else sub("ws", xt)
        out.append(r * g(c) + (1 - r) * s)
    return np.array(out)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("bn", [0, 1])
@pytest.mark.parametrize("n", [4, 5])  # 5 = inputs: no ws, the highway is x itself
def test_forward_is_the_sru_formula(n, bn, train, write_cfg):
    net = build(write_cfg, "[net]\ninputs=5\nbatch=3\ntime_steps=4\n" + sru(n, bn, "tanh") + head())
    p = {k: np.array(v, copy=True) for k, v in net.params().items()}
    assert ("layer0.ws.weights" in p) == (n != 5)
    x, _ = data(net)
    got = net.layers[0].forward(x, train, net.layers[0].fresh_state(x.shape[1]))
    np.testing.assert_allclose(got, reference_forward(p, x, n, bn, train, np.tanh), rtol=1e-12, atol=1e-13)
    for k in V:  # not vacuous: vf and vr change the output
        p["layer0." + k][...] = 0
    assert np.abs(got - reference_forward(p, x, n, bn, train, np.tanh)).max() > 1e-3


# ---- exact BPTT ---------------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ["linear", "tanh", "leaky"])
@pytest.mark.parametrize("bn", [0, 1])
@pytest.mark.parametrize("n", [4, 5])
def test_gradients_one_layer(n, bn, activation, write_cfg):
    net = build(write_cfg, "[net]\ninputs=5\nbatch=3\ntime_steps=4\n" + sru(n, bn, activation) + head())
    nums = check_gradients(net, *data(net))
    for k in V:
        assert np.abs(nums[f"layer0.{k}"]).max() > 1e-4, k


@pytest.mark.parametrize("bn", [0, 1])
@pytest.mark.parametrize("body", [
    "[lstm]\noutput=4\n{sru}[connected]\noutput=6\nactivation=linear\n[softmax]\n",
    "{sru}[gru]\noutput=3\n[rnn]\noutput=4\nactivation=tanh\n" + head(),
    "{sru}" + sru(4, 0, "tanh") + head()])
def test_gradients_in_a_stack(body, bn, write_cfg):
    """[sru] above and below the other kinds, float rows in: layer deltas pass through it both ways."""
    net = build(write_cfg, "[net]\ninputs=5\nbatch=3\ntime_steps=4\n" + body.format(sru=sru(4, bn)))
    nums = check_gradients(net, *data(net))
    for key in nums:
        if is_v(key):
            assert np.abs(nums[key]).max() > 1e-5, key


@pytest.mark.parametrize("n", [4, 5])
def test_gradients_ids_input(n, write_cfg):
    """One-hot ids in: a row gather for the sub-layers and, with inputs = output, one-hot rows as s."""
    net = build(write_cfg, "[net]\ninputs=5\nbatch=2\ntime_steps=3\n" + sru(n) + "[sru]\noutput=3\n" + head())
    rng = np.random.default_rng(7)
    check_gradients(net, rng.integers(0, 5, (3, 2)), rng.integers(0, 6, (3, 2)))


# ---- the C recurrence against the numpy reference ------------------------------------------------

needs_kernels = pytest.mark.skipif(K is None, reason="darknetpy._kernels not built (no C compiler at install)")
SHAPES = [(64, 32, 256, 3), (7, 3, 5, 4), (3, 1, 100, 3), (2, 3, 600, 3)]  # T, S, n, k (600: sru_back sums in two pieces)
# float32 rounding carried through the cell over T steps: at T = 64 the cells (up to 3 here) differ
# by up to 1.6e-6 (7 ulp), the outputs by 1.2e-6. A kernel that is wrong, even subtly, is off by far
# more: see r_sees_the_new_cell and the dropped carry below.
TOL = dict(rtol=1e-6, atol=3e-6)


def step_inputs(T, S, n, k, seed):
    """Z, v, C, s for sru_step: v = vf | vr | biases; C[0] the cell before, C[1:] NaN; s the highway
    input when k = 3."""
    rng = np.random.default_rng(seed)
    Z = rng.uniform(-3, 3, (T, S, k * n)).astype(np.float32)
    v = rng.uniform(-0.8, 0.8, (2 + k) * n).astype(np.float32)
    C = np.full((T + 1, S, n), np.nan, np.float32)
    C[0] = rng.uniform(-1, 1, (S, n))
    s = rng.uniform(-1, 1, (T, S, n)).astype(np.float32)
    return Z, v, C, (s,) if k == 3 else ()


def run_step(fn, Z, v, C, s, with_h, g=0):
    """Z, C (and H, for g = sru.KERNEL_G[g]) after fn on copies; H is NaN where it is not written."""
    Z, C, H = Z.copy(), C.copy(), np.full(C[1:].shape, np.nan, np.float32)
    fn(Z, v, C, *((H, *s) if with_h else ()), g=g)
    return Z, C, H


def r_sees_the_new_cell(Z, v, C, H=None, *s, g=0):
    """A plausible bug: r computed from c' instead of c."""
    n = C.shape[2]
    no_vr = v.copy()
    no_vr[n:2 * n] = 0
    for t in range(Z.shape[0]):
        z = Z[t]
        wr = z[:, 2 * n:3 * n] + v[4 * n:5 * n]  # with its bias
        srumod.sru_step(Z[t:t + 1], no_vr, C[t:t + 2])
        z[:, 2 * n:3 * n] = srumod.sigmoid(wr + v[n:2 * n] * C[t + 1])
    if H is not None:
        s = Z[..., 3 * n:] if not s else s[0]
        H[...] = Z[..., 2 * n:3 * n] * ((np.tanh(C[1:]) if g else C[1:]) - s) + s


@needs_kernels
def test_the_layer_file_adds_its_ops_to_the_table():
    """kernels.register put the numpy references and their C forms in the table: `get` hands the
    C form out for float32 arrays in C order, the reference for float64 or under use("numpy")."""
    Z, v, C, _ = step_inputs(2, 2, 4, 4, 0)
    for name in ("sru_step", "sru_back"):
        with kernelmod.use("c"):
            assert kernelmod.get(name, Z, v, C) is getattr(K, name)
            assert kernelmod.get(name, Z.astype(np.float64)) is getattr(srumod, name)
        with kernelmod.use("numpy"):
            assert kernelmod.get(name, Z, v, C) is getattr(srumod, name)


@needs_kernels
@pytest.mark.parametrize("with_h,g", [(False, 0), (True, 0), (True, 1)])  # g: linear, tanh
@pytest.mark.parametrize("T,S,n,k", SHAPES)
def test_sru_step_kernel(T, S, n, k, with_h, g):
    Z, v, C, s = step_inputs(T, S, n, k, T + S + n)
    want, got = run_step(srumod.sru_step, Z, v, C, s, with_h, g), run_step(K.sru_step, Z, v, C, s, with_h, g)
    for a, b, name in zip(got, want, "ZCH"):
        np.testing.assert_allclose(a, b, err_msg=name, **TOL)
    assert np.isnan(got[2]).all() != with_h
    # The tolerance catches a wrong kernel: r from c' differs by far more.
    bad = run_step(r_sees_the_new_cell, Z, v, C, s, with_h, g)
    assert not np.allclose(bad[0], want[0], **TOL)
    if with_h:
        assert not np.allclose(bad[2], want[2], **TOL)
    np.testing.assert_array_equal(bad[1], want[1])  # (only r is wrong)


def back_inputs(T, S, n, k, seed):
    Z, v, C, s = step_inputs(T, S, n, k, seed)
    srumod.sru_step(Z, v, C)
    rng = np.random.default_rng(seed + 1)
    dZ = rng.uniform(-1, 1, Z.shape).astype(np.float32)
    dh = rng.uniform(-1, 1, C[1:].shape).astype(np.float32)
    return dZ, Z, C, v, dh, s


def run_back(fn, dZ, Z, C, v, dh, s, fused, g=0):
    """dZ, dv (and ds) after fn on copies; without `fused` dZ comes prepared, with it from dh (the
    delta of h' for g = sru.KERNEL_G[g]). dv holds 0.5 before: the kernels add to it."""
    dv = np.full(v.size, 0.5, np.float32)  # vf's, vr's, the biases' gradients
    dZ, ds = dZ.copy(), np.full(dh.shape, np.nan, np.float32)
    fn(dZ, Z, C, v, dv, *((dh, *s, ds)[:3 if s else 1] if fused else ()), g=g)
    return dZ, dv, ds


@needs_kernels
@pytest.mark.parametrize("fused,g", [(False, 0), (True, 0), (True, 1)])  # g: linear, tanh
@pytest.mark.parametrize("T,S,n,k", SHAPES)
def test_sru_back_kernel(T, S, n, k, fused, g):
    args = back_inputs(T, S, n, k, 2 * T + S)
    want, got = run_back(srumod.sru_back, *args, fused, g), run_back(K.sru_back, *args, fused, g)
    np.testing.assert_allclose(got[0], want[0], err_msg="dZ", **TOL)
    np.testing.assert_allclose(got[2], want[2], err_msg="ds", **TOL)
    if not fused or k == 3:
        np.testing.assert_array_equal(got[0][..., 3 * n:], args[0][..., 3 * n:])  # the ws block is left alone
    if fused:  # δs = dh⊙(1 − r)
        ds = got[0][..., 3 * n:] if k == 4 else got[2]
        np.testing.assert_allclose(ds, args[4] * (1 - args[1][..., 2 * n:3 * n]), rtol=1e-6, atol=1e-7)
    # dv sums T*S terms: the two orders of summation differ by float32 rounding of that sum
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6 * T * S)
    np.testing.assert_allclose(got[1][2 * n:], 0.5 + want[0].sum(axis=(0, 1), dtype=np.float64), rtol=1e-5,
                               atol=1e-6 * T * S)  # the biases' gradients: the sums of the deltas
    # Not vacuous: without the carry into the step before (the recurrence's delta) dZ is far off.
    if T > 1 and not fused:
        dropped = run_back(lambda dZ, Z, C, v, dv, g: [srumod.sru_back(dZ[t:t + 1], Z[t:t + 1], C[t:t + 2], v, dv)
                                                       for t in reversed(range(T))], *args, fused)
        assert not np.allclose(dropped[0], want[0], **TOL)


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("T,S,n,g", [(64, 32, 256, 0), (3, 1, 100, 0), (7, 3, 20, 1)])
def test_the_highway_given_as_ids_is_their_one_hot_rows(T, S, n, g, backend):
    """A one-hot input's highway s given as its ids (T, S): forward and back as with the one-hot
    rows written out here, and backward writes no δs (the ids take none). With the input's W, the
    kernels gather Z from it forward and add the one-hot weight gradient to dW backward: as Z =
    one-hot rows @ W before the step, and dW += their transpose @ the deltas; then dZ may hold only
    two steps (the first two are left in it)."""
    if backend == "c" and K is None:
        pytest.skip("darknetpy._kernels not built (no C compiler at install)")
    with kernelmod.use(backend):
        step, back = kernelmod.get("sru_step", np.float32([])), kernelmod.get("sru_back", np.float32([]))
    Z, v, C, _ = step_inputs(T, S, n, 3, 5)
    ids = np.random.default_rng(6).integers(0, n, (T, S))
    hot = (np.arange(n) == ids[..., None]).astype(np.float32)
    want, got = run_step(srumod.sru_step, Z, v, C, (hot,), True, g), run_step(step, Z, v, C, (ids,), True, g)
    for a, b, name in zip(got, want, "ZCH"):
        np.testing.assert_allclose(a, b, err_msg=name, **TOL)
    W = np.random.default_rng(8).uniform(-3, 3, (n, 3 * n)).astype(np.float32)
    want = run_step(srumod.sru_step, (hot @ W).astype(np.float32), v, C, (hot,), True, g)
    got = run_step(lambda Z, *args, g: step(Z, *args, W, g=g), np.full_like(Z, np.nan), v, C, (ids,), True, g)
    for a, b, name in zip(got, want, "ZCH"):
        np.testing.assert_allclose(a, b, err_msg=name + " gathered from W", **TOL)
    dZ, Z, C, v, dh, _ = back_inputs(T, S, n, 3, 7)
    want = run_back(srumod.sru_back, dZ, Z, C, v, dh, (hot,), True, g)
    dW0 = np.random.default_rng(9).uniform(-1, 1, (n, 3 * n)).astype(np.float32)
    for dW, steps in ((None, T), (dW0.copy(), T), (dW0.copy(), 2)):
        dv, got, before = np.full(v.size, 0.5, np.float32), dZ[:steps].copy(), dW0
        back(got, Z, C, v, dv, dh, ids, *(() if dW is None else (dW,)), g=g)
        np.testing.assert_allclose(got, want[0][:steps], err_msg="dZ", **TOL)
        np.testing.assert_allclose(dv, want[1], rtol=1e-5, atol=1e-6 * T * S)
        if dW is not None:  # sums of up to T S terms, in another order
            np.testing.assert_allclose(dW, before + hot.reshape(-1, n).T.astype(np.float64) @ want[0].reshape(-1, 3 * n),
                                       rtol=1e-5, atol=1e-6 * T * S)
    # Not vacuous: the ids' ones matter (all-zero rows give another δr)
    zeros = run_back(srumod.sru_back, dZ, Z, C, v, dh, (np.zeros_like(hot),), True, g)
    assert not np.allclose(zeros[0], want[0], **TOL)


needs_team = pytest.mark.skipif(K is None or not hasattr(K, "loop_threads"),
                                reason="the step loops' thread team (_loop.h) is not built on this CPU")


@needs_team
@pytest.mark.parametrize("k,g", [(3, 0), (3, 1), (4, 0)])
def test_kernels_give_the_same_bits_on_any_number_of_threads(k, g):
    """The streams are shared among the loops' team (each thread all steps of its streams; backward
    sums per group of ceil(S / 4) streams, added in order), but for backward with ids and dW the units
    (shares of 16, the last one short at n = 150): 1, 2 and 3 threads give the same bits, forward and back, with
    the highway as rows, as ids with W and dW (dZ of 2 steps), or the ws block; and they are
    sru_step's and sru_back's (a share left out or run twice would not be)."""
    T, S, n = 20, 7, 150  # T S n above the size from which a call runs on the team; 4 stream groups, the last short
    Z, v, C, s = step_inputs(T, S, n, k, 11)
    dZ, _, _, _, dh, _ = back_inputs(T, S, n, k, 12)
    ids = np.random.default_rng(13).integers(0, n, (T, S))
    W = np.random.default_rng(14).uniform(-3, 3, (n, k * n)).astype(np.float32)
    highways = [s] + ([(ids, W)] if k == 3 else [])
    wanted, runs = K.loop_threads(0), []
    try:
        for threads in (1, 2, 3):
            assert K.loop_threads(threads) == threads
            run = []
            for high in highways:
                Zt, Ct, Ht = run_step(lambda *a, g: K.sru_step(*a, *high[1:], g=g), Z, v, C, high[:1], True, g)
                dv, dZt = np.full(v.size, 0.5, np.float32), dZ[:2].copy() if len(high) == 2 else dZ.copy()
                rest = (high[0], W.copy()) if len(high) == 2 else (high[0], np.empty_like(dh)) if high else ()
                K.sru_back(dZt, Zt, Ct, v, dv, dh, *rest, g=g)
                run.append((Zt, Ct, Ht, dZt, dv) + rest[1:])
            runs.append(run)
    finally:
        K.loop_threads(wanted)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    want = run_step(srumod.sru_step, Z, v, C, s, True, g)
    for a, b, name in zip(runs[-1][0], want, "ZCH"):
        np.testing.assert_allclose(a, b, err_msg=name, **TOL)
    dv = np.full(v.size, 0.5, np.float32)
    want_dZ = dZ.copy()
    srumod.sru_back(want_dZ, want[0], want[1], v, dv, dh, *s, *((np.empty_like(dh),) if s else ()), g=g)
    np.testing.assert_allclose(runs[-1][0][3], want_dZ, err_msg="dZ", **TOL)
    np.testing.assert_allclose(runs[-1][0][4], dv, rtol=1e-5, atol=1e-6 * T * S)


@needs_kernels
def test_kernels_check_their_shapes():
    Z, v, C, (s,) = step_inputs(3, 2, 4, 3, 0)
    with pytest.raises(ValueError, match="sru"):
        K.sru_step(Z, v, C[:3])
    with pytest.raises(ValueError, match="sru"):
        K.sru_step(Z, v, C, C[1:].copy())  # k = 3: h' needs s
    with pytest.raises(ValueError, match="sru"):
        K.sru_step(Z[..., :8].copy(), v, C)  # k = 2
    with pytest.raises(ValueError, match="sru"):
        K.sru_back(Z[:2].copy(), Z, C, v, v.copy())
    ids, dh = np.zeros((3, 2), np.int64), C[1:].copy()
    with pytest.raises(ValueError, match="sru"):
        K.sru_back(Z.copy(), Z, C, v, v.copy(), dh, s)  # rows s: their delta ds is missing
    with pytest.raises(ValueError, match="sru"):
        K.sru_back(Z.copy(), Z, C, v, v.copy(), dh, ids, dh.copy())  # ids take no delta
    with pytest.raises(ValueError, match="sru"):
        K.sru_back(Z[:2].copy(), Z, C, v, v.copy(), dh, ids)  # two steps of dZ only with dW
    ids[1, 1] = 4  # n = 4
    with pytest.raises(ValueError, match="out of range"):
        K.sru_step(Z, v, C, C[1:].copy(), ids)


@needs_kernels
@pytest.mark.parametrize("body", [sru(6), sru(9, 1), sru(9) + sru(9, 1), sru(7, 0, "tanh") + sru(7, 1, "leaky"),
                                  sru(9, 0, "tanh") + sru(9, 0, "tanh"), "adam=1\n" + sru(5)])
def test_training_step_with_and_without_kernels(body, write_cfg):
    """test_kernels.py's network-level check (its tolerances), with random vf, vr."""
    cfg = write_cfg("[net]\nbatch=3\ntime_steps=4\ninputs=9\n" + body + "[connected]\noutput=9\nactivation=linear\n[softmax]\n")
    rng = np.random.default_rng(3)
    batches = [(rng.integers(0, 9, (4, 3)), rng.integers(0, 9, (4, 3))) for _ in range(2)]
    check_training_step_with_and_without_kernels(cfg, batches, "batch_normalize=1" in body,
                                                 lambda net: randomize_vectors(net, V))


# ---- the stepper ----------------------------------------------------------------------------------

@pytest.mark.parametrize("streams", [1, 9, 32])
@pytest.mark.parametrize("body", [sru(6), sru(9, 1, "tanh"), sru(6, 1) + sru(6, 0, "logistic")])
def test_stepper_matches_forward(body, streams, write_cfg):
    """Network.stepper (batchnorm folded, ids as table rows) gives what the inference forward does,
    float32, step by step with the state carried; a private stepper leaves the net's state alone."""
    net = build(write_cfg, "[net]\ninputs=9\nbatch=2\n" + body + head(9), dtype=np.float32)
    ids = np.random.default_rng(2).integers(0, 9, (12, streams))
    net.reset_state()
    want = [np.array(net.forward(i[None])[0], copy=True) for i in ids]
    for private in (True, False):
        net.reset_state()
        step = net.stepper(streams=streams, private=private)
        got = [np.array(step(i), copy=True) for i in ids]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        if private:
            assert all(not a.any() for a in net.stepper(streams).arrays())


# ---- weights, info ----------------------------------------------------------------------------------

def test_weights_layout_and_round_trip(write_cfg, tmp_path):
    """w, wf, wr, [ws] as Darknet connected sub-layers, then vf, vr; the file round-trips."""
    text = "[net]\ninputs=5\n" + sru(4, 1) + sru(4) + head()
    net = build(write_cfg, text, dtype=np.float32)
    path = tmp_path / "s.weights"
    net.save_weights(path)
    *_, payload = read_weights(path)
    p = net.params()
    sub = lambda layer, name, bn: [p[f"{layer}.{name}.{w}"] for w in  # noqa: E731
                                   ("biases", "weights") + (("scales", "rolling_mean", "rolling_variance") if bn else ())]
    want = [a for name in ("w", "wf", "wr", "ws") for a in sub("layer0", name, 1)] + [p["layer0.vf"], p["layer0.vr"]]
    want += [a for name in ("w", "wf", "wr") for a in sub("layer1", name, 0)] + [p["layer1.vf"], p["layer1.vr"]]
    want += [p["layer2.biases"], p["layer2.weights"]]
    np.testing.assert_array_equal(payload, np.concatenate([np.ravel(a) for a in want]))
    assert "layer1.ws.weights" not in p
    fresh = Network(write_cfg(text, "fresh.cfg"))
    fresh.load_weights(path)
    for key, v in p.items():
        np.testing.assert_array_equal(fresh.params()[key], v, err_msg=key)


def test_info_gives_the_size_and_says_the_file_is_darknetpys(write_cfg):
    cfg = write_cfg("[net]\ninputs=256\n[lstm]\noutput=8\n" + sru(8, 0, "tanh") + sru(6, 1) + head(256))
    r = run("info", cfg)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    n = 4 * (3 * (8 * 8 + 8) + 2 * 8) + 4 * (4 * (6 * 8 + 6 + 3 * 6) + 2 * 6)  # the two [sru] layers, bytes
    assert f"weights file: {20 + 4 * (4 * 8 * (256 + 8 + 2)) + n + 4 * (6 * 256 + 256)} bytes" in out
    assert "layer 1 [sru]: [sru] is darknetpy's extension" in out and "layer 2 [sru]:" in out
    assert "layer 0 [lstm]:" not in out
    assert "tanh" in out and "linear" in out


def test_unknown_activation_is_an_error_at_its_line(write_cfg):
    cfg = write_cfg("[net]\ninputs=5\n[sru]\noutput=4\nactivation=nope\n" + head())
    from conftest import assert_one_line_error
    assert_one_line_error(run("info", cfg), f"{cfg}:5:", "unknown activation 'nope'")


# ---- the commands on a small byte model -------------------------------------------------------------

CFG = "[net]\ninputs=256\nbatch=4\ntime_steps=8\nlearning_rate=0.01\nmomentum=0.9\ndecay=0\nmax_batches=100\n" \
      + sru(24, 0, "tanh") + sru(24) + "[connected]\noutput=256\nactivation=linear\n[softmax]\n"
SEED = b"To be"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(cfg, weights) of a small 2 x [sru] byte model whose distributions are peaked, not uniform."""
    return peaked_model(tmp_path_factory.mktemp("sru"), CFG)


def test_generate_darknet_sampler_with_srand(model):
    """The CLI's bytes are reproducible, differ with the seed, equal the library's, and each had
    probability under the replayed distribution."""
    cfg, weights = model
    outs = [run("generate", cfg, weights, "--srand", s, "--len", 60, "--seed", "To be").stdout for s in (4, 4, 5)]
    assert outs[0] == outs[1] != outs[2]
    assert outs[0] == darknetpy.load_network(cfg, weights).generate(seed=SEED, length=60, srand=4)
    out = generated(outs[0])
    p = replay(model, SEED, out)
    assert p[np.arange(len(out)), list(out)].min() > 1e-6


def test_generate_top_k_top_p_greedy_beam_samples(model):
    net = darknetpy.load_network(*model)
    out = generated(net.generate(seed=SEED, length=80, temperature=1.3, top_k=3, srand=1))
    p = at_temperature(replay(model, SEED, out), 1.3)
    chosen = p[np.arange(len(out)), list(out)]
    assert (p > chosen[:, None] * (1 + 1e-5)).sum(axis=1).max() < 3
    out = generated(net.generate(seed=SEED, length=80, temperature=0.9, top_p=0.5, srand=3))
    p = at_temperature(replay(model, SEED, out), 0.9)
    chosen = p[np.arange(len(out)), list(out)]
    assert np.where(p > chosen[:, None] * (1 + 1e-5), p, 0).sum(axis=1).max() < 0.5 + 1e-6
    greedy = generated(net.generate(seed=SEED, length=40, greedy=True))
    assert list(greedy) == list(replay(model, SEED, greedy).argmax(axis=1))
    beam = generated(net.generate(seed=SEED, length=40, beam=4))
    logp = lambda o: float(np.log(replay(model, SEED, o)[np.arange(len(o)), list(o)]).sum())  # noqa: E731
    assert len(beam) == 40 and logp(beam) >= logp(greedy) - 1e-4
    # N samples run as N streams of one stepper, each with its own state: greedy ones are all greedy's
    assert [generated(o) for o in net.generate(seed=SEED, length=40, greedy=True, samples=9)] == [greedy] * 9


def test_valid_is_the_bpc_of_the_reference_forward(model, tmp_path):
    cfg, weights = model
    text = b"To be, or not to be, that is the question.\n"
    (tmp_path / "t.txt").write_bytes(text)
    r = run("valid", cfg, weights, tmp_path / "t.txt", "--seed", "")
    assert r.returncode == 0, r.stderr.decode()
    count, bpc = r.stdout.decode().split()[:3:2]
    p = replay(model, text[:1], text[1:])
    assert int(count) == len(text) - 1
    assert abs(float(bpc) - float(-np.log2(p[np.arange(len(text) - 1), list(text[1:])]).mean())) < 1e-3


def test_vec_rows_are_the_first_layers_output(model):
    cfg, weights = model
    r = run("vec", cfg, weights, "-", "--seed", "x", stdin=b"hello world\nab\n")
    assert r.returncode == 0, r.stderr.decode()
    rows = list(csv.reader(io.StringIO(r.stdout.decode())))
    assert [row[0] for row in rows] == ["helloworld", "ab"] and all(len(row) == 25 for row in rows)
    p = {k: np.array(v, np.float64) for k, v in darknetpy.load_network(cfg, weights).params().items()}
    for row, line in zip(rows, (b"helloworld", b"ab")):
        x = np.eye(256)[list(b"x" + line + b" ")][:, None]
        want = reference_forward(p, x, 24, 0, False, np.tanh)[-1, 0]
        np.testing.assert_allclose(np.array(row[1:], float), want, rtol=1e-4, atol=2e-5)


# ---- training: resume, MPI, --vocab chars -----------------------------------------------------------

@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT * 30)
    return path


def test_resume_is_bit_exact(tmp_path, corpus):
    cfg = train_cfg(tmp_path, layer="sru", batch=16, layers_extra="activation=tanh\nbatch_normalize=1\n"
                    "[sru]\noutput=16\n", opt="adam=1\nlearning_rate=0.01\nclip=1")
    ok(cfg, corpus, "--srand", 5, "--max-batches", 15, "--backup", tmp_path / "whole")
    ok(cfg, corpus, "--srand", 5, "--max-batches", 7, "--backup", tmp_path / "part")
    ok(cfg, corpus, "--weights", tmp_path / "part" / "tiny_final.weights", "--max-batches", 15,
       "--backup", tmp_path / "rest")
    whole = (tmp_path / "whole" / "tiny_final.weights").read_bytes()
    assert (tmp_path / "part" / "tiny_final.weights").read_bytes() != whole
    assert (tmp_path / "rest" / "tiny_final.weights").read_bytes() == whole


def test_vocab_chars_trains_and_generates(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("héllo wörld, ça va? " * 80)
    size = len(set(corpus.read_text()))  # the cfg's inputs: exactly the vocabulary
    cfg = train_cfg(tmp_path, layer="sru", inputs=size, max_batches=30)
    r = run("train", cfg, corpus, "--vocab", "chars", "--srand", 1, "--backup", tmp_path / "b")
    assert r.returncode == 0, r.stderr.decode()
    r = run("generate", cfg, tmp_path / "b" / "tiny_final.weights", "--srand", 2, "--len", 40, "--seed", "h")
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()  # valid UTF-8, of the vocabulary's characters only
    assert out.startswith("h") and len(out) == 1 + 40 + 1 and set(out) <= set("héllo wörld, ça va?\n")


ranks = test_mpi.run  # the fixture: ranks(k, *train_args) runs `darknetpy train` on k ranks


@needs_mpi
def test_two_ranks_make_one_process_updates(tmp_path, ranks):
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text("[net]\ninputs=256\nbatch=8\nsubdivisions=2\ntime_steps=8\nmax_batches=12\nlearning_rate=0.05\n"
                   "momentum=0.9\ndecay=0.0005\nclip=0.5\n" + sru(16, 0, "tanh") + sru(16)
                   + "[connected]\noutput=256\nactivation=linear\n[softmax]\n")
    for k in (1, 2):
        r = ranks(k, cfg, "corpus.txt", "--srand", 7, "--backup", f"b{k}", "--max-batches", 6)
        assert r.returncode == 0, r.stderr
    assert max_diff(cfg, tmp_path / "b1/tiny_final.weights", tmp_path / "b2/tiny_final.weights") < 1e-4
    fresh = tmp_path / "fresh.weights"
    darknetpy.load_network(cfg).save_weights(fresh)
    assert max_diff(cfg, tmp_path / "b1/tiny_final.weights", fresh) > 1e-3


@needs_kernels
@pytest.mark.skipif(K is None or K.isa != "avx512f", reason="this CPU has no AVX-512: sru_step runs its AVX2 pass only")
@pytest.mark.parametrize("g", [0, 1])
def test_sru_step_on_avx512_gives_the_bits_of_its_avx2_pass(g, tmp_path):
    """On AVX-512 CPUs sru_step runs a 16-lane build of the AVX2 pass's loops (_sru.h,
    sru_step_wide): the same operations per element, so the same bits as the module a CPU without
    AVX-512 gets (DARKNETPY_KERNELS=avx2, in a child), for rows and one-hot ids with W, n not a
    multiple of 16 (the tail)."""
    T, S, n = 9, 5, 150
    Z, v, C, (s,) = step_inputs(T, S, n, 3, 21)
    ids = np.random.default_rng(22).integers(0, n, (T, S))
    W = np.random.default_rng(23).uniform(-3, 3, (n, 3 * n)).astype(np.float32)
    np.savez(tmp_path / "in.npz", Z=Z, v=v, C=C, s=s, ids=ids, W=W)
    code = ("import sys, numpy as np; from darknetpy import kernels; K = kernels._c; assert K.isa == 'avx2+fma'; "
            "a = dict(np.load(sys.argv[1])); g = int(sys.argv[3]); out = {}\n"
            "for name, high in (('rows', (a['s'],)), ('ids', (a['ids'], a['W']))):\n"
            "    Z, C, H = a['Z'].copy(), a['C'].copy(), np.full(a['s'].shape, np.nan, np.float32)\n"
            "    K.sru_step(Z, a['v'], C, H, *high, g=g); out.update({name + 'Z': Z, name + 'C': C, name + 'H': H})\n"
            "np.savez(sys.argv[2], **out)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"), str(g)],
                   env={**os.environ, "DARKNETPY_KERNELS": "avx2"}, check=True)
    narrow = np.load(tmp_path / "out.npz")
    for name, high in (("rows", (s,)), ("ids", (ids, W))):
        Zw, Cw, Hw = Z.copy(), C.copy(), np.full(s.shape, np.nan, np.float32)
        K.sru_step(Zw, v, Cw, Hw, *high, g=g)
        for got, key in ((Zw, "Z"), (Cw, "C"), (Hw, "H")):
            np.testing.assert_array_equal(got, narrow[name + key], err_msg=name + key)
