"""The recurrent layers' whole step loops in C (_loop.h: lstm_loop, gru_loop, rnn_loop and their
ways back) against their numpy references in the layer files, which run the loop step by step.

The C loops multiply in their own order (each thread's tile sums k in order) and compute exp and
tanh with _steps.h's polynomials, so they agree with the numpy references to float32 rounding:
every array within 1e-5 of its largest entry (values O(1); a wrong block, unit, step or stream is
off by O(1)). Shapes around the kernel's tiles: units in pairs and eights (odd and ragged counts),
streams in 32-column panels (33, 40), in the 16-column tile (1, 3, 16), and one thread's share of
256 units. The C loops exist on AVX-512 CPUs only; elsewhere the numpy loops run (with the per-step
C ops), which test_kernels.py's network-level comparison covers.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from darknetpy import kernels
from darknetpy.layers import gru, lstm, rnn
from darknetpy.network import Network

try:
    from darknetpy import _kernels as K
except ImportError:
    K = None
pytestmark = pytest.mark.skipif(K is None or not hasattr(K, "lstm_loop"), reason="the C step loops need AVX-512")

SHAPES = [(256, 32), (13, 40), (7, 3), (9, 1), (20, 33), (24, 16)]  # units, streams
T = 5


def close(got, want, name):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * max(np.abs(want).max(), 1.0), err_msg=name)


def run_both(reference, kernel, inputs, outputs, names, prepare=lambda arrays: None):
    """Both forms on copies of the same arrays (outputs zero, `prepare` sets more, e.g. the state
    before the first step); every array must agree (`close`). Returns the reference's arrays."""
    results = []
    for fn in (reference, kernel):
        arrays = [a.copy() for a in inputs] + [np.zeros_like(a) for a in outputs]
        prepare(arrays)
        with kernels.use("numpy"):
            fn(*arrays)
        results.append(arrays)
    for got, want, name in zip(results[1], results[0], names.split()):
        close(got, want, name)
    return results[0]


def weights(rng, rows, cols):
    return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)


def lstm_arrays(n, S, seed):
    """lstm_loop's inputs and outputs, and a function that sets the state before the first step."""
    rng = np.random.default_rng(seed)
    WT, XU = weights(rng, 4 * n, n), rng.standard_normal((T, 4 * n, S)).astype(np.float32)
    h0, c0 = rng.uniform(-1, 1, (2, n, S)).astype(np.float32)
    outs = [np.zeros((T, 4 * n, S), np.float32), np.zeros((T + 1, n, S), np.float32),
            np.zeros((T, n, S), np.float32), np.zeros((T + 1, n, S), np.float32), np.zeros((T, S, n), np.float32)]

    def prepare(a):
        a[3][0], a[5][0] = c0, h0
    return [WT, XU], outs, prepare


@pytest.mark.parametrize("peephole", [False, True])
@pytest.mark.parametrize("n,S", SHAPES)
def test_lstm_loop(n, S, peephole):
    """Forward then back through T steps: the gates, cells, tanh(c'), outputs (also as rows Y); the
    gate deltas as rows and their sums db, dh and dc at the start; the peephole deltas. The way back
    reads the output deltas as rows DY."""
    ins, outs, prepare = lstm_arrays(n, S, n * S)
    P = [np.random.default_rng(1).uniform(-0.5, 0.5, (3 * n, S)).astype(np.float32)] if peephole else []
    WT, XU, G, C, TC, H, Y = run_both(lambda *a: lstm.lstm_loop(*a[:7], *P), lambda *a: K.lstm_loop(*a[:7], *P),
                                      ins, outs, "WT XU G C TC H Y", prepare)
    np.testing.assert_array_equal(Y, H[1:].transpose(0, 2, 1))
    DY = np.random.default_rng(2).standard_normal((T, S, n)).astype(np.float32)
    W = np.ascontiguousarray(WT.T)
    back_outs = [np.zeros((T, S, 4 * n), np.float32), np.zeros(4 * n, np.float32), np.zeros((n, S), np.float32),
                 np.zeros((n, S), np.float32)]
    peep = lambda a: (P[0], a[9]) if peephole else ()  # noqa: E731
    dG, db = run_both(lambda *a: lstm.lstm_loop_back(*a[:9], *peep(a)), lambda *a: K.lstm_loop_back(*a[:9], *peep(a)),
                      [W, DY, G, C, TC], back_outs + ([np.zeros((3 * n, S), np.float32)] if peephole else []),
                      "W DY G C TC dG db dh dc dP")[5:7]
    np.testing.assert_allclose(db, dG.astype(np.float64).sum(axis=(0, 1)), rtol=0, atol=1e-5 * np.abs(dG).sum(axis=(0, 1)).max())


def gru_arrays(n, S, seed, train):
    rng = np.random.default_rng(seed)
    ins = [weights(rng, 2 * n, n), weights(rng, n, n), rng.standard_normal((T, 3 * n, S)).astype(np.float32)]
    outs = [np.zeros((T, 2 * n, S), np.float32), np.zeros((T, n, S), np.float32), np.zeros((T, n, S), np.float32),
            np.zeros((T + 1, n, S), np.float32), np.zeros((T, S, n), np.float32)]
    outs += [np.zeros((T, 3 * n, S), np.float32), np.zeros((T, S, n), np.float32)] if train else []
    h0 = rng.uniform(-1, 1, (n, S)).astype(np.float32)

    def prepare(a):
        a[6][0] = h0
    return ins, outs, prepare


