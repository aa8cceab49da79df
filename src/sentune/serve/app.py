"""The HTTP service: `POST /predict`, `POST /explain`, `GET /health`, `/ready`, `/metrics`, `/metadata`, `/`, /docs;
and the Hugging Face Inference API protocol (`POST /`, `/predict` with `inputs`, `GET /info`: serve/inference_api.py).

Every request mistake answers 4xx with a JSON body `{"error": "..."}`, never 500: no or a wrong API key
(401), a foreign Host on loopback (421) or Origin (403), a body that is not JSON (415), over
`max_body_bytes` (413) or not received within `read_timeout` (408), malformed JSON (400), wrong types,
an empty list, too many texts or a text over `max_chars` (422). Load answers too: a full queue is 429
with `Retry-After` at once, a request that waited past `request_timeout` (or met a shutdown) is 503.
Every response carries an `X-Request-ID`. `/explain` costs `steps` forward and backward passes per text,
so it has its own, stricter limits (`explain_max_texts`, `explain_max_chars`) and its own line with the
same contract as /predict (429, 503, withdrawn when the client leaves), one explanation at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from sentune.inference.classifier import MAX_BATCH_TOKENS
from sentune.serve import inference_api
from sentune.serve.auth import ApiKeyAuth
from sentune.serve.batcher import (
    MAX_WAIT_MS,
    MicroBatcher,
    QueueFull,
    RequestTimeout,
    ShuttingDown,
    estimate_tokens,
)
from sentune.serve.guard import BodyGuard, RequestGuard, error
from sentune.serve.observe import Metrics, Observe
from sentune.serve.protocol import DEFAULT_READ_TIMEOUT, READ_TIMEOUT_STATE
from sentune.serve.schemas import (
    RESPONSES,
    ExplainRequest,
    ExplainResponse,
    InferenceRequest,
    InferenceResponse,
    PredictRequest,
    TextsRequest,
)


def task_metadata(classifier) -> dict:
    """What the page needs to draw a task: the task, and the decision thresholds of a multi-label model."""
    task = getattr(classifier, "task", "single_label")
    out: dict = {"task": task}
    if task == "multi_label":
        out["thresholds"] = dict(zip(classifier.labels, map(float, classifier.thresholds), strict=True))
    if task == "regression":
        out["label_scale"] = getattr(getattr(classifier, "settings", None), "label_scale", None)
    return out


class Limits(BaseModel):
    max_body_bytes: int = 1 << 20
    max_texts: int = 256
    max_chars: int = 20_000
    explain_max_texts: int = 4
    explain_max_chars: int = 5_000


class Policy(BaseModel):
    """How the service behaves under load and at shutdown."""

    max_queue: int | None = 512  # texts waiting for the model; past it, 429
    request_timeout: float | None = 30.0  # seconds a request may wait; past it, 503
    # tokens per model call: estimated (chars / 4) when requests are collected, padded in each model call
    max_batch_tokens: int | None = MAX_BATCH_TOKENS
    graceful_timeout: float = 10.0  # seconds from SIGTERM to exit
    read_timeout: float = DEFAULT_READ_TIMEOUT  # seconds a client has to send its request head, and then its body
    max_connections: int | None = 256  # connections served at once per worker; past it, 503
    explain_max_queue: int | None = 16  # texts waiting to be explained; past it, 429


def validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed JSON body"
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return 422, f"{where}: {first.get('msg', 'invalid request')}"


def check_request(req: TextsRequest | InferenceRequest, limits: Limits, explain: bool = False) -> list[str]:
    """The texts to classify (or explain, under the stricter limits), or an HTTPException naming what is wrong."""
    max_texts, max_chars = (limits.explain_max_texts, limits.explain_max_chars) if explain else \
        (limits.max_texts, limits.max_chars)
    given = [t for t in (getattr(req, "texts", None), getattr(req, "text", None), getattr(req, "inputs", None))
             if t is not None]
    if len(given) != 1:
        shapes = '{"texts": [...]} or {"text": "..."}' if explain else \
            '{"texts": [...]}, {"text": "..."} or {"inputs": "..." | [...]}'
        raise HTTPException(422, f"send either {shapes}")
    if getattr(req, "parameters", None) is not None and getattr(req, "inputs", None) is None:
        raise HTTPException(422, 'parameters go with {"inputs": ...} only')
    texts = inference_api.texts_of(given[0])
    if not texts:
        raise HTTPException(422, "texts is empty: send at least one text")
    if len(texts) > max_texts:
        raise HTTPException(422, f"{len(texts)} texts in one request; the limit is {max_texts}")
    for i, text in enumerate(texts):
        if len(text) > max_chars:
            raise HTTPException(422, f"text {i} has {len(text)} characters; the limit is {max_chars}")
    return texts


async def classify(batcher: MicroBatcher, texts: list[str], request: Request, timeout: float | None) -> list:
    """Predictions (or explanations, from the explain line), or the HTTPException that says why not:
    429 (queue full), 503 (timeout, shutdown) or 499 (the client went away first: its texts leave the
    line and cost no model time)."""
    try:
        job = batcher.enqueue(texts, timeout)
    except QueueFull as e:
        raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after)}) from None
    except ShuttingDown as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1", "Connection": "close"}) from None
    gone = asyncio.ensure_future(disconnected(request))
    try:
        await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not job.done():
        job.cancel()
        raise HTTPException(499, "client closed the connection")
    try:
        return job.result()
    except (RequestTimeout, ShuttingDown) as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None


async def disconnected(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so receive() only reports that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@contextlib.contextmanager
def drain_on_signal(batchers: list[MicroBatcher], seconds: float):
    """On SIGTERM/SIGINT, before uvicorn's own handler: refuse new work, finish or 503 what waits.

    uvicorn cancels whatever still runs after its graceful timeout, which would drop those requests
    without an answer; draining a second earlier answers every one of them.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield  # run inside a test client or a thread: no signals to take
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(sig, frame):
        for batcher in batchers:
            loop.call_soon_threadsafe(batcher.begin_drain, seconds)
        if callable(previous[sig]):
            previous[sig](sig, frame)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class Targeted(str):
    """A text to explain, with the label to explain it toward (None: the predicted one)."""

    target: str | None

    def __new__(cls, text: str, target: str | None) -> Targeted:
        self = super().__new__(cls, text)
        self.target = target
        return self


