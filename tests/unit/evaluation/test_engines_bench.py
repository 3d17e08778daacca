"""The arithmetic and table of ``diffpo bench engines``, on rows written by hand."""

from __future__ import annotations

import pytest

from diffpo_integrations.evaluation.engines_bench import (
    EngineBenchResult,
    EngineRow,
    format_engines_table,
    run_engines_bench,
)


def _result() -> EngineBenchResult:
    rows = [
        EngineRow("diffpo serve", "foreign", 81, 2.0, 40, True),
        EngineRow("vLLM", "foreign", 81, 3.0, 40, True),
        EngineRow("llama.cpp", "foreign", 81, 1.0, 40, None),
        EngineRow("diffpo serve", "self10", 81, 0.5, 40, True),
        EngineRow("vLLM", "self10", 81, 3.0, 40, False),
        EngineRow("llama.cpp", "self10", 81, 1.0, 40, None),
    ]
    concurrent = {e: {"requests": 8.0, "seconds": 4.0, "tokens_per_s": 80.0} for e in ("diffpo serve", "vLLM")}
    return EngineBenchResult(rows, concurrent | {"llama.cpp": {"requests": 8.0, "seconds": 8.0, "tokens_per_s": 40.0}},
                             {}, {"concurrency": 8})  # fmt: skip


def test_speedup_is_the_engine_time_over_diffpo_serve_time() -> None:
    result = _result()
    assert result.speedup("foreign", "vLLM") == 1.5
    assert result.speedup("self10", "vLLM") == 6.0
    assert result.speedup("foreign", "llama.cpp") == 0.5
    assert result.summary()["self10"]["vLLM"]["identical"] == 0
    assert result.as_json()["speedup"]["self10"] == {"vLLM": 6.0, "llama.cpp": 2.0}


def test_the_table_names_each_ratio_and_the_fidelity() -> None:
    table = format_engines_table(_result()).splitlines()
    assert "| foreign | vLLM | 1 | 3.00 | 13.3 | 1.50x | 1/1 |" in table
    assert "| self10 | vLLM | 1 | 3.00 | 13.3 | 6.00x | 0/1 |" in table
    assert "| self10 | llama.cpp | 1 | 1.00 | 40.0 | 2.00x | own weights |" in table
    assert "| llama.cpp | 8.0 | 40.0 |" in table


def test_engines_must_include_diffpo_serve() -> None:
    with pytest.raises(ValueError, match=r"engines must include 'diffpo serve'.*got \['vLLM'\]"):
        run_engines_bench(engines=["vLLM"])


def test_llama_cpp_needs_the_gguf_it_serves() -> None:
    with pytest.raises(ValueError, match=r"llama.cpp needs the GGUF it serves: pass gguf="):
        run_engines_bench(engines=["diffpo serve", "llama.cpp"])


def test_the_time_split_says_where_diffpo_serve_spent_its_time() -> None:
    rows = [
        EngineRow("diffpo serve", "self10", 81, 1.0, 40, True, passes=8, accepted=30, decode_s=0.8),
        EngineRow("diffpo serve", "self10", 82, 1.0, 20, True, passes=2, accepted=18, decode_s=0.2),
        EngineRow("vLLM", "self10", 81, 3.0, 60, True),
    ]
    concurrent = {e: {"requests": 8.0, "seconds": 4.0, "tokens_per_s": 80.0} for e in ("diffpo serve", "vLLM")}
    result = EngineBenchResult(rows, concurrent, {}, {"concurrency": 8})
    split = result.time_split()
    assert split == {
        "self10": {
            "tokens": 60.0,
            "passes": 10.0,
            "tokens_per_pass": 6.0,
            "accepted": 48.0,
            "decode_s": 1.0,
            "outside_s": 1.0,
            "ms_per_pass": 100.0,
            "vllm_ms_per_token": 50.0,
        }
    }
    assert "| self10 | 60 | 10 | 6.00 | 48 | 1.00 | 1.00 | 100.0 | 50.0 |" in format_engines_table(result).splitlines()
