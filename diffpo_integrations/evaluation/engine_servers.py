"""Start real inference engines (vLLM's CPU build, llama.cpp's server) on loopback, and always stop them.

``scripts/engines.sh`` builds each engine in its own virtual environment (vLLM pins a torch and a
transformers of its own) and exports where they are: ``DIFFPO_VLLM_PYTHON``,
``DIFFPO_LLAMA_CPP_PYTHON`` and ``DIFFPO_ENGINES_MODEL_DIR`` (the float32 folder of the packaged
SmolLM2 GGUF, the one ``diffpo serve`` loads by default). The engines tier of the tests and
``diffpo bench engines`` start them through :func:`vllm_server` and :func:`llama_cpp_server`.

Each server runs in its own process group on a free ``127.0.0.1`` port; leaving the context sends
SIGTERM to the whole group (vLLM runs three processes), then SIGKILL after a grace period.
A server that exits or never answers ``/health`` raises :class:`EngineStartError` with the end
of its log, so a missing or broken engine is a failure that says why, never a silent skip.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2

__all__ = [
    "ENGINES_SCRIPT",
    "HEALTH",
    "EngineServer",
    "EngineStartError",
    "VLLM_ENV",
    "VLLM_SERVED_NAME",
    "diffpo_serve_server",
    "engine_python",
    "engine_server",
    "engines_model_dir",
    "free_port",
    "llama_cpp_command",
    "llama_cpp_server",
    "running_server",
    "vllm_command",
    "vllm_server",
]

ENGINES_SCRIPT = "./scripts/engines.sh"
"""The command that builds the engines and exports the variables read here."""

VLLM_SERVED_NAME = "smollm2"
"""The model name vLLM serves the folder under (``--served-model-name``)."""


class EngineStartError(RuntimeError):
    """An engine is not installed, exited during start-up, or did not become healthy in time."""


@dataclass(frozen=True)
class EngineServer:
    """A running engine: its URL, process and log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes] | None
    """``None`` for a server this process did not start (:func:`running_server`)."""
    log_path: Path | None
    started_in_s: float

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server's log."""
        return _tail(self.log_path, lines) if self.log_path is not None else ""

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the server's process group, then SIGKILL if it is still there after ``grace_s``."""
        if self.process is not None:
            _stop_group(self.process, grace_s)


def running_server(name: str, variable: str) -> EngineServer | None:
    """The server at ``$variable`` (a URL), when set: reuse an engine already started by hand.

    ``name`` is ``"vLLM"`` or ``"llama.cpp"``.

    Raises:
        EngineStartError: the URL does not answer ``/health``.
    """
    url = os.environ.get(variable, "").rstrip("/")
    if not url:
        return None
    try:
        healthy = httpx2.get(f"{url}{HEALTH[name]}", timeout=5.0).status_code == 200
    except httpx2.HTTPError as exc:
        healthy = False
        why = f": {exc}"
    else:
        why = ""
    if not healthy:
        msg = f"{variable}={url} does not answer {HEALTH[name]}{why}; unset it to start {name} instead"
        raise EngineStartError(msg)
    return EngineServer(name, url, None, None, 0.0)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _stop_group(process: subprocess.Popen[bytes], grace_s: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    # vLLM's engine core may outlive its parent for a moment; the group is gone once it has.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env_path(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        msg = f"{variable} is not set: build {what} and run the tier with {ENGINES_SCRIPT} (it sets the variable)"
        raise EngineStartError(msg)
    path = Path(value)
    if not path.exists():
        msg = f"{variable}={value} does not exist: run {ENGINES_SCRIPT} build to (re)build {what}"
        raise EngineStartError(msg)
    return path


def engine_python(engine: str) -> Path:
    """The Python of an engine's venv: ``engine`` is ``"vllm"`` or ``"llama_cpp"``.

    Raises:
        EngineStartError: the variable is unset or points nowhere.
    """
    variable = {"vllm": "DIFFPO_VLLM_PYTHON", "llama_cpp": "DIFFPO_LLAMA_CPP_PYTHON"}[engine]
    return _env_path(variable, f"the {engine} venv")


def engines_model_dir() -> Path:
    """The float32 model folder vLLM serves (``DIFFPO_ENGINES_MODEL_DIR``).

    Raises:
        EngineStartError: the variable is unset or points nowhere.
    """
    return _env_path("DIFFPO_ENGINES_MODEL_DIR", "the float32 model folder")


def vllm_command(python: Path, model_dir: Path, port: int, *, max_model_len: int = 2048) -> list[str]:
    """The command line that starts vLLM's OpenAI-compatible server (the one docs/serving.md shows)."""
    return [
        str(python),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_dir),
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        # Without it every start spends 90 s or more in torch.compile on a 2-core CPU.
        "--enforce-eager",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        VLLM_SERVED_NAME,
    ]


