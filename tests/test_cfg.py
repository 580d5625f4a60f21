"""The .cfg reader: Darknet's grammar, and every problem reported as `PATH:LINE: message`."""
import warnings

import numpy as np
import pytest

import darknetpy
from darknetpy.cfg import CfgWarning
from darknetpy.errors import DarknetpyError

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