@pytest.mark.parametrize("tanh,train", [(False, True), (True, True), (False, False)])
@pytest.mark.parametrize("n,S", SHAPES)
def test_gru_loop(n, S, tanh, train):
    """Forward (the outputs also as rows Y; in training also the deltas' factors P and r⊙h as rows)
    then back from output deltas as rows: the deltas as rows and their sums db, dh at the start."""
    ins, outs, prepare = gru_arrays(n, S, n * S, train)
    WzrT, WhT, XU, ZR, HC, RH, H, Y, *training = run_both(
        lambda *a: gru.gru_loop(tanh, *a), lambda *a: K.gru_loop(tanh, *a), ins, outs,
        "WzrT WhT XU ZR HC RH H Y P RHrows", prepare)
    np.testing.assert_array_equal(Y, H[1:].transpose(0, 2, 1))
    if not train:
        return
    DY = np.random.default_rng(2).standard_normal((T, S, n)).astype(np.float32)
    dP, db = run_both(gru.gru_loop_back, K.gru_loop_back,
                      [np.ascontiguousarray(WzrT.T), np.ascontiguousarray(WhT.T), DY, ZR, training[0]],
                      [np.zeros((T, S, 3 * n), np.float32), np.zeros(3 * n, np.float32), np.zeros((n, S), np.float32)],
                      "Wzr Wh DY ZR P dP db dh")[5:7]
    np.testing.assert_allclose(db, dP.astype(np.float64).sum(axis=(0, 1)), rtol=0, atol=1e-5 * np.abs(dP).sum(axis=(0, 1)).max())


@pytest.mark.parametrize("slope,shortcut", [(0.1, False), (0.01, True)])
@pytest.mark.parametrize("n,S", SHAPES)
def test_rnn_loop(n, S, slope, shortcut):
    """Forward (self's outputs, the states, also as rows St) from the input sub-layer's outputs as
    rows A, then back from the states' deltas as rows dS (completed in place): the pre-activation
    deltas as rows dB and their sums db; for leaky (0.1) and relie (0.01), with and without the
    shortcut."""
    rng = np.random.default_rng(n * S)
    ins = [weights(rng, n, n), rng.standard_normal((n, S)).astype(np.float32),
           rng.standard_normal((T, S, n)).astype(np.float32)]
    s0 = rng.uniform(-1, 1, (n, S)).astype(np.float32)

    def prepare(a):
        a[4][0] = s0
    WT, bias, A, B, Sf, St = run_both(
        lambda *a: rnn.rnn_loop(slope, shortcut, *a), lambda *a: K.rnn_loop(slope, shortcut, *a), ins,
        [np.zeros((T, n, S), np.float32), np.zeros((T + 1, n, S), np.float32), np.zeros((T, S, n), np.float32)],
        "WT bias A B Sf St", prepare)
    np.testing.assert_array_equal(St, Sf[1:].transpose(0, 2, 1))
    dS = rng.standard_normal((T, S, n)).astype(np.float32)
    dB, db = run_both(lambda *a: rnn.rnn_loop_back(slope, shortcut, *a), lambda *a: K.rnn_loop_back(slope, shortcut, *a),
                      [np.ascontiguousarray(WT.T), B, dS], [np.zeros((T, S, n), np.float32), np.zeros(n, np.float32)],
                      "W B dS dB db")[3:5]
    np.testing.assert_allclose(db, dB.astype(np.float64).sum(axis=(0, 1)), rtol=0, atol=1e-5 * np.abs(dB).sum(axis=(0, 1)).max())


