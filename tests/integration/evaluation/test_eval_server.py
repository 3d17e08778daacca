"""``diffpo eval`` and ``OpenAICompatAligner`` against the embedded server (SmolLM2-135M-Instruct, a stand-in
for a DiffPO checkpoint) over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diffpo_integrations.backends import OpenAICompatAligner, TGIAligner
from diffpo_integrations.cli import main
from diffpo_integrations.core.templates import TokenizerTemplate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONVERSATION = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "And another one? Say why it is prime."},
]
DRAFT = "Eleven is a prime number, because its only divisors are one and itself."


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    from diffpo_integrations.server.testing import serve_in_thread, shared_app

    with serve_in_thread(shared_app()) as url:
        yield url


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from diffpo_integrations.server.testing import get_default_engine

    return get_default_engine().tokenizer


def test_eval_against_the_server(base_url: str, tmp_path: Path) -> None:
    out, report = tmp_path / "aligned.jsonl", tmp_path / "report.html"
    # Turn 1 of two questions keeps this quick on a CPU; the unit tests cover turn 2 and resuming.
    args = ["eval", "--answers", "mistral-it-vanilla", "--limit", "2", "--turns", "1", "--max-new-tokens", "8"]
    args += ["--aligner-url", base_url, "--out", str(out), "--report", str(report), "--concurrency", "2"]
    assert main([*args, "--no-progress"]) == 0
    lines = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["question_id"] for r in lines) == [81, 82]
    for r in lines:
        assert len(r["choices"][0]["turns"]) == 2
        meta = r["diffpo"]["turns"][0]
        assert meta["aligned"] is True
        assert meta["endpoint"] == base_url
        assert meta["generated_tokens"] <= 8
        assert r["diffpo"]["turns"][1] is None
    page = report.read_text(encoding="utf-8")
    assert page.count('class="turn"') == 2
    if any("forward_passes" in r["diffpo"]["turns"][0]["details"] for r in lines):
        assert "Forward passes" in page


@pytest.mark.parametrize("keep", [0, 6])
def test_openai_compat_gives_the_tgi_answer(base_url: str, tokenizer: Any, keep: int) -> None:
    options = {"keep_prefix_tokens": keep, "max_new_tokens": 10}
    template = TokenizerTemplate(tokenizer, name="smollm2")
    via_align_route = TGIAligner(base_url, **options).align(CONVERSATION, DRAFT)
    via_generate = TGIAligner(base_url, template=template, use_align_route=False, **options).align(CONVERSATION, DRAFT)
    as_ids = OpenAICompatAligner(base_url, tokenizer=tokenizer, **options)
    as_text = OpenAICompatAligner(base_url, template=template, use_token_ids=False, **options)
    ids_result = as_ids.align(CONVERSATION, DRAFT)
    text_result = as_text.align(CONVERSATION, DRAFT)
    assert ids_result.details["prompt_as"] == "token_ids"
    assert text_result.details["prompt_as"] == "text"
    assert ids_result.text == text_result.text == via_generate.text == via_align_route.text
    assert ids_result.kept_prefix == via_align_route.kept_prefix
    assert ids_result.finish_reason == via_align_route.finish_reason


async def test_openai_compat_streams_against_the_server(base_url: str, tokenizer: Any) -> None:
    aligner = OpenAICompatAligner(base_url + "/v1", tokenizer=tokenizer, max_new_tokens=8)
    expected = aligner.align(CONVERSATION, DRAFT)
    chunks = [c async for c in aligner.astream(CONVERSATION, DRAFT)]
    assert "".join(c.text for c in chunks) == expected.text
    assert chunks[-1].result is not None
    assert chunks[-1].result.generated_tokens == expected.generated_tokens
    assert "".join(c.text for c in aligner.stream(CONVERSATION, DRAFT)) == expected.text
