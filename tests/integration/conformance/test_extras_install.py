"""Each extra alone, installed from a freshly built wheel into a clean environment, gives its documented imports.

One environment per extra (none, ``langchain``, ``llama-index``, ``agents``, ``server``, ``cli``,
``examples``, ``gateway``), built in parallel from PyPI and cached under ``.cache/venvs/`` keyed by
``pyproject.toml``; the wheel itself is rebuilt and reinstalled every run. torch must arrive
only with ``server`` (and ``local``): the gateway installs none.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from throwaway_venvs import ROOT, PyPIUnreachable, VenvSpec, ensure, pypi_reachable, run_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECKS: dict[str, str] = {
    "": """
import diffpo_integrations
from diffpo_integrations import TGIAligner, OpenAICompatAligner, AlignerPool, AlignRequest, AlignResult
from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.core import get_template, build_prompt
from diffpo_integrations.wire.openai import ChatBody, CompletionBody, openai_error_body
TGIAligner("http://127.0.0.1:8080/v1")
""",
    "langchain": """
from diffpo_integrations.langchain import DiffPOAlign, ChatDiffPO, StreamPolicy
try:
    from diffpo_integrations.langchain import DiffPOMiddleware
except ImportError as exc:
    assert "pip install 'diffpo-integrations[agents]'" in str(exc), exc
else:
    raise AssertionError("DiffPOMiddleware imported without langchain")
""",
    "agents": """
from diffpo_integrations.langchain import DiffPOAlign, ChatDiffPO, DiffPOMiddleware
from langchain.agents import create_agent
from langgraph.graph import StateGraph
""",
    "llama-index": """
from diffpo_integrations.llama_index import *
import diffpo_integrations.llama_index as li
for name in li.__all__:
    getattr(li, name)
from llama_index.core import Settings, VectorStoreIndex
from workflows import Workflow
""",
    "server": """
from diffpo_integrations.server import ServerConfig, create_app
from diffpo_integrations.engine import load_model, SamplingParams, sample
import torch, transformers, fastapi, uvicorn, httpx2
""",
    "cli": """
from diffpo_integrations.cli import main
import tqdm
""",
    "examples": """
from langchain_openai import ChatOpenAI
from openai import OpenAI
from llama_index.llms.openai_like import OpenAILike
from diffpo_integrations.langchain import DiffPOAlign
from diffpo_integrations.llama_index import DiffPOLLM
""",
    "gateway": """
from diffpo_integrations.gateway import GatewayConfig, create_gateway_app, run_gateway
from diffpo_integrations.wire.openai import ChatBody
""",
}
"""What the README and docs import after ``pip install "diffpo-integrations[<extra>]"``."""
WITH_TORCH = {"server"}
REPORT = "import importlib.util, json; print(json.dumps({'torch': importlib.util.find_spec('torch') is not None}))"


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # The build backend (hatchling) comes from PyPI, like a release build.
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        if not pypi_reachable():
            pytest.skip(f"PyPI is unreachable, so the wheel cannot be built: {done.stderr[-300:]}")
        raise AssertionError(done.stderr[-3000:])
    [built] = out.glob("diffpo_integrations-*.whl")
    return built


def _spec(extra: str, wheel: Path) -> VenvSpec:
    target = f"diffpo-integrations[{extra}]" if extra else "diffpo-integrations"
    # Dependencies come from the wheel's metadata; the cache key is that metadata's source.
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return VenvSpec(
        name=f"extra-{extra or 'none'}",
        requirements=(f"{target} @ {wheel.as_uri()}",),
        first=("torch==2.13.0",) if extra in WITH_TORCH else (),
        key_extra=key,
        then_no_deps=(str(wheel),),
    )


@pytest.fixture(scope="session")
def environments(wheel: Path) -> dict[str, Path | BaseException]:
    specs = {extra: _spec(extra, wheel) for extra in CHECKS}

    def build(extra: str) -> Path | BaseException:
        try:
            return ensure(specs[extra])
        except (PyPIUnreachable, RuntimeError, subprocess.SubprocessError) as exc:
            return exc

    # Parallel: the installs mostly wait on downloads and unpacking.
    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip(CHECKS, pool.map(build, CHECKS), strict=True))


@pytest.mark.parametrize("extra", list(CHECKS), ids=[e or "none" for e in CHECKS])
def test_each_extra_alone_gives_its_documented_imports(
    environments: dict[str, Path | BaseException], extra: str
) -> None:
    python = environments[extra]
    if isinstance(python, PyPIUnreachable):
        pytest.skip(f"PyPI is unreachable: {python}")
    if isinstance(python, BaseException):
        raise python
    done = run_in(python, ["-c", CHECKS[extra]])
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(run_in(python, ["-c", REPORT]).stdout)
    assert report["torch"] is (extra in WITH_TORCH), f"torch installed: {report['torch']} with [{extra}]"
    if extra in {"cli", "server"}:
        done = run_in(python, ["-m", "diffpo_integrations.cli", "--help"])
        assert done.returncode == 0, done.stderr[-2000:]
        assert "serve" in done.stdout
