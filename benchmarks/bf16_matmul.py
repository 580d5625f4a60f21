#!/usr/bin/env python3
"""GFLOP/s of numpy's float32 matmul and of the AMX bfloat16 kernel (_amx.h, op matmul_bf16) at the
shapes of the demo's training step (cfg/shakespeare.cfg: 2x[gru] 384, 32 streams x 64 steps, so
2048 rows; 1152 = 3 x 384 gate columns; 256 the vocabulary), taking turns call by call.

    python benchmarks/bf16_matmul.py [--rounds 15] [--cpu-time]

Both run on the same threads (numpy's BLAS threads; the kernel's team gets as many). The kernel's
time includes rounding and packing both operands. Prints the CPU, the load other processes put on
the machine, and per shape the median GFLOP/s of each and their ratio. On a loaded machine the
wall-clock figures of two threads depend on who gets descheduled; --cpu-time measures one thread's
CPU time instead (OPENBLAS_NUM_THREADS=1, the kernel on the calling thread), which preemption
does not count.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from darknetpy import kernels  # before numpy: it quiets OpenBLAS's idle workers
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from blas_env import MACHINE_VARS, timed_env  # noqa: E402
from throughput import other_load  # noqa: E402


# (what, M, K, N, ta, tb, beta): out (M, N) = beta out + A B, A = a or aᵀ, B = b or bᵀ
SHAPES = [
    ("input projection x U", 2048, 384, 1152, 0, 0, 0),
    ("projection F = U^T x^T (256 in)", 1152, 256, 2048, 1, 1, 0),
    ("projection F = U^T x^T (384 in)", 1152, 384, 2048, 1, 1, 0),
    ("weight gradient x^T dz, beta=1", 384, 2048, 1152, 1, 0, 1),
    ("delta dz W^T", 2048, 1152, 384, 0, 1, 0),
    ("head x W", 2048, 384, 256, 0, 0, 0),
    ("head weight gradient, beta=1", 384, 2048, 256, 1, 0, 1),
    ("head delta dz W^T", 2048, 256, 384, 0, 1, 0),
]


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown CPU"


def numpy_fp32(out, a, b, ta, tb, beta):
    A, B = (a.T if ta else a), (b.T if tb else b)
    if beta:
        out += A @ B
    else:
        np.matmul(A, B, out=out)


def seconds(fn, args, calls, clock):
    t0 = clock()
    for _ in range(calls):
        fn(*args)
    return (clock() - t0) / calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15, help="alternating rounds per shape; the median is reported (default 15)")
    ap.add_argument("--cpu-time", action="store_true", help="one thread, timed by its CPU time (default: the threads numpy's BLAS has, wall clock)")
    args = ap.parse_args()
    one = {"OPENBLAS_NUM_THREADS": "1"} if args.cpu_time else {}
    if any(k in os.environ for k in MACHINE_VARS) or (args.cpu_time and os.environ.get("OPENBLAS_NUM_THREADS") != "1"):
        os.execve(sys.executable, [sys.executable, *sys.argv], timed_env(**one))
    clock = time.thread_time if args.cpu_time else time.perf_counter
    kernel = kernels.C.ops.get("matmul_bf16") if kernels.C is not None else None
    if kernel is None:
        sys.exit("bf16_matmul: the AMX kernel is not in this build (no AMX-BF16 CPU, DARKNETPY_KERNELS, or no C build)")
    timing = "one thread's CPU time" if args.cpu_time else "wall clock"
    print(f"# {cpu_name()}, {kernels.threads()} threads, {timing}; other processes' load {other_load():.2f} cores", flush=True)
    print(f"{'shape (M, K, N, ta, tb, beta)':<36} {'what':<34} {'numpy fp32':>11} {'AMX bf16':>9} {'ratio':>6}")
    rng = np.random.default_rng(0)
    for what, M, K, N, ta, tb, beta in SHAPES:
        a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
        out = np.zeros((M, N), np.float32)
        call = (out, a, b, ta, tb, beta)
        flop = 2.0 * M * K * N
        calls = max(1, int(2e9 // flop))  # about a second per round on both
        numpy_fp32(*call), kernel(*call)  # warm-up: threads, pages, the kernel's packing buffer
        times = {"numpy": [], "amx": []}
        for r in range(args.rounds):
            order = [("numpy", numpy_fp32), ("amx", kernel)]
            for name, fn in order if r % 2 == 0 else order[::-1]:
                out[...] = 0
                times[name].append(seconds(fn, call, calls, clock))
        g = {name: flop / statistics.median(t) / 1e9 for name, t in times.items()}
        shape = f"({M}, {K}, {N}, {ta}, {tb}, {beta})"
        print(f"{shape:<36} {what:<34} {g['numpy']:>11.0f} {g['amx']:>9.0f} {g['amx'] / g['numpy']:>5.1f}x", flush=True)
    print(f"# other processes' load after: {other_load():.2f} cores")


if __name__ == "__main__":
    main()
