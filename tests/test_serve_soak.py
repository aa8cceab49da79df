"""`sentune serve` as a real process on loopback: a short soak with faults, /explain load, slow clients and
SIGTERM (bench/serve_soak.py's checks, a few seconds long), and `--workers 2` starting, sharing one /metrics
and stopping cleanly."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "serve_soak.py"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def soak_lib():
    spec = importlib.util.spec_from_file_location("serve_soak", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_soak_with_faults_and_sigterm(soak_lib, tiny_bert_dir):
    # a few seconds of each phase: the full 60 s / 64 clients version is the bench (docs/benchmarks.md)
    args = argparse.Namespace(clients=16, slow_clients=4, seconds=4.0, warmup_seconds=2.0, term_seconds=3.0,
                              max_requests=5000)
    texts = soak_lib.load_texts("/nonexistent")  # the synthetic sentences: the suite needs no shared data
    server = soak_lib.Server(str(tiny_bert_dir))
    try:
        server.wait_ready(timeout=120)
        soak_info, soak_checks = soak_lib.soak(server, args, texts)
        term_info, term_checks = soak_lib.sigterm(server, args, texts)
    finally:
        server.stop()
    failed = [name for name, ok in {**soak_checks, **term_checks}.items() if not ok]
    assert not failed, (failed, soak_info, term_info)
    # the mix really exercised every answer it is meant to
    statuses = set(soak_info["by_status"])
    assert {"200", "400", "401", "413", "415", "422"} <= statuses, soak_info
    assert soak_info["hung_up"] > 0 and soak_info["metrics_predict_by_status"].get("200", 0) > 0
    assert soak_info["metrics_explain_by_status"].get("200", 0) > 0
    # slow bodies were answered 408 by the app; slow heads were cut off before reaching it
    assert soak_info["slow_connections"] >= 4 and soak_info["metrics_predict_by_status"].get("408", 0) > 0


def test_two_workers_start_share_metrics_and_stop(soak_lib, tiny_bert_dir):
    server = soak_lib.Server(str(tiny_bert_dir), workers=2, flags=["--graceful-timeout", "5"])
    try:
        server.wait_ready(workers=2, timeout=240)  # sentune_ready sums to 2: both workers loaded and warm
        auth = {"Authorization": f"Bearer {soak_lib.KEY}"}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(12):
                r = http.post("/predict", json={"texts": ["good film", "bad film"]}, headers=auth)
                assert r.status_code == 200 and len(r.json()["predictions"]) == 2, r.text
                # a new connection each time, so the kernel can hand it to either worker
                http.headers["Connection"] = "close"
        assert soak_lib.metrics_counts(server.url)["200"] == 12  # one scrape sees both workers' counts
        workers = [p for p in psutil.Process(server.proc.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2
        server.proc.send_signal(signal.SIGTERM)
        began = time.monotonic()
        server.proc.wait(30)
        assert time.monotonic() - began < 5 + 5
    finally:
        server.stop()
