#!/usr/bin/env python3
"""Training chars/s of two darknetpy source trees on the same configs, taking turns.

    python benchmarks/ab.py OLD_TREE NEW_TREE [config ...] [--rounds N]

Each tree is a checkout with its C extension built in place (`python setup.py build_ext --inplace`).
Every round runs one fresh process per tree and config, alternating which tree goes first, so
both meet the same drift of this noisy machine; the table gives each tree's best and median
chars/s (darknetpy.measure.measure_train) and NEW / OLD of the medians and of the bests.
Configs are the standard names of throughput.py or .cfg paths; default: all standard training configs.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from throughput import CONFIGS  # noqa: E402

CODE = ("import json, sys; from darknetpy import measure; "
        "print(json.dumps(measure.measure_train(sys.argv[1], iterations=int(sys.argv[2]), warmup=2)['chars_per_s']))")


def measure(tree, cfg, iterations):
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["PYTHONPATH"] = str(tree)
    out = subprocess.run([sys.executable, "-c", CODE, str(cfg), str(iterations)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("configs", nargs="*", default=[n for n, c in CONFIGS.items() if c[1]])
    ap.add_argument("--rounds", type=int, default=5, help="processes per tree and config (default 5)")
    args = ap.parse_args()
    results = {}
    for name in args.configs:
        cfg = (HERE / CONFIGS[name][0]) if name in CONFIGS else Path(name).resolve()
        iterations = CONFIGS[name][3] if name in CONFIGS else 5
        runs = {"old": [], "new": []}
        for r in range(args.rounds):
            for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
                runs[which].append(measure(getattr(args, which), cfg, iterations))
        results[name] = runs
        old, new = runs["old"], runs["new"]
        print(f"{name:15s} old {max(old):9,.0f} best {statistics.median(old):9,.0f} median   "
              f"new {max(new):9,.0f} best {statistics.median(new):9,.0f} median   "
              f"new/old {statistics.median(new) / statistics.median(old):.3f} (medians) "
              f"{max(new) / max(old):.3f} (bests)", flush=True)


if __name__ == "__main__":
    main()
