"""The FastAPI application: routes, error shapes, API-key check, request metrics, model lifecycle."""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from diffpo_integrations import __version__
from diffpo_integrations.server import routes_diffpo, routes_openai, routes_tgi
from diffpo_integrations.server.config import ServerConfig
from diffpo_integrations.server.errors import install_error_handlers
from diffpo_integrations.server.guards import BodyLimit
from diffpo_integrations.server.runtime import ModelRuntime
from diffpo_integrations.server.state import ServerState

__all__ = ["OPEN_PATHS", "create_app", "load_runtime"]

_log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/info", "/metrics", "/docs", "/openapi.json"})
"""Routes answered without the API key: probes and monitoring (as TGI leaves them open)."""


def load_runtime(config: ServerConfig) -> ModelRuntime:
    """Load ``config.model`` with the engine (slow: run it off the event loop)."""
    from diffpo_integrations.engine import load_model

    if config.num_threads is not None:
        import torch

        torch.set_num_threads(config.num_threads)
    loaded = load_model(
        config.model,
        dtype=config.dtype,
        device=config.device,
        trust_remote_code=config.trust_remote_code,
        cache_dir=config.cache_dir,
    )
    return ModelRuntime(loaded)


class _Gate:
    """Pure ASGI middleware: the bearer-token check and per-route request metrics.

    Pure ASGI (not ``BaseHTTPMiddleware``) so streamed answers pass through untouched and a
    client disconnect still reaches the route.
    """

    def __init__(self, app: ASGIApp, api_key: SecretStr | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        path = str(scope.get("path", ""))
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if self.api_key and path not in OPEN_PATHS and not self._authorized(scope):
                # No ``error_type``: huggingface_hub then raises its HTTP error with the 401 status
                # (with one it raises a status-less UnknownError), and TGI's own 401 carries none.
                response = JSONResponse(
                    {"error": "missing or invalid API key: send `Authorization: Bearer <key>`"},
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        finally:
            state = getattr(scope["app"].state, "diffpo", None) if "app" in scope else None
            if isinstance(state, ServerState):
                state.metrics.request_done(path, status, time.perf_counter() - start)

    def _authorized(self, scope: Scope) -> bool:
        assert self.api_key is not None
        expected = self.api_key.get_secret_value().encode()
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected):
                    return True
        return False


def create_app(
    engine: Any = None,
    config: ServerConfig | None = None,
    *,
    decode_fn: Callable[..., Any] | None = None,
) -> FastAPI:
    """Build the TGI-compatible app.

    Args:
        engine: a loaded model (the engine's ``LoadedModel``, or a :class:`ModelRuntime`), or a
            :class:`ServerConfig` (the model is then loaded when the app starts), or ``None``
            (load ``config.model``, by default the bundled SmolLM2).
        config: server settings when ``engine`` is a model; defaults to ``ServerConfig()``.
        decode_fn: replaces the engine's ``decode`` (tests).

    Returns:
        The FastAPI app. The model worker starts with the app's lifespan and stops with it, so one
        app can be served several times in turn (each start gets a fresh worker, the same model).

    Example:
        >>> app = create_app(ServerConfig(port=0))  # doctest: +SKIP
    """
    if isinstance(engine, ServerConfig):
        config, engine = engine, None
    cfg = config or ServerConfig()
    runtime: ModelRuntime | None = None
    if isinstance(engine, ModelRuntime):
        runtime = engine
    elif engine is not None:
        runtime = ModelRuntime(engine, decode_fn=decode_fn)
    # A thread lock, not an asyncio one: the app may be started in turn by several event loops.
    load_lock = threading.Lock()

    def ensure_runtime() -> ModelRuntime:
        nonlocal runtime
        with load_lock:
            if runtime is None:
                _log.info("loading model %s", cfg.model or "SmolLM2-135M-Instruct (default)")
                runtime = load_runtime(cfg)
                if decode_fn is not None:
                    runtime._decode_fn = decode_fn
            return runtime

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = ServerState(cfg, await asyncio.to_thread(ensure_runtime))
        state.worker.start()
        app.state.diffpo = state
        try:
            yield
        finally:
            # Graceful stop: refuse new work, cancel what is queued or running, join the model thread.
            await state.worker.stop()
            if state.scheduler is not None:
                await asyncio.to_thread(state.scheduler.close)
            app.state.diffpo = None

    app = FastAPI(
        title="diffpo-integrations embedded server",
        description="Text Generation Inference compatible routes plus POST /diffpo/align.",
        version=__version__,
        lifespan=lifespan,
    )
    app.state.diffpo = None
    app.state.config = cfg
    install_error_handlers(app)
    app.include_router(routes_tgi.router)
    app.include_router(routes_diffpo.router)
    app.include_router(routes_openai.router)
    # The gate wraps the body limit: an unauthorized request is refused before its body is read,
    # and a 413 is counted in the request metrics.
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(_Gate, api_key=cfg.api_key)
    return app
