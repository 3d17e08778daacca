"""Helpers of the evaluation tests: request-log readers and an aligner that misbehaves on cue."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffpo_integrations.backends import TGIAligner
from diffpo_integrations.backends.testing import MockTGIServer
from diffpo_integrations.core.errors import GenerationError
from diffpo_integrations.core.types import AlignResult


def align_bodies(server: MockTGIServer) -> list[dict[str, Any]]:
    """The JSON bodies of the ``/diffpo/align`` requests the mock server received."""
    return [json.loads(r.content) for r in server.requests if r.url.path == "/diffpo/align"]


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of an output file, parsed (fails on a broken line)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def stable(record: dict[str, Any]) -> dict[str, Any]:
    """A record without the fields that differ between runs (ids, times, latencies)."""
    out = {k: v for k, v in record.items() if k not in ("answer_id", "tstamp")}
    out["diffpo"] = {
        **record["diffpo"],
        "turns": [{k: v for k, v in m.items() if k != "latency_s"} if m else None for m in record["diffpo"]["turns"]],
    }
    return out


class ScriptedAligner:
    """Delegates to a real aligner, but interrupts or fails on chosen calls (counted from 1)."""

    def __init__(
        self, inner: TGIAligner, *, interrupt_at: int | None = None, fail_drafts: tuple[str, ...] = ()
    ) -> None:
        self.inner = inner
        self.endpoint = inner.endpoint
        self.interrupt_at = interrupt_at
        self.fail_drafts = fail_drafts
        self.calls = 0

    async def aalign(self, messages: Any, draft: str, **options: Any) -> AlignResult:
        self.calls += 1
        if self.interrupt_at is not None and self.calls >= self.interrupt_at:
            raise KeyboardInterrupt
        if draft in self.fail_drafts:
            msg = "mock generation failure"
            raise GenerationError(msg, endpoint=self.endpoint)
        return await self.inner.aalign(messages, draft, **options)
