"""Batched decoding: several generations share every forward pass, each keeping its own loop.

A CPU or GPU forward over a few dozen tokens costs little more than one over a single token
(the weights are read once), so a server that decodes its concurrent requests together serves
several times more of them per second. Each request still runs its own decoding function
(:func:`~diffpo_integrations.engine.greedy`, :func:`~diffpo_integrations.engine.speculative`)
on its own thread; only the KV session is shared:

- :class:`BatchScheduler` holds one *packed* sequence: the tokens of every active generation,
  one after another, in a single KV cache of batch size 1. Each token carries its owner, its
  position in its own sequence, and whether it is still live. A 4-D attention mask lets every
  query see only the live tokens of its own sequence, at positions up to its own (and, for
  sliding-window layers, within the window). Rotary positions are each sequence's own. There
  is no padding: a pass over one prompt of 300 tokens and seven single-token steps is a pass
  over 307 tokens.
- A session's :meth:`BatchSession.feed` waits until every active session has asked for its
  next pass; then the scheduler's model thread runs one pass for all of them. A generation
  that joins mid-way simply asks for its prefill in the next pass (continuous batching).
- Rejected speculation and finished sequences are not cut out of the cache: their tokens are
  marked dead and the mask hides them. Dead tokens are dropped in bulk once they dominate.

Every sequence sees exactly its own tokens at its own positions, so each generation computes
what it computes alone; only the float summation order inside the kernels may differ, as it
does between a one-token step and a multi-token pass.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from diffpo_integrations.core.errors import ConfigurationError, EngineError

from ._core import (
    Chooser,
    KVSession,
    argmax_ids,
    cache_keyword,
    chosen_logprobs,
    model_device,
    model_lock,
    takes_logits_to_keep,
)

__all__ = [
    "BatchScheduler",
    "BatchSession",
    "active_scheduler",
    "model_lock",
    "open_session",
    "supports_batching",
    "use_scheduler",
]

_COMPACT_MIN_DEAD = 512
"""Dead tokens tolerated before a compaction (which copies the whole cache)."""

_current = threading.local()
_schedulers: weakref.WeakSet[BatchScheduler] = weakref.WeakSet()


@atexit.register
def _finish_model_threads() -> None:
    # The model thread is a daemon (a stuck request must not block exit), but one killed in the
    # middle of a torch call aborts the interpreter: let idle or finishing ones end first.
    for scheduler in list(_schedulers):
        scheduler.close(timeout=5.0)


def supports_batching(model: Any) -> bool:
    """Whether :class:`BatchScheduler` can run ``model``.

    It needs a forward that accepts a ready 4-D mask (or, for models with sliding-window
    layers, a mapping of masks per layer type, as Gemma-2 and Gemma-3 take) and explicit
    position ids.
    """
    config = getattr(model, "config", None)
    if config is None or "position_ids" not in inspect.signature(model.forward).parameters:
        return False
    kinds = set(getattr(config, "layer_types", None) or ["full_attention"])
    if kinds <= {"full_attention"} and not getattr(config, "sliding_window", None):
        return True
    return kinds <= {"full_attention", "sliding_attention"} and config.model_type in {"gemma2", "gemma3_text"}


@dataclass(eq=False)  # compared by identity: each is one session's pending pass
class _Feed:
    session: BatchSession
    tokens: list[int]
    n_logits: int
    choose: Chooser | None = None
    logprobs: bool = False
    """Also score the chosen tokens (in the model thread, with the pass's own logits)."""
    fed: int = 0
    """Tokens already in the cache (a long feed is split over several passes)."""
    done: bool = False
    result: list[int] = field(default_factory=list)
    result_logprobs: list[float] = field(default_factory=list)
    error: BaseException | None = None


class BatchScheduler:
    """Runs the forward passes of every session opened on it as one packed pass.

    Args:
        model: A causal LM in eval mode (see :func:`supports_batching`).
        max_sessions: Sessions admitted at once; :meth:`session` blocks past it.
        max_step_tokens: Most tokens one sequence feeds into one pass. A longer prefill is split
            over several passes, so the mask (tokens fed times tokens cached) and the attention
            scores stay bounded while the others keep decoding.

    Example:
        >>> import threading
        >>> from diffpo_integrations.engine import greedy
        >>> from diffpo_integrations.engine.testing import tiny_random_model
        >>> model = tiny_random_model("llama")
        >>> scheduler = BatchScheduler(model)
        >>> out = {}
        >>> def run(i):
        ...     with use_scheduler(scheduler):
        ...         out[i] = greedy(model, [1, 2, 3 + i], max_new_tokens=5, stop_token_ids=[]).tokens
        >>> threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        >>> for t in threads: t.start()
        >>> for t in threads: t.join()
        >>> out[2] == greedy(model, [1, 2, 5], max_new_tokens=5, stop_token_ids=[]).tokens
        True
    """

    def __init__(self, model: Any, max_sessions: int = 8, max_step_tokens: int = 512) -> None:
        if not supports_batching(model):
            msg = f"{type(model).__name__} cannot be batched: its attention layout needs the single-sequence path"
            raise ConfigurationError(msg)
        if max_step_tokens < 1:
            msg = f"max_step_tokens must be >= 1, got {max_step_tokens}"
            raise ConfigurationError(msg)
        self.model = model
        self.max_sessions = max_sessions
        self.max_step_tokens = max_step_tokens
        self.device = model_device(model)
        self._cache_kw = cache_keyword(model)
        self._keep_logits = takes_logits_to_keep(model)
        config = model.config
        layer_types = list(getattr(config, "layer_types", None) or [])
        self._mask_kinds = sorted(set(layer_types)) if "sliding_attention" in layer_types else None
        self._window = int(getattr(config, "sliding_window", 0) or 0)
        self._cond = threading.Condition()
        self._slots = threading.BoundedSemaphore(max_sessions)
        self._active: set[BatchSession] = set()
        self._pending: list[_Feed] = []
        self._closed: list[int] = []
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._next_id = 0
        self.passes = 0
        """Packed forward passes run so far."""
        self.largest_batch = 0
        """Most sessions that shared one pass."""
        with torch.inference_mode():
            self._reset_cache()
        _schedulers.add(self)

    def _reset_cache(self) -> None:
        from transformers import DynamicCache

        # Without a config every layer keeps all its tokens: the window is enforced by the mask,
        # since a sliding layer would evict by packed position, not by each sequence's own.
        self._cache: Any = DynamicCache()
        self._owner = torch.empty(0, dtype=torch.long, device=self.device)
        self._pos = torch.empty(0, dtype=torch.long, device=self.device)
        self._live = torch.empty(0, dtype=torch.bool, device=self.device)

    @contextlib.contextmanager
    def session(self) -> Iterator[BatchSession]:
        """Open a session for one generation; its tokens leave the cache when the block exits."""
        self._slots.acquire()
        with self._cond:
            if self._stopping:
                self._slots.release()
                msg = "the batch scheduler is closed"
                raise EngineError(msg)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="diffpo-batch", daemon=True)
                self._thread.start()
            self._next_id += 1
            session = BatchSession(self, self._next_id)
            self._active.add(session)
        try:
            yield session
        finally:
            with self._cond:
                self._active.discard(session)
                self._closed.append(session.id)
                self._cond.notify_all()
            self._slots.release()

    def close(self, timeout: float = 10.0) -> None:
        """Refuse new sessions and wait for the model thread to finish the ones in flight (idempotent)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- called by sessions ---------------------------------------------------------------------

    def _feed(
        self, session: BatchSession, tokens: list[int], n_logits: int, choose: Chooser | None, *, logprobs: bool = False
    ) -> list[int]:
        request = _Feed(session, tokens, n_logits, choose, logprobs=logprobs)
        with self._cond:
            self._pending.append(request)
            self._cond.notify_all()
            while not request.done:
                self._cond.wait()
        if request.error is not None:
            raise request.error
        session.last_logprobs = request.result_logprobs
        return request.result

    # -- the model thread -----------------------------------------------------------------------

    def _loop(self) -> None:
        # Every tensor of the packed cache is made and freed on this one long-lived thread:
        # worker threads touching torch would each grow their own allocator arena and thread
        # pool. It ends after close() once no session is left.
        with torch.inference_mode():
            while True:
                with self._cond:
                    # A pass runs once every active session is waiting on it.
                    while not (self._pending and len(self._pending) >= len(self._active)):
                        if not self._active:
                            if self._closed or self.cached_tokens:
                                self._closed = []
                                self._reset_cache()  # nobody left: free the memory at once
                            if self._stopping:
                                self._thread = None
                                return
                        self._cond.wait()
                    batch, self._pending = self._pending, []
                    closed, self._closed = self._closed, []
                if closed:
                    self._live = self._live & ~torch.isin(self._owner, torch.tensor(closed, device=self.device))
                self._run(batch)

    def _run(self, batch: list[_Feed]) -> None:
        try:
            for request in batch:
                session = request.session
                if session.pending_rollback:
                    self._rollback(session.id, session.pending_rollback)
                    session.pending_rollback = 0
            with model_lock(self.model):
                finished = self._forward(batch)
        except BaseException as exc:
            # A failed pass may have updated some layers and not others: the cache is unusable,
            # and every active session was in this pass, so all of them get the error.
            self._reset_cache()
            for request in batch:
                request.error = exc
            finished = batch
        with self._cond:
            for request in batch:
                if request in finished:
                    request.done = True
                else:  # the rest of a split feed goes into the next pass
                    self._pending.append(request)
            self.passes += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            self._cond.notify_all()

    def _rollback(self, owner: int, n_tokens: int) -> None:
        mine = torch.nonzero(self._live & (self._owner == owner)).flatten()
        self._live[mine[len(mine) - n_tokens :]] = False

    def _forward(self, batch: Sequence[_Feed]) -> list[_Feed]:
        """Run one pass; fill ``result`` of the requests whose tokens are all fed, and return those."""
        self._maybe_compact()
        ids: list[int] = []
        owners: list[int] = []
        positions: list[int] = []
        keep: list[int] = []
        pieces: list[tuple[_Feed, int, bool]] = []
        for request in batch:
            end = self._piece_end(request)
            piece = request.tokens[request.fed : end]
            last = end == len(request.tokens)
            start = request.session.length
            ids.extend(piece)
            owners.extend([request.session.id] * len(piece))
            positions.extend(range(start, start + len(piece)))
            if last:
                keep.extend(range(len(ids) - request.n_logits, len(ids)))
            pieces.append((request, len(piece), last))
        device = self.device
        q_owner = torch.tensor(owners, dtype=torch.long, device=device)
        q_pos = torch.tensor(positions, dtype=torch.long, device=device)
        self._owner = torch.cat([self._owner, q_owner])
        self._pos = torch.cat([self._pos, q_pos])
        self._live = torch.cat([self._live, torch.ones(len(ids), dtype=torch.bool, device=device)])
        # A pass that only carries pieces of split prefills still projects one position: the
        # models take an index tensor, not an empty one.
        keep_idx = torch.tensor(keep or [len(ids) - 1], dtype=torch.long, device=device)
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([ids], dtype=torch.long, device=device),
            "position_ids": q_pos.unsqueeze(0),
            "attention_mask": self._masks(q_owner, q_pos),
            self._cache_kw: self._cache,
            "use_cache": True,
        }
        if self._keep_logits:
            kwargs["logits_to_keep"] = keep_idx
            logits = self.model(**kwargs).logits
        else:  # pragma: no cover - every causal LM in transformers 5 takes logits_to_keep
            logits = self.model(**kwargs).logits[:, keep_idx, :]
        preds = argmax_ids(logits)
        finished: list[_Feed] = []
        offset = 0
        for request, size, last in pieces:
            request.fed += size
            request.session.length += size
            request.session.forward_passes += 1
            if last:
                if request.choose is not None:
                    # Sampling runs here, on the model thread, from this sequence's own logits.
                    request.result = request.choose(logits[0, offset : offset + request.n_logits])
                else:
                    request.result = preds[offset : offset + request.n_logits]
                if request.logprobs:
                    mine = logits[:, offset : offset + request.n_logits, :]
                    request.result_logprobs = chosen_logprobs(mine, request.result)
                offset += request.n_logits
                finished.append(request)
        return finished

    def _piece_end(self, request: _Feed) -> int:
        total = len(request.tokens)
        end = min(total, request.fed + self.max_step_tokens)
        if end < total and total - end < request.n_logits:
            # The positions that need predictions must all be in the last piece.
            end = total - request.n_logits if total - request.n_logits > request.fed else total
        return end

    def _masks(self, q_owner: torch.Tensor, q_pos: torch.Tensor) -> Any:
        allowed = (
            (self._owner.unsqueeze(0) == q_owner.unsqueeze(1))
            & self._live.unsqueeze(0)
            & (self._pos.unsqueeze(0) <= q_pos.unsqueeze(1))
        )
        dtype = self.model.dtype
        full = self._additive(allowed, dtype)
        if self._mask_kinds is None:
            return full
        masks = {"full_attention": full}
        if "sliding_attention" in self._mask_kinds:
            near = (q_pos.unsqueeze(1) - self._pos.unsqueeze(0)) < self._window
            masks["sliding_attention"] = self._additive(allowed & near, dtype)
        return masks

    @staticmethod
    def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        # Eager attention adds the mask to the scores; SDPA takes an additive float mask too.
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[None, None]

    def _maybe_compact(self) -> None:
        dead = int((~self._live).sum())
        if dead < _COMPACT_MIN_DEAD or dead < int(self._live.sum()):
            return
        keep = torch.nonzero(self._live).flatten()
        for layer in self._cache.layers:
            if getattr(layer, "keys", None) is not None and layer.keys.numel():
                layer.keys = layer.keys.index_select(-2, keep)
                layer.values = layer.values.index_select(-2, keep)
        self._owner = self._owner[keep]
        self._pos = self._pos[keep]
        self._live = self._live[keep]

    @property
    def cached_tokens(self) -> int:
        """Tokens in the packed cache, live and dead."""
        return int(self._live.numel())


class BatchSession:
    """One generation's view of a :class:`BatchScheduler`, with :class:`~._core.KVSession`'s interface."""

    def __init__(self, scheduler: BatchScheduler, session_id: int) -> None:
        self.scheduler = scheduler
        self.id = session_id
        self.length = 0
        """Live tokens of this sequence in the cache (its next position)."""
        self.forward_passes = 0
        self.pending_rollback = 0
        self.device = scheduler.device
        self.last_logprobs: list[float] = []
        """Log-probabilities of the last :meth:`feed`'s predictions, when it was asked for them."""

    def feed(
        self, tokens: Sequence[int], n_logits: int, choose: Chooser | None = None, *, logprobs: bool = False
    ) -> list[int]:
        """Append ``tokens`` in the next shared pass; the argmax (or ``choose``'s pick) at the last ``n_logits``.

        With ``logprobs`` each chosen token is also scored in the same pass (:attr:`last_logprobs`):
        a streamed generation gets its log-probabilities inside the batch, with no pass of its own.
        """
        return self.scheduler._feed(self, [int(t) for t in tokens], n_logits, choose, logprobs=logprobs)

    def rollback(self, n_tokens: int) -> None:
        """Hide the last ``n_tokens`` live tokens of this sequence (applied before its next pass)."""
        if n_tokens > 0:
            self.pending_rollback += n_tokens
            self.length -= n_tokens


@contextlib.contextmanager
def use_scheduler(scheduler: BatchScheduler | None) -> Iterator[None]:
    """Route this thread's decoding on ``scheduler.model`` through ``scheduler`` inside the block."""
    previous = getattr(_current, "scheduler", None)
    _current.scheduler = scheduler
    try:
        yield
    finally:
        _current.scheduler = previous


def active_scheduler(model: Any) -> BatchScheduler | None:
    """The scheduler this thread decodes ``model`` through, if any."""
    scheduler: BatchScheduler | None = getattr(_current, "scheduler", None)
    return scheduler if scheduler is not None and scheduler.model is model else None


@contextlib.contextmanager
def open_session(model: Any) -> Iterator[KVSession | BatchSession]:
    """A KV session for one generation: shared with others when this thread uses a scheduler.

    The decoding loops open their sessions here, so the same loop runs alone (``LocalAligner``)
    or batched with other requests (the embedded server).
    """
    scheduler = active_scheduler(model)
    if scheduler is None:
        yield KVSession(model)
        return
    with scheduler.session() as session:
        yield session
