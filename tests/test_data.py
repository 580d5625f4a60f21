"""Corpus loading, the train/valid split and Darknet's per-stream batching."""
import io
import json
import os
import sys

import numpy as np
import pytest

from darknetpy.data import (StreamBatcher, default_valid_frac, load_corpus,
                            split_corpus)
from darknetpy.errors import DarknetpyError


def write(tmp_path, content, name="corpus.txt"):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


def error_of(fn, *args, **kwargs):
    with pytest.raises(DarknetpyError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# --- loading -------------------------------------------------------------------------------------

def test_bytes_load_one_id_per_byte(tmp_path):
    content = bytes(range(256)) + b"hello\n\x00"
    ids = load_corpus(write(tmp_path, content), 256)
    assert ids.tolist() == list(content)


def test_byte_outside_inputs_names_offset_and_value(tmp_path):
    path = write(tmp_path, "abc\u2014def".encode())  # em dash = e2 80 94, first at offset 3
    message = error_of(load_corpus, path, 128)
    assert message.startswith(f"{path}: ")
    assert "0xe2" in message and "offset 3" in message and "inputs=128" in message
    assert "\n" not in message
    assert load_corpus(path, 256).size == 9


def test_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"xyz")))
    assert load_corpus("-", 256).tolist() == list(b"xyz")


def test_a_pipe_is_read_not_mapped(tmp_path):
    """A named pipe (what the shell's <(...) gives) has size 0 and cannot be mapped: its bytes are
    read, and a byte outside inputs still names it and the offset."""
    import threading
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def feed(data):
        with open(fifo, "wb") as f:
            f.write(data)
    for data, check in ((b"xyz" * 1000, lambda: load_corpus(str(fifo), 256).tolist() == list(b"xyz" * 1000)),
                        (b"ab\xff", lambda: error_of(load_corpus, str(fifo), 128).startswith(f"{fifo}: byte 0xff at offset 2"))):
        writer = threading.Thread(target=feed, args=(data,))
        writer.start()
        assert check()
        writer.join()


def test_stdin_error_is_named(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert error_of(load_corpus, "-", 256).startswith("<stdin>: ")


@pytest.mark.parametrize("tokenized", [False, True])
def test_empty_file(tmp_path, tokenized):
    path = write(tmp_path, b"")
    message = error_of(load_corpus, path, 256, tokenized)
    assert message.startswith(f"{path}: ") and ("empty" in message or "no tokens" in message)


def test_whitespace_only_tokenized_file(tmp_path):
    path = write(tmp_path, b"  \n\t\n")
    assert "no tokens" in error_of(load_corpus, path, 10, tokenized=True)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.txt")
    message = error_of(load_corpus, path, 256)
    assert message.startswith(f"{path}: ") and "no such" in message


def test_directory(tmp_path):
    message = error_of(load_corpus, str(tmp_path), 256)
    assert message.startswith(f"{tmp_path}: ") and "directory" in message


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, b"abc")
    os.chmod(path, 0)
    try:
        message = error_of(load_corpus, path, 256)
    finally:
        os.chmod(path, 0o644)
    assert message.startswith(f"{path}: ") and "permission" in message


def test_tokenized_load(tmp_path):
    ids = load_corpus(write(tmp_path, b"3 1 4\n1\t5 9\r\n\n 2 6 \n"), 10, tokenized=True)
    assert ids.dtype == np.uint8  # the smallest unsigned dtype for ids < 10
    assert ids.tolist() == [3, 1, 4, 1, 5, 9, 2, 6]


def test_tokenized_signed_tokens_take_the_slow_path(tmp_path):
    assert load_corpus(write(tmp_path, b"+3 1\n+0"), 10, tokenized=True).tolist() == [3, 1, 0]


@pytest.mark.parametrize("bad", [b"x7", b"1.5", b"1_0", b"0x1", b"+", b"\xe2\x80\x94"])
def test_tokenized_non_integer_names_line_and_token(tmp_path, bad):
    path = write(tmp_path, b"1 2\n3 4\n5 " + bad + b" 6\n7\n")
    message = error_of(load_corpus, path, 10, tokenized=True)
    assert message.startswith(f"{path}:3: ")
    assert repr(bad.decode("utf-8", "replace")) in message and "not an integer" in message


@pytest.mark.parametrize("bad", [b"10", b"-1", b"99999999999999999999999", b"1" * 100])
def test_tokenized_out_of_range_names_line(tmp_path, bad):
    path = write(tmp_path, b"1 2\n\n3 " + bad + b"\n9 11\n")
    message = error_of(load_corpus, path, 10, tokenized=True)
    assert message.startswith(f"{path}:3: ")
    assert bad.decode()[:40] in message and "[0, 10)" in message and len(message) < 300


def test_long_bad_token_is_shortened(tmp_path):
    message = error_of(load_corpus, write(tmp_path, b"1 " + b"z" * 5000), 10, tokenized=True)
    assert len(message) < 300


# --- split ---------------------------------------------------------------------------------------

def test_split_holds_out_the_tail():
    ids = np.arange(1000)
    train, valid = split_corpus(ids, 0.05)
    assert train.tolist() == list(range(950)) and valid.tolist() == list(range(950, 1000))


