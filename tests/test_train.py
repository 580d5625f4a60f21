"""`darknetpy train`: checkpoints, exact resume, run record, bad input, Ctrl-C, divergence, full disk.

Tiny cfgs and corpora written to tmp_path; every run is a fraction of a second.
"""
import errno
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from darknetpy import atomic, evaluate, load_network
from darknetpy import weights as weightsmod
from darknetpy.cli import main
from darknetpy.network import Network

TEXT = (b"First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
        b"First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n")


def write_cfg(tmp_path, name="tiny", layer="lstm", hidden=16, batch=8, subdivisions=1, time_steps=8,
              inputs=256, net_extra="", layers_extra="", max_batches=20,
              opt="learning_rate=0.05\nmomentum=0.9\ndecay=0.0005"):
    path = tmp_path / f"{name}.cfg"
    path.write_text(f"""[net]
inputs={inputs}
batch={batch}
subdivisions={subdivisions}
time_steps={time_steps}
max_batches={max_batches}
{opt}
{net_extra}

[{layer}]
output={hidden}
{layers_extra}
[connected]
output={inputs}
activation=linear

[softmax]
""")
    return path


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT * 30)  # ~5 KB: 5% held out is ~260 bytes
    return path


def cli(*args):
    result = CliRunner().invoke(main, ["train", *map(str, args)], catch_exceptions=False)
    return result


def ok(*args):
    r = cli(*args)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    return r


def header_seen(path):
    data = path.read_bytes()
    major, minor, revision, seen = struct.unpack_from("<3iQ", data)
    assert (major, minor, revision) == (0, 2, 0)
    return seen


def one_line_error(r, *fragments, code=2, during=False):
    """Exit `code`, no traceback, nothing on stdout, and the error is one line naming `fragments`.
    Before training that line is all of stderr; `during` training it follows the progress lines."""
    err = r.stderr.decode() if isinstance(r.stderr, bytes) else r.stderr
    rc = r.returncode if hasattr(r, "returncode") else r.exit_code
    assert rc == code, err
    assert "Traceback" not in err and "warning" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("darknetpy:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    if not during:
        assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[-1], lines[-1]
    out = r.stdout
    assert not out, out
    return lines[-1]


def run(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "darknetpy", "train", *map(str, args)],
                          capture_output=True, timeout=120, **kwargs)


