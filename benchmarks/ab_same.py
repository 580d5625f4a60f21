#!/usr/bin/env python3
"""Training step time of two darknetpy trees in ONE process, taking turns step by step.

    python benchmarks/ab_same.py OLD_TREE [config ...] [--steps N]

The darknetpy this interpreter imports is NEW; OLD_TREE's package (its C extension built in place)
is imported beside it as `darknetpy_old`. For each config both build the network (seed 0) and run
`train_step` on the same random ids, one step each in turn, alternating which goes first, so a
noisy machine's drift reaches both alike (ab.py alternates whole processes instead). Prints the
median chars/s of each and NEW/OLD as the ratio of medians, of bests, and the median of the paired
step-time ratios. Configs are the standard names of throughput.py or .cfg paths.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import CONFIGS  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("configs", nargs="*", default=["lstm2x256", "gru2x256", "rnn3x256"])
    ap.add_argument("--steps", type=int, default=40, help="timed steps per tree and config (default 40)")
    args = ap.parse_args()
    link = Path(tempfile.mkdtemp()) / "darknetpy_old"
    os.symlink(args.old.resolve() / "darknetpy", link)
    sys.path.insert(0, str(link.parent))
    import darknetpy.network as new
    import darknetpy_old.network as old
    for name in args.configs:
        cfg = HERE / CONFIGS[name][0] if name in CONFIGS else Path(name).resolve()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nets = {"old": old.Network(cfg, seed=0), "new": new.Network(cfg, seed=0)}
        T, S, n = nets["new"].time_steps, nets["new"].streams, nets["new"].inputs
        rng = np.random.default_rng(0)
        data = [(rng.integers(0, n, (T, S)), rng.integers(0, nets["new"].outputs, (T, S))) for _ in range(8)]
        times = {"old": [], "new": []}
        for k in range(args.steps + 2):  # two untimed steps first
            for which in (("old", "new") if k % 2 == 0 else ("new", "old")):
                x, y = data[k % len(data)]
                t = time.perf_counter()
                nets[which].train_step(x, y)
                if k >= 2:
                    times[which].append(time.perf_counter() - t)
        med = {w: statistics.median(v) for w, v in times.items()}
        paired = statistics.median(o / m for o, m in zip(times["old"], times["new"]))
        print(f"{name:20s} old {T * S / med['old']:9,.0f} new {T * S / med['new']:9,.0f} chars/s (medians)   "
              f"new/old {med['old'] / med['new']:.3f} (medians) {min(times['old']) / min(times['new']):.3f} "
              f"(bests) {paired:.3f} (paired)", flush=True)


if __name__ == "__main__":
    main()
