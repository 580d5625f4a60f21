"""darknetpy against the real Darknet (infer_*, train_*) and the float64 autograd oracles (grad_*).

Tolerances (from ../shared/oracle/README.md and each case.json):
  inference probabilities and recurrent states: 2e-5 absolute (Darknet -Ofast vs -O2 differ by 2.1e-6);
  training costs: 1e-5 relative; rates: 1e-7 absolute; parameters after each update: 1e-6 absolute
  (the independent re-derivation reproduces them to 1.2e-7);
  gradient oracles: cost 1e-4 relative, negative gradients 1e-5 absolute, weights after the
  update 1e-5 absolute.
"""
import numpy as np
import pytest

import darknetpy
from conftest import flat_params, onehot, oracle_case, read_weights

INFER = ["infer_rnn_leaky", "infer_gru", "infer_lstm"]
TRAIN = ["train_sgd_plain", "train_momentum_decay", "train_policy_steps"]
PROB_ATOL = 2e-5
STATE_ATOL = 2e-5
pytestmark = pytest.mark.usefixtures("kernels_mode")  # each test once per way the kernels run (conftest)


def record_outputs(net, monkeypatch):
    """Wrap every layer's forward (on the instance) so each call's output is recorded."""
    seen = {i: [] for i in range(len(net.layers))}
    for i, layer in enumerate(net.layers):
        original = layer.forward

        def wrapped(x, train, state, _original=original, _i=i):
            y = _original(x, train, state)
            seen[_i].append(np.array(y, copy=True))
            return y
        monkeypatch.setattr(layer, "forward", wrapped)
    return seen


# ---- inference -----------------------------------------------------------------------------------

def layer_dumps(d, kind):
    """{layer index: array} from the case's layer<i>_<kind>.npy files."""
    return {int(f.name[5:].split("_")[0]): np.load(f) for f in d.glob(f"layer*_{kind}.npy")}


@pytest.mark.parametrize("name", INFER)
def test_inference_probs_and_states_match_darknet(name, monkeypatch):
    d = oracle_case(name)
    net = darknetpy.load_network(d / "model.cfg", d / "model.weights")
    text = (d / "input.txt").read_bytes()
    probs = np.load(d / "probs.npy")
    assert probs.shape == (len(text), 256)
    outputs_want = layer_dumps(d, "output")
    cells_want, states_want = layer_dumps(d, "cell"), layer_dumps(d, "state")  # LSTM c, RNN s
    assert outputs_want
    # predict runs the prepared stepper; every layer's output is checked through the general
    # forward of a second network, fed the same one-hot rows
    general = darknetpy.load_network(d / "model.cfg", d / "model.weights")
    outputs = record_outputs(general, monkeypatch)
    got_p = []
    cells = {i: [] for i in cells_want}
    states = {i: [] for i in states_want}
    for byte in text:
        general.forward(onehot(byte)[None, None])
        p = net.predict(onehot(byte))
        assert p.shape == (256,)
        got_p.append(np.array(p, copy=True))
        for i in cells:
            cells[i].append(np.array(net.states[f"layer{i}.c"], copy=True).reshape(-1))
        for i in states:
            states[i].append(np.array(net.states[f"layer{i}.h"], copy=True).reshape(-1))
    np.testing.assert_allclose(np.array(got_p), probs, rtol=0, atol=PROB_ATOL)
    for i, want in outputs_want.items():
        got = np.array([o.reshape(-1) for o in outputs[i]])
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=0, atol=STATE_ATOL, err_msg=f"layer {i} output")
    for what, got_all, want_all in (("cell", cells, cells_want), ("state", states, states_want)):
        for i, want in want_all.items():
            np.testing.assert_allclose(np.array(got_all[i]), want, rtol=0, atol=STATE_ATOL, err_msg=f"layer {i} {what}")
    # The distribution is far from uniform, so a wrong model could not pass by accident.
    assert probs.max() > 0.1


def test_every_inference_case_has_its_state_dump():
    """The rnn case dumps s, the lstm case c: the checks above are not vacuous."""
    assert (oracle_case("infer_rnn_leaky") / "layer0_state.npy").exists()
    assert (oracle_case("infer_lstm") / "layer0_cell.npy").exists()


