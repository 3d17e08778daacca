"""diffpo-integrations: DiffPO inference-time alignment as one step in LangChain and LlamaIndex.

Quick use against a running aligner server (``diffpo serve`` or a real TGI)::

    >>> from diffpo_integrations import TGIAligner  # doctest: +SKIP
    >>> aligner = TGIAligner("http://127.0.0.1:8080")  # doctest: +SKIP
    >>> aligner.align([{"role": "user", "content": "Name a prime."}], "7 is one.").text  # doctest: +SKIP
"""

from diffpo_integrations.core import (
    Aligner,
    AlignerError,
    AlignRequest,
    AlignResult,
    DiffPOError,
    InputError,
    Message,
)

__version__ = "0.1.0"

__all__ = [
    "AlignRequest",
    "AlignResult",
    "Aligner",
    "AlignerError",
    "DiffPOError",
    "InputError",
    "Message",
    "__version__",
]
