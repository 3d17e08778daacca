"""Limits that keep one client from exhausting the server, with the in-process app (no sockets)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from server_fakes import TinyLoaded, greedy_reference, make_client

from diffpo_integrations.server import ServerConfig
from diffpo_integrations.server.flags import add_server_arguments, server_options


class _Counting:
    """A decode function that holds every generation until released and counts how many run at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0

    def __call__(self, model: Any, input_ids: Any, draft_ids: Any = None, **kwargs: Any) -> Any:
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            assert self.release.wait(timeout=30), "the test never released the generations"
            return greedy_reference(model, input_ids, draft_ids, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


def _run_concurrently(client: Any, n: int, counting: _Counting, settle: Any) -> list[int]:
    statuses: list[int] = []
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 1}}
    threads = [
        threading.Thread(target=lambda: statuses.append(client.post("/generate", json=body).status_code))
        for _ in range(n)
    ]
    for thread in threads:
        thread.start()
    settle()
    counting.release.set()
    for thread in threads:
        thread.join(timeout=60)
    return statuses


def _wait_for(predicate: Any, within_s: float = 10.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize(("concurrent", "batch"), [(2, 8), (3, 2)])
def test_no_more_generations_run_at_once_than_both_limits_allow(tiny: TinyLoaded, concurrent: int, batch: int) -> None:
    counting = _Counting()
    limit = min(concurrent, batch)
    with make_client(
        tiny, decode_fn=counting, max_concurrent_requests=concurrent, max_batch_size=batch, max_waiting=10
    ) as c:
        state = c.app.state.diffpo

        def settle() -> None:
            assert _wait_for(lambda: state.worker.admitted == 6)
            assert _wait_for(lambda: counting.active == limit)
            # Give any further worker a chance to start a generation it should not run.
            assert not _wait_for(lambda: counting.active > limit, within_s=0.5)

        statuses = _run_concurrently(c, 6, counting, settle)
        assert statuses == [200] * 6
        assert counting.most == limit
        assert c.get("/info").json()["max_batch_size"] == limit


def test_past_concurrent_plus_waiting_the_server_answers_429(tiny: TinyLoaded) -> None:
    counting = _Counting()
    with make_client(tiny, decode_fn=counting, max_concurrent_requests=2, max_batch_size=8, max_waiting=1) as c:
        state = c.app.state.diffpo
        statuses = _run_concurrently(c, 5, counting, lambda: _wait_for(lambda: counting.active == 2))
        assert sorted(statuses) == [200, 200, 200, 429, 429]
        assert state.worker.capacity == 3


def test_a_completion_without_max_tokens_makes_16_tokens_as_openai(tiny: TinyLoaded) -> None:
    seen: list[int] = []

    def capture(model: Any, input_ids: Any, draft_ids: Any = None, **kwargs: Any) -> Any:
        seen.append(kwargs["max_new_tokens"])
        return greedy_reference(model, input_ids, draft_ids, **kwargs)

    with make_client(tiny, decode_fn=capture) as c:
        assert c.post("/v1/completions", json={"prompt": "Hello"}).status_code == 200
        assert c.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 3}).status_code == 200
        assert c.post("/generate", json={"inputs": "Hello"}).status_code == 200  # TGI's own default stays
    assert seen[:2] == [16, 3]
    assert seen[2] > 16


def test_a_body_over_the_limit_is_refused_with_413(tiny: TinyLoaded) -> None:
    with make_client(tiny, max_body_bytes=4096) as c:
        big = {"inputs": "a" * 5000}
        r = c.post("/tokenize", json=big)
        assert r.status_code == 413
        assert r.json() == {
            "error": "the request body is larger than the server's limit of 4096 bytes (--max-body-size)",
            "error_type": "validation",
        }
        # A chunked body (no Content-Length) is cut off at the limit too.
        chunks = iter([b'{"inputs": "', b"a" * 3000, b"a" * 3000, b'"}'])
        assert c.post("/generate", content=chunks, headers={"content-type": "application/json"}).status_code == 413
        assert c.post("/tokenize", json={"inputs": "a" * 100}).status_code == 200


def test_an_input_that_cannot_fit_is_refused_before_tokenizing(tiny: TinyLoaded, monkeypatch: Any) -> None:
    with make_client(tiny, max_input_tokens=20, max_total_tokens=40) as c:
        runtime = c.app.state.diffpo.runtime
        calls: list[int] = []
        encode = runtime.encode
        monkeypatch.setattr(runtime, "encode", lambda text, **kw: calls.append(len(text)) or encode(text, **kw))
        text = "a" * (21 * runtime.max_token_chars + 1)
        r = c.post("/generate", json={"inputs": text, "parameters": {"max_new_tokens": 1}})
        assert r.status_code == 422
        assert r.json()["error"] == "`inputs` must have less than 20 tokens. Given: at least 22"
        r = c.post("/v1/completions", json={"prompt": text, "max_tokens": 1})
        assert r.status_code == 422
        assert calls == []
        # With `truncate` the input is valid: only its tail is tokenized.
        long_text = "a" * (100 * runtime.max_token_chars)
        r = c.post("/generate", json={"inputs": long_text, "parameters": {"max_new_tokens": 1, "truncate": 5}})
        assert r.status_code == 200
        assert r.headers["x-prompt-tokens"] == "5"
        assert calls == [(5 + 32) * runtime.max_token_chars]


