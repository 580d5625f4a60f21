#!/usr/bin/env python3
"""The GRU's or LSTM's C step loops, forward then back, with float32 and with bf16 (AMX) products,
in turns.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/amx_loops.py [--kind gru]
        [--units 384 256] [--streams 32] [--steps 64] [--rounds 30] [--threads 2]

For each width: the arrays of one training datum (T steps of S streams, random weights and input
projections), then `rounds` rounds each timing the loop and its way back once with float32
products and once with a trailing bf16=1, which first alternating, so a loaded machine's drift reaches both alike. Prints the
median ms of each and the median of the paired ratios fp32/bf16, and the other processes' load
(throughput.other_load) before and after.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

from darknetpy import _kernels as K  # before numpy: darknetpy's launcher.quiet_blas_workers

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import other_load  # noqa: E402


def arrays(kind, n, S, T, rng):
    """The loop's arrays (training: the GRU's P and RHrows too; the LSTM without peepholes) and its way
    back's, with the state before random; then the way back's dh (and dc), to zero before each run."""
    W = lambda r, c: (rng.standard_normal((r, c)) / np.sqrt(c)).astype(np.float32)  # noqa: E731
    state, DY = rng.uniform(-1, 1, (T + 1, n, S)).astype(np.float32), rng.standard_normal((T, S, n)).astype(np.float32)
    if kind == "gru":
        f = [False, W(2 * n, n), W(n, n), rng.standard_normal((T, 3 * n, S)).astype(np.float32),
             np.zeros((T, 2 * n, S), np.float32), np.zeros((T, n, S), np.float32), np.zeros((T, n, S), np.float32),
             state, np.zeros((T, S, n), np.float32), np.zeros((T, 3 * n, S), np.float32), np.zeros((T, S, n), np.float32)]
        b = [np.ascontiguousarray(f[1].T), np.ascontiguousarray(f[2].T), DY, f[4], f[9],
             np.zeros((T, S, 3 * n), np.float32), np.zeros(3 * n, np.float32), np.zeros((n, S), np.float32)]
        return f, b, b[7:]
    f = [W(4 * n, n), rng.standard_normal((T, 4 * n, S)).astype(np.float32), np.zeros((T, 4 * n, S), np.float32),
         state.copy(), np.zeros((T, n, S), np.float32), state, np.zeros((T, S, n), np.float32)]
    b = [np.ascontiguousarray(f[0].T), DY, f[2], f[3], f[4], np.zeros((T, S, 4 * n), np.float32),
         np.zeros(4 * n, np.float32), np.zeros((n, S), np.float32), np.zeros((n, S), np.float32)]
    return f, b, b[7:]


def timed(loop, loop_back, f, b, zeroed, bf16):
    for a in zeroed:
        a[...] = 0
    flag = (1,) if bf16 else ()
    t0 = time.perf_counter()
    loop(*f, *flag)
    loop_back(*b, *flag)
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=["gru", "lstm"], default="gru", help="the layer's loops (default: gru)")
    ap.add_argument("--units", type=int, nargs="+", default=[384, 256], help="the GRU widths n (default: 384 256)")
    ap.add_argument("--streams", type=int, default=32, help="streams S (default: 32)")
    ap.add_argument("--steps", type=int, default=64, help="time steps T (default: 64)")
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds of each per width (default: 30)")
    ap.add_argument("--threads", type=int, default=2, help="the loops' threads, _kernels.loop_threads (default: 2)")
    args = ap.parse_args()
    if not getattr(K, "amx", False):
        sys.exit("darknetpy: this module has no AMX loops (_kernels.amx is False): nothing to compare")
    print(f"# other processes' load before: {other_load():.2f} cores; loop threads {K.loop_threads(args.threads)}",
          file=sys.stderr)
    loops = getattr(K, f"{args.kind}_loop"), getattr(K, f"{args.kind}_loop_back")
    for n in args.units:
        f, b, zeroed = arrays(args.kind, n, args.streams, args.steps, np.random.default_rng(0))
        for bf16 in (0, 1):  # warm: the work arrays, the team, the pages
            timed(*loops, f, b, zeroed, bf16)
        times = {0: [], 1: []}
        for r in range(args.rounds):
            for bf16 in ((0, 1) if r % 2 == 0 else (1, 0)):
                times[bf16].append(timed(*loops, f, b, zeroed, bf16))
        ratio = statistics.median(a / c for a, c in zip(times[0], times[1]))
        print(f"[{args.kind}] n={n} S={args.streams} T={args.steps}: fp32 {1e3 * statistics.median(times[0]):.2f} ms, "
              f"bf16 {1e3 * statistics.median(times[1]):.2f} ms (medians of {args.rounds}); fp32/bf16 paired median "
              f"{ratio:.2f}")
    print(f"# other processes' load after: {other_load():.2f} cores", file=sys.stderr)


if __name__ == "__main__":
    main()
