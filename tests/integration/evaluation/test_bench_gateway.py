"""``diffpo bench gateway`` runs end to end: a delay server, the gateway in its own process, figures printed
(no timed asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffpo_integrations.cli import main

pytestmark = pytest.mark.integration


def test_gateway_benchmark_prints_and_writes_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gateway.json"
    argv = ["bench", "gateway", "--delay-ms", "2", "--iterations", "5", "--warmup", "1", "--concurrency", "4"]
    assert main([*argv, "--rounds", "1", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "gateway overhead, alignment off (upstream delay 2 ms, 5 calls)" in table
    assert "4 concurrent calls" in table
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert figures["iterations"] == 5
    assert figures["concurrency"] == 4
    # Both legs answered: each median includes the upstream's 2 ms delay.
    assert figures["direct_ms"] >= 2.0
    assert figures["gateway_ms"] >= 2.0
    assert figures["added_ms"] == pytest.approx(figures["gateway_ms"] - figures["direct_ms"])
    assert figures["concurrency_ratio"] > 0
