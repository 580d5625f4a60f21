"""`darknetpy export` (DESIGN.md, "`darknetpy export`: ONNX"): onnxruntime, an independent runtime,
must give darknetpy's `predict` probabilities within 1e-5 (1e-4 for the expanding activations) over
64 steps of 3 streams with the state carried, for every layer kind (with and without batchnorm,
random rolling statistics and scales as training leaves them), every activation and mixed stacks;
the sequence graph must equal the step graph run step by step; the metadata, the checker, bad input
and the README's example as it stands.
"""
import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from darknetpy import activations, export
from darknetpy.errors import DarknetpyError
from darknetpy.layers.base import Layer
from darknetpy.network import Network
from darknetpy.vocab import Vocab
from conftest import assert_one_line_error, run_cli

onnx = pytest.importorskip("onnx", reason='the export tests need pip install ".[onnx]"')
ort = pytest.importorskip("onnxruntime", reason='the export tests need pip install ".[onnx]"')

V, STEPS, STREAMS = 24, 64, 3
TOL = 1e-5
# An activation with slope >= 1 on the positives (linear 1, selu 1.0507, ramp 1.1) makes the [rnn]
# recurrence expand, and float32 rounding grows with it: against a float64 run of the same net, each
# float32 path (the numpy backend, the C one, onnxruntime) drifts by up to 3.5e-5 by step 60 (selu),
# in different directions, so two of them differ by more than TOL. 1e-4 still fails an ONNX form off
# by 1e-4 of a constant (selu's gamma 1.0508 differs by 6e-3).
EXPANDING, TOL_EXPANDING = ("linear", "ramp", "selu"), 1e-4


def cfg_text(body, inputs=V):
    return f"[net]\ninputs={inputs}\nbatch=8\ntime_steps=16\n\n{body}"


def randomize(net, seed):
    """Random small weights and biases, and batchnorm statistics and scales away from their
    initial 1s and 0s, as training leaves them; peephole and [sru] vectors ±0.8."""
    rng = np.random.default_rng(seed)
    for key, v in net.params().items():
        kind = key.rsplit(".", 1)[-1]
        if kind == "weights":
            v[...] = rng.uniform(-1, 1, v.shape) * np.sqrt(3 / v.shape[1])
        elif kind in ("biases", "rolling_mean"):
            v[...] = rng.uniform(-0.5, 0.5, v.shape)
        elif kind in ("scales", "rolling_variance"):
            v[...] = rng.uniform(0.4, 1.8, v.shape)
        else:
            assert kind in ("pi", "pf", "po", "vf", "vr"), key  # peepholes, [sru]'s vectors
            v[...] = rng.uniform(-0.8, 0.8, v.shape)
    net.refresh()
    return net


def network(write_cfg, body, seed=0):
    return randomize(Network(write_cfg(cfg_text(body)), batch=1, time_steps=1), seed)


def session(model):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the note that `temperature` is an input with an initializer
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def carried(net):
    """darknetpy's carried state in the contract's layout: per layer in cfg order, h (then c)."""
    return np.concatenate([np.zeros((STREAMS, 0), np.float32)] +
                          [a for i in range(len(net.layers)) for a in net.carried(i, STREAMS)], axis=1)


def check_equal(net, temperature=None, seed=1, tol=TOL):
    """Run both graphs against `predict` (with `temperature` fed to the graph and set on the net),
    the probabilities within `tol`; returns the step graph's model."""
    step, sequence = export.build(net, False), export.build(net, True)
    for model in (step, sequence):
        onnx.checker.check_model(model, full_check=True)
        assert model.opset_import[0].version == export.OPSET
    S = int({p.key: p.value for p in step.metadata_props}["darknetpy.state_size"])
    feed = {} if temperature is None else {"temperature": np.array(temperature, np.float32)}
    if temperature is not None:
        net.set_temperature(temperature)
    ids = np.random.default_rng(seed).integers(0, net.inputs, (STEPS, STREAMS))
    net.reset_state()
    run, state, probs = session(step), np.zeros((STREAMS, S), np.float32), []
    for t in range(STEPS):
        p, state = run.run(None, {**feed, "ids": ids[t], "state": state})
        expected = net.predict(ids[t])
        np.testing.assert_allclose(p, expected, rtol=0, atol=tol, err_msg=f"step {t}")
        # The state in the contract's layout (a wrong slice would be off by O(1)); float32 rounding
        # grows through an expanding recurrence (ramp's slope is 1.1), so 1e-4 of the largest entry.
        expected = carried(net)
        np.testing.assert_allclose(state, expected, rtol=0, atol=1e-4 * max(1, np.abs(expected).max(initial=0)),
                                   err_msg=f"state after step {t}")
        probs.append(p)
    assert np.ptp(np.array(probs)) > 0.01  # the probabilities say something: a check that can fail
    # The sequence graph from a zero state over all steps at once, then from the state it left
    # (a second call continues where the first stopped).
    seq = session(sequence)
    half = STEPS // 2
    p1, s1 = seq.run(None, {**feed, "ids": ids[:half], "state": np.zeros((STREAMS, S), np.float32)})
    p2, s2 = seq.run(None, {**feed, "ids": ids[half:], "state": s1})
    np.testing.assert_allclose(np.concatenate([p1, p2]), np.array(probs), rtol=0, atol=1e-6)
    np.testing.assert_allclose(s2, state, rtol=1e-6, atol=1e-6)
    return step


