"""No request leaves for a host the user did not name (huggingface_hub's telemetry stays off)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import json
from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.backends.testing import mock_tgi
with mock_tgi(align_route=False) as server:
    TGIAligner("http://mock-tgi", template="chatml").align([("user", "hi")], "hello there friend")
    list(TGIAligner("http://mock-tgi", template="chatml").stream([("user", "hi")], "hello there friend"))
print(json.dumps(sorted({r.url.host for r in server.requests})))
"""


def _hosts(env: dict[str, str]) -> list[str]:
    # A fresh interpreter: the telemetry switch is read when huggingface_hub is imported.
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True)
    hosts: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return hosts


def test_only_the_aligner_host_is_contacted() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "HF_HUB_OFFLINE")
    }
    assert _hosts(env) == ["mock-tgi"]


def test_explicit_user_choice_is_respected() -> None:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HUB_DISABLE_TELEMETRY"] = "0"
    script = "import diffpo_integrations.backends, huggingface_hub.constants as c; print(c.HF_HUB_DISABLE_TELEMETRY)"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
