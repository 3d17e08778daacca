"""``TGIAligner`` against the socket-free mock TGI: both routes, the requests sent, retries and errors."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx2
import pytest

from diffpo_integrations.backends import (
    DEFAULT_ALIGNER_URL,
    TGIAligner,
    close_http_clients,
    default_aligner_url,
    testing,
    use_client_factory,
)
from diffpo_integrations.backends.testing import MockTGIServer, mock_continuation, mock_tgi, mock_tokenize
from diffpo_integrations.core import (
    AlignerConnectionError,
    AlignResult,
    ConfigurationError,
    GenerationError,
    IncompleteGenerationError,
    OverloadedError,
    ServerValidationError,
    assemble_answer,
    build_prompt,
    coerce_messages,
    get_template,
    render_texts,
)
from diffpo_integrations.core.types import PromptMode

URL = "http://mock-tgi"
MESSAGES = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven."},
    {"role": "user", "content": "Why is it prime?"},
]
DRAFT = "Seven is prime because it has no divisors other than one and itself, so it cannot be factored."
STOP = "<|im_end|>"


@pytest.fixture(autouse=True)
def _no_api_key_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFPO_API_KEY", raising=False)
    monkeypatch.delenv("DIFFPO_ALIGNER_URL", raising=False)


def expected_answer(r: int, mode: PromptMode = "official", max_new_tokens: int = 256) -> str:
    """The mock model's answer, computed by hand: official prompt over the mock tokenizer, then its continuation."""
    template = get_template("chatml")
    texts = render_texts(template, coerce_messages(MESSAGES), DRAFT, mode=mode)
    prompt = build_prompt(texts, mock_tokenize(texts.full), keep_prefix_tokens=r, mode=mode, stop=STOP)
    pieces = mock_continuation(prompt.text)[:max_new_tokens]
    return assemble_answer(prompt.kept_text, "".join(p for p in pieces if p != STOP), STOP)


def mock_requests(server: MockTGIServer) -> list[httpx2.Request]:
    """Requests to the mock aligner only (huggingface_hub may also call its own hub through the same session)."""
    return [r for r in server.requests if r.url.host == "mock-tgi"]


def routes(server: MockTGIServer) -> list[tuple[str, str]]:
    return [(r.method, r.url.path) for r in mock_requests(server)]


def make(align_route: bool, **options: object) -> TGIAligner:
    if not align_route:
        options.setdefault("template", "chatml")
    return TGIAligner(URL, **options)  # type: ignore[arg-type]


# -- the same text through every method and both routes ---------------------------------------------------


@pytest.mark.parametrize("r", [0, 3, 12])
@pytest.mark.parametrize("align_route", [True, False])
async def test_all_methods_give_the_expected_text(align_route: bool, r: int) -> None:
    expected = expected_answer(r)
    assert expected.startswith("Seven") or r == 0
    assert "(aligned " in expected
    with mock_tgi(align_route=align_route):
        aligner = make(align_route, keep_prefix_tokens=r, use_align_route=None if align_route else False)
        result = aligner.align(MESSAGES, DRAFT)
        aresult = await aligner.aalign(MESSAGES, DRAFT)
        chunks = list(aligner.stream(MESSAGES, DRAFT))
        achunks = [c async for c in aligner.astream(MESSAGES, DRAFT)]

    assert result.text == expected
    assert aresult.text == expected
    assert "".join(c.text for c in chunks) == expected
    assert "".join(c.text for c in achunks) == expected
    for streamed in (chunks, achunks):
        assert all(c.result is None for c in streamed[:-1])
        final = streamed[-1].result
        assert final is not None
        assert final.text == expected
    route = "diffpo/align" if align_route else "generate"
    for res in (result, aresult, chunks[-1].result, achunks[-1].result):
        assert isinstance(res, AlignResult)
        assert res.details["route"] == route
        assert res.draft == DRAFT
        assert res.endpoint == URL
        assert res.finish_reason == "eos_token"
        assert res.generated_tokens == 3
        assert res.aligned is True


