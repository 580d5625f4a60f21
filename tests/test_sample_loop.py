"""The one-stream C loop (darknetpy/_sample.h, generation.Loop) against the Python steps it replaces:
the same probabilities and state bit for bit, the same draws from the same random stream, the same
text, and the paths that run without it."""
import numpy as np
import pytest

import darknetpy
from darknetpy import generation, kernels
from darknetpy.darknet_sampler import sample_rows
from darknetpy.options import GenerationOptions
from conftest import run_cli

needs_loop = pytest.mark.skipif(kernels.sample_loop() is None, reason="the C loop is not built for this CPU (no AVX-512)")

# Every layer kind and option the loop runs; the head is a linear [connected] and a [softmax] at 0.8.
BODIES = {
    "lstm": "[lstm]\noutput=40\n[dropout]\nprobability=0.3\n[lstm]\noutput=33\n",
    "lstm_peephole_bn": "[lstm]\noutput=24\npeephole=1\nbatch_normalize=1\n",
    "gru_logistic": "[gru]\noutput=40\n[gru]\noutput=17\n",
    "gru_tanh_bn": "[gru]\noutput=40\ntanh=1\nbatch_normalize=1\n[gru]\noutput=36\ntanh=1\n",
    "rnn_leaky_shortcut": "[rnn]\noutput=40\nactivation=leaky\nshortcut=1\n[rnn]\noutput=40\nactivation=relie\n",
    "connected_first": "[connected]\noutput=70\nactivation=leaky\n[lstm]\noutput=30\n",
    # products of 128 columns and more with a bias (the loop's four panels at a time) and a remainder
    "wide": "[gru]\noutput=64\n[gru]\noutput=44\ntanh=1\n[rnn]\noutput=130\nactivation=leaky\n",
}
HEAD = "[connected]\noutput=40\nactivation=linear\n[softmax]\ntemperature=0.8\n"


def network(write_cfg, body, head=HEAD, seed=1):
    """A network of `body` with random weights, scaled so that sums stay O(1)."""
    net = darknetpy.load_network(write_cfg(f"[net]\ninputs=40\nbatch=1\ntime_steps=1\n{body}{head}"))
    rng = np.random.default_rng(seed)
    for key, value in net.params().items():
        value[...] = rng.uniform(0.5, 1.5, value.shape) if "variance" in key else rng.normal(0, 0.5, value.shape)
        if key.endswith("weights"):
            value *= np.sqrt(2 / value.shape[1])
    net.refresh()
    return net


@pytest.fixture
def python_steps(monkeypatch):
    """Within it, steppers have no Loop (as without the loop compiled): the Python steps run."""
    def off():
        monkeypatch.setattr(kernels, "sample_loop", lambda: None)
    return off


@needs_loop
@pytest.mark.parametrize("name", sorted(BODIES))
def test_the_loop_steps_the_same_bits_as_the_python_steps(name, write_cfg):
    """Every kind: the loop's probabilities and carried state equal, bit for bit, those of the same
    stepper's Python step functions (the panel kernel's products, the C step ops) over 40 steps;
    and the general forward (predict_ids, batchnorm unfolded) to float32 rounding."""
    net, slow = network(write_cfg, BODIES[name]), network(write_cfg, BODIES[name])
    fast = net.stepper(1, private=True, invariant=True, temperature=np.full(1, 0.8, np.float32))
    ref = net.stepper(1, private=True, invariant=True, temperature=np.full(1, 0.8, np.float32))
    assert fast.loop is not None and ref.loop is not None
    for t, c in enumerate(np.random.default_rng(2).integers(0, 40, 40)):
        x = np.array([c])
        got = fast(x)
        want = x
        for step in ref.steps:
            want = step(want)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), t
        for a, b in zip(fast.arrays(), ref.arrays()):
            assert np.array_equal(a.view(np.uint32), b.view(np.uint32)), t
        np.testing.assert_allclose(got, slow.predict_ids(x), rtol=0, atol=2e-6)


