"""`[net] ema_alpha=D`: the average of the weights a run keeps beside them (optim.EMA), checked
from the outside: the numbered checkpoints hold the trained weights after every update, from which
the average is recomputed here in float64; `_final.weights` and `_best.weights` hold the average,
the other checkpoints the trained weights, which the average never touches; resume is bit-exact.

Tiny cfgs, a few dozen updates each, every run a real `darknetpy` process.
"""
import json
import re

import numpy as np
import pytest
import yaml

from conftest import assert_one_line_error, read_weights, run_cli
from darknetpy import checkpoint as ckpt
from darknetpy import load_network, optim
from darknetpy import weights as weightsmod
from darknetpy.data import StreamBatcher, split_corpus
from darknetpy.network import Network
from test_train import TEXT

CFG = """[net]
inputs=256
batch={batch}
subdivisions={subdivisions}
time_steps=8
max_batches=20
adam=1
learning_rate=0.01
{ema}

[gru]
output=16

[connected]
output=256
activation=linear
batch_normalize=1

[softmax]
"""


def write(tmp_path, ema="ema_alpha=0.9", batch=8, subdivisions=1, name="tiny"):
    """A GRU with a batchnorm [connected] (scales and rolling statistics are averaged too)."""
    path = tmp_path / f"{name}.cfg"
    path.write_text(CFG.format(ema=ema, batch=batch, subdivisions=subdivisions))
    return path


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT * 30)  # 5250 bytes: the held-out 5% is one chunk of the estimate
    return path


def train(*args):
    r = run_cli("train", *args)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b""
    return r


def payload(path):
    return read_weights(path)[5]


