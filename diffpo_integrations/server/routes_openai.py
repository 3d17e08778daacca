"""OpenAI-shaped routes: ``/v1/chat/completions`` (TGI's Messages API), ``/v1/completions`` (as vLLM), ``/v1/models``.

Decoding is always greedy: ``temperature`` and ``top_p`` are accepted and ignored, so OpenAI
clients (``langchain-openai``'s ``ChatOpenAI``) work unchanged and answers are deterministic.
Stop sequences are cut from the text, as OpenAI and vLLM do (TGI's own routes keep them).
Tool calls, ``n > 1`` and structured output are refused with a TGI-shaped 422.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from diffpo_integrations import __version__
from diffpo_integrations.server.errors import ApiError, error_body, validation_error
from diffpo_integrations.server.generation import GenerationResult, GenerationSpec
from diffpo_integrations.server.routes_tgi import sse_event
from diffpo_integrations.server.schemas import ChatBody, CompletionBody
from diffpo_integrations.server.state import ServerState, get_state, new_timer
from diffpo_integrations.server.stops import StopTrimmer
from diffpo_integrations.server.worker import Job

__all__ = ["StopTrimmer", "router"]

router = APIRouter()

MAX_CLIENT_BATCH_SIZE = 4
"""Prompts one ``/v1/completions`` call may carry (each is generated in turn)."""
_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


def _refuse_unsupported(body: ChatBody | CompletionBody) -> None:
    if body.n not in (None, 1):
        raise validation_error("`n` != 1 is not supported by the embedded server")
    if isinstance(body, ChatBody):
        if body.tools:
            raise validation_error(
                "tool calls are not supported by the embedded server: send the request without `tools`"
            )
        if body.response_format is not None and dict(body.response_format or {}).get("type", "text") != "text":
            raise validation_error("`response_format` is not supported by the embedded server")
        if body.logprobs:
            raise validation_error("`logprobs` is not supported on /v1/chat/completions by the embedded server")
    elif body.suffix is not None:
        raise validation_error("Suffix is not supported and can be achieved by preprocessing the prompt.")


def _spec(state: ServerState, ids: list[int], body: ChatBody | CompletionBody, stream: bool) -> GenerationSpec:
    limit = body.token_limit
    if limit is None and isinstance(body, CompletionBody):
        # OpenAI's and vLLM's default for a completion (16), within the room the prompt leaves.
        limit = max(1, min(state.config.default_completion_tokens, state.max_total_tokens - len(ids)))
    max_new_tokens = state.check_lengths(len(ids), limit)
    return GenerationSpec(
        input_ids=ids,
        max_new_tokens=max_new_tokens,
        stop_sequences=list(body.stop),
        method=state.config.method,
        stream=stream,
    )


def _check_common(state: ServerState, body: ChatBody | CompletionBody) -> None:
    _refuse_unsupported(body)
    state.check_max_new_tokens(body.token_limit)
    state.check_stops(body.stop)


def _trimmed(result: GenerationResult, stops: Sequence[str]) -> str:
    trimmer = StopTrimmer(stops)
    text = trimmer.feed("".join("" if t.special else t.text for t in result.tokens))
    return text + trimmer.flush()


async def _text(result: GenerationResult, stops: Sequence[str]) -> str:
    """The answer text cut at its first stop, computed off the event loop (stops may be long)."""
    return await asyncio.to_thread(_trimmed, result, stops)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@router.get("/v1/models")
async def models(request: Request) -> Response:
    """The one served model, OpenAI-shaped."""
    state = get_state(request)
    data = [{"id": state.model_id, "object": "model", "created": int(state.started_at), "owned_by": "diffpo"}]
    return JSONResponse({"object": "list", "data": data})


@router.post("/v1/chat/completions")
async def chat_completions(request: Request, body: ChatBody) -> Response:
    """OpenAI chat completion over the model's chat template (greedy), streamed or whole."""
    state = get_state(request)
    timer = new_timer(state)
    _check_common(state, body)
    messages = [{"role": m.role, "content": m.text()} for m in body.messages]
    try:
        prompt = state.runtime.chat_prompt(messages)
    except Exception as exc:
        # A template that rejects the conversation (roles out of order) is the caller's input to fix.
        raise validation_error(f"the chat template rejected the messages: {exc}") from exc
    # The template already writes any BOS: add no special tokens (TGI's Messages API does the same).
    ids = await state.encode(prompt, add_special_tokens=False)
    timer.prompt_tokens, timer.characters = len(ids), len(prompt)
    spec = _spec(state, ids, body, body.stream)
    timer.validated_now()
    job = state.submit_generation(spec)
    ident = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _chat_events(state, job, body, ident, created, include_usage, len(ids)), media_type="text/event-stream"
        )
    result = await state.wait(job, request)
    state.record(result, job)
    message = {"role": "assistant", "content": await _text(result, body.stop)}
    payload = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": state.model_id,
        "system_fingerprint": f"{__version__}-diffpo",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": _FINISH[result.finish_reason]}],
        "usage": _usage(len(ids), len(result.tokens)),
    }
    return JSONResponse(payload, headers=timer.headers(job, len(result.tokens)))


