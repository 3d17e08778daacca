"""What the gateway aligns, and how: the conversation from an OpenAI request, per-request options, fail policy."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from diffpo_integrations.core.aligner import BaseAligner
from diffpo_integrations.core.conversation import ToolCall, Turn, build_conversation
from diffpo_integrations.core.errors import DiffPOError, InputError
from diffpo_integrations.core.policy import fall_back
from diffpo_integrations.core.types import AlignResult, FailPolicy, Message

__all__ = ["RequestPlan", "align_choice", "complete_words", "conversation_from_openai", "plan_request", "ready_words"]


# One line holding only a field header: DSPy's prompt layout (ChatAdapter, JSONAdapter, BAMLAdapter).
_FIELD_HEADER = re.compile(r"^[ \t]*\[\[ ## \w+ ## \]\][ \t]*$", re.MULTILINE)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return str(content)


def conversation_from_openai(messages: list[Any]) -> list[Message]:
    """The conversation the aligner sees, from an OpenAI ``messages`` list.

    ``developer`` turns count as ``system``; text parts of multi-part content are joined; image and
    audio parts are left out (the aligner reads text). Tool calls and tool results follow the one rule
    of :func:`~diffpo_integrations.core.conversation.build_conversation`: a tool-calling turn is
    dropped and each result joins the user turn it serves, so an answer grounded in a tool result is
    aligned with that result in view.

    Raises:
        InputError: a message is not an object with a known ``role``.
    """
    turns: list[Turn] = []
    for i, raw in enumerate(messages):
        if not isinstance(raw, Mapping) or not isinstance(raw.get("role"), str):
            msg = f"messages[{i}] must be an object with a 'role'"
            raise InputError(msg)
        role, text = raw["role"], _text(raw.get("content"))
        if role in ("system", "developer"):
            turns.append(Turn("system", text))
        elif role in ("user", "assistant"):
            calls = tuple(_tool_call(c) for c in raw.get("tool_calls") or [] if isinstance(c, Mapping))
            turns.append(Turn(role, text, tool_calls=calls))
        elif role in ("tool", "function"):
            turns.append(Turn("tool", text, tool_call_id=raw.get("tool_call_id"), name=raw.get("name")))
        else:
            msg = f"messages[{i}] has role {role!r}; OpenAI's roles are system, developer, user, assistant and tool"
            raise InputError(msg)
    return build_conversation(turns)


def _tool_call(call: Mapping[str, Any]) -> ToolCall:
    fn = call.get("function") or {}
    arguments = fn.get("arguments", "")
    try:
        # OpenAI sends the arguments as JSON text: parsed, they render as every integration renders them.
        parsed = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except ValueError:
        parsed = arguments
    return ToolCall(
        str(fn.get("name", "tool")), parsed if isinstance(parsed, dict | str) else arguments, call.get("id")
    )


@dataclass(frozen=True)
class RequestPlan:
    """What the gateway does with one chat request."""

    align: bool
    """False: the upstream's answer is returned as it is."""
    reason: str | None
    """Why the request is passed through (``opt_out``, ``response_format``, ``field_markers``), when it is."""
    keep_prefix_tokens: int
    """Draft tokens the aligner keeps."""
    max_new_tokens: int
    """Tokens the aligner may add."""
    upstream_body: dict[str, Any]
    """The request as sent upstream: the ``diffpo`` options removed."""


