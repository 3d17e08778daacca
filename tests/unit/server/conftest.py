"""Fixtures of the server unit tests: the app over a tiny random Llama, driven in-process (no sockets)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from server_fakes import TinyLoaded, greedy_reference, tiny_loaded

from diffpo_integrations.server import ServerConfig, create_app


@pytest.fixture(scope="session")
def tiny() -> TinyLoaded:
    return tiny_loaded()


@pytest.fixture(scope="session")
def client(tiny: TinyLoaded) -> Iterator[TestClient]:
    """One app for the module-independent route tests (small limits so the limit checks are cheap)."""
    config = ServerConfig(max_total_tokens=128, max_input_tokens=100, max_new_tokens_limit=64, api_key=None)
    with TestClient(create_app(tiny, config, decode_fn=greedy_reference)) as test_client:
        yield test_client
