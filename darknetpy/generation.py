"""Generation: Darknet's sampler and the rules beyond it, as N streams of one network.

A request's progress is a `Sample`; a `Batch` steps Samples together as slots of one many-stream
Stepper (continuous batching: `darknetpy serve` runs every request in one), and `events`, one
Sample alone in a Batch, is behind `darknetpy generate`, Network.generate/stream and train's
samples. Each sample is what Darknet's `rnn generate` prints: the seed echoed, the sampled
symbols, and a final newline. The network runs on private Steppers (network.Stepper): their own
state arrays and prepared copies of the weights, so a training network it runs on is not
disturbed, and batch-invariant ones, at a temperature per stream, so a sample is the same bits
whatever runs beside it.

The options of a request are one options.GenerationOptions (its defaults and range checks);
`check_fits` adds the checks only the network can answer.

One sample of one stream drawn with Darknet's sampler or greedily runs in C where it can (`Loop`,
kernels.sample_loop): its steps, softmax and draws with no Python per symbol, the same bits as the
Python steps.

Which sampler draws:
- Darknet's (darknet_sampler.sample_index: the 0.0001 cut, then one glibc rand() per symbol with
  `srand`), for one sample at a temperature and nothing more, so that output stays byte-identical
  to `darknet rnn generate` (`stop` only ends it early);
- otherwise the rules of sampling.py on p_T = softmax(logits / T): top-k, then top-p, then one
  inverse-CDF draw per stream from numpy's generator seeded with `srand`. `greedy` takes the
  argmax and `beam` the most likely continuation its search finds, both on the model's own
  probabilities (T = 1), with no random draw.
"""
import numpy as np

from . import kernels, sampling
from . import vocab as vocabmod
from .errors import DarknetpyError
from .darknet_sampler import GlibcRand, NumpyRand, sample_rows
from .data import check_ids
from .options import GenerationOptions, OptionError

SEPARATOR = "-" * 15  # the line between samples (nanoGPT's sample.py prints the same)
CHUNK = 256  # symbols a Loop draws per call: printed as they come, and --stop checked, per chunk


class Loop:
    """A one-stream stepper's step as a program of the C loop (kernels.sample_loop: darknetpy/_sample.h),
    made from its layers' step functions' `loop(x)` forms: the same ops on the same arrays (the
    state included), so it runs the same bits as the Python steps, with no Python per step.
    `Loop.of(steps)` is None where a layer has no such form or the loop is not compiled."""

    NO_DRAWS = (np.empty(0, np.float32), np.empty(0, np.int64))

    def __init__(self, c, program, out):
        self.c, self.program, self.out = c, program, out

    @classmethod
    def of(cls, steps):
        c = kernels.sample_loop()
        if c is None:
            return None
        ops, x = [], None  # x: the array the next layer reads (None: the step's input id)
        for step in steps:
            form = getattr(step, "loop", None)
            if form is None:
                return None
            more, x = form(x)
            if None in more:
                return None
            ops += more
        return cls(c, c.sample_program(ops, x), x) if ops else None

    def __call__(self, ids):
        """One step for ids (1,) -> the step's result (1, outputs), a new array."""
        self.c.sample_run(self.program, np.asarray(ids, np.int64), *self.NO_DRAWS, False)
        return self.out.copy()

    def draw(self, feed, u, greedy):
        """Step the ids `feed`, then draw len(u) symbols, each with Darknet's sampler at u[j] (or the
        most likely: greedy) and stepped in turn but the last: returns them (int64)."""
        chosen = np.empty(len(u), np.int64)
        self.c.sample_run(self.program, np.asarray(feed, np.int64), u, chosen, greedy)
        return chosen


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


def check_fits(net, pieces, options):
    """One line if the network cannot generate with these options (their ranges are checked by
    GenerationOptions itself): its samples must fit its inputs, the stop texts `length` symbols."""
    if net.outputs > net.inputs:
        raise DarknetpyError(f"generate feeds each sample back: {net.outputs} outputs but only {net.inputs} inputs")
    longest = max(len(piece) for piece in pieces[:net.outputs])
    for text in options.stop:
        if len(text) > longest * options.length:
            raise OptionError("stop", f"--stop: the text is {len(text)} bytes, but --len {options.length} symbols "
                                      f"print at most {longest * options.length}: raise --len or shorten the stop text")


