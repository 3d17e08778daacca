"""What every route shares: the model runtime, the worker, the limits, metrics, and TGI's validation rules."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from diffpo_integrations.core.errors import InputError
from diffpo_integrations.server.config import ServerConfig
from diffpo_integrations.server.errors import (
    ApiError,
    ClientGone,
    generation_error,
    incomplete_generation,
    overloaded,
    validation_error,
)
from diffpo_integrations.server.generation import GenerationResult, GenerationSpec, generation_job
from diffpo_integrations.server.metrics import Metrics
from diffpo_integrations.server.runtime import ModelRuntime
from diffpo_integrations.server.worker import Cancelled, Job, JobContext, ModelWorker, QueueFull

__all__ = ["RequestTimer", "ServerState", "get_state", "new_timer"]

T = TypeVar("T")

_DISCONNECT_POLL_S = 0.2


@dataclass
class RequestTimer:
    """Timings of one generation request, for TGI's ``x-*`` headers."""

    start: float = field(default_factory=time.perf_counter)
    validated: float | None = None
    prompt_tokens: int = 0
    characters: int = 0
    compute_type: str = "cpu"

    def validated_now(self) -> None:
        """Mark the end of validation."""
        self.validated = time.perf_counter()

    def headers(self, job: Job[Any] | None = None, generated: int | None = None) -> dict[str, str]:
        """TGI's headers: ``x-compute-time`` in seconds, the other times in milliseconds."""
        now = time.perf_counter()
        validated = self.validated or now
        out = {
            "x-compute-type": self.compute_type,
            "x-compute-characters": str(self.characters),
            "x-validation-time": _ms(validated - self.start),
            "x-prompt-tokens": str(self.prompt_tokens),
        }
        if job is not None and generated is not None:
            inference = job.run_time
            out.update(
                {
                    "x-compute-time": f"{now - self.start:.6f}",
                    "x-total-time": _ms(now - self.start),
                    "x-queue-time": _ms(job.queue_time),
                    "x-inference-time": _ms(inference),
                    "x-time-per-token": _ms(inference / generated if generated else 0.0),
                    "x-generated-tokens": str(generated),
                }
            )
        return out


def _ms(seconds: float) -> str:
    return str(int(seconds * 1000))


