"""``ChatDiffPO``: any chat model, with its answers aligned by DiffPO."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.tools import BaseTool

from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.langchain._engine import AlignerSettings, async_notifier, sync_notifier

__all__ = ["ChatDiffPO"]


def _child_config(run_manager: CallbackManagerForLLMRun | None) -> RunnableConfig:
    """Config that runs the wrapped model as a child of this model's run (one trace, nested)."""
    if run_manager is None:
        return {}
    manager = CallbackManager(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return {"callbacks": manager}


def _achild_config(run_manager: AsyncCallbackManagerForLLMRun | None) -> RunnableConfig:
    """Async :func:`_child_config`."""
    if run_manager is None:
        return {}
    manager = AsyncCallbackManager(handlers=[], parent_run_id=run_manager.run_id)
    manager.set_handlers(run_manager.inheritable_handlers)
    manager.add_tags(run_manager.inheritable_tags)
    manager.add_metadata(run_manager.inheritable_metadata)
    return {"callbacks": manager}


class ChatDiffPO(AlignerSettings, BaseChatModel):
    """A chat model whose answers are aligned by DiffPO: wrap any LangChain chat model.

    The aligner sees exactly the messages sent to the model (system, human and AI turns, earlier
    AI answers as the base model gave them, as the official MT-bench inference does). Answers with
    tool calls, and ``with_structured_output``, pass through unaligned. Usage and response
    metadata of the wrapped model are kept; DiffPO's are added under ``response_metadata["diffpo"]``.
    ``_llm_type``, ``_identifying_params`` and the LangSmith params are the wrapped model's.

    Setup:
        .. code-block:: bash

            pip install "diffpo-integrations[langchain]"
            export DIFFPO_ALIGNER_URL=http://127.0.0.1:8080

    Key init args:
        llm: BaseChatModel
            The base model whose answers are aligned. Set its sampling parameters on it:
            ``temperature`` etc. given to ``ChatDiffPO`` are ignored, as any unknown argument is.
        aligner: Aligner | None
            Any aligner; ``None`` builds ``TGIAligner(aligner_url)`` on first use.
        aligner_url, keep_prefix_tokens, stream_policy, fail_policy:
            As in :class:`DiffPOAlign`.
        stop: list[str] | None
            Default stop sequences passed to the wrapped model.

    Instantiate:
        .. code-block:: python

            from langchain_openai import ChatOpenAI
            from diffpo_integrations.backends import TGIAligner
            from diffpo_integrations.langchain import ChatDiffPO

            model = ChatDiffPO(llm=ChatOpenAI(model="gpt-4o-mini"), aligner=TGIAligner("http://127.0.0.1:8080"))

    Invoke:
        .. code-block:: python

            msg = model.invoke([("system", "Be brief."), ("human", "Name a prime.")])
            msg.content, msg.usage_metadata, msg.response_metadata["diffpo"]["draft"]

    Stream:
        .. code-block:: python

            full = None
            for chunk in model.stream("Name a prime."):
                full = chunk if full is None else full + chunk   # last chunk: chunk_position="last"

    Async:
        .. code-block:: python

            msg = await model.ainvoke("Name a prime.")
            async for chunk in model.astream("Name a prime."):
                print(chunk.content, end="")

    Tool calling:
        .. code-block:: python

            model_with_tools = model.bind_tools([get_weather])  # delegated to the wrapped model
            msg = model_with_tools.invoke("Weather in Paris?")  # tool calls come back unaligned

    Structured output:
        .. code-block:: python

            model.with_structured_output(Answer)  # the wrapped model's, unaligned
    """

    llm: BaseChatModel
    """The wrapped chat model that writes the drafts."""
    stop: list[str] | None = None
    """Default stop sequences for the wrapped model; a call's own ``stop`` wins."""
    streaming: bool = False
    """Route ``invoke`` through the streaming path."""

    @property
    def _llm_type(self) -> str:
        return self.llm._llm_type

    @property
    def _identifying_params(self) -> dict[str, Any]:
        aligner = repr(self.aligner) if self.aligner is not None else self.aligner_url
        return {**self.llm._identifying_params, "diffpo_aligner": aligner, "diffpo_fail_policy": self.fail_policy}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return self.llm._get_ls_params(stop=self._stop(stop), **kwargs)

    def _stop(self, stop: list[str] | None) -> list[str] | None:
        return stop or self.stop or None

    def _conversation(self, messages: list[BaseMessage]) -> Callable[[AIMessage], Sequence[BaseMessage]]:
        return lambda _draft: messages

    # -- generation -----------------------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        draft = self.llm.invoke(messages, _child_config(run_manager), stop=self._stop(stop), **kwargs)
        message = self.alignment.align(self._conversation(messages), draft, sync_notifier(run_manager))
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        draft = await self.llm.ainvoke(messages, _achild_config(run_manager), stop=self._stop(stop), **kwargs)
        message = await self.alignment.aalign(self._conversation(messages), draft, async_notifier(run_manager))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        drafts = self.llm.stream(messages, _child_config(run_manager), stop=self._stop(stop), **kwargs)
        for chunk in self.alignment.stream(self._conversation(messages), drafts, sync_notifier(run_manager)):
            yield ChatGenerationChunk(message=chunk)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        drafts = self.llm.astream(messages, _achild_config(run_manager), stop=self._stop(stop), **kwargs)
        async for chunk in self.alignment.astream(self._conversation(messages), drafts, async_notifier(run_manager)):
            yield ChatGenerationChunk(message=chunk)

    # -- delegation -----------------------------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools the way the wrapped model does; answers without tool calls are still aligned.

        Raises:
            ConfigurationError: the wrapped model's ``bind_tools`` does not return a plain binding
                of itself, so its tool arguments cannot travel through this model.
        """
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        bound = self.llm.bind_tools(tools, **kwargs)
        if isinstance(bound, RunnableBinding) and bound.bound is self.llm:
            # The formatted tools travel as call kwargs: each call passes them to the wrapped model.
            return self.bind(**bound.kwargs)
        msg = (
            f"{type(self.llm).__name__}.bind_tools does not return a binding of the model itself; "
            "bind the tools on the wrapped model and align its answers with DiffPOAlign instead"
        )
        raise ConfigurationError(msg)

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """The wrapped model's structured output, unaligned: DiffPO aligns free text, not data."""
        return self.llm.with_structured_output(schema, include_raw=include_raw, **kwargs)