class Until:
    """One sample's end: right after the first of the `stops` (bytes each) it produces (never
    inside the seed); `matched` is then that stop."""

    def __init__(self, stops):
        self.stops, self.tail, self.matched = stops, b"", None  # tail: the last bytes a stop could span
        self.keep = max(map(len, stops), default=1) - 1

    def cut(self, piece):
        """(piece up to and including the first stop, whether a stop came)."""
        if not self.stops:
            return piece, False
        text = self.tail + piece
        found = [(at + len(stop), stop) for stop in self.stops for at in [text.find(stop)] if at >= 0]
        if found:
            end, self.matched = min(found)
            return piece[:end - len(self.tail)], True
        self.tail = text[max(0, len(text) - self.keep):]
        return piece, False


def chooser(net, options):
    """probabilities (streams, V) -> the next ids (streams,), by the rule the options name: the
    filters of sampling.FILTERS that are given (off at their defaults), in order, then a draw."""
    o = options
    if o.greedy:
        return sampling.greedy
    filters = [(rule, getattr(o, name)) for name, rule in sampling.FILTERS.items() if name in o.filtering()]
    if o.samples == 1 and not filters:  # Darknet's sampler, its random stream
        if o.srand is None:
            rng = NumpyRand()
        else:
            rng = GlibcRand(o.srand)  # Darknet calls srand before building the network ...
            rng.skip(net.init_rand_draws)  # ... whose random weight init draws this many times
        return DarknetDraw(rng)
    gen = np.random.default_rng(o.srand)

    def choose(p):
        for rule, value in filters:
            p = rule(p, value)
        return sampling.draw(p, gen.random(len(p)))
    return choose


class DarknetDraw:
    """Darknet's sampler on a sample's one stream, one draw of its random stream `rng` per symbol;
    a Batch draws for all such samples of a step in one sample_rows call (the same bits)."""

    def __init__(self, rng):
        self.rng = rng

    def __call__(self, p):
        return sample_rows(p[:1], [self.rng.uniform()])


