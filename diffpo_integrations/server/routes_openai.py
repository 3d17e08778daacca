"""OpenAI-shaped routes: ``/v1/chat/completions`` (TGI's Messages API), ``/v1/completions`` (as vLLM), ``/v1/models``.

Decoding is greedy unless the request samples (``temperature`` above 0, ``top_p`` below 1; see
:mod:`.sampling`), so clients that send nothing get deterministic answers. Log-probabilities
(``logprobs``, ``top_logprobs``) are the model's own. Stop sequences are cut from the text, as
OpenAI and vLLM do (TGI's own routes keep them). Every chat stream delta carries ``role``, as
TGI's Messages API sends it (its own clients read it from every chunk). What the model cannot do
(tools, structured output, images, ``n > 1``, ``logit_bias``, ``best_of > 1``, unknown roles)
is refused with a 422 in OpenAI's error shape naming the parameter.
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
from diffpo_integrations.server.errors import ApiError, validation_error
from diffpo_integrations.server.generation import GeneratedToken, GenerationResult, GenerationSpec
from diffpo_integrations.server.sampling import MAX_TOP_N_TOKENS, openai_sampling
from diffpo_integrations.server.state import ServerState, get_state, new_timer
from diffpo_integrations.server.stops import StopTrimmer
from diffpo_integrations.server.worker import Job
from diffpo_integrations.wire.openai import ChatBody, CompletionBody, openai_top_logprob
from diffpo_integrations.wire.sse import sse_event

__all__ = ["TGI_CLIENT_MODEL", "StopTrimmer", "router"]

router = APIRouter()

MAX_CLIENT_BATCH_SIZE = 4
"""Prompts one ``/v1/completions`` call may carry (each is generated in turn)."""
_FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}
TGI_CLIENT_MODEL = "tgi"
"""The model name TGI's Python clients (``text-generation``, LlamaIndex's ``TextGenerationInference``)
send; they parse every ``data:`` line as JSON, so their chat streams end without OpenAI's ``[DONE]``
(the ``openai`` SDK and ``huggingface_hub`` end at the end of the stream either way)."""
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
"""Roles the chat template takes (OpenAI's ``developer`` is its ``system``)."""


def _refuse_unsupported(body: ChatBody | CompletionBody) -> None:
    if body.n not in (None, 1):
        raise validation_error("`n` != 1 is not supported by the embedded server", "n")
    if body.logit_bias:
        raise validation_error("`logit_bias` is not supported by the embedded server", "logit_bias")
    if isinstance(body, ChatBody):
        _refuse_chat(body)
    else:
        if body.suffix is not None:
            raise validation_error("Suffix is not supported and can be achieved by preprocessing the prompt.", "suffix")
        if body.best_of not in (None, 1):
            raise validation_error("`best_of` != 1 is not supported by the embedded server", "best_of")
        if body.logprobs is not None and not 0 <= body.logprobs <= MAX_TOP_N_TOKENS:
            raise validation_error(f"`logprobs` must be >= 0 and <= {MAX_TOP_N_TOKENS}", "logprobs")


def _refuse_chat(body: ChatBody) -> None:
    if body.tools or body.functions:
        name = "tools" if body.tools else "functions"
        raise validation_error(
            f"tool calls are not supported by the embedded server: send the request without `{name}`", name
        )
    if body.tool_choice not in (None, "none"):
        raise validation_error(
            "`tool_choice` is not supported by the embedded server: the model has no tools", "tool_choice"
        )
    if body.response_format is not None and dict(body.response_format or {}).get("type", "text") != "text":
        raise validation_error("`response_format` is not supported by the embedded server", "response_format")
    if body.top_logprobs is not None:
        if not body.logprobs:
            raise validation_error("`top_logprobs` needs `logprobs: true`", "top_logprobs")
        if not 0 <= body.top_logprobs <= MAX_TOP_N_TOKENS:
            raise validation_error(f"`top_logprobs` must be >= 0 and <= {MAX_TOP_N_TOKENS}", "top_logprobs")
    for i, message in enumerate(body.messages):
        if message.role not in _ROLES:
            raise validation_error(
                f"message {i} has role {message.role!r}; use 'system', 'developer', 'user' or 'assistant' "
                "(the embedded server has no tools)",
                f"messages.{i}.role",
            )
        if message.tool_calls:
            raise validation_error(
                f"message {i} carries `tool_calls`; the model has no tools", f"messages.{i}.tool_calls"
            )
        for j, kind in message.non_text_parts():
            raise validation_error(
                f"message {i} has a content part of type {kind!r}; the model reads text only: send text parts",
                f"messages.{i}.content.{j}.type",
            )


def _spec(
    state: ServerState, ids: list[int], body: ChatBody | CompletionBody, stream: bool, top_n: int | None
) -> GenerationSpec:
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
        token_logprobs=top_n is not None,
        top_n=top_n or 0,
        sampling=openai_sampling(body),
    )


