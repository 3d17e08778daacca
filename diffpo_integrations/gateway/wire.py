"""OpenAI's wire shapes as the gateway writes them: error bodies, stream chunks and SSE framing.

The shapes themselves live in :mod:`diffpo_integrations.wire`, shared with ``diffpo serve``.
"""

from __future__ import annotations

import json
from typing import Any

from diffpo_integrations.wire.openai import openai_error
from diffpo_integrations.wire.sse import sse_event as sse

__all__ = ["GatewayError", "openai_error", "sse", "upstream_error_body"]


class GatewayError(Exception):
    """An error answer of the gateway: HTTP status, OpenAI error body, extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = openai_error(message, error_type, param=param, code=code)
        self.headers = headers or {}


def upstream_error_body(status: int, payload: Any, upstream: str) -> dict[str, Any]:
    """The upstream's error answer in OpenAI's shape: kept as is when it already is, wrapped otherwise.

    TGI answers ``{"error": "...", "error_type": "..."}``, Ollama and some proxies plain text: the
    message then says which upstream answered, so the client knows the draft model failed.
    """
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict) and "message" in payload["error"]:
        return payload
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        detail = payload["error"]
        kind = str(payload.get("error_type") or "upstream_error")
    else:
        detail = payload if isinstance(payload, str) else json.dumps(payload)
        kind = "upstream_error"
    detail = detail.strip()[:500] or f"HTTP {status}"
    return openai_error(f"the upstream {upstream} answered HTTP {status}: {detail}", kind, code=str(status))