class Sample:
    """One request's progress, as `streams` consecutive slots of a Batch (one slot per sample, or
    the beam's width): its seed fed one id per step, its sampler and random stream, each sample's
    stop text, its length, the bytes each id prints as. A Batch steps it: `inputs()` are the ids
    its slots read next; `advance(p)` takes the probabilities (streams, V) that step gave them and
    returns the (sample, piece, last) events that came of it, as `events` yields them. `done` once
    every sample has printed its final newline; `reorder` (the beam's parents) asks the Batch to
    move its slots' states before the next step.

    `options`: a GenerationOptions; `tokens` or `vocab` say what an id prints as (symbol_pieces),
    `seed_name` how an error about the seed names it."""

    def __init__(self, net, options, tokens=None, vocab=None, seed_name="seed"):
        o = options
        self.pieces = symbol_pieces(net, tokens, vocab)
        self.n = min(len(self.pieces), net.outputs)  # the ids with a text: no sampler sees the others
        check_fits(net, self.pieces, o)
        try:
            self.ids = encode_seed(net, o.seed, vocab, seed_name)
        except DarknetpyError as e:
            raise OptionError("seed", str(e)) from None
        self.echo = b"".join(self.pieces[c] for c in self.ids)
        self.streams, self.samples, self.length, self.width = o.beam or o.samples, o.samples, o.length, o.beam
        self.temperature = 1.0 if o.greedy or o.beam else o.temperature
        self.choose = None if o.beam else chooser(net, o)
        self.ends = [Until(o.stop) for _ in range(o.samples)]
        self.alive, self.fed, self.drawn = list(range(o.samples)), 0, 0
        self.next = np.full(self.streams, self.ids[0])
        self.done, self.reorder, self.search = False, None, None
        self.symbols = 0  # the symbols this request printed (the usage count)

    def inputs(self):
        return self.next

    def loops(self, stepper):
        """Whether `run` can step this sample on `stepper` (one stream, a Loop): one sample drawn
        with Darknet's sampler or greedily, from all of the network's outputs (sampling.within)."""
        loop = getattr(stepper, "loop", None)
        return loop is not None and self.streams == 1 and self.n >= loop.out.shape[-1] \
            and (isinstance(self.choose, DarknetDraw) or self.choose is sampling.greedy)

    def run(self, loop):
        """events' (sample, piece, last) for this sample run whole by `loop` (its stepper's Loop), in
        chunks of CHUNK symbols: the seed echoed, then each chunk's pieces at once (cut at the stop
        text), each chunk's uniforms drawn at once from the sample's random stream (draw for
        draw the Python steps' own; after a stop the stream is never read again)."""
        greedy = self.choose is sampling.greedy
        yield 0, self.echo, False
        feed, left, end = self.ids, self.length, self.ends[0]
        while left:
            u = np.zeros(min(CHUNK, left), np.float32) if greedy else self.choose.rng.uniforms(min(CHUNK, left))
            chosen = loop.draw(feed, u, greedy)
            feed, left = chosen[-1:], left - len(u)
            pieces = [self.pieces[c] for c in chosen.tolist()]
            text, ended = end.cut(b"".join(pieces))
            if ended:  # the symbols printed: up to the one whose piece ends the stop text
                left = 0
                self.symbols += int(np.searchsorted(np.cumsum([len(p) for p in pieces]), len(text))) + 1
            else:
                self.symbols += len(pieces)
            yield 0, text, False
        self.done, self.alive = True, []
        yield 0, b"\n", True

    def draws_darknet(self):
        """Whether this step's `advance` draws with Darknet's sampler (DarknetDraw)."""
        return isinstance(self.choose, DarknetDraw) and self.length > 0 and self.fed >= len(self.ids) - 1

    def advance(self, p, chosen=None):
        """`chosen`: the ids Darknet's sampler drew from p for this sample (a Batch's draw), if any."""
        self.reorder = None
        if self.fed < len(self.ids):  # still feeding the seed
            self.fed += 1
            if self.fed < len(self.ids):
                self.next = np.full(self.streams, self.ids[self.fed])
                return []
            if self.width:
                with np.errstate(divide="ignore"):
                    self.search = sampling.beam_steps(np.log(p[0]), self.width, self.length)
                return self._search(None)
            out = [(i, self.echo, False) for i in range(self.samples)]
            return out + (self._choose(p, chosen) if self.length else self._finish())
        if self.width:
            with np.errstate(divide="ignore"):
                return self._search(np.log(p))
        return self._choose(p, chosen)

    def _choose(self, p, chosen):
        """One symbol per sample from p (samples, V), each printed (cut at the stop text)."""
        c = self.choose(p) if chosen is None else chosen
        self.next, self.drawn = c, self.drawn + 1
        symbols, out = c.tolist(), []  # Python ints: this loop is most of a step's overhead
        still = []
        for i in self.alive:
            piece, ended = self.ends[i].cut(self.pieces[symbols[i]])
            out.append((i, piece, False))
            self.symbols += 1
            if ended:
                out.append((i, b"\n", True))
            else:
                still.append(i)
        self.alive = still
        return out + (self._finish() if not still or self.drawn == self.length else [])

    def _finish(self):
        self.done = True
        out, self.alive = [(i, b"\n", True) for i in self.alive], []
        return out

    def _search(self, logp):
        """The beam: the search's next (parents, symbols), or its end, the one sample printed whole."""
        try:
            parents, self.next = self.search.send(logp)
            self.reorder = parents
            return []
        except StopIteration as found:
            symbols = found.value[0]
        out = [self.echo]
        for c in symbols:
            piece, ended = self.ends[0].cut(self.pieces[c])
            out.append(piece)
            self.symbols += 1
            if ended:
                break
        self.done = True
        return [(0, b"".join(out) + b"\n", True)]


def _sizes(capacity):
    """The stream counts a Batch keeps steppers for: powers of two below `capacity`, and it."""
    return [1 << k for k in range(capacity.bit_length()) if 1 << k < capacity] + [capacity]


