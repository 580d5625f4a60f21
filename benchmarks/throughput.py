#!/usr/bin/env python3
"""darknetpy's throughput on the standard benchmark configs, side by side with PyTorch when it is
installed: one table of training and generation chars/s, training GFLOP/s against numpy's own
large-matmul peak, and peak RSS.

    python benchmarks/throughput.py                    # every standard config
    python benchmarks/throughput.py lstm2x256 gru2x256 # some of them (names or .cfg paths)
    python benchmarks/throughput.py --no-torch --json results.json
    python benchmarks/throughput.py rnn1024 --darknet ../darknet/darknet  # vs the C Darknet, measured

Each measurement runs in a fresh subprocess, so peak RSS belongs to one config and one
implementation, and one implementation's threads or caches do not disturb the other's.
What is timed and the FLOP model: see darknetpy/measure.py; the PyTorch models: torch_reference.py.
PyTorch is optional (never a dependency of darknetpy): without it the PyTorch columns are skipped.
For a fair comparison torch gets as many threads as numpy's BLAS (torch.set_num_threads), and for
[lstm] nets both a hand-written loop and torch.nn.LSTM are timed and the faster one is reported.
With --darknet PATH (a C Darknet built from pjreddie/darknet, GPU=0 OPENMP=0) rnn1024's generation
is compared with that Darknet's `rnn generate` on the same cfg, measured in the same run.
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blas_env import MACHINE_VARS, timed_env

HERE = Path(__file__).resolve().parent

# name: (cfg, train?, generate?, timed training steps). Generation is not repeated for
# rnn1024-train: it is the same model as rnn1024 (generation forces batch=1, time_steps=1).
CONFIGS = {
    "lstm2x256": ("lstm2x256.cfg", True, True, 5),
    "lstm1x512": ("lstm1x512.cfg", True, True, 5),
    "gru2x256": ("gru2x256.cfg", True, True, 5),
    "rnn3x256": ("rnn3x256.cfg", True, True, 5),
    "rnn1024-train": ("rnn1024-train.cfg", True, False, 3),
    "rnn1024": ("rnn1024.cfg", False, True, 0),
    "lstm2x512-mem": ("lstm2x512-mem.cfg", True, True, 2),
}
C_DARKNET_REFERENCE = 360  # chars/s of the C Darknet with cfg/rnn.cfg quoted in the issue (another machine)
DARKNET_LENS = (10, 1500)  # -len of the short and the long timed `darknet rnn generate` run
WORKER_ENV = timed_env()  # without OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE (blas_env.py); --machine-blas keeps them


# ---- workers (one measurement per process) --------------------------------------------------------
def worker(kind, cfg, iterations, warmup, gen_chars, train, generate, darknet=None):
    from darknetpy import measure
    if kind == "darknet":
        return darknet_generate(darknet, cfg)
    if kind == "darknetpy":  # with numpy's matmul peak measured right after, in the same process
        out = measure.run_config(cfg, iterations=iterations, warmup=warmup, gen_chars=gen_chars,
                               train=train, generate=generate, peak=train)
        if train:
            out["train"]["matmul_gflops"] = out.pop("matmul_gflops")
        return out
    if kind == "numpy-peak":
        from darknetpy import kernels
        return {"gflops": measure.matmul_peak(), "blas": measure.blas_info(), "kernels": kernels.label()}
    import torch
    sys.path.insert(0, str(HERE))
    import torch_reference as ref
    threads = measure.blas_threads()
    torch.set_num_threads(threads)
    if kind == "torch-peak":
        return {"gflops": ref.matmul_peak(), "blas": ref.blas_label(), "version": torch.__version__}
    impl = kind.split("-", 1)[1]
    spec = ref.read_cfg(cfg)
    if impl == "nn" and not ref.supports_nn(spec):
        return None
    out = {"impl": impl, "train": None, "generate": None}
    if train:
        out["train"] = ref.measure_train(cfg, impl, iterations=iterations, warmup=warmup)
    if generate:
        out["generate"] = ref.measure_generate(cfg, impl, chars=gen_chars, warmup=10 * warmup)
    out["peak_rss"] = measure.peak_rss_bytes()
    return out


def darknet_generate(darknet, cfg):
    """The C Darknet's `rnn generate` chars/s on cfg with random weights written by darknetpy:
    the chars between a short and a long run over the seconds between them (loading cancels out)."""
    import resource
    from darknetpy import load_network, measure
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "random.weights")
        load_network(cfg, None, batch=1, time_steps=1).save_weights(weights)

        def run(n):
            t = time.perf_counter()
            r = subprocess.run([darknet, "rnn", "generate", str(Path(cfg).resolve()), weights, "-len", str(n),
                                "-srand", "1"], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if r.returncode:
                last = r.stderr.strip().splitlines()[-1:]  # its error, if it printed one
                raise RuntimeError(" ".join([f"{darknet} rnn generate exited {r.returncode}:", *last]))
            return time.perf_counter() - t

        run(DARKNET_LENS[0])  # untimed: the binary and the weights into the page cache
        seconds = [run(n) for n in DARKNET_LENS]
    chars = DARKNET_LENS[1] - DARKNET_LENS[0]
    return {"train": None, "generate": {"chars_per_s": chars / (seconds[1] - seconds[0]), "chars": chars,
                                        "lens": DARKNET_LENS, "seconds": seconds},
            "peak_rss": measure.peak_rss_bytes(resource.RUSAGE_CHILDREN), "path": darknet}


def _busy_seconds():
    """CPU-seconds the whole machine has spent busy (all cores), from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


