"""Soak and fault test for `sentune serve`: many clients mixing valid, oversized, malformed, unauthenticated,
hang-up and /explain requests, slow clients trickling their headers or bodies, then SIGTERM under load.
Loopback only; every loop is bounded in time and count.

    python bench/serve_soak.py --model RUN/best --clients 64 --seconds 60          # the issue's soak
    python bench/serve_soak.py --model RUN/best --clients 64 --seconds 60 --workers 2

It starts its own `sentune serve` (with an API key, JSON access log, small queue) and checks:
  * no 5xx except 503 from timed-out requests or shutdown; every response JSON with the sent X-Request-ID;
  * /metrics request counts equal the access log's (/predict and /explain), and the access log agrees with
    what each client saw (a client that hung up may be logged 499 or answered too late; nothing else may differ);
  * /explain under load answers 200, or 429 (its own bounded line) / 503 (timeout), never holds up /predict;
  * every slow client (a header line, or a byte of body, per second) is cut off within --read-timeout + 2.5 s;
  * RSS at the end within 10 % of RSS after warm-up; the server alive after the soak;
  * SIGTERM during load: every request the server took in was answered (finished or 503), none was
    dropped, and the server exited within --graceful-timeout.
It prints the figures and PASS/FAIL per check; tests/test_serve_soak.py runs a short version.
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
from collections import Counter
from pathlib import Path

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
TWEETS = REPO.parent / "shared" / "data" / "tweeteval_sentiment" / "test_dev.jsonl.gz"
KEY = "soak-key-0123456789abcdef"
# kind: weight. "valid" answers 200 (or 429 / 503 under load); the rest have one right answer.
MIX = {"valid": 50, "bulk": 5, "oversized": 6, "too_many": 5, "malformed": 6, "wrong_type": 4,
       "no_key": 6, "wrong_key": 4, "hang_up": 14, "explain": 4, "not_json": 2}
EXPECTED = {"oversized": {413}, "too_many": {422}, "malformed": {400}, "wrong_type": {422},
            "no_key": {401}, "wrong_key": {401}, "valid": {200, 429, 503}, "bulk": {200, 429, 503},
            "hang_up": {200, 429, 503}, "explain": {200, 429, 503}, "not_json": {415}}
ROUTES = ("/predict", "/explain")
READ_TIMEOUT = 2.0
# fp32 by default: on this CPU `--precision auto` is bf16, whose RSS kept growing under the mix of batch shapes
# (docs/benchmarks.md, "Soak and fault test"); `--precision bf16` soaks that case (issue 24: bounded shapes)
SERVER_FLAGS = ["--max-queue", "128", "--request-timeout", "10", "--max-texts", "64", "--max-body-bytes", "65536",
                "--graceful-timeout", "8", "--read-timeout", str(READ_TIMEOUT),
                "--explain-max-queue", "4", "--explain-steps", "8", "--explain-max-chars", "2000"]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model folder to serve")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--slow-clients", type=int, default=16, help="connections trickling headers or bodies")
    ap.add_argument("--seconds", type=float, default=60.0, help="soak phase")
    ap.add_argument("--warmup-seconds", type=float, default=10.0, help="valid and bulk load before the RSS baseline")
    ap.add_argument("--term-seconds", type=float, default=10.0, help="load after which SIGTERM comes, at 1/3")
    ap.add_argument("--max-requests", type=int, default=200_000, help="per phase, all clients together")
    ap.add_argument("--data", default=str(TWEETS), help="JSONL(.gz) with a text field")
    ap.add_argument("--precision", default="fp32", help="the server's --precision (bf16: the native-bf16 soak)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    return ap.parse_args(argv)


def load_texts(path: str, n: int = 2000) -> list[str]:
    if not Path(path).exists():  # offline fallback: short synthetic sentences
        rng = random.Random(0)
        words = "good great bad awful film plot actor story boring fun the a was is not very".split()
        return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(n)]
    with gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path) as f:
        texts = [json.loads(line)["text"][:2000] for line in f if line.strip()]
    random.Random(0).shuffle(texts)
    return texts[:n]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`sentune serve` in a subprocess on loopback, its JSON access log in a file."""

    def __init__(self, model: str, workers: int = 1, flags: list[str] | None = None):
        flags = [*SERVER_FLAGS, "--precision", "fp32"] if flags is None else flags
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="sentune-soak-", suffix=".log")[1])
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "SENTUNE_API_KEY": KEY}
        cmd = [sys.executable, "-m", "sentune", "serve", model, "--port", str(self.port), "--workers", str(workers),
               "--log-format", "json", *flags]
        self.log_file = self.log_path.open("w")
        self.proc = subprocess.Popen(cmd, env=env, stderr=self.log_file)

    def wait_ready(self, workers: int = 1, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sentune serve exited with {self.proc.returncode}: {self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if f"sentune_ready {workers:.1f}" in httpx.get(self.url + "/metrics", timeout=2).text:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"sentune serve not ready within {timeout} s")

    def rss_mib(self) -> float:
        """Server process plus its workers, in MiB."""
        parent = psutil.Process(self.proc.pid)
        procs = [parent, *parent.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20

    def access_log(self) -> list[dict]:
        self.log_file.flush()
        lines = [line for line in self.log_path.read_text().splitlines() if line.startswith("{")]
        return [r for r in map(json.loads, lines) if r.get("logger") == "sentune.access"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.log_file.close()


def request_for(kind: str, texts: list[str], rng: random.Random) -> dict:
    auth = {"Authorization": f"Bearer {KEY}"}
    pick = lambda k: [rng.choice(texts) for _ in range(k)]  # noqa: E731
    if kind in ("valid", "hang_up"):
        body = {"text": pick(1)[0]} if rng.random() < 0.5 else {"texts": pick(rng.randint(1, 8))}
        return {"json": body, "headers": auth}
    if kind == "bulk":
        return {"json": {"texts": pick(48)}, "headers": auth}
    if kind == "oversized":
        return {"json": {"texts": ["x" * 1000] * 70}, "headers": auth}  # ~70 KB over the 64 KiB limit
    if kind == "too_many":
        return {"json": {"texts": pick(65)}, "headers": auth}
    if kind == "malformed":
        return {"content": b'{"texts": ["unterminated', "headers": {**auth, "Content-Type": "application/json"}}
    if kind == "not_json":  # what a cross-site form or text/plain post would send
        return {"content": json.dumps({"text": pick(1)[0]}).encode(), "headers": {**auth, "Content-Type": "text/plain"}}
    if kind == "explain":
        return {"json": {"text": pick(1)[0]}, "headers": auth}
    if kind == "wrong_type":
        return {"json": {"texts": [1, 2, 3]}, "headers": auth}
    if kind == "no_key":
        return {"json": {"text": pick(1)[0]}}
    return {"json": {"text": pick(1)[0]}, "headers": {"Authorization": "Bearer not-the-key"}}


async def one_request(http: httpx.AsyncClient, kind: str, rid: str, texts, rng) -> dict:
    req = request_for(kind, texts, rng)
    req["headers"] = {**req.get("headers", {}), "X-Request-ID": rid}
    record = {"id": rid, "kind": kind}
    call = http.post("/explain" if kind == "explain" else "/predict", **req)
    try:
        r = await (asyncio.wait_for(call, rng.uniform(0.01, 0.3)) if kind == "hang_up" else call)
    except asyncio.TimeoutError:
        return {**record, "outcome": "hung_up"}
    except httpx.HTTPError as e:
        return {**record, "outcome": "transport", "error": type(e).__name__}
    record.update(outcome="answered", status=r.status_code, id_echoed=r.headers.get("x-request-id") == rid)
    try:
        body = r.json()
        n = len(req["json"].get("texts") or [1]) if "json" in req else 0
        answers = body.get("explanations" if kind == "explain" else "predictions")
        record["well_formed"] = len(answers) == n if r.status_code == 200 else isinstance(body.get("error"), str)
        record["error"] = body.get("error")
    except (ValueError, KeyError, TypeError, AttributeError):
        record["well_formed"] = False
    return record


async def load(url: str, clients: int, seconds: float, max_requests: int, texts: list[str], mix: dict,
               phase: str, stop: asyncio.Event | None = None) -> list[dict]:
    """Closed-loop clients; each stops at the deadline, the request budget, or (with `stop`) once the
    server refuses connections after `stop` is set."""
    records: list[dict] = []
    budget = [max_requests]
    kinds, weights = list(mix), list(mix.values())
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        deadline = time.monotonic() + seconds

        async def client(k: int) -> None:
            rng = random.Random(f"{phase}-{k}")
            n = 0
            while time.monotonic() < deadline and budget[0] > 0:
                budget[0] -= 1
                kind = rng.choices(kinds, weights)[0]
                rec = await one_request(http, kind, f"{phase}-c{k}-{n}", texts, rng)
                records.append(rec)
                n += 1
                if stop is not None and stop.is_set() and rec["outcome"] == "transport":
                    return  # the server has gone away after SIGTERM

        await asyncio.gather(*(client(k) for k in range(clients)))
    return records


def metrics_counts(url: str, route: str = "/predict") -> Counter:
    from prometheus_client.parser import text_string_to_metric_families

    out: Counter = Counter()
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=10).text):
        for s in family.samples:
            if s.name == "sentune_requests_total" and s.labels["route"] == route:
                out[s.labels["status"]] += int(s.value)
    return out


async def slow_client(port: int, kind: str, seconds: float, patience: float) -> list[float]:
    """One connection after another that trickles its request head ("slow_head") or its body ("slow_body"),
    a piece a second, until the server answers or closes; the seconds each connection was held.
    Each connection gives up after `patience` seconds (the check then fails): bounded either way."""
    head = (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{\"text\": \"").encode()
    held: list[float] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        began = time.monotonic()
        writer.write(head if kind == "slow_body" else b"POST /predict HTTP/1.1\r\n")
        with contextlib.suppress(ConnectionError, OSError):
            while time.monotonic() - began < patience:
                writer.write(b"x" if kind == "slow_body" else b"X-Slow: 1\r\n")
                await writer.drain()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(reader.read(4096), 1.0)  # an answer (408) or the close
                    break
        held.append(time.monotonic() - began)
        writer.close()
    return held


async def with_slow_clients(url: str, port: int, args, texts: list[str], mix: dict, phase: str):
    """The closed-loop load and, alongside, `args.slow_clients` slow connections (half heads, half bodies)."""
    kinds = ["slow_head", "slow_body"] * args.slow_clients
    slow = [slow_client(port, kind, args.seconds, 3 * READ_TIMEOUT + 5) for kind in kinds[: args.slow_clients]]
    records, *held = await asyncio.gather(load(url, args.clients, args.seconds, args.max_requests, texts, mix, phase),
                                          *slow)
    return records, [t for each in held for t in each]


def check_records(records: list[dict], logged: dict[str, object], allow_transport: bool) -> dict[str, bool]:
    """The per-request checks shared by the soak and the SIGTERM phase."""
    answered = [r for r in records if r["outcome"] == "answered"]
    bad_503 = [r for r in answered if r["status"] == 503 and not any(
        w in (r.get("error") or "") for w in ("timeout", "shut"))]
    transport = [r for r in records if r["outcome"] == "transport"]
    return {
        "no 5xx other than timeout/shutdown 503": all(r["status"] < 500 for r in answered if r["status"] != 503)
        and not bad_503,
        "every response well-formed JSON with its X-Request-ID": all(r["well_formed"] and r["id_echoed"]
                                                                     for r in answered),
        "every status is the one its request kind allows": all(r["status"] in EXPECTED[r["kind"]] for r in answered),
        # the access log agrees with what each client saw; a hung-up client may be logged 499 or answered
        "access log == what each client saw": all(logged.get(r["id"]) == r["status"] for r in answered),
        "no request dropped without an answer": "dropped" not in logged.values()
        and not any(r["id"] in logged and logged[r["id"]] != 499 for r in transport),
        "no connection errors" if not allow_transport else "connection errors only after SIGTERM":
        allow_transport or not transport,
    }


def summary(records: list[dict], seconds: float) -> dict:
    answered = [r for r in records if r["outcome"] == "answered"]
    return {"requests": len(records), "seconds": round(seconds, 1),
            "by_kind": dict(Counter(r["kind"] for r in records)),
            "by_status": dict(sorted(Counter(str(r["status"]) for r in answered).items())),
            "hung_up": sum(r["outcome"] == "hung_up" for r in records),
            "transport_errors": dict(Counter(r.get("error") for r in records if r["outcome"] == "transport"))}


def soak(server: Server, args, texts: list[str]) -> tuple[dict, dict[str, bool]]:
    """Warm-up (valid load), RSS baseline, the mixed soak, then counts and memory compared."""
    # the warm-up sends the soak's valid, bulk and explain shapes, so the baseline has seen the largest
    # batches and holds the explainer's float32 model copy (built on the first /explain)
    warm_mix = {"valid": MIX["valid"], "bulk": MIX["bulk"], "explain": MIX["explain"]}
    asyncio.run(load(server.url, args.clients, args.warmup_seconds, args.max_requests, texts, warm_mix, "warm"))
    rss_start = server.rss_mib()
    began = time.monotonic()
    records, held = asyncio.run(with_slow_clients(server.url, server.port, args, texts, MIX, "soak"))
    elapsed = time.monotonic() - began
    time.sleep(0.5)  # let the last hung-up requests reach the log
    rss_end = server.rss_mib()
    entries = [e for e in server.access_log() if e["path"] in ROUTES]
    logged = {e["request_id"]: e["status"] for e in entries}
    from_log = {route: Counter(str(e["status"]) for e in entries if e["path"] == route) for route in ROUTES}
    from_metrics = {route: metrics_counts(server.url, route) for route in ROUTES}
    checks = check_records([r for r in records], logged, allow_transport=False)
    checks["/metrics counts == access log counts"] = from_metrics == from_log
    checks[f"every slow client cut off within {READ_TIMEOUT + 2.5:g} s"] = bool(held) == bool(args.slow_clients) \
        and max(held, default=0) <= READ_TIMEOUT + 2.5
    checks["RSS at the end within 10 % of after warm-up"] = rss_end <= 1.10 * rss_start
    checks["server alive after the soak"] = server.proc.poll() is None and httpx.get(
        server.url + "/health", timeout=10).status_code == 200
    info = {**summary(records, elapsed), "rss_after_warmup_mib": round(rss_start, 1),
            "rss_end_mib": round(rss_end, 1), "slow_connections": len(held),
            "slow_held_max_s": round(max(held, default=0), 2),
            "metrics_predict_by_status": dict(sorted(from_metrics["/predict"].items())),
            "metrics_explain_by_status": dict(sorted(from_metrics["/explain"].items()))}
    return info, checks


def sigterm(server: Server, args, texts: list[str], grace: float = 8.0) -> tuple[dict, dict[str, bool]]:
    """Valid load; SIGTERM a third of the way in; the clients keep going until the server is gone."""

    async def run() -> tuple[list[dict], float | None]:
        stop = asyncio.Event()
        clients = asyncio.ensure_future(load(server.url, args.clients, args.term_seconds + grace + 5,
                                             args.max_requests, texts, {"valid": 9, "hang_up": 1}, "term", stop))
        await asyncio.sleep(args.term_seconds / 3)
        server.proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        stop.set()
        while server.proc.poll() is None and time.monotonic() - sent < grace + 10:
            await asyncio.sleep(0.05)
        exited = time.monotonic() - sent if server.proc.poll() is not None else None
        return await clients, exited

    records, exit_seconds = asyncio.run(run())
    logged = {e["request_id"]: e["status"] for e in server.access_log() if e["path"] == "/predict"}
    term = [r for r in records]
    checks = check_records(term, logged, allow_transport=True)
    checks[f"exited within the {grace:g} s grace period"] = exit_seconds is not None and exit_seconds <= grace
    checks["clean exit status (0, or re-raised SIGTERM)"] = server.proc.returncode in (0, -signal.SIGTERM)
    info = {**summary(term, 0), "exit_seconds": None if exit_seconds is None else round(exit_seconds, 2),
            "returncode": server.proc.returncode,
            "answered_503_at_shutdown": sum(r.get("status") == 503 for r in term)}
    return info, checks


def report(title: str, info: dict, checks: dict[str, bool]) -> None:
    print(f"\n## {title}\n")
    for k, v in info.items():
        print(f"- {k}: {v}")
    for name, ok in checks.items():
        print(f"- {'PASS' if ok else 'FAIL'}: {name}")


def main(argv=None) -> int:
    args = parse_args(argv)
    texts = load_texts(args.data)
    server = Server(args.model, args.workers, [*SERVER_FLAGS, "--precision", args.precision])
    try:
        server.wait_ready(args.workers)
        soak_info, soak_checks = soak(server, args, texts)
        term_info, term_checks = sigterm(server, args, texts)
    finally:
        server.stop()
    source = args.data if Path(args.data).exists() else f"synthetic sentences (no {args.data})"
    print(f"\n{args.clients} clients + {args.slow_clients} slow ones, soak {args.seconds:g} s, "
          f"--workers {args.workers}, model {args.model}, texts {source}; load average {os.getloadavg()[0]:.1f}; "
          f"server flags {' '.join(SERVER_FLAGS)} --precision {args.precision}")
    report("soak", soak_info, soak_checks)
    report("SIGTERM under load", term_info, term_checks)
    if args.json:
        args.json.write_text(json.dumps({"soak": [soak_info, soak_checks], "sigterm": [term_info, term_checks]},
                                        indent=2))
    return 0 if all(soak_checks.values()) and all(term_checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
