#!/usr/bin/env python3
"""Data-parallel training throughput: chars/s of `mpiexec -n K darknetpy train` for K = 1..N ranks,
one BLAS thread per rank, and one process with N BLAS threads for comparison (needs darknetpy[mpi]).

    python benchmarks/scaling.py                         # lstm2x256, K = 1..cores
    python benchmarks/scaling.py benchmarks/gru2x256.cfg --ranks 4 --datums 8 --repeat 3

What is timed: after one warm-up datum, `--datums` training datums (forward, backward, the update
with its gradient Allreduce, and the per-datum cost sum the trainer makes), by the library calls
`darknetpy train` makes, on rank 0's clock. --repeat alternates all configurations that many times
and prints each measurement, for a machine shared with others.
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


# Run under mpiexec (or alone for K = 1): prints rank 0's chars/s.
TIMED = """
import sys, time
import numpy as np
from darknetpy import data, parallel
from darknetpy.network import Network
cfg, corpus, datums = sys.argv[1], sys.argv[2], int(sys.argv[3])
ranks = parallel.start()
net = Network(cfg, seed=1)
batcher = data.StreamBatcher(data.load_corpus(corpus, net.inputs), net.streams, net.time_steps,
                             np.random.default_rng(1))
ranks.shard(net, batcher, cfg)

def datum():
    x, y = batcher.next_batch()
    return ranks.sum(float(net.train_step(x, y)))
datum()
t0 = time.perf_counter()
for _ in range(datums):
    datum()
if ranks.writer:
    print(datums * net.streams * net.time_steps / (time.perf_counter() - t0))
"""


def rate(cfg, corpus, ranks, threads, datums):
    """chars/s of training with `ranks` ranks of `threads` BLAS threads each."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", TIMED, str(cfg), str(corpus), str(datums)]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
        cmd = [mpiexec, "-n", str(ranks), *cmd]
    return float(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cfg", nargs="?", default=str(HERE / "lstm2x256.cfg"),
                        help="training cfg (default: benchmarks/lstm2x256.cfg)")
    parser.add_argument("--corpus", default=str(HERE.parent / "data" / "tinyshakespeare.txt"),
                        help="training text (default: data/tinyshakespeare.txt)")
    parser.add_argument("--ranks", type=int, default=os.cpu_count(), help="largest K (default: the CPU count)")
    parser.add_argument("--datums", type=int, default=8, help="timed datums per measurement (default: 8)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate all runs this many times (default: 1)")
    args = parser.parse_args()
    runs = [(1, args.ranks)] + [(k, 1) for k in range(1, args.ranks + 1)]
    results = {run: [] for run in runs}
    for _ in range(args.repeat):
        for ranks, threads in runs:
            results[ranks, threads].append(rate(args.cfg, args.corpus, ranks, threads, args.datums))
    base = max(results[1, args.ranks])
    print(f"{Path(args.cfg).name}: training chars/s (best of {args.repeat}; each measurement in brackets)")
    for (ranks, threads), rates in results.items():
        each = ", ".join(f"{r:.0f}" for r in rates)
        print(f"  {ranks} rank(s) x {threads} BLAS thread(s): {max(rates):8.0f}  "
              f"({max(rates) / base:.2f}x the 1 x {args.ranks} process)  [{each}]")


if __name__ == "__main__":
    main()
