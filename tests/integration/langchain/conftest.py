"""The real embedded server for the LangChain integration tests, started once per session.

The server plays both parts offline: ``/v1/chat/completions`` is the base model (reached through
``langchain_openai.ChatOpenAI``) and the TGI routes are the aligner. SmolLM2-135M-Instruct stands
in for a DiffPO checkpoint.
"""

from __future__ import annotations

import pytest
from langchain_live import MAX_TOKENS, base_model
from langchain_openai import ChatOpenAI

from diffpo_integrations.backends import TGIAligner


@pytest.fixture
def live_llm(live_url: str) -> ChatOpenAI:
    return base_model(live_url)


@pytest.fixture
def live_aligner(live_url: str) -> TGIAligner:
    return TGIAligner(live_url, max_new_tokens=MAX_TOKENS)
