"""The gateway's FastAPI app: OpenAI's chat and Responses routes with aligned answers, models, health and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from diffpo_integrations import __version__
from diffpo_integrations.backends.pool import AlignerPool
from diffpo_integrations.gateway.chat import ChatCompletions
from diffpo_integrations.gateway.config import GatewayConfig
from diffpo_integrations.gateway.responses import create_response
from diffpo_integrations.gateway.state import GatewayState, build_aligner
from diffpo_integrations.gateway.wire import GatewayError

__all__ = ["create_gateway_app"]


def create_gateway_app(
    config: GatewayConfig,
    *,
    aligner: AlignerPool | None = None,
) -> FastAPI:
    """Build the gateway app.

    Args:
        config: upstream, aligner and admission settings.
        aligner: the aligners to use; built from ``config.aligner_urls`` when ``None``.

    Example:
        >>> app = create_gateway_app(GatewayConfig(upstream="http://127.0.0.1:8081", aligner_urls=["http://127.0.0.1:8080"]))
        >>> sorted(r.path for r in app.routes if r.path.startswith("/v1"))
        ['/v1/chat/completions', '/v1/models', '/v1/responses']
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = GatewayState(config, aligner or build_aligner(config))
        app.state.gateway = state
        try:
            yield
        finally:
            await state.aclose()

    app = _GatewayApp(title="diffpo gateway", version=__version__, lifespan=lifespan)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    app.router.routes.append(Route("/v1/chat/completions", _GatewayApp.chat, methods=["POST"]))
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/responses", create_response, methods=["POST"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    return app


class _GatewayApp(FastAPI):
    """FastAPI, with ``POST /v1/chat/completions`` answered before the middleware stack and the router.

    The chat route is the gateway's hot path (see :mod:`diffpo_integrations.gateway.chat` for the
    cost this saves); every other route, and the chat route's 405 for other methods, are FastAPI's.
    Once middleware has been added to the app, every request goes through it, the chat route too.
    """

    chat = ChatCompletions()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and scope["path"] == "/v1/chat/completions"
            and not self.user_middleware
        ):
            scope["app"] = self
            await self.chat(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


async def models(request: Request) -> Response:
    """The upstream's ``GET /v1/models``, proxied."""
    state = _state(request)
    state.authorize(request.headers.get("authorization"))
    status, payload = await state.upstream.get("/models", state.upstream_headers(request.headers))
    if isinstance(payload, str):
        return PlainTextResponse(payload, status_code=status)
    return JSONResponse(payload, status_code=status)


async def health(request: Request) -> Response:
    """200 while the gateway runs; the body says whether the upstream and the aligner answer."""
    state = _state(request)
    upstream, aligner = await asyncio.gather(
        state.upstream.probe(state.upstream_headers(request.headers)), state.aligner_health()
    )
    return JSONResponse({"status": "ok", "upstream": upstream, "aligner": aligner, "inside": state.admission.inside})


async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, aligned, fall-backs, pass-throughs, upstream and aligner latency."""
    return PlainTextResponse(_state(request).metrics.render(), media_type="text/plain; version=0.0.4")