def swap_first_blocks(a, n):
    """a (T, k n, S) with its first two gate blocks swapped: what a kernel reading the wrong block sees."""
    out = a.copy()
    out[:, :n], out[:, n:2 * n] = a[:, n:2 * n], a[:, :n]
    return out


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_a_loop_reading_the_wrong_block_or_step_is_caught(kind):
    """Not vacuous: the comparisons above fail for a C loop that mixes up two gate blocks of the
    input projections (lstm, gru) or reads the steps' inputs in the wrong order (rnn)."""
    n, S = 20, 33
    if kind == "lstm":
        ins, outs, prepare = lstm_arrays(n, S, 0)
        reference, broken = lstm.lstm_loop, lambda WT, XU, *o: K.lstm_loop(WT, swap_first_blocks(XU, n), *o)
        names = "WT XU G C TC H Y"
    elif kind == "gru":
        ins, outs, prepare = gru_arrays(n, S, 0, True)
        reference = lambda *a: gru.gru_loop(False, *a)  # noqa: E731
        broken = lambda Wzr, Wh, XU, *o: K.gru_loop(False, Wzr, Wh, swap_first_blocks(XU, n), *o)  # noqa: E731
        names = "WzrT WhT XU ZR HC RH H Y P RHrows"
    else:
        rng = np.random.default_rng(0)
        ins = [weights(rng, n, n), rng.standard_normal((n, S)).astype(np.float32),
               rng.standard_normal((T, S, n)).astype(np.float32)]
        outs = [np.zeros((T, n, S), np.float32), np.zeros((T + 1, n, S), np.float32), np.zeros((T, S, n), np.float32)]
        prepare = lambda a: None  # noqa: E731
        reference = lambda *a: rnn.rnn_loop(0.1, False, *a)  # noqa: E731
        broken = lambda WT, b, A, *o: K.rnn_loop(0.1, False, WT, b, np.ascontiguousarray(A[::-1]), *o)  # noqa: E731
        names = "WT bias A B Sf St"
    with pytest.raises(AssertionError):
        run_both(reference, broken, ins, outs, names, prepare)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_way_back_reading_the_wrong_steps_deltas_is_caught(kind):
    """Not vacuous: the ways back's comparisons fail for a C loop that reads the output deltas as
    rows DY of the wrong steps (reversed), the rows it now reads itself."""
    n, S = 20, 33
    DY = np.random.default_rng(2).standard_normal((T, S, n)).astype(np.float32)
    if kind == "lstm":
        ins, outs, prepare = lstm_arrays(n, S, 0)
        WT, _, G, C, TC, _, _ = run_both(lstm.lstm_loop, K.lstm_loop, ins, outs, "WT XU G C TC H Y", prepare)
        ins = [np.ascontiguousarray(WT.T), DY, G, C, TC]
        outs = [np.zeros((T, S, 4 * n), np.float32), np.zeros(4 * n, np.float32), np.zeros((n, S), np.float32),
                np.zeros((n, S), np.float32)]
        reference, kernel, names = lstm.lstm_loop_back, K.lstm_loop_back, "W DY G C TC dG db dh dc"
    else:
        ins, outs, prepare = gru_arrays(n, S, 0, True)
        WzrT, WhT, _, ZR, _, _, _, _, P, _ = run_both(lambda *a: gru.gru_loop(False, *a), lambda *a: K.gru_loop(False, *a),
                                                      ins, outs, "WzrT WhT XU ZR HC RH H Y P RHrows", prepare)
        ins = [np.ascontiguousarray(WzrT.T), np.ascontiguousarray(WhT.T), DY, ZR, P]
        outs = [np.zeros((T, S, 3 * n), np.float32), np.zeros(3 * n, np.float32), np.zeros((n, S), np.float32)]
        reference, kernel, names = gru.gru_loop_back, K.gru_loop_back, "Wzr Wh DY ZR P dP db dh"
    at = 1 if kind == "lstm" else 2

    def broken(*a):
        a = list(a)
        a[at] = np.ascontiguousarray(a[at][::-1])
        kernel(*a)
    run_both(reference, kernel, ins, outs, names)
    with pytest.raises(AssertionError):
        run_both(reference, broken, ins, outs, names)


def test_the_same_bits_on_any_number_of_threads():
    """Each unit belongs to one thread, whose tiles sum in k order: the loops give the same bits on
    1, 2 and 3 threads (a resumed run continues bit for bit whatever the threads), the bias
    gradients each thread sums for its units included ([lstm], [gru])."""
    ins, outs, prepare = lstm_arrays(40, 35, 5)
    wanted = K.loop_threads(0)
    runs = []
    try:
        for threads in (1, 2, 3):
            assert K.loop_threads(threads) == threads
            arrays = [a.copy() for a in ins] + [np.zeros_like(a) for a in outs]
            prepare(arrays)
            K.lstm_loop(*arrays)
            dG, db = np.zeros((T, 35, 160), np.float32), np.zeros(160, np.float32)
            dh, dc = np.zeros((40, 35), np.float32), np.zeros((40, 35), np.float32)
            DY = np.ones((T, 35, 40), np.float32)
            K.lstm_loop_back(np.ascontiguousarray(arrays[0].T), DY, *arrays[2:5], dG, db, dh, dc)
            gru_ins, gru_outs, gru_prepare = gru_arrays(40, 35, 5, True)
            g = [a.copy() for a in gru_ins] + [np.zeros_like(a) for a in gru_outs]
            gru_prepare(g)
            K.gru_loop(False, *g)
            dP, gdb, gdh = np.zeros((T, 35, 120), np.float32), np.zeros(120, np.float32), np.zeros((40, 35), np.float32)
            K.gru_loop_back(np.ascontiguousarray(g[0].T), np.ascontiguousarray(g[1].T), DY, g[3], g[8], dP, gdb, gdh)
            runs.append(arrays + [dG, db, dh, dc] + g + [dP, gdb, gdh])
    finally:
        K.loop_threads(wanted)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


