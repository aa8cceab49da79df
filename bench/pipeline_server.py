"""The obvious hand-rolled alternative to `sentune serve`: `transformers.pipeline` behind one FastAPI route.

    python bench/pipeline_server.py MODEL_DIR --port 8001

A plain `def` endpoint, so FastAPI runs each request in its thread pool and concurrent requests call the
pipeline at the same time; no batching across requests, no limits, no auth. Same request and response
shape as `sentune serve` (`{"text": ...}` or `{"texts": [...]}` -> `{"predictions": [...]}`), so
bench/serve_load.py drives both the same way. Baseline for docs/benchmarks.md only.
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from transformers import pipeline


def build(model: str) -> FastAPI:
    classify = pipeline("text-classification", model=model, device="cpu")
    app = FastAPI()

    @app.post("/predict")
    def predict(body: dict) -> dict:
        texts = body.get("texts") or [body["text"]]
        return {"predictions": classify(texts, truncation=True, top_k=None)}

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/metadata")
    def metadata() -> dict:
        return {"backend": "pipeline", "max_batch": None}

    return app


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--port", type=int, default=8001)
    args = ap.parse_args()
    uvicorn.run(build(args.model), host="127.0.0.1", port=args.port, log_level="warning")
