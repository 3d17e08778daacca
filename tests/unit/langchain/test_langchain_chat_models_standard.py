"""LangChain's standard unit tests for ChatDiffPO (wrapping a ChatOpenAI that never connects)."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_fakes import EchoAligner
from langchain_openai import ChatOpenAI
from langchain_tests.unit_tests import ChatModelUnitTests

from diffpo_integrations.langchain import ChatDiffPO


class TestChatDiffPOUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatDiffPO

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Tool calling and structured output are the wrapped model's: ChatOpenAI offers both offline.
        return {"llm": ChatOpenAI(model="gpt-4o-mini", api_key="test"), "aligner": EchoAligner()}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"DIFFPO_ALIGNER_URL": "http://aligner.test:8080"},
            {"llm": ChatOpenAI(model="gpt-4o-mini", api_key="test")},
            {"aligner_url": "http://aligner.test:8080"},
        )
