"""The judge client: FastChat's request, the key from the environment, retries, errors."""

from __future__ import annotations

import json

import httpx2
import pytest

from diffpo_integrations.core.errors import ConfigurationError
from diffpo_integrations.evaluation.judge_client import JudgeClient, JudgeError, chat_completions_url
from diffpo_integrations.evaluation.judge_testing import ScriptedJudge


class Sleeps:
    """An injected backoff sleep that records the delays and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/v1/chat/completions"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/v1/chat/completions"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1/chat/completions"),
        ("https://x.example/v1/chat/completions", "https://x.example/v1/chat/completions"),
    ],
)
def test_endpoint_from_url(url: str, endpoint: str) -> None:
    assert chat_completions_url(url) == endpoint


async def test_request_is_fastchats_and_key_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test-123")
    seen: list[httpx2.Request] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "ok [[9]]"}}]})

    async with JudgeClient(
        "http://judge", "gpt-4", api_key_env="MY_JUDGE_KEY", transport=httpx2.MockTransport(handle)
    ) as client:
        assert await client.complete("SYSTEM", "USER") == "ok [[9]]"
        assert await client.complete("", "USER ONLY") == "ok [[9]]"
    assert str(seen[0].url) == "http://judge/v1/chat/completions"
    assert seen[0].headers["authorization"] == "Bearer sk-test-123"
    assert json.loads(seen[0].content) == {
        "model": "gpt-4",
        "messages": [{"role": "system", "content": "SYSTEM"}, {"role": "user", "content": "USER"}],
        "n": 1,
        "temperature": 0,
        "max_tokens": 2048,
    }
    # An empty system prompt is left out, as FastChat's conversation does.
    assert json.loads(seen[1].content)["messages"] == [{"role": "user", "content": "USER ONLY"}]


async def test_no_key_no_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFPO_JUDGE_API_KEY", raising=False)
    judge = ScriptedJudge(lambda s, u: "x")
    seen: list[httpx2.Request] = []
    inner = judge.transport()

    async def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return await inner.handle_async_request(request)

    async with JudgeClient("http://judge", "m", transport=httpx2.MockTransport(handle)) as client:
        await client.complete("s", "u")
    assert "authorization" not in seen[0].headers


async def test_retries_overload_and_server_errors_then_answers() -> None:
    judge = ScriptedJudge(lambda s, u: "fine [[6]]", failures=[429, 500, 503])
    sleeps = Sleeps()
    async with JudgeClient("http://judge", "m", transport=judge.transport(), sleep=sleeps, max_retries=3) as client:
        assert await client.complete("s", "u") == "fine [[6]]"
    assert len(judge.requests) == 4
    assert len(sleeps.delays) == 3
    assert all(0 < d <= 61 for d in sleeps.delays)


async def test_retry_after_is_honoured() -> None:
    def handle(request: httpx2.Request) -> httpx2.Response:
        if handle.calls == 0:  # type: ignore[attr-defined]
            handle.calls += 1  # type: ignore[attr-defined]
            return httpx2.Response(429, headers={"Retry-After": "42"}, json={"error": "slow down"})
        return httpx2.Response(200, json={"choices": [{"message": {"content": "[[5]]"}}]})

    handle.calls = 0  # type: ignore[attr-defined]
    sleeps = Sleeps()
    async with JudgeClient("http://judge", "m", transport=httpx2.MockTransport(handle), sleep=sleeps) as client:
        assert await client.complete("s", "u") == "[[5]]"
    assert sleeps.delays[0] >= 42


async def test_gives_up_after_the_retries() -> None:
    judge = ScriptedJudge(lambda s, u: "never", failures=[502] * 5)
    sleeps = Sleeps()
    async with JudgeClient("http://judge", "m", transport=judge.transport(), sleep=sleeps, max_retries=2) as client:
        with pytest.raises(JudgeError, match=r"the judge answered HTTP 502") as info:
            await client.complete("s", "u")
    assert info.value.status == 502
    assert len(judge.requests) == 3


async def test_client_errors_are_not_retried() -> None:
    judge = ScriptedJudge(lambda s, u: "never", failures=[400])
    async with JudgeClient("http://judge", "m", transport=judge.transport(), sleep=Sleeps()) as client:
        with pytest.raises(JudgeError, match="HTTP 400"):
            await client.complete("s", "u")
    assert len(judge.requests) == 1


@pytest.mark.parametrize("status", [401, 403, 404])
async def test_wrong_key_url_or_model_stops_at_once(status: int) -> None:
    judge = ScriptedJudge(lambda s, u: "never", failures=[status])
    async with JudgeClient("http://judge", "m", transport=judge.transport(), sleep=Sleeps()) as client:
        with pytest.raises(ConfigurationError, match=rf"answered {status}: .*Check --judge-url, --judge-model"):
            await client.complete("s", "u")
    assert len(judge.requests) == 1


async def test_connection_failures_are_retried() -> None:
    calls = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx2.ConnectError("refused", request=request)
        return httpx2.Response(200, json={"choices": [{"message": {"content": "[[4]]"}}]})

    sleeps = Sleeps()
    async with JudgeClient("http://judge", "m", transport=httpx2.MockTransport(handle), sleep=sleeps) as client:
        assert await client.complete("s", "u") == "[[4]]"
    assert len(calls) == 3


async def test_a_body_that_is_not_a_completion_is_an_error() -> None:
    transport = httpx2.MockTransport(lambda r: httpx2.Response(200, json={"unexpected": True}))
    async with JudgeClient("http://judge", "m", transport=transport, sleep=Sleeps(), max_retries=0) as client:
        with pytest.raises(JudgeError, match="the judge's answer is not a chat completion"):
            await client.complete("s", "u")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "judge:8000", "model": "m"}, "must start with http:// or https://"),
        ({"url": "http://judge", "model": ""}, "name the judge model"),
        ({"url": "http://judge", "model": "m", "max_tokens": 0}, "max_tokens must be >= 1"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        JudgeClient(**kwargs)  # type: ignore[arg-type]
