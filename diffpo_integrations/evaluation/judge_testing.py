"""A scripted judge for tests: an OpenAI-compatible chat endpoint that records prompts and answers by script.

Use it in process through :meth:`ScriptedJudge.transport` (an ``httpx2.MockTransport`` for
:class:`~diffpo_integrations.evaluation.judge_client.JudgeClient`), or over loopback with
:func:`serve_judge` when the code under test builds its own client (``diffpo judge --judge-url``).

Example:
    >>> judge = ScriptedJudge(lambda system, user: "Fine. [[7]]")
    >>> with serve_judge(judge) as url:  # doctest: +SKIP
    ...     main(["judge", "--judge-url", url, "--judge-model", "scripted", ...])
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx2

__all__ = ["ScriptedJudge", "serve_judge"]


@dataclass
class ScriptedJudge:
    """The judge's state: its script, failures to answer first, and every request body received.

    Args:
        reply: ``(system, user) -> judgment`` for each chat completion.
        failures: HTTP statuses to answer, one per request, before answering by script.
    """

    reply: Callable[[str, str], str]
    failures: list[int] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def answer(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The status and JSON payload for one request body."""
        with self._lock:
            self.requests.append(body)
            failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            return failure, {"error": {"message": f"scripted failure {failure}"}}
        messages = body.get("messages") or []
        system = next((m["content"] for m in messages if m.get("role") == "system"), "")
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        try:
            content = self.reply(system, user)
        except Exception as exc:  # a broken script answers 500 with the reason, as a real server would
            return 500, {"error": {"message": f"the judge script failed: {exc!r}"}}
        return 200, {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }

    def user_prompts(self) -> list[str]:
        """The user message of every request received, in order."""
        return [m["content"] for b in self.requests for m in b["messages"] if m["role"] == "user"]

    def transport(self) -> httpx2.MockTransport:
        """An in-process transport answering every POST by script."""

        def handle(request: httpx2.Request) -> httpx2.Response:
            status, payload = self.answer(json.loads(request.content or b"{}"))
            headers = {"Retry-After": "0"} if status == 429 else {}
            return httpx2.Response(status, json=payload, headers=headers)

        return httpx2.MockTransport(handle)


@contextmanager
def serve_judge(judge: ScriptedJudge) -> Iterator[str]:
    """Serve ``judge`` on 127.0.0.1 (a free port) in a thread; yield its base URL; always stop it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            status, payload = judge.answer(json.loads(self.rfile.read(length) or b"{}"))
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return  # keep test output quiet

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
