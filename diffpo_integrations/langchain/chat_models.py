"""``ChatDiffPO``: any chat model, with its answers aligned by DiffPO."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, TypeVar
from uuid import UUID, uuid4

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, message_chunk_to_message
from langchain_core.messages.ai import add_ai_message_chunks
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, ensure_config
from langchain_core.runnables.config import get_callback_manager_for_config
from langchain_core.tools import BaseTool
from langchain_core.tracers._streaming import _StreamingCallbackHandler

from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.langchain._engine import AlignerSettings, async_notifier, sync_notifier
from diffpo_integrations.langchain._runs import (
    DRAFT_TAG,
    NOSTREAM_TAG,
    TracedAligner,
    achild_manager,
    child_manager,
    inherit,
)

__all__ = ["ChatDiffPO"]

_Msg = TypeVar("_Msg", bound=AIMessage)
"""An AI message or chunk."""
_Manager = TypeVar("_Manager", CallbackManager, AsyncCallbackManager)


def _child_config(run_manager: CallbackManagerForLLMRun | None) -> RunnableConfig:
    """Config that runs the wrapped model as a child of this model's run (one trace, nested).

    The child is tagged ``nostream`` (LangGraph's ``messages`` mode then shows only this model's
    aligned tokens, not the draft's) and ``diffpo:draft`` (``astream_events`` tells them apart).
    """
    if run_manager is None:
        return {}
    manager = child_manager(run_manager)
    manager.add_tags([NOSTREAM_TAG, DRAFT_TAG], inherit=False)
    return {"callbacks": manager}


def _achild_config(run_manager: AsyncCallbackManagerForLLMRun | None) -> RunnableConfig:
    """Async :func:`_child_config`."""
    if run_manager is None:
        return {}
    manager = achild_manager(run_manager)
    manager.add_tags([NOSTREAM_TAG, DRAFT_TAG], inherit=False)
    return {"callbacks": manager}


_stream_children: ContextVar[tuple[CallbackManager, AsyncCallbackManager] | None] = ContextVar(
    "diffpo_stream_children", default=None
)
"""The children managers of the ``stream``/``astream`` run in progress (langchain-core gives ``_stream``
no run manager): :meth:`ChatDiffPO.stream` picks the run id, so it knows the parent of the children."""


def _children(config: RunnableConfig, run_id: UUID) -> tuple[CallbackManager, AsyncCallbackManager]:
    parent = get_callback_manager_for_config(config)
    return (
        inherit(CallbackManager(handlers=[], parent_run_id=run_id), parent),
        inherit(AsyncCallbackManager(handlers=[], parent_run_id=run_id), parent),
    )


def _tagged(manager: _Manager) -> RunnableConfig:
    manager = manager.copy()
    manager.add_tags([NOSTREAM_TAG, DRAFT_TAG], inherit=False)
    return {"callbacks": manager}


def _result(chunks: list[AIMessageChunk]) -> ChatResult:
    message = message_chunk_to_message(add_ai_message_chunks(*chunks)) if chunks else AIMessage(content="")
    return ChatResult(generations=[ChatGeneration(message=message)])


def _without_usage(message: _Msg) -> _Msg:
    # The wrapped model's run reports its tokens and the aligner's run its own: reporting them
    # again on this run would count them twice in a trace.
    return message.model_copy(update={"usage_metadata": None}) if message.usage_metadata else message


class ChatDiffPO(AlignerSettings, BaseChatModel):
    """A chat model whose answers are aligned by DiffPO: wrap any LangChain chat model.

    The aligner sees exactly the messages sent to the model (system, human and AI turns, earlier
    AI answers as the base model gave them, as the official MT-bench inference does). Answers with
    tool calls, and ``with_structured_output``, pass through unaligned. Response metadata of the
    wrapped model is kept; DiffPO's is added under ``response_metadata["diffpo"]``.
    ``_llm_type``, ``_identifying_params`` and the LangSmith params are the wrapped model's.

    The wrapped model and the aligner run as child runs of this one: the wrapped model's tagged
    ``nostream`` and ``diffpo:draft`` (LangGraph's ``messages`` mode shows only the aligned
    tokens, and tool-call chunks once), the aligner's as a model call ``DiffPOAligner``. Each
    reports its own tokens, so this model's message carries no ``usage_metadata``: a trace
    counts each token once (``get_usage_metadata_callback()`` gives the totals per model).

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

    def _traced(self, run_manager: CallbackManagerForLLMRun | None) -> TracedAligner | None:
        if run_manager is None:
            return None
        return TracedAligner(self.alignment.aligner, manager=child_manager(run_manager), hidden=True)

    def _atraced(self, run_manager: AsyncCallbackManagerForLLMRun | None) -> TracedAligner | None:
        if run_manager is None:
            return None
        return TracedAligner(self.alignment.aligner, amanager=achild_manager(run_manager), hidden=True)

    # -- generation -----------------------------------------------------------------------------
    #
    # langchain-core hands ``_stream`` no run manager, so a streamed call cannot nest its children
    # under this model's run. ``invoke`` therefore always goes through ``_generate`` (which gets
    # it) and streams there, reporting the aligned tokens itself, when a streaming handler
    # listens (LangGraph's ``messages`` mode, ``astream_events``) or ``streaming`` is set.

    def _should_stream(self, *, async_api: bool, run_manager: Any = None, **kwargs: Any) -> bool:
        # Asked with a run manager only by invoke's routing; stream/astream ask without one.
        return run_manager is None and super()._should_stream(async_api=async_api, **kwargs)

    def _wants_tokens(self, run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None) -> bool:
        if self.streaming:
            return True
        handlers = run_manager.handlers if run_manager is not None else []
        return any(isinstance(h, _StreamingCallbackHandler) for h in handlers)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        config = _child_config(run_manager)
        traced = self._traced(run_manager)
        convo = self._conversation(messages)
        notify = sync_notifier(run_manager)
        if self._wants_tokens(run_manager):
            chunks: list[AIMessageChunk] = []
            drafts = self.llm.stream(messages, config, stop=self._stop(stop), **kwargs)
            for chunk in self.alignment.stream(convo, drafts, notify, aligner=traced):
                chunks.append(_without_usage(chunk))
                if run_manager is not None:
                    run_manager.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunks[-1]))
            return _result(chunks)
        draft = self.llm.invoke(messages, config, stop=self._stop(stop), **kwargs)
        message = self.alignment.align(convo, draft, notify, aligner=traced)
        return ChatResult(generations=[ChatGeneration(message=_without_usage(message))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        config = _achild_config(run_manager)
        traced = self._atraced(run_manager)
        convo = self._conversation(messages)
        notify = async_notifier(run_manager)
        if self._wants_tokens(run_manager):
            chunks: list[AIMessageChunk] = []
            drafts = self.llm.astream(messages, config, stop=self._stop(stop), **kwargs)
            async for chunk in self.alignment.astream(convo, drafts, notify, aligner=traced):
                chunks.append(_without_usage(chunk))
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunks[-1]))
            return _result(chunks)
        draft = await self.llm.ainvoke(messages, config, stop=self._stop(stop), **kwargs)
        message = await self.alignment.aalign(convo, draft, notify, aligner=traced)
        return ChatResult(generations=[ChatGeneration(message=_without_usage(message))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        children = _stream_children.get()
        config = _child_config(run_manager) if run_manager or not children else _tagged(children[0])
        traced = self._traced(run_manager) or (
            TracedAligner(self.alignment.aligner, manager=children[0], hidden=True) if children else None
        )
        drafts = self.llm.stream(messages, config, stop=self._stop(stop), **kwargs)
        convo = self._conversation(messages)
        for chunk in self.alignment.stream(convo, drafts, sync_notifier(run_manager), aligner=traced):
            yield ChatGenerationChunk(message=_without_usage(chunk))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        children = _stream_children.get()
        config = _achild_config(run_manager) if run_manager or not children else _tagged(children[1])
        traced = self._atraced(run_manager) or (
            TracedAligner(self.alignment.aligner, amanager=children[1], hidden=True) if children else None
        )
        drafts = self.llm.astream(messages, config, stop=self._stop(stop), **kwargs)
        convo = self._conversation(messages)
        async for chunk in self.alignment.astream(convo, drafts, async_notifier(run_manager), aligner=traced):
            yield ChatGenerationChunk(message=_without_usage(chunk))

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        """Stream the aligned answer; the wrapped model and the aligner run as children of this run."""
        config = ensure_config(config)
        run_id = config.get("run_id") or uuid4()
        token = _stream_children.set(_children(config, run_id))
        try:
            yield from super().stream(input, {**config, "run_id": run_id}, stop=stop, **kwargs)
        finally:
            with contextlib.suppress(ValueError):  # closed from another context: nothing to restore there
                _stream_children.reset(token)

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        """Async :meth:`stream`."""
        config = ensure_config(config)
        run_id = config.get("run_id") or uuid4()
        token = _stream_children.set(_children(config, run_id))
        try:
            async for chunk in super().astream(input, {**config, "run_id": run_id}, stop=stop, **kwargs):
                yield chunk
        finally:
            with contextlib.suppress(ValueError):
                _stream_children.reset(token)

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
