"""A deterministic stand-in for a TGI / ``diffpo serve`` server, for tests without sockets.

:func:`mock_tgi` installs an ``httpx2.MockTransport`` as the backends' HTTP client factory, so
``TGIAligner``, ``OpenAICompatAligner`` and ``AlignerPool`` talk to :class:`MockTGIServer` unchanged. The mock "model" continues any prompt with a short text derived
from a hash of the prompt, so different conversations get different, reproducible answers.

Example:
    >>> from diffpo_integrations.backends import TGIAligner
    >>> with mock_tgi() as server:
    ...     result = TGIAligner("http://mock-tgi").align([("user", "Hi")], "Hello there, friend.")
    >>> result.text.startswith("Hello")
    True
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2

from diffpo_integrations.backends._loop import use_client_factory
from diffpo_integrations.core.prompt import TokenSpan, assemble_answer, build_prompt, render_texts
from diffpo_integrations.core.templates import BUILTIN_TEMPLATES
from diffpo_integrations.core.types import coerce_messages

__all__ = ["MockTGIServer", "mock_continuation", "mock_tgi", "mock_tokenize", "mock_transport"]

_TOKEN = re.compile(r"<\|[a-z_]+\|>|\s*[^\s<]+|\s+|<")
_SPECIAL = {"<|im_start|>", "<|im_end|>"}
_STOP = "<|im_end|>"


def mock_tokenize(text: str) -> list[TokenSpan]:
    """Split ``text`` into word-like tokens with character spans (no added special tokens)."""
    return [TokenSpan(zlib.crc32(m.group().encode()) % 50_000, m.start(), m.end()) for m in _TOKEN.finditer(text)]


def mock_continuation(prompt: str) -> list[str]:
    """The mock model's greedy continuation of ``prompt``, as token texts ending with the stop token."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    return [" (aligned", f" {digest})", _STOP]


