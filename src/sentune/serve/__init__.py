"""`sentune serve`: a FastAPI service with micro-batching, API keys, backpressure, metrics and a small web page."""

from __future__ import annotations

from sentune.serve.app import Limits, Policy, create_app
from sentune.serve.launch import Deployment, serve

__all__ = ["Deployment", "Limits", "Policy", "create_app", "serve"]
