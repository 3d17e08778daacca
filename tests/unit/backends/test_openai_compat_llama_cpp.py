"""``OpenAICompatAligner`` against a scripted fake of llama.cpp's server (llama-cpp-python 0.3.36).

Measured on the real server (tests/engines/test_llama_cpp.py): ``prompt`` must be text; a list of
token ids is an HTTP 500 carrying pydantic's validation errors. The aligner detects that answer and
sends the same fixed prompt as text from then on, instead of failing.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx2
import pytest

from diffpo_integrations.backends import OpenAICompatAligner
from diffpo_integrations.backends.testing import mock_transport
from diffpo_integrations.core.errors import AlignerError

MESSAGES = [{"role": "user", "content": "Name a prime number."}]
DRAFT = "Eleven is a prime number."

_REFUSAL = (
    "4 validation errors:\n  {'type': 'string_type', 'loc': ('body', 'prompt', 'str'), 'msg': 'Input should be a "
    "valid string', 'input': [1, 2, 3]}\n  {'type': 'string_type', 'loc': ('body', 'prompt', 'list[str]', 0), "
    "'msg': 'Input should be a valid string', 'input': 1}\n\n  POST /v1/completions"
)


class CharTokenizer:
    chat_template = None
    all_special_ids: list[int] = []  # noqa: RUF012 - mirrors the transformers attribute

    def __call__(self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> Any:
        return {"input_ids": [ord(c) for c in text], "offset_mapping": [(i, i + 1) for i in range(len(text))]}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return "".join(chr(i) for i in ids)


class FakeLlamaCpp:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if not isinstance(body["prompt"], str):
            error = {"message": _REFUSAL, "type": "internal_server_error", "param": None, "code": None}
            return httpx2.Response(500, json={"error": error})
        usage = {"prompt_tokens": 30, "completion_tokens": 3, "total_tokens": 33}
        if body.get("stream"):
            events = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in (" is", " prime.")]
            events.append({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
            payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
            return httpx2.Response(200, content=payload.encode(), headers={"content-type": "text/event-stream"})
        choice = {"index": 0, "text": " is prime.", "finish_reason": "stop", "logprobs": None}
        return httpx2.Response(200, json={"object": "text_completion", "choices": [choice], "usage": usage})


def _aligner() -> OpenAICompatAligner:
    return OpenAICompatAligner(
        "http://llama:8000", model="m", template="chatml", tokenizer=CharTokenizer(), keep_prefix_tokens=6
    )


def test_a_refused_token_id_prompt_is_sent_again_as_text(caplog: pytest.LogCaptureFixture) -> None:
    server = FakeLlamaCpp()
    aligner = _aligner()
    with mock_transport(server.handle), caplog.at_level(logging.WARNING):
        result = aligner.align(MESSAGES, DRAFT)
        again = aligner.align(MESSAGES, DRAFT)
    assert result.text == again.text == "Eleven is prime."
    assert [type(b["prompt"]).__name__ for b in server.bodies] == ["list", "str", "str"]  # learnt once
    assert server.bodies[1]["prompt"].endswith("<|im_start|>assistant\nEleven")
    assert result.details["prompt_as"] == "text"
    assert not aligner.sends_token_ids
    assert "http://llama:8000 refuses token-id prompts; sending text from now on (use_token_ids=False)" in caplog.text


def test_a_refused_token_id_stream_is_sent_again_as_text() -> None:
    server = FakeLlamaCpp()
    with mock_transport(server.handle):
        chunks = list(_aligner().stream(MESSAGES, DRAFT))
    assert "".join(c.text for c in chunks) == "Eleven is prime."
    assert [type(b["prompt"]).__name__ for b in server.bodies] == ["list", "str"]
    assert chunks[-1].result is not None
    assert chunks[-1].result.details["prompt_as"] == "text"


def test_use_token_ids_false_sends_text_at_once() -> None:
    server = FakeLlamaCpp()
    with mock_transport(server.handle):
        OpenAICompatAligner(
            "http://llama:8000", model="m", template="chatml", tokenizer=CharTokenizer(), use_token_ids=False
        ).align(MESSAGES, DRAFT)
    assert [type(b["prompt"]).__name__ for b in server.bodies] == ["str"]


def test_another_500_is_not_taken_for_a_refusal() -> None:
    def handle(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(500, json={"error": {"message": "out of memory", "type": "internal_server_error"}})

    with mock_transport(handle), pytest.raises(AlignerError, match=r"^out of memory$"):
        OpenAICompatAligner(
            "http://llama:8000", model="m", template="chatml", tokenizer=CharTokenizer(), max_retries=0
        ).align(MESSAGES, DRAFT)
