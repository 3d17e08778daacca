"""TGI's routes: ``/generate``, ``/generate_stream``, ``POST /``, ``/tokenize``, ``/health``, ``/info``, ``/metrics``.

Wire shapes follow TGI's router (``router/src/server.rs``) so ``huggingface_hub.InferenceClient``
works unchanged. Sampling follows TGI's rules (see :mod:`.sampling`); token log-probabilities
(``details``, ``decoder_input_details``, ``top_n_tokens``) are the model's own, before any
sampling warper. Deviation: validation and overload errors of a stream are answered with their
HTTP status before the stream starts (TGI sends them as the first SSE event with status 200;
``huggingface_hub`` raises the same typed errors for both).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from diffpo_integrations import __version__
from diffpo_integrations.server.errors import ApiError, error_body, validation_error
from diffpo_integrations.server.generation import GeneratedToken, GenerationResult, GenerationSpec
from diffpo_integrations.server.sampling import MAX_BEST_OF, MAX_TOP_N_TOKENS, tgi_sampling
from diffpo_integrations.server.schemas import GenerateBody, GenerateParameters, TokenizeBody
from diffpo_integrations.server.state import RequestTimer, ServerState, get_state, new_timer
from diffpo_integrations.server.worker import Job
from diffpo_integrations.wire.sse import sse_event

__all__ = ["router", "sse_event"]

router = APIRouter()


def _refuse_unsupported(p: GenerateParameters) -> None:
    """Refuse what the embedded engine cannot honour, naming the option."""
    if p.grammar is not None:
        raise validation_error(
            "`grammar` is not supported by the embedded server: send the request without it", "grammar"
        )
    if p.watermark:
        raise validation_error("`watermark` is not supported by the embedded server: send watermark=false", "watermark")
    if p.adapter_id:
        raise validation_error("adapters (`adapter_id`) are not supported by the embedded server", "adapter_id")
    if p.top_n_tokens is not None and not 0 <= p.top_n_tokens <= MAX_TOP_N_TOKENS:
        raise validation_error(
            f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {p.top_n_tokens}", "top_n_tokens"
        )


def _check_best_of(p: GenerateParameters, sampling: bool, stream: bool) -> int:
    best_of = 1 if p.best_of is None else p.best_of
    if best_of != 1 and stream:  # TGI checks this first, on its stream routes
        raise validation_error("`best_of` != 1 is not supported when streaming tokens", "best_of")
    if not 0 < best_of <= MAX_BEST_OF:
        raise validation_error(f"`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {best_of}", "best_of")
    if best_of > 1 and not sampling:
        raise validation_error("you must use sampling when `best_of` is > 1", "best_of")
    if best_of > 1 and p.seed is not None:
        raise validation_error("`seed` must not be set when `best_of` > 1", "seed")
    return best_of


async def prepare_generation(
    state: ServerState, inputs: str, p: GenerateParameters, timer: RequestTimer, *, stream: bool
) -> GenerationSpec:
    """Validate a TGI request in TGI's order and tokenize it (special tokens added, as TGI always does)."""
    _refuse_unsupported(p)
    sampling = tgi_sampling(p)
    _check_best_of(p, sampling is not None and sampling.do_sample, stream)
    state.check_max_new_tokens(p.max_new_tokens)
    state.check_stops(p.stop)
    if not inputs:
        raise validation_error("`inputs` cannot be empty")
    if p.truncate is not None and not 0 < p.truncate <= state.max_input_tokens:
        raise validation_error(
            f"`truncate` must be strictly positive and less than {state.max_input_tokens}. Given: {p.truncate}"
        )
    if stream and p.decoder_input_details:
        raise validation_error("`decoder_input_details` == true is not supported when streaming tokens")
    ids = await state.encode(inputs, keep_last=p.truncate)
    max_new_tokens = state.check_lengths(len(ids), p.max_new_tokens)
    timer.prompt_tokens = len(ids)
    timer.characters = len(inputs)
    timer.validated_now()
    return GenerationSpec(
        input_ids=ids,
        max_new_tokens=max_new_tokens,
        stop_sequences=list(p.stop),
        method=state.config.method,
        stream=stream,
        token_logprobs=(state.config.stream_logprobs if stream else p.details or (p.best_of or 1) > 1),
        prefill_logprobs=p.decoder_input_details,
        top_n=p.top_n_tokens or 0,
        sampling=sampling,
    )


