"""``DiffPOResponsePostprocessor``: align a LlamaIndex response object after it was produced.

LlamaIndex's node postprocessors run on retrieved nodes, before any answer exists, so alignment
needs a step of its own after synthesis. This class is that step, and the query engine, chat
engine and synthesizer wrappers all delegate to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

from llama_index.core.base.llms.types import ChatMessage, ChatResponse, MessageRole
from llama_index.core.base.response.schema import AsyncStreamingResponse, PydanticResponse, Response, StreamingResponse
from llama_index.core.chat_engine.types import AgentChatResponse, StreamingAgentChatResponse
from llama_index.core.schema import NodeWithScore, QueryBundle

from diffpo_integrations.core.aligner import Aligner
from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.core.types import AlignResult, FailPolicy, Message
from diffpo_integrations.llama_index._align import DiffPOAlignment, current_span_id
from diffpo_integrations.llama_index._convert import (
    DEFAULT_CONTEXT_TEMPLATE,
    conversation_from_chat,
    query_conversation,
)

__all__ = ["DiffPOResponsePostprocessor", "DiffPOStreamingChatResponse", "QueryOrChat"]

QueryOrChat = str | QueryBundle | Sequence[ChatMessage]
"""What a response answers: a query, or a chat (earlier turns then the user's message, last)."""

_R = TypeVar("_R")


@dataclasses.dataclass
class DiffPOStreamingChatResponse(StreamingAgentChatResponse):
    """A ``StreamingAgentChatResponse`` of aligned pieces, with ``metadata["diffpo"]`` once consumed."""

    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


class DiffPOResponsePostprocessor:
    """Align the answer of a LlamaIndex response; keep its type, source nodes and metadata.

    Handles ``Response``, ``StreamingResponse`` and ``AsyncStreamingResponse`` (query engines and
    synthesizers), ``AgentChatResponse`` and ``StreamingAgentChatResponse`` (chat engines). Structured
    ``PydanticResponse`` objects pass through unchanged. DiffPO's result (:meth:`AlignResult.metadata`)
    is added under ``response.metadata["diffpo"]``; for streams it appears once the stream is consumed.
    Streams stay lazy: the draft is read, then aligned, while the caller iterates.

    Setup:
        .. code-block:: bash

            pip install "diffpo-integrations[llama-index]"
            diffpo serve   # or any TGI serving a DiffPO checkpoint; URL in $DIFFPO_ALIGNER_URL

    Key init args:
        aligner: any :class:`~diffpo_integrations.core.Aligner` (default: ``TGIAligner()``).
        fail_policy: ``"closed"`` (raise the typed error) or ``"open"`` (return the draft, flagged).
        include_context: show the aligner the retrieved context in the user turn (default: the
            question alone, as DiffPO was trained on plain instructions).
        context_template: the user turn with context, with ``{context_str}`` and ``{query_str}``.
        align_options: options for every aligner call, e.g. ``{"max_new_tokens": 128}``.

    Instantiate:
        .. code-block:: python

            from diffpo_integrations.backends import TGIAligner
            from diffpo_integrations.llama_index import DiffPOResponsePostprocessor

            post = DiffPOResponsePostprocessor(aligner=TGIAligner())

    Usage:
        .. code-block:: python

            response = query_engine.query("What is DiffPO?")
            aligned = post.postprocess(response, "What is DiffPO?")
            aligned.response, aligned.source_nodes, aligned.metadata["diffpo"]["aligned"]

    Async:
        .. code-block:: python

            aligned = await post.apostprocess(await query_engine.aquery(q), q)

    Stream:
        .. code-block:: python

            streaming = post.postprocess(streaming_engine.query(q), q)
            for piece in streaming.response_gen:
                print(piece, end="")
    """

    def __init__(
        self,
        aligner: Aligner | None = None,
        *,
        fail_policy: FailPolicy = "closed",
        include_context: bool = False,
        context_template: str = DEFAULT_CONTEXT_TEMPLATE,
        align_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.alignment = DiffPOAlignment(aligner, fail_policy=fail_policy, align_options=align_options)
        self.include_context = include_context
        self.context_template = context_template

    @property
    def aligner(self) -> Aligner:
        """The aligner in use."""
        return self.alignment.aligner

    def __repr__(self) -> str:
        return f"DiffPOResponsePostprocessor({self.alignment!r}, include_context={self.include_context})"

    # -- public -------------------------------------------------------------------------------

    def postprocess(self, response: _R, query: QueryOrChat, *, caller: str = "") -> _R:
        """Return ``response`` with its answer aligned (streams: aligned lazily while iterated).

        Raises:
            AlignerError: the aligner failed and ``fail_policy`` is ``"closed"`` (streams raise while iterated).
        """
        caller = caller or "DiffPOResponsePostprocessor.postprocess"
        if isinstance(response, PydanticResponse):
            return cast(_R, response)
        if isinstance(response, Response):
            convo = self.conversation(query, response.source_nodes)
            result = self.alignment.align(convo, response.response or "", caller)
            return cast(_R, _with_text(response, result))
        if isinstance(response, AgentChatResponse):
            convo = self.conversation(query, response.source_nodes)
            result = self.alignment.align(convo, response.response, caller)
            return cast(_R, _with_text(response, result))
        return self._stream(response, query, caller)

    async def apostprocess(self, response: _R, query: QueryOrChat, *, caller: str = "") -> _R:
        """Async :meth:`postprocess`."""
        caller = caller or "DiffPOResponsePostprocessor.apostprocess"
        if isinstance(response, PydanticResponse):
            return cast(_R, response)
        if isinstance(response, Response):
            convo = self.conversation(query, response.source_nodes)
            result = await self.alignment.aalign(convo, response.response or "", caller)
            return cast(_R, _with_text(response, result))
        if isinstance(response, AgentChatResponse):
            convo = self.conversation(query, response.source_nodes)
            result = await self.alignment.aalign(convo, response.response, caller)
            return cast(_R, _with_text(response, result))
        return self._stream(response, query, caller)

    def postprocess_nodes(self, *args: Any, **kwargs: Any) -> list[NodeWithScore]:
        """Not a node postprocessor: raises, saying where this class goes.

        Raises:
            ConfigurationError: always.
        """
        msg = (
            "DiffPOResponsePostprocessor aligns answers, not retrieved nodes, so it cannot go in "
            "node_postprocessors (they run before any answer exists). Wrap the synthesizer instead: "
            "as_query_engine(response_synthesizer=DiffPOSynthesizer(get_response_synthesizer(...))), "
            "wrap the engine: DiffPOQueryEngine(query_engine), or call postprocess(response, query) on its response."
        )
        raise ConfigurationError(msg)

    async def apostprocess_nodes(self, *args: Any, **kwargs: Any) -> list[NodeWithScore]:
        """Async :meth:`postprocess_nodes`: raises likewise."""
        return self.postprocess_nodes(*args, **kwargs)

    def conversation(self, query: QueryOrChat, nodes: Sequence[NodeWithScore] = ()) -> list[Message]:
        """The conversation the aligner sees for ``query`` (with ``nodes`` as context when enabled)."""
        if isinstance(query, (str, QueryBundle)):
            return query_conversation(
                query, nodes, include_context=self.include_context, context_template=self.context_template
            )
        convo = conversation_from_chat(query)
        if self.include_context and nodes and convo and convo[-1].role == "user":
            last = query_conversation(
                convo[-1].content, nodes, include_context=True, context_template=self.context_template
            )
            convo[-1] = last[0]
        return convo

    # -- streams ------------------------------------------------------------------------------
    # Streams are rebuilt around generators that read the draft on first iteration, so that
    # ``query()`` returns as fast as the wrapped engine's does and the caller drives the work.

    def _stream(self, response: _R, query: QueryOrChat, caller: str) -> _R:
        span = current_span_id()
        if isinstance(response, StreamingResponse):
            meta = dict(response.metadata or {})
            convo = self.conversation(query, response.source_nodes)
            gen = self._pieces(convo, lambda: response.get_response().response or "", meta, caller, span)
            return cast(_R, StreamingResponse(gen, source_nodes=response.source_nodes, metadata=meta))
        if isinstance(response, AsyncStreamingResponse):
            meta = dict(response.metadata or {})
            convo = self.conversation(query, response.source_nodes)
            agen = self._apieces(convo, lambda: _async_response_text(response), meta, caller, span)
            return cast(_R, AsyncStreamingResponse(agen, source_nodes=response.source_nodes, metadata=meta))
        if isinstance(response, StreamingAgentChatResponse):
            return cast(_R, self._chat_stream(response, query, caller, span))
        msg = f"cannot align a {type(response).__name__}; expected a LlamaIndex query or chat response"
        raise TypeError(msg)

    def _chat_stream(
        self, response: StreamingAgentChatResponse, query: QueryOrChat, caller: str, span: str | None
    ) -> DiffPOStreamingChatResponse:
        meta: dict[str, Any] = {}
        convo = self.conversation(query, response.source_nodes)
        out = DiffPOStreamingChatResponse(
            sources=response.sources,
            source_nodes=response.source_nodes,
            is_writing_to_memory=False,
            metadata=meta,
        )
        # The inner stream was opened by ``stream_chat`` or by ``astream_chat``; only that kind
        # can be read, so the aligned stream is of the same kind.
        if response.achat_stream is not None or response.awrite_response_to_history_task is not None:
            pieces = self._apieces(convo, lambda: _async_chat_text(response), meta, caller, span)
            out.achat_stream = _achat_responses(pieces)
        else:
            out.chat_stream = _chat_responses(self._pieces(convo, lambda: _chat_text(response), meta, caller, span))
        return out

    def _pieces(
        self, convo: list[Message], read_draft: Callable[[], str], meta: dict[str, Any], caller: str, span: str | None
    ) -> Generator[str, None, None]:
        draft = read_draft()
        for chunk in self.alignment.stream(convo, draft, caller, span):
            if chunk.result is not None:
                meta["diffpo"] = chunk.result.metadata()
            if chunk.text:
                yield chunk.text

    async def _apieces(
        self,
        convo: list[Message],
        read_draft: Callable[[], Awaitable[str]],
        meta: dict[str, Any],
        caller: str,
        span: str | None,
    ) -> AsyncGenerator[str, None]:
        draft = await read_draft()
        async for chunk in self.alignment.astream(convo, draft, caller, span):
            if chunk.result is not None:
                meta["diffpo"] = chunk.result.metadata()
            if chunk.text:
                yield chunk.text


def _with_text(response: _R, result: AlignResult) -> _R:
    meta = dict(getattr(response, "metadata", None) or {})
    meta["diffpo"] = result.metadata()
    return cast(_R, dataclasses.replace(cast(Any, response), response=result.text, metadata=meta))


async def _async_response_text(response: AsyncStreamingResponse) -> str:
    return (await response.get_response()).response or ""


def _chat_text(response: StreamingAgentChatResponse) -> str:
    for _ in response.response_gen:
        pass
    return response.response


async def _async_chat_text(response: StreamingAgentChatResponse) -> str:
    async for _ in response.async_response_gen():
        pass
    return response.response


def _chat_responses(pieces: Iterator[str]) -> Generator[ChatResponse, None, None]:
    text = ""
    for piece in pieces:
        text += piece
        yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)


async def _achat_responses(pieces: AsyncIterator[str]) -> AsyncGenerator[ChatResponse, None]:
    text = ""
    async for piece in pieces:
        text += piece
        yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=piece)
