"""Bad input on every public entry point, against the live server: a clear error or a documented safe behaviour."""

from __future__ import annotations

from typing import Any

import httpx2
import pytest
from reliability_helpers import NEW_TOKENS

from diffpo_integrations.backends import AlignerPool, TGIAligner
from diffpo_integrations.core import InputError, ServerValidationError

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = [("user", "Name a prime number.")]
DRAFT = "7 is a prime number."


@pytest.fixture(scope="module")
def aligner(server: str) -> TGIAligner:
    return TGIAligner(server, max_new_tokens=NEW_TOKENS, max_retries=0)


@pytest.mark.parametrize(
    ("messages", "draft", "options", "match"),
    [
        (USER, "", {}, "draft is empty"),
        (USER, " \n\t ", {}, "draft is empty"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], DRAFT, {}, "non-text"),
        ([("robot", "Hi")], DRAFT, {}, "role 'robot'"),
        ([("assistant", "Hi")], DRAFT, {}, "must end with the user turn"),
        ([], DRAFT, {}, "conversation is empty"),
        (USER, "bad \udcff bytes", {}, "not valid UTF-8"),
        ([("user", "bad \ud800")], DRAFT, {}, "not valid UTF-8"),
        (USER, DRAFT, {"max_new_tokens": 0}, "max_new_tokens"),
        (USER, DRAFT, {"keep_prefix_tokens": -1}, "keep_prefix_tokens"),
    ],
)
def test_client_side_refusals_name_what_to_change(
    aligner: TGIAligner, messages: Any, draft: str, options: dict[str, Any], match: str
) -> None:
    for target in (aligner, AlignerPool([aligner, aligner])):
        with pytest.raises(InputError, match=match):
            target.align(messages, draft, **options)


def test_server_side_limits_are_typed_validation_errors(aligner: TGIAligner) -> None:
    with pytest.raises(ServerValidationError, match="max_new_tokens"):
        aligner.align(USER, DRAFT, max_new_tokens=10**7)
    # The conversation itself over the context: 422 naming the token limit; no failover, no retry.
    pool = AlignerPool([aligner, aligner])
    with pytest.raises(ServerValidationError, match="tokens"):
        pool.align([("user", "word " * 5000)], DRAFT)
    assert sum(s.failures for s in pool.stats().values()) == 0


def test_safe_behaviours(aligner: TGIAligner) -> None:
    # Control characters are text like any other.
    assert aligner.align(USER, "7\x00 is \x1b[31m prime\x07.").aligned
    # A draft far longer than the context: only its first keep_prefix_tokens tokens enter the
    # prompt; the rest is a speed hint, so the call succeeds.
    long_draft = "7 is a prime number. " * 2000
    result = aligner.align(USER, long_draft)
    assert result.aligned
    assert result.text.startswith("7 is a prime")
    # keep_prefix_tokens larger than the draft is clamped to the draft's length.
    assert aligner.align(USER, DRAFT, keep_prefix_tokens=10**6).kept_prefix.startswith("7 is a prime number")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/diffpo/align", b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}], "draft": "x"}'),
        ("/diffpo/align", b'{"messages": [{"role": "tool", "content": "Hi"}], "draft": "x"}'),
        ("/diffpo/align", b'{"messages": [{"role": "user", "content": "Hi"}], "draft": "   "}'),
        ("/diffpo/align", b'{"messages": [{"role": "user", "content": "Hi"}], "draft": "x", "max_new_tokens": -5}'),
        ("/diffpo/align", b'{"messages": [{"role": "user", "content": "Hi"}], "draft": "\xff\xfe"}'),
        (
            "/diffpo/align",
            b'{"messages": [{"role": "user", "content": "Hi"}], "draft": "x", "keep_prefix_tokens": 1e99}',
        ),
        ("/generate", b'{"inputs": "\xc3\x28", "parameters": {"max_new_tokens": 2}}'),
        ("/generate", b'{"inputs": "Hi", "parameters": {"max_new_tokens": 100000000}}'),
        ("/generate", b'{"inputs": "", "parameters": {}}'),
        ("/generate", b"{not json"),
    ],
)
def test_server_routes_answer_bad_bodies_with_tgi_shaped_422(server: str, path: str, body: bytes) -> None:
    r = httpx2.post(server + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    payload = r.json()
    assert set(payload) == {"error", "error_type"}
    if b"\xff" in body or b"\xc3(" in body:
        # Bytes that are not UTF-8 fail before validation: 400 in TGI's shape (TGI itself says 422).
        assert (r.status_code, payload["error_type"]) in ((400, "http"), (422, "validation")), r.text
    else:
        assert (r.status_code, payload["error_type"]) == (422, "validation"), r.text
    assert httpx2.get(server + "/health", timeout=10).status_code == 200