def _generated_text(state: ServerState, inputs: str, p: GenerateParameters, result: GenerationResult) -> str:
    text = state.runtime.decode(result.token_ids, skip_special_tokens=True)
    return inputs + text if p.return_full_text else text


def _details(result: GenerationResult, top_n: int) -> dict[str, Any]:
    out = {
        "finish_reason": result.finish_reason,
        "generated_tokens": len(result.tokens),
        "seed": result.seed,
        "prefill": [t.tgi() for t in result.prefill or []],
        "tokens": [t.tgi() for t in result.tokens],
    }
    if top_n:
        out["top_tokens"] = [[top.tgi() for top in t.top] for t in result.tokens]
    return out


def _score(result: GenerationResult) -> float:
    return sum(t.logprob or 0.0 for t in result.tokens)


async def _generate(request: Request, body: GenerateBody) -> tuple[dict[str, Any], dict[str, str]]:
    state = get_state(request)
    timer = new_timer(state)
    p = body.parameters
    spec = await prepare_generation(state, body.inputs, p, timer, stream=False)
    specs = [spec]
    if spec.sampling is not None and (p.best_of or 1) > 1:
        # best_of: independent draws sharing the batch, each with its own seed; TGI keeps the likeliest.
        specs += [
            dataclasses.replace(spec, sampling=dataclasses.replace(spec.sampling, seed=spec.sampling.seed + i))
            for i in range(1, p.best_of or 1)
        ]
    jobs = [state.submit_generation(s) for s in specs]
    results = await asyncio.gather(*(state.wait(job, request) for job in jobs))
    for job, result in zip(jobs, results, strict=True):
        state.record(result, job)
    best = max(range(len(results)), key=lambda i: _score(results[i]))
    result, job = results[best], jobs[best]
    # Off the event loop: detokenizing a long answer is CPU work.
    texts = await asyncio.to_thread(lambda: [_generated_text(state, body.inputs, p, r) for r in results])
    out: dict[str, Any] = {"generated_text": texts[best]}
    if p.details or p.decoder_input_details:
        out["details"] = _details(result, spec.top_n)
        if len(results) > 1:
            out["details"]["best_of_sequences"] = [
                {"generated_text": texts[i], **_details(other, spec.top_n)}
                for i, other in enumerate(results)
                if i != best
            ]
    return out, timer.headers(job, len(result.tokens))


@router.post("/generate")
async def generate(request: Request, body: GenerateBody) -> Response:
    """TGI ``/generate``: ``{generated_text, details?}``."""
    out, headers = await _generate(request, body)
    return JSONResponse(out, headers=headers)


@router.post("/generate_stream")
async def generate_stream(request: Request, body: GenerateBody) -> Response:
    """TGI ``/generate_stream``: SSE, one event per token; the last carries ``generated_text`` and ``details``."""
    return await _start_stream(request, body)


@router.post("/")
async def compat_generate(request: Request, body: GenerateBody) -> Response:
    """TGI ``POST /`` (what ``huggingface_hub`` calls): a one-element list, or SSE with ``"stream": true``."""
    if body.stream:
        return await _start_stream(request, body)
    out, headers = await _generate(request, body)
    return JSONResponse([out], headers=headers)


async def _start_stream(request: Request, body: GenerateBody) -> Response:
    state = get_state(request)
    timer = new_timer(state)
    spec = await prepare_generation(state, body.inputs, body.parameters, timer, stream=True)
    job = state.submit_generation(spec)
    headers = timer.headers()
    headers["X-Accel-Buffering"] = "no"
    return StreamingResponse(_stream_events(state, job, body, timer), media_type="text/event-stream", headers=headers)


