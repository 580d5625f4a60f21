"""How much of a generated text is copied from the training text: did the model only memorise?

Both measures come from the sample's matching statistics: ms[i], the length of the longest
prefix of sample[i:] that occurs somewhere in the corpus (byte strings both). Then

    longest shared substring = max_i ms[i], at the i that reaches it first;
    the w-byte window at i occurs in the corpus  <=>  ms[i] >= w   (torch-rnn's novel_substrings).

ms is computed left to right with exact searches of the corpus (bytes.find): ms[i+1] >= ms[i] - 1,
since a suffix of a match is a match, so each step first retries the length it inherits and then
grows by one byte per successful search, each search starting at the previous match (a longer
match with the same prefix cannot occur earlier). That is at most 2·len(sample) searches, each a
scan of the corpus at worst, and no index to build: exact, and fast for a sample of hundreds of
bytes against a corpus of megabytes.
"""
import unicodedata
from typing import NamedTuple

ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


class Overlap(NamedTuple):
    longest: int   # length in bytes of the longest substring of the sample found in the corpus
    at: int        # where it starts in the sample (its first occurrence there); 0 if longest is 0
    text: bytes    # that substring
    window: int    # w, the window length in bytes
    windows: int   # the sample's w-byte windows: max(0, len(sample) - w + 1)
    found: int     # how many of them occur somewhere in the corpus

    @property
    def share(self):
        """The fraction of the sample's windows found in the corpus; None if it has none."""
        return self.found / self.windows if self.windows else None


def matching_statistics(sample, corpus):
    """ms[i] for every i of `sample`: the longest prefix of sample[i:] occurring in `corpus`."""
    view, ms = memoryview(sample), []
    length = 0
    for i in range(len(sample)):
        length = max(length - 1, 0)
        at = 0
        while i + length < len(sample):
            found = corpus.find(view[i:i + length + 1], at)
            if found < 0:
                break
            at, length = found, length + 1
        ms.append(length)
    return ms


def measure(sample, corpus, window=20):
    """The `Overlap` of the bytes `sample` with the bytes `corpus`, windows of `window` bytes."""
    if window < 1:
        raise ValueError(f"window must be >= 1, not {window}")
    sample, corpus = bytes(sample), bytes(corpus)
    ms = matching_statistics(sample, corpus)
    longest = max(ms, default=0)
    at = ms.index(longest) if longest else 0
    windows = max(0, len(sample) - window + 1)
    return Overlap(longest, at, sample[at:at + longest], window, windows,
                   sum(1 for m in ms[:windows] if m >= window))


def one_line(text):
    """The bytes `text` as one printable line in double quotes: UTF-8 characters as themselves,
    backslash, quote, newline, tab and carriage return escaped as in C, other control characters
    as \\uNNNN and bytes that are not UTF-8 as \\xNN."""
    out = []
    for ch in text.decode("utf-8", errors="surrogateescape"):
        if ch in ESCAPES:
            out.append(ESCAPES[ch])
        elif 0xDC80 <= ord(ch) <= 0xDCFF:  # surrogateescape's stand-in for the undecodable byte
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif unicodedata.category(ch).startswith("C"):
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'
