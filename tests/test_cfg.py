"""The .cfg reader: Darknet's grammar, and every problem reported as `PATH:LINE: message`."""
import warnings

import numpy as np
import pytest

import darknetpy
from darknetpy.cfg import CfgWarning, edits
from darknetpy.errors import DarknetpyError
from conftest import assert_one_line_error, run_cli

# name -> (cfg text, the line the error must point at, words the message must contain)
BAD = {
    "no_equals": ("[net]\ninputs=4\n[rnn]\noutput\n[softmax]\n", 4, ["output"]),
    "no_key": ("[net]\ninputs=4\n[rnn]\n=3\n[softmax]\n", 4, []),
    "first_not_net": ("# comment\n[rnn]\noutput=3\n[net]\ninputs=4\n", 2, ["[net]"]),
    "key_before_section": ("inputs=4\n[net]\n[rnn]\noutput=3\n", 1, []),
    "unknown_section": ("[net]\ninputs=4\n\n[blah]\noutput=3\n", 4, ["blah"]),
    "convolutional": ("[net]\ninputs=4\n[rnn]\noutput=3\n[convolutional]\nfilters=3\n", 5, ["convolutional"]),
    "unclosed_section": ("[net]\ninputs=4\n[rnn\noutput=3\n", 3, []),
    "unknown_activation": ("[net]\ninputs=4\n[rnn]\noutput=3\nactivation=swish\n[softmax]\n", 5, ["swish"]),
    "unknown_activation_connected": ("[net]\ninputs=4\n[connected]\nactivation=swish\noutput=3\n", 4, ["swish"]),
    "non_numeric_output": ("[net]\ninputs=4\n[rnn]\n\noutput=abc\n[softmax]\n", 5, ["abc"]),
    "non_numeric_float": ("[net]\ninputs=4\nlearning_rate=fast\n[rnn]\noutput=3\n", 3, ["fast"]),
    "non_numeric_inputs": ("[net]\ninputs=x\n[rnn]\noutput=3\n", 2, []),
    "missing_inputs": ("[net]\nbatch=1\n[rnn]\noutput=3\n", 1, ["inputs"]),
    "output_zero": ("[net]\ninputs=4\n[rnn]\noutput=0\n", 4, ["output"]),
    "output_negative": ("[net]\ninputs=4\n[connected]\nactivation=linear\noutput=-3\n", 5, ["output"]),
    "output_zero_gru": ("[net]\ninputs=4\n[gru]\noutput=0\n", 4, ["output"]),
    "output_zero_lstm": ("[net]\ninputs=4\n[lstm]\noutput=0\n", 4, ["output"]),
    "unknown_policy": ("[net]\ninputs=4\npolicy=sig\n[rnn]\noutput=3\n", 3, ["sig"]),
    "net_twice": ("[net]\ninputs=4\n[rnn]\noutput=3\n[net]\ninputs=4\n", 5, []),
    "only_net": ("[net]\ninputs=4\n", 1, []),
}


def load_error(write_cfg, text):
    """(path, message) of the one-line error loading a cfg with `text` raises."""
    path = write_cfg(text)
    with pytest.raises(DarknetpyError) as err:
        darknetpy.load_network(path)
    return path, str(err.value)


@pytest.mark.parametrize("name", sorted(BAD))
def test_error_names_file_and_line(name, write_cfg):
    text, line, words = BAD[name]
    path, msg = load_error(write_cfg, text)
    assert msg.startswith(f"{path}:{line}: "), msg
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


