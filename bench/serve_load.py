"""Load test for `sentune serve`: N concurrent clients for T seconds; requests/s, latency percentiles, errors.

    python bench/serve_load.py --model runs/imdb-.../best                 # starts the server itself, once per
                                                                         # --max-batch (default 64 then 1)
    python bench/serve_load.py --url http://127.0.0.1:8000 --clients 32   # against a running server
    python bench/serve_load.py --model M --max-batch 64 --workers 1,2 --pipeline --clients 1,8,32
                                  # sentune with 1 and 2 workers and transformers.pipeline behind FastAPI
                                  # (bench/pipeline_server.py), each at 1, 8 and 32 clients

Each client sends one IMDB test review per request ({"text": ...}), waits for the answer, and sends the
next: closed-loop load, so requests/s is the service's throughput at that concurrency. A run stops after
--seconds or --max-requests, whichever comes first (bounded in both). Any non-200 answer, timeout or
connection error counts as an error. With --model, every --max-batch setting runs against a fresh
`sentune serve` in the same invocation, so micro-batching (64) and no batching (1) are compared on
equal terms; so are --workers settings and the --pipeline baseline. Every server is started first and
kept up; then each (server, clients) cell is driven for --seconds, interleaved, --rounds times. This is
a benchmark, not a test: it prints a table and asserts nothing. "server CPU ms / request" is the CPU time
of the server's processes during the cell divided by its requests: on a shared machine the requests/s
depend on what else runs, this much less.
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
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "imdb" / "test_small.jsonl.gz"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    target.add_argument("--model", help="model folder: start `sentune serve` for each --max-batch")
    ap.add_argument("--max-batch", default="64,1", help="with --model: comma-separated settings to compare")
    ap.add_argument("--workers", default="1", help="with --model: comma-separated --workers settings; WxT also "
                    "sets --threads T (e.g. 1,2,1x1)")
    ap.add_argument("--pipeline", action="store_true", help="with --model: also the transformers.pipeline baseline")
    ap.add_argument("--max-wait-ms", type=float, default=0.0, help="with --model (0: the server's default)")
    ap.add_argument("--backend", default="auto", help="with --model")
    ap.add_argument("--precision", default="auto", help="with --model: the server's --precision")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="with --model: the server's setting")
    ap.add_argument("--clients", default="32", help="comma-separated concurrency levels")
    ap.add_argument("--seconds", type=float, default=30.0, help="per round, per server and --clients level")
    ap.add_argument("--rounds", type=int, default=1, help="repeat every (server, clients) cell, interleaved")
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


async def load(url: str, texts: list[str], args, clients: int) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    budget = [args.max_requests]
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as http:
        began = time.perf_counter()
        stop_at = began + args.seconds
        await asyncio.gather(*(client(http, texts, k * 37, stop_at, budget, latencies, errors)
                               for k in range(clients)))
        elapsed = time.perf_counter() - began
        meta = (await http.get("/metadata")).json()
    return {"max_batch": meta.get("max_batch"), "backend": meta.get("backend"), "clients": clients,
            "seconds": elapsed, "latencies": latencies, "errors": errors, "load_avg": os.getloadavg()[0]}


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a server and its workers: what a request costs, whatever the contention."""
    if pid is None:
        return float("nan")
    parent = psutil.Process(pid)
    total = 0.0
    for proc in [parent, *parent.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system
    return total


def measured(url: str, pid: int | None, texts: list[str], args, clients: int) -> dict:
    before = cpu_seconds(pid)
    row = asyncio.run(load(url, texts, args, clients))
    return {**row, "cpu_s": cpu_seconds(pid) - before}


def merged(runs: list[dict]) -> dict:
    """One row from one or more rounds of the same server and concurrency."""
    latencies = [x for r in runs for x in r["latencies"]]
    errors = [e for r in runs for e in r["errors"]]
    seconds = sum(r["seconds"] for r in runs)
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    first = runs[0]
    return {"server": first.get("server", ""), "max_batch": first["max_batch"], "backend": first["backend"],
            "clients": first["clients"], "rounds": len(runs), "seconds": seconds, "requests": len(latencies),
            "requests_per_s": len(latencies) / seconds, "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "errors": len(errors), "error_kinds": sorted(set(errors)),
            "cpu_ms_per_request": 1000 * sum(r["cpu_s"] for r in runs) / max(1, len(latencies)),
            "load_avg": float(np.mean([r["load_avg"] for r in runs]))}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(setting: tuple, port: int, args) -> list[str]:
    if setting[0] == "pipeline":
        return [sys.executable, str(REPO / "bench" / "pipeline_server.py"), args.model, "--port", str(port)]
    _, max_batch, workers, threads = setting
    # --max-queue and --request-timeout out of the way: this measures throughput, not backpressure
    return [sys.executable, "-m", "sentune", "serve", args.model, "--port", str(port), "--backend", args.backend,
            "--max-batch", str(max_batch), "--max-wait-ms", str(args.max_wait_ms), "--workers", str(workers),
            "--max-queue", "100000", "--request-timeout", "600", "--precision", args.precision,
            *(["--threads", str(threads)] if threads else []),
            *(["--max-batch-tokens", str(args.max_batch_tokens)] if args.max_batch_tokens else [])]


def is_ready(url: str, setting: tuple) -> bool:
    """sentune: every worker loaded and warmed up (sentune_ready sums them); the baseline: /health."""
    with contextlib.suppress(httpx.HTTPError):
        if setting[0] == "pipeline":
            return httpx.get(url + "/health", timeout=2).status_code == 200
        return f"sentune_ready {setting[2]:.1f}" in httpx.get(url + "/metrics", timeout=2).text
    return False


@contextlib.contextmanager
def server(setting: tuple, args):
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # the server's access log and messages go to a file, not between the table's lines
    log = open(os.path.join(tempfile.gettempdir(), f"serve_load-{port}.log"), "w")  # noqa: SIM115
    proc = subprocess.Popen(server_command(setting, port, args), env=env, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"sentune serve exited with code {proc.returncode}")
            if is_ready(url, setting):
                break
            if time.monotonic() > deadline:
                raise SystemExit("the server was not ready within 300 s")
            time.sleep(0.5)
        for text in ("a warm-up request", "another one, a little longer than the first"):  # first-call costs
            httpx.post(url + "/predict", json={"text": text}, timeout=120).raise_for_status()
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful shutdown, as a service manager would stop it
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def report(rows: list[dict], args) -> None:
    print(f"\n{args.rounds} x up to {args.seconds:.0f} s / {args.max_requests} requests each row; "
          f"texts: {args.data} (cut to {args.max_chars} chars); load average {os.getloadavg()[0]:.1f}\n")
    print("| server | max batch | backend | clients | requests | requests/s | p50 ms | p95 ms | p99 ms | errors "
          "| server CPU ms / request | load avg |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.get('server', '')} | {r['max_batch']} | {r['backend']} | {r['clients']} | {r['requests']} | "
              f"{r['requests_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | "
              f"{r['errors']} | {r['cpu_ms_per_request']:.0f} | {r['load_avg']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": rows},
                                        indent=2))


