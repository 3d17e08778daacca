"""Fixtures of the engines tier: one real vLLM and one llama.cpp server per session, and the reference.

Built and run by ``./scripts/engines.sh``. ``DIFFPO_VLLM_URL`` / ``DIFFPO_LLAMA_CPP_URL`` point the
tier at servers already running (started by hand with the same flags) instead of starting them. Every test here carries the ``engines`` marker, which
the default run deselects; when the tier runs, an engine that is not built or does not start
fails the tests that need it, with the reason and the end of its log.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from diffpo_integrations.evaluation.engine_servers import (
    HEALTH,
    EngineServer,
    EngineStartError,
    engine_python,
    engine_server,
    engines_model_dir,
    free_port,
    running_server,
)

HERE = Path(__file__).parent
SERVING_DOCS = HERE.parents[1] / "docs" / "serving.md"
DOCS_SECTION = "### vLLM's CPU build and llama.cpp, without a GPU"
DOCS_PORTS = {"vLLM": "8000", "llama.cpp": "8001"}
"""The ports the docs' commands listen on; the tier swaps in free ones."""

HELD_OUT = (151, 152, 160)
"""MT-bench question ids the engine benchmarks never use (they take the first questions)."""

MAX_NEW_TOKENS = 24
"""Small: vLLM's CPU build makes about 18 tokens/s on two cores."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(HERE):
            item.add_marker(pytest.mark.engines)


def _start(factory: Any, name: str, variable: str) -> Iterator[EngineServer]:
    try:
        running = running_server(name, variable)
    except EngineStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    if running is not None:
        yield running
        return
    try:
        manager = factory()
        server = manager.__enter__()
    except EngineStartError as exc:
        pytest.fail(f"the engine could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        manager.__exit__(None, None, None)


def docs_blocks(language: str) -> list[str]:
    """The ``language`` code blocks of docs/serving.md's vLLM and llama.cpp section, in order."""
    text = SERVING_DOCS.read_text(encoding="utf-8")
    section = text.split(DOCS_SECTION, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    return re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.MULTILINE | re.DOTALL)


def docs_command(engine: str) -> str:
    """The shell command docs/serving.md gives to start ``engine`` ("vLLM" or "llama.cpp"), continuations joined."""
    (block,) = docs_blocks("bash")
    lines = [line for line in block.splitlines() if not line.lstrip().startswith("#")]
    commands = [c.strip() for c in re.sub(r"\\\n\s*", " ", "\n".join(lines)).splitlines() if c.strip()]
    module = {"vLLM": "vllm.entrypoints.openai.api_server", "llama.cpp": "llama_cpp.server"}[engine]
    (command,) = [c for c in commands if f" -m {module} " in c]
    return command


def docs_env(gguf: Path) -> dict[str, str]:
    """What ``./scripts/engines.sh env`` exports, for the docs' commands."""
    return {
        "DIFFPO_VLLM_PYTHON": str(engine_python("vllm")),
        "DIFFPO_LLAMA_CPP_PYTHON": str(engine_python("llama_cpp")),
        "DIFFPO_ENGINES_MODEL_DIR": str(engines_model_dir()),
        "DIFFPO_SMOLLM2_GGUF": str(gguf),
    }


def docs_server(engine: str, gguf: Path, *, start_timeout_s: float = 600.0) -> Any:
    """Start ``engine`` with the exact command of docs/serving.md, on a free port instead of the docs' one."""
    port = free_port()
    command = docs_command(engine)
    assert f"--port {DOCS_PORTS[engine]} " in command, command
    command = command.replace(f"--port {DOCS_PORTS[engine]} ", f"--port {port} ")
    # vLLM's own variables are in the command itself; these say where the engines are built.
    env = docs_env(gguf)
    return engine_server(
        engine, ["bash", "-c", command], port=port, health=HEALTH[engine], env=env, start_timeout_s=start_timeout_s
    )


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The float32 folder vLLM serves and the in-process reference loads."""
    try:
        return engines_model_dir()
    except EngineStartError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def gguf() -> Path:
    """The packaged SmolLM2 GGUF llama.cpp serves."""
    from diffpo_integrations.engine.loading import smollm2_gguf_path

    return smollm2_gguf_path()


@pytest.fixture(scope="session")
def vllm(gguf: Path) -> Iterator[EngineServer]:
    """vLLM's CPU build serving the float32 folder as ``smollm2``, for the whole session, started as docs/serving.md says."""
    yield from _start(lambda: docs_server("vLLM", gguf), "vLLM", "DIFFPO_VLLM_URL")


@pytest.fixture(scope="session")
def llama_cpp(gguf: Path) -> Iterator[EngineServer]:
    """llama.cpp's server on the packaged GGUF, for the whole session, started as docs/serving.md says."""
    yield from _start(
        lambda: docs_server("llama.cpp", gguf, start_timeout_s=120.0), "llama.cpp", "DIFFPO_LLAMA_CPP_URL"
    )


@pytest.fixture(scope="session")
def reference(model_dir: Path) -> Any:
    """The official Jacobi loop, in this process, on the same float32 weights as vLLM."""
    from diffpo_integrations.backends.local import LocalAligner

    return LocalAligner(model=str(model_dir), method="jacobi", max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="session")
def drafts() -> list[tuple[int, str, str]]:
    """``(question_id, question, draft)`` for the held-out questions: Llama-3-8B-Instruct's turn-1 answers."""
    from diffpo_integrations.data import mt_bench_answers_path, mt_bench_questions_path

    with mt_bench_questions_path().open(encoding="utf-8") as f:
        questions = {q["question_id"]: q["turns"][0] for q in map(json.loads, f)}
    with mt_bench_answers_path("llama-3-it-vanilla").open(encoding="utf-8") as f:
        answers = {a["question_id"]: a["choices"][0]["turns"][0] for a in map(json.loads, f)}
    return [(qid, questions[qid], answers[qid]) for qid in HELD_OUT]
