"""`darknetpy plot`: the curves of one or more runs from their metrics logs, as one PNG.

Left panel against iterations, right panel against wall time; in both, the training loss (its
running average, converted from nats to bits per character, or per token for a words vocabulary
or tokenized ids, so it shares the axis with the held-out figure) as a line and the validations
as dots, each run in its own colour, the best validation of each run marked with a star.
matplotlib is imported only here, and only when a figure is drawn (the optional extra
`darknetpy[plot]`).
"""
import math
import os

import numpy as np

from . import checkpoint as ckpt
from . import metrics as metricsmod
from .errors import DarknetpyError


def run_metrics(path):
    """(label, metrics) of a RUN: a run record .yaml (its `metrics` log) or a metrics .csv."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except (OSError, UnicodeDecodeError) as e:
        raise DarknetpyError(f"cannot read it ({getattr(e, 'strerror', None) or e}); give a run record "
                             "BACKUP/<cfg>.yaml or a BACKUP/<cfg>.metrics.csv", path) from None
    if first.startswith(metricsmod.COLUMNS[0] + ","):
        csv_path = path
    else:
        record = ckpt.earlier_record(path)
        if not {"cfg", "checkpoints"} <= set(record):
            raise DarknetpyError("neither a run record nor a metrics CSV; give BACKUP/<cfg>.yaml or "
                                 "BACKUP/<cfg>.metrics.csv", path)
        folder = os.path.dirname(os.path.abspath(path))  # the record names its files relative to it
        csv_path = ckpt.resolve(record.get("metrics") or ckpt.cfg_base(record["cfg"]) + ".metrics.csv", folder)
        if not os.path.exists(csv_path):
            raise DarknetpyError(f"the run record's metrics log {csv_path} does not exist (a run "
                                 "from before metrics logs?)", path)
    name = os.path.basename(str(csv_path))
    label = name[:-len(".metrics.csv")] if name.endswith(".metrics.csv") else name
    return label, metricsmod.read_metrics(csv_path)


def per_token(path):
    """Whether a RUN's held-out figure is bits per token (a words vocabulary or --tokenized ids, as
    its run record says: the .yaml given, or the one beside a metrics .csv), not per character."""
    if path.endswith(".metrics.csv"):
        path = path[:-len(".metrics.csv")] + ".yaml"
    record = ckpt.earlier_record(path) if path.endswith(".yaml") else {}
    vocab = (record.get("corpus") or {}).get("vocab") or {}
    return vocab.get("mode") == "words" or bool((record.get("options") or {}).get("tokenized"))


def best_point(m):
    """(iteration, seconds, bpc) of the lowest valid_bpc, or None when there is no validation."""
    v = m["valid_bpc"]
    if np.isnan(v).all():
        return None
    i = int(np.nanargmin(v))
    return m["iteration"][i], m["seconds"][i], v[i]


def _time_axis(seconds):
    """(divisor, unit) that keeps the wall-time axis in readable numbers."""
    top = np.nanmax(seconds) if len(seconds) else 0
    return (3600, "h") if top >= 3 * 3600 else (60, "min") if top >= 180 else (1, "s")


def plot(runs, output=None):
    """Write the figure of `runs` (paths) to `output` (default: the first run's path + .png);
    returns the path written."""
    loaded = [run_metrics(r) for r in runs]  # every input checked before matplotlib is needed
    tokens = [per_token(str(r)) for r in runs]
    labels = [label for label, _ in loaded]
    if len(set(labels)) < len(labels):  # the same cfg in several BACKUP dirs: name the dirs too
        labels = [f"{os.path.basename(os.path.dirname(os.path.abspath(r)))}/{label}" for r, label in zip(runs, labels)]
    try:
        import matplotlib
    except ImportError:
        raise DarknetpyError('plot needs matplotlib: pip install "darknetpy[plot]"') from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = output or os.path.splitext(runs[0])[0] + ".png"
    div, unit = _time_axis(np.concatenate([m["seconds"] for _, m in loaded]))
    fig, (by_it, by_time) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True, constrained_layout=True)
    for k, (label, (_, m), token) in enumerate(zip(labels, loaded, tokens)):
        color = f"C{k % 10}"
        train = m["avg_loss"] / math.log(2)  # nats -> bits per character (token)
        v = ~np.isnan(m["valid_bpc"])
        best = best_point(m)
        for ax, x in ((by_it, m["iteration"]), (by_time, m["seconds"] / div)):
            ax.plot(x, train, color=color, lw=1.2, alpha=0.8, label=f"{label}: train (running avg)")
            ax.plot(x[v], m["valid_bpc"][v], "o--", color=color, ms=4, lw=1, label=f"{label}: held-out")
            if best is not None:
                bx = best[0] if ax is by_it else best[1] / div
                ax.plot([bx], [best[2]], "*", color=color, ms=16, mec="black", mew=0.8,
                        label=f"{label}: best {best[2]:.3f} {'bits per token' if token else 'bpc'} "
                              f"at iteration {int(best[0])}")
                ax.annotate(f"best {best[2]:.3f}", (bx, best[2]), xytext=(-10, 10), textcoords="offset points",
                            ha="right", fontsize=9, color=color)
    by_it.set_xlabel("iteration (datums trained)")
    by_time.set_xlabel(f"training wall time ({unit})")
    by_it.set_ylabel("bits per token" if all(tokens) else "bits per character (bpc)" if not any(tokens)
                     else "bits per character (bpc) or per token")
    by_it.set_title("against iterations")
    by_time.set_title("against wall time")
    for ax in (by_it, by_time):
        ax.grid(True, alpha=0.3)
    by_it.legend(fontsize=8, loc="upper right")
    fig.suptitle("darknetpy: " + ", ".join(labels))
    try:
        fig.savefig(output, dpi=110)
    except OSError as e:
        raise DarknetpyError(f"cannot write the figure ({e.strerror or e})", output) from None
    finally:
        plt.close(fig)
    return output
