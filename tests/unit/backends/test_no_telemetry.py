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


IMPORT_SCRIPT = """
import json, os, threading
import huggingface_hub.constants as c
from langchain_core.tracers import context as lc_context
env, telemetry, hooks = dict(os.environ), c.HF_HUB_DISABLE_TELEMETRY, len(lc_context._configure_hooks)
import diffpo_integrations.backends, diffpo_integrations.langchain, diffpo_integrations.llama_index
out = {
    "env_changed": dict(os.environ) != env,
    "telemetry_changed": c.HF_HUB_DISABLE_TELEMETRY != telemetry,
    "hooks_added_on_import": len(lc_context._configure_hooks) - hooks,
    "transport_thread": any(t.name == "diffpo-transport" for t in threading.enumerate()),
}
from diffpo_integrations.langchain import DiffPOAlign
from diffpo_integrations.backends.testing import MockTGIServer
DiffPOAlign(aligner=diffpo_integrations.backends.TGIAligner("http://x"))
DiffPOAlign(aligner=diffpo_integrations.backends.TGIAligner("http://x"))
out["hooks_added_on_first_use"] = len(lc_context._configure_hooks) - hooks
print(json.dumps(out))
"""


def test_importing_changes_no_process_wide_state() -> None:
    out = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "env_changed": False,
        "telemetry_changed": False,
        "hooks_added_on_import": 0,
        "transport_thread": False,
        "hooks_added_on_first_use": 1,
    }
