"""DiffPO for LangChain: an alignment step for chains, a chat model wrapper, and agent middleware.

- :class:`DiffPOAlign`: ``prompt | llm | DiffPOAlign()``; finds the conversation by itself.
- :class:`ChatDiffPO`: ``ChatDiffPO(llm=any_chat_model)``, a chat model whose answers are aligned.
- :class:`DiffPOMiddleware`: ``create_agent(..., middleware=[DiffPOMiddleware()])`` aligns final answers.

Fail-open results raise a :class:`FailOpenWarning` and send the custom callback event
:data:`FAIL_OPEN_EVENT` (``"diffpo_fail_open"``) with ``response_metadata["diffpo"]`` as data.
"""

from diffpo_integrations.langchain._engine import FAIL_OPEN_EVENT, FailOpenWarning, StreamPolicy
from diffpo_integrations.langchain.align import DiffPOAlign
from diffpo_integrations.langchain.chat_models import ChatDiffPO
from diffpo_integrations.langchain.middleware import DiffPOMiddleware

__all__ = [
    "FAIL_OPEN_EVENT",
    "ChatDiffPO",
    "DiffPOAlign",
    "DiffPOMiddleware",
    "FailOpenWarning",
    "StreamPolicy",
]
