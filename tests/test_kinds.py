"""Every registered layer kind (layers.KINDS: a new kind is covered without editing this file), in a
small byte model `[kind] -> [connected] -> [softmax]` with random parameters (a kind without
weights, which cannot read ids, after a [connected] of its own):

- the per-step path (Network.stepper on a fresh state) gives what the forward over T steps gives,
  outputs and final state, to float32 rounding (2e-6 absolute on probabilities, 1e-5 on states:
  the two paths sum products in different orders);
- a stream's outputs are the same bits at 1, 9 and 32 streams (the batch-invariant stepper), and
  to float32 rounding in the BLAS stepper of many streams;
- generate (one sample, several, beam search) and score leave the network's carried state as it
  was (the same arrays, the same values);
- every kind writes its own stepper (the base class has none to fall back on).

Stateless kinds are checked for what applies to them (their state is empty).
"""
import warnings

import numpy as np
import pytest

from darknetpy.cfg import CfgWarning
from darknetpy.layers import KINDS
from darknetpy.layers.base import Layer
from darknetpy.network import Network

CLASSES = sorted(set(KINDS.values()), key=lambda cls: cls.kind)
VARIANTS = {"lstm": ["peephole=1\n", "peephole=1\nbatch_normalize=1\n"]}  # besides "" and batchnorm for every kind
CASES = [(cls.kind, extra) for cls in CLASSES for extra in ["", "batch_normalize=1\n"] + VARIANTS.get(cls.kind, [])]
V, T = 64, 7  # the model's byte range, and the steps compared


@pytest.fixture(params=CASES, ids=[f"{kind}{'-' + extra.strip().replace(chr(10), '-') if extra else ''}"
                                   for kind, extra in CASES])
def net(request, write_cfg):
    """The byte model around one kind, float32, every parameter random (variances positive); keys the
    kind does not read (output= of a kind without weights) are ignored."""
    kind, extra = request.param
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CfgWarning)
        for before in ("", "[connected]\noutput=12\nactivation=tanh\n"):
            cfg = write_cfg(f"[net]\ninputs={V}\nbatch=4\ntime_steps={T}\n{before}[{kind}]\noutput=12\n{extra}"
                            f"[connected]\noutput={V}\nactivation=linear\n[softmax]\n")
            net = Network(cfg, seed=1)
            if net.layers[0].denses:
                break
    rng = np.random.default_rng(7)
    for key, value in net.params().items():
        if key.endswith("rolling_variance"):
            value[...] = rng.uniform(0.5, 1.5, value.shape)
        else:
            value[...] = rng.normal(0, 0.5, value.shape)
    net.refresh()
    return net


def test_every_kind_writes_its_own_stepper():
    """The trap of a default stepper running the training forward (on the layer's own state) is
    gone: the base class has none, and every registered kind defines one."""
    for cls in CLASSES:
        assert cls.stepper is not Layer.stepper, cls.kind
    with pytest.raises(NotImplementedError):
        Layer.stepper(Layer.__new__(Layer), 1, True, [])


@pytest.mark.parametrize("ids", [True, False])
def test_the_step_path_on_a_fresh_state_is_the_forward(net, ids):
    rng = np.random.default_rng(3)
    x = rng.integers(0, V, (T, 3))
    inputs = x if ids else rng.normal(0, 1, (T, 3, V)).astype(np.float32)  # float rows, not one-hot
    want = np.array(net.forward(inputs), copy=True)
    state = {k: a.copy() for k, a in net.states.items()}
    step = net.stepper(3, ids=ids, private=True, invariant=True)
    got = np.array([np.array(step(inputs[t]), copy=True) for t in range(T)])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
    assert np.abs(want).max() > 0
    carried = [a for i in range(len(net.layers)) for a in net.carried(i, 3)]
    assert len(carried) == len(step.arrays())
    for a, b in zip(step.arrays(), carried):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    for k, a in state.items():  # the private stepper ran on its own state
        np.testing.assert_array_equal(net.states[k], a)


def test_a_stream_is_the_same_at_1_9_and_32_streams(net):
    rng = np.random.default_rng(4)
    x = rng.integers(0, V, (T, 32))
    runs = {}
    for streams in (1, 9, 32):
        step = net.stepper(streams, private=True, invariant=True)
        runs[streams] = np.array([np.array(step(x[t, :streams]), copy=True) for t in range(T)])
    for streams in (9, 32):
        assert np.array_equal(runs[streams][:, :1].view(np.uint32), runs[1].view(np.uint32))
    assert np.array_equal(runs[32][:, :9].view(np.uint32), runs[9].view(np.uint32))
    blas = net.stepper(32, private=True)  # not invariant: plain BLAS products
    fast = np.array([np.array(blas(x[t]), copy=True) for t in range(T)])
    np.testing.assert_allclose(fast, runs[32], rtol=0, atol=2e-6)


def test_generation_and_scoring_leave_the_carried_state_alone(net):
    rng = np.random.default_rng(5)
    for _ in range(2):  # a carried state that is not zero
        net.forward(rng.integers(0, V, (T, net.streams)))
    before = {k: (a, a.copy()) for k, a in net.states.items()}
    assert all(a.any() for _, a in before.values())
    seed = bytes(rng.integers(1, V, 5).tolist())
    net.generate(seed=seed, length=12, srand=3)
    net.generate(seed=seed, length=12, srand=3, samples=3, top_k=5)
    net.generate(seed=seed, length=8, beam=3)
    net.score(bytes(rng.integers(0, V, 40).tolist()), seed=seed)
    assert net.states.keys() == before.keys()
    for k, (array, values) in before.items():
        assert net.states[k] is array, k
        np.testing.assert_array_equal(array, values, err_msg=k)