def worker_setting(spec: str) -> tuple[int, int | None]:
    """"2" -> (2 workers, default threads); "1x1" -> (1 worker, 1 thread)."""
    workers, _, threads = spec.partition("x")
    return int(workers), int(threads) if threads else None


def main(argv=None) -> None:
    args = parse_args(argv)
    texts = load_texts(args.data, args.max_chars)
    levels = [int(c) for c in args.clients.split(",")]
    runs: dict[tuple[str, int], list[dict]] = {}
    with contextlib.ExitStack() as stack:
        if args.url:
            urls = {"": (args.url, None)}
        else:
            settings = [("sentune", int(b), *worker_setting(w)) for b in args.max_batch.split(",")
                        for w in args.workers.split(",")]
            urls = {}
            for setting in settings + ([("pipeline",)] if args.pipeline else []):
                name = "pipeline" if setting[0] == "pipeline" else (
                    f"sentune --workers {setting[2]}" + (f" --threads {setting[3]}" if setting[3] else "")
                    + (f" --max-batch {setting[1]}" if "," in args.max_batch else ""))
                print(f"starting {name}...", file=sys.stderr)
                urls[name] = stack.enter_context(server(setting, args))
        # rounds x levels x servers, interleaved: on a shared machine the background load drifts, and
        # interleaving spreads that drift over every server instead of landing on whichever ran last
        for _ in range(args.rounds):
            for n in levels:
                for name, (url, pid) in urls.items():
                    runs.setdefault((name, n), []).append({"server": name, **measured(url, pid, texts, args, n)})
    rows = [merged(r) for r in runs.values()]
    report(rows, args)


if __name__ == "__main__":
    main()
