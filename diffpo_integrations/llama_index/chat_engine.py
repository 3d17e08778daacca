"""``DiffPOChatEngine``: any chat engine, with its answers aligned turn by turn."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine.types import (
    AGENT_CHAT_RESPONSE_TYPE,
    BaseChatEngine,
    StreamingAgentChatResponse,
)

from diffpo_integrations.core.aligner import Aligner
from diffpo_integrations.core.types import FailPolicy
from diffpo_integrations.llama_index._convert import DEFAULT_CONTEXT_TEMPLATE
from diffpo_integrations.llama_index.postprocessor import DiffPOResponsePostprocessor

__all__ = ["DiffPOChatEngine"]


class DiffPOChatEngine(BaseChatEngine):
    """Wrap a chat engine so that every answer is aligned by DiffPO.

    The inner engine keeps its own memory, which holds the base model's *drafts*; the user gets
    the aligned answers. That is what DiffPO expects: each turn is aligned given the earlier user
    turns and the base model's original earlier answers (the conversation sent to the aligner is
    the engine's history before the turn, then the user's message). ``chat``/``achat`` return an
    ``AgentChatResponse``; ``stream_chat``/``astream_chat`` a ``StreamingAgentChatResponse`` whose
    pieces are aligned text. Sources, source nodes and metadata are kept, DiffPO's result added
    under ``metadata["diffpo"]`` (for streams, once consumed).

    Setup:
        .. code-block:: bash

            pip install "diffpo-integrations[llama-index]"
            export DIFFPO_ALIGNER_URL=http://127.0.0.1:8080

    Key init args:
        chat_engine: the engine to wrap (``SimpleChatEngine``, ``index.as_chat_engine(...)``...).
        aligner, fail_policy, include_context, context_template, align_options:
            see :class:`DiffPOResponsePostprocessor`.

    Instantiate:
        .. code-block:: python

            from llama_index.core.chat_engine import SimpleChatEngine
            from diffpo_integrations.llama_index import DiffPOChatEngine

            chat = DiffPOChatEngine(SimpleChatEngine.from_defaults(llm=llm), aligner=aligner)

    Usage:
        .. code-block:: python

            chat.chat("Name a prime.").response
            chat.chat("And another one?").metadata["diffpo"]["draft"]

    Async:
        .. code-block:: python

            response = await chat.achat("Name a prime.")

    Stream:
        .. code-block:: python

            for piece in chat.stream_chat("Name a prime.").response_gen:
                print(piece, end="")
            async for piece in (await chat.astream_chat("And another?")).async_response_gen():
                print(piece, end="")
    """

    def __init__(
        self,
        chat_engine: BaseChatEngine,
        aligner: Aligner | None = None,
        *,
        fail_policy: FailPolicy = "closed",
        include_context: bool = False,
        context_template: str = DEFAULT_CONTEXT_TEMPLATE,
        align_options: Mapping[str, Any] | None = None,
        postprocessor: DiffPOResponsePostprocessor | None = None,
    ) -> None:
        self._chat_engine = chat_engine
        self.postprocessor = postprocessor or DiffPOResponsePostprocessor(
            aligner,
            fail_policy=fail_policy,
            include_context=include_context,
            context_template=context_template,
            align_options=align_options,
        )

    @property
    def chat_engine(self) -> BaseChatEngine:
        """The wrapped engine."""
        return self._chat_engine

    @property
    def chat_history(self) -> list[ChatMessage]:
        """The inner engine's history: user turns and the base model's draft answers."""
        return self._chat_engine.chat_history

    def reset(self) -> None:
        self._chat_engine.reset()

    def chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> AGENT_CHAT_RESPONSE_TYPE:
        convo = self._conversation(message, chat_history)
        response = self._chat_engine.chat(message, chat_history)
        return self.postprocessor.postprocess(response, convo, caller="DiffPOChatEngine.chat")

    async def achat(self, message: str, chat_history: list[ChatMessage] | None = None) -> AGENT_CHAT_RESPONSE_TYPE:
        convo = self._conversation(message, chat_history)
        response = await self._chat_engine.achat(message, chat_history)
        return await self.postprocessor.apostprocess(response, convo, caller="DiffPOChatEngine.achat")

    def stream_chat(self, message: str, chat_history: list[ChatMessage] | None = None) -> StreamingAgentChatResponse:
        convo = self._conversation(message, chat_history)
        response = self._chat_engine.stream_chat(message, chat_history)
        return self.postprocessor.postprocess(response, convo, caller="DiffPOChatEngine.stream_chat")

    async def astream_chat(
        self, message: str, chat_history: list[ChatMessage] | None = None
    ) -> StreamingAgentChatResponse:
        convo = self._conversation(message, chat_history)
        response = await self._chat_engine.astream_chat(message, chat_history)
        return await self.postprocessor.apostprocess(response, convo, caller="DiffPOChatEngine.astream_chat")

    def _conversation(self, message: str, chat_history: list[ChatMessage] | None) -> list[ChatMessage]:
        # Read before the inner engine runs: afterwards its memory already holds this turn.
        history = list(chat_history) if chat_history is not None else list(self._chat_engine.chat_history)
        return [*history, ChatMessage(role=MessageRole.USER, content=message)]
