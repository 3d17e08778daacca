"""The Python code in README.md and docs/*.md runs, as written, against the live embedded server.

Each file's ```python blocks run in order in one namespace per file. The literal placeholder host
``http://127.0.0.1:8080`` (where ``diffpo serve`` listens by default) is replaced by the live
server's URL, and ``$DIFFPO_ALIGNER_URL`` points there too. In docs/gateway.md the gateway's
placeholder ``http://127.0.0.1:8000`` is replaced by a live gateway in front of that server (its
upstream and its aligner). SmolLM2-135M-Instruct stands in for a DiffPO checkpoint.

A block is left out only when the line before its fence is a marker with a reason, such as
``<!-- docs-test: skip (needs a GPU) -->`` or ``<!-- docs-test: skip (needs a real checkpoint) -->``;
the reason is printed. Blocks in other languages (bash, text, json) are never run.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER = "http://127.0.0.1:8080"
GATEWAY_PLACEHOLDER = "http://127.0.0.1:8000"

EXCLUDED = {
    "langchain.md": "its owner runs it in tests/integration/langchain/test_langchain_examples.py",
    "llamaindex.md": "its owner runs it in tests/unit/llama_index/test_llamaindex_docs.py",
    "evaluation.md": "its owner tests it (diffpo eval and bench need their own data and servers)",
    "reliability.md": "its owner tests it in tests/integration/reliability/; its code names replica hosts",
}
"""Guides whose code other test modules run, with the reason they are not run here."""

_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*docs-test:(.*?)-->\s*$")
_SKIP = re.compile(r"^\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown file."""

    path: Path
    line: int
    language: str
    code: str
    skip_reason: str | None

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def parse_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with its language and skip marker.

    Raises:
        AssertionError: a ``docs-test`` marker is malformed or has no reason.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        language = fence.group(1).lower()
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"{path.name}:{start + 1}: the code block is never closed"
        i += 1
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        reason = None
        marker = _MARKER.match(lines[before].strip()) if before >= 0 else None
        if marker is not None:
            skip = _SKIP.match(marker.group(1))
            assert skip is not None, (
                f"{path.name}:{before + 1}: write the marker as '<!-- docs-test: skip (reason) -->', "
                f"with the reason, got {lines[before].strip()!r}"
            )
            reason = skip.group("reason").strip()
        blocks.append(Block(path, start + 1, language, "\n".join(body) + "\n", reason))
    return blocks


def doc_files() -> list[Path]:
    """README.md and every docs/*.md not in :data:`EXCLUDED`."""
    docs = sorted(p for p in (ROOT / "docs").glob("*.md") if p.name not in EXCLUDED)
    return [ROOT / "README.md", *docs]


FILES = doc_files()


@pytest.fixture(scope="session")
def docs_url() -> Iterator[str]:
    from diffpo_integrations.server.testing import serve_in_thread, shared_app

    with serve_in_thread(shared_app()) as url:
        yield url


def test_excluded_files_are_named_with_a_reason() -> None:
    for name, reason in EXCLUDED.items():
        assert reason.strip(), name
    covered = {p.name for p in FILES}
    assert "README.md" in covered
    for name in (
        "index.md",
        "quickstart.md",
        "concepts.md",
        "serving.md",
        "gateway.md",
        "configuration.md",
        "troubleshooting.md",
    ):
        assert name in covered, f"docs/{name} is missing"


def test_markers_are_well_formed() -> None:
    for path in [*FILES, *(ROOT / "docs" / name for name in EXCLUDED if (ROOT / "docs" / name).exists())]:
        for block in parse_blocks(path):
            if block.skip_reason is not None:
                assert block.language == "python", f"{block.where}: only python blocks need a skip marker"


