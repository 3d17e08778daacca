"""The gateway in process: a scripted loopback upstream and the mock aligner (mock_tgi)."""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from fastapi.testclient import TestClient
from gateway_fakes import (
    DRAFT,
    FIELD_MESSAGES,
    MESSAGES,
    TOOL_CALL,
    USAGE,
    Reply,
    ScriptedUpstream,
    completion,
    expected,
    gateway,
    serve_upstream,
    sse_events,
    stream_events,
)

from diffpo_integrations.backends.testing import mock_tgi
from diffpo_integrations.gateway import GatewayConfig, create_gateway_app

CHAT = "/v1/chat/completions"


def _align_bodies(aligner_server: Any) -> list[dict[str, Any]]:
    return [json.loads(r.content) for r in aligner_server.requests if r.url.path == "/diffpo/align"]


def test_answer_is_the_aligned_draft_with_upstream_usage_and_metadata() -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream) as (client, aligner_server):
        response = client.post(CHAT, json={"model": "up", "messages": MESSAGES, "max_tokens": 40})
        want = expected(max_new_tokens=40)
    assert response.status_code == 200
    body = response.json()
    assert want.text != DRAFT
    assert body["choices"][0]["message"] == {"role": "assistant", "content": want.text}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == USAGE
    assert response.headers["x-diffpo-aligned"] == "true"
    meta = body["diffpo"]
    assert (meta["draft"], meta["aligned"], meta["error"]) == (DRAFT, True, None)
    # Official mode counts the template's newline as the first of the 6 kept tokens.
    assert (meta["kept_prefix_tokens"], meta["kept_prefix"]) == (want.kept_prefix_tokens, want.kept_prefix)
    assert want.details["kept_tokens"] == 6
    assert body["choices"][0]["diffpo"] == meta
    # The request went upstream as sent; the aligner's budget is the request's max_tokens.
    assert upstream.bodies() == [{"model": "up", "messages": MESSAGES, "max_tokens": 40}]
    assert [b["max_new_tokens"] for b in _align_bodies(aligner_server)] == [40, 40]


def test_max_completion_tokens_wins_and_the_default_applies_without_either() -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream, max_new_tokens=77) as (client, aligner_server):
        client.post(CHAT, json={"messages": MESSAGES, "max_tokens": 40, "max_completion_tokens": 12})
        client.post(CHAT, json={"messages": MESSAGES})
    assert [b["max_new_tokens"] for b in _align_bodies(aligner_server)] == [12, 77]


def test_each_choice_is_aligned_when_n_is_two() -> None:
    other = "Yes. Seven has no divisors other than one and itself."
    upstream = ScriptedUpstream([completion([DRAFT, other])])
    with gateway(upstream) as (client, _):
        body = client.post(CHAT, json={"messages": MESSAGES, "n": 2}).json()
        want = [expected(DRAFT).text, expected(other).text]
    assert [c["message"]["content"] for c in body["choices"]] == want
    assert [c["diffpo"]["draft"] for c in body["choices"]] == [DRAFT, other]


def test_per_request_keep_prefix_tokens() -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream) as (client, _):
        body = client.post(CHAT, json={"messages": MESSAGES, "diffpo": {"keep_prefix_tokens": 3}}).json()
        want = expected(keep_prefix_tokens=3)
    assert body["choices"][0]["message"]["content"] == want.text
    assert body["diffpo"]["details"]["kept_tokens"] == 3
    assert "diffpo" not in upstream.bodies()[0]


@pytest.mark.parametrize(
    ("request_extra", "headers", "reason"),
    [
        ({"diffpo": {"align": False}}, {}, "opt_out"),
        ({}, {"x-diffpo-align": "off"}, "opt_out"),
        ({"response_format": {"type": "json_object"}}, {}, "response_format"),
        ({"messages": FIELD_MESSAGES}, {}, "field_markers"),
    ],
)
def test_pass_through_returns_the_upstream_answer(
    request_extra: dict[str, Any], headers: dict[str, str], reason: str
) -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream) as (client, aligner_server):
        response = client.post(CHAT, json={"messages": MESSAGES, **request_extra}, headers=headers)
    body = response.json()
    assert body["choices"][0]["message"]["content"] == DRAFT
    assert body["diffpo"] == {"aligned": False, "passthrough": reason}
    assert response.headers["x-diffpo-aligned"] == "false"
    assert _align_bodies(aligner_server) == []
    assert "diffpo" not in upstream.bodies()[0]