def test_both_routes_agree_for_clean_mode() -> None:
    expected = expected_answer(5, mode="clean")
    with mock_tgi(align_route=True):
        via_route = TGIAligner(URL, template="chatml", keep_prefix_tokens=5, prompt_mode="clean").align(MESSAGES, DRAFT)
    with mock_tgi(align_route=False):
        plain = TGIAligner(URL, template="chatml", keep_prefix_tokens=5, prompt_mode="clean").align(MESSAGES, DRAFT)
    assert via_route.text == plain.text == expected
    assert via_route.kept_prefix == plain.kept_prefix == "Seven is prime because it"
    assert via_route.details["kept_tokens"] == plain.details["kept_tokens"] == 5
    # The mock tokenizer glues "\n" to "Seven", a token that starts before the draft: 4 pure draft tokens.
    assert via_route.kept_prefix_tokens == plain.kept_prefix_tokens == 4


def test_max_new_tokens_limits_the_answer() -> None:
    with mock_tgi(align_route=False):
        result = make(False, keep_prefix_tokens=2, max_new_tokens=1).align(MESSAGES, DRAFT)
    assert result.text == expected_answer(2, max_new_tokens=1)
    assert result.finish_reason == "length"
    assert result.generated_tokens == 1


# -- the requests sent -----------------------------------------------------------------------------------------


def test_plain_tgi_requests() -> None:
    template = get_template("chatml")
    texts = render_texts(template, coerce_messages(MESSAGES), DRAFT, mode="official")
    prompt = build_prompt(texts, mock_tokenize(texts.full), keep_prefix_tokens=4, mode="official", stop=STOP)
    with mock_tgi(align_route=False) as server:
        result = make(False, keep_prefix_tokens=4, max_new_tokens=40).align(MESSAGES, DRAFT)
    assert routes(server) == [("GET", "/info"), ("POST", "/tokenize"), ("POST", "/")]
    _, tokenize, generate = mock_requests(server)
    assert json.loads(tokenize.content) == {"inputs": texts.full}
    body = json.loads(generate.content)
    assert body["inputs"] == prompt.text
    assert body["inputs"].endswith("<|im_start|>assistant\nSeven is prime because")
    assert not body.get("stream")
    parameters = body["parameters"]
    assert parameters["do_sample"] is False
    assert parameters["max_new_tokens"] == 40
    assert parameters["stop"] == [STOP]
    assert parameters["details"] is True
    assert parameters["return_full_text"] is False
    assert result.details["prompt_tokens"] == prompt.prompt_tokens
    assert result.details["kept_tokens"] == 4
    assert result.kept_prefix == "Seven is prime because"


def test_plain_tgi_stream_request() -> None:
    with mock_tgi(align_route=False) as server:
        list(make(False, keep_prefix_tokens=4).stream(MESSAGES, DRAFT))
    assert routes(server) == [("GET", "/info"), ("POST", "/tokenize"), ("POST", "/")]
    body = json.loads(mock_requests(server)[-1].content)
    assert body["stream"] is True
    assert body["parameters"]["stop"] == [STOP]
    assert body["parameters"]["do_sample"] is False


def test_align_route_request() -> None:
    with mock_tgi(align_route=True) as server:
        aligner = TGIAligner(URL, template="chatml", keep_prefix_tokens=7, max_new_tokens=33, method="greedy")
        aligner.align(MESSAGES, DRAFT)
        aligner.align(MESSAGES, DRAFT)
    # /info is asked once and cached.
    assert routes(server) == [("GET", "/info"), ("POST", "/diffpo/align"), ("POST", "/diffpo/align")]
    assert json.loads(mock_requests(server)[1].content) == {
        "messages": MESSAGES,
        "draft": DRAFT,
        "keep_prefix_tokens": 7,
        "max_new_tokens": 33,
        "prompt_mode": "official",
        "stream": False,
        "template": "chatml",
        "method": "greedy",
    }


# -- retries -------------------------------------------------------------------------------------------------------


def test_retries_on_429_and_503_then_succeeds() -> None:
    with mock_tgi(align_route=False) as server:
        aligner = make(False, keep_prefix_tokens=3, backoff=0.001)
        aligner.info()
        server.failures = [429, 503]
        result = aligner.align(MESSAGES, DRAFT)
    assert result.text == expected_answer(3)
    # /info, then /tokenize answered 429, 503, 200, then the generation.
    assert routes(server) == [("GET", "/info")] + [("POST", "/tokenize")] * 3 + [("POST", "/")]
    assert server.failures == []


