"""The public names at the package top are exactly the documented ones, and each resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest

import diffpo_integrations

EXPECTED = {
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
}


def test_all_is_the_documented_set() -> None:
    assert set(diffpo_integrations.__all__) == EXPECTED


def test_every_name_resolves() -> None:
    for name in diffpo_integrations.__all__:
        assert getattr(diffpo_integrations, name) is not None


def test_langchain_names_are_the_subpackage_ones() -> None:
    from diffpo_integrations import langchain

    assert diffpo_integrations.DiffPOAlign is langchain.DiffPOAlign
    assert diffpo_integrations.ChatDiffPO is langchain.ChatDiffPO


def test_plain_import_loads_neither_torch_nor_langchain() -> None:
    code = "import sys, diffpo_integrations; print(sorted(m for m in ('torch', 'langchain_core', 'llama_index') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_unknown_name_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"^module 'diffpo_integrations' has no attribute 'NotAThing'$"):
        diffpo_integrations.NotAThing  # noqa: B018
