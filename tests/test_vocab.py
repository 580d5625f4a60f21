"""Vocabularies (chars, words, bytes), the .vocab file, `tokenize`, folder corpora and big corpora.

The multilingual text (tests/data/multilingual.txt) has Russian, Greek and Korean with punctuation,
tabs, double spaces, a backslash, trailing spaces and no final newline.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from darknetpy import data as datamod
from darknetpy.cli import main
from darknetpy.errors import DarknetpyError
from darknetpy.network import Network
from darknetpy.vocab import UNK, Vocab, check_fits
from conftest import assert_one_line_error, run_cli

TEXT_PATH = os.path.join(os.path.dirname(__file__), "data", "multilingual.txt")
TEXT = open(TEXT_PATH, encoding="utf-8").read()


def write_cfg(tmp_path, inputs, outputs=None, name="tiny", hidden=16, max_batches=4):
    path = tmp_path / f"{name}.cfg"
    path.write_text(f"[net]\ninputs={inputs}\nbatch=4\nsubdivisions=1\ntime_steps=8\nmax_batches={max_batches}\n"
                    f"learning_rate=0.05\nmomentum=0.9\ndecay=0.0005\n\n[lstm]\noutput={hidden}\n\n"
                    f"[connected]\noutput={outputs or inputs}\nactivation=linear\n\n[softmax]\n")
    return str(path)


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output + str(result.exception)
    return result


def one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("darknetpy: "), lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


# ---- round trips text -> ids -> text ---------------------------------------------------------------

def test_chars_round_trip_and_vocabulary():
    vocab = Vocab.build(TEXT, "chars")
    assert vocab.tokens == sorted(set(TEXT))            # every character once, by code point
    ids = vocab.encode(TEXT, "t")
    assert len(ids) == len(TEXT) and ids.dtype == np.uint8  # 1 id per character; < 256 tokens
    assert [vocab.tokens[i] for i in ids] == list(TEXT)
    assert vocab.decode(ids) == TEXT


def test_words_tokens_by_hand_and_round_trip():
    vocab = Vocab.build("Привет,  мир!\n\tΚαλημέρα; 안녕\n", "words")
    ids = vocab.encode("Привет,  мир!\n\tΚαλημέρα; 안녕\n", "t")
    assert [vocab.tokens[i] for i in ids] == ["Привет", ",", "  ", "мир", "!", "\n", "\t", "Καλημέρα",
                                              ";", " ", "안녕", "\n"]
    full = Vocab.build(TEXT, "words")
    assert full.decode(full.encode(TEXT, "t")) == TEXT
    assert all("\n" not in t or t == "\n" for t in full.tokens)  # each token fits a Darknet .tokens line


def test_bytes_round_trip(tmp_path):
    path = tmp_path / "m.txt"
    path.write_bytes(open(TEXT_PATH, "rb").read())
    ids = datamod.load_corpus(str(path), 256)
    assert isinstance(ids, np.memmap)                   # mapped, not read
    assert ids.tobytes().decode("utf-8") == TEXT


def test_words_cap_maps_the_rarest_to_unk():
    text = "a a a b b c d\n"   # counts: ' ' 6, a 3, b 2, c/d/newline 1
    vocab = Vocab.build(text, "words", max_size=4)
    assert vocab.tokens == [" ", "a", "b", UNK]
    ids = vocab.encode(text, "t")
    assert vocab.decode(ids) == "a a a b b <unk> <unk><unk>"


# ---- the file --------------------------------------------------------------------------------------

def test_vocab_file_is_versioned_readable_and_round_trips(tmp_path):
    vocab = Vocab("words", ["\n", "\\", " ", "\t", "ab c", "\x00", "ж"])
    path = str(tmp_path / "v.vocab")
    vocab.save(path)
    lines = open(path, encoding="utf-8").read().split("\n")
    assert lines == ["darknetpy-vocab 1 words 7", "\\n", "\\\\", "\\s", "\\t", "ab\\sc", "\\u0000", "ж", ""]
    assert Vocab.load(path).tokens == vocab.tokens
    chars = Vocab.build(TEXT, "chars")
    chars.save(path)
    assert Vocab.load(path).tokens == chars.tokens


@pytest.mark.parametrize("content, fragment", [
    ("darknetpy-vocab 2 chars 1\na\n", "version 2"),
    ("hello\n", "first line"),
    ("darknetpy-vocab 1 chars 3\na\nb\n", "3 tokens"),
    ("darknetpy-vocab 1 chars 2\na\na\n", "twice"),
])
def test_bad_vocab_file(tmp_path, content, fragment):
    path = tmp_path / "v.vocab"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DarknetpyError) as e:
        Vocab.load(str(path))
    assert str(e.value).startswith(str(path)) and fragment in str(e.value)


# ---- errors ----------------------------------------------------------------------------------------

def test_invalid_utf8_names_the_byte_offset(tmp_path):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes("ёж".encode() + b"\xff" + b"x" * 100)   # ё and ж are 2 bytes each
    cfg = write_cfg(tmp_path, 64)
    one_line_error(run("train", cfg, corpus, "--vocab", "chars", "--backup", tmp_path / "b"),
                   f"{corpus}:", "byte offset 4", "UTF-8")


def test_cfg_too_small_for_the_vocabulary_names_the_line(tmp_path):
    size = len(set(TEXT))
    cfg = write_cfg(tmp_path, 100)
    one_line_error(run("train", cfg, TEXT_PATH, "--vocab", "chars", "--backup", tmp_path / "b"),
                   f"{cfg}:2:", "inputs=100", f"{size} tokens", f"set inputs={size}")
    cfg = write_cfg(tmp_path, 200, outputs=150, name="narrow")
    one_line_error(run("train", cfg, TEXT_PATH, "--vocab", "chars", "--backup", tmp_path / "b"),
                   f"{cfg}:14:", "150 outputs", f"output={size}", "[connected]")


def test_check_fits_accepts_a_big_enough_cfg(tmp_path):
    check_fits(Vocab.build(TEXT, "chars"), Network(write_cfg(tmp_path, 178)), "x")  # exactly the size


# ---- train, generate, valid with the saved vocabulary ---------------------------------------------

def test_train_chars_then_generate_valid_resume(tmp_path):
    size = len(set(TEXT))
    cfg = write_cfg(tmp_path, size)
    backup = tmp_path / "b"
    ok("train", cfg, TEXT_PATH, "--vocab", "chars", "--backup", backup, "--srand", 1, "--valid-frac", 0.2)
    vocab_file = backup / "tiny.vocab"
    assert vocab_file.read_text(encoding="utf-8").split("\n")[0] == f"darknetpy-vocab 1 chars {size}"
    record = yaml.safe_load((backup / "tiny.yaml").read_text())
    assert record["options"]["vocab"] == "chars"
    assert record["corpus"]["files"] == [{"path": TEXT_PATH, "bytes": os.path.getsize(TEXT_PATH)}]

    weights = backup / "tiny_final.weights"
    out = ok("generate", cfg, weights, "--seed", "Это", "--len", 50, "--srand", 3).stdout_bytes
    text = out.decode("utf-8")                          # valid UTF-8: characters joined with nothing
    assert text.startswith("Это") and text.endswith("\n") and len(text) == len("Это") + 50 + 1
    assert set(text[:-1]) <= set(TEXT)
    one_line_error(run("generate", cfg, weights, "--seed", "Это€"), "'€'", "offset 3")

    held = tmp_path / "held.txt"
    held.write_text("Утром шёл дождь; 아침에는", encoding="utf-8")
    last = ok("valid", cfg, weights, held).stdout.strip().splitlines()[-1]
    assert last.startswith(f"{len('Утром шёл дождь; 아침에는') - 1} BPC: ")  # counted in characters
    held.write_text("Утром Ω", encoding="utf-8")        # Ω is not in the text
    one_line_error(run("valid", cfg, weights, held), "'Ω'", "offset 6")

    # --weights and --resume use the saved vocabulary, never rebuild it: a corpus with a new
    # character is refused instead of silently getting other ids
    other = tmp_path / "other.txt"
    other.write_text(TEXT + "€", encoding="utf-8")
    one_line_error(run("train", cfg, other, "--weights", weights, "--backup", backup, "--max-batches", 6),
                   "'€'", "not in the chars vocabulary")
    one_line_error(run("train", cfg, TEXT_PATH, "--weights", weights, "--vocab", "words", "--backup", backup),
                   "chars vocabulary", "--vocab words")
    ok("train", "--resume", backup / "tiny.yaml", "--max-batches", 6)
    assert vocab_file.read_text(encoding="utf-8").split("\n")[0] == f"darknetpy-vocab 1 chars {size}"


def test_train_words_capped_and_valid_says_per_token(tmp_path):
    cfg = write_cfg(tmp_path, 50)
    backup = tmp_path / "b"
    ok("train", cfg, TEXT_PATH, "--vocab", "words", "--max-vocab", 50, "--backup", backup, "--srand", 1)
    vocab = Vocab.load(str(backup / "tiny.vocab"))
    assert vocab.size == 50 and vocab.tokens[-1] == UNK
    result = ok("valid", cfg, backup / "tiny_final.weights", TEXT_PATH)
    assert "bits per token" in result.stderr
    out = ok("generate", cfg, backup / "tiny_final.weights", "--seed", "Это", "--len", 20, "--srand", 2).stdout
    assert out.startswith("Это")


def test_bytes_default_writes_a_bytes_vocabulary_and_output_is_unchanged(tmp_path):
    cfg = write_cfg(tmp_path, 256)
    ok("train", cfg, TEXT_PATH, "--backup", tmp_path / "b", "--srand", 1)
    assert (tmp_path / "b" / "tiny.vocab").read_text() == "darknetpy-vocab 1 bytes 256\n"
    weights = tmp_path / "b" / "tiny_final.weights"
    found = ok("generate", cfg, weights, "--srand", 5, "--len", 40).stdout_bytes
    os.unlink(tmp_path / "b" / "tiny.vocab")            # without a vocabulary: Darknet's bytes
    assert ok("generate", cfg, weights, "--srand", 5, "--len", 40).stdout_bytes == found


# ---- tokenize ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["chars", "words"])
def test_tokenize_writes_darknet_files(tmp_path, mode):
    prefix = str(tmp_path / "m")
    out = ok("tokenize", TEXT_PATH, "--vocab", mode, "-o", prefix).stdout
    ids = [int(t) for t in open(prefix + ".ids").read().split()]
    tokens = open(prefix + ".tokens", "rb").read().decode("utf-8").split("\n")[:-1]
    tokens = ["\n" if t == "<NEWLINE>" else t for t in tokens]   # Darknet's read_tokens
    assert "".join(tokens[i] for i in ids) == TEXT
    size = len(tokens)
    assert f"inputs={size}" in out.splitlines()
    assert Vocab.load(prefix + ".vocab").tokens == tokens
    # the ids train as Darknet's -tokenized input, as before
    cfg = write_cfg(tmp_path, size)
    ok("train", cfg, prefix + ".ids", "--tokenized", "--backup", tmp_path / "b", "--srand", 1)
    assert not (tmp_path / "b" / "tiny.vocab").exists()
    gen = ok("generate", cfg, tmp_path / "b" / "tiny_final.weights", "--tokens", prefix + ".tokens",
             "--seed", "", "--len", 5, "--srand", 1).stdout
    assert gen.count(" ") >= 6                          # Darknet's token + space, unchanged
    # valid needs the ids' vocabulary: the state says they are tokenized, so never bytes
    weights = tmp_path / "b" / "tiny_final.weights"
    one_line_error(run("valid", cfg, weights, TEXT_PATH), "--tokenized ids", "--vocab FILE")
    assert ok("valid", cfg, weights, TEXT_PATH, "--vocab", prefix + ".vocab").stdout.startswith(f"{len(ids) - 1} BPC: ")


def test_train_takes_a_vocab_file_from_tokenize(tmp_path):
    prefix = str(tmp_path / "m")
    ok("tokenize", TEXT_PATH, "--vocab", "chars", "-o", prefix)
    held = tmp_path / "held.txt"
    held.write_text(TEXT[:200], encoding="utf-8")         # has fewer characters than the whole text
    cfg = write_cfg(tmp_path, 256)
    ok("train", cfg, held, "--vocab", prefix + ".vocab", "--backup", tmp_path / "b", "--srand", 1)
    assert (tmp_path / "b" / "tiny.vocab").read_text(encoding="utf-8") == open(prefix + ".vocab", encoding="utf-8").read()


def test_tokenize_creates_the_output_folder(tmp_path):
    """`-o newdir/sub/m` used to fail with "No such file or directory"; a file in the folder's place
    is one line."""
    prefix = tmp_path / "newdir" / "sub" / "m"
    r = run_cli("tokenize", TEXT_PATH, "-o", prefix)
    assert r.returncode == 0, r.stderr.decode()
    assert Vocab.load(str(prefix) + ".vocab").tokens == sorted(set(TEXT))
    (tmp_path / "file").write_text("")
    assert_one_line_error(run_cli("tokenize", TEXT_PATH, "-o", tmp_path / "file" / "m"),
                          f"{tmp_path / 'file'}: cannot create the output folder")

# ---- folders ----------------------------------------------------------------------------------------

def test_folder_corpus_sorted_with_separator_and_recorded(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "b.txt").write_bytes(b"second file " * 100)
    (folder / "a.txt").write_bytes(b"first file " * 100)
    (folder / "sub").mkdir()                            # not a regular file: skipped
    ids = datamod.load_corpus(str(folder), 256)
    assert ids.tobytes() == b"first file " * 100 + b"\n" + b"second file " * 100
    cfg = write_cfg(tmp_path, 256)
    ok("train", cfg, folder, "--backup", tmp_path / "b", "--srand", 1, "--valid-frac", 0.1)
    record = yaml.safe_load((tmp_path / "b" / "tiny.yaml").read_text())
    assert record["corpus"]["files"] == [{"path": str(folder / "a.txt"), "bytes": 1100},
                                         {"path": str(folder / "b.txt"), "bytes": 1200}]
    assert record["corpus"]["separator"] == "\n"
    train, valid = datamod.split_corpus(ids, 0.1)
    assert valid.tobytes() == (b"second file " * 100)[-len(valid):]   # the end of the last file


def test_folder_byte_corpus_is_mapped_and_names_the_file_of_a_bad_byte(tmp_path):
    """A folder's bytes are a read-only map of its joined files (not a copy in memory), and a byte
    outside `inputs` is reported in its own file at its offset there."""
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"abc")
    (folder / "b.txt").write_bytes(b"de\xfff")
    ids = datamod.load_corpus(str(folder), 256)
    assert isinstance(ids, np.memmap) and not ids.flags.writeable and ids.tobytes() == b"abc\nde\xfff"
    one_line_error(run("train", write_cfg(tmp_path, 128), folder, "--backup", tmp_path / "b"),
                   f"{folder / 'b.txt'}:", "byte 0xff at offset 2 is outside inputs=128")


def test_folder_chars_checks_each_file(tmp_path):
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text("ok", encoding="utf-8")
    (folder / "b.txt").write_bytes(b"ab\xc3")            # a truncated 2-byte sequence at offset 2
    one_line_error(run("train", write_cfg(tmp_path, 64), folder, "--vocab", "chars", "--backup", tmp_path / "b"),
                   f"{folder / 'b.txt'}:", "byte offset 2")


# ---- big corpora -------------------------------------------------------------------------------------

def test_split_and_batcher_do_not_copy_the_mapped_corpus(tmp_path):
    path = tmp_path / "c.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes())
    ids = datamod.load_corpus(str(path), 256)
    train, valid = datamod.split_corpus(ids, 0.05)
    batcher = datamod.StreamBatcher(train, 4, 8, np.random.default_rng(1))
    assert np.shares_memory(train, ids) and np.shares_memory(valid, ids) and np.shares_memory(batcher.ids, ids)
    assert datamod.sha256(ids, 1000) == __import__("hashlib").sha256(path.read_bytes()[:1000]).hexdigest()


def test_batcher_reads_a_mapped_corpus_as_it_indexes_an_array(tmp_path):
    path = tmp_path / "c.bin"
    content = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)
    path.write_bytes(content.tobytes())
    mapped, _ = datamod.split_corpus(datamod.load_corpus(str(path), 256), 0.1)
    plain = content[:len(mapped)]
    a = datamod.StreamBatcher(mapped, 6, 50, np.random.default_rng(4))
    b = datamod.StreamBatcher(plain, 6, 50, np.random.default_rng(4))
    for _ in range(300):                               # 300 x 50 steps: every stream wraps
        (xa, ya), (xb, yb) = a.next_batch(), b.next_batch()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        assert np.array_equal(a.reseat(), b.reseat())
    tail = datamod.split_corpus(datamod.load_corpus(str(path), 256), 0.1)[1]
    assert datamod.read_ids(tail, 3, 10).tolist() == content[len(mapped) + 3:len(mapped) + 10].tolist()


def test_held_out_estimate_is_bounded_unless_valid_full(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(np.random.default_rng(0).integers(97, 123, 100_000, dtype=np.uint8).tobytes())
    cfg = write_cfg(tmp_path, 256, max_batches=1)
    args = ["train", cfg, corpus, "--valid-frac", 0.8, "--srand", 1]
    bounded = ok(*args, "--backup", tmp_path / "a").stderr
    assert f"({datamod.VALID_SLICE - 1} chars" in bounded    # 65536 ids: 65535 scored
    full = ok(*args, "--backup", tmp_path / "b", "--valid-full").stderr
    assert "(79999 chars" in full                          # all 80000 held-out ids


# The peak RSS of the run itself: a child's ru_maxrss starts at its parent's RSS at the fork (the
# test process, which has just written the corpus), so the peak (VmHWM) is reset first (Linux).
RSS_SCRIPT = textwrap.dedent("""
    import sys
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    from darknetpy import train
    train.train(sys.argv[1], sys.argv[2], backup=sys.argv[3], srand=1, max_batches=3, valid_every=0,
                save_every=0, progress=False)
    with open("/proc/self/status") as f:
        print(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024)