@pytest.mark.parametrize("name", INFER)
def test_batched_inference_equals_single_stream(name):
    """Three streams at once (one the oracle text, one the same text, one other text) give what
    each stream gives alone; stream 0 also matches Darknet."""
    d = oracle_case(name)
    text = (d / "input.txt").read_bytes()
    probs = np.load(d / "probs.npy")
    T = 120
    texts = [text[:T], text[:T], text[150:150 + T]]
    alone = []
    for t in texts:
        net = darknetpy.load_network(d / "model.cfg", d / "model.weights")
        alone.append(np.array([np.array(net.predict(onehot(b)), copy=True) for b in t]))
    net = darknetpy.load_network(d / "model.cfg", d / "model.weights", batch=3)
    assert net.streams == 3
    batched = []
    for step in range(T):
        x = np.stack([onehot(t[step]) for t in texts])
        p = net.predict(x)
        assert p.shape == (3, 256)
        batched.append(np.array(p, copy=True))
    batched = np.array(batched)  # (T, 3, 256)
    for s in range(3):
        np.testing.assert_allclose(batched[:, s], alone[s], rtol=0, atol=1e-6)
    np.testing.assert_allclose(batched[:, 0], probs[:T], rtol=0, atol=PROB_ATOL)
    np.testing.assert_allclose(batched[:, 1], batched[:, 0], rtol=0, atol=1e-6)
    assert np.abs(batched[:, 2] - batched[:, 0]).max() > 1e-2  # different text, different output


# ---- training (real Darknet) ----------------------------------------------------------------------

@pytest.mark.parametrize("name", TRAIN)
def test_training_matches_darknet(name, tmp_path):
    d = oracle_case(name)
    x, y = np.load(d / "x.npy"), np.load(d / "y.npy")
    costs, rates = np.load(d / "costs.npy"), np.load(d / "rates.npy")
    seen, batch_num = np.load(d / "seen.npy"), np.load(d / "batch_num.npy")
    params = np.load(d / "params_per_iter.npy")
    updated = np.load(d / "updated.npy")
    net = darknetpy.load_network(d / "model.cfg", d / "init.weights")
    T, S = net.time_steps, net.streams
    assert T * S == x.shape[1]
    np.testing.assert_array_equal(flat_params(net), params[0].astype(np.float64))
    assert net.seen == 0
    for i in range(len(x)):
        xi = x[i].reshape(T, S, -1)
        yi = y[i].reshape(T, S, -1)
        cost = net.train_step(xi, yi)
        assert cost == pytest.approx(float(costs[i]), rel=1e-5), f"cost of call {i + 1}"
        assert net.learning_rate() == pytest.approx(float(rates[i]), abs=1e-7), f"rate after call {i + 1}"
        assert net.seen == int(seen[i])
        assert net.batch_num == int(batch_num[i])
        np.testing.assert_allclose(flat_params(net), params[i + 1], rtol=0, atol=1e-6,
                                   err_msg=f"parameters after call {i + 1}")
        assert bool(updated[i]) == bool(np.any(params[i + 1] != params[i]))
        if updated[i]:
            assert np.any(flat_params(net) != params[i])
    out = tmp_path / "final.weights"
    net.save_weights(out)
    got, want = read_weights(out), read_weights(d / "final.weights")
    assert got[:5] == want[:5]  # major, minor, revision, seen, header size
    assert out.stat().st_size == (d / "final.weights").stat().st_size
    np.testing.assert_allclose(got[5], want[5], rtol=0, atol=1e-6)


# ---- gradient oracles (float64 autograd of Darknet's forward) -------------------------------------

def expected_costs(d):
    return [float(line) for line in (d / "expected_cost.txt").read_text().split()]


def assert_grads(net, grads, atol=1e-5):
    got = net.params(updates=True)
    assert set(grads.files) == set(got), "gradient keys differ from the oracle's"
    for key in grads.files:
        assert got[key].shape == grads[key].shape, key
        np.testing.assert_allclose(got[key], grads[key], rtol=0, atol=atol, err_msg=key)
        assert np.abs(grads[key]).max() > 0, key


def assert_weights_file(path, expected_path, atol=1e-5):
    got, want = read_weights(path), read_weights(expected_path)
    assert got[:5] == want[:5]
    assert len(got[5]) == len(want[5])
    np.testing.assert_allclose(got[5], want[5], rtol=0, atol=atol)


@pytest.mark.parametrize("name", ["grad_lstm", "grad_gru_tanh1", "grad_lstm_2batch_momentum"])
def test_gradients_match_autograd_oracle(name):
    d = oracle_case(name)
    net = darknetpy.load_network(d / "net.cfg", d / "init.weights")
    x, y = np.load(d / "x.npy"), np.load(d / "y.npy")
    cost = net.accumulate(x, y)
    assert cost == pytest.approx(expected_costs(d)[0], rel=1e-4)
    assert_grads(net, np.load(d / "grads.npz"))


