"""The HTML report as a person sees it: rendered by headless Chromium at phone and desktop widths.

Needs Chromium (Debian: ``apt-get install -y chromium``); skipped, with that reason, only where it is absent.
"""

from __future__ import annotations

import html
import json
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from diffpo_integrations.evaluation import collect_rows, render_report
from diffpo_integrations.evaluation.mtbench import Question

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (install it with: apt-get install -y chromium)"
)

QUESTION = "Explain photosynthesis to a child, in three sentences."
DRAFT = "Plants eat sunlight. <script>alert('x')</script> They breathe out oxygen for us to breathe in."
ALIGNED = "Plants use sunlight to make their own food. They breathe out oxygen for us to breathe in."

# Measures the layout after rendering and leaves the figures in the DOM for --dump-dom to print.
PROBE = """<script>
const cols = [...document.querySelectorAll('.col')].slice(0, 2).map(e => e.getBoundingClientRect());
document.body.setAttribute('data-probe', JSON.stringify({
  width: window.innerWidth, scrollWidth: document.documentElement.scrollWidth,
  cols: cols.map(r => ({top: r.top, bottom: r.bottom, left: r.left, width: r.width})),
  scripts: document.scripts.length, text: document.body.innerText}));
</script>"""


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}",
    ]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=90, check=True)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = {
        "draft": DRAFT,
        "kept_prefix": "Plants",
        "kept_prefix_tokens": 2,
        "generated_tokens": 17,
        "finish_reason": "eos_token",
        "aligned": True,
        "latency_s": 0.4,
        "details": {"forward_passes": 5},
    }
    record = {
        "question_id": 1,
        "model_id": "base-diffpo",
        "choices": [{"index": 0, "turns": [ALIGNED]}],
        "category": "stem",
        "diffpo": {"turns": [meta]},
    }
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(render_report(collect_rows([record], {1: Question(1, "stem", [QUESTION])})), encoding="utf-8")
    return path


def _probe(report: Path, width: int) -> dict[str, Any]:
    probed = report.with_name(f"probe-{width}.html")
    probed.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium(f"--window-size={width},1000", "--dump-dom", probed.as_uri()).stdout
    start = dom.index('data-probe="') + len('data-probe="')
    return dict(json.loads(html.unescape(dom[start : dom.index('"', start)])))


def test_phone_width_stacks_columns_and_shows_everything(report: Path) -> None:
    seen = _probe(report, 390)
    # Headless Chromium's --dump-dom clamps the window to 500 px at least; that is still phone-sized
    # (below the 700 px break), and the screenshot test below renders at exactly 390 px.
    assert seen["width"] <= 500
    assert seen["scrollWidth"] <= seen["width"]  # nothing forces sideways scrolling
    draft_col, aligned_col = seen["cols"]
    assert aligned_col["top"] >= draft_col["bottom"]  # stacked, not side by side
    assert draft_col["width"] > 300
    text = seen["text"]
    assert QUESTION in text
    assert "They breathe out oxygen" in text
    assert "Plants use sunlight to make their own food." in text
    assert "<script>alert('x')</script>" in text  # shown as text, not run
    assert seen["scripts"] == 1  # only the probe: the report itself has no script


def test_desktop_width_puts_columns_side_by_side(report: Path) -> None:
    seen = _probe(report, 1280)
    draft_col, aligned_col = seen["cols"]
    assert draft_col["top"] == aligned_col["top"]
    assert aligned_col["left"] > draft_col["left"] + draft_col["width"] - 1


def test_phone_screenshot(report: Path, tmp_path: Path) -> None:
    shot = tmp_path / "phone.png"
    _chromium("--window-size=390,1400", f"--screenshot={shot}", report.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (390, 1400)
    assert len(data) > 10_000  # a rendered page, not a blank image
