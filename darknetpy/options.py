"""The options of a training run, each with its default and its check written once.

`TrainOptions` is what `darknetpy train` and `darknetpy.train.train(cfg, data, **options)` build
and what `train.Trainer` takes. Its fields come in three kinds (a field's `metadata`):

    run        recorded in the run record's `options` and read back by --resume (unless given again)
    watching   recorded, but not carried over by --resume (samples, the time budget: per command)
    this call  neither (the checkpoint to start from, the folder, how to show progress): the record
               names the start under `started_from`, and --resume reads the folder and the latest
               checkpoint from the record itself

A field with a lower bound (`least`, `above`) is checked here with a one-line DarknetpyError, and
the CLI gives click the same bound (cli.py reads it from the metadata), so `--help` shows it.
"""
import dataclasses
import math
import re

from .errors import DarknetpyError

RUN, WATCHING, THIS_CALL = "run", "watching", "this call"


def option(default, kind=RUN, least=None, above=None, resumed=None, rule=None):
    """A field: its default, its kind, its bound (>= least or > above), whether --resume reads it
    back (the run's options do), and the words of its error after the value ("give N >= 0")."""
    return dataclasses.field(default=default, metadata={
        "kind": kind, "least": least, "above": above, "resumed": kind == RUN if resumed is None else resumed,
        "rule": rule})


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
    valid_every: int = option(500, least=0, rule="give N >= 0 (0: only at the end)")
    valid_full: bool = option(False)
    patience: int = option(None, least=1, rule="give a number of validations >= 1 (leave it out to never "
                                                 "stop early)")
    # what is written and shown
    save_every: int = option(2000, least=0, rule="give N >= 0 (0: never)")
    log_every: int = option(10, least=0, rule="give N >= 0 (0: only at validations and the end)")
    sample_every: int = option(0, WATCHING, least=0, rule="give N >= 0 (0: never)")
    sample_len: int = option(200, WATCHING, least=1, rule="give N >= 1")
    sample_temp: float = option(0.7, WATCHING, above=0, rule="give a temperature > 0")
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
        for f in dataclasses.fields(self):
            value, meta = getattr(self, f.name), f.metadata
            if value is None or (meta["least"] is None and meta["above"] is None):
                continue
            bad = not math.isfinite(value) or (meta["least"] is not None and value < meta["least"]) \
                or (meta["above"] is not None and value <= meta["above"])
            if bad:
                raise DarknetpyError(f"{flag(f.name)} {value}: {meta['rule']}")
        if self.time_budget is not None:
            parse_duration(self.time_budget)

    def record(self):
        """The `options` of the run record: the run's and the watching fields, as they are."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["kind"] != THIS_CALL}

    @classmethod
    def resumed(cls):
        """The fields --resume takes from the record (those not given on the command line)."""
        return {f.name for f in dataclasses.fields(cls) if f.metadata["resumed"]}


def flag(name):
    """The command-line flag of field `name`."""
    return "--" + name.replace("_", "-")


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