@pytest.fixture
def docs_gateway_url(docs_url: str) -> Iterator[str]:
    from diffpo_integrations.gateway import GatewayConfig, create_gateway_app
    from diffpo_integrations.server.serve import serve_in_thread

    config = GatewayConfig(upstream=docs_url, aligner_urls=[docs_url])
    with serve_in_thread(create_gateway_app(config)) as url:
        yield url


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ROOT)) for p in FILES])
def test_doc_code_runs(
    path: Path, docs_url: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", docs_url)
    monkeypatch.delenv("DIFFPO_API_KEY", raising=False)
    blocks = [b for b in parse_blocks(path) if b.language in ("python", "py")]
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    ran = 0
    for block in blocks:
        if block.skip_reason is not None:
            print(f"{block.where}: not run ({block.skip_reason})")
            continue
        code = block.code.replace(PLACEHOLDER, docs_url)
        if path.name == "gateway.md":
            code = code.replace(GATEWAY_PLACEHOLDER, request.getfixturevalue("docs_gateway_url"))
        # Top-level ``await`` is not valid in a script a reader copies: blocks use asyncio.run().
        tree = ast.parse(code, filename=block.where)
        exec(compile(tree, block.where, "exec"), namespace)
        ran += 1
    print(f"{path.relative_to(ROOT)}: {ran} block(s) run, {len(blocks) - ran} not run")


def test_configuration_page_names_every_option() -> None:
    """docs/configuration.md lists every constructor argument, ServerConfig field and serve flag."""
    import argparse
    import inspect

    from diffpo_integrations.backends import AlignerPool, OpenAICompatAligner, TGIAligner
    from diffpo_integrations.backends.local import LocalAligner
    from diffpo_integrations.cli import serve
    from diffpo_integrations.server import ServerConfig

    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing: list[str] = []
    for cls in (TGIAligner, OpenAICompatAligner, LocalAligner, AlignerPool):
        for name in inspect.signature(cls.__init__).parameters:
            if name not in ("self", "args", "kwargs") and f"`{name}`" not in page:
                missing.append(f"{cls.__name__}({name})")
    missing += [f"ServerConfig.{name}" for name in ServerConfig.model_fields if f"`{name}`" not in page]
    from diffpo_integrations.langchain import ChatDiffPO, DiffPOAlign
    from diffpo_integrations.langchain._engine import AlignerSettings
    from diffpo_integrations.llama_index import (
        DiffPOAlignStep,
        DiffPOChatEngine,
        DiffPOLLM,
        DiffPOQueryEngine,
        DiffPOResponsePostprocessor,
        DiffPOSynthesizer,
    )

    own = {*AlignerSettings.model_fields, *DiffPOAlign.__annotations__, *ChatDiffPO.__annotations__}
    missing += [f"LangChain {name}" for name in own if not name.startswith("_") and f"`{name}`" not in page]
    wrappers: tuple[type, ...] = (
        DiffPOResponsePostprocessor,
        DiffPOSynthesizer,
        DiffPOQueryEngine,
        DiffPOChatEngine,
        DiffPOLLM,
        DiffPOAlignStep,
    )
    for wrapper in wrappers:
        for name in inspect.signature(vars(wrapper)["__init__"]).parameters:
            if name not in ("self", "args", "kwargs") and f"`{name}" not in page:
                missing.append(f"{wrapper.__name__}({name})")
    from diffpo_integrations.cli import gateway
    from diffpo_integrations.gateway import GatewayConfig

    missing += [f"GatewayConfig.{name}" for name in GatewayConfig.model_fields if f"`{name}`" not in page]
    commands = argparse.ArgumentParser().add_subparsers()
    serve.register(commands)
    gateway.register(commands)
    for command in ("serve", "gateway"):
        for action in commands.choices[command]._actions:
            missing += [
                f"diffpo {command} {flag}"
                for flag in action.option_strings
                if flag.startswith("--") and flag != "--help" and f"`{flag}`" not in page
            ]
    assert not missing, f"docs/configuration.md does not mention: {', '.join(missing)}"
