"""Exact BPTT, checked against float64 central finite differences.

Every net here is small enough that EVERY entry of EVERY trainable array is checked. The network
runs in float64 (`Network(..., dtype=np.float64)`), parameters are randomized (weights ±0.8,
biases ±0.5, batchnorm scales 0.5..1.5), x is random (time_steps, streams, inputs) and the targets
are random class ids. `accumulate` adds the NEGATIVE gradient to the update buffers that
`params(updates=True)` shows; the state is reset before every evaluation.

Finite differences: (C(θ+h) − C(θ−h)) / 2h with h = 1e-6. Tolerance |num − ana| <= 1e-7 + 1e-5·|num|:
the round-off of a float64 cost of size ~10 divided by 2h is ~1e-9, the truncation error ~h²·C''' is
far below, and 1e-7 absolute leaves room for tiny gradients that are noise-limited.
For piecewise activations (relu, leaky, ramp, ...) a kink within h of a pre-activation would spoil
one difference; with a fixed seed and ~100 pre-activations spread over O(1) ranges the chance of one
within 1e-6 is ~1e-4, and the seeds here are fixed, so the checks are deterministic.
"""
import numpy as np
import pytest

from darknetpy.activations import ACTIVATIONS
from darknetpy.errors import DarknetpyError
from darknetpy.network import Network

H = 1e-6
ATOL, RTOL = 1e-7, 1e-5


def build(write_cfg, text, seed=0):
    net = Network(write_cfg(text), seed=seed, dtype=np.float64)
    randomize(net, np.random.default_rng(seed + 1000))
    return net


def randomize_vectors(net, vectors, seed=5):
    """Only darknetpy's per-unit vectors named in `vectors` (the peepholes, [sru]'s vf, vr), uniform in ±0.8."""
    rng = np.random.default_rng(seed)
    for key, v in net.params().items():
        if key.rsplit(".", 1)[1] in vectors:
            v[...] = rng.uniform(-0.8, 0.8, v.shape)


def random_net(write_cfg, text, vectors=(), seed=0, dtype=np.float64):
    """A net from cfg `text` with every parameter random (`randomize`), the `vectors` included."""
    net = Network(write_cfg(text), seed=seed, dtype=dtype)
    randomize(net, np.random.default_rng(seed + 1000), vectors=vectors)
    return net


def randomize(net, rng, vectors=()):
    """Every parameter random; the `vectors` (names of darknetpy's per-unit vectors, such as the
    peepholes, which start at 0) uniform in ±0.8."""
    for key, v in net.params().items():
        kind = key.rsplit(".", 1)[1]
        if kind == "weights" or kind in vectors:
            v[...] = rng.uniform(-0.8, 0.8, v.shape)
        elif kind == "biases":
            v[...] = rng.uniform(-0.5, 0.5, v.shape)
        elif kind == "scales":
            v[...] = rng.uniform(0.5, 1.5, v.shape)
        elif kind == "rolling_mean":
            v[...] = rng.uniform(-0.2, 0.2, v.shape)
        elif kind == "rolling_variance":
            v[...] = rng.uniform(0.5, 1.5, v.shape)
        else:
            raise AssertionError(f"unexpected parameter {key}")


def data(net, seed=0, classes=None):
    rng = np.random.default_rng(seed)
    T, S = net.time_steps, net.streams
    x = rng.uniform(-1, 1, (T, S, net.inputs))
    y = rng.integers(0, classes or net.outputs, (T, S))
    return x, y


def zero_updates(net):
    for v in net.params(updates=True).values():
        v[...] = 0


def cost(net, x, y):
    net.reset_state()
    return float(net.accumulate(x, y))


def analytic(net, x, y):
    """(cost, {key: gradient}) from one accumulate (the buffers hold the negative gradient)."""
    zero_updates(net)
    c = cost(net, x, y)
    grads = {k: -np.array(v, np.float64) for k, v in net.params(updates=True).items()}
    zero_updates(net)
    return c, grads


def numeric(net, x, y, key, idx):
    p = net.params()[key]
    orig = p[idx]
    p[idx] = orig + H
    cp = cost(net, x, y)
    p[idx] = orig - H
    cm = cost(net, x, y)
    p[idx] = orig
    return (cp - cm) / (2 * H)


