"""Vocabularies: a UTF-8 corpus as Unicode-character or word ids, instead of Darknet's bytes.

    bytes   Darknet's own: id = byte value, 256 ids (the default; nothing is built).
    chars   one id per Unicode character of the whole corpus, sorted by code point.
    words   one id per word (\\w+), per run of spaces/tabs, per newline and per punctuation
            character: joining a text's tokens reproduces it exactly. Sorted by frequency (ties:
            first seen). With `max_size` the rarest are dropped and map to one `<unk>` (the last id).

The vocabulary file (BACKUP/<cfg>.vocab, `darknetpy tokenize`'s PREFIX.vocab) is UTF-8 text:

    darknetpy-vocab 1 MODE SIZE         version 1; MODE bytes|chars|words; SIZE tokens follow
    TOKEN                               line i+2 = token i, with \\\\ \\n \\r \\t \\s (space) escaped
                                        and other unprintable characters as \\uXXXX / \\UXXXXXXXX

A `bytes` file has no token lines. The model's ids mean nothing without the file: train writes it
once, and resume, --weights, generate and valid read it back, never rebuild it.

The vocabulary travels with the weights: every checkpoint's .state.npz meta holds it, and
checkpoint.find_vocab looks for it by the weights, never only by the cfg's name.
"""
import os
import re
from collections import Counter

import numpy as np

from . import atomic
from . import data as datamod
from .errors import DarknetpyError
from .options import SEED

MODES = ("bytes", "chars", "words")
MAGIC, VERSION = "darknetpy-vocab", 1
UNK = "<unk>"  # never a words token of a text: "<", "unk" and ">" are three tokens
_WORD = re.compile(r"\w+|[^\S\n]+|\n|[^\w\s]")  # newline alone, so a Darknet .tokens line can hold every token
_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", " ": "\\s"}
_UNESCAPE = re.compile(r"\\(?:([\\nrts])|u([0-9a-fA-F]{4})|U([0-9a-fA-F]{8}))")


