"""A live embedded server (SmolLM2-135M-Instruct standing in for a DiffPO checkpoint), once per session."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The scenario and fake modules are shared with the unit tests, which run the same scenarios
# against the mock transport.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "unit" / "llama_index"))


@pytest.fixture(scope="session")
def live_url() -> Iterator[str]:
    from diffpo_integrations.server.testing import serve_in_thread, shared_app

    with serve_in_thread(shared_app()) as url:
        yield url