def test_the_api_key_never_shows_in_repr_or_dumps() -> None:
    config = ServerConfig(api_key="s3cret-value")
    assert "s3cret-value" not in repr(config)
    assert "s3cret-value" not in str(config)
    assert "s3cret-value" not in str(config.model_dump())
    assert "s3cret-value" not in config.model_dump_json()
    assert config.api_key is not None
    assert config.api_key.get_secret_value() == "s3cret-value"


def test_the_api_key_is_read_from_a_file(tmp_path: Path) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    args = parser.parse_args(["--api-key-file", str(key_file)])
    config = ServerConfig(**server_options(args, ServerConfig.model_fields))
    assert config.api_key is not None
    assert config.api_key.get_secret_value() == "from-a-file"
    key_file.write_text("\n")
    with pytest.raises(ValueError, match="is empty: write the key on its first line"):
        server_options(parser.parse_args(["--api-key-file", str(key_file)]), ServerConfig.model_fields)
    with pytest.raises(ValueError, match="cannot read the API key file"):
        server_options(parser.parse_args(["--api-key-file", str(tmp_path / "missing")]), ServerConfig.model_fields)
    with pytest.raises(ValueError, match="--api-key or --api-key-file, not both"):
        server_options(
            parser.parse_args(["--api-key", "a", "--api-key-file", str(key_file)]), ServerConfig.model_fields
        )


def test_the_api_key_works_from_a_file_and_stays_out_of_the_logs(
    tiny: TinyLoaded, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    with make_client(tiny, api_key="s3cret-value") as c:
        assert c.post("/tokenize", json={"inputs": "Hi"}).status_code == 401
        ok = c.post("/tokenize", json={"inputs": "Hi"}, headers={"Authorization": "Bearer s3cret-value"})
        assert ok.status_code == 200
        assert "s3cret-value" not in repr(c.app.user_middleware)
    assert "s3cret-value" not in caplog.text


def test_connection_flags_reach_the_config() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_server_arguments(parser)
    args = parser.parse_args(
        ["--max-body-size", "4096", "--header-timeout", "2.5", "--keep-alive-timeout", "3", "--max-connections", "64"]
    )
    config = ServerConfig(**server_options(args, ServerConfig.model_fields))
    assert (config.max_body_bytes, config.header_timeout_s, config.keep_alive_timeout_s) == (4096, 2.5, 3.0)
    assert config.max_connections == 64


@pytest.mark.parametrize("batch", [1, 4])
def test_streamed_logprobs_come_from_the_decoding_passes(tiny: TinyLoaded, batch: int, monkeypatch: Any) -> None:
    """With the real engine a stream is scored inside its own (batched) passes, not by a second model pass."""
    import json

    from server_fakes import reference_logprobs

    from diffpo_integrations.server.runtime import ModelRuntime

    def no_second_pass(self: Any, prompt_ids: Any) -> Any:
        raise AssertionError("a streamed token was scored outside the decoding pass")

    monkeypatch.setattr(ModelRuntime, "incremental_scorer", no_second_pass)
    with make_client(tiny, decode_fn=None, max_batch_size=batch, method="greedy") as c:
        body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 6}}
        whole = c.post("/generate", json={**body, "parameters": {**body["parameters"], "details": True}}).json()
        prompt_ids = [t["id"] for t in c.post("/tokenize", json={"inputs": "Hello world"}).json()]
        events: list[Any] = []
        threads = []
        for _ in range(3):  # several streams at once share the batch

            def run() -> None:
                with c.stream("POST", "/generate_stream", json=body) as r:
                    events.append([json.loads(x[5:]) for x in r.iter_lines() if x.startswith("data:")])

            threads.append(threading.Thread(target=run))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    expected_ids = [t["id"] for t in whole["details"]["tokens"]]
    want = reference_logprobs(tiny.model, prompt_ids + expected_ids, len(prompt_ids))
    assert len(events) == 3
    for stream in events:
        assert [e["token"]["id"] for e in stream] == expected_ids
        assert [e["token"]["logprob"] for e in stream] == pytest.approx(want, abs=1e-4)


def test_an_align_conversation_that_cannot_fit_is_refused_before_tokenizing(tiny: TinyLoaded) -> None:
    with make_client(tiny, max_input_tokens=20, max_total_tokens=40) as c:
        limit = 21 * c.app.state.diffpo.runtime.max_token_chars
        body = {"messages": [{"role": "user", "content": "a" * limit}], "draft": "Hi", "max_new_tokens": 1}
        r = c.post("/diffpo/align", json=body)
        assert r.status_code == 422
        assert r.json()["error"] == "`inputs` must have less than 20 tokens. Given: at least 21"