HEAD = f"[connected]\noutput={V}\nactivation=linear\n\n[softmax]\n"  # logits and probabilities after a body

KINDS = {  # each the first layer (reading ids), before HEAD
    "rnn": "[rnn]\noutput=20\nactivation=tanh\nbatch_normalize={bn}\n",
    "rnn-shortcut": "[rnn]\noutput=20\nactivation=tanh\nshortcut=1\nbatch_normalize={bn}\n",
    "gru-logistic": "[gru]\noutput=20\ntanh=0\nbatch_normalize={bn}\n",
    "gru-tanh": "[gru]\noutput=20\ntanh=1\nbatch_normalize={bn}\n",
    "lstm": "[lstm]\noutput=20\nbatch_normalize={bn}\n",
    "lstm-peephole": "[lstm]\noutput=20\npeephole=1\nbatch_normalize={bn}\n",
    "connected": "[connected]\noutput=20\nactivation=relu\nbatch_normalize={bn}\n",
    "dropout": "[dropout]\nprobability=0.3\n\n[gru]\noutput=16\ntanh=1\nbatch_normalize={bn}\n\n[dropout]\n",
    "sru": "[sru]\noutput=20\nactivation=tanh\nbatch_normalize={bn}\n",       # ws: inputs != output
    "sru-highway": f"[sru]\noutput={V}\nbatch_normalize={{bn}}\n",          # s = x, the one-hot input
    "gru-sru-sru": ("[gru]\noutput=16\nbatch_normalize={bn}\n\n[sru]\noutput=16\nactivation=leaky\n"
                    "batch_normalize={bn}\n\n[sru]\noutput=12\nbatch_normalize={bn}\n"),
}


