"""The aligner contract: what goes in (:class:`AlignRequest`) and what comes out (:class:`AlignResult`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from diffpo_integrations.core.errors import InputError

__all__ = [
    "AlignChunk",
    "AlignRequest",
    "AlignResult",
    "DecodeFinishReason",
    "DecodeMethod",
    "FailPolicy",
    "FinishReason",
    "Message",
    "PromptMode",
    "Role",
    "check_utf8",
    "coerce_messages",
]

Role = Literal["system", "user", "assistant"]
PromptMode = Literal["official", "clean"]
FailPolicy = Literal["open", "closed"]
DecodeMethod = Literal["auto", "greedy", "speculative", "jacobi"]
"""How an aligner decodes: ``auto`` (speculative with a draft), ``greedy``, ``speculative`` or ``jacobi``."""
DecodeFinishReason = Literal["eos_token", "length"]
"""Why the decoder stopped: the end of the turn, or the token limit."""
FinishReason = Literal[DecodeFinishReason, "stop_sequence", "error"]
"""Why an alignment ended: a :data:`DecodeFinishReason`, a stop sequence (remote servers), or an error
(the flagged draft of a fail-open policy)."""


class Message(BaseModel):
    """One conversation turn, as role and plain text."""

    model_config = ConfigDict(frozen=True)

    role: Role
    """``system``, ``user`` or ``assistant`` (assistant turns are the base model's earlier answers)."""
    content: str
    """The turn's text."""


def check_utf8(
    text: str, what: str, advice: str = "decode the source bytes with errors='replace' before aligning"
) -> str:
    """Return ``text`` if it can be sent as UTF-8; lone surrogates (from undecodable bytes) cannot.

    Raises:
        InputError: naming ``what``, the position of the first bad character and ``advice``.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        msg = f"{what} is not valid UTF-8 text: lone surrogate {text[exc.start]!r} at character {exc.start}; {advice}"
        raise InputError(msg) from None
    return text


def coerce_messages(messages: Iterable[Message | Mapping[str, Any] | tuple[str, str]]) -> list[Message]:
    """Turn role/content dicts, ``(role, content)`` pairs or :class:`Message` objects into messages.

    Raises:
        InputError: a turn has an unknown role or non-text content, or the list is empty.

    Example:
        >>> coerce_messages([("user", "Hi")])
        [Message(role='user', content='Hi')]
    """
    out: list[Message] = []
    role: Any
    content: Any
    for i, raw in enumerate(messages):
        if isinstance(raw, Message):
            out.append(raw)
            continue
        if isinstance(raw, tuple) and len(raw) == 2:
            role, content = raw
        elif isinstance(raw, Mapping):
            role, content = raw.get("role"), raw.get("content")
        else:
            msg = f"message {i} must be a Message, a dict with 'role' and 'content', or a (role, content) pair; got {type(raw).__name__}"
            raise InputError(msg)
        if role == "human":
            role = "user"
        elif role == "ai":
            role = "assistant"
        if role not in ("system", "user", "assistant"):
            msg = f"message {i} has role {role!r}; use 'system', 'user' or 'assistant'"
            raise InputError(msg)
        if not isinstance(content, str):
            msg = (
                f"message {i} ({role}) has non-text content of type {type(content).__name__}; "
                "DiffPO aligns text only: pass the text parts joined as one string"
            )
            raise InputError(msg)
        out.append(Message(role=role, content=check_utf8(content, f"message {i} ({role})")))
    if not out:
        msg = "the conversation is empty: pass at least the user turn that the draft answers"
        raise InputError(msg)
    return out


class AlignRequest(BaseModel):
    """One alignment: the conversation, the draft answer to its last user turn, and options."""

    messages: list[Message]
    """Earlier turns (with the base model's earlier answers) and the current user turn, last."""
    draft: str
    """The base model's answer to the last user turn."""
    keep_prefix_tokens: int | None = Field(default=None, ge=0)
    """Draft tokens kept verbatim before the aligner continues; ``None`` uses the aligner's setting."""
    max_new_tokens: int | None = Field(default=None, ge=1)
    """Tokens the aligner may add after the kept prefix; ``None`` uses the aligner's setting."""

    def __init__(self, **data: Any) -> None:
        # pydantic wraps a ValueError raised in a validator (InputError is one) in its own
        # ValidationError, which is no DiffPOError: raise the InputError itself instead.
        try:
            super().__init__(**data)
        except ValidationError as exc:
            for error in exc.errors():
                cause = (error.get("ctx") or {}).get("error")
                if isinstance(cause, InputError):
                    raise cause from None
            details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'request'}: {e['msg']}" for e in exc.errors())
            raise InputError(f"invalid align request: {details}") from exc

    @field_validator("messages", mode="before")
    @classmethod
    def _coerce(cls, value: Any) -> list[Message]:
        return coerce_messages(value)

    @field_validator("draft")
    @classmethod
    def _draft_utf8(cls, value: str) -> str:
        if not value.strip():
            # Checked here, before any request is sent, so every backend answers the same way.
            msg = "the draft is empty or whitespace: pass the base model's answer text as the draft"
            raise InputError(msg)
        return check_utf8(value, "the draft")

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, value: list[Message]) -> list[Message]:
        if value[-1].role != "user":
            msg = f"the conversation must end with the user turn the draft answers; it ends with a {value[-1].role!r} turn"
            raise InputError(msg)
        return value


