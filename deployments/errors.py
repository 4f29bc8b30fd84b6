"""Every failure a route can meet, as the one OpenAI-style JSON error body a client gets.

Exceptions come from our own code (ValueError naming a field), from the scheduler actor (its typed refusals,
delivered by Ray wrapped in a `RayTaskError` whose text carries a traceback, process ids and addresses) and from
the framework. `api_error` maps each to a status and a message written for the client, built from the original
exception only; anything unexpected becomes a 500 that says nothing but its request id, while the whole trace goes
to the service log under that id.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError, TaskCancelledError
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments import openai_api as oai
from runtime.engine.vllm_engine import JobBusyError
from runtime.serving.dispatch import NoEngine, QueueFull, SessionBusy, UnknownSession, UnknownTicket

log = logging.getLogger("ray.serve")
ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
NO_ENGINE_RETRY_S = 10  # what a 503 asks a client to wait: about the time a crashed engine takes to restart


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.headers = status, message, type_, param, headers


def original(e: BaseException) -> BaseException:
    """The exception an actor raised, without Ray's wrapper (whose text is a remote traceback)."""
    if isinstance(e, RayTaskError) and e.cause is not None:
        return e.cause
    return e


def api_error(e: BaseException) -> ApiError:
    """The client's view of any exception a route lets through."""
    e = original(e)
    if isinstance(e, ApiError):
        return e
    if isinstance(e, QueueFull):
        return ApiError(429, str(e), "rate_limit_error", headers={"Retry-After": str(max(1, round(e.retry_after_s)))})
    if isinstance(e, SessionBusy):
        return ApiError(409, f"{e}; an agent's calls in one session are sequential", param="session_id")
    if isinstance(e, JobBusyError):
        return ApiError(409, "the session's previous call is still ending on its engine; retry", param="session_id",
                        headers={"Retry-After": "1"})
    if isinstance(e, UnknownSession):
        return ApiError(404, f"no open session {e.args[0]!r}" if e.args else "no such session", param="session_id")
    if isinstance(e, NoEngine):
        return ApiError(503, str(e), "server_error", headers={"Retry-After": str(NO_ENGINE_RETRY_S)})
    if isinstance(e, UnknownTicket | TaskCancelledError):
        return ApiError(503, "the call was given up by the scheduler (its engine lost it); retry it", "server_error",
                        headers={"Retry-After": "1"})
    if isinstance(e, ACTOR_LOST):
        return ApiError(503, "a service component is restarting; retry", "server_error",
                        headers={"Retry-After": str(NO_ENGINE_RETRY_S)})
    if isinstance(e, ValueError):  # our checks name their field first: "field: problem"
        message = str(e)
        head = message.split(":")[0]
        return ApiError(400, message, param=head if ":" in message and " " not in head else None)
    return ApiError(500, "internal error; the service log has the details under this request id", "server_error")


def request_id(request: Request) -> str:
    return request.scope.get("state", {}).get("request_id", "")


def error_response(e: ApiError, rid: str) -> JSONResponse:
    body = oai.error_body(e.message, e.type, e.param)
    body["error"]["request_id"] = rid
    return JSONResponse(body, e.status, headers=e.headers)


def install(app: FastAPI) -> None:
    """Route every error of `app` through `api_error`."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            return error_response(ApiError(400, f"request body is not valid JSON: {first.get('msg')}"),
                                  request_id(request))
        param = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or None
        return error_response(ApiError(400, f"{param or 'body'}: {first.get('msg')}", param=param),
                              request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        param = getattr(e, "param", None)
        return error_response(ApiError(e.status_code, str(e.detail), param=param, headers=e.headers),
                              request_id(request))

    async def _mapped(request: Request, e: Exception) -> JSONResponse:
        err = api_error(e)
        if err.status >= 500:  # the trace goes to the log, not the client
            log.error("request %s: %s %s failed", request_id(request), request.method, request.url.path,
                      exc_info=original(e))
        return error_response(err, request_id(request))

    # Known kinds are answered where the route raised them; `Exception` (the rest) is answered by the outermost
    # middleware, which then logs the exception again.
    for kind in (ApiError, RayTaskError, RayActorError, TaskCancelledError, ValueError, KeyError, QueueFull,
                 SessionBusy, NoEngine, Exception):
        app.add_exception_handler(kind, _mapped)
