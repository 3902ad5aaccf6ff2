"""Who may call the server: `victorian-gpt serve --api-key KEY` (or the `VICTORIAN_GPT_API_KEY` environment
variable), as vLLM's `--api-key`/`VLLM_API_KEY` and llama.cpp's `--api-key`.

With a key, every route but `/health` needs `Authorization: Bearer KEY` (what the `openai` client sends from its
`api_key`), the WebSocket route too; a browser, which cannot set headers on a WebSocket, offers the key as a
subprotocol instead: `new WebSocket(url, ["victorian-gpt", "bearer." + KEY])`. A missing or wrong key is HTTP 401 in
the route's own error shape (OpenAI's on `/v1/...`, TGI's elsewhere); the comparison takes constant time
(`hmac.compare_digest`). Without a key the server listens on 127.0.0.1 by default, and says so in its log when it
is told to listen elsewhere.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os

from .errors import openai_error_body, openai_shaped

API_KEY_ENV = "VICTORIAN_GPT_API_KEY"
OPEN_PATHS = frozenset({"/health"})  # what a load balancer probes
BEARER_SUBPROTOCOL = "bearer."
UNAUTHORIZED = ("Missing or wrong API key: send `Authorization: Bearer KEY` with the key the server was started with "
                f"(--api-key or {API_KEY_ENV})")

logger = logging.getLogger("victorian_gpt.serving")


def resolve_api_key(flag: str | None) -> str | None:
    """The key from `--api-key`, else from the environment; None (no key asked) when both are empty."""
    key = flag if flag is not None else os.environ.get(API_KEY_ENV)
    return key or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_exposed(host: str, api_key: str | None) -> None:
    if api_key is None and not is_loopback(host):
        logger.warning("listening on %s without an API key: anyone who can reach this address can use the model "
                       "(pass --api-key KEY or set %s)", host, API_KEY_ENV)


def websocket_subprotocols(scope_or_header) -> list[str]:
    """The subprotocols a WebSocket client offered (`Sec-WebSocket-Protocol`)."""
    return [p.strip() for p in scope_or_header.split(",") if p.strip()] if scope_or_header else []


class APIKeyMiddleware:
    """ASGI middleware that lets a request through only with the server's key (see the module's docstring)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    def _authorized(self, scope) -> bool:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        offered = headers.get("authorization", "")
        candidates = [offered[7:].strip()] if offered[:7].lower() == "bearer " else []
        if scope["type"] == "websocket":
            candidates += [p[len(BEARER_SUBPROTOCOL):] for p in websocket_subprotocols(headers.get("sec-websocket-protocol"))
                           if p.startswith(BEARER_SUBPROTOCOL)]
        # compare every candidate (constant time each), so timing says nothing about which one was close
        return any(hmac.compare_digest(c.encode(), self.key) for c in candidates)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope["path"] in OPEN_PATHS or self._authorized(scope):
            return await self.app(scope, receive, send)
        if openai_shaped(scope["path"]):
            body = openai_error_body(UNAUTHORIZED, 401, code="invalid_api_key")
        else:
            body = {"error": UNAUTHORIZED, "error_type": "unauthorized"}
        payload = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                   (b"www-authenticate", b"Bearer")]
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 401, "headers": headers})
            await send({"type": "http.response.body", "body": payload})
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):  # a real HTTP 401 to the handshake
            await send({"type": "websocket.http.response.start", "status": 401, "headers": headers})
            await send({"type": "websocket.http.response.body", "body": payload})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": "unauthorized"})
