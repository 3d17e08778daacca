"""Agent frameworks, with their defaults, against ``diffpo gateway``: the client table in docs/gateway.md.

Each client runs in its own environment, built by ``scripts/gateway-clients.sh`` in a cache outside
the checkout (the clients pin versions that clash with the test environment); a client whose
environment is missing is skipped with the command that builds it. Text answers must equal
``TGIAligner(server).align(conversation, draft)`` for the upstream's own draft.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from conftest import scripted_chat_upstream

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.gateway.aligning import conversation_from_openai

pytestmark = pytest.mark.integration

CLIENTS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diffpo-integrations" / "clients"
CLIENTS = Path(os.environ.get("DIFFPO_CLIENTS_CACHE") or CLIENTS)
RUNNERS = Path(__file__).parent / "clients"
MAX_TOKENS = 64
SYSTEM = "Answer in one sentence."
AFTER_TOOL = "It is 21 degrees and sunny in Paris today."


def _python(client: str) -> Path:
    python = CLIENTS / client / "bin" / "python"
    if not (CLIENTS / client / "ready").exists():
        pytest.skip(f"the {client} client is not built: run scripts/gateway-clients.sh {client}")
    return python


def _run(client: str, runner: str, *args: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(_python(client)), str(RUNNERS / runner), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _expected(live_url: str, question: str, tokens: int = MAX_TOKENS) -> str:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    direct = openai.OpenAI(base_url=live_url + "/v1", api_key="unused", max_retries=0)
    answer = direct.chat.completions.create(model="smollm2", messages=messages, max_tokens=tokens)  # type: ignore[arg-type]
    draft = str(answer.choices[0].message.content)
    return TGIAligner(live_url).align(messages, draft, max_new_tokens=tokens).text


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_agents_sdk_run_sync(gateway_url: str, live_url: str, api: str) -> None:
    question = "Name a planet."
    result = _run("agents", "run_agents.py", gateway_url + "/v1", api, "run_sync", question, str(MAX_TOKENS))
    assert result["text"] == _expected(live_url, question)


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_agents_sdk_run_streamed(gateway_url: str, live_url: str, api: str) -> None:
    question = "What do bees make?"
    result = _run("agents", "run_agents.py", gateway_url + "/v1", api, "run_streamed", question, str(MAX_TOKENS))
    want = _expected(live_url, question)
    assert result["text"] == want
    if api == "responses":
        assert result["deltas"] == want


def _tool_then_answer(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if any(m.get("role") == "tool" for m in body["messages"]):
        return {"role": "assistant", "content": AFTER_TOOL}, "stop"
    call = {"id": "call_7", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"


@pytest.fixture(scope="module")
def tool_upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """An upstream that calls ``get_weather`` first, then answers from the tool's result; and what it was sent."""
    with scripted_chat_upstream(_tool_then_answer) as served:
        yield served


@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_agents_sdk_function_tool_result_reaches_the_aligned_answer(
    start_gateway: Callable[..., AbstractContextManager[str]],
    tool_upstream: tuple[str, list[dict[str, Any]]],
    live_url: str,
    api: str,
) -> None:
    url, seen = tool_upstream
    seen.clear()
    with start_gateway(upstream=url) as gateway:
        result = _run("agents", "run_agents.py", gateway + "/v1", api, "tool", "Weather in Paris?", str(MAX_TOKENS))
    assert len(seen) == 2
    [tool_message] = [m for m in seen[1]["messages"] if m["role"] == "tool"]
    assert (tool_message["tool_call_id"], tool_message["content"]) == ("call_7", "21 degrees and sunny in Paris")
    conversation = conversation_from_openai(seen[1]["messages"])
    want = TGIAligner(live_url).align(conversation, AFTER_TOOL, max_new_tokens=MAX_TOKENS).text
    assert result["text"] == want


@pytest.mark.parametrize("operation", ["run_sync", "run_stream"])
def test_pydantic_ai(gateway_url: str, live_url: str, operation: str) -> None:
    question = "Say hello in Spanish."
    result = _run("pydantic-ai", "run_pydantic_ai.py", gateway_url + "/v1", operation, question, str(MAX_TOKENS))
    assert result["text"] == _expected(live_url, question)


