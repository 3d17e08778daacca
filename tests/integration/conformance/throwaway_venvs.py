"""Throwaway virtual environments from PyPI for the packaging and client-conformance tests.

Each environment is created once per set of requirements and cached under ``.cache/venvs/``
(gitignored), so reruns take seconds; what changes with every run (the project's own wheel) is
reinstalled into it without dependencies. When PyPI cannot be reached the tests skip, saying so;
any other install failure fails them with pip's own words.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".cache" / "venvs"
INSTALL_TIMEOUT_S = 900


@dataclass(frozen=True)
class VenvSpec:
    """One environment: what to install first (``torch==2.13.0``), then the requirements."""

    name: str
    requirements: tuple[str, ...]
    first: tuple[str, ...] = ()
    key_extra: str = ""
    """Stands for the requirements in the cache key (the project's dependency metadata)."""
    then_no_deps: tuple[str, ...] = field(default=(), compare=False)
    """Reinstalled without dependencies on every use (the freshly built wheel)."""

    @property
    def path(self) -> Path:
        # With a key_extra the requirements name a fresh wheel each run: the key stands for them.
        wanted = self.key_extra or self.requirements
        blob = json.dumps([wanted, self.first, sys.version]).encode()
        return CACHE / f"{self.name}-{hashlib.sha256(blob).hexdigest()[:12]}"

    def python(self) -> Path:
        return self.path / "bin" / "python"


class PyPIUnreachable(Exception):
    """pip failed and PyPI does not answer."""


def pypi_reachable() -> bool:
    # A subprocess: the unit tests' socket guard does not reach it.
    probe = "import socket; socket.create_connection(('pypi.org', 443), timeout=5).close()"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False).returncode == 0


def _pip(python: Path, args: Sequence[str]) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        if not pypi_reachable():
            raise PyPIUnreachable(done.stderr[-500:])
        msg = f"pip install {' '.join(args)} failed:\n{done.stderr[-3000:]}"
        raise RuntimeError(msg)


def ensure(spec: VenvSpec) -> Path:
    """The environment's python, created (or reused from the cache) with the project's wheel refreshed."""
    ready = spec.path / "ready"
    if not ready.exists():
        for stale in CACHE.glob(f"{spec.name}-*"):  # older requirements of the same environment
            shutil.rmtree(stale, ignore_errors=True)
        spec.path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(spec.path)], check=True, capture_output=True)
        if spec.first:
            _pip(spec.python(), spec.first)
        _pip(spec.python(), spec.requirements)
        ready.write_text("\n".join(spec.requirements))
    if spec.then_no_deps:
        _pip(spec.python(), ["--force-reinstall", "--no-deps", *spec.then_no_deps])
    return spec.python()


def ensure_or_skip(spec: VenvSpec) -> Path:
    """:func:`ensure`, skipping the test when PyPI is unreachable."""
    try:
        return ensure(spec)
    except PyPIUnreachable as exc:
        pytest.skip(f"PyPI is unreachable, so the {spec.name} environment cannot be built: {exc}")


def run_in(python: Path, args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python args`` outside this checkout (so only what the environment installed is importable)."""
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [str(python), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=tempfile.gettempdir(),
        check=False,
    )
