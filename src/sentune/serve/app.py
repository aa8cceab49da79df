"""The HTTP service: `POST /predict`, `GET /health`, `GET /metadata`, the web page at `/`, docs at /docs.

Every request mistake answers 4xx with a JSON body `{"error": "..."}`, never 500: a body over
`max_body_bytes` (413), malformed JSON (400), wrong types, an empty list, too many texts or a text
over `max_chars` (422).
"""

from __future__ import annotations

import contextlib
import json
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from starlette.exceptions import HTTPException

from sentune.serve.batcher import MicroBatcher


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"texts": ["What a great film!"]}]})
    texts: list[StrictStr] | None = Field(None, description="texts to classify")
    text: StrictStr | None = Field(None, description="a single text (instead of texts)")


class Prediction(BaseModel):
    label: str
    score: float = Field(description="probability of the predicted label")
    probs: dict[str, float] = Field(description="probability of every label")


class PredictResponse(BaseModel):
    predictions: list[Prediction]


class Limits(BaseModel):
    max_body_bytes: int = 1 << 20
    max_texts: int = 256
    max_chars: int = 20_000


class ErrorResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        # ASCII escapes: an error may echo a lone surrogate from the request ("\\ud800" is valid JSON),
        # which has no UTF-8 encoding and would otherwise turn the 4xx into a 500
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return ErrorResponse({"error": message, **extra}, status_code=status)


class BodyLimit:
    """ASGI middleware: reads at most `max_bytes` of a request body, else answers 413 before parsing.

    Bodies are always read as JSON: `curl -d '{...}'` sends a form content type, which would otherwise
    reach the endpoint as unparsed bytes and give a confusing error.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = error(413, f"request body over {self.max_bytes} bytes")
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await too_big(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await too_big(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # the app waiting for a disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        scope = {**scope, "headers": [*headers, (b"content-type", b"application/json")]}
        return await self.app(scope, replay, send)


def validation_message(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "malformed JSON body"
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    return 422, f"{where}: {first.get('msg', 'invalid request')}"


def check_request(req: PredictRequest, limits: Limits) -> list[str]:
    """The texts to classify, or an HTTPException naming what is wrong."""
    if (req.texts is None) == (req.text is None):
        raise HTTPException(422, 'send either {"texts": [...]} or {"text": "..."}')
    texts = [req.text] if req.text is not None else req.texts
    if not texts:
        raise HTTPException(422, "texts is empty: send at least one text")
    if len(texts) > limits.max_texts:
        raise HTTPException(422, f"{len(texts)} texts in one request; the limit is {limits.max_texts}")
    for i, text in enumerate(texts):
        if len(text) > limits.max_chars:
            raise HTTPException(422, f"text {i} has {len(text)} characters; the limit is {limits.max_chars}")
    return texts


def create_app(classifier, *, max_batch: int = 64, max_wait_ms: float = 5.0,
               limits: Limits | None = None) -> FastAPI:
    """The service around a loaded `Classifier` (or anything with predict/labels/name/max_length/backend)."""
    limits = limits or Limits()
    batcher = MicroBatcher(lambda texts: classifier.predict(texts, batch_size=max_batch), max_batch, max_wait_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await batcher.close()  # uvicorn has already let in-flight requests finish

    app = FastAPI(title="sentune", summary=f"text classification with {classifier.name}", lifespan=lifespan)
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_request: Request, exc: RequestValidationError):
        status, message = validation_message(exc)
        # parse_constant: an input of Infinity/NaN (Python's json accepts them) must not make the reply invalid JSON
        detail = json.loads(json.dumps(exc.errors(), default=str), parse_constant=str)
        return error(status, message, detail=detail)

    @app.exception_handler(HTTPException)
    async def on_http(_request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    @app.post("/predict", response_model=PredictResponse, responses={
        400: {"description": "malformed JSON"}, 413: {"description": "body too large"},
        422: {"description": "wrong types, empty list, too many texts or a text too long"}})
    async def predict(req: PredictRequest) -> dict:
        """Classify one text or a list; concurrent requests are micro-batched into one model call."""
        return {"predictions": await batcher.submit(check_request(req, limits))}

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata")
    async def metadata() -> dict:
        return {"model": classifier.name, "labels": classifier.labels, "max_length": classifier.max_length,
                "backend": classifier.backend, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
                "limits": limits.model_dump()}

    static = resources.files("sentune.serve").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(str(static.joinpath("index.html")))

    return app


def serve(model_dir: str, *, host: str = "127.0.0.1", port: int = 8000, backend: str = "auto",
          max_batch: int = 64, max_wait_ms: float = 5.0, limits: Limits | None = None,
          log=print) -> None:
    """Load the model and serve it with uvicorn until Ctrl-C / SIGTERM (then finish in-flight requests)."""
    import uvicorn

    from sentune.inference.classifier import Classifier

    classifier = Classifier.load(model_dir, backend=backend)
    app = create_app(classifier, max_batch=max_batch, max_wait_ms=max_wait_ms, limits=limits)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: serving on {host}, reachable from other machines; there is no authentication")
    log(f"serving {classifier.name} ({classifier.backend}, labels: {', '.join(classifier.labels)}) "
        f"at http://{host}:{port}/  (API docs: /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)
