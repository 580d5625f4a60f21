"""Byte and tokenized corpora, the train/valid split, and Darknet's per-stream batching.

A corpus is a 1-D array of integer ids in the smallest unsigned dtype: one id per byte, or
(Darknet's `-tokenized`) one id per whitespace-separated integer, or (vocab.py) one per character
or word. DATA is a file, "-" (stdin) or a folder: its regular files in name order, joined with
FILE_SEPARATOR (into a temporary file). A byte corpus is memory-mapped, never read whole.
Training walks `streams` independent offsets through it, as Darknet's train_char_rnn/get_rnn_data
do, producing time-major (time_steps, streams) batches.
"""
import atexit
import contextlib
import hashlib
import mmap
import os
import re
import sys
import tempfile

import numpy as np

from .errors import DarknetpyError

VALID_FRAC = 0.05
# The held-out estimate during (and at the end of) training scores at most the first VALID_SLICE
# ids of the held-out part: 2^16 characters put its standard error near 0.01 bpc (the per-character
# loss has a spread of about 2-3 bits), and keep each estimate's cost bounded whatever the corpus size.
VALID_SLICE = 1 << 16
RESEAT_ODDS = 64  # Darknet: `if (rand() % 64 == 0)` re-seats a stream after each datum

_WHITESPACE = b" \t\n\r\v\f"  # C isspace(), which Darknet's fscanf("%d") skips, and bytes.split()
_IS_SPACE = np.zeros(256, bool)
_IS_SPACE[list(_WHITESPACE)] = True
_IS_PLAIN = _IS_SPACE.copy()  # bytes of a corpus numpy's text parser reads exactly
_IS_PLAIN[list(b"0123456789")] = True
_INTEGER = re.compile(rb"[+-]?[0-9]+")


FILE_SEPARATOR = b"\n"  # between the files of a folder corpus (tokenized: plain whitespace)
CHUNK = 1 << 20         # ids per read when scanning a corpus (1 M: a few MB of memory at most)


def id_dtype(n):
    """The smallest unsigned dtype that holds ids 0..n-1."""
    return np.uint8 if n <= 1 << 8 else np.uint16 if n <= 1 << 16 else np.uint32


