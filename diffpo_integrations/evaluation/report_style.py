"""The report's inline stylesheet (kept apart so the HTML builder stays readable)."""

from __future__ import annotations

__all__ = ["CSS"]

# System fonts only: the report must render offline, with nothing fetched.
CSS = """
:root{--bg:#fff;--fg:#1d2430;--muted:#5b6575;--line:#d9dee6;--card:#f5f7fa;
--del-bg:#fde2e1;--del-fg:#8a1c17;--ins-bg:#dcf5e3;--ins-fg:#11562b;--bad:#b42318;--accent:#2f5aa8}
@media (prefers-color-scheme:dark){:root{--bg:#14171c;--fg:#e6e9ef;--muted:#9aa4b2;--line:#2e3440;
--card:#1d2129;--del-bg:#4a1f1d;--del-fg:#ffc9c4;--ins-bg:#173a25;--ins-fg:#bdf0cc;--bad:#ff8a80;--accent:#8ab4ff}}
*{box-sizing:border-box}
html{-webkit-text-size-adjust:100%}
body{margin:0;background:var(--bg);color:var(--fg);
font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1280px;margin:0 auto;padding:16px}
h1{font-size:1.6rem;margin:.2em 0}
h2{font-size:1.25rem;margin:1.2em 0 .5em;border-bottom:1px solid var(--line);padding-bottom:.2em}
h3{font-size:1.1rem;margin:0 0 .5em}
h4{font-size:.8rem;margin:0 0 .4em;text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}
a{color:var(--accent)}
.note{color:var(--muted);margin:.2em 0;font-size:.9rem}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:8px}
.card{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:8px 10px}
.card .k{font-size:.78rem;color:var(--muted)}
.card .v{font-size:1.15rem;font-weight:600}
.legend{font-size:.9rem}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table.index{border-collapse:collapse;width:100%;font-size:.9rem}
table.index th,table.index td{border-bottom:1px solid var(--line);padding:4px 8px;text-align:left;white-space:nowrap}
.turn{border:1px solid var(--line);border-radius:10px;padding:12px;margin:14px 0}
.tag{font-size:.75rem;font-weight:500;background:var(--card);border:1px solid var(--line);border-radius:999px;
padding:1px 8px;vertical-align:middle}
.ask,.msg{background:var(--card);border-radius:8px;padding:8px 10px;margin:6px 0}
.role{font-size:.75rem;text-transform:uppercase;color:var(--muted)}
details{margin:6px 0}
summary{cursor:pointer;color:var(--accent)}
.text{white-space:pre-wrap;overflow-wrap:anywhere;word-break:break-word}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin-top:10px}
.col{min-width:0;border:1px solid var(--line);border-radius:8px;padding:8px 10px}
del{background:var(--del-bg);color:var(--del-fg);text-decoration:line-through}
ins{background:var(--ins-bg);color:var(--ins-fg);text-decoration:none}
.facts{font-size:.85rem;color:var(--muted);margin:.6em 0 0}
.bad{color:var(--bad);font-weight:600}
.judgment{border-left:3px solid var(--accent);padding:4px 10px;margin:8px 0;font-size:.92rem}
svg.chart{width:100%;max-width:640px;height:auto;font-size:11px}
svg text{fill:var(--fg)}
svg .tick,svg .val{fill:var(--muted)}
svg .grid{stroke:var(--line);stroke-width:1}
svg .range{stroke:var(--accent);stroke-width:3}
svg .s0{fill:var(--accent)}svg .s1{fill:#d97706}svg .s2{fill:#16a34a}svg .s3{fill:#9333ea}
@media (max-width:700px){main{padding:10px}.cols{grid-template-columns:1fr}h1{font-size:1.3rem}
body{font-size:15px}.turn{padding:10px}}
"""
