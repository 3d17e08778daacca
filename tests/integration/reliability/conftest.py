"""Fixtures of the reliability tests: real embedded servers over the one loaded SmolLM2 (the stand-in aligner)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from reliability_helpers import make_app

from diffpo_integrations.data import mt_bench_answers_path, mt_bench_questions_path
from diffpo_integrations.server.testing import get_default_engine, serve_in_thread


@pytest.fixture(scope="session")
def loaded() -> Any:
    return get_default_engine()


@pytest.fixture(scope="module")
def server(loaded: Any) -> Iterator[str]:
    """One default server (max_concurrent_requests=8, max_waiting=120) for the module."""
    with serve_in_thread(make_app()) as url:
        yield url


@pytest.fixture(scope="session")
def mt_bench() -> tuple[str, str]:
    """The first MT-bench question (``turns[0]``) and Llama-3-8B-Instruct's answer to it, the draft."""
    with mt_bench_questions_path().open() as f:
        question = json.loads(f.readline())
    with mt_bench_answers_path("llama-3-it-vanilla").open() as f:
        for line in f:
            answer = json.loads(line)
            if answer["question_id"] == question["question_id"]:
                return str(question["turns"][0]), str(answer["choices"][0]["turns"][0])
    raise AssertionError("no draft for the first MT-bench question")
