"""The command line as a user meets it: exact product on stdout, one-line errors with exit code 2."""
import json
import re
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from conftest import run_cli as run

ORACLE = Path(__file__).resolve().parents[2] / "shared" / "oracle"
INFER = ["infer_rnn_leaky", "infer_gru", "infer_lstm"]


def case(name):
    if not (ORACLE / name).is_dir():
        pytest.skip(f"oracle fixtures not present: {ORACLE / name} (../shared is absent)")
    return ORACLE / name


@pytest.mark.parametrize("name", INFER)
@pytest.mark.parametrize("fixture,srand,temp", [("generate.txt", 7, "0.7"), ("generate_temp1.0_srand42.txt", 42, "1.0")])
def test_generate_matches_darknet_bytes(name, fixture, srand, temp):
    d = case(name)
    r = run("generate", d / "model.cfg", d / "model.weights", "--srand", srand, "--temp", temp,
            "--len", 200, "--seed", "ROMEO:")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == (d / fixture).read_bytes()


@pytest.mark.parametrize("name", INFER)
def test_valid_matches_darknet_bpc(name):
    d = case(name)
    expected = json.loads((d / "case.json").read_text())["expected"]
    r = run("valid", d / "model.cfg", d / "model.weights", d / "input.txt", "--seed", "")
    assert r.returncode == 0, r.stderr.decode()
    last = r.stdout.decode().splitlines()[-1]
    m = re.fullmatch(r"(\d+) BPC: ([\d.]+)   Perplexity: ([\d.]+)    Word Perplexity: ([\d.]+)", last)
    assert m, last
    assert int(m.group(1)) == expected["valid_empty_seed"]["scored_characters"]
    assert abs(float(m.group(2)) - expected["valid_empty_seed"]["final_bpc"]) <= 1e-3
    # the default seed "\n\n", text from stdin
    r = run("valid", d / "model.cfg", d / "model.weights", "-", stdin=(d / "input.txt").read_bytes())
    bpc = float(r.stdout.decode().splitlines()[-1].split()[2])
    assert abs(bpc - expected["valid_default_seed"]["final_bpc"]) <= 1e-3


def test_valid_verbose_prints_a_line_per_character():
    d = case("infer_gru")
    r = run("valid", d / "model.cfg", d / "model.weights", d / "input.txt", "--verbose")
    assert len(r.stdout.decode().splitlines()) == len((d / "input.txt").read_bytes()) - 1


def test_info_states_sizes_and_fit(tmp_path):
    d = case("infer_lstm")
    r = run("info", d / "model.cfg", d / "model.weights")
    out = r.stdout.decode()
    assert r.returncode == 0
    assert "weights file: 182292 bytes" in out
    assert "fits" in out and "seen 12345" in out
    assert re.search(r"lstm\s+256 -> 32", out)
    short = tmp_path / "short.weights"
    short.write_bytes((d / "model.weights").read_bytes()[:1000])
    r = run("info", d / "model.cfg", short)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert "182292" in err and "1000" in err and "layer 0" in err and "Traceback" not in err


def test_generate_refuses_mismatched_weights(tmp_path):
    d = case("infer_gru")
    other = case("infer_lstm")
    assert_one_line_error(run("generate", d / "model.cfg", other / "model.weights"), "145172", "182292")


BAD_CFGS = {
    "syntax": ("[net]\ninputs=256\n[lstm]\noutput 32\n", 4),
    "first": ("[lstm]\noutput=32\n", 1),
    "unknown_section": ("[net]\ninputs=256\n[lstmm]\noutput=32\n", 3),
    "activation": ("[net]\ninputs=256\n[rnn]\noutput=32\nactivation=swish\n", 5),
    "non_numeric": ("[net]\ninputs=256\n[gru]\noutput=3x2\n", 4),
    "subdivisions": ("[net]\ninputs=256\nbatch=5\nsubdivisions=2\n[lstm]\noutput=8\n", 4),
    "no_inputs": ("[net]\nbatch=1\n[lstm]\noutput=8\n", 1),
    "output_zero": ("[net]\ninputs=256\n[connected]\noutput=0\n", 4),
    "policy": ("[net]\ninputs=256\npolicy=sig\n[lstm]\noutput=8\n", 3),
    "too_large": ("[net]\ninputs=256\n[lstm]\noutput=200000\n", 3),  # its weights alone: 1.2 TB
}


@pytest.mark.parametrize("kind", sorted(BAD_CFGS))
def test_bad_cfg_is_one_line_with_file_and_line(tmp_path, kind):
    text, line = BAD_CFGS[kind]
    cfg = tmp_path / f"{kind}.cfg"
    cfg.write_text(text)
    assert_one_line_error(run("info", cfg), f"{cfg}:{line}:")


def test_missing_files_are_one_line_errors(tmp_path):
    assert_one_line_error(run("info", tmp_path / "nope.cfg"), "nope.cfg")
    cfg = tmp_path / "n.cfg"
    cfg.write_text("[net]\ninputs=256\n[lstm]\noutput=4\n[softmax]\n")
    assert_one_line_error(run("generate", cfg, tmp_path / "nope.weights"), "nope.weights")
    empty = tmp_path / "empty.weights"
    empty.write_bytes(b"")
    assert_one_line_error(run("generate", cfg, empty), "empty.weights")


def test_valid_refuses_byte_outside_inputs(tmp_path):
    cfg = tmp_path / "n.cfg"
    cfg.write_text("[net]\ninputs=128\n[lstm]\noutput=4\n[connected]\noutput=128\n[softmax]\n")
    w = tmp_path / "n.weights"
    from darknetpy import load_network
    load_network(cfg).save_weights(w)
    text = tmp_path / "t.txt"
    text.write_bytes(b"hello \xe2 world")
    assert_one_line_error(run("valid", cfg, w, text), "offset 6")


def test_unused_key_warns_like_darknet(tmp_path):
    cfg = tmp_path / "n.cfg"
    cfg.write_text("[net]\ninputs=256\n[rnn]\noutput=4\nhidden=1024\n[softmax]\n")
    r = run("info", cfg)
    assert r.returncode == 0
    assert f"{cfg}:5: Unused field: 'hidden = 1024'" in r.stderr.decode()


@pytest.mark.parametrize("command", ["train", "generate", "valid", "info", "plot"])
def test_help_documents_options(command):
    r = run(command, "--help")
    assert r.returncode == 0
    assert "Usage:" in r.stdout.decode()


def test_generate_help_shows_defaults():
    out = run("generate", "--help").stdout.decode()
    blocks = {b.split()[0]: " ".join(b.split()) for b in re.split(r"\n  (?=-)", out) if b.startswith("-")}
    for flag, default in [("--len", "[default: 1000]"), ("--temp", "[default: 0.7]"), ("--seed", "Default: two newlines")]:
        assert default in blocks[flag], blocks[flag]


def test_train_help_shows_the_watching_options_defaults():
    out = run("train", "--help").stdout.decode()
    blocks = {b.split()[0]: " ".join(b.split()) for b in re.split(r"\n  (?=-)", out) if b.startswith("-")}
    for flag, default in [("--log-every", "[default: 10]"), ("--sample-every", "[default: 0]"),
                          ("--sample-len", "[default: 200]"), ("--sample-temp", "[default: 0.7]"),
                          ("--patience", "Default: off"), ("--time-budget", "Default: off")]:
        assert default in blocks[flag], blocks[flag]
