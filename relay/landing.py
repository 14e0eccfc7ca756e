"""`GET /`: a small page that says which relay answers and where its operations paths are.

It names the relay, its version, node id and store kind, and links the operations paths.
No setting values, secrets or user data: the page is as public as `/healthz`. Self-contained
(no external fetches), every value escaped.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

LINKS: tuple[tuple[str, str], ...] = (
    ("/dashboard", "live dashboard: the last 15 minutes, then every second"),
    ("/healthz", "liveness: 200 while the process serves"),
    ("/readyz", "readiness: 200 when the store answers (JSON)"),
    ("/metrics", "Prometheus metrics"),
    ("/v1/stats", "current figures and counters (JSON)"),
    ("/v1/history", "the dashboard's last 15 minutes, one sample a second (JSON)"),
)


@dataclass(frozen=True, slots=True)
class LandingFacts:
    """What the page shows: nothing else reaches it."""

    version: str
    node_id: str
    store: str  # the store's kind, never its location or URL


def store_label(*, production: bool) -> str:
    return "PostgreSQL + Redis" if production else "embedded (SQLite)"


_STYLE = """
  body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
         margin: 0; color: #18202e; background: #f3f5f8; }
  main { max-width: 640px; margin: 48px auto; padding: 24px 28px; background: #fff;
         border: 1px solid #dfe3ea; border-radius: 8px; }
  h1 { margin: 0 0 4px; font-size: 24px; }
  p { margin: 0 0 16px; color: #5f6b7d; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0 0 20px; }
  dt { color: #5f6b7d; }
  dd { margin: 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
  ul { padding-left: 20px; margin: 0; }
  li { margin: 4px 0; }
  a { color: #1d4ed8; font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
  code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; }
"""


def render_landing(facts: LandingFacts) -> bytes:
    """The page as UTF-8 HTML."""
    e = html.escape
    links = "\n".join(
        f'    <li><a href="{e(path)}">{e(path)}</a> — {e(what)}</li>' for path, what in LINKS
    )
    page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Relay {e(facts.node_id)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style>
</head>
<body>
<main>
  <h1>Relay</h1>
  <p>An end-to-end-encrypted messaging relay. Clients connect over WebSocket at
  <code>/v1/ws</code>.</p>
  <dl>
    <dt>version</dt><dd id="version">{e(facts.version)}</dd>
    <dt>node</dt><dd id="node">{e(facts.node_id)}</dd>
    <dt>store</dt><dd id="store">{e(facts.store)}</dd>
  </dl>
  <ul>
{links}
  </ul>
</main>
</body>
</html>
"""
    return page.encode()
