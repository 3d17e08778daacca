"""Error answers in the caller's dialect, with TGI's status codes.

TGI's routes answer ``{"error": ..., "error_type": ...}``; the OpenAI-shaped routes (``/v1/*``)
answer ``{"error": {"message", "type", "param", "code"}}`` with the ``error_type`` below as
``code``, so ``huggingface_hub`` and the ``openai`` SDK each show the reason.

=================  ======  ===========================================
``error_type``     status  when
=================  ======  ===========================================
``validation``     422     any invalid input (FastAPI's own 422 shape is replaced)
``overloaded``     429     the model queue is full (with ``Retry-After``)
``generation``     424     the model failed while generating
``incomplete_generation`` 500  the server stopped while generating (shutdown)
``internal``       500     an unexpected server error (a bug: the server keeps serving)
(none)             401     an API key is configured and the request lacks it
``not_found``      404     unknown route
=================  ======  ===========================================

Unexpected errors are answered by :class:`ErrorBoundary` without re-raising, so a kept-alive
connection survives them (Starlette's last-resort handler re-raises, and the server then
closes the connection).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diffpo_integrations.wire.openai import openai_error_body

_log = logging.getLogger(__name__)

__all__ = [
    "ApiError",
    "ClientGone",
    "ErrorBoundary",
    "error_body",
    "error_payload",
    "format_validation_errors",
    "generation_error",
    "incomplete_generation",
    "install_error_handlers",
    "is_openai_path",
    "overloaded",
    "validation_error",
]


class ClientGone(Exception):
    """The client disconnected; its generation was cancelled and nobody reads the answer (logged as 499)."""


class ApiError(Exception):
    """An error answer: raise it anywhere in a route and the handler renders it in the route's dialect.

    Args:
        status: HTTP status.
        error_type: TGI's ``error_type`` (OpenAI's ``code``).
        message: What went wrong and what to change.
        headers: Extra response headers (``Retry-After``).
        param: The request parameter at fault, when there is one (OpenAI's ``param``).
    """

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        *,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})
        self.param = param

    def payload(self, openai: bool = False) -> dict[str, Any]:
        """The JSON body: TGI's shape, or OpenAI's when ``openai``."""
        return error_payload(self.message, self.error_type, self.status, openai=openai, param=self.param)

    def response(self, openai: bool = False) -> JSONResponse:
        """The JSON answer for this error."""
        return JSONResponse(self.payload(openai), status_code=self.status, headers=self.headers)


def error_body(message: str, error_type: str) -> dict[str, str]:
    """TGI's error payload."""
    return {"error": message, "error_type": error_type}


def error_payload(
    message: str, error_type: str, status: int, *, openai: bool = False, param: str | None = None
) -> dict[str, Any]:
    """The error payload in TGI's shape, or OpenAI's (``error_type`` as its ``code``)."""
    if openai:
        return openai_error_body(message, status, code=error_type, param=param)
    return error_body(message, error_type)


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-shaped routes, which answer errors in OpenAI's shape."""
    return path.startswith("/v1/")


def validation_error(message: str, param: str | None = None) -> ApiError:
    """A 422 ``validation`` error, naming ``param`` when one parameter is at fault."""
    return ApiError(422, "validation", message, param=param)


def overloaded(retry_after_s: int) -> ApiError:
    """A 429 ``overloaded`` error with ``Retry-After``."""
    return ApiError(429, "overloaded", "Model is overloaded", {"Retry-After": str(retry_after_s)})


def generation_error(exc: BaseException) -> ApiError:
    """A 424 ``generation`` error for a model failure."""
    return ApiError(424, "generation", f"Request failed during generation: {type(exc).__name__}: {exc}")


def incomplete_generation() -> ApiError:
    """A 500 ``incomplete_generation`` error: the server stopped the generation (shutdown)."""
    return ApiError(500, "incomplete_generation", "Incomplete generation: the server stopped before it finished")


def format_validation_errors(errors: Sequence[Any]) -> str:
    """One readable line for pydantic/FastAPI validation errors, TGI-style.

    Example:
        >>> format_validation_errors([{"type": "missing", "loc": ("body", "inputs"), "msg": "Field required"}])
        'Failed to deserialize the JSON body into the target type: inputs: Field required'
    """
    parts: list[str] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "invalid JSON")
            position = loc[-1] if loc else "?"
            return f"Failed to parse the request body as JSON: {detail} at position {position}"
        where = ".".join(loc) if loc else "body"
        parts.append(f"{where}: {err.get('msg', 'invalid value')}")
    return "Failed to deserialize the JSON body into the target type: " + "; ".join(parts)


def _first_param(errors: Sequence[Any]) -> str | None:
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if loc and err.get("type") != "json_invalid":
            return ".".join(loc)
    return None


def _internal(exc: BaseException) -> ApiError:
    return ApiError(500, "internal", f"internal server error: {type(exc).__name__}")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through the caller's dialect, including FastAPI's validation and 404/405 answers."""

    def openai(request: Request) -> bool:
        return is_openai_path(request.url.path)

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response(openai(request))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        error = validation_error(format_validation_errors(exc.errors()), _first_param(exc.errors()))
        return error.response(openai(request))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kinds = {404: "not_found", 405: "method_not_allowed", 401: "authentication"}
        error = ApiError(exc.status_code, kinds.get(exc.status_code, "http"), str(exc.detail), exc.headers)
        return error.response(openai(request))

    async def on_json(request: Request, exc: Exception) -> JSONResponse:
        return validation_error(f"Failed to parse the request body as JSON: {exc}").response(openai(request))

    async def on_client_gone(_: Request, exc: Exception) -> Response:
        # Nobody reads this answer; the status only shows in logs and metrics (nginx's 499).
        return Response(status_code=499)

    app.add_exception_handler(ClientGone, on_client_gone)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(json.JSONDecodeError, on_json)
    app.add_middleware(ErrorBoundary)


class ErrorBoundary:
    """Pure ASGI middleware: an unexpected error becomes a 500 in the caller's dialect, and is not re-raised.

    Starlette's handler for ``Exception`` answers and then re-raises, and uvicorn closes the
    connection of a request that raised: a client's kept-alive connection would be reset by
    every 500. A stream that fails after its first byte can only be cut short.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            _log.exception("unexpected server error")
            if started:
                raise
            response = _internal(exc).response(is_openai_path(str(scope.get("path", ""))))
            await response(scope, receive, send)
