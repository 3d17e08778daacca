"""LangChain's standard integration tests for ChatDiffPO, wrapping ChatOpenAI pointed at the embedded server."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_live import MAX_TOKENS, base_model
from langchain_tests.integration_tests import ChatModelIntegrationTests

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.langchain import ChatDiffPO

pytestmark = pytest.mark.integration


class TestChatDiffPOIntegration(ChatModelIntegrationTests):
    url: str = ""

    @pytest.fixture(autouse=True)
    def _live(self, live_url: str) -> None:
        type(self).url = live_url

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return ChatDiffPO

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"llm": base_model(self.url), "aligner": TGIAligner(self.url, max_new_tokens=MAX_TOKENS)}

    @property
    def has_tool_calling(self) -> bool:
        return False  # SmolLM2 behind the embedded server's chat route has no tool calling

    @property
    def has_structured_output(self) -> bool:
        return False  # structured output needs tool calling or JSON mode, which the base model lacks

    @property
    def supports_json_mode(self) -> bool:
        return False  # the embedded chat route has no response_format

    @property
    def returns_usage_metadata(self) -> bool:
        # The wrapped model's run and the aligner's run report their tokens, so that a trace counts
        # each token once; ChatDiffPO's own run reports none (see the "Agents" section of the docs).
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False  # SmolLM2-135M-Instruct is text-only