@needs_loop
def test_one_changed_weight_is_seen(write_cfg):
    """The comparison above has the resolution to catch a wrong kernel: one recurrent weight of the
    loop's own program changed by a part in a thousand changes its result's bits within 5 steps."""
    net = network(write_cfg, BODIES["lstm"])
    fast = net.stepper(1, private=True, invariant=True, temperature=np.full(1, 0.8, np.float32))
    ref = net.stepper(1, private=True, invariant=True, temperature=np.full(1, 0.8, np.float32))
    Wp = next(v for step in fast.steps if hasattr(step, "loop") for op in step.loop(None)[0]
              if op and op[0] == "matvec" for v in op[2:3])
    Wp[0, 3, 5] *= np.float32(1.001)
    same = []
    for c in (7, 1, 30, 2, 9):
        want = np.array([c])
        for step in ref.steps:
            want = step(want)
        same.append(np.array_equal(fast(np.array([c])), want))
    assert same[0] and not all(same)  # the first step reads h = 0: the weight counts from the second


@needs_loop
def test_the_loops_sampler_is_darknets(write_cfg):
    """The loop's draw (no step: it draws from its result array as it is) equals sample_rows on
    rows with probabilities at and around the 0.0001 cut, zeros, one symbol, uniforms at the edges
    of the walk, and rows whose sum is zero or NaN (Darknet then takes the last index)."""
    rng = np.random.default_rng(3)
    rows = [rng.dirichlet(np.full(60, 0.3)).astype(np.float32) for _ in range(200)]
    cut = np.float32(0.0001)
    edge = rng.dirichlet(np.ones(60)).astype(np.float32)
    edge[::7] = cut
    edge[1::7] = np.nextafter(cut, np.float32(1))
    rows += [edge, np.zeros(60, np.float32), np.full(60, np.nan, np.float32), np.eye(60, dtype=np.float32)[59]]
    p = np.empty(60, np.float32)
    t, x = np.ones(1, np.float32), np.zeros(60, np.float32)
    program = kernels.sample_loop().sample_program([("softmax", 1, t, x, p)], p)
    for row in rows:
        p[...] = row
        walk = np.cumsum(np.where(row <= cut, 0, row).astype(np.float64)) / max(float(np.sum(np.where(row <= cut, 0, row))), 1e-30)
        us = np.concatenate([rng.random(20).astype(np.float32), walk[:5].astype(np.float32), [0.0, np.float32(0.99999994)]])
        for u in us.astype(np.float32):
            out = np.empty(1, np.int64)
            kernels.sample_loop().sample_run(program, np.empty(0, np.int64), np.array([u], np.float32), out, False)
            assert out[0] == sample_rows(row[None], [u])[0]
        out = np.empty(1, np.int64)
        kernels.sample_loop().sample_run(program, np.empty(0, np.int64), np.zeros(1, np.float32), out, True)
        assert out[0] == np.argmax(row)


ASKS = [dict(seed=b"\x01\x02\x03", length=300, temperature=0.9, srand=1),
        dict(seed=b"\n\n", length=700, srand=5),                 # three chunks, the last short
        dict(seed=b"", length=50, temperature=1.7, srand=-3),
        dict(seed=b"\x04\x05", length=90, greedy=True),
        dict(seed=b"\x06", length=600, srand=4, stop=[b"\x05\x06", b"\x11"]),
        dict(seed=b"\x07\x08" * 150, length=0, srand=2)]


