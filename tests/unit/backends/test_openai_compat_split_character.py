"""A token-id prompt that ends inside a character, against a scripted fake of vLLM 0.32's answer.

Measured on the real server (tests/engines/test_vllm.py): given ids whose last token holds only
some bytes of a character, vLLM's detokenizer answers the *whole prompt's* text followed by garbled
pieces, while its ``token_ids`` (``return_token_ids: true``) are right. The client must decode the ids.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest

from diffpo_integrations.backends import OpenAICompatAligner
from diffpo_integrations.backends.testing import mock_transport

MESSAGES = [{"role": "user", "content": "Say hello in Japanese."}]
DRAFT = "日本語です。"
PROMPT_TEXT = "<|im_start|>user\nSay hello in Japanese.<|im_end|>\n<|im_start|>assistant\n"


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0-255) for the draft, one per character before it: cuts can split characters."""

    chat_template = None
    all_special_ids: list[int] = []  # noqa: RUF012 - mirrors the transformers attribute

    def __call__(self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> Any:
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        for i, char in enumerate(text):
            for byte in char.encode():
                ids.append(byte)
                offsets.append((i, i + 1))
        return {"input_ids": ids, "offset_mapping": offsets}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


# The aligner's answer: "日" (3 bytes) cut after its first byte, then the model writes the rest.
GENERATED = list("日本です".encode())[1:]


class FakeVLLM:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        ids = GENERATED if body.get("return_token_ids") else None
        garbled = PROMPT_TEXT + "\ufffd本です"  # what vLLM's text says here
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": len(GENERATED), "total_tokens": 0}
        if not body.get("stream"):
            choice = {"index": 0, "text": garbled, "finish_reason": "stop", "token_ids": ids}
            return httpx2.Response(200, json={"object": "text_completion", "choices": [choice], "usage": usage})
        events = [
            {"choices": [{"index": 0, "text": garbled if i == 0 else "", "finish_reason": None, "token_ids": [t]}]}
            for i, t in enumerate(GENERATED)
        ]
        events += [{"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}, {"choices": [], "usage": usage}]
        payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx2.Response(200, content=payload.encode(), headers={"content-type": "text/event-stream"})


def _aligner() -> OpenAICompatAligner:
    return OpenAICompatAligner(
        "http://vllm:8000", model="m", template="chatml", tokenizer=ByteTokenizer(), keep_prefix_tokens=1
    )


def test_the_answer_is_decoded_from_the_returned_token_ids() -> None:
    server = FakeVLLM()
    with mock_transport(server.handle):
        result = _aligner().align(MESSAGES, DRAFT)
    assert result.text == "日本です"
    (body,) = server.bodies
    assert body["return_token_ids"] is True
    assert body["prompt"][-1] == "日".encode()[0]  # the split byte is sent, as the official prompt has it
    assert result.kept_prefix == ""
    assert result.generated_tokens == len(GENERATED)


def test_the_stream_is_decoded_from_the_returned_token_ids() -> None:
    server = FakeVLLM()
    with mock_transport(server.handle):
        chunks = list(_aligner().stream(MESSAGES, DRAFT))
    pieces = [c.text for c in chunks if c.text]
    assert "".join(pieces) == "日本です"
    assert all("\ufffd" not in p for p in pieces)  # an incomplete character waits for its bytes
    assert chunks[-1].result is not None
    assert chunks[-1].result.text == "日本です"


def test_a_clean_cut_sends_no_extra_field() -> None:
    server = FakeVLLM()
    with mock_transport(server.handle):
        _aligner().align(MESSAGES, "Hello there.")
    assert "return_token_ids" not in server.bodies[0]


def test_a_server_without_token_ids_says_what_to_do() -> None:
    def handle(request: httpx2.Request) -> httpx2.Response:
        choice = {"index": 0, "text": "x", "finish_reason": "stop"}
        return httpx2.Response(200, json={"object": "text_completion", "choices": [choice], "usage": {}})

    with mock_transport(handle), pytest.raises(Exception, match="use_token_ids=False") as caught:
        _aligner().align(MESSAGES, DRAFT)
    assert type(caught.value).__name__ == "AlignerError"