class AlignResult(BaseModel):
    """What an aligner returns for one :class:`AlignRequest`."""

    text: str
    """The aligned answer (the draft itself when ``aligned`` is false)."""
    draft: str
    """The draft that was aligned."""
    kept_prefix: str = ""
    """The part of the draft kept verbatim at the start of the answer."""
    kept_prefix_tokens: int = 0
    """How many draft tokens the aligner kept."""
    generated_tokens: int = 0
    """Tokens the aligner generated after the kept prefix."""
    finish_reason: FinishReason = "eos_token"
    """Why generation stopped: end of turn, the token limit, a stop sequence, or an error."""
    aligned: bool = True
    """False when a fail-open policy returned the draft unaligned."""
    error: str | None = None
    """The error (type and message) when ``aligned`` is false."""
    latency_s: float = 0.0
    """Wall time of the alignment as seen by the client, in seconds."""
    endpoint: str | None = None
    """The aligner that served the request (URL or ``local``)."""
    timings: dict[str, str] = Field(default_factory=dict)
    """Server timing headers (``x-*-time``) when the server sent them."""
    details: dict[str, Any] = Field(default_factory=dict)
    """Extra figures from the server: forward passes, accepted draft tokens, token ids."""

    def metadata(self) -> dict[str, Any]:
        """The result without the aligned text, for attaching to a framework's response metadata."""
        return self.model_dump(exclude={"text"})

    @classmethod
    def unaligned(
        cls, draft: str, error: BaseException, *, endpoint: str | None = None, latency_s: float = 0.0
    ) -> AlignResult:
        """The fail-open result: the draft returned as is, flagged, with the error recorded."""
        return cls(
            text=draft,
            draft=draft,
            aligned=False,
            finish_reason="error",
            error=f"{type(error).__name__}: {error}",
            endpoint=endpoint,
            latency_s=latency_s,
        )


class AlignChunk(BaseModel):
    """One piece of a streamed alignment.

    Chunks concatenate to the aligned text. The first chunk holds the kept draft prefix; the last
    has ``result`` set with the complete :class:`AlignResult`.
    """

    text: str
    result: AlignResult | None = None


def join_chunks(chunks: Sequence[AlignChunk]) -> str:
    """Concatenate streamed chunks (helper for tests and callers that buffer)."""
    return "".join(c.text for c in chunks)
