"""A scripted OpenAI-compatible upstream on loopback, and helpers for gateway tests."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from fastapi.testclient import TestClient

from diffpo_integrations.backends.testing import MockTGIServer, mock_tgi
from diffpo_integrations.backends.tgi import TGIAligner
from diffpo_integrations.gateway import GatewayConfig, create_gateway_app

DRAFT = "Seven is a prime number because its only divisors are one and seven."
QUESTION = "Is seven a prime number?"
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
USAGE = {"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24}
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "7"}'}}
FIELD_PROMPT = (
    "Your input fields are:\n1. `question` (str):\nYour output fields are:\n1. `answer` (str):\n"
    "All interactions will be structured in the following way, with the appropriate values filled in.\n\n"
    "[[ ## question ## ]]\n{question}\n\n[[ ## answer ## ]]\n{answer}\n\n[[ ## completed ## ]]\n"
    "In adhering to this structure, your objective is: \n        Given the fields `question`, produce the fields `answer`."
)
"""The system prompt DSPy 3.4.1's default ChatAdapter sends for ``dspy.Predict("question -> answer")``."""
FIELD_MESSAGES = [
    {"role": "system", "content": FIELD_PROMPT},
    {
        "role": "user",
        "content": f"[[ ## question ## ]]\n{QUESTION}\n\nRespond with the corresponding output fields, starting with "
        "the field `[[ ## answer ## ]]`, and then ending with the marker for `[[ ## completed ## ]]`.",
    },
]


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


@dataclass
class Seen:
    """One request the scripted upstream received."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Reply:
    """A scripted answer: a status and a JSON body, after a delay."""

    status: int
    body: Any
    delay: float = 0.0
    headers: dict[str, str] | None = None


@dataclass
class ScriptedUpstream:
    """A loopback OpenAI upstream: answers each chat request with the next scripted answer
    (a dict, a :class:`Reply`, or a list of stream events), and records every request.

    Streams are written an event at a time, ``event_delay`` apart, so a client that leaves early
    is seen: ``written`` counts the events sent and ``closed`` says the client went away.
    """

    answers: list[Any] = field(default_factory=list)
    event_delay: float = 0.02
    requests: list[Seen] = field(default_factory=list)
    written: int = 0
    closed: bool = False
    url: str = ""

    def bodies(self) -> list[Any]:
        return [r.body for r in self.requests if r.method == "POST"]

    def _next(self) -> Any:
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append(Seen(request.method, request.path, dict(request.headers), body))
        if request.method == "GET" and request.path == "/v1/models":
            return web.json_response({"object": "list", "data": [{"id": "up", "object": "model"}]})
        answer = self._next()
        if isinstance(answer, Reply):
            await asyncio.sleep(answer.delay)
            return web.json_response(answer.body, status=answer.status, headers=answer.headers)
        if isinstance(answer, list):
            return await self._stream(request, answer)
        return web.json_response(answer)

    async def _stream(self, request: web.Request, events: list[dict[str, Any]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        try:
            for event in events:
                await response.write(f"data: {json.dumps(event)}\n\n".encode())
                self.written += 1
                await asyncio.sleep(self.event_delay)
            await response.write(b"data: [DONE]\n\n")
        except (ConnectionError, asyncio.CancelledError):
            self.closed = True
            raise
        return response


@contextmanager
def serve_upstream(upstream: ScriptedUpstream) -> Iterator[ScriptedUpstream]:
    """Serve ``upstream`` on 127.0.0.1 in a thread with its own event loop; sets ``upstream.url``."""
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", upstream._handle)
    runner = web.AppRunner(app, handler_cancellation=True)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    upstream.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield upstream
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@contextmanager
def gateway(scripted: ScriptedUpstream, **options: Any) -> Iterator[tuple[TestClient, MockTGIServer]]:
    """The gateway app over the scripted upstream and a mock aligner (``mock_tgi``), in process."""
    with mock_tgi() as aligner_server, serve_upstream(scripted):
        options.setdefault("upstream", scripted.url)
        config = GatewayConfig(aligner_urls=["http://mock-tgi"], **options)
        with TestClient(create_gateway_app(config)) as client:
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


@contextmanager
def served_gateway(config: GatewayConfig) -> Iterator[str]:
    """The gateway app under a real uvicorn on a free loopback port, in a thread; yields its URL.

    uvicorn's own logging setup is skipped, so its records reach the root logger (and ``caplog``).
    """
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            create_gateway_app(config), host="127.0.0.1", port=0, log_level=config.log_level, log_config=None
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the gateway stopped while starting"
        assert time.monotonic() < deadline, "the gateway did not start within 10 s"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