async def test_async_retries_on_the_align_route() -> None:
    with mock_tgi(align_route=True) as server:
        aligner = make(True, keep_prefix_tokens=3, backoff=0.001)
        await aligner.ainfo()
        server.failures = [429, 503, 500]
        result = await aligner.aalign(MESSAGES, DRAFT)
    assert result.text == expected_answer(3)
    assert routes(server) == [("GET", "/info")] + [("POST", "/diffpo/align")] * 4


def test_align_route_streams_are_retried_before_their_first_byte() -> None:
    with mock_tgi(align_route=True) as server:
        aligner = make(True, keep_prefix_tokens=3, backoff=0.001)
        aligner.info()
        server.failures = [503, 429]
        chunks = list(aligner.stream(MESSAGES, DRAFT))
    assert "".join(c.text for c in chunks) == expected_answer(3)
    assert routes(server) == [("GET", "/info")] + [("POST", "/diffpo/align")] * 3


async def test_async_align_route_streams_are_retried_before_their_first_byte() -> None:
    with mock_tgi(align_route=True) as server:
        aligner = make(True, keep_prefix_tokens=3, backoff=0.001)
        await aligner.ainfo()
        server.failures = [502]
        chunks = [c async for c in aligner.astream(MESSAGES, DRAFT)]
    assert "".join(c.text for c in chunks) == expected_answer(3)
    assert chunks[-1].result is not None
    assert routes(server) == [("GET", "/info")] + [("POST", "/diffpo/align")] * 2


async def test_sync_and_async_give_the_same_error_when_the_deadline_leaves_no_retry() -> None:
    with mock_tgi(align_route=True) as server:
        aligner = make(True, max_retries=5, backoff=0.001, deadline=5.0)
        aligner.info()
        outcomes = []
        for call in (lambda: aligner.align(MESSAGES, DRAFT), None):
            server.failures = [429]
            server.retry_after = "60"
            if call is not None:
                with pytest.raises(OverloadedError) as info:
                    call()
            else:
                with pytest.raises(OverloadedError) as info:
                    await aligner.aalign(MESSAGES, DRAFT)
            outcomes.append((type(info.value), str(info.value), info.value.retry_after))
    # Retry-After (60 s) does not fit in the deadline: both styles give up at once with the server's error.
    assert outcomes == [(OverloadedError, "mock failure 429", 60.0)] * 2


def test_gives_up_after_max_retries_with_overloaded_error() -> None:
    with mock_tgi(align_route=False) as server:
        aligner = make(False, max_retries=2, backoff=0.001)
        aligner.info()
        server.failures = [429] * 10
        with pytest.raises(OverloadedError) as info:
            aligner.align(MESSAGES, DRAFT)
    assert routes(server)[1:] == [("POST", "/tokenize")] * 3
    assert info.value.status == 429
    assert info.value.endpoint == URL
    assert info.value.retry_after == 0.0
    assert str(info.value) == "mock failure 429"


@dataclass
class FailingGenerateServer(MockTGIServer):
    """The mock TGI, failing only its generation route ``POST /`` (so the error goes through huggingface_hub)."""

    generate_failures: list[int] = field(default_factory=list)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path == "/" and self.generate_failures:
            self.requests.append(request)
            return self._failure(self.generate_failures.pop(0))
        return super().handle(request)


@pytest.fixture
def failing_generate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing, "MockTGIServer", FailingGenerateServer)


