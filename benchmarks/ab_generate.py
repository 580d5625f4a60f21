#!/usr/bin/env python3
"""Generation speed of two darknetpy trees in ONE process, taking turns measure by measure.

    python benchmarks/ab_generate.py OLD_TREE [config ...] [--rounds N] [--samples S]

As ab_same.py does for training: the darknetpy this interpreter imports is NEW, OLD_TREE's package
(its C extension built in place) is imported beside it as `darknetpy_old`. For each config (batch 1,
random weights, the same in both) each round times, for old and new in turn (alternating which
goes first), generate_speed.py's measures: `generate` of 1 sample and of S samples (net of
start-up), and `predict` fed back its argmax. Prints the medians of each and new/old as the median
of the paired ratios (> 1: the new tree is faster). OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset by
re-running itself without them (blas_env.py).
"""
import argparse
import os
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from blas_env import MACHINE_VARS, timed_env  # noqa: E402
from generate_speed import generate_rate, predict_rate  # noqa: E402
from throughput import CONFIGS  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("configs", nargs="*", default=["lstm2x256", "gru2x256", "rnn3x256"])
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every measure (default 5)")
    ap.add_argument("--samples", type=int, default=32, help="streams of the many-samples measure (default 32)")
    args = ap.parse_args()
    if any(k in os.environ for k in MACHINE_VARS):
        os.execve(sys.executable, [sys.executable, *sys.argv], timed_env())
    link = Path(tempfile.mkdtemp()) / "darknetpy_old"
    os.symlink(args.old.resolve() / "darknetpy", link)
    sys.path.insert(0, str(link.parent))
    import darknetpy as new
    import darknetpy_old as old
    for name in args.configs:
        cfg = HERE / CONFIGS[name][0] if name in CONFIGS else Path(name).resolve()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nets = {"old": old.load_network(cfg, batch=1, time_steps=1), "new": new.load_network(cfg, batch=1, time_steps=1)}
        for key, value in nets["new"].params().items():
            nets["old"].params()[key][...] = value
        nets["old"].refresh()
        measures = {"generate, 1 sample": lambda net: generate_rate(net, 1),
                    f"generate, {args.samples} samples": lambda net: generate_rate(net, args.samples),
                    "predict, ids": lambda net: predict_rate(net, one_hot=False)}
        rates = {(m, w): [] for m in measures for w in nets}
        for k in range(args.rounds + 1):  # a first untimed round: caches, BLAS threads
            for m, measure in measures.items():
                for which in (("old", "new") if k % 2 == 0 else ("new", "old")):
                    rate = measure(nets[which])
                    if k:
                        rates[m, which].append(rate)
        for m in measures:
            o, n = rates[m, "old"], rates[m, "new"]
            paired = statistics.median(b / a for a, b in zip(o, n))
            print(f"{name:14s} {m:22s} old {statistics.median(o):9,.0f} new {statistics.median(n):9,.0f} chars/s "
                  f"(medians)   new/old {paired:.3f} (paired)", flush=True)


if __name__ == "__main__":
    main()