def test_bad_arguments_raise():
    """Wrong shapes, counts and dtypes raise, naming the expected shapes, instead of touching other
    memory."""
    ins, outs, _ = lstm_arrays(8, 3, 0)
    WT, XU = ins
    G, C, TC, H, Y = outs
    with pytest.raises(ValueError, match="lstm_loop: WT"):
        K.lstm_loop(WT, XU, G, C[1:], TC, H, Y)
    with pytest.raises(ValueError, match="lstm_loop: WT"):
        K.lstm_loop(WT, XU, G, C, TC, H, Y.transpose(0, 2, 1).copy())
    with pytest.raises(TypeError, match="lstm_loop"):
        K.lstm_loop(WT, XU, G, C, TC, H)
    with pytest.raises(TypeError, match="float32"):
        K.lstm_loop(WT.astype(np.float64), XU, G, C, TC, H, Y)
    with pytest.raises(ValueError, match="lstm_loop_back: W"):
        K.lstm_loop_back(np.ascontiguousarray(WT.T), Y, G, C, TC, np.zeros((T, 3, 32), np.float32),
                         np.zeros(31, np.float32), C[0], C[0].copy())
    with pytest.raises(ValueError, match="gru_loop_back"):
        K.gru_loop_back(np.zeros((8, 16), np.float32), np.zeros((8, 8), np.float32), np.zeros((T, 3, 8), np.float32),
                        np.zeros((T, 16, 3), np.float32), np.zeros((T, 24, 3), np.float32),
                        np.zeros((T, 3, 23), np.float32), np.zeros(24, np.float32), np.zeros((8, 3), np.float32))
    with pytest.raises(ValueError, match="slope"):
        K.rnn_loop(1.5, False, np.zeros((8, 8), np.float32), np.zeros((8, 3), np.float32), np.zeros((T, 3, 8), np.float32),
                   np.zeros((T, 8, 3), np.float32), np.zeros((T + 1, 8, 3), np.float32), np.zeros((T, 3, 8), np.float32))
    with pytest.raises(ValueError, match="rnn_loop_back: W"):
        K.rnn_loop_back(0.1, False, np.zeros((8, 8), np.float32), np.zeros((T, 8, 3), np.float32),
                        np.zeros((T, 8, 3), np.float32), np.zeros((T, 3, 8), np.float32), np.zeros(8, np.float32))


def test_the_layers_run_the_c_loops_and_train_as_without_them(write_cfg, monkeypatch):
    """A training datum of [lstm], [gru] and [rnn] (leaky) through the C loops, and with them taken
    out of the table (a CPU without AVX-512: the numpy loops with the per-step C ops) give the same
    cost and gradients to float32 rounding; the C loops did run."""
    cfg = write_cfg("[net]\ninputs=20\nbatch=5\ntime_steps=6\n[lstm]\noutput=40\n[gru]\noutput=36\n"
                    "[rnn]\noutput=24\nactivation=leaky\n[connected]\noutput=20\nactivation=linear\n[softmax]\n")
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 20, (6, 5)), rng.integers(0, 20, (6, 5))
    names = [f"{k}_loop{b}" for k in ("lstm", "gru", "rnn") for b in ("", "_back")]
    calls = []
    for name in names:
        monkeypatch.setitem(kernels.C.ops, name, lambda *a, _n=name, _k=kernels.C.ops[name]: calls.append(_n) or _k(*a))
    runs = []
    for with_loops in (True, False):
        if not with_loops:
            for name in names:
                monkeypatch.delitem(kernels.C.ops, name)
        with kernels.use("c"):  # whatever DARKNETPY_KERNELS says
            net = Network(cfg, seed=3)
            cost = net.accumulate(x, y)
        runs.append((cost, [u.copy() for _, u, _ in net.slots()]))
    assert sorted(set(calls)) == sorted(names)
    (cost1, grads1), (cost2, grads2) = runs
    assert cost1 == pytest.approx(cost2, rel=1e-6)
    for g1, g2 in zip(grads1, grads2):
        np.testing.assert_allclose(g1, g2, rtol=0, atol=1e-5 * np.abs(g2).max())


def test_threads_and_fork(tmp_path):
    """With 3 threads asked (OPENBLAS_NUM_THREADS) the team runs; a child forked after its workers
    started makes its own and does not hang; 1 thread runs without workers."""
    code = """if True:
        import os, sys, numpy as np
        from darknetpy import kernels, _kernels as K  # kernels gives the team its threads
        threads = int(sys.argv[1])
        assert K.loop_threads(0) == threads, K.loop_threads(0)
        rng = np.random.default_rng(0)
        n, S, T = 48, 20, 4
        WT = rng.uniform(-0.2, 0.2, (4 * n, n)).astype(np.float32)
        XU = rng.uniform(-1, 1, (T, 4 * n, S)).astype(np.float32)
        def run():
            G, C, TC, H, Y = (np.zeros(s, np.float32) for s in ((T, 4 * n, S), (T + 1, n, S), (T, n, S), (T + 1, n, S),
                                                                 (T, S, n)))
            K.lstm_loop(WT, XU, G, C, TC, H, Y)
            return H
        first = run()
        pid = os.fork()
        if pid == 0:
            os._exit(0 if np.array_equal(run(), first) else 1)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        assert np.array_equal(run(), first)
        print("ok")
    """
    for threads in ("3", "1"):
        env = dict(os.environ, OPENBLAS_NUM_THREADS=threads)
        out = subprocess.run([sys.executable, "-c", code, threads], env=env, capture_output=True, text=True,
                             cwd=tmp_path)
        assert out.stdout.strip() == "ok", out.stderr


def test_importing_darknetpy_lets_openblas_workers_sleep_where_the_loops_run(tmp_path):
    """`import darknetpy`, before numpy loads OpenBLAS, sets OPENBLAS_THREAD_TIMEOUT=4 where the C
    step loops are built (their threads need the cores OpenBLAS's idle workers would spin on), and
    nothing where they are not, nor with DARKNETPY_KERNELS=0; a value the user set stays."""
    code = "import os, darknetpy, numpy; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_THREAD_TIMEOUT", "DARKNETPY_KERNELS")}
    env["PYTHONPATH"] = str(Path(kernels.__file__).parents[1])  # the darknetpy this test imported

    def timeout(**extra):
        out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(env, **extra),
                             capture_output=True, text=True, check=True)
        return out.stdout.strip()
    assert timeout() == ("4" if K is not None and hasattr(K, "loop_threads") else "None")
    assert timeout(OPENBLAS_THREAD_TIMEOUT="20") == "20"
    assert timeout(DARKNETPY_KERNELS="0") == "None"


