"""``OpenAICompatAligner`` against an httpx2 MockTransport standing in for vLLM's ``/v1/completions``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from diffpo_integrations.backends import OpenAICompatAligner, TGIAligner
from diffpo_integrations.backends.testing import (
    MockTGIServer,
    mock_continuation,
    mock_tgi,
    mock_tokenize,
    mock_transport,
)
from diffpo_integrations.core.errors import AlignerConnectionError, AlignerError, ConfigurationError, OverloadedError
from diffpo_integrations.core.types import AlignResult

STOP = "<|im_end|>"
MESSAGES = [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "Seven."}]
CONVERSATION = [*MESSAGES, {"role": "user", "content": "And another one, please?"}]
DRAFT = "Eleven is a prime number, because its only divisors are one and itself."


class MockTokenizer:
    """A fast-tokenizer stand-in over :func:`mock_tokenize`, remembering each id's text to decode."""

    chat_template = None
    all_special_ids: list[int] = []  # noqa: RUF012 - mirrors the transformers attribute

    def __init__(self) -> None:
        self.vocab: dict[int, str] = {}

    def __call__(self, text: str, add_special_tokens: bool = True, return_offsets_mapping: bool = False) -> Any:
        spans = mock_tokenize(text)
        for s in spans:
            self.vocab[s.id] = text[s.start : s.stop]
        return {"input_ids": [s.id for s in spans], "offset_mapping": [(s.start, s.stop) for s in spans]}

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in ids)


class MockVLLM:
    """The routes of a vLLM server that the aligner uses; TGI's ``/tokenize`` comes from ``tgi`` when given."""

    def __init__(self, tokenizer: MockTokenizer, tgi: MockTGIServer | None = None) -> None:
        self.tokenizer = tokenizer
        self.tgi = tgi
        self.requests: list[httpx2.Request] = []
        self.failures: list[int] = []

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path]

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.failures:
            status = self.failures.pop(0)
            body = {"object": "error", "message": f"mock {status}", "type": "BadRequestError", "code": status}
            return httpx2.Response(status, json=body, headers={"Retry-After": "0"} if status == 429 else {})
        path = request.url.path
        if path == "/v1/models":
            return httpx2.Response(200, json={"object": "list", "data": [{"id": "diffpo-mock", "object": "model"}]})
        body = json.loads(request.content)
        if path == "/tokenize":
            if self.tgi is not None:
                return self.tgi.handle(request)
            if "prompt" not in body:  # vLLM's /tokenize takes {"model", "prompt"}, not TGI's {"inputs"}
                return httpx2.Response(400, json={"object": "error", "message": "Field required: prompt", "code": 400})
            return httpx2.Response(200, json={"tokens": [s.id for s in mock_tokenize(body["prompt"])], "count": 1})
        if path != "/v1/completions":
            return httpx2.Response(404, json={"detail": "Not Found"})
        prompt = body["prompt"]
        text = self.tokenizer.decode(prompt) if isinstance(prompt, list) else prompt
        pieces = mock_continuation(text)[: body["max_tokens"]]
        finish = "stop" if pieces[-1] == STOP else "length"
        pieces = [p for p in pieces if p not in body.get("stop", [])]  # vLLM leaves the stop string out
        usage = {"prompt_tokens": 10, "completion_tokens": len(pieces) + (finish == "stop"), "total_tokens": 0}
        if not body.get("stream"):
            choice = {"index": 0, "text": "".join(pieces), "finish_reason": finish, "logprobs": None}
            return httpx2.Response(
                200, json={"id": "cmpl-1", "object": "text_completion", "choices": [choice], "usage": usage}
            )
        events = [{"choices": [{"index": 0, "text": p, "finish_reason": None}]} for p in pieces]
        events.append({"choices": [{"index": 0, "text": "", "finish_reason": finish}]})
        events.append({"choices": [], "usage": usage})
        payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx2.Response(200, content=payload.encode(), headers={"content-type": "text/event-stream"})


serving = mock_transport


@pytest.fixture
def tokenizer() -> MockTokenizer:
    return MockTokenizer()


@pytest.fixture
def vllm(tokenizer: MockTokenizer) -> Iterator[MockVLLM]:
    server = MockVLLM(tokenizer)
    with serving(server.handle):
        yield server


def _tgi_result(**options: Any) -> AlignResult:
    with mock_tgi(align_route=False):
        return TGIAligner("http://mock-tgi", template="chatml", use_align_route=False, **options).align(
            CONVERSATION, DRAFT
        )


def _tgi_answer(**options: Any) -> str:
    return _tgi_result(**options).text