@needs_loop
@pytest.mark.parametrize("name", ["lstm", "gru_tanh_bn", "rnn_leaky_shortcut"])
def test_generate_prints_the_same_bytes_as_the_python_steps(name, write_cfg, python_steps):
    """Network.generate through the loop and through the Python steps (as serve's batches run):
    the same bytes, for Darknet's sampler at temperatures, a chunk boundary, greedy, --stop, and
    --len 0; on one thread and on two."""
    net = network(write_cfg, BODIES[name], head="[connected]\noutput=40\nactivation=linear\n[softmax]\n")
    fast = [net.generate(**ask) for ask in ASKS]
    kernels.sample_loop().sample_threads(1)
    try:
        one = [net.generate(**ask) for ask in ASKS]
    finally:
        kernels.sample_loop().sample_threads(kernels.threads())
    python_steps()
    slow = [net.generate(**ask) for ask in ASKS]
    assert fast == slow and one == slow
    assert any(len(text) < 1 + 600 + 1 for text in fast[4:5])  # the stop text came


@needs_loop
def test_the_loop_draws_numpys_stream_without_srand(write_cfg, monkeypatch, python_steps):
    """Without srand the sampler's stream is numpy's generator (NumpyRand): the loop takes its
    uniforms a chunk at a time, the Python steps one at a time, the same draws."""
    from darknetpy import darknet_sampler
    net = network(write_cfg, BODIES["gru_logistic"], head="[connected]\noutput=40\nactivation=linear\n[softmax]\n")
    real = darknet_sampler.NumpyRand
    monkeypatch.setattr(generation, "NumpyRand", lambda: real(11))
    fast = net.generate(seed=b"\x10", length=400)
    python_steps()
    assert fast == net.generate(seed=b"\x10", length=400)


@needs_loop
def test_symbols_and_events_count_what_was_printed(write_cfg):
    """A stop in the middle of a chunk: the usage count is the symbols printed, up to the one that
    ends the stop text, as the Python steps count them."""
    net = network(write_cfg, BODIES["lstm"], head="[connected]\noutput=40\nactivation=linear\n[softmax]\n")
    o = GenerationOptions(seed=b"\x01", length=500, srand=9, stop=b"\x03")
    sample = generation.Sample(net, o)
    batch = generation.Batch(net, 1)
    batch.add(sample)
    text = b"".join(piece for _, piece, _ in sample.run(batch.steppers[1][0].loop))
    assert text.endswith(b"\x03\n") and sample.done
    assert sample.symbols == len(text) - 2  # one byte per symbol: all but the seed and the newline


def test_without_the_loop_generation_and_predict_still_run(write_cfg):
    """The numpy backend (as DARKNETPY_KERNELS=0) and a kind the loop does not run ([sru]): no
    Loop, and generation and predict run through the Python steps."""
    net = network(write_cfg, BODIES["gru_logistic"], head="[connected]\noutput=40\nactivation=linear\n[softmax]\n")
    with kernels.use("numpy"):
        assert kernels.sample_loop() is None
        assert net.stepper(1, private=True).loop is None
        assert len(net.generate(seed=b"\x01", length=30, srand=1)) == 32
    sru = network(write_cfg, "[sru]\noutput=20\n", head="[connected]\noutput=40\nactivation=linear\n[softmax]\n")
    assert sru.stepper(1, private=True).loop is None
    assert len(sru.generate(seed=b"\x01", length=30, srand=1)) == 32


def test_generate_runs_with_the_kernels_off(write_cfg, tmp_path, monkeypatch):
    """`darknetpy generate` with DARKNETPY_KERNELS=0 (no C at all) and with the kernels: the text
    of the asked length each time."""
    cfg = write_cfg("[net]\ninputs=256\nbatch=1\ntime_steps=1\n[lstm]\noutput=16\n[connected]\noutput=256\n"
                    "activation=linear\n[softmax]\n")
    darknetpy.load_network(cfg).save_weights(tmp_path / "net.weights")
    for kernels_on in ("0", "1"):
        monkeypatch.setenv("DARKNETPY_KERNELS", kernels_on)
        r = run_cli("generate", cfg, tmp_path / "net.weights", "--seed", "ab", "--len", "40", "--srand", "3")
        assert r.returncode == 0 and len(r.stdout) == 2 + 40 + 1, r.stderr
