"""Generation: Darknet's sampler and the rules beyond it, as N streams of one network.

`events` is the one loop behind `darknetpy generate`, Network.generate/stream and train's samples.
Each sample is what Darknet's `rnn generate` prints: the seed echoed, the sampled symbols, and a
final newline. The network runs on a private Stepper (network.Stepper): its own state arrays and
prepared copies of the weights, at the temperature asked, so a training network it runs on is not
disturbed.

Which sampler draws:
- Darknet's (sample.sample_index: the 0.0001 cut, then one glibc rand() per symbol with `srand`),
  for one sample at a temperature and nothing more, so that output stays byte-identical to
  `darknet rnn generate` (`stop` only ends it early);
- otherwise the rules of sampling.py on p_T = softmax(logits / T): top-k, then top-p, then one
  inverse-CDF draw per stream from numpy's generator seeded with `srand`. `greedy` takes the
  argmax and `beam` the most likely continuation its search finds, both on the model's own
  probabilities (T = 1), with no random draw.
"""
import numpy as np

from . import sampling
from .errors import DarknetpyError
from .sample import GlibcRand, NumpyRand, check_ids, sample_index

SEPARATOR = "-" * 15  # the line between samples (nanoGPT's sample.py prints the same)


def symbol_pieces(net, tokens=None, vocab=None):
    """The bytes each id prints as: Darknet's token plus a space with `tokens` (one string per id,
    <NEWLINE> a newline), a vocabulary's token joined with nothing, else the byte itself. Only the
    first min(len, outputs) ids are ever sampled (sampling.within)."""
    if tokens is not None:
        if len(tokens) < net.outputs:
            raise DarknetpyError(f"{len(tokens)} tokens for a network with {net.outputs} outputs")
        return [("\n" if t == "<NEWLINE>" else t).encode("utf-8", "surrogateescape") + b" " for t in tokens]
    if vocab is not None and vocab.mode != "bytes":
        return vocab.pieces()
    return [bytes([i & 0xFF]) for i in range(max(256, net.outputs))]  # C's %c of an id


def encode_seed(net, seed, vocab=None, name="seed"):
    """The seed's ids: str is UTF-8; bytes are ids as Darknet reads them, unless a vocabulary
    encodes them. An empty seed is id 0, as Darknet feeds a NUL byte."""
    raw = seed.encode("utf-8") if isinstance(seed, str) else bytes(seed)
    if vocab is not None and vocab.mode != "bytes":
        return check_ids(vocab.encode_bytes(raw, name, "seed"), net.inputs, name).tolist() or [0]
    return check_ids(raw, net.inputs, name).tolist() or [0]


def check_options(net, pieces, length, temperature, top_k, top_p, beam, stop, samples):
    """One line for each option outside its range, before any work."""
    if net.outputs > net.inputs:
        raise DarknetpyError(f"generate feeds each sample back: {net.outputs} outputs but only {net.inputs} inputs")
    problems = [
        (length < 0, f"--len {length}: give a number of symbols >= 0"),
        (not temperature > 0, f"--temp {temperature}: the temperature must be > 0"),
        (top_k < 0, f"--top-k {top_k}: give K >= 1 (leave it out to sample among all)"),
        (not 0 < top_p <= 1, f"--top-p {top_p}: give P in (0, 1] (1 keeps every symbol)"),
        (beam < 0, f"--beam {beam}: give a width K >= 1"),
        (samples < 1, f"--samples {samples}: give N >= 1"),
        (beam and samples > 1, f"--beam finds one continuation: leave out --samples {samples}"),
        (beam and (top_k or top_p < 1), "--beam searches, it does not sample: leave out --top-k and --top-p"),
        (stop is not None and not stop, "--stop: give a non-empty text"),
    ]
    for bad, message in problems:
        if bad:
            raise DarknetpyError(message)
    longest = max(len(piece) for piece in pieces[:net.outputs])
    if stop and len(stop) > longest * length:
        raise DarknetpyError(f"--stop: the text is {len(stop)} bytes, but --len {length} symbols print at most "
                             f"{longest * length}: raise --len or shorten the stop text")


class Until:
    """One sample's end: right after the first `stop` it produces (never inside the seed)."""

    def __init__(self, stop):
        self.stop, self.tail = stop, b""  # tail: the last len(stop) - 1 bytes produced

    def cut(self, piece):
        """(piece up to and including the first stop, whether the stop came)."""
        if not self.stop:
            return piece, False
        text = self.tail + piece
        at = text.find(self.stop)
        if at >= 0:
            return piece[:at + len(self.stop) - len(self.tail)], True
        self.tail = text[len(text) - len(self.stop) + 1:]
        return piece, False


