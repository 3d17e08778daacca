"""A small Prometheus text exporter (no dependency): counters, gauges and summaries the server keeps."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable

__all__ = ["Metrics"]

_ROUTES = frozenset(
    {
        "/",
        "/generate",
        "/generate_stream",
        "/tokenize",
        "/health",
        "/info",
        "/metrics",
        "/diffpo/align",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
    }
)


def _labels(**labels: str) -> str:
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + body + "}" if body else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Thread-safe counters; :meth:`render` gives the Prometheus text exposition format.

    Args:
        gauges: live values read at render time (queue size, running requests): ``name -> (help, read)``;
            a name ending in ``_total`` is exposed as a counter.
    """

    def __init__(self, gauges: dict[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str], int] = defaultdict(int)
        self._totals: dict[str, float] = defaultdict(float)
        self._summaries: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0])
        self._gauges = gauges or {}

    @staticmethod
    def route_label(path: str) -> str:
        """The path itself for known routes, ``"other"`` for anything else (bounded label values)."""
        return path if path in _ROUTES else "other"

    def request_done(self, path: str, status: int, duration_s: float) -> None:
        """Count one answered request."""
        route = self.route_label(path)
        with self._lock:
            self._requests[(route, str(status))] += 1
            summary = self._summaries[("diffpo_request_duration_seconds", route)]
            summary[0] += duration_s
            summary[1] += 1

    def add(self, name: str, value: float) -> None:
        """Add to a counter (``generated_tokens``, ``forward_passes``...)."""
        with self._lock:
            self._totals[name] += value

    def observe(self, name: str, value: float, route: str = "") -> None:
        """Record one value of a summary (sum and count)."""
        with self._lock:
            summary = self._summaries[(name, route)]
            summary[0] += value
            summary[1] += 1

    def render(self) -> str:
        """The Prometheus text exposition of everything recorded."""
        lines: list[str] = []
        with self._lock:
            lines += [
                "# HELP diffpo_requests_total HTTP requests answered, by route and status.",
                "# TYPE diffpo_requests_total counter",
            ]
            for (route, status), count in sorted(self._requests.items()):
                lines.append(f"diffpo_requests_total{_labels(route=route, status=status)} {count}")
            lines += ["# HELP tgi_request_count Requests answered (TGI name).", "# TYPE tgi_request_count counter"]
            lines.append(f"tgi_request_count {sum(self._requests.values())}")
            for name, value in sorted(self._totals.items()):
                lines += [f"# TYPE diffpo_{name}_total counter", f"diffpo_{name}_total {_num(value)}"]
            names = sorted({name for name, _ in self._summaries})
            for name in names:
                lines.append(f"# TYPE {name} summary")
                for (n, route), (acc, observed) in sorted(self._summaries.items()):
                    if n != name:
                        continue
                    label = _labels(route=route) if route else ""
                    lines.append(f"{name}_sum{label} {_num(acc)}")
                    lines.append(f"{name}_count{label} {_num(observed)}")
        for name, (help_text, read) in sorted(self._gauges.items()):
            kind = "counter" if name.endswith("_total") else "gauge"
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {_num(read())}"]
        return "\n".join(lines) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))