@pytest.mark.parametrize("T_, k, S", [(5, 13, 3), (4, 1024, 32), (3, 40, 33)])
def test_to_steps_lays_out_a_projection_with_its_bias(T_, k, S):
    """kernels.to_steps, the C form (on the loops' team from 16384 elements: the middle shape) and
    the numpy reference, against the layout written out step by step: out[t] = F's columns of step
    t plus the bias. One float add per element, so the same bits."""
    rng = np.random.default_rng(k)
    F, bias = rng.standard_normal((k, T_ * S)).astype(np.float32), rng.standard_normal(k).astype(np.float32)
    want = np.stack([F[:, t * S:(t + 1) * S] + bias[:, None] for t in range(T_)])
    for fn in (K.to_steps, kernels.NUMPY.ops["to_steps"]):
        out = np.full((T_, k, S), np.nan, np.float32)
        fn(out, F, bias)
        np.testing.assert_array_equal(out, want)
    with pytest.raises(ValueError, match="to_steps"):
        K.to_steps(np.empty((T_, k, S + 1), np.float32), F, bias)


def test_the_updates_and_one_hot_kernels_on_the_team_give_the_same_bits_on_any_number_of_threads():
    """adam, sgd, onehot_grad and onehot_project share their elements, columns or steps among the
    loops' team from 16384 elements: on 1, 2 and 3 threads the same bits, and adam and sgd those of
    kernels.py's float32 operations (a ragged size: the last share is short), onehot_grad within
    float32 rounding of a float64 sum (each element in row order, whichever thread owns it)."""
    rng = np.random.default_rng(3)
    f, size = np.float32, 100_003
    start = [rng.normal(0, 1, size).astype(np.float32) for _ in range(4)]
    start[3] = np.abs(start[3])
    ids = rng.integers(0, 50, 2000)
    dz, dW0 = rng.normal(0, 1, (2000, 40)).astype(np.float32), rng.normal(0, 1, (50, 40)).astype(np.float32)
    table, steps = rng.normal(0, 1, (50, 1040)).astype(np.float32), rng.integers(0, 50, (8, 32))

    def run(adam, sgd, grad, project):
        p, u, m, v = (a.copy() for a in start)
        adam(p, u, m, v, None, f(1), f(-0.01), f(0.9), f(1 - 0.9), f(0.999), f(1 - 0.999), f(0.1), f(0.001), f(0.01),
             f(1e-7), f(1), f(0))
        q, w = start[0].copy(), start[1].copy()
        sgd(q, w, f(-0.01), f(0.1 / 64), f(0.9))
        dW = dW0.copy()
        grad(dW, ids, dz)
        out = np.full((8, 1024, 32), np.nan, np.float32)
        project(out, table, steps)
        return p, u, m, v, q, w, dW, out

    want = run(kernels.adam_ema, kernels.sgd, kernels.onehot_grad, kernels.onehot_project)
    wanted = K.loop_threads(0)
    try:
        runs = []
        for threads in (1, 2, 3):
            assert K.loop_threads(threads) == threads
            runs.append(run(K.adam_ema, K.sgd, K.onehot_grad, K.onehot_project))
    finally:
        K.loop_threads(wanted)
    exact = dW0.astype(np.float64)
    np.add.at(exact, ids, dz.astype(np.float64))
    for got in runs:
        for a, b, name in zip(got, want, "p u m v sgd-p sgd-u dW out".split()):
            if name == "dW":
                close(a, exact, name)
            else:
                np.testing.assert_array_equal(a, b, err_msg=name)
        for a, b in zip(got, runs[0]):
            np.testing.assert_array_equal(a, b)


def test_the_lstm_way_back_at_32_streams_writes_its_deltas_in_the_panels_on_any_number_of_threads():
    """At 32 streams a step's gate deltas are written straight into the panels the next step's
    product reads (two steps' worth, alternating): on 1, 2 and 3 threads the same bits, and those of
    the reference to float32 rounding (a thread reading a step's panels while another overwrites
    them would differ)."""
    n, S = 48, 32
    ins, outs, prepare = lstm_arrays(n, S, 9)
    WT = ins[0]
    arrays = [a.copy() for a in ins] + [np.zeros_like(a) for a in outs]
    prepare(arrays)
    K.lstm_loop(*arrays)
    G, C, TC = arrays[2:5]
    DY = np.random.default_rng(4).standard_normal((T, S, n)).astype(np.float32)
    W = np.ascontiguousarray(WT.T)

    def back(fn):
        dG, db = np.zeros((T, S, 4 * n), np.float32), np.zeros(4 * n, np.float32)
        dh, dc = np.zeros((n, S), np.float32), np.zeros((n, S), np.float32)
        fn(W, DY, G, C, TC, dG, db, dh, dc)
        return dG, db, dh, dc
    with kernels.use("numpy"):
        want = back(lstm.lstm_loop_back)
    wanted = K.loop_threads(0)
    try:
        runs = []
        for threads in (1, 2, 3):
            assert K.loop_threads(threads) == threads
            runs.append(back(K.lstm_loop_back))
    finally:
        K.loop_threads(wanted)
    for got in runs:
        for a, b, c, name in zip(got, runs[0], want, "dG db dh dc".split()):
            np.testing.assert_array_equal(a, b, err_msg=name)
            close(a, c, name)


