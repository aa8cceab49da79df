"""Observability: Prometheus metrics, an `X-Request-ID` on every response, one access-log line per request.

Metrics live in a registry per app (no process globals, so tests can build many apps). With several
uvicorn workers, `PROMETHEUS_MULTIPROC_DIR` is set before they start and `/metrics` sums every
worker's values (prometheus_client's multiprocess mode), so a scrape sees the whole server.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import time
import uuid
from datetime import datetime, timezone
from urllib.parse import quote

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from sentune.serve.auth import route_path

ROUTES = frozenset({"/predict", "/explain", "/health", "/ready", "/metrics", "/metadata", "/info", "/"})
REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
access_log = logging.getLogger("sentune.access")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class Metrics:
    """The service's Prometheus metrics; also the batcher's observer (batch sizes, queue depth)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("sentune_requests", "HTTP requests by route and status code (499: the client "
                                "went away first; dropped: cancelled at shutdown)", ["route", "status"], registry=r)
        self.latency = Histogram("sentune_request_duration_seconds", "end-to-end request latency",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.texts = Counter("sentune_texts", "texts classified by the model", registry=r)
        self.batch_texts = Histogram("sentune_batch_texts", "texts per model call",
                                     buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.batch_tokens = Histogram("sentune_batch_tokens", "estimated tokens per model call",
                                      buckets=tuple(2**k for k in range(5, 16)), registry=r)
        self.model_seconds = Histogram("sentune_model_duration_seconds", "seconds per model call",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_texts = Gauge("sentune_queue_texts", "texts waiting for the model",
                                 multiprocess_mode="livesum", registry=r)
        self.ready = Gauge("sentune_ready", "workers with the model loaded and warmed up",
                           multiprocess_mode="livesum", registry=r)
        self.explain = ExplainMetrics(r)

    def batch(self, texts: int, tokens: int, seconds: float) -> None:
        self.texts.inc(texts)
        self.batch_texts.observe(texts)
        self.batch_tokens.observe(tokens)
        self.model_seconds.observe(seconds)

    def queue(self, texts: int) -> None:
        self.queue_texts.set(texts)

    def exposition(self) -> bytes:
        """The text format; summed over every worker in multiprocess mode."""
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def close(self) -> None:
        """A worker that stops takes its live gauges (queue depth, ready) out of the sums."""
        if multiprocess_dir():
            multiprocess.mark_process_dead(os.getpid())


class ExplainMetrics:
    """The /explain line's observer: its own queue depth and model time, apart from /predict's."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.texts = Counter("sentune_explain_texts", "texts explained by the model", registry=registry)
        self.seconds = Histogram("sentune_explain_duration_seconds", "seconds per explain call",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_texts = Gauge("sentune_explain_queue_texts", "texts waiting to be explained",
                                 multiprocess_mode="livesum", registry=registry)

    def batch(self, texts: int, tokens: int, seconds: float) -> None:
        self.texts.inc(texts)
        self.seconds.observe(seconds)

    def queue(self, texts: int) -> None:
        self.queue_texts.set(texts)


def printable(text: str) -> str:
    """A path as one safe token of a text log line: percent-escapes for controls, spaces, `%`, `\\` and
    anything non-ASCII, so no request can end a line, forge a field or send a terminal escape."""
    return quote(text, safe="/:@!$&'()*+,;=-._~")


def request_id(scope) -> str:
    """The client's X-Request-ID when it is a sane token (so logs can be joined), else a fresh one."""
    given = dict(scope.get("headers") or ()).get(b"x-request-id", b"").decode("latin-1")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def route_of(path: str) -> str:
    """A bounded label set: unknown paths (static files, docs, probes for /wp-admin) share one label."""
    if path != "/":
        path = path.rstrip("/")
    return path if path in ROUTES else "other"


class Observe:
    """ASGI middleware, outermost: request id, metrics and the access log see every answer, even the
    401/413 of inner middleware and the JSON 500 it sends itself when the app raises."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid, route, began = request_id(scope), route_of(route_path(scope)), time.perf_counter()
        scope.setdefault("state", {})["request_id"] = rid
        status: int | str | None = None

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.requests.labels(route, str(status)).inc()  # before the client can see it
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:  # uvicorn gave up on it (graceful timeout): say so, never silently
            if status is None:
                status = "dropped"
                self.metrics.requests.labels(route, status).inc()
            raise
        except Exception:
            access_log.exception("unhandled error", extra={"request_id": rid})
            if status is None:
                body = json.dumps({"error": "internal server error", "request_id": rid}).encode()
                await send_with_id({"type": "http.response.start", "status": 500,
                                    "headers": [(b"content-type", b"application/json")]})
                await send_with_id({"type": "http.response.body", "body": body})
        finally:
            if status is None:  # the client went away before any answer
                status = 499
                self.metrics.requests.labels(route, "499").inc()
            seconds = time.perf_counter() - began
            self.metrics.latency.labels(route).observe(seconds)
            client = scope.get("client") or ("", 0)
            access_log.info("%s %s %s", scope["method"], scope["path"], status, extra={"access": {
                "request_id": rid, "method": scope["method"], "path": scope["path"], "status": status,
                "duration_ms": round(seconds * 1000, 2), "client": client[0]}})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the access fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        line.update(getattr(record, "access", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=True)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        access = getattr(record, "access", None)
        when = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        if access is None:
            return f"{when} {record.levelname.lower()} {super().format(record)}"
        return (f"{when} {access['request_id']} {access['client']} {access['method']} "
                f"{printable(access['path'])} {access['status']} {access['duration_ms']:.1f}ms")


def configure_logging(fmt: str = "text", stream=None) -> None:
    """The access log (and sentune's other serve messages) on stderr, as text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logger = logging.getLogger("sentune")
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
