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
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

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


async def one(url, seed, chars):
    """One streamed completion over a raw socket (the clients must cost the machine little next
    to the server they measure): (symbols, seconds to the first text, seconds in all)."""
    host, port = url.split("//")[1].split(":")
    body = json.dumps({"prompt": "\n", "max_tokens": chars, "seed": seed, "temperature": 0.8, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    first, data = None, b""
    while chunk := await reader.read(1 << 16):
        data += chunk
        if first is None and b"data: {" in data:  # the first chunk holds text (the echo is not sent)
            first = time.perf_counter() - t0
    writer.close()
    symbols = int(re.findall(rb'"completion_tokens": (\d+)', data)[-1])
    return symbols, first, time.perf_counter() - t0


def load(url, clients, chars, round_):
    """`clients` requests at once: (aggregate symbols/s, each one's time to first text)."""
    async def all_of():
        return await asyncio.gather(*(one(url, 1000 * round_ + i, chars) for i in range(clients)))
    t0 = time.perf_counter()
    results = asyncio.run(all_of())
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
        load(url, args.clients, 10, 0)  # warm-up: the stepper sizes are made on first use
        alone, loaded, ttfb = [], [], []
        for r in range(args.rounds):
            alone.append(load(url, 1, args.chars, 100 + r)[0])
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
