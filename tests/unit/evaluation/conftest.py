"""Fixtures of the evaluation tests: the shipped MT-bench files and a mock TGI."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.backends.testing import MockTGIServer, mock_tgi
from diffpo_integrations.data import mt_bench_answers_path, mt_bench_questions_path
from diffpo_integrations.evaluation import load_answers, load_questions


@pytest.fixture
def server() -> Iterator[MockTGIServer]:
    with mock_tgi() as s:
        yield s


@pytest.fixture
def aligner(server: MockTGIServer) -> TGIAligner:
    return TGIAligner("http://mock-tgi", max_retries=0)


@pytest.fixture(scope="session")
def questions() -> list[Any]:
    return load_questions(mt_bench_questions_path())


@pytest.fixture(scope="session")
def base_answers() -> dict[Any, Any]:
    return load_answers(mt_bench_answers_path("llama-3-it-vanilla"))