def _chat_top_n(body: ChatBody) -> int | None:
    """``None`` without log-probs, else how many alternatives each token lists."""
    return (body.top_logprobs or 0) if body.logprobs else None


def _chat_logprob(token: GeneratedToken) -> dict[str, Any]:
    entry = openai_top_logprob(token.text, token.logprob or 0.0)
    entry["top_logprobs"] = [openai_top_logprob(t.text, t.logprob or 0.0) for t in token.top]
    return entry


def _visible(tokens: Sequence[GeneratedToken], text: str) -> list[GeneratedToken]:
    """The non-special tokens that start inside ``text`` (the answer once stop sequences are cut)."""
    out: list[GeneratedToken] = []
    offset = 0
    for token in tokens:
        if token.special:
            continue
        if offset >= len(text) and token.text:
            break
        out.append(token)
        offset += len(token.text)
    return out


def _completion_logprobs(tokens: Sequence[GeneratedToken], offset: int) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object; ``offset`` is where the first token starts in the text."""
    text_offset = []
    for token in tokens:
        text_offset.append(offset)
        offset += len(token.text)
    return {
        "tokens": [t.text for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [{top.text: top.logprob for top in t.top} for t in tokens],
        "text_offset": text_offset,
    }


def _check_common(state: ServerState, body: ChatBody | CompletionBody) -> None:
    _refuse_unsupported(body)
    limit = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    try:
        state.check_max_new_tokens(body.token_limit)
    except ApiError as exc:
        # The shared checks speak TGI's words; OpenAI's callers also get their parameter's own name.
        exc.param = limit
        raise
    try:
        state.check_stops(body.stop)
    except ApiError as exc:
        exc.param = "stop"
        raise


def _error_event(exc: ApiError) -> bytes:
    # The openai SDK raises an APIError for an event carrying an ``error`` object.
    return sse_event(exc.payload(openai=True))


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
    messages = [{"role": _ROLES[m.role], "content": m.text()} for m in body.messages]
    try:
        prompt = state.runtime.chat_prompt(messages)
    except Exception as exc:
        # A template that rejects the conversation (roles out of order) is the caller's input to fix.
        raise validation_error(f"the chat template rejected the messages: {exc}", "messages") from exc
    # The template already writes any BOS: add no special tokens (TGI's Messages API does the same).
    ids = await state.encode(prompt, add_special_tokens=False)
    timer.prompt_tokens, timer.characters = len(ids), len(prompt)
    spec = _spec(state, ids, body, body.stream, _chat_top_n(body))
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
    text = await _text(result, body.stop)
    message = {"role": "assistant", "content": text}
    logprobs = None
    if body.logprobs:
        logprobs = {"content": [_chat_logprob(t) for t in _visible(result.tokens, text)], "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": logprobs, "finish_reason": _FINISH[result.finish_reason]}
    payload = {
        "id": ident,
        "object": "chat.completion",
        "created": created,
        "model": state.model_id,
        "system_fingerprint": f"{__version__}-diffpo",
        "choices": [choice],
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

    def chunk(content: str | None, finish: str | None = None, tokens: Sequence[GeneratedToken] = ()) -> bytes:
        # TGI's Messages API sends ``role`` (and ``tool_calls``) in every delta; its clients require both.
        delta: dict[str, Any] = {"role": "assistant", "content": content, "tool_calls": None}
        logprobs = {"content": [_chat_logprob(t) for t in tokens], "refusal": None} if body.logprobs else None
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse_event({**base, "choices": [choice]})

    # Built off the event loop: its tables grow with the stop sequences' length.
    trimmer = await asyncio.to_thread(StopTrimmer, body.stop)
    held: list[GeneratedToken] = []
    yield chunk("")
    try:
        async for token in state.stream(job):
            if not token.special:
                held.append(token)
            piece = trimmer.feed("" if token.special else token.text)
            if piece:
                yield chunk(piece, tokens=held)
                held = []
        result = await state.finish(job)
    except ApiError as exc:
        yield _error_event(exc)
        return
    state.record(result, job)
    rest = trimmer.flush()
    if rest:
        yield chunk(rest, tokens=held)
    yield chunk(None, _FINISH[result.finish_reason])
    if include_usage:
        yield sse_event({**base, "choices": [], "usage": _usage(prompt_tokens, len(result.tokens))})
    if body.model != TGI_CLIENT_MODEL:
        yield b"data: [DONE]\n\n"


async def _completion_ids(state: ServerState, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise validation_error("`prompt` cannot be empty", "prompt")
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
    specs = [_spec(state, ids, body, body.stream, body.logprobs) for ids in id_lists]
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
        echo = _echo(state, prompt) if body.echo else ""
        answer = await _text(result, body.stop)
        logprobs = None
        if body.logprobs is not None:
            logprobs = _completion_logprobs(_visible(result.tokens, answer), len(echo))
        choice: dict[str, Any] = {
            "index": index,
            "text": echo + answer,
            "logprobs": logprobs,
            "finish_reason": _FINISH[result.finish_reason],
            "stop_reason": result.stop_sequence,
        }
        if body.return_token_ids:
            choice["prompt_token_ids"] = list(spec.input_ids)
            choice["token_ids"] = result.token_ids
        choices.append(choice)
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

    offset = len(echo)

    # Ids since the last event, special ones included: the events' ``token_ids`` join to the generation's.
    ids: list[int] = []

    def chunk(
        text: str, finish: str | None = None, stop_reason: str | None = None, tokens: Sequence[GeneratedToken] = ()
    ) -> bytes:
        nonlocal offset
        logprobs = _completion_logprobs(tokens, offset) if body.logprobs is not None else None
        offset += len(text)
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish, "stop_reason": stop_reason}
        if body.return_token_ids:
            choice["token_ids"] = ids.copy()
            ids.clear()
        return sse_event({**base, "choices": [choice]})

    trimmer = await asyncio.to_thread(StopTrimmer, body.stop)
    held: list[GeneratedToken] = []
    if echo:
        yield chunk(echo)
        offset = len(echo)
    try:
        async for token in state.stream(job):
            ids.append(token.id)
            if not token.special:
                held.append(token)
            piece = trimmer.feed("" if token.special else token.text)
            if piece:
                yield chunk(piece, tokens=held)
                held = []
        result = await state.finish(job)
    except ApiError as exc:
        yield _error_event(exc)
        return
    state.record(result, job)
    rest = trimmer.flush()
    yield chunk(rest, _FINISH[result.finish_reason], result.stop_sequence, held if rest else ())
    if include_usage:
        yield sse_event({**base, "choices": [], "usage": _usage(prompt_tokens, len(result.tokens))})
    yield b"data: [DONE]\n\n"