class Vocab:
    """Tokens (strings) and their ids; `size` is what the cfg's inputs and outputs must cover."""

    def __init__(self, mode, tokens=()):
        self.mode, self.tokens = mode, list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        self.size = 256 if mode == "bytes" else len(self.tokens)
        self.unk = self.index.get(UNK) if mode == "words" else None
        if mode == "chars":  # code points sorted, for vectorized encoding
            points = np.array([ord(t) for t in self.tokens], np.int64)
            self._order = np.argsort(points)
            self._points = points[self._order]

    # ---- building ----------------------------------------------------------------------------
    @classmethod
    def build(cls, text, mode, max_size=None):
        """The vocabulary of a whole text (str)."""
        if max_size is not None and mode != "words":
            raise DarknetpyError(f"--max-vocab caps a words vocabulary; drop it for --vocab {mode}")
        if mode == "chars":
            return cls("chars", [chr(c) for c in np.unique(_code_points(text))])
        counts = Counter(_WORD.findall(text))
        tokens = [t for t, _ in counts.most_common()]
        if max_size is not None and len(tokens) > max_size:
            tokens = tokens[:max_size - 1] + [UNK]
        return cls("words", tokens)

    # ---- encoding and decoding ---------------------------------------------------------------
    def encode(self, text, name, what="text"):
        """ids (smallest unsigned dtype) of a str; a token outside the vocabulary is one error line."""
        dtype = datamod.id_dtype(self.size)
        if self.mode == "chars":
            points = _code_points(text)
            where = np.searchsorted(self._points, points).clip(0, max(len(self._points) - 1, 0))
            known = self._points[where] == points if len(self._points) else np.zeros(len(points), bool)
            if not known.all():
                self._unknown(text, int(np.flatnonzero(~known)[0]), name, what)
            return self._order[where].astype(dtype)
        tokens = _WORD.findall(text)
        ids = [self.index.get(t, self.unk) for t in tokens]
        if None in ids:
            k = ids.index(None)
            self._unknown(text, sum(map(len, tokens[:k])), name, what, tokens[k])
        return np.array(ids, dtype)

    def _unknown(self, text, offset, name, what, token=None):
        token = text[offset] if token is None else token
        shown = f"{token!r} (U+{ord(token):04X})" if len(token) == 1 else repr(token)
        raise DarknetpyError(f"{what}: {shown} at character offset {offset} is not in the {self.mode} "
                             f"vocabulary ({self.size} tokens); use only characters the network was "
                             "trained on", name)

    def encode_bytes(self, raw, name, what="text"):
        """ids of UTF-8 bytes (a bytes object or uint8 array); bytes mode: the bytes themselves."""
        if self.mode == "bytes":
            return np.frombuffer(bytes(raw), np.uint8)
        return self.encode(decode_utf8(raw, name), name, what)

    def pieces(self):
        """The UTF-8 bytes of each id's token, for output joined with nothing."""
        if self.mode == "bytes":
            return [bytes([i]) for i in range(256)]
        return [t.encode("utf-8") for t in self.tokens]

    def decode(self, ids):
        """The text of ids, tokens joined with nothing."""
        if self.mode == "bytes":
            return bytes(np.asarray(ids, np.uint8)).decode("utf-8", "replace")
        return "".join(self.tokens[i] for i in np.asarray(ids).tolist())

    def space_ids(self):
        """Ids that end a word, for valid's word perplexity (Darknet: ' ', '\\n', '\\t')."""
        if self.mode == "bytes":
            return (32, 10, 9)
        return tuple(i for i, t in enumerate(self.tokens) if t and not t.strip(" \n\t"))

    # ---- the file ------------------------------------------------------------------------------
    def to_text(self):
        lines = [f"{MAGIC} {VERSION} {self.mode} {self.size}"]
        if self.mode != "bytes":
            lines += [_escape(t) for t in self.tokens]
        return "\n".join(lines) + "\n"

    def save(self, path):
        try:
            atomic.write(path, self.to_text().encode("utf-8"))
        except OSError as e:
            raise DarknetpyError(f"cannot write the vocabulary ({e.strerror or e})", path) from None

    @classmethod
    def load(cls, path):
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except OSError as e:
            raise DarknetpyError(f"cannot read the vocabulary ({e.strerror or e}); check the path", path) from None
        except UnicodeDecodeError as e:
            raise DarknetpyError(f"not a vocabulary file (not UTF-8 at byte offset {e.start})", path) from None
        return cls.from_text(text, path)

    @classmethod
    def from_text(cls, text, path):
        """The vocabulary of a .vocab file's text; `path` names it in errors."""
        lines = text.split("\n")
        head = lines[0].split(" ")
        if len(head) != 4 or head[0] != MAGIC or head[2] not in MODES or not head[3].isdigit():
            raise DarknetpyError(f"not a darknetpy vocabulary file: its first line must be "
                                 f"'{MAGIC} {VERSION} chars|words|bytes SIZE'", path, 1)
        if head[1] != str(VERSION):
            raise DarknetpyError(f"vocabulary file version {head[1]}; this darknetpy reads version {VERSION}", path, 1)
        mode, size = head[2], int(head[3])
        tokens = [_unescape(t) for t in lines[1:-1]] if mode != "bytes" else []
        if mode != "bytes" and (len(tokens) != size or lines[-1] != ""):
            raise DarknetpyError(f"the header says {size} tokens but the file has {len(lines) - 1} lines; "
                                 "the file is truncated or edited, rebuild it", path)
        if mode == "chars" and any(len(t) != 1 for t in tokens):
            line = next(i for i, t in enumerate(tokens) if len(t) != 1) + 2
            raise DarknetpyError("a chars vocabulary holds one character per line", path, line)
        if len(set(tokens)) != len(tokens):
            raise DarknetpyError("a token appears twice; rebuild the vocabulary", path)
        return cls(mode, tokens)


def _code_points(text):
    return np.frombuffer(text.encode("utf-32-le"), np.uint32)


