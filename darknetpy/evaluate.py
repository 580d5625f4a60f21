"""A text read through the network without training it: held-out bits per character, one
algorithm for `darknetpy valid` (Darknet's `rnn valid`), `Network.score` and the estimate during
training, and `rnn vec`'s vectors.

Scoring feeds ids through a private stepper (`Network.stepper(k, private=True)`: copies of the
weights prepared once, its own zero state, so the network's weights, state and training are left
alone); each id predicts the next, and a scored id costs -log2 of the probability it was given.
`layout` lays the text out as k chunks side by side, one per stream, with the state carried within
a chunk; each chunk is first warmed up, unscored, on the `warmup` ids before it (chunk 0 on the
seed), so every id but the first is scored exactly once whatever k is.

- k = 1 is the whole text in order after the seed: `valid_steps`, Darknet's exact `rnn valid`,
  with its float32 accumulator and printed line.
- `Estimate` (every --valid-every iterations, and at the end) takes k up to 128 chunks of the
  first data.VALID_SLICE held-out ids and sums in float64: one stepper call serves up to 128
  characters where valid's serves one. The one difference is the history: a chunk's state has seen `warmup` ids before its
  first scored id instead of the whole text. A recurrent state forgets its start geometrically
  fast, so the gap per chunk is bounded by what the first few ids after the warm-up lose, spread
  over the chunk (tests/test_evaluate.py bounds it on a trained model).
"""
import math

import numpy as np

from .errors import DarknetpyError
from . import vocab as vocabmod
from .data import check_ids
from .options import SEED


def layout(ids, seed_ids=(), chunks=1, warmup=128):
    """x, y, scored: (steps, chunks) arrays; chunk j feeds x[:, j] and is scored on y[:, j] where
    scored[:, j]. The scored targets are ids[1:], each once; chunk j > 0 starts `warmup` ids
    before its first target, chunk 0 on the seed (its last id predicts ids[0], unscored)."""
    ids = np.asarray(ids, dtype=np.int64)
    seed = np.asarray(seed_ids, dtype=np.int64)
    bounds = np.linspace(1, len(ids), chunks + 1).round().astype(np.int64)  # targets [b_j, b_j+1)
    parts = []
    for j in range(chunks):
        lo, hi = int(bounds[j]), int(bounds[j + 1])
        if j == 0:
            x = np.concatenate([seed, ids[:hi - 1]])
            y = np.concatenate([seed[1:], ids[:hi]]) if len(seed) else ids[1:hi]
            scored = np.arange(len(x)) >= len(seed)
        else:
            start = max(0, lo - 1 - warmup)
            x, y = ids[start:hi - 1], ids[start + 1:hi]
            scored = np.arange(start + 1, hi) >= lo
        parts.append((x, y, scored))
    steps = max(len(x) for x, _, _ in parts)
    x, y = np.zeros((steps, chunks), np.int64), np.zeros((steps, chunks), np.int64)
    scored = np.zeros((steps, chunks), bool)
    for j, (xj, yj, sj) in enumerate(parts):
        x[:len(xj), j], y[:len(yj), j], scored[:len(sj), j] = xj, yj, sj
    return x, y, scored


def predictions(net, x, y):
    """Per step, the probability each chunk's target gets, (chunks,) float32: x, y (steps,
    chunks) ids through a private stepper of `chunks` streams."""
    step = net.stepper(streams=x.shape[1], private=True)
    cols = np.arange(x.shape[1])
    for xt, yt in zip(x, y):
        yield step(xt)[cols, yt]


