"""`sentune serve`: a FastAPI service with micro-batching and a small web page."""

from __future__ import annotations

from sentune.serve.app import Limits, create_app, serve

__all__ = ["Limits", "create_app", "serve"]
