"""[lstm] peephole=1 (darknetpy's extension): the forward against an independent float64 reference
written here from the formulas, exact BPTT by float64 finite differences on every entry (the
helpers and tolerances of test_gradients.py: |num − ana| <= 1e-7 + 1e-5·|num|), training with the
C kernels against their numpy references (test_kernels.py checks the ops themselves, peepholes
included), the stepper, the weights layout and the updates.
"""

import functools

import numpy as np
import pytest

from darknetpy import kernels as kernelmod
from darknetpy.errors import DarknetpyError
from darknetpy.network import Network
from conftest import read_weights
from test_gradients import check_gradients, data, head, random_net, randomize_vectors
from test_kernels import K, check_training_step_with_and_without_kernels

PEEP = ("pi", "pf", "po")


def is_peep(key):
    return key.rsplit(".", 1)[1] in PEEP


build = functools.partial(random_net, vectors=PEEP)  # the peepholes ±0.8 too (they start at 0)


def lstm_body(n=4, bn=0):
    return f"[lstm]\noutput={n}\nbatch_normalize={bn}\npeephole=1\n"


# ---- forward: the formulas, written out here ----------------------------------------------

def reference_forward(p, x, n, bn, train):
    """h over the steps of one peephole [lstm] (layer0 of params p) from zero state, float64."""
    sig = lambda z: 1 / (1 + np.exp(-z))

    def sub(name, v):
        z = v @ p[f"layer0.{name}.weights"].T
        if bn:
            mean, var = (z.mean(0), z.var(0, ddof=1)) if train else \
                (p[f"layer0.{name}.rolling_mean"], p[f"layer0.{name}.rolling_variance"])
            z = p[f"layer0.{name}.scales"] * (z - mean) / (np.sqrt(var) + 1e-6)
        return z + p[f"layer0.{name}.biases"]
    S = x.shape[1]
    h, c, out = np.zeros((S, n)), np.zeros((S, n)), []
    for xt in x:
        i = sig(sub("wi", h) + sub("ui", xt) + p["layer0.pi"] * c)
        f = sig(sub("wf", h) + sub("uf", xt) + p["layer0.pf"] * c)
        g = np.tanh(sub("wg", h) + sub("ug", xt))
        c = f * c + i * g
        o = sig(sub("wo", h) + sub("uo", xt) + p["layer0.po"] * c)
        h = o * np.tanh(c)
        out.append(h)
    return np.array(out)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("bn", [0, 1])
def test_forward_is_the_peephole_formula(bn, train, write_cfg):
    net = build(write_cfg, "[net]\ninputs=5\nbatch=3\ntime_steps=4\n" + lstm_body(4, bn) + head())
    p = {k: np.array(v, copy=True) for k, v in net.params().items()}
    x, _ = data(net)
    got = net.layers[0].forward(x, train, net.layers[0].fresh_state(x.shape[1]))
    np.testing.assert_allclose(got, reference_forward(p, x, 4, bn, train), rtol=1e-12, atol=1e-13)
    # Not vacuous: the peepholes change the output.
    for k in PEEP:
        p["layer0." + k][...] = 0
    assert np.abs(got - reference_forward(p, x, 4, bn, train)).max() > 1e-3


# ---- exact BPTT ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bn", [0, 1])
def test_gradients_one_layer(bn, write_cfg):
    net = build(write_cfg, "[net]\ninputs=5\nbatch=3\ntime_steps=4\n" + lstm_body(4, bn) + head())
    nums = check_gradients(net, *data(net))
    for k in PEEP:
        assert np.abs(nums[f"layer0.{k}"]).max() > 1e-4, k


@pytest.mark.parametrize("bn", [0, 1])
def test_gradients_stack_of_two(bn, write_cfg):
    """Two peephole LSTMs: layer 0's peepholes get their gradient only through the delta layer 1
    hands down."""
    net = build(write_cfg, "[net]\ninputs=5\nbatch=3\ntime_steps=4\n" + lstm_body(4, bn) + lstm_body(3, bn) + head())
    nums = check_gradients(net, *data(net))
    for k in PEEP:
        assert np.abs(nums[f"layer0.{k}"]).max() > 1e-5, k
        assert np.abs(nums[f"layer1.{k}"]).max() > 1e-5, k


