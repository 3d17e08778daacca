"""Helpers for tests across the project: one SmolLM2 load per process, and a real server in a thread.

Example:
    >>> from huggingface_hub import InferenceClient  # doctest: +SKIP
    >>> with serve_in_thread(shared_app()) as base_url:  # doctest: +SKIP
    ...     InferenceClient(base_url=base_url).text_generation("Hello", max_new_tokens=5)
"""

from __future__ import annotations

import functools
from typing import Any

from diffpo_integrations.server.app import create_app
from diffpo_integrations.server.config import ServerConfig
from diffpo_integrations.server.serve import serve_in_thread

__all__ = ["get_default_engine", "serve_in_thread", "shared_app"]


@functools.cache
def get_default_engine() -> Any:
    """The default model (SmolLM2-135M-Instruct), loaded once per process and shared."""
    from diffpo_integrations.engine import load_model

    return load_model()


@functools.cache
def shared_app() -> Any:
    """One app over :func:`get_default_engine` with default settings, shared by every test module.

    Serve it with :func:`serve_in_thread`; it can be started and stopped several times in turn.
    Build another app with ``create_app(get_default_engine(), ServerConfig(...))`` for other settings.
    """
    return create_app(get_default_engine(), ServerConfig(port=0, api_key=None))