def llama_cpp_command(python: Path, gguf: Path, port: int, *, n_ctx: int = 2048, n_threads: int = 2) -> list[str]:
    """The command line that starts llama.cpp's server (``llama-cpp-python[server]``) on a GGUF file."""
    return [
        str(python),
        "-m",
        "llama_cpp.server",
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        # Its default is one thread: half this machine.
        "--n_threads",
        str(n_threads),
    ]


HEALTH = {"vLLM": "/health", "llama.cpp": "/v1/models", "diffpo serve": "/health"}
"""The route that answers 200 once each engine serves (llama-cpp-python's server has no ``/health``)."""

VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
"""vLLM's CPU build on a small machine: a 1 GiB KV cache, no hub lookups, no usage report."""


@contextlib.contextmanager
def engine_server(
    name: str,
    command: list[str],
    *,
    port: int,
    health: str,
    env: dict[str, str] | None = None,
    start_timeout_s: float = 600.0,
    own_venv: bool = True,
) -> Iterator[EngineServer]:
    """Run ``command`` (a server listening on ``127.0.0.1:port``) until ``health`` answers 200; stop it after.

    ``env`` is added to this process's environment; with ``own_venv`` the child gets none of this
    project's Python variables (``PYTHONPATH``, ``VIRTUAL_ENV``, ``PYTHONHOME``).

    Raises:
        EngineStartError: the command exits or is not healthy within ``start_timeout_s``.
    """
    url = f"http://127.0.0.1:{port}"
    # An engine's own venv: nothing of this project's environment may leak into it.
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME") if own_venv else ()
    child_env = {k: v for k, v in os.environ.items() if k not in drop}
    child_env.update(env or {})
    log = Path(tempfile.mkstemp(prefix=f"diffpo-{name}-", suffix=".log")[1])
    start = time.monotonic()
    with log.open("wb") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env,
            start_new_session=True,
        )
    try:
        server = EngineServer(name, url, process, log, 0.0)
        while True:
            if process.poll() is not None:
                msg = f"{name} exited with status {process.returncode} during start-up; its log ends:\n{server.log_tail()}"
                raise EngineStartError(msg)
            if time.monotonic() - start > start_timeout_s:
                msg = f"{name} did not answer {url}{health} within {start_timeout_s:.0f} s; its log ends:\n{server.log_tail()}"
                raise EngineStartError(msg)
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{url}{health}", timeout=2.0).status_code == 200:
                    break
            time.sleep(0.5)
        yield EngineServer(name, url, process, log, time.monotonic() - start)
    finally:
        _stop_group(process, 20.0)


def vllm_server(
    *, port: int | None = None, max_model_len: int = 2048, start_timeout_s: float = 600.0
) -> contextlib.AbstractContextManager[EngineServer]:
    """Start vLLM on the engines' float32 folder; stop it when the block ends.

    Raises:
        EngineStartError: vLLM is not built, exits, or is not healthy within ``start_timeout_s``.
    """
    port = port or free_port()
    command = vllm_command(engine_python("vllm"), engines_model_dir(), port, max_model_len=max_model_len)
    return engine_server(
        "vLLM", command, port=port, health=HEALTH["vLLM"], env=VLLM_ENV, start_timeout_s=start_timeout_s
    )


def llama_cpp_server(
    gguf: Path, *, port: int | None = None, n_ctx: int = 2048, start_timeout_s: float = 120.0
) -> contextlib.AbstractContextManager[EngineServer]:
    """Start llama.cpp's server on ``gguf``; stop it when the block ends.

    Raises:
        EngineStartError: llama.cpp's server is not built, exits, or is not healthy in time.
    """
    port = port or free_port()
    command = llama_cpp_command(engine_python("llama_cpp"), gguf, port, n_ctx=n_ctx)
    return engine_server("llama.cpp", command, port=port, health=HEALTH["llama.cpp"], start_timeout_s=start_timeout_s)


def diffpo_serve_server(
    *, port: int | None = None, num_threads: int | None = None, start_timeout_s: float = 180.0
) -> contextlib.AbstractContextManager[EngineServer]:
    """Start ``diffpo serve`` (the packaged model) in a child process of this Python; stop it when the block ends.

    Raises:
        EngineStartError: it exits or is not healthy within ``start_timeout_s``.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "diffpo_integrations.cli", "serve", "--port", str(port)]
    command += ["--log-level", "warning"]
    if num_threads is not None:
        command += ["--num-threads", str(num_threads)]
    health = HEALTH["diffpo serve"]
    return engine_server(
        "diffpo serve", command, port=port, health=health, start_timeout_s=start_timeout_s, own_venv=False
    )