# Problems where either of two key=value lines is the offending one.
@pytest.mark.parametrize("text,lines", [
    ("[net]\ninputs=4\nbatch=5\nsubdivisions=2\n[rnn]\noutput=3\n", (3, 4)),
    ("[net]\ninputs=4\npolicy=steps\nsteps=1,2\nscales=.1\n[rnn]\noutput=3\n", (4, 5)),
    ("[net]\ninputs=4\npolicy=steps\nscales=.1,.5,.2\nsteps=1,2\n[rnn]\noutput=3\n", (4, 5)),
])
def test_error_at_one_of_the_offending_keys(text, lines, write_cfg):
    path, msg = load_error(write_cfg, text)
    assert any(msg.startswith(f"{path}:{line}: ") for line in lines), msg


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n; and another\n"])
def test_empty_cfg_is_refused(text, write_cfg):
    """There is no line to point at, so the message starts with the path."""
    path, msg = load_error(write_cfg, text)
    assert msg.startswith(f"{path}:"), msg
    assert "\n" not in msg


def test_missing_cfg_is_a_darknetpy_error(tmp_path):
    with pytest.raises(DarknetpyError, match="nope.cfg"):
        darknetpy.load_network(tmp_path / "nope.cfg")


def test_all_spaces_and_tabs_are_removed(write_cfg):
    net = darknetpy.load_network(write_cfg(
        " [ net ] \n in puts = 1 0\n\tbatch\t=\t6\nsub divisions = 3\n"
        "[r nn]\nout put = 3 2\nactiv ation = le aky\n[ softmax ]\n"))
    assert net.inputs == 10
    assert (net.batch, net.subdivisions, net.streams) == (6, 3, 2)
    assert net.layers[0].outputs == 32
    assert net.layers[0].activation == "leaky"


