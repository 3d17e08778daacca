"""Every invalid input gets TGI's 422 shape with an exact message; 401, 404, 429 and 424 are TGI-shaped too."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from fastapi.testclient import TestClient
from server_fakes import Gate, TinyLoaded, make_client

LONG = "Hello world! " * 60  # > 100 tokens with the tiny tokenizer

CASES: list[tuple[str, Any, str]] = [
    (
        "negative max_new_tokens",
        {"inputs": "Hi", "parameters": {"max_new_tokens": -1}},
        "`max_new_tokens` must be strictly positive",
    ),
    (
        "zero max_new_tokens",
        {"inputs": "Hi", "parameters": {"max_new_tokens": 0}},
        "`max_new_tokens` must be strictly positive",
    ),
    (
        "huge max_new_tokens",
        {"inputs": "Hi", "parameters": {"max_new_tokens": 10**12}},
        "`max_new_tokens` must be <= 64. Given: 1000000000000",
    ),
    (
        "too many stops",
        {"inputs": "Hi", "parameters": {"stop": ["a", "b", "c", "d", "e"]}},
        "`stop` supports up to 4 stop sequences. Given: 5",
    ),
    ("empty inputs", {"inputs": ""}, "`inputs` cannot be empty"),
    (
        "input over max_input_tokens",
        {"inputs": LONG, "parameters": {"max_new_tokens": 1}},
        "`inputs` must have less than 100 tokens. Given: 360",
    ),
    (
        "total over max_total_tokens",
        {"inputs": "Hello world! " * 15, "parameters": {"max_new_tokens": 64}},
        "`inputs` tokens + `max_new_tokens` must be <= 128. Given: 90 `inputs` tokens and 64 `max_new_tokens`",
    ),
    ("zero temperature", {"inputs": "Hi", "parameters": {"temperature": 0}}, "`temperature` must be strictly positive"),
    ("top_p of one", {"inputs": "Hi", "parameters": {"top_p": 1.0}}, "`top_p` must be > 0.0 and < 1.0"),
    ("typical_p of zero", {"inputs": "Hi", "parameters": {"typical_p": 0}}, "`typical_p` must be > 0.0 and < 1.0"),
    ("top_k of zero", {"inputs": "Hi", "parameters": {"top_k": 0}}, "`top_k` must be strictly positive"),
    (
        "repetition_penalty of zero",
        {"inputs": "Hi", "parameters": {"repetition_penalty": 0}},
        "`repetition_penalty` must be strictly positive",
    ),
    (
        "frequency_penalty out of range",
        {"inputs": "Hi", "parameters": {"frequency_penalty": 3}},
        "`frequency_penalty` must be >= -2.0 and <= 2.0",
    ),
    ("greedy best_of", {"inputs": "Hi", "parameters": {"best_of": 2}}, "you must use sampling when `best_of` is > 1"),
    (
        "best_of over the limit",
        {"inputs": "Hi", "parameters": {"best_of": 3, "do_sample": True}},
        "`best_of` must be > 0 and <= 2. Given: 3",
    ),
    (
        "best_of with a seed",
        {"inputs": "Hi", "parameters": {"best_of": 2, "do_sample": True, "seed": 1}},
        "`seed` must not be set when `best_of` > 1",
    ),
    (
        "top_n_tokens over the limit",
        {"inputs": "Hi", "parameters": {"top_n_tokens": 6}},
        "`top_n_tokens` must be >= 0 and <= 5. Given: 6",
    ),
    (
        "grammar",
        {"inputs": "Hi", "parameters": {"grammar": {"type": "regex", "value": "a+"}}},
        "`grammar` is not supported by the embedded server: send the request without it",
    ),
    (
        "watermark",
        {"inputs": "Hi", "parameters": {"watermark": True}},
        "`watermark` is not supported by the embedded server: send watermark=false",
    ),
    (
        "lone surrogate",
        {"inputs": "Hi \ud800"},
        "Failed to deserialize the JSON body into the target type: inputs: Value error, text is not valid UTF-8 text: "
        "lone surrogate '\\ud800' at character 3; no tokenizer can encode it: send valid UTF-8 text",
    ),
    (
        "lone surrogate in a stop",
        {"inputs": "Hi", "parameters": {"stop": ["\udfff"]}},
        "Failed to deserialize the JSON body into the target type: parameters.stop.0: Value error, text is not valid UTF-8 text: "
        "lone surrogate '\\udfff' at character 0; no tokenizer can encode it: send valid UTF-8 text",
    ),
    (
        "truncate zero",
        {"inputs": "Hi", "parameters": {"truncate": 0}},
        "`truncate` must be strictly positive and less than 100. Given: 0",
    ),
    (
        "missing inputs",
        {"parameters": {}},
        "Failed to deserialize the JSON body into the target type: inputs: Field required",
    ),
    (
        "inputs not text",
        {"inputs": 5},
        "Failed to deserialize the JSON body into the target type: inputs: Input should be a valid string",
    ),
    (
        "max_new_tokens not a number",
        {"inputs": "Hi", "parameters": {"max_new_tokens": "many"}},
        "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens: Input should be a valid integer, unable to parse string as an integer",
    ),
    (
        "body not an object",
        [1, 2],
        "Failed to deserialize the JSON body into the target type: body: Input should be a valid dictionary or object to extract fields from",
    ),
]


@pytest.mark.parametrize(("body", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("route", ["/generate", "/generate_stream", "/"])
def test_invalid_input_is_a_tgi_validation_error(client: TestClient, route: str, body: Any, message: str) -> None:
    # ASCII JSON, as most clients send it: a lone surrogate travels as its escape, "\ud800".
    r = client.post(route, content=json.dumps(body), headers={"content-type": "application/json"})
    if route == "/generate_stream" and isinstance(body, dict) and body.get("parameters", {}).get("best_of", 1) > 1:
        message = "`best_of` != 1 is not supported when streaming tokens"
    assert r.status_code == 422
    assert r.json() == {"error": message, "error_type": "validation"}


def test_malformed_json_is_a_validation_error(client: TestClient) -> None:
    r = client.post("/generate", content=b'{"inputs": "Hi",', headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json() == {
        "error": "Failed to parse the request body as JSON: Expecting property name enclosed in double quotes at position 16",
        "error_type": "validation",
    }


def test_decoder_input_details_cannot_stream(client: TestClient) -> None:
    r = client.post("/generate_stream", json={"inputs": "Hi", "parameters": {"decoder_input_details": True}})
    assert r.status_code == 422
    assert r.json()["error"] == "`decoder_input_details` == true is not supported when streaming tokens"


def test_server_keeps_serving_after_bad_input(client: TestClient) -> None:
    for body, _ in [c[1:] for c in CASES]:
        client.post("/generate", content=json.dumps(body), headers={"content-type": "application/json"})
    r = client.post("/generate", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}})
    assert r.status_code == 200
    assert isinstance(r.json()["generated_text"], str)


def test_unknown_route_and_method_are_tgi_shaped(client: TestClient) -> None:
    assert client.get("/nope").json() == {"error": "Not Found", "error_type": "not_found"}
    r = client.get("/generate")
    assert r.status_code == 405
    assert r.json() == {"error": "Method Not Allowed", "error_type": "method_not_allowed"}


def test_api_key_is_required_on_generation_routes(tiny: TinyLoaded) -> None:
    with make_client(tiny, api_key="s3cret") as c:
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 1}}
        missing = c.post("/generate", json=body)
        assert missing.status_code == 401
        assert missing.json() == {"error": "missing or invalid API key: send `Authorization: Bearer <key>`"}
        assert missing.headers["www-authenticate"] == "Bearer"
        assert c.post("/generate", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/generate", json=body, headers={"Authorization": "Basic s3cret"}).status_code == 401
        assert c.post("/generate", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 1}).status_code == 401
        assert c.get("/health").status_code == 200
        assert c.get("/info").status_code == 200


def test_api_key_from_the_environment(tiny: TinyLoaded, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffpo_integrations.server import ServerConfig

    monkeypatch.setenv("DIFFPO_API_KEY", "from-env")
    key = ServerConfig().api_key
    assert key is not None
    assert key.get_secret_value() == "from-env"


def test_full_queue_answers_429_with_retry_after(tiny: TinyLoaded) -> None:
    gate = Gate()
    with make_client(tiny, decode_fn=gate, max_concurrent_requests=1, max_waiting=0, retry_after_s=3) as c:
        first: dict[str, Any] = {}
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
        worker = threading.Thread(target=lambda: first.update(r=c.post("/generate", json=body)))
        worker.start()
        assert gate.entered.wait(timeout=30)
        r = c.post("/generate", json=body)
        assert r.status_code == 429
        assert r.headers["retry-after"] == "3"
        assert r.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
        stream = c.post("/generate_stream", json=body)
        assert stream.status_code == 429
        gate.release.set()
        worker.join(timeout=30)
        assert first["r"].status_code == 200
        assert c.post("/generate", json=body).status_code == 200


def test_model_failure_is_a_generation_error_and_the_server_recovers(tiny: TinyLoaded) -> None:
    calls = {"n": 0}

    def flaky(model: Any, input_ids: Any, draft_ids: Any = None, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            msg = "CUDA out of memory (simulated)"
            raise RuntimeError(msg)
        from server_fakes import greedy_reference

        return greedy_reference(model, input_ids, draft_ids, **kw)

    with make_client(tiny, decode_fn=flaky) as c:
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 2}}
        r = c.post("/generate", json=body)
        assert r.status_code == 424
        assert r.json() == {
            "error": "Request failed during generation: RuntimeError: CUDA out of memory (simulated)",
            "error_type": "generation",
        }
        assert c.post("/generate", json=body).status_code == 200


def test_model_failure_mid_stream_is_an_error_event(tiny: TinyLoaded) -> None:
    from server_fakes import greedy_reference, sse_payloads

    def breaks_after_two(model: Any, input_ids: Any, draft_ids: Any = None, **kw: Any) -> Any:
        on_token = kw.pop("on_token")
        seen: list[int] = []

        def counting(token: int) -> None:
            if len(seen) == 2:
                msg = "device lost"
                raise RuntimeError(msg)
            seen.append(token)
            on_token(token)

        return greedy_reference(model, input_ids, draft_ids, on_token=counting, **kw)

    with make_client(tiny, decode_fn=breaks_after_two) as c:
        r = c.post("/generate_stream", json={"inputs": "Hi", "parameters": {"max_new_tokens": 5}})
        events = sse_payloads(r.iter_lines())
    assert len(events) == 3
    assert events[-1] == {
        "error": "Request failed during generation: RuntimeError: device lost",
        "error_type": "generation",
    }


def test_errors_leave_a_kept_alive_connection_open(tiny: TinyLoaded) -> None:
    import http.client

    from diffpo_integrations.server import ServerConfig, create_app
    from diffpo_integrations.server.serve import serve_in_thread

    app = create_app(tiny, ServerConfig(api_key=None))
    with serve_in_thread(app) as base_url:
        state = app.state.diffpo

        def broken_spans(text: str) -> Any:
            raise RuntimeError("tokenizer crashed")

        state.runtime.spans = broken_spans
        host, port = base_url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"content-type": "application/json"}
        answers = []
        for path, body in [
            ("/tokenize", '{"inputs": "Hi"}'),
            ("/generate", '{"inputs": "\\ud800"}'),
            ("/v1/completions", '{"prompt": "\\ud800"}'),
            ("/nope", "{}"),
            ("/generate", '{"inputs": "Hi", "parameters": {"max_new_tokens": 1}}'),
        ]:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            answers.append((response.status, json.loads(response.read())))
            sock = conn.sock
            assert sock is not None
            assert response.getheader("connection") != "close"
        conn.close()
    assert answers[0] == (500, {"error": "internal server error: RuntimeError", "error_type": "internal"})
    assert [status for status, _ in answers] == [500, 422, 422, 404, 200]
    assert answers[2][1]["error"]["param"] == "prompt"


def test_an_unknown_template_fails_the_start_listing_the_built_ins(tiny: TinyLoaded) -> None:
    from diffpo_integrations.core import ConfigurationError

    client = make_client(tiny, template="gemma2")
    with pytest.raises(ConfigurationError, match=r"unknown template 'gemma2' \(did you mean 'gemma'\?\): use one of"):
        client.__enter__()