def explainer_line(classifier, limits: Limits, policy: Policy, steps: int | None, metrics: Metrics) -> MicroBatcher:
    """/explain's own line: its own model thread, queue bound and metrics; texts of several requests
    share a call when they share a target."""

    def explain(texts: list[str]) -> list:
        out: list = [None] * len(texts)
        for target in dict.fromkeys(getattr(t, "target", None) for t in texts):
            idx = [i for i, t in enumerate(texts) if getattr(t, "target", None) == target]
            for i, e in zip(idx, classifier.explain([str(texts[i]) for i in idx], target, steps), strict=True):
                out[i] = e
        return out

    return MicroBatcher(explain, limits.explain_max_texts, 0.0, max_queue=policy.explain_max_queue,
                        observer=metrics.explain, cost=lambda text: estimate_tokens(text, tokens_per_text(classifier)))


def create_app(classifier, *, max_batch: int = 64, max_wait_ms: float = MAX_WAIT_MS, limits: Limits | None = None,
               policy: Policy | None = None, api_keys: list[str] | None = None,
               explain_steps: int | None = None, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The service around a loaded `Classifier` (or anything with predict/labels/name/max_length/backend).

    `allowed_hosts`: the Host names a request may name (the loopback names when bound to loopback)."""
    limits, policy = limits or Limits(), policy or Policy()
    metrics = Metrics()
    prepare = getattr(classifier, "prepare", None)  # a Classifier tokenizes apart from the model call
    batcher = MicroBatcher(model_call(classifier, max_batch, prepared=prepare is not None), max_batch, max_wait_ms,
                           max_tokens=policy.max_batch_tokens, max_queue=policy.max_queue, observer=metrics,
                           cost=lambda text: estimate_tokens(text, tokens_per_text(classifier)), encode=prepare)
    explainer = explainer_line(classifier, limits, policy, explain_steps, metrics)
    ready = asyncio.Event()

    async def warm_up() -> None:
        await batcher.warm_up(["warm-up"])
        ready.set()
        metrics.ready.set(1)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        warming = asyncio.ensure_future(warm_up())
        with drain_on_signal([batcher, explainer], max(0.5, policy.graceful_timeout - 1.0)):
            yield {READ_TIMEOUT_STATE: policy.read_timeout}  # the server's protocol times request heads by it
        warming.cancel()
        await batcher.close()  # uvicorn has already let in-flight requests finish
        await explainer.close()
        metrics.close()

    task = getattr(classifier, "task", "single_label")
    app = FastAPI(title="sentune", summary=f"text classification with {classifier.name}", lifespan=lifespan)
    app.state.batcher, app.state.explainer, app.state.metrics = batcher, explainer, metrics
    # outermost last: Observe sees every answer; Host, Origin, content type and key are checked before
    # a body is read; the body is read only by the routes that take one
    app.add_middleware(BodyGuard, max_bytes=limits.max_body_bytes, timeout=policy.read_timeout)
    app.add_middleware(ApiKeyAuth, keys=list(api_keys or ()))
    app.add_middleware(RequestGuard, allowed_hosts=allowed_hosts)
    app.add_middleware(Observe, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_request: Request, exc: RequestValidationError):
        status, message = validation_message(exc)
        # parse_constant: an input of Infinity/NaN (Python's json accepts them) must not make the reply invalid JSON
        detail = json.loads(json.dumps(exc.errors(), default=str), parse_constant=str)
        return error(status, message, detail=detail)

    @app.exception_handler(HTTPException)
    async def on_http(_request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.post("/predict", response_model=RESPONSES[task], responses={
        400: {"description": "malformed JSON"}, 401: {"description": "no or a wrong API key"},
        413: {"description": "body too large"},
        422: {"description": "wrong types, empty list, too many texts or a text too long"},
        429: {"description": "queue full: retry after the Retry-After seconds"},
        503: {"description": "waited past the request timeout, or the server is shutting down"}})
    async def predict(req: PredictRequest, request: Request):
        """Classify one text or a list; concurrent requests are micro-batched into one model call.

        The Inference API body (`{"inputs": ..., "parameters": ...}`) is answered as `POST /` answers it."""
        texts = check_request(req, limits)
        if req.inputs is not None:
            return JSONResponse(await ranked_labels(req, texts, request))
        return {"predictions": await classify(batcher, texts, request, policy.request_timeout)}

    async def ranked_labels(req: PredictRequest | InferenceRequest, texts: list[str], request: Request) -> list:
        inference_api.check_parameters(req.parameters, task)
        predictions = await classify(batcher, texts, request, policy.request_timeout)
        return inference_api.ranked(predictions, task, classifier.labels, req.parameters)

    @app.post("/", response_model=InferenceResponse, responses={
        400: {"description": "malformed JSON"}, 401: {"description": "no or a wrong API key"},
        413: {"description": "body too large"}, 422: {"description": "as /predict, or an unknown parameter"},
        429: {"description": "queue full"}, 503: {"description": "timeout or shutting down"}})
    async def inference(req: InferenceRequest, request: Request) -> list:
        """The Hugging Face Inference API / text-embeddings-inference form: per input its labels, best first.

        `huggingface_hub.InferenceClient(base_url).text_classification(text)` posts here."""
        return await ranked_labels(req, check_request(req, limits), request)

    @app.get("/info")
    async def model_info() -> dict:
        """The model, as text-embeddings-inference's /info describes it."""
        return inference_api.info(classifier, max_texts=limits.max_texts, max_batch_tokens=policy.max_batch_tokens,
                             max_queue=policy.max_queue)

    @app.post("/explain", response_model=ExplainResponse, response_model_exclude_none=True, responses={
        400: {"description": "malformed JSON"}, 401: {"description": "no or a wrong API key"},
        413: {"description": "body too large"},
        422: {"description": "wrong types, empty list, unknown target, or over the explain limits"},
        429: {"description": "too many texts wait to be explained: retry after the Retry-After seconds"},
        503: {"description": "waited past the request timeout, or the server is shutting down"}})
    async def explain(req: ExplainRequest, request: Request) -> dict:
        """Word attributions (integrated gradients) toward the predicted label, or `target`.

        Stricter limits than /predict (see /metadata): each text costs `steps` forward and backward passes.
        """
        texts = check_request(req, limits, explain=True)
        if req.target is not None and req.target not in classifier.labels:
            raise HTTPException(422, f"target {req.target!r} is not a label; labels: {', '.join(classifier.labels)}")
        items: list[str] = [Targeted(t, req.target) for t in texts]
        return {"explanations": await classify(explainer, items, request, policy.request_timeout)}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready", responses={503: {"description": "warming up or shutting down"}})
    async def readiness():
        """200 once the model is loaded and a warm-up batch has run; 503 before, and while draining."""
        if batcher.draining:
            return error(503, "shutting down")
        return {"status": "ready"} if ready.is_set() else error(503, "warming up")

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.exposition(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/metadata")
    async def metadata() -> dict:
        return {"model": classifier.name, "labels": classifier.labels, "max_length": classifier.max_length,
                "long_text": long_text_settings(classifier),
                "backend": classifier.backend, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "auth": bool(api_keys), "limits": limits.model_dump(), "policy": policy.model_dump(),
                "explain_steps": explain_steps, **task_metadata(classifier)}

    static = resources.files("sentune.serve").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")))

    return app


def model_call(classifier, max_batch: int, prepared: bool):
    """What the model thread runs: a Classifier's already-encoded inputs (tokenized on the tokenizer thread),
    or the texts for a stand-in that only has `predict`."""
    if prepared:
        return lambda prepared: classifier.predict_prepared(prepared, batch_size=max_batch)
    return lambda texts: classifier.predict(texts, batch_size=max_batch)


def tokens_per_text(classifier) -> int:
    """The most tokens one text can cost: one window, or every window of a windowed model."""
    s = getattr(classifier, "settings", None)
    if s is not None and getattr(s, "long_text", "truncate") == "windows":
        return classifier.max_length * s.max_windows
    return classifier.max_length


def long_text_settings(classifier) -> dict:
    """How the model reads a text longer than max_length: truncate, or windows with stride/cap/pool."""
    s = getattr(classifier, "settings", None)
    if s is None or getattr(s, "long_text", "truncate") != "windows":
        return {"mode": "truncate"}
    return {"mode": "windows", "stride": s.stride, "max_windows": s.max_windows, "pool": s.pool}