def _children_seconds():
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def other_load(seconds=1.0):
    """Cores' worth of CPU that other processes use right now (sampled over `seconds`)."""
    b0 = _busy_seconds()
    if b0 is None:
        return 0.0
    t0 = time.perf_counter()
    time.sleep(seconds)
    return max(0.0, (_busy_seconds() - b0) / (time.perf_counter() - t0))


OPTIONS = {"wait_idle": 0.0, "retries": 0, "idle_threshold": 0.15}


def _run_once(cmd):
    b0, c0, t0 = _busy_seconds(), _children_seconds(), time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=WORKER_ENV)
    wall = time.perf_counter() - t0
    other = None if b0 is None else max(0.0, (_busy_seconds() - b0 - (_children_seconds() - c0)) / wall)
    return r, other


def run_worker(kind, cfg="-", iterations=1, warmup=1, gen_chars=1, train=True, generate=True, darknet=None):
    """One measurement in a fresh process. With --wait-idle it first waits (up to that many seconds)
    until other processes use less than --idle-threshold cores, and with --retries it measures again
    when they used more than that during the run. The result records `other_cpu`: the cores' worth
    of CPU other processes used while it ran (Linux only; None elsewhere)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(cfg), "--iterations", str(iterations),
           "--warmup", str(warmup), "--gen-chars", str(gen_chars)]
    cmd += [] if train else ["--no-train"]
    cmd += [] if generate else ["--no-generate"]
    cmd += ["--darknet", darknet] if darknet else []
    best = None
    for attempt in range(1 + OPTIONS["retries"]):
        deadline = time.time() + OPTIONS["wait_idle"]
        while OPTIONS["wait_idle"] and time.time() < deadline and other_load() > OPTIONS["idle_threshold"]:
            time.sleep(2)
        r, other = _run_once(cmd)
        if r.returncode:
            sys.stderr.write(f"[{kind} {cfg}] failed:\n{r.stderr}")
            return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
        result = json.loads(r.stdout.strip().splitlines()[-1])
        if result is None:
            return None
        result["other_cpu"] = other
        if best is None or (other or 0) < (best["other_cpu"] or 0):
            best = result
        if other is None or other <= OPTIONS["idle_threshold"]:
            break
        print(f"# {kind} {Path(str(cfg)).name}: other processes used {other:.2f} cores during the run"
              + (", measuring again" if attempt < OPTIONS["retries"] else ""), file=sys.stderr, flush=True)
    return best


def best_of(runs):
    """Several processes' results for one measurement: the fastest training and the fastest
    generation (each a median within its process), the largest peak RSS and other-CPU figure."""
    ok = [r for r in runs if r and "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[0])
    for part in ("train", "generate"):
        done = [r for r in ok if r.get(part)]
        if done:
            best = max(done, key=lambda r: r[part]["chars_per_s"])
            out[part] = dict(best[part], processes=[r[part]["chars_per_s"] for r in done])
    out["peak_rss"] = max(r["peak_rss"] for r in ok)
    others = [r["other_cpu"] for r in ok if r.get("other_cpu") is not None]
    out["other_cpu"] = max(others) if others else None
    return out


# ---- the table ---------------------------------------------------------------------------------
def rate(x):
    return "-" if x is None else f"{x:,.0f}"


def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def best_torch(results, part):
    """The faster PyTorch implementation for `part` ('train' or 'generate'): (chars/s, impl, rss)."""
    best = (None, "", None)
    for r in results:
        if r and not r.get("error") and r.get(part):
            cps = r[part]["chars_per_s"]
            if best[0] is None or cps > best[0]:
                best = (cps, r["impl"], r["peak_rss"])
    return best


def executable(path):
    """argparse type: an executable file, as an absolute path (the workers run it from a temp dir)."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise argparse.ArgumentTypeError(f"{path!r} is not an executable file")
    return os.path.abspath(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", help=f"standard config names ({', '.join(CONFIGS)}) or .cfg paths; default: all")
    ap.add_argument("--warmup", type=int, default=2, help="untimed training steps before timing (default 2); "
                                                          "generation discards 10x as many chars")
    ap.add_argument("--iterations", type=int, default=None, help="timed training steps (default: per config, 2-5)")
    ap.add_argument("--gen-chars", type=int, default=500, help="generated chars timed (default 500)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for numpy's BLAS and for torch (sets OPENBLAS/MKL/OMP_NUM_THREADS in the workers); "
                         "default: the BLAS default")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                    help="before each measurement wait up to SECONDS for other processes to go quiet (Linux)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="run each measurement in N fresh processes and keep the fastest (default 1); the "
                         "implementations take turns, one process each per round, so a drift in the machine's "
                         "speed meets all of them; PyTorch's speed varies a lot from process to process")
    ap.add_argument("--retries", type=int, default=0,
                    help="measure again (up to N times) when other processes were busy during a run (Linux)")
    ap.add_argument("--idle-threshold", type=float, default=0.15, metavar="CORES",
                    help="other processes' CPU use (in cores) that counts as busy (default 0.15)")
    ap.add_argument("--machine-blas", action="store_true",
                    help="keep this machine's OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the workers (by default they "
                         "are unset, so OpenBLAS picks its kernels for this CPU as it does where they are not set; "
                         "some machines set them to dodge bugs of old OpenBLAS builds, and they slow a current one). "
                         "The BLAS line names the kernels used.")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch even if it is installed")
    ap.add_argument("--darknet", metavar="PATH", type=executable,
                    help="a C Darknet executable (pjreddie/darknet built with GPU=0 OPENMP=0): time its `rnn generate` "
                         f"on rnn1024 with random weights (-len {DARKNET_LENS[0]} and {DARKNET_LENS[1]}) and compare "
                         "darknetpy's generation with it")
    ap.add_argument("--json", metavar="PATH", help="also write every raw result to PATH")
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "CFG"), help=argparse.SUPPRESS)
    ap.add_argument("--no-train", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-generate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        kind, cfg = args.worker
        result = worker(kind, cfg, args.iterations or 5, args.warmup, args.gen_chars,
                        not args.no_train, not args.no_generate, args.darknet)
        print(json.dumps(result))
        return 0

    todo = []
    for name in args.configs or list(CONFIGS):
        if name in CONFIGS:
            cfg, train, gen, its = CONFIGS[name]
            todo.append((name, HERE / cfg, train, gen, its))
        elif Path(name).is_file():
            todo.append((Path(name).stem, Path(name), True, True, 5))
        else:
            ap.error(f"unknown config {name!r}: not one of {', '.join(CONFIGS)} and not a file")

    OPTIONS.update(wait_idle=args.wait_idle, retries=args.retries, idle_threshold=args.idle_threshold)
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
            WORKER_ENV[var] = str(args.threads)
    if args.machine_blas:
        WORKER_ENV.update({var: os.environ[var] for var in MACHINE_VARS if var in os.environ})
    torch_ok = not args.no_torch and importlib.util.find_spec("torch") is not None
    load_before = os.getloadavg()
    started = time.time()
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, load average {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f} (1/5/15 min) before; Python {platform.python_version()}", flush=True)
    peak1 = run_worker("numpy-peak")
    if peak1.get("other_cpu"):
        print(f"# other processes used {peak1['other_cpu']:.2f} cores while the matmul peak was measured", flush=True)
    import numpy as np
    print(f"# numpy {np.__version__}, BLAS: {_blas_label(peak1['blas'])}; training kernels: {peak1['kernels']}",
          flush=True)
    if WORKER_ENV.get("OPENBLAS_CORETYPE"):
        print(f"# OPENBLAS_CORETYPE={WORKER_ENV['OPENBLAS_CORETYPE']} is set: OpenBLAS runs those kernels "
              "(--machine-blas keeps it; without it is the default)", flush=True)
    tpeak = run_worker("torch-peak") if torch_ok else None
    if tpeak and "error" not in tpeak:
        print(f"# PyTorch {tpeak['version']}, BLAS {tpeak['blas']}; torch float32 2048^3 matmul {tpeak['gflops']:.0f} GFLOP/s",
              flush=True)
    elif not torch_ok:
        print("# PyTorch not installed (or --no-torch): PyTorch columns skipped", flush=True)
    if args.darknet:
        print(f"# C Darknet: {args.darknet}" + ("" if any(t[0] == "rnn1024" for t in todo)
                                                 else " (unused: it is compared on rnn1024 only)"), flush=True)

    results = []
    for name, cfg, train, gen, its in todo:
        its = args.iterations or its
        print(f"# measuring {name} ...", file=sys.stderr, flush=True)
        # Rounds of one process per implementation, in turn: this VM's speed drifts by 10% or more
        # over minutes, and taking turns lets each implementation meet the same drift.
        kinds = ["darknetpy"] + (["torch-hand", "torch-nn"] if torch_ok else [])
        kinds += ["darknet"] if args.darknet and name == "rnn1024" else []
        runs = {kind: [] for kind in kinds}
        for _ in range(args.repeats):
            for kind in kinds:
                runs[kind].append(run_worker(kind, cfg, its, args.warmup, args.gen_chars, train, gen, args.darknet))
        best = {kind: best_of(r) for kind, r in runs.items()}
        dk, c_dk = best["darknetpy"], best.get("darknet")
        th = [best[kind] for kind in kinds if kind.startswith("torch")]
        results.append({"name": name, "cfg": str(cfg), "darknetpy": dk, "torch": th, "darknet": c_dk})

    peak2 = run_worker("numpy-peak")
    load_after = os.getloadavg()

    header = ("config", "streams x steps", "train c/s", "GFLOP/s", "% peak", "gen c/s", "peak RSS")
    if torch_ok:
        header += ("torch train c/s", "train vs torch", "torch gen c/s", "gen vs torch", "torch RSS")
    header += ("other CPU", "precision")
    rows = [header]
    for r in results:
        dk = r["darknetpy"]
        if "error" in dk:
            rows.append((r["name"], "error: " + dk["error"][:60]) + ("",) * (len(header) - 2))
            continue
        tr, gen = dk.get("train"), dk.get("generate")
        row = (r["name"], f"{tr['streams']} x {tr['time_steps']}" if tr else "1 x 1",
               rate(tr and tr["chars_per_s"]), f"{tr['gflops']:.1f}" if tr else "-",
               f"{100 * tr['gflops'] / tr['matmul_gflops']:.0f}%" if tr else "-", rate(gen and gen["chars_per_s"]),
               f"{dk['peak_rss'] / 1e6:,.0f} MB")
        if torch_ok:
            t_cps, t_impl, t_rss = best_torch(r["torch"], "train")
            g_cps, g_impl, g_rss = best_torch(r["torch"], "generate")
            rss = max([x for x in (t_rss, g_rss) if x] or [0])
            row += (f"{rate(t_cps)} {t_impl}" if t_cps else "-", ratio(tr and tr["chars_per_s"], t_cps),
                    f"{rate(g_cps)} {g_impl}" if g_cps else "-", ratio(gen and gen["chars_per_s"], g_cps),
                    f"{rss / 1e6:,.0f} MB" if rss else "-")
        others = [w.get("other_cpu") for w in [dk, *r["torch"], r["darknet"]] if w and w.get("other_cpu") is not None]
        row += (f"{max(others):.2f}" if others else "?", tr["precision"] if tr else "-")
        rows.append(row)

    from darknetpy.measure import format_table
    print()
    print(format_table(rows))
    print()
    row_peaks = [r["darknetpy"]["train"]["matmul_gflops"] for r in results
                 if "error" not in r["darknetpy"] and r["darknetpy"].get("train")]
    span = ""
    if row_peaks:
        lo, hi = f"{min(row_peaks):.0f}", f"{max(row_peaks):.0f}"
        span = f" ({lo} GFLOP/s)" if lo == hi else f" ({lo}-{hi} GFLOP/s)"
    print(f"% peak: training GFLOP/s against numpy's float32 2048x2048 matmul measured in the same process right "
          f"after it{span}; at the run's start and end: {peak1['gflops']:.0f} and {peak2['gflops']:.0f}. "
          "Target: training >= 60%.")
    print(f"Each figure: the fastest of {args.repeats} fresh process(es), each reporting its median training step.")
    print("train c/s: full datums (forward + backward + update), median step; gen c/s: one stream, one char at a time "
          "with sampling. GFLOP/s counts matmul FLOPs only (model in darknetpy/measure.py).")
    if torch_ok:
        print("torch columns: the faster of a hand-written per-step loop with fused gate matmuls ('hand') and "
              "torch.nn.LSTM ('nn', [lstm] nets only); 'vs torch' = darknetpy / PyTorch.")
    print("other CPU: the most CPU (in cores) other processes used during any of the row's runs; "
          "above ~0.15 the row's numbers are low.")
    for r in results:
        gen = r["darknetpy"].get("generate") if "error" not in r["darknetpy"] else None
        if r["name"] == "rnn1024" and gen:
            print(f"rnn1024 (Darknet's cfg/rnn.cfg shape) generation: {gen['chars_per_s']:,.0f} chars/s" + c_darknet(
                gen["chars_per_s"], r["darknet"]))
        if r["name"] == "lstm2x512-mem" and "error" not in r["darknetpy"]:
            print(f"lstm2x512-mem peak RSS: {r['darknetpy']['peak_rss'] / 1e9:.2f} GB (target < 1.5 GB).")
    print(f"load average {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} after (it counts this run's own "
          f"workers too); {time.time() - started:.0f} s in all.")
    others = [w.get("other_cpu") for r in results for w in [r["darknetpy"], *r["torch"], r["darknet"], peak1, peak2]
              if w and w.get("other_cpu") is not None]
    if others and max(others) > OPTIONS["idle_threshold"]:
        print(f"note: other processes used up to {max(others):.2f} cores during some runs: those numbers are low "
              "(see 'other CPU'; --wait-idle SECONDS --retries N wait for a quiet machine).")
    elif not others and load_before[0] > 0.5:
        print("note: the load average was above 0.5 before the run: numbers may be low.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"numpy_peak": [peak1, peak2], "torch_peak": tpeak, "darknet": args.darknet,
                       "load": [load_before, load_after], "results": results}, f, indent=1)
    return 0


def c_darknet(cps, measured):
    """The rnn1024 footer's comparison of darknetpy's generation chars/s with the C Darknet's."""
    if measured and "error" not in measured:
        c = measured["generate"]["chars_per_s"]
        return f" = {ratio(cps, c)} the C Darknet's {c:,.0f} chars/s measured in this run (target 2x)."
    why = f"its run failed ({measured['error']})" if measured else "not measured"
    return (f"; the C Darknet: {why}. To compare, pass --darknet PATH to a darknet binary built from "
            f"pjreddie/darknet with GPU=0 OPENMP=0 (the issue's ~{C_DARKNET_REFERENCE} chars/s is a figure from "
            "another machine, not a measurement; target 2x).")


def _blas_label(info):
    from darknetpy.measure import blas_label
    return blas_label(info)


if __name__ == "__main__":
    sys.exit(main())
