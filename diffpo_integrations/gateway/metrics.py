"""The gateway's Prometheus counters: requests, aligned answers, fall-backs, pass-throughs, latencies."""

from __future__ import annotations

import threading
from collections import defaultdict

__all__ = ["GatewayMetrics"]

_HELP = {
    "diffpo_gateway_requests_total": "Chat requests answered, by HTTP status.",
    "diffpo_gateway_aligned_total": "Choices answered with the aligned text.",
    "diffpo_gateway_fallbacks_total": "Choices answered with the upstream draft after a failed alignment (fail-open).",
    "diffpo_gateway_passthrough_total": "Choices passed through unaligned, by reason.",
    "diffpo_gateway_upstream_seconds": "Time the upstream took to answer.",
    "diffpo_gateway_aligner_seconds": "Time one alignment took.",
}


class GatewayMetrics:
    """Thread-safe counters; :meth:`render` gives the Prometheus text exposition format.

    Example:
        >>> m = GatewayMetrics(); m.count("diffpo_gateway_aligned_total")
        >>> "diffpo_gateway_aligned_total 1" in m.render()
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str], float] = defaultdict(float)
        self._summaries: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])

    def count(self, name: str, label: tuple[str, str] | None = None, value: float = 1.0) -> None:
        """Add ``value`` to a counter, optionally with one ``(name, value)`` label."""
        key = (name, f'{{{label[0]}="{label[1]}"}}' if label else "")
        with self._lock:
            self._counters[key] += value

    def observe(self, name: str, seconds: float) -> None:
        """Add one observation to a latency summary."""
        with self._lock:
            summary = self._summaries[name]
            summary[0] += seconds
            summary[1] += 1

    def value(self, name: str, label: tuple[str, str] | None = None) -> float:
        """A counter's current value (for tests and ``/health``)."""
        key = (name, f'{{{label[0]}="{label[1]}"}}' if label else "")
        with self._lock:
            return self._counters.get(key, 0.0)

    def render(self) -> str:
        """All metrics in Prometheus' text format."""
        lines: list[str] = []
        with self._lock:
            names = sorted({n for n, _ in self._counters} | set(_HELP))
            for name in names:
                lines.append(f"# HELP {name} {_HELP.get(name, name)}")
                if name in ("diffpo_gateway_upstream_seconds", "diffpo_gateway_aligner_seconds"):
                    total, count = self._summaries.get(name, [0.0, 0.0])
                    lines += [f"# TYPE {name} summary", f"{name}_sum {total:.6f}", f"{name}_count {int(count)}"]
                    continue
                lines.append(f"# TYPE {name} counter")
                series = [(labels, v) for (n, labels), v in self._counters.items() if n == name]
                for labels, v in sorted(series) or [("", 0.0)]:
                    lines.append(f"{name}{labels} {int(v) if v.is_integer() else v}")
        return "\n".join(lines) + "\n"
