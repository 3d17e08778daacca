"""The package's one error tree.

Every failure that reaches a user is a :class:`DiffPOError`, so one ``except`` catches
them all, and the subclass says what to do next::

    DiffPOError
    ├── ConfigurationError          bad constructor argument, missing extra or model, wiring mistake
    │   ├── ModelNotFoundError      the model path or the default model's package is missing
    │   └── ConversationNotFoundError   a chain step could not find the conversation
    ├── InputError                  bad conversation, draft or option (fix the call)
    └── AlignerError                the aligner failed; ``endpoint`` and ``status`` set when known
        ├── ServerValidationError   TGI ``validation`` (HTTP 422), an OpenAI-style HTTP 400
        │   └── ContextLengthError  prompt plus budget do not fit the server's context
        ├── OverloadedError         TGI ``overloaded`` (HTTP 429); ``retry_after`` in seconds
        ├── GenerationError         TGI ``generation`` (HTTP 424)
        ├── IncompleteGenerationError  TGI ``incomplete_generation`` (HTTP 500)
        ├── AlignerConnectionError  the endpoint could not be reached
        ├── AlignerTimeoutError     a deadline ran out
        ├── EngineError             the in-process engine failed while decoding
        └── AuthenticationError     HTTP 401/403

Which errors are retried, fail over or fall back is decided in :mod:`diffpo_integrations.core.policy`.
:func:`error_from_tgi_payload` is the one place that turns TGI's ``{"error", "error_type"}``
answers, and the OpenAI-style ``{"error": {"message", "type", "code"}}`` of vLLM and llama.cpp, into
this tree.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AlignerConnectionError",
    "AlignerError",
    "AlignerTimeoutError",
    "AuthenticationError",
    "ConfigurationError",
    "ContextLengthError",
    "ConversationNotFoundError",
    "DiffPOError",
    "EngineError",
    "FailOpenWarning",
    "GenerationError",
    "IncompleteGenerationError",
    "InputError",
    "ModelNotFoundError",
    "OverloadedError",
    "ServerValidationError",
    "error_from_tgi_payload",
]


class DiffPOError(Exception):
    """Base class of every error raised by diffpo-integrations."""


class ConfigurationError(DiffPOError, ValueError):
    """A constructor argument is invalid, or an optional dependency is missing."""


class ModelNotFoundError(ConfigurationError, FileNotFoundError):
    """The aligner model (a path, a ``.gguf`` file or the default model's package) is missing."""


class InputError(DiffPOError, ValueError):
    """The conversation, the draft or an option of one call is invalid."""


class ConversationNotFoundError(ConfigurationError, LookupError):
    """A chain step received a draft but could not find the conversation that produced it.

    A wiring mistake, so a :class:`ConfigurationError`: ``fail_policy="open"`` never hides it.
    """


class FailOpenWarning(UserWarning):
    """A ``fail_policy="open"`` component returned the draft unaligned (flagged); the message says why.

    Shared by the LangChain and LlamaIndex components, so one warnings filter covers both.
    """


class AlignerError(DiffPOError):
    """The aligner could not produce an aligned answer.

    Attributes:
        endpoint: URL (or name) of the aligner that failed, when known.
        status: HTTP status code, when the failure came from an HTTP answer.
    """

    retryable: bool = False

    def __init__(self, message: str, *, endpoint: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status


class ServerValidationError(AlignerError, InputError):
    """The server rejected the request as invalid (TGI ``validation``, HTTP 422)."""


class ContextLengthError(ServerValidationError):
    """The prompt, or the prompt plus ``max_new_tokens``, does not fit the server's context window.

    The message says the sizes and what to change (a shorter conversation or draft, a smaller
    ``max_new_tokens``, or a server started with a larger context such as vLLM's ``--max-model-len``).
    """


class OverloadedError(AlignerError):
    """The server is overloaded (TGI ``overloaded``, HTTP 429). Retried with backoff."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, endpoint=endpoint, status=status)
        self.retry_after = retry_after


class GenerationError(AlignerError):
    """The model failed while generating (TGI ``generation``, HTTP 424)."""


class IncompleteGenerationError(AlignerError):
    """The server stopped before the generation was complete (TGI ``incomplete_generation``)."""

    retryable = True


class AlignerConnectionError(AlignerError):
    """The aligner endpoint could not be reached, or the connection broke."""

    retryable = True


class AlignerTimeoutError(AlignerError):
    """The call's deadline ran out."""


class EngineError(AlignerError, RuntimeError):
    """The in-process decoding engine failed (a model or state problem, not the request)."""


class AuthenticationError(AlignerError):
    """The server refused the credentials (HTTP 401 or 403)."""


_TGI_TYPES: dict[str, type[AlignerError]] = {
    "validation": ServerValidationError,
    "overloaded": OverloadedError,
    "generation": GenerationError,
    "incomplete_generation": IncompleteGenerationError,
}


def error_from_tgi_payload(
    status: int,
    payload: Any,
    *,
    endpoint: str | None = None,
    retry_after: float | None = None,
) -> AlignerError:
    """Build the typed error for one failed TGI answer.

    Args:
        status: HTTP status code of the answer.
        payload: the decoded JSON body (TGI sends ``{"error": ..., "error_type": ...}``), or raw text.
        endpoint: the URL that answered.
        retry_after: seconds from a ``Retry-After`` header, if any.

    Returns:
        The most specific :class:`AlignerError` for the answer.

    Example:
        >>> err = error_from_tgi_payload(422, {"error": "bad", "error_type": "validation"})
        >>> type(err).__name__, str(err)
        ('ServerValidationError', 'bad')
    """
    message = str(payload)
    error_type = None
    if isinstance(payload, dict):
        inner = payload.get("error")
        if isinstance(inner, dict):
            # OpenAI style (vLLM, llama.cpp's server): {"error": {"message", "type", "code"}}; a 400
            # there is a request the server rejected, TGI's "validation".
            message = str(inner.get("message") or inner)
            error_type = "validation" if status == 400 else None
        else:
            message = str(inner or payload.get("message") or payload)
            error_type = payload.get("error_type")
    if isinstance(error_type, str) and error_type in _TGI_TYPES:
        cls = _TGI_TYPES[error_type]
    elif status in (401, 403):
        cls = AuthenticationError
    elif status == 429:
        cls = OverloadedError
    elif status == 422:
        cls = ServerValidationError
    elif status in (502, 503, 504):
        # A proxy or a starting server: the endpoint cannot serve now, so it is retryable.
        cls = AlignerConnectionError
    else:
        cls = AlignerError
    if cls is OverloadedError:
        return OverloadedError(message, endpoint=endpoint, status=status, retry_after=retry_after)
    return cls(message, endpoint=endpoint, status=status)
