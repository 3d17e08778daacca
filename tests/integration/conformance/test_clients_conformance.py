"""Every real client, with its own defaults, against ``diffpo serve``: the table in docs/serving.md, cell by cell.

The table is the expectation: ✓ is the server's own greedy answer (read from ``/generate`` and
``/v1/chat/completions`` directly), *sampled* any text (the client's defaults sample), *error
shown* an exception carrying the server's message, — no such call. Clients pinned to other
versions of shared dependencies run in their own environment (see :mod:`clients`).
SmolLM2-135M-Instruct stands in for a DiffPO checkpoint.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest
from clients import CLIENT_VENVS, TEST_ENV_CLIENTS
from throwaway_venvs import ROOT, PyPIUnreachable, ensure, run_in

from diffpo_integrations.server.testing import serve_in_thread, shared_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNNER = Path(__file__).parent / "clients" / "run_client.py"
TOKENS = 8
PROMPT = "The capital of France is"
QUESTION = "What is the capital of France?"
OPERATIONS = ("generate", "stream", "chat", "chat_stream", "error", "chat_error")
PACKAGES = {
    "huggingface_hub": "huggingface_hub",
    "openai": "openai",
    "langchain-openai": "langchain-openai",
    "text-generation": "text-generation",
    "llama-index-llms-text-generation-inference": "llama-index-tgi",
    "llama-index-llms-openai-like": "llama-index-openai-like",
    "langchain-huggingface": "langchain-huggingface",
}
"""First name in a table row -> the client's name in run_client.py."""
LIMIT_MESSAGE = "`max_new_tokens` must be <= "
OPENAI_FAMILY = {"openai", "langchain-openai", "llama-index-openai-like"}
"""Clients on the ``openai`` SDK, which reads OpenAI's error object into ``code`` and ``param``."""


def docs_table() -> dict[str, dict[str, str]]:
    """client -> operation -> cell, from docs/serving.md (versions checked against the pins)."""
    text = (ROOT / "docs" / "serving.md").read_text()
    body = text.split("<!-- conformance-table -->")[1].split("<!-- /conformance-table -->")[0]
    rows = [line for line in body.strip().splitlines() if line.startswith("|")][2:]
    table: dict[str, dict[str, str]] = {}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        package = re.findall(r"`([^`]+)`", cells[0])[0]
        client = PACKAGES[package]
        if client in CLIENT_VENVS:
            [pin] = CLIENT_VENVS[client].requirements
            assert pin == f"{package}=={cells[0].split()[1]}", f"the table names {cells[0]!r}, the test pins {pin}"
        table[client] = dict(zip(OPERATIONS, cells[1:], strict=True))
    return table


TABLE = docs_table()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    # Here, not in a conftest.py: other test folders import their conftest by name.
    with serve_in_thread(shared_app()) as url:
        yield url


@pytest.fixture(scope="module")
def greedy(base_url: str) -> dict[str, str]:
    generate = httpx2.post(
        f"{base_url}/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": TOKENS}}, timeout=300
    )
    chat = httpx2.post(
        f"{base_url}/v1/chat/completions",
        json={"messages": [{"role": "user", "content": QUESTION}], "max_tokens": TOKENS},
        timeout=300,
    )
    return {"generate": generate.json()["generated_text"], "chat": chat.json()["choices"][0]["message"]["content"]}


def _run(client: str, base_url: str) -> dict[str, Any]:
    python = Path(sys.executable) if client in TEST_ENV_CLIENTS else ensure(CLIENT_VENVS[client])
    done = run_in(python, [str(RUNNER), client, base_url, str(TOKENS)], timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture(scope="module")
def results(base_url: str) -> dict[str, dict[str, Any] | BaseException]:
    """Every client's run, in parallel (the server batches them)."""

    def run(client: str) -> dict[str, Any] | BaseException:
        try:
            return _run(client, base_url)
        except (PyPIUnreachable, AssertionError, RuntimeError) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=len(TABLE)) as pool:
        return dict(zip(TABLE, pool.map(run, TABLE), strict=True))


@pytest.mark.parametrize(("client", "operation"), [(c, op) for c in TABLE for op in OPERATIONS], ids=lambda v: str(v))
def test_table_cell_holds(
    results: dict[str, dict[str, Any] | BaseException], greedy: dict[str, str], client: str, operation: str
) -> None:
    outcome = results[client]
    if isinstance(outcome, PyPIUnreachable):
        pytest.skip(f"PyPI is unreachable, so {client} cannot be installed: {outcome}")
    if isinstance(outcome, BaseException):
        raise outcome
    cell = TABLE[client][operation]
    got = outcome.get(operation)
    if cell == "—":
        assert got is None
        return
    assert got is not None, f"{client} has no {operation} call in run_client.py"
    if cell == "error shown":
        assert LIMIT_MESSAGE in got.get("error", ""), got
        if client in OPENAI_FAMILY:
            # ChatOpenAI sends the newer `max_completion_tokens`; the error names what was sent.
            assert got.get("fields") in {f"code=validation param={p}" for p in ("max_tokens", "max_completion_tokens")}
        return
    assert "error" not in got, got["error"]
    if cell == "✓":
        assert got["text"] == greedy["chat" if operation.startswith("chat") else "generate"]
    else:
        assert cell == "sampled", f"unknown cell {cell!r}"
        assert got["text"].strip()
