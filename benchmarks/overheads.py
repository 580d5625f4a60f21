#!/usr/bin/env python3
"""Where a training run's wall time goes, per update (issue 32: the trainer's overheads): the
step (forward, backward, update), the EMA, the batcher, validations, checkpoints (split into
making the bytes, committing them and the run record), metrics rows, progress, the time budget's
horizon, samples, and what is left (the loop itself, Python's GC, the end of the run).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/overheads.py \\
        cfg/shakespeare.cfg data/tinyshakespeare.txt --time-budget 2m [train options...]

A real `darknetpy.train.Trainer` runs with the given options (as `darknetpy train` takes them,
--backup defaults to a temporary folder); each part is timed by wrapping its calls with
perf_counter. Prints one table (ms per update, share of the run, calls, the median ms per call)
on stdout, and the sizes of the files one checkpoint writes. On a loaded machine the medians of
many calls interleaved in one run say what each part costs against a step: `--valid-every 20
--backup-every 20 --max-batches 200` makes ten of each.
"""
import statistics
import argparse
import collections
import functools
import gc
import os
import sys
import tempfile
import time

from darknetpy import checkpoint as ckpt  # darknetpy before numpy: launcher.quiet_blas_workers
from darknetpy import train as trainmod
from darknetpy import weights as weightsmod
from darknetpy.options import TrainOptions


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cfg")
    ap.add_argument("data")
    ap.add_argument("--time-budget", default="2m", help="the run's --time-budget (default 2m)")
    ap.add_argument("--max-batches", type=int, default=None, help="instead of a time budget: updates (default: none)")
    ap.add_argument("--valid-every", type=int, default=TrainOptions.valid_every,
                    help=f"--valid-every (default {TrainOptions.valid_every})")
    ap.add_argument("--backup-every", type=int, default=trainmod.BACKUP_EVERY,
                    help=f"iterations between .backup checkpoints (default Darknet's {trainmod.BACKUP_EVERY})")
    ap.add_argument("--srand", type=int, default=1, help="the run's seed (default 1)")
    ap.add_argument("--backup", default=None, help="the run's folder (default: a new temporary one)")
    args = ap.parse_args()
    spent = collections.defaultdict(float)
    calls = collections.defaultdict(list)  # each call's seconds
    trainmod.BACKUP_EVERY = args.backup_every

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[name] += time.perf_counter() - start
                calls[name].append(time.perf_counter() - start)
        return wrapper

    # module functions the trainer calls by attribute, then the Trainer's own methods
    ckpt.commit = timed("checkpoint: commit (write, fsync, rename)", ckpt.commit)
    if hasattr(ckpt, "npz_bytes"):  # the .npz made in the writer's thread from a copy of the arrays
        ckpt.state_arrays = timed("checkpoint: .state.npz arrays copied", ckpt.state_arrays)
        ckpt.npz_bytes = timed("checkpoint: .state.npz bytes", ckpt.npz_bytes)
    else:
        ckpt.state_bytes = timed("checkpoint: .state.npz bytes", ckpt.state_bytes)
    weightsmod.to_bytes = timed("checkpoint: .weights bytes", weightsmod.to_bytes)
    writes = "put" if hasattr(ckpt.Record, "put") else "write"  # (before the background writer: write)
    setattr(ckpt.Record, writes, timed("run record writes", getattr(ckpt.Record, writes)))
    gc_start = {}

    def gc_timer(phase, info):
        if phase == "start":
            gc_start["t"] = time.perf_counter()
        else:
            seconds = time.perf_counter() - gc_start.pop("t", time.perf_counter())
            spent["Python's GC"] += seconds
            calls["Python's GC"].append(seconds)
    gc.callbacks.append(gc_timer)

    backup = args.backup or tempfile.mkdtemp(prefix="overheads-")
    options = TrainOptions(time_budget=None if args.max_batches else args.time_budget, max_batches=args.max_batches,
                           valid_every=args.valid_every, srand=args.srand, backup=backup, overwrite=True)
    trainer = trainmod.Trainer(args.cfg, args.data, options)
    net, batcher = trainer.net, trainer.batcher
    net.train_step = timed("step: forward, backward, update", net.train_step)
    batcher.next_batch = timed("batcher: next_batch", batcher.next_batch)
    batcher.reseat = timed("batcher: reseat", batcher.reseat)
    if trainer.ema is not None:
        trainer.ema.update = timed("EMA update", trainer.ema.update)
    for name, what in [("validate", "validations"), ("checkpoint", "checkpoints, whole"), ("log_row", "metrics rows"),
                       ("watch_time_budget", "time budget (horizon)"), ("sample", "samples"),
                       ("finish", "finish (end of run, whole)")]:
        setattr(trainer, name, timed(what, getattr(trainer, name)))
    progress_init = trainmod._Progress.__init__

    def progress(self, *a, **k):  # the bar is made inside run(): time its updates once it exists
        progress_init(self, *a, **k)
        self.update = timed("progress bar", self.update)
    trainmod._Progress.__init__ = progress
    t0 = time.perf_counter()
    summary = trainer.run()
    wall = time.perf_counter() - t0
    gc.callbacks.remove(gc_timer)
    updates = summary["updates"] - trainer.start_updates
    inner = {"checkpoint: commit (write, fsync, rename)", "checkpoint: .state.npz bytes", "checkpoint: .weights bytes",
             "checkpoint: .state.npz arrays copied",
             "run record writes", "Python's GC", "finish (end of run, whole)"}
    accounted = sum(v for k, v in spent.items() if k not in inner)
    spent["the rest (loop, unwrapped calls)"] = wall - accounted
    calls["the rest (loop, unwrapped calls)"] = [spent["the rest (loop, unwrapped calls)"]]
    print(f"# {args.cfg} on {args.data}: {updates} updates in {wall:.1f} s of run(), {wall / updates * 1e3:.1f} ms "
          f"each; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    print("| part | ms per update | share of the run | calls | median ms per call |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        mark = "  (inside the above)" if name in inner else ""
        print(f"| {name}{mark} | {seconds / updates * 1e3:.2f} | {seconds / wall:.1%} | {len(calls[name])} | "
              f"{statistics.median(calls[name]) * 1e3:.1f} |")
    base = trainer.paths["backup"]
    sizes = {os.path.basename(p): os.path.getsize(p) for p in (base, base + ckpt.STATE_SUFFIX) if os.path.exists(p)}
    print("# one .backup checkpoint writes " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in sizes.items()))
    print(f"# the validation scores {trainer.validator.count if trainer.validator else 0} held-out ids", file=sys.stderr)


if __name__ == "__main__":
    main()
