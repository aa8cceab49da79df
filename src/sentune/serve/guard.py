"""What a request must be before the app reads it: for this server (Host, Origin), JSON, in time, in size.

`RequestGuard` (outside the API key check) refuses a foreign `Host` when the server is bound to loopback
(421: a DNS-rebinding page in a browser names its own host) and a cross-site `Origin` there (403).
`BodyGuard` (inside it) refuses a POST/PUT/PATCH whose body is not declared JSON (415: a browser sends
`text/plain` and form posts from any page without asking, JSON only after a CORS preflight, which this
server never grants), and bounds the body a route reads: a declared `Content-Length` over the limit is
413 before a byte is read, a streamed body is counted as it arrives, and a body that is not complete
within `timeout` seconds is 408. Refusals close the connection, so the rest of a refused body is never
read. Routes that take no body never read it, so neither limit nor wait applies to them (`POST /nope` is
answered 404 at once).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

from sentune.serve.auth import route_path

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
CLOSE = {"Connection": "close"}  # a refused body is not read to its end: the connection cannot be reused
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


class ErrorResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        # ASCII escapes: an error may echo a lone surrogate from the request ("\\ud800" is valid JSON),
        # which has no UTF-8 encoding and would otherwise turn the 4xx into a 500
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode()


def error(status: int, message: str, headers: Mapping[str, str] | None = None, **extra: Any) -> JSONResponse:
    return ErrorResponse({"error": message, **extra}, status_code=status, headers=headers)


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def hostname(authority: str) -> str | None:
    """`127.0.0.1:8000` -> 127.0.0.1, `[::1]:80` -> ::1, `LocalHost` -> localhost; None when unparsable."""
    try:
        return urlsplit(f"//{authority}").hostname
    except ValueError:
        return None


class RequestGuard:
    """ASGI middleware: this server's Host and Origin, when `allowed_hosts` is given (else it passes all)."""

    def __init__(self, app, allowed_hosts: list[str] | None = None):
        self.app = app
        self.allowed = None if allowed_hosts is None else frozenset(h.lower().strip("[]") for h in allowed_hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.allowed is None:
            return await self.app(scope, receive, send)
        refusal = self.refusal(Headers(scope=scope))
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)

    def refusal(self, headers: Headers) -> JSONResponse | None:
        assert self.allowed is not None
        host = headers.get("host", "")
        if hostname(host) not in self.allowed:
            return error(421, f"Host {host!r} is not this server (served on loopback for "
                              f"{', '.join(sorted(self.allowed))} only)", headers=CLOSE)
        origin = headers.get("origin")
        if origin is not None and hostname(urlsplit(origin).netloc) not in self.allowed:
            return error(403, f"cross-site request from Origin {origin!r} refused")
        return None


class BodyGuard:
    """ASGI middleware: a body is declared JSON, and the body a route reads is at most `max_bytes`,
    complete within `timeout` seconds."""

    def __init__(self, app, max_bytes: int, timeout: float):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["method"] in BODY_METHODS and not is_json(Headers(scope=scope).get("content-type")):
            refusal = error(415, f"{route_path(scope)} takes a JSON body: send the header "
                                 "'Content-Type: application/json' (curl: --json '{...}')", headers=CLOSE)
            return await refusal(scope, receive, send)
        return await self.app(scope, BoundedBody(receive, self.max_bytes, self.timeout, scope), send)


class BoundedBody:
    """The app's `receive`: raises 413 or 408 (as HTTPException, so the route answers JSON) while the
    body is incomplete; once it is complete, passes straight through (a handler waiting for a disconnect
    waits as long as it likes)."""

    def __init__(self, receive, max_bytes: int, timeout: float, scope):
        self.receive, self.max_bytes, self.timeout = receive, max_bytes, timeout
        declared = Headers(scope=scope).get("content-length", "")
        self.declared = int(declared) if declared.isdigit() else None
        self.read, self.complete = 0, False
        self.deadline: float | None = None

    async def __call__(self):
        if self.complete:
            return await self.receive()
        if self.declared is not None and self.declared > self.max_bytes:
            raise self.too_big()
        loop = asyncio.get_running_loop()
        if self.deadline is None:
            self.deadline = loop.time() + self.timeout
        try:
            message = await asyncio.wait_for(self.receive(), max(0.0, self.deadline - loop.time()))
        except asyncio.TimeoutError:
            raise HTTPException(408, f"request body not received within {self.timeout:g} s",
                                headers=CLOSE) from None
        if message["type"] != "http.request":
            self.complete = True  # the client left
            return message
        self.read += len(message.get("body", b""))
        if self.read > self.max_bytes:
            raise self.too_big()
        self.complete = not message.get("more_body", False)
        return message

    def too_big(self) -> HTTPException:
        return HTTPException(413, f"request body over {self.max_bytes} bytes", headers=CLOSE)
