"""Start the service: one process, or `--workers N` uvicorn worker processes, each with its own model.

uvicorn starts workers by import string, so the settings travel to them as JSON in an environment
variable and each worker builds its app with `app_from_env` (an app factory). The workers share the
listening socket; the kernel spreads connections over them. Each gets `cores / workers` torch threads,
so two workers on two cores do not fight over the same cores.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from sentune.serve.app import Limits, Policy, create_app
from sentune.serve.observe import configure_logging

SETTINGS_ENV = "SENTUNE_SERVE_SETTINGS"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Deployment(BaseModel):
    """Everything a worker needs to build the same app as every other worker."""

    model_dir: str
    backend: str = "auto"
    precision: str = "auto"  # resolved in each worker, on its own machine (sentune/precision.py)
    max_batch: int = 64
    max_wait_ms: float = 5.0
    limits: Limits = Field(default_factory=Limits)
    policy: Policy = Field(default_factory=Policy)
    api_keys: list[str] = Field(default_factory=list, repr=False)
    log_format: str = "text"
    threads: int | None = None
    explain_steps: int | None = None


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_app(d: Deployment):
    """Load the model and wrap it in the service (run in every worker)."""
    from sentune.inference.classifier import MAX_BATCH_TOKENS, Classifier

    configure_logging(d.log_format)
    if d.threads:
        import torch

        torch.set_num_threads(d.threads)
    classifier = Classifier.load(d.model_dir, backend=d.backend, precision=d.precision,
                                 max_batch_tokens=d.policy.max_batch_tokens or MAX_BATCH_TOKENS)
    return create_app(classifier, max_batch=d.max_batch, max_wait_ms=d.max_wait_ms, limits=d.limits,
                      policy=d.policy, api_keys=d.api_keys, explain_steps=d.explain_steps)


def app_from_env():
    """uvicorn's app factory for `--workers N`: the settings the parent process left in the environment."""
    return build_app(Deployment.model_validate_json(os.environ[SETTINGS_ENV]))


def serve(d: Deployment, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          log: Callable[[str], None] = print) -> None:
    """Serve until Ctrl-C / SIGTERM; then finish or answer 503 to in-flight requests and exit within
    `policy.graceful_timeout` seconds."""
    import uvicorn

    if host not in LOOPBACK and not d.api_keys:
        log(f"warning: serving on {host} without an API key: anyone who can reach port {port} can use the "
            "model (set --api-key, SENTUNE_API_KEY or --api-keys-file)")
    if workers > 1 and d.threads is None:
        d = d.model_copy(update={"threads": max(1, cores() // workers)})
    options: dict[str, Any] = dict(host=host, port=port, log_level="warning", access_log=False,
                   timeout_graceful_shutdown=d.policy.graceful_timeout)
    auth = f"{len(d.api_keys)} API key(s)" if d.api_keys else "no API key"
    if workers == 1:
        app = build_app(d)
        log(f"serving {d.model_dir} at http://{host}:{port}/ ({auth}; API docs: /docs, metrics: /metrics)")
        uvicorn.run(app, **options)
        return
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # one /metrics for all workers
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sentune-metrics-")
    os.environ[SETTINGS_ENV] = d.model_dump_json()
    log(f"serving {d.model_dir} with {workers} workers x {d.threads} threads at http://{host}:{port}/ "
        f"({auth}; API docs: /docs, metrics: /metrics)")
    try:
        uvicorn.run("sentune.serve.launch:app_from_env", factory=True, workers=workers, **options)
    finally:
        os.environ.pop(SETTINGS_ENV, None)
        if metrics_dir:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
