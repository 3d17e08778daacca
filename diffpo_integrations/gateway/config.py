"""Settings of ``diffpo gateway``: the upstream chat endpoint, the aligner, and what the gateway admits."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from diffpo_integrations.core.aligner import DEFAULT_MAX_NEW_TOKENS
from diffpo_integrations.core.types import FailPolicy, PromptMode
from diffpo_integrations.gateway.upstream import DEFAULT_MAX_BODY

__all__ = ["GatewayConfig", "StreamPolicy", "UpstreamAPI", "upstream_base"]

StreamPolicy = Literal["full_draft", "early"]
UpstreamAPI = Literal["chat_completions", "responses"]


def upstream_base(url: str) -> str:
    """The upstream's OpenAI base URL, ending in ``/v1`` (added when the user gave the server root).

    Example:
        >>> upstream_base("http://127.0.0.1:8080"), upstream_base("https://api.openai.com/v1/")
        ('http://127.0.0.1:8080/v1', 'https://api.openai.com/v1')
    """
    base = url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


class GatewayConfig(BaseModel):
    """How ``diffpo gateway`` reaches the upstream and the aligner, and what it admits.

    Keys are :class:`~pydantic.SecretStr`: they never appear in ``repr``, logs or error messages.

    Example:
        >>> cfg = GatewayConfig(upstream="http://127.0.0.1:8081", aligner_urls=["http://127.0.0.1:8080"], api_key="s3cret")
        >>> cfg.upstream, "s3cret" in repr(cfg)
        ('http://127.0.0.1:8081/v1', False)
    """

    model_config = ConfigDict(extra="forbid")

    upstream: str
    """The chat endpoint that writes drafts (OpenAI, vLLM, SGLang, TGI's Messages API, Ollama, ``diffpo serve``);
    its base URL, with or without the trailing ``/v1``."""
    upstream_api: UpstreamAPI = "chat_completions"
    """What ``POST /v1/responses`` calls upstream: ``chat_completions`` translates it to the upstream's chat
    completions; ``responses`` forwards it to the upstream's own ``/v1/responses`` (OpenAI, and servers that
    have it)."""
    aligner_urls: list[str] = Field(min_length=1)
    """One aligner server, or several (served as an :class:`~diffpo_integrations.backends.AlignerPool`)."""
    template: str | None = None
    """The aligner's chat template (``gemma``, ``llama3``...); ``None`` for ``diffpo serve``'s own."""
    keep_prefix_tokens: int = Field(default=6, ge=0)
    """Draft tokens kept verbatim; a request may override it with ``"diffpo": {"keep_prefix_tokens": N}``."""
    max_new_tokens: int = Field(default=DEFAULT_MAX_NEW_TOKENS, ge=1)
    """Aligner tokens when the request gives no ``max_tokens`` / ``max_completion_tokens``."""
    prompt_mode: PromptMode = "official"
    """The aligner prompt: ``official`` or ``clean``."""
    fail_policy: FailPolicy = "open"
    """``open``: a failed alignment answers the upstream's draft, flagged; ``closed``: an error answer."""
    stream_policy: StreamPolicy = "full_draft"
    """``full_draft`` reads the whole upstream answer first; ``early`` starts aligning once the kept prefix
    has arrived and stops the upstream."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback by default so nothing is exposed by accident."""
    port: int = Field(default=8000, ge=0, le=65535)
    """TCP port; ``0`` picks a free one."""
    api_key: SecretStr | None = None
    """Key clients must send as ``Authorization: Bearer <key>``; ``None`` admits every client."""
    upstream_api_key: SecretStr | None = None
    """Key sent to the upstream as ``Authorization: Bearer <key>``."""
    forward_authorization: bool = False
    """Send the client's own ``Authorization`` header upstream (only without ``api_key``)."""
    upstream_timeout: float = Field(default=300.0, gt=0)
    """Seconds the upstream may take for its whole answer; a stream's for its head, then for each line of
    events (data or keep-alive comment), however slowly the bytes come."""
    max_upstream_body: int = Field(default=DEFAULT_MAX_BODY, ge=1)
    """Bytes an upstream answer may have (an error body, or a stream in total); past it the answer is cut
    off with a 502 and its connection closed. Default 32 MiB."""
    upstream_proxy: str | None = None
    """Forward proxy for both legs, instead of ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY``; loopback and
    ``NO_PROXY`` hosts go direct."""
    proxy_env: bool = True
    """Read ``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY`` and ``NO_PROXY`` (either case) for both legs."""
    upstream_ca_bundle: str | None = None
    """PEM file of CAs trusted for an HTTPS upstream, besides the system's (and ``SSL_CERT_FILE``)."""
    aligner_ca_bundle: str | None = None
    """PEM file of CAs trusted for HTTPS aligners, besides the system's (and ``SSL_CERT_FILE``)."""
    aligner_timeout: float = Field(default=120.0, gt=0)
    """Seconds one alignment may take, retries and failover included."""
    max_concurrent_requests: int = Field(default=64, ge=1)
    """Requests handled at once."""
    max_waiting: int = Field(default=256, ge=0)
    """Further requests that may wait; past that the gateway answers 429 with ``Retry-After``."""
    log_level: str = "info"
    """uvicorn's log level."""

    @field_validator("upstream")
    @classmethod
    def _base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            msg = f"upstream must be an http(s) URL such as http://127.0.0.1:8081/v1, got {value!r}"
            raise ValueError(msg)
        return upstream_base(value)

    @model_validator(mode="after")
    def _one_client_key(self) -> GatewayConfig:
        if self.forward_authorization and self.api_key is not None:
            msg = (
                "forward_authorization sends the client's Authorization header upstream, so it cannot also carry "
                "the gateway's own api_key: use one or the other"
            )
            raise ValueError(msg)
        return self
