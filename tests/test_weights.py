"""Darknet .weights files: byte-exact round trips, old/transposed/AlexeyAB readers, refusals.

Expected files are written here from the documented format (../shared/oracle/README.md §11 and
DESIGN.md), never with darknetpy's writer; loaded parameters must be bit-identical.
"""
import json
import re
import struct

import numpy as np
import pytest

import darknetpy
from darknetpy.errors import DarknetpyError
from conftest import onehot, oracle_case, read_weights

INFER = ["infer_rnn_leaky", "infer_gru", "infer_lstm"]

# Documented sub-layer file orders.
PJREDDIE = {"rnn": ["input_layer", "self_layer", "output_layer"],
            "lstm": ["wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug"],
            "gru": ["wz", "wr", "wh", "uz", "ur", "uh"]}
ALEXEYAB = {"lstm": ["wf", "wi", "wg", "wo", "uf", "ui", "ug", "uo"],
            "gru": ["uz", "ur", "uh", "wz", "wr", "wh"]}


def header(major, minor, revision, seen):
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        return struct.pack("<3iQ", major, minor, revision, seen)
    return struct.pack("<3ii", major, minor, revision, seen)


def payload(arrays, keys):
    return b"".join(np.ascontiguousarray(arrays[k], "<f4").tobytes() for k in keys)


# ---- the real Darknet's files ---------------------------------------------------------------------

@pytest.mark.parametrize("name", INFER)
def test_load_then_save_is_byte_identical(name, tmp_path):
    d = oracle_case(name)
    info = json.loads((d / "case.json").read_text())
    net = darknetpy.load_network(d / "model.cfg", d / "model.weights")
    assert net.seen == info["weights_file"]["header"]["seen"] == 12345
    net.save_weights(tmp_path / "out.weights")
    assert (tmp_path / "out.weights").read_bytes() == (d / "model.weights").read_bytes()


@pytest.mark.parametrize("name", INFER)
def test_params_sit_at_the_documented_file_offsets(name):
    """Every named parameter equals the file's floats at the offset case.json's layout gives."""
    d = oracle_case(name)
    layout = json.loads((d / "case.json").read_text())["weights_file"]["layout"]
    floats = np.frombuffer((d / "model.weights").read_bytes(), "<f4", offset=layout["header_bytes"])
    params = darknetpy.load_network(d / "model.cfg", d / "model.weights").params()
    checked = 0
    for layer in layout["layers"]:
        for seg in layer["segments"]:
            key = f"layer{layer['index']}.{seg['name']}"
            want = floats[seg["param_offset"]:seg["param_offset"] + seg["count"]].reshape(seg["shape"])
            assert params[key].shape == tuple(seg["shape"]), key
            np.testing.assert_array_equal(params[key], want, err_msg=key)
            checked += 1
    assert checked == len(params)


@pytest.mark.parametrize("name,file,seen", [("weights_old_header", "old.weights", 12345),
                                            ("weights_transposed", "transposed.weights", 777)])
def test_old_and_transposed_files(name, file, seen, tmp_path):
    d = oracle_case(name)
    net = darknetpy.load_network(d / "model.cfg", d / file)
    assert net.seen == seen
    params = net.params()
    expected = {}
    for npy in sorted((d / "params").glob("*.npy")):
        m = re.fullmatch(r"L(\d+)\.(.+)\.npy", npy.name)
        expected[f"layer{m.group(1)}.{m.group(2)}"] = np.load(npy)
    assert set(expected) == set(params)
    for key, value in expected.items():
        assert params[key].shape == value.shape, key
        np.testing.assert_array_equal(params[key], value, err_msg=key)
    net.save_weights(tmp_path / "resaved.weights")
    assert (tmp_path / "resaved.weights").read_bytes() == (d / "new.weights").read_bytes()
    # The standard file loads to the same parameters.
    again = darknetpy.load_network(d / "model.cfg", d / "new.weights").params()
    for key, value in expected.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_seen_round_trips_as_uint64(tmp_path, write_cfg):
    cfg = write_cfg("[net]\ninputs=5\n[rnn]\noutput=3\n[connected]\noutput=5\n[softmax]\n")
    net = darknetpy.load_network(cfg)
    net.seen = 2 ** 40 + 5
    net.save_weights(tmp_path / "a.weights")
    data = (tmp_path / "a.weights").read_bytes()
    assert struct.unpack_from("<3iQ", data) == (0, 2, 0, 2 ** 40 + 5)
    assert darknetpy.load_network(cfg, tmp_path / "a.weights").seen == 2 ** 40 + 5


# ---- refusals -----------------------------------------------------------------------------------

