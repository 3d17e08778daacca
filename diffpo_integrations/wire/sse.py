"""Server-sent events as every streaming route of the project writes them."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["sse_event"]


def sse_event(payload: Any) -> bytes:
    """One event carrying ``payload`` as JSON, or as is when it is a string (OpenAI's ``[DONE]``).

    Example:
        >>> sse_event({"text": "é"})
        b'data: {"text": "\\xc3\\xa9"}\\n\\n'
    """
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()