def _docs_block(first_import: str) -> str:
    """The python block of docs/gateway.md that starts with ``first_import``."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "gateway.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    [block] = [b for b in blocks if b.startswith(first_import)]
    return block


@pytest.mark.parametrize(
    ("client", "first_import"), [("agents", "from agents import"), ("pydantic-ai", "from pydantic_ai import")]
)
def test_the_docs_example_prints_the_aligned_answer(
    gateway_url: str, live_url: str, client: str, first_import: str
) -> None:
    code = _docs_block(first_import).replace("http://127.0.0.1:8000", gateway_url)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(_python(client)), "-c", code], capture_output=True, text=True, timeout=300, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == _expected(live_url, "Name a prime number.", 32) + "\n"


WEATHER = {"city": "Paris", "celsius": 21}


def _weather_json(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    if not body.get("tools"):
        return {"role": "assistant", "content": json.dumps(WEATHER)}, "stop"
    name = body["tools"][0]["function"]["name"]
    call = {"id": "call_1", "type": "function", "function": {"name": name, "arguments": json.dumps(WEATHER)}}
    return {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"


@pytest.fixture(scope="module")
def json_gateway(start_gateway: Callable[..., AbstractContextManager[str]]) -> Iterator[tuple[str, list[Any]]]:
    """A gateway in front of an upstream that answers JSON: as a call to the offered tool, or as text."""
    with scripted_chat_upstream(_weather_json) as (url, seen), start_gateway(upstream=url) as gateway:
        yield gateway, seen


@pytest.mark.parametrize("mode", ["tools", "json"])
def test_instructor_response_model_passes_through_unaligned(json_gateway: tuple[str, list[Any]], mode: str) -> None:
    gateway, seen = json_gateway
    seen.clear()
    assert _run("instructor", "run_instructor.py", gateway + "/v1", mode) == WEATHER
    [body] = seen
    if mode == "tools":
        assert body["tool_choice"]["function"]["name"] == body["tools"][0]["function"]["name"]
    else:
        assert body["response_format"] == {"type": "json_object"}


@pytest.mark.parametrize("operation", ["generateText", "streamText"])
def test_vercel_ai_sdk(gateway_url: str, live_url: str, operation: str) -> None:
    folder = CLIENTS / "vercel-ai"
    if not (folder / "ready").exists():
        pytest.skip("the vercel-ai client is not built: run scripts/gateway-clients.sh vercel-ai")
    # Node resolves an ES module's imports from its own folder: the runner goes next to node_modules.
    shutil.copy(RUNNERS / "run_vercel_ai.mjs", folder / "run_vercel_ai.mjs")
    question = "Name a prime number."
    done = subprocess.run(
        ["node", str(folder / "run_vercel_ai.mjs"), gateway_url + "/v1", operation, question, str(MAX_TOKENS)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    want = _expected(live_url, question)
    assert result["text"] == want
    if operation == "streamText":
        assert result["deltas"] == want


def test_dspy_lm(gateway_url: str, live_url: str) -> None:
    question = "Name a prime number."
    result = _run("dspy", "run_dspy.py", gateway_url + "/v1", "lm", question, str(MAX_TOKENS))
    assert result["text"] == _expected(live_url, question)


DSPY_FIELDS = {"reasoning": "Seven has no divisors but one and itself.", "answer": "7"}


def _dspy_fields(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The upstream answers in the field layout DSPy's ChatAdapter asked for in its system message."""
    system = body["messages"][0]["content"]
    names = [name for name in DSPY_FIELDS if f"[[ ## {name} ## ]]" in system]
    text = "".join(f"[[ ## {name} ## ]]\n{DSPY_FIELDS[name]}\n\n" for name in names) + "[[ ## completed ## ]]"
    return {"role": "assistant", "content": text}, "stop"


@pytest.mark.parametrize(
    ("operation", "fields"), [("predict", ["answer"]), ("chain_of_thought", ["reasoning", "answer"])]
)
def test_dspy_modules_get_the_upstream_fields_unaligned(
    start_gateway: Callable[..., AbstractContextManager[str]], operation: str, fields: list[str]
) -> None:
    with scripted_chat_upstream(_dspy_fields) as (url, seen), start_gateway(upstream=url) as gateway:
        result = _run("dspy", "run_dspy.py", gateway + "/v1", operation, "Name a prime number.", str(MAX_TOKENS))
        # DSPy drops the gateway's metadata: the same request again, read raw, shows it.
        again = httpx2.post(gateway + "/v1/chat/completions", json=seen[0], timeout=60)
    # One request: DSPy's parser found its fields, so it made no JSONAdapter fallback call.
    assert (result["requests"], len(seen)) == (1, 2)
    assert result["fields"] == {name: DSPY_FIELDS[name] for name in fields}
    assert again.json()["diffpo"] == {"aligned": False, "passthrough": "field_markers"}
    assert again.headers["x-diffpo-aligned"] == "false"


def test_pydantic_ai_output_type_gets_the_upstream_json_unaligned(json_gateway: tuple[str, list[Any]]) -> None:
    gateway, seen = json_gateway
    seen.clear()
    assert _run("pydantic-ai", "run_pydantic_ai.py", gateway + "/v1", "output_type", "Weather?", "64") == WEATHER
    # pydantic-ai asks for the output as a call to a tool whose parameters are the model's fields.
    [tool] = seen[0]["tools"]
    assert sorted(tool["function"]["parameters"]["properties"]) == ["celsius", "city"]


def test_pydantic_ai_tool_result_reaches_the_aligned_answer(
    start_gateway: Callable[..., AbstractContextManager[str]],
    tool_upstream: tuple[str, list[dict[str, Any]]],
    live_url: str,
) -> None:
    url, seen = tool_upstream
    seen.clear()
    with start_gateway(upstream=url) as gateway:
        result = _run(
            "pydantic-ai", "run_pydantic_ai.py", gateway + "/v1", "tool", "Weather in Paris?", str(MAX_TOKENS)
        )
    assert len(seen) == 2
    [tool_message] = [m for m in seen[1]["messages"] if m["role"] == "tool"]
    assert (tool_message["tool_call_id"], tool_message["content"]) == ("call_7", "21 degrees and sunny in Paris")
    conversation = conversation_from_openai(seen[1]["messages"])
    assert result["text"] == TGIAligner(live_url).align(conversation, AFTER_TOOL, max_new_tokens=MAX_TOKENS).text