@pytest.mark.parametrize("bn", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_equals_predict(write_cfg, kind, bn):
    net = network(write_cfg, KINDS[kind].format(bn=bn) + "\n" + HEAD + "\n[cost]\n")
    assert any(d.bn for d in net.denses) == bool(bn)
    check_equal(net)


def test_softmax_temperature_from_cfg_and_input(write_cfg):
    net = network(write_cfg, "[lstm]\noutput=16\n\n" + HEAD.replace("[softmax]\n", "[softmax]\ntemperature=0.6\n"))
    model = check_equal(net)  # the cfg's temperature, from the input's initializer
    (default,) = [i for i in model.graph.initializer if i.name == "temperature"]
    assert onnx.numpy_helper.to_array(default) == np.float32(0.6)
    check_equal(net, temperature=1.7)  # and the input, fed


def test_softmax_groups(write_cfg):
    check_equal(network(write_cfg, "[rnn]\noutput=16\n\n" + HEAD.replace("[softmax]\n", "[softmax]\ngroups=4\n")),
                temperature=0.8)


@pytest.mark.parametrize("name", sorted(activations.ACTIVATIONS))
def test_every_activation(write_cfg, name):
    """Through an [rnn] (all three sub-layers) and a [connected] layer, with and without batchnorm."""
    body = (f"[rnn]\noutput=16\nactivation={name}\n\n[connected]\noutput=20\nactivation={name}\n"
            f"batch_normalize=1\n\n[rnn]\noutput=16\nactivation={name}\nbatch_normalize=1\n\n" + HEAD)
    check_equal(network(write_cfg, body), tol=TOL_EXPANDING if name in EXPANDING else TOL)


STACKS = {
    "all": ("[rnn]\noutput=24\nactivation=leaky\nbatch_normalize=1\n\n[dropout]\n\n[gru]\noutput=20\n\n"
            "[lstm]\noutput=18\npeephole=1\nbatch_normalize=1\n\n[connected]\noutput=32\nactivation=ramp\n\n"
            "[gru]\noutput=16\ntanh=1\nbatch_normalize=1\n\n[rnn]\noutput=12\nactivation=tanh\nshortcut=1\n\n"
            + HEAD + "\n[cost]\n"),
    "lstm2": "[lstm]\noutput=32\n\n[dropout]\nprobability=0.2\n\n[lstm]\noutput=32\n\n" + HEAD,
    "darknet-rnn": ("[rnn]\noutput=32\nactivation=leaky\nbatch_normalize=1\n\n[rnn]\noutput=32\nactivation=leaky\n"
                    "batch_normalize=1\n\n[connected]\noutput=24\nactivation=leaky\n\n[softmax]\n\n[cost]\ntype=sse\n"),
}


@pytest.mark.parametrize("stack", STACKS)
def test_stacks_of_mixed_kinds(write_cfg, stack):
    model = check_equal(network(write_cfg, STACKS[stack], seed=3), temperature=0.9)
    if stack == "all":
        props = {p.key: p.value for p in model.metadata_props}
        assert props["darknetpy.state_layout"] == "rnn:24,gru:20,lstm:36,gru:16,rnn:12"
        assert props["darknetpy.state_size"] == str(24 + 20 + 36 + 16 + 12)


def test_no_recurrent_layer_has_an_empty_state(write_cfg):
    model = check_equal(network(write_cfg, "[connected]\noutput=20\nactivation=elu\n\n" + HEAD))
    assert {p.key: p.value for p in model.metadata_props}["darknetpy.state_layout"] == ""


# ---- the command -------------------------------------------------------------------------------------
def trained_like(tmp_path, body, vocab=None, seed=0):
    """(cfg, weights) of a random network saved as train saves it, its vocabulary beside."""
    cfg = tmp_path / "model.cfg"
    cfg.write_text(cfg_text(body, inputs=vocab.size if vocab else 256))
    net = randomize(Network(cfg), seed)
    weights = tmp_path / "model.weights"
    net.save_weights(weights)
    if vocab:
        vocab.save(tmp_path / "model.vocab")  # where train keeps it: <cfg stem>.vocab
    return cfg, weights


def metadata(path):
    return session(onnx.load(str(path))).get_modelmeta().custom_metadata_map


def test_command_writes_the_contract(tmp_path):
    vocab = Vocab.build("a cat: the hat! ", "chars")
    cfg, weights = trained_like(tmp_path, f"[gru]\noutput=16\n\n[lstm]\noutput=8\n\n[connected]\noutput={vocab.size}\n"
                                          "activation=linear\n\n[softmax]\ntemperature=0.5\n", vocab)
    for flags, steps in (([], ["streams"]), (["--sequence"], ["steps", "streams"])):
        out = tmp_path / "m.onnx"
        result = run_cli("export", cfg, weights, "-o", out, *flags)
        assert result.returncode == 0, result.stderr.decode()
        assert result.stdout == b""  # only the file is the product
        model = onnx.load(str(out))
        onnx.checker.check_model(model, full_check=True)
        shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                  for v in list(model.graph.input) + list(model.graph.output)}
        assert shapes == {"ids": steps, "state": ["streams", 32], "temperature": [],
                          "probs": steps + [vocab.size], "state_out": ["streams", 32]}
        types = {v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)}
        assert types["ids"] == onnx.TensorProto.INT64 and types["state"] == onnx.TensorProto.FLOAT
        assert metadata(out) == {"darknetpy.state_size": "32", "darknetpy.state_layout": "gru:16,lstm:16",
                                 "darknetpy.cfg": cfg.read_text(), "darknetpy.vocab": vocab.to_text(),
                                 "darknetpy.version": importlib.metadata.version("darknetpy")}
    if sys.platform != "win32":
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_bytes_model_has_no_vocab_and_training_cfg_is_fine(tmp_path):
    cfg, weights = trained_like(tmp_path, "[rnn]\noutput=16\n\n[connected]\noutput=256\nactivation=linear\n\n[softmax]\n")
    out = tmp_path / "m.onnx"
    assert run_cli("export", cfg, weights, "-o", out).returncode == 0  # batch=8, time_steps=16 in the cfg
    props = metadata(out)
    assert "darknetpy.vocab" not in props and props["darknetpy.state_layout"] == "rnn:16"


