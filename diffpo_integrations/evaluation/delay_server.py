"""A tiny HTTP/1.1 server that answers TGI and DiffPO routes after a fixed delay, for overhead benchmarks.

It speaks just enough HTTP (keep-alive, ``Content-Length`` bodies) for ``huggingface_hub``'s clients:
``GET /info`` (announcing the ``/diffpo/align`` route), ``POST /diffpo/align``, ``POST /``,
``POST /generate`` and, as an OpenAI upstream, ``POST /v1/chat/completions`` and ``GET /v1/models``. Every POST answers the same canned JSON after ``delay`` seconds, so whatever a
client adds on top of the delay is the client's own cost. Run it in its own process
(``python -m diffpo_integrations.evaluation.delay_server --delay-ms 20``): it prints ``PORT <n>``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

__all__ = ["ALIGN_ANSWER", "CHAT_ANSWER", "GENERATE_ANSWER", "INFO", "delay_server", "serve"]

INFO = {
    "model_id": "delay-server",
    "max_stop_sequences": 4,
    "diffpo": {"align_route": "/diffpo/align", "template": "chatml"},
}
ALIGN_ANSWER = {
    "text": "Seven is a prime number: its only divisors are one and itself.",
    "kept_prefix": "Seven is a",
    "kept_prefix_tokens": 3,
    "generated_tokens": 12,
    "finish_reason": "eos_token",
    "details": {"prompt_tokens": 20, "kept_tokens": 3, "route": "diffpo/align", "forward_passes": 4},
}
CHAT_ANSWER = {
    "id": "chatcmpl-delay",
    "object": "chat.completion",
    "created": 1,
    "model": "delay-server",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Seven is a prime number: its only divisors are one and itself.",
            },
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 14, "total_tokens": 26},
}
GENERATE_ANSWER = {
    "generated_text": " prime number: its only divisors are one and itself.",
    "details": {"finish_reason": "eos_token", "generated_tokens": 12, "seed": None, "prefill": [], "tokens": []},
}


def _response(status: int, payload: object) -> bytes:
    body = json.dumps(payload).encode()
    head = f"HTTP/1.1 {status} OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        while True:
            request_line = await reader.readline()
            if not request_line:
                return
            method, path, _ = request_line.decode("latin-1").split(" ", 2)
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            if method == "GET" and path == "/info":
                writer.write(_response(200, INFO))
            elif method == "GET" and path == "/health":
                writer.write(_response(200, {}))
            elif method == "GET" and path == "/v1/models":
                writer.write(_response(200, {"object": "list", "data": [{"id": "delay-server", "object": "model"}]}))
            elif method == "POST" and path in ("/diffpo/align", "/", "/generate", "/v1/chat/completions"):
                await asyncio.sleep(delay)
                payload: object = {"/diffpo/align": ALIGN_ANSWER, "/v1/chat/completions": CHAT_ANSWER}.get(
                    path, GENERATE_ANSWER
                )
                writer.write(_response(200, [payload] if path == "/" else payload))
            else:
                writer.write(_response(404, {"error": f"no route {path}", "error_type": "not_found"}))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def serve(delay: float, port: int = 0) -> None:
    """Serve on 127.0.0.1 until cancelled; prints ``PORT <n>`` once listening."""
    server = await asyncio.start_server(lambda r, w: _connection(r, w, delay), "127.0.0.1", port, backlog=512)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


@contextmanager
def delay_server(delay_ms: float) -> Iterator[str]:
    """Start the server in a child process (so it does not share the client's GIL); yield its base URL."""
    cmd = [sys.executable, "-m", "diffpo_integrations.evaluation.delay_server", "--delay-ms", str(delay_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            msg = f"the delay server did not start (said {line!r})"
            raise RuntimeError(msg)
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with suppress(KeyboardInterrupt):
        asyncio.run(serve(args.delay_ms / 1000, args.port))


if __name__ == "__main__":
    _main()
