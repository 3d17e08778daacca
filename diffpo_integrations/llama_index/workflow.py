"""A LlamaIndex Workflows step that aligns a workflow's final answer.

A workflow ends its own answering with a :class:`DraftAnswerEvent`; the :class:`DiffPOAlignStep`
mixin adds the step that consumes it, streams :class:`AlignedAnswerDeltaEvent` pieces (visible to
``handler.stream_events()``) and stops the run with an :class:`AlignedAnswerEvent`.

Example:
    >>> from workflows import Workflow, step
    >>> from workflows.events import StartEvent
    >>> class Answer(DiffPOAlignStep, Workflow):
    ...     @step
    ...     async def draft(self, ev: StartEvent) -> DraftAnswerEvent:
    ...         return DraftAnswerEvent(query=ev.query, draft="7 is a prime.")
    >>> result = await Answer(aligner=aligner).run(query="Name a prime.")  # doctest: +SKIP
    >>> result.text, result.draft, result.diffpo["aligned"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_index.core.base.llms.types import ChatMessage
from pydantic import Field
from workflows import Context, step
from workflows.events import Event, StopEvent

from diffpo_integrations.core.aligner import Aligner
from diffpo_integrations.core.types import AlignResult, FailPolicy, Message, coerce_messages
from diffpo_integrations.llama_index._align import DiffPOAlignment
from diffpo_integrations.llama_index._convert import conversation_from_chat

__all__ = [
    "AlignedAnswerDeltaEvent",
    "AlignedAnswerEvent",
    "AlignedDraftEvent",
    "DiffPOAlignAndContinue",
    "DiffPOAlignStep",
    "DraftAnswerEvent",
]


class DraftAnswerEvent(Event):
    """The base model's final answer, ready to be aligned.

    Give the conversation as ``messages`` (LlamaIndex ``ChatMessage`` objects, an agent's memory
    with its tool calls and results included, or role/content dicts: earlier user turns with the
    base model's earlier answers, then the user turn this draft answers), or just the ``query``.
    """

    draft: str
    """The base model's answer."""
    query: str | None = None
    """The user's question, when the conversation is this one turn."""
    messages: list[ChatMessage | dict[str, str]] = Field(default_factory=list)
    """The whole conversation, ending with the user turn (or the tool results it needs); wins over ``query``."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """Anything to carry to the aligned event (source nodes, ids...)."""

    def conversation(self) -> list[Message]:
        """The aligner's conversation (:func:`~diffpo_integrations.core.build_conversation` for chat messages)."""
        if not self.messages:
            return coerce_messages([("user", self.query or "")])
        chat = [
            m if isinstance(m, ChatMessage) else ChatMessage(role=m["role"], content=m["content"])
            for m in self.messages
        ]
        return conversation_from_chat(chat)


class AlignedAnswerDeltaEvent(Event):
    """One piece of the aligned answer, written to the event stream while it is produced."""

    delta: str


class AlignedDraftEvent(Event):
    """The aligned answer as an ordinary event, for a later step to post-process (:class:`DiffPOAlignAndContinue`)."""

    text: str
    """The aligned answer (the draft when a fail-open policy fell back)."""
    draft: str
    """The base model's answer."""
    diffpo: dict[str, Any] = Field(default_factory=dict)
    """:meth:`AlignResult.metadata`: ``aligned``, ``kept_prefix``, ``error``..."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """The draft event's ``extra``."""


class AlignedAnswerEvent(StopEvent):
    """The run's result: the aligned answer, the draft, DiffPO's metadata and the carried ``extra``."""

    text: str
    """The aligned answer (the draft when a fail-open policy fell back)."""
    draft: str
    """The base model's answer."""
    diffpo: dict[str, Any] = Field(default_factory=dict)
    """:meth:`AlignResult.metadata`: ``aligned``, ``kept_prefix``, ``error``..."""
    extra: dict[str, Any] = Field(default_factory=dict)
    """The draft event's ``extra``."""

    def _get_result(self) -> Any:
        return self.text

    def __str__(self) -> str:
        return self.text


class DiffPOAlignStep:
    """Mixin for a ``Workflow``: a step turning :class:`DraftAnswerEvent` into :class:`AlignedAnswerEvent`.

    Setup:
        .. code-block:: bash

            pip install "diffpo-integrations[llama-index]"
            export DIFFPO_ALIGNER_URL=http://127.0.0.1:8080

    Key init args:
        aligner: any :class:`~diffpo_integrations.core.Aligner` (default: ``TGIAligner()``).
        fail_policy: ``"closed"`` (the run fails with the typed error) or ``"open"`` (the draft, flagged).
        stream_alignment: write :class:`AlignedAnswerDeltaEvent` pieces to the stream (default) or align in one call.
        align_options: options for every aligner call.
        Other arguments go to ``Workflow`` (``timeout``, ``verbose``...).

    Instantiate:
        .. code-block:: python

            class RAGFlow(DiffPOAlignStep, Workflow):
                @step
                async def answer(self, ev: StartEvent) -> DraftAnswerEvent:
                    draft = str(await self.query_engine.aquery(ev.query))
                    return DraftAnswerEvent(query=ev.query, draft=draft)

            flow = RAGFlow(aligner=aligner, timeout=60)

    Usage:
        .. code-block:: python

            result = await flow.run(query="What is DiffPO?")
            result.text, result.draft, result.diffpo["aligned"]

    Async:
        Workflows are async: ``await flow.run(...)`` as above.

    Stream:
        .. code-block:: python

            handler = flow.run(query="What is DiffPO?")
            async for ev in handler.stream_events():
                if isinstance(ev, AlignedAnswerDeltaEvent):
                    print(ev.delta, end="")
            result = await handler
    """

    def __init__(
        self,
        *args: Any,
        aligner: Aligner | None = None,
        fail_policy: FailPolicy = "closed",
        stream_alignment: bool = True,
        align_options: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.alignment = DiffPOAlignment(aligner, fail_policy=fail_policy, align_options=align_options)
        self.stream_alignment = stream_alignment
        super().__init__(*args, **kwargs)

    @step
    async def align_answer(self, ctx: Context, ev: DraftAnswerEvent) -> AlignedAnswerEvent:
        """Align the draft; stream the pieces; stop the run with the aligned answer."""
        result = await self._align_draft(ctx, ev)
        return AlignedAnswerEvent(text=result.text, draft=ev.draft, diffpo=result.metadata(), extra=ev.extra)

    async def _align_draft(self, ctx: Context, ev: DraftAnswerEvent) -> AlignResult:
        convo = ev.conversation()
        caller = f"{type(self).__name__}.align_answer"
        result: AlignResult | None = None
        if self.stream_alignment:
            async for chunk in self.alignment.astream(convo, ev.draft, caller):
                if chunk.text:
                    ctx.write_event_to_stream(AlignedAnswerDeltaEvent(delta=chunk.text))
                result = chunk.result or result
        else:
            result = await self.alignment.aalign(convo, ev.draft, caller)
        assert result is not None  # DiffPOAlignment.astream always ends with a result or raises
        return result


class DiffPOAlignAndContinue(DiffPOAlignStep):
    """:class:`DiffPOAlignStep` whose step emits an :class:`AlignedDraftEvent` instead of stopping the run.

    A later step of the workflow takes the aligned answer (to add citations, store it, route it)
    and stops the run itself. Arguments as for :class:`DiffPOAlignStep`.

    Usage:
        .. code-block:: python

            class Flow(DiffPOAlignAndContinue, Workflow):
                @step
                async def draft(self, ev: StartEvent) -> DraftAnswerEvent: ...

                @step
                async def cite(self, ev: AlignedDraftEvent) -> StopEvent:
                    return StopEvent(result=ev.text + " [1]")
    """

    @step
    async def align_answer(self, ctx: Context, ev: DraftAnswerEvent) -> AlignedDraftEvent:  # type: ignore[override]
        """Align the draft; stream the pieces; hand the aligned answer to the next step."""
        result = await self._align_draft(ctx, ev)
        return AlignedDraftEvent(text=result.text, draft=ev.draft, diffpo=result.metadata(), extra=ev.extra)