def test_gradients_ids_input_with_a_plain_lstm_above(write_cfg):
    net = build(write_cfg, "[net]\ninputs=5\nbatch=2\ntime_steps=3\n" + lstm_body(4) + "[lstm]\noutput=3\n" + head())
    rng = np.random.default_rng(7)
    check_gradients(net, rng.integers(0, 5, (3, 2)), rng.integers(0, 6, (3, 2)))


# ---- a fresh peephole net is a plain LSTM -------------------------------------------------------

@pytest.mark.parametrize("kernels", [False, True])
@pytest.mark.parametrize("bn", [0, 1])
def test_fresh_peephole_net_trains_as_the_plain_one(bn, kernels, write_cfg):
    """pi = pf = po = 0 at first: the same weights (no extra random draws), the same cost and the
    same bits in every sub-layer's update as the plain LSTM, float32, with or without the kernels."""
    if kernels and K is None:
        pytest.skip("darknetpy._kernels not built")
    text = "[net]\ninputs=9\nbatch=3\ntime_steps=5\n[lstm]\noutput=6\nbatch_normalize={bn}\n{p}[lstm]\noutput=5\n{p}" \
           "[connected]\noutput=9\nactivation=linear\n[softmax]\n"
    with kernelmod.use("c" if kernels else "numpy"):
        plain = Network(write_cfg(text.format(bn=bn, p=""), "plain.cfg"), seed=1)
        peep = Network(write_cfg(text.format(bn=bn, p="peephole=1\n"), "peep.cfg"), seed=1)
        assert peep.init_rand_draws == plain.init_rand_draws
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 9, (5, 3)), rng.integers(0, 9, (5, 3))
        assert peep.accumulate(x, y) == plain.accumulate(x, y)
    got, want = peep.params(updates=True), plain.params(updates=True)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert all(np.abs(got[f"layer{i}.{k}"]).max() > 0 for i in (0, 1) for k in PEEP)


# ---- the C kernels ------------------------------------------------------------------------------

needs_kernels = pytest.mark.skipif(K is None, reason="darknetpy._kernels not built (no C compiler at install)")


@needs_kernels
@pytest.mark.parametrize("body", ["[lstm]\noutput=6\npeephole=1\n", "[lstm]\noutput=6\npeephole=1\nbatch_normalize=1\n",
                                  "adam=1\n[lstm]\noutput=7\npeephole=1\n[lstm]\noutput=4\npeephole=1\n"])
def test_training_step_with_and_without_kernels(body, write_cfg):
    """As test_kernels.py's network-level check (its tolerances), with random peepholes."""
    cfg = write_cfg("[net]\nbatch=3\ntime_steps=4\ninputs=9\n" + body + "[connected]\noutput=9\nactivation=linear\n[softmax]\n")
    rng = np.random.default_rng(3)
    batches = [(rng.integers(0, 9, (4, 3)), rng.integers(0, 9, (4, 3))) for _ in range(2)]
    check_training_step_with_and_without_kernels(cfg, batches, "batch_normalize" in body,
                                                 lambda net: randomize_vectors(net, PEEP))


# ---- inference stepper --------------------------------------------------------------------------

@pytest.mark.parametrize("bn", [0, 1])
def test_stepper_matches_forward(bn, write_cfg):
    """Network.stepper (batchnorm folded, pre-halved weights) gives what the inference forward does,
    float32, step by step with the state carried."""
    net = build(write_cfg, "[net]\ninputs=9\nbatch=2\n" + lstm_body(6, bn) + head(9), dtype=np.float32)
    ids = np.random.default_rng(2).integers(0, 9, (12, 2))
    net.reset_state()
    want = [np.array(net.forward(i[None])[0], copy=True) for i in ids]
    net.reset_state()
    step = net.stepper(streams=2)
    got = [np.array(step(i), copy=True) for i in ids]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---- weights, cfg, info, updates ----------------------------------------------------------------

