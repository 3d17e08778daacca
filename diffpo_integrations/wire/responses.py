"""OpenAI's Responses API shapes as the project writes them: response objects, output items, stream events.

Checked against the ``openai`` SDK's ``openai.types.responses`` models, which the SDKs built on it
(the Agents SDK among them) use to parse every field and event; plain dicts, so writing them costs
no validation.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

__all__ = [
    "ResponseEvents",
    "function_call_item",
    "message_item",
    "new_id",
    "now",
    "output_text",
    "response_object",
    "responses_usage",
]


def new_id(prefix: str) -> str:
    """A fresh object id with OpenAI's prefix (``resp``, ``msg``, ``fc``).

    Example:
        >>> new_id("resp").startswith("resp_")
        True
    """
    return f"{prefix}_{uuid.uuid4().hex}"


def output_text(text: str) -> dict[str, Any]:
    """One ``output_text`` content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    """An assistant ``message`` output item with one ``output_text`` part (none while it is only announced)."""
    content = [output_text(text)] if status != "in_progress" else []
    return {"id": item_id, "type": "message", "role": "assistant", "status": status, "content": content}


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed"
) -> dict[str, Any]:
    """A ``function_call`` output item: the model asks the client to run ``name`` with ``arguments`` (JSON text)."""
    return {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def responses_usage(chat_usage: Any) -> dict[str, Any] | None:
    """A Chat Completions ``usage`` object in the Responses API's names; ``None`` when there is none.

    Example:
        >>> responses_usage({"prompt_tokens": 11, "completion_tokens": 13, "total_tokens": 24})["output_tokens"]
        13
    """
    if not isinstance(chat_usage, dict):
        return None
    prompt = int(chat_usage.get("prompt_tokens") or 0)
    completion = int(chat_usage.get("completion_tokens") or 0)
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (chat_usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": int(cached), "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": int(reasoning)},
        "total_tokens": int(chat_usage.get("total_tokens") or prompt + completion),
    }


def response_object(
    response_id: str,
    request: dict[str, Any],
    *,
    model: str,
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """A ``response`` object; the request's settings are echoed as OpenAI does.

    ``status`` is ``in_progress``, ``completed`` or ``incomplete`` (the output budget ran out).
    """
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "model": model,
        "status": status,
        "error": None,
        "incomplete_details": incomplete,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "metadata": request.get("metadata") or {},
        "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": None,
        "store": False,
        "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice") or "auto",
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation") or "disabled",
        "usage": usage,
        "user": request.get("user"),
    }


class ResponseEvents:
    """Numbered Responses stream events (``sequence_number`` from 0), framed as SSE with their ``event:`` line.

    Example:
        >>> events = ResponseEvents()
        >>> events.frame("response.output_text.delta", delta="Hi")
        b'event: response.output_text.delta\\ndata: {"type": "response.output_text.delta", "sequence_number": 0, "delta": "Hi"}\\n\\n'
    """

    def __init__(self) -> None:
        self.sequence = 0

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next event of type ``kind``."""
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def frame(self, kind: str, **fields: Any) -> bytes:
        """The next event, as one SSE frame."""
        data = json.dumps(self.event(kind, **fields), ensure_ascii=False)
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def error(self, body: dict[str, Any]) -> bytes:
        """An ``error`` event from an OpenAI error body (``{"error": {...}}``).

        It keeps the ``error`` object too: the ``openai`` SDK raises ``APIError`` with its message
        on any streamed event that carries one, so the client sees why the answer stopped.
        """
        error = body.get("error") or {}
        return self.frame(
            "error",
            code=error.get("code") or error.get("type"),
            message=str(error.get("message") or "the answer failed"),
            param=error.get("param"),
            error=error,
        )


def now() -> int:
    """``created_at``: whole seconds since the epoch, as OpenAI writes it."""
    return int(time.time())