def test_split_zero_means_no_validation():
    ids = np.arange(10)
    train, valid = split_corpus(ids, 0)
    assert valid is None and train.tolist() == ids.tolist()


@pytest.mark.parametrize("frac", [-0.1, 1.0, 0.01])
def test_split_refuses_useless_fractions(frac):
    message = error_of(split_corpus, np.arange(100), frac, path="c.txt")
    assert message.startswith("c.txt: ")


def test_default_valid_frac():
    assert default_valid_frac(10_000, 100) == 0.0       # 5% = 500 < 10 * 101
    assert default_valid_frac(20_200, 100) == 0.05      # 5% = 1010 = 10 * 101
    assert default_valid_frac(100, 1) == 0.0
    assert default_valid_frac(1_000_000, 1) == 0.05


# --- batching ------------------------------------------------------------------------------------

def reference_batch(ids, offsets, time_steps):
    """Darknet's get_rnn_data, element by element."""
    n = len(ids)
    x = np.zeros((time_steps, len(offsets)), np.int64)
    y = np.zeros_like(x)
    for s in range(len(offsets)):
        for t in range(time_steps):
            x[t, s] = ids[(offsets[s] + t) % n]
            y[t, s] = ids[(offsets[s] + t + 1) % n]
    return x, y, [(o + time_steps) % n for o in offsets]


def test_batches_match_reference_and_wrap():
    ids = np.random.default_rng(1).integers(0, 256, 97).astype(np.uint8)
    batcher = StreamBatcher(ids, 5, 8, np.random.default_rng(2))
    offsets = batcher.offsets.tolist()
    assert all(0 <= o < 97 for o in offsets)
    for _ in range(40):  # 40 * 8 steps > 3 passes over the 97-id corpus
        x, y = batcher.next_batch()
        rx, ry, offsets = reference_batch(ids, offsets, 8)
        assert x.shape == y.shape == (8, 5)
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
        assert batcher.offsets.tolist() == offsets


def test_wrap_at_the_end_of_the_corpus():
    ids = np.arange(10)
    batcher = StreamBatcher(ids, 2, 4, np.random.default_rng(0))
    batcher.set_state({"offsets": [8, 0], "rng": batcher.rng.bit_generator.state})
    x, y = batcher.next_batch()
    assert x[:, 0].tolist() == [8, 9, 0, 1] and y[:, 0].tolist() == [9, 0, 1, 2]
    assert x[:, 1].tolist() == [0, 1, 2, 3] and y[:, 1].tolist() == [1, 2, 3, 4]
    assert batcher.offsets.tolist() == [2, 4]


def test_reseat_rate_is_one_in_64():
    streams, rounds = 64, 2000
    batcher = StreamBatcher(np.arange(1_000_000), streams, 1, np.random.default_rng(3))
    moved_total = 0
    for _ in range(rounds):
        before = batcher.offsets.copy()
        moved = batcher.reseat()
        kept = np.setdiff1d(np.arange(streams), moved)
        np.testing.assert_array_equal(batcher.offsets[kept], before[kept])
        moved_total += moved.size
    trials = streams * rounds
    expected, sd = trials / 64, np.sqrt(trials * (1 / 64) * (63 / 64))
    assert abs(moved_total - expected) < 6 * sd
    assert batcher.offsets.min() >= 0 and batcher.offsets.max() < 1_000_000


def test_reseated_streams_get_new_offsets():
    batcher = StreamBatcher(np.zeros(10_000_000, np.uint8), 4096, 1, np.random.default_rng(4))
    before = batcher.offsets.copy()
    moved = batcher.reseat()
    assert moved.size > 0
    assert (batcher.offsets[moved] != before[moved]).all()  # a collision in 1e7 is negligible


def test_state_resumes_bit_for_bit():
    ids = np.random.default_rng(5).integers(0, 256, 500)
    batcher = StreamBatcher(ids, 16, 7, np.random.default_rng(6))
    for _ in range(10):
        batcher.next_batch()
        batcher.reseat()
    saved = json.loads(json.dumps(batcher.state()))  # must survive a plain-text checkpoint

    def run(b):
        out = []
        for _ in range(50):
            x, y = b.next_batch()
            out.append((x.copy(), y.copy(), b.reseat().copy()))
        return out

    original = run(batcher)
    resumed = StreamBatcher(ids, 16, 7, np.random.default_rng(999))
    resumed.set_state(saved)
    for (x1, y1, m1), (x2, y2, m2) in zip(original, run(resumed)):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(m1, m2)


def test_set_state_refuses_a_different_run():
    ids = np.arange(100)
    batcher = StreamBatcher(ids, 4, 3, np.random.default_rng(0))
    state = batcher.state()
    assert "streams" in error_of(StreamBatcher(ids, 5, 3, np.random.default_rng(0)).set_state, state)
    state["offsets"][0] = 100
    assert "corpus" in error_of(batcher.set_state, state)


def test_short_corpus_is_refused():
    message = error_of(StreamBatcher, np.arange(8), 2, 8, np.random.default_rng(0), path="tiny.txt")
    assert message.startswith("tiny.txt: ") and "time_steps=8" in message and "9" in message
    StreamBatcher(np.arange(9), 2, 8, np.random.default_rng(0))  # exactly time_steps + 1 is enough