class Batch:
    """Continuous batching: Samples on slots of one many-stream Stepper, stepped together. A Sample
    joins at the next step (`add`) and leaves as soon as it is done or `remove`d, whatever the
    others do. Slots stay packed in 0..used-1; the step runs on the smallest of the steppers (one
    per size in `_sizes`, made when first needed, the state rows copied across) that holds them,
    the rows past `used` stepped too and unread. Every stepper is batch-invariant (Network.stepper
    invariant=True) with one softmax temperature per stream, so a sample's probabilities, and with
    its own sampler and random stream its text, are the same bits alone or beside any others."""

    def __init__(self, net, capacity):
        self.net, self.capacity, self.sizes = net, capacity, _sizes(capacity)
        self.steppers, self.samples, self.used = {}, [], 0
        self.size = None

    def free(self):
        return self.capacity - self.used

    def _stepper(self, size):
        if size not in self.steppers:
            temperatures = np.ones(size, np.float32)
            step = self.net.stepper(size, private=True, temperature=temperatures, invariant=True)
            self.steppers[size] = (step, temperatures, np.zeros(size, np.int64))
        return self.steppers[size]

    def _resize(self):
        """Run on the smallest stepper that holds the used slots, their state copied over."""
        size = next(s for s in self.sizes if s >= max(self.used, 1))
        if size != self.size:
            new = self._stepper(size)
            if self.size is not None:
                old = self.steppers[self.size]
                n = min(self.used, size, self.size)
                for a, b in zip(old[0].arrays(), new[0].arrays()):
                    b[:n] = a[:n]
                new[1][:n] = old[1][:n]
            self.size = size

    def add(self, sample):
        """Give `sample` the next sample.streams slots, from a zero state (raises if none are free)."""
        if sample.streams > self.free():
            raise DarknetpyError(f"{sample.streams} streams asked, {self.free()} free")
        sample.first = self.used
        self.used += sample.streams
        self.samples.append(sample)
        self._resize()
        step, temperatures, _ = self.steppers[self.size]
        rows = slice(sample.first, self.used)
        for a in step.arrays():
            a[rows] = 0
        temperatures[rows] = sample.temperature

    def remove(self, sample):
        """Free `sample`'s slots now: the samples after it move down (their state with them)."""
        self.samples.remove(sample)
        k, first = sample.streams, sample.first
        step, temperatures, _ = self.steppers[self.size]
        if first + k < self.used:
            for a in step.arrays():
                a[first:self.used - k] = a[first + k:self.used].copy()
            temperatures[first:self.used - k] = temperatures[first + k:self.used].copy()
        for other in self.samples:
            if other.first > first:
                other.first -= k
        self.used -= k
        self._resize()

    def step(self):
        """One step of every sample: returns [(sample, its events)]; done samples leave. The
        samples drawing with Darknet's sampler this step draw together, in one sample_rows."""
        step, _, x = self.steppers[self.size]
        for sample in self.samples:
            x[sample.first:sample.first + sample.streams] = sample.inputs()
        p = step(x)
        drawing, chosen = [sample for sample in self.samples if sample.draws_darknet()], {}
        for n in {sample.n for sample in drawing}:  # one sample_rows per vocabulary size (one, in practice)
            group = [sample for sample in drawing if sample.n == n]
            chosen.update(zip(group, sample_rows(sampling.within(p[[s.first for s in group]], n),
                                                 [s.choose.rng.uniform() for s in group])[:, None]))
        out = []
        for sample in self.samples:
            rows = slice(sample.first, sample.first + sample.streams)
            out.append((sample, sample.advance(sampling.within(p[rows], sample.n), chosen.get(sample))))
            if sample.reorder is not None:
                index = np.arange(self.size)
                index[rows] = sample.first + sample.reorder
                step.select(index)
        for sample, _ in out:
            if sample.done:
                self.remove(sample)
        return out


def events(net, options=None, tokens=None, vocab=None, seed_name="seed"):
    """Generate, yielding (sample, piece, last) as each sample's bytes come: the seed echo first,
    then each symbol's bytes; `last` marks a sample's final newline. `stop` (str or bytes, or a
    list of them: whichever comes first) ends a sample right after it first produces that text;
    `length` symbols is the upper bound. `options`: a GenerationOptions (default: its defaults);
    `tokens` as Sample's, `vocab` a Vocab, a .vocab path or None for the network's own
    (vocab.resolve). The request runs alone in a Batch of its own streams."""
    vocab = None if tokens is not None else vocabmod.resolve(vocab, net)
    sample = Sample(net, options or GenerationOptions(), tokens, vocab, seed_name)
    batch = Batch(net, sample.streams)
    batch.add(sample)
    stepper = batch.steppers[batch.size][0]
    if sample.loops(stepper):
        yield from sample.run(stepper.loop)
        return
    while not sample.done:
        for _, out in batch.step():
            yield from out


def generate(net, options=None, **symbols):
    """The bytes of each sample, exactly as `darknetpy generate` prints them: one bytes object, or
    a list of `options.samples` of them. `symbols`: events' tokens, vocab, seed_name."""
    options = options or GenerationOptions()
    out = [[] for _ in range(options.samples)]
    for i, piece, _ in events(net, options, **symbols):
        out[i].append(piece)
    texts = [b"".join(parts) for parts in out]
    return texts[0] if options.samples == 1 else texts


def output(net, options=None, separator=SEPARATOR, **symbols):
    """`darknetpy generate`'s stdout, piece by piece as it is produced: the first sample live, each
    later one (kept until its turn) after a line holding `separator`. `symbols` as generate's."""
    options = options or GenerationOptions()
    samples = options.samples
    sep = (separator.encode("utf-8") if isinstance(separator, str) else separator) + b"\n"
    held, done, turn = {}, set(), 0
    for i, piece, last in events(net, options, **symbols):
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
