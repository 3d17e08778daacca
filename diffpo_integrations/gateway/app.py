"""The gateway's FastAPI app: OpenAI's chat route with aligned answers, models, health and metrics."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from diffpo_integrations import __version__
from diffpo_integrations.core.aligner import BaseAligner
from diffpo_integrations.core.errors import InputError
from diffpo_integrations.gateway.aligning import RequestPlan, plan_request
from diffpo_integrations.gateway.answers import align_completion, passthrough_meta
from diffpo_integrations.gateway.config import GatewayConfig
from diffpo_integrations.gateway.state import GatewayState, build_aligner
from diffpo_integrations.gateway.streaming import stream_answer
from diffpo_integrations.gateway.wire import GatewayError, sse

__all__ = ["create_gateway_app"]


def create_gateway_app(
    config: GatewayConfig,
    *,
    aligner: BaseAligner | None = None,
) -> FastAPI:
    """Build the gateway app.

    Args:
        config: upstream, aligner and admission settings.
        aligner: the aligner to use; built from ``config.aligner_urls`` when ``None``.

    Example:
        >>> app = create_gateway_app(GatewayConfig(upstream="http://127.0.0.1:8081", aligner_urls=["http://127.0.0.1:8080"]))
        >>> sorted(r.path for r in app.routes if r.path.startswith("/v1"))
        ['/v1/chat/completions', '/v1/models']
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = GatewayState(config, aligner or build_aligner(config))
        app.state.gateway = state
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="diffpo gateway", version=__version__, lifespan=lifespan)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    return app


def _state(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.gateway
    return state


def _authorize(state: GatewayState, request: Request) -> None:
    key = state.config.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.get_secret_value().encode()):
        return
    raise GatewayError(
        401,
        "missing or invalid API key: send `Authorization: Bearer <key>` (the openai SDK's api_key)",
        "authentication_error",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


async def _body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise GatewayError(400, f"the request body is not JSON: {exc}", "invalid_request_error") from exc
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        msg = "the request body must be a JSON object with a non-empty 'messages' list"
        raise GatewayError(400, msg, "invalid_request_error", param="messages")
    return body


def _plan(state: GatewayState, body: dict[str, Any], request: Request) -> RequestPlan:
    try:
        return plan_request(
            body,
            request.headers,
            keep_prefix_tokens=state.config.keep_prefix_tokens,
            max_new_tokens=state.config.max_new_tokens,
        )
    except InputError as exc:
        raise GatewayError(400, str(exc), "invalid_request_error", param="diffpo") from exc


async def chat_completions(request: Request) -> Response:
    """OpenAI's chat completion: the upstream writes the draft, the aligner rewrites it."""
    state = _state(request)
    status = 500
    try:
        _authorize(state, request)
        body = await _body(request)
        plan = _plan(state, body, request)
        headers = state.upstream_headers(request.headers)
        slot = AsyncExitStack()
        await slot.enter_async_context(state.admission.slot())
        try:
            if body.get("stream"):
                response = await _streamed(state, body, plan, headers, slot)
            else:
                async with slot:
                    response = await _whole(state, body, plan, headers)
        except BaseException:
            await slot.aclose()
            raise
        status = response.status_code
        return response
    except GatewayError as exc:
        status = exc.status
        raise
    finally:
        state.metrics.count("diffpo_gateway_requests_total", ("status", str(status)))


async def _whole(state: GatewayState, body: dict[str, Any], plan: RequestPlan, headers: dict[str, str]) -> Response:
    started = time.perf_counter()
    payload = await state.upstream.chat(plan.upstream_body, headers)
    state.metrics.observe("diffpo_gateway_upstream_seconds", time.perf_counter() - started)
    if not plan.align:
        assert plan.reason is not None
        state.metrics.count("diffpo_gateway_passthrough_total", ("reason", plan.reason))
        payload["diffpo"] = passthrough_meta(plan.reason)
        return JSONResponse(payload, headers={"x-diffpo-aligned": "false"})
    answer, aligned = await align_completion(state, body, payload, plan)
    return JSONResponse(answer, headers={"x-diffpo-aligned": "true" if aligned else "false"})


async def _streamed(
    state: GatewayState, body: dict[str, Any], plan: RequestPlan, headers: dict[str, str], slot: AsyncExitStack
) -> Response:
    upstream = AsyncExitStack()
    # Opened here, before the answer starts, so an upstream failure keeps its HTTP status.
    events = await upstream.enter_async_context(state.upstream.stream_chat(plan.upstream_body, headers))
    if not plan.align:
        assert plan.reason is not None
        state.metrics.count("diffpo_gateway_passthrough_total", ("reason", plan.reason))
        return StreamingResponse(
            _forward(events, upstream, slot), media_type="text/event-stream", headers={"x-diffpo-aligned": "false"}
        )
    return StreamingResponse(stream_answer(state, body, plan, events, upstream, slot), media_type="text/event-stream")


async def _forward(
    events: AsyncIterator[dict[str, Any]], upstream: AsyncExitStack, slot: AsyncExitStack
) -> AsyncIterator[bytes]:
    try:
        try:
            async for event in events:
                yield sse(event)
        except GatewayError as exc:
            yield sse(exc.body)
            return
        yield sse("[DONE]")
    finally:
        await upstream.aclose()
        await slot.aclose()


async def models(request: Request) -> Response:
    """The upstream's ``GET /v1/models``, proxied."""
    state = _state(request)
    _authorize(state, request)
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
