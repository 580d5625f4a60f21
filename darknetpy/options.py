"""The options of a training run and of generation, each with its default and its check written once.

`GenerationOptions` is what `darknetpy generate`, Network.generate/stream and `darknetpy serve`'s
/v1/generate build and what generation.Sample takes; a bad value is one OptionError naming the
option by its flag, the same line from the command, the library and the server (which adds the
JSON field as `param`).

`TrainOptions` is what `darknetpy train` and `darknetpy.train.train(cfg, data, **options)` build
and what `train.Trainer` takes. Its fields come in three kinds (a field's `metadata`):

    run        recorded in the run record's `options` and read back by --resume (unless given again)
    watching   recorded, but not carried over by --resume (samples, the time budget: per command)
    this call  neither (the checkpoint to start from, the folder, how to show progress): the record
               names the start under `started_from`, and --resume reads the folder and the latest
               checkpoint from the record itself

A field with a bound (`least`, `above`, `most`) is checked here with a one-line OptionError, and
--help says the range in the option's words.
"""
import dataclasses
import math
import re
from typing import List, Optional, Union

from .errors import DarknetpyError

RUN, WATCHING, THIS_CALL = "run", "watching", "this call"
SEED = b"\n\n"  # Darknet's -seed for `rnn generate`, `rnn valid` and `rnn vec`: fed first, unscored


class OptionError(DarknetpyError):
    """A value outside its option's range: one line, and `field`, the option's name (serve's `param`)."""

    def __init__(self, field, message):
        super().__init__(message)
        self.field = field


def option(default, kind=RUN, least=None, above=None, most=None, resumed=None, rule=None, flag=None, filter=False):
    """A field: its default, its kind, its bound (>= least or > above, and <= most), whether
    --resume reads it back (the run's options do), the words of its error after the value
    ("give N >= 0"), its command-line flag when it is not the name's (--len for length), and
    whether it is a sampling filter (sampling.FILTERS), which keeps every symbol at its default."""
    return dataclasses.field(default=default, metadata={
        "kind": kind, "least": least, "above": above, "most": most,
        "resumed": kind == RUN if resumed is None else resumed, "rule": rule, "flag": flag, "filter": filter})


def check_bounds(options):
    """Raise an OptionError for the first field of the dataclass `options` outside its bound."""
    for f in dataclasses.fields(options):
        value, meta = getattr(options, f.name), f.metadata
        if value is None or meta["rule"] is None:
            continue
        least, above, most = meta["least"], meta["above"], meta["most"]
        bad = not math.isfinite(value) or (least is not None and value < least) \
            or (above is not None and value <= above) or (most is not None and value > most)
        if bad:
            shown = repr(value).removesuffix(".0")  # 0 and 0.0 alike: a JSON 0 and the API's 0 read the same
            raise OptionError(f.name, f"{flag(f)} {shown}: {meta['rule']}")


@dataclasses.dataclass
class GenerationOptions:
    """How to generate; see `darknetpy generate --help`. The types are what a JSON request may give."""
    seed: Union[str, bytes] = option(SEED)  # fed first and echoed (str: UTF-8); empty: id 0
    length: int = option(1000, least=0, rule="give a number of symbols >= 0", flag="--len")
    temperature: float = option(0.7, above=0, rule="give a temperature > 0", flag="--temp")
    top_k: int = option(0, least=0, rule="give K >= 1, or 0 for every symbol", filter=True)
    top_p: float = option(1.0, above=0, most=1, rule="give P in (0, 1] (1 keeps every symbol)", filter=True)
    greedy: bool = option(False)
    beam: int = option(0, least=0, rule="give a width K >= 1, or 0 for no search")
    samples: int = option(1, least=1, rule="give N >= 1")
    stop: Union[str, bytes, List[Union[str, bytes]], None] = option(None)  # after `seed` is done
    srand: Optional[int] = option(None)

    def __post_init__(self):
        check_bounds(self)
        stop = [] if self.stop is None else [self.stop] if isinstance(self.stop, (str, bytes)) else list(self.stop)
        self.stop = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in stop]
        filtering = [flag(f) for f in dataclasses.fields(self) if f.name in self.filtering()]
        problems = [
            (self.beam and self.samples > 1, "beam",
             f"--beam finds one continuation: leave out --samples {self.samples}"),
            (self.beam and filtering, "beam",
             f"--beam searches, it does not sample: leave out {' and '.join(filtering)}"),
            (not all(self.stop), "stop", "--stop: give a non-empty text"),
        ]
        for bad, field, message in problems:
            if bad:
                raise OptionError(field, message)

    def filtering(self):
        """The names of the sampling filters given (each keeps every symbol at its default)."""
        return [f.name for f in dataclasses.fields(self) if f.metadata["filter"] and getattr(self, f.name) != f.default]