# ---- the GRU loops with bf16 products on AMX (amxl) -------------------------------------------------
# With bf16=1 each per-step product rounds its operands to bfloat16 (nearest even) and sums in float32
# (kernels.matmul_bf16), the C loop on AMX. A state that differs from the reference's in its last
# float32 bit can round to the other bf16 neighbour (2^-8 of that operand), and later steps carry
# that on, so a whole-loop comparison would only hold to bf16's own rounding. Instead every step is
# checked from the loop's own operands: the reference step t from the h and r⊙h the loop under test
# made (back: from its dc and [dz dr]), so both round the same numbers. Then each array agrees to
# float32 rounding: within 1e-5 of its largest entry (`close`); a truncating rounding is off by
# ~2^-9 of the products, a dropped k edge by whole terms.

amx = pytest.mark.skipif(K is None or not getattr(K, "amx", False),
                         reason="the bf16 loops need AMX-BF16 (CPU, kernel permission and compiler): _kernels.amx is False")
BF16_SHAPES = [(n, S) for n in (8, 24, 384) for S in (1, 7, 16, 32, 33)] + [(13, 7)]  # and an odd n: a pair with a zero


def bf16_product(A, x):
    return kernels.bf16(A) @ kernels.bf16(x)


def check_bf16_forward(tanh, WzrT, WhT, XU, ZR, HC, RH, H, Y, P, RHrows):
    """Each step of a bf16 forward loop's results against numpy's gru_zr and gru_step on the products
    of its own H[t] and RH[t]."""
    n = WhT.shape[0]
    for t in range(XU.shape[0]):
        zr, c = bf16_product(WzrT, H[t]), bf16_product(WhT, RH[t])
        rh, h1, p = np.empty_like(RH[t]), np.empty_like(H[t]), np.empty((3 * n, H.shape[2]), np.float32)
        gru.gru_zr(zr, XU[t], H[t], rh)
        gru.gru_step(tanh, c, XU[t], zr, H[t], h1, p)
        for got, want, name in [(ZR[t], zr, "ZR"), (RH[t], rh, "RH"), (HC[t], c, "HC"), (H[t + 1], h1, "H"),
                                (P[t], p, "P"), (Y[t], h1.T, "Y"), (RHrows[t], rh.T, "RHrows")]:
            close(got, want, f"{name}[{t}]")


def check_bf16_back(Wzr, Wh, DY, ZR, P, dP, db, dh):
    """A bf16 way back's deltas dP step by step against numpy's gru_back with the products of its own
    dc and [dz dr] (dP's), dh at the start and the bias gradient db."""
    T, S, n = DY.shape
    want, d = np.zeros((n, S), np.float32), np.empty((3 * n, S), np.float32)
    for t in reversed(range(T)):
        want += DY[t].T
        np.multiply(P[t, 2 * n:], want, out=d[2 * n:])
        gru.gru_back(want, bf16_product(Wh, dP[t, :, 2 * n:].T), ZR[t], P[t], d)
        close(dP[t], d.T, f"dP[{t}]")
        if t:
            want += bf16_product(Wzr, dP[t, :, :2 * n].T)
    close(dh, want, "dh")
    np.testing.assert_allclose(db, dP.astype(np.float64).sum(axis=(0, 1)), rtol=0, atol=1e-5 * np.abs(dP).sum(axis=(0, 1)).max())


def run_bf16(loop, loop_back, n, S, tanh=False, seed=None):
    """gru_loop then gru_loop_back, both with bf16=1, on gru_arrays; their arrays (forward's 10, then
    the way back's 8)."""
    ins, outs, prepare = gru_arrays(n, S, n * S if seed is None else seed, True)
    f = [a.copy() for a in ins] + outs
    prepare(f)
    with kernels.use("numpy"):
        loop(tanh, *f, 1)
        DY = np.random.default_rng(2).standard_normal((T, S, n)).astype(np.float32)
        b = [np.ascontiguousarray(f[0].T), np.ascontiguousarray(f[1].T), DY, f[3], f[8],
             np.zeros((T, S, 3 * n), np.float32), np.zeros(3 * n, np.float32), np.zeros((n, S), np.float32)]
        loop_back(*b, 1)
    return f, b


@amx
@pytest.mark.parametrize("n,S", BF16_SHAPES)
def test_gru_bf16_loops_on_amx_equal_the_reference_step_by_step(n, S):
    """The C loops with bf16=1, forward (logistic and tanh candidates) and back, step by step against
    numpy's step ops on the bf16 products of their own operands."""
    for tanh in (False, True) if n == 24 else (False,):
        f, b = run_bf16(K.gru_loop, K.gru_loop_back, n, S, tanh)
        check_bf16_forward(tanh, *f)
        check_bf16_back(*b)


