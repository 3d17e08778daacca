"""``OpenAICompatAligner`` and ``AlignerPool`` against a real vLLM (CPU build) serving the float32 SmolLM2.

The reference is the official DiffPO Jacobi loop run in this process on the same folder: vLLM's
greedy continuation of the official fixed prompt must give the very same answer, token for token.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import MAX_NEW_TOKENS

from diffpo_integrations.backends import AlignerPool, OpenAICompatAligner
from diffpo_integrations.core.errors import AlignerTimeoutError, ContextLengthError
from diffpo_integrations.evaluation.engine_servers import VLLM_SERVED_NAME, EngineServer, EngineStartError


def _aligner(vllm: EngineServer, model_dir: Path, **options: Any) -> OpenAICompatAligner:
    options.setdefault("max_new_tokens", MAX_NEW_TOKENS)
    return OpenAICompatAligner(vllm.url, tokenizer=str(model_dir), **options)


def _metric(vllm: EngineServer, name: str, **labels: str) -> float:
    text = httpx2.get(f"{vllm.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _counters(vllm: EngineServer) -> tuple[float, float]:
    """Tokens vLLM has generated and requests it has finished (an aborted one is not counted), so far."""
    return _metric(vllm, "vllm:generation_tokens_total"), _metric(vllm, "vllm:request_success_total")


def _assert_stopped(vllm: EngineServer, before: tuple[float, float], timeout_s: float = 15.0) -> None:
    """vLLM runs nothing within ``timeout_s``, finished no request, and generated far fewer than the 400 asked."""
    start = time.monotonic()
    while (running := _metric(vllm, "vllm:num_requests_running")) > 0:
        assert time.monotonic() - start < timeout_s, f"vLLM still runs {running} request(s) after {timeout_s} s"
        time.sleep(0.2)
    generated, finished = _counters(vllm)
    time.sleep(1.0)  # nothing goes on in the background either
    assert _counters(vllm) == (generated, finished)
    assert finished == before[1]
    assert generated - before[0] < 100


def _same(result: Any, expected: Any) -> None:
    assert result.text == expected.text
    assert result.generated_tokens == expected.generated_tokens
    assert result.finish_reason == expected.finish_reason
    assert result.kept_prefix == expected.kept_prefix


@pytest.mark.smoke
def test_vllm_lists_the_folder_with_its_context(vllm: EngineServer, model_dir: Path) -> None:
    listing = httpx2.get(f"{vllm.url}/v1/models", timeout=10).json()
    assert [(m["id"], m["root"], m["max_model_len"]) for m in listing["data"]] == [
        (VLLM_SERVED_NAME, str(model_dir), 2048)
    ]


@pytest.mark.smoke
def test_aligns_held_out_drafts_like_the_official_reference(
    vllm: EngineServer, model_dir: Path, reference: Any, drafts: list[tuple[int, str, str]]
) -> None:
    aligner = _aligner(vllm, model_dir)
    for _, question, draft in drafts:
        messages = [{"role": "user", "content": question}]
        result = aligner.align(messages, draft)
        _same(result, reference.align(messages, draft))
        assert result.details["prompt_as"] == "token_ids"
    assert aligner.model == VLLM_SERVED_NAME  # found through /v1/models
    assert aligner.max_model_len == 2048


async def test_streamed_and_async_answers_match_the_reference(
    vllm: EngineServer, model_dir: Path, reference: Any, drafts: list[tuple[int, str, str]]
) -> None:
    aligner = _aligner(vllm, model_dir)
    _, question, draft = drafts[0]
    messages = [{"role": "user", "content": question}]
    expected = reference.align(messages, draft)
    chunks = list(aligner.stream(messages, draft))
    assert "".join(c.text for c in chunks) == expected.text
    assert chunks[-1].result is not None
    _same(chunks[-1].result, expected)
    assert len([c for c in chunks if c.text]) > 3  # it arrived in pieces
    _same(await aligner.aalign(messages, draft), expected)
    achunks = [c async for c in aligner.astream(messages, draft)]
    assert "".join(c.text for c in achunks) == expected.text
    assert achunks[-1].result is not None
    _same(achunks[-1].result, expected)


def _split_keep(tokenizer: Any, messages: list[dict[str, str]], draft: str) -> int:
    """The first ``keep_prefix_tokens`` whose kept draft tokens end inside a multi-byte character."""
    start = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    full = tokenizer(
        tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": draft}], tokenize=False)
    )
    for keep in range(1, 16):
        if tokenizer.decode(full["input_ids"][start : start + keep]).endswith("\ufffd"):
            return keep
    raise AssertionError("no cut inside a character: pick a draft with more multi-byte characters")


@pytest.mark.parametrize("use_token_ids", [True, False], ids=["token-ids", "text"])
def test_a_kept_prefix_cut_inside_a_character_matches_the_reference(
    vllm: EngineServer, model_dir: Path, reference: Any, use_token_ids: bool
) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "Say hello in Japanese, then in French."}]
    draft = "こんにちは世界、日本語で挨拶します。Bonjour le monde, café crème !"
    keep = _split_keep(AutoTokenizer.from_pretrained(str(model_dir)), messages, draft)
    aligner = _aligner(vllm, model_dir, keep_prefix_tokens=keep, use_token_ids=use_token_ids)
    expected = reference.align(messages, draft, keep_prefix_tokens=keep)
    result = aligner.align(messages, draft)
    _same(result, expected)
    assert result.details["prompt_as"] == ("token_ids" if use_token_ids else "text")
    assert "\ufffd" not in result.text
    chunks = list(aligner.stream(messages, draft))
    assert "".join(c.text for c in chunks) == expected.text
    assert chunks[-1].result is not None
    _same(chunks[-1].result, expected)


def _long_question(model_dir: Path, tokens: int) -> list[dict[str, str]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    words = " ".join(f"word{i}" for i in range(tokens))
    ids = tokenizer(words)["input_ids"][:tokens]
    return [{"role": "user", "content": tokenizer.decode(ids)}]


@pytest.mark.smoke
@pytest.mark.parametrize("model", [None, VLLM_SERVED_NAME], ids=["listed", "named"])
def test_a_prompt_longer_than_max_model_len_is_a_typed_error(
    vllm: EngineServer, model_dir: Path, model: str | None
) -> None:
    messages = _long_question(model_dir, 2100)
    aligner = _aligner(vllm, model_dir, model=model)
    with pytest.raises(ContextLengthError) as caught:
        aligner.align(messages, "A short draft.")
    message = str(caught.value)
    assert re.match(r"the prompt (alone )?is 21\d\d tokens and", message), message
    assert "--max-model-len" in message
    if model is not None:  # no listing read: vLLM's own 400 says it, and the advice follows
        assert "This model's maximum context length is 2048 tokens." in message


@pytest.mark.parametrize("model", [None, VLLM_SERVED_NAME], ids=["listed", "named"])
def test_a_budget_past_max_model_len_is_a_typed_error(vllm: EngineServer, model_dir: Path, model: str | None) -> None:
    messages = _long_question(model_dir, 1980)  # about 2014 tokens of prompt: 64 more do not fit
    aligner = _aligner(vllm, model_dir, model=model, max_new_tokens=64)
    with pytest.raises(ContextLengthError) as caught:
        aligner.align(messages, "A short draft.")
    message = str(caught.value)
    assert "max_new_tokens=64 asks for" in message
    if model is None:
        assert "serves a context of 2048 tokens: lower max_new_tokens to" in message
    else:  # vLLM lowered the budget itself and answered "length": the client tells
        assert "stopped the answer for length after" in message


def test_closing_a_stream_stops_the_work_in_vllm(
    vllm: EngineServer, model_dir: Path, drafts: list[tuple[int, str, str]]
) -> None:
    _, question, draft = drafts[1]
    aligner = _aligner(vllm, model_dir, max_new_tokens=400)
    before = _counters(vllm)
    stream = aligner.stream([{"role": "user", "content": question}], draft)
    pieces = [next(stream).text for _ in range(4)]  # the kept prefix, then three from vLLM
    assert all(pieces)
    stream.close()
    _assert_stopped(vllm, before)


async def test_cancelling_aalign_stops_the_work_in_vllm(
    vllm: EngineServer, model_dir: Path, drafts: list[tuple[int, str, str]]
) -> None:
    _, question, draft = drafts[1]
    aligner = _aligner(vllm, model_dir, max_new_tokens=400)
    before = _counters(vllm)
    task = asyncio.create_task(aligner.aalign([{"role": "user", "content": question}], draft))
    while _metric(vllm, "vllm:num_requests_running") < 1:  # noqa: ASYNC110 - polling another process
        await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    _assert_stopped(vllm, before)


def test_the_deadline_holds_and_vllm_drops_the_request(
    vllm: EngineServer, model_dir: Path, drafts: list[tuple[int, str, str]]
) -> None:
    _, question, draft = drafts[2]
    aligner = _aligner(vllm, model_dir, max_new_tokens=400, deadline=1.5)
    before = _counters(vllm)
    start = time.monotonic()
    with pytest.raises(AlignerTimeoutError, match=r"the deadline of 1.5 s ran out"):
        aligner.align([{"role": "user", "content": question}], draft)
    assert time.monotonic() - start < 2.5
    _assert_stopped(vllm, before)


@pytest.fixture
def second_vllm(gguf: Path) -> Any:
    """A second vLLM replica, started as docs/serving.md says, for one test (about 45 s and 4 GB)."""
    from conftest import docs_server

    try:
        manager = docs_server("vLLM", gguf)
        server = manager.__enter__()
    except EngineStartError as exc:
        pytest.fail(f"the second vLLM could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        manager.__exit__(None, None, None)


@pytest.mark.timeout(1200)  # a second vLLM start: about 45 s idle, several minutes on a busy 2-core CPU
async def test_a_pool_of_two_replicas_with_one_killed_mid_batch_gives_official_answers(
    vllm: EngineServer,
    second_vllm: EngineServer,
    model_dir: Path,
    reference: Any,
    drafts: list[tuple[int, str, str]],
) -> None:
    members = [_aligner(s, model_dir, max_retries=0, timeout=120) for s in (vllm, second_vllm)]
    pool = AlignerPool(members, failure_threshold=1, cooldown=600, max_retries=2, backoff=0.1)
    cases = [([{"role": "user", "content": q}], d) for _, q, d in drafts] * 2
    expected = [reference.align(m, d, max_new_tokens=64) for m, d in cases]
    batch = [asyncio.ensure_future(pool.aalign(m, d, max_new_tokens=64)) for m, d in cases]
    started = time.monotonic()
    while pool.stats()[second_vllm.url].outstanding == 0:
        assert time.monotonic() - started < 30, pool.stats()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # mid-generation: 64 tokens take seconds on this CPU
    assert second_vllm.process is not None
    os.killpg(second_vllm.process.pid, signal.SIGKILL)
    results = await asyncio.wait_for(asyncio.gather(*batch), 300)
    assert [r.text for r in results] == [e.text for e in expected]
    assert [r.generated_tokens for r in results] == [e.generated_tokens for e in expected]
    stats = pool.stats()
    assert stats[second_vllm.url].failures >= 1  # requests it had in flight failed, and were served again
    assert stats[second_vllm.url].state == "open"
    assert {r.endpoint for r in results} <= {vllm.url, second_vllm.url}
    assert all(r.aligned for r in results)