def test_tool_calls_pass_through_unaligned() -> None:
    upstream = ScriptedUpstream([completion([""], tool_calls=[TOOL_CALL])])
    with gateway(upstream) as (client, aligner_server):
        response = client.post(CHAT, json={"messages": MESSAGES, "tools": [{"type": "function"}]})
    choice = response.json()["choices"][0]
    assert choice["message"]["tool_calls"] == [TOOL_CALL]
    assert choice["diffpo"] == {"aligned": False, "passthrough": "tool_calls"}
    assert response.headers["x-diffpo-aligned"] == "false"
    assert _align_bodies(aligner_server) == []


def test_bad_diffpo_option_is_a_400_naming_it() -> None:
    with gateway(ScriptedUpstream([completion([DRAFT])])) as (client, _):
        response = client.post(CHAT, json={"messages": MESSAGES, "diffpo": {"keep_prefix": 3}})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (
        error["message"]
        == "unknown 'diffpo' option(s) ['keep_prefix']; the options are 'align' and 'keep_prefix_tokens'"
    )
    assert (error["type"], error["param"]) == ("invalid_request_error", "diffpo")


# -- streaming -------------------------------------------------------------------------------


def test_stream_equals_the_whole_answer_and_ends_with_metadata_and_usage() -> None:
    upstream = ScriptedUpstream([stream_events(DRAFT), completion([DRAFT])])
    with gateway(upstream) as (client, _):
        streamed = client.post(
            CHAT, json={"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
        )
        whole = client.post(CHAT, json={"messages": MESSAGES}).json()
        want = expected()
    events = sse_events(streamed.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"] == want.text
    # TGI's Messages API sends the role in every delta, and its clients rely on it.
    assert all(
        c["choices"][0]["delta"].get("role") == "assistant" for c in chunks if c["choices"] and c["choices"][0]["delta"]
    )
    last = next(c for c in reversed(chunks) if c["choices"])
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["diffpo"] == {**whole["diffpo"], "latency_s": last["diffpo"]["latency_s"]}
    assert chunks[-1] == {
        "id": "chatcmpl-up",
        "created": 1,
        "model": "up",
        "object": "chat.completion.chunk",
        "choices": [],
        "usage": USAGE,
    }


def test_early_stream_policy_aligns_the_prefix_and_stops_the_upstream() -> None:
    events = stream_events(DRAFT)
    upstream = ScriptedUpstream([events])
    with gateway(upstream, stream_policy="early", keep_prefix_tokens=2) as (client, _):
        streamed = client.post(CHAT, json={"messages": MESSAGES, "stream": True})
        want = expected("Seven is a prime", keep_prefix_tokens=2)
    chunks = [e for e in sse_events(streamed.text) if e != "[DONE]"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == want.text
    assert chunks[-1]["diffpo"]["draft"] == "Seven is a prime"
    # role + 4 words were read, then the upstream stream was closed.
    # role + 4 words were enough; the upstream saw the client leave before the end of its answer.
    assert upstream.closed
    assert upstream.written < len(events)


def test_streamed_tool_calls_are_forwarded_event_for_event() -> None:
    events = stream_events("Let me look that up.", tool_calls=[TOOL_CALL])
    upstream = ScriptedUpstream([events])
    with gateway(upstream) as (client, aligner_server):
        streamed = client.post(CHAT, json={"messages": MESSAGES, "stream": True})
    assert sse_events(streamed.text) == [*events, "[DONE]"]
    assert _align_bodies(aligner_server) == []


def test_opted_out_stream_is_forwarded_as_is() -> None:
    events = stream_events(DRAFT)
    with gateway(ScriptedUpstream([events])) as (client, _):
        streamed = client.post(CHAT, json={"messages": MESSAGES, "stream": True}, headers={"x-diffpo-align": "off"})
    assert sse_events(streamed.text) == [*events, "[DONE]"]
    assert streamed.headers["x-diffpo-aligned"] == "false"


def test_a_streamed_field_marker_prompt_is_forwarded_as_is() -> None:
    events = stream_events("[[ ## answer ## ]]\n7\n\n[[ ## completed ## ]]")
    with gateway(ScriptedUpstream([events])) as (client, aligner_server):
        streamed = client.post(CHAT, json={"messages": FIELD_MESSAGES, "stream": True})
    assert sse_events(streamed.text) == [*events, "[DONE]"]
    assert streamed.headers["x-diffpo-aligned"] == "false"
    assert _align_bodies(aligner_server) == []


# -- failures --------------------------------------------------------------------------------


def test_upstream_openai_error_is_forwarded_with_its_status() -> None:
    error = {
        "error": {"message": "model 'x' not found", "type": "invalid_request_error", "param": "model", "code": None}
    }
    with gateway(ScriptedUpstream([Reply(404, error)])) as (client, _):
        response = client.post(CHAT, json={"messages": MESSAGES, "model": "x"})
        streamed = client.post(CHAT, json={"messages": MESSAGES, "model": "x", "stream": True})
    assert (response.status_code, response.json()) == (404, error)
    assert (streamed.status_code, streamed.json()) == (404, error)


def test_upstream_tgi_error_is_wrapped_in_openai_shape() -> None:
    tgi = {"error": "Input validation error: too long", "error_type": "validation"}
    upstream = ScriptedUpstream([Reply(422, tgi)])
    with gateway(upstream) as (client, _):
        response = client.post(CHAT, json={"messages": MESSAGES})
    assert response.status_code == 422
    assert response.json()["error"] == {
        "message": f"the upstream {upstream.url} answered HTTP 422: Input validation error: too long",
        "type": "validation",
        "param": None,
        "code": "422",
    }


def test_unreachable_upstream_is_a_502_naming_it(dead_url: str) -> None:
    with gateway(ScriptedUpstream([completion([DRAFT])]), upstream=dead_url) as (client, _):
        for stream in (False, True):
            response = client.post(CHAT, json={"messages": MESSAGES, "stream": stream})
            assert response.status_code == 502
            error = response.json()["error"]
            assert error["type"] == "upstream_unreachable"
            assert error["message"].startswith(f"could not reach the upstream {dead_url}/v1: ")


def test_a_redirecting_upstream_is_a_502_that_names_where_it_points() -> None:
    moved = "https://api.example.com/v1/chat/completions"
    upstream = ScriptedUpstream([Reply(307, {"moved": True}, headers={"Location": moved})])
    with gateway(upstream) as (client, _):
        whole = client.post(CHAT, json={"messages": MESSAGES})
        streamed = client.post(CHAT, json={"messages": MESSAGES, "stream": True})
    for response in (whole, streamed):
        assert response.status_code == 502
        assert response.json()["error"] == {
            "message": f"the upstream {upstream.url} answered HTTP 307, a redirect to {moved}: "
            "give the gateway the final URL as its upstream",
            "type": "upstream_error",
            "param": None,
            "code": "307",
        }


def test_slow_upstream_is_a_504_naming_it() -> None:
    upstream = ScriptedUpstream([Reply(200, completion([DRAFT]), delay=2.0)])
    with gateway(upstream, upstream_timeout=0.3) as (client, _):
        response = client.post(CHAT, json={"messages": MESSAGES})
    assert response.status_code == 504
    assert (
        response.json()["error"]["message"]
        == f"the upstream {upstream.url} did not answer in time: no answer within 0.3 s"
    )


def _dead(aligner_server: Any) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    aligner_server.handle = refuse


def test_dead_aligner_under_fail_open_answers_the_draft_flagged() -> None:
    upstream = ScriptedUpstream([completion([DRAFT]), stream_events(DRAFT)])
    with gateway(upstream, fail_policy="open", aligner_timeout=5) as (client, aligner_server):
        _dead(aligner_server)
        whole = client.post(CHAT, json={"messages": MESSAGES})
        streamed = client.post(CHAT, json={"messages": MESSAGES, "stream": True})
        metrics = client.get("/metrics").text
    body = whole.json()
    assert body["choices"][0]["message"]["content"] == DRAFT
    assert body["diffpo"]["aligned"] is False
    assert body["diffpo"]["error"].startswith("AlignerConnectionError: could not reach the aligner at http://mock-tgi")
    assert whole.headers["x-diffpo-aligned"] == "false"
    chunks = [e for e in sse_events(streamed.text) if e != "[DONE]"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == DRAFT
    assert chunks[-1]["diffpo"]["aligned"] is False
    assert "diffpo_gateway_fallbacks_total 2" in metrics


def test_dead_aligner_under_fail_closed_is_a_502_naming_it() -> None:
    upstream = ScriptedUpstream([completion([DRAFT]), stream_events(DRAFT)])
    with gateway(upstream, fail_policy="closed", aligner_timeout=5) as (client, aligner_server):
        _dead(aligner_server)
        whole = client.post(CHAT, json={"messages": MESSAGES})
        streamed = client.post(CHAT, json={"messages": MESSAGES, "stream": True})
    assert whole.status_code == 502
    error = whole.json()["error"]
    assert error["type"] == "aligner_error"
    assert error["message"].startswith("the aligner http://mock-tgi failed: AlignerConnectionError: ")
    events = sse_events(streamed.text)
    assert events[-1]["error"]["type"] == "aligner_error"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == ""


# -- keys, models, health, metrics -----------------------------------------------------------


def test_client_key_is_required_and_the_upstream_key_is_sent() -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream, api_key="client-key", upstream_api_key="upstream-key") as (client, _):
        refused = client.post(CHAT, json={"messages": MESSAGES})
        wrong = client.post(CHAT, json={"messages": MESSAGES}, headers={"Authorization": "Bearer nope"})
        ok = client.post(CHAT, json={"messages": MESSAGES}, headers={"Authorization": "Bearer client-key"})
    assert (refused.status_code, wrong.status_code, ok.status_code) == (401, 401, 200)
    assert refused.json()["error"]["code"] == "invalid_api_key"
    sent = [r.headers.get("Authorization") for r in upstream.requests]
    assert sent == ["Bearer upstream-key"]


def test_forward_authorization_sends_the_clients_header_upstream() -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream, forward_authorization=True, upstream_api_key="unused") as (client, _):
        client.post(CHAT, json={"messages": MESSAGES}, headers={"Authorization": "Bearer user-key"})
    assert upstream.requests[0].headers["Authorization"] == "Bearer user-key"


def test_models_are_proxied_and_health_reports_both_legs() -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream) as (client, _):
        models = client.get("/v1/models").json()
        health = client.get("/health")
    assert models == {"object": "list", "data": [{"id": "up", "object": "model"}]}
    assert health.status_code == 200
    body = health.json()
    assert body["upstream"] == {"url": upstream.url, "ok": True, "status": 200}
    assert body["aligner"] == {"endpoint": "pool(http://mock-tgi)", "ok": True, "members": {"http://mock-tgi": True}}


def test_metrics_count_requests_alignments_and_pass_throughs() -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream) as (client, _):
        client.post(CHAT, json={"messages": MESSAGES})
        client.post(CHAT, json={"messages": MESSAGES}, headers={"x-diffpo-align": "off"})
        client.post(CHAT, content=b"not json")
        text = client.get("/metrics").text
    assert 'diffpo_gateway_requests_total{status="200"} 2' in text
    assert 'diffpo_gateway_requests_total{status="400"} 1' in text
    assert "diffpo_gateway_aligned_total 1" in text
    assert 'diffpo_gateway_passthrough_total{reason="opt_out"} 1' in text
    assert "diffpo_gateway_upstream_seconds_count 2" in text
    assert "diffpo_gateway_aligner_seconds_count 1" in text


