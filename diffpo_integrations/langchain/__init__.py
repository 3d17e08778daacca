"""DiffPO for LangChain: an alignment step for chains, a chat model wrapper, and agent middleware.

- :class:`DiffPOAlign`: ``prompt | llm | DiffPOAlign()``; finds the conversation by itself.
- :class:`ChatDiffPO`: ``ChatDiffPO(llm=any_chat_model)``, a chat model whose answers are aligned.
- :class:`DiffPOMiddleware`: ``create_agent(..., middleware=[DiffPOMiddleware()])`` aligns final answers
  (imported on first use: it needs ``langchain``, from the ``agents`` extra).

Fail-open results raise a :class:`FailOpenWarning` and send the custom callback event
:data:`FAIL_OPEN_EVENT` (``"diffpo_fail_open"``) with ``response_metadata["diffpo"]`` as data.
"""

from typing import TYPE_CHECKING, Any

from diffpo_integrations.langchain._engine import FAIL_OPEN_EVENT, FailOpenWarning, StreamPolicy
from diffpo_integrations.langchain.align import DiffPOAlign
from diffpo_integrations.langchain.chat_models import ChatDiffPO

if TYPE_CHECKING:
    from diffpo_integrations.langchain.middleware import DiffPOMiddleware

__all__ = [
    "FAIL_OPEN_EVENT",
    "ChatDiffPO",
    "DiffPOAlign",
    "DiffPOMiddleware",
    "FailOpenWarning",
    "StreamPolicy",
]


def __getattr__(name: str) -> Any:
    # The agent middleware needs `langchain` itself (the `agents` extra); the rest only langchain-core.
    if name == "DiffPOMiddleware":
        try:
            from diffpo_integrations.langchain.middleware import DiffPOMiddleware
        except ImportError as exc:
            msg = f"DiffPOMiddleware needs langchain ({exc}): pip install 'diffpo-integrations[agents]'"
            raise ImportError(msg) from exc
        return DiffPOMiddleware
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