@pytest.mark.usefixtures("failing_generate")
@pytest.mark.parametrize(
    ("status", "cls", "attempts"),
    [
        (422, ServerValidationError, 1),
        (424, GenerationError, 1),
        (429, OverloadedError, 3),
        (500, IncompleteGenerationError, 3),
    ],
)
async def test_generation_errors_through_huggingface_hub(status: int, cls: type[Exception], attempts: int) -> None:
    with mock_tgi(align_route=False) as server:
        assert isinstance(server, FailingGenerateServer)
        aligner = make(False, max_retries=2, backoff=0.001)
        server.generate_failures = [status] * 10
        with pytest.raises(cls) as info:
            aligner.align(MESSAGES, DRAFT)
        assert routes(server).count(("POST", "/")) == attempts
        assert type(info.value) is cls
        assert str(info.value) == f"mock failure {status}"
        assert info.value.status == status  # type: ignore[attr-defined]
        assert info.value.endpoint == URL  # type: ignore[attr-defined]

        server.requests.clear()
        server.generate_failures = [status] * 10
        with pytest.raises(cls):
            await aligner.aalign(MESSAGES, DRAFT)
        assert routes(server).count(("POST", "/")) == attempts

        server.generate_failures = [status] * 10
        with pytest.raises(cls):
            list(aligner.stream(MESSAGES, DRAFT))
        server.generate_failures = [status] * 10
        with pytest.raises(cls):
            [c async for c in aligner.astream(MESSAGES, DRAFT)]


@pytest.mark.usefixtures("failing_generate")
def test_generation_retried_then_succeeds() -> None:
    with mock_tgi(align_route=False) as server:
        assert isinstance(server, FailingGenerateServer)
        server.generate_failures = [429, 500]
        result = make(False, keep_prefix_tokens=2, backoff=0.001).align(MESSAGES, DRAFT)
    assert result.text == expected_answer(2)
    assert routes(server) == [("GET", "/info"), ("POST", "/tokenize")] + [("POST", "/")] * 3


@pytest.mark.parametrize(
    ("status", "cls", "attempts"),
    [
        (422, ServerValidationError, 1),
        (424, GenerationError, 1),
        (500, IncompleteGenerationError, 3),
        (503, AlignerConnectionError, 3),
    ],
)
@pytest.mark.parametrize("align_route", [True, False])
def test_error_types_on_the_first_route(align_route: bool, status: int, cls: type[Exception], attempts: int) -> None:
    with mock_tgi(align_route=align_route) as server:
        aligner = make(align_route, max_retries=2, backoff=0.001)
        aligner.info()
        server.failures = [status] * 10
        with pytest.raises(cls) as info:
            aligner.align(MESSAGES, DRAFT)
        assert len(mock_requests(server)) == 1 + attempts
        assert type(info.value) is cls
        assert info.value.status == status  # type: ignore[attr-defined]
        assert info.value.endpoint == URL  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [422, 503])
async def test_stream_errors_on_the_align_route(status: int) -> None:
    with mock_tgi(align_route=True) as server:
        aligner = make(True, max_retries=0)
        await aligner.ainfo()
        server.failures = [status]
        cls = ServerValidationError if status == 422 else AlignerConnectionError
        with pytest.raises(cls):
            list(aligner.stream(MESSAGES, DRAFT))
        server.failures = [status]
        with pytest.raises(cls):
            [c async for c in aligner.astream(MESSAGES, DRAFT)]


def test_deadline_stops_retrying() -> None:
    with mock_tgi(align_route=False) as server:
        # Without the deadline these retries would sleep well over 2 s.
        aligner = make(False, max_retries=8, backoff=0.2, deadline=0.5)
        aligner.info()
        server.failures = [503] * 100
        started = time.monotonic()
        with pytest.raises(AlignerConnectionError):
            aligner.align(MESSAGES, DRAFT)
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    attempts = len(mock_requests(server)) - 1
    assert 1 <= attempts <= 4  # the deadline, not max_retries, ended it


# -- configuration ------------------------------------------------------------------------------------------------


def test_plain_tgi_without_template() -> None:
    with mock_tgi(align_route=False), pytest.raises(ConfigurationError) as info:
        TGIAligner(URL).align(MESSAGES, DRAFT)
    assert str(info.value) == (
        "http://mock-tgi is a plain TGI server, so the aligner's chat template must be given: "
        "TGIAligner(..., template='gemma') for DiffPO-2B/9B, 'llama3' for DiffPO-8B, or a tokenizer path"
    )


async def test_align_route_forced_on_plain_tgi() -> None:
    with mock_tgi(align_route=False):
        aligner = TGIAligner(URL, template="chatml", use_align_route=True)
        with pytest.raises(ConfigurationError) as info:
            aligner.align(MESSAGES, DRAFT)
        assert str(info.value) == ("http://mock-tgi offers no /diffpo/align route; pass use_align_route=None or False")
        with pytest.raises(ConfigurationError):
            await aligner.aalign(MESSAGES, DRAFT)


