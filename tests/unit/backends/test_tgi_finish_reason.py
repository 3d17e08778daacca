"""A plain TGI that reports the end-of-turn stop as ``stop_sequence`` gives the same result as /diffpo/align."""

from __future__ import annotations

import json

import httpx2
import pytest

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.backends.testing import mock_tgi

MESSAGES = [("user", "What is a prime number?")]
DRAFT = "A prime number has exactly two divisors."


@pytest.mark.parametrize("keep_stop_text", [True, False])
def test_stop_sequence_is_reported_as_end_of_turn(keep_stop_text: bool) -> None:
    with mock_tgi(align_route=False) as server:
        handle = server.handle

        def as_stop_sequence(request: httpx2.Request) -> httpx2.Response:
            response = handle(request)
            if request.url.path != "/":
                return response
            body = json.loads(response.content)
            body[0]["details"]["finish_reason"] = "stop_sequence"
            if keep_stop_text:
                body[0]["generated_text"] += "<|im_end|>"
            return httpx2.Response(200, json=body)

        server.handle = as_stop_sequence  # type: ignore[method-assign]
        plain = TGIAligner("http://mock-tgi", template="chatml").align(MESSAGES, DRAFT)
    with mock_tgi(align_route=True):
        routed = TGIAligner("http://mock-tgi", template="chatml").align(MESSAGES, DRAFT)
    assert plain.finish_reason == routed.finish_reason == "eos_token"
    assert plain.text == routed.text
    assert not plain.text.endswith("<|im_end|>")
