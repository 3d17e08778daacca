"""``diffpo bench``: the overhead benchmark runs end to end (figures only, no timed asserts) and ``engine`` passes
its arguments through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diffpo_integrations.cli import main
from diffpo_integrations.evaluation.delay_server import delay_server
from diffpo_integrations.evaluation.overhead import format_table, run_overhead


def test_overhead_benchmark_reports_every_variant() -> None:
    with delay_server(delay_ms=2) as url:
        result = run_overhead(
            url,
            delay_ms=2,
            iterations=3,
            warmup=1,
            concurrency=4,
            async_calls=1,
            async_rounds=1,
            in_process_iterations=5,
        )
    names = set(result.median_ms)
    assert {
        "raw session POST /diffpo/align",
        "TGIAligner.align",
        "DiffPOAlign().invoke (explicit conversation)",
    } <= names
    assert "chain: RunnableLambda | DiffPOAlign()" in names
    assert "DiffPOLLM(MockLLM).complete" in names
    assert all(len(v) == 3 for v in result.samples_ms.values())
    assert all(len(v) == 5 for v in result.in_process_ms.values())
    assert set(result.async_ms) >= {"TGIAligner.aalign", "raw AsyncClient (one, reused)"}
    assert result.concurrency_ratio > 0
    table = format_table(result)
    assert "TGIAligner.align" in table
    assert "4 concurrent" in table
    # DiffPOLLM is compared with the least LlamaIndex LLM wrapper, which is compared with the raw calls.
    assert result.baseline["DiffPOLLM(MockLLM).complete"] == "LLM wrapper(MockLLM) + raw POST"
    assert result.baseline["LLM wrapper(MockLLM) + raw POST"] == "MockLLM.complete + raw POST"
    rows = {line.split("  ")[0]: line for line in table.splitlines()}
    assert "[" not in rows["LLM wrapper(MockLLM) + raw POST"]  # framework machinery: no target mark
    assert "[ok]" in rows["TGIAligner.align"] or "[ABOVE 0.5 ms]" in rows["TGIAligner.align"]


def test_raw_wrapper_llm_returns_the_posted_answer() -> None:
    from llama_index.core.llms import MockLLM

    from diffpo_integrations.evaluation.overhead import _raw_wrapper_llm

    calls: list[str] = []
    llm = _raw_wrapper_llm(MockLLM(), lambda: calls.append("post") or {"text": "aligned"})
    assert llm.complete("question").text == "aligned"
    assert calls == ["post"]


def test_cli_overhead_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "overhead.json"
    args = ["bench", "overhead", "--delay-ms", "1", "--iterations", "2", "--warmup", "0", "--concurrency", "2"]
    assert main([*args, "--async-calls", "1", "--async-rounds", "1", "--json", str(out)]) == 0
    figures = json.loads(out.read_text(encoding="utf-8"))
    assert "TGIAligner.align" in figures["added_ms"]
    assert "TGIAligner.aalign" in figures["concurrency_ratio"]
    assert "added ms" in capsys.readouterr().out


def test_bench_engine_passes_arguments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = tmp_path / "bench_engine.py"
    record = tmp_path / "argv.json"
    script.write_text(f"import json, sys\njson.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n", encoding="utf-8")
    monkeypatch.setattr("diffpo_integrations.cli.bench.ENGINE_SCRIPT", script)
    assert main(["bench", "engine", "--", "--method", "greedy", "-n", "3"]) == 0
    assert json.loads(record.read_text()) == ["--method", "greedy", "-n", "3"]
    missing = tmp_path / "missing.py"
    monkeypatch.setattr("diffpo_integrations.cli.bench.ENGINE_SCRIPT", missing)
    capsys.readouterr()
    assert main(["bench", "engine"]) == 2
    assert capsys.readouterr().err == (
        f"diffpo: error: the engine benchmark runs {missing} from a source checkout of diffpo-integrations, "
        "and that file is not here\n"
    )
