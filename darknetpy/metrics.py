"""The metrics log BACKUP/<cfg>.metrics.csv: a header row, then one row every `--log-every`
iterations and one at every validation, flushed as it is written (so `tail -f` or a notebook can
watch a run live). `darknetpy plot` reads it.

Columns (an empty cell is a value this row does not have):
    iteration      datums trained so far (Darknet's i)
    seconds        training wall time, summed over the run's resumes
    epoch          characters seen / training characters
    loss           this iteration's loss, nats per character (Darknet's cost / characters)
    avg_loss       its running average (0.9 old + 0.1 new), nats per character
    learning_rate  the rate of the most recent update
    chars_per_s    training characters per second since the previous row
    valid_bpc      held-out bits per character (only on rows with a validation)
"""
import csv
import os

import numpy as np

from . import atomic
from .errors import DarknetpyError

COLUMNS = ("iteration", "seconds", "epoch", "loss", "avg_loss", "learning_rate", "chars_per_s", "valid_bpc")


def _cell(value):
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.6g}"


class MetricsLog:
    """Appends rows to `path`. With `keep_until` (the iteration of the checkpoint a run continues
    from) the rows up to it are kept and later ones dropped, so no iteration appears twice; without
    it the file starts afresh."""

    def __init__(self, path, keep_until=None):
        self.path = path
        kept = []
        if keep_until is not None and os.path.exists(path):
            try:
                with open(path, newline="", encoding="utf-8") as f:
                    kept = [r for r in csv.DictReader(f) if int(r["iteration"]) <= keep_until]
            except (OSError, ValueError, KeyError, TypeError, csv.Error):
                kept = []  # not a log we wrote: start afresh
        lines = [",".join(COLUMNS)] + [",".join(r.get(c) or "" for c in COLUMNS) for r in kept]
        atomic.write(path, ("\n".join(lines) + "\n").encode())
        self.file = open(path, "a", encoding="utf-8", newline="")

    def row(self, **values):
        """One row; `values` are keyed by COLUMNS (a missing one is empty). Flushed at once."""
        self.file.write(",".join(_cell(values.get(c)) for c in COLUMNS) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def read_metrics(path):
    """{column: float64 array (NaN where empty)} of a metrics CSV; refuses anything else, and a
    log with no rows."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(header[:len(COLUMNS)]) != COLUMNS:
                raise DarknetpyError(f"not a darknetpy metrics CSV (its header should be {','.join(COLUMNS)})", path)
            rows = [r for r in reader if r]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DarknetpyError(f"cannot read the metrics CSV ({getattr(e, 'strerror', None) or e})", path) from None
    if not rows:
        raise DarknetpyError("the metrics CSV has no rows yet; train longer (a row comes every "
                             "--log-every iterations)", path)
    try:
        table = np.array([[float(v) if v else np.nan for v in r[:len(COLUMNS)]] for r in rows])
    except ValueError as e:
        raise DarknetpyError(f"a row of the metrics CSV is not numbers ({e})", path) from None
    if table.shape[1] != len(COLUMNS):
        raise DarknetpyError(f"the metrics CSV's rows should have {len(COLUMNS)} columns", path)
    return {c: table[:, i] for i, c in enumerate(COLUMNS)}
