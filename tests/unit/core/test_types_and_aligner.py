"""Types, input validation, the shared aligner front, answer streaming and the TGI error mapping."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffpo_integrations.core import (
    AlignChunk,
    AlignerConnectionError,
    AlignerError,
    AlignRequest,
    AlignResult,
    AnswerStream,
    AuthenticationError,
    BaseAligner,
    ConfigurationError,
    DiffPOError,
    GenerationError,
    IncompleteGenerationError,
    InputError,
    Message,
    OverloadedError,
    ServerValidationError,
    assemble_answer,
    coerce_messages,
    error_from_tgi_payload,
    get_template,
    paper_prefix_tokens,
    render_texts,
)

# -- coerce_messages ------------------------------------------------------------------------------------


def test_coerce_dicts_tuples_messages_and_aliases() -> None:
    existing = Message(role="system", content="Be brief.")
    out = coerce_messages(
        [
            existing,
            {"role": "human", "content": "Hi"},
            ("ai", "Hello"),
            {"role": "user", "content": "Bye", "name": "ignored"},
            ("assistant", ""),
        ]
    )
    assert out == [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Hi"),
        Message(role="assistant", content="Hello"),
        Message(role="user", content="Bye"),
        Message(role="assistant", content=""),
    ]
    assert out[0] is existing
    assert coerce_messages(iter([("user", "x")])) == [Message(role="user", content="x")]


def test_bad_role() -> None:
    with pytest.raises(InputError) as info:
        coerce_messages([("user", "Hi"), ("tool", "42")])
    assert str(info.value) == "message 1 has role 'tool'; use 'system', 'user' or 'assistant'"
    with pytest.raises(InputError) as info:
        coerce_messages([{"content": "Hi"}])
    assert str(info.value) == "message 0 has role None; use 'system', 'user' or 'assistant'"


def test_non_text_content() -> None:
    with pytest.raises(InputError) as info:
        coerce_messages([{"role": "human", "content": [{"type": "text", "text": "Hi"}]}])
    assert str(info.value) == (
        "message 0 (user) has non-text content of type list; "
        "DiffPO aligns text only: pass the text parts joined as one string"
    )


def test_not_a_message() -> None:
    with pytest.raises(InputError) as info:
        coerce_messages(["Hi"])
    assert str(info.value) == (
        "message 0 must be a Message, a dict with 'role' and 'content', or a (role, content) pair; got str"
    )


def test_empty_conversation() -> None:
    with pytest.raises(InputError) as info:
        coerce_messages([])
    assert str(info.value) == "the conversation is empty: pass at least the user turn that the draft answers"


def test_input_errors_are_value_errors_and_diffpo_errors() -> None:
    with pytest.raises(ValueError, match="conversation is empty"):
        coerce_messages([])
    assert issubclass(InputError, DiffPOError)
    assert issubclass(ConfigurationError, DiffPOError)


# -- AlignRequest / render_texts ----------------------------------------------------------------------


def test_request_must_end_with_a_user_turn() -> None:
    with pytest.raises(InputError) as info:
        AlignRequest(messages=[("user", "Hi"), ("assistant", "Hello")], draft="x")
    assert str(info.value) == (
        "the conversation must end with the user turn the draft answers; it ends with a 'assistant' turn"
    )
    request = AlignRequest(messages=[{"role": "human", "content": "Hi"}], draft="Hello")
    assert request.messages == [Message(role="user", content="Hi")]
    assert request.keep_prefix_tokens is None
    assert request.max_new_tokens is None


def test_request_errors_are_input_errors_not_pydantic_errors() -> None:
    with pytest.raises(InputError) as info:
        AlignRequest(messages=[("bot", "Hi")], draft="x")
    assert type(info.value) is InputError
    assert str(info.value) == "message 0 has role 'bot'; use 'system', 'user' or 'assistant'"
    with pytest.raises(InputError) as info:
        AlignRequest(messages=[("user", "Hi")], draft="x", keep_prefix_tokens=-1)
    assert str(info.value) == "invalid align request: keep_prefix_tokens: Input should be greater than or equal to 0"
    with pytest.raises(InputError) as info:
        AlignRequest(messages=[("user", "Hi")], draft="x", max_new_tokens=0)
    assert str(info.value) == "invalid align request: max_new_tokens: Input should be greater than or equal to 1"
    with pytest.raises(InputError) as info:
        EchoAligner().align([("user", "Hi")], "x", keep_prefix_tokens=-2)
    assert str(info.value) == "invalid align request: keep_prefix_tokens: Input should be greater than or equal to 0"


@pytest.mark.parametrize("draft", ["", "   ", "\n\t "])
def test_empty_draft(draft: str) -> None:
    with pytest.raises(InputError) as info:
        render_texts(get_template("chatml"), coerce_messages([("user", "Hi")]), draft, mode="official")
    assert str(info.value) == "the draft is empty or whitespace: pass the base model's answer text as the draft"


# -- BaseAligner ------------------------------------------------------------------------------------------


class EchoAligner(BaseAligner):
    """Returns the request's settings, so the tests see what BaseAligner resolved."""

    def _result(self, request: AlignRequest) -> AlignResult:
        return AlignResult(
            text=request.draft,
            draft=request.draft,
            kept_prefix_tokens=request.keep_prefix_tokens or 0,
            details={"max_new_tokens": request.max_new_tokens},
        )

    def _align(self, request: AlignRequest) -> AlignResult:
        return self._result(request)

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        return self._result(request)

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        yield AlignChunk(text=request.draft[:2])
        yield AlignChunk(text=request.draft[2:], result=self._result(request))

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        for chunk in self._stream(request):
            yield chunk


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"keep_prefix_tokens": -1}, "keep_prefix_tokens must be >= 0, got -1"),
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1, got 0"),
        ({"prompt_mode": "exact"}, "prompt_mode must be 'official' or 'clean', got 'exact'"),
        ({"prefix_sampling": "random"}, "prefix_sampling must be 'fixed' or 'paper', got 'random'"),
    ],
)
def test_base_aligner_option_validation(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        EchoAligner(**options)
    assert str(info.value) == message


def test_base_aligner_defaults_and_overrides() -> None:
    aligner = EchoAligner(keep_prefix_tokens=3, max_new_tokens=50)
    result = aligner.align([("user", "Hi")], "Hello")
    assert (result.kept_prefix_tokens, result.details["max_new_tokens"]) == (3, 50)
    assert result.latency_s > 0
    result = aligner.align([("user", "Hi")], "Hello", keep_prefix_tokens=0, max_new_tokens=7)
    assert (result.kept_prefix_tokens, result.details["max_new_tokens"]) == (0, 7)
    request = AlignRequest(messages=[("user", "Hi")], draft="Hello", keep_prefix_tokens=9)
    assert aligner.request(request).keep_prefix_tokens == 9
    assert EchoAligner().request([("user", "Hi")], "x").keep_prefix_tokens == 6
    assert EchoAligner().request([("user", "Hi")], "x").max_new_tokens == 256


async def test_base_aligner_async_and_stream() -> None:
    aligner = EchoAligner(keep_prefix_tokens=2)
    assert (await aligner.aalign([("user", "Hi")], "Hello")).text == "Hello"
    chunks = list(aligner.stream([("user", "Hi")], "Hello"))
    assert [c.text for c in chunks] == ["He", "llo"]
    assert chunks[-1].result is not None
    assert chunks[-1].result.latency_s > 0
    achunks = [c async for c in aligner.astream([("user", "Hi")], "Hello")]
    assert [c.text for c in achunks] == ["He", "llo"]
    with pytest.raises(InputError, match="must end with the user turn"):
        aligner.align([("assistant", "Hi")], "Hello")
    with pytest.raises(InputError, match="must end with the user turn"):
        await aligner.aalign([("user", "Hi"), ("assistant", "Hello")], "Hello")


def _requests(n: int) -> list[tuple[list[tuple[str, str]], str]]:
    return [([("user", f"Question {i}?")], f"Answer number {i}.") for i in range(n)]


def test_paper_prefix_sampling_is_seeded_per_request() -> None:
    requests = _requests(30)
    a = EchoAligner(prefix_sampling="paper", seed=1)
    b = EchoAligner(prefix_sampling="paper", seed=1)
    c = EchoAligner(prefix_sampling="paper", seed=2)
    first = [a.request(m, d).keep_prefix_tokens for m, d in requests]
    # Same request and seed: the same draw, whatever the call order or instance.
    assert first == [b.request(m, d).keep_prefix_tokens for m, d in reversed(requests)][::-1]
    assert first == [a.request(m, d).keep_prefix_tokens for m, d in requests]
    assert all(r is not None and 0 <= r <= 12 for r in first)
    assert len(set(first)) >= 2
    other = [c.request(m, d).keep_prefix_tokens for m, d in requests]
    assert all(r is not None and 0 <= r <= 12 for r in other)
    assert other != first
    # An explicit value still wins over the draw.
    assert a.request(*requests[0], keep_prefix_tokens=11).keep_prefix_tokens == 11
    # Fixed sampling ignores the seed.
    assert {EchoAligner(seed=s).request(*requests[0]).keep_prefix_tokens for s in range(5)} == {6}


def test_paper_prefix_tokens_function() -> None:
    messages = coerce_messages([("user", "Hi")])
    draws = {paper_prefix_tokens(messages, "Hello", seed) for seed in range(60)}
    assert draws <= set(range(13))
    assert len(draws) >= 5
    assert paper_prefix_tokens(messages, "Hello", 3) == paper_prefix_tokens(messages, "Hello", 3)


# -- AnswerStream and assemble_answer -------------------------------------------------------------------


def test_assemble_answer() -> None:
    assert assemble_answer("\nKept", " more.\n<|im_end|>", "<|im_end|>") == "Kept more."
    assert assemble_answer("", "  x  ", "") == "x"
    assert assemble_answer("a", "b<|im_end|>", "") == "ab<|im_end|>"


def test_answer_stream_docstring_example() -> None:
    s = AnswerStream(stop="<|im_end|>")
    assert [s.feed(t) for t in ["\n", "Hi", " ", "there", "\n", "<|im_end|>"]] == ["", "Hi", "", " there", "", ""]
    assert s.text == "Hi there"


_TEXT = st.text(alphabet=st.sampled_from(["a", "b", "Z", " ", "\n", "\t", ".", "é"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    kept=_TEXT,
    generated=_TEXT,
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=12),
    with_stop=st.booleans(),
)
def test_answer_stream_pieces_join_to_assemble_answer(
    kept: str, generated: str, cuts: list[int], with_stop: bool
) -> None:
    stop = "<|im_end|>"
    bounds = sorted({min(c, len(generated)) for c in cuts} | {0, len(generated)})
    pieces = [generated[a:b] for a, b in itertools.pairwise(bounds)]
    if with_stop:
        pieces.append(stop)
    stream = AnswerStream(stop=stop)
    emitted = [stream.feed(kept)] + [stream.feed(p) for p in pieces]
    expected = assemble_answer(kept, generated + (stop if with_stop else ""), stop)
    assert "".join(emitted) == expected
    assert stream.text == expected
    # Nothing is emitted that a later piece could still strip away.
    joined = ""
    for piece in emitted:
        joined += piece
        assert joined == joined.strip() or not joined


@settings(max_examples=100, deadline=None)
@given(generated=_TEXT, cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=8))
def test_answer_stream_feed_all(generated: str, cuts: list[int]) -> None:
    bounds = sorted({min(c, len(generated)) for c in cuts} | {0, len(generated)})
    pieces = [generated[a:b] for a, b in itertools.pairwise(bounds)]
    assert AnswerStream().feed_all(pieces) == generated.strip()


# -- AlignResult --------------------------------------------------------------------------------------------


def test_unaligned_result() -> None:
    error = OverloadedError("queue full", endpoint="http://a", status=429)
    result = AlignResult.unaligned("My draft.", error, endpoint="http://a", latency_s=0.5)
    assert result.text == "My draft."
    assert result.draft == "My draft."
    assert result.aligned is False
    assert result.finish_reason == "error"
    assert result.error == "OverloadedError: queue full"
    assert result.endpoint == "http://a"
    assert result.latency_s == 0.5
    assert result.kept_prefix == ""
    assert result.kept_prefix_tokens == 0
    assert result.generated_tokens == 0
    metadata = result.metadata()
    assert "text" not in metadata
    assert metadata["aligned"] is False
    assert metadata["error"] == "OverloadedError: queue full"
    assert AlignResult(text="a", draft="b").aligned is True


# -- error_from_tgi_payload -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "payload", "cls", "message"),
    [
        (
            422,
            {"error": "Input validation error", "error_type": "validation"},
            ServerValidationError,
            "Input validation error",
        ),
        (429, {"error": "Model is overloaded", "error_type": "overloaded"}, OverloadedError, "Model is overloaded"),
        (424, {"error": "CUDA out of memory", "error_type": "generation"}, GenerationError, "CUDA out of memory"),
        (
            500,
            {"error": "Incomplete generation", "error_type": "incomplete_generation"},
            IncompleteGenerationError,
            "Incomplete generation",
        ),
        # error_type wins over the status
        (500, {"error": "busy", "error_type": "overloaded"}, OverloadedError, "busy"),
        (401, {"error": "Invalid token"}, AuthenticationError, "Invalid token"),
        (403, {"message": "Forbidden"}, AuthenticationError, "Forbidden"),
        (422, {"error": "bad"}, ServerValidationError, "bad"),
        (429, "Too Many Requests", OverloadedError, "Too Many Requests"),
        (502, "Bad Gateway", AlignerConnectionError, "Bad Gateway"),
        (503, {"error": "starting", "error_type": "unknown"}, AlignerConnectionError, "starting"),
        (504, {"error": "timeout"}, AlignerConnectionError, "timeout"),
        (500, {"error": "boom", "error_type": "unknown"}, AlignerError, "boom"),
        (404, {"detail": "nope"}, AlignerError, "{'detail': 'nope'}"),
    ],
)
def test_error_from_tgi_payload(status: int, payload: Any, cls: type[AlignerError], message: str) -> None:
    error = error_from_tgi_payload(status, payload, endpoint="http://tgi:8080")
    assert type(error) is cls
    assert str(error) == message
    assert error.status == status
    assert error.endpoint == "http://tgi:8080"


def test_overloaded_keeps_retry_after() -> None:
    error = error_from_tgi_payload(429, {"error": "queue full"}, endpoint="http://x", retry_after=2.5)
    assert type(error) is OverloadedError
    assert error.retry_after == 2.5
    assert error.retryable is True
    no_header = error_from_tgi_payload(429, {"error": "queue full"})
    assert isinstance(no_header, OverloadedError)
    assert no_header.retry_after is None


def test_retryable_flags() -> None:
    assert OverloadedError("x").retryable
    assert IncompleteGenerationError("x").retryable
    assert AlignerConnectionError("x").retryable
    assert not GenerationError("x").retryable
    assert not ServerValidationError("x").retryable
    assert not AuthenticationError("x").retryable
    assert not AlignerError("x").retryable
    # A server-side validation failure is also an input error: fix the call.
    assert isinstance(ServerValidationError("x"), InputError)