@pytest.mark.parametrize("name", ["grad_lstm", "grad_gru_tanh1"])
def test_one_sgd_update_matches_oracle(name, tmp_path):
    d = oracle_case(name)
    net = darknetpy.load_network(d / "net.cfg", d / "init.weights")
    cost = net.train_step(np.load(d / "x.npy"), np.load(d / "y.npy"))
    assert cost == pytest.approx(expected_costs(d)[0], rel=1e-4)
    assert net.seen == 32
    net.save_weights(tmp_path / "after.weights")
    assert_weights_file(tmp_path / "after.weights", d / "after_sgd.weights")


def test_two_batches_with_momentum_and_carried_state(tmp_path):
    d = oracle_case("grad_lstm_2batch_momentum")
    c1, c2 = expected_costs(d)
    state1 = np.load(d / "state1.npz")
    net = darknetpy.load_network(d / "net.cfg", d / "init.weights")
    assert net.train_step(np.load(d / "x.npy"), np.load(d / "y.npy")) == pytest.approx(c1, rel=1e-4)
    np.testing.assert_allclose(net.states["layer0.h"], state1["layer0.h"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(net.states["layer0.c"], state1["layer0.c"], rtol=0, atol=1e-5)
    net.save_weights(tmp_path / "u1.weights")
    assert_weights_file(tmp_path / "u1.weights", d / "after_update1.weights")
    assert net.train_step(np.load(d / "x2.npy"), np.load(d / "y2.npy")) == pytest.approx(c2, rel=1e-4)
    net.save_weights(tmp_path / "final.weights")
    assert_weights_file(tmp_path / "final.weights", d / "final.weights")


def test_second_batch_gradients_from_carried_state():
    """grads2 are the gradients of batch 2 at the weights after update 1, starting from batch 1's
    final state; a freshly loaded net has empty update buffers, so accumulate gives exactly them."""
    d = oracle_case("grad_lstm_2batch_momentum")
    state1 = np.load(d / "state1.npz")
    net = darknetpy.load_network(d / "net.cfg", d / "after_update1.weights")
    assert net.seen == 32
    net.states["layer0.h"] = state1["layer0.h"].astype(np.float32).copy()
    net.states["layer0.c"] = state1["layer0.c"].astype(np.float32).copy()
    cost = net.accumulate(np.load(d / "x2.npy"), np.load(d / "y2.npy"))
    assert cost == pytest.approx(expected_costs(d)[1], rel=1e-4)
    assert_grads(net, np.load(d / "grads2.npz"))


# ---- batchnorm at inference on Darknet's own parameters (README §7) ---------------------------------

def leaky(z):
    return np.where(z > 0, z, 0.1 * z)


def bn_inference(z, p, prefix):
    """y = scale·(z − rolling_mean)/(sqrt(rolling_variance) + 1e-6) + bias, as README §7 states."""
    return (p[prefix + "scales"] * (z - p[prefix + "rolling_mean"])
            / (np.sqrt(p[prefix + "rolling_variance"]) + 1e-6) + p[prefix + "biases"])


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("name", ["weights_old_header", "weights_transposed"])
def test_batchnorm_inference_uses_rolling_statistics(name):
    d = oracle_case(name)
    p = {f.name[:-4]: np.load(f).astype(np.float64) for f in (d / "params").glob("*.npy")}
    net = darknetpy.load_network(d / "model.cfg", d / "new.weights")
    x = np.random.default_rng(0).uniform(-1, 1, (6, 12))
    if name == "weights_old_header":   # [connected] 8 leaky bn -> [connected] 5 linear -> softmax
        h = leaky(bn_inference(x @ p["L0.weights"].T, p, "L0."))
        z = h @ p["L1.weights"].T + p["L1.biases"]
    else:                              # [connected] 7 relu -> [connected] 5 linear bn -> softmax
        h = np.maximum(x @ p["L0.weights"].T + p["L0.biases"], 0)
        z = bn_inference(h @ p["L1.weights"].T, p, "L1.")
    want = softmax(z)
    got = np.array([np.array(net.predict(row.astype(np.float32)), copy=True) for row in x])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_batchnorm_epsilon_is_added_after_the_square_root(write_cfg):
    """(x − mean)/(sqrt(var) + 1e-6): with var = 1e-12 the epsilon doubles the divisor."""
    net = darknetpy.load_network(write_cfg("[net]\ninputs=2\n[connected]\noutput=2\nbatch_normalize=1\nactivation=linear\n"))
    p = net.params()
    p["layer0.weights"][...] = np.eye(2)
    p["layer0.biases"][...] = [0.25, 0]
    p["layer0.scales"][...] = [1, 3]
    p["layer0.rolling_mean"][...] = [0, 1]
    p["layer0.rolling_variance"][...] = [1e-12, 4]
    y = net.predict(np.array([1e-6, 2], np.float32))
    np.testing.assert_allclose(y, [0.5 + 0.25, 3 * 1 / (2 + 1e-6)], rtol=1e-5)
