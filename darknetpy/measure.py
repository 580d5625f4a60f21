"""Measuring a network's speed: training and generation characters per second, the matmul GFLOP/s
they achieve, peak memory, and the machine's own matmul peak to compare with. `darknetpy bench`
(cli.py) prints them for one cfg; benchmarks/ (throughput.py, ab.py, torch_reference.py) build
their tables from the same functions.

What is timed
  training    `Network.train_step` on a full datum of random class ids, (time_steps, streams):
              forward, backward and the update (subdivisions=1). Median over `iterations` steps
              after `warmup` untimed ones. chars/s = time_steps * streams / step time.
  generation  what `darknetpy generate` does: the net loaded with batch=1, time_steps=1, one char at
              a time, `Network.stepper` then `darknet_sampler.sample_index` (at generate's default
              temperature), the sample fed back.

FLOP model (matmul FLOPs only; activations, gates, softmax, batchnorm and the update are not
counted). Every connected (sub)layer product of an `in -> out` matrix costs, per row (one row = one
character of one stream at one time step):
  forward                  2*in*out
  backward                 2*in*out for the weight gradient + 2*in*out for the input delta
so backward ≈ 2x forward, with these exceptions:
  - the first layer reads one-hot inputs given as ids: its input projection is a row gather,
    counted 0 forward; its weight gradient is a scatter-add, counted `out` additions per row; and
    layer 0 hands no delta back to the input, so it has no input-delta cost (layer 0 only);
  - a recurrent product (LSTM w, GRU wz|wr and wh, RNN self) sends no delta into the state before
    the datum (truncated BPTT), so its input delta is counted for time_steps-1 of time_steps steps.
Products per layer: [connected] in->out; [rnn] input in->n, self n->n (recurrent), output n->n;
[lstm] u in->4n, w n->4n (recurrent); [gru] u in->3n, wz|wr n->2n and wh n->n (recurrent).
Training FLOPs/char = forward + backward at the training shape; generation FLOPs/char = forward.
GFLOP/s = FLOPs/char * chars/s / 1e9, compared with numpy's float32 2048x2048 @ 2048x2048 matmul.

Peak RSS is the process's high-water mark (ru_maxrss): meaningful per config only when each config
runs in a fresh process (benchmarks/throughput.py does that).
"""
import os
import resource
import statistics
import sys
import time

import numpy as np

from . import kernels, launcher
from .errors import DarknetpyError
from .options import GenerationOptions

ITERATIONS, WARMUP, GEN_CHARS = 5, 1, 500  # timed training steps, untimed ones before, characters generated


# ---- FLOP model ---------------------------------------------------------------------------------
def flops_per_char(net, time_steps=None, ids_input=True):
    """(forward, backward) matmul FLOPs per character (one row) under the model in the module
    docstring. `time_steps` defaults to the net's; `ids_input` says the inputs are class ids."""
    T = net.time_steps if time_steps is None else time_steps
    fwd = bwd = 0.0
    for i, layer in enumerate(net.layers):
        for fan_in, fan_out, recurrent, reads_input in layer.products():
            product = 2.0 * fan_in * fan_out
            if i == 0 and reads_input:
                if not ids_input:
                    fwd += product
                    bwd += product  # weight gradient; layer 0 returns no input delta
                else:
                    bwd += fan_out  # scatter-add of the gate deltas into the gathered rows
                continue
            fwd += product
            bwd += product  # weight gradient
            bwd += product * ((T - 1) / T if recurrent else 1.0)  # input delta
    return fwd, bwd


# ---- the machine --------------------------------------------------------------------------------
def fastest(fn, repeats):
    """Seconds of the fastest of `repeats` timed calls of fn, after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(n=2048, repeats=5, dtype=np.float32):
    """numpy's large-matmul GFLOP/s: best of `repeats` (n x n) @ (n x n) products after one warm-up."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
    b = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
    c = np.empty((n, n), dtype)
    return 2.0 * n ** 3 / fastest(lambda: np.matmul(a, b, out=c), repeats) / 1e9


def _threadpool_blas():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return pool
    return None


