"""``POST /v1/responses`` in process: the scripted loopback upstream and the mock aligner (mock_tgi).

Every event and answer is also parsed with the ``openai`` SDK's own types, which the SDKs built
on it use: a shape they would refuse fails here.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2
import openai
import pytest
from gateway_fakes import (
    DRAFT,
    FIELD_PROMPT,
    MESSAGES,
    QUESTION,
    TOOL_CALL,
    USAGE,
    Reply,
    ScriptedUpstream,
    completion,
    expected,
    gateway,
    stream_events,
)
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from diffpo_integrations.gateway.responses_input import chat_request

RESPONSES = "/v1/responses"
DEAD = r"^the aligner (pool\()?http://mock-tgi\)? failed: AlignerConnectionError: "
"""The message of a dead aligner (the pool names itself once its member is marked down)."""
REQUEST = {"model": "up", "instructions": "Be brief.", "input": QUESTION}
EVENTS = TypeAdapter(ResponseStreamEvent)
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_DONE = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
QUESTION_ITEM = {"role": "user", "content": QUESTION}
WEATHER_TOOL = {"type": "function", "name": "lookup", "description": "Look it up.", "parameters": {"type": "object"}}


def _align_bodies(aligner_server: Any) -> list[dict[str, Any]]:
    return [json.loads(r.content) for r in aligner_server.requests if r.url.path == "/diffpo/align"]


def _dead(aligner_server: Any) -> None:
    def refuse(request: httpx2.Request) -> httpx2.Response:
        raise httpx2.ConnectError("connection refused", request=request)

    aligner_server.handle = refuse


def _events(text: str) -> list[dict[str, Any]]:
    """The decoded events of a Responses stream, checking each ``event:`` line names its ``type``."""
    out = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        event_line, data_line = frame.split("\n")
        event = json.loads(data_line.removeprefix("data: "))
        assert event_line == f"event: {event['type']}"
        EVENTS.validate_python(event)
        out.append(event)
    return out


# -- translation of the request --------------------------------------------------------------


def test_instructions_and_a_string_input_become_system_and_user_messages() -> None:
    assert chat_request(REQUEST) == {"messages": MESSAGES, "model": "up"}


def test_each_sampling_and_tool_field_maps_to_its_chat_equivalent() -> None:
    body = {
        **REQUEST,
        "max_output_tokens": 40,
        "temperature": 0.5,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "user": "u1",
        "tools": [{**WEATHER_TOOL, "strict": True}],
        "tool_choice": {"type": "function", "name": "lookup"},
        "text": {"format": {"type": "json_schema", "name": "Answer", "schema": {"type": "object"}, "strict": True}},
        "stream": True,
        "metadata": {"k": "v"},
        "store": False,
    }
    assert chat_request(body) == {
        "messages": MESSAGES,
        "model": "up",
        "temperature": 0.5,
        "top_p": 0.9,
        "parallel_tool_calls": False,
        "user": "u1",
        "max_tokens": 40,
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "lookup",
                    "description": "Look it up.",
                    "parameters": {"type": "object"},
                    "strict": True,
                },
            }
        ],
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "Answer", "schema": {"type": "object"}, "strict": True},
        },
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("text", "response_format"),
    [({"format": {"type": "json_object"}}, {"type": "json_object"}), ({"format": {"type": "text"}}, None)],
)
def test_text_format_json_object_and_text(text: dict[str, Any], response_format: Any) -> None:
    assert chat_request({**REQUEST, "text": text}).get("response_format") == response_format


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_strings_are_kept(choice: str) -> None:
    assert chat_request({**REQUEST, "tool_choice": choice})["tool_choice"] == choice


def test_items_become_messages_with_tool_calls_and_tool_results() -> None:
    items = [
        {"role": "developer", "content": "Use the tool."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": QUESTION}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": '{"q": "7"}'},
        {"type": "function_call", "call_id": "call_2", "name": "lookup", "arguments": '{"q": "11"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "prime"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "prime too"}]},
        {
            "type": "message",
            "role": "assistant",
            "id": "msg_1",
            "status": "completed",
            "content": [{"type": "output_text", "text": "Both are prime.", "annotations": []}],
        },
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA=="}]},
    ]
    call = {"type": "function", "function": {"name": "lookup", "arguments": '{"q": "7"}'}, "id": "call_1"}
    call2 = {"type": "function", "function": {"name": "lookup", "arguments": '{"q": "11"}'}, "id": "call_2"}
    assert chat_request({"input": items})["messages"] == [
        {"role": "developer", "content": "Use the tool."},
        {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": None, "tool_calls": [call, call2]},
        {"role": "tool", "tool_call_id": "call_1", "content": "prime"},
        {"role": "tool", "tool_call_id": "call_2", "content": "prime too"},
        {"role": "assistant", "content": [{"type": "text", "text": "Both are prime."}]},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
    ]


@pytest.mark.parametrize(
    ("extra", "param", "message"),
    [
        (
            {"previous_response_id": "resp_1"},
            "previous_response_id",
            "'previous_response_id' is not supported by the gateway: the gateway stores no responses: "
            "send the whole conversation in 'input' instead",
        ),
        (
            {"background": True},
            "background",
            "'background' is not supported by the gateway: the gateway answers while the request is open: "
            "leave out 'background' (or set it to false)",
        ),
        (
            {"conversation": "conv_1"},
            "conversation",
            "'conversation' is not supported by the gateway: the gateway stores no conversations: "
            "send the whole conversation in 'input' instead",
        ),
        (
            {"tools": [{"type": "web_search"}]},
            "tools[0].type",
            "tools[0] is a 'web_search' tool: the gateway runs no built-in tools, only function tools "
            "(type 'function') that the client runs",
        ),
        (
            {"input": [{"type": "item_reference", "id": "msg_1"}]},
            "input[0].type",
            "input[0] is a 'item_reference' item, which the gateway cannot pass to a chat upstream; "
            "it reads message, function_call and function_call_output items",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
            "input[0].content[0] is a 'input_file' part; the gateway passes text parts and input_image parts "
            "with an image_url",
        ),
        (
            {"tool_choice": {"type": "web_search"}},
            "tool_choice",
            "'tool_choice' must be 'auto', 'none', 'required' or {\"type\": \"function\", \"name\": ...}",
        ),
        (
            {"text": {"format": {"type": "json_schema"}}},
            "text.format",
            '\'text.format\' must be {"type": "text"}, {"type": "json_object"} or a named json_schema',
        ),
        ({"input": []}, "input", "'input' must be a string or a non-empty list of items"),
    ],
)
def test_what_the_gateway_cannot_honour_is_a_400_naming_the_parameter(
    extra: dict[str, Any], param: str, message: str
) -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream) as (client, _):
        response = client.post(RESPONSES, json={**REQUEST, **extra})
    assert response.status_code == 400
    assert response.json() == {
        "error": {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    }
    assert upstream.requests == []


def test_a_body_without_input_is_a_400() -> None:
    with gateway(ScriptedUpstream([completion([DRAFT])])) as (client, _):
        response = client.post(RESPONSES, json={"model": "up", "messages": MESSAGES})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input"


# -- whole answers ---------------------------------------------------------------------------


def test_whole_answer_is_the_aligned_draft_as_a_response_object() -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream) as (client, aligner_server):
        response = client.post(RESPONSES, json={**REQUEST, "max_output_tokens": 40, "metadata": {"k": "v"}})
        want = expected(max_new_tokens=40)
    assert response.status_code == 200
    assert response.headers["x-diffpo-aligned"] == "true"
    body = response.json()
    Response.model_validate(body)
    assert want.text != DRAFT
    [item] = body["output"]
    assert item["id"].startswith("msg_")
    assert item == {
        "id": item["id"],
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": want.text, "annotations": [], "logprobs": []}],
    }
    assert body["id"].startswith("resp_")
    assert (body["object"], body["status"], body["incomplete_details"], body["model"]) == (
        "response",
        "completed",
        None,
        "up",
    )
    assert (body["instructions"], body["max_output_tokens"], body["metadata"]) == ("Be brief.", 40, {"k": "v"})
    assert body["usage"] == {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 13,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 24,
    }
    assert (body["diffpo"]["draft"], body["diffpo"]["aligned"], body["diffpo"]["error"]) == (DRAFT, True, None)
    assert upstream.bodies() == [{"model": "up", "messages": MESSAGES, "max_tokens": 40}]
    assert [b["max_new_tokens"] for b in _align_bodies(aligner_server)] == [40, 40]


def test_an_answer_cut_by_the_budget_is_incomplete() -> None:
    with gateway(ScriptedUpstream([completion([DRAFT])])) as (client, _):
        body = client.post(RESPONSES, json={**REQUEST, "max_output_tokens": 2}).json()
        want = expected(max_new_tokens=2)
    assert want.finish_reason == "length"
    assert (body["status"], body["incomplete_details"]) == ("incomplete", {"reason": "max_output_tokens"})
    assert body["output"][0]["status"] == "incomplete"
    assert body["output"][0]["content"][0]["text"] == want.text


def test_function_calls_pass_through_unaligned() -> None:
    upstream = ScriptedUpstream([completion([""], tool_calls=[TOOL_CALL])])
    with gateway(upstream) as (client, aligner_server):
        response = client.post(RESPONSES, json={**REQUEST, "tools": [WEATHER_TOOL]})
    body = response.json()
    Response.model_validate(body)
    [item] = body["output"]
    assert item == {
        "id": item["id"],
        "type": "function_call",
        "call_id": "call_1",
        "name": "lookup",
        "arguments": '{"q": "7"}',
        "status": "completed",
    }
    assert body["diffpo"] == {"aligned": False, "passthrough": "tool_calls"}
    assert response.headers["x-diffpo-aligned"] == "false"
    assert _align_bodies(aligner_server) == []


@pytest.mark.parametrize(
    ("extra", "headers", "reason"),
    [
        ({"text": {"format": {"type": "json_object"}}}, {}, "response_format"),
        ({"instructions": FIELD_PROMPT}, {}, "field_markers"),
        (
            {
                "input": [
                    {"role": "developer", "content": [{"type": "input_text", "text": FIELD_PROMPT}]},
                    QUESTION_ITEM,
                ]
            },
            {},
            "field_markers",
        ),
        ({"diffpo": {"align": False}}, {}, "opt_out"),
        ({}, {"x-diffpo-align": "off"}, "opt_out"),
    ],
)
def test_structured_output_and_opt_out_pass_the_draft_through(
    extra: dict[str, Any], headers: dict[str, str], reason: str
) -> None:
    upstream = ScriptedUpstream([completion([DRAFT])])
    with gateway(upstream) as (client, aligner_server):
        response = client.post(RESPONSES, json={**REQUEST, **extra}, headers=headers)
    body = response.json()
    assert body["output"][0]["content"][0]["text"] == DRAFT
    assert body["diffpo"] == {"aligned": False, "passthrough": reason}
    assert response.headers["x-diffpo-aligned"] == "false"
    assert _align_bodies(aligner_server) == []
    assert "diffpo" not in upstream.bodies()[0]


def test_upstream_errors_keep_their_status_and_shape() -> None:
    upstream = ScriptedUpstream([Reply(429, {"error": {"message": "slow down", "type": "rate_limit"}})])
    with gateway(upstream) as (client, _):
        whole = client.post(RESPONSES, json=REQUEST)
        streamed = client.post(RESPONSES, json={**REQUEST, "stream": True})
    for response in (whole, streamed):
        assert response.status_code == 429
        assert response.json() == {"error": {"message": "slow down", "type": "rate_limit"}}


# -- streams ---------------------------------------------------------------------------------


def test_stream_events_in_order_with_sequence_numbers_and_deltas_adding_up() -> None:
    upstream = ScriptedUpstream([stream_events(DRAFT), completion([DRAFT])])
    with gateway(upstream) as (client, _):
        streamed = client.post(RESPONSES, json={**REQUEST, "stream": True})
        whole = client.post(RESPONSES, json=REQUEST).json()
        want = expected()
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = _events(streamed.text)
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 1
    assert kinds == [*TEXT_EVENTS, *["response.output_text.delta"] * deltas, *TEXT_DONE, "response.completed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == want.text == whole["output"][0]["content"][0]["text"]
    created, in_progress = events[0]["response"], events[1]["response"]
    assert (created["status"], created["output"], created["usage"]) == ("in_progress", [], None)
    assert in_progress == created
    item_id = events[2]["item"]["id"]
    assert events[2] == {
        "type": "response.output_item.added",
        "sequence_number": 2,
        "output_index": 0,
        "item": {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress", "content": []},
    }
    part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    assert events[3] == {
        "type": "response.content_part.added",
        "sequence_number": 3,
        "item_id": item_id,
        "output_index": 0,
        "content_index": 0,
        "part": part,
    }
    assert {(e["item_id"], e["output_index"], e["content_index"]) for e in events[4 : 4 + deltas]} == {(item_id, 0, 0)}
    done_text, done_part, done_item, completed = events[-4:]
    assert (done_text["text"], done_part["part"]["text"]) == (want.text, want.text)
    assert done_item["item"]["content"][0]["text"] == want.text
    assert done_item["item"]["status"] == "completed"
    final = completed["response"]
    Response.model_validate(final)
    assert (final["id"], final["status"]) == (created["id"], "completed")
    assert final["output"] == [done_item["item"]]
    assert final["usage"]["output_tokens"] == USAGE["completion_tokens"]
    assert final["diffpo"]["draft"] == DRAFT
    assert final["diffpo"]["aligned"] is True
    # The stream asked the upstream for usage in its last chunk.
    assert upstream.bodies()[0]["stream_options"] == {"include_usage": True}


def test_a_streamed_answer_cut_by_the_budget_ends_with_response_incomplete() -> None:
    with gateway(ScriptedUpstream([stream_events(DRAFT)])) as (client, _):
        events = _events(client.post(RESPONSES, json={**REQUEST, "stream": True, "max_output_tokens": 2}).text)
    last = events[-1]
    assert last["type"] == "response.incomplete"
    assert (last["response"]["status"], last["response"]["incomplete_details"]) == (
        "incomplete",
        {"reason": "max_output_tokens"},
    )


def test_streamed_text_then_function_call_are_two_items_forwarded_unaligned() -> None:
    upstream = ScriptedUpstream([stream_events("Let me look that up.", tool_calls=[TOOL_CALL])])
    with gateway(upstream) as (client, aligner_server):
        events = _events(client.post(RESPONSES, json={**REQUEST, "stream": True, "tools": [WEATHER_TOOL]}).text)
    kinds = [e["type"] for e in events]
    assert kinds == [
        *TEXT_EVENTS,
        *["response.output_text.delta"] * 5,
        *TEXT_DONE,
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Let me look that up."
    call = events[-2]["item"]
    assert (call["type"], call["call_id"], call["name"], call["arguments"]) == (
        "function_call",
        "call_1",
        "lookup",
        '{"q": "7"}',
    )
    assert events[-2]["output_index"] == 1
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["message", "function_call"]
    assert final["diffpo"] == {"aligned": False, "passthrough": "tool_calls"}
    assert _align_bodies(aligner_server) == []


def test_opted_out_stream_is_the_draft_flagged() -> None:
    with gateway(ScriptedUpstream([stream_events(DRAFT)])) as (client, _):
        streamed = client.post(RESPONSES, json={**REQUEST, "stream": True, "diffpo": {"align": False}})
    events = _events(streamed.text)
    assert streamed.headers["x-diffpo-aligned"] == "false"
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == DRAFT
    assert events[-1]["response"]["diffpo"] == {"aligned": False, "passthrough": "opt_out"}


def test_a_failed_alignment_under_fail_closed_ends_the_stream_with_an_error_event() -> None:
    upstream = ScriptedUpstream([completion([DRAFT]), stream_events(DRAFT)])
    with gateway(upstream, fail_policy="closed", aligner_timeout=5) as (client, aligner_server):
        _dead(aligner_server)
        whole = client.post(RESPONSES, json=REQUEST)
        events = _events(client.post(RESPONSES, json={**REQUEST, "stream": True}).text)
    assert whole.status_code == 502
    assert re.match(DEAD, whole.json()["error"]["message"])
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "error"]
    error = events[-1]
    assert (error["code"], error["param"], error["error"]["type"]) == ("aligner_error", None, "aligner_error")
    assert re.match(DEAD, error["message"])


def test_the_openai_sdk_raises_the_streamed_error_with_its_message() -> None:
    upstream = ScriptedUpstream([stream_events(DRAFT)])
    with gateway(upstream, fail_policy="closed", aligner_timeout=5) as (client, aligner_server):
        _dead(aligner_server)
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client)  # type: ignore[arg-type]
        with pytest.raises(openai.APIError, match=DEAD):
            for _ in sdk.responses.create(model="up", input=QUESTION, stream=True):
                pass


# -- the openai SDK reads the answers --------------------------------------------------------


def test_the_openai_sdk_reads_whole_and_streamed_answers() -> None:
    upstream = ScriptedUpstream([completion([DRAFT]), stream_events(DRAFT)])
    with gateway(upstream) as (client, _):
        sdk = openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=client)  # type: ignore[arg-type]
        whole = sdk.responses.create(model="up", instructions="Be brief.", input=QUESTION)
        with sdk.responses.stream(model="up", instructions="Be brief.", input=QUESTION) as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            final = stream.get_final_response()
        want = expected()
    assert whole.output_text == want.text == "".join(deltas) == final.output_text


# -- an upstream with its own Responses API ----------------------------------------------------


def _upstream_response(text: str, *extra_items: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "resp_up",
        "object": "response",
        "created_at": 1,
        "model": "up",
        "status": "completed",
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {
                "id": "msg_up",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            },
            *extra_items,
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": 11,
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": 13,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 24,
        },
    }


def test_upstream_api_responses_forwards_and_aligns_the_message() -> None:
    upstream = ScriptedUpstream([_upstream_response(DRAFT)])
    with gateway(upstream, upstream_api="responses") as (client, _):
        response = client.post(RESPONSES, json={**REQUEST, "max_output_tokens": 40, "stream": True})
        want = expected(max_new_tokens=40)
    seen = upstream.requests[0]
    assert (seen.path, seen.body) == ("/v1/responses", {**REQUEST, "max_output_tokens": 40})
    events = _events(response.text)
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.output_item.done",
        *TEXT_EVENTS[2:],
        "response.output_text.delta",
        *TEXT_DONE,
        "response.completed",
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert final["output"][1]["content"][0]["text"] == want.text == events[6]["delta"]
    assert final["diffpo"]["draft"] == DRAFT
    assert final["diffpo"]["aligned"] is True
    assert response.headers["x-diffpo-aligned"] == "true"


def test_upstream_api_responses_passes_function_calls_through() -> None:
    call = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "lookup", "arguments": "{}"}
    upstream = ScriptedUpstream([_upstream_response("Looking.", call)])
    with gateway(upstream, upstream_api="responses") as (client, aligner_server):
        response = client.post(RESPONSES, json=REQUEST)
    body = response.json()
    assert body["output"] == _upstream_response("Looking.", call)["output"]
    assert body["diffpo"] == {"aligned": False, "passthrough": "tool_calls"}
    assert response.headers["x-diffpo-aligned"] == "false"
    assert _align_bodies(aligner_server) == []


def test_upstream_api_responses_passes_a_field_marker_prompt_through() -> None:
    upstream = ScriptedUpstream([_upstream_response(DRAFT)])
    with gateway(upstream, upstream_api="responses") as (client, aligner_server):
        response = client.post(RESPONSES, json={**REQUEST, "instructions": FIELD_PROMPT})
    body = response.json()
    assert body["output"] == _upstream_response(DRAFT)["output"]
    assert body["diffpo"] == {"aligned": False, "passthrough": "field_markers"}
    assert response.headers["x-diffpo-aligned"] == "false"
    assert _align_bodies(aligner_server) == []
