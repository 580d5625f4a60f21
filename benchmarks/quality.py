"""The 10-minute quality measurement of issue 16: train for a time budget, score the held-out tail.

For each seed, in a fresh backup directory, one after another:

    darknetpy train CFG DATA --time-budget BUDGET --srand SEED --backup DIR
    darknetpy valid CFG DIR/<cfg>_final.weights DIR/tail.txt

The train command is the README's first command plus those three options. `darknetpy train` holds
out the last `int(len * 0.05)` bytes of DATA by default (data.split_corpus) and never trains on
them; this script writes exactly that tail, checks from the run record that the trainer held out
the same number of bytes (so the scored text was never trained on), and scores it with
`darknetpy valid`: in order, the state carried, the whole tail. It scores the FINAL weights, not
`_best.weights` (the best is chosen on this same tail, which would be tuning on the score).

--budget none trains to the cfg's max_batches instead: a fixed amount of work, so the bpc does not
depend on the machine's load (for tuning on a shared machine, with max_batches set to what the
shape reaches in the budget on an idle one). Two such runs may share the machine, one BLAS thread
each (OPENBLAS_NUM_THREADS=1): the figures stay the same, only slower to get.

--dev does the same inside the first 95%: DATA's first 95% becomes the corpus (train then holds
out the last 5% of that), so a recipe can be chosen without ever looking at the real tail.

    python benchmarks/quality.py                                   # cfg/shakespeare.cfg, 600 s, seed 1
    python benchmarks/quality.py --seeds 1 2 3 --json quality.json # issue 16's three runs
    python benchmarks/quality.py --cfg benchmarks/shakespeare-candidates/X.cfg --dev --seeds 1 2

stdout: one line per seed and the mean; progress goes to stderr. A benchmark, not a test.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import yaml

from blas_env import timed_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VALID_FRAC = 0.05  # darknetpy train's default --valid-frac (darknetpy.data.VALID_FRAC)
BPC_LINE = re.compile(rb"BPC:\s*([0-9.]+)")


def split_tail(text, frac=VALID_FRAC):
    """(head, tail) as `darknetpy train` splits a byte corpus: the tail is the last int(len*frac) bytes."""
    n_tail = int(len(text) * frac)
    return text[:len(text) - n_tail], text[len(text) - n_tail:]


def darknetpy(*args, stdout=None):
    """Run the darknetpy CLI of this venv in a subprocess, without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE
    (blas_env.py); its stderr goes to ours."""
    return subprocess.run([sys.executable, "-m", "darknetpy", *args], stdout=stdout, check=True, env=timed_env())


def run_seed(cfg, data, budget, seed, backup_root, dev):
    """Train one seed in a fresh directory and score the held-out tail; returns a result dict."""
    run_dir = tempfile.mkdtemp(prefix=f"{os.path.splitext(os.path.basename(cfg))[0]}-seed{seed}-",
                               dir=backup_root)
    with open(data, "rb") as f:
        corpus = f.read()
    if dev:  # the recipe-tuning split: the first 95% is the whole corpus
        corpus = split_tail(corpus)[0]
        data = os.path.join(run_dir, "dev-corpus.txt")
        with open(data, "wb") as f:
            f.write(corpus)
    head, tail = split_tail(corpus)
    tail_path = os.path.join(run_dir, "tail.txt")
    with open(tail_path, "wb") as f:
        f.write(tail)

    budget_args = [] if budget == "none" else ["--time-budget", str(budget)]
    args = ["train", cfg, data, *budget_args, "--srand", str(seed), "--backup", run_dir]
    print(f"quality: seed {seed}: darknetpy {' '.join(args)}", file=sys.stderr, flush=True)
    t0 = time.time()
    darknetpy(*args)
    wall = time.time() - t0
    record_path = os.path.join(run_dir, os.path.splitext(os.path.basename(cfg))[0] + ".yaml")
    with open(record_path) as f:
        record = yaml.safe_load(f)
    hyper = record["hyperparameters"]
    if (hyper["valid_chars"], hyper["train_chars"]) != (len(tail), len(head)):
        sys.exit(f"quality: {record_path}: the trainer held out {hyper['valid_chars']} of "
                 f"{hyper['valid_chars'] + hyper['train_chars']} bytes, not the {len(tail)} scored here")
    final = os.path.join(run_dir, record["checkpoints"]["final"])  # the record names it relative to its folder

    out = darknetpy("valid", cfg, final, tail_path, stdout=subprocess.PIPE).stdout
    bpc = float(BPC_LINE.findall(out)[-1])
    progress = record["progress"]
    result = {"seed": seed, "bpc": bpc, "weights": final, "record": record_path,
              "iterations": progress["iteration"], "max_batches": record["options"]["max_batches"],
              "train_seconds": progress["seconds"], "wall_seconds": round(wall, 1),
              "stop_reason": record.get("stop_reason"), "tail_chars": len(tail)}
    print(f"seed {seed}: {bpc:.4f} bpc on the held-out {len(tail)} chars "
          f"(iteration {result['iterations']} of {result['max_batches']}, {result['train_seconds']} s)", flush=True)
    return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cfg", default=os.path.join(ROOT, "cfg", "shakespeare.cfg"), help="default: cfg/shakespeare.cfg")
    ap.add_argument("--data", default=os.path.join(ROOT, "data", "tinyshakespeare.txt"),
                    help="default: data/tinyshakespeare.txt")
    ap.add_argument("--budget", "--time-budget", default="600", help="train's --time-budget; none: the cfg's max_batches (default: 600 s)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1], help="train's --srand, one run each (default: 1)")
    ap.add_argument("--backup-root", default="quality-runs",
                    help="each run gets a fresh directory under it (default: ./quality-runs)")
    ap.add_argument("--dev", action="store_true",
                    help="score the last 5%% of the first 95%% instead of the real tail (for choosing a recipe)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write every result there (default: none)")
    args = ap.parse_args()

    os.makedirs(args.backup_root, exist_ok=True)
    print(f"quality: load average before: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    results = [run_seed(args.cfg, args.data, args.budget, seed, args.backup_root, args.dev) for seed in args.seeds]
    mean = sum(r["bpc"] for r in results) / len(results)
    print(f"mean: {mean:.4f} bpc over seeds {' '.join(str(s) for s in args.seeds)}"
          f"{' (dev split)' if args.dev else ''}")
    print(f"quality: load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cfg": args.cfg, "data": args.data, "budget": args.budget, "dev": args.dev,
                       "mean_bpc": mean, "runs": results}, f, indent=1)


if __name__ == "__main__":
    main()
