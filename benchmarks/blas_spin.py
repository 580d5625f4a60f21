#!/usr/bin/env python3
"""How long OpenBLAS's worker threads keep a core busy after a matmul, and what that costs a thread
of ours that has to share the core with them.

    python benchmarks/blas_spin.py                            # OpenBLAS's default
    OPENBLAS_THREAD_TIMEOUT=4 python benchmarks/blas_spin.py  # workers sleep at once

OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when numpy loads it: after each call its workers
busy-wait for the next one for 2^N cycles (N 4-30) before they sleep. Two measures, with numpy's
BLAS on 2 threads and each matmul 2048 x 256 @ 256 x 768 (a [sru] 256 layer's product):
  spin   the CPU time (user, system) the process uses while its only Python thread sleeps D ms
         after one matmul: the workers' waiting;
  share  every thread of the process moved onto one core (after OpenBLAS started its worker), a
         one-thread memory-bound pass (numpy adds over 8 MB arrays, about the length of a [sru]
         layer's recurrence) timed right after a matmul, and after a 0.3 s sleep and one untimed
         pass: how much of the core the waiting worker takes from a thread of ours that lands
         beside it (a helper thread of a kernel, say).
"""
import os
import resource
import statistics
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")
import numpy as np  # noqa: E402  (after the thread count: OpenBLAS reads it at load)

rng = np.random.default_rng(0)
A = rng.standard_normal((2048, 256), dtype=np.float32)
W = rng.standard_normal((256, 768), dtype=np.float32)
product = np.empty((2048, 768), np.float32)
a, b = (rng.standard_normal(2 << 20, dtype=np.float32) for _ in range(2))


def one_pass():
    for _ in range(6):
        np.add(a, b, out=a)


print(f"OPENBLAS_THREAD_TIMEOUT={os.environ.get('OPENBLAS_THREAD_TIMEOUT', '(unset: the default)')}, "
      f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}")
np.matmul(A, W, out=product)
for D in (0.001, 0.01, 0.05, 0.1, 0.3):
    user, system = [], []
    for _ in range(5):
        time.sleep(0.6)  # the workers asleep
        np.matmul(A, W, out=product)
        t0 = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(D)
        t1 = resource.getrusage(resource.RUSAGE_SELF)
        user.append(t1.ru_utime - t0.ru_utime)
        system.append(t1.ru_stime - t0.ru_stime)
    print(f"spin   CPU time during a {1e3 * D:5.0f} ms sleep after a matmul: user {1e3 * statistics.median(user):5.1f} ms, "
          f"system {1e3 * statistics.median(system):4.1f} ms (medians of 5)")

for tid in os.listdir("/proc/self/task"):
    os.sched_setaffinity(int(tid), {min(os.sched_getaffinity(0))})
times = {"right after a matmul": [], "after a 0.3 s sleep": []}
for _ in range(31):
    for when, pause in (("right after a matmul", 0), ("after a 0.3 s sleep", 0.3)):
        np.matmul(A, W, out=product)
        if pause:
            time.sleep(pause)
            one_pass()
        t = time.perf_counter()
        one_pass()
        times[when].append(time.perf_counter() - t)
print("share  one core for every thread of the process, a one-thread pass "
      + ", ".join(f"{when} {1e3 * statistics.median(ts):.2f} ms" for when, ts in times.items())
      + " (medians of 31)")
