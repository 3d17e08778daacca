"""Shared by the LangChain integration tests: the base model pointed at the embedded server."""

from __future__ import annotations

from typing import Any

from langchain_openai import ChatOpenAI
from openai import DefaultAsyncHttpxClient

MAX_TOKENS = 16
"""Small budgets keep CPU runs short; the answers stay long enough to align."""


def base_model(url: str, **kwargs: Any) -> ChatOpenAI:
    """The base model: a real API chat model class pointed at the embedded server.

    Each instance gets its own async HTTP client: langchain-openai otherwise shares one per URL,
    and its connections die with the event loop of the test that opened them.
    """
    params: dict[str, Any] = {
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
        "stream_usage": True,
        "http_async_client": DefaultAsyncHttpxClient(),
        **kwargs,
    }
    return ChatOpenAI(base_url=f"{url}/v1", api_key="not-needed", model="smollm2", **params)
