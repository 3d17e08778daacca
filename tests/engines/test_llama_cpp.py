"""``OpenAICompatAligner`` against llama.cpp's server (``llama-cpp-python[server]``) on the packaged GGUF.

llama.cpp's Q4_1 kernels do not give transformers' float32 greedy tokens, so the reference here is
llama.cpp's own greedy continuation of the official fixed prompt, built independently from the
tokenizer as the official script does (DESIGN.md section 1) and sent raw.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
from conftest import MAX_NEW_TOKENS

from diffpo_integrations.backends import OpenAICompatAligner
from diffpo_integrations.core.errors import AlignerTimeoutError, ContextLengthError
from diffpo_integrations.evaluation.engine_servers import EngineServer

STOP = "<|im_end|>"


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def _aligner(llama_cpp: EngineServer, model_dir: Path, **options: Any) -> OpenAICompatAligner:
    options.setdefault("max_new_tokens", MAX_NEW_TOKENS)
    return OpenAICompatAligner(llama_cpp.url, tokenizer=str(model_dir), **options)


def _own_greedy(
    llama_cpp: EngineServer,
    tokenizer: Any,
    messages: list[dict[str, str]],
    draft: str,
    keep: int,
    max_tokens: int = MAX_NEW_TOKENS,
) -> str:
    """The official answer with llama.cpp as the model: fixed prompt ``ids[:L + r]``, its greedy continuation."""
    start = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    text = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": draft}], tokenize=False)
    ids = tokenizer(text)["input_ids"]
    prompt, kept = tokenizer.decode(ids[: start + keep]), tokenizer.decode(ids[start : start + keep])
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stop": [STOP]}
    answer = httpx2.post(f"{llama_cpp.url}/v1/completions", json=body, timeout=120).json()
    return str(kept + answer["choices"][0]["text"]).strip()


@pytest.mark.smoke
def test_aligns_held_out_drafts_like_its_own_greedy(
    llama_cpp: EngineServer, model_dir: Path, tokenizer: Any, drafts: list[tuple[int, str, str]]
) -> None:
    aligner = _aligner(llama_cpp, model_dir)
    for _, question, draft in drafts:
        messages = [{"role": "user", "content": question}]
        result = aligner.align(messages, draft)
        assert result.text == _own_greedy(llama_cpp, tokenizer, messages, draft, 6)
        assert result.kept_prefix_tokens == 6
        # Its first try with token ids was refused (HTTP 500); the aligner sent text.
        assert result.details["prompt_as"] == "text"
    assert not aligner.sends_token_ids


async def test_streamed_and_async_answers_match(
    llama_cpp: EngineServer, model_dir: Path, tokenizer: Any, drafts: list[tuple[int, str, str]]
) -> None:
    aligner = _aligner(llama_cpp, model_dir, use_token_ids=False)
    _, question, draft = drafts[0]
    messages = [{"role": "user", "content": question}]
    expected = _own_greedy(llama_cpp, tokenizer, messages, draft, 6)
    chunks = list(aligner.stream(messages, draft))
    assert "".join(c.text for c in chunks) == expected
    assert chunks[-1].result is not None
    assert chunks[-1].result.text == expected
    assert (await aligner.aalign(messages, draft)).text == expected
    achunks = [c async for c in aligner.astream(messages, draft)]
    assert "".join(c.text for c in achunks) == expected


def test_a_kept_prefix_cut_inside_a_character_gives_whole_characters(
    llama_cpp: EngineServer, model_dir: Path, tokenizer: Any
) -> None:
    messages = [{"role": "user", "content": "Say hello in Japanese, then in French."}]
    draft = "こんにちは世界、日本語で挨拶します。Bonjour le monde, café crème !"
    start = len(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    ids = tokenizer(tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": draft}], tokenize=False))
    keep = next(k for k in range(1, 16) if tokenizer.decode(ids["input_ids"][start : start + k]).endswith("\ufffd"))
    whole = keep - 1  # text can only hold the whole characters before the cut; the server writes the rest
    while tokenizer.decode(ids["input_ids"][start : start + whole]).endswith("\ufffd"):
        whole -= 1
    # The budget still counts from the official cut, so the server writes the split tokens on top.
    expected = _own_greedy(llama_cpp, tokenizer, messages, draft, whole, MAX_NEW_TOKENS + keep - whole)
    result = _aligner(llama_cpp, model_dir, keep_prefix_tokens=keep, use_token_ids=False).align(messages, draft)
    assert "\ufffd" not in result.text
    assert result.text == expected


@pytest.mark.smoke
def test_a_prompt_longer_than_n_ctx_is_a_typed_error(llama_cpp: EngineServer, model_dir: Path, tokenizer: Any) -> None:
    words = tokenizer.decode(tokenizer(" ".join(f"word{i}" for i in range(2100)))["input_ids"][:2100])
    aligner = _aligner(llama_cpp, model_dir, use_token_ids=False)
    with pytest.raises(ContextLengthError) as caught:
        aligner.align([{"role": "user", "content": words}], "A short draft.")
    message = str(caught.value)
    assert "This model's maximum context length is 2048 tokens" in message
    assert message.endswith("restart the server with a larger context (vLLM: --max-model-len; llama.cpp: --n_ctx)")


def test_a_budget_past_n_ctx_is_a_typed_error(llama_cpp: EngineServer, model_dir: Path, tokenizer: Any) -> None:
    words = tokenizer.decode(tokenizer(" ".join(f"word{i}" for i in range(1980)))["input_ids"][:1980])
    aligner = _aligner(llama_cpp, model_dir, use_token_ids=False, max_new_tokens=64)
    with pytest.raises(ContextLengthError, match="max_new_tokens=64 asks for") as caught:
        aligner.align([{"role": "user", "content": words}], "A short draft.")
    assert "stopped the answer for length after" in str(caught.value)


def _quick_answer_s(llama_cpp: EngineServer) -> float:
    start = time.monotonic()
    body = {"prompt": "Hello", "max_tokens": 1, "temperature": 0}
    httpx2.post(f"{llama_cpp.url}/v1/completions", json=body, timeout=120).raise_for_status()
    return time.monotonic() - start


def test_closing_a_stream_frees_the_server(
    llama_cpp: EngineServer, model_dir: Path, drafts: list[tuple[int, str, str]]
) -> None:
    # llama.cpp's server runs one completion at a time: if the closed stream went on generating its
    # 1500 tokens (about 20 s here), the next request would wait for it.
    _, question, draft = drafts[1]
    stream = _aligner(llama_cpp, model_dir, use_token_ids=False, max_new_tokens=1500).stream(
        [{"role": "user", "content": question}], draft
    )
    assert all(next(stream).text for _ in range(4))
    stream.close()
    assert _quick_answer_s(llama_cpp) < 5.0


def test_the_deadline_holds(llama_cpp: EngineServer, model_dir: Path, drafts: list[tuple[int, str, str]]) -> None:
    _, question, draft = drafts[2]
    aligner = _aligner(llama_cpp, model_dir, use_token_ids=False, max_new_tokens=1500, deadline=1.0)
    start = time.monotonic()
    with pytest.raises(AlignerTimeoutError, match=r"the deadline of 1.0 s ran out"):
        aligner.align([{"role": "user", "content": question}], draft)
    assert time.monotonic() - start < 2.0