def corpus_files(path):
    """[(path, size)] of a corpus: the file itself, or every regular file of a folder, sorted by name."""
    if path == "-" or not os.path.isdir(path):
        return [(path, None if path == "-" else _size(path))]
    names = sorted(n for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    if not names:
        raise DarknetpyError("the directory has no regular files; give a corpus file or a folder of them", path)
    return [(os.path.join(path, n), _size(os.path.join(path, n))) for n in names]


def read_raw(path):
    """The corpus bytes: a read-only memory map of one file (no copy, nothing read until used), or
    of a folder's files joined with FILE_SEPARATOR into a temporary file, or stdin or a pipe such
    as the shell's <(...) (in memory: they cannot be mapped, and their size reads as 0)."""
    files = corpus_files(path)
    if path == "-":
        return np.frombuffer(sys.stdin.buffer.read(), np.uint8)
    if os.path.exists(path) and not os.path.isfile(path) and not os.path.isdir(path):
        return np.frombuffer(_read(path), np.uint8)
    if len(files) == 1 and files[0][0] == path:
        return _mapped(path, files[0][1])
    return _mapped(_joined(path, files))


def _mapped(path, size=None):
    size = _size(path) if size is None else size
    if size == 0:
        return np.zeros(0, np.uint8)
    _read(path, 0)  # the one-line errors of a missing or unreadable file
    return np.memmap(path, np.uint8, "r")


def _joined(folder, files):
    """A temporary file (removed at exit) holding the folder's files joined with FILE_SEPARATOR,
    copied CHUNK bytes at a time: a folder corpus is mapped like one file, never held in memory."""
    fd, joined = tempfile.mkstemp(prefix="darknetpy-corpus-", suffix=".txt")
    atexit.register(_remove, joined)
    try:
        with os.fdopen(fd, "wb") as out:
            for k, (name, _) in enumerate(files):
                if k:
                    out.write(FILE_SEPARATOR)
                _read(name, 0)
                with open(name, "rb") as f:
                    while piece := f.read(CHUNK):
                        out.write(piece)
    except OSError as e:
        _remove(joined)
        raise DarknetpyError(f"cannot join the folder's files into {joined} ({e.strerror or e}); "
                             "free space there or point TMPDIR elsewhere", folder) from None
    return joined


def _remove(path):
    with contextlib.suppress(OSError):
        os.unlink(path)


def folder_offset(path, offset):
    """(file, offset in it) of byte `offset` of a corpus (a folder's joined files), for errors; a
    byte of a separator belongs to the file before it."""
    for name, size in corpus_files(path):
        if offset < size + len(FILE_SEPARATOR):
            return name, offset
        offset -= size + len(FILE_SEPARATOR)
    return path, offset


def load_corpus(path, inputs, tokenized=False):
    """Read a corpus ("-" = stdin, a file, or a folder) into ids, refusing any id outside [0, inputs).

    Bytes come back as a read-only uint8 array, memory-mapped for a file (no copy of a large
    corpus); tokens in the smallest unsigned dtype that holds them.
    """
    name = "<stdin>" if path == "-" else str(path)
    raw = read_raw(path)
    if tokenized:
        return _parse_tokens(raw.tobytes(), inputs, name)  # FILE_SEPARATOR is whitespace too
    if not raw.size:
        raise DarknetpyError("the corpus is empty; give a text file with at least a few bytes", name)
    # Darknet's get_rnn_data aborts with "Bad char" on a NUL byte; darknetpy treats NUL as any byte.
    if inputs < 256 and max_id(raw) >= inputs:
        offset = first_at_least(raw, inputs)
        where, at = folder_offset(path, offset) if os.path.isdir(path) else (name, offset)
        raise DarknetpyError(f"byte 0x{raw[offset]:02x} at offset {at} is outside inputs={inputs}; "
                             "set inputs=256 in [net] or clean the corpus", where)
    return raw


# Reading a memory-mapped corpus through the map makes what it touches resident, and recent
# kernels map a whole large page-cache folio (up to megabytes) per touch: a few hundred random
# reads would make a big corpus count in full against RSS. So the map is the corpus's handle
# (slices are views, nothing is copied) and its ids are read with pread(2) from the mapped file.
def _mapped_file(ids):
    """(path, byte offset of ids[0] in it) for a view of a np.memmap, else None."""
    mm = getattr(ids, "_mmap", None)
    if not isinstance(ids, np.memmap) or mm is None or not ids.filename:
        return None
    start = np.frombuffer(mm, np.uint8).ctypes.data
    return ids.filename, ids.offset - ids.offset % mmap.ALLOCATIONGRANULARITY + ids.ctypes.data - start


def read_ids(ids, start, stop):
    """ids[start:stop] as an in-memory array (pread from a mapped file, without mapping it in)."""
    where, stop = _mapped_file(ids), min(stop, len(ids))
    if where is None:
        return np.asarray(ids[start:stop])
    with open(where[0], "rb") as f:
        raw = os.pread(f.fileno(), (stop - start) * ids.itemsize, where[1] + start * ids.itemsize)
    return np.frombuffer(raw, ids.dtype)


def _read_windows(ids, offsets, length):
    """(length, streams): ids[(o + arange(length)) % n] for each offset o, by pread (see read_ids);
    a window wraps to the start at most once (length <= n)."""
    path, base = _mapped_file(ids)
    n, size = len(ids), ids.itemsize
    out = np.empty((len(offsets), length), ids.dtype)
    with open(path, "rb") as f:
        for row, o in zip(out, offsets.tolist()):
            head = min(length, n - o)
            row[:head] = np.frombuffer(os.pread(f.fileno(), head * size, base + o * size), ids.dtype)
            if head < length:
                row[head:] = np.frombuffer(os.pread(f.fileno(), (length - head) * size, base), ids.dtype)
    return np.ascontiguousarray(out.T)


def chunks(ids, n=None):
    """ids[:n] in in-memory pieces of CHUNK ids, so scanning a big corpus keeps memory small."""
    n = len(ids) if n is None else n
    for start in range(0, n, CHUNK):
        yield read_ids(ids, start, min(n, start + CHUNK))


def max_id(ids):
    return max(int(c.max()) for c in chunks(ids) if c.size)


def first_at_least(ids, value):
    """The index of the first id >= value (one exists)."""
    start = 0
    for c in chunks(ids):
        hit = np.flatnonzero(c >= value)
        if hit.size:
            return start + int(hit[0])
        start += c.size


def sha256(ids, n=None, as_int32=False):
    """sha256 of ids[:n]: the bytes themselves, or each id as an int32 (as tokenized corpora were
    hashed when they were kept as int32, so earlier checkpoints still match)."""
    h = hashlib.sha256()
    for c in chunks(ids, n):
        h.update(c.astype(np.int32) if as_int32 else np.ascontiguousarray(c))
    return h.hexdigest()


def _size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def _read(path, count=-1):
    """The file's bytes (or the first `count`), with a one-line error instead of an OSError traceback."""
    try:
        with open(path, "rb") as f:
            return f.read(count)
    except IsADirectoryError:
        raise DarknetpyError("is a directory; give the corpus file itself", path) from None
    except FileNotFoundError:
        raise DarknetpyError("no such corpus file; check the path", path) from None
    except PermissionError:
        raise DarknetpyError("permission denied reading the corpus; check the file's permissions", path) from None
    except OSError as e:
        raise DarknetpyError(f"cannot read the corpus ({e.strerror or e}); check the path", path) from None


def _parse_tokens(raw, inputs, name):
    """Whitespace-separated integer ids (smallest unsigned dtype), each checked to lie in [0, inputs)."""
    chars = np.frombuffer(raw, np.uint8)
    space = _IS_SPACE[chars]
    if space.all():
        raise DarknetpyError("the tokenized corpus has no tokens; give whitespace-separated integer ids", name)
    if not _IS_PLAIN[chars].all():
        return _parse_tokens_slowly(raw, inputs, name)
    # Only digits and whitespace: numpy's C parser reads these exactly, without a Python object per
    # token (signs or junk take the slow path above). Overflow saturates at int64's maximum, which
    # the range check catches; the message quotes the token's own text.
    ids = np.fromstring(raw, dtype=np.int64, sep=" ")
    bad = np.flatnonzero(ids >= inputs)
    if bad.size == 0:
        return ids.astype(id_dtype(int(ids.max()) + 1))
    starts = np.flatnonzero(~space & np.concatenate(([True], space[:-1])))
    start = int(starts[bad[0]])
    token = _INTEGER.match(raw, start).group()
    raise _out_of_range(token, inputs, name, raw.count(b"\n", 0, start) + 1)


def _parse_tokens_slowly(raw, inputs, name):
    """Token by token and line by line, so the first bad token can be named with its line."""
    ids = []
    for line_number, line in enumerate(raw.split(b"\n"), 1):
        for token in line.split():
            if not _INTEGER.fullmatch(token):
                raise DarknetpyError(f"token {_show(token)} is not an integer; a tokenized corpus holds "
                                     "whitespace-separated integer ids", name, line_number)
            value = int(token)
            if not 0 <= value < inputs:
                raise _out_of_range(token, inputs, name, line_number)
            ids.append(value)
    return np.array(ids, dtype=id_dtype(max(ids) + 1))


def _out_of_range(token, inputs, name, line_number):
    """The error for an id the network's one-hot input cannot hold."""
    return DarknetpyError(f"token {_show(token)} is outside [0, {inputs}); set inputs in [net] to the "
                          "vocabulary size or fix the corpus", name, line_number)


def _show(token, limit=40):
    """A bad token, quoted and shortened so the error stays one readable line."""
    text = token.decode("utf-8", "replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def split_corpus(ids, valid_frac, path=None):
    """(train_ids, valid_ids): validation is the held-out tail of the corpus; None if valid_frac is 0."""
    if not 0 <= valid_frac < 1:
        raise DarknetpyError(f"the validation fraction must be in [0, 1), not {valid_frac}", path)
    if valid_frac == 0:
        return ids, None
    n_valid = int(len(ids) * valid_frac)
    if n_valid < 2:
        raise DarknetpyError(f"a validation fraction of {valid_frac} leaves {n_valid} of {len(ids)} ids to "
                             "validate on (at least 2 are needed); raise it or set it to 0", path)
    return ids[:len(ids) - n_valid], ids[len(ids) - n_valid:]


def default_valid_frac(n, time_steps):
    """Hold out 5% only when both parts stay useful: >= 10 sequences to validate, a trainable rest."""
    n_valid = int(n * VALID_FRAC)
    return VALID_FRAC if n_valid >= 10 * (time_steps + 1) and n - n_valid > time_steps + 1 else 0.0


class StreamBatcher:
    """Darknet's char-RNN data walk: `streams` offsets, each advancing `time_steps` ids per datum.

    Each stream keeps its place between datums (so the network's per-stream state stays meaningful)
    and wraps at the end of the corpus; `reseat()` occasionally moves a stream to a random place.
    """

    def __init__(self, ids, streams, time_steps, rng, path=None):
        self.ids = ids if isinstance(ids, np.memmap) else np.asarray(ids)
        self.streams, self.time_steps, self.rng = streams, time_steps, rng
        n = len(self.ids)
        if n < time_steps + 1:
            raise DarknetpyError(f"the training text has {n} ids (bytes or tokens) but time_steps={time_steps} "
                                 f"needs at least {time_steps + 1}; use a longer corpus or fewer time_steps", path)
        self.offsets = rng.integers(0, n, size=streams)
        self._walk = np.arange(time_steps + 1)[:, None]

    def next_batch(self, part=slice(None)):
        """(x, y), int64 arrays of shape (time_steps, streams in `part`); y is x shifted one id ahead.
        Every stream advances; only those in `part` (a slice of the streams) are read."""
        n = len(self.ids)
        offsets = self.offsets[part]
        if _mapped_file(self.ids) is None:
            seq = self.ids[(offsets + self._walk) % n].astype(np.int64)
        else:
            seq = _read_windows(self.ids, offsets, len(self._walk)).astype(np.int64)
        self.offsets = (self.offsets + self.time_steps) % n
        return seq[:-1], seq[1:]

    def reseat(self, part=slice(None)):
        """Move each stream to a random offset with probability 1/64; returns the moved streams'
        indices within `part` (a slice of the streams), counted from its start.

        The trainer resets those streams' recurrent state (Darknet's reset_network_state, which is a
        no-op on its CPU path).
        """
        moved = np.flatnonzero(self.rng.integers(0, RESEAT_ODDS, size=self.streams) == 0)
        self.offsets[moved] = self.rng.integers(0, len(self.ids), size=moved.size)
        lo, hi, _ = part.indices(self.streams)
        return moved[(moved >= lo) & (moved < hi)] - lo

    def state(self):
        """Offsets and the rng's state as plain values, so a resumed run continues bit for bit."""
        return {"offsets": self.offsets.tolist(), "rng": self.rng.bit_generator.state}

    def set_state(self, state):
        """Restore what `state()` returned (this also restores the shared rng)."""
        offsets = np.array(state["offsets"], dtype=np.int64)
        if offsets.shape != (self.streams,):
            raise DarknetpyError(f"the saved data state has {offsets.size} streams but this run has "
                                 f"{self.streams}; resume with the same batch and subdivisions")
        if offsets.size and (offsets.min() < 0 or offsets.max() >= len(self.ids)):
            raise DarknetpyError(f"the saved data state points past the end of the {len(self.ids)}-id "
                                 "training text; resume with the same corpus")
        self.offsets = offsets
        self.rng.bit_generator.state = state["rng"]


def check_ids(data, inputs, what):
    """Refuse a byte (or an id, for an array of vocabulary ids) the network has no input for
    (Darknet would index out of bounds)."""
    kind = "id" if isinstance(data, np.ndarray) else "byte"
    ids = data if kind == "id" else np.frombuffer(bytes(data), dtype=np.uint8)
    bad = np.flatnonzero(ids >= inputs)
    if bad.size:
        raise DarknetpyError(f"{what}: {kind} {ids[bad[0]]} at offset {bad[0]} is outside the network's {inputs} inputs")
    return ids


def read_tokens(path):
    """A --tokens file: line i is the text of token id i (Darknet's read_tokens)."""
    try:
        with open(path, "rb") as f:
            return [line.decode("utf-8", "surrogateescape") for line in f.read().splitlines()]
    except OSError as e:
        raise DarknetpyError(f"cannot read tokens: {e.strerror}", path) from None