# inputs=6 -> rnn 4 -> gru 3 -> connected 5: every sub-layer is biases[out] + weights[out*in].
STACK_CFG = "[net]\ninputs=6\n[rnn]\noutput=4\n[gru]\noutput=3\n[connected]\noutput=5\n[softmax]\n"
RNN_FLOATS = 3 * 4 + 4 * 6 + 4 * 4 + 4 * 4          # 68
GRU_FLOATS = 6 * 3 + 3 * (3 * 3) + 3 * (3 * 4)      # 81
CONN_FLOATS = 5 + 5 * 3                             # 20
END0 = 20 + 4 * RNN_FLOATS                          # 292
END1 = END0 + 4 * GRU_FLOATS                        # 616
SIZE = END1 + 4 * CONN_FLOATS                       # 696


@pytest.fixture
def stack(tmp_path, write_cfg):
    """A loaded 3-layer net and a valid file of random parameters for it."""
    cfg = write_cfg(STACK_CFG)
    rng = np.random.default_rng(5)
    good = tmp_path / "good.weights"
    good.write_bytes(header(0, 2, 0, 99) + rng.uniform(-1, 1, (SIZE - 20) // 4).astype("<f4").tobytes())
    net = darknetpy.load_network(cfg, good)
    return net, good


def snapshot(net):
    return {k: np.array(v, copy=True) for k, v in net.params().items()}


def test_stack_layout_is_as_documented(stack):
    net, good = stack
    assert good.stat().st_size == SIZE
    floats = np.frombuffer(good.read_bytes(), "<f4", offset=20)
    params = net.params()
    # First and last segments sit where the format says.
    np.testing.assert_array_equal(params["layer0.input_layer.biases"], floats[:4])
    np.testing.assert_array_equal(params["layer0.input_layer.weights"], floats[4:28].reshape(4, 6))
    np.testing.assert_array_equal(params["layer2.weights"], floats[-15:].reshape(5, 3))


@pytest.mark.parametrize("size,layer", [(SIZE - 3, 2), (END1 + 4, 2), (END1, 2), (END1 - 1, 1),
                                        ((END0 + END1) // 2, 1), (END0 + 4, 1), (100, 0), (20, 0)])
def test_truncated_file_is_refused_naming_the_layer(stack, tmp_path, size, layer):
    net, good = stack
    before, seen = snapshot(net), net.seen
    bad = tmp_path / "bad.weights"
    bad.write_bytes(good.read_bytes()[:size])
    with pytest.raises(DarknetpyError) as err:
        net.load_weights(bad)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(bad) in msg
    assert re.search(rf"\b{SIZE}\b", msg) and re.search(rf"\b{size}\b", msg), msg
    named = [int(n) for n in re.findall(r"\blayer (\d+)\b", msg)]
    assert named == [layer], msg
    for key, value in snapshot(net).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert net.seen == seen


@pytest.mark.parametrize("extra", [1, 4, 400])
def test_overlong_file_is_refused(stack, tmp_path, extra):
    net, good = stack
    before = snapshot(net)
    bad = tmp_path / "long.weights"
    bad.write_bytes(good.read_bytes() + b"\0" * extra)
    with pytest.raises(DarknetpyError) as err:
        net.load_weights(bad)
    msg = str(err.value)
    assert "\n" not in msg
    assert re.search(rf"\b{SIZE}\b", msg) and re.search(rf"\b{SIZE + extra}\b", msg), msg
    for key, value in snapshot(net).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    assert net.seen == 99


def test_file_for_another_cfg_is_refused(tmp_path, write_cfg):
    d = tmp_path
    small = write_cfg("[net]\ninputs=6\n[rnn]\noutput=4\n[connected]\noutput=6\n[softmax]\n", "small.cfg")
    darknetpy.load_network(small).save_weights(d / "small.weights")
    with pytest.raises(DarknetpyError, match=str(SIZE)):
        darknetpy.load_network(write_cfg(STACK_CFG, "stack.cfg"), d / "small.weights")


@pytest.mark.parametrize("content", [b"", b"\0" * 10])
def test_empty_or_tiny_file_is_a_one_line_error(stack, tmp_path, content):
    net, _ = stack
    bad = tmp_path / "tiny.weights"
    bad.write_bytes(content)
    with pytest.raises(DarknetpyError) as err:
        net.load_weights(bad)
    msg = str(err.value)
    assert msg and "\n" not in msg
    assert str(bad) in msg


def test_missing_file_is_a_darknetpy_error(stack, tmp_path):
    net, _ = stack
    with pytest.raises(DarknetpyError, match="nope.weights"):
        net.load_weights(tmp_path / "nope.weights")


# ---- AlexeyAB's fork ------------------------------------------------------------------------------

AB_CFG = "[net]\ninputs=7\n[lstm]\noutput=3\n[gru]\noutput=4\n[connected]\noutput=7\n[softmax]\n"
AB_LAYERS = [("lstm", 7, 3), ("gru", 3, 4)]  # (type, inputs, outputs)


def ab_arrays():
    """Known random arrays for every parameter of AB_CFG, by darknetpy's parameter names."""
    rng = np.random.default_rng(11)
    arrays = {}
    for i, (kind, n_in, n_out) in enumerate(AB_LAYERS):
        for sub in PJREDDIE[kind]:
            width = n_out if sub.startswith("w") else n_in
            arrays[f"layer{i}.{sub}.biases"] = rng.uniform(-0.5, 0.5, n_out).astype(np.float32)
            arrays[f"layer{i}.{sub}.weights"] = rng.uniform(-1.5, 1.5, (n_out, width)).astype(np.float32)
    arrays["layer2.biases"] = rng.uniform(-0.5, 0.5, 7).astype(np.float32)
    arrays["layer2.weights"] = rng.uniform(-2, 2, (7, 4)).astype(np.float32)
    return arrays


def file_keys(orders):
    keys = []
    for i, (kind, _, _) in enumerate(AB_LAYERS):
        for sub in orders[kind]:
            keys += [f"layer{i}.{sub}.biases", f"layer{i}.{sub}.weights"]
    return keys + ["layer2.biases", "layer2.weights"]


@pytest.fixture
def ab_files(tmp_path, write_cfg):
    cfg = write_cfg(AB_CFG)
    arrays = ab_arrays()
    pj = tmp_path / "pjreddie.weights"
    pj.write_bytes(header(0, 2, 0, 4242) + payload(arrays, file_keys(PJREDDIE)))
    ab = tmp_path / "alexeyab.weights"
    ab.write_bytes(header(0, 2, 5, 4242) + payload(arrays, file_keys(ALEXEYAB)))
    assert pj.read_bytes()[20:] != ab.read_bytes()[20:]  # the orders really differ
    return cfg, arrays, pj, ab


@pytest.mark.parametrize("which", ["pjreddie", "alexeyab"])
def test_both_layouts_load_to_the_named_params(ab_files, which):
    cfg, arrays, pj, ab = ab_files
    net = darknetpy.load_network(cfg, pj if which == "pjreddie" else ab)
    params = net.params()
    assert set(params) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(params[key], value, err_msg=key)
    assert net.seen == 4242


def test_alexeyab_file_predicts_like_pjreddie_file(ab_files):
    cfg, _, pj, ab = ab_files
    a, b = darknetpy.load_network(cfg, pj), darknetpy.load_network(cfg, ab)
    for byte in [0, 3, 6, 1, 1, 5, 2]:
        np.testing.assert_array_equal(a.predict(onehot(byte, 7)), b.predict(onehot(byte, 7)))


def test_alexeyab_file_is_saved_in_pjreddie_layout(ab_files, tmp_path):
    cfg, _, pj, ab = ab_files
    darknetpy.load_network(cfg, ab).save_weights(tmp_path / "out.weights")
    out = (tmp_path / "out.weights").read_bytes()
    assert struct.unpack_from("<3iQ", out) == (0, 2, 0, 4242)
    assert out == pj.read_bytes()


def test_pjreddie_file_round_trips(ab_files, tmp_path):
    cfg, _, pj, _ = ab_files
    darknetpy.load_network(cfg, pj).save_weights(tmp_path / "out.weights")
    assert (tmp_path / "out.weights").read_bytes() == pj.read_bytes()


def test_batchnorm_layout_and_old_header(tmp_path, write_cfg):
    """[connected] with batch_normalize: biases, weights, scales, rolling_mean, rolling_variance;
    an old (0.1) header has a 4-byte seen; a transposed (0.1001) file stores weights [in][out]."""
    cfg = write_cfg("[net]\ninputs=3\n[connected]\noutput=2\nbatch_normalize=1\nactivation=linear\n[softmax]\n")
    b = np.array([1, 2], np.float32)
    w = np.arange(6, dtype=np.float32).reshape(2, 3) + 10
    s, m, v = (np.array([0.5, 0.75], np.float32), np.array([0.1, -0.1], np.float32),
               np.array([1.5, 2.5], np.float32))
    old = tmp_path / "old.weights"
    old.write_bytes(header(0, 1, 0, 7) + b"".join(a.astype("<f4").tobytes() for a in (b, w, s, m, v)))
    tr = tmp_path / "tr.weights"
    tr.write_bytes(header(0, 1001, 0, 8) + b"".join(a.astype("<f4").tobytes() for a in (b, w.T.copy(), s, m, v)))
    for path, seen in ((old, 7), (tr, 8)):
        net = darknetpy.load_network(cfg, path)
        p = net.params()
        assert net.seen == seen
        for key, value in (("biases", b), ("weights", w), ("scales", s), ("rolling_mean", m),
                           ("rolling_variance", v)):
            np.testing.assert_array_equal(p[f"layer0.{key}"], value, err_msg=f"{path.name} {key}")
        net.save_weights(tmp_path / "new.weights")
        major, minor, rev, saved_seen, head, floats = read_weights(tmp_path / "new.weights")
        assert (major, minor, rev, saved_seen, head) == (0, 2, 0, seen, 20)
        np.testing.assert_array_equal(floats, np.concatenate([b, w.ravel(), s, m, v]))
