"""Turn LlamaIndex messages, queries and retrieved nodes into the aligner's conversation."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from diffpo_integrations.core.conversation import ToolCall, Turn, TurnRole, build_conversation
from diffpo_integrations.core.types import Message

__all__ = [
    "DEFAULT_CONTEXT_TEMPLATE",
    "chat_turns",
    "conversation_from_chat",
    "has_tool_calls",
    "query_conversation",
    "query_text",
    "text_of",
]

DEFAULT_CONTEXT_TEMPLATE = (
    "Context information is below.\n---------------------\n{context_str}\n---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\nQuery: {query_str}"
)
"""The user turn the aligner sees with ``include_context=True``: LlamaIndex's default QA prompt, less
its trailing ``Answer:`` (the aligner's chat template already opens the assistant turn). The context
goes in the user turn because Gemma-2 (DiffPO-2B/9B) has no system role."""

_ROLES: dict[MessageRole, TurnRole] = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
}


def text_of(message: ChatMessage) -> str:
    """The text of a message: its text blocks, joined as ``ChatMessage.content`` joins them."""
    return "\n".join(b.text for b in message.blocks if isinstance(b, TextBlock))


def has_tool_calls(message: ChatMessage) -> bool:
    """Whether a message asks for tools: ``ToolCallBlock``s, or OpenAI-style ``tool_calls``/``function_call``."""
    if any(isinstance(b, ToolCallBlock) for b in message.blocks):
        return True
    extra = message.additional_kwargs
    return bool(extra.get("tool_calls") or extra.get("function_call"))


def _tool_calls(message: ChatMessage) -> tuple[ToolCall, ...]:
    calls = [
        ToolCall(b.tool_name, b.tool_kwargs, b.tool_call_id) for b in message.blocks if isinstance(b, ToolCallBlock)
    ]
    for raw in message.additional_kwargs.get("tool_calls") or []:
        # OpenAI-style calls, as dicts or as the client's objects.
        function = raw.get("function") if isinstance(raw, dict) else getattr(raw, "function", None)
        get = (lambda o, k: o.get(k)) if isinstance(function, dict) else getattr
        name = get(function, "name") if function is not None else None
        call_id = raw.get("id") if isinstance(raw, dict) else getattr(raw, "id", None)
        calls.append(ToolCall(str(name or "tool"), str(get(function, "arguments") or "") if function else "", call_id))
    return tuple(calls) or ((ToolCall("tool"),) if has_tool_calls(message) else ())


_REACT_ACTION = re.compile(r"^Action:\s*(?P<name>[^\n]+)(?:\nAction Input:\s*(?P<args>.*))?", re.M | re.S)


def _react_args(text: str) -> dict[str, Any] | str:
    # ReAct steps print the arguments as JSON, or as a Python dict once parsed and re-rendered.
    for parse in (json.loads, ast.literal_eval):
        try:
            value = parse(text)
        except (ValueError, SyntaxError):
            continue
        if isinstance(value, dict):
            return value
    return text


def _react_turn(role: TurnRole, content: str) -> Turn | None:
    """A ReAct scaffolding turn as a tool call or a tool result; ``None`` for other turns."""
    if role == "assistant" and (found := _REACT_ACTION.search(content)):
        args = _react_args((found.group("args") or "").strip())
        return Turn("assistant", content, tool_calls=(ToolCall(found.group("name").strip(), args),))
    if role in ("user", "tool") and content.startswith("Observation:"):
        return Turn("tool", content.removeprefix("Observation:").strip())
    return None


def chat_turns(messages: Sequence[ChatMessage], *, react: bool = False) -> list[Turn]:
    """LlamaIndex chat messages as :class:`~diffpo_integrations.core.Turn` objects.

    With ``react=True`` the ReAct agent's scaffolding is read as what it stands for: its system
    header is left out, ``Action:`` steps are tool calls and ``Observation:`` turns are tool results.
    """
    turns: list[Turn] = []
    for message in messages:
        # Stripped like the drafts: LlamaIndex stores streamed answers stripped and others not.
        content = text_of(message).strip()
        if message.role in (MessageRole.TOOL, MessageRole.FUNCTION):
            extra = message.additional_kwargs
            turns.append(Turn("tool", content, tool_call_id=extra.get("tool_call_id"), name=extra.get("name")))
            continue
        role = _ROLES.get(message.role)
        if role is None:
            continue
        if react:
            if role == "system":
                continue
            if (scaffold := _react_turn(role, content)) is not None:
                turns.append(scaffold)
                continue
        calls = _tool_calls(message) if role == "assistant" else ()
        turns.append(Turn(role, content, tool_calls=calls))
    return turns


def conversation_from_chat(
    messages: Sequence[ChatMessage], original: Callable[[str], str] | None = None, *, react: bool = False
) -> list[Message]:
    """The aligner's view of a chat, by the package's one rule (:func:`~diffpo_integrations.core.build_conversation`).

    Tool calls are dropped and each tool result, with its call, joins the user turn it serves, so
    the aligner sees the facts the answer rests on. ``original`` maps an earlier (aligned)
    assistant answer back to the base model's draft, since DiffPO conditions on the base model's
    own answers. ``react`` reads a ReAct agent's scaffolding (see :func:`chat_turns`).
    """
    return build_conversation(chat_turns(messages, react=react), original=original)


def query_text(query: str | QueryBundle) -> str:
    """The user's question of a query string or bundle."""
    return query.query_str if isinstance(query, QueryBundle) else str(query)


def query_conversation(
    query: str | QueryBundle,
    nodes: Sequence[NodeWithScore] = (),
    *,
    include_context: bool = False,
    context_template: str = DEFAULT_CONTEXT_TEMPLATE,
) -> list[Message]:
    """The one-turn conversation of a query: the question, or the question with the retrieved context."""
    question = query_text(query)
    if include_context and nodes:
        context = "\n\n".join(n.node.get_content(metadata_mode=MetadataMode.LLM) for n in nodes)
        question = context_template.format(context_str=context, query_str=question)
    return [Message(role="user", content=question)]
