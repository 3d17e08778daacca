"""Conversions between LangChain messages and the aligner's role/content conversation."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_messages,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.prompt_values import PromptValue

from diffpo_integrations.core.conversation import ToolCall, Turn, TurnRole, build_conversation
from diffpo_integrations.core.errors import InputError
from diffpo_integrations.core.types import AlignResult, Message

__all__ = [
    "ConversationLike",
    "aligned_message",
    "base_answer",
    "has_tool_calls",
    "message_text",
    "to_chunk",
    "to_conversation",
    "unaligned_message",
]

ConversationLike = Sequence[BaseMessage | dict[str, Any] | tuple[str, str] | str] | PromptValue
"""LangChain messages, role/content dicts, ``(role, content)`` pairs, or a prompt value."""

_CHAT_ROLES: dict[str, TurnRole] = {"user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}


def message_text(message: BaseMessage) -> str:
    """The message's text, with the text blocks of list content joined."""
    return message.text


def has_tool_calls(message: BaseMessage) -> bool:
    """True for an AI turn that calls tools: such turns are actions, not answers, and are never aligned."""
    if not isinstance(message, AIMessage):
        return False
    return bool(message.tool_calls or message.invalid_tool_calls or getattr(message, "tool_call_chunks", None))


def base_answer(message: AIMessage) -> str | None:
    """The base model's own answer behind an aligned message, when the message records all of it.

    The official multi-turn inference gives the aligner the base model's earlier answers, not the
    aligned ones a chat history usually keeps; ``response_metadata["diffpo"]`` holds the draft.
    """
    meta = message.response_metadata.get("diffpo")
    if not isinstance(meta, dict) or not meta.get("aligned") or not isinstance(meta.get("draft"), str):
        return None
    details = meta.get("details")
    if isinstance(details, dict) and details.get("draft_complete") is False:
        return None
    return str(meta["draft"])


def _turn(message: BaseMessage) -> Turn:
    text = message_text(message)
    if isinstance(message, ToolMessage):
        return Turn("tool", text, tool_call_id=message.tool_call_id, name=message.name)
    if isinstance(message, AIMessage):
        if has_tool_calls(message):
            calls = tuple(ToolCall(c["name"], c["args"], c.get("id")) for c in message.tool_calls)
            # A call still being streamed or unparsable is an action all the same.
            return Turn("assistant", text, tool_calls=calls or (ToolCall("tool"),))
        return Turn("assistant", base_answer(message) or text)
    if isinstance(message, SystemMessage):
        return Turn("system", text)
    if isinstance(message, HumanMessage):
        return Turn("user", text)
    if isinstance(message, ChatMessage) and message.role in _CHAT_ROLES:
        return Turn(_CHAT_ROLES[message.role], text)
    if isinstance(message, ChatMessage) and message.role == "system":
        return Turn("system", text)
    msg = (
        f"cannot use a {type(message).__name__} in the aligner's conversation; pass system, human, AI or tool messages"
    )
    raise InputError(msg)


def to_conversation(messages: ConversationLike) -> list[Message]:
    """Turn the messages sent to a chat model into the aligner's conversation.

    Follows the package's one rule (:func:`~diffpo_integrations.core.build_conversation`): system,
    human and AI turns map to ``system``/``user``/``assistant``; earlier AI answers stay the base
    model's answers, as the official MT-bench inference does (an aligned message contributes the
    draft recorded in its metadata, see :func:`base_answer`); an AI turn that calls tools is
    dropped and each tool result, with the call that produced it, is added to the user turn it
    serves, so the aligner sees the facts the answer rests on.

    Raises:
        InputError: a turn cannot be read as text, or the conversation has no turn at all.
    """
    lc_messages = messages.to_messages() if isinstance(messages, PromptValue) else convert_to_messages(messages)
    return build_conversation(_turn(m) for m in lc_messages)


def _replace_text(content: str | list[str | dict[str, Any]], text: str) -> str | list[str | dict[str, Any]]:
    """Put ``text`` where the text blocks were, keeping other blocks (reasoning, citations) in place."""
    if isinstance(content, str):
        return text
    out: list[str | dict[str, Any]] = []
    placed = False
    for block in content:
        is_text = isinstance(block, str) or block.get("type") == "text"
        if not is_text:
            out.append(block)
        elif not placed:
            out.append({**block, "text": text} if isinstance(block, dict) else text)
            placed = True
    if not placed:
        out.append({"type": "text", "text": text})
    return out


def _with_result(message: AIMessage, text: str, result: AlignResult) -> AIMessage:
    metadata = {**message.response_metadata, "diffpo": result.metadata()}
    update: dict[str, Any] = {"content": _replace_text(message.content, text), "response_metadata": metadata}
    return message.model_copy(update=update)


def aligned_message(draft: AIMessage, result: AlignResult) -> AIMessage:
    """The draft message with the aligned text: id, tool calls, usage and metadata kept, DiffPO's added."""
    return _with_result(draft, result.text, result)


def unaligned_message(draft: AIMessage, result: AlignResult) -> AIMessage:
    """The draft message unchanged but for the flagged ``response_metadata["diffpo"]`` (fail-open)."""
    return _with_result(draft, message_text(draft), result)


def to_chunk(message: BaseMessage | str) -> AIMessageChunk:
    """A streamed draft piece as an :class:`AIMessageChunk` (strings and whole messages included)."""
    if isinstance(message, AIMessageChunk):
        return message
    if isinstance(message, str):
        return AIMessageChunk(content=message)
    if isinstance(message, AIMessage):
        fields = message.model_dump(exclude={"type", "tool_calls", "invalid_tool_calls"})
        chunks = [
            tool_call_chunk(name=c["name"], args=json.dumps(c["args"]), id=c.get("id"), index=i)
            for i, c in enumerate(message.tool_calls)
        ]
        # Tool calls only mark the draft as "pass through": the original message is returned as is.
        return AIMessageChunk(**fields, tool_call_chunks=chunks)
    msg = f"expected an AI message or a string as the draft, got {type(message).__name__}"
    raise InputError(msg)
