"""The gateway in front of the real embedded server, which plays both the upstream and the aligner.

SmolLM2-135M-Instruct stands in for a DiffPO checkpoint (aligner) and for the base model (upstream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from fastapi import FastAPI, Request  # module level: FastAPI reads the handler's annotations from here

from diffpo_integrations.gateway import GatewayConfig, create_gateway_app


@pytest.fixture(scope="session")
def start_gateway(live_url: str) -> Callable[..., AbstractContextManager[str]]:
    """``with start_gateway(**config) as url``: a gateway served in a thread (upstream and aligner default
    to the embedded server)."""
    from diffpo_integrations.server.serve import serve_in_thread

    @contextmanager
    def start(**options: Any) -> Iterator[str]:
        options.setdefault("upstream", live_url)
        options.setdefault("aligner_urls", [live_url])
        with serve_in_thread(create_gateway_app(GatewayConfig(**options)), timeout=60) as url:
            yield url

    return start


@pytest.fixture(scope="session")
def gateway_url(start_gateway: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    with start_gateway() as url:
        yield url


@contextmanager
def scripted_chat_upstream(
    answer: Callable[[dict[str, Any]], tuple[dict[str, Any], str]],
) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A served upstream whose ``/v1/chat/completions`` answers ``answer(body)`` (a message and its
    finish reason) as a ``chat.completion``; its URL and every body it was sent."""
    from diffpo_integrations.server.serve import serve_in_thread

    seen: list[dict[str, Any]] = []
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        seen.append(body)
        message, finish = answer(body)
        return {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": 1,
            "model": "scripted",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
        }

    with serve_in_thread(app) as url:
        yield url, seen
