"""The gateway in front of the real embedded server, which plays both the upstream and the aligner.

SmolLM2-135M-Instruct stands in for a DiffPO checkpoint (aligner) and for the base model (upstream).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest

from diffpo_integrations.gateway import GatewayConfig, create_gateway_app


@pytest.fixture(scope="session")
def start_gateway(live_url: str) -> Callable[..., AbstractContextManager[str]]:
    """``with start_gateway(**config) as url``: a gateway served in a thread (upstream and aligner default
    to the embedded server)."""
    from diffpo_integrations.server.serve import serve_in_thread

    @contextmanager
    def start(**options: Any) -> Iterator[str]:
        options.setdefault("upstream", live_url)
        options.setdefault("aligner_urls", [live_url])
        with serve_in_thread(create_gateway_app(GatewayConfig(**options)), timeout=60) as url:
            yield url

    return start


@pytest.fixture(scope="session")
def gateway_url(start_gateway: Callable[..., AbstractContextManager[str]]) -> Iterator[str]:
    with start_gateway() as url:
        yield url
