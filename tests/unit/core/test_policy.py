"""The one reliability policy: the table in docs/reliability.md, and the same answer from every component."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from diffpo_integrations.backends import AlignerPool
from diffpo_integrations.core import (
    AlignerConnectionError,
    AlignerError,
    AlignerTimeoutError,
    AuthenticationError,
    ConfigurationError,
    ConversationNotFoundError,
    EngineError,
    GenerationError,
    IncompleteGenerationError,
    InputError,
    OverloadedError,
    ServerValidationError,
)
from diffpo_integrations.core.aligner import BaseAligner
from diffpo_integrations.core.policy import error_table, fails_over, fall_back, falls_back, is_retried
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult

DOCS = Path(__file__).resolve().parents[3] / "docs"


def _docs_table() -> str:
    text = (DOCS / "reliability.md").read_text()
    found = re.search(r"<!-- policy-table: start -->\n(.*?)\n<!-- policy-table: end -->", text, re.S)
    assert found is not None, "docs/reliability.md lost its policy table markers"
    return found.group(1)


def test_the_docs_table_is_the_policy() -> None:
    assert _docs_table() == error_table()


def _rows() -> dict[str, tuple[str, str, str]]:
    rows = {}
    for line in _docs_table().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name = re.match(r"`(\w+)`", cells[0])
        assert name is not None
        rows[cells[0]] = (cells[1], cells[2], cells[3])
    return rows


def test_the_table_says_what_the_issue_and_configuration_page_promise() -> None:
    rows = {
        label.split("`")[1] + (" 5xx" if "5xx" in label else " 4xx" if "4xx" in label else ""): v
        for label, v in _rows().items()
    }
    assert rows["AlignerConnectionError"] == ("yes", "yes", "yes")
    assert rows["OverloadedError"] == ("yes", "yes, not counted by the breaker", "yes")
    assert rows["AlignerTimeoutError"] == ("no", "yes", "yes")
    assert rows["AlignerError 5xx"] == ("no", "yes", "yes")  # a plain 500 is not retried
    assert rows["ServerValidationError"] == ("no", "no", "yes")
    assert rows["ConfigurationError"] == ("no", "no", "no")
    assert rows["ConversationNotFoundError"] == ("no", "no", "no")
    config = (DOCS / "configuration.md").read_text()
    assert "connection errors and 502/503/504, 429, incomplete generation; not a plain 500" in config


@pytest.mark.parametrize(
    ("error", "retried", "over", "back"),
    [
        (AlignerConnectionError("x", status=503), True, True, True),
        (OverloadedError("x", status=429), True, True, True),
        (IncompleteGenerationError("x"), True, True, True),
        (AlignerTimeoutError("x"), False, True, True),
        (GenerationError("x", status=424), False, True, True),
        (EngineError("x"), False, True, True),
        (AlignerError("x", status=500), False, True, True),
        (AlignerError("x", status=404), False, False, True),
        (AuthenticationError("x", status=403), False, False, True),
        (ServerValidationError("x", status=422), False, False, True),
        (InputError("x"), False, False, True),
        (ConversationNotFoundError("x"), False, False, False),
        (ConfigurationError("x"), False, False, False),
        (KeyError("a bug"), False, False, False),
    ],
)
def test_policy(error: BaseException, retried: bool, over: bool, back: bool) -> None:
    assert (is_retried(error), fails_over(error), falls_back(error)) == (retried, over, back)


def test_fall_back_raises_after_text_was_emitted_and_under_closed() -> None:
    err = GenerationError("boom")
    assert fall_back("open", "d", err).error == "GenerationError: boom"
    with pytest.raises(GenerationError):
        fall_back("open", "d", err, emitted=True)
    with pytest.raises(GenerationError):
        fall_back("closed", "d", err)


class Failing(BaseAligner):
    """Raises ``error`` from every call style."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error
        self.endpoint = "failing"

    def _align(self, request: AlignRequest) -> AlignResult:
        raise self.error

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        raise self.error

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        raise self.error
        yield  # pragma: no cover

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        raise self.error
        yield  # pragma: no cover


@pytest.mark.parametrize(
    "error", [GenerationError("boom"), InputError("bad"), ConfigurationError("setup"), AuthenticationError("who")]
)
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_component_answers_the_same(error: Exception) -> None:
    """The pool, LangChain's Alignment and LlamaIndex's DiffPOAlignment agree for each error."""
    from langchain_core.messages import AIMessage

    from diffpo_integrations.langchain._engine import Alignment
    from diffpo_integrations.llama_index._align import DiffPOAlignment

    def outcome(call: object) -> str:
        try:
            result = call()  # type: ignore[operator]
        except Exception as exc:
            return f"raised {type(exc).__name__}"
        aligned = result.response_metadata["diffpo"]["aligned"] if isinstance(result, AIMessage) else result.aligned
        return f"aligned={aligned}"

    member = Failing(error)
    messages = [("user", "Hi")]
    pool = AlignerPool([member], fail_policy="open", max_retries=0)
    chain = Alignment(member, fail_policy="open")
    llama = DiffPOAlignment(member, fail_policy="open")
    answers = {
        outcome(lambda: pool.align(messages, "Hello.")),
        outcome(lambda: chain.align(lambda _: messages, AIMessage("Hello."), lambda _: None)),
        outcome(lambda: llama.align([m for m in member.request(messages, "Hello.").messages], "Hello.")),
    }
    expected = "aligned=False" if falls_back(error) else f"raised {type(error).__name__}"
    assert answers == {expected}