async def _stream_events(
    state: ServerState, job: Job[GenerationResult], body: GenerateBody, timer: RequestTimer
) -> AsyncIterator[bytes]:
    p = body.parameters
    index = 0
    held: GeneratedToken | None = None
    try:
        async for token in state.stream(job):
            index += 1
            if token.last:
                # The final token goes out with the generated text, once the result is known.
                held = token
                continue
            yield sse_event(_stream_event(index, token, None, None))
        result = await state.finish(job)
    except ApiError as exc:
        yield sse_event(error_body(exc.message, exc.error_type))
        return
    state.record(result, job)
    text = await asyncio.to_thread(_generated_text, state, body.inputs, p, result)
    final = held or (result.tokens[-1] if result.tokens else None)
    details = None
    if p.details:
        details = {
            "finish_reason": result.finish_reason,
            "generated_tokens": len(result.tokens),
            "seed": result.seed,
            "input_length": timer.prompt_tokens,
        }
    yield sse_event(_stream_event(max(index, 1), final, text, details))


def _stream_event(
    index: int, token: GeneratedToken | None, text: str | None, details: dict[str, Any] | None
) -> dict[str, Any]:
    event: dict[str, Any] = {"index": index, "token": token.tgi() if token else None}
    if token is not None and token.top:
        event["top_tokens"] = [top.tgi() for top in token.top]
    event.update({"generated_text": text, "details": details})
    return event


@router.post("/tokenize")
async def tokenize(request: Request, body: TokenizeBody) -> Response:
    """TGI ``/tokenize``: ``[{id, text, start, stop}]`` with special tokens added (``start == stop == 0``)."""
    state = get_state(request)
    # Off the event loop: a long input takes seconds to tokenize, and /health must keep answering.
    state.check_characters(body.inputs, state.max_total_tokens)
    spans = await asyncio.to_thread(state.runtime.spans, body.inputs)
    return JSONResponse(
        [{"id": s.id, "text": body.inputs[s.start : s.stop], "start": s.start, "stop": s.stop} for s in spans]
    )


@router.get("/health")
async def health(request: Request) -> Response:
    """200 when the model is loaded and its worker runs; 503 otherwise."""
    state = getattr(request.app.state, "diffpo", None)
    if not isinstance(state, ServerState) or not state.worker.alive:
        return JSONResponse(error_body("unhealthy", "healthcheck"), status_code=503)
    return Response(status_code=200)


def info_payload(state: ServerState) -> dict[str, Any]:
    """TGI's ``/info`` fields plus the ``diffpo`` block."""
    template = state.runtime.template(state.config.template)
    return {
        "model_id": state.model_id,
        "model_sha": None,
        "model_dtype": state.runtime.dtype_name,
        "model_device_type": state.runtime.device_type,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": state.config.max_concurrent_requests,
        "max_batch_size": state.worker.concurrency,
        "max_best_of": MAX_BEST_OF,
        "max_stop_sequences": state.config.max_stop_sequences,
        "max_input_tokens": state.max_input_tokens,
        "max_total_tokens": state.max_total_tokens,
        "validation_workers": 1,
        "max_client_batch_size": 1,
        "router": "text-generation-router",
        "version": __version__,
        "sha": None,
        "docker_label": None,
        "diffpo": {
            "align_route": "/diffpo/align",
            "template": template.name,
            "end_of_turn": template.end_of_turn,
            "methods": ["auto", "greedy", "speculative", "jacobi"],
            "default_method": state.config.method,
            "max_waiting": state.config.max_waiting,
            "max_new_tokens_limit": state.max_new_tokens_limit,
        },
    }


@router.get("/info")
async def info(request: Request) -> Response:
    """TGI ``/info``."""
    return JSONResponse(info_payload(get_state(request)))


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text."""
    return PlainTextResponse(get_state(request).metrics.render(), media_type="text/plain; version=0.0.4")
