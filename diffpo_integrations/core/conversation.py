"""The conversation the aligner sees for a tool-using chat history: one rule for every integration.

DiffPO's chat templates know three roles (system, user, assistant) and the aligner was trained on
conversations that alternate and end with the user turn the draft answers. Agent histories also
hold tool calls and tool results. :func:`build_conversation` turns such a history into the
aligner's conversation, the same way for LangChain (``DiffPOMiddleware``, ``ChatDiffPO``,
``DiffPOAlign``) and LlamaIndex (``DiffPOLLM``, agents, chat engines):

- system and user turns are kept as they are;
- an assistant turn that calls tools is an action, not an answer: its text is dropped, and each
  call is remembered by id;
- each tool result is rendered as ``Tool result (name {"arg": value}): text`` (the call that
  produced it, when known) and added to the user turn it serves, so the aligner sees the facts the
  answer rests on while the conversation still alternates;
- an earlier assistant answer is the *base model's* answer, as in the official MT-bench
  inference: ``original`` maps an answer that was aligned back to its draft.

Example:
    >>> build_conversation([
    ...     Turn("user", "Weather in Paris?"),
    ...     Turn("assistant", "", tool_calls=(ToolCall("get_weather", {"city": "Paris"}, "c1"),)),
    ...     Turn("tool", "Sunny, 21 C.", tool_call_id="c1"),
    ... ])
    [Message(role='user', content='Weather in Paris?\\n\\nTool result (get_weather {"city": "Paris"}): Sunny, 21 C.')]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from diffpo_integrations.core.errors import InputError
from diffpo_integrations.core.types import Message

__all__ = ["ToolCall", "Turn", "TurnRole", "build_conversation", "render_tool_result"]

TurnRole = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True)
class ToolCall:
    """One tool call of an assistant turn."""

    name: str
    args: Mapping[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass(frozen=True)
class Turn:
    """One turn of a chat history, in the framework-neutral form :func:`build_conversation` reads."""

    role: TurnRole
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    """The calls of an assistant turn (empty for an answer)."""
    tool_call_id: str | None = None
    """For a tool result: the id of the call it answers."""
    name: str | None = None
    """For a tool result: the tool's name, when the framework records it."""


def _arguments(args: Mapping[str, Any] | str) -> str:
    if isinstance(args, str):
        return args
    return json.dumps(dict(args), ensure_ascii=False, sort_keys=True, default=str)


def render_tool_result(result: Turn, call: ToolCall | None) -> str:
    """A tool result as the aligner reads it: ``Tool result (name {args}): text``."""
    name = call.name if call is not None else (result.name or "tool")
    args = _arguments(call.args) if call is not None else ""
    label = f"{name} {args}" if args and args != "{}" else name
    return f"Tool result ({label}): {result.content.strip()}"


def build_conversation(turns: Iterable[Turn], *, original: Callable[[str], str] | None = None) -> list[Message]:
    """The aligner's conversation for a chat history (see the module docstring for the rule).

    Args:
        turns: the history, oldest first, ending with the user turn (or the tool results) that
            the draft answers.
        original: maps an earlier assistant answer to the base model's own answer (its draft);
            identity when omitted.

    Raises:
        InputError: the history has no turn the aligner can use.
    """
    out: list[Message] = []
    calls: dict[str, ToolCall] = {}
    pending: list[ToolCall] = []
    """Calls of the latest tool-calling turn, for results that carry no call id."""
    for turn in turns:
        if turn.role == "assistant" and turn.tool_calls:
            pending = list(turn.tool_calls)
            calls.update({c.id: c for c in turn.tool_calls if c.id})
            continue
        if turn.role == "tool":
            call = calls.get(turn.tool_call_id or "") or _by_name(pending, turn.name)
            if call is not None and call in pending:
                pending.remove(call)
            note = render_tool_result(turn, call)
            if out and out[-1].role == "user":
                out[-1] = Message(role="user", content=f"{out[-1].content}\n\n{note}")
            else:
                out.append(Message(role="user", content=note))
            continue
        content = turn.content
        if turn.role == "assistant" and original is not None:
            content = original(content)
        out.append(Message(role=turn.role, content=content))
    if not out:
        msg = "the conversation is empty: pass at least the user turn that the draft answers"
        raise InputError(msg)
    return out


def _by_name(pending: list[ToolCall], name: str | None) -> ToolCall | None:
    if name is not None:
        return next((c for c in pending if c.name == name), None)
    return pending[0] if pending else None
