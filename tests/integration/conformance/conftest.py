"""The real server over SmolLM2 (the stand-in aligner) for the client-conformance tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from diffpo_integrations.server.testing import serve_in_thread, shared_app


@pytest.fixture(scope="session")
def base_url() -> Iterator[str]:
    with serve_in_thread(shared_app()) as url:
        yield url