def _escape(token):
    return "".join(_ESCAPES.get(c) or (c if c.isprintable() else
                                       f"\\u{ord(c):04x}" if ord(c) < 1 << 16 else f"\\U{ord(c):08x}")
                   for c in token)


def _unescape(line):
    def one(m):
        if m.group(1):
            return {"\\": "\\", "n": "\n", "r": "\r", "t": "\t", "s": " "}[m.group(1)]
        return chr(int(m.group(2) or m.group(3), 16))
    return _UNESCAPE.sub(one, line)


def decode_utf8(raw, name):
    """A corpus's text; bytes that are not UTF-8 are one error line naming the byte offset."""
    raw = bytes(raw)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DarknetpyError(f"not valid UTF-8 at byte offset {e.start} (byte 0x{raw[e.start]:02x}); "
                             "convert the corpus to UTF-8 (iconv -t UTF-8) or train with --vocab bytes", name) from None


def read_text(path):
    """A corpus (file, folder or "-") as text, each folder file checked as UTF-8 on its own."""
    files = datamod.corpus_files(path)
    if path == "-" or len(files) == 1 and files[0][0] == path:
        return decode_utf8(datamod.read_raw(path), "<stdin>" if path == "-" else path)
    return datamod.FILE_SEPARATOR.decode().join(decode_utf8(datamod.read_raw(f), f) for f, _ in files)


# ---- the cfg is the source of truth ------------------------------------------------------------
def check_fits(vocab, net, cfg_path):
    """Refuse a network whose inputs or last layer's outputs cannot hold every id of the vocabulary."""
    if vocab.mode == "bytes":
        return
    if net.inputs < vocab.size:
        raise net.net_section.error(f"inputs={net.inputs} but the {vocab.mode} vocabulary has {vocab.size} tokens; "
                         f"set inputs={vocab.size} here", "inputs")
    if net.outputs < vocab.size:
        sized = [s for s in net.sections if "output" in s.options] or net.sections
        raise DarknetpyError(f"the last layer has {net.outputs} outputs but the {vocab.mode} vocabulary has "
                             f"{vocab.size} tokens; set output={vocab.size} in this [{sized[-1].type}]",
                             cfg_path, sized[-1].line)


def resolve(vocab, net):
    """A Vocab from a Vocab, a .vocab path or None (then the network's own, `net.vocab`)."""
    if vocab is None or isinstance(vocab, Vocab):
        return vocab or net.vocab
    found = Vocab.load(vocab)
    check_fits(found, net, net.cfg_path)
    return found


def encode_for_valid(vocab, text_path, seed):
    """(ids, seed_ids, word-ending ids) of `valid`'s TEXT (a file or "-") and --seed bytes."""
    name = "<stdin>" if text_path == "-" else text_path
    return (vocab.encode(read_text(text_path), name), vocab.encode_bytes(seed, "--seed", "seed"),
            vocab.space_ids())


def held_out(path, mode="bytes", frac=datamod.VALID_FRAC):
    """The UTF-8 bytes of the part of a corpus (file or folder) that train holds out: its last
    int(n * frac) ids (data.split_corpus) of `mode`, the text for `darknetpy valid` to score."""
    if mode == "bytes":
        ids = datamod.load_corpus(path, 256)
        return ids[len(ids) - int(len(ids) * frac):].tobytes()
    text = read_text(path)
    pieces = list(text) if mode == "chars" else _WORD.findall(text)
    return "".join(pieces[len(pieces) - int(len(pieces) * frac):]).encode("utf-8")


