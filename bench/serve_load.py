"""Load test for `sentune serve`: N concurrent clients for T seconds; requests/s, latency percentiles, errors.

    python bench/serve_load.py --model runs/imdb-.../best                 # starts the server itself, once per
                                                                         # --max-batch (default 64 then 1)
    python bench/serve_load.py --url http://127.0.0.1:8000 --clients 32   # against a running server

Each client sends one IMDB test review per request ({"text": ...}), waits for the answer, and sends the
next: closed-loop load, so requests/s is the service's throughput at that concurrency. A run stops after
--seconds or --max-requests, whichever comes first (bounded in both). Any non-200 answer, timeout or
connection error counts as an error. With --model, every --max-batch setting runs against a fresh
`sentune serve` in the same invocation, so micro-batching (64) and no batching (1) are compared on
equal terms. This is a benchmark, not a test: it prints a table and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imdb" / "test_small.jsonl.gz"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", help="model folder: start `sentune serve` for each --max-batch")
    ap.add_argument("--max-batch", default="64,1", help="with --model: comma-separated settings to compare")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="with --model")
    ap.add_argument("--backend", default="auto", help="with --model")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests in all")
    ap.add_argument("--timeout", type=float, default=60.0, help="per request, seconds")
    ap.add_argument("--data", default=str(DATA), help="JSONL(.gz) with a text field")
    ap.add_argument("--max-chars", type=int, default=4000, help="cut reviews to this many characters")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    return ap.parse_args(argv)


def load_texts(path: str, max_chars: int, n: int = 2000) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path) as f:
        texts = [json.loads(line)["text"][:max_chars] for line in f if line.strip()]
    random.Random(0).shuffle(texts)
    return texts[:n]


async def client(http: httpx.AsyncClient, texts: list[str], start: int, stop_at: float, budget: list[int],
                 latencies: list[float], errors: list[str]) -> None:
    i = start
    while time.perf_counter() < stop_at and budget[0] > 0:
        budget[0] -= 1
        began = time.perf_counter()
        try:
            r = await http.post("/predict", json={"text": texts[i % len(texts)]})
            if r.status_code == 200:
                latencies.append(time.perf_counter() - began)
            else:
                errors.append(f"HTTP {r.status_code}")
        except httpx.HTTPError as e:
            errors.append(type(e).__name__)
        i += 1


async def load(url: str, texts: list[str], args) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    budget = [args.max_requests]
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as http:
        began = time.perf_counter()
        stop_at = began + args.seconds
        await asyncio.gather(*(client(http, texts, k * 37, stop_at, budget, latencies, errors)
                               for k in range(args.clients)))
        elapsed = time.perf_counter() - began
        meta = (await http.get("/metadata")).json()
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"max_batch": meta.get("max_batch"), "backend": meta.get("backend"), "clients": args.clients,
            "seconds": elapsed, "requests": len(latencies), "requests_per_s": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": len(errors),
            "error_kinds": sorted(set(errors))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(model: str, max_batch: int, args):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "sentune", "serve", model, "--port", str(port), "--backend", args.backend,
           "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    proc = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"sentune serve exited with code {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("sentune serve did not answer /health within 180 s")
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful shutdown, as a service manager would stop it
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def report(rows: list[dict], args) -> None:
    print(f"\n{args.clients} clients, up to {args.seconds:.0f} s / {args.max_requests} requests each setting; "
          f"texts: {args.data} (cut to {args.max_chars} chars); load average {os.getloadavg()[0]:.1f}\n")
    print("| max batch | backend | requests | requests/s | p50 ms | p95 ms | p99 ms | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['max_batch']} | {r['backend']} | {r['requests']} | {r['requests_per_s']:.1f} | "
              f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": rows},
                                        indent=2))


def main(argv=None) -> None:
    args = parse_args(argv)
    texts = load_texts(args.data, args.max_chars)
    rows = []
    if args.url:
        rows.append(asyncio.run(load(args.url, texts, args)))
    else:
        for max_batch in (int(b) for b in args.max_batch.split(",")):
            print(f"serving {args.model} with --max-batch {max_batch}...", file=sys.stderr)
            with server(args.model, max_batch, args) as url:
                rows.append(asyncio.run(load(url, texts, args)))
    report(rows, args)


if __name__ == "__main__":
    main()
