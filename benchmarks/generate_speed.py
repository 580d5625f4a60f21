"""Generation speed: one sample, N samples at once, and Network.predict, against PyTorch stepped.

For each cfg (random weights, batch 1), in this one process, taking turns round by round so that
the machine's noise falls on every figure alike:

- generate, 1 sample: `net.generate` as `darknetpy generate` runs it (Darknet's sampler);
- generate, N samples: `net.generate(samples=N)`, N streams of one network (numpy's sampler);
  both net of start-up: (time of L2 symbols - time of L1) / (L2 - L1);
- predict: `net.predict` one character at a time, as integer ids and as one-hot float rows;
- torch nn.LSTM (if torch is installed and the cfg is an LSTM stack): benchmarks/torch_reference's
  model with torch's own nn.LSTM, one character at a time under inference_mode, logits then
  softmax, on as many threads as numpy's BLAS.

    python benchmarks/generate_speed.py                        # 2 x LSTM 256 and Darknet's cfg/rnn.cfg
    python benchmarks/generate_speed.py benchmarks/gru2x256.cfg --samples 64
    python benchmarks/generate_speed.py --against OLD_TREE     # A/B: NEW (this darknetpy) / OLD
    python benchmarks/generate_speed.py --profile              # where the C loop's step goes

Prints chars/s (median of the rounds). With --against, OLD_TREE's darknetpy (its C extension
built in place) is imported beside this one as `darknetpy_old`, both run the same weights, each
measure of each round runs once per tree, which goes first alternating, and NEW/OLD is printed as
the ratio of the medians and the median of the paired ratios; torch's nn.LSTM (for an LSTM
stack, when torch is installed) runs in each round too, and each tree's predict is given as x torch.
OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset by re-running itself without them (blas_env.py). A
benchmark, not a test.
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

from blas_env import MACHINE_VARS, timed_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_CFGS = [os.path.join(HERE, "lstm2x256.cfg"), os.path.join(ROOT, "cfg", "rnn.cfg")]


def network(cfg, package=None, weights=None):
    """`package` (default darknetpy)'s network of `cfg` at batch 1, with `weights` if given."""
    import darknetpy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = (package or darknetpy).load_network(cfg, weights, batch=1, time_steps=1)
    return net


def measures(net, samples):
    """name -> a function returning chars/s, for the generation figures of `net`."""
    return {
        "generate, 1 sample": lambda: generate_rate(net, 1),
        f"generate, {samples} samples": lambda: generate_rate(net, samples),
        "predict, ids": lambda: predict_rate(net, one_hot=False),
        "predict, one-hot": lambda: predict_rate(net, one_hot=True),
    }


def old_package(tree):
    """The darknetpy of the source tree `tree`, imported as `darknetpy_old`."""
    link = Path(tempfile.mkdtemp()) / "darknetpy_old"
    os.symlink(Path(tree).resolve() / "darknetpy", link)
    sys.path.insert(0, str(link.parent))
    import darknetpy_old
    return darknetpy_old


def ab(cfg, old, samples, rounds):
    """NEW / OLD of every measure on the same weights, the trees taking turns within each round."""
    weights = os.path.join(tempfile.mkdtemp(), "ab.weights")
    network(cfg).save_weights(weights)
    trees = {"old": measures(network(cfg, old, weights), samples),
             "new": measures(network(cfg, None, weights), samples)}
    torch_rate, torch_rates = torch_stepper(cfg), []
    for tree in trees.values():  # warm-up
        for measure in tree.values():
            measure()
    if torch_rate is not None:
        torch_rate()
    rates = {tree: {name: [] for name in trees[tree]} for tree in trees}
    for k in range(rounds):
        for name in trees["new"]:
            for tree in (("old", "new") if k % 2 == 0 else ("new", "old")):
                rates[tree][name].append(trees[tree][name]())
        if torch_rate is not None:
            torch_rates.append(torch_rate())
    print(f"{os.path.relpath(cfg, ROOT)}  (chars/s, median of {rounds} rounds; load {os.getloadavg()[0]:.1f})")
    for name in trees["new"]:
        old_rate, new_rate = (statistics.median(rates[tree][name]) for tree in ("old", "new"))
        paired = statistics.median(n / o for n, o in zip(rates["new"][name], rates["old"][name]))
        print(f"  {name:<26} old {old_rate:>10,.0f}   new {new_rate:>10,.0f}   new/old {new_rate / old_rate:.3f} "
              f"(medians) {paired:.3f} (paired)")
    if torch_rates:
        torch_median = statistics.median(torch_rates)
        print(f"  {'torch nn.LSTM, stepped':<26} {torch_median:>10,.0f}   predict, ids: old "
              f"{statistics.median(rates['old']['predict, ids']) / torch_median:.2f}x, new "
              f"{statistics.median(rates['new']['predict, ids']) / torch_median:.2f}x torch")
    sys.stdout.flush()


def generate_rate(net, samples, short=50, long=550):
    """Symbols per second of net.generate with `samples` streams, net of start-up."""
    def once(length):
        t = time.perf_counter()
        net.generate(seed=b"\n\n", length=length, samples=samples, srand=1)
        return time.perf_counter() - t
    return samples * (long - short) / (once(long) - once(short))


