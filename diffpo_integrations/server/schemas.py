"""Request bodies of every route (pydantic), as TGI, OpenAI/vLLM and the DiffPO route define them.

Unknown fields are ignored, as TGI and the OpenAI-compatible servers do, so clients that send
extra options keep working; options the embedded server cannot honour are refused by the routes
with a 422 that names them. Text fields refuse lone surrogates (:mod:`diffpo_integrations.wire.text`).
The OpenAI bodies live in the torch-free :mod:`diffpo_integrations.wire.openai`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from diffpo_integrations.core.types import PromptMode
from diffpo_integrations.wire.openai import ChatBody, ChatMessage, CompletionBody, StreamOptions, stop_list
from diffpo_integrations.wire.text import Text

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
    stop: list[Text] = Field(default_factory=list)
    temperature: float | None = None
    top_k: int | None = None
    top_n_tokens: int | None = None
    top_p: float | None = None
    truncate: int | None = None
    typical_p: float | None = None
    watermark: bool = False

    _stop = field_validator("stop", mode="before")(stop_list)


class GenerateBody(_Body):
    """``POST /generate``, ``/generate_stream`` and ``/``."""

    inputs: Text
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    stream: bool = False
    """Only read by ``POST /``."""


class TokenizeBody(_Body):
    """``POST /tokenize``."""

    inputs: Text
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)


class AlignMessage(_Body):
    """One conversation turn of ``/diffpo/align``."""

    role: Text
    content: Text


class AlignBody(_Body):
    """``POST /diffpo/align``: align ``draft``, the base model's answer to the last user turn."""

    messages: list[AlignMessage] = Field(min_length=1)
    draft: Text
    keep_prefix_tokens: int = Field(default=6, ge=0)
    max_new_tokens: int = Field(default=256, ge=1)
    prompt_mode: PromptMode = "official"
    template: Text | None = None
    method: Literal["auto", "greedy", "speculative", "jacobi"] | None = None
    block_size: int | None = Field(default=None, ge=1)
    max_iter: int | None = Field(default=None, ge=1)
    stream: bool = False
