"""Streamed chat answers: read the upstream's stream, then stream the aligned answer as OpenAI chunks.

Policies: ``full_draft`` reads the whole upstream answer first; ``early`` starts aligning once the
kept prefix has surely arrived and closes the upstream stream (which stops its generation). An
answer with tool calls is forwarded event by event as the upstream sent it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass
from typing import Any

from diffpo_integrations.core.errors import DiffPOError
from diffpo_integrations.core.policy import fall_back
from diffpo_integrations.core.types import AlignResult, Message
from diffpo_integrations.gateway.aligning import RequestPlan, complete_words, ready_words
from diffpo_integrations.gateway.answers import (
    aligner_failure,
    conversation_or_error,
    finish_reason,
    record_result,
)
from diffpo_integrations.gateway.state import GatewayState, Slot
from diffpo_integrations.gateway.wire import GatewayError, sse

__all__ = ["answer_events", "stream_answer"]

_BASE_KEYS = ("id", "created", "model", "system_fingerprint")


@dataclass
class _Draft:
    text: str = ""
    finish: str | None = None


class _StreamFailed(Exception):
    """The stream ended with an error event; nothing more may be sent."""


async def stream_answer(
    state: GatewayState,
    body: dict[str, Any],
    plan: RequestPlan,
    events: AsyncIterator[dict[str, Any]],
    upstream: AsyncExitStack,
    slot: Slot,
) -> AsyncIterator[bytes]:
    """The SSE body of a streamed chat answer; closes ``upstream`` as soon as it is read, releases ``slot`` at the end."""
    # aclosing: a client that leaves must close the inner generator now (upstream, slot), not at collection.
    async with aclosing(answer_events(state, body, plan, events, upstream, slot)) as chunks:
        async for chunk in chunks:
            yield sse(chunk)


async def answer_events(
    state: GatewayState,
    body: dict[str, Any],
    plan: RequestPlan,
    events: AsyncIterator[dict[str, Any]],
    upstream: AsyncExitStack,
    slot: Slot,
) -> AsyncGenerator[dict[str, Any] | str, None]:
    """The events of a streamed chat answer: ``chat.completion.chunk`` objects, error bodies, then ``"[DONE]"``
    (absent after an error).

    Closes ``upstream`` as soon as it is read and releases ``slot`` at the end; the Responses route
    translates these same events.
    """
    try:
        drafts: dict[int, _Draft] = {}
        base: dict[str, Any] = {}
        usage: Any = None
        forwarded = False
        started = time.perf_counter()
        early = ready_words(plan.keep_prefix_tokens) if _early(state, body) else None
        try:
            held: list[dict[str, Any]] = []
            async for event in events:
                base = base or {k: event[k] for k in _BASE_KEYS if k in event}
                if forwarded or "error" in event:
                    yield event
                    continue
                usage = event.get("usage") or usage
                held.append(event)
                if _read(event, drafts):
                    forwarded = True
                    state.metrics.count("diffpo_gateway_passthrough_total", ("reason", "tool_calls"))
                    for raw in held:
                        yield raw
                    continue
                if early is not None and 0 in drafts and complete_words(drafts[0].text) >= early:
                    usage = None  # the upstream was stopped: its usage figures are unknown
                    break
        except GatewayError as exc:
            yield exc.body
            return
        finally:
            state.metrics.observe("diffpo_gateway_upstream_seconds", time.perf_counter() - started)
            await upstream.aclose()
        if forwarded:
            yield "[DONE]"
            return
        base = {**base, "object": "chat.completion.chunk"}
        conversation = conversation_or_error(body.get("messages"))
        try:
            for index in sorted(drafts):
                async for piece in _aligned_choice(state, conversation, drafts[index], plan, base, index):
                    yield piece
        except _StreamFailed:
            return
        if (body.get("stream_options") or {}).get("include_usage"):
            yield {**base, "choices": [], "usage": usage}
        yield "[DONE]"
    finally:
        slot.release()


def _early(state: GatewayState, body: dict[str, Any]) -> bool:
    # Several choices arrive interleaved: only the one-choice stream can be cut short.
    return state.config.stream_policy == "early" and (body.get("n") or 1) == 1


def _read(event: dict[str, Any], drafts: dict[int, _Draft]) -> bool:
    """Add one event's deltas to the drafts; True when it carries a tool call."""
    tool_call = False
    for choice in event.get("choices") or []:
        draft = drafts.setdefault(int(choice.get("index") or 0), _Draft())
        delta = choice.get("delta") or {}
        tool_call = tool_call or bool(delta.get("tool_calls") or delta.get("function_call"))
        draft.text += delta.get("content") or ""
        draft.finish = choice.get("finish_reason") or draft.finish
    return tool_call


async def _aligned_choice(
    state: GatewayState,
    conversation: list[Message] | DiffPOError,
    draft: _Draft,
    plan: RequestPlan,
    base: dict[str, Any],
    index: int,
) -> AsyncIterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**base, "choices": [choice], **extra}

    yield chunk({"role": "assistant", "content": ""})
    result: AlignResult | None = None
    emitted = False
    try:
        if isinstance(conversation, DiffPOError):
            raise conversation
        async for piece in state.aligner.astream(
            conversation, draft.text, keep_prefix_tokens=plan.keep_prefix_tokens, max_new_tokens=plan.max_new_tokens
        ):
            if piece.text:
                emitted = True
                yield chunk({"role": "assistant", "content": piece.text})
            result = piece.result or result
    except DiffPOError as exc:
        try:
            # Falls back only before the first aligned piece: the client already shows aligned text after it.
            result = fall_back(
                state.config.fail_policy, draft.text, exc, endpoint=state.aligner.endpoint, emitted=emitted
            )
        except DiffPOError:
            yield aligner_failure(exc, state.aligner.endpoint).body
            raise _StreamFailed from exc
        yield chunk({"role": "assistant", "content": draft.text})
    if result is None:
        yield aligner_failure(DiffPOError("the aligner's stream ended without a result"), None).body
        raise _StreamFailed
    record_result(state, result)
    yield chunk({}, finish_reason(result, draft.finish), diffpo=result.metadata())
