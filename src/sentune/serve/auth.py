"""API keys: `Authorization: Bearer KEY` on the inference routes; probes and metrics stay open.

Keys come from `--api-key` (repeatable; or `SENTUNE_API_KEY`, whitespace-separated) and `--api-keys-file`
(one per line, `#` comments). Every key is compared with `hmac.compare_digest`, all of them every time,
so neither a key's content nor which key matched shows in the response time. Keys are never logged.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Iterable
from pathlib import Path

from sentune.errors import ConfigError

PROTECTED = frozenset({"/predict", "/explain"})
PROTECTED_POSTS = frozenset({"/"})  # the root's GET is the page; its POST is the Inference API route
KEY = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an HTTP header can carry unchanged


def load_api_keys(keys: Iterable[str] = (), keys_file: str | None = None) -> list[str]:
    """The keys from the flags and the file, checked; duplicates dropped, order kept."""
    found = [k.strip() for k in keys if k.strip()]
    if keys_file:
        try:
            lines = Path(keys_file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --api-keys-file {keys_file}: {e}") from None
        from_file = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not from_file:
            raise ConfigError(f"--api-keys-file {keys_file} holds no key (one per line; # starts a comment)")
        found += from_file
    for i, key in enumerate(found):
        if not KEY.fullmatch(key):  # say which one without printing it
            raise ConfigError(f"API key {i + 1} has spaces or non-ASCII characters; use visible ASCII only")
    return list(dict.fromkeys(found))


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
    """ASGI middleware: 401 with a JSON error and `WWW-Authenticate` on protected routes without a valid key.

    It runs before the body is read, so an anonymous client cannot make the server buffer a large body.
    """

    def __init__(self, app, keys: list[str], protected: frozenset[str] = PROTECTED):
        self.app = app
        self.keys = [k.encode() for k in keys]
        self.protected = protected

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self.keys or not self.guards(scope):
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

    def guards(self, scope) -> bool:
        path = scope["path"]
        return path.rstrip("/") in self.protected or (scope["method"] == "POST" and path in PROTECTED_POSTS)
