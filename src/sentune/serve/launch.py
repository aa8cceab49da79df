"""Start the service: one process, or `--workers N` uvicorn worker processes, each with its own model.

uvicorn starts workers by import string, so the settings travel to them as JSON in an environment
variable and each worker builds its app with `app_from_env` (an app factory). The API keys do not: the
environment is copied into every worker and the multiprocessing resource tracker, so the workers get the
path of a keys file instead, readable by the owner only, in a private temporary folder removed at exit.
The workers share the listening socket; the kernel spreads connections over them. Each gets
`cores / workers` torch threads, so two workers on two cores do not fight over the same cores.

Slow clients: at most `policy.max_connections` connections per worker are served (uvicorn's
`limit_concurrency`, 503 past it), a request head must arrive within `policy.read_timeout` seconds
(serve/protocol.py) and so must its body (serve/guard.py), an idle keep-alive connection is closed after
5 s, and a request head is at most 16 KiB (h11's limit: 400 and close past it).

Memory: glibc's malloc raises its mmap threshold each time a large block is freed (up to 32 MiB), after
which torch's activation buffers of ever-changing shapes are carved from the threads' heaps, where freed
space stays in the process. Measured under the soak's mix (docs/benchmarks.md, "Server memory"): Python
objects and malloc's in-use bytes flat, its retained free bytes 2 -> 415 MiB, RSS +12 % in two minutes.
Each worker therefore fixes the threshold (`pin_mmap_threshold`), so large blocks go back to the system
when freed. At glibc's initial 128 KiB every activation of a long review (0.8-3 MiB) was a fresh mapping and
its page faults cost 15-20 % of the throughput on 512-token reviews; 4 MiB keeps those in the heap and still
maps the batch-sized buffers whose ever-changing sizes fragmented it. In bf16, oneDNN keeps a primitive
(with its own scratchpad, up to a packed copy of the weight) per GEMM shape, up to 1024 of them: each worker
caps that cache at 256 (`bound_onednn_cache`) unless the operator set ONEDNN_PRIMITIVE_CACHE_CAPACITY.
Blocks under 4 MiB still leave gaps in the heaps as batch shapes change (fp32 soak: +10.9 % in 10 minutes),
so a worker also trims malloc's free pages every 10 s (`trim_heap_every`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from sentune.serve.app import Limits, Policy, create_app
from sentune.serve.auth import load_api_keys, write_keys_file
from sentune.serve.batcher import MAX_WAIT_MS
from sentune.serve.observe import configure_logging
from sentune.serve.protocol import HeadDeadlineH11

SETTINGS_ENV = "SENTUNE_SERVE_SETTINGS"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
KEEP_ALIVE_S = 5
MAX_HEAD_BYTES = 16 * 1024
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_CAPACITY = 256  # primitives; oneDNN's default is 1024 (see bound_onednn_cache)
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
TRIM_SECONDS = 10.0  # how often a worker returns malloc's free pages (trim_heap_every)
MMAP_THRESHOLD_BYTES = 4 << 20  # measured: 128 KiB cost 15-20 % of long-review throughput in page faults


class Deployment(BaseModel):
    """Everything a worker needs to build the same app as every other worker."""

    model_dir: str
    backend: str = "auto"
    precision: str = "auto"  # resolved in each worker, on its own machine (sentune/precision.py)
    max_batch: int = 64
    max_wait_ms: float = MAX_WAIT_MS
    limits: Limits = Field(default_factory=Limits)
    policy: Policy = Field(default_factory=Policy)
    api_keys: list[str] = Field(default_factory=list, repr=False)
    api_keys_file: str | None = None  # where a worker reads the keys (never sent in the settings)
    allowed_hosts: list[str] | None = None  # Host names a request may name (None: any)
    log_format: str = "text"
    threads: int | None = None
    explain_steps: int | None = None


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError, AttributeError):  # no such name here (macOS, Windows, musl)
        return False


def libc() -> ctypes.CDLL:
    """The C library (call only where glibc() is true)."""
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Blocks of `nbytes` or more get their own mapping, returned to the system when freed, for the life of
    this process (glibc's own adjustment off; see the module docstring). False where the C library is not
    glibc, or the operator set MALLOC_MMAP_THRESHOLD_ (theirs wins)."""
    if not glibc() or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    return bool(libc().mallopt(M_MMAP_THRESHOLD, nbytes))


