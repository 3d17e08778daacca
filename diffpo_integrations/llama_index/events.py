"""Instrumentation events and the fail-open warning of the LlamaIndex integration.

Every alignment runs inside a span of LlamaIndex's instrumentation dispatcher (named
``DiffPOAlignment.align``, ``.aalign``, ``.stream`` or ``.astream``) and emits
:class:`DiffPOAlignStartEvent` then :class:`DiffPOAlignEndEvent` in that span, so any handler
attached to the root dispatcher (Arize Phoenix, Langfuse, a custom ``BaseEventHandler``) sees it.

Example:
    >>> from llama_index.core.instrumentation import get_dispatcher
    >>> from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    >>> class Collect(BaseEventHandler):
    ...     events: list = []
    ...     def handle(self, event, **kwargs):
    ...         if isinstance(event, DiffPOAlignEndEvent):
    ...             self.events.append(event.metadata)
    >>> get_dispatcher().add_event_handler(Collect())  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from llama_index_instrumentation.base import BaseEvent
from pydantic import Field

from diffpo_integrations.core.errors import FailOpenWarning

__all__ = ["DiffPOAlignEndEvent", "DiffPOAlignStartEvent", "DiffPOFailOpenWarning"]


class DiffPOAlignStartEvent(BaseEvent):
    """An alignment started: the conversation sent to the aligner and the draft."""

    messages: list[dict[str, str]] = Field(default_factory=list)
    """The aligner's conversation as role/content dicts, ending with the user turn."""
    draft: str = ""
    """The base model's answer being aligned."""
    caller: str = ""
    """Which wrapper asked (``DiffPOLLM.chat``, ``DiffPOQueryEngine``, ...)."""

    @classmethod
    def class_name(cls) -> str:
        return "DiffPOAlignStartEvent"


class DiffPOAlignEndEvent(BaseEvent):
    """An alignment ended; ``metadata`` is :meth:`AlignResult.metadata` (also under ``metadata["diffpo"]``)."""

    metadata: dict[str, Any] = Field(default_factory=dict)
    """The :class:`~diffpo_integrations.core.AlignResult` without its text."""
    aligned: bool = True
    """False when a fail-open policy returned the draft."""
    caller: str = ""
    """Which wrapper asked."""

    @classmethod
    def class_name(cls) -> str:
        return "DiffPOAlignEndEvent"


DiffPOFailOpenWarning = FailOpenWarning
"""The package's :class:`~diffpo_integrations.core.errors.FailOpenWarning`, under its LlamaIndex name."""
