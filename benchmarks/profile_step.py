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
"""
import argparse
import collections
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
    args = ap.parse_args()
    spent = collections.defaultdict(float)
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
    kernels.get = lambda name, *arrays: (timed("recurrent step loops", get(name, *arrays)) if name in LOOPS
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
    start = time.perf_counter()
    for _ in range(args.steps):
        net.train_step(x, y)
    total = time.perf_counter() - start
    chars = args.steps * net.time_steps * net.streams
    print(f"{args.cfg}: {chars / total:,.0f} chars/s, {1e3 * total / args.steps:.1f} ms a step, "
          f"{kernels.threads()} threads, kernels: {kernels.label()}")
    for phase, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {phase:38s} {1e3 * seconds / args.steps:7.2f} ms  {100 * seconds / total:5.1f}%")
    other = total - sum(spent.values())
    print(f"  {'outside the phases':38s} {1e3 * other / args.steps:7.2f} ms  {100 * other / total:5.1f}%")


if __name__ == "__main__":
    main()
