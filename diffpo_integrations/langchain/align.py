"""``DiffPOAlign``: the alignment step of a chain, ``prompt | llm | DiffPOAlign()``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, RemoveMessage, convert_to_messages
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from langchain_core.runnables.utils import AddableDict

from diffpo_integrations.core.errors import ConversationNotFoundError, InputError
from diffpo_integrations.langchain._capture import PROMPT_CAPTURE
from diffpo_integrations.langchain._convert import ConversationLike, has_tool_calls, to_chunk
from diffpo_integrations.langchain._engine import AlignerSettings, Resolve, async_notifier, sync_notifier
from diffpo_integrations.langchain._runs import TracedAligner

__all__ = ["DiffPOAlign"]

T = TypeVar("T")

ALIGNED_ID_SUFFIX = "-aligned"
"""Added to the draft's id to name the aligned message in a LangGraph state."""

_NOT_FOUND = (
    "DiffPOAlign could not find the conversation that produced this draft: no chat model ran in the "
    "same chain before it. Run it after the model in one chain (prompt | llm | DiffPOAlign()), or pass "
    'the conversation explicitly: invoke it with {"messages": [...], "draft": ...}, or build it with '
    "DiffPOAlign(conversation=[...])."
)


@dataclass
class _Call:
    """One input, read: the draft, the conversation if the input carried it, and how to shape the output."""

    draft: AIMessage
    conversation: ConversationLike | None
    render: Callable[[AIMessage], Any]
    graph: bool = False
    """LangGraph form: the output is a state update, and an empty one when there is nothing to align."""

    @property
    def message_id(self) -> str | None:
        """Id of the aligned message: a new one in a graph, so that LangGraph streams it as new."""
        if self.graph and self.draft.id is not None:
            return f"{self.draft.id}{ALIGNED_ID_SUFFIX}"
        return self.draft.id

    def skip(self) -> bool:
        """Nothing to align: a tool-calling turn, or (in a graph) an answer aligned already."""
        return has_tool_calls(self.draft) or (self.graph and _already_aligned(self.draft))


def _already_aligned(message: AIMessage) -> bool:
    meta = message.response_metadata.get("diffpo")
    return isinstance(meta, dict) and "aligned" in meta


def _graph_update(draft: AIMessage, aligned: AIMessage) -> dict[str, list[BaseMessage]]:
    # A new id makes LangGraph's messages stream show the answer; the reducer drops the draft.
    if draft.id is None:
        return {"messages": [aligned]}
    return {"messages": [RemoveMessage(id=draft.id), aligned.model_copy(update={"id": draft.id + ALIGNED_ID_SUFFIX})]}


def _read(value: Any) -> _Call:
    if isinstance(value, str):
        return _Call(AIMessage(content=value), None, lambda m: m.text)
    if isinstance(value, AIMessage):
        return _Call(value, None, lambda m: m)
    if isinstance(value, dict) and "draft" in value:
        raw = value["draft"]
        draft = raw if isinstance(raw, AIMessage) else AIMessage(content=str(raw))
        as_text = not isinstance(raw, AIMessage)
        return _Call(draft, value.get("messages"), lambda m: {**value, "aligned": m.text if as_text else m})
    if isinstance(value, dict) and value.get("messages"):
        messages = convert_to_messages(value["messages"])
        if isinstance(messages[-1], AIMessage):
            # LangGraph form: the update removes the draft and adds the aligned answer (`add_messages`).
            draft = messages[-1]
            return _Call(draft, messages[:-1], partial(_graph_update, draft), graph=True)
    msg = (
        "DiffPOAlign takes an AIMessage, a string, {'messages': [...], 'draft': ...}, or "
        f"{{'messages': [..., AIMessage]}}; got {type(value).__name__}"
    )
    raise InputError(msg)


class _Upstream(Generic[T]):
    """The step's input iterator, which the early stream policy can close (closing the base model's stream)."""

    def __init__(self, source: Iterator[T]) -> None:
        self._source = source
        self._stopped = False

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._stopped:
            raise StopIteration
        return next(self._source)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            close = getattr(self._source, "close", None)
            if close is not None:
                close()


class _AsyncUpstream(Generic[T]):
    """Async :class:`_Upstream`."""

    def __init__(self, source: AsyncIterator[T]) -> None:
        self._source = source
        self._stopped = False

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        if self._stopped:
            raise StopAsyncIteration
        return await self._source.__anext__()

    async def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            aclose = getattr(self._source, "aclose", None)
            if aclose is not None:
                await aclose()


