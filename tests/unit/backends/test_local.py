"""``LocalAligner``: errors inside the tree, and cancellation that frees the model within one forward pass."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from server_fakes import tiny_loaded

from diffpo_integrations.backends import AlignerPool
from diffpo_integrations.backends.local import LocalAligner
from diffpo_integrations.core import (
    AlignChunk,
    AlignRequest,
    AlignResult,
    ConfigurationError,
    DiffPOError,
    ModelNotFoundError,
)
from diffpo_integrations.core.aligner import BaseAligner

MESSAGES = [("user", "Name a prime.")]
DRAFT = "7 is a prime number and it is also odd."


def test_a_missing_model_path_raises_inside_the_error_tree() -> None:
    aligner = LocalAligner(model="/nonexistent")
    with pytest.raises(ModelNotFoundError, match=r"^model path /nonexistent does not exist$") as info:
        aligner.align(MESSAGES, DRAFT)
    assert isinstance(info.value, ConfigurationError)
    assert isinstance(info.value, DiffPOError)
    assert isinstance(info.value, FileNotFoundError)  # what callers caught before


def slow_local_aligner() -> tuple[LocalAligner, list[float]]:
    """A tiny random model whose forward passes take 20 ms each, and the times they ran at."""
    from diffpo_integrations.engine.loading import LoadedModel

    fake = tiny_loaded()
    passes: list[float] = []

    def pace(*_: Any) -> None:
        passes.append(time.monotonic())
        time.sleep(0.02)

    fake.model.register_forward_pre_hook(pace)
    loaded = LoadedModel(
        model=fake.model,
        tokenizer=fake.tokenizer,
        model_id="tiny",
        eos_token_ids=[-1],  # never produced: decoding runs to max_new_tokens
        device=fake.device,
        dtype=fake.dtype,
    )
    return LocalAligner(loaded, method="greedy", max_new_tokens=150), passes


@pytest.mark.parametrize("style", ["aalign", "astream"])
async def test_cancelling_stops_decoding_within_one_forward_pass(style: str) -> None:
    aligner, passes = slow_local_aligner()

    async def run() -> None:
        if style == "aalign":
            await aligner.aalign(MESSAGES, DRAFT)
        else:
            async for _ in aligner.astream(MESSAGES, DRAFT):
                pass

    task = asyncio.create_task(run())
    while len(passes) < 5:  # noqa: ASYNC110 - the passes run on the engine's thread
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    at_cancel = len(passes)
    await asyncio.sleep(0.5)  # 25 more passes would have run had decoding gone on
    assert len(passes) - at_cancel <= 1
    assert len(passes) < 150


class Healthy(BaseAligner):
    """An in-process member that answers at once."""

    endpoint = "healthy"

    def _align(self, request: AlignRequest) -> AlignResult:
        return AlignResult(text="healthy answer", draft=request.draft)

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        return self._align(request)

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        yield AlignChunk(text="healthy answer", result=self._align(request))

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        yield AlignChunk(text="healthy answer", result=self._align(request))


def test_a_pool_cuts_a_slow_local_member_at_its_share_of_the_deadline() -> None:
    slow, passes = slow_local_aligner()  # 150 passes of 20 ms: about 3 s
    pool = AlignerPool([slow, Healthy()], deadline=1.0, max_retries=0)
    pool._turn = itertools.repeat(0)  # type: ignore[assignment]  # the slow member first
    started = time.monotonic()
    result = pool.align(MESSAGES, DRAFT)
    assert (result.text, result.endpoint) == ("healthy answer", "healthy")
    assert time.monotonic() - started < 1.0 + 1.5
    assert pool.stats()["local"].failures == 1
    stopped = len(passes)
    time.sleep(0.3)
    assert len(passes) - stopped <= 1  # the slow member's decoding stopped


async def test_an_async_pool_cuts_a_slow_local_member_at_its_share_of_the_deadline() -> None:
    slow, passes = slow_local_aligner()
    pool = AlignerPool([slow, Healthy()], deadline=1.0, max_retries=0)
    pool._turn = itertools.repeat(0)  # type: ignore[assignment]
    started = time.monotonic()
    result = await pool.aalign(MESSAGES, DRAFT)
    assert (result.text, result.endpoint) == ("healthy answer", "healthy")
    assert time.monotonic() - started < 1.0 + 1.5
    assert pool.stats()["local"].failures == 1
    stopped = len(passes)
    await asyncio.sleep(0.3)
    assert len(passes) - stopped <= 1


async def test_astream_uses_one_worker_thread_not_one_per_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    aligner, _ = slow_local_aligner()
    started: list[str] = []
    handoffs: list[object] = []
    real_start = threading.Thread.start
    real_to_thread = asyncio.to_thread

    def counting_start(self: threading.Thread) -> None:
        started.append(self.name)
        real_start(self)

    async def counting_to_thread(func: Any, /, *args: Any, **kwargs: Any) -> Any:
        handoffs.append(func)
        return await real_to_thread(func, *args, **kwargs)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    monkeypatch.setattr(asyncio, "to_thread", counting_to_thread)
    chunks = [c async for c in aligner.astream(MESSAGES, DRAFT, max_new_tokens=12)]
    assert len(chunks) >= 3
    assert handoffs == []
    assert len(started) <= 2  # this call's worker, and the engine's decode thread