def test_use_align_route_false_skips_the_route() -> None:
    with mock_tgi(align_route=True) as server:
        result = TGIAligner(URL, template="chatml", use_align_route=False, keep_prefix_tokens=1).align(MESSAGES, DRAFT)
    assert result.details["route"] == "generate"
    assert ("POST", "/diffpo/align") not in routes(server)
    assert result.text == expected_answer(1)


def test_bad_base_url() -> None:
    with pytest.raises(ConfigurationError) as info:
        TGIAligner("mock-tgi:8080")
    assert str(info.value) == "base_url must start with http:// or https://, got 'mock-tgi:8080'"


def test_default_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_aligner_url() == DEFAULT_ALIGNER_URL == "http://127.0.0.1:8080"
    assert TGIAligner().base_url == "http://127.0.0.1:8080"
    monkeypatch.setenv("DIFFPO_ALIGNER_URL", "http://env-aligner:9000/")
    assert default_aligner_url() == "http://env-aligner:9000"
    aligner = TGIAligner(keep_prefix_tokens=2)
    assert aligner.base_url == aligner.endpoint == "http://env-aligner:9000"
    with mock_tgi() as server:
        result = aligner.align(MESSAGES, DRAFT)
    assert result.endpoint == "http://env-aligner:9000"
    assert [r.url.host for r in server.requests if r.url.path in ("/info", "/diffpo/align")] == ["env-aligner"] * 2
    assert TGIAligner("http://explicit:1").base_url == "http://explicit:1"


@pytest.mark.parametrize("align_route", [True, False])
async def test_authorization_header(align_route: bool) -> None:
    with mock_tgi(align_route=align_route) as server:
        aligner = make(align_route, api_key="s3cret")
        aligner.align(MESSAGES, DRAFT)
        await aligner.aalign(MESSAGES, DRAFT)
        list(aligner.stream(MESSAGES, DRAFT))
    sent = mock_requests(server)
    assert len(sent) == (4 if align_route else 7)
    assert ("POST", "/") in routes(server) or align_route  # the huggingface_hub client sends it too
    assert all(r.headers.get("authorization") == "Bearer s3cret" for r in sent)


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFFPO_API_KEY", "from-env")
    with mock_tgi() as server:
        TGIAligner(URL).align(MESSAGES, DRAFT)
    assert all(r.headers.get("authorization") == "Bearer from-env" for r in mock_requests(server))


def test_no_authorization_header_without_a_key() -> None:
    with mock_tgi(align_route=False) as server:
        make(False).align(MESSAGES, DRAFT)
    assert all("authorization" not in r.headers for r in mock_requests(server))


def test_mock_tgi_restores_the_client_factory_that_was_there_before() -> None:
    from diffpo_integrations.backends import _loop

    def custom() -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(lambda r: httpx2.Response(503)))

    previous = _loop.set_client_factory(custom)
    try:
        with mock_tgi():
            assert TGIAligner("http://mock-tgi").align(MESSAGES, DRAFT).aligned
        # The user's own factory is back, not the library default.
        assert _loop.set_client_factory(custom) is custom
        with pytest.raises(AlignerConnectionError):
            TGIAligner("http://mock-tgi", max_retries=0).align(MESSAGES, DRAFT)
    finally:
        _loop.set_client_factory(previous)


async def test_http_clients_are_closed() -> None:
    made: list[httpx2.AsyncClient] = []
    server = MockTGIServer()

    def factory() -> httpx2.AsyncClient:
        made.append(httpx2.AsyncClient(transport=httpx2.MockTransport(server.handle)))
        return made[-1]

    with use_client_factory(factory):
        aligner = TGIAligner("http://mock-tgi")
        aligner.align(MESSAGES, DRAFT)
        await aligner.aalign(MESSAGES, DRAFT)
        [c async for c in aligner.astream(MESSAGES, DRAFT)]
        assert len(made) == 1  # one shared client for every call style and event loop
        assert not made[0].is_closed
        close_http_clients()
        assert made[0].is_closed
        aligner.align(MESSAGES, DRAFT)  # the next request builds a new one
    assert len(made) == 2
    assert all(c.is_closed for c in made)  # leaving the block closed the client it made
