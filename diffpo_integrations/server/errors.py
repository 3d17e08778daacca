"""TGI-shaped error answers: ``{"error": ..., "error_type": ...}`` with TGI's status codes.

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

_log = logging.getLogger(__name__)

__all__ = [
    "ApiError",
    "ClientGone",
    "error_body",
    "format_validation_errors",
    "generation_error",
    "incomplete_generation",
    "install_error_handlers",
    "overloaded",
    "validation_error",
]


class ClientGone(Exception):
    """The client disconnected; its generation was cancelled and nobody reads the answer (logged as 499)."""


class ApiError(Exception):
    """An error answer: raise it anywhere in a route and the handler renders TGI's shape."""

    def __init__(self, status: int, error_type: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        """The JSON answer for this error."""
        return JSONResponse(error_body(self.message, self.error_type), status_code=self.status, headers=self.headers)


def error_body(message: str, error_type: str) -> dict[str, str]:
    """TGI's error payload."""
    return {"error": message, "error_type": error_type}


def validation_error(message: str) -> ApiError:
    """A 422 ``validation`` error."""
    return ApiError(422, "validation", message)


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


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through TGI's shape, including FastAPI's validation and 404/405 answers."""

    async def on_api_error(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return validation_error(format_validation_errors(exc.errors())).response()

    async def on_http(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kinds = {404: "not_found", 405: "method_not_allowed", 401: "authentication"}
        return ApiError(exc.status_code, kinds.get(exc.status_code, "http"), str(exc.detail), exc.headers).response()

    async def on_json(_: Request, exc: Exception) -> JSONResponse:
        return validation_error(f"Failed to parse the request body as JSON: {exc}").response()

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        _log.exception("unexpected server error")
        return ApiError(500, "internal", f"internal server error: {type(exc).__name__}").response()

    async def on_client_gone(_: Request, exc: Exception) -> Response:
        # Nobody reads this answer; the status only shows in logs and metrics (nginx's 499).
        return Response(status_code=499)

    app.add_exception_handler(ClientGone, on_client_gone)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(json.JSONDecodeError, on_json)