@pytest.mark.parametrize("n,S", [(24, 7), (384, 33)])
def test_the_numpy_bf16_loops_pass_the_same_step_checks(n, S):
    """gru.gru_loop and gru_loop_back with bf16 (the reference the C loops stand for, and what a CPU
    without AMX runs under the numpy backend) satisfy the same per-step checks."""
    f, b = run_bf16(gru.gru_loop, gru.gru_loop_back, n, S)
    check_bf16_forward(False, *f)
    check_bf16_back(*b)


@amx
def test_gru_bf16_loops_give_the_same_bits_on_any_number_of_threads_and_differ_from_float32():
    """Each C tile element sums its k chunks in order on one thread: 1, 2 and 3 threads give the same
    bits (48 units: shares of 16 and of 8 rows; 35 streams: three 16-column blocks, the last ragged).
    And the rounding happens: float32 products give results 1e-4 of the largest entry away or more."""
    wanted, runs = K.loop_threads(0), []
    try:
        for threads in (1, 2, 3):
            assert K.loop_threads(threads) == threads
            runs.append(run_bf16(K.gru_loop, K.gru_loop_back, 48, 35, seed=4))
    finally:
        K.loop_threads(wanted)
    for f, b in runs[1:]:
        for got, want in zip(f + b, runs[0][0] + runs[0][1]):
            np.testing.assert_array_equal(got, want)
    f32 = run_bf16(lambda *a: K.gru_loop(*a[:-1]), lambda *a: K.gru_loop_back(*a[:-1]), 48, 35, seed=4)
    for name, got, want in [("H", runs[0][0][6], f32[0][6]), ("dP", runs[0][1][5], f32[1][5])]:
        assert np.abs(got - want).max() > 1e-4 * np.abs(want).max(), name


def truncated(x):
    """x cut to bfloat16 by truncation: the rounding a broken kernel might do instead of nearest even."""
    return (np.ascontiguousarray(x, np.float32).view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)


def spoiled(W, broken):
    """W as a broken kernel would use it: truncated to bf16 instead of rounded to nearest even, or
    with its last 8 columns of k (an edge past the last whole 32) zero."""
    if broken == "truncation":
        return truncated(W)
    W = W.copy()
    W[:, -8:] = 0
    return W


@amx
@pytest.mark.parametrize("broken", ["truncation", "k edge"])
def test_a_bf16_loop_rounding_by_truncation_or_dropping_a_k_edge_is_caught(broken):
    """Not vacuous: the step checks fail for the C loops given weights that a broken kernel would use,
    cut by truncation instead of rounded to nearest even (the C loop's own rounding of a bf16 number
    leaves it as it is), or with the last 8 columns of k, an edge past the last whole 32, zero."""
    n, S = 24, 7

    def spoil(W):
        return spoiled(W, broken)
    f, b = run_bf16(lambda tanh, Wzr, Wh, *a: K.gru_loop(tanh, spoil(Wzr), spoil(Wh), *a),
                    lambda Wzr, Wh, *a: K.gru_loop_back(spoil(Wzr), spoil(Wh), *a), n, S)
    with pytest.raises(AssertionError):
        check_bf16_forward(False, *f)
    with pytest.raises(AssertionError):
        check_bf16_back(*b)


@amx
@pytest.mark.parametrize("kind", ["gru", "lstm"])
def test_a_layer_passes_bf16_to_its_c_loops_in_training_only(kind, write_cfg, monkeypatch):
    """With precision=bf16 (Dense.bf16 set) the layer's training forward and backward call the C
    loops with bf16=1, its inference forward without; with fp32 neither does."""
    calls = []
    for name in (f"{kind}_loop", f"{kind}_loop_back"):
        monkeypatch.setitem(kernels.C.ops, name, lambda *a, _n=name, _k=kernels.C.ops[name]:
                            calls.append((_n, a[-1] if isinstance(a[-1], int) else None)) or _k(*a))
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 20, (6, 5)), rng.integers(0, 20, (6, 5))
    for precision, flag in (("bf16", 1), ("fp32", None)):
        cfg = write_cfg(f"[net]\ninputs=20\nbatch=5\ntime_steps=6\nprecision={precision}\n[{kind}]\noutput=32\n"
                        "[connected]\noutput=20\nactivation=linear\n[softmax]\n", f"{precision}.cfg")
        with kernels.use("c"):
            net = Network(cfg, seed=3, bf16_reference=True)
            del calls[:]
            net.accumulate(x, y)
            assert calls == [(f"{kind}_loop", flag), (f"{kind}_loop_back", flag)]
            del calls[:]
            net.forward(x, train=False)
            assert calls == [(f"{kind}_loop", None)]


def check_bf16_lstm_forward(WT, XU, G, C, TC, H, Y, P=None):
    """Each step of a bf16 [lstm] forward loop's results against numpy's lstm_step on the product of
    its own H[t]."""
    for t in range(XU.shape[0]):
        g, c1, tc, h1 = bf16_product(WT, H[t]), np.empty_like(C[t]), np.empty_like(TC[t]), np.empty_like(H[t])
        lstm.lstm_step(g, XU[t], C[t], c1, tc, h1, *([] if P is None else [P]))
        for got, want, name in [(G[t], g, "G"), (C[t + 1], c1, "C"), (TC[t], tc, "TC"), (H[t + 1], h1, "H"),
                                (Y[t], h1.T, "Y")]:
            close(got, want, f"{name}[{t}]")


