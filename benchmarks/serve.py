"""`darknetpy serve` under load: 32 concurrent requests against one request alone.

Starts the real server (`python -m darknetpy serve` on a free port) on a cfg with random weights,
then, taking turns round by round:
- one request alone: /v1/completions, `--chars` symbols, streamed; its chars/s;
- `--clients` requests at once, each with its own seed: the aggregate chars/s (all their symbols
  over the wall time from the first request sent to the last one done), and each request's time
  to first byte (the first streamed chunk with text).
Prints the ratio of the two rates (issue 31 asks for >= 6x at 32 x 400 characters) and the
p50/p99 time to first byte under load.

    python benchmarks/serve.py                          # benchmarks/lstm2x256.cfg, 32 x 400
    python benchmarks/serve.py cfg/rnn.cfg --clients 16

OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset by re-running itself without them (blas_env.py).
A benchmark, not a test: run it on a quiet machine and compare ratios.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from blas_env import MACHINE_VARS, timed_env

HERE = os.path.dirname(os.path.abspath(__file__))


def start(cfg, weights, clients):
    proc = subprocess.Popen([sys.executable, "-m", "darknetpy", "serve", cfg, weights, "--port", "0",
                             "--max-streams", str(max(clients, 1)), "--max-length", "100000"],
                            stderr=subprocess.PIPE, env=timed_env())
    for line in proc.stderr:
        if line.startswith(b"serving on "):
            return proc, line.decode().split()[-1]
    raise SystemExit("the server did not start")


def one(url, seed, chars):
    """One streamed completion: (symbols, seconds to the first text, seconds in all)."""
    import httpx
    t0 = time.perf_counter()
    first, body = None, {"prompt": "\n", "max_tokens": chars, "seed": seed, "temperature": 0.8, "stream": True,
                         "stream_options": {"include_usage": True}}
    symbols = 0
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=None) as r:
        for line in r.iter_lines():  # parsed only as far as needed: the clients share this process
            if first is None and line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                first = time.perf_counter() - t0
            elif '"usage"' in line:
                symbols = json.loads(line[6:])["usage"]["completion_tokens"]
    return symbols, first, time.perf_counter() - t0


def load(url, clients, chars, round_):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(lambda i: one(url, 1000 * round_ + i, chars), range(clients)))
    wall = time.perf_counter() - t0
    return sum(r[0] for r in results) / wall, [r[1] for r in results]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cfg", nargs="?", default=os.path.join(HERE, "lstm2x256.cfg"))
    ap.add_argument("--clients", type=int, default=32, help="concurrent requests (default: 32)")
    ap.add_argument("--chars", type=int, default=400, help="symbols per request (default: 400)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of both measures, taking turns (default: 3)")
    args = ap.parse_args()
    if any(v in os.environ for v in MACHINE_VARS):
        os.execve(sys.executable, [sys.executable, *sys.argv], timed_env())
    import darknetpy
    folder = tempfile.mkdtemp()
    weights = os.path.join(folder, "random.weights")
    darknetpy.load_network(args.cfg, batch=1, time_steps=1).save_weights(weights)
    proc, url = start(args.cfg, weights, args.clients)
    try:
        one(url, 0, 10)  # warm-up: the stepper sizes are made on first use
        load(url, args.clients, 10, 0)
        alone, loaded, ttfb = [], [], []
        for r in range(args.rounds):
            symbols, _, seconds = one(url, r, args.chars)
            alone.append(symbols / seconds)
            rate, firsts = load(url, args.clients, args.chars, r + 1)
            loaded.append(rate)
            ttfb += firsts
    finally:
        proc.terminate()
        proc.wait()
    a, b = statistics.median(alone), statistics.median(loaded)
    ttfb.sort()
    print(f"{os.path.basename(args.cfg)}: one request alone {a:,.0f} chars/s; {args.clients} at once "
          f"{b:,.0f} chars/s aggregate = {b / a:.1f}x")
    print(f"time to first byte under load: p50 {1000 * ttfb[len(ttfb) // 2]:.0f} ms, "
          f"p99 {1000 * ttfb[min(len(ttfb) - 1, int(0.99 * len(ttfb)))]:.0f} ms ({len(ttfb)} requests)")


if __name__ == "__main__":
    main()
