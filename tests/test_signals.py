"""SIGTERM and SIGHUP end a run like Ctrl-C: a whole checkpoint, exit 128 + signal, one line saying
what was saved. Real subprocesses, real signals."""
import os
import signal
import time

import pytest
import yaml

from darknetpy import checkpoint as ckpt
from darknetpy import load_network
from test_train import TEXT, ok, start_training, write_cfg


def pair_is_whole(path):
    """The weights at `path` and their .state.npz belong together (the state names their sha256)."""
    with open(path, "rb") as f:
        meta, why = ckpt.read_state(str(path) + ckpt.STATE_SUFFIX, f.read())
    return meta is not None, why


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes(TEXT * 30)
    return path


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_and_sighup_save_and_exit(tmp_path, corpus, sig, code):
    cfg = write_cfg(tmp_path, hidden=128, batch=16, time_steps=32, max_batches=100000)
    b = tmp_path / "b"
    p, reader, err = start_training(cfg, corpus, b)
    time.sleep(1.0)  # a few iterations
    p.send_signal(sig)
    assert p.wait(60) == code, "".join(err)
    reader.join(10)
    text = "".join(err)
    assert "Traceback" not in text and p.stdout.read() == b""
    last = text.splitlines()[-1]
    assert last.startswith("interrupted: iteration ") and f"on {signal.Signals(sig).name}" in last, last
    assert f"saved {b / 'tiny.backup'} (weights, .state.npz and the run record)" in last, last
    assert f"--resume {b / 'tiny.yaml'}" in last, last
    net = load_network(cfg, b / "tiny.backup")
    assert net.seen > 0 and net.seen % (16 * 32) == 0
    assert pair_is_whole(b / "tiny.backup")[0]
    record = yaml.safe_load((b / "tiny.yaml").read_text())
    assert record["status"] == "interrupted" and record["progress"]["seen"] == net.seen
    # and it continues from there
    iteration = net.seen // (16 * 32)
    ok("--resume", b / "tiny.yaml", "--max-batches", iteration + 2)
    assert load_network(cfg, b / "tiny_final.weights").seen == net.seen + 2 * 16 * 32


def test_a_storm_of_signals_leaves_every_checkpoint_whole(tmp_path, corpus):
    """A second (third, ...) SIGTERM while the first one's checkpoint is being written: the files
    on disk are still whole pairs, no temporary file is left, and the run ends: 143 (saved), 130 (a
    later signal interrupted it after a save), or killed by one that came after it restored the
    default handlers."""
    cfg = write_cfg(tmp_path, hidden=256, batch=16, time_steps=32, max_batches=100000)
    b = tmp_path / "b"
    p, reader, err = start_training(cfg, corpus, b)
    time.sleep(1.0)
    for _ in range(40):
        if p.poll() is not None:
            break
        p.send_signal(signal.SIGTERM)
        time.sleep(0.002)
    code = p.wait(60)
    reader.join(10)
    text = "".join(err)
    assert code in (143, 130, -signal.SIGTERM), text
    assert "Traceback" not in text, text
    assert not [f for f in os.listdir(b) if f.endswith(".pending") or f.startswith(".")]
    weights = [b / f for f in os.listdir(b) if f.endswith((".backup", ".weights"))]
    for w in weights:
        assert pair_is_whole(w)[0], (w, pair_is_whole(w))
        load_network(cfg, w)
    if code == 143:  # the first signal's checkpoint went through
        assert b / "tiny.backup" in weights
        assert yaml.safe_load((b / "tiny.yaml").read_text())["status"] == "interrupted"