def check_gradients(net, x, y, scale=1.0):
    """Compare every trainable entry: analytic == scale * numeric. Returns the numeric gradients."""
    assert net.dtype == np.float64
    c0, grads = analytic(net, x, y)
    trainable = {k for k in net.params() if not k.rsplit(".", 1)[1].startswith("rolling")}
    assert set(grads) == trainable
    failures, nums = [], {}
    for key, g in grads.items():
        num = np.zeros_like(g)
        for idx in np.ndindex(g.shape):
            num[idx] = numeric(net, x, y, key, idx)
            want = scale * num[idx]
            if not abs(g[idx] - want) <= ATOL + RTOL * abs(want):
                failures.append(f"{key}{list(idx)}: analytic {g[idx]:.9g}, numeric {want:.9g}")
        nums[key] = num
    assert cost(net, x, y) == c0  # the parameters are back where they were
    assert not failures, f"{len(failures)} gradient mismatches, first: " + "; ".join(failures[:8])
    # Not vacuous: the cost really depends on the parameters.
    assert max(np.abs(n).max() for n in nums.values()) > 1e-2
    return nums


def head(n_out=6):
    return f"[connected]\noutput={n_out}\nactivation=linear\n[softmax]\n"


SMOOTH_OR_PIECEWISE = sorted(a for a in ACTIVATIONS if a != "stair")


def test_every_activation_but_stair_is_covered():
    for name in ["logistic", "tanh", "leaky", "linear", "elu", "selu", "loggy", "relie", "ramp",
                 "plse", "lhtan", "hardtan", "relu"]:
        assert name in SMOOTH_OR_PIECEWISE


@pytest.mark.parametrize("activation", SMOOTH_OR_PIECEWISE)
def test_rnn_each_activation(activation, write_cfg):
    net = build(write_cfg, f"[net]\ninputs=5\nbatch=2\ntime_steps=3\n[rnn]\noutput=4\nactivation={activation}\n" + head())
    x, y = data(net)
    nums = check_gradients(net, x, y)
    if activation not in ("hardtan",):  # every sub-layer of the rnn receives gradient
        for key in ("layer0.input_layer.weights", "layer0.self_layer.weights", "layer0.output_layer.weights"):
            assert np.abs(nums[key]).max() > 1e-4, key


@pytest.mark.parametrize("activation", ["logistic", "leaky", "tanh"])
def test_rnn_shortcut(activation, write_cfg):
    net = build(write_cfg, f"[net]\ninputs=5\nbatch=2\ntime_steps=4\n[rnn]\noutput=4\nshortcut=1\nactivation={activation}\n" + head())
    check_gradients(net, *data(net))


@pytest.mark.parametrize("activation", ["tanh", "leaky"])
def test_rnn_batch_normalize(activation, write_cfg):
    net = build(write_cfg, f"[net]\ninputs=5\nbatch=3\ntime_steps=3\n[rnn]\noutput=4\nbatch_normalize=1\nactivation={activation}\n" + head())
    nums = check_gradients(net, *data(net))
    assert np.abs(nums["layer0.self_layer.scales"]).max() > 1e-4


@pytest.mark.parametrize("tanh", [0, 1])
@pytest.mark.parametrize("bn", [0, 1])
def test_gru(tanh, bn, write_cfg):
    net = build(write_cfg, f"[net]\ninputs=5\nbatch=3\ntime_steps=4\n[gru]\noutput=4\ntanh={tanh}\nbatch_normalize={bn}\n" + head())
    nums = check_gradients(net, *data(net))
    for sub in ("wz", "wr", "wh", "uz", "ur", "uh"):
        assert np.abs(nums[f"layer0.{sub}.weights"]).max() > 1e-4, sub


@pytest.mark.parametrize("bn", [0, 1])
def test_lstm(bn, write_cfg):
    net = build(write_cfg, f"[net]\ninputs=5\nbatch=3\ntime_steps=4\n[lstm]\noutput=4\nbatch_normalize={bn}\n" + head())
    nums = check_gradients(net, *data(net))
    for sub in ("wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug"):
        assert np.abs(nums[f"layer0.{sub}.weights"]).max() > 1e-4, sub


@pytest.mark.parametrize("activation", ["tanh", "leaky", "logistic"])
def test_connected_batch_normalize(activation, write_cfg):
    net = build(write_cfg, f"[net]\ninputs=5\nbatch=2\ntime_steps=3\n[connected]\noutput=4\nbatch_normalize=1\n"
                           f"activation={activation}\n" + head())
    nums = check_gradients(net, *data(net))
    assert np.abs(nums["layer0.scales"]).max() > 1e-4


