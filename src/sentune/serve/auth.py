"""API keys: `Authorization: Bearer KEY` on every route but an explicit open list (deny by default).

The open list is probes, metrics, the page with its static files and the API docs, to read only
(GET/HEAD); it is matched on the route path relative to the app's `root_path`, so the same routes stay
protected under `uvicorn --root-path /api` or inside `Mount("/ml", app)`. Keys come from `--api-key`
(repeatable; shows in `ps`), `SENTUNE_API_KEY` (whitespace-separated, read once and removed from the
environment) and `--api-keys-file` (one per line, `#` comments; a warning when others may read it).
Every key is compared with `hmac.compare_digest`, all of them every time, so neither a key's content
nor which key matched shows in the response time. Keys are never logged.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from sentune.errors import ConfigError

KEY_ENV = "SENTUNE_API_KEY"
# no key needed, to read only (GET/HEAD: a `POST /` is an API call like any other): probes, metrics,
# the page (its script asks for the key) and the API description
OPEN_METHODS = frozenset({"GET", "HEAD"})
OPEN = frozenset({"/health", "/ready", "/metrics", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                  "/redoc"})
OPEN_PREFIXES = ("/static/",)
KEY = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an HTTP header can carry unchanged


def route_path(scope) -> str:
    """The path the app routes on: without the `root_path` that a proxy prefix or a Mount adds.

    The same rule as Starlette's router (starlette._utils.get_route_path, private), so the path checked
    here is the path that gets routed."""
    path, root = scope["path"], scope.get("root_path") or ""
    if not root or not path.startswith(root):
        return path
    if path == root:
        return ""
    return path[len(root):] if path[len(root)] == "/" else path


def is_open(method: str, path: str) -> bool:
    return method in OPEN_METHODS and (path in OPEN or path.startswith(OPEN_PREFIXES))


def load_api_keys(keys: Iterable[str] = (), keys_file: str | None = None,
                  warn: Callable[[str], None] | None = None) -> list[str]:
    """The keys from the flags and the file, checked; duplicates dropped, order kept."""
    found = [k.strip() for k in keys if k.strip()]
    if keys_file:
        found += read_keys_file(keys_file, warn)
    for i, key in enumerate(found):
        if not KEY.fullmatch(key):  # say which one without printing it
            raise ConfigError(f"API key {i + 1} has spaces or non-ASCII characters; use visible ASCII only")
    return list(dict.fromkeys(found))


def read_keys_file(keys_file: str, warn: Callable[[str], None] | None = None) -> list[str]:
    try:
        mode = os.stat(keys_file).st_mode
        lines = Path(keys_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read --api-keys-file {keys_file}: {e}") from None
    if warn is not None and os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"warning: --api-keys-file {keys_file} can be read by other users (mode {stat.filemode(mode)}); "
             f"run: chmod 600 {keys_file}")
    from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not from_file:
        raise ConfigError(f"--api-keys-file {keys_file} holds no key (one per line; # starts a comment)")
    return from_file


def write_keys_file(keys: list[str], folder: str) -> str:
    """The keys in `folder/api-keys`, created readable by the owner only (for the worker processes)."""
    path = os.path.join(folder, "api-keys")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("".join(f"{key}\n" for key in keys))
    return path


def bearer_token(headers) -> bytes | None:
    value = dict(headers).get(b"authorization", b"")
    scheme, _, token = value.partition(b" ")
    return token.strip() if scheme.lower() == b"bearer" and token.strip() else None


def key_matches(token: bytes, keys: list[bytes]) -> bool:
    """Constant time in the token's content: every key is compared, with no early exit."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(token, key)
    return matched


class ApiKeyAuth:
    """ASGI middleware: 401 with a JSON error and `WWW-Authenticate` on every route outside the open list
    without a valid key (unknown paths too: no key, no answer about what exists).

    It runs before the body is read, so an anonymous client cannot make the server buffer a large body.
    """

    def __init__(self, app, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or is_open(scope["method"], route_path(scope)):
            return await self.app(scope, receive, send)
        token = bearer_token(scope["headers"])
        if token is not None and key_matches(token, self.keys):
            return await self.app(scope, receive, send)
        challenge = b'Bearer realm="sentune"' + (b'' if token is None else b', error="invalid_token"')
        message = ("missing API key: send the header 'Authorization: Bearer <key>'" if token is None
                   else "invalid API key")
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"www-authenticate", challenge)]})
        await send({"type": "http.response.body", "body": json.dumps({"error": message}).encode()})
