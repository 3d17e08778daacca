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


def test_the_package_root_holds_only_the_entry_point_and_its_parts() -> None:
    from pathlib import Path

    root = Path(diffpo_integrations.__file__).parent
    modules = sorted(p.name for p in root.glob("*.py"))
    assert modules == ["__init__.py"]


def test_the_server_flags_import_neither_the_web_stack_nor_torch() -> None:
    # The CLI builds its parser from these flags on machines without the ``server`` extra.
    code = (
        "import sys; from diffpo_integrations.server.flags import add_server_arguments, read_api_key_file; "
        "print(sorted(m for m in ('torch', 'fastapi', 'starlette', 'uvicorn', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_server_package_still_exports_its_names() -> None:
    from diffpo_integrations import server
    from diffpo_integrations.server.app import create_app
    from diffpo_integrations.server.serve import serve_in_thread

    assert server.create_app is create_app
    assert server.serve_in_thread is serve_in_thread
    with pytest.raises(AttributeError, match=r"^module 'diffpo_integrations.server' has no attribute 'nope'$"):
        server.nope  # noqa: B018
