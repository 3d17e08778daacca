"""Which LLM calls ``DiffPOLLM`` aligns: the answers a user reads, not LlamaIndex's internal calls.

Set as ``Settings.llm``, one LLM serves every call a pipeline makes: router selectors, sub-question
generation, condensing a follow-up into a standalone question, keyword extraction, structured
programs, tools that an agent calls, ReAct reasoning steps. Their outputs are parsed by code or
read by another model; aligning them breaks parsing (JSON, ``Action:`` lines) or changes what is
retrieved. A call is told apart by:

- the prompt's ``PromptType`` (``predict``/``stream`` and their async forms), or its output parser;
- the call path: an LLM call made inside a selector, a question generator, a Pydantic program, a
  tool, a node postprocessor (rerankers) or a metadata extractor, or by a chat engine condensing a
  question, is internal;
- a ReAct agent's calls are reasoning steps; only the text after ``Answer:`` of its last step is
  an answer.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from types import FrameType
from typing import Any, Literal

from llama_index.core.base.base_selector import BaseSelector
from llama_index.core.extractors.interface import BaseExtractor
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts import BasePromptTemplate
from llama_index.core.prompts.prompt_type import PromptType
from llama_index.core.question_gen.types import BaseQuestionGenerator
from llama_index.core.response_synthesizers.refine import DefaultRefineProgram
from llama_index.core.tools import BaseTool
from llama_index.core.types import BasePydanticProgram

__all__ = [
    "INTERNAL_PROMPT_TYPES",
    "AlignScope",
    "CallKind",
    "call_kind",
    "internal_prompt",
    "passing",
    "react_answer",
]

AlignScope = Literal["answers", "all"]
"""``"answers"``: align only what the user reads (default); ``"all"``: align every text answer."""
CallKind = Literal["answer", "internal", "react"]

INTERNAL_PROMPT_TYPES = frozenset(
    {
        PromptType.TREE_INSERT,
        PromptType.TREE_SELECT,
        PromptType.TREE_SELECT_MULTIPLE,
        PromptType.KEYWORD_EXTRACT,
        PromptType.QUERY_KEYWORD_EXTRACT,
        PromptType.SCHEMA_EXTRACT,
        PromptType.TEXT_TO_SQL,
        PromptType.TEXT_TO_GRAPH_QUERY,
        PromptType.TABLE_CONTEXT,
        PromptType.KNOWLEDGE_TRIPLET_EXTRACT,
        PromptType.PANDAS,
        PromptType.JSON_PATH,
        PromptType.SINGLE_SELECT,
        PromptType.MULTI_SELECT,
        PromptType.VECTOR_STORE_QUERY,
        PromptType.SUB_QUESTION,
        PromptType.DECOMPOSE,
        PromptType.CHOICE_SELECT,
        PromptType.RANKGPT_RERANK,
    }
)
"""Prompt types whose output a program parses or another model reads; every other type is an answer."""

_INTERNAL_CALLERS: tuple[type, ...] = (
    BaseSelector,
    BaseQuestionGenerator,
    BasePydanticProgram,
    BaseTool,
    BaseNodePostprocessor,
    BaseExtractor,
)
_ANSWER_CALLERS: tuple[type, ...] = (DefaultRefineProgram,)
"""Programs that write answers: the refine synthesizer wraps its plain answers in one."""
_INTERNAL_FUNCTIONS = frozenset({"_condense_question", "_acondense_question"})
"""Chat engines (``condense_question``, ``condense_plus_context``) rewrite follow-ups with these."""

_MAX_DEPTH = 200

_forced: ContextVar[bool] = ContextVar("diffpo_internal_call", default=False)


def internal_prompt(prompt: BasePromptTemplate) -> bool:
    """Whether a prompt asks for something a program reads: an internal type or an output parser."""
    prompt_type = prompt.metadata.get("prompt_type")
    return prompt_type in INTERNAL_PROMPT_TYPES or prompt.output_parser is not None


@contextmanager
def passing(internal: bool) -> Iterator[None]:
    """Mark the LLM calls made inside the block as internal when ``internal`` is true."""
    token = _forced.set(_forced.get() or internal)
    try:
        yield
    finally:
        _forced.reset(token)


def _react_agent() -> type | None:
    try:
        from llama_index.core.agent.workflow.react_agent import ReActAgent
    except ImportError:  # pragma: no cover - every supported llama-index-core has it
        return None
    return ReActAgent


def call_kind(skip: Any) -> CallKind:
    """What the LLM call in progress is, read from the marks and the call stack.

    ``skip`` is the ``DiffPOLLM`` making the call: its own frames say nothing about the caller.
    """
    if _forced.get():
        return "internal"
    react = _react_agent()
    frame: FrameType | None = sys._getframe(1)
    depth = 0
    while frame is not None and depth < _MAX_DEPTH:
        if frame.f_code.co_name in _INTERNAL_FUNCTIONS:
            return "internal"
        owner = frame.f_locals.get("self")
        if owner is not None and owner is not skip and not isinstance(owner, _ANSWER_CALLERS):
            if isinstance(owner, _INTERNAL_CALLERS):
                return "internal"
            if react is not None and isinstance(owner, react):
                return "react"
        frame = frame.f_back
        depth += 1
    return "answer"


_ANSWER = re.compile(r"^(?P<head>.*?\bAnswer:[ \t]*)(?P<answer>\S.*)$", re.S)


def react_answer(text: str) -> tuple[str, str] | None:
    """Split a ReAct step into its scaffolding and its final answer; ``None`` for a reasoning step."""
    if re.search(r"^Action:", text, re.M):
        return None
    found = _ANSWER.match(text)
    if found is None:
        return None
    return found.group("head"), found.group("answer")