async def _chat_events(
    state: ServerState,
    job: Job[GenerationResult],
    body: ChatBody,
    ident: str,
    created: int,
    include_usage: bool,
    prompt_tokens: int,
) -> AsyncIterator[bytes]:
    base = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": state.model_id,
        "system_fingerprint": f"{__version__}-diffpo",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse_event({**base, "choices": [choice]})

    trimmer = await asyncio.to_thread(StopTrimmer, body.stop)
    yield chunk({"role": "assistant", "content": ""})
    try:
        async for token in state.stream(job):
            piece = trimmer.feed("" if token.special else token.text)
            if piece:
                yield chunk({"content": piece})
        result = await state.finish(job)
    except ApiError as exc:
        yield sse_event(error_body(exc.message, exc.error_type))
        return
    state.record(result, job)
    rest = trimmer.flush()
    if rest:
        yield chunk({"content": rest})
    yield chunk({}, _FINISH[result.finish_reason])
    if include_usage:
        yield sse_event({**base, "choices": [], "usage": _usage(prompt_tokens, len(result.tokens))})
    yield b"data: [DONE]\n\n"


async def _completion_ids(state: ServerState, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise validation_error("`prompt` cannot be empty")
        return await state.encode(prompt)
    vocab = len(state.runtime.tokenizer)
    bad = [t for t in prompt if not 0 <= t < vocab]
    if bad:
        raise validation_error(f"`prompt` has token ids outside the vocabulary (0..{vocab - 1}): {bad[:5]}")
    return list(prompt)


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionBody) -> Response:
    """vLLM-style text completion: ``prompt`` as text or token ids (a list of them for several prompts)."""
    state = get_state(request)
    _check_common(state, body)
    prompts: list[str | list[int]]
    if isinstance(body.prompt, str) or (body.prompt and isinstance(body.prompt[0], int)):
        prompts = [body.prompt]  # type: ignore[list-item]
    else:
        prompts = list(body.prompt)  # type: ignore[arg-type]
    if not prompts:
        raise validation_error("`prompt` cannot be empty")
    if len(prompts) > MAX_CLIENT_BATCH_SIZE:
        raise validation_error(f"Number of prompts exceeds the maximum allowed batch size of {MAX_CLIENT_BATCH_SIZE}")
    if body.stream and len(prompts) > 1:
        raise validation_error("streaming takes one prompt at a time")
    id_lists = [await _completion_ids(state, p) for p in prompts]
    specs = [_spec(state, ids, body, body.stream) for ids in id_lists]
    ident = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        job = state.submit_generation(specs[0])
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        echo = _echo(state, prompts[0]) if body.echo else ""
        events = _completion_events(state, job, body, ident, created, include_usage, echo, len(id_lists[0]))
        return StreamingResponse(events, media_type="text/event-stream")
    choices = []
    prompt_tokens = completion_tokens = 0
    for index, (prompt, spec) in enumerate(zip(prompts, specs, strict=True)):
        job = state.submit_generation(spec)
        result = await state.wait(job, request)
        state.record(result, job)
        text = (_echo(state, prompt) if body.echo else "") + await _text(result, body.stop)
        finish = _FINISH[result.finish_reason]
        choices.append(
            {
                "index": index,
                "text": text,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": result.stop_sequence,
            }
        )
        prompt_tokens += len(spec.input_ids)
        completion_tokens += len(result.tokens)
    payload = {
        "id": ident,
        "object": "text_completion",
        "created": created,
        "model": state.model_id,
        "choices": choices,
        "usage": _usage(prompt_tokens, completion_tokens),
    }
    return JSONResponse(payload)


def _echo(state: ServerState, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else state.runtime.decode(prompt, skip_special_tokens=False)


async def _completion_events(
    state: ServerState,
    job: Job[GenerationResult],
    body: CompletionBody,
    ident: str,
    created: int,
    include_usage: bool,
    echo: str,
    prompt_tokens: int,
) -> AsyncIterator[bytes]:
    base = {"id": ident, "object": "text_completion", "created": created, "model": state.model_id}

    def chunk(text: str, finish: str | None = None, stop_reason: str | None = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish, "stop_reason": stop_reason}
        return sse_event({**base, "choices": [choice]})

    trimmer = await asyncio.to_thread(StopTrimmer, body.stop)
    if echo:
        yield chunk(echo)
    try:
        async for token in state.stream(job):
            piece = trimmer.feed("" if token.special else token.text)
            if piece:
                yield chunk(piece)
        result = await state.finish(job)
    except ApiError as exc:
        yield sse_event(error_body(exc.message, exc.error_type))
        return
    state.record(result, job)
    yield chunk(trimmer.flush(), _FINISH[result.finish_reason], result.stop_sequence)
    if include_usage:
        yield sse_event({**base, "choices": [], "usage": _usage(prompt_tokens, len(result.tokens))})
    yield b"data: [DONE]\n\n"
