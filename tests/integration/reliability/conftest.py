"""Fixtures of the reliability tests: real embedded servers over the one loaded SmolLM2 (the stand-in aligner)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from reliability_helpers import make_app

from diffpo_integrations.server.testing import serve_in_thread


@pytest.fixture(scope="module")
def server(loaded: Any) -> Iterator[str]:
    """One default server (max_concurrent_requests=8, max_waiting=120) for the module."""
    with serve_in_thread(make_app()) as url:
        yield url