async def _aiter(value: T) -> AsyncIterator[T]:
    yield value


def _merge(chunks: Sequence[Any]) -> Any:
    """Merge streamed dict inputs (``RunnableParallel`` yields ``AddableDict`` pieces)."""
    merged = chunks[0]
    for chunk in chunks[1:]:
        merged = merged + chunk if isinstance(merged, AddableDict) else chunk
    return merged


class DiffPOAlign(AlignerSettings, RunnableSerializable[Any, Any]):
    """Align a chat model's answer with DiffPO, as one step of a LangChain chain.

    The step finds the conversation that produced the draft by itself (prompt capture from the
    run tree), so ``prompt | llm | DiffPOAlign()`` needs nothing else; it raises
    ``ConversationNotFoundError`` rather than guess between several models. Tool-calling messages
    pass through unaligned. The aligned ``AIMessage`` keeps the draft's id, tool calls, usage and
    response metadata, and adds ``response_metadata["diffpo"]`` (``AlignResult.metadata()``).
    As a LangGraph node (input ``{"messages": [..., AIMessage]}``) it returns an update only: the
    draft removed and the aligned message added under the id ``<draft id>-aligned`` (so the
    ``messages`` stream mode shows it, token by token), or ``{}`` for a tool-calling turn or an
    answer aligned already. The aligner call runs as a child model run ``DiffPOAligner``.

    Setup:
        .. code-block:: bash

            pip install "diffpo-integrations[langchain]"
            diffpo serve      # or a TGI serving a DiffPO checkpoint
            export DIFFPO_ALIGNER_URL=http://127.0.0.1:8080

    Key init args:
        aligner: Aligner | None
            Any aligner; ``None`` builds ``TGIAligner(aligner_url)`` on first use.
        aligner_url: str | None
            Server of the default aligner; default ``$DIFFPO_ALIGNER_URL``.
        conversation: list | None
            A fixed conversation to align against instead of the captured one.
        keep_prefix_tokens: int | None
            Draft tokens kept verbatim; ``None`` uses the aligner's setting.
        stream_policy: "full_draft" | "early"
            ``"full_draft"`` (default) waits for the whole draft: the local engine uses it as a
            speculative hint and the metadata is complete. ``"early"`` starts the aligner once the
            kept prefix has surely arrived (``keep_prefix_tokens + 1`` complete words) and stops
            reading the base model: the same answer, sooner, but the draft in the metadata is
            the partial one and the draft's usage and response metadata are not known.
        fail_policy: "closed" | "open"
            ``"closed"`` (default) raises the typed error. ``"open"`` returns the draft with
            ``response_metadata["diffpo"]["aligned"] == False``, warns (``FailOpenWarning``) and
            sends the custom callback event ``diffpo_fail_open``.

    Instantiate:
        .. code-block:: python

            from diffpo_integrations.langchain import DiffPOAlign
            from diffpo_integrations.backends import TGIAligner

            align = DiffPOAlign(aligner=TGIAligner("http://127.0.0.1:8080"))
            chain = prompt | llm | align

    Invoke:
        .. code-block:: python

            msg = chain.invoke({"question": "Name a prime."})
            msg.content, msg.response_metadata["diffpo"]["draft"]

            # Explicit conversation, no chain needed:
            align.invoke({"messages": [("user", "Name a prime.")], "draft": "9 is prime."})
            # -> {"messages": [...], "draft": "9 is prime.", "aligned": "..."}

    Stream:
        .. code-block:: python

            for chunk in chain.stream({"question": "Name a prime."}):
                print(chunk.content, end="")  # aligned tokens as the aligner produces them

    Async:
        .. code-block:: python

            msg = await chain.ainvoke({"question": "Name a prime."})
            async for chunk in chain.astream({"question": "Name a prime."}):
                print(chunk.content, end="")
            await chain.abatch([{"question": q} for q in questions], {"max_concurrency": 8})
    """

    conversation: list[BaseMessage | dict[str, Any] | tuple[str, str]] | None = None
    """A fixed conversation (LangChain messages, role/content dicts or pairs) used instead of capture."""

    # -- conversation ---------------------------------------------------------------------------

    def _resolver(self, explicit: ConversationLike | None, run_id: UUID) -> Resolve:
        def resolve(draft: AIMessage) -> ConversationLike:
            if explicit is not None:
                return explicit
            if self.conversation is not None:
                return self.conversation
            found = PROMPT_CAPTURE.find(run_id, draft.id, draft.text)
            if found is None:
                raise ConversationNotFoundError(_NOT_FOUND)
            return found

        return resolve

    # -- invoke ---------------------------------------------------------------------------------

    def _invoke(self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig) -> Any:
        call = _read(value)
        if call.skip():
            return {} if call.graph else value
        resolve = self._resolver(call.conversation, run_manager.run_id)
        traced = TracedAligner(self.alignment.aligner, manager=run_manager.get_child(), message_id=call.message_id)
        return call.render(self.alignment.align(resolve, call.draft, sync_notifier(run_manager), aligner=traced))

    async def _ainvoke(self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig) -> Any:
        call = _read(value)
        if call.skip():
            return {} if call.graph else value
        resolve = self._resolver(call.conversation, run_manager.run_id)
        traced = TracedAligner(self.alignment.aligner, amanager=run_manager.get_child(), message_id=call.message_id)
        aligned = await self.alignment.aalign(resolve, call.draft, async_notifier(run_manager), aligner=traced)
        return call.render(aligned)

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Align one draft (see the class docstring for the input forms)."""
        return self._call_with_config(self._invoke, input, config)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        """Async :meth:`invoke`."""
        return await self._acall_with_config(self._ainvoke, input, config)

    # -- streaming ------------------------------------------------------------------------------

    def _transform(
        self,
        values: Iterator[Any],
        run_manager: CallbackManagerForChainRun,
        config: RunnableConfig,
        upstream: _Upstream[Any],
    ) -> Iterator[Any]:
        first = next(values, None)
        if first is None:
            return
        if isinstance(first, dict):
            # Dict inputs need the whole conversation first: they give one output chunk.
            yield self._invoke(_merge([first, *values]), run_manager, config)
            return
        as_text = isinstance(first, str)

        def drafts() -> Iterator[AIMessageChunk]:
            try:
                yield to_chunk(first)
                for value in values:
                    yield to_chunk(value)
            finally:
                upstream.stop()

        resolve = self._resolver(None, run_manager.run_id)
        # The step's own output stream carries the aligned chunks: the aligner's run stays quiet.
        traced = TracedAligner(self.alignment.aligner, manager=run_manager.get_child(), hidden=True)
        for chunk in self.alignment.stream(resolve, drafts(), sync_notifier(run_manager), aligner=traced):
            if not as_text:
                yield chunk
            elif chunk.text:
                yield chunk.text

    async def _atransform(
        self,
        values: AsyncIterator[Any],
        run_manager: AsyncCallbackManagerForChainRun,
        config: RunnableConfig,
        upstream: _AsyncUpstream[Any],
    ) -> AsyncIterator[Any]:
        first = await anext(values, None)
        if first is None:
            return
        if isinstance(first, dict):
            rest = [value async for value in values]
            yield await self._ainvoke(_merge([first, *rest]), run_manager, config)
            return
        as_text = isinstance(first, str)

        async def drafts() -> AsyncIterator[AIMessageChunk]:
            try:
                yield to_chunk(first)
                async for value in values:
                    yield to_chunk(value)
            finally:
                await upstream.stop()

        resolve = self._resolver(None, run_manager.run_id)
        traced = TracedAligner(self.alignment.aligner, amanager=run_manager.get_child(), hidden=True)
        async for chunk in self.alignment.astream(resolve, drafts(), async_notifier(run_manager), aligner=traced):
            if not as_text:
                yield chunk
            elif chunk.text:
                yield chunk.text

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Align a stream of draft chunks, yielding aligned chunks as the aligner produces them."""
        upstream = _Upstream(input)
        yield from self._transform_stream_with_config(upstream, partial(self._transform, upstream=upstream), config)

    async def atransform(
        self, input: AsyncIterator[Any], config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        """Async :meth:`transform`."""
        upstream = _AsyncUpstream(input)
        async for chunk in self._atransform_stream_with_config(
            upstream, partial(self._atransform, upstream=upstream), config
        ):
            yield chunk

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:
        """Align one draft, streaming the aligned answer."""
        yield from self.transform(iter([input]), config, **kwargs)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:
        """Async :meth:`stream`."""
        async for chunk in self.atransform(_aiter(input), config, **kwargs):
            yield chunk
