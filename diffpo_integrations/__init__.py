"""diffpo-integrations: DiffPO inference-time alignment as one step in LangChain and LlamaIndex.

The contract lives in :mod:`diffpo_integrations.core`; backends, the LangChain parts and the
LlamaIndex parts live in their own subpackages. The names below are importable from the top, the
framework ones lazily, so ``import diffpo_integrations`` needs neither LangChain nor torch::

    >>> from diffpo_integrations import TGIAligner  # doctest: +SKIP
    >>> aligner = TGIAligner("http://127.0.0.1:8080")  # doctest: +SKIP
    >>> aligner.align([{"role": "user", "content": "Name a prime."}], "7 is one.").text  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from diffpo_integrations.core import (
    Aligner,
    AlignerError,
    AlignRequest,
    AlignResult,
    BaseAligner,
    ConfigurationError,
    ConversationNotFoundError,
    DiffPOError,
    InputError,
    Message,
)

if TYPE_CHECKING:
    from diffpo_integrations.backends import AlignerPool, OpenAICompatAligner, TGIAligner
    from diffpo_integrations.backends.local import LocalAligner
    from diffpo_integrations.langchain import ChatDiffPO, DiffPOAlign, DiffPOMiddleware

__version__ = "0.1.0"

_LAZY = {
    "TGIAligner": "diffpo_integrations.backends",
    "OpenAICompatAligner": "diffpo_integrations.backends",
    "AlignerPool": "diffpo_integrations.backends",
    "LocalAligner": "diffpo_integrations.backends.local",
    "DiffPOAlign": "diffpo_integrations.langchain",
    "ChatDiffPO": "diffpo_integrations.langchain",
    "DiffPOMiddleware": "diffpo_integrations.langchain",
}

__all__ = [
    "AlignRequest",
    "AlignResult",
    "Aligner",
    "AlignerError",
    "AlignerPool",
    "BaseAligner",
    "ChatDiffPO",
    "ConfigurationError",
    "ConversationNotFoundError",
    "DiffPOAlign",
    "DiffPOError",
    "DiffPOMiddleware",
    "InputError",
    "LocalAligner",
    "Message",
    "OpenAICompatAligner",
    "TGIAligner",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # Importing LangChain or the backends only when asked keeps a plain import light.
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'diffpo_integrations' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