def test_weights_layout_and_alexeyab_order(write_cfg, tmp_path):
    """pi, pf, po follow the eight sub-layers, `output` float32 each; an AlexeyAB file (0, 2, 5)
    keeps its own sub-layer order and the peepholes still last."""
    text = "[net]\ninputs=5\n" + lstm_body(4) + lstm_body(3) + head()
    net = build(write_cfg, text, dtype=np.float32)
    path = tmp_path / "p.weights"
    net.save_weights(path)
    *_, payload = read_weights(path)
    params = net.params()
    sizes = {k: v.size for k, v in params.items()}
    layer0 = sum(s for k, s in sizes.items() if k.startswith("layer0."))
    assert layer0 == 4 * (4 * 4 + 4) + 4 * (4 * 5 + 4) + 3 * 4
    at = layer0 - 12
    for k in PEEP:
        np.testing.assert_array_equal(payload[at:at + 4], params[f"layer0.{k}"])
        at += 4
    plain = Network(write_cfg(text.replace("peephole=1\n", ""), "plain.cfg"))
    assert payload.size == sum(v.size for v in plain.params().values()) + 3 * 4 + 3 * 3

    order = ["wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo"]
    chunks = [b"".join(np.ascontiguousarray(params[f"layer{i}.{s}.{w}"], "<f4").tobytes()
                       for s in order for w in ("biases", "weights"))
              + b"".join(params[f"layer{i}.{k}"].astype("<f4").tobytes() for k in PEEP) for i in (0, 1)]
    alexey = tmp_path / "a.weights"
    alexey.write_bytes(np.array([0, 2, 5], "<i4").tobytes() + np.array([7], "<u8").tobytes() + b"".join(chunks)
                       + params["layer2.biases"].astype("<f4").tobytes() + params["layer2.weights"].astype("<f4").tobytes())
    fresh = Network(write_cfg(text, "fresh.cfg"))
    fresh.load_weights(alexey)
    for key, v in params.items():
        np.testing.assert_array_equal(fresh.params()[key], v, err_msg=key)


def test_peephole_must_be_0_or_1(write_cfg):
    cfg = write_cfg("[net]\ninputs=5\n[lstm]\noutput=4\npeephole=2\n" + head())
    with pytest.raises(DarknetpyError, match=f"{cfg}:5: peephole must be 0 or 1, got 2"):
        Network(cfg)


def test_info_says_it_is_darknetpys_extension(write_cfg):
    from click.testing import CliRunner

    from darknetpy.cli import main
    cfg = write_cfg("[net]\ninputs=5\n[lstm]\noutput=4\n[lstm]\noutput=4\npeephole=1\n" + head())
    out = CliRunner().invoke(main, ["info", str(cfg)]).output
    assert "lstm+peephole" in out and "layer 1 [lstm]: peephole=1 is darknetpy's extension, not Darknet's" in out
    assert "layer 0 [lstm]:" not in out
    net = Network(cfg)
    assert f"weights file: {20 + 4 * sum(v.size for v in net.params().values())} bytes" in out


def test_sgd_updates_peepholes_as_weights(write_cfg):
    """SGD: p += lr/B (dp − decay·B·p), then dp *= momentum, as for weights (decay included)."""
    net = build(write_cfg, "[net]\ninputs=5\nbatch=2\ntime_steps=3\nlearning_rate=0.1\nmomentum=0.5\n"
                           "decay=0.01\n" + lstm_body(4) + head(), dtype=np.float32)
    x, y = data(net)
    net.accumulate(x.astype(np.float32), y)
    p0 = {k: np.array(v, np.float64) for k, v in net.params().items() if is_peep(k)}
    d0 = {k: np.array(v, np.float64) for k, v in net.params(updates=True).items() if is_peep(k)}
    net.update()
    B = 2 * 3
    for k in p0:
        upd = d0[k] - 0.01 * B * p0[k]
        np.testing.assert_allclose(net.params()[k], p0[k] + 0.1 / B * upd, rtol=1e-6, atol=1e-7, err_msg=k)
        np.testing.assert_allclose(net.params(updates=True)[k], 0.5 * upd, rtol=1e-6, atol=1e-7, err_msg=k)
        assert np.abs(d0[k]).max() > 1e-3