def chooser(net, greedy, top_k, top_p, srand, samples):
    """probabilities (streams, V) -> the next ids (streams,), by the rule the options name."""
    if greedy:
        return sampling.greedy
    if samples == 1 and not top_k and top_p >= 1:  # Darknet's sampler, its random stream
        if srand is None:
            rng = NumpyRand()
        else:
            rng = GlibcRand(srand)  # Darknet calls srand before building the network ...
            rng.skip(net.init_rand_draws)  # ... whose random weight init draws this many times
        return lambda p: np.array([sample_index(p[0], rng)])
    gen = np.random.default_rng(srand)

    def choose(p):
        q = sampling.top_k(p, top_k) if top_k else p
        q = sampling.top_p(q, top_p) if top_p < 1 else q
        return sampling.draw(q, gen.random(len(q)))
    return choose


def events(net, seed=b"\n\n", length=1000, temperature=0.7, top_k=0, top_p=1.0, greedy=False, beam=0,
           stop=None, srand=None, samples=1, tokens=None, vocab=None, seed_name="seed"):
    """Generate, yielding (sample, piece, last) as each sample's bytes come: the seed echo first,
    then each symbol's bytes; `last` marks a sample's final newline. `stop` (str or bytes) ends a
    sample right after it first produces that text; `length` symbols is the upper bound."""
    pieces = symbol_pieces(net, tokens, vocab)
    stop = stop.encode("utf-8") if isinstance(stop, str) else stop
    check_options(net, pieces, length, temperature, top_k, top_p, beam, stop, samples)
    ids = encode_seed(net, seed, vocab, seed_name)
    streams = beam or samples
    step = net.stepper(streams, private=True, temperature=1.0 if greedy or beam else temperature)
    for c in ids[:-1]:
        step(np.full(streams, c))
    echo = b"".join(pieces[c] for c in ids)
    n = min(len(pieces), net.outputs)  # the ids with a text: no chooser sees the others
    if beam:
        yield from _beam(step, ids[-1], pieces, echo, beam, length, Until(stop), n)
        return
    for i in range(samples):
        yield i, echo, False
    choose = chooser(net, greedy, top_k, top_p, srand, samples)
    ends = [Until(stop) for _ in range(samples)]
    alive, c = list(range(samples)), np.full(samples, ids[-1])
    for _ in range(length):
        if not alive:
            break
        c = choose(sampling.within(step(c), n))
        symbols = c.tolist()  # Python ints: the per-sample loop below is most of a step's overhead
        if not stop:
            for i in alive:
                yield i, pieces[symbols[i]], False
            continue
        still = []
        for i in alive:
            piece, ended = ends[i].cut(pieces[symbols[i]])
            yield i, piece, False
            if ended:
                yield i, b"\n", True
            else:
                still.append(i)
        alive = still
    for i in alive:
        yield i, b"\n", True


def _beam(step, last, pieces, echo, width, length, until, n):
    """The beam's one sample, among ids < n: searched whole, then printed (cut at the stop text)."""
    with np.errstate(divide="ignore"):
        logp0 = np.log(sampling.within(step(np.full(width, last)), n)[0])

        def advance(parents, symbols):
            step.select(parents)
            return np.log(sampling.within(step(symbols), n))
        symbols, _ = sampling.beam_search(logp0, advance, width, length)
    out = [echo]
    for c in symbols:
        piece, ended = until.cut(pieces[c])
        out.append(piece)
        if ended:
            break
    yield 0, b"".join(out) + b"\n", True


def generate(net, samples=1, **options):
    """The bytes of each sample, exactly as `darknetpy generate` prints them: one bytes object, or
    a list of `samples` of them."""
    out = [[] for _ in range(samples)]
    for i, piece, _ in events(net, samples=samples, **options):
        out[i].append(piece)
    texts = [b"".join(parts) for parts in out]
    return texts[0] if samples == 1 else texts


def output(net, samples=1, separator=SEPARATOR, **options):
    """`darknetpy generate`'s stdout, piece by piece as it is produced: the first sample live, each
    later one (kept until its turn) after a line holding `separator`."""
    sep = (separator.encode("utf-8") if isinstance(separator, str) else separator) + b"\n"
    held, done, turn = {}, set(), 0
    for i, piece, last in events(net, samples=samples, **options):
        if i == turn:
            yield piece
        else:
            held.setdefault(i, []).append(piece)
        if last:
            done.add(i)
            while turn in done and turn + 1 < samples:
                turn += 1
                yield sep
                yield from held.pop(turn, [])
