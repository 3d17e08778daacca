"""Keeping the upstream key out of everything the gateway says about an upstream answer.

Some upstreams echo the request, headers included, in what they answer: an error body, a non-JSON
body, a redirect's ``Location``, a malformed header line, a stream event. The gateway quotes those
bytes in its error messages, and ``aiohttp`` may quote them in its log records, so
both are redacted with the key the current request sent upstream. That key is noted per request
(a context variable, so concurrent requests with forwarded keys never see each other's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar

__all__ = ["REDACTED", "hide_secrets_in_logs", "note_secret", "redact"]

REDACTED = "[redacted]"
"""What stands where the key was."""

_SECRET: ContextVar[str] = ContextVar("diffpo_gateway_upstream_secret", default="")

_WIRE_LOGGERS = ("aiohttp.client", "aiohttp.internal")
"""The upstream leg's loggers that can quote upstream bytes (an exception's text, a malformed cookie);
a logger's filters see only its own records, so each is named."""


def note_secret(headers: Mapping[str, str]) -> str:
    """Note the key these upstream headers carry for the current request, and return it ("" for none).

    Example:
        >>> note_secret({"Authorization": "Bearer sk-123"}), redact("key sk-123")
        ('sk-123', 'key [redacted]')
    """
    authorization = next((value for name, value in headers.items() if name.lower() == "authorization"), "")
    secret = authorization.partition(" ")[2].strip() or authorization.strip()
    _SECRET.set(secret)
    return secret


def redact(text: str, secret: str | None = None) -> str:
    """``text`` without ``secret`` (by default the key noted for the current request)."""
    secret = _SECRET.get() if secret is None else secret
    return text.replace(secret, REDACTED) if secret and secret in text else text


class _HideSecret(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        secret = _SECRET.get()
        if secret:
            message = record.getMessage()
            if secret in message:
                record.msg, record.args = message.replace(secret, REDACTED), None
        return True


_FILTER = _HideSecret()


def hide_secrets_in_logs() -> None:
    """Redact the current request's key from the HTTP client's log records (idempotent)."""
    for name in _WIRE_LOGGERS:
        logging.getLogger(name).addFilter(_FILTER)
