"""Wire formats shared by every HTTP surface of the project, torch-free (pydantic only).

- :mod:`.text`: text fields that refuse what no tokenizer can encode (lone surrogates).
- :mod:`.openai`: OpenAI's chat and completion request bodies, error body and log-prob shapes,
  used by the embedded server's ``/v1/*`` routes and the gateway, importable without the engine.
- :mod:`.sse`: server-sent event framing.
"""

from diffpo_integrations.wire.openai import (
    ChatBody,
    ChatMessage,
    CompletionBody,
    StreamOptions,
    openai_error,
    openai_error_body,
    openai_error_type,
)
from diffpo_integrations.wire.sse import sse_event
from diffpo_integrations.wire.text import Text, check_text

__all__ = [
    "ChatBody",
    "ChatMessage",
    "CompletionBody",
    "StreamOptions",
    "Text",
    "check_text",
    "openai_error",
    "openai_error_body",
    "openai_error_type",
    "sse_event",
]