@dataclasses.dataclass
class ServeLimits:
    """What one request to `darknetpy serve` may ask; see `darknetpy serve --help`."""
    max_streams: int = 64      # streams stepped together: the requests running at once
    max_queue: int = 256       # requests waiting for streams
    max_prompt: int = 16384    # bytes of prompt
    max_length: int = 4096     # symbols generated per sample
    max_samples: int = 16      # n / samples / beam width
    api_key: Optional[str] = None


@dataclasses.dataclass
class TrainOptions:
    """Everything `Trainer` takes besides the cfg and the corpus; see `darknetpy train --help`."""
    # what an id is
    tokenized: bool = option(False)
    vocab: str = option(None)  # bytes|chars|words|FILE; in the record, the mode the run used
    max_vocab: int = option(None, least=2, rule="give N >= 2 (leave it out for no cap)")
    # how long, how fast
    max_batches: int = option(None)
    time_budget: str = option(None, WATCHING)  # seconds, or "10m", "1h30m" (parse_duration)
    learning_rate: float = option(None, above=0, rule="give a rate > 0 (leave it out for the cfg's)")
    srand: int = option(None)
    # held-out text
    valid_frac: float = option(None)
    valid_every: int = option(None, least=0, rule="give N >= 0 (0: only at the end)")  # None: train.VALID_EVERY,
    # or with --time-budget every tenth of the budget
    valid_full: bool = option(False)
    patience: int = option(None, least=1, rule="give a number of validations >= 1 (leave it out to never "
                                                 "stop early)")
    # what is written and shown
    save_every: int = option(2000, least=0, rule="give N >= 0 (0: never)")
    log_every: int = option(10, least=0, rule="give N >= 0 (0: only at validations and the end)")
    sample_every: int = option(0, WATCHING, least=0, rule="give N >= 0 (0: never)")
    sample_len: int = option(200, WATCHING, least=1, rule="give N >= 1")
    sample_temp: float = option(GenerationOptions.temperature, WATCHING, above=0, rule="give a temperature > 0")
    # the schedule of a continued run (set by --resume from the record, not by hand)
    stretch_schedule: bool = option(False)
    schedule_anchor: list = option(None)
    previous_end: int = option(None, THIS_CALL, resumed=True)
    # this call
    weights: str = option(None, THIS_CALL, resumed=True)
    backup: str = option("backup", THIS_CALL, resumed=True)
    clear: bool = option(False, THIS_CALL)
    overwrite: bool = option(False, THIS_CALL)
    resumed_from: str = option(None, THIS_CALL)
    progress: bool = option(True, THIS_CALL)

    def __post_init__(self):
        check_bounds(self)
        if self.time_budget is not None:
            parse_duration(self.time_budget)

    def record(self):
        """The `options` of the run record: the run's and the watching fields, as they are."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["kind"] != THIS_CALL}

    @classmethod
    def resumed(cls):
        """The fields --resume takes from the record (those not given on the command line)."""
        return {f.name for f in dataclasses.fields(cls) if f.metadata["resumed"]}


def flag(field):
    """The command-line flag of a dataclass field: its `flag`, else --its-name."""
    return field.metadata["flag"] or "--" + field.name.replace("_", "-")


UNITS = {"s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "mins": 60,
         "minute": 60, "minutes": 60, "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600}
DURATION_PART = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")


def parse_duration(text):
    """Seconds in a --time-budget: a number of seconds (600), or numbers with units, largest first
    (90s, 10m, 10min, 2h, 1h30m, 1.5h)."""
    value = str(text).strip().lower()
    parts, at = [], 0
    while at < len(value) and (m := DURATION_PART.match(value, at)):
        parts.append((float(m[1]), m[2]))
        at = m.end()
    units = [UNITS.get(unit, 0) if unit else None for _, unit in parts]
    bare = len(parts) == 1 and units[0] is None  # plain seconds
    ordered = all(u and (i == 0 or u < units[i - 1]) for i, u in enumerate(units))
    seconds = sum(number * (unit or 1) for (number, _), unit in zip(parts, units))
    if at < len(value) or not parts or not (bare or ordered) or not (seconds > 0 and math.isfinite(seconds)):
        raise DarknetpyError(f"--time-budget {text}: not a duration; give seconds (600) or numbers with "
                             "units s, m (min) or h, largest first (90s, 10m, 2h, 1h30m, 1.5h)")
    return seconds
