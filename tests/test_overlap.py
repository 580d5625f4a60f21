"""`darknetpy overlap` and darknetpy.overlap: the longest substring a sample shares with a corpus
and the share of its windows found there, against a brute force over every substring."""
import numpy as np
import pytest

from conftest import assert_one_line_error, run_cli
from darknetpy.overlap import measure, one_line


def brute_force(sample, corpus, window):
    """(longest, first start of a longest, windows, found), by testing every substring with `in`."""
    longest, at = 0, 0
    for i in range(len(sample)):
        for j in range(i + 1, len(sample) + 1):
            if j - i > longest and sample[i:j] in corpus:
                longest, at = j - i, i
    starts = range(len(sample) - window + 1)
    return longest, at, len(starts), sum(sample[i:i + window] in corpus for i in starts)


def check(sample, corpus, window):
    got = measure(sample, corpus, window)
    longest, at, windows, found = brute_force(sample, corpus, window)
    assert (got.longest, got.at, got.windows, got.found) == (longest, at, windows, found), (sample, corpus, window)
    assert got.text == sample[at:at + longest] and got.text in corpus
    assert got.share == (found / windows if windows else None)


def random_text(rng, n, alphabet):
    return bytes(rng.choice(np.frombuffer(alphabet, np.uint8), n))


@pytest.mark.parametrize("alphabet", [b"ab", b"abcd", bytes(range(256))])
def test_random_texts_match_the_brute_force(alphabet):
    rng = np.random.default_rng(len(alphabet))
    for _ in range(60):
        corpus = random_text(rng, int(rng.integers(0, 80)), alphabet)
        sample = random_text(rng, int(rng.integers(0, 40)), alphabet)
        if corpus and rng.random() < 0.5:  # splice corpus pieces into the sample: long matches
            i = int(rng.integers(0, len(corpus)))
            cut = int(rng.integers(0, len(sample) + 1))
            sample = sample[:cut] + corpus[i:i + int(rng.integers(1, 30))] + sample[cut:]
        check(sample, corpus, int(rng.integers(1, 8)))


@pytest.mark.parametrize("sample, corpus, window", [
    (b"abc", b"xxabcxx", 20),                 # sample shorter than the window: no windows
    (b"", b"abc", 3),                         # empty sample
    (b"abc", b"", 1),                         # empty corpus: nothing shared
    (b"abcabcabcabc", b"abcabc", 3),          # repeated text
    (b"aaaaaaaaaa", b"aaaa", 2),              # one byte repeated
    (b"xyzxyz", b"abcdef", 2),                # no overlap at all
    (b"the quick brown fox", b"the quick brown fox", 5),  # the sample is the corpus
    (b"\xff\x00\xfe\n\xff\x00", b"\x00\xfe\n\xff", 2),     # any bytes
])
def test_edge_cases_match_the_brute_force(sample, corpus, window):
    check(sample, corpus, window)


def test_the_sample_being_the_corpus_is_all_copied():
    text = bytes(np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8))
    got = measure(text, text, 20)
    assert (got.longest, got.at, got.text, got.windows, got.found) == (300, 0, text, 281, 281)


def test_one_line_shows_any_bytes_on_one_line():
    assert one_line("Être\n\t\"\\\r".encode() + b"\x01\xff") == '"Être\\n\\t\\"\\\\\\r\\u0001\\xff"'


def test_the_command(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"First Citizen:\nBefore we proceed any further, hear me speak.\n")
    r = run_cli("overlap", "-", corpus, "--window", 10, stdin=b"Citizen:\nBefore we go, zzzzzzzzzz")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == [
        'longest shared substring: 19 bytes at sample byte 0: "Citizen:\\nBefore we "',
        "10-byte windows found in the corpus: 10 of 24 (41.7%)"]
    sample = tmp_path / "sample.txt"
    sample.write_bytes(b"abc")
    r = run_cli("overlap", sample, corpus)
    assert r.returncode == 0 and r.stdout.decode().splitlines()[1] == (
        "20-byte windows found in the corpus: none to check (the sample has 3 bytes)")
    # --valid-frac leaves out the corpus's tail, as train held it out: the last 6 of its 61 bytes, "peak.\n", go
    sample.write_bytes(b"me speak.")
    assert b": 9 bytes" in run_cli("overlap", sample, corpus).stdout
    assert b": 4 bytes" in run_cli("overlap", sample, corpus, "--valid-frac", 0.1).stdout  # "me s"


def test_missing_files_are_one_line(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(b"text")
    assert_one_line_error(run_cli("overlap", tmp_path / "nope.txt", corpus), "nope.txt", "cannot read the sample")
    assert_one_line_error(run_cli("overlap", corpus, tmp_path / "nope.txt"), "nope.txt", "cannot read the corpus")