def test_bad_input_is_one_line_and_keeps_the_old_file(tmp_path):
    cfg, weights = trained_like(tmp_path, "[gru]\noutput=16\n\n[connected]\noutput=256\nactivation=linear\n\n[softmax]\n")
    out = tmp_path / "m.onnx"
    out.write_bytes(b"an earlier model")
    truncated = tmp_path / "short.weights"
    truncated.write_bytes(weights.read_bytes()[:-10])
    assert_one_line_error(run_cli("export", cfg, truncated, "-o", out), str(truncated))
    bad = tmp_path / "bad.cfg"
    bad.write_text(cfg_text("[rnn]\noutput=16\nactivation=swish\n"))
    assert_one_line_error(run_cli("export", bad, weights, "-o", out), f"{bad}:8:", "swish")
    two = tmp_path / "two.cfg"
    two.write_text(cfg_text("[connected]\noutput=256\n\n[softmax]\ntemperature=0.5\n\n[softmax]\ntemperature=2\n"))
    Network(two).save_weights(tmp_path / "two.weights")
    assert_one_line_error(run_cli("export", two, tmp_path / "two.weights", "-o", out), f"{two}:13:",
                          "cannot export to ONNX", "temperature")
    assert_one_line_error(run_cli("export", cfg, weights, "-o", tmp_path / "no" / "m.onnx"), "cannot write the model")
    assert out.read_bytes() == b"an earlier model"
    assert run_cli("export", cfg, weights, "-o", out).returncode == 0  # replaced (atomically: atomic.write)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)


def test_without_onnx_says_what_to_install(tmp_path):
    cfg, weights = trained_like(tmp_path, "[rnn]\noutput=8\n\n[softmax]\n")
    import subprocess
    result = subprocess.run([sys.executable, "-c", "import sys; sys.modules['onnx'] = None; "
                             "from darknetpy.cli import main; main()", "export", str(cfg), str(weights), "-o",
                             str(tmp_path / "m.onnx")], capture_output=True)
    assert_one_line_error(result, 'pip install "darknetpy[onnx]"')
    assert not (tmp_path / "m.onnx").exists()


def test_a_kind_without_an_onnx_form_is_refused_at_its_line(write_cfg):
    class Novel(Layer):  # no `kind`: not in the table of kinds; it stands for a kind without to_onnx
        pass
    net = network(write_cfg, "[rnn]\noutput=8\n\n[dropout]\n\n[softmax]\n")
    net.layers[1] = Novel(net.sections[1], 8, None)
    with pytest.raises(DarknetpyError, match=r"net\.cfg:9: cannot export to ONNX: \[None\] has no ONNX form"):
        export.build(net)


# ---- the README's example, as it stands ------------------------------------------------------------
def readme_example():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Running a model elsewhere: ONNX", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_readme_example_generates_with_onnxruntime_alone(tmp_path):
    code = readme_example()
    imported = {a.name for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Import) for a in node.names}
    assert imported == {"re", "numpy", "onnxruntime"} and "from " not in code
    corpus = "ROMEO: Is the day so young?\nBENVOLIO: But new struck nine.\né ü\t\\s"
    vocab = Vocab.build(corpus, "chars")
    cfg, weights = trained_like(tmp_path, f"[gru]\noutput=24\ntanh=1\n\n[connected]\noutput={vocab.size}\n"
                                          "activation=linear\n\n[softmax]\n", vocab, seed=5)
    assert run_cli("export", cfg, weights, "-o", tmp_path / "shakespeare.onnx").returncode == 0
    import subprocess
    result = subprocess.run([sys.executable, "-c", "import sys; sys.modules['darknetpy'] = None\n" + code],
                            cwd=tmp_path, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    # The same sampling from darknetpy's own probabilities: equal within 1e-5, they draw the same tokens.
    net = Network(cfg, batch=1, time_steps=1)
    net.load_weights(weights)
    net.set_temperature(0.7)
    for i in vocab.encode("ROMEO:", "seed"):
        p = net.predict(int(i))
    rng, out = np.random.default_rng(1), []
    for _ in range(200):
        p = p.astype(np.float64)
        out.append(rng.choice(len(p), p=p / p.sum()))
        p = net.predict(out[-1])
    assert result.stdout.decode() == "ROMEO:" + vocab.decode(out) + "\n"
    assert len(set(out)) > 5  # it sampled, and not one token over and over