def trim_heap_every(seconds: float = TRIM_SECONDS) -> threading.Thread | None:
    """A daemon thread that hands malloc's free pages back to the system (glibc's malloc_trim) every
    `seconds`. Blocks under the mmap threshold are cut from the heaps and reused there (fast: no page
    faults), but the gaps that batches of other shapes leave are kept by the process; trimming returns
    them without giving up the reuse. A trim takes milliseconds; None where the C library is not glibc."""
    if not glibc():
        return None
    c = libc()

    def trim() -> None:
        while True:
            time.sleep(seconds)
            c.malloc_trim(0)

    thread = threading.Thread(target=trim, name="sentune-malloc-trim", daemon=True)
    thread.start()
    return thread


def bound_onednn_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> bool:
    """Cap oneDNN's primitive cache for this process (read when oneDNN makes its first primitive, so before
    the model runs). bf16 kernels keep one primitive per GEMM shape (rows x width x layer kind), a few
    hundred KiB each; served batch shapes are bounded but more than 1024 primitives, so at oneDNN's default
    the cache filled for minutes and RSS rose with it. False when the operator set the variable (theirs wins)."""
    if ONEDNN_CACHE_ENV in os.environ:
        return False
    os.environ[ONEDNN_CACHE_ENV] = str(capacity)
    return True


def build_app(d: Deployment):
    """Load the model and wrap it in the service (run in every worker)."""
    from sentune.inference.classifier import MAX_BATCH_TOKENS, Classifier

    pin_mmap_threshold()
    trim_heap_every()
    bound_onednn_cache()
    configure_logging(d.log_format)
    if d.threads:
        import torch

        torch.set_num_threads(d.threads)
    classifier = Classifier.load(d.model_dir, backend=d.backend, precision=d.precision,
                                 max_batch_tokens=d.policy.max_batch_tokens or MAX_BATCH_TOKENS)
    return create_app(classifier, max_batch=d.max_batch, max_wait_ms=d.max_wait_ms, limits=d.limits,
                      policy=d.policy, api_keys=d.api_keys, explain_steps=d.explain_steps,
                      allowed_hosts=d.allowed_hosts)


def app_from_env():
    """uvicorn's app factory for `--workers N`: the settings the parent process left in the environment,
    the keys from the file it names."""
    d = Deployment.model_validate_json(os.environ[SETTINGS_ENV])
    if d.api_keys_file:
        d = d.model_copy(update={"api_keys": load_api_keys(keys_file=d.api_keys_file)})
    return build_app(d)


def allowed_hosts(host: str) -> list[str] | None:
    """Bound to loopback: only the loopback names (a DNS-rebinding page names its own host); else any."""
    return list(LOOPBACK) if host in LOOPBACK else None


def uvicorn_options(policy: Policy, host: str, port: int) -> dict[str, Any]:
    """How uvicorn treats connections: bounded, timed out, small heads (see the module docstring)."""
    return dict(host=host, port=port, log_level="warning", access_log=False, http=HeadDeadlineH11,
                timeout_graceful_shutdown=policy.graceful_timeout, limit_concurrency=policy.max_connections,
                timeout_keep_alive=KEEP_ALIVE_S, h11_max_incomplete_event_size=MAX_HEAD_BYTES)


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
    if d.allowed_hosts is None:
        d = d.model_copy(update={"allowed_hosts": allowed_hosts(host)})
    options = uvicorn_options(d.policy, host, port)
    auth = f"{len(d.api_keys)} API key(s)" if d.api_keys else "no API key"
    if workers == 1:
        app = build_app(d)
        log(f"serving {d.model_dir} at http://{host}:{port}/ ({auth}; API docs: /docs, metrics: /metrics)")
        uvicorn.run(app, **options)
        return
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # one /metrics for all workers
        metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sentune-metrics-")
    private = tempfile.mkdtemp(prefix="sentune-serve-")  # mode 0700: the keys file is the owner's alone
    keys_file = write_keys_file(d.api_keys, private) if d.api_keys else None
    os.environ[SETTINGS_ENV] = d.model_copy(update={"api_keys_file": keys_file}).model_dump_json(
        exclude={"api_keys"})
    log(f"serving {d.model_dir} with {workers} workers x {d.threads} threads at http://{host}:{port}/ "
        f"({auth}; API docs: /docs, metrics: /metrics)")
    try:
        uvicorn.run("sentune.serve.launch:app_from_env", factory=True, workers=workers, **options)
    finally:
        os.environ.pop(SETTINGS_ENV, None)
        shutil.rmtree(private, ignore_errors=True)
        if metrics_dir:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
