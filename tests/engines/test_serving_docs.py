"""docs/serving.md's vLLM and llama.cpp section, executed: the tier's servers start from its very commands.

The session fixtures ``vllm`` and ``llama_cpp`` run the docs' shell lines (on free ports); these
tests check that those lines are the ones ``diffpo bench engines`` runs too, and that the docs'
Python block, run as written against that vLLM, gives the official DiffPO answer.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
from conftest import DOCS_PORTS, docs_blocks, docs_command, docs_env

from diffpo_integrations.evaluation.engine_servers import VLLM_ENV, EngineServer, llama_cpp_command, vllm_command


def _expand(command: str, env: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """The variable assignments and the argv of one docs command, the way bash reads them."""
    words = [env.get(w[1:], w) if w.startswith("$") else w for w in shlex.split(command)]
    assigned: dict[str, str] = {}
    while words and "=" in words[0] and not words[0].startswith("-"):
        name, value = words.pop(0).split("=", 1)
        assigned[name] = value
    return assigned, words


@pytest.mark.smoke
def test_the_docs_commands_are_the_ones_the_bench_runs(model_dir: Path, gguf: Path) -> None:
    env = docs_env(gguf)
    assigned, argv = _expand(docs_command("vLLM"), env)
    assert assigned == VLLM_ENV
    assert argv == vllm_command(Path(env["DIFFPO_VLLM_PYTHON"]), model_dir, int(DOCS_PORTS["vLLM"]))
    assigned, argv = _expand(docs_command("llama.cpp"), env)
    assert assigned == {}
    assert argv == llama_cpp_command(Path(env["DIFFPO_LLAMA_CPP_PYTHON"]), gguf, int(DOCS_PORTS["llama.cpp"]))


@pytest.mark.smoke
def test_the_docs_python_block_gives_the_official_answer(
    vllm: EngineServer, model_dir: Path, reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (block,) = docs_blocks("python")
    monkeypatch.setenv("DIFFPO_ENGINES_MODEL_DIR", str(model_dir))
    namespace: dict[str, Any] = {"__name__": "docs_serving_vllm"}
    exec(compile(block.replace("http://127.0.0.1:8000", vllm.url), "docs/serving.md", "exec"), namespace)
    result = namespace["result"]
    messages = [{"role": "user", "content": "Name a prime number and say why it is prime."}]
    expected = reference.align(messages, "7 is a prime number because it has no divisors.")
    assert result.text == expected.text
    assert result.generated_tokens == expected.generated_tokens
    assert result.details["prompt_as"] == "token_ids"
    assert result.text  # an answer, not an empty string that would equal an empty reference
