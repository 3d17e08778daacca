"""``diffpo serve`` and ``python -m diffpo_integrations.server``: flags reach ServerConfig unchanged."""

from __future__ import annotations

from typing import Any

import pytest

import diffpo_integrations.server as server_pkg
import diffpo_integrations.server.__main__ as server_main
from diffpo_integrations.cli import main as cli_main
from diffpo_integrations.server import ServerConfig

FLAGS = [
    *("--port", "0", "--max-batch-size", "1", "--num-threads", "2", "--max-waiting", "5", "--method", "greedy"),
    *("--log-level", "warning", "--trust-remote-code"),
]


def _check(config: ServerConfig) -> None:
    assert config.port == 0
    assert config.max_batch_size == 1
    assert config.num_threads == 2
    assert config.max_waiting == 5
    assert config.method == "greedy"
    assert config.host == "127.0.0.1"
    assert config.log_level == "warning"
    assert config.trust_remote_code is True
    assert config.max_concurrent_requests == ServerConfig().max_concurrent_requests  # left out: the default


def test_diffpo_serve_passes_its_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(server_pkg, "run_server", lambda config: seen.append(config))
    assert cli_main(["serve", *FLAGS]) == 0
    _check(seen[0])


def test_python_dash_m_server_passes_the_same_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(server_main, "run_server", lambda config: seen.append(config))
    assert server_main.main(FLAGS) == 0
    _check(seen[0])


def test_a_zero_batch_size_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        ServerConfig(max_batch_size=0)
