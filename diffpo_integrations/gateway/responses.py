"""``POST /v1/responses``: OpenAI's Responses API, whole and streamed, with the aligned answer.

By default the request is translated to the upstream's Chat Completions
(:mod:`~diffpo_integrations.gateway.responses_input`) and goes through the chat route's own planning,
alignment and streaming; the answer is translated back
(:mod:`~diffpo_integrations.gateway.responses_stream`). With ``upstream_api="responses"`` it is
forwarded to the upstream's own ``/v1/responses`` and the text of its message is aligned.
Structured output (``text.format``) and function calls pass through unaligned, as on the chat route.
A FastAPI route, not on the chat route's plain-ASGI path: it has no latency target of its own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import AsyncExitStack
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from diffpo_integrations.core.errors import DiffPOError, InputError
from diffpo_integrations.gateway.aligning import align_choice
from diffpo_integrations.gateway.answers import (
    aligner_failure,
    conversation_or_error,
    passthrough_meta,
    record_result,
)
from diffpo_integrations.gateway.chat import plan_completion, whole_completion
from diffpo_integrations.gateway.responses_input import chat_messages, chat_request
from diffpo_integrations.gateway.responses_stream import ResponseStream, replay, response_from_completion
from diffpo_integrations.gateway.state import GatewayState, Slot
from diffpo_integrations.gateway.streaming import answer_events
from diffpo_integrations.gateway.wire import GatewayError, openai_error
from diffpo_integrations.wire.responses import new_id, now, output_text

__all__ = ["create_response"]

logger = logging.getLogger(__name__)


async def create_response(request: Request) -> Response:
    """Answer one Responses API request (the route's endpoint)."""
    state: GatewayState = request.app.state.gateway
    status = 500
    try:
        response = await _answer(state, request)
        status = response.status_code
        return response
    except GatewayError as exc:
        status = exc.status
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)
    except Exception:
        logger.exception("the gateway failed to answer a response request")
        body = openai_error("the gateway failed unexpectedly; its log has the details", "internal_error")
        return JSONResponse(body, status_code=500)
    finally:
        state.metrics.count("diffpo_gateway_requests_total", ("status", str(status)))


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise GatewayError(400, f"the request body is not JSON: {exc}", "invalid_request_error") from exc
    if not isinstance(body, dict) or "input" not in body:
        msg = "the request body must be a JSON object with an 'input' (a string or a list of items)"
        raise GatewayError(400, msg, "invalid_request_error", param="input")
    return body


async def _answer(state: GatewayState, request: Request) -> Response:
    state.authorize(request.headers.get("authorization"))
    body = _json_body(await request.body())
    if state.config.upstream_api == "responses":
        return await _forwarded(state, body, request.headers)
    chat = chat_request(body)
    plan = plan_completion(state, chat, request.headers)
    headers = state.upstream_headers(request.headers)
    response_id, created_at = new_id("resp"), now()
    slot = await state.admission.enter()
    try:
        if not body.get("stream"):
            try:
                payload, aligned = await whole_completion(state, chat, plan, headers)
            finally:
                slot.release()
            answer = response_from_completion(payload, body, response_id, created_at)
            return JSONResponse(answer, headers={"x-diffpo-aligned": "true" if aligned else "false"})
        upstream = AsyncExitStack()
        # Opened here, before the answer starts, so an upstream failure keeps its HTTP status.
        events = await upstream.enter_async_context(state.upstream.stream_chat(plan.upstream_body, headers))
    except BaseException:
        slot.release()
        raise
    stream = ResponseStream(body, response_id, created_at)
    if plan.align:
        chunks = answer_events(state, chat, plan, events, upstream, slot)
        return StreamingResponse(stream.translate(chunks), media_type="text/event-stream")
    assert plan.reason is not None
    state.metrics.count("diffpo_gateway_passthrough_total", ("reason", plan.reason))
    stream.meta = passthrough_meta(plan.reason)
    return StreamingResponse(
        stream.translate(_forward(events, upstream, slot)),
        media_type="text/event-stream",
        headers={"x-diffpo-aligned": "false"},
    )


async def _forward(
    events: AsyncIterator[dict[str, Any]], upstream: AsyncExitStack, slot: Slot
) -> AsyncGenerator[dict[str, Any] | str, None]:
    """The upstream's chat events as they came (a pass-through), then ``"[DONE]"`` or the error."""
    try:
        try:
            async for event in events:
                yield event
        except GatewayError as exc:
            yield exc.body
            return
        yield "[DONE]"
    finally:
        await upstream.aclose()
        slot.release()


async def _forwarded(state: GatewayState, body: dict[str, Any], client_headers: Mapping[str, str]) -> Response:
    """``upstream_api="responses"``: the upstream's own Responses API answers; its message text is aligned.

    The upstream is asked for the whole answer even when the client streams: the aligner needs the
    whole draft, and the stream is then written from the aligned answer.
    """
    text = body.get("text")
    try:
        messages = chat_messages(body.get("instructions"), body.get("input"))
    except GatewayError:
        messages = []  # an input the gateway cannot read is the upstream's own API to judge
    view = {
        "diffpo": body.get("diffpo"),
        "messages": messages,
        "max_tokens": body.get("max_output_tokens"),
        "response_format": text.get("format") if isinstance(text, Mapping) else None,
    }
    plan = plan_completion(state, view, client_headers)
    upstream_body = {k: v for k, v in body.items() if k not in ("diffpo", "stream")}
    slot = await state.admission.enter()
    try:
        answer = await state.upstream.responses(upstream_body, state.upstream_headers(client_headers))
        reason = plan.reason
        if reason is None and any(item.get("type") == "function_call" for item in answer["output"]):
            reason = "tool_calls"
        if reason is not None:
            state.metrics.count("diffpo_gateway_passthrough_total", ("reason", reason))
            answer["diffpo"] = passthrough_meta(reason)
        else:
            await _align_output(state, body, answer, plan)
    finally:
        slot.release()
    aligned = "true" if answer["diffpo"].get("aligned") else "false"
    if body.get("stream"):
        return StreamingResponse(replay(answer), media_type="text/event-stream", headers={"x-diffpo-aligned": aligned})
    return JSONResponse(answer, headers={"x-diffpo-aligned": aligned})


async def _align_output(state: GatewayState, body: dict[str, Any], answer: dict[str, Any], plan: Any) -> None:
    """Align the text of the answer's messages, in place: one message holding the aligned text."""
    messages = [item for item in answer["output"] if item.get("type") == "message"]
    draft = "".join(
        str(part.get("text") or "")
        for item in messages
        for part in item.get("content") or []
        if part.get("type") == "output_text"
    )
    try:
        conversation = conversation_or_error(chat_messages(body.get("instructions"), body.get("input")))
    except GatewayError as exc:
        conversation = InputError(str(exc))
    try:
        result = await align_choice(state.aligner, conversation, draft, plan, state.config.fail_policy)
    except DiffPOError as exc:
        raise aligner_failure(exc, state.aligner.endpoint) from exc
    record_result(state, result)
    if messages:
        messages[0]["content"] = [output_text(result.text)]
        answer["output"] = [item for item in answer["output"] if item.get("type") != "message" or item is messages[0]]
    if result.aligned:
        # The aligned text's own ending: the draft's budget no longer says whether the answer is whole.
        cut = result.finish_reason == "length"
        answer["status"] = "incomplete" if cut else "completed"
        answer["incomplete_details"] = {"reason": "max_output_tokens"} if cut else None
    answer["diffpo"] = result.metadata()