# ---- training's corpus -------------------------------------------------------------------------
def prepare_corpus(cfg_path, net, data, mode=None, tokenized=False, weights=None, max_size=None, find=None):
    """(ids, vocab) for train: the vocabulary of --weights' run if they have one (never rebuilt),
    else --vocab FILE, else one built from the whole corpus (chars/words), else bytes. vocab is
    None for --tokenized corpora. Refuses ids the cfg's inputs or outputs cannot hold. `find`
    is checkpoint.find_vocab, which looks for the vocabulary of the run that made `weights`."""
    if tokenized:
        if mode not in (None, "bytes"):
            raise DarknetpyError("--tokenized corpora are already ids (their .vocab came from `darknetpy "
                                 "tokenize`); drop --vocab")
        ids, vocab = datamod.load_corpus(data, net.inputs, True), None
    else:
        given = mode if mode not in MODES + (None,) else None
        vocab = find(cfg_path, weights, given, net, building=mode in ("chars", "words")) if weights else None
        if vocab is not None:
            if mode in MODES and mode != vocab.mode:
                raise DarknetpyError(f"{weights} was trained with the {vocab.mode} vocabulary saved with it, "
                                     f"not --vocab {mode}; drop --vocab or start afresh without --weights")
        elif given:
            vocab = Vocab.load(given)
        else:
            vocab = Vocab("bytes") if mode in (None, "bytes") else None
        text = read_text(data) if vocab is None or vocab.mode != "bytes" else None
        vocab = vocab or Vocab.build(text, mode, max_size)
        check_fits(vocab, net, cfg_path)
        if vocab.mode == "bytes":
            ids = datamod.load_corpus(data, net.inputs)
        else:
            ids = vocab.encode(text, data)
            if not ids.size:
                raise DarknetpyError("the corpus is empty; give a text file with at least a few characters", data)
    top = datamod.max_id(ids) if vocab is None or net.outputs < vocab.size else -1
    if top >= net.outputs:
        offset = datamod.first_at_least(ids, net.outputs)
        raise DarknetpyError(f"id {int(ids[offset])} at position {offset} is a target the network's "
                             f"{net.outputs} outputs cannot predict; give the last layer "
                             f"{top + 1} outputs or more", data)
    return ids, vocab


def seed_ids(vocab, net):
    """The ids of the validation seed, options.SEED (none when it cannot be encoded, or for tokenized ids)."""
    if vocab is None:
        return []
    if vocab.mode == "bytes":
        return list(SEED) if net.inputs > 10 else []
    return [vocab.index[c] for c in SEED.decode()] if all(c in vocab.index for c in SEED.decode()) else []


def record(vocab, data, backup_file):
    """The run record's `corpus` entry: the vocabulary and the files with their sizes."""
    files = [{"path": os.path.abspath(p) if p != "-" else p, "bytes": size} for p, size in datamod.corpus_files(data)]
    entry = {"files": files, "separator": datamod.FILE_SEPARATOR.decode() if len(files) > 1 else None}
    entry["vocab"] = {"mode": vocab.mode, "size": vocab.size, "file": os.path.abspath(backup_file)} if vocab else None
    return entry


# ---- darknetpy tokenize ------------------------------------------------------------------------
def tokenize(paths, mode, prefix, max_size=None, ids_per_line=32):
    """Write PREFIX.ids (Darknet's -tokenized input), PREFIX.tokens (Darknet's -tokens file: line i
    is token i, a newline as <NEWLINE>) and PREFIX.vocab, creating PREFIX's folder if missing;
    returns the vocabulary."""
    folder = os.path.dirname(prefix)
    try:
        os.makedirs(folder or ".", exist_ok=True)
    except OSError as e:
        raise DarknetpyError(f"cannot create the output folder ({e.strerror or e}); give another -o", folder) from None
    text = datamod.FILE_SEPARATOR.decode().join(read_text(p) for p in paths)
    vocab = Vocab.build(text, mode, max_size)
    ids = vocab.encode(text, paths[0])
    rows = [" ".join(map(str, ids[i:i + ids_per_line].tolist())) for i in range(0, len(ids), ids_per_line)]
    tokens = ["<NEWLINE>" if t == "\n" else t for t in vocab.tokens]
    for suffix, content in ((".ids", "\n".join(rows) + "\n"), (".tokens", "\n".join(tokens) + "\n"),
                            (".vocab", vocab.to_text())):
        try:
            with open(prefix + suffix, "w", encoding="utf-8", newline="") as f:
                f.write(content)
        except OSError as e:
            raise DarknetpyError(f"cannot write ({e.strerror or e})", prefix + suffix) from None
    return vocab, len(ids)