# ---- checkpoints ---------------------------------------------------------------------------------
def test_checkpoints_names_sizes_and_seen(tmp_path, corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = write_cfg(tmp_path, max_batches=120)
    r = ok(cfg, corpus, "--srand", 1, "--save-every", 50, "--valid-every", 40)
    backup = tmp_path / "backup"  # the default: backup/ in the working directory
    size = weightsmod.expected_size(Network(cfg))
    names = ["tiny.backup", "tiny_50.weights", "tiny_100.weights", "tiny_final.weights"]
    for name in names:
        assert (backup / name).stat().st_size == size
        assert (backup / (name + ".state.npz")).exists()
    assert not (backup / "tiny_150.weights").exists()
    assert header_seen(backup / "tiny_50.weights") == 50 * 8 * 8
    assert header_seen(backup / "tiny_100.weights") == 100 * 8 * 8
    assert header_seen(backup / "tiny_final.weights") == 120 * 8 * 8
    assert header_seen(backup / "tiny.backup") == 120 * 8 * 8  # the backup is always the latest
    assert not [p for p in backup.iterdir() if p.name.startswith(".") or p.name.endswith(".pending")]
    # quiet: validation lines (40, 80, 120) and one summary line, besides the progress bar
    lines = r.stderr.splitlines()
    assert [line.split()[2] for line in lines if line.startswith("valid:")] == ["40", "80", "120"]
    assert lines[-1].startswith("finished: iteration 120, update 120 of max_batches 120")
    record = yaml.safe_load((backup / "tiny.yaml").read_text())
    assert record["status"] == "finished"
    # the run's files are named relative to the record's folder (the cfg by its copy there); the corpus absolute
    assert record["cfg"] == "tiny.cfg" and record["cfg_source"] == str(cfg) and record["data"] == str(corpus)
    assert (backup / "tiny.cfg").read_bytes() == cfg.read_bytes()
    assert record["options"]["srand"] == 1 and record["options"]["valid_frac"] == 0.05
    hp = record["hyperparameters"]
    assert (hp["streams"], hp["time_steps"], hp["optimizer"], hp["learning_rate"]) == (8, 8, "sgd", 0.05)
    assert record["progress"]["seen"] == 120 * 64 and record["progress"]["iteration"] == 120
    assert record["progress"]["valid_bpc"] > 0 and record["progress"]["train_loss"] > 0
    assert record["checkpoints"]["latest"] == "tiny_final.weights"
    assert record["checkpoints"]["numbered"] == ["tiny_50.weights", "tiny_100.weights"]
    load_network(cfg, backup / "tiny_final.weights")  # loads


def test_subdivisions_count_updates(tmp_path, corpus):
    cfg = write_cfg(tmp_path, batch=8, subdivisions=2)  # 4 streams, an update every 2 iterations
    ok(cfg, corpus, "--srand", 1, "--max-batches", 5, "--backup", tmp_path / "b")
    assert header_seen(tmp_path / "b" / "tiny_final.weights") == 10 * 4 * 8  # 10 datums, 5 updates


# ---- exact resume ----------------------------------------------------------------------------------
RESUME_CASES = {
    "sgd_momentum": dict(),
    "adam_clip": dict(opt="adam=1\nlearning_rate=0.01\ndecay=0.0001\nclip=1"),
    "adamw": dict(opt="adam=1\nlearning_rate=0.01\nweight_decay=0.1"),
    "adamw_epochs": dict(opt="adam=1\nlearning_rate=0.01\nweight_decay=0.1\nweight_decay_epochs=0.1"),  # grown ~5x
    "sgd_subdivisions_dropout": dict(subdivisions=2, layers_extra="[dropout]\nprobability=0.2\n"),
    "gru_steps_policy": dict(layer="gru", opt="learning_rate=0.1\nmomentum=0.5\npolicy=steps\nsteps=8,14\nscales=.5,.5"),
    "adam_ema": dict(opt="adam=1\nlearning_rate=0.01\nema_alpha=0.9"),  # final: the average, the trained beside it
}


@pytest.mark.usefixtures("kernels_mode")
@pytest.mark.parametrize("case", RESUME_CASES)
def test_resume_is_bit_exact(tmp_path, corpus, case):
    # 16 streams x 23 iterations: several streams are re-seated (p = 1/64 each) along the way
    cfg = write_cfg(tmp_path, batch=16 * RESUME_CASES[case].get("subdivisions", 1), **RESUME_CASES[case])
    n, k = (24, 9) if case == "sgd_subdivisions_dropout" else (23, 9)  # k odd: mid-accumulation
    ok(cfg, corpus, "--srand", 5, "--max-batches", n, "--backup", tmp_path / "whole")
    ok(cfg, corpus, "--srand", 5, "--max-batches", k, "--backup", tmp_path / "part")
    ok(cfg, corpus, "--weights", tmp_path / "part" / "tiny_final.weights", "--max-batches", n,
       "--backup", tmp_path / "rest")
    whole = (tmp_path / "whole" / "tiny_final.weights").read_bytes()
    assert (tmp_path / "part" / "tiny_final.weights").read_bytes() != whole
    assert (tmp_path / "rest" / "tiny_final.weights").read_bytes() == whole
    # --resume from the run record continues the same way (in the record's own directory)
    ok("--resume", tmp_path / "part" / "tiny.yaml", "--max-batches", n)
    assert (tmp_path / "part" / "tiny_final.weights").read_bytes() == whole
    record = yaml.safe_load((tmp_path / "part" / "tiny.yaml").read_text())
    assert record["options"]["max_batches"] == n and record["options"]["srand"] == 5


def test_weight_decay_grows_with_the_passes_over_the_training_text(tmp_path):
    """weight_decay_epochs=E: a run whose schedule plans P passes over its training text decays by
    W·P/E; 20 updates of 8 x 8 chars over a 1,280-byte text plan one pass, so W = 0.125 at E = 0.5
    trains the same bits as W = 0.25 without it, and not those of 0.125."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes((TEXT * 8)[:1280])
    finals = {}
    for name, opt in (("grown", "weight_decay=0.125\nweight_decay_epochs=0.5"), ("twice", "weight_decay=0.25"),
                      ("plain", "weight_decay=0.125")):
        cfg = write_cfg(tmp_path, name=name, max_batches=20, opt="adam=1\nlearning_rate=0.01\n" + opt)
        ok(cfg, corpus, "--srand", 3, "--valid-frac", 0, "--backup", tmp_path / name)
        finals[name] = (tmp_path / name / f"{name}_final.weights").read_bytes()
    assert finals["grown"] == finals["twice"] != finals["plain"]


def test_resume_after_ctrl_c_style_backup_is_exact(tmp_path, corpus):
    """A resume from the periodic <cfg>.backup (not a final checkpoint) continues exactly too."""
    cfg = write_cfg(tmp_path, batch=4, max_batches=130, opt="adam=1\nlearning_rate=0.01")
    ok(cfg, corpus, "--srand", 2, "--backup", tmp_path / "whole", "--valid-every", 0)
    ok(cfg, corpus, "--srand", 2, "--backup", tmp_path / "part", "--max-batches", 100)
    os.remove(tmp_path / "part" / "tiny_final.weights")  # the record's latest checkpoint is now stale ...
    (tmp_path / "part" / "tiny.yaml").write_text(  # ... point it at the backup, as after a Ctrl-C
        (tmp_path / "part" / "tiny.yaml").read_text().replace("tiny_final.weights", "tiny.backup"))
    ok("--resume", tmp_path / "part" / "tiny.yaml", "--max-batches", 130)
    assert (tmp_path / "part" / "tiny_final.weights").read_bytes() == \
        (tmp_path / "whole" / "tiny_final.weights").read_bytes()


def test_max_batches_counts_from_seen(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=6)
    b = tmp_path / "b"
    ok(cfg, corpus, "--srand", 1, "--backup", b)  # the cfg's max_batches
    assert header_seen(b / "tiny_final.weights") == 6 * 64
    ok(cfg, corpus, "--weights", b / "tiny_final.weights", "--max-batches", 10, "--backup", b)
    assert header_seen(b / "tiny_final.weights") == 10 * 64  # 4 more, not 10 more
    r = ok("--resume", b / "tiny.yaml", "--max-batches", 13)
    assert header_seen(b / "tiny_final.weights") == 13 * 64
    assert "update 13 of max_batches 13" in r.stderr
    before = (b / "tiny_final.weights").read_bytes()
    ok("--resume", b / "tiny.yaml")  # the record's max_batches (13) is reached: nothing to train
    assert (b / "tiny_final.weights").read_bytes() == before
    ok(cfg, corpus, "--weights", b / "tiny_final.weights", "--clear", "--max-batches", 2, "--backup", b)
    assert header_seen(b / "tiny_final.weights") == 2 * 64  # --clear: seen starts at 0


def test_a_new_run_does_not_replace_an_earlier_one(tmp_path, corpus):
    """Running the same train command twice must not lose the first run: the second refuses and
    says how to continue; --overwrite (or --weights, or another --backup) starts anyway."""
    cfg = write_cfg(tmp_path, max_batches=6)
    b = tmp_path / "b"
    ok(cfg, corpus, "--srand", 1, "--backup", b)
    kept = {name: (b / name).read_bytes() for name in ("tiny.backup", "tiny.yaml", "tiny_final.weights")}
    line = one_line_error(cli(cfg, corpus, "--srand", 2, "--backup", b), str(b / "tiny.backup"),
                          "(iteration 6)", f"--resume {b / 'tiny.yaml'}", "--overwrite")
    assert all((b / name).read_bytes() == data for name, data in kept.items()), line
    ok(cfg, corpus, "--srand", 1, "--backup", tmp_path / "elsewhere")
    one_line_error(cli(cfg, corpus, "--weights", tmp_path / "elsewhere" / "tiny_final.weights", "--backup", b),
                   str(b / "tiny.backup"), "--overwrite")  # other weights would replace this run too
    assert all((b / name).read_bytes() == data for name, data in kept.items())
    ok(cfg, corpus, "--weights", b / "tiny.backup", "--max-batches", 8, "--backup", b)
    assert header_seen(b / "tiny.backup") == 8 * 64
    ok(cfg, corpus, "--srand", 2, "--max-batches", 3, "--backup", b, "--overwrite")
    assert header_seen(b / "tiny.backup") == 3 * 64


def test_max_batches_missing(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=0)
    one_line_error(cli(cfg, corpus, "--backup", tmp_path / "b"), "max_batches", str(cfg))


# ---- bad input -----------------------------------------------------------------------------------
def test_corpus_shorter_than_time_steps(tmp_path):
    cfg = write_cfg(tmp_path, time_steps=16)
    short = tmp_path / "short.txt"
    short.write_bytes(b"0123456789abcdef")  # 16 bytes: needs 17
    one_line_error(run(cfg, short, "--backup", tmp_path / "b"), str(short), "time_steps=16")
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())


def test_byte_outside_inputs(tmp_path):
    cfg = write_cfg(tmp_path, inputs=128)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(TEXT * 3 + b"\xff" + TEXT)
    one_line_error(run(cfg, bad, "--backup", tmp_path / "b"), str(bad), "0xff", f"offset {len(TEXT) * 3}")


@pytest.mark.parametrize("content,fragment", [(b"1 2 3\n4 99 5\n", "'99'"), (b"1 2 3\n4 x5 6\n", "'x5'"),
                                              (b"1 2 3\n4 2.5 6\n", "'2.5'")])
def test_bad_tokens(tmp_path, content, fragment):
    cfg = write_cfg(tmp_path, inputs=10, time_steps=2, batch=2)
    tokens = tmp_path / "tokens.txt"
    tokens.write_bytes(content * 20 if b"99" not in content else content)
    one_line_error(run(cfg, tokens, "--tokenized", "--backup", tmp_path / "b"), f"{tokens}:2:", fragment)


def test_tokenized_trains(tmp_path):
    cfg = write_cfg(tmp_path, inputs=10, time_steps=4, batch=4, max_batches=12)
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(" ".join(str(i % 10) for i in range(2000)))
    ok(cfg, tokens, "--tokenized", "--backup", tmp_path / "b", "--srand", 1)
    assert header_seen(tmp_path / "b" / "tiny_final.weights") == 12 * 16


def test_backup_not_a_directory(tmp_path, corpus):
    cfg = write_cfg(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    one_line_error(run(cfg, corpus, "--backup", blocker), str(blocker), "not a directory")
    one_line_error(run(cfg, corpus, "--backup", blocker / "sub"), str(blocker / "sub"), "backup directory")
    assert blocker.read_text() == "a file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_backup_unwritable(tmp_path, corpus):
    cfg = write_cfg(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        one_line_error(run(cfg, corpus, "--backup", locked), str(locked), "writable")
    finally:
        locked.chmod(0o700)


def test_backup_write_check_happens_before_training(tmp_path, corpus, monkeypatch):
    """A directory that refuses writes (a read-only mount, say) is found before any training."""
    cfg = write_cfg(tmp_path)
    steps = []
    real_train_step = Network.train_step
    monkeypatch.setattr(Network, "train_step", lambda self, *args: steps.append(1) or real_train_step(self, *args))

    def refuse(path, data):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    monkeypatch.setattr(atomic, "write", refuse)
    line = one_line_error(cli(cfg, corpus, "--backup", tmp_path / "ro"), str(tmp_path / "ro"), "Read-only")
    assert steps == [], line


def test_weights_that_do_not_fit(tmp_path, corpus):
    cfg = write_cfg(tmp_path)
    other = write_cfg(tmp_path, name="other", hidden=8)
    ok(other, corpus, "--max-batches", 2, "--backup", tmp_path / "b")
    one_line_error(run(cfg, corpus, "--weights", tmp_path / "b" / "other_final.weights", "--backup", tmp_path / "c"),
                   "other_final.weights", "do not fit")


def test_resume_errors(tmp_path, corpus):
    cfg = write_cfg(tmp_path)
    one_line_error(run("--resume", tmp_path / "nope.yaml"), "nope.yaml", "no such run record")
    ok(cfg, corpus, "--max-batches", 2, "--backup", tmp_path / "b")
    one_line_error(run(cfg, corpus, "--resume", tmp_path / "b" / "tiny.yaml"), "either CFG DATA or --resume")
    one_line_error(run(cfg), "give CFG and DATA")


# ---- divergence, full disk, Ctrl-C ----------------------------------------------------------------
def test_non_finite_loss_keeps_the_last_good_checkpoint(tmp_path, corpus):
    b = tmp_path / "b"
    good = write_cfg(tmp_path)
    ok(good, corpus, "--srand", 1, "--max-batches", 100, "--backup", b)
    saved = {p.name: p.read_bytes() for p in b.iterdir()}
    # the same net with an absurd learning rate: the weights blow up within a few updates
    bad = write_cfg(tmp_path, opt="learning_rate=1e30\nmomentum=0.9")
    r = run(bad, corpus, "--weights", b / "tiny.backup", "--max-batches", 150, "--backup", b)
    line = one_line_error(r, "non-finite", str(b / "tiny.backup"), "iteration 100)", during=True)
    it = int(line.split(" at iteration ")[1].split(":")[0])
    assert 100 < it < 150, line
    assert {p.name: p.read_bytes() for p in b.iterdir()} == saved  # nothing poisoned was written


FAIL_ON = {"state": lambda p: p.endswith(".state.npz.pending"),  # the first file of the checkpoint
           "weights": lambda p: p.endswith(".pending") and ".state" not in p,  # the second
           "record": lambda p: p.endswith("tiny.yaml")}


@pytest.mark.parametrize("fail_on", FAIL_ON)
def test_disk_full_during_checkpoint(tmp_path, corpus, monkeypatch, fail_on):
    b = tmp_path / "b"
    cfg = write_cfg(tmp_path)
    ok(cfg, corpus, "--srand", 1, "--max-batches", 5, "--backup", b)
    saved = {p.name: p.read_bytes() for p in b.iterdir()}
    real = atomic.write

    def full(path, data):
        if FAIL_ON[fail_on](str(path)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(path, data)
    monkeypatch.setattr(atomic, "write", full)
    r = cli(cfg, corpus, "--weights", b / "tiny_final.weights", "--max-batches", 9, "--backup", b)
    one_line_error(r, "No space left on device", "previous", during=True)
    after = {p.name: p.read_bytes() for p in b.iterdir()}
    if fail_on == "record":  # the checkpoint itself went through; only the record is old
        assert after["tiny.yaml"] == saved["tiny.yaml"]
        assert header_seen(b / "tiny.backup") == 9 * 64
    else:
        assert after == saved  # every earlier file intact, no temp files left behind


def test_running_out_of_memory_is_one_line_and_leaves_the_checkpoint(tmp_path, corpus, monkeypatch):
    """numpy's MemoryError names the array it could not allocate; train says so in one line."""
    b = tmp_path / "b"
    cfg = write_cfg(tmp_path)
    ok(cfg, corpus, "--srand", 1, "--max-batches", 5, "--backup", b)
    saved = {p.name: p.read_bytes() for p in b.iterdir() if p.suffix != ".csv"}
    real, calls = Network.train_step, []

    def starved(self, *args):
        calls.append(1)
        if len(calls) == 3:
            np.empty(2 ** 62, np.uint8)  # numpy's own MemoryError, as a too-large batch gets
        return real(self, *args)
    monkeypatch.setattr(Network, "train_step", starved)
    r = cli(cfg, corpus, "--weights", b / "tiny_final.weights", "--max-batches", 9, "--backup", b)
    one_line_error(r, "out of memory: Unable to allocate 4.00 EiB", "lower batch or time_steps", during=True)
    assert {p.name: p.read_bytes() for p in b.iterdir() if p.suffix != ".csv"} == saved


def test_a_torn_checkpoint_pair_is_detected(tmp_path, corpus):
    """Weights whose .state.npz belongs to other weights: the state is ignored with a warning."""
    b = tmp_path / "b"
    cfg = write_cfg(tmp_path)
    ok(cfg, corpus, "--srand", 1, "--max-batches", 5, "--backup", b)
    os.replace(b / "tiny_final.weights.state.npz", b / "keep.npz")
    ok(cfg, corpus, "--weights", b / "tiny_final.weights", "--max-batches", 7, "--backup", b)
    os.replace(b / "keep.npz", b / "tiny_final.weights.state.npz")  # a state from iteration 5, weights from 7
    r = ok(cfg, corpus, "--weights", b / "tiny_final.weights", "--max-batches", 8, "--backup", b)
    assert "ignored" in r.stderr and "other weights" in r.stderr


def start_training(cfg, corpus, backup):
    """A long training run in a subprocess, once it trains, and the list collecting its stderr lines."""
    p = subprocess.Popen([sys.executable, "-m", "darknetpy", "train", str(cfg), str(corpus), "--backup",
                          str(backup), "--valid-every", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started, err = threading.Event(), []

    def read():
        for line in p.stderr:
            err.append(line.decode())
            started.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(60), "training did not start"
    return p, reader, err


def test_ctrl_c_saves_a_checkpoint_and_exits_130(tmp_path, corpus):
    cfg = write_cfg(tmp_path, hidden=128, batch=16, time_steps=32, max_batches=100000)
    b = tmp_path / "b"
    p, reader, err = start_training(cfg, corpus, b)
    time.sleep(1.0)  # a few iterations
    p.send_signal(signal.SIGINT)
    assert p.wait(60) == 130, "".join(err)
    reader.join(10)
    text = "".join(err)
    assert "Traceback" not in text and p.stdout.read() == b""
    assert text.splitlines()[-1].startswith("interrupted: iteration "), text
    net = load_network(cfg, b / "tiny.backup")
    assert net.seen > 0 and net.seen % (16 * 32) == 0
    record = yaml.safe_load((b / "tiny.yaml").read_text())
    assert record["status"] == "interrupted" and record["checkpoints"]["latest"] == "tiny.backup"
    assert record["progress"]["seen"] == net.seen


# ---- validation ----------------------------------------------------------------------------------
def test_fast_validation_matches_sequential_valid(tmp_path, corpus):
    cfg = write_cfg(tmp_path, max_batches=150, opt="adam=1\nlearning_rate=0.01")
    ok(cfg, corpus, "--srand", 3, "--backup", tmp_path / "b", "--valid-frac", 0.25)
    ids = np.frombuffer(corpus.read_bytes(), np.uint8)
    held = ids[len(ids) - int(len(ids) * 0.25):]
    net = load_network(cfg, tmp_path / "b" / "tiny_final.weights", batch=1, time_steps=1)
    count, slow, _, _ = evaluate.validate(net, held.tobytes())
    v = evaluate.Estimate(held, list(b"\n\n"), warmup=64)
    assert v.count == count and v.x.shape[1] > 1  # several chunks in parallel
    fast = v(load_network(cfg, tmp_path / "b" / "tiny_final.weights"))
    assert abs(fast - slow) < 0.02, (fast, slow)
    record = yaml.safe_load((tmp_path / "b" / "tiny.yaml").read_text())
    assert abs(record["progress"]["valid_bpc"] - slow) < 0.02


def test_learning_lowers_validation_bpc(tmp_path):
    """A short run on a small, repetitive corpus learns it: held-out bpc falls far below the start."""
    rng = np.random.default_rng(0)
    words = [b"to be", b"or not", b"the king", b"my lord", b"speak", b"hear me"]
    text = b"".join(words[i] + b". " for i in rng.integers(0, len(words), 3000))
    corpus = tmp_path / "words.txt"
    corpus.write_bytes(text)
    cfg = write_cfg(tmp_path, hidden=32, batch=16, time_steps=16, max_batches=300,
                    opt="adam=1\nlearning_rate=0.01\nclip=5")
    r = ok(cfg, corpus, "--srand", 1, "--backup", tmp_path / "b", "--valid-every", 10)
    bpcs = [float(line.split(" valid ")[1].split()[0]) for line in r.stderr.splitlines() if line.startswith("valid:")]
    assert bpcs[0] > 3.0, bpcs   # after 10 iterations: still far from the text
    assert bpcs[-1] < 1.0, bpcs  # the words and their order: about 2.6 bits per word of ~8 chars


@pytest.mark.parametrize("case", ["sgd_momentum", "adam_clip"])
def test_a_version_1_state_still_resumes_exactly(tmp_path, corpus, case):
    """A .state.npz in the layout before optimizers were classes (version 1: upd{i}, Adam's m{i},
    v{i}, meta t and moments), written here by hand, resumes bit for bit."""
    cfg = write_cfg(tmp_path, batch=16, **RESUME_CASES[case])
    ok(cfg, corpus, "--srand", 5, "--max-batches", 23, "--backup", tmp_path / "whole")
    ok(cfg, corpus, "--srand", 5, "--max-batches", 9, "--backup", tmp_path / "part")
    state = tmp_path / "part" / "tiny_final.weights.state.npz"
    with np.load(state) as z:
        new = {k: z[k] for k in z.files}
    meta = json.loads(str(new.pop("meta")))
    opt = meta.pop("optimizer")
    moments = opt["buffers"].get("m", 0)
    assert moments == (len(Network(cfg).slots()) if case == "adam_clip" else 0)
    v1 = {k: v for k, v in new.items() if k.startswith(("upd", "layer"))}
    for i in range(moments):
        v1[f"m{i}"], v1[f"v{i}"] = new[f"optimizer.m.{i}"], new[f"optimizer.v.{i}"]
    meta.update(version=1, t=opt["scalars"]["t"], moments=moments)
    np.savez(state.with_suffix(""), meta=np.array(json.dumps(meta)), **v1)  # np.savez adds .npz
    r = ok(cfg, corpus, "--weights", tmp_path / "part" / "tiny_final.weights", "--max-batches", 23,
           "--backup", tmp_path / "rest")
    assert "ignored" not in r.stderr
    assert (tmp_path / "rest" / "tiny_final.weights").read_bytes() == \
        (tmp_path / "whole" / "tiny_final.weights").read_bytes()


def test_a_diverged_run_names_the_last_good_and_the_best_checkpoint(tmp_path, corpus):
    b = tmp_path / "b"
    ok(write_cfg(tmp_path), corpus, "--srand", 1, "--max-batches", 20, "--valid-every", 10, "--backup", b)
    saved = {p.name: p.read_bytes() for p in b.iterdir()}
    best = yaml.safe_load((b / "tiny.yaml").read_text())["best"]
    bad = write_cfg(tmp_path, opt="learning_rate=1e30\nmomentum=0.9")
    r = run(bad, corpus, "--weights", b / "tiny.backup", "--max-batches", 60, "--backup", b)
    one_line_error(r, "non-finite", f"{b / 'tiny.backup'} (iteration 20)",
                   f"the best {b / 'tiny_best.weights'} (iteration {best['iteration']}, {best['valid_bpc']:.4f} bpc)",
                   during=True)
    assert {p.name: p.read_bytes() for p in b.iterdir()} == saved


# ---- the trainer's overheads (issue 32) -----------------------------------------------------------
def test_a_time_budget_run_validates_at_most_every_tenth_of_it(tmp_path, corpus):
    """Without --valid-every a --time-budget run validates every 500 iterations but at least a
    tenth of the budget apart (and at its end); --valid-every N still counts iterations alone."""
    cfg = write_cfg(tmp_path, max_batches=10**6)
    r = ok(cfg, corpus, "--srand", 1, "--backup", tmp_path / "b", "--time-budget", "4s")
    lines = [line.split() for line in r.stderr.splitlines() if line.startswith("valid: iteration ")]
    iterations, seconds = [int(f[2]) for f in lines], [float(f[3]) for f in lines]
    assert 2 <= len(lines) <= 10, r.stderr
    assert all(b - a >= 500 for a, b in zip(iterations[:-1], iterations[1:-1])), r.stderr
    assert all(b - a >= 0.3 for a, b in zip(seconds[:-1], seconds[1:-1])), r.stderr  # 0.4 s apart
    record = yaml.safe_load((tmp_path / "b" / "tiny.yaml").read_text())
    assert record["options"]["valid_every"] is None  # --resume keeps the rule
    r = ok(cfg, corpus, "--srand", 1, "--backup", tmp_path / "c", "--time-budget", "3s", "--valid-every", 7)
    iterations = [int(line.split()[2]) for line in r.stderr.splitlines() if line.startswith("valid: iteration ")]
    assert len(iterations) > 10 and all(it % 7 == 0 for it in iterations[:-1]), r.stderr


def test_a_checkpoint_written_in_the_background_is_whole_when_the_run_ends(tmp_path, corpus, monkeypatch):
    """Checkpoints are committed by a background thread: slowed down there, every one is still
    written whole and in order, the record names the last, and the run resumes from it exactly."""
    real, order = atomic.write, []

    def slow(path, data):
        time.sleep(0.05)
        order.append(os.path.basename(str(path)))
        return real(path, data)
    monkeypatch.setattr(atomic, "write", slow)
    cfg = write_cfg(tmp_path, max_batches=250)
    b = tmp_path / "b"
    ok(cfg, corpus, "--srand", 2, "--backup", b, "--valid-every", 0, "--save-every", 100)
    pairs = [name for name in order if name.endswith(".pending")]
    assert pairs == [n for it in (100, 200) for n in ("tiny.backup.state.npz.pending", "tiny.backup.pending",
                                                      f"tiny_{it}.weights.state.npz.pending", f"tiny_{it}.weights.pending")]\
        + [f"{name}{suffix}.pending" for name in ("tiny.backup", "tiny_best.weights", "tiny_final.weights")
           for suffix in (".state.npz", "")], order
    record = yaml.safe_load((b / "tiny.yaml").read_text())
    assert record["status"] == "finished" and record["checkpoints"]["latest"] == "tiny_final.weights"
    assert header_seen(b / "tiny_200.weights") == 200 * 64 and header_seen(b / "tiny.backup") == 250 * 64
    monkeypatch.setattr(atomic, "write", real)
    ok(cfg, corpus, "--weights", b / "tiny_200.weights", "--max-batches", 250, "--backup", tmp_path / "again",
       "--valid-every", 0)
    assert (tmp_path / "again" / "tiny_final.weights").read_bytes() == (b / "tiny_final.weights").read_bytes()
