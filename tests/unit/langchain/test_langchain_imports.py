"""The public API of ``diffpo_integrations.langchain`` is exactly its ``__all__``."""

from __future__ import annotations

import diffpo_integrations.langchain as lc

EXPECTED = ["FAIL_OPEN_EVENT", "ChatDiffPO", "DiffPOAlign", "DiffPOMiddleware", "FailOpenWarning", "StreamPolicy"]


def test_all_is_the_public_api() -> None:
    assert sorted(lc.__all__) == sorted(EXPECTED)
    for name in EXPECTED:
        assert getattr(lc, name) is not None
