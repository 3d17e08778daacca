"""Every LlamaIndex wrapper in every form against the real embedded server over loopback.

The answer each wrapper returns must equal ``TGIAligner.align`` on the same conversation and draft,
sent directly: the wrappers add nothing and lose nothing on the way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from llamaindex_scenarios import SCENARIOS, check

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.core import AlignResult

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[3]
LIVE_MAX_NEW_TOKENS = 4
"""Aligned tokens per call: enough to show the aligner continuing the kept prefix, cheap on a CPU."""


class RememberingAligner(TGIAligner):
    """A ``TGIAligner`` whose direct ``align`` calls are cached: the expected answers repeat across scenarios."""

    expected: ClassVar[dict[tuple[Any, ...], AlignResult]] = {}

    def align(self, messages: Any, draft: str | None = None, **options: Any) -> AlignResult:
        key = (tuple((m if isinstance(m, tuple) else (m.role, m.content)) for m in messages), draft)
        if key not in self.expected:
            self.expected[key] = super().align(messages, draft, **options)
        return self.expected[key]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_scenario(name: str, live_url: str) -> None:
    # The wrapper talks to the server through a plain TGIAligner; the expectation through the cache.
    outcome = await SCENARIOS[name](TGIAligner(live_url, max_new_tokens=LIVE_MAX_NEW_TOKENS, timeout=600))
    check(outcome, RememberingAligner(live_url, max_new_tokens=LIVE_MAX_NEW_TOKENS, timeout=600))


@pytest.mark.parametrize("name", ["llamaindex_rag", "llamaindex_chat", "llamaindex_agent", "llamaindex_workflow"])
def test_example_against_the_server(name: str, live_url: str) -> None:
    env = {
        **os.environ,
        "DIFFPO_ALIGNER_URL": live_url,
        "DIFFPO_BASE_URL": live_url,  # the server's OpenAI-compatible route drafts too
        "DIFFPO_MAX_NEW_TOKENS": str(LIVE_MAX_NEW_TOKENS),
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{name}.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "draft:" in done.stdout
    assert "aligned: " in done.stdout
    assert "SmolLM2-135M-Instruct stands in for a DiffPO checkpoint" in done.stdout