def check_bf16_lstm_back(W, DY, G, C, TC, dG, db, dh, dc, P=None, dP=None):
    """A bf16 [lstm] way back's gate deltas dG step by step against numpy's lstm_back with the product
    of its own deltas (dG's), dh and dc at the start, db, and the peepholes' deltas dP."""
    T, S, n = DY.shape
    h, c, d = np.zeros((n, S), np.float32), np.zeros((n, S), np.float32), np.empty((4 * n, S), np.float32)
    peep = [] if P is None else [P, np.zeros_like(P)]
    for t in reversed(range(T)):
        lstm.lstm_back(h, c, np.ascontiguousarray(DY[t].T), G[t], C[t], TC[t], d, *peep)
        close(dG[t], d.T, f"dG[{t}]")
        if t:
            h = bf16_product(W, dG[t].T)
    close(dh, h, "dh")
    close(dc, c, "dc")
    if P is not None:
        close(dP, peep[1], "dP")
    np.testing.assert_allclose(db, dG.astype(np.float64).sum(axis=(0, 1)), rtol=0, atol=1e-5 * np.abs(dG).sum(axis=(0, 1)).max())


def run_bf16_lstm(loop, loop_back, n, S, peephole, seed=None):
    """lstm_loop then lstm_loop_back, both with a trailing bf16=1, on lstm_arrays; their arrays."""
    ins, outs, prepare = lstm_arrays(n, S, n * S if seed is None else seed)
    P = [np.random.default_rng(1).uniform(-0.5, 0.5, (3 * n, S)).astype(np.float32)] if peephole else []
    f = [a.copy() for a in ins] + outs
    prepare(f)
    with kernels.use("numpy"):
        loop(*f, *P, 1)
        DY = np.random.default_rng(2).standard_normal((T, S, n)).astype(np.float32)
        b = [np.ascontiguousarray(f[0].T), DY, f[2], f[3], f[4], np.zeros((T, S, 4 * n), np.float32),
             np.zeros(4 * n, np.float32), np.zeros((n, S), np.float32), np.zeros((n, S), np.float32)]
        b += [P[0], np.zeros_like(P[0])] if peephole else []
        loop_back(*b, 1)
    return f + P, b


@amx
@pytest.mark.parametrize("n,S", [(n, S) for n in (8, 13, 256) for S in (1, 7, 16, 32, 33)])
def test_lstm_bf16_loops_on_amx_equal_the_reference_step_by_step(n, S):
    """The [lstm] C loops with bf16=1 (with and without peepholes at 13 units: pairs of units, an odd
    last one), forward and back, step by step against numpy's step ops on the bf16 products of
    their own operands."""
    for peephole in (False, True) if n == 13 else (False,):
        f, b = run_bf16_lstm(K.lstm_loop, K.lstm_loop_back, n, S, peephole)
        check_bf16_lstm_forward(*f)
        check_bf16_lstm_back(*b)


def test_the_numpy_lstm_bf16_loops_pass_the_same_step_checks():
    """lstm.lstm_loop and lstm_loop_back with a trailing bf16 (in P's place without peepholes, after it
    with) satisfy the same per-step checks."""
    for peephole in (False, True):
        f, b = run_bf16_lstm(lstm.lstm_loop, lstm.lstm_loop_back, 24, 7, peephole)
        check_bf16_lstm_forward(*f)
        check_bf16_lstm_back(*b)


@amx
def test_lstm_bf16_loops_give_the_same_bits_on_any_number_of_threads_and_differ_from_float32():
    """As the GRU's: 1, 2 and 3 threads the same bits (40 units: 20 pairs forward, 5 eights back; 35
    streams), and results 1e-4 of the largest entry or more away from the float32 loops'."""
    wanted, runs = K.loop_threads(0), []
    try:
        for threads in (1, 2, 3):
            assert K.loop_threads(threads) == threads
            runs.append(run_bf16_lstm(K.lstm_loop, K.lstm_loop_back, 40, 35, False, seed=4))
    finally:
        K.loop_threads(wanted)
    for f, b in runs[1:]:
        for got, want in zip(f + b, runs[0][0] + runs[0][1]):
            np.testing.assert_array_equal(got, want)
    f32 = run_bf16_lstm(lambda *a: K.lstm_loop(*a[:-1]), lambda *a: K.lstm_loop_back(*a[:-1]), 40, 35, False, seed=4)
    for name, got, want in [("H", runs[0][0][5], f32[0][5]), ("dG", runs[0][1][5], f32[1][5])]:
        assert np.abs(got - want).max() > 1e-4 * np.abs(want).max(), name


@amx
@pytest.mark.parametrize("broken", ["truncation", "k edge"])
def test_an_lstm_bf16_loop_rounding_by_truncation_or_dropping_a_k_edge_is_caught(broken):
    """As the GRU's: the step checks fail for the C loops given truncated weights, or weights with
    the last 8 columns of k zero."""
    def spoil(W):
        return spoiled(W, broken)
    f, b = run_bf16_lstm(lambda W, *a: K.lstm_loop(spoil(W), *a), lambda W, *a: K.lstm_loop_back(spoil(W), *a),
                         24, 7, False)
    with pytest.raises(AssertionError):
        check_bf16_lstm_forward(*f)
    with pytest.raises(AssertionError):
        check_bf16_lstm_back(*b)