def predict_rate(net, one_hot, chars=500):
    """Characters per second of net.predict, one at a time, fed back the argmax."""
    eye = np.eye(net.inputs, dtype=np.float32)
    net.reset_state()
    c = 10
    t = time.perf_counter()
    for _ in range(chars):
        p = net.predict(eye[c] if one_hot else c)
        c = int(p.argmax())
    return chars / (time.perf_counter() - t)


def profile(cfg, rounds, steps=3000):
    """Where one symbol of the one-stream C loop (generation.Loop) goes: its program run whole
    (drawing), its products alone and the rest alone (stepping), at one thread and at two; us per
    symbol, median of `rounds`."""
    from darknetpy import kernels
    c = kernels.sample_loop()
    if c is None:
        print(f"{os.path.relpath(cfg, ROOT)}: no C loop here (kernels: {kernels.label()})")
        return
    net = network(cfg)
    stepper = net.stepper(1, private=True, temperature=np.ones(1, np.float32), invariant=True)
    ops, x = [], None
    for step in stepper.steps:
        more, x = step.loop(x)
        ops += more
    programs = {"whole step": [o for o in ops], "products": [o for o in ops if o[0] == "matvec"],
                "rest": [o for o in ops if o[0] != "matvec"]}
    u, chosen, none = np.random.default_rng(0).random(steps).astype(np.float32), np.empty(steps, np.int64), np.empty(0)
    times = {}
    for _ in range(rounds):
        for threads in (1, 2):
            c.sample_threads(threads)
            for name, part in programs.items():
                program = c.sample_program(part, x)
                t = time.perf_counter()
                if name == "whole step":
                    c.sample_run(program, np.array([10]), u, chosen, False)
                else:
                    c.sample_run(program, np.full(steps, 10, np.int64), none.astype(np.float32), none.astype(np.int64), False)
                times.setdefault((name, threads), []).append((time.perf_counter() - t) / steps * 1e6)
    c.sample_threads(kernels.threads())
    weights = sum(o[2].nbytes for o in ops if o[0] == "matvec") / 1e6
    print(f"{os.path.relpath(cfg, ROOT)}  (us per symbol, median of {rounds}; products' weights {weights:.2f} MB; "
          f"load {os.getloadavg()[0]:.1f})")
    for threads in (1, 2):
        print(f"  {threads} thread{'s' if threads > 1 else ' '}  " + "   ".join(
            f"{name} {statistics.median(times[name, threads]):7.1f}" for name in programs))
    sys.stdout.flush()


def torch_stepper(cfg):
    """A function timing `chars` steps of torch's nn.LSTM model, or None without torch / for a cfg
    that is not an LSTM stack (or has a section torch_reference does not build)."""
    try:
        import torch
        sys.path.insert(0, HERE)
        import torch_reference as ref
    except ImportError:
        return None
    try:
        spec = ref.read_cfg(cfg)
    except ValueError:
        return None
    if not ref.supports_nn(spec):
        return None
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    model = ref.Model(spec, "nn").eval()

    def rate(chars=500):
        with torch.inference_mode():
            state, c = model.init_state(1), 10
            t = time.perf_counter()
            for _ in range(chars):
                logits, state = model(torch.tensor([[c]]), state)
                c = int(torch.softmax(logits[0, 0], dim=0).argmax())
            return chars / (time.perf_counter() - t)
    return rate


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cfgs", nargs="*", default=DEFAULT_CFGS, help="default: 2 x LSTM 256 and cfg/rnn.cfg")
    ap.add_argument("--samples", type=int, default=32, help="streams of the many-samples figure (default: 32)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of every measure, taking turns (default: 5)")
    ap.add_argument("--against", metavar="OLD_TREE", help="A/B in this process against OLD_TREE's darknetpy")
    ap.add_argument("--profile", action="store_true", help="where the one-stream C loop's step goes, instead")
    args = ap.parse_args()
    if any(k in os.environ for k in MACHINE_VARS):
        os.execve(sys.executable, [sys.executable, *sys.argv], timed_env())
    old = old_package(args.against) if args.against else None
    for cfg in args.cfgs:
        if args.profile:
            profile(cfg, args.rounds)
            continue
        if old is not None:
            ab(cfg, old, args.samples, args.rounds)
            continue
        net = network(cfg)
        timed = measures(net, args.samples)
        torch_rate = torch_stepper(cfg)
        if torch_rate is not None:
            timed["torch nn.LSTM, stepped"] = torch_rate
        for measure in timed.values():  # warm-up: caches, BLAS threads, torch's first calls
            measure()
        rates = {name: [] for name in timed}
        for _ in range(args.rounds):
            for name, measure in timed.items():
                rates[name].append(measure())
        print(f"{os.path.relpath(cfg, ROOT)}  (chars/s, median of {args.rounds} rounds)")
        one = statistics.median(rates["generate, 1 sample"])
        for name, values in rates.items():
            rate = statistics.median(values)
            print(f"  {name:<26} {rate:>10,.0f}   {rate / one:5.2f}x one sample")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
