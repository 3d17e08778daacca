"""``DiffPOMiddleware``: align an agent's final answers (``langchain.agents.create_agent``)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.callbacks import adispatch_custom_event, dispatch_custom_event
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig, ensure_config
from langchain_core.runnables.config import (
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    set_config_context,
)
from langchain_core.runnables.utils import coro_with_context

from diffpo_integrations.core.aligner import Aligner
from diffpo_integrations.core.types import AlignResult, FailPolicy
from diffpo_integrations.langchain._convert import has_tool_calls
from diffpo_integrations.langchain._engine import FAIL_OPEN_EVENT, AlignerSettings, Alignment
from diffpo_integrations.langchain._runs import DRAFT_TAG, NOSTREAM_TAG, TracedAligner

__all__ = ["DiffPOMiddleware"]


def _notify(result: AlignResult) -> None:
    # The model node runs inside a LangGraph run, so the event attaches to it; outside one, the
    # warning already raised is the whole report.
    with contextlib.suppress(RuntimeError):
        dispatch_custom_event(FAIL_OPEN_EVENT, result.metadata())


async def _anotify(result: AlignResult) -> None:
    with contextlib.suppress(RuntimeError):
        await adispatch_custom_event(FAIL_OPEN_EVENT, result.metadata())


def _final_answer(response: ModelResponse[Any]) -> tuple[int, AIMessage] | None:
    """The AI answer to align and its index: none for tool-calling turns and structured output."""
    if response.structured_response is not None:
        return None
    for i, message in enumerate(response.result):
        if isinstance(message, AIMessage):
            return None if has_tool_calls(message) else (i, message)
    return None


def _hidden(config: RunnableConfig) -> RunnableConfig:
    """The model node's config, with the model's own tokens left out of LangGraph's ``messages`` stream.

    A final answer streams as the aligner's tokens instead; a tool-calling turn reaches the stream
    once, as the node's output message. ``diffpo:draft`` marks the tokens in ``astream_events``.
    """
    return {**config, "tags": [*config.get("tags", []), NOSTREAM_TAG, DRAFT_TAG]}


def _replace(response: ModelResponse[Any], index: int, aligned: AIMessage) -> ModelResponse[Any]:
    result = [*response.result[:index], aligned, *response.result[index + 1 :]]
    return ModelResponse(result=result, structured_response=response.structured_response)


class DiffPOMiddleware(AgentMiddleware[Any, Any, Any]):
    """Agent middleware that aligns the agent's final answer and leaves tool-calling turns alone.

    It wraps each model call (``wrap_model_call`` / ``awrap_model_call``): a response without tool
    calls or structured output is the final answer, and is aligned against the conversation the
    model saw (system prompt, user turns, earlier answers, and tool calls with their results
    folded into the user turn they serve). The model call is tagged ``nostream``: in LangGraph's
    ``messages`` mode the final answer streams as the aligner's tokens (a ``DiffPOAligner`` model
    run), a tool-calling turn once as the node's message.

    Setup:
        .. code-block:: bash

            pip install "diffpo-integrations[agents]"

    Key init args:
        aligner: Aligner | None
            Any aligner; ``None`` builds ``TGIAligner(aligner_url)`` on first use.
        aligner_url, keep_prefix_tokens, fail_policy:
            As in :class:`DiffPOAlign`.

    Instantiate:
        .. code-block:: python

            from langchain.agents import create_agent
            from diffpo_integrations.langchain import DiffPOMiddleware

            agent = create_agent(model, tools=[get_weather], middleware=[DiffPOMiddleware()])

    Invoke:
        .. code-block:: python

            state = agent.invoke({"messages": [("user", "Weather in Paris?")]})
            state["messages"][-1].response_metadata["diffpo"]["aligned"]   # True

    Stream:
        .. code-block:: python

            for message, meta in agent.stream({"messages": [("user", "Weather in Paris?")]}, stream_mode="messages"):
                print(message.text, end="")   # the aligned answer's tokens; the draft's are hidden

    Async:
        .. code-block:: python

            state = await agent.ainvoke({"messages": [("user", "Weather in Paris?")]})
    """

    def __init__(
        self,
        aligner: Aligner | None = None,
        *,
        aligner_url: str | None = None,
        keep_prefix_tokens: int | None = None,
        fail_policy: FailPolicy = "closed",
    ) -> None:
        super().__init__()
        settings: dict[str, Any] = {"aligner": aligner, "keep_prefix_tokens": keep_prefix_tokens}
        if aligner_url is not None:
            settings["aligner_url"] = aligner_url
        self._settings = AlignerSettings(fail_policy=fail_policy, **settings)

    @property
    def alignment(self) -> Alignment:
        """The alignment settings, with the aligner built on first use."""
        return self._settings.alignment

    @staticmethod
    def _conversation(request: ModelRequest[Any]) -> Callable[[AIMessage], Sequence[BaseMessage]]:
        system: list[BaseMessage] = [request.system_message] if request.system_message is not None else []
        return lambda _draft: [*system, *request.messages]

    def wrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], ModelResponse[Any]],
    ) -> ModelResponse[Any]:
        """Call the model (its tokens hidden from LangGraph's stream), then align a final answer."""
        config = ensure_config()
        with set_config_context(_hidden(config)) as context:
            response = context.run(handler, request)
        found = _final_answer(response)
        if found is None:
            return response
        index, draft = found
        traced = TracedAligner(
            self.alignment.aligner, manager=get_callback_manager_for_config(config), message_id=draft.id
        )
        aligned = self.alignment.align(self._conversation(request), draft, _notify, aligner=traced)
        return _replace(response, index, aligned)

    async def awrap_model_call(
        self,
        request: ModelRequest[Any],
        handler: Callable[[ModelRequest[Any]], Awaitable[ModelResponse[Any]]],
    ) -> ModelResponse[Any]:
        """Async :meth:`wrap_model_call`."""
        config = ensure_config()
        with set_config_context(_hidden(config)) as context:
            response = await coro_with_context(handler(request), context)
        found = _final_answer(response)
        if found is None:
            return response
        index, draft = found
        traced = TracedAligner(
            self.alignment.aligner, amanager=get_async_callback_manager_for_config(config), message_id=draft.id
        )
        aligned = await self.alignment.aalign(self._conversation(request), draft, _anotify, aligner=traced)
        return _replace(response, index, aligned)
