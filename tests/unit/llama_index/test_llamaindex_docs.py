"""Every Python block of docs/llamaindex.md runs, in order, in one namespace (top-level ``await`` allowed)."""

from __future__ import annotations

import ast
import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from llama_index.core import Settings
from llama_index.core.instrumentation import get_dispatcher

from diffpo_integrations.backends.testing import MockTGIServer, mock_tgi

DOC = Path(__file__).resolve().parents[3] / "docs" / "llamaindex.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


@pytest.fixture
def restore_handlers() -> Iterator[None]:
    root = get_dispatcher()
    before = list(root.event_handlers)
    previous_llm = Settings._llm
    yield
    root.event_handlers = before
    Settings._llm = previous_llm


def test_the_guide_has_code() -> None:
    assert len(BLOCKS) >= 10


def test_the_guide_runs(monkeypatch: pytest.MonkeyPatch, restore_handlers: None) -> None:
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", "http://mock-tgi")
    namespace: dict[str, Any] = {}

    async def run_all() -> None:
        for i, block in enumerate(BLOCKS):
            code = compile(block, f"{DOC.name}[block {i}]", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)
            if asyncio.iscoroutine(result):
                await result

    # The fail-policy block points at port 9, where nothing listens; under the mock transport every
    # host is answered, so port 9 answers 503 as a proxy in front of a dead server would.
    original = MockTGIServer.handle

    def handle(server: MockTGIServer, request: Any) -> Any:
        if request.url.port == 9:
            return httpx2.Response(503, text="no upstream")
        return original(server, request)

    monkeypatch.setattr(MockTGIServer, "handle", handle)
    with mock_tgi():
        asyncio.run(run_all())
    assert namespace["result"].text
