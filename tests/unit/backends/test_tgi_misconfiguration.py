"""``TGIAligner`` misconfigured: a ``/v1`` base URL works, a web page is explained, template typos fail at once."""

from __future__ import annotations

import time

import httpx2
import pytest

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.backends._probe import normalize_base_url
from diffpo_integrations.backends.testing import mock_tgi
from diffpo_integrations.core import ConfigurationError, get_template

MESSAGES = [{"role": "user", "content": "Name a prime number."}]
PAGE = "<html><head><title>Welcome to\n nginx!</title></head><body>" + "x" * 5000 + "</body></html>"
BUILTINS = "['chatml', 'gemma', 'llama3', 'smollm2']"


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFFPO_API_KEY", raising=False)
    monkeypatch.delenv("DIFFPO_ALIGNER_URL", raising=False)


@pytest.mark.parametrize(
    ("url", "root"),
    [
        ("http://mock-tgi/v1", "http://mock-tgi"),
        ("http://mock-tgi/v1/", "http://mock-tgi"),
        ("http://mock-tgi/v1/chat/completions", "http://mock-tgi"),
        ("http://mock-tgi/generate", "http://mock-tgi"),
        ("http://mock-tgi/proxy/tgi/", "http://mock-tgi/proxy/tgi"),
        ("https://mock-tgi", "https://mock-tgi"),
    ],
)
def test_a_pasted_route_is_dropped_from_the_base_url(url: str, root: str) -> None:
    assert normalize_base_url(url) == root


def test_a_v1_base_url_aligns_like_the_root() -> None:
    with mock_tgi():
        expected = TGIAligner("http://mock-tgi").align(MESSAGES, "7 is prime.").text
        assert TGIAligner("http://mock-tgi/v1").align(MESSAGES, "7 is prime.").text == expected


@pytest.mark.parametrize(
    ("status", "headers", "body", "seen"),
    [
        (200, {"content-type": "text/html"}, PAGE, "HTTP 200 with an HTML page titled 'Welcome to nginx!'"),
        (404, {"content-type": "text/html"}, PAGE, "HTTP 404 with an HTML page titled 'Welcome to nginx!'"),
        (404, {"content-type": "text/plain"}, "Not Found", "HTTP 404 with 9 characters of text/plain"),
        (404, {"content-type": "application/json"}, '{"detail":"Not Found"}', "HTTP 404 with 22 characters"),
    ],
)
@pytest.mark.parametrize("call", ["align", "aalign"])
async def test_a_url_that_is_not_a_tgi_server_says_what_came_back(
    status: int, headers: dict[str, str], body: str, seen: str, call: str
) -> None:
    with mock_tgi() as server:
        server.handle = lambda request: httpx2.Response(status, headers=headers, text=body)  # type: ignore[method-assign]
        aligner = TGIAligner("http://mock-tgi", max_retries=0)
        if call == "align":
            with pytest.raises(ConfigurationError) as caught:
                aligner.align(MESSAGES, "7 is prime.")
        else:
            with pytest.raises(ConfigurationError) as caught:
                await aligner.aalign(MESSAGES, "7 is prime.")
    message = str(caught.value)
    assert message.startswith(
        "http://mock-tgi does not look like a TGI or `diffpo serve` server: GET http://mock-tgi/info answered " + seen
    )
    assert "Point base_url at the server's root" in message
    assert "xxxx" not in message
    assert "<html>" not in message


def test_an_unknown_template_name_fails_at_once_listing_the_built_ins() -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigurationError) as caught:
        TGIAligner("http://mock-tgi", template="gemma2")
    assert time.perf_counter() - start < 1.0
    assert str(caught.value) == (
        f"unknown template 'gemma2' (did you mean 'gemma'?): use one of {BUILTINS}, a tokenizer folder, "
        "a .gguf file, or a hub id like 'google/gemma-2-9b-it'"
    )
    with pytest.raises(ConfigurationError, match="unknown template 'chat-ml'"):
        get_template("chat-ml")


def test_a_hub_id_is_tried_once_briefly_and_explained_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    calls: list[float | None] = []

    def offline(self: object, repo_id: str, *, timeout: float | None = None, **kw: object) -> None:
        calls.append(timeout)
        raise httpx2.ConnectError("Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", offline)
    monkeypatch.setenv("HF_HUB_CACHE", "/nonexistent-cache")
    with pytest.raises(ConfigurationError) as caught:
        get_template("someone/no-such-aligner")
    assert calls == [5.0]
    assert str(caught.value) == (
        "template 'someone/no-such-aligner' is not in the local Hugging Face cache and the hub did not answer "
        f"for it (ConnectError: Name or service not known); use one of {BUILTINS} or a tokenizer folder"
    )


def test_a_tokenizer_template_is_not_silently_dropped_by_the_align_route(tmp_path: object) -> None:
    with mock_tgi():
        aligner = TGIAligner("http://mock-tgi", template="someone/aligner-tokenizer")
        with pytest.raises(ConfigurationError, match="cannot use: pass one of"):
            aligner.align(MESSAGES, "7 is prime.")
