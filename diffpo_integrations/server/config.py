"""Settings of the embedded TGI-compatible server."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from diffpo_integrations.core.types import DecodeMethod

__all__ = ["DecodeMethod", "ServerConfig"]


_DEFAULT_TOTAL_TOKENS_CAP = 4096
"""TGI's default ``max_total_tokens`` cap; the model's own context length is used when smaller."""


DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
"""TGI's request-body limit (``--payload-limit``, 2 MB)."""

API_KEY_ENV = "DIFFPO_API_KEY"
"""Environment variable holding the bearer token when none is given otherwise."""


def _env_api_key() -> SecretStr | None:
    value = os.environ.get(API_KEY_ENV)
    return SecretStr(value) if value else None


class ServerConfig(BaseModel):
    """How to load the model and how much the server admits.

    Token limits left as ``None`` are derived from the model when it is loaded (see
    :meth:`resolved_limits`), as TGI does from the model config.

    Example:
        >>> ServerConfig(port=0).host
        '127.0.0.1'
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: str | None = None
    """A hub id, local folder or ``.gguf`` file; ``None`` serves the bundled SmolLM2-135M-Instruct."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback by default so nothing is exposed by accident."""
    port: int = Field(default=8080, ge=0, le=65535)
    """TCP port; ``0`` picks a free one."""
    model_id: str | None = None
    """Name reported by ``/info`` and the OpenAI routes; the loaded model's id when ``None``."""
    dtype: str | None = None
    """Torch dtype name passed to the engine (``"float32"``, ``"bfloat16"``); engine default when ``None``."""
    device: str | None = None
    """Torch device passed to the engine; engine default when ``None``."""
    num_threads: int | None = Field(default=None, ge=1)
    """torch's intra-op threads for the model; torch's default (one per core) when ``None``. On a CPU
    shared with other busy processes, fewer threads than cores can be several times faster."""
    trust_remote_code: bool = False
    """Passed to the engine's loader."""
    cache_dir: str | None = None
    """Passed to the engine's loader."""
    max_concurrent_requests: int = Field(default=8, ge=1)
    """Requests the model works on at once: never more generations than this run, batched or not."""
    max_batch_size: int = Field(default=8, ge=1)
    """Generations decoded together, sharing every forward pass (TGI's name); ``1`` runs them one at a time.
    The generations running at once are ``min(max_batch_size, max_concurrent_requests)``."""
    max_waiting: int = Field(default=120, ge=0)
    """Further requests allowed to wait in line; past ``max_concurrent_requests + max_waiting`` admitted
    requests the server answers 429 with ``Retry-After``."""
    max_input_tokens: int | None = Field(default=None, ge=1)
    """Longest accepted input in tokens; ``max_total_tokens - 1`` when ``None``."""
    max_total_tokens: int | None = Field(default=None, ge=2)
    """Input plus new tokens; the model's context length (at most 4096) when ``None``."""
    max_new_tokens_limit: int | None = Field(default=None, ge=1)
    """Largest ``max_new_tokens`` a request may ask for; ``max_total_tokens - 1`` when ``None``."""
    max_stop_sequences: int = Field(default=4, ge=0)
    """TGI's default."""
    api_key: SecretStr | None = Field(default_factory=_env_api_key)
    """Bearer token required on generation routes; read from ``DIFFPO_API_KEY`` when not given. Kept as a
    ``SecretStr``: it never shows in ``repr``, logs or ``model_dump`` (``api_key.get_secret_value()`` reads it)."""
    default_max_new_tokens: int = Field(default=1024, ge=1)
    """``max_new_tokens`` of a TGI request that gives none (TGI's default; capped by the room left)."""
    default_completion_tokens: int = Field(default=16, ge=1)
    """``max_tokens`` of a ``/v1/completions`` request that gives none (OpenAI's and vLLM's default)."""
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024)
    """Largest request body; a longer one is answered 413 before it is read whole (TGI's 2 MB by default)."""
    header_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds a connection may take to send a complete request head, or stay silent while sending a
    body; then it is closed."""
    keep_alive_timeout_s: float = Field(default=5.0, gt=0)
    """Seconds an idle keep-alive connection stays open between requests (uvicorn's ``timeout_keep_alive``)."""
    max_connections: int = Field(default=256, ge=2)
    """Open client connections at most. Past it the idlest connection that has not sent a complete
    request is closed to make room, or the newcomer when every connection is busy. Keep it below the
    process's open-file limit (``ulimit -n``) so the server can always accept a health probe."""
    stream_logprobs: bool = True
    """Score each streamed token (one extra cached model step per token); ``logprob`` is null when off."""
    method: DecodeMethod = "auto"
    """Default decoding method of the engine (all are greedy-exact)."""
    template: str | None = None
    """Chat template for ``/diffpo/align`` when a request names none; the tokenizer's own when ``None``."""
    retry_after_s: int = Field(default=1, ge=0)
    """``Retry-After`` seconds sent with 429 answers."""
    log_level: str = "info"
    """uvicorn log level."""

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_limits(self) -> ServerConfig:
        total, max_input = self.max_total_tokens, self.max_input_tokens
        if total is not None and max_input is not None and max_input >= total:
            msg = f"max_input_tokens ({max_input}) must be < max_total_tokens ({total})"
            raise ValueError(msg)
        return self

    def resolved_limits(self, model_max_positions: int | None) -> tuple[int, int, int]:
        """``(max_input_tokens, max_total_tokens, max_new_tokens_limit)`` for a model of that context length.

        Example:
            >>> ServerConfig().resolved_limits(8192)
            (4095, 4096, 4095)
        """
        total = self.max_total_tokens
        if total is None:
            total = min(model_max_positions or _DEFAULT_TOTAL_TOKENS_CAP, _DEFAULT_TOTAL_TOKENS_CAP)
            if self.max_input_tokens is not None:
                total = max(total, self.max_input_tokens + 1)
        max_input = self.max_input_tokens if self.max_input_tokens is not None else total - 1
        new_limit = self.max_new_tokens_limit if self.max_new_tokens_limit is not None else total - 1
        return max_input, total, new_limit