def test_connected_stack_one_step(write_cfg):
    net = build(write_cfg, "[net]\ninputs=5\nbatch=4\n[connected]\noutput=4\nactivation=logistic\n"
                           "[connected]\noutput=3\nactivation=tanh\n" + head())
    check_gradients(net, *data(net))


def group_truth(net, seed, groups):
    """Float truth with one 1 in every softmax group of every row."""
    rng = np.random.default_rng(seed)
    T, S, n = net.time_steps, net.streams, net.outputs
    k = n // groups
    y = np.zeros((T, S, n))
    for t, s, g in np.ndindex(T, S, groups):
        y[t, s, g * k + rng.integers(k)] = 1
    return y


def test_softmax_groups(write_cfg):
    net = build(write_cfg, "[net]\ninputs=5\nbatch=2\ntime_steps=3\n[rnn]\noutput=4\nactivation=tanh\n"
                           "[connected]\noutput=8\nactivation=linear\n[softmax]\ngroups=2\n")
    x, _ = data(net)
    y = group_truth(net, 3, 2)
    check_gradients(net, x, y)
    # The cost counts -ln p of both groups' targets: it is independent of the grouping's other entries.
    p = net.forward(x)  # inference forward (state continues; only the grouping matters here)
    np.testing.assert_allclose(p.reshape(3, 2, 2, 4).sum(-1), 1, rtol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_softmax_temperature_delta_is_not_divided(temperature, write_cfg):
    """Darknet hands back truth − p without dividing by T: the 'gradient' it accumulates is the exact
    gradient of the cost times T (and exactly the gradient at T = 1)."""
    net = build(write_cfg, "[net]\ninputs=5\nbatch=2\ntime_steps=3\n[rnn]\noutput=4\nactivation=tanh\n"
                           f"[connected]\noutput=6\nactivation=linear\n[softmax]\ntemperature={temperature}\n")
    x, y = data(net)
    check_gradients(net, x, y, scale=temperature)
    # And the relationship is not an accident of small numbers: it differs from scale 1.
    _, grads = analytic(net, x, y)
    key = "layer1.weights"
    num = np.array([[numeric(net, x, y, key, (i, j)) for j in range(4)] for i in range(6)])
    assert np.abs(grads[key] - num).max() > 1e-3


def test_three_recurrent_layers_stack(write_cfg):
    """gru -> lstm -> rnn -> connected -> softmax: the lower layers' gradients only come through
    the deltas each layer passes down, over time_steps=4 and 3 streams."""
    net = build(write_cfg, "[net]\ninputs=5\nbatch=3\ntime_steps=4\n[gru]\noutput=4\n[lstm]\noutput=4\n"
                           "[rnn]\noutput=4\nactivation=tanh\n" + head())
    nums = check_gradients(net, *data(net))
    assert np.abs(nums["layer0.uz.weights"]).max() > 1e-5
    assert np.abs(nums["layer1.ui.weights"]).max() > 1e-5


@pytest.mark.parametrize("bn", [0, 1])
def test_two_layer_stack_with_subdivisions(bn, write_cfg):
    """Streams = batch / subdivisions; the first layer's params check the delta the second passes down."""
    net = build(write_cfg, f"[net]\ninputs=5\nbatch=6\nsubdivisions=2\ntime_steps=3\n[lstm]\noutput=3\nbatch_normalize={bn}\n"
                           "[gru]\noutput=4\ntanh=1\n" + head())
    assert net.streams == 3
    check_gradients(net, *data(net))


@pytest.mark.parametrize("streams", [1, 3])
@pytest.mark.parametrize("body", ["[lstm]\noutput=4\n[gru]\noutput=3\n", "[gru]\noutput=4\ntanh=1\n[lstm]\noutput=3\n",
                                  "[rnn]\noutput=4\nactivation=leaky\n[lstm]\noutput=3\n"])
def test_one_hot_ids_input(streams, body, write_cfg):
    """Class ids as input: the first layer's projection is a gather from a table holding the biases
    (and its weight gradient one sum per id over the rows holding it), also with a single stream."""
    net = build(write_cfg, f"[net]\ninputs=5\nbatch={streams}\ntime_steps=3\n{body}" + head())
    rng = np.random.default_rng(7)
    x = rng.integers(0, 5, (3, streams))
    nums = check_gradients(net, x, rng.integers(0, 6, (3, streams)))
    first = next(k for k in ("layer0.ui.weights", "layer0.uz.weights", "layer0.input_layer.weights") if k in nums)
    # (outputs, inputs): exactly the columns of the ids that occur get a gradient
    assert np.count_nonzero(np.abs(nums[first]).max(axis=0) > 1e-6) == len(set(x.ravel().tolist()))


@pytest.mark.parametrize("body", ["[lstm]\noutput=3\n", "[gru]\noutput=3\n", "[rnn]\noutput=3\n", ""])
def test_out_of_range_ids_are_refused(body, write_cfg):
    """The layers gather with ids unchecked (numpy's check costs a copy); the network refuses ids
    outside [0, inputs) before they get there."""
    net = build(write_cfg, f"[net]\ninputs=5\nbatch=2\ntime_steps=3\n{body}" + head())
    for bad in (5, -1):
        x = np.zeros((3, 2), np.int64)
        x[1, 1] = bad
        with pytest.raises(DarknetpyError, match=r"input id out of range \[0, 5\)"):
            net.forward(x)
        with pytest.raises(DarknetpyError, match=r"input id out of range \[0, 5\)"):
            net.train_step(x, np.zeros((3, 2), np.int64))


# ---- state across datums -------------------------------------------------------------------------

STATE_NET = ("[net]\ninputs=5\nbatch=3\ntime_steps=8\n[gru]\noutput=4\n[lstm]\noutput=4\n"
             "[rnn]\noutput=4\nactivation=tanh\nshortcut=1\n" + head())


def copy_params(src, dst):
    for key, v in src.params().items():
        dst.params()[key][...] = v


def recurrent_state(net):
    return [np.array(a, copy=True) for i in range(len(net.layers)) for a in net.carried(i, net.streams)]


def test_state_carries_across_datums(write_cfg):
    long = build(write_cfg, STATE_NET)
    short = Network(write_cfg(STATE_NET, "short.cfg"), time_steps=4, seed=99, dtype=np.float64)
    assert short.time_steps == 4
    copy_params(long, short)
    x, y = data(long)
    long.reset_state()
    c8 = float(long.accumulate(x, y))
    short.reset_state()
    c_a = float(short.accumulate(x[:4], y[:4]))
    c_b = float(short.accumulate(x[4:], y[4:]))
    assert c_a + c_b == pytest.approx(c8, rel=1e-12, abs=0)
    for a, b in zip(recurrent_state(long), recurrent_state(short)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13)
    # The carried state matters: from a reset state the second half costs something else.
    short.reset_state()
    assert abs(float(short.accumulate(x[4:], y[4:])) - c_b) > 1e-3

    # Inference forward alike: one 8-step call equals two 4-step calls.
    long.reset_state()
    short.reset_state()
    out8 = np.array(long.forward(x), copy=True)
    out4 = np.concatenate([np.array(short.forward(x[:4]), copy=True), np.array(short.forward(x[4:]), copy=True)])
    np.testing.assert_allclose(out4, out8, rtol=0, atol=1e-13)


def test_train_step_carries_state(write_cfg):
    """With a zero learning rate train_step changes nothing but the state: two datums cost what one
    long sequence costs."""
    text = STATE_NET.replace("[net]\n", "[net]\nlearning_rate=0\nmomentum=0\ndecay=0\n")
    long = build(write_cfg, text)
    short = Network(write_cfg(text, "short.cfg"), time_steps=4, seed=5, dtype=np.float64)
    copy_params(long, short)
    x, y = data(long)
    c8 = float(long.train_step(x, y))
    c4 = float(short.train_step(x[:4], y[:4])) + float(short.train_step(x[4:], y[4:]))
    assert c4 == pytest.approx(c8, rel=1e-12, abs=0)


def test_reset_state_of_one_stream(write_cfg):
    net = build(write_cfg, STATE_NET)
    fresh = build(write_cfg, STATE_NET)
    x, _ = data(net)
    net.reset_state()
    net.forward(x[:5])
    before = recurrent_state(net)
    assert len(before) == 4  # gru h, lstm h and c, rnn s
    assert all(np.abs(s[1]).max() > 0.01 for s in before)  # stream 1 really has a state to lose
    net.reset_state(1)
    after = recurrent_state(net)
    for b, a in zip(before, after):
        assert np.all(a[1] == 0)
        np.testing.assert_array_equal(a[[0, 2]], b[[0, 2]])
    # Stream 1 now behaves like a fresh stream; the others continue.
    step = x[5:6]
    out = np.array(net.forward(step), copy=True)
    fresh.reset_state()
    out_fresh = np.array(fresh.forward(step), copy=True)
    np.testing.assert_allclose(out[0, 1], out_fresh[0, 1], rtol=0, atol=1e-14)
    assert np.abs(out[0, 0] - out_fresh[0, 0]).max() > 1e-6
    # reset_state() zeroes every stream.
    net.reset_state()
    assert all(np.all(s == 0) for s in recurrent_state(net))


# ---- batchnorm in training: batch statistics forward, rolling statistics moved by 1% -----------

def test_connected_batchnorm_training_forward_and_rolling_update(write_cfg):
    """Training normalizes with the datum's own statistics over all steps*streams rows (variance
    with the n−1 divisor, ε after the square root) and moves the rolling statistics by 1%."""
    net = build(write_cfg, "[net]\ninputs=5\nbatch=2\ntime_steps=3\n[connected]\noutput=4\nbatch_normalize=1\n"
                           "activation=tanh\n[softmax]\n")
    p = {k: np.array(v, copy=True) for k, v in net.params().items()}
    x, y = data(net)
    z = x.reshape(6, 5) @ p["layer0.weights"].T
    mean, var = z.mean(0), z.var(0, ddof=1)
    a = np.tanh(p["layer0.scales"] * (z - mean) / (np.sqrt(var) + 1e-6) + p["layer0.biases"])
    e = np.exp(a - a.max(1, keepdims=True))
    prob = e / e.sum(1, keepdims=True)
    want = -np.log(prob[np.arange(6), y.reshape(6)]).sum()
    assert cost(net, x, y) == pytest.approx(want, rel=1e-12)
    q = net.params()
    np.testing.assert_allclose(q["layer0.rolling_mean"], 0.99 * p["layer0.rolling_mean"] + 0.01 * mean, rtol=1e-6)
    np.testing.assert_allclose(q["layer0.rolling_variance"], 0.99 * p["layer0.rolling_variance"] + 0.01 * var, rtol=1e-6)


def test_recurrent_batchnorm_statistics_are_per_time_step(write_cfg):
    """[rnn] input_layer with batch_normalize: each time step is normalized over the streams and
    moves the rolling statistics by 1%, one step after the other."""
    net = build(write_cfg, "[net]\ninputs=5\nbatch=3\ntime_steps=4\n[rnn]\noutput=4\nbatch_normalize=1\n"
                           "activation=tanh\n" + head())
    p = {k: np.array(v, copy=True) for k, v in net.params().items()}
    x, y = data(net)
    cost(net, x, y)
    rm, rv = p["layer0.input_layer.rolling_mean"], p["layer0.input_layer.rolling_variance"]
    for t in range(4):
        z = x[t] @ p["layer0.input_layer.weights"].T
        rm = 0.99 * rm + 0.01 * z.mean(0)
        rv = 0.99 * rv + 0.01 * z.var(0, ddof=1)
    q = net.params()
    np.testing.assert_allclose(q["layer0.input_layer.rolling_mean"], rm, rtol=1e-6)
    np.testing.assert_allclose(q["layer0.input_layer.rolling_variance"], rv, rtol=1e-6)


def test_recurrent_batchnorm_training_with_one_stream_is_refused(write_cfg):
    """Recurrent sub-layers normalize each time step over the streams (variance divisor n − 1), so
    one stream cannot train them, however many time steps: refused before anything changes."""
    from darknetpy.errors import DarknetpyError
    net = Network(write_cfg("[net]\ninputs=5\nbatch=1\ntime_steps=4\n[lstm]\noutput=3\nbatch_normalize=1\n" + head(5)), seed=0)
    before = {k: np.array(v, copy=True) for k, v in net.params().items()}
    x = np.random.default_rng(0).integers(0, 5, (4, 1))
    with pytest.raises(DarknetpyError, match="stream"):
        net.train_step(x, np.roll(x, -1, axis=0))
    for key, value in net.params().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_connected_batchnorm_trains_with_one_stream_and_several_steps(write_cfg):
    """A top-level [connected] normalizes over all steps·streams rows: 1 stream × 4 steps is fine."""
    net = Network(write_cfg("[net]\ninputs=5\nbatch=1\ntime_steps=4\n[connected]\noutput=3\nbatch_normalize=1\n"
                            "activation=tanh\n" + head(5)), seed=0)
    x = np.random.default_rng(0).integers(0, 5, (4, 1))
    cost = net.train_step(x, np.roll(x, -1, axis=0))
    assert np.isfinite(cost)
    assert all(np.isfinite(v).all() for v in net.params().values())
