#!/usr/bin/env python3
"""Data-parallel training throughput: chars/s of `mpiexec -n K darknetpy train` for K = 1..N ranks,
one BLAS thread per rank, and one process with N BLAS threads for comparison (needs darknetpy[mpi]).

    python benchmarks/scaling.py                         # lstm2x256, K = 1..cores
    python benchmarks/scaling.py benchmarks/gru2x256.cfg --ranks 4 --datums 8 --repeat 3
    python benchmarks/scaling.py --model                 # the inputs of the scaling model, and its figures

What is timed: after one warm-up datum, `--datums` training datums (forward, backward, the update
with its gradient Allreduce, and the per-datum cost sum the trainer makes), by the library calls
`darknetpy train` makes, on rank 0's clock, without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE
(blas_env.py). --repeat alternates all configurations that many times and prints each
measurement, for a machine shared with others.

--model measures what the scaling model of benchmarks/README.md takes, on one thread: the cfg's
update at S/K streams per rank for K = 1, 2, 4, ... S (the compute one of K ranks does), and the
2-rank Allreduce of its gradient; then prints the update time it predicts for K ranks on one
machine and over a network, with a ring Allreduce, T = 2(K-1)/K * bytes / bandwidth + 2(K-1) * alpha:
shared memory at the bandwidth the 2-rank Allreduce shows and alpha = 5 us, 10 Gb/s Ethernet at
1.25 GB/s and alpha = 50 us.
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from blas_env import timed_env

HERE = Path(__file__).resolve().parent


# Run under mpiexec (or alone for K = 1): prints rank 0's chars/s.
TIMED = """
import sys, time
from darknetpy import data, parallel  # before numpy, as the darknetpy command: launcher.quiet_blas_workers
from darknetpy.network import Network
import numpy as np
cfg, corpus, datums = sys.argv[1], sys.argv[2], int(sys.argv[3])
ranks = parallel.start()
net = Network(cfg, seed=1)
batcher = data.StreamBatcher(data.load_corpus(corpus, net.inputs), net.streams, net.time_steps,
                             np.random.default_rng(1))
ranks.shard(net, cfg)

def datum():
    x, y = batcher.next_batch(ranks.part)
    updates = net.batch_num
    cost = ranks.sum(float(net.train_step(x, y, ranks.part, ranks.before_update)))
    if net.batch_num != updates:
        ranks.after_update(net)
    return cost
datum()
t0 = time.perf_counter()
for _ in range(datums):
    datum()
if ranks.writer:
    print(datums * net.streams * net.time_steps / (time.perf_counter() - t0))
"""

# One thread, alone: seconds per update at `streams` streams (subdivisions datums of that many).
COMPUTE = """
import sys, time
from darknetpy import data  # before numpy, as the darknetpy command: launcher.quiet_blas_workers
from darknetpy.network import Network
import numpy as np
cfg, corpus, streams, datums = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
subdivisions = Network(cfg).subdivisions
net = Network(cfg, seed=1, batch=streams)
batcher = data.StreamBatcher(data.load_corpus(corpus, net.inputs), streams, net.time_steps, np.random.default_rng(1))
net.train_step(*batcher.next_batch())
t0 = time.perf_counter()
for _ in range(datums):
    net.train_step(*batcher.next_batch())
print((time.perf_counter() - t0) / datums * subdivisions, sum(u.nbytes for _, u, _ in net.slots()))
"""

# Under mpiexec -n 2: seconds per Allreduce of `nbytes` of float32.
ALLREDUCE = """
import sys, time
import numpy as np
from mpi4py import MPI
buf = np.ones(int(sys.argv[1]) // 4, np.float32)
comm = MPI.COMM_WORLD
for _ in range(3):
    comm.Allreduce(MPI.IN_PLACE, buf)
comm.Barrier()
t0 = time.perf_counter()
for _ in range(20):
    comm.Allreduce(MPI.IN_PLACE, buf)
if comm.Get_rank() == 0:
    print((time.perf_counter() - t0) / 20)
"""
SHARED_ALPHA, NET_BANDWIDTH, NET_ALPHA = 5e-6, 1.25e9, 50e-6


def mpiexec():
    return shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")


def run(script, *args, ranks=1, threads=1):
    """The numbers `script` prints, run with `args` on `ranks` ranks of `threads` BLAS threads each."""
    cmd = [sys.executable, "-c", script, *map(str, args)]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    env = timed_env(OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return [float(v) for v in subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout.split()]


def ring(nbytes, k, bandwidth, alpha):
    """Seconds of a ring Allreduce of nbytes over k ranks."""
    return 2 * (k - 1) / k * nbytes / bandwidth + 2 * (k - 1) * alpha


def model(cfg, corpus, datums, repeat):
    """Print the scaling model's inputs, measured (the fastest of `repeat`, taking turns), and the
    update times it predicts."""
    from darknetpy.network import Network
    net = Network(cfg)
    streams = net.streams
    least = 2 if any(layer.bn_over == "streams" and any(d.bn for d in layer.denses) for layer in net.layers) else 1
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64) if streams % k == 0 and streams // k >= least]
    compute = {k: float("inf") for k in ks}
    for _ in range(repeat):
        for k in ks:
            seconds, nbytes = run(COMPUTE, cfg, corpus, streams // k, datums)
            compute[k] = min(compute[k], seconds)
    two = min(run(ALLREDUCE, int(nbytes), ranks=2)[0] for _ in range(repeat))
    bandwidth = nbytes / (two - 2 * SHARED_ALPHA)  # the 2-rank ring moves bytes once each way
    print(f"{Path(cfg).name}: {streams} streams, gradient {nbytes / 1e6:.2f} MB; one thread per rank")
    print(f"  2-rank Allreduce measured: {two * 1e3:.2f} ms (shared-memory bandwidth {bandwidth / 1e9:.2f} GB/s)")
    print("  K   streams/rank  compute/update  shared memory: +Allreduce  speedup   10 Gb/s: +Allreduce  speedup")
    for k in ks:
        local, wire = ring(nbytes, k, bandwidth, SHARED_ALPHA), ring(nbytes, k, NET_BANDWIDTH, NET_ALPHA)
        print(f"  {k:<3} {streams // k:>12}  {compute[k] * 1e3:11.1f} ms  {local * 1e3:18.2f} ms  "
              f"{compute[1] / (compute[k] + local):6.2f}x  {wire * 1e3:12.2f} ms  {compute[1] / (compute[k] + wire):6.2f}x")


def rate(cfg, corpus, ranks, threads, datums):
    """chars/s of training with `ranks` ranks of `threads` BLAS threads each."""
    return run(TIMED, cfg, corpus, datums, ranks=ranks, threads=threads)[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cfg", nargs="?", default=str(HERE / "lstm2x256.cfg"),
                        help="training cfg (default: benchmarks/lstm2x256.cfg)")
    parser.add_argument("--corpus", default=str(HERE.parent / "data" / "tinyshakespeare.txt"),
                        help="training text (default: data/tinyshakespeare.txt)")
    parser.add_argument("--ranks", type=int, default=os.cpu_count(), help="largest K (default: the CPU count)")
    parser.add_argument("--datums", type=int, default=8, help="timed datums per measurement (default: 8)")
    parser.add_argument("--repeat", type=int, default=1, help="alternate all runs this many times (default: 1)")
    parser.add_argument("--model", action="store_true",
                        help="measure the scaling model's inputs (one thread) and print its predictions instead")
    args = parser.parse_args()
    if args.model:
        return model(args.cfg, args.corpus, args.datums, args.repeat)
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