def blas_info():
    """{'name', 'version', 'threads', 'detail', 'source'} of the BLAS numpy uses: from threadpoolctl
    when it is importable, else from numpy's build configuration (threads then from the environment)."""
    pool = _threadpool_blas()
    if pool is not None:
        detail = ", ".join(f"{k} {pool[k]}" for k in ("architecture", "threading_layer") if pool.get(k))
        return {"name": pool.get("internal_api") or pool.get("prefix"), "version": pool.get("version") or "",
                "threads": int(pool["num_threads"]), "detail": detail, "source": "threadpoolctl"}
    name = version = detail = ""
    try:
        config = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = config.get("Build Dependencies", {}).get("blas", {})
        name, version = blas.get("name", ""), blas.get("version", "")
        detail = blas.get("openblas configuration", "")
    except (TypeError, AttributeError):  # older numpy: only the printed form
        try:
            info = np.__config__.get_info("blas_opt_info")  # type: ignore[attr-defined]
            name = ",".join(info.get("libraries", []))
        except Exception:  # noqa: BLE001 - best effort, only a label
            pass
    return {"name": name or "unknown", "version": version, "threads": launcher.blas_threads(), "detail": detail,
            "source": "numpy build config"}


def blas_threads():
    """Threads numpy's BLAS uses (threadpoolctl if importable, else env vars / CPU count)."""
    return blas_info()["threads"]


def blas_label(info=None):
    info = info or blas_info()
    text = f"{info['name']} {info['version']}".strip()
    if info["detail"]:
        text += f" ({info['detail']})"
    return f"{text}, {info['threads']} threads [{info['source']}]"


def peak_rss_bytes(who=resource.RUSAGE_SELF):
    """The process's peak resident set size in bytes (ru_maxrss is KiB on Linux, bytes on macOS);
    who=resource.RUSAGE_CHILDREN: the largest of its waited-for children's."""
    peak = resource.getrusage(who).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


# ---- measurements -------------------------------------------------------------------------------
def _quiet_network(cfg, **kwargs):
    import warnings

    from .network import Network
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unused cfg keys: not this command's business
        return Network(cfg, **kwargs)


def measure_train(cfg, iterations=ITERATIONS, warmup=WARMUP, seed=0):
    """Time `iterations` full training steps (after `warmup` untimed ones) on random ids.

    Returns a dict: chars_per_s (median step), step_s (all timed steps), chars_per_step,
    flops_per_char (forward + backward), gflops, streams, time_steps, precision (Network.precision_label)."""
    net = _quiet_network(cfg, seed=seed)
    T, S = net.time_steps, net.streams
    rng = np.random.default_rng(seed)
    steps = []
    for k in range(warmup + iterations):
        x = rng.integers(0, net.inputs, size=(T, S))
        y = rng.integers(0, net.outputs, size=(T, S))
        t = time.perf_counter()
        net.train_step(x, y)
        if k >= warmup:
            steps.append(time.perf_counter() - t)
    fwd, bwd = flops_per_char(net)
    median = statistics.median(steps)
    chars = T * S
    return {"chars_per_s": chars / median, "step_s": steps, "chars_per_step": chars,
            "flops_per_char": fwd + bwd, "gflops": (fwd + bwd) * chars / median / 1e9,
            "streams": S, "time_steps": T, "precision": net.precision_label}


def measure_generate(cfg, chars=GEN_CHARS, warmup=20, seed=0, temp=GenerationOptions.temperature):
    """Time `chars` generated characters (after `warmup` untimed ones), as `darknetpy generate`
    does: batch=1, time_steps=1, Network.stepper + sample_index with the sample fed back.

    Returns a dict: chars_per_s, chars, flops_per_char (forward), gflops."""
    from .darknet_sampler import NumpyRand, sample_index
    net = _quiet_network(cfg, batch=1, time_steps=1, seed=seed)
    if net.outputs > net.inputs:
        raise DarknetpyError(f"generation feeds each sample back, but the net has {net.outputs} outputs and "
                             f"{net.inputs} inputs", cfg)
    net.set_temperature(temp)
    rng = NumpyRand(seed)
    step = net.stepper(private=True)
    c = 10
    for _ in range(warmup):
        c = sample_index(step([c])[0], rng)
    t = time.perf_counter()
    for _ in range(chars):
        c = sample_index(step([c])[0], rng)
    elapsed = time.perf_counter() - t
    fwd, _ = flops_per_char(net, time_steps=1)
    return {"chars_per_s": chars / elapsed, "chars": chars, "flops_per_char": fwd,
            "gflops": fwd * chars / elapsed / 1e9}