def state(path):
    """(meta, arrays) of a checkpoint's .state.npz, read here with numpy."""
    with np.load(f"{path}.state.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(str(arrays.pop("meta"))), arrays


def shadow_payload(cfg, weights):
    """The shadow saved beside `weights` (ema.{i}), in the .weights file's order: a network with
    the shadow written into its arrays, saved."""
    _, arrays = state(weights)
    net = load_network(cfg)
    for i, a in enumerate(optim.parameter_arrays(net)):
        a[...] = arrays[f"ema.{i}"]
    return np.frombuffer(weightsmod.to_bytes(net), "<f4", offset=read_weights(weights)[4])


def test_the_average_is_the_recurrence_of_the_trained_weights(tmp_path, corpus):
    """s_1 = w_1, s_n = D_n s_{n-1} + (1 - D_n) w_n with D_n = min(D, (1 + n) / (10 + n)) (the
    warm-up rules up to n = 12, the cap D from 13 on), recomputed in float64 from the trained
    weights after every update (a numbered checkpoint at each): float32 in place drifts from it by a
    few ulps per update, damped by D, so rtol 1e-5 with atol 1e-6 bounds it (|w| < 10 here)."""
    D, k = 0.6, 20
    cfg = write(tmp_path, f"ema_alpha={D}")
    b = tmp_path / "b"
    train(cfg, corpus, "--srand", 4, "--backup", b, "--save-every", 1, "--valid-every", 0)
    s = None
    for n in range(1, k + 1):
        w = payload(b / f"tiny_{n}.weights").astype(np.float64)
        d = min(D, (1 + n) / (10 + n))
        s = w if s is None else d * s + (1 - d) * w
    final = payload(b / "tiny_final.weights")
    trained = payload(b / "tiny.backup")
    assert np.array_equal(trained, payload(b / f"tiny_{k}.weights"))
    assert np.allclose(final, s, rtol=1e-5, atol=1e-6), np.abs(final - s).max()
    assert np.abs(final - trained).max() > 1e-3  # the average is not the trained weights
    # without the warm-up (D every update, the first weights' share D^(k-1)) it is another average
    plain = None
    for n in range(1, k + 1):
        w = payload(b / f"tiny_{n}.weights").astype(np.float64)
        plain = w if plain is None else D * plain + (1 - D) * w
    assert not np.allclose(final, plain, rtol=1e-5, atol=1e-6), np.abs(final - plain).max()
    assert np.array_equal(shadow_payload(cfg, b / "tiny_final.weights"), final)  # the saved shadow
    assert np.array_equal(shadow_payload(cfg, b / "tiny.backup"), final)
    meta, arrays = state(b / "tiny_final.weights")
    assert meta["ema"] == {"alpha": D, "arrays": len([k for k in arrays if k.startswith("ema.")])}


def test_off_is_todays_run_and_the_trained_weights_never_see_the_average(tmp_path, corpus):
    runs = {"absent": "", "zero": "ema_alpha=0", "on": "ema_alpha=0.9"}
    errs = {}
    for name, ema in runs.items():
        (tmp_path / name).mkdir()
        cfg = write(tmp_path / name, ema)
        errs[name] = train(cfg, corpus, "--srand", 6, "--backup", tmp_path / name / "b",
                           "--valid-every", 10, "--save-every", 10).stderr.decode()
    out = {name: tmp_path / name / "b" for name in runs}
    for f in ("tiny_final.weights", "tiny_best.weights", "tiny.backup", "tiny_10.weights"):
        assert (out["zero"] / f).read_bytes() == (out["absent"] / f).read_bytes(), f
    _, arrays = state(out["zero"] / "tiny_final.weights")
    assert not [k for k in arrays if k.startswith(("ema.", "trained."))]
    assert "EMA" not in errs["zero"] and "ema_alpha" not in (out["zero"] / "tiny.yaml").read_text()
    # with the key the trained weights (the backup, the numbered checkpoints) are the same bytes
    for f in ("tiny.backup", "tiny_10.weights"):
        assert (out["on"] / f).read_bytes() == (out["absent"] / f).read_bytes(), f
    assert (out["on"] / "tiny_final.weights").read_bytes() != (out["absent"] / "tiny_final.weights").read_bytes()
    # the final state carries the trained weights, bit for bit those of the backup
    meta, arrays = state(out["on"] / "tiny_final.weights")
    net = load_network(out["on"].parent / "tiny.cfg", out["on"] / "tiny.backup")
    trained = optim.parameter_arrays(net)
    assert meta["trained"] == len(trained)
    assert all(np.array_equal(arrays[f"trained.{i}"], a) for i, a in enumerate(trained))
    summary = errs["on"].strip().splitlines()[-1]
    assert "(EMA 0.9)" in summary and "the final and best weights are the average" in summary
    assert "Unused field" not in errs["on"]  # the key is read, no longer Darknet's unused field
    assert yaml.safe_load((out["on"] / "tiny.yaml").read_text())["hyperparameters"]["ema_alpha"] == 0.9


@pytest.mark.parametrize("subdivisions, k", [(1, 9), (2, 7)])
def test_resume_is_bit_exact(tmp_path, corpus, subdivisions, k):
    """From the final checkpoint (the average, the trained weights beside it) with --weights and
    with --resume, and from the backup (the trained weights, the shadow beside them)."""
    cfg = write(tmp_path, batch=16 * subdivisions, subdivisions=subdivisions)
    n = 20
    common = ("--srand", 5, "--valid-every", 0)
    train(cfg, corpus, *common, "--max-batches", n, "--backup", tmp_path / "whole")
    train(cfg, corpus, *common, "--max-batches", k, "--backup", tmp_path / "part")
    train(cfg, corpus, "--weights", tmp_path / "part" / "tiny_final.weights", "--max-batches", n,
          "--backup", tmp_path / "rest", "--valid-every", 0)
    whole = tmp_path / "whole" / "tiny_final.weights"
    assert (tmp_path / "part" / "tiny_final.weights").read_bytes() != whole.read_bytes()
    assert (tmp_path / "rest" / "tiny_final.weights").read_bytes() == whole.read_bytes()
    train(cfg, corpus, "--weights", tmp_path / "part" / "tiny.backup", "--max-batches", n,
          "--backup", tmp_path / "again", "--valid-every", 0)
    train("--resume", tmp_path / "part" / "tiny.yaml", "--max-batches", n)
    _, expected = state(whole)
    for run in ("rest", "again", "part"):
        final = tmp_path / run / "tiny_final.weights"
        assert final.read_bytes() == whole.read_bytes(), run
        assert (tmp_path / run / "tiny.backup").read_bytes() == (tmp_path / "whole" / "tiny.backup").read_bytes()
        _, arrays = state(final)
        for key in (k for k in expected if k.startswith(("ema.", "trained."))):
            assert np.array_equal(arrays[key], expected[key]), (run, key)


@pytest.mark.parametrize("value, message", [("-0.1", "ema_alpha must be in [0, 1)"),
                                            ("1", "ema_alpha must be in [0, 1)"),
                                            ("1.5", "ema_alpha must be in [0, 1)"),
                                            ("abc", "'ema_alpha=abc' is not a number")])
def test_bad_values_are_one_line(tmp_path, corpus, value, message):
    cfg = write(tmp_path, f"ema_alpha={value}")
    line = cfg.read_text().splitlines().index(f"ema_alpha={value}") + 1
    r = run_cli("train", cfg, corpus, "--backup", tmp_path / "b")
    assert_one_line_error(r, f"{cfg}:{line}: {message}")
    assert not (tmp_path / "b").exists()


def test_the_held_out_estimate_scores_the_average(tmp_path, corpus):
    """The held-out part here is under 2 x 256 ids: the estimate is one chunk, `darknetpy valid`'s
    own algorithm, so the figure the run reports is valid's on the final weights (to its 4
    printed decimals), and not valid's on the trained weights."""
    cfg = write(tmp_path, "ema_alpha=0.9")
    b = tmp_path / "b"
    train(cfg, corpus, "--srand", 8, "--backup", b, "--max-batches", 30, "--valid-every", 0)
    held = tmp_path / "held.txt"
    held.write_bytes(split_corpus(np.frombuffer(corpus.read_bytes(), np.uint8), 0.05)[1].tobytes())
    assert len(held.read_bytes()) < 512

    def valid(weights):
        r = run_cli("valid", cfg, weights, held)
        assert r.returncode == 0, r.stderr.decode()
        return float(re.search(rb"BPC: ([0-9.]+)", r.stdout.splitlines()[-1]).group(1))

    record = yaml.safe_load((b / "tiny.yaml").read_text())
    reported = record["progress"]["valid_bpc"]
    average, trained = valid(b / "tiny_final.weights"), valid(b / "tiny.backup")
    assert abs(average - trained) > 0.01
    assert abs(reported - average) < 1e-4, (reported, average, trained)
    assert record["best"]["valid_bpc"] == reported and record["best"]["iteration"] == 30
    assert (b / "tiny_best.weights").read_bytes() == (b / "tiny_final.weights").read_bytes()


def test_a_checkpoint_before_the_first_update_resumes(tmp_path, corpus):
    """Between the start and the first update (subdivisions > 1, a Ctrl-C) there is no average yet:
    the state says nothing of one, and a run from it starts the average at its first update."""
    cfg = write(tmp_path, batch=16, subdivisions=2)
    net = Network(str(cfg), seed=3)
    train_ids, _ = split_corpus(np.frombuffer(corpus.read_bytes(), np.uint8), 0.05)
    batcher = StreamBatcher(train_ids, net.streams, net.time_steps, np.random.default_rng(1))
    start = tmp_path / "start.weights"
    wbytes = weightsmod.to_bytes(net)
    ckpt.commit([(f"{start}.state.npz", ckpt.state_bytes(net, batcher, wbytes, {}, optim.EMA(0.9))), (str(start), wbytes)])
    meta, arrays = state(start)
    assert "ema" not in meta and not [k for k in arrays if k.startswith("ema.")]
    r = train(cfg, corpus, "--weights", start, "--max-batches", 3, "--backup", tmp_path / "b", "--valid-every", 0)
    assert "ignored" not in r.stderr.decode()  # the state was read
    meta, _ = state(tmp_path / "b" / "tiny_final.weights")
    assert meta["ema"]["alpha"] == 0.9 and meta["iteration"] == 6


@pytest.mark.parametrize("layer", ["[lstm]\noutput=8\npeephole=1\nbatch_normalize=1", "[gru]\noutput=8",
                                   "[rnn]\noutput=8\nbatch_normalize=1", "[sru]\noutput=8\nbatch_normalize=1",
                                   "[lstm]\noutput=8"])
def test_the_average_covers_every_parameter_once(tmp_path, layer):
    """parameter_arrays (what the EMA averages and swaps in) are the arrays params() views, each
    once and nothing else: their sizes add up to the .weights payload, and every view lies in one."""
    cfg = tmp_path / "kind.cfg"
    cfg.write_text(f"[net]\ninputs=256\nbatch=4\ntime_steps=4\n\n{layer}\n\n[connected]\noutput=256\n"
                   "activation=linear\n\n[softmax]\n")
    net = Network(str(cfg))
    arrays, views = optim.parameter_arrays(net), list(net.params().values())
    assert sum(a.size for a in arrays) == sum(v.size for v in views) == len(payload_of(net))
    assert all(sum(np.shares_memory(v, a) for a in arrays) == 1 for v in views)


def payload_of(net):
    return np.frombuffer(weightsmod.to_bytes(net), "<f4", offset=20)


class Arrays:
    """A stand-in for a Network as EMA sees it: params() and refresh()."""

    def __init__(self, *arrays):
        self.arrays = arrays

    def params(self):
        return {str(i): a for i, a in enumerate(self.arrays)}

    def refresh(self):
        pass


def test_the_update_across_blocks():
    """Arrays of several of EMA.BLOCK floats and a ragged end, against the float64 recurrence (at
    updates 1-3 the warm-up's decay, 2/11..4/13, then the cap 0.75 at 30-32); the average swapped
    in and the trained weights back, bit for bit."""
    rng = np.random.default_rng(0)
    w = [np.zeros(2 * optim.EMA.BLOCK + 7, np.float32), np.zeros((3, 5), np.float32)]
    net, ema, s = Arrays(*w), optim.EMA(0.75), None
    for n in (1, 2, 3, 30, 31, 32):
        for a in w:
            a[...] = rng.normal(size=a.shape)
        ema.update(net, n)
        d = min(0.75, (1 + n) / (10 + n))
        s = [a.astype(np.float64) for a in w] if s is None else [d * x + (1 - d) * a for x, a in zip(s, w)]
    assert all(np.allclose(e, x, rtol=1e-6, atol=1e-6) for e, x in zip(ema.shadow, s))
    trained = [a.copy() for a in w]
    with ema.applied(net) as kept:
        assert all(np.array_equal(a, e) for a, e in zip(w, ema.shadow))
        assert all(np.array_equal(k, t) for k, t in zip(kept, trained))
    assert all(np.array_equal(a, t) for a, t in zip(w, trained))
