"""The gateway in front of the real embedded server, which plays both the upstream and the aligner.

SmolLM2-135M-Instruct stands in for a DiffPO checkpoint (aligner) and for the base model (upstream).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from diffpo_integrations.gateway import GatewayConfig, create_gateway_app


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    from diffpo_integrations.server.testing import serve_in_thread, shared_app

    with serve_in_thread(shared_app()) as url:
        yield url


@pytest.fixture(scope="session")
def dead_url() -> str:
    """A loopback URL where nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def start_gateway(server_url: str) -> Callable[..., AbstractContextManager[str]]:
    """``with start_gateway(**config) as url``: a gateway served in a thread (upstream and aligner default
    to the embedded server)."""
    from diffpo_integrations.server.serve import serve_in_thread

    @contextmanager
    def start(**options: Any) -> Iterator[str]:
        options.setdefault("upstream", server_url)
        options.setdefault("aligner_urls", [server_url])
        with serve_in_thread(create_gateway_app(GatewayConfig(**options)), timeout=60) as url:
            yield url

    return start


@pytest.fixture(scope="session")
def gateway_url(start_gateway: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    with start_gateway() as url:
        yield url
