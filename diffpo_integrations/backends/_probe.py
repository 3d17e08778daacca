"""Client-side misconfiguration, caught on the first request and explained: base URLs and probe answers.

A TGI (or ``diffpo serve``) answers ``GET /info`` at its root with JSON. Users often paste the
OpenAI-style base URL (``.../v1``) or a route (``.../generate``), or point at a web page; the
raw answer (an HTML page, a bare ``Not Found``) says nothing about what to change.
"""

from __future__ import annotations

import html
import re
from typing import Any

from diffpo_integrations.core.errors import ConfigurationError

__all__ = ["check_probe_answer", "normalize_base_url"]

_ROUTE_SUFFIXES = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1",
    "/generate_stream",
    "/generate",
    "/diffpo/align",
    "/info",
)
"""Paths users paste after the root; every TGI route lives at the root."""
_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def normalize_base_url(url: str) -> str:
    """The server's root: trailing ``/`` and a pasted route (``/v1``, ``/generate``...) removed.

    Raises:
        ConfigurationError: the URL has no ``http://`` or ``https://`` scheme.

    Example:
        >>> normalize_base_url("http://gpu-box:8080/v1/")
        'http://gpu-box:8080'
    """
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        msg = f"base_url must start with http:// or https://, got {url!r}"
        raise ConfigurationError(msg)
    for suffix in _ROUTE_SUFFIXES:
        if base.endswith(suffix) and base.count("/") > 2:
            return base[: -len(suffix)].rstrip("/")
    return base


def _describe(status: int, content_type: str, text: str) -> str:
    kind = content_type.split(";")[0].strip() or "no content type"
    title = _TITLE.search(text)
    if title:
        what = f"an HTML page titled {html.unescape(' '.join(title.group(1).split()))[:80]!r}"
    elif "html" in kind:
        what = "an HTML page"
    elif text.strip():
        what = f"{len(text)} characters of {kind}"
    else:
        what = "an empty body"
    return f"HTTP {status} with {what}"


def check_probe_answer(base_url: str, path: str, response: Any) -> dict[str, Any]:
    """The JSON object of a probe answer (``GET /info``), or a :class:`ConfigurationError` saying what came back.

    A server's own error answers (a JSON error body, or 401, 429, 5xx) are left to the caller's
    usual error mapping: only answers that show the URL is not such a server are explained here
    (a 404 or 405, an HTML page, a body that is not a JSON object).

    Args:
        base_url: The configured root URL.
        path: The probed path (``/info``).
        response: An ``httpx``/``httpx2`` response, body read.

    Raises:
        ConfigurationError: the answer is a 404/405, HTML, or not a JSON object.
    """
    status = int(response.status_code)
    content_type = str(response.headers.get("content-type", ""))
    payload: Any = None
    if "json" in content_type:
        try:
            payload = response.json()
        except ValueError:
            payload = None
    if status < 400 and isinstance(payload, dict):
        return payload
    if status >= 400 and status not in (404, 405) and isinstance(payload, dict) and "error" in payload:
        # A server's own error answer (TGI's or OpenAI's shape): the caller's error mapping types it.
        return {}
    if status in (401, 403, 429) or status >= 500:
        return {}
    msg = (
        f"{base_url} does not look like a TGI or `diffpo serve` server: GET {base_url}{path} answered "
        f"{_describe(status, content_type, response.text)}, not the server's JSON. Point base_url at the "
        "server's root, where GET /info answers (`diffpo serve`: http://127.0.0.1:8080); for a vLLM or "
        "SGLang server use OpenAICompatAligner"
    )
    raise ConfigurationError(msg)
