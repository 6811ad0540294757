"""A self-contained HTML page: headings, text, tables and PNGs embedded as base64."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid #ccc; padding: 4px 10px; }
th { background: #f3f3f3; } td { text-align: right; } img { max-width: 100%; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
"""


class HtmlReport:
    """Build a single HTML file that needs nothing else to display (images inlined)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = [f"<h1>{html.escape(title)}</h1>"]

    def heading(self, text: str, level: int = 2) -> None:
        self._parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str) -> None:
        self._parts.append(f"<p>{html.escape(text)}</p>")

    def code(self, text: str) -> None:
        self._parts.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows
        )
        self._parts.append(f"<table><tr>{head}</tr>{body}</table>")

    def image(self, png: str | Path, caption: str = "") -> None:
        data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
        alt = html.escape(caption or Path(png).name)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">{cap}</figure>')

    def render(self) -> str:
        return (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(self.title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(self._parts) + "\n</body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path
