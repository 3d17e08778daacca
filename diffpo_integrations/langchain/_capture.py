"""Prompt capture: find the conversation that produced a draft from the LangChain run tree.

In ``prompt | llm | DiffPOAlign()`` the alignment step only receives the draft; ``|`` cannot be
intercepted. One callback handler, added to every run through ``register_configure_hook``, records
the run tree while chains run:

- every run start records its parent, so any run can be walked up to its root;
- every chat model (or LLM) start records its input messages under the model run and under *every*
  ancestor run: with ``llm.with_retry()`` the model's parent is the retry run, not the sequence, so
  indexing only the direct parent would miss the sequence that also holds the alignment step;
- every model end records the output text, to tell apart several models under one ancestor.

:meth:`PromptCapture.find` starts at the alignment run and walks up: the first ancestor that holds
a conversation is the nearest common ancestor of the alignment step and the model that produced
its input. Everything a root run indexed is freed when the root ends (chain, model, tool or
retriever end or error), so long-running processes do not grow.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import LLMResult
from langchain_core.tracers.context import register_configure_hook

from diffpo_integrations.core.errors import ConversationNotFoundError
from diffpo_integrations.langchain._runs import ALIGNER_TAG, DRAFT_TAG

__all__ = ["PROMPT_CAPTURE", "CapturedConversation", "PromptCapture"]

# LangChain names a model's output message after the model run: "lc_run--<run id>".
_LC_RUN_PREFIX = "lc_run--"
_IGNORED_TAGS = frozenset({ALIGNER_TAG, DRAFT_TAG})


def _ambiguous(count: int) -> str:
    return (
        f"DiffPOAlign found {count} chat model runs before it that could have written this draft, and the "
        "draft's message id does not name one of them, so it will not guess which conversation to align "
        "against. Keep the model's message on the way to DiffPOAlign (its id, 'lc_run--<run id>', names "
        "the model run), or pass the conversation explicitly: DiffPOAlign(conversation=[...]), or invoke "
        'it with {"messages": [...], "draft": ...}.'
    )


@dataclass
class CapturedConversation:
    """The messages one chat model run received, and the text it answered (once it ended)."""

    run_id: UUID
    messages: list[BaseMessage]
    order: int
    output: str | None = None


@dataclass
class _Tree:
    parent: dict[UUID, UUID | None] = field(default_factory=dict)
    root: dict[UUID, UUID] = field(default_factory=dict)
    members: dict[UUID, list[UUID]] = field(default_factory=dict)
    by_ancestor: dict[UUID, list[CapturedConversation]] = field(default_factory=dict)
    by_model_run: dict[UUID, CapturedConversation] = field(default_factory=dict)


class PromptCapture(BaseCallbackHandler):
    """Records which run started which and what each chat model was asked; thread-safe."""

    # Run inline on the event loop: the work is a few dict operations, and the model start must be
    # recorded before the model's output can reach the alignment step.
    run_inline = True
    raise_error = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tree = _Tree()
        self._counter = 0

    # -- registry -----------------------------------------------------------------------------

    # Not ``__len__``: LangChain tests the handler's truthiness when it configures callbacks.
    def size(self) -> int:
        """How many runs are recorded (0 once every root run has ended)."""
        with self._lock:
            return len(self._tree.parent)

    def _start(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        tree = self._tree
        if run_id in tree.parent:
            return
        # A parent this handler never saw (a run started before import, a foreign tracer's run)
        # makes this run a root of its own, so that its end frees what it indexed.
        parent = parent_run_id if parent_run_id is not None and parent_run_id in tree.root else None
        root = run_id if parent is None else tree.root[parent]
        tree.parent[run_id] = parent
        tree.root[run_id] = root
        tree.members.setdefault(root, []).append(run_id)

    def _end(self, run_id: UUID) -> None:
        with self._lock:
            tree = self._tree
            for member in tree.members.pop(run_id, []):
                tree.parent.pop(member, None)
                tree.root.pop(member, None)
                tree.by_ancestor.pop(member, None)
                tree.by_model_run.pop(member, None)

    def _model_start(self, run_id: UUID, parent_run_id: UUID | None, messages: list[BaseMessage]) -> None:
        with self._lock:
            self._start(run_id, parent_run_id)
            self._counter += 1
            captured = CapturedConversation(run_id=run_id, messages=list(messages), order=self._counter)
            self._tree.by_model_run[run_id] = captured
            node: UUID | None = run_id
            while node is not None:
                self._tree.by_ancestor.setdefault(node, []).append(captured)
                node = self._tree.parent.get(node)

    def find(
        self, run_id: UUID | None, draft_id: str | None = None, draft_text: str | None = None
    ) -> list[BaseMessage] | None:
        """The conversation that produced the draft seen by run ``run_id``, or ``None``.

        The draft's message id names its model run when LangChain assigned it; otherwise the
        nearest ancestor holding conversations decides: the one model whose output equals the
        draft, else its one model. It never guesses between several.

        Raises:
            ConversationNotFoundError: several models could have written the draft.
        """
        with self._lock:
            tree = self._tree
            if draft_id and draft_id.startswith(_LC_RUN_PREFIX):
                # "lc_run--<uuid>", with "-<index>" appended by `generate` for invoked models.
                try:
                    exact = tree.by_model_run.get(UUID(draft_id[len(_LC_RUN_PREFIX) :][:36]))
                except ValueError:
                    exact = None
                if exact is not None:
                    return list(exact.messages)
            node = run_id
            while node is not None:
                candidates = tree.by_ancestor.get(node)
                if candidates:
                    same = [c for c in candidates if draft_text is not None and c.output == draft_text]
                    pool = same or candidates
                    if len(pool) > 1:
                        raise ConversationNotFoundError(_ambiguous(len(pool)))
                    return list(pool[0].messages)
                node = tree.parent.get(node)
            return None

    # -- callbacks ----------------------------------------------------------------------------

    def on_chain_start(
        self, serialized: Any, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        with self._lock:
            self._start(run_id, parent_run_id)

    def on_tool_start(
        self, serialized: Any, input_str: str, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        with self._lock:
            self._start(run_id, parent_run_id)

    def on_retriever_start(
        self, serialized: Any, query: str, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        with self._lock:
            self._start(run_id, parent_run_id)

    def on_chat_model_start(
        self,
        serialized: Any,
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        if _IGNORED_TAGS.intersection(kwargs.get("tags") or ()):
            # The aligner's own runs, and the draft run inside ChatDiffPO (whose run holds the same
            # messages), are no conversation a later step could be aligning.
            with self._lock:
                self._start(run_id, parent_run_id)
            return
        self._model_start(run_id, parent_run_id, messages[0] if messages else [])

    def on_llm_start(
        self, serialized: Any, prompts: list[str], *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> None:
        self._model_start(run_id, parent_run_id, [HumanMessage(content=prompts[0])] if prompts else [])

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            captured = self._tree.by_model_run.get(run_id)
            if captured is not None and response.generations and response.generations[0]:
                captured.output = response.generations[0][0].text
        self._end(run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._end(run_id)


PROMPT_CAPTURE = PromptCapture()
"""The process-wide handler; LangChain adds it to every callback manager it configures."""

# A default value (not ``.set()``) so every thread and task sees the handler, including threads
# started before this module was imported.
_capture_var: ContextVar[PromptCapture | None] = ContextVar("diffpo_prompt_capture", default=PROMPT_CAPTURE)
register_configure_hook(_capture_var, inheritable=True)
