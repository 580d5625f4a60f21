"""The vocabulary travels with the weights (issue 26), and what depends on the vocabulary: samplers
that stay within it, valid and score beyond the outputs, "bits per token" for word models, and the
README's held-out text.

Each run here is a 1-layer 16-unit LSTM trained for a few iterations on a few kB of text; the
commands checked are real subprocesses (conftest.run_cli) on real folders: a renamed cfg, weights
copied to another folder with and without their vocabulary or state, an X.train.cfg run used with
X.cfg, a words model of inputs=4000 whose vocabulary is missing.
"""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import assert_one_line_error, run_cli
from darknetpy import load_network
from darknetpy.errors import DarknetpyError
from darknetpy.network import Network
from darknetpy.vocab import Vocab
from test_train import TEXT as ASCII
from test_vocab import TEXT, TEXT_PATH, write_cfg

CHARS = len(set(TEXT))  # 178 distinct characters in the multilingual text


def ok(*args, stdin=None):
    result = run_cli(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr.decode()
    return result


def train(tmp_path, cfg, data, *options):
    """`darknetpy train` of `cfg` into tmp_path/b: the folder and train's stderr."""
    backup = tmp_path / "b"
    result = ok("train", cfg, data, "--backup", backup, "--srand", 1, *options)
    return backup, result.stderr.decode()


def generate(cfg, weights, *options):
    return ok("generate", cfg, weights, "--seed", "Это", "--len", 40, "--srand", 3, *options).stdout


def copy(folder, *paths):
    """Copy files into `folder` (made if missing), keeping their names."""
    folder.mkdir(exist_ok=True)
    for p in paths:
        shutil.copy(p, folder)
    return folder


@pytest.fixture(scope="module")
def chars_run(tmp_path_factory):
    """A chars run of tiny.cfg: (tmp folder, cfg, backup folder, its final weights, generate's
    output with the run's own names)."""
    tmp = tmp_path_factory.mktemp("chars")
    cfg = write_cfg(tmp, CHARS)
    backup, _ = train(tmp, cfg, TEXT_PATH, "--vocab", "chars")
    weights = backup / "tiny_final.weights"
    out = generate(cfg, weights)
    text = out.decode("utf-8")
    assert text.startswith("Это") and set(text) <= set(TEXT) | {"\n"} and "\x00" not in text
    return tmp, cfg, backup, weights, out


@pytest.fixture(scope="module")
def words_run(tmp_path_factory):
    """A words run of a cfg with inputs=4000 (more than its vocabulary): (tmp folder, cfg, backup
    folder, train's stderr)."""
    tmp = tmp_path_factory.mktemp("words")
    cfg = write_cfg(tmp, 4000, name="w")
    backup, err = train(tmp, cfg, TEXT_PATH, "--vocab", "words", "--valid-frac", 0.3, "--valid-every", 2,
                        "--valid-full")
    return tmp, cfg, backup, err


# ---- 1. the vocabulary travels with the weights --------------------------------------------------

def test_renamed_cfg_finds_the_run_vocabulary(chars_run, tmp_path):
    _, cfg, _, weights, out = chars_run
    renamed = tmp_path / "renamed.cfg"
    shutil.copy(cfg, renamed)
    assert generate(renamed, weights) == out
    held = tmp_path / "held.txt"
    held.write_text(TEXT[-300:], encoding="utf-8")
    assert ok("valid", renamed, weights, held).stdout == ok("valid", cfg, weights, held).stdout
    vec = ok("vec", renamed, weights, held).stdout.decode("utf-8").splitlines()
    assert vec == ok("vec", cfg, weights, held).stdout.decode("utf-8").splitlines()


def test_weights_copied_elsewhere_with_their_state_or_their_vocabulary(chars_run, tmp_path):
    _, cfg, backup, weights, out = chars_run
    renamed = tmp_path / "renamed.cfg"
    shutil.copy(cfg, renamed)
    # the weights and their .state.npz only: the state holds the vocabulary
    state_only = copy(tmp_path / "state", weights, str(weights) + ".state.npz")
    assert generate(renamed, state_only / weights.name) == out
    # the weights and the run's .vocab (named after the run, as the weights are), no state
    vocab_only = copy(tmp_path / "vocab", weights, backup / "tiny.vocab")
    assert generate(renamed, vocab_only / weights.name) == out
    # weights renamed at will beside a .vocab named after the cfg
    shutil.copy(weights, vocab_only / "mine.weights")
    assert generate(cfg, vocab_only / "mine.weights") == out
    # load_network (the API) finds it the same way
    net = load_network(str(renamed), str(state_only / weights.name))
    assert net.vocab is not None and net.vocab.mode == "chars" and net.vocab.size == CHARS


def test_x_cfg_with_the_weights_of_an_x_train_cfg_run(tmp_path):
    train_cfg = write_cfg(tmp_path, CHARS, name="x.train")
    backup, _ = train(tmp_path, train_cfg, TEXT_PATH, "--vocab", "chars")
    weights = backup / "x.train_final.weights"
    out = generate(train_cfg, weights)
    for state in backup.glob("*.state.npz"):  # found by the weights' own name: x.train.vocab
        state.unlink()
    x_cfg = tmp_path / "x.cfg"
    x_cfg.write_text(open(train_cfg).read().replace("batch=4", "batch=1"))
    assert generate(x_cfg, weights) == out
    assert generate(x_cfg, backup / "x.train.backup") == generate(train_cfg, backup / "x.train.backup")


def test_train_weights_continue_with_the_run_vocabulary(chars_run, tmp_path):
    _, cfg, backup, weights, _ = chars_run
    renamed = tmp_path / "renamed.cfg"
    shutil.copy(cfg, renamed)
    elsewhere = copy(tmp_path / "w", weights, str(weights) + ".state.npz")
    ok("train", renamed, TEXT_PATH, "--weights", elsewhere / weights.name, "--backup", tmp_path / "b2",
       "--max-batches", 6)
    record = yaml.safe_load((tmp_path / "b2" / "renamed.yaml").read_text())
    assert record["corpus"]["vocab"]["mode"] == "chars"
    assert (tmp_path / "b2" / "renamed.vocab").read_bytes() == (backup / "tiny.vocab").read_bytes()


def test_a_model_whose_vocabulary_is_lost_is_refused(chars_run, words_run, tmp_path):
    # the run record beside the weights names a chars vocabulary: no state, no .vocab left
    tmp, cfg, backup, weights, _ = chars_run
    lost = tmp_path / "lost"
    shutil.copytree(backup, lost)
    os.unlink(lost / "tiny.vocab")
    os.unlink(lost / (weights.name + ".state.npz"))
    for command in ("generate", "valid", "vec"):
        result = run_cli(command, cfg, lost / weights.name, stdin=b"text\n")
        assert_one_line_error(result, "chars vocabulary", f"no {lost / 'tiny.vocab'}", "--vocab FILE")
    # a words model with inputs=4000, weights copied alone: not a byte model
    _, wcfg, wbackup, _ = words_run
    alone = copy(tmp_path / "alone", wbackup / "w_final.weights")
    for command in ("generate", "valid", "vec"):
        result = run_cli(command, wcfg, alone / "w_final.weights", stdin=b"text\n")
        assert_one_line_error(result, "4000 inputs", "needs its vocabulary", f"no {alone / 'w.vocab'}",
                              "--vocab FILE")
    with pytest.raises(DarknetpyError, match="needs its vocabulary"):
        load_network(str(wcfg), str(alone / "w_final.weights"))
    result = run_cli("train", wcfg, TEXT_PATH, "--weights", alone / "w_final.weights", "--backup", tmp_path / "b3")
    assert_one_line_error(result, "needs its vocabulary")
    # given with --vocab, it is used
    out = ok("generate", wcfg, alone / "w_final.weights", "--vocab", wbackup / "w.vocab", "--len", 30,
             "--seed", "Это").stdout.decode("utf-8")
    assert out.startswith("Это") and "\x00" not in out


def test_vocab_file_of_another_run_is_refused(words_run, tmp_path):
    _, wcfg, wbackup, _ = words_run
    other = tmp_path / "chars.vocab"
    Vocab.build(TEXT, "chars").save(str(other))
    result = run_cli("generate", wcfg, wbackup / "w_final.weights", "--vocab", other)
    assert_one_line_error(result, str(other), f"chars vocabulary of {CHARS} tokens", "words", "drop --vocab")


# ---- 2. sampling never picks an id outside the vocabulary ------------------------------------------

SAMPLERS = [(), ("--srand", 5), ("--top-k", 40), ("--top-p", 0.95), ("--samples", 2), ("--greedy",),
            ("--beam", 3)]


def test_no_sampler_picks_an_id_beyond_the_vocabulary():
    """A chars vocabulary of 3 tokens in a cfg of 256 outputs whose biases favour the ids beyond
    it by e^8: each rule chooses among a, b, c only; greedy's path is the argmax over those three,
    step by step through the network (the reference)."""
    import tempfile
    from pathlib import Path
    net = Network(write_cfg(Path(tempfile.mkdtemp()), 256), seed=1)
    net.params()["layer1.biases"][3:] = 8.0
    net.refresh()
    vocab = Vocab("chars", "abc")
    options = [dict(), dict(srand=5), dict(top_k=40, srand=1), dict(top_p=0.95, srand=1),
               dict(samples=2, srand=1), dict(greedy=True), dict(beam=3)]
    for opts in options:
        out = net.generate(seed="a", length=60, vocab=vocab, **opts)
        for text in out if isinstance(out, list) else [out]:
            assert set(text.decode("utf-8")) <= set("abc\n"), (opts, text)
    expect, c = [], 0
    for _ in range(60):
        c = int(np.argmax(net.predict(c)[:3]))
        expect.append("abc"[c])
    net.reset_state()
    assert net.generate(seed="a", length=60, vocab=vocab, greedy=True) == ("a" + "".join(expect) + "\n").encode()


def test_generate_cli_stays_within_a_chars_vocabulary_smaller_than_the_outputs(tmp_path):
    cfg = write_cfg(tmp_path, 256)  # 256 outputs, 178 characters: 78 ids have no text
    backup, _ = train(tmp_path, cfg, TEXT_PATH, "--vocab", "chars", "--max-batches", 1)
    for options in SAMPLERS:
        out = ok("generate", cfg, backup / "tiny_final.weights", "--seed", "Это", "--len", 300,
                 *options).stdout.decode("utf-8")
        assert "\ufffd" not in out and set(out) <= set(TEXT) | {"\n", "-"}, options


# ---- 3. valid and score beyond the outputs -------------------------------------------------------

def test_valid_and_score_refuse_a_target_beyond_the_outputs(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(ASCII * 30)
    cfg = write_cfg(tmp_path, 256, outputs=128)  # bytes in, 128 outputs: ASCII only out
    backup, _ = train(tmp_path, cfg, corpus, "--max-batches", 2)
    weights = backup / "tiny_final.weights"
    text = tmp_path / "t.txt"
    text.write_bytes("Hello é".encode("utf-8"))  # é is 0xc3 0xa9 at offsets 6, 7
    assert_one_line_error(run_cli("valid", cfg, weights, text), "byte 195 at offset 6", "128 outputs")
    net = load_network(str(cfg), str(weights))
    with pytest.raises(DarknetpyError, match="byte 195 at offset 6 .* 128 outputs"):
        net.score("Hello é")
    assert net.score("Hello e") > 0  # within the outputs: scored
    assert_one_line_error(run_cli("valid", cfg, weights, text, "--verbose"), "offset 6")


# ---- 4. word models say "bits per token" ----------------------------------------------------------

def test_word_models_say_bits_per_token(words_run, tmp_path, monkeypatch):
    _, _, backup, err = words_run
    valid_lines = [line for line in err.splitlines() if line.startswith("valid: ")]
    assert valid_lines and all(re.search(r"valid \d+\.\d+ bits per token \(\d+ tokens", v) for v in valid_lines)
    summary = err.strip().splitlines()[-1]
    assert re.search(r"valid \d+\.\d+ bits per token, best valid \d+\.\d+ bits per token", summary), summary
    assert "bpc" not in err and " chars" not in err
    # the plot's axis: an SVG with its text kept as text
    (tmp_path / "matplotlibrc").write_text("svg.fonttype: none\n")
    monkeypatch.setenv("MATPLOTLIBRC", str(tmp_path / "matplotlibrc"))
    ok("plot", backup / "w.yaml", "-o", tmp_path / "w.svg")
    svg = (tmp_path / "w.svg").read_text()
    assert "bits per token" in svg and "bits per character" not in svg and "bpc" not in svg


def test_byte_models_still_say_bpc(tmp_path, monkeypatch):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(ASCII * 30)
    backup, err = train(tmp_path, write_cfg(tmp_path, 256), corpus, "--valid-every", 2)
    assert re.search(r"valid \d+\.\d+ bpc \(\d+ chars", err) and "bits per token" not in err
    assert re.search(r"valid \d+\.\d+ bpc, best valid", err.strip().splitlines()[-1])
    (tmp_path / "matplotlibrc").write_text("svg.fonttype: none\n")
    monkeypatch.setenv("MATPLOTLIBRC", str(tmp_path / "matplotlibrc"))
    ok("plot", backup / "tiny.yaml", "-o", tmp_path / "t.svg")
    svg = (tmp_path / "t.svg").read_text()
    assert "bits per character" in svg and "bits per token" not in svg


# ---- 5. the README's held-out part ------------------------------------------------------------------

def final_valid(err):
    """The final validation training printed (its summary line)."""
    return float(re.search(r"avg loss \S+, valid (\d+\.\d+)", err.strip().splitlines()[-1]).group(1))


def valid_bpc(cfg, weights, text):
    return float(re.search(r"BPC: (\d+\.\d+)", ok("valid", cfg, weights, text).stdout.decode()).group(1))


def test_readme_held_out_commands_give_the_bpc_training_printed(tmp_path, words_run):
    """The README's `tail -c` line (bytes) and Python line (chars, words): `valid` on what they
    write scores what training held out, so its BPC is the final --valid-full validation's (train
    sums in float64, valid in Darknet's float32: equal to the 4 printed decimals but for rounding)."""
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(ASCII * 40)
    cfg = write_cfg(tmp_path, 256)
    backup, err = train(tmp_path, cfg, corpus, "--valid-full")
    held = tmp_path / "held_out.txt"
    subprocess.run(f'tail -c $(( $(wc -c < "{corpus}") / 20 )) "{corpus}" > "{held}"', shell=True, check=True)
    assert len(held.read_bytes()) == yaml.safe_load((backup / "tiny.yaml").read_text())["hyperparameters"]["valid_chars"]
    assert valid_bpc(cfg, backup / "tiny_final.weights", held) == pytest.approx(final_valid(err), abs=1.5e-4)

    _, wcfg, wbackup, werr = words_run
    line = ("import sys; from darknetpy.vocab import held_out; "
            "sys.stdout.buffer.write(held_out(sys.argv[1], sys.argv[2], float(sys.argv[3])))")
    words_held = tmp_path / "words_held_out.txt"
    with open(words_held, "wb") as f:
        subprocess.run([sys.executable, "-c", line, TEXT_PATH, "words", "0.3"], stdout=f, check=True)
    assert valid_bpc(wcfg, wbackup / "w_final.weights", words_held) == pytest.approx(final_valid(werr), abs=1.5e-4)
