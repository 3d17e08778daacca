"""``OpenAICompatAligner`` against a scripted fake of what vLLM 0.32 (CPU build) was measured to do.

Each behaviour here was found against the real server (tests/engines/): its OpenAI-style error body,
its 400 for a prompt longer than ``--max-model-len``, and the budget it silently lowers to what the
context leaves (``max_model_len - prompt``, answered with ``finish_reason: "length"``).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from diffpo_integrations.backends import OpenAICompatAligner
from diffpo_integrations.backends.testing import mock_transport
from diffpo_integrations.core.errors import ContextLengthError, ServerValidationError, error_from_tgi_payload

STOP = "<|im_end|>"
MESSAGES = [{"role": "user", "content": "Name a prime number."}]
DRAFT = "Eleven is a prime number, because its only divisors are one and itself."


class WordTokenizer:
    """One token per character: prompt sizes are easy to reason about."""

    chat_template = None
    all_special_ids: list[int] = []  # noqa: RUF012 - mirrors the transformers attribute

    def __call__(self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> Any:
        return {"input_ids": [ord(c) for c in text], "offset_mapping": [(i, i + 1) for i in range(len(text))]}

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


class FakeVLLM:
    """``/v1/models`` and ``/v1/completions`` as vLLM 0.32 answers them, with a small context."""

    def __init__(self, max_model_len: int) -> None:
        self.max_model_len = max_model_len
        self.bodies: list[dict[str, Any]] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/v1/models":
            model = {"id": "smollm2", "object": "model", "owned_by": "vllm", "max_model_len": self.max_model_len}
            return httpx2.Response(200, json={"object": "list", "data": [model]})
        body = json.loads(request.content)
        self.bodies.append(body)
        n = len(body["prompt"])
        if n > self.max_model_len:
            message = (
                f"This model's maximum context length is {self.max_model_len} tokens. However, your prompt "
                f"contains {n} input tokens, which exceeds this limit even without any output tokens. Please "
                f"reduce the length of the input prompt. (parameter=input_tokens, value={n})"
            )
            error = {"message": message, "type": "BadRequestError", "param": "input_tokens", "code": 400}
            return httpx2.Response(400, json={"error": error})
        # vLLM lowers the budget to what the context leaves, and says nothing about it.
        budget = min(body["max_tokens"], self.max_model_len - n)
        text, finish = ("x" * budget, "length") if budget < 5 else (" fine", "stop")
        usage = {"prompt_tokens": n, "completion_tokens": len(text) + (finish == "stop"), "total_tokens": 0}
        if body.get("stream"):
            events = [{"choices": [{"index": 0, "text": c, "finish_reason": None}]} for c in text]
            events += [
                {"choices": [{"index": 0, "text": "", "finish_reason": finish}]},
                {"choices": [], "usage": usage},
            ]
            payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx2.Response(200, content=payload.encode(), headers={"content-type": "text/event-stream"})
        choice = {"index": 0, "text": text, "finish_reason": finish}
        return httpx2.Response(200, json={"object": "text_completion", "choices": [choice], "usage": usage})


def _aligner(model: str | None = None) -> OpenAICompatAligner:
    return OpenAICompatAligner(
        "http://vllm:8000", model=model, template="chatml", tokenizer=WordTokenizer(), keep_prefix_tokens=4
    )


def _prompt_tokens() -> int:
    server = FakeVLLM(10_000)
    with mock_transport(server.handle):
        _aligner().align(MESSAGES, DRAFT, max_new_tokens=8)
    return len(server.bodies[0]["prompt"])


def test_openai_style_error_body_gives_its_message_and_a_validation_error() -> None:
    body = {"error": {"message": "bad max_tokens", "type": "BadRequestError", "param": None, "code": 400}}
    error = error_from_tgi_payload(400, body, endpoint="http://vllm:8000")
    assert type(error) is ServerValidationError
    assert str(error) == "bad max_tokens"
    assert error.status == 400


def test_a_prompt_past_the_listed_context_is_refused_before_sending() -> None:
    n = _prompt_tokens()
    server = FakeVLLM(n - 1)
    with mock_transport(server.handle), pytest.raises(ContextLengthError) as caught:
        _aligner().align(MESSAGES, DRAFT, max_new_tokens=8)
    assert server.bodies == []  # the listing's max_model_len was enough to know
    assert str(caught.value) == (
        f"the prompt alone is {n} tokens and http://vllm:8000 serves a context of {n - 1} tokens: shorten the "
        "conversation or the draft, or restart the server with a larger context (vLLM: --max-model-len; "
        "llama.cpp: --n_ctx)"
    )


def test_a_budget_past_the_listed_context_is_refused_with_the_room_left() -> None:
    n = _prompt_tokens()
    server = FakeVLLM(n + 3)
    with mock_transport(server.handle), pytest.raises(ContextLengthError) as caught:
        _aligner().align(MESSAGES, DRAFT, max_new_tokens=8)
    assert server.bodies == []
    assert str(caught.value) == (
        f"the prompt is {n} tokens and max_new_tokens=8 asks for {n + 8} in all, but http://vllm:8000 serves "
        f"a context of {n + 3} tokens: lower max_new_tokens to 3 or less, shorten the conversation or the "
        "draft, or restart the server with a larger context (vLLM: --max-model-len; llama.cpp: --n_ctx)"
    )


def test_the_servers_400_for_a_long_prompt_becomes_a_context_length_error() -> None:
    # With model= given there is no listing: the server's own 400 is what tells.
    n = _prompt_tokens()
    server = FakeVLLM(n - 1)
    with mock_transport(server.handle), pytest.raises(ContextLengthError) as caught:
        _aligner(model="smollm2").align(MESSAGES, DRAFT, max_new_tokens=8)
    message = str(caught.value)
    assert message.startswith(f"the prompt is {n} tokens and max_new_tokens=8 asks for {n + 8} in all, but ")
    assert f"This model's maximum context length is {n - 1} tokens." in message
    assert message.endswith("restart the server with a larger context (vLLM: --max-model-len; llama.cpp: --n_ctx)")
    assert isinstance(caught.value, ServerValidationError)


@pytest.mark.parametrize("streamed", [False, True])
def test_a_budget_the_server_lowered_silently_is_an_error_not_a_cut_answer(streamed: bool) -> None:
    n = _prompt_tokens()
    server = FakeVLLM(n + 3)  # leaves 3 of the 8 tokens asked
    aligner = _aligner(model="smollm2")

    def call() -> object:
        if streamed:
            return list(aligner.stream(MESSAGES, DRAFT, max_new_tokens=8))
        return aligner.align(MESSAGES, DRAFT, max_new_tokens=8)

    with mock_transport(server.handle), pytest.raises(ContextLengthError) as caught:
        call()
    assert server.bodies[0]["max_tokens"] == 8
    assert str(caught.value) == (
        f"the prompt is {n} tokens and max_new_tokens=8 asks for {n + 8} in all, but http://vllm:8000 stopped "
        "the answer for length after 3 of the 8 tokens asked, at the end of its context window: lower "
        "max_new_tokens, shorten the conversation or the draft, or restart the server with a larger context "
        "(vLLM: --max-model-len; llama.cpp: --n_ctx)"
    )


def test_a_budget_that_fits_still_answers() -> None:
    n = _prompt_tokens()
    server = FakeVLLM(n + 8)
    with mock_transport(server.handle):
        result = _aligner().align(MESSAGES, DRAFT, max_new_tokens=8)
    assert result.text == "Elev fine"
    assert result.finish_reason == "eos_token"