def plan_request(
    body: Mapping[str, Any], headers: Mapping[str, str], *, keep_prefix_tokens: int, max_new_tokens: int
) -> RequestPlan:
    """Read the per-request options: ``"diffpo": {"align": false, "keep_prefix_tokens": N}``, the header
    ``x-diffpo-align: off``, ``response_format``, a prompt laid out in field markers, and ``max_tokens`` /
    ``max_completion_tokens``.

    A request passes through unaligned when the client opts out, asks for ``response_format``, or
    its system or developer messages lay the answer out in field markers (a line holding only
    ``[[ ## name ## ]]``, DSPy's format): the client parses named fields out of the answer, and a
    rewritten answer loses them.

    Raises:
        InputError: an option has the wrong type (the message names it).

    Example:
        >>> plan = plan_request({"messages": [], "diffpo": {"keep_prefix_tokens": 3}, "max_tokens": 64}, {},
        ...                     keep_prefix_tokens=6, max_new_tokens=256)
        >>> plan.align, plan.keep_prefix_tokens, plan.max_new_tokens, "diffpo" in plan.upstream_body
        (True, 3, 64, False)
    """
    upstream_body = {k: v for k, v in body.items() if k != "diffpo"}
    options = body.get("diffpo")
    if options is None:
        options = {}
    if not isinstance(options, Mapping):
        msg = '\'diffpo\' must be an object such as {"align": false} or {"keep_prefix_tokens": 4}'
        raise InputError(msg)
    unknown = sorted(set(options) - {"align", "keep_prefix_tokens"})
    if unknown:
        msg = f"unknown 'diffpo' option(s) {unknown}; the options are 'align' and 'keep_prefix_tokens'"
        raise InputError(msg)
    align = options.get("align", True)
    if not isinstance(align, bool):
        msg = f"'diffpo.align' must be true or false, got {align!r}"
        raise InputError(msg)
    keep = options.get("keep_prefix_tokens", keep_prefix_tokens)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 0:
        msg = f"'diffpo.keep_prefix_tokens' must be an integer >= 0, got {keep!r}"
        raise InputError(msg)
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        msg = f"'max_tokens' must be an integer >= 1, got {limit!r}"
        raise InputError(msg)
    reason = None
    if not align or headers.get("x-diffpo-align", "").strip().lower() in ("off", "false", "0", "no"):
        reason = "opt_out"
    elif body.get("response_format") not in (None, {"type": "text"}):
        reason = "response_format"
    elif _asks_for_field_markers(body.get("messages")):
        reason = "field_markers"
    return RequestPlan(
        align=reason is None,
        reason=reason,
        keep_prefix_tokens=keep,
        max_new_tokens=limit if limit is not None else max_new_tokens,
        upstream_body=upstream_body,
    )


def _asks_for_field_markers(messages: Any) -> bool:
    """Whether a system or developer message lays the answer out in ``[[ ## name ## ]]`` field markers.

    Only instructions count, and only a marker on a line of its own: markers a user typed, or one
    quoted in a sentence, are text to align.
    """
    if not isinstance(messages, list):
        return False
    return any(
        isinstance(m, Mapping)
        and m.get("role") in ("system", "developer")
        and _FIELD_HEADER.search(_text(m.get("content"))) is not None
        for m in messages
    )


def complete_words(text: str) -> int:
    """Words already followed by whitespace: the last word may still grow, so it does not count.

    Example:
        >>> complete_words("Seven is a pri"), complete_words("Seven is a ")
        (3, 3)
    """
    words = text.split()
    if words and not text[-1].isspace():
        return len(words) - 1
    return len(words)


def ready_words(keep_prefix_tokens: int) -> int:
    """Complete draft words after which the kept prefix has surely arrived (each word is >= 1 token;
    one more than needed, as official mode keeps the template's newline as its first token)."""
    return keep_prefix_tokens + 1


async def align_choice(
    aligner: BaseAligner,
    conversation: list[Message] | DiffPOError,
    draft: str,
    plan: RequestPlan,
    fail_policy: FailPolicy,
) -> AlignResult:
    """Align one choice's draft; the core fail policy decides what a failure gives.

    ``conversation`` may be the :class:`InputError` that made it impossible to build; it then goes
    through the same policy as an aligner failure.

    Raises:
        ConfigurationError: always (a misconfigured gateway must be fixed, not hidden).
        DiffPOError: under ``fail_policy="closed"``, the typed error of the failed alignment.
    """
    try:
        if isinstance(conversation, DiffPOError):
            raise conversation
        return await aligner.aalign(
            conversation, draft, keep_prefix_tokens=plan.keep_prefix_tokens, max_new_tokens=plan.max_new_tokens
        )
    except DiffPOError as exc:
        return fall_back(fail_policy, draft, exc, endpoint=aligner.endpoint)
