"""Request bodies of every route (pydantic), as TGI, OpenAI/vLLM and the DiffPO route define them.

Unknown fields are ignored, as TGI and the OpenAI-compatible servers do, so clients that send
extra options keep working; options the embedded server cannot honour are refused by the routes
with a 422 that names them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from diffpo_integrations.core.types import PromptMode

__all__ = [
    "AlignBody",
    "ChatBody",
    "ChatMessage",
    "CompletionBody",
    "GenerateBody",
    "GenerateParameters",
    "StreamOptions",
    "TokenizeBody",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _stop_list(value: Any) -> Any:
    # TGI sends a list; OpenAI clients may send one string; null means none.
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return value


class GenerateParameters(_Body):
    """TGI's ``parameters`` object (all of it is accepted; the routes refuse what is not supported)."""

    adapter_id: str | None = None
    best_of: int | None = None
    decoder_input_details: bool = False
    details: bool = False
    do_sample: bool = False
    frequency_penalty: float | None = None
    grammar: Any = None
    max_new_tokens: int | None = None
    repetition_penalty: float | None = None
    return_full_text: bool | None = None
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False

    _stop = field_validator("stop", mode="before")(_stop_list)


class GenerateBody(_Body):
    """``POST /generate``, ``/generate_stream`` and ``/``."""

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False
    """Only read by ``POST /``."""


class TokenizeBody(_Body):
    """``POST /tokenize``."""

    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class AlignMessage(_Body):
    """One conversation turn of ``/diffpo/align``."""

    role: str
    content: str


class AlignBody(_Body):
    """``POST /diffpo/align``: align ``draft``, the base model's answer to the last user turn."""

    messages: list[AlignMessage] = Field(min_length=1)
    draft: str
    keep_prefix_tokens: int = Field(default=6, ge=0)
    max_new_tokens: int = Field(default=256, ge=1)
    prompt_mode: PromptMode = "official"
    template: str | None = None
    method: Literal["auto", "greedy", "speculative", "jacobi"] | None = None
    block_size: int | None = Field(default=None, ge=1)
    max_iter: int | None = Field(default=None, ge=1)
    stream: bool = False


class ChatMessage(_Body):
    """One OpenAI chat message; ``content`` may be a string or a list of text parts."""

    role: str
    content: str | list[dict[str, Any]] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message text, text parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content if part.get("type", "text") == "text")


class StreamOptions(_Body):
    """OpenAI's ``stream_options``."""

    include_usage: bool = False


class _OpenAIBody(_Body):
    model: str | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: list[str] = Field(default_factory=list)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    seed: int | None = None
    logprobs: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    _stop = field_validator("stop", mode="before")(_stop_list)

    @property
    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (newer clients) or ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChatBody(_OpenAIBody):
    """``POST /v1/chat/completions`` (TGI's Messages API, OpenAI's shape)."""

    messages: list[ChatMessage] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: Any = None


class CompletionBody(_OpenAIBody):
    """``POST /v1/completions`` (vLLM's shape: ``prompt`` is text, token ids, or a list of either)."""

    prompt: str | list[int] | list[str] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
