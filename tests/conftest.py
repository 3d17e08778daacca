"""Fixtures shared by every test directory: loopback fault servers and a dead address, the loaded stand-in model, MT-bench."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def dead_url() -> str:
    """``http://127.0.0.1:<port>`` where nothing listens (the port was bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:<port>``: accepts connections, reads the request, never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.05)
    stop = threading.Event()
    held: list[socket.socket] = []

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)  # kept open, never written to

    thread = threading.Thread(target=accept, name="silent-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for conn in held:
            conn.close()


@pytest.fixture(scope="session")
def loaded() -> Any:
    """SmolLM2-135M-Instruct (the stand-in aligner), loaded once per session."""
    from diffpo_integrations.server.testing import get_default_engine

    return get_default_engine()


@pytest.fixture(scope="session")
def live_url() -> Iterator[str]:
    """One embedded server over the shared model, for the whole session."""
    from diffpo_integrations.server.testing import serve_in_thread, shared_app

    with serve_in_thread(shared_app()) as url:
        yield url


@pytest.fixture(scope="session")
def mt_bench() -> tuple[str, str]:
    """The first MT-bench question (``turns[0]``) and Llama-3-8B-Instruct's answer to it, the draft."""
    from diffpo_integrations.data import mt_bench_answers_path, mt_bench_questions_path

    with mt_bench_questions_path().open() as f:
        question = json.loads(f.readline())
    with mt_bench_answers_path("llama-3-it-vanilla").open() as f:
        for line in f:
            answer = json.loads(line)
            if answer["question_id"] == question["question_id"]:
                return str(question["turns"][0]), str(answer["choices"][0]["turns"][0])
    raise AssertionError("no draft for the first MT-bench question")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the ``engines`` tier unless ``-m`` names it: it needs real vLLM and llama.cpp servers.

    ``./scripts/engines.sh`` builds them and runs ``-m engines``; there a missing engine is a failure.
    """
    if "engines" in (config.getoption("markexpr") or ""):
        return
    kept = [item for item in items if item.get_closest_marker("engines") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("engines")])
        items[:] = kept
