"""What every request passes before a route sees it: a request id, the bearer key, and a byte limit on the body.

Plain ASGI middlewares (not Starlette's BaseHTTPMiddleware), so a streamed response and a client's disconnect pass
through unchanged. The byte limit is enforced while the body is read, before any parser sees it: a declared
`Content-Length` over the limit is refused without reading a byte, and a body sent in chunks is cut off at the
first byte over it. The limits are set by the ingress from its settings (`set_body_limits`) in this module, not on
the FastAPI app: Serve runs a pickled copy of the app, so its `state` is not the one the ingress could reach. The
middlewares are installed once, at import.
"""

from __future__ import annotations

import hmac
import json
import os
import uuid

from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import openai_api as oai
from runtime.serving.config import API_KEY_ENV

# Routes served without the key when AGENTRIVER_API_KEY is set: the liveness probe and the API's description
# (the schema says what the routes are, never what they hold). Everything else, /metrics included, needs the key.
PUBLIC_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect"})


async def _send_error(send, status: int, message: str, type_: str, param: str | None, rid: str,
                      headers: dict[str, str] | None = None) -> None:
    body = oai.error_body(message, type_, param)
    body["error"]["request_id"] = rid
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class RequestId:
    """Every request has an id: in `request.state.request_id`, in error bodies and in the log. Behind Serve's proxy
    it is the proxy's (the client's `X-Request-Id`, or one the proxy made), which the proxy also returns as a
    header and logs under; without one (the app served on its own) a new id, returned here."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = _header(scope, b"x-request-id")
        rid = given[:128] if given else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        if given:
            return await self.app(scope, receive, send)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BearerAuth:
    """`Authorization: Bearer <key>` on every route but PUBLIC_PATHS while AGENTRIVER_API_KEY is set where the
    ingress runs (compared in constant time)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        key = os.environ.get(API_KEY_ENV)
        if scope["type"] != "http" or not key or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        given = _header(scope, b"authorization") or ""
        if hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return await self.app(scope, receive, send)
        await _send_error(send, 401, "missing or wrong bearer token (Authorization: Bearer ...)",
                          "authentication_error", None, scope["state"]["request_id"], {"WWW-Authenticate": "Bearer"})


class BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` itself: FastAPI's body parsing lets an HTTPException through (any other error it
    would turn into a 400), and the app's handler answers it."""

    param = "body"

    def __init__(self, limit: int):
        super().__init__(413, f"body: over this route's {limit}-byte limit")


_BODY_LIMITS: list[tuple[str, int]] = []  # (path prefix, bytes), the first matching prefix wins


def set_body_limits(limits: list[tuple[str, int]]) -> None:
    """The body limits of this process's routes: (path prefix, bytes), the first matching prefix wins."""
    _BODY_LIMITS[:] = limits


class BodyLimit:
    """Refuses a body over its route's limit (`set_body_limits`) with 413 before it is parsed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = next((n for prefix, n in _BODY_LIMITS if scope["path"].startswith(prefix)), None)
        if limit is None:
            return await self.app(scope, receive, send)
        rid = scope["state"]["request_id"]
        declared = _header(scope, b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _send_error(send, 413, f"body: {declared} bytes is over this route's {limit}-byte limit",
                                     "invalid_request_error", "body", rid)
        seen = 0
        started = False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge as e:  # where no handler answered it
            if not started:
                await _send_error(send, 413, e.detail, "invalid_request_error", "body", rid)


def install(app) -> None:
    """Outermost first: the request id, then auth, then the byte limit."""
    app.add_middleware(BodyLimit)
    app.add_middleware(BearerAuth)
    app.add_middleware(RequestId)
