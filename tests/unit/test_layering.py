"""The package's layers import downwards only, and no module reaches into another package's privates."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "diffpo_integrations"

# What each part may import from the package (besides itself). ``cli`` is the top: nothing imports it.
ALLOWED = {
    "core": set(),
    "wire": {"core"},
    "engine": {"core"},
    "backends": {"core", "engine"},
    "server": {"core", "engine", "backends", "wire"},
    "langchain": {"core", "backends"},
    "llama_index": {"core", "backends"},
    "gateway": {"core", "backends", "wire"},
    "evaluation": {"core", "backends", "langchain", "llama_index", "data"},
    "cli": {"core", "backends", "engine", "server", "wire", "gateway", "evaluation", "data"},
}


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, node.lineno))
            found.extend((f"{node.module}.{a.name}", node.lineno) for a in node.names)
        elif isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
    return found


def _part(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_point_downwards(part: str) -> None:
    files = [PACKAGE / f"{part}.py"] if (PACKAGE / f"{part}.py").exists() else sorted((PACKAGE / part).rglob("*.py"))
    wrong = []
    for path in files:
        for module, line in _imports(path):
            if not module.startswith("diffpo_integrations."):
                continue
            target = module.split(".")[1]
            if target != part and target not in ALLOWED[part] and target in ALLOWED | {"data": set()}:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert wrong == []


def test_no_module_imports_another_package_private_module() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for module, line in _imports(path):
            parts = module.split(".")
            if parts[0] != "diffpo_integrations" and any(p.startswith("_") and not p.startswith("__") for p in parts):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert wrong == []


def test_evaluation_calls_no_private_aligner_method() -> None:
    source = (PACKAGE / "evaluation" / "overhead.py").read_text(encoding="utf-8")
    calls = {n.attr for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Attribute) and n.attr.startswith("_")}
    assert calls - {"__name__"} == set()
