"""The gateway's parts: settings, the conversation it builds, per-request options, admission, the CLI."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from gateway_fakes import FIELD_MESSAGES, FIELD_PROMPT, MESSAGES
from pydantic import ValidationError

import diffpo_integrations.gateway as gateway_pkg
from diffpo_integrations.cli import main as cli_main
from diffpo_integrations.core.errors import InputError
from diffpo_integrations.core.types import Message
from diffpo_integrations.gateway import GatewayConfig
from diffpo_integrations.gateway.aligning import conversation_from_openai, plan_request
from diffpo_integrations.gateway.state import Admission
from diffpo_integrations.gateway.wire import GatewayError


def test_config_keeps_keys_out_of_repr_and_normalises_the_upstream() -> None:
    config = GatewayConfig(
        upstream="http://127.0.0.1:8081/",
        aligner_urls=["http://a"],
        api_key="client-s3cret",
        upstream_api_key="up-s3cret",
    )
    assert config.upstream == "http://127.0.0.1:8081/v1"
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config.model_dump())
    assert config.upstream_api_key is not None
    assert config.upstream_api_key.get_secret_value() == "up-s3cret"


def test_config_refuses_a_client_key_with_forwarded_authorization_and_bad_urls() -> None:
    with pytest.raises(ValidationError, match="forward_authorization sends the client's Authorization header upstream"):
        GatewayConfig(upstream="http://u", aligner_urls=["http://a"], api_key="k", forward_authorization=True)
    with pytest.raises(ValidationError, match="upstream must be an http"):
        GatewayConfig(upstream="127.0.0.1:8081", aligner_urls=["http://a"])


def test_conversation_renders_roles_parts_and_tools() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Weather "},
                {"type": "image_url"},
                {"type": "text", "text": "in Paris?"},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"},
    ]
    # The same conversation every integration builds for this history (core.build_conversation).
    assert conversation_from_openai(messages) == [
        Message(role="system", content="Be brief."),
        Message(role="user", content='Weather in Paris?\n\nTool result (weather {"city": "Paris"}): 18 C, sunny'),
    ]
    with pytest.raises(InputError, match=r"messages\[0\] must be an object with a 'role'"):
        conversation_from_openai(["hi"])
    with pytest.raises(InputError, match=r"messages\[0\] has role 'robot'"):
        conversation_from_openai([{"role": "robot", "content": "beep"}])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"diffpo": {"align": "no"}}, "'diffpo.align' must be true or false, got 'no'"),
        ({"diffpo": {"keep_prefix_tokens": -1}}, "'diffpo.keep_prefix_tokens' must be an integer >= 0, got -1"),
        ({"diffpo": []}, "'diffpo' must be an object"),
        ({"max_tokens": 0}, "'max_tokens' must be an integer >= 1, got 0"),
    ],
)
def test_bad_request_options_say_what_to_change(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace("[", r"\[")):
        plan_request({"messages": [], **body}, {}, keep_prefix_tokens=6, max_new_tokens=256)


def _reason(body: dict[str, Any], headers: dict[str, str] | None = None) -> str | None:
    return plan_request(body, headers or {}, keep_prefix_tokens=6, max_new_tokens=256).reason


@pytest.mark.parametrize("role", ["system", "developer"])
def test_a_prompt_laid_out_in_field_markers_passes_through(role: str) -> None:
    messages = [{**FIELD_MESSAGES[0], "role": role}, FIELD_MESSAGES[1]]
    plan = plan_request({"messages": messages}, {}, keep_prefix_tokens=6, max_new_tokens=256)
    assert (plan.align, plan.reason) == (False, "field_markers")
    # Text parts count as the plain string does; the marker may carry surrounding spaces.
    parts = [{"type": "text", "text": "Fields:\n"}, {"type": "text", "text": "  [[ ## answer ## ]]  \n{answer}"}]
    assert _reason({"messages": [{"role": "system", "content": parts}, MESSAGES[1]]}) == "field_markers"


@pytest.mark.parametrize(
    "messages",
    [
        # Markers the user typed are a question about them, not a format the client parses.
        [MESSAGES[0], FIELD_MESSAGES[1]],
        [{"role": "system", "content": "Never write markers such as [[ ## answer ## ]] in a reply."}, MESSAGES[1]],
        [{"role": "system", "content": "[[ answer ]]\n[[ ## two words ## ]]\n[ ## answer ## ]"}, MESSAGES[1]],
        [{"role": "assistant", "content": FIELD_PROMPT}, MESSAGES[1]],
    ],
)
def test_markers_outside_a_system_line_of_their_own_are_aligned(messages: list[dict[str, Any]]) -> None:
    assert _reason({"messages": messages}) is None


def test_an_explicit_opt_out_or_response_format_names_itself_before_field_markers() -> None:
    assert _reason({"messages": FIELD_MESSAGES, "diffpo": {"align": False}}) == "opt_out"
    assert _reason({"messages": FIELD_MESSAGES}, {"x-diffpo-align": "off"}) == "opt_out"
    # DSPy's JSONAdapter sends both, where the model takes response_format.
    assert _reason({"messages": FIELD_MESSAGES, "response_format": {"type": "json_object"}}) == "response_format"


def test_admission_answers_429_with_retry_after_past_capacity() -> None:
    async def scenario() -> tuple[int, dict[str, str], int]:
        admission = Admission(limit=1, waiting=1)
        release = asyncio.Event()

        async def hold() -> None:
            slot = await admission.enter()
            try:
                await release.wait()
            finally:
                slot.release()
                slot.release()  # a second release gives nothing back twice

        tasks = [asyncio.ensure_future(hold()) for _ in range(2)]  # one runs, one waits
        await asyncio.sleep(0)
        try:
            await admission.enter()
        except GatewayError as exc:
            status, headers = exc.status, exc.headers
        release.set()
        await asyncio.gather(*tasks)
        return status, headers, admission.inside

    assert asyncio.run(scenario()) == (429, {"Retry-After": "1"}, 0)


def test_diffpo_gateway_passes_its_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[GatewayConfig] = []
    monkeypatch.setattr(gateway_pkg, "run_gateway", lambda config: seen.append(config))
    monkeypatch.setenv("MY_UPSTREAM_KEY", "up-key")
    key_file = tmp_path / "key"
    key_file.write_text("client-key\n", encoding="utf-8")
    argv = [
        "gateway",
        *("--upstream", "http://127.0.0.1:8081", "--aligner-url", "http://a:1", "--aligner-url", "http://b:2"),
        *("--template", "gemma", "--keep-prefix-tokens", "3", "--max-new-tokens", "64", "--fail-policy", "closed"),
        *("--stream-policy", "early", "--port", "0", "--api-key-file", str(key_file)),
        *("--upstream-api-key-env", "MY_UPSTREAM_KEY", "--max-concurrent-requests", "4", "--max-waiting", "2"),
        *("--upstream-timeout", "7.5", "--max-upstream-body", "4096"),
    ]
    assert cli_main(argv) == 0
    config = seen[0]
    assert (config.upstream_timeout, config.max_upstream_body) == (7.5, 4096)
    assert (config.upstream, config.aligner_urls, config.template) == (
        "http://127.0.0.1:8081/v1",
        ["http://a:1", "http://b:2"],
        "gemma",
    )
    assert (config.keep_prefix_tokens, config.max_new_tokens, config.fail_policy, config.stream_policy) == (
        3,
        64,
        "closed",
        "early",
    )
    assert (config.port, config.host, config.max_concurrent_requests, config.max_waiting) == (0, "127.0.0.1", 4, 2)
    assert config.api_key is not None
    assert config.api_key.get_secret_value() == "client-key"
    assert config.upstream_api_key is not None
    assert config.upstream_api_key.get_secret_value() == "up-key"


def test_diffpo_gateway_allows_32_mib_upstream_answers_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[GatewayConfig] = []
    monkeypatch.setattr(gateway_pkg, "run_gateway", lambda config: seen.append(config))
    assert cli_main(["gateway", "--upstream", "http://u"]) == 0
    assert (
        seen[0].max_upstream_body
        == 32 * 1024 * 1024
        == GatewayConfig(upstream="http://u", aligner_urls=["http://a"]).max_upstream_body
    )


def test_diffpo_gateway_refuses_a_max_upstream_body_under_one_byte(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(gateway_pkg, "run_gateway", lambda config: None)
    assert cli_main(["gateway", "--upstream", "http://u", "--max-upstream-body", "0"]) == 2
    assert "max_upstream_body: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_diffpo_gateway_says_when_the_upstream_key_variable_is_unset(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    monkeypatch.setattr(gateway_pkg, "run_gateway", lambda config: None)
    with pytest.raises(SystemExit) as info:
        cli_main(["gateway", "--upstream", "http://u", "--upstream-api-key-env", "NO_SUCH_KEY"])
    assert info.value.code == 2
    assert "diffpo: error: --upstream-api-key-env NO_SUCH_KEY: that variable is not set" in capsys.readouterr().err


def test_the_gateway_imports_no_torch() -> None:
    import subprocess
    import sys

    code = "import sys, diffpo_integrations.gateway, diffpo_integrations.cli.gateway; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
