"""Aligning upstream answers: whole chat completions, and the choice-level bookkeeping shared with streams."""

from __future__ import annotations

import asyncio
from typing import Any

from diffpo_integrations.core.errors import (
    AlignerTimeoutError,
    DiffPOError,
    InputError,
    OverloadedError,
)
from diffpo_integrations.core.types import AlignResult, Message
from diffpo_integrations.gateway.aligning import RequestPlan, align_choice, conversation_from_openai
from diffpo_integrations.gateway.state import GatewayState
from diffpo_integrations.gateway.wire import GatewayError

__all__ = [
    "aligner_failure",
    "align_completion",
    "conversation_or_error",
    "finish_reason",
    "passthrough_meta",
    "record_result",
]


def aligner_failure(exc: DiffPOError, endpoint: str | None) -> GatewayError:
    """The gateway's answer when an alignment failed under ``fail_policy="closed"``.

    A timeout is a 504 and an overloaded aligner a 503 with ``Retry-After``; a conversation the aligner
    cannot take is a 422; any other aligner failure is a 502. Each names the aligner.
    """
    where = f"the aligner {endpoint}" if endpoint else "the aligner"
    message = f"{where} failed: {type(exc).__name__}: {exc}"
    if isinstance(exc, AlignerTimeoutError):
        return GatewayError(504, message, "aligner_timeout", code="aligner_timeout")
    if isinstance(exc, OverloadedError):
        retry = str(int(exc.retry_after or 1))
        return GatewayError(
            503, message, "aligner_overloaded", code="aligner_overloaded", headers={"Retry-After": retry}
        )
    if isinstance(exc, InputError):
        return GatewayError(422, message, "invalid_request_error", code="alignment_input")
    return GatewayError(502, message, "aligner_error", code="aligner_error")


def finish_reason(result: AlignResult, upstream_reason: str | None) -> str | None:
    """OpenAI's ``finish_reason`` for an aligned choice; the upstream's own for a draft returned as is."""
    if not result.aligned:
        return upstream_reason
    return "length" if result.finish_reason == "length" else "stop"


def passthrough_meta(reason: str) -> dict[str, Any]:
    """The ``diffpo`` object of an answer returned as the upstream wrote it."""
    return {"aligned": False, "passthrough": reason}


def conversation_or_error(messages: Any) -> list[Message] | DiffPOError:
    """The aligner's conversation, or the input error that makes it impossible (handled by the fail policy)."""
    try:
        return conversation_from_openai(messages if isinstance(messages, list) else [])
    except InputError as exc:
        return exc


async def _align(
    state: GatewayState, conversation: list[Message] | DiffPOError, draft: str, plan: RequestPlan
) -> AlignResult:
    policy = state.config.fail_policy
    if isinstance(conversation, DiffPOError):
        if policy == "closed":
            raise conversation
        return AlignResult.unaligned(draft, conversation, endpoint=state.aligner.endpoint)
    return await align_choice(state.aligner, conversation, draft, plan, policy)


def record_result(state: GatewayState, result: AlignResult) -> None:
    state.metrics.observe("diffpo_gateway_aligner_seconds", result.latency_s)
    name = "diffpo_gateway_aligned_total" if result.aligned else "diffpo_gateway_fallbacks_total"
    state.metrics.count(name)


async def align_completion(
    state: GatewayState, body: dict[str, Any], payload: dict[str, Any], plan: RequestPlan
) -> tuple[dict[str, Any], bool]:
    """Align every text choice of an upstream ``chat.completion``; the answer and whether all were aligned.

    Choices with tool calls are returned as the upstream wrote them.

    Raises:
        GatewayError: an alignment failed under ``fail_policy="closed"``.
    """
    choices = payload.get("choices") or []
    conversation = conversation_or_error(body.get("messages"))
    jobs: dict[int, asyncio.Task[AlignResult]] = {}
    metas: dict[int, dict[str, Any]] = {}
    for i, choice in enumerate(choices):
        message = choice.get("message") or {}
        if message.get("tool_calls") or message.get("function_call"):
            metas[i] = passthrough_meta("tool_calls")
            state.metrics.count("diffpo_gateway_passthrough_total", ("reason", "tool_calls"))
            continue
        jobs[i] = asyncio.ensure_future(_align(state, conversation, str(message.get("content") or ""), plan))
    try:
        results = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
    except DiffPOError as exc:
        for job in jobs.values():
            job.cancel()
        raise aligner_failure(exc, state.aligner.endpoint) from exc
    for i, result in results.items():
        record_result(state, result)
        choices[i]["message"]["content"] = result.text
        choices[i]["finish_reason"] = finish_reason(result, choices[i].get("finish_reason"))
        metas[i] = result.metadata()
    for i, meta in metas.items():
        choices[i]["diffpo"] = meta
    if choices:
        payload["diffpo"] = metas[0]
    return payload, bool(results) and all(r.aligned for r in results.values()) and len(results) == len(choices)