""")


def peak_rss(tmp_path, cfg, size, name, files=1):
    """Peak RSS of a short training run on `size` generated printable bytes, in one file or split
    over a folder of `files` files."""
    folder = tmp_path / name
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(files):
        with open(folder / f"{k}.txt", "wb") as f:      # in 4 MB pieces
            part = size // files
            for start in range(0, part, 1 << 22):
                f.write(rng.integers(32, 127, min(1 << 22, part - start), dtype=np.uint8).tobytes())
    corpus = folder if files > 1 else folder / "0.txt"
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, cfg, str(corpus), str(tmp_path / f"{name}-backup")],
                         capture_output=True, text=True, check=True)
    shutil.rmtree(folder)
    return int(out.stdout.split()[-1])


def test_big_byte_corpus_is_not_resident(tmp_path):
    """A 60 MB corpus adds less than 10% of its size to peak RSS over a 1 MB one (reading it into
    memory, as before, added twice its size)."""
    cfg = write_cfg(tmp_path, 256)
    small = peak_rss(tmp_path, cfg, 1 << 20, "small")
    big = peak_rss(tmp_path, cfg, 60 << 20, "big")
    assert big - small < 6 << 20, (small, big)


def test_big_folder_corpus_is_not_resident(tmp_path):
    """The same for a folder of three 20 MB files: joined into a mapped temporary file, not memory."""
    cfg = write_cfg(tmp_path, 256)
    small = peak_rss(tmp_path, cfg, 1 << 20, "small")
    big = peak_rss(tmp_path, cfg, 60 << 20, "big", files=3)
    assert big - small < 6 << 20, (small, big)
