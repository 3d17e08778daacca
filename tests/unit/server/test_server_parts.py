"""The server's parts on their own: stop handling, token texts, the worker queue, config limits, metrics, exports."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_fakes import TinyLoaded

import diffpo_integrations.server as server_pkg
from diffpo_integrations.server.config import ServerConfig
from diffpo_integrations.server.generation import find_stop
from diffpo_integrations.server.metrics import Metrics
from diffpo_integrations.server.routes_openai import StopTrimmer
from diffpo_integrations.server.runtime import TokenTexts
from diffpo_integrations.server.worker import Cancelled, JobContext, ModelWorker, QueueFull


def test_find_stop_picks_the_stop_that_ends_first_in_the_new_text() -> None:
    assert find_stop("abc STOP", 4, ["STOP"]) == "STOP"
    assert find_stop("abc STOP", 8, ["STOP"]) is None  # already seen before: not found twice
    assert find_stop("x\nUser:", 1, ["User:", "\n"]) == "\n"
    assert find_stop("abc", 0, [""]) is None


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="ab c\n", max_size=40),
    stops=st.lists(st.text(alphabet="ab c\n", min_size=1, max_size=4), max_size=3),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8),
)
def test_stop_trimmer_streams_exactly_what_a_one_shot_cut_gives(text: str, stops: list[str], cuts: list[int]) -> None:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[: min(hits)] if hits else text
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    trimmer = StopTrimmer(stops)
    streamed = "".join(trimmer.feed(text[a:b]) for a, b in itertools.pairwise(bounds)) + trimmer.flush()
    assert streamed == expected


@settings(max_examples=60, deadline=None)
@given(ids=st.lists(st.integers(min_value=3, max_value=399), min_size=1, max_size=30))
def test_token_texts_join_to_the_decoded_text(tiny: TinyLoaded, ids: list[int]) -> None:
    texts = TokenTexts(tiny.tokenizer, [1, 2])
    pieces = [texts.step(t, final=i == len(ids) - 1) for i, t in enumerate(ids)]
    assert "".join(pieces) == tiny.tokenizer.decode(ids, skip_special_tokens=False)


async def test_worker_runs_jobs_in_order_and_streams_events() -> None:
    worker = ModelWorker(capacity=3)
    worker.start()

    def job(name: str) -> Any:
        def run(ctx: JobContext) -> str:
            for i in range(3):
                ctx.emit(f"{name}{i}")
            return name

        return run

    jobs = [worker.submit(job(n)) for n in "ab"]
    events = []
    for j in jobs:
        events.append([e async for e in j.events()])
    assert events == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]
    assert [await j.result() for j in jobs] == ["a", "b"]
    await worker.stop()
    assert not worker.alive


async def test_worker_refuses_past_capacity_and_cancels() -> None:
    worker = ModelWorker(capacity=1)
    worker.start()
    release = threading.Event()
    checked = threading.Event()

    def blocking(ctx: JobContext) -> int:
        checked.set()
        release.wait(10)
        ctx.check()
        return 1

    first = worker.submit(blocking)
    with pytest.raises(QueueFull):
        worker.submit(blocking)
    await asyncio.to_thread(checked.wait, 10)
    first.cancel()
    release.set()
    with pytest.raises(Cancelled):
        await first.result()
    assert worker.cancelled == 1
    assert worker.admitted == 0
    assert await worker.submit(lambda ctx: 2).result() == 2
    await worker.stop()
    with pytest.raises(QueueFull):
        worker.submit(lambda ctx: 3)


async def test_worker_passes_job_errors_back() -> None:
    worker = ModelWorker(capacity=2)
    worker.start()

    def broken(ctx: JobContext) -> None:
        msg = "boom"
        raise ValueError(msg)

    with pytest.raises(ValueError, match="boom"):
        await worker.submit(broken).result()
    await worker.stop()


def test_config_limits() -> None:
    assert ServerConfig().resolved_limits(8192) == (4095, 4096, 4095)
    assert ServerConfig().resolved_limits(2048) == (2047, 2048, 2047)
    assert ServerConfig(max_input_tokens=5000).resolved_limits(8192) == (5000, 5001, 5000)
    assert ServerConfig(max_total_tokens=100, max_new_tokens_limit=10).resolved_limits(None) == (99, 100, 10)
    with pytest.raises(ValueError, match=r"max_input_tokens \(10\) must be < max_total_tokens \(10\)"):
        ServerConfig(max_input_tokens=10, max_total_tokens=10)
    with pytest.raises(ValueError, match="extra"):
        ServerConfig(unknown=1)  # type: ignore[call-arg]
    assert ServerConfig().host == "127.0.0.1"


def test_metrics_render_prometheus_text() -> None:
    metrics = Metrics(gauges={"q_size": ("help", lambda: 3)})
    metrics.request_done("/generate", 200, 0.5)
    metrics.request_done("/secret/path", 404, 0.1)
    metrics.add("generated_tokens", 7)
    text = metrics.render()
    assert 'diffpo_requests_total{route="/generate",status="200"} 1' in text
    assert 'diffpo_requests_total{route="other",status="404"} 1' in text
    assert "diffpo_generated_tokens_total 7" in text
    assert "# TYPE q_size gauge\nq_size 3" in text
    assert 'diffpo_request_duration_seconds_sum{route="/generate"} 0.5' in text


def test_public_exports() -> None:
    assert sorted(server_pkg.__all__) == ["DecodeMethod", "ServerConfig", "create_app", "run_server", "serve_in_thread"]
    for name in server_pkg.__all__:
        assert getattr(server_pkg, name) is not None


async def test_stopping_the_server_makes_a_running_generation_incomplete(tiny: TinyLoaded) -> None:
    from server_fakes import Gate

    from diffpo_integrations.server.errors import ApiError
    from diffpo_integrations.server.generation import GenerationSpec
    from diffpo_integrations.server.runtime import ModelRuntime
    from diffpo_integrations.server.state import ServerState

    gate = Gate()
    state = ServerState(ServerConfig(api_key=None), ModelRuntime(tiny, decode_fn=gate))
    state.worker.start()
    job = state.submit_generation(GenerationSpec(input_ids=[5, 6, 7], max_new_tokens=50))
    await asyncio.to_thread(gate.entered.wait, 10)
    stopping = asyncio.create_task(state.worker.stop())
    await asyncio.sleep(0.05)
    gate.release.set()
    await stopping
    with pytest.raises(ApiError) as info:
        await state.finish(job)
    assert (info.value.status, info.value.error_type) == (500, "incomplete_generation")
    assert state.worker.cancelled == 1