@dataclass
class MockTGIServer:
    """State of one mock server: which routes it offers, queued failures, and a request log.

    Args:
        align_route: offer ``/diffpo/align`` in ``/info`` (as ``diffpo serve`` does); ``False``
            imitates a plain TGI.
        failures: HTTP statuses to answer, one per request, before answering normally
            (429 carries ``Retry-After:`` :attr:`retry_after`).
    """

    align_route: bool = True
    failures: list[int] = field(default_factory=list)
    retry_after: str = "0"
    """``Retry-After`` sent with a queued 429."""
    requests: list[httpx2.Request] = field(default_factory=list)

    # -- routes -------------------------------------------------------------------------------

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if self.failures:
            return self._failure(self.failures.pop(0))
        path = request.url.path
        if request.method == "GET" and path == "/info":
            info: dict[str, Any] = {"model_id": "mock", "max_stop_sequences": 4}
            if self.align_route:
                info["diffpo"] = {"align_route": "/diffpo/align", "template": "chatml"}
            return httpx2.Response(200, json=info)
        if request.method == "GET" and path == "/health":
            return httpx2.Response(200)
        body = json.loads(request.content or b"{}")
        if path == "/tokenize":
            spans = mock_tokenize(body["inputs"])
            return httpx2.Response(
                200,
                json=[
                    {"id": s.id, "text": body["inputs"][s.start : s.stop], "start": s.start, "stop": s.stop}
                    for s in spans
                ],
            )
        if path in ("/", "/generate", "/generate_stream"):
            return self._generate(
                body, stream=path == "/generate_stream" or bool(body.get("stream")), as_list=path == "/"
            )
        if path == "/diffpo/align" and self.align_route:
            return self._align(body)
        return httpx2.Response(404, json={"error": f"no route {path}", "error_type": "not_found"})

    def _failure(self, status: int) -> httpx2.Response:
        error_type = {422: "validation", 429: "overloaded", 424: "generation", 500: "incomplete_generation"}.get(
            status, "unknown"
        )
        headers = {"Retry-After": self.retry_after} if status == 429 else {}
        return httpx2.Response(
            status, json={"error": f"mock failure {status}", "error_type": error_type}, headers=headers
        )

    def _generate(self, body: dict[str, Any], *, stream: bool, as_list: bool) -> httpx2.Response:
        inputs = body.get("inputs", "")
        params = body.get("parameters") or {}
        if not inputs:
            return httpx2.Response(
                422, json={"error": "Input validation error: `inputs` cannot be empty", "error_type": "validation"}
            )
        pieces = mock_continuation(inputs)[: int(params.get("max_new_tokens") or 20)]
        finish = "eos_token" if pieces[-1] == _STOP else "length"
        tokens = [
            {"id": zlib.crc32(p.encode()) % 50_000, "text": p, "logprob": 0.0, "special": p in _SPECIAL} for p in pieces
        ]
        text = "".join(p for p in pieces if p not in _SPECIAL)
        details = {
            "finish_reason": finish,
            "generated_tokens": len(pieces),
            "seed": None,
            "prefill": [],
            "tokens": tokens,
        }
        if stream:
            events = []
            for i, token in enumerate(tokens):
                last = i == len(tokens) - 1
                events.append(
                    {
                        "index": i + 1,
                        "token": token,
                        "generated_text": text if last else None,
                        "details": details if last else None,
                    }
                )
            payload = "".join(f"data:{json.dumps(e)}\n\n" for e in events)
            return httpx2.Response(200, content=payload.encode(), headers={"content-type": "text/event-stream"})
        answer = {"generated_text": text, "details": details}
        return httpx2.Response(200, json=[answer] if as_list else answer)

    def _align(self, body: dict[str, Any]) -> httpx2.Response:
        template = BUILTIN_TEMPLATES[body.get("template") or "chatml"]
        mode = body.get("prompt_mode", "official")
        messages = coerce_messages(body["messages"])
        texts = render_texts(template, messages, body["draft"], mode=mode)
        prompt = build_prompt(
            texts,
            mock_tokenize(texts.full),
            keep_prefix_tokens=body.get("keep_prefix_tokens", 6),
            mode=mode,
            stop=template.end_of_turn,
        )
        pieces = mock_continuation(prompt.text)[: body.get("max_new_tokens", 256)]
        text = assemble_answer(prompt.kept_text, "".join(p for p in pieces if p not in _SPECIAL), prompt.stop)
        result = {
            "text": text,
            "kept_prefix": prompt.kept_text.strip(),
            "kept_prefix_tokens": prompt.kept_draft_tokens,
            "generated_tokens": len(pieces),
            "finish_reason": "eos_token" if pieces[-1] == _STOP else "length",
            "details": {
                "prompt_tokens": prompt.prompt_tokens,
                "kept_tokens": prompt.kept_tokens,
                "route": "diffpo/align",
            },
        }
        if not body.get("stream"):
            return httpx2.Response(200, json=result)
        events = [{"text": text[: len(text) // 2]}, {"text": text[len(text) // 2 :]}, {"text": "", "result": result}]
        payload = "".join(f"data: {json.dumps(e)}\n\n" for e in events)
        return httpx2.Response(200, content=payload.encode(), headers={"content-type": "text/event-stream"})


@contextmanager
def mock_transport(handler: Callable[[httpx2.Request], httpx2.Response]) -> Iterator[None]:
    """Answer every backend HTTP request with ``handler`` while the block runs; no socket is opened.

    On exit the HTTP client factory that was in use before is restored (nested blocks unwind in order).
    """
    transport = httpx2.MockTransport(handler)
    with use_client_factory(lambda: httpx2.AsyncClient(transport=transport)):
        yield


@contextmanager
def mock_tgi(align_route: bool = True, failures: list[int] | None = None) -> Iterator[MockTGIServer]:
    """Route every backend HTTP request to a :class:`MockTGIServer` while the block runs.

    Any host name works (``http://mock-tgi``); no socket is opened. On exit the HTTP client factory
    that was in use before is restored.
    """
    server = MockTGIServer(align_route=align_route, failures=list(failures or []))
    # Look the handler up per request, so a test can wrap or replace server.handle.
    with mock_transport(lambda request: server.handle(request)):
        yield server
