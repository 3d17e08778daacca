"""``POST /v1/chat/completions``, the gateway's hot path, as a plain ASGI endpoint.

Why plain ASGI and not a FastAPI route: the gateway's budget is 1 ms a call on top of the upstream,
and FastAPI's middleware stack, router and request handling took about 0.2 ms of it (measured on a
2-core x86_64 CPU against an upstream that answers after 20 ms). The endpoint reads the headers it
needs straight from the ASGI scope and writes whole answers itself; streams still go out as
Starlette's ``StreamingResponse``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from diffpo_integrations.core.errors import InputError
from diffpo_integrations.gateway.aligning import RequestPlan, plan_request
from diffpo_integrations.gateway.answers import align_completion, passthrough_meta
from diffpo_integrations.gateway.state import GatewayState, Slot
from diffpo_integrations.gateway.streaming import stream_answer
from diffpo_integrations.gateway.wire import GatewayError, openai_error, sse

__all__ = ["ChatCompletions", "plan_completion", "send_json", "whole_completion"]

logger = logging.getLogger(__name__)

# Starlette's JSONResponse encoding (compact, UTF-8 as is), with one encoder built once, not per answer.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


async def send_json(send: Send, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> None:
    """Write one whole JSON answer."""
    body = _ENCODER.encode(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if headers:
        raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ChatCompletions:
    """OpenAI's chat completion: the upstream writes the draft, the aligner rewrites it.

    An ASGI app: mount it at ``/v1/chat/completions`` of an app whose ``state.gateway`` holds the
    :class:`~diffpo_integrations.gateway.state.GatewayState`.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: GatewayState = scope["app"].state.gateway
        status = 500
        try:
            status = await self._answer(state, scope, receive, send)
        except GatewayError as exc:
            status = exc.status
            await send_json(send, exc.status, exc.body, exc.headers)
        except Exception:
            logger.exception("the gateway failed to answer a chat completion")
            body = openai_error("the gateway failed unexpectedly; its log has the details", "internal_error")
            await send_json(send, 500, body)
        finally:
            state.metrics.count("diffpo_gateway_requests_total", ("status", str(status)))

    async def _answer(self, state: GatewayState, scope: Scope, receive: Receive, send: Send) -> int:
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        state.authorize(headers.get("authorization"))
        body = _json_body(await _read_body(receive))
        plan = plan_completion(state, body, headers)
        upstream_headers = state.upstream_headers(headers)
        slot = await state.admission.enter()
        try:
            if body.get("stream"):
                # From here the stream's body owns the slot and releases it when it ends.
                response = await _streamed(state, body, plan, upstream_headers, slot)
            else:
                try:
                    payload, aligned = await whole_completion(state, body, plan, upstream_headers)
                finally:
                    slot.release()
                await send_json(send, 200, payload, {"x-diffpo-aligned": "true" if aligned else "false"})
                return 200
        except BaseException:
            slot.release()
            raise
        await response(scope, receive, send)
        return response.status_code


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise GatewayError(400, "the client disconnected before sending its whole request", "invalid_request_error")
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise GatewayError(400, f"the request body is not JSON: {exc}", "invalid_request_error") from exc
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        msg = "the request body must be a JSON object with a non-empty 'messages' list"
        raise GatewayError(400, msg, "invalid_request_error", param="messages")
    return body


def plan_completion(state: GatewayState, body: dict[str, Any], headers: Mapping[str, str]) -> RequestPlan:
    """The request's plan under the gateway's defaults.

    Raises:
        GatewayError: 400 when an option is malformed (the message names it).
    """
    try:
        return plan_request(
            body,
            headers,
            keep_prefix_tokens=state.config.keep_prefix_tokens,
            max_new_tokens=state.config.max_new_tokens,
        )
    except InputError as exc:
        raise GatewayError(400, str(exc), "invalid_request_error", param="diffpo") from exc


async def whole_completion(
    state: GatewayState, body: dict[str, Any], plan: RequestPlan, headers: dict[str, str]
) -> tuple[dict[str, Any], bool]:
    """The upstream's whole chat completion, aligned as ``plan`` says, and whether it was aligned.

    Raises:
        GatewayError: the upstream failed, or an alignment failed under ``fail_policy="closed"``.
    """
    started = time.perf_counter()
    payload = await state.upstream.chat(plan.upstream_body, headers)
    state.metrics.observe("diffpo_gateway_upstream_seconds", time.perf_counter() - started)
    if not plan.align:
        assert plan.reason is not None
        state.metrics.count("diffpo_gateway_passthrough_total", ("reason", plan.reason))
        payload["diffpo"] = passthrough_meta(plan.reason)
        return payload, False
    return await align_completion(state, body, payload, plan)


async def _streamed(
    state: GatewayState, body: dict[str, Any], plan: RequestPlan, headers: dict[str, str], slot: Slot
) -> StreamingResponse:
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


async def _forward(events: AsyncIterator[dict[str, Any]], upstream: AsyncExitStack, slot: Slot) -> AsyncIterator[bytes]:
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
        slot.release()