class ServerState:
    """The model, its worker and the limits the routes validate against.

    Args:
        config: server settings.
        runtime: the loaded model.
    """

    def __init__(self, config: ServerConfig, runtime: ModelRuntime) -> None:
        self.config = config
        self.runtime = runtime
        # An unknown --template fails the start, listing the built-ins, instead of the first request.
        runtime.template(config.template)
        self.max_input_tokens, self.max_total_tokens, self.max_new_tokens_limit = config.resolved_limits(
            runtime.max_positions
        )
        self.scheduler = _scheduler(config, runtime)
        """Batches concurrent generations; ``None`` when batching is off or the model cannot be batched."""
        # Never more generations at once than --max-concurrent-requests, however large the batch.
        self.worker = ModelWorker(
            config.max_concurrent_requests + config.max_waiting,
            concurrency=self.scheduler.max_sessions if self.scheduler is not None else 1,
            job_context=self._job_context,
        )
        self.model_id = config.model_id or runtime.model_id
        self.started_at = time.time()
        self.aligner: Any = None
        """The engine's aligner for ``/diffpo/align``, built on first use."""
        self.metrics = Metrics(
            gauges={
                "tgi_queue_size": ("Requests waiting for the model (TGI name).", lambda: self.worker.waiting),
                "diffpo_queue_size": ("Requests waiting for the model.", lambda: self.worker.waiting),
                "diffpo_running_requests": (
                    "Requests generating now.",
                    lambda: self.worker.running,
                ),
                "diffpo_admitted_requests": ("Requests admitted (running plus waiting).", lambda: self.worker.admitted),
                "diffpo_batched_passes_total": (
                    "Forward passes shared by the batched generations.",
                    lambda: self.scheduler.passes if self.scheduler is not None else 0,
                ),
                "diffpo_largest_batch": (
                    "Most generations that shared one forward pass.",
                    lambda: self.scheduler.largest_batch if self.scheduler is not None else 0,
                ),
                "diffpo_cancelled_requests_total": (
                    "Generations stopped early because their client left or the server stopped.",
                    lambda: self.worker.cancelled,
                ),
            }
        )

    def _job_context(self) -> AbstractContextManager[None]:
        from diffpo_integrations.engine.batching import use_scheduler

        return use_scheduler(self.scheduler)

    # -- validation (TGI's rules and messages) ---------------------------------------------------

    def check_max_new_tokens(self, max_new_tokens: int | None) -> None:
        """TGI's checks on ``max_new_tokens`` alone."""
        if max_new_tokens is not None and max_new_tokens <= 0:
            raise validation_error("`max_new_tokens` must be strictly positive")
        if max_new_tokens is not None and max_new_tokens > self.max_new_tokens_limit:
            raise validation_error(f"`max_new_tokens` must be <= {self.max_new_tokens_limit}. Given: {max_new_tokens}")

    def check_stops(self, stops: list[str]) -> None:
        """TGI's stop-sequence count limit."""
        if len(stops) > self.config.max_stop_sequences:
            raise validation_error(
                f"`stop` supports up to {self.config.max_stop_sequences} stop sequences. Given: {len(stops)}"
            )

    def check_lengths(self, input_length: int, max_new_tokens: int | None) -> int:
        """Check the input length and the total; return the resolved ``max_new_tokens``."""
        if input_length == 0:
            raise validation_error("`inputs` cannot be empty")
        if input_length > self.max_input_tokens:
            raise validation_error(
                f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {input_length}"
            )
        if max_new_tokens is None:
            room = self.max_total_tokens - input_length
            max_new_tokens = max(1, min(room, self.config.default_max_new_tokens, self.max_new_tokens_limit))
        if input_length + max_new_tokens > self.max_total_tokens:
            raise validation_error(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
            )
        return max_new_tokens

    def check_characters(self, text: str, max_tokens: int | None = None) -> None:
        """Refuse, without tokenizing it, a text that must have more than ``max_tokens`` tokens.

        A token covers at most ``runtime.max_token_chars`` characters, so this never refuses a text
        that would fit; it keeps a huge input from costing a tokenizer pass (CPU and memory).
        """
        limit = self.max_input_tokens if max_tokens is None else max_tokens
        at_least = -(-len(text) // self.runtime.max_token_chars)
        if at_least > limit:
            raise validation_error(f"`inputs` must have less than {limit} tokens. Given: at least {at_least}")

    async def encode(self, text: str, *, add_special_tokens: bool = True, keep_last: int | None = None) -> list[int]:
        """Tokenize off the event loop, after the length check that needs no tokenizer.

        Args:
            text: the input.
            add_special_tokens: as the tokenizer takes it.
            keep_last: TGI's ``truncate``: only the last ``keep_last`` tokens are wanted, so only
                the text they can cover (plus a margin for the tokenizer's context) is tokenized.
        """
        if keep_last is None:
            self.check_characters(text)
        else:
            # The margin leaves the kept tokens as a whole-text tokenization gives them: a
            # pre-tokenizer's context reaches a few tokens at most.
            text = text[-(keep_last + 32) * self.runtime.max_token_chars :]
        ids = await asyncio.to_thread(self.runtime.encode, text, add_special_tokens=add_special_tokens)
        return ids if keep_last is None else ids[-keep_last:]

    # -- running jobs ---------------------------------------------------------------------------

    def submit(self, fn: Callable[[JobContext], T]) -> Job[T]:
        """Admit a job, or answer 429."""
        try:
            return self.worker.submit(fn)
        except QueueFull:
            raise overloaded(self.config.retry_after_s) from None

    def submit_generation(self, spec: GenerationSpec) -> Job[GenerationResult]:
        """Admit one generation."""
        return self.submit(generation_job(self.runtime, spec))

    async def wait(self, job: Job[T], request: Request | None = None) -> T:
        """The job's result; cancels it if the client disconnects first; maps failures to TGI errors.

        Raises:
            ClientGone: the client left (the job was cancelled).
            ApiError: 424 when the model failed.
        """
        waiter = asyncio.ensure_future(job.result())
        try:
            while True:
                done, _ = await asyncio.wait({waiter}, timeout=_DISCONNECT_POLL_S)
                if done:
                    break
                if request is not None and await request.is_disconnected():
                    raise ClientGone
        except BaseException:
            job.cancel()
            waiter.cancel()
            raise
        return await self.finish(job)

    async def stream(self, job: Job[T]) -> AsyncIterator[Any]:
        """Yield the job's events; the caller awaits :meth:`finish` afterwards. Cancels the job if abandoned."""
        try:
            async for event in job.events():
                yield event
        except BaseException:
            job.cancel()
            raise

    async def finish(self, job: Job[T]) -> T:
        """The job's result, with failures mapped: 500 ``incomplete_generation`` if cancelled, 424 if the model failed."""
        try:
            return await job.result()
        except Cancelled:
            # Only a stopping server cancels a job whose client still waits (a client that left is
            # handled before this point): tell it the generation is incomplete, as TGI does.
            raise incomplete_generation() from None
        except ApiError:
            raise
        except InputError as exc:
            # The engine refused the input (a prompt over the model's context): the caller's to fix.
            raise validation_error(str(exc)) from exc
        except Exception as exc:
            self.metrics.add("generation_errors", 1)
            raise generation_error(exc) from exc

    def record(self, result: GenerationResult, job: Job[Any]) -> None:
        """Count a finished generation in the metrics."""
        self.metrics.add("generated_tokens", len(result.tokens))
        self.metrics.add("prompt_tokens", result.prefill_tokens)
        self.metrics.add("forward_passes", result.forward_passes)
        self.metrics.add("accepted_draft_tokens", result.accepted_draft_tokens)
        self.metrics.observe("diffpo_queue_duration_seconds", job.queue_time)
        self.metrics.observe("diffpo_inference_duration_seconds", job.run_time)


def _scheduler(config: ServerConfig, runtime: ModelRuntime) -> Any:
    batch = min(config.max_batch_size, config.max_concurrent_requests)
    if batch <= 1:
        return None
    from diffpo_integrations.engine.batching import BatchScheduler, supports_batching

    if not supports_batching(runtime.model):
        return None
    return BatchScheduler(runtime.model, max_sessions=batch)


def new_timer(state: ServerState) -> RequestTimer:
    """A :class:`RequestTimer` started now, reporting the model's device type."""
    return RequestTimer(compute_type=state.runtime.device_type)


def get_state(request: Request) -> ServerState:
    """The :class:`ServerState` of the app serving ``request``.

    Raises:
        ApiError: 503 while the model is not loaded.
    """
    state = getattr(request.app.state, "diffpo", None)
    if not isinstance(state, ServerState):
        raise ApiError(503, "unhealthy", "the model is not loaded yet")
    return state