class Estimate:
    """The held-out bits per character of `ids` under a network's current weights, in up to
    `max_streams` chunks of at least 2*`warmup` ids each (see the module's docstring)."""

    def __init__(self, ids, seed_ids=(), max_streams=128, warmup=128):
        self.count = len(ids) - 1  # scored ids, as `valid` counts them
        chunks = max(1, min(max_streams, self.count // (2 * warmup)))
        self.x, self.y, self.scored = layout(ids, seed_ids, chunks, warmup)

    def __call__(self, net, stop=lambda: False):
        """Bits per character (per token) under `net`, or None if `stop()` turned true."""
        p = np.empty(self.x.shape, np.float32)
        for t, pt in enumerate(predictions(net, self.x, self.y)):
            if t % 64 == 0 and stop():
                return None
            p[t] = pt
        with np.errstate(divide="ignore"):
            return float(-np.log2(p[self.scored].astype(np.float64)).sum() / self.count)


# Darknet's -Ofast build turns pow(2, x) into glibc's exp2(x), which differs from pow in the last
# bit now and then; math.exp2 (Python 3.11+) is that exp2.
_exp2 = getattr(math, "exp2", lambda x: 2.0**x)


def _pow2(x):
    """Darknet's pow(2, x) (see _exp2): inf on overflow where Python raises."""
    try:
        return _exp2(x)
    except OverflowError:
        return math.inf


def valid_steps(net, text, seed=SEED, spaces=(32, 10, 9)):
    """Darknet's `rnn valid`, one scored byte at a time: yields (count, bpc, perplexity, word_perplexity).

    The seed is fed unscored, then each byte predicts the next (`layout` with one chunk). The
    running sum of log2 p is Darknet's float32 accumulator: the log and the division by (float)ln 2
    in double, then rounded to float32 on every addition. Words start at 1 and count ' ', '\\n',
    '\\t' (the ids `spaces`) among scored bytes. `text` and `seed` may also be arrays of vocabulary ids.
    """
    seed_ids = check_ids(seed, net.inputs, "seed")
    ids = check_ids(text, net.inputs, "text")
    beyond = np.flatnonzero(ids[1:] >= net.outputs)  # every id but the first is a target
    if beyond.size:
        at = int(beyond[0]) + 1
        kind = "id" if isinstance(text, np.ndarray) else "byte"
        raise DarknetpyError(f"text: {kind} {ids[at]} at offset {at} is a target the network's {net.outputs} "
                             "outputs cannot predict; score only text the network was trained on")
    if len(ids) < 2:
        return
    x, y, scored = layout(ids, seed_ids)
    spaces = frozenset(spaces)
    log2 = float(np.float32(math.log(2)))
    total, words, count = 0.0, 1, 0
    for p, nxt, counts in zip(predictions(net, x, y), y[:, 0].tolist(), scored[:, 0].tolist()):
        if not counts:
            continue
        count += 1
        words += nxt in spaces
        p = float(p[0])
        log_p = math.log(p) if p > 0 else -math.inf  # C's log(0) is -inf (Python raises)
        total = float(np.float32(total + log_p / log2))
        # -sum/count and -sum/words are float32 divisions in C; pow and printf then see doubles
        bpc = float(np.float32(-total) / np.float32(count))
        yield count, bpc, _pow2(bpc), _pow2(float(np.float32(-total) / np.float32(words)))


def validate(net, text, seed=SEED):
    """Darknet's `rnn valid` on `text` (bytes): the final (count, bpc, perplexity, word_perplexity)."""
    result = None
    for result in valid_steps(net, text, seed):
        pass
    if result is None:
        raise DarknetpyError("validation text needs at least 2 bytes: each scored byte is predicted from the one before")
    return result


def score(net, text, seed=SEED, vocab=None):
    """Network.score: the bits per character `validate` gives `text` (str as UTF-8, or bytes)
    after `seed`, each encoded with `vocab` (vocab.resolve: a Vocab, a path, or the network's)."""
    vocab = vocabmod.resolve(vocab, net)
    words = vocab is not None and vocab.mode != "bytes"

    def ids(raw, what):
        raw = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        return vocab.encode_bytes(raw, what, what) if words else raw
    return validate(net, ids(text, "text"), seed=ids(seed, "seed"))[1]


def format_valid_line(count, bpc, perplexity, word_perplexity):
    """Darknet's per-character line, `%d BPC: %4.4f   Perplexity: %4.4f    Word Perplexity: %4.4f`.

    Python's %.4f prints the exact binary value correctly rounded, as glibc's printf does, so even
    the huge word perplexities agree digit for digit.
    """
    return f"{count} BPC: {bpc:.4f}   Perplexity: {perplexity:.4f}    Word Perplexity: {word_perplexity:.4f}"


DARKNET_STRIP = b" \t\n"  # what Darknet's strip() drops, anywhere in a line


def vec_rows(net, lines, seed=SEED, vocab=None, strip=True, name="text"):
    """Darknet's `rnn vec`: for each line (bytes, without its newline), the first layer's output
    (n,) once it has read the seed, the line and a space from a zero state. Yields (line, vector).

    strip=True is Darknet's strip(): every space, tab and newline in the line is dropped, also
    from the line yielded. Darknet resets the state before each line only on its GPU path; here
    every line starts from zero, so a row does not depend on the lines before it.
    """
    words = vocab is not None and vocab.mode != "bytes"

    def encode(raw, what):
        return check_ids(vocab.encode_bytes(raw, name, what) if words else raw, net.inputs, f"{name}: {what}")
    head = encode(seed, "the seed").tolist()
    space = encode(b" ", "the space fed after each line").tolist()
    step = net.stepper(private=True, layers=1)
    for n, line in enumerate(lines, start=1):
        if strip:
            line = line.translate(None, DARKNET_STRIP)
        step.reset()
        for c in head + encode(line, f"line {n}").tolist() + space:
            out = step([c])
        yield line, out[0].copy()