# -- the chat route's own path ahead of FastAPI ------------------------------------------------


def test_other_methods_on_the_chat_route_are_405_and_unknown_routes_404() -> None:
    with gateway(ScriptedUpstream([completion([DRAFT])])) as (client, _):
        wrong_method = client.get(CHAT)
        unknown = client.post("/v1/completions", json={"prompt": "x"})
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")
    assert unknown.status_code == 404


def test_an_unexpected_failure_is_a_500_in_openai_shape_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(*args: Any) -> Any:
        raise RuntimeError("a bug in the gateway")

    with gateway(ScriptedUpstream([completion([DRAFT])])) as (client, _):
        client.app.state.gateway.upstream.chat = broken  # type: ignore[attr-defined]
        response = client.post(CHAT, json={"messages": MESSAGES})
        metrics = client.get("/metrics").text
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "the gateway failed unexpectedly; its log has the details",
            "type": "internal_error",
            "param": None,
            "code": None,
        }
    }
    assert 'diffpo_gateway_requests_total{status="500"} 1' in metrics
    assert "RuntimeError: a bug in the gateway" in caplog.text


def test_middleware_added_to_the_app_sees_the_chat_route_too() -> None:
    seen: list[str] = []

    class Record:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                seen.append(f"{scope['method']} {scope['path']}")
            await self.app(scope, receive, send)

    upstream = ScriptedUpstream([completion([DRAFT])])
    with mock_tgi(), serve_upstream(upstream):
        app = create_gateway_app(GatewayConfig(upstream=upstream.url, aligner_urls=["http://mock-tgi"]))
        app.add_middleware(Record)
        with TestClient(app) as client:
            response = client.post(CHAT, json={"messages": MESSAGES}, headers={"x-diffpo-align": "off"})
            client.get("/v1/models")
    assert response.json()["choices"][0]["message"]["content"] == DRAFT
    assert seen == ["POST /v1/chat/completions", "GET /v1/models"]