def run_config(cfg, iterations=ITERATIONS, warmup=WARMUP, gen_chars=GEN_CHARS, train=True, generate=True, peak=False):
    """Everything for one cfg, in this process: {'train': ..., 'generate': ..., 'peak_rss': bytes,
    'blas': ..., 'matmul_gflops': ...}. The matmul peak (optional) is measured after the RSS is read."""
    out = {"cfg": str(cfg), "train": None, "generate": None}
    if train:
        out["train"] = measure_train(cfg, iterations=iterations, warmup=warmup)
    if generate:
        out["generate"] = measure_generate(cfg, chars=gen_chars, warmup=10 * warmup)
    out["peak_rss"] = peak_rss_bytes()
    out["blas"] = blas_info()
    out["kernels"] = kernels.label()
    if peak:
        out["matmul_gflops"] = matmul_peak()
    return out


# ---- formatting ---------------------------------------------------------------------------------
def fmt_rate(x):
    return "-" if x is None else f"{x:,.0f}"


def fmt_mb(x):
    return "-" if x is None else f"{x / 1e6:,.0f} MB"


def format_table(rows, align=None):
    """Rows of equal-length string tuples, the first the header. `align` is one 'l' or 'r' per
    column (default: the first column left, the others right)."""
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    align = align or "l" + "r" * (len(widths) - 1)
    lines = []
    for k, r in enumerate(rows):
        lines.append("  ".join(v.ljust(w) if a == "l" else v.rjust(w)
                               for v, w, a in zip(r, widths, align)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def report(cfg, r):
    """`darknetpy bench`'s output for run_config's result `r` (measured with peak=True)."""
    peak = r["matmul_gflops"]
    rows = [("measure", "value", "note")]
    tr, gen = r["train"], r["generate"]
    if tr:
        rows.append(("train chars/s", fmt_rate(tr["chars_per_s"]),
                     f"{tr['streams']} streams x {tr['time_steps']} steps, median of {len(tr['step_s'])} "
                     f"steps of {statistics.median(tr['step_s']):.3f} s"))
        rows.append(("train GFLOP/s", f"{tr['gflops']:.1f}",
                     f"{100 * tr['gflops'] / peak:.0f}% of the matmul peak; {tr['flops_per_char'] / 1e6:.2f} MFLOP/char"))
        rows.append(("train precision", tr["precision"], "of the large products ([net] precision, darknetpy's)"))
    if gen:
        rows.append(("generate chars/s", fmt_rate(gen["chars_per_s"]), f"{gen['chars']} chars, 1 stream"))
        rows.append(("generate GFLOP/s", f"{gen['gflops']:.2f}",
                     f"{100 * gen['gflops'] / peak:.1f}% of the matmul peak; {gen['flops_per_char'] / 1e6:.2f} MFLOP/char"))
    rows.append(("peak RSS", fmt_mb(r["peak_rss"]), "this process, before the matmul peak"))
    rows.append(("matmul peak GFLOP/s", f"{peak:.1f}", "numpy float32 2048x2048 @ 2048x2048, best of 5"))
    lines = [str(cfg), format_table(rows, align="lrl"),
             f"BLAS: {blas_label(r['blas'])}; training kernels: {r['kernels']}"]
    if os.environ.get("OPENBLAS_CORETYPE"):
        lines.append(f"note: OPENBLAS_CORETYPE={os.environ['OPENBLAS_CORETYPE']} is set, so OpenBLAS runs those "
                     "kernels; without it (env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE) a current OpenBLAS picks "
                     "its own.")
    return "\n".join(lines)
