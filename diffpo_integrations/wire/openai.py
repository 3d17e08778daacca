"""OpenAI's wire shapes: chat and completion request bodies, the error body, log-prob entries.

Torch-free, so any OpenAI-compatible surface of the project (the embedded server's ``/v1/*``
routes, a gateway in front of another endpoint) shares one definition. Unknown fields are ignored,
as OpenAI-compatible servers do; what a server cannot honour is refused by its routes with an
error that names the parameter.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from diffpo_integrations.wire.text import Text, check_text

__all__ = [
    "ChatBody",
    "ChatMessage",
    "CompletionBody",
    "StreamOptions",
    "openai_error",
    "openai_error_body",
    "openai_error_type",
    "openai_top_logprob",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


def stop_list(value: Any) -> Any:
    """``stop`` as a list: one string, a list, or null (none)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


class ChatMessage(_Body):
    """One chat message; ``content`` may be a string or a list of parts (only text parts are read)."""

    role: Text
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_text(value)
        elif isinstance(value, list):
            for part in value:
                if isinstance(part.get("text"), str):
                    check_text(part["text"])
        return value

    def text(self) -> str:
        """The message text, text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content if part.get("type", "text") == "text")

    def non_text_parts(self) -> list[tuple[int, str]]:
        """``(index, type)`` of every content part that is not text (images, audio, files)."""
        if not isinstance(self.content, list):
            return []
        return [(i, str(p.get("type"))) for i, p in enumerate(self.content) if p.get("type", "text") != "text"]


class StreamOptions(_Body):
    """``stream_options``."""

    include_usage: bool = False


class _OpenAIBody(_Body):
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: list[Text] = Field(default_factory=list)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    # vLLM's extensions, which OpenAI clients pass through ``extra_body``.
    top_k: int | None = None
    repetition_penalty: float | None = None

    _stop = field_validator("stop", mode="before")(stop_list)

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (newer clients) or ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChatBody(_OpenAIBody):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    functions: list[dict[str, Any]] | None = None
    response_format: Any = None


class CompletionBody(_OpenAIBody):
    """``POST /v1/completions`` (vLLM's shape: ``prompt`` is text, token ids, or a list of either)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None
    return_token_ids: bool = False
    """vLLM's extension: each choice also carries its generated ``token_ids`` (and ``prompt_token_ids``)."""

    @field_validator("prompt")
    @classmethod
    def _encodable(cls, value: Any) -> Any:
        for text in [value] if isinstance(value, str) else value:
            if isinstance(text, str):
                check_text(text)
        return value


def openai_error_type(status: int) -> str:
    """OpenAI's ``error.type`` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500 or status == 424:  # 424: TGI's "the model failed while generating"
        return "server_error"
    return "invalid_request_error"


def openai_error(message: str, error_type: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error body, which every OpenAI SDK turns into an exception showing ``message``.

    Example:
        >>> openai_error("bad key", "authentication_error")["error"]["message"]
        'bad key'
    """
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def openai_error_body(
    message: str, status: int, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """:func:`openai_error` with the ``type`` OpenAI gives ``status``.

    Example:
        >>> openai_error_body("`logprobs` must be <= 5", 422, code="validation", param="logprobs")
        {'error': {'message': '`logprobs` must be <= 5', 'type': 'invalid_request_error', 'param': 'logprobs', 'code': 'validation'}}
    """
    return openai_error(message, openai_error_type(status), param=param, code=code)


def openai_top_logprob(text: str, logprob: float) -> dict[str, Any]:
    """One ``{"token", "logprob", "bytes"}`` entry of chat log-probs."""
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
