"""The one evaluator (darknetpy/evaluate.py): the estimate during training is `darknetpy valid`'s
algorithm with the held-out text split into chunks run side by side as streams, checked against
the exact, sequential score (Darknet's `rnn valid`, whose lines tests/test_sample.py and
tests/test_oracle.py hold to the C Darknet's byte for byte)."""
from pathlib import Path

import numpy as np
import pytest

from darknetpy import evaluate
from darknetpy.data import StreamBatcher
from darknetpy.network import Network

TEXT = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"
HELD = 6000  # bytes held out at the end of the slice the model trains on
SEED = b"\n\n"

CFG = """[net]
batch=16
subdivisions=1
time_steps=32
inputs=256
adam=1
learning_rate=0.01

[lstm]
output=48

[connected]
output=256
activation=linear

[softmax]
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small LSTM trained briefly on 100 kB of Shakespeare, and 6 kB after it it never saw."""
    cfg = tmp_path_factory.mktemp("evaluate") / "lstm.cfg"
    cfg.write_text(CFG)
    net = Network(cfg, seed=1)
    ids = np.frombuffer(TEXT.read_bytes()[:100_000 + HELD], np.uint8)
    batcher = StreamBatcher(ids[:-HELD], net.streams, net.time_steps, np.random.default_rng(1))
    for _ in range(120):
        net.train_step(*batcher.next_batch())
    held = ids[-HELD:]
    exact = evaluate.validate(net, held.tobytes(), seed=SEED)[1]
    assert exact < 5  # it learned something: a fresh network scores about 8
    return net, held, exact


def chunked_bpc(net, held, chunks, warmup):
    """Bits per character scored through `layout`'s chunks, summed in float64."""
    x, y, scored = evaluate.layout(held, list(SEED), chunks, warmup)
    p = np.array(list(evaluate.predictions(net, x, y)))
    return -np.log2(p[scored].astype(np.float64)).sum() / (len(held) - 1)


def test_chunks_with_their_whole_history_give_the_exact_score(trained):
    """Warmed up on everything before it, each of 8 chunks carries the state valid carries: the
    chunked score is valid's, up to float32 rounding (valid's accumulator is float32, and the
    stepper's products at 8 streams round differently from 1 stream's)."""
    net, held, exact = trained
    assert abs(chunked_bpc(net, held, 8, warmup=len(held)) - exact) < 1e-4


def test_one_chunk_is_valid(trained):
    net, held, exact = trained
    estimate = evaluate.Estimate(held, list(SEED), max_streams=1)
    assert estimate.x.shape[1] == 1 and estimate.count == len(held) - 1
    assert estimate(net) == pytest.approx(exact, abs=1e-4)


def test_the_bounded_estimate_is_close_to_the_exact_score(trained):
    """46 chunks of about 130 characters, each warmed up on the 64 before it: a chunk's state has
    not seen the text further back, which costs its first scored characters a little (a trained
    char-LSTM's state keeps little of what it read more than a few dozen characters ago) and the
    rest nothing measurable. Measured here: under 1e-5 bpc (this briefly trained model remembers
    little); the bound 0.02 is the one the training's estimate is held to (tests/test_train.py,
    on a model trained longer), twice the standard error of a bpc on data.VALID_SLICE characters."""
    net, held, exact = trained
    estimate = evaluate.Estimate(held, list(SEED), warmup=64)
    assert estimate.x.shape[1] == (len(held) - 1) // 128
    assert abs(estimate(net) - exact) < 0.02


def test_the_estimate_leaves_the_network_alone(trained, monkeypatch):
    """No second network, no copy of the parameters, and the training state untouched: the
    network's carried state and weights are the same bits after an estimate."""
    net, held, _ = trained
    estimate = evaluate.Estimate(held[:2000], list(SEED))
    net.forward(np.zeros((1, net.streams), np.int64))  # a carried state that is not zero
    state = {k: a.copy() for k, a in net.states.items()}
    assert state and all(a.any() for a in state.values())
    params = {k: v.copy() for k, v in net.params().items()}

    def refuse(*args, **kwargs):
        raise AssertionError("the estimate built a network or copied its parameters")
    monkeypatch.setattr(Network, "__init__", refuse)
    monkeypatch.setattr(Network, "params", refuse)
    first = estimate(net)
    assert estimate(net) == first
    monkeypatch.undo()
    assert net.states.keys() == state.keys()
    for k, a in state.items():
        np.testing.assert_array_equal(net.states[k], a)
    for k, v in net.params().items():
        np.testing.assert_array_equal(v, params[k])


def test_a_stop_ends_the_estimate(trained):
    net, held, _ = trained
    assert evaluate.Estimate(held, list(SEED))(net, stop=lambda: True) is None
