"""The one reliability policy: which errors are retried, fail over, or fall back to the draft.

Every backend, the pool, the LangChain and LlamaIndex components, the gateway and ``diffpo eval``
decide with these functions, so an error means the same thing wherever it is raised:

- :func:`is_retried`: the transport sends the same request again (with backoff, within the deadline);
- :func:`fails_over`: an :class:`~diffpo_integrations.backends.AlignerPool` tries another member, and
  counts the error against the member's circuit breaker (unless :func:`counts_against_member` says no);
- :func:`falls_back`: under ``fail_policy="open"`` the call returns the draft, flagged
  (:meth:`~diffpo_integrations.core.AlignResult.unaligned`), instead of raising.

Under ``fail_policy="closed"`` every error raises; under ``"open"`` every :class:`DiffPOError`
except a :class:`ConfigurationError` (a wrong setup: returning drafts would hide it) falls back. A
stream falls back only before its first piece of text: text already handed out cannot be taken back.
Exceptions outside the tree (programming errors, cancellation) are never absorbed.

:func:`error_table` renders the policy as the table in ``docs/reliability.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import get_args

from diffpo_integrations.core.errors import (
    AlignerConnectionError,
    AlignerError,
    AlignerTimeoutError,
    AuthenticationError,
    ConfigurationError,
    ConversationNotFoundError,
    DiffPOError,
    EngineError,
    GenerationError,
    IncompleteGenerationError,
    InputError,
    OverloadedError,
    ServerValidationError,
)
from diffpo_integrations.core.types import AlignResult, FailPolicy

__all__ = [
    "check_fail_policy",
    "counts_against_member",
    "error_table",
    "fail_over_or_raise",
    "fall_back",
    "falls_back",
    "fails_over",
    "is_retried",
]

# Errors that say "this endpoint could not serve now"; another endpoint (or a later try) may.
_ENDPOINT_FAULTS = (
    AlignerConnectionError,
    AlignerTimeoutError,
    OverloadedError,
    IncompleteGenerationError,
    GenerationError,
    EngineError,
)


def check_fail_policy(value: object) -> FailPolicy:
    """Return ``value`` if it is a fail policy.

    Raises:
        ConfigurationError: it is neither ``"open"`` nor ``"closed"``.
    """
    if value not in get_args(FailPolicy):
        msg = f"fail_policy must be 'open' or 'closed', got {value!r}"
        raise ConfigurationError(msg)
    return value  # type: ignore[return-value]


def is_retried(error: BaseException) -> bool:
    """Whether the transport retries the request: connection errors (and 502/503/504), 429, incomplete generation."""
    return isinstance(error, AlignerError) and error.retryable


def fails_over(error: BaseException) -> bool:
    """Whether a pool tries another member: endpoint faults, timeouts, 429 and every 5xx; not bad requests or setup."""
    if not isinstance(error, AlignerError) or isinstance(error, InputError | AuthenticationError):
        return False
    if isinstance(error, _ENDPOINT_FAULTS):
        return True
    return error.status is not None and error.status >= 500


def counts_against_member(error: BaseException) -> bool:
    """Whether a failed-over error counts towards the member's circuit breaker (429 is back-pressure, not a fault)."""
    return fails_over(error) and not isinstance(error, OverloadedError)


def falls_back(error: BaseException) -> bool:
    """Whether ``fail_policy="open"`` returns the flagged draft for this error (every DiffPOError but setup errors)."""
    return isinstance(error, DiffPOError) and not isinstance(error, ConfigurationError)


def fall_back(
    policy: FailPolicy,
    draft: str,
    error: BaseException,
    *,
    endpoint: str | None = None,
    emitted: bool = False,
    warning: type[Warning] | None = None,
    stacklevel: int = 3,
) -> AlignResult:
    """The flagged draft result for ``error`` under ``policy``, or ``error`` raised.

    Args:
        policy: ``"open"`` or ``"closed"``.
        draft: the draft to return unaligned.
        error: what went wrong.
        endpoint: the aligner to name in the result when the error does not name one.
        emitted: a stream already handed out aligned text, so it cannot fall back any more.
        warning: warning class to emit when falling back (``None``: no warning).
        stacklevel: passed to :func:`warnings.warn`.

    Raises:
        BaseException: ``error`` itself, under ``"closed"``, after text was emitted, or when it
            does not fall back (see :func:`falls_back`).
    """
    if policy != "open" or emitted or not falls_back(error):
        raise error
    named = getattr(error, "endpoint", None)
    result = AlignResult.unaligned(draft, error, endpoint=named if isinstance(named, str) else endpoint)
    if warning is not None:
        message = f"DiffPO returned the draft unaligned (fail_policy='open'): {result.error}"
        warnings.warn(message, warning, stacklevel=stacklevel)
    return result


def fail_over_or_raise(error: BaseException) -> None:
    """Raise ``error`` unless a pool should try another member with it."""
    if not fails_over(error):
        raise error


_EXAMPLES: Sequence[tuple[str, BaseException]] = (
    ("`AlignerConnectionError`: refused, reset, DNS; HTTP 502, 503, 504", AlignerConnectionError("x", status=503)),
    ("`OverloadedError`: HTTP 429 (waits at least `Retry-After`)", OverloadedError("x", status=429)),
    ("`IncompleteGenerationError`: the server stopped mid-generation", IncompleteGenerationError("x", status=500)),
    ("`AlignerTimeoutError`: the deadline (or `timeout`) ran out", AlignerTimeoutError("x")),
    ("`GenerationError`: HTTP 424, the model failed", GenerationError("x", status=424)),
    ("`EngineError`: `LocalAligner`'s engine failed", EngineError("x")),
    ("`AlignerError` with another 5xx (a plain 500)", AlignerError("x", status=500)),
    ("`AlignerError` with another 4xx (404, 405...)", AlignerError("x", status=404)),
    ("`AuthenticationError`: HTTP 401, 403", AuthenticationError("x", status=401)),
    ("`ServerValidationError`: HTTP 422", ServerValidationError("x", status=422)),
    ("`InputError`: bad conversation, draft or option (before sending)", InputError("x")),
    ("`ConversationNotFoundError`: a chain step found no conversation", ConversationNotFoundError("x")),
    ("`ConfigurationError`: bad argument, missing extra", ConfigurationError("x")),
)


def error_table() -> str:
    """The policy as a Markdown table (errors x behaviour), as ``docs/reliability.md`` shows it."""

    def yes(flag: bool, note: str = "") -> str:
        return ("yes" + note) if flag else "no"

    lines = [
        '| Error | Retried | Fails over (pool) | Falls back under `fail_policy="open"` |',
        "|---|---|---|---|",
    ]
    for label, error in _EXAMPLES:
        over = fails_over(error)
        note = "" if counts_against_member(error) or not over else ", not counted by the breaker"
        lines.append(f"| {label} | {yes(is_retried(error))} | {yes(over, note)} | {yes(falls_back(error))} |")
    return "\n".join(lines)
