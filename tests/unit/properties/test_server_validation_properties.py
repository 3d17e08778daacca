"""Property tests of the server's request validation: any JSON body gets 200 or a TGI-shaped 4xx, never a 500.

The app runs in-process (starlette's ``TestClient``, no socket) over the tiny random model of the
server unit tests, so thousands of bodies cost seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# The tiny model and reference decoder live with the server unit tests.
from server_fakes import greedy_reference, tiny_loaded

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["", " ", "\x00", "\ud7ff", "user", "system", "assistant", "tool", "image_url", "official"]),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
SMALL_INTS = st.one_of(st.integers(-3, 80), st.sampled_from([10**9, -(10**9), 2**63]), JSON)
MESSAGE = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "system", "assistant", "tool", "human", ""]), JSON)},
    optional={
        "content": st.one_of(
            st.text(max_size=40),
            st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"])}), max_size=2),
            JSON,
        )
    },
)
ALIGN_BODY = st.fixed_dictionaries(
    {},
    optional={
        "messages": st.one_of(st.lists(MESSAGE, max_size=3), JSON),
        "draft": st.one_of(st.text(max_size=60), JSON),
        "keep_prefix_tokens": SMALL_INTS,
        "max_new_tokens": st.one_of(st.integers(-2, 4), st.sampled_from([10**9, 0]), JSON),
        "prompt_mode": st.one_of(st.sampled_from(["official", "clean", "paper"]), JSON),
        "template": st.one_of(st.sampled_from(["chatml", "gemma", "llama3", "smollm2", "nope", "/etc/passwd"]), JSON),
        "method": st.one_of(st.sampled_from(["auto", "greedy", "speculative", "jacobi", "magic"]), JSON),
        "block_size": SMALL_INTS,
        "max_iter": st.one_of(st.integers(-1, 3), JSON),
        "stream": st.one_of(st.booleans(), JSON),
        "extra": JSON,
    },
)
PARAMETERS = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.one_of(st.integers(-2, 4), st.sampled_from([10**9]), JSON),
        "stop": st.one_of(st.lists(st.text(max_size=5), max_size=6), JSON),
        "do_sample": st.one_of(st.booleans(), JSON),
        "temperature": st.one_of(st.floats(allow_nan=False, allow_infinity=False), JSON),
        "top_p": st.one_of(st.floats(allow_nan=False, allow_infinity=False), JSON),
        "typical_p": st.one_of(st.floats(allow_nan=False, allow_infinity=False), JSON),
        "top_k": SMALL_INTS,
        "repetition_penalty": st.one_of(st.floats(allow_nan=False, allow_infinity=False), JSON),
        "frequency_penalty": st.one_of(st.floats(allow_nan=False, allow_infinity=False), JSON),
        "top_n_tokens": SMALL_INTS,
        "truncate": SMALL_INTS,
        "details": st.one_of(st.booleans(), JSON),
        "decoder_input_details": st.one_of(st.booleans(), JSON),
        "best_of": SMALL_INTS,
        "seed": SMALL_INTS,
    },
)
GENERATE_BODY = st.fixed_dictionaries(
    {},
    optional={
        "inputs": st.one_of(st.text(max_size=60), JSON),
        "parameters": st.one_of(PARAMETERS, JSON),
        "stream": JSON,
    },
)
RAW = st.one_of(
    st.binary(max_size=60), st.sampled_from([b"", b"{", b"\xff\xfe", b'{"draft": "\xc3\x28"}', b"null", b"[]"])
)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from diffpo_integrations.server import ServerConfig, create_app

    config = ServerConfig(max_total_tokens=128, max_input_tokens=100, max_new_tokens_limit=8, api_key=None)
    with TestClient(create_app(tiny_loaded(), config, decode_fn=greedy_reference)) as test_client:
        yield test_client


def _check(response: Any) -> None:
    assert response.status_code == 200 or 400 <= response.status_code < 500, (response.status_code, response.text)
    if response.status_code != 200:
        body = response.json()
        assert set(body) == {"error", "error_type"}, body
        assert isinstance(body["error"], str)
        assert body["error"]


@SETTINGS
@given(body=st.one_of(ALIGN_BODY, JSON))
def test_align_route_never_answers_500(client: Any, body: Any) -> None:
    _check(client.post("/diffpo/align", json=body))


@SETTINGS
@given(body=st.one_of(GENERATE_BODY, JSON), path=st.sampled_from(["/generate", "/generate_stream", "/"]))
def test_generate_routes_never_answer_500(client: Any, body: Any, path: str) -> None:
    _check(client.post(path, json=body))


@SETTINGS
@given(raw=RAW, path=st.sampled_from(["/generate", "/diffpo/align", "/tokenize"]))
def test_raw_bytes_never_answer_500(client: Any, raw: bytes, path: str) -> None:
    _check(client.post(path, content=raw, headers={"content-type": "application/json"}))


def test_server_still_healthy_afterwards(client: Any) -> None:
    assert client.get("/health").status_code == 200
    answer = client.post(
        "/diffpo/align",
        json={"messages": [{"role": "user", "content": "Hi"}], "draft": "Hello there.", "max_new_tokens": 4},
    )
    assert answer.status_code == 200, answer.text