@pytest.mark.parametrize("keep", [0, 3, 6])
def test_token_ids_give_the_tgi_answer(vllm: MockVLLM, tokenizer: MockTokenizer, keep: int) -> None:
    aligner = OpenAICompatAligner(
        "http://vllm:8000/v1", template="chatml", tokenizer=tokenizer, keep_prefix_tokens=keep
    )
    result = aligner.align(CONVERSATION, DRAFT)
    tgi = _tgi_result(keep_prefix_tokens=keep)
    assert (result.text, result.kept_prefix, result.kept_prefix_tokens) == (
        tgi.text,
        tgi.kept_prefix,
        tgi.kept_prefix_tokens,
    )
    assert aligner.sends_token_ids
    (body,) = vllm.bodies("/v1/completions")
    assert all(isinstance(i, int) for i in body["prompt"])
    assert body["model"] == "diffpo-mock"  # found through /v1/models
    assert (body["temperature"], body["stop"], body["max_tokens"], body["stream"]) == (0, [STOP], 256, False)
    assert result.finish_reason == "eos_token"
    assert result.generated_tokens == 3
    assert result.details["prompt_as"] == "token_ids"
    assert result.endpoint == "http://vllm:8000"
    assert [r.url.path for r in vllm.requests] == ["/v1/models", "/v1/completions"]


def test_text_with_server_offsets_gives_the_tgi_answer(tokenizer: MockTokenizer) -> None:
    with mock_tgi(align_route=False) as tgi:
        server = MockVLLM(tokenizer, tgi=tgi)
        with serving(server.handle):
            aligner = OpenAICompatAligner("http://vllm:8000", model="m", template="chatml")
            result = aligner.align(CONVERSATION, DRAFT)
    assert result.text == _tgi_answer()
    (body,) = server.bodies("/v1/completions")
    assert isinstance(body["prompt"], str)
    assert body["model"] == "m"
    assert result.details["prompt_as"] == "text"


def test_vllm_tokenize_without_offsets_asks_for_a_tokenizer(vllm: MockVLLM) -> None:
    aligner = OpenAICompatAligner("http://vllm:8000", model="m", template="chatml")
    with pytest.raises(ConfigurationError, match="tokenizer="):
        aligner.align(CONVERSATION, DRAFT)
    # A /tokenize that answers ids without offsets is refused with the same advice.
    with pytest.raises(ConfigurationError, match="no character offsets"):
        aligner._server_spans({"tokens": [1, 2, 3]})


async def test_async_and_streams_agree(vllm: MockVLLM, tokenizer: MockTokenizer) -> None:
    aligner = OpenAICompatAligner("http://vllm:8000", model="m", template="chatml", tokenizer=tokenizer)
    expected = aligner.align(CONVERSATION, DRAFT)
    assert (await aligner.aalign(CONVERSATION, DRAFT)).text == expected.text

    chunks = list(aligner.stream(CONVERSATION, DRAFT))
    assert "".join(c.text for c in chunks) == expected.text
    assert chunks[-1].result is not None
    assert chunks[-1].result.text == expected.text
    assert chunks[-1].result.generated_tokens == expected.generated_tokens
    assert chunks[-1].result.finish_reason == "eos_token"

    achunks = [c async for c in aligner.astream(CONVERSATION, DRAFT)]
    assert "".join(c.text for c in achunks) == expected.text
    assert achunks[-1].result is not None
    assert achunks[-1].result.text == expected.text
    streamed = vllm.bodies("/v1/completions")[-1]
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_usage": True}


def test_length_finish(vllm: MockVLLM, tokenizer: MockTokenizer) -> None:
    aligner = OpenAICompatAligner("http://vllm:8000", model="m", template="chatml", tokenizer=tokenizer)
    result = aligner.align(CONVERSATION, DRAFT, max_new_tokens=1)
    assert result.finish_reason == "length"
    assert vllm.bodies("/v1/completions")[-1]["max_tokens"] == 1


def test_errors_map_to_the_error_tree(vllm: MockVLLM, tokenizer: MockTokenizer) -> None:
    aligner = OpenAICompatAligner(
        "http://vllm:8000", model="m", template="chatml", tokenizer=tokenizer, backoff=0.001, max_retries=2
    )
    expected = aligner.align(CONVERSATION, DRAFT).text
    vllm.failures = [429]
    assert aligner.align(CONVERSATION, DRAFT).text == expected  # retried after Retry-After: 0
    vllm.failures = [429, 429, 429]
    with pytest.raises(OverloadedError):
        aligner.align(CONVERSATION, DRAFT)
    vllm.failures = [400]
    with pytest.raises(AlignerError, match="mock 400") as info:
        aligner.align(CONVERSATION, DRAFT)
    assert info.value.status == 400


def test_connection_errors_are_typed(tokenizer: MockTokenizer) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    with serving(refuse):
        aligner = OpenAICompatAligner(
            "http://vllm:8000", model="m", template="chatml", tokenizer=tokenizer, max_retries=0
        )
        with pytest.raises(AlignerConnectionError):
            aligner.align(CONVERSATION, DRAFT)


def test_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="chat template"):
        OpenAICompatAligner("http://vllm:8000")
    with pytest.raises(ConfigurationError, match="http"):
        OpenAICompatAligner("vllm:8000", template="chatml")
