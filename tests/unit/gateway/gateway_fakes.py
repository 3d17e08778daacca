"""A scripted OpenAI-compatible upstream (an ``httpx.MockTransport`` handler) and helpers for gateway tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi.testclient import TestClient

from diffpo_integrations.backends.testing import MockTGIServer, mock_tgi
from diffpo_integrations.backends.tgi import TGIAligner
from diffpo_integrations.gateway import GatewayConfig, create_gateway_app

DRAFT = "Seven is a prime number because its only divisors are one and seven."
QUESTION = "Is seven a prime number?"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
USAGE = {"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "7"}'}}


def completion(contents: list[str], *, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An upstream ``chat.completion`` with one choice per text."""
    choices = []
    for i, text in enumerate(contents):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if tool_calls:
            message = {"role": "assistant", "content": None, "tool_calls": tool_calls}
        choices.append({"index": i, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"})
    return {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": choices,
        "usage": USAGE,
    }


def stream_events(
    text: str, *, tool_calls: list[dict[str, Any]] | None = None, usage: bool = True
) -> list[dict[str, Any]]:
    """An upstream's stream of ``chat.completion.chunk`` events for one choice, a word at a time."""
    base = {"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    events = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    for word in text.split(" "):
        piece = word if len(events) == 1 else " " + word
        events.append({**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]})
    if tool_calls:
        events.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": tool_calls}, "finish_reason": None}]})
    finish = "tool_calls" if tool_calls else "stop"
    events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    if usage:
        events.append({**base, "choices": [], "usage": USAGE})
    return events


def sse_body(events: list[dict[str, Any]]) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


class _CountingStream(httpx.AsyncByteStream):
    """Yields SSE events one by one and counts how many the gateway pulled."""

    def __init__(self, events: list[dict[str, Any]], upstream: ScriptedUpstream) -> None:
        self.events = events
        self.upstream = upstream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self.events:
            self.upstream.pulled += 1
            yield f"data: {json.dumps(event)}\n\n".encode()
        yield b"data: [DONE]\n\n"

    async def aclose(self) -> None:
        self.upstream.closed = True


@dataclass
class ScriptedUpstream:
    """The upstream: answers each chat request with the next scripted answer, and records requests."""

    answers: list[Any] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    pulled: int = 0
    closed: bool = False

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.method == "POST"]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.method == "GET" and request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "up", "object": "model"}]})
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        if isinstance(answer, list):  # a stream of events
            return httpx.Response(
                200, headers={"content-type": "text/event-stream"}, stream=_CountingStream(answer, self)
            )
        return httpx.Response(200, json=answer)


@contextmanager
def gateway(upstream: ScriptedUpstream, **options: Any) -> Iterator[tuple[TestClient, MockTGIServer]]:
    """The gateway app over the scripted upstream and a mock aligner (``mock_tgi``), in process."""
    with mock_tgi() as aligner_server:
        config = GatewayConfig(upstream="http://upstream.test/v1", aligner_urls=["http://mock-tgi"], **options)
        app = create_gateway_app(config, upstream_transport=httpx.MockTransport(upstream.handle))
        with TestClient(app) as client:
            yield client, aligner_server


def expected(draft: str = DRAFT, messages: list[dict[str, Any]] | None = None, **options: Any) -> Any:
    """What ``TGIAligner`` returns for the draft against the mock aligner (call inside ``gateway``)."""
    conversation = [m for m in (messages or MESSAGES)]
    return TGIAligner("http://mock-tgi", max_retries=0).align(conversation, draft, **options)


def sse_events(text: str) -> list[Any]:
    """The decoded ``data:`` events of an SSE body (``[DONE]`` as the string)."""
    out: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[6:]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