def test_comments_blank_lines_and_crlf(write_cfg):
    text = ("# a Darknet cfg\r\n[net]\r\n;inputs=3\r\ninputs=5\r\n\r\n  # indented comment\r\n"
            "[rnn]\r\n;output=1\r\noutput=7\r\n#activation=bogus\r\n[softmax]\r\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CfgWarning)  # commented-out keys are not "unused"
        net = darknetpy.load_network(write_cfg(text))
    assert net.inputs == 5
    assert net.layers[0].outputs == 7
    assert net.layers[0].activation == "logistic"  # the default, the commented line is ignored


def test_line_numbers_count_comments_and_blank_lines(write_cfg):
    path = write_cfg("# one\n\n[net]\n;four\ninputs=4\n\n[rnn]\n# eight\noutput=zz\n")
    with pytest.raises(DarknetpyError) as err:
        darknetpy.load_network(path)
    assert str(err.value).startswith(f"{path}:9: ")


def test_section_aliases(write_cfg):
    net = darknetpy.load_network(write_cfg(
        "[network]\ninputs=6\n[conn]\noutput=4\nactivation=tanh\n[soft]\ngroups=2\n"))
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds == ["Connected", "Softmax"]
    assert net.outputs == 4
    p = net.predict(np.linspace(-1, 1, 6).astype(np.float32))
    np.testing.assert_allclose([p[:2].sum(), p[2:].sum()], [1, 1], rtol=1e-6)


def test_defaults(write_cfg):
    net = darknetpy.load_network(write_cfg("[net]\ninputs=3\n[rnn]\n[connected]\n[softmax]\n"))
    assert (net.batch, net.subdivisions, net.time_steps, net.streams) == (1, 1, 1, 1)
    assert net.layers[0].outputs == 1 and net.layers[1].outputs == 1
    assert net.layers[0].activation == "logistic" and net.layers[1].activation == "logistic"
    assert net.learning_rate() == pytest.approx(0.001)


def test_unused_key_warns_with_line(write_cfg):
    path = write_cfg("[net]\ninputs=4\n[rnn]\noutput=3\nhidden=1024\n[softmax]\nbogus = 1\n")
    with pytest.warns(CfgWarning) as record:
        darknetpy.load_network(path)
    messages = [str(w.message) for w in record if issubclass(w.category, CfgWarning)]
    assert len(messages) == 2, messages
    assert any(m.startswith(f"{path}:5:") and "Unused field" in m and "hidden" in m for m in messages), messages
    assert any(m.startswith(f"{path}:7:") and "Unused field" in m and "bogus" in m for m in messages), messages


def test_used_keys_do_not_warn(write_cfg):
    text = ("[net]\ninputs=4\nbatch=2\nsubdivisions=1\ntime_steps=3\nlearning_rate=0.1\nmomentum=0.5\n"
            "decay=0.001\npolicy=steps\nsteps=1,2\nscales=.5,.5\nmax_batches=10\nburn_in=2\npower=2\n"
            "[rnn]\noutput=3\nactivation=tanh\nbatch_normalize=1\nshortcut=1\n"
            "[gru]\noutput=3\ntanh=1\n[lstm]\noutput=3\nbatch_normalize=0\n"
            "[connected]\noutput=4\nactivation=linear\n[softmax]\ntemperature=0.5\ngroups=2\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CfgWarning)
        net = darknetpy.load_network(write_cfg(text))
    assert len(net.layers) == 5


def test_duplicate_key_first_one_wins_and_the_second_is_unused(write_cfg):
    """Darknet's option_find walks the section's options from the front, so the FIRST `key=` is
    used and a repeated key is printed as `Unused field` (option_unused)."""
    path = write_cfg("[net]\ninputs=5\n[rnn]\noutput=3\noutput=5\n[softmax]\n")
    with pytest.warns(CfgWarning) as record:
        net = darknetpy.load_network(path)
    assert net.layers[0].outputs == 3
    messages = [str(w.message) for w in record if issubclass(w.category, CfgWarning)]
    assert any(m.startswith(f"{path}:5:") and "Unused field" in m and "output = 5" in m for m in messages), messages



# A near miss of a key its section reads: cfg text -> (the typo's line, "[section]", typo, key meant)
TYPOS = {
    "[net]\ninputs=4\n[lstm]\noutptu=32\n[softmax]\n": (4, "lstm", "outptu", "output"),
    "[net]\ninputs=4\nlearning_rat=0.1\n[rnn]\noutput=3\n": (3, "net", "learning_rat", "learning_rate"),
    "[net]\ninputs=4\n[gru]\noutputs=3\n": (4, "gru", "outputs", "output"),
    "[net]\ninputs=4\n[rnn]\noutput=3\nbatch_normalise=1\n": (5, "rnn", "batch_normalise", "batch_normalize"),
    "[net]\ninputs=4\nsubdvisons=2\nbatch=2\n[rnn]\noutput=3\n": (3, "net", "subdvisons", "subdivisions"),
    "[net]\ninputs=4\n[connected]\nOutput=3\n": (4, "connected", "Output", "output"),
    "[net]\ninputs=4\n[connected]\noutput=3\nactivaton=linear\n": (5, "connected", "activaton", "activation"),
    "[net]\ninputs=4\n[rnn]\noutput=3\n[softmax]\ntemprature=2\n": (6, "softmax", "temprature", "temperature"),
    "[net]\ninputs=4\n[rnn]\noutput=3\n[dropout]\nprobabilty=0.2\n": (6, "dropout", "probabilty", "probability"),
    "[net]\ninputs=4\npolicy=exp\ngama=0.9\n[rnn]\n": (4, "net", "gama", "gamma"),
    "[net]\nbatch=1\ninput=4\n[rnn]\noutput=3\n": (3, "net", "input", "inputs"),  # before 'needs inputs='
}


@pytest.mark.parametrize("text", TYPOS)
def test_near_miss_is_an_error_naming_the_key_meant(text, write_cfg):
    line, section, typo, meant = TYPOS[text]
    path = write_cfg(text)
    with pytest.raises(DarknetpyError) as e:
        darknetpy.load_network(path)
    assert str(e.value) == f"{path}:{line}: unknown key '{typo}' in [{section}]; did you mean '{meant}'?"


def test_a_typo_is_one_line_and_exit_2_before_any_warning(tmp_path):
    """The issue's repro: `outptu=32` trained a 256->1 LSTM with exit 0. The plain unused key on
    line 5 is not printed: the typo stops the command first."""
    cfg = tmp_path / "x.cfg"
    cfg.write_text("[net]\ninputs=256\n[lstm]\noutput=32\nhidden=1\n[lstm]\noutptu=32\n[connected]\n"
                   "output=256\n[softmax]\n")
    for args in (("info", cfg), ("train", cfg, tmp_path / "c.txt", "--backup", tmp_path / "b")):
        r = run_cli(*args)
        assert_one_line_error(r, f"{cfg}:7: unknown key 'outptu' in [lstm]; did you mean 'output'?")
    assert not (tmp_path / "b").exists()


# Unread keys that are not typos: Darknet's own keys darknetpy does not read (even one edit from a
# key it reads), keys for other tools, and near misses too far to be sure of.
NOT_TYPOS = {
    "[net]\ninputs=4\npolicy=steps\nsteps=10,20\nscales=.1,.1\nstep=5\nscale=.5\n[rnn]\n": [6, 7],
    "[net]\ninputs=4\npolicy=step\nstep=5\nscale=.5\nsteps=10,20\nscales=.1,.1\n[rnn]\n": [6, 7],
    "[net]\ninputs=4\nB1=.8\nB2=.9\neps=1e-8\ngamma=.9\nseen=0\n[rnn]\n": [3, 4, 5, 6, 7],
    "[net]\ninputs=4\n[rnn]\noutput=3\nhidden=1024\nlearning_rate=.5\nstopbackward=1\n": [5, 6, 7],
    "[net]\ninputs=4\n[rnn]\noutput=3\n[softmax]\ntree=t.tree\nspatial=1\n[cost]\nthresh=.5\nratio=.1\n": [6, 7, 9, 10],
    "[net]\ninputs=4\nflip=0\nmosaic=1\n[rnn]\nhidden=8\n": [3, 4, 6],  # AlexeyAB's; flip is one from clip
    "[net]\ninputs=4\n[rnn]\notpt=3\n": [4],  # two edits from a short key
    "[net]\ninputs=4\n[rnn]\noutput=3\noutput=5\n": [5],  # a repeat of a key the section reads
}


@pytest.mark.parametrize("text", NOT_TYPOS)
def test_other_unused_keys_stay_warnings(text, write_cfg):
    path = write_cfg(text)
    with pytest.warns(CfgWarning) as record:
        darknetpy.load_network(path)
    lines = [int(str(w.message).split(":")[1]) for w in record if issubclass(w.category, CfgWarning)]
    assert lines == NOT_TYPOS[text]


# Darknet's cfg/rnn.cfg (pjreddie/darknet), typed here: its [rnn] sections carry `hidden`, a key
# Darknet itself never reads.
DARKNET_RNN_CFG = """[net]
subdivisions=1
inputs=256
batch = 1
momentum=0.9
decay=0.001
max_batches = 2000
time_steps=1
learning_rate=0.1
policy=steps
steps=1000,1500
scales=.1,.1

[rnn]
batch_normalize=1
output = 1024
hidden=1024
activation=leaky

[rnn]
batch_normalize=1
output = 1024
hidden=1024
activation=leaky

[rnn]
batch_normalize=1
output = 1024
hidden=1024
activation=leaky

[connected]
output=256
activation=leaky

[softmax]
"""


def test_darknets_rnn_cfg_still_loads(tmp_path):
    cfg = tmp_path / "rnn.cfg"
    cfg.write_text(DARKNET_RNN_CFG)
    r = run_cli("info", cfg)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stderr.decode().splitlines() == [f"{cfg}:{n}: Unused field: 'hidden = 1024'" for n in (17, 23, 29)]
    assert b"1024" in r.stdout


@pytest.mark.parametrize("a,b,n", [("outptu", "output", 1), ("kitten", "sitting", 3), ("", "abc", 3),
                                   ("learning_rat", "learning_rate", 1), ("ca", "abc", 3), ("same", "same", 0)])
def test_edit_distance(a, b, n):
    """Optimal string alignment, by hand: a swap is one edit, but an edited swap is not ("ca" ->
    "abc" is 3, where unrestricted Damerau-Levenshtein gives 2)."""
    assert edits(a, b) == edits(b, a) == n
