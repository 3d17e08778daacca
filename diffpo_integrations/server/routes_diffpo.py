"""``POST /diffpo/align``: one DiffPO alignment on the served model, answered whole or as SSE.

The prompt, decoding and answer come from :class:`~diffpo_integrations.engine.aligning.EngineAligner`,
the same code as the in-process ``LocalAligner``, so a server and a local aligner give the same text.
The route adds validation against the server's limits, the model worker queue, and streaming.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from diffpo_integrations.core.aligner import AnswerStream
from diffpo_integrations.core.errors import DiffPOError
from diffpo_integrations.core.prompt import AlignPrompt
from diffpo_integrations.core.templates import BUILTIN_TEMPLATES
from diffpo_integrations.core.types import AlignRequest, AlignResult, coerce_messages
from diffpo_integrations.server.errors import ApiError, error_body, validation_error
from diffpo_integrations.server.schemas import AlignBody
from diffpo_integrations.server.state import ServerState, get_state
from diffpo_integrations.server.worker import Job, JobContext
from diffpo_integrations.wire.sse import sse_event

__all__ = ["align_payload", "router"]

router = APIRouter()
_log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    aligner: Any
    request: AlignRequest
    prompt: AlignPrompt


def align_payload(result: AlignResult) -> dict[str, Any]:
    """The route's JSON answer for one result."""
    return result.model_dump(
        include={"text", "kept_prefix", "kept_prefix_tokens", "generated_tokens", "finish_reason", "details"}
    )


def _base_aligner(state: ServerState) -> Any:
    if state.aligner is None:
        from diffpo_integrations.engine.aligning import EngineAligner

        state.aligner = EngineAligner(
            loaded=state.runtime.loaded,
            template=state.runtime.template(state.config.template),
            method=state.config.method,
        )
    return state.aligner


def _prepare(state: ServerState, body: AlignBody) -> _Prepared:
    """Build the exact prompt and check it against the server's limits (runs off the event loop)."""
    options: dict[str, Any] = {"prompt_mode": body.prompt_mode, "method": body.method}
    options.update(block_size=body.block_size, max_iter=body.max_iter)
    if body.template is not None:
        # Only builtin names: a request must not make the server load files or reach the hub.
        if body.template not in BUILTIN_TEMPLATES:
            msg = f"unknown template {body.template!r}: use one of {sorted(BUILTIN_TEMPLATES)} or leave it out"
            raise validation_error(msg)
        options["template"] = body.template
    # The conversation alone must fit the input: refuse one that cannot before tokenizing it.
    state.check_characters("".join(m.content for m in body.messages))
    try:
        aligner = _base_aligner(state).with_options(**options)
        request = AlignRequest(
            messages=coerce_messages(m.model_dump() for m in body.messages),
            draft=body.draft,
            keep_prefix_tokens=body.keep_prefix_tokens,
            max_new_tokens=body.max_new_tokens,
        )
        prompt = aligner.prompt(request)
    except (DiffPOError, ValueError) as exc:
        # Bad roles, an empty draft, an unknown template: the caller's input, so 422.
        raise validation_error(_message(exc)) from exc
    state.check_max_new_tokens(body.max_new_tokens)
    state.check_lengths(len(prompt.ids), body.max_new_tokens)
    return _Prepared(aligner, request, prompt)


def _message(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        # A pydantic error wrapping our InputError: keep just its message.
        items = errors()
        if items:
            return str(items[0].get("msg", exc)).removeprefix("Value error, ")
    return str(exc)


def _align_job(prepared: _Prepared, stream: bool) -> Callable[[JobContext], AlignResult]:
    def run(ctx: JobContext) -> AlignResult:
        ctx.check()
        if not stream:
            result: AlignResult = prepared.aligner.align(
                prepared.request, on_token=lambda _: ctx.check(), check=ctx.check
            )
            return result
        # Kept and generated tokens decode as one text, as the official script does: a cut inside
        # a character must not leave a U+FFFD in the stream.
        decoder = prepared.aligner.answer_decoder(prepared.prompt)
        answer = AnswerStream(stop=prepared.prompt.stop)

        def emit(piece: str) -> None:
            out = answer.feed(piece)
            if out:
                ctx.emit(out)

        def on_token(token: int) -> None:
            ctx.check()
            emit(decoder.push(token))

        emit(decoder.stable())
        result = prepared.aligner.align(prepared.request, on_token=on_token, check=ctx.check)
        # Held-back whitespace and characters are in the final text: send the rest.
        if result.text.startswith(answer.text):
            rest = result.text[len(answer.text) :]
            if rest:
                ctx.emit(rest)
        else:  # pragma: no cover - decode(all) always extends decode(prefix) for the tokenizers we serve
            _log.warning("streamed pieces diverged from the final answer; the final result holds the exact text")
        return result

    return run


@router.post("/diffpo/align")
async def align(request: Request, body: AlignBody) -> Response:
    """Align ``draft`` for ``messages``; SSE ``{"text": piece}`` events then ``{"text": "", "result": {...}}``."""
    state = get_state(request)
    prepared = await asyncio.to_thread(_prepare, state, body)
    job = state.submit(_align_job(prepared, body.stream))
    if body.stream:
        return StreamingResponse(
            _events(state, job), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )
    result = await state.wait(job, request)
    _record(state, result, job)
    return JSONResponse(align_payload(result), headers=_headers(result, job))


async def _events(state: ServerState, job: Job[AlignResult]) -> AsyncIterator[bytes]:
    try:
        async for piece in state.stream(job):
            yield sse_event({"text": piece})
        result = await state.finish(job)
    except ApiError as exc:
        yield sse_event(error_body(exc.message, exc.error_type))
        return
    _record(state, result, job)
    yield sse_event({"text": "", "result": align_payload(result)})


def _record(state: ServerState, result: AlignResult, job: Job[Any]) -> None:
    state.metrics.add("generated_tokens", result.generated_tokens)
    state.metrics.add("prompt_tokens", int(result.details.get("prompt_tokens", 0)))
    state.metrics.add("forward_passes", int(result.details.get("forward_passes", 0)))
    state.metrics.add("accepted_draft_tokens", int(result.details.get("accepted_draft_tokens", 0)))
    state.metrics.add("alignments", 1)
    state.metrics.observe("diffpo_queue_duration_seconds", job.queue_time)
    state.metrics.observe("diffpo_inference_duration_seconds", job.run_time)


def _headers(result: AlignResult, job: Job[Any]) -> dict[str, str]:
    return {
        "x-queue-time": str(int(job.queue_time * 1000)),
        "x-inference-time": str(int(job.run_time * 1000)),
        "x-prompt-tokens": str(result.details.get("prompt_tokens", 0)),
        "x-generated-tokens": str(result.generated_tokens),
    }
