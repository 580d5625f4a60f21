#!/usr/bin/env python3
"""Where a training step's time goes, by phase: the recurrent step loops (products and step maths),
the weight-gradient GEMMs, the recurrent layers' projections (the input's GEMM or one-hot gather,
[rnn]'s sub-layers) and their deltas into the layer below (a GEMM), the layout changes left (transposes), the
rest of the recurrent layers, the other layers, the optimizer update.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=2 \\
        python benchmarks/profile_step.py benchmarks/lstm2x256.cfg [--steps 10]

Each phase is timed by wrapping its calls (perf_counter around each, a layer's time without the
loops and GEMMs inside it), so the phases add up to a little more than an unwrapped step; chars/s
is of the wrapped steps. Random ids as data.

`--alone` (issue 28: why a call runs slower inside the step than alone) then takes one more step,
keeping every step loop and every GEMM of 100k or more output entries with copies of its
arguments, and runs each such call again by itself on those copies: best of 5 back to back (its
operands warm in the caches), and best of 5 right after a 64 MB write (its operands out of the
caches), against its time inside the steps. It also counts the page faults of a step
(`getrusage`'s minor faults): fresh multi-MB arrays would fault on first touch.
"""
import argparse
import collections
import resource
import time

from darknetpy import kernels  # before numpy, as the darknetpy command: launcher.quiet_blas_workers
from darknetpy.layers.base import Recurrent
from darknetpy.network import Network

import numpy as np  # noqa: E402

LOOPS = {f"{kind}_loop{way}" for kind in ("lstm", "gru", "rnn") for way in ("", "_back")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cfg")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps (default 10)")
    ap.add_argument("--alone", action="store_true",
                    help="also time each loop and large GEMM of a step again by itself (default: off)")
    args = ap.parse_args()
    spent = collections.defaultdict(float)
    calls = collections.defaultdict(list)  # (name, shapes) -> its times inside the steps
    kept = {}                              # (name, shapes) -> (fn, copies of its arguments), in the kept step
    keeping = [False]

    def call_key(name, a):
        return name, tuple(x.shape if isinstance(x, np.ndarray) else x for x in a)

    def recorded(name, fn):
        def wrapper(*a):
            start = time.perf_counter()
            result = fn(*a)
            key = call_key(name, a)
            calls[key].append(time.perf_counter() - start)
            if keeping[0]:
                kept[key] = fn, [x.copy(order="K") if isinstance(x, np.ndarray) else x for x in a]  # strides kept
            return result
        return wrapper

    if args.alone:
        matmul = np.matmul

        def big_matmul(a, b, out=None):
            if np.ndim(a) == 2 and np.ndim(b) == 2 and a.shape[0] * b.shape[1] >= 100_000:
                return recorded("matmul", lambda a, b, out: matmul(a, b, out=out))(a, b, out)
            return matmul(a, b, out=out)
        np.matmul = big_matmul
    inside = []  # the time spent in the wrapped calls within each open call: each phase is counted exclusive

    def timed(phase, fn):
        def wrapper(*a, **k):
            inside.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                elapsed = time.perf_counter() - start
                spent[phase] += elapsed - inside.pop()
                if inside:
                    inside[-1] += elapsed
        return wrapper

    get = kernels.get
    kernels.get = lambda name, *arrays: (timed("recurrent step loops", recorded(name, get(name, *arrays)))
                                         if name in LOOPS and args.alone
                                         else timed("recurrent step loops", get(name, *arrays)) if name in LOOPS
                                         else timed("layout changes (transpose)", get(name, *arrays))
                                         if name == "transpose" else get(name, *arrays))
    net = Network(args.cfg)
    for layer in net.layers:
        recurrent = isinstance(layer, Recurrent)
        inner = "rest of the recurrent layers" if recurrent else "other layers"
        layer.forward, layer.backward = timed(inner, layer.forward), timed(inner, layer.backward)
        if recurrent:
            layer.project_steps = timed("recurrent projections", layer.project_steps)
        for dense in layer.denses:
            dense.accumulate = timed("weight-gradient GEMMs", dense.accumulate)
            if recurrent:  # [rnn]'s sub-layers' products come through matmul
                dense.matmul = timed("recurrent projections", dense.matmul)
                dense.back = timed("recurrent deltas into the layer below", dense.back)
    net.update = timed("optimizer update", net.update)
    rng = np.random.default_rng(0)
    V = net.layers[0].inputs
    x, y = (rng.integers(0, V, (net.time_steps, net.streams)) for _ in range(2))
    for _ in range(2):
        net.train_step(x, y)
    spent.clear()
    calls.clear()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(args.steps):
        net.train_step(x, y)
    total = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    chars = args.steps * net.time_steps * net.streams
    print(f"{args.cfg}: {chars / total:,.0f} chars/s, {1e3 * total / args.steps:.1f} ms a step, "
          f"{kernels.threads()} threads, kernels: {kernels.label()}, precision: {net.precision_label}")
    for phase, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:38s} {1e3 * seconds / args.steps:7.2f} ms  {100 * seconds / total:5.1f}%")
    other = total - sum(spent.values())
    print(f"  {'outside the phases':38s} {1e3 * other / args.steps:7.2f} ms  {100 * other / total:5.1f}%")
    if args.alone:
        alone(net, x, y, calls, kept, keeping, faults / args.steps, args.steps)


def alone(net, x, y, calls, kept, keeping, faults, steps):
    """Each kept call's best time inside the steps against itself alone, warm and with its operands
    evicted; calls of the same name and shapes share a line (`a step`: how many a step makes)."""
    keeping[0] = True
    net.train_step(x, y)
    keeping[0] = False
    flush = np.zeros(16 << 20, np.float32)  # 64 MB, more than the L2s and the operands together
    print(f"page faults: {faults:.0f} a step (minor)")
    print(f"  {'call (shapes of the first two arguments)':48s} {'a step':>6s} {'in step':>8s} {'alone':>8s} "
          f"{'flushed':>8s}  (best, ms)")
    total = np.zeros(3)
    for (name, shapes), (fn, a) in kept.items():
        warm, cold = [], []
        for _ in range(5):
            start = time.perf_counter()
            fn(*a)
            warm.append(time.perf_counter() - start)
        for _ in range(5):
            flush += 1.0
            start = time.perf_counter()
            fn(*a)
            cold.append(time.perf_counter() - start)
        count = len(calls[name, shapes]) / steps
        best = np.array([min(calls[name, shapes]), min(warm), min(cold)])
        total += count * best
        label = f"{name} {' x '.join(str(s) for s in shapes[:2])}"
        print(f"  {label[:48]:48s} {count:6.0f} {1e3 * best[0]:8.2f} {1e3 * best[1]:8.2f} {1e3 * best[2]:8.2f}")
    print(f"  {'their sum over a step':48s} {'':6s} {1e3 * total[0]:8.2f} {1e3 * total[1]:8.2f} {1e3 * total[2]:8.2f}")


if __name__ == "__main__":
    main()
